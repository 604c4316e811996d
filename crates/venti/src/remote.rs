//! [`RemoteStore`]: a venti server seen through the synchronous [`BlockStore`]
//! interface, for callers that are not async (archivers, FUSE threads).
//!
//! Writes are pipelined: `write` hashes locally, queues the Twrite and returns
//! the score at once; a failure is kept and reported by the next `write` or by
//! `sync`, which waits for every queued write before it asks the server to sync.
//! So, as with any venti client, nothing is known to be stored until `sync`
//! returns. A lost connection is re-established on the next request, so a
//! server that restarts is used again without the caller starting over.
//!
//! # Sync means durable, across reconnects
//!
//! A venti server's `Rsync` covers only the writes *that server process*
//! received: one killed and restarted on the same store has forgotten whatever
//! it had acknowledged but not yet made durable, and the protocol has no
//! session identity to tell a restarted server from the old one. So the store
//! keeps every block written since the last successful sync, tagged with the
//! connection that carried it. Before asking for a sync, it writes again, on
//! the current connection, every kept block that went over an earlier one
//! (the server stores a block it already has as a lookup), and only an `Rsync`
//! on the connection that carried — or re-carried — every block is taken as
//! done. The kept blocks are bounded: past [`REPLAY_LIMIT`] bytes the store
//! syncs by itself, so they never grow past that whatever the caller writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::Stream;
use crate::{BlockStore, BlockType, Client, ClientError, MAX_BLOCK_SIZE, Score, StoreError};

/// How a [`RemoteStore`] reaches its server, each time it must.
type Dial =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Stream, String>> + Send>> + Send + Sync>;

/// Writes allowed in flight before `write` waits.
const WRITE_WINDOW: usize = 128;

/// Reads in flight at once in [`BlockStore::read_each`].
pub const READ_WINDOW: usize = 128;

/// Bytes of unsynced blocks kept for replay before `write` syncs by itself.
pub const REPLAY_LIMIT: usize = 32 << 20;

/// How many times one `sync` reconnects before it gives up.
const SYNC_ATTEMPTS: u32 = 3;

/// The current connection and its number; the number grows with every reconnect.
struct Session {
    client: Client,
    generation: u64,
}

/// A block written since the last successful sync.
struct Unsynced {
    ty: BlockType,
    data: Vec<u8>,
    /// The connection that last carried it.
    generation: u64,
}

#[derive(Default)]
struct Pending {
    blocks: Vec<Unsynced>,
    bytes: usize,
}

/// A blocking, pipelining handle on a venti server. Do not use it from inside
/// an async runtime: its methods block the calling thread.
pub struct RemoteStore {
    /// Always set; taken only by `drop`.
    runtime: Option<Runtime>,
    /// Replaced by a fresh connection when the old one is lost.
    session: Mutex<Session>,
    addr: String,
    /// How the server is reached, again on every reconnect.
    dial: Dial,
    window: Arc<Semaphore>,
    writes: Mutex<JoinSet<Result<(), ClientError>>>,
    failed: Mutex<Option<String>>,
    unsynced: Mutex<Pending>,
    /// Serialises syncs, so two callers never replay the same blocks at once.
    syncing: Mutex<()>,
}

impl RemoteStore {
    fn rt(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Connects to the server at `addr` (plain TCP, `host:port`).
    pub fn connect_tcp(addr: &str) -> Result<RemoteStore, StoreError> {
        let target = addr.to_string();
        RemoteStore::with_dial(
            addr,
            Box::new(move || {
                let target = target.clone();
                Box::pin(async move { crate::client::tcp(target).await.map(Stream::from) })
            }),
        )
    }

    /// Connects to the server at `addr` (which names it in messages) over
    /// what `dial` makes, and again over a fresh one whenever the
    /// connection is lost. Dialing is the caller's: a grid member dials
    /// with its link (`link::dial::connect`).
    pub fn connect<D, F, S>(addr: &str, dial: D) -> Result<RemoteStore, StoreError>
    where
        D: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = Result<S, String>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        RemoteStore::with_dial(
            addr,
            Box::new(move || {
                let dialing = dial();
                Box::pin(async move { dialing.await.map(Stream::new) })
            }),
        )
    }

    fn with_dial(addr: &str, dial: Dial) -> Result<RemoteStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("starting the venti client runtime", e))?;
        let client = runtime
            .block_on(async { Client::hello(addr, dial().await).await })
            .map_err(|e| StoreError::Remote(e.to_string()))?;
        Ok(RemoteStore {
            runtime: Some(runtime),
            session: Mutex::new(Session {
                client,
                generation: 0,
            }),
            addr: addr.to_string(),
            dial,
            window: Arc::new(Semaphore::new(WRITE_WINDOW)),
            writes: Mutex::new(JoinSet::new()),
            failed: Mutex::new(None),
            unsynced: Mutex::new(Pending::default()),
            syncing: Mutex::new(()),
        })
    }

    /// The address this store talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bytes written since the last successful sync (kept for replay).
    pub fn unsynced_bytes(&self) -> usize {
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
    }

    fn remote_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Remote(format!("venti server {}: {e}", self.addr))
    }

    fn current(&self) -> (Client, u64) {
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        (s.client.clone(), s.generation)
    }

    /// Replaces the connection numbered `lost` with a fresh one, unless another
    /// caller already did; returns the connection to use now.
    fn reconnect(&self, lost: u64, why: &str) -> Result<(Client, u64), ClientError> {
        {
            let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if s.generation != lost {
                return Ok((s.client.clone(), s.generation));
            }
        }
        tracing::info!(server = %self.addr, reason = %why, "venti connection lost; reconnecting");
        let fresh = self
            .rt()
            .block_on(async { Client::hello(&self.addr, (self.dial)().await).await })?;
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation == lost {
            s.client = fresh;
            s.generation += 1;
        }
        Ok((s.client.clone(), s.generation))
    }

    /// Runs `op`; if the connection was lost, reconnects once and retries.
    /// For reads only: a write's fate is settled by `sync`.
    fn with_retry<T>(
        &self,
        op: impl Fn(Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let (client, generation) = self.current();
        match op(client) {
            Err(ClientError::Closed(why)) => {
                let (fresh, _) = self.reconnect(generation, &why)?;
                op(fresh)
            }
            other => other,
        }
    }

    /// Keeps the first failure of a finished write. A write that failed only
    /// because its connection was lost is not a failure: `sync` sends it again.
    fn note(&self, outcome: Result<Result<(), ClientError>, tokio::task::JoinError>) {
        let outcome = match outcome {
            Ok(Ok(())) | Ok(Err(ClientError::Closed(_))) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(outcome);
    }

    /// Reports (once) a write that failed since the last report.
    fn take_failure(&self) -> Result<(), StoreError> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(self.remote_error(format!("an earlier write failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits for every queued write.
    fn drain_writes(&self) {
        let mut writes =
            std::mem::take(&mut *self.writes.lock().unwrap_or_else(|p| p.into_inner()));
        self.rt().block_on(async {
            while let Some(done) = writes.join_next().await {
                self.note(done);
            }
        });
    }

    /// Sends again, on connection `generation`, every unsynced block that an
    /// earlier connection carried.
    fn replay(&self, client: &Client, generation: u64) -> Result<(), ClientError> {
        let stale: Vec<(usize, BlockType, Vec<u8>)> = {
            let pending = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.generation != generation)
                .map(|(i, b)| (i, b.ty, b.data.clone()))
                .collect()
        };
        if stale.is_empty() {
            return Ok(());
        }
        tracing::info!(
            server = %self.addr,
            blocks = stale.len(),
            "writing again the unsynced blocks of a lost venti connection"
        );
        let indices: Vec<usize> = stale.iter().map(|(i, _, _)| *i).collect();
        self.rt().block_on(async {
            let mut set = JoinSet::new();
            for (_, ty, data) in stale {
                let client = client.clone();
                let permit = self.window.clone().acquire_owned().await;
                set.spawn(async move {
                    let _permit = permit;
                    client.write(ty, data).await.map(|_| ())
                });
            }
            let mut first_err = None;
            while let Some(done) = set.join_next().await {
                let result = done.unwrap_or_else(|e| Err(ClientError::Closed(e.to_string())));
                if let Err(e) = result {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })?;
        let mut pending = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        for i in indices {
            if let Some(b) = pending.blocks.get_mut(i) {
                b.generation = generation;
            }
        }
        Ok(())
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        // A runtime may not be dropped on an async thread (a store held by
        // a task that ends with its runtime): drop it on a thread of its own.
        if let Some(rt) = self.runtime.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(rt));
        }
    }
}

impl BlockStore for RemoteStore {
    fn read(&self, score: &Score, ty: BlockType) -> Result<Option<Vec<u8>>, StoreError> {
        if score.is_zero() {
            return Ok(Some(Vec::new()));
        }
        match self.with_retry(|c| self.rt().block_on(c.read(score, ty, MAX_BLOCK_SIZE))) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.is_missing_block() => Ok(None),
            Err(e) => Err(self.remote_error(e)),
        }
    }

    /// Up to [`READ_WINDOW`] requests in flight on the one connection, each
    /// block handed over as it comes. A lost connection fails the blocks
    /// still to come at once (no reconnecting here): this is for reading
    /// ahead, and a reader that needs one reads it itself, which reconnects.
    fn read_each(
        &self,
        keys: &[(Score, BlockType)],
        each: &mut dyn FnMut(usize, Result<Option<Vec<u8>>, StoreError>),
    ) {
        let (client, _) = self.current();
        let (tx, rx) = std::sync::mpsc::channel();
        let window = Arc::new(Semaphore::new(READ_WINDOW));
        let mut tasks = JoinSet::new();
        for (i, &(score, ty)) in keys.iter().enumerate() {
            let (client, tx, window) = (client.clone(), tx.clone(), window.clone());
            tasks.spawn_on(
                async move {
                    let Ok(_permit) = window.acquire_owned().await else {
                        return;
                    };
                    let got = if score.is_zero() {
                        Ok(Vec::new())
                    } else {
                        client.read(&score, ty, MAX_BLOCK_SIZE).await
                    };
                    let _ = tx.send((i, got));
                },
                self.rt().handle(),
            );
        }
        drop(tx);
        for (i, got) in rx {
            let result = match got {
                Ok(data) => Ok(Some(data)),
                Err(e) if e.is_missing_block() => Ok(None),
                Err(e) => Err(self.remote_error(e)),
            };
            each(i, result);
        }
        // Every task has sent (or was dropped): the set is done.
        drop(tasks);
    }

    fn write(&self, ty: BlockType, data: &[u8]) -> Result<Score, StoreError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(StoreError::TooLarge(data.len()));
        }
        if data.is_empty() {
            return Ok(Score::ZERO);
        }
        if self.unsynced_bytes() + data.len() > REPLAY_LIMIT {
            self.sync()?;
        }
        let score = Score::of(data);
        let permit = self
            .rt()
            .block_on(self.window.clone().acquire_owned())
            .map_err(|e| self.remote_error(e))?;
        {
            let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(done) = writes.try_join_next() {
                self.note(done);
            }
        }
        self.take_failure()?;
        let (client, generation) = self.current();
        {
            let mut pending = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
            pending.bytes += data.len();
            pending.blocks.push(Unsynced {
                ty,
                data: data.to_vec(),
                generation,
            });
        }
        let data = data.to_vec();
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn_on(
                async move {
                    let _permit = permit;
                    client.write(ty, data).await.map(|_| ())
                },
                self.rt().handle(),
            );
        Ok(score)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        self.drain_writes();
        self.take_failure()?;
        // Everything kept now is what this sync must make durable; writes
        // that other threads add meanwhile wait for the next sync.
        let covered = self
            .unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocks
            .len();
        let mut last_loss = String::new();
        for _ in 0..SYNC_ATTEMPTS {
            let (client, generation) = self.current();
            let outcome = self
                .replay(&client, generation)
                .and_then(|()| self.rt().block_on(client.sync()));
            match outcome {
                Ok(()) => {
                    let mut pending = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
                    let synced: usize = pending.blocks.drain(..covered).map(|b| b.data.len()).sum();
                    pending.bytes -= synced;
                    return Ok(());
                }
                Err(ClientError::Closed(why)) => {
                    last_loss = why.clone();
                    self.reconnect(generation, &why)
                        .map_err(|e| self.remote_error(e))?;
                }
                Err(e) => return Err(self.remote_error(e)),
            }
        }
        let blocks = self
            .unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocks
            .len();
        Err(self.remote_error(format!(
            "the connection was lost {SYNC_ATTEMPTS} times before {blocks} unsynced writes \
             could be made durable (last: {last_loss}); nothing after the last good sync is stored"
        )))
    }
}
