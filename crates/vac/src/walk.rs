//! Archiving a directory tree from the file system, and the file-content writer
//! both importers share.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use venti::BlockStore;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::reader::{Archive, Dir, Node};
use crate::stream::StreamWriter;
use crate::tree::{BlockSizes, Tree, TreeNode};
use crate::unix::{Kind, Meta};

/// Told about progress and problems as an archive is made.
pub trait Observer {
    /// `n` more bytes of file content were read.
    fn bytes(&self, _n: u64) {}
    /// One more file, directory or special file was archived.
    fn file(&self) {}
    /// Something at `path` was left out or is incomplete.
    fn warn(&self, _path: &Path, _why: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Counts of what an archive run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// Files whose blocks were reused from the `-d` archive without reading them.
    pub reused: u64,
    pub warnings: u64,
}

/// Reads `reader` to its end as a data stream. `expected` is how long the
/// caller thinks it is (a file's size, a tar entry's): the read buffer is
/// no larger than that needs. It is only a hint: whatever the reader gives
/// is archived.
pub fn write_content(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    reader: &mut dyn Read,
    expected: u64,
    observer: &dyn Observer,
) -> std::io::Result<Result<Entry>> {
    let dsize = sizes.dsize as usize;
    let mut w = StreamWriter::new(store, false, sizes.psize, sizes.dsize);
    // Most files are small: a 512 KiB zeroed buffer for each cost more
    // than archiving them (a third of a tar import's time went to
    // zeroing fresh pages). Any length of at least one block works: what
    // is left after the full blocks go is always less than one.
    let len = (expected.min(64 * dsize as u64) as usize)
        .div_ceil(dsize)
        .max(1)
        * dsize;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        size += n as u64;
        observer.bytes(n as u64);
        let full = if n == 0 {
            filled
        } else {
            filled / dsize * dsize
        };
        for leaf in buf[..full].chunks(dsize) {
            if let Err(e) = w.push_leaf(leaf) {
                return Ok(Err(e));
            }
        }
        buf.copy_within(full..filled, 0);
        filled -= full;
        if n == 0 {
            return Ok(w.finish(size));
        }
    }
}

/// What archiving one path gave.
enum Visit {
    Skipped,
    Leaf(TreeNode),
    /// A directory: its contents are still to be read.
    Dir(Meta),
}

/// A directory part-way through being read from disk.
struct WalkFrame {
    /// Its name in its parent (empty for the directory the walk started at).
    name: String,
    /// Its metadata (`None` for the directory the walk started at).
    meta: Option<Meta>,
    children: std::collections::BTreeMap<String, TreeNode>,
    /// Entries still to read, last first.
    rest: Vec<(PathBuf, String)>,
    /// The previous archive's entries of this directory, by name.
    prev: HashMap<String, Node>,
}

/// Archives paths from the file system into a [`Tree`].
pub struct DirImporter<'a> {
    store: &'a dyn BlockStore,
    sizes: BlockSizes,
    observer: &'a dyn Observer,
    prev: Option<&'a Archive<'a>>,
    pub stats: Stats,
}

impl<'a> DirImporter<'a> {
    pub fn new(
        store: &'a dyn BlockStore,
        sizes: BlockSizes,
        observer: &'a dyn Observer,
        prev: Option<&'a Archive<'a>>,
    ) -> Self {
        DirImporter {
            store,
            sizes,
            observer,
            prev,
            stats: Stats::default(),
        }
    }

    /// Adds `path` to `tree`: `.`, `/` and paths ending in `/.` put the
    /// directory's contents at the archive root (and its metadata on the root);
    /// anything else becomes one child of the root named after its last
    /// component, as plan9port vac does.
    pub fn add(&mut self, tree: &mut Tree, path: &Path) -> Result<()> {
        let text = path.as_os_str().as_bytes();
        let contents_only = text == b"."
            || text == b"/"
            || text == b".."
            || text.ends_with(b"/.")
            || text.ends_with(b"/..");
        let prev_root = self.prev.map(|a| a.root().clone());
        if contents_only {
            let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            let meta = Meta::from_std(&md, None)
                .filter(|m| m.kind == Kind::Dir)
                .ok_or_else(|| Error::Invalid(format!("{} is not a directory", path.display())))?;
            let TreeNode::Dir {
                children,
                meta: root_meta,
            } = &mut tree.root
            else {
                unreachable!("root is a dir")
            };
            *root_meta = meta;
            self.fill_dir(children, path, prev_root.as_ref())?;
            return Ok(());
        }
        let name = path.file_name().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: cannot tell what to call it in the archive",
                path.display()
            ))
        })?;
        let name = name
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("{}: name is not UTF-8", path.display())))?
            .to_string();
        let prev_child = match (&prev_root, self.prev) {
            (Some(root), Some(a)) => root.dir.and_then(|d| a.lookup(&d, &name).ok().flatten()),
            _ => None,
        };
        let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if let Some(node) = self.node(path, &md, prev_child.as_ref())? {
            let TreeNode::Dir { children, .. } = &mut tree.root else {
                unreachable!("root is a dir")
            };
            children.insert(name, node);
        }
        Ok(())
    }

    /// Archives one path; `None` when it is left out (reported to the observer).
    fn node(
        &mut self,
        path: &Path,
        md: &std::fs::Metadata,
        prev: Option<&Node>,
    ) -> Result<Option<TreeNode>> {
        Ok(match self.visit(path, md, prev)? {
            Visit::Skipped => None,
            Visit::Leaf(node) => Some(node),
            Visit::Dir(meta) => {
                let mut children = std::collections::BTreeMap::new();
                self.fill_dir(&mut children, path, prev)?;
                Some(TreeNode::Dir { meta, children })
            }
        })
    }

    /// Archives one path, except a directory's contents: for a directory it
    /// returns the metadata, and the caller walks it.
    fn visit(&mut self, path: &Path, md: &std::fs::Metadata, prev: Option<&Node>) -> Result<Visit> {
        let link = if md.file_type().is_symlink() {
            match std::fs::read_link(path) {
                Ok(t) => Some(t.into_os_string().into_vec()),
                Err(e) => {
                    self.skip(path, &format!("cannot read link: {e}"));
                    return Ok(Visit::Skipped);
                }
            }
        } else {
            None
        };
        let Some(meta) = Meta::from_std(md, link) else {
            self.skip(path, "sockets cannot be archived");
            return Ok(Visit::Skipped);
        };
        self.stats.files += 1;
        self.observer.file();
        match meta.kind {
            Kind::Dir => Ok(Visit::Dir(meta)),
            Kind::File => {
                if let Some(reused) = self.reusable(prev, md) {
                    self.stats.reused += 1;
                    return Ok(Visit::Leaf(TreeNode::Leaf { meta, data: reused }));
                }
                let mut file = match File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        self.skip(path, &format!("cannot open: {e}"));
                        return Ok(Visit::Skipped);
                    }
                };
                match write_content(self.store, self.sizes, &mut file, md.len(), self.observer) {
                    Ok(result) => {
                        let data = result?;
                        self.stats.bytes += data.size;
                        Ok(Visit::Leaf(TreeNode::Leaf { meta, data }))
                    }
                    Err(e) => {
                        self.skip(path, &format!("cannot read: {e}"));
                        Ok(Visit::Skipped)
                    }
                }
            }
            _ => {
                let data = crate::stream::write_bytes(
                    self.store,
                    &meta.special_data(),
                    self.sizes.psize,
                    self.sizes.dsize,
                )?;
                Ok(Visit::Leaf(TreeNode::Leaf { meta, data }))
            }
        }
    }

    /// Fills `into` with the contents of the directory at `path`, everything
    /// below it included.
    ///
    /// Iterative, with an explicit stack of the directories being read, so
    /// the depth of the tree on disk costs no stack.
    fn fill_dir(
        &mut self,
        into: &mut std::collections::BTreeMap<String, TreeNode>,
        path: &Path,
        prev: Option<&Node>,
    ) -> Result<()> {
        let mut stack = vec![WalkFrame {
            name: String::new(),
            meta: None,
            children: std::mem::take(into),
            rest: self.list_dir(path),
            prev: self.prev_children(prev),
        }];
        loop {
            let top = stack.last_mut().expect("a directory is being read");
            let Some((child, name)) = top.rest.pop() else {
                let done = stack.pop().expect("a directory is being read");
                match (stack.last_mut(), done.meta) {
                    (Some(parent), Some(meta)) => {
                        let node = TreeNode::Dir {
                            meta,
                            children: done.children,
                        };
                        parent.children.insert(done.name, node);
                    }
                    _ => {
                        *into = done.children;
                        return Ok(());
                    }
                }
                continue;
            };
            let md = match std::fs::symlink_metadata(&child) {
                Ok(md) => md,
                Err(e) => {
                    self.skip(&child, &format!("cannot stat: {e}"));
                    continue;
                }
            };
            let prev_child = top.prev.remove(&name);
            match self.visit(&child, &md, prev_child.as_ref())? {
                Visit::Skipped => {}
                Visit::Leaf(node) => {
                    stack
                        .last_mut()
                        .expect("a directory is being read")
                        .children
                        .insert(name, node);
                }
                Visit::Dir(meta) => {
                    let frame = WalkFrame {
                        name,
                        meta: Some(meta),
                        children: std::collections::BTreeMap::new(),
                        rest: self.list_dir(&child),
                        prev: self.prev_children(prev_child.as_ref()),
                    };
                    stack.push(frame);
                }
            }
        }
    }

    /// The entries of a directory as (path, name), sorted, last first; what
    /// cannot be listed or named is reported and left out.
    fn list_dir(&mut self, path: &Path) -> Vec<(PathBuf, String)> {
        let entries = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                self.skip(path, &format!("cannot list directory: {e}"));
                return Vec::new();
            }
        };
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.path()),
                Err(e) => {
                    self.skip(path, &format!("error listing directory: {e}"));
                }
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for child in names.into_iter().rev() {
            let name = child
                .file_name()
                .expect("read_dir names have a last component");
            match name.to_str() {
                Some(name) => {
                    let name = name.to_string();
                    out.push((child, name));
                }
                None => {
                    self.skip(&child, "name is not UTF-8; vac names are UTF-8");
                }
            }
        }
        out
    }

    /// The previous archive's entries of the matching directory, by name.
    fn prev_children(&self, prev: Option<&Node>) -> HashMap<String, Node> {
        let (Some(archive), Some(Node { dir: Some(dir), .. })) = (self.prev, prev) else {
            return HashMap::new();
        };
        let dir: &Dir = dir;
        match archive.list(dir) {
            Ok(nodes) => nodes
                .into_iter()
                .map(|n| (n.dirent.elem.clone(), n))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the previous archive's directory; archiving it afresh");
                HashMap::new()
            }
        }
    }

    /// A previous archive's stream for a regular file of the same size and mtime.
    fn reusable(&self, prev: Option<&Node>, md: &std::fs::Metadata) -> Option<Entry> {
        use std::os::unix::fs::MetadataExt;
        let prev = prev?;
        let d = &prev.dirent;
        let same = prev.dir.is_none()
            && d.mode
                & (crate::dirent::mode::DIR
                    | crate::dirent::mode::LINK
                    | crate::dirent::mode::DEVICE
                    | crate::dirent::mode::NAMED_PIPE)
                == 0
            && prev.entry.size == md.size()
            && d.mtime as i64 == md.mtime()
            && prev.entry.dsize == self.sizes.dsize
            && prev.entry.psize == self.sizes.psize;
        same.then_some(prev.entry)
    }

    fn skip(&mut self, path: &Path, why: &str) -> Option<TreeNode> {
        self.stats.warnings += 1;
        self.observer.warn(path, why);
        None
    }
}

use std::os::unix::ffi::OsStringExt;
