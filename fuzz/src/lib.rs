//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use venti::{BlockStore, BlockType, MemoryStore, Score, StoreError};

/// Runs a future that never waits (tokio I/O over in-memory slices) to
/// completion without a runtime: it must be ready on its first poll.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("future over an in-memory reader returned Pending"),
    }
}

/// `COLONY_FUZZ_AVOID_KNOWN=1` makes the targets steer around inputs that hit
/// bugs already known (and being fixed), so that a run finds new ones. Without
/// it every target exercises everything.
pub fn avoid_known() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::env::var_os("COLONY_FUZZ_AVOID_KNOWN").is_some_and(|v| v != "0"))
}

/// A memory store that refuses reads after a budget, so that every walk over
/// a hostile archive terminates. Zero-score reads count too.
pub struct BudgetStore {
    pub inner: MemoryStore,
    pub reads: AtomicU64,
    pub budget: u64,
    /// With [`avoid_known`]: refuse directory leaves holding entries of the
    /// kinds the known bugs trip on (huge or tiny block sizes, depth 7,
    /// sizes far beyond the blocks that could hold them).
    pub filter_known: bool,
}

impl BudgetStore {
    pub fn new(budget: u64) -> BudgetStore {
        BudgetStore {
            inner: MemoryStore::new(),
            reads: AtomicU64::new(0),
            budget,
            filter_known: avoid_known(),
        }
    }

    pub fn reset(&self, budget_left: u64) {
        self.reads
            .store(self.budget.saturating_sub(budget_left), Ordering::Relaxed);
    }
}

/// True if `e` is an entry of the shapes the known bugs are about.
pub fn known_bad_entry(e: &vac::entry::Entry) -> bool {
    if !e.is_active() {
        return false;
    }
    let max = venti::MAX_BLOCK_SIZE as u32;
    e.psize > max
        || e.dsize > max
        || e.psize < 256
        || e.dsize < 256
        || e.depth >= 7
        // np^depth overflows u64 in StreamReader::leaf_score (the depth-7 bug's kin).
        || vac::entry::pointers_per_block(e.psize)
            .checked_pow(e.depth as u32)
            .is_none()
        // A stream claiming far more leaves than any test input could store.
        || e.size / e.dsize as u64 > 1 << 16
}

impl BlockStore for BudgetStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if self.reads.fetch_add(1, Ordering::Relaxed) >= self.budget {
            return Err(StoreError::Remote("fuzz: read budget exhausted".into()));
        }
        let block = self.inner.read(score, ty)?;
        if self.filter_known
            && ty == BlockType::DIR
            && let Some(b) = &block
        {
            for chunk in b.chunks(vac::entry::ENTRY_SIZE) {
                if let Ok(e) = vac::entry::Entry::unpack(chunk)
                    && known_bad_entry(&e)
                {
                    return Err(StoreError::Remote("fuzz: known-bug entry filtered".into()));
                }
            }
        }
        Ok(block)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A `Write` that fails once it has taken `limit` bytes.
pub struct Capped {
    pub buf: Vec<u8>,
    pub limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            return Err(std::io::Error::other("fuzz: output cap"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A u64 from the input: often a boundary value, small, or near u64::MAX.
pub fn interesting_u64(u: &mut arbitrary::Unstructured) -> arbitrary::Result<u64> {
    const V: [u64; 14] = [
        0,
        1,
        255,
        256,
        4095,
        4096,
        8191,
        8192,
        65535,
        65536,
        (1 << 32) - 1,
        (1 << 48) - 1,
        1 << 48,
        u64::MAX,
    ];
    Ok(match u.int_in_range(0..=3u8)? {
        0 => V[u.choose_index(V.len())?],
        1 => u.int_in_range(0..=20000u64)?,
        2 => u64::MAX - u.int_in_range(0..=20000u64)?,
        _ => u.arbitrary()?,
    })
}

/// `COLONY_FUZZ_TRACE=1`: targets print what they do (for reading a crash).
pub fn trace() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::env::var_os("COLONY_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

/// Waits for the forked child `pid` (work done in a jail) and returns its
/// exit code; a child that died of a signal is a finding, named after
/// `what` (SIGALRM: its own 5 s alarm ran out). A signal to this process
/// (libFuzzer's own timer) interrupts the wait, so it waits again until
/// the child is gone: the next input's jail must never be removed under a
/// live child.
pub fn wait_for_child(pid: libc::pid_t, what: &str) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitpid: {e}");
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if sig == libc::SIGALRM {
            panic!("{what} did not end within 5 s (in the child)");
        }
        panic!("{what} crashed in the child with signal {sig} (its panic message is above)");
    }
    libc::WEXITSTATUS(status)
}
