//! Reading through: a node that joins a grid late serves its peers' names
//! at once and fetches the blocks it lacks from them on demand, while
//! replication fills its store behind. Every fetched block is checked
//! against its score and written to the local store (so it is read from
//! disk next time, and forwarded like any other block).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use venti::{BlockStore, BlockType, LogStore, Score, StoreError};

use crate::Peer;
use crate::frame::{self, Frame, VERSION};

/// How long one block may take from the peers, all tried in turn.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = std::sync::mpsc::Sender<Result<Option<Vec<u8>>, String>>;

struct Request {
    wire_type: u8,
    score: Score,
    reply: Reply,
}

/// The node's store, reading missing blocks through from its peers.
pub struct ReadThrough {
    local: Arc<LogStore>,
    requests: Mutex<std::sync::mpsc::Sender<Request>>,
    fetched: AtomicU64,
}

impl ReadThrough {
    /// Starts the fetcher (a thread with a connection per peer, made on
    /// first use) for `peers` that are colony nodes.
    pub fn start(
        local: Arc<LogStore>,
        link: Arc<link::Link>,
        node: String,
        peers: Vec<Peer>,
    ) -> Arc<ReadThrough> {
        let (tx, rx) = std::sync::mpsc::channel();
        let peers: Vec<Peer> = peers.into_iter().filter(|p| !p.plain_venti).collect();
        std::thread::Builder::new()
            .name("read-through".into())
            .spawn(move || fetcher(link, node, peers, rx))
            .expect("starting the read-through thread");
        Arc::new(ReadThrough {
            local,
            requests: Mutex::new(tx),
            fetched: AtomicU64::new(0),
        })
    }

    /// Blocks fetched from peers so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Whether the block is here, fetching it from a peer if it is not.
    pub fn has_or_fetch(&self, score: &Score, wire_type: u8) -> Result<bool, StoreError> {
        if self.local.has(score, wire_type)? {
            return Ok(true);
        }
        Ok(self.fetch(score, wire_type)?.is_some())
    }

    fn fetch(&self, score: &Score, wire_type: u8) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(ty) = BlockType::from_wire(wire_type) else {
            return Ok(None);
        };
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Request {
                wire_type,
                score: *score,
                reply,
            });
        if sent.is_err() {
            return Err(StoreError::Remote(
                "the read-through fetcher has stopped".into(),
            ));
        }
        let data = match answer.recv_timeout(FETCH_TIMEOUT) {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => return Err(StoreError::Remote(format!("reading {score} through: {e}"))),
            Err(_) => {
                return Err(StoreError::Remote(format!(
                    "reading {score} through: no peer answered within {} s",
                    FETCH_TIMEOUT.as_secs()
                )));
            }
        };
        let Some(data) = data else {
            return Ok(None);
        };
        if Score::of(&data) != *score {
            return Err(StoreError::Remote(format!(
                "a peer sent bytes for {score} that do not hash to it; refused"
            )));
        }
        self.local.write(ty, &data)?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(Some(data))
    }
}

impl BlockStore for ReadThrough {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_sourced(score, ty)?.map(|(d, _)| d))
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.local.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.local.sync()
    }
    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        if let Some(d) = self.local.read(score, ty)? {
            return Ok(Some((d, false)));
        }
        Ok(self.fetch(score, ty.to_wire())?.map(|d| (d, true)))
    }
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

/// Serves fetch requests one at a time, trying the peers in order.
fn fetcher(
    link: Arc<link::Link>,
    node: String,
    peers: Vec<Peer>,
    requests: std::sync::mpsc::Receiver<Request>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut conns: Vec<Option<Conn>> = peers.iter().map(|_| None).collect();
    let mut seq = 0u64;
    while let Ok(req) = requests.recv() {
        let mut errors = Vec::new();
        let mut answer = Ok(None);
        for (peer, conn) in peers.iter().zip(conns.iter_mut()) {
            // A connection kept from an earlier fetch may have been closed
            // by the peer meanwhile (it ends silent links): then once more
            // on a fresh one.
            let mut got = Err(String::new());
            for _ in 0..2 {
                let reused = conn.is_some();
                seq += 1;
                got = rt.block_on(async {
                    tokio::time::timeout(
                        PEER_TIMEOUT,
                        fetch_one(&link, &node, peer, conn, seq, &req),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
                });
                if got.is_ok() || !reused {
                    break;
                }
                *conn = None;
            }
            match got {
                Ok(Some(data)) => {
                    answer = Ok(Some(data));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    *conn = None;
                    errors.push(format!("{}: {e}", peer.name));
                }
            }
        }
        if matches!(answer, Ok(None)) && !errors.is_empty() {
            answer = Err(errors.join("; "));
        }
        let _ = req.reply.send(answer);
    }
}

async fn fetch_one(
    link: &link::Link,
    node: &str,
    peer: &Peer,
    conn: &mut Option<Conn>,
    seq: u64,
    req: &Request,
) -> Result<Option<Vec<u8>>, String> {
    if conn.is_none() {
        let (_, addr) = link::dial::parse_transport(&peer.address).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut tls, who) = link
            .connect(tcp, &[link::Role::Storage])
            .await
            .map_err(|e| e.to_string())?;
        if who.name != peer.name {
            return Err(format!(
                "the server at {} is {}, not {}",
                peer.address, who.name, peer.name
            ));
        }
        frame::write(
            &mut tls,
            &Frame::Hello {
                version: VERSION,
                node: node.to_string(),
                flags: 0,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        match frame::read(&mut tls).await.map_err(|e| e.to_string())? {
            Frame::Hello { version, .. } if version == VERSION => {}
            f => return Err(format!("expected Hello, got {}", f.kind())),
        }
        *conn = Some(tls);
    }
    let tls = conn.as_mut().expect("connected above");
    frame::write(
        tls,
        &Frame::Fetch {
            seq,
            wire_type: req.wire_type,
            score: req.score,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    match frame::read(tls).await.map_err(|e| e.to_string())? {
        Frame::Block { seq: s, data } if s == seq => Ok(data),
        Frame::Error { message } => Err(message),
        f => Err(format!("expected Block {seq}, got {}", f.kind())),
    }
}
