//! `colony bench fossil TREE`: a real root (e.g. a debootstrap minbase) mounted
//! through FUSE from the embedded store; prints mount time, what a first `cat`
//! fetches, FUSE read rates, a cold `find`, a one-file save, and tar unpacking.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use fossil::{CacheConfig, Fs};
use venti::{BlockStore, BlockType, LogStore, Score, StoreError};

/// Counts blocks written through it.
struct CountingWrites {
    inner: Arc<dyn BlockStore>,
    writes: AtomicU64,
}

impl BlockStore for CountingWrites {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(score, ty)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

fn read_all(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

pub fn run(tree: &Path, dir: Option<PathBuf>, big_mb: u64) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-fossil-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("colony-bench-fossil-")
            .tempdir()?,
    };
    println!(
        "fossil benchmark on {} (scratch in {})",
        tree.display(),
        scratch.path().display()
    );
    let log: Arc<dyn BlockStore> = Arc::new(LogStore::open(scratch.path().join("store"))?);
    let store = Arc::new(CountingWrites {
        inner: log,
        writes: AtomicU64::new(0),
    });

    // The root, plus one large file of pseudo-random bytes for read rates.
    let big_dir = scratch.path().join("big");
    std::fs::create_dir_all(&big_dir)?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..big_mb << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(big_dir.join("big"), &data)?;
    drop(data);
    let root = crate::bench::env::archive(store.as_ref(), tree)?;
    let big_root = crate::bench::env::archive(store.as_ref(), &big_dir)?;

    let mnt = scratch.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let t = Instant::now();
    let fs = Arc::new(Fs::open(
        store.clone(),
        root,
        CacheConfig::memory_default(),
    )?);
    let session = fusefs::mount(fs.clone(), &mnt)?;
    let mounted = t.elapsed();
    println!(
        "{:<48} {:>9.1} ms",
        "open + FUSE mount",
        mounted.as_secs_f64() * 1e3
    );

    let before = fs.usage().fetched_bytes;
    let t = Instant::now();
    let n = read_all(&mnt.join("etc/os-release"))?;
    println!(
        "{:<48} {:>9.1} ms, {} bytes fetched from venti for a {n}-byte file",
        "cat /etc/os-release on a fresh mount",
        t.elapsed().as_secs_f64() * 1e3,
        fs.usage().fetched_bytes - before
    );

    let t = Instant::now();
    let out = Command::new("find")
        .arg(&mnt)
        .stderr(Stdio::null())
        .output()?;
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    println!(
        "{:<48} {:>9.1} ms for {lines} names",
        "find / | wc -l, cold",
        t.elapsed().as_secs_f64() * 1e3
    );

    // One changed file, saved.
    std::fs::write(mnt.join("etc/motd"), b"changed by the benchmark\n")?;
    let writes = store.writes.load(Ordering::Relaxed);
    let t = Instant::now();
    let report = fs.save()?;
    println!(
        "{:<48} {:>9.1} ms, {} blocks written",
        "save after changing one file",
        t.elapsed().as_secs_f64() * 1e3,
        store.writes.load(Ordering::Relaxed) - writes
    );

    drop(session);

    // Unpack a tarball of the tree onto a mount with spawndisk's 1 GB disk
    // cache (the tree is larger than spawn's 100 MB).
    let config = CacheConfig::Disk {
        path: scratch.path().join("cache"),
        bytes: 1 << 30,
        read_cache: 64 << 20,
    };
    let fs = Arc::new(Fs::open(store.clone(), report.score, config)?);
    let session = fusefs::mount(fs, &mnt)?;
    let tar = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .args(["-cf", "-", "."])
        .output()?;
    if !tar.status.success() {
        bail!("tar of {} failed", tree.display());
    }
    let target = mnt.join("unpacked");
    std::fs::create_dir_all(&target)?;
    let t = Instant::now();
    let mut untar = Command::new("tar")
        .arg("-C")
        .arg(&target)
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::io::Write::write_all(untar.stdin.as_mut().context("tar stdin")?, &tar.stdout)?;
    drop(untar.stdin.take());
    let ok = untar.wait()?.success();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:<48} {:>9.1} MB/s ({:.1} MB in {secs:.2} s{})",
        "unpack a tarball of the tree onto the mount",
        tar.stdout.len() as f64 / secs / 1e6,
        tar.stdout.len() as f64 / 1e6,
        if ok { "" } else { ", tar failed: cache full?" }
    );
    drop(session);

    // Sequential reads of the large file through FUSE.
    let fs = Arc::new(Fs::open(
        store.clone(),
        big_root,
        CacheConfig::memory_default(),
    )?);
    let session = fusefs::mount(fs, &mnt)?;
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        let n = read_all(&mnt.join("big"))?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:<48} {:>9.1} MB/s ({} MB)",
            format!("sequential read of a large file, {pass}"),
            n as f64 / secs / 1e6,
            n >> 20
        );
    }
    drop(session);
    Ok(())
}
