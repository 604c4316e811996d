//! The keeper: the receiving end of a peer's pusher. It answers offers with
//! what this node lacks, stores the blocks and makes them durable before it
//! acknowledges, and merges names and users. Blocks it stores enter this
//! node's log, so its own pushers forward them onward.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use venti::{BlockStore, BlockType, Score, StoreError};

use crate::Replicator;
use crate::frame::{self, Frame, VERSION};

/// A pusher pings at least this often while idle; silence longer than
/// this means it is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts pushers (storage nodes) and status clients (admins, any grid
/// member) until the listener fails.
pub async fn serve(rep: Arc<Replicator>, listener: TcpListener) {
    loop {
        let (socket, addr) = link::listener::accept(&listener, "replication").await;
        let rep = rep.clone();
        tokio::spawn(async move {
            match connection(&rep, socket, addr).await {
                Err(e) if link::listener::ordinary_disconnect(&e) => {
                    tracing::debug!(peer = %addr, error = %e, "replication connection closed by its peer")
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "replication connection ended"),
                Ok(()) => {}
            }
        });
    }
}

async fn connection(
    rep: &Arc<Replicator>,
    socket: TcpStream,
    addr: SocketAddr,
) -> Result<(), String> {
    let _ = socket.set_nodelay(true);
    let link = rep
        .link
        .clone()
        .ok_or("this node has no certificate; it cannot accept replication")?;
    let (tls, who) = match link.accept(socket, addr, &link::Role::ALL).await {
        Ok(admitted) => admitted,
        // Logged within the node's budget of refusal lines; a refused
        // stranger is not a replication connection that ended.
        Err(e) => {
            link.log_refusal("a replication link", &e);
            return Ok(());
        }
    };
    let (mut r, mut w) = tokio::io::split(tls);
    // Only storage nodes replicate; anyone else may only ask for status,
    // so its first frame is read with that frame's size as the limit
    // (a large frame announced by an admin or cpu certificate is refused
    // before a byte of it is held).
    let limit = if who.role == link::Role::Storage {
        frame::MAX_FRAME
    } else {
        frame::MAX_STATUS_REQUEST
    };
    let first = match tokio::time::timeout(IDLE_TIMEOUT, frame::read_at_most(&mut r, limit)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) if who.role != link::Role::Storage => {
            let message = format!(
                "{} ({}) may not replicate here; only storage nodes may, others only ask for status ({e})",
                who.name,
                who.role.as_str()
            );
            return refuse(&mut w, message).await;
        }
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("{} sent nothing", who.name)),
    };
    match (first, who.role) {
        (Frame::StatusRequest, _) => {
            let text = rep.status_text();
            send(&mut w, &Frame::Status { text }).await
        }
        (Frame::Ask { seq, user, line }, link::Role::Storage) => match rep.desk.get() {
            Some(desk) => {
                crate::ask::answer(desk.clone(), &who.name, (seq, user, line), &mut r, &mut w).await
            }
            None => {
                refuse(
                    &mut w,
                    "this node has no command set to ask (it is still starting)".into(),
                )
                .await
            }
        },
        (Frame::Hello { version, .. }, link::Role::Storage) if version == VERSION => {
            send(
                &mut w,
                &Frame::Hello {
                    version: VERSION,
                    node: rep.node.clone(),
                    flags: if rep.read_through {
                        frame::READ_THROUGH
                    } else {
                        0
                    },
                },
            )
            .await?;
            tracing::info!(peer = %who.name, address = %addr, "replicating from a peer");
            // Remembered for good: a collection here must ask every node
            // that ever pushed here what it keeps.
            if let Err(e) = rep.note_pusher(&who.name) {
                tracing::warn!(peer = %who.name, error = %e, "remembering a pushing peer");
            }
            let result = keep(rep, &who.name, &mut r, &mut w).await;
            if let Err(e) = &result {
                let _ = send(&mut w, &Frame::Error { message: e.clone() }).await;
            }
            result
        }
        (Frame::Hello { version, .. }, link::Role::Storage) => {
            refuse(
                &mut w,
                format!("this node speaks replication version {VERSION}, not {version}"),
            )
            .await
        }
        (f, role) => {
            let message = format!(
                "{} ({}) may not replicate here; only storage nodes may ({} refused)",
                who.name,
                role.as_str(),
                f.kind()
            );
            refuse(&mut w, message).await
        }
    }
}

/// Tells the peer why it is refused (if it still listens), and fails.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    message: String,
) -> Result<(), String> {
    let _ = send(
        w,
        &Frame::Error {
            message: message.clone(),
        },
    )
    .await;
    Err(message)
}

async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame, String> {
    match tokio::time::timeout(IDLE_TIMEOUT, frame::read(r)).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the peer was silent for {} s",
            IDLE_TIMEOUT.as_secs()
        )),
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), String> {
    match tokio::time::timeout(IDLE_TIMEOUT, frame::write(w, f)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the peer stopped reading".into()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a blocking task failed: {e}"))?
}

/// The keeper's side of one pusher's session, after the Hellos: answers
/// its offers, stores and acknowledges its batches, merges its names and
/// users, and serves its fetches, until it hangs up (`Ok`) or breaks the
/// protocol (`Err`, which the caller sends as an `Error` frame). Public so
/// that the fuzz target `replica_frames` can drive a session in memory.
pub async fn keep<R, W>(
    rep: &Arc<Replicator>,
    peer: &str,
    r: &mut R,
    w: &mut W,
) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Three strands, so the next batch is received and written while the
    // last one is made durable: the reader answers offers and writes
    // blocks; the syncer makes each written batch durable, in order, and
    // acknowledges it; the writer sends what both reply.
    let (replies, mut outgoing) = tokio::sync::mpsc::channel::<Frame>(8);
    let (written, mut to_sync) = tokio::sync::mpsc::channel::<(u64, u64, u64, u64)>(4);
    let writer = async move {
        while let Some(f) = outgoing.recv().await {
            send(w, &f).await?;
        }
        Ok::<(), String>(())
    };
    let acks = replies.clone();
    let syncer = async move {
        while let Some((seq, upto, n, bytes)) = to_sync.recv().await {
            let store = rep.store.clone();
            // Durable before acknowledged: the pusher moves its position
            // past these blocks on our word.
            blocking(move || store.sync().map_err(|e| e.to_string())).await?;
            if rep.read_through {
                // Names this node took ahead of their blocks may now go on.
                let catalog = rep.catalog.clone();
                let from = peer.to_string();
                blocking(move || catalog.blocks_arrived(&from, upto)).await?;
            }
            rep.board.incoming(peer, |i| {
                i.blocks_stored += n;
                i.bytes_stored += bytes;
            });
            if acks.send(Frame::Stored { seq }).await.is_err() {
                break;
            }
        }
        Ok::<(), String>(())
    };
    let reader = async move {
        let result = read_frames(rep, peer, r, &replies, &written).await;
        drop(written);
        drop(replies);
        result
    };
    tokio::try_join!(reader, syncer, writer).map(|_| ())
}

async fn read_frames<R>(
    rep: &Arc<Replicator>,
    peer: &str,
    r: &mut R,
    replies: &tokio::sync::mpsc::Sender<Frame>,
    written: &tokio::sync::mpsc::Sender<(u64, u64, u64, u64)>,
) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let reply = |f: Frame| async move {
        replies
            .send(f)
            .await
            .map_err(|_| "the connection is closing".to_string())
    };
    // The blocks of the last offer this node asked for, to check the
    // blocks that follow against.
    let mut asked: (u64, HashSet<(u8, Score)>) = (0, HashSet::new());
    loop {
        let f = match read(r).await {
            Ok(f) => f,
            // A pusher that hangs up between rounds is not an error.
            Err(e) if e.contains("early eof") || e.contains("close_notify") => return Ok(()),
            Err(e) => return Err(e),
        };
        rep.board
            .incoming(peer, |i| i.last_contact = Some(SystemTime::now()));
        match f {
            Frame::Offer { seq, blocks } => {
                let store = rep.store.clone();
                let offered = blocks.len() as u64;
                let (want, lacking) = blocking(move || {
                    let mut want = Vec::with_capacity(blocks.len());
                    let mut lacking = HashSet::new();
                    for (ty, score) in &blocks {
                        // A block held is claimed: the pusher will not send
                        // it, so it must outlive our collections until the
                        // name that needs it arrives (an old one is copied
                        // forward; see venti's `ages`).
                        let has = store.claim(score, *ty).map_err(|e| e.to_string())?;
                        // Asked for once, even if offered twice in one batch.
                        want.push(!has && lacking.insert((*ty, *score)));
                    }
                    Ok((want, lacking))
                })
                .await?;
                asked = (seq, lacking);
                rep.board.incoming(peer, |i| i.blocks_offered += offered);
                reply(Frame::Need { seq, want }).await?;
            }
            Frame::Blocks { seq, upto, blocks } => {
                if seq != asked.0 {
                    return Err(format!(
                        "blocks for batch {seq}, but the offer was {}",
                        asked.0
                    ));
                }
                let mut wanted = std::mem::take(&mut asked.1);
                for b in &blocks {
                    if !wanted.remove(&(b.wire_type, b.score)) {
                        return Err(format!("block {} was not asked for", b.score));
                    }
                    if BlockType::from_wire(b.wire_type).is_none() {
                        return Err(format!(
                            "block {} has unknown wire type {}",
                            b.score, b.wire_type
                        ));
                    }
                }
                if !wanted.is_empty() {
                    return Err(format!("{} asked-for blocks did not come", wanted.len()));
                }
                let (store, who) = (rep.store.clone(), peer.to_string());
                let (n, bytes) = (
                    blocks.len() as u64,
                    blocks.iter().map(|b| b.data.len() as u64).sum::<u64>(),
                );
                blocking(move || {
                    for b in &blocks {
                        let ty = BlockType::from_wire(b.wire_type).expect("checked above");
                        if Score::of(&b.data) != b.score {
                            return Err(format!(
                                "block {} does not hash to its score; refused",
                                b.score
                            ));
                        }
                        match store.write(ty, &b.data) {
                            Ok(_) => {}
                            // Refused here for good (a peer may hold it from
                            // before collision detection, or be older): skipped,
                            // so that replication goes on past it.
                            Err(StoreError::Collision(c)) => {
                                tracing::warn!(peer = %who, "{c}; not kept")
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    // Into the log file now: a SIGKILL of this process then
                    // loses none of the batch, durable or not.
                    store.flush().map_err(|e| e.to_string())
                })
                .await?;
                tracing::debug!(peer, blocks = n, bytes, "stored a batch");
                written
                    .send((seq, upto, n, bytes))
                    .await
                    .map_err(|_| "the connection is closing".to_string())?;
            }
            Frame::Names { seq, text } => {
                let catalog = rep.catalog.clone();
                let from = peer.to_string();
                let n = text.lines().filter(|l| l.starts_with("scorename=")).count() as u64;
                blocking(move || catalog.merge_names(&text, &from)).await?;
                rep.board.incoming(peer, |i| i.names_merged += n);
                reply(Frame::Applied { seq }).await?;
            }
            Frame::Users { seq, text } => {
                let catalog = rep.catalog.clone();
                blocking(move || catalog.merge_users(&text)).await?;
                reply(Frame::Applied { seq }).await?;
            }
            Frame::Ping { seq } => reply(Frame::Pong { seq }).await?,
            Frame::Fetch {
                seq,
                wire_type,
                score,
            } => {
                // A peer reading through: blocks are content-addressed and
                // every storage node may hold them all.
                let store = rep.store.clone();
                let data = blocking(move || match BlockType::from_wire(wire_type) {
                    Some(ty) => store.read(&score, ty).map_err(|e| e.to_string()),
                    None => Ok(None),
                })
                .await?;
                reply(Frame::Block { seq, data }).await?;
            }
            other => return Err(format!("unexpected {} frame from a pusher", other.kind())),
        }
    }
}
