//! `run ROOT [options] -- COMMAND ARGS…` at the front door: work handed to
//! the grid. A fresh environment of ROOT is placed as a spawn is; the
//! storage node logs in to it over SSH with a key made for this run alone
//! (which the login admits besides the owner's), checking the login's host
//! key as its cpu answered it over the control link; COMMAND runs there
//! through the environment's shell. Its stdout and stderr come back as
//! they come, each to its own stream; the session's stdin goes to it; its
//! exit status is the session's. Then, after a zero exit only, `save=NAME`
//! saves the environment to NAME (so a result is an immutable name, bound
//! once its blocks are durable, as any save), and the environment is ended
//! whatever happened: a client that leaves, a timeout, a failure.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{self, PublicKey};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{ChannelId, ChannelMsg};
use tokio::sync::mpsc;

use crate::Node;

/// How `run` is asked for.
pub const USAGE: &str = "run [-d] ROOT [memory=SIZE] [pids=N] [cpu=WEIGHT] [net=private|host|none] [timeout=DURATION] [save=NAME] [count=N] [retries=N] -- COMMAND ARGS…";

/// The most instances one `run -d count=N` makes.
pub const MAX_COUNT: u32 = 256;
/// The most times a job is tried again after losing its environment.
pub const MAX_RETRIES: u32 = 10;

/// How often a run's session asks its environment whether it is there …
const KEEPALIVE: Duration = Duration::from_secs(2);
/// … and how many unanswered asks mean it is lost.
const KEEPALIVES_MISSED: usize = 3;

/// The exit status of a run that timed out, as timeout(1)'s.
const TIMED_OUT: u32 = 124;
/// The exit status of a run that was cancelled (as a shell's after SIGINT).
const CANCELLED: u32 = 130;

/// What a `run` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// `-d`: a job, answered with its id at once (see [`crate::jobs`]).
    pub detached: bool,
    pub root: String,
    /// The spawn's option words (`memory=`, `net=`, …).
    pub options: Vec<String>,
    pub timeout: Option<Duration>,
    /// The name to save the environment to after a zero exit.
    pub save: Option<String>,
    /// What the environment's shell runs, as given after `--`.
    pub command: String,
    /// `count=N` (with `-d`): N jobs, each told its `COLONY_TASK`.
    pub count: u32,
    /// `retries=N` (with `-d`): times the job runs again when its
    /// environment is lost under it (at least once, perhaps more).
    pub retries: u32,
    /// The line as asked, kept in a job's record so a node that restarts
    /// can run it still.
    pub line: String,
    /// What its environment's name starts with (a service replica's);
    /// else `ROOT.run`.
    pub name: Option<String>,
}

impl RunRequest {
    /// Reads `run ROOT [options] -- COMMAND…` (the whole line as the
    /// session sent it): everything after ` -- ` is the command, as typed.
    pub fn parse(line: &str) -> Result<RunRequest, String> {
        let usage = || format!("usage: {USAGE}");
        let (head, command) = line.split_once(" -- ").ok_or_else(usage)?;
        let command = command.trim().to_string();
        let mut words = head.split_whitespace();
        if words.next() != Some("run") {
            return Err(usage());
        }
        let mut root = words.next().ok_or_else(usage)?;
        let detached = root == "-d";
        if detached {
            root = words.next().ok_or_else(usage)?;
        }
        let root = root.to_string();
        if command.is_empty() {
            return Err(format!("no command after --: {}", usage()));
        }
        let (mut options, mut timeout, mut save) = (Vec::new(), None, None);
        let (mut count, mut retries) = (1, 0);
        for word in words {
            match word.split_once('=') {
                Some(("count", n)) => count = number_option("count", n, 1..=MAX_COUNT)?,
                Some(("retries", n)) => retries = number_option("retries", n, 0..=MAX_RETRIES)?,
                Some(("timeout", value)) => {
                    let d = units::parse_duration(value)
                        .map_err(|e| format!("timeout={value}: {e}"))?;
                    if d.is_zero() {
                        return Err("timeout=0: a run needs some time".into());
                    }
                    timeout = Some(d);
                }
                Some(("save", name)) => {
                    grid::names::check_score_name(name).map_err(|e| e.to_string())?;
                    save = Some(name.to_string());
                }
                Some(("publish" | "userns" | "agent" | "node", _)) => {
                    return Err(format!(
                        "{word}: a run takes memory=, pids=, cpu=, net=, timeout=, save=, count= and retries="
                    ));
                }
                _ => options.push(word.to_string()),
            }
        }
        if !detached && (count != 1 || retries != 0) {
            // One client, one stdin: a run in the foreground runs once.
            return Err("count= and retries= are for jobs: run -d".into());
        }
        if count > 1 && save.is_some() {
            return Err("save= names one result; a count= of jobs would race for it".into());
        }
        Ok(RunRequest {
            detached,
            root,
            options,
            timeout,
            save,
            command,
            count,
            retries,
            line: line.to_string(),
            name: None,
        })
    }
}

/// The value of option `key=text`, a whole number within `range`; else
/// what it may be.
pub(crate) fn number_option(
    key: &str,
    text: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, String> {
    text.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("{key}={text}: from {} to {}", range.start(), range.end()))
}

/// Where a run's output goes: the front door's channel (a run in the
/// foreground), a job's log (see [`crate::jobs`]), or a service
/// replica's (see [`crate::services`]).
pub enum Output {
    Channel {
        handle: russh::server::Handle,
        channel: ChannelId,
        gate: OutputGate,
    },
    Job(Arc<crate::jobs::Running>),
    Replica(Arc<crate::services::ReplicaRun>),
}

impl Output {
    /// Passes on a piece of stdout (`err` false) or stderr; false when
    /// nobody hears it any more (the client left).
    async fn write(&self, err: bool, data: Vec<u8>) -> bool {
        match self {
            Output::Channel {
                handle,
                channel,
                gate,
            } => {
                gate.waits(true);
                let sent = if err {
                    handle.extended_data(*channel, 1, data).await
                } else {
                    handle.data(*channel, data).await
                };
                gate.waits(false);
                sent.is_ok()
            }
            Output::Job(job) => {
                job.log(&data);
                true
            }
            Output::Replica(replica) => {
                replica.log(&data);
                true
            }
        }
    }
}

/// How much of a user's runs' input may wait, read from their clients but
/// not yet taken by their commands, before the clients are held back.
pub const MAX_WAITING_INPUT: usize = 8 << 20;

/// How much may wait at most: past [`MAX_WAITING_INPUT`] input is still
/// taken while a run has output waiting for the client's connection, up to
/// this over all of a user's runs; past it the run is ended.
pub const MAX_OVERFLOW_INPUT: usize = 64 << 20;

/// The most of a run's output passed on at once (what is already read).
const OUTPUT_PIECE: usize = 1 << 20;

/// How long a run's input waits for room while its output waits for the
/// connection before it is taken past [`MAX_WAITING_INPUT`].
const STUCK: Duration = Duration::from_millis(50);

/// The input a user's runs hold waiting, together (see [`input_pipe`]).
pub struct InputBudget {
    room: tokio::sync::Semaphore,
    /// Bytes taken past [`MAX_WAITING_INPUT`] and not yet read.
    over: std::sync::atomic::AtomicUsize,
}

impl InputBudget {
    pub fn new() -> InputBudget {
        InputBudget {
            room: tokio::sync::Semaphore::new(MAX_WAITING_INPUT),
            over: Default::default(),
        }
    }
}

impl Default for InputBudget {
    fn default() -> Self {
        InputBudget::new()
    }
}

/// What a run's input and output share. A run's client is held back by
/// not reading its connection, which also stops the run's output from
/// leaving by it (SSH's window cannot do it: russh grants more as data
/// arrives). Holding back while output waits would be a cycle (the command
/// stops reading as its output stops, we stop reading as it does), so
/// while output waits the input is taken anyway, up to
/// [`MAX_OVERFLOW_INPUT`]: all of it charged to the user.
struct Pipe {
    budget: Arc<InputBudget>,
    /// A piece of output waits for the client's connection.
    output_waits: std::sync::atomic::AtomicBool,
    output_waiting: tokio::sync::Notify,
    /// The user's input overflowed: the run is to end.
    overran: std::sync::atomic::AtomicBool,
    overrun: tokio::sync::Notify,
    /// The run no longer takes input (it ended).
    gone: std::sync::atomic::AtomicBool,
    going: tokio::sync::Notify,
}

/// A chunk of input and what it holds of its user's budget: room below
/// [`MAX_WAITING_INPUT`], or (`room` 0) bytes past it.
struct Chunk {
    data: Vec<u8>,
    room: u32,
}

impl Pipe {
    /// Gives back what `chunk` held of the budget.
    fn release(&self, chunk: &Chunk) {
        if chunk.room > 0 {
            self.budget.room.add_permits(chunk.room as usize);
        } else {
            self.budget
                .over
                .fetch_sub(chunk.data.len(), std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The client's end of a run's input: [`InputTo::send`] passes a chunk on
/// (an empty one is the end of input); dropping every sender is a client
/// that left.
#[derive(Clone)]
pub struct InputTo {
    to: mpsc::UnboundedSender<Chunk>,
    pipe: Arc<Pipe>,
}

/// The run's end of its input. Dropping it gives back what waited, and a
/// sender waiting for room gives up.
pub struct InputFrom {
    from: mpsc::UnboundedReceiver<Chunk>,
    pipe: Arc<Pipe>,
}

/// A run's input, charged to `budget` (its user's).
pub fn input_pipe(budget: Arc<InputBudget>) -> (InputTo, InputFrom) {
    let (to, from) = mpsc::unbounded_channel();
    let pipe = Arc::new(Pipe {
        budget,
        output_waits: Default::default(),
        output_waiting: Default::default(),
        overran: Default::default(),
        overrun: Default::default(),
        gone: Default::default(),
        going: Default::default(),
    });
    (
        InputTo {
            to,
            pipe: pipe.clone(),
        },
        InputFrom { from, pipe },
    )
}

impl InputTo {
    /// Passes `data` on once there is room for it (or, when no room comes
    /// while the run's output waits, past the room); false when the run
    /// no longer takes input.
    pub async fn send(&self, data: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let (pipe, budget) = (&self.pipe, &self.pipe.budget);
        let wanted = data.len().min(MAX_WAITING_INPUT) as u32;
        let room = loop {
            if pipe.gone.load(SeqCst) || pipe.overran.load(SeqCst) {
                return false;
            }
            // Room, or else a run whose output has waited for the
            // connection all along (a cycle, not a slow command): then the
            // chunk is taken anyway, so the connection moves again.
            let stuck = tokio::time::sleep(STUCK);
            tokio::select! {
                permit = budget.room.acquire_many(wanted) => match permit {
                    Ok(permit) => {
                        permit.forget();
                        break wanted;
                    }
                    Err(_) => return false,
                },
                () = stuck, if pipe.output_waits.load(SeqCst) => {}
                () = pipe.output_waiting.notified() => continue,
                () = pipe.going.notified() => continue,
            }
            if !pipe.output_waits.load(SeqCst) {
                continue;
            }
            let over = budget.over.fetch_add(data.len(), SeqCst) + data.len();
            if over > MAX_OVERFLOW_INPUT - MAX_WAITING_INPUT {
                budget.over.fetch_sub(data.len(), SeqCst);
                pipe.overran.store(true, SeqCst);
                pipe.overrun.notify_one();
                return false;
            }
            break 0;
        };
        let chunk = Chunk { data, room };
        match self.to.send(chunk) {
            Ok(()) => true,
            Err(mpsc::error::SendError(chunk)) => {
                pipe.release(&chunk);
                false
            }
        }
    }
}

impl InputFrom {
    /// The next chunk; none once every sender is gone and all is read.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let chunk = self.from.recv().await?;
        self.pipe.release(&chunk);
        Some(chunk.data)
    }

    /// Every sender is gone: the client left (or sent all it will).
    pub fn is_closed(&self) -> bool {
        self.from.is_closed()
    }

    /// Resolves once the user's input overflowed for this run (more than
    /// [`MAX_OVERFLOW_INPUT`] waited): the run is to end.
    fn overrun(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pipe = self.pipe.clone();
        async move {
            while !pipe.overran.load(std::sync::atomic::Ordering::SeqCst) {
                pipe.overrun.notified().await;
            }
        }
    }

    /// What the run's output says when it waits for the client.
    pub fn output_gate(&self) -> OutputGate {
        OutputGate(self.pipe.clone())
    }
}

impl Drop for InputFrom {
    fn drop(&mut self) {
        // No more chunks come in; what waited gives its room back, and a
        // sender waiting for room gives up.
        self.from.close();
        while let Ok(chunk) = self.from.try_recv() {
            self.pipe.release(&chunk);
        }
        self.pipe
            .gone
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.pipe.going.notify_one();
    }
}

/// Told by a run's output when a piece waits for the client's connection.
#[derive(Clone)]
pub struct OutputGate(Arc<Pipe>);

impl OutputGate {
    fn waits(&self, waits: bool) {
        self.0
            .output_waits
            .store(waits, std::sync::atomic::Ordering::SeqCst);
        if waits {
            self.0.output_waiting.notify_one();
        }
    }
}

/// What a run's session is: where its output goes, where its input comes
/// from (chunks; an empty one is the end of input; every sender gone is a
/// client that left), and what cancels it.
pub struct Session {
    pub output: Output,
    pub input: InputFrom,
    pub cancel: Arc<tokio::sync::Notify>,
    /// Its place in the queue if it has one already (a job takes it when
    /// submitted, so a user's jobs start in the order they were asked).
    pub place: Option<crate::queue::Ticket>,
}

/// How a run ended, when its command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The command exited with this status.
    Exited(u32),
    /// Its `timeout=` passed.
    TimedOut,
    /// `cancel` ended it.
    Cancelled,
}

impl Ended {
    /// The status a session exits with.
    pub fn status(self) -> u32 {
        match self {
            Ended::Exited(s) => s,
            Ended::TimedOut => TIMED_OUT,
            Ended::Cancelled => CANCELLED,
        }
    }
}

/// Why a run did not end with its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing ran: the request was refused (a root not found, a bad
    /// option), or the client left first.
    Refused(String),
    /// Its environment, or the way to it, was lost while the command ran
    /// (a cpu node that died, a link cut): a job may be run again.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(why) | Failure::Lost(why) => f.write_str(why),
        }
    }
}

/// Runs `request` for `user` in the foreground and answers the session on
/// `handle`'s `channel`: its output, its exit status, and the channel
/// closed.
pub async fn serve(
    node: Arc<Node>,
    user: String,
    request: RunRequest,
    handle: russh::server::Handle,
    channel: ChannelId,
    input: InputFrom,
) {
    let session = Session {
        output: Output::Channel {
            handle: handle.clone(),
            channel,
            gate: input.output_gate(),
        },
        input,
        cancel: Arc::default(),
        place: None,
    };
    let status = match run(&node, &user, &request, session).await {
        Ok((ended, _)) => ended.status(),
        Err(why) => {
            let _ = handle
                .extended_data(
                    channel,
                    1,
                    format!("run {}: {why}\n", request.root).into_bytes(),
                )
                .await;
            1
        }
    };
    let _ = handle.exit_status_request(channel, status).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Submits `request` as `user`'s jobs (`run -d`, `count=` of them): their
/// ids, at once; each waits its turn in the queue, runs with no input, and
/// its record and log tell how it went.
pub fn submit_jobs(
    node: &Arc<Node>,
    user: &str,
    request: RunRequest,
) -> grid::error::GridResult<Vec<String>> {
    let tasks = (0..request.count).map(|t| (request.count > 1).then_some(t));
    let asked = tasks
        .map(|task| crate::jobs::Asked {
            root: request.root.clone(),
            command: request.command.clone(),
            line: request.line.clone(),
            task,
            retries: request.retries,
        })
        .collect();
    let mut ids = Vec::new();
    for job in node.jobs()?.submit_many(user, asked)? {
        ids.push(job.id());
        let what = match job.task() {
            Some(t) => format!("task {t} of "),
            None => String::new(),
        };
        node.job_event(
            user,
            &format!(
                "{} queued: {what}{} -- {}",
                job.id(),
                request.root,
                request.command
            ),
        );
        let place = node.queue().line_up(user);
        start_job(node.clone(), job, request.clone(), place);
    }
    Ok(ids)
}

/// Runs a job's `request` (as it was submitted) in the background: waits
/// for its turn from `place`, runs, and tries again after a loss while its
/// retries last.
pub fn start_job(
    node: Arc<Node>,
    job: Arc<crate::jobs::Running>,
    mut request: RunRequest,
    place: crate::queue::Ticket,
) {
    use crate::jobs::State;
    if let Some(task) = job.task() {
        request.command = format!(
            "COLONY_TASK={task}; export COLONY_TASK; {}",
            request.command
        );
    }
    let user = job.user();
    tokio::spawn(async move {
        let mut place = Some(place);
        loop {
            // A stopping node starts nothing more (its environments would
            // outlive it on a cpu node, the job's record run it again).
            if job.node_stopping() {
                return;
            }
            // No input: its end at once (the sender is kept, so it is not
            // a client that left).
            let (to, input) = input_pipe(Arc::default());
            to.send(Vec::new()).await;
            let session = Session {
                output: Output::Job(job.clone()),
                input,
                cancel: job.cancel.clone(),
                // Again after a loss: at the back of the user's line.
                place: place.take().or_else(|| Some(node.queue().line_up(&user))),
            };
            let result = run(&node, &user, &request, session).await;
            drop(to);
            let id = job.id();
            let tell = |what: String| node.job_event(&user, &format!("{id} {what}"));
            let (state, exit, saved, why) = match result {
                Ok((Ended::Exited(0), saved)) => {
                    tell(match &saved {
                        Some(name) => format!("succeeded, saved {name}"),
                        None => "succeeded".to_string(),
                    });
                    (State::Succeeded, Some(0), saved, None)
                }
                Ok((Ended::Exited(status), _)) => {
                    tell(format!("failed, exit {status}"));
                    (State::Failed, Some(status), None, None)
                }
                Ok((Ended::TimedOut, _)) => {
                    tell("failed, timed out".to_string());
                    (
                        State::Failed,
                        Some(TIMED_OUT),
                        None,
                        Some("timed out".into()),
                    )
                }
                Ok((Ended::Cancelled, _)) => {
                    tell("cancelled".to_string());
                    (State::Cancelled, None, None, None)
                }
                Err(Failure::Lost(why)) if job.tries() <= request.retries => {
                    let note = format!("lost on try {}: {why}; trying again", job.tries());
                    tell(note.clone());
                    job.log(format!("run: {note}\n").as_bytes());
                    job.again(&why);
                    continue;
                }
                Err(Failure::Lost(why)) => {
                    tell(format!("lost: {why}"));
                    job.log(format!("run {}: {why}\n", request.root).as_bytes());
                    (State::Lost, None, None, Some(why))
                }
                Err(Failure::Refused(why)) => {
                    tell(format!("failed: {why}"));
                    job.log(format!("run {}: {why}\n", request.root).as_bytes());
                    (State::Failed, None, None, Some(why))
                }
            };
            // Its log goes to the block store, durably: off the runtime.
            let _ = tokio::task::spawn_blocking(move || job.finish(state, exit, saved, why)).await;
            return;
        }
    });
}

/// Runs `request` for `user`: how it ended, and the name it was saved to
/// (with `save=`, after a zero exit). It waits its turn first (see
/// [`crate::queue`]), saying so once when the grid is full.
pub async fn run(
    node: &Arc<Node>,
    user: &str,
    request: &RunRequest,
    mut session: Session,
) -> Result<(Ended, Option<String>), Failure> {
    let refused = Failure::Refused;
    let key = one_time_key().map_err(refused)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Failure::Refused(format!("encoding the run's key: {e}")))?;
    let env = format!(
        "{}-{}",
        request
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.run", request.root)),
        hex(&random::<4>().map_err(refused)?)
    );
    // A job's or a replica's state says it waits; a session is told.
    let mut said_waiting = !matches!(session.output, Output::Channel { .. });
    let (spawned, turn) = loop {
        let place = session
            .place
            .take()
            .unwrap_or_else(|| node.queue().line_up(user));
        let waiting = place.turn();
        tokio::pin!(waiting);
        let mut turn = loop {
            tokio::select! {
                biased;
                turn = &mut waiting => break turn,
                () = session.cancel.notified() => return Ok((Ended::Cancelled, None)),
                () = client_left(&session.input) => {
                    return Err(Failure::Refused("the client left".into()));
                }
                () = std::future::ready(()), if !said_waiting => {
                    said_waiting = true;
                    let note = b"run: no cpu node has room now; waiting for a turn\n".to_vec();
                    session.output.write(true, note).await;
                }
            }
        };
        if let Output::Job(job) = &session.output
            && job.node_stopping()
        {
            return Err(Failure::Lost("the node is stopping".into()));
        }
        let spawning = {
            let (node, user, root, env, options, public) = (
                node.clone(),
                user.to_string(),
                request.root.clone(),
                env.clone(),
                request.options.clone(),
                public.clone(),
            );
            tokio::task::spawn_blocking(move || {
                node.spawn_for_run(&user, &root, &env, &options, public)
            })
        };
        let spawned = spawning
            .await
            .map_err(|e| Failure::Refused(e.to_string()))?;
        turn.placed();
        match spawned {
            Ok(spawned) => break (spawned, turn),
            // Room the queue saw was taken meanwhile (another storage
            // node's spawn): wait again, unless the spawn named its cpu
            // node (a service's replica), whose caller chooses again.
            Err(e) if e.is_full() && !request.options.iter().any(|o| o.starts_with("node=")) => {
                drop(turn);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(Failure::Refused(e.to_string())),
        }
    };
    if let Output::Replica(replica) = &session.output {
        replica.started(&env, &spawned, key.clone());
    }
    if let Output::Job(job) = &session.output {
        job.started(&env, &spawned.node);
        node.job_event(
            user,
            &format!("{} running in {env} on {}", job.id(), spawned.node),
        );
    }
    // From here on the environment is this run's to end.
    let ran = in_environment(&spawned, user, key, request, &mut session).await;
    let ended = match ran {
        Ok(ended) => ended,
        Err(why) => {
            boom(node, user, &env).await;
            return Err(Failure::Lost(why));
        }
    };
    let mut saved = None;
    let mut ended = ended;
    if ended == Ended::Exited(0)
        && let Some(name) = &request.save
    {
        let reply = command(node, user, format!("save {env} {name}")).await;
        let note = if reply.status == 0 {
            saved = Some(name.clone());
            format!("run: saved to {name}\n")
        } else {
            // The command succeeded; its result could not be kept.
            ended = Ended::Exited(1);
            format!("run: saving to {name} failed: {}", reply.err)
        };
        session.output.write(true, note.into_bytes()).await;
    }
    // The client has its answer without waiting for the environment to
    // end: it ends behind the answer, holding its turn until it has (so
    // the room the queue sees is true).
    let (node, user) = (node.clone(), user.to_string());
    tokio::spawn(async move {
        boom(&node, &user, &env).await;
        drop(turn);
    });
    Ok((ended, saved))
}

/// Resolves when the client of a run has gone (every sender of its input
/// dropped), looking every 200 ms; what a waiting run listens for besides
/// its turn.
async fn client_left(input: &InputFrom) {
    while !input.is_closed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs in to a run's environment (`spawned`) as `user` with the run's
/// `key`, checking its host key.
async fn log_in(
    spawned: &crate::Spawned,
    user: &str,
    key: PrivateKey,
) -> Result<russh::client::Handle<HostKey>, String> {
    let (host, port) = login_address(&spawned.login)
        .ok_or_else(|| format!("no login in the spawn's answer {:?}", spawned.login))?;
    let expected = PublicKey::from_openssh(spawned.host_key.trim())
        .map_err(|e| format!("the environment's host key: {e}"))?;
    let config = Arc::new(login_config());
    let mut client = russh::client::connect(config, (host.as_str(), port), HostKey(expected))
        .await
        .map_err(|e| format!("reaching the environment at {host}:{port}: {e}"))?;
    let auth = client
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .map_err(|e| format!("logging in to the environment: {e}"))?;
    if !auth.success() {
        return Err("the environment refused the run's key".into());
    }
    Ok(client)
}

/// How a run's SSH client talks to its environment's login.
fn login_config() -> russh::client::Config {
    russh::client::Config {
        // The run lasts as long as its command; its own timeout is above.
        inactivity_timeout: None,
        // A cut link shows no reset: without these a run (a job, a
        // service's replica) would wait on a lost cpu node for ever,
        // instead of being run again elsewhere.
        keepalive_interval: Some(KEEPALIVE),
        keepalive_max: KEEPALIVES_MISSED,
        // Each step of a login is a small message waiting on the one
        // before: under Nagle's algorithm each waited for a delayed ACK,
        // about 40 ms a login on loopback (measured: a median of 45 ms to
        // connect, 3 ms without).
        nodelay: true,
        ..Default::default()
    }
}

/// Runs `command` in a run's environment beside what runs there (a
/// service's health check): its exit status; its output is dropped.
pub(crate) async fn exit_status_of(
    spawned: &crate::Spawned,
    user: &str,
    key: PrivateKey,
    command: &str,
) -> Result<u32, String> {
    let client = log_in(spawned, user, key).await?;
    let mut channel = client
        .channel_open_session()
        .await
        .map_err(|e| format!("opening a session in the environment: {e}"))?;
    channel
        .exec(true, command.as_bytes())
        .await
        .map_err(|e| format!("starting {command}: {e}"))?;
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { .. } => status = status.or(Some(128 + 9)),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    status.ok_or_else(|| format!("{command} ended without an exit status"))
}

/// Logs in to the run's environment, runs the command, relays both ways;
/// its exit status.
async fn in_environment(
    spawned: &crate::Spawned,
    user: &str,
    key: PrivateKey,
    request: &RunRequest,
    session: &mut Session,
) -> Result<Ended, String> {
    let client = log_in(spawned, user, key).await?;
    let env = client
        .channel_open_session()
        .await
        .map_err(|e| format!("opening a session in the environment: {e}"))?;
    env.exec(true, request.command.as_bytes())
        .await
        .map_err(|e| format!("starting the command: {e}"))?;
    let deadline = request.timeout.map(|t| tokio::time::Instant::now() + t);
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let cancel = session.cancel.clone();
    let (output, input) = (&session.output, &mut session.input);
    let overrun = input.overrun();
    tokio::pin!(overrun);
    // Input is fed while output is read, never one waiting on the other:
    // a command that reads its input only after writing output (cat with
    // more than a window of both) would otherwise wait on us as we wait on
    // it.
    let (mut from_env, to_env) = env.split();
    let feeding = async {
        while let Some(chunk) = input.recv().await {
            if chunk.is_empty() {
                let _ = to_env.eof().await;
                return Fed::Ended;
            }
            if to_env.data(&chunk[..]).await.is_err() {
                return Fed::Ended;
            }
        }
        Fed::ClientLeft
    };
    // Its own future, not a select arm's body: feeding goes on while a
    // piece of output waits for the client to take it.
    let reading = async {
        let mut status = None;
        // A message read while gathering output that is not more of it.
        let mut held = None;
        loop {
            let msg = match held.take() {
                Some(msg) => Some(msg),
                None => from_env.wait().await,
            };
            let (err, first) = match msg {
                Some(ChannelMsg::Data { data }) => (false, data),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => (true, data),
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    status = Some(exit_status);
                    continue;
                }
                Some(ChannelMsg::ExitSignal { .. }) => {
                    status = status.or(Some(128 + 9));
                    continue;
                }
                Some(ChannelMsg::Close) | None => return Ok(status),
                Some(_) => continue,
            };
            // What more of the same stream is here already goes with it:
            // output that waited leaves in few large pieces, so it keeps
            // up with input coming in as fast as the client sends it.
            let mut piece = first.to_vec();
            while piece.len() < OUTPUT_PIECE {
                match tokio::time::timeout(Duration::ZERO, from_env.wait()).await {
                    Ok(Some(ChannelMsg::Data { data })) if !err => piece.extend_from_slice(&data),
                    Ok(Some(ChannelMsg::ExtendedData { data, ext: 1 })) if err => {
                        piece.extend_from_slice(&data)
                    }
                    Ok(msg) => {
                        held = msg.or(Some(ChannelMsg::Close));
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !output.write(err, piece).await {
                return Err("the client left".to_string());
            }
        }
    };
    tokio::pin!(feeding, reading);
    let mut fed = false;
    let status = loop {
        tokio::select! {
            () = &mut expired => {
                let t = request.timeout.map(units::duration_text).unwrap_or_default();
                let note = format!("run: timed out after {t}\n");
                output.write(true, note.into_bytes()).await;
                return Ok(Ended::TimedOut);
            }
            () = cancel.notified() => {
                output.write(true, b"run: cancelled\n".to_vec()).await;
                return Ok(Ended::Cancelled);
            }
            outcome = &mut feeding, if !fed => match outcome {
                Fed::Ended => fed = true,
                // The client left: so does the run.
                Fed::ClientLeft => return Err("the client left".into()),
            },
            () = &mut overrun => {
                let mib = MAX_OVERFLOW_INPUT >> 20;
                return Err(format!(
                    "its input came faster than the command read it: more than {mib} MiB waited, so the run was ended"
                ));
            }
            read = &mut reading => break read?,
        }
    };
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    status
        .map(Ended::Exited)
        .ok_or_else(|| "the environment ended before its command did".into())
}

/// How feeding a run's input ended.
enum Fed {
    /// Its end was passed on (or the command stopped taking it).
    Ended,
    /// The client left before its end.
    ClientLeft,
}

/// The host and port of a login command (`ssh -p PORT USER@HOST`).
fn login_address(login: &str) -> Option<(String, u16)> {
    let mut words = login.split_whitespace();
    let (_ssh, _p, port, target) = (words.next()?, words.next()?, words.next()?, words.next()?);
    let host = target.rsplit_once('@')?.1;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

/// Accepts exactly the host key the environment's cpu node said its
/// logins present.
struct HostKey(PublicKey);

impl russh::client::Handler for HostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.0.key_data()
            }
            _ => false,
        })
    }
}

/// A fresh Ed25519 key, never written anywhere.
fn one_time_key() -> Result<PrivateKey, String> {
    let seed = random::<32>()?;
    Ok(PrivateKey::from(
        ssh_key::private::Ed25519Keypair::from_seed(&seed),
    ))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `line` through the node's command set, off the runtime.
async fn command(node: &Arc<Node>, user: &str, line: String) -> crate::Reply {
    let (node, user) = (node.clone(), user.to_string());
    tokio::task::spawn_blocking(move || node.run(&user, &line))
        .await
        .unwrap_or_else(|e| crate::Reply {
            out: String::new(),
            err: format!("internal error: {e}\n"),
            status: 1,
        })
}

/// Ends the run's environment.
async fn boom(node: &Arc<Node>, user: &str, env: &str) {
    let reply = command(node, user, format!("boom {env}")).await;
    if reply.status != 0 {
        tracing::warn!(user, env, error = %reply.err.trim(), "ending a run's environment failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_login_sends_each_message_at_once_and_notices_a_cut_link() {
        let config = login_config();
        // Without TCP_NODELAY every login step waited for a delayed ACK.
        assert!(config.nodelay);
        assert_eq!(config.keepalive_interval, Some(KEEPALIVE));
        assert_eq!(config.keepalive_max, KEEPALIVES_MISSED);
    }

    #[test]
    fn a_run_line_reads_as_its_parts_and_bad_ones_say_why() {
        let r = RunRequest::parse(
            "run debian memory=1G timeout=5m save=built -- sh -c 'tar x && make'",
        )
        .unwrap();
        assert_eq!(r.root, "debian");
        assert_eq!(r.options, ["memory=1G"]);
        assert_eq!(r.timeout, Some(Duration::from_secs(300)));
        assert_eq!(r.save.as_deref(), Some("built"));
        assert_eq!(r.command, "sh -c 'tar x && make'");
        assert!(!r.detached);
        let d = RunRequest::parse("run -d debian -- make").unwrap();
        assert!(d.detached && d.root == "debian" && d.command == "make");
        assert_eq!((d.count, d.retries), (1, 0));
        let n = RunRequest::parse("run -d debian count=50 retries=2 -- make").unwrap();
        assert_eq!((n.count, n.retries), (50, 2));
        assert_eq!(n.line, "run -d debian count=50 retries=2 -- make");
        for (bad, says) in [
            ("run debian true", "usage"),
            ("run -- true", "usage"),
            ("run -d -- true", "usage"),
            ("run debian -- ", "no command"),
            ("run debian timeout=soon -- true", "timeout=soon"),
            ("run debian timeout=0s -- true", "some time"),
            ("run debian save=../x -- true", "name"),
            ("run debian publish=80 -- true", "a run takes"),
            ("run debian count=2 -- true", "run -d"),
            ("run debian retries=1 -- true", "run -d"),
            ("run -d debian count=0 -- true", "from 1 to 256"),
            ("run -d debian count=257 -- true", "from 1 to 256"),
            ("run -d debian count=x -- true", "from 1 to 256"),
            ("run -d debian retries=11 -- true", "from 0 to 10"),
            ("run -d debian count=2 save=x -- true", "race"),
        ] {
            let err = RunRequest::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_login_address_is_read_from_the_login_command() {
        assert_eq!(
            login_address("ssh -p 20001 alice@10.0.0.5"),
            Some(("10.0.0.5".into(), 20001))
        );
        assert_eq!(
            login_address("ssh -p 20001 alice@[::1]"),
            Some(("::1".into(), 20001))
        );
        assert_eq!(login_address("ssh alice@host"), None);
    }
}
