//! Accepting connections on a node's listeners. A failed accept is most
//! often passing (out of file descriptors while connections are many, a
//! connection reset before it was taken): it is logged and retried after a
//! pause, so a listener neither ends nor spins on it. Every server of the
//! grid accepts through here, and every connection it hands out sends each
//! write at once (TCP_NODELAY): the grid's protocols are small requests and
//! answers, and under Nagle's algorithm an answer written after another
//! small write (a TLS session ticket, an SSH step) waited for the peer's
//! delayed ACK, about 40 ms.
//!
//! [`Places`] bound how many connections may be in a state where they are
//! nobody yet (in their TLS handshake, logging in over SSH) at once, and a
//! [`LogBudget`] how many lines their refusals may write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many connections are in some state at once; each holds a [`Place`]
/// while it is.
#[derive(Default)]
pub struct Places(Arc<AtomicUsize>);

impl Places {
    /// A place, unless `max` are taken already.
    pub fn take(&self, max: usize) -> Option<Place> {
        if self.0.fetch_add(1, Ordering::AcqRel) >= max {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(self.0.clone()))
    }

    /// How many places are taken now.
    pub fn taken(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One taken place, given back when it is dropped.
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many log lines refusals may write: at most `lines` in each
/// `window`; past that they are counted, and the next line written says
/// how many went unlogged. A refusal is logged with its peer and reason,
/// but a flood of them must not flood the log as well: journald drops a
/// service's lines past its own rate, the important ones with them.
pub struct LogBudget {
    lines: usize,
    window: Duration,
    spent: Mutex<Spent>,
}

struct Spent {
    /// When the current window began (none yet before the first line).
    began: Option<Instant>,
    logged: usize,
    unlogged: u64,
}

/// The default budget: at most [`REFUSAL_LINES`] refusal lines in each
/// [`REFUSALS_WINDOW`].
pub const REFUSAL_LINES: usize = 20;
pub const REFUSALS_WINDOW: Duration = Duration::from_secs(10);

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget::new(REFUSAL_LINES, REFUSALS_WINDOW)
    }
}

impl LogBudget {
    pub const fn new(lines: usize, window: Duration) -> LogBudget {
        LogBudget {
            lines,
            window,
            spent: Mutex::new(Spent {
                began: None,
                logged: 0,
                unlogged: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` if so, with `n`
    /// the lines left unwritten before it; `None` if it is over budget
    /// (it is counted).
    pub fn take(&self, now: Instant) -> Option<u64> {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent
            .began
            .is_none_or(|began| now.saturating_duration_since(began) >= self.window)
        {
            spent.began = Some(now);
            spent.logged = 0;
        }
        if spent.logged >= self.lines {
            spent.unlogged += 1;
            return None;
        }
        spent.logged += 1;
        Some(std::mem::take(&mut spent.unlogged))
    }

    /// Logs that `what` (such as "a venti link") from `peer` was refused
    /// because of `why`, if the budget allows; the line says how many
    /// refusals before it went unlogged, if any did.
    pub fn warn_refused(&self, peer: SocketAddr, what: &str, why: &dyn std::fmt::Display) {
        match self.take(Instant::now()) {
            None => {}
            Some(0) => tracing::warn!(%peer, error = %why, "refused {what}"),
            Some(unlogged) => tracing::warn!(
                %peer,
                error = %why,
                unlogged,
                "refused {what}; {unlogged} refusals before this one were not logged (more than {} in {} s)",
                self.lines,
                self.window.as_secs()
            ),
        }
    }
}

/// Whether the error that ended a connection is its peer simply going
/// away: an end of file without TLS's close_notify (most clients, and
/// every killed process, close that way), a reset or a broken pipe. Those
/// are logged quietly; anything else is a fault worth a warning.
pub fn ordinary_disconnect(error: &str) -> bool {
    const ORDINARY: [&str; 5] = [
        "close_notify",
        "early eof",
        "unexpected end of file",
        "connection reset",
        "broken pipe",
    ];
    let error = error.to_lowercase();
    ORDINARY.iter().any(|o| error.contains(o))
}

/// How long to wait after a failed accept before the next try.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The next connection on `listener`; `what` names the server in the log.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                let _ = accepted.0.set_nodelay(true);
                return accepted;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} listener: accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// As [`accept`], for a blocking server.
pub fn accept_blocking(
    listener: &std::net::TcpListener,
    what: &str,
) -> (std::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept() {
            Ok(accepted) => {
                let _ = accepted.0.set_nodelay(true);
                return accepted;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} listener: accepting a connection failed; retrying");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_connection_sends_each_write_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = accept_blocking(&listener, "test");
        assert!(socket.nodelay().unwrap());

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (socket, _) = accept(&listener, "test").await;
            assert!(socket.nodelay().unwrap());
        });
    }

    #[test]
    fn a_log_budget_writes_its_lines_then_says_how_many_it_left_out() {
        let budget = LogBudget::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let taken: Vec<_> = (0..5).map(|i| budget.take(at(i))).collect();
        assert_eq!(taken, [Some(0), Some(0), Some(0), None, None]);
        // Still the same window: still over budget, still counted.
        assert_eq!(budget.take(at(9_999)), None);
        // A new window: the first line tells of the three left out.
        assert_eq!(budget.take(at(10_000)), Some(3));
        assert_eq!(budget.take(at(10_001)), Some(0));
        // A quiet spell, then one refusal: written, nothing left out.
        assert_eq!(budget.take(at(60_000)), Some(0));
    }

    #[test]
    fn a_peer_going_away_is_ordinary_and_a_fault_is_not() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof).to_string();
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset).to_string();
        for text in [
            eof.as_str(),
            reset.as_str(),
            "Connection reset by peer (os error 104)",
            "reading a frame: peer closed connection without sending TLS close_notify: https://docs.rs/rustls",
        ] {
            assert!(ordinary_disconnect(text), "{text}");
        }
        for text in [
            "a frame of 1986358900 bytes",
            "invalid peer certificate: BadSignature",
        ] {
            assert!(!ordinary_disconnect(text), "{text}");
        }
    }
}
