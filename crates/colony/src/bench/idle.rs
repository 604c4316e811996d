//! `colony bench idle`: what idle environments cost a node before and
//! after they are suspended, how long a login takes to wake one, and how
//! long a suspend takes with 10 MB changed. A single node in this process,
//! driven through its command set and OpenSSH logins on loopback. Needs
//! root (spawns mount and make namespaces).
//!
//! The wake time is from starting `ssh` to the first byte of the command's
//! output, beside its ceiling: the same login to the environment once it
//! is awake.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cpu::{CpuConfig, Environments};
use grid::state::StateDir;
use storage::Node;
use venti::{BlockStore, LogStore};

use crate::bench::density::footprint;
use crate::bench::env::{archive, bench_user, login_port, login_root, ssh_bench};

/// The idle time of the environment whose wakes are timed by waiting for
/// its suspends (the many are suspended at once instead).
const IDLE: &str = "idle=2s";

/// The memory charged to every environment's cgroup on this machine: the
/// `colony` parent group's (which also holds what the groups of ended
/// environments left charged).
fn groups_memory() -> u64 {
    [
        "/sys/fs/cgroup/memory/colony/memory.usage_in_bytes",
        "/sys/fs/cgroup/colony/memory.current",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    .unwrap_or(0)
}

pub fn run(envs: usize, samples: usize, debian: Option<PathBuf>) -> Result<()> {
    if envs == 0 || samples == 0 {
        bail!("--envs and --samples must be at least 1");
    }
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-idle-")
        .tempdir()?;
    let state = StateDir::open(scratch.path().join("state"))?;
    let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
    let key = bench_user(scratch.path(), &state)?;
    let busybox = login_root(
        scratch.path(),
        &["sh", "echo", "cat", "sleep", "dd", "true"],
    )?;
    let root = archive(store.as_ref(), &busybox)?;
    let names = state.scorenames();
    for i in 0..envs {
        names.bind(&format!("b{i}"), &root, &["bench"])?;
    }
    names.bind("changed", &root, &["bench"])?;
    if let Some(dir) = &debian {
        eprintln!("archiving {} …", dir.display());
        let debian_root = archive(store.as_ref(), dir)
            .with_context(|| format!("archiving the Debian root {}", dir.display()))?;
        names.bind("debian", &debian_root, &["bench"])?;
    }
    let environments = Environments::new(
        state.clone(),
        CpuConfig {
            public_host: "127.0.0.1".into(),
            env_listen: "127.0.0.1".into(),
            spawn_max: envs + 2,
            env_ports: (26001, 26001 + envs as u16 + 10),
            ..CpuConfig::default()
        },
    )?;
    environments.provide_store("", store.clone());
    let cpus = Arc::new(storage::local::LocalCpus {
        envs: environments.clone(),
        store,
        users: state.users(),
    });
    let node = Node::new(state, cpus);
    let result = measure(&node, &environments, &key, envs, samples, debian.is_some());
    node.shutdown();
    result
}

fn measure(
    node: &Node,
    envs: &Environments,
    key: &Path,
    count: usize,
    samples: usize,
    debian: bool,
) -> Result<()> {
    let spawn = |name: &str, idle: &str| -> Result<String> {
        let r = node.run("bench", &format!("spawn {name} {idle}"));
        if r.status != 0 {
            bail!("spawn {name}: {}", r.err.trim());
        }
        login_port(&r.out).context("no login port in the spawn's reply")
    };
    let (rss0, _) = footprint();
    let mut ports = Vec::new();
    for i in 0..count {
        ports.push(spawn(&format!("b{i}"), "idle=never")?);
    }
    // One login each, as a user's first: their processes start.
    for port in &ports {
        first_output(key, port, "true")?;
    }
    let (rss_awake, _) = footprint();
    let groups_awake = groups_memory();
    let t = Instant::now();
    for i in 0..count {
        envs.suspend_now("bench", &format!("b{i}"))?;
    }
    let suspending = t.elapsed();
    let (rss_asleep, _) = footprint();
    let groups_asleep = groups_memory();
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "{count} idle busybox environments: node process {:.1} MB more than before them awake, {:.1} MB suspended; colony's memory cgroup {:.1} MB awake, {:.1} MB suspended; suspended one after another in {:.2} s ({:.1} ms each)",
        mb(rss_awake.saturating_sub(rss0)),
        mb(rss_asleep.saturating_sub(rss0)),
        groups_awake as f64 / 1e6,
        groups_asleep as f64 / 1e6,
        suspending.as_secs_f64(),
        suspending.as_secs_f64() * 1e3 / count as f64,
    );
    // Wakes, each beside the same login once awake.
    let (mut woke, mut awake) = (Vec::new(), Vec::new());
    for port in ports.iter().take(samples) {
        woke.push(first_output(key, port, "echo woke")?);
        awake.push(first_output(key, port, "echo woke")?);
    }
    // Asleep again before the node's shutdown, which ends what runs.
    for i in 0..samples.min(count) {
        envs.suspend_now("bench", &format!("b{i}"))?;
    }
    report("busybox", &woke, &awake);
    if debian {
        let port = spawn("debian", IDLE)?;
        first_output(key, &port, "apt-get --version")?;
        let mut woke = Vec::new();
        let mut awake = Vec::new();
        for _ in 0..samples.min(5) {
            wait_until(node, "debian", true)?;
            woke.push(first_output(key, &port, "apt-get --version")?);
            awake.push(first_output(key, &port, "apt-get --version")?);
        }
        report("Debian (apt-get --version)", &woke, &awake);
        node.run("bench", "boom debian");
    }
    // A suspend with 10 MB changed, on its own.
    let port = spawn("changed", "idle=never")?;
    first_output(
        key,
        &port,
        "dd if=/dev/urandom of=/root/ten bs=1M count=10 2>/dev/null; echo written",
    )?;
    let t = Instant::now();
    envs.suspend_now("bench", "changed")?;
    let took = t.elapsed();
    println!(
        "suspend with 10 MB changed: {:.1} ms (save, processes ended, mount and network released)",
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Waits until `name` is (or is not) suspended.
fn wait_until(node: &Node, name: &str, suspended: bool) -> Result<()> {
    let t = Instant::now();
    loop {
        let status = node.run("bench", "status");
        let line = status
            .out
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_default()
            .to_string();
        if line.contains("\tsuspended ") == suspended {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "{name} did not become {} within 60 s",
                if suspended { "suspended" } else { "awake" }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Median of `woke` and of `awake`, and their ratio.
fn report(what: &str, woke: &[Duration], awake: &[Duration]) {
    let median = |d: &[Duration]| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, a) = (median(woke), median(awake));
    println!(
        "{what}: a login's first output from a suspended environment {w:.1} ms (median of {}), from the same environment awake {a:.1} ms: {:.2}x the awake login",
        woke.len(),
        w / a
    );
}

/// Time from starting `ssh … COMMAND` on `port` to the first byte of its
/// output (then waits for it to end, and checks it succeeded).
fn first_output(key: &Path, port: &str, command: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut child = ssh_bench(key, port)
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ssh")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte)?;
    let first = t.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest)?;
    let out = child.wait_with_output()?;
    if !out.status.success() || (n == 0 && command != "true") {
        bail!(
            "ssh -p {port} {command}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(first)
}
