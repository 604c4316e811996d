//! An async venti client with pipelining: many requests may be in flight on one
//! connection (up to the 256 tags the protocol allows), each awaiting its own
//! reply. Clone the [`Client`] to share the connection between tasks.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::conn::{self, Stream, Version, WireError};
use crate::store::MAX_BLOCK_SIZE;
use crate::{BlockType, Message, Score};

const COMMENT: &str = "colony";

/// A plain TCP connection to `addr` (`host:port`), as [`Client::connect`]
/// dials: with Nagle off, since requests are small and pipelined.
pub async fn tcp(addr: String) -> Result<TcpStream, String> {
    let socket = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// Why a client request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to venti at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("venti server: {0}")]
    Server(String),
    #[error("venti connection lost: {0}")]
    Closed(String),
    #[error("venti protocol error: {0}")]
    Protocol(String),
    #[error("block of {0} bytes is larger than the limit of {MAX_BLOCK_SIZE}")]
    TooLarge(usize),
}

impl ClientError {
    /// True when the server said the block does not exist.
    pub fn is_missing_block(&self) -> bool {
        matches!(self, ClientError::Server(text) if text.starts_with("no block with score"))
    }
}

type Reply = Result<Message, ClientError>;

/// Requests awaiting replies, by tag. Each slot also holds the permit that
/// reserved it, so a tag is never reused before its reply arrives, even if the
/// caller gave up waiting.
struct Pending {
    slots: Vec<Option<(oneshot::Sender<Reply>, OwnedSemaphorePermit)>>,
    /// Set once the connection is gone; every later request fails with it.
    closed: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    permits: Arc<Semaphore>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    version: Version,
}

/// A connection to a venti server.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Says hello over the connection `dialing` makes to the server at
    /// `addr` (which only names it in errors). Dialing is the caller's: a
    /// grid member dials with its link (`link::dial::connect`), a test
    /// with [`tcp`].
    pub async fn connect<S>(
        addr: &str,
        dialing: impl Future<Output = Result<S, String>>,
    ) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Client::hello(addr, dialing.await.map(Stream::new)).await
    }

    /// Connects over plain TCP to `addr` (`host:port`) and says hello.
    pub async fn connect_tcp(addr: &str) -> Result<Client, ClientError> {
        Client::hello(addr, tcp(addr.to_string()).await.map(Stream::from)).await
    }

    /// Says hello on what dialing `addr` gave.
    pub(crate) async fn hello(
        addr: &str,
        dialed: Result<Stream, String>,
    ) -> Result<Client, ClientError> {
        let connect_err = |detail: String| ClientError::Connect {
            addr: addr.to_string(),
            detail,
        };
        Client::handshake(dialed.map_err(connect_err)?, "anonymous")
            .await
            .map_err(|e| connect_err(e.to_string()))
    }

    /// Runs the version exchange and hello on an open connection.
    pub async fn handshake(stream: impl Into<Stream>, uid: &str) -> Result<Client, WireError> {
        let Stream { read: r, write: w } = stream.into();
        let mut r = BufReader::with_capacity(256 << 10, r);
        let mut w = BufWriter::with_capacity(256 << 10, w);
        conn::write_version_line(&mut w, COMMENT).await?;
        let line = conn::read_version_line(&mut r).await?;
        let version = conn::negotiate(&line)?;
        let mut out = Vec::new();
        let hello = Message::Thello {
            tag: 0,
            version: version.as_str().into(),
            uid: uid.into(),
            strength: 0,
            crypto: vec![],
            codec: vec![],
        };
        conn::encode_frame(&mut out, version, &hello)?;
        w.write_all(&out).await?;
        w.flush().await?;
        let body = conn::read_frame(&mut r, version).await?.ok_or_else(|| {
            WireError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during hello",
            ))
        })?;
        match Message::decode(&body) {
            Ok(Message::Rhello { .. }) => {}
            Ok(Message::Rerror { error, .. }) => {
                return Err(WireError::Io(std::io::Error::other(format!(
                    "hello refused: {error}"
                ))));
            }
            other => {
                return Err(WireError::Io(std::io::Error::other(format!(
                    "unexpected reply to hello: {other:?}"
                ))));
            }
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                slots: (0..256).map(|_| None).collect(),
                closed: None,
            }),
            permits: Arc::new(Semaphore::new(256)),
            outgoing: tx,
            version,
        });
        tokio::spawn(write_loop(w, rx, shared.clone()));
        tokio::spawn(read_loop(r, shared.clone()));
        Ok(Client { shared })
    }

    /// Sends one request built for a free tag and waits for its reply.
    async fn rpc(&self, build: impl FnOnce(u8) -> Message) -> Reply {
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed("client shut down".into()))?;
        let (tx, rx) = oneshot::channel();
        let tag = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &pending.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            let tag = pending
                .slots
                .iter()
                .position(Option::is_none)
                .expect("a permit guarantees a free tag");
            pending.slots[tag] = Some((tx, permit));
            tag as u8
        };
        let mut frame = Vec::new();
        if let Err(e) = conn::encode_frame(&mut frame, self.shared.version, &build(tag)) {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .slots[tag as usize] = None;
            return Err(ClientError::Protocol(e.to_string()));
        }
        if self.shared.outgoing.send(frame).is_err() {
            return Err(ClientError::Closed("connection writer stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Closed("connection dropped".into())))
    }

    /// Reads the block `score` of type `ty`, at most `max` bytes. The reply is
    /// checked against the score. The zero score reads as empty without asking.
    pub async fn read(
        &self,
        score: &Score,
        ty: BlockType,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        if *score == Score::ZERO {
            return Ok(Vec::new());
        }
        let count = max as u32;
        let reply = self
            .rpc(|tag| Message::Tread {
                tag,
                score: *score,
                wire_type: ty.to_wire(),
                count,
            })
            .await?;
        match reply {
            Message::Rread { data, .. } => {
                if data.len() > max {
                    return Err(ClientError::Protocol(format!(
                        "read asked for {max} got {}",
                        data.len()
                    )));
                }
                if Score::of(&data) != *score && *score != Score::ALL_ZEROS {
                    return Err(ClientError::Protocol(format!(
                        "read of {score} returned data with score {}",
                        Score::of(&data)
                    )));
                }
                Ok(data)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Writes a block (already zero-truncated by the caller) and returns its
    /// score, checked against our own hash. Empty data is not sent.
    pub async fn write(&self, ty: BlockType, data: Vec<u8>) -> Result<Score, ClientError> {
        if data.is_empty() {
            return Ok(Score::ZERO);
        }
        if data.len() > MAX_BLOCK_SIZE {
            return Err(ClientError::TooLarge(data.len()));
        }
        let expected = Score::of(&data);
        let wire_type = ty.to_wire();
        match self
            .rpc(|tag| Message::Twrite {
                tag,
                wire_type,
                data,
            })
            .await?
        {
            Message::Rwrite { score, .. } if score == expected => Ok(score),
            Message::Rwrite { score, .. } => Err(ClientError::Protocol(format!(
                "sha1 hash mismatch: sent {expected}, server said {score}"
            ))),
            other => Err(unexpected(other)),
        }
    }

    /// Returns once every earlier write is durable on the server.
    pub async fn sync(&self) -> Result<(), ClientError> {
        match self.rpc(|tag| Message::Tsync { tag }).await? {
            Message::Rsync { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Checks that the server answers. plan9port's server replies to Tping with
    /// an error ("unknown request"); that counts as alive too.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.rpc(|tag| Message::Tping { tag }).await {
            Ok(Message::Rping { .. }) | Err(ClientError::Server(_)) => Ok(()),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    /// Says goodbye; the server closes the connection without replying.
    pub fn goodbye(self) {
        let mut frame = Vec::new();
        if conn::encode_frame(
            &mut frame,
            self.shared.version,
            &Message::Tgoodbye { tag: 0 },
        )
        .is_ok()
        {
            let _ = self.shared.outgoing.send(frame);
        }
    }
}

fn unexpected(reply: Message) -> ClientError {
    match reply {
        Message::Rerror { error, .. } => ClientError::Server(error),
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

/// Fails every waiting request and every later one.
fn close_all(shared: &Shared, why: String) {
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    if pending.closed.is_none() {
        pending.closed = Some(why.clone());
    }
    for slot in pending.slots.iter_mut() {
        if let Some((tx, _permit)) = slot.take() {
            let _ = tx.send(Err(ClientError::Closed(why.clone())));
        }
    }
}

async fn write_loop(
    mut w: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = rx.recv().await {
        let mut result = w.write_all(&frame).await;
        // Send everything already queued in one go before flushing.
        while result.is_ok() {
            match rx.try_recv() {
                Ok(frame) => result = w.write_all(&frame).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(w.flush().await) {
            close_all(&shared, format!("writing: {e}"));
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(mut r: BufReader<Box<dyn AsyncRead + Send + Unpin>>, shared: Arc<Shared>) {
    let why = loop {
        let body = match conn::read_frame(&mut r, shared.version).await {
            Ok(Some(body)) => body,
            Ok(None) => break "server closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let reply = match Message::decode(&body) {
            Ok(m) => m,
            Err(e) => break format!("undecodable reply: {e}"),
        };
        let waiter = shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots[reply.tag() as usize]
            .take();
        match waiter {
            Some((tx, _permit)) => {
                let reply = match reply {
                    Message::Rerror { error, .. } => Err(ClientError::Server(error)),
                    m => Ok(m),
                };
                let _ = tx.send(reply);
            }
            None => break format!("reply with unknown tag {}", reply.tag()),
        }
    };
    close_all(&shared, why);
}
