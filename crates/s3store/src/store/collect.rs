//! Collecting a bucket's garbage: packs that are mostly dead are written
//! again without their dead blocks, and packs with nothing live are
//! deleted, while other writers go on writing and reading.
//!
//! Nothing in the bucket is locked or changed in place (no store here
//! offers a lock, and Garage ignores conditional writes), so the rules
//! are about age, by the bucket's own clock:
//!
//! * **Only old packs are looked at**: those whose index went in more
//!   than twice the grace period ago ([`Candidates`], fixed before the
//!   marking starts). Every other writer's fresh packs and indexes are
//!   never touched, nor read.
//! * **A block written again is stored again** when its pack is older
//!   than the grace period (`Held::Old` in the store), by every writer:
//!   so an archive not yet named keeps its blocks for a grace period from
//!   its last write, though they sat in an old pack.
//! * **Copies first, deletes after**: a pack's live blocks go into new
//!   packs, which are sent (pack, then index) before the old index is
//!   deleted, then the old pack. A collection killed at any moment leaves
//!   duplicates, or a pack without an index, which the next collection
//!   deletes once it is old; never a live block without a copy.
//! * **Readers catch up**: a writer that finds a pack gone forgets it and
//!   lists the bucket again (where the copies are), and every listing
//!   forgets the packs whose index is gone.
//!
//! The live set is the caller's (a storage node marks it from its names,
//! environments and jobs). Since every process on the bucket reads the
//! others' packs but only a node's own names say what is live, a
//! collection refuses while another node uses the bucket ([`users`]).
//!
//! [`users`]: PackStore::users

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use venti::{BlockStore, Score, StoreError};

use super::{Inner, PackStore, pack_of, remote};
use crate::pack;

/// A pack is written again without its dead blocks when at least this
/// share of its bytes is dead; below it, it is kept as it is (a copy
/// costs its live bytes, and dead bytes a rewrite would not free).
pub const REWRITE_WHEN_DEAD: f64 = 0.5;

/// Old packs dealt with between two syncs of their copies (and the
/// deletes that wait on them).
const PACKS_PER_SYNC: usize = 8;

/// The packs a collection may take, fixed before it marks.
pub struct Candidates {
    /// Packs (by the store's numbering) whose index went in more than
    /// twice the grace period ago.
    packs: Vec<u32>,
    /// Packs without an index that are as old: left by a writer or a
    /// collection killed between a pack's two objects.
    orphans: Vec<String>,
    /// Packs younger than that, left alone.
    pub young: u64,
}

impl Candidates {
    pub fn old(&self) -> usize {
        self.packs.len()
    }
}

/// What a collection did to the bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Packs old enough to look at, and those left alone.
    pub packs_old: u64,
    pub packs_young: u64,
    /// Old packs kept as they are (mostly live), written again without
    /// their dead blocks, deleted (nothing live), or left because a live
    /// block in them failed its check.
    pub packs_kept: u64,
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    pub packs_damaged: u64,
    /// Packs without an index deleted.
    pub orphans_deleted: u64,
    pub blocks_copied: u64,
    pub bytes_copied: u64,
    pub blocks_dropped: u64,
    /// The old packs' bytes, and what of them is in the bucket after
    /// (packs kept, and the copies).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        writeln!(
            f,
            "looked at {} packs older than twice the grace period ({} younger left alone): {} kept, {} written again without their dead blocks, {} deleted{}",
            self.packs_old,
            self.packs_young,
            self.packs_kept,
            self.packs_rewritten,
            self.packs_deleted,
            if self.packs_damaged > 0 {
                format!(
                    ", {} left because a live block in them is damaged",
                    self.packs_damaged
                )
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "{} blocks dropped, {} live blocks ({:.1} MB) copied to new packs; {} packs without an index deleted",
            self.blocks_dropped,
            self.blocks_copied,
            mb(self.bytes_copied),
            self.orphans_deleted
        )?;
        writeln!(
            f,
            "the old packs' bytes: {:.1} MB before, {:.1} MB after ({:.1} MB given back)",
            mb(self.bytes_before),
            mb(self.bytes_after),
            mb(self.bytes_before.saturating_sub(self.bytes_after))
        )
    }
}

impl PackStore {
    /// Sets the grace period: a block written again whose pack is older
    /// is stored again, and a collection looks only at packs older than
    /// twice it (as venti's log store does with its records).
    pub fn set_grace(&self, grace: Duration) {
        self.inner
            .grace_secs
            .store(grace.as_secs().max(1), Ordering::Relaxed);
    }

    /// Blocks the index knows (what sizes a collection's filter).
    pub fn block_count(&self) -> u64 {
        self.inner.state().index.len() as u64
    }

    /// Says that `user` (a storage node's own id) collects garbage in
    /// this bucket, with `about` for people (its name, host and state
    /// directory).
    pub fn register_user(&self, user: &str, about: &str) -> Result<(), StoreError> {
        let key = self.inner.key(&format!("users/{}", safe_name(user)));
        let s3 = self.inner.s3.clone();
        let body = Bytes::from(format!("{about}\n"));
        self.inner.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.inner
            .wait(async move { s3.put(&key, PutPayload::from(body)).await })?
            .map_err(|e| remote(format!("registering {user} in {}", self.inner.name), e))?;
        Ok(())
    }

    /// The storage nodes registered on the bucket: (their id, what they
    /// said of themselves, its key in the bucket).
    pub fn users(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut out = Vec::new();
        for (key, _) in self.inner.list("users")? {
            let Some(user) = key.rsplit('/').next().map(str::to_string) else {
                continue;
            };
            let about = self.inner.get_object(&key)?;
            out.push((
                user,
                String::from_utf8_lossy(&about).trim().to_string(),
                key,
            ));
        }
        Ok(out)
    }

    /// The packs a collection starting now may take: every index is
    /// listed (and merged), and each pack's age taken by the bucket's
    /// clock, read off an object written for it.
    pub fn collection_candidates(&self) -> Result<Candidates, StoreError> {
        let inner = &self.inner;
        let now = inner.bucket_now()?;
        inner.refresh()?;
        let grace = Duration::from_secs(inner.grace_secs.load(Ordering::Relaxed));
        let old_enough = |at: SystemTime| now.duration_since(at).is_ok_and(|age| age >= 2 * grace);
        let (packs, young, indexed) = {
            let state = inner.state();
            let mut packs = Vec::new();
            let mut young = 0;
            let mut indexed = HashSet::new();
            for (p, pack) in state.packs.iter().enumerate() {
                if pack.gone {
                    continue;
                }
                indexed.insert(pack.key.clone());
                match pack.written {
                    Some(at) if old_enough(at) => packs.push(p as u32),
                    _ => young += 1,
                }
            }
            (packs, young, indexed)
        };
        let orphans = inner
            .list("packs")?
            .into_iter()
            .filter(|(key, at)| key.ends_with(".pack") && !indexed.contains(key) && old_enough(*at))
            .map(|(key, _)| key)
            .collect();
        Ok(Candidates {
            packs,
            orphans,
            young,
        })
    }

    /// Collects the candidates: `live` says which blocks must stay (it
    /// may say yes of a dead one, never no of a live one); `progress` is
    /// told the packs done and their number.
    pub fn sweep(
        &self,
        candidates: &Candidates,
        live: &dyn Fn(&Score) -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Swept, StoreError> {
        let inner = &self.inner;
        let mut swept = Swept {
            packs_old: candidates.packs.len() as u64,
            packs_young: candidates.young,
            ..Swept::default()
        };
        let mut to_delete: Vec<u32> = Vec::new();
        for (done, &p) in candidates.packs.iter().enumerate() {
            progress(done as u64, candidates.packs.len() as u64);
            let (pack_key, index_key, len, gone) = {
                let state = inner.state();
                let pack = &state.packs[p as usize];
                (
                    pack.key.clone(),
                    pack.index_key.clone(),
                    pack.len,
                    pack.gone,
                )
            };
            if gone {
                continue;
            }
            let entries = inner.entries_of(&index_key, &pack_key)?;
            // Live here: live, and this is the copy the index reads (a
            // duplicate elsewhere is the one kept).
            let keep: Vec<pack::Entry> = {
                let state = inner.state();
                entries
                    .iter()
                    .filter(|e| {
                        live(&e.score) && state.index.get(&e.score).is_some_and(|l| l.pack == p)
                    })
                    .copied()
                    .collect()
            };
            let live_bytes: u64 = keep.iter().map(|e| e.len as u64).sum();
            swept.bytes_before += len;
            if keep.is_empty() {
                swept.packs_deleted += 1;
                swept.blocks_dropped += entries.len() as u64;
                to_delete.push(p);
            } else if (len.saturating_sub(live_bytes)) as f64 >= REWRITE_WHEN_DEAD * len as f64 {
                let Some(bytes) = inner.get_if_there(&pack_key)? else {
                    // Gone already (another look at the bucket will tell).
                    continue;
                };
                let blocks: Option<Vec<(pack::Entry, &[u8])>> = keep
                    .iter()
                    .map(|e| {
                        let data = bytes
                            .get(e.offset as usize..(e.offset as u64 + e.len as u64) as usize)?;
                        (Score::of(data) == e.score).then_some((*e, data))
                    })
                    .collect();
                let Some(blocks) = blocks else {
                    tracing::warn!(pack = %pack_key, "a live block in an old pack fails its score check; the pack is left as it is");
                    swept.packs_damaged += 1;
                    swept.bytes_after += len;
                    continue;
                };
                for (e, data) in blocks {
                    let state = inner.state();
                    // Stored again meanwhile (a write of it): that copy
                    // stands.
                    if state.unsent_blocks.contains_key(&e.score)
                        || state.index.get(&e.score).is_none_or(|l| l.pack != p)
                    {
                        continue;
                    }
                    inner.store_new(state, e.score, e.ty, data)?;
                    swept.blocks_copied += 1;
                    swept.bytes_copied += data.len() as u64;
                    swept.bytes_after += (data.len() + pack::RECORD_HEADER) as u64;
                }
                swept.packs_rewritten += 1;
                swept.blocks_dropped += (entries.len() - keep.len()) as u64;
                to_delete.push(p);
            } else {
                swept.packs_kept += 1;
                swept.bytes_after += len;
            }
            if to_delete.len() >= PACKS_PER_SYNC {
                self.delete_after_copies(&mut to_delete)?;
            }
        }
        self.delete_after_copies(&mut to_delete)?;
        for key in &candidates.orphans {
            // Its index may have come since the listing: then it stays.
            let index_key = index_of(key);
            if index_key.is_some_and(|k| !inner.exists(&k).unwrap_or(true)) {
                inner.delete(key)?;
                swept.orphans_deleted += 1;
            }
        }
        progress(candidates.packs.len() as u64, candidates.packs.len() as u64);
        Ok(swept)
    }

    /// Sends every copy made so far (with whatever else was written),
    /// then deletes packs `to_delete`: the local copy of the index, the
    /// index, the pack (an index never names a pack that is not there),
    /// and forgets them.
    fn delete_after_copies(&self, to_delete: &mut Vec<u32>) -> Result<(), StoreError> {
        if to_delete.is_empty() {
            return Ok(());
        }
        self.sync()?;
        let inner = &self.inner;
        for &p in to_delete.iter() {
            let (pack_key, index_key) = {
                let state = inner.state();
                let pack = &state.packs[p as usize];
                (pack.key.clone(), pack.index_key.clone())
            };
            let _ = std::fs::remove_file(inner.local_copy(&index_key));
            inner.delete(&index_key)?;
            inner.delete(&pack_key)?;
        }
        inner.forget_packs(&mut inner.state(), to_delete);
        to_delete.clear();
        Ok(())
    }
}

impl Inner {
    /// The bucket's clock now: when an object written now went in.
    fn bucket_now(&self) -> Result<SystemTime, StoreError> {
        let key = self.key(&format!("clock/{}", self.writer));
        let s3 = self.s3.clone();
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let at = self
            .wait(async move {
                s3.put(&key, PutPayload::from_static(b"now\n")).await?;
                let meta = s3.head(&key).await;
                let _ = s3.delete(&key).await;
                meta
            })?
            .map_err(|e| remote(format!("reading the clock of {}", self.name), e))?;
        Ok(at.last_modified.into())
    }

    /// One pack's entries: from the local copy of its index, else the
    /// bucket's.
    fn entries_of(&self, index_key: &str, pack_key: &str) -> Result<Vec<pack::Entry>, StoreError> {
        if let Ok(bytes) = std::fs::read(self.local_copy(index_key))
            && let Ok(entries) = pack::parse_index(&bytes)
        {
            return Ok(entries);
        }
        match self.get_if_there(index_key)? {
            Some(bytes) => match pack::parse_index(&bytes) {
                Ok(entries) => Ok(entries),
                Err(_) => match self.get_if_there(pack_key)? {
                    Some(pack) => Ok(pack::scan_pack(&pack).0),
                    None => Ok(Vec::new()),
                },
            },
            None => Ok(Vec::new()),
        }
    }

    /// A whole object, or `None` if it is not in the bucket.
    fn get_if_there(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get_object(key) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(_) if !self.exists(key)? => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let s3 = self.s3.clone();
        let path = Key::from(key);
        self.wait(async move { s3.delete(&path).await })?
            .map_err(|e| remote(format!("deleting {key} in {}", self.name), e))
    }
}

/// `PREFIX/packs/W/N.pack` → `PREFIX/index/W/N.idx`.
fn index_of(pack_key: &str) -> Option<String> {
    let (head, tail) = pack_key.rsplit_once("packs/")?;
    let tail = tail.strip_suffix(".pack")?;
    let index = format!("{head}index/{tail}.idx");
    (pack_of(&index).as_deref() == Some(pack_key)).then_some(index)
}

/// A user id as one path segment.
fn safe_name(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_key_names_its_index() {
        assert_eq!(
            index_of("grid/packs/w1/00000003.pack").as_deref(),
            Some("grid/index/w1/00000003.idx")
        );
        assert_eq!(index_of("grid/packs/w1/x.txt"), None);
        assert_eq!(safe_name("a/b c"), "a_b_c");
    }
}
