//! The storage service: users, names and the command set of the front door
//! (scores, spawn, spawndisk, save, invite, boom, status). Each command runs
//! for one authenticated user and returns what to print and the exit
//! status; replies go only to that user.
//!
//! Where environments run is behind [`Cpus`]: on this machine ([`local`],
//! a node of role `both`) or on the grid's cpu nodes ([`placement`]).
//! Environments are per user: alice's `debian` and bob's `debian` are two
//! different environments, and nobody can name, save, invite into or boom
//! anyone else's. A user's environments and jobs held by the grid's other
//! storage nodes are listed and acted on by asking them ([`peers`]).

pub mod admin;
pub mod collect;
pub mod frontdoor;
pub mod import;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod peers;
pub mod placement;
pub mod queue;
pub mod run;
pub mod services;
pub mod status;
pub mod streams;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use venti::Score;

use cpu::options::SPAWN_USAGE;
use grid::error::{GridError, GridResult};
use grid::names::check_score_name;
use grid::scorenames::{ScoreNames, taken};
use grid::state::StateDir;
use grid::users::Users;
use units::human;

/// The commands: each verb and its usage, in the order the prompt lists them.
pub const VERBS: [(&str, &str); 15] = [
    ("scores", "scores [FILTER]"),
    ("spawn", "spawn NAME"),
    ("spawndisk", "spawndisk NAME"),
    ("save", "save ENV NEWNAME"),
    ("invite", "invite USER ENV"),
    ("boom", "boom ENV"),
    ("forget", "forget NAME"),
    ("status", "status"),
    ("import", "import NAME < TAR"),
    ("run", "run [-d] ROOT [OPTIONS] -- COMMAND"),
    ("jobs", "jobs"),
    ("logs", "logs [-f] JOB"),
    ("cancel", "cancel JOB"),
    ("service", "service add|ls|logs|update|rm …"),
    ("exit", "exit"),
];

/// The help line of the interactive prompt (as the original `gridorc`
/// printed): every usage of [`VERBS`].
pub fn commands() -> String {
    VERBS.map(|(_, usage)| usage).join(" | ")
}

/// What a command prints, and its exit status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub out: String,
    pub err: String,
    pub status: u32,
}

impl Reply {
    fn ok(out: String) -> Reply {
        Reply {
            out,
            err: String::new(),
            status: 0,
        }
    }
    pub fn fail(err: impl Into<String>) -> Reply {
        let mut err = err.into();
        if !err.ends_with('\n') {
            err.push('\n');
        }
        Reply {
            out: String::new(),
            err,
            status: 1,
        }
    }
}

/// How many environments are in each state, for the node's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnvCounts {
    /// Spawns not yet answered.
    pub starting: usize,
    pub running: usize,
    /// On a cpu node that is out of reach.
    pub lost: usize,
}

impl EnvCounts {
    /// Each state by its metric label; every state, zero or not, so a
    /// dashboard sees a state go to zero rather than vanish.
    pub fn by_state(&self) -> [(&'static str, usize); 3] {
        [
            ("starting", self.starting),
            ("running", self.running),
            ("lost", self.lost),
        ]
    }
}

/// A started environment, as its cpu answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    /// What to tell the user (the login, published ports).
    pub text: String,
    /// The command that logs in: `ssh -p PORT USER@HOST`.
    pub login: String,
    /// The login's host key, an OpenSSH public key line.
    pub host_key: String,
    /// The cpu node it runs on (`this node` for a single node's own).
    pub node: String,
}

/// Where environments run. Names and users are the storage service's; the
/// environments, their logins and their saved trees are the cpus'.
pub trait Cpus: Send + Sync {
    /// Starts an environment.
    fn spawn(&self, spawn: &control::Spawn) -> GridResult<Spawned>;
    /// Saves the environment; its blocks are durable in the store when
    /// this returns the root's score.
    fn save(&self, user: &str, env: &str) -> GridResult<Score>;
    /// Adds a login for `invitee` and saves.
    fn invite(&self, user: &str, env: &str, invitee: &str) -> GridResult<Score>;
    /// Ends the environment; false if it was not running.
    fn boom(&self, user: &str, env: &str) -> GridResult<bool>;
    /// Whether this node placed (or runs) `user`'s `env`, starting or
    /// not: whether its commands are this node's to carry out.
    fn holds(&self, user: &str, env: &str) -> bool;
    /// The root `user`'s `env` was spawned from, where that is known
    /// here (a save passes its root's working-set list on to the saved
    /// root); none by default.
    fn root_of(&self, user: &str, env: &str) -> Option<Score> {
        let _ = (user, env);
        None
    }
    /// The roots the environments here stand on, for a collection: each
    /// one's root and the root of its last save (or its resume point). An
    /// error if that cannot be known now (a cpu node out of reach): then
    /// nothing may be collected.
    fn pins(&self) -> GridResult<Vec<Score>>;
    /// The user's environments; with `take_notices`, the notices kept
    /// for the user are handed over (and forgotten), as to the user
    /// themself; without, they stay for the user (the admin's page looks).
    fn status(&self, user: &str, take_notices: bool) -> GridResult<status::UserStatus>;
    /// Live environments.
    fn live(&self) -> usize;
    /// Ends `user`'s `env`, which a job's try ran in on cpu node `node`
    /// before this storage node restarted: now if it is known here, else
    /// when that cpu node next reports it.
    fn end_stale(&self, node: Option<&str>, user: &str, env: &str);
    /// How many more environments could start now (the free slots of
    /// what is in reach); what a queue of runs waits on.
    fn room(&self) -> usize;
    /// The cpu nodes in reach, each with its free slots, for a caller
    /// that chooses where to place (`node=`); empty where there is no
    /// choice (a single node's own environments).
    fn room_by_node(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    /// Environments by state.
    fn counts(&self) -> EnvCounts;
    /// Each environment's cache use here: (user, environment, used,
    /// capacity) in bytes, of those whose figures are known.
    fn cache_use(&self) -> Vec<(String, String, u64, u64)>;
    /// Ends what runs here (the node is stopping).
    fn shutdown(&self);
}

pub struct Node {
    state: StateDir,
    cpus: Arc<dyn Cpus>,
    /// Where requests, replies and events are published, if anywhere.
    streams: Option<Arc<streams::Streams>>,
    /// The node's block store, for imports through the front door.
    store: Option<Arc<dyn venti::BlockStore>>,
    metrics: Option<Arc<metrics::Metrics>>,
    /// Detached runs (`run -d`); none if their directory cannot be made
    /// (said in the log, and to whoever asks for a job).
    jobs: Option<Arc<jobs::Jobs>>,
    /// Where runs wait for room.
    queue: Arc<queue::Queue>,
    /// Each user's budget of runs' input waiting (while any run of theirs
    /// holds it).
    input_budgets: Mutex<HashMap<String, std::sync::Weak<run::InputBudget>>>,
    /// The grid's other storage nodes, asked about the work they hold
    /// (set once, when the node has them).
    peers: std::sync::OnceLock<peers::Peers>,
    /// The services it keeps; none if their directory cannot be made.
    services: Option<Arc<services::Services>>,
    /// Itself, for what it starts that outlives a command (a service's
    /// keepers); set by [`Node::up`].
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
    /// Its garbage collector, if its store is its own log or a bucket.
    collector: Option<Arc<collect::Collector>>,
    /// Spawns on their way: the roots they looked up, until their
    /// environments are the cpus' (see [`Node::spawning`]).
    in_flight: Arc<collect::InFlight>,
}

/// What a command sees: the user's work across the grid (a user's
/// command), or only what this node holds (a peer's ask, which never asks
/// on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Grid,
    Here,
}

/// The exit status of a peer's ask about an environment or a job this
/// node does not hold (never shown to a user).
pub(crate) const NOT_HERE: u32 = 75;

/// How long a peer has to carry out a command for work it holds (a save
/// may take the cpu node's full save deadline).
const PEER_WORK: std::time::Duration = std::time::Duration::from_secs(330);

/// The reply to a peer's ask about work this node does not hold.
fn not_here() -> Reply {
    Reply {
        out: String::new(),
        err: "not held here\n".into(),
        status: NOT_HERE,
    }
}

/// The largest copy of a service record a peer takes.
const MAX_COPY: usize = 64 << 10;

/// How long a peer has to answer a listing or a check.
const PEER_LOOKS: std::time::Duration = std::time::Duration::from_secs(10);

fn usage(text: &str) -> Reply {
    Reply::fail(format!("usage: {text}"))
}

impl Node {
    pub fn new(state: StateDir, cpus: Arc<dyn Cpus>) -> Node {
        let jobs = jobs::Jobs::open(state.root.join("jobs"))
            .inspect_err(|e| tracing::error!(error = %e, "jobs are not available"))
            .ok();
        let services =
            services::Services::open(state.root.join("services"), state.root.join("services.ndb"))
                .inspect_err(|e| tracing::error!(error = %e, "services are not available"))
                .ok();
        let queue = queue::Queue::new({
            let cpus = cpus.clone();
            move || cpus.room()
        });
        Node {
            state,
            cpus,
            streams: None,
            store: None,
            metrics: None,
            jobs,
            queue,
            input_budgets: Mutex::default(),
            peers: Default::default(),
            services,
            me: Default::default(),
            collector: None,
            in_flight: Default::default(),
        }
    }

    /// `user`'s budget of runs' input waiting: one for all their runs.
    pub fn input_budget(&self, user: &str) -> Arc<run::InputBudget> {
        let mut budgets = self.input_budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.retain(|_, b| b.strong_count() > 0);
        if let Some(b) = budgets.get(user).and_then(std::sync::Weak::upgrade) {
            return b;
        }
        let b = Arc::new(run::InputBudget::new());
        budgets.insert(user.to_string(), Arc::downgrade(&b));
        b
    }

    /// Asks `peers` about the work they hold (once; later calls are
    /// ignored).
    pub fn set_peers(&self, peers: peers::Peers) {
        let _ = self.peers.set(peers);
    }

    /// The other storage nodes, if there are any to ask.
    pub fn peers(&self) -> Option<&peers::Peers> {
        self.peers.get().filter(|p| p.any())
    }

    /// The queue runs wait their turn in.
    pub fn queue(&self) -> &Arc<queue::Queue> {
        &self.queue
    }

    /// The node is up (once, on its runtime): it keeps the services and
    /// runs the jobs a previous run of it left.
    pub fn up(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        self.resume_services();
        self.resume_jobs();
        self.share_services();
    }

    /// Copies each changed service record to the peers, in the background
    /// (a round at most a second; what a peer did not take is tried again
    /// within ten).
    fn share_services(self: &Arc<Self>) {
        let (Some(services), Some(_)) = (self.services.clone(), self.peers()) else {
            return;
        };
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            // What some peer did not take, tried again every ten seconds
            // (not at each change: a peer out of reach fails at once).
            let mut retry: std::collections::BTreeSet<(String, String)> = Default::default();
            loop {
                let idle = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    services.share.notified(),
                )
                .await
                .is_err();
                let mut changed: std::collections::BTreeSet<_> =
                    services.take_unshared().into_iter().collect();
                if idle {
                    changed.append(&mut retry);
                }
                let Some(n) = node.upgrade() else { return };
                if !changed.is_empty() {
                    let changed = changed.into_iter().collect();
                    let failed = tokio::task::spawn_blocking(move || n.share(changed))
                        .await
                        .unwrap_or_default();
                    retry.extend(failed);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Copies these records (or their removal) to every peer: those some
    /// peer did not take.
    fn share(&self, changed: Vec<(String, String)>) -> Vec<(String, String)> {
        let (Some(peers), Ok(services)) = (self.peers(), self.services()) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for (user, name) in changed {
            let line = match services.record_text(&user, &name) {
                Some(text) => format!("service-copy {} {name} {text}", peers.me()),
                None => format!("service-forget {} {name}", peers.me()),
            };
            let taken = peers
                .ask_all(&user, &line, PEER_LOOKS)
                .iter()
                .all(|a| matches!(&a.told, Ok(t) if t.status == 0));
            if !taken {
                failed.push((user, name));
            }
        }
        failed
    }

    /// Keeps the services a previous run of the node kept, ending first
    /// what their replicas ran in then.
    fn resume_services(self: &Arc<Self>) {
        let Some(services) = &self.services else {
            return;
        };
        let stale = services.resume(self);
        if !stale.is_empty() {
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                for (user, env, on) in stale {
                    node.cpus.end_stale(on.as_deref(), &user, &env);
                }
            });
        }
    }

    /// The services the node keeps.
    pub fn services(&self) -> GridResult<&Arc<services::Services>> {
        self.services.as_ref().ok_or_else(|| {
            GridError::refused("services are not available on this node (its log says why)")
        })
    }

    /// The cpu nodes in reach and their free slots (see [`Cpus::room_by_node`]).
    pub fn room_by_node(&self) -> Vec<(String, usize)> {
        self.cpus.room_by_node()
    }

    /// Tells `user` and the admin what happened to a service.
    pub fn service_event(&self, user: &str, text: &str) {
        if let Some(s) = &self.streams {
            s.service(user, text);
        }
    }

    /// Runs the jobs a previous run of the node left queued, or running
    /// with retries left (ending first what their last try ran in).
    fn resume_jobs(self: &Arc<Self>) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let (resumable, stale) = jobs.resumable();
        // What the last tries ran in ends first (now if known here, else
        // when its cpu node reports it: it may not have linked yet).
        if !stale.is_empty() {
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                for s in stale {
                    node.cpus.end_stale(s.node.as_deref(), &s.user, &s.env);
                }
            });
        }
        for job in resumable {
            let line = job.line();
            let request = match line.as_deref().map(run::RunRequest::parse) {
                Some(Ok(r)) => r,
                _ => {
                    let why = format!("its request no longer reads: {line:?}");
                    job.finish(jobs::State::Failed, None, None, Some(why));
                    continue;
                }
            };
            self.job_event(
                &job.user(),
                &format!("{} queued again: its node restarted", job.id()),
            );
            // In line now, in the order they were submitted.
            let place = self.queue.line_up(&job.user());
            run::start_job(self.clone(), job, request, place);
        }
    }

    /// The node's jobs.
    pub fn jobs(&self) -> GridResult<&Arc<jobs::Jobs>> {
        self.jobs.as_ref().ok_or_else(|| {
            GridError::refused("jobs are not available on this node (its log says why)")
        })
    }

    /// Counts commands, their latencies and imports in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<metrics::Metrics>) -> Node {
        self.metrics = Some(metrics);
        self
    }

    pub fn metrics(&self) -> Option<&Arc<metrics::Metrics>> {
        self.metrics.as_ref()
    }

    /// Every user's environments, for the admin's status page.
    pub fn all_status(&self) -> GridResult<Vec<(String, status::EnvRecord)>> {
        let mut out = Vec::new();
        for (user, _) in self.users().list()? {
            out.extend(
                self.cpus
                    .status(&user, false)?
                    .envs
                    .into_iter()
                    .map(|e| (user.clone(), e)),
            );
        }
        Ok(out)
    }

    /// Collects garbage in its log store with `collector`.
    pub fn with_collector(mut self, collector: Arc<collect::Collector>) -> Node {
        self.collector = Some(collector);
        self
    }

    /// Runs a collection (`colony gc`), telling `progress` how it goes.
    pub fn collect(&self, progress: &mut dyn FnMut(&str)) -> GridResult<collect::Report> {
        let collector = self.collector.as_ref().ok_or_else(|| {
            GridError::refused(
                "this node's blocks are kept by a venti server, not by this node: nothing to collect here",
            )
        })?;
        let report = collector.collect(self, progress);
        match &report {
            Ok(r) => tracing::info!(
                seconds = r.seconds,
                roots = r.marked.roots,
                dropped = r.swept.blocks_dropped(),
                given_back = r.swept.given_back(),
                "collected garbage"
            ),
            Err(e) => tracing::warn!(error = %e, "a collection did not run"),
        }
        report
    }

    /// The roots this node's own work stands on, which its names may not
    /// show: spawns on their way, its environments' roots and last saves
    /// or resume points, its jobs' logs.
    pub(crate) fn own_pins(&self) -> GridResult<Vec<(Score, venti::BlockType)>> {
        // Spawns on their way first: one that registered after this look
        // is a lookup that comes after it, of a name the caller marks.
        let mut pins: Vec<(Score, venti::BlockType)> = self
            .in_flight
            .roots()?
            .into_iter()
            .chain(self.cpus.pins()?)
            .map(|s| (s, venti::BlockType::ROOT))
            .collect();
        if let Some(jobs) = &self.jobs {
            pins.extend(jobs.pins()?);
        }
        Ok(pins)
    }

    /// What a peer collecting its garbage must keep for this node: its
    /// own pins, and the roots of the names it has not yet sent `peer`.
    fn pins_for(&self, peer: &str) -> GridResult<Vec<u8>> {
        let mut pins = self.own_pins()?;
        let sent = self
            .peers()
            .and_then(|p| {
                p.replicator()
                    .acknowledged()
                    .into_iter()
                    .find(|(p, _)| p.name == peer)
            })
            .map_or(0, |(_, at)| at.names as usize);
        self.names().each_kept(sent, &mut |kept| match kept {
            grid::scorenames::Kept::Root(r) => pins.push((r, venti::BlockType::ROOT)),
            grid::scorenames::Kept::List(l) => pins.push((l, venti::BlockType::DATA)),
            // A forget travels like a name: the peer hears of it in turn.
            grid::scorenames::Kept::Forgotten(_) => {}
        })?;
        collect::format_pins(&pins).map_err(GridError::refused)
    }

    /// Takes imports into `store`, and keeps ended jobs' logs there.
    pub fn with_store(mut self, store: Arc<dyn venti::BlockStore>) -> Node {
        if let Some(jobs) = &self.jobs {
            jobs.keep_logs_in(store.clone());
        }
        self.store = Some(store);
        self
    }

    /// Checks an `import NAME` before its stream is read: the name is
    /// free and well formed, and the node takes imports.
    pub fn check_import(&self, user: &str, name: &str) -> GridResult<()> {
        self.import_target(&[user], name).map(|_| ())
    }

    /// The store an import of NAME for `users` goes into, once NAME is
    /// well formed and free and the users exist.
    fn import_target(&self, users: &[&str], name: &str) -> GridResult<&Arc<dyn venti::BlockStore>> {
        check_score_name(name)?;
        let Some(store) = &self.store else {
            return Err(GridError::refused(
                "this node takes no imports (it has no block store of its own)",
            ));
        };
        for u in users {
            if !self.users().exists(u)? {
                return Err(GridError::refused(format!("no user {u}")));
            }
        }
        // Names are per user: only these users' own count.
        if let Some(u) = self.names().holder_of(name, users)? {
            return Err(taken(name, (users.len() > 1).then_some(&u)));
        }
        Ok(store)
    }

    /// `import NAME [oci[:TAG]]` with its stream, by `user`: archives it
    /// and binds NAME for `user` (see [`import`]), within their quota.
    pub fn import(&self, user: &str, name: &str, upload: import::Upload<'_>) -> Reply {
        self.import_for(user, Some(user), &[user], name, upload)
    }

    /// An import by `by` binding NAME for `users`; `quota_of` pays for
    /// the new blocks (none: the node's admin, through its own socket).
    pub fn import_for(
        &self,
        by: &str,
        quota_of: Option<&str>,
        users: &[&str],
        name: &str,
        upload: import::Upload<'_>,
    ) -> Reply {
        let line = format!("import {name}");
        if let Some(s) = &self.streams {
            s.request(by, &line);
        }
        let result = (|| -> GridResult<String> {
            let store = self.import_target(users, name)?;
            let quotas = self.state.quotas();
            let left = match quota_of {
                Some(u) => quotas.get(u)?.left(),
                None => u64::MAX,
            };
            let charge = |added: u64| match quota_of {
                Some(u) => self.charge(u, added),
                None => Ok(()),
            };
            let done =
                match import::archive(store.as_ref(), left, upload, &self.state.root.join("tmp")) {
                    Ok(done) => done,
                    Err(refused) => {
                        // What it stored stays stored: it is the importer's.
                        charge(refused.added)?;
                        return Err(refused.error);
                    }
                };
            charge(done.added)?;
            if let Some(m) = &self.metrics {
                m.import_bytes.inc_by(done.added);
                m.event(&format!("{by} imported {name}"));
            }
            tracing::info!(
                by,
                name,
                new_bytes = done.added,
                stored_bytes = done.known,
                "imported"
            );
            self.names().bind(name, &done.score, users)?;
            Ok(format!(
                "{name} vac:{} ({} new, {} already stored)\n",
                done.score,
                units::human(done.added),
                units::human(done.known)
            ))
        })();
        let reply = match result {
            Ok(out) => Reply::ok(out),
            Err(e) => {
                tracing::info!(by, name, error = %e, "import refused");
                if let Some(m) = &self.metrics {
                    m.refused(&format!("{by} import {name}: {e}"));
                }
                Reply::fail(format!("import {name}: {e}"))
            }
        };
        if let Some(m) = &self.metrics {
            m.commands
                .get_or_create(&metrics::CommandLabels {
                    command: "import".into(),
                    outcome: if reply.status == 0 { "ok" } else { "refused" }.into(),
                })
                .inc();
        }
        if let Some(s) = &self.streams {
            let first = if reply.status == 0 {
                &reply.out
            } else {
                &reply.err
            };
            s.reply(by, reply.status, &one_line(first));
            if reply.status == 0 {
                s.event(&format!("{by} {line}: {}", reply.out.trim()));
            }
        }
        reply
    }

    /// Tells the streams that `user`'s job changed: `text` is its id and
    /// what happened.
    pub fn job_event(&self, user: &str, text: &str) {
        if let Some(s) = &self.streams {
            s.job(user, text);
        }
    }

    /// Publishes every request, reply and event on `streams`.
    pub fn with_streams(mut self, streams: Arc<streams::Streams>) -> Node {
        self.streams = Some(streams);
        self
    }

    /// A node of role `both`: environments run on this machine, reading
    /// `store` (the single-node grid).
    pub fn local(
        state: StateDir,
        store: Arc<dyn venti::BlockStore>,
        config: cpu::CpuConfig,
    ) -> GridResult<Node> {
        let envs = cpu::Environments::new(state.clone(), config)?;
        envs.provide_store("", store.clone());
        let users = state.users();
        let cpus = Arc::new(local::LocalCpus { envs, store, users });
        Ok(Node::new(state, cpus))
    }

    pub fn users(&self) -> Users {
        self.state.users()
    }

    fn names(&self) -> ScoreNames {
        self.state.scorenames()
    }

    /// Runs one command line for `user` (and publishes it and its outcome
    /// on the node's streams).
    pub fn run(&self, user: &str, line: &str) -> Reply {
        let Some(streams) = &self.streams else {
            return self.measured(user, line);
        };
        streams.request(user, line);
        let reply = self.measured(user, line);
        let first = one_line(if reply.status == 0 {
            &reply.out
        } else {
            &reply.err
        });
        streams.reply(user, reply.status, &first);
        let verb = line.split_whitespace().next().unwrap_or("");
        if reply.status == 0 && ["spawn", "spawndisk", "save", "invite", "boom"].contains(&verb) {
            streams.event(&format!("{user} {}: {first}", line.trim()));
        }
        reply
    }

    /// Runs the command, counting it and timing spawns and saves.
    fn measured(&self, user: &str, line: &str) -> Reply {
        let Some(m) = &self.metrics else {
            return self.execute(user, line, Scope::Grid);
        };
        let verb = line.split_whitespace().next().unwrap_or("").to_string();
        let t = std::time::Instant::now();
        let reply = self.execute(user, line, Scope::Grid);
        let secs = t.elapsed().as_secs_f64();
        let known = VERBS.iter().any(|(v, _)| *v == verb);
        m.commands
            .get_or_create(&metrics::CommandLabels {
                command: if known { verb.clone() } else { "other".into() },
                outcome: if reply.status == 0 { "ok" } else { "refused" }.into(),
            })
            .inc();
        if reply.status != 0 {
            m.refused(&format!("{user} {}: {}", line.trim(), one_line(&reply.err)));
        }
        if reply.status == 0 {
            match verb.as_str() {
                "spawn" | "spawndisk" => m.spawn_seconds.observe(secs),
                "save" => m.save_seconds.observe(secs),
                _ => {}
            }
            if ["spawn", "spawndisk", "save", "invite", "boom"].contains(&verb.as_str()) {
                m.event(&format!("{user} {}: {}", line.trim(), one_line(&reply.out)));
            }
        }
        reply
    }

    fn execute(&self, user: &str, line: &str, scope: Scope) -> Reply {
        let words: Vec<&str> = line.split_whitespace().collect();
        // Work another storage node holds is carried out there.
        if let Some(reply) = self.elsewhere(user, line, &words, scope) {
            return reply;
        }
        let result = match words.as_slice() {
            [] => return Reply::fail(format!("no command; commands: {}", commands())),
            // No names at all: said on stderr, so the list on stdout stays
            // a list (empty) for scripts.
            ["scores"] => match self.scores(user, None) {
                Ok(out) if out.is_empty() => {
                    return Reply {
                        out,
                        err: "you have no names yet: import a root (tar c -C DIR . | ssh … import NAME), or ask to be invited\n".into(),
                        status: 0,
                    };
                }
                other => other,
            },
            ["scores", filter] => self.scores(user, Some(filter)),
            ["scores", ..] => return usage("scores [FILTER]"),
            ["forget", name] => self.forget(user, name),
            ["forget", ..] => return usage("forget NAME"),
            ["spawn", name, options @ ..] => self.spawn(user, name, false, options, scope),
            ["spawn", ..] => return usage(&format!("spawn {SPAWN_USAGE}")),
            ["spawndisk", name, options @ ..] => self.spawn(user, name, true, options, scope),
            ["spawndisk", ..] => return usage(&format!("spawndisk {SPAWN_USAGE}")),
            ["save", env, new] => self.save(user, env, new),
            ["save", ..] => return usage("save ENV NEWNAME"),
            ["invite", invitee, env] => self.invite(user, invitee, env),
            ["invite", ..] => return usage("invite USER ENV"),
            ["boom", env] => self.boom(user, env),
            ["boom", ..] => return usage("boom ENV"),
            // Notices stay where they are kept until the user asks that
            // node itself (an answer lost on the way would lose them).
            ["status"] if scope == Scope::Here => self.cpus.status(user, false).map(|s| s.text()),
            ["status"] => return self.status(user),
            ["status", ..] => return usage("status"),
            ["import", ..] => {
                return Reply::fail(
                    "import reads a tar stream: tar c -C DIR . | ssh -p 16999 you@node import NAME",
                );
            }
            ["jobs"] if scope == Scope::Here => self.jobs_text(user, false),
            ["jobs"] => return self.grid_jobs(user),
            ["jobs", ..] => return usage("jobs"),
            ["logs", "-f", _] => {
                return Reply::fail(
                    "logs -f follows a job until it ends, one a session: ssh -p 16999 you@node logs -f JOB",
                );
            }
            ["logs", id] => self
                .jobs()
                .and_then(|j| j.log(user, id, 0))
                .map(|log| String::from_utf8_lossy(&log).into_owned()),
            ["logs", ..] => return usage("logs [-f] JOB"),
            ["cancel", id] => self.jobs().and_then(|j| j.cancel(user, id)),
            ["cancel", ..] => return usage("cancel JOB"),
            ["service", "ls"] if scope == Scope::Grid => return self.grid_services(user),
            ["service", "add", name, ..]
                if scope == Scope::Grid
                    && let Some(peer) = self.service_kept_by_peer(user, name) =>
            {
                Err(GridError::refused(format!(
                    "you have a service {name} already, kept by storage node {peer}"
                )))
            }
            ["service", ..] => match self.me.get().and_then(std::sync::Weak::upgrade) {
                Some(me) => services::command(&me, user, line, &words),
                None => Err(GridError::refused("the node is starting; try again")),
            },
            // A peer asks whether this node placed `env` of the user's.
            ["placed", env] if scope == Scope::Here => {
                return if self.cpus.holds(user, env) {
                    Reply::ok(format!("{env}\n"))
                } else {
                    not_here()
                };
            }
            ["run", ..] => {
                return Reply::fail(format!(
                    "run streams its command's input and output, one run a session: ssh -p 16999 you@node {}",
                    run::USAGE
                ));
            }
            [other, ..] => {
                return Reply::fail(format!(
                    "unknown command {other:?}; commands: {}",
                    commands()
                ));
            }
        };
        match result {
            Ok(out) => Reply::ok(out),
            Err(e) => {
                tracing::info!(user, command = line, error = %e, "command refused");
                Reply::fail(e.to_string())
            }
        }
    }

    /// A command for an environment or a job this node does not hold:
    /// a user's is carried out by the peer that holds it (its reply); a
    /// peer's ask is answered [`NOT_HERE`]. None: this node carries it out
    /// (and says "not running" or "no job" if nobody holds it).
    fn elsewhere(&self, user: &str, line: &str, words: &[&str], scope: Scope) -> Option<Reply> {
        let (what, held) = match words {
            ["boom", env] | ["save", env, _] | ["invite", _, env] => {
                (*env, self.cpus.holds(user, env))
            }
            ["logs", id] | ["cancel", id] => (
                *id,
                self.jobs
                    .as_ref()
                    .is_some_and(|j| j.record(user, id).is_ok()),
            ),
            ["service", "rm" | "logs" | "update", name, ..] | ["service", "ls", name] => (
                *name,
                self.services
                    .as_ref()
                    .is_some_and(|s| s.get(user, name).is_some()),
            ),
            _ => return None,
        };
        if held {
            return None;
        }
        if scope == Scope::Here {
            return Some(not_here());
        }
        let peers = self.peers()?;
        // A save (or an invite, which saves) may take its cpu node's whole
        // save deadline; the rest answer at once.
        let within = match words[0] {
            "save" | "invite" => PEER_WORK,
            _ => PEER_LOOKS,
        };
        match peers.ask_in_turn(user, line, within, |t| t.status != NOT_HERE) {
            Ok((_, t)) => Some(Reply {
                out: String::from_utf8_lossy(&t.out).into_owned(),
                err: t.err,
                status: t.status,
            }),
            Err(unasked) if unasked.is_empty() => None,
            Err(unasked) => {
                let mut err = format!("{what} is not held by this storage node");
                for (peer, why) in unasked {
                    let _ = write!(err, "; storage node {peer}, which may hold it, is {why}");
                }
                Some(Reply::fail(err))
            }
        }
    }

    fn scores(&self, user: &str, filter: Option<&str>) -> GridResult<String> {
        let mut out = String::new();
        let renamed = self.names().renamed()?;
        for name in self.names().names_for(user)? {
            if filter.is_none_or(|f| name.contains(f)) {
                out.push_str(&name);
                // A binding that lost a replication conflict: say so, once
                // per listing, so its owner knows where their root went.
                if let Some(r) = renamed.iter().find(|r| r.shown_as == name) {
                    let _ = write!(
                        out,
                        "\t(bound as {} on {}; another root holds that name)",
                        r.bound_as, r.origin
                    );
                }
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// `user`'s jobs here, a line each; `none` says so when there are none.
    fn jobs_text(&self, user: &str, none: bool) -> GridResult<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let list = self.jobs()?.list(user)?;
        if list.is_empty() && none {
            return Ok("no jobs\n".into());
        }
        Ok(list.iter().map(|r| r.line(now) + "\n").collect())
    }

    fn spawn(
        &self,
        user: &str,
        name: &str,
        disk: bool,
        options: &[&str],
        scope: Scope,
    ) -> GridResult<String> {
        check_score_name(name)?;
        // Bounded here, where they arrive; their values are the cpu node's.
        cpu::options::check_form(options)?;
        // A user's environments are one set across the grid.
        if scope == Scope::Grid
            && let Some(peers) = self.peers()
            && let Some((peer, _)) = peers.first_done(user, &format!("placed {name}"), PEER_LOOKS)
        {
            return Err(GridError::refused(format!(
                "{name} already runs for {user}, placed by storage node {peer}: boom it first, or save it under a new name"
            )));
        }
        // Registered before the root is looked up, and until the cpus
        // hold the environment: a collection meanwhile marks the root.
        let on_its_way = self.in_flight.register();
        let binding = self.names().lookup_for(name, user)?;
        let Some(binding) = binding else {
            return Err(GridError::refused(format!("{name} not found for {user}")));
        };
        on_its_way.stands_on(binding.root);
        let spawned = self.cpus.spawn(&control::Spawn {
            user: user.to_string(),
            name: name.to_string(),
            root: binding.root,
            disk,
            options: options.iter().map(|o| o.to_string()).collect(),
            run_key: None,
        })?;
        Ok(spawned.text)
    }

    /// Starts the environment of one `run`: ROOT's, named `env`, which
    /// `run_key` (the storage node's one-time key) may log in to as
    /// `user`. The environment is the run's to end (see [`run`]).
    pub fn spawn_for_run(
        &self,
        user: &str,
        root: &str,
        env: &str,
        options: &[String],
        run_key: String,
    ) -> GridResult<Spawned> {
        check_score_name(root)?;
        let borrowed: Vec<&str> = options.iter().map(String::as_str).collect();
        cpu::options::check_form(&borrowed)?;
        let on_its_way = self.in_flight.register();
        let Some(binding) = self.names().lookup_for(root, user)? else {
            return Err(GridError::refused(format!("{root} not found for {user}")));
        };
        on_its_way.stands_on(binding.root);
        let spawned = self.cpus.spawn(&control::Spawn {
            user: user.to_string(),
            name: env.to_string(),
            root: binding.root,
            disk: false,
            options: options.to_vec(),
            run_key: Some(run_key),
        })?;
        tracing::info!(user, root, env, "a run's environment started");
        Ok(spawned)
    }

    fn save(&self, user: &str, env: &str, new: &str) -> GridResult<String> {
        check_score_name(new)?;
        if self.names().holder_of(new, &[user])?.is_some() {
            return Err(taken(new, None));
        }
        let changed = self.save_within_quota(user, env)?;
        let score = self.cpus.save(user, env)?;
        self.charge(user, changed)?;
        self.names().bind(new, &score, &[user])?;
        self.carry_working_set(user, env, &score);
        tracing::info!(user, env, name = new, root = %score, "saved");
        Ok(format!("{new} saved\nvac:{score}\n"))
    }

    /// Forgets one of the user's names, on every storage node (its
    /// tombstone replicates). What runs on its root runs on.
    fn forget(&self, user: &str, name: &str) -> GridResult<String> {
        let root = self.names().forget(name, user)?;
        tracing::info!(user, name, root = %root, "forgot a name");
        Ok(format!("{name} forgotten\nvac:{root}\n"))
    }

    fn invite(&self, user: &str, invitee: &str, env: &str) -> GridResult<String> {
        if !self.users().exists(invitee)? {
            return Err(GridError::refused(format!(
                "no user {invitee} on this node"
            )));
        }
        let changed = self.save_within_quota(user, env)?;
        let score = self.cpus.invite(user, env, invitee)?;
        self.charge(user, changed)?;
        let name = self
            .names()
            .bind_unique(&format!("{env}+{invitee}"), &score, &[invitee])?;
        self.carry_working_set(user, env, &score);
        tracing::info!(user, env, invitee, name = %name, "invited");
        Ok(format!("{invitee} invited: {name}\nvac:{score}\n"))
    }

    /// A saved root starts as the root it was saved from did: it is given
    /// that root's working-set list, which its own starts then improve.
    /// A hint only, so a failure here is logged, never the save's.
    fn carry_working_set(&self, user: &str, env: &str, saved: &Score) {
        let Some(from) = self.cpus.root_of(user, env).filter(|r| r != saved) else {
            return;
        };
        let names = self.names();
        let carried = names
            .working_set(&from)
            .and_then(|list| list.map_or(Ok(false), |list| names.set_working_set(saved, &list)));
        if let Err(e) = carried {
            tracing::warn!(user, env, root = %saved, error = %e, "passing a working set on to a saved root");
        }
    }

    /// What saving `env` may add to the store, checked against `user`'s
    /// quota before anything is written: the bytes of its changed blocks,
    /// as its cpu node last reported them. (The few pointer and directory
    /// blocks a save rewrites above them are not counted; blocks the store
    /// already held are, so a save is never charged less than it adds by
    /// more than those.)
    fn save_within_quota(&self, user: &str, env: &str) -> GridResult<u64> {
        let changed = self
            .cpus
            .cache_use()
            .into_iter()
            .find(|(u, e, _, _)| u == user && e == env)
            .map_or(0, |(_, _, used, _)| used);
        let left = self.state.quotas().get(user)?.left();
        if changed > left {
            return Err(GridError::refused(format!(
                "over your quota: saving {env} may store {} and you have {} left; nothing was saved",
                human(changed),
                human(left)
            )));
        }
        Ok(changed)
    }

    /// Adds `bytes` an import or a save stored to what `user` has used.
    fn charge(&self, user: &str, bytes: u64) -> GridResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.state.quotas().update(user, |q| {
            q.used += bytes;
            Ok(())
        })
    }

    fn boom(&self, user: &str, env: &str) -> GridResult<String> {
        Ok(if self.cpus.boom(user, env)? {
            format!("{env} BOOMed\n")
        } else {
            format!("{env} is not running\n")
        })
    }

    /// `user`'s environments across the grid: this node's, then each
    /// peer's, marked with the storage node that placed them; peers out
    /// of reach said on stderr.
    fn status(&self, user: &str) -> Reply {
        let result = (|| {
            let mut out = self.cpus.status(user, true)?.text();
            let mut err = String::new();
            self.gather(user, "status", &mut out, &mut err);
            Ok::<_, GridError>((self.with_quota(user, out)?, err))
        })();
        match result {
            Ok((out, err)) => Reply {
                out,
                err,
                status: 0,
            },
            Err(e) => Reply::fail(e.to_string()),
        }
    }

    /// `user`'s jobs across the grid, as [`Node::status`] lists
    /// environments.
    fn grid_jobs(&self, user: &str) -> Reply {
        let mut out = match self.jobs_text(user, false) {
            Ok(out) => out,
            Err(e) => return Reply::fail(e.to_string()),
        };
        let mut err = String::new();
        self.gather(user, "jobs", &mut out, &mut err);
        if out.is_empty() {
            out = "no jobs\n".into();
        }
        Reply {
            out,
            err,
            status: 0,
        }
    }

    /// Adds each peer's answer to `line` (a listing) to `out`, each line
    /// marked with the peer; what went wrong to `err`.
    fn gather(&self, user: &str, line: &str, out: &mut String, err: &mut String) {
        self.gather_with(user, line, out, err, |_, _, _| {});
    }

    /// [`Node::gather`], telling `each` what every peer listed (None: it
    /// could not be asked, or refused) with `out` to add to.
    fn gather_with(
        &self,
        user: &str,
        line: &str,
        out: &mut String,
        err: &mut String,
        mut each: impl FnMut(&str, Option<&str>, &mut String),
    ) {
        let Some(peers) = self.peers() else {
            return;
        };
        for a in peers.ask_all(user, line, PEER_LOOKS) {
            match a.told {
                Ok(t) if t.status == 0 => {
                    let listed = String::from_utf8_lossy(&t.out);
                    for l in listed.lines() {
                        let _ = writeln!(out, "{l}\tthrough storage node {}", a.peer);
                    }
                    each(&a.peer, Some(&listed), out);
                }
                Ok(t) => {
                    let _ = writeln!(err, "storage node {}: {}", a.peer, t.err.trim_end());
                    each(&a.peer, None, out);
                }
                Err(why) => {
                    let _ = writeln!(
                        err,
                        "storage node {} is {why}: what it holds of yours is not listed",
                        a.peer,
                        why = if why.starts_with("out of reach") {
                            why
                        } else {
                            format!("out of reach ({why})")
                        }
                    );
                    each(&a.peer, None, out);
                }
            }
        }
    }

    /// The peer that answers `line` (a check) with success, if any.
    pub fn held_by_peer(&self, user: &str, line: &str) -> Option<String> {
        self.peers()?
            .first_done(user, line, PEER_LOOKS)
            .map(|(peer, _)| peer)
    }

    /// The peer that keeps `user`'s service `name`: by asking, else by the
    /// copies peers sent (one out of reach keeps what it kept).
    fn service_kept_by_peer(&self, user: &str, name: &str) -> Option<String> {
        let services = self.services().ok()?;
        let mut out_of_reach = Vec::new();
        for a in self
            .peers()?
            .ask_all(user, &format!("service ls {name}"), PEER_LOOKS)
        {
            match a.told {
                Ok(t) if t.status == 0 => return Some(a.peer),
                // It does not keep it: a copy saying otherwise is stale.
                Ok(t) if t.status == NOT_HERE => {
                    let _ = services.keep_copy(&a.peer, user, name, None);
                }
                _ => out_of_reach.push(a.peer),
            }
        }
        out_of_reach
            .into_iter()
            .find(|peer| services.copies(peer, user).iter().any(|(n, ..)| n == name))
    }

    /// `user`'s services across the grid, as [`Node::status`] lists
    /// environments.
    fn grid_services(&self, user: &str) -> Reply {
        let mut out: String = match self.services() {
            Ok(s) => s
                .of(user)
                .iter()
                .map(|s| services::directory::summary(s))
                .collect(),
            Err(e) => return Reply::fail(e.to_string()),
        };
        let mut err = String::new();
        if let Ok(services) = self.services() {
            self.gather_with(user, "service ls", &mut out, &mut err, |peer, listed, out| {
                match listed {
                    // What it keeps now is what its copies may say.
                    Some(listed) => {
                        let kept: Vec<&str> = listed
                            .lines()
                            .filter(|l| !l.starts_with('\t'))
                            .filter_map(|l| l.split('\t').next())
                            .collect();
                        for (name, ..) in services.copies(peer, user) {
                            if !kept.contains(&name.as_str()) {
                                let _ = services.keep_copy(peer, user, &name, None);
                            }
                        }
                    }
                    // What its last copies say, marked as such.
                    None => {
                        for (name, root, command, when) in services.copies(peer, user) {
                            let _ = writeln!(
                                out,
                                "{name}\t{root}\tkept by storage node {peer}, out of reach: as copied {}\t{command}",
                                status::ago(when)
                            );
                        }
                    }
                }
            });
        }
        Reply {
            out,
            err,
            status: 0,
        }
    }

    /// A status listing with the user's quota after it.
    fn with_quota(&self, user: &str, out: String) -> GridResult<String> {
        let mut out = if out.is_empty() {
            "no environments running\n".into()
        } else {
            out
        };
        let q = self.state.quotas().get(user)?;
        if let Some(limit) = q.limit {
            let _ = writeln!(
                out,
                "quota: {} of {} used by imports and saves",
                units::human(q.used),
                units::human(limit)
            );
        }
        Ok(out)
    }

    /// Free and total bytes of the file system holding the state
    /// directory (and the embedded store), if it can be asked.
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.state.root.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct we own from a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let unit = st.f_frsize as u64;
        Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
    }

    /// How many more environments could start now, on what is in reach.
    pub fn room(&self) -> usize {
        self.cpus.room()
    }

    /// Number of live environments.
    pub fn live(&self) -> usize {
        self.cpus.live()
    }

    pub fn counts(&self) -> EnvCounts {
        self.cpus.counts()
    }

    pub fn cache_use(&self) -> Vec<(String, String, u64, u64)> {
        self.cpus.cache_use()
    }

    /// The node is about to stop: its jobs' records say so now, before
    /// its listeners and logins close under their runs (which would
    /// otherwise take that for a failed command).
    pub fn stopping(&self) {
        if let Some(jobs) = &self.jobs {
            jobs.node_stopping();
        }
        if let Some(services) = &self.services {
            services.stop();
        }
    }

    /// Ends every live environment (daemon shutdown).
    pub fn shutdown(&self) {
        // First the jobs (if `stopping` was not called): their
        // environments are about to end under them.
        self.stopping();
        self.cpus.shutdown()
    }
}

/// Where a node's peers' asks are answered: the node, held weakly (the
/// replicator that holds this must not keep a stopped node alive).
pub struct Desk(pub std::sync::Weak<Node>);

impl replica::ask::Desk for Desk {
    fn here(&self, peer: &str, user: &str, line: &str) -> replica::ask::Told {
        match self.0.upgrade() {
            Some(node) => node.answer_peer(peer, user, line),
            None => replica::ask::Told {
                out: Vec::new(),
                err: "the node is stopping\n".into(),
                status: 1,
            },
        }
    }
}

/// A peer's ask answered with what came of it: its output, or its error.
fn told(result: GridResult<Vec<u8>>) -> replica::ask::Told {
    match result {
        Ok(out) => replica::ask::Told {
            out,
            err: String::new(),
            status: 0,
        },
        Err(e) => replica::ask::Told {
            out: Vec::new(),
            err: format!("{e}\n"),
            status: 1,
        },
    }
}

impl Node {
    /// A peer's ask: carried out as this node alone sees it.
    fn answer_peer(&self, peer: &str, user: &str, line: &str) -> replica::ask::Told {
        if line == collect::PINS_ASK {
            return told(self.pins_for(peer));
        }
        // A follower of a service's log through a peer: the piece from
        // FROM as it was after TRIMS trims; where that piece starts and
        // the trims now, in `err`.
        if let ["service-log-since", name, from, trims] =
            line.split_whitespace().collect::<Vec<_>>()[..]
        {
            let service = self.services.as_ref().and_then(|s| s.get(user, name));
            let (Some(service), Ok(from), Ok(trims)) = (service, from.parse(), trims.parse())
            else {
                return replica::ask::Told {
                    out: Vec::new(),
                    err: "not held here\n".into(),
                    status: NOT_HERE,
                };
            };
            let (from, now, out) = service.log_from(from, trims);
            return replica::ask::Told {
                out,
                err: format!("{from} {now}"),
                status: 0,
            };
        }
        // A peer's copy of a service record it keeps: taken only once the
        // root it names is bound here.
        if let Some(rest) = line
            .strip_prefix("service-copy ")
            .or(line.strip_prefix("service-forget "))
        {
            let copy = line.starts_with("service-copy ");
            let mut parts = rest.splitn(3, ' ');
            let (owner, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let text = parts.next();
            let kept = (|| {
                grid::names::check_node_name(owner)?;
                // A node sends copies of its own records only.
                if owner != peer {
                    return Err(GridError::refused(format!(
                        "storage node {peer} sent a copy of {owner}'s record"
                    )));
                }
                grid::names::check_user_name(user)?;
                check_score_name(name)?;
                if text.is_some_and(|t| t.len() > MAX_COPY) {
                    return Err(GridError::refused("a record of more than 64 KiB"));
                }
                let services = self.services()?;
                if !copy {
                    return services.keep_copy(owner, user, name, None);
                }
                let text = text.ok_or_else(|| GridError::refused("a copy without its record"))?;
                let record: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| GridError::refused(format!("a record that does not read: {e}")))?;
                let root = record.get("root").and_then(|r| r.as_str()).unwrap_or("");
                if self.names().lookup_for(root, user)?.is_none() {
                    return Err(GridError::refused(format!(
                        "its root {root} is not bound here yet"
                    )));
                }
                services.keep_copy(owner, user, name, Some(text))
            })();
            return told(kept.map(|()| Vec::new()));
        }
        // A follower of a job's log through a peer: its bytes as they
        // are, and whether the job has ended.
        if let ["logs-since", id, from] = line.split_whitespace().collect::<Vec<_>>()[..] {
            let from = from.parse::<u64>().unwrap_or(u64::MAX);
            let Some(record) = self.jobs.as_ref().and_then(|j| j.record(user, id).ok()) else {
                return replica::ask::Told {
                    out: Vec::new(),
                    err: "not held here\n".into(),
                    status: NOT_HERE,
                };
            };
            let ended = !record.state.active();
            return match self.jobs().and_then(|j| j.log(user, id, from)) {
                Ok(out) => replica::ask::Told {
                    out,
                    err: if ended { ENDED.into() } else { String::new() },
                    status: 0,
                },
                Err(e) => replica::ask::Told {
                    out: Vec::new(),
                    err: e.to_string(),
                    status: 1,
                },
            };
        }
        // Published and counted where the user asked, not here too.
        let reply = self.execute(user, line, Scope::Here);
        replica::ask::Told {
            out: reply.out.into_bytes(),
            err: reply.err,
            status: reply.status,
        }
    }
}

/// What a peer's `logs-since` says of a job that has ended.
pub(crate) const ENDED: &str = "ended";

/// A reply of several lines as one line, for the places that show one line
/// per event (the events hub, `USER.out`, the status page): the lines
/// trimmed and joined, so a spawn's event keeps the login that follows its
/// "log in with:".
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
