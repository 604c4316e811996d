//! A venti block store on an S3-compatible object store (Garage, MinIO,
//! AWS S3), for grids that outgrow one node's disk.
//!
//! * [`config`]: `s3://BUCKET/PREFIX` and where the endpoint, region and
//!   credentials come from (a file or `AWS_*`, never the command line).
//! * [`pack`]: the objects' byte formats — packs of many blocks, each with
//!   an index of its own.
//! * [`store`]: [`PackStore`], the [`venti::BlockStore`] over them, which
//!   several writers can share without locks or conditional writes, and
//!   whose garbage a storage node collects while they go on.
//!
//! [`open`] puts the local block cache (bounded, every block checked
//! against its score) with readahead in front, so warm reads make no
//! request and a file read cold makes its requests many at a time.

pub mod config;
pub mod pack;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use bytes::Bytes;
pub use config::{S3Url, Settings};
pub use store::{Candidates, MAX_UNSENT, PackStore, Stats, Swept};
use venti::{BlockCache, BlockStore, CachedStore, StoreError};

/// Readahead requests in flight per store.
const FETCHERS: usize = 16;

/// A bucket opened as a store.
pub struct Opened {
    /// What to read and write: the packs behind the local cache.
    pub store: Arc<dyn BlockStore>,
    /// The packs themselves, for their figures.
    pub packs: Arc<PackStore>,
    pub cache: Arc<BlockCache>,
}

/// Whether `spec` names a bucket rather than a directory.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("s3://")
}

pub fn open_with(settings: &Settings) -> Result<Opened, StoreError> {
    let packs = Arc::new(PackStore::open(settings)?);
    let cache = BlockCache::open(&settings.cache.join("blocks"), settings.cache_bytes)?;
    let store = Arc::new(CachedStore::new(
        cache.clone(),
        packs.clone(),
        Duration::ZERO,
        FETCHERS,
    ));
    Ok(Opened {
        store,
        packs,
        cache,
    })
}
