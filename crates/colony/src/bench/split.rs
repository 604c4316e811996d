//! `colony bench split [TREE]`: a storage node and cpu nodes in this
//! process, linked over loopback by mutual TLS exactly as in a grid (the
//! control link, venti for blocks), once directly and once through the
//! delay proxy at each given round trip. Times spawn → first command output
//! (over the environment's own SSH login) on a cpu node whose block cache
//! is cold (without the root's working-set list, and with it) and warm,
//! for busybox and TREE, and counts what the cpu node fetched from the
//! storage node to do it and to `cat /etc/os-release`. With the list, the
//! bytes fetched are set beside the bytes of the blocks the start read
//! (those the list holds).
//! Needs root (spawn mounts and makes namespaces) and the OpenSSH client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cpu::agent::{Agent, StorageNode};
use cpu::{CpuConfig, Environments};
use grid::state::StateDir;
use storage::Node;
use storage::placement::Pool;
use venti::{BlockCache, BlockStore, LogStore};

/// One cpu node as the benchmark drives it.
struct Cpu {
    label: String,
    node: Node,
    pool: Arc<Pool>,
    cache: Arc<BlockCache>,
    envs: Arc<Environments>,
}

fn median(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>8.1} ms (range {:.1}..{:.1})",
        v[v.len() / 2] * 1e3,
        v[0] * 1e3,
        v[v.len() - 1] * 1e3
    )
}

pub fn run(tree: Option<&Path>, runs: usize, rtts_ms: &[u64], options: &str) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-split-")
        .tempdir()?;
    let dir = scratch.path();
    let ca = dir.join("ca");
    link::ca::init(&ca, "bench")?;
    for (name, role) in [("s1", link::Role::Storage), ("c1", link::Role::Cpu)] {
        link::ca::issue(
            &ca,
            name,
            role,
            link::ca::Validity::Days(1),
            &dir.join(format!("{name}.tls")),
        )?;
    }
    let storage_link = link::Link::load(&dir.join("s1.tls"))?;
    let cpu_link = link::Link::load(&dir.join("c1.tls"))?;

    let state = StateDir::open(dir.join("s1"))?;
    let store = Arc::new(LogStore::open(state.store_dir())?);
    let key = crate::bench::env::bench_user(dir, &state)?;
    let busybox = crate::bench::env::busybox_root(dir)?;
    std::fs::write(busybox.join("etc/os-release"), "NAME=busybox\n")?;
    let mut roots: Vec<(&str, PathBuf)> = vec![("busybox", busybox)];
    if let Some(t) = tree {
        roots.push(("tree", t.to_path_buf()));
    }
    for (name, root) in &roots {
        let score = crate::bench::env::archive(store.as_ref(), root)
            .with_context(|| format!("importing {}", root.display()))?;
        state.scorenames().bind(name, &score, &["bench"])?;
    }
    store.sync()?;

    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();
    // The storage node's venti service, and the proxy in front of it.
    let venti = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let venti_addr = venti.local_addr()?;
    runtime.spawn(venti::server::serve_with(
        venti,
        store.clone() as Arc<dyn BlockStore>,
        storage_link.admitter(vec![link::Role::Cpu], "a venti link"),
        std::future::pending(),
    ));
    let far = |to: std::net::SocketAddr, rtt_ms: u64| -> Result<std::net::SocketAddr> {
        let shape = crate::bench::slow_link::Shape {
            delay: Duration::from_micros(rtt_ms * 500),
            rate: 0,
        };
        let l = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = l.local_addr()?;
        runtime.spawn(crate::bench::slow_link::run(l, to.to_string(), shape));
        Ok(addr)
    };
    let mut cpus = Vec::new();
    // The third cpu node holds the density figures' environments.
    let (envs, concurrent) = (100, 40);
    let mut places = vec![("direct link".to_string(), venti_addr, None, 5)];
    for &rtt in rtts_ms {
        places.push((
            format!("{rtt} ms round trip"),
            far(venti_addr, rtt)?,
            Some(rtt),
            5,
        ));
    }
    let measured = places.len();
    places.push(("density".to_string(), venti_addr, None, envs + concurrent));
    for (i, (label, venti, delayed, slots)) in places.into_iter().enumerate() {
        // A storage node's placement for each cpu node, so each spawn goes
        // where the figure says.
        let pool = Arc::new(Pool::new(
            "s1".into(),
            format!("tls!127.0.0.1!{}", venti.port()),
            state.clone(),
        ));
        let control = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let mut control_addr = control.local_addr()?;
        runtime.spawn(storage::placement::serve(
            pool.clone(),
            storage_link.clone(),
            control,
        ));
        if let Some(rtt) = delayed {
            control_addr = far(control_addr, rtt)?;
        }
        let cpu_state = StateDir::open(dir.join(format!("c{i}")))?;
        let cache = BlockCache::open(&cpu_state.root.join("blockcache"), 4 << 30)?;
        let first_port = 25001 + i as u16 * 200;
        let envs = Environments::new(
            cpu_state,
            CpuConfig {
                public_host: "127.0.0.1".into(),
                env_listen: "127.0.0.1".into(),
                allow_host_net: true,
                allow_rootful: true,
                env_ports: (first_port, first_port + slots as u16 + 10),
                spawn_max: slots,
                ..CpuConfig::default()
            },
        )?;
        let agent = Agent::new(
            envs.clone(),
            cpu_link.clone(),
            cache.clone(),
            Duration::from_secs(30),
        );
        runtime.spawn(agent.run(StorageNode {
            name: "s1".into(),
            addr: format!("tls!127.0.0.1!{}", control_addr.port()),
        }));
        let node = Node::new(state.clone(), pool.clone());
        cpus.push(Cpu {
            label,
            node,
            pool,
            cache,
            envs,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cpus.iter().all(|c| c.pool.cpus().contains("linked")) {
        if Instant::now() > deadline {
            bail!("the cpu nodes did not link within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "storage/cpu split: median of {runs} runs; spawn options {:?}; figures from `spawn` to the first output of `echo ready` over the environment's SSH login",
        if options.is_empty() {
            "(the node's: rootless, private network)"
        } else {
            options
        }
    );
    let result = measure(
        &cpus[..measured],
        &roots,
        &key,
        runs,
        options,
        &state,
        store.as_ref(),
    )
    .and_then(|()| {
        // Idle environments placed on a cpu node through the control link:
        // node memory (both nodes are this process) and spawns at once.
        let busybox = state
            .scorenames()
            .lookup("busybox")?
            .context("busybox bound")?;
        for i in 0..envs + concurrent {
            state
                .scorenames()
                .bind(&format!("b{i}"), &busybox.root, &["bench"])?;
        }
        crate::bench::density::measure(&cpus[measured].node, envs, concurrent, options)
    });
    for c in &cpus {
        c.envs.shutdown();
    }
    result
}

/// Runs `command` over the login a spawn's `reply` names, as `bench`.
pub(crate) fn ssh(key: &Path, reply: &str, command: &str) -> Result<String> {
    let port = reply
        .lines()
        .find_map(|l| l.strip_prefix("ssh -p "))
        .and_then(|l| l.split_whitespace().next())
        .context("no login in the spawn's reply")?;
    let out = crate::bench::env::ssh_bench(key, port)
        .arg(command)
        .output()?;
    if !out.status.success() {
        bail!(
            "{command} in the environment: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn measure(
    cpus: &[Cpu],
    roots: &[(&str, PathBuf)],
    key: &Path,
    runs: usize,
    options: &str,
    state: &StateDir,
    store: &dyn BlockStore,
) -> Result<()> {
    for cpu in cpus {
        for (name, dir) in roots {
            let root = state
                .scorenames()
                .lookup(name)?
                .context("a bench root is bound")?
                .root;
            for start in [Start::Cold, Start::ColdWithList, Start::Warm] {
                if start == Start::ColdWithList {
                    wait_for_list(cpu, state, &root, name, key, options)?;
                }
                cpu.pool
                    .offer_working_sets
                    .store(start == Start::ColdWithList, Ordering::Relaxed);
                let mut first = Vec::new();
                let (mut fetched_blocks, mut fetched_bytes, mut waits) = (0, 0, 0);
                let mut cat_bytes = 0;
                for _ in 0..runs.max(1) {
                    if start != Start::Warm {
                        cpu.cache.clear();
                    }
                    let before = cpu.cache.stats();
                    let t = Instant::now();
                    let r = cpu.node.run("bench", &format!("spawn {name} {options}"));
                    if r.status != 0 {
                        bail!("spawn {name}: {}", r.err.trim());
                    }
                    let out = ssh(key, &r.out, "echo ready")?;
                    first.push(t.elapsed().as_secs_f64());
                    if out != "ready\n" {
                        bail!("the first command in {name} printed {out:?}");
                    }
                    let after = cpu.cache.stats();
                    fetched_blocks = after.added - before.added;
                    waits = after.misses - before.misses;
                    fetched_bytes = after.added_bytes - before.added_bytes;
                    ssh(key, &r.out, "cat /etc/os-release")?;
                    cat_bytes = cpu.cache.stats().added_bytes - after.added_bytes;
                    cpu.node.run("bench", &format!("boom {name}"));
                }
                let shown = if *name == "tree" {
                    dir.display().to_string()
                } else {
                    "busybox".to_string()
                };
                let per_read = match start {
                    Start::ColdWithList => {
                        let read = list_bytes(state, store, &root)?;
                        format!(
                            "; fetched/read {:.2} ({:.1} KB read)",
                            fetched_bytes as f64 / read.max(1) as f64,
                            read as f64 / 1e3
                        )
                    }
                    _ => String::new(),
                };
                println!(
                    "{:<64} {}   fetched {fetched_blocks} blocks, {:.1} KB ({waits} reads waited on the link){per_read}; then cat /etc/os-release {:.1} KB",
                    format!("{shown}, {}, {}", start.label(), cpu.label),
                    median(first),
                    fetched_bytes as f64 / 1e3,
                    cat_bytes as f64 / 1e3
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// An empty block cache, the spawn given no working-set list.
    Cold,
    /// An empty block cache, the spawn given the root's list.
    ColdWithList,
    Warm,
}

impl Start {
    fn label(self) -> &'static str {
        match self {
            Start::Cold => "cold, no list",
            Start::ColdWithList => "cold, with its list",
            Start::Warm => "warm cache",
        }
    }
}

/// Waits until `root` has a working-set list, spawning it once (and
/// waiting out the recording window) if it has none.
fn wait_for_list(
    cpu: &Cpu,
    state: &StateDir,
    root: &venti::Score,
    name: &str,
    key: &Path,
    options: &str,
) -> Result<()> {
    if state.scorenames().working_set(root)?.is_some() {
        return Ok(());
    }
    cpu.cache.clear();
    let r = cpu.node.run("bench", &format!("spawn {name} {options}"));
    if r.status != 0 {
        bail!("spawn {name}: {}", r.err.trim());
    }
    ssh(key, &r.out, "echo ready")?;
    ssh(key, &r.out, "cat /etc/os-release")?;
    cpu.node.run("bench", &format!("boom {name}"));
    let deadline = Instant::now() + cpu::working_set::WINDOW + Duration::from_secs(20);
    while state.scorenames().working_set(root)?.is_none() {
        if Instant::now() > deadline {
            bail!("no working-set list was recorded for {name}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The bytes of the blocks `root`'s working-set list holds: what its
/// recorded start read.
fn list_bytes(state: &StateDir, store: &dyn BlockStore, root: &venti::Score) -> Result<u64> {
    let list = state
        .scorenames()
        .working_set(root)?
        .context("the root has a list")?;
    let block = store
        .read(&list, venti::BlockType::DATA)?
        .context("the list's block is in the store")?;
    let mut bytes = 0;
    for (score, ty) in cpu::working_set::decode(&block).map_err(anyhow::Error::msg)? {
        bytes += store.read(&score, ty)?.map_or(0, |d| d.len() as u64);
    }
    Ok(bytes)
}
