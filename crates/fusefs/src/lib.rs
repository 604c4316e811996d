//! The FUSE front of a fossil file system: each kernel request becomes one
//! engine call. Mounted with `allow_other` and `default_permissions`, so the
//! kernel checks permissions against the attributes, as for any root file
//! system. Device nodes are listed but cannot be opened, and setuid bits do
//! not raise privileges (`nodev`, `nosuid`): a root is user data.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fossil::{Attr, FileKind, Fs, FsError, SetAttr};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

pub use fuser::BackgroundSession;

/// How long the kernel may cache attributes and names. Changes made through
/// the 9P export of the same file system show through FUSE within this time.
const TTL: Duration = Duration::from_secs(1);

/// A fossil file system as a FUSE file system.
pub struct FuseFs {
    fs: Arc<Fs>,
    ids: Option<IdShift>,
}

/// Owners as a rootless environment's kernel sees them: the environment's
/// user namespace maps its ids `0..count` to the host's `base..base+count`,
/// so the file system shows archived id `n` as host id `base + n` (which the
/// namespace shows as `n` again) and stores a host id coming from inside
/// shifted back. The archive always holds the ids as they are inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    base: u32,
    count: u32,
}

/// The kernel's overflow id (`nobody`): what an id with no place in the
/// namespace's range is shown as, inside and out.
pub const OVERFLOW_ID: u32 = 65534;

impl IdShift {
    /// `None` when `base + count` does not fit in an id.
    pub fn new(base: u32, count: u32) -> Option<IdShift> {
        base.checked_add(count)?;
        Some(IdShift { base, count })
    }

    pub fn base(self) -> u32 {
        self.base
    }

    pub fn count(self) -> u32 {
        self.count
    }

    /// The host id that shows an archived id.
    pub fn to_host(self, id: u32) -> u32 {
        if id < self.count {
            self.base + id
        } else {
            OVERFLOW_ID
        }
    }

    /// The archived id of a host id. Ids outside the range come from the
    /// node's side (host root working on the mount), and are kept as they are.
    pub fn from_host(self, id: u32) -> u32 {
        match id.checked_sub(self.base) {
            Some(n) if n < self.count => n,
            _ => id,
        }
    }
}

/// Mounts `fs` at `mountpoint` and serves it on background threads until the
/// session is dropped or unmounted.
pub fn mount(fs: Arc<Fs>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    mount_with_ids(fs, mountpoint, None)
}

/// As [`mount`], with owners shifted for a user namespace (see [`IdShift`]).
pub fn mount_with_ids(
    fs: Arc<Fs>,
    mountpoint: &Path,
    ids: Option<IdShift>,
) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("colony".into()),
        MountOption::Subtype("fossil".into()),
        MountOption::DefaultPermissions,
        // Device nodes and setuid files in a user's root must not act on the host.
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(4);
    fuser::spawn_mount(FuseFs { fs, ids }, mountpoint, &config)
}

fn errno(e: FsError) -> Errno {
    if e.errno == libc::EIO {
        tracing::warn!(error = %e, "I/O error in the file system");
    }
    Errno::from_i32(e.errno)
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kernel's 32-bit device encoding (new_encode_dev).
fn kernel_rdev(rdev: u64) -> u32 {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

fn dev_from_kernel(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    let (major, minor) = (major as u64, minor as u64);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

fn fuse_attr(a: &Attr, ids: Option<IdShift>) -> FileAttr {
    let shown = |id: u32| ids.map_or(id, |s| s.to_host(id));
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: shown(a.uid),
        gid: shown(a.gid),
        rdev: kernel_rdev(a.rdev),
        blksize: 64 * 1024,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl FuseFs {
    fn attr(&self, a: &Attr) -> FileAttr {
        fuse_attr(a, self.ids)
    }

    /// An owner the kernel sent (a creator's fsuid, a chown), as archived.
    fn stored(&self, id: u32) -> u32 {
        self.ids.map_or(id, |s| s.from_host(id))
    }

    /// The archived owner and group of a request's creator.
    fn creator(&self, req: &Request) -> (u32, u32) {
        (self.stored(req.uid()), self.stored(req.gid()))
    }

    fn entry(&self, result: Result<Attr, FsError>, reply: ReplyEntry) {
        match result {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for FuseFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name_of(name) {
            Ok(name) => self.entry(self.fs.lookup(parent.0, name), reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid: uid.map(|id| self.stored(id)),
            gid: gid.map(|id| self.stored(id)),
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.fs.setattr(ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.creator(req);
        match name_of(name) {
            Ok(name) => {
                let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
                self.entry(
                    self.fs
                        .mknod(parent.0, name, mode, dev_from_kernel(rdev), uid, gid),
                    reply,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.creator(req);
        match name_of(name) {
            Ok(name) => self.entry(
                self.fs
                    .mkdir(parent.0, name, mode & 0o7777 & !umask, uid, gid),
                reply,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name).and_then(|n| self.fs.unlink(parent.0, n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name).and_then(|n| self.fs.rmdir(parent.0, n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.creator(req);
        match name_of(link_name) {
            Ok(name) => self.entry(
                self.fs
                    .symlink(parent.0, name, target.as_os_str().as_bytes(), uid, gid),
                reply,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = name_of(name).and_then(|n| {
            let nn = name_of(newname)?;
            self.fs
                .rename(parent.0, n, newparent.0, nn, no_replace)
                .map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match name_of(newname) {
            Ok(name) => self.entry(self.fs.link(ino.0, newparent.0, name), reply),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open_file(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
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
        match self.fs.write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
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
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(ino.0);
        reply.ok();
    }

    /// Changes are durable only when saved; there is nothing more to force.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(a) if a.kind == FileKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (parent, list) = match self.fs.readdir(ino.0) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_string()),
            (parent, FileType::Directory, "..".to_string()),
        ];
        let all = dots
            .into_iter()
            .chain(list.into_iter().map(|l| (l.ino, file_type(l.kind), l.name)));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files + 1_000_000,
            1_000_000,
            s.block_size,
            fossil::fs::NAME_MAX as u32,
            s.block_size,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has already checked.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (uid, gid) = self.creator(req);
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let result = self
            .fs
            .create(parent.0, name, mode & 0o7777 & !umask, uid, gid)
            .and_then(|a| self.fs.open_file(a.ino));
        match result {
            Ok(a) => reply.created(
                &TTL,
                &self.attr(&a),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_ids_go_out_and_come_back_and_the_rest_is_kept() {
        let s = IdShift::new(1 << 30, 65536).unwrap();
        for id in [0, 1, 1000, 65533, 65535] {
            assert_eq!(s.to_host(id), (1 << 30) + id);
            assert_eq!(s.from_host(s.to_host(id)), id);
        }
        // Archived ids past the range show as nobody; the archive keeps them
        // as long as nobody changes the owner.
        assert_eq!(s.to_host(65536), OVERFLOW_ID);
        assert_eq!(s.to_host(u32::MAX), OVERFLOW_ID);
        // Host ids outside the range (the node's own, root's) are stored as they are.
        for id in [0, 1000, (1 << 30) - 1, (1 << 30) + 65536] {
            assert_eq!(s.from_host(id), id);
        }
        assert!(IdShift::new(u32::MAX - 10, 65536).is_none());
    }

    #[test]
    fn device_numbers_survive_the_kernel_encoding() {
        for (major, minor) in [(1u64, 3u64), (8, 1), (259, 65536), (4095, 255)] {
            let dev = ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff);
            assert_eq!(dev_from_kernel(kernel_rdev(dev)), dev, "{major}:{minor}");
        }
    }
}
