//! OCI image layouts as hostile input. A layout arrives from a tenant as a
//! tar; it is archived as it came and read back from the archive, never
//! from host paths. Invariants: only regular files of the layout are read
//! (a symlink, FIFO or device in it is no file at all, so no host file is
//! ever opened or hashed); every read is bounded; every JSON blob matches
//! its digest before it is believed; nested indexes end; an import stops
//! when cancelled. The admin's directory reader (`DirLayout`) follows no
//! link and never waits on a FIFO either.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vac::oci::{ArchiveLayout, DirLayout, Layout, import_layout};
use vac::tree::{BlockSizes, Tree, TreeNode};
use vac::walk::{DirImporter, Quiet};
use venti::{MemoryStore, Score};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn blob_file(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Stores `bytes` as a blob of `layout`; returns its digest.
fn put(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha(bytes);
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(blob_file(layout, &digest), bytes).unwrap();
    digest
}

/// A plain tar layer holding one file `name` with `text`.
fn layer(name: &str, text: &str) -> Vec<u8> {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join(name), text).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .args(["-cf", "-", name])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A manifest blob of one layer holding `name`; returns (digest, size).
fn image(layout: &Path, name: &str) -> (String, usize) {
    let layer = layer(name, "from the image\n");
    let l = put(layout, &layer);
    let c = put(layout, b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"digest":"{c}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        layer.len()
    );
    (put(layout, manifest.as_bytes()), manifest.len())
}

/// `index.json` listing `entries` (JSON objects), and `oci-layout`.
fn index(layout: &Path, entries: &[String]) {
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries.join(",")
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

fn entry(digest: &str, media: &str, tag: Option<&str>) -> String {
    let annotations = tag
        .map(|t| format!(r#","annotations":{{"org.opencontainers.image.ref.name":"{t}"}}"#))
        .unwrap_or_default();
    format!(r#"{{"mediaType":"{media}","digest":"{digest}","size":1{annotations}}}"#)
}

/// A layout of one image holding `hello`, tagged `v1`, in a new directory.
fn simple_layout() -> tempfile::TempDir {
    layout_and_layer().0
}

/// The same, and the path of its layer's blob.
fn layout_and_layer() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = image(dir.path(), "hello");
    index(dir.path(), &[entry(&m, MANIFEST, Some("v1"))]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_file(dir.path(), &m)).unwrap()).unwrap();
    let layer = blob_file(
        dir.path(),
        manifest["layers"][0]["digest"].as_str().unwrap(),
    );
    (dir, layer)
}

/// The layout archived as a tenant's upload is: symlinks, FIFOs and
/// devices are kept as what they are.
fn archived(layout: &Path) -> (MemoryStore, Score) {
    let store = MemoryStore::new();
    let mut tree = Tree::default();
    let mut importer = DirImporter::new(&store, BlockSizes::default(), &Quiet, None);
    importer.add(&mut tree, &layout.join(".")).unwrap();
    let score = tree.write(&store, BlockSizes::default(), None).unwrap();
    (store, score)
}

fn flatten(layout: &dyn Layout, tag: Option<&str>) -> vac::Result<Tree> {
    import_layout(
        &MemoryStore::new(),
        BlockSizes::default(),
        layout,
        tag,
        &Quiet,
        &|| false,
    )
}

/// Flattens the layout in `dir` read as an upload (from its archive).
fn from_upload(dir: &Path, tag: Option<&str>) -> vac::Result<Tree> {
    let (store, score) = archived(dir);
    let archive = vac::Archive::open(&store, &score).unwrap();
    flatten(&ArchiveLayout::new(&archive), tag)
}

fn has(tree: &Tree, name: &str) -> bool {
    matches!(tree.get(&[name]), Some(TreeNode::Leaf { .. }))
}

#[test]
fn a_plain_image_flattens_from_an_upload_and_from_a_directory() {
    let dir = simple_layout();
    assert!(has(&from_upload(dir.path(), Some("v1")).unwrap(), "hello"));
    assert!(has(&from_upload(dir.path(), None).unwrap(), "hello"));
    assert!(has(
        &flatten(&DirLayout::new(dir.path()), None).unwrap(),
        "hello"
    ));
}

/// The reported attack: a layer blob that is a symlink to a host file was
/// opened and hashed, and the hash of the host file came back in the error.
#[test]
fn a_blob_that_is_a_symlink_to_a_host_file_is_never_read() {
    let (dir, layer) = layout_and_layer();
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("host-secret");
    std::fs::write(&secret, "the node's private key\n").unwrap();
    let secret_digest = sha(b"the node's private key\n");
    // The layer's blob is a link to it.
    std::fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink(&secret, &layer).unwrap();
    for err in [
        from_upload(dir.path(), None).unwrap_err(),
        flatten(&DirLayout::new(dir.path()), None).unwrap_err(),
    ] {
        let err = err.to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(
            !err.contains(&secret_digest[7..]),
            "a host file's digest: {err}"
        );
    }
    // The whole blobs directory as a link to the host's root.
    let other = tempfile::tempdir().unwrap();
    let (m, _) = image(other.path(), "hello");
    index(other.path(), &[entry(&m, MANIFEST, None)]);
    std::fs::rename(other.path().join("blobs"), other.path().join("real")).unwrap();
    std::os::unix::fs::symlink(other.path().join("real"), other.path().join("blobs")).unwrap();
    let err = from_upload(other.path(), None).unwrap_err().to_string();
    assert!(err.contains("has no blobs/sha256"), "{err}");
    let err = flatten(&DirLayout::new(other.path()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular directory"), "{err}");
}

/// `index.json -> /dev/zero` took the node to 1.7 GB and the OOM killer;
/// as a FIFO it blocked an import thread for good. Each is refused at once.
#[test]
fn an_index_that_is_dev_zero_or_a_fifo_is_refused_at_once() {
    let dir = simple_layout();
    std::fs::remove_file(dir.path().join("index.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("index.json")).unwrap();
    let t = Instant::now();
    let err = from_upload(dir.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("index.json in the layout is not a regular file"),
        "{err}"
    );
    let err = flatten(&DirLayout::new(dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");

    std::fs::remove_file(dir.path().join("index.json")).unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("index.json").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let err = from_upload(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let err = flatten(&DirLayout::new(dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "nothing waited on a device or FIFO"
    );
}

/// A character device as a blob (made only as root).
#[test]
fn a_blob_that_is_a_device_is_no_file() {
    let (dir, path) = layout_and_layer();
    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path; /dev/urandom's numbers (1,9).
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 9)) } != 0 {
        eprintln!("skipped: making a device node needs root");
        return;
    }
    let err = from_upload(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

/// An index whose entry names a blob that is not what its digest says:
/// before, JSON blobs were never checked, so an index could name itself.
#[test]
fn a_json_blob_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = image(dir.path(), "hello");
    // A "self-naming" index: the blob at m's name is an index naming m.
    let me = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
        entry(&m, INDEX, None)
    );
    std::fs::write(blob_file(dir.path(), &m), me).unwrap();
    index(dir.path(), &[entry(&m, INDEX, None)]);
    let t = Instant::now();
    let err = from_upload(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60));
}

/// Indexes nested past the bound end the search (every one genuine: a
/// chain made bottom up, each naming the next by its real digest).
#[test]
fn indexes_nested_past_the_bound_are_refused() {
    let nest = |depth: usize| {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _) = image(dir.path(), "deep");
        let mut media = MANIFEST;
        for _ in 0..depth {
            let idx = format!(
                r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
                entry(&d, media, None)
            );
            d = put(dir.path(), idx.as_bytes());
            media = INDEX;
        }
        index(dir.path(), &[entry(&d, media, None)]);
        from_upload(dir.path(), None)
    };
    assert!(has(&nest(vac::oci::MAX_NESTING).unwrap(), "deep"));
    let err = nest(vac::oci::MAX_NESTING + 1).unwrap_err().to_string();
    assert!(err.contains("nested more than"), "{err}");
}

/// `skopeo copy --all … oci:DIR:v2` writes index.json with one entry, the
/// tag, naming the platforms' index: the tag is looked up there only, and
/// the index is followed to linux/amd64. Before, the tag was looked for
/// again inside and the import failed with `no image tagged "v2"`.
#[test]
fn a_tagged_multi_platform_index_imports_by_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (arm, _) = image(dir.path(), "arm");
    let (amd, _) = image(dir.path(), "amd");
    let platforms = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{arm}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"{MANIFEST}","digest":"{amd}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    let p = put(dir.path(), platforms.as_bytes());
    index(dir.path(), &[entry(&p, INDEX, Some("v2"))]);
    let tree = from_upload(dir.path(), Some("v2")).unwrap();
    assert!(has(&tree, "amd") && !has(&tree, "arm"));
    let err = from_upload(dir.path(), Some("v3")).unwrap_err().to_string();
    assert!(err.contains(r#"no image tagged "v3""#), "{err}");
}

/// An index.json of more than the JSON bound is refused without being
/// read whole.
#[test]
fn an_oversized_index_is_refused() {
    let dir = simple_layout();
    let mut f = std::fs::File::create(dir.path().join("index.json")).unwrap();
    f.write_all(&vec![b' '; (vac::oci::MAX_JSON + 1) as usize])
        .unwrap();
    drop(f);
    for err in [
        from_upload(dir.path(), None).unwrap_err(),
        flatten(&DirLayout::new(dir.path()), None).unwrap_err(),
    ] {
        assert!(err.to_string().contains("bytes allowed"), "{err}");
    }
}

/// An import whose client has gone stops at its next read.
#[test]
fn a_cancelled_import_stops() {
    let dir = simple_layout();
    let (store, score) = archived(dir.path());
    let archive = vac::Archive::open(&store, &score).unwrap();
    let err = import_layout(
        &MemoryStore::new(),
        BlockSizes::default(),
        &ArchiveLayout::new(&archive),
        None,
        &Quiet,
        &|| true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cancelled"), "{err}");
}
