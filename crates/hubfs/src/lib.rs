//! Hubs, as the original's hubfs (`../shared/reference/ants-spawngrid.md`
//! §3): files that are broadcast pipes with a ring buffer, for persistent
//! shells and the grid's message streams.
//!
//! * [`hub`]: the hubs themselves — every reader sees every byte written
//!   after its position, a slow reader is told what it lost, `fear`,
//!   `freeze`, `trunc`, `eof`, rate limits, and limits that are errors.
//! * [`server`]: a 9P2000 server of a hub set, which plan9port's `9p` and
//!   `9pfuse` and colony's client speak.
//! * [`fuse`]: the same hub set mounted on Linux through FUSE.
//! * [`typed`]: a hub shell's keys, split into the shell's input and `%`
//!   commands.

pub mod fuse;
pub mod hub;
pub mod server;
pub mod typed;

pub use hub::{HubError, HubSet, Limits, RateLimit};
