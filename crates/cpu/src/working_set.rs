//! A root's working set: the blocks an environment reads in its first
//! seconds, in the order it reads them, recorded on the cpu node that runs
//! it and kept with the root (as one venti block, which the storage node
//! names beside the root's name), so that the next cold start on a far cpu
//! node fetches them all at once instead of one round trip per read.
//!
//! The list is only ever a hint: every block is checked against its score
//! as always, so a wrong, stale or foreign list costs bandwidth, never
//! correctness, and one that cannot be read is ignored (with a log line).
//!
//! The block: `colony working set 1\n`, then per block its score (20 bytes)
//! and its wire type (1 byte), at most [`MAX_BLOCKS`] of them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use venti::{BlockStore, BlockType, SCORE_SIZE, Score, StoreError};

/// The most blocks a list holds: it stays one venti block (43 KiB).
pub const MAX_BLOCKS: usize = 2048;

/// How long after a start reads are recorded, unless the node says
/// otherwise (`working-set-window`).
pub const WINDOW: Duration = Duration::from_secs(10);

/// A list is sent again only when a start read this many blocks it lacked:
/// starts that read a few blocks in another order change nothing.
pub const WORTH_SENDING: usize = 16;

const MAGIC: &[u8] = b"colony working set 1\n";

pub type Key = (Score, BlockType);

/// The list as its block.
pub fn encode(keys: &[Key]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (score, ty) in keys.iter().take(MAX_BLOCKS) {
        out.extend_from_slice(score.as_bytes());
        out.push(ty.to_wire());
    }
    out
}

/// The list in a block, or why it is not one.
pub fn decode(data: &[u8]) -> Result<Vec<Key>, String> {
    let body = data
        .strip_prefix(MAGIC)
        .ok_or("not a working-set list (no header)")?;
    const ENTRY: usize = SCORE_SIZE + 1;
    if body.len() % ENTRY != 0 {
        return Err(format!("a list of {} bytes is cut short", body.len()));
    }
    if body.len() / ENTRY > MAX_BLOCKS {
        return Err(format!(
            "a list of {} blocks is longer than {MAX_BLOCKS}",
            body.len() / ENTRY
        ));
    }
    body.chunks_exact(ENTRY)
        .map(|e| {
            let score = Score::from_slice(&e[..SCORE_SIZE]).ok_or("a bad score")?;
            let ty = BlockType::from_wire(e[SCORE_SIZE])
                .ok_or_else(|| format!("an unknown block type {}", e[SCORE_SIZE]))?;
            Ok((score, ty))
        })
        .collect()
}

/// What a start read (in its order), followed by what the list had that it
/// did not read, at most [`MAX_BLOCKS`]; or None if it read nothing the
/// list lacked, or (for a list there was) fewer than [`WORTH_SENDING`].
pub fn improved(read: &[Key], known: &[Key]) -> Option<Vec<Key>> {
    let had: HashSet<&Key> = known.iter().collect();
    let new = read.iter().filter(|k| !had.contains(k)).count();
    let enough = if known.is_empty() { 1 } else { WORTH_SENDING };
    if new < enough {
        return None;
    }
    let mut seen: HashSet<&Key> = HashSet::new();
    Some(
        read.iter()
            .chain(known)
            .filter(|k| seen.insert(*k))
            .take(MAX_BLOCKS)
            .copied()
            .collect(),
    )
}

/// A store that notes the first [`MAX_BLOCKS`] distinct blocks read through
/// it within a window from its making: an environment's reads.
pub struct Recorder {
    inner: Arc<dyn BlockStore>,
    until: Instant,
    read: Mutex<(Vec<Key>, HashSet<Key>)>,
    /// Reads in the window that waited on the link (fetched by the reader
    /// itself, not found in the cache).
    waited: std::sync::atomic::AtomicU64,
}

impl Recorder {
    pub fn new(inner: Arc<dyn BlockStore>, window: Duration) -> Recorder {
        Recorder {
            inner,
            until: Instant::now() + window,
            read: Mutex::default(),
            waited: Default::default(),
        }
    }

    fn note(&self, score: &Score, ty: BlockType) {
        if score.is_zero() || Instant::now() > self.until {
            return;
        }
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let (order, seen) = &mut *read;
        if order.len() < MAX_BLOCKS && seen.insert((*score, ty)) {
            order.push((*score, ty));
        }
    }

    /// What was read, in order (the window need not have ended).
    pub fn blocks_read(&self) -> Vec<Key> {
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// How many reads in the window waited on the link.
    pub fn waited(&self) -> u64 {
        self.waited.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the window ends.
    pub fn until(&self) -> Instant {
        self.until
    }
}

impl BlockStore for Recorder {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_sourced(score, ty)?.map(|(data, _)| data))
    }

    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        self.note(score, ty);
        let got = self.inner.read_sourced(score, ty)?;
        if got.as_ref().is_some_and(|(_, far)| *far) && Instant::now() <= self.until {
            self.waited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(got)
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.inner.write(ty, data)
    }

    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        self.inner.write_scored(ty, data, score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }

    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        self.inner.holds(score, ty)
    }

    fn prefetch(&self, keys: Vec<Key>) {
        self.inner.prefetch(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        (Score::of(&i.to_be_bytes()), BlockType::DATA)
    }

    #[test]
    fn a_list_reads_back_and_damage_is_named() {
        let keys: Vec<Key> = (0..100).map(key).collect();
        let block = encode(&keys);
        assert_eq!(decode(&block).unwrap(), keys);
        assert!(block.len() <= venti::MAX_BLOCK_SIZE);
        assert!(decode(b"something else").unwrap_err().contains("header"));
        assert!(
            decode(&block[..block.len() - 3])
                .unwrap_err()
                .contains("cut short")
        );
        let mut bad = block.clone();
        let last = bad.len() - 1;
        bad[last] = 250;
        assert!(decode(&bad).unwrap_err().contains("block type"));
        let full: Vec<Key> = (0..MAX_BLOCKS as u32 + 10).map(key).collect();
        let block = encode(&full);
        assert!(block.len() <= venti::MAX_BLOCK_SIZE);
        assert_eq!(decode(&block).unwrap().len(), MAX_BLOCKS);
        let mut long = block;
        long.extend_from_slice(&[0; SCORE_SIZE + 1]);
        assert!(decode(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn a_start_improves_a_list_only_when_it_read_enough_that_it_lacked() {
        let known: Vec<Key> = (0..50).map(key).collect();
        let few: Vec<Key> = (40..60).map(key).collect();
        assert_eq!(
            improved(&few, &known),
            None,
            "10 new blocks are not worth it"
        );
        let many: Vec<Key> = (40..80).map(key).collect();
        let list = improved(&many, &known).unwrap();
        assert_eq!(list.len(), 80);
        assert_eq!(&list[..40], &many[..], "this start's order first");
        assert!(
            improved(&known, &[]).is_some(),
            "a first list is always sent"
        );
    }
}
