//! The grid's records, shared by its two services (the `storage` and `cpu`
//! crates, of which storage depends on cpu and cpu on neither):
//!
//! * [`state`]: a node's state directory and what lives in it.
//! * [`users`] and [`scorenames`] (with [`names`]): who may log in, by SSH
//!   key, and which roots they may spawn, kept as ndb files that Plan 9's
//!   `ndb/query` reads.
//! * [`ssh`]: the SSH settings and host key of the front door and the
//!   environments' logins, and [`ssh_server`], the accept loop they share.
//! * [`error`]: errors worded for the user who typed the command.

pub mod error;
pub mod names;
pub mod quota;
pub mod scorenames;
pub mod ssh;
pub mod ssh_server;
pub mod state;
pub mod users;

pub use error::GridError;
