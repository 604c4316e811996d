//! `colony bench replicate`: replication between two storage nodes over
//! mutual TLS, each in a network namespace of its own joined by a veth pair
//! (on loopback where namespaces cannot be made). Both nodes run in this
//! process, each on a runtime in its own namespace, with real stores and
//! state directories; the figures are what the issue asks for:
//!
//! * throughput of new blocks from A's log to B's durable store;
//! * bytes on the link per new block byte, when B already has most blocks;
//! * time from a binding on A (as `save` makes it, after its blocks are
//!   synced) to the name on B, for a one-file change and a large import;
//! * what an idle link costs: one ping round trip per catch-up, no log read.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grid::state::StateDir;
use link::{Link, Role};
use vac::tree::{BlockSizes, Tree};
use venti::{BlockStore, BlockType, LogStore, Score};

use crate::bench::link::{Place, enter};
use crate::bench::pipeline::Blocks;

const BLOCK: usize = 8192;

pub(crate) struct Node {
    pub state: StateDir,
    pub store: Arc<LogStore>,
    pub rep: Arc<replica::Replicator>,
}

fn node(dir: &Path, name: &str, link: Arc<Link>, peers: Vec<replica::Peer>) -> Result<Node> {
    let state = StateDir::open(dir.join(name))?;
    let store = Arc::new(LogStore::open(state.store_dir())?);
    let catalog = Arc::new(node::catalog::NodeCatalog::new(
        state.clone(),
        store.clone(),
        name.into(),
        None,
    ));
    let rep = Arc::new(replica::Replicator {
        node: name.into(),
        store: store.clone(),
        catalog,
        link: Some(link),
        dir: state.replica_dir(),
        changes: state.changes.subscribe(),
        board: Default::default(),
        peers,
        batch_records: replica::BATCH_RECORDS,
        batch_bytes: replica::BATCH_BYTES,
        catch_up: Duration::from_secs(1),
        more_status: None,
        desk: Default::default(),
        read_through: false,
    });
    Ok(Node { state, store, rep })
}

/// Runs `f` on a thread of its own in namespace `ns`, with a runtime that
/// lives until the process ends.
fn in_namespace(
    ns: Option<String>,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> std::sync::mpsc::Receiver<Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Err(e) = enter(ns.as_deref()) {
            let _ = tx.send(Err(e));
            return;
        }
        let _ = tx.send(f());
    });
    rx
}

/// (bytes, packets) sent on the link from namespace `ns` (all interfaces
/// but loopback; on loopback, loopback's).
fn link_tx(ns: Option<String>) -> Result<(u64, u64)> {
    std::thread::spawn(move || -> Result<(u64, u64)> {
        enter(ns.as_deref())?;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        let mut total = (0, 0);
        for line in text.lines().skip(2) {
            let Some((iface, rest)) = line.split_once(':') else {
                continue;
            };
            if (iface.trim() == "lo") != ns.is_none() {
                continue;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if f.len() >= 10 {
                total.0 += f[8];
                total.1 += f[9];
            }
        }
        Ok(total)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the counter thread panicked"))?
}

/// Waits until A has B's acknowledgement of its whole durable log.
fn caught_up(a: &Node, peer: &str, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    let end = a.store.durable_end();
    loop {
        let (out, _) = a.rep.board.snapshot();
        if out.get(peer).is_some_and(|o| o.position >= end) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!(
                "b did not catch up within {limit:?}:\n{}",
                a.rep.status_text()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until `name` is bound on `b`.
pub(crate) fn name_arrives(b: &Node, name: &str, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    let names = b.state.scorenames();
    loop {
        if names.lookup(name)?.is_some() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("{name} did not reach b within {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn archive(store: &LogStore, dir: &Path) -> Result<Score> {
    let progress = crate::progress::Progress::new("archiving");
    let mut tree = Tree::default();
    let mut importer = vac::walk::DirImporter::new(store, BlockSizes::default(), &progress, None);
    importer.add(&mut tree, &dir.join("."))?;
    let score = tree.write(store, BlockSizes::default(), None)?;
    progress.finish();
    Ok(score)
}

fn fill(path: &Path, bytes: usize, seed: u64) -> Result<()> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut data = vec![0u8; bytes];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Two storage nodes, A replicating to B (a keeper only), over mutual TLS,
/// each in a network namespace of its own if `netns` (and they can be
/// made), else on loopback. B serves at once; A pushes once started.
pub(crate) struct TwoNodes {
    pub a: Node,
    pub b: Node,
    /// A's namespace, if any.
    pub a_ns: Option<String>,
    /// Where they run, for the report.
    pub where_: &'static str,
    _place: Option<Place>,
}

impl TwoNodes {
    pub fn start(scratch: &Path, netns: bool) -> Result<TwoNodes> {
        let ca = scratch.join("ca");
        link::ca::init(&ca, "bench")?;
        for n in ["a", "b"] {
            link::ca::issue(
                &ca,
                n,
                Role::Storage,
                link::ca::Validity::Days(1),
                &scratch.join(format!("{n}.tls")),
            )?;
        }
        let place = if netns { Place::namespaces()? } else { None };
        let (b_ns, b_host, a_ns) = match &place {
            Some(Place::Namespaces(b, addr, a)) => (Some(b.clone()), addr.clone(), Some(a.clone())),
            _ => (None, "127.0.0.1".to_string(), None),
        };
        let where_ = if place.is_some() {
            "between two network namespaces (veth, MTU 1500)"
        } else {
            "on loopback"
        };

        // B: a keeper only.
        let b = node(scratch, "b", Link::load(&scratch.join("b.tls"))?, vec![])?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let keeper = b.rep.clone();
        let _b_thread = in_namespace(b_ns, move || {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(format!("{b_host}:0")).await?;
                addr_tx.send(listener.local_addr()?)?;
                replica::keep::serve(keeper, listener).await;
                anyhow::Ok(())
            })
        });
        let b_addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .context("b's keeper did not start")?;

        // A: a pusher to b.
        let a = node(
            scratch,
            "a",
            Link::load(&scratch.join("a.tls"))?,
            vec![replica::Peer {
                name: "b".into(),
                address: format!("tls!{}!{}", b_addr.ip(), b_addr.port()),
                plain_venti: false,
            }],
        )?;
        Ok(TwoNodes {
            a,
            b,
            a_ns,
            where_,
            _place: place,
        })
    }

    /// Starts A's pusher, on a runtime that lives until the process ends.
    pub fn start_pushing(&self) {
        let pusher = self.a.rep.clone();
        let _a_thread = in_namespace(self.a_ns.clone(), move || {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                pusher.start().map_err(anyhow::Error::msg)?;
                std::future::pending::<()>().await;
                anyhow::Ok(())
            })
        });
    }
}

pub fn run(mb: usize, big_mb: usize, netns: bool) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-replica-")
        .tempdir()?;
    let nodes = TwoNodes::start(scratch.path(), netns)?;
    let (a, b, a_ns2) = (&nodes.a, &nodes.b, nodes.a_ns.clone());
    println!(
        "replication benchmark, {}, mutual TLS 1.3, batches of {} blocks / {} MB",
        nodes.where_,
        replica::BATCH_RECORDS,
        replica::BATCH_BYTES >> 20
    );

    // 1. Throughput of new blocks: written before A's pusher starts, so
    // the clock runs from its first connection to B's last acknowledgement.
    let n = mb * 1_000_000 / BLOCK;
    let blocks = Blocks::new(1);
    for i in 0..n {
        a.store.write(BlockType::DATA, &blocks.get(i))?;
    }
    a.store.sync()?;
    let (tx0, _) = link_tx(a_ns2.clone())?;
    nodes.start_pushing();

    let took = caught_up(a, "b", Duration::from_secs(600))?;
    let (tx1, _) = link_tx(a_ns2.clone())?;
    let bytes = (n * BLOCK) as f64;
    println!(
        "new blocks, A's log to B's durable store: {:>8.1} MB/s  ({} blocks of {BLOCK} bytes in {:.2} s; {:.3} link bytes per block byte)",
        bytes / took.as_secs_f64() / 1e6,
        n,
        took.as_secs_f64(),
        (tx1 - tx0) as f64 / bytes
    );

    // 2. Mostly old blocks: B has 99 % of them already.
    let blocks = Blocks::new(2);
    let m = n.max(100);
    for i in 0..m {
        if i % 100 != 0 {
            b.store.write(BlockType::DATA, &blocks.get(i))?;
        }
    }
    b.store.sync()?;
    let (tx0, _) = link_tx(a_ns2.clone())?;
    for i in 0..m {
        a.store.write(BlockType::DATA, &blocks.get(i))?;
    }
    a.store.sync()?;
    caught_up(a, "b", Duration::from_secs(600))?;
    let (tx1, _) = link_tx(a_ns2.clone())?;
    let new_bytes = (m.div_ceil(100) * BLOCK) as f64;
    println!(
        "B already has 99 % of {m} blocks:           {:>8.3} link bytes per new block byte (offers cost {} bytes a block)",
        (tx1 - tx0) as f64 / new_bytes,
        1 + venti::SCORE_SIZE
    );

    // 3. A one-file change, bound as `save` binds it.
    let tree = scratch.path().join("small");
    std::fs::create_dir_all(&tree)?;
    for i in 0..200 {
        fill(&tree.join(format!("f{i}")), 4096, i)?;
    }
    let names = a.state.scorenames();
    names.bind("base", &archive(&a.store, &tree)?, &["bench"])?;
    name_arrives(b, "base", Duration::from_secs(60))?;
    let mut small = Vec::new();
    for round in 0..7 {
        fill(&tree.join("f7"), 4096, 1000 + round)?;
        let root = archive(&a.store, &tree)?;
        let name = format!("change{round}");
        names.bind(&name, &root, &["bench"])?;
        small.push(name_arrives(b, &name, Duration::from_secs(60))?);
    }
    small.sort();
    println!(
        "one-file change, bound on A -> bound on B:   {:>8.1} ms median  (range {:.1}..{:.1} ms over {} saves; the original: up to 601 s)",
        small[small.len() / 2].as_secs_f64() * 1e3,
        small[0].as_secs_f64() * 1e3,
        small[small.len() - 1].as_secs_f64() * 1e3,
        small.len()
    );

    // 4. A large import.
    let big = scratch.path().join("big");
    std::fs::create_dir_all(&big)?;
    for i in 0..big_mb {
        fill(&big.join(format!("f{i}")), 1 << 20, 5000 + i as u64)?;
    }
    let t = Instant::now();
    let root = archive(&a.store, &big)?;
    let archived = t.elapsed();
    names.bind("big", &root, &["bench"])?;
    let arrived = name_arrives(b, "big", Duration::from_secs(600))?;
    println!(
        "{big_mb} MiB import, bound on A -> bound on B:    {:>8.2} s  (archiving it on A took {:.2} s)",
        arrived.as_secs_f64(),
        archived.as_secs_f64()
    );

    // 5. Nothing new.
    std::thread::sleep(Duration::from_millis(1500));
    let (bytes0, packets0) = link_tx(a_ns2.clone())?;
    let read_before = a.store.durable_end();
    std::thread::sleep(Duration::from_secs(5));
    let (bytes1, packets1) = link_tx(a_ns2)?;
    println!(
        "idle for 5 s (catch-up every 1 s):          {} packets, {} bytes from A; each round one Ping/Pong round trip, no log read (A's position stays at its durable end {read_before})",
        packets1 - packets0,
        bytes1 - bytes0
    );
    Ok(())
}
