//! An environment's network: by default a network namespace of its own,
//! with loopback and outbound connectivity through user-mode networking
//! (`slirp4netns`, as rootless Podman uses it), so a tenant cannot listen
//! on the node's addresses, squat its ports or reach its loopback services.
//! Ports are reachable from outside only when published on purpose: a node
//! port forwarded by slirp4netns to the environment's port.
//!
//! slirp4netns runs on the node, in the node's network namespace, one per
//! environment; it is given `--disable-host-loopback` (the environment's
//! gateway address does not lead to the node's 127.0.0.1) and an exit pipe,
//! so it ends with the node even after a kill -9.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The user-mode network stack program.
pub const SLIRP: &str = "slirp4netns";

/// How an environment is networked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// Its own namespace behind slirp4netns.
    #[default]
    Private,
    /// The node's network, shared (`net=host`, if the node allows it).
    Host,
    /// A namespace of its own with loopback alone (`net=none`): nothing
    /// in or out, and no slirp4netns to start, so it starts sooner (a job
    /// that needs no network).
    Isolated,
}

/// A port forwarded from the node into an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub node_port: u16,
    pub env_port: u16,
}

/// The running user-mode network of one environment.
pub struct Slirp {
    child: Spawned,
    api: PathBuf,
    /// Closing it tells slirp4netns to exit.
    _exit: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until slirp4netns writes "1" on `fd` (ready).
fn wait_ready(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    match n {
        0 => return Err(io::Error::other("slirp4netns did not come up in time")),
        n if n < 0 => return Err(io::Error::last_os_error()),
        _ => {}
    }
    let mut b = [0u8; 1];
    // SAFETY: a one-byte read into a buffer of that size.
    let got = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    if got == 1 && b[0] == b'1' {
        Ok(())
    } else {
        Err(io::Error::other("slirp4netns failed"))
    }
}

impl Slirp {
    /// Starts user-mode networking for the network namespace of `pid`, with
    /// its control socket at `api`, and waits until the namespace is set up.
    pub fn start(pid: u32, api: &Path) -> io::Result<Slirp> {
        Self::launch(pid, api)?.wait(Duration::from_secs(10))
    }

    /// Spawns slirp4netns with its ready and exit pipes at descriptors 3
    /// and 4, by `posix_spawn`: a vfork, not a copy of this large process
    /// (a fork made each private network cost several milliseconds).
    fn launch(pid: u32, api: &Path) -> io::Result<Starting> {
        let _ = std::fs::remove_file(api);
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        // Its stderr goes to a file beside its socket: read if it fails,
        // never a pipe that would fill once nobody reads it.
        let log = log_path(api);
        let err_w = std::fs::File::create(&log)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", log.display())))?;
        let mut args: Vec<std::ffi::OsString> = [
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--ready-fd=3",
            "--exit-fd=4",
            "--api-socket",
        ]
        .map(Into::into)
        .to_vec();
        args.push(api.into());
        // By path, not by pid: given a pid, slirp4netns also joins its
        // user namespace, where a rootless environment's is no use for a
        // network namespace the host's user namespace owns.
        args.push("--netns-type=path".into());
        args.push(format!("/proc/{pid}/ns/net").into());
        args.push("tap0".into());
        let child = spawn_placed(
            slirp_path(),
            &args,
            &[
                (err_w.as_raw_fd(), 2),
                (ready_w.as_raw_fd(), 3),
                (exit_r.as_raw_fd(), 4),
            ],
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {SLIRP} (install it: apt-get install slirp4netns): {e}"),
            )
        })?;
        Ok(Starting {
            child,
            ready: ready_r,
            api: api.to_path_buf(),
            exit: exit_w,
        })
    }
}

/// Where slirp4netns's stderr goes: beside its control socket.
fn log_path(api: &Path) -> PathBuf {
    let mut name = api.as_os_str().to_os_string();
    name.push(".log");
    PathBuf::from(name)
}

/// A child process known by its pid; killed and reaped on demand.
struct Spawned(libc::pid_t);

impl Spawned {
    fn kill(&self) {
        // SAFETY: signalling our own child, which is not reaped before `reap`.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }

    fn reap(&self) {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(self.0, &mut status, 0) };
    }
}

/// Starts `program` with `args`, an empty environment, stdin and stdout on
/// /dev/null and each `(from, to)` descriptor placed at `to`, through
/// `posix_spawn` (glibc's is a vfork).
fn spawn_placed(
    program: &Path,
    args: &[std::ffi::OsString],
    fds: &[(i32, i32)],
) -> io::Result<Spawned> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("a NUL in an argument"));
    let path = cstr(program.as_os_str().as_bytes())?;
    let mut argv = vec![path.clone()];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .collect();
    argv_ptrs.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let null = cstr(b"/dev/null")?;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the file actions are initialised before use and destroyed
    // after; every pointer passed is to a live, NUL-terminated string or a
    // null-terminated array of them.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut added = check(libc::posix_spawn_file_actions_addopen(
            &mut actions,
            0,
            null.as_ptr(),
            libc::O_RDONLY,
            0,
        ))
        .and_then(|()| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                1,
                null.as_ptr(),
                libc::O_WRONLY,
                0,
            ))
        });
        for &(from, to) in fds {
            added = added.and_then(|()| {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions,
                    from,
                    to,
                ))
            });
        }
        let mut pid = 0;
        let spawned = added.and_then(|()| {
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                std::ptr::null(),
                argv_ptrs.as_ptr(),
                envp.as_ptr(),
            ))
        });
        libc::posix_spawn_file_actions_destroy(&mut actions);
        spawned.map(|()| Spawned(pid))
    }
}

/// slirp4netns by its full path: a program found through PATH with the
/// environment cleared makes the standard library fork rather than vfork.
fn slirp_path() -> &'static Path {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/bin".into(), "/bin".into()])
            .map(|dir| dir.join(SLIRP))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(SLIRP))
    })
}

/// A user-mode network on its way up.
struct Starting {
    child: Spawned,
    ready: OwnedFd,
    api: PathBuf,
    exit: OwnedFd,
}

impl Starting {
    /// Waits until the network is up.
    fn wait(self, timeout: Duration) -> io::Result<Slirp> {
        let Starting {
            child,
            ready,
            api,
            exit,
        } = self;
        if let Err(e) = wait_ready(&ready, timeout) {
            child.kill();
            child.reap();
            let why = std::fs::read(log_path(&api)).unwrap_or_default();
            let _ = std::fs::remove_file(log_path(&api));
            let why = String::from_utf8_lossy(&why[..why.len().min(4096)]).into_owned();
            return Err(io::Error::other(format!("{e}: {}", why.trim())));
        }
        Ok(Slirp {
            child,
            api,
            _exit: exit,
        })
    }
}

impl Slirp {
    /// Its process id (host numbering).
    pub fn pid(&self) -> u32 {
        self.child.0 as u32
    }

    /// Forwards TCP `node_port` on every node address to `env_port` inside.
    pub fn publish(&self, p: Published) -> io::Result<()> {
        let mut s = UnixStream::connect(&self.api)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let request = format!(
            "{{\"execute\": \"add_hostfwd\", \"arguments\": {{\"proto\": \"tcp\", \"host_addr\": \"0.0.0.0\", \"host_port\": {}, \"guest_port\": {}}}}}",
            p.node_port, p.env_port
        );
        s.write_all(request.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply)?;
        if reply.contains("\"return\"") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "publishing port {} at node port {}: {}",
                p.env_port,
                p.node_port,
                reply.trim()
            )))
        }
    }
}

impl Drop for Slirp {
    /// Ends the network stack.
    fn drop(&mut self) {
        self.child.kill();
        self.child.reap();
        let _ = std::fs::remove_file(&self.api);
        let _ = std::fs::remove_file(log_path(&self.api));
    }
}

/// Brings the loopback interface of the calling process's network
/// namespace up (a new namespace starts with it down).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket only to carry the interface ioctls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name fits.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on a valid socket with a valid ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lets every user of the calling process's (new) network namespace bind
/// ports below 1024 and send pings, as Docker does for a container's own
/// network: a rootless environment's root has no capability over a
/// namespace it does not own, and a web server inside still wants port 80.
/// Nothing outside the namespace is affected.
pub fn open_low_ports() -> io::Result<()> {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        std::fs::write(path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
    }
    Ok(())
}
