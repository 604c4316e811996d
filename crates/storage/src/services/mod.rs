//! Services (`service add …`): commands the grid keeps running. A service
//! is a record (`STATE/services/USER/NAME.json`, rewritten whole and
//! atomically, its output beside it in `NAME.log`) and as many *replicas* as it asks for, each a run (see
//! [`crate::run`]) that a keeper ([`keeper`]) starts again whenever it
//! ends: its command exited, its health check failed, its cpu node was
//! lost. Replicas go to distinct cpu nodes while there are enough; a
//! replica counts as up once its health check passes. `service update`
//! replaces them one at a time, each new one up before an old one goes.
//! Where every replica can be reached is the directory, `STATE/services.ndb`
//! ([`directory`]), rewritten at each change and told on the streams.
//!
//! A service's files are its environments': they last only as long as a
//! replica, and only `save` keeps them.
//!
//! A service is kept by one storage node, the one it was added through.
//! Its record travels to the other storage nodes as a copy
//! (`STATE/services/.copies/OWNER/USER/NAME.json`), taken by a peer only
//! once the root it names is bound there (never ahead of what it refers
//! to), so a peer can list it while its keeper is out of reach.

pub mod directory;
pub mod keeper;
pub mod spec;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use grid::error::{GridError, GridResult};
use serde_json::{Value, json};

use crate::Node;
pub use keeper::ReplicaRun;
pub use spec::{Health, Spec};

/// Services a user may have on a node.
pub const MAX_SERVICES: usize = 16;
/// The most output a service keeps; past it the older half goes.
pub const MAX_LOG: u64 = 8 << 20;

/// Where a replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for its turn or its environment.
    Starting,
    /// Its environment runs; its health check has not passed yet.
    Checking,
    /// Its health check passed (or it has none and its command runs).
    Up,
    /// Its run ended (why), and it starts again at `at`.
    Restarting { why: String, at: SystemTime },
}

impl State {
    fn word(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Checking => "checking",
            State::Up => "up",
            State::Restarting { .. } => "restarting",
        }
    }
}

/// Where a replica's environment is and how to reach its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub env: String,
    pub node: String,
    /// (environment port, host, node port), for each published port.
    pub ports: Vec<(u16, String, u16)>,
}

/// One of a service's replicas.
pub struct Replica {
    /// Its number within the service (`web.0`, `web.1`, …; a rollout's new
    /// ones take fresh numbers).
    pub number: u32,
    /// The root it runs (a rollout's new replicas run the new one).
    pub root: String,
    state: Mutex<State>,
    placed: Mutex<Option<Placed>>,
    /// The cpu node its current start was sent to, until it is placed.
    aimed: Mutex<Option<String>>,
    /// Told when its state changes.
    pub changed: tokio::sync::Notify,
    /// Set when it is to end for good (a rollout retired it, or the
    /// service was removed).
    retired: AtomicBool,
    /// Ends its current run.
    cancel: Mutex<Arc<tokio::sync::Notify>>,
    /// Times its run ended and was started again.
    pub restarts: AtomicU32,
}

impl Replica {
    fn new(number: u32, root: String) -> Arc<Replica> {
        Arc::new(Replica {
            number,
            root,
            state: Mutex::new(State::Starting),
            placed: Mutex::default(),
            aimed: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            retired: AtomicBool::new(false),
            cancel: Mutex::new(Arc::default()),
            restarts: AtomicU32::new(0),
        })
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, state: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.changed.notify_waiters();
    }

    pub fn placed(&self) -> Option<Placed> {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Ends it for good: its current run is cancelled, and it is not
    /// started again.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify_one();
        self.changed.notify_waiters();
    }
}

/// A service being kept.
pub struct Service {
    pub user: String,
    pub name: String,
    spec: Mutex<Spec>,
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// Held while a replica chooses its cpu node.
    placing: Mutex<()>,
    next_number: AtomicU32,
    /// What the last rollout came to, if it stopped.
    note: Mutex<Option<String>>,
    /// Ended: its keepers end (the node stops, or `rm`) …
    gone: AtomicBool,
    /// … and, by `rm`, its record and log are gone too (nothing writes
    /// them again).
    removed: AtomicBool,
    /// One writer of its record at a time; `rm` takes it too.
    writing: Mutex<()>,
    log: Mutex<std::fs::File>,
    log_path: PathBuf,
    /// Times its log was trimmed (a follower reads it again from 0).
    trims: AtomicU32,
    services: std::sync::Weak<Services>,
}

impl Service {
    pub fn spec(&self) -> Spec {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Appends to its log, keeping at most [`MAX_LOG`] (the older half
    /// goes when it is reached).
    pub fn log(&self, data: &[u8]) {
        let mut file = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // Removed: its file is gone, and a trim would make it again.
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size + data.len() as u64 > MAX_LOG {
            let kept = std::fs::read(&self.log_path)
                .map(|all| all[all.len() / 2..].to_vec())
                .unwrap_or_default();
            let fresh = std::fs::File::create(&self.log_path).and_then(|mut f| {
                f.write_all(b"[the older half of this log was dropped]\n")?;
                f.write_all(&kept)?;
                Ok(f)
            });
            match fresh {
                Ok(f) => {
                    *file = f;
                    self.trims.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(service = %self.name, error = %e, "trimming a service's log")
                }
            }
        }
        let data = &data[..data.len().min(MAX_LOG as usize / 2)];
        let _ = file.write_all(data);
    }

    /// Its log from byte `from` on, as it was after `trims` trims (at
    /// most 1 MiB of it): where that piece starts (0 if the log was
    /// trimmed since), the trims so far, and its bytes.
    pub fn log_from(&self, from: u64, trims: u32) -> (u64, u32, Vec<u8>) {
        use std::io::{Read, Seek, SeekFrom};
        // Under the writer's lock: a trim is not half done.
        let _writing = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.trims.load(Ordering::SeqCst);
        let from = if now == trims { from } else { 0 };
        let Ok(mut f) = std::fs::File::open(&self.log_path) else {
            return (from, now, Vec::new());
        };
        let mut data = Vec::new();
        let _ = f
            .seek(SeekFrom::Start(from))
            .and_then(|_| f.take(1 << 20).read_to_end(&mut data));
        (from, now, data)
    }

    /// Says `text` in its log and on the streams.
    pub fn tell(&self, node: &Node, text: &str) {
        self.log(format!("service: {text}\n").as_bytes());
        node.service_event(&self.user, &format!("{} {text}", self.name));
    }

    /// Writes its record and the directory again. (Also once the node
    /// stops: an environment placed meanwhile is recorded, so the next run
    /// of the node ends it. Never after `rm`.)
    pub fn changed(&self) {
        if let Some(services) = self.services.upgrade() {
            {
                let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
                if !self.removed.load(Ordering::SeqCst) {
                    match services.write(self) {
                        Ok(()) => services.unshared(&self.user, &self.name),
                        Err(e) => {
                            tracing::warn!(service = %self.name, error = %e, "writing a service's record")
                        }
                    }
                }
            }
            services.publish();
        }
    }

    /// All of its log (under the writer's lock: never half trimmed).
    pub fn whole_log(&self) -> Vec<u8> {
        let _writing = self.log.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::read(&self.log_path).unwrap_or_default()
    }

    /// Adds a replica of `root` and starts its keeper.
    fn add_replica(self: &Arc<Self>, node: &Arc<Node>, root: String) -> Arc<Replica> {
        let number = self.next_number.fetch_add(1, Ordering::SeqCst);
        let replica = Replica::new(number, root);
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(replica.clone());
        keeper::start(node.clone(), self.clone(), replica.clone());
        replica
    }

    /// Takes a retired replica out of the list.
    fn drop_replica(&self, replica: &Arc<Replica>) {
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| !Arc::ptr_eq(r, replica));
    }

    fn to_json(&self) -> Value {
        let spec = self.spec();
        let envs: Vec<Value> = self
            .replicas()
            .iter()
            .filter_map(|r| r.placed())
            .map(|p| json!({"env": p.env, "node": p.node}))
            .collect();
        json!({
            "user": self.user, "name": self.name, "line": spec.line,
            "root": spec.root, "note": *self.note.lock().unwrap_or_else(|p| p.into_inner()),
            "envs": envs,
        })
    }
}

/// The services of a node.
pub struct Services {
    dir: PathBuf,
    /// The directory of every replica's address.
    pub directory: PathBuf,
    kept: Mutex<HashMap<(String, String), Arc<Service>>>,
    /// One writer of the directory at a time.
    publishing: Mutex<()>,
    /// Records changed since they were last copied to every peer.
    unshared: Mutex<std::collections::HashSet<(String, String)>>,
    /// Told when a record changes.
    pub share: tokio::sync::Notify,
}

impl Services {
    /// The services whose records are in `dir`; the directory beside it.
    pub fn open(dir: PathBuf, directory: PathBuf) -> GridResult<Arc<Services>> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| GridError::io(format!("making {}", dir.display()), e))?;
        Ok(Arc::new(Services {
            dir,
            directory,
            kept: Mutex::default(),
            publishing: Mutex::default(),
            unshared: Mutex::default(),
            share: tokio::sync::Notify::new(),
        }))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Service>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user`'s service `name`.
    pub fn get(&self, user: &str, name: &str) -> Option<Arc<Service>> {
        self.kept()
            .get(&(user.to_string(), name.to_string()))
            .cloned()
    }

    /// `user`'s services, by name.
    pub fn of(&self, user: &str) -> Vec<Arc<Service>> {
        let mut mine: Vec<_> = self
            .kept()
            .values()
            .filter(|s| s.user == user)
            .cloned()
            .collect();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        mine
    }

    fn record_path(&self, user: &str, name: &str) -> PathBuf {
        self.dir.join(user).join(format!("{name}.json"))
    }

    fn write(&self, service: &Service) -> GridResult<()> {
        let path = self.record_path(&service.user, &service.name);
        let tmp = self
            .dir
            .join(&service.user)
            .join(format!(".{}.new", service.name));
        let text = serde_json::to_vec(&service.to_json()).expect("a JSON value encodes");
        // Durable, whole or not at all: what a restart keeps again.
        (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(self.dir.join(&service.user))?.sync_all()
        })()
        .map_err(|e| GridError::io(format!("writing {}", path.display()), e))
    }

    /// Starts keeping `spec` for `user`: its record written, its replicas'
    /// keepers started.
    pub fn add(self: &Arc<Self>, node: &Arc<Node>, user: &str, spec: Spec) -> GridResult<()> {
        let mut kept = self.kept();
        let key = (user.to_string(), spec.name.clone());
        if kept.contains_key(&key) {
            return Err(GridError::refused(format!(
                "you have a service {} already: service update {} ROOT, or service rm {} first",
                spec.name, spec.name, spec.name
            )));
        }
        let mine: Vec<&Arc<Service>> = kept.values().filter(|s| s.user == user).collect();
        if mine.len() >= MAX_SERVICES {
            return Err(GridError::refused(format!(
                "you have {MAX_SERVICES} services, the most you may"
            )));
        }
        let replicas: u32 = mine.iter().map(|s| s.spec().replicas).sum();
        if replicas + spec.replicas > spec::MAX_REPLICAS {
            return Err(GridError::refused(format!(
                "your services have {replicas} replicas; {} more would pass the {} you may have (of the {} environments you may run at once, one is kept for a rolling update's new replica)",
                spec.replicas,
                spec::MAX_REPLICAS,
                crate::queue::MAX_RUNNING
            )));
        }
        let service = self.make(user, spec, None)?;
        self.write(&service)?;
        kept.insert(key, service.clone());
        drop(kept);
        service.tell(
            node,
            &format!(
                "added: {} replicas of {}",
                service.spec().replicas,
                service.spec().root
            ),
        );
        self.start(node, &service);
        Ok(())
    }

    fn make(
        self: &Arc<Self>,
        user: &str,
        spec: Spec,
        note: Option<String>,
    ) -> GridResult<Arc<Service>> {
        let mine = self.dir.join(user);
        std::fs::create_dir_all(&mine)
            .map_err(|e| GridError::io(format!("making {}", mine.display()), e))?;
        let log_path = mine.join(format!("{}.log", spec.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| GridError::io(format!("opening {}", log_path.display()), e))?;
        Ok(Arc::new(Service {
            user: user.to_string(),
            name: spec.name.clone(),
            spec: Mutex::new(spec),
            replicas: Mutex::default(),
            placing: Mutex::default(),
            next_number: AtomicU32::new(0),
            note: Mutex::new(note),
            gone: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            writing: Mutex::default(),
            log: Mutex::new(log),
            log_path,
            trims: AtomicU32::new(0),
            services: Arc::downgrade(self),
        }))
    }

    fn start(&self, node: &Arc<Node>, service: &Arc<Service>) {
        let spec = service.spec();
        for _ in 0..spec.replicas {
            service.add_replica(node, spec.root.clone());
        }
        service.changed();
    }

    /// Stops keeping `user`'s service `name`: its replicas end.
    pub fn remove(&self, node: &Node, user: &str, name: &str) -> GridResult<String> {
        let Some(service) = self.kept().remove(&(user.to_string(), name.to_string())) else {
            return Err(GridError::refused(format!("no service {name} of yours")));
        };
        service.tell(node, "removed");
        let gone = {
            let _one = service.writing.lock().unwrap_or_else(|p| p.into_inner());
            let _log = service.log.lock().unwrap_or_else(|p| p.into_inner());
            service.gone.store(true, Ordering::SeqCst);
            service.removed.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&service.log_path);
            match std::fs::remove_file(self.record_path(user, name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        for r in service.replicas() {
            r.retire();
        }
        self.publish();
        self.unshared(user, name);
        gone.map_err(|e| {
            GridError::io(
                format!("{name}'s replicas are ending, but its record could not be removed (a restart would keep it again)"),
                e,
            )
        })?;
        Ok(format!("{name} removed; its replicas are ending\n"))
    }

    /// The services a previous run of the node kept, kept again; the
    /// environments their replicas ran in then, to end.
    pub fn resume(self: &Arc<Self>, node: &Arc<Node>) -> Vec<(String, String, Option<String>)> {
        let mut stale = Vec::new();
        let records = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|user| std::fs::read_dir(user.path()).ok())
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".json") && !name.starts_with('.')
            });
        for entry in records {
            let record = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let Some(record) = record else {
                tracing::warn!(file = %entry.path().display(), "an unreadable service record; skipped");
                continue;
            };
            let text = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(user), Some(line)) = (text("user"), text("line")) else {
                tracing::warn!(file = %entry.path().display(), "a service record without its user or line; skipped");
                continue;
            };
            for e in record
                .get("envs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(env) = e.get("env").and_then(Value::as_str) {
                    let on = e.get("node").and_then(Value::as_str).map(str::to_string);
                    stale.push((user.clone(), env.to_string(), on));
                }
            }
            let spec = match Spec::parse(&line) {
                Ok(mut spec) => {
                    // The root it last rolled out to.
                    if let Some(root) = text("root") {
                        spec.root = root;
                    }
                    spec
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "a service record whose line no longer reads; skipped");
                    continue;
                }
            };
            // A rollout the node stopped during is not going on any more.
            let note = text("note").filter(|n| !n.starts_with("rolling out"));
            let service = match self.make(&user, spec, note) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "resuming a service");
                    continue;
                }
            };
            self.kept()
                .insert((user.clone(), service.name.clone()), service.clone());
            service.tell(node, "kept again: its node restarted");
            self.start(node, &service);
        }
        stale
    }

    /// Marks `user`'s `name` for copying to the peers.
    pub fn unshared(&self, user: &str, name: &str) {
        self.unshared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((user.to_string(), name.to_string()));
        self.share.notify_one();
    }

    /// The records to copy to the peers (and forgets them: a caller that
    /// fails marks them again).
    pub fn take_unshared(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.unshared.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// `user`'s record of `name` as its text, if it is kept here.
    pub fn record_text(&self, user: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.record_path(user, name)).ok()
    }

    fn copy_path(&self, owner: &str, user: &str, name: &str) -> PathBuf {
        self.dir
            .join(".copies")
            .join(owner)
            .join(user)
            .join(format!("{name}.json"))
    }

    /// Keeps (or, with None, drops) the copy of `owner`'s record of
    /// `user`'s `name`.
    pub fn keep_copy(
        &self,
        owner: &str,
        user: &str,
        name: &str,
        text: Option<&str>,
    ) -> GridResult<()> {
        let path = self.copy_path(owner, user, name);
        let Some(text) = text else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(GridError::io(format!("removing {}", path.display()), e))
                }
                _ => Ok(()),
            };
        };
        let dir = path.parent().expect("a copy's path has a directory");
        // Two copies of one record may be written at once (an ask that
        // timed out still being carried out): a temporary file each.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tmp = dir.join(format!(
            ".{name}.{}.new",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| GridError::io(format!("writing {}", path.display()), e))
    }

    /// The copies `owner` sent of `user`'s services: (name, root, command,
    /// when copied), by name.
    pub fn copies(&self, owner: &str, user: &str) -> Vec<(String, String, String, SystemTime)> {
        let dir = self.dir.join(".copies").join(owner).join(user);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json").filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let Some(record) = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                continue;
            };
            let text = |k: &str| {
                record
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let command = Spec::parse(&text("line"))
                .map(|s| s.command)
                .unwrap_or_default();
            let when = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((name.to_string(), text("root"), command, when));
        }
        out.sort();
        out
    }

    /// Every service ends (the node stops); their records stay.
    pub fn stop(&self) {
        for service in self.kept().values() {
            service.gone.store(true, Ordering::SeqCst);
            for r in service.replicas() {
                r.retire();
            }
        }
    }

    /// Writes the directory again.
    pub fn publish(&self) {
        let _one = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let services: Vec<Arc<Service>> = self.kept().values().cloned().collect();
        let text = directory::render(&services);
        let tmp = self.directory.with_extension("ndb.new");
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.directory))
        {
            tracing::warn!(file = %self.directory.display(), error = %e, "writing the services' directory");
        }
    }
}

/// The front door's `service` commands.
pub fn command(node: &Arc<Node>, user: &str, line: &str, words: &[&str]) -> GridResult<String> {
    let services = node.services()?;
    match words {
        ["service", "add", ..] => {
            let spec = Spec::parse(line).map_err(GridError::refused)?;
            if node.names().lookup_for(&spec.root, user)?.is_none() {
                return Err(GridError::refused(format!(
                    "{} not found for {user}",
                    spec.root
                )));
            }
            let name = spec.name.clone();
            services.add(node, user, spec)?;
            Ok(format!(
                "{name} added; service ls {name} says where its replicas are\n"
            ))
        }
        ["service", "ls"] => Ok(services
            .of(user)
            .iter()
            .map(|s| directory::summary(s))
            .collect()),
        ["service", "ls", name] => match services.get(user, name) {
            Some(s) => Ok(directory::render(&[s])),
            None => Err(GridError::refused(format!("no service {name} of yours"))),
        },
        ["service", "rm", name] => services.remove(node, user, name),
        ["service", "logs", "-f", _] => Err(GridError::refused(
            "service logs -f follows a service's log, one a session: ssh -p 16999 you@node service logs -f NAME",
        )),
        ["service", "logs", name] => match services.get(user, name) {
            Some(s) => Ok(String::from_utf8_lossy(&s.whole_log()).into_owned()),
            None => Err(GridError::refused(format!("no service {name} of yours"))),
        },
        ["service", "update", name, root] => {
            let Some(service) = services.get(user, name) else {
                return Err(GridError::refused(format!("no service {name} of yours")));
            };
            grid::names::check_score_name(root)?;
            if node.names().lookup_for(root, user)?.is_none() {
                return Err(GridError::refused(format!("{root} not found for {user}")));
            }
            keeper::roll_out(node.clone(), service, root.to_string())?;
            Ok(format!(
                "{name}: rolling out {root}, a replica at a time; service ls says how it goes\n"
            ))
        }
        _ => Err(GridError::refused(format!("usage: {}", spec::USAGE))),
    }
}
