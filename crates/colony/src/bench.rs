//! `colony bench …`: benchmarks that print their figures. Speed is measured
//! here, never asserted in tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use tokio::task::JoinSet;
use venti::{BlockStore, BlockType, Client, LogStore, Score};

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
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Venti {
            blocks,
            reopen_blocks,
            dir,
            window,
        } => bench_venti(blocks, reopen_blocks, dir, window),
    }
}

const BLOCK: usize = 8192;

/// Unique blocks made cheaply: random bytes with a counter and a salt in front,
/// so generating them costs a copy, not a random-number run.
struct Blocks {
    base: Vec<u8>,
    salt: u64,
}

impl Blocks {
    fn new(salt: u64) -> Blocks {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
        let base = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Blocks { base, salt }
    }

    fn get(&self, i: usize) -> Vec<u8> {
        let mut b = self.base.clone();
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        b[8..16].copy_from_slice(&self.salt.to_be_bytes());
        b
    }
}

fn report(name: &str, blocks: usize, bytes_per_block: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{name:<44} {:>9.1} MB/s {:>10.0} blocks/s  ({blocks} blocks in {:.2} s)",
        (blocks * bytes_per_block) as f64 / secs / 1e6,
        blocks as f64 / secs,
        secs
    );
}

fn bench_venti(n: usize, reopen_blocks: usize, dir: Option<PathBuf>, window: usize) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("colony-bench-").tempdir()?,
    };
    println!(
        "venti benchmark: {n} blocks of {BLOCK} bytes per phase, scratch in {}",
        scratch.path().display()
    );

    // In-process.
    let store = LogStore::open(scratch.path().join("inproc"))?;
    let blockgen = Blocks::new(1);
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| blockgen.get(i)).collect();
    let t = Instant::now();
    let mut scores = Vec::with_capacity(n);
    for b in &blocks {
        scores.push(store.write(BlockType::DATA, b)?);
    }
    let before_sync = t.elapsed();
    store.sync()?;
    report(
        "in-process ingest, new blocks (+sync)",
        n,
        BLOCK,
        t.elapsed(),
    );
    println!(
        "{:<44} {:.2} s writing, {:.2} s in the final sync",
        "",
        before_sync.as_secs_f64(),
        (t.elapsed() - before_sync).as_secs_f64()
    );

    let t = Instant::now();
    for b in &blocks {
        store.write(BlockType::DATA, b)?;
    }
    report("in-process ingest, duplicate blocks", n, BLOCK, t.elapsed());

    let t = Instant::now();
    for s in &scores {
        let data = store
            .read(s, BlockType::DATA)?
            .context("a written block is missing")?;
        std::hint::black_box(data);
    }
    report("in-process reads (verified)", n, BLOCK, t.elapsed());
    store.close()?;
    drop(blocks);

    // Loopback TCP.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(scratch.path().join("tcp"))?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(venti::server::serve(listener, store, async {
            let _ = stop_rx.await;
        }));

        let client = Client::connect(&addr).await?;
        let t = Instant::now();
        let scores = write_pipelined(&client, Arc::new(Blocks::new(2)), 0..n, window).await?;
        client.sync().await?;
        report(
            "loopback writes, 1 pipelined client (+sync)",
            n,
            BLOCK,
            t.elapsed(),
        );

        let t = Instant::now();
        read_pipelined(&client, scores, window).await?;
        report("loopback reads, 1 pipelined client", n, BLOCK, t.elapsed());

        let clients = 8;
        let per = n / clients;
        let t = Instant::now();
        let mut tasks = JoinSet::new();
        let blockgen = Arc::new(Blocks::new(3));
        for c in 0..clients {
            let blockgen = blockgen.clone();
            let addr = addr.clone();
            tasks.spawn(async move {
                let client = Client::connect(&addr).await?;
                write_pipelined(&client, blockgen, c * per..(c + 1) * per, window).await?;
                client.sync().await?;
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        report(
            "loopback writes, 8 pipelined clients (+sync)",
            per * clients,
            BLOCK,
            t.elapsed(),
        );

        let _ = stop_tx.send(());
        server.await??;
        anyhow::Ok(())
    })?;

    if reopen_blocks > 0 {
        let path = scratch.path().join("reopen");
        let store = LogStore::open(&path)?;
        let t = Instant::now();
        for i in 0..reopen_blocks {
            let mut small = [0u8; 64];
            small[..8].copy_from_slice(&(i as u64).to_be_bytes());
            small[63] = 1;
            store.write(BlockType::DATA, &small)?;
        }
        store.close()?;
        report(
            "filling a store with small blocks (64 B)",
            reopen_blocks,
            64,
            t.elapsed(),
        );
        let t = Instant::now();
        let store = LogStore::open(&path)?;
        let opened = t.elapsed();
        println!(
            "reopen a store of {reopen_blocks} blocks: {:.1} ms",
            opened.as_secs_f64() * 1e3
        );
        let probe = {
            let mut small = [0u8; 64];
            small[..8].copy_from_slice(&((reopen_blocks / 2) as u64).to_be_bytes());
            small[63] = 1;
            Score::of(&small)
        };
        store
            .read(&probe, BlockType::DATA)?
            .context("a block is missing after reopen")?;
    }
    Ok(())
}

async fn write_pipelined(
    client: &Client,
    blockgen: Arc<Blocks>,
    range: std::ops::Range<usize>,
    window: usize,
) -> Result<Vec<Score>> {
    let mut tasks = JoinSet::new();
    let mut scores = Vec::with_capacity(range.len());
    for i in range {
        if tasks.len() >= window {
            scores.push(tasks.join_next().await.expect("tasks")??);
        }
        let client = client.clone();
        let blockgen = blockgen.clone();
        tasks.spawn(async move { client.write(BlockType::DATA, blockgen.get(i)).await });
    }
    while let Some(done) = tasks.join_next().await {
        scores.push(done??);
    }
    Ok(scores)
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
