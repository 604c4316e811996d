//! `colony bench jobs`: a single-node grid started in this process as
//! `colony serve` starts one, and `run busybox -- true` through its front
//! door with OpenSSH's client: the first run (cold: nothing of the root in
//! any cache) and the median of the rest (warm). Beside them, the ceiling
//! any command through the front door has: `status` over the same client
//! (the SSH handshake and one command). Needs root (spawn) and OpenSSH.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use grid::state::StateDir;
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, LogStore};

pub fn run(runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-jobs-")
        .tempdir()?;
    let state_dir = scratch.path().join("state");
    let key = {
        let state = StateDir::open(state_dir.clone())?;
        let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
        let key = crate::bench::env::bench_user(scratch.path(), &state)?;
        let busybox = crate::bench::env::busybox_root(scratch.path())?;
        std::os::unix::fs::symlink("busybox", busybox.join("bin/true"))?;
        let mut t = Tree::default();
        DirImporter::new(store.as_ref(), BlockSizes::default(), &Quiet, None)
            .add(&mut t, &busybox.join("."))?;
        let root = t.write(store.as_ref(), BlockSizes::default(), None)?;
        store.sync()?;
        state.scorenames().bind("busybox", &root, &["bench"])?;
        key
        // The store is closed here: the node opens it.
    };
    let mut sources = node::Sources::new();
    for (setting, value) in [
        ("state", state_dir.display().to_string()),
        ("listen", "127.0.0.1:0".into()),
        ("public-host", "127.0.0.1".into()),
    ] {
        sources.flag(setting, value)?;
    }
    let node = node::Node::start(node::Config::from_sources(&sources)?)?;
    let result = match node.front_door {
        Some(door) => measure(&key, door.port(), runs),
        None => Err(anyhow::anyhow!("the node has no front door")),
    };
    node.shutdown();
    result
}

fn measure(key: &Path, port: u16, runs: usize) -> Result<()> {
    let door = |command: &str| -> Result<Duration> {
        let t = Instant::now();
        let out = crate::bench::env::ssh_bench(key, &port.to_string())
            .arg(command)
            .output()?;
        if !out.status.success() {
            bail!("{command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed())
    };
    println!(
        "jobs benchmark: a single-node grid in this process, OpenSSH's client; median of {runs} warm runs"
    );
    let cold = door("run busybox -- true")?;
    let mut warm = Vec::new();
    let mut ceiling = Vec::new();
    for _ in 0..runs.max(1) {
        warm.push(door("run busybox -- true")?);
        ceiling.push(door("status")?);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (warm, ceiling) = (median(warm), median(ceiling));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<52} {:>8.1} ms",
        "status through the front door (the ceiling)",
        ms(ceiling)
    );
    println!(
        "{:<52} {:>8.1} ms",
        "run busybox -- true, cold (the first)",
        ms(cold)
    );
    println!(
        "{:<52} {:>8.1} ms ({:.1}x the ceiling)",
        "run busybox -- true, warm",
        ms(warm),
        ms(warm) / ms(ceiling)
    );
    Ok(())
}
