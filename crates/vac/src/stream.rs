//! Streams as hash trees (spec §5.3–5.4): [`StreamWriter`] turns leaves into a
//! tree of pointer blocks and returns the VtEntry; [`StreamReader`] walks a tree
//! lazily, reading only the blocks on the way to the leaf it needs.

use std::collections::HashSet;

use venti::{BlockStore, BlockType, Score, zero};

use crate::entry::{Entry, pointers_per_block};
use crate::error::{Error, Result};

/// Reads one block, turning "not there" into an error that names it.
pub fn read_block(
    store: &dyn BlockStore,
    score: &Score,
    ty: BlockType,
    max: usize,
) -> Result<Vec<u8>> {
    let data = store
        .read(score, ty)?
        .ok_or(Error::MissingBlock { score: *score, ty })?;
    if data.len() > max {
        return Err(Error::corrupt(format!(
            "block {score}/{ty} is {} bytes, more than the {max} allowed here",
            data.len()
        )));
    }
    Ok(data)
}

/// Builds one stream's hash tree, leaf by leaf.
pub struct StreamWriter<'a> {
    store: &'a dyn BlockStore,
    base: BlockType,
    psize: u32,
    dsize: u32,
    /// `levels[i]`: scores waiting to go into a pointer block of depth i+1.
    levels: Vec<Vec<Score>>,
    leaves: u64,
}

impl<'a> StreamWriter<'a> {
    pub fn new(store: &'a dyn BlockStore, dir: bool, psize: u32, dsize: u32) -> StreamWriter<'a> {
        let base = if dir { BlockType::DIR } else { BlockType::DATA };
        StreamWriter {
            store,
            base,
            psize,
            dsize,
            levels: vec![Vec::new()],
            leaves: 0,
        }
    }

    /// Appends one leaf (at most `dsize` bytes; zero-truncated before writing).
    pub fn push_leaf(&mut self, leaf: &[u8]) -> Result<()> {
        debug_assert!(leaf.len() <= self.dsize as usize);
        let score = self
            .store
            .write(self.base, zero::truncate(self.base, leaf))?;
        self.leaves += 1;
        self.push_score(0, score)
    }

    /// Appends a leaf whose score is already known (and stored).
    pub fn push_leaf_score(&mut self, score: Score) -> Result<()> {
        self.leaves += 1;
        self.push_score(0, score)
    }

    /// Appends `count` leaves of zeros. A full block of zero scores is itself
    /// the zero score, so whole runs are pushed a level up: the cost grows
    /// with the logarithm of `count`, not with it.
    pub fn push_zero_leaves(&mut self, count: u64) -> Result<()> {
        self.leaves += count;
        self.push_zero_scores(0, count)
    }

    fn push_zero_scores(&mut self, level: usize, mut count: u64) -> Result<()> {
        let np = pointers_per_block(self.psize);
        while count > 0 {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            if self.levels[level].is_empty() && count >= np {
                let blocks = count / np;
                self.push_zero_scores(level + 1, blocks)?;
                count -= blocks * np;
            } else {
                let room = np - self.levels[level].len() as u64;
                for _ in 0..room.min(count) {
                    self.push_score(level, Score::ZERO)?;
                }
                count -= room.min(count);
            }
        }
        Ok(())
    }

    fn push_score(&mut self, level: usize, score: Score) -> Result<()> {
        self.levels[level].push(score);
        if self.levels[level].len() as u64 == pointers_per_block(self.psize) {
            let block = self.pointer_block(level)?;
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.push_score(level + 1, block)?;
        }
        Ok(())
    }

    /// Writes the pointer block of depth `level+1` from the waiting scores.
    fn pointer_block(&mut self, level: usize) -> Result<Score> {
        let scores = std::mem::take(&mut self.levels[level]);
        let ty = BlockType::at_depth(self.base, level as u8 + 1)
            .ok_or_else(|| Error::Invalid("stream too large: tree deeper than 7 levels".into()))?;
        let mut block = Vec::with_capacity(scores.len() * venti::SCORE_SIZE);
        for s in &scores {
            block.extend_from_slice(&s.0);
        }
        Ok(self.store.write(ty, zero::truncate(ty, &block))?)
    }

    /// Closes the tree at its minimal depth and returns the stream's entry.
    pub fn finish(mut self, size: u64) -> Result<Entry> {
        let mut entry = Entry::empty(self.psize, self.dsize, self.base == BlockType::DIR);
        entry.size = size;
        if self.leaves == 0 {
            return Ok(entry);
        }
        let mut level = 0;
        loop {
            let higher_empty = self.levels[level + 1..].iter().all(Vec::is_empty);
            if higher_empty && self.levels[level].len() == 1 {
                entry.depth = level as u8;
                entry.score = self.levels[level][0];
                return Ok(entry);
            }
            if !self.levels[level].is_empty() {
                let block = self.pointer_block(level)?;
                if self.levels.len() == level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(block);
            }
            level += 1;
        }
    }
}

/// Writes a byte stream as a data stream: `data` is cut into `dsize` leaves.
pub fn write_bytes(store: &dyn BlockStore, data: &[u8], psize: u32, dsize: u32) -> Result<Entry> {
    let mut w = StreamWriter::new(store, false, psize, dsize);
    for leaf in data.chunks(dsize as usize) {
        w.push_leaf(leaf)?;
    }
    w.finish(data.len() as u64)
}

/// Reads a stream's leaves on demand, remembering the last pointer block of
/// each level so sequential reads fetch each block once.
pub struct StreamReader<'a> {
    store: &'a dyn BlockStore,
    entry: Entry,
    /// For each depth 1..=entry.depth: (index of the block at that depth, its bytes).
    cache: Vec<Option<(u64, Vec<u8>)>>,
    /// Pointer blocks (depth, score) found to hold only zero leaves.
    empty: HashSet<(u8, Score)>,
}

/// How many all-zero subtrees [`StreamReader::next_stored_leaf`] remembers.
const MAX_EMPTY_MEMO: usize = 1 << 16;

impl<'a> StreamReader<'a> {
    pub fn new(store: &'a dyn BlockStore, entry: Entry) -> Result<StreamReader<'a>> {
        if !entry.is_active() {
            return Err(Error::corrupt("stream entry is not active"));
        }
        // Pointers per block ≥ 2, blocks ≤ 56 KiB, depth ≤ 7 and at least
        // what the size needs (plan9port: "bad depth").
        entry.check_geometry()?;
        Ok(StreamReader {
            store,
            entry,
            cache: vec![None; entry.depth as usize + 1],
            empty: HashSet::new(),
        })
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Number of leaves the stream's size implies.
    pub fn leaf_count(&self) -> u64 {
        self.entry.size.div_ceil(self.entry.dsize as u64)
    }

    /// The stored bytes of leaf `k` (zero-truncated; callers extend as needed).
    pub fn leaf(&mut self, k: u64) -> Result<Vec<u8>> {
        let score = self.leaf_score(k)?;
        read_block(
            self.store,
            &score,
            self.entry.base_type(),
            self.entry.dsize as usize,
        )
    }

    /// Leaves under one pointer at `level` (a block of depth `level`):
    /// `np^level`, computed in u128 (2867^7 < 2^81) so it cannot overflow.
    fn span(&self, level: u32) -> u128 {
        u128::from(pointers_per_block(self.entry.psize)).pow(level)
    }

    /// Puts the pointer block of depth `level` that holds leaf `k`, named by
    /// `score`, in the cache (if it is not there already).
    fn load_block(&mut self, level: u32, k: u64, score: &Score) -> Result<()> {
        // k < span(depth), so the index fits in u64.
        let block_index = (u128::from(k) / self.span(level)) as u64;
        let cached = matches!(&self.cache[level as usize], Some((i, _)) if *i == block_index);
        if !cached {
            let ty = BlockType::at_depth(self.entry.base_type(), level as u8)
                .ok_or_else(|| Error::corrupt(format!("bad depth {level}")))?;
            let block = read_block(self.store, score, ty, self.entry.psize as usize)?;
            self.cache[level as usize] = Some((block_index, block));
        }
        Ok(())
    }

    /// The cached pointer block of depth `level` (after [`Self::load_block`]).
    fn cached_block(&self, level: u32) -> &[u8] {
        &self.cache[level as usize].as_ref().expect("loaded").1
    }

    /// The score in slot `slot` of a pointer block (zero past its stored,
    /// zero-truncated end).
    fn slot(block: &[u8], slot: u64) -> Score {
        let at = slot as usize * venti::SCORE_SIZE;
        match block.get(at..at + venti::SCORE_SIZE) {
            Some(s) => Score::from_slice(s).expect("20"),
            None => Score::ZERO, // truncated trailing zero scores
        }
    }

    /// The score of leaf `k`, walking down the pointer blocks.
    pub fn leaf_score(&mut self, k: u64) -> Result<Score> {
        let depth = self.entry.depth as u32;
        let np = pointers_per_block(self.entry.psize);
        if depth == 0 {
            return if k == 0 {
                Ok(self.entry.score)
            } else {
                Ok(Score::ZERO)
            };
        }
        if u128::from(k) >= self.span(depth) {
            return Ok(Score::ZERO);
        }
        let mut score = self.entry.score;
        for level in (1..=depth).rev() {
            if score == Score::ZERO {
                return Ok(Score::ZERO);
            }
            // The slot within the block at this level.
            let slot = ((u128::from(k) / self.span(level - 1)) % u128::from(np)) as u64;
            self.load_block(level, k, &score)?;
            score = Self::slot(self.cached_block(level), slot);
        }
        Ok(score)
    }

    /// The first leaf at or after `from` (and before [`leaf_count`]) whose
    /// score is not the zero score, or `None`.
    ///
    /// A zero pointer at depth L stands for `np^L` zero leaves and is skipped
    /// at once, and a pointer block's zero slots are skipped in memory, so
    /// the cost follows the blocks stored, not the size claimed. Subtrees
    /// found to hold no leaf are remembered by score, so a crafted tree that
    /// points at one such block many times is searched once.
    ///
    /// [`leaf_count`]: StreamReader::leaf_count
    pub fn next_stored_leaf(&mut self, from: u64) -> Result<Option<u64>> {
        let count = self.leaf_count();
        let depth = self.entry.depth as u32;
        let np = pointers_per_block(self.entry.psize);
        if depth == 0 {
            let stored = from == 0 && count > 0 && self.entry.score != Score::ZERO;
            return Ok(stored.then_some(0));
        }
        let end = u128::from(count).min(self.span(depth));
        let mut k = u128::from(from);
        'restart: while k < end {
            let mut score = self.entry.score;
            for level in (1..=depth).rev() {
                // `score` names the block of depth `level` holding leaf k,
                // which covers leaves [base, base + span).
                let span = self.span(level);
                let base = k - k % span;
                if score == Score::ZERO || self.empty.contains(&(level as u8, score)) {
                    k = base + span;
                    continue 'restart;
                }
                let child_span = self.span(level - 1);
                let first = ((k / child_span) % u128::from(np)) as u64;
                self.load_block(level, k as u64, &score)?;
                let block = &self.cache[level as usize].as_ref().expect("loaded").1;
                let empty = &self.empty;
                let found = (first..np).find_map(|s| {
                    let child = Self::slot(block, s);
                    let known_empty = level > 1 && empty.contains(&(level as u8 - 1, child));
                    (child != Score::ZERO && !known_empty).then_some((s, child))
                });
                let Some((s, child)) = found else {
                    if first == 0 && self.empty.len() < MAX_EMPTY_MEMO {
                        self.empty.insert((level as u8, score));
                    }
                    k = base + span;
                    continue 'restart;
                };
                if s > first {
                    k = base + u128::from(s) * child_span;
                    if k >= end {
                        return Ok(None);
                    }
                }
                score = child;
            }
            return Ok(Some(k as u64));
        }
        Ok(None)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.entry.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let dsize = self.entry.dsize as u64;
        let want = buf.len().min((size - offset) as usize);
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let k = pos / dsize;
            let within = (pos % dsize) as usize;
            let n = (dsize as usize - within).min(want - done);
            let leaf = self.leaf(k)?;
            let out = &mut buf[done..done + n];
            // Bytes past the stored (truncated) leaf are zeros.
            let have = leaf.len().saturating_sub(within).min(n);
            if have > 0 {
                out[..have].copy_from_slice(&leaf[within..within + have]);
            }
            out[have..].fill(0);
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use venti::MemoryStore;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((13 * i + 5) % 256) as u8).collect()
    }

    #[test]
    fn x_of_the_spec_11_10_archive() {
        let store = MemoryStore::new();
        let e = write_bytes(&store, &pattern(10000), 8180, 8192).unwrap();
        assert_eq!(e.depth, 1);
        assert_eq!(
            e.score.to_string(),
            "63eb622ced2edadd6053896042e2642e679c7c04"
        );
        let mut r = StreamReader::new(&store, e).unwrap();
        let mut buf = vec![0; 10000];
        assert_eq!(r.read_at(0, &mut buf).unwrap(), 10000);
        assert_eq!(buf, pattern(10000));
    }

    #[test]
    fn depths_are_minimal_and_reads_cross_leaf_and_pointer_boundaries() {
        let store = MemoryStore::new();
        // psize 60 → 3 pointers per block, dsize 256: forces deep trees quickly.
        for size in [0usize, 1, 256, 257, 768, 769, 2304, 2305, 7000] {
            let data = pattern(size);
            let e = write_bytes(&store, &data, 60, 256).unwrap();
            let leaves = size.div_ceil(256);
            let mut expect = 0;
            let mut n = leaves;
            while n > 1 {
                n = n.div_ceil(3);
                expect += 1;
            }
            assert_eq!(e.depth, expect, "size {size}");
            let mut r = StreamReader::new(&store, e).unwrap();
            let mut got = vec![0; size];
            assert_eq!(r.read_at(0, &mut got).unwrap(), size);
            assert_eq!(got, data, "size {size}");
            if size > 300 {
                let mut part = vec![0; 100];
                r.read_at(250, &mut part).unwrap();
                assert_eq!(part, &data[250..350]);
            }
        }
    }

    #[test]
    fn reading_inside_a_short_or_zero_leaf_is_zeros_not_a_panic() {
        let store = MemoryStore::new();
        let mut data = vec![0u8; 3 * 8192];
        data[10] = 1; // leaf 0 is stored 11 bytes long; leaf 1 and 2 are zero leaves
        let e = write_bytes(&store, &data, 8180, 8192).unwrap();
        let mut r = StreamReader::new(&store, e).unwrap();
        let mut buf = [7u8; 4];
        assert_eq!(r.read_at(8190, &mut buf).unwrap(), 4);
        assert_eq!(buf, [0; 4]);
        assert_eq!(r.read_at(100, &mut buf).unwrap(), 4);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn zero_leaves_cost_no_blocks() {
        let store = MemoryStore::new();
        let mut data = vec![0u8; 8192 * 10];
        data[8192 * 5] = 1;
        let e = write_bytes(&store, &data, 8180, 8192).unwrap();
        // One data leaf and one pointer block; nine zero leaves are the zero score.
        assert_eq!(store.len(), 2);
        let mut r = StreamReader::new(&store, e).unwrap();
        let mut got = vec![7u8; data.len()];
        r.read_at(0, &mut got).unwrap();
        assert_eq!(got, data);
        // An all-zero file of any length is the zero score.
        let z = write_bytes(&store, &vec![0u8; 30000], 8180, 8192).unwrap();
        assert_eq!(z.score, Score::ZERO);
    }

    #[test]
    fn a_shallow_entry_and_a_missing_block_are_errors() {
        let store = MemoryStore::new();
        let mut e = write_bytes(&store, &pattern(20000), 8180, 8192).unwrap();
        e.depth = 0;
        assert!(StreamReader::new(&store, e).is_err());
        let e = write_bytes(&MemoryStore::new(), &pattern(100), 8180, 8192).unwrap();
        let mut r = StreamReader::new(&store, e).unwrap();
        let err = r.read_at(0, &mut [0; 10]).unwrap_err();
        assert!(err.to_string().contains("is not in the store"), "{err}");
    }
}

#[cfg(test)]
mod zero_run_tests {
    use super::*;
    use venti::MemoryStore;

    /// Zero runs pushed at once make the same tree as zero leaves one by one.
    #[test]
    fn zero_runs_match_leaf_by_leaf() {
        let store = MemoryStore::new();
        for (before, zeros, after) in [
            (0u64, 5u64, 1u64),
            (1, 3, 0),
            (2, 9 * 3 + 2, 1),
            (0, 27, 0),
            (4, 100, 2),
            (0, 0, 3),
        ] {
            let (psize, dsize) = (60, 256);
            let mut one = StreamWriter::new(&store, false, psize, dsize);
            let mut run = StreamWriter::new(&store, false, psize, dsize);
            for i in 0..before {
                one.push_leaf(&[i as u8 + 1; 10]).unwrap();
                run.push_leaf(&[i as u8 + 1; 10]).unwrap();
            }
            for _ in 0..zeros {
                one.push_leaf_score(Score::ZERO).unwrap();
            }
            run.push_zero_leaves(zeros).unwrap();
            for i in 0..after {
                one.push_leaf(&[i as u8 + 9; 10]).unwrap();
                run.push_leaf(&[i as u8 + 9; 10]).unwrap();
            }
            let size = (before + zeros + after) * dsize as u64;
            assert_eq!(
                one.finish(size).unwrap(),
                run.finish(size).unwrap(),
                "{before} {zeros} {after}"
            );
        }
    }
}
