//! The control link between a storage node and its cpu nodes: the
//! original's `gridsvc` hubs (`sto.in`, `cpu.in`, … read and written with
//! sleeps and polling), as typed requests and replies on one mutual-TLS
//! connection that the cpu node dials.
//!
//! Every frame is `length[4] kind[1] body`, big-endian, the length counting
//! kind and body:
//!
//! ```text
//! cpu node                                  storage node
//! Hello(version, node, slots,             who it is, its room (environments,
//!       memory, cache, held)  →          bytes of memory and cache), what it runs
//!                                   ←  Welcome(node, venti)    where to read blocks
//!                                   ←  Request(id, deadline, request)
//! Reply(id, answer or error)        →        in any order; id correlates
//! Load(running, slots)              →        after every change
//! Caches(user, env, used, capacity…) →       with each of its pings
//! Ping(seq) ↔ Pong(seq)                      either side, to notice a dead link
//! Error(text)                       ↔        instead of anything, then close
//! ```
//!
//! A request whose deadline passes is answered by the storage node's side
//! with an error of its own; a late reply is dropped. Decoding never panics
//! and never allocates more than the frame holds.

use frames::{Reader, Writer};
use venti::{SCORE_SIZE, Score};

/// The protocol version both sides must speak.
///
/// 2: cpu nodes report their environments' caches (`Caches`).
/// 3: `status` is answered with records ([`EnvStatus`]), not text.
/// 4: a spawn may carry a one-time key (`run`), and its answer the
///    login's host key.
/// 5: a spawn may carry its root's working set (`WorkingSet`).
/// 6: an environment's status says whether it is suspended.
pub const VERSION: u8 = 6;
/// How often each side pings; a link silent for [`SILENT_FOR`] is dead.
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// The largest frame accepted.
pub const MAX_FRAME: usize = 1 << 20;
/// The most items of one list (environments held, options, keys).
pub const MAX_ITEMS: usize = 4096;

/// An environment a cpu node runs, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub user: String,
    pub name: String,
    pub root: Score,
    pub login: String,
}

/// How full an environment's cache of changed blocks is, as the cpu node
/// running it reports it: bytes held and bytes it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUse {
    pub user: String,
    pub name: String,
    pub used: u64,
    pub capacity: u64,
}

/// What a storage node asks of a cpu node.
/// What to spawn: the one shape of a spawn from the front door to the
/// machine that runs it (the storage node's placement, and the cpu node's
/// or the single node's environments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub user: String,
    /// The score name it is spawned from, which names the environment.
    pub name: String,
    pub root: Score,
    /// A disk cache (`spawndisk`) rather than RAM.
    pub disk: bool,
    /// `memory=`, `net=`, … as the user gave them: their form is checked
    /// where they arrive, their values by the machine that runs it
    /// (against its own ceilings).
    pub options: Vec<String>,
    /// One more OpenSSH public key its login admits besides the owner's:
    /// the storage node's own, made for one `run` and never kept.
    pub run_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Spawn {
        spawn: Spawn,
        /// The owner's OpenSSH public keys: who may log in.
        keys: Vec<String>,
        /// The root's working-set list (a venti block of the storage
        /// node's), for the cpu node to fetch ahead; a hint only.
        working_set: Option<Score>,
    },
    Save {
        user: String,
        env: String,
    },
    Invite {
        user: String,
        env: String,
        invitee: String,
    },
    Boom {
        user: String,
        env: String,
    },
    /// `status` lines of these environments of the user.
    Status {
        user: String,
        envs: Vec<String>,
    },
}

impl Request {
    /// The request's name, for logs and events.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Spawn { .. } => "spawn",
            Request::Save { .. } => "save",
            Request::Invite { .. } => "invite",
            Request::Boom { .. } => "boom",
            Request::Status { .. } => "status",
        }
    }
}

/// A cpu node's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `text` for the user; `login` the command that logs in;
    /// `host_key` the login's host key (OpenSSH public key form), which
    /// a client reaching it for the user (`run`) checks.
    Spawned {
        text: String,
        login: String,
        host_key: String,
    },
    /// The saved root; its blocks are durable on the storage node.
    Saved {
        root: Score,
    },
    Boomed {
        was_running: bool,
    },
    Status {
        envs: Vec<EnvStatus>,
    },
}

/// One running environment as its cpu node reports it: what `status`
/// shows a user and the admin's status page shows in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvStatus {
    pub name: String,
    /// The score name it was spawned from, and that root.
    pub spawned_from: String,
    pub root: Score,
    /// Its file system's cache of changed blocks: `ram` or `disk`.
    pub cache_kind: String,
    pub cache_bytes: u64,
    pub changed_bytes: u64,
    /// The command that logs in.
    pub login: String,
    pub uptime_secs: u64,
    pub processes: u64,
    /// Its network, as the user reads it (`net private, rootless, …`).
    pub network: String,
    /// The root its file system would save now.
    pub root_now: Score,
    /// A note for its owner (blocks fetched from a peer), if any.
    pub note: Option<String>,
    /// Suspended (or being suspended) while idle; then `root_now` is its
    /// resume point, and it holds nothing but its login port.
    pub sleep: Option<Sleep>,
}

/// Where a suspended environment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sleep {
    /// Its processes and mount are still ending.
    Suspending,
    /// Suspended this many seconds ago.
    Suspended { secs: u64 },
}

impl EnvStatus {
    /// The `status` line(s) a user reads.
    pub fn lines(&self) -> String {
        if let Some(sleep) = self.sleep {
            let state = match sleep {
                Sleep::Suspending => "suspending".to_string(),
                Sleep::Suspended { secs } => {
                    format!("suspended {}m{:02}s ago", secs / 60, secs % 60)
                }
            };
            let mut out = format!(
                "{}\tfrom {} vac:{}\t{state}\t{}\t{}\tresume point vac:{}\n",
                self.name, self.spawned_from, self.root, self.login, self.network, self.root_now,
            );
            if let Some(note) = &self.note {
                out.push_str(&format!("{}\t{note}\n", self.name));
            }
            return out;
        }
        let percent = self.changed_bytes * 100 / self.cache_bytes.max(1);
        let mut out = format!(
            "{}\tfrom {} vac:{}\t{} {} MB, {percent}% changed\t{}\tup {}m{:02}s\t{} processes\t{}\troot now vac:{}\n",
            self.name,
            self.spawned_from,
            self.root,
            self.cache_kind,
            self.cache_bytes >> 20,
            self.login,
            self.uptime_secs / 60,
            self.uptime_secs % 60,
            self.processes,
            self.network,
            self.root_now,
        );
        if let Some(note) = &self.note {
            // On a line of its own so the fields stay where scripts expect them.
            out.push_str(&format!("{}\t{note}\n", self.name));
        }
        out
    }

    fn write(&self, w: &mut Writer) {
        w.text(&self.name);
        w.text(&self.spawned_from);
        w.score(&self.root);
        w.text(&self.cache_kind);
        w.u64(self.cache_bytes);
        w.u64(self.changed_bytes);
        w.text(&self.login);
        w.u64(self.uptime_secs);
        w.u64(self.processes);
        w.text(&self.network);
        w.score(&self.root_now);
        w.flag(self.note.is_some());
        w.text(self.note.as_deref().unwrap_or(""));
        let (tag, secs) = match self.sleep {
            None => (0, 0),
            Some(Sleep::Suspending) => (1, 0),
            Some(Sleep::Suspended { secs }) => (2, secs),
        };
        w.u8(tag);
        w.u64(secs);
    }

    fn read(r: &mut Reader<'_>) -> Result<EnvStatus, frames::Malformed> {
        Ok(EnvStatus {
            name: r.text()?,
            spawned_from: r.text()?,
            root: r.score()?,
            cache_kind: r.text()?,
            cache_bytes: r.u64()?,
            changed_bytes: r.u64()?,
            login: r.text()?,
            uptime_secs: r.u64()?,
            processes: r.u64()?,
            network: r.text()?,
            root_now: r.score()?,
            note: {
                let some = r.flag()?;
                let text = r.text()?;
                // One form only: no note carries no text.
                if !some && !text.is_empty() {
                    return Err(frames::Malformed::new(
                        PROTOCOL,
                        "an environment's note that is absent but has text",
                    ));
                }
                some.then_some(text)
            },
            sleep: {
                let tag = r.u8()?;
                let secs = r.u64()?;
                match (tag, secs) {
                    (0, 0) => None,
                    (1, 0) => Some(Sleep::Suspending),
                    (2, secs) => Some(Sleep::Suspended { secs }),
                    _ => {
                        return Err(frames::Malformed::new(
                            PROTOCOL,
                            format!("an environment's sleep state {tag} with {secs} seconds"),
                        ));
                    }
                }
            },
        })
    }
}

/// Why a request failed, as the user should read it; `full` if the cpu
/// node had no room (the storage node then tries another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u8,
        node: String,
        /// Environments it may run at once.
        slots: u32,
        /// Its memory and its block cache's bound, in bytes.
        memory: u64,
        cache: u64,
        held: Vec<Held>,
    },
    Welcome {
        node: String,
        /// The storage node's venti service, as the cpu node should dial it.
        venti: String,
    },
    Request {
        id: u64,
        deadline_ms: u32,
        request: Request,
    },
    Reply {
        id: u64,
        result: Result<Answer, Refusal>,
    },
    Load {
        running: u32,
        slots: u32,
    },
    /// The caches of the environments the cpu node runs for this storage
    /// node, for its metrics and status page.
    Caches {
        envs: Vec<CacheUse>,
    },
    /// A cpu node recorded (or improved) what a start of `root` reads: the
    /// list is the venti block `list`, already written and synced to the
    /// storage node's store.
    WorkingSet {
        root: Score,
        list: Score,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Error {
        message: String,
    },
}

/// Why bytes are not a control frame.
pub type FrameError = frames::Malformed;

/// The protocol's name in its errors.
const PROTOCOL: &str = "control";

fn bad(why: impl Into<String>) -> FrameError {
    FrameError::new(PROTOCOL, why)
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REQUEST: u8 = 3;
const REPLY: u8 = 4;
const LOAD: u8 = 5;
const PING: u8 = 6;
const PONG: u8 = 7;
const ERROR: u8 = 8;
const CACHES: u8 = 9;
const WORKING_SET: u8 = 10;

const SPAWN: u8 = 1;
const SAVE: u8 = 2;
const INVITE: u8 = 3;
const BOOM: u8 = 4;
const STATUS: u8 = 5;

const SPAWNED: u8 = 1;
const SAVED: u8 = 2;
const BOOMED: u8 = 3;
const STATUS_ENVS: u8 = 5;
const REFUSED: u8 = 0x80;

impl Frame {
    /// Whether the peer's reader would take this frame: within
    /// [`MAX_FRAME`] and every list within [`MAX_ITEMS`]. A frame that
    /// does not fit must never be sent: the reader would take the link as
    /// broken, for every request on it.
    pub fn fits(&self) -> Result<(), String> {
        let bytes = self.encode();
        let body = &bytes[4..];
        if body.len() > MAX_FRAME {
            return Err(format!(
                "the request is {} bytes, more than the {MAX_FRAME} a control frame may be",
                body.len()
            ));
        }
        Frame::decode(body).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Frame::Hello {
                version,
                node,
                slots,
                memory,
                cache,
                held,
            } => {
                w.u8(HELLO);
                w.u8(*version);
                w.text(node);
                w.u32(*slots);
                w.u64(*memory);
                w.u64(*cache);
                w.u32(held.len() as u32);
                for h in held {
                    w.text(&h.user);
                    w.text(&h.name);
                    w.score(&h.root);
                    w.text(&h.login);
                }
            }
            Frame::Welcome { node, venti } => {
                w.u8(WELCOME);
                w.text(node);
                w.text(venti);
            }
            Frame::Request {
                id,
                deadline_ms,
                request,
            } => {
                w.u8(REQUEST);
                w.u64(*id);
                w.u32(*deadline_ms);
                match request {
                    Request::Spawn {
                        spawn,
                        keys,
                        working_set,
                    } => {
                        w.u8(SPAWN);
                        w.text(&spawn.user);
                        w.text(&spawn.name);
                        w.score(&spawn.root);
                        w.flag(spawn.disk);
                        w.texts(&spawn.options);
                        w.texts(keys);
                        w.text(spawn.run_key.as_deref().unwrap_or(""));
                        w.flag(working_set.is_some());
                        w.score(&working_set.unwrap_or(Score::ZERO));
                    }
                    Request::Save { user, env } => {
                        w.u8(SAVE);
                        w.text(user);
                        w.text(env);
                    }
                    Request::Invite { user, env, invitee } => {
                        w.u8(INVITE);
                        w.text(user);
                        w.text(env);
                        w.text(invitee);
                    }
                    Request::Boom { user, env } => {
                        w.u8(BOOM);
                        w.text(user);
                        w.text(env);
                    }
                    Request::Status { user, envs } => {
                        w.u8(STATUS);
                        w.text(user);
                        w.texts(envs);
                    }
                }
            }
            Frame::Reply { id, result } => {
                w.u8(REPLY);
                w.u64(*id);
                match result {
                    Ok(Answer::Spawned {
                        text,
                        login,
                        host_key,
                    }) => {
                        w.u8(SPAWNED);
                        w.text(text);
                        w.text(login);
                        w.text(host_key);
                    }
                    Ok(Answer::Saved { root }) => {
                        w.u8(SAVED);
                        w.score(root);
                    }
                    Ok(Answer::Boomed { was_running }) => {
                        w.u8(BOOMED);
                        w.flag(*was_running);
                    }
                    Ok(Answer::Status { envs }) => {
                        w.u8(STATUS_ENVS);
                        w.u32(envs.len() as u32);
                        for e in envs {
                            e.write(&mut w);
                        }
                    }
                    Err(r) => {
                        w.u8(REFUSED);
                        w.text(&r.message);
                        w.flag(r.full);
                    }
                }
            }
            Frame::Load { running, slots } => {
                w.u8(LOAD);
                w.u32(*running);
                w.u32(*slots);
            }
            Frame::Caches { envs } => {
                w.u8(CACHES);
                w.u32(envs.len() as u32);
                for e in envs {
                    w.text(&e.user);
                    w.text(&e.name);
                    w.u64(e.used);
                    w.u64(e.capacity);
                }
            }
            Frame::WorkingSet { root, list } => {
                w.u8(WORKING_SET);
                w.score(root);
                w.score(list);
            }
            Frame::Ping { seq } => {
                w.u8(PING);
                w.u64(*seq);
            }
            Frame::Pong { seq } => {
                w.u8(PONG);
                w.u64(*seq);
            }
            Frame::Error { message } => {
                w.u8(ERROR);
                w.text(message);
            }
        }
        w.finish()
    }

    /// Decodes a frame's body (kind and what follows, no length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader::new(body, PROTOCOL, MAX_ITEMS);
        let frame = match r.u8()? {
            HELLO => {
                let version = r.u8()?;
                let node = r.text()?;
                let slots = r.u32()?;
                let memory = r.u64()?;
                let cache = r.u64()?;
                // user, name, login lengths and the score at the least.
                let n = r.count(12 + SCORE_SIZE)?;
                let mut held = Vec::with_capacity(n);
                for _ in 0..n {
                    held.push(Held {
                        user: r.text()?,
                        name: r.text()?,
                        root: r.score()?,
                        login: r.text()?,
                    });
                }
                Frame::Hello {
                    version,
                    node,
                    slots,
                    memory,
                    cache,
                    held,
                }
            }
            WELCOME => Frame::Welcome {
                node: r.text()?,
                venti: r.text()?,
            },
            REQUEST => {
                let id = r.u64()?;
                let deadline_ms = r.u32()?;
                let request = match r.u8()? {
                    SPAWN => {
                        let spawn = Spawn {
                            user: r.text()?,
                            name: r.text()?,
                            root: r.score()?,
                            disk: r.flag()?,
                            options: r.texts()?,
                            run_key: None,
                        };
                        let keys = r.texts()?;
                        let run_key = Some(r.text()?).filter(|k| !k.is_empty());
                        let has_list = r.flag()?;
                        let list = r.score()?;
                        // One form only: no list is a zero score.
                        if !has_list && list != Score::ZERO {
                            return Err(bad("a spawn without a working set carries a score"));
                        }
                        Request::Spawn {
                            spawn: Spawn { run_key, ..spawn },
                            keys,
                            working_set: has_list.then_some(list),
                        }
                    }
                    SAVE => Request::Save {
                        user: r.text()?,
                        env: r.text()?,
                    },
                    INVITE => Request::Invite {
                        user: r.text()?,
                        env: r.text()?,
                        invitee: r.text()?,
                    },
                    BOOM => Request::Boom {
                        user: r.text()?,
                        env: r.text()?,
                    },
                    STATUS => Request::Status {
                        user: r.text()?,
                        envs: r.texts()?,
                    },
                    other => return Err(bad(format!("unknown request kind {other}"))),
                };
                Frame::Request {
                    id,
                    deadline_ms,
                    request,
                }
            }
            REPLY => {
                let id = r.u64()?;
                let result = match r.u8()? {
                    SPAWNED => Ok(Answer::Spawned {
                        text: r.text()?,
                        login: r.text()?,
                        host_key: r.text()?,
                    }),
                    SAVED => Ok(Answer::Saved { root: r.score()? }),
                    BOOMED => Ok(Answer::Boomed {
                        was_running: r.flag()?,
                    }),
                    STATUS_ENVS => {
                        // Each record is at least its scores and numbers.
                        let n = r.count(2 * SCORE_SIZE + 4 * 8)?;
                        let mut envs = Vec::with_capacity(n);
                        for _ in 0..n {
                            envs.push(EnvStatus::read(&mut r)?);
                        }
                        Ok(Answer::Status { envs })
                    }
                    REFUSED => Err(Refusal {
                        message: r.text()?,
                        full: r.flag()?,
                    }),
                    other => return Err(bad(format!("unknown reply kind {other}"))),
                };
                Frame::Reply { id, result }
            }
            LOAD => Frame::Load {
                running: r.u32()?,
                slots: r.u32()?,
            },
            CACHES => {
                // Two text lengths and two sizes at the least.
                let n = r.count(8 + 16)?;
                let mut envs = Vec::with_capacity(n);
                for _ in 0..n {
                    envs.push(CacheUse {
                        user: r.text()?,
                        name: r.text()?,
                        used: r.u64()?,
                        capacity: r.u64()?,
                    });
                }
                Frame::Caches { envs }
            }
            WORKING_SET => Frame::WorkingSet {
                root: r.score()?,
                list: r.score()?,
            },
            PING => Frame::Ping { seq: r.u64()? },
            PONG => Frame::Pong { seq: r.u64()? },
            ERROR => Frame::Error { message: r.text()? },
            other => return Err(bad(format!("unknown frame kind {other}"))),
        };
        if r.left() > 0 {
            return Err(bad(format!("{} bytes after the end of a frame", r.left())));
        }
        Ok(frame)
    }
}

/// Reads one frame from `r`.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame, std::io::Error> {
    let body = frames::read_body(r, PROTOCOL, MAX_FRAME).await?;
    Frame::decode(&body).map_err(frames::invalid)
}

/// Writes one frame to `w` and flushes it.
pub async fn write<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), std::io::Error> {
    frames::write(w, &frame.encode()).await
}

/// Why a control link is taken as lost.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("link ended: {0}")]
    Ended(std::io::Error),
    #[error("silent for {}s", SILENT_FOR.as_secs())]
    Silent,
}

/// How long a link may stay silent: three pings missed.
pub const SILENT_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Reads the next frame of a live link: each side pings every
/// [`PING_EVERY`], so [`SILENT_FOR`] without a frame means the peer or the
/// path to it is gone, even where TCP has not noticed.
pub async fn read_live<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame, Lost> {
    match tokio::time::timeout(SILENT_FOR, read(r)).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => Err(Lost::Ended(e)),
        Err(_) => Err(Lost::Silent),
    }
}

/// The writing half of a link, as a task: what is sent on `outgoing`, in
/// order, and a `Ping` every [`PING_EVERY`] so the other side's
/// [`read_live`] sees the link alive. It ends, shutting the stream down,
/// when every sender is gone or a write fails; abort it to end it sooner.
pub fn spawn_writer<W>(
    mut w: W,
    mut outgoing: tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> tokio::task::JoinHandle<()>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut seq = 0;
        loop {
            let frame = tokio::select! {
                f = outgoing.recv() => match f { Some(f) => f, None => break },
                _ = ping.tick() => { seq += 1; Frame::Ping { seq } }
            };
            if write(&mut w, &frame).await.is_err() {
                break;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
    })
}
