//! The connection layer (spec §4.2–4.3): the version-line exchange both sides
//! make on connect, and the length-prefixed framing of message bodies.

use std::io;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// The two directions of a connection, plain TCP or TLS alike.
pub struct Stream {
    pub read: Box<dyn AsyncRead + Send + Unpin>,
    pub write: Box<dyn AsyncWrite + Send + Unpin>,
}

impl Stream {
    /// Any duplex stream (a TLS session, say).
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Stream {
        let (read, write) = tokio::io::split(stream);
        Stream {
            read: Box::new(read),
            write: Box::new(write),
        }
    }
}

impl From<tokio::net::TcpStream> for Stream {
    /// A TCP connection's halves, which need no lock between them.
    fn from(socket: tokio::net::TcpStream) -> Stream {
        let (read, write) = socket.into_split();
        Stream {
            read: Box::new(read),
            write: Box::new(write),
        }
    }
}

/// A version line may not be this long (it must be shorter).
const MAX_VERSION_LINE: usize = 1024;

/// Largest body accepted in either framing. Protocol 02 cannot exceed 65535;
/// 04 could, but no block is larger than [`crate::MAX_BLOCK_SIZE`], so a longer
/// body means the stream is garbage.
pub const MAX_BODY: usize = 65535 + 1024;

/// The negotiated protocol version; it decides the width of the length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `len[2]` framing.
    V02,
    /// `len[4]` framing.
    V04,
}

impl Version {
    /// The string sent in Thello.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V02 => "02",
            Version::V04 => "04",
        }
    }
}

/// The line we send, listing versions in plan9port's order of preference.
pub fn version_line(comment: &str) -> String {
    format!("venti-04:02-{comment}\n")
}

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad format in version string: {0}")]
    BadVersionLine(String),
    #[error("version too long")]
    VersionTooLong,
    #[error("unable to negotiate version with peer {0:?}")]
    NoCommonVersion(String),
    #[error("message of {0} bytes is larger than the limit of {MAX_BODY}")]
    TooLarge(usize),
    #[error("zero-length message")]
    EmptyFrame,
    #[error("connection closed in the middle of a message")]
    TruncatedFrame,
}

/// Reads the peer's version line, checking it as libventi does: it starts with
/// `venti-`, holds only bytes 0x20..0x7F, and is shorter than 1024 bytes.
pub async fn read_version_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, WireError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_VERSION_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(if n >= MAX_VERSION_LINE {
            WireError::VersionTooLong
        } else {
            WireError::Io(io::ErrorKind::UnexpectedEof.into())
        });
    }
    line.pop();
    let printable = line.iter().all(|&b| (0x20..0x80).contains(&b));
    let text = String::from_utf8_lossy(&line).into_owned();
    if !printable || !text.starts_with("venti-") {
        return Err(WireError::BadVersionLine(text));
    }
    Ok(text)
}

/// Picks the first version, in the peer's order, that we speak. Like libventi it
/// tokenizes the comment too, which is harmless.
pub fn negotiate(peer_line: &str) -> Result<Version, WireError> {
    let listed = peer_line.strip_prefix("venti-").unwrap_or(peer_line);
    listed
        .split([':', '-'])
        .find_map(|token| match token {
            "02" => Some(Version::V02),
            "04" => Some(Version::V04),
            _ => None,
        })
        .ok_or_else(|| WireError::NoCommonVersion(peer_line.to_string()))
}

/// Reads one body. Returns `Ok(None)` on a clean end of stream between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    version: Version,
) -> Result<Option<Vec<u8>>, WireError> {
    let mut prefix = [0u8; 4];
    let width = match version {
        Version::V02 => 2,
        Version::V04 => 4,
    };
    let got = read_full(r, &mut prefix[..width]).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < width {
        return Err(WireError::TruncatedFrame);
    }
    let len = match version {
        Version::V02 => u16::from_be_bytes([prefix[0], prefix[1]]) as usize,
        Version::V04 => u32::from_be_bytes(prefix) as usize,
    };
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > MAX_BODY {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body).await? < len {
        return Err(WireError::TruncatedFrame);
    }
    Ok(Some(body))
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Appends the length prefix for a body of `len` bytes.
pub fn put_frame_prefix(out: &mut Vec<u8>, version: Version, len: usize) -> Result<(), WireError> {
    match version {
        Version::V02 => {
            let len = u16::try_from(len).map_err(|_| WireError::TooLarge(len))?;
            out.extend_from_slice(&len.to_be_bytes());
        }
        Version::V04 => {
            if len > MAX_BODY {
                return Err(WireError::TooLarge(len));
            }
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    Ok(())
}

/// Encodes `message` with its length prefix onto the end of `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    version: Version,
    message: &crate::Message,
) -> Result<(), WireError> {
    let start = out.len();
    let width = if version == Version::V02 { 2 } else { 4 };
    out.resize(start + width, 0);
    message.encode(out);
    let len = out.len() - start - width;
    let mut prefix = Vec::with_capacity(4);
    if let Err(e) = put_frame_prefix(&mut prefix, version, len) {
        out.truncate(start);
        return Err(e);
    }
    out[start..start + width].copy_from_slice(&prefix);
    Ok(())
}

/// Writes our version line.
pub async fn write_version_line<W: AsyncWrite + Unpin>(w: &mut W, comment: &str) -> io::Result<()> {
    w.write_all(version_line(comment).as_bytes()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_peers_first_version_that_we_speak() {
        assert_eq!(negotiate("venti-04:02-libventi").unwrap(), Version::V04);
        assert_eq!(negotiate("venti-02-libventi").unwrap(), Version::V02);
        assert_eq!(negotiate("venti-02:04-pytest").unwrap(), Version::V02);
        assert_eq!(negotiate("venti-05-x:04").unwrap(), Version::V04);
        assert!(matches!(
            negotiate("venti-05-future"),
            Err(WireError::NoCommonVersion(_))
        ));
    }

    #[tokio::test]
    async fn version_line_checks() {
        let mut ok: &[u8] = b"venti-02-pytest\n";
        assert_eq!(read_version_line(&mut ok).await.unwrap(), "venti-02-pytest");
        let mut wrong: &[u8] = b"hello-02\n";
        assert!(matches!(
            read_version_line(&mut wrong).await,
            Err(WireError::BadVersionLine(_))
        ));
        let mut binary: &[u8] = b"venti-02\x01\n";
        assert!(matches!(
            read_version_line(&mut binary).await,
            Err(WireError::BadVersionLine(_))
        ));
        let long = format!("venti-{}\n", "0".repeat(2000));
        let mut long: &[u8] = long.as_bytes();
        assert!(matches!(
            read_version_line(&mut long).await,
            Err(WireError::VersionTooLong)
        ));
    }

    #[tokio::test]
    async fn frames_in_both_widths() {
        let mut out = Vec::new();
        encode_frame(&mut out, Version::V02, &crate::Message::Tping { tag: 1 }).unwrap();
        assert_eq!(out, [0, 2, 2, 1]);
        let mut r: &[u8] = &out;
        assert_eq!(
            read_frame(&mut r, Version::V02).await.unwrap().unwrap(),
            [2, 1]
        );
        assert_eq!(read_frame(&mut r, Version::V02).await.unwrap(), None);

        let mut out = Vec::new();
        encode_frame(&mut out, Version::V04, &crate::Message::Tsync { tag: 4 }).unwrap();
        assert_eq!(out, [0, 0, 0, 2, 0x10, 4]);

        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame(&mut huge, Version::V04).await,
            Err(WireError::TooLarge(_))
        ));
        let mut short: &[u8] = &[0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut short, Version::V02).await,
            Err(WireError::TruncatedFrame)
        ));
        let mut half_prefix: &[u8] = &[0];
        assert!(matches!(
            read_frame(&mut half_prefix, Version::V02).await,
            Err(WireError::TruncatedFrame)
        ));
    }
}
