//! Listing and extracting an archive (`colony unvac`).

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::reader::{Archive, Node};
use crate::unix::{self, Kind, Meta};
use crate::walk::{Observer, Stats};

/// What extraction may do beyond writing files.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Set owners (needs root).
    pub owners: bool,
    /// Create device nodes (needs root).
    pub devices: bool,
}

impl ExtractOptions {
    /// Owners and devices when running as root, as tar does.
    pub fn for_current_user() -> ExtractOptions {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        ExtractOptions {
            owners: root,
            devices: root,
        }
    }
}

/// Refuses names that could escape the destination.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::corrupt(format!(
            "archive holds an unsafe file name {name:?}"
        )));
    }
    Ok(())
}

/// Extracts `node` (a file, or a directory and everything below it) to `dest`.
///
/// Every file is made relative to an open descriptor of its directory
/// (`openat`, `mkdirat`, …), never through a path from `dest`, so an archive
/// of any depth extracts whole, past what a Linux path (PATH_MAX) can name.
/// The walk is iterative, and only the directory being filled holds a
/// descriptor: going back up opens its `..` and checks it is the directory
/// it came from, so a directory moved away meanwhile stops the extraction
/// instead of writing elsewhere.
pub fn extract(
    archive: &Archive,
    node: &Node,
    dest: &Path,
    options: ExtractOptions,
    observer: &dyn Observer,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut x = Extraction {
        archive,
        options,
        observer,
        dest,
        names: Vec::new(),
        stats: &mut stats,
    };
    // `dest` itself: made in its parent, or, for `.`, `/` and the like, an
    // existing directory to fill.
    let top = match dest.file_name() {
        Some(name) => {
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let parent_dir = open_dir(parent)?;
            let name = CString::new(name.as_bytes())
                .map_err(|_| Error::Invalid(format!("{}: holds a NUL byte", dest.display())))?;
            x.one(node, &parent_dir, &name, true)?
        }
        None => {
            if node.dir.is_none() {
                return Err(Error::Invalid(format!(
                    "{}: a file cannot be extracted onto a directory",
                    dest.display()
                )));
            }
            let data = read_meta_data(archive, node)?;
            let (meta, _) = Meta::from_dirent(&node.dirent, &data)?;
            x.stats.files += 1;
            observer.file();
            Some((open_dir(dest)?, meta))
        }
    };
    if let Some((dir, meta)) = top {
        x.fill(node, dir, meta)?;
    }
    Ok(stats)
}

/// A directory part-way through being filled.
struct Frame {
    /// Open only for the directory being filled now.
    dir: Option<File>,
    /// (st_dev, st_ino), to check the way back up.
    id: (u64, u64),
    meta: Meta,
    /// Children still to extract, last first.
    rest: Vec<Node>,
}

struct Extraction<'x, 'a> {
    archive: &'x Archive<'a>,
    options: ExtractOptions,
    observer: &'x dyn Observer,
    dest: &'x Path,
    /// Names from `dest` down to the directory being filled, for messages.
    names: Vec<String>,
    stats: &'x mut Stats,
}

impl Extraction<'_, '_> {
    /// Where something is, for a message: `dest/a/b/name`, shortened in the
    /// middle when deep.
    fn shown(&self, name: &str) -> std::path::PathBuf {
        let mut p = self.dest.to_path_buf();
        let n = self.names.len();
        if n > 8 {
            for part in &self.names[..3] {
                p.push(part);
            }
            p.push(format!("…({} more levels)…", n - 6));
            for part in &self.names[n - 3..] {
                p.push(part);
            }
        } else {
            for part in &self.names {
                p.push(part);
            }
        }
        if !name.is_empty() {
            p.push(name);
        }
        p
    }

    /// Extracts everything below directory `node`, already made and open
    /// as `dir`, then gives it `meta`.
    fn fill(&mut self, node: &Node, dir: File, meta: Meta) -> Result<()> {
        let top_dir = node.dir.expect("checked: a directory");
        let mut stack = vec![Frame {
            id: identity(&dir).map_err(|e| Error::io(self.dest, e))?,
            dir: Some(dir),
            meta,
            rest: reversed(self.archive.list(&top_dir)?),
        }];
        loop {
            let top = stack.last_mut().expect("a directory is being filled");
            let Some(child) = top.rest.pop() else {
                let done = stack.pop().expect("a directory is being filled");
                let dir = done.dir.expect("the directory being filled is open");
                apply_meta_fd(&dir, &done.meta, self.options)
                    .map_err(|e| Error::io(self.shown(""), e))?;
                let Some(parent) = stack.last_mut() else {
                    return Ok(());
                };
                let up = open_dir_at(&dir, c"..");
                let here = self.shown("");
                self.names.pop();
                let up = up.map_err(|e| Error::io(&here, e))?;
                if identity(&up).map_err(|e| Error::io(&here, e))? != parent.id {
                    return Err(Error::Invalid(format!(
                        "{}: its parent was moved during extraction; stopping",
                        here.display()
                    )));
                }
                parent.dir = Some(up);
                continue;
            };
            check_name(&child.dirent.elem)?;
            let name = CString::new(child.dirent.elem.as_bytes()).expect("checked: no NUL");
            let dir = top.dir.take().expect("the directory being filled is open");
            let made = self.one(&child, &dir, &name, false);
            let Some((sub, meta)) = made? else {
                stack.last_mut().expect("a parent").dir = Some(dir);
                continue;
            };
            let listed = self.archive.list(&child.dir.expect("checked: a directory"));
            let id = identity(&sub).map_err(|e| Error::io(self.shown(&child.dirent.elem), e))?;
            // Only the directory being filled keeps a descriptor: `dir` closes here.
            drop(dir);
            self.names.push(child.dirent.elem.clone());
            stack.push(Frame {
                dir: Some(sub),
                id,
                meta,
                rest: reversed(listed?),
            });
        }
    }

    /// Extracts one node as `name` in `dir`. A directory is made (writable
    /// while it is filled) and returned open with the metadata to give it
    /// once its children are in. `is_dest` marks the destination itself,
    /// which may name a directory that is already there.
    fn one(
        &mut self,
        node: &Node,
        dir: &File,
        name: &CStr,
        is_dest: bool,
    ) -> Result<Option<(File, Meta)>> {
        let data = read_meta_data(self.archive, node)?;
        let (meta, _) = Meta::from_dirent(&node.dirent, &data)?;
        self.stats.files += 1;
        self.observer.file();
        let shown = if is_dest {
            self.dest.to_path_buf()
        } else {
            self.shown(&name.to_string_lossy())
        };
        let at = |e: io::Error| Error::io(&shown, e);
        match &meta.kind {
            Kind::Dir => {
                if node.dir.is_none() {
                    return Err(Error::corrupt(format!(
                        "{} is a directory without streams",
                        shown.display()
                    )));
                }
                // SAFETY: dir is an open descriptor and name a NUL-terminated string.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(at(e));
                    }
                }
                // An existing non-directory (or symlink) fails here: O_NOFOLLOW.
                let sub = open_dir_at(dir, name).map_err(at)?;
                // Writable while we fill it, whatever its archived mode.
                sub.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(at)?;
                return Ok(Some((sub, meta)));
            }
            Kind::File => {
                remove_non_dir_at(dir, name).map_err(at)?;
                // SAFETY: as above; the returned descriptor is owned by the File.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_TRUNC
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                };
                if fd < 0 {
                    return Err(at(io::Error::last_os_error()));
                }
                // SAFETY: fd was just opened and nothing else owns it.
                let file = unsafe { File::from_raw_fd(fd) };
                self.stats.bytes += write_file(self.archive, node, &file, &shown, self.observer)?;
            }
            Kind::Symlink(target) => {
                remove_non_dir_at(dir, name).map_err(at)?;
                let target = CString::new(target.as_slice()).map_err(|_| {
                    Error::corrupt(format!("{}: link target holds a NUL byte", shown.display()))
                })?;
                // SAFETY: valid strings and descriptor.
                if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0
                {
                    return Err(at(io::Error::last_os_error()));
                }
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                if !self.options.devices {
                    self.observer
                        .warn(&shown, "device node not created (needs root)");
                    self.stats.warnings += 1;
                    return Ok(None);
                }
                remove_non_dir_at(dir, name).map_err(at)?;
                let kind = if matches!(meta.kind, Kind::CharDevice { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let dev = unix::make_dev(*major, *minor);
                mknod_at(dir, name, kind | (meta.perm & 0o777), dev).map_err(at)?;
            }
            Kind::Fifo => {
                remove_non_dir_at(dir, name).map_err(at)?;
                mknod_at(dir, name, libc::S_IFIFO | (meta.perm & 0o777), 0).map_err(at)?;
            }
        }
        apply_meta_at(dir, name, &meta, self.options).map_err(at)?;
        Ok(None)
    }
}

/// The small data some kinds keep in their stream (link targets, devices).
fn read_meta_data(archive: &Archive, node: &Node) -> Result<Vec<u8>> {
    if unix::needs_data(&node.dirent) {
        archive.read_small(node, 4096)
    } else {
        Ok(Vec::new())
    }
}

fn open_dir(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Opens directory `name` in `dir`, never through a symlink.
fn open_dir_at(dir: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: dir is an open descriptor and name a NUL-terminated string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn identity(dir: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = dir.metadata()?;
    Ok((md.dev(), md.ino()))
}

/// Removes `name` from `dir` if it is there and not a directory.
fn remove_non_dir_at(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, string and out-pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        };
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Ok(());
    }
    // SAFETY: valid descriptor and string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mknod_at(dir: &File, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: valid descriptor and string.
    if unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid), then times; never through a symlink.
fn apply_meta_at(dir: &File, name: &CStr, meta: &Meta, options: ExtractOptions) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    let is_link = matches!(meta.kind, Kind::Symlink(_));
    if options.owners {
        let flags = libc::AT_SYMLINK_NOFOLLOW;
        // SAFETY: valid descriptor and string; the flag acts on a link itself.
        if unsafe { libc::fchownat(fd, name.as_ptr(), meta.uid, meta.gid, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if !is_link {
        // SAFETY: valid descriptor and string (not a symlink: checked above).
        if unsafe { libc::fchmodat(fd, name.as_ptr(), meta.perm as libc::mode_t, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let times = mtime_pair(meta);
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: valid descriptor, string and two timespecs.
    if unsafe { libc::utimensat(fd, name.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The same for a directory, through its own descriptor.
fn apply_meta_fd(dir: &File, meta: &Meta, options: ExtractOptions) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    if options.owners {
        // SAFETY: valid descriptor.
        if unsafe { libc::fchown(fd, meta.uid, meta.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: valid descriptor.
    if unsafe { libc::fchmod(fd, meta.perm as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let times = mtime_pair(meta);
    // SAFETY: valid descriptor and two timespecs.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mtime_pair(meta: &Meta) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: meta.mtime as libc::time_t,
        tv_nsec: 0,
    };
    [t, t]
}

/// Writes a file's data, leaving holes where the archive has zero leaves.
fn write_file(
    archive: &Archive,
    node: &Node,
    file: &File,
    dest: &Path,
    observer: &dyn Observer,
) -> Result<u64> {
    let mut reader = archive.open_file(node)?;
    let size = node.entry.size;
    let dsize = node.entry.dsize as u64;
    // Only stored leaves are visited: zero subtrees (holes) are skipped whole,
    // so a crafted size over the zero score costs nothing to walk.
    let mut next = 0;
    while let Some(k) = reader.next_stored_leaf(next)? {
        next = k + 1;
        let leaf = reader.leaf(k)?;
        let end = ((k + 1) * dsize).min(size);
        let want = (end - k * dsize) as usize;
        let bytes = &leaf[..leaf.len().min(want)];
        file.write_all_at(bytes, k * dsize)
            .map_err(|e| Error::io(dest, e))?;
        observer.bytes(want as u64);
    }
    file.set_len(size).map_err(|e| Error::io(dest, e))?;
    Ok(size)
}

/// Prints the paths under `node` (with `verbose`, ls-style lines as plan9port's
/// `unvac -tv` does).
///
/// Iterative over one shared path buffer, so neither the depth of an archive
/// nor the length of its paths costs stack, and memory grows with the depth,
/// not with its square.
pub fn list(
    archive: &Archive,
    node: &Node,
    prefix: &str,
    verbose: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let Some(dir) = node.dir else {
        return print_node(archive, node, prefix, verbose, out);
    };
    let mut path = prefix.to_string();
    // Per directory being listed: its children still to print (last first)
    // and the length of `path` that names it.
    let mut stack: Vec<(Vec<Node>, usize)> = vec![(reversed(archive.list(&dir)?), path.len())];
    loop {
        let Some((rest, at)) = stack.last_mut() else {
            return Ok(());
        };
        let at = *at;
        let Some(child) = rest.pop() else {
            stack.pop();
            continue;
        };
        path.truncate(at);
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&child.dirent.elem);
        print_node(archive, &child, &path, verbose, out)?;
        if let Some(d) = child.dir {
            stack.push((reversed(archive.list(&d)?), path.len()));
        }
    }
}

fn reversed(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.reverse();
    nodes
}

fn print_node(
    archive: &Archive,
    node: &Node,
    path: &str,
    verbose: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let w = |e: io::Error| Error::io("standard output", e);
    if !verbose {
        return writeln!(out, "{path}").map_err(w);
    }
    let d = &node.dirent;
    let data = if unix::needs_data(d) {
        archive.read_small(node, 4096)?
    } else {
        Vec::new()
    };
    let (meta, _) = Meta::from_dirent(d, &data)?;
    let kind = match meta.kind {
        Kind::Dir => 'd',
        Kind::Symlink(_) => 'L',
        Kind::CharDevice { .. } => 'c',
        Kind::BlockDevice { .. } => 'b',
        Kind::Fifo => 'p',
        Kind::File => '-',
    };
    let size = match &meta.kind {
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            format!("{major},{minor}")
        }
        _ => node.size().to_string(),
    };
    let suffix = match &meta.kind {
        Kind::Symlink(t) => format!(" -> {}", String::from_utf8_lossy(t)),
        _ => String::new(),
    };
    writeln!(
        out,
        "{kind}{} {} {} {size} {} {path}{suffix}",
        perm_string(meta.perm),
        d.uid,
        d.gid,
        format_time(d.mtime)
    )
    .map_err(w)
}

/// `rwsr-xr-x`-style permissions with setuid, setgid and sticky.
fn perm_string(perm: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, perm & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn format_time(t: u32) -> String {
    let days = t as i64 / 86400;
    let secs = t as i64 % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_permissions_print_like_ls() {
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(perm_string(0o4755), "rwsr-xr-x");
        assert_eq!(perm_string(0o1777), "rwxrwxrwt");
        assert_eq!(perm_string(0o2644), "rw-r-Sr--");
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("ok.txt").unwrap();
    }
}
