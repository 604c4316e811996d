//! Opening a block store from what a user wrote: a store directory, or
//! `s3://BUCKET/PREFIX` for packs in an object store.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use venti::{BlockStore, LogStore};

/// A store directory (the embedded log store) or a bucket.
pub fn open(spec: &str) -> Result<Arc<dyn BlockStore>> {
    if s3store::is_url(spec) {
        let opened = s3store::open(spec).with_context(|| format!("opening {spec}"))?;
        return Ok(opened.store);
    }
    Ok(Arc::new(
        LogStore::open(Path::new(spec)).with_context(|| format!("opening store {spec}"))?,
    ))
}
