//! A cpu node's side of the control link: it dials each of its storage
//! nodes over mutual TLS, says what it runs and how much room it has, and
//! serves their requests (spawn, save, invite, boom, status) with its
//! environments. A link that drops is dialled again, with backoff, for as
//! long as the node runs; the environments carry on meanwhile.
//!
//! Blocks come from the storage node's venti service (its address arrives
//! in the Welcome), through the machine's persistent block cache, which
//! every environment of every storage node shares. A spawn whose root has
//! a working-set list fetches the list's blocks ahead, all at once; every
//! start records what it reads in its first seconds and, when that adds to
//! the list, writes a better list and tells the storage node (see
//! [`crate::working_set`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::{Answer, Frame, Held, PING_EVERY, Refusal, Request};
use tokio::sync::mpsc;
use venti::{BlockCache, BlockStore, CachedStore, RemoteStore};

use crate::working_set::{self, Recorder};
use crate::{Environments, OwnerKeys, SpawnRequest};
use grid::error::GridError;

/// Fetchers per storage node that read ahead of the file systems: enough
/// requests in flight to fill a far link's round trips.
const READ_AHEAD_THREADS: usize = 32;

/// This machine's memory (MemTotal), in bytes; 0 if unknown.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A storage node to link to: its certificate's name and control address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageNode {
    pub name: String,
    pub addr: String,
}

impl StorageNode {
    /// `NAME=ADDRESS`, e.g. `s1=tls!10.0.0.1!17036`.
    pub fn parse(text: &str) -> Result<StorageNode, String> {
        let (name, addr) = text.split_once('=').ok_or_else(|| {
            format!("storage node {text:?}: use NAME=ADDRESS (e.g. s1=tls!10.0.0.1!17036)")
        })?;
        link::identity::check_name(name).map_err(|e| format!("storage node {text:?}: {e}"))?;
        if addr.is_empty() {
            return Err(format!("storage node {text:?} has no address"));
        }
        Ok(StorageNode {
            name: name.into(),
            addr: addr.into(),
        })
    }
}

pub struct Agent {
    pub envs: Arc<Environments>,
    pub link: Arc<link::Link>,
    pub cache: Arc<BlockCache>,
    /// How long a read waits for an unreachable storage node before EIO.
    pub patience: Duration,
    /// Which storage node placed each environment: each is told only of
    /// its own.
    placed_by: Mutex<HashMap<(String, String), String>>,
    /// Each storage node's store, kept across links (it reconnects itself).
    stores: Mutex<HashMap<String, Arc<dyn BlockStore>>>,
    /// The live links, to tell every storage node of a change of load.
    links: Mutex<HashMap<String, mpsc::UnboundedSender<Frame>>>,
}

impl Agent {
    pub fn new(
        envs: Arc<Environments>,
        link: Arc<link::Link>,
        cache: Arc<BlockCache>,
        patience: Duration,
    ) -> Arc<Agent> {
        // The suspended environments a restarted node listens for again
        // are still those of the storage nodes that placed them.
        let placed_by = envs
            .running()
            .into_iter()
            .filter(|r| r.suspended && !r.placed_by.is_empty())
            .map(|r| ((r.user, r.name), r.placed_by))
            .collect();
        let agent = Arc::new(Agent {
            envs,
            link,
            cache,
            patience,
            placed_by: Mutex::new(placed_by),
            stores: Mutex::default(),
            links: Mutex::default(),
        });
        // A suspend frees a place and a wake takes one: the storage nodes
        // place by what is free.
        let me = Arc::downgrade(&agent);
        agent.envs.on_change(Arc::new(move || {
            if let Some(agent) = me.upgrade() {
                agent.announce_load();
            }
        }));
        agent
    }

    /// Whether `storage` placed the environment (user, name) here.
    fn is_placed_by(
        placed: &HashMap<(String, String), String>,
        storage: &str,
        user: &str,
        name: &str,
    ) -> bool {
        placed
            .get(&(user.to_string(), name.to_string()))
            .map(String::as_str)
            == Some(storage)
    }

    fn held_for(&self, storage: &str) -> Vec<Held> {
        let placed = self.placed_by.lock().unwrap_or_else(|p| p.into_inner());
        self.envs
            .running()
            .into_iter()
            .filter(|r| Self::is_placed_by(&placed, storage, &r.user, &r.name))
            .map(|r| Held {
                user: r.user,
                name: r.name,
                root: r.root,
                login: r.login,
            })
            .collect()
    }

    /// The caches of the environments `storage` placed here.
    fn caches_for(&self, storage: &str) -> Frame {
        let placed = self.placed_by.lock().unwrap_or_else(|p| p.into_inner());
        let envs = self
            .envs
            .cache_use()
            .into_iter()
            .filter(|(user, name, _, _)| Self::is_placed_by(&placed, storage, user, name))
            .map(|(user, name, used, capacity)| control::CacheUse {
                user,
                name,
                used,
                capacity,
            })
            .collect();
        Frame::Caches { envs }
    }

    fn load(&self) -> Frame {
        let (running, starting) = self.envs.load();
        Frame::Load {
            running: (running + starting) as u32,
            slots: self.envs.config().spawn_max as u32,
        }
    }

    fn announce_load(&self) {
        let frame = self.load();
        for out in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = out.send(frame.clone());
        }
    }

    /// The store of `storage`'s blocks, through the shared cache.
    fn store(&self, storage: &str, venti: &str) -> Result<Arc<dyn BlockStore>, GridError> {
        if let Some(s) = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(storage)
        {
            return Ok(s.clone());
        }
        let dial = link::dial::redial(venti, Some(self.link.clone()), link::dial::STORE_SERVERS);
        let remote = RemoteStore::connect(venti, dial).map_err(|e| {
            GridError::refused(format!(
                "reaching storage node {storage}'s venti at {venti}: {e}"
            ))
        })?;
        let store: Arc<dyn BlockStore> = Arc::new(CachedStore::new(
            self.cache.clone(),
            Arc::new(remote),
            self.patience,
            READ_AHEAD_THREADS,
        ));
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(storage.to_string(), store.clone());
        self.envs.provide_store(storage, store.clone());
        Ok(store)
    }

    /// Serves one request of `storage` (blocking: environments start and
    /// save synchronously).
    fn handle(
        self: &Arc<Self>,
        storage: &str,
        venti: &str,
        request: Request,
    ) -> Result<Answer, Refusal> {
        let refused = |e: GridError| {
            let message = e.to_string();
            Refusal {
                full: message.starts_with("spawn limit reached"),
                message,
            }
        };
        match request {
            Request::Spawn {
                spawn,
                keys,
                working_set,
            } => {
                let (user, name) = (spawn.user.clone(), spawn.name.clone());
                // The same user's environment of the same name placed here
                // by another storage node: one name runs once per machine,
                // so the storage node is to try another cpu node.
                if let Some(other) = self
                    .placed_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(user.clone(), name.clone()))
                    .filter(|s| *s != storage)
                {
                    return Err(Refusal {
                        message: format!(
                            "{name} of {user} already runs here, placed by storage node {other}"
                        ),
                        full: true,
                    });
                }
                let keys = OwnerKeys::parse(&keys).map_err(refused)?;
                let store = self.store(storage, venti).map_err(refused)?;
                let known = Arc::new(Mutex::new(Vec::new()));
                if let Some(list) = working_set {
                    fetch_ahead(store.clone(), spawn.root, list, known.clone());
                }
                let window = self.envs.config().working_set_window;
                let recorder = Arc::new(Recorder::new(store.clone(), window));
                let text = self
                    .envs
                    .spawn(SpawnRequest {
                        spawn: &spawn,
                        keys,
                        store: recorder.clone(),
                        fetched_note: None,
                        placed_by: storage,
                    })
                    .map_err(refused)?;
                if !window.is_zero() {
                    self.keep_working_set(storage, spawn.root, store, recorder, known);
                }
                let login = self
                    .envs
                    .running()
                    .into_iter()
                    .find(|r| r.user == user && r.name == name)
                    .map(|r| r.login)
                    .unwrap_or_default();
                self.placed_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((user, name), storage.to_string());
                self.announce_load();
                Ok(Answer::Spawned {
                    text,
                    login,
                    host_key: self.envs.host_public_key(),
                })
            }
            Request::Save { user, env } => {
                self.check_placed(storage, &user, &env)?;
                let root = self.envs.save(&user, &env).map_err(refused)?;
                Ok(Answer::Saved { root })
            }
            Request::Invite { user, env, invitee } => {
                self.check_placed(storage, &user, &env)?;
                let root = self.envs.invite(&user, &env, &invitee).map_err(refused)?;
                Ok(Answer::Saved { root })
            }
            Request::Boom { user, env } => {
                self.check_placed(storage, &user, &env)?;
                let was_running = self.envs.boom(&user, &env);
                self.placed_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(user, env));
                self.announce_load();
                Ok(Answer::Boomed { was_running })
            }
            Request::Status { user, envs } => {
                let mine: Vec<String> = envs
                    .into_iter()
                    .filter(|e| self.check_placed(storage, &user, e).is_ok())
                    .collect();
                Ok(Answer::Status {
                    envs: self.envs.status(&user, Some(&mine)),
                })
            }
        }
    }

    /// Once a start's recording window has ended: if it read enough that
    /// the root's list lacked, writes the better list to `storage`'s store
    /// and tells `storage` of it. Waits on the runtime, not on a thread.
    fn keep_working_set(
        self: &Arc<Self>,
        storage: &str,
        root: venti::Score,
        store: Arc<dyn BlockStore>,
        recorder: Arc<Recorder>,
        known: Arc<Mutex<Vec<working_set::Key>>>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (agent, storage) = (self.clone(), storage.to_string());
        runtime.spawn(async move {
            tokio::time::sleep_until(recorder.until().into()).await;
            let written = tokio::task::spawn_blocking(move || {
                let known = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let read = recorder.blocks_read();
                tracing::info!(root = %root, read = read.len(), waited = recorder.waited(), listed = known.len(), "a start's first reads");
                let Some(list) = working_set::improved(&read, &known) else {
                    return Ok(None);
                };
                let block = working_set::encode(&list);
                let score = store.write(venti::BlockType::DATA, &block)?;
                store.sync()?;
                Ok::<_, venti::StoreError>(Some((score, list.len())))
            })
            .await;
            match written {
                Ok(Ok(Some((list, blocks)))) => {
                    tracing::info!(root = %root, list = %list, blocks, storage = %storage, "recorded a root's working set");
                    let link = agent.links.lock().unwrap_or_else(|p| p.into_inner()).get(&storage).cloned();
                    if let Some(out) = link {
                        let _ = out.send(Frame::WorkingSet { root, list });
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(root = %root, error = %e, "writing a root's working set"),
                Err(e) => tracing::warn!(root = %root, error = %e, "recording a root's working set"),
            }
        });
    }

    /// Storage nodes act only on the environments they placed.
    fn check_placed(&self, storage: &str, user: &str, env: &str) -> Result<(), Refusal> {
        let placed = self.placed_by.lock().unwrap_or_else(|p| p.into_inner());
        match placed.get(&(user.to_string(), env.to_string())) {
            Some(s) if s == storage => Ok(()),
            Some(other) => Err(Refusal {
                message: format!("{env} of {user} was placed here by storage node {other}"),
                full: false,
            }),
            None => Err(Refusal {
                message: format!("{env} is not running for {user}"),
                full: false,
            }),
        }
    }

    /// Keeps a link to `storage` up for as long as the node runs.
    pub async fn run(self: Arc<Self>, storage: StorageNode) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.clone().session(&storage).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(why) => {
                    tracing::warn!(storage = %storage.name, addr = %storage.addr, error = %why, "control link");
                }
            }
            self.links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&storage.name);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One link: dial, hello, then requests until it drops.
    async fn session(self: Arc<Self>, storage: &StorageNode) -> Result<(), String> {
        let (_, addr) = link::dial::parse_transport(&storage.addr).map_err(|e| e.to_string())?;
        let socket = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| format!("no answer from {addr} within 5s"))?
        .map_err(|e| format!("dialling {addr}: {e}"))?;
        let _ = socket.set_nodelay(true);
        let (stream, peer) = self
            .link
            .connect(socket, &[link::Role::Storage])
            .await
            .map_err(|e| e.to_string())?;
        if peer.name != storage.name {
            return Err(format!(
                "{addr} is storage node {:?}, not {:?}",
                peer.name, storage.name
            ));
        }
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = Frame::Hello {
            version: control::VERSION,
            node: self.link.me.name.clone(),
            slots: self.envs.config().spawn_max as u32,
            memory: memory_bytes(),
            cache: self.cache.stats().limit,
            held: self.held_for(&storage.name),
        };
        control::write(&mut wr, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let venti =
            match tokio::time::timeout(Duration::from_secs(10), control::read(&mut rd)).await {
                Ok(Ok(Frame::Welcome { venti, .. })) => venti,
                Ok(Ok(Frame::Error { message })) => return Err(format!("refused: {message}")),
                Ok(Ok(other)) => return Err(format!("expected Welcome, got {other:?}")),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no welcome within 10s".into()),
            };
        tracing::info!(storage = %storage.name, venti = %venti, "linked to storage node");
        // Suspended environments it placed wake from its store: have it
        // ready before a login comes (after a restart, no spawn may come).
        if self
            .envs
            .running()
            .iter()
            .any(|r| r.suspended && r.placed_by == storage.name)
        {
            let (agent, name, venti) = (self.clone(), storage.name.clone(), venti.clone());
            let ready =
                tokio::task::spawn_blocking(move || agent.store(&name, &venti).map(drop)).await;
            if let Ok(Err(e)) = ready {
                tracing::warn!(storage = %storage.name, error = %e, "suspended environments cannot wake yet");
            }
        }
        let (out, outgoing) = mpsc::unbounded_channel::<Frame>();
        let _ = out.send(self.load());
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(storage.name.clone(), out.clone());
        let writer = control::spawn_writer(wr, outgoing);
        // The caches, as often as the pings. Read apart from the pings: a
        // file system busy saving may keep its figures a while, and that
        // must not make the link look dead.
        let reporter = {
            let (agent, out, name) = (self.clone(), out.clone(), storage.name.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(PING_EVERY);
                loop {
                    every.tick().await;
                    let (agent, name) = (agent.clone(), name.clone());
                    let Ok(frame) =
                        tokio::task::spawn_blocking(move || agent.caches_for(&name)).await
                    else {
                        break;
                    };
                    if out.send(frame).is_err() {
                        break;
                    }
                }
            })
        };
        let result = loop {
            let frame = match control::read_live(&mut rd).await {
                Ok(f) => f,
                Err(lost) => break Err(lost.to_string()),
            };
            match frame {
                Frame::Request { id, request, .. } => {
                    let (agent, out, name, venti) = (
                        self.clone(),
                        out.clone(),
                        storage.name.clone(),
                        venti.clone(),
                    );
                    tokio::spawn(async move {
                        let verb = request.verb();
                        let result = tokio::task::spawn_blocking(move || {
                            agent.handle(&name, &venti, request)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(Refusal {
                                message: format!("internal error: {e}"),
                                full: false,
                            })
                        });
                        tracing::info!(target: "grid::events", request = verb, id, ok = result.is_ok(), "served a control request");
                        let _ = out.send(Frame::Reply { id, result });
                    });
                }
                Frame::Ping { seq } => {
                    let _ = out.send(Frame::Pong { seq });
                }
                Frame::Pong { .. } => {}
                Frame::Error { message } => break Err(format!("refused: {message}")),
                other => {
                    let _ = out.send(Frame::Error {
                        message: "unexpected frame".into(),
                    });
                    break Err(format!("unexpected frame {other:?}"));
                }
            }
        };
        writer.abort();
        reporter.abort();
        result
    }
}

/// Reads `root`'s working-set list `list` and has `store` fetch its blocks
/// ahead, on a thread of its own while the environment starts; notes the
/// list in `known` for the recording to improve on. A list that cannot be
/// read or is not one is ignored, with a log line: it is only a hint.
fn fetch_ahead(
    store: Arc<dyn BlockStore>,
    root: venti::Score,
    list: venti::Score,
    known: Arc<Mutex<Vec<working_set::Key>>>,
) {
    let spawned = std::thread::Builder::new()
        .name("working-set".into())
        .spawn(move || {
            let keys = match store.read(&list, venti::BlockType::DATA) {
                Ok(Some(block)) => working_set::decode(&block),
                Ok(None) => Err("its block is not in the store".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match keys {
                Ok(keys) => {
                    *known.lock().unwrap_or_else(|p| p.into_inner()) = keys.clone();
                    store.prefetch(keys);
                }
                Err(why) => {
                    tracing::warn!(root = %root, list = %list, "a working-set list ignored: {why}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting a working-set fetch");
    }
}
