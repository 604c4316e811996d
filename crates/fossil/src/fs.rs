//! The file system: inodes over a vac archive, loaded lazily, changed in a
//! bounded cache, saved back to vac on request.
//!
//! All state sits behind one mutex. Block fetches for plain reads happen with
//! the lock released (the read takes a consistent snapshot of what it needs
//! first), so a cold read does not stall other operations; writes and
//! directory loads fetch under the lock, which keeps every change atomic with
//! respect to `save`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use vac::entry::Entry;
use vac::reader::{Dir, Node};
use vac::tree::BlockSizes;
use vac::unix::{Kind, Meta};
use venti::{BlockStore, Score};

use crate::cache::CachingStore;
use crate::dirty::{BlockId, CacheConfig, DirtyBlocks};
use crate::error::{FsError, FsResult};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Longest file name.
pub const NAME_MAX: usize = 255;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// An inode's attributes as the front ends report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (Unix positions).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Device number for device nodes (Linux dev_t encoding).
    pub rdev: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// The file's archive qid (stable across saves).
    pub qid: u64,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// One directory entry as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
    pub ino: u64,
    pub kind: FileKind,
}

/// File-system totals, for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
}

/// Figures for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub dirty_blocks: u32,
    pub capacity_blocks: u32,
    pub fetched_bytes: u64,
    pub fetched_blocks: u64,
    pub read_cache_bytes: u64,
    pub inodes: usize,
}

pub(crate) enum Content {
    File {
        /// The archived stream, if the file has one.
        base: Option<Entry>,
        /// Bytes of `base` still valid (a truncate may cut it).
        base_len: u64,
        /// Changed blocks by index.
        blocks: BTreeMap<u64, BlockId>,
    },
    Dir {
        base: Option<Dir>,
        /// `None` until first needed; then every name, archived or new.
        children: Option<BTreeMap<String, u64>>,
        parent: u64,
        /// A name was added, removed or renamed since the last save.
        membership_changed: bool,
    },
    Symlink {
        target: Option<Vec<u8>>,
        base: Option<Entry>,
    },
    /// Devices, fifos, sockets: all in the attributes.
    Special { base: Option<Entry> },
}

pub(crate) struct Inode {
    pub attr: Attr,
    pub content: Content,
    /// Attributes or data differ from the last saved archive.
    pub changed: bool,
    /// Open handles; an unlinked file lives until the last closes.
    pub open: u32,
}

pub(crate) struct State {
    pub inodes: HashMap<u64, Inode>,
    /// The most inodes held before a new file is refused (ENOSPC): each
    /// costs this process memory (about a KiB with its name), so a tenant
    /// making empty files by the hundred thousand would otherwise grow the
    /// node without bound. See [`Fs::max_inodes`].
    pub max_inodes: usize,
    pub next_ino: u64,
    pub next_qid: u64,
    pub root_score: Score,
    pub dirty: DirtyBlocks,
}

/// Bytes of cache that allow one inode: a file system may hold one inode
/// for each KiB of its cache (100,000 for spawn's 100 MB), at least 1,024.
pub const CACHE_BYTES_PER_INODE: u64 = 1024;

/// The largest file the vac format can hold: a VtEntry's size has 48 bits.
/// Larger sizes are refused (EFBIG), never cut on save.
pub const MAX_FILE_SIZE: u64 = (1 << 48) - 1;

/// A live file system over a vac root.
pub struct Fs {
    pub(crate) store: Arc<CachingStore>,
    pub(crate) state: Mutex<State>,
    pub(crate) sizes: BlockSizes,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn epoch(secs: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
}

fn kind_of(meta: &Meta) -> (FileKind, u64) {
    match meta.kind {
        Kind::File => (FileKind::File, 0),
        Kind::Dir => (FileKind::Dir, 0),
        Kind::Symlink(_) => (FileKind::Symlink, 0),
        Kind::CharDevice { major, minor } => {
            (FileKind::CharDevice, vac::unix::make_dev(major, minor))
        }
        Kind::BlockDevice { major, minor } => {
            (FileKind::BlockDevice, vac::unix::make_dev(major, minor))
        }
        Kind::Fifo => (FileKind::Fifo, 0),
    }
}

/// Checks a name for a directory entry.
pub fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(FsError::invalid(format!(
            "{name:?} is not a valid file name"
        )));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!("file name longer than {NAME_MAX} bytes"),
        ));
    }
    Ok(())
}

impl Fs {
    /// The most inodes a file system with a cache of `cache_bytes` holds
    /// before it refuses a new file.
    pub fn max_inodes(cache_bytes: u64) -> usize {
        (cache_bytes / CACHE_BYTES_PER_INODE).clamp(1024, usize::MAX as u64) as usize
    }

    /// Opens `root` (a vac root score) over `store`. Costs the three block reads
    /// of the archive's root, whatever its size.
    pub fn open(store: Arc<dyn BlockStore>, root: Score, config: CacheConfig) -> FsResult<Fs> {
        let dirty_bytes = Arc::new(AtomicU64::new(0));
        let read_capacity = match &config {
            CacheConfig::Memory { bytes } => *bytes,
            CacheConfig::Disk { read_cache, .. } => *read_cache,
        };
        let caching = Arc::new(CachingStore::new(store, read_capacity, dirty_bytes.clone()));
        let archive = vac::Archive::open(caching.as_ref(), &root).map_err(|e| match e {
            vac::Error::Invalid(msg) => FsError::invalid(msg),
            e => FsError::io(format!("opening vac:{root}: {e}")),
        })?;
        let block_size = archive.root.block_size;
        let sizes = BlockSizes {
            dsize: block_size,
            // Whole scores, at least 256 bytes (what every vac reader
            // requires, so a root of 256..259-byte blocks still reads back)
            // and no larger than a block can be.
            psize: (block_size / 20 * 20).clamp(260, venti::MAX_BLOCK_SIZE as u32 / 20 * 20),
        };
        let dirty = DirtyBlocks::new(&config, block_size as usize, dirty_bytes)?;
        let root_node = archive.root().clone();
        let next_qid = root_node
            .dirent
            .qid_space
            .map(|(_, max)| max)
            .unwrap_or(root_node.dirent.qid + 1)
            .max(1);
        let cache_bytes = match &config {
            CacheConfig::Memory { bytes } => *bytes,
            CacheConfig::Disk { bytes, .. } => *bytes,
        };
        let mut state = State {
            inodes: HashMap::new(),
            max_inodes: Fs::max_inodes(cache_bytes),
            next_ino: ROOT_INO,
            next_qid,
            root_score: root,
            dirty,
        };
        let (meta, _) = Meta::from_dirent(&root_node.dirent, &[])?;
        let attr = attr_from(ROOT_INO, &meta, &root_node, 0);
        state.inodes.insert(
            ROOT_INO,
            Inode {
                attr,
                content: Content::Dir {
                    base: root_node.dir,
                    children: None,
                    parent: ROOT_INO,
                    membership_changed: false,
                },
                changed: false,
                open: 0,
            },
        );
        state.next_ino = ROOT_INO + 1;
        drop(archive);
        Ok(Fs {
            store: caching,
            state: Mutex::new(state),
            sizes,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The root score of the last save (or of the archive opened).
    pub fn root_score(&self) -> Score {
        self.lock().root_score
    }

    pub fn block_size(&self) -> u32 {
        self.sizes.dsize
    }

    pub fn usage(&self) -> Usage {
        let st = self.lock();
        let (dirty_blocks, capacity_blocks) = st.dirty.usage();
        let (fetched_bytes, fetched_blocks) = self.store.fetched();
        Usage {
            dirty_blocks,
            capacity_blocks,
            fetched_bytes,
            fetched_blocks,
            read_cache_bytes: self.store.cached_bytes(),
            inodes: st.inodes.len(),
        }
    }

    pub fn statfs(&self) -> StatFs {
        let st = self.lock();
        let (used, cap) = st.dirty.usage();
        StatFs {
            block_size: self.sizes.dsize,
            blocks: cap as u64,
            blocks_free: (cap - used) as u64,
            files: st.inodes.len() as u64,
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let st = self.lock();
        Ok(st.inode(ino)?.attr.clone())
    }

    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let mut st = self.lock();
        let ino = self
            .child(&mut st, parent, name)?
            .ok_or_else(|| FsError::not_found(name))?;
        Ok(st.inode(ino)?.attr.clone())
    }

    /// The entries of a directory, without `.` and `..`; and its parent.
    pub fn readdir(&self, ino: u64) -> FsResult<(u64, Vec<Listing>)> {
        let mut st = self.lock();
        self.load_dir(&mut st, ino)?;
        let Content::Dir {
            children: Some(children),
            parent,
            ..
        } = &st.inode(ino)?.content
        else {
            return Err(FsError::not_dir());
        };
        let parent = *parent;
        let list = children
            .iter()
            .map(|(name, &child)| Listing {
                name: name.clone(),
                ino: child,
                kind: st.inodes[&child].attr.kind,
            })
            .collect();
        Ok((parent, list))
    }

    /// A directory's parent (the root is its own parent).
    pub fn parent(&self, ino: u64) -> FsResult<u64> {
        match &self.lock().inode(ino)?.content {
            Content::Dir { parent, .. } => Ok(*parent),
            _ => Err(FsError::not_dir()),
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut st = self.lock();
        let inode = st.inode_mut(ino)?;
        match &mut inode.content {
            Content::Symlink {
                target: Some(t), ..
            } => Ok(t.clone()),
            Content::Symlink {
                target,
                base: Some(entry),
            } => {
                let t = vac::reader::read_small(self.store.as_ref(), entry, 64 << 10)?;
                *target = Some(t.clone());
                Ok(t)
            }
            _ => Err(FsError::invalid("not a symbolic link")),
        }
    }

    /// Notes an open handle on a file.
    pub fn open_file(&self, ino: u64) -> FsResult<Attr> {
        let mut st = self.lock();
        let inode = st.inode_mut(ino)?;
        inode.open += 1;
        Ok(inode.attr.clone())
    }

    /// Drops an open handle; an unlinked file goes when its last handle does.
    pub fn release(&self, ino: u64) {
        let mut st = self.lock();
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
            if inode.open == 0 && inode.attr.nlink == 0 {
                st.drop_inode(ino);
            }
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let bs = self.sizes.dsize as u64;
        // Snapshot what the read needs, then fetch without the lock.
        let (file_size, base, base_len, dirty) = {
            let st = self.lock();
            let inode = st.inode(ino)?;
            let Content::File {
                base,
                base_len,
                blocks,
            } = &inode.content
            else {
                return Err(if inode.attr.kind == FileKind::Dir {
                    FsError::is_dir()
                } else {
                    FsError::invalid("not a regular file")
                });
            };
            let file_size = inode.attr.size;
            if offset >= file_size {
                return Ok(Vec::new());
            }
            let end = offset.saturating_add(size as u64).min(file_size);
            let mut dirty = HashMap::new();
            for (&k, &id) in blocks.range(offset / bs..end.div_ceil(bs)) {
                dirty.insert(k, st.dirty.get(id)?);
            }
            (file_size, *base, *base_len, dirty)
        };
        let end = offset.saturating_add(size as u64).min(file_size);
        let mut out = vec![0u8; (end - offset) as usize];
        let mut reader = match base {
            Some(entry) if base_len > 0 => {
                Some(vac::stream::StreamReader::new(self.store.as_ref(), entry)?)
            }
            _ => None,
        };
        let mut pos = offset;
        while pos < end {
            let k = pos / bs;
            let within = (pos % bs) as usize;
            let n = ((bs - within as u64).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            if let Some(block) = dirty.get(&k) {
                dst.copy_from_slice(&block[within..within + n]);
            } else if let (Some(r), true) = (reader.as_mut(), pos < base_len) {
                // Valid archived bytes end at base_len; the rest is zero. Read
                // by byte range: the archive's leaves may be of another size.
                let have = ((base_len - pos) as usize).min(n);
                let got = r.read_at(pos, &mut dst[..have])?;
                dst[got..].fill(0);
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`. A write that fills the cache part-way
    /// returns how much it wrote; one that can write nothing is ENOSPC.
    ///
    /// A write past [`MAX_FILE_SIZE`] is EFBIG (one that crosses it is cut
    /// there), and a zero-length write changes nothing, wherever it points.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let bs = self.sizes.dsize as u64;
        let mut st = self.lock();
        let State { inodes, dirty, .. } = &mut *st;
        let inode = inodes.get_mut(&ino).ok_or_else(FsError::stale)?;
        let file_size = inode.attr.size;
        let Content::File {
            base,
            base_len,
            blocks,
        } = &mut inode.content
        else {
            return Err(if inode.attr.kind == FileKind::Dir {
                FsError::is_dir()
            } else {
                FsError::invalid("not a regular file")
            });
        };
        if data.is_empty() {
            return Ok(0);
        }
        if offset >= MAX_FILE_SIZE {
            return Err(FsError::too_big());
        }
        let data = &data[..data.len().min((MAX_FILE_SIZE - offset) as usize)];
        let mut written = 0usize;
        while written < data.len() {
            let pos = offset + written as u64;
            let k = pos / bs;
            let within = (pos % bs) as usize;
            let n = (bs as usize - within).min(data.len() - written);
            let chunk = &data[written..written + n];
            let result = match blocks.get(&k) {
                Some(&id) => dirty.put(id, within, chunk),
                None => {
                    // Copy on write: start from the archived block unless the
                    // write covers all of it.
                    let initial = match base {
                        Some(entry) if k * bs < *base_len && n < bs as usize => {
                            let mut block = vec![0u8; ((*base_len - k * bs).min(bs)) as usize];
                            let got = vac::stream::StreamReader::new(self.store.as_ref(), *entry)?
                                .read_at(k * bs, &mut block)?;
                            block.truncate(got);
                            block
                        }
                        _ => Vec::new(),
                    };
                    dirty.alloc(&initial).and_then(|id| {
                        blocks.insert(k, id);
                        dirty.put(id, within, chunk)
                    })
                }
            };
            if let Err(e) = result {
                if written == 0 {
                    self.store.make_room();
                    return Err(e);
                }
                break;
            }
            written += n;
        }
        let t = now();
        inode.attr.size = file_size.max(offset + written as u64);
        inode.attr.mtime = t;
        inode.attr.ctime = t;
        inode.changed = true;
        self.store.make_room();
        Ok(written)
    }

    pub fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        let mut st = self.lock();
        if let Some(size) = set.size {
            st.truncate(ino, size, self.sizes.dsize as u64)?;
        }
        let inode = st.inode_mut(ino)?;
        let t = now();
        if let Some(mode) = set.mode {
            inode.attr.perm = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            inode.attr.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.attr.gid = gid;
        }
        if let Some(a) = set.atime {
            inode.attr.atime = a;
        }
        if let Some(m) = set.mtime {
            inode.attr.mtime = m;
        } else if set.size.is_some() {
            inode.attr.mtime = t;
        }
        inode.attr.ctime = t;
        inode.changed = true;
        Ok(inode.attr.clone())
    }

    /// Creates a regular file.
    pub fn create(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        self.make(
            parent,
            name,
            FileKind::File,
            mode,
            uid,
            gid,
            0,
            Content::File {
                base: None,
                base_len: 0,
                blocks: BTreeMap::new(),
            },
        )
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        let content = Content::Dir {
            base: None,
            children: Some(BTreeMap::new()),
            parent,
            membership_changed: true,
        };
        self.make(parent, name, FileKind::Dir, mode, uid, gid, 0, content)
    }

    /// Creates a device node, fifo, socket or (for S_IFREG) a regular file.
    pub fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => return self.create(parent, name, mode, uid, gid),
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return Err(FsError::invalid("mknod of an unknown file type")),
        };
        self.make(
            parent,
            name,
            kind,
            mode,
            uid,
            gid,
            rdev,
            Content::Special { base: None },
        )
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let attr = self.make(
            parent,
            name,
            FileKind::Symlink,
            0o777,
            uid,
            gid,
            0,
            Content::Symlink {
                target: Some(target.to_vec()),
                base: None,
            },
        )?;
        let mut st = self.lock();
        let inode = st.inode_mut(attr.ino)?;
        inode.attr.size = target.len() as u64;
        Ok(inode.attr.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        parent: u64,
        name: &str,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        content: Content,
    ) -> FsResult<Attr> {
        check_name(name)?;
        let mut st = self.lock();
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(FsError::exists(name));
        }
        if st.inodes.len() >= st.max_inodes {
            return Err(FsError::new(
                libc::ENOSPC,
                format!(
                    "this file system holds its most files ({}, one per KiB of its cache): delete some",
                    st.max_inodes
                ),
            ));
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        let qid = st.next_qid;
        // A crafted archive can claim a qid space that ends at u64::MAX.
        st.next_qid = qid
            .checked_add(1)
            .ok_or_else(|| FsError::new(libc::ENOSPC, "the archive's qid space is used up"))?;
        let t = now();
        let attr = Attr {
            ino,
            kind,
            perm: mode & 0o7777,
            nlink: 1,
            uid,
            gid,
            size: 0,
            rdev,
            atime: t,
            mtime: t,
            ctime: t,
            qid,
        };
        st.inodes.insert(
            ino,
            Inode {
                attr: attr.clone(),
                content,
                changed: true,
                open: 0,
            },
        );
        st.add_name(parent, name, ino)?;
        Ok(attr)
    }

    /// A new name for an existing file (not a directory).
    pub fn link(&self, ino: u64, parent: u64, name: &str) -> FsResult<Attr> {
        check_name(name)?;
        let mut st = self.lock();
        if st.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(FsError::new(
                libc::EPERM,
                "hard links to directories are not allowed",
            ));
        }
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(FsError::exists(name));
        }
        st.add_name(parent, name, ino)?;
        let inode = st.inode_mut(ino)?;
        inode.attr.nlink += 1;
        inode.attr.ctime = now();
        Ok(inode.attr.clone())
    }

    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        let mut st = self.lock();
        let ino = self
            .child(&mut st, parent, name)?
            .ok_or_else(|| FsError::not_found(name))?;
        if st.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(FsError::is_dir());
        }
        st.remove_name(parent, name)?;
        st.unref(ino);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        let mut st = self.lock();
        let ino = self
            .child(&mut st, parent, name)?
            .ok_or_else(|| FsError::not_found(name))?;
        if st.inode(ino)?.attr.kind != FileKind::Dir {
            return Err(FsError::not_dir());
        }
        self.ensure_empty(&mut st, ino, name)?;
        st.remove_name(parent, name)?;
        st.unref(ino);
        Ok(())
    }

    /// Renames, replacing an existing target as rename(2) does. With
    /// `no_replace`, an existing target is EEXIST.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        check_name(new_name)?;
        let mut st = self.lock();
        let ino = self
            .child(&mut st, parent, name)?
            .ok_or_else(|| FsError::not_found(name))?;
        let is_dir = st.inode(ino)?.attr.kind == FileKind::Dir;
        if st.inode(new_parent)?.attr.kind != FileKind::Dir {
            return Err(FsError::not_dir());
        }
        // A directory may not move below itself.
        if is_dir {
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(FsError::invalid("cannot move a directory into itself"));
                }
                let Content::Dir { parent: up, .. } = st.inode(at)?.content else {
                    break;
                };
                if at == ROOT_INO {
                    break;
                }
                at = up;
            }
        }
        if let Some(target) = self.child(&mut st, new_parent, new_name)? {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::exists(new_name));
            }
            match (is_dir, st.inode(target)?.attr.kind == FileKind::Dir) {
                (true, false) => return Err(FsError::not_dir()),
                (false, true) => return Err(FsError::is_dir()),
                (true, true) => self.ensure_empty(&mut st, target, new_name)?,
                (false, false) => {}
            }
            st.remove_name(new_parent, new_name)?;
            st.unref(target);
        }
        st.remove_name(parent, name)?;
        st.add_name(new_parent, new_name, ino)?;
        let inode = st.inode_mut(ino)?;
        inode.attr.ctime = now();
        inode.changed = true;
        if let Content::Dir { parent: p, .. } = &mut inode.content {
            *p = new_parent;
        }
        Ok(())
    }

    /// ENOTEMPTY unless directory `ino` (called `name`) has no entries.
    fn ensure_empty(&self, st: &mut State, ino: u64, name: &str) -> FsResult<()> {
        self.load_dir(st, ino)?;
        match &st.inode(ino)?.content {
            Content::Dir {
                children: Some(c), ..
            } if !c.is_empty() => Err(FsError::new(
                libc::ENOTEMPTY,
                format!("{name}: directory not empty"),
            )),
            _ => Ok(()),
        }
    }

    /// The child named `name` of directory `parent`, loading the directory.
    fn child(&self, st: &mut State, parent: u64, name: &str) -> FsResult<Option<u64>> {
        self.load_dir(st, parent)?;
        match &st.inode(parent)?.content {
            Content::Dir {
                children: Some(c), ..
            } => Ok(c.get(name).copied()),
            _ => Err(FsError::not_dir()),
        }
    }

    /// Reads an archived directory's entries into inodes, once.
    fn load_dir(&self, st: &mut State, ino: u64) -> FsResult<()> {
        let base = match &st.inode(ino)?.content {
            Content::Dir {
                children: Some(_), ..
            } => return Ok(()),
            Content::Dir {
                children: None,
                base,
                ..
            } => *base,
            _ => return Err(FsError::not_dir()),
        };
        let nodes = match base {
            Some(dir) => vac::reader::list_dir(self.store.as_ref(), &dir)?,
            None => Vec::new(),
        };
        let mut children = BTreeMap::new();
        for node in nodes {
            if check_name(&node.dirent.elem).is_err() {
                tracing::warn!(name = %node.dirent.elem, "skipping an archived entry with an unusable name");
                continue;
            }
            let data = if vac::unix::needs_data(&node.dirent)
                && node.dirent.mode & vac::dirent::mode::LINK == 0
            {
                vac::reader::read_small(self.store.as_ref(), &node.entry, 4096)?
            } else {
                Vec::new()
            };
            let (meta, _) = Meta::from_dirent(&node.dirent, &data)?;
            let child = st.next_ino;
            st.next_ino += 1;
            let attr = attr_from(child, &meta, &node, 1);
            let content = match meta.kind {
                Kind::Dir => Content::Dir {
                    base: node.dir,
                    children: None,
                    parent: ino,
                    membership_changed: false,
                },
                Kind::File => Content::File {
                    base: Some(node.entry),
                    base_len: node.entry.size,
                    blocks: BTreeMap::new(),
                },
                Kind::Symlink(_) => Content::Symlink {
                    target: None,
                    base: Some(node.entry),
                },
                _ => Content::Special {
                    base: Some(node.entry),
                },
            };
            st.inodes.insert(
                child,
                Inode {
                    attr,
                    content,
                    changed: false,
                    open: 0,
                },
            );
            children.insert(node.dirent.elem.clone(), child);
        }
        if let Content::Dir { children: slot, .. } = &mut st.inode_mut(ino)?.content {
            *slot = Some(children);
        }
        Ok(())
    }
}

/// Attributes of an archived node.
fn attr_from(ino: u64, meta: &Meta, node: &Node, nlink: u32) -> Attr {
    let (kind, rdev) = kind_of(meta);
    let size = match kind {
        FileKind::File | FileKind::Symlink => node.entry.size,
        _ => 0,
    };
    let d = &node.dirent;
    Attr {
        ino,
        kind,
        perm: meta.perm,
        nlink: nlink.max(1),
        uid: meta.uid,
        gid: meta.gid,
        size,
        rdev,
        atime: epoch(d.atime),
        mtime: epoch(d.mtime),
        ctime: epoch(d.ctime),
        qid: d.qid,
    }
}

impl State {
    pub(crate) fn inode(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or_else(FsError::stale)
    }

    pub(crate) fn inode_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(FsError::stale)
    }

    fn dir_children(&mut self, dir: u64) -> FsResult<&mut BTreeMap<String, u64>> {
        let inode = self.inode_mut(dir)?;
        let t = now();
        inode.attr.mtime = t;
        inode.attr.ctime = t;
        inode.changed = true;
        match &mut inode.content {
            Content::Dir {
                children: Some(c),
                membership_changed,
                ..
            } => {
                *membership_changed = true;
                Ok(c)
            }
            _ => Err(FsError::not_dir()),
        }
    }

    fn add_name(&mut self, dir: u64, name: &str, ino: u64) -> FsResult<()> {
        self.dir_children(dir)?.insert(name.to_string(), ino);
        Ok(())
    }

    fn remove_name(&mut self, dir: u64, name: &str) -> FsResult<()> {
        self.dir_children(dir)?.remove(name);
        Ok(())
    }

    /// One name fewer for `ino`; frees it when nothing refers to it.
    fn unref(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.attr.nlink = inode.attr.nlink.saturating_sub(1);
            inode.attr.ctime = now();
            if inode.attr.nlink == 0 && inode.open == 0 {
                self.drop_inode(ino);
            }
        }
    }

    /// Forgets an inode, returning its changed blocks to the cache.
    fn drop_inode(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.remove(&ino) {
            match inode.content {
                Content::File { blocks, .. } => {
                    for (_, id) in blocks {
                        self.dirty.release(id);
                    }
                }
                Content::Dir {
                    children: Some(children),
                    ..
                } => {
                    // Only empty directories are removed, but be safe.
                    for (_, child) in children {
                        self.unref(child);
                    }
                }
                _ => {}
            }
        }
    }

    fn truncate(&mut self, ino: u64, size: u64, bs: u64) -> FsResult<()> {
        let State { inodes, dirty, .. } = self;
        let inode = inodes.get_mut(&ino).ok_or_else(FsError::stale)?;
        let Content::File {
            base_len, blocks, ..
        } = &mut inode.content
        else {
            return Err(if inode.attr.kind == FileKind::Dir {
                FsError::is_dir()
            } else {
                FsError::invalid("not a regular file")
            });
        };
        if size > MAX_FILE_SIZE {
            return Err(FsError::too_big());
        }
        if size < inode.attr.size {
            let first_gone = size.div_ceil(bs);
            let gone: Vec<u64> = blocks.range(first_gone..).map(|(&k, _)| k).collect();
            for k in gone {
                if let Some(id) = blocks.remove(&k) {
                    dirty.release(id);
                }
            }
            if !size.is_multiple_of(bs)
                && let Some(&id) = blocks.get(&(size / bs))
            {
                dirty.zero_tail(id, (size % bs) as usize)?;
            }
            *base_len = (*base_len).min(size);
        }
        inode.attr.size = size;
        inode.changed = true;
        Ok(())
    }
}
