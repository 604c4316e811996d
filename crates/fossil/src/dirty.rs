//! Where changed blocks live until a save archives them: RAM of a fixed size,
//! or a sparse disk file of a fixed size. Either way the capacity is a number
//! of whole blocks; running out is ENOSPC, never a crash.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{FsError, FsResult};

/// How big the cache is and where changed blocks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheConfig {
    /// Everything in RAM: `bytes` for changed and fetched blocks together.
    Memory { bytes: u64 },
    /// Changed blocks in a sparse file of `bytes`; fetched blocks in a RAM
    /// cache of `read_cache` bytes.
    Disk {
        path: PathBuf,
        bytes: u64,
        read_cache: u64,
    },
}

impl CacheConfig {
    /// The 100 MB RAM cache of `spawn`.
    pub fn memory_default() -> CacheConfig {
        CacheConfig::Memory { bytes: 100_000_000 }
    }
}

/// The handle of one changed block.
pub type BlockId = u32;

enum Backing {
    Memory(HashMap<BlockId, Box<[u8]>>),
    Disk(File),
}

/// A fixed number of block-sized slots.
pub struct DirtyBlocks {
    backing: Backing,
    block_size: usize,
    capacity: u32,
    free: Vec<BlockId>,
    next: BlockId,
    used: u32,
    /// Shared with the read cache, which gives back what this takes.
    used_bytes: Arc<AtomicU64>,
}

impl DirtyBlocks {
    pub fn new(
        config: &CacheConfig,
        block_size: usize,
        used_bytes: Arc<AtomicU64>,
    ) -> FsResult<DirtyBlocks> {
        let (backing, bytes) = match config {
            CacheConfig::Memory { bytes } => (Backing::Memory(HashMap::new()), *bytes),
            CacheConfig::Disk { path, bytes, .. } => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| FsError::io(format!("cache file {}: {e}", path.display())))?;
                file.set_len(*bytes)
                    .map_err(|e| FsError::io(format!("cache file {}: {e}", path.display())))?;
                (Backing::Disk(file), *bytes)
            }
        };
        let capacity = u32::try_from(bytes / block_size as u64).unwrap_or(u32::MAX);
        Ok(DirtyBlocks {
            backing,
            block_size,
            capacity,
            free: Vec::new(),
            next: 0,
            used: 0,
            used_bytes,
        })
    }

    /// Takes a slot holding `data` (zero-extended to a block).
    pub fn alloc(&mut self, data: &[u8]) -> FsResult<BlockId> {
        if self.used >= self.capacity {
            return Err(FsError::no_space());
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.next += 1;
                self.next - 1
            }
        };
        self.used += 1;
        self.used_bytes
            .fetch_add(self.block_size as u64, Ordering::Relaxed);
        // The whole block, so a reused disk slot keeps nothing of its past.
        let mut full = vec![0u8; self.block_size];
        full[..data.len()].copy_from_slice(data);
        if let Err(e) = self.put(id, 0, &full) {
            self.release(id);
            return Err(e);
        }
        Ok(id)
    }

    /// The whole block.
    pub fn get(&self, id: BlockId) -> FsResult<Vec<u8>> {
        match &self.backing {
            Backing::Memory(map) => Ok(map
                .get(&id)
                .map(|b| b.to_vec())
                .unwrap_or_else(|| vec![0; self.block_size])),
            Backing::Disk(file) => {
                let mut buf = vec![0u8; self.block_size];
                file.read_exact_at(&mut buf, id as u64 * self.block_size as u64)
                    .map_err(|e| FsError::io(format!("reading the cache file: {e}")))?;
                Ok(buf)
            }
        }
    }

    /// Writes `data` into the block at `offset`.
    pub fn put(&mut self, id: BlockId, offset: usize, data: &[u8]) -> FsResult<()> {
        debug_assert!(offset + data.len() <= self.block_size);
        match &mut self.backing {
            Backing::Memory(map) => {
                let block = map
                    .entry(id)
                    .or_insert_with(|| vec![0u8; self.block_size].into_boxed_slice());
                block[offset..offset + data.len()].copy_from_slice(data);
                Ok(())
            }
            Backing::Disk(file) => file
                .write_all_at(data, id as u64 * self.block_size as u64 + offset as u64)
                .map_err(|e| FsError::new(libc::ENOSPC, format!("writing the cache file: {e}"))),
        }
    }

    /// Zeroes the block from `from` to its end.
    pub fn zero_tail(&mut self, id: BlockId, from: usize) -> FsResult<()> {
        let zeros = vec![0u8; self.block_size - from];
        self.put(id, from, &zeros)
    }

    pub fn release(&mut self, id: BlockId) {
        if let Backing::Memory(map) = &mut self.backing {
            map.remove(&id);
        }
        self.free.push(id);
        self.used -= 1;
        self.used_bytes
            .fetch_sub(self.block_size as u64, Ordering::Relaxed);
    }

    /// (used, capacity) in blocks.
    pub fn usage(&self) -> (u32, u32) {
        (self.used, self.capacity)
    }
}
