//! OCI image layouts (what `skopeo copy … oci:DIR:TAG` and `umoci` write)
//! flattened into one archive, so images built with Docker tooling become
//! roots without a container engine.
//!
//! `index.json` names the image (by `org.opencontainers.image.ref.name`,
//! or the only one); a nested image index is followed to its linux/amd64
//! (or first) manifest. The manifest's layers are applied in order, each a
//! tar stream (plain, gzip or zstd) read as it comes and checked against
//! its sha256 digest. Whiteouts follow the OCI rules: `.wh.NAME` removes
//! NAME from the layers below, `.wh..wh..opq` empties its directory of
//! them; neither appears in the result.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use venti::BlockStore;

use crate::dirent::mode;
use crate::error::{Error, Result};
use crate::reader::{Archive, Node};
use crate::stream::StreamReader;
use crate::tree::{BlockSizes, Tree, TreeNode, implied_dir_meta};
use crate::walk::Observer;

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// The largest JSON document of a layout (`index.json`, an index, a
/// manifest) that is read: real ones are a few KiB.
pub const MAX_JSON: u64 = 4 << 20;

/// How many image indexes deep a manifest is looked for (real layouts
/// nest one: `skopeo copy --all` puts the platforms' index under
/// `index.json`).
pub const MAX_NESTING: usize = 4;

fn invalid(what: impl Into<String>) -> Error {
    Error::Invalid(what.into())
}

/// Where an image layout's files are read from. A layout is data: only
/// its regular files count, nothing is reached by following a link, and
/// every read is bounded.
pub trait Layout {
    /// All of the regular file at `path` (relative to the layout, `/`
    /// between names), refused if it is longer than `limit`.
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>>;
    /// A reader of the regular file at `path`.
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>>;
}

/// A layout uploaded as an archive: read straight from its blocks, so
/// nothing of it is ever a file on the host. A symlink, device or FIFO
/// in it is no file of the layout at all.
pub struct ArchiveLayout<'a> {
    archive: &'a Archive<'a>,
}

impl<'a> ArchiveLayout<'a> {
    pub fn new(archive: &'a Archive<'a>) -> ArchiveLayout<'a> {
        ArchiveLayout { archive }
    }

    fn regular(&self, path: &str) -> Result<Node> {
        // walk() descends only through directories: a symlink on the way
        // has no directory of its own, so the path is simply not there.
        let node = self.archive.walk(path).map_err(|e| match e {
            Error::NotFound(_) => invalid(format!("the layout has no {path}")),
            e => e,
        })?;
        let special = mode::LINK | mode::DEVICE | mode::NAMED_PIPE;
        if node.dir.is_some() || node.dirent.mode & special != 0 {
            return Err(invalid(format!(
                "{path} in the layout is not a regular file"
            )));
        }
        Ok(node)
    }
}

impl Layout for ArchiveLayout<'_> {
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let node = self.regular(path)?;
        if node.size() > limit {
            return Err(invalid(format!(
                "{path} in the layout is {} bytes, more than the {limit} bytes allowed",
                node.size()
            )));
        }
        let mut out = Vec::with_capacity(node.size() as usize);
        self.open(path)?
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("{path}: {e}")))?;
        Ok(out)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>> {
        let node = self.regular(path)?;
        Ok(Box::new(ArchiveFile {
            stream: self.archive.open_file(&node)?,
            at: 0,
        }))
    }
}

/// A file of an archive as a `Read`.
struct ArchiveFile<'a> {
    stream: StreamReader<'a>,
    at: u64,
}

impl Read for ArchiveFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .stream
            .read_at(self.at, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A layout in a directory of this machine (`colony import --oci DIR`):
/// every name on a path must be a real directory and the last a regular
/// file, opened without following a link or waiting on a FIFO.
pub struct DirLayout {
    dir: PathBuf,
}

impl DirLayout {
    pub fn new(dir: &Path) -> DirLayout {
        DirLayout {
            dir: dir.to_path_buf(),
        }
    }

    fn open_regular(&self, path: &str) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut at = self.dir.clone();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() || *part == "." || *part == ".." {
                return Err(invalid(format!("bad layout path {path:?}")));
            }
            at.push(part);
            let meta = std::fs::symlink_metadata(&at).map_err(|e| Error::io(&at, e))?;
            let last = i + 1 == parts.len();
            if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
                return Err(invalid(format!(
                    "{} is not a regular {}",
                    at.display(),
                    if last { "file" } else { "directory" }
                )));
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&at)
            .map_err(|e| Error::io(&at, e))?;
        // Checked again on what was opened: the path may have changed.
        if !file.metadata().map_err(|e| Error::io(&at, e))?.is_file() {
            return Err(invalid(format!("{} is not a regular file", at.display())));
        }
        Ok(file)
    }
}

impl Layout for DirLayout {
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let file = self.open_regular(path)?;
        let mut out = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(self.dir.join(path), e))?;
        if out.len() as u64 > limit {
            return Err(invalid(format!(
                "{path} in the layout is more than the {limit} bytes allowed"
            )));
        }
        Ok(out)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.open_regular(path)?))
    }
}

/// The blob path of `sha256:HEX`, its name checked (no path tricks).
fn blob_path(digest: &str) -> Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("unsupported digest {digest:?}: sha256 only")))?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn sha256_hex(hash: Sha256) -> String {
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON blob, checked against its digest before it is believed.
fn json_blob(layout: &dyn Layout, digest: &str) -> Result<Value> {
    let bytes = layout.read(&blob_path(digest)?, MAX_JSON)?;
    let mut hash = Sha256::new();
    hash.update(&bytes);
    if format!("sha256:{}", sha256_hex(hash)) != digest.to_ascii_lowercase() {
        return Err(invalid(format!("blob {digest} does not match its digest")));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("blob {digest}: {e}")))
}

/// Reads a blob while hashing it; at its end the digest must match.
struct Checked<R> {
    inner: R,
    hash: Sha256,
    want: String,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && format!("sha256:{}", sha256_hex(self.hash.clone())) != self.want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("layer {} does not match its digest", self.want),
            ));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Stops a read once `cancelled` says so (the importer's client left, or
/// the node is stopping), so no import outlives the reason for it.
struct Cancellable<'c, R> {
    inner: R,
    cancelled: &'c dyn Fn() -> bool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.cancelled)() {
            // Not `Interrupted`: readers retry that kind for ever.
            return Err(io::Error::other("the import was cancelled"));
        }
        self.inner.read(buf)
    }
}

/// The manifest `tag` names in `layout` (any tag if `tag` is None and
/// there is one image). The tag names an entry of `index.json`; an index
/// it leads to is followed to its linux/amd64 (or only, or first) manifest.
fn manifest(layout: &dyn Layout, tag: Option<&str>) -> Result<Value> {
    layout
        .read("oci-layout", 4096)
        .map_err(|e| invalid(format!("not an OCI image layout (oci-layout: {e})")))?;
    let top = layout.read("index.json", MAX_JSON)?;
    let mut index: Value =
        serde_json::from_slice(&top).map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut tag = tag;
    let mut seen = HashSet::new();
    for _ in 0..=MAX_NESTING {
        let manifests = index["manifests"]
            .as_array()
            .ok_or_else(|| invalid("an image index has no manifests"))?;
        let named =
            |m: &&Value| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == tag;
        let platform = |m: &&Value| {
            m["platform"]["os"].as_str() == Some("linux")
                && m["platform"]["architecture"].as_str() == Some("amd64")
        };
        let chosen = match tag {
            Some(t) => manifests
                .iter()
                .find(named)
                .ok_or_else(|| invalid(format!("no image tagged {t:?} in the layout")))?,
            None if manifests.len() == 1 => &manifests[0],
            None => manifests
                .iter()
                .find(platform)
                .or(manifests.first())
                .ok_or_else(|| invalid("an image index lists no images"))?,
        };
        let digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| invalid("a manifest entry without a digest"))?
            .to_string();
        if !seen.insert(digest.clone()) {
            return Err(invalid(format!(
                "the image index {digest} leads back to itself"
            )));
        }
        let media = chosen["mediaType"].as_str().unwrap_or("").to_string();
        let doc = json_blob(layout, &digest)?;
        let media = doc["mediaType"].as_str().unwrap_or(&media);
        if media.contains("image.index") || media.contains("manifest.list") {
            // An index of platforms: the tag named it, so it is not
            // looked for again inside.
            index = doc;
            tag = None;
            continue;
        }
        return Ok(doc);
    }
    Err(invalid(format!(
        "image indexes nested more than {MAX_NESTING} deep"
    )))
}

/// Applies `layer` onto `acc`: its whiteouts remove from `acc`, its
/// entries replace what `acc` had (a directory over a directory merges).
pub fn apply_layer(acc: &mut Tree, mut layer: Tree) -> Result<()> {
    let TreeNode::Dir { meta, children } = &mut layer.root else {
        return Err(invalid("a layer's root is not a directory"));
    };
    let mut stack = vec![(Vec::<String>::new(), meta.clone(), std::mem::take(children))];
    while let Some((path, meta, mut children)) = stack.pop() {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        if meta != implied_dir_meta() {
            acc.insert(&parts, TreeNode::dir(meta))?;
        }
        let dir = acc.dir_mut(&parts)?;
        // Whiteouts speak of the layers below: first, whatever the order.
        if children.remove(OPAQUE).is_some() {
            dir.clear();
        }
        let whiteouts: Vec<String> = children
            .keys()
            .filter(|n| n.starts_with(WHITEOUT))
            .cloned()
            .collect();
        for w in whiteouts {
            children.remove(&w);
            dir.remove(&w[WHITEOUT.len()..]);
        }
        for (name, mut node) in std::mem::take(&mut children) {
            let below_is_dir = matches!(dir.get(&name), Some(TreeNode::Dir { .. }));
            match &mut node {
                TreeNode::Dir { meta, children } if below_is_dir => {
                    let mut p = path.clone();
                    p.push(name);
                    stack.push((p, meta.clone(), std::mem::take(children)));
                }
                _ => {
                    // A directory in this layer may still hold whiteouts.
                    scrub(&mut node);
                    dir.insert(name, node);
                }
            }
        }
    }
    Ok(())
}

/// Drops whiteout entries from a subtree that has nothing below it.
fn scrub(node: &mut TreeNode) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let TreeNode::Dir { children, .. } = n {
            children.retain(|name, _| !name.starts_with(WHITEOUT));
            stack.extend(children.values_mut());
        }
    }
}

/// Flattens the image `tag` of `layout` into a new tree, stopping with an
/// error as soon as `cancelled` says so.
pub fn import_layout(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    layout: &dyn Layout,
    tag: Option<&str>,
    observer: &dyn Observer,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tree> {
    let manifest = manifest(layout, tag)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| invalid("the image manifest lists no layers"))?;
    let mut acc = Tree::default();
    for layer in layers {
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| invalid("a layer without a digest"))?;
        let media = layer["mediaType"].as_str().unwrap_or("");
        let file = layout
            .open(&blob_path(digest)?)
            .map_err(|e| invalid(format!("layer {digest}: {e}")))?;
        let checked = Checked {
            inner: Cancellable {
                inner: BufReader::with_capacity(1 << 20, file),
                cancelled,
            },
            hash: Sha256::new(),
            want: digest.to_ascii_lowercase(),
        };
        let mut input: Box<dyn Read> = if media.ends_with("+gzip") || media.ends_with(".gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(checked))
        } else if media.ends_with("+zstd") || media.ends_with(".zstd") {
            Box::new(
                ruzstd::decoding::StreamingDecoder::new(checked)
                    .map_err(|e| invalid(format!("layer {digest}: {e}")))?,
            )
        } else if media.ends_with(".tar") || media.ends_with("layer.v1.tar") || media.is_empty() {
            Box::new(checked)
        } else {
            return Err(invalid(format!(
                "layer {digest} is {media:?}: layers are tar, tar+gzip or tar+zstd"
            )));
        };
        // The decompressed stream too: a small layer can expand for long.
        let mut input = Cancellable {
            inner: &mut input,
            cancelled,
        };
        let mut tree = Tree::default();
        crate::tar::import_tar(store, sizes, &mut tree, &mut input, observer)
            .map_err(|e| invalid(format!("layer {digest}: {e}")))?;
        // Anything the decompressor left unread still counts for the digest.
        io::copy(&mut input, &mut io::sink())
            .map_err(|e| invalid(format!("layer {digest}: {e}")))?;
        apply_layer(&mut acc, tree)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use crate::unix::{Kind, Meta};

    fn file(mtime: i64) -> TreeNode {
        TreeNode::Leaf {
            meta: Meta {
                kind: Kind::File,
                perm: 0o644,
                uid: 0,
                gid: 0,
                mtime,
            },
            data: Entry::empty(8180, 8192, false),
        }
    }

    fn tree(paths: &[(&str, i64)]) -> Tree {
        let mut t = Tree::default();
        for (p, m) in paths {
            let parts: Vec<&str> = p.split('/').collect();
            t.insert(&parts, file(*m)).unwrap();
        }
        t
    }

    fn names(t: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), &t.root)];
        while let Some((p, n)) = stack.pop() {
            match n {
                TreeNode::Dir { children, .. } => {
                    for (name, c) in children {
                        stack.push((format!("{p}/{name}"), c));
                    }
                }
                TreeNode::Leaf { meta, .. } => out.push(format!("{p}@{}", meta.mtime)),
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whiteouts_remove_and_opaque_directories_empty_the_layers_below() {
        let mut acc = tree(&[
            ("etc/a", 1),
            ("etc/b", 1),
            ("dir/x", 1),
            ("dir/sub/y", 1),
            ("keep", 1),
        ]);
        let layer = tree(&[
            ("etc/.wh.a", 2),
            ("etc/b", 2),
            ("dir/.wh..wh..opq", 2),
            ("dir/z", 2),
            ("new/.wh.ghost", 2),
            ("new/f", 2),
        ]);
        apply_layer(&mut acc, layer).unwrap();
        assert_eq!(names(&acc), ["/dir/z@2", "/etc/b@2", "/keep@1", "/new/f@2"]);
    }
}
