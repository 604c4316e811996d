//! The node's users: `user=NAME key="ssh-ed25519 AAAA…"` (one or more keys),
//! an ndb file. A user is whoever holds a registered key; the name an SSH
//! client claims is ignored.
//!
//! So that users replicate between storage nodes, the file is a grow-only
//! set of events: `user=NAME key=… added=NANOS` adds a key and
//! `user=NAME deleted=NANOS` is a tombstone that ends every key added
//! before it. A user's keys are those added after their latest tombstone
//! (entries without `added`, from before replication, count as added at 0).
//! Merging two files is their union; entries a tombstone ends are dropped.
//!
//! The file is read through an index ([`ndb::Indexed`]) on users and keys,
//! so a login's key lookup costs the same with 100,000 users as with ten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::PublicKey;

use crate::error::{GridError, GridResult};
use crate::names::check_user_name;

#[derive(Clone)]
pub struct Users {
    index: Arc<ndb::Indexed>,
    changes: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

/// The index a users file is read through; one per file per process (see
/// [`crate::state::StateDir`]).
pub fn index(path: impl Into<PathBuf>) -> ndb::Indexed {
    ndb::Indexed::new(path, &["user", "key"], &["deleted"])
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

fn number(e: &ndb::Entry, attr: &str) -> Option<u64> {
    e.get(attr).and_then(|v| v.parse().ok())
}

/// Each user's latest tombstone.
fn tombstones(db: &ndb::Db) -> HashMap<String, u64> {
    let mut t: HashMap<String, u64> = HashMap::new();
    for e in db.entries() {
        if let (Some(u), Some(d)) = (e.get("user"), number(e, "deleted")) {
            let v = t.entry(u.to_string()).or_default();
            *v = (*v).max(d);
        }
    }
    t
}

/// Whether a key entry is still in force (no later tombstone of its user).
fn live(e: &ndb::Entry, dead: &HashMap<String, u64>) -> bool {
    let Some(u) = e.get("user") else {
        return false;
    };
    live_after(e, dead.get(u).copied())
}

/// Whether a key entry is in force given its user's latest tombstone.
fn live_after(e: &ndb::Entry, tombstone: Option<u64>) -> bool {
    e.get("key").is_some()
        && e.get("deleted").is_none()
        && tombstone.is_none_or(|d| number(e, "added").unwrap_or(0) > d)
}

/// `user`'s entries (keys and tombstones) and their latest tombstone.
fn entries_of(view: &ndb::View<'_>, user: &str) -> GridResult<(Vec<ndb::Entry>, Option<u64>)> {
    let entries: Vec<ndb::Entry> = view
        .search("user", user)?
        .into_iter()
        .filter(|e| e.get("user") == Some(user))
        .collect();
    let tombstone = entries.iter().filter_map(|e| number(e, "deleted")).max();
    Ok((entries, tombstone))
}

/// The user whose key in force `key` is, if any.
fn key_owner(view: &ndb::View<'_>, key: &str) -> GridResult<Option<String>> {
    for e in view.search("key", key)? {
        let Some(user) = e.get("user") else { continue };
        let (_, tombstone) = entries_of(view, user)?;
        if live_after(&e, tombstone) {
            return Ok(Some(user.to_string()));
        }
    }
    Ok(None)
}

/// Drops the entries a tombstone has ended, and tombstones a later one has.
fn compact(db: &mut ndb::Db) {
    let dead = tombstones(db);
    db.edit(
        |e| match (e.get("user"), number(e, "deleted")) {
            (Some(u), Some(d)) => dead.get(u).is_some_and(|&max| d < max),
            (Some(_), None) => e.get("key").is_some() && !live(e, &dead),
            _ => false,
        },
        |_| None,
    );
}

impl Users {
    /// The users in `path`, through an index of their own.
    pub fn new(path: impl Into<PathBuf>) -> Users {
        Users::through(Arc::new(index(path)))
    }

    /// The users in an index's file, through that (shared) index.
    pub fn through(index: Arc<ndb::Indexed>) -> Users {
        Users {
            index,
            changes: None,
        }
    }

    /// Bumps `changes` after every change, so replication wakes at once.
    pub fn notifying(mut self, changes: Arc<tokio::sync::watch::Sender<u64>>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn changed(&self) {
        if let Some(c) = &self.changes {
            c.send_modify(|n| *n += 1);
        }
    }

    pub fn path(&self) -> &Path {
        self.index.path()
    }

    /// Adds a user with a key, or another key to an existing user.
    pub fn add(&self, name: &str, key_line: &str) -> GridResult<()> {
        check_user_name(name)?;
        let key = normalize_key(key_line)?;
        self.index.append(|view| {
            if let Some(owner) = key_owner(view, &key)? {
                return Err(GridError::refused(format!(
                    "that key already belongs to {owner}"
                )));
            }
            let added = crate::names::now_nanos().to_string();
            Ok((
                vec![ndb::Entry::new(&[
                    ("user", name),
                    ("key", &key),
                    ("added", &added),
                ])],
                (),
            ))
        })?;
        self.changed();
        Ok(())
    }

    /// Ends the user: a tombstone that replicates, and that later keys
    /// outlive.
    pub fn remove(&self, name: &str) -> GridResult<()> {
        self.index.rewrite(|db| {
            let dead = tombstones(db);
            if !db
                .entries()
                .iter()
                .any(|e| e.get("user") == Some(name) && live(e, &dead))
            {
                return Err(GridError::refused(format!("no user {name}")));
            }
            let deleted = crate::names::now_nanos().to_string();
            db.append(ndb::Entry::new(&[("user", name), ("deleted", &deleted)]));
            compact(db);
            Ok(())
        })?;
        self.changed();
        Ok(())
    }

    /// (name, number of keys) for every user, in the order they were added.
    /// Cost: the whole file (an admin's listing).
    pub fn list(&self) -> GridResult<Vec<(String, usize)>> {
        let db = ndb::Db::open(self.path())?;
        let dead = tombstones(&db);
        let mut out: Vec<(String, usize)> = Vec::new();
        for e in db.entries().iter().filter(|e| live(e, &dead)) {
            let user = e.get("user").unwrap_or_default();
            let keys = e.all("key").count();
            match out.iter_mut().find(|(u, _)| u == user) {
                Some((_, n)) => *n += keys,
                None => out.push((user.to_string(), keys)),
            }
        }
        Ok(out)
    }

    pub fn exists(&self, name: &str) -> GridResult<bool> {
        let (entries, tombstone) = entries_of(&self.index.view()?, name)?;
        Ok(entries.iter().any(|e| live_after(e, tombstone)))
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
        key_owner(&self.index.view()?, &wanted)
    }

    /// The user's public keys as OpenSSH lines (`TYPE BASE64`).
    pub fn keys_of(&self, name: &str) -> GridResult<Vec<String>> {
        let (entries, tombstone) = entries_of(&self.index.view()?, name)?;
        Ok(entries
            .iter()
            .filter(|e| live_after(e, tombstone))
            .flat_map(|e| e.all("key").map(str::to_string).collect::<Vec<_>>())
            .collect())
    }

    /// The whole file, for replication.
    pub fn text(&self) -> GridResult<String> {
        match std::fs::read_to_string(self.path()) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(GridError::io(
                format!("reading {}", self.path().display()),
                e,
            )),
        }
    }

    /// Merges a peer's users file: the union of both, compacted. Returns
    /// how many entries were new here.
    pub fn merge(&self, text: &str) -> GridResult<usize> {
        let incoming = ndb::Db::parse("replicated users", text)
            .map_err(|e| GridError::refused(format!("replicated users: {e}")))?;
        for e in incoming.entries() {
            let user = e
                .get("user")
                .ok_or_else(|| GridError::refused("a replicated users entry has no user"))?;
            check_user_name(user)?;
            for key in e.all("key") {
                normalize_key(key)?;
            }
        }
        if let Some(added) = self.merge_by_appending(&incoming)? {
            if added > 0 {
                self.changed();
            }
            return Ok(added);
        }
        let added = self.index.rewrite(|db| {
            let mut added = 0;
            for e in incoming.entries() {
                let same = |x: &ndb::Entry| {
                    x.get("user") == e.get("user")
                        && x.get("added") == e.get("added")
                        && x.get("deleted") == e.get("deleted")
                        && x.all("key").eq(e.all("key"))
                };
                if !db.entries().iter().any(same) {
                    let pairs: Vec<(&str, &str)> = e
                        .pairs
                        .iter()
                        .filter(|p| matches!(p.attr.as_str(), "user" | "key" | "added" | "deleted"))
                        .map(|p| (p.attr.as_str(), p.value.as_str()))
                        .collect();
                    db.append(ndb::Entry::new(&pairs));
                    added += 1;
                }
            }
            if added > 0 {
                compact(db);
            }
            Ok::<_, GridError>(added)
        })?;
        if added > 0 {
            self.changed();
        }
        Ok(added)
    }

    /// [`Users::merge`] at the cost of what is new, when the peer's file
    /// brings no tombstone (nothing here needs compacting): the new key
    /// entries still in force are appended. None, having written nothing,
    /// if a tombstone came.
    fn merge_by_appending(&self, incoming: &ndb::Db) -> GridResult<Option<usize>> {
        if incoming
            .entries()
            .iter()
            .any(|e| e.get("deleted").is_some())
        {
            return Ok(None);
        }
        self.index.append(|view| {
            let mut new: Vec<ndb::Entry> = Vec::new();
            for e in incoming.entries() {
                let user = e.get("user").unwrap_or_default();
                let (here, tombstone) = entries_of(view, user)?;
                let same = |x: &ndb::Entry| {
                    x.get("added") == e.get("added") && x.all("key").eq(e.all("key"))
                };
                if here.iter().any(same)
                    || new.iter().any(|x| x.get("user") == Some(user) && same(x))
                    || !live_after(e, tombstone)
                {
                    continue;
                }
                let pairs: Vec<(&str, &str)> = e
                    .pairs
                    .iter()
                    .filter(|p| matches!(p.attr.as_str(), "user" | "key" | "added"))
                    .map(|p| (p.attr.as_str(), p.value.as_str()))
                    .collect();
                new.push(ndb::Entry::new(&pairs));
            }
            let added = new.len();
            Ok((new, Some(added)))
        })
    }
}
