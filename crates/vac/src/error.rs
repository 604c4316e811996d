//! Errors of the vac layer; each names what is wrong.

use std::io;
use std::path::PathBuf;

use venti::{BlockType, Score, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("block {score}/{ty} is not in the store")]
    MissingBlock { score: Score, ty: BlockType },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: no such file or directory in the archive")]
    NotFound(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt(what.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
