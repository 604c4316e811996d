//! The durable store: an append-only log of checksummed records (see
//! [`super::record`]) plus an on-disk index (redb) from (score, wire type) to the
//! record's offset.
//!
//! Layout of a store directory:
//!
//! * `log` — a 64-byte file header, then records, appended only.
//! * `index.redb` — the index, and `indexed_end`: the log offset up to which
//!   every record is in the index.
//! * `LOCK` — held with `flock` so two processes never share a store.
//!
//! Ordering rules that make crashes safe:
//!
//! * Records are buffered in memory and written in large chunks; `sync` writes
//!   the buffer and `fdatasync`s the log before it returns.
//! * After each successful `fdatasync` the store appends a *sync marker*: a
//!   record of a reserved type holding the store's secret salt (random, in the
//!   log header) and the marker's own offset. Data cannot forge one — it would
//!   need the salt, and a copy of a real marker (an archived backup of this
//!   log, say) sits at another offset than it names — so a marker proves that
//!   everything before it was once durable. Recovery uses that: damage that a
//!   valid marker follows is real corruption of synced data, and opening
//!   refuses, naming the offset and the record; damage after the last marker
//!   is a torn tail (writes no sync ever covered), and is cut, whatever bytes
//!   the torn data or the records after it hold. The marker is written only
//!   after the fsync returned, so power loss during a sync (a later page kept,
//!   an earlier one lost) never leaves a marker behind damage.
//! * The index is a cache of the log. New entries wait in memory and are
//!   committed in batches, and only after the log is synced, so the index never
//!   points past durable data. A clean close commits everything, so a clean
//!   restart scans nothing; after a crash only the records past `indexed_end`
//!   (at most one batch) are scanned, and a torn tail is cut off.
//!
//! Memory is bounded: the pending batch, the write buffer and redb's page cache
//! all have fixed limits, whatever the size of the store.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::record::{self, HEADER_LEN};
use super::{BlockStore, MAX_BLOCK_SIZE, StoreError};
use crate::{BlockType, Score};

mod ages;
mod sweep;

pub use ages::DEFAULT_GRACE;
pub use sweep::{Collected, SweepLimits};

const LOG_HEADER: &[u8] = b"colony venti log v1\n";
const LOG_HEADER_LEN: u64 = 64;
/// Where in the log header the store's salt lives (zero in stores made before
/// sync markers; such a store gets a salt when it is next opened).
const SALT_AT: usize = 32;
const SALT_LEN: usize = 16;

/// Key: score then wire type.
type Key = [u8; 21];
/// (score ‖ wire type) → (record offset, data length).
const INDEX: TableDefinition<&Key, (u64, u32)> = TableDefinition::new("blocks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INDEXED_END: &str = "indexed_end";
/// Unix time → the log's end then (see [`ages`]).
const AGES: TableDefinition<u64, u64> = TableDefinition::new("ages");
/// Skips a collection committed to before it wrote them into the log:
/// start of the dead run → its end. Replayed at open (see [`sweep`]).
const SKIPS: TableDefinition<u64, u64> = TableDefinition::new("skips");
/// Every skip written (start → end), kept for good: where a position
/// inside one goes on ([`LogStore::read_log`]). Small: one entry a run.
const SKIPPED: TableDefinition<u64, u64> = TableDefinition::new("skipped");
/// Records a newer copy of their block replaced (by offset), so that a
/// sweep knows them dead without looking each record up. One lost in a
/// crash only keeps a dead record a little longer.
const SUPERSEDED: TableDefinition<u64, ()> = TableDefinition::new("superseded");

/// Write the buffer to the file once it holds this much.
const WRITE_BUFFER: usize = 1 << 20;
/// Commit the index after this many new blocks …
const INDEX_BATCH_BLOCKS: usize = 64 * 1024;
/// … or this many new log bytes, whichever comes first.
const INDEX_BATCH_BYTES: u64 = 256 << 20;
/// redb's page cache.
const INDEX_CACHE: usize = 64 << 20;

/// What opening the store found in the log past the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records found past `indexed_end` and added to the index.
    pub records_recovered: u64,
    /// Where a torn or corrupt tail began, if one was cut.
    pub cut_at: Option<u64>,
    /// How many bytes were cut there.
    pub bytes_cut: u64,
    /// The index was unusable (ahead of the log) and was rebuilt from the log.
    pub index_rebuilt: bool,
}

/// Where a record lives.
#[derive(Debug, Clone, Copy)]
struct Location {
    offset: u64,
    len: u32,
}

/// State changed by writers, behind one lock.
struct Writer {
    file: File,
    /// Records not yet written to the file; they start at `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Offset just past the last record (`buf_start + buf.len()`).
    end: u64,
    /// Entries not yet committed to the index.
    pending: HashMap<Key, Location>,
    /// Offsets of records that a copy forward made dead (see `ages`), not
    /// yet committed to the index's `superseded` table.
    superseded: Vec<u64>,
    indexed_end: u64,
    /// The end of the log as of the last sync marker: nothing past it was
    /// covered by a sync.
    marked_end: u64,
    /// The end of the data the last successful fsync covered.
    durable_end: u64,
    /// Set when the index could not be committed; the store then refuses writes
    /// rather than risk an index that disagrees with the log.
    failed: Option<String>,
}

/// The durable log-structured block store.
pub struct LogStore {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// A second handle for positioned reads that need no lock.
    reader: File,
    /// A third, for a collection's writes into the log's past (skips).
    patcher: File,
    /// How old the records are; see [`ages`].
    ages: Mutex<ages::Ages>,
    /// Held shared by whoever reads the log in sequence, and exclusively
    /// while a collection writes skips and punches holes, so a reader never
    /// meets a record half gone.
    past: RwLock<()>,
    /// Held by the one collection that may run at a time.
    collecting: Mutex<()>,
    index: Database,
    salt: [u8; SALT_LEN],
    recovery: Recovery,
    /// The durable end of the log, published after every sync so that
    /// replication pushes new blocks the moment they are durable.
    durable: tokio::sync::watch::Sender<u64>,
    /// Whether new blocks are checked for SHA-1 collision attacks (always,
    /// but in the benchmark that measures what the check costs).
    detect_collisions: bool,
    _lock: File,
}

/// One block record of the log, as [`LogStore::read_log`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    pub wire_type: u8,
    pub score: Score,
    pub data: Vec<u8>,
}

fn key(score: &Score, wire_type: u8) -> Key {
    let mut k = [0u8; 21];
    k[..20].copy_from_slice(&score.0);
    k[20] = wire_type;
    k
}

impl LogStore {
    /// This store without the SHA-1 collision check of new blocks: for
    /// measuring what that check costs (`colony bench venti`), and for
    /// scratch stores whose blocks are checked again where they are kept
    /// (an OCI layout being imported). A node's store never turns it off.
    pub fn without_collision_detection(mut self) -> LogStore {
        self.detect_collisions = false;
        self
    }

    /// Opens the store in `dir`, creating it if needed, and recovers from a crash
    /// if the last run did not close cleanly.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            StoreError::io(format!("creating store directory {}", dir.display()), e)
        })?;
        let lock = lock_dir(&dir)?;
        let log_path = dir.join("log");
        let (file, created, salt) = open_log(&log_path)?;
        if created {
            sync_dir(&dir)?;
        }
        let reader = File::open(&log_path)
            .map_err(|e| StoreError::io(format!("opening {}", log_path.display()), e))?;
        let patcher = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(|e| StoreError::io(format!("opening {}", log_path.display()), e))?;

        let index_path = dir.join("index.redb");
        let index_err = |e: &dyn std::fmt::Display| StoreError::Index {
            path: index_path.clone(),
            detail: e.to_string(),
        };
        let index = Database::builder()
            .set_cache_size(INDEX_CACHE)
            .create(&index_path)
            .map_err(|e| index_err(&e))?;

        let mut store = LogStore {
            dir,
            writer: Mutex::new(Writer {
                file,
                buf: Vec::with_capacity(WRITE_BUFFER + MAX_BLOCK_SIZE + HEADER_LEN),
                buf_start: 0,
                end: 0,
                pending: HashMap::new(),
                superseded: Vec::new(),
                indexed_end: LOG_HEADER_LEN,
                marked_end: LOG_HEADER_LEN,
                durable_end: LOG_HEADER_LEN,
                failed: None,
            }),
            reader,
            patcher,
            ages: Mutex::new(ages::Ages::new([])),
            past: RwLock::new(()),
            collecting: Mutex::new(()),
            index,
            salt,
            recovery: Recovery::default(),
            durable: tokio::sync::watch::Sender::new(LOG_HEADER_LEN),
            detect_collisions: true,
            _lock: lock,
        };
        store.recover()?;
        Ok(store)
    }

    /// What opening found; see [`Recovery`].
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's path (tests flip bytes in it).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Where the first record of every log starts: a replication position
    /// that has seen nothing.
    pub const LOG_START: u64 = LOG_HEADER_LEN;

    /// The end of the data the last sync made durable: every record before
    /// it survives a crash.
    pub fn durable_end(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Follows [`LogStore::durable_end`] as syncs move it.
    pub fn watch_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Reads the block records from `from`, which must be a record boundary
    /// (`LOG_START` or an offset this method returned), towards the durable
    /// end: at most `max_records` records and about `max_bytes` of data (the
    /// record that crosses it is included). Returns them and the offset after
    /// the last one read; sync markers are passed over. Each record is
    /// checked by its checksum, so damage is reported, never passed on.
    pub fn read_log(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<LogRecord>, u64), StoreError> {
        match self.read_log_from(from, max_records, max_bytes) {
            // A position a collection has since covered with a skip (a
            // peer's, older than the collection knew): it goes on after
            // the skip.
            Err(e) if from >= LOG_HEADER_LEN && from <= self.durable_end() => {
                match self.inside_skip(from)? {
                    Some(after) => self.read_log_from(after, max_records, max_bytes),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// Where the skip that covers `from` ends, if one does (`from` is then
    /// no record's start): the index keeps every skip written.
    fn inside_skip(&self, from: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.index.begin_read().map_err(|e| self.index_error(e))?;
        let table = match txn.open_table(SKIPPED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.index_error(e)),
        };
        let last = table
            .range(..=from)
            .map_err(|e| self.index_error(e))?
            .next_back()
            .transpose()
            .map_err(|e| self.index_error(e))?;
        Ok(last
            .map(|(start, end)| (start.value(), end.value()))
            .filter(|&(start, end)| start < from && from < end)
            .map(|(_, end)| end))
    }

    fn read_log_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<LogRecord>, u64), StoreError> {
        let end = self.durable_end();
        if from < LOG_HEADER_LEN || from > end {
            return Err(StoreError::Remote(format!(
                "log position {from} is outside this store's durable log ({LOG_HEADER_LEN}..{end})"
            )));
        }
        let _past = self.past.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut offset = from;
        let mut reader = BufReader::with_capacity(
            (max_bytes + HEADER_LEN).clamp(64 << 10, 8 << 20),
            ReadAt {
                file: &self.reader,
                pos: from,
            },
        );
        let mut head = [0u8; HEADER_LEN];
        let damaged = |offset: u64, what: &str| {
            StoreError::Remote(format!(
                "venti log {} is damaged at offset {offset}: {what}",
                self.log_path().display()
            ))
        };
        while offset < end && out.len() < max_records && bytes < max_bytes {
            if offset + HEADER_LEN as u64 > end {
                return Err(damaged(offset, "a record header runs past the durable end"));
            }
            reader
                .read_exact(&mut head)
                .map_err(|e| StoreError::io(format!("reading {}", self.log_path().display()), e))?;
            let header = record::parse_header(&head).map_err(|why| damaged(offset, why))?;
            if header.wire_type == record::SKIP_TYPE {
                let skipped = record::span(&head, &header)
                    .ok_or_else(|| damaged(offset, "a damaged skip"))?;
                let next = offset + HEADER_LEN as u64 + skipped;
                if next > end {
                    return Err(damaged(offset, "a skip runs past the durable end"));
                }
                reader.seek_relative(skipped as i64).map_err(|e| {
                    StoreError::io(format!("reading {}", self.log_path().display()), e)
                })?;
                offset = next;
                continue;
            }
            let next = offset + (HEADER_LEN + header.len) as u64;
            if header.len > MAX_BLOCK_SIZE || next > end {
                return Err(damaged(offset, "a record runs past the durable end"));
            }
            let mut data = vec![0u8; header.len];
            reader
                .read_exact(&mut data)
                .map_err(|e| StoreError::io(format!("reading {}", self.log_path().display()), e))?;
            if !record::crc_matches(&head, &header, &data) {
                return Err(damaged(offset, "checksum mismatch"));
            }
            if header.wire_type != record::SYNC_MARKER_TYPE {
                bytes += data.len();
                out.push(LogRecord {
                    offset,
                    wire_type: header.wire_type,
                    score: header.score,
                    data,
                });
            }
            offset = next;
        }
        Ok((out, offset))
    }

    /// Writes buffered records to the log file (not to the disk): they then
    /// outlive this process, if not the machine.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut w = self.lock_writer();
        self.flush_buffer(&mut w)
    }

    /// How many block records lie between `from` (a record boundary) and the
    /// durable end; reads record headers only.
    pub fn count_records(&self, from: u64) -> Result<u64, StoreError> {
        let _past = self.past.read().unwrap_or_else(|p| p.into_inner());
        let end = self.durable_end();
        let mut offset = from.max(LOG_HEADER_LEN);
        let mut n = 0;
        let mut head = [0u8; HEADER_LEN];
        while offset + HEADER_LEN as u64 <= end {
            self.reader
                .read_exact_at(&mut head, offset)
                .map_err(|e| StoreError::io(format!("reading {}", self.log_path().display()), e))?;
            let Ok(header) = record::parse_header(&head) else {
                break;
            };
            let Some(span) = record::span(&head, &header) else {
                break;
            };
            if header.wire_type != record::SYNC_MARKER_TYPE && header.wire_type != record::SKIP_TYPE
            {
                n += 1;
            }
            offset += HEADER_LEN as u64 + span;
        }
        Ok(n)
    }

    /// Whether the store holds the block, without reading it.
    pub fn has(&self, score: &Score, wire_type: u8) -> Result<bool, StoreError> {
        if score.is_zero() {
            return Ok(true);
        }
        let k = key(score, wire_type);
        if self.lock_writer().pending.contains_key(&k) {
            return Ok(true);
        }
        Ok(self.indexed_location(&k)?.is_some())
    }

    /// How many blocks the store holds (those the index has, and those
    /// waiting to be indexed).
    pub fn block_count(&self) -> Result<u64, StoreError> {
        let pending = self.lock_writer().pending.len() as u64;
        let txn = self.index.begin_read().map_err(|e| self.index_error(e))?;
        let table = txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
        Ok(table.len().map_err(|e| self.index_error(e))? + pending)
    }

    /// Commits everything to the index and syncs, so the next open scans nothing.
    pub fn close(self) -> Result<(), StoreError> {
        let mut w = self.lock_writer();
        self.commit_index(&mut w)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock leaves consistent state: every change
        // to Writer is made after the I/O it depends on succeeds.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn index_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Index {
            path: self.dir.join("index.redb"),
            detail: e.to_string(),
        }
    }

    /// Brings the index up to the end of the log, cutting a torn tail.
    fn recover(&mut self) -> Result<(), StoreError> {
        let log_len = {
            let w = self.lock_writer();
            w.file
                .metadata()
                .map_err(|e| StoreError::io("reading log size", e))?
                .len()
        };
        let txn = self.index.begin_write().map_err(|e| self.index_error(e))?;
        let mut indexed_end = {
            let meta = txn.open_table(META).map_err(|e| self.index_error(e))?;
            txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
            let stored = meta
                .get(INDEXED_END)
                .map_err(|e| self.index_error(e))?
                .map(|v| v.value());
            stored.unwrap_or(LOG_HEADER_LEN)
        };
        // A collection that died between committing its skips and making
        // them durable in the log: write them again, before anything reads
        // the log.
        self.replay_skips(&txn)?;
        txn.open_table(SUPERSEDED)
            .map_err(|e| self.index_error(e))?;
        let saved_ages: Vec<(u64, u64)> = {
            let table = txn.open_table(AGES).map_err(|e| self.index_error(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| self.index_error(e))? {
                let (t, end) = entry.map_err(|e| self.index_error(e))?;
                out.push((t.value(), end.value()));
            }
            out
        };
        if indexed_end > log_len || indexed_end < LOG_HEADER_LEN {
            tracing::warn!(
                store = %self.dir.display(),
                indexed_end,
                log_len,
                "the index points past the end of the log; rebuilding it from the log"
            );
            txn.delete_table(INDEX).map_err(|e| self.index_error(e))?;
            txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
            // What it said of records' copies is void with it: a newer
            // copy it knew may be gone, and the old one the only one.
            txn.delete_table(SUPERSEDED)
                .map_err(|e| self.index_error(e))?;
            txn.open_table(SUPERSEDED)
                .map_err(|e| self.index_error(e))?;
            indexed_end = LOG_HEADER_LEN;
            self.recovery.index_rebuilt = true;
        }

        let (entries, valid_end) = scan_log(&self.reader, indexed_end, log_len)
            .map_err(|e| StoreError::io(format!("scanning {}", self.log_path().display()), e))?;
        if valid_end < log_len
            && let Some(marker) = next_sync_marker(&self.reader, &self.salt, valid_end, log_len)
        {
            // A sync marker follows the damage: the damaged bytes were once
            // durable. That is corruption of acknowledged data, not a torn
            // tail; cutting would lose it silently, so refuse instead.
            return Err(StoreError::DamagedLog {
                path: self.log_path(),
                offset: valid_end,
                record: describe_record(&self.reader, valid_end),
                sync_point: marker,
            });
        }
        if valid_end < log_len {
            tracing::warn!(
                store = %self.dir.display(),
                offset = valid_end,
                bytes = log_len - valid_end,
                "torn or corrupt tail found in the venti log; cutting it off"
            );
            {
                let w = self.lock_writer();
                w.file
                    .set_len(valid_end)
                    .map_err(|e| StoreError::io("cutting torn log tail", e))?;
                w.file
                    .sync_all()
                    .map_err(|e| StoreError::io("syncing log", e))?;
            }
            self.recovery.cut_at = Some(valid_end);
            self.recovery.bytes_cut = log_len - valid_end;
        }
        if !entries.is_empty() {
            tracing::info!(store = %self.dir.display(), records = entries.len(), "recovered records from the log tail");
        }
        self.recovery.records_recovered = entries.len() as u64;
        {
            let mut table = txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
            for (k, loc) in &entries {
                table
                    .insert(k, (loc.offset, loc.len))
                    .map_err(|e| self.index_error(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.index_error(e))?;
            meta.insert(INDEXED_END, valid_end)
                .map_err(|e| self.index_error(e))?;
        }
        // A mark past the log's end (a log shorter than the index knew)
        // would make what is written next look old.
        let (saved_ages, void_ages): (Vec<_>, Vec<_>) = saved_ages
            .into_iter()
            .partition(|&(_, end)| end <= valid_end);
        if !void_ages.is_empty() {
            let mut table = txn.open_table(AGES).map_err(|e| self.index_error(e))?;
            for (t, _) in &void_ages {
                table.remove(t).map_err(|e| self.index_error(e))?;
            }
        }
        txn.commit().map_err(|e| self.index_error(e))?;

        {
            // Everything found was written before now.
            let mut ages = self.lock_ages();
            *ages = ages::Ages::new(saved_ages);
            let now = ages::unix_now();
            ages.watch_clock(now, ages::boot_now());
            ages.note(now, valid_end);
        }
        let mut w = self.lock_writer();
        w.buf_start = valid_end;
        w.end = valid_end;
        w.indexed_end = valid_end;
        w.marked_end = valid_end;
        w.durable_end = valid_end;
        self.durable.send_replace(valid_end);
        Ok(())
    }

    fn lock_ages(&self) -> MutexGuard<'_, ages::Ages> {
        self.ages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The grace period of this store's collections; see [`ages`].
    pub fn grace(&self) -> Duration {
        self.lock_ages().grace()
    }

    /// Sets the grace period (a node's `gc-grace`); see [`ages`].
    pub fn set_grace(&self, grace: Duration) {
        self.lock_ages().set_grace(grace);
    }

    /// Below this offset a block that is written again or claimed is copied
    /// to the end of the log, so that it counts as young (see [`ages`]).
    fn refresh_horizon(&self) -> u64 {
        let ages = self.note_now();
        ages.horizon(ages::unix_now(), ages.grace(), LOG_HEADER_LEN)
    }

    /// Notes that everything durable now was written by now (a store
    /// that has been idle since its last write would otherwise have no
    /// mark past it), and hands over the marks.
    fn note_now(&self) -> MutexGuard<'_, ages::Ages> {
        let end = self.durable_end();
        let mut ages = self.lock_ages();
        let now = ages::unix_now();
        ages.watch_clock(now, ages::boot_now());
        ages.note(now, end);
        if ages.moved
            && let Err(e) = self.save_moved_marks(&mut ages, end)
        {
            tracing::error!(error = %e, store = %self.dir.display(), "saving the log's marks of age after a clock step");
        }
        ages
    }

    /// After a clock step moved the marks: the saved ones are replaced by
    /// them at once (those the durable log covers), so that a restart
    /// never brings back marks that make records look older than they are.
    fn save_moved_marks(&self, ages: &mut ages::Ages, durable: u64) -> Result<(), StoreError> {
        let txn = self.index.begin_write().map_err(|e| self.index_error(e))?;
        {
            let mut table = txn.open_table(AGES).map_err(|e| self.index_error(e))?;
            table
                .retain(|_, _| false)
                .map_err(|e| self.index_error(e))?;
            for (t, end) in ages.all().filter(|&(_, end)| end <= durable) {
                table.insert(t, end).map_err(|e| self.index_error(e))?;
            }
        }
        txn.commit().map_err(|e| self.index_error(e))?;
        ages.moved = false;
        ages.unsaved.clear();
        Ok(())
    }

    /// Whether the store holds the block, for a replication peer that will
    /// not send it because of the answer: as [`LogStore::has`], but a block
    /// older than the grace period is copied to the end of the log first,
    /// so that no collection within the grace period sweeps it while the
    /// name that needs it is on its way.
    pub fn claim(&self, score: &Score, wire_type: u8) -> Result<bool, StoreError> {
        if score.is_zero() {
            return Ok(true);
        }
        let k = key(score, wire_type);
        let Some(loc) = self.location(&k)? else {
            return Ok(false);
        };
        if loc.offset >= self.refresh_horizon() {
            return Ok(true);
        }
        let ty = BlockType::from_wire(wire_type).unwrap_or(BlockType::DATA);
        let Some(data) = self.read(score, ty)? else {
            return Ok(false);
        };
        let mut w = self.lock_writer();
        // Copied by someone else meanwhile, or swept: decide again.
        match self.current_location(&w, &k)? {
            Some(now) if now.offset == loc.offset => {
                self.append_record(&mut w, wire_type, score, &data, Some(now))?;
                Ok(true)
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Where the block's newest record is: pending, else indexed.
    fn location(&self, k: &Key) -> Result<Option<Location>, StoreError> {
        let w = self.lock_writer();
        self.current_location(&w, k)
    }

    /// Appends a record for a block that is new, or held but old, and
    /// indexes it there.
    fn append_record(
        &self,
        w: &mut Writer,
        wire: u8,
        score: &Score,
        data: &[u8],
        superseding: Option<Location>,
    ) -> Result<(), StoreError> {
        if w.buf.len() >= WRITE_BUFFER {
            self.flush_buffer(w)?;
        }
        let offset = w.end;
        record::append(&mut w.buf, wire, score, data);
        w.end += (HEADER_LEN + data.len()) as u64;
        let replaced = w.pending.insert(
            key(score, wire),
            Location {
                offset,
                len: data.len() as u32,
            },
        );
        if let Some(old) = replaced.or(superseding) {
            w.superseded.push(old.offset);
        }
        if w.pending.len() >= INDEX_BATCH_BLOCKS || w.end - w.indexed_end >= INDEX_BATCH_BYTES {
            // The block is in the buffer and readable; a failed commit marks
            // the store failed and the next write reports it.
            if let Err(e) = self.commit_index(w) {
                tracing::error!(error = %e, "committing the venti index failed");
            }
        }
        Ok(())
    }

    fn current_location(&self, w: &Writer, k: &Key) -> Result<Option<Location>, StoreError> {
        match w.pending.get(k) {
            Some(loc) => Ok(Some(*loc)),
            None => self.indexed_location(k),
        }
    }

    /// Writes the buffered records to the file. On failure (a full disk, say)
    /// the partial write is cut off and the records stay buffered.
    fn flush_buffer(&self, w: &mut Writer) -> Result<(), StoreError> {
        if w.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = w.file.write_all_at(&w.buf, w.buf_start) {
            let _ = w.file.set_len(w.buf_start);
            return Err(StoreError::io(
                format!("writing {}", self.log_path().display()),
                e,
            ));
        }
        w.buf_start += w.buf.len() as u64;
        w.buf.clear();
        Ok(())
    }

    fn sync_log(&self, w: &mut Writer) -> Result<(), StoreError> {
        if let Some(why) = &w.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        self.flush_buffer(w)?;
        if let Err(e) = w.file.sync_data() {
            return Err(self.fsync_failed(w, e));
        }
        let end = w.end;
        self.mark_durable(w, end)
    }

    /// After a failed fsync Linux may have dropped the dirty pages, and a
    /// later fsync can report success: never trust the log again.
    fn fsync_failed(&self, w: &mut Writer, e: io::Error) -> StoreError {
        let e = StoreError::io(format!("syncing {}", self.log_path().display()), e);
        w.failed = Some(e.to_string());
        e
    }

    /// An fsync that covered the log up to `target` returned: publishes the
    /// new durable end, and appends a sync marker if nothing was written
    /// past `target` meanwhile (a marker claims everything before it).
    fn mark_durable(&self, w: &mut Writer, target: u64) -> Result<(), StoreError> {
        if target > w.durable_end {
            w.durable_end = target;
            self.durable.send_replace(target);
            // A clock step seen here moves the marks (saved at the next
            // look at the marks, outside the writer's lock).
            let mut ages = self.lock_ages();
            let now = ages::unix_now();
            ages.watch_clock(now, ages::boot_now());
            ages.note(now, target);
        }
        if w.end == target && w.end > w.marked_end {
            // Only now, with the data durable, may a marker say it is.
            let at = w.end;
            record::append_sync_marker(&mut w.buf, &self.salt, at);
            w.end += record::SYNC_MARKER_LEN as u64;
            w.marked_end = w.end;
            // Written at once but not fsynced: if it is lost, nothing is
            // claimed that was not so; the next sync makes it durable.
            self.flush_buffer(w)?;
        }
        Ok(())
    }

    /// Moves the pending entries into the index, after syncing the log so the
    /// index never names a record that a crash could lose.
    fn commit_index(&self, w: &mut Writer) -> Result<(), StoreError> {
        self.sync_log(w)?;
        // The marker that sync just appended may not be on disk yet; index
        // only what the fsync covered.
        let covered = w.durable_end;
        if w.indexed_end == covered {
            return Ok(());
        }
        let result = (|| {
            let mut entries: Vec<_> = w.pending.iter().collect();
            entries.sort_unstable_by_key(|(k, _)| **k);
            let txn = self.index.begin_write().map_err(|e| self.index_error(e))?;
            {
                let mut table = txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
                for (k, loc) in entries {
                    table
                        .insert(k, (loc.offset, loc.len))
                        .map_err(|e| self.index_error(e))?;
                }
                let mut meta = txn.open_table(META).map_err(|e| self.index_error(e))?;
                meta.insert(INDEXED_END, covered)
                    .map_err(|e| self.index_error(e))?;
                let mut superseded = txn
                    .open_table(SUPERSEDED)
                    .map_err(|e| self.index_error(e))?;
                for offset in &w.superseded {
                    superseded
                        .insert(offset, ())
                        .map_err(|e| self.index_error(e))?;
                }
                let mut ages = txn.open_table(AGES).map_err(|e| self.index_error(e))?;
                let (unsaved, grace) = {
                    let mut a = self.lock_ages();
                    (std::mem::take(&mut a.unsaved), a.grace())
                };
                for (t, end) in unsaved {
                    // Only marks the index covers: a mark past it would
                    // outlive a crash that lost what it claims.
                    if end <= covered {
                        ages.insert(t, end).map_err(|e| self.index_error(e))?;
                    }
                }
                // Marks far older than the grace period are never a
                // horizon again, but the newest of them (an idle store's
                // last word on its records' age).
                let cutoff = ages::unix_now().saturating_sub(4 * grace.as_secs().max(1));
                let newest_old = ages
                    .range(..cutoff)
                    .map_err(|e| self.index_error(e))?
                    .next_back()
                    .transpose()
                    .map_err(|e| self.index_error(e))?
                    .map(|(t, _)| t.value());
                if let Some(keep) = newest_old {
                    ages.retain_in(..keep, |_, _| false)
                        .map_err(|e| self.index_error(e))?;
                }
            }
            txn.commit().map_err(|e| self.index_error(e))
        })();
        match result {
            Ok(()) => {
                w.pending.clear();
                w.superseded.clear();
                w.indexed_end = covered;
                Ok(())
            }
            Err(e) => {
                w.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn indexed_location(&self, k: &Key) -> Result<Option<Location>, StoreError> {
        let txn = self.index.begin_read().map_err(|e| self.index_error(e))?;
        let table = txn.open_table(INDEX).map_err(|e| self.index_error(e))?;
        let found = table.get(k).map_err(|e| self.index_error(e))?;
        Ok(found.map(|v| {
            let (offset, len) = v.value();
            Location { offset, len }
        }))
    }

    /// Reads and verifies the record at `loc`, which the index says holds `score`.
    fn read_record(
        &self,
        score: &Score,
        ty: BlockType,
        loc: Location,
    ) -> Result<Vec<u8>, StoreError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            score: *score,
            ty,
            offset: loc.offset,
            detail: detail.into(),
        };
        let mut rec = vec![0u8; HEADER_LEN + loc.len as usize];
        match self.reader.read_exact_at(&mut rec, loc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt("record runs past the end of the log"));
            }
            Err(e) => {
                return Err(StoreError::io(
                    format!("reading {}", self.log_path().display()),
                    e,
                ));
            }
        }
        let head: [u8; HEADER_LEN] = rec[..HEADER_LEN].try_into().expect("header length");
        let header = record::parse_header(&head).map_err(corrupt)?;
        let data = &rec[HEADER_LEN..];
        if header.score != *score
            || header.wire_type != ty.to_wire()
            || header.len != loc.len as usize
        {
            return Err(corrupt("record header does not match the index"));
        }
        if !record::crc_matches(&head, &header, data) {
            return Err(corrupt("checksum mismatch"));
        }
        if Score::of(data) != *score {
            return Err(corrupt("data does not hash to its score"));
        }
        rec.drain(..HEADER_LEN);
        Ok(rec)
    }
}

impl BlockStore for LogStore {
    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        LogStore::has(self, score, ty.to_wire())
    }

    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if score.is_zero() {
            return Ok(Some(Vec::new()));
        }
        let k = key(score, ty.to_wire());
        let pending = {
            let w = self.lock_writer();
            match w.pending.get(&k) {
                Some(loc) if loc.offset >= w.buf_start => {
                    let start = (loc.offset - w.buf_start) as usize + HEADER_LEN;
                    return Ok(Some(w.buf[start..start + loc.len as usize].to_vec()));
                }
                other => other.copied(),
            }
        };
        // The index is committed before pending entries are dropped, so an
        // entry is always in one place or the other.
        let loc = match pending {
            Some(loc) => Some(loc),
            None => self.indexed_location(&k)?,
        };
        let Some(loc) = loc else {
            return Ok(None);
        };
        let read = self.read_record(score, ty, loc);
        if let Err(StoreError::Corrupt { .. }) = &read {
            // A collection may have swept the block, or a touch copied it,
            // between the lookup and the read: the index says which.
            match self.location(&k)? {
                Some(moved) if moved.offset != loc.offset => {
                    return self.read_record(score, ty, moved).map(Some);
                }
                None => return Ok(None),
                Some(_) => {}
            }
        }
        read.map(Some)
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.write_scored(ty, data, Score::of(data))
    }

    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        debug_assert_eq!(score, Score::of(data), "write_scored with a wrong score");
        if data.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len()));
        }
        if data.is_empty() {
            return Ok(Score::ZERO);
        }
        let wire = ty.to_wire();
        let k = key(&score, wire);
        // Held, and young enough to stay where it is (an old block written
        // again is copied forward; see [`ages`]).
        let kept = |w: &Writer, young_from: u64| -> Result<Option<(Location, bool)>, StoreError> {
            if let Some(why) = &w.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            Ok(self
                .current_location(w, &k)?
                .map(|loc| (loc, loc.offset >= young_from)))
        };
        let young_from = self.refresh_horizon();
        let held = kept(&self.lock_writer(), young_from)?;
        if held.is_some_and(|(_, young)| young) {
            return Ok(score);
        }
        // A new block is checked for a SHA-1 collision attack, outside the
        // lock (it costs five plain hashes), so that other writers go on.
        // A block already held was checked when it came, and a block that
        // carries no attack has no known colliding partner (both halves of
        // every published kind of attack carry one), so a duplicate is not
        // checked again.
        if held.is_none() && self.detect_collisions {
            Score::of_new(data)?;
        }
        let mut w = self.lock_writer();
        let old = match kept(&w, young_from)? {
            Some((_, true)) => return Ok(score),
            Some((loc, false)) => Some(loc),
            None => None,
        };
        self.append_record(&mut w, wire, &score, data, old)?;
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Write out under the lock, but wait for the disk without it, so
        // writers (a replication stream's next batch, say) go on meanwhile.
        let target = {
            let mut w = self.lock_writer();
            if let Some(why) = &w.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            self.flush_buffer(&mut w)?;
            w.end
        };
        if let Err(e) = self.reader.sync_data() {
            return Err(self.fsync_failed(&mut self.lock_writer(), e));
        }
        self.mark_durable(&mut self.lock_writer(), target)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        let mut w = self.lock_writer();
        if w.failed.is_none()
            && w.indexed_end != w.end
            && let Err(e) = self.commit_index(&mut w)
        {
            tracing::error!(error = %e, store = %self.dir.display(), "closing the venti store");
        }
    }
}

fn open_log(path: &Path) -> Result<(File, bool, [u8; SALT_LEN]), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
        .len();
    let init_err = |e| StoreError::io(format!("initialising {}", path.display()), e);
    if len == 0 {
        let salt = new_salt().map_err(init_err)?;
        let mut header = LOG_HEADER.to_vec();
        header.resize(LOG_HEADER_LEN as usize, 0);
        header[SALT_AT..SALT_AT + SALT_LEN].copy_from_slice(&salt);
        file.write_all_at(&header, 0)
            .and_then(|()| file.sync_all())
            .map_err(init_err)?;
        return Ok((file, true, salt));
    }
    let mut header = vec![0u8; LOG_HEADER_LEN as usize];
    if len < LOG_HEADER_LEN
        || file.read_exact_at(&mut header, 0).is_err()
        || !header.starts_with(LOG_HEADER)
    {
        return Err(StoreError::NotAStore(
            path.to_path_buf(),
            "the log has no colony header".into(),
        ));
    }
    let mut salt: [u8; SALT_LEN] = header[SALT_AT..SALT_AT + SALT_LEN]
        .try_into()
        .expect("salt length");
    if salt == [0; SALT_LEN] {
        // A store from before sync markers: it has none, so any salt works.
        salt = new_salt().map_err(init_err)?;
        file.write_all_at(&salt, SALT_AT as u64)
            .and_then(|()| file.sync_data())
            .map_err(init_err)?;
    }
    Ok((file, false, salt))
}

/// A random salt for a store's sync markers.
fn new_salt() -> io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// Takes an exclusive `flock` on `dir/LOCK`.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    // A lock can be held for a moment by a process that is going away: one
    // just killed, or a child forked (by any thread) between its fork and its
    // exec, which holds every descriptor for that instant. Wait a little
    // before calling the store busy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(StoreError::io(format!("locking {}", path.display()), err));
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Busy(dir.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Makes a newly created file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// Reads records from `from` to `len`, stopping at the first that is torn or
/// corrupt. Returns the records' index entries and the offset where the valid
/// log ends.
fn scan_log(file: &File, from: u64, len: u64) -> io::Result<(HashMap<Key, Location>, u64)> {
    let mut entries = HashMap::new();
    let mut reader = BufReader::with_capacity(1 << 20, ReadAt { file, pos: from });
    let mut offset = from;
    let mut head = [0u8; HEADER_LEN];
    let mut data = vec![0u8; MAX_BLOCK_SIZE];
    while offset + HEADER_LEN as u64 <= len {
        reader.read_exact(&mut head)?;
        let Ok(header) = record::parse_header(&head) else {
            break;
        };
        if header.wire_type == record::SKIP_TYPE {
            // What a collection left: dead records, perhaps a hole.
            let Some(skipped) = record::span(&head, &header) else {
                break;
            };
            let next = offset + HEADER_LEN as u64 + skipped;
            if next > len {
                break;
            }
            reader.seek_relative(skipped as i64)?;
            offset = next;
            continue;
        }
        if header.len > MAX_BLOCK_SIZE || offset + (HEADER_LEN + header.len) as u64 > len {
            break;
        }
        reader.read_exact(&mut data[..header.len])?;
        if !record::crc_matches(&head, &header, &data[..header.len]) {
            break;
        }
        if header.wire_type == record::SYNC_MARKER_TYPE {
            // Whole and checksummed; it names no block. (Whether it is one of
            // ours only matters when damage precedes it.)
            offset += (HEADER_LEN + header.len) as u64;
            continue;
        }
        entries.insert(
            key(&header.score, header.wire_type),
            Location {
                offset,
                len: header.len as u32,
            },
        );
        offset += (HEADER_LEN + header.len) as u64;
    }
    Ok((entries, offset))
}

/// Sequential reads through positioned reads, so the scan needs no seek state.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl io::Seek for ReadAt<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            io::SeekFrom::Start(at) => at,
            io::SeekFrom::Current(by) => self.pos.checked_add_signed(by).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            io::SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a log reader seeks from its start",
                ));
            }
        };
        Ok(self.pos)
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The offset of the first genuine sync marker of this store after `from`
/// (below `len`): a whole, checksummed marker record that holds `salt` and
/// sits at the offset it names.
fn next_sync_marker(file: &File, salt: &[u8; SALT_LEN], from: u64, len: u64) -> Option<u64> {
    const CHUNK: usize = 1 << 20;
    let want = record::sync_marker_prefix();
    let mut chunk = vec![0u8; CHUNK + record::SYNC_MARKER_LEN];
    let mut pos = from + 1;
    while pos < len {
        let n = ((len - pos) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], pos).ok()?;
        let mut i = 0;
        while i + record::SYNC_MARKER_LEN <= n {
            if chunk[i..i + want.len()] == want {
                let at = pos + i as u64;
                if record::is_sync_marker(&chunk[i..i + record::SYNC_MARKER_LEN], salt, at) {
                    return Some(at);
                }
            }
            i += 1;
        }
        if n < chunk.len() {
            break;
        }
        // Overlap so a marker that straddles two chunks is still seen.
        pos += (n - record::SYNC_MARKER_LEN) as u64 + 1;
    }
    None
}

/// What can be said of the record at `offset`: its score and type if its
/// header is readable.
fn describe_record(file: &File, offset: u64) -> String {
    let mut head = [0u8; HEADER_LEN];
    if file.read_exact_at(&mut head, offset).is_err() {
        return "a record header cut short".into();
    }
    match record::parse_header(&head) {
        Ok(h) => format!(
            "the record of block {} (wire type {}, {} bytes) fails its checksum",
            h.score, h.wire_type, h.len
        ),
        Err(why) => format!("unreadable record header: {why}"),
    }
}
