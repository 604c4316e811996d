//! Signals taken by a thread that waits for them (`sigwait`), not by a
//! handler: the thread may then do anything, such as unmount a file system
//! or write a note to a hub, which a handler may not.

/// Signals blocked in the thread that made this, and in every thread it
/// starts afterwards, so only [`Blocked::wait`] receives them. Make it
/// before starting threads.
pub struct Blocked {
    set: libc::sigset_t,
}

impl Blocked {
    pub fn new(signals: &[libc::c_int]) -> Blocked {
        // SAFETY: the sigset is initialised by sigemptyset before use, and
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Blocked { set }
        }
    }

    /// Waits for one of the signals and returns it.
    pub fn wait(&self) -> libc::c_int {
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid, initialised set and an out pointer to a local.
        while unsafe { libc::sigwait(&self.set, &mut sig) } != 0 {}
        sig
    }
}

// SAFETY: a sigset_t is plain data; waiting on it from another thread is
// what it is for.
unsafe impl Send for Blocked {}

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
