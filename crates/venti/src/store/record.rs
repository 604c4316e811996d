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

fn checksum(head: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(data);
    h.finalize()
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
