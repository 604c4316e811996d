//! A 9P2000 server over a fossil file system: one thread per connection,
//! requests answered in order (so a Tflush always finds its request already
//! answered, which the protocol allows).

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fossil::{Attr, FileKind, Fs, FsError, ROOT_INO, SetAttr};

use ninep::fcall::*;
use ninep::server::{self, Replies};

/// Largest msize we agree to.
pub const MAX_MSIZE: u32 = 128 * 1024 + IOHDRSZ;

/// Serves `fs` on `listener`, a thread per client, for good.
pub fn serve(listener: TcpListener, fs: Arc<Fs>) {
    serve_with(listener, fs, Options::default())
}

/// Choices of the operator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// 9P2000 has no authentication here, so the user name is whatever the
    /// client says; attaching as root (`0` or `root`) is refused unless this
    /// is set (for trusted networks and tests).
    pub allow_root: bool,
}

/// Serves `fs` on `listener` with `options`; a thread per client. A failed
/// accept (out of file descriptors, say) is logged and retried after a
/// pause: it never ends the server, which serves for good.
pub fn serve_with(listener: TcpListener, fs: Arc<Fs>, options: Options) {
    loop {
        let (stream, peer) = link::listener::accept_blocking(&listener, "9P");
        let fs = fs.clone();
        std::thread::spawn(move || match Session::new(fs, options).run(stream) {
            Ok(()) => tracing::debug!(%peer, "9P connection closed"),
            Err(e) => tracing::info!(%peer, error = %e, "9P connection ended"),
        });
    }
}

/// Serves one client on `stream` (a TLS session, say) until it closes.
/// Requests are answered in order, so one stream does for both directions:
/// it is read and written in turn.
pub fn serve_stream(stream: impl Read + Write, fs: Arc<Fs>, options: Options) -> io::Result<()> {
    let stream = std::cell::RefCell::new(stream);
    let input = BufReader::new(Half(&stream));
    let output = BufWriter::new(Half(&stream));
    server::serve(input, &Replies::new(output), &mut Session::new(fs, options))
}

/// One direction of a stream served in turn (see [`serve_stream`]).
struct Half<'a, S>(&'a std::cell::RefCell<S>);

impl<S: Read> Read for Half<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl<S: Write> Write for Half<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Who is attached: numeric ids for permission checks.
#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
}

impl User {
    /// A numeric name, else a name from /etc/passwd, else `nobody`.
    fn from_uname(uname: &str) -> User {
        if let Ok(uid) = uname.parse() {
            return User { uid, gid: uid };
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3
                && f[0] == uname
                && let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse())
            {
                return User { uid, gid };
            }
        }
        User {
            uid: 65534,
            gid: 65534,
        }
    }

    /// Owner/group/other permission check; root may do anything.
    fn may(&self, attr: &Attr, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let bits = if attr.uid == self.uid {
            attr.perm >> 6
        } else if attr.gid == self.gid {
            attr.perm >> 3
        } else {
            attr.perm
        } & 7;
        bits & want == want
    }
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

struct Fid {
    /// Names from the root to here: (inode, name); the root is (ROOT_INO, "/").
    path: Vec<(u64, String)>,
    user: User,
    open: Option<u8>,
    remove_on_clunk: bool,
    /// A directory being read: its encoded entries and where the next read starts.
    listing: Option<(Vec<Vec<u8>>, usize, u64)>,
}

impl Fid {
    fn ino(&self) -> u64 {
        self.path.last().expect("never empty").0
    }
    fn parent(&self) -> Option<(u64, &str)> {
        let n = self.path.len();
        (n >= 2).then(|| (self.path[n - 2].0, self.path[n - 1].1.as_str()))
    }
}

struct Session {
    fs: Arc<Fs>,
    options: Options,
    msize: u32,
    fids: HashMap<u32, Fid>,
}

fn secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

fn qid_of(a: &Attr) -> Qid {
    let ty = match a.kind {
        FileKind::Dir => QTDIR,
        FileKind::Symlink => QTSYMLINK,
        _ => QTFILE,
    };
    Qid {
        ty,
        version: secs(a.mtime),
        path: a.ino,
    }
}

fn stat_of(a: &Attr, name: &str) -> Stat {
    let mut mode = a.perm & 0o777;
    mode |= match a.kind {
        FileKind::Dir => DMDIR,
        FileKind::Symlink => DMSYMLINK,
        FileKind::CharDevice | FileKind::BlockDevice => DMDEVICE,
        FileKind::Fifo => DMNAMEDPIPE,
        FileKind::Socket => DMSOCKET,
        FileKind::File => 0,
    };
    if a.perm & 0o4000 != 0 {
        mode |= DMSETUID;
    }
    if a.perm & 0o2000 != 0 {
        mode |= DMSETGID;
    }
    Stat {
        ty: 0,
        dev: 0,
        qid: qid_of(a),
        mode,
        atime: secs(a.atime),
        mtime: secs(a.mtime),
        length: if a.kind == FileKind::Dir { 0 } else { a.size },
        name: name.to_string(),
        uid: a.uid.to_string(),
        gid: a.gid.to_string(),
        muid: a.uid.to_string(),
    }
}

type Reply = Result<Fcall, String>;

fn fs_err(e: FsError) -> String {
    e.message
}

/// Fossil answers every request at once and in order.
impl<W: Write> server::Service<W> for Session {
    fn max_msize(&self) -> u32 {
        MAX_MSIZE
    }

    fn version(&mut self, msize: u32) {
        self.clunk_all();
        self.msize = msize;
    }

    fn handle(&mut self, _tag: u16, request: Fcall, _later: &Replies<W>) -> Option<Fcall> {
        Some(self.answer(request).unwrap_or_else(server::error))
    }

    fn hang_up(&mut self) {
        self.clunk_all();
    }
}

impl Session {
    fn new(fs: Arc<Fs>, options: Options) -> Session {
        Session {
            fs,
            options,
            msize: server::FIRST_MSIZE,
            fids: HashMap::new(),
        }
    }

    fn run(mut self, stream: TcpStream) -> io::Result<()> {
        let input = BufReader::new(stream.try_clone()?);
        server::serve(input, &Replies::new(BufWriter::new(stream)), &mut self)
    }

    fn clunk_all(&mut self) {
        for (_, fid) in std::mem::take(&mut self.fids) {
            // Connection teardown: nobody is left to hear a failure.
            let _ = self.close(fid);
        }
    }

    /// Releases a fid: closes an open file, removes an ORCLOSE one.
    fn close(&mut self, fid: Fid) -> Reply {
        let ino = fid.ino();
        if fid.open.is_some() && fid.listing.is_none() {
            self.fs.release(ino);
        }
        if fid.remove_on_clunk {
            return self.remove_path(&fid).map(|()| Fcall::Rclunk);
        }
        Ok(Fcall::Rclunk)
    }

    /// Fails if the name the fid was walked through now names another file
    /// (renamed or replaced through FUSE or another connection).
    fn still_named(&self, fid: &Fid) -> Result<(), String> {
        let (parent, name) = fid.parent().ok_or("the root has no name")?;
        match self.fs.lookup(parent, name) {
            Ok(a) if a.ino == fid.ino() => Ok(()),
            _ => Err(format!(
                "{name} has been renamed or replaced since it was walked to"
            )),
        }
    }

    fn remove_path(&self, fid: &Fid) -> Result<(), String> {
        self.still_named(fid)?;
        let (parent, name) = fid.parent().ok_or("cannot remove the root")?;
        let attr = self.fs.getattr(fid.ino()).map_err(fs_err)?;
        let pattr = self.fs.getattr(parent).map_err(fs_err)?;
        if !fid.user.may(&pattr, W) {
            return Err("permission denied".into());
        }
        let result = if attr.kind == FileKind::Dir {
            self.fs.rmdir(parent, name)
        } else {
            self.fs.unlink(parent, name)
        };
        result.map_err(fs_err)
    }

    fn fid(&self, fid: u32) -> Result<&Fid, String> {
        self.fids
            .get(&fid)
            .ok_or_else(|| format!("unknown fid {fid}"))
    }

    fn iounit(&self) -> u32 {
        self.msize - IOHDRSZ
    }

    fn answer(&mut self, request: Fcall) -> Reply {
        match request {
            Fcall::Tauth { .. } => Err("colony: authentication not required".into()),
            Fcall::Tattach {
                fid, afid, uname, ..
            } => {
                if afid != NOFID {
                    return Err("colony: authentication not required".into());
                }
                if self.fids.contains_key(&fid) {
                    return Err(format!("fid {fid} is in use"));
                }
                let user = User::from_uname(&uname);
                if user.uid == 0 && !self.options.allow_root {
                    return Err("root may not attach: this 9P service has no authentication".into());
                }
                let attr = self.fs.getattr(ROOT_INO).map_err(fs_err)?;
                let f = Fid {
                    path: vec![(ROOT_INO, "/".into())],
                    user,
                    open: None,
                    remove_on_clunk: false,
                    listing: None,
                };
                self.fids.insert(fid, f);
                Ok(Fcall::Rattach { qid: qid_of(&attr) })
            }
            Fcall::Tflush { .. } => Ok(Fcall::Rflush),
            Fcall::Twalk {
                fid,
                newfid,
                wnames,
            } => self.walk(fid, newfid, &wnames),
            Fcall::Topen { fid, mode } => self.open(fid, mode),
            Fcall::Tcreate {
                fid,
                name,
                perm,
                mode,
            } => self.create(fid, &name, perm, mode),
            Fcall::Tread { fid, offset, count } => self.read(fid, offset, count),
            Fcall::Twrite { fid, offset, data } => {
                let f = self.fid(fid)?;
                if !matches!(f.open.map(|m| m & 3), Some(OWRITE | ORDWR)) {
                    return Err("file not open for writing".into());
                }
                let ino = f.ino();
                let n = data.len().min(self.iounit() as usize);
                let written = self.fs.write(ino, offset, &data[..n]).map_err(fs_err)?;
                Ok(Fcall::Rwrite {
                    count: written as u32,
                })
            }
            Fcall::Tclunk { fid } => {
                let f = self
                    .fids
                    .remove(&fid)
                    .ok_or_else(|| format!("unknown fid {fid}"))?;
                // The fid is gone even if closing fails.
                let _ = self.close(f);
                Ok(Fcall::Rclunk)
            }
            Fcall::Tremove { fid } => {
                let f = self
                    .fids
                    .remove(&fid)
                    .ok_or_else(|| format!("unknown fid {fid}"))?;
                if f.open.is_some() && f.listing.is_none() {
                    self.fs.release(f.ino());
                }
                self.remove_path(&f).map(|()| Fcall::Rremove)
            }
            Fcall::Tstat { fid } => {
                let f = self.fid(fid)?;
                let attr = self.fs.getattr(f.ino()).map_err(fs_err)?;
                let name = f.path.last().map(|(_, n)| n.clone()).unwrap_or_default();
                Ok(Fcall::Rstat {
                    stat: stat_of(&attr, &name),
                })
            }
            Fcall::Twstat { fid, stat } => self.wstat(fid, &stat),
            other => Err(format!("unexpected message {other:?}")
                .chars()
                .take(100)
                .collect()),
        }
    }

    fn walk(&mut self, fid: u32, newfid: u32, wnames: &[String]) -> Reply {
        let f = self.fid(fid)?;
        if f.open.is_some() {
            return Err("cannot walk an open fid".into());
        }
        if newfid != fid && self.fids.contains_key(&newfid) {
            return Err(format!("fid {newfid} is in use"));
        }
        let user = f.user;
        let mut path = f.path.clone();
        let mut qids = Vec::with_capacity(wnames.len());
        for (i, name) in wnames.iter().enumerate() {
            let here = path.last().expect("never empty").0;
            let step = (|| {
                let attr = self.fs.getattr(here).map_err(fs_err)?;
                if attr.kind != FileKind::Dir {
                    return Err("not a directory".to_string());
                }
                if !user.may(&attr, X) {
                    return Err("permission denied".to_string());
                }
                if name == ".." {
                    if path.len() > 1 {
                        path.pop();
                    }
                    return self
                        .fs
                        .getattr(path.last().expect("root").0)
                        .map_err(fs_err);
                }
                let child = self.fs.lookup(here, name).map_err(fs_err)?;
                path.push((child.ino, name.clone()));
                Ok(child)
            })();
            match step {
                Ok(attr) => qids.push(qid_of(&attr)),
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok(Fcall::Rwalk { qids }),
            }
        }
        let f = Fid {
            path,
            user,
            open: None,
            remove_on_clunk: false,
            listing: None,
        };
        self.fids.insert(newfid, f);
        Ok(Fcall::Rwalk { qids })
    }

    fn open(&mut self, fid: u32, mode: u8) -> Reply {
        let iounit = self.iounit();
        let f = self.fid(fid)?;
        if f.open.is_some() {
            return Err("fid is already open".into());
        }
        let ino = f.ino();
        let user = f.user;
        let attr = self.fs.getattr(ino).map_err(fs_err)?;
        let want = match mode & 3 {
            OREAD => R,
            OWRITE => W,
            ORDWR => R | W,
            _ => X,
        } | if mode & OTRUNC != 0 { W } else { 0 };
        if attr.kind == FileKind::Dir
            && (mode & 3 == OWRITE || mode & 3 == ORDWR || mode & (OTRUNC | ORCLOSE) != 0)
        {
            return Err("is a directory".into());
        }
        if !user.may(&attr, want) {
            return Err("permission denied".into());
        }
        if mode & ORCLOSE != 0 {
            let (parent, _) = f.parent().ok_or("cannot remove the root")?;
            let pattr = self.fs.getattr(parent).map_err(fs_err)?;
            if !user.may(&pattr, W) {
                return Err("permission denied".into());
            }
        }
        let attr = if attr.kind == FileKind::Dir {
            attr
        } else {
            if mode & OTRUNC != 0 {
                self.fs
                    .setattr(
                        ino,
                        &SetAttr {
                            size: Some(0),
                            ..Default::default()
                        },
                    )
                    .map_err(fs_err)?;
            }
            self.fs.open_file(ino).map_err(fs_err)?
        };
        let f = self.fids.get_mut(&fid).expect("checked");
        f.open = Some(mode);
        f.remove_on_clunk = mode & ORCLOSE != 0;
        if attr.kind == FileKind::Dir {
            f.listing = Some((Vec::new(), 0, 0));
        }
        Ok(Fcall::Ropen {
            qid: qid_of(&attr),
            iounit,
        })
    }

    fn create(&mut self, fid: u32, name: &str, perm: u32, mode: u8) -> Reply {
        let iounit = self.iounit();
        let f = self.fid(fid)?;
        if f.open.is_some() {
            return Err("fid is already open".into());
        }
        if name == "." || name == ".." {
            return Err(format!("cannot create {name}"));
        }
        let dir = f.ino();
        let user = f.user;
        let dattr = self.fs.getattr(dir).map_err(fs_err)?;
        if dattr.kind != FileKind::Dir {
            return Err("not a directory".into());
        }
        if !user.may(&dattr, W) {
            return Err("permission denied".into());
        }
        if perm & (DMSYMLINK | DMDEVICE | DMNAMEDPIPE | DMSOCKET) != 0 {
            return Err("special files cannot be created over 9P2000".into());
        }
        let attr = if perm & DMDIR != 0 {
            let bits = perm & (!0o777 | (dattr.perm & 0o777)) & 0o777;
            self.fs
                .mkdir(dir, name, bits, user.uid, dattr.gid)
                .map_err(fs_err)?
        } else {
            let bits = perm & (!0o666 | (dattr.perm & 0o666)) & 0o777;
            let a = self
                .fs
                .create(dir, name, bits, user.uid, dattr.gid)
                .map_err(fs_err)?;
            self.fs.open_file(a.ino).map_err(fs_err)?
        };
        let f = self.fids.get_mut(&fid).expect("checked");
        f.path.push((attr.ino, name.to_string()));
        f.open = Some(mode);
        f.remove_on_clunk = mode & ORCLOSE != 0;
        if attr.kind == FileKind::Dir {
            f.listing = Some((Vec::new(), 0, 0));
        }
        Ok(Fcall::Rcreate {
            qid: qid_of(&attr),
            iounit,
        })
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Reply {
        let count = count.min(self.iounit());
        let f = self.fid(fid)?;
        let Some(mode) = f.open else {
            return Err("file not open".into());
        };
        if mode & 3 == OWRITE {
            return Err("file not open for reading".into());
        }
        let ino = f.ino();
        if f.listing.is_none() {
            let data = self.fs.read(ino, offset, count).map_err(fs_err)?;
            return Ok(Fcall::Rread { data });
        }
        // Directory: offset 0 rewinds; otherwise it must continue the last read.
        if offset == 0 {
            let (_, children) = self.fs.readdir(ino).map_err(fs_err)?;
            let mut entries = Vec::with_capacity(children.len());
            for c in children {
                if let Ok(attr) = self.fs.getattr(c.ino) {
                    let mut e = Vec::new();
                    stat_of(&attr, &c.name).encode(&mut e);
                    entries.push(e);
                }
            }
            self.fids.get_mut(&fid).expect("checked").listing = Some((entries, 0, 0));
        }
        let f = self.fids.get_mut(&fid).expect("checked");
        let (entries, next, next_offset) = f.listing.as_mut().expect("a directory");
        if offset != *next_offset {
            return Err("bad offset in directory read".into());
        }
        let mut data = Vec::new();
        while *next < entries.len() && data.len() + entries[*next].len() <= count as usize {
            data.extend_from_slice(&entries[*next]);
            *next += 1;
        }
        *next_offset += data.len() as u64;
        Ok(Fcall::Rread { data })
    }

    fn wstat(&mut self, fid: u32, stat: &Stat) -> Reply {
        let f = self.fid(fid)?;
        let ino = f.ino();
        let user = f.user;
        let attr = self.fs.getattr(ino).map_err(fs_err)?;
        let dont = Stat::dont_touch();
        let owner = user.uid == 0 || user.uid == attr.uid;
        // Validate everything first: all or nothing.
        let rename = (!stat.name.is_empty()
            && Some(stat.name.as_str()) != f.path.last().map(|(_, n)| n.as_str()))
        .then_some(stat.name.clone());
        if let Some(new) = &rename {
            fossil::check_name(new).map_err(fs_err)?;
            self.still_named(f)?;
            let (parent, _) = f.parent().ok_or("cannot rename the root")?;
            let pattr = self.fs.getattr(parent).map_err(fs_err)?;
            if !user.may(&pattr, W) {
                return Err("permission denied".into());
            }
            if self.fs.lookup(parent, new).is_ok() {
                return Err(format!("{new}: file exists"));
            }
        }
        if stat.length != dont.length {
            if attr.kind == FileKind::Dir && stat.length != 0 {
                return Err("a directory's length can only be 0".into());
            }
            if stat.length > fossil::MAX_FILE_SIZE {
                return Err(fs_err(fossil::FsError::too_big()));
            }
            if !user.may(&attr, W) {
                return Err("permission denied".into());
            }
        }
        if stat.mode != dont.mode {
            if (stat.mode & DMDIR != 0) != (attr.kind == FileKind::Dir) {
                return Err("cannot change a file's DMDIR bit".into());
            }
            if !owner {
                return Err("only the owner may change the mode".into());
            }
        }
        if stat.mtime != dont.mtime && !owner {
            return Err("only the owner may change the mtime".into());
        }
        let gid = if stat.gid.is_empty() {
            None
        } else {
            let gid: u32 = stat
                .gid
                .parse()
                .map_err(|_| format!("unknown group {:?}", stat.gid))?;
            if !owner {
                return Err("only the owner may change the group".into());
            }
            Some(gid)
        };
        if !stat.uid.is_empty() && stat.uid != attr.uid.to_string() {
            return Err("the owner cannot be changed".into());
        }

        // Apply.
        let mut set = SetAttr {
            gid,
            ..Default::default()
        };
        if stat.length != dont.length && attr.kind != FileKind::Dir {
            set.size = Some(stat.length);
        }
        if stat.mode != dont.mode {
            let mut perm = stat.mode & 0o777;
            if stat.mode & DMSETUID != 0 {
                perm |= 0o4000;
            }
            if stat.mode & DMSETGID != 0 {
                perm |= 0o2000;
            }
            perm |= attr.perm & 0o1000;
            set.mode = Some(perm);
        }
        if stat.mtime != dont.mtime {
            set.mtime = Some(UNIX_EPOCH + std::time::Duration::from_secs(stat.mtime as u64));
        }
        if set.size.is_some() || set.mode.is_some() || set.mtime.is_some() || set.gid.is_some() {
            self.fs.setattr(ino, &set).map_err(fs_err)?;
        }
        if let Some(new) = rename {
            let f = self.fids.get(&fid).expect("checked");
            let (parent, old) = f.parent().expect("checked above");
            let old = old.to_string();
            self.fs
                .rename(parent, &old, parent, &new, true)
                .map_err(fs_err)?;
            // Every fid naming the file by its old name follows it.
            for other in self.fids.values_mut() {
                if let Some(slot) = other.path.iter_mut().find(|(i, n)| *i == ino && *n == old) {
                    slot.1 = new.clone();
                }
            }
        }
        Ok(Fcall::Rwstat)
    }
}
