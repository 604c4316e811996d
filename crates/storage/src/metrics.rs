//! The node's figures for Prometheus (`/metrics` on the admin address) and
//! for its status page: blocks and bytes stored, deduplication, ingest and
//! read rates (as counters), environments, spawn and save latencies,
//! replication lag per peer, front-door logins refused, imports.
//!
//! Most are counted where things happen; the rest (store size, live
//! environments, replication lag) are read at each scrape by the
//! refreshers the node's wiring registers.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use venti::{BlockStore, BlockType, Score, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub user: String,
    pub environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
    pub outcome: String,
}

/// Something read at every scrape (a gauge's current value).
pub type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub started: Instant,
    pub store_bytes: Gauge,
    pub blocks_written: Counter,
    pub blocks_deduplicated: Counter,
    pub bytes_written: Counter,
    pub blocks_read: Counter,
    pub bytes_read: Counter,
    pub dedup_ratio: Gauge<f64, AtomicU64>,
    pub environments: Family<StateLabel, Gauge>,
    pub cache_used_bytes: Family<CacheLabels, Gauge>,
    pub cache_capacity_bytes: Family<CacheLabels, Gauge>,
    pub spawn_seconds: Histogram,
    pub save_seconds: Histogram,
    pub commands: Family<CommandLabels, Counter>,
    pub logins_refused: Counter,
    pub connections_refused: Counter,
    /// Kept by the node's `Link`, brought up to date at each scrape
    /// ([`catch_up`]).
    pub tls_refused: Family<ReasonLabel, Counter>,
    pub import_bytes: Counter,
    pub replication_lag_bytes: Family<PeerLabel, Gauge>,
    pub replication_lag_blocks: Family<PeerLabel, Gauge>,
    refreshers: Mutex<Vec<Refresher>>,
    /// Recent events, newest last, for the status page.
    events: Mutex<VecDeque<Event>>,
    /// Where events are kept across restarts, if anywhere.
    events_file: Mutex<Option<std::path::PathBuf>>,
    /// Commands and imports refused so far.
    pub refused_total: std::sync::atomic::AtomicU64,
    /// (unix seconds, store bytes), sampled on the node's timer and at
    /// every scrape, one kept per step, for the page's growth plot.
    growth: Mutex<VecDeque<(u64, i64)>>,
}

const EVENTS_KEPT: usize = 50;
/// The longest event text kept.
const EVENT_CHARS: usize = 300;
/// The events file is rewritten with only the kept events past this.
const EVENTS_FILE_BYTES: u64 = 256 << 10;

/// An event of the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    /// A refusal or an error, rather than something done.
    pub failure: bool,
    pub text: String,
}

impl Event {
    /// `AT\tevent|failure\tTEXT`, a line of the events file.
    fn line(&self) -> String {
        let kind = if self.failure { "failure" } else { "event" };
        format!("{}\t{kind}\t{}\n", self.at, self.text)
    }

    fn parse(line: &str) -> Option<Event> {
        let mut f = line.splitn(3, '\t');
        let at = f.next()?.parse().ok()?;
        let failure = match f.next()? {
            "failure" => true,
            "event" => false,
            _ => return None,
        };
        Some(Event {
            at,
            failure,
            text: f.next()?.to_string(),
        })
    }

    /// Appends the event to `path`; a file grown past its bound is
    /// written again with only the events kept (`kept`) before it.
    fn append_to(&self, path: &std::path::Path, kept: &VecDeque<Event>) {
        use std::io::Write;
        let big = std::fs::metadata(path).is_ok_and(|m| m.len() > EVENTS_FILE_BYTES);
        let written = if big {
            let text: String = kept.iter().chain([self]).map(Event::line).collect();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(self.line().as_bytes()))
        };
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "keeping an event");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Growth samples: one per step (the last in a step updated), 8 hours kept.
const GROWTH_STEP_SECS: u64 = 20;
const GROWTH_KEPT: usize = 8 * 3600 / GROWTH_STEP_SECS as usize;

/// Raises `counter` to `total`, a count kept elsewhere that only grows:
/// for a refresher, so the figure stays a Prometheus counter. (Refreshers
/// run one at a time, so the read and the raise do not race.)
pub fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("colony");
        let latency = || Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let m = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            store_bytes: Gauge::default(),
            blocks_written: Counter::default(),
            blocks_deduplicated: Counter::default(),
            bytes_written: Counter::default(),
            blocks_read: Counter::default(),
            bytes_read: Counter::default(),
            dedup_ratio: Gauge::default(),
            environments: Family::default(),
            cache_used_bytes: Family::default(),
            cache_capacity_bytes: Family::default(),
            spawn_seconds: latency(),
            save_seconds: latency(),
            commands: Family::default(),
            logins_refused: Counter::default(),
            connections_refused: Counter::default(),
            tls_refused: Family::default(),
            import_bytes: Counter::default(),
            replication_lag_bytes: Family::default(),
            replication_lag_blocks: Family::default(),
            refreshers: Mutex::default(),
            events: Mutex::default(),
            events_file: Mutex::default(),
            refused_total: Default::default(),
            growth: Mutex::default(),
        };
        registry.register(
            "store_bytes",
            "Bytes in the block store",
            m.store_bytes.clone(),
        );
        registry.register(
            "store_blocks_written",
            "New blocks stored through the node",
            m.blocks_written.clone(),
        );
        registry.register(
            "store_blocks_deduplicated",
            "Blocks written that the store held already",
            m.blocks_deduplicated.clone(),
        );
        registry.register(
            "store_written_bytes",
            "Bytes of new blocks stored (the ingest rate is its rate)",
            m.bytes_written.clone(),
        );
        registry.register("store_blocks_read", "Blocks read", m.blocks_read.clone());
        registry.register(
            "store_read_bytes",
            "Bytes of blocks read (the read rate is its rate)",
            m.bytes_read.clone(),
        );
        registry.register(
            "store_dedup_ratio",
            "Blocks written per new block stored",
            m.dedup_ratio.clone(),
        );
        registry.register(
            "environments",
            "Environments, by state",
            m.environments.clone(),
        );
        registry.register(
            "environment_cache_used_bytes",
            "Changed blocks an environment's cache holds",
            m.cache_used_bytes.clone(),
        );
        registry.register(
            "environment_cache_capacity_bytes",
            "What an environment's cache of changed blocks may hold",
            m.cache_capacity_bytes.clone(),
        );
        registry.register(
            "spawn_seconds",
            "Time to spawn an environment",
            m.spawn_seconds.clone(),
        );
        registry.register(
            "save_seconds",
            "Time to save an environment",
            m.save_seconds.clone(),
        );
        registry.register(
            "commands",
            "Front-door commands, by command and outcome",
            m.commands.clone(),
        );
        registry.register(
            "frontdoor_logins_refused",
            "Front-door logins refused (unknown keys)",
            m.logins_refused.clone(),
        );
        registry.register(
            "frontdoor_connections_refused",
            "Front-door connections closed unanswered: too many were logging in at once",
            m.connections_refused.clone(),
        );
        registry.register(
            "tls_refused",
            "Peers refused by the node's TLS listeners, by reason",
            m.tls_refused.clone(),
        );
        registry.register(
            "import_bytes",
            "New bytes stored by imports",
            m.import_bytes.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Bytes of this node's log a peer has not acknowledged",
            m.replication_lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_blocks",
            "Blocks of this node's log a peer has not acknowledged",
            m.replication_lag_blocks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Reads `f` at every scrape.
    pub fn refresh_with(&self, f: Refresher) {
        self.refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    fn refresh(&self) {
        for f in self
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(self);
        }
        let (new, dup) = (self.blocks_written.get(), self.blocks_deduplicated.get());
        self.dedup_ratio.set(if new == 0 {
            1.0
        } else {
            (new + dup) as f64 / new as f64
        });
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut g = self.growth.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self.store_bytes.get();
        match g.back_mut() {
            Some(last) if now.saturating_sub(last.0) < GROWTH_STEP_SECS => last.1 = bytes,
            _ => g.push_back((now, bytes)),
        }
        while g.len() > GROWTH_KEPT {
            g.pop_front();
        }
    }

    /// The exposition text, in Prometheus's text format (version 0.0.4),
    /// which every scraper and `promtool check metrics` read.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        openmetrics_to_prometheus(&out)
    }

    /// Something that happened (a spawn, an import, a cpu node linked).
    pub fn event(&self, text: &str) {
        self.record(false, text);
    }

    /// A command or import refused (a refusal, over quota, the spawn
    /// limit, an error): counted, and shown among the events.
    pub fn refused(&self, text: &str) {
        self.refused_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.record(true, &format!("refused: {text}"));
    }

    /// Something gone wrong that is no one's command (a cpu node lost),
    /// shown among the events as a failure.
    pub fn failure(&self, text: &str) {
        self.record(true, text);
    }

    fn record(&self, failure: bool, text: &str) {
        let event = Event {
            at: unix_now(),
            failure,
            // One line, and a bounded one: the text may hold a tenant's words.
            text: text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(EVENT_CHARS)
                .collect(),
        };
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = self
            .events_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            event.append_to(path, &e);
        }
        e.push_back(event);
        while e.len() > EVENTS_KEPT {
            e.pop_front();
        }
    }

    /// Keeps events in `path` from now on, and takes back the last ones
    /// a previous run of the node kept there.
    pub fn keep_events_in(&self, path: &std::path::Path) {
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut earlier: VecDeque<Event> = kept.lines().filter_map(Event::parse).collect();
        while earlier.len() > EVENTS_KEPT {
            earlier.pop_front();
        }
        earlier.extend(e.drain(..));
        *e = earlier;
        *self.events_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
    }

    /// Takes a growth sample now (the node does every few seconds, so
    /// the plot has points whether or not anyone looks).
    pub fn sample(&self) {
        self.refresh();
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The growth samples, after a refresh.
    pub fn growth(&self) -> Vec<(u64, i64)> {
        self.refresh();
        self.growth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// OpenMetrics text (what the crate writes) as Prometheus text: a
/// counter's HELP and TYPE name its `_total` samples, and the OpenMetrics
/// end marker, units and `_created` samples go.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total{}\n", &rest[name.len()..]));
                    continue;
                }
            }
            None => {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                if name.ends_with("_created")
                    && counters.contains(name.trim_end_matches("_created"))
                {
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The node's store, counted.
pub struct MeteredStore {
    pub inner: Arc<dyn BlockStore>,
    pub metrics: Arc<Metrics>,
}

impl BlockStore for MeteredStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        let got = self.inner.read(score, ty)?;
        if let Some(d) = &got {
            self.metrics.blocks_read.inc();
            self.metrics.bytes_read.inc_by(d.len() as u64);
        }
        Ok(got)
    }

    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        let got = self.inner.read_sourced(score, ty)?;
        if let Some((d, _)) = &got {
            self.metrics.blocks_read.inc();
            self.metrics.bytes_read.inc_by(d.len() as u64);
        }
        Ok(got)
    }

    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        self.inner.holds(score, ty)
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.write_scored(ty, data, Score::of(data))
    }

    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        if self.inner.holds(&score, ty)? {
            self.metrics.blocks_deduplicated.inc();
            // Through to the store all the same: a block written again is
            // touched, and one older than the grace period is copied
            // forward so that no collection sweeps it (venti's `ages`).
            return self.inner.write_scored(ty, data, score);
        }
        let s = self.inner.write_scored(ty, data, score)?;
        self.metrics.blocks_written.inc();
        self.metrics.bytes_written.inc_by(data.len() as u64);
        Ok(s)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }

    fn prefetch(&self, keys: Vec<(Score, BlockType)>) {
        self.inner.prefetch(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_family_and_counts() {
        let m = Arc::new(Metrics::new());
        let store = MeteredStore {
            inner: Arc::new(venti::MemoryStore::new()),
            metrics: m.clone(),
        };
        store.write(BlockType::DATA, b"one").unwrap();
        store.write(BlockType::DATA, b"one").unwrap();
        store.write(BlockType::DATA, b"two").unwrap();
        m.spawn_seconds.observe(0.2);
        m.refresh_with(Box::new(|m| {
            m.store_bytes.set(1234);
        }));
        let text = m.encode();
        for want in [
            "colony_store_blocks_written_total 2",
            "colony_store_blocks_deduplicated_total 1",
            "colony_store_dedup_ratio 1.5",
            "colony_store_bytes 1234",
            "colony_spawn_seconds_count 1",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }

    /// A block written again through the metered store reaches the log
    /// store, which copies it forward once it is older than the grace
    /// period: the wrapper once answered "held" itself, and the copy that
    /// keeps a touched block from a collection never happened.
    #[test]
    fn a_block_written_again_reaches_the_store_and_an_old_one_is_copied_forward() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(venti::LogStore::open(dir.path()).unwrap());
        log.set_grace(std::time::Duration::from_secs(1));
        let m = Arc::new(Metrics::new());
        let store = MeteredStore {
            inner: log.clone(),
            metrics: m.clone(),
        };
        store.write(BlockType::DATA, &[7u8; 4096]).unwrap();
        log.sync().unwrap();
        let before = log.durable_end();
        // Old enough: a mark whose second ended more than the grace ago.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        store.write(BlockType::DATA, &[7u8; 4096]).unwrap();
        log.sync().unwrap();
        assert!(
            log.durable_end() >= before + 4096,
            "the old block was not copied forward"
        );
        assert!(
            m.encode()
                .contains("colony_store_blocks_deduplicated_total 1")
        );
    }

    #[test]
    fn a_count_kept_elsewhere_is_caught_up_and_never_lowered() {
        let m = Metrics::new();
        let l = ReasonLabel {
            reason: "handshake".into(),
        };
        for (total, want) in [(0, 0), (3, 3), (3, 3), (2, 3), (7, 7)] {
            catch_up(&m.tls_refused.get_or_create(&l), total);
            assert_eq!(m.tls_refused.get_or_create(&l).get(), want, "after {total}");
        }
        assert!(
            m.encode()
                .contains("colony_tls_refused_total{reason=\"handshake\"} 7")
        );
    }
}
