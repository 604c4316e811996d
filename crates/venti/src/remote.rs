//! [`RemoteStore`]: a venti server seen through the synchronous [`BlockStore`]
//! interface, for callers that are not async (archivers, FUSE threads).
//!
//! Writes are pipelined: `write` hashes locally, queues the Twrite and returns
//! the score at once; a failure is kept and reported by the next `write` or by
//! `sync`, which waits for every queued write before it asks the server to sync.
//! So, as with any venti client, nothing is known to be stored until `sync`
//! returns. A lost connection is re-established on the next request, so a
//! server that restarts is used again without the caller starting over.

use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{BlockStore, BlockType, Client, ClientError, MAX_BLOCK_SIZE, Score, StoreError};

/// Writes allowed in flight before `write` waits.
const WRITE_WINDOW: usize = 128;

/// A blocking, pipelining handle on a venti server. Do not use it from inside
/// an async runtime: its methods block the calling thread.
pub struct RemoteStore {
    runtime: Runtime,
    /// Replaced by a fresh connection when the old one is lost.
    client: Mutex<Client>,
    addr: String,
    window: Arc<Semaphore>,
    writes: Mutex<JoinSet<Result<(), ClientError>>>,
    failed: Mutex<Option<String>>,
}

impl RemoteStore {
    /// Connects to the server at `addr` (dial form or `host:port`).
    pub fn connect(addr: &str) -> Result<RemoteStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("starting the venti client runtime", e))?;
        let client = runtime
            .block_on(Client::connect(addr))
            .map_err(|e| StoreError::Remote(e.to_string()))?;
        Ok(RemoteStore {
            runtime,
            client: Mutex::new(client),
            addr: addr.to_string(),
            window: Arc::new(Semaphore::new(WRITE_WINDOW)),
            writes: Mutex::new(JoinSet::new()),
            failed: Mutex::new(None),
        })
    }

    /// The address this store talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn remote_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Remote(format!("venti server {}: {e}", self.addr))
    }

    fn client(&self) -> Client {
        self.client.lock().expect("remote store lock").clone()
    }

    /// Runs `op`; if the connection was lost, reconnects once and retries.
    fn with_retry<T>(
        &self,
        op: impl Fn(Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        match op(self.client()) {
            Err(ClientError::Closed(why)) => {
                tracing::info!(server = %self.addr, reason = %why, "venti connection lost; reconnecting");
                let fresh = self.runtime.block_on(Client::connect(&self.addr))?;
                *self.client.lock().expect("remote store lock") = fresh.clone();
                op(fresh)
            }
            other => other,
        }
    }

    /// Keeps the first failure of a finished write.
    fn note(&self, outcome: Result<Result<(), ClientError>, tokio::task::JoinError>) {
        let outcome = outcome
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = outcome {
            self.failed
                .lock()
                .expect("remote store lock")
                .get_or_insert(e);
        }
    }

    /// Reports (once) a write that failed since the last report.
    fn take_failure(&self) -> Result<(), StoreError> {
        match self.failed.lock().expect("remote store lock").take() {
            Some(e) => Err(self.remote_error(format!("an earlier write failed: {e}"))),
            None => Ok(()),
        }
    }
}

impl BlockStore for RemoteStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if score.is_zero() {
            return Ok(Some(Vec::new()));
        }
        match self.with_retry(|c| self.runtime.block_on(c.read(score, ty, MAX_BLOCK_SIZE))) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.is_missing_block() => Ok(None),
            Err(e) => Err(self.remote_error(e)),
        }
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len()));
        }
        if data.is_empty() {
            return Ok(Score::ZERO);
        }
        let score = Score::of(data);
        let permit = self
            .runtime
            .block_on(self.window.clone().acquire_owned())
            .map_err(|e| self.remote_error(e))?;
        {
            let mut writes = self.writes.lock().expect("remote store lock");
            while let Some(done) = writes.try_join_next() {
                self.note(done);
            }
        }
        self.take_failure()?;
        let client = self.client();
        let data = data.to_vec();
        self.writes.lock().expect("remote store lock").spawn_on(
            async move {
                let _permit = permit;
                client.write(ty, data).await.map(|_| ())
            },
            self.runtime.handle(),
        );
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut writes = std::mem::take(&mut *self.writes.lock().expect("remote store lock"));
        self.runtime.block_on(async {
            while let Some(done) = writes.join_next().await {
                self.note(done);
            }
        });
        self.take_failure()?;
        self.with_retry(|c| self.runtime.block_on(c.sync()))
            .map_err(|e| self.remote_error(e))
    }
}
