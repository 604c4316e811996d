//! Detached jobs (`run -d`): a run the session does not wait for. Each job
//! is a record in `STATE/jobs/ID` (JSON, rewritten whole and atomically at
//! each change) and its output, stdout and stderr as they came, in
//! `STATE/jobs/ID.log`, at most [`MAX_LOG`] bytes, and a user's logs
//! together at most [`MAX_USER_LOGS`] (the oldest ended jobs go to make
//! room; past that the rest is counted, and the log says how much was
//! left out). `jobs`, `logs` and
//! `cancel` read and act on them. A job keeps the line it was asked with,
//! so a node that restarts runs its queued jobs still, and runs again
//! those it was running while their `retries=` last (at least once: a job
//! lost with its node may have done some or all of its work); the rest it
//! calls lost.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use grid::error::{GridError, GridResult};
use serde_json::{Value, json};

/// The most output a job keeps.
pub const MAX_LOG: u64 = 8 << 20;
/// Jobs a user may have queued or running at once (how many run at once
/// is the queue's: [`crate::queue::MAX_RUNNING`]).
pub const MAX_ACTIVE: usize = 256;
/// Ended jobs' records and logs kept for a user; older ones go.
pub const MAX_KEPT: usize = 200;
/// The bytes of job logs a user may have on the node, over all their jobs
/// (without it, 456 jobs of 8 MiB each).
pub const MAX_USER_LOGS: u64 = 256 << 20;

/// The block size of a log kept in the block store (vac's).
const LOG_BLOCK: u32 = 8192;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its node stopped or died while it ran.
    Lost,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Lost => "lost",
        }
    }

    fn from_word(word: &str) -> Option<State> {
        [
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
            State::Lost,
        ]
        .into_iter()
        .find(|s| s.word() == word)
    }

    pub fn active(self) -> bool {
        matches!(self, State::Queued | State::Running)
    }
}

/// A job as `jobs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub user: String,
    pub root: String,
    pub command: String,
    pub state: State,
    /// The environment it runs in, once started.
    pub env: Option<String>,
    /// The cpu node that environment is on.
    pub node: Option<String>,
    pub exit: Option<u32>,
    /// Unix seconds.
    pub submitted: u64,
    /// Unix microseconds at submission: the order of a user's jobs.
    pub order: u64,
    pub started: Option<u64>,
    pub ended: Option<u64>,
    pub saved: Option<String>,
    /// Why it failed, if it did before its command ended.
    pub why: Option<String>,
    /// The `run` line it was asked with (what a restart runs again).
    pub line: Option<String>,
    /// Its `COLONY_TASK`, one of a `count=`.
    pub task: Option<u32>,
    /// Times its environment started.
    pub tries: u32,
    /// Times it may run again after a loss.
    pub retries: u32,
    /// Once it ended: the score of the block store's entry block of its
    /// output (see [`Jobs::keep_logs_in`]) …
    pub log: Option<String>,
    /// … and how many bytes that output is (still charged to its user's
    /// budget of logs).
    pub log_size: Option<u64>,
}

/// Refuses unless a user whose records are `mine` may add `more` jobs to
/// those they have queued or running.
fn room_among(mine: &[Record], more: usize) -> GridResult<()> {
    let active = mine.iter().filter(|r| r.state.active()).count();
    if active + more > MAX_ACTIVE {
        return Err(GridError::refused(format!(
            "you have {active} jobs queued or running; {more} more would pass the {MAX_ACTIVE} you may"
        )));
    }
    Ok(())
}

/// An environment a job's try ran in before its node restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleEnv {
    pub user: String,
    pub env: String,
    /// The cpu node it ran on, if the record says.
    pub node: Option<String>,
}

/// What a new job is.
pub struct Asked {
    pub root: String,
    pub command: String,
    pub line: String,
    pub task: Option<u32>,
    pub retries: u32,
}

impl Record {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "user": self.user, "root": self.root,
            "command": self.command, "state": self.state.word(), "env": self.env,
            "node": self.node,
            "exit": self.exit, "submitted": self.submitted, "order": self.order, "started": self.started,
            "ended": self.ended, "saved": self.saved, "why": self.why,
            "line": self.line, "task": self.task, "tries": self.tries,
            "retries": self.retries, "log": self.log, "log_size": self.log_size,
        })
    }

    fn from_json(v: &Value) -> Option<Record> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let number = |k: &str| v.get(k).and_then(Value::as_u64);
        Some(Record {
            id: text("id")?,
            user: text("user")?,
            root: text("root")?,
            command: text("command")?,
            state: State::from_word(v.get("state")?.as_str()?)?,
            env: text("env"),
            node: text("node"),
            exit: number("exit").and_then(|n| u32::try_from(n).ok()),
            submitted: number("submitted")?,
            order: number("order").unwrap_or(0),
            started: number("started"),
            ended: number("ended"),
            saved: text("saved"),
            why: text("why"),
            line: text("line"),
            task: number("task").and_then(|n| u32::try_from(n).ok()),
            tries: number("tries")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            retries: number("retries")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            log: text("log"),
            log_size: number("log_size"),
        })
    }

    /// One line of `jobs`.
    pub fn line(&self, now: u64) -> String {
        let exit = self.exit.map_or("-".to_string(), |e| e.to_string());
        let took = match (self.started, self.ended) {
            (Some(s), Some(e)) => format!("{}s", e.saturating_sub(s)),
            (Some(s), None) => format!("{}s so far", now.saturating_sub(s)),
            _ => "-".into(),
        };
        let started = self.started.map_or("-".to_string(), clock);
        let on = self.node.as_deref().unwrap_or("-");
        let mut line = format!(
            "{}\t{}\t{}\ton {on}\tstarted {started}\texit {exit}\t{took}\t{}",
            self.id,
            self.state.word(),
            self.root,
            self.command
        );
        if let Some(task) = self.task {
            line.push_str(&format!("\ttask {task}"));
        }
        if self.tries > 1 {
            line.push_str(&format!("\ttry {}", self.tries));
        }
        if let Some(saved) = &self.saved {
            line.push_str(&format!("\tsaved {saved}"));
        }
        if let Some(why) = &self.why {
            line.push_str(&format!("\t({why})"));
        }
        line
    }
}

/// Unix seconds as the time of day they were, UTC (`13:40:02`).
fn clock(secs: u64) -> String {
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The jobs of a node.
pub struct Jobs {
    dir: PathBuf,
    /// Set when the node stops: what ends after it is lost, not failed.
    stopping: std::sync::atomic::AtomicBool,
    /// The jobs running here: how to cancel each.
    live: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// One writer of records at a time.
    writing: Mutex<()>,
    /// What [`Jobs::open`] found to run again, and the environments its
    /// jobs' last tries ran in, to end.
    resumable: Mutex<(Vec<Arc<Running>>, Vec<StaleEnv>)>,
    /// Bytes of each user's logs on disk, and the most they may be.
    log_bytes: Mutex<HashMap<String, u64>>,
    log_budget: u64,
    /// Where an ended job's output is kept (its file then goes).
    store: std::sync::OnceLock<Arc<dyn venti::BlockStore>>,
}

/// A running job's record whose node stopped: queued to run again while
/// its retries last (true), else lost (false).
fn stopped_by_loss(r: &mut Record) -> bool {
    if r.tries <= r.retries {
        r.state = State::Queued;
        r.why = Some(format!(
            "its node stopped during try {}; run again",
            r.tries
        ));
        true
    } else {
        r.state = State::Lost;
        r.ended = Some(now());
        r.why = Some("the node stopped while it ran".into());
        false
    }
}

impl Jobs {
    /// The jobs in `dir`. Of those a previous run of the node left
    /// active, the queued and those it may run again wait in
    /// [`Jobs::resumable`]; the rest are lost.
    pub fn open(dir: PathBuf) -> GridResult<Arc<Jobs>> {
        Jobs::open_with_budget(dir, MAX_USER_LOGS)
    }

    /// [`Jobs::open`] with `budget` bytes of logs per user.
    pub fn open_with_budget(dir: PathBuf, budget: u64) -> GridResult<Arc<Jobs>> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| GridError::io(format!("making {}", dir.display()), e))?;
        let jobs = Arc::new(Jobs {
            dir,
            stopping: Default::default(),
            live: Mutex::default(),
            writing: Mutex::default(),
            resumable: Mutex::default(),
            log_bytes: Mutex::default(),
            log_budget: budget,
            store: Default::default(),
        });
        let (mut resumable, mut stale_envs) = (Vec::new(), Vec::new());
        for mut r in jobs.all()? {
            *jobs
                .log_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(r.user.clone())
                .or_default() += jobs.kept_log(&r);
            if !r.state.active() {
                continue;
            }
            // What its last try ran in, if anything, is to end (a storage
            // node's restart leaves its cpu nodes' environments running).
            // (A node that stopped in order already queued it again.)
            if let Some(env) = &r.env {
                stale_envs.push(StaleEnv {
                    user: r.user.clone(),
                    env: env.clone(),
                    node: r.node.clone(),
                });
            }
            if r.state == State::Running && !stopped_by_loss(&mut r) {
                jobs.write(&r)?;
                continue;
            }
            r.env = None;
            if r.line.is_none() {
                r.state = State::Lost;
                r.ended = Some(now());
                r.why = Some("the node stopped before it ran".into());
                jobs.write(&r)?;
                continue;
            }
            jobs.write(&r)?;
            resumable.push(jobs.resume(r)?);
        }
        *jobs.resumable.lock().unwrap_or_else(|p| p.into_inner()) = (resumable, stale_envs);
        Ok(jobs)
    }

    /// The jobs to run again after a restart, and the environments the
    /// last tries of the jobs that were running ran in; once.
    pub fn resumable(&self) -> (Vec<Arc<Running>>, Vec<StaleEnv>) {
        std::mem::take(&mut *self.resumable.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A handle for a job read back from its record.
    fn resume(self: &Arc<Self>, record: Record) -> GridResult<Arc<Running>> {
        let path = self.dir.join(format!("{}.log", record.id));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| GridError::io(format!("opening {}", path.display()), e))?;
        let kept = file.metadata().map(|m| m.len()).unwrap_or(0);
        let cancel = Arc::new(tokio::sync::Notify::new());
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), cancel.clone());
        Ok(Arc::new(Running {
            jobs: self.clone(),
            record: Mutex::new(record),
            log: Mutex::new(Log {
                file,
                kept,
                left_out: 0,
                no_room: false,
            }),
            cancel,
        }))
    }

    fn all(&self) -> GridResult<Vec<Record>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| GridError::io(format!("reading {}", self.dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".log") || name.starts_with('.') {
                continue;
            }
            let parsed = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| Record::from_json(&v));
            match parsed {
                Some(r) => out.push(r),
                None => {
                    tracing::warn!(file = %entry.path().display(), "an unreadable job record; skipped")
                }
            }
        }
        out.sort_by(|a, b| (a.submitted, a.order, &a.id).cmp(&(b.submitted, b.order, &b.id)));
        Ok(out)
    }

    fn write(&self, r: &Record) -> GridResult<()> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.write_held(r)
    }

    /// [`Jobs::write`] by whoever holds `writing`.
    fn write_held(&self, r: &Record) -> GridResult<()> {
        let path = self.dir.join(&r.id);
        let tmp = self.dir.join(format!(".{}.new", r.id));
        let text = serde_json::to_vec(&r.to_json()).expect("a JSON value encodes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| GridError::io(format!("writing {}", path.display()), e))
    }

    /// What the jobs' records keep alive in the block store, for a
    /// collection: each kept log (its entry block). A job's root is a
    /// name (a run takes no score), kept by the name; a running job's
    /// environment is kept as every environment is.
    pub fn pins(&self) -> GridResult<Vec<(venti::Score, venti::BlockType)>> {
        Ok(self
            .all()?
            .into_iter()
            .filter_map(|r| r.log.as_deref().and_then(|l| l.parse().ok()))
            .map(|log| (log, venti::BlockType::DIR))
            .collect())
    }

    /// `user`'s jobs, oldest first.
    pub fn list(&self, user: &str) -> GridResult<Vec<Record>> {
        Ok(self.all()?.into_iter().filter(|r| r.user == user).collect())
    }

    /// `user`'s job `id` (nobody else's).
    pub fn record(&self, user: &str, id: &str) -> GridResult<Record> {
        let not_found = || GridError::refused(format!("no job {id} of yours"));
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) || id.is_empty() || id.len() > 16 {
            return Err(not_found());
        }
        let record = std::fs::read(self.dir.join(id))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| Record::from_json(&v))
            .filter(|r| r.user == user);
        record.ok_or_else(not_found)
    }

    /// The output `user`'s job `id` has logged, from byte `from` on (all
    /// of it, at most [`MAX_LOG`] and the note past it).
    pub fn log(&self, user: &str, id: &str, from: u64) -> GridResult<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let r = self.record(user, id)?;
        if let Some(score) = &r.log {
            let mut data = self.stored_log(score)?;
            data.drain(..(from.min(data.len() as u64) as usize));
            return Ok(data);
        }
        let path = self.dir.join(format!("{}.log", r.id));
        let mut data = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            // Past the end (a follower asking where a job is) reads nothing.
            let end = f.metadata().map(|m| m.len()).unwrap_or(0);
            f.seek(SeekFrom::Start(from.min(end)))
                .and_then(|_| f.take(MAX_LOG + 4096).read_to_end(&mut data))
                .map_err(|e| GridError::io(format!("reading {}", path.display()), e))?;
        }
        Ok(data)
    }

    /// Keeps ended jobs' output in `store`: written as a stream of blocks
    /// under one entry block, made durable, then named by the job's record
    /// (so it replicates as every block does and outlives the node's
    /// files); the log file then goes, and with it its charge to the
    /// user's budget of logs on disk. Once; later calls are ignored.
    pub fn keep_logs_in(&self, store: Arc<dyn venti::BlockStore>) {
        let _ = self.store.set(store);
    }

    /// Writes job `id`'s log file to the store: its entry block's score
    /// and its size, durable. None without a store (or if that fails: said in the log,
    /// and the file stays).
    fn store_log(&self, id: &str) -> Option<(String, u64)> {
        let store = self.store.get()?;
        let path = self.dir.join(format!("{id}.log"));
        let stored = (|| {
            let data = std::fs::read(&path).map_err(|e| e.to_string())?;
            let entry = vac::stream::write_bytes(store.as_ref(), &data, LOG_BLOCK, LOG_BLOCK)
                .map_err(|e| e.to_string())?;
            let score = store
                .write(venti::BlockType::DIR, &entry.pack())
                .map_err(|e| e.to_string())?;
            store.sync().map_err(|e| e.to_string())?;
            Ok::<_, String>((score.to_string(), data.len() as u64))
        })();
        stored
            .inspect_err(|e| {
                tracing::warn!(job = id, error = %e, "keeping a job's log in the block store failed; its file stays");
                let _ = std::fs::File::open(&path).and_then(|f| f.sync_all());
            })
            .ok()
    }

    /// A log kept in the store, by its entry block's score.
    fn stored_log(&self, score: &str) -> GridResult<Vec<u8>> {
        let unreadable =
            |why: String| GridError::refused(format!("the job's log cannot be read: {why}"));
        let store = self
            .store
            .get()
            .ok_or_else(|| unreadable("this node keeps no logs in a block store".into()))?;
        let score: venti::Score = score.parse().map_err(|e| unreadable(format!("{e}")))?;
        let block = store
            .read(&score, venti::BlockType::DIR)
            .map_err(|e| unreadable(e.to_string()))?
            .ok_or_else(|| unreadable(format!("block {score} is not in the store")))?;
        let entry = vac::entry::Entry::unpack(&block).map_err(|e| unreadable(e.to_string()))?;
        vac::reader::read_small(store.as_ref(), &entry, MAX_LOG + 4096)
            .map_err(|e| unreadable(e.to_string()))
    }

    /// Refuses unless `user` may add `more` jobs to those they have
    /// queued or running.
    pub fn room_for(&self, user: &str, more: usize) -> GridResult<()> {
        room_among(&self.list(user)?, more)
    }

    /// A new job of `user`'s, queued: its record written, and the handle
    /// its run reports through.
    pub fn submit(self: &Arc<Self>, user: &str, asked: Asked) -> GridResult<Arc<Running>> {
        let mut made = self.submit_many(user, vec![asked])?;
        Ok(made.remove(0))
    }

    /// New jobs of `user`'s (a `count=`), queued in the order given, or
    /// none: the user's records are read once for all of them, and if one
    /// cannot be written those written before it end as failed.
    pub fn submit_many(
        self: &Arc<Self>,
        user: &str,
        asked: Vec<Asked>,
    ) -> GridResult<Vec<Arc<Running>>> {
        let mine = self.list(user)?;
        room_among(&mine, asked.len())?;
        self.forget_old(&mine)?;
        let mut made = Vec::with_capacity(asked.len());
        for a in asked {
            match self.new_job(user, a) {
                Ok(job) => made.push(job),
                Err(e) => {
                    let why = format!("the rest of its count could not be queued: {e}");
                    for job in &made {
                        job.finish(State::Failed, None, None, Some(why.clone()));
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    fn new_job(self: &Arc<Self>, user: &str, asked: Asked) -> GridResult<Arc<Running>> {
        let mut id = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
            .map_err(|e| GridError::io("reading /dev/urandom", e))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let record = Record {
            id,
            user: user.to_string(),
            root: asked.root,
            command: asked.command,
            state: State::Queued,
            env: None,
            node: None,
            exit: None,
            submitted: now(),
            order: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
            started: None,
            ended: None,
            saved: None,
            why: None,
            line: Some(asked.line),
            task: asked.task,
            tries: 0,
            retries: asked.retries,
            log: None,
            log_size: None,
        };
        self.write(&record)?;
        // Its handle as a restarted node makes one (its log opened, empty).
        self.resume(record)
    }

    /// Keeps at most [`MAX_KEPT`] of a user's ended jobs.
    fn forget_old(&self, mine: &[Record]) -> GridResult<()> {
        let ended: Vec<&Record> = mine.iter().filter(|r| !r.state.active()).collect();
        for r in ended.iter().take(ended.len().saturating_sub(MAX_KEPT - 1)) {
            self.forget(r);
        }
        Ok(())
    }

    /// Removes an ended job's record and log, giving the log's bytes back
    /// to its user's budget (a log kept in the block store stays there,
    /// unnamed, until the store's garbage is collected).
    fn forget(&self, r: &Record) {
        // Under the lock: two jobs making room at once cannot both count
        // one log as freed.
        let mut bytes = self.log_bytes.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.kept_log(r);
        let _ = std::fs::remove_file(self.dir.join(format!("{}.log", r.id)));
        let _ = std::fs::remove_file(self.dir.join(&r.id));
        if let Some(used) = bytes.get_mut(&r.user) {
            *used = used.saturating_sub(size);
        }
    }

    /// The bytes of `r`'s log the node keeps: its file's, or those it
    /// stored.
    fn kept_log(&self, r: &Record) -> u64 {
        std::fs::metadata(self.dir.join(format!("{}.log", r.id)))
            .map(|m| m.len())
            .unwrap_or_else(|_| r.log_size.unwrap_or(0))
    }

    /// Makes job `id`'s record durable (its file and the directory's
    /// entry), before what it names replaces what it did.
    fn sync_record(&self, id: &str) -> std::io::Result<()> {
        std::fs::File::open(self.dir.join(id))?.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Up to `wanted` bytes of `user`'s log budget, taken: the oldest of
    /// their ended jobs go first if that makes room.
    fn take_log_room(&self, user: &str, wanted: u64) -> u64 {
        let room = |jobs: &Jobs| {
            let used = jobs
                .log_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(user)
                .copied()
                .unwrap_or(0);
            jobs.log_budget.saturating_sub(used)
        };
        if room(self) < wanted {
            for r in self.list(user).unwrap_or_default() {
                if room(self) >= wanted {
                    break;
                }
                if !r.state.active() && self.kept_log(&r) > 0 {
                    self.forget(&r);
                }
            }
        }
        let mut bytes = self.log_bytes.lock().unwrap_or_else(|p| p.into_inner());
        let used = bytes.entry(user.to_string()).or_default();
        let take = wanted.min(self.log_budget.saturating_sub(*used));
        *used += take;
        take
    }

    /// The node is stopping: the jobs running now are queued to run
    /// again after it restarts, or lost, as their retries say (their
    /// environments may end with the node), whatever their runs then see;
    /// queued jobs stay queued.
    pub fn node_stopping(&self) {
        {
            // Under `writing`, so no run's update is between its look at
            // `stopping` and its write: each lands before this reads the
            // records, or not at all.
            let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        for mut r in self.all().unwrap_or_default() {
            if r.state == State::Running && self.is_live(&r.id) {
                stopped_by_loss(&mut r);
                if let Err(e) = self.write(&r) {
                    tracing::warn!(job = %r.id, error = %e, "writing a job's record failed");
                }
            }
        }
    }

    fn is_live(&self, id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Cancels `user`'s job `id`: what it runs is ended, its record says so.
    pub fn cancel(&self, user: &str, id: &str) -> GridResult<String> {
        let r = self.record(user, id)?;
        if !r.state.active() {
            return Ok(format!("{id} already ended: {}\n", r.state.word()));
        }
        let live = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.id)
            .cloned();
        match live {
            Some(cancel) => {
                // A permit is kept if the run is not waiting yet.
                cancel.notify_one();
                Ok(format!("{id} cancelled\n"))
            }
            None => Ok(format!("{id} is not running on this node\n")),
        }
    }
}

struct Log {
    file: std::fs::File,
    kept: u64,
    left_out: u64,
    /// Its user's budget ran out (see [`MAX_USER_LOGS`]).
    no_room: bool,
}

/// A job being run: where its run reports.
pub struct Running {
    jobs: Arc<Jobs>,
    record: Mutex<Record>,
    log: Mutex<Log>,
    pub cancel: Arc<tokio::sync::Notify>,
}

impl Running {
    pub fn id(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }

    pub fn user(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .user
            .clone()
    }

    /// The `run` line it was asked with.
    pub fn line(&self) -> Option<String> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .line
            .clone()
    }

    pub fn task(&self) -> Option<u32> {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).task
    }

    /// Its node is stopping: no new try starts (its record says what
    /// happens after the restart).
    pub fn node_stopping(&self) -> bool {
        self.jobs.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Times its environment has started.
    pub fn tries(&self) -> u32 {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).tries
    }

    /// Writes its record after `change`; nothing once the node stops (what
    /// it recorded then stands).
    fn update(&self, change: impl FnOnce(&mut Record)) {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let _one = self.jobs.writing.lock().unwrap_or_else(|p| p.into_inner());
        if self.jobs.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        change(&mut r);
        if let Err(e) = self.jobs.write_held(&r) {
            tracing::warn!(job = %r.id, error = %e, "writing a job's record failed");
        }
    }

    /// Its environment started.
    pub fn started(&self, env: &str, node: &str) {
        self.update(|r| {
            r.state = State::Running;
            r.env = Some(env.to_string());
            r.node = Some(node.to_string());
            r.started = Some(now());
            r.tries += 1;
        });
    }

    /// Its environment was lost under it: queued to run again.
    pub fn again(&self, why: &str) {
        self.update(|r| {
            r.state = State::Queued;
            r.env = None;
            r.why = Some(format!("try {} lost: {why}", r.tries));
        });
    }

    /// Output of the command, kept up to [`MAX_LOG`] bytes.
    pub fn log(&self, data: &[u8]) {
        // What a stopping node's runs say as their environments end under
        // them is not the command's.
        if self.jobs.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = (data.len() as u64).min(MAX_LOG.saturating_sub(log.kept));
        // Once the user's budget ran out with nothing of theirs left to
        // make room, this job stops asking.
        let keep = if wanted == 0 || log.no_room {
            0
        } else {
            let user = self.user();
            let got = self.jobs.take_log_room(&user, wanted);
            log.no_room = got < wanted;
            got
        } as usize;
        if keep > 0 && log.file.write_all(&data[..keep]).is_ok() {
            log.kept += keep as u64;
        }
        log.left_out += (data.len() - keep) as u64;
    }

    /// How it ended: `state`, with the command's exit status, the name it
    /// was saved to, or why it failed.
    pub fn finish(
        &self,
        state: State,
        exit: Option<u32>,
        saved: Option<String>,
        why: Option<String>,
    ) {
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if log.left_out > 0 {
                let note = format!(
                    "\n[{} more bytes were left out: a job's log keeps {} MiB, a user's logs {} MiB together]\n",
                    log.left_out,
                    MAX_LOG >> 20,
                    self.jobs.log_budget >> 20,
                );
                // Charged, though it is written whatever the room.
                self.jobs.take_log_room(&self.user(), note.len() as u64);
                let _ = log.file.write_all(note.as_bytes());
            }
            // Durable as a file only where it stays one (see below).
            if self.jobs.store.get().is_none() || self.node_stopping() {
                let _ = log.file.sync_all();
            }
        }
        let id = self.id();
        // Durable in the store before the record names it.
        let stored = if self.node_stopping() {
            None
        } else {
            self.jobs.store_log(&id)
        };
        let kept = stored.is_some();
        self.update(|r| {
            r.state = state;
            r.exit = exit;
            r.saved = saved;
            r.why = why;
            r.ended = Some(now());
            (r.log, r.log_size) = stored.unzip();
        });
        // The file goes once a durable record names what replaces it (its
        // bytes stay charged: see `kept_log`).
        if kept
            && self
                .jobs
                .record(&self.user(), &id)
                .is_ok_and(|r| r.log.is_some())
            && self.jobs.sync_record(&id).is_ok()
        {
            let _ = std::fs::remove_file(self.jobs.dir.join(format!("{id}.log")));
        }
        self.jobs
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(command: &str, retries: u32) -> Asked {
        Asked {
            root: "busybox".into(),
            command: command.into(),
            line: format!("run -d busybox retries={retries} -- {command}"),
            task: None,
            retries,
        }
    }

    /// A user's logs together stay within their budget: the oldest ended
    /// job goes to make room for a running one's output; with nothing
    /// left to give way, output is left out and the log says how much;
    /// another user's budget is their own; a restart counts what is on
    /// disk. Before, each job kept 8 MiB, 456 of them per user.
    #[test]
    fn a_users_logs_stay_within_their_budget() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_with_budget(dir.path().join("jobs"), 100).unwrap();
        let a = jobs.submit("alice", asked("a", 0)).unwrap();
        a.log(&[b'a'; 60]);
        a.finish(State::Succeeded, Some(0), None, None);
        let bob = jobs.submit("bob", asked("b", 0)).unwrap();
        bob.log(&[b'b'; 90]);
        let b = jobs.submit("alice", asked("b", 0)).unwrap();
        b.log(&[b'b'; 30]);
        assert!(jobs.record("alice", &a.id()).is_ok(), "90 of 100: a stays");
        b.log(&[b'b'; 30]);
        assert!(jobs.record("alice", &a.id()).is_err(), "a gave way");
        let c = jobs.submit("alice", asked("c", 0)).unwrap();
        c.log(&[b'c'; 60]);
        c.finish(State::Succeeded, Some(0), None, None);
        let log = jobs.log("alice", &c.id(), 0).unwrap();
        assert_eq!(&log[..40], &[b'c'; 40]);
        let note = String::from_utf8_lossy(&log[40..]).into_owned();
        assert!(note.contains("[20 more bytes were left out"), "{note}");
        assert_eq!(jobs.log("alice", &b.id(), 0).unwrap(), vec![b'b'; 60]);
        assert_eq!(jobs.log("bob", &bob.id(), 0).unwrap(), vec![b'b'; 90]);

        drop((a, b, c, bob, jobs));
        let jobs = Jobs::open_with_budget(dir.path().join("jobs"), 100).unwrap();
        let ended = jobs.list("alice").unwrap()[1].id.clone();
        let d = jobs.submit("alice", asked("d", 0)).unwrap();
        d.log(&[b'd'; 50]);
        assert!(
            jobs.record("alice", &ended).is_err(),
            "the ended one gave way"
        );
        assert_eq!(jobs.log("alice", &d.id(), 0).unwrap(), vec![b'd'; 40]);
    }

    /// A restart keeps the queue: a queued job waits to run still, a
    /// running one with retries left runs again (with the environment of
    /// its last try to end), one without is lost; ended ones stay.
    /// Invariant: an ended job's output is in the block store, named by
    /// its record only once durable there, readable after the node's
    /// files are reopened, and still charged to its user's budget of logs
    /// until the record is forgotten (else the store would take any
    /// amount of a user's output).
    #[test]
    fn an_ended_jobs_log_is_kept_in_the_block_store() {
        let dir = tempfile::tempdir().unwrap();
        let open_store = || -> Arc<dyn venti::BlockStore> {
            Arc::new(venti::LogStore::open(dir.path().join("store")).unwrap())
        };
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        jobs.keep_logs_in(open_store());
        let job = jobs.submit("alice", asked("make", 0)).unwrap();
        job.started("busybox.run-1", "c1");
        let output: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_be_bytes()).collect();
        job.log(&output);
        let id = job.id();
        assert_eq!(jobs.log_bytes.lock().unwrap()["alice"], output.len() as u64);
        job.finish(State::Succeeded, Some(0), None, None);
        let record = jobs.record("alice", &id).unwrap();
        assert!(record.log.is_some(), "{record:?}");
        assert!(!dir.path().join(format!("jobs/{id}.log")).exists());
        assert_eq!(jobs.log_bytes.lock().unwrap()["alice"], output.len() as u64);
        assert_eq!(jobs.log("alice", &id, 0).unwrap(), output);
        assert_eq!(jobs.log("alice", &id, 399_990).unwrap(), &output[399_990..]);
        assert!(jobs.log("alice", &id, 1 << 40).unwrap().is_empty());
        drop((job, jobs));
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        jobs.keep_logs_in(open_store());
        assert_eq!(jobs.log("alice", &id, 0).unwrap(), output);
        assert_eq!(jobs.log_bytes.lock().unwrap()["alice"], output.len() as u64);
        // Without its blocks, the reader is told, not handed nothing.
        let elsewhere = Jobs::open(dir.path().join("jobs")).unwrap();
        elsewhere.keep_logs_in(Arc::new(venti::MemoryStore::new()));
        let err = elsewhere.log("alice", &id, 0).unwrap_err().to_string();
        assert!(err.contains("is not in the store"), "{err}");
        // Forgotten, its bytes are given back.
        jobs.forget(&jobs.record("alice", &id).unwrap());
        assert_eq!(jobs.log_bytes.lock().unwrap()["alice"], 0);
    }

    #[test]
    fn records_read_back_and_a_restart_keeps_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        let a = jobs.submit("alice", asked("make", 0)).unwrap();
        a.started("busybox.run-1", "c1");
        a.log(b"building\n");
        let b = jobs.submit("alice", asked("true", 0)).unwrap();
        b.started("busybox.run-2", "c1");
        b.finish(State::Succeeded, Some(0), Some("built".into()), None);
        let c = jobs.submit("alice", asked("sleep 1", 0)).unwrap();
        let d = jobs.submit("alice", asked("test", 1)).unwrap();
        d.started("busybox.run-4", "c2");
        let list = jobs.list("alice").unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[1].saved.as_deref(), Some("built"));
        // Where and when it ran, in its line.
        let line = list[1].line(list[1].started.unwrap() + 3);
        assert!(
            line.contains("\tsucceeded\tbusybox\ton c1\tstarted ")
                && line.contains("\texit 0\t")
                && line.ends_with("\ttrue\tsaved built"),
            "{line}"
        );
        assert!(list[2].line(0).contains("\ton -\tstarted -\t"));
        assert_eq!(jobs.log("alice", &a.id(), 0).unwrap(), b"building\n");
        assert_eq!(jobs.log("alice", &a.id(), 5).unwrap(), b"ing\n");
        assert!(jobs.log("alice", &a.id(), u64::MAX).unwrap().is_empty());
        // Nobody else's, and no path tricks.
        assert!(jobs.record("bob", &a.id()).is_err());
        assert!(jobs.record("alice", "../jobs").is_err());

        // As if killed: nothing said at stopping.
        drop((a, b, c, d, jobs));
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        let state = |id: &str| jobs.record("alice", id).unwrap().state;
        let list = jobs.list("alice").unwrap();
        let ids: Vec<String> = list.iter().map(|r| r.id.clone()).collect();
        assert_eq!(state(&ids[0]), State::Lost);
        assert_eq!(state(&ids[1]), State::Succeeded);
        assert_eq!(state(&ids[2]), State::Queued);
        assert_eq!(state(&ids[3]), State::Queued);
        let (resumed, stale) = jobs.resumable();
        let resumed: Vec<String> = resumed.iter().map(|r| r.id()).collect();
        assert_eq!(resumed, [ids[2].clone(), ids[3].clone()]);
        // Both running jobs' environments are to end, the lost one's too.
        let stale_env = |env: &str, node: &str| StaleEnv {
            user: "alice".into(),
            env: env.into(),
            node: Some(node.into()),
        };
        assert_eq!(
            stale,
            [
                stale_env("busybox.run-1", "c1"),
                stale_env("busybox.run-4", "c2")
            ]
        );
        let (again, stale) = jobs.resumable();
        assert!(again.is_empty() && stale.is_empty(), "handed out once");
    }

    #[test]
    fn a_log_keeps_its_bound_and_says_what_it_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        let a = jobs.submit("alice", asked("yes", 0)).unwrap();
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..10 {
            a.log(&chunk);
        }
        a.finish(State::Cancelled, None, None, None);
        let log = jobs.log("alice", &a.id(), 0).unwrap();
        assert!(log.len() as u64 > MAX_LOG && (log.len() as u64) < MAX_LOG + 200);
        let tail = String::from_utf8_lossy(&log[MAX_LOG as usize..]).into_owned();
        assert!(
            tail.contains(&format!(
                "[{} more bytes were left out: a job's log keeps 8 MiB",
                2 << 20
            )),
            "{tail}"
        );
    }

    #[test]
    fn a_user_has_a_bounded_number_of_active_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path().join("jobs")).unwrap();
        let held: Vec<_> = (0..MAX_ACTIVE)
            .map(|_| jobs.submit("alice", asked("sleep", 0)).unwrap())
            .collect();
        let err = jobs.submit("alice", asked("sleep", 0)).err().unwrap();
        assert!(err.to_string().contains("would pass the 256"), "{err}");
        // bob has his own.
        jobs.submit("bob", asked("true", 0)).unwrap();
        held[0].finish(State::Succeeded, Some(0), None, None);
        jobs.submit("alice", asked("sleep", 0)).unwrap();
        assert!(jobs.room_for("alice", 1).is_err());
    }
}
