//! Errors of the grid layer, worded for the user who typed the command.

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{0}")]
    Refused(String),
    /// Refused for lack of room (every place that could take it is full):
    /// the same request may succeed later, so a queue waits and tries again.
    #[error("{0}")]
    Full(String),
    /// Something below (the file system, an archive) failed; its error,
    /// worded by the layer that met it.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Ndb(#[from] ndb::Error),
    #[error(transparent)]
    Store(#[from] venti::StoreError),
    #[error("{context}: {err}")]
    Io {
        context: String,
        err: std::io::Error,
    },
}

impl GridError {
    pub fn refused(why: impl Into<String>) -> GridError {
        GridError::Refused(why.into())
    }
    pub fn full(why: impl Into<String>) -> GridError {
        GridError::Full(why.into())
    }
    pub fn is_full(&self) -> bool {
        matches!(self, GridError::Full(_))
    }
    pub fn failed(why: impl Into<String>) -> GridError {
        GridError::Failed(why.into())
    }
    pub fn io(context: impl Into<String>, err: std::io::Error) -> GridError {
        GridError::Io {
            context: context.into(),
            err,
        }
    }
}

pub type GridResult<T> = Result<T, GridError>;
