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

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use venti::BlockStore;

use crate::error::{Error, Result};
use crate::tree::{BlockSizes, Tree, TreeNode, implied_dir_meta};
use crate::walk::Observer;

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

fn invalid(what: impl Into<String>) -> Error {
    Error::Invalid(what.into())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read(path).map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// The blob file of `sha256:HEX`, its name checked (no path tricks).
fn blob(layout: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("unsupported digest {digest:?}: sha256 only")))?;
    Ok(layout.join("blobs/sha256").join(hex))
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
        if n == 0 {
            let got: String = self
                .hash
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if format!("sha256:{got}") != self.want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "layer {} does not match its digest (got sha256:{got})",
                        self.want
                    ),
                ));
            }
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The manifest `tag` names in `layout` (any tag if `tag` is None and
/// there is one image).
fn manifest(layout: &Path, tag: Option<&str>) -> Result<Value> {
    if !layout.join("oci-layout").exists() {
        return Err(invalid(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            layout.display()
        )));
    }
    let mut index = read_json(&layout.join("index.json"))?;
    loop {
        let manifests = index["manifests"]
            .as_array()
            .ok_or_else(|| invalid("index.json has no manifests"))?
            .clone();
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
                .ok_or_else(|| invalid(format!("no image tagged {t:?} in {}", layout.display())))?,
            None if manifests.len() == 1 => &manifests[0],
            None => manifests
                .iter()
                .find(platform)
                .or(manifests.first())
                .ok_or_else(|| invalid("index.json lists no images"))?,
        };
        let digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| invalid("a manifest entry without a digest"))?;
        let doc = read_json(&blob(layout, digest)?)?;
        let media = doc["mediaType"]
            .as_str()
            .or(chosen["mediaType"].as_str())
            .unwrap_or("");
        if media.contains("image.index") || media.contains("manifest.list") {
            // An index of platforms: its linux/amd64 manifest.
            index = doc;
            continue;
        }
        return Ok(doc);
    }
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

/// Flattens the image `tag` of the layout at `layout` into a new tree.
pub fn import_layout(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    layout: &Path,
    tag: Option<&str>,
    observer: &dyn Observer,
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
        let path = blob(layout, digest)?;
        let file = File::open(&path).map_err(|e| invalid(format!("layer {digest}: {e}")))?;
        let checked = Checked {
            inner: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            want: digest.to_string(),
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
