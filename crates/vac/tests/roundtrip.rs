//! Archive real trees holding every file kind, read them back, and compare
//! metadata exactly; dedup, `-d` reuse, tar import, lazy reads, bad input.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use venti::{BlockStore, BlockType, MemoryStore, Score, StoreError};

use vac::extract::{ExtractOptions, extract};
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Observer, Quiet};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn set_mtime(path: &Path, secs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: valid path and two timespecs.
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
}

fn mknod(path: &Path, mode: u32, dev: u64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), mode, dev) },
        0,
        "mknod {}",
        path.display()
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, 0);
}

/// A tree with every kind of file a root file system holds.
fn make_tree(dir: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(dir.join(p), data).unwrap();
    std::fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    w("etc/hostname", b"colony\n");
    w("etc/empty-file", b"");
    w("etc/deep/er/block", &vec![7u8; 8192]);
    w("etc/deep/er/block+1", &vec![9u8; 8193]);
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    w("bin/busybox", &big);
    w("bin/zeros", &vec![0u8; 100_000]);
    // A sparse file: a hole, then data.
    let sparse = std::fs::File::create(dir.join("etc/sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", (10 << 20) - 4).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink(
        "/a/rather/long/absolute/target/path/over/eight/bytes",
        dir.join("etc/long-link"),
    )
    .unwrap();
    std::fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.hard")).unwrap();
    mknod(&dir.join("etc/fifo"), libc::S_IFIFO | 0o640, 0);
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("etc/deep"),
        std::fs::Permissions::from_mode(0o2750),
    )
    .unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    if is_root() {
        mknod(
            &dir.join("etc/null"),
            libc::S_IFCHR | 0o666,
            vac::unix::make_dev(1, 3),
        );
        mknod(
            &dir.join("etc/disk"),
            libc::S_IFBLK | 0o660,
            vac::unix::make_dev(259, 70000),
        );
        chown(&dir.join("etc/hostname"), 1234, 5678);
        chown(&dir.join("bin/sh"), 42, 43);
        chown(&dir.join("etc/deep"), 7, 8);
    }
    for (i, p) in [
        "etc/hostname",
        "bin/busybox",
        "etc/deep/er",
        "bin/sh",
        "etc/fifo",
        "empty",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&dir.join(p), 1_600_000_000 + i as i64 * 1000);
    }
}

/// Everything we promise to keep, per path.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = md.file_type();
            let content = if ft.is_file() {
                format!("sha1 {}", Score::of(&std::fs::read(&p).unwrap()))
            } else if ft.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                String::new()
            };
            let rdev = if md.rdev() != 0 {
                format!("rdev {}", md.rdev())
            } else {
                String::new()
            };
            // Directory sizes are the file system's business; symlink mtimes too.
            let size = if ft.is_dir() { 0 } else { md.size() };
            let mtime = if ft.is_dir() || ft.is_symlink() {
                0
            } else {
                md.mtime()
            };
            out.insert(
                rel.clone(),
                format!(
                    "mode {:o} uid {} gid {} size {size} mtime {mtime} {rdev} {content}",
                    md.mode(),
                    md.uid(),
                    md.gid()
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn archive_dir(
    store: &dyn BlockStore,
    dir: &Path,
    prev: Option<&vac::Archive>,
) -> (Score, vac::walk::Stats) {
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(store, BlockSizes::default(), &Quiet, prev);
    importer.add(&mut tree, &dir.join(".")).unwrap();
    let stats = importer.stats.clone();
    (
        tree.write(store, BlockSizes::default(), None).unwrap(),
        stats,
    )
}

#[test]
fn every_file_kind_round_trips_with_exact_metadata() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemoryStore::new();
    let (score, stats) = archive_dir(&store, src.path(), None);
    assert_eq!(stats.warnings, 0);

    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("out");
    let archive = vac::Archive::open(&store, &score).unwrap();
    extract(
        &archive,
        archive.root(),
        &out,
        ExtractOptions::for_current_user(),
        &Quiet,
    )
    .unwrap();
    let (a, b) = (snapshot(src.path()), snapshot(&out));
    assert_eq!(a, b);
    // Directory mtimes are restored too (after their contents were written).
    assert_eq!(
        std::fs::metadata(out.join("etc/deep/er")).unwrap().mtime(),
        1_600_000_000 + 2000
    );
    assert_eq!(
        std::fs::metadata(out.join("empty")).unwrap().mtime(),
        1_600_000_000 + 5000
    );
    // The hole stays a hole: the 10 MB sparse file takes almost no disk.
    assert!(std::fs::metadata(out.join("etc/sparse")).unwrap().blocks() < 100);
}

#[test]
fn zero_regions_cost_no_blocks_and_identical_content_is_stored_once() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a"), vec![5u8; 50_000]).unwrap();
    std::fs::write(src.path().join("b"), vec![5u8; 50_000]).unwrap();
    let sparse = std::fs::File::create(src.path().join("sparse")).unwrap();
    sparse.set_len(100 << 20).unwrap();
    let store = MemoryStore::new();
    archive_dir(&store, src.path(), None);
    // a and b share their 7 leaves (6 identical full ones + a tail) and pointer block;
    // the sparse file is the zero score; plus the directory's and the root's blocks.
    assert!(store.len() < 12, "{} blocks", store.len());
}

#[test]
fn archiving_the_same_tree_twice_adds_no_blocks() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemoryStore::new();
    let (first, _) = archive_dir(&store, src.path(), None);
    let blocks = store.len();
    let (second, _) = archive_dir(&store, src.path(), None);
    assert_eq!(first, second, "the same tree gives the same root");
    assert_eq!(store.len(), blocks);
}

struct ByteCounter(AtomicU64);
impl Observer for ByteCounter {
    fn bytes(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

#[test]
fn rearchiving_with_a_previous_archive_reads_no_unchanged_file() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemoryStore::new();
    let (first, _) = archive_dir(&store, src.path(), None);
    let prev = vac::Archive::open(&store, &first).unwrap();

    let counter = ByteCounter(AtomicU64::new(0));
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(&store, BlockSizes::default(), &counter, Some(&prev));
    importer.add(&mut tree, &src.path().join(".")).unwrap();
    assert_eq!(
        counter.0.load(Ordering::Relaxed),
        0,
        "no file content was read"
    );
    assert!(importer.stats.reused >= 8, "{:?}", importer.stats);
    let again = tree
        .write(&store, BlockSizes::default(), Some(first))
        .unwrap();
    let reread = vac::Archive::open(&store, &again).unwrap();
    assert_eq!(reread.root.prev, first);

    // Change one file (same size, new mtime): only it is read.
    std::fs::write(src.path().join("etc/hostname"), b"COLONY\n").unwrap();
    set_mtime(&src.path().join("etc/hostname"), 1_700_000_123);
    let counter = ByteCounter(AtomicU64::new(0));
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(&store, BlockSizes::default(), &counter, Some(&prev));
    importer.add(&mut tree, &src.path().join(".")).unwrap();
    // The hard link shares the changed inode, so it is read too.
    assert_eq!(counter.0.load(Ordering::Relaxed), 14);
    let changed = tree
        .write(&store, BlockSizes::default(), Some(first))
        .unwrap();
    let archive = vac::Archive::open(&store, &changed).unwrap();
    let node = archive.walk("etc/hostname").unwrap();
    assert_eq!(archive.read_small(&node, 100).unwrap(), b"COLONY\n");
}

#[test]
fn a_tar_stream_archives_to_the_same_root_as_its_directory() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemoryStore::new();
    let (from_dir, _) = archive_dir(&store, src.path(), None);

    for format in ["gnu", "pax", "ustar"] {
        let tar = Command::new("tar")
            .args(["--numeric-owner", "--format", format, "-C"])
            .arg(src.path())
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        // ustar cannot hold the 70000 minor number; GNU tar says so and exits 2.
        if format == "ustar" && !tar.status.success() {
            continue;
        }
        assert!(
            tar.status.success(),
            "tar {format}: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        let mut tree = Tree::default();
        let stats = vac::tar::import_tar(
            &store,
            BlockSizes::default(),
            &mut tree,
            &mut &tar.stdout[..],
            &Quiet,
        )
        .unwrap();
        assert_eq!(stats.warnings, 0);
        let from_tar = tree.write(&store, BlockSizes::default(), None).unwrap();
        assert_eq!(from_tar, from_dir, "tar format {format}");
    }
}

#[test]
fn a_tar_stream_that_ends_early_is_an_error() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), vec![1u8; 5000]).unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let store = MemoryStore::new();
    for cut in [100, 512, 1024, 1536, 3000, 6144] {
        let mut tree = Tree::default();
        let err = vac::tar::import_tar(
            &store,
            BlockSizes::default(),
            &mut tree,
            &mut &tar.stdout[..cut],
            &Quiet,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ended"), "cut at {cut}: {err}");
    }
    let mut garbage = vec![0x41u8; 2048];
    garbage[0] = b'x';
    let err = vac::tar::import_tar(
        &store,
        BlockSizes::default(),
        &mut Tree::default(),
        &mut &garbage[..],
        &Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // A hostile name that climbs out is refused.
    let evil = Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .args(["-cf", "-", "--transform", "s,^\\./f,../../etc/evil,", "./f"])
        .output()
        .unwrap();
    let err = vac::tar::import_tar(
        &store,
        BlockSizes::default(),
        &mut Tree::default(),
        &mut &evil.stdout[..],
        &Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
}

/// Counts block reads, to show what a lazy read touches.
struct Counting<'a> {
    inner: &'a MemoryStore,
    reads: AtomicU64,
}

impl BlockStore for Counting<'_> {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
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
fn reading_one_file_fetches_only_the_blocks_on_its_path() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("usr/share/doc")).unwrap();
    std::fs::write(src.path().join("usr/share/doc/readme"), b"read me").unwrap();
    // Lots of other stuff the read must not touch: 3000 files in big directories.
    for d in 0..3 {
        let dir = src.path().join(format!("usr/lib{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(
                dir.join(format!("lib{i}.so")),
                format!("library {d}/{i}").repeat(300),
            )
            .unwrap();
        }
    }
    let store = MemoryStore::new();
    let (score, _) = archive_dir(&store, src.path(), None);
    let counting = Counting {
        inner: &store,
        reads: AtomicU64::new(0),
    };
    let archive = vac::Archive::open(&counting, &score).unwrap();
    assert_eq!(
        counting.reads.load(Ordering::Relaxed),
        3,
        "root, root directory block, root meta block"
    );
    let node = archive.walk("usr/share/doc/readme").unwrap();
    let mut buf = [0u8; 7];
    archive
        .open_file(&node)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"read me");
    // Per directory on the path (/, usr, share, doc): one meta block and one
    // source leaf; then the file's one leaf.
    let reads = counting.reads.load(Ordering::Relaxed);
    assert!(
        reads <= 3 + 4 * 2 + 1,
        "{reads} block reads for one small file, of {} blocks",
        store.len()
    );
}

#[test]
fn bad_roots_and_missing_blocks_are_clear_errors() {
    let store = MemoryStore::new();
    let missing: Score = "6f8f2141577ba09cd814316ef160871cc2dcadcc".parse().unwrap();
    let err = vac::Archive::open(&store, &missing).err().unwrap();
    assert!(err.to_string().contains("is not in the store"), "{err}");

    // A data block named as a root: it is not stored as a root (wrong type).
    let data = store.write(BlockType::DATA, b"not a root").unwrap();
    assert!(vac::Archive::open(&store, &data).is_err());

    // A root whose directory block is gone.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"x").unwrap();
    let full = MemoryStore::new();
    let (score, _) = archive_dir(&full, src.path(), None);
    let root_only = MemoryStore::new();
    let root_bytes = full.read(&score, BlockType::ROOT).unwrap().unwrap();
    root_only.write(BlockType::ROOT, &root_bytes).unwrap();
    let err = vac::Archive::open(&root_only, &score).err().unwrap();
    assert!(matches!(err, vac::Error::MissingBlock { .. }), "{err}");
    assert!(err.to_string().contains("/8 is not in the store"), "{err}");
}

/// A store that corrupts every block it returns in one chosen way.
struct Mangling<'a> {
    inner: &'a MemoryStore,
    seed: u64,
}

impl BlockStore for Mangling<'_> {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        let mut b = self.inner.read(score, ty)?;
        if let Some(block) = b.as_mut().filter(|b| !b.is_empty()) {
            let h = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ score.0[0] as u64;
            let i = (h as usize) % block.len();
            match self.seed % 3 {
                0 => block[i] ^= (h >> 8) as u8 | 1,
                1 => block.truncate(i),
                _ => block[i..].fill(0xff),
            }
        }
        Ok(b)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn corrupt_blocks_never_panic_the_reader() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let store = MemoryStore::new();
    let (score, _) = archive_dir(&store, src.path(), None);
    for seed in 0..300 {
        let bad = Mangling {
            inner: &store,
            seed,
        };
        if let Ok(archive) = vac::Archive::open(&bad, &score) {
            let mut sink = Vec::new();
            let _ = vac::extract::list(&archive, archive.root(), "", true, &mut sink);
            if let Ok(node) = archive.walk("bin/busybox")
                && let Ok(mut r) = archive.open_file(&node)
            {
                let mut buf = vec![0u8; 400_000];
                let _ = r.read_at(0, &mut buf);
            }
        }
    }
}
