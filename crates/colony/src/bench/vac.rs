//! `colony bench vac TREE`: archive and extract a real tree and print MB/s and
//! files/s, into the embedded store and into a venti server over loopback.
//! Each phase runs several times on fresh stores and the median is printed:
//! single runs on this kind of machine swing with the host's disk writeback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use vac::extract::ExtractOptions;
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Observer};
use venti::{BlockStore, LogStore, RemoteStore, Score};

#[derive(Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
}

impl Observer for Counts {
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
    fn warn(&self, path: &Path, why: &str) {
        eprintln!("warning: {}: {why}", path.display());
    }
}

fn archive(
    store: &dyn BlockStore,
    tree_dir: &Path,
    prev: Option<&vac::Archive>,
    counts: &Counts,
) -> Result<(Score, f64)> {
    let t = Instant::now();
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(store, BlockSizes::default(), counts, prev);
    importer.add(&mut tree, &tree_dir.join("."))?;
    let score = tree.write(store, BlockSizes::default(), None)?;
    Ok((score, t.elapsed().as_secs_f64()))
}

/// Seconds per phase of one run.
struct Run {
    archive: f64,
    again: f64,
    with_prev: f64,
    prev_bytes_read: u64,
    extract: f64,
    loopback: f64,
}

fn one_run(tree_dir: &Path, scratch: &Path) -> Result<(Run, u64, u64)> {
    // SAFETY: sync() has no preconditions; it settles earlier writes so they
    // do not land on this run's clock.
    unsafe { libc::sync() };
    let store = LogStore::open(scratch.join("store"))?;
    let counts = Counts::default();
    let (score, archive_secs) = archive(&store, tree_dir, None, &counts)?;
    let (again, again_secs) = archive(&store, tree_dir, None, &Counts::default())?;
    anyhow::ensure!(again == score, "the same tree must give the same root");
    let prev = vac::Archive::open(&store, &score)?;
    let prev_counts = Counts::default();
    let (_, prev_secs) = archive(&store, tree_dir, Some(&prev), &prev_counts)?;
    drop(prev);

    let out = scratch.join("extracted");
    let t = Instant::now();
    let opened = vac::Archive::open(&store, &score)?;
    vac::extract::extract(
        &opened,
        opened.root(),
        &out,
        ExtractOptions::for_current_user(),
        &Counts::default(),
    )?;
    let extract_secs = t.elapsed().as_secs_f64();
    drop(opened);
    store.close()?;

    let runtime = tokio::runtime::Runtime::new()?;
    let server_store: Arc<dyn BlockStore> = Arc::new(LogStore::open(scratch.join("server"))?);
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(venti::server::serve(listener, server_store, async {
        let _ = stop_rx.await;
    }));
    let remote = RemoteStore::connect_tcp(&addr)?;
    let (remote_score, loopback_secs) = archive(&remote, tree_dir, None, &Counts::default())?;
    anyhow::ensure!(remote_score == score, "the server must get the same root");
    drop(remote);
    let _ = stop_tx.send(());
    runtime.block_on(server)??;
    std::fs::remove_dir_all(scratch)?;
    let run = Run {
        archive: archive_secs,
        again: again_secs,
        with_prev: prev_secs,
        prev_bytes_read: prev_counts.bytes.load(Ordering::Relaxed),
        extract: extract_secs,
        loopback: loopback_secs,
    };
    Ok((
        run,
        counts.files.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
    ))
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn run(tree_dir: &Path, dir: Option<PathBuf>, runs: usize) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-vac-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("colony-bench-vac-")
            .tempdir()?,
    };
    println!(
        "vac benchmark on {}, median of {runs} runs (scratch in {})",
        tree_dir.display(),
        scratch.path().display()
    );
    let mut results = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for i in 0..runs.max(1) {
        let (run, f, b) = one_run(tree_dir, &scratch.path().join(format!("run{i}")))?;
        results.push(run);
        (files, bytes) = (f, b);
    }
    let line = |what: &str, secs: Vec<f64>| {
        let (mid, lo, hi) = median(secs);
        println!(
            "{what:<44} {mid:>7.3} s {:>8.1} MB/s {:>9.0} files/s  (range {lo:.3}..{hi:.3} s; {files} files, {:.1} MB)",
            bytes as f64 / mid / 1e6,
            files as f64 / mid,
            bytes as f64 / 1e6
        );
    };
    line(
        "archive into the embedded store",
        results.iter().map(|r| r.archive).collect(),
    );
    line(
        "archive again, all blocks already stored",
        results.iter().map(|r| r.again).collect(),
    );
    let (mid, lo, hi) = median(results.iter().map(|r| r.with_prev).collect());
    println!(
        "{:<44} {mid:>7.3} s  (range {lo:.3}..{hi:.3} s; {} bytes of file content read)",
        "re-archive with -d (unchanged tree)",
        results.iter().map(|r| r.prev_bytes_read).max().unwrap_or(0)
    );
    line(
        "extract from the embedded store",
        results.iter().map(|r| r.extract).collect(),
    );
    line(
        "archive into a venti server over loopback",
        results.iter().map(|r| r.loopback).collect(),
    );
    Ok(())
}
