//! The node's users: `user=NAME key="ssh-ed25519 AAAA…"` (one or more keys),
//! an ndb file. A user is whoever holds a registered key; the name an SSH
//! client claims is ignored.

use std::path::{Path, PathBuf};

use russh::keys::PublicKey;

use crate::error::{GridError, GridResult};
use crate::names::check_user_name;

pub struct Users {
    path: PathBuf,
}

/// The `type base64` part of an OpenSSH public key line, checked.
pub fn normalize_key(line: &str) -> GridResult<String> {
    let key = PublicKey::from_openssh(line.trim())
        .map_err(|e| GridError::refused(format!("not an OpenSSH public key: {e}")))?;
    let text = key
        .to_openssh()
        .map_err(|e| GridError::refused(format!("cannot encode key: {e}")))?;
    // Drop the comment: "type base64 [comment]".
    Ok(text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

impl Users {
    pub fn new(path: impl Into<PathBuf>) -> Users {
        Users { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a user with a key, or another key to an existing user.
    pub fn add(&self, name: &str, key_line: &str) -> GridResult<()> {
        check_user_name(name)?;
        let key = normalize_key(key_line)?;
        ndb::update(&self.path, |db| {
            if let Some(owner) = db.search("key", &key).next().and_then(|e| e.get("user")) {
                return Err(GridError::refused(format!(
                    "that key already belongs to {owner}"
                )));
            }
            let touched = db.edit(
                |e| e.has("user", name),
                |e| {
                    let mut e = e.clone();
                    e.push("key", &key);
                    Some(e)
                },
            );
            if touched == 0 {
                db.append(ndb::Entry::new(&[("user", name), ("key", &key)]));
            }
            Ok(())
        })
    }

    pub fn remove(&self, name: &str) -> GridResult<()> {
        ndb::update(&self.path, |db| {
            if db.edit(|e| e.has("user", name), |_| None) == 0 {
                return Err(GridError::refused(format!("no user {name}")));
            }
            Ok(())
        })
    }

    /// (name, number of keys) for every user.
    pub fn list(&self) -> GridResult<Vec<(String, usize)>> {
        let db = ndb::Db::open(&self.path)?;
        Ok(db
            .entries()
            .iter()
            .filter_map(|e| e.get("user").map(|u| (u.to_string(), e.all("key").count())))
            .collect())
    }

    pub fn exists(&self, name: &str) -> GridResult<bool> {
        Ok(ndb::Db::open(&self.path)?
            .search("user", name)
            .next()
            .is_some())
    }

    /// The user who registered `key`, read afresh so changes apply at once.
    pub fn owner_of(&self, key: &PublicKey) -> GridResult<Option<String>> {
        let text = key
            .to_openssh()
            .map_err(|e| GridError::refused(format!("cannot encode key: {e}")))?;
        let wanted: String = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let db = ndb::Db::open(&self.path)?;
        Ok(db
            .search("key", &wanted)
            .next()
            .and_then(|e| e.get("user"))
            .map(str::to_string))
    }
}
