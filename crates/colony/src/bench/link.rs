//! `colony bench link`: what mutual TLS costs a venti link. New 8 KiB
//! blocks written by one pipelined client, plain and over TLS, on loopback,
//! through a shaping proxy that makes the server far away (a delay and a
//! bandwidth), and between two network namespaces joined by a veth pair
//! (where ip(8) and root allow); blocks and pings per second with one
//! request in flight, as plan9port's `vac` and `venti/write` send them; and
//! handshake time, full and resumed. The client runs on one thread, as
//! plan9port's do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use link::{Link, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use venti::{BlockStore, Client, LogStore};

use crate::bench::pipeline::{BLOCK, Blocks, write_pipelined};

pub fn run(
    blocks: usize,
    runs: usize,
    netns: bool,
    far: crate::bench::slow_link::Shape,
) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-link-")
        .tempdir()?;
    let ca = scratch.path().join("ca");
    link::ca::init(&ca, "bench")?;
    let valid = link::ca::Validity::Days(1);
    link::ca::issue(
        &ca,
        "server",
        Role::Storage,
        valid,
        &scratch.path().join("server"),
    )?;
    link::ca::issue(
        &ca,
        "client",
        Role::Client,
        valid,
        &scratch.path().join("client"),
    )?;
    let server_link = Link::load(&scratch.path().join("server"))?;
    let client_link = Link::load(&scratch.path().join("client"))?;
    println!(
        "link benchmark: {blocks} new blocks of {BLOCK} bytes per phase, median of {runs} runs"
    );
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |name: String, rate: f64| match rows.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => v.push(rate),
        None => rows.push((name, vec![rate])),
    };
    let here = Place::Loopback;
    let namespaces = if netns { Place::namespaces()? } else { None };
    let far_away = Place::Far(far);
    for run in 0..runs.max(1) {
        let seed = 100 + run as u64 * 10;
        for place in [&here, &far_away].into_iter().chain(namespaces.as_ref()) {
            for tls in [false, true] {
                let kind = if tls { "mutual TLS" } else { "plain" };
                let store = scratch
                    .path()
                    .join(format!("store-{run}-{}-{tls}", place.label()));
                let (rate, _) = place.writes(
                    &store,
                    tls.then(|| (server_link.clone(), client_link.clone())),
                    blocks,
                    64,
                    seed,
                )?;
                add(
                    format!("{}, {kind}: 1 client, 64 in flight", place.label()),
                    rate,
                );
                let (rate, pings) = place.writes(
                    &store.with_extension("one"),
                    tls.then(|| (server_link.clone(), client_link.clone())),
                    // A far link's round trips are slow to count by thousands.
                    if matches!(place, Place::Far(_)) {
                        100
                    } else {
                        blocks / 4
                    },
                    1,
                    seed + 1,
                )?;
                add(
                    format!("{}, {kind}: 1 client, 1 in flight", place.label()),
                    rate,
                );
                add(
                    format!("{}, {kind}: pings, 1 in flight", place.label()),
                    pings,
                );
            }
        }
    }
    for (name, mut rates) in rows {
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        if name.contains("pings") {
            println!(
                "{name:<58} {:>8.0} pings/s              (range {:.0}..{:.0})",
                median,
                rates[0],
                rates[rates.len() - 1]
            );
        } else {
            println!(
                "{name:<58} {:>8.1} MB/s {:>8.0} blocks/s (range {:.0}..{:.0} blocks/s)",
                median * BLOCK as f64 / 1e6,
                median,
                rates[0],
                rates[rates.len() - 1]
            );
        }
    }
    handshakes(&scratch.path().join("client"), server_link)?;
    Ok(())
}

/// Where the server runs relative to its client.
pub(crate) enum Place {
    Loopback,
    /// On loopback, through a proxy that adds a delay and a bandwidth limit.
    Far(crate::bench::slow_link::Shape),
    /// Two namespaces joined by a veth pair: (server ns, its address, client ns).
    Namespaces(String, String, String),
}

impl Place {
    fn label(&self) -> String {
        match self {
            Place::Loopback => "loopback".into(),
            Place::Far(shape) => format!(
                "far ({} ms each way, {} Mbit/s)",
                shape.delay.as_millis(),
                shape.rate * 8 / 1_000_000
            ),
            Place::Namespaces(..) => "across namespaces".into(),
        }
    }

    pub(crate) fn namespaces() -> Result<Option<Place>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("(not root: no cross-namespace figures)");
            return Ok(None);
        }
        let n = std::process::id() % 200;
        let (a, b) = (format!("benchA{n}"), format!("benchB{n}"));
        let script = format!(
            "ip netns add {a} && ip netns add {b} && \
             ip link add va netns {a} type veth peer name vb netns {b} && \
             ip -n {a} addr add 10.211.{n}.1/24 dev va && ip -n {b} addr add 10.211.{n}.2/24 dev vb && \
             ip -n {a} link set va up && ip -n {b} link set vb up && \
             ip -n {a} link set lo up && ip -n {b} link set lo up"
        );
        let ok = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("ip netns del {a}; ip netns del {b}")])
                .status();
            bail!("could not make the benchmark's network namespaces (ip netns)");
        }
        Ok(Some(Place::Namespaces(a, format!("10.211.{n}.1"), b)))
    }

    /// New blocks per second from one client with `window` requests in
    /// flight, and pings per second (the link's and server's floor) with one.
    fn writes(
        &self,
        store: &std::path::Path,
        // The server's certificate and the client's.
        tls: Option<(Arc<Link>, Arc<Link>)>,
        blocks: usize,
        window: usize,
        seed: u64,
    ) -> Result<(f64, f64)> {
        let (server_ns, host, client_ns) = match self {
            Place::Loopback | Place::Far(_) => (None, "127.0.0.1".to_string(), None),
            Place::Namespaces(a, addr, b) => (Some(a.clone()), addr.clone(), Some(b.clone())),
        };
        let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(store)?);
        let scheme = if tls.is_some() { "tls" } else { "tcp" };
        let (tls, client_tls) = tls.unzip();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let bind = format!("{host}:0");
        let server = std::thread::spawn(move || -> Result<()> {
            enter(server_ns.as_deref())?;
            // The server's runtime as `colony venti serve` runs it.
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&bind).await?;
                addr_tx.send(listener.local_addr()?)?;
                let stop = async {
                    let _ = stop_rx.await;
                };
                match tls {
                    Some(link) => {
                        let admit = link.admitter(Role::ALL.to_vec(), "a venti link");
                        venti::server::serve_with(listener, store, admit, stop).await?
                    }
                    None => venti::server::serve(listener, store, stop).await?,
                }
                anyhow::Ok(())
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the benchmark's server did not start")?;
        // A far server is reached through the shaping proxy, on a runtime
        // of its own that ends with this measurement.
        let proxy = match self {
            Place::Far(shape) => {
                let rt = tokio::runtime::Runtime::new()?;
                let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
                let near = listener.local_addr()?;
                rt.spawn(crate::bench::slow_link::run(
                    listener,
                    addr.to_string(),
                    *shape,
                ));
                Some((rt, near))
            }
            _ => None,
        };
        let to = proxy.as_ref().map_or(addr, |(_, near)| *near);
        let dial = format!("{scheme}!{}!{}", to.ip(), to.port());
        let pings = if matches!(self, Place::Far(_)) {
            50
        } else {
            2000
        };
        let client = std::thread::spawn(move || -> Result<(f64, f64)> {
            enter(client_ns.as_deref())?;
            // One thread, as plan9port's clients are: no hops between
            // workers in the figures, only the link and the server.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = match &client_tls {
                    Some(link) => {
                        let dialing =
                            link::dial::connect(&dial, Some(link), link::dial::STORE_SERVERS);
                        Client::connect(&dial, dialing).await?
                    }
                    None => Client::connect_tcp(&to.to_string()).await?,
                };
                let t = Instant::now();
                for _ in 0..pings {
                    client.ping().await?;
                }
                let ping_rate = pings as f64 / t.elapsed().as_secs_f64();
                let blockgen = Arc::new(Blocks::new(seed));
                let t = Instant::now();
                write_pipelined(&client, blockgen, 0..blocks, window).await?;
                client.sync().await?;
                Ok((blocks as f64 / t.elapsed().as_secs_f64(), ping_rate))
            })
        });
        let rate = client
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
        let _ = stop_tx.send(());
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
        rate
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Place::Namespaces(a, _, b) = self {
            for ns in [a, b] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns.as_str()])
                    .status();
            }
        }
    }
}

/// Moves the calling thread (and the threads it starts) into network
/// namespace `ns`.
pub(crate) fn enter(ns: Option<&str>) -> Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns of this thread into a namespace descriptor we opened.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the benchmark's namespace");
    }
    Ok(())
}

/// Handshake time on loopback: a fresh client (full handshake) against one
/// that resumes its last session.
fn handshakes(client_dir: &std::path::Path, server: Arc<Link>) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((socket, peer)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok((mut s, _)) = server.accept(socket, peer, &Role::ALL).await {
                        let mut b = [0u8; 1];
                        while matches!(s.read(&mut b).await, Ok(1)) {
                            if s.write_all(&b).await.is_err() || s.flush().await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        // One byte each way, so the client has read the server's tickets.
        async fn once(link: &Link, addr: std::net::SocketAddr) -> Result<(Duration, bool)> {
            let socket = tokio::net::TcpStream::connect(addr).await?;
            let _ = socket.set_nodelay(true);
            let t = Instant::now();
            let (mut s, _) = link.connect(socket, &[Role::Storage]).await?;
            let took = t.elapsed();
            s.write_all(b"x").await?;
            s.flush().await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            Ok((took, resumed))
        }
        let (mut full, mut resumed) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let fresh = Link::load(client_dir)?;
            full.push(once(&fresh, addr).await?.0);
        }
        let link = Link::load(client_dir)?;
        once(&link, addr).await?;
        for _ in 0..20 {
            let (took, was_resumed) = once(&link, addr).await?;
            if !was_resumed {
                bail!("a reconnect did not resume its session");
            }
            resumed.push(took);
        }
        for (name, mut v) in [("full", full), ("resumed", resumed)] {
            v.sort();
            println!(
                "{:<58} {:>8.2} ms (range {:.2}..{:.2})",
                format!("TLS handshake on loopback, {name}"),
                v[v.len() / 2].as_secs_f64() * 1e3,
                v[0].as_secs_f64() * 1e3,
                v[v.len() - 1].as_secs_f64() * 1e3
            );
        }
        anyhow::Ok(())
    })
}
