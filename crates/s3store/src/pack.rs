//! The byte formats in the bucket.
//!
//! A **pack** (`PREFIX/packs/WRITER/SEQ.pack`) is many blocks in one
//! object, so that ingest is not one request per 8 KiB block and a cold
//! read is one ranged GET:
//!
//! ```text
//! "CLNYPAK1"  then per block: score[20] type[1] length[4, big-endian] data
//! ```
//!
//! Each record says what it holds, so a pack whose index is lost or
//! damaged can be indexed again from the pack alone ([`scan_pack`]).
//!
//! An **index** (`PREFIX/index/WRITER/SEQ.idx`) lists one pack's blocks,
//! so a reader learns a pack without reading it; it is written only after
//! its pack, so an index never names blocks that are not there:
//!
//! ```text
//! "CLNYIDX1" count[4]  then per block: score[20] type[1] offset[4] length[4]
//! sha1[20] of everything before it
//! ```
//!
//! `offset` is where the block's data starts in the pack. Every parser
//! here takes bytes from the network and returns an error, never panics.

use sha1::{Digest, Sha1};
use venti::{MAX_BLOCK_SIZE, SCORE_SIZE, Score};

pub const PACK_MAGIC: &[u8; 8] = b"CLNYPAK1";
pub const INDEX_MAGIC: &[u8; 8] = b"CLNYIDX1";
/// A pack record's header: score, type, length.
pub const RECORD_HEADER: usize = SCORE_SIZE + 1 + 4;
const ENTRY: usize = SCORE_SIZE + 1 + 4 + 4;

/// One block of a pack, as its index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub score: Score,
    /// The block type on the wire.
    pub ty: u8,
    /// Where the block's data starts in the pack.
    pub offset: u32,
    pub len: u32,
}

/// A pack being filled, with its index.
pub struct PackBuilder {
    pub bytes: Vec<u8>,
    pub entries: Vec<Entry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder {
            bytes: PACK_MAGIC.to_vec(),
            entries: Vec::new(),
        }
    }
}

impl PackBuilder {
    /// Appends a block; returns its entry.
    pub fn push(&mut self, score: Score, ty: u8, data: &[u8]) -> Entry {
        self.bytes.extend_from_slice(score.as_bytes());
        self.bytes.push(ty);
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        let entry = Entry {
            score,
            ty,
            offset: self.bytes.len() as u32,
            len: data.len() as u32,
        };
        self.bytes.extend_from_slice(data);
        self.entries.push(entry);
        entry
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The index object of a pack's entries.
pub fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * ENTRY + SCORE_SIZE);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(e.score.as_bytes());
        out.push(e.ty);
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
    }
    let sum = Sha1::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// An index object's entries; an error says what is wrong with it.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    if bytes.len() < INDEX_MAGIC.len() + 4 + SCORE_SIZE {
        return Err(format!("{} bytes is too short for an index", bytes.len()));
    }
    if &bytes[..8] != INDEX_MAGIC {
        return Err("not a colony pack index (bad magic)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - SCORE_SIZE);
    if Sha1::digest(body).as_slice() != sum {
        return Err("its checksum does not match: truncated or damaged".into());
    }
    let count = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    let list = &body[12..];
    if list.len() != count.saturating_mul(ENTRY) {
        return Err(format!(
            "it says {count} entries but holds {} bytes of them",
            list.len()
        ));
    }
    list.chunks_exact(ENTRY)
        .map(|e| {
            let entry = Entry {
                score: Score::from_slice(&e[..SCORE_SIZE]).expect("20 bytes"),
                ty: e[SCORE_SIZE],
                offset: u32::from_be_bytes(e[21..25].try_into().expect("4 bytes")),
                len: u32::from_be_bytes(e[25..29].try_into().expect("4 bytes")),
            };
            if entry.len as usize > MAX_BLOCK_SIZE {
                return Err(format!(
                    "an entry of {} bytes exceeds the block limit",
                    entry.len
                ));
            }
            if (entry.offset as usize) < PACK_MAGIC.len() + RECORD_HEADER {
                return Err(format!(
                    "an entry at offset {} is inside the header",
                    entry.offset
                ));
            }
            Ok(entry)
        })
        .collect()
}

/// The entries of a whole pack, read from its records, each block checked
/// against its score: how an index that is lost or damaged is made again.
/// Stops at the first record that is cut short or fails its check, and
/// says where, with the entries before it.
pub fn scan_pack(bytes: &[u8]) -> (Vec<Entry>, Option<String>) {
    if bytes.len() < PACK_MAGIC.len() || &bytes[..8] != PACK_MAGIC {
        return (Vec::new(), Some("not a colony pack (bad magic)".into()));
    }
    let mut entries = Vec::new();
    let mut at = PACK_MAGIC.len();
    while at < bytes.len() {
        if bytes.len() - at < RECORD_HEADER {
            return (entries, Some(format!("a record header cut short at {at}")));
        }
        let score = Score::from_slice(&bytes[at..at + SCORE_SIZE]).expect("20 bytes");
        let ty = bytes[at + SCORE_SIZE];
        let len = u32::from_be_bytes(
            bytes[at + SCORE_SIZE + 1..at + RECORD_HEADER]
                .try_into()
                .expect("4 bytes"),
        );
        let data = at + RECORD_HEADER;
        if len as usize > MAX_BLOCK_SIZE || bytes.len() - data < len as usize {
            return (entries, Some(format!("a record cut short at {at}")));
        }
        if Score::of(&bytes[data..data + len as usize]) != score {
            return (
                entries,
                Some(format!("the block at {at} fails its score check")),
            );
        }
        entries.push(Entry {
            score,
            ty,
            offset: data as u32,
            len,
        });
        at = data + len as usize;
    }
    (entries, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pack(blocks: &[Vec<u8>]) -> PackBuilder {
        let mut p = PackBuilder::default();
        for (i, b) in blocks.iter().enumerate() {
            p.push(Score::of(b), (i % 3) as u8, b);
        }
        p
    }

    #[test]
    fn an_index_and_a_scan_agree_with_the_pack() {
        let blocks: Vec<Vec<u8>> = (0..50u32).map(|i| vec![i as u8; i as usize * 7]).collect();
        let p = pack(&blocks);
        let index = encode_index(&p.entries);
        assert_eq!(parse_index(&index).unwrap(), p.entries);
        assert_eq!(scan_pack(&p.bytes), (p.entries.clone(), None));
        for (e, b) in p.entries.iter().zip(&blocks) {
            assert_eq!(&p.bytes[e.offset as usize..][..e.len as usize], &b[..]);
        }
    }

    #[test]
    fn damage_is_named() {
        let p = pack(&[b"one".to_vec(), b"two".to_vec()]);
        let mut index = encode_index(&p.entries);
        index[15] ^= 1;
        assert!(parse_index(&index).unwrap_err().contains("checksum"));
        let index = encode_index(&p.entries);
        assert!(parse_index(&index[..index.len() - 3]).is_err());
        // A pack with a flipped data byte: the entries before it survive.
        let mut bytes = p.bytes.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let (entries, err) = scan_pack(&bytes);
        assert_eq!(entries, p.entries[..1]);
        assert!(err.unwrap().contains("score check"));
        let (entries, err) = scan_pack(&p.bytes[..p.bytes.len() - 1]);
        assert_eq!(entries, p.entries[..1]);
        assert!(err.unwrap().contains("cut short"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_index(&bytes);
            let _ = scan_pack(&bytes);
            let mut with_magic = INDEX_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse_index(&with_magic);
            let mut pack = PACK_MAGIC.to_vec();
            pack.extend_from_slice(&bytes);
            let _ = scan_pack(&pack);
        }

        #[test]
        fn any_pack_round_trips(blocks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let p = pack(&blocks);
            prop_assert_eq!(parse_index(&encode_index(&p.entries)).unwrap(), p.entries.clone());
            prop_assert_eq!(scan_pack(&p.bytes), (p.entries, None));
        }
    }
}
