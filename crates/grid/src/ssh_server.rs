//! The accept loop of both SSH servers, the front door and the
//! environments' logins, in place of russh's `run_on_socket`, which
//! neither bounds connections that never log in nor survives a failed
//! accept (out of file descriptors, it returns the error, and the front
//! door, and with it the node, would stop).
//!
//! As OpenSSH does with `LoginGraceTime` and `MaxStartups`: a connection
//! must log in within [`LOGIN_GRACE`], and at most [`MAX_LOGGING_IN`] may
//! be logging in at once; past that a new one is closed at once. Logged-in
//! connections are not counted: they are users. A failed accept is logged
//! and retried after a pause ([`link::listener`]), never the end of the
//! server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use russh::Disconnect;
use russh::server::{Config, Handler, run_stream};
use tokio::net::TcpListener;

/// How long a connection may take to log in; `COLONY_SSH_LOGIN_GRACE`
/// (seconds) overrides it, for tests.
pub const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// How many connections may be logging in at once.
pub const MAX_LOGGING_IN: usize = 64;

/// How long a session being ended may take to say goodbye.
const BYE_TIME: Duration = Duration::from_secs(1);

/// A connection's place among those logging in, held by its handler: the
/// handler says when the user is in ([`LoggingIn::logged_in`]), and the
/// place is given up then, or when the connection goes.
pub struct LoggingIn(Arc<Place>);

struct Place {
    logged_in: AtomicBool,
    logging_in: Arc<AtomicUsize>,
}

impl LoggingIn {
    /// The user is in: the connection no longer counts as logging in and
    /// the grace time no longer applies.
    pub fn logged_in(&self) {
        if !self.0.logged_in.swap(true, Ordering::AcqRel) {
            self.0.logging_in.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn is_logged_in(&self) -> bool {
        self.0.logged_in.load(Ordering::Acquire)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if !*self.logged_in.get_mut() {
            self.logging_in.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn login_grace() -> Duration {
    std::env::var("COLONY_SSH_LOGIN_GRACE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(LOGIN_GRACE, Duration::from_secs_f64)
}

/// Serves SSH on `listener` until `shutdown` resolves, then disconnects
/// every session with `reason`. `handler` makes each connection's handler
/// from the peer's address and its [`LoggingIn`] place.
pub async fn serve<H>(
    listener: TcpListener,
    config: Arc<Config>,
    mut handler: impl FnMut(SocketAddr, LoggingIn) -> H,
    shutdown: impl Future<Output = ()>,
    reason: &str,
) where
    H: Handler + Send + 'static,
    H::Error: std::fmt::Debug,
{
    let grace = login_grace();
    let logging_in = Arc::new(AtomicUsize::new(0));
    let (stop, _) = tokio::sync::broadcast::channel::<String>(1);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = link::listener::accept(&listener, "SSH") => accepted,
        };
        if logging_in.fetch_add(1, Ordering::AcqRel) >= MAX_LOGGING_IN {
            logging_in.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%peer, limit = MAX_LOGGING_IN, "refused an SSH connection: too many logging in at once");
            continue;
        }
        let place = Arc::new(Place {
            logged_in: AtomicBool::new(false),
            logging_in: logging_in.clone(),
        });
        let watch = LoggingIn(place.clone());
        let handler = handler(peer, LoggingIn(place));
        let (config, mut stopped) = (config.clone(), stop.subscribe());
        tokio::spawn(async move {
            let _ = socket.set_nodelay(config.nodelay);
            let deadline = tokio::time::Instant::now() + grace;
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
                Err(_) => {
                    tracing::info!(%peer, secs = grace.as_secs_f64(), "closed an SSH connection that did not log in in time");
                    return;
                }
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
                            tracing::info!(%peer, secs = grace.as_secs_f64(), "closed an SSH connection that did not log in in time");
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
