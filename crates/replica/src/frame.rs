//! The replication protocol's messages and their framing.
//!
//! Every frame is `length[4] kind[1] body`, big-endian, the length counting
//! kind and body. One side (the *pusher*) offers, the other (the *keeper*)
//! answers, strictly in turn:
//!
//! ```text
//! pusher                          keeper
//! Hello(version, node, flags) →
//!                             ←   Hello(version, node, flags)   READ_THROUGH: send names first
//! Offer(seq, [(type, score)]) →                         what the log holds next
//!                             ←   Need(seq, bitmap)     what the keeper lacks
//! Blocks(seq, upto, [block])  →                         only the lacking ones; upto: the
//!                                                       pusher's log offset after the batch
//!                             ←   Stored(seq)           after they are durable
//! Names(seq, ndb text)        →                         bindings whose blocks are acknowledged
//!                             ←   Applied(seq)
//! Users(seq, ndb text)        →
//!                             ←   Applied(seq)
//! Ping(seq)                   →                         a round with nothing new
//!                             ←   Pong(seq)
//! Fetch(seq, type, score)     →                         a node reading through
//!                             ←   Block(seq, bytes or none)
//! StatusRequest               →                         an admin's client
//!                             ←   Status(text)
//! Ask(seq, user, line)        →                         a storage node, about a user's
//!                             ←   Told(seq, out, err, status)   work placed by the keeper
//!                             ←   Error(text)           instead of any reply
//! ```
//!
//! Decoding never panics and never allocates more than the frame holds: a
//! peer's bytes are untrusted until the score check of each block.

use frames::{Reader, Writer};
use venti::{MAX_BLOCK_SIZE, SCORE_SIZE, Score};

/// The protocol version both sides must speak.
pub const VERSION: u8 = 1;
/// The largest frame body accepted.
pub const MAX_FRAME: usize = 32 << 20;
/// Hello flag of a keeper that reads missing blocks through from its
/// peers: it wants names before their blocks.
pub const READ_THROUGH: u8 = 1;
/// The most blocks one offer may carry.
pub const MAX_OFFER: usize = 64 * 1024;

/// One block on the wire: its wire type, score and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireBlock {
    pub wire_type: u8,
    pub score: Score,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u8,
        node: String,
        flags: u8,
    },
    Offer {
        seq: u64,
        blocks: Vec<(u8, Score)>,
    },
    Need {
        seq: u64,
        want: Vec<bool>,
    },
    Blocks {
        seq: u64,
        upto: u64,
        blocks: Vec<WireBlock>,
    },
    Stored {
        seq: u64,
    },
    Names {
        seq: u64,
        text: String,
    },
    Users {
        seq: u64,
        text: String,
    },
    Applied {
        seq: u64,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Fetch {
        seq: u64,
        wire_type: u8,
        score: Score,
    },
    Block {
        seq: u64,
        data: Option<Vec<u8>>,
    },
    StatusRequest,
    Status {
        text: String,
    },
    /// A storage node asks its peer to carry out `line` for `user` as
    /// the peer alone sees it (see [`crate::ask`]).
    Ask {
        seq: u64,
        user: String,
        line: String,
    },
    /// What the command printed and its exit status.
    Told {
        seq: u64,
        out: Vec<u8>,
        err: String,
        status: u32,
    },
    Error {
        message: String,
    },
}

/// Why bytes are not a replication frame.
pub type FrameError = frames::Malformed;

/// The protocol's name in its errors.
const PROTOCOL: &str = "replication";

fn bad(why: impl Into<String>) -> FrameError {
    FrameError::new(PROTOCOL, why)
}

const HELLO: u8 = 1;
const OFFER: u8 = 2;
const NEED: u8 = 3;
const BLOCKS: u8 = 4;
const STORED: u8 = 5;
const NAMES: u8 = 6;
const USERS: u8 = 7;
const APPLIED: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;
const STATUS_REQUEST: u8 = 11;
const STATUS: u8 = 12;
const ERROR: u8 = 13;
const FETCH: u8 = 14;
const BLOCK: u8 = 15;
const ASK: u8 = 16;
const TOLD: u8 = 17;

impl Frame {
    /// The frame's name, for errors ("expected Stored, got Error").
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Offer { .. } => "Offer",
            Frame::Need { .. } => "Need",
            Frame::Blocks { .. } => "Blocks",
            Frame::Stored { .. } => "Stored",
            Frame::Names { .. } => "Names",
            Frame::Users { .. } => "Users",
            Frame::Applied { .. } => "Applied",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::Fetch { .. } => "Fetch",
            Frame::Block { .. } => "Block",
            Frame::StatusRequest => "StatusRequest",
            Frame::Status { .. } => "Status",
            Frame::Ask { .. } => "Ask",
            Frame::Told { .. } => "Told",
            Frame::Error { .. } => "Error",
        }
    }

    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Frame::Hello {
                version,
                node,
                flags,
            } => {
                w.u8(HELLO);
                w.u8(*version);
                w.u8(*flags);
                w.text(node);
            }
            Frame::Fetch {
                seq,
                wire_type,
                score,
            } => {
                w.u8(FETCH);
                w.u64(*seq);
                w.u8(*wire_type);
                w.score(score);
            }
            Frame::Block { seq, data } => {
                w.u8(BLOCK);
                w.u64(*seq);
                w.flag(data.is_some());
                if let Some(d) = data {
                    w.bytes(d);
                }
            }
            Frame::Offer { seq, blocks } => {
                w.u8(OFFER);
                w.u64(*seq);
                w.u32(blocks.len() as u32);
                for (ty, score) in blocks {
                    w.u8(*ty);
                    w.score(score);
                }
            }
            Frame::Need { seq, want } => {
                w.u8(NEED);
                w.u64(*seq);
                w.u32(want.len() as u32);
                let mut bits = vec![0u8; want.len().div_ceil(8)];
                for (i, wanted) in want.iter().enumerate() {
                    if *wanted {
                        bits[i / 8] |= 0x80 >> (i % 8);
                    }
                }
                w.raw(&bits);
            }
            Frame::Blocks { seq, upto, blocks } => {
                w.u8(BLOCKS);
                w.u64(*seq);
                w.u64(*upto);
                w.u32(blocks.len() as u32);
                for block in blocks {
                    w.u8(block.wire_type);
                    w.score(&block.score);
                    w.bytes(&block.data);
                }
            }
            Frame::Stored { seq } => seq_only(&mut w, STORED, *seq),
            Frame::Applied { seq } => seq_only(&mut w, APPLIED, *seq),
            Frame::Ping { seq } => seq_only(&mut w, PING, *seq),
            Frame::Pong { seq } => seq_only(&mut w, PONG, *seq),
            Frame::Names { seq, text } => {
                w.u8(NAMES);
                w.u64(*seq);
                w.text(text);
            }
            Frame::Users { seq, text } => {
                w.u8(USERS);
                w.u64(*seq);
                w.text(text);
            }
            Frame::StatusRequest => w.u8(STATUS_REQUEST),
            Frame::Status { text } => {
                w.u8(STATUS);
                w.text(text);
            }
            Frame::Error { message } => {
                w.u8(ERROR);
                w.text(message);
            }
            Frame::Ask { seq, user, line } => {
                w.u8(ASK);
                w.u64(*seq);
                w.text(user);
                w.text(line);
            }
            Frame::Told {
                seq,
                out,
                err,
                status,
            } => {
                w.u8(TOLD);
                w.u64(*seq);
                w.bytes(out);
                w.text(err);
                w.u32(*status);
            }
        }
        w.finish()
    }

    /// Decodes one frame body (kind and what follows, without the length).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader::new(body, PROTOCOL, MAX_OFFER);
        let kind = r.u8()?;
        let frame = match kind {
            HELLO => Frame::Hello {
                version: r.u8()?,
                flags: r.u8()?,
                node: r.text()?,
            },
            FETCH => Frame::Fetch {
                seq: r.u64()?,
                wire_type: r.u8()?,
                score: r.score()?,
            },
            BLOCK => {
                let seq = r.u64()?;
                let data = match r.u8()? {
                    0 => None,
                    1 => {
                        let len = r.u32()? as usize;
                        if len > MAX_BLOCK_SIZE {
                            return Err(bad(format!(
                                "a block of {len} bytes exceeds the limit of {MAX_BLOCK_SIZE}"
                            )));
                        }
                        Some(r.take(len)?.to_vec())
                    }
                    other => return Err(bad(format!("bad block presence byte {other}"))),
                };
                Frame::Block { seq, data }
            }
            OFFER => {
                let seq = r.u64()?;
                let n = r.count(1 + SCORE_SIZE)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push((r.u8()?, r.score()?));
                }
                Frame::Offer { seq, blocks }
            }
            NEED => {
                let seq = r.u64()?;
                let n = r.u32()? as usize;
                if n > MAX_OFFER {
                    return Err(bad(format!("a need of {n} blocks exceeds {MAX_OFFER}")));
                }
                let bits = r.take(n.div_ceil(8))?;
                let want = (0..n)
                    .map(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0)
                    .collect();
                Frame::Need { seq, want }
            }
            BLOCKS => {
                let seq = r.u64()?;
                let upto = r.u64()?;
                let n = r.count(1 + SCORE_SIZE + 4)?;
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    let wire_type = r.u8()?;
                    let score = r.score()?;
                    let len = r.u32()? as usize;
                    if len > MAX_BLOCK_SIZE {
                        return Err(bad(format!(
                            "a block of {len} bytes exceeds the limit of {MAX_BLOCK_SIZE}"
                        )));
                    }
                    let data = r.take(len)?.to_vec();
                    blocks.push(WireBlock {
                        wire_type,
                        score,
                        data,
                    });
                }
                Frame::Blocks { seq, upto, blocks }
            }
            STORED => Frame::Stored { seq: r.u64()? },
            APPLIED => Frame::Applied { seq: r.u64()? },
            PING => Frame::Ping { seq: r.u64()? },
            PONG => Frame::Pong { seq: r.u64()? },
            NAMES => Frame::Names {
                seq: r.u64()?,
                text: r.text()?,
            },
            USERS => Frame::Users {
                seq: r.u64()?,
                text: r.text()?,
            },
            STATUS_REQUEST => Frame::StatusRequest,
            STATUS => Frame::Status { text: r.text()? },
            ERROR => Frame::Error { message: r.text()? },
            ASK => Frame::Ask {
                seq: r.u64()?,
                user: r.text()?,
                line: r.text()?,
            },
            TOLD => {
                let seq = r.u64()?;
                let len = r.u32()? as usize;
                let out = r.take(len)?.to_vec();
                Frame::Told {
                    seq,
                    out,
                    err: r.text()?,
                    status: r.u32()?,
                }
            }
            other => return Err(bad(format!("unknown frame kind {other}"))),
        };
        if r.left() > 0 {
            return Err(bad(format!(
                "{} bytes left over after a {} frame",
                r.left(),
                frame.kind()
            )));
        }
        Ok(frame)
    }
}

fn seq_only(w: &mut Writer, kind: u8, seq: u64) {
    w.u8(kind);
    w.u64(seq);
}

/// Reads one frame from `r`.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame, std::io::Error> {
    read_at_most(r, MAX_FRAME).await
}

/// The largest frame a peer that may only ask for status sends (a
/// `StatusRequest` is one byte).
pub const MAX_STATUS_REQUEST: usize = 16;

/// Reads one frame of at most `max_frame` bytes from `r`.
pub async fn read_at_most<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
) -> Result<Frame, std::io::Error> {
    let body = frames::read_body(r, PROTOCOL, max_frame).await?;
    Frame::decode(&body).map_err(frames::invalid)
}

/// Writes one frame to `w` and flushes it.
pub async fn write<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), std::io::Error> {
    frames::write(w, &frame.encode()).await
}
