//! A pusher's durable position for one peer, as ventiprog's `.info` file:
//! the offset in this node's log up to which the peer has acknowledged
//! every block, and how many name bindings it has been sent.
//!
//! The file is replaced atomically after every acknowledged batch, so a
//! pusher killed at any moment resends at most the batch in flight.

use std::io::Write;
use std::path::{Path, PathBuf};

use venti::LogStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Log offset: every block record before it is durable at the peer.
    pub blocks: u64,
    /// Name bindings (in the catalog's order) the peer has applied.
    pub names: u64,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            blocks: LogStore::LOG_START,
            names: 0,
        }
    }
}

#[derive(Clone)]
pub struct ProgressFile {
    path: PathBuf,
}

impl ProgressFile {
    pub fn new(dir: &Path, peer: &str) -> ProgressFile {
        ProgressFile {
            path: dir.join(format!("{peer}.progress")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved position, or the start if there is none. A file that does
    /// not parse is reported and treated as the start: resending costs the
    /// peer only a score per block it already has.
    pub fn load(&self) -> Position {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Position::default();
        };
        let mut pos = Position::default();
        let mut seen = 0;
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("blocks", v)) => {
                    if let Ok(v) = v.parse() {
                        pos.blocks = v;
                        seen += 1;
                    }
                }
                Some(("names", v)) => {
                    if let Ok(v) = v.parse() {
                        pos.names = v;
                        seen += 1;
                    }
                }
                _ => {}
            }
        }
        if seen != 2 || pos.blocks < LogStore::LOG_START {
            tracing::warn!(file = %self.path.display(), "unreadable replication progress; starting over");
            return Position::default();
        }
        pos
    }

    /// The saved position, made durable first (file and directory synced),
    /// for a collection that will not sweep past it: after a power loss
    /// the file holds this position or a later one, never an earlier one
    /// that a sweep may have turned into a skip's middle.
    pub fn load_durable(&self) -> std::io::Result<Position> {
        match std::fs::File::open(&self.path) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::default()),
            Err(e) => return Err(e),
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        Ok(self.load())
    }

    /// Replaces the file with `pos`: temporary file, rename. Not fsynced:
    /// a killed process loses nothing the kernel has, and a machine that
    /// loses power finds an older position, which costs the peer a score
    /// per block it already has, never a block.
    pub fn save(&self, pos: Position) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let fresh = !self.path.exists();
        let tmp = self.path.with_extension("progress.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "blocks={} names={}", pos.blocks, pos.names)?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if fresh {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_survives_and_garbage_means_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = ProgressFile::new(dir.path(), "b");
        assert_eq!(file.load(), Position::default());
        let pos = Position {
            blocks: 123_456,
            names: 7,
        };
        file.save(pos).unwrap();
        assert_eq!(file.load(), pos);
        std::fs::write(file.path(), "blocks=12 names=x").unwrap();
        assert_eq!(file.load(), Position::default());
    }
}
