//! Errors of the file system, each with the errno a FUSE or 9P front answers.

use std::fmt;

/// A failed file-system operation: an errno and a sentence for logs and 9P.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }
    pub fn not_found(name: &str) -> FsError {
        FsError::new(libc::ENOENT, format!("{name}: no such file or directory"))
    }
    pub fn exists(name: &str) -> FsError {
        FsError::new(libc::EEXIST, format!("{name}: file exists"))
    }
    pub fn not_dir() -> FsError {
        FsError::new(libc::ENOTDIR, "not a directory")
    }
    pub fn is_dir() -> FsError {
        FsError::new(libc::EISDIR, "is a directory")
    }
    pub fn no_space() -> FsError {
        FsError::new(
            libc::ENOSPC,
            "the file system's change cache is full: save or delete files",
        )
    }
    pub fn invalid(why: impl Into<String>) -> FsError {
        FsError::new(libc::EINVAL, why)
    }
    pub fn too_big() -> FsError {
        FsError::new(
            libc::EFBIG,
            "file too large: vac files hold at most 2^48-1 bytes",
        )
    }
    pub fn stale() -> FsError {
        FsError::new(libc::ESTALE, "stale file handle")
    }
    /// A block could not be fetched or stored: EIO, naming the cause.
    pub fn io(cause: impl fmt::Display) -> FsError {
        FsError::new(libc::EIO, cause.to_string())
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FsError {}

impl From<vac::Error> for FsError {
    fn from(e: vac::Error) -> FsError {
        FsError::io(e)
    }
}

impl From<venti::StoreError> for FsError {
    fn from(e: venti::StoreError) -> FsError {
        FsError::io(e)
    }
}

pub type FsResult<T> = Result<T, FsError>;
