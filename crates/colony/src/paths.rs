//! Where colony keeps things by default.

use std::path::{Path, PathBuf};

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

/// The node's state directory: `explicit`, else `$COLONY_STATE`, else
/// `$XDG_STATE_HOME/colony`, else `/var/lib/colony` for root, else
/// `~/.local/state/colony`.
pub fn state_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("COLONY_STATE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("colony"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/colony"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("no state directory: use --state DIR or set COLONY_STATE")?;
    Ok(PathBuf::from(home).join(".local/state/colony"))
}

/// What the command line dials `addr` with: for a `tls!` address, this
/// machine's grid certificate, `$COLONY_TLS`; nothing for the others.
pub fn link_for(addr: &str) -> Result<Option<std::sync::Arc<link::Link>>> {
    if !addr.starts_with("tls!") {
        return Ok(None);
    }
    let dir = std::env::var_os("COLONY_TLS")
        .filter(|v| !v.is_empty())
        .context("a tls! address needs this machine's grid certificate: set COLONY_TLS to its directory (colony grid ca issue … --out DIR)")?;
    Ok(Some(
        link::Link::load(Path::new(&dir)).context("loading the certificate in COLONY_TLS")?,
    ))
}

/// The venti server at `addr` as a block store, dialed as [`link_for`] says.
pub fn remote_store(addr: &str) -> Result<venti::RemoteStore> {
    let dial = link::dial::redial(addr, link_for(addr)?, link::dial::STORE_SERVERS);
    Ok(venti::RemoteStore::connect(addr, dial)?)
}
