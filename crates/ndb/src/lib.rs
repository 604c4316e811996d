//! ndb(6), the Plan 9 attribute=value database (spec §10), as colony keeps its
//! users and scorenames in it.
//!
//! * [`Db::parse`] reads the text exactly as Plan 9's libndb does (entries,
//!   continuation lines, quoting, comments), and refuses the few things libndb
//!   would silently mangle, naming the file and line.
//! * Queries follow `ndbsearch` and `ndbgetvalue` (same-line preference).
//! * Edits replace, add or remove whole entries and keep every other line —
//!   comments included — byte for byte. An edit whose result would not parse
//!   back into exactly the pairs asked for is refused ([`EditError`]), so a
//!   database is never written in a form that reads differently.
//! * [`update`] serialises writers with a lock file and replaces the file
//!   atomically and durably (temporary file, fsync, rename, fsync directory).
//!
//! An entry's *extent* — the lines an edit replaces or removes — runs from its
//! first line to its last line that begins with white space, be it a
//! continuation line, an indented comment or a white-space-only line: libndb
//! reads every such line as part of the entry. Column-0 comments inside the
//! extent are the file's, not the entry's, and always stay.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

mod indexed;
pub use indexed::{Indexed, View};

/// The longest attribute name (libndb's `Ndbalen` is 32 with the NUL).
pub const MAX_ATTR: usize = 31;

/// The white space of libndb's `ISWHITE`; nothing else separates pairs.
fn is_ndb_space(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

/// One `attr=value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub attr: String,
    pub value: String,
    /// Which line of its entry the pair is on (0 = the first line).
    pub line: usize,
}

/// An entry: pairs from a first line and its continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pairs: Vec<Pair>,
    /// File line numbers (0-based) of the first and last lines of the
    /// entry's extent (see the crate documentation).
    first: usize,
    last: usize,
}

impl Entry {
    /// A new entry from pairs (all on its first line).
    pub fn new(pairs: &[(&str, &str)]) -> Entry {
        Entry {
            pairs: pairs
                .iter()
                .map(|(a, v)| Pair {
                    attr: a.to_string(),
                    value: v.to_string(),
                    line: 0,
                })
                .collect(),
            first: usize::MAX,
            last: usize::MAX,
        }
    }

    /// The first value of `attr`.
    pub fn get(&self, attr: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|p| p.attr == attr)
            .map(|p| p.value.as_str())
    }

    /// Every value of `attr`.
    pub fn all<'a>(&'a self, attr: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |p| p.attr == attr)
            .map(|p| p.value.as_str())
    }

    pub fn has(&self, attr: &str, value: &str) -> bool {
        self.pairs
            .iter()
            .any(|p| p.attr == attr && p.value == value)
    }

    /// Adds a pair on the entry's last line.
    pub fn push(&mut self, attr: &str, value: &str) {
        let line = self.pairs.last().map_or(0, |p| p.line);
        self.pairs.push(Pair {
            attr: attr.into(),
            value: value.into(),
            line,
        });
    }

    /// The Plan 9 `ndb/query` form: every pair as `attr=val ` on one line.
    pub fn query_line(&self) -> String {
        self.pairs
            .iter()
            .map(|p| format!("{}={} ", p.attr, p.value))
            .collect()
    }

    /// The entry as file text, keeping its line structure; values that need
    /// it are quoted. Fails rather than return text that would parse into
    /// other pairs.
    pub fn to_text(&self) -> Result<String, EditError> {
        Ok(self
            .text_lines()?
            .iter()
            .map(|l| format!("{l}\n"))
            .collect())
    }

    /// The entry's lines, without newlines: the first line bare, each later
    /// one indented by a tab so that it continues the entry.
    fn text_lines(&self) -> Result<Vec<String>, EditError> {
        if self.pairs.is_empty() {
            // It would print as a blank line, which is no entry at all.
            return Err(EditError::NoPairs);
        }
        let mut lines: Vec<String> = Vec::new();
        let mut at = None;
        for p in &self.pairs {
            let text = pair_text(p)?;
            match lines.last_mut() {
                Some(line) if at == Some(p.line) => {
                    line.push(' ');
                    line.push_str(&text);
                }
                Some(_) => lines.push(format!("\t{text}")),
                None => lines.push(text),
            }
            at = Some(p.line);
        }
        Ok(lines)
    }

    /// The (attribute, value) list that equality of content is judged by.
    fn content(&self) -> Vec<(&str, &str)> {
        self.pairs
            .iter()
            .map(|p| (p.attr.as_str(), p.value.as_str()))
            .collect()
    }
}

/// `attr=value` as it must be written to parse back to the same pair.
fn pair_text(p: &Pair) -> Result<String, EditError> {
    check_attr(&p.attr).map_err(|why| EditError::Attr {
        attr: p.attr.clone(),
        why,
    })?;
    let value = value_text(&p.value).map_err(|why| EditError::Value {
        attr: p.attr.clone(),
        value: p.value.clone(),
        why,
    })?;
    Ok(format!("{}={value}", p.attr))
}

/// Refuses attribute names that would not read back as themselves: the
/// attribute is the run up to `=` or white space, and [`Db::parse`] refuses
/// empty, over-long and control-character names.
fn check_attr(attr: &str) -> Result<(), &'static str> {
    if attr.is_empty() {
        Err("it is empty")
    } else if attr.len() > MAX_ATTR {
        Err("it is longer than 31 bytes")
    } else if attr.contains(char::is_control) {
        Err("it holds a control character")
    } else if attr.contains(['=', ' ']) {
        Err("it holds '=' or a space, which end an attribute")
    } else if attr.starts_with('#') {
        Err("it starts with '#', which starts a comment")
    } else {
        Ok(())
    }
}

/// A value as ndb text. libndb has no escapes: a quoted value runs to the
/// next `"` (so it cannot hold one), and a bare value runs to the next white
/// space and must not start with `"` or `#`. A value that fits neither form —
/// a `"` together with white space, a leading `"` or `#` with a `"`, or a
/// newline anywhere — cannot be written at all.
fn value_text(value: &str) -> Result<String, &'static str> {
    if value.contains('\n') {
        return Err("a newline ends an ndb line");
    }
    // Quote what a reader might misread (as 9front's ndbvalfmt does), even
    // where ndb would not need it, such as `#` inside or non-ASCII space.
    let wants_quotes = value.is_empty()
        || value.starts_with('"')
        || value.contains(|c: char| c.is_whitespace() || c == '#');
    let can_be_bare =
        !value.is_empty() && !value.starts_with(['"', '#']) && !value.contains(is_ndb_space);
    if !wants_quotes {
        Ok(value.to_string())
    } else if !value.contains('"') {
        Ok(format!("\"{value}\""))
    } else if can_be_bare {
        Ok(value.to_string())
    } else {
        Err("a quoted value cannot hold '\"', and a bare one no white space")
    }
}

/// A malformed line, named by file and line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {why}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// Why an edit was refused: what it asked for cannot be written as ndb text
/// that reads back the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("an ndb entry needs at least one pair")]
    NoPairs,
    #[error("attribute {attr:?} cannot be written in ndb: {why}")]
    Attr { attr: String, why: &'static str },
    #[error("the value {value:?} of {attr} cannot be written in ndb: {why}")]
    Value {
        attr: String,
        value: String,
        why: &'static str,
    },
    /// The last line of defence: the edited text would read differently.
    #[error("refusing an edit whose text would {0}")]
    Unfaithful(String),
}

/// Errors of file operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
}

fn io_err(path: &Path, err: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// A parsed database file: its lines, and the entries they hold.
#[derive(Debug, Clone, Default)]
pub struct Db {
    /// Every complete line, without its `\n` (a `\r` before it stays).
    lines: Vec<String>,
    /// Text after the last newline. libndb ignores it; it is kept, at the
    /// end, so that a rewrite loses nothing.
    tail: String,
    entries: Vec<Entry>,
    /// The first edit that [`Db::edit`] or [`Db::append`] refused; it makes
    /// [`Db::checked_text`] and [`update`] refuse to write.
    refused: Option<EditError>,
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        f.write_str(&self.tail)
    }
}

/// What a line is to the entry structure.
enum Line {
    /// A lone newline: it ends the open entry.
    Blank,
    /// A `#` in column 0: ignored, and it does not end the entry.
    Comment,
    /// White space first and no pairs (an indented comment or a
    /// white-space-only line): part of the open entry, if any.
    Indented,
    /// White space first, then pairs: they continue the open entry.
    Continuation(Vec<(String, String)>),
    /// Anything else starts an entry.
    Start(Vec<(String, String)>),
}

fn classify(line: &str) -> Result<Line, String> {
    match line.chars().next() {
        None => Ok(Line::Blank),
        Some('#') => Ok(Line::Comment),
        Some(c) if is_ndb_space(c) => {
            let pairs = parse_line(line)?;
            Ok(if pairs.is_empty() {
                Line::Indented
            } else {
                Line::Continuation(pairs)
            })
        }
        Some(_) => Ok(Line::Start(parse_line(line)?)),
    }
}

/// Whether a line of a parsed file holds pairs; edits keep the others. (A
/// line that does not parse is in no parsed file; were it, dropping it with
/// the pairs would be the safe side.)
fn holds_pairs(line: &str) -> bool {
    matches!(
        classify(line),
        Ok(Line::Start(_) | Line::Continuation(_)) | Err(_)
    )
}

/// Finds the entries in `lines`, each with its extent.
fn parse_lines(name: &str, lines: &[String]) -> Result<Vec<Entry>, ParseError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut open: Option<Entry> = None;
    for (n, line) in lines.iter().enumerate() {
        let err = |why: String| ParseError {
            file: name.to_string(),
            line: n + 1,
            why,
        };
        match classify(line).map_err(err)? {
            Line::Blank => entries.extend(open.take()),
            Line::Comment => {}
            Line::Indented => {
                // With no entry open libndb skips it too; it belongs to no one.
                if let Some(entry) = open.as_mut() {
                    entry.last = n;
                }
            }
            Line::Continuation(pairs) => {
                let entry = open
                    .as_mut()
                    .ok_or_else(|| err("continuation line with no entry to continue".into()))?;
                let index = entry.pairs.last().map_or(0, |p| p.line + 1);
                entry
                    .pairs
                    .extend(pairs.into_iter().map(|(attr, value)| Pair {
                        attr,
                        value,
                        line: index,
                    }));
                entry.last = n;
            }
            Line::Start(pairs) => {
                entries.extend(open.take());
                let mut entry = Entry::new(&[]);
                entry.pairs = pairs
                    .into_iter()
                    .map(|(attr, value)| Pair {
                        attr,
                        value,
                        line: 0,
                    })
                    .collect();
                (entry.first, entry.last) = (n, n);
                open = Some(entry);
            }
        }
    }
    entries.extend(open);
    Ok(entries)
}

/// One pair of a file and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedPair {
    pub attr: String,
    pub value: String,
    /// 1-based, as an editor counts.
    pub line: usize,
}

/// Every pair of `text` with the line it is on, in file order, for files
/// whose reader must say where a bad pair is (a configuration). Unlike
/// [`Db::parse`], a last line without a newline is read: such a file is
/// not shared with libndb, and losing its last line silently would be worse.
pub fn located_pairs(name: &str, text: &str) -> Result<Vec<LocatedPair>, ParseError> {
    let mut pairs = Vec::new();
    let mut in_entry = false;
    for (n, line) in text.lines().enumerate() {
        let err = |why: String| ParseError {
            file: name.to_string(),
            line: n + 1,
            why,
        };
        let found = match classify(line).map_err(err)? {
            Line::Blank => {
                in_entry = false;
                continue;
            }
            Line::Comment | Line::Indented => continue,
            Line::Continuation(_) if !in_entry => {
                return Err(err("continuation line with no entry to continue".into()));
            }
            Line::Continuation(found) => found,
            Line::Start(found) => {
                in_entry = true;
                found
            }
        };
        pairs.extend(found.into_iter().map(|(attr, value)| LocatedPair {
            attr,
            value,
            line: n + 1,
        }));
    }
    Ok(pairs)
}

/// Splits text into complete lines, split at `\n` only (a `\r` is white
/// space to libndb, not part of a line end), and the unterminated tail.
fn split_lines(text: &str) -> (Vec<String>, String) {
    match text.rfind('\n') {
        Some(i) => (
            text[..i].split('\n').map(str::to_string).collect(),
            text[i + 1..].to_string(),
        ),
        None => (Vec::new(), text.to_string()),
    }
}

/// Parses the edited `lines` and checks that they hold exactly the entries
/// `want`, in order; only then may an edit take effect.
fn reparse<'a>(
    lines: &[String],
    want: impl IntoIterator<Item = &'a Entry>,
) -> Result<Vec<Entry>, EditError> {
    let entries = parse_lines("edited text", lines)
        .map_err(|e| EditError::Unfaithful(format!("not parse ({e})")))?;
    let got: Vec<_> = entries.iter().map(Entry::content).collect();
    let want: Vec<_> = want.into_iter().map(Entry::content).collect();
    if got != want {
        return Err(EditError::Unfaithful(format!(
            "parse into {got:?} instead of {want:?}"
        )));
    }
    Ok(entries)
}

impl Db {
    /// Parses `text`; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Db, ParseError> {
        // libndb reads whole lines: a last line without a newline is ignored.
        let (lines, tail) = split_lines(text);
        let entries = parse_lines(name, &lines)?;
        Ok(Db {
            lines,
            tail,
            entries,
            refused: None,
        })
    }

    /// Reads and parses a file; a missing file is an empty database.
    pub fn open(path: &Path) -> Result<Db, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Db::parse(&path.display().to_string(), &text)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Db::default()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every entry holding `attr=value`, in file order (`ndbsearch`).
    pub fn search<'a>(
        &'a self,
        attr: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.has(attr, value))
    }

    /// `ndbgetvalue`: `rattr`'s value in the first matching entry that has one,
    /// preferring the line of the matching pair.
    pub fn get_value(&self, attr: &str, value: &str, rattr: &str) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.has(attr, value))
            .find_map(|e| {
                let lines: Vec<usize> = e
                    .pairs
                    .iter()
                    .filter(|p| p.attr == attr && p.value == value)
                    .map(|p| p.line)
                    .collect();
                e.pairs
                    .iter()
                    .find(|p| p.attr == rattr && lines.contains(&p.line))
                    .or_else(|| e.pairs.iter().find(|p| p.attr == rattr))
                    .map(|p| p.value.as_str())
            })
    }

    /// The text to write: refused if an edit was refused, or if the text
    /// would not parse back into this database's entries.
    pub fn checked_text(&self) -> Result<String, EditError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        let text = self.to_string();
        reparse(&split_lines(&text).0, &self.entries)?;
        Ok(text)
    }

    /// Appends an entry at the end of the file (before an unterminated
    /// tail, which stays ignored). If it cannot be written, the database is
    /// left as it was and the refusal kept for [`Db::checked_text`].
    pub fn append(&mut self, entry: Entry) {
        if let Err(e) = self.try_append(entry) {
            self.refused.get_or_insert(e);
        }
    }

    /// Makes an unterminated last line (which libndb does not read) a
    /// comment line after `note`, so that the file ends with a newline and
    /// an appended line cannot join it. Its text is kept.
    pub fn comment_out_tail(&mut self, note: &str) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.lines.push(format!("# {note} {tail}"));
        }
    }

    /// [`Db::append`], saying at once why it was refused.
    pub fn try_append(&mut self, entry: Entry) -> Result<(), EditError> {
        let mut lines = self.lines.clone();
        lines.extend(entry.text_lines()?);
        let want = self.entries.iter().chain([&entry]);
        self.entries = reparse(&lines, want)?;
        self.lines = lines;
        Ok(())
    }

    /// Replaces every entry for which `pick` is true with `edit`'s result
    /// (`None` removes it). Returns how many entries it picked. If any
    /// result cannot be written, nothing changes and the refusal is kept for
    /// [`Db::checked_text`] (and so [`update`]) to report.
    pub fn edit(
        &mut self,
        pick: impl Fn(&Entry) -> bool,
        edit: impl Fn(&Entry) -> Option<Entry>,
    ) -> usize {
        match self.try_edit(&pick, edit) {
            Ok(n) => n,
            Err(refused) => {
                self.refused.get_or_insert(refused);
                self.entries.iter().filter(|e| pick(e)).count()
            }
        }
    }

    /// [`Db::edit`], saying at once why it was refused; all or nothing.
    pub fn try_edit(
        &mut self,
        pick: impl Fn(&Entry) -> bool,
        edit: impl Fn(&Entry) -> Option<Entry>,
    ) -> Result<usize, EditError> {
        let mut lines = Vec::with_capacity(self.lines.len());
        let mut want = Vec::with_capacity(self.entries.len());
        let mut next = 0;
        let mut picked = 0;
        for old in &self.entries {
            if !pick(old) {
                want.push(old.clone());
                continue;
            }
            picked += 1;
            let new = edit(old);
            lines.extend_from_slice(&self.lines[next..old.first]);
            lines.extend(self.rewrite(old, new.as_ref())?);
            next = old.last + 1;
            want.extend(new);
        }
        lines.extend_from_slice(&self.lines[next..]);
        self.entries = reparse(&lines, &want)?;
        self.lines = lines;
        Ok(picked)
    }

    /// The lines that take the place of `old`'s extent. A replacement keeps
    /// every line of the extent that holds no pairs (comments, indented
    /// comments, white-space lines), after its own text and in order: they
    /// stay part of the entry. A removal keeps only the column-0 comments,
    /// which are the file's; indented ones go with their entry, or they
    /// would join whatever entry comes before.
    fn rewrite(&self, old: &Entry, new: Option<&Entry>) -> Result<Vec<String>, EditError> {
        let extent = &self.lines[old.first..=old.last];
        Ok(match new {
            Some(new) => {
                let mut lines = new.text_lines()?;
                lines.extend(extent.iter().filter(|l| !holds_pairs(l)).cloned());
                lines
            }
            None => extent
                .iter()
                .filter(|l| l.starts_with('#'))
                .cloned()
                .collect(),
        })
    }
}

/// Splits one line into pairs following libndb's rules (§10.1).
fn parse_line(line: &str) -> Result<Vec<(String, String)>, String> {
    let b = line.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let ws = |c: u8| is_ndb_space(c as char);
    loop {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] == b'#' {
            return Ok(pairs);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !ws(b[i]) {
            i += 1;
        }
        let attr = &line[start..i];
        if attr.is_empty() {
            return Err("a pair with no attribute name".into());
        }
        if attr.len() > MAX_ATTR {
            return Err(format!(
                "attribute {attr:?} is longer than {MAX_ATTR} bytes"
            ));
        }
        if let Some(c) = attr.chars().find(|c| c.is_control()) {
            return Err(format!("control character {c:?} in attribute"));
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                let close = line[i + 1..]
                    .find('"')
                    .ok_or("a quoted value with no closing quote")?;
                value = line[i + 1..i + 1 + close].to_string();
                i += close + 2;
            } else if i < b.len() && b[i] == b'#' {
                pairs.push((attr.to_string(), value));
                return Ok(pairs);
            } else {
                let vstart = i;
                while i < b.len() && !ws(b[i]) {
                    i += 1;
                }
                value = line[vstart..i].to_string();
            }
        }
        pairs.push((attr.to_string(), value));
    }
}

/// Holds an exclusive lock on `<file>.lock` while it lives.
pub struct Lock {
    _file: File,
}

fn lock(path: &Path) -> Result<Lock, Error> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err(&lock_path, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(&lock_path, io::Error::last_os_error()));
    }
    Ok(Lock { _file: file })
}

/// Replaces `path` with `text` so that a crash leaves either the old or the
/// new file, whole: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("ndb")
    ));
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Reads `path` under its lock, lets `change` edit it, and writes it back
/// atomically if `change` succeeds. Concurrent updaters take turns. If an
/// edit was refused, or the text would not read back the same
/// ([`Db::checked_text`]), the file is left untouched and that is the error.
pub fn update<T, E: From<Error>>(
    path: &Path,
    change: impl FnOnce(&mut Db) -> Result<T, E>,
) -> Result<T, E> {
    let _lock = lock(path)?;
    let mut db = Db::open(path)?;
    let out = change(&mut db)?;
    let text = db.checked_text().map_err(Error::from)?;
    write_atomically(path, &text)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lexical_cases_of_10_1() {
        let db = Db::parse("t", "a=1 b c=\"two words\" d= e=#gone\n\tf=x#y\n").unwrap();
        let e = &db.entries()[0];
        let pairs: Vec<(&str, &str, usize)> = e
            .pairs
            .iter()
            .map(|p| (p.attr.as_str(), p.value.as_str(), p.line))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a", "1", 0),
                ("b", "", 0),
                ("c", "two words", 0),
                ("d", "", 0),
                ("e", "", 0),
                ("f", "x#y", 1)
            ]
        );
        // "sys = beta": sys with an empty value, then a pair beta.
        let db = Db::parse("t", "sys = beta\n").unwrap();
        assert_eq!(db.entries()[0].query_line(), "sys= beta= ");
        // A last line without a newline is ignored, as libndb does.
        assert_eq!(Db::parse("t", "a=1\nb=2").unwrap().entries().len(), 1);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = Db::parse("scorenames", "a=1\nb=\"open\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("scorenames", 2));
        assert!(e.to_string().starts_with("scorenames:2: "), "{e}");
        assert!(Db::parse("f", "=v\n").is_err());
        assert!(Db::parse("f", &format!("{}=1\n", "a".repeat(40))).is_err());
        assert!(Db::parse("f", "\tx=1\n").is_err());
    }

    #[test]
    fn edits_keep_comments_and_order() {
        let text =
            "# users\nuser=a key=k1\n\n# the second\nuser=b key=k2\n\tnote=\"x y\"\n# trailing\n";
        let mut db = Db::parse("t", text).unwrap();
        assert_eq!(db.to_string(), text);
        db.edit(
            |e| e.has("user", "a"),
            |e| {
                let mut e = e.clone();
                e.push("key", "k3");
                Some(e)
            },
        );
        db.append(Entry::new(&[("user", "c"), ("key", "k4")]));
        db.edit(|e| e.has("user", "b"), |_| None);
        assert_eq!(
            db.to_string(),
            "# users\nuser=a key=k1 key=k3\n\n# the second\n# trailing\nuser=c key=k4\n"
        );
        let again = Db::parse("t", &db.to_string()).unwrap();
        assert_eq!(again.entries().len(), 2);
        assert_eq!(again.get_value("user", "c", "key"), Some("k4"));
    }

    #[test]
    fn values_are_written_in_the_one_form_that_reads_back() {
        let cases = [
            ("plain", Some("plain")),
            ("", Some("\"\"")),
            ("two words", Some("\"two words\"")),
            ("a#b", Some("\"a#b\"")),
            ("#lead", Some("\"#lead\"")),
            // A quote can only be bare: libndb has no escape, not even "".
            ("a\"b", Some("a\"b")),
            ("a\"#b", Some("a\"#b")),
            ("a\"b\u{a0}c", Some("a\"b\u{a0}c")),
            ("a\" b", None),
            ("\"lead", None),
            ("#\"", None),
            ("cr\"\r", None),
            ("two\nlines", None),
        ];
        for (value, want) in cases {
            assert_eq!(value_text(value).ok().as_deref(), want, "{value:?}");
        }
    }

    #[test]
    fn refusals_say_what_cannot_be_written() {
        let e = Entry::new(&[("note", "a\" b")]).to_text().unwrap_err();
        assert!(
            matches!(&e, EditError::Value { attr, .. } if attr == "note"),
            "{e}"
        );
        assert!(e.to_string().contains("note"), "{e}");
        assert_eq!(Entry::new(&[]).to_text(), Err(EditError::NoPairs));
        for attr in ["", "a b", "a=b", "#a", "a\tb", &"x".repeat(32)] {
            let e = Entry::new(&[(attr, "v")]).to_text().unwrap_err();
            assert!(matches!(e, EditError::Attr { .. }), "{attr:?}: {e}");
        }
    }

    #[test]
    fn a_refused_edit_changes_nothing_and_is_reported_on_writing() {
        let text = "a=1\na=2\n";
        let mut db = Db::parse("t", text).unwrap();
        // The second replacement cannot be written: the first is not made.
        let said = db.try_edit(
            |e| e.get("a").is_some(),
            |e| {
                Some(Entry::new(&[(
                    "v",
                    if e.has("a", "1") { "ok" } else { "x\ny" },
                )]))
            },
        );
        assert!(matches!(said, Err(EditError::Value { .. })), "{said:?}");
        assert_eq!(db.to_string(), text);
        assert_eq!(db.checked_text(), Ok(text.to_string()));
        // The infallible forms keep the refusal for the writer.
        db.append(Entry::new(&[("v", "x\ny")]));
        assert_eq!(db.to_string(), text);
        assert!(matches!(db.checked_text(), Err(EditError::Value { .. })));
    }
}
