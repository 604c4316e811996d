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
//!                             ←   Error(text)           instead of any reply
//! ```
//!
//! Decoding never panics and never allocates more than the frame holds: a
//! peer's bytes are untrusted until the score check of each block.

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
    Error {
        message: String,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed replication frame: {0}")]
pub struct FrameError(pub String);

fn bad(why: impl Into<String>) -> FrameError {
    FrameError(why.into())
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
            Frame::Error { .. } => "Error",
        }
    }

    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        match self {
            Frame::Hello {
                version,
                node,
                flags,
            } => {
                b.push(HELLO);
                b.push(*version);
                b.push(*flags);
                put_text(&mut b, node);
            }
            Frame::Fetch {
                seq,
                wire_type,
                score,
            } => {
                b.push(FETCH);
                b.extend_from_slice(&seq.to_be_bytes());
                b.push(*wire_type);
                b.extend_from_slice(&score.0);
            }
            Frame::Block { seq, data } => {
                b.push(BLOCK);
                b.extend_from_slice(&seq.to_be_bytes());
                match data {
                    Some(d) => {
                        b.push(1);
                        b.extend_from_slice(&(d.len() as u32).to_be_bytes());
                        b.extend_from_slice(d);
                    }
                    None => b.push(0),
                }
            }
            Frame::Offer { seq, blocks } => {
                b.push(OFFER);
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&(blocks.len() as u32).to_be_bytes());
                for (ty, score) in blocks {
                    b.push(*ty);
                    b.extend_from_slice(&score.0);
                }
            }
            Frame::Need { seq, want } => {
                b.push(NEED);
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&(want.len() as u32).to_be_bytes());
                let mut bits = vec![0u8; want.len().div_ceil(8)];
                for (i, w) in want.iter().enumerate() {
                    if *w {
                        bits[i / 8] |= 0x80 >> (i % 8);
                    }
                }
                b.extend_from_slice(&bits);
            }
            Frame::Blocks { seq, upto, blocks } => {
                b.push(BLOCKS);
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&upto.to_be_bytes());
                b.extend_from_slice(&(blocks.len() as u32).to_be_bytes());
                for block in blocks {
                    b.push(block.wire_type);
                    b.extend_from_slice(&block.score.0);
                    b.extend_from_slice(&(block.data.len() as u32).to_be_bytes());
                    b.extend_from_slice(&block.data);
                }
            }
            Frame::Stored { seq } => seq_only(&mut b, STORED, *seq),
            Frame::Applied { seq } => seq_only(&mut b, APPLIED, *seq),
            Frame::Ping { seq } => seq_only(&mut b, PING, *seq),
            Frame::Pong { seq } => seq_only(&mut b, PONG, *seq),
            Frame::Names { seq, text } => {
                b.push(NAMES);
                b.extend_from_slice(&seq.to_be_bytes());
                put_text(&mut b, text);
            }
            Frame::Users { seq, text } => {
                b.push(USERS);
                b.extend_from_slice(&seq.to_be_bytes());
                put_text(&mut b, text);
            }
            Frame::StatusRequest => b.push(STATUS_REQUEST),
            Frame::Status { text } => {
                b.push(STATUS);
                put_text(&mut b, text);
            }
            Frame::Error { message } => {
                b.push(ERROR);
                put_text(&mut b, message);
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Decodes one frame body (kind and what follows, without the length).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader { b: body };
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
            other => return Err(bad(format!("unknown frame kind {other}"))),
        };
        if !r.b.is_empty() {
            return Err(bad(format!(
                "{} bytes left over after a {} frame",
                r.b.len(),
                frame.kind()
            )));
        }
        Ok(frame)
    }
}

fn seq_only(b: &mut Vec<u8>, kind: u8, seq: u64) {
    b.push(kind);
    b.extend_from_slice(&seq.to_be_bytes());
}

fn put_text(b: &mut Vec<u8>, text: &str) {
    b.extend_from_slice(&(text.len() as u32).to_be_bytes());
    b.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(bad(format!(
                "frame cut short: {n} bytes wanted, {} left",
                self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn score(&mut self) -> Result<Score, FrameError> {
        Ok(Score::from_slice(self.take(SCORE_SIZE)?).expect("20 bytes"))
    }
    /// A count of items of at least `min_size` bytes each, checked against
    /// what is left so a forged count cannot make us allocate.
    fn count(&mut self, min_size: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n > MAX_OFFER {
            return Err(bad(format!("{n} items exceed the limit of {MAX_OFFER}")));
        }
        if n * min_size > self.b.len() {
            return Err(bad(format!(
                "{n} items cannot fit in the {} bytes left",
                self.b.len()
            )));
        }
        Ok(n)
    }
    fn text(&mut self) -> Result<String, FrameError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("text that is not UTF-8"))
    }
}

/// Reads one frame from `r`.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame, std::io::Error> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            bad(format!("a frame of {len} bytes (the limit is {MAX_FRAME})")),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Frame::decode(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one frame to `w` and flushes it.
pub async fn write<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), std::io::Error> {
    use tokio::io::AsyncWriteExt;
    w.write_all(&frame.encode()).await?;
    w.flush().await
}
