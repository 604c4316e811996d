//! The accept loop of both SSH servers, the front door and the
//! environments' logins, in place of russh's `run_on_socket`, which
//! neither bounds connections that never log in nor survives a failed
//! accept (out of file descriptors, it returns the error, and the front
//! door, and with it the node, would stop).
//!
//! As OpenSSH does with `LoginGraceTime` and `MaxStartups`: a connection
//! must log in within [`LOGIN_GRACE`], and at most [`MAX_LOGGING_IN`] may
//! be logging in at once; past that a new one is closed at once (logged
//! within a [`LogBudget`], so a flood is counted, not written out line by
//! line). Logged-in connections are not counted: they are users. A failed
//! accept is logged and retried after a pause ([`link::listener`]), never
//! the end of the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use link::listener::{LogBudget, Place, Places};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use russh::Disconnect;
use russh::server::{Config, Handler, run_stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection may take to log in, unless the node's
/// configuration says otherwise (`login-grace`).
pub const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// How many connections may be logging in at once.
pub const MAX_LOGGING_IN: usize = 64;

/// How long a session being ended may take to say goodbye.
const BYE_TIME: Duration = Duration::from_secs(1);

/// A connection's place among those logging in, shared by its handler and
/// the task that keeps its grace time: the handler says when the user is
/// in ([`LoggingIn::logged_in`]), and the place is given up then, or when
/// the connection goes.
#[derive(Clone)]
pub struct LoggingIn {
    place: Arc<Mutex<Option<Place>>>,
    /// The server's budget of refusal lines, shared by its connections.
    refusals: Arc<LogBudget>,
    peer: SocketAddr,
}

impl LoggingIn {
    /// The user is in: the connection no longer counts as logging in and
    /// the grace time no longer applies.
    pub fn logged_in(&self) {
        drop(self.place().take());
    }

    pub fn is_logged_in(&self) -> bool {
        self.place().is_none()
    }

    /// Logs, within the server's budget of refusal lines, that this
    /// connection's login was refused and why (a connection that offered
    /// only unknown keys, say, when it goes).
    pub fn log_refused(&self, why: &str) {
        self.refusals.warn_refused(self.peer, "an SSH login", &why);
    }

    fn place(&self) -> std::sync::MutexGuard<'_, Option<Place>> {
        self.place.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How many reads of a connection are acknowledged at once: enough for
/// the version exchange, key exchange and a login.
const QUICK_ACKED_READS: u32 = 32;

/// A connection whose first [`QUICK_ACKED_READS`] reads are acknowledged
/// at once (TCP_QUICKACK after each, since the kernel clears it).
///
/// OpenSSH's client sets TCP_NODELAY only for interactive sessions, so
/// during key exchange its small ECDH message waited, under Nagle's
/// algorithm, for our ACK of its KEXINIT, which Linux delayed by about 40
/// ms because we had nothing to send (our KEXINIT went first). Measured:
/// `ssh … status` through the front door took 56 ms, 41 of them that wait.
struct QuickAcks {
    socket: TcpStream,
    reads_left: u32,
}

impl QuickAcks {
    fn new(socket: TcpStream) -> QuickAcks {
        QuickAcks {
            socket,
            reads_left: QUICK_ACKED_READS,
        }
    }

    fn quick_ack(&self) {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on the socket this value owns, with an int
        // option that lives across the call.
        unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for QuickAcks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if self.reads_left > 0 {
            // Also before data arrives: the ACK of what comes next is then
            // sent at once.
            self.quick_ack();
            if polled.is_ready() {
                self.reads_left -= 1;
            }
        }
        polled
    }
}

impl AsyncWrite for QuickAcks {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

/// How [`serve`] stops taking connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every session is disconnected, told the serve's reason.
    End,
    /// The sessions go on; the [`Sessions`] returned end them.
    Pause,
}

/// The sessions of a paused [`serve`]: each is disconnected, told the
/// serve's reason, when this drops.
pub struct Sessions {
    stop: tokio::sync::broadcast::Sender<String>,
    reason: String,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let _ = self.stop.send(std::mem::take(&mut self.reason));
    }
}

/// Serves SSH on `listener` until `shutdown` resolves: then, as it says,
/// disconnects every session with `reason`, or leaves them be and returns
/// them. The listener stays its owner's (an environment's login port
/// outlives a suspend). `first`, if given, is a
/// connection already accepted on it (the one that woke an environment),
/// served before any other. `handler` makes each connection's handler
/// from the peer's address and its [`LoggingIn`] place; `refused` is told
/// of each connection closed unanswered because too many were logging in
/// (for the node's metrics: the log holds only a budget of them).
#[allow(clippy::too_many_arguments)]
pub async fn serve<H>(
    listener: &TcpListener,
    mut first: Option<(tokio::net::TcpStream, SocketAddr)>,
    config: Arc<Config>,
    grace: Duration,
    mut handler: impl FnMut(SocketAddr, LoggingIn) -> H,
    refused: impl Fn(),
    shutdown: impl Future<Output = Stop>,
    reason: &str,
) -> Option<Sessions>
where
    H: Handler + Send + 'static,
    H::Error: std::fmt::Debug,
{
    let logging_in = Places::default();
    let refusals = Arc::new(LogBudget::default());
    let (stop, _) = tokio::sync::broadcast::channel::<String>(1);
    tokio::pin!(shutdown);
    let stopped_by = loop {
        let (socket, peer) = match first.take() {
            Some(accepted) => accepted,
            None => tokio::select! {
                how = &mut shutdown => break how,
                accepted = link::listener::accept(listener, "SSH") => accepted,
            },
        };
        let Some(place) = logging_in.take(MAX_LOGGING_IN) else {
            refused();
            let why = format_args!("too many logging in at once (at most {MAX_LOGGING_IN})");
            refusals.warn_refused(peer, "an SSH connection", &why);
            continue;
        };
        let watch = LoggingIn {
            place: Arc::new(Mutex::new(Some(place))),
            refusals: refusals.clone(),
            peer,
        };
        let handler = handler(peer, watch.clone());
        let (config, mut stopped) = (config.clone(), stop.subscribe());
        let socket = QuickAcks::new(socket);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            let too_late = || tracing::info!(%peer, secs = grace.as_secs_f64(), "closed an SSH connection that did not log in in time");
            // The version exchange is part of the login: a peer that never
            // sends its version line is held no longer than one that
            // stalls later.
            let session = match tokio::time::timeout_at(
                deadline,
                run_stream(config, socket, handler),
            )
            .await
            {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = ?e, "SSH connection setup failed");
                    return;
                }
                Err(_) => return too_late(),
            };
            let handle = session.handle();
            tokio::pin!(session);
            let mut timed = true;
            let why = loop {
                tokio::select! {
                    ended = &mut session => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = ?e, "SSH connection ended");
                        }
                        return;
                    }
                    () = tokio::time::sleep_until(deadline), if timed => {
                        timed = false;
                        if !watch.is_logged_in() {
                            too_late();
                            break "login grace time over".to_string();
                        }
                    }
                    reason = stopped.recv() => break reason.unwrap_or_default(),
                }
            };
            // Say why, and give the session a moment to send it.
            let _ = tokio::time::timeout(BYE_TIME, async {
                let _ = handle
                    .disconnect(Disconnect::ByApplication, why, String::new())
                    .await;
                let _ = (&mut session).await;
            })
            .await;
        });
    };
    let sessions = Sessions {
        stop,
        reason: reason.to_string(),
    };
    match stopped_by {
        Stop::End => None,
        Stop::Pause => Some(sessions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the kernel would acknowledge the next segment at once.
    fn acks_at_once(socket: &TcpStream) -> bool {
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int that lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        on != 0
    }

    #[test]
    fn a_login_is_acknowledged_at_once_then_as_the_kernel_likes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            // A question answered at once puts the connection in the
            // kernel's interactive mode, where ACKs wait to ride on data:
            // what a client under Nagle's algorithm then waits for. (At
            // once: within the kernel's ACK timeout; a loaded machine may
            // need a few tries.)
            async fn exchange(
                client: &mut TcpStream,
                server: &mut (impl AsyncRead + AsyncWrite + Unpin),
            ) {
                let mut byte = [0u8; 1];
                client.write_all(b"?").await.unwrap();
                server.read_exact(&mut byte).await.unwrap();
                server.write_all(b"!").await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
            }
            let mut tries = 0;
            while acks_at_once(&server) {
                tries += 1;
                assert!(tries < 100, "the connection never became interactive");
                exchange(&mut client, &mut server).await;
            }

            let mut server = QuickAcks::new(server);
            let mut byte = [0u8; 1];
            for _ in 0..QUICK_ACKED_READS {
                client.write_all(b"?").await.unwrap();
                server.read_exact(&mut byte).await.unwrap();
                assert!(acks_at_once(&server.socket));
                server.write_all(b"!").await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
            }
            assert_eq!(server.reads_left, 0);
            // Past the login the kernel decides again.
            let mut tries = 0;
            while acks_at_once(&server.socket) {
                tries += 1;
                assert!(
                    tries < 100,
                    "reads past the login are still acknowledged at once"
                );
                exchange(&mut client, &mut server).await;
            }
        });
    }
}
