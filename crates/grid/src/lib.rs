//! The grid node, in two services with one-way dependencies:
//!
//! * [`storage`]: users, names and the front door's commands (scores,
//!   spawn, save, invite, boom, status), with the SSH front door
//!   ([`storage::frontdoor`]) and placement of environments on cpu nodes
//!   ([`storage::placement`]). It depends on the cpu service only to run
//!   environments on its own machine (role `both`).
//! * [`cpu`]: environments — live fossil file systems mounted through FUSE,
//!   processes in namespaces on them, their SSH logins — and a cpu node's
//!   side of the control link ([`cpu::agent`]). It knows nothing of names.
//!
//! Shared by both: the state directory ([`state`]), the users file
//! ([`users`]) and the scorenames file ([`scorenames`], [`names`]), kept as
//! ndb files that Plan 9's `ndb/query` reads, and SSH settings ([`ssh`]).
//! The control protocol itself is the `control` crate; TLS is `link`'s.

pub mod cpu;
pub mod error;
pub mod names;
pub mod scorenames;
pub mod ssh;
pub mod state;
pub mod storage;
pub mod users;

pub use cpu::CpuConfig;
pub use error::GridError;
pub use storage::{Node, Reply};
