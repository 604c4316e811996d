//! 9P2000 for colony: the message codec ([`fcall`]) and a small client
//! ([`client`]) for tests and scripts. Its servers are elsewhere, each over
//! what it serves (`fossil9p` a live fossil file system, `hubfs` hubs):
//! this crate needs none of them. Plain 9P2000 only.

pub mod client;
pub mod fcall;

pub use client::Client;
pub use fcall::{Fcall, Qid, Stat};
