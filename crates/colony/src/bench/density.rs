//! `colony bench density`: how many idle environments a node holds, and
//! what they cost it. A node in this process spawns busybox environments
//! (rootless, private network, as by default) one after another and reports
//! its own memory and threads per environment; then 40 spawns at once.
//! Needs root (spawn mounts and makes namespaces).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use cpu::CpuConfig;
use grid::state::StateDir;
use storage::Node;
use venti::{BlockStore, LogStore};

/// (resident kB, threads) of this process.
pub(crate) fn footprint() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

pub fn run(envs: usize, concurrent: usize, options: &str) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-density-")
        .tempdir()?;
    let state = StateDir::open(scratch.path().join("state"))?;
    let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
    let busybox = crate::bench::env::login_root(scratch.path(), &["sh", "echo", "cat", "sleep"])?;
    let root = crate::bench::env::archive(store.as_ref(), &busybox)?;
    // One user, a name per environment (environments are per user and name).
    state.users().add(
        "bench",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ6dDrh0mG5t0u4Cv8gxT1xAG7Q0v2sE7VZ2Yy3a1xQ",
    )?;
    let total = envs + concurrent;
    let names = state.scorenames();
    for i in 0..total {
        names.bind(&format!("b{i}"), &root, &["bench"])?;
    }
    let config = CpuConfig {
        public_host: "127.0.0.1".into(),
        env_listen: "127.0.0.1".into(),
        allow_host_net: true,
        allow_rootful: true,
        spawn_max: total,
        env_ports: (24001, 24000 + total as u16 + 10),
        ..CpuConfig::default()
    };
    let node = Node::local(state, store, config)?;
    let result = measure(&node, envs, concurrent, options);
    let t = Instant::now();
    let live = node.live();
    node.shutdown();
    println!(
        "ending all {live} at the node's shutdown: {:.2} s ({:.1} ms each)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3 / live.max(1) as f64
    );
    result
}

/// Holds `envs` idle environments b0…, then spawns `concurrent` more at
/// once; prints memory and threads per environment and the spawn rate.
pub(crate) fn measure(node: &Node, envs: usize, concurrent: usize, options: &str) -> Result<()> {
    let spawn = |i: usize| {
        let r = node.run("bench", &format!("spawn b{i} {options}"));
        if r.status != 0 {
            bail!("spawn b{i}: {}", r.err.trim());
        }
        Ok(())
    };
    let (rss0, threads0) = footprint();
    let t = Instant::now();
    for i in 0..envs {
        spawn(i)?;
    }
    let one_by_one = t.elapsed();
    // Let the environments settle into idleness.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (rss1, threads1) = footprint();
    println!(
        "{envs} idle busybox environments ({}): node memory {:.2} MB each ({:.1} MB in all), {:.1} threads each; spawned one by one in {:.2} s",
        if options.is_empty() {
            "rootless, private network"
        } else {
            options
        },
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / envs as f64,
        rss1 as f64 / 1024.0,
        (threads1.saturating_sub(threads0)) as f64 / envs as f64,
        one_by_one.as_secs_f64()
    );
    let t = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (envs..envs + concurrent)
            .map(|i| s.spawn(move || spawn(i)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("a spawn thread panicked".into()),
            })
            .collect()
    });
    let took = t.elapsed();
    if let Some(first) = failures.first() {
        bail!(
            "{} of {concurrent} concurrent spawns failed, e.g. {first}",
            failures.len()
        );
    }
    println!(
        "{concurrent} spawns at once (on top of the {envs}): {:.2} s, {:.0} spawns/s",
        took.as_secs_f64(),
        concurrent as f64 / took.as_secs_f64()
    );
    Ok(())
}
