//! fossil: a writable, copy-on-write file system whose root is a vac score.
//!
//! Opening a root costs three block reads whatever the tree's size; blocks
//! come from venti only when first touched ([`cache`]); changes live in a
//! bounded cache of RAM or a disk file ([`dirty`]) until [`Fs::save`] archives
//! them as a new vac root that plan9port's unvac can read. [`Fs`] offers an
//! inode-style API that the FUSE and 9P fronts drive; this crate knows
//! neither.
//!
//! Hard links are supported while the file system runs. The vac format cannot
//! express them, so a save stores each name as its own file (sharing blocks).

pub mod cache;
pub mod dirty;
pub mod error;
pub mod fs;
pub mod save;

pub use dirty::CacheConfig;
pub use error::{FsError, FsResult};
pub use fs::{
    Attr, FileKind, Fs, Listing, MAX_FILE_SIZE, ROOT_INO, SetAttr, StatFs, Usage, check_name,
};
pub use save::SaveReport;
