//! The grid node: the storage half of a spawngrid node.
//!
//! * [`state`]: the node's state directory and configuration.
//! * [`users`] and [`scorenames`]: who may log in (by SSH key) and which
//!   roots they may spawn, kept as ndb files that Plan 9's `ndb/query` reads.
//! * [`node`]: the command set — scores, spawn, spawndisk, save, invite,
//!   boom, status — over live fossil file systems mounted through FUSE.
//! * [`sshd`]: the SSH front door that authenticates users by key and runs
//!   their commands, one-shot or at an interactive prompt.

pub mod env;
pub mod error;
pub mod names;
pub mod node;
pub mod scorenames;
pub mod sshd;
pub mod state;
pub mod users;

pub use error::GridError;
pub use node::{Node, NodeConfig, Reply};
