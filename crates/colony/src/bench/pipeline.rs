//! Writing blocks to a venti server with many requests in flight: what the
//! store and link benchmarks both measure.

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;
use venti::{BlockType, Client, Score};

/// The benchmarks' block size.
pub const BLOCK: usize = 8192;

/// Writes the blocks of `range` with `window` requests in flight.
pub async fn write_pipelined(
    client: &Client,
    blockgen: Arc<Blocks>,
    range: std::ops::Range<usize>,
    window: usize,
) -> Result<Vec<Score>> {
    let mut tasks = JoinSet::new();
    let mut scores = Vec::with_capacity(range.len());
    for i in range {
        if tasks.len() >= window {
            scores.push(tasks.join_next().await.expect("tasks")??);
        }
        let client = client.clone();
        let blockgen = blockgen.clone();
        tasks.spawn(async move { client.write(BlockType::DATA, blockgen.get(i)).await });
    }
    while let Some(done) = tasks.join_next().await {
        scores.push(done??);
    }
    Ok(scores)
}

/// Unique blocks made cheaply: random bytes with a counter and a salt in front,
/// so generating them costs a copy, not a random-number run.
pub struct Blocks {
    base: Vec<u8>,
    salt: u64,
}

impl Blocks {
    pub fn new(salt: u64) -> Blocks {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
        let base = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Blocks { base, salt }
    }

    pub fn get(&self, i: usize) -> Vec<u8> {
        let mut b = self.base.clone();
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        b[8..16].copy_from_slice(&self.salt.to_be_bytes());
        b
    }
}
