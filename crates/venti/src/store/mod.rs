//! Block stores: where a venti server keeps its blocks. [`BlockStore`] is the
//! small interface the server (and, later, the embedded default of the other
//! layers) needs; [`LogStore`] is the durable one, [`MemoryStore`] is for tests.

pub mod cache;
mod log;
mod memory;
mod record;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use cache::{BlockCache, CacheStats, CachedStore};
pub use log::{Collected, DEFAULT_GRACE, LogRecord, LogStore, Recovery, SweepLimits};
pub use memory::MemoryStore;

use crate::{BlockType, Score};

/// The largest block a store accepts (plan9port's `VtMaxLumpSize`, 56 KiB).
pub const MAX_BLOCK_SIZE: usize = 56 * 1024;

/// Blocks keyed by (score, type). The type is logical; stores key by its wire
/// number, so a pointer block written as a data pointer reads back as a
/// directory pointer of the same depth, as in plan9port.
pub trait BlockStore: Send + Sync {
    /// The block's stored bytes, or `None` if it is not here. Both zero scores
    /// name the empty block, which every store has.
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `data` exactly as given (callers zero-truncate) and returns its
    /// score. A block already stored is not stored again. Empty data stores
    /// nothing and returns [`Score::ZERO`]. A block carrying a SHA-1
    /// collision attack is refused ([`StoreError::Collision`]): a store
    /// hashes each block new to it with [`Score::of_new`].
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError>;

    /// As [`BlockStore::write`], for a caller that has just computed
    /// `score` as `Score::of(data)` (to look it up, say): a store may take
    /// it rather than hash the block again (it still checks a new block
    /// for a collision attack). Only for scores computed in this process,
    /// never for ones that came from elsewhere.
    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        let _ = score;
        self.write(ty, data)
    }

    /// Returns once every earlier write is on stable storage.
    fn sync(&self) -> Result<(), StoreError>;

    /// Whether the block is here, without reading it where the store can
    /// tell (an index lookup).
    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        Ok(score.is_zero() || self.read(score, ty)?.is_some())
    }

    /// As [`BlockStore::read`], also saying whether the block had to be
    /// fetched from elsewhere (a peer, by a store that reads through).
    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        Ok(self.read(score, ty)?.map(|d| (d, false)))
    }

    /// Reads every block of `keys`, calling `each` with its index in `keys`
    /// and what [`BlockStore::read`] would have returned, as each one comes.
    /// A store across a network keeps many requests in flight; others read
    /// one after another.
    fn read_each(
        &self,
        keys: &[(Score, BlockType)],
        each: &mut dyn FnMut(usize, Result<Option<Vec<u8>>, StoreError>),
    ) {
        for (i, (score, ty)) in keys.iter().enumerate() {
            each(i, self.read(score, *ty));
        }
    }

    /// A hint that these blocks will be read soon, in this order: a cache
    /// in front of a far store fetches them ahead, and returns once they
    /// came (so a caller runs it on a thread of its own); other stores
    /// ignore it. It never changes what a read returns.
    fn prefetch(&self, keys: Vec<(Score, BlockType)>) {
        let _ = keys;
    }
}

impl<T: BlockStore + ?Sized> BlockStore for Arc<T> {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).read(score, ty)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        (**self).write(ty, data)
    }
    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        (**self).write_scored(ty, data, score)
    }
    fn sync(&self) -> Result<(), StoreError> {
        (**self).sync()
    }
    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        (**self).holds(score, ty)
    }
    fn read_sourced(
        &self,
        score: &Score,
        ty: BlockType,
    ) -> Result<Option<(Vec<u8>, bool)>, StoreError> {
        (**self).read_sourced(score, ty)
    }
    fn read_each(
        &self,
        keys: &[(Score, BlockType)],
        each: &mut dyn FnMut(usize, Result<Option<Vec<u8>>, StoreError>),
    ) {
        (**self).read_each(keys, each)
    }
    fn prefetch(&self, keys: Vec<(Score, BlockType)>) {
        (**self).prefetch(keys)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Collision(#[from] crate::score::Collision),
    #[error("lump too large: block of {0} bytes exceeds the limit of {MAX_BLOCK_SIZE}")]
    TooLarge(usize),
    #[error("block {score}/{ty} is corrupt at log offset {offset}: {detail}")]
    Corrupt {
        score: Score,
        ty: BlockType,
        offset: u64,
        detail: String,
    },
    #[error(
        "venti log {path} is damaged in the middle of the log at offset {offset} ({record}), \
         before the sync point at offset {sync_point}: acknowledged data is corrupt; not cutting \
         it: copy the store aside and repair it by hand"
    )]
    DamagedLog {
        path: PathBuf,
        offset: u64,
        record: String,
        sync_point: u64,
    },
    #[error("{context}: {err}")]
    Io { context: String, err: io::Error },
    #[error("venti index {path}: {detail}")]
    Index { path: PathBuf, detail: String },
    #[error("store {0} is in use by another process")]
    Busy(PathBuf),
    #[error("{0} is not a colony venti store: {1}")]
    NotAStore(PathBuf, String),
    #[error("store is read-only after an earlier failure: {0}")]
    Failed(String),
    /// A venti server could not be reached or refused a request.
    #[error("{0}")]
    Remote(String),
    /// A collection (mark or sweep) could not go on; it says why.
    #[error("{0}")]
    Collection(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            err: source,
        }
    }
}
