//! Hubs mounted on Linux through FUSE: the same hub set as the 9P server,
//! so `cat DIR/chat` and `9p read hubs/chat` read one hub.
//!
//! Hubs are files opened with direct I/O and no seeking (the kernel's page
//! cache must never answer a read of a stream); a read that waits for data
//! waits on a thread of its own, so waiting readers never hold the mount's
//! request threads. The kernel checks permissions (`default_permissions`)
//! against each hub's owner and mode: a hub made through the mount belongs
//! to its creator's uid.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, WriteFlags,
};

use crate::hub::{Got, HubError, HubInfo, HubSet, ReaderId};

pub use fuser::BackgroundSession;

const ROOT: u64 = 1;
const CTL: u64 = 2;
/// A hub's inode: past the two fixed ones.
fn hub_ino(id: u64) -> u64 {
    2 + id
}

const TTL: Duration = Duration::from_secs(0);

/// Mounts `hubs` on `mountpoint`; unmounted when the session drops.
pub fn mount(hubs: Arc<HubSet>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("hubfs".into()),
        MountOption::Subtype("hubfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    fuser::spawn_mount(HubFuse { hubs }, mountpoint, &config)
}

struct HubFuse {
    hubs: Arc<HubSet>,
}

fn errno(e: &HubError) -> Errno {
    Errno::from_i32(match e {
        HubError::NoHub(_) => libc::ENOENT,
        HubError::Exists(_) => libc::EEXIST,
        HubError::TooMany(_) => libc::ENOSPC,
        HubError::BadName(..) | HubError::BadCtl(_) => libc::EINVAL,
        HubError::TooBig(..) => libc::EFBIG,
        HubError::Denied(_) => libc::EACCES,
        HubError::Interrupted => libc::EINTR,
        // A reader that lost bytes is told once: EIO, then it reads on.
        HubError::Lost { .. } => libc::EIO,
    })
}

/// A hub's owner as a uid: a number, or a name from /etc/passwd, else nobody.
fn uid_of(owner: &str) -> u32 {
    if let Ok(n) = owner.parse() {
        return n;
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == owner)
                .and_then(|f| f[2].parse().ok())
        })
        .unwrap_or(65534)
}

fn attr(ino: u64, kind: FileType, perm: u16, size: u64, uid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid: uid,
        rdev: 0,
        blksize: 64 * 1024,
        flags: 0,
    }
}

fn hub_attr(h: &HubInfo) -> FileAttr {
    attr(
        hub_ino(h.id),
        FileType::RegularFile,
        (h.mode & 0o777) as u16,
        h.kept,
        uid_of(&h.owner),
    )
}

impl HubFuse {
    fn hub_by_ino(&self, ino: u64) -> Option<HubInfo> {
        self.hubs.list().into_iter().find(|h| hub_ino(h.id) == ino)
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        match ino {
            ROOT => Some(attr(ROOT, FileType::Directory, 0o777, 0, 0)),
            CTL => Some(attr(
                CTL,
                FileType::RegularFile,
                0o666,
                self.hubs.status().len() as u64,
                0,
            )),
            _ => self.hub_by_ino(ino).map(|h| hub_attr(&h)),
        }
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))
}

/// The streaming flags of an open hub.
fn stream_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NONSEEKABLE
}

impl Filesystem for HubFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(Errno::from_i32(libc::ENOENT));
        }
        let found = match name_of(name) {
            Ok("ctl") => self.attr_of(CTL),
            Ok(n) => self.hubs.info(n).ok().map(|h| hub_attr(&h)),
            Err(e) => return reply.error(e),
        };
        match found {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    /// Only truncation (an `O_TRUNC` open, `>` in a shell) comes here; a
    /// hub has no size to set, so it is a no-op.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr_of(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CTL {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let Some(h) = self.hub_by_ino(ino.0) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        let write_only = flags.0 & libc::O_ACCMODE == libc::O_WRONLY;
        if write_only {
            return reply.opened(FileHandle(0), stream_flags());
        }
        match self.hubs.open_reader(&h.name) {
            Ok(ReaderId(r)) => reply.opened(FileHandle(r), stream_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CTL {
            let text = self.hubs.status().into_bytes();
            let from = (offset as usize).min(text.len());
            let to = (from + size as usize).min(text.len());
            return reply.data(&text[from..to]);
        }
        let Some(h) = self.hub_by_ino(ino.0) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        if self.hubs.frozen() {
            return match self.hubs.read_at(&h.name, offset, size as usize) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let hubs = self.hubs.clone();
        std::thread::spawn(move || {
            let never = AtomicBool::new(false);
            match hubs.read(&h.name, ReaderId(fh.0), size as usize, &never) {
                Ok(Got::Data(d)) => reply.data(&d),
                Ok(Got::Eof) => reply.data(&[]),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == CTL {
            let text = String::from_utf8_lossy(data).into_owned();
            let r = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .try_for_each(|l| self.hubs.ctl(l));
            return match r {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    tracing::info!(error = %e, "hub ctl");
                    reply.error(errno(&e))
                }
            };
        }
        let Some(h) = self.hub_by_ino(ino.0) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        if self.hubs.frozen() {
            return match self.hubs.write_at(&h.name, offset, data) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            };
        }
        // A write may wait (fear mode, a rate limit): not on a request thread.
        let (hubs, data) = (self.hubs.clone(), data.to_vec());
        std::thread::spawn(move || match hubs.write(&h.name, &data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 != 0
            && let Some(h) = self.hub_by_ino(ino.0)
        {
            self.hubs.close_reader(&h.name, ReaderId(fh.0));
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            reply.opened(FileHandle(0), FopenFlags::empty())
        } else {
            reply.error(Errno::from_i32(libc::ENOTDIR))
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut all = vec![
            (ROOT, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
            (CTL, FileType::RegularFile, "ctl".to_string()),
        ];
        all.extend(
            self.hubs
                .list()
                .into_iter()
                .map(|h| (hub_ino(h.id), FileType::RegularFile, h.name)),
        );
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT {
            return reply.error(Errno::from_i32(libc::EACCES));
        }
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let made = self
            .hubs
            .create(name, &req.uid().to_string(), mode & 0o777 & !umask);
        let info = match made {
            Ok(i) => i,
            Err(e) => return reply.error(errno(&e)),
        };
        let fh = if flags & libc::O_ACCMODE == libc::O_WRONLY {
            0
        } else {
            match self.hubs.open_reader(name) {
                Ok(ReaderId(r)) => r,
                Err(e) => return reply.error(errno(&e)),
            }
        };
        reply.created(
            &TTL,
            &hub_attr(&info),
            Generation(0),
            FileHandle(fh),
            stream_flags(),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if parent.0 != ROOT || name == "ctl" {
            return reply.error(Errno::from_i32(libc::EACCES));
        }
        match self.hubs.info(name) {
            Ok(h) if req.uid() != 0 && uid_of(&h.owner) != req.uid() => {
                reply.error(Errno::from_i32(libc::EACCES))
            }
            Ok(_) => match self.hubs.remove(name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }
}
