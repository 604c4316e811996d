//! Idle environments: what keeps one awake, and the record of one asleep.
//!
//! An environment idle for its idle time (no login open, and under
//! [`BUSY_SHARE`] of a core between two looks) is suspended by
//! [`crate::Environments`]: its changes are saved as a private resume point,
//! its processes, mount, cache and network end, and only its login port
//! stays, listening. The next login respawns it from the resume point.
//!
//! The [`Record`] of a suspended environment is a file in the node's state,
//! written (synced, then renamed into place) only after the resume point's
//! blocks are durable, so a node that restarts finds it again and a node
//! killed mid-suspend has either the running environment's last state or a
//! whole resume point, never a record naming blocks that are not there.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use venti::Score;

/// The share of one core under which an environment counts as idle: its
/// processes may wake now and then (a cron, a shell's prompt), but not work.
pub const BUSY_SHARE: f64 = 0.02;

/// The shortest idle time a spawn may ask for.
pub const MIN_IDLE: Duration = Duration::from_secs(1);

/// How often environments are looked at for a given idle time: often
/// enough that one is suspended within a quarter of its idle time late.
pub fn look_every(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// How long an environment a connection woke stays awake if nobody logs
/// in (a stranger's connect, a port scan): it sleeps again soon, so a bare
/// connection cannot keep environments awake.
pub const UNPROVEN_IDLE: Duration = Duration::from_secs(10);

/// How long a connection that has not logged in yet counts as a login on
/// its way (a suspend stands down for it); one older is a stranger's, and
/// is cut by the suspend.
pub const LOGIN_ON_ITS_WAY: Duration = Duration::from_secs(5);

/// The logins open on an environment (SSH connections to its door that
/// authenticated, which carry shells, commands, hub attachments, sftp and
/// forwards), and the connections open at all.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    connected: AtomicUsize,
    logged_in_ever: std::sync::atomic::AtomicBool,
    last_left: Mutex<Instant>,
    last_connect: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            logged_in_ever: Default::default(),
            last_left: Mutex::new(Instant::now()),
            last_connect: Mutex::new(Instant::now()),
        }
    }
}

/// One open login: counted while it lives.
#[derive(Debug)]
pub struct Present(Arc<Activity>);

/// One connection, logged in or not: counted while it lives.
#[derive(Debug)]
pub struct Connected(Arc<Activity>);

impl Activity {
    /// A login (its key accepted).
    pub fn enter(self: &Arc<Self>) -> Present {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.logged_in_ever.store(true, Ordering::SeqCst);
        Present(self.clone())
    }

    /// A connection accepted, before it logs in.
    pub fn connect(self: &Arc<Self>) -> Connected {
        *self.last_connect.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.connected.fetch_add(1, Ordering::SeqCst);
        Connected(self.clone())
    }

    /// Logins open: what keeps it awake.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether a login is open or on its way (a connection within
    /// [`LOGIN_ON_ITS_WAY`]): a suspend stands down for one.
    pub fn in_use(&self) -> bool {
        let young = self
            .last_connect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < LOGIN_ON_ITS_WAY;
        self.open() > 0 || (young && self.connected.load(Ordering::SeqCst) > 0)
    }

    /// Whether anyone has logged in since it started (or woke).
    pub fn logged_in_ever(&self) -> bool {
        self.logged_in_ever.load(Ordering::SeqCst)
    }

    /// When the last login left (or the environment started).
    pub fn last_left(&self) -> Instant {
        *self.last_left.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        *self.0.last_left.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long an environment has been idle, from what is seen at each look.
#[derive(Debug)]
pub struct Clock {
    awake_at: Instant,
    looked: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    pub fn new(now: Instant) -> Clock {
        Clock {
            awake_at: now,
            looked: now,
            cpu: None,
        }
    }

    /// Takes one look (`open` logins, the last of which left at
    /// `last_left`; `cpu`, the CPU time its processes have used, if known)
    /// and answers how long it has been idle.
    pub fn look(
        &mut self,
        open: usize,
        last_left: Instant,
        cpu: Option<Duration>,
        now: Instant,
    ) -> Duration {
        let elapsed = now.saturating_duration_since(self.looked);
        let worked = match (self.cpu, cpu) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => Duration::ZERO,
        };
        let busy = open > 0
            || (!elapsed.is_zero() && worked.as_secs_f64() > elapsed.as_secs_f64() * BUSY_SHARE);
        if busy {
            self.awake_at = now;
        }
        self.awake_at = self.awake_at.max(last_left);
        self.looked = now;
        self.cpu = cpu;
        now.saturating_duration_since(self.awake_at)
    }

    /// Starts counting again (a suspend that failed is tried again only
    /// after another whole idle time).
    pub fn reset(&mut self, now: Instant) {
        self.awake_at = now;
    }
}

/// Seconds since the Unix epoch (when a record says it was suspended).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest record file read.
const MAX_RECORD: u64 = 64 << 10;
const MAGIC: &str = "colony suspended 1";

/// A suspended environment, as kept in the node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub user: String,
    /// The name it was spawned as (which names the environment).
    pub name: String,
    /// The root it was first spawned from.
    pub root: Score,
    /// Its resume point: the tree it held when suspended.
    pub resume: Score,
    /// Its spawn options, as given.
    pub options: Vec<String>,
    pub disk: bool,
    /// Who may log in: OpenSSH public key lines, or none for a node whose
    /// users file says at each login.
    pub keys: Option<Vec<String>>,
    /// Its login port.
    pub port: u16,
    /// When it was suspended (seconds since the Unix epoch).
    pub since: u64,
    /// The storage node that placed it (empty on a single node).
    pub placed_by: String,
}

impl Record {
    pub fn encode(&self) -> String {
        let mut out = format!("{MAGIC}\n");
        let mut put = |k: &str, v: &str| {
            out.push_str(k);
            out.push('\t');
            out.push_str(v);
            out.push('\n');
        };
        put("user", &self.user);
        put("name", &self.name);
        put("root", &self.root.to_string());
        put("resume", &self.resume.to_string());
        for o in &self.options {
            put("option", o);
        }
        put("disk", if self.disk { "yes" } else { "no" });
        match &self.keys {
            None => put("keys", "registry"),
            Some(keys) => {
                put("keys", "given");
                for k in keys {
                    put("key", k);
                }
            }
        }
        put("port", &self.port.to_string());
        put("since", &self.since.to_string());
        put("placed-by", &self.placed_by);
        out
    }

    /// Reads a record; what is wrong with one that is not is named.
    pub fn decode(text: &str) -> Result<Record, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!(
                "not a suspended environment's record (no {MAGIC:?} line)"
            ));
        }
        let (mut user, mut name, mut root, mut resume) = (None, None, None, None);
        let (mut options, mut disk, mut keys) = (Vec::new(), None, None::<Vec<String>>);
        let (mut port, mut since, mut placed_by) = (None, None, None);
        let mut registry = false;
        for line in lines {
            let (k, v) = line
                .split_once('\t')
                .ok_or_else(|| format!("a line without a tab: {line:?}"))?;
            let score = |v: &str| v.parse::<Score>().map_err(|e| format!("{k}: {e}"));
            match k {
                "user" => user = Some(v.to_string()),
                "name" => name = Some(v.to_string()),
                "root" => root = Some(score(v)?),
                "resume" => resume = Some(score(v)?),
                "option" => options.push(v.to_string()),
                "disk" => disk = Some(v == "yes"),
                "keys" if v == "registry" => registry = true,
                "keys" if v == "given" => {
                    keys.get_or_insert_default();
                }
                "key" => keys.get_or_insert_default().push(v.to_string()),
                "port" => port = Some(v.parse::<u16>().map_err(|e| format!("port: {e}"))?),
                "since" => since = Some(v.parse::<u64>().map_err(|e| format!("since: {e}"))?),
                "placed-by" => placed_by = Some(v.to_string()),
                _ => return Err(format!("an unknown attribute {k:?}")),
            }
        }
        let missing = |what: &str| format!("no {what}");
        let record = Record {
            user: user.ok_or_else(|| missing("user"))?,
            name: name.ok_or_else(|| missing("name"))?,
            root: root.ok_or_else(|| missing("root"))?,
            resume: resume.ok_or_else(|| missing("resume"))?,
            options,
            disk: disk.ok_or_else(|| missing("disk"))?,
            keys,
            port: port.ok_or_else(|| missing("port"))?,
            since: since.ok_or_else(|| missing("since"))?,
            placed_by: placed_by.ok_or_else(|| missing("placed-by"))?,
        };
        if registry == record.keys.is_some() {
            return Err("either the keys or `keys registry`, not both or neither".into());
        }
        Ok(record)
    }
}

/// The directory of a node's records.
pub fn records_dir(state: &grid::state::StateDir) -> PathBuf {
    state.root.join("suspended")
}

fn record_path(dir: &Path, user: &str, name: &str) -> PathBuf {
    dir.join(format!("{}.rec", grid::state::pair_id(user, name)))
}

/// Puts `record` in place: written and synced beside, then renamed over
/// any earlier one, then the directory synced.
pub fn keep(dir: &Path, record: &Record) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // What is written must read back as itself (no value may carry a line
    // or a tab of its own), within what is read.
    let text = record.encode();
    if text.len() as u64 > MAX_RECORD || Record::decode(&text).as_ref() != Ok(record) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a suspended environment's record would not read back as written",
        ));
    }
    let path = record_path(dir, &record.user, &record.name);
    let tmp = path.with_extension("new");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the record of (user, name), if there is one.
pub fn drop_record(dir: &Path, user: &str, name: &str) {
    let path = record_path(dir, user, name);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a suspended environment's record")
        }
    }
}

/// Every record in `dir`; one that cannot be read is logged and left
/// where it is (its resume point is named in the log line).
pub fn all(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "new") {
            // A record never renamed into place: its suspend did not finish,
            // and the environment it was for ended with the node.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let read = std::fs::File::open(&path).and_then(|f| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_RECORD + 1), &mut text)
                .map(|_| text)
        });
        match read.map_err(|e| e.to_string()).and_then(|t| {
            if t.len() as u64 > MAX_RECORD {
                return Err(format!("longer than {MAX_RECORD} bytes"));
            }
            Record::decode(&t)
        }) {
            Ok(r) => out.push(r),
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "a suspended environment's record ignored")
            }
        }
    }
    out.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            user: "alice".into(),
            name: "busybox".into(),
            root: Score::of(b"root"),
            resume: Score::of(b"resume"),
            options: vec!["net=none".into(), "idle=2s".into()],
            disk: false,
            keys: Some(vec!["ssh-ed25519 AAAA alice@home".into()]),
            port: 20001,
            since: 1_800_000_000,
            placed_by: "s1".into(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_bad_ones_are_named() {
        let r = record();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let local = Record {
            keys: None,
            placed_by: String::new(),
            ..record()
        };
        assert_eq!(Record::decode(&local.encode()).unwrap(), local);
        for (text, why) in [
            ("", "not a suspended"),
            ("colony suspended 1\nuser\talice\n", "no name"),
            ("colony suspended 1\nport\t99999\n", "port"),
            ("colony suspended 1\nroot\tnothex\n", "root"),
            ("colony suspended 1\ncolour\tblue\n", "unknown attribute"),
            ("colony suspended 1\nno tab here\n", "without a tab"),
        ] {
            let err = Record::decode(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let both = format!("{}keys\tregistry\n", r.encode());
        assert!(Record::decode(&both).unwrap_err().contains("not both"));
    }

    /// A record with no keys given (a storage node that sent none) read
    /// back as one that follows the users file, and was refused.
    #[test]
    fn a_record_with_no_keys_given_reads_back_and_a_bad_value_is_never_written() {
        let none = Record {
            keys: Some(Vec::new()),
            ..record()
        };
        assert_eq!(Record::decode(&none.encode()).unwrap(), none);
        let dir = tempfile::tempdir().unwrap();
        let bad = Record {
            options: vec!["net=none\nresume\tdeadbeef".into()],
            ..record()
        };
        assert!(keep(dir.path(), &bad).is_err());
        assert!(all(dir.path()).is_empty());
    }

    #[test]
    fn records_are_kept_replaced_listed_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record();
        keep(dir.path(), &r).unwrap();
        r.resume = Score::of(b"later");
        keep(dir.path(), &r).unwrap();
        std::fs::write(dir.path().join("junk.rec"), "garbage").unwrap();
        std::fs::write(dir.path().join("torn.new"), "colony susp").unwrap();
        assert_eq!(all(dir.path()), vec![r.clone()]);
        assert!(!dir.path().join("torn.new").exists());
        drop_record(dir.path(), &r.user, &r.name);
        assert!(all(dir.path()).is_empty());
    }

    #[test]
    fn an_environment_is_idle_only_without_logins_or_work() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut c = Clock::new(t0);
        assert_eq!(
            c.look(0, t0, Some(Duration::ZERO), s(1)),
            Duration::from_secs(1)
        );
        // A login open keeps it awake.
        assert_eq!(c.look(1, t0, Some(Duration::ZERO), s(5)), Duration::ZERO);
        // It left at 6: idle from then.
        assert_eq!(
            c.look(0, s(6), Some(Duration::ZERO), s(8)),
            Duration::from_secs(2)
        );
        // 10 ms of CPU in 2 s is under 2%: still idle.
        let cpu = Duration::from_millis(10);
        assert_eq!(c.look(0, s(6), Some(cpu), s(10)), Duration::from_secs(4));
        // A second of CPU in 2 s is work.
        let cpu = cpu + Duration::from_secs(1);
        assert_eq!(c.look(0, s(6), Some(cpu), s(12)), Duration::ZERO);
        assert_eq!(c.look(0, s(6), Some(cpu), s(15)), Duration::from_secs(3));
        c.reset(s(15));
        assert_eq!(c.look(0, s(6), Some(cpu), s(16)), Duration::from_secs(1));
    }

    #[test]
    fn looks_come_often_enough_and_not_too_often() {
        assert_eq!(
            look_every(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(look_every(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            look_every(Duration::from_secs(3600)),
            Duration::from_secs(15)
        );
    }
}
