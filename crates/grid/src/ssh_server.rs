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
use russh::Disconnect;
use russh::server::{Config, Handler, run_stream};
use tokio::net::TcpListener;

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

/// Serves SSH on `listener` until `shutdown` resolves, then disconnects
/// every session with `reason`. `handler` makes each connection's handler
/// from the peer's address and its [`LoggingIn`] place; `refused` is told
/// of each connection closed unanswered because too many were logging in
/// (for the node's metrics: the log holds only a budget of them).
pub async fn serve<H>(
    listener: TcpListener,
    config: Arc<Config>,
    grace: Duration,
    mut handler: impl FnMut(SocketAddr, LoggingIn) -> H,
    refused: impl Fn(),
    shutdown: impl Future<Output = ()>,
    reason: &str,
) where
    H: Handler + Send + 'static,
    H::Error: std::fmt::Debug,
{
    let logging_in = Places::default();
    let refusals = Arc::new(LogBudget::default());
    let (stop, _) = tokio::sync::broadcast::channel::<String>(1);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = link::listener::accept(&listener, "SSH") => accepted,
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
        tokio::spawn(async move {
            let _ = socket.set_nodelay(config.nodelay);
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
    }
    let _ = stop.send(reason.to_string());
}
