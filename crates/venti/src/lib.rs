//! Venti, the write-once block store of Plan 9, as plan9port speaks it.
//!
//! * [`Score`], [`BlockType`] and [`zero`]: names, types and zero truncation of blocks.
//! * [`Message`] and [`conn`]: the wire protocol — messages, version exchange, framing.
//! * [`BlockStore`], [`LogStore`], [`MemoryStore`]: where blocks are kept.
//! * [`server::serve`] and [`Client`]: the network service and its pipelined client;
//!   [`RemoteStore`] puts a server behind the synchronous [`BlockStore`] interface.
//!   Both are given their connections: dial strings and the grid's TLS are
//!   `link`'s, above this crate.
//!
//! Every layer above (vac, fossil, the grid) stores its data through this crate.

pub mod block_type;
pub mod client;
pub mod conn;
pub mod hex;
pub mod message;
pub mod reach;
pub mod remote;
pub mod score;
pub mod server;
pub mod store;
pub mod zero;

pub use block_type::BlockType;
pub use client::{Client, ClientError};
pub use message::Message;
pub use remote::RemoteStore;
pub use score::{COLLISION_REFUSAL, Collision, SCORE_SIZE, Score};
pub use store::{
    BlockCache, BlockStore, CacheStats, CachedStore, Collected, DEFAULT_GRACE, LogRecord, LogStore,
    MAX_BLOCK_SIZE, MemoryStore, StoreError, SweepLimits,
};
