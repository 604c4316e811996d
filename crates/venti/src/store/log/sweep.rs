//! A collection's sweep: the records below a horizon that hold no live
//! block are turned into *skips*, and the disk under them is given back by
//! punching holes in the log file.
//!
//! Why holes and not copying: a log offset is also a replication position
//! (peers remember how far they have read this log), so records never
//! move. A run of dead records `[a, b)` becomes one skip record written
//! over the header at `a`, saying "the next `b − a − 32` bytes are
//! nothing"; every reader of the log in sequence (replication, a rebuild
//! of the index) jumps over it, and the whole pages inside the run are
//! punched out (`fallocate(PUNCH_HOLE)`), so they cost no disk. Nothing is
//! copied, so compaction costs one pass over the log's headers and the
//! index lookups, whatever the store's size.
//!
//! Crash safety, in order, per batch of runs:
//! 1. the dead blocks' index entries are removed and the skips are
//!    recorded in the index (`skips`), in one commit (a block copied
//!    forward meanwhile is pending, and its entry comes back at the copy);
//! 2. the log is synced, so every copy forward made so far is durable
//!    before a skip covers the record it replaced;
//! 3. the skip headers are written into the log and synced;
//! 4. the holes are punched.
//!
//! A crash after 1 replays the recorded skips at the next open (writing a
//! header is idempotent, punching too) before anything reads the log; a
//! crash before 1 changed nothing. The entries are dropped once their
//! skips are durable. A block's record is dead when a copy forward
//! replaced it (the `superseded` table) or when the caller's `live` says
//! so; a block written again meanwhile is copied forward (see `ages`) and
//! never lost.

use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    HEADER_LEN, INDEX, Key, LOG_HEADER_LEN, LogStore, ReadAt, SKIPPED, SKIPS, SUPERSEDED, key,
    record,
};
use crate::Score;
use crate::store::{BlockStore, MAX_BLOCK_SIZE, StoreError};

/// How a sweep batches its work: each batch is one index commit and one
/// sync of the log, and what it holds is all the memory a sweep needs.
#[derive(Debug, Clone, Copy)]
pub struct SweepLimits {
    /// Dead blocks whose index entries one batch removes.
    pub batch_blocks: usize,
    /// Runs (skips) one batch writes.
    pub batch_runs: usize,
}

impl SweepLimits {
    /// Batches as large as `bytes` of memory allows: fewer, larger index
    /// commits rewrite the index's pages fewer times (a batch's dead
    /// entries are spread over the whole index). An entry costs about 64
    /// bytes with the index's own work; never less than the default.
    pub fn within(bytes: u64) -> SweepLimits {
        let blocks = (bytes / 64).clamp(64 * 1024, 1 << 24) as usize;
        SweepLimits {
            batch_blocks: blocks,
            batch_runs: blocks / 4,
        }
    }
}

impl Default for SweepLimits {
    fn default() -> SweepLimits {
        SweepLimits {
            batch_blocks: 64 * 1024,
            batch_runs: 16 * 1024,
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Where it stopped: no record at or past it was looked at.
    pub horizon: u64,
    /// Block records looked at below the horizon.
    pub records: u64,
    /// Of them, live blocks kept.
    pub live: u64,
    /// Blocks dropped from the index (no longer readable).
    pub blocks_dropped: u64,
    /// Log bytes newly covered by skips (dead records and old copies).
    pub bytes_skipped: u64,
    /// Skips written.
    pub skips: u64,
    /// The log file's disk use before and after (`st_blocks`).
    pub disk_before: u64,
    pub disk_after: u64,
    /// Punching holes is not supported where the log lives: the dead
    /// records are skipped and their blocks gone, but the disk is not
    /// given back.
    pub holes_unsupported: bool,
}

/// A run of dead records being gathered.
struct Run {
    start: u64,
    end: u64,
    /// Where the skip already at `start` ends, if the run began with one.
    skipped_to: Option<u64>,
    /// Blocks whose only record lies in the run: their entries go.
    drop: Vec<(Key, u64)>,
}

/// What one batch applies.
#[derive(Default)]
struct Batch {
    runs: Vec<(u64, u64)>,
    drop: Vec<(Key, u64)>,
}

impl LogStore {
    /// The horizon of a collection that starts now: records below it are
    /// older than twice the grace period (see `ages`); everything at or
    /// above it is kept. Taken before the live set is marked, so that
    /// what is written meanwhile lies above it.
    pub fn collection_horizon(&self) -> u64 {
        let ages = self.note_now();
        ages.horizon(super::ages::unix_now(), 2 * ages.grace(), LOG_HEADER_LEN)
    }

    /// Sweeps the records below `horizon` (a record boundary: a value of
    /// [`LogStore::collection_horizon`], or less), keeping every block for
    /// which `live(score, wire type)` holds. `progress` hears how far the
    /// sweep is, in log bytes, out of how many. One sweep runs at a time.
    pub fn sweep(
        &self,
        horizon: u64,
        live: &dyn Fn(&Score, u8) -> bool,
        limits: SweepLimits,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Collected, StoreError> {
        let _one = self.collecting.try_lock().map_err(|_| {
            StoreError::Collection("a collection of this store is already running".into())
        })?;
        // Everything below the horizon is in the index, so that a block's
        // place is settled by the index and pending copies are newer.
        let horizon = {
            let mut w = self.lock_writer();
            self.commit_index(&mut w)?;
            horizon.min(w.indexed_end)
        };
        let mut done = Collected {
            horizon,
            disk_before: self.disk_use()?,
            ..Collected::default()
        };
        let read_err =
            |e: std::io::Error| StoreError::io(format!("reading {}", self.log_path().display()), e);
        let mut reader = BufReader::with_capacity(
            1 << 20,
            ReadAt {
                file: &self.reader,
                pos: LOG_HEADER_LEN,
            },
        );
        let mut offset = LOG_HEADER_LEN;
        let mut head = [0u8; HEADER_LEN];
        let mut data = vec![0u8; MAX_BLOCK_SIZE];
        let mut run: Option<Run> = None;
        let mut batch = Batch::default();
        let mut applied: Vec<u64> = Vec::new();
        let mut superseded = Superseded::new(horizon);
        while offset < horizon {
            reader.read_exact(&mut head).map_err(read_err)?;
            let header = record::parse_header(&head).map_err(|why| self.damaged(offset, why))?;
            let span = record::span(&head, &header)
                .ok_or_else(|| self.damaged(offset, "a damaged skip"))?;
            let next = offset + HEADER_LEN as u64 + span;
            if next > horizon {
                // A horizon that moved back (a longer grace, a peer that
                // is further behind) may fall inside an earlier skip:
                // this sweep ends where that skip starts.
                if header.wire_type == record::SKIP_TYPE {
                    break;
                }
                return Err(self.damaged(offset, "a record crosses the collection's horizon"));
            }
            // None: a skip or a marker. Some(None): a dead block whose
            // entry points elsewhere. Some(Some(key)): a dead block whose
            // entry goes (if the index still points here).
            let dead_block = if header.wire_type == record::SKIP_TYPE {
                reader.seek_relative(span as i64).map_err(read_err)?;
                None
            } else {
                let len = span as usize;
                if len > MAX_BLOCK_SIZE {
                    return Err(self.damaged(offset, "a record longer than any block"));
                }
                reader.read_exact(&mut data[..len]).map_err(read_err)?;
                if !record::crc_matches(&head, &header, &data[..len]) {
                    return Err(self.damaged(offset, "checksum mismatch"));
                }
                if header.wire_type == record::SYNC_MARKER_TYPE {
                    None
                } else {
                    done.records += 1;
                    // A copy forward left it behind: dead, and the index
                    // points at the copy. Else its block's liveness
                    // decides; no index lookup is needed here (a batch
                    // checks the index, in key order).
                    let replaced = superseded.contains(self, offset)?;
                    if !replaced && live(&header.score, header.wire_type) {
                        done.live += 1;
                        // A live record ends the run before it.
                        if let Some(r) = run.take() {
                            self.close_run(r, &mut batch);
                        }
                        if self.batch_full(&batch, limits) {
                            self.apply(&mut batch, &mut applied, &mut done)?;
                        }
                        offset = next;
                        continue;
                    }
                    Some((!replaced).then(|| key(&header.score, header.wire_type)))
                }
            };
            // A dead record (or a skip, or a marker): the run grows.
            let r = run.get_or_insert_with(|| Run {
                start: offset,
                end: offset,
                skipped_to: (header.wire_type == record::SKIP_TYPE).then_some(next),
                drop: Vec::new(),
            });
            r.end = next;
            if let Some(Some(k)) = dead_block {
                r.drop.push((k, offset));
            }
            offset = next;
            // A long dead stretch is cut into runs of a batch's size, so
            // memory stays bounded however much is dead.
            if r.drop.len() >= limits.batch_blocks {
                let r = run.take().expect("the run just grown");
                self.close_run(r, &mut batch);
                self.apply(&mut batch, &mut applied, &mut done)?;
            }
            if done.records.is_multiple_of(4096) {
                progress(offset, horizon);
            }
        }
        done.horizon = offset;
        if let Some(r) = run.take() {
            self.close_run(r, &mut batch);
        }
        self.apply(&mut batch, &mut applied, &mut done)?;
        // The last batch's skips are durable: forget them, and the
        // superseded records below the horizon, all dead now.
        let txn = self.index.begin_write().map_err(|e| self.index_error(e))?;
        forget_skips(&txn, &applied).map_err(|e| self.index_error(e))?;
        txn.open_table(SUPERSEDED)
            .map_err(redb::Error::from)
            .and_then(|mut t| Ok(t.retain_in(..done.horizon, |_, _| false)?))
            .map_err(|e| self.index_error(e))?;
        txn.commit().map_err(|e| self.index_error(e))?;
        progress(done.horizon, done.horizon);
        done.disk_after = self.disk_use()?;
        Ok(done)
    }

    fn batch_full(&self, batch: &Batch, limits: SweepLimits) -> bool {
        batch.drop.len() >= limits.batch_blocks || batch.runs.len() >= limits.batch_runs
    }

    /// A run is worth a skip only if it frees a whole page beyond its new
    /// header, one that the skip it began with (if any) did not already
    /// free. Smaller runs stay as they are: their blocks readable, garbage
    /// kept.
    fn close_run(&self, run: Run, batch: &mut Batch) {
        let (from, to) = punchable(run.start, run.end);
        let freed_before = run
            .skipped_to
            .map_or(from, |end| punchable(run.start, end).1.max(from));
        if to <= freed_before {
            return;
        }
        batch.runs.push((run.start, run.end));
        batch.drop.extend(run.drop);
    }

    /// Applies a batch in the order that survives a crash (see the module
    /// comment), and empties it.
    fn apply(
        &self,
        batch: &mut Batch,
        applied: &mut Vec<u64>,
        done: &mut Collected,
    ) -> Result<(), StoreError> {
        if batch.runs.is_empty() {
            return Ok(());
        }
        {
            if let Some(why) = &self.lock_writer().failed {
                return Err(StoreError::Failed(why.clone()));
            }
            // Without the writer lock, which every read takes: a batch may
            // take seconds. A block copied forward meanwhile is pending,
            // and reads find it there; the index entry removed here is put
            // back, at the copy, by the next commit of pending entries
            // (which waits for this transaction). In key order: the
            // index's pages are visited once each, in turn.
            batch.drop.sort_unstable();
            let txn = self.index.begin_write().map_err(|e| self.index_error(e))?;
            {
                let mut table = txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
                for (k, offset) in &batch.drop {
                    let here = table
                        .get(k)
                        .map_err(|e| self.index_error(e))?
                        .is_some_and(|v| v.value().0 == *offset);
                    if here {
                        table.remove(k).map_err(|e| self.index_error(e))?;
                        done.blocks_dropped += 1;
                    }
                }
            }
            forget_skips(&txn, applied).map_err(|e| self.index_error(e))?;
            {
                let mut skips = txn.open_table(SKIPS).map_err(|e| self.index_error(e))?;
                let mut skipped = txn.open_table(SKIPPED).map_err(|e| self.index_error(e))?;
                for &(start, end) in &batch.runs {
                    skips.insert(start, end).map_err(|e| self.index_error(e))?;
                    // A run that took in earlier skips replaces them.
                    skipped
                        .retain_in(start..end, |_, _| false)
                        .map_err(|e| self.index_error(e))?;
                    skipped
                        .insert(start, end)
                        .map_err(|e| self.index_error(e))?;
                }
            }
            txn.commit().map_err(|e| self.index_error(e))?;
        }
        applied.clear();
        for &(start, end) in &batch.runs {
            done.bytes_skipped += end - start;
            done.skips += 1;
            applied.push(start);
        }
        // Every copy forward made so far is made durable before a skip
        // covers the record it replaced: a skip is never the last word on
        // a block a kill -9 could take the copy of. (A copy made after
        // this sync is of a write its writer has not synced yet.)
        BlockStore::sync(self)?;
        if !self.write_skips(&batch.runs)? {
            done.holes_unsupported = true;
        }
        batch.runs.clear();
        batch.drop.clear();
        Ok(())
    }

    /// Writes the skips over their runs' first headers, syncs, and punches
    /// the runs' whole pages. False if holes cannot be punched here.
    fn write_skips(&self, runs: &[(u64, u64)]) -> Result<bool, StoreError> {
        let write_err =
            |e: std::io::Error| StoreError::io(format!("writing {}", self.log_path().display()), e);
        let _past = self.past.write().unwrap_or_else(|p| p.into_inner());
        for &(start, end) in runs {
            let skipped = end - start - HEADER_LEN as u64;
            self.patcher
                .write_all_at(&record::skip_header(skipped), start)
                .map_err(write_err)?;
        }
        self.patcher.sync_data().map_err(write_err)?;
        let mut punched = true;
        for &(start, end) in runs {
            let (from, to) = punchable(start, end);
            if to <= from || !punched {
                continue;
            }
            // SAFETY: fallocate on a descriptor we own, with no pointers.
            let rc = unsafe {
                libc::fallocate(
                    self.patcher.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    tracing::warn!(store = %self.dir.display(), "this file system cannot punch holes: dead records are skipped but their disk is not given back");
                    punched = false;
                } else {
                    return Err(write_err(e));
                }
            }
        }
        Ok(punched)
    }

    /// Writes again the skips a collection recorded but may not have made
    /// durable (it died between its commit and its sync), at open.
    pub(super) fn replay_skips(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let runs: Vec<(u64, u64)> = {
            let table = txn.open_table(SKIPS).map_err(|e| self.index_error(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| self.index_error(e))? {
                let (start, end) = entry.map_err(|e| self.index_error(e))?;
                out.push((start.value(), end.value()));
            }
            out
        };
        if runs.is_empty() {
            return Ok(());
        }
        let len = self
            .reader
            .metadata()
            .map_err(|e| StoreError::io("reading log size", e))?
            .len();
        if let Some(&(start, end)) = runs
            .iter()
            .find(|&&(start, end)| end > len || end < start + HEADER_LEN as u64)
        {
            return Err(self.damaged(
                start,
                &format!("a recorded skip to {end} does not fit the log ({len} bytes)"),
            ));
        }
        tracing::info!(store = %self.dir.display(), skips = runs.len(), "writing again the skips of a collection that was cut short");
        self.write_skips(&runs)?;
        let starts: Vec<u64> = runs.iter().map(|r| r.0).collect();
        forget_skips(txn, &starts).map_err(|e| self.index_error(e))
    }

    /// The log file's disk use, in bytes.
    pub fn disk_use(&self) -> Result<u64, StoreError> {
        self.reader
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| StoreError::io(format!("reading {}", self.log_path().display()), e))
    }

    fn damaged(&self, offset: u64, what: &str) -> StoreError {
        StoreError::Collection(format!(
            "venti log {} is damaged at offset {offset}: {what}",
            self.log_path().display()
        ))
    }
}

/// The superseded records' offsets below a horizon, read in order a
/// chunk at a time (each chunk through a read transaction of its own, so
/// that none is held while batches commit).
struct Superseded {
    next: std::collections::VecDeque<u64>,
    from: u64,
    horizon: u64,
    done: bool,
}

impl Superseded {
    const CHUNK: usize = 64 * 1024;

    fn new(horizon: u64) -> Superseded {
        Superseded {
            next: Default::default(),
            from: 0,
            horizon,
            done: false,
        }
    }

    /// Whether `offset` is one; offsets must be asked in rising order.
    fn contains(&mut self, store: &LogStore, offset: u64) -> Result<bool, StoreError> {
        loop {
            while self.next.front().is_some_and(|&o| o < offset) {
                self.next.pop_front();
            }
            if let Some(&o) = self.next.front() {
                return Ok(o == offset);
            }
            if self.done {
                return Ok(false);
            }
            let txn = store.index.begin_read().map_err(|e| store.index_error(e))?;
            let table = txn
                .open_table(SUPERSEDED)
                .map_err(|e| store.index_error(e))?;
            for entry in table
                .range(self.from..self.horizon)
                .map_err(|e| store.index_error(e))?
                .take(Self::CHUNK)
            {
                let (o, _) = entry.map_err(|e| store.index_error(e))?;
                self.next.push_back(o.value());
            }
            match self.next.back() {
                Some(&last) if self.next.len() == Self::CHUNK => self.from = last + 1,
                _ => self.done = true,
            }
        }
    }
}

fn forget_skips(txn: &WriteTransaction, starts: &[u64]) -> Result<(), redb::Error> {
    let mut skips = txn.open_table(SKIPS)?;
    for start in starts {
        skips.remove(start)?;
    }
    Ok(())
}

/// The whole pages of a run `[start, end)` past its skip header.
fn punchable(start: u64, end: u64) -> (u64, u64) {
    const PAGE: u64 = 4096;
    let from = (start + HEADER_LEN as u64).div_ceil(PAGE) * PAGE;
    let to = end / PAGE * PAGE;
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockStore, BlockType};

    /// A collection killed after it committed its skips, before it wrote
    /// them into the log: the next open writes them, so the log and the
    /// index agree again (the dead blocks gone from both, the disk given
    /// back), and forgets them.
    #[test]
    fn skips_committed_but_not_written_are_written_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let scores: Vec<Score> = (0..40u32)
            .map(|i| {
                let mut b = vec![i as u8 + 1; 8192];
                b[..4].copy_from_slice(&i.to_be_bytes());
                store.write(BlockType::DATA, &b).unwrap()
            })
            .collect();
        store.sync().unwrap();
        let (records, _) = store.read_log(LogStore::LOG_START, 100, 1 << 30).unwrap();
        let (start, end) = (records[10].offset, records[30].offset);
        {
            let mut w = store.lock_writer();
            store.commit_index(&mut w).unwrap();
            let txn = store.index.begin_write().unwrap();
            {
                let mut table = txn.open_table(INDEX).unwrap();
                for r in &records[10..30] {
                    table.remove(&key(&r.score, r.wire_type)).unwrap();
                }
                txn.open_table(SKIPS).unwrap().insert(start, end).unwrap();
            }
            txn.commit().unwrap();
        }
        let disk_before = store.disk_use().unwrap();
        drop(store);

        let store = LogStore::open(dir.path()).unwrap();
        let (after, _) = store.read_log(LogStore::LOG_START, 100, 1 << 30).unwrap();
        let kept: Vec<Score> = after.iter().map(|r| r.score).collect();
        assert_eq!(kept, [&scores[..10], &scores[30..]].concat());
        assert!(store.disk_use().unwrap() + 19 * 8192 <= disk_before);
        for s in &scores[10..30] {
            assert_eq!(store.read(s, BlockType::DATA).unwrap(), None);
        }
        let txn = store.index.begin_read().unwrap();
        assert_eq!(txn.open_table(SKIPS).unwrap().iter().unwrap().count(), 0);
    }
}
