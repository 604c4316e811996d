//! An environment's own SSH login. Only the environment's owner (by key) is
//! admitted. Interactive shells get a pseudo-terminal (with window resizing);
//! one-shot commands get pipes, so `tar c . | ssh … tar x` works, and their
//! exit status; the `sftp` subsystem runs the root's sftp-server if it has one.
//! Everything runs inside the environment as its root user, with the shell
//! its /etc/passwd gives root (or /bin/sh). Port and unix-socket forwards
//! are made inside the environment too ([`super::forward`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, ssh_key};
use russh::server::{Auth, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use grid::ssh_server::{Sessions, Stop};
use link::listener::{Place, Places};
use russh::server::ChannelOpenHandle;
use russh::{ChannelOpenFailure, ChannelStream};

use super::forward::{self, Socket};
use crate::OwnerKeys;
use crate::env::Environment;

/// What the door needs to know about its environment.
pub struct Door {
    pub owner: String,
    /// The keys that log in as `owner`.
    pub keys: OwnerKeys,
    pub env: Arc<Environment>,
    /// The environment's file system (to look for an sftp-server safely).
    pub fs: Arc<fossil::Fs>,
    /// root's login shell inside the environment.
    pub shell: String,
    /// The environment's persistent shells on hubs (`ssh … hub NAME`).
    pub shells: Arc<super::hubshell::HubShells>,
    /// Its remote forwards' listeners, over all its logins (at most
    /// [`forward::MAX_LISTENERS`]).
    pub listeners: Places,
    /// Its forwarded connections, over all its logins (at most
    /// [`forward::MAX_FORWARDS`]).
    pub forwards: Arc<Places>,
    /// Its logins may forward the user's agent (`spawn … agent=yes`).
    pub agent: bool,
    /// The one-time key of the storage node's `run` that started it, which
    /// logs in as the owner too.
    pub run_key: Option<ssh_key::PublicKey>,
    /// Its open logins, which keep it from being suspended.
    pub activity: Arc<crate::idle::Activity>,
    /// What the login banner says, if anything (after a wake: that the
    /// processes started fresh).
    pub banner: Option<String>,
}

/// Serves the door on `listener` (first `woken_by`, a connection already
/// accepted on it) until `stop` says how to stop (its sender dropped:
/// ending every session); the sessions of a pause are returned.
pub async fn serve(
    door: Arc<Door>,
    listener: Arc<tokio::net::TcpListener>,
    woken_by: Option<(tokio::net::TcpStream, std::net::SocketAddr)>,
    key: PrivateKey,
    stop: tokio::sync::oneshot::Receiver<Stop>,
) -> Option<Sessions> {
    let new_conn = |_peer, logging_in| Conn {
        _connected: door.activity.connect(),
        present: None,
        door: door.clone(),
        logging_in,
        channels: HashMap::new(),
        refused: false,
        remote: HashMap::new(),
        agent: None,
    };
    let stopped = async { stop.await.unwrap_or(Stop::End) };
    grid::ssh_server::serve(
        &listener,
        woken_by,
        grid::ssh::server_config(key),
        grid::ssh_server::LOGIN_GRACE,
        new_conn,
        || {},
        stopped,
        "the environment was ended",
    )
    .await
}

#[derive(Default)]
struct Chan {
    /// (TERM, columns, rows) once a pty was asked for.
    pty: Option<(String, u16, u16)>,
    /// Input for the program, written by a thread of its own so a full pipe
    /// never stalls the session (whose task also carries the program's output).
    input: Option<Feeder>,
    master: Option<Arc<File>>,
    /// A pidfd of the helper process: signals through it cannot reach a
    /// process that later got the same pid.
    helper: Option<Arc<OwnedFd>>,
    /// Attached to a persistent shell: its name, the reader of its output,
    /// and the `%` commands in what is typed.
    attached: Option<(String, super::hubshell::Attached, super::hubshell::Typed)>,
}

impl Chan {
    /// Ends the program (its child dies with it, PR_SET_PDEATHSIG), or
    /// leaves the persistent shell it is attached to (which runs on).
    fn kill(&self, door: &Door) {
        if let Some((_, attached, _)) = &self.attached {
            attached.end(&door.shells.hubs);
        }
        if let Some(pidfd) = &self.helper {
            // SAFETY: pidfd_send_signal on a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                )
            };
        }
    }
}

/// The most input a program may leave unread before its session ends.
/// The session's task never waits for the program to read (its output
/// travels on the same task, and a program like `cat` stops reading while
/// its output waits), so what the client sends ahead waits in memory: this
/// much, then the session ends, saying why.
pub const MAX_UNREAD_INPUT: usize = 64 << 20;

/// The session's end of a program's input.
struct Feeder {
    to: std::sync::mpsc::Sender<Vec<u8>>,
    /// Bytes sent and not yet written to the program.
    unread: Arc<std::sync::atomic::AtomicUsize>,
}

impl Feeder {
    /// Passes `data` on; false if the program has left more than
    /// [`MAX_UNREAD_INPUT`] unread.
    fn send(&self, data: &[u8]) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.unread.fetch_add(data.len(), SeqCst) + data.len() > MAX_UNREAD_INPUT {
            return false;
        }
        if self.to.send(data.to_vec()).is_err() {
            // The program closed its input: what comes is dropped, as a
            // pipe with no reader would.
            self.unread.fetch_sub(data.len(), SeqCst);
        }
        true
    }
}

/// A thread that writes what the channel receives to the program's input,
/// and closes it when the sender is dropped (end of input).
fn feeder(mut to: File) -> Feeder {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let unread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written = unread.clone();
    std::thread::spawn(move || {
        for chunk in rx {
            let ok = to.write_all(&chunk).is_ok();
            written.fetch_sub(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            if !ok {
                break;
            }
        }
    });
    Feeder { to: tx, unread }
}

struct Conn {
    door: Arc<Door>,
    /// Counted as a connection while it lives, and as a login once its
    /// key is accepted (only a login keeps the environment awake).
    _connected: crate::idle::Connected,
    present: Option<crate::idle::Present>,
    logging_in: grid::ssh_server::LoggingIn,
    channels: HashMap<ChannelId, Chan>,
    /// A key was offered and refused (logged when the connection goes,
    /// if nobody logged in).
    refused: bool,
    /// Its remote forwards, by the address and port asked for: the task
    /// that accepts on each.
    remote: HashMap<(String, u32), tokio::task::AbortHandle>,
    /// A forwarded agent (`ssh -A`, if the environment allows it): the
    /// directory of its socket inside, and the task that accepts on it.
    agent: Option<(String, tokio::task::AbortHandle)>,
}

/// Relays between a forward's channel and its socket until both ends are
/// done; the place is given back when it ends.
async fn relay(channel: Channel<Msg>, socket: OwnedFd, _place: Place) {
    let mut channel: ChannelStream<Msg> = channel.into_stream();
    let std = std::os::unix::net::UnixStream::from(socket);
    let _ = std.set_nonblocking(true);
    // Whatever its family, a stream socket reads and writes alike.
    let Ok(mut socket) = tokio::net::UnixStream::from_std(std) else {
        return;
    };
    // Buffers of an SSH packet's size or more: tokio's default of 8 KiB
    // made a forward half as fast as the login's own channel.
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut channel,
        &mut socket,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await;
}

/// The relay's buffer in each direction.
const RELAY_BUFFER: usize = 256 << 10;

/// A refusal the client shows as it is (`open failed: …`).
fn refusal(code: u32, reason: impl Into<String>) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code,
        reason: reason.into(),
    }
}

/// RFC 4254's reason codes.
const CONNECT_FAILED: u32 = 2;
const RESOURCE_SHORTAGE: u32 = 4;

/// A pseudo-terminal from the environment's own devpts instance (through
/// `/proc/PID/root`), so programs inside find their terminal under /dev/pts.
/// Its terminal is given to `owner` (a rootless environment's root), who
/// could not open it again otherwise.
fn open_pty(
    init_pid: u32,
    owner: Option<u32>,
    cols: u16,
    rows: u16,
) -> std::io::Result<(File, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let pts = format!("/proc/{init_pid}/root/dev/pts");
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("{pts}/ptmx"))?;
    let mut n: libc::c_uint = 0;
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on the ptmx descriptor we just opened, with valid pointers.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let ws = winsize(cols, rows);
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("{pts}/{n}"))?;
    if let Some(id) = owner {
        // SAFETY: fchown of the descriptor we just opened.
        if unsafe { libc::fchown(slave.as_raw_fd(), id, id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((master, OwnedFd::from(slave)))
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sends everything `from` yields to the channel (stdout, or stderr with `ext`).
fn pump(
    mut from: impl Read + Send + 'static,
    handle: Handle,
    channel: ChannelId,
    ext: Option<u32>,
    rt: tokio::runtime::Handle,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let data = buf[..n].to_vec();
            let sent = match ext {
                Some(e) => rt.block_on(handle.extended_data(channel, e, data)),
                None => rt.block_on(handle.data(channel, data)),
            };
            if sent.is_err() {
                return;
            }
        }
    })
}

impl Conn {
    /// Opens `channel` onto `socket`, made inside the environment, off the
    /// session's task (making it may wait for a connect).
    fn forward(&mut self, channel: Channel<Msg>, socket: Socket, reply: ChannelOpenHandle) {
        let Some(place) = self.door.forwards.take(forward::MAX_FORWARDS) else {
            let why = format!(
                "this environment has {} forwarded connections open, the most it may",
                forward::MAX_FORWARDS
            );
            tokio::spawn(reply.reject(refusal(RESOURCE_SHORTAGE, why)));
            return;
        };
        let env = self.door.env.clone();
        tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || forward::open(&env, &socket)).await;
            match made {
                Ok(Ok(fd)) => {
                    reply.accept().await;
                    relay(channel, fd, place).await;
                }
                Ok(Err(why)) => reply.reject(refusal(CONNECT_FAILED, why)).await,
                Err(e) => reply.reject(refusal(CONNECT_FAILED, e.to_string())).await,
            }
        });
    }

    fn admitted(&self, key: &ssh_key::PublicKey) -> bool {
        self.door.keys.admits(&self.door.owner, key)
            || self
                .door
                .run_key
                .as_ref()
                .is_some_and(|k| k.key_data() == key.key_data())
    }

    /// Attaches `channel` to persistent shell `name`, starting it if needed:
    /// its output hub from the oldest kept byte to the channel.
    fn attach(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> std::io::Result<()> {
        let door = self.door.clone();
        let state = self.channels.entry(channel).or_default();
        let (term, cols, rows) = state.pty.clone().unwrap_or_else(|| ("dumb".into(), 80, 24));
        let (init_pid, owner) = (door.env.init_pid, door.env.root_on_host());
        door.shells
            .ensure(name, &door.env, &door.shell, &term, || {
                open_pty(init_pid, owner, cols, rows)
            })?;
        door.shells.resize(name, cols, rows);
        let output = format!("{name}1");
        let reader = door
            .shells
            .hubs
            .open_reader(&output)
            .map_err(std::io::Error::other)?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attached = super::hubshell::Attached {
            hub: output.clone(),
            reader,
            done: done.clone(),
        };
        state.attached = Some((name.to_string(), attached, super::hubshell::Typed::new()));
        let handle = session.handle();
        let rt = tokio::runtime::Handle::current();
        let hubs = door.shells.hubs.clone();
        std::thread::spawn(move || {
            let never = std::sync::atomic::AtomicBool::new(false);
            loop {
                match hubs.read(&output, reader, 64 * 1024, &never) {
                    Ok(hubfs::hub::Got::Data(d)) => {
                        if rt.block_on(handle.data(channel, d)).is_err() {
                            break;
                        }
                    }
                    // Lost output (a burst past the scrollback): read on.
                    Err(hubfs::HubError::Lost { .. }) => continue,
                    // The shell ended, or this attachment did.
                    Ok(hubfs::hub::Got::Eof) | Err(_) => break,
                }
            }
            hubs.close_reader(&output, reader);
            if !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rt.block_on(handle.exit_status_request(channel, 0));
                let _ = rt.block_on(handle.eof(channel));
                let _ = rt.block_on(handle.close(channel));
            }
        });
        Ok(())
    }

    /// Ends `channel`'s attachment to its shell; the shell runs on.
    fn leave_shell(&mut self, channel: ChannelId) {
        if let Some((_, attached, _)) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.attached.take())
        {
            attached.end(&self.door.shells.hubs);
        }
    }

    /// A `%` line typed in an attachment.
    fn hub_command(
        &mut self,
        channel: ChannelId,
        name: &str,
        line: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        match line.trim() {
            "%detach" => {
                self.leave_shell(channel);
                session.data(
                    channel,
                    format!("\r\n[detached from {name}; it runs on]\r\n").into_bytes(),
                )?;
                session.exit_status_request(channel, 0)?;
                session.eof(channel)?;
                session.close(channel)?;
            }
            attach if attach.starts_with("%attach") => {
                let wanted = attach.trim_start_matches("%attach").trim();
                match super::hubshell::requested(&format!("hub {wanted}")) {
                    Some(Ok(next)) => {
                        self.leave_shell(channel);
                        session.data(
                            channel,
                            format!("\r\n[{name} runs on; attached to {next}]\r\n").into_bytes(),
                        )?;
                        if let Err(e) = self.attach(channel, &next, session) {
                            session.data(
                                channel,
                                format!("attaching to {next}: {e}\r\n").into_bytes(),
                            )?;
                            session.exit_status_request(channel, 1)?;
                            session.close(channel)?;
                        }
                    }
                    Some(Err(why)) => {
                        session.data(channel, format!("\r\n{why}\r\n").into_bytes())?
                    }
                    None => {}
                }
            }
            "%list" => session.data(
                channel,
                format!("\r\n{}", self.door.shells.list()).into_bytes(),
            )?,
            "%status" => {
                let kept = self
                    .door
                    .shells
                    .hubs
                    .info(&format!("{name}1"))
                    .map_or(0, |i| i.kept);
                let state = if self.door.shells.running(name) {
                    "running"
                } else {
                    "ended"
                };
                session.data(
                    channel,
                    format!("\r\n{name}: {state}, {kept} bytes of output kept\r\n").into_bytes(),
                )?
            }
            other => session.data(
                channel,
                format!("\r\nunknown command {other:?}: %detach, %attach NAME, %list, %status\r\n")
                    .into_bytes(),
            )?,
        }
        Ok(())
    }

    /// Starts `argv` in the environment for `channel`.
    fn start(
        &mut self,
        channel: ChannelId,
        argv: Vec<String>,
        session: &mut Session,
    ) -> std::io::Result<()> {
        let handle = session.handle();
        let rt = tokio::runtime::Handle::current();
        let agent = self
            .agent
            .as_ref()
            .map(|(dir, _)| forward::agent_socket(dir));
        let state = self.channels.entry(channel).or_default();
        let pty = state.pty.clone();
        let mut child: Child;
        let mut pumps = Vec::new();
        if let Some((term, cols, rows)) = pty {
            let (master, slave) = open_pty(
                self.door.env.init_pid,
                self.door.env.root_on_host(),
                cols,
                rows,
            )?;
            let mut cmd =
                self.door
                    .env
                    .command_with_agent(&argv, true, Some(&term), agent.as_deref());
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            child = cmd.spawn()?;
            drop(cmd);
            let master = Arc::new(master);
            let reader = master.try_clone()?;
            state.input = Some(feeder(master.try_clone()?));
            state.master = Some(master);
            pumps.push(pump(reader, handle.clone(), channel, None, rt.clone()));
        } else {
            let mut cmd = self
                .door
                .env
                .command_with_agent(&argv, false, None, agent.as_deref());
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            child = cmd.spawn()?;
            let stdin: File = OwnedFd::from(child.stdin.take().expect("piped")).into();
            state.input = Some(feeder(stdin));
            pumps.push(pump(
                child.stdout.take().expect("piped"),
                handle.clone(),
                channel,
                None,
                rt.clone(),
            ));
            pumps.push(pump(
                child.stderr.take().expect("piped"),
                handle.clone(),
                channel,
                Some(1),
                rt.clone(),
            ));
        }
        // SAFETY: pidfd_open of our own child, which has not been waited for.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if pidfd >= 0 {
            // SAFETY: pidfd_open returned a descriptor we now own.
            state.helper = Some(Arc::new(unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32)
            }));
        }
        let is_pty = state.master.is_some();
        std::thread::spawn(move || {
            let status = child.wait().ok().and_then(|s| s.code()).unwrap_or(255) as u32;
            if is_pty {
                // The pty reader sees EIO once the last holder of the terminal is
                // gone; give it a moment to pass on the final output.
                std::thread::sleep(Duration::from_millis(50));
            } else {
                for p in pumps.drain(..) {
                    let _ = p.join();
                }
            }
            let _ = rt.block_on(handle.exit_status_request(channel, status));
            let _ = rt.block_on(handle.eof(channel));
            let _ = rt.block_on(handle.close(channel));
        });
        Ok(())
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.door.banner.clone())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.admitted(offer.public_key) {
            Auth::Accept
        } else {
            self.refused = true;
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.admitted(key.public_key) {
            self.logging_in.logged_in();
            self.present
                .get_or_insert_with(|| self.door.activity.enter());
            Ok(Auth::Accept)
        } else {
            self.refused = true;
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), Chan::default());
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port_to_connect) else {
            let why = format!("{port_to_connect} is not a port number");
            reply.reject(refusal(CONNECT_FAILED, why)).await;
            return Ok(());
        };
        let socket = Socket::Connect {
            host: host_to_connect.to_string(),
            port,
        };
        self.forward(channel, socket, reply);
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let socket = Socket::ConnectUnix {
            path: socket_path.to_string(),
        };
        self.forward(channel, socket, reply);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(wanted) = u16::try_from(*port) else {
            return Ok(false);
        };
        let Some(place) = self.door.listeners.take(forward::MAX_LISTENERS) else {
            tracing::info!(
                owner = %self.door.owner,
                "refused a remote forward: the environment has {} listeners, the most it may",
                forward::MAX_LISTENERS
            );
            return Ok(false);
        };
        let (env, socket) = (
            self.door.env.clone(),
            Socket::Listen {
                host: address.to_string(),
                port: wanted,
            },
        );
        let made = tokio::task::spawn_blocking(move || forward::open(&env, &socket)).await;
        let listener = match made {
            Ok(Ok(fd)) => std::net::TcpListener::from(fd),
            Ok(Err(why)) => {
                tracing::info!(owner = %self.door.owner, reason = %why, "refused a remote forward");
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(wanted);
        let _ = listener.set_nonblocking(true);
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return Ok(false);
        };
        if *port == 0 {
            *port = bound as u32;
        }
        let (handle, forwards) = (session.handle(), self.door.forwards.clone());
        let (address, asked) = (address.to_string(), *port);
        let key = (address.clone(), asked);
        let accepting = tokio::spawn(async move {
            // The environment's listener, held while this runs.
            let _listener_place = place;
            loop {
                let (socket, peer) = link::listener::accept(&listener, "a remote forward").await;
                // Past the login's limit a connection is closed at once.
                let Some(conn_place) = forwards.take(forward::MAX_FORWARDS) else {
                    continue;
                };
                let (handle, address) = (handle.clone(), address.clone());
                tokio::spawn(async move {
                    let opened = handle
                        .channel_open_forwarded_tcpip(
                            address,
                            asked,
                            peer.ip().to_string(),
                            peer.port() as u32,
                        )
                        .await;
                    if let (Ok(channel), Ok(socket)) = (opened, socket.into_std()) {
                        relay(channel, OwnedFd::from(socket), conn_place).await;
                    }
                });
            }
        });
        if let Some(old) = self.remote.insert(key, accepting.abort_handle()) {
            old.abort();
        }
        Ok(true)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.door.agent {
            tracing::info!(owner = %self.door.owner, "refused agent forwarding: the environment was spawned without agent=yes");
            return Ok(false);
        }
        if self.agent.is_some() {
            return Ok(true);
        }
        let Some(place) = self.door.forwards.take(forward::MAX_FORWARDS) else {
            return Ok(false);
        };
        let dir = forward::agent_dir_name();
        let (env, socket) = (self.door.env.clone(), Socket::Agent { dir: dir.clone() });
        let made = tokio::task::spawn_blocking(move || forward::open(&env, &socket)).await;
        let listener = match made {
            Ok(Ok(fd)) => std::os::unix::net::UnixListener::from(fd),
            Ok(Err(why)) => {
                tracing::info!(owner = %self.door.owner, reason = %why, "agent forwarding failed");
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        let _ = listener.set_nonblocking(true);
        let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
            return Ok(false);
        };
        let (handle, forwards) = (session.handle(), self.door.forwards.clone());
        let accepting = tokio::spawn(async move {
            let _agent_place = place;
            while let Ok((socket, _)) = listener.accept().await {
                let Some(conn_place) = forwards.take(forward::MAX_FORWARDS) else {
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    if let (Ok(channel), Ok(socket)) =
                        (handle.channel_open_agent().await, socket.into_std())
                    {
                        relay(channel, OwnedFd::from(socket), conn_place).await;
                    }
                });
            }
        });
        self.agent = Some((dir, accepting.abort_handle()));
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(match self.remote.remove(&(address.to_string(), port)) {
            Some(accepting) => {
                accepting.abort();
                true
            }
            None => false,
        })
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().pty =
            Some((term.to_string(), cols as u16, rows as u16));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pw: u32,
        _ph: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((name, _, _)) = self
            .channels
            .get(&channel)
            .and_then(|c| c.attached.as_ref())
        {
            self.door.shells.resize(name, cols as u16, rows as u16);
        }
        if let Some(master) = self.channels.get(&channel).and_then(|c| c.master.as_ref()) {
            let ws = winsize(cols as u16, rows as u16);
            // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        match super::hubshell::requested(&command) {
            Some(Ok(name)) => {
                match self.attach(channel, &name, session) {
                    Ok(()) => session.channel_success(channel)?,
                    Err(e) => {
                        tracing::warn!(error = %e, "attaching to a hub shell failed");
                        session.channel_failure(channel)?;
                    }
                }
                return Ok(());
            }
            Some(Err(why)) => {
                session.channel_success(channel)?;
                session.extended_data(channel, 1, format!("{why}\r\n").into_bytes())?;
                session.exit_status_request(channel, 2)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
            None => {}
        }
        let argv = vec![self.door.shell.clone(), "-c".into(), command];
        match self.start(channel, argv, session) {
            Ok(()) => session.channel_success(channel)?,
            Err(e) => {
                tracing::warn!(error = %e, "starting a command in an environment failed");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let argv = vec![self.door.shell.clone(), "-l".into()];
        match self.start(channel, argv, session) {
            Ok(()) => session.channel_success(channel)?,
            Err(e) => {
                tracing::warn!(error = %e, "starting a shell in an environment failed");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let found = [
            "usr/lib/openssh/sftp-server",
            "usr/libexec/openssh/sftp-server",
            "usr/lib/sftp-server",
            "usr/libexec/sftp-server",
        ]
        .into_iter()
        .find(|p| crate::rootfs::read_file(&self.door.fs, p, 64 << 20).is_some());
        if name != "sftp" {
            tracing::info!(subsystem = name, "no such subsystem in this environment");
            session.channel_failure(channel)?;
            return Ok(());
        }
        // The root's own sftp-server if it has one, else colony's, run inside.
        let argv = match found {
            Some(path) => vec![format!("/{path}")],
            None => vec![crate::env::SELF.to_string(), "__sftp-server".to_string()],
        };
        match self.start(channel, argv, session) {
            Ok(()) => session.channel_success(channel)?,
            Err(_) => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.channels.get_mut(&channel)
            && let Some((name, _, typed)) = &mut c.attached
        {
            let name = name.clone();
            for key in typed.feed(data) {
                match key {
                    super::hubshell::Key::Shell(bytes) => {
                        let _ = self.door.shells.hubs.write(&format!("{name}0"), &bytes);
                    }
                    super::hubshell::Key::Echo(bytes) => session.data(channel, bytes)?,
                    super::hubshell::Key::Command(line) => {
                        self.hub_command(channel, &name, &line, session)?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(input) = self.channels.get(&channel).and_then(|c| c.input.as_ref())
            && !input.send(data)
        {
            let note = format!(
                "colony: the program left more than {} MiB of its input unread; the session is ended\n",
                MAX_UNREAD_INPUT >> 20
            );
            tracing::warn!(channel = ?channel, "a session's unread input passed its bound; ended");
            session.extended_data(channel, 1, note.into_bytes())?;
            session.exit_status_request(channel, 1)?;
            session.eof(channel)?;
            session.close(channel)?;
            if let Some(c) = self.channels.remove(&channel) {
                c.kill(&self.door);
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // End of the client's input: close the program's stdin (not a pty's).
        if let Some(c) = self.channels.get_mut(&channel)
            && c.master.is_none()
        {
            c.input = None;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.channels.remove(&channel) {
            c.kill(&self.door);
        }
        Ok(())
    }
}

impl Drop for Conn {
    /// A dropped connection ends what it started: no shell is left behind.
    fn drop(&mut self) {
        for c in self.channels.values() {
            c.kill(&self.door);
        }
        // Its remote forwards' listeners close with it, and its agent's
        // socket goes (inside, by a helper of its own).
        for (_, accepting) in self.remote.drain() {
            accepting.abort();
        }
        if let Some((dir, accepting)) = self.agent.take() {
            accepting.abort();
            let env = self.door.env.clone();
            std::thread::spawn(move || forward::remove_agent(&env, &dir));
        }
        if self.refused && !self.logging_in.is_logged_in() {
            let why = format!(
                "no key it offered may log in to {}'s environment",
                self.door.owner
            );
            self.logging_in.log_refused(&why);
        }
    }
}
