//! A small SFTP (version 3) server, enough for OpenSSH's `sftp` and `scp`
//! (which speaks SFTP since OpenSSH 9). It runs *inside* an environment —
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

enum Handle {
    File(File),
    /// A directory's names, and how many of them were sent.
    Dir(Vec<PathBuf>, usize),
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
            let mut list: Vec<PathBuf> = fs::read_dir(&path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            list.sort();
            list.insert(0, path.join(".."));
            list.insert(0, path.join("."));
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
                .map(|p| {
                    (
                        p.file_name()
                            .map_or_else(|| b"..".to_vec(), |n| n.as_encoded_bytes().to_vec()),
                        fs::symlink_metadata(p).ok(),
                    )
                })
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
        _ => status(id, UNSUPPORTED, "operation not supported"),
    })
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
}
