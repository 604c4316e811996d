//! The framing the grid's own protocols share: the control link between
//! storage and cpu nodes, and replication between storage nodes.
//!
//! A frame is `length[4] kind[1] body`, big-endian, the length counting kind
//! and body. Inside a body, texts and byte strings are `length[4] bytes`,
//! lists are `count[4]` and their items, and scores are their 20 bytes.
//!
//! A protocol builds its frames with [`Writer`] and takes them apart with
//! [`Reader`]. The reader never panics and never allocates more than the
//! bytes it was given hold: a count is checked against what is left before
//! anything is reserved for it, so a forged count cannot make a node
//! allocate. Each protocol names itself in its errors ("malformed control
//! frame: …").

use venti::{SCORE_SIZE, Score};

/// Why bytes are not a frame of a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {protocol} frame: {why}")]
pub struct Malformed {
    /// The protocol's name, as in "malformed control frame".
    pub protocol: &'static str,
    pub why: String,
}

impl Malformed {
    pub fn new(protocol: &'static str, why: impl Into<String>) -> Malformed {
        Malformed {
            protocol,
            why: why.into(),
        }
    }
}

/// A frame being built: [`Writer::new`], its kind byte and fields, then
/// [`Writer::finish`] for the bytes to send, length prefix and all.
pub struct Writer(Vec<u8>);

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

impl Writer {
    /// An empty frame, room kept for its length.
    pub fn new() -> Writer {
        Writer(vec![0; 4])
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn flag(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Bytes as they are, with no length: the reader knows how many.
    pub fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Bytes with their length.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn text(&mut self, t: &str) {
        self.bytes(t.as_bytes());
    }
    pub fn texts(&mut self, list: &[String]) {
        self.u32(list.len() as u32);
        for t in list {
            self.text(t);
        }
    }
    pub fn score(&mut self, s: &Score) {
        self.0.extend_from_slice(s.as_bytes());
    }
    /// The whole frame, its length filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// A frame's body (kind and what follows, no length) being taken apart.
pub struct Reader<'a> {
    b: &'a [u8],
    protocol: &'static str,
    max_items: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `body` for `protocol`, whose lists hold at most
    /// `max_items` items.
    pub fn new(body: &'a [u8], protocol: &'static str, max_items: usize) -> Reader<'a> {
        Reader {
            b: body,
            protocol,
            max_items,
        }
    }

    /// An error of this reader's protocol.
    pub fn bad(&self, why: impl Into<String>) -> Malformed {
        Malformed::new(self.protocol, why)
    }

    /// How many bytes are not yet read.
    pub fn left(&self) -> usize {
        self.b.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.b.len() < n {
            return Err(self.bad(format!(
                "frame cut short: {n} bytes wanted, {} left",
                self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    /// A byte that must be 0 or 1.
    pub fn flag(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad(format!("flag byte {v} is neither 0 nor 1"))),
        }
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn score(&mut self) -> Result<Score, Malformed> {
        Ok(Score::from_slice(self.take(SCORE_SIZE)?).expect("20 bytes"))
    }
    /// A count of items of at least `min_size` bytes each, checked against
    /// the limit and against what is left, so a forged count cannot make
    /// the caller reserve room for items that are not there.
    pub fn count(&mut self, min_size: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n > self.max_items {
            return Err(self.bad(format!("{n} items exceed the limit of {}", self.max_items)));
        }
        if n.saturating_mul(min_size) > self.b.len() {
            return Err(self.bad(format!(
                "{n} items cannot fit in the {} bytes left",
                self.b.len()
            )));
        }
        Ok(n)
    }
    pub fn text(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("text that is not UTF-8"))
    }
    pub fn texts(&mut self) -> Result<Vec<String>, Malformed> {
        let n = self.count(4)?;
        (0..n).map(|_| self.text()).collect()
    }
}

/// A frame error as the I/O error a stream reader returns.
pub fn invalid(e: Malformed) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Reads one frame's body (kind and what follows) from `r`: the length is
/// checked against `max_frame` before anything is read, and the body grows
/// only as its bytes arrive, so a peer that announces a large frame and
/// sends little holds little of this node's memory.
pub async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    protocol: &'static str,
    max_frame: usize,
) -> Result<Vec<u8>, std::io::Error> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max_frame {
        return Err(invalid(Malformed::new(
            protocol,
            format!("a frame of {len} bytes (the limit is {max_frame})"),
        )));
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    let got = r.take(len as u64).read_to_end(&mut body).await?;
    if got < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a {protocol} frame cut short: {got} of its {len} bytes"),
        ));
    }
    Ok(body)
}

/// Writes one whole frame (as [`Writer::finish`] made it) to `w` and
/// flushes it.
pub async fn write<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
) -> Result<(), std::io::Error> {
    use tokio::io::AsyncWriteExt;
    w.write_all(frame).await?;
    w.flush().await
}
