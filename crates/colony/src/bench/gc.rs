//! `colony bench gc`: what a collection costs on a large store, made
//! synthetically in this process.
//!
//! The store holds `--blocks` data blocks of `--block-size` bytes, under
//! pointer blocks of 400 scores each (a file's tree, as vac makes them);
//! every `--dead`th group of 400 is garbage (no root points at it). The
//! collection is the node's without the node: the live roots are marked
//! into a Bloom filter of `--memory` (and a bounded set of the pointer
//! blocks walked), then the log is swept.
//!
//! Printed: the mark's and the sweep's time; the peak memory of the
//! collection (run in a process of its own: its high-water mark, opening
//! the store included) beside the setting; the sweep's rate over the log,
//! from cold, beside a cold sequential read of the same log (its
//! ceiling); the disk given back; and ingest with and without SHA-1
//! collision detection (on the first blocks, into two scratch stores),
//! beside plain SHA-1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use venti::reach::{Bloom, Marker};
use venti::{BlockStore, BlockType, LogStore, Score, SweepLimits};

/// Scores per pointer block (8 KiB / 20 bytes, as vac's).
const FANOUT: usize = 400;

pub fn run(
    blocks: usize,
    block_size: usize,
    dead_every: usize,
    memory: u64,
    dir: Option<PathBuf>,
) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-gc-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("colony-bench-gc-")
            .tempdir()?,
    };
    let block_size = block_size.clamp(24, venti::MAX_BLOCK_SIZE);
    println!(
        "gc benchmark: {blocks} blocks of {block_size} bytes under pointer blocks of {FANOUT}, every {dead_every}th group dead, {} MB for the collection; scratch in {}",
        memory >> 20,
        scratch.path().display()
    );
    ingest_with_and_without_detection(scratch.path(), blocks.min(200_000), block_size)?;

    let dir = scratch.path().join("store");
    let (roots, dead_blocks) = make_store(&dir, blocks, block_size, dead_every)?;
    std::fs::write(
        dir.join("roots"),
        roots.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )?;
    // The collection runs in a process of its own, so its peak memory is
    // all it needs, opening the store included.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "gc-collect",
            "--memory-mb",
            &(memory >> 20).to_string(),
        ])
        .arg(&dir)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "the collection failed");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("({dead_blocks} blocks were dead)");
    Ok(())
}

/// The collection of `dir`'s store (made by [`run`]), from cold: the
/// log is dropped from the page cache first, and so is it before its
/// ceiling, a plain sequential read of it.
pub fn collect(dir: &Path, memory: u64) -> Result<()> {
    let roots: Vec<Score> = std::fs::read_to_string(dir.join("roots"))?
        .lines()
        .map(|l| l.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let store = LogStore::open(dir)?;
    let log_bytes = store.durable_end();
    // The first read from "disk" of a fresh file is slower on this kind
    // of virtual machine (the host caches what the guest read once): the
    // ceiling is the second, as the sweep's read is.
    cold_read_rate(&store.log_path())?;
    let ceiling = cold_read_rate(&store.log_path())?;
    forget_cached(&store.log_path())?;
    let t = Instant::now();
    let count = store.block_count()?;
    let bloom = Bloom::new(count + count / 8, 16, memory * 3 / 4);
    let filter = bloom.bytes();
    let mut marker = Marker::new(&store, bloom, (memory / 4) as usize);
    for root in &roots {
        marker.mark(
            *root,
            BlockType::at_depth(BlockType::DATA, 1).expect("depth 1"),
        )?;
    }
    let (bloom, marked) = marker.finish();
    let mark_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let swept = store.sweep(
        store.durable_end(),
        &|s, _| bloom.contains(s),
        SweepLimits::within(memory.saturating_sub(filter)),
        &mut |_, _| {},
    )?;
    let sweep_secs = t.elapsed().as_secs_f64();
    let peak = peak_kib()?;
    println!(
        "mark: {} roots, {} blocks ({} pointer blocks read) in {mark_secs:.1} s, a {:.1} MB filter ({:.2}% of the dead kept by mistake)",
        marked.roots,
        marked.blocks,
        marked.reads,
        filter as f64 / 1e6,
        bloom.false_positive_rate(marked.blocks) * 100.0
    );
    let rate = log_bytes as f64 / 1e6 / sweep_secs;
    println!(
        "sweep: {} records, {} blocks dropped, in {sweep_secs:.1} s: {rate:.0} MB/s of log, from cold ({:.2}x a cold sequential read of it, {ceiling:.0} MB/s)",
        swept.records,
        swept.blocks_dropped,
        rate / ceiling
    );
    println!(
        "collection: {:.1} s in all; peak memory of the process that opened the store and collected it: {:.1} MB (setting {} MB)",
        mark_secs + sweep_secs,
        peak as f64 / 1024.0,
        memory >> 20
    );
    println!(
        "disk: {:.1} MB of log, {:.1} MB given back ({:.1} MB skipped in {} skips)",
        swept.disk_before as f64 / 1e6,
        swept.disk_before.saturating_sub(swept.disk_after) as f64 / 1e6,
        swept.bytes_skipped as f64 / 1e6,
        swept.skips
    );
    Ok(())
}

/// Block `i` of the synthetic store: unique, incompressible enough.
fn block(i: usize, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Writes the store: groups of [`FANOUT`] blocks, each under a pointer
/// block; the live groups' pointer blocks are the roots. Returns them and
/// how many blocks are dead.
fn make_store(
    dir: &Path,
    blocks: usize,
    size: usize,
    dead_every: usize,
) -> Result<(Vec<Score>, u64)> {
    let store = LogStore::open(dir)?.without_collision_detection();
    let t = Instant::now();
    let pointer_type = BlockType::at_depth(BlockType::DATA, 1).context("depth 1")?;
    let (mut roots, mut dead) = (Vec::new(), 0u64);
    let mut group = Vec::with_capacity(FANOUT * 20);
    for i in 0..blocks {
        let score = store.write(BlockType::DATA, &block(i, size))?;
        group.extend_from_slice(&score.0);
        if group.len() == FANOUT * 20 || i + 1 == blocks {
            let ptr = store.write(pointer_type, &group)?;
            let g = i / FANOUT;
            if dead_every > 0 && g.is_multiple_of(dead_every) {
                dead += (group.len() / 20) as u64 + 1;
            } else {
                roots.push(ptr);
            }
            group.clear();
        }
    }
    store.sync()?;
    let bytes = store.durable_end();
    store.close()?;
    println!(
        "made the store: {blocks} blocks, {:.1} MB of log, in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok((roots, dead))
}

/// Ingest of `n` new blocks with and without collision detection, each
/// into a store of its own, beside plain SHA-1 of the same blocks.
fn ingest_with_and_without_detection(dir: &Path, n: usize, size: usize) -> Result<()> {
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| block(i + (1 << 40), size)).collect();
    let mb = (n * size) as f64 / 1e6;
    let t = Instant::now();
    for b in &blocks {
        std::hint::black_box(Score::of(b));
    }
    let sha1 = mb / t.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for detect in [false, true] {
        let path = dir.join(format!("ingest-{detect}"));
        let store = LogStore::open(&path)?;
        let store = if detect {
            store
        } else {
            store.without_collision_detection()
        };
        let t = Instant::now();
        for b in &blocks {
            store.write(BlockType::DATA, b)?;
        }
        store.sync()?;
        rates.push(mb / t.elapsed().as_secs_f64());
        drop(store);
        std::fs::remove_dir_all(&path)?;
    }
    println!(
        "ingest of {n} new blocks: {:.1} MB/s with collision detection, {:.1} MB/s without ({:.2}x); plain SHA-1 of them {sha1:.0} MB/s",
        rates[1],
        rates[0],
        rates[1] / rates[0]
    );
    Ok(())
}

/// Drops `path` from the page cache (after writing it back), so that the
/// next read of it comes from the disk.
fn forget_cached(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    // SAFETY: fadvise on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(
        rc == 0,
        "posix_fadvise: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    Ok(())
}

/// A plain sequential read of `path` from the disk, in MB/s.
fn cold_read_rate(path: &Path) -> Result<f64> {
    forget_cached(path)?;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (t, mut total) = (Instant::now(), 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn peak_kib() -> Result<u64> {
    status_kib("VmHWM:")
}
