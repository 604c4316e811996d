//! The venti server: one task per connection, requests handled in order, replies
//! batched into as few writes as the client's pipelining allows.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::{self, Stream, Version, WireError};
use crate::message::DecodeError;
use crate::{BlockStore, BlockType, Message, StoreError};

/// How long shutdown waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Comment sent in our version line.
const COMMENT: &str = "colony";

/// How long to wait after a failed accept (out of descriptors, say)
/// before the next try: the listener neither ends nor spins on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One accepted connection being admitted (a TLS handshake, say): its
/// stream, or `None` if it was refused (the admitter says why).
type Admitting = Pin<Box<dyn Future<Output = Option<Stream>> + Send>>;
type Admit = Arc<dyn Fn(TcpStream, SocketAddr) -> Admitting + Send + Sync>;

/// Serves `store` on `listener` until `shutdown` resolves, then stops accepting,
/// ends the sessions and syncs the store.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn BlockStore>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let plain: Admit = Arc::new(|socket, peer| {
        tracing::debug!(%peer, "venti connection");
        Box::pin(std::future::ready(Some(Stream::from(socket))))
    });
    serve_admitted(listener, store, plain, shutdown).await
}

/// As [`serve`], each connection first admitted by `admit` (the grid's
/// mutual TLS, `link::Link::admitter`), on a task of its own so a slow
/// handshake holds up no other; a connection it refuses is closed.
pub async fn serve_with<A, F, S>(
    listener: TcpListener,
    store: Arc<dyn BlockStore>,
    admit: A,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError>
where
    A: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let admit: Admit = Arc::new(move |socket, peer| {
        let admitting = admit(socket, peer);
        Box::pin(async move { admitting.await.map(Stream::new) })
    });
    serve_admitted(listener, store, admit, shutdown).await
}

async fn serve_admitted(
    listener: TcpListener,
    store: Arc<dyn BlockStore>,
    admit: Admit,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let admitting = admit(socket, peer);
                    sessions.spawn(run_session(admitting, peer, store.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "venti listener: accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    tracing::info!(sessions = sessions.len(), "venti server shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        sessions.abort_all();
    }
    let syncing = store.clone();
    tokio::task::spawn_blocking(move || syncing.sync())
        .await
        .unwrap_or_else(|e| Err(StoreError::Failed(format!("sync task failed: {e}"))))
}

async fn run_session(
    admitting: Admitting,
    peer: SocketAddr,
    store: Arc<dyn BlockStore>,
    stop: watch::Receiver<bool>,
) {
    let Some(stream) = admitting.await else {
        return;
    };
    match session(stream, store, stop).await {
        Ok(()) => tracing::debug!(%peer, "venti connection closed"),
        Err(e) => tracing::info!(%peer, error = %e, "venti connection ended"),
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("first message was not a valid Thello: {0}")]
    BadHello(String),
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::Wire(WireError::Io(e))
    }
}

async fn session(
    stream: Stream,
    store: Arc<dyn BlockStore>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let Stream { read: r, write: w } = stream;
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut w = BufWriter::with_capacity(256 << 10, w);

    // Both sides speak first (§4.2).
    conn::write_version_line(&mut w, COMMENT).await?;
    // A TLS client on a plaintext port sends a handshake record (0x16)
    // where the version line should be: say so instead of "bad version".
    if tokio::io::AsyncBufReadExt::fill_buf(&mut r).await?.first() == Some(&0x16) {
        return Err(SessionError::BadHello(
            "a TLS handshake on a plaintext venti port (tls! addresses need a server started with --tls)".into(),
        ));
    }
    let line = conn::read_version_line(&mut r).await?;
    let version = conn::negotiate(&line)?;

    // Hello must come first, with tag 0 and the negotiated version; otherwise
    // close without a reply, as plan9port does (§4.5).
    let body = conn::read_frame(&mut r, version)
        .await?
        .ok_or_else(|| SessionError::BadHello("connection closed".into()))?;
    match Message::decode(&body) {
        Ok(Message::Thello {
            tag: 0, version: v, ..
        }) if v == version.as_str() => {}
        Ok(other) => {
            return Err(SessionError::BadHello(
                format!("{other:?}").chars().take(120).collect(),
            ));
        }
        Err(e) => return Err(SessionError::BadHello(e.to_string())),
    }
    let mut out = Vec::with_capacity(64 << 10);
    let hello = Message::Rhello {
        tag: 0,
        sid: "anonymous".into(),
        rcrypto: 0,
        rcodec: 0,
    };
    send(&mut w, &mut out, version, &hello).await?;
    w.flush().await?;

    loop {
        let frame = tokio::select! {
            frame = conn::read_frame(&mut r, version) => frame,
            _ = stop.changed() => return Ok(()),
        };
        let body = match frame {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(()),
            Err(e @ (WireError::TooLarge(_) | WireError::EmptyFrame)) => {
                // The framing can no longer be trusted: say why, then close.
                let reply = Message::Rerror {
                    tag: 0,
                    error: format!("bad packet: {e}"),
                };
                send(&mut w, &mut out, version, &reply).await?;
                w.flush().await?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let reply = match Message::decode(&body) {
            Ok(Message::Tgoodbye { .. }) => {
                w.flush().await?;
                return Ok(());
            }
            Ok(request) => handle(request, &store).await,
            Err(e @ DecodeError::UnknownType { .. }) => Message::Rerror {
                tag: e.tag().unwrap_or(0),
                error: "unknown request".into(),
            },
            Err(e) => Message::Rerror {
                tag: e.tag().unwrap_or(0),
                error: format!("bad packet: {e}"),
            },
        };
        send(&mut w, &mut out, version, &reply).await?;
        // Batch replies while the client has more requests queued.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

async fn send(
    w: &mut BufWriter<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    out: &mut Vec<u8>,
    version: Version,
    m: &Message,
) -> Result<(), SessionError> {
    out.clear();
    conn::encode_frame(out, version, m)?;
    w.write_all(out).await?;
    Ok(())
}

/// Answers one request (anything but Thello-first and Tgoodbye).
async fn handle(request: Message, store: &Arc<dyn BlockStore>) -> Message {
    let error = |tag, error: String| Message::Rerror { tag, error };
    match request {
        Message::Tping { tag } => Message::Rping { tag },
        Message::Tread {
            tag,
            score,
            wire_type,
            count,
        } => {
            let Some(ty) = BlockType::from_wire(wire_type) else {
                return error(tag, format!("invalid block type {wire_type}"));
            };
            match store.read(&score, ty) {
                Ok(Some(data)) if data.len() > count as usize => error(
                    tag,
                    format!(
                        "read too small: asked for {count} need at least {}",
                        data.len()
                    ),
                ),
                Ok(Some(data)) => Message::Rread { tag, data },
                Ok(None) => error(tag, format!("no block with score {score}/{ty} exists")),
                Err(e) => {
                    tracing::error!(error = %e, "venti read failed");
                    error(tag, e.to_string())
                }
            }
        }
        Message::Twrite {
            tag,
            wire_type,
            data,
        } => {
            let Some(ty) = BlockType::from_wire(wire_type) else {
                return error(tag, format!("invalid block type {wire_type}"));
            };
            match store.write(ty, &data) {
                Ok(score) => Message::Rwrite { tag, score },
                // The client's fault, said to it; not the server's to log.
                Err(e @ (StoreError::TooLarge(_) | StoreError::Collision(_))) => {
                    error(tag, e.to_string())
                }
                Err(e) => {
                    tracing::error!(error = %e, "venti write failed");
                    error(tag, e.to_string())
                }
            }
        }
        Message::Tsync { tag } => {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.sync()).await {
                Ok(Ok(())) => Message::Rsync { tag },
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "venti sync failed");
                    error(tag, e.to_string())
                }
                Err(e) => error(tag, format!("sync failed: {e}")),
            }
        }
        // A second Thello, replies sent as requests, …: plan9port's wording.
        other => error(other.tag(), "unknown request".into()),
    }
}
