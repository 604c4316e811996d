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
//!   never changed or deleted.
//! * **A block written again is stored again** when its pack is older
//!   than half the grace period (`Held::Old` in the store), by every
//!   writer: so an archive not yet named keeps its blocks for a grace
//!   period from its last write, though they sat in an old pack. The
//!   collecting node publishes its grace period in the bucket
//!   (`PREFIX/gc-grace`); a writer keeps to the shorter of it and its own.
//! * **Copies first, deletes after**: a pack's live blocks go into new
//!   packs, which are sent (pack, then index) before the old index is
//!   deleted, then the old pack. A collection killed at any moment leaves
//!   duplicates, or a pack without an index, which the next collection
//!   deletes once it is old; never a live block without a copy.
//! * **A block leaves a pack only for a safe place**: a live block is
//!   dropped from an old pack only when a pack outside this sweep, in the
//!   bucket's listing, holds it too; else it is copied.
//! * **Readers catch up**: a process that finds a pack gone forgets it
//!   and lists the bucket again (where the copies are); every listing
//!   forgets the packs whose index is gone, and one that meets an index
//!   deleted after it was listed lists again.
//!
//! The live set is the caller's (a storage node marks it from its names,
//! environments and jobs). Since every process on the bucket reads the
//! others' packs but only a node's own names say what is live, a
//! collection refuses while another node is registered on the bucket
//! ([`PackStore::register_collector`]), and looks again before each batch
//! of deletes.

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
    /// The bucket's clock when they were listed.
    now: SystemTime,
    /// Twice the grace period: how old a pack must be.
    old_after: Duration,
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
        // Whole seconds, rounded up: never shorter than asked.
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        self.inner.grace_secs.store(secs.max(1), Ordering::Relaxed);
    }

    /// Blocks the index knows (what sizes a collection's filter).
    pub fn block_count(&self) -> u64 {
        self.inner.state().index.len() as u64
    }

    /// Says that `user` (a storage node's own id) collects garbage in
    /// this bucket, with `about` for people (its name, host and state
    /// directory), and publishes its grace period for every writer.
    pub fn register_collector(&self, user: &str, about: &str) -> Result<(), StoreError> {
        let grace = self.inner.grace_secs.load(Ordering::Relaxed);
        // Lowered from what writers keep to now: their claims under the
        // longer period stand until it has passed (and they have read the
        // new one), so collections keep to the longer one until then.
        let before = self.inner.bucket_grace_secs.load(Ordering::Relaxed);
        if before != u64::MAX && before > grace {
            let until =
                std::time::Instant::now() + Duration::from_secs(before) + super::GRACE_READ_EVERY;
            *self.inner.lowered.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Duration::from_secs(before), until));
        }
        for (key, body) in [
            (format!("users/{}", safe_name(user)), format!("{about}\n")),
            (super::GRACE_OBJECT.to_string(), format!("{grace}\n")),
        ] {
            let key = self.inner.key(&key);
            let s3 = self.inner.s3.clone();
            self.inner.counters.puts.fetch_add(1, Ordering::Relaxed);
            self.inner
                .wait(async move { s3.put(&key, PutPayload::from(Bytes::from(body))).await })?
                .map_err(|e| remote(format!("registering {user} in {}", self.inner.name), e))?;
        }
        Ok(())
    }

    /// Another storage node registered on the bucket than `me`: why a
    /// collection must not run (its names are not seen here).
    pub fn another_collector(&self, me: &str) -> Result<Option<String>, StoreError> {
        let me = safe_name(me);
        for (key, _) in self.inner.list("users")? {
            let Some(user) = key.rsplit('/').next() else {
                continue;
            };
            if user == me {
                continue;
            }
            // Anyone who can write the bucket wrote it: shown as plain
            // text, and not much of it.
            let about = self.inner.get_if_there(&key)?.unwrap_or_default();
            let plain = |t: &str| -> String {
                t.chars()
                    .take(200)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            };
            return Ok(Some(format!(
                "storage node {} ({}) uses this bucket too, and its names are not seen here: nothing was collected (if it is gone for good, delete {} from the bucket)",
                plain(user),
                plain(String::from_utf8_lossy(&about).trim()),
                plain(&key)
            )));
        }
        Ok(None)
    }

    /// The packs a collection starting now may take: every index is
    /// listed (and merged), and each pack's age taken by the bucket's
    /// clock, read off an object written for it.
    pub fn collection_candidates(&self) -> Result<Candidates, StoreError> {
        let inner = &self.inner;
        let now = inner.bucket_now()?;
        inner.refresh()?;
        let mut grace = Duration::from_secs(inner.grace_secs.load(Ordering::Relaxed));
        if let Some((longer, until)) = *inner.lowered.lock().unwrap_or_else(|p| p.into_inner())
            && std::time::Instant::now() < until
        {
            grace = grace.max(longer);
        }
        let old_after = grace.saturating_mul(2);
        let old_enough = |at: SystemTime| now.duration_since(at).is_ok_and(|age| age >= old_after);
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
            now,
            old_after,
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
        me: &str,
        live: &dyn Fn(&Score) -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Swept, StoreError> {
        let inner = &self.inner;
        let mut swept = Swept {
            packs_young: candidates.young,
            ..Swept::default()
        };
        let mut to_delete: Vec<u32> = Vec::new();
        // A block this pack holds is safe elsewhere only in a pack that is
        // in the bucket's listing and not one of this sweep's (which may
        // yet be found damaged, or be gone): else this copy is kept.
        let candidate: HashSet<u32> = candidates.packs.iter().copied().collect();
        let elsewhere = |state: &super::State, score: &Score, p: u32| {
            state.index.get(score).is_some_and(|l| {
                let q = &state.packs[l.pack as usize];
                l.pack != p && !candidate.contains(&l.pack) && !q.gone && q.written.is_some()
            })
        };
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
            swept.packs_old += 1;
            swept.bytes_before += len;
            let Some(entries) = inner.entries_of(&index_key)? else {
                // Its index is nowhere to be read: what it holds is unknown,
                // so it stays.
                swept.packs_kept += 1;
                swept.bytes_after += len;
                continue;
            };
            // Live here: live, and not safe elsewhere.
            let keep: Vec<pack::Entry> = {
                let state = inner.state();
                entries
                    .iter()
                    .filter(|e| live(&e.score) && !elsewhere(&state, &e.score, p))
                    .copied()
                    .collect()
            };
            // With their headers: a pack of tiny live blocks is not dead.
            let live_bytes: u64 = keep
                .iter()
                .map(|e| (e.len as usize + pack::RECORD_HEADER) as u64)
                .sum();
            if keep.is_empty() {
                swept.packs_deleted += 1;
                swept.blocks_dropped += entries.len() as u64;
                to_delete.push(p);
            } else if len.saturating_sub(live_bytes) as f64 >= REWRITE_WHEN_DEAD * len as f64 {
                let Some(bytes) = inner.get_if_there(&pack_key)? else {
                    // Gone already: another collection's (a listing will
                    // tell).
                    swept.packs_kept += 1;
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
                    // Stored again meanwhile (a write of it or another old
                    // pack's copy, unsent still or sent): that copy stands.
                    if state.unsent_blocks.contains_key(&e.score) || elsewhere(&state, &e.score, p)
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
                self.delete_after_copies(me, &mut to_delete)?;
            }
        }
        self.delete_after_copies(me, &mut to_delete)?;
        for key in &candidates.orphans {
            // Its index may have come since the listing, or a writer sent
            // it again: then it stays.
            let Some(index_key) = index_of(key) else {
                continue;
            };
            if inner.exists(&index_key).unwrap_or(true) {
                continue;
            }
            let Some(at) = inner.written_at(key)? else {
                continue;
            };
            if candidates
                .now
                .duration_since(at)
                .is_ok_and(|age| age >= candidates.old_after)
            {
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
    fn delete_after_copies(&self, me: &str, to_delete: &mut Vec<u32>) -> Result<(), StoreError> {
        if to_delete.is_empty() {
            return Ok(());
        }
        self.sync()?;
        // A node that came to the bucket since the collection began: what
        // its names stand on was not marked.
        if let Some(why) = self.another_collector(me)? {
            return Err(StoreError::Collection(why));
        }
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
    /// bucket's; `None` if neither can be read.
    fn entries_of(&self, index_key: &str) -> Result<Option<Vec<pack::Entry>>, StoreError> {
        if let Ok(bytes) = std::fs::read(self.local_copy(index_key))
            && let Ok(entries) = pack::parse_index(&bytes)
        {
            return Ok(Some(entries));
        }
        Ok(self
            .get_if_there(index_key)?
            .and_then(|bytes| pack::parse_index(&bytes).ok()))
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
