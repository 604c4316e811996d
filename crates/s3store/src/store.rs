//! [`PackStore`]: venti's [`BlockStore`] on a bucket of packs.
//!
//! Writes fill a pack in memory; a full pack is sent (its data, then its
//! index) while the next fills, with at most [`MAX_UNSENT`] packs waiting,
//! so memory stays bounded whatever the ingest. `sync` sends the partial
//! pack and returns only when every block written before it is in the
//! bucket: venti's durability promise. A pack that fails to go is kept,
//! readable, and tried again at the next sync; a write that finds every
//! slot held by packs that keep failing is an error.
//!
//! Reads: a block still unsent comes from memory; a block in the index is
//! read with one ranged GET of the aligned stretch of its pack around it
//! ([`READ_SPAN`], one Garage block by default), kept for a while so the
//! blocks written next to it (the rest of a file, its directory's
//! neighbours) cost no request; every block is checked against its score
//! (damage is named, never served). A block the index does not know makes the store look
//! for new indexes in the bucket (at most once a second), so another
//! writer's blocks are found. Warm reads are the cache's job, in front
//! (see [`crate::open`]).
//!
//! Several writers share a bucket without any lock or conditional write
//! (Garage ignores `If-None-Match`): each process writes under a writer
//! name of its own, made fresh at every open, so no two ever write one
//! key. A block two writers both stored is harmless: reads use the last
//! place learnt, the others are kept (a collection may delete that pack)
//! and counted as duplicates.
//!
//! The local directory keeps a copy of every index merged, so a restart
//! learns the bucket with one LIST. Every listing also says how old each
//! pack is (by the bucket's clock) and which were deleted: a storage node
//! collects the bucket's garbage ([`collect`]) while others write and read.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use venti::{BlockStore, BlockType, MAX_BLOCK_SIZE, Score, StoreError};

use crate::config::Settings;
use crate::pack::{self, Entry, PackBuilder};

mod collect;
mod places;
pub use collect::{Candidates, REWRITE_WHEN_DEAD, Swept};
use places::Places;

/// Sealed packs that may wait to be sent before a write waits. Eight in
/// flight measured no faster ingest into Garage here than four
/// (`colony bench s3`), so four: 64 MiB held at most.
pub const MAX_UNSENT: usize = 4;
/// A cold read fetches this aligned stretch of a pack (Garage's default
/// block: it reads a whole block to serve any range of one).
pub const READ_SPAN: u64 = 1 << 20;
/// Stretches of packs kept in memory.
const SPANS_KEPT: usize = 64;
/// Ranged GETs in flight at once when many blocks are asked for together
/// ([`BlockStore::read_each`]: a root's working set fetched ahead).
pub const READS_AT_ONCE: usize = 16;
/// The least time between two looks for other writers' indexes.
const REFRESH_GAP: Duration = Duration::from_secs(1);
/// The grace period unless the node sets one (as venti's log store).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Where a collecting node publishes its grace period, under the prefix.
const GRACE_OBJECT: &str = "gc-grace";
/// How often a writer reads it again.
const GRACE_READ_EVERY: Duration = Duration::from_secs(60);

/// Where a block is in the bucket.
#[derive(Clone, Copy)]
struct Loc {
    /// Into [`State::packs`].
    pack: u32,
    ty: u8,
    offset: u32,
    len: u32,
}

/// How a block is held, for a write of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Unsent, or in a pack younger than the grace period.
    Fresh,
    /// Only in a pack older than the grace period (or of unknown age).
    Old,
    No,
}

/// A pack sealed but not yet in the bucket.
struct Unsent {
    seq: u64,
    bytes: Bytes,
    entries: Vec<Entry>,
    sending: bool,
    /// Why its last try failed.
    failed: Option<String>,
}

/// A pack the index knows.
struct Pack {
    key: String,
    index_key: String,
    /// Its length, as far as its entries say.
    len: u64,
    /// When its index went into the bucket, by the bucket's clock as its
    /// listing says (this writer's own: by this host's clock); unknown
    /// until the bucket is listed.
    written: Option<SystemTime>,
    /// Deleted by a collection: its entries are gone from the index.
    gone: bool,
}

#[derive(Default)]
struct State {
    index: Places,
    /// By [`Loc::pack`].
    packs: Vec<Pack>,
    /// Index keys merged (from the bucket or the local copies), and their
    /// packs.
    merged: HashMap<String, u32>,
    filling: PackBuilder,
    /// Blocks not yet in the bucket: the pack (its seq) and the entry.
    unsent_blocks: HashMap<Score, (u64, Entry)>,
    unsent: Vec<Unsent>,
    next_seq: u64,
}

/// What the store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks and packs the index knows (this writer's and others').
    pub blocks: u64,
    pub packs: u64,
    /// Blocks written that were already stored (or unsent) here.
    pub deduplicated: u64,
    /// Blocks found in more than one pack while merging indexes.
    pub duplicates: u64,
    /// Requests: ranged GETs (a stretch of a pack around a block read),
    /// GETs of whole objects (indexes, packs being indexed again), PUTs
    /// and LISTs.
    pub block_gets: u64,
    pub object_gets: u64,
    pub puts: u64,
    pub lists: u64,
    pub put_bytes: u64,
    pub get_bytes: u64,
    /// Index objects that were damaged (their packs were indexed again).
    pub damaged_indexes: u64,
    /// Blocks written again whose pack was older than the grace period,
    /// so were stored again in a new pack (see [`PackStore::set_grace`]).
    pub copied_forward: u64,
    /// Packs found deleted by a collection (their entries forgotten).
    pub packs_forgotten: u64,
}

#[derive(Default)]
struct Counters {
    deduplicated: AtomicU64,
    duplicates: AtomicU64,
    block_gets: AtomicU64,
    object_gets: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
    put_bytes: AtomicU64,
    get_bytes: AtomicU64,
    damaged_indexes: AtomicU64,
    copied_forward: AtomicU64,
    packs_forgotten: AtomicU64,
}

struct Inner {
    s3: Arc<dyn ObjectStore>,
    /// `s3://BUCKET/PREFIX`, for messages.
    name: String,
    prefix: String,
    writer: String,
    local: PathBuf,
    pack_bytes: usize,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Signalled when a send ends.
    sent: Condvar,
    last_refresh: Mutex<Option<Instant>>,
    /// Held by the one refresh that runs at a time.
    refreshing: Mutex<()>,
    /// The grace period, in seconds (see [`PackStore::set_grace`]).
    grace_secs: AtomicU64,
    /// The grace period the bucket's collector published, in seconds
    /// (`PREFIX/gc-grace`; `u64::MAX` if none), and when it was read.
    bucket_grace_secs: AtomicU64,
    grace_read: Mutex<Option<Instant>>,
    /// A longer grace period this node published before, and until when
    /// its collections keep to it.
    lowered: Mutex<Option<(Duration, Instant)>>,
    spans: Mutex<Spans>,
    /// Signalled when a span's fetch ends.
    span_landed: Condvar,
    counters: Counters,
    /// Held for the store's life: one process per local directory.
    _lock: File,
}

/// Stretches of packs read lately, and those being read.
#[derive(Default)]
struct Spans {
    /// (pack, start) → bytes, oldest first.
    kept: std::collections::VecDeque<((u32, u64), Bytes)>,
    fetching: HashSet<(u32, u64)>,
}

/// A block store on a bucket; see the module's text.
pub struct PackStore {
    inner: Arc<Inner>,
}

fn remote(context: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("{context}: {e}"))
}

/// A writer name no other process has used: host, pid, and random bits.
fn writer_name() -> String {
    let mut random = [0u8; 8];
    // SAFETY: getrandom fills the buffer we own.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if got != random.len() as isize {
        // Never the only thing that keeps names apart: the pid and the
        // time are in it too.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        random = t.to_be_bytes();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl PackStore {
    /// Opens the bucket: checks it is there and the credentials work,
    /// learns its blocks (from the local copies, then the bucket).
    pub fn open(settings: &Settings) -> Result<PackStore, StoreError> {
        // Only an https endpoint uses it; the ring provider colony uses
        // everywhere else.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let name = settings.url.to_string();
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&settings.url.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_virtual_hosted_style_request(false)
            // Blocks carry their own checks (their scores).
            .with_unsigned_payload(true)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60))
                    .with_pool_max_idle_per_host(64),
            );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token);
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(
            builder
                .build()
                .map_err(|e| remote(format!("opening {name}"), e))?,
        );
        std::fs::create_dir_all(settings.cache.join("index")).map_err(|e| StoreError::Io {
            context: format!("creating {}", settings.cache.display()),
            err: e,
        })?;
        let lock = lock(&settings.cache)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "starting the object store's runtime".into(),
                err: e,
            })?;
        let inner = Arc::new(Inner {
            s3,
            name,
            prefix: settings.url.prefix.clone(),
            writer: writer_name(),
            local: settings.cache.clone(),
            pack_bytes: settings.pack_bytes,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            state: Mutex::default(),
            sent: Condvar::new(),
            last_refresh: Mutex::new(None),
            refreshing: Mutex::new(()),
            grace_secs: AtomicU64::new(DEFAULT_GRACE.as_secs()),
            bucket_grace_secs: AtomicU64::new(u64::MAX),
            grace_read: Mutex::new(None),
            lowered: Mutex::new(None),
            spans: Mutex::default(),
            span_landed: Condvar::new(),
            counters: Counters::default(),
            _lock: lock,
        });
        let store = PackStore { inner };
        store.inner.check_bucket(settings)?;
        store.inner.learn_grace()?;
        store.inner.load_local();
        store.inner.refresh()?;
        Ok(store)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let state = self.inner.state();
        Stats {
            blocks: state.index.len() as u64,
            packs: state.packs.iter().filter(|p| !p.gone).count() as u64,
            deduplicated: c.deduplicated.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            block_gets: c.block_gets.load(Ordering::Relaxed),
            object_gets: c.object_gets.load(Ordering::Relaxed),
            puts: c.puts.load(Ordering::Relaxed),
            lists: c.lists.load(Ordering::Relaxed),
            put_bytes: c.put_bytes.load(Ordering::Relaxed),
            get_bytes: c.get_bytes.load(Ordering::Relaxed),
            damaged_indexes: c.damaged_indexes.load(Ordering::Relaxed),
            copied_forward: c.copied_forward.load(Ordering::Relaxed),
            packs_forgotten: c.packs_forgotten.load(Ordering::Relaxed),
        }
    }

    /// This process's writer name (its packs are under it).
    pub fn writer(&self) -> &str {
        &self.inner.writer
    }

    /// Forgets the stretches of packs read lately (a benchmark's cold
    /// start).
    pub fn forget_reads(&self) {
        self.inner
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kept
            .clear();
    }

    /// Looks for other writers' new indexes now.
    pub fn refresh(&self) -> Result<(), StoreError> {
        self.inner.refresh()
    }

    /// The object store's own rate, in bytes a second, for `payloads`
    /// sent as objects `parallel` at once by this client: with payloads of
    /// a pack's size, the ceiling any ingest through it can reach
    /// (`colony bench s3`). The objects go under `PREFIX/probe/WRITER/`
    /// and are deleted after.
    pub fn measure_put_rate(
        &self,
        payloads: Vec<Bytes>,
        parallel: usize,
    ) -> Result<f64, StoreError> {
        let inner = self.inner.clone();
        let total: usize = payloads.iter().map(Bytes::len).sum();
        let keys: Vec<Key> = (0..payloads.len())
            .map(|i| inner.key(&format!("probe/{}/{i:08}", inner.writer)))
            .collect();
        let (s3, put_keys) = (inner.s3.clone(), keys.clone());
        let started = Instant::now();
        let sent = self.inner.wait(async move {
            let puts = futures_util::stream::iter(put_keys.into_iter().zip(payloads))
                .map(|(key, bytes)| {
                    let s3 = s3.clone();
                    async move { s3.put(&key, PutPayload::from(bytes)).await }
                })
                .buffer_unordered(parallel.max(1));
            puts.collect::<Vec<_>>().await
        })?;
        let secs = started.elapsed().as_secs_f64();
        let s3 = inner.s3.clone();
        let _ = self.inner.wait(async move {
            for key in keys {
                let _ = s3.delete(&key).await;
            }
        });
        for r in sent {
            r.map_err(|e| remote(format!("a probe PUT to {}", inner.name), e))?;
        }
        Ok(total as f64 / secs)
    }
}

/// One process per local directory: its copies of indexes and its cache
/// are not shared.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let file = File::create(&path).map_err(|e| StoreError::Io {
        context: format!("creating {}", path.display()),
        err: e,
    })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::Busy(dir.to_path_buf()));
    }
    Ok(file)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, rest: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rest)
        } else {
            Key::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// Runs `f` on the store's runtime and waits for it, from any thread
    /// (an async one included: it is only blocked, never nested).
    fn wait<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Remote(format!("{}: the store is closing", self.name)))
    }

    fn check_bucket(&self, settings: &Settings) -> Result<(), StoreError> {
        let s3 = self.s3.clone();
        let prefix = self.key("index");
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        let listed = self.wait(async move { s3.list_with_delimiter(Some(&prefix)).await })?;
        let Err(e) = listed else { return Ok(()) };
        Err(StoreError::Remote(bucket_problem(&e, settings, &self.name)))
    }

    /// Takes in one pack's entries, learnt from index `index_key`, unless
    /// that index was merged already.
    fn merge(
        &self,
        state: &mut State,
        index_key: String,
        pack_key: String,
        entries: &[Entry],
        written: Option<SystemTime>,
    ) {
        if state.merged.contains_key(&index_key) {
            return;
        }
        let pack = state.packs.len() as u32;
        let len = entries
            .iter()
            .map(|e| e.offset as u64 + e.len as u64)
            .max()
            .unwrap_or(0);
        state.merged.insert(index_key.clone(), pack);
        state.packs.push(Pack {
            key: pack_key,
            index_key,
            len,
            written,
            gone: false,
        });
        for e in entries {
            let loc = Loc {
                pack,
                ty: e.ty,
                offset: e.offset,
                len: e.len,
            };
            if state.index.insert(e.score, loc) {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn local_copy(&self, index_key: &str) -> PathBuf {
        self.local.join("index").join(index_key.replace('/', "%"))
    }

    /// The indexes an earlier run merged. A damaged copy is removed: the
    /// bucket's is fetched again.
    fn load_local(&self) {
        let Ok(dir) = std::fs::read_dir(self.local.join("index")) else {
            return;
        };
        let mut state = self.state();
        for entry in dir.flatten() {
            let Some(index_key) = entry.file_name().to_str().map(|n| n.replace('%', "/")) else {
                continue;
            };
            // A cache directory that served another prefix keeps its copies
            // too: they are not this store's.
            if !index_key.starts_with(&format!("{}/", self.key("index"))) {
                continue;
            }
            let parsed = std::fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| pack::parse_index(&b));
            match parsed {
                Ok(entries) => {
                    let Some(pack_key) = pack_of(&index_key) else {
                        continue;
                    };
                    // How old it is, the bucket's next listing says.
                    self.merge(&mut state, index_key, pack_key, &entries, None);
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "a local index copy is damaged; fetching it again");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// A look at the bucket that starts now (see [`Inner::refresh_after`]).
    fn refresh(&self) -> Result<(), StoreError> {
        self.refresh_after(Instant::now())
    }

    /// A look at the bucket that started after `asked` and succeeded, this
    /// one or another thread's: one runs at a time, and many readers that
    /// meet one deleted pack make one LIST.
    fn refresh_after(&self, asked: Instant) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = self
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t > asked);
        if fresh {
            return Ok(());
        }
        let started = Instant::now();
        self.look_at_the_bucket()?;
        *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(())
    }

    /// Merges the bucket's indexes not merged yet, learns how old every
    /// pack is, and forgets the packs a collection deleted.
    fn look_at_the_bucket(&self) -> Result<(), StoreError> {
        self.learn_grace_if_due()?;
        // An index listed, then found deleted, means a collection ran
        // meanwhile: the copies of that pack's live blocks went in before
        // it was deleted, but perhaps after this listing. So list again,
        // until a look meets no deletion (a few times at most: collections
        // delete in batches).
        for _ in 0..8 {
            if !self.look_once()? {
                return Ok(());
            }
        }
        Err(StoreError::Remote(format!(
            "{}: indexes kept being deleted while being read; is a collection running?",
            self.name
        )))
    }

    /// One look at the bucket's indexes; true if one it listed was gone by
    /// the time it was read.
    fn look_once(&self) -> Result<bool, StoreError> {
        let mut met_a_deletion = false;
        let listed: HashMap<String, SystemTime> = self
            .list("index")?
            .into_iter()
            .filter(|(k, _)| k.ends_with(".idx"))
            .collect();
        let (new, missing): (Vec<String>, Vec<String>) = {
            let mut state = self.state();
            for (key, at) in &listed {
                if let Some(&p) = state.merged.get(key) {
                    state.packs[p as usize].written = Some(*at);
                }
            }
            let new = listed
                .keys()
                .filter(|k| !state.merged.contains_key(*k))
                .cloned()
                .collect();
            let missing = state
                .merged
                .iter()
                .filter(|(k, p)| !listed.contains_key(*k) && !state.packs[**p as usize].gone)
                .map(|(k, _)| k.clone())
                .collect();
            (new, missing)
        };
        for index_key in new {
            let Some(pack_key) = pack_of(&index_key) else {
                continue;
            };
            // Listed, then deleted by a collection before this look.
            let Some(bytes) = self.get_if_there(&index_key)? else {
                met_a_deletion = true;
                continue;
            };
            let entries = match pack::parse_index(&bytes) {
                Ok(entries) => {
                    let _ = std::fs::write(self.local_copy(&index_key), &bytes);
                    entries
                }
                Err(why) => {
                    // Its pack says what it holds: index it again.
                    self.counters
                        .damaged_indexes
                        .fetch_add(1, Ordering::Relaxed);
                    let Some(pack) = self.get_if_there(&pack_key)? else {
                        met_a_deletion = true;
                        continue;
                    };
                    let (entries, damage) = pack::scan_pack(&pack);
                    tracing::warn!(index = %index_key, error = %why, blocks = entries.len(),
                        pack_damage = damage.as_deref().unwrap_or("none"),
                        "a damaged index in the bucket; its pack was indexed again");
                    entries
                }
            };
            let written = listed.get(&index_key).copied();
            self.merge(&mut self.state(), index_key, pack_key, &entries, written);
        }
        // An index merged here but not listed: deleted by a collection,
        // or (this writer's own, just sent) not listed yet. Only a look at
        // the object itself tells.
        let mut gone = Vec::new();
        for index_key in missing {
            if !self.exists(&index_key)? {
                gone.extend(self.state().merged.get(&index_key));
            }
        }
        self.forget_packs(&mut self.state(), &gone);
        Ok(met_a_deletion)
    }

    /// The grace period this writer keeps to: its own, or the bucket's
    /// collector's if shorter (else that collector could take a pack this
    /// writer still counts on).
    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.grace_secs
                .load(Ordering::Relaxed)
                .min(self.bucket_grace_secs.load(Ordering::Relaxed)),
        )
    }

    /// Reads the collector's grace period again if a minute has passed
    /// (a writer that only writes learns a change too).
    fn learn_grace_if_due(&self) -> Result<(), StoreError> {
        let due = self
            .grace_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= GRACE_READ_EVERY);
        if due { self.learn_grace() } else { Ok(()) }
    }

    /// Reads the grace period the bucket's collector published.
    fn learn_grace(&self) -> Result<(), StoreError> {
        *self.grace_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let Some(bytes) = self.get_if_there(self.key(GRACE_OBJECT).as_ref())? else {
            return Ok(());
        };
        match std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            Some(secs) => self.bucket_grace_secs.store(secs, Ordering::Relaxed),
            None => {
                tracing::warn!(bucket = %self.name, "the bucket's {GRACE_OBJECT} is not a number of seconds; ignored")
            }
        }
        Ok(())
    }

    /// Every object under `PREFIX/dir`, with when it was written (by the
    /// bucket's clock).
    fn list(&self, dir: &str) -> Result<Vec<(String, SystemTime)>, StoreError> {
        let s3 = self.s3.clone();
        let prefix = self.key(dir);
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        self.wait(async move {
            let mut keys = Vec::new();
            let mut listing = s3.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                keys.push((meta.location.to_string(), meta.last_modified.into()));
            }
            Ok::<_, object_store::Error>(keys)
        })?
        .map_err(|e| remote(format!("listing {dir} in {}", self.name), e))
    }

    /// Whether object `key` is in the bucket.
    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.written_at(key)?.is_some())
    }

    /// When object `key` went in, by the bucket's clock; `None` if it is
    /// not there.
    fn written_at(&self, key: &str) -> Result<Option<SystemTime>, StoreError> {
        let s3 = self.s3.clone();
        let path = Key::from(key);
        self.counters.object_gets.fetch_add(1, Ordering::Relaxed);
        match self.wait(async move { s3.head(&path).await })? {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(format!("looking for {key} in {}", self.name), e)),
        }
    }

    /// Forgets packs that are no longer in the bucket: their entries (a
    /// block copied elsewhere points there already), their local index
    /// copies.
    fn forget_packs(&self, state: &mut State, packs: &[u32]) {
        let mut forgotten = HashSet::new();
        for &p in packs {
            let pack = &mut state.packs[p as usize];
            if !pack.gone {
                pack.gone = true;
                let _ = std::fs::remove_file(self.local_copy(&pack.index_key));
                forgotten.insert(p);
            }
        }
        if forgotten.is_empty() {
            return;
        }
        state.index.forget(&forgotten);
        self.counters
            .packs_forgotten
            .fetch_add(forgotten.len() as u64, Ordering::Relaxed);
    }

    /// Bytes `start..end` of pack `pack` with the aligned stretch around
    /// them: (where the bytes returned start, the bytes), or `None` if the
    /// pack is no longer in the bucket (a collection deleted it). One GET
    /// for a stretch no one has read lately; readers of one stretch at
    /// once wait for a single GET.
    fn span(
        &self,
        pack: u32,
        key: &str,
        start: u64,
        end: u64,
        pack_len: u64,
    ) -> Result<Option<(u64, Bytes)>, StoreError> {
        let from = start / READ_SPAN * READ_SPAN;
        // A block across the stretch's end is read whole with it.
        let to = (from + READ_SPAN).min(pack_len).max(end);
        let id = (pack, from);
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((_, b)) = spans
                .kept
                .iter()
                .find(|(k, b)| *k == id && from + b.len() as u64 >= end)
            {
                return Ok(Some((from, b.clone())));
            }
            if !spans.fetching.contains(&id) {
                break;
            }
            spans = self
                .span_landed
                .wait(spans)
                .unwrap_or_else(|p| p.into_inner());
        }
        spans.fetching.insert(id);
        drop(spans);
        let s3 = self.s3.clone();
        let path = Key::from(key);
        self.counters.block_gets.fetch_add(1, Ordering::Relaxed);
        let got = self
            .wait(async move { s3.get_range(&path, from..to).await })
            .and_then(|r| match r {
                Ok(bytes) => Ok(Some(bytes)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(remote(
                    format!("reading {key} at {from}..{to} in {}", self.name),
                    e,
                )),
            });
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans.fetching.remove(&id);
        if let Ok(Some(bytes)) = &got {
            self.counters
                .get_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            spans.kept.retain(|(k, _)| *k != id);
            spans.kept.push_back((id, bytes.clone()));
            while spans.kept.len() > SPANS_KEPT {
                spans.kept.pop_front();
            }
        }
        drop(spans);
        self.span_landed.notify_all();
        Ok(got?.map(|bytes| (from, bytes)))
    }

    /// A whole object, or `None` if it is not in the bucket.
    fn get_if_there(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let s3 = self.s3.clone();
        let path = Key::from(key);
        self.counters.object_gets.fetch_add(1, Ordering::Relaxed);
        let got = match self.wait(async move { s3.get(&path).await?.bytes().await })? {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote(format!("reading {key} in {}", self.name), e)),
        };
        self.counters
            .get_bytes
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        Ok(Some(got))
    }

    /// Seals the pack being filled (if it holds anything) and starts it.
    fn seal(self: &Arc<Self>, state: &mut State) {
        if state.filling.is_empty() {
            return;
        }
        let filled = std::mem::take(&mut state.filling);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unsent.push(Unsent {
            seq,
            bytes: Bytes::from(filled.bytes),
            entries: filled.entries,
            sending: false,
            failed: None,
        });
        self.send_waiting(state);
    }

    /// Starts every unsent pack not being sent (new, or failed before).
    fn send_waiting(self: &Arc<Self>, state: &mut State) {
        for u in state.unsent.iter_mut().filter(|u| !u.sending) {
            u.sending = true;
            let (me, seq, bytes) = (self.clone(), u.seq, u.bytes.clone());
            let index = Bytes::from(pack::encode_index(&u.entries));
            let (pack_key, index_key) = (
                self.key(&format!("packs/{}/{seq:08}.pack", self.writer)),
                self.key(&format!("index/{}/{seq:08}.idx", self.writer)),
            );
            self.handle.spawn(async move {
                let (n, m) = (bytes.len() as u64, index.len() as u64);
                // The pack first: an index never names what is not there.
                let result = async {
                    me.s3.put(&pack_key, PutPayload::from(bytes)).await?;
                    me.s3.put(&index_key, PutPayload::from(index.clone())).await?;
                    Ok::<_, object_store::Error>(())
                }
                .await;
                me.counters.puts.fetch_add(2, Ordering::Relaxed);
                let mut state = me.state();
                match result {
                    Ok(()) => {
                        me.counters.put_bytes.fetch_add(n + m, Ordering::Relaxed);
                        let _ = std::fs::write(me.local_copy(index_key.as_ref()), &index);
                        if let Some(at) = state.unsent.iter().position(|u| u.seq == seq) {
                            let done = state.unsent.remove(at);
                            for e in &done.entries {
                                state.unsent_blocks.remove(&e.score);
                            }
                            me.merge(
                                &mut state,
                                index_key.to_string(),
                                pack_key.to_string(),
                                &done.entries,
                                Some(SystemTime::now()),
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pack = %pack_key, error = %e, "sending a pack failed; it is kept and tried again");
                        if let Some(u) = state.unsent.iter_mut().find(|u| u.seq == seq) {
                            u.sending = false;
                            u.failed = Some(format!("sending {pack_key} to {}: {e}", me.name));
                        }
                    }
                }
                drop(state);
                me.sent.notify_all();
            });
        }
    }

    /// Waits while `busy` holds and some pack is being sent.
    fn wait_sends<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        busy: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while busy(&state) && state.unsent.iter().any(|u| u.sending) {
            state = self.sent.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state
    }

    /// Whether the store holds `score`, and in a pack young enough that a
    /// collection leaves it alone for a grace period more.
    fn held(&self, state: &State, score: &Score) -> Held {
        if state.unsent_blocks.contains_key(score) {
            return Held::Fresh;
        }
        let Some(l) = state.index.get(score) else {
            return Held::No;
        };
        // Half the grace period: a pack's age is by the bucket's clock, and
        // this host's may be behind it by as much. A collection takes only
        // packs twice the grace period old, so a block written again in a
        // pack younger than that stays a grace period more.
        let young_for = self.grace() / 2;
        // A pack not yet listed is taken for old: a copy too many costs a
        // block, a copy too few may cost an archive.
        let young = state.packs[l.pack as usize]
            .written
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < young_for);
        if young { Held::Fresh } else { Held::Old }
    }

    /// Puts a block into the pack being filled (sealing and sending a full
    /// one first, waiting while too many are unsent), whether or not the
    /// bucket holds it already.
    fn store_new(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        score: Score,
        ty: u8,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if state.filling.bytes.len() + data.len() + pack::RECORD_HEADER > self.pack_bytes {
            // A full pack goes; with too many unsent, wait for sends (and
            // try failed ones once more) before taking more.
            if state.unsent.len() >= MAX_UNSENT {
                state = self.wait_sends(state, |s| s.unsent.len() >= MAX_UNSENT);
                if state.unsent.len() >= MAX_UNSENT {
                    self.send_waiting(&mut state);
                    state = self.wait_sends(state, |s| s.unsent.len() >= MAX_UNSENT);
                    if state.unsent.len() >= MAX_UNSENT {
                        let why = Inner::failure(&state).unwrap_or_default();
                        return Err(StoreError::Remote(format!(
                            "{MAX_UNSENT} packs could not be sent, so no more blocks are taken: {why}"
                        )));
                    }
                }
            }
            self.seal(&mut state);
        }
        let seq = state.next_seq;
        let entry = state.filling.push(score, ty, data);
        state.unsent_blocks.insert(score, (seq, entry));
        Ok(())
    }

    fn failure(state: &State) -> Option<String> {
        state.unsent.iter().find_map(|u| u.failed.clone())
    }
}

/// `PREFIX/index/W/N.idx` → `PREFIX/packs/W/N.pack`.
fn pack_of(index_key: &str) -> Option<String> {
    let (head, tail) = index_key.rsplit_once("index/")?;
    let tail = tail.strip_suffix(".idx")?;
    Some(format!("{head}packs/{tail}.pack"))
}

impl BlockStore for PackStore {
    /// The blocks of one stretch of a pack are read together, after its one
    /// ranged GET; up to [`READS_AT_ONCE`] stretches are fetched at once.
    fn read_each(
        &self,
        keys: &[(Score, BlockType)],
        each: &mut dyn FnMut(usize, Result<Option<Vec<u8>>, StoreError>),
    ) {
        // Group by stretch (what one GET brings); a block not in a sent
        // pack is a group of its own.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        {
            let state = self.inner.state();
            let mut by_stretch: HashMap<(u32, u64), usize> = HashMap::new();
            for (i, (score, _)) in keys.iter().enumerate() {
                match state.index.get(score) {
                    Some(l) => {
                        let id = (l.pack, l.offset as u64 / READ_SPAN);
                        let g = *by_stretch.entry(id).or_insert_with(|| {
                            groups.push(Vec::new());
                            groups.len() - 1
                        });
                        groups[g].push(i);
                    }
                    None => groups.push(vec![i]),
                }
            }
        }
        let workers = READS_AT_ONCE.min(groups.len());
        let queue = Mutex::new(groups.into_iter());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let (tx, queue) = (tx.clone(), &queue);
                scope.spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let Some(group) = next else { break };
                        for i in group {
                            let (score, ty) = keys[i];
                            if tx.send((i, self.read(&score, ty))).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            drop(tx);
            for (i, got) in rx {
                each(i, got);
            }
        });
    }

    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        if score.is_zero() {
            return Ok(true);
        }
        let state = self.inner.state();
        let wire = ty.to_wire();
        Ok(state.index.get(score).is_some_and(|l| l.ty == wire)
            || state
                .unsent_blocks
                .get(score)
                .is_some_and(|(_, e)| e.ty == wire))
    }

    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if score.is_zero() {
            return Ok(Some(Vec::new()));
        }
        let inner = &self.inner;
        let wire = ty.to_wire();
        {
            let state = inner.state();
            if let Some(&(seq, e)) = state.unsent_blocks.get(score) {
                if e.ty != wire {
                    return Ok(None);
                }
                let bytes = if seq == state.next_seq {
                    &state.filling.bytes[..]
                } else {
                    match state.unsent.iter().find(|u| u.seq == seq) {
                        Some(u) => &u.bytes[..],
                        None => {
                            return Err(StoreError::Remote("an unsent block went missing".into()));
                        }
                    }
                };
                return Ok(Some(bytes[e.offset as usize..][..e.len as usize].to_vec()));
            }
        }
        let locate = || {
            let state = inner.state();
            state.index.get(score).map(|l| {
                let p = &state.packs[l.pack as usize];
                (*l, p.key.clone(), p.len)
            })
        };
        let mut loc = locate();
        if loc.is_none() {
            // Perhaps another writer's: look, but not more than once a second.
            let due = inner
                .last_refresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|t| t.elapsed() >= REFRESH_GAP);
            if due {
                inner.refresh()?;
                loc = locate();
            }
        }
        // A pack a collection deleted is forgotten, and the bucket looked at
        // again: a live block of it was copied to a new pack first. Three
        // times at most (a later collection may have moved it again).
        for _ in 0..3 {
            let Some((l, pack_key, pack_len)) = loc else {
                return Ok(None);
            };
            if l.ty != wire {
                return Ok(None);
            }
            let (start, end) = (l.offset as u64, l.offset as u64 + l.len as u64);
            let Some(span) = inner.span(l.pack, &pack_key, start, end, pack_len)? else {
                tracing::info!(pack = %pack_key, "a pack was collected; looking for its blocks' new packs");
                let asked = Instant::now();
                inner.forget_packs(&mut inner.state(), &[l.pack]);
                inner.refresh_after(asked)?;
                loc = locate();
                continue;
            };
            let data = span
                .1
                .get((start - span.0) as usize..(end - span.0) as usize)
                .unwrap_or_default();
            if data.len() != l.len as usize || Score::of(data) != *score {
                return Err(StoreError::Corrupt {
                    score: *score,
                    ty,
                    offset: l.offset as u64,
                    detail: format!(
                        "pack {pack_key} in {} holds {} bytes there that fail the block's score check",
                        inner.name,
                        data.len()
                    ),
                });
            }
            return Ok(Some(data.to_vec()));
        }
        Err(StoreError::Remote(format!(
            "block {score} moved between packs three times while being read from {}",
            inner.name
        )))
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len()));
        }
        if data.is_empty() {
            return Ok(Score::ZERO);
        }
        let score = Score::of(data);
        let inner = &self.inner;
        inner.learn_grace_if_due()?;
        let held = inner.held(&inner.state(), &score);
        if held == Held::Fresh {
            inner.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
            return Ok(score);
        }
        // Only a block new to the store is checked for a collision attack
        // (see venti's LogStore), outside the lock; so is a copy forward,
        // which stores these bytes.
        Score::of_new(data)?;
        let state = inner.state();
        match inner.held(&state, &score) {
            Held::Fresh => {
                inner.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                return Ok(score);
            }
            // Written again, in a pack a collection may take soon: stored
            // again in a new one, so that an archive still being written
            // (not named yet) keeps it for a grace period from now.
            Held::Old => {
                inner
                    .counters
                    .copied_forward
                    .fetch_add(1, Ordering::Relaxed);
            }
            Held::No => {}
        }
        inner.store_new(state, score, ty.to_wire(), data)?;
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut state = inner.state();
        inner.seal(&mut state);
        // Only the packs sealed by now: under a steady ingest there is
        // always a later one unsent.
        let upto = state.next_seq;
        let earlier = |s: &State| s.unsent.iter().any(|u| u.seq < upto);
        // Failed packs get another try.
        inner.send_waiting(&mut state);
        let state = inner.wait_sends(state, earlier);
        match state
            .unsent
            .iter()
            .filter(|u| u.seq < upto)
            .find_map(|u| u.failed.clone())
        {
            Some(why) => Err(StoreError::Remote(why)),
            None => Ok(()),
        }
    }
}

impl Drop for PackStore {
    fn drop(&mut self) {
        // Never blocks, so an async thread may drop the store.
        if let Some(rt) = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}

/// What a failed look at the bucket says: a missing bucket, refused
/// credentials, or a store out of reach.
fn bucket_problem(e: &object_store::Error, settings: &Settings, name: &str) -> String {
    let text = e.to_string();
    let at = settings.endpoint.as_deref().unwrap_or("AWS");
    // By the status or the S3 error code, never by a bare "403" in the
    // text: a connection refused "in 403.99ms" once read as refused
    // credentials.
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    );
    if text.contains("NoSuchBucket") {
        format!("bucket {} does not exist at {at}", settings.url.bucket)
    } else if denied
        || text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("AccessDenied")
        || text.contains("403 Forbidden")
    {
        format!(
            "{at} refused the credentials for {name} (key {}): {text}",
            settings.access_key_id
        )
    } else {
        format!("cannot reach {name} at {at}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_key_names_its_pack() {
        assert_eq!(
            pack_of("grid/index/w1/00000003.idx").as_deref(),
            Some("grid/packs/w1/00000003.pack")
        );
        assert_eq!(
            pack_of("index/w/00000000.idx").as_deref(),
            Some("packs/w/00000000.pack")
        );
        assert_eq!(pack_of("grid/index/w1/x.txt"), None);
    }

    /// A refused connection that took 403 ms was once told as refused
    /// credentials (the CI failure of garage's outage test).
    #[test]
    fn a_slow_refusal_is_not_taken_for_refused_credentials() {
        let settings = Settings {
            url: crate::config::S3Url::parse("s3://outage/out").unwrap(),
            endpoint: Some("http://127.0.0.1:29210".into()),
            region: "garage".into(),
            access_key_id: "GK1".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            cache: "/nonexistent".into(),
            cache_bytes: 0,
            pack_bytes: 1,
            file: None,
        };
        let generic = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        };
        let slow = generic(
            "Error performing GET http://127.0.0.1:29210/outage in 403.993419ms, after 3 retries - HTTP error: error sending request",
        );
        let said = bucket_problem(&slow, &settings, "s3://outage/out");
        assert!(
            said.starts_with("cannot reach s3://outage/out at http://127.0.0.1:29210: "),
            "{said}"
        );
        for denied in [
            object_store::Error::PermissionDenied {
                path: "outage".into(),
                source: "no".to_string().into(),
            },
            generic(
                "Server returned non-2xx status code: 403 Forbidden: <Code>AccessDenied</Code>",
            ),
        ] {
            let said = bucket_problem(&denied, &settings, "s3://outage/out");
            assert!(said.contains("refused the credentials"), "{said}");
        }
    }

    #[test]
    fn writer_names_differ() {
        assert_ne!(writer_name(), writer_name());
    }
}
