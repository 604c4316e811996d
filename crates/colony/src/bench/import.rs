//! `colony bench import TREE`: a tar of TREE imported through a node's
//! SSH front door on loopback (`ssh -p PORT you@127.0.0.1 import NAME <
//! TAR`), as a user brings a root: MB/s of the tar stream, first into an
//! empty store and then again, when every block is already stored and
//! what is left is the SSH transport, the tar parse and the hashing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cpu::CpuConfig;
use grid::state::StateDir;
use storage::Node;
use venti::{BlockStore, LogStore};

pub fn run(tree: &Path, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-import-")
        .tempdir()?;
    let dir = scratch.path();
    let tar = dir.join("root.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar(1)")?;
    if !made.success() {
        bail!("tar of {} failed", tree.display());
    }
    let bytes = std::fs::metadata(&tar)?.len();
    let key = crate::bench::env::new_key(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "import through the front door over ssh on loopback: a {:.1} MB tar of {}; median of {runs}",
        bytes as f64 / 1e6,
        tree.display()
    );
    let mut first = Vec::new();
    let mut again = Vec::new();
    for run in 0..runs.max(1) {
        // A fresh node each run, so the first import always meets an
        // empty store.
        let state = StateDir::open(dir.join(format!("state{run}")))?;
        crate::bench::env::add_bench_user(&state, &key)?;
        let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
        let host_key = grid::ssh::host_key(&state.host_key())?;
        let node = Arc::new(
            Node::local(
                state,
                store.clone(),
                CpuConfig {
                    public_host: "127.0.0.1".into(),
                    ..CpuConfig::default()
                },
            )?
            .with_store(store),
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(storage::frontdoor::serve(
            node.clone(),
            listener,
            host_key,
            grid::ssh_server::LOGIN_GRACE,
            async {
                let _ = stopped.await;
            },
        ));
        let import = |name: &str| -> Result<f64> {
            let t = Instant::now();
            let out = crate::bench::env::ssh_bench(&key, &port.to_string())
                .args(["import", name])
                .stdin(std::fs::File::open(&tar)?)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()?;
            if !out.status.success() {
                bail!("import: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
        };
        first.push(import("first")?);
        again.push(import("again")?);
        let _ = stop.send(());
        let _ = runtime.block_on(serving);
        node.shutdown();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "{:>7.1} MB/s (range {:.1}..{:.1})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        )
    };
    println!("{:<48} {}", "into an empty store", median(first));
    println!(
        "{:<48} {}",
        "again (every block already stored)",
        median(again)
    );
    Ok(())
}
