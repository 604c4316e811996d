//! Helpers shared by the integration tests: a real server on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use venti::BlockStore;

/// A venti server running on 127.0.0.1 with some store, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), venti::StoreError>>>,
}

impl TestServer {
    pub async fn start(store: Arc<dyn BlockStore>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(venti::server::serve(listener, store, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A raw TCP peer for byte-level tests.
pub struct Raw {
    pub r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connects, sends `line`, and returns the server's version line.
    pub async fn connect(addr: SocketAddr, line: &str) -> (Raw, String) {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(line.as_bytes()).await.unwrap();
        let mut r = BufReader::new(r);
        let mut server_line = String::new();
        r.read_line(&mut server_line).await.unwrap();
        (Raw { r, w }, server_line)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// Reads exactly `n` bytes.
    pub async fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.r.read_exact(&mut buf).await.unwrap();
        buf
    }

    /// Reads one 02-framed message body.
    pub async fn recv02(&mut self) -> Vec<u8> {
        let len = self.recv(2).await;
        self.recv(u16::from_be_bytes([len[0], len[1]]) as usize)
            .await
    }

    /// True if the server closed the connection (reads EOF) within a second.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), self.r.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

pub fn unhex(s: &str) -> Vec<u8> {
    venti::hex::decode(s).expect("hex")
}

/// The Thello of the §4.8 transcript, framed for 02.
pub const HELLO_02: &str = "0014 04 00 0002 3032 0009 616e6f6e796d6f7573 00 00 00";
