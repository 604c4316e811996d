//! 9P2000 for colony: the message codec ([`fcall`]), the part of a server
//! every file server shares ([`server`]: framing, version, limits on
//! replies) and a small client ([`client`]) for tests and scripts. The file
//! servers are elsewhere, each over what it serves (`fossil9p` a live
//! fossil file system, `hubfs` hubs): this crate needs none of them. Plain
//! 9P2000 only.

pub mod client;
pub mod fcall;
pub mod server;

pub use client::Client;
pub use fcall::{Fcall, Qid, Stat};
