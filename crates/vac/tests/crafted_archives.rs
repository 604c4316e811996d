//! Archives crafted by whoever serves the blocks (an unauthenticated venti
//! server, a replication peer): decoding and walking them is total and
//! bounded. Each test builds the crafted blocks in a `MemoryStore` and checks
//! that reading and extracting ends at once, with the data or with an error
//! naming the problem — never a panic, a huge allocation or an endless walk.

use std::sync::mpsc;
use std::time::Duration;

use vac::entry::Entry;
use vac::extract::{ExtractOptions, extract};
use vac::root::Root;
use vac::stream::StreamReader;
use vac::tree::TreeNode;
use vac::unix::{Kind, Meta};
use vac::walk::Quiet;
use vac::{Archive, BlockSizes, Tree};
use venti::{BlockStore, BlockType, MemoryStore, Score};

/// An archive whose root holds one regular file `f` with the data stream `data`.
fn archive_with_file(store: &MemoryStore, data: Entry) -> Score {
    let mut tree = Tree::default();
    let meta = Meta {
        kind: Kind::File,
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    tree.insert(&["f"], TreeNode::Leaf { meta, data }).unwrap();
    tree.write(store, BlockSizes::default(), None).unwrap()
}

/// Rewrites an archive's root directory block `[D, M, MR]` (and its VtRoot)
/// through `edit`, which gets the three entries and the VtRoot.
fn rewrite_root(
    store: &MemoryStore,
    root: &Score,
    edit: impl FnOnce(&mut [Entry; 3], &mut Root),
) -> Score {
    let mut vt_root = Root::unpack(&store.read(root, BlockType::ROOT).unwrap().unwrap()).unwrap();
    let mut top = store.read(&vt_root.score, BlockType::DIR).unwrap().unwrap();
    top.resize(120, 0);
    let mut entries = [0, 1, 2].map(|i| Entry::unpack(&top[i * 40..i * 40 + 40]).unwrap());
    edit(&mut entries, &mut vt_root);
    let top: Vec<u8> = entries.iter().flat_map(|e| e.pack()).collect();
    vt_root.score = store.write(BlockType::DIR, &top).unwrap();
    store.write(BlockType::ROOT, &vt_root.pack()).unwrap()
}

/// Runs `f` on another thread and fails if it takes longer than `secs`
/// (a walk that is not bounded runs for hours, so the test cannot wait).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|e| panic!("did not finish within {secs} s ({e})"))
}

/// Extracts the whole archive into a fresh directory; returns it and the result.
fn extract_all(
    store: &MemoryStore,
    root: &Score,
) -> (tempfile::TempDir, vac::Result<vac::walk::Stats>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let archive = Archive::open(store, root).unwrap();
    let options = ExtractOptions {
        owners: false,
        devices: false,
    };
    let result = extract(&archive, archive.root(), &dest, options, &Quiet);
    (dir, result)
}

/// A chain of pointer blocks, one pointer each, from `leaf` up to `depth`.
fn chain(store: &MemoryStore, leaf: &[u8], depth: u8) -> Score {
    let mut score = store.write(BlockType::DATA, leaf).unwrap();
    for level in 1..=depth {
        let ty = BlockType::at_depth(BlockType::DATA, level).unwrap();
        score = store.write(ty, &score.0).unwrap();
    }
    score
}

fn file_entry(psize: u32, dsize: u32, depth: u8, size: u64, score: Score) -> Entry {
    let mut e = Entry::empty(psize, dsize, false);
    e.depth = depth;
    e.size = size;
    e.score = score;
    e
}

/// Item 1: psize 40960 (2048 pointers) at depth 7: 2048^7 = 2^77 overflowed u64
/// (a panic in debug, a divide by zero in release). The over-deep tree is a
/// valid one and reads back.
#[test]
fn pointers_to_the_depth_do_not_overflow() {
    let store = MemoryStore::new();
    let top = chain(&store, b"hello", 7);
    let root = archive_with_file(&store, file_entry(40960, 8192, 7, 5, top));
    let archive = Archive::open(&store, &root).unwrap();
    let node = archive.walk("f").unwrap();
    let mut r = archive.open_file(&node).unwrap();
    let mut buf = [0u8; 5];
    assert_eq!(r.read_at(0, &mut buf).unwrap(), 5);
    assert_eq!(&buf, b"hello");
    assert_eq!(r.next_stored_leaf(0).unwrap(), Some(0));
    assert_eq!(r.next_stored_leaf(1).unwrap(), None);
    let (dir, result) = extract_all(&store, &root);
    result.unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/f")).unwrap(), b"hello");
}

/// Item 2: dsize 0xFFE00000 (a big code) made readers size buffers at 4 GiB: sizes
/// beyond a venti block are refused when an entry is unpacked.
#[test]
fn entries_claiming_blocks_past_56k_are_refused() {
    let mut e = file_entry(8180, 0xFFE0_0000, 0, 10, Score::ZERO);
    let packed = e.pack();
    let err = Entry::unpack(&packed).unwrap_err().to_string();
    assert!(
        err.contains("dsize 4292870144 is outside 256..=57344"),
        "{err}"
    );
    e.dsize = 8192;
    e.psize = 60000;
    let err = Entry::unpack(&e.pack()).unwrap_err().to_string();
    assert!(err.contains("psize 60000"), "{err}");
    // Walkable only with 2 pointers a block, and no block past 56 KiB, even
    // for entries made in memory.
    let store = MemoryStore::new();
    for (psize, dsize) in [(39, 8192), (8180, 0), (8180, 57345), (57360, 8192)] {
        let e = file_entry(psize, dsize, 0, 0, Score::ZERO);
        let err = StreamReader::new(&store, e)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("impossible stream geometry"),
            "{psize} {dsize}: {err}"
        );
    }

    // The root's meta stream (MR), whose leaf was extended to dsize.
    let root = archive_with_file(&store, file_entry(8180, 8192, 0, 0, Score::ZERO));
    let crafted = rewrite_root(&store, &root, |e, _| e[2].dsize = 0xFFE0_0000);
    let err = Archive::open(&store, &crafted)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("bad block size in entry: dsize"), "{err}");
    // The root directory's source stream, whose leaves were resized to dsize.
    let crafted = rewrite_root(&store, &root, |e, _| e[0].dsize = 0xFFE0_0000);
    let err = Archive::open(&store, &crafted)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("bad block size in entry: dsize"), "{err}");
    // A file's own entry, read from its directory's source.
    let root = archive_with_file(&store, file_entry(8180, 0xFFE0_0000, 0, 10, Score::ZERO));
    let archive = Archive::open(&store, &root).unwrap();
    let err = archive.walk("f").unwrap_err().to_string();
    assert!(err.contains("bad block size in entry"), "{err}");
}

/// The VtRoot's block size is checked like an entry's (fossil sizes its
/// blocks from it); a big code past 2^32 no longer wraps.
#[test]
fn roots_claiming_blocks_past_56k_are_refused() {
    let store = MemoryStore::new();
    let root = archive_with_file(&store, file_entry(8180, 8192, 0, 0, Score::ZERO));
    for size in [0xFFE0_0000u32, 65536] {
        let crafted = rewrite_root(&store, &root, |_, r| r.block_size = size);
        let err = Archive::open(&store, &crafted)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(&format!("root block size {size} is outside")),
            "{err}"
        );
    }
    let mut raw = store.read(&root, BlockType::ROOT).unwrap().unwrap();
    raw[0] |= 0x80; // big block size code
    raw[278..280].copy_from_slice(&0xFFFFu16.to_be_bytes()); // 2047 << 31
    let err = Root::unpack(&raw).unwrap_err().to_string();
    assert!(err.contains("root block size 4294967295"), "{err}");
}

/// Item 3: 2^48−1 bytes over the zero score: a walk leaf by leaf took hours. Holes
/// are skipped whole; the extract is a sparse file, or (on file systems that
/// cannot hold one that long) an error naming the file.
#[test]
fn an_all_hole_file_of_2_48_bytes_extracts_at_once() {
    let size = (1u64 << 48) - 1;
    let store = MemoryStore::new();
    let root = archive_with_file(&store, file_entry(8180, 8192, 5, size, Score::ZERO));
    let (dir, result) = within(30, move || {
        let (dir, result) = extract_all(&store, &root);
        (dir, result.map_err(|e| e.to_string()))
    });
    let f = dir.path().join("out/f");
    match result {
        Ok(_) => assert_eq!(std::fs::metadata(&f).unwrap().len(), size),
        Err(e) => assert!(
            e.contains(&f.display().to_string()) && e.contains("too large"),
            "{e}"
        ),
    }
}

/// A sparse file of 1 TiB with one stored leaf in the middle: only that leaf
/// is visited and written, the rest are holes.
#[test]
fn a_terabyte_sparse_file_extracts_its_one_leaf() {
    let size = 1u64 << 40;
    let store = MemoryStore::new();
    // Leaf k = 2^26 + 3 of a depth-4 tree (409^4 > 2^27 leaves of 8 KiB).
    let k: u64 = (1 << 26) + 3;
    let np = 409u64;
    let mut score = store.write(BlockType::DATA, b"needle").unwrap();
    for level in 1..=4u32 {
        let slot = (k / np.pow(level - 1)) % np;
        let mut block = vec![0u8; (slot as usize + 1) * 20];
        for s in 0..slot as usize {
            block[s * 20..s * 20 + 20].copy_from_slice(&Score::ZERO.0);
        }
        block[slot as usize * 20..].copy_from_slice(&score.0);
        let ty = BlockType::at_depth(BlockType::DATA, level as u8).unwrap();
        score = store.write(ty, &block).unwrap();
    }
    let root = archive_with_file(&store, file_entry(8180, 8192, 4, size, score));
    let (dir, result) = within(30, move || {
        let (dir, result) = extract_all(&store, &root);
        (dir, result.map_err(|e| e.to_string()))
    });
    let stats = result.unwrap();
    assert_eq!(stats.bytes, size);
    let f = std::fs::File::open(dir.path().join("out/f")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut buf = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, k * 8192 - 1).unwrap();
    assert_eq!(&buf, b"\0needle\0");
}

/// Pointer blocks stored full of zero scores (a writer truncates them to
/// the zero score; a crafted store need not), each level pointing at the one
/// below 409 times: 409^4 empty level-1 blocks to visit, unless a subtree
/// found empty is remembered.
#[test]
fn a_tree_of_repeated_empty_pointer_blocks_is_walked_once() {
    let store = MemoryStore::new();
    let mut score = Score::ZERO;
    for level in 1..=5u8 {
        let block: Vec<u8> = (0..409).flat_map(|_| score.0).collect();
        let ty = BlockType::at_depth(BlockType::DATA, level).unwrap();
        score = store.write(ty, &block).unwrap();
    }
    let size = (1u64 << 48) - 1;
    let root = archive_with_file(&store, file_entry(8180, 8192, 5, size, score));
    let (_dir, result) = within(30, move || {
        let archive = Archive::open(&store, &root).unwrap();
        let node = archive.walk("f").unwrap();
        let mut r = archive.open_file(&node).unwrap();
        assert_eq!(r.next_stored_leaf(0).unwrap(), None);
        assert_eq!(r.next_stored_leaf(12345).unwrap(), None);
        let (dir, result) = extract_all(&store, &root);
        (dir, result.map_err(|e| e.to_string()))
    });
    if let Err(e) = result {
        assert!(e.contains("too large"), "{e}");
    }
}

/// Item 4: The depth field: shallower than the size needs, or a size that needs
/// more than 7 levels, is an error naming the depth — at open, not a panic
/// or wrong data later.
#[test]
fn depths_that_cannot_hold_the_size_are_errors() {
    let store = MemoryStore::new();
    let cases = [
        // 3 leaves need depth 1.
        (
            file_entry(8180, 8192, 0, 3 * 8192, Score::ZERO),
            "bad depth 0",
        ),
        // 2^48 bytes in 256-byte leaves, 12 pointers a block: 12 levels.
        (
            file_entry(256, 256, 7, (1 << 48) - 1, Score::ZERO),
            "needs a tree 12 levels deep",
        ),
    ];
    for (entry, want) in cases {
        let root = archive_with_file(&store, entry);
        let archive = Archive::open(&store, &root).unwrap();
        let node = archive.walk("f").unwrap();
        let err = archive.open_file(&node).err().expect("refused").to_string();
        assert!(err.contains(want), "{err}");
        let (_dir, result) = extract_all(&store, &root);
        let err = result.unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    // Depth past 7 (only an entry made in memory can say so).
    let e = file_entry(8180, 8192, 8, 0, Score::ZERO);
    let err = StreamReader::new(&store, e)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("bad depth 8"), "{err}");
}
