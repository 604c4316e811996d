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
use grid::quota::human;
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
            return Ok(score);
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
                    "unknown import format {w:?}: give nothing (a tar of a root) or oci[:TAG]"
                )),
            },
        }
    }
}

/// What an import stored.
pub struct Imported {
    pub score: Score,
    /// New bytes (counted against the quota) and bytes the store had.
    pub added: u64,
    pub known: u64,
}

/// Archives the stream `input` into `store`, within the bytes `left` of
/// the importer's quota. An OCI layout is unpacked first into `scratch`
/// (a store and files of its own, removed after), so only the flattened
/// root counts. Binding the name is the caller's.
pub fn archive(
    store: &dyn BlockStore,
    left: u64,
    input: &mut dyn Read,
    format: &Format,
    scratch: &std::path::Path,
) -> GridResult<Imported> {
    let metered = Metered {
        inner: store,
        left,
        added: AtomicU64::new(0),
        known: AtomicU64::new(0),
    };
    let refused = |e: vac::Error| GridError::refused(format!("{e}; nothing was bound"));
    let tree = match format {
        Format::Tar => {
            let mut tree = Tree::default();
            vac::tar::import_tar(
                &metered,
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
                .map_err(|e| GridError::io(format!("creating {}", scratch.display()), e))?;
            let tmp = tempfile::Builder::new()
                .prefix("import-")
                .tempdir_in(scratch)
                .map_err(|e| GridError::io(format!("a directory in {}", scratch.display()), e))?;
            let unpacked = venti::LogStore::open(tmp.path().join("store"))?;
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
            let dir = tmp.path().join("layout");
            vac::extract::extract(
                &archive,
                archive.root(),
                &dir,
                vac::extract::ExtractOptions::for_current_user(),
                &vac::walk::Quiet,
            )
            .map_err(refused)?;
            vac::oci::import_layout(
                &metered,
                BlockSizes::default(),
                &dir,
                tag.as_deref(),
                &vac::walk::Quiet,
            )
            .map_err(refused)?
        }
    };
    let score = tree
        .write(&metered, BlockSizes::default(), None)
        .map_err(refused)?;
    metered.sync()?;
    Ok(Imported {
        score,
        added: metered.added.load(Ordering::Relaxed),
        known: metered.known.load(Ordering::Relaxed),
    })
}
