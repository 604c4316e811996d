//! Suspending idle environments and waking them at the next login (what
//! counts as idle, and the record kept of a suspended one: [`crate::idle`]).
//!
//! A suspend goes in an order that loses nothing: the login stops taking
//! connections (its port stays bound, so a login that comes now waits in
//! the port's queue); the tree is saved, its blocks durable, and only then
//! is the record written that names it as the resume point; only then do
//! the processes end; what they wrote meanwhile is saved again; then the
//! mount, cache and network go. A waker task holds the port: the first
//! connection respawns the environment from its resume point on the same
//! port and is served by its new login, as are those queued behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fossil::{CacheConfig, Fs};
use grid::error::{GridError, GridResult};
use grid::ssh_server::Stop;
use tokio::io::AsyncWriteExt as _;
use venti::Score;

use crate::{Env, Environments, Launch, LoginPort, OwnerKeys, Starting, end_env, fs_error, idle};

/// What a login to a woken environment is told first.
const WOKE_BANNER: &str = "colony: this environment was suspended while idle and woke for a login: its files are as they were, its processes started afresh.\r\n";

/// The cache of a suspended environment's tree opened to change it
/// (`invite` of a suspended environment).
const EDIT_CACHE: u64 = 16 << 20;

/// How long a wake or an edit waits for a suspend, another wake or edit of
/// the same environment to finish.
const TURN_WAIT: Duration = Duration::from_secs(30);

/// Where a suspended environment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Being suspended: its processes and mount are still ending.
    Suspending,
    /// Suspended, its waker waiting on its port.
    Asleep,
    /// Out for a wake or for a change to its resume point (`save`,
    /// `invite`); still listed, and still held against a spawn.
    Busy,
}

/// A suspended environment, or one being suspended or woken.
pub(crate) struct Sleeper {
    pub(crate) record: idle::Record,
    state: State,
    /// A boom came while it was not asleep: it is forgotten (or, if a wake
    /// made it run, ended) as soon as that is done.
    boomed: bool,
    /// Its login port, bound (none if it could not be bound again after
    /// a restart).
    listener: Option<Arc<tokio::net::TcpListener>>,
    /// Ends the task that waits on the port for the login that wakes it.
    waker: Option<tokio::sync::oneshot::Sender<()>>,
    keys: OwnerKeys,
    fetched_note: Option<fn(u64) -> String>,
}

type Key = (String, String);

/// What a wake needs of a suspended environment: its record, who may log
/// in, how its status tells of blocks fetched.
type Taken = (idle::Record, OwnerKeys, Option<fn(u64) -> String>);

/// Why a suspended environment could not be taken for a wake or an edit.
enum NotTaken {
    /// There is none (never was, or it was boomed or woken meanwhile).
    Gone,
    /// The login it would wake for is refused: the node is full, or shut
    /// down, or the environment stayed busy too long. Said to the login.
    Refused(String),
}

/// Looks for idle environments four times a second until `envs` goes.
pub(crate) fn watch(envs: &Arc<Environments>) {
    let me = Arc::downgrade(envs);
    let spawned = std::thread::Builder::new()
        .name("idle-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(envs) = me.upgrade() else { return };
                for key in envs.idle_ones(Instant::now()) {
                    let envs = envs.clone();
                    let _ = std::thread::Builder::new()
                        .name("suspend".into())
                        .spawn(move || envs.suspend(&key));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the idle watch: no environment will be suspended");
    }
}

impl Environments {
    pub(crate) fn sleepers(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Sleeper>> {
        self.sleepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn records_dir(&self) -> std::path::PathBuf {
        idle::records_dir(&self.state)
    }

    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The environments that have been idle for their idle time (each is
    /// looked at no more often than its idle time asks).
    fn idle_ones(&self, now: Instant) -> Vec<Key> {
        if self.closing() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (key, e) in self.envs().iter_mut() {
            if !e.may_sleep() || now < e.next_look {
                continue;
            }
            let (Some(idle), Some(door)) = (e.idle, e.door.as_ref()) else {
                continue;
            };
            // Woken by a connection nobody logged in on: back to sleep soon.
            let limit = if e.woken && !door.activity.logged_in_ever() {
                idle.min(idle::UNPROVEN_IDLE)
            } else {
                idle
            };
            e.next_look = now + idle::look_every(limit);
            let cpu = e.environment.as_ref().and_then(|x| x.cpu_used());
            let (open, left) = (door.activity.open(), door.activity.last_left());
            if e.clock.look(open, left, cpu, now) >= limit {
                due.push(key.clone());
            }
        }
        due
    }

    /// The record that would keep `e` suspended with `resume`.
    fn record_of(&self, user: &str, name: &str, e: &Env, resume: Score) -> idle::Record {
        idle::Record {
            user: user.to_string(),
            name: name.to_string(),
            root: e.root,
            resume,
            options: e.options.clone(),
            disk: e.disk.is_some(),
            keys: e.keys.to_lines(),
            port: e.port,
            since: idle::unix_now(),
            placed_by: e.placed_by.clone(),
        }
    }

    /// Suspends (user, name), if it still runs with no login open; see the
    /// module's comment for the order. A suspend that cannot save, or that
    /// a login comes to, leaves it running.
    pub(crate) fn suspend(&self, key: &Key) {
        let (user, name) = (key.0.as_str(), key.1.as_str());
        let started = Instant::now();
        let mut e = {
            let mut envs = self.envs();
            let _starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            let mut sleepers = self.sleepers();
            let open = |e: &Env| e.door.as_ref().is_some_and(|d| d.activity.in_use());
            if self.closing() || envs.get(key).is_none_or(open) {
                return;
            }
            let e = envs.remove(key).expect("just seen");
            sleepers.insert(
                key.clone(),
                Sleeper {
                    record: self.record_of(user, name, &e, e.fs.root_score()),
                    state: State::Suspending,
                    boomed: false,
                    listener: e.listener.clone(),
                    waker: None,
                    keys: e.keys.clone(),
                    fetched_note: e.fetched_note,
                },
            );
            e
        };
        // Its login takes no new connection (one that comes waits in the
        // port's queue); one accepted just before is counted by now.
        let paused = self.pause_door(&mut e);
        let saved = if !paused {
            Err("its login did not stop taking connections in time".to_string())
        } else if e.door.as_ref().is_some_and(|d| d.activity.in_use()) {
            Err("a login came as it was being suspended".to_string())
        } else {
            self.save_resume_point(user, name, &e)
        };
        let mut record = match saved {
            Ok(record) => record,
            Err(why) => {
                tracing::info!(user, env = name, why = %why, "an idle environment was not suspended; it runs on");
                return self.undo_suspend(key, e);
            }
        };
        tracing::info!(user, env = name, resume = %record.resume, ms = started.elapsed().as_millis() as u64, "suspending an idle environment: its resume point is kept, its processes end");
        if let Some(environment) = e.environment.take() {
            environment.stop();
        }
        // What the processes wrote meanwhile is kept too.
        match e.fs.save() {
            Ok(last) if last.score != record.resume => {
                let later = idle::Record {
                    resume: last.score,
                    ..record.clone()
                };
                match idle::keep(&self.records_dir(), &later) {
                    Ok(()) => record = later,
                    Err(err) => {
                        tracing::warn!(user, env = name, error = %err, "the last writes before a suspend were not kept")
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(user, env = name, error = %err, "the last writes before a suspend were not kept")
            }
        }
        let changed = e.fs.usage().dirty_blocks as u64 * e.fs.block_size() as u64;
        end_env(user, name, e);
        // Its cache and buffers were freed; hand the memory back to the
        // host rather than keep it in the allocator's free lists.
        // SAFETY: malloc_trim only releases free memory.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
        {
            let mut sleepers = self.sleepers();
            let Some(sleeper) = sleepers.get_mut(key) else {
                return;
            };
            if sleeper.boomed {
                sleepers.remove(key);
                idle::drop_record(&self.records_dir(), user, name);
                tracing::info!(
                    user,
                    env = name,
                    "environment ended (boomed while it was being suspended)"
                );
                return;
            }
            sleeper.record = record;
            sleeper.state = State::Asleep;
            if !self.closing() {
                sleeper.waker = sleeper.listener.clone().map(|l| self.start_waker(key, l));
            }
            tracing::info!(
                user,
                env = name,
                resume = %sleeper.record.resume,
                changed_bytes = changed,
                ms = started.elapsed().as_millis() as u64,
                "suspended an idle environment"
            );
        }
        self.changed();
    }

    /// Suspends (user, name) now, idle or not (a benchmark measures a
    /// suspend so); refused while a login is open, and for what may never
    /// sleep (a run, an environment with published ports).
    pub fn suspend_now(&self, user: &str, name: &str) -> GridResult<()> {
        let key = (user.to_string(), name.to_string());
        {
            let envs = self.envs();
            let e = envs
                .get(&key)
                .ok_or_else(|| GridError::refused(format!("{name} is not running for {user}")))?;
            if !e.can_sleep() {
                return Err(GridError::refused(format!(
                    "{name} cannot be suspended: it runs a job or publishes ports"
                )));
            }
            let open = e.door.as_ref().map_or(0, |d| d.activity.open());
            if open > 0 {
                return Err(GridError::refused(format!("{name} has {open} logins open")));
            }
        }
        self.suspend(&key);
        match self.sleepers().get(&key) {
            Some(s) if s.state == State::Asleep => Ok(()),
            _ => Err(GridError::failed(format!(
                "{name} was not suspended (a login came, or its save failed: see the node's log)"
            ))),
        }
    }

    /// Stops the login taking connections, leaving its sessions be (the
    /// port stays bound by the environment), and waits until it has; false
    /// if it did not in time (then it is ended, and the suspend does not go
    /// ahead: its sessions may not all be known).
    fn pause_door(&self, e: &mut Env) -> bool {
        if let Some(stop) = e.door_stop.take() {
            let _ = stop.send(Stop::Pause);
        }
        let Some(mut task) = e.door_task.take() else {
            return true;
        };
        let paused = self.runtime().block_on(async {
            let paused = tokio::time::timeout(Duration::from_secs(5), &mut task).await;
            if paused.is_err() {
                task.abort();
            }
            paused
        });
        match paused {
            Ok(Ok(sessions)) => {
                e.paused.extend(sessions);
                true
            }
            _ => false,
        }
    }

    /// Saves `e`'s tree (its blocks durable) and records it as the resume
    /// point.
    fn save_resume_point(&self, user: &str, name: &str, e: &Env) -> Result<idle::Record, String> {
        let saved = e.fs.save().map_err(|err| format!("saving: {err}"))?;
        let record = self.record_of(user, name, e, saved.score);
        idle::keep(&self.records_dir(), &record)
            .map_err(|err| format!("keeping its record: {err}"))?;
        Ok(record)
    }

    /// Puts `e` back as it was: running, its login open again (a boom that
    /// came meanwhile, or the node's shutdown, ends it instead).
    fn undo_suspend(&self, key: &Key, mut e: Env) {
        e.clock.reset(Instant::now());
        if let Some(door) = e.door.clone() {
            self.serve_door(&mut e, door, None);
        }
        let end = {
            let mut envs = self.envs();
            let _starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            let boomed = self.sleepers().remove(key).is_some_and(|s| s.boomed);
            if boomed || self.closing() {
                Some(e)
            } else {
                envs.insert(key.clone(), e);
                None
            }
        };
        if let Some(e) = end {
            end_env(&key.0, &key.1, e);
        }
    }

    /// Waits on a suspended environment's port for the login that wakes it.
    fn start_waker(
        &self,
        key: &Key,
        listener: Arc<tokio::net::TcpListener>,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (me, key) = (self.me.clone(), key.clone());
        self.runtime().spawn(async move {
            let woken_by = tokio::select! {
                _ = &mut stopped => return,
                accepted = link::listener::accept(&listener, "SSH") => accepted,
            };
            // This waker is done: one that did not wake it starts another.
            drop(stopped);
            let Some(envs) = me.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || envs.wake(&key, listener, woken_by)).await;
        });
        stop
    }

    /// Its waker again, if it is asleep and has none waiting (a wake that
    /// did not happen took the one it had).
    fn rewait(&self, key: &Key) {
        if self.closing() {
            return;
        }
        let mut sleepers = self.sleepers();
        if let Some(s) = sleepers.get_mut(key)
            && s.state == State::Asleep
            && s.waker.as_ref().is_none_or(|w| w.is_closed())
        {
            s.waker = s.listener.clone().map(|l| self.start_waker(key, l));
        }
    }

    /// Puts a sleeper taken for a wake or an edit back to sleep, waiting
    /// for the next login; or forgets it, if a boom came meanwhile.
    fn back_to_sleep(&self, key: &Key) {
        {
            let mut sleepers = self.sleepers();
            let Some(s) = sleepers.get_mut(key) else {
                return;
            };
            if s.boomed {
                let s = sleepers.remove(key).expect("just seen");
                if let Some(stop) = s.waker {
                    let _ = stop.send(());
                }
                idle::drop_record(&self.records_dir(), &key.0, &key.1);
                tracing::info!(
                    user = key.0,
                    env = key.1,
                    "a suspended environment was boomed"
                );
                return;
            }
            s.state = State::Asleep;
        }
        self.rewait(key);
    }

    /// Respawns (user, name) from its resume point on its kept port and
    /// serves `woken_by` there. If it cannot, the login is told why and the
    /// environment stays suspended, waiting for the next.
    fn wake(
        &self,
        key: &Key,
        listener: Arc<tokio::net::TcpListener>,
        woken_by: (tokio::net::TcpStream, std::net::SocketAddr),
    ) {
        let (user, name) = (key.0.as_str(), key.1.as_str());
        let started = Instant::now();
        let (record, keys, fetched_note) = match self.take_sleeper(key, true) {
            Ok(taken) => taken,
            Err(NotTaken::Gone) => return,
            Err(NotTaken::Refused(why)) => {
                self.runtime().spawn(refuse_login(woken_by.0, why));
                return self.rewait(key);
            }
        };
        let _starting = Starting(&self.starting, key.clone());
        let ready = self
            .store_of(&record.placed_by)
            .ok_or_else(|| {
                format!(
                    "{name} cannot wake yet: storage node {} is not reachable; try again shortly",
                    record.placed_by
                )
            })
            .and_then(|store| {
                crate::options::parse(&self.config, &record.options)
                    .map(|options| (store, options))
                    .map_err(|e| format!("{name} cannot wake on this node: {e}"))
            });
        let woke = match ready {
            Err(why) => {
                tracing::error!(user, env = name, why, "could not wake a suspended environment; it stays suspended");
                self.runtime().spawn(refuse_login(woken_by.0, why));
                Err(())
            }
            Ok((store, options)) => self
                .make_env(Launch {
                    user,
                    name,
                    root: record.root,
                    from: record.resume,
                    disk: record.disk,
                    words: record.options.clone(),
                    options,
                    keys,
                    run_key: None,
                    store,
                    fetched_note,
                    placed_by: &record.placed_by,
                    port: LoginPort::Kept {
                        listener,
                        port: record.port,
                        woken_by,
                    },
                    banner: Some(WOKE_BANNER.to_string()),
                })
                .map(drop)
                .map_err(|e| {
                    tracing::error!(user, env = name, error = %e, "could not wake a suspended environment; it stays suspended");
                }),
        };
        if woke.is_err() {
            return self.back_to_sleep(key);
        }
        // Running now: the sleeper goes, and its record, unless the node's
        // shutdown came meanwhile (then the record stays, for the next
        // start); a boom that came meanwhile ends it.
        let (boomed, closing, running) = {
            let mut envs = self.envs();
            let mut sleepers = self.sleepers();
            let boomed = sleepers.remove(key).is_some_and(|s| s.boomed);
            let closing = self.closing();
            let running = if boomed || closing {
                envs.remove(key)
            } else {
                None
            };
            (boomed, closing, running)
        };
        if boomed || !closing {
            idle::drop_record(&self.records_dir(), user, name);
        }
        if let Some(e) = running {
            end_env(user, name, e);
        } else if !boomed && !closing {
            tracing::info!(user, env = name, resume = %record.resume, ms = started.elapsed().as_millis() as u64, "woke a suspended environment for a login");
        }
        drop(_starting);
        self.changed();
    }

    /// Marks a suspended environment busy for a wake (then also counted
    /// against the limit, as starting) or an edit, once a suspend or
    /// another wake or edit of it has finished; what is needed to respawn
    /// it. The sleeper stays listed.
    fn take_sleeper(&self, key: &Key, for_wake: bool) -> Result<Taken, NotTaken> {
        let deadline = Instant::now() + TURN_WAIT;
        loop {
            {
                let envs = self.envs();
                let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
                let mut sleepers = self.sleepers();
                let Some(s) = sleepers.get_mut(key) else {
                    return Err(NotTaken::Gone);
                };
                if self.closing() {
                    return Err(NotTaken::Refused(format!(
                        "{} cannot wake now: the node is shutting down",
                        key.1
                    )));
                }
                if s.state == State::Asleep {
                    if for_wake {
                        if envs.len() + starting.len() >= self.config.spawn_max {
                            tracing::warn!(
                                user = key.0,
                                env = key.1,
                                "a login to a suspended environment was refused: the node is full"
                            );
                            return Err(NotTaken::Refused(format!(
                                "{} cannot wake now: this node runs as many environments as it may ({}); try again later",
                                key.1, self.config.spawn_max
                            )));
                        }
                        starting.insert(key.clone());
                    }
                    s.state = State::Busy;
                    return Ok((s.record.clone(), s.keys.clone(), s.fetched_note));
                }
            }
            if Instant::now() > deadline {
                return Err(NotTaken::Refused(format!(
                    "{} is busy (being suspended, woken or saved); try again",
                    key.1
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes a suspended environment's tree with `change` and makes the
    /// result its resume point, which is returned (`save`: no change).
    /// None if there is no suspended environment by that name (it may have
    /// woken meanwhile).
    pub(crate) fn edit_suspended(
        &self,
        user: &str,
        name: &str,
        change: impl FnOnce(&Fs) -> GridResult<()>,
    ) -> GridResult<Option<Score>> {
        let key = (user.to_string(), name.to_string());
        let record = match self.take_sleeper(&key, false) {
            Ok((record, _, _)) => record,
            Err(NotTaken::Gone) => return Ok(None),
            Err(NotTaken::Refused(why)) => return Err(GridError::refused(why)),
        };
        let edited = (|| {
            let store = self.store_of(&record.placed_by).ok_or_else(|| {
                GridError::failed("its storage node's store is not reachable yet")
            })?;
            let fs = Fs::open(
                store,
                record.resume,
                CacheConfig::Memory { bytes: EDIT_CACHE },
            )
            .map_err(fs_error)?;
            change(&fs)?;
            let score = fs.save().map_err(fs_error)?.score;
            if score != record.resume {
                let changed = idle::Record {
                    resume: score,
                    ..record.clone()
                };
                idle::keep(&self.records_dir(), &changed)
                    .map_err(|e| GridError::io("keeping a suspended environment's record", e))?;
                return Ok(Some(changed));
            }
            Ok(None)
        })();
        if let Ok(Some(changed)) = &edited
            && let Some(s) = self.sleepers().get_mut(&key)
        {
            s.record = changed.clone();
        }
        self.back_to_sleep(&key);
        edited.map(|c| Some(c.map_or(record.resume, |c| c.resume)))
    }

    /// Forgets a suspended environment (its resume point is left to the
    /// collector); one being suspended, woken or changed is forgotten (or
    /// ended) as soon as that is done. False if there is none.
    pub(crate) fn forget_suspended(&self, user: &str, name: &str) -> bool {
        let key = (user.to_string(), name.to_string());
        let mut sleepers = self.sleepers();
        let Some(sleeper) = sleepers.get_mut(&key) else {
            return false;
        };
        if sleeper.state != State::Asleep {
            sleeper.boomed = true;
            return true;
        }
        let sleeper = sleepers.remove(&key).expect("just seen");
        drop(sleepers);
        if let Some(stop) = sleeper.waker {
            let _ = stop.send(());
        }
        idle::drop_record(&self.records_dir(), user, name);
        tracing::info!(user, env = name, resume = %sleeper.record.resume, "a suspended environment was boomed");
        true
    }

    /// `user`'s suspended environments (those in `only`) as `status` tells
    /// them; one a wake has just made run is told as running.
    pub(crate) fn suspended_status(
        &self,
        envs: &HashMap<Key, Env>,
        user: &str,
        only: Option<&[String]>,
    ) -> Vec<control::EnvStatus> {
        let now = idle::unix_now();
        self.sleepers()
            .iter()
            .filter(|((u, n), _)| u == user && only.is_none_or(|o| o.contains(n)))
            .filter(|(key, _)| !envs.contains_key(key))
            .map(|((_, name), s)| {
                let r = &s.record;
                let network = match crate::options::parse(&self.config, &r.options) {
                    Ok(o) => self.network_text(&o.network, o.rootless, &[]),
                    Err(_) => "net as spawned".to_string(),
                };
                let (sleep, note) = match s.state {
                    State::Suspending => (control::Sleep::Suspending, None),
                    _ if s.listener.is_none() => (
                        control::Sleep::Suspended { secs: now.saturating_sub(r.since) },
                        Some(format!("its login port {} could not be bound again: boom it, or save it", r.port)),
                    ),
                    _ => (
                        control::Sleep::Suspended { secs: now.saturating_sub(r.since) },
                        Some("suspended while idle: its processes ended; the next login wakes it (files as they were, processes started afresh)".to_string()),
                    ),
                };
                control::EnvStatus {
                    name: name.clone(),
                    spawned_from: name.clone(),
                    root: r.root,
                    cache_kind: if r.disk { "disk" } else { "ram" }.into(),
                    cache_bytes: 0,
                    changed_bytes: 0,
                    login: format!("ssh -p {} {user}@{}", r.port, self.config.public_host),
                    uptime_secs: 0,
                    processes: 0,
                    network,
                    root_now: r.resume,
                    note,
                    sleep: Some(sleep),
                }
            })
            .collect()
    }

    /// The suspended environments (also those being suspended or woken,
    /// but not one a wake has made run: `envs` lists it), as
    /// [`Environments::running`] lists them; `suspended` only for those
    /// asleep.
    pub(crate) fn sleeping(&self, envs: &HashMap<Key, Env>) -> Vec<crate::Running> {
        self.sleepers()
            .iter()
            .filter(|(key, _)| !envs.contains_key(key))
            .map(|((user, name), s)| crate::Running {
                user: user.clone(),
                name: name.clone(),
                root: s.record.root,
                login: format!(
                    "ssh -p {} {user}@{}",
                    s.record.port, self.config.public_host
                ),
                placed_by: s.record.placed_by.clone(),
                suspended: s.state == State::Asleep,
            })
            .collect()
    }

    /// Stops listening for the suspended (node shutdown): their records
    /// stay, and the next start listens again. A suspend or wake still
    /// going keeps what it finishes for the next start.
    pub(crate) fn close_sleepers(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.sleepers().values_mut() {
            if let Some(stop) = s.waker.take() {
                let _ = stop.send(());
            }
            s.listener = None;
        }
    }

    /// Listens again for the suspended environments the node's state
    /// records (a restart).
    pub(crate) fn restore_sleepers(&self) {
        for record in idle::all(&self.records_dir()) {
            let key = (record.user.clone(), record.name.clone());
            let keys = match &record.keys {
                None => OwnerKeys::Registry(self.state.users()),
                Some(lines) => match OwnerKeys::parse(lines) {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::warn!(user = record.user, env = record.name, error = %e, "a suspended environment's record ignored");
                        continue;
                    }
                },
            };
            let listener =
                std::net::TcpListener::bind((self.config.env_listen.as_str(), record.port))
                    .map_err(|e| e.to_string())
                    .and_then(|l| self.adopt_listener(l).map_err(|e| e.to_string()));
            let listener = match listener {
                Ok(l) => Some(l),
                Err(why) => {
                    tracing::warn!(
                        user = record.user,
                        env = record.name,
                        port = record.port,
                        why,
                        "a suspended environment's login port could not be bound again"
                    );
                    None
                }
            };
            let waker = listener.clone().map(|l| self.start_waker(&key, l));
            tracing::info!(user = record.user, env = record.name, port = record.port, resume = %record.resume, "a suspended environment listens again");
            self.sleepers().insert(
                key,
                Sleeper {
                    record,
                    state: State::Asleep,
                    boomed: false,
                    listener,
                    waker,
                    keys,
                    fetched_note: None,
                },
            );
        }
    }
}

/// Tells a login that came while its environment could not wake why,
/// before the SSH version exchange (OpenSSH shows such lines when the
/// connection then closes).
async fn refuse_login(mut socket: tokio::net::TcpStream, why: String) {
    let _ = socket
        .write_all(format!("colony: {why}\r\n").as_bytes())
        .await;
    let _ = socket.shutdown().await;
}
