//! Listing and extracting an archive (`colony unvac`).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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

/// The longest path Linux accepts in a system call, with its NUL.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Extracts `node` (a file, or a directory and everything below it) to `dest`.
///
/// Iterative, with an explicit stack of the directories being filled, so no
/// archive, however deep, runs the process out of stack; one that nests past
/// what a Linux path can reach is refused there with an error saying so.
pub fn extract(
    archive: &Archive,
    node: &Node,
    dest: &Path,
    options: ExtractOptions,
    observer: &dyn Observer,
) -> Result<Stats> {
    /// A directory being filled: the children still to extract (last first)
    /// and the metadata to give it once they are in.
    struct Frame {
        rest: Vec<Node>,
        meta: Meta,
    }
    let mut stats = Stats::default();
    let mut path = dest.to_path_buf();
    let mut stack: Vec<Frame> = Vec::new();
    if let Some(frame) = extract_one(archive, node, &path, options, observer, &mut stats)? {
        stack.push(frame_of(archive, node, frame)?);
    }
    fn frame_of(archive: &Archive, node: &Node, meta: Meta) -> Result<Frame> {
        let dir = node.dir.expect("directory nodes have streams");
        let mut rest = archive.list(&dir)?;
        rest.reverse();
        Ok(Frame { rest, meta })
    }
    while let Some(top) = stack.last_mut() {
        let Some(child) = top.rest.pop() else {
            let done = stack.pop().expect("a directory is being filled");
            apply_meta(&path, &done.meta, options)?;
            if !stack.is_empty() {
                path.pop();
            }
            continue;
        };
        check_name(&child.dirent.elem)?;
        path.push(&child.dirent.elem);
        if path.as_os_str().len() >= PATH_MAX {
            return Err(Error::Invalid(format!(
                "the archive nests deeper than a Linux path can reach ({} levels below {}, \
                 PATH_MAX is {PATH_MAX} bytes): extract a subtree with `unvac SCORE DEST PATH`",
                stack.len(),
                dest.display()
            )));
        }
        match extract_one(archive, &child, &path, options, observer, &mut stats)? {
            Some(meta) => stack.push(frame_of(archive, &child, meta)?),
            None => {
                path.pop();
            }
        }
    }
    Ok(stats)
}

/// Extracts one node to `dest`. A directory is created (writable while it is
/// filled) and its metadata returned, to be applied once its children are in.
fn extract_one(
    archive: &Archive,
    node: &Node,
    dest: &Path,
    options: ExtractOptions,
    observer: &dyn Observer,
    stats: &mut Stats,
) -> Result<Option<Meta>> {
    let data = if unix::needs_data(&node.dirent) {
        archive.read_small(node, 4096)?
    } else {
        Vec::new()
    };
    let (meta, _) = Meta::from_dirent(&node.dirent, &data)?;
    stats.files += 1;
    observer.file();
    match &meta.kind {
        Kind::Dir => {
            if node.dir.is_none() {
                return Err(Error::corrupt(format!(
                    "{} is a directory without streams",
                    dest.display()
                )));
            }
            match fs::create_dir(dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                Err(e) => return Err(Error::io(dest, e)),
            }
            // Writable while we fill it, whatever its archived mode.
            let _ = fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o700));
            return Ok(Some(meta));
        }
        Kind::File => {
            remove_non_dir(dest)?;
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dest)
                .map_err(|e| Error::io(dest, e))?;
            stats.bytes += write_file(archive, node, &file, dest, observer)?;
        }
        Kind::Symlink(target) => {
            remove_non_dir(dest)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), dest)
                .map_err(|e| Error::io(dest, e))?;
        }
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            if !options.devices {
                observer.warn(dest, "device node not created (needs root)");
                stats.warnings += 1;
                return Ok(None);
            }
            remove_non_dir(dest)?;
            let kind = if matches!(meta.kind, Kind::CharDevice { .. }) {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            mknod(
                dest,
                kind | (meta.perm & 0o777),
                unix::make_dev(*major, *minor),
            )?;
        }
        Kind::Fifo => {
            remove_non_dir(dest)?;
            mknod(dest, libc::S_IFIFO | (meta.perm & 0o777), 0)?;
        }
    }
    apply_meta(dest, &meta, options)?;
    Ok(None)
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

fn remove_non_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if !md.is_dir() => fs::remove_file(path).map_err(|e| Error::io(path, e)),
        _ => Ok(()),
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: path holds a NUL byte", path.display())))
}

fn mknod(path: &Path, mode: u32, dev: u64) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid), then times; never through a symlink.
fn apply_meta(path: &Path, meta: &Meta, options: ExtractOptions) -> Result<()> {
    let c = c_path(path)?;
    let is_link = matches!(meta.kind, Kind::Symlink(_));
    if options.owners {
        // SAFETY: c is a valid path; lchown does not follow symlinks.
        if unsafe { libc::lchown(c.as_ptr(), meta.uid, meta.gid) } != 0 {
            return Err(Error::io(path, io::Error::last_os_error()));
        }
    }
    if !is_link {
        // SAFETY: c is a valid path.
        if unsafe { libc::chmod(c.as_ptr(), meta.perm as libc::mode_t) } != 0 {
            return Err(Error::io(path, io::Error::last_os_error()));
        }
    }
    let t = libc::timespec {
        tv_sec: meta.mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: c is a valid path and times has two entries.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    Ok(())
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
