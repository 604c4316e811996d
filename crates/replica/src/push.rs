//! The pusher: one task per configured peer that sends the peer what this
//! node's log holds past the peer's position, then the name bindings those
//! blocks carry, then the users — and waits, without polling, for the log
//! or the catalog to move.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use venti::LogRecord;

use crate::frame::{self, Frame, VERSION, WireBlock};
use crate::progress::{Position, ProgressFile};
use crate::{Peer, Replicator};

/// How long a reply may take (a batch includes the peer's fsync).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Connecting, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry delays after a failed session.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Link(#[from] link::LinkError),
    #[error("{0}")]
    Other(String),
}

fn other(why: impl Into<String>) -> PushError {
    PushError::Other(why.into())
}

/// Runs the pusher for `peer` until the process ends, reconnecting after
/// every failure.
pub async fn run(rep: Arc<Replicator>, peer: Peer) {
    let progress = ProgressFile::new(&rep.dir, &peer.name);
    rep.board.outgoing(&peer.name, |o| {
        o.address = peer.address.clone();
        o.plain_venti = peer.plain_venti;
        o.position = progress.load().blocks;
        o.names_sent = progress.load().names;
    });
    let mut delay = RETRY_FIRST;
    loop {
        let result = if peer.plain_venti {
            session_venti(&rep, &peer, &progress).await
        } else {
            session(&rep, &peer, &progress).await
        };
        let made_progress = match &result {
            Ok(()) => true,
            Err((progressed, e)) => {
                tracing::warn!(peer = %peer.name, address = %peer.address, error = %e, "replication link failed; retrying");
                rep.board.outgoing(&peer.name, |o| {
                    o.connected = false;
                    o.last_error = Some((SystemTime::now(), e.to_string()));
                });
                *progressed
            }
        };
        if made_progress {
            delay = RETRY_FIRST;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// A reply within the deadline, checked to be `want` for `seq`.
async fn reply<R: AsyncRead + Unpin>(r: &mut R, want: &str, seq: u64) -> Result<Frame, PushError> {
    let f = read_reply(r, want).await?;
    let got_seq = match &f {
        Frame::Need { seq, .. }
        | Frame::Stored { seq }
        | Frame::Applied { seq }
        | Frame::Pong { seq } => Some(*seq),
        _ => None,
    };
    if f.kind() != want || got_seq.is_some_and(|s| s != seq) {
        return Err(other(format!(
            "protocol error: expected {want} {seq}, got {} {got_seq:?}",
            f.kind()
        )));
    }
    Ok(f)
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), PushError> {
    tokio::time::timeout(REPLY_TIMEOUT, frame::write(w, f))
        .await
        .map_err(|_| {
            other(format!(
                "could not send within {} s",
                REPLY_TIMEOUT.as_secs()
            ))
        })??;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, PushError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| other(format!("a blocking task failed: {e}")))?
        .map_err(PushError::Other)
}

/// The next batch of the log from `from`.
async fn next_batch(rep: &Arc<Replicator>, from: u64) -> Result<(Vec<LogRecord>, u64), PushError> {
    let store = rep.store.clone();
    let (records, bytes) = (rep.batch_records, rep.batch_bytes);
    blocking(move || {
        store
            .read_log(from, records, bytes)
            .map_err(|e| e.to_string())
    })
    .await
}

/// How many batches may be unacknowledged at once: the next batch travels
/// while the peer makes the last one durable. A SIGKILL of the peer loses
/// none of them (it writes each batch to its log file before it syncs), so
/// at most the batch on the wire is sent again; a killed pusher re-offers
/// what was unacknowledged and the peer, which has it, asks for none.
const WINDOW: usize = 2;

/// A batch sent and not yet acknowledged.
struct Batch {
    seq: u64,
    /// The log offset after it.
    next: u64,
    offered: u64,
    sent: u64,
    bytes: u64,
}

#[derive(Default)]
struct Window {
    batches: std::collections::VecDeque<Batch>,
}

impl Window {
    /// Takes `f`, which must acknowledge the oldest batch, and moves the
    /// durable position past it.
    async fn acknowledged(
        &mut self,
        f: Frame,
        rep: &Arc<Replicator>,
        peer: &Peer,
        progress: &ProgressFile,
        pos: &mut Position,
    ) -> Result<(), PushError> {
        let Some(oldest) = self.batches.front() else {
            return Err(other(format!(
                "protocol error: an unexpected {} frame",
                f.kind()
            )));
        };
        match f {
            Frame::Stored { seq } if seq == oldest.seq => {}
            f => {
                return Err(other(format!(
                    "protocol error: expected Stored {}, got {}",
                    oldest.seq,
                    f.kind()
                )));
            }
        }
        let b = self.batches.pop_front().expect("checked above");
        pos.blocks = b.next;
        save(progress, *pos).await?;
        rep.board.outgoing(&peer.name, |o| {
            o.position = b.next;
            o.blocks_offered += b.offered;
            o.blocks_sent += b.sent;
            o.bytes_sent += b.bytes;
            o.last_contact = Some(SystemTime::now());
            o.last_error = None;
        });
        Ok(())
    }
}

/// Any reply within the deadline; a refusal is an error.
async fn reply_any<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, PushError> {
    read_reply(r, "").await
}

/// The next frame within the deadline (`what` names it in the timeout
/// error); a refusal is an error.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Result<Frame, PushError> {
    let f = tokio::time::timeout(REPLY_TIMEOUT, frame::read(r))
        .await
        .map_err(|_| {
            let what = if what.is_empty() {
                String::new()
            } else {
                format!("{what} ")
            };
            other(format!(
                "no {what}reply within {} s",
                REPLY_TIMEOUT.as_secs()
            ))
        })??;
    if let Frame::Error { message } = &f {
        return Err(other(format!("the peer refused: {message}")));
    }
    Ok(f)
}

async fn save(progress: &ProgressFile, pos: Position) -> Result<(), PushError> {
    let progress = progress.clone();
    blocking(move || {
        progress
            .save(pos)
            .map_err(|e| format!("saving replication progress: {e}"))
    })
    .await
}

/// One connection to a colony peer. Err carries whether anything was
/// acknowledged before the failure.
async fn session(
    rep: &Arc<Replicator>,
    peer: &Peer,
    progress: &ProgressFile,
) -> Result<(), (bool, PushError)> {
    let mut progressed = false;
    let fail = |p: bool| move |e: PushError| (p, e);
    let addr = link::dial::parse_transport(&peer.address)
        .map(|(_, a)| a)
        .map_err(|e| other(e.to_string()))
        .map_err(fail(false))?;
    let link = rep
        .link
        .clone()
        .ok_or_else(|| {
            other("replicating to a colony peer needs the node's certificate (--tls DIR)")
        })
        .map_err(fail(false))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| other(format!("connecting to {addr}: timed out")))
        .map_err(fail(false))?
        .map_err(|e| other(format!("connecting to {addr}: {e}")))
        .map_err(fail(false))?;
    let _ = tcp.set_nodelay(true);
    let (tls, who) = link
        .connect(tcp, &[link::Role::Storage])
        .await
        .map_err(PushError::from)
        .map_err(fail(false))?;
    if who.name != peer.name {
        return Err((
            false,
            other(format!(
                "the server at {} is {}, not the configured peer {}",
                peer.address, who.name, peer.name
            )),
        ));
    }
    let (mut r, mut w) = tokio::io::split(tls);
    send(
        &mut w,
        &Frame::Hello {
            version: VERSION,
            node: rep.node.clone(),
            flags: 0,
        },
    )
    .await
    .map_err(fail(false))?;
    let names_first = match tokio::time::timeout(REPLY_TIMEOUT, frame::read(&mut r)).await {
        Ok(Ok(Frame::Hello { version, flags, .. })) if version == VERSION => {
            flags & frame::READ_THROUGH != 0
        }
        Ok(Ok(Frame::Hello { version, .. })) => {
            return Err((
                false,
                other(format!(
                    "the peer speaks replication version {version}, this node {VERSION}"
                )),
            ));
        }
        Ok(Ok(Frame::Error { message })) => {
            return Err((false, other(format!("the peer refused: {message}"))));
        }
        Ok(Ok(f)) => return Err((false, other(format!("expected Hello, got {}", f.kind())))),
        Ok(Err(e)) => return Err((false, e.into())),
        Err(_) => return Err((false, other("no Hello from the peer"))),
    };
    rep.board.outgoing(&peer.name, |o| {
        o.connected = true;
        o.last_contact = Some(SystemTime::now());
    });
    tracing::info!(peer = %peer.name, address = %peer.address, "replication link up");

    let mut pos = progress.load();
    let mut durable = rep.store.watch_durable();
    let mut changes = rep.changes.clone();
    let mut users_sent: Option<u64> = None;
    let mut seq = 0u64;
    // Batches sent but not yet acknowledged, oldest first, and where the
    // next batch starts.
    let mut window: Window = Window::default();
    let mut cursor = pos.blocks;
    loop {
        // Mark what is seen before looking, so a change while we look
        // wakes the wait below.
        durable.borrow_and_update();
        changes.borrow_and_update();

        if names_first && window.batches.is_empty() {
            // The peer reads missing blocks through from us: it may have
            // every name now, ahead of the blocks, and the users with them.
            let io = (&mut r, &mut w);
            if push_names(
                rep,
                peer,
                progress,
                io,
                &mut seq,
                &mut pos,
                NamesAfter::Anything,
            )
            .await
            .map_err(fail(progressed))?
            {
                progressed = true;
            }
            if push_users(rep, (&mut r, &mut w), &mut seq, &mut users_sent)
                .await
                .map_err(fail(progressed))?
            {
                progressed = true;
            }
        }
        if window.batches.len() < WINDOW {
            let (records, next) = match next_batch(rep, cursor).await {
                Ok(batch) => batch,
                Err(e) if cursor != venti::LogStore::LOG_START && window.batches.is_empty() => {
                    // A position the log does not know (a store replaced
                    // under its progress file): start over, which costs the
                    // peer one score per block it already has.
                    tracing::warn!(peer = %peer.name, position = cursor, error = %e, "replication position not in the log; starting over from the beginning");
                    pos = Position::default();
                    save(progress, pos).await.map_err(fail(progressed))?;
                    return Err((progressed, e));
                }
                Err(e) => return Err((progressed, e)),
            };
            if !records.is_empty() {
                seq += 1;
                let offer: Vec<(u8, venti::Score)> =
                    records.iter().map(|r| (r.wire_type, r.score)).collect();
                send(&mut w, &Frame::Offer { seq, blocks: offer })
                    .await
                    .map_err(fail(progressed))?;
                // Acknowledgements of earlier batches may come first.
                let want = loop {
                    match reply_any(&mut r).await.map_err(fail(progressed))? {
                        Frame::Need { seq: s, want } if s == seq => break want,
                        f => {
                            window
                                .acknowledged(f, rep, peer, progress, &mut pos)
                                .await
                                .map_err(fail(progressed))?;
                            progressed = true;
                        }
                    }
                };
                if want.len() != records.len() {
                    return Err((
                        progressed,
                        other(format!(
                            "protocol error: {} answers for {} offered blocks",
                            want.len(),
                            records.len()
                        )),
                    ));
                }
                let offered = records.len() as u64;
                let blocks: Vec<WireBlock> = records
                    .into_iter()
                    .zip(&want)
                    .filter(|(_, w)| **w)
                    .map(|(rec, _)| WireBlock {
                        wire_type: rec.wire_type,
                        score: rec.score,
                        data: rec.data,
                    })
                    .collect();
                let batch = Batch {
                    seq,
                    next,
                    offered,
                    sent: blocks.len() as u64,
                    bytes: blocks.iter().map(|b| b.data.len() as u64).sum(),
                };
                send(
                    &mut w,
                    &Frame::Blocks {
                        seq,
                        upto: next,
                        blocks,
                    },
                )
                .await
                .map_err(fail(progressed))?;
                window.batches.push_back(batch);
                cursor = next;
                continue;
            }
            if next != cursor && window.batches.is_empty() {
                // Only sync markers: nothing to send, but the position moves.
                cursor = next;
                pos.blocks = next;
                save(progress, pos).await.map_err(fail(progressed))?;
                rep.board.outgoing(&peer.name, |o| o.position = next);
                continue;
            }
        }
        if !window.batches.is_empty() {
            let f = reply_any(&mut r).await.map_err(fail(progressed))?;
            window
                .acknowledged(f, rep, peer, progress, &mut pos)
                .await
                .map_err(fail(progressed))?;
            progressed = true;
            continue;
        }

        // Blocks are acknowledged up to `pos.blocks`: send the bindings
        // whose blocks lie before it, never one beyond.
        let acknowledged = NamesAfter::Blocks(pos.blocks);
        let io = (&mut r, &mut w);
        if push_names(rep, peer, progress, io, &mut seq, &mut pos, acknowledged)
            .await
            .map_err(fail(progressed))?
        {
            progressed = true;
            continue;
        }
        if push_users(rep, (&mut r, &mut w), &mut seq, &mut users_sent)
            .await
            .map_err(fail(progressed))?
        {
            progressed = true;
            continue;
        }

        // Nothing new: wait for the log or the catalog to move; now and
        // then make sure the peer is still there (one round trip, no scan).
        tokio::select! {
            _ = durable.changed() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(rep.catch_up) => {
                seq += 1;
                send(&mut w, &Frame::Ping { seq }).await.map_err(fail(progressed))?;
                reply(&mut r, "Pong", seq).await.map_err(fail(progressed))?;
                rep.board.outgoing(&peer.name, |o| o.last_contact = Some(SystemTime::now()));
            }
        }
    }
}

/// Which bindings a peer may be sent.
enum NamesAfter {
    /// Those whose blocks lie before this offset of our log (acknowledged).
    Blocks(u64),
    /// All, each with its offset (`at=`): the peer reads blocks through.
    Anything,
}

/// Sends the bindings past `pos.names` that `gate` allows and moves
/// `pos.names` past them; true if there were any.
async fn push_names<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rep: &Arc<Replicator>,
    peer: &Peer,
    progress: &ProgressFile,
    (r, w): (&mut R, &mut W),
    seq: &mut u64,
    pos: &mut Position,
    gate: NamesAfter,
) -> Result<bool, PushError> {
    let catalog = rep.catalog.clone();
    let from = pos.names;
    let (upto, with_at) = match gate {
        NamesAfter::Blocks(upto) => (upto, false),
        NamesAfter::Anything => (u64::MAX, true),
    };
    let (text, count) = blocking(move || catalog.names_since(from, upto, with_at)).await?;
    if count == pos.names {
        return Ok(false);
    }
    if !text.is_empty() {
        *seq += 1;
        send(w, &Frame::Names { seq: *seq, text }).await?;
        reply(r, "Applied", *seq).await?;
    }
    pos.names = count;
    save(progress, *pos).await?;
    rep.board.outgoing(&peer.name, |o| {
        o.names_sent = count;
        o.last_contact = Some(SystemTime::now());
    });
    Ok(true)
}

/// Sends the users if they changed since `sent`; true if it did.
async fn push_users<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rep: &Arc<Replicator>,
    (r, w): (&mut R, &mut W),
    seq: &mut u64,
    sent: &mut Option<u64>,
) -> Result<bool, PushError> {
    let catalog = rep.catalog.clone();
    let users = blocking(move || catalog.users_text()).await?;
    let hash = fingerprint(&users);
    if *sent == Some(hash) {
        return Ok(false);
    }
    *seq += 1;
    send(
        w,
        &Frame::Users {
            seq: *seq,
            text: users,
        },
    )
    .await?;
    reply(r, "Applied", *seq).await?;
    *sent = Some(hash);
    Ok(true)
}

/// A cheap, stable fingerprint of a text (FNV-1a).
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Mirroring into a plain venti server (plan9port's, say): it has no
/// offers, so every block past the position is written (venti stores a
/// block it has once) and a sync acknowledges the batch. Names stay home.
async fn session_venti(
    rep: &Arc<Replicator>,
    peer: &Peer,
    progress: &ProgressFile,
) -> Result<(), (bool, PushError)> {
    let mut progressed = false;
    let fail = |p: bool| move |e: PushError| (p, e);
    let client = tokio::time::timeout(
        CONNECT_TIMEOUT,
        venti::Client::connect(
            &peer.address,
            link::dial::connect(&peer.address, rep.link.as_ref(), link::dial::STORE_SERVERS),
        ),
    )
    .await
    .map_err(|_| other(format!("connecting to {}: timed out", peer.address)))
    .map_err(fail(false))?
    .map_err(|e| other(e.to_string()))
    .map_err(fail(false))?;
    let client = Arc::new(client);
    rep.board.outgoing(&peer.name, |o| {
        o.connected = true;
        o.last_contact = Some(SystemTime::now());
    });
    let mut pos = progress.load();
    let mut durable = rep.store.watch_durable();
    loop {
        durable.borrow_and_update();
        let (records, next) = next_batch(rep, pos.blocks)
            .await
            .map_err(fail(progressed))?;
        if records.is_empty() && next != pos.blocks {
            pos.blocks = next;
            save(progress, pos).await.map_err(fail(progressed))?;
            rep.board.outgoing(&peer.name, |o| o.position = next);
            continue;
        }
        if records.is_empty() {
            tokio::select! {
                _ = durable.changed() => {}
                _ = tokio::time::sleep(rep.catch_up) => {
                    tokio::time::timeout(REPLY_TIMEOUT, client.ping()).await
                        .map_err(|_| other("the venti server did not answer a ping"))
                        .map_err(fail(progressed))?
                        .map_err(|e| other(e.to_string()))
                        .map_err(fail(progressed))?;
                    rep.board.outgoing(&peer.name, |o| o.last_contact = Some(SystemTime::now()));
                }
            }
            continue;
        }
        let (n, bytes) = (
            records.len() as u64,
            records.iter().map(|r| r.data.len() as u64).sum::<u64>(),
        );
        // The client is pipelined: keep many writes in flight.
        let mut writes = tokio::task::JoinSet::new();
        for rec in records {
            let client = client.clone();
            writes.spawn(async move {
                let Some(ty) = venti::BlockType::from_wire(rec.wire_type) else {
                    return Err(format!("log record of unknown wire type {}", rec.wire_type));
                };
                let got = match client.write(ty, rec.data).await {
                    Ok(got) => got,
                    // The peer refuses it for good (a block of ours from
                    // before collision detection): skipped, not retried for
                    // ever. A venti server says why only in words.
                    Err(e) if e.to_string().contains(venti::COLLISION_REFUSAL) => {
                        tracing::warn!(score = %rec.score, error = %e, "a block the peer refuses as a SHA-1 collision was not pushed");
                        return Ok(());
                    }
                    Err(e) => return Err(e.to_string()),
                };
                if got != rec.score {
                    return Err(format!("the server stored {} as {got}", rec.score));
                }
                Ok(())
            });
        }
        while let Some(done) = writes.join_next().await {
            done.map_err(|e| other(e.to_string()))
                .map_err(fail(progressed))?
                .map_err(other)
                .map_err(fail(progressed))?;
        }
        tokio::time::timeout(REPLY_TIMEOUT, client.sync())
            .await
            .map_err(|_| other("the venti server did not acknowledge a sync"))
            .map_err(fail(progressed))?
            .map_err(|e| other(e.to_string()))
            .map_err(fail(progressed))?;
        pos.blocks = next;
        save(progress, pos).await.map_err(fail(progressed))?;
        progressed = true;
        rep.board.outgoing(&peer.name, |o| {
            o.position = pos.blocks;
            o.blocks_offered += n;
            o.blocks_sent += n;
            o.bytes_sent += bytes;
            o.last_contact = Some(SystemTime::now());
            o.last_error = None;
        });
    }
}
