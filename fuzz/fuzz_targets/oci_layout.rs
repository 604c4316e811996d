//! OCI image layouts as a tenant uploads them: archived as they came, read
//! back from the archive (`vac::oci::ArchiveLayout`) and flattened with
//! `vac::oci::import_layout`.
//!
//! The input is a recipe for a layout, built as a vac tree in a store whose
//! reads are budgeted (so every walk ends): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>` entries that are regular files, directories,
//! symlinks (to host paths such as /etc/hostname and /dev/zero, to other
//! blobs, or whose target text is itself a valid blob for the name), FIFOs
//! and devices; `blobs` or `blobs/sha256` themselves sometimes links.
//!
//! Two kinds of layout:
//! * well-formed (first byte ≡ 0 mod 3): one image whose layer (plain tar
//!   or gzip) holds `hello` with bytes from the input, perhaps under one or
//!   two nested indexes of platforms (with decoys), tagged `v1`, plus
//!   unrelated junk entries. It must import, with `hello` in the result, a
//!   regular file of the size put in.
//! * hostile: a pool of blobs (indexes, manifests, configs, layers that are
//!   small tars, gzip or garbage, random bytes) stored under their digest or
//!   under a digest named in advance (so indexes can name themselves, each
//!   other, or later blobs), referenced with right or wrong digests, and an
//!   `index.json` from the same recipe, or garbage.
//!
//! Half the inputs also make the same layout in a scratch directory (real
//! symlinks to host paths, FIFOs, devices; nothing is made through a link)
//! and import it again with `DirLayout`, the admin's reader.
//!
//! Checks, for both kinds and both readers: no panic; the import returns
//! (libFuzzer's timeout, and the read budget); only paths that are regular
//! files of the layout are ever read or opened successfully (a symlink,
//! FIFO, device or directory blob is an error, never its target or its
//! stored text); an import whose cancel flag was raised fails.
#![no_main]

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Unstructured;
use colony_fuzz::BudgetStore;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use vac::oci::{ArchiveLayout, DirLayout, Layout, import_layout};
use vac::reader::Archive;
use vac::stream::write_bytes;
use vac::tree::{BlockSizes, Tree, TreeNode};
use vac::unix::{Kind, Meta};
use venti::{BlockStore, MemoryStore};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Store reads one import may make.
const BUDGET: u64 = 20_000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

// ---- tar layers ----

fn tar_header(name: &str, size: usize, typeflag: u8, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mode = if typeflag == b'5' { 0o755 } else { 0o644 };
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000u64).as_bytes());
    h[156] = typeflag;
    let n = link.len().min(100);
    h[157..157 + n].copy_from_slice(&link.as_bytes()[..n]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar stream of `(name, typeflag, contents or link target)`.
fn tar(entries: &[(String, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, ty, data) in entries {
        let (size, link) = match ty {
            b'0' => (data.len(), String::new()),
            b'2' => (0, String::from_utf8_lossy(data).into_owned()),
            _ => (0, String::new()),
        };
        out.extend_from_slice(&tar_header(name, size, *ty, &link));
        if *ty == b'0' {
            out.extend_from_slice(data);
            while out.len() % 512 != 0 {
                out.push(0);
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const TAR_NAMES: [&str; 10] = [
    "hello",
    "etc/",
    "etc/hostname",
    ".wh.hello",
    "etc/.wh..wh..opq",
    "a/b/c",
    "../escape",
    "/abs",
    "link",
    ".wh.etc",
];

/// A layer from the recipe: (bytes, media type).
fn layer(u: &mut Unstructured) -> arbitrary::Result<(Vec<u8>, &'static str)> {
    let n = u.int_in_range(0..=3usize)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        let name = TAR_NAMES[u.choose_index(TAR_NAMES.len())?].to_string();
        let ty = [b'0', b'0', b'5', b'2', b'6'][u.choose_index(5)?];
        let data = if ty == b'2' {
            b"/etc/passwd".to_vec()
        } else {
            let len = u.int_in_range(0..=64usize)?.min(u.len());
            let mut d = u.bytes(len)?.to_vec();
            if u.ratio(1, 16)? {
                d.resize(u.int_in_range(0..=200_000usize)?, b'z');
            }
            d
        };
        entries.push((name, ty, data));
    }
    let plain = tar(&entries);
    Ok(match u.int_in_range(0..=7u8)? {
        0 => (gzip(&plain), LAYER_GZ),
        1 => (u.arbitrary::<Vec<u8>>()?, LAYER_GZ),
        2 => (u.arbitrary::<Vec<u8>>()?, LAYER_ZSTD),
        3 => (u.arbitrary::<Vec<u8>>()?, LAYER),
        4 => (plain[..plain.len() - 1024].to_vec(), LAYER),
        5 => (gzip(&plain), ""),
        _ => (plain, LAYER),
    })
}

// ---- the layout as a tree ----

fn meta(kind: Kind) -> Meta {
    Meta {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    }
}

struct Builder<'a> {
    store: &'a dyn BlockStore,
    tree: Tree,
    /// What was put where, in order, to make the same layout on disk.
    ops: Vec<(String, Kind, Vec<u8>)>,
}

impl Builder<'_> {
    fn leaf(&self, kind: Kind, data: &[u8]) -> TreeNode {
        let sizes = BlockSizes::default();
        let m = meta(kind);
        let data = if m.kind == Kind::File {
            data.to_vec()
        } else {
            m.special_data()
        };
        TreeNode::Leaf {
            data: write_bytes(self.store, &data, sizes.psize, sizes.dsize).expect("store a leaf"),
            meta: m,
        }
    }

    fn file(&mut self, path: &str, data: &[u8]) {
        self.put(path, Kind::File, data);
    }

    fn put(&mut self, path: &str, kind: Kind, data: &[u8]) {
        let node = if kind == Kind::Dir {
            TreeNode::dir(meta(Kind::Dir))
        } else {
            self.leaf(kind.clone(), data)
        };
        self.ops.push((path.to_string(), kind, data.to_vec()));
        let parts: Vec<&str> = path.split('/').collect();
        // A path under something that is not a directory is simply left out.
        let _ = self.tree.insert(&parts, node);
    }

    /// Something other than a regular file at `path`; `text` is the blob the
    /// path should hold, for a symlink whose target is that very text.
    fn special(&mut self, u: &mut Unstructured, path: &str, text: &[u8]) -> arbitrary::Result<()> {
        let kind = match u.int_in_range(0..=6u8)? {
            0 => {
                let targets: [&[u8]; 6] = [
                    b"/etc/hostname",
                    b"/dev/zero",
                    b"../../index.json",
                    b"../../../../../../proc/self/environ",
                    b"/dev/stdin",
                    text,
                ];
                let t = targets[u.choose_index(targets.len())?];
                Kind::Symlink(t[..t.len().min(4000)].to_vec())
            }
            1 => Kind::Symlink(text[..text.len().min(4000)].to_vec()),
            2 => Kind::Fifo,
            3 => Kind::CharDevice { major: 1, minor: 5 },
            4 => Kind::BlockDevice { major: 7, minor: 0 },
            _ => Kind::Dir,
        };
        self.put(path, kind, b"");
        Ok(())
    }

    /// Every regular file of the tree, as a layout path.
    fn regular(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut stack = vec![(String::new(), &self.tree.root)];
        while let Some((p, n)) = stack.pop() {
            match n {
                TreeNode::Dir { children, .. } => {
                    for (name, c) in children {
                        let path = if p.is_empty() {
                            name.clone()
                        } else {
                            format!("{p}/{name}")
                        };
                        stack.push((path, c));
                    }
                }
                TreeNode::Leaf { meta, .. } if meta.kind == Kind::File => {
                    out.insert(p);
                }
                TreeNode::Leaf { .. } => {}
            }
        }
        out
    }
}

fn blob_path(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

fn descriptor(media: &str, digest: &str, size: usize, extra: &str) -> String {
    format!(r#"{{"mediaType":"{media}","digest":"{digest}","size":{size}{extra}}}"#)
}

fn tag_annotation(tag: &str) -> String {
    format!(r#","annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}"#)
}

fn platform(os: &str, arch: &str) -> String {
    format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#)
}

fn index_doc(entries: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    )
}

fn manifest_doc(config: &str, layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

/// Junk beside a layout: entries no index names.
fn junk(u: &mut Unstructured, b: &mut Builder) -> arbitrary::Result<()> {
    for i in 0..u.int_in_range(0..=3u8)? {
        let path = blob_path(&digest(&[i, 0xee]));
        b.special(u, &path, b"{}")?;
    }
    Ok(())
}

/// A well-formed layout; returns the tag to import and `hello`'s contents.
fn well_formed(
    u: &mut Unstructured,
    b: &mut Builder,
) -> arbitrary::Result<(Option<String>, Vec<u8>)> {
    let len = u.int_in_range(0..=2000usize)?.min(u.len());
    let hello = u.bytes(len)?.to_vec();
    let plain = tar(&[
        ("etc/".into(), b'5', vec![]),
        ("etc/x".into(), b'0', b"x".to_vec()),
        ("hello".into(), b'0', hello.clone()),
    ]);
    let (layer, media) = if u.arbitrary()? {
        (gzip(&plain), LAYER_GZ)
    } else {
        (plain, LAYER)
    };
    let ld = digest(&layer);
    b.file(&blob_path(&ld), &layer);
    let cd = digest(b"{}");
    b.file(&blob_path(&cd), b"{}");
    let mut layers = vec![descriptor(media, &ld, layer.len(), "")];
    if u.arbitrary()? {
        // A second layer that whites out something below, not hello.
        let second = tar(&[
            ("etc/.wh.x".into(), b'0', vec![]),
            ("world".into(), b'0', b"w".to_vec()),
        ]);
        let sd = digest(&second);
        b.file(&blob_path(&sd), &second);
        layers.push(descriptor(LAYER, &sd, second.len(), ""));
    }
    let m = manifest_doc(&cd, &layers);
    let md = digest(m.as_bytes());
    b.file(&blob_path(&md), m.as_bytes());
    // Nested indexes of platforms (each wrapping what is below), the
    // amd64 entry among decoys.
    let (mut media, mut below, mut size) = (MANIFEST, md, m.len());
    for _ in 0..u.int_in_range(0..=2u8)? {
        let mut entries = vec![descriptor(media, &below, size, &platform("linux", "amd64"))];
        if u.arbitrary()? {
            let decoy = descriptor(
                MANIFEST,
                &digest(b"nowhere"),
                7,
                &platform("linux", "arm64"),
            );
            entries.insert(u.int_in_range(0..=1usize)?, decoy);
        }
        let doc = index_doc(&entries);
        below = digest(doc.as_bytes());
        b.file(&blob_path(&below), doc.as_bytes());
        media = if u.arbitrary()? { INDEX } else { LIST };
        size = doc.len();
    }
    let top = descriptor(media, &below, size, "");
    let tagged = u.arbitrary::<bool>()?;
    let mut entries = vec![if tagged {
        top.trim_end_matches('}').to_string() + &tag_annotation("v1") + "}"
    } else {
        top
    }];
    if tagged && u.arbitrary()? {
        entries.push(descriptor(
            MANIFEST,
            &digest(b"other"),
            5,
            &tag_annotation("v2"),
        ));
    }
    b.file("index.json", index_doc(&entries).as_bytes());
    b.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    junk(u, b)?;
    Ok((tagged.then(|| "v1".to_string()), hello))
}

/// A digest as a reference: to a blob of the pool, or wrong.
fn reference(u: &mut Unstructured, names: &[Option<String>]) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => format!("sha256:{}", hex(&u.arbitrary::<[u8; 32]>()?)),
        1 => [
            "sha256:../../index.json",
            "sha512:00",
            "",
            "sha256:",
            "SHA256:AB",
        ][u.choose_index(5)?]
        .to_string(),
        2 => {
            let n = names.iter().flatten().next().cloned().unwrap_or_default();
            n.to_ascii_uppercase().replacen("SHA256", "sha256", 1)
        }
        _ => {
            // A blob before this one, or any blob named in advance (a later
            // one, or itself).
            let j = u.choose_index(names.len())?;
            // (Later blobs have a name only if it was named in advance.)
            match &names[j] {
                Some(n) => n.clone(),
                None => format!("sha256:{}", "0".repeat(64)),
            }
        }
    })
}

/// A hostile layout; returns the tag to import.
fn hostile(u: &mut Unstructured, b: &mut Builder) -> arbitrary::Result<Option<String>> {
    let n = u.int_in_range(1..=8usize)?;
    // Names known in advance (blobs stored under a digest that is not
    // theirs), so a document can name a later blob, or itself.
    let mut names: Vec<Option<String>> = (0..n)
        .map(|i| {
            u.ratio(1, 4)
                .map(|f| f.then(|| digest(format!("named in advance {i}").as_bytes())))
        })
        .collect::<Result<_, _>>()?;
    for i in 0..n {
        let refs =
            |u: &mut Unstructured, names: &[Option<String>]| -> arbitrary::Result<Vec<String>> {
                let k = u.int_in_range(0..=3usize)?;
                (0..k)
                    .map(|_| {
                        let d = reference(u, names)?;
                        let media = [
                            MANIFEST,
                            INDEX,
                            LIST,
                            LAYER,
                            LAYER_GZ,
                            LAYER_ZSTD,
                            "",
                            "text/plain",
                        ][u.choose_index(8)?];
                        let extra = match u.int_in_range(0..=5u8)? {
                            0 => tag_annotation(["v1", "v2", ""][u.choose_index(3)?]),
                            1 => platform("linux", "amd64"),
                            2 => platform("linux", "arm64"),
                            _ => String::new(),
                        };
                        Ok(descriptor(media, &d, 1, &extra))
                    })
                    .collect()
            };
        let bytes: Vec<u8> = match u.int_in_range(0..=6u8)? {
            0 | 1 => index_doc(&refs(u, &names)?).into_bytes(),
            2 | 3 => {
                let config = reference(u, &names)?;
                manifest_doc(&config, &refs(u, &names)?).into_bytes()
            }
            4 => layer(u)?.0,
            5 => b"{}".to_vec(),
            _ => u.arbitrary()?,
        };
        let name = names[i].clone().unwrap_or_else(|| digest(&bytes));
        names[i] = Some(name.clone());
        let path = blob_path(&name);
        if u.ratio(1, 5)? {
            b.special(u, &path, &bytes)?;
        } else {
            b.file(&path, &bytes);
        }
    }
    // index.json: an index of the pool, garbage, or not a file.
    let top: Vec<String> = (0..u.int_in_range(0..=3usize)?)
        .map(|_| {
            let d = reference(u, &names)?;
            let media = [MANIFEST, INDEX, LIST, ""][u.choose_index(4)?];
            let extra = if u.arbitrary()? {
                tag_annotation("v1")
            } else {
                String::new()
            };
            Ok(descriptor(media, &d, 1, &extra))
        })
        .collect::<arbitrary::Result<_>>()?;
    let index = match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary::<Vec<u8>>()?,
        1 => b"{\"manifests\":{}}".to_vec(),
        _ => index_doc(&top).into_bytes(),
    };
    if u.ratio(1, 8)? {
        b.special(u, "index.json", &index)?;
    } else {
        b.file("index.json", &index);
    }
    let layout_file = br#"{"imageLayoutVersion":"1.0.0"}"#;
    match u.int_in_range(0..=9u8)? {
        0 => {}
        1 => b.special(u, "oci-layout", layout_file)?,
        2 => b.file("oci-layout", &vec![b' '; 5000]),
        _ => b.file("oci-layout", layout_file),
    }
    if u.ratio(1, 16)? {
        // The blob directory itself a link (to the root, or to a host path).
        let which = ["blobs", "blobs/sha256"][u.choose_index(2)?];
        let target = [b"/".as_slice(), b"/etc", b"..", b"."][u.choose_index(4)?];
        b.put(which, Kind::Symlink(target.to_vec()), b"");
    }
    junk(u, b)?;
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Some("v1".into()),
        1 => Some(["v2", "", "nope"][u.choose_index(3)?].into()),
        _ => None,
    })
}

/// The layout as the importer sees it, recording what it reads.
struct Watched<'a> {
    inner: &'a dyn Layout,
    regular: &'a HashSet<String>,
}

impl Watched<'_> {
    fn check(&self, path: &str) {
        assert!(
            self.regular.contains(path),
            "{path} was read from the layout, but it is no regular file of it"
        );
    }
}

impl Layout for Watched<'_> {
    fn read(&self, path: &str, limit: u64) -> vac::Result<Vec<u8>> {
        let r = self.inner.read(path, limit);
        if r.is_ok() {
            self.check(path);
        }
        r
    }
    fn open(&self, path: &str) -> vac::Result<Box<dyn Read + '_>> {
        let r = self.inner.open(path);
        if r.is_ok() {
            self.check(path);
        }
        r
    }
}

/// The scratch directory a layout is made in for `DirLayout`.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("colony-fuzz-oci-")
            .tempdir()
            .expect("tempdir")
            .keep()
    })
}

/// Makes the builder's layout under `root`, as the tree has it: nothing is
/// made below a name that is not a real directory (so no link is ever
/// followed out of `root`), and a later entry replaces an earlier one.
fn materialize(ops: &[(String, Kind, Vec<u8>)], root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let mknod = |at: &Path, mode: libc::mode_t, dev: libc::dev_t| {
        let c = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        unsafe { libc::mknod(c.as_ptr(), mode | 0o644, dev) };
    };
    'ops: for (path, kind, data) in ops {
        let parts: Vec<&str> = path.split('/').collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut at = root.to_path_buf();
        for p in parents {
            at.push(p);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => continue 'ops,
                Err(_) => {
                    if std::fs::create_dir(&at).is_err() {
                        continue 'ops;
                    }
                }
            }
        }
        at.push(last);
        if let Ok(m) = std::fs::symlink_metadata(&at) {
            if m.is_dir() {
                if *kind == Kind::Dir {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&at);
            } else {
                let _ = std::fs::remove_file(&at);
            }
        }
        match kind {
            Kind::File => {
                let _ = std::fs::write(&at, data);
            }
            Kind::Dir => {
                let _ = std::fs::create_dir(&at);
            }
            Kind::Symlink(t) => {
                let _ = std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), &at);
            }
            Kind::Fifo => mknod(&at, libc::S_IFIFO, 0),
            Kind::CharDevice { major, minor } => {
                mknod(&at, libc::S_IFCHR, libc::makedev(*major, *minor))
            }
            Kind::BlockDevice { major, minor } => {
                mknod(&at, libc::S_IFBLK, libc::makedev(*major, *minor))
            }
        }
    }
}

/// Imports through `layout` and checks the result; `want` is `hello`'s
/// contents for a well-formed layout.
fn check_import(
    what: &str,
    layout: &dyn Layout,
    regular: &HashSet<String>,
    tag: Option<&str>,
    want: Option<&[u8]>,
    cancel_after: Option<u32>,
) {
    let watched = Watched {
        inner: layout,
        regular,
    };
    let asked = Cell::new(0u32);
    let fired = Cell::new(false);
    let cancelled = || {
        asked.set(asked.get() + 1);
        let stop = cancel_after.is_some_and(|n| asked.get() > n);
        if stop {
            fired.set(true);
        }
        stop
    };
    let out = MemoryStore::new();
    let result = import_layout(
        &out,
        BlockSizes::default(),
        &watched,
        tag,
        &vac::walk::Quiet,
        &cancelled,
    );
    if colony_fuzz::trace() {
        eprintln!(
            "{what}: tag {tag:?}, {} regular files: {:?}",
            regular.len(),
            result.as_ref().map(|_| "ok").map_err(|e| e.to_string())
        );
    }
    if fired.get() {
        assert!(result.is_err(), "{what}: a cancelled import succeeded");
        return;
    }
    if let Some(hello) = want {
        let tree =
            result.unwrap_or_else(|e| panic!("{what}: a well-formed layout was refused: {e}"));
        match tree.get(&["hello"]) {
            Some(TreeNode::Leaf { meta, data }) => {
                assert_eq!(meta.kind, Kind::File, "{what}: hello is not a file");
                assert_eq!(
                    data.size,
                    hello.len() as u64,
                    "{what}: hello has another size"
                );
            }
            other => panic!("{what}: hello is missing from the import: {other:?}"),
        }
    }
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let store = BudgetStore::new(BUDGET);
    let mut b = Builder {
        store: &store,
        tree: Tree::default(),
        ops: Vec::new(),
    };
    let on_disk: bool = u.arbitrary()?;
    let shape = u.int_in_range(0..=2u8)?;
    let (tag, want) = if shape == 0 {
        let (tag, hello) = well_formed(&mut u, &mut b)?;
        (tag, Some(hello))
    } else {
        (hostile(&mut u, &mut b)?, None)
    };
    // Cancel after this many reads (for some inputs).
    // (An exhausted input reads as zeros: no cancel then.)
    let cancel_after: Option<u32> = if u.int_in_range(0..=7u8)? == 7 {
        Some(u.int_in_range(0..=200u32)?)
    } else {
        None
    };
    let regular = b.regular();
    let root = b
        .tree
        .write(&store, BlockSizes::default(), None)
        .expect("write the layout's archive");
    store.reset(BUDGET);
    let archive = Archive::open(&store, &root).expect("open the layout's archive");
    check_import(
        "ArchiveLayout",
        &ArchiveLayout::new(&archive),
        &regular,
        tag.as_deref(),
        want.as_deref(),
        cancel_after,
    );
    if colony_fuzz::trace() {
        eprintln!(
            "{} store reads",
            store.reads.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if on_disk {
        // The same layout as a directory of this machine (DirLayout).
        let dir = scratch().join("layout");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the last layout");
        }
        std::fs::create_dir(&dir).expect("make the layout directory");
        materialize(&b.ops, &dir);
        check_import(
            "DirLayout",
            &DirLayout::new(&dir),
            &regular,
            tag.as_deref(),
            want.as_deref(),
            cancel_after,
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
