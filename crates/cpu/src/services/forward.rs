//! Forwarding for an environment's login (`ssh -L`, `-W`, `-D`, `-R`, and
//! unix-socket forwards): every socket is made *inside* the environment,
//! by a built-in run there ([`BUILTIN`]) in its namespaces, as its root,
//! under its syscall filter and in its cgroups, which hands the socket back
//! to the node over a socket pair and exits. The door then relays between
//! that socket and the SSH channel. So a forward reaches exactly what a
//! process inside could: the environment's loopback and, through its
//! private network, the outside; never the node's loopback nor the host's
//! network (unless the environment shares the node's network, as a
//! process inside it would then too). A unix socket is found in the
//! environment's file system with its root's permissions.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use crate::env::{Environment, SELF};

/// The built-in's name, as `argv[1]` after [`SELF`].
pub const BUILTIN: &str = "__socket";

/// How long making a socket inside may take (a connect to an address that
/// never answers, say) before the forward is refused.
const CONNECT_TIME: Duration = Duration::from_secs(10);

/// Remote forwards (`ssh -R`) an environment may listen on at once, over
/// all its logins: each is a socket of the node's, charged to the tenant.
pub const MAX_LISTENERS: usize = 8;

/// Forwarded connections an environment may have open at once, over all
/// its logins: each is two descriptors and a relay of the node's.
pub const MAX_FORWARDS: usize = 64;

/// What to make inside the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    /// A TCP connection to `host:port` (`ssh -L`, `-W`, `-D`).
    Connect { host: String, port: u16 },
    /// A TCP listener on `host:port` (`ssh -R`); port 0 picks one.
    Listen { host: String, port: u16 },
    /// A connection to the unix socket at `path`.
    ConnectUnix { path: String },
    /// A forwarded agent's socket: a listener at `DIR/agent.sock`, in a
    /// directory of its own (mode 0700, made here, under /tmp) that only
    /// the environment's root can enter.
    Agent { dir: String },
}

impl Socket {
    fn argv(&self) -> Vec<String> {
        let mut argv = vec![SELF.to_string(), BUILTIN.to_string()];
        match self {
            Socket::Connect { host, port } => {
                argv.extend(["connect".into(), host.clone(), port.to_string()])
            }
            Socket::Listen { host, port } => {
                argv.extend(["listen".into(), host.clone(), port.to_string()])
            }
            Socket::ConnectUnix { path } => argv.extend(["unix".into(), path.clone()]),
            Socket::Agent { dir } => argv.extend(["agent".into(), dir.clone()]),
        }
        argv
    }

    /// Reads back what [`Socket::argv`] wrote (the built-in's arguments).
    fn parse(args: &[String]) -> Result<Socket, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))
        };
        match args {
            [verb, host, p] if verb == "connect" => Ok(Socket::Connect {
                host: host.clone(),
                port: port(p)?,
            }),
            [verb, host, p] if verb == "listen" => Ok(Socket::Listen {
                host: host.clone(),
                port: port(p)?,
            }),
            [verb, path] if verb == "unix" => Ok(Socket::ConnectUnix { path: path.clone() }),
            [verb, dir] if verb == "agent" && agent_dir(dir) => {
                Ok(Socket::Agent { dir: dir.clone() })
            }
            _ => Err(format!("{BUILTIN}: unknown request {args:?}")),
        }
    }
}

/// Makes `socket` inside `env`: a connected stream or a listener, as the
/// environment's root. The error says why in the words a user needs
/// (`connecting to localhost:8888 inside the environment: Connection
/// refused`).
pub fn open(env: &Environment, socket: &Socket) -> Result<OwnedFd, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("a socket pair: {e}"))?;
    let mut cmd = env.command(&socket.argv(), false, None);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting a helper in the environment: {e}"))?;
    drop(cmd);
    let _ = ours.set_read_timeout(Some(CONNECT_TIME + Duration::from_secs(5)));
    let received = recv_fd(ours.as_raw_fd());
    drop(ours);
    let mut why = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(1024).read_to_string(&mut why);
    }
    let _ = child.kill();
    let _ = child.wait();
    match received {
        Ok(fd) => check_kind(fd, socket),
        Err(_) if !why.trim().is_empty() => Err(why.trim().to_string()),
        Err(e) => Err(format!("the environment gave no socket: {e}")),
    }
}

/// The received descriptor is what was asked for: a socket, and listening
/// if a listener was asked for (whatever runs inside never hands the node
/// a file, or a connection in place of a listener).
fn check_kind(fd: OwnedFd, socket: &Socket) -> Result<OwnedFd, String> {
    // SAFETY: fstat and getsockopt on a descriptor we own, into locals.
    let (is_socket, listening) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let is_socket = libc::fstat(fd.as_raw_fd(), &mut st) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let got = libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        ) == 0;
        (is_socket, got && on != 0)
    };
    let want_listener = matches!(socket, Socket::Listen { .. } | Socket::Agent { .. });
    if is_socket && listening == want_listener {
        Ok(fd)
    } else {
        Err("the environment handed back the wrong kind of descriptor".into())
    }
}

/// Where forwarded agents' sockets go inside: `AGENT_DIRS/ssh-colony-HEX`.
const AGENT_DIRS: &str = "/tmp";
/// The built-in's verb that removes an agent's socket and its directory.
const REMOVE_AGENT: &str = "remove-agent";

/// Whether `dir` is a name [`agent_dir_name`] makes: nothing else is ever
/// made or removed for an agent.
fn agent_dir(dir: &str) -> bool {
    dir.strip_prefix(AGENT_DIRS)
        .and_then(|d| d.strip_prefix("/ssh-colony-"))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fresh directory name for a login's forwarded agent.
pub fn agent_dir_name() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom into a local buffer of its length.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{AGENT_DIRS}/ssh-colony-{hex}")
}

/// The socket a forwarded agent listens on, in `dir`.
pub fn agent_socket(dir: &str) -> String {
    format!("{dir}/agent.sock")
}

/// Removes a login's forwarded agent (its socket and directory) inside
/// the environment, when the login ends.
pub fn remove_agent(env: &Environment, dir: &str) {
    let argv = [
        SELF.to_string(),
        BUILTIN.to_string(),
        REMOVE_AGENT.into(),
        dir.into(),
    ];
    let _ = env
        .command(&argv, false, None)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The built-in, run inside the environment: makes the socket its
/// arguments ask for and sends it on its stdout, a socket pair's end.
pub fn builtin(args: &[String]) -> io::Result<()> {
    if let [verb, dir] = args
        && verb == REMOVE_AGENT
        && agent_dir(dir)
    {
        // Its own directory, made by the agent verb: a name that is not a
        // socket (a tenant's replacement) is left, and the directory is
        // removed only if empty.
        let socket = agent_socket(dir);
        if std::fs::symlink_metadata(&socket)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(&socket)?;
        }
        return std::fs::remove_dir(dir);
    }
    let socket = Socket::parse(args).map_err(io::Error::other)?;
    let fd: OwnedFd = match &socket {
        Socket::Connect { host, port } => connect(host, *port)
            .map_err(|e| {
                io::Error::other(format!(
                    "connecting to {host}:{port} inside the environment: {e}"
                ))
            })?
            .into(),
        Socket::Listen { host, port } => listen(host, *port)
            .map_err(|e| {
                io::Error::other(format!(
                    "listening on {host}:{port} inside the environment: {e}"
                ))
            })?
            .into(),
        Socket::ConnectUnix { path } => UnixStream::connect(path)
            .map_err(|e| {
                io::Error::other(format!("connecting to {path} inside the environment: {e}"))
            })?
            .into(),
        Socket::Agent { dir } => agent_listener(dir)
            .map_err(|e| {
                io::Error::other(format!(
                    "making a forwarded agent's socket in {dir} inside the environment: {e}"
                ))
            })?
            .into(),
    };
    send_fd(1, fd.as_raw_fd())
}

/// A listener at `dir/agent.sock`, `dir` made fresh with mode 0700 (it
/// must not exist: a name a tenant made first is never used).
fn agent_listener(dir: &str) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(AGENT_DIRS).is_err() {
        std::fs::DirBuilder::new().mode(0o1777).create(AGENT_DIRS)?;
        std::fs::set_permissions(
            AGENT_DIRS,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    std::os::unix::net::UnixListener::bind(agent_socket(dir))
}

/// The addresses `host` names, as a program inside would find them; the
/// name `localhost` is the loopback whether or not the root has an
/// /etc/hosts saying so.
fn addresses(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addresses(host, port)? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIME) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A listener as `ssh -R` asks for one (RFC 4254 7.1): `localhost` the
/// loopback, `""`, `*` or `0.0.0.0` every address of the environment.
fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    let addr = match host {
        "" | "*" => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        _ => *addresses(host, port)?
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?,
    };
    TcpListener::bind(addr)
}

/// A message of one byte with room for one descriptor (SCM_RIGHTS), as
/// [`send_fd`] sends and [`recv_fd`] receives it.
struct FdMessage {
    byte: [u8; 1],
    iov: libc::iovec,
    control: Vec<u8>,
    header: libc::msghdr,
}

impl FdMessage {
    fn new() -> Box<FdMessage> {
        let space = control_space();
        // SAFETY: msghdr and iovec are plain C structs; zero is a valid
        // value for both, and every pointer is set below before use.
        let mut m = Box::new(FdMessage {
            byte: [0],
            iov: unsafe { std::mem::zeroed() },
            control: vec![0u8; space],
            header: unsafe { std::mem::zeroed() },
        });
        // The box does not move, so the pointers into it stay valid.
        m.iov.iov_base = m.byte.as_mut_ptr().cast();
        m.iov.iov_len = 1;
        m.header.msg_iov = &mut m.iov;
        m.header.msg_iovlen = 1;
        m.header.msg_control = m.control.as_mut_ptr().cast();
        m.header.msg_controllen = space as _;
        m
    }
}

fn control_space() -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
}

fn control_len() -> usize {
    // SAFETY: CMSG_LEN is arithmetic on its argument.
    unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize }
}

/// Sends `fd` over the unix socket `over` (SCM_RIGHTS).
fn send_fd(over: RawFd, fd: RawFd) -> io::Result<()> {
    let m = FdMessage::new();
    // SAFETY: the control buffer holds CMSG_SPACE bytes for one
    // descriptor, so CMSG_FIRSTHDR finds a header with room for it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&m.header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = control_len() as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(over, &m.header, 0) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`] on `from`.
fn recv_fd(from: RawFd) -> io::Result<OwnedFd> {
    let mut m = FdMessage::new();
    // SAFETY: the kernel fills the control buffer, which is read only
    // where CMSG_FIRSTHDR finds a complete SCM_RIGHTS message of one
    // descriptor (which MSG_CMSG_CLOEXEC makes close-on-exec).
    unsafe {
        let n = libc::recvmsg(from, &mut m.header, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&m.header);
        if n == 0
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || (*cmsg).cmsg_len as usize != control_len()
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no descriptor came",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_as_written_and_junk_is_refused() {
        for socket in [
            Socket::Connect {
                host: "localhost".into(),
                port: 8888,
            },
            Socket::Listen {
                host: "".into(),
                port: 0,
            },
            Socket::ConnectUnix {
                path: "/run/a b.sock".into(),
            },
            Socket::Agent {
                dir: agent_dir_name(),
            },
        ] {
            assert_eq!(Socket::parse(&socket.argv()[2..]).unwrap(), socket);
        }
        for junk in [
            &["connect", "h"][..],
            &["connect", "h", "99999"],
            &["bind", "x"],
        ] {
            let junk: Vec<String> = junk.iter().map(|s| s.to_string()).collect();
            assert!(Socket::parse(&junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_descriptor_crosses_a_socket_pair_and_is_checked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), listener.as_raw_fd()).unwrap();
        let got = recv_fd(b.as_raw_fd()).unwrap();
        let want = Socket::Listen {
            host: "localhost".into(),
            port: 0,
        };
        let got = check_kind(got, &want).unwrap();
        let got = TcpListener::from(got);
        assert_eq!(got.local_addr().unwrap(), listener.local_addr().unwrap());
        // A listener is not a connection, and a file is no socket.
        let connect = Socket::Connect {
            host: "localhost".into(),
            port: 1,
        };
        send_fd(a.as_raw_fd(), listener.as_raw_fd()).unwrap();
        assert!(check_kind(recv_fd(b.as_raw_fd()).unwrap(), &connect).is_err());
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        send_fd(a.as_raw_fd(), file.as_raw_fd()).unwrap();
        assert!(check_kind(recv_fd(b.as_raw_fd()).unwrap(), &connect).is_err());
        // Nothing sent: an end, not a hang.
        drop(a);
        assert!(recv_fd(b.as_raw_fd()).is_err());
    }
}
