//! Vac archives: directory trees stored as venti hash trees, byte-compatible
//! with plan9port's `vac`, `unvac` and `vacfs` (spec §5–6), and with the
//! archives fossil's `snap -a` makes (§7).
//!
//! * Formats: [`entry`] (VtEntry), [`root`] (VtRoot and `vac:` scores),
//!   [`dirent`] (DirEntry), [`metablock`], and [`stream`] (hash trees).
//! * Writing: importers ([`walk`] for directories, [`tar`] for tar streams)
//!   fill a [`tree::Tree`], which [`tree::Tree::write`] stores.
//! * Reading: [`reader::Archive`] walks an archive lazily; [`extract`] lists
//!   and unpacks it. The file system of the next layer is built on the reader.
//! * [`unix`] says how Linux metadata maps onto the format, and what is not kept.

pub mod dirent;
pub mod entry;
pub mod error;
pub mod extract;
pub mod metablock;
pub mod oci;
pub mod reader;
pub mod root;
pub mod stream;
pub mod tar;
pub mod tree;
pub mod unix;
pub mod walk;

pub use error::{Error, Result};
pub use reader::{Archive, Node};
pub use root::{format_vac, parse_vac, resolve_root_arg};
pub use tree::{BlockSizes, Tree};
