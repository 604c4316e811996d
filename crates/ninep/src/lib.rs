//! 9P2000 for colony: the message codec ([`fcall`]), a server that exports a
//! live fossil file system to Plan 9 clients ([`server`]), and a small client
//! ([`client`]) for tests and scripts. Plain 9P2000 only: a client asking
//! for 9P2000.u or .L is answered `9P2000`, as the protocol prescribes.

pub mod client;
pub mod fcall;
pub mod server;

pub use client::Client;
pub use fcall::{Fcall, Qid, Stat};
pub use server::{Options, serve, serve_stream, serve_with};
