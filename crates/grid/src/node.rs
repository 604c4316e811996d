//! The storage service's commands. Each runs for one authenticated user and
//! returns what to print and the exit status; replies go only to that user.
//!
//! Environments are per user: alice's `debian` and bob's `debian` are two
//! different environments, and nobody can name, save, invite into or boom
//! anyone else's.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fossil::{CacheConfig, FileKind, Fs, ROOT_INO};
use venti::{BlockStore, Score};

use crate::env::door::Door;
use crate::env::{Environment, Limits, Network, Published, Spec};
use crate::error::{GridError, GridResult};
use crate::names::check_score_name;
use crate::scorenames::ScoreNames;
use crate::state::StateDir;
use crate::users::Users;

/// The help line of the interactive prompt (as the original `gridorc` printed).
pub const COMMANDS: &str = "scores [FILTER] | spawn NAME | spawndisk NAME | save ENV NEWNAME | invite USER ENV | boom ENV | status | exit";

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Live environments allowed at once on this node.
    pub spawn_max: usize,
    /// RAM cache of `spawn`.
    pub ram_cache: u64,
    /// Disk cache file of `spawndisk`.
    pub disk_cache: u64,
    /// Default resource limits of an environment (a spawn may override them).
    pub limits: Limits,
    /// Ports for environments' SSH logins, first..=last, reused after boom.
    pub env_ports: (u16, u16),
    /// Address the environments' logins listen on.
    pub env_listen: String,
    /// Host name to put in the login command `spawn` replies with.
    pub public_host: String,
    /// The colony executable, re-run as the environments' helper processes.
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        let mut name = [0u8; 256];
        // SAFETY: gethostname into a buffer of the given length.
        let host = if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0 {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        } else {
            "localhost".into()
        };
        NodeConfig {
            spawn_max: 5,
            ram_cache: 100 << 20,
            disk_cache: 1 << 30,
            limits: Limits::default(),
            env_ports: (20001, 20100),
            env_listen: "0.0.0.0".into(),
            public_host: host,
            helper: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("colony")),
            allow_host_net: false,
            publish_ports: (30001, 30100),
            userns: true,
            allow_rootful: false,
        }
    }
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
    fn fail(err: impl Into<String>) -> Reply {
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
    door_stop: Option<tokio::sync::oneshot::Sender<()>>,
    port: u16,
    login: String,
    network: Network,
    published: Vec<Published>,
    /// A rootless environment's claim on its host ids; released after the
    /// environment and its mount have ended (the fields drop last).
    ids: Option<crate::env::userns::Lease>,
    /// Blocks its file system had to fetch from a peer (on a node that
    /// reads through while it catches up).
    peer_reads: Arc<std::sync::atomic::AtomicU64>,
}

/// The node's store as one environment sees it, counting the blocks that
/// came from a peer rather than this node's disk.
struct EnvStore {
    inner: Arc<dyn BlockStore>,
    peer_reads: Arc<std::sync::atomic::AtomicU64>,
}

impl BlockStore for EnvStore {
    fn read(
        &self,
        score: &Score,
        ty: venti::BlockType,
    ) -> Result<Option<Vec<u8>>, venti::StoreError> {
        Ok(self
            .inner
            .read_sourced(score, ty)?
            .map(|(data, from_peer)| {
                if from_peer {
                    self.peer_reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// What a `spawn` asks for beyond the root.
struct SpawnOptions {
    limits: Limits,
    network: Network,
    /// A user namespace of its own.
    rootless: bool,
    /// Environment ports to publish at node ports.
    publish: Vec<u16>,
}

const SPAWN_USAGE: &str =
    "NAME [memory=SIZE] [pids=N] [cpu=WEIGHT] [net=private|host] [publish=PORT]… [userns=yes|no]";

pub struct Node {
    state: StateDir,
    store: Arc<dyn BlockStore>,
    config: NodeConfig,
    envs: Mutex<HashMap<(String, String), Env>>,
    /// Environments being spawned: counted against the limit and held
    /// against a second spawn of the same name, while their mounts and
    /// namespaces start without the lock (spawns run side by side).
    /// Locked after `envs` when both are.
    starting: Mutex<HashSet<(String, String)>>,
    /// Runs the environments' SSH logins.
    runtime: tokio::runtime::Runtime,
    host_key: russh::keys::PrivateKey,
}

fn usage(text: &str) -> Reply {
    Reply::fail(format!("usage: {text}"))
}

impl Node {
    pub fn new(
        state: StateDir,
        store: Arc<dyn BlockStore>,
        config: NodeConfig,
    ) -> GridResult<Node> {
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
        let host_key = crate::sshd::host_key(&state.host_key())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("env-logins")
            .enable_all()
            .build()
            .map_err(|e| GridError::io("starting the environments' runtime", e))?;
        Ok(Node {
            state,
            store,
            config,
            envs: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
            runtime,
            host_key,
        })
    }

    pub fn users(&self) -> Users {
        self.state.users()
    }

    fn names(&self) -> ScoreNames {
        self.state.scorenames()
    }

    fn envs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Env>> {
        self.envs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one command line for `user`.
    pub fn run(&self, user: &str, line: &str) -> Reply {
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.as_slice() {
            [] => return Reply::fail(format!("no command; commands: {COMMANDS}")),
            ["scores"] => self.scores(user, None),
            ["scores", filter] => self.scores(user, Some(filter)),
            ["scores", ..] => return usage("scores [FILTER]"),
            ["spawn", name, options @ ..] => self
                .spawn_options(options)
                .and_then(|o| self.spawn(user, name, false, o)),
            ["spawn", ..] => return usage(&format!("spawn {SPAWN_USAGE}")),
            ["spawndisk", name, options @ ..] => self
                .spawn_options(options)
                .and_then(|o| self.spawn(user, name, true, o)),
            ["spawndisk", ..] => return usage(&format!("spawndisk {SPAWN_USAGE}")),
            ["save", env, new] => self.save(user, env, new),
            ["save", ..] => return usage("save ENV NEWNAME"),
            ["invite", invitee, env] => self.invite(user, invitee, env),
            ["invite", ..] => return usage("invite USER ENV"),
            ["boom", env] => self.boom(user, env),
            ["boom", ..] => return usage("boom ENV"),
            ["status"] => self.status(user),
            ["status", ..] => return usage("status"),
            [other, ..] => {
                return Reply::fail(format!("unknown command {other:?}; commands: {COMMANDS}"));
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

    /// The node's default limits with `memory=`, `pids=` and `cpu=` overrides,
    /// the network (`net=`) and the ports to publish (`publish=`).
    fn spawn_options(&self, words: &[&str]) -> GridResult<SpawnOptions> {
        let mut limits = self.config.limits.clone();
        let (mut network, mut publish) = (Network::Private, Vec::new());
        let mut rootless = self.config.userns;
        for w in words {
            let bad = || {
                GridError::refused(format!(
                    "bad option {w:?}: use memory=SIZE (K/M/G, at least 4M), pids=N, cpu=WEIGHT (1-10000), \
                     net=private|host, publish=PORT (1-65535) or userns=yes|no"
                ))
            };
            let (key, value) = w.split_once('=').ok_or_else(bad)?;
            match key {
                "net" => {
                    network = match value {
                        "private" => Network::Private,
                        "host" if self.config.allow_host_net => Network::Host,
                        "host" => {
                            return Err(GridError::refused(
                                "net=host is not allowed on this node (its admin may start it with serve --allow-host-net)",
                            ));
                        }
                        _ => return Err(bad()),
                    }
                }
                "userns" => {
                    rootless = match value {
                        "yes" => true,
                        "no" if self.config.allow_rootful || !self.config.userns => false,
                        "no" => {
                            return Err(GridError::refused(
                                "userns=no is not allowed on this node (its admin may start it with serve --allow-rootful)",
                            ));
                        }
                        _ => return Err(bad()),
                    }
                }
                "publish" => {
                    let port: u16 = value.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?;
                    if !publish.contains(&port) {
                        publish.push(port);
                    }
                }
                "memory" => {
                    limits.memory = parse_size(value)
                        .filter(|&m| m >= 4 << 20)
                        .ok_or_else(bad)?
                }
                "pids" => {
                    limits.pids = value
                        .parse()
                        .ok()
                        .filter(|&n: &u64| n >= 1)
                        .ok_or_else(bad)?
                }
                "cpu" => {
                    limits.cpu_weight = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=10000).contains(n))
                        .ok_or_else(bad)?
                }
                _ => return Err(bad()),
            }
        }
        if network == Network::Host && !publish.is_empty() {
            return Err(GridError::refused(
                "publish= is for a private network: with net=host the environment's ports are the node's",
            ));
        }
        Ok(SpawnOptions {
            limits,
            network,
            rootless,
            publish,
        })
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

    fn spawn(
        &self,
        user: &str,
        name: &str,
        disk: bool,
        options: SpawnOptions,
    ) -> GridResult<String> {
        check_score_name(name)?;
        let binding = self
            .names()
            .lookup(name)?
            .filter(|b| b.users.iter().any(|u| u == user));
        let Some(binding) = binding else {
            return Err(GridError::refused(format!("{name} not found for {user}")));
        };
        let key = (user.to_string(), name.to_string());
        let used: Vec<u16> = {
            let envs = self.envs();
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if envs.contains_key(&key) || starting.contains(&key) {
                return Err(GridError::refused(format!(
                    "{name} is already running; use save to clone it to a new name"
                )));
            }
            if envs.len() + starting.len() >= self.config.spawn_max {
                return Err(GridError::refused(format!(
                    "spawn limit reached: this node runs at most {} environments",
                    self.config.spawn_max
                )));
            }
            starting.insert(key.clone());
            envs.values().map(|e| e.port).collect()
        };
        // However this spawn ends, the name is no longer starting.
        struct Started<'a>(&'a Mutex<HashSet<(String, String)>>, (String, String));
        impl Drop for Started<'_> {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&self.1);
            }
        }
        let _started = Started(&self.starting, key.clone());
        let (config, cache_file) = if disk {
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
        let ids = if options.rootless {
            Some(
                crate::env::userns::Lease::claim()
                    .map_err(|e| GridError::io("claiming ids for a rootless environment", e))?,
            )
        } else {
            None
        };
        let peer_reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let store: Arc<dyn BlockStore> = Arc::new(EnvStore {
            inner: self.store.clone(),
            peer_reads: peer_reads.clone(),
        });
        let fs = Arc::new(Fs::open(store, binding.root, config)?);
        let mountpoint = self.state.mount_dir(user, name);
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| GridError::io(format!("creating {}", mountpoint.display()), e))?;
        let session = fusefs::mount_with_ids(fs.clone(), &mountpoint, ids.as_ref().map(|l| l.ids))
            .map_err(|e| GridError::io(format!("mounting {}", mountpoint.display()), e))?;
        let mut env = Env {
            spawned_from: name.to_string(),
            root: binding.root,
            fs,
            session: Some(session),
            mountpoint: mountpoint.clone(),
            disk: cache_file,
            started: Instant::now(),
            environment: None,
            door_stop: None,
            port: 0,
            login: String::new(),
            network: options.network.clone(),
            published: Vec::new(),
            ids,
            peer_reads,
        };
        // The cpu half: processes in namespaces on the mount, and a login.
        // (A login port another spawn took meanwhile fails to bind and is
        // passed over.)
        match self.start_environment(user, name, &env, &options, &used) {
            Ok((environment, stop, port)) => {
                env.environment = Some(environment);
                env.door_stop = Some(stop);
                env.port = port;
                env.login = format!("ssh -p {port} {user}@{}", self.config.public_host);
            }
            Err(e) => {
                end_env(user, name, env);
                return Err(e);
            }
        }
        // Publishing and recording under the lock: node ports are checked
        // against the other environments'.
        let mut envs = self.envs();
        let taken: Vec<u16> = envs
            .values()
            .flat_map(|e| e.published.iter().map(|p| p.node_port))
            .collect();
        let environment = env.environment.clone().expect("just started");
        match self.publish(&environment, &options.publish, &taken) {
            Ok(published) => env.published = published,
            Err(e) => {
                end_env(user, name, env);
                return Err(e);
            }
        }
        tracing::info!(user, env = name, root = %binding.root, port = env.port, "spawned");
        let kind = if disk { "disk" } else { "ram" };
        let mut out = format!(
            "{name} spawned from vac:{} ({kind} cache); log in with:\n{}\n",
            binding.root, env.login
        );
        for p in &env.published {
            let _ = writeln!(
                out,
                "port {} published at {}:{}",
                p.env_port, self.config.public_host, p.node_port
            );
        }
        envs.insert(key, env);
        Ok(out)
    }

    /// Starts the namespaces and the SSH login of an environment.
    fn start_environment(
        &self,
        user: &str,
        name: &str,
        env: &Env,
        options: &SpawnOptions,
        used_ports: &[u16],
    ) -> GridResult<(Arc<Environment>, tokio::sync::oneshot::Sender<()>, u16)> {
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
            crate::state::pair_id(user, name)
        );
        let net_api = self.state.net_socket(user, name);
        if let Some(dir) = net_api.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GridError::io(format!("creating {}", dir.display()), e))?;
        }
        let environment = Arc::new(
            Environment::start(
                &self.config.helper,
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
        );
        let (first, last) = self.config.env_ports;
        let listener = (first..=last)
            .filter(|p| !used_ports.contains(p))
            .find_map(|p| {
                std::net::TcpListener::bind((self.config.env_listen.as_str(), p))
                    .ok()
                    .map(|l| (l, p))
            });
        let Some((listener, port)) = listener else {
            environment.stop();
            return Err(GridError::refused(format!(
                "no free login port in {first}-{last}"
            )));
        };
        let _ = listener.set_nonblocking(true);
        let door = Arc::new(Door {
            owner: user.to_string(),
            users: self.users(),
            env: environment.clone(),
            fs: env.fs.clone(),
            shell: root_shell(&env.fs),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let key = self.host_key.clone();
        self.runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => crate::env::door::serve(door, l, key, stop_rx).await,
                Err(e) => tracing::error!(error = %e, "environment login listener"),
            }
        });
        Ok((environment, stop_tx, port))
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

    /// The live file system of `user`'s environment `env`.
    fn env_fs(&self, user: &str, env: &str) -> GridResult<Arc<Fs>> {
        self.envs()
            .get(&(user.to_string(), env.to_string()))
            .map(|e| e.fs.clone())
            .ok_or_else(|| GridError::refused(format!("{env} is not running for {user}")))
    }

    fn save(&self, user: &str, env: &str, new: &str) -> GridResult<String> {
        check_score_name(new)?;
        let fs = self.env_fs(user, env)?;
        if self.names().lookup(new)?.is_some() {
            return Err(GridError::refused(format!(
                "name {new} is taken: names are immutable, choose another"
            )));
        }
        let report = fs.save()?;
        self.names().bind(new, &report.score, &[user])?;
        tracing::info!(user, env, name = new, root = %report.score, "saved");
        Ok(format!("{new} saved\nvac:{}\n", report.score))
    }

    fn invite(&self, user: &str, invitee: &str, env: &str) -> GridResult<String> {
        let fs = self.env_fs(user, env)?;
        if !self.users().exists(invitee)? {
            return Err(GridError::refused(format!(
                "no user {invitee} on this node"
            )));
        }
        add_login(&fs, invitee)?;
        let report = fs.save()?;
        let name =
            self.names()
                .bind_unique(&format!("{env}+{invitee}"), &report.score, &[invitee])?;
        tracing::info!(user, env, invitee, name = %name, "invited");
        Ok(format!("{invitee} invited: {name}\nvac:{}\n", report.score))
    }

    fn boom(&self, user: &str, env: &str) -> GridResult<String> {
        let Some(e) = self.envs().remove(&(user.to_string(), env.to_string())) else {
            return Ok(format!("{env} is not running\n"));
        };
        end_env(user, env, e);
        Ok(format!("{env} BOOMed\n"))
    }

    fn status(&self, user: &str) -> GridResult<String> {
        let envs = self.envs();
        let mut mine: Vec<_> = envs.iter().filter(|((u, _), _)| u == user).collect();
        mine.sort_by(|a, b| a.0.1.cmp(&b.0.1));
        let mut out = String::new();
        if mine.is_empty() {
            out.push_str("no environments running\n");
        }
        for ((_, name), e) in mine {
            let u = e.fs.usage();
            let kind = if e.disk.is_some() { "disk" } else { "ram" };
            let size_mb = (u.capacity_blocks as u64 * e.fs.block_size() as u64) >> 20;
            let used = u.dirty_blocks as u64 * 100 / u.capacity_blocks.max(1) as u64;
            let up = e.started.elapsed().as_secs();
            let procs = e
                .environment
                .as_ref()
                .map_or(0, |env| env.processes().len());
            let mut net = match e.network {
                Network::Private => "net private".to_string(),
                Network::Host => "net host".to_string(),
            };
            if e.ids.is_some() {
                net.push_str(", rootless");
            }
            for p in &e.published {
                let _ = write!(
                    net,
                    ", {}:{}->{}",
                    self.config.public_host, p.node_port, p.env_port
                );
            }
            let _ = writeln!(
                out,
                "{name}\tfrom {} vac:{}\t{kind} {size_mb} MB, {used}% changed\t{}\tup {}m{:02}s\t{procs} processes\t{net}\troot now vac:{}",
                e.spawned_from,
                e.root,
                e.login,
                up / 60,
                up % 60,
                e.fs.root_score()
            );
            let from_peers = e.peer_reads.load(std::sync::atomic::Ordering::Relaxed);
            if from_peers > 0 {
                // The line above ends with a newline; say it on a line of
                // its own so the fields stay where scripts expect them.
                let _ = writeln!(
                    out,
                    "{name}\tdepends on a peer: {from_peers} blocks read through (this node is still catching up)"
                );
            }
        }
        Ok(out)
    }

    /// Number of live environments.
    pub fn live(&self) -> usize {
        self.envs().len()
    }

    /// Ends every live environment (daemon shutdown), logging each.
    pub fn shutdown(&self) {
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
        let _ = stop.send(());
    }
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

/// Adds `user` to the environment's /etc/passwd and /etc/group (creating
/// them if needed) and makes /home/USER.
fn add_login(fs: &Fs, user: &str) -> GridResult<()> {
    let etc = match fs.lookup(ROOT_INO, "etc") {
        Ok(a) => a.ino,
        Err(_) => fs.mkdir(ROOT_INO, "etc", 0o755, 0, 0)?.ino,
    };
    let read_all = |name: &str| -> GridResult<Option<(u64, String)>> {
        match fs.lookup(etc, name) {
            Ok(a) if a.kind == FileKind::File => {
                let data = fs.read(a.ino, 0, a.size as u32)?;
                Ok(Some((a.ino, String::from_utf8_lossy(&data).into_owned())))
            }
            Ok(_) => Err(GridError::refused(format!(
                "/etc/{name} in the environment is not a file"
            ))),
            Err(_) => Ok(None),
        }
    };
    let passwd = read_all("passwd")?;
    let text = passwd.as_ref().map(|(_, t)| t.as_str()).unwrap_or("");
    if let Some(line) = text.lines().find(|l| l.split(':').next() == Some(user)) {
        tracing::info!(user, line, "already in the environment's passwd");
        return Ok(());
    }
    let uid = text
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter(|&u| (1000..60000).contains(&u))
        .max()
        .map_or(1000, |u| u + 1);
    let append = |file: Option<(u64, String)>, name: &str, line: String| -> GridResult<()> {
        let (ino, old) = match file {
            Some(f) => f,
            None => (fs.create(etc, name, 0o644, 0, 0)?.ino, String::new()),
        };
        let sep = if old.is_empty() || old.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        fs.write(ino, old.len() as u64, format!("{sep}{line}\n").as_bytes())?;
        Ok(())
    };
    append(
        passwd,
        "passwd",
        format!("{user}:x:{uid}:{uid}::/home/{user}:/bin/sh"),
    )?;
    append(read_all("group")?, "group", format!("{user}:x:{uid}:"))?;
    let home = match fs.lookup(ROOT_INO, "home") {
        Ok(a) => a.ino,
        Err(_) => fs.mkdir(ROOT_INO, "home", 0o755, 0, 0)?.ino,
    };
    if fs.lookup(home, user).is_err() {
        fs.mkdir(home, user, 0o755, uid, uid)?;
    }
    Ok(())
}

/// root's shell from the environment's /etc/passwd, else /bin/sh.
fn root_shell(fs: &Fs) -> String {
    read_file(fs, "etc/passwd", 1 << 20)
        .and_then(|data| {
            String::from_utf8_lossy(&data)
                .lines()
                .find(|l| l.starts_with("root:"))
                .and_then(|l| l.split(':').nth(6))
                .map(str::trim)
                .filter(|s| s.starts_with('/'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "/bin/sh".into())
}

/// A regular file of the environment's root, read through the file system
/// itself: no symlink is followed and nothing but a regular file is read, so
/// a root cannot point the node at host files, FIFOs or endless devices.
pub fn read_file(fs: &Fs, path: &str, limit: u64) -> Option<Vec<u8>> {
    let mut ino = ROOT_INO;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let attr = fs.lookup(ino, part).ok()?;
        let last = i + 1 == parts.len();
        if (last && attr.kind != FileKind::File) || (!last && attr.kind != FileKind::Dir) {
            return None;
        }
        ino = attr.ino;
    }
    let size = fs.getattr(ino).ok()?.size;
    if size > limit {
        return None;
    }
    fs.read(ino, 0, size as u32).ok()
}

/// `100M`, `1G`, `512K` or bytes (K, M, G, T are powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    let mult = match t[split..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
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
        crate::env::Cgroups { dirs: stale }.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2t"), Some(2 << 40));
        for bad in ["", "M", "5Q", "-1M", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
