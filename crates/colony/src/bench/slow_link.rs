//! A link to a far-away node, in user space (this kernel has no netem): a
//! TCP proxy that holds every chunk it carries for a fixed one-way delay and
//! paces each direction to a bandwidth, for benchmarks of distant nodes.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the proxy adds to each direction.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub delay: Duration,
    /// Bytes per second; 0 is unlimited.
    pub rate: u64,
}

/// Accepts on `listener` and carries each connection to `to`, shaped.
pub async fn run(listener: TcpListener, to: String, shape: Shape) -> Result<()> {
    loop {
        let (near, _) = listener.accept().await?;
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(far) = TcpStream::connect(&to).await {
                let _ = near.set_nodelay(true);
                let _ = far.set_nodelay(true);
                let (nr, nw) = near.into_split();
                let (fr, fw) = far.into_split();
                tokio::join!(carry(nr, fw, shape), carry(fr, nw, shape));
            }
        });
    }
}

/// One direction: a reader stamps chunks as they arrive, a writer sends
/// each no earlier than its stamp plus the delay, and no faster than the rate.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shape: Shape,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        // When the link is free again, at the rate.
        let mut free_at = Instant::now();
        while let Some((stamp, chunk)) = rx.recv().await {
            // Sent once the link is free and the chunk has gone out on it,
            // delivered a delay later.
            let on_wire = if shape.rate > 0 {
                Duration::from_secs_f64(chunk.len() as f64 / shape.rate as f64)
            } else {
                Duration::ZERO
            };
            free_at = free_at.max(stamp) + on_wire;
            tokio::time::sleep_until(free_at + shape.delay).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes come through whole and in order, both ways, and none arrives
    /// before the delay has passed (a property of the shaping, not a speed).
    #[tokio::test]
    async fn bytes_arrive_whole_in_order_and_not_before_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let shape = Shape {
            delay: Duration::from_millis(40),
            rate: 50_000_000,
        };
        tokio::spawn(run(proxy, echo_addr.to_string(), shape));
        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let t = Instant::now();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&data).await.unwrap();
        };
        let mut back = vec![0u8; data.len()];
        let recv = async {
            r.read_exact(&mut back).await.unwrap();
        };
        tokio::join!(send, recv);
        assert!(t.elapsed() >= 2 * shape.delay, "{:?}", t.elapsed());
        assert!(back == data, "the bytes came back changed");
    }
}
