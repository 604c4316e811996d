//! `colony bench names`: what a name costs as the name db grows. For each
//! count, a single-node grid started in this process as `colony serve`
//! starts one, whose scorenames file holds that many names of synthetic
//! users (and whose users file holds `--users` synthetic users), and over
//! OpenSSH's client:
//!
//! * `save busybox NAME` (a bind), beside `status` (the ceiling: the SSH
//!   handshake and one command, no name touched);
//! * `scores` (a login and the user's names);
//!
//! then two storage nodes replicating over mutual TLS on loopback: how fast
//! a peer with no names takes them all, and the time from one more binding
//! on A to the name on B. Needs root (spawn) and OpenSSH.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grid::state::StateDir;
use venti::{BlockStore, LogStore, Score};

pub fn run(counts: &[usize], users: usize, runs: usize) -> Result<()> {
    println!(
        "names benchmark: a name db of N names and {users} users; a single node in this process, OpenSSH's client; medians of {runs}"
    );
    for &n in counts {
        front_door(n, users, runs)?;
        replication(n, runs)?;
    }
    Ok(())
}

/// Synthetic names of synthetic users (100 names each), all bound to
/// `root`, placed at `pos` as a replicating node places its own.
fn add_names(state: &StateDir, n: usize, root: &Score, pos: u64) -> Result<()> {
    let root = vac::format_vac(root);
    let mut text = String::with_capacity(n * 110);
    for i in 0..n {
        use std::fmt::Write as _;
        let _ = writeln!(
            text,
            "scorename=name{i} rootscore={root} user=u{} time={} origin=a pos={pos}",
            i / 100,
            1_000_000 + i
        );
    }
    append(&state.root.join("scorenames"), &text)
}

/// `n` synthetic users, a key each.
fn add_users(state: &StateDir, n: usize) -> Result<()> {
    let mut text = String::with_capacity(n * 120);
    for i in 0..n {
        // An ed25519 public key blob: its type, then 32 bytes (here, i).
        let mut blob = Vec::with_capacity(51);
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        let mut point = [7u8; 32];
        point[..8].copy_from_slice(&(i as u64).to_le_bytes());
        blob.extend_from_slice(&point);
        text.push_str(&format!(
            "user=u{i} key=\"ssh-ed25519 {}\" added={}\n",
            base64(&blob),
            1_000_000 + i
        ));
    }
    append(&state.root.join("users"), &text)
}

fn append(path: &Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// This process's resident memory (VmRSS), in KiB.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `save` and `scores` through the front door of a node holding `n` names.
fn front_door(n: usize, users: usize, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-names-")
        .tempdir()?;
    let state_dir = scratch.path().join("state");
    let key = {
        let state = StateDir::open(state_dir.clone())?;
        let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
        add_users(&state, users)?;
        let key = crate::bench::env::bench_user(scratch.path(), &state)?;
        let busybox = crate::bench::env::busybox_root(scratch.path())?;
        let root = crate::bench::env::archive(store.as_ref(), &busybox)?;
        store.sync()?;
        add_names(&state, n, &root, 0)?;
        state.scorenames().bind("busybox", &root, &["bench"])?;
        // What a node pays once at its start (on a thread of its own):
        // reading both files into their indexes. The memory they take is
        // this process's growth.
        let fresh = StateDir::open(state_dir.clone())?;
        let (rss, t) = (resident_kib(), Instant::now());
        fresh.scorenames().count()?;
        fresh.users().exists("bench")?;
        println!(
            "{:>14}: reading the names and users files into their indexes {:.1} ms, {:.1} MiB",
            format!("{n} names"),
            ms(t.elapsed()),
            resident_kib().saturating_sub(rss) as f64 / 1024.0
        );
        key
    };
    let (node, port) = crate::bench::env::single_node(&state_dir, &[])?;
    let port = port.to_string();
    let door = |command: &str| -> Result<(Duration, String)> {
        let t = Instant::now();
        let out = crate::bench::env::ssh_bench(&key, &port)
            .arg(command)
            .output()?;
        if !out.status.success() {
            bail!("{command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok((
            t.elapsed(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let result = measure_door(&door, n, runs);
    node.shutdown();
    result
}

fn measure_door(
    door: &dyn Fn(&str) -> Result<(Duration, String)>,
    n: usize,
    runs: usize,
) -> Result<()> {
    let times = |command: &dyn Fn(usize) -> String| -> Result<Duration> {
        let mut v = Vec::new();
        for i in 0..runs.max(1) {
            v.push(door(&command(i))?.0);
        }
        Ok(median(v))
    };
    let (_, listed) = door("scores")?;
    let ceiling = times(&|_| "status".into())?;
    if !listed.lines().any(|l| l == "busybox") {
        bail!("scores did not list busybox: {listed:?}");
    }
    let scores = times(&|_| "scores".into())?;
    door("spawn busybox net=none")?;
    let save = times(&|i| format!("save busybox saved{i}"));
    door("boom busybox")?;
    let save = save?;
    let label = format!("{n} names");
    println!(
        "{label:>14}: status {:>6.1} ms (ceiling) | scores {:>6.1} ms ({:.2}x) | save {:>6.1} ms ({:.2}x)",
        ms(ceiling),
        ms(scores),
        ms(scores) / ms(ceiling),
        ms(save),
        ms(save) / ms(ceiling),
    );
    Ok(())
}

/// A peer with no names takes `n`; then one more binding, A to B.
fn replication(n: usize, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-names-rep-")
        .tempdir()?;
    let nodes = crate::bench::replica::TwoNodes::start(scratch.path(), false)?;
    let (a, b) = (&nodes.a, &nodes.b);
    let busybox = crate::bench::env::busybox_root(scratch.path())?;
    let root = crate::bench::env::archive(a.store.as_ref(), &busybox)?;
    a.store.sync()?;
    add_names(&a.state, n, &root, a.store.durable_end())?;
    let t = Instant::now();
    nodes.start_pushing();
    let limit = Duration::from_secs(1800);
    let names = b.state.scorenames();
    while names.count()? < n as u64 {
        if t.elapsed() > limit {
            bail!("b did not take {n} names within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let caught_up = t.elapsed();
    let mut one = Vec::new();
    for i in 0..runs.max(1) {
        let name = format!("one{i}");
        a.state.scorenames().bind(&name, &root, &["bench"])?;
        one.push(crate::bench::replica::name_arrives(
            b,
            &name,
            Duration::from_secs(60),
        )?);
    }
    println!(
        "{:>14}  replication {}: a new peer takes all {n} in {:.2} s ({:.0} names/s) | one more, bound on A -> on B {:>6.1} ms",
        "",
        nodes.where_,
        caught_up.as_secs_f64(),
        n as f64 / caught_up.as_secs_f64(),
        ms(median(one))
    );
    Ok(())
}
