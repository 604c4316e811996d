//! `colony bench hub`: a hubfs on loopback and 9P clients on connections of
//! their own: bytes a second through one hub to 1 and to 8 readers (in fear
//! mode, so every reader gets every byte), and the time from a write to a
//! waiting reader's read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hubfs::{HubSet, Limits};
use ninep::Client;
use ninep::fcall::{OREAD, OWRITE};

pub fn run(mb: usize, rounds: usize) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let hubs = Arc::new(HubSet::new(Limits {
        buffer: 16 << 20,
        write: 1 << 20,
        fear_deadline: Duration::from_secs(30),
        ..Limits::default()
    }));
    hubs.ctl("fear").expect("a known command");
    std::thread::spawn(move || hubfs::server::serve(listener, hubs));
    let connect = || -> Result<Client> {
        let mut c = Client::connect(&addr, 256 * 1024)?;
        c.attach(0, "bench")?;
        Ok(c)
    };
    println!("hub benchmark: 9P2000 over loopback TCP, a connection per client");
    for readers in [1usize, 8] {
        let name = format!("t{readers}");
        let mut w = connect()?;
        w.walk(0, 1, &[])?;
        w.create(1, &name, 0o644, OWRITE)?;
        let total = (mb << 20) as u64;
        let mut handles = Vec::new();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        for _ in 0..readers {
            let mut c = connect()?;
            c.walk(0, 1, &[&name])?;
            c.open(1, OREAD)?;
            let ready_tx = ready_tx.clone();
            handles.push(std::thread::spawn(move || -> Result<Duration> {
                ready_tx.send(()).ok();
                let mut got = 0u64;
                let mut start = None;
                while got < total {
                    let data = c.read(1, 0, 256 * 1024)?;
                    start.get_or_insert_with(Instant::now);
                    got += data.len() as u64;
                }
                Ok(start.map_or(Duration::ZERO, |s| s.elapsed()))
            }));
        }
        for _ in 0..readers {
            ready.recv()?;
        }
        let chunk = vec![0x5au8; 128 * 1024];
        let t = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            w.write(1, 0, &chunk)?;
            sent += chunk.len() as u64;
        }
        let mut slowest = Duration::ZERO;
        for h in handles {
            slowest = slowest.max(h.join().expect("reader thread")?);
        }
        let took = t.elapsed().max(slowest);
        println!(
            "{mb} MiB through one hub to {readers} reader{}: {:.0} MB/s to each ({:.0} MB/s delivered in all)",
            if readers == 1 { "" } else { "s" },
            total as f64 / 1e6 / took.as_secs_f64(),
            total as f64 * readers as f64 / 1e6 / took.as_secs_f64()
        );
    }
    // Latency: a reader waits; one byte is written; it arrives.
    let mut w = connect()?;
    w.walk(0, 1, &[])?;
    w.create(1, "ping", 0o644, OWRITE)?;
    let mut r = connect()?;
    r.walk(0, 1, &["ping"])?;
    r.open(1, OREAD)?;
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (back_tx, back) = std::sync::mpsc::channel::<Instant>();
    let reader = std::thread::spawn(move || -> Result<()> {
        for _ in 0..rounds {
            go_tx.send(()).ok();
            r.read(1, 0, 1)?;
            back_tx.send(Instant::now()).ok();
        }
        Ok(())
    });
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        go.recv()?;
        // Let the read reach the server and wait there.
        std::thread::sleep(Duration::from_micros(300));
        let t = Instant::now();
        w.write(1, 0, b"x")?;
        times.push(back.recv()?.duration_since(t));
    }
    reader.join().expect("reader thread")?;
    times.sort();
    println!(
        "write to a waiting reader's read: median {:.0} µs, 99th percentile {:.0} µs ({rounds} rounds)",
        times[times.len() / 2].as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6
    );
    Ok(())
}
