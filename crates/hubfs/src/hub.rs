//! Hubs: broadcast pipes with a ring buffer, as the original hubfs has them
//! (`../shared/reference/ants-spawngrid.md` §3), without its silent losses.
//!
//! Every byte written to a hub reaches every reader whose position is at
//! or before it; readers do not consume. A hub keeps the last `buffer`
//! bytes. Positions are absolute (bytes since the hub was made), so a
//! reader that has fallen behind what is kept knows exactly how much it
//! lost, and is told so once before it reads on from the oldest kept byte.
//! New readers start at the oldest kept byte, or at the end in `trunc`
//! mode. Writers never wait, except in `fear` mode, where a write that
//! would overwrite bytes a reader has not read yet waits for that reader
//! up to a deadline. `freeze` makes hubs plain files of what they keep
//! (reads and writes at offsets); `melt` resumes streaming. `eof` wakes the
//! readers that are waiting with an end of file, once.
//!
//! Limits (buffer size, number of hubs, size of one write) are errors
//! when exceeded, never silent truncation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a hub set allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes each hub keeps.
    pub buffer: usize,
    /// Hubs at once.
    pub hubs: usize,
    /// Bytes of one write.
    pub write: usize,
    /// How long a write waits for slow readers in `fear` mode.
    pub fear_deadline: Duration,
    /// Longest hub name.
    pub name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // The original's sizes: about a rio scrollback, and 77 hubs.
        Limits {
            buffer: 777_777,
            hubs: 77,
            write: 666_666,
            fear_deadline: Duration::from_secs(5),
            name: 255,
        }
    }
}

/// A per-hub rate limit: bytes per second, and a least gap between writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimit {
    pub bytes_per_sec: u64,
    pub min_gap: Duration,
}

/// Why a hub operation failed; the text is what the client sees. The
/// words follow Plan 9's ("does not exist", "exists", "permission",
/// "invalid", "too long"), which clients such as plan9port's 9pfuse turn
/// into the matching errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("hub {0} does not exist")]
    NoHub(String),
    #[error("hub {0} exists")]
    Exists(String),
    #[error("too many hubs: the limit is {0}")]
    TooMany(usize),
    #[error("invalid hub name {0:?}: use letters, digits, '.', '-' and '_', at most {1} bytes")]
    BadName(String, usize),
    #[error("a write of {0} bytes is too long: the limit is {1}")]
    TooBig(usize, usize),
    #[error(
        "this reader fell behind hub {hub} and lost {lost} bytes; it reads on from the oldest byte kept"
    )]
    Lost { hub: String, lost: u64 },
    #[error(
        "invalid ctl message {0:?}: commands are fear, calm, freeze, melt, trunc, notrunc, eof [HUB], finish HUB, unfinish HUB"
    )]
    BadCtl(String),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("interrupted")]
    Interrupted,
}

/// What a streaming read returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Data(Vec<u8>),
    /// An end of file (`eof` on ctl): zero bytes.
    Eof,
}

/// A reader's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReaderId(pub(crate) u64);

/// One reader of a hub.
#[derive(Clone, Copy)]
struct Reader {
    /// Its next position.
    pos: u64,
    /// An `eof` sent while it was open: it reads up to this position (what
    /// was written before the eof), then gets EOF once. Kept per reader,
    /// so a reader busy at the moment of the eof does not miss it, and one
    /// that wakes late does not see it before the data written first.
    eof_at: Option<u64>,
}

struct Hub {
    /// The bytes kept: positions `start..start + data.len()`.
    data: VecDeque<u8>,
    start: u64,
    readers: HashMap<ReaderId, Reader>,
    /// Its writer is done for good ([`HubSet::finish`]): a caught-up
    /// reader gets EOF at once, whenever it reads.
    finished: bool,
    owner: String,
    mode: u32,
    /// Set while a frozen write rewrote the content.
    rate: Option<RateState>,
    id: u64,
}

struct RateState {
    limit: RateLimit,
    since: Instant,
    bytes: u64,
    last: Instant,
}

impl Hub {
    /// `eof`: every open reader gets EOF once it has read what was written
    /// so far.
    fn send_eof(&mut self) {
        let end = self.end();
        for r in self.readers.values_mut() {
            r.eof_at.get_or_insert(end);
        }
    }

    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

#[derive(Default)]
struct Flags {
    trunc: bool,
    fear: bool,
    frozen: bool,
}

#[derive(Default)]
struct State {
    hubs: BTreeMap<String, Hub>,
    flags: Flags,
    next_reader: u64,
    next_hub: u64,
}

/// A set of hubs: what one hubfs serves.
pub struct HubSet {
    pub limits: Limits,
    pub rate: Option<RateLimit>,
    state: Mutex<State>,
    /// Signalled on every write, eof, melt, removal and interrupt.
    changed: Condvar,
}

/// A hub as `stat` shows it.
#[derive(Debug, Clone)]
pub struct HubInfo {
    pub name: String,
    pub owner: String,
    pub mode: u32,
    /// Bytes written since it was made.
    pub written: u64,
    /// Bytes kept now.
    pub kept: u64,
    /// A number unique to the hub for the set's life (its qid).
    pub id: u64,
    /// Readers open now.
    pub readers: usize,
}

fn check_name(name: &str, max: usize) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name != "ctl"
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(HubError::BadName(name.to_string(), max))
    }
}

impl HubSet {
    pub fn new(limits: Limits) -> HubSet {
        HubSet {
            limits,
            rate: None,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes hub `name`, owned by `owner` with permission bits `mode`.
    pub fn create(&self, name: &str, owner: &str, mode: u32) -> Result<HubInfo, HubError> {
        check_name(name, self.limits.name)?;
        let mut state = self.state();
        if state.hubs.contains_key(name) {
            return Err(HubError::Exists(name.into()));
        }
        if state.hubs.len() >= self.limits.hubs {
            return Err(HubError::TooMany(self.limits.hubs));
        }
        state.next_hub += 1;
        let id = state.next_hub;
        let rate = self.rate.map(|limit| RateState {
            limit,
            since: Instant::now(),
            bytes: 0,
            last: Instant::now() - limit.min_gap,
        });
        state.hubs.insert(
            name.to_string(),
            Hub {
                data: VecDeque::new(),
                start: 0,
                readers: HashMap::new(),
                finished: false,
                owner: owner.to_string(),
                mode,
                rate,
                id,
            },
        );
        Ok(info(name, &state.hubs[name]))
    }

    pub fn remove(&self, name: &str) -> Result<(), HubError> {
        self.state()
            .hubs
            .remove(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?;
        self.changed.notify_all();
        Ok(())
    }

    pub fn info(&self, name: &str) -> Result<HubInfo, HubError> {
        let state = self.state();
        let hub = state
            .hubs
            .get(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?;
        Ok(info(name, hub))
    }

    pub fn list(&self) -> Vec<HubInfo> {
        let state = self.state();
        state.hubs.iter().map(|(n, h)| info(n, h)).collect()
    }

    /// A new reader of `name`: at the oldest kept byte, or at the end in
    /// trunc mode.
    pub fn open_reader(&self, name: &str) -> Result<ReaderId, HubError> {
        let mut state = self.state();
        state.next_reader += 1;
        let id = ReaderId(state.next_reader);
        let trunc = state.flags.trunc;
        let hub = state
            .hubs
            .get_mut(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?;
        let at = if trunc { hub.end() } else { hub.start };
        hub.readers.insert(
            id,
            Reader {
                pos: at,
                eof_at: None,
            },
        );
        Ok(id)
    }

    pub fn close_reader(&self, name: &str, reader: ReaderId) {
        if let Some(hub) = self.state().hubs.get_mut(name) {
            hub.readers.remove(&reader);
        }
        // A writer in fear mode may have been waiting for it.
        self.changed.notify_all();
    }

    /// Up to `max` bytes for `reader`, waiting until there are some (or an
    /// eof, or `cancel` is set). While frozen, streaming reads wait.
    pub fn read(
        &self,
        name: &str,
        reader: ReaderId,
        max: usize,
        cancel: &AtomicBool,
    ) -> Result<Got, HubError> {
        let mut state = self.state();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(HubError::Interrupted);
            }
            let frozen = state.flags.frozen;
            let hub = state
                .hubs
                .get_mut(name)
                .ok_or_else(|| HubError::NoHub(name.into()))?;
            let Some(&Reader { pos, eof_at }) = hub.readers.get(&reader) else {
                return Err(HubError::NoHub(name.into()));
            };
            if !frozen {
                if pos < hub.start {
                    hub.readers.get_mut(&reader).expect("read above").pos = hub.start;
                    self.changed.notify_all();
                    return Err(HubError::Lost {
                        hub: name.into(),
                        lost: hub.start - pos,
                    });
                }
                // Data first, as far as an eof sent after it.
                let end = eof_at.map_or(hub.end(), |at| at.min(hub.end()));
                if pos >= end && eof_at.is_some() {
                    hub.readers.get_mut(&reader).expect("read above").eof_at = None;
                    return Ok(Got::Eof);
                }
                if pos == hub.end() && hub.finished {
                    return Ok(Got::Eof);
                }
                if pos < end {
                    let from = (pos - hub.start) as usize;
                    let n = ((end - pos) as usize).min(max);
                    let (a, b) = hub.data.as_slices();
                    let mut out = Vec::with_capacity(n);
                    if from < a.len() {
                        let take = (a.len() - from).min(n);
                        out.extend_from_slice(&a[from..from + take]);
                        out.extend_from_slice(&b[..n - take]);
                    } else {
                        out.extend_from_slice(&b[from - a.len()..from - a.len() + n]);
                    }
                    hub.readers.get_mut(&reader).expect("read above").pos = pos + n as u64;
                    // Fear-mode writers wait on readers' progress.
                    self.changed.notify_all();
                    return Ok(Got::Data(out));
                }
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Appends `data` to `name` for every reader; returns its length.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<usize, HubError> {
        if data.len() > self.limits.write {
            return Err(HubError::TooBig(data.len(), self.limits.write));
        }
        let deadline = Instant::now() + self.limits.fear_deadline;
        let mut state = self.state();
        // In fear mode, wait while the write would pass a reader's unread
        // bytes out of the buffer (with a deadline: a stuck reader never
        // stops a hub for good).
        loop {
            let fear = state.flags.fear;
            let hub = state
                .hubs
                .get(name)
                .ok_or_else(|| HubError::NoHub(name.into()))?;
            let slowest = hub.readers.values().map(|r| r.pos).min();
            let would_drop =
                (hub.data.len() + data.len()).saturating_sub(self.limits.buffer) as u64;
            let blocked = fear
                && slowest.is_some_and(|p| p < hub.start + would_drop)
                && Instant::now() < deadline;
            if !blocked {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let buffer = self.limits.buffer;
        let hub = state.hubs.get_mut(name).expect("checked above");
        hub.data.extend(data);
        if hub.data.len() > buffer {
            let drop = hub.data.len() - buffer;
            hub.data.drain(..drop);
            hub.start += drop as u64;
        }
        let pause = hub.rate.as_mut().map(|r| r.pause(data.len()));
        drop(state);
        self.changed.notify_all();
        if let Some(p) = pause
            && !p.is_zero()
        {
            // Only this writer waits: every other hub and reader goes on.
            std::thread::sleep(p);
        }
        Ok(data.len())
    }

    /// Marks hub `name` finished (its writer is gone for good, as a shell
    /// that exited) or not (a new writer): readers that have read
    /// everything get EOF, now and at every later read, until unmarked.
    /// Unlike `eof`, no reader can miss it by not waiting at the moment.
    pub fn finish(&self, name: &str, finished: bool) -> Result<(), HubError> {
        self.state()
            .hubs
            .get_mut(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?
            .finished = finished;
        self.changed.notify_all();
        Ok(())
    }

    /// Whether hubs are plain files now (`freeze`).
    pub fn frozen(&self) -> bool {
        self.state().flags.frozen
    }

    /// A frozen hub as a file: up to `max` kept bytes from `offset`.
    pub fn read_at(&self, name: &str, offset: u64, max: usize) -> Result<Vec<u8>, HubError> {
        let state = self.state();
        let hub = state
            .hubs
            .get(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?;
        let from = (offset as usize).min(hub.data.len());
        let n = (hub.data.len() - from).min(max);
        Ok(hub.data.range(from..from + n).copied().collect())
    }

    /// A frozen hub as a file: its content becomes what is kept up to
    /// `offset`, then `data`.
    pub fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<usize, HubError> {
        if data.len() > self.limits.write {
            return Err(HubError::TooBig(data.len(), self.limits.write));
        }
        let mut state = self.state();
        let hub = state
            .hubs
            .get_mut(name)
            .ok_or_else(|| HubError::NoHub(name.into()))?;
        let keep = (offset as usize).min(hub.data.len());
        let cut = hub.data.len() - keep;
        hub.data.truncate(keep);
        hub.data.extend(data);
        // Positions stay monotonic: the rewritten tail counts as new bytes.
        hub.start += cut as u64;
        if hub.data.len() > self.limits.buffer {
            let drop = hub.data.len() - self.limits.buffer;
            hub.data.drain(..drop);
            hub.start += drop as u64;
        }
        Ok(data.len())
    }

    /// Runs a ctl command.
    pub fn ctl(&self, command: &str) -> Result<(), HubError> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let mut state = self.state();
        match words.as_slice() {
            ["fear"] => state.flags.fear = true,
            ["calm"] => state.flags.fear = false,
            ["freeze"] => state.flags.frozen = true,
            ["melt"] => state.flags.frozen = false,
            ["trunc"] => state.flags.trunc = true,
            ["notrunc"] => state.flags.trunc = false,
            ["eof"] => {
                for hub in state.hubs.values_mut() {
                    hub.send_eof();
                }
            }
            ["eof", name] => {
                state
                    .hubs
                    .get_mut(*name)
                    .ok_or_else(|| HubError::NoHub(name.to_string()))?
                    .send_eof();
            }
            // A lasting eof (a shell that exited), for writers over 9P.
            [verb @ ("finish" | "unfinish"), name] => {
                state
                    .hubs
                    .get_mut(*name)
                    .ok_or_else(|| HubError::NoHub(name.to_string()))?
                    .finished = *verb == "finish";
            }
            _ => return Err(HubError::BadCtl(command.trim().to_string())),
        }
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// The ctl file's text: the modes and limits, then a line per hub.
    pub fn status(&self) -> String {
        let state = self.state();
        let f = &state.flags;
        let mut out = format!(
            "fear {}\nfreeze {}\ntrunc {}\nbuffer {}\nhubs {} of {}\nwrite {}\n",
            f.fear as u8,
            f.frozen as u8,
            f.trunc as u8,
            self.limits.buffer,
            state.hubs.len(),
            self.limits.hubs,
            self.limits.write
        );
        for (name, hub) in &state.hubs {
            let _ = writeln!(
                out,
                "hub {name} written {} kept {} readers {}",
                hub.end(),
                hub.data.len(),
                hub.readers.len()
            );
        }
        out
    }

    /// Wakes every waiting read (a request is being flushed).
    pub fn interrupt(&self) {
        // Under the lock a reader holds from its check of `cancel` until it
        // waits: notified without it, a reader between the two would miss
        // this and wait on (found by fuzzing: a read outlived its
        // connection, holding the socket open).
        let _state = self.state();
        self.changed.notify_all();
    }
}

impl RateState {
    /// How long the writer of `n` more bytes waits to keep to the limit.
    fn pause(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let gap = now.duration_since(self.last);
        self.last = now;
        if gap < self.limit.min_gap {
            return self.limit.min_gap - gap;
        }
        if gap > Duration::from_secs(1) {
            // An idle hub starts its budget afresh.
            self.since = now;
            self.bytes = 0;
        }
        self.bytes += n as u64;
        if self.limit.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.limit.bytes_per_sec as f64);
        due.saturating_sub(now.duration_since(self.since))
    }
}

fn info(name: &str, hub: &Hub) -> HubInfo {
    HubInfo {
        name: name.to_string(),
        owner: hub.owner.clone(),
        mode: hub.mode,
        written: hub.end(),
        kept: hub.data.len() as u64,
        id: hub.id,
        readers: hub.readers.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn set(buffer: usize) -> Arc<HubSet> {
        Arc::new(HubSet::new(Limits {
            buffer,
            hubs: 3,
            write: 1000,
            fear_deadline: Duration::from_millis(300),
            name: 32,
        }))
    }

    fn read(s: &HubSet, hub: &str, r: ReaderId) -> Result<Got, HubError> {
        s.read(hub, r, 1 << 20, &AtomicBool::new(false))
    }

    #[test]
    fn two_readers_see_every_byte_of_one_writer() {
        let s = set(1 << 16);
        s.create("io", "alice", 0o600).unwrap();
        let (a, b) = (s.open_reader("io").unwrap(), s.open_reader("io").unwrap());
        s.write("io", b"hello ").unwrap();
        s.write("io", b"world").unwrap();
        assert_eq!(
            read(&s, "io", a).unwrap(),
            Got::Data(b"hello world".to_vec())
        );
        assert_eq!(
            read(&s, "io", b).unwrap(),
            Got::Data(b"hello world".to_vec())
        );
        // A later reader starts at the oldest kept byte; in trunc mode at the end.
        let c = s.open_reader("io").unwrap();
        assert_eq!(
            read(&s, "io", c).unwrap(),
            Got::Data(b"hello world".to_vec())
        );
        s.ctl("trunc").unwrap();
        let d = s.open_reader("io").unwrap();
        s.write("io", b"!").unwrap();
        assert_eq!(read(&s, "io", d).unwrap(), Got::Data(b"!".to_vec()));
    }

    #[test]
    fn a_reader_waits_for_data_and_a_slow_one_is_told_what_it_lost() {
        let s = set(10);
        s.create("io", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                s.write("io", b"abc").unwrap();
            })
        };
        assert_eq!(read(&s, "io", r).unwrap(), Got::Data(b"abc".to_vec()));
        writer.join().unwrap();
        // 15 bytes into a 10-byte buffer while it is not reading.
        s.write("io", b"0123456789").unwrap();
        s.write("io", b"ABCDE").unwrap();
        assert_eq!(
            read(&s, "io", r).unwrap_err(),
            HubError::Lost {
                hub: "io".into(),
                lost: 5
            }
        );
        assert_eq!(
            read(&s, "io", r).unwrap(),
            Got::Data(b"56789ABCDE".to_vec())
        );
    }

    #[test]
    fn fear_makes_a_writer_wait_for_the_slowest_reader_until_its_deadline() {
        let s = set(10);
        s.create("io", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        s.ctl("fear").unwrap();
        s.write("io", b"0123456789").unwrap();
        // The next write would drop unread bytes: it waits for the read.
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                s.write("io", b"abcde").unwrap();
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            read(&s, "io", r).unwrap(),
            Got::Data(b"0123456789".to_vec())
        );
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert_eq!(read(&s, "io", r).unwrap(), Got::Data(b"abcde".to_vec()));
        // A reader that never reads holds a writer only until the deadline.
        s.write("io", b"fghij").unwrap();
        let t = Instant::now();
        s.write("io", b"klmnopqrst").unwrap();
        assert!(t.elapsed() >= Duration::from_millis(250));
        assert!(matches!(
            read(&s, "io", r),
            Err(HubError::Lost { lost: 5, .. })
        ));
    }

    #[test]
    fn calm_writers_never_wait() {
        let s = HubSet::new(Limits {
            buffer: 10,
            fear_deadline: Duration::from_secs(60),
            ..Limits::default()
        });
        s.create("io", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        s.ctl("fear").unwrap();
        s.ctl("calm").unwrap();
        let t = Instant::now();
        s.write("io", b"0123456789").unwrap();
        s.write("io", b"0123456789").unwrap();
        // Waiting would take the 60 s deadline.
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(matches!(
            read(&s, "io", r),
            Err(HubError::Lost { lost: 10, .. })
        ));
    }

    #[test]
    fn eof_wakes_waiting_readers_once() {
        let s = set(100);
        s.create("io", "alice", 0o600).unwrap();
        s.create("other", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        let waiting = {
            let s = s.clone();
            std::thread::spawn(move || read(&s, "io", r))
        };
        std::thread::sleep(Duration::from_millis(50));
        s.ctl("eof io").unwrap();
        assert_eq!(waiting.join().unwrap().unwrap(), Got::Eof);
        // Not a state: the next read waits for data again.
        s.write("io", b"x").unwrap();
        assert_eq!(read(&s, "io", r).unwrap(), Got::Data(b"x".to_vec()));
        // A reader not waiting at the moment (busy with what it read) gets
        // the eof at its next read, after what was written before it and
        // not after what came later (9pfuse's cat missed the tail when
        // the eof came first).
        s.write("io", b"before").unwrap();
        s.ctl("eof io").unwrap();
        s.write("io", b"after").unwrap();
        assert_eq!(read(&s, "io", r).unwrap(), Got::Data(b"before".to_vec()));
        assert_eq!(read(&s, "io", r).unwrap(), Got::Eof);
        assert_eq!(read(&s, "io", r).unwrap(), Got::Data(b"after".to_vec()));
        // A reader opened after an eof does not get it.
        let late = s.open_reader("io").unwrap();
        assert_eq!(
            read(&s, "io", late).unwrap(),
            Got::Data(b"xbeforeafter".to_vec())
        );
        assert_eq!(
            s.ctl("eof nosuch").unwrap_err(),
            HubError::NoHub("nosuch".into())
        );
    }

    #[test]
    fn a_finished_hub_ends_every_caught_up_reader_however_late() {
        let s = set(100);
        s.create("out", "alice", 0o600).unwrap();
        let r = s.open_reader("out").unwrap();
        s.write("out", b"last words").unwrap();
        s.finish("out", true).unwrap();
        // What was written is still read first; then EOF, again and again.
        assert_eq!(
            read(&s, "out", r).unwrap(),
            Got::Data(b"last words".to_vec())
        );
        assert_eq!(read(&s, "out", r).unwrap(), Got::Eof);
        assert_eq!(read(&s, "out", r).unwrap(), Got::Eof);
        // A new writer: readers wait again.
        s.finish("out", false).unwrap();
        let waiting = {
            let s = s.clone();
            std::thread::spawn(move || read(&s, "out", r))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished());
        s.write("out", b"again").unwrap();
        assert_eq!(
            waiting.join().unwrap().unwrap(),
            Got::Data(b"again".to_vec())
        );
        // The same through ctl, for writers on the far side of 9P.
        s.ctl("finish out").unwrap();
        assert_eq!(read(&s, "out", r).unwrap(), Got::Eof);
        s.ctl("unfinish out").unwrap();
        s.write("out", b"more").unwrap();
        assert_eq!(read(&s, "out", r).unwrap(), Got::Data(b"more".to_vec()));
        assert!(matches!(s.ctl("finish"), Err(HubError::BadCtl(_))));
        assert_eq!(
            s.ctl("finish nosuch").unwrap_err(),
            HubError::NoHub("nosuch".into())
        );
    }

    #[test]
    fn freeze_makes_files_and_melt_streams_again() {
        let s = set(100);
        s.create("io", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        s.write("io", b"hello world").unwrap();
        s.ctl("freeze").unwrap();
        assert_eq!(s.read_at("io", 6, 100).unwrap(), b"world");
        s.write_at("io", 6, b"there").unwrap();
        assert_eq!(s.read_at("io", 0, 100).unwrap(), b"hello there");
        // A streaming read waits while frozen, and goes on after melt.
        let waiting = {
            let s = s.clone();
            std::thread::spawn(move || read(&s, "io", r))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished());
        s.ctl("melt").unwrap();
        // The rewritten tail is new to the reader: it reads the content,
        // told it lost the bytes the rewrite replaced.
        assert!(matches!(
            waiting.join().unwrap(),
            Err(HubError::Lost { lost: 5, .. })
        ));
        assert_eq!(
            read(&s, "io", r).unwrap(),
            Got::Data(b"hello there".to_vec())
        );
    }

    #[test]
    fn limits_are_errors_that_name_them() {
        let s = set(100);
        for n in ["a", "b", "c"] {
            s.create(n, "alice", 0o600).unwrap();
        }
        assert_eq!(
            s.create("d", "alice", 0o600).unwrap_err(),
            HubError::TooMany(3)
        );
        assert_eq!(
            s.create("a", "alice", 0o600).unwrap_err(),
            HubError::Exists("a".into())
        );
        for bad in ["", "ctl", "..", "a/b", "sp ace", &"x".repeat(33)] {
            assert!(
                matches!(s.create(bad, "alice", 0o600), Err(HubError::BadName(..))),
                "{bad}"
            );
        }
        assert_eq!(
            s.write("a", &[0; 1001]).unwrap_err(),
            HubError::TooBig(1001, 1000)
        );
        assert_eq!(
            s.write("zz", b"x").unwrap_err(),
            HubError::NoHub("zz".into())
        );
        assert!(matches!(s.ctl("launch"), Err(HubError::BadCtl(_))));
        let status = s.status();
        assert!(
            status.contains("hubs 3 of 3") && status.contains("hub a written 0"),
            "{status}"
        );
    }

    #[test]
    fn a_flushed_read_returns() {
        let s = set(100);
        s.create("io", "alice", 0o600).unwrap();
        let r = s.open_reader("io").unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let waiting = {
            let (s, cancel) = (s.clone(), cancel.clone());
            std::thread::spawn(move || s.read("io", r, 10, &cancel))
        };
        std::thread::sleep(Duration::from_millis(30));
        cancel.store(true, Ordering::Relaxed);
        s.interrupt();
        assert_eq!(waiting.join().unwrap().unwrap_err(), HubError::Interrupted);
    }

    #[test]
    fn a_rate_limit_paces_its_writer() {
        let mut s = HubSet::new(Limits::default());
        s.rate = Some(RateLimit {
            bytes_per_sec: 100_000,
            min_gap: Duration::ZERO,
        });
        s.create("radio", "alice", 0o600).unwrap();
        let t = Instant::now();
        for _ in 0..10 {
            s.write("radio", &[0; 5000]).unwrap();
        }
        // 50 000 bytes at 100 000 a second: about half a second.
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
