//! The engine without a front end: lazy loading, copy-on-write, save, the
//! bounded cache, concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fossil::{CacheConfig, FileKind, Fs, ROOT_INO, SetAttr};
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, BlockType, MemoryStore, Score, StoreError};

/// Counts reads and writes reaching the store.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl BlockStore for Counting {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read(score, ty)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn sample_root(store: &dyn BlockStore) -> Score {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    std::fs::create_dir_all(p.join("etc")).unwrap();
    std::fs::create_dir_all(p.join("usr/lib")).unwrap();
    std::fs::write(p.join("etc/os-release"), b"NAME=colony\n").unwrap();
    std::fs::write(
        p.join("etc/big"),
        (0..100_000u32).map(|i| i as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    for i in 0..300 {
        std::fs::write(p.join(format!("usr/lib/lib{i}.so")), vec![i as u8; 5000]).unwrap();
    }
    std::os::unix::fs::symlink("os-release", p.join("etc/link")).unwrap();
    let mut tree = Tree::default();
    DirImporter::new(store, BlockSizes::default(), &Quiet, None)
        .add(&mut tree, &p.join("."))
        .unwrap();
    tree.write(store, BlockSizes::default(), None).unwrap()
}

fn open(store: Arc<dyn BlockStore>, root: Score) -> Fs {
    Fs::open(store, root, CacheConfig::memory_default()).unwrap()
}

fn path(fs: &Fs, path: &str) -> u64 {
    path.split('/')
        .filter(|p| !p.is_empty())
        .fold(ROOT_INO, |ino, name| fs.lookup(ino, name).unwrap().ino)
}

#[test]
fn opening_costs_three_reads_and_reads_are_lazy() {
    let store = Arc::new(Counting::default());
    let root = sample_root(store.as_ref());
    store.reads.store(0, Ordering::Relaxed);
    let fs = open(store.clone(), root);
    assert_eq!(store.reads.load(Ordering::Relaxed), 3);
    let ino = path(&fs, "etc/os-release");
    assert_eq!(fs.read(ino, 0, 100).unwrap(), b"NAME=colony\n");
    let reads = store.reads.load(Ordering::Relaxed);
    assert!(reads <= 3 + 6, "{reads} reads to cat one file");
    // A second read of the same file comes from the cache.
    fs.read(ino, 0, 100).unwrap();
    assert_eq!(store.reads.load(Ordering::Relaxed), reads);
    assert_eq!(fs.readlink(path(&fs, "etc/link")).unwrap(), b"os-release");
}

#[test]
fn writes_are_copy_on_write_and_save_writes_only_what_changed() {
    let store = Arc::new(Counting::default());
    let root = sample_root(store.as_ref());
    let fs = open(store.clone(), root);
    let big = path(&fs, "etc/big");
    fs.write(big, 50_000, b"HELLO").unwrap();
    let data = fs.read(big, 49_998, 9).unwrap();
    assert_eq!(
        data,
        [
            (49_998u32 % 256) as u8,
            (49_999u32 % 256) as u8,
            b'H',
            b'E',
            b'L',
            b'L',
            b'O',
            (50_005u32 % 256) as u8,
            (50_006u32 % 256) as u8
        ]
    );
    assert_eq!(fs.usage().dirty_blocks, 1);

    store.writes.store(0, Ordering::Relaxed);
    let report = fs.save().unwrap();
    let writes = store.writes.load(Ordering::Relaxed);
    // One data leaf, the file's pointer block, etc's two streams, the root's
    // two streams, MR, the top block and the VtRoot.
    assert!(writes < 20, "{writes} blocks written for a one-file save");
    assert_eq!(report.blocks_released, 1);
    assert_eq!(fs.usage().dirty_blocks, 0);
    assert_ne!(report.score, root);

    // The new root reads back with vac's reader; usr/lib kept its streams.
    let old = vac::Archive::open(store.as_ref(), &root).unwrap();
    let new = vac::Archive::open(store.as_ref(), &report.score).unwrap();
    assert_eq!(new.root.prev, root);
    assert_eq!(
        old.walk("usr").unwrap().entry,
        new.walk("usr").unwrap().entry,
        "unchanged subtree keeps its score"
    );
    let node = new.walk("etc/big").unwrap();
    let mut buf = vec![0u8; 5];
    new.open_file(&node)
        .unwrap()
        .read_at(50_000, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"HELLO");

    // Saving again with no changes writes nothing and returns the same root.
    store.writes.store(0, Ordering::Relaxed);
    assert_eq!(fs.save().unwrap().score, report.score);
    assert_eq!(store.writes.load(Ordering::Relaxed), 0);
}

#[test]
fn namespace_operations_and_their_save() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let fs = open(store.clone(), root);
    let etc = path(&fs, "etc");
    let f = fs.create(etc, "new.conf", 0o640, 10, 20).unwrap();
    assert_eq!(fs.write(f.ino, 0, b"a=1\n").unwrap(), 4);
    let d = fs.mkdir(ROOT_INO, "srv", 0o755, 0, 0).unwrap();
    fs.rename(etc, "new.conf", d.ino, "moved.conf", false)
        .unwrap();
    assert!(fs.lookup(etc, "new.conf").is_err());
    // Rename over an existing file replaces it.
    fs.rename(etc, "os-release", etc, "big", false).unwrap();
    assert_eq!(
        fs.read(path(&fs, "etc/big"), 0, 100).unwrap(),
        b"NAME=colony\n"
    );
    assert_eq!(
        fs.rename(d.ino, "moved.conf", etc, "link", true)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    fs.symlink(d.ino, "sl", b"../etc/big", 0, 0).unwrap();
    fs.mknod(
        d.ino,
        "null",
        libc::S_IFCHR | 0o666,
        vac::unix::make_dev(1, 3),
        0,
        0,
    )
    .unwrap();
    fs.mknod(d.ino, "pipe", libc::S_IFIFO | 0o600, 0, 0, 0)
        .unwrap();
    fs.link(path(&fs, "srv/moved.conf"), etc, "hard.conf")
        .unwrap();
    assert_eq!(fs.getattr(path(&fs, "etc/hard.conf")).unwrap().nlink, 2);
    assert_eq!(
        fs.rmdir(ROOT_INO, "usr").unwrap_err().errno,
        libc::ENOTEMPTY
    );
    fs.unlink(path(&fs, "usr"), "lib").unwrap_err();
    let lib = path(&fs, "usr/lib");
    fs.unlink(lib, "lib7.so").unwrap();
    // Truncate down, then extend: the cut part reads as zeros.
    let so = path(&fs, "usr/lib/lib8.so");
    fs.setattr(
        so,
        &SetAttr {
            size: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        so,
        &SetAttr {
            size: Some(20),
            mode: Some(0o4755),
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = vec![8u8; 10];
    want.extend_from_slice(&[0; 10]);
    assert_eq!(fs.read(so, 0, 100).unwrap(), want);
    assert_eq!(
        fs.mkdir(d.ino, "moved.conf", 0o755, 0, 0)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.rename(ROOT_INO, "srv", d.ino, "inside", false)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );

    let saved = fs.save().unwrap().score;
    let a = vac::Archive::open(store.as_ref(), &saved).unwrap();
    let read = |p: &str| {
        let n = a.walk(p).unwrap();
        a.read_small(&n, 1 << 20).unwrap()
    };
    assert_eq!(read("srv/moved.conf"), b"a=1\n");
    assert_eq!(
        read("etc/hard.conf"),
        b"a=1\n",
        "a hard link is saved as a copy"
    );
    assert_eq!(read("srv/sl"), b"../etc/big");
    assert_eq!(read("usr/lib/lib8.so"), want);
    assert!(a.walk("usr/lib/lib7.so").is_err());
    assert!(a.walk("etc/os-release").is_err());
    let (meta, _) =
        vac::unix::Meta::from_dirent(&a.walk("srv/null").unwrap().dirent, &read("srv/null"))
            .unwrap();
    assert_eq!(
        meta.kind,
        vac::unix::Kind::CharDevice { major: 1, minor: 3 }
    );
    let so_dirent = a.walk("usr/lib/lib8.so").unwrap().dirent;
    assert_eq!(so_dirent.mode & 0o777, 0o755);
    assert_ne!(so_dirent.mode & vac::dirent::mode::SETUID, 0);
    let conf = a.walk("srv/moved.conf").unwrap().dirent;
    assert_eq!(
        (conf.uid.as_str(), conf.gid.as_str(), conf.mode & 0o777),
        ("10", "20", 0o640)
    );

    // A fresh file system on the saved root sees everything.
    let again = open(store.clone(), saved);
    assert_eq!(
        again.read(path(&again, "srv/moved.conf"), 0, 10).unwrap(),
        b"a=1\n"
    );
    assert_eq!(
        again.getattr(path(&again, "srv/pipe")).unwrap().kind,
        FileKind::Fifo
    );
}

#[test]
fn a_full_cache_is_enospc_and_deleting_frees_it() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let fs = Fs::open(store, root, CacheConfig::Memory { bytes: 64 * 8192 }).unwrap();
    let f = fs.create(ROOT_INO, "fill", 0o644, 0, 0).unwrap();
    let chunk = vec![1u8; 8192];
    let mut offset = 0u64;
    let err = loop {
        match fs.write(f.ino, offset, &chunk) {
            Ok(n) => offset += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno, libc::ENOSPC);
    assert_eq!(offset, 64 * 8192);
    // What was written is intact.
    assert_eq!(fs.read(f.ino, offset - 8192, 8192).unwrap(), chunk);
    // A partial write: room for one block, asked for two.
    fs.unlink(ROOT_INO, "fill").unwrap();
    let g = fs.create(ROOT_INO, "again", 0o644, 0, 0).unwrap();
    assert_eq!(
        fs.write(g.ino, 0, &vec![2u8; 63 * 8192]).unwrap(),
        63 * 8192
    );
    assert_eq!(
        fs.write(g.ino, 63 * 8192, &vec![3u8; 2 * 8192]).unwrap(),
        8192
    );
    // Save releases the blocks: writes work again.
    fs.save().unwrap();
    assert_eq!(fs.usage().dirty_blocks, 0);
    assert_eq!(fs.write(g.ino, 0, &chunk).unwrap(), 8192);
}

#[test]
fn the_disk_cache_works_like_the_memory_one() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig::Disk {
        path: dir.path().join("cache"),
        bytes: 32 * 8192,
        read_cache: 1 << 20,
    };
    let fs = Fs::open(store.clone(), root, config).unwrap();
    let f = fs.create(ROOT_INO, "f", 0o644, 0, 0).unwrap();
    fs.write(f.ino, 100, b"on disk").unwrap();
    assert_eq!(fs.read(f.ino, 100, 7).unwrap(), b"on disk");
    let err = fs
        .write(f.ino, 0, &vec![0u8; 33 * 8192])
        .map(|n| n < 33 * 8192);
    assert!(
        matches!(err, Ok(true)),
        "a short write when the disk cache fills"
    );
    let saved = fs.save().unwrap().score;
    let again = open(store, saved);
    assert_eq!(again.getattr(path(&again, "f")).unwrap().size, 32 * 8192);
}

#[test]
fn threads_read_and_write_at_once() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let fs = Arc::new(open(store.clone(), root));
    let lib = path(&fs, "usr/lib");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let f = fs.create(lib, &format!("thread{t}"), 0o644, 0, 0).unwrap();
                for i in 0..200u64 {
                    fs.write(f.ino, i * 100, &[t as u8; 100]).unwrap();
                    let so = fs
                        .lookup(lib, &format!("lib{}.so", (t * 37 + i) % 300))
                        .unwrap();
                    assert_eq!(
                        fs.read(so.ino, 0, 10).unwrap(),
                        vec![((t * 37 + i) % 300) as u8; 10]
                    );
                    if i == 100 && t == 0 {
                        fs.save().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let saved = fs.save().unwrap().score;
    let a = vac::Archive::open(store.as_ref(), &saved).unwrap();
    for t in 0..8 {
        let n = a.walk(&format!("usr/lib/thread{t}")).unwrap();
        assert_eq!(a.read_small(&n, 1 << 20).unwrap(), vec![t as u8; 20_000]);
    }
}

#[test]
fn a_missing_or_bogus_root_is_a_clear_error() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let err = Fs::open(
        store.clone(),
        "6f8f2141577ba09cd814316ef160871cc2dcadcc".parse().unwrap(),
        CacheConfig::memory_default(),
    )
    .err()
    .unwrap();
    assert!(err.message.contains("not in the store"), "{err}");
    let data = store.write(BlockType::ROOT, &[1u8; 300]).unwrap();
    let err = Fs::open(store, data, CacheConfig::memory_default())
        .err()
        .unwrap();
    assert!(err.message.contains("root"), "{err}");
}

/// A store that can be switched off, as a venti server that goes away.
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl BlockStore for Flaky {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::Remote(
                "venti server tcp!10.0.0.1!17034: connection refused".into(),
            ));
        }
        self.inner.read(score, ty)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn reads_fail_with_eio_while_the_store_is_away_and_recover_after() {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        down: false.into(),
    });
    let root = sample_root(store.as_ref());
    let fs = open(store.clone(), root);
    let ino = path(&fs, "etc/os-release");
    store.down.store(true, Ordering::Relaxed);
    let err = fs.read(ino, 0, 100).unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    assert!(err.message.contains("connection refused"), "{err}");
    assert_eq!(
        fs.lookup(ROOT_INO, "usr")
            .map(|_| ())
            .and_then(|_| fs.readdir(path(&fs, "usr")).map(|_| ()))
            .unwrap_err()
            .errno,
        libc::EIO
    );
    store.down.store(false, Ordering::Relaxed);
    assert_eq!(fs.read(ino, 0, 100).unwrap(), b"NAME=colony\n");
    assert!(
        fs.readdir(path(&fs, "usr"))
            .unwrap()
            .1
            .iter()
            .any(|l| l.name == "lib")
    );
}

#[test]
fn a_huge_sparse_file_saves_quickly_and_reads_back() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let fs = open(store.clone(), root);
    let f = fs.create(ROOT_INO, "sparse", 0o644, 0, 0).unwrap();
    let size = 100u64 << 40; // 100 TiB: 13 billion leaves if walked one by one
    fs.write(f.ino, size / 2, b"middle").unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(size),
            ..Default::default()
        },
    )
    .unwrap();
    let t = std::time::Instant::now();
    let saved = fs.save().unwrap().score;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "save took {:?}",
        t.elapsed()
    );
    let again = open(store, saved);
    let ino = path(&again, "sparse");
    assert_eq!(again.getattr(ino).unwrap().size, size);
    assert_eq!(
        again.read(ino, size / 2 - 2, 10).unwrap(),
        b"\0\0middle\0\0"
    );
    assert_eq!(again.read(ino, size - 3, 10).unwrap(), [0, 0, 0]);
}

#[test]
fn files_archived_with_another_block_size_read_and_save_correctly() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    // A file cut into 1 KiB leaves inside an archive of 8 KiB blocks.
    let entry = vac::stream::write_bytes(store.as_ref(), &data, 1020, 1024).unwrap();
    let mut tree = Tree::default();
    let meta = vac::unix::Meta {
        kind: vac::unix::Kind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1,
    };
    tree.insert(
        &["small-leaves"],
        vac::tree::TreeNode::Leaf { meta, data: entry },
    )
    .unwrap();
    let root = tree
        .write(store.as_ref(), BlockSizes::default(), None)
        .unwrap();
    let fs = open(store.clone(), root);
    let ino = path(&fs, "small-leaves");
    assert_eq!(fs.read(ino, 0, 20_000).unwrap(), data);
    // Change only the mode, then one byte: both saves keep the bytes right.
    fs.setattr(
        ino,
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    let saved = fs.save().unwrap().score;
    assert_eq!(read_saved(&store, saved), data);
    fs.write(ino, 5000, b"X").unwrap();
    let mut changed = data.clone();
    changed[5000] = b'X';
    assert_eq!(fs.read(ino, 0, 20_000).unwrap(), changed);
    let saved = fs.save().unwrap().score;
    assert_eq!(read_saved(&store, saved), changed);
}

fn read_saved(store: &Arc<dyn BlockStore>, root: Score) -> Vec<u8> {
    let fs = open(store.clone(), root);
    fs.read(path(&fs, "small-leaves"), 0, 20_000).unwrap()
}

/// A tenant can nest directories as deep as they like (`mkdir d; cd d` in a
/// loop); saving must not run the node out of stack. Invariant: the saved
/// archive holds every level, and a second save of the unchanged tree
/// returns the same score.
#[test]
fn a_hundred_thousand_nested_directories_save_without_a_crash() {
    const DEEP: usize = 100_000;
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::default());
    let root = sample_root(store.as_ref());
    // A cache with room for that many inodes (one per KiB).
    let fs = Fs::open(
        store.clone(),
        root,
        CacheConfig::Memory { bytes: 200 << 20 },
    )
    .unwrap();
    let mut ino = ROOT_INO;
    for _ in 0..DEEP {
        ino = fs.mkdir(ino, "d", 0o755, 0, 0).unwrap().ino;
    }
    let leaf = fs.create(ino, "bottom", 0o644, 0, 0).unwrap().ino;
    fs.write(leaf, 0, b"deep").unwrap();
    let report = fs.save().unwrap();
    assert_eq!(
        fs.save().unwrap().score,
        report.score,
        "unchanged tree, same score"
    );

    // Walk the archive down without recursion and find the file at the bottom.
    let archive = vac::Archive::open(store.as_ref(), &report.score).unwrap();
    let mut dir = archive.walk("d").unwrap();
    for _ in 1..DEEP {
        let d = dir.dir.expect("a directory");
        dir = archive.lookup(&d, "d").unwrap().expect("the next level");
    }
    let bottom = archive
        .lookup(&dir.dir.unwrap(), "bottom")
        .unwrap()
        .unwrap();
    assert_eq!(archive.read_small(&bottom, 100).unwrap(), b"deep");
}

/// An empty root whose blocks are 256 bytes, the smallest vac allows, opened.
fn empty_root_of_256_byte_blocks() -> (Arc<dyn BlockStore>, Fs) {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::default());
    let sizes = BlockSizes {
        dsize: 256,
        psize: 260,
    };
    let root = Tree::default().write(store.as_ref(), sizes, None).unwrap();
    let fs = open(store.clone(), root);
    (store, fs)
}

/// A root of 256-byte blocks: pointer blocks must still hold whole scores
/// and be at least 256 bytes, or the saved archive cannot be read back.
#[test]
fn a_root_of_256_byte_blocks_saves_an_archive_that_reads_back() {
    let (store, fs) = empty_root_of_256_byte_blocks();
    let f = fs.create(ROOT_INO, "f", 0o644, 0, 0).unwrap().ino;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    fs.write(f, 0, &data).unwrap();
    let report = fs.save().unwrap();
    let archive = vac::Archive::open(store.as_ref(), &report.score).unwrap();
    let node = archive.walk("f").unwrap();
    assert_eq!(archive.read_small(&node, 1 << 20).unwrap(), data);
}

/// A crafted archive whose qid space ends at u64::MAX: creating a file is
/// refused with a clear error, not a panic or a wrapped qid.
#[test]
fn an_exhausted_qid_space_refuses_new_files() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::default());
    let sizes = BlockSizes::default();
    let d = vac::tree::write_dir_stream(store.as_ref(), sizes, &[]).unwrap();
    let m = vac::tree::write_meta_stream(store.as_ref(), sizes, &[]).unwrap();
    let mut dirent = vac::dirent::DirEntry {
        mode: vac::dirent::mode::DIR | 0o755,
        ..Default::default()
    };
    dirent.qid_space = Some((0, u64::MAX));
    let root = vac::tree::write_root(store.as_ref(), sizes, dirent, d, m, None).unwrap();
    let fs = open(store, root);
    let err = fs
        .create(ROOT_INO, "one-too-many", 0o644, 0, 0)
        .unwrap_err();
    assert!(err.message.contains("qid space"), "{err}");
    assert_eq!(err.errno, libc::ENOSPC);
    assert!(
        fs.lookup(ROOT_INO, "one-too-many").is_err(),
        "nothing was made"
    );
}

/// A one-byte change to a 2^40-byte sparse file, saved twice: each save
/// costs what is stored, not one step per leaf of the claimed size (it once
/// took seconds per TiB with the whole mount frozen). Invariant: the
/// archive holds the change and zeros everywhere else.
#[test]
fn a_resave_of_a_changed_huge_sparse_file_skips_its_holes() {
    const SIZE: u64 = 1 << 40;
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::default());
    let root = sample_root(store.as_ref());
    let fs = open(store.clone(), root);
    let f = fs.create(ROOT_INO, "sparse", 0o644, 0, 0).unwrap().ino;
    fs.setattr(
        f,
        &SetAttr {
            size: Some(SIZE),
            ..Default::default()
        },
    )
    .unwrap();
    fs.save().unwrap();
    let started = std::time::Instant::now();
    fs.write(f, SIZE / 2, b"x").unwrap();
    fs.write(f, 12_345, b"y").unwrap();
    let report = fs.save().unwrap();
    fs.write(f, SIZE - 1, b"z").unwrap();
    let report2 = fs.save().unwrap();
    eprintln!(
        "two re-saves of a 1 TiB sparse file: {:?}",
        started.elapsed()
    );
    for (score, last) in [(report.score, 0u8), (report2.score, b'z')] {
        let archive = vac::Archive::open(store.as_ref(), &score).unwrap();
        let node = archive.walk("sparse").unwrap();
        assert_eq!(node.entry.size, SIZE);
        let mut r = archive.open_file(&node).unwrap();
        let mut b = [0u8; 3];
        r.read_at(SIZE / 2 - 1, &mut b).unwrap();
        assert_eq!(b, [0, b'x', 0]);
        r.read_at(12_344, &mut b).unwrap();
        assert_eq!(b, [0, b'y', 0]);
        let mut one = [9u8; 1];
        r.read_at(SIZE - 1, &mut one).unwrap();
        assert_eq!(one[0], last);
    }
}

/// A legal 200-byte name on a root of 256-byte blocks cannot fit a meta
/// block: the save says so (it once panicked, taking the node down) and
/// changes nothing, and after a rename the same tree saves.
#[test]
fn a_name_too_long_for_the_roots_blocks_fails_the_save_not_the_node() {
    let (store, fs) = empty_root_of_256_byte_blocks();
    let long = "n".repeat(200);
    fs.create(ROOT_INO, &long, 0o644, 0, 0).unwrap();
    let err = fs.save().unwrap_err();
    assert!(err.message.contains("meta block"), "{err}");
    fs.rename(ROOT_INO, &long, ROOT_INO, "short", true).unwrap();
    let report = fs.save().unwrap();
    let archive = vac::Archive::open(store.as_ref(), &report.score).unwrap();
    assert!(archive.walk("short").is_ok());
}

/// Every inode costs the node memory (about a KiB with its name), so new
/// files stop at one inode per KiB of the cache (ENOSPC), and deleting
/// files makes room again. Before, a tenant's 250,000 empty files grew the
/// node from 23 to 216 MB, counted against nothing, until boom.
#[test]
fn new_files_stop_at_one_inode_per_kib_of_cache_and_deleting_makes_room() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let root = sample_root(store.as_ref());
    let cache = 2 << 20;
    let fs = Fs::open(store, root, CacheConfig::Memory { bytes: cache }).unwrap();
    let max = Fs::max_inodes(cache);
    assert_eq!(max, 2048);
    let dir = fs.mkdir(ROOT_INO, "many", 0o755, 0, 0).unwrap().ino;
    let mut made = 0;
    let err = loop {
        match fs.create(dir, &format!("f{made}"), 0o644, 0, 0) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made <= max, "no bound");
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    assert!(err.to_string().contains("most files"), "{err}");
    assert_eq!(fs.usage().inodes, max);
    // Deleting frees the room (the inodes go), and new files fit again.
    for i in 0..10 {
        fs.unlink(dir, &format!("f{i}")).unwrap();
    }
    for i in 0..10 {
        fs.create(dir, &format!("again{i}"), 0o644, 0, 0).unwrap();
    }
    assert!(fs.create(dir, "one-too-many", 0o644, 0, 0).is_err());
}
