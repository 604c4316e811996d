//! A node's configuration: one table of settings that is at once the
//! `colony serve` flags and the configuration file's keys (same names,
//! `--spawn-max 5` and `spawn-max=5`), with each default written once, here.
//!
//! Values come as text from two places, [`Sources::flag`] and
//! [`Sources::read_file`]; a flag wins over the file, except that the
//! repeatable settings (`peer`, `storage`) take every value from both.
//! [`Config::from_sources`] reads each setting through one parser per kind
//! (sizes and durations are the `units` crate's), so a bad value is refused
//! at start, named with where it came from: `node.conf:7: spawn-max=lots:
//! not a whole number`, or `--spawn-max lots: …`.
//!
//! The file stays in ndb form (`key=value` pairs, `#` comments), the Plan 9
//! way: it is the form of the node's other files. Keys written before the
//! table existed (`spawnmax=`, `ramcache=`: the name without its dashes)
//! still work, with a warning in the log that names the new spelling.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cpu::CpuConfig;

/// What kind of value a setting takes, and so which parser reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text (a host name).
    Text,
    /// A file or directory.
    Path,
    /// A listen or dial address: `HOST:PORT`, `tcp!HOST!PORT` or `tls!HOST!PORT`.
    Address,
    /// Bytes: `512M`, `4G` (see the `units` crate).
    Size,
    /// A duration: `30s`, `250ms`, `5m`; bare numbers are seconds.
    Duration,
    /// A whole number within bounds.
    Count { min: u64, max: u64 },
    /// On or off: a bare flag (`--rootful`, or `--rootful=no`); `yes` or
    /// `no` in the file.
    Switch,
    /// `FIRST-LAST` ports.
    Ports,
    /// One of a few words.
    Choice(&'static [&'static str]),
    /// `NAME=ADDRESS`, repeatable.
    Named,
}

impl Kind {
    /// How the value is shown in help and the README's table.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Text => "TEXT",
            Kind::Path => "PATH",
            Kind::Address => "ADDRESS",
            Kind::Size => "SIZE",
            Kind::Duration => "DURATION",
            Kind::Count { .. } => "N",
            Kind::Switch => "yes|no",
            Kind::Ports => "FIRST-LAST",
            Kind::Choice(_) => "WORD",
            Kind::Named => "NAME=ADDRESS",
        }
    }
}

/// One setting: a flag `--NAME` and a file key `NAME=`.
#[derive(Debug)]
pub struct Setting {
    pub name: &'static str,
    pub kind: Kind,
    /// The value when neither a flag nor the file gives one; `None` when
    /// the setting is off or its default is worked out at start (then the
    /// help says what it is).
    pub default: Option<&'static str>,
    /// May be given more than once; every value counts.
    pub repeat: bool,
    /// Left out of `--help` (tuning for tests and benchmarks), though in
    /// the README's table.
    pub hidden: bool,
    pub help: &'static str,
}

const fn setting(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        kind,
        default,
        repeat: false,
        hidden: false,
        help,
    }
}

const fn repeated(name: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        kind: Kind::Named,
        default: None,
        repeat: true,
        hidden: false,
        help,
    }
}

const fn hidden(mut s: Setting) -> Setting {
    s.hidden = true;
    s
}

/// Every setting of a node, in the order `--help` and the README show them.
pub const SETTINGS: &[Setting] = &[
    setting(
        "state",
        Kind::Path,
        None,
        "State directory [default: $COLONY_STATE, else $XDG_STATE_HOME/colony, else /var/lib/colony for root, else ~/.local/state/colony]",
    ),
    setting(
        "role",
        Kind::Choice(&["both", "storage", "cpu"]),
        Some("both"),
        "both: the single node (store, names, front door and environments); storage: store, names and front door, environments placed on the cpu nodes that link to it; cpu: environments for its storage nodes",
    ),
    setting(
        "listen",
        Kind::Address,
        Some("0.0.0.0:16999"),
        "SSH front door address",
    ),
    setting(
        "venti",
        Kind::Address,
        None,
        "Use this venti server instead of the embedded store in the state directory",
    ),
    setting(
        "store",
        Kind::Text,
        None,
        "Keep blocks in s3://BUCKET/PREFIX (packs in an object store, shared by the nodes on the bucket) instead of the embedded store; names and users stay in the state directory",
    ),
    setting(
        "tls",
        Kind::Path,
        None,
        "The node's grid certificate directory: what it links to other nodes with and what its tls! listeners serve",
    ),
    setting(
        "venti-listen",
        Kind::Address,
        None,
        "Also serve the node's block store over the venti protocol here (tcp!127.0.0.1!17034, or tls!HOST!PORT for grid members only); a storage node's cpu nodes read blocks from it",
    ),
    setting(
        "admin-listen",
        Kind::Address,
        None,
        "Serve /metrics and the status page here, e.g. 127.0.0.1:16990; off loopback it needs tls, and only grid certificates are answered",
    ),
    setting(
        "hubs-listen",
        Kind::Address,
        None,
        "Publish the node's requests, replies and events as hubs over 9P here, on loopback only: 9P2000 has no authentication",
    ),
    setting(
        "cpu-listen",
        Kind::Address,
        None,
        "(storage) Accept cpu nodes' control links here, over mutual TLS, e.g. tls!0.0.0.0!17036",
    ),
    repeated(
        "storage",
        "(cpu) A storage node to run environments for: its certificate's name and its cpu-listen address; repeatable",
    ),
    repeated(
        "peer",
        "Replicate to this storage peer: its certificate's name and its replica-listen address (b=tls!10.0.0.2!17035), or venti:NAME=ADDRESS for a plain venti server (blocks only); repeatable",
    ),
    setting(
        "replica-listen",
        Kind::Address,
        None,
        "Accept replication from the grid's storage nodes, and status requests from its members, here over mutual TLS, e.g. tls!0.0.0.0!17035",
    ),
    setting(
        "read-through",
        Kind::Switch,
        Some("no"),
        "Join a grid late: take the peers' names at once and fetch the blocks not yet replicated here from them on demand",
    ),
    hidden(setting(
        "replica-batch",
        Kind::Count {
            min: 1,
            max: 1 << 20,
        },
        Some("4096"),
        "Blocks per replication batch: what a kill may cost again",
    )),
    setting(
        "spawn-max",
        Kind::Count {
            min: 0,
            max: 100_000,
        },
        Some("5"),
        "Live environments allowed at once",
    ),
    setting(
        "ram-cache",
        Kind::Size,
        Some("100M"),
        "RAM cache of an environment's file system (spawn)",
    ),
    setting(
        "disk-cache",
        Kind::Size,
        Some("1G"),
        "Disk cache file of an environment's file system (spawndisk)",
    ),
    setting(
        "block-cache",
        Kind::Size,
        Some("4G"),
        "(cpu) Bound of the block cache on disk that every environment of this node shares",
    ),
    setting(
        "block-wait",
        Kind::Duration,
        Some("30s"),
        "(cpu) How long a file read waits for an unreachable storage node before it fails with EIO",
    ),
    setting(
        "working-set-window",
        Kind::Duration,
        Some("10s"),
        "(cpu) How long after a start its reads are recorded as its root's working set (0: not recorded)",
    ),
    setting(
        "idle-suspend",
        Kind::Duration,
        Some("30m"),
        "How long an environment may be idle (no login, under 2% of a core) before it is suspended to a resume point until the next login; 0: never, else at least 1s (a spawn may say idle=DURATION|never)",
    ),
    setting(
        "gc-grace",
        Kind::Duration,
        Some("24h"),
        "(storage) A block written or touched (written again, claimed by a peer) within this long is never collected, named or not: the time an archive has to be named (at least 1s). On a bucket, a block written again whose pack is older is stored again",
    ),
    setting(
        "gc-memory",
        Kind::Size,
        Some("256M"),
        "(storage) The memory a garbage collection may use, whatever the store's size (a larger store keeps a little more garbage)",
    ),
    setting(
        "gc-every",
        Kind::Duration,
        Some("24h"),
        "(storage) How often the node collects its own log's garbage by itself (0: only when `colony gc` asks; a bucket is collected only when asked)",
    ),
    setting(
        "env-ports",
        Kind::Ports,
        Some("20001-20100"),
        "Ports for the environments' SSH logins",
    ),
    setting(
        "publish-ports",
        Kind::Ports,
        Some("30001-30100"),
        "Node ports that `spawn … publish=PORT` forwards into environments",
    ),
    setting(
        "public-host",
        Kind::Text,
        None,
        "Host name in the login commands spawn prints [default: this host's name]",
    ),
    setting(
        "env-memory",
        Kind::Size,
        Some("512M"),
        "Default memory limit of an environment",
    ),
    setting(
        "env-pids",
        Kind::Count {
            min: 16,
            max: 1 << 22,
        },
        Some("512"),
        "Default process limit of an environment",
    ),
    setting(
        "env-memory-max",
        Kind::Size,
        Some("2G"),
        "The most memory a spawn may ask for (memory=)",
    ),
    setting(
        "env-pids-max",
        Kind::Count {
            min: 16,
            max: 1 << 22,
        },
        Some("2048"),
        "The most processes a spawn may ask for (pids=)",
    ),
    setting(
        "env-cpu-max",
        Kind::Count {
            min: 1,
            max: 10_000,
        },
        Some("1000"),
        "The highest CPU weight a spawn may ask for (cpu=; 100 is a fair share)",
    ),
    setting(
        "allow-host-net",
        Kind::Switch,
        Some("no"),
        "Allow `spawn … net=host`: an environment on the node's own network (it can listen on the node's addresses and reach its loopback services)",
    ),
    setting(
        "rootful",
        Kind::Switch,
        Some("no"),
        "Make environments rootful unless a spawn says userns=yes: root inside is the host's root, bounded by capabilities and the syscall filter",
    ),
    setting(
        "allow-rootful",
        Kind::Switch,
        Some("no"),
        "Allow `spawn … userns=no` (a rootful environment) on a rootless node",
    ),
    hidden(setting(
        "login-grace",
        Kind::Duration,
        Some("60s"),
        "How long an SSH connection to the front door may take to log in",
    )),
    hidden(setting(
        "tls-timeout",
        Kind::Duration,
        Some("10s"),
        "How long a peer may take to finish its TLS handshake",
    )),
];

/// The setting called `name`.
pub fn setting_named(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The setting a key written before the table names, if it is one: the
/// setting's name without dashes (`spawnmax` → `spawn-max`).
fn old_spelling(key: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.name.contains('-') && s.name.replace('-', "") == key)
}

/// A configuration refused, with where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where a value was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    File { path: PathBuf, line: usize },
    Default,
}

/// A value as given, and where.
#[derive(Debug, Clone)]
struct Given {
    value: String,
    origin: Origin,
}

impl Given {
    /// `FILE:LINE: key=value` or `--key value`: how an error names it.
    fn describe(&self, name: &str) -> String {
        match &self.origin {
            Origin::Flag => format!("--{name} {}", self.value),
            Origin::File { path, line } => {
                format!("{}:{line}: {name}={}", path.display(), self.value)
            }
            Origin::Default => format!("the default {name}={}", self.value),
        }
    }

    fn refuse(&self, name: &str, why: impl fmt::Display) -> ConfigError {
        ConfigError(format!("{}: {why}", self.describe(name)))
    }
}

/// The text of every setting given, from flags and a file.
#[derive(Debug, Default)]
pub struct Sources {
    flags: BTreeMap<&'static str, Vec<Given>>,
    file: BTreeMap<&'static str, Vec<Given>>,
    /// Old spellings met in the file, to be logged: (file:line, old, new).
    pub old_spellings: Vec<(String, String, &'static str)>,
    /// Settings read so far (a test checks that [`Config::from_sources`]
    /// reads every one, so none is accepted and then ignored).
    read: Mutex<BTreeSet<&'static str>>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }

    /// A flag's value as the command line gave it.
    pub fn flag(&mut self, name: &str, value: impl Into<String>) -> Result<(), ConfigError> {
        let setting =
            setting_named(name).ok_or_else(|| ConfigError(format!("--{name}: no such setting")))?;
        let given = Given {
            value: value.into(),
            origin: Origin::Flag,
        };
        let values = self.flags.entry(setting.name).or_default();
        if !setting.repeat && !values.is_empty() {
            return Err(given.refuse(name, "given twice"));
        }
        values.push(given);
        Ok(())
    }

    /// Reads the configuration file at `path`.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("reading the configuration {}: {e}", path.display()))
        })?;
        self.read_text(path, &text)
    }

    /// Reads configuration `text`, named `path` in what it says.
    pub fn read_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let pairs = ndb::located_pairs(&path.display().to_string(), text)
            .map_err(|e| ConfigError(format!("{}:{}: {}", e.file, e.line, e.why)))?;
        for pair in pairs {
            let at = format!("{}:{}", path.display(), pair.line);
            let setting = match setting_named(&pair.attr) {
                Some(s) => s,
                None => match old_spelling(&pair.attr) {
                    Some(s) => {
                        self.old_spellings
                            .push((at.clone(), pair.attr.clone(), s.name));
                        s
                    }
                    None => {
                        return Err(ConfigError(format!(
                            "{at}: unknown key {:?}{} (the keys are the flags of `colony serve --help`, without the dashes in front)",
                            pair.attr,
                            match closest(&pair.attr) {
                                Some(near) => format!("; did you mean {near:?}?"),
                                None => String::new(),
                            }
                        )));
                    }
                },
            };
            let given = Given {
                value: pair.value,
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line: pair.line,
                },
            };
            let values = self.file.entry(setting.name).or_default();
            if !setting.repeat
                && let Some(first) = values.first()
            {
                let first_line = match &first.origin {
                    Origin::File { line, .. } => *line,
                    _ => 0,
                };
                return Err(given.refuse(
                    setting.name,
                    format!("given twice (first on line {first_line})"),
                ));
            }
            values.push(given);
        }
        Ok(())
    }

    /// The value that counts for a single setting: the flag's, else the
    /// file's, else the default.
    fn one(&self, name: &'static str) -> Option<Given> {
        let setting = self.mark(name);
        self.flags
            .get(name)
            .or_else(|| self.file.get(name))
            .and_then(|v| v.first().cloned())
            .or_else(|| {
                setting.default.map(|d| Given {
                    value: d.to_string(),
                    origin: Origin::Default,
                })
            })
    }

    /// Every value of a repeatable setting, the flags' first.
    fn all(&self, name: &'static str) -> Vec<Given> {
        self.mark(name);
        let mut all = self.flags.get(name).cloned().unwrap_or_default();
        all.extend(self.file.get(name).cloned().unwrap_or_default());
        all
    }

    fn mark(&self, name: &'static str) -> &'static Setting {
        let setting = setting_named(name).unwrap_or_else(|| panic!("{name} is not in SETTINGS"));
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(setting.name);
        setting
    }

    fn text(&self, name: &'static str) -> Option<String> {
        self.one(name).map(|g| g.value)
    }

    fn path(&self, name: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.one(name) {
            Some(g) if g.value.is_empty() => Err(g.refuse(name, "an empty path")),
            Some(g) => Ok(Some(PathBuf::from(g.value))),
            None => Ok(None),
        }
    }

    fn address(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.one(name) {
            Some(g) => {
                link::dial::parse_transport(&g.value).map_err(|e| g.refuse(name, e))?;
                Ok(Some(g.value))
            }
            None => Ok(None),
        }
    }

    fn required<T>(&self, name: &'static str, got: Option<T>) -> T {
        got.unwrap_or_else(|| panic!("{name} has a default in SETTINGS"))
    }

    /// `idle-suspend`: 0 for never, else at least what a spawn may ask.
    fn idle_suspend(&self) -> Result<Option<Duration>, ConfigError> {
        let name = "idle-suspend";
        let d = self.duration(name)?;
        if !d.is_zero() && d < cpu::idle::MIN_IDLE {
            let g = self.required(name, self.one(name));
            return Err(g.refuse(name, "at least 1s, or 0 for never"));
        }
        Ok(Some(d).filter(|d| !d.is_zero()))
    }

    /// `gc-grace`: at least a second (none would sweep an upload before
    /// its name is bound, and copy every block written again).
    fn gc_grace(&self) -> Result<Duration, ConfigError> {
        let name = "gc-grace";
        let d = self.duration(name)?;
        if d < Duration::from_secs(1) {
            let g = self.required(name, self.one(name));
            return Err(g.refuse(name, "at least 1s"));
        }
        Ok(d)
    }

    fn size(&self, name: &'static str) -> Result<u64, ConfigError> {
        let g = self.required(name, self.one(name));
        units::parse_size(&g.value).map_err(|e| g.refuse(name, e))
    }

    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let g = self.required(name, self.one(name));
        units::parse_duration(&g.value).map_err(|e| g.refuse(name, e))
    }

    fn count(&self, name: &'static str) -> Result<u64, ConfigError> {
        let setting = self.mark(name);
        let Kind::Count { min, max } = setting.kind else {
            panic!("{name} is not a count");
        };
        let g = self.required(name, self.one(name));
        let n: u64 = g
            .value
            .trim()
            .parse()
            .map_err(|_| g.refuse(name, "not a whole number"))?;
        if !(min..=max).contains(&n) {
            return Err(g.refuse(name, format!("out of range: {min} to {max}")));
        }
        Ok(n)
    }

    fn switch(&self, name: &'static str) -> Result<bool, ConfigError> {
        let g = self.required(name, self.one(name));
        match g.value.as_str() {
            "yes" | "" => Ok(true),
            "no" => Ok(false),
            _ => Err(g.refuse(name, "say yes or no")),
        }
    }

    fn ports(&self, name: &'static str) -> Result<(u16, u16), ConfigError> {
        let g = self.required(name, self.one(name));
        let bad = || g.refuse(name, "ports are FIRST-LAST, e.g. 20001-20100");
        let (a, b) = g.value.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(g.refuse(name, "an empty range of ports"));
        }
        Ok((first, last))
    }

    fn choice(&self, name: &'static str) -> Result<String, ConfigError> {
        let setting = self.mark(name);
        let Kind::Choice(words) = setting.kind else {
            panic!("{name} is not a choice");
        };
        let g = self.required(name, self.one(name));
        if !words.contains(&g.value.as_str()) {
            return Err(g.refuse(name, format!("use one of {}", words.join(", "))));
        }
        Ok(g.value)
    }

    /// Every setting read by [`Config::from_sources`] so far.
    pub fn read_so_far(&self) -> BTreeSet<&'static str> {
        self.read.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The setting whose name is nearest `key` (a slip of the keyboard).
fn closest(key: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .map(|s| (edit_distance(key, s.name), s.name))
        .filter(|&(d, name)| d <= 2.max(name.len() / 4))
        .min()
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// What a node does in a grid of storage and cpu nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The single node: store, names, front door and environments.
    Both,
    /// Store, names and front door; environments on its cpu nodes.
    Storage,
    /// Environments for the storage nodes it links to.
    Cpu,
}

/// A node's configuration, every value checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Set by the binary from the environment when not given.
    pub state: Option<PathBuf>,
    pub role: Role,
    pub listen: String,
    pub venti: Option<String>,
    pub store: Option<String>,
    /// The object store's endpoint and credentials for `store`: set by the
    /// binary, which reads them from the environment and the S3 settings
    /// file (never from the node's configuration or command line).
    pub s3: Option<s3store::Settings>,
    pub tls: Option<PathBuf>,
    pub tls_timeout: Duration,
    pub venti_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub hubs_listen: Option<String>,
    pub cpu_listen: Option<String>,
    pub storage: Vec<cpu::agent::StorageNode>,
    pub peers: Vec<replica::Peer>,
    pub replica_listen: Option<String>,
    pub read_through: bool,
    pub replica_batch: usize,
    pub block_cache: u64,
    pub block_wait: Duration,
    pub login_grace: Duration,
    /// Garbage collection: the grace period, its memory, how often.
    pub gc_grace: Duration,
    pub gc_memory: u64,
    pub gc_every: Option<Duration>,
    /// What the node's environments get (spawn-max, caches, ports, limits).
    pub cpu: CpuConfig,
}

impl Config {
    /// Reads and checks every setting.
    pub fn from_sources(s: &Sources) -> Result<Config, ConfigError> {
        let role = match s.choice("role")?.as_str() {
            "storage" => Role::Storage,
            "cpu" => Role::Cpu,
            _ => Role::Both,
        };
        let mut cpu = CpuConfig {
            spawn_max: s.count("spawn-max")? as usize,
            ram_cache: s.size("ram-cache")?,
            disk_cache: s.size("disk-cache")?,
            env_ports: s.ports("env-ports")?,
            publish_ports: s.ports("publish-ports")?,
            allow_host_net: s.switch("allow-host-net")?,
            userns: !s.switch("rootful")?,
            allow_rootful: s.switch("allow-rootful")?,
            working_set_window: s.duration("working-set-window")?,
            idle_suspend: s.idle_suspend()?,
            ..CpuConfig::default()
        };
        if let Some(host) = s.text("public-host") {
            cpu.public_host = host;
        }
        cpu.limits.memory = s.size("env-memory")?;
        cpu.limits.pids = s.count("env-pids")?;
        cpu.ceilings.memory = s.size("env-memory-max")?;
        cpu.ceilings.pids = s.count("env-pids-max")?;
        cpu.ceilings.cpu_weight = s.count("env-cpu-max")?;
        // The defaults are always allowed.
        cpu.ceilings = cpu.ceilings.at_least(&cpu.limits);
        let mut storage = Vec::new();
        for g in s.all("storage") {
            storage.push(
                cpu::agent::StorageNode::parse(&g.value).map_err(|e| g.refuse("storage", e))?,
            );
        }
        let mut peers = Vec::new();
        for g in s.all("peer") {
            peers.push(replica::Peer::parse(&g.value).map_err(|e| g.refuse("peer", e))?);
        }
        let store = s.text("store");
        if let Some(url) = &store
            && !s3store::is_url(url)
        {
            return Err(ConfigError(format!(
                "store={url}: give s3://BUCKET/PREFIX; the embedded store is the state directory's"
            )));
        }
        Ok(Config {
            state: s.path("state")?,
            role,
            listen: s.required("listen", s.address("listen")?),
            venti: s.address("venti")?,
            store,
            s3: None,
            tls: s.path("tls")?,
            tls_timeout: s.duration("tls-timeout")?,
            venti_listen: s.address("venti-listen")?,
            admin_listen: s.address("admin-listen")?,
            hubs_listen: s.address("hubs-listen")?,
            cpu_listen: s.address("cpu-listen")?,
            storage,
            peers,
            replica_listen: s.address("replica-listen")?,
            read_through: s.switch("read-through")?,
            replica_batch: s.count("replica-batch")? as usize,
            block_cache: s.size("block-cache")?,
            block_wait: s.duration("block-wait")?,
            login_grace: s.duration("login-grace")?,
            gc_grace: s.gc_grace()?,
            gc_memory: s.size("gc-memory")?,
            gc_every: Some(s.duration("gc-every")?).filter(|d| !d.is_zero()),
            cpu,
        })
    }
}

/// The settings as a Markdown table: what the README shows (a test keeps
/// the two the same).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| flag and key | value | default | what it does |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let value = match s.kind {
            Kind::Choice(words) => words.join(" \\| "),
            k => k.placeholder().replace('|', "\\|"),
        };
        out.push_str(&format!(
            "| `{}`{} | {value} | {} | {} |\n",
            s.name,
            if s.repeat { " (repeatable)" } else { "" },
            s.default.map_or("—".to_string(), |d| format!("`{d}`")),
            s.help.replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(text: &str) -> Result<Config, ConfigError> {
        let mut s = Sources::new();
        s.read_text(Path::new("node.conf"), text)?;
        Config::from_sources(&s)
    }

    #[test]
    fn every_setting_is_read_so_none_is_taken_and_ignored() {
        let s = Sources::new();
        Config::from_sources(&s).unwrap();
        let all: BTreeSet<_> = SETTINGS.iter().map(|s| s.name).collect();
        assert_eq!(s.read_so_far(), all);
    }

    #[test]
    fn the_defaults_are_the_libraries_defaults() {
        let ours = Config::from_sources(&Sources::new()).unwrap();
        let library = CpuConfig::default();
        assert_eq!(ours.cpu.spawn_max, library.spawn_max);
        assert_eq!(ours.cpu.ram_cache, library.ram_cache);
        assert_eq!(ours.cpu.disk_cache, library.disk_cache);
        assert_eq!(ours.cpu.env_ports, library.env_ports);
        assert_eq!(ours.cpu.publish_ports, library.publish_ports);
        assert_eq!(ours.cpu.limits, library.limits);
        assert_eq!(ours.cpu.ceilings, library.ceilings);
        assert_eq!(ours.cpu.userns, library.userns);
        assert_eq!(ours.replica_batch, replica::BATCH_RECORDS);
        assert_eq!(ours.tls_timeout, link::tls::HANDSHAKE_TIMEOUT);
        assert_eq!(ours.login_grace, grid::ssh_server::LOGIN_GRACE);
        assert_eq!(
            ours.listen,
            format!("0.0.0.0:{}", storage::frontdoor::DEFAULT_PORT)
        );
    }

    #[test]
    fn a_file_sets_every_kind() {
        let c = from_file(
            "# a storage node\nrole=storage listen=127.0.0.1:2222\n\tspawn-max=7 ram-cache=1MiB block-wait=1.5s\n\nrootful=yes env-ports=100-200\npeer=b=tls!10.0.0.2!17035\npeer=c=tls!10.0.0.3!17035\nstorage=s1=tls!10.0.0.1!17036",
        )
        .unwrap();
        assert_eq!(c.role, Role::Storage);
        assert_eq!(c.listen, "127.0.0.1:2222");
        assert_eq!(c.cpu.spawn_max, 7);
        assert_eq!(c.cpu.ram_cache, 1 << 20);
        assert_eq!(c.block_wait, Duration::from_millis(1500));
        assert!(!c.cpu.userns);
        assert_eq!(c.cpu.env_ports, (100, 200));
        assert_eq!(c.peers.len(), 2);
        // The last line has no newline, and still counts.
        assert_eq!(c.storage.len(), 1);
    }

    /// Before, `spawnmax=lots`, `envpids=many` and `blockwait=soon` were
    /// dropped without a word and the defaults used.
    #[test]
    fn a_bad_value_is_refused_naming_file_line_and_key() {
        for (text, want) in [
            (
                "listen=:1\nspawn-max=lots\n",
                "node.conf:2: spawn-max=lots: not a whole number",
            ),
            (
                "spawnmax=lots\n",
                "node.conf:1: spawn-max=lots: not a whole number",
            ),
            (
                "env-pids=many\n",
                "node.conf:1: env-pids=many: not a whole number",
            ),
            (
                "block-wait=soon\n",
                "node.conf:1: block-wait=soon: \"soon\" is not a duration",
            ),
            (
                "ram-cache=lots\n",
                "node.conf:1: ram-cache=lots: \"lots\" is not a size",
            ),
            (
                "rootful=maybe\n",
                "node.conf:1: rootful=maybe: say yes or no",
            ),
            (
                "env-ports=9-1\n",
                "node.conf:1: env-ports=9-1: an empty range of ports",
            ),
            (
                "role=boss\n",
                "node.conf:1: role=boss: use one of both, storage, cpu",
            ),
            (
                "env-cpu-max=0\n",
                "node.conf:1: env-cpu-max=0: out of range: 1 to 10000",
            ),
            (
                "venti-listen=tls!a!b!c\n",
                "node.conf:1: venti-listen=tls!a!b!c: ",
            ),
            ("peer=nobody\n", "node.conf:1: peer=nobody: "),
            ("gc-grace=0\n", "node.conf:1: gc-grace=0: at least 1s"),
            ("store=/tmp/x\n", "store=/tmp/x: give s3://BUCKET/PREFIX"),
            (
                "spawn-max=1\nspawn-max=2\n",
                "node.conf:2: spawn-max=2: given twice (first on line 1)",
            ),
        ] {
            let err = from_file(text).unwrap_err().0;
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_naming_file_and_line() {
        let err = from_file("listen=:1\n\n# note\nspawn-maxx=3\n")
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("node.conf:4: unknown key \"spawn-maxx\"")
                && err.contains("did you mean \"spawn-max\"?"),
            "{err}"
        );
        let err = from_file("colour=blue\n").unwrap_err().0;
        assert!(
            err.starts_with("node.conf:1: unknown key \"colour\"") && !err.contains("did you mean"),
            "{err}"
        );
    }

    #[test]
    fn malformed_ndb_is_refused_with_its_line() {
        let err = from_file("listen=:1\n\n  spawn-max=3\n").unwrap_err().0;
        assert!(err.starts_with("node.conf:3: continuation line"), "{err}");
    }

    #[test]
    fn old_spellings_still_work_and_are_reported() {
        let mut s = Sources::new();
        s.read_text(
            Path::new("old.conf"),
            "spawnmax=9 allowhostnet=yes\nblockwait=45\n",
        )
        .unwrap();
        let c = Config::from_sources(&s).unwrap();
        assert_eq!(c.cpu.spawn_max, 9);
        assert!(c.cpu.allow_host_net);
        assert_eq!(c.block_wait, Duration::from_secs(45));
        let told: Vec<_> = s
            .old_spellings
            .iter()
            .map(|(at, old, new)| format!("{at} {old} {new}"))
            .collect();
        assert_eq!(
            told,
            [
                "old.conf:1 spawnmax spawn-max",
                "old.conf:1 allowhostnet allow-host-net",
                "old.conf:2 blockwait block-wait"
            ]
        );
    }

    #[test]
    fn flags_win_over_the_file_and_lists_take_both() {
        let mut s = Sources::new();
        s.flag("spawn-max", "2").unwrap();
        s.flag("peer", "a=tls!h!1").unwrap();
        s.read_text(Path::new("f"), "spawn-max=9\npeer=b=tls!h!2\n")
            .unwrap();
        let c = Config::from_sources(&s).unwrap();
        assert_eq!(c.cpu.spawn_max, 2);
        assert_eq!(c.peers.len(), 2);
        let mut s = Sources::new();
        s.flag("spawn-max", "x").unwrap();
        assert_eq!(
            Config::from_sources(&s).unwrap_err().0,
            "--spawn-max x: not a whole number"
        );
        assert!(s.flag("spawn-max", "3").is_err());
        assert!(Sources::new().flag("colour", "x").is_err());
    }

    #[test]
    fn a_ceiling_below_the_default_is_raised_to_it() {
        let c = from_file("env-memory=3G env-memory-max=1G\n").unwrap();
        assert_eq!(c.cpu.ceilings.memory, 3 << 30);
    }
}
