//! Save: archive the live file system as a new vac root (fossil's `snap -a`).
//!
//! Only what changed is written. A directory that was never loaded, or whose
//! names and children are unchanged, keeps its archived streams; an unchanged
//! file keeps its stream; a changed file writes only its changed leaves (the
//! others keep their scores) and new pointer blocks. The whole save runs under
//! the file-system lock, so it is one consistent point: no write is half in it.
//! Afterwards the changed blocks are archived, so they are released from the
//! change cache and may be evicted like any fetched block.

use std::collections::HashMap;

use vac::dirent::DirEntry;
use vac::entry::Entry;
use vac::reader::Dir;
use vac::stream::{StreamReader, StreamWriter, write_bytes};
use vac::tree::{write_dir_stream, write_meta_stream, write_root};
use vac::unix::{Kind, Meta};
use venti::Score;

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, Content, FileKind, Fs, ROOT_INO, State};

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    pub score: Score,
    /// Files whose data was rewritten.
    pub files_written: u64,
    /// Directories whose streams were rewritten.
    pub dirs_written: u64,
    /// Changed blocks released from the cache.
    pub blocks_released: u64,
}

/// Work done during one save, applied to the inodes only at the end, so every
/// name of a hard-linked file sees the same before-and-after.
#[derive(Default)]
struct Pass {
    /// New streams of files and specials, by inode.
    streams: HashMap<u64, Entry>,
    /// New (source, msource) of directories, by inode.
    dirs: HashMap<u64, Dir>,
    /// Inodes whose archived form changed (their parents must be rewritten).
    changed: std::collections::HashSet<u64>,
}

/// A directory part-way through a save.
struct DirFrame {
    ino: u64,
    base: Option<Dir>,
    /// Its streams must be written anew.
    rewrite: bool,
    source: Vec<Entry>,
    dirents: Vec<DirEntry>,
    children: Vec<(String, u64)>,
    /// The next child to save.
    next: usize,
    /// The entry of the child directory being saved above this frame.
    waiting: Option<DirEntry>,
}

impl DirFrame {
    /// Records the saved child directory at `next` and moves past it.
    fn add_dir_child(&mut self, mut d: DirEntry, source: Entry, msource: Entry, changed: bool) {
        if changed {
            self.rewrite = true;
        }
        d.mentry = d.entry + 1;
        self.source.push(source);
        self.source.push(msource);
        self.dirents.push(d);
        self.next += 1;
    }
}

enum DirVisit {
    Unchanged(Entry, Entry),
    Open(Box<DirFrame>),
}

impl Fs {
    /// Archives the file system and returns the new root score. Saving an
    /// unchanged file system returns the same score and writes nothing.
    pub fn save(&self) -> FsResult<SaveReport> {
        let mut st = self.lock();
        let mut pass = Pass::default();
        let (d, m, root_changed) = self.save_dir(&mut st, ROOT_INO, &mut pass)?;
        let root = st.inode(ROOT_INO)?;
        let mut report = SaveReport {
            score: st.root_score,
            files_written: 0,
            dirs_written: pass.dirs.len() as u64,
            blocks_released: 0,
        };
        if !root_changed && !root.changed {
            return Ok(report);
        }
        let mut root_dirent = dirent_for(&root.attr, "/");
        root_dirent.qid_space = Some((0, st.next_qid));
        let score = write_root(
            self.store.as_ref(),
            self.sizes,
            root_dirent,
            d,
            m,
            Some(st.root_score),
        )?;

        // The archive is durable (write_root synced): now make it the base.
        report.files_written = pass.streams.len() as u64;
        for (ino, entry) in pass.streams {
            let State { inodes, dirty, .. } = &mut *st;
            let Some(inode) = inodes.get_mut(&ino) else {
                continue;
            };
            match &mut inode.content {
                Content::File {
                    base,
                    base_len,
                    blocks,
                } => {
                    *base = Some(entry);
                    *base_len = entry.size;
                    for (_, id) in std::mem::take(blocks) {
                        dirty.release(id);
                        report.blocks_released += 1;
                    }
                }
                Content::Symlink { base, .. } | Content::Special { base } => *base = Some(entry),
                Content::Dir { .. } => {}
            }
        }
        for (ino, dir) in pass.dirs {
            if let Some(inode) = st.inodes.get_mut(&ino)
                && let Content::Dir {
                    base,
                    membership_changed,
                    ..
                } = &mut inode.content
            {
                *base = Some(dir);
                *membership_changed = false;
            }
        }
        for inode in st.inodes.values_mut() {
            inode.changed = false;
        }
        st.root_score = score;
        report.score = score;
        drop(st);
        self.store.make_room();
        Ok(report)
    }

    /// Saves the directory `top` and everything below it; returns its
    /// streams and whether they are new.
    ///
    /// Iterative, with an explicit stack of the directories being saved, so
    /// no depth of nesting a tenant can make runs the node out of stack.
    fn save_dir(
        &self,
        st: &mut State,
        top: u64,
        pass: &mut Pass,
    ) -> FsResult<(Entry, Entry, bool)> {
        let mut stack = match self.open_dir_frame(st, top)? {
            DirVisit::Unchanged(s, m) => return Ok((s, m, false)),
            DirVisit::Open(frame) => vec![frame],
        };
        loop {
            let frame = stack.last_mut().expect("a directory is being saved");
            let Some((name, child)) = frame.children.get(frame.next).cloned() else {
                // Every child done: this directory's streams.
                let frame = stack.pop().expect("a directory is being saved");
                let result = self.finish_dir_frame(frame, pass)?;
                let Some(parent) = stack.last_mut() else {
                    return Ok(result);
                };
                let (s, m, new) = result;
                let d = parent.waiting.take().expect("a parent waits for its child");
                let child = parent.children[parent.next].1;
                let changed = new || st.inode(child)?.changed;
                parent.add_dir_child(d, s, m, changed);
                continue;
            };
            let attr = st.inode(child)?.attr.clone();
            let mut d = dirent_for(&attr, &name);
            d.entry = frame.source.len() as u32;
            if attr.kind == FileKind::Dir {
                match self.open_dir_frame(st, child)? {
                    DirVisit::Unchanged(s, m) => {
                        let changed = st.inode(child)?.changed;
                        let frame = stack.last_mut().expect("a directory is being saved");
                        frame.add_dir_child(d, s, m, changed);
                    }
                    DirVisit::Open(sub) => {
                        stack
                            .last_mut()
                            .expect("a directory is being saved")
                            .waiting = Some(d);
                        stack.push(sub);
                    }
                }
                continue;
            }
            let leaf = self.save_leaf(st, child, pass)?;
            let frame = stack.last_mut().expect("a directory is being saved");
            frame.next += 1;
            let Some(entry) = leaf else {
                tracing::warn!(name = %name, "sockets cannot be archived; left out of the save");
                frame.rewrite = true;
                continue;
            };
            if pass.changed.contains(&child) || st.inode(child)?.changed {
                frame.rewrite = true;
            }
            frame.source.push(entry);
            frame.dirents.push(d);
        }
    }

    /// Starts saving directory `ino`: its archived streams if it was never
    /// loaded (nothing below it can have changed), else a frame to fill.
    fn open_dir_frame(&self, st: &State, ino: u64) -> FsResult<DirVisit> {
        let (base, children, membership_changed) = match &st.inode(ino)?.content {
            Content::Dir {
                base,
                children,
                membership_changed,
                ..
            } => (*base, children, *membership_changed),
            _ => return Err(FsError::not_dir()),
        };
        let Some(children) = children else {
            let base =
                base.ok_or_else(|| FsError::io("an unloaded directory has no archived form"))?;
            return Ok(DirVisit::Unchanged(base.source, base.msource));
        };
        Ok(DirVisit::Open(Box::new(DirFrame {
            ino,
            base,
            rewrite: membership_changed || base.is_none(),
            source: Vec::with_capacity(children.len()),
            dirents: Vec::with_capacity(children.len()),
            children: children.iter().map(|(n, c)| (n.clone(), *c)).collect(),
            next: 0,
            waiting: None,
        })))
    }

    /// Writes a finished directory's streams if anything in it changed.
    fn finish_dir_frame(
        &self,
        frame: Box<DirFrame>,
        pass: &mut Pass,
    ) -> FsResult<(Entry, Entry, bool)> {
        if !frame.rewrite
            && let Some(base) = frame.base
        {
            return Ok((base.source, base.msource, false));
        }
        let s = write_dir_stream(self.store.as_ref(), self.sizes, &frame.source)?;
        let m = write_meta_stream(self.store.as_ref(), self.sizes, &frame.dirents)?;
        pass.dirs.insert(
            frame.ino,
            Dir {
                source: s,
                msource: m,
            },
        );
        Ok((s, m, true))
    }

    /// The stream of a file, symlink or special, written if it changed.
    fn save_leaf(&self, st: &State, ino: u64, pass: &mut Pass) -> FsResult<Option<Entry>> {
        if let Some(entry) = pass.streams.get(&ino) {
            return Ok(Some(*entry));
        }
        let inode = st.inode(ino)?;
        let (p, d) = (self.sizes.psize, self.sizes.dsize);
        let entry = match &inode.content {
            Content::File {
                base,
                base_len,
                blocks,
            } => {
                if !inode.changed
                    && blocks.is_empty()
                    && base.is_some_and(|b| b.size == inode.attr.size)
                {
                    return Ok(*base);
                }
                self.write_file(st, inode.attr.size, *base, *base_len, blocks)?
            }
            Content::Symlink { target, base } => match (target, base) {
                (Some(t), base) if inode.changed || base.is_none() => {
                    write_bytes(self.store.as_ref(), t, p, d)?
                }
                (_, Some(base)) => return Ok(Some(*base)),
                (None, None) => write_bytes(self.store.as_ref(), b"", p, d)?,
                (Some(t), None) => write_bytes(self.store.as_ref(), t, p, d)?,
            },
            Content::Special { base } => {
                if inode.attr.kind == FileKind::Socket {
                    return Ok(None);
                }
                match base {
                    Some(base) if !inode.changed => return Ok(Some(*base)),
                    _ => write_bytes(
                        self.store.as_ref(),
                        &meta_for(&inode.attr).special_data(),
                        p,
                        d,
                    )?,
                }
            }
            Content::Dir { .. } => return Err(FsError::is_dir()),
        };
        pass.streams.insert(ino, entry);
        pass.changed.insert(ino);
        Ok(Some(entry))
    }

    /// A file's new stream: changed leaves are written, the rest keep their scores.
    fn write_file(
        &self,
        st: &State,
        size: u64,
        base: Option<Entry>,
        base_len: u64,
        blocks: &std::collections::BTreeMap<u64, u32>,
    ) -> FsResult<Entry> {
        let bs = self.sizes.dsize as u64;
        let store = self.store.as_ref();
        let mut w = StreamWriter::new(store, false, self.sizes.psize, self.sizes.dsize);
        let mut reader = match base {
            Some(entry) => Some(StreamReader::new(store, entry)?),
            None => None,
        };
        // Archived leaves are reused by score only when they are leaves of our
        // size; another block size (an archive made with vac -b) is re-cut.
        let same_leaves = base.is_some_and(|b| b.dsize == self.sizes.dsize);
        let untouched_base = same_leaves && base.is_some_and(|b| b.size == base_len);
        let leaves = size.div_ceil(bs);
        let base_leaves = base_len.div_ceil(bs);
        let mut k = 0;
        while k < leaves {
            let leaf_len = (size - k * bs).min(bs) as usize;
            if let Some(&id) = blocks.get(&k) {
                let mut block = st.dirty.get(id)?;
                block.truncate(leaf_len);
                w.push_leaf(&block)?;
                k += 1;
                continue;
            }
            match reader.as_mut() {
                Some(r) if k < base_leaves => {
                    // The archived leaf is still exactly right if nothing cut it.
                    let whole = same_leaves
                        && ((k + 1) * bs <= base_len || (untouched_base && base_len == size));
                    if whole {
                        let score = r.leaf_score(k)?;
                        if score == Score::ZERO {
                            // A hole in the archived file: skip the whole
                            // zero run at once (up to the next stored leaf,
                            // changed block or partial leaf), so a re-save
                            // of a huge sparse file costs what is stored.
                            let stored = r.next_stored_leaf(k)?.unwrap_or(u64::MAX);
                            let changed = blocks.range(k..).next().map_or(u64::MAX, |(&n, _)| n);
                            let run_end = stored.min(changed).min(base_len / bs).min(leaves);
                            if run_end > k + 1 {
                                w.push_zero_leaves(run_end - k)?;
                                k = run_end;
                                continue;
                            }
                        }
                        w.push_leaf_score(score)?;
                    } else {
                        let want = ((base_len - k * bs) as usize).min(leaf_len);
                        let mut leaf = vec![0u8; want];
                        let got = r.read_at(k * bs, &mut leaf)?;
                        leaf.truncate(got);
                        w.push_leaf(&leaf)?;
                    }
                    k += 1;
                }
                _ => {
                    // A hole up to the next changed block (or the end): whole
                    // runs of zero leaves cost no loop per leaf.
                    let next = blocks
                        .range(k..)
                        .next()
                        .map_or(leaves, |(&n, _)| n)
                        .min(leaves);
                    let next = if k < base_leaves {
                        next.min(base_leaves)
                    } else {
                        next
                    };
                    w.push_zero_leaves(next - k)?;
                    k = next;
                }
            }
        }
        Ok(w.finish(size)?)
    }
}

fn meta_for(attr: &Attr) -> Meta {
    let major = vac::unix::dev_major(attr.rdev);
    let minor = vac::unix::dev_minor(attr.rdev);
    let kind = match attr.kind {
        FileKind::File | FileKind::Socket => Kind::File,
        FileKind::Dir => Kind::Dir,
        FileKind::Symlink => Kind::Symlink(Vec::new()),
        FileKind::CharDevice => Kind::CharDevice { major, minor },
        FileKind::BlockDevice => Kind::BlockDevice { major, minor },
        FileKind::Fifo => Kind::Fifo,
    };
    let mtime = attr
        .mtime
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Meta {
        kind,
        perm: attr.perm,
        uid: attr.uid,
        gid: attr.gid,
        mtime,
    }
}

fn dirent_for(attr: &Attr, name: &str) -> DirEntry {
    let mut d = DirEntry {
        elem: name.to_string(),
        qid: attr.qid,
        ..Default::default()
    };
    meta_for(attr).fill_dirent(&mut d);
    d
}
