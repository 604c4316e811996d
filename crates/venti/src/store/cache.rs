//! A persistent, bounded block cache on local disk in front of a slower
//! store (a storage node's venti across the network), shared by everything
//! on the machine that reads from that store.
//!
//! Blocks are content-addressed, so the cache needs no invalidation: a block
//! is either the block its score names or garbage. Every read is checked
//! against its score, and a block that fails the check (a flipped bit on
//! disk, a file truncated by a crash mid-write) is removed and fetched again,
//! never served. That is also why writes into the cache are not fsynced: a
//! torn file is caught by the same check.
//!
//! Layout: `DIR/ab/abcdef…-T`, a file per block named by its score and wire
//! type, two hex digits of fan-out. Eviction is least-recently-used within a
//! run; across restarts, the order of the files' modification times (when
//! each was cached).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{BlockStore, BlockType, Score, StoreError};

type Key = (Score, u8);

struct Entry {
    bytes: u64,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    by_use: BTreeMap<u64, Key>,
    next_tick: u64,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, key: &Key) -> bool {
        let tick = self.next_tick;
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        self.by_use.remove(&e.tick);
        e.tick = tick;
        self.by_use.insert(tick, *key);
        self.next_tick += 1;
        true
    }

    fn insert(&mut self, key: Key, bytes: u64) {
        if self.touch(&key) {
            return;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(key, Entry { bytes, tick });
        self.by_use.insert(tick, key);
        self.bytes += bytes;
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.by_use.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    /// The least recently used entries to drop so that `bytes` fits `limit`.
    fn evict(&mut self, limit: u64) -> Vec<Key> {
        let mut gone = Vec::new();
        while self.bytes > limit {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.bytes -= e.bytes;
            }
            gone.push(key);
        }
        gone
    }
}

/// What the cache has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Cached blocks that failed their score check (and were refetched).
    pub corrupt: u64,
    pub evicted: u64,
    /// Blocks and bytes held now.
    pub blocks: u64,
    pub bytes: u64,
    pub limit: u64,
}

/// The cache itself: a directory of blocks and their use order.
pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    lru: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evicted: AtomicU64,
    /// Names temporary files uniquely within this process.
    temp: AtomicU64,
}

impl BlockCache {
    /// Opens (creating) the cache in `dir`, holding at most `limit` bytes,
    /// and indexes what an earlier run left there.
    pub fn open(dir: &Path, limit: u64) -> Result<Arc<BlockCache>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating block cache {}", dir.display()), e))?;
        let mut found: Vec<(std::time::SystemTime, Key, u64)> = Vec::new();
        let fanout = std::fs::read_dir(dir)
            .map_err(|e| StoreError::io(format!("reading block cache {}", dir.display()), e))?;
        for sub in fanout.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                let Some(key) = parse_name(&name) else {
                    // A temporary file of a run that died mid-write.
                    let _ = std::fs::remove_file(f.path());
                    continue;
                };
                if let Ok(meta) = f.metadata() {
                    let when = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((when, key, meta.len()));
                }
            }
        }
        found.sort_by_key(|(when, _, _)| *when);
        let mut lru = Lru::default();
        for (_, key, bytes) in found {
            lru.insert(key, bytes);
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            limit,
            lru: Mutex::new(lru),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            temp: AtomicU64::new(0),
        };
        // A smaller limit than the last run's takes effect at once.
        cache.evict();
        Ok(Arc::new(cache))
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, key: &Key) -> PathBuf {
        let hex = key.0.to_string();
        self.dir.join(&hex[..2]).join(format!("{hex}-{}", key.1))
    }

    /// The block, if it is cached and still the block its score names.
    pub fn get(&self, score: &Score, ty: BlockType) -> Option<Vec<u8>> {
        let key = (*score, ty.to_wire());
        if !self.lru().touch(&key) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let path = self.path(&key);
        match std::fs::read(&path) {
            Ok(data) if Score::of(&data) == *score => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            Ok(data) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    score = %score,
                    file = %path.display(),
                    bytes = data.len(),
                    "cached block fails its score check; dropping it and fetching it again"
                );
                self.lru().remove(&key);
                let _ = std::fs::remove_file(&path);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                // Evicted by another thread meanwhile, or removed by hand.
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "reading a cached block");
                }
                self.lru().remove(&key);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps `data` (whose score the caller has checked) for later reads.
    /// A failure to cache is logged, not returned: the block was read.
    pub fn put(&self, score: &Score, ty: BlockType, data: &[u8]) {
        if data.is_empty() || data.len() as u64 > self.limit {
            return;
        }
        let key = (*score, ty.to_wire());
        if self.lru().touch(&key) {
            return;
        }
        let path = self.path(&key);
        let temp = self.dir.join(format!(
            "tmp.{}.{}",
            std::process::id(),
            self.temp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::create_dir_all(path.parent().expect("fan-out dir"))
            .and_then(|()| std::fs::write(&temp, data))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            tracing::warn!(file = %path.display(), error = %e, "caching a block");
            return;
        }
        self.lru().insert(key, data.len() as u64);
        self.evict();
    }

    fn evict(&self) {
        let gone = self.lru().evict(self.limit);
        self.evicted.fetch_add(gone.len() as u64, Ordering::Relaxed);
        for key in gone {
            let _ = std::fs::remove_file(self.path(&key));
        }
    }

    pub fn stats(&self) -> CacheStats {
        let lru = self.lru();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            blocks: lru.entries.len() as u64,
            bytes: lru.bytes,
            limit: self.limit,
        }
    }

    /// The file holding a cached block (for tests that damage one).
    pub fn file_of(&self, score: &Score, ty: BlockType) -> PathBuf {
        self.path(&(*score, ty.to_wire()))
    }
}

fn parse_name(name: &str) -> Option<Key> {
    let (hex, ty) = name.split_once('-')?;
    let (_, score) = Score::parse_labeled(hex).ok()?;
    Some((score, ty.parse().ok()?))
}

/// A store read through a [`BlockCache`]: reads the cache has are served
/// from local disk; the rest come from `origin` and are kept. Writes go to
/// `origin` (and into the cache, as the writer will likely read them).
///
/// An origin that fails (a storage node restarting, a cut link) is retried
/// for up to `patience` before the read fails, so a short outage stalls
/// file reads instead of failing them.
pub struct CachedStore {
    pub cache: Arc<BlockCache>,
    pub origin: Arc<dyn BlockStore>,
    pub patience: Duration,
    /// Blocks fetched from `origin`.
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

impl CachedStore {
    pub fn new(cache: Arc<BlockCache>, origin: Arc<dyn BlockStore>, patience: Duration) -> Self {
        CachedStore {
            cache,
            origin,
            patience,
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        }
    }

    fn fetch(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        let deadline = Instant::now() + self.patience;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.origin.read(score, ty) {
                Ok(found) => return Ok(found),
                Err(e) if Instant::now() + pause < deadline => {
                    tracing::info!(score = %score, error = %e, "block fetch failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl BlockStore for CachedStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_sourced(score, ty)?.map(|(d, _)| d))
    }

    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        if score.is_zero() {
            return self.origin.read_sourced(score, ty);
        }
        if let Some(data) = self.cache.get(score, ty) {
            return Ok(Some((data, false)));
        }
        let Some(data) = self.fetch(score, ty)? else {
            return Ok(None);
        };
        if Score::of(&data) != *score {
            return Err(StoreError::Remote(format!(
                "the store returned a block that does not match score {score}"
            )));
        }
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.cache.put(score, ty, &data);
        Ok(Some((data, true)))
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        let score = self.origin.write(ty, data)?;
        self.cache.put(&score, ty, data);
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.origin.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn block(i: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1000];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    }

    #[test]
    fn serves_what_it_fetched_without_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(MemoryStore::new());
        let score = origin.write(BlockType::DATA, &block(1)).unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::ZERO);
        let (data, fetched) = store
            .read_sourced(&score, BlockType::DATA)
            .unwrap()
            .unwrap();
        assert_eq!((data, fetched), (block(1), true));
        let (data, fetched) = store
            .read_sourced(&score, BlockType::DATA)
            .unwrap()
            .unwrap();
        assert_eq!((data, fetched), (block(1), false));
        // Another run on the same directory finds it too.
        drop(store);
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.get(&score, BlockType::DATA), Some(block(1)));
        assert_eq!(cache.stats().blocks, 1);
    }

    #[test]
    fn stays_within_its_bound_dropping_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 3500).unwrap();
        let scores: Vec<Score> = (0..5).map(|i| Score::of(&block(i))).collect();
        for (i, score) in scores.iter().take(3).enumerate() {
            cache.put(score, BlockType::DATA, &block(i as u32));
        }
        // Block 0 is used again, so block 1 is the oldest when 3 arrives.
        assert!(cache.get(&scores[0], BlockType::DATA).is_some());
        cache.put(&scores[3], BlockType::DATA, &block(3));
        cache.put(&scores[4], BlockType::DATA, &block(4));
        let s = cache.stats();
        assert!(s.bytes <= 3500, "{s:?}");
        assert_eq!(s.evicted, 2);
        assert!(cache.get(&scores[1], BlockType::DATA).is_none());
        assert!(cache.get(&scores[2], BlockType::DATA).is_none());
        assert!(cache.get(&scores[0], BlockType::DATA).is_some());
        assert!(cache.get(&scores[4], BlockType::DATA).is_some());
        let files = walk(dir.path());
        assert_eq!(files, 3, "files on disk follow the bound");
        // A smaller bound on reopening evicts at once.
        let cache = BlockCache::open(dir.path(), 1000).unwrap();
        assert_eq!(cache.stats().blocks, 1);
        assert_eq!(walk(dir.path()), 1);
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count()))
            .sum()
    }

    #[test]
    fn a_damaged_entry_is_refetched_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(MemoryStore::new());
        let score = origin.write(BlockType::DATA, &block(7)).unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::ZERO);
        store.read(&score, BlockType::DATA).unwrap();
        let file = cache.file_of(&score, BlockType::DATA);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[10] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let (data, fetched) = store
            .read_sourced(&score, BlockType::DATA)
            .unwrap()
            .unwrap();
        assert_eq!(data, block(7));
        assert!(fetched, "came from the origin again");
        assert_eq!(cache.stats().corrupt, 1);
        // And the refetched copy is good on disk.
        assert_eq!(std::fs::read(&file).unwrap(), block(7));
        // A truncated file likewise.
        std::fs::write(&file, &bytes[..100]).unwrap();
        assert_eq!(store.read(&score, BlockType::DATA).unwrap(), Some(block(7)));
        assert_eq!(cache.stats().corrupt, 2);
    }

    #[test]
    fn a_lying_origin_is_an_error() {
        struct Liar;
        impl BlockStore for Liar {
            fn read(&self, _: &Score, _: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
                Ok(Some(b"not it".to_vec()))
            }
            fn write(&self, _: BlockType, d: &[u8]) -> Result<Score, StoreError> {
                Ok(Score::of(d))
            }
            fn sync(&self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), Arc::new(Liar), Duration::ZERO);
        let err = store.read(&Score::of(b"it"), BlockType::DATA).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert_eq!(cache.stats().blocks, 0);
    }
}
