//! An ndb file kept indexed in memory, so that a lookup or an appended
//! entry costs about the same with a million entries as with ten.
//!
//! [`Db`] holds a whole file parsed, and [`update`] rewrites the whole
//! file: right for small files, ruinous for a database that grows by an
//! entry per save. [`Indexed`] keeps only where each entry starts and, for
//! the attributes it was told to index, which entries hold each value (by a
//! keyed hash of the value) and which entries hold the attribute at all.
//! An entry is read from the file (one `pread`) when it is asked for, and
//! checked against the query, so a hash that two values share costs a read,
//! never a wrong answer. The memory is about 8 bytes per entry and 16 per
//! indexed pair, not the text.
//!
//! The file stays plain ndb that Plan 9's `ndb/query` reads: new entries are
//! appended whole, in one write that is synced before it is acknowledged;
//! every other change rewrites the file as [`update`] does, atomically.
//! Several processes may share the file: writers take turns under
//! [`update`]'s lock, and each reader notices a change by the file's
//! identity (device, inode, size, modification time) and reads only what
//! was appended, or all of it again after a rewrite. An open file is held,
//! so its inode number cannot be taken by a later file.
//!
//! A last line without a newline (a write cut short by a crash) is not read,
//! as libndb does not read it. An append first turns it into a comment, so
//! it can never join the appended line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{Db, Entry, Error, Line, classify, io_err, lock, write_atomically};

/// No entry: the end of a chain.
const NONE: u32 = u32::MAX;

/// What identifies the file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// Which entries hold each value of one attribute: per value hash, a chain
/// through `links` in file order.
#[derive(Default)]
struct ValueIndex {
    /// hash → (first link, last link).
    chains: HashMap<u64, (u32, u32)>,
    /// (entry, next link).
    links: Vec<(u32, u32)>,
}

impl ValueIndex {
    fn insert(&mut self, hash: u64, entry: u32) {
        let link = self.links.len() as u32;
        match self.chains.get_mut(&hash) {
            // The entry holds this value (or one of the same hash) twice.
            Some(&mut (_, last)) if self.links[last as usize].0 == entry => {}
            Some((_, last)) => {
                self.links[*last as usize].1 = link;
                *last = link;
                self.links.push((entry, NONE));
            }
            None => {
                self.chains.insert(hash, (link, link));
                self.links.push((entry, NONE));
            }
        }
    }

    fn entries(&self, hash: u64) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.chains.get(&hash).map_or(NONE, |&(first, _)| first);
        while at != NONE {
            let (entry, next) = self.links[at as usize];
            out.push(entry);
            at = next;
        }
        out
    }
}

/// Which entries hold an attribute at all.
#[derive(Default)]
struct Presence {
    bits: Vec<u64>,
}

impl Presence {
    fn set(&mut self, entry: u32) {
        let (word, bit) = (entry as usize / 64, entry % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }
}

/// The index of the file as last read.
#[derive(Default)]
struct State {
    file: Option<File>,
    identity: Option<Identity>,
    /// Bytes read: the end of the last complete line.
    read: u64,
    /// Lines read, to name a bad line by its number.
    lines: usize,
    /// The first byte of each entry.
    starts: Vec<u64>,
    /// Whether the last line read can be continued by the next one (it is
    /// part of an entry that a blank line has not ended).
    open: bool,
    /// The last bytes read, to check that an appended file still begins
    /// with what was read.
    last_bytes: Vec<u8>,
    values: Vec<ValueIndex>,
    presence: Vec<Presence>,
}

impl State {
    fn for_attrs(by_value: usize, by_presence: usize) -> State {
        State {
            values: (0..by_value).map(|_| ValueIndex::default()).collect(),
            presence: (0..by_presence).map(|_| Presence::default()).collect(),
            ..State::default()
        }
    }
}

/// An ndb file indexed on some attributes; see the module documentation.
pub struct Indexed {
    path: PathBuf,
    by_value: Vec<String>,
    by_presence: Vec<String>,
    /// Keyed per process: values are chosen by tenants, and must not be
    /// able to choose hashes that collide.
    hasher: std::collections::hash_map::RandomState,
    state: Mutex<State>,
}

/// How much of the end of the read text is kept to recognise an append.
const LAST_BYTES: u64 = 64;

/// A consistent view of the file, for reading entries.
pub struct View<'a> {
    index: &'a Indexed,
    state: MutexGuard<'a, State>,
}

impl Indexed {
    /// An index of `path` (a missing file is an empty database) on the
    /// values of `by_value` and the presence of `by_presence`. Nothing is
    /// read until the first use.
    pub fn new(path: impl Into<PathBuf>, by_value: &[&str], by_presence: &[&str]) -> Indexed {
        Indexed {
            path: path.into(),
            by_value: by_value.iter().map(|s| s.to_string()).collect(),
            by_presence: by_presence.iter().map(|s| s.to_string()).collect(),
            hasher: Default::default(),
            state: Mutex::new(State::for_attrs(by_value.len(), by_presence.len())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it is now, for reading.
    pub fn view(&self) -> Result<View<'_>, Error> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut state)?;
        Ok(View { index: self, state })
    }

    /// Holds the file's lock until the guard is dropped: no entry is
    /// added, changed or removed meanwhile (by this process or another);
    /// readers go on.
    pub fn hold(&self) -> Result<crate::Lock, Error> {
        lock(&self.path)
    }

    /// Reads the file under its lock: only what writers have finished
    /// (appends are synced before the lock is let go). For a reader that
    /// passes entries on and must never pass one a crash could take back
    /// (replication).
    pub fn read_synced<T, E: From<Error>>(
        &self,
        read: impl FnOnce(&View<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = lock(&self.path)?;
        let view = self.view()?;
        read(&view)
    }

    /// Under the file's lock, asks `change` for entries to add given the
    /// file as it is, and appends them in one synced write. Cost: the
    /// appended entries, not the file.
    pub fn append<T, E: From<Error>>(
        &self,
        change: impl FnOnce(&View<'_>) -> Result<(Vec<Entry>, T), E>,
    ) -> Result<T, E> {
        let _lock = lock(&self.path)?;
        let view = self.view()?;
        let (entries, out) = change(&view)?;
        if entries.is_empty() {
            return Ok(out);
        }
        let mut text = String::new();
        for e in &entries {
            text.push_str(&e.to_text().map_err(Error::from)?);
        }
        let len = view.state.identity.map_or(0, |i| i.len);
        // Only whole lines join whole lines, and only a file that ends its
        // last entry can take a new one without its pairs running on.
        let clean_end = view.state.read == len;
        drop(view);
        if !clean_end {
            return self.rewrite_locked(|db| {
                db.comment_out_tail("an unterminated last line, kept as a comment:");
                for e in entries {
                    db.append(e);
                }
                Ok(out)
            });
        }
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, e))?;
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_data()) {
            // Not acknowledged, so not kept: readers never see it again
            // (they read under the lock what is synced, or the whole line
            // is gone). If even this fails, the next append finds a file
            // that does not end where it was read and rewrites it whole.
            let _ = f.set_len(len).and_then(|()| f.sync_data());
            return Err(io_err(&self.path, e).into());
        }
        if len == 0 {
            // A new file: its directory entry must be durable too.
            sync_dir(&self.path)?;
        }
        Ok(out)
    }

    /// Rewrites the whole file as [`update`](crate::update) does (under the
    /// lock, atomically); the next view reads it again. Cost: the file.
    pub fn rewrite<T, E: From<Error>>(
        &self,
        change: impl FnOnce(&mut Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = lock(&self.path)?;
        self.rewrite_locked(change)
    }

    /// [`Indexed::rewrite`] for a caller that holds the lock.
    fn rewrite_locked<T, E: From<Error>>(
        &self,
        change: impl FnOnce(&mut Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut db = Db::open(&self.path)?;
        let out = change(&mut db)?;
        let text = db.checked_text().map_err(Error::from)?;
        write_atomically(&self.path, &text)?;
        Ok(out)
    }

    fn hash(&self, value: &str) -> u64 {
        self.hasher.hash_one(value)
    }

    /// Brings the index up to the file: nothing if it has not changed, the
    /// appended lines if it grew, all of it otherwise.
    fn refresh(&self, state: &mut State) -> Result<(), Error> {
        let now = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(Identity::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&self.path, e)),
        };
        if now == state.identity && (now.is_some() || state.file.is_none()) {
            return Ok(());
        }
        let Some(now) = now else {
            *state = self.empty();
            return Ok(());
        };
        let appended = state
            .identity
            .is_some_and(|was| was.dev == now.dev && was.ino == now.ino && now.len >= was.len);
        if appended && self.still_begins_with_what_was_read(state)? {
            // Re-stat through the open file: what is read is what it holds.
            let held = state
                .file
                .as_ref()
                .map(File::metadata)
                .transpose()
                .map_err(|e| io_err(&self.path, e))?
                .map(|meta| Identity::of(&meta));
            if let Some(held) = held.filter(|i| i.ino == now.ino)
                && self.read_or_forget(state, held.len)?
            {
                state.identity = Some(held);
                return Ok(());
            }
        }
        // Read it all again, from a freshly opened file.
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *state = self.empty();
                return Ok(());
            }
            Err(e) => return Err(io_err(&self.path, e)),
        };
        let identity = Identity::of(&file.metadata().map_err(|e| io_err(&self.path, e))?);
        *state = self.empty();
        state.file = Some(file);
        if !self.read_or_forget(state, identity.len)? {
            return Err(io_err(
                &self.path,
                io::Error::other("changed while it was read in whole"),
            ));
        }
        state.identity = Some(identity);
        Ok(())
    }

    fn empty(&self) -> State {
        State::for_attrs(self.by_value.len(), self.by_presence.len())
    }

    fn still_begins_with_what_was_read(&self, state: &State) -> Result<bool, Error> {
        let Some(file) = &state.file else {
            return Ok(false);
        };
        let mut now = vec![0; state.last_bytes.len()];
        let at = state.read - state.last_bytes.len() as u64;
        match file.read_exact_at(&mut now, at) {
            Ok(()) => Ok(now == state.last_bytes),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }

    /// [`Indexed::read_from`], forgetting everything read if it fails
    /// half way (a bad line), so the next look reads the file afresh
    /// rather than index some lines twice.
    fn read_or_forget(&self, state: &mut State, len: u64) -> Result<bool, Error> {
        let read = self.read_from(state, len);
        if read.is_err() {
            *state = self.empty();
        }
        read
    }

    /// Indexes the complete lines between `state.read` and `len`. False if
    /// they cannot be read as an append (text that is not there, or does
    /// not parse after what was read): the caller reads it all again.
    fn read_from(&self, state: &mut State, len: u64) -> Result<bool, Error> {
        let Some(file) = &state.file else {
            return Ok(false);
        };
        let Some(more) = len.checked_sub(state.read) else {
            return Ok(false); // It shrank: not an append.
        };
        let mut text = vec![0; more as usize];
        match file.read_exact_at(&mut text, state.read) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(io_err(&self.path, e)),
        }
        let Some(complete) = text.iter().rposition(|&b| b == b'\n').map(|i| i + 1) else {
            return Ok(true);
        };
        let base = state.read;
        let first_read = state.starts.is_empty() && base == 0;
        let mut at = 0;
        for (n, line) in text[..complete]
            .split_inclusive(|&b| b == b'\n')
            .enumerate()
        {
            let offset = base + at as u64;
            let number = state.lines + n + 1;
            at += line.len();
            let line = std::str::from_utf8(&line[..line.len() - 1]).map_err(|_| {
                io_err(
                    &self.path,
                    io::Error::new(io::ErrorKind::InvalidData, "a line is not UTF-8"),
                )
            })?;
            let bad = |why: String| {
                Error::Parse(crate::ParseError {
                    file: self.path.display().to_string(),
                    line: number,
                    why,
                })
            };
            let kind = classify(line).map_err(bad)?;
            let pairs = match kind {
                Line::Blank => {
                    state.open = false;
                    continue;
                }
                Line::Comment => continue,
                Line::Indented => continue,
                Line::Continuation(_) if !state.open && first_read => {
                    return Err(bad("continuation line with no entry to continue".into()));
                }
                // Not an append that parses: reading it all names the line.
                Line::Continuation(_) if !state.open => return Ok(false),
                // It continues the last entry, whether read now or before.
                Line::Continuation(pairs) => pairs,
                Line::Start(_) if state.starts.len() >= NONE as usize => {
                    return Err(bad(format!("more than {NONE} entries")));
                }
                Line::Start(pairs) => {
                    state.starts.push(offset);
                    state.open = true;
                    pairs
                }
            };
            let entry = (state.starts.len() - 1) as u32;
            for (attr, value) in &pairs {
                if let Some(i) = self.by_value.iter().position(|a| a == attr) {
                    if state.values[i].links.len() >= NONE as usize {
                        return Err(bad(format!("more than {NONE} {attr} values")));
                    }
                    let hash = self.hash(value);
                    state.values[i].insert(hash, entry);
                }
                if let Some(i) = self.by_presence.iter().position(|a| a == attr) {
                    state.presence[i].set(entry);
                }
            }
        }
        state.read = base + complete as u64;
        state.lines += text[..complete].iter().filter(|&&b| b == b'\n').count();
        let keep = LAST_BYTES.min(state.read) as usize;
        let mut last = vec![0; keep];
        file.read_exact_at(&mut last, state.read - keep as u64)
            .map_err(|e| io_err(&self.path, e))?;
        state.last_bytes = last;
        Ok(true)
    }
}

impl View<'_> {
    /// How many entries the file holds.
    pub fn len(&self) -> usize {
        self.state.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `id` (0 is the first in the file).
    pub fn entry(&self, id: usize) -> Result<Entry, Error> {
        let end = self
            .state
            .starts
            .get(id + 1)
            .copied()
            .unwrap_or(self.state.read);
        let mut entries = self.read_between(self.state.starts[id], end)?;
        entries.truncate(1);
        entries.pop().ok_or_else(|| {
            io_err(
                &self.index.path,
                io::Error::other(format!("entry {id} was not where it was indexed")),
            )
        })
    }

    /// Every entry from `id` on, in file order. Cost: those entries.
    pub fn entries_from(&self, id: usize) -> Result<Vec<Entry>, Error> {
        self.entries(id..self.len())
    }

    /// The entries with ids in `ids`, in file order. Cost: those entries.
    pub fn entries(&self, ids: std::ops::Range<usize>) -> Result<Vec<Entry>, Error> {
        let starts = &self.state.starts;
        let Some(&start) = starts.get(ids.start).filter(|_| ids.start < ids.end) else {
            return Ok(Vec::new());
        };
        let end = starts.get(ids.end).copied().unwrap_or(self.state.read);
        self.read_between(start, end)
    }

    fn read_between(&self, start: u64, end: u64) -> Result<Vec<Entry>, Error> {
        let file =
            self.state.file.as_ref().ok_or_else(|| {
                io_err(&self.index.path, io::Error::other("the file is not open"))
            })?;
        let mut text = vec![0; (end - start) as usize];
        file.read_exact_at(&mut text, start)
            .map_err(|e| io_err(&self.index.path, e))?;
        let text = String::from_utf8(text).map_err(|_| {
            io_err(
                &self.index.path,
                io::Error::new(io::ErrorKind::InvalidData, "an entry is not UTF-8"),
            )
        })?;
        Ok(Db::parse(&self.index.path.display().to_string(), &text)?
            .entries
            .into_iter()
            .collect())
    }

    /// The ids of entries holding `attr=value`, in file order; `attr` must
    /// be indexed by value.
    fn ids(&self, attr: &str, value: &str) -> Vec<u32> {
        let i = self
            .index
            .by_value
            .iter()
            .position(|a| a == attr)
            .unwrap_or_else(|| panic!("{attr} is not indexed by value"));
        self.state.values[i].entries(self.index.hash(value))
    }

    /// Every entry holding `attr=value`, in file order (`ndbsearch`);
    /// `attr` must be one the index was made for.
    pub fn search(&self, attr: &str, value: &str) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        for id in self.ids(attr, value) {
            let e = self.entry(id as usize)?;
            if e.has(attr, value) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The ids of entries that hold `attr` (`present`) or do not; `attr`
    /// must be indexed by presence.
    pub fn ids_where(&self, attr: &str, present: bool) -> Vec<usize> {
        let i = self
            .index
            .by_presence
            .iter()
            .position(|a| a == attr)
            .unwrap_or_else(|| panic!("{attr} is not indexed by presence"));
        let bits = &self.state.presence[i].bits;
        let len = self.len();
        let mut out = Vec::new();
        for word in 0..len.div_ceil(64) {
            let mut w = bits.get(word).copied().unwrap_or(0);
            if !present {
                w = !w;
            }
            while w != 0 {
                let id = word * 64 + w.trailing_zeros() as usize;
                if id >= len {
                    break;
                }
                out.push(id);
                w &= w - 1;
            }
        }
        out
    }
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}
