//! A small SFTP (version 3) server, enough for OpenSSH's `sftp` and `scp`
//! (which speaks SFTP since OpenSSH 9), and for `sshfs` and editors, with
//! the OpenSSH extensions they use: `posix-rename`, `statvfs` and
//! `fstatvfs` (so `df` on a mount shows the environment's cache, not a
//! made-up size), `hardlink`, `fsync` and `limits`. It runs *inside* an environment —
//! `colony __sftp-server` started there like any program, with the
//! environment's root, namespaces and capabilities — so paths mean what they
//! mean in the environment and nothing on the host is reachable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
const EXTENDED_REPLY: u8 = 201;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;

const OK: u32 = 0;
const EOF: u32 = 1;
const NO_SUCH_FILE: u32 = 2;
const PERMISSION_DENIED: u32 = 3;
const FAILURE: u32 = 4;
const BAD_MESSAGE: u32 = 5;
const UNSUPPORTED: u32 = 8;

const ATTR_SIZE: u32 = 1;
const ATTR_UIDGID: u32 = 2;
const ATTR_PERMISSIONS: u32 = 4;
const ATTR_ACMODTIME: u32 = 8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Largest packet we accept (OpenSSH sends at most 256 KiB).
const MAX_PACKET: usize = 1 << 20;

/// The most a client may receive in one message: OpenSSH's clients
/// refuse a longer one ("Received message too long").
const MAX_MESSAGE: usize = 256 << 10;
/// The most bytes one READ answers, as OpenSSH's server: a message's room
/// less a margin for its header.
const MAX_READ: usize = MAX_MESSAGE - 1024;
/// The most names one READDIR answers, as OpenSSH's server: the client
/// asks again until it is told the end.
const NAMES_PER_READDIR: usize = 100;

/// The extensions offered in VERSION, with their versions, as OpenSSH's
/// server names them.
const EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
];

/// Handles one session may hold open at once (as `limits` says): each is a
/// descriptor of the process.
const MAX_HANDLES: usize = 1024;

enum Handle {
    File(File),
    /// A directory's entries (each name, and the path to it), and how
    /// many of them were sent.
    Dir(Vec<(Vec<u8>, PathBuf)>, usize),
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short SFTP packet",
            ));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn path(&mut self) -> io::Result<PathBuf> {
        let b = self.bytes()?;
        // No Linux call takes a longer one; and a name goes back in replies
        // (REALPATH's twice), which must stay within MAX_MESSAGE.
        if b.len() >= libc::PATH_MAX as usize {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        Ok(PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b),
        ))
    }
}

/// Requested attribute changes.
#[derive(Default)]
struct Attrs {
    size: Option<u64>,
    owner: Option<(u32, u32)>,
    perm: Option<u32>,
    times: Option<(u32, u32)>,
}

fn read_attrs(c: &mut Cursor<'_>) -> io::Result<Attrs> {
    let flags = c.u32()?;
    let mut a = Attrs::default();
    if flags & ATTR_SIZE != 0 {
        a.size = Some(c.u64()?);
    }
    if flags & ATTR_UIDGID != 0 {
        a.owner = Some((c.u32()?, c.u32()?));
    }
    if flags & ATTR_PERMISSIONS != 0 {
        a.perm = Some(c.u32()?);
    }
    if flags & ATTR_ACMODTIME != 0 {
        a.times = Some((c.u32()?, c.u32()?));
    }
    if flags & ATTR_EXTENDED != 0 {
        for _ in 0..c.u32()? {
            c.bytes()?;
            c.bytes()?;
        }
    }
    Ok(a)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_attrs(out: &mut Vec<u8>, md: &fs::Metadata) {
    put_u32(
        out,
        ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME,
    );
    out.extend_from_slice(&md.size().to_be_bytes());
    put_u32(out, md.uid());
    put_u32(out, md.gid());
    put_u32(out, md.mode());
    put_u32(out, md.atime() as u32);
    put_u32(out, md.mtime() as u32);
}

fn apply(path: &Path, a: &Attrs) -> io::Result<()> {
    if let Some(size) = a.size {
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(perm) = a.perm {
        fs::set_permissions(path, fs::Permissions::from_mode(perm & 0o7777))?;
    }
    if let Some((uid, gid)) = a.owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    if let Some((atime, mtime)) = a.times {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        let t = [
            libc::timespec {
                tv_sec: atime as libc::time_t,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: mtime as libc::time_t,
                tv_nsec: 0,
            },
        ];
        // SAFETY: a valid path and two timespecs.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn status_code(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::NotFound => NO_SUCH_FILE,
        io::ErrorKind::PermissionDenied => PERMISSION_DENIED,
        _ => FAILURE,
    }
}

/// Serves one SFTP session on `input`/`output` until the client hangs up.
pub fn serve(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut handles: HashMap<u32, Handle> = HashMap::new();
    let mut next = 0u32;
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad SFTP packet length",
            ));
        }
        let mut packet = vec![0u8; len];
        input.read_exact(&mut packet)?;
        let kind = packet[0];
        let mut c = Cursor(&packet[1..]);
        let mut reply = Vec::new();
        if kind == INIT {
            reply.push(VERSION);
            put_u32(&mut reply, 3);
            for (name, version) in EXTENSIONS {
                put_bytes(&mut reply, name.as_bytes());
                put_bytes(&mut reply, version.as_bytes());
            }
        } else {
            let id = c.u32().unwrap_or(0);
            let result = handle(kind, id, &mut c, &mut handles, &mut next);
            match result {
                Ok(r) => reply = r,
                Err(e) => {
                    reply.push(STATUS);
                    put_u32(&mut reply, id);
                    let code = if e.kind() == io::ErrorKind::InvalidData {
                        BAD_MESSAGE
                    } else {
                        status_code(&e)
                    };
                    put_u32(&mut reply, code);
                    put_bytes(&mut reply, e.to_string().as_bytes());
                    put_bytes(&mut reply, b"");
                }
            }
        }
        if reply.len() > MAX_MESSAGE {
            // Never sent: OpenSSH's clients drop the session over it.
            let id = u32::from_be_bytes(
                packet[1..]
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or_default(),
            );
            reply = status(
                id,
                FAILURE,
                "the reply would pass the 256 KiB an SFTP message may be",
            );
        }
        let mut framed = (reply.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        output.write_all(&framed)?;
        output.flush()?;
    }
}

fn status(id: u32, code: u32, msg: &str) -> Vec<u8> {
    let mut r = vec![STATUS];
    put_u32(&mut r, id);
    put_u32(&mut r, code);
    put_bytes(&mut r, msg.as_bytes());
    put_bytes(&mut r, b"");
    r
}

fn handle_reply(id: u32, h: u32) -> Vec<u8> {
    let mut r = vec![HANDLE];
    put_u32(&mut r, id);
    put_bytes(&mut r, &h.to_be_bytes());
    r
}

fn attrs_reply(id: u32, md: &fs::Metadata) -> Vec<u8> {
    let mut r = vec![ATTRS];
    put_u32(&mut r, id);
    put_attrs(&mut r, md);
    r
}

fn name_reply(id: u32, entries: &[(Vec<u8>, Option<fs::Metadata>)]) -> Vec<u8> {
    let mut r = vec![NAME];
    put_u32(&mut r, id);
    put_u32(&mut r, entries.len() as u32);
    for (name, md) in entries {
        put_bytes(&mut r, name);
        match md {
            Some(md) => {
                let kind = if md.is_dir() {
                    'd'
                } else if md.file_type().is_symlink() {
                    'l'
                } else {
                    '-'
                };
                let long = format!(
                    "{kind}{:o} {} {} {} {}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.size(),
                    String::from_utf8_lossy(name)
                );
                put_bytes(&mut r, long.as_bytes());
                put_attrs(&mut r, md);
            }
            None => {
                put_bytes(&mut r, name);
                put_u32(&mut r, 0);
            }
        }
    }
    r
}

fn handle_id(c: &mut Cursor<'_>) -> io::Result<u32> {
    let b = c.bytes()?;
    Ok(u32::from_be_bytes(b.try_into().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, "bad handle")
    })?))
}

fn handle(
    kind: u8,
    id: u32,
    c: &mut Cursor<'_>,
    handles: &mut HashMap<u32, Handle>,
    next: &mut u32,
) -> io::Result<Vec<u8>> {
    let gone = || io::Error::new(io::ErrorKind::NotFound, "no such handle");
    if matches!(kind, OPEN | OPENDIR) && handles.len() >= MAX_HANDLES {
        return Ok(status(
            id,
            FAILURE,
            &format!("this session has {MAX_HANDLES} files open, the most it may"),
        ));
    }
    Ok(match kind {
        OPEN => {
            let path = c.path()?;
            let flags = c.u32()?;
            let attrs = read_attrs(c)?;
            let mut o = OpenOptions::new();
            o.read(flags & 1 != 0)
                .write(flags & 2 != 0)
                .append(flags & 4 != 0);
            if flags & 0x20 != 0 {
                o.create_new(true);
            } else if flags & 8 != 0 {
                o.create(true);
            }
            o.truncate(flags & 0x10 != 0);
            o.mode(attrs.perm.unwrap_or(0o644) & 0o7777);
            let f = o.open(&path)?;
            *next += 1;
            handles.insert(*next, Handle::File(f));
            handle_reply(id, *next)
        }
        OPENDIR => {
            let path = c.path()?;
            let mut list: Vec<(Vec<u8>, PathBuf)> = fs::read_dir(&path)?
                .filter_map(|e| e.ok())
                .map(|e| (e.file_name().into_encoded_bytes(), e.path()))
                .collect();
            list.sort();
            // Named as they are: a path ending in "." has the directory's
            // own name as its file name.
            list.insert(0, (b"..".to_vec(), path.join("..")));
            list.insert(0, (b".".to_vec(), path.clone()));
            *next += 1;
            handles.insert(*next, Handle::Dir(list, 0));
            handle_reply(id, *next)
        }
        CLOSE => {
            handles.remove(&handle_id(c)?).ok_or_else(gone)?;
            status(id, OK, "ok")
        }
        READ => {
            let h = handle_id(c)?;
            let offset = c.u64()?;
            let len = (c.u32()? as usize).min(MAX_READ);
            let Some(Handle::File(f)) = handles.get_mut(&h) else {
                return Err(gone());
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len];
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(status(id, EOF, "end of file"));
            }
            let mut r = vec![DATA];
            put_u32(&mut r, id);
            put_bytes(&mut r, &buf[..n]);
            r
        }
        WRITE => {
            let h = handle_id(c)?;
            let offset = c.u64()?;
            let data = c.bytes()?;
            let Some(Handle::File(f)) = handles.get_mut(&h) else {
                return Err(gone());
            };
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(data)?;
            status(id, OK, "ok")
        }
        READDIR => {
            let h = handle_id(c)?;
            let Some(Handle::Dir(list, sent)) = handles.get_mut(&h) else {
                return Err(gone());
            };
            if *sent == list.len() {
                return Ok(status(id, EOF, "end of directory"));
            }
            let batch = &list[*sent..list.len().min(*sent + NAMES_PER_READDIR)];
            *sent += batch.len();
            let entries: Vec<(Vec<u8>, Option<fs::Metadata>)> = batch
                .iter()
                .map(|(name, p)| (name.clone(), fs::symlink_metadata(p).ok()))
                .collect();
            name_reply(id, &entries)
        }
        LSTAT => attrs_reply(id, &fs::symlink_metadata(c.path()?)?),
        STAT => attrs_reply(id, &fs::metadata(c.path()?)?),
        FSTAT => {
            let Some(Handle::File(f)) = handles.get(&handle_id(c)?) else {
                return Err(gone());
            };
            attrs_reply(id, &f.metadata()?)
        }
        SETSTAT => {
            let path = c.path()?;
            apply(&path, &read_attrs(c)?)?;
            status(id, OK, "ok")
        }
        FSETSTAT => {
            let h = handle_id(c)?;
            let a = read_attrs(c)?;
            let Some(Handle::File(f)) = handles.get(&h) else {
                return Err(gone());
            };
            let path = fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(f)
            ))?;
            apply(&path, &a)?;
            status(id, OK, "ok")
        }
        REMOVE => {
            fs::remove_file(c.path()?)?;
            status(id, OK, "ok")
        }
        MKDIR => {
            let path = c.path()?;
            let a = read_attrs(c)?;
            fs::create_dir(&path)?;
            fs::set_permissions(
                &path,
                fs::Permissions::from_mode(a.perm.unwrap_or(0o755) & 0o7777),
            )?;
            status(id, OK, "ok")
        }
        RMDIR => {
            fs::remove_dir(c.path()?)?;
            status(id, OK, "ok")
        }
        REALPATH => {
            let path = c.path()?;
            let path = if path.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                path
            };
            let full = fs::canonicalize(&path)
                .or_else(|_| std::env::current_dir().map(|d| d.join(&path)))?;
            name_reply(id, &[(full.as_os_str().as_encoded_bytes().to_vec(), None)])
        }
        RENAME => {
            let from = c.path()?;
            let to = c.path()?;
            fs::rename(from, to)?;
            status(id, OK, "ok")
        }
        READLINK => {
            let target = fs::read_link(c.path()?)?;
            name_reply(
                id,
                &[(target.as_os_str().as_encoded_bytes().to_vec(), None)],
            )
        }
        SYMLINK => {
            // OpenSSH sends the target first (the reverse of the draft).
            let target = c.path()?;
            let link = c.path()?;
            std::os::unix::fs::symlink(target, link)?;
            status(id, OK, "ok")
        }
        EXTENDED => {
            let name = c.bytes()?;
            extended(name, id, c, handles)?
        }
        _ => status(id, UNSUPPORTED, "operation not supported"),
    })
}

/// An OpenSSH extension request (see [`EXTENSIONS`]).
fn extended(
    name: &[u8],
    id: u32,
    c: &mut Cursor<'_>,
    handles: &mut HashMap<u32, Handle>,
) -> io::Result<Vec<u8>> {
    let file = |c: &mut Cursor<'_>, handles: &HashMap<u32, Handle>| -> io::Result<File> {
        match handles.get(&handle_id(c)?) {
            Some(Handle::File(f)) => f.try_clone(),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such handle")),
        }
    };
    Ok(match name {
        b"posix-rename@openssh.com" => {
            let (from, to) = (c.path()?, c.path()?);
            fs::rename(from, to)?;
            status(id, OK, "ok")
        }
        b"hardlink@openssh.com" => {
            let (target, link) = (c.path()?, c.path()?);
            fs::hard_link(target, link)?;
            status(id, OK, "ok")
        }
        b"fsync@openssh.com" => {
            file(c, handles)?.sync_all()?;
            status(id, OK, "ok")
        }
        b"statvfs@openssh.com" => {
            let path = c.path()?;
            let path = std::ffi::CString::new(path.into_os_string().into_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a NUL in a path"))?;
            // SAFETY: statvfs with a NUL-terminated path and a local to fill.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            statvfs_reply(id, &st)
        }
        b"fstatvfs@openssh.com" => {
            let f = file(c, handles)?;
            // SAFETY: fstatvfs on an open descriptor, into a local.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstatvfs(std::os::fd::AsRawFd::as_raw_fd(&f), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            statvfs_reply(id, &st)
        }
        b"limits@openssh.com" => {
            let mut r = vec![EXTENDED_REPLY];
            put_u32(&mut r, id);
            for limit in [MAX_PACKET, MAX_READ, MAX_READ, MAX_HANDLES] {
                r.extend_from_slice(&(limit as u64).to_be_bytes());
            }
            r
        }
        _ => status(id, UNSUPPORTED, "extension not supported"),
    })
}

/// The statvfs@openssh.com reply: eleven 64-bit fields, as OpenSSH's
/// server sends them. (The casts are no-ops on 64-bit Linux only.)
#[allow(clippy::unnecessary_cast)]
fn statvfs_reply(id: u32, st: &libc::statvfs) -> Vec<u8> {
    const RDONLY: u64 = 1;
    const NOSUID: u64 = 2;
    let mut flag = 0;
    if st.f_flag & libc::ST_RDONLY != 0 {
        flag |= RDONLY;
    }
    if st.f_flag & libc::ST_NOSUID != 0 {
        flag |= NOSUID;
    }
    let mut r = vec![EXTENDED_REPLY];
    put_u32(&mut r, id);
    for field in [
        st.f_bsize as u64,
        st.f_frsize as u64,
        st.f_blocks as u64,
        st.f_bfree as u64,
        st.f_bavail as u64,
        st.f_files as u64,
        st.f_ffree as u64,
        st.f_favail as u64,
        st.f_fsid as u64,
        flag,
        st.f_namemax as u64,
    ] {
        r.extend_from_slice(&field.to_be_bytes());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One packet of `kind` with request id 7 and `body`, framed.
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![kind];
        put_u32(&mut p, 7);
        p.extend_from_slice(body);
        let mut framed = (p.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&p);
        framed
    }

    /// The replies' (type, id, length), in order.
    fn replies(mut out: &[u8]) -> Vec<(u8, u32, usize)> {
        let mut got = Vec::new();
        while out.len() >= 4 {
            let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
            let msg = &out[4..4 + len];
            got.push((
                msg[0],
                u32::from_be_bytes(msg[1..5].try_into().unwrap()),
                len,
            ));
            out = &out[4 + len..];
        }
        got
    }

    /// Found by fuzzing (`sftp_session`): REALPATH of a path of 221,776
    /// bytes answered a NAME of 443,575 (the name twice), past the 256 KiB
    /// OpenSSH's clients take, so the session ended. A path past PATH_MAX
    /// is now refused, and no reply passes the limit.
    #[test]
    fn a_huge_path_gets_a_status_within_the_message_limit() {
        let mut body = Vec::new();
        put_bytes(&mut body, "d/".repeat(110_888).as_bytes());
        let input = packet(REALPATH, &body);
        let mut out = Vec::new();
        serve(&input[..], &mut out).unwrap();
        let got = replies(&out);
        assert_eq!(got.len(), 1);
        let (kind, id, len) = got[0];
        assert_eq!((kind, id), (STATUS, 7));
        assert!(len <= MAX_MESSAGE, "{len}");
        // A path of ordinary length still resolves.
        let mut body = Vec::new();
        put_bytes(&mut body, b"/");
        let mut out = Vec::new();
        serve(&packet(REALPATH, &body)[..], &mut out).unwrap();
        assert_eq!(replies(&out)[0].0, NAME);
    }

    /// An EXTENDED request named `name` with `body`, framed.
    fn extended_packet(name: &str, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        put_bytes(&mut b, name.as_bytes());
        b.extend_from_slice(body);
        packet(EXTENDED, &b)
    }

    fn paths(list: &[&Path]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in list {
            put_bytes(&mut b, p.as_os_str().as_encoded_bytes());
        }
        b
    }

    #[test]
    fn the_openssh_extensions_sshfs_uses_are_offered_and_work() {
        // VERSION names them.
        let mut init = 5u32.to_be_bytes().to_vec();
        init.push(INIT);
        init.extend_from_slice(&3u32.to_be_bytes());
        let mut out = Vec::new();
        serve(&init[..], &mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        for (name, _) in EXTENSIONS {
            assert!(text.contains(name), "{name} not offered");
        }

        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, "new").unwrap();
        fs::write(&b, "old").unwrap();
        let mut input = extended_packet("posix-rename@openssh.com", &paths(&[&a, &b]));
        input.extend(extended_packet("hardlink@openssh.com", &paths(&[&b, &c])));
        input.extend(extended_packet(
            "statvfs@openssh.com",
            &paths(&[dir.path()]),
        ));
        input.extend(extended_packet("limits@openssh.com", &[]));
        input.extend(extended_packet("nonesuch@example.org", &[]));
        let mut out = Vec::new();
        serve(&input[..], &mut out).unwrap();
        let got = replies(&out);
        // Rename over an existing file (POSIX), then a hard link to it.
        assert_eq!(got[0].0, STATUS);
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
        assert_eq!(fs::read_to_string(&c).unwrap(), "new");
        assert_eq!(fs::metadata(&c).unwrap().nlink(), 2);
        // statvfs: eleven 64-bit fields after the type and id.
        assert_eq!((got[2].0, got[2].2), (EXTENDED_REPLY, 1 + 4 + 11 * 8));
        assert_eq!((got[3].0, got[3].2), (EXTENDED_REPLY, 1 + 4 + 4 * 8));
        assert_eq!(got[4].0, STATUS);
        assert!(String::from_utf8_lossy(&out).contains("extension not supported"));
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_handles() {
        let mut body = Vec::new();
        put_bytes(&mut body, b"/");
        let open = packet(OPENDIR, &body);
        let input: Vec<u8> = (0..=MAX_HANDLES).flat_map(|_| open.clone()).collect();
        let mut out = Vec::new();
        serve(&input[..], &mut out).unwrap();
        let got = replies(&out);
        assert!(got[..MAX_HANDLES].iter().all(|r| r.0 == HANDLE));
        assert_eq!(got[MAX_HANDLES].0, STATUS);
        assert!(String::from_utf8_lossy(&out).contains("files open, the most it may"));
    }

    /// Found by `scp -r` from an environment: "." was listed with the
    /// directory's own name (the file name of `DIR/.`), so scp went down
    /// into DIR/DIR, which is not there.
    #[test]
    fn a_listing_names_dot_and_dotdot_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        fs::create_dir(&top).unwrap();
        fs::write(top.join("file"), "x").unwrap();
        let mut body = Vec::new();
        put_bytes(&mut body, top.as_os_str().as_encoded_bytes());
        let mut input = packet(OPENDIR, &body);
        let mut handle = Vec::new();
        put_bytes(&mut handle, &1u32.to_be_bytes());
        input.extend(packet(READDIR, &handle));
        let mut out = Vec::new();
        serve(&input[..], &mut out).unwrap();
        let listing = String::from_utf8_lossy(&out);
        assert!(!listing.contains("top"), "{listing:?}");
        let got = replies(&out);
        assert_eq!(got[1].0, NAME);
        // Three entries.
        let msg = &out[4 + got[0].2 + 4..];
        assert_eq!(u32::from_be_bytes(msg[5..9].try_into().unwrap()), 3);
    }
}
