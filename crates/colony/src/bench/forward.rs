//! `colony bench forward`: a grid node in this process and one busybox
//! environment; MB a second of a transfer into the environment through
//! `ssh -L` (to a sink on its loopback) and through `scp`, each beside the
//! same transfer to the node itself: raw TCP to a sink on the node's
//! loopback (the ceiling of the forward), and `ssh … 'cat >/dev/null'`
//! over the same login (the ceiling of scp: the SSH channel itself). Needs
//! root (spawn) and the OpenSSH client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cpu::CpuConfig;
use grid::state::StateDir;
use storage::Node;
use venti::{BlockStore, LogStore};

use crate::bench::env::ssh_bench;

/// The port the sink listens on inside the environment.
const SINK: u16 = 9000;

pub fn run(mb: usize, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-forward-")
        .tempdir()?;
    let state = StateDir::open(scratch.path().join("state"))?;
    let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
    let key = crate::bench::env::bench_user(scratch.path(), &state)?;
    let busybox = crate::bench::env::busybox_root(scratch.path())?;
    for applet in ["nc", "sleep"] {
        std::os::unix::fs::symlink("busybox", busybox.join("bin").join(applet))?;
    }
    std::fs::create_dir_all(busybox.join("dev"))?;
    let root = crate::bench::env::archive(store.as_ref(), &busybox)?;
    state.scorenames().bind("busybox", &root, &["bench"])?;
    let config = CpuConfig {
        public_host: "127.0.0.1".into(),
        env_listen: "127.0.0.1".into(),
        ..CpuConfig::default()
    };
    let node = Node::local(state, store, config)?;
    let result = (|| {
        let r = node.run("bench", "spawn busybox");
        if r.status != 0 {
            bail!("spawn busybox: {}", r.err);
        }
        let port =
            crate::bench::env::login_port(&r.out).context("no login in the spawn's reply")?;
        measure(&key, &port, scratch.path(), mb, runs)
    })();
    node.shutdown();
    result
}

fn measure(key: &Path, port: &str, scratch: &Path, mb: usize, runs: usize) -> Result<()> {
    let bytes = (mb as u64) << 20;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!(
        "forward benchmark: {mb} MiB into a busybox environment, median of {runs} runs, MB/s (ratio to its ceiling)"
    );

    // The ceiling of a forward: raw TCP to a sink on the node's loopback.
    let raw = median(runs, || {
        let sink = TcpListener::bind("127.0.0.1:0")?;
        let addr = sink.local_addr()?;
        let draining = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut c, _) = sink.accept()?;
            std::io::copy(&mut c, &mut std::io::sink())?;
            Ok(())
        });
        let t = Instant::now();
        let mut c = TcpStream::connect(addr)?;
        send(&mut c, &chunk, bytes)?;
        c.shutdown(std::net::Shutdown::Write)?;
        draining.join().expect("the sink")?;
        Ok(t.elapsed())
    })?;

    // ssh -L to a sink on the environment's loopback.
    let local = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut forward = ssh_bench(key, port)
        .args(["-N", "-L", &format!("127.0.0.1:{local}:127.0.0.1:{SINK}")])
        .stdin(Stdio::null())
        .spawn()?;
    let through_l = median(runs, || {
        // A sink for this run: nc takes one connection, then exits.
        let started = ssh_bench(key, port)
            .arg(format!(
                "nc -l -p {SINK} >/dev/null </dev/null 2>&1 & sleep 0.3"
            ))
            .status()?;
        if !started.success() {
            bail!("starting the sink inside failed");
        }
        let t = Instant::now();
        let mut c = connect_retrying(local)?;
        send(&mut c, &chunk, bytes)?;
        c.shutdown(std::net::Shutdown::Write)?;
        // The sink closes once it has read everything.
        let _ = c.read(&mut [0u8; 1]);
        Ok(t.elapsed())
    });
    let _ = forward.kill();
    let _ = forward.wait();
    let through_l = through_l?;

    // scp of a file, and the same bytes through the login's channel.
    let file = scratch.join("payload");
    {
        let mut f = std::fs::File::create(&file)?;
        send(&mut f, &chunk, bytes)?;
    }
    let channel = median(runs, || {
        let t = Instant::now();
        let ok = ssh_bench(key, port)
            .arg("cat >/dev/null")
            .stdin(std::fs::File::open(&file)?)
            .status()?;
        if !ok.success() {
            bail!("ssh cat failed");
        }
        Ok(t.elapsed())
    })?;
    let scp = median(runs, || {
        let t = Instant::now();
        let out = std::process::Command::new("scp")
            .args(["-P", port, "-i"])
            .arg(key)
            .args(grid::ssh::SCRIPTED_CLIENT_OPTS)
            .arg(&file)
            .arg("bench@127.0.0.1:/dev/null")
            .output()?;
        if !out.status.success() {
            bail!("scp failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed())
    })?;
    let _ = std::fs::remove_file(&file);

    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{:<58} {:>8.1}",
        "raw TCP to the node's loopback (ceiling)",
        rate(raw)
    );
    println!(
        "{:<58} {:>8.1} ({:.2} of raw TCP)",
        "ssh -L into the environment",
        rate(through_l),
        rate(through_l) / rate(raw)
    );
    println!(
        "{:<58} {:>8.1} ({:.2} of raw TCP)",
        "ssh 'cat >/dev/null' on its login (the channel)",
        rate(channel),
        rate(channel) / rate(raw)
    );
    println!(
        "{:<58} {:>8.1} ({:.2} of the channel)",
        "scp into the environment",
        rate(scp),
        rate(scp) / rate(channel)
    );
    Ok(())
}

/// Writes `total` bytes of `chunk`, repeated, to `to`.
fn send(to: &mut impl Write, chunk: &[u8], total: u64) -> std::io::Result<()> {
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        to.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    to.flush()
}

/// A connection to the forward's local port, once ssh listens there.
fn connect_retrying(port: u16) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e).context("the forward's local port"),
        }
    }
}

/// The median of `runs` timings.
fn median(runs: usize, mut once: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        times.push(once()?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}
