//! The servers' signals: SIGTERM and SIGINT stop them, SIGHUP reloads
//! their certificates' revocation lists. (Signals a thread waits for, as
//! the hub shell's and the hubfs server's, are `hubshell::Blocked`.)

/// SIGTERM or SIGINT. The handlers are in place when this returns (not
/// when the future is first polled), so a node that has said it is ready
/// never dies of a signal it meant to take.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// SIGHUP, which reloads a certificate's revocation list; none (said in
/// the log) if no handler can be installed.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no SIGHUP handler: revocations reload only when their file changes")
        })
        .ok()
}

/// Reloads the link's revocation list on every SIGHUP (it is also reloaded
/// when its file changes).
pub fn reload_on_sighup(link: std::sync::Arc<link::Link>) {
    if let Some(mut hup) = hangups() {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                link.reload();
            }
        });
    }
}
