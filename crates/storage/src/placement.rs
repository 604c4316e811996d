//! Environments on the grid's cpu nodes: a storage node of role `storage`
//! places each spawn on one of the cpu nodes linked to it, and sends the
//! environment's later commands to wherever it runs.
//!
//! Each cpu node dials in over mutual TLS ([`serve`]) and says what it runs
//! and how much room it has. The pool keeps a record of every environment it
//! placed; a cpu node whose link drops (or falls silent for
//! [`control::SILENT_FOR`]) is *lost* — its environments show as lost in `status`,
//! with the time it was last seen, and spawns go elsewhere. When it comes
//! back, its report is reconciled with the records: what the pool still
//! places there carries on, what was boomed or placed elsewhere meanwhile
//! is ended, and records of environments it no longer runs (it restarted)
//! are dropped with a notice to their owners. A storage node that restarts
//! has no records: it adopts what its cpu nodes report, so environments
//! outlive their storage node's restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use control::{Answer, Frame, Held, Refusal, Request};
use tokio::sync::mpsc;
use venti::Score;

use crate::Cpus;
use crate::status::{EnvRecord, EnvState, UserStatus, ago};
use grid::error::{GridError, GridResult};
use grid::state::StateDir;
use grid::users::Users;

/// How long the pool waits for each kind of request.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub spawn: Duration,
    pub save: Duration,
    pub other: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            spawn: Duration::from_secs(60),
            save: Duration::from_secs(300),
            other: Duration::from_secs(15),
        }
    }
}

type Answered = std::sync::mpsc::Sender<Result<Answer, Refusal>>;

/// How a cpu node's refusal names the storage node that placed an
/// environment (see `cpu::agent`).
const PLACED_BY: &str = "was placed here by storage node ";
/// How it says it runs no such environment of the user's.
const NOT_RUNNING: &str = " is not running for ";

/// A live link to a cpu node.
struct Conn {
    out: mpsc::UnboundedSender<Frame>,
    pending: Arc<Mutex<HashMap<u64, Answered>>>,
    /// Tells one link from the next of the same node.
    generation: u64,
}

struct Cpu {
    conn: Option<Conn>,
    slots: u32,
    running: u32,
    /// Its memory and block cache bound, as it offered them.
    memory: u64,
    cache: u64,
    last_seen: SystemTime,
    /// Its environments' caches as it last reported them: (user, env) →
    /// (used, capacity).
    caches: HashMap<(String, String), (u64, u64)>,
}

/// Where the pool placed an environment.
struct Placed {
    cpu: String,
    root: Score,
    login: String,
    /// The spawn has not answered yet.
    starting: bool,
}

#[derive(Default)]
struct State {
    cpus: BTreeMap<String, Cpu>,
    envs: HashMap<(String, String), Placed>,
    /// (cpu, user, env) boomed while their node was out of reach: ended
    /// when it returns.
    ended: HashSet<(String, String, String)>,
    /// What each user should be told at their next `status`.
    notices: HashMap<String, Vec<String>>,
}

pub struct Pool {
    /// This storage node's name (its certificate's).
    pub node: String,
    /// Its venti service as the cpu nodes should dial it.
    pub venti: String,
    pub users: Users,
    /// The node's state: its names hold the roots' working-set lists.
    state_dir: StateDir,
    /// The node's store, which a spawn's working set is fetched into ahead
    /// where it is far itself (a bucket), as the cpu node will ask for it.
    pub store: std::sync::OnceLock<Arc<dyn venti::BlockStore>>,
    /// Whether spawns carry their root's working-set list (on unless a
    /// benchmark compares starts without it).
    pub offer_working_sets: std::sync::atomic::AtomicBool,
    pub deadlines: Deadlines,
    state: Mutex<State>,
    next_id: AtomicU64,
    next_generation: AtomicU64,
    /// Where cpu nodes' comings and goings are published.
    pub streams: std::sync::OnceLock<Arc<crate::streams::Streams>>,
    /// The node's metrics, whose events the status page shows.
    pub metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

/// A failed request: refused by the cpu node (`full`: for lack of room),
/// or the node out of reach.
enum CallError {
    Refused(Refusal),
    Unreachable(String),
}

impl From<CallError> for GridError {
    fn from(e: CallError) -> GridError {
        match e {
            CallError::Refused(r) if r.full => GridError::full(r.message),
            CallError::Refused(r) => GridError::refused(r.message),
            CallError::Unreachable(why) => GridError::refused(why),
        }
    }
}

/// A cpu node as the storage node knows it.
#[derive(Debug, Clone)]
pub struct CpuNode {
    pub name: String,
    /// Its control link is up.
    pub linked: bool,
    pub last_seen: SystemTime,
    pub running: u32,
    pub slots: u32,
    /// Its memory and block cache bound, as it offered them.
    pub memory: u64,
    pub cache: u64,
}

/// A request as `cpu.in` shows it (the owner's keys left out).
fn describe(r: &Request) -> String {
    match r {
        Request::Spawn { spawn: s, .. } => {
            format!(
                "{} {} vac:{} {}",
                s.user,
                s.name,
                s.root,
                s.options.join(" ")
            )
        }
        Request::Save { user, env } | Request::Boom { user, env } => format!("{user} {env}"),
        Request::Invite { user, env, invitee } => format!("{user} {env} {invitee}"),
        Request::Status { user, envs } => format!("{user} {}", envs.join(" ")),
    }
}

/// An answer as `cpu.out` shows it.
fn answered(a: &Answer) -> String {
    match a {
        Answer::Spawned { login, .. } => login.clone(),
        Answer::Saved { root } => format!("vac:{root}"),
        Answer::Boomed { was_running } => format!("was running: {was_running}"),
        Answer::Status { envs } => format!("{} environments", envs.len()),
    }
}

/// Whether a cpu node last heard from at `last_seen` has missed its pings
/// (it pings every [`control::PING_EVERY`]; its link is declared dead only
/// after [`control::SILENT_FOR`]).
fn silent(last_seen: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(last_seen)
        .is_ok_and(|quiet| quiet > control::SILENT_FOR - control::PING_EVERY / 2)
}

impl Pool {
    /// Where the cpu nodes that ever linked are remembered, one empty
    /// file each.
    fn cpus_dir(&self) -> std::path::PathBuf {
        self.state_dir.root.join("cpu-nodes")
    }

    /// Notes, durably, that cpu node `cpu` links here.
    fn remember_cpu(&self, cpu: &str) -> std::io::Result<()> {
        let dir = self.cpus_dir();
        let path = dir.join(cpu);
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::File::create(&path)?.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// The cpu nodes that ever linked here.
    fn remembered_cpus(&self) -> Vec<String> {
        std::fs::read_dir(self.cpus_dir())
            .map(|l| {
                l.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn new(node: String, venti: String, state_dir: StateDir) -> Pool {
        Pool {
            node,
            venti,
            users: state_dir.users(),
            state_dir,
            store: std::sync::OnceLock::new(),
            offer_working_sets: std::sync::atomic::AtomicBool::new(true),
            deadlines: Deadlines::default(),
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            streams: std::sync::OnceLock::new(),
            metrics: std::sync::OnceLock::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `request` to `cpu` and waits for its answer until `deadline`.
    fn call(&self, cpu: &str, request: Request, deadline: Duration) -> Result<Answer, CallError> {
        let verb = request.verb();
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.streams.get() {
            s.to_cpu(cpu, id, verb, &describe(&request));
        }
        let frame = Frame::Request {
            id,
            deadline_ms: deadline.as_millis().min(u32::MAX as u128) as u32,
            request,
        };
        // Refused here rather than sent and refused by the cpu node's
        // reader, which would drop the link for everyone on it.
        if let Err(why) = frame.fits() {
            return Err(CallError::Refused(Refusal {
                message: format!("{verb} cannot be sent to a cpu node: {why}"),
                full: false,
            }));
        }
        let pending = {
            let state = self.state();
            let Some(conn) = state.cpus.get(cpu).and_then(|c| c.conn.as_ref()) else {
                return Err(CallError::Unreachable(format!(
                    "cpu node {cpu} is out of reach"
                )));
            };
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            if conn.out.send(frame).is_err() {
                return Err(CallError::Unreachable(format!("cpu node {cpu} was lost")));
            }
            conn.pending.clone()
        };
        let started = Instant::now();
        let result = rx.recv_timeout(deadline);
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let outcome = match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(refusal)) => Err(CallError::Refused(refusal)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(CallError::Unreachable(format!(
                    "cpu node {cpu} did not answer {verb} within {}s",
                    deadline.as_secs()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(CallError::Unreachable(
                format!("cpu node {cpu} was lost during {verb}"),
            )),
        };
        if let Some(s) = self.streams.get() {
            let text = match &outcome {
                Ok(a) => format!("ok {}", answered(a)),
                Err(CallError::Refused(r)) => format!("refused {}", r.message),
                Err(CallError::Unreachable(why)) => format!("failed {why}"),
            };
            s.from_cpu(cpu, id, started.elapsed().as_millis() as u64, &text);
        }
        // The grid's event stream: every request and how it went.
        tracing::info!(
            target: "grid::events",
            cpu,
            request = verb,
            id,
            ms = started.elapsed().as_millis() as u64,
            ok = outcome.is_ok(),
            "control request"
        );
        outcome
    }

    /// The cpu node an environment of `user` runs on, if it is reachable.
    /// Sends a save or an invite of `user`'s `env` to where it runs: the
    /// saved root.
    fn saving(&self, user: &str, env: &str, request: Request) -> GridResult<Score> {
        let verb = request.verb();
        let deadline = self.deadlines.save;
        let answer = match self.placed(user, env) {
            Ok(cpu) => self.call(&cpu, request, deadline)?,
            Err(e) if !self.has_record(user, env) => self
                .ask_around(user, env, request, deadline)
                .unwrap_or(Err(e))?,
            Err(e) => return Err(e),
        };
        match answer {
            Answer::Saved { root } => Ok(root),
            a => Err(GridError::refused(format!(
                "{env}'s cpu node answered {verb} with {a:?}"
            ))),
        }
    }

    fn has_record(&self, user: &str, env: &str) -> bool {
        self.state()
            .envs
            .contains_key(&(user.to_string(), env.to_string()))
    }

    fn placed(&self, user: &str, env: &str) -> GridResult<String> {
        let state = self.state();
        let Some(p) = state.envs.get(&(user.to_string(), env.to_string())) else {
            return Err(GridError::refused(format!(
                "{env} is not running for {user}"
            )));
        };
        if p.starting {
            return Err(GridError::refused(format!("{env} is still starting")));
        }
        match state.cpus.get(&p.cpu) {
            Some(c) if c.conn.is_some() => Ok(p.cpu.clone()),
            Some(c) => Err(GridError::refused(format!(
                "{env} runs on cpu node {}, which was lost (last seen {})",
                p.cpu,
                ago(c.last_seen)
            ))),
            None => Err(GridError::refused(format!(
                "{env} runs on cpu node {}, which is unknown here",
                p.cpu
            ))),
        }
    }

    /// A command for an environment of `user`'s that this storage node has
    /// no record of: each linked cpu node is asked in turn. One that runs
    /// it for this node answers (as if the record were there); one that
    /// runs it for another storage node refuses, and the user is told
    /// where it runs and through which storage node its commands go.
    /// (Before, a user with two storage nodes was told "not running" of an
    /// environment the other had placed, and "already runs here" when
    /// spawning it.) None if no cpu node knows it.
    fn ask_around(
        &self,
        user: &str,
        env: &str,
        request: Request,
        deadline: Duration,
    ) -> Option<GridResult<Answer>> {
        let linked: Vec<String> = {
            let state = self.state();
            state
                .cpus
                .iter()
                .filter(|(_, c)| c.conn.is_some())
                .map(|(name, _)| name.clone())
                .collect()
        };
        for cpu in linked {
            match self.call(&cpu, request.clone(), deadline) {
                Ok(answer) => return Some(Ok(answer)),
                Err(CallError::Refused(r)) => {
                    if let Some((_, other)) = r.message.split_once(PLACED_BY) {
                        return Some(Err(GridError::refused(format!(
                            "{env} of {user} runs on cpu node {cpu}, placed there by storage node {other}: \
                             its commands go through that storage node's front door"
                        ))));
                    }
                    // Not there; anything else is what happened to it.
                    if !r.message.contains(NOT_RUNNING) {
                        return Some(Err(CallError::Refused(r).into()));
                    }
                }
                Err(CallError::Unreachable(_)) => {}
            }
        }
        None
    }

    /// Cpu nodes to try for a spawn: the one named, or those with room,
    /// least loaded first.
    fn candidates(&self, named: Option<&str>) -> GridResult<Vec<String>> {
        let state = self.state();
        if let Some(name) = named {
            return match state.cpus.get(name) {
                Some(c) if c.conn.is_some() => Ok(vec![name.to_string()]),
                Some(c) => Err(GridError::refused(format!(
                    "cpu node {name} is out of reach (last seen {})",
                    ago(c.last_seen)
                ))),
                None => Err(GridError::refused(format!(
                    "no cpu node {name} in this grid; cpu nodes: {}",
                    state.cpus.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
            };
        }
        let mut open: Vec<(&String, &Cpu)> = state
            .cpus
            .iter()
            .filter(|(_, c)| c.conn.is_some() && c.running < c.slots)
            .collect();
        // Fewest running per slot first; ties to the one with more room.
        open.sort_by(|a, b| {
            let load = |c: &Cpu| c.running as f64 / c.slots.max(1) as f64;
            load(a.1)
                .total_cmp(&load(b.1))
                .then(b.1.slots.cmp(&a.1.slots))
        });
        if open.is_empty() {
            return Err(if state.cpus.is_empty() {
                GridError::refused("no cpu node is linked to this storage node yet")
            } else {
                GridError::full("every cpu node is full or out of reach; try again later")
            });
        }
        Ok(open.into_iter().map(|(n, _)| n.clone()).collect())
    }

    /// Accepts a cpu node's link: reconciles what it runs with the records,
    /// then serves it until it drops.
    async fn link<S>(self: Arc<Self>, stream: S, peer: link::Peer)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = tokio::time::timeout(Duration::from_secs(10), control::read(&mut rd)).await;
        let (slots, room, held) = match hello {
            Ok(Ok(Frame::Hello {
                version,
                node,
                slots,
                memory,
                cache,
                held,
            })) => {
                if version != control::VERSION {
                    let _ = refuse(
                        &mut wr,
                        format!(
                            "control protocol version {version}; this storage node speaks {}",
                            control::VERSION
                        ),
                    )
                    .await;
                    return;
                }
                if node != peer.name {
                    let _ = refuse(
                        &mut wr,
                        format!(
                            "you say you are {node:?}, your certificate says {:?}",
                            peer.name
                        ),
                    )
                    .await;
                    return;
                }
                (slots, (memory, cache), held)
            }
            Ok(Ok(other)) => {
                let _ = refuse(&mut wr, format!("expected Hello, got {other:?}")).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(cpu = %peer.name, error = %e, "cpu node's hello");
                return;
            }
            Err(_) => {
                tracing::warn!(cpu = %peer.name, "cpu node sent no hello within 10s");
                return;
            }
        };
        let welcome = Frame::Welcome {
            node: self.node.clone(),
            venti: self.venti.clone(),
        };
        if control::write(&mut wr, &welcome).await.is_err() {
            return;
        }
        let cpu = peer.name.clone();
        let (out, outgoing) = mpsc::unbounded_channel::<Frame>();
        let pending: Arc<Mutex<HashMap<u64, Answered>>> = Arc::default();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let to_end = self.reconcile(
            &cpu,
            slots,
            room,
            &held,
            Conn {
                out: out.clone(),
                pending: pending.clone(),
                generation,
            },
        );
        if let Err(e) = self.remember_cpu(&cpu) {
            tracing::warn!(cpu = %cpu, error = %e, "remembering a cpu node");
        }
        tracing::info!(target: "grid::events", cpu = %cpu, slots, running = held.len(), "cpu node linked");
        self.event(
            &format!(
                "cpu node {cpu} linked: {slots} slots, {} running",
                held.len()
            ),
            false,
        );
        // Ending what should not run there any more: requests like any other.
        for (user, env) in to_end {
            let pool = self.clone();
            let cpu = cpu.clone();
            tokio::task::spawn_blocking(move || {
                tracing::info!(target: "grid::events", cpu = %cpu, user = %user, env = %env, "ending an environment the grid no longer places there");
                let _ = pool.call(&cpu, Request::Boom { user, env }, pool.deadlines.other);
            });
        }
        let writer = control::spawn_writer(wr, outgoing);
        loop {
            let frame = match control::read_live(&mut rd).await {
                Ok(f) => f,
                Err(lost) => {
                    tracing::warn!(cpu = %cpu, reason = %lost, "cpu node taken as lost");
                    break;
                }
            };
            match frame {
                Frame::Reply { id, result } => {
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(result);
                    }
                }
                Frame::WorkingSet { root, list } => {
                    // The cpu node wrote and synced the list to this node's
                    // store before it said so; the names replicate it.
                    let names = self.state_dir.scorenames();
                    let cpu = cpu.clone();
                    tokio::task::spawn_blocking(move || {
                        match names.set_working_set(&root, &list) {
                            Ok(true) => {
                                tracing::info!(cpu = %cpu, root = %root, list = %list, "kept a root's working set")
                            }
                            Ok(false) => {
                                tracing::debug!(cpu = %cpu, root = %root, list = %list, "a root's working set was kept lately; this one is not")
                            }
                            Err(e) => {
                                tracing::warn!(cpu = %cpu, root = %root, error = %e, "keeping a root's working set")
                            }
                        }
                    });
                }
                Frame::Load { running, slots } => {
                    if let Some(c) = self.state().cpus.get_mut(&cpu) {
                        c.running = running;
                        c.slots = slots;
                    }
                }
                Frame::Caches { envs } => {
                    if let Some(c) = self.state().cpus.get_mut(&cpu) {
                        c.caches = envs
                            .into_iter()
                            .map(|e| ((e.user, e.name), (e.used, e.capacity)))
                            .collect();
                    }
                }
                Frame::Ping { seq } => {
                    let _ = out.send(Frame::Pong { seq });
                }
                Frame::Pong { .. } => {}
                Frame::Error { message } => {
                    tracing::warn!(cpu = %cpu, error = %message, "cpu node refused the link");
                    break;
                }
                other => {
                    tracing::warn!(cpu = %cpu, frame = ?other, "unexpected frame from a cpu node");
                    let _ = out.send(Frame::Error {
                        message: "unexpected frame".into(),
                    });
                    break;
                }
            }
            if let Some(c) = self.state().cpus.get_mut(&cpu) {
                c.last_seen = SystemTime::now();
            }
        }
        writer.abort();
        {
            let mut state = self.state();
            if let Some(c) = state.cpus.get_mut(&cpu)
                && c.conn.as_ref().is_some_and(|k| k.generation == generation)
            {
                c.conn = None;
            }
        }
        // Requests in flight fail now rather than at their deadlines.
        pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::warn!(target: "grid::events", cpu = %cpu, "cpu node lost");
        self.event(&format!("cpu node {cpu} lost"), true);
    }

    /// Tells the event hub and the status page; `bad` marks a loss.
    fn event(&self, text: &str, bad: bool) {
        if let Some(s) = self.streams.get() {
            s.event(text);
        }
        if let Some(m) = self.metrics.get() {
            if bad {
                m.failure(text);
            } else {
                m.event(text);
            }
        }
    }

    /// Records a cpu node's (re)link; returns what it must end.
    fn reconcile(
        &self,
        cpu: &str,
        slots: u32,
        (memory, cache): (u64, u64),
        held: &[Held],
        conn: Conn,
    ) -> Vec<(String, String)> {
        let mut state = self.state();
        let mut end = Vec::new();
        let reported: HashSet<(String, String)> = held
            .iter()
            .map(|h| (h.user.clone(), h.name.clone()))
            .collect();
        for h in held {
            let key = (h.user.clone(), h.name.clone());
            let ended = state
                .ended
                .remove(&(cpu.to_string(), h.user.clone(), h.name.clone()));
            match state.envs.get(&key) {
                Some(p) if p.cpu == cpu && !ended => {}
                Some(_) => end.push(key),
                None if ended => end.push(key),
                None => {
                    tracing::info!(target: "grid::events", cpu, user = %h.user, env = %h.name, "adopting an environment the cpu node runs");
                    state.envs.insert(
                        key,
                        Placed {
                            cpu: cpu.to_string(),
                            root: h.root,
                            login: h.login.clone(),
                            starting: false,
                        },
                    );
                }
            }
        }
        let gone: Vec<(String, String)> = state
            .envs
            .iter()
            .filter(|(k, p)| p.cpu == cpu && !p.starting && !reported.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for (user, env) in gone {
            state.envs.remove(&(user.clone(), env.clone()));
            tracing::warn!(target: "grid::events", cpu, user = %user, env = %env, "environment ended: its cpu node restarted");
            state.notices.entry(user).or_default().push(format!(
                "{env}\tended: cpu node {cpu} restarted (unsaved changes are lost)\n"
            ));
        }
        state.ended.retain(|(c, _, _)| c != cpu);
        let running = state.envs.values().filter(|p| p.cpu == cpu).count() as u32;
        state.cpus.insert(
            cpu.to_string(),
            Cpu {
                conn: Some(conn),
                slots,
                running,
                memory,
                cache,
                last_seen: SystemTime::now(),
                caches: HashMap::new(),
            },
        );
        end
    }

    /// The cpu nodes, for the admin: name, linked or lost, load.
    pub fn cpus(&self) -> String {
        let mut out = String::new();
        for c in self.cpu_nodes() {
            // In the unit that fits (a 48 MiB cache showed as "0.0 GiB").
            let size = units::human;
            let _ = writeln!(
                out,
                "cpu {}\t{}\t{}/{} environments\t{} memory, {} block cache",
                c.name,
                if c.linked {
                    "linked".to_string()
                } else {
                    format!("lost, last seen {}", ago(c.last_seen))
                },
                c.running,
                c.slots,
                size(c.memory),
                size(c.cache)
            );
        }
        out
    }

    /// The cpu nodes that have linked to this node, and their state.
    pub fn cpu_nodes(&self) -> Vec<CpuNode> {
        self.state()
            .cpus
            .iter()
            .map(|(name, c)| CpuNode {
                name: name.clone(),
                linked: c.conn.is_some(),
                last_seen: c.last_seen,
                running: c.running,
                slots: c.slots,
                memory: c.memory,
                cache: c.cache,
            })
            .collect()
    }
}

async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    message: String,
) -> std::io::Result<()> {
    tracing::warn!(error = %message, "refusing a cpu node's link");
    control::write(w, &Frame::Error { message }).await
}

/// Accepts cpu nodes' links on `listener` (mutual TLS, cpu certificates
/// only) and serves them.
pub async fn serve(pool: Arc<Pool>, link: Arc<link::Link>, listener: tokio::net::TcpListener) {
    loop {
        let (socket, addr) = link::listener::accept(&listener, "control link").await;
        let (pool, link) = (pool.clone(), link.clone());
        tokio::spawn(async move {
            match link.accept(socket, addr, &[link::Role::Cpu]).await {
                Ok((stream, peer)) => pool.link(stream, peer).await,
                Err(e) => link.log_refusal("a control link", &e),
            }
        });
    }
}

impl Cpus for Pool {
    fn spawn(&self, spawn: &control::Spawn) -> GridResult<crate::Spawned> {
        // node=NAME is the placement's; the rest is the cpu node's to judge.
        let mut named = None;
        let mut options = Vec::new();
        for o in &spawn.options {
            match o.strip_prefix("node=") {
                Some(n) => named = Some(n.to_string()),
                None => options.push(o.clone()),
            }
        }
        let key = (spawn.user.to_string(), spawn.name.to_string());
        {
            let state = self.state();
            if let Some(p) = state.envs.get(&key) {
                let lost = state.cpus.get(&p.cpu).is_none_or(|c| c.conn.is_none());
                return Err(GridError::refused(if lost {
                    format!(
                        "{} is running on cpu node {}, which is out of reach; boom it to spawn it again",
                        spawn.name, p.cpu
                    )
                } else {
                    format!(
                        "{} is already running; use save to clone it to a new name",
                        spawn.name
                    )
                }));
            }
        }
        let keys = self.users.keys_of(&spawn.user)?;
        // A hint: a list that cannot be looked up is no reason to refuse.
        let offered = self.offer_working_sets.load(Ordering::Relaxed);
        let working_set = match self.state_dir.scorenames().working_set(&spawn.root) {
            Ok(list) => list.filter(|_| offered),
            Err(e) => {
                tracing::warn!(root = %spawn.root, error = %e, "looking up a root's working set");
                None
            }
        };
        if let (Some(list), Some(store)) = (working_set, self.store.get()) {
            fetch_ahead_here(store.clone(), spawn.root, list);
        }
        let mut last = None;
        for cpu in self.candidates(named.as_deref())? {
            {
                let mut state = self.state();
                if state.envs.contains_key(&key) {
                    return Err(GridError::refused(format!(
                        "{} is already running; use save to clone it to a new name",
                        spawn.name
                    )));
                }
                state.envs.insert(
                    key.clone(),
                    Placed {
                        cpu: cpu.clone(),
                        root: spawn.root,
                        login: String::new(),
                        starting: true,
                    },
                );
                if let Some(c) = state.cpus.get_mut(&cpu) {
                    c.running += 1;
                }
            }
            let request = Request::Spawn {
                spawn: control::Spawn {
                    options: options.clone(),
                    ..spawn.clone()
                },
                keys: keys.clone(),
                working_set,
            };
            let result = self.call(&cpu, request, self.deadlines.spawn);
            let mut state = self.state();
            match result {
                Ok(Answer::Spawned {
                    text,
                    login,
                    host_key,
                }) => {
                    if let Some(p) = state.envs.get_mut(&key) {
                        p.login = login.clone();
                        p.starting = false;
                    }
                    return Ok(crate::Spawned {
                        text,
                        login,
                        host_key,
                        node: cpu.clone(),
                    });
                }
                other => {
                    state.envs.remove(&key);
                    if let Some(c) = state.cpus.get_mut(&cpu) {
                        c.running = c.running.saturating_sub(1);
                    }
                    match other {
                        // No room after all (another storage node's spawns):
                        // the next one may have it.
                        Err(CallError::Refused(r)) if r.full && named.is_none() => {
                            last = Some(GridError::full(r.message))
                        }
                        Err(e) => return Err(e.into()),
                        Ok(a) => {
                            return Err(GridError::refused(format!(
                                "cpu node {cpu} answered a spawn with {a:?}"
                            )));
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| GridError::refused("no cpu node could take the spawn")))
    }

    fn save(&self, user: &str, env: &str) -> GridResult<Score> {
        let request = Request::Save {
            user: user.into(),
            env: env.into(),
        };
        self.saving(user, env, request)
    }

    fn invite(&self, user: &str, env: &str, invitee: &str) -> GridResult<Score> {
        let request = Request::Invite {
            user: user.into(),
            env: env.into(),
            invitee: invitee.into(),
        };
        self.saving(user, env, request)
    }

    fn end_stale(&self, node: Option<&str>, user: &str, env: &str) {
        let known = {
            let mut state = self.state();
            let known = state
                .envs
                .contains_key(&(user.to_string(), env.to_string()));
            // Under the same lock as a link's report, so the environment
            // is either known now or ended when its node reports it.
            if !known && let Some(node) = node {
                state
                    .ended
                    .insert((node.to_string(), user.to_string(), env.to_string()));
            }
            known
        };
        if known && let Err(e) = self.boom(user, env) {
            tracing::warn!(user, env, error = %e, "ending a job's environment from before a restart");
        }
    }

    fn holds(&self, user: &str, env: &str) -> bool {
        self.has_record(user, env)
    }

    fn root_of(&self, user: &str, env: &str) -> Option<Score> {
        self.state()
            .envs
            .get(&(user.to_string(), env.to_string()))
            .map(|p| p.root)
    }

    fn boom(&self, user: &str, env: &str) -> GridResult<bool> {
        let key = (user.to_string(), env.to_string());
        let (cpu, reachable) = {
            let state = self.state();
            let Some(p) = state.envs.get(&key) else {
                drop(state);
                let request = Request::Boom {
                    user: user.into(),
                    env: env.into(),
                };
                return match self.ask_around(user, env, request, self.deadlines.other) {
                    Some(Ok(Answer::Boomed { was_running })) => Ok(was_running),
                    Some(Ok(a)) => Err(GridError::refused(format!(
                        "a cpu node answered a boom with {a:?}"
                    ))),
                    Some(Err(e)) => Err(e),
                    None => Ok(false),
                };
            };
            if p.starting {
                return Err(GridError::refused(format!("{env} is still starting")));
            }
            let reachable = state.cpus.get(&p.cpu).is_some_and(|c| c.conn.is_some());
            (p.cpu.clone(), reachable)
        };
        if reachable {
            let request = Request::Boom {
                user: user.into(),
                env: env.into(),
            };
            match self.call(&cpu, request, self.deadlines.other) {
                Ok(_) => {}
                // Lost meanwhile: ended when it returns, as below.
                Err(CallError::Unreachable(_)) => {
                    self.state()
                        .ended
                        .insert((cpu.clone(), user.into(), env.into()));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            self.state()
                .ended
                .insert((cpu.clone(), user.into(), env.into()));
        }
        let mut state = self.state();
        state.envs.remove(&key);
        if let Some(c) = state.cpus.get_mut(&cpu) {
            c.running = c.running.saturating_sub(1);
        }
        Ok(true)
    }

    fn pins(&self) -> GridResult<Vec<Score>> {
        // A cpu node that ever linked but has not since this node started
        // may run environments placed here that this node knows nothing
        // of yet (they are adopted when it links).
        for cpu in self.remembered_cpus() {
            if !self.state().cpus.contains_key(&cpu) {
                return Err(GridError::refused(format!(
                    "cpu node {cpu} has not linked since this node started: what its environments stand on is unknown, so nothing can be collected until it links (if it is gone for good, remove {})",
                    self.cpus_dir().join(&cpu).display()
                )));
            }
        }
        // Every placed root (a starting one has saved nothing yet), then
        // what each running one saved last, as its cpu node says.
        let (mut pins, mut users, placed) = {
            let state = self.state();
            let pins: Vec<Score> = state.envs.values().map(|p| p.root).collect();
            let users: Vec<String> = state.envs.keys().map(|(u, _)| u.clone()).collect();
            // Those whose cpu nodes must say what they saved last.
            let placed: HashSet<(String, String)> = state
                .envs
                .iter()
                .filter(|(_, p)| !p.starting)
                .map(|(k, _)| k.clone())
                .collect();
            (pins, users, placed)
        };
        users.sort_unstable();
        users.dedup();
        for user in &users {
            let envs = self.status(user, false)?.envs;
            let running: HashSet<&str> = envs
                .iter()
                .filter(|e| matches!(e.state, crate::status::EnvState::Running(_)))
                .map(|e| e.name.as_str())
                .collect();
            // Not in the answer, and still placed here (one boomed since
            // is gone, and what it saved is named).
            let missing = placed.iter().find(|(u, n)| {
                u == user
                    && !running.contains(n.as_str())
                    && self
                        .state()
                        .envs
                        .get(&(u.clone(), n.clone()))
                        .is_some_and(|p| !p.starting)
            });
            if let Some((_, name)) = missing {
                return Err(GridError::refused(format!(
                    "{user}'s environment {name} was not in its cpu node's answer: what it saved last is unknown, so nothing was collected; try again"
                )));
            }
            for env in envs {
                match env.state {
                    crate::status::EnvState::Running(s) => pins.extend([s.root, s.root_now]),
                    crate::status::EnvState::Starting => {}
                    crate::status::EnvState::Lost { .. } => {
                        return Err(GridError::refused(format!(
                            "{user}'s environment {} is on cpu node {}, out of reach: what it saved last is unknown, so nothing can be collected until the node is back or the environment is boomed",
                            env.name,
                            env.cpu.unwrap_or_default()
                        )));
                    }
                }
            }
        }
        Ok(pins)
    }

    fn status(&self, user: &str, take_notices: bool) -> GridResult<UserStatus> {
        let (mut by_cpu, notices) = {
            let mut state = self.state();
            let mut by_cpu: BTreeMap<String, Vec<(String, Score, String, bool)>> = BTreeMap::new();
            for ((u, name), p) in &state.envs {
                if u == user {
                    by_cpu.entry(p.cpu.clone()).or_default().push((
                        name.clone(),
                        p.root,
                        p.login.clone(),
                        p.starting,
                    ));
                }
            }
            // A cpu node that has missed its pings is not asked: asking
            // would wait until its link is declared dead, and then know
            // no more than now.
            let reachable: HashMap<String, Option<SystemTime>> = by_cpu
                .keys()
                .map(|c| {
                    let cpu = state.cpus.get(c);
                    let lost = cpu.is_none_or(|c| c.conn.is_none() || silent(c.last_seen));
                    (
                        c.clone(),
                        lost.then(|| cpu.map_or(SystemTime::UNIX_EPOCH, |c| c.last_seen)),
                    )
                })
                .collect();
            let notices = if take_notices {
                state.notices.remove(user).unwrap_or_default()
            } else {
                state.notices.get(user).cloned().unwrap_or_default()
            };
            (
                by_cpu
                    .into_iter()
                    .map(|(c, envs)| {
                        let lost = reachable.get(&c).copied().flatten();
                        (c, envs, lost)
                    })
                    .collect::<Vec<_>>(),
                notices,
            )
        };
        let mut records = Vec::new();
        for (cpu, envs, lost) in by_cpu.iter_mut() {
            envs.sort();
            let mut answered = None;
            if lost.is_none() {
                let names = envs.iter().filter(|e| !e.3).map(|e| e.0.clone()).collect();
                let request = Request::Status {
                    user: user.into(),
                    envs: names,
                };
                match self.call(cpu, request, self.deadlines.other) {
                    Ok(Answer::Status { envs }) => answered = Some(envs),
                    Ok(_) | Err(CallError::Refused(_)) => {}
                    Err(CallError::Unreachable(why)) => {
                        // When it was last heard from, not when we gave up.
                        *lost = Some(
                            self.state()
                                .cpus
                                .get(cpu.as_str())
                                .map_or_else(SystemTime::now, |c| c.last_seen),
                        );
                        tracing::info!(cpu = %cpu, error = %why, "status");
                    }
                }
            }
            let on = |name: &str, state| EnvRecord {
                name: name.to_string(),
                cpu: Some(cpu.clone()),
                state,
            };
            match answered {
                Some(running) => {
                    for s in running {
                        records.push(on(&s.name.clone(), EnvState::Running(s)));
                    }
                    for e in envs.iter().filter(|e| e.3) {
                        records.push(on(&e.0, EnvState::Starting));
                    }
                }
                None => {
                    for (name, root, login, _) in envs.iter() {
                        records.push(on(
                            name,
                            EnvState::Lost {
                                root: *root,
                                login: login.clone(),
                                last_seen: *lost,
                            },
                        ));
                    }
                }
            }
        }
        Ok(UserStatus {
            envs: records,
            notices,
        })
    }

    fn live(&self) -> usize {
        self.state().envs.len()
    }

    fn room(&self) -> usize {
        let state = self.state();
        state
            .cpus
            .values()
            .filter(|c| c.conn.is_some())
            .map(|c| c.slots.saturating_sub(c.running) as usize)
            .sum()
    }

    fn room_by_node(&self) -> Vec<(String, usize)> {
        let state = self.state();
        state
            .cpus
            .iter()
            .filter(|(_, c)| c.conn.is_some())
            .map(|(name, c)| (name.clone(), c.slots.saturating_sub(c.running) as usize))
            .collect()
    }

    fn counts(&self) -> crate::EnvCounts {
        let state = self.state();
        let mut counts = crate::EnvCounts::default();
        for p in state.envs.values() {
            let linked = state.cpus.get(&p.cpu).is_some_and(|c| c.conn.is_some());
            if !linked {
                counts.lost += 1;
            } else if p.starting {
                counts.starting += 1;
            } else {
                counts.running += 1;
            }
        }
        counts
    }

    /// The caches as the cpu nodes last reported them, of the
    /// environments placed there that are running.
    fn cache_use(&self) -> Vec<(String, String, u64, u64)> {
        let state = self.state();
        let mut out: Vec<_> = state
            .envs
            .iter()
            .filter(|(_, p)| !p.starting)
            .filter_map(|((user, env), p)| {
                let c = state.cpus.get(&p.cpu).filter(|c| c.conn.is_some())?;
                let (used, capacity) = c.caches.get(&(user.clone(), env.clone()))?;
                Some((user.clone(), env.clone(), *used, *capacity))
            })
            .collect();
        out.sort();
        out
    }

    fn shutdown(&self) {
        // The environments are the cpu nodes': they outlive this storage
        // node's restart, and its successor adopts them.
        tracing::info!(
            environments = self.live(),
            "storage node stopping; environments on cpu nodes carry on"
        );
    }
}

/// Has this node's store fetch `root`'s working set ahead, on a thread of
/// its own, so that the cpu node's reads of it find it here. A store that
/// is not far (the embedded log) takes the hint as nothing; a list that
/// cannot be read is the cpu node's to report.
fn fetch_ahead_here(store: Arc<dyn venti::BlockStore>, root: Score, list: Score) {
    // One fetch of a list at a time, and a few lists at once: spawns come
    // in bursts (jobs), and a refused spawn has asked for this too.
    static FETCHING: Mutex<Vec<Score>> = Mutex::new(Vec::new());
    const AT_ONCE: usize = 4;
    {
        let mut fetching = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
        if fetching.len() >= AT_ONCE || fetching.contains(&list) {
            return;
        }
        fetching.push(list);
    }
    let done = move || {
        FETCHING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| *l != list);
    };
    let spawned = std::thread::Builder::new()
        .name("working-set".into())
        .spawn(move || {
            let keys = store
                .read(&list, venti::BlockType::DATA)
                .ok()
                .flatten()
                .and_then(|block| cpu::working_set::decode(&block).ok());
            match keys {
                Some(keys) => store.prefetch(keys),
                None => tracing::debug!(root = %root, list = %list, "a working-set list not fetched ahead here"),
            }
            done();
        });
    if let Err(e) = spawned {
        done();
        tracing::warn!(error = %e, "starting a working-set fetch");
    }
}
