//! What a collection keeps: every block reachable from the live roots,
//! marked in a Bloom filter whose size is set by the caller, not by the
//! store.
//!
//! The filter never forgets a block it was given, so a live block is never
//! swept; a false positive only keeps a dead block (about 1% of the dead at
//! 10 bits per block, 0.05% at 16). Its memory is what the caller allows
//! (`bits_per_block` × the store's block count, capped by `max_bytes`):
//! 10⁷ blocks cost 12 MB at 10 bits.
//!
//! Walking shares subtrees: thousands of saves of one Debian root share
//! almost all of their blocks, so the walk must not read them again for
//! each. It remembers the interior blocks (pointers, directories, roots) it
//! has read in an exact set, bounded too; past the bound it reads shared
//! subtrees again, which costs time, never a block. The filter itself is
//! never used to cut a walk short: a false positive there would drop a live
//! subtree.
//!
//! Which children a block has is read from its venti type alone, as
//! plan9port's `venti/copy` does: a pointer block's scores, a directory
//! block's entries, a vac root's directory. A root's `prev` (the snapshot
//! it was made from) is history, not content, and is not followed: keeping
//! it would keep every save of a series for ever.

use std::collections::HashSet;

use crate::store::StoreError;
use crate::{BlockStore, BlockType, SCORE_SIZE, Score};

/// A Bloom filter over scores. Scores are SHA-1 hashes, so their bytes
/// serve as the filter's hashes (two 64-bit halves, combined as in
/// Kirsch–Mitzenmacher).
pub struct Bloom {
    bits: Vec<u64>,
    hashes: u32,
}

impl Bloom {
    /// A filter for `blocks` blocks at `bits_per_block` (at least 4), in at
    /// most `max_bytes` (at least 4 KiB).
    pub fn new(blocks: u64, bits_per_block: u32, max_bytes: u64) -> Bloom {
        let want = blocks
            .max(1024)
            .saturating_mul(bits_per_block.max(4) as u64);
        let bits = want.min(max_bytes.max(4096).saturating_mul(8));
        let words = bits.div_ceil(64) as usize;
        let per_block = (words as f64 * 64.0) / blocks.max(1) as f64;
        // k = ln 2 · m/n is the best count of hashes; bounded to keep
        // marking cheap when memory is plentiful.
        let hashes = ((per_block * std::f64::consts::LN_2).round() as u32).clamp(1, 12);
        Bloom {
            bits: vec![0; words],
            hashes,
        }
    }

    fn probes(&self, score: &Score) -> impl Iterator<Item = usize> + '_ {
        let b = &score.0;
        let h1 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) | 1;
        let m = self.bits.len() as u64 * 64;
        (0..self.hashes as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn insert(&mut self, score: &Score) {
        let probes: Vec<usize> = self.probes(score).collect();
        for bit in probes {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, score: &Score) -> bool {
        self.probes(score)
            .all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Its memory, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }

    /// The expected share of absent scores it says it holds, once it holds
    /// `n` scores.
    pub fn false_positive_rate(&self, n: u64) -> f64 {
        let m = self.bits.len() as f64 * 64.0;
        let k = self.hashes as f64;
        (1.0 - (-k * n as f64 / m).exp()).powf(k)
    }
}

/// The blocks a block points to, by its type: a pointer block's scores, a
/// directory block's entries' roots (40-byte VtEntries: flags at 8, score
/// at 20), a vac root's directory block (score at 258).
pub fn children(ty: BlockType, data: &[u8]) -> Vec<(Score, BlockType)> {
    if ty.is_pointer() {
        let Some(child) = BlockType::new(ty.value() - 1) else {
            return Vec::new();
        };
        data.chunks_exact(SCORE_SIZE)
            .filter_map(Score::from_slice)
            .filter(|s| !s.is_zero())
            .map(|s| (s, child))
            .collect()
    } else if ty == BlockType::DIR {
        data.chunks_exact(40)
            .filter(|e| e[8] & 0x01 != 0)
            .filter_map(|e| {
                let base = if e[8] & 0x02 != 0 {
                    BlockType::DIR
                } else {
                    BlockType::DATA
                };
                let ty = BlockType::at_depth(base, (e[8] & 0x1c) >> 2)?;
                let score = Score::from_slice(&e[20..40])?;
                (!score.is_zero()).then_some((score, ty))
            })
            .collect()
    } else if ty == BlockType::ROOT && data.len() >= 278 {
        Score::from_slice(&data[258..278])
            .filter(|s| !s.is_zero())
            .map(|s| vec![(s, BlockType::DIR)])
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// What a mark walked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marked {
    pub roots: u64,
    /// Blocks put in the filter (a shared block once per walk that met it).
    pub blocks: u64,
    /// Interior blocks read.
    pub reads: u64,
}

/// Marks what live roots reach, into a [`Bloom`].
pub struct Marker<'a> {
    store: &'a dyn BlockStore,
    bloom: Bloom,
    walked: HashSet<(Score, u8)>,
    walked_cap: usize,
    marked: Marked,
}

/// What one remembered interior block costs, roughly, in a `HashSet`.
const WALKED_ENTRY_BYTES: usize = 48;

impl<'a> Marker<'a> {
    /// A marker reading `store`, with `bloom`, remembering at most
    /// `walked_bytes` worth of interior blocks.
    pub fn new(store: &'a dyn BlockStore, bloom: Bloom, walked_bytes: usize) -> Marker<'a> {
        Marker {
            store,
            bloom,
            walked: HashSet::new(),
            walked_cap: walked_bytes / WALKED_ENTRY_BYTES,
            marked: Marked::default(),
        }
    }

    /// Marks `root` and everything it reaches. A block the walk must read
    /// but the store lacks (or cannot read) ends the mark with an error
    /// naming it: its children are unknown, so nothing may be swept.
    pub fn mark(&mut self, root: Score, ty: BlockType) -> Result<(), StoreError> {
        self.walk(root, ty, false)
    }

    /// Marks what of `root` is here, passing over blocks the store lacks:
    /// for a root nothing here keeps but that a peer may still stand on
    /// (what this store lacks, it cannot lose).
    pub fn mark_what_is_here(&mut self, root: Score, ty: BlockType) -> Result<(), StoreError> {
        self.walk(root, ty, true)
    }

    fn walk(&mut self, root: Score, ty: BlockType, lenient: bool) -> Result<(), StoreError> {
        if self.walked.contains(&(root, ty.to_wire())) {
            // Walked whole already (a second look at the same roots).
            return Ok(());
        }
        self.marked.roots += 1;
        let mut stack = vec![(root, ty)];
        while let Some((score, ty)) = stack.pop() {
            if score.is_zero() {
                continue;
            }
            self.bloom.insert(&score);
            self.marked.blocks += 1;
            if !(ty.is_pointer() || ty == BlockType::DIR || ty == BlockType::ROOT) {
                continue;
            }
            let key = (score, ty.to_wire());
            if self.walked.contains(&key) {
                continue;
            }
            let Some(data) = self.store.read(&score, ty)? else {
                if lenient {
                    continue;
                }
                return Err(StoreError::Collection(format!(
                    "live root {root} reaches block {score} (type {ty:?}), which this store lacks; \
                     nothing can be collected until it is here"
                )));
            };
            // Only a strict walk vouches for what lies under a block (a
            // lenient one may have passed over a missing part of it).
            if !lenient && self.walked.len() < self.walked_cap {
                self.walked.insert(key);
            }
            self.marked.reads += 1;
            stack.extend(children(ty, &data));
        }
        Ok(())
    }

    /// Marks one block alone (a list, a record: data that points nowhere).
    pub fn mark_block(&mut self, score: Score) {
        self.bloom.insert(&score);
        self.marked.blocks += 1;
    }

    /// What was marked, and the filter that holds it.
    pub fn finish(self) -> (Bloom, Marked) {
        (self.bloom, self.marked)
    }

    /// The memory the marker holds now, in bytes.
    pub fn memory(&self) -> u64 {
        self.bloom.bytes() + (self.walked.capacity() * WALKED_ENTRY_BYTES) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_bloom_filter_never_forgets_and_rarely_lies() {
        let mut bloom = Bloom::new(100_000, 10, 1 << 30);
        let scores: Vec<Score> = (0..100_000u32)
            .map(|i| Score::of(&i.to_be_bytes()))
            .collect();
        for s in &scores {
            bloom.insert(s);
        }
        assert!(scores.iter().all(|s| bloom.contains(s)));
        let strangers = (100_000..200_000u32)
            .filter(|i| bloom.contains(&Score::of(&i.to_be_bytes())))
            .count();
        assert!(strangers < 2_000, "{strangers} false positives in 100000");
        assert!(bloom.false_positive_rate(100_000) < 0.02);
        // Capped memory: more false positives, never a false negative.
        let mut small = Bloom::new(100_000, 10, 4096);
        assert_eq!(small.bytes(), 4096);
        for s in &scores {
            small.insert(s);
        }
        assert!(scores.iter().all(|s| small.contains(s)));
    }

    #[test]
    fn a_mark_reaches_through_roots_directories_and_pointers_but_not_prev() {
        let store = MemoryStore::new();
        let leaf = store.write(BlockType::DATA, b"leaf").unwrap();
        let other = store.write(BlockType::DATA, b"other").unwrap();
        let mut pointers = Vec::new();
        pointers.extend_from_slice(&leaf.0);
        pointers.extend_from_slice(&other.0);
        let ptr_ty = BlockType::at_depth(BlockType::DATA, 1).unwrap();
        let ptr = store.write(ptr_ty, &pointers).unwrap();
        // A directory with one active data entry of depth 1.
        let mut entry = [0u8; 40];
        entry[8] = 0x01 | (1 << 2);
        entry[20..40].copy_from_slice(&ptr.0);
        let dir = store.write(BlockType::DIR, &entry).unwrap();
        let old = store.write(BlockType::DATA, b"history").unwrap();
        let mut root = [0u8; 300];
        root[258..278].copy_from_slice(&dir.0);
        root[280..300].copy_from_slice(&old.0);
        let root = store.write(BlockType::ROOT, &root).unwrap();
        let stranger = store.write(BlockType::DATA, b"stranger").unwrap();

        let mut marker = Marker::new(&store, Bloom::new(10, 16, 1 << 20), 1 << 20);
        marker.mark(root, BlockType::ROOT).unwrap();
        marker.mark(root, BlockType::ROOT).unwrap();
        let (bloom, marked) = marker.finish();
        for s in [root, dir, ptr, leaf, other] {
            assert!(bloom.contains(&s), "{s} not marked");
        }
        assert!(!bloom.contains(&old), "prev was followed");
        assert!(!bloom.contains(&stranger));
        assert_eq!(
            marked.reads, 3,
            "the second walk read again what the first read"
        );

        // A missing interior block ends the mark, naming it, also after a
        // lenient walk of the same root passed over it.
        let missing = Score::of(b"gone");
        let mut entry = [0u8; 40];
        entry[8] = 0x01 | 0x02;
        entry[20..40].copy_from_slice(&missing.0);
        let broken = store.write(BlockType::DIR, &entry).unwrap();
        let mut marker = Marker::new(&store, Bloom::new(10, 16, 1 << 20), 1 << 20);
        marker.mark_what_is_here(broken, BlockType::DIR).unwrap();
        let e = marker.mark(broken, BlockType::DIR).unwrap_err().to_string();
        assert!(e.contains(&missing.to_string()), "{e}");
    }
}
