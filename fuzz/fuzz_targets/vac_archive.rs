//! Whole archives made of fuzzer-chosen blocks, read with vac's reader
//! (vac::reader) and walked by vac::extract's list and extract.
//!
//! The input describes a directory tree (names from a small dictionary,
//! duplicates and any order allowed; files, symlinks, devices, fifos, and
//! raw VtEntries with any field values pointing at any block), block sizes,
//! and byte mutations applied to chosen blocks as they are stored (their
//! scores follow, so the corrupted blocks stay linked). Extra raw blocks of
//! any type can be stored too, and the root may be one of them.
//!
//! Checks: opening, listing, looking up, walking and reading never panic,
//! terminate within a read budget (every store read counts), and never
//! allocate absurdly (libFuzzer's -rss_limit_mb / -malloc_limit_mb);
//! extract::list and extract::extract run on archives the bounded walk got
//! through, and extraction writes nothing outside its destination. An
//! archive that contains symlinks is extracted in a forked child chrooted
//! into a scratch directory, so an escape cannot touch this machine.
#![no_main]

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Unstructured;
use colony_fuzz::{BudgetStore, Capped, avoid_known, known_bad_entry};
use libfuzzer_sys::fuzz_target;
use vac::dirent::{DirEntry, mode};
use vac::entry::Entry;
use vac::reader::{Archive, Node};
use vac::root::Root;
use vac::stream::{StreamWriter, write_bytes};
use vac::tree::{BlockSizes, write_dir_stream, write_meta_stream, write_root};
use venti::{BlockStore, BlockType, MemoryStore, Score, StoreError};

const NAMES: [&str; 10] = ["a", "b", "x", "dir", "..", ".", "", "a/b", "é", "f.txt"];
const TARGETS: [&str; 7] = ["..", ".", "a", "../..", "/", "x/..", "b/../.."];
const BUDGET: u64 = 3000;

/// Applies the input's byte mutations to the n-th block written.
struct MutStore<'a> {
    inner: &'a MemoryStore,
    writes: RefCell<u32>,
    mutations: Vec<(u32, usize, u8)>,
    scores: RefCell<Vec<Score>>,
}

// Only used from one thread; BlockStore requires Sync.
unsafe impl Sync for MutStore<'_> {}

impl BlockStore for MutStore<'_> {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(score, ty)
    }
    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        let n = {
            let mut w = self.writes.borrow_mut();
            *w += 1;
            *w - 1
        };
        let mut block = data.to_vec();
        for &(k, at, x) in &self.mutations {
            if k == n && !block.is_empty() {
                let i = at % block.len();
                block[i] ^= x;
            }
        }
        let s = self.inner.write(ty, &block)?;
        self.scores.borrow_mut().push(s);
        Ok(s)
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

struct Gen<'a, 'u> {
    u: &'a mut Unstructured<'u>,
    store: &'a MutStore<'a>,
    sizes: BlockSizes,
    next_qid: u64,
    nodes: usize,
}

impl Gen<'_, '_> {
    fn score(&mut self) -> arbitrary::Result<Score> {
        let written = self.store.scores.borrow().clone();
        Ok(match self.u.int_in_range(0..=3u8)? {
            0 => Score::ZERO,
            1 => Score(self.u.arbitrary()?),
            _ if !written.is_empty() => written[self.u.choose_index(written.len())?],
            _ => Score::ZERO,
        })
    }

    fn block_size(&mut self) -> arbitrary::Result<u32> {
        let avoid = avoid_known();
        Ok(match self.u.int_in_range(0..=5u8)? {
            0 => self.sizes.dsize,
            1 => self.sizes.psize,
            2 => 256,
            3 => self.u.int_in_range(0..=1024u32)?,
            4 if !avoid => self.u.arbitrary()?,
            _ => self.u.int_in_range(256..=57344u32)?,
        })
    }

    /// Changes some fields of a written stream's entry.
    fn tweak(&mut self, mut e: Entry) -> arbitrary::Result<Entry> {
        if !self.u.ratio(1, 16)? {
            return Ok(e);
        }
        match self.u.int_in_range(0..=7u8)? {
            0 => e.size = colony_fuzz::interesting_u64(self.u)? & ((1 << 48) - 1),
            1 => e.depth = self.u.int_in_range(0..=7u8)?,
            2 => e.psize = self.block_size()?,
            3 => e.dsize = self.block_size()?,
            4 => e.flags ^= self.u.arbitrary::<u8>()? & 0x81,
            5 => e.generation = self.u.arbitrary()?,
            6 => e.dir = !e.dir,
            _ => e.score = self.score()?,
        }
        if avoid_known() && known_bad_entry(&e) {
            return Ok(Entry { size: 0, ..e });
        }
        Ok(e)
    }

    fn data_stream(&mut self, data: &[u8]) -> arbitrary::Result<Entry> {
        let (p, d) = match self.u.int_in_range(0..=3u8)? {
            0 => (256, 256),
            1 => (260, 300),
            _ => (self.sizes.psize, self.sizes.dsize),
        };
        let e =
            write_bytes(self.store, data, p, d).map_err(|_| arbitrary::Error::IncorrectFormat)?;
        self.tweak(e)
    }

    fn raw_entry(&mut self) -> arbitrary::Result<Entry> {
        let e = Entry {
            generation: if self.u.ratio(1, 8)? { 1 } else { 0 },
            psize: self.block_size()?,
            dsize: self.block_size()?,
            flags: vac::entry::FLAG_ACTIVE | (self.u.arbitrary::<u8>()? & 0x80),
            depth: self.u.int_in_range(0..=7u8)?,
            dir: self.u.arbitrary()?,
            size: colony_fuzz::interesting_u64(self.u)? & ((1 << 48) - 1),
            score: self.score()?,
        };
        if avoid_known() && known_bad_entry(&e) {
            return Ok(Entry {
                size: 0,
                depth: 0,
                psize: 256,
                dsize: 256,
                ..e
            });
        }
        Ok(e)
    }

    /// Writes a directory's children; returns its (source, msource).
    fn dir(&mut self, depth: u32) -> arbitrary::Result<(Entry, Entry)> {
        let n = if depth > 4 || self.nodes > 40 {
            0
        } else {
            self.u.int_in_range(0..=5usize)?
        };
        if colony_fuzz::trace() {
            eprintln!("dir at depth {depth}: {n} children");
        }
        let mut source: Vec<Entry> = Vec::new();
        let mut dirents = Vec::new();
        for _ in 0..n {
            self.nodes += 1;
            let elem = NAMES[self.u.choose_index(NAMES.len())?].to_string();
            let mut d = DirEntry {
                elem,
                qid: self.next_qid,
                uid: ["0", "1000", "glenda", ""][self.u.choose_index(4)?].into(),
                gid: "0".into(),
                mid: "0".into(),
                mtime: [0, 1_700_000_000, u32::MAX][self.u.choose_index(3)?],
                ..Default::default()
            };
            self.next_qid += 1;
            d.entry = source.len() as u32;
            let perm = self.u.arbitrary::<u16>()? as u32 & 0o777;
            match self.u.int_in_range(0..=7u8)? {
                0 | 1 | 7 => {
                    let (s, m) = self.dir(depth + 1)?;
                    d.mode = mode::DIR | perm;
                    d.mentry = d.entry + 1;
                    source.push(s);
                    source.push(m);
                }
                2 => {
                    let t = TARGETS[self.u.choose_index(TARGETS.len())?].to_string();
                    d.mode = mode::LINK | 0o777;
                    source.push(self.data_stream(t.as_bytes())?);
                    if !avoid_known() && self.u.ratio(1, 3)? {
                        // The same name again, as a directory: a duplicate
                        // that extraction must not follow through the link.
                        let mut again = d.clone();
                        again.entry = source.len() as u32;
                        again.mentry = again.entry + 1;
                        again.mode = mode::DIR | perm;
                        again.qid = self.next_qid;
                        self.next_qid += 1;
                        let (s, m) = self.dir(depth + 1)?;
                        source.push(s);
                        source.push(m);
                        dirents.push(d);
                        dirents.push(again);
                        continue;
                    }
                }
                3 => {
                    let text = if self.u.arbitrary()? {
                        "c 1 3".to_string()
                    } else {
                        String::from_utf8_lossy(&self.u.bytes(6)?.to_vec()).into_owned()
                    };
                    d.mode = mode::DEVICE | perm;
                    source.push(self.data_stream(text.as_bytes())?);
                }
                4 => {
                    d.mode = mode::NAMED_PIPE | perm;
                    source.push(self.data_stream(b"")?);
                }
                5 => {
                    d.mode = perm
                        | if self.u.ratio(1, 4)? {
                            self.u.arbitrary()?
                        } else {
                            0
                        };
                    d.mentry = self.u.int_in_range(0..=4u32)?;
                    source.push(self.raw_entry()?);
                    if self.u.arbitrary()? {
                        source.push(self.raw_entry()?);
                    }
                }
                _ => {
                    let len = self.u.int_in_range(0..=48usize)?;
                    let mut data = self.u.bytes(len.min(self.u.len()))?.to_vec();
                    if self.u.ratio(1, 4)? {
                        let n = self.u.int_in_range(0..=40000usize)?;
                        data.resize(n, 0);
                        if n > 0 {
                            data[n - 1] = 1;
                        }
                    }
                    d.mode = perm;
                    source.push(self.data_stream(&data)?);
                }
            }
            if self.u.ratio(1, 32)? {
                d.entry = self.u.int_in_range(0..=(source.len() as u32 + 1))?;
            }
            if self.u.ratio(1, 32)? {
                d.generation = 1;
            }
            dirents.push(d);
        }
        if self.u.ratio(1, 4)? {
            // Any order, as a corrupt or botched block may have it.
            let k = self.u.int_in_range(0..=dirents.len())?;
            let n = dirents.len();
            dirents.rotate_left(k.min(n));
        } else {
            dirents.sort_by(|a, b| a.elem.as_bytes().cmp(b.elem.as_bytes()));
        }
        let s = write_dir_stream(self.store, self.sizes, &source)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?;
        let m = write_meta_stream(self.store, self.sizes, &dirents)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?;
        Ok((self.tweak(s)?, self.tweak(m)?))
    }
}

fn build(data: &[u8], store: &MemoryStore) -> arbitrary::Result<Score> {
    let mut u = Unstructured::new(data);
    let sizes = match u.int_in_range(0..=3u8)? {
        0 => BlockSizes {
            dsize: 256,
            psize: 260,
        },
        1 => BlockSizes {
            dsize: 512,
            psize: 500,
        },
        2 => BlockSizes {
            dsize: 1024,
            psize: 300,
        },
        _ => BlockSizes::default(),
    };
    let mut mutations = Vec::new();
    let n_mut = if u.ratio(1, 4)? {
        u.int_in_range(1..=2u8)?
    } else {
        0
    };
    for _ in 0..n_mut {
        mutations.push((
            u.int_in_range(0..=40u32)?,
            u.arbitrary::<u16>()? as usize,
            u.int_in_range(1..=255u8)?,
        ));
    }
    let ms = MutStore {
        inner: store,
        writes: RefCell::new(0),
        mutations,
        scores: RefCell::new(Vec::new()),
    };
    // Raw blocks of any type, for raw entries and the root to point at.
    while u.ratio(1, 4)? && !u.is_empty() && ms.scores.borrow().len() < 3 {
        let ty = BlockType::new(u.int_in_range(0..=16u8)?).unwrap_or(BlockType::DATA);
        let len = u.int_in_range(0..=400usize)?;
        let bytes = u.bytes(len.min(u.len()))?.to_vec();
        let _ = ms.write(ty, &bytes);
    }
    let mut g = Gen {
        u: &mut u,
        store: &ms,
        sizes,
        next_qid: 1,
        nodes: 0,
    };
    let (d, m) = g.dir(0)?;
    let mut root = DirEntry {
        qid: 0,
        mode: mode::DIR | 0o755,
        uid: "0".into(),
        gid: "0".into(),
        mid: "0".into(),
        ..Default::default()
    };
    root.qid_space = Some((0, g.next_qid));
    let layout = g.u.int_in_range(0..=5u8)?;
    let score = match layout {
        // fossil's layout: one entry whose stream holds [D, M, MR].
        0 => {
            root.elem = "/".into();
            root.mentry = 1;
            let mr = write_meta_stream(&ms, sizes, std::slice::from_ref(&root))
                .map_err(|_| arbitrary::Error::IncorrectFormat)?;
            let mut leaf = Vec::new();
            for e in [d, m, mr] {
                leaf.extend_from_slice(&e.pack());
            }
            let mut w = StreamWriter::new(&ms, true, sizes.psize, sizes.dsize);
            w.push_leaf(&leaf)
                .map_err(|_| arbitrary::Error::IncorrectFormat)?;
            let e0 = w
                .finish(leaf.len() as u64)
                .map_err(|_| arbitrary::Error::IncorrectFormat)?;
            let top = ms
                .write(
                    BlockType::DIR,
                    venti::zero::truncate(BlockType::DIR, &e0.pack()),
                )
                .map_err(|_| arbitrary::Error::IncorrectFormat)?;
            let r = Root {
                name: String::new(),
                kind: "vac".into(),
                score: top,
                block_size: sizes.dsize,
                prev: Score::ALL_ZEROS,
            };
            ms.write(BlockType::ROOT, &r.pack())
                .map_err(|_| arbitrary::Error::IncorrectFormat)?
        }
        // A root pointing at any block, with any block size.
        1 => {
            let target = g.score()?;
            let r = Root {
                name: "fuzz".into(),
                kind: "vac".into(),
                score: target,
                block_size: g.block_size()?.max(256),
                prev: Score::ALL_ZEROS,
            };
            ms.write(BlockType::ROOT, &r.pack())
                .map_err(|_| arbitrary::Error::IncorrectFormat)?
        }
        _ => write_root(&ms, sizes, root, d, m, None)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?,
    };
    Ok(score)
}

#[derive(Default)]
struct Walk {
    nodes: usize,
    leaves: u64,
    symlinks: bool,
    /// A symlink followed by another entry of the same name (the reported
    /// extract escape).
    shadowed_link: bool,
    complete: bool,
}

fn walk(archive: &Archive, node: &Node, depth: usize, w: &mut Walk) -> Result<(), ()> {
    let Some(dir) = node.dir else { return Ok(()) };
    if depth > 64 {
        return Err(());
    }
    let children = archive.list(&dir).map_err(|e| {
        if colony_fuzz::trace() {
            eprintln!("list at depth {depth}: {e}");
        }
    })?;
    for (i, a) in children.iter().enumerate() {
        if a.dirent.mode & mode::LINK != 0
            && children[i + 1..]
                .iter()
                .any(|b| b.dirent.elem == a.dirent.elem)
        {
            w.shadowed_link = true;
        }
    }
    for child in &children {
        w.nodes += 1;
        if w.nodes > 500 {
            return Err(());
        }
        let _ = archive.lookup(&dir, &child.dirent.elem);
        let _ = vac::unix::Meta::from_dirent(&child.dirent, b"c 1 2");
        if child.dirent.mode & mode::LINK != 0 {
            w.symlinks = true;
        }
        if vac::unix::needs_data(&child.dirent) {
            let _ = archive.read_small(child, 4096);
        }
        if child.dir.is_some() {
            walk(archive, child, depth + 1, w)?;
            continue;
        }
        let _ = child.size();
        if let Ok(mut r) = archive.open_file(child) {
            let count = r.leaf_count();
            w.leaves = w.leaves.saturating_add(count);
            let size = r.entry().size;
            let mut buf = vec![0u8; size.min(65536) as usize];
            if r.read_at(0, &mut buf).is_err() {
                continue;
            }
            let mut tail = [0u8; 100];
            let _ = r.read_at(size.saturating_sub(50), &mut tail);
            for k in [0, 1, count / 2, count.saturating_sub(1), count] {
                let _ = r.leaf_score(k);
            }
        }
    }
    Ok(())
}

/// A scratch directory: <base>/sandbox/dest is where archives are extracted.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("colony-fuzz-extract-")
            .tempdir()
            .expect("tempdir");
        d.keep()
    })
}

/// Extracts into `<base>/sandbox/dest` and checks nothing changed outside it.
/// Returns an error message on an escape.
fn extract_and_check(archive: &Archive, base: &Path) -> Result<(), String> {
    let sandbox = base.join("sandbox");
    let _ = std::fs::set_permissions(&sandbox, std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::remove_dir_all(&sandbox);
    std::fs::create_dir_all(sandbox.join("dest")).map_err(|e| format!("sandbox: {e}"))?;
    std::fs::set_permissions(&sandbox, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = vac::extract::ExtractOptions {
        owners: false,
        devices: false,
    };
    let _ = vac::extract::extract(
        archive,
        archive.root(),
        &sandbox.join("dest"),
        options,
        &vac::walk::Quiet,
    );
    let outside: Vec<String> = std::fs::read_dir(&sandbox)
        .map_err(|e| format!("read sandbox: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "dest")
        .collect();
    let mode = std::fs::metadata(&sandbox)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0);
    let above: Vec<String> = std::fs::read_dir(base)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "sandbox")
                .collect()
        })
        .unwrap_or_default();
    if !outside.is_empty() || mode != 0o755 || !above.is_empty() {
        return Err(format!(
            "extract wrote outside its destination: next to dest {outside:?}, above {above:?}, parent mode {mode:o}"
        ));
    }
    Ok(())
}

/// Extraction of an archive with symlinks, in a child chrooted into `base`.
fn extract_in_child(archive: &Archive) {
    let base = base();
    // SAFETY: the child only runs the extraction and then _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            libc::signal(libc::SIGALRM, libc::SIG_DFL);
            libc::alarm(5);
        }
        let c = std::ffi::CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain system calls on a valid path.
        let ok = unsafe { libc::chroot(c.as_ptr()) == 0 && libc::chdir(c"/".as_ptr()) == 0 };
        if !ok {
            unsafe { libc::_exit(2) };
        }
        let code = match extract_and_check(archive, Path::new("/")) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("{msg}");
                3
            }
        };
        unsafe { libc::_exit(code) };
    }
    match colony_fuzz::wait_for_child(pid, "extract") {
        0 => {}
        2 => panic!("chroot into the scratch directory failed (run as root)"),
        3 => panic!("extract wrote outside its destination (see the child's message above)"),
        n => panic!("extract child exited with {n}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = MemoryStore::new();
    let Ok(root) = build(data, &mem) else { return };
    let store = BudgetStore {
        inner: mem,
        reads: 0.into(),
        budget: BUDGET,
        filter_known: avoid_known(),
    };
    let Ok(archive) = Archive::open(&store, &root) else {
        return;
    };
    let mut w = Walk::default();
    w.complete = walk(&archive, archive.root(), 0, &mut w).is_ok();
    for path in ["a", "a/b", "dir/x", "x/../a", "é/f.txt"] {
        let _ = archive.walk(path);
    }
    if colony_fuzz::trace() {
        eprintln!(
            "walk: complete {} nodes {} leaves {} symlinks {}",
            w.complete, w.nodes, w.leaves, w.symlinks
        );
    }
    if !w.complete {
        return;
    }
    if avoid_known() && w.shadowed_link {
        return;
    }
    if avoid_known() && w.leaves > 1 << 16 {
        return; // the known "huge file over a zero score" loop
    }
    store.reset(BUDGET);
    for verbose in [false, true] {
        let mut out = Capped {
            buf: Vec::new(),
            limit: 1 << 20,
        };
        let r = vac::extract::list(&archive, archive.root(), "", verbose, &mut out);
        if colony_fuzz::trace() && verbose {
            eprintln!(
                "list -v: {:?}\n{}",
                r.err(),
                String::from_utf8_lossy(&out.buf)
            );
        }
    }
    store.reset(BUDGET);
    if w.symlinks {
        extract_in_child(&archive);
    } else if let Err(msg) = extract_and_check(&archive, base()) {
        panic!("{msg}");
    }
});
