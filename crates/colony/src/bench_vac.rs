//! `colony bench vac TREE`: archive and extract a real tree and print MB/s and
//! files/s, into the embedded store and into a venti server over loopback.

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
) -> Result<(Score, Counts, f64)> {
    let counts = Counts::default();
    let t = Instant::now();
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(store, BlockSizes::default(), &counts, prev);
    importer.add(&mut tree, &tree_dir.join("."))?;
    let score = tree.write(store, BlockSizes::default(), None)?;
    Ok((score, counts, t.elapsed().as_secs_f64()))
}

fn line(what: &str, counts: &Counts, secs: f64, total_bytes: u64) {
    let files = counts.files.load(Ordering::Relaxed);
    println!(
        "{what:<44} {:>7.3} s {:>8.1} MB/s {:>9.0} files/s  ({files} files, {:.1} MB)",
        secs,
        total_bytes as f64 / secs / 1e6,
        files as f64 / secs,
        total_bytes as f64 / 1e6
    );
}

pub fn run(tree_dir: &Path, dir: Option<PathBuf>) -> Result<()> {
    let scratch = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("colony-bench-vac-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("colony-bench-vac-")
            .tempdir()?,
    };
    println!(
        "vac benchmark on {} (scratch in {})",
        tree_dir.display(),
        scratch.path().display()
    );

    // Into the embedded store.
    let store = LogStore::open(scratch.path().join("store"))?;
    let (score, counts, secs) = archive(&store, tree_dir, None)?;
    let total = counts.bytes.load(Ordering::Relaxed);
    line("archive into the embedded store", &counts, secs, total);

    let (again, counts2, secs2) = archive(&store, tree_dir, None)?;
    line(
        "archive again, all blocks already stored",
        &counts2,
        secs2,
        total,
    );
    assert_eq!(again, score, "the same tree must give the same root");

    let prev = vac::Archive::open(&store, &score)?;
    let (_, counts3, secs3) = archive(&store, tree_dir, Some(&prev))?;
    println!(
        "{:<44} {:>7.3} s  ({} files, {} bytes read)",
        "re-archive with -d (unchanged tree)",
        secs3,
        counts3.files.load(Ordering::Relaxed),
        counts3.bytes.load(Ordering::Relaxed)
    );

    let out = scratch.path().join("extracted");
    let counts4 = Counts::default();
    let t = Instant::now();
    let opened = vac::Archive::open(&store, &score)?;
    vac::extract::extract(
        &opened,
        opened.root(),
        &out,
        ExtractOptions::for_current_user(),
        &counts4,
    )?;
    line(
        "extract from the embedded store",
        &counts4,
        t.elapsed().as_secs_f64(),
        total,
    );
    drop(opened);
    drop(prev);
    store.close()?;
    std::fs::remove_dir_all(&out)?;

    // Into a venti server over loopback.
    let runtime = tokio::runtime::Runtime::new()?;
    let server_store: Arc<dyn BlockStore> =
        Arc::new(LogStore::open(scratch.path().join("server"))?);
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(venti::server::serve(listener, server_store, async {
        let _ = stop_rx.await;
    }));
    let remote = RemoteStore::connect(&addr)?;
    let (remote_score, counts5, secs5) = archive(&remote, tree_dir, None)?;
    line(
        "archive into a venti server over loopback",
        &counts5,
        secs5,
        total,
    );
    assert_eq!(remote_score, score);
    drop(remote);
    let _ = stop_tx.send(());
    runtime.block_on(server)??;
    Ok(())
}
