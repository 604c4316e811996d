//! `colony bench …`: benchmarks that print their figures. Speed is measured
//! here, never asserted in tests. Each benchmark is a module of this
//! folder; this file parses their commands and holds the store and venti
//! benchmarks and the helpers they share.

mod density;
mod env;
mod forward;
mod fossil;
pub mod garage_cluster;
mod gc;
mod grid;
mod hub;
mod idle;
mod import;
mod jobs;
mod link;
mod names;
pub mod pipeline;
mod replica;
mod s3;
mod slow_link;
mod split;
mod vac;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use tokio::task::JoinSet;
use venti::{BlockStore, BlockType, Client, LogStore, Score};

use pipeline::{BLOCK, Blocks, write_pipelined};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Block store: in-process ingest and reads, loopback TCP, reopen time.
    Venti {
        /// Number of 8 KiB blocks per phase.
        #[arg(long, default_value_t = 50_000)]
        blocks: usize,
        /// Blocks in the store whose reopen time is measured (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        reopen_blocks: usize,
        /// Directory for the scratch stores [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Requests in flight per client over TCP.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Repetitions of each phase; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// fossil: mount a real root through FUSE and measure it.
    Fossil {
        /// The root to archive and mount (kept out of the repository and CI).
        tree: PathBuf,
        /// Directory for the scratch store and mount point.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the generated large file for read rates, in MiB.
        #[arg(long, default_value_t = 256)]
        big_mb: u64,
    },
    /// grid: time spawn and one-file save through a node's command set.
    Grid {
        /// A larger root to spawn besides busybox (kept out of the repository and CI).
        tree: PathBuf,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// forward: MB/s into a busybox environment through `ssh -L` and
    /// `scp`, beside raw TCP and the SSH channel on the same node. Needs
    /// root and the OpenSSH client.
    Forward {
        /// MiB per transfer.
        #[arg(long, default_value_t = 1024)]
        mb: usize,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// jobs: `run busybox -- true` through a single node's front door with
    /// OpenSSH, cold and warm, beside `status` (the ceiling); then the
    /// throughput of detached `true` jobs beside foreground runs from as
    /// many clients as the queue runs at once. Needs root.
    Jobs {
        /// Warm repetitions; the median is printed.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Detached jobs for the throughput figure (0: none).
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// A Debian root file system (e.g. made by `debootstrap
        /// --variant=minbase bookworm DIR`): `run debian -- apt-get
        /// --version` is timed on it, cold and warm.
        #[arg(long)]
        debian: Option<PathBuf>,
    },
    /// gc: a collection of a large synthetic store: mark and sweep time,
    /// peak memory beside the setting, the sweep's MB/s beside a plain
    /// read of the log, the disk given back; ingest with and without
    /// collision detection.
    Gc {
        /// Data blocks in the store.
        #[arg(long, default_value_t = 10_000_000)]
        blocks: usize,
        /// Bytes per data block.
        #[arg(long, default_value_t = 256)]
        block_size: usize,
        /// Every Nth group of 400 blocks is garbage (0: none).
        #[arg(long, default_value_t = 2)]
        dead_every: usize,
        /// The memory the collection may use, in MiB.
        #[arg(long, default_value_t = 256)]
        memory_mb: u64,
        /// Directory for the scratch store [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The collection half of `bench gc`, in a process of its own.
    #[command(hide = true)]
    GcCollect {
        #[arg(long, default_value_t = 256)]
        memory_mb: u64,
        dir: PathBuf,
    },
    /// names: `save`, `scores` and replication of one name with a name db
    /// of each given size (and many users), beside `status` through the
    /// same front door. Needs root and OpenSSH.
    Names {
        /// Sizes of the name db, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        counts: Vec<usize>,
        /// Synthetic users in the users file.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// link: venti over mutual TLS against plain, on loopback and across
    /// network namespaces; one request in flight; handshake times.
    Link {
        /// New 8 KiB blocks per phase.
        #[arg(long, default_value_t = 20_000)]
        blocks: usize,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip the cross-namespace figures.
        #[arg(long)]
        no_netns: bool,
        /// One-way delay of the far link, in milliseconds.
        #[arg(long, default_value_t = 10)]
        far_delay_ms: u64,
        /// Bandwidth of the far link, in Mbit/s.
        #[arg(long, default_value_t = 100)]
        far_mbit: u64,
    },
    /// replicate: two storage nodes over mutual TLS across network
    /// namespaces: throughput, bytes on the link per new byte, time from a
    /// binding on one node to the name on the other, an idle link's cost.
    Replicate {
        /// Megabytes of new 8 KiB blocks for the throughput phase.
        #[arg(long, default_value_t = 400)]
        mb: usize,
        /// MiB of files in the large import.
        #[arg(long, default_value_t = 200)]
        big_mb: usize,
        /// Stay on loopback.
        #[arg(long)]
        no_netns: bool,
    },
    /// idle: what idle environments cost before and after their suspend,
    /// how long a login takes to wake one, a suspend with 10 MB changed.
    /// Needs root.
    Idle {
        /// Idle environments to hold, then suspend.
        #[arg(long, default_value_t = 100)]
        envs: usize,
        /// Wakes to time.
        #[arg(long, default_value_t = 10)]
        samples: usize,
        /// A Debian root directory (debootstrap) to time wakes of too.
        #[arg(long)]
        debian: Option<std::path::PathBuf>,
    },
    /// density: idle busybox environments on one node — memory and threads
    /// per environment — and spawns at once. Needs root.
    Density {
        /// Idle environments to hold.
        #[arg(long, default_value_t = 100)]
        envs: usize,
        /// Spawns at once after them.
        #[arg(long, default_value_t = 40)]
        concurrent: usize,
        /// Spawn options, e.g. "net=host userns=no" [default: the node's].
        #[arg(long, default_value = "")]
        spawn_options: String,
    },
    /// s3: the block store on a three-node Garage cluster it starts
    /// (needs the garage binary): ingest, vac of TREE, cold reads, and
    /// spawns with the store on the bucket (root, OpenSSH client).
    S3 {
        /// A larger root to archive and spawn besides busybox, e.g. a
        /// debootstrap minbase (kept out of the repository and CI).
        tree: Option<PathBuf>,
        /// MiB of new 8 KiB blocks to ingest.
        #[arg(long, default_value_t = 512)]
        mb: usize,
        /// Spawn repetitions; the median is printed.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// split: a storage node and a cpu node in this process over loopback
    /// mutual TLS, direct and at a round trip: spawn to first output with
    /// the cpu node's block cache cold and warm, and what it fetched.
    /// Needs root.
    Split {
        /// A larger root to spawn besides busybox, e.g. a debootstrap
        /// minbase (kept out of the repository and CI).
        tree: Option<PathBuf>,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Round trips of the far links, in milliseconds (a cpu node
        /// each), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "20,80")]
        rtt_ms: Vec<u64>,
        /// Spawn options, e.g. "net=host userns=no" [default: the node's].
        #[arg(long, default_value = "")]
        spawn_options: String,
    },
    /// hub: bytes a second through one hub to 1 and 8 readers, and the
    /// time from a write to a waiting reader, over 9P on loopback.
    Hub {
        /// MiB each reader receives.
        #[arg(long, default_value_t = 512)]
        mb: usize,
        /// Latency rounds.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
    },
    /// import: a tar of TREE imported through the SSH front door on
    /// loopback (needs the OpenSSH client): MB/s, new and deduplicated.
    Import {
        /// The tree to tar (e.g. a debootstrap minbase; kept out of CI).
        tree: PathBuf,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// vac: archive a real tree (e.g. a debootstrap minbase root) into the
    /// embedded store and over loopback, re-archive it with -d, extract it.
    Vac {
        /// The tree to archive (kept out of the repository and CI).
        tree: PathBuf,
        /// Directory for the scratch stores [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Repetitions; the median is printed.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Venti {
            blocks,
            reopen_blocks,
            dir,
            window,
            runs,
        } => bench_venti(blocks, reopen_blocks, dir, window, runs),
        BenchCommand::Vac { tree, dir, runs } => crate::bench::vac::run(&tree, dir, runs),
        BenchCommand::Grid { tree, runs } => crate::bench::grid::run(&tree, runs),
        BenchCommand::Forward { mb, runs } => crate::bench::forward::run(mb, runs),
        BenchCommand::Jobs { runs, jobs, debian } => {
            crate::bench::jobs::run(runs, jobs, debian.as_deref())
        }
        BenchCommand::Gc {
            blocks,
            block_size,
            dead_every,
            memory_mb,
            dir,
        } => crate::bench::gc::run(blocks, block_size, dead_every, memory_mb << 20, dir),
        BenchCommand::GcCollect { memory_mb, dir } => {
            crate::bench::gc::collect(&dir, memory_mb << 20)
        }
        BenchCommand::Names {
            counts,
            users,
            runs,
        } => crate::bench::names::run(&counts, users, runs),
        BenchCommand::Hub { mb, rounds } => crate::bench::hub::run(mb, rounds),
        BenchCommand::Import { tree, runs } => crate::bench::import::run(&tree, runs),
        BenchCommand::S3 { tree, mb, runs } => crate::bench::s3::run(tree.as_deref(), mb, runs),
        BenchCommand::Split {
            tree,
            runs,
            rtt_ms,
            spawn_options,
        } => crate::bench::split::run(tree.as_deref(), runs, &rtt_ms, &spawn_options),
        BenchCommand::Link {
            blocks,
            runs,
            no_netns,
            far_delay_ms,
            far_mbit,
        } => crate::bench::link::run(
            blocks,
            runs,
            !no_netns,
            crate::bench::slow_link::Shape {
                delay: Duration::from_millis(far_delay_ms),
                rate: far_mbit * 1_000_000 / 8,
            },
        ),
        BenchCommand::Density {
            envs,
            concurrent,
            spawn_options,
        } => crate::bench::density::run(envs, concurrent, &spawn_options),
        BenchCommand::Idle {
            envs,
            samples,
            debian,
        } => crate::bench::idle::run(envs, samples, debian),
        BenchCommand::Replicate {
            mb,
            big_mb,
            no_netns,
        } => crate::bench::replica::run(mb, big_mb, !no_netns),
        BenchCommand::Fossil { tree, dir, big_mb } => crate::bench::fossil::run(&tree, dir, big_mb),
    }
}

/// One measured phase of one run.
struct Phase {
    name: &'static str,
    blocks: usize,
    block_size: usize,
    elapsed: Duration,
}

/// Prints the median of each phase over the runs, with the range. The first
/// touch of fresh memory is slow on this kind of virtual machine, so single
/// runs vary widely; the median is the honest figure.
fn report(runs: &[Vec<Phase>]) {
    for (i, phase) in runs[0].iter().enumerate() {
        let mut rates: Vec<f64> = runs
            .iter()
            .map(|run| {
                (run[i].blocks * run[i].block_size) as f64 / run[i].elapsed.as_secs_f64() / 1e6
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{:<46} {:>8.1} MB/s {:>9.0} blocks/s   (range {:.0}..{:.0} MB/s over {} runs of {} blocks)",
            phase.name,
            median,
            median * 1e6 / phase.block_size as f64,
            rates[0],
            rates[rates.len() - 1],
            rates.len(),
            phase.blocks
        );
    }
}

fn bench_venti(
    n: usize,
    reopen_blocks: usize,
    dir: Option<PathBuf>,
    window: usize,
    runs: usize,
) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("colony-bench-").tempdir()?,
    };
    println!(
        "venti benchmark: {n} blocks of {BLOCK} bytes per phase, median of {runs} runs, scratch in {}",
        scratch.path().display()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for run in 0..runs.max(1) {
        let dir = scratch.path().join(format!("run{run}"));
        let mut phases = in_process(&dir, n, run as u64)?;
        phases.extend(runtime.block_on(loopback(&dir, n, window, run as u64))?);
        std::fs::remove_dir_all(&dir)?;
        results.push(phases);
    }
    report(&results);
    // What collision detection costs, as ratios in the same run.
    let median_rate = |name: &str| {
        let mut rates: Vec<f64> = results
            .iter()
            .flat_map(|run| run.iter().filter(|p| p.name == name))
            .map(|p| (p.blocks * p.block_size) as f64 / p.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    println!(
        "collision detection: hashing at {:.2}x plain SHA-1; in-process ingest at {:.2}x, \
         loopback venti writes at {:.2}x the same without it",
        median_rate(DETECTING_SHA1) / median_rate(PLAIN_SHA1),
        median_rate(INGEST_DETECTING) / median_rate(INGEST_PLAIN),
        median_rate(LOOPBACK_DETECTING) / median_rate(LOOPBACK_PLAIN),
    );
    if reopen_blocks > 0 {
        reopen(&scratch.path().join("reopen"), reopen_blocks)?;
    }
    Ok(())
}

const PLAIN_SHA1: &str = "plain SHA-1 of each block (the ceiling)";
const DETECTING_SHA1: &str = "SHA-1 with collision detection (sha1dc)";
const INGEST_PLAIN: &str = "in-process ingest, plain SHA-1 (+sync)";
const INGEST_DETECTING: &str = "in-process ingest, new blocks (+sync)";
const LOOPBACK_DETECTING: &str = "loopback writes, 1 pipelined client (+sync)";
const LOOPBACK_PLAIN: &str = "the same, no collision detection (+sync)";

fn in_process(dir: &std::path::Path, n: usize, run: u64) -> Result<Vec<Phase>> {
    let mut phases = Vec::new();
    let mut phase = |name, elapsed| {
        phases.push(Phase {
            name,
            blocks: n,
            block_size: BLOCK,
            elapsed,
        })
    };
    let store = LogStore::open(dir.join("inproc"))?;
    let blockgen = Blocks::new(1 + run * 10);
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| blockgen.get(i)).collect();

    // Hashing alone: plain SHA-1 (the ceiling of any ingest) and SHA-1
    // with collision detection, which every store hashes new blocks with.
    let t = Instant::now();
    for b in &blocks {
        std::hint::black_box(Score::of(b));
    }
    phase(PLAIN_SHA1, t.elapsed());
    let t = Instant::now();
    for b in &blocks {
        std::hint::black_box(Score::of_new(b)?);
    }
    phase(DETECTING_SHA1, t.elapsed());
    // Ingest as it would be without detection, into a store of its own.
    let plain = LogStore::open(dir.join("inproc-plain"))?.without_collision_detection();
    let t = Instant::now();
    for b in &blocks {
        plain.write(BlockType::DATA, b)?;
    }
    plain.sync()?;
    phase(INGEST_PLAIN, t.elapsed());
    plain.close()?;

    let t = Instant::now();
    let mut scores = Vec::with_capacity(n);
    for b in &blocks {
        scores.push(store.write(BlockType::DATA, b)?);
    }
    store.sync()?;
    phase(INGEST_DETECTING, t.elapsed());

    let t = Instant::now();
    for b in &blocks {
        store.write(BlockType::DATA, b)?;
    }
    phase("in-process ingest, duplicate blocks", t.elapsed());

    let t = Instant::now();
    for s in &scores {
        let data = store
            .read(s, BlockType::DATA)?
            .context("a written block is missing")?;
        std::hint::black_box(data);
    }
    phase("in-process reads (verified)", t.elapsed());
    store.close()?;
    Ok(phases)
}

async fn loopback(dir: &std::path::Path, n: usize, window: usize, run: u64) -> Result<Vec<Phase>> {
    let mut phases = Vec::new();
    let (addr, stop_tx, server) = serve_on_loopback(LogStore::open(dir.join("tcp"))?).await?;

    let client = Client::connect_tcp(&addr).await?;
    let t = Instant::now();
    let scores =
        write_pipelined(&client, Arc::new(Blocks::new(2 + run * 10)), 0..n, window).await?;
    client.sync().await?;
    phases.push(Phase {
        name: LOOPBACK_DETECTING,
        blocks: n,
        block_size: BLOCK,
        elapsed: t.elapsed(),
    });

    let t = Instant::now();
    write_pipelined(&client, Arc::new(Blocks::new(2 + run * 10)), 0..n, window).await?;
    client.sync().await?;
    phases.push(Phase {
        name: "loopback writes of duplicates, 1 client (+sync)",
        blocks: n,
        block_size: BLOCK,
        elapsed: t.elapsed(),
    });

    let t = Instant::now();
    read_pipelined(&client, scores, window).await?;
    phases.push(Phase {
        name: "loopback reads, 1 pipelined client",
        blocks: n,
        block_size: BLOCK,
        elapsed: t.elapsed(),
    });

    let clients = 8;
    let per = n / clients;
    let t = Instant::now();
    let mut tasks = JoinSet::new();
    let blockgen = Arc::new(Blocks::new(3 + run * 10));
    for c in 0..clients {
        let blockgen = blockgen.clone();
        let addr = addr.clone();
        tasks.spawn(async move {
            let client = Client::connect_tcp(&addr).await?;
            write_pipelined(&client, blockgen, c * per..(c + 1) * per, window).await?;
            client.sync().await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    phases.push(Phase {
        name: "loopback writes, 8 pipelined clients (+sync)",
        blocks: per * clients,
        block_size: BLOCK,
        elapsed: t.elapsed(),
    });

    let _ = stop_tx.send(());
    server.await??;

    // The first phase again, into a store without collision detection:
    // what the check costs a venti client end to end.
    let store = LogStore::open(dir.join("tcp-plain"))?.without_collision_detection();
    let (addr, stop_tx, server) = serve_on_loopback(store).await?;
    let client = Client::connect_tcp(&addr).await?;
    let t = Instant::now();
    write_pipelined(&client, Arc::new(Blocks::new(2 + run * 10)), 0..n, window).await?;
    client.sync().await?;
    phases.push(Phase {
        name: LOOPBACK_PLAIN,
        blocks: n,
        block_size: BLOCK,
        elapsed: t.elapsed(),
    });
    let _ = stop_tx.send(());
    server.await??;
    Ok(phases)
}

/// A venti server on `store` at a loopback port: its address, what stops
/// it, and its task.
async fn serve_on_loopback(
    store: LogStore,
) -> Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), venti::StoreError>>,
)> {
    let store: Arc<dyn BlockStore> = Arc::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(venti::server::serve(listener, store, async {
        let _ = stop_rx.await;
    }));
    Ok((addr, stop_tx, server))
}

fn small_block(i: usize) -> [u8; 64] {
    let mut small = [0u8; 64];
    small[..8].copy_from_slice(&(i as u64).to_be_bytes());
    small[63] = 1;
    small
}

fn reopen(path: &std::path::Path, blocks: usize) -> Result<()> {
    let store = LogStore::open(path)?;
    let t = Instant::now();
    for i in 0..blocks {
        store.write(BlockType::DATA, &small_block(i))?;
    }
    store.close()?;
    let filled = t.elapsed();
    println!(
        "filled a store with {blocks} blocks of 64 B in {:.2} s ({:.0} blocks/s)",
        filled.as_secs_f64(),
        blocks as f64 / filled.as_secs_f64()
    );
    let t = Instant::now();
    let store = LogStore::open(path)?;
    let opened = t.elapsed();
    println!(
        "reopen a store of {blocks} blocks: {:.1} ms",
        opened.as_secs_f64() * 1e3
    );
    if let Some(peak) = peak_rss() {
        println!("peak resident memory of this benchmark: {peak}");
    }
    store
        .read(&Score::of(&small_block(blocks / 2)), BlockType::DATA)?
        .context("a block is missing after reopen")?;
    Ok(())
}

async fn read_pipelined(client: &Client, scores: Vec<Score>, window: usize) -> Result<()> {
    let mut tasks = JoinSet::new();
    for s in scores {
        if tasks.len() >= window {
            tasks.join_next().await.expect("tasks")??;
        }
        let client = client.clone();
        tasks.spawn(async move { client.read(&s, BlockType::DATA, BLOCK).await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// The process's peak resident set, as the kernel reports it.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_string())
}
