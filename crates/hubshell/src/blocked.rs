//! Signals taken by a thread that waits for them, not by a handler: the
//! attachment's and the hubfs server's, which must write to a hub when one
//! comes, which a handler may not.

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
