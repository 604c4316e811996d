//! Reading an archive lazily (spec §6.8): opening costs three block reads, a
//! lookup reads only the meta blocks of the directories on the path, and a file
//! read fetches only the blocks on the way to the bytes asked for.

use venti::{BlockStore, BlockType, Score, zero};

use crate::dirent::DirEntry;
use crate::entry::{ENTRY_SIZE, Entry, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, entries_per_block};
use crate::error::{Error, Result};
use crate::metablock::MetaBlock;
use crate::root::Root;
use crate::stream::{StreamReader, read_block};

/// A directory: its stream of VtEntries and its stream of MetaBlocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dir {
    pub source: Entry,
    pub msource: Entry,
}

/// One name in a directory, resolved to its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub dirent: DirEntry,
    /// The data stream (files, symlinks, devices) or dir stream (directories).
    pub entry: Entry,
    /// A directory's own (source, msource).
    pub dir: Option<Dir>,
}

impl Node {
    /// The file's length: its data stream's size (0 for directories).
    pub fn size(&self) -> u64 {
        if self.dir.is_some() {
            0
        } else {
            self.entry.size
        }
    }
}

/// An open archive.
pub struct Archive<'a> {
    store: &'a dyn BlockStore,
    pub root: Root,
    root_node: Node,
}

impl<'a> Archive<'a> {
    /// Opens the archive whose VtRoot is `score`.
    pub fn open(store: &'a dyn BlockStore, score: &Score) -> Result<Archive<'a>> {
        let bytes = store.read(score, BlockType::ROOT)?.ok_or_else(|| {
            Error::Invalid(format!(
                "vac:{score} is not in the store (no root block with that score)"
            ))
        })?;
        let root = Root::unpack(&bytes)?;
        if root.kind != "vac" {
            return Err(Error::Invalid(format!(
                "vac:{score} is a {:?} root, not a vac archive",
                root.kind
            )));
        }
        let bsize = root.block_size as usize;
        let top = read_block(store, &root.score, BlockType::DIR, bsize)?;
        let mut entries = unpack_top(&top)?;
        // fossil's archives hold one entry whose stream contains [D, M, MR] (§6.1).
        if !entries[2].is_active() {
            if !entries[0].is_active() || !entries[0].dir {
                return Err(Error::corrupt(
                    "root directory block has neither vac nor fossil layout",
                ));
            }
            let mut r = StreamReader::new(store, entries[0])?;
            let leaf = r.leaf(0)?;
            entries = unpack_top(&leaf)?;
        }
        let [d, m, mr] = entries;
        if !d.is_active() || !d.dir || !m.is_active() || m.dir || !mr.is_active() || mr.dir {
            return Err(Error::corrupt(
                "root directory entries are of the wrong kinds",
            ));
        }
        let mut mr_reader = StreamReader::new(store, mr)?;
        let mut block = mr_reader.leaf(0)?;
        zero::extend(BlockType::DATA, &mut block, mr.dsize as usize);
        let mb = MetaBlock::parse(&block, mr.dsize as usize)?;
        if mb.is_empty() {
            return Err(Error::corrupt("the root's meta block is empty"));
        }
        let dirent = mb.entry(0)?;
        let root_node = Node {
            dirent,
            entry: d,
            dir: Some(Dir {
                source: d,
                msource: m,
            }),
        };
        Ok(Archive {
            store,
            root,
            root_node,
        })
    }

    pub fn store(&self) -> &'a dyn BlockStore {
        self.store
    }

    /// The archive's root directory.
    pub fn root(&self) -> &Node {
        &self.root_node
    }

    /// Every entry of `dir`, in the order of its meta blocks.
    pub fn list(&self, dir: &Dir) -> Result<Vec<Node>> {
        list_dir(self.store, dir)
    }

    /// Finds `name` in `dir`, reading meta blocks until it turns up.
    pub fn lookup(&self, dir: &Dir, name: &str) -> Result<Option<Node>> {
        let mut meta = StreamReader::new(self.store, dir.msource)?;
        let dsize = dir.msource.dsize as usize;
        for k in 0..meta.leaf_count() {
            let mut block = meta.leaf(k)?;
            zero::extend(BlockType::DATA, &mut block, dsize);
            if let Some(d) = MetaBlock::parse(&block, dsize)?.lookup(name)? {
                return SourceReader::new(self.store, dir.source)?
                    .resolve(d)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Walks a slash-separated path from the root.
    pub fn walk(&self, path: &str) -> Result<Node> {
        let mut node = self.root_node.clone();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            let dir = node.dir.ok_or_else(|| Error::NotFound(path.to_string()))?;
            node = self
                .lookup(&dir, part)?
                .ok_or_else(|| Error::NotFound(path.to_string()))?;
        }
        Ok(node)
    }

    /// A reader of a node's data stream.
    pub fn open_file(&self, node: &Node) -> Result<StreamReader<'a>> {
        if node.dir.is_some() {
            return Err(Error::Invalid(format!(
                "{} is a directory",
                node.dirent.elem
            )));
        }
        StreamReader::new(self.store, node.entry)
    }

    /// All of a small stream's data (symlink targets, device strings).
    pub fn read_small(&self, node: &Node, limit: u64) -> Result<Vec<u8>> {
        read_small(self.store, &node.entry, limit)
            .map_err(|e| Error::corrupt(format!("{}: {e}", node.dirent.elem)))
    }
}

/// Every entry of `dir`, in the order of its meta blocks.
pub fn list_dir(store: &dyn BlockStore, dir: &Dir) -> Result<Vec<Node>> {
    let mut sources = SourceReader::new(store, dir.source)?;
    let mut out = Vec::new();
    let mut meta = StreamReader::new(store, dir.msource)?;
    let dsize = dir.msource.dsize as usize;
    for k in 0..meta.leaf_count() {
        let mut block = meta.leaf(k)?;
        zero::extend(BlockType::DATA, &mut block, dsize);
        let mb = MetaBlock::parse(&block, dsize)?;
        for i in 0..mb.len() {
            out.push(sources.resolve(mb.entry(i)?)?);
        }
    }
    Ok(out)
}

/// All of a small data stream (symlink targets, device strings), at most `limit` bytes.
pub fn read_small(store: &dyn BlockStore, entry: &Entry, limit: u64) -> Result<Vec<u8>> {
    if entry.size > limit {
        return Err(Error::corrupt(format!(
            "{} bytes of link or device data is more than {limit}",
            entry.size
        )));
    }
    let mut buf = vec![0u8; entry.size as usize];
    let n = StreamReader::new(store, *entry)?.read_at(0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn unpack_top(block: &[u8]) -> Result<[Entry; 3]> {
    let mut bytes = block.to_vec();
    bytes.resize(3 * ENTRY_SIZE, 0);
    Ok([
        Entry::unpack(&bytes[0..40])?,
        Entry::unpack(&bytes[40..80])?,
        Entry::unpack(&bytes[80..120])?,
    ])
}

/// Reads entries of a directory's source stream by index, keeping the last leaf.
struct SourceReader<'a> {
    stream: StreamReader<'a>,
    epb: u64,
    leaf: Option<(u64, Vec<u8>)>,
}

impl<'a> SourceReader<'a> {
    fn new(store: &'a dyn BlockStore, source: Entry) -> Result<SourceReader<'a>> {
        if !source.dir {
            return Err(Error::corrupt(
                "a directory's source is not a directory stream",
            ));
        }
        if (source.dsize as usize) < ENTRY_SIZE {
            return Err(Error::corrupt(format!(
                "a directory stream's dsize {} cannot hold one {ENTRY_SIZE}-byte entry",
                source.dsize
            )));
        }
        Ok(SourceReader {
            epb: entries_per_block(source.dsize),
            stream: StreamReader::new(store, source)?,
            leaf: None,
        })
    }

    fn entry(&mut self, index: u32) -> Result<Entry> {
        let index = index as u64;
        let count = entries_per_block(self.stream.entry().dsize)
            * (self.stream.entry().size / self.stream.entry().dsize as u64)
            + (self.stream.entry().size % self.stream.entry().dsize as u64) / ENTRY_SIZE as u64;
        if index >= count {
            return Err(Error::corrupt(format!(
                "entry index {index} is past the end of its directory ({count} entries)"
            )));
        }
        let k = index / self.epb;
        if !matches!(&self.leaf, Some((i, _)) if *i == k) {
            let mut leaf = self.stream.leaf(k)?;
            leaf.resize(self.stream.entry().dsize as usize, 0);
            self.leaf = Some((k, leaf));
        }
        let leaf = &self.leaf.as_ref().expect("filled").1;
        let at = (index % self.epb) as usize * ENTRY_SIZE;
        Entry::unpack(&leaf[at..at + ENTRY_SIZE])
    }

    fn resolve(&mut self, dirent: DirEntry) -> Result<Node> {
        let what = |msg: &str| Error::corrupt(format!("{}: {msg}", dirent.elem));
        let entry = self.entry(dirent.entry)?;
        if dirent.is_dir() {
            if !entry.is_active() || entry.generation != dirent.generation || !entry.dir {
                return Err(what("directory stream is missing or of the wrong kind"));
            }
            let meta = self.entry(dirent.mentry)?;
            if !meta.is_active() || meta.generation != dirent.mgen || meta.dir {
                return Err(what(
                    "directory meta stream is missing or of the wrong kind",
                ));
            }
            return Ok(Node {
                dirent,
                entry,
                dir: Some(Dir {
                    source: entry,
                    msource: meta,
                }),
            });
        }
        if entry.is_active() && entry.dir {
            return Err(what("a file's stream is a directory stream"));
        }
        // An inactive or regenerated slot reads as an empty file (plan9port).
        let entry = if entry.is_active() && entry.generation == dirent.generation {
            entry
        } else {
            // An inactive slot's sizes are unchecked: keep them in range.
            let fit = |n: u32| n.clamp(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
            Entry::empty(fit(entry.psize), fit(entry.dsize), false)
        };
        Ok(Node {
            dirent,
            entry,
            dir: None,
        })
    }
}
