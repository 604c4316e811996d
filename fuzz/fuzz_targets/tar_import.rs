//! vac's tar importer (vac::tar::import_tar) into a MemoryStore, then
//! Tree::write and a read back with vac's reader.
//!
//! The first input byte picks the mode:
//! * even: the rest is a raw tar stream;
//! * odd: the rest describes entries that are written as a well-formed tar
//!   stream (checksums right; ustar prefix, GNU long names, pax records,
//!   base-256 numbers, hard links, specials), optionally corrupted.
//!
//! Checks: the importer never panics; an imported tree writes and reads back
//! with the names, kinds, sizes and contents it holds; importing twice gives
//! the same root; and for an uncorrupted generated stream the archive is the
//! very archive (same root score) of the tree the entries describe.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use colony_fuzz::avoid_known;
use libfuzzer_sys::fuzz_target;
use vac::reader::{Archive, Node};
use vac::stream::{StreamReader, write_bytes};
use vac::tree::{BlockSizes, Tree, TreeNode};
use vac::unix::{Kind, Meta};
use vac::walk::Quiet;
use venti::{BlockStore, MemoryStore};

const SIZES: [(u32, u32); 4] = [(8192, 8180), (256, 260), (512, 500), (1024, 1020)];

#[derive(Debug, Clone)]
enum Long {
    None,
    Gnu,
    Pax,
    Prefix,
}

#[derive(Debug, Clone)]
struct Gen {
    typeflag: u8,
    path: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
    perm: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    major: u32,
    minor: u32,
    long: Long,
    long_link: bool,
    pax_numbers: bool,
    base256: bool,
}

fn name(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    const PARTS: [&str; 10] = ["a", "b", "c", "dir", "x.txt", ".", "", "..", "é", "sub"];
    let n = u.int_in_range(1..=4usize)?;
    let mut out = Vec::new();
    if u.ratio(1, 8)? {
        out.push(b'/');
    }
    for i in 0..n {
        if i > 0 {
            out.push(b'/');
        }
        match u.int_in_range(0..=15u8)? {
            0 => out.extend(std::iter::repeat_n(b'L', u.int_in_range(90..=320usize)?)),
            1 => out.extend(
                u.arbitrary::<Vec<u8>>()?
                    .into_iter()
                    .filter(|&b| b != b'/' && b != 0)
                    .take(20),
            ),
            _ => out.extend_from_slice(PARTS[u.choose_index(PARTS.len())?].as_bytes()),
        }
    }
    if u.ratio(1, 8)? {
        out.push(b'/');
    }
    Ok(out)
}

fn gen_entry(u: &mut Unstructured) -> arbitrary::Result<Gen> {
    const TYPES: [u8; 12] = [
        b'0', 0, b'7', b'5', b'2', b'3', b'4', b'6', b'1', b'0', b'5', b'S',
    ];
    let typeflag = TYPES[u.choose_index(TYPES.len())?];
    let data = if matches!(typeflag, b'0' | 0 | b'7') || u.ratio(1, 16)? {
        let mut d: Vec<u8> = u.arbitrary()?;
        if u.ratio(1, 8)? {
            // A longer, partly zero file: several leaves at small block sizes.
            let n = u.int_in_range(0..=20000usize)?;
            d.resize(n, 0);
        }
        d
    } else {
        Vec::new()
    };
    Ok(Gen {
        typeflag,
        path: name(u)?,
        link: name(u)?,
        data,
        perm: u.arbitrary::<u32>()? & 0o7777,
        uid: u.int_in_range(0..=u32::MAX as u64)?,
        gid: u.int_in_range(0..=70000u64)?,
        mtime: if u.ratio(1, 4)? {
            u.arbitrary::<i64>()?
        } else {
            u.int_in_range(0..=4_000_000_000i64)?
        },
        major: u.int_in_range(0..=300u32)?,
        minor: u.int_in_range(0..=70000u32)?,
        long: match u.int_in_range(0..=3u8)? {
            0 => Long::None,
            1 => Long::Gnu,
            2 => Long::Pax,
            _ => Long::Prefix,
        },
        long_link: u.arbitrary()?,
        pax_numbers: u.ratio(1, 4)?,
        base256: u.ratio(1, 4)?,
    })
}

/// Writes `v` into a numeric field: octal if it fits, else base-256.
fn put_number(field: &mut [u8], v: u64, base256: bool) {
    let digits = field.len() - 1;
    let octal = format!("{v:0digits$o}");
    if !base256 && octal.len() <= digits {
        field[..digits].copy_from_slice(octal.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let bytes = v.to_be_bytes();
        let n = field.len().min(8);
        let start = field.len() - n;
        field[start..].copy_from_slice(&bytes[8 - n..]);
        field[0] |= 0x80;
    }
}

fn header(path: &[u8], link: &[u8], size: u64, typeflag: u8, e: &Gen, prefix: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = path.len().min(100);
    h[..n].copy_from_slice(&path[..n]);
    put_number(&mut h[100..108], e.perm as u64, false);
    put_number(&mut h[108..116], e.uid, e.base256);
    put_number(&mut h[116..124], e.gid, e.base256);
    put_number(&mut h[124..136], size, e.base256);
    put_number(&mut h[136..148], e.mtime.max(0) as u64, e.base256);
    h[156] = typeflag;
    let n = link.len().min(100);
    h[157..157 + n].copy_from_slice(&link[..n]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_number(&mut h[329..337], e.major as u64, false);
    put_number(&mut h[337..345], e.minor as u64, false);
    let n = prefix.len().min(155);
    h[345..345 + n].copy_from_slice(&prefix[..n]);
    fix_checksum(&mut h);
    h
}

fn fix_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ' '=' '\n'
    let mut n = body_len + 1;
    while n.to_string().len() + body_len != n {
        n = n.to_string().len() + body_len;
    }
    let mut r = format!("{n} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Appends `e` and returns it as the stream conveys it (a name too long for
/// its field, with nothing to carry it whole, is cut at 100 bytes).
fn write_entry(out: &mut Vec<u8>, e: &Gen) -> Gen {
    let mut pax = Vec::new();
    let mut path: &[u8] = &e.path;
    let mut prefix: &[u8] = &[];
    let mut link: &[u8] = &e.link;
    match e.long {
        Long::Gnu => {
            let mut data = e.path.clone();
            data.push(0);
            out.extend_from_slice(&header(
                b"././@LongLink",
                b"",
                data.len() as u64,
                b'L',
                e,
                b"",
            ));
            out.extend_from_slice(&data);
            pad(out);
        }
        Long::Pax => pax.extend(pax_record("path", &e.path)),
        Long::Prefix => {
            // Split at a '/' so that name ≤ 100 and prefix ≤ 155, if possible.
            if e.path.len() > 100
                && let Some(i) = (0..e.path.len())
                    .filter(|&i| e.path[i] == b'/' && i <= 155 && e.path.len() - i - 1 <= 100)
                    .last()
            {
                prefix = &e.path[..i];
                path = &e.path[i + 1..];
            }
        }
        Long::None => {}
    }
    if e.long_link {
        pax.extend(pax_record("linkpath", &e.link));
    } else if e.link.len() > 100 {
        let mut data = e.link.clone();
        data.push(0);
        out.extend_from_slice(&header(
            b"././@LongLink",
            b"",
            data.len() as u64,
            b'K',
            e,
            b"",
        ));
        out.extend_from_slice(&data);
        pad(out);
        link = &[];
    }
    if e.pax_numbers || e.mtime < 0 {
        pax.extend(pax_record("uid", e.uid.to_string().as_bytes()));
        pax.extend(pax_record("gid", e.gid.to_string().as_bytes()));
        pax.extend(pax_record("mtime", format!("{}.5", e.mtime).as_bytes()));
        pax.extend(pax_record("size", e.data.len().to_string().as_bytes()));
    }
    if !pax.is_empty() {
        out.extend_from_slice(&header(
            b"PaxHeaders/x",
            b"",
            pax.len() as u64,
            b'x',
            e,
            b"",
        ));
        out.extend_from_slice(&pax);
        pad(out);
    }
    out.extend_from_slice(&header(
        path,
        link,
        e.data.len() as u64,
        e.typeflag,
        e,
        prefix,
    ));
    out.extend_from_slice(&e.data);
    pad(out);
    let mut seen = e.clone();
    if matches!(e.long, Long::None | Long::Prefix) && prefix.is_empty() {
        seen.path.truncate(100);
    }
    seen
}

fn components(path: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(path).ok()?;
    let mut out = Vec::new();
    for p in text.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => out.push(p.to_string()),
        }
    }
    Some(out)
}

/// The tree the entries describe, built directly; `None` if the importer
/// must refuse the stream.
fn model(store: &dyn BlockStore, sizes: BlockSizes, entries: &[Gen]) -> Option<Tree> {
    let mut tree = Tree::default();
    for e in entries {
        let parts = components(&e.path)?;
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let mtime = e.mtime;
        let meta = |kind| Meta {
            kind,
            perm: e.perm,
            uid: e.uid as u32,
            gid: e.gid as u32,
            mtime,
        };
        let leaf = |m: Meta| {
            let data = write_bytes(store, &m.special_data(), sizes.psize, sizes.dsize).ok()?;
            Some(TreeNode::Leaf { meta: m, data })
        };
        let node = match e.typeflag {
            b'0' | 0 | b'7' => {
                let data = write_bytes(store, &e.data, sizes.psize, sizes.dsize).ok()?;
                Some(TreeNode::Leaf {
                    meta: meta(Kind::File),
                    data,
                })
            }
            b'5' => Some(TreeNode::dir(meta(Kind::Dir))),
            b'2' => Some(leaf(meta(Kind::Symlink(e.link.clone())))?),
            b'3' => Some(leaf(meta(Kind::CharDevice {
                major: e.major,
                minor: e.minor,
            }))?),
            b'4' => Some(leaf(meta(Kind::BlockDevice {
                major: e.major,
                minor: e.minor,
            }))?),
            b'6' => Some(leaf(meta(Kind::Fifo))?),
            b'1' => {
                let target = components(&e.link)?;
                let target: Vec<&str> = target.iter().map(String::as_str).collect();
                match tree.get(&target) {
                    Some(TreeNode::Leaf { data, .. }) => Some(TreeNode::Leaf {
                        meta: meta(Kind::File),
                        data: *data,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(node) = node {
            tree.insert(&refs, node).ok()?;
        }
    }
    Some(tree)
}

/// Too long a name panics metablock::pack (reported); with
/// COLONY_FUZZ_AVOID_KNOWN, such trees are not written.
fn has_long_name(node: &TreeNode, limit: usize) -> bool {
    match node {
        TreeNode::Dir { children, .. } => children
            .iter()
            .any(|(n, c)| n.len() > limit || has_long_name(c, limit)),
        TreeNode::Leaf { .. } => false,
    }
}

fn read_all(store: &dyn BlockStore, entry: &vac::entry::Entry) -> Vec<u8> {
    let mut buf = vec![0u8; entry.size as usize];
    let n = StreamReader::new(store, *entry)
        .expect("stream of a written archive opens")
        .read_at(0, &mut buf)
        .expect("stream of a written archive reads");
    assert_eq!(n, buf.len());
    buf
}

/// The archive holds exactly the tree.
fn compare(archive: &Archive, node: &Node, children: &BTreeMap<String, TreeNode>, path: &str) {
    let dir = node.dir.expect("a directory has streams");
    let listed = archive.list(&dir).expect("list a written directory");
    let names: Vec<&str> = listed.iter().map(|n| n.dirent.elem.as_str()).collect();
    let want: Vec<&str> = children.keys().map(String::as_str).collect();
    assert_eq!(names, want, "names in /{path}");
    for (child, (name, t)) in listed.iter().zip(children) {
        let data = if vac::unix::needs_data(&child.dirent) {
            archive
                .read_small(child, 1 << 20)
                .expect("read link/device data")
        } else {
            Vec::new()
        };
        let (meta, _) = Meta::from_dirent(&child.dirent, &data).expect("from_dirent");
        assert_eq!(meta.kind, t.meta().kind, "kind of {path}/{name}");
        let p = format!("{path}/{name}");
        let tm = t.meta();
        assert_eq!(meta.perm, tm.perm, "perm of {p}");
        assert_eq!(child.dirent.uid, tm.uid.to_string(), "uid of {p}");
        assert_eq!(child.dirent.gid, tm.gid.to_string(), "gid of {p}");
        assert_eq!(
            child.dirent.mtime as i64,
            tm.mtime.clamp(0, u32::MAX as i64),
            "mtime of {p}"
        );
        match t {
            TreeNode::Dir { children, .. } => {
                assert!(child.dir.is_some(), "{p} is a directory");
                compare(archive, child, children, &p);
            }
            TreeNode::Leaf { data, meta: tm } => {
                assert!(child.dir.is_none(), "{p} is not a directory");
                assert_eq!(child.entry.size, data.size, "size of {p}");
                assert_eq!(
                    vac::unix::needs_data(&child.dirent),
                    matches!(
                        tm.kind,
                        Kind::Symlink(_) | Kind::CharDevice { .. } | Kind::BlockDevice { .. }
                    )
                );
                assert_eq!(
                    read_all(archive.store(), &child.entry),
                    read_all(archive.store(), data),
                    "contents of {p}"
                );
            }
        }
    }
}

fn import(bytes: &[u8], sizes: BlockSizes) -> (MemoryStore, Result<Tree, vac::Error>) {
    let store = MemoryStore::new();
    let mut tree = Tree::default();
    let mut input: &[u8] = bytes;
    let r = vac::tar::import_tar(&store, sizes, &mut tree, &mut input, &Quiet).map(|_| tree);
    (store, r)
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let mode: u8 = u.arbitrary()?;
    let (d, p) = if avoid_known() {
        SIZES[0]
    } else {
        SIZES[u.choose_index(SIZES.len())?]
    };
    let sizes = BlockSizes { dsize: d, psize: p };
    let (bytes, entries) = if mode % 2 == 0 {
        (u.take_rest().to_vec(), None)
    } else {
        let n = u.int_in_range(0..=8usize)?;
        let entries: Vec<Gen> = (0..n)
            .map(|_| gen_entry(&mut u))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        let entries: Vec<Gen> = entries.iter().map(|e| write_entry(&mut out, e)).collect();
        let ended = match u.int_in_range(0..=7u8)? {
            0 => false, // no end-of-archive: must be refused
            1 => {
                out.extend_from_slice(&[0; 512]);
                true
            } // one zero block is accepted
            _ => {
                out.extend_from_slice(&[0; 1024]);
                true
            }
        };
        let mut corrupted = false;
        for _ in 0..4 {
            if out.is_empty() || !u.ratio(1, 4)? || u.is_empty() {
                break;
            }
            let at = u.choose_index(out.len())?;
            out[at] ^= u.int_in_range(1..=255u8)?;
            corrupted = true;
        }
        if corrupted && u.arbitrary()? {
            // Keep checksums right so the corruption reaches the fields.
            for h in out.chunks_mut(512) {
                if h[257..262] == *b"ustar" {
                    fix_checksum(h);
                }
            }
        }
        if !corrupted && !ended {
            let (_, r) = import(&out, sizes);
            assert!(
                r.is_err(),
                "a tar stream without its end-of-archive blocks was accepted"
            );
            return Ok(());
        }
        (out, (!corrupted).then_some(entries))
    };

    if let Some(path) = std::env::var_os("COLONY_FUZZ_DUMP") {
        // Write the stream being imported, to look at with tar(1).
        let _ = std::fs::write(path, &bytes);
        eprintln!("block sizes {sizes:?}");
    }
    let (store, result) = import(&bytes, sizes);
    // Refused by design: names longer than Linux allows, ids past 32 bits.
    let by_design = |e: &vac::Error| {
        let text = e.to_string();
        text.contains("names are at most") || text.contains("does not fit 32 bits")
    };
    if result.as_ref().is_err_and(by_design) {
        return Ok(());
    }
    let Ok(tree) = result else {
        if let Some(entries) = &entries {
            // A well-formed stream is refused only for a name the importer must refuse.
            let scratch = MemoryStore::new();
            assert!(
                model(&scratch, sizes, entries).is_none(),
                "a well-formed tar stream was refused: {:?}",
                result.err()
            );
        }
        return Ok(());
    };
    if avoid_known() && has_long_name(&tree.root, 255) {
        return Ok(());
    }
    let root = match tree.write(&store, sizes, None) {
        Ok(root) => root,
        // A name too long for the block size is refused, by design.
        Err(e) if e.to_string().contains("meta block") => return Ok(()),
        Err(e) => panic!("an imported tree writes: {e}"),
    };
    let archive = Archive::open(&store, &root).expect("a written archive opens");
    let TreeNode::Dir { children, .. } = &tree.root else {
        unreachable!()
    };
    compare(&archive, archive.root(), children, "");

    // Deterministic: the same stream gives the same root.
    let (store2, again) = import(&bytes, sizes);
    let root2 = again
        .expect("second import")
        .write(&store2, sizes, None)
        .unwrap();
    assert_eq!(root, root2, "importing twice gave different roots");

    if let Some(entries) = &entries {
        let mstore = MemoryStore::new();
        let m =
            model(&mstore, sizes, entries).expect("the importer accepted it, so must the model");
        let want = m.write(&mstore, sizes, None).expect("model tree writes");
        if want != root {
            let a = Archive::open(&mstore, &want).unwrap();
            let mut l1 = colony_fuzz::Capped {
                buf: Vec::new(),
                limit: 1 << 20,
            };
            let mut l2 = colony_fuzz::Capped {
                buf: Vec::new(),
                limit: 1 << 20,
            };
            let _ = vac::extract::list(&a, a.root(), "", true, &mut l1);
            let _ = vac::extract::list(&archive, archive.root(), "", true, &mut l2);
            panic!(
                "the tar import differs from the tree its entries describe\nmodel:\n{}\nimported:\n{}",
                String::from_utf8_lossy(&l1.buf),
                String::from_utf8_lossy(&l2.buf)
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
