//! The read cache: blocks fetched from venti, kept least-recently-used in
//! whatever part of the cache budget the changed blocks leave free.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use venti::{BlockStore, BlockType, Score, StoreError};

/// A [`BlockStore`] that remembers what it read. Writes go straight through.
pub struct CachingStore {
    inner: Arc<dyn BlockStore>,
    lru: Mutex<Lru>,
    capacity: u64,
    /// Bytes the changed blocks use; the read cache gets the rest.
    dirty_bytes: Arc<AtomicU64>,
    /// Bytes read from the inner store, for benchmarks and tests.
    fetched: AtomicU64,
    fetches: AtomicU64,
}

/// A block's key: score and wire type.
type Key = (Score, u8);

#[derive(Default)]
struct Lru {
    /// Each block with the tick of its last use.
    blocks: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
}

/// Blocks too small to bother evicting still cost this much bookkeeping.
const ENTRY_OVERHEAD: u64 = 64;

impl CachingStore {
    pub fn new(
        inner: Arc<dyn BlockStore>,
        capacity: u64,
        dirty_bytes: Arc<AtomicU64>,
    ) -> CachingStore {
        CachingStore {
            inner,
            lru: Mutex::new(Lru::default()),
            capacity,
            dirty_bytes,
            fetched: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        }
    }

    /// (bytes, blocks) fetched from the store below.
    pub fn fetched(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.fetches.load(Ordering::Relaxed),
        )
    }

    /// Bytes held by the read cache now.
    pub fn cached_bytes(&self) -> u64 {
        self.lru.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// The block, from the cache or the store.
    pub fn get(&self, score: &Score, ty: BlockType) -> Result<Option<Arc<Vec<u8>>>, StoreError> {
        let key = (*score, ty.to_wire());
        {
            let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((data, old)) = lru.blocks.get_mut(&key) {
                let data = data.clone();
                let prev = std::mem::replace(old, tick);
                lru.order.remove(&prev);
                lru.order.insert(tick, key);
                return Ok(Some(data));
            }
        }
        // Fetch without holding the lock, so other readers proceed.
        let Some(data) = self.inner.read(score, ty)? else {
            return Ok(None);
        };
        self.fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let data = Arc::new(data);
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        let budget = self
            .capacity
            .saturating_sub(self.dirty_bytes.load(Ordering::Relaxed));
        let cost = data.len() as u64 + ENTRY_OVERHEAD;
        if cost <= budget && !lru.blocks.contains_key(&key) {
            lru.tick += 1;
            let tick = lru.tick;
            lru.blocks.insert(key, (data.clone(), tick));
            lru.order.insert(tick, key);
            lru.bytes += cost;
            lru.evict_to(budget);
        }
        Ok(Some(data))
    }

    /// Shrinks the read cache to what the changed blocks leave free.
    pub fn make_room(&self) {
        let budget = self
            .capacity
            .saturating_sub(self.dirty_bytes.load(Ordering::Relaxed));
        self.lru
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evict_to(budget);
    }
}

impl Lru {
    fn evict_to(&mut self, budget: u64) {
        while self.bytes > budget {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((data, _)) = self.blocks.remove(&key) {
                self.bytes -= data.len() as u64 + ENTRY_OVERHEAD;
            }
        }
    }
}

impl BlockStore for CachingStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(score, ty)?.map(|data| data.as_ref().clone()))
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}
