//! A persistent, bounded block cache on local disk in front of a slower
//! store (a storage node's venti across the network), shared by everything
//! on the machine that reads from that store.
//!
//! Blocks are content-addressed, so the cache needs no invalidation: a block
//! is either the block its score names or garbage. Every read is checked
//! against its score, and a block that fails the check (a flipped bit on
//! disk, a record torn by a crash mid-write) is dropped and fetched again,
//! never served. That is also why nothing here is fsynced.
//!
//! Layout: a log in segment files (`DIR/seg-NNNNNNNNNNNN`), each a run of
//! records `score[20] wire_type[1] length[4] data`, appended to the newest
//! segment. The index lives in memory and is rebuilt at open by reading the
//! records' headers. The bound is kept by deleting the oldest segment
//! whole, and a block read from the older half of the segments is written
//! again at the head, so what is in use stays: least-recently-used at the
//! grain of a segment. (A file per block was the first design; ext4's
//! inode allocation under the churn of eviction made it slower than the
//! network it saves.)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{BlockStore, BlockType, MAX_BLOCK_SIZE, SCORE_SIZE, Score, StoreError};

type Key = (Score, u8);

/// score, wire type, length.
const HEADER: usize = SCORE_SIZE + 1 + 4;

/// Where a cached block's bytes are.
#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    /// Of the data, past the record's header.
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    /// Bytes written or reserved.
    end: u64,
    keys: Vec<Key>,
}

#[derive(Default)]
struct Log {
    index: HashMap<Key, Loc>,
    segments: BTreeMap<u64, Segment>,
    /// Sum of the segments' ends.
    bytes: u64,
}

/// What the cache has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Cached blocks that failed their score check (and were refetched).
    pub corrupt: u64,
    /// Blocks dropped to keep the bound.
    pub evicted: u64,
    /// Blocks and bytes put into the cache since it was opened.
    pub added: u64,
    pub added_bytes: u64,
    /// Blocks indexed and bytes on disk now.
    pub blocks: u64,
    pub bytes: u64,
    pub limit: u64,
}

/// The cache itself: a directory of segments and their index.
pub struct BlockCache {
    dir: PathBuf,
    limit: u64,
    segment_size: u64,
    log: Mutex<Log>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evicted: AtomicU64,
    added: AtomicU64,
    added_bytes: AtomicU64,
}

fn segment_name(n: u64) -> String {
    format!("seg-{n:012}")
}

/// A record found in a segment: its key, data offset and length.
type Found = (Key, u64, u32);

/// The records of a segment file, up to the first that is cut short (a
/// crash mid-append), and where that is.
fn scan(file: &File) -> std::io::Result<(Vec<Found>, u64)> {
    let size = file.metadata()?.len();
    let mut records = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        file.read_exact_at(&mut header, at)?;
        let score = Score::from_slice(&header[..SCORE_SIZE]).expect("20 bytes");
        let wire = header[SCORE_SIZE];
        let len = u32::from_be_bytes(header[SCORE_SIZE + 1..].try_into().expect("4 bytes"));
        let data = at + HEADER as u64;
        if len as usize > MAX_BLOCK_SIZE || data + len as u64 > size {
            break;
        }
        records.push(((score, wire), data, len));
        at = data + len as u64;
    }
    Ok((records, at))
}

impl BlockCache {
    /// Opens (creating) the cache in `dir`, holding at most `limit` bytes,
    /// and indexes what an earlier run left there.
    pub fn open(dir: &Path, limit: u64) -> Result<Arc<BlockCache>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating block cache {}", dir.display()), e))?;
        let mut log = Log::default();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| StoreError::io(format!("reading block cache {}", dir.display()), e))?;
        let mut numbers: Vec<u64> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("seg-")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        for n in numbers {
            let path = dir.join(segment_name(n));
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .and_then(|f| scan(&f).map(|r| (f, r)));
            let (file, (records, end)) = match opened {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "dropping an unreadable cache segment");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let mut keys = Vec::with_capacity(records.len());
            for (key, offset, len) in records {
                log.index.insert(
                    key,
                    Loc {
                        seg: n,
                        offset,
                        len,
                    },
                );
                keys.push(key);
            }
            // A torn tail is cut, so appends start on a record boundary.
            let _ = file.set_len(end);
            log.bytes += end;
            log.segments.insert(
                n,
                Segment {
                    file: Arc::new(file),
                    end,
                    keys,
                },
            );
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            limit,
            // Eviction drops a segment at a time: an eighth of the cache,
            // at most half of it however small the cache.
            segment_size: (limit / 8).clamp(16 << 10, 64 << 20).min(limit / 2).max(1),
            log: Mutex::new(log),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            added: AtomicU64::new(0),
            added_bytes: AtomicU64::new(0),
        };
        // A smaller limit than the last run's takes effect at once (before
        // any append, the newest segment may go too).
        {
            let mut log = cache.log();
            while log.bytes > limit
                && let Some((&oldest, _)) = log.segments.iter().next()
            {
                cache.drop_segment(&mut log, oldest);
            }
        }
        Ok(Arc::new(cache))
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, key: &Key) -> bool {
        self.log().index.contains_key(key)
    }

    /// Deletes the oldest segments until `more` bytes fit the bound (never
    /// the newest, which appends are going to).
    fn make_room(&self, log: &mut Log, more: u64) {
        while log.bytes + more > self.limit && log.segments.len() > 1 {
            let (&oldest, _) = log.segments.iter().next().expect("a segment");
            self.drop_segment(log, oldest);
        }
    }

    fn drop_segment(&self, log: &mut Log, n: u64) {
        let Some(seg) = log.segments.remove(&n) else {
            return;
        };
        log.bytes -= seg.end;
        let mut gone = 0;
        for key in seg.keys {
            if log.index.get(&key).is_some_and(|l| l.seg == n) {
                log.index.remove(&key);
                gone += 1;
            }
        }
        self.evicted.fetch_add(gone, Ordering::Relaxed);
        let _ = std::fs::remove_file(self.dir.join(segment_name(n)));
    }

    /// Space for a record of `len` data bytes at the head: the segment,
    /// its file and the record's offset.
    fn reserve(&self, log: &mut Log, len: u64) -> Result<(u64, Arc<File>, u64), std::io::Error> {
        let need = HEADER as u64 + len;
        let head = log.segments.iter().next_back().map(|(&n, s)| (n, s.end));
        let n = match head {
            Some((n, end)) if end + need <= self.segment_size => n,
            _ => {
                let n = head.map_or(0, |(n, _)| n + 1);
                self.new_segment(log, n)?;
                n
            }
        };
        self.make_room(log, need);
        let n = if log.bytes + need > self.limit {
            // The head alone leaves no room (a cache smaller than a few
            // blocks): start afresh.
            self.drop_segment(log, n);
            self.new_segment(log, n + 1)?;
            n + 1
        } else {
            n
        };
        let seg = log
            .segments
            .get_mut(&n)
            .expect("the head segment is never dropped for room");
        let at = seg.end;
        seg.end += need;
        log.bytes += need;
        Ok((n, seg.file.clone(), at))
    }

    fn new_segment(&self, log: &mut Log, n: u64) -> Result<(), std::io::Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(segment_name(n)))?;
        log.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                end: 0,
                keys: Vec::new(),
            },
        );
        Ok(())
    }

    /// The block, if it is cached and still the block its score names.
    pub fn get(&self, score: &Score, ty: BlockType) -> Option<Vec<u8>> {
        let key = (*score, ty.to_wire());
        let (loc, file, old) = {
            let log = self.log();
            let found = log.index.get(&key).and_then(|loc| {
                let seg = log.segments.get(&loc.seg)?;
                // In the older half of the segments: write it again at the
                // head, so a block in use outlives the segment it was in.
                let newest = log.segments.keys().next_back().copied().unwrap_or(0);
                let oldest = log.segments.keys().next().copied().unwrap_or(0);
                let old = loc.seg < oldest + (newest - oldest).div_ceil(2);
                Some((*loc, seg.file.clone(), old && newest > oldest))
            });
            match found {
                Some(f) => f,
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        };
        let mut data = vec![0u8; loc.len as usize];
        let read = file.read_exact_at(&mut data, loc.offset);
        if read.is_ok() && Score::of(&data) == *score {
            self.hits.fetch_add(1, Ordering::Relaxed);
            if old {
                self.append(key, &data);
            }
            return Some(data);
        }
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            score = %score,
            segment = loc.seg,
            offset = loc.offset,
            error = ?read.err(),
            "cached block fails its score check; dropping it and fetching it again"
        );
        let mut log = self.log();
        if log
            .index
            .get(&key)
            .is_some_and(|l| l.seg == loc.seg && l.offset == loc.offset)
        {
            log.index.remove(&key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Keeps `data` (whose score the caller has checked) for later reads.
    /// A failure to cache is logged, not returned: the block was read.
    pub fn put(&self, score: &Score, ty: BlockType, data: &[u8]) {
        if data.is_empty() || data.len() > MAX_BLOCK_SIZE {
            return;
        }
        let key = (*score, ty.to_wire());
        if self.contains(&key) {
            return;
        }
        self.append(key, data);
        self.added.fetch_add(1, Ordering::Relaxed);
        self.added_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }

    /// Appends a record; indexes it once it is written, so no reader sees
    /// it before its bytes.
    fn append(&self, key: Key, data: &[u8]) {
        let reserved = self.reserve(&mut self.log(), data.len() as u64);
        let (n, file, at) = match reserved {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "caching a block");
                return;
            }
        };
        let mut record = Vec::with_capacity(HEADER + data.len());
        record.extend_from_slice(key.0.as_bytes());
        record.push(key.1);
        record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        record.extend_from_slice(data);
        if let Err(e) = file.write_all_at(&record, at) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "caching a block");
            return;
        }
        let mut log = self.log();
        // Dropped for room meanwhile: the record is gone with its segment.
        let Some(seg) = log.segments.get_mut(&n) else {
            return;
        };
        seg.keys.push(key);
        log.index.insert(
            key,
            Loc {
                seg: n,
                offset: at + HEADER as u64,
                len: data.len() as u32,
            },
        );
    }

    /// Drops every cached block (an admin's reset; benchmarks' cold start).
    pub fn clear(&self) {
        let mut log = self.log();
        let all: Vec<u64> = log.segments.keys().copied().collect();
        for n in all {
            self.drop_segment(&mut log, n);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let log = self.log();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            added: self.added.load(Ordering::Relaxed),
            added_bytes: self.added_bytes.load(Ordering::Relaxed),
            blocks: log.index.len() as u64,
            bytes: log.bytes,
            limit: self.limit,
        }
    }

    /// Flips a byte of a cached block where it lies on disk (for tests of
    /// damage).
    #[cfg(test)]
    fn damage(&self, score: &Score, ty: BlockType, at: usize) {
        let log = self.log();
        let loc = log.index[&(*score, ty.to_wire())];
        let file = &log.segments[&loc.seg].file;
        let mut b = [0u8];
        file.read_exact_at(&mut b, loc.offset + at as u64).unwrap();
        b[0] ^= 0x40;
        file.write_all_at(&b, loc.offset + at as u64).unwrap();
    }
}

/// Children fetched ahead per pointer block above depth 1 (whose children
/// are themselves pointer blocks, each covering megabytes).
const AHEAD_OF_DEEP_POINTERS: usize = 16;
/// Blocks waiting to be fetched ahead; past this, readahead is skipped.
const AHEAD_QUEUE: usize = 8192;

/// A store read through a [`BlockCache`]: reads the cache has are served
/// from local disk; the rest come from `origin` and are kept. Writes go to
/// `origin` (and into the cache, as the writer will likely read them).
///
/// Reading ahead: on a far link each block costs a round trip, and a file
/// system walking a tree asks for one block at a time. So every pointer
/// block read queues its children (all of them under a depth-1 pointer,
/// the first [`AHEAD_OF_DEEP_POINTERS`] higher up), and every directory
/// block, at a lower priority, its entries' roots, for a pool of fetchers
/// that keep many requests in flight. A read of a block a fetcher is
/// already fetching waits for it; one still queued is fetched at once by
/// the reader itself, so readahead never delays what is asked for.
///
/// An origin that fails (a storage node restarting, a cut link) is retried
/// for up to `patience` before the read fails, so a short outage stalls
/// file reads instead of failing them. Once a read has waited that long in
/// vain, reads for the next `patience` try once and fail at once: a file
/// read fails after about the wait it was given, not a multiple of it.
pub struct CachedStore {
    shared: Arc<Shared>,
}

/// Where a block fetched ahead stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued,
    Fetching,
}

#[derive(Default)]
struct Ahead {
    /// Children of pointer blocks: the rest of a file being read.
    urgent: std::collections::VecDeque<Key>,
    /// Roots of a directory's entries: what a walk may open next.
    later: std::collections::VecDeque<Key>,
    stages: HashMap<Key, Stage>,
    closed: bool,
}

struct Shared {
    cache: Arc<BlockCache>,
    origin: Arc<dyn BlockStore>,
    patience: Duration,
    /// When a fetch last waited its whole patience and failed: for the
    /// next `patience`, fetches try the origin once and do not wait.
    gave_up: Mutex<Option<Instant>>,
    fetchers: usize,
    ahead: Mutex<Ahead>,
    /// Wakes the fetchers: work queued, or the end.
    work: std::sync::Condvar,
    /// Wakes readers waiting for a block a fetcher is fetching.
    landed: std::sync::Condvar,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
}

impl CachedStore {
    /// A store over `origin` through `cache`, with `fetchers` threads
    /// reading ahead (0: none).
    pub fn new(
        cache: Arc<BlockCache>,
        origin: Arc<dyn BlockStore>,
        patience: Duration,
        fetchers: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            cache,
            origin,
            patience,
            gave_up: Mutex::new(None),
            fetchers,
            ahead: Mutex::default(),
            work: std::sync::Condvar::new(),
            landed: std::sync::Condvar::new(),
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        });
        for i in 0..fetchers {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("readahead-{i}"))
                .spawn(move || shared.fetch_ahead());
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "starting a readahead thread");
            }
        }
        CachedStore { shared }
    }

    /// Blocks fetched from the origin, and their bytes.
    pub fn fetched(&self) -> (u64, u64) {
        (
            self.shared.fetched.load(Ordering::Relaxed),
            self.shared.fetched_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        self.shared.ahead().closed = true;
        self.shared.work.notify_all();
    }
}

/// The blocks a block points to (see [`crate::reach::children`]), but of a
/// pointer block above the lowest level only the first
/// [`AHEAD_OF_DEEP_POINTERS`].
fn children(ty: BlockType, data: &[u8]) -> Vec<(Score, BlockType)> {
    let mut all = crate::reach::children(ty, data);
    if ty.is_pointer() && ty.depth() > 1 {
        all.truncate(AHEAD_OF_DEEP_POINTERS);
    }
    all
}

impl Shared {
    fn ahead(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what `data`, a block of type `ty`, points to.
    fn read_ahead(&self, ty: BlockType, data: &[u8]) {
        if self.fetchers == 0 {
            return;
        }
        let children = children(ty, data);
        if children.is_empty() {
            return;
        }
        let urgent = ty.is_pointer();
        let mut ahead = self.ahead();
        for (score, child) in children {
            let key = (score, child.to_wire());
            if ahead.stages.len() >= AHEAD_QUEUE {
                break;
            }
            if ahead.stages.contains_key(&key) || self.cache.contains(&key) {
                continue;
            }
            ahead.stages.insert(key, Stage::Queued);
            if urgent {
                ahead.urgent.push_back(key);
            } else {
                ahead.later.push_back(key);
            }
        }
        drop(ahead);
        self.work.notify_all();
    }

    /// A readahead thread: fetches what is queued until the store goes.
    fn fetch_ahead(&self) {
        loop {
            let key = {
                let mut ahead = self.ahead();
                loop {
                    if ahead.closed {
                        return;
                    }
                    let next = ahead.urgent.pop_front().or_else(|| ahead.later.pop_front());
                    match next {
                        // Claimed here, unless a reader took it meanwhile.
                        Some(key) if ahead.stages.get(&key) == Some(&Stage::Queued) => {
                            ahead.stages.insert(key, Stage::Fetching);
                            break key;
                        }
                        Some(_) => continue,
                        None => {
                            ahead = self.work.wait(ahead).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
            };
            let ty = BlockType::from_wire(key.1).unwrap_or(BlockType::DATA);
            // One try: a failure here is the foreground read's to wait out.
            if let Ok(Some(data)) = self.origin.read(&key.0, ty)
                && Score::of(&data) == key.0
            {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.fetched_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                // Its own children wait for a reader to ask for it: read
                // ahead follows reads, it does not walk whole files.
                self.cache.put(&key.0, ty, &data);
            }
            self.ahead().stages.remove(&key);
            self.landed.notify_all();
        }
    }

    /// See [`CachedStore::prefetch`](BlockStore::prefetch).
    fn prefetch(&self, keys: Vec<(Score, BlockType)>) {
        let mine: Vec<(Score, BlockType)> = {
            let mut ahead = self.ahead();
            keys.into_iter()
                .filter(|&(score, ty)| {
                    let key = (score, ty.to_wire());
                    if score.is_zero()
                        || ahead.stages.contains_key(&key)
                        || self.cache.contains(&key)
                    {
                        return false;
                    }
                    // Fetching: a reader waits for it rather than fetch it
                    // too (a queued readahead of it is now this one).
                    ahead.stages.insert(key, Stage::Fetching);
                    true
                })
                .collect()
        };
        if mine.is_empty() {
            return;
        }
        let mut landed = vec![false; mine.len()];
        self.origin.read_each(&mine, &mut |i, got| {
            let (score, ty) = mine[i];
            if let Ok(Some(data)) = got
                && Score::of(&data) == score
            {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.fetched_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.cache.put(&score, ty, &data);
            }
            landed[i] = true;
            self.ahead().stages.remove(&(score, ty.to_wire()));
            self.landed.notify_all();
        });
        // Whatever did not come (a store that gave up) is no longer on its
        // way: its readers fetch it themselves.
        let mut ahead = self.ahead();
        for (i, &(score, ty)) in mine.iter().enumerate() {
            if !landed[i] {
                ahead.stages.remove(&(score, ty.to_wire()));
            }
        }
        drop(ahead);
        self.landed.notify_all();
    }

    /// Before a reader fetches `key` itself: waits while a fetcher is
    /// fetching it (up to `patience`), and takes it off the queue if it is
    /// only queued. True if it waited: the read waited on the link.
    fn claim(&self, key: &Key) -> bool {
        let deadline = Instant::now() + self.patience.max(Duration::from_secs(1));
        let mut ahead = self.ahead();
        let mut waited = false;
        loop {
            match ahead.stages.get(key) {
                Some(Stage::Fetching) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return waited;
                    }
                    waited = true;
                    ahead = self
                        .landed
                        .wait_timeout(ahead, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Some(Stage::Queued) => {
                    ahead.stages.remove(key);
                    return waited;
                }
                None => return waited,
            }
        }
    }

    fn fetch(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        // The origin was out of reach for a whole wait a moment ago: one
        // try, no second wait. A file read is retried by the kernel and
        // its reader many times over; each waiting again made a read fail
        // after several times the wait it was given.
        let gave_up = *self.gave_up.lock().unwrap_or_else(|p| p.into_inner());
        if gave_up.is_some_and(|t| t.elapsed() < self.patience) {
            let result = self.origin.read(score, ty);
            if result.is_ok() {
                *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            return result;
        }
        let deadline = Instant::now() + self.patience;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.origin.read(score, ty) {
                Ok(found) => {
                    // Only an outage that was remembered needs forgetting:
                    // fetches that succeed (nearly all) take no lock.
                    if gave_up.is_some() {
                        *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    return Ok(found);
                }
                Err(e) if Instant::now() + pause < deadline => {
                    tracing::info!(score = %score, error = %e, "block fetch failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    return Err(e);
                }
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
        let shared = &self.shared;
        if score.is_zero() {
            return shared.origin.read_sourced(score, ty);
        }
        let key = (*score, ty.to_wire());
        // A block a fetcher brought while this read waited for it came
        // from elsewhere for this read as much as one it fetched itself.
        let waited = shared.claim(&key);
        if let Some(data) = shared.cache.get(score, ty) {
            shared.read_ahead(ty, &data);
            return Ok(Some((data, waited)));
        }
        let Some(data) = shared.fetch(score, ty)? else {
            return Ok(None);
        };
        if Score::of(&data) != *score {
            return Err(StoreError::Remote(format!(
                "the store returned a block that does not match score {score}"
            )));
        }
        shared.fetched.fetch_add(1, Ordering::Relaxed);
        shared
            .fetched_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        shared.cache.put(score, ty, &data);
        shared.read_ahead(ty, &data);
        Ok(Some((data, true)))
    }

    /// Fetches the blocks of `keys` that are neither here nor on their way,
    /// many at once on the origin's link, in the order given, and returns
    /// when they have come (or failed). A reader asking for one meanwhile
    /// waits for it rather than fetch it twice. The cache's bound holds as
    /// for any fetch.
    fn prefetch(&self, keys: Vec<(Score, BlockType)>) {
        self.shared.prefetch(keys);
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        let score = self.shared.origin.write(ty, data)?;
        self.shared.cache.put(&score, ty, data);
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.shared.origin.sync()
    }

    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        self.shared.origin.holds(score, ty)
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
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::ZERO, 0);
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
    fn stays_within_its_bound_keeping_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 64 << 10;
        let cache = BlockCache::open(dir.path(), limit).unwrap();
        let hot = Score::of(&block(0));
        cache.put(&hot, BlockType::DATA, &block(0));
        for i in 1..400u32 {
            cache.put(&Score::of(&block(i)), BlockType::DATA, &block(i));
            // Used all along: it must survive the churn.
            assert!(cache.get(&hot, BlockType::DATA).is_some(), "after {i}");
            let s = cache.stats();
            assert!(s.bytes <= limit, "{s:?}");
            assert_eq!(on_disk(dir.path()), s.bytes, "files follow the index");
        }
        let s = cache.stats();
        assert!(s.evicted > 300, "{s:?}");
        assert!(cache.get(&Score::of(&block(1)), BlockType::DATA).is_none());
        assert!(
            cache
                .get(&Score::of(&block(399)), BlockType::DATA)
                .is_some()
        );
        // Another run finds the same blocks; a smaller bound evicts at once.
        drop(cache);
        let cache = BlockCache::open(dir.path(), limit).unwrap();
        assert_eq!(cache.stats().blocks, s.blocks);
        assert!(cache.get(&hot, BlockType::DATA).is_some());
        let cache = BlockCache::open(dir.path(), 8 << 10).unwrap();
        assert!(cache.stats().bytes <= 8 << 10);
        assert!(on_disk(dir.path()) <= 8 << 10);
    }

    fn on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|f| f.metadata().unwrap().len())
            .sum()
    }

    /// An origin that answers every read with the same bytes.
    struct Liar(Vec<u8>);

    impl BlockStore for Liar {
        fn read(&self, _: &Score, _: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(Some(self.0.clone()))
        }
        fn write(&self, _: BlockType, data: &[u8]) -> Result<Score, StoreError> {
            Ok(Score::of(data))
        }
        fn sync(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// Waits until `store` has fetched `n` blocks in all.
    fn fetched_at_least(store: &CachedStore, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.fetched().0 < n {
            assert!(Instant::now() < deadline, "{} fetched", store.fetched().0);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_prefetch_keeps_the_bound_and_never_keeps_a_wrong_block() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(MemoryStore::new());
        let keys: Vec<(Score, BlockType)> = (0..400)
            .map(|i| {
                (
                    origin.write(BlockType::DATA, &block(i)).unwrap(),
                    BlockType::DATA,
                )
            })
            .collect();
        let limit = 64 << 10;
        let cache = BlockCache::open(dir.path(), limit).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::ZERO, 0);
        // A list far larger than the cache, with a block no one has.
        let mut list = keys.clone();
        list.push((Score::of(b"nowhere"), BlockType::DATA));
        store.prefetch(list);
        fetched_at_least(&store, 400);
        let s = cache.stats();
        assert!(s.bytes <= limit, "{s:?}");
        assert!(cache.contains(&(keys[399].0, BlockType::DATA.to_wire())));
        assert_eq!(
            store.read(&keys[3].0, BlockType::DATA).unwrap(),
            Some(block(3))
        );
        assert_eq!(
            store.read(&Score::of(b"nowhere"), BlockType::DATA).unwrap(),
            None
        );

        // An origin that answers every read with the same block.
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let liar = Arc::new(Liar(block(0)));
        let store = CachedStore::new(cache.clone(), liar, Duration::ZERO, 0);
        store.prefetch(keys[..10].to_vec());
        // Only the block the lie is true of lands; wait for the thread to
        // have been through the list (its stages are gone).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.shared.ahead().stages.is_empty() || store.fetched().0 < 1 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cache.stats().blocks, 1);
        assert!(cache.contains(&(keys[0].0, BlockType::DATA.to_wire())));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            cache.put(&Score::of(&block(i)), BlockType::DATA, &block(i));
        }
        drop(cache);
        let seg = dir.path().join(segment_name(0));
        let len = std::fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the last record.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.stats().blocks, 2);
        assert_eq!(
            cache.get(&Score::of(&block(1)), BlockType::DATA),
            Some(block(1))
        );
        cache.put(&Score::of(&block(2)), BlockType::DATA, &block(2));
        drop(cache);
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.stats().blocks, 3);
        assert_eq!(
            cache.get(&Score::of(&block(2)), BlockType::DATA),
            Some(block(2))
        );
    }

    #[test]
    fn a_damaged_entry_is_refetched_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(MemoryStore::new());
        let score = origin.write(BlockType::DATA, &block(7)).unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::ZERO, 0);
        store.read(&score, BlockType::DATA).unwrap();
        cache.damage(&score, BlockType::DATA, 10);
        let (data, fetched) = store
            .read_sourced(&score, BlockType::DATA)
            .unwrap()
            .unwrap();
        assert_eq!(data, block(7));
        assert!(fetched, "came from the origin again");
        assert_eq!(cache.stats().corrupt, 1);
        // And the refetched copy is good.
        assert_eq!(cache.get(&score, BlockType::DATA), Some(block(7)));
        assert_eq!(cache.stats().corrupt, 1);
        cache.damage(&score, BlockType::DATA, 999);
        assert_eq!(store.read(&score, BlockType::DATA).unwrap(), Some(block(7)));
        assert_eq!(cache.stats().corrupt, 2);
    }

    /// Counts the reads that reach it.
    struct Counting {
        inner: MemoryStore,
        reads: AtomicU64,
    }

    impl BlockStore for Counting {
        fn read(&self, s: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.read(s, ty)
        }
        fn write(&self, ty: BlockType, d: &[u8]) -> Result<Score, StoreError> {
            self.inner.write(ty, d)
        }
        fn sync(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn a_pointer_block_brings_its_children_ahead_each_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(Counting {
            inner: MemoryStore::new(),
            reads: AtomicU64::new(0),
        });
        let scores: Vec<Score> = (0..50)
            .map(|i| origin.write(BlockType::DATA, &block(i)).unwrap())
            .collect();
        let pointer: Vec<u8> = scores.iter().flat_map(|s| s.0).collect();
        let ptype = BlockType::at_depth(BlockType::DATA, 1).unwrap();
        let top = origin.write(ptype, &pointer).unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::from_secs(5), 8);
        store.read(&top, ptype).unwrap().unwrap();
        // Read every child as a file system would, one after another.
        for (i, s) in scores.iter().enumerate() {
            assert_eq!(
                store.read(s, BlockType::DATA).unwrap(),
                Some(block(i as u32))
            );
        }
        assert_eq!(
            origin.reads.load(Ordering::Relaxed),
            51,
            "every block came once, the children mostly ahead of their reads"
        );
        assert_eq!(store.fetched().0, 51);
        assert_eq!(cache.stats().blocks, 51);
    }

    #[test]
    fn a_directory_block_brings_its_entries_roots() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(MemoryStore::new());
        let a = origin.write(BlockType::DATA, &block(1)).unwrap();
        let b = origin.write(BlockType::DIR, &[7u8; 40]).unwrap();
        let mut entries = Vec::new();
        for (score, flags) in [(a, 0x01u8), (b, 0x03), (Score::of(b"inactive"), 0x00)] {
            let mut e = [0u8; 40];
            e[8] = flags;
            e[20..].copy_from_slice(&score.0);
            entries.extend_from_slice(&e);
        }
        let top = origin.write(BlockType::DIR, &entries).unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(cache.clone(), origin.clone(), Duration::from_secs(5), 2);
        store.read(&top, BlockType::DIR).unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.stats().blocks < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(cache.get(&a, BlockType::DATA).is_some());
        assert!(cache.get(&b, BlockType::DIR).is_some());
        assert_eq!(cache.stats().blocks, 3, "the inactive entry is not fetched");
    }

    #[test]
    fn a_lying_origin_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        let store = CachedStore::new(
            cache.clone(),
            Arc::new(Liar(b"not it".to_vec())),
            Duration::ZERO,
            0,
        );
        let err = store.read(&Score::of(b"it"), BlockType::DATA).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert_eq!(cache.stats().blocks, 0);
    }

    /// With the origin down and a wait of W, a read fails after about W;
    /// the kernel's and the reader's retries that follow fail at once
    /// instead of each waiting W again (`head -c 1` took 1.7 W, `cat`
    /// 2.7 W). Counted in tries of the origin, not timed: the first read
    /// tries several times, those within W after it once each, and once
    /// the origin is back a read succeeds and the next failure waits again.
    #[test]
    fn after_a_whole_wait_in_vain_reads_try_once_until_the_wait_has_passed() {
        struct Down {
            up: std::sync::atomic::AtomicBool,
            tries: AtomicU64,
        }
        impl BlockStore for Down {
            fn read(&self, _: &Score, _: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
                self.tries.fetch_add(1, Ordering::Relaxed);
                if self.up.load(Ordering::Relaxed) {
                    Ok(Some(b"up".to_vec()))
                } else {
                    Err(StoreError::Remote("connection refused".into()))
                }
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
        let origin = Arc::new(Down {
            up: false.into(),
            tries: AtomicU64::new(0),
        });
        let wait = Duration::from_millis(400);
        let store = CachedStore::new(cache, origin.clone(), wait, 0);
        let tries = || origin.tries.swap(0, Ordering::Relaxed);
        assert!(store.read(&Score::of(b"a"), BlockType::DATA).is_err());
        assert!(tries() >= 3, "the first read waits, trying again");
        for k in [b"b", b"c", b"d"] {
            assert!(store.read(&Score::of(k), BlockType::DATA).is_err());
        }
        assert_eq!(tries(), 3, "one try each while the wait is remembered");
        origin.up.store(true, Ordering::Relaxed);
        let up = Score::of(b"up");
        assert_eq!(
            store.read(&up, BlockType::DATA).unwrap(),
            Some(b"up".to_vec())
        );
        assert_eq!(tries(), 1);
        origin.up.store(false, Ordering::Relaxed);
        assert!(store.read(&Score::of(b"e"), BlockType::DATA).is_err());
        assert!(
            tries() >= 3,
            "a success ends the outage: the next one waits again"
        );
    }
}
