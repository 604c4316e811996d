//! Zero truncation and extension (spec §3). Blocks are logically fixed-size but
//! stored with trailing zeros (or trailing zero-score slots) cut; the cut defines
//! the hashed bytes, so it must match plan9port exactly.

use crate::{BlockType, SCORE_SIZE, Score};

/// Size of a stored VtRoot; roots are never truncated below it.
pub const ROOT_SIZE: usize = 300;

/// The stored length of `buf` as a block of type `ty` (`vtzerotruncate`).
pub fn truncated_len(ty: BlockType, buf: &[u8]) -> usize {
    if ty == BlockType::ROOT {
        return buf.len().min(ROOT_SIZE);
    }
    if !ty.is_pointer() {
        return buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    }
    let mut len = buf.len() / SCORE_SIZE * SCORE_SIZE;
    while len >= SCORE_SIZE && buf[len - SCORE_SIZE..len] == Score::ZERO.0 {
        len -= SCORE_SIZE;
    }
    len
}

/// `buf` cut to its stored length.
pub fn truncate(ty: BlockType, buf: &[u8]) -> &[u8] {
    &buf[..truncated_len(ty, buf)]
}

/// Extends a stored block back to `size` bytes (`vtzeroextend`): zeros for data
/// and directory leaves, zero-score slots (then zero slop) for pointer blocks.
/// A block already `size` or longer is left as it is.
pub fn extend(ty: BlockType, block: &mut Vec<u8>, size: usize) {
    if block.len() >= size {
        return;
    }
    if ty.is_pointer() {
        let whole = size / SCORE_SIZE * SCORE_SIZE;
        let mut slot = block.len() / SCORE_SIZE * SCORE_SIZE;
        block.truncate(slot);
        while slot + SCORE_SIZE <= whole {
            block.extend_from_slice(&Score::ZERO.0);
            slot += SCORE_SIZE;
        }
    }
    block.resize(size, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(depth: u8) -> BlockType {
        BlockType::at_depth(BlockType::DATA, depth).unwrap()
    }

    #[test]
    fn data_blocks_lose_trailing_zeros() {
        assert_eq!(truncate(BlockType::DATA, b"abc\0\0\0"), b"abc");
        assert_eq!(truncated_len(BlockType::DATA, &[0; 8192]), 0);
        assert_eq!(truncate(BlockType::DIR, b"\0a\0"), b"\0a");
        // The spec's -z vector: the truncated block hashes to SHA-1("abc").
        assert_eq!(
            Score::of(truncate(BlockType::DATA, b"abc\0\0\0")).to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn roots_keep_all_300_bytes() {
        assert_eq!(truncated_len(BlockType::ROOT, &[0; 300]), 300);
        assert_eq!(truncated_len(BlockType::ROOT, &[0; 400]), 300);
    }

    #[test]
    fn pointer_blocks_lose_trailing_zero_scores_and_slop_spec_11_2() {
        let s1 = Score::of(b"1");
        let s2 = Score::of(b"2");
        let mut block = Vec::new();
        for s in [s1, s2, Score::ZERO, Score::ZERO] {
            block.extend_from_slice(&s.0);
        }
        block.extend_from_slice(&[7, 7, 7]); // slop past the last whole slot
        assert_eq!(truncated_len(ptr(1), &block), 40);
        // A zero score in the middle stays.
        let mut mid = Vec::new();
        for s in [s1, Score::ZERO, s2] {
            mid.extend_from_slice(&s.0);
        }
        assert_eq!(truncated_len(ptr(2), &mid), 60);
        // Zero *bytes* are not zero scores.
        assert_eq!(truncated_len(ptr(1), &[0; 40]), 40);
    }

    #[test]
    fn extension_inverts_truncation() {
        let mut data = b"abc".to_vec();
        extend(BlockType::DATA, &mut data, 6);
        assert_eq!(data, b"abc\0\0\0");

        let s1 = Score::of(b"1");
        let mut block = s1.0.to_vec();
        extend(ptr(1), &mut block, 8180);
        assert_eq!(block.len(), 8180);
        assert_eq!(&block[20..40], &Score::ZERO.0);
        assert_eq!(&block[8160..8180], &Score::ZERO.0);
        assert_eq!(truncated_len(ptr(1), &block), 20);

        // 8190 = 409 slots + 10 bytes of zero slop.
        let mut slop = Vec::new();
        extend(ptr(3), &mut slop, 8190);
        assert_eq!(&slop[8160..8180], &Score::ZERO.0);
        assert_eq!(&slop[8180..], &[0; 10]);
    }
}
