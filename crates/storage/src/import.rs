//! `import NAME` through the front door: a tar stream on the command's
//! standard input (`tar c -C DIR . | ssh -p 16999 you@node import NAME`,
//! or `docker export C | ssh … import NAME`) archived as a new root bound
//! to NAME for that user.
//!
//! The stream is read as it comes (memory is bounded whatever its size) and
//! deduplicated against the store. Only the blocks the store did not hold
//! count against the user's quota; an import that would pass it stops with
//! an error. A malformed or truncated stream is refused, and nothing is
//! bound: the blocks already written are unreachable, never half a root
//! under a name.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use grid::error::{GridError, GridResult};
use units::human;
use vac::tree::{BlockSizes, Tree};
use venti::{BlockStore, BlockType, Score, StoreError};

/// A store that counts the bytes of blocks it did not hold, and refuses
/// one that would pass `left`.
struct Metered<'a> {
    inner: &'a dyn BlockStore,
    left: u64,
    added: AtomicU64,
    known: AtomicU64,
}

impl BlockStore for Metered<'_> {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(score, ty)
    }

    fn holds(&self, score: &Score, ty: BlockType) -> Result<bool, StoreError> {
        self.inner.holds(score, ty)
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        self.write_scored(ty, data, Score::of(data))
    }

    fn write_scored(&self, ty: BlockType, data: &[u8], score: Score) -> Result<Score, StoreError> {
        if self.inner.holds(&score, ty)? {
            self.known.fetch_add(data.len() as u64, Ordering::Relaxed);
            // Through to the store all the same, which finds it held and
            // stores nothing: a node's metered store counts it deduplicated.
            return self.inner.write_scored(ty, data, score);
        }
        let added = self.added.load(Ordering::Relaxed) + data.len() as u64;
        if added > self.left {
            return Err(StoreError::Remote(format!(
                "over your quota: this import needs more than the {} you have left",
                human(self.left)
            )));
        }
        self.added.store(added, Ordering::Relaxed);
        self.inner.write_scored(ty, data, score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

/// What an import's stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A root file system as a tar stream.
    Tar,
    /// A tar of an OCI image layout, flattened into one root; the tag, if
    /// the layout holds several images.
    Oci(Option<String>),
}

impl Format {
    /// `oci` or `oci:TAG` after the name, or nothing.
    pub fn parse(word: Option<&str>) -> Result<Format, String> {
        match word {
            None => Ok(Format::Tar),
            Some("oci") => Ok(Format::Oci(None)),
            Some(w) => match w.strip_prefix("oci:") {
                Some(tag) if !tag.is_empty() => Ok(Format::Oci(Some(tag.to_string()))),
                _ => Err(format!(
                    "{w:?} is not an import format: after the name (one word, no spaces) give nothing (a tar of a root) or oci[:TAG]"
                )),
            },
        }
    }
}

/// An import's stream as it arrives: what it holds, its bytes, and
/// whether its client has gone (asked between reads, so an import stops
/// working for a client that left).
pub struct Upload<'a> {
    pub format: &'a Format,
    pub input: &'a mut dyn Read,
    pub cancelled: &'a dyn Fn() -> bool,
}

/// What an import stored.
pub struct Imported {
    pub score: Score,
    /// New bytes (counted against the quota) and bytes the store had.
    pub added: u64,
    pub known: u64,
}

/// An import refused, and the new bytes it had stored before it was: they
/// are charged to the importer all the same (a quota bounds the bytes a
/// user makes the node store, whatever became of them).
pub struct Refused {
    pub error: GridError,
    pub added: u64,
}

/// Archives the stream of `upload` into `store`, within the bytes `left` of
/// the importer's quota. An OCI layout is first stored as it came into
/// `scratch` (a store of its own, removed after, bounded by the same
/// quota) and read from there block by block: it never becomes files on
/// this machine, so nothing in it is followed or opened as a host path.
/// Only the flattened root counts. The upload's `cancelled` is asked
/// between reads: the import stops once its client has gone. Binding the
/// name is the caller's.
pub fn archive(
    store: &dyn BlockStore,
    left: u64,
    upload: Upload<'_>,
    scratch: &std::path::Path,
) -> Result<Imported, Refused> {
    let metered = Metered {
        inner: store,
        left,
        added: AtomicU64::new(0),
        known: AtomicU64::new(0),
    };
    let result = archive_into(&metered, left, upload, scratch);
    let added = metered.added.load(Ordering::Relaxed);
    match result {
        Ok(score) => Ok(Imported {
            score,
            added,
            known: metered.known.load(Ordering::Relaxed),
        }),
        Err(error) => Err(Refused { error, added }),
    }
}

fn archive_into(
    metered: &Metered,
    left: u64,
    upload: Upload<'_>,
    scratch: &std::path::Path,
) -> GridResult<Score> {
    let Upload {
        format,
        input,
        cancelled,
    } = upload;
    let refused = |e: vac::Error| GridError::refused(format!("{e}; nothing was bound"));
    let tree = match format {
        Format::Tar => {
            let mut tree = Tree::default();
            vac::tar::import_tar(
                metered,
                BlockSizes::default(),
                &mut tree,
                input,
                &vac::walk::Quiet,
            )
            .map_err(refused)?;
            tree
        }
        Format::Oci(tag) => {
            std::fs::create_dir_all(scratch)
                .map_err(|e| GridError::io("creating the node's scratch directory", e))?;
            let tmp = tempfile::Builder::new()
                .prefix(SCRATCH_PREFIX)
                .tempdir_in(scratch)
                .map_err(|e| GridError::io("a directory in the node's scratch directory", e))?;
            // Not checked for collisions here: the node's store checks
            // every block of the result as it takes it.
            let unpacked =
                venti::LogStore::open(tmp.path().join("store"))?.without_collision_detection();
            // The layout as uploaded costs the importer's quota too, for
            // as long as it is kept.
            let unpacked = Metered {
                inner: &unpacked,
                left,
                added: AtomicU64::new(0),
                known: AtomicU64::new(0),
            };
            let mut layout = Tree::default();
            vac::tar::import_tar(
                &unpacked,
                BlockSizes::default(),
                &mut layout,
                input,
                &vac::walk::Quiet,
            )
            .map_err(refused)?;
            let score = layout
                .write(&unpacked, BlockSizes::default(), None)
                .map_err(refused)?;
            let archive = vac::Archive::open(&unpacked, &score).map_err(refused)?;
            vac::oci::import_layout(
                metered,
                BlockSizes::default(),
                &vac::oci::ArchiveLayout::new(&archive),
                tag.as_deref(),
                &vac::walk::Quiet,
                cancelled,
            )
            .map_err(refused)?
        }
    };
    let score = tree
        .write(metered, BlockSizes::default(), None)
        .map_err(refused)?;
    metered.sync()?;
    Ok(score)
}

/// How the scratch directories of imports begin: any left in the scratch
/// directory when a node starts are from a node that died mid-import.
pub const SCRATCH_PREFIX: &str = "import-";

/// Removes what imports of an earlier run left in `scratch` (a node
/// killed mid-import never removed its directory); returns how many.
pub fn remove_leftovers(scratch: &std::path::Path) -> usize {
    let Ok(dir) = std::fs::read_dir(scratch) else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
