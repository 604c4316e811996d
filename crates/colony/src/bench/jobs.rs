//! `colony bench jobs`: a single-node grid started in this process as
//! `colony serve` starts one, and `run busybox -- true` through its front
//! door with OpenSSH's client: the first run (cold: nothing of the root in
//! any cache) and the median of the rest (warm). Beside them, the ceiling
//! any command through the front door has: `status` over the same client
//! (the SSH handshake and one command). Then throughput: `true` as
//! detached jobs (`run -d busybox net=… count=… -- true`, with the
//! default private network and with `net=none`, topped up as the per-user
//! limit on active jobs allows), from the first submission to the
//! last job's end, beside the same environments run in the foreground by
//! as many OpenSSH clients at once as the queue lets one user run (its
//! ceiling: the same spawns and ends with no queue, records or logs),
//! through a storage node and two cpu nodes (the same state directory,
//! now the storage node's), each started in this process as `colony serve
//! --role …` starts it.
//! With `--debian DIR`, `run debian -- apt-get --version` on that root,
//! cold and warm, too. Needs root (spawn) and OpenSSH.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grid::state::StateDir;
use venti::{BlockStore, LogStore};

pub fn run(runs: usize, jobs: usize, debian: Option<&Path>) -> Result<()> {
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
        let roots = [
            Some(("busybox", busybox.as_path())),
            debian.map(|d| ("debian", d)),
        ];
        for (name, dir) in roots.into_iter().flatten() {
            let root = crate::bench::env::archive(store.as_ref(), dir)?;
            store.sync()?;
            state.scorenames().bind(name, &root, &["bench"])?;
        }
        key
        // The store is closed here: the node opens it.
    };
    // Room for all a user may run through the queue at once.
    let room = [("spawn-max", storage::queue::MAX_RUNNING.to_string())];
    let (node, port) = crate::bench::env::single_node(&state_dir, &room)?;
    let result = measure(&key, port, runs, debian.is_some());
    node.shutdown();
    result?;
    if jobs == 0 {
        return Ok(());
    }
    // The same state, now a storage node's, with two cpu nodes.
    let grid = LocalGrid::start(scratch.path(), &state_dir)?;
    let result = throughput(&key, grid.port, jobs);
    grid.shutdown();
    result
}

/// A storage node and two cpu nodes started in this process as `colony
/// serve --role …` starts each, linked over loopback mutual TLS.
struct LocalGrid {
    nodes: Vec<node::Node>,
    /// The storage node's front door.
    port: u16,
}

impl LocalGrid {
    fn start(scratch: &Path, state_dir: &Path) -> Result<LocalGrid> {
        let ca = scratch.join("ca");
        link::ca::init(&ca, "bench")?;
        let tls = |name: &str| scratch.join(format!("{name}.tls"));
        for (name, role) in [
            ("s1", link::Role::Storage),
            ("c1", link::Role::Cpu),
            ("c2", link::Role::Cpu),
        ] {
            link::ca::issue(&ca, name, role, link::ca::Validity::Days(1), &tls(name))?;
        }
        let free_port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (venti, control) = (free_port()?, free_port()?);
        let start = |settings: Vec<(&str, String)>| -> Result<node::Node> {
            let mut sources = node::Sources::new();
            for (setting, value) in settings {
                sources.flag(setting, value)?;
            }
            node::Node::start(node::Config::from_sources(&sources)?)
        };
        let mut nodes = vec![start(vec![
            ("state", state_dir.display().to_string()),
            ("role", "storage".into()),
            ("tls", tls("s1").display().to_string()),
            ("listen", "127.0.0.1:0".into()),
            ("public-host", "127.0.0.1".into()),
            ("venti-listen", format!("tls!127.0.0.1!{venti}")),
            ("cpu-listen", format!("tls!127.0.0.1!{control}")),
        ])?];
        let port = nodes[0]
            .front_door
            .context("the storage node's front door")?
            .port();
        let slots = storage::queue::MAX_RUNNING;
        for (i, name) in ["c1", "c2"].into_iter().enumerate() {
            let first = 26001 + 100 * i;
            nodes.push(start(vec![
                ("state", scratch.join(name).display().to_string()),
                ("role", "cpu".into()),
                ("tls", tls(name).display().to_string()),
                ("public-host", "127.0.0.1".into()),
                ("storage", format!("s1=tls!127.0.0.1!{control}")),
                ("spawn-max", slots.to_string()),
                ("env-ports", format!("{first}-{}", first + 99)),
            ])?);
        }
        let grid = LocalGrid { nodes, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while grid.nodes[0].room() != Some(2 * slots) {
            if Instant::now() > deadline {
                grid.shutdown();
                bail!("the cpu nodes did not link to the storage node within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(grid)
    }

    fn shutdown(self) {
        // The storage node first: its runs end before their cpu nodes go.
        for node in self.nodes {
            node.shutdown();
        }
    }
}

fn measure(key: &Path, port: u16, runs: usize, debian: bool) -> Result<()> {
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
    // The ceiling first, on a quiet node: a status right after a run
    // would share the machine with that run's environment ending behind
    // its answer.
    let mut ceiling = Vec::new();
    for _ in 0..runs.max(1) {
        ceiling.push(door("status")?);
    }
    let cold = door("run busybox -- true")?;
    let mut warm = Vec::new();
    for _ in 0..runs.max(1) {
        warm.push(door("run busybox -- true")?);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (warm, ceiling) = (median(warm), median(ceiling));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // A time, with its ratio to the ceiling.
    let show = |what: &str, d: Duration| {
        println!(
            "{what:<52} {:>8.1} ms ({:.1}x the ceiling)",
            ms(d),
            ms(d) / ms(ceiling)
        )
    };
    println!(
        "{:<52} {:>8.1} ms",
        "status through the front door (the ceiling)",
        ms(ceiling)
    );
    show("run busybox -- true, cold (the first)", cold);
    show("run busybox -- true, warm", warm);
    if debian {
        let apt = "run debian -- apt-get --version";
        let cold = door(apt)?;
        let mut warm = Vec::new();
        for _ in 0..runs.max(1) {
            warm.push(door(apt)?);
        }
        show("run debian -- apt-get --version, cold (the first)", cold);
        show("run debian -- apt-get --version, warm", median(warm));
    } else {
        println!("(--debian DIR times apt-get --version in a Debian root too)");
    }
    Ok(())
}

/// Detached `true` jobs per second, beside foreground runs per second from
/// [`storage::queue::MAX_RUNNING`] clients at once.
fn throughput(key: &Path, port: u16, jobs: usize) -> Result<()> {
    println!(
        "throughput: a storage node and two cpu nodes in this process, over loopback mutual TLS"
    );
    let door = |command: &str| -> Result<String> {
        let out = crate::bench::env::ssh_bench(key, &port.to_string())
            .arg(command)
            .output()?;
        if !out.status.success() {
            bail!("{command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let clients = storage::queue::MAX_RUNNING;
    // The ceiling: the same environments, each run by a client of its own.
    let foreground = (jobs / 5).max(clients);
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < foreground {
                        door("run busybox -- true")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let ceiling = foreground as f64 / t.elapsed().as_secs_f64();

    println!(
        "{:<52} {:>8.1} /s",
        format!("foreground runs, {clients} clients at once (the ceiling)"),
        ceiling
    );
    for net in ["private", "none"] {
        let rate = detached(&door, jobs, net)?;
        println!(
            "{:<52} {:>8.1} /s ({:.2}x the ceiling)",
            format!("{jobs} detached true jobs, net={net}"),
            rate,
            rate / ceiling
        );
    }
    Ok(())
}

/// `jobs` detached `true` jobs with `net=NET`, from the first submission
/// to the last one's end: jobs per second. More are submitted whenever the
/// user's active jobs fall to half the limit on them, so the queue never
/// runs dry while the bench waits to look again.
fn detached(door: &dyn Fn(&str) -> Result<String>, jobs: usize, net: &str) -> Result<f64> {
    let limit = storage::jobs::MAX_ACTIVE;
    let most = storage::run::MAX_COUNT as usize;
    let t = Instant::now();
    let (mut submitted, mut active) = (0, 0);
    loop {
        if submitted < jobs && active <= limit / 2 {
            let n = (jobs - submitted).min(limit - active).min(most);
            let ids = door(&format!("run -d busybox net={net} count={n} -- true"))?;
            if ids.lines().count() != n {
                bail!("asked for {n} jobs, got: {ids}");
            }
            submitted += n;
        }
        let list = door("jobs")?;
        if list.contains("\tfailed\t") || list.contains("\tlost\t") {
            bail!("a job did not succeed:\n{list}");
        }
        active = list
            .lines()
            .filter(|l| l.contains("\tqueued\t") || l.contains("\trunning\t"))
            .count();
        if submitted == jobs && active == 0 {
            break;
        }
        // Each look is an SSH login and a listing: looked for often, they
        // would take the CPU the jobs are measured on.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(jobs as f64 / t.elapsed().as_secs_f64())
}
