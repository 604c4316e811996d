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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
}

/// A port forwarded from the node into an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub node_port: u16,
    pub env_port: u16,
}

/// The running user-mode network of one environment.
pub struct Slirp {
    child: Child,
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

/// Waits until `fd` is readable (slirp4netns writes "1" when ready).
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    match n {
        1 => Ok(()),
        0 => Err(io::Error::other("slirp4netns did not come up in time")),
        _ => Err(io::Error::last_os_error()),
    }
}

impl Slirp {
    /// Starts user-mode networking for the network namespace of `pid`, with
    /// its control socket at `api`, and waits until the namespace is set up.
    pub fn start(pid: u32, api: &Path) -> io::Result<Slirp> {
        let _ = std::fs::remove_file(api);
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new(SLIRP);
        cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .arg("--ready-fd=3")
            .arg("--exit-fd=4")
            .arg("--api-socket")
            .arg(api)
            // By path, not by pid: given a pid, slirp4netns also joins its
            // user namespace, where a rootless environment's is no use for
            // a network namespace the host's user namespace owns.
            .arg("--netns-type=path")
            .arg(format!("/proc/{pid}/ns/net"))
            .arg("tap0")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only dup2 between the fork and the exec, which is
        // async-signal-safe; the source descriptors stay open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(ready_fd, 3) < 0 || libc::dup2(exit_fd, 4) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {SLIRP} (install it: apt-get install slirp4netns): {e}"),
            )
        })?;
        drop(ready_w);
        drop(exit_r);
        if let Err(e) = wait_readable(&ready_r, Duration::from_secs(10)) {
            let _ = child.kill();
            let _ = child.wait();
            let mut why = String::new();
            if let Some(err) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut io::Read::take(err, 4096), &mut why);
            }
            return Err(io::Error::other(format!("{e}: {}", why.trim())));
        }
        Ok(Slirp {
            child,
            api: api.to_path_buf(),
            _exit: exit_w,
        })
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.api);
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
