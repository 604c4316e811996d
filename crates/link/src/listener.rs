//! Accepting connections on a node's listeners. A failed accept is most
//! often passing (out of file descriptors while connections are many, a
//! connection reset before it was taken): it is logged and retried after a
//! pause, so a listener neither ends nor spins on it. Every server of the
//! grid accepts through here.

use std::net::SocketAddr;
use std::time::Duration;

/// How long to wait after a failed accept before the next try.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The next connection on `listener`; `what` names the server in the log.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
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
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "{what} listener: accepting a connection failed; retrying");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}
