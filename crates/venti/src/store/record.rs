//! One record of the log store: a fixed 32-byte header, then the block.
//!
//! ```text
//! magic[4] = "vlog"   wire_type[1]   len[3]   score[20]   crc32[4]   data[len]
//! ```
//!
//! All integers big-endian. The CRC-32 covers the first 28 header bytes and the
//! data, so a torn or flipped record is found without hashing; reads also check
//! the SHA-1 against the score, so no wrong byte is ever served.

use crate::Score;

pub const MAGIC: [u8; 4] = *b"vlog";
pub const HEADER_LEN: usize = 32;

/// The wire type of a sync marker; no venti block type maps to it.
pub const SYNC_MARKER_TYPE: u8 = 0xff;
/// A marker's data: `"sync" | salt[16] | own offset[8]`.
const SYNC_MARKER_DATA: usize = 4 + 16 + 8;
/// A whole marker record.
pub const SYNC_MARKER_LEN: usize = HEADER_LEN + SYNC_MARKER_DATA;

/// The wire type of a skip: a record that a collection wrote over the
/// first of a run of dead records, saying how far the run goes. It has no
/// data of its own; its score field holds the length of what it covers
/// (`skipped[8]`, then zeros), and its CRC covers its header alone, so the
/// bytes it covers (some of them a punched hole that reads as zeros) are
/// never read.
pub const SKIP_TYPE: u8 = 0xfe;

/// The decoded fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub wire_type: u8,
    pub len: usize,
    pub score: Score,
    pub crc: u32,
}

/// Appends a whole record for `data` to `out`.
pub fn append(out: &mut Vec<u8>, wire_type: u8, score: &Score, data: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(wire_type);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&score.0);
    let crc = checksum(&out[start..start + 28], data);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends a sync marker, to sit at log offset `at`, for a store with `salt`.
pub fn append_sync_marker(out: &mut Vec<u8>, salt: &[u8; 16], at: u64) {
    let data = sync_marker_data(salt, at);
    append(out, SYNC_MARKER_TYPE, &Score::of(&data), &data);
}

fn sync_marker_data(salt: &[u8; 16], at: u64) -> [u8; SYNC_MARKER_DATA] {
    let mut data = [0u8; SYNC_MARKER_DATA];
    data[..4].copy_from_slice(b"sync");
    data[4..20].copy_from_slice(salt);
    data[20..].copy_from_slice(&at.to_be_bytes());
    data
}

/// The first 8 bytes of every marker record (magic, type, length), to search for.
pub fn sync_marker_prefix() -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&MAGIC);
    p[4] = SYNC_MARKER_TYPE;
    p[5..8].copy_from_slice(&(SYNC_MARKER_DATA as u32).to_be_bytes()[1..]);
    p
}

/// True if `bytes` is exactly the marker that a store with `salt` writes at `at`.
pub fn is_sync_marker(bytes: &[u8], salt: &[u8; 16], at: u64) -> bool {
    let mut expected = Vec::with_capacity(SYNC_MARKER_LEN);
    append_sync_marker(&mut expected, salt, at);
    bytes == expected.as_slice()
}

fn checksum(head: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(data);
    h.finalize()
}

/// A skip header covering the `skipped` bytes that follow it.
pub fn skip_header(skipped: u64) -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[..4].copy_from_slice(&MAGIC);
    head[4] = SKIP_TYPE;
    head[8..16].copy_from_slice(&skipped.to_be_bytes());
    let crc = checksum(&head[..28], &[]);
    head[28..].copy_from_slice(&crc.to_be_bytes());
    head
}

/// How many bytes after its header a record spans: its data, or for a
/// skip, what it covers. `None` for a skip whose checksum fails.
pub fn span(bytes: &[u8; HEADER_LEN], header: &Header) -> Option<u64> {
    if header.wire_type != SKIP_TYPE {
        return Some(header.len as u64);
    }
    let whole =
        header.len == 0 && bytes[16..28].iter().all(|&b| b == 0) && crc_matches(bytes, header, &[]);
    whole.then(|| u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

/// Decodes a header, or says why these 32 bytes are not one.
pub fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, &'static str> {
    if bytes[..4] != MAGIC {
        return Err("bad record magic");
    }
    Ok(Header {
        wire_type: bytes[4],
        len: u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]) as usize,
        score: Score::from_slice(&bytes[8..28]).expect("20 bytes"),
        crc: u32::from_be_bytes(bytes[28..32].try_into().expect("4 bytes")),
    })
}

/// True if `data` belongs to `header` by its CRC.
pub fn crc_matches(header_bytes: &[u8; HEADER_LEN], header: &Header, data: &[u8]) -> bool {
    checksum(&header_bytes[..28], data) == header.crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_marker_is_recognised_only_with_its_salt_and_offset() {
        let salt = [7u8; 16];
        let mut m = Vec::new();
        append_sync_marker(&mut m, &salt, 4096);
        assert_eq!(m.len(), SYNC_MARKER_LEN);
        assert_eq!(m[..8], sync_marker_prefix());
        assert!(is_sync_marker(&m, &salt, 4096));
        assert!(
            !is_sync_marker(&m, &salt, 4097),
            "a copy elsewhere is not a marker"
        );
        assert!(
            !is_sync_marker(&m, &[8u8; 16], 4096),
            "another store's marker"
        );
    }

    #[test]
    fn a_skip_says_how_far_it_goes_and_a_flipped_bit_is_caught() {
        let head = skip_header(5 << 30);
        let h = parse_header(&head).unwrap();
        assert_eq!((h.wire_type, h.len), (SKIP_TYPE, 0));
        assert_eq!(span(&head, &h), Some(5 << 30));
        for byte in 4..HEADER_LEN {
            let mut flipped = head;
            flipped[byte] ^= 0x10;
            if let Ok(fh) = parse_header(&flipped) {
                assert!(
                    fh.wire_type != SKIP_TYPE || span(&flipped, &fh).is_none(),
                    "a flip at byte {byte} went unnoticed"
                );
            }
        }
        // A block record spans its data.
        let mut rec = Vec::new();
        append(&mut rec, 3, &Score::of(b"x"), b"x");
        let bh: [u8; HEADER_LEN] = rec[..HEADER_LEN].try_into().unwrap();
        assert_eq!(span(&bh, &parse_header(&bh).unwrap()), Some(1));
    }

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let data = b"hello world";
        let score = Score::of(data);
        let mut rec = Vec::new();
        append(&mut rec, 13, &score, data);
        assert_eq!(rec.len(), HEADER_LEN + data.len());
        let head: [u8; HEADER_LEN] = rec[..HEADER_LEN].try_into().unwrap();
        let h = parse_header(&head).unwrap();
        assert_eq!((h.wire_type, h.len, h.score), (13, 11, score));
        assert!(crc_matches(&head, &h, &rec[HEADER_LEN..]));
        let mut flipped = rec.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        assert!(!crc_matches(&head, &h, &flipped[HEADER_LEN..]));
        let mut bad_magic = head;
        bad_magic[0] = b'x';
        assert!(parse_header(&bad_magic).is_err());
    }
}
