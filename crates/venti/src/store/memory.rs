//! An in-memory block store for tests and throwaway use.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{BlockStore, MAX_BLOCK_SIZE, StoreError};
use crate::{BlockType, Score};

/// Blocks in a hash map; nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    blocks: RwLock<HashMap<(Score, u8), Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of stored blocks.
    pub fn len(&self) -> usize {
        self.blocks.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BlockStore for MemoryStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if score.is_zero() {
            return Ok(Some(Vec::new()));
        }
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        Ok(blocks.get(&(*score, ty.to_wire())).cloned())
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len()));
        }
        let score = Score::of(data);
        if !data.is_empty() {
            let held = |blocks: &HashMap<(Score, u8), Vec<u8>>| {
                blocks.contains_key(&(score, ty.to_wire()))
            };
            if held(&self.blocks.read().unwrap_or_else(|p| p.into_inner())) {
                return Ok(score);
            }
            // As every store: a new block is checked for a collision attack.
            Score::of_new(data)?;
            let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
            blocks
                .entry((score, ty.to_wire()))
                .or_insert_with(|| data.to_vec());
        }
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
