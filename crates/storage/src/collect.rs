//! Collecting a storage node's garbage (`colony gc`, and `gc-every`): the
//! blocks that no name, environment, job or peer needs any more leave the
//! node's log store, and their disk is given back.
//!
//! A collection, in order:
//!
//! 1. **Horizon.** Only records older than twice the grace period are
//!    looked at (see venti's `ages`: what was written or touched within
//!    the grace period survives, named or not), and none that a peer this
//!    node pushes to has not acknowledged yet: a log offset is that peer's
//!    position, so what lies past it must stay as it is.
//! 2. **Peers' pins.** Every storage peer is asked (`collection-pins`) for
//!    the roots its own work stands on (the environments it placed, its
//!    jobs' logs) and for the roots of the names it has not yet sent this
//!    node. Those are the blocks a peer believes this node keeps that this
//!    node's names do not show: without them, a name saved on the peer
//!    from an environment whose root was forgotten could arrive here after
//!    its old blocks were swept (the replication race). A peer out of
//!    reach, or a node that pushes here but is not a peer, stops the
//!    collection: nothing is swept on a partial view.
//! 3. **Mark.** Every binding's root, every working-set list, this node's
//!    environments (their roots and last saves or resume points) and jobs
//!    (their logs, roots given as scores) and the peers' pins are walked
//!    into a Bloom filter of the memory the node allows (`gc-memory`).
//!    Then again with the node's names frozen (binds, forgets and peers'
//!    merges wait; lookups go on) until the sweep ends: the second look
//!    costs only what changed, since no interior block is read twice.
//! 4. **Sweep.** Records below the horizon that the filter does not hold
//!    become skips, their pages punched out of the log.
//!
//! A node whose blocks are in a bucket collects it the same way, with
//! the bucket's rules in place of the log's (see s3store's `collect`):
//! the horizon is the set of packs older than twice the grace period,
//! fixed before marking; the sweep writes the mostly dead ones again
//! without their dead blocks and deletes those with nothing live. Such a
//! node has no peers; another storage node on the same bucket (its names
//! unseen here) stops the collection.
//!
//! What is bound or written while this runs is safe: new blocks lie past
//! the horizon; a block written again or claimed by a peer is copied past
//! it when it is old. A root can pass from a name to an environment and
//! back (spawn, forget, save, boom) between any two looks, which is why
//! the second look is taken with the names frozen: then every root a name
//! or an environment holds is marked, and until the sweep ends a new root
//! can stand on old blocks only through one of them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grid::error::{GridError, GridResult};
use grid::scorenames::Kept;
use s3store::PackStore;
use venti::reach::{Bloom, Marked, Marker};
use venti::{BlockStore, BlockType, Collected, LogStore, Score, SweepLimits};

use crate::Node;

/// The memory a collection may use unless the node says otherwise
/// (`gc-memory`).
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// The Bloom filter's bits per block, when memory allows: 0.05% of the
/// dead blocks kept by mistake.
const BITS_PER_BLOCK: u32 = 16;

/// How long a peer has to list its pins.
const PINS_WITHIN: Duration = Duration::from_secs(60);

/// The ask a peer answers with its pins.
pub const PINS_ASK: &str = "collection-pins";

/// What a node's collections sweep.
pub enum Target {
    /// Its own log store.
    Log(Arc<LogStore>),
    /// A bucket's packs, marked through `through` (the node's block cache
    /// in front of them). `user` is the node's id on the bucket.
    Bucket {
        packs: Arc<PackStore>,
        through: Arc<dyn BlockStore>,
        user: String,
    },
}

/// What a sweep did, by target.
#[derive(Debug, Clone)]
pub enum Swept {
    Log(Collected),
    Bucket(s3store::Swept),
}

impl Swept {
    pub fn blocks_dropped(&self) -> u64 {
        match self {
            Swept::Log(s) => s.blocks_dropped,
            Swept::Bucket(s) => s.blocks_dropped,
        }
    }

    /// Bytes of disk or of bucket given back.
    pub fn given_back(&self) -> u64 {
        match self {
            Swept::Log(s) => s.disk_before.saturating_sub(s.disk_after),
            Swept::Bucket(s) => s.bytes_before.saturating_sub(s.bytes_after),
        }
    }
}

/// Where a collection's sweep may reach, fixed before it marks.
enum Horizon<'a> {
    Log(&'a LogStore, u64),
    /// The packs, this node's id on the bucket, and the candidates.
    Bucket(&'a PackStore, &'a str, s3store::Candidates),
}

/// A node's collector: what it sweeps and the memory it may use.
pub struct Collector {
    target: Target,
    memory: u64,
    replicator: Option<Arc<replica::Replicator>>,
    running: Mutex<()>,
}

/// What a collection did.
#[derive(Debug, Clone)]
pub struct Report {
    pub seconds: f64,
    pub marked: Marked,
    /// Pins each peer gave.
    pub peers: Vec<(String, usize)>,
    pub filter_bytes: u64,
    /// The expected share of dead blocks kept by the filter's mistakes.
    pub false_positive_rate: f64,
    pub swept: Swept,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        writeln!(
            f,
            "marked {} roots, {} blocks ({} read) in a {:.1} MB filter ({:.3}% of the dead kept by mistake)",
            self.marked.roots,
            self.marked.blocks,
            self.marked.reads,
            mb(self.filter_bytes),
            self.false_positive_rate * 100.0
        )?;
        for (peer, pins) in &self.peers {
            writeln!(f, "peer {peer}: {pins} roots pinned")?;
        }
        match &self.swept {
            Swept::Log(s) => show_log_sweep(f, s)?,
            Swept::Bucket(s) => write!(f, "{s}")?,
        }
        writeln!(f, "took {:.2} s", self.seconds)
    }
}

fn show_log_sweep(f: &mut std::fmt::Formatter<'_>, s: &Collected) -> std::fmt::Result {
    let mb = |b: u64| b as f64 / 1e6;
    writeln!(
        f,
        "swept the log up to offset {}: {} records, {} live, {} blocks dropped, {:.1} MB skipped in {} skips",
        s.horizon,
        s.records,
        s.live,
        s.blocks_dropped,
        mb(s.bytes_skipped),
        s.skips
    )?;
    writeln!(
        f,
        "the log's disk: {:.1} MB before, {:.1} MB after ({:.1} MB given back){}",
        mb(s.disk_before),
        mb(s.disk_after),
        mb(s.disk_before.saturating_sub(s.disk_after)),
        if s.holes_unsupported {
            "; this file system cannot punch holes, so the disk was not given back"
        } else {
            ""
        }
    )
}

impl Collector {
    /// A collector of the node's own log store.
    pub fn new(
        log: Arc<LogStore>,
        memory: u64,
        replicator: Option<Arc<replica::Replicator>>,
    ) -> Collector {
        Collector {
            target: Target::Log(log),
            memory: memory.max(1 << 20),
            replicator,
            running: Mutex::new(()),
        }
    }

    /// A collector of a bucket's packs (see [`Target::Bucket`]).
    pub fn for_bucket(
        packs: Arc<PackStore>,
        through: Arc<dyn BlockStore>,
        user: String,
        memory: u64,
    ) -> Collector {
        Collector {
            target: Target::Bucket {
                packs,
                through,
                user,
            },
            memory: memory.max(1 << 20),
            replicator: None,
            running: Mutex::new(()),
        }
    }

    /// The horizon of a collection of the log now: twice the grace period
    /// back, and no further than any peer has acknowledged. Refuses while
    /// a node that pushes here is not one of this node's peers (its pins
    /// could not be asked for).
    fn log_horizon(&self, log: &LogStore) -> GridResult<u64> {
        let mut horizon = log.collection_horizon();
        if let Some(rep) = &self.replicator {
            for (_, at) in rep.durable_positions().map_err(GridError::refused)? {
                horizon = horizon.min(at);
            }
            let peers: Vec<&str> = rep.peers.iter().map(|p| p.name.as_str()).collect();
            if let Some(stranger) = rep
                .pushed_by()
                .into_iter()
                .find(|p| !peers.contains(&p.as_str()))
            {
                return Err(GridError::refused(format!(
                    "storage node {stranger} pushes blocks here but is not one of this node's peers: a collection must ask it what it keeps; make it a peer (peer=) first"
                )));
            }
        }
        Ok(horizon)
    }

    /// The packs a collection of the bucket may take now. Refuses while
    /// another storage node uses the bucket: its names are not seen here.
    fn bucket_horizon(&self, packs: &PackStore, user: &str) -> GridResult<s3store::Candidates> {
        if let Some(why) = packs.another_collector(user).map_err(store_err)? {
            return Err(GridError::refused(why));
        }
        packs.collection_candidates().map_err(store_err)
    }

    /// Runs one collection for `node`, telling `progress` how it goes.
    pub fn collect(&self, node: &Node, progress: &mut dyn FnMut(&str)) -> GridResult<Report> {
        let _one = self
            .running
            .try_lock()
            .map_err(|_| GridError::refused("a collection is already running on this node"))?;
        let started = Instant::now();
        let (horizon, blocks, store): (Horizon, u64, &dyn BlockStore) = match &self.target {
            Target::Log(log) => (
                Horizon::Log(log, self.log_horizon(log)?),
                log.block_count().map_err(store_err)?,
                log.as_ref(),
            ),
            Target::Bucket {
                packs,
                through,
                user,
            } => {
                progress("listing the bucket's packs");
                (
                    Horizon::Bucket(packs, user, self.bucket_horizon(packs, user)?),
                    packs.block_count(),
                    through.as_ref(),
                )
            }
        };
        let bloom = Bloom::new(blocks + blocks / 8, BITS_PER_BLOCK, self.memory * 3 / 4);
        let filter_bytes = bloom.bytes();
        let mut marker = Marker::new(store, bloom, (self.memory / 4) as usize);

        // Twice: first while everything goes on (the long part), then with
        // the names frozen, when only what changed meanwhile costs (the
        // walk reads no interior block twice). A root may pass from an
        // environment to a name and back between any two looks; once the
        // names are frozen every root a name or an environment holds is
        // marked, and until the sweep ends nothing new may stand on an
        // old block but through them.
        progress("marking what the live roots reach");
        self.mark_live(node, &mut marker)?;
        progress("marking again what changed meanwhile, names held");
        let _frozen = node.names().hold()?;
        let peers = self.mark_live(node, &mut marker)?;
        let (bloom, marked) = marker.finish();

        let swept = match horizon {
            Horizon::Log(log, horizon) => {
                progress("sweeping the log");
                Swept::Log(
                    log.sweep(
                        horizon,
                        &|score, _| bloom.contains(score),
                        SweepLimits::within(self.memory.saturating_sub(filter_bytes)),
                        &mut |at, of| {
                            progress(&format!(
                                "sweeping the log: {:.0} of {:.0} MB",
                                at as f64 / 1e6,
                                of as f64 / 1e6
                            ))
                        },
                    )
                    .map_err(store_err)?,
                )
            }
            Horizon::Bucket(packs, user, candidates) => {
                progress(&format!(
                    "sweeping the bucket: {} old packs",
                    candidates.old()
                ));
                Swept::Bucket(
                    packs
                        .sweep(
                            &candidates,
                            user,
                            &|score| bloom.contains(score),
                            &mut |at, of| {
                                progress(&format!("sweeping the bucket: {at} of {of} packs"))
                            },
                        )
                        .map_err(store_err)?,
                )
            }
        };
        Ok(Report {
            seconds: started.elapsed().as_secs_f64(),
            false_positive_rate: bloom.false_positive_rate(marked.blocks),
            marked,
            peers,
            filter_bytes,
            swept,
        })
    }

    /// Marks every live root: the peers' pins (asked now), every binding
    /// and working-set list, this node's own pins. A block missing under
    /// any of them stops the collection: what lies under it here would go
    /// unmarked, and may never be sent again. Returns the pins per peer.
    fn mark_live(&self, node: &Node, marker: &mut Marker<'_>) -> GridResult<Vec<(String, usize)>> {
        let mut peers = Vec::new();
        let mut peer_pins = Vec::new();
        if let Some(p) = node.peers() {
            for answer in p.ask_all("admin", PINS_ASK, PINS_WITHIN) {
                let told = answer.told.map_err(|e| {
                    GridError::refused(format!(
                        "peer {} could not be asked what it keeps ({e}): nothing was collected",
                        answer.peer
                    ))
                })?;
                if told.status != 0 {
                    return Err(GridError::refused(format!(
                        "peer {} would not say what it keeps ({}): nothing was collected",
                        answer.peer,
                        told.err.trim()
                    )));
                }
                let pins = parse_pins(&told.out)
                    .map_err(|e| GridError::refused(format!("peer {}'s pins: {e}", answer.peer)))?;
                peers.push((answer.peer, pins.len()));
                peer_pins.extend(pins);
            }
        }
        // A chunk of names at a time, so that lookups, binds and peers'
        // asks never wait on a walk (the second look, names held, sees
        // every entry).
        // A forget that some peer has not yet been sent: that peer may
        // spawn the name still, and save what stands on its old blocks.
        let unheard_from = self.replicator.as_ref().map_or(usize::MAX, |rep| {
            rep.acknowledged()
                .iter()
                .filter(|(p, _)| !p.plain_venti)
                .map(|(_, at)| at.names as usize)
                .min()
                .unwrap_or(usize::MAX)
        });
        node.names().each_kept_slowly(&mut |at, kept| match kept {
            Kept::Root(root) => marker.mark(root, BlockType::ROOT).map_err(store_err),
            Kept::List(list) => {
                marker.mark_block(list);
                Ok(())
            }
            // What of it is here (a forgotten root may be partly gone).
            Kept::Forgotten(root) if at >= unheard_from => marker
                .mark_what_is_here(root, BlockType::ROOT)
                .map_err(store_err),
            Kept::Forgotten(_) => Ok(()),
        })?;
        for (root, ty) in node.own_pins()?.into_iter().chain(peer_pins) {
            marker.mark(root, ty).map_err(store_err)?;
        }
        Ok(peers)
    }
}

fn store_err(e: venti::StoreError) -> GridError {
    GridError::refused(e.to_string())
}

/// Spawns between the lookup of their root and the cpus holding their
/// environment: neither a name (it may be forgotten meanwhile) nor an
/// environment keeps their root then, so they are pins of their own.
#[derive(Default)]
pub struct InFlight {
    roots: Mutex<(u64, std::collections::HashMap<u64, Option<Score>>)>,
    resolved: std::sync::Condvar,
}

/// One spawn on its way; it leaves the registry when dropped.
pub struct OnItsWay<'a> {
    registry: &'a InFlight,
    id: u64,
}

/// How long a collection waits for a spawn to look its root up.
const LOOKUP_WAIT: Duration = Duration::from_secs(10);

impl InFlight {
    /// Registers a spawn before it looks its root up.
    pub fn register(&self) -> OnItsWay<'_> {
        let mut r = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        let id = r.0;
        r.1.insert(id, None);
        OnItsWay { registry: self, id }
    }

    /// The roots spawns on their way stand on, once each has looked its
    /// root up (a spawn that has not within 10 s stops the collection).
    pub fn roots(&self) -> GridResult<Vec<Score>> {
        let deadline = Instant::now() + LOOKUP_WAIT;
        let mut r = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        while r.1.values().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GridError::refused(
                    "a spawn has not looked its root up within 10 s: nothing was collected; try again",
                ));
            }
            r = self
                .resolved
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(r.1.values().flatten().copied().collect())
    }
}

impl OnItsWay<'_> {
    /// The root the spawn looked up.
    pub fn stands_on(&self, root: Score) {
        let mut r = self
            .registry
            .roots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.1.insert(self.id, Some(root));
        self.registry.resolved.notify_all();
    }
}

impl Drop for OnItsWay<'_> {
    fn drop(&mut self) {
        let mut r = self
            .registry
            .roots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.1.remove(&self.id);
        self.registry.resolved.notify_all();
    }
}

/// The most text of pins one peer may send: an answer over the ask link
/// is cut past [`replica::ask::MAX_OUT`].
pub const MAX_PINS_TEXT: usize = replica::ask::MAX_OUT - 4096;

/// The pins a peer sent: `TYPE SCORE` lines (the logical type: on the wire
/// a data and a directory pointer block share one), then `end COUNT`, so
/// that a list cut short is never taken for a whole one.
pub fn parse_pins(out: &[u8]) -> Result<Vec<(Score, BlockType)>, String> {
    let text = std::str::from_utf8(out).map_err(|_| "not text".to_string())?;
    let mut lines: Vec<&str> = text.lines().collect();
    let count = lines
        .pop()
        .and_then(|l| l.strip_prefix("end "))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or("the list was cut short (no `end COUNT` line)")?;
    if count != lines.len() {
        return Err(format!(
            "the list says {count} pins but holds {}",
            lines.len()
        ));
    }
    lines
        .into_iter()
        .map(|line| {
            let bad = || {
                format!(
                    "a bad pin line {:?}",
                    line.chars().take(80).collect::<String>()
                )
            };
            let (ty, score) = line.split_once(' ').ok_or_else(bad)?;
            let ty = ty
                .parse::<u8>()
                .ok()
                .and_then(BlockType::new)
                .ok_or_else(bad)?;
            let score: Score = score.parse().map_err(|_| bad())?;
            Ok((score, ty))
        })
        .collect()
}

/// Pins as a peer sends them; refused when they would not fit one answer
/// (a peer that has not yet sent this node most of its names: a
/// collection waits until replication has caught up).
pub fn format_pins(pins: &[(Score, BlockType)]) -> Result<Vec<u8>, String> {
    let mut out = String::with_capacity(pins.len() * 44 + 16);
    for (score, ty) in pins {
        out.push_str(&format!("{} {score}\n", ty.value()));
        if out.len() > MAX_PINS_TEXT {
            return Err(format!(
                "{} roots to keep are more than one answer carries: let replication catch up (names not yet sent count), then collect",
                pins.len()
            ));
        }
    }
    out.push_str(&format!("end {}\n", pins.len()));
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spawn's root counts from its registration until it is dropped;
    /// a collection waits for one still looking its root up.
    #[test]
    fn a_spawn_on_its_way_pins_its_root_until_it_lands() {
        let registry = std::sync::Arc::new(InFlight::default());
        assert!(registry.roots().unwrap().is_empty());
        let root = Score::of(b"root");
        let landed = {
            let spawn = registry.register();
            let r = registry.clone();
            let looking = std::thread::spawn(move || r.roots().unwrap());
            std::thread::sleep(Duration::from_millis(50));
            spawn.stands_on(root);
            let seen = looking.join().unwrap();
            assert_eq!(seen, vec![root], "the collection waited for the lookup");
            assert_eq!(registry.roots().unwrap(), vec![root]);
            drop(spawn);
            registry.roots().unwrap()
        };
        assert!(landed.is_empty());
    }

    #[test]
    fn pins_read_back_as_sent_and_bad_lines_are_named() {
        let pins = vec![
            (Score::of(b"a"), BlockType::ROOT),
            (Score::of(b"b"), BlockType::DIR),
            (
                Score::of(b"c"),
                BlockType::at_depth(BlockType::DATA, 2).unwrap(),
            ),
        ];
        let text = format_pins(&pins).unwrap();
        assert_eq!(parse_pins(&text).unwrap(), pins);
        assert!(parse_pins(b"end 0\n").unwrap().is_empty());
        // Cut short, at a line's end or within one: never taken.
        let cut = &text[..text.len() - b"end 3\n".len()];
        assert!(parse_pins(cut).unwrap_err().contains("cut short"));
        assert!(parse_pins(&text[..50]).is_err());
        assert!(parse_pins(b"").is_err());
        for bad in [
            &b"1 zz\nend 1\n"[..],
            b"999 ab\nend 1\n",
            b"nothing\nend 1\n",
            b"\xff\n",
        ] {
            assert!(parse_pins(bad).is_err(), "{bad:?}");
        }
        assert!(parse_pins(b"end 2\n").unwrap_err().contains("says 2"));
    }
}
