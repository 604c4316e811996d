//! The two helper processes of an environment, run by re-executing the
//! colony binary (as `init`, with [`HELPER_VAR`] set, and `colony __env-exec`): namespace and
//! mount work needs a single-threaded process, which the node is not.
//!
//! * init: joins the environment's cgroups, unshares mount, pid, uts and ipc
//!   namespaces and forks pid 1, which mounts `/proc` (its kernel tunables
//!   read-only, as Docker does), a read-only `/sys`, a
//!   minimal `/dev` (null, zero, full, random, urandom, tty, pts, ptmx, shm),
//!   tmpfs `/tmp` and `/run`, an empty private `/srv`, pivots into the spawned
//!   root, takes the environment's name as hostname, and then only reaps
//!   orphans — until SIGTERM, when it takes every process down.
//! * exec: joins the cgroups and namespaces of a running environment, drops
//!   to the environment's capabilities with no_new_privs, installs the
//!   syscall filter ([`super::seccomp`]), and runs a program there (a login
//!   shell, a command, an sftp server).

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::caps;
use super::cgroup::Cgroups;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (src_c, fs_c, data_c) = (
        CString::new(src).expect("no NUL"),
        CString::new(fstype).expect("no NUL"),
        CString::new(data).expect("no NUL"),
    );
    let target_c = cstr(target);
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fs_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    check(rc, &format!("mounting {fstype} on {}", target.display()))
}

fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    // The root is the user's: a symlink here could aim a mount, or the chmod
    // below, at the host. Only a real directory (or nothing) is accepted.
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::other(format!(
                "/{} in the root is not a directory (a symlink or a file); environments need it to be one",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            )));
        }
        Err(_) => {}
    }
    if !path.is_dir() {
        std::fs::create_dir_all(path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
        let c = cstr(path);
        // SAFETY: valid path.
        unsafe { libc::chmod(c.as_ptr(), mode) };
    }
    Ok(())
}

/// What Docker protects in /proc: the kernel's tunables and triggers are
/// read-only (root writing /proc/sys/kernel/core_pattern or
/// /proc/sysrq-trigger would reach the host), and files that leak kernel
/// memory or other tenants' data read as empty.
fn protect_proc(proc: &Path) -> io::Result<()> {
    for name in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let path = proc.join(name);
        if path.exists() {
            mount(
                path.to_str().unwrap_or(""),
                &path,
                "",
                libc::MS_BIND | libc::MS_REC,
                "",
            )?;
            mount(
                "",
                &path,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                "",
            )?;
        }
    }
    for name in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
        let path = proc.join(name);
        if path.exists() {
            mount("/dev/null", &path, "", libc::MS_BIND, "")?;
        }
    }
    Ok(())
}

/// Builds the environment's file system view and pivots into it. `owner` is
/// the host id of a rootless environment's root: the directories and nodes
/// made here are its (as they would be root's), else they stay host root's.
fn setup(root: &Path, hostname: &str, owner: Option<u32>) -> io::Result<()> {
    let owned = |opts: &str| match owner {
        Some(id) => format!("{opts},uid={id},gid={id}"),
        None => opts.to_string(),
    };
    let chown = |path: &Path| -> io::Result<()> {
        if let Some(id) = owner {
            let c = cstr(path);
            // SAFETY: valid path; the link itself, never what it points at.
            check(unsafe { libc::lchown(c.as_ptr(), id, id) }, "lchown")?;
        }
        Ok(())
    };
    mount("", Path::new("/"), "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    mount(
        root.to_str().unwrap_or(""),
        root,
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("srv", 0o755),
    ] {
        ensure_dir(&root.join(dir), mode)?;
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", &root.join("proc"), "proc", nosuid, "")?;
    protect_proc(&root.join("proc"))?;
    mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        nosuid | libc::MS_RDONLY,
        "",
    )?;
    let dev = root.join("dev");
    mount(
        "tmpfs",
        &dev,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        &owned("mode=755,size=1m"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let c = cstr(&dev.join(name));
        // SAFETY: valid path; a character device on our own tmpfs.
        check(
            unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                )
            },
            "mknod",
        )?;
        // SAFETY: valid path.
        unsafe { libc::chmod(c.as_ptr(), 0o666) };
        chown(&dev.join(name))?;
    }
    std::fs::create_dir(dev.join("pts"))?;
    chown(&dev.join("pts"))?;
    mount(
        "devpts",
        &dev.join("pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    chown(&dev.join("ptmx"))?;
    std::fs::create_dir(dev.join("shm"))?;
    mount(
        "tmpfs",
        &dev.join("shm"),
        "tmpfs",
        nosuid,
        &owned("mode=1777,size=64m"),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
        chown(&dev.join(link))?;
    }
    mount(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        &owned("mode=1777"),
    )?;
    mount(
        "tmpfs",
        &root.join("run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        &owned("mode=755"),
    )?;
    // A private, empty /srv: the environment's own service registry.
    mount(
        "tmpfs",
        &root.join("srv"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        &owned("mode=755"),
    )?;

    std::env::set_current_dir(root)?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one; it
    // is then detached, as runc does, so no directory in the root is needed.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int,
        "pivot_root",
    )?;
    // SAFETY: valid path.
    check(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        "detaching the old root",
    )?;
    std::env::set_current_dir("/")?;
    // SAFETY: a valid buffer and its length.
    check(
        unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) },
        "sethostname",
    )?;
    Ok(())
}

/// pid 1: reap orphans; on SIGTERM take everything down and exit.
fn init_loop() -> ! {
    // SAFETY: plain signal-set calls on a local set; this process has one thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            // Blocked signals reach pid 1 from inside too (the kernel drops
            // only those a default disposition would); a sender inside has
            // a pid here, the node outside the namespace has none. Only the
            // node may end the environment.
            let from_outside = info.si_pid() == 0;
            if (sig == libc::SIGTERM || sig == libc::SIGINT) && from_outside {
                libc::kill(-1, libc::SIGTERM);
                // A second for the processes to go, but no longer than they
                // take: once there is nothing left to reap, pid 1 is done.
                for _ in 0..200 {
                    loop {
                        let r = libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG);
                        if r > 0 {
                            continue;
                        }
                        if r < 0
                            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
                        {
                            libc::_exit(0);
                        }
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                libc::kill(-1, libc::SIGKILL);
                libc::_exit(0);
            }
        }
    }
}

/// The environment variable that makes the colony binary the init helper
/// (its command line stays `init`: pid 1 inherits it).
pub const HELPER_VAR: &str = "COLONY_ENV_HELPER";

/// What the node tells the init helper, on its stdin: host paths that must
/// not show in pid 1's command line. Lines of `key value`, then an empty line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest {
    pub root: PathBuf,
    pub hostname: String,
    pub cgroups: Vec<PathBuf>,
    /// A network namespace of its own (else the node's network).
    pub private_net: bool,
    /// A rootless environment's range of host ids.
    pub ids: Option<super::userns::IdShift>,
    /// The lock file of that range, for pid 1 to hold.
    pub lease: Option<PathBuf>,
    /// Whether pid 1 makes its user namespace as the range's first host
    /// id, so that id owns it (see [`super::userns::owned_namespaces_work`]).
    pub own_userns: bool,
}

impl InitRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line = |key: &str, value: &[u8]| {
            out.extend_from_slice(key.as_bytes());
            out.push(b' ');
            out.extend_from_slice(value);
            out.push(b'\n');
        };
        line("root", self.root.as_os_str().as_bytes());
        line("hostname", self.hostname.as_bytes());
        for dir in &self.cgroups {
            line("cgroup", dir.as_os_str().as_bytes());
        }
        line(
            "net",
            if self.private_net {
                b"private"
            } else {
                b"host"
            },
        );
        if let Some(ids) = self.ids {
            line("ids", format!("{} {}", ids.base(), ids.count()).as_bytes());
        }
        if let Some(lease) = &self.lease {
            line("lease", lease.as_os_str().as_bytes());
        }
        if self.own_userns {
            line("userns", b"own");
        }
        out
    }

    /// Reads a request up to its empty line.
    pub fn read(input: &mut dyn io::BufRead) -> io::Result<InitRequest> {
        use std::os::unix::ffi::OsStrExt;
        let (mut root, mut hostname, mut cgroups) = (None, None, Vec::new());
        let (mut private_net, mut ids, mut lease) = (false, None, None);
        let mut own_userns = false;
        loop {
            let mut line = Vec::new();
            if input.read_until(b'\n', &mut line)? == 0 || line == b"\n" {
                break;
            }
            line.pop_if(|b| *b == b'\n');
            let Some(space) = line.iter().position(|&b| b == b' ') else {
                return Err(io::Error::other("malformed init request"));
            };
            let value = &line[space + 1..];
            let path = || PathBuf::from(std::ffi::OsStr::from_bytes(value));
            match &line[..space] {
                b"root" => root = Some(path()),
                b"hostname" => hostname = Some(String::from_utf8_lossy(value).into_owned()),
                b"cgroup" => cgroups.push(path()),
                b"net" => private_net = value == b"private",
                b"lease" => lease = Some(path()),
                b"userns" if value == b"own" => own_userns = true,
                b"ids" => {
                    let text = String::from_utf8_lossy(value);
                    let mut numbers = text.split(' ').map(|n| n.parse::<u32>().ok());
                    ids = match (numbers.next().flatten(), numbers.next().flatten()) {
                        (Some(base), Some(count)) => super::userns::IdShift::new(base, count),
                        _ => None,
                    };
                    if ids.is_none() {
                        return Err(io::Error::other("malformed id range in init request"));
                    }
                }
                _ => return Err(io::Error::other("unknown key in init request")),
            }
        }
        match (root, hostname) {
            (Some(root), Some(hostname)) => Ok(InitRequest {
                root,
                hostname,
                cgroups,
                private_net,
                ids,
                lease,
                own_userns,
            }),
            _ => Err(io::Error::other("incomplete init request")),
        }
    }
}

/// The init helper: prints `pid N` (pid 1's number on the host) and then
/// `ready` or `error WHY` on standard output, which the node reads.
///
/// A rootless environment's pid 1 does all its setup as host root, in
/// namespaces the host's user namespace owns, and only then moves into a
/// user namespace of its own; this helper, still outside, writes that
/// namespace's id maps (a process cannot map a range it is not in).
pub fn init_main(request: &InitRequest) -> ! {
    let (root, hostname, cgroups) = (&request.root, &request.hostname, &request.cgroups);
    let fail = |e: io::Error| -> ! {
        println!("error {e}");
        std::process::exit(1)
    };
    if let Err(e) = Cgroups::enter(cgroups, std::process::id()) {
        fail(e);
    }
    // The id range's lock, held for as long as this process and pid 1
    // (which inherits the descriptor) live.
    let _lease = match &request.lease {
        Some(path) => match super::userns::hold(path) {
            Ok(f) => Some(f),
            Err(e) => fail(e),
        },
        None => None,
    };
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if request.private_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare with namespace flags in a single-threaded process.
    if let Err(e) = check(unsafe { libc::unshare(flags) }, "unshare") {
        fail(e);
    }
    if request.private_net
        && let Err(e) = super::net::loopback_up().and_then(|()| super::net::open_low_ports())
    {
        fail(io::Error::other(format!("setting up the network: {e}")));
    }
    // pid 1's pivot_root moves this process into the environment's root too
    // (they share the mount namespace): the host's /proc is opened before.
    let handshake = match request.ids {
        Some(_) => {
            match std::fs::File::open("/proc").and_then(|proc| Ok((proc, Handshake::new()?))) {
                Ok(h) => Some(h),
                Err(e) => fail(io::Error::other(format!(
                    "preparing the user namespace: {e}"
                ))),
            }
        }
        None => None,
    };
    // SAFETY: fork in a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => fail(io::Error::last_os_error()),
        0 => {
            let handshake = handshake.map(|(proc, h)| {
                drop(proc);
                h.child_side()
            });
            let owner = request.ids.map(|ids| ids.base());
            // pid 1 runs under the same syscall filter as everything else
            // (it needs none of the refused calls once set up).
            let namespace_owner = owner.filter(|_| request.own_userns);
            let started = setup(root, hostname, owner)
                .and_then(|()| match handshake {
                    Some(h) => enter_user_namespace(h, namespace_owner),
                    None => Ok(()),
                })
                .and_then(|()| die_with_the_helper())
                .and_then(|()| super::seccomp::install());
            match started {
                Ok(()) => println!("ready"),
                Err(e) => fail(e),
            }
            let _ = io::stdout().flush();
            // Nothing more to say: detach from the node's pipes.
            let null = CString::new("/dev/null").expect("no NUL");
            // SAFETY: open and dup2 on descriptors this process owns.
            unsafe {
                let fd = libc::open(null.as_ptr(), libc::O_RDWR);
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
            }
            init_loop()
        }
        child => {
            println!("pid {child}");
            let _ = io::stdout().flush();
            if let (Some((proc, h)), Some(ids)) = (handshake, request.ids) {
                let mut h = h.parent_side();
                // Nothing to map if pid 1 failed before its user namespace
                // (it has said why).
                if h.wait() {
                    match super::userns::write_maps(&proc, child, ids) {
                        Ok(()) => {
                            let _ = h.signal();
                        }
                        Err(e) => {
                            println!("error mapping the environment's ids: {e}");
                            // SAFETY: killing our own child.
                            unsafe { libc::kill(child, libc::SIGKILL) };
                        }
                    }
                }
            }
            let code = watch_the_node_until_exit(child);
            std::process::exit(code)
        }
    }
}

/// Waits for pid 1 to exit and returns its exit code. Meanwhile, watches
/// this helper's stdin, which the node holds open for as long as it runs the
/// environment: if the node dies (even by SIGKILL) the pipe closes, and the
/// environment is killed with it, so nothing of a dead node's tenants runs
/// on, holding ports, memory or a range of ids. (No thread: a process that
/// has unshared its pid namespace cannot make one.)
fn watch_the_node_until_exit(init: libc::pid_t) -> i32 {
    // SAFETY: pidfd_open of our own, unreaped child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) } as libc::c_int;
    // Without a pidfd (a kernel before 5.3) there is only waiting.
    if pidfd >= 0 {
        kill_if_the_node_dies(init, pidfd);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(init, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        0
    }
}

/// Returns once pid 1 (`pidfd`) has exited, having killed it if stdin closed.
fn kill_if_the_node_dies(init: libc::pid_t, pidfd: libc::c_int) {
    let mut node_alive = true;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if node_alive { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on an array of two pollfds we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a buffer of the given length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                node_alive = false;
                // SAFETY: pid 1 is our child, not yet reaped, so its number
                // is still its own; SIGKILL of it ends its pid namespace.
                unsafe { libc::kill(init, libc::SIGKILL) };
            }
        }
    }
}

/// Two pipes between the init helper and pid 1 for the user namespace:
/// pid 1 says it has made its namespace, the helper says the maps are written.
struct Handshake {
    /// pid 1 to helper: read end, write end.
    up: (std::fs::File, std::fs::File),
    /// helper to pid 1: read end, write end.
    down: (std::fs::File, std::fs::File),
}

struct HandshakeEnd {
    read: std::fs::File,
    write: std::fs::File,
}

impl Handshake {
    fn new() -> io::Result<Handshake> {
        fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
            use std::os::fd::FromRawFd;
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two descriptors, which become ours.
            check(
                unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
                "pipe",
            )?;
            // SAFETY: both descriptors were just created and are owned here only.
            Ok(unsafe {
                (
                    std::fs::File::from_raw_fd(fds[0]),
                    std::fs::File::from_raw_fd(fds[1]),
                )
            })
        }
        Ok(Handshake {
            up: pipe()?,
            down: pipe()?,
        })
    }

    fn child_side(self) -> HandshakeEnd {
        HandshakeEnd {
            read: self.down.0,
            write: self.up.1,
        }
    }

    fn parent_side(self) -> HandshakeEnd {
        HandshakeEnd {
            read: self.up.0,
            write: self.down.1,
        }
    }
}

impl HandshakeEnd {
    /// Tells the other side to go on.
    fn signal(&mut self) -> io::Result<()> {
        self.write.write_all(b"1")
    }

    /// Waits for the other side's go; false if it went away instead.
    fn wait(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(io::Read::read(&mut &self.read, &mut byte), Ok(1))
    }
}

/// pid 1 dies with its helper (the helper is single-threaded, so this
/// fires only when the helper process itself ends): an environment whose
/// helper was killed, by an OOM kill in its cgroup say, must not live on
/// unwatched. Set last, as changing ids clears it.
fn die_with_the_helper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments on this process.
    check(
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        },
        "PR_SET_PDEATHSIG",
    )
}

/// pid 1 of a rootless environment, set up: a user namespace of its own,
/// mapped by the helper, in which it is root. With `owner`, made as that
/// host id, which then owns it (and is charged what it holds per user).
fn enter_user_namespace(mut h: HandshakeEnd, owner: Option<u32>) -> io::Result<()> {
    if let Some(owner) = owner {
        super::userns::become_owner(owner)?;
    }
    // SAFETY: unshare in a single-threaded process.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWUSER) },
        "making the user namespace",
    )?;
    h.signal()?;
    if !h.wait() {
        return Err(io::Error::other("the environment's ids were not mapped"));
    }
    super::userns::become_root()
}

/// Which namespaces an environment was started with (their inode numbers):
/// a pid can be reused once the environment is gone, so every entry checks
/// them. `user` is the user namespace of a rootless environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    pub mnt: u64,
    pub pid: u64,
    pub user: Option<u64>,
}

impl Namespaces {
    /// `MNT:PID` or `MNT:PID:USER`, as `__env-exec --ns` takes it.
    pub fn encode(&self) -> String {
        match self.user {
            Some(user) => format!("{}:{}:{user}", self.mnt, self.pid),
            None => format!("{}:{}", self.mnt, self.pid),
        }
    }

    pub fn parse(text: &str) -> Option<Namespaces> {
        let mut parts = text.split(':').map(|n| n.parse::<u64>().ok());
        let (mnt, pid) = (parts.next()??, parts.next()??);
        let user = match parts.next() {
            Some(n) => Some(n?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Namespaces { mnt, pid, user })
    }
}

/// The environment variable that carries an [`ExecRequest`] to `colony
/// __env-exec`. Not its command line: that is readable by every process
/// that can see the helper (a built-in such as the SFTP server runs inside
/// as the helper's own fork, showing it for the whole session), and these
/// are host paths. A helper's environment is readable only by what may
/// trace it, and the helper makes itself untraceable first.
pub const EXEC_REQUEST_VAR: &str = "COLONY_ENV_EXEC";

/// Where `colony __env-exec` enters: the environment's pid 1 (host
/// numbering), the namespaces it was started with, its cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub init_pid: u32,
    pub namespaces: Namespaces,
    pub cgroups: Vec<PathBuf>,
}

impl ExecRequest {
    /// Lines of `pid N`, `ns MNT:PID[:USER]` and `cgroup DIR`.
    pub fn encode(&self) -> String {
        let mut text = format!("pid {}\nns {}\n", self.init_pid, self.namespaces.encode());
        for dir in &self.cgroups {
            text.push_str(&format!("cgroup {}\n", dir.display()));
        }
        text
    }

    pub fn parse(text: &str) -> Option<ExecRequest> {
        let (mut pid, mut ns, mut cgroups) = (None, None, Vec::new());
        for line in text.lines() {
            match line.split_once(' ')? {
                ("pid", v) => pid = Some(v.parse().ok()?),
                ("ns", v) => ns = Some(Namespaces::parse(v)?),
                ("cgroup", v) => cgroups.push(PathBuf::from(v)),
                _ => return None,
            }
        }
        Some(ExecRequest {
            init_pid: pid?,
            namespaces: ns?,
            cgroups,
        })
    }
}

/// A program the colony binary runs itself inside an environment, in place
/// of an executable the environment may not have; given the arguments
/// after its name. Its error goes to its stderr.
pub type Builtin = fn(&[String]) -> io::Result<()>;

/// `colony __env-exec`: runs `argv` inside the environment whose pid 1 is
/// `init_pid` (host numbering), and exits with its status. A command of
/// `builtins` (by its first argument after the colony binary) is run in
/// place, in the environment.
pub fn exec_main(
    request: &ExecRequest,
    pty: bool,
    term: Option<&str>,
    agent: Option<&str>,
    argv: &[String],
    builtins: &[(&str, Builtin)],
) -> ! {
    let fail = |what: &str, e: io::Error| -> ! {
        eprintln!("colony: {what}: {e}");
        std::process::exit(126)
    };
    // Untraceable, and its /proc files closed, before anything inside can
    // see it: its fork enters the environment still holding the helper's
    // capabilities, and with the node's uid (rootful) a process inside
    // could otherwise attach to it before its syscall filter is in force.
    // Inherited by the fork; an exec makes the program dumpable again.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        fail("making the helper untraceable", io::Error::last_os_error());
    }
    let ExecRequest {
        init_pid,
        namespaces,
        cgroups,
    } = request;
    let (init_pid, namespaces) = (*init_pid, *namespaces);
    if let Err(e) = Cgroups::enter(cgroups, std::process::id()) {
        fail("joining the environment's cgroups", e);
    }
    // A built-in (the SFTP server) runs as this very process inside the
    // environment: no program from the root, nor its dynamic loader, is needed.
    let builtin = argv[0] == super::SELF;
    let mut fds = Vec::new();
    // The network first: for a host-network environment it is the node's
    // own, and joining it changes nothing.
    for ns in ["net", "ipc", "uts", "pid", "mnt"] {
        let path = format!("/proc/{init_pid}/ns/{ns}");
        match std::fs::File::open(&path) {
            Ok(f) => fds.push(f),
            Err(e) => fail(&format!("the environment is gone ({path})"), e),
        }
    }
    // The pid may have been reused since the environment died: enter only
    // the namespaces it was started with, and never the host's own.
    use std::os::unix::fs::MetadataExt;
    let inode = |f: &std::fs::File| f.metadata().map(|m| m.ino()).unwrap_or(0);
    let own_mnt = std::fs::metadata("/proc/self/ns/mnt")
        .map(|m| m.ino())
        .unwrap_or(0);
    let (pid_ns, mnt_ns) = (&fds[3], &fds[4]);
    if inode(mnt_ns) != namespaces.mnt
        || inode(pid_ns) != namespaces.pid
        || inode(mnt_ns) == own_mnt
    {
        fail(
            "entering the environment",
            io::Error::other("the environment is gone"),
        );
    }
    // A rootless environment's user namespace is joined last: once in it,
    // this process has no capability over the others.
    if let Some(user) = namespaces.user {
        let path = format!("/proc/{init_pid}/ns/user");
        let own_user = std::fs::metadata("/proc/self/ns/user")
            .map(|m| m.ino())
            .unwrap_or(0);
        match std::fs::File::open(&path) {
            Ok(f) if inode(&f) == user && user != own_user => fds.push(f),
            Ok(_) => fail(
                "entering the environment",
                io::Error::other("the environment is gone"),
            ),
            Err(e) => fail(&format!("the environment is gone ({path})"), e),
        }
    }
    for f in &fds {
        // SAFETY: setns on a namespace descriptor we opened.
        if let Err(e) = check(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(f), 0) },
            "setns",
        ) {
            fail("entering the environment", e);
        }
    }
    drop(fds);
    if namespaces.user.is_some()
        && let Err(e) = super::userns::become_root()
    {
        fail("entering the environment", e);
    }
    // SAFETY: fork in a single-threaded process; the child enters the pid namespace.
    match unsafe { libc::fork() } {
        -1 => fail("fork", io::Error::last_os_error()),
        0 => {
            // SAFETY: prctl/setsid/ioctl on this process and its own stdio.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                if pty {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY as _, 0);
                }
            }
            let _ = std::env::set_current_dir("/root").or_else(|_| std::env::set_current_dir("/"));
            // The filter first: from here on nothing this process does,
            // nor anything that could reach it, runs unfiltered. (It needs
            // CAP_SYS_ADMIN, still held; restrict() then drops it and sets
            // no_new_privs.)
            if let Err(e) = super::seccomp::install() {
                fail("installing the syscall filter", e);
            }
            if let Err(e) = caps::restrict() {
                fail("dropping capabilities", e);
            }
            let program = CString::new(argv[0].as_str()).unwrap_or_default();
            let args: Vec<CString> = argv
                .iter()
                .map(|a| CString::new(a.as_str()).unwrap_or_default())
                .collect();
            let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            arg_ptrs.push(std::ptr::null());
            let mut env = vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "HOME=/root".into(),
                "USER=root".into(),
                "LOGNAME=root".into(),
                format!("SHELL={}", argv[0]),
            ];
            if let Some(t) = term {
                env.push(format!("TERM={t}"));
            }
            if let Some(a) = agent {
                env.push(format!("SSH_AUTH_SOCK={a}"));
            }
            let env: Vec<CString> = env
                .into_iter()
                .map(|e| CString::new(e).unwrap_or_default())
                .collect();
            let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
            env_ptrs.push(std::ptr::null());
            if builtin {
                let wanted = argv.get(1).map(String::as_str);
                let result = match builtins.iter().find(|(name, _)| Some(*name) == wanted) {
                    Some((_, run)) => run(argv.get(2..).unwrap_or_default()),
                    None => Err(io::Error::other(format!("no built-in {wanted:?}"))),
                };
                if let Err(e) = &result {
                    eprintln!("{e}");
                }
                std::process::exit(if result.is_ok() { 0 } else { 1 });
            }
            // SAFETY: NUL-terminated arrays of valid C strings.
            unsafe { libc::execve(program.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr()) };
            fail(&argv[0], io::Error::last_os_error())
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            std::process::exit(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_request_reads_back_as_written() {
        for ids in [None, super::super::userns::IdShift::new(1 << 30, 65536)] {
            let request = InitRequest {
                root: PathBuf::from("/var/lib/colony/mnt/a b"),
                hostname: "box".into(),
                cgroups: vec![PathBuf::from("/sys/fs/cgroup/memory/colony/x")],
                private_net: ids.is_some(),
                ids,
                lease: ids.map(|_| PathBuf::from("/run/colony/ids/7")),
                own_userns: ids.is_some(),
            };
            let mut text = request.encode();
            text.extend_from_slice(b"\nafter the request\n");
            let mut input = io::Cursor::new(text);
            assert_eq!(InitRequest::read(&mut input).unwrap(), request);
        }
    }

    #[test]
    fn malformed_init_requests_are_refused() {
        for text in [
            &b"root /r\n"[..],
            b"root /r\nhostname h\nids 5\n",
            b"root /r\nhostname h\nids 4294967295 2\n",
            b"root /r\nhostname h\nids x y\n",
            b"root /r\nhostname h\nsecret 1\n",
            b"rootless\n",
        ] {
            assert!(
                InitRequest::read(&mut io::Cursor::new(text)).is_err(),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn an_exec_request_reads_back_and_junk_is_refused() {
        let request = ExecRequest {
            init_pid: 4242,
            namespaces: Namespaces {
                mnt: 4026531840,
                pid: 4026531836,
                user: Some(4026531837),
            },
            cgroups: vec![
                PathBuf::from("/sys/fs/cgroup/memory/colony/alice-box"),
                PathBuf::from("/sys/fs/cgroup/pids/colony/alice-box"),
            ],
        };
        assert_eq!(ExecRequest::parse(&request.encode()), Some(request));
        for junk in [
            "",
            "pid 1\n",
            "pid x\nns 1:2\n",
            "pid 1\nns 1:2\nsecret 3\n",
        ] {
            assert_eq!(ExecRequest::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn namespaces_read_back_and_junk_is_refused() {
        for ns in [
            Namespaces {
                mnt: 1,
                pid: 2,
                user: None,
            },
            Namespaces {
                mnt: 4026531840,
                pid: 4026531836,
                user: Some(4026531837),
            },
        ] {
            assert_eq!(Namespaces::parse(&ns.encode()), Some(ns));
        }
        for junk in ["", "1", "1:", "1:2:", "1:2:3:4", "a:b", "-1:2"] {
            assert_eq!(Namespaces::parse(junk), None, "{junk:?}");
        }
    }
}
