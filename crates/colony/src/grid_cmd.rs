//! `colony serve`, `colony user …`, `colony import` and `colony ndb query`:
//! running a grid node and keeping its state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cpu::CpuConfig;
use grid::state::StateDir;
use storage::Node;
use vac::tree::{BlockSizes, Tree};
use vac::walk::DirImporter;
use venti::{BlockStore, LogStore, RemoteStore};

use crate::progress::Progress;

/// `--state DIR`, shared by every command that reads or changes a node.
#[derive(Args)]
pub struct StateArg {
    /// State directory [default: $COLONY_STATE, else $XDG_STATE_HOME/colony,
    /// else /var/lib/colony for root, else ~/.local/state/colony].
    #[arg(long, global = true)]
    state: Option<PathBuf>,
}

impl StateArg {
    fn resolve(&self) -> Result<StateDir> {
        Ok(StateDir::resolve(self.state.as_deref())?)
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    state: StateArg,
    /// A config file in ndb form, e.g. `listen=0.0.0.0:16999 spawnmax=5 ramcache=100M
    /// diskcache=1G venti=tcp!host!17034`; command-line options win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SSH front door address [default: 0.0.0.0:16999].
    #[arg(long)]
    listen: Option<String>,
    /// Use this venti server instead of the embedded store in the state directory.
    #[arg(long, conflicts_with = "store")]
    venti: Option<String>,
    /// Serve /metrics and the status page here (config `adminlisten=`),
    /// e.g. 127.0.0.1:16990; off loopback it needs --tls, and only grid
    /// certificates are answered.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Keep blocks in s3://BUCKET/PREFIX (packs in an object store, shared
    /// by the nodes on the bucket) instead of the embedded store (config
    /// `store=`). Names and users stay in the state directory.
    #[arg(long)]
    store: Option<String>,
    /// Live environments allowed at once [default: 5].
    #[arg(long)]
    spawn_max: Option<usize>,
    /// Ports for the environments' SSH logins, FIRST-LAST [default: 20001-20100].
    #[arg(long)]
    env_ports: Option<String>,
    /// Node ports that `spawn … publish=PORT` forwards into environments,
    /// FIRST-LAST [default: 30001-30100].
    #[arg(long)]
    publish_ports: Option<String>,
    /// Allow `spawn … net=host`: an environment on the node's own network
    /// (it can listen on the node's addresses and reach its loopback services).
    #[arg(long)]
    allow_host_net: bool,
    /// Make environments rootful unless a spawn says `userns=yes`: root
    /// inside is the host's root, bounded by capabilities and the syscall
    /// filter (by default root inside is an unprivileged range of host ids,
    /// in a user namespace of the environment's own).
    #[arg(long)]
    rootful: bool,
    /// Allow `spawn … userns=no` (a rootful environment) on a rootless node.
    #[arg(long)]
    allow_rootful: bool,
    /// Host name in the login commands `spawn` prints [default: this host's name].
    #[arg(long)]
    public_host: Option<String>,
    /// Default memory limit of an environment [default: 512M].
    #[arg(long)]
    env_memory: Option<String>,
    /// Default process limit of an environment [default: 512].
    #[arg(long)]
    env_pids: Option<u64>,
    /// The most memory a spawn may ask for (`memory=`) [default: 2G;
    /// config `envmemorymax=`].
    #[arg(long)]
    env_memory_max: Option<String>,
    /// The most processes a spawn may ask for (`pids=`) [default: 2048;
    /// config `envpidsmax=`].
    #[arg(long)]
    env_pids_max: Option<u64>,
    /// The highest CPU weight a spawn may ask for (`cpu=`, 100 is a fair
    /// share) [default: 1000; config `envcpumax=`].
    #[arg(long)]
    env_cpu_max: Option<u64>,
    /// RAM cache of `spawn` (K, M, G are powers of 1024) [default: 100M].
    #[arg(long)]
    ram_cache: Option<String>,
    /// Disk cache file size of `spawndisk` [default: 1G].
    #[arg(long)]
    disk_cache: Option<String>,
    /// Also serve the node's block store over the venti protocol here (e.g.
    /// tcp!127.0.0.1!17034), so `colony import --venti` can seed a running node.
    #[arg(long)]
    venti_listen: Option<String>,
    /// The node's grid certificate directory: `--venti-listen tls!HOST!PORT`
    /// then serves the block store over mutual TLS to grid members only.
    #[arg(long)]
    tls: Option<std::path::PathBuf>,
    #[command(flatten)]
    replica: ReplicaArgs,
    #[command(flatten)]
    roles: RoleArgs,
    /// Publish the node's requests, replies and events as hubs (sto.in,
    /// sto.out, events; USER.in and USER.out), served over 9P here, on
    /// loopback only: 9P2000 has no authentication (config `hubslisten=`).
    #[arg(long)]
    hubs_listen: Option<String>,
}

/// What a node does in a grid of storage and cpu nodes.
#[derive(Args)]
pub struct RoleArgs {
    /// both: the single node (store, names, front door and environments);
    /// storage: store, names and front door, environments placed on the
    /// cpu nodes that link to it; cpu: environments for its storage nodes
    /// [default: both; config `role=`].
    #[arg(long)]
    role: Option<String>,
    /// (storage) Accept cpu nodes' control links here, over mutual TLS
    /// (e.g. tls!0.0.0.0!17036; config `cpulisten=`).
    #[arg(long)]
    cpu_listen: Option<String>,
    /// (cpu) A storage node to run environments for: NAME=ADDRESS, its
    /// certificate's name and its --cpu-listen address. Repeatable
    /// (config `storage=`).
    #[arg(long = "storage")]
    storage_nodes: Vec<String>,
    /// (cpu) Bound of the block cache on disk that every environment of
    /// this node shares [default: 4G; config `blockcache=`].
    #[arg(long)]
    block_cache: Option<String>,
    /// (cpu) Seconds a file read waits for an unreachable storage node
    /// before it fails with EIO [default: 30; config `blockwait=`].
    #[arg(long)]
    block_wait: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Both,
    Storage,
    Cpu,
}

/// How a storage node replicates (see the replica crate).
#[derive(Args)]
pub struct ReplicaArgs {
    /// Replicate to this storage peer: NAME=ADDRESS, its certificate's
    /// name and its --replica-listen address (e.g. b=tls!10.0.0.2!17035),
    /// or venti:NAME=ADDRESS for a plain venti server (blocks only).
    /// Repeatable; also `peer=NAME=ADDRESS` in the config file.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Accept replication from the grid's storage nodes, and status
    /// requests from its members, here over mutual TLS (e.g.
    /// tls!0.0.0.0!17035); needs --tls.
    #[arg(long)]
    replica_listen: Option<String>,
    /// Join a grid late: take the peers' names at once and fetch the
    /// blocks not yet replicated here from them on demand (config
    /// `readthrough=yes`).
    #[arg(long)]
    read_through: bool,
    /// Blocks per replication batch: what a kill may cost again [default: 4096].
    #[arg(long, hide = true)]
    replica_batch: Option<usize>,
}

/// Opens the node's block store: a venti server, or the embedded store.
fn open_store(state: &StateDir, venti: Option<&str>) -> Result<Arc<dyn BlockStore>> {
    Ok(match venti {
        Some(addr) => Arc::new(RemoteStore::connect(addr)?),
        None => open_log_store(state)?,
    })
}

/// The embedded store of the state directory.
fn open_log_store(state: &StateDir) -> Result<Arc<LogStore>> {
    Ok(Arc::new(LogStore::open(state.store_dir()).map_err(|e| match e {
        venti::StoreError::Busy(_) => anyhow::anyhow!(
            "{e} (is `colony serve` running on this state directory? start it with --venti-listen ADDR and pass --venti ADDR)"
        ),
        e => e.into(),
    })?))
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let state = args.state.resolve()?;
    // Imports of a node that died mid-import left their scratch stores.
    let removed = storage::import::remove_leftovers(&state.root.join("tmp"));
    if removed > 0 {
        tracing::info!(removed, "removed what interrupted imports left behind");
    }
    let file = match &args.config {
        Some(path) => {
            let db = ndb::Db::open(path)?;
            let mut merged = ndb::Entry::new(&[]);
            for e in db.entries() {
                for p in &e.pairs {
                    merged.push(&p.attr, &p.value);
                }
            }
            merged
        }
        None => ndb::Entry::new(&[]),
    };
    let listen = args
        .listen
        .or_else(|| file.get("listen").map(str::to_string))
        .unwrap_or_else(|| format!("0.0.0.0:{}", storage::frontdoor::DEFAULT_PORT));
    let venti_addr = args.venti.or_else(|| file.get("venti").map(str::to_string));
    let mut config = CpuConfig::default();
    if let Some(n) = args
        .spawn_max
        .or_else(|| file.get("spawnmax").and_then(|v| v.parse().ok()))
    {
        config.spawn_max = n;
    }
    if let Some(size) = args
        .ram_cache
        .or_else(|| file.get("ramcache").map(str::to_string))
    {
        config.ram_cache = crate::mount_cmd::parse_size(&size)?;
    }
    if let Some(size) = args
        .disk_cache
        .or_else(|| file.get("diskcache").map(str::to_string))
    {
        config.disk_cache = crate::mount_cmd::parse_size(&size)?;
    }
    if let Some(range) = args
        .env_ports
        .or_else(|| file.get("envports").map(str::to_string))
    {
        config.env_ports = port_range(&range, "--env-ports")?;
    }
    if let Some(range) = args
        .publish_ports
        .or_else(|| file.get("publishports").map(str::to_string))
    {
        config.publish_ports = port_range(&range, "--publish-ports")?;
    }
    config.allow_host_net = args.allow_host_net || file.get("allowhostnet") == Some("yes");
    config.userns = !(args.rootful || file.get("rootful") == Some("yes"));
    config.allow_rootful = args.allow_rootful || file.get("allowrootful") == Some("yes");
    if let Some(host) = args
        .public_host
        .or_else(|| file.get("publichost").map(str::to_string))
    {
        config.public_host = host;
    }
    if let Some(m) = args
        .env_memory
        .or_else(|| file.get("envmemory").map(str::to_string))
    {
        config.limits.memory = crate::mount_cmd::parse_size(&m)?;
    }
    if let Some(p) = args
        .env_pids
        .or_else(|| file.get("envpids").and_then(|v| v.parse().ok()))
    {
        config.limits.pids = p;
    }
    if let Some(m) = args
        .env_memory_max
        .or_else(|| file.get("envmemorymax").map(str::to_string))
    {
        config.ceilings.memory = crate::mount_cmd::parse_size(&m)?;
    }
    if let Some(p) = args.env_pids_max.map(Ok).or_else(|| {
        file.get("envpidsmax").map(|v| {
            v.parse()
                .with_context(|| format!("envpidsmax={v}: not a number"))
        })
    }) {
        config.ceilings.pids = p?;
    }
    if let Some(c) = args.env_cpu_max.map(Ok).or_else(|| {
        file.get("envcpumax").map(|v| {
            v.parse()
                .with_context(|| format!("envcpumax={v}: not a number"))
        })
    }) {
        config.ceilings.cpu_weight = c?;
    }
    if !(1..=10000).contains(&config.ceilings.cpu_weight) {
        bail!("--env-cpu-max is a CPU weight, 1-10000");
    }
    // The defaults are always allowed.
    config.ceilings = config.ceilings.at_least(&config.limits);
    let role = match args
        .roles
        .role
        .as_deref()
        .or_else(|| file.get("role"))
        .unwrap_or("both")
    {
        "both" => Role::Both,
        "storage" => Role::Storage,
        "cpu" => Role::Cpu,
        other => bail!("unknown role {other:?}: use both, storage or cpu"),
    };
    let key = grid::ssh::host_key(&state.host_key())?;
    let tls_dir = args
        .tls
        .clone()
        .or_else(|| file.get("tls").map(PathBuf::from));
    if let Some(dir) = &tls_dir {
        // The node's own identity also for what it dials (--venti tls!…).
        link::Link::set_default(link::Link::load(dir)?);
    }
    if role == Role::Cpu {
        return serve_cpu(&args.roles, &file, state, config, tls_dir.is_some());
    }
    let bucket = args.store.or_else(|| file.get("store").map(str::to_string));
    let (store, log): (Arc<dyn BlockStore>, Option<Arc<LogStore>>) = match (&venti_addr, &bucket) {
        (Some(_), Some(_)) => {
            bail!("give the node a venti server or a bucket (--venti or --store), not both")
        }
        (Some(addr), None) => (open_store(&state, Some(addr))?, None),
        (None, Some(url)) => {
            if !s3store::is_url(url) {
                bail!(
                    "--store takes s3://BUCKET/PREFIX; the embedded store is the state directory's"
                );
            }
            (crate::stores::open(url)?, None)
        }
        (None, None) => {
            let log = open_log_store(&state)?;
            (log.clone(), Some(log))
        }
    };
    let cpu_listen = args
        .roles
        .cpu_listen
        .clone()
        .or_else(|| file.get("cpulisten").map(str::to_string));
    let pool = match role {
        Role::Storage => Some(storage_pool(
            &state,
            cpu_listen,
            args.venti_listen.as_deref(),
            tls_dir.is_some(),
            &config.public_host,
        )?),
        _ if cpu_listen.is_some() => bail!("--cpu-listen is for a storage node (--role storage)"),
        _ => None,
    };
    // `colony grid status` shows a storage node's cpu nodes too.
    let more_status = pool.as_ref().map(|(p, _)| {
        let p = p.clone();
        Arc::new(move || p.cpus()) as Arc<dyn Fn() -> String + Send + Sync>
    });
    let replication = replication(
        &args.replica,
        &file,
        &state,
        log.clone(),
        tls_dir.is_some(),
        more_status,
    )?;
    // A node that reads through serves its environments from the store
    // that fetches what replication has not brought yet.
    let store: Arc<dyn BlockStore> = match replication.as_ref().and_then(|(_, _, t)| t.clone()) {
        Some(through) => through,
        None => store,
    };
    let replication = replication.map(|(rep, listen, _)| (rep, listen));
    let hubs_listen = args
        .hubs_listen
        .clone()
        .or_else(|| file.get("hubslisten").map(str::to_string));
    let streams = match &hubs_listen {
        Some(addr) => {
            let addr = venti::dial::parse(addr)?;
            let listener = std::net::TcpListener::bind(&addr)
                .with_context(|| format!("hub listener on {addr}"))?;
            if !listener.local_addr()?.ip().is_loopback() {
                bail!(
                    "--hubs-listen serves 9P without authentication: give a loopback address (e.g. 127.0.0.1:5641)"
                );
            }
            let streams = Arc::new(storage::streams::Streams::new());
            tracing::info!(address = %listener.local_addr()?, "serving the node's stream hubs over 9P");
            let hubs = streams.hubs.clone();
            std::thread::spawn(move || hubfs::server::serve(listener, hubs));
            Some(streams)
        }
        None => None,
    };
    let state_for_admin = state.clone();
    // Every block the node stores or reads through its commands is counted.
    let metrics = Arc::new(storage::metrics::Metrics::new());
    let store: Arc<dyn BlockStore> = Arc::new(storage::metrics::MeteredStore {
        inner: store,
        metrics: metrics.clone(),
    });
    if let Some(log) = &log {
        let log = log.clone();
        metrics.refresh_with(Box::new(move |m| {
            m.store_bytes.set(log.durable_end() as i64);
        }));
    }
    let node = match &pool {
        Some((pool, _)) => Node::new(state, pool.clone()),
        None => Node::local(state, store.clone(), config)?,
    }
    .with_store(store.clone())
    .with_metrics(metrics.clone());
    if let (Some(s), Some((pool, _))) = (&streams, &pool) {
        let _ = pool.streams.set(s.clone());
    }
    if let (Some(s), Some((rep, _))) = (&streams, &replication) {
        let s = s.clone();
        rep.board.tell(Arc::new(move |event| s.event(event)));
    }
    let node = Arc::new(match streams {
        Some(s) => node.with_streams(s),
        None => node,
    });
    serve_admin(node.clone(), &state_for_admin)?;
    let admin_rep = replication.as_ref().map(|(rep, _)| rep.clone());
    let admin_pool = pool.as_ref().map(|(p, _)| p.clone());
    let admin_name = link::Link::from_env()
        .map(|l| l.me.name.clone())
        .unwrap_or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into())
        });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = venti::dial::parse(&listen)?;
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        if let Some(venti_listen) = &args.venti_listen {
            let (transport, addr) = venti::dial::parse_transport(venti_listen)?;
            let tls = match (&args.tls, transport) {
                // With the node's certificate, its block store is served
                // to grid members only, whichever way the address is written.
                (Some(_), _) => {
                    let link = link::Link::from_env().map_err(anyhow::Error::msg)?;
                    crate::venti_cmd::reload_on_sighup(link.clone());
                    Some(venti::server::Tls { link, roles: link::Role::ALL.to_vec() })
                }
                (None, venti::dial::Transport::Tls) => anyhow::bail!("--venti-listen tls!… needs the node's certificate: --tls DIR"),
                (None, venti::dial::Transport::Tcp) => None,
            };
            let venti_listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("venti listener on {addr}"))?;
            tracing::info!(address = %venti_listener.local_addr()?, tls = tls.is_some(), "serving the block store over venti");
            tokio::spawn(venti::server::serve_with(venti_listener, store.clone(), tls, std::future::pending()));
        }
        if let Some((rep, listen)) = replication {
            rep.start().map_err(anyhow::Error::msg)?;
            if let Some(listen) = listen {
                let (_, addr) = venti::dial::parse_transport(&listen)?;
                let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("replication listener on {addr}"))?;
                tracing::info!(address = %listener.local_addr()?, node = %rep.node, peers = rep.peers.len(), "accepting replication");
                tokio::spawn(replica::keep::serve(rep, listener));
            }
        }
        if let Some((pool, listen)) = pool {
            let (_, addr) = venti::dial::parse_transport(&listen)?;
            let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cpu node listener on {addr}"))?;
            tracing::info!(address = %listener.local_addr()?, venti = %pool.venti, "accepting cpu nodes");
            let link = link::Link::from_env().map_err(anyhow::Error::msg)?;
            tokio::spawn(storage::placement::serve(pool, link, listener));
        }
        let admin_listen = args
            .admin_listen
            .clone()
            .or_else(|| file.get("adminlisten").map(str::to_string));
        if let Some(addr) = admin_listen {
            let addr = venti::dial::parse(&addr)?;
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("admin listener on {addr}"))?;
            let bound = listener.local_addr()?;
            let tls = if bound.ip().is_loopback() {
                None
            } else {
                if tls_dir.is_none() {
                    anyhow::bail!(
                        "--admin-listen {bound} is off loopback: it needs the node's certificate (--tls DIR), and then answers only grid certificates"
                    );
                }
                Some(link::Link::from_env().map_err(anyhow::Error::msg)?)
            };
            let links: Option<Arc<dyn Fn() -> String + Send + Sync>> = match (&admin_rep, &admin_pool) {
                (Some(rep), _) => {
                    let rep = rep.clone();
                    Some(Arc::new(move || rep.status_text()))
                }
                (None, Some(pool)) => {
                    let pool = pool.clone();
                    Some(Arc::new(move || pool.cpus()))
                }
                (None, None) => None,
            };
            {
                let node = node.clone();
                metrics.refresh_with(Box::new(move |m| {
                    for (state, n) in node.counts().by_state() {
                        m.environments
                            .get_or_create(&storage::metrics::StateLabel { state: state.into() })
                            .set(n as i64);
                    }
                    // Only the environments running now.
                    m.cache_used_bytes.clear();
                    m.cache_capacity_bytes.clear();
                    for (user, environment, used, capacity) in node.cache_use() {
                        let l = storage::metrics::CacheLabels { user, environment };
                        m.cache_used_bytes.get_or_create(&l).set(used as i64);
                        m.cache_capacity_bytes.get_or_create(&l).set(capacity as i64);
                    }
                }));
            }
            if tls_dir.is_some()
                && let Ok(link) = link::Link::from_env()
            {
                metrics.refresh_with(Box::new(move |m| {
                    for (reason, n) in link.refused_so_far() {
                        let l = storage::metrics::ReasonLabel { reason: reason.into() };
                        storage::metrics::catch_up(&m.tls_refused.get_or_create(&l), n);
                    }
                }));
            }
            if let Some(rep) = admin_rep.clone() {
                metrics.refresh_with(Box::new(move |m| {
                    for (peer, blocks, bytes) in rep.lag() {
                        let l = storage::metrics::PeerLabel { peer };
                        m.replication_lag_blocks.get_or_create(&l).set(blocks as i64);
                        m.replication_lag_bytes.get_or_create(&l).set(bytes as i64);
                    }
                }));
            }
            let admin = Arc::new(storage::admin::Admin {
                node: node.clone(),
                metrics: metrics.clone(),
                name: admin_name.clone(),
                links,
            });
            tracing::info!(address = %bound, tls = tls.is_some(), "admin address: /metrics and the status page");
            // Where it listens (a port of 0 picks one), for scripts: not
            // on stdout, whose reader may have gone after the first line.
            let _ = std::fs::write(state_for_admin.root.join("admin.addr"), format!("{bound}\n"));
            tokio::spawn(storage::admin::serve(admin, listener, tls));
        }
        tracing::info!(address = %local, "grid node ready");
        let shutdown = shutdown_signal();
        println!("listening on {local}");
        notify_ready();

        std::io::Write::flush(&mut std::io::stdout())?;
        storage::frontdoor::serve(node.clone(), listener, key, shutdown).await;
        anyhow::Ok(())
    })?;
    let live = node.live();
    node.shutdown();
    tracing::info!(environments_ended = live, "grid node stopped");
    Ok(())
}

/// A storage node's placement of environments on its cpu nodes, and
/// where it accepts them.
fn storage_pool(
    state: &StateDir,
    cpu_listen: Option<String>,
    venti_listen: Option<&str>,
    has_tls: bool,
    public_host: &str,
) -> Result<(Arc<storage::placement::Pool>, String)> {
    if !has_tls {
        bail!(
            "a storage node links to its cpu nodes over mutual TLS: give its certificate with --tls DIR"
        );
    }
    let link = link::Link::from_env().map_err(anyhow::Error::msg)?;
    if link.me.role != link::Role::Storage {
        bail!(
            "--role storage needs a storage node's certificate; this one is for {}",
            link.me.role.as_str()
        );
    }
    let Some(listen) = cpu_listen else {
        bail!(
            "a storage node needs --cpu-listen ADDRESS (e.g. tls!0.0.0.0!17036) for its cpu nodes to link to"
        );
    };
    // Its cpu nodes read blocks from its venti service, over TLS.
    let Some(venti_listen) = venti_listen else {
        bail!("a storage node serves its cpu nodes' blocks: give --venti-listen tls!HOST!PORT");
    };
    let (_, venti_addr) = venti::dial::parse_transport(venti_listen)?;
    let (host, port) = venti_addr
        .rsplit_once(':')
        .context("the --venti-listen address has no port")?;
    // Listening everywhere: the cpu nodes dial it by the public name.
    let host = match host {
        "0.0.0.0" | "[::]" | "::" => public_host,
        h => h,
    };
    let venti = format!("tls!{host}!{port}");
    let pool = storage::placement::Pool::new(link.me.name.clone(), venti, state.users());
    Ok((Arc::new(pool), listen))
}

/// `serve --role cpu`: environments for the storage nodes it links to; no
/// front door and no store of its own, only the shared block cache.
fn serve_cpu(
    args: &RoleArgs,
    file: &ndb::Entry,
    state: StateDir,
    config: CpuConfig,
    has_tls: bool,
) -> Result<()> {
    if !has_tls {
        bail!(
            "a cpu node links to its storage nodes over mutual TLS: give its certificate with --tls DIR"
        );
    }
    let link = link::Link::from_env().map_err(anyhow::Error::msg)?;
    if link.me.role != link::Role::Cpu {
        bail!(
            "--role cpu needs a cpu node's certificate; this one is for {}",
            link.me.role.as_str()
        );
    }
    let mut storage = Vec::new();
    for text in args
        .storage_nodes
        .iter()
        .map(String::as_str)
        .chain(file.all("storage"))
    {
        storage.push(cpu::agent::StorageNode::parse(text).map_err(anyhow::Error::msg)?);
    }
    if storage.is_empty() {
        bail!("a cpu node needs at least one --storage NAME=ADDRESS to run environments for");
    }
    let cache_bytes = match args
        .block_cache
        .clone()
        .or_else(|| file.get("blockcache").map(str::to_string))
    {
        Some(size) => crate::mount_cmd::parse_size(&size)?,
        None => 4 << 30,
    };
    let wait = args
        .block_wait
        .or_else(|| file.get("blockwait").and_then(|v| v.parse().ok()))
        .unwrap_or(30);
    let cache = venti::BlockCache::open(&state.root.join("blockcache"), cache_bytes)?;
    let envs = Arc::new(cpu::Environments::new(state, config)?);
    let agent = cpu::agent::Agent::new(
        envs.clone(),
        link.clone(),
        cache,
        std::time::Duration::from_secs(wait),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for s in storage {
            tracing::info!(storage = %s.name, addr = %s.addr, "linking to storage node");
            tokio::spawn(agent.clone().run(s));
        }
        let shutdown = shutdown_signal();
        tracing::info!(node = %link.me.name, "cpu node ready");
        notify_ready();
        println!("cpu node {} ready", link.me.name);
        std::io::Write::flush(&mut std::io::stdout())?;
        shutdown.await;
        anyhow::Ok(())
    })?;
    let live = envs.live();
    envs.shutdown();
    tracing::info!(environments_ended = live, "cpu node stopped");
    Ok(())
}

/// The replication service, where it listens, and the store that reads
/// through to the peers (with --read-through).
type ReplicationSetup = Option<(
    Arc<replica::Replicator>,
    Option<String>,
    Option<Arc<replica::readthrough::ReadThrough>>,
)>;

/// The replication service the options ask for, and where it listens.
fn replication(
    args: &ReplicaArgs,
    file: &ndb::Entry,
    state: &StateDir,
    log: Option<Arc<LogStore>>,
    has_tls: bool,
    more_status: Option<Arc<dyn Fn() -> String + Send + Sync>>,
) -> Result<ReplicationSetup> {
    let read_through = args.read_through || file.get("readthrough") == Some("yes");
    let batch = args.replica_batch;
    let mut peers = Vec::new();
    for text in args
        .peers
        .iter()
        .map(String::as_str)
        .chain(file.all("peer"))
    {
        peers.push(replica::Peer::parse(text).map_err(anyhow::Error::msg)?);
    }
    let listen = args
        .replica_listen
        .clone()
        .or_else(|| file.get("replicalisten").map(str::to_string));
    if peers.is_empty() && listen.is_none() {
        if read_through {
            bail!("--read-through needs peers to read from (--peer)");
        }
        return Ok(None);
    }
    let Some(store) = log else {
        bail!(
            "replication needs the node's embedded store (it reads the store's log); drop --venti or --store (nodes on one bucket share its blocks already)"
        );
    };
    let link = if has_tls {
        Some(link::Link::from_env().map_err(anyhow::Error::msg)?)
    } else {
        if listen.is_some() || peers.iter().any(|p| !p.plain_venti) {
            bail!(
                "replication between storage nodes runs over mutual TLS: give the node's certificate with --tls DIR"
            );
        }
        None
    };
    let node = match &link {
        Some(l) => l.me.name.clone(),
        None => CpuConfig::default().public_host,
    };
    if let Some(l) = &link
        && l.me.role != link::Role::Storage
    {
        bail!(
            "replication is between storage nodes; this node's certificate is for {}",
            l.me.role.as_str()
        );
    }
    let through = match (&link, read_through) {
        (Some(link), true) => Some(replica::readthrough::ReadThrough::start(
            store.clone(),
            link.clone(),
            node.clone(),
            peers.clone(),
        )),
        (None, true) => bail!("--read-through needs the node's certificate (--tls DIR)"),
        _ => None,
    };
    let catalog = Arc::new(crate::replicate_cmd::NodeCatalog {
        state: state.clone(),
        store: store.clone(),
        node: node.clone(),
        read_through: through.clone(),
    });
    let rep = Arc::new(replica::Replicator {
        node,
        store,
        catalog,
        link,
        dir: state.replica_dir(),
        changes: state.changes.subscribe(),
        board: replica::board::Board::default(),
        peers,
        batch_records: batch
            .unwrap_or(replica::BATCH_RECORDS)
            .clamp(1, replica::frame::MAX_OFFER),
        batch_bytes: replica::BATCH_BYTES,
        catch_up: std::time::Duration::from_secs(1),
        more_status,
        read_through: through.is_some(),
    });
    Ok(Some((rep, listen, through)))
}

fn set_quota(state: &StateDir, user: &str, size: &str) -> Result<()> {
    let limit = match size {
        "none" => None,
        s => Some(crate::mount_cmd::parse_size(s)?),
    };
    state.quotas().update(user, |q| {
        q.limit = limit;
        Ok(())
    })?;
    Ok(())
}

/// Tells systemd the node is ready (a `Type=notify` unit), if it runs
/// under one: READY=1 to $NOTIFY_SOCKET.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.send_to_addr(b"READY=1\nSTATUS=the front door listens", &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "telling systemd the node is ready");
    }
}

/// SIGTERM or SIGINT. The handlers are in place when this returns (not
/// when the future is first polled), so a node that has said it is ready
/// never dies of a signal it meant to take.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Register a user with an SSH public key (another key for an existing user).
    Add {
        name: String,
        /// An OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).
        #[arg(long)]
        key: PathBuf,
        /// The most new stored bytes the user's imports may add (K, M, G, T).
        #[arg(long)]
        quota: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Show or set a user's quota of new stored bytes (SIZE, or `none`).
    Quota {
        name: String,
        size: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// List users and how many keys each has.
    List {
        #[command(flatten)]
        state: StateArg,
    },
    /// Remove a user and their keys.
    Del {
        name: String,
        #[command(flatten)]
        state: StateArg,
    },
}

pub fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            key,
            quota,
            state,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let state = state.resolve()?;
            state.users().add(&name, &text)?;
            if let Some(q) = quota {
                set_quota(&state, &name, &q)?;
            }
            println!("user {name} added");
        }
        UserCommand::Quota { name, size, state } => {
            let state = state.resolve()?;
            if !state.users().exists(&name)? {
                bail!("no user {name} on this node");
            }
            if let Some(q) = &size {
                set_quota(&state, &name, q)?;
            }
            // Set or not, say where it stands.
            let q = state.quotas().get(&name)?;
            match q.limit {
                Some(l) => println!(
                    "{name}: {} of {} used",
                    grid::quota::human(q.used),
                    grid::quota::human(l)
                ),
                None => println!("{name}: no quota ({} used)", grid::quota::human(q.used)),
            }
        }
        UserCommand::List { state } => {
            for (name, keys) in state.resolve()?.users().list()? {
                println!("{name}\t{keys} key{}", if keys == 1 { "" } else { "s" });
            }
        }
        UserCommand::Del { name, state } => {
            state.resolve()?.users().remove(&name)?;
            println!("user {name} removed");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ImportArgs {
    /// The score name to bind.
    name: String,
    /// A directory whose contents become the root.
    path: Option<PathBuf>,
    /// A tar stream (file, or - for standard input) instead of a directory.
    #[arg(long, conflicts_with = "path")]
    tar: Option<PathBuf>,
    /// An OCI image layout, DIR or DIR:TAG (as `skopeo copy … oci:DIR:TAG`
    /// writes), flattened into one root.
    #[arg(long, conflicts_with_all = ["path", "tar"])]
    oci: Option<String>,
    /// Users who may spawn it (at least one).
    #[arg(long = "user", required = true)]
    users: Vec<String>,
    /// Use this venti server instead of the node's embedded store.
    #[arg(long)]
    venti: Option<String>,
    #[command(flatten)]
    state: StateArg,
}

/// `DIR[:TAG]` of `--oci`.
fn oci_arg(text: &str) -> (PathBuf, Option<String>) {
    match text.rsplit_once(':') {
        Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') && Path::new(dir).is_dir() => {
            (PathBuf::from(dir), Some(tag.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

pub fn import(args: ImportArgs) -> Result<()> {
    let state = args.state.resolve()?;
    let names = state.scorenames();
    grid::names::check_score_name(&args.name)?;
    for u in &args.users {
        if !state.users().exists(u)? {
            bail!("no user {u} on this node (add it with `colony user add`)");
        }
    }
    // Names are per user: another user's binding of it is no obstacle.
    let users: Vec<&str> = args.users.iter().map(String::as_str).collect();
    if let Some(u) = names.holder_of(&args.name, &users)? {
        return Err(grid::scorenames::taken(&args.name, Some(&u)).into());
    }
    // A node serving this state directory holds its store: go through
    // the node at once (opening the store would first wait out its lock).
    // A socket left by a node that died refuses the connection.
    if args.venti.is_none()
        && let Ok(sock) = std::os::unix::net::UnixStream::connect(state.root.join(ADMIN_SOCKET))
    {
        return import_through_node(sock, &args);
    }
    let store = match args.venti.as_deref() {
        Some(addr) => open_store(&state, Some(addr))?,
        None => Arc::new(LogStore::open(state.store_dir())?),
    };
    let progress = Progress::new("importing");
    let mut tree = Tree::default();
    match (&args.path, &args.tar, &args.oci) {
        (Some(path), None, None) => {
            let mut importer =
                DirImporter::new(store.as_ref(), BlockSizes::default(), &progress, None);
            importer.add(&mut tree, &contents_of(path))?;
        }
        (None, Some(tar), None) => {
            let mut input: Box<dyn std::io::Read> = if tar.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(tar)
                        .with_context(|| format!("opening {}", tar.display()))?,
                )
            };
            vac::tar::import_tar(
                store.as_ref(),
                BlockSizes::default(),
                &mut tree,
                &mut input,
                &progress,
            )?;
        }
        (None, None, Some(oci)) => {
            let (dir, tag) = oci_arg(oci);
            tree = vac::oci::import_layout(
                store.as_ref(),
                BlockSizes::default(),
                &vac::oci::DirLayout::new(&dir),
                tag.as_deref(),
                &progress,
                &|| false,
            )?;
        }
        _ => bail!("give a directory, --tar FILE or --oci DIR[:TAG]"),
    }
    let score = tree.write(store.as_ref(), BlockSizes::default(), None)?;
    progress.finish();
    names.bind(&args.name, &score, &users)?;
    println!("{} vac:{score}", args.name);
    Ok(())
}

/// The node's socket for its admin on this machine (`colony import` while
/// the node runs): `STATE/admin.sock`, mode 0600.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Streams the import to the running node: a header line, then a tar
/// stream (of the directory or the OCI layout, made by tar(1), or the
/// --tar stream itself).
fn import_through_node(mut sock: std::os::unix::net::UnixStream, args: &ImportArgs) -> Result<()> {
    use std::io::{BufRead, Read, Write};
    let (format, tar_of) = match (&args.path, &args.tar, &args.oci) {
        (Some(dir), None, None) => ("tar".to_string(), Some(dir.clone())),
        (None, Some(_), None) => ("tar".to_string(), None),
        (None, None, Some(oci)) => {
            let (dir, tag) = oci_arg(oci);
            (
                match tag {
                    Some(t) => format!("oci:{t}"),
                    None => "oci".into(),
                },
                Some(dir),
            )
        }
        _ => bail!("give a directory, --tar FILE or --oci DIR[:TAG]"),
    };
    writeln!(
        sock,
        "import {} {} {format}",
        args.name,
        args.users.join(",")
    )?;
    let mut input: Box<dyn Read> = match (&tar_of, &args.tar) {
        (Some(dir), _) => {
            let child = std::process::Command::new("tar")
                .arg("-C")
                .arg(dir)
                .args(["-cf", "-", "."])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("running tar(1) to stream the directory")?;
            Box::new(child.stdout.context("tar's output")?)
        }
        (None, Some(t)) if t.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        (None, Some(t)) => {
            Box::new(std::fs::File::open(t).with_context(|| format!("opening {}", t.display()))?)
        }
        (None, None) => unreachable!("checked above"),
    };
    std::io::copy(&mut input, &mut sock)?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let mut reply = std::io::BufReader::new(sock);
    let mut status = String::new();
    reply.read_line(&mut status)?;
    let mut text = String::new();
    reply.read_to_string(&mut text)?;
    if status.trim() == "0" {
        print!("{text}");
        Ok(())
    } else {
        bail!("{}", text.trim_end())
    }
}

/// Serves the admin socket: `import NAME USER[,USER…] tar|oci[:TAG]`, then
/// the stream; answers the status, then what the import printed.
pub fn serve_admin(node: Arc<Node>, state: &StateDir) -> Result<()> {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    let path = state.root.join(ADMIN_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let node = node.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&conn);
                let mut header = String::new();
                // A header is a line, not a stream of its own.
                let _ = std::io::Read::take(&mut reader, 4096).read_line(&mut header);
                let words: Vec<&str> = header.split_whitespace().collect();
                let reply = match words.as_slice() {
                    ["import", name, users, format] => {
                        let users: Vec<&str> = users.split(',').collect();
                        let format = match *format {
                            "tar" => Ok(storage::import::Format::Tar),
                            f => storage::import::Format::parse(Some(f)),
                        };
                        match format {
                            Ok(f) => node.import_for(
                                "admin",
                                None,
                                &users,
                                name,
                                storage::import::Upload {
                                    format: &f,
                                    input: &mut reader,
                                    cancelled: &|| false,
                                },
                            ),
                            Err(e) => storage::Reply::fail(e),
                        }
                    }
                    _ => storage::Reply::fail(format!("bad request {:?}", header.trim())),
                };
                let mut out = &conn;
                let _ = write!(out, "{}\n{}{}", reply.status, reply.out, reply.err);
            });
        }
    });
    Ok(())
}

/// `DIR` → `DIR/.`, so the directory's contents become the root.
fn contents_of(path: &Path) -> PathBuf {
    path.join(".")
}

#[derive(Subcommand)]
pub enum NdbCommand {
    /// Look up entries, as Plan 9's ndb/query: `-f FILE ATTR VALUE [RATTR]`.
    Query {
        /// With RATTR: every RATTR value of every matching entry.
        #[arg(short = 'a')]
        all: bool,
        #[arg(short = 'f')]
        file: PathBuf,
        attr: String,
        value: String,
        rattr: Option<String>,
    },
}

/// Prints what Plan 9 `ndb/query` prints; exits 1 when nothing matches.
pub fn ndb_query(cmd: NdbCommand) -> Result<()> {
    let NdbCommand::Query {
        all,
        file,
        attr,
        value,
        rattr,
    } = cmd;
    if !file.exists() {
        bail!("{}: no such file", file.display());
    }
    let db = ndb::Db::open(&file)?;
    let mut found = false;
    match (rattr, all) {
        (None, _) => {
            for e in db.search(&attr, &value) {
                println!("{}", e.query_line());
                found = true;
            }
        }
        (Some(r), false) => {
            if let Some(v) = db.get_value(&attr, &value, &r) {
                println!("{v}");
                found = true;
            }
        }
        (Some(r), true) => {
            for e in db.search(&attr, &value) {
                for v in e.all(&r) {
                    println!("{v}");
                    found = true;
                }
            }
        }
    }
    if !found {
        std::process::exit(1);
    }
    Ok(())
}

/// A FIRST-LAST port range of a serve option.
fn port_range(range: &str, option: &str) -> Result<(u16, u16)> {
    let (a, b) = range
        .split_once('-')
        .with_context(|| format!("{option} takes FIRST-LAST"))?;
    let ports: (u16, u16) = (
        a.parse()
            .with_context(|| format!("{option}: bad first port"))?,
        b.parse()
            .with_context(|| format!("{option}: bad last port"))?,
    );
    if ports.0 > ports.1 {
        bail!("{option}: {range} is empty");
    }
    Ok(ports)
}
