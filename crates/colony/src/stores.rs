//! Opening a block store from what a user wrote: a store directory, or
//! `s3://BUCKET/PREFIX` for packs in an object store.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use venti::{BlockStore, LogStore};

/// A store directory (the embedded log store) or a bucket.
pub fn open(spec: &str) -> Result<Arc<dyn BlockStore>> {
    if s3store::is_url(spec) {
        let opened =
            s3store::open_with(&s3_settings(spec)?).with_context(|| format!("opening {spec}"))?;
        return Ok(opened.store);
    }
    Ok(Arc::new(
        LogStore::open(Path::new(spec)).with_context(|| format!("opening store {spec}"))?,
    ))
}

/// The object store's settings for `url`, from this process's environment
/// (`AWS_*`, `COLONY_S3_CONFIG`, `COLONY_S3_CACHE`) and the S3 settings file.
pub fn s3_settings(url: &str) -> Result<s3store::Settings> {
    s3store::Settings::load(url, &|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)
}
