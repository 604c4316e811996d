//! The cpu service: environments on this machine. Each is a fossil over a
//! saved root, mounted through FUSE, with processes in namespaces of their
//! own on it ([`env`]) and an SSH login for its owner.
//!
//! The service neither knows names nor users' records: whoever asks (the
//! storage service of the same node, or a storage node over the control
//! link, [`agent`]) has already checked that the user may spawn the root,
//! and hands over the root's score, the store to read it from and the keys
//! that may log in.

pub mod agent;
pub mod env;
pub mod idle;
pub mod options;
pub mod rootfs;
pub mod services;
mod suspend;
pub mod working_set;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fossil::{CacheConfig, Fs};
use grid::ssh_server::{Sessions, Stop};
use russh::keys::ssh_key::PublicKey;
use venti::{BlockStore, Score};

use env::{Environment, Limits, Network, Published, Spec};
use grid::error::{GridError, GridResult};
use grid::state::StateDir;
use grid::users::Users;
use options::SpawnOptions;
use services::door::Door;

/// Settings of the environments a machine runs.
#[derive(Debug, Clone)]
pub struct CpuConfig {
    /// Live environments allowed at once.
    pub spawn_max: usize,
    /// RAM cache of `spawn`.
    pub ram_cache: u64,
    /// Disk cache file of `spawndisk`.
    pub disk_cache: u64,
    /// Default resource limits of an environment (a spawn may override them).
    pub limits: Limits,
    /// The most a spawn may ask for; a spawn above them is refused.
    pub ceilings: Limits,
    /// Ports for environments' SSH logins, first..=last, reused after boom.
    pub env_ports: (u16, u16),
    /// Address the environments' logins listen on.
    pub env_listen: String,
    /// Host name to put in the login command `spawn` replies with.
    pub public_host: String,
    /// The colony executable. The environments' helper processes run from
    /// `colony-env` beside it when that was built with it, else from it
    /// (see [`env::helper`]).
    pub helper: PathBuf,
    /// Whether `spawn … net=host` (the node's network, shared) is allowed.
    pub allow_host_net: bool,
    /// Node ports that `publish=PORT` forwards into environments, first..=last.
    pub publish_ports: (u16, u16),
    /// Whether environments are rootless (a user namespace of their own)
    /// unless a spawn says otherwise.
    pub userns: bool,
    /// Whether `spawn … userns=no` (root inside is the host's root, bounded
    /// by capabilities and the syscall filter) is allowed.
    pub allow_rootful: bool,
    /// How long after a start its reads are recorded as its root's working
    /// set (zero: not recorded); see [`working_set`].
    pub working_set_window: std::time::Duration,
    /// How long an environment may be idle before it is suspended, unless
    /// its spawn says (`idle=`); never if none.
    pub idle_suspend: Option<std::time::Duration>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            spawn_max: 5,
            ram_cache: 100 << 20,
            disk_cache: 1 << 30,
            limits: Limits::default(),
            ceilings: Limits::default_ceilings(),
            env_ports: (20001, 20100),
            env_listen: "0.0.0.0".into(),
            public_host: host_name(),
            helper: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("colony")),
            allow_host_net: false,
            publish_ports: (30001, 30100),
            userns: true,
            allow_rootful: false,
            working_set_window: working_set::WINDOW,
            idle_suspend: Some(DEFAULT_IDLE_SUSPEND),
        }
    }
}

/// How long an environment may be idle before it is suspended, by default.
pub const DEFAULT_IDLE_SUSPEND: Duration = Duration::from_secs(30 * 60);

/// A file system's error as the grid's: what the user is told.
pub(crate) fn fs_error(e: fossil::FsError) -> GridError {
    GridError::failed(format!("file system: {e}"))
}

/// This machine's host name, or `localhost`.
pub fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname into a buffer of the given length.
    if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0 {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// The keys that may log in to an environment as its owner.
#[derive(Clone)]
pub enum OwnerKeys {
    /// As the node's users file says at each login (a single node, where
    /// the file is local).
    Registry(Users),
    /// The owner's keys as the storage node sent them with the spawn.
    Given(Vec<PublicKey>),
}

impl OwnerKeys {
    /// Parses OpenSSH public key lines; a line that is not one is an error.
    pub fn parse(lines: &[String]) -> GridResult<OwnerKeys> {
        let keys = lines
            .iter()
            .map(|l| {
                PublicKey::from_openssh(l.trim())
                    .map_err(|e| GridError::refused(format!("a login key of the owner: {e}")))
            })
            .collect::<GridResult<Vec<_>>>()?;
        Ok(OwnerKeys::Given(keys))
    }

    /// The keys as a suspended environment's record keeps them (none: the
    /// users file's, at each login).
    fn to_lines(&self) -> Option<Vec<String>> {
        match self {
            OwnerKeys::Registry(_) => None,
            OwnerKeys::Given(keys) => {
                Some(keys.iter().filter_map(|k| k.to_openssh().ok()).collect())
            }
        }
    }

    pub fn admits(&self, owner: &str, key: &PublicKey) -> bool {
        match self {
            OwnerKeys::Registry(users) => {
                matches!(users.owner_of(key), Ok(Some(user)) if user == owner)
            }
            OwnerKeys::Given(keys) => keys.iter().any(|k| k.key_data() == key.key_data()),
        }
    }
}

/// A spawn, as the storage service hands it over.
pub struct SpawnRequest<'a> {
    /// What to spawn, as the front door took it.
    pub spawn: &'a control::Spawn,
    pub keys: OwnerKeys,
    /// Where the root's blocks are read from and saves are written to.
    pub store: Arc<dyn BlockStore>,
    /// How `status` tells of N blocks the store had to fetch from
    /// elsewhere (none: it does not).
    pub fetched_note: Option<fn(u64) -> String>,
    /// The storage node that placed it (empty on a single node): its store
    /// (see [`Environments::provide_store`]) is read when it wakes.
    pub placed_by: &'a str,
}

/// A live environment: a fossil over a saved root, mounted for its owner,
/// with processes running in it and an SSH login of its own.
struct Env {
    spawned_from: String,
    root: Score,
    fs: Arc<Fs>,
    session: Option<fusefs::BackgroundSession>,
    mountpoint: PathBuf,
    disk: Option<PathBuf>,
    started: Instant,
    environment: Option<Arc<Environment>>,
    door_stop: Option<tokio::sync::oneshot::Sender<Stop>>,
    port: u16,
    login: String,
    network: Network,
    published: Vec<Published>,
    /// A rootless environment's claim on its host ids; released after the
    /// environment and its mount have ended (the fields drop last).
    ids: Option<env::userns::Lease>,
    /// Blocks its file system had to fetch from elsewhere.
    fetched: Arc<AtomicU64>,
    fetched_note: Option<fn(u64) -> String>,
    /// What it was spawned with (its options as given, its cache kind, who
    /// may log in, who placed it), to respawn it after a suspend.
    options: Vec<String>,
    keys: OwnerKeys,
    placed_by: String,
    /// Suspended after this long idle; never if none.
    idle: Option<Duration>,
    clock: idle::Clock,
    /// When it is next looked at for idleness.
    next_look: Instant,
    /// Respawned by a connection to its suspended login (which sleeps
    /// again soon if nobody logs in, [`idle::UNPROVEN_IDLE`]).
    woken: bool,
    /// Its login: the door, the port's listener (kept through a suspend)
    /// and the task serving it.
    door: Option<Arc<Door>>,
    listener: Option<Arc<tokio::net::TcpListener>>,
    door_task: Option<tokio::task::JoinHandle<Option<Sessions>>>,
    /// Sessions of a door paused by a suspend that did not go ahead (a
    /// login came): they go on, and end with the environment.
    paused: Vec<Sessions>,
}

impl Env {
    /// Whether it can be suspended at all: runs (a job's one-time login)
    /// end by themselves, and a published port is reached without a
    /// login, so nothing would wake it.
    fn can_sleep(&self) -> bool {
        self.published.is_empty() && self.door.as_ref().is_some_and(|d| d.run_key.is_none())
    }

    /// Whether it is suspended once idle for its idle time.
    fn may_sleep(&self) -> bool {
        self.idle.is_some() && self.can_sleep()
    }
}

/// The store as one environment sees it, counting the blocks that came
/// from elsewhere (a peer, a storage node) rather than local disk.
struct EnvStore {
    inner: Arc<dyn BlockStore>,
    fetched: Arc<AtomicU64>,
}

impl BlockStore for EnvStore {
    fn read(
        &self,
        score: &Score,
        ty: venti::BlockType,
    ) -> Result<Option<Vec<u8>>, venti::StoreError> {
        Ok(self.inner.read_sourced(score, ty)?.map(|(data, far)| {
            if far {
                self.fetched.fetch_add(1, Ordering::Relaxed);
            }
            data
        }))
    }
    fn write(&self, ty: venti::BlockType, data: &[u8]) -> Result<Score, venti::StoreError> {
        self.inner.write(ty, data)
    }
    fn sync(&self) -> Result<(), venti::StoreError> {
        self.inner.sync()
    }
}

/// One environment as [`Environments::running`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub user: String,
    pub name: String,
    pub root: Score,
    pub login: String,
    /// The storage node that placed it (empty on a single node).
    pub placed_by: String,
    /// Suspended (not still being suspended): it holds only its login
    /// port until the next login.
    pub suspended: bool,
}

/// The environments of this machine.
pub struct Environments {
    state: StateDir,
    config: CpuConfig,
    envs: Mutex<HashMap<(String, String), Env>>,
    /// Environments being spawned: counted against the limit and held
    /// against a second spawn of the same name, while their mounts and
    /// namespaces start without the lock (spawns run side by side).
    /// Locked after `envs` when both are.
    starting: Mutex<HashSet<(String, String)>>,
    /// Suspended environments, and those being suspended ([`suspend`]).
    /// Locked after `envs` and `starting` when they are.
    sleepers: Mutex<HashMap<(String, String), suspend::Sleeper>>,
    /// The store of each storage node that placed environments here (""
    /// on a single node), which a suspended one is respawned from.
    stores: Mutex<HashMap<String, Arc<dyn BlockStore>>>,
    /// Runs the environments' SSH logins. Always set; taken by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    host_key: russh::keys::PrivateKey,
    /// The executable the environments' helper processes run from.
    helper: PathBuf,
    /// Itself, for the tasks that wake suspended environments and the
    /// thread that looks for idle ones (which end when it goes).
    me: Weak<Environments>,
    /// The node is shutting down: nothing wakes, and what a suspend or a
    /// wake finishes now is kept for the next start.
    closing: std::sync::atomic::AtomicBool,
    /// Told when environments are suspended or woken (their count changed
    /// without a spawn or boom): the cpu node tells its storage nodes.
    on_change: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

/// What an environment is made of: a new spawn's, or a suspended one's
/// to wake.
struct Launch<'a> {
    user: &'a str,
    name: &'a str,
    /// The root it was first spawned from (which `status` shows).
    root: Score,
    /// The tree to mount: the root, or a resume point.
    from: Score,
    disk: bool,
    /// Its options as given, and as this node read them.
    words: Vec<String>,
    options: SpawnOptions,
    keys: OwnerKeys,
    run_key: Option<PublicKey>,
    store: Arc<dyn BlockStore>,
    fetched_note: Option<fn(u64) -> String>,
    placed_by: &'a str,
    port: LoginPort<'a>,
    /// What its logins are told first, if anything.
    banner: Option<String>,
}

/// A name held as starting (spawning or waking) until this drops: counted
/// against the limit, and held against a second spawn of the same name.
struct Starting<'a>(&'a Mutex<HashSet<(String, String)>>, (String, String));

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Where a new environment's login listens.
enum LoginPort<'a> {
    /// A free port of the node's range, not one of these.
    Free(&'a [u16]),
    /// The port a suspended environment kept, and the login that woke it.
    Kept {
        listener: Arc<tokio::net::TcpListener>,
        port: u16,
        woken_by: (tokio::net::TcpStream, std::net::SocketAddr),
    },
}

impl Drop for Environments {
    fn drop(&mut self) {
        // A runtime may not be dropped on an async thread (the service held
        // by a task that ends with its runtime): drop it on one of its own.
        if let Some(rt) = self.runtime.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(rt));
        }
    }
}

impl Environments {
    /// The environments of this machine, with a thread that suspends idle
    /// ones; suspended ones the node's state records are listening again.
    pub fn new(state: StateDir, config: CpuConfig) -> GridResult<Arc<Environments>> {
        clear_stale_mounts(&state.root.join("mnt"));
        // The roots are mounted for every user (the kernel checks
        // permissions as for any root), and their archived owners may be
        // ids of host users or of `nobody`: only root may reach them.
        let mounts = state.root.join("mnt");
        std::fs::create_dir_all(&mounts)
            .and_then(|()| {
                std::fs::set_permissions(
                    &mounts,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .map_err(|e| GridError::io(format!("making {} private", mounts.display()), e))?;
        clear_stale_cgroups(&node_id(&state));
        let host_key = grid::ssh::host_key(&state.host_key())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("env-logins")
            .enable_all()
            .build()
            .map_err(|e| GridError::io("starting the environments' runtime", e))?;
        let envs = Arc::new_cyclic(|me| Environments {
            state,
            envs: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
            sleepers: Mutex::default(),
            stores: Mutex::default(),
            runtime: Some(runtime),
            host_key,
            helper: env::helper::helper_for(&config.helper),
            config,
            me: me.clone(),
            closing: Default::default(),
            on_change: Mutex::default(),
        });
        envs.restore_sleepers();
        suspend::watch(&envs);
        Ok(envs)
    }

    /// The store environments placed by `placed_by` ("" on a single node)
    /// read and save through: a suspended one is respawned from it.
    pub fn provide_store(&self, placed_by: &str, store: Arc<dyn BlockStore>) {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(placed_by.to_string(), store);
    }

    /// `tell` is called whenever environments are suspended or woken.
    pub fn on_change(&self, tell: Arc<dyn Fn() + Send + Sync>) {
        *self.on_change.lock().unwrap_or_else(|p| p.into_inner()) = Some(tell);
    }

    fn changed(&self) {
        let tell = self
            .on_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tell) = tell {
            tell();
        }
    }

    fn store_of(&self, placed_by: &str) -> Option<Arc<dyn BlockStore>> {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(placed_by)
            .cloned()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    pub fn config(&self) -> &CpuConfig {
        &self.config
    }

    fn envs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Env>> {
        self.envs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an environment and returns what to tell its owner.
    pub fn spawn(&self, req: SpawnRequest<'_>) -> GridResult<String> {
        let options = options::parse(&self.config, &req.spawn.options)?;
        let run_key = req
            .spawn
            .run_key
            .as_deref()
            .map(|k| {
                PublicKey::from_openssh(k.trim())
                    .map_err(|e| GridError::refused(format!("a run's login key: {e}")))
            })
            .transpose()?;
        let (user, name) = (req.spawn.user.as_str(), req.spawn.name.as_str());
        let key = (user.to_string(), name.to_string());
        let used: Vec<u16> = {
            let envs = self.envs();
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            let sleepers = self.sleepers();
            if sleepers.contains_key(&key) {
                return Err(GridError::refused(format!(
                    "{name} is suspended; log in to wake it, or boom it to spawn it afresh"
                )));
            }
            if envs.contains_key(&key) || starting.contains(&key) {
                return Err(GridError::refused(format!(
                    "{name} is already running; use save to clone it to a new name"
                )));
            }
            if envs.len() + starting.len() >= self.config.spawn_max {
                return Err(GridError::full(format!(
                    "spawn limit reached: this node runs at most {} environments",
                    self.config.spawn_max
                )));
            }
            // A suspended environment costs the node only its login port,
            // but it is its user's: one user holds at most as many here,
            // running or suspended, as the node runs at once (so no one
            // tenant takes every login port).
            let held: HashSet<&(String, String)> = envs
                .keys()
                .chain(starting.iter())
                .chain(sleepers.keys())
                .filter(|(u, _)| u == user)
                .collect();
            if held.len() >= self.config.spawn_max {
                return Err(GridError::full(format!(
                    "you hold {} environments on this node, suspended ones included: the most one user may (boom one)",
                    held.len()
                )));
            }
            starting.insert(key.clone());
            envs.values()
                .map(|e| e.port)
                .chain(sleepers.values().map(|s| s.record.port))
                .collect()
        };
        let _started = Starting(&self.starting, key.clone());
        let (port, login, published) = self.make_env(Launch {
            user,
            name,
            root: req.spawn.root,
            from: req.spawn.root,
            disk: req.spawn.disk,
            words: req.spawn.options.clone(),
            options,
            keys: req.keys,
            run_key,
            store: req.store,
            fetched_note: req.fetched_note,
            placed_by: req.placed_by,
            port: LoginPort::Free(&used),
            banner: None,
        })?;
        tracing::info!(user, env = name, root = %req.spawn.root, port, "spawned");
        let kind = if req.spawn.disk { "disk" } else { "ram" };
        let mut out = format!(
            "{name} spawned from vac:{} ({kind} cache); log in with:\n{}\n",
            req.spawn.root, login
        );
        for p in &published {
            let _ = writeln!(
                out,
                "port {} published at {}:{}",
                p.env_port, self.config.public_host, p.node_port
            );
        }
        Ok(out)
    }

    /// Makes an environment as `launch` says (its file system mounted, its
    /// processes and its login started, its ports published) and records
    /// it; on any failure, ends what was made. Its login port, login
    /// command and published ports.
    fn make_env(&self, launch: Launch<'_>) -> GridResult<(u16, String, Vec<Published>)> {
        let Launch { user, name, .. } = launch;
        let (config, cache_file) = if launch.disk {
            let path = self.state.cache_file(user, name);
            std::fs::create_dir_all(path.parent().expect("cache dir"))
                .map_err(|e| GridError::io("creating the cache directory", e))?;
            (
                CacheConfig::Disk {
                    path: path.clone(),
                    bytes: self.config.disk_cache,
                    read_cache: 64 << 20,
                },
                Some(path),
            )
        } else {
            (
                CacheConfig::Memory {
                    bytes: self.config.ram_cache,
                },
                None,
            )
        };
        let ids = if launch.options.rootless {
            Some(
                env::userns::Lease::claim()
                    .map_err(|e| GridError::io("claiming ids for a rootless environment", e))?,
            )
        } else {
            None
        };
        let fetched = Arc::new(AtomicU64::new(0));
        let store: Arc<dyn BlockStore> = Arc::new(EnvStore {
            inner: launch.store,
            fetched: fetched.clone(),
        });
        let fs = Arc::new(Fs::open(store, launch.from, config).map_err(fs_error)?);
        let mountpoint = self.state.mount_dir(user, name);
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| GridError::io(format!("creating {}", mountpoint.display()), e))?;
        let session = fusefs::mount_with_ids(fs.clone(), &mountpoint, ids.as_ref().map(|l| l.ids))
            .map_err(|e| GridError::io(format!("mounting {}", mountpoint.display()), e))?;
        let now = Instant::now();
        let mut env = Env {
            spawned_from: name.to_string(),
            root: launch.root,
            fs,
            session: Some(session),
            mountpoint: mountpoint.clone(),
            disk: cache_file,
            started: now,
            environment: None,
            door_stop: None,
            port: 0,
            login: String::new(),
            network: launch.options.network.clone(),
            published: Vec::new(),
            ids,
            fetched,
            fetched_note: launch.fetched_note,
            options: launch.words,
            keys: launch.keys.clone(),
            placed_by: launch.placed_by.to_string(),
            idle: launch.options.idle,
            clock: idle::Clock::new(now),
            next_look: now,
            woken: matches!(launch.port, LoginPort::Kept { .. }),
            door: None,
            listener: None,
            door_task: None,
            paused: Vec::new(),
        };
        // Processes in namespaces on the mount, and a login. (A login port
        // another spawn took meanwhile fails to bind and is passed over.)
        let started = self
            .start_environment(user, name, &env, &launch.options)
            .and_then(|environment| {
                env.environment = Some(environment.clone());
                let who = (user, launch.keys, launch.run_key);
                self.open_door(
                    &mut env,
                    environment,
                    &launch.options,
                    who,
                    launch.port,
                    launch.banner,
                )
            });
        if let Err(e) = started {
            end_env(user, name, env);
            return Err(e);
        }
        // Publishing and recording under the lock: node ports are checked
        // against the other environments'.
        let mut envs = self.envs();
        let taken: Vec<u16> = envs
            .values()
            .flat_map(|e| e.published.iter().map(|p| p.node_port))
            .collect();
        let environment = env.environment.clone().expect("just started");
        match self.publish(&environment, &launch.options.publish, &taken) {
            Ok(published) => env.published = published,
            Err(e) => {
                drop(envs);
                end_env(user, name, env);
                return Err(e);
            }
        }
        let made = (env.port, env.login.clone(), env.published.clone());
        envs.insert((user.to_string(), name.to_string()), env);
        Ok(made)
    }

    /// Starts the namespaces of an environment on its mount.
    fn start_environment(
        &self,
        user: &str,
        name: &str,
        env: &Env,
        options: &SpawnOptions,
    ) -> GridResult<Arc<Environment>> {
        let hostname: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        // Names built from (user, env) could collide ("a-b"/"c" and "a"/"b-c"):
        // the group is named by a hash of the pair instead.
        let group = format!(
            "{}-{}",
            node_id(&self.state),
            grid::state::pair_id(user, name)
        );
        let net_api = self.state.net_socket(user, name);
        if let Some(dir) = net_api.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GridError::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Arc::new(
            Environment::start(
                &self.helper,
                &Spec {
                    root: &env.mountpoint,
                    hostname: &hostname,
                    group: &group,
                    limits: &options.limits,
                    network: &options.network,
                    net_api: &net_api,
                    ids: env.ids.as_ref(),
                },
            )
            .map_err(|e| GridError::io(format!("starting environment {name}"), e))?,
        ))
    }

    /// Opens the SSH login of an environment on `port`, admitting the
    /// owner's keys and a run's one-time key, if any.
    fn open_door(
        &self,
        env: &mut Env,
        environment: Arc<Environment>,
        options: &SpawnOptions,
        (user, keys, run_key): (&str, OwnerKeys, Option<PublicKey>),
        port: LoginPort<'_>,
        banner: Option<String>,
    ) -> GridResult<()> {
        let (listener, port, woken_by) = match port {
            LoginPort::Free(used) => {
                let (first, last) = self.config.env_ports;
                let bound = (first..=last).filter(|p| !used.contains(p)).find_map(|p| {
                    std::net::TcpListener::bind((self.config.env_listen.as_str(), p))
                        .ok()
                        .map(|l| (l, p))
                });
                let Some((listener, port)) = bound else {
                    return Err(GridError::refused(format!(
                        "no free login port in {first}-{last}"
                    )));
                };
                (self.adopt_listener(listener)?, port, None)
            }
            LoginPort::Kept {
                listener,
                port,
                woken_by,
            } => (listener, port, Some(woken_by)),
        };
        let door = Arc::new(Door {
            owner: user.to_string(),
            keys,
            env: environment,
            fs: env.fs.clone(),
            shell: rootfs::root_shell(&env.fs),
            shells: Arc::default(),
            listeners: Default::default(),
            forwards: Arc::default(),
            agent: options.agent,
            run_key,
            activity: Arc::default(),
            banner,
        });
        env.port = port;
        env.listener = Some(listener.clone());
        env.login = format!("ssh -p {port} {}@{}", door.owner, self.config.public_host);
        self.serve_door(env, door, woken_by);
        Ok(())
    }

    /// A bound login port, as the environments' runtime serves it.
    fn adopt_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> GridResult<Arc<tokio::net::TcpListener>> {
        let _in = self.runtime().enter();
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map(Arc::new)
            .map_err(|e| GridError::io("serving an environment's login port", e))
    }

    /// Serves `door` on the environment's listener (first `woken_by`).
    fn serve_door(
        &self,
        env: &mut Env,
        door: Arc<Door>,
        woken_by: Option<(tokio::net::TcpStream, std::net::SocketAddr)>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let key = self.host_key.clone();
        let listener = env.listener.clone().expect("a door has its listener");
        let serving = door.clone();
        env.door_task = Some(self.runtime().spawn(async move {
            services::door::serve(serving, listener, woken_by, key, stop_rx).await
        }));
        env.door_stop = Some(stop_tx);
        env.door = Some(door);
    }

    /// Forwards a free node port from the pool to each of `ports` inside.
    fn publish(
        &self,
        environment: &Environment,
        ports: &[u16],
        taken: &[u16],
    ) -> GridResult<Vec<Published>> {
        let (first, last) = self.config.publish_ports;
        let mut published: Vec<Published> = Vec::new();
        for &env_port in ports {
            // Free now: not another environment's, and nothing on the node holds it.
            let node_port = (first..=last).find(|p| {
                !taken.contains(p)
                    && !published.iter().any(|q| q.node_port == *p)
                    && std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok()
            });
            let Some(node_port) = node_port else {
                return Err(GridError::refused(format!(
                    "no free port in the publish pool {first}-{last}"
                )));
            };
            let p = Published {
                node_port,
                env_port,
            };
            environment
                .publish(p)
                .map_err(|e| GridError::io(format!("publishing port {env_port}"), e))?;
            published.push(p);
        }
        Ok(published)
    }

    /// The live file system of `user`'s environment `env`, if it runs.
    fn env_fs(&self, user: &str, env: &str) -> Option<Arc<Fs>> {
        self.envs()
            .get(&(user.to_string(), env.to_string()))
            .map(|e| e.fs.clone())
    }

    /// Saves the environment's current tree (its blocks durable in its
    /// store) and returns the root's score; binding a name is the caller's.
    /// A suspended environment's tree is its resume point.
    pub fn save(&self, user: &str, env: &str) -> GridResult<Score> {
        self.change_and_save(user, env, |_| Ok(()))
    }

    /// Adds a login for `invitee` to the environment and saves it.
    pub fn invite(&self, user: &str, env: &str, invitee: &str) -> GridResult<Score> {
        self.change_and_save(user, env, |fs| rootfs::add_login(fs, invitee))
    }

    /// Changes `user`'s `env` with `change` and saves it: the live file
    /// system of a running one, the resume point of a suspended one. One
    /// that wakes or is suspended meanwhile is followed where it went.
    fn change_and_save(
        &self,
        user: &str,
        env: &str,
        change: impl Fn(&Fs) -> GridResult<()>,
    ) -> GridResult<Score> {
        for _ in 0..3 {
            if let Some(fs) = self.env_fs(user, env) {
                change(&fs)?;
                return Ok(fs.save().map_err(fs_error)?.score);
            }
            if let Some(saved) = self.edit_suspended(user, env, &change)? {
                return Ok(saved);
            }
        }
        Err(GridError::refused(format!(
            "{env} is not running for {user}"
        )))
    }

    /// Ends `user`'s environment `env` (a suspended one is forgotten, its
    /// resume point left to the collector); false if there was none.
    pub fn boom(&self, user: &str, env: &str) -> bool {
        let removed = self.envs().remove(&(user.to_string(), env.to_string()));
        match removed {
            Some(e) => {
                end_env(user, env, e);
                true
            }
            None => self.forget_suspended(user, env),
        }
    }

    /// `user`'s environments (those in `only`, if given), by name.
    /// Running and suspended ones are read under the same locks, so one
    /// that is suspended or woken meanwhile is told once.
    pub fn status(&self, user: &str, only: Option<&[String]>) -> Vec<control::EnvStatus> {
        let envs = self.envs();
        let mut out = self.running_status(&envs, user, only);
        out.extend(self.suspended_status(&envs, user, only));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn running_status(
        &self,
        envs: &HashMap<(String, String), Env>,
        user: &str,
        only: Option<&[String]>,
    ) -> Vec<control::EnvStatus> {
        let mut mine: Vec<_> = envs
            .iter()
            .filter(|((u, n), _)| u == user && only.is_none_or(|o| o.contains(n)))
            .collect();
        mine.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        let mut out = Vec::new();
        for ((_, name), e) in mine {
            let u = e.fs.usage();
            let block = e.fs.block_size() as u64;
            let network = self.network_text(&e.network, e.ids.is_some(), &e.published);
            let fetched = e.fetched.load(Ordering::Relaxed);
            out.push(control::EnvStatus {
                name: name.clone(),
                spawned_from: e.spawned_from.clone(),
                root: e.root,
                cache_kind: if e.disk.is_some() { "disk" } else { "ram" }.into(),
                cache_bytes: u.capacity_blocks as u64 * block,
                changed_bytes: u.dirty_blocks as u64 * block,
                login: e.login.clone(),
                uptime_secs: e.started.elapsed().as_secs(),
                processes: e
                    .environment
                    .as_ref()
                    .map_or(0, |env| env.processes().len()) as u64,
                network,
                root_now: e.fs.root_score(),
                note: e
                    .fetched_note
                    .filter(|_| fetched > 0)
                    .map(|note| note(fetched)),
                sleep: None,
            });
        }
        out
    }

    /// An environment's network as `status` tells it (`net private,
    /// rootless, HOST:30001->80`).
    fn network_text(&self, network: &Network, rootless: bool, published: &[Published]) -> String {
        let mut text = match network {
            Network::Private => "net private".to_string(),
            Network::Host => "net host".to_string(),
            Network::Isolated => "net none".to_string(),
        };
        if rootless {
            text.push_str(", rootless");
        }
        for p in published {
            let _ = write!(
                text,
                ", {}:{}->{}",
                self.config.public_host, p.node_port, p.env_port
            );
        }
        text
    }

    /// The host key every environment's login here presents, as an
    /// OpenSSH public key line (for a client that reaches a login for its
    /// user, such as a storage node's `run`, to check).
    pub fn host_public_key(&self) -> String {
        self.host_key.public_key().to_openssh().unwrap_or_default()
    }

    /// Every environment of this machine, running or suspended.
    pub fn running(&self) -> Vec<Running> {
        let envs = self.envs();
        let mut all: Vec<Running> = envs
            .iter()
            .map(|((user, name), e)| Running {
                user: user.clone(),
                name: name.clone(),
                root: e.root,
                login: e.login.clone(),
                placed_by: e.placed_by.clone(),
                suspended: false,
            })
            .collect();
        all.extend(self.sleeping(&envs));
        drop(envs);
        all.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
        all
    }

    /// Number of live environments, and of those starting.
    pub fn load(&self) -> (usize, usize) {
        let envs = self.envs();
        let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        (envs.len(), starting.len())
    }

    /// Number of live environments.
    pub fn live(&self) -> usize {
        self.envs().len()
    }

    /// Each environment's cache of changed blocks: (user, environment,
    /// bytes used, bytes it may hold).
    pub fn cache_use(&self) -> Vec<(String, String, u64, u64)> {
        self.envs()
            .iter()
            .map(|((user, name), e)| {
                let u = e.fs.usage();
                let block = e.fs.block_size() as u64;
                (
                    user.clone(),
                    name.clone(),
                    u.dirty_blocks as u64 * block,
                    u.capacity_blocks as u64 * block,
                )
            })
            .collect()
    }

    /// Ends every live environment (daemon shutdown), logging each; the
    /// suspended stop listening and are found again at the next start.
    pub fn shutdown(&self) {
        self.close_sleepers();
        let envs: Vec<_> = self.envs().drain().collect();
        // Side by side: each end mostly waits (for processes to go, for the
        // kernel to unmount), so a node with many environments stops fast.
        let mut envs = envs.into_iter();
        loop {
            let batch: Vec<_> = envs.by_ref().take(16).collect();
            if batch.is_empty() {
                break;
            }
            std::thread::scope(|s| {
                for ((user, env), e) in batch {
                    s.spawn(move || {
                        tracing::warn!(user = %user, env = %env, "ending environment: the node is shutting down (unsaved changes are lost)");
                        end_env(&user, &env, e);
                    });
                }
            });
        }
    }
}

/// Ends an environment: its login, every process in it, then its mount and cache.
fn end_env(user: &str, env: &str, mut e: Env) {
    if let Some(stop) = e.door_stop.take() {
        let _ = stop.send(Stop::End);
    }
    e.paused.clear();
    if let Some(environment) = e.environment.take() {
        environment.stop();
    }
    if let Some(session) = e.session.take()
        && let Err(err) = session.umount_and_join()
    {
        tracing::warn!(user, env, error = %err, "unmount failed; detaching");
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&e.mountpoint)
            .status();
    }
    let _ = std::fs::remove_dir(&e.mountpoint);
    if let Some(disk) = &e.disk {
        let _ = std::fs::remove_file(disk);
    }
    tracing::info!(user, env, "environment ended");
}

/// Mounts left behind by a node that was killed: their processes are gone.
fn clear_stale_mounts(under: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let Ok(prefix) = std::fs::canonicalize(under) else {
        return;
    };
    for line in mounts.lines() {
        let Some(point) = line.split(' ').nth(1) else {
            continue;
        };
        if std::path::Path::new(point).starts_with(&prefix) {
            tracing::warn!(
                mountpoint = point,
                "unmounting an environment left by an earlier run of the node"
            );
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(point)
                .status();
        }
    }
}

/// A short id of this node's state directory: cgroup names carry it, so two
/// nodes on one machine never share a group.
fn node_id(state: &StateDir) -> String {
    venti::Score::of(state.root.as_os_str().as_encoded_bytes()).to_string()[..8].to_string()
}

/// Groups of environments whose node was killed: end their processes.
fn clear_stale_cgroups(node_id: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut stale = Vec::new();
    // v1: /sys/fs/cgroup/CONTROLLER/colony/…; v2: /sys/fs/cgroup/colony/….
    let parents = controllers
        .flatten()
        .map(|c| c.path().join("colony"))
        .chain([std::path::PathBuf::from("/sys/fs/cgroup/colony")]);
    for parent in parents {
        let Ok(groups) = std::fs::read_dir(&parent) else {
            continue;
        };
        for g in groups.flatten() {
            if g.file_name()
                .to_string_lossy()
                .starts_with(&format!("{node_id}-"))
                && g.path().is_dir()
            {
                stale.push(g.path());
            }
        }
    }
    if !stale.is_empty() {
        tracing::warn!(
            groups = stale.len(),
            "ending processes of environments left by an earlier run of the node"
        );
        env::Cgroups { dirs: stale }.remove();
    }
}
