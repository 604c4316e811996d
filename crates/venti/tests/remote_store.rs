//! RemoteStore: the blocking, pipelined view of a venti server that the
//! archiver and the file system use with -h; it survives a server restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use venti::{BlockStore, BlockType, LogStore, RemoteStore};

/// A server on its own runtime thread; stopped (and its store closed) on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(dir: &Path, addr: &str) -> (Server, SocketAddr) {
        let dir = dir.to_path_buf();
        let addr = addr.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(&dir).unwrap());
                let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                venti::server::serve(listener, store, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = ready_rx.recv().unwrap();
        (
            Server {
                stop: Some(tx),
                thread: Some(thread),
            },
            addr,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

#[test]
fn pipelined_writes_then_reads_and_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = Server::start(dir.path(), "127.0.0.1:0");
    let remote = RemoteStore::connect_tcp(&addr.to_string()).unwrap();
    let blocks: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_be_bytes().repeat(100)).collect();
    let scores: Vec<_> = blocks
        .iter()
        .map(|b| remote.write(BlockType::DATA, b).unwrap())
        .collect();
    remote.sync().unwrap();
    assert_eq!(
        remote.read(&scores[7], BlockType::DATA).unwrap().unwrap(),
        blocks[7]
    );
    assert_eq!(
        remote
            .read(&venti::Score::of(b"absent"), BlockType::DATA)
            .unwrap(),
        None
    );

    // The server goes away: reads fail with a clear error.
    drop(server);
    let err = remote.read(&scores[8], BlockType::DATA).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // It comes back on the same address: the same store works again.
    let (_server, again) = Server::start(dir.path(), &addr.to_string());
    assert_eq!(again, addr);
    assert_eq!(
        remote.read(&scores[8], BlockType::DATA).unwrap().unwrap(),
        blocks[8]
    );
    let s = remote.write(BlockType::DATA, b"after the restart").unwrap();
    remote.sync().unwrap();
    assert_eq!(
        remote.read(&s, BlockType::DATA).unwrap().unwrap(),
        b"after the restart"
    );
}
