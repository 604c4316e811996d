//! The archive being built: an in-memory tree whose file contents are already
//! in the store (as stream entries), written out bottom-up at the end.
//!
//! Both importers (a directory walk and a tar stream) fill a [`Tree`]; only the
//! directory structure is held in memory, never file data. Children are kept
//! sorted by name, and qids are given in that order, so the same tree always
//! yields the same root score, whichever importer read it.

use std::collections::BTreeMap;

use venti::{BlockStore, BlockType, Score};

use crate::dirent::DirEntry;
use crate::entry::{ENTRY_SIZE, Entry, entries_per_block};
use crate::error::{Error, Result};
use crate::metablock;
use crate::root::Root;
use crate::stream::StreamWriter;
use crate::unix::{Kind, Meta};

/// Block sizes of an archive: vac's defaults are 8192 and 8180 (409 pointers).
#[derive(Debug, Clone, Copy)]
pub struct BlockSizes {
    pub dsize: u32,
    pub psize: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            dsize: 8192,
            psize: 8180,
        }
    }
}

/// A node of the tree being built.
#[derive(Debug, Clone)]
pub enum TreeNode {
    /// Anything but a directory: its data stream is already stored.
    Leaf { meta: Meta, data: Entry },
    Dir {
        meta: Meta,
        children: BTreeMap<String, TreeNode>,
    },
}

impl Drop for TreeNode {
    /// Drops a directory's descendants from a heap stack instead of by
    /// recursion, so a tree of any depth can be dropped.
    fn drop(&mut self) {
        let TreeNode::Dir { children, .. } = self else {
            return;
        };
        let mut stack: Vec<TreeNode> = std::mem::take(children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            if let TreeNode::Dir { children, .. } = &mut node {
                stack.extend(std::mem::take(children).into_values());
            }
        }
    }
}

impl TreeNode {
    pub fn meta(&self) -> &Meta {
        match self {
            TreeNode::Leaf { meta, .. } | TreeNode::Dir { meta, .. } => meta,
        }
    }

    /// An empty directory with the given metadata.
    pub fn dir(meta: Meta) -> TreeNode {
        TreeNode::Dir {
            meta,
            children: BTreeMap::new(),
        }
    }
}

/// Metadata for a directory that appears only as the parent of something
/// (tar streams may leave parents out).
pub fn implied_dir_meta() -> Meta {
    Meta {
        kind: Kind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

/// The whole archive: the root directory's metadata and children.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: TreeNode,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            root: TreeNode::dir(implied_dir_meta()),
        }
    }
}

impl Tree {
    /// The directory at `path` (components), created with implied metadata as
    /// needed. Fails if something on the path is not a directory.
    pub fn dir_mut(&mut self, path: &[&str]) -> Result<&mut BTreeMap<String, TreeNode>> {
        let mut node = &mut self.root;
        for (i, part) in path.iter().enumerate() {
            let TreeNode::Dir { children, .. } = node else {
                unreachable!("checked below")
            };
            node = children
                .entry(part.to_string())
                .or_insert_with(|| TreeNode::dir(implied_dir_meta()));
            if !matches!(node, TreeNode::Dir { .. }) {
                return Err(Error::Invalid(format!(
                    "{} is not a directory",
                    path[..=i].join("/")
                )));
            }
        }
        match node {
            TreeNode::Dir { children, .. } => Ok(children),
            TreeNode::Leaf { .. } => unreachable!("checked in the loop"),
        }
    }

    /// Puts `node` at `path`; a directory already there keeps its children
    /// and takes the new metadata.
    pub fn insert(&mut self, path: &[&str], node: TreeNode) -> Result<()> {
        let Some((name, parent)) = path.split_last() else {
            // The root itself.
            if let TreeNode::Dir { meta, .. } = &node {
                if let TreeNode::Dir { meta: m, .. } = &mut self.root {
                    *m = meta.clone();
                }
                return Ok(());
            }
            return Err(Error::Invalid(
                "the archive root must be a directory".into(),
            ));
        };
        let children = self.dir_mut(parent)?;
        if let (Some(TreeNode::Dir { meta, .. }), TreeNode::Dir { meta: new, .. }) =
            (children.get_mut(*name), &node)
        {
            *meta = new.clone();
        } else {
            children.insert(name.to_string(), node);
        }
        Ok(())
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &[&str]) -> Option<&TreeNode> {
        let mut node = &self.root;
        for part in path {
            match node {
                TreeNode::Dir { children, .. } => node = children.get(*part)?,
                TreeNode::Leaf { .. } => return None,
            }
        }
        Some(node)
    }

    /// Writes the directories bottom-up, then the root directory block and the
    /// VtRoot, and syncs. Returns the VtRoot's score.
    pub fn write(
        &self,
        store: &dyn BlockStore,
        sizes: BlockSizes,
        prev: Option<Score>,
    ) -> Result<Score> {
        let TreeNode::Dir { meta, children } = &self.root else {
            return Err(Error::Invalid(
                "the archive root must be a directory".into(),
            ));
        };
        let mut next_qid = 1;
        let (d, m) = write_dir(store, sizes, children, &mut next_qid)?;

        let mut root_dirent = DirEntry {
            qid: 0,
            ..Default::default()
        };
        meta.fill_dirent(&mut root_dirent);
        root_dirent.qid_space = Some((0, next_qid));
        write_root(store, sizes, root_dirent, d, m, prev)
    }
}

/// Writes MR (the root's own DirEntry, vac style: named "/", with its qid
/// space), the root directory block `[D, M, MR]` and the VtRoot, then syncs.
pub fn write_root(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    mut root: DirEntry,
    d: Entry,
    m: Entry,
    prev: Option<Score>,
) -> Result<Score> {
    root.elem = "/".into();
    root.entry = 0;
    root.mentry = 1;
    let mr = write_meta_stream(store, sizes, std::slice::from_ref(&root))?;
    let mut top = Vec::with_capacity(3 * ENTRY_SIZE);
    for e in [d, m, mr] {
        top.extend_from_slice(&e.pack());
    }
    let top_score = store.write(BlockType::DIR, venti::zero::truncate(BlockType::DIR, &top))?;
    let vt_root = Root {
        name: String::new(),
        kind: "vac".into(),
        score: top_score,
        block_size: sizes.dsize,
        prev: prev.unwrap_or(Score::ALL_ZEROS),
    };
    let score = store.write(BlockType::ROOT, &vt_root.pack())?;
    store.sync()?;
    Ok(score)
}

/// Writes one directory's two streams, children first.
///
/// Iterative, with an explicit stack of the directories being written, so no
/// depth of nesting (a tar stream can name a path of any length) runs the
/// process out of stack. Qids are given in the same pre-order as always, so
/// the same tree still yields the same score.
fn write_dir(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    children: &BTreeMap<String, TreeNode>,
    next_qid: &mut u64,
) -> Result<(Entry, Entry)> {
    struct Frame<'t> {
        children: std::collections::btree_map::Iter<'t, String, TreeNode>,
        source: Vec<Entry>,
        dirents: Vec<DirEntry>,
        /// The entry of the child directory being written above this frame.
        waiting: Option<DirEntry>,
    }
    fn frame(children: &BTreeMap<String, TreeNode>) -> Frame<'_> {
        Frame {
            source: Vec::with_capacity(children.len()),
            dirents: Vec::with_capacity(children.len()),
            children: children.iter(),
            waiting: None,
        }
    }
    let mut stack = vec![frame(children)];
    loop {
        let top = stack.last_mut().expect("a directory is being written");
        let Some((name, child)) = top.children.next() else {
            let done = stack.pop().expect("a directory is being written");
            let d = write_dir_stream(store, sizes, &done.source)?;
            let m = write_meta_stream(store, sizes, &done.dirents)?;
            let Some(parent) = stack.last_mut() else {
                return Ok((d, m));
            };
            let mut dirent = parent.waiting.take().expect("a parent waits for its child");
            dirent.mentry = dirent.entry + 1;
            parent.source.push(d);
            parent.source.push(m);
            parent.dirents.push(dirent);
            continue;
        };
        let mut d = DirEntry {
            elem: name.clone(),
            qid: *next_qid,
            ..Default::default()
        };
        *next_qid += 1;
        child.meta().fill_dirent(&mut d);
        d.entry = top.source.len() as u32;
        match child {
            TreeNode::Leaf { data, .. } => {
                top.source.push(*data);
                top.dirents.push(d);
            }
            TreeNode::Dir { children, .. } => {
                top.waiting = Some(d);
                stack.push(frame(children));
            }
        }
    }
}

/// A directory stream: `epb` entries per leaf, size counting full leaves as dsize.
pub fn write_dir_stream(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    entries: &[Entry],
) -> Result<Entry> {
    let epb = entries_per_block(sizes.dsize) as usize;
    let mut w = StreamWriter::new(store, true, sizes.psize, sizes.dsize);
    let mut leaf = Vec::with_capacity(epb * ENTRY_SIZE);
    for chunk in entries.chunks(epb) {
        leaf.clear();
        for e in chunk {
            leaf.extend_from_slice(&e.pack());
        }
        w.push_leaf(&leaf)?;
    }
    let n = entries.len() as u64;
    let size = sizes.dsize as u64 * (n / epb as u64) + ENTRY_SIZE as u64 * (n % epb as u64);
    w.finish(size)
}

/// A meta stream: MetaBlocks of dsize bytes each; size is their count × dsize.
pub fn write_meta_stream(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    dirents: &[DirEntry],
) -> Result<Entry> {
    let blocks = metablock::pack(dirents, sizes.dsize as usize)?;
    let mut w = StreamWriter::new(store, false, sizes.psize, sizes.dsize);
    for b in &blocks {
        w.push_leaf(b)?;
    }
    w.finish(blocks.len() as u64 * sizes.dsize as u64)
}
