//! Hostile trees: far deeper than any stack (every walk over an archive —
//! import from tar, write, list, extract — is iterative, so no input can
//! abort the process), names too long for their blocks, ids past 32 bits.
//! Invariant: a 100,000-level tree is archived, listed and extracted whole —
//! never a crash.

use std::io::Write;

use vac::extract::{ExtractOptions, extract, list};
use vac::tree::{BlockSizes, Tree};
use vac::walk::Quiet;
use venti::MemoryStore;

const DEEP: usize = 100_000;

/// One ustar header block for `name` (short) of `typeflag` and `size`.
fn ustar(name: &str, typeflag: u8, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000755\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar stream holding one file at a path of `depth` directories, named by
/// a pax header (parents implied, as tar streams may leave them out).
fn deep_tar(depth: usize) -> Vec<u8> {
    pax_tar(&format!("path={}leaf", "d/".repeat(depth)))
}

/// A tar stream of one 5-byte file of mode 4755 described by one pax record.
fn pax_tar(record: &str) -> Vec<u8> {
    let body = |len: usize| format!("{len} {record}\n");
    // A pax record's length counts its own digits.
    let mut len = body(0).len();
    while body(len).len() != len {
        len = body(len).len();
    }
    let record = body(len);
    let mut tar = Vec::new();
    tar.extend_from_slice(&ustar("pax", b'x', record.len()));
    padded(&mut tar, record.as_bytes());
    let mut file = ustar("leaf", b'0', 5);
    file[100..108].copy_from_slice(b"0004755\0");
    file[148..156].copy_from_slice(b"        ");
    let sum: u32 = file.iter().map(|&b| b as u32).sum();
    file[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&file);
    padded(&mut tar, b"hello");
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// Counts lines without keeping (or scanning) them: each listed line ends
/// with a write that ends in a newline, and these names hold none.
#[derive(Default)]
struct LineCount(usize);

impl Write for LineCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += usize::from(buf.ends_with(b"\n"));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_hundred_thousand_nested_directories_import_list_and_extract_without_a_crash() {
    let store = MemoryStore::default();
    let sizes = BlockSizes::default();
    let mut tree = Tree::default();
    vac::tar::import_tar(&store, sizes, &mut tree, &mut &deep_tar(DEEP)[..], &Quiet).unwrap();
    let score = tree.write(&store, sizes, None).unwrap();
    drop(tree); // dropping a tree this deep must not overflow either

    let archive = vac::Archive::open(&store, &score).unwrap();
    let mut lines = LineCount::default();
    list(&archive, archive.root(), "", false, &mut lines).unwrap();
    assert_eq!(lines.0, DEEP + 1, "every directory and the file are listed");

    // Extraction works relative to each directory, so it goes past PATH_MAX.
    // On a tmpfs of its own: ext4 here (mounted with discard) takes half a
    // millisecond per rmdir, and unmounting frees the 100,000 levels at once.
    let Some(scratch) = Tmpfs::mount() else {
        eprintln!("not root: the 100,000-level extraction needs a tmpfs; skipped");
        return;
    };
    let stats = extract(
        &archive,
        archive.root(),
        &scratch.path().join("x"),
        ExtractOptions::for_current_user(),
        &Quiet,
    )
    .unwrap();
    assert_eq!(stats.files as usize, DEEP + 2);
    assert_eq!(read_bottom(&scratch.path().join("x"), DEEP), b"hello");
}

/// A tmpfs on a temporary directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1g", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Some(Tmpfs(dir))
    }
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Walks `levels` directories named `d` down from `top` (relative to each
/// one, as no path reaches that deep) and reads `leaf` there.
fn read_bottom(top: &std::path::Path, levels: usize) -> Vec<u8> {
    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, FromRawFd};
    fn open_at(dir: &std::fs::File, name: &CStr, flags: i32) -> std::fs::File {
        // SAFETY: a valid descriptor and NUL-terminated name; the new
        // descriptor is owned by the returned File.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "openat {name:?}: {}",
            std::io::Error::last_os_error()
        );
        unsafe { std::fs::File::from_raw_fd(fd) }
    }
    let mut dir = std::fs::File::open(top).unwrap();
    for _ in 0..levels {
        dir = open_at(
            &dir,
            c"d",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        );
    }
    let mut leaf = open_at(&dir, c"leaf", libc::O_RDONLY);
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut leaf, &mut data).unwrap();
    data
}

#[test]
fn a_thousand_nested_directories_extract_whole() {
    let store = MemoryStore::default();
    let sizes = BlockSizes::default();
    let mut tree = Tree::default();
    vac::tar::import_tar(&store, sizes, &mut tree, &mut &deep_tar(1000)[..], &Quiet).unwrap();
    let score = tree.write(&store, sizes, None).unwrap();
    let archive = vac::Archive::open(&store, &score).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let stats = extract(
        &archive,
        archive.root(),
        &dest.path().join("x"),
        ExtractOptions::for_current_user(),
        &Quiet,
    )
    .unwrap();
    assert_eq!(stats.files, 1000 + 2);
    let leaf = dest.path().join("x").join("d/".repeat(1000)).join("leaf");
    assert_eq!(std::fs::read(leaf).unwrap(), b"hello");
}

/// The directory importer walks the disk without recursion too: a tree as
/// deep as Linux paths allow is archived on a thread with a small stack
/// (the recursive walk needed about a kilobyte of stack per level).
#[test]
fn a_deep_tree_on_disk_is_archived_on_a_small_stack() {
    const LEVELS: usize = 1500;
    let src = tempfile::tempdir().unwrap();
    let deep = src.path().join("d/".repeat(LEVELS));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"hello").unwrap();
    let top = src.path().join("d");
    let lines = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let store = MemoryStore::default();
            let sizes = BlockSizes::default();
            let mut tree = Tree::default();
            let mut importer = vac::walk::DirImporter::new(&store, sizes, &Quiet, None);
            importer.add(&mut tree, &top).unwrap();
            let score = tree.write(&store, sizes, None).unwrap();
            drop(tree);
            let archive = vac::Archive::open(&store, &score).unwrap();
            let mut lines = LineCount::default();
            list(&archive, archive.root(), "", false, &mut lines).unwrap();
            lines.0
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(lines, LEVELS + 1);
}

/// A uid past 32 bits once wrapped to 0: a setuid file of uid 2^32 was
/// archived as setuid root. Such an entry is refused, and so are names
/// longer than Linux allows.
#[test]
fn tar_ids_past_32_bits_and_overlong_names_are_refused() {
    let store = MemoryStore::default();
    let sizes = BlockSizes::default();
    for (record, complaint) in [
        ("uid=4294967296".to_string(), "uid 4294967296 does not fit"),
        ("gid=4294967297".to_string(), "gid 4294967297 does not fit"),
        (format!("path={}", "n".repeat(300)), "names are at most 255"),
    ] {
        let mut tree = Tree::default();
        let err =
            vac::tar::import_tar(&store, sizes, &mut tree, &mut &pax_tar(&record)[..], &Quiet)
                .unwrap_err();
        assert!(err.to_string().contains(complaint), "{record}: {err}");
        assert!(tree.get(&["leaf"]).is_none(), "nothing was added");
    }
}

/// A name whose directory entry cannot fit one meta block (small blocks, or
/// a long name) is an error naming it, not a panic.
#[test]
fn a_name_too_long_for_its_meta_block_is_an_error() {
    let store = MemoryStore::default();
    let sizes = BlockSizes {
        dsize: 256,
        psize: 260,
    };
    let mut tree = Tree::default();
    let data = vac::stream::write_bytes(&store, b"x", sizes.psize, sizes.dsize).unwrap();
    let meta = vac::unix::Meta {
        kind: vac::unix::Kind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let name = "n".repeat(200);
    tree.insert(&[&name], vac::tree::TreeNode::Leaf { meta, data })
        .unwrap();
    let err = tree.write(&store, sizes, None).unwrap_err();
    assert!(err.to_string().contains("meta block"), "{err}");
}

/// A hard link to a file the stream never had is refused, naming it, as
/// GNU tar refuses it; before, it was dropped from the root silently.
#[test]
fn a_hard_link_to_nothing_in_the_stream_is_refused() {
    let mut link = ustar("dangling", b'1', 0);
    link[157..164].copy_from_slice(b"missing");
    link[148..156].copy_from_slice(b"        ");
    let sum: u32 = link.iter().map(|&b| b as u32).sum();
    link[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = link.to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let store = MemoryStore::new();
    let mut tree = Tree::default();
    let err = vac::tar::import_tar(
        &store,
        BlockSizes::default(),
        &mut tree,
        &mut &tar[..],
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("dangling") && err.contains("missing"), "{err}");
}
