//! Where colony keeps things by default.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The embedded block store: `$COLONY_STORE`, else `$XDG_DATA_HOME/colony/store`,
/// else `~/.local/share/colony/store`.
pub fn default_store_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COLONY_STORE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("colony/store"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find the default store: set COLONY_STORE or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/colony/store"))
}
