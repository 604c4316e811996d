//! ndb(6), the Plan 9 attribute=value database (spec §10), as colony keeps its
//! users and scorenames in it.
//!
//! * [`Db::parse`] reads the text exactly as Plan 9's libndb does (entries,
//!   continuation lines, quoting, comments), and refuses the few things libndb
//!   would silently mangle, naming the file and line.
//! * Queries follow `ndbsearch` and `ndbgetvalue` (same-line preference).
//! * Edits replace, add or remove whole entries and keep every other line —
//!   comments included — byte for byte.
//! * [`update`] serialises writers with a lock file and replaces the file
//!   atomically and durably (temporary file, fsync, rename, fsync directory).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The longest attribute name (libndb's `Ndbalen` is 32 with the NUL).
pub const MAX_ATTR: usize = 31;

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
    /// File line numbers (0-based) of the entry's first and last lines.
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
    /// it are quoted.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = None;
        for p in &self.pairs {
            match line {
                None => {}
                Some(l) if l == p.line => out.push(' '),
                Some(_) => out.push_str("\n\t"),
            }
            line = Some(p.line);
            out.push_str(&p.attr);
            out.push('=');
            if p.value.is_empty()
                || p.value.contains(|c: char| c.is_whitespace() || c == '#')
                || p.value.starts_with('"')
            {
                out.push('"');
                out.push_str(&p.value);
                out.push('"');
            } else {
                out.push_str(&p.value);
            }
        }
        out.push('\n');
        out
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

/// Errors of file operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
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
    lines: Vec<String>,
    entries: Vec<Entry>,
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl Db {
    /// Parses `text`; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Db, ParseError> {
        // libndb reads whole lines: a last line without a newline is ignored.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let lines: Vec<String> = complete.lines().map(str::to_string).collect();
        let mut entries: Vec<Entry> = Vec::new();
        let mut open: Option<Entry> = None;
        for (n, line) in lines.iter().enumerate() {
            let err = |why: String| ParseError {
                file: name.to_string(),
                line: n + 1,
                why,
            };
            if line.is_empty() {
                entries.extend(open.take());
                continue;
            }
            let first = line.chars().next().expect("not empty");
            if first == '#' {
                continue;
            }
            let continuation = first == ' ' || first == '\t' || first == '\r';
            if continuation && line.trim().is_empty() {
                continue;
            }
            let pairs = parse_line(line).map_err(err)?;
            if continuation {
                match open.as_mut() {
                    Some(entry) => {
                        let index = entry.pairs.last().map_or(0, |p| p.line + 1);
                        if pairs.is_empty() {
                            continue;
                        }
                        entry
                            .pairs
                            .extend(pairs.into_iter().map(|(attr, value)| Pair {
                                attr,
                                value,
                                line: index,
                            }));
                        entry.last = n;
                    }
                    None => return Err(err("continuation line with no entry to continue".into())),
                }
            } else {
                entries.extend(open.take());
                open = Some(Entry {
                    pairs: pairs
                        .into_iter()
                        .map(|(attr, value)| Pair {
                            attr,
                            value,
                            line: 0,
                        })
                        .collect(),
                    first: n,
                    last: n,
                });
            }
        }
        entries.extend(open);
        Ok(Db { lines, entries })
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

    /// Appends an entry at the end of the file.
    pub fn append(&mut self, mut entry: Entry) {
        let text = entry.to_text();
        let start = self.lines.len();
        self.lines.extend(text.lines().map(str::to_string));
        entry.first = start;
        entry.last = self.lines.len() - 1;
        self.entries.push(entry);
    }

    /// Replaces or removes the `index`-th entry, keeping every other line.
    fn splice(&mut self, index: usize, with: Option<Entry>) {
        let old = &self.entries[index];
        let (first, last) = (old.first, old.last);
        // Comment lines inside the entry stay, after its new text.
        let comments: Vec<String> = self.lines[first..=last]
            .iter()
            .filter(|l| l.starts_with('#'))
            .cloned()
            .collect();
        let mut new_lines: Vec<String> = match &with {
            Some(e) => e.to_text().lines().map(str::to_string).collect(),
            None => Vec::new(),
        };
        new_lines.extend(comments);
        let delta = new_lines.len() as isize - (last - first + 1) as isize;
        self.lines.splice(first..=last, new_lines.iter().cloned());
        match with {
            Some(mut e) => {
                e.first = first;
                e.last = first + e.to_text().lines().count() - 1;
                self.entries[index] = e;
            }
            None => {
                self.entries.remove(index);
            }
        }
        for e in &mut self.entries {
            if e.first > last && e.first != usize::MAX {
                e.first = (e.first as isize + delta) as usize;
                e.last = (e.last as isize + delta) as usize;
            }
        }
    }

    /// Replaces every entry for which `pick` is true with `edit`'s result
    /// (`None` removes it). Returns how many entries it touched.
    pub fn edit(
        &mut self,
        pick: impl Fn(&Entry) -> bool,
        edit: impl Fn(&Entry) -> Option<Entry>,
    ) -> usize {
        let mut touched = 0;
        let mut i = 0;
        while i < self.entries.len() {
            if pick(&self.entries[i]) {
                touched += 1;
                let replacement = edit(&self.entries[i]);
                let removed = replacement.is_none();
                self.splice(i, replacement);
                if removed {
                    continue;
                }
            }
            i += 1;
        }
        touched
    }
}

/// Splits one line into pairs following libndb's rules (§10.1).
fn parse_line(line: &str) -> Result<Vec<(String, String)>, String> {
    let b = line.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let ws = |c: u8| c == b' ' || c == b'\t' || c == b'\r';
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
struct Lock {
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
/// atomically if `change` succeeds. Concurrent updaters take turns.
pub fn update<T, E: From<Error>>(
    path: &Path,
    change: impl FnOnce(&mut Db) -> Result<T, E>,
) -> Result<T, E> {
    let _lock = lock(path)?;
    let mut db = Db::open(path)?;
    let out = change(&mut db)?;
    write_atomically(path, &db.to_string())?;
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
}
