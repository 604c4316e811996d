//! A grid node as a library: [`Node::start`] takes a checked [`Config`]
//! and wires what the node's role needs (the block store, replication,
//! the hubs of its message streams, metrics, the admin address and socket,
//! the venti listener, placement on cpu nodes, the front door, or a cpu
//! node's links to its storage nodes); [`Node::shutdown`] stops it all.
//!
//! Reading the environment and signals stays with the binary: a library
//! is given paths and the node's certificate, never looks them up.

pub mod admin_socket;
pub mod catalog;
pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use grid::state::StateDir;
use venti::{BlockStore, LogStore, RemoteStore};

pub use config::{Config, ConfigError, Role, Sources};

/// Where the status page's events are kept, in the state directory.
pub const EVENTS_FILE: &str = "events";

/// How often the store's size is sampled for the status page's plot.
const GROWTH_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A running node.
pub struct Node {
    /// The certificate's name, else the host's.
    pub name: String,
    pub role: Role,
    /// The front door (not on a cpu node).
    pub front_door: Option<SocketAddr>,
    /// The admin address (`/metrics` and the status page), if asked for.
    pub admin: Option<SocketAddr>,
    link: Option<Arc<link::Link>>,
    runs: Runs,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    serving: Option<tokio::task::JoinHandle<()>>,
    admin_socket: Option<admin_socket::AdminSocket>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Whose environments end when the node stops.
enum Runs {
    Node(Arc<storage::Node>),
    Cpu(Arc<cpu::Environments>),
}

impl Node {
    /// Starts a node as `config` says. Fails, having started nothing that
    /// outlives the call, if a setting does not fit the role or an
    /// address cannot be bound.
    pub fn start(config: Config) -> Result<Node> {
        let Some(root) = config.state.clone() else {
            bail!("no state directory: give state= in the configuration, or --state");
        };
        let state = StateDir::open(root)?;
        // Imports of a node that died mid-import left their scratch stores.
        let removed = storage::import::remove_leftovers(&state.root.join("tmp"));
        if removed > 0 {
            tracing::info!(removed, "removed what interrupted imports left behind");
        }
        let link = match &config.tls {
            Some(dir) => Some(
                link::Link::load_with(dir, config.tls_timeout)
                    .with_context(|| format!("the node's certificate in {}", dir.display()))?,
            ),
            None => None,
        };
        let runtime = tokio::runtime::Runtime::new()?;
        if config.role == Role::Cpu {
            return start_cpu(config, state, link, runtime);
        }
        state.read_indexes_ahead();
        start_storage(config, state, link, runtime)
    }

    /// Reloads the certificate's revocation list (the binary calls this on
    /// SIGHUP; it is also reloaded whenever its file changes).
    pub fn reload_certificates(&self) {
        if let Some(link) = &self.link {
            link.reload();
        }
    }

    /// How many more environments the node could start now (a storage
    /// node: on the cpu nodes linked to it); none on a cpu node.
    pub fn room(&self) -> Option<usize> {
        match &self.runs {
            Runs::Node(node) => Some(node.room()),
            Runs::Cpu(_) => None,
        }
    }

    /// Stops serving, ends the node's environments and releases its
    /// listeners and store; returns how many environments were ended.
    pub fn shutdown(mut self) -> usize {
        self.stop_now()
    }

    fn stop_now(&mut self) -> usize {
        let Some(runtime) = self.runtime.take() else {
            return 0;
        };
        if let Runs::Node(node) = &self.runs {
            node.stopping();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(serving) = self.serving.take() {
            let _ = runtime.block_on(serving);
        }
        if let Some(socket) = self.admin_socket.take() {
            socket.stop();
        }
        let live = match &self.runs {
            Runs::Node(node) => {
                let live = node.live();
                node.shutdown();
                live
            }
            Runs::Cpu(envs) => {
                let live = envs.live();
                envs.shutdown();
                live
            }
        };
        // Every listener and link task goes with the runtime.
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        tracing::info!(environments_ended = live, "grid node stopped");
        live
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The embedded store of the state directory.
pub fn open_log_store(state: &StateDir) -> Result<Arc<LogStore>> {
    Ok(Arc::new(LogStore::open(state.store_dir()).map_err(|e| match e {
        venti::StoreError::Busy(_) => anyhow::anyhow!(
            "{e} (is `colony serve` running on this state directory? start it with venti-listen= and give venti= to the other)"
        ),
        e => e.into(),
    })?))
}

/// Binds `addr` (any dial form) on the node's runtime.
async fn bind(addr: &str, what: &str) -> Result<tokio::net::TcpListener> {
    let (_, addr) = link::dial::parse_transport(addr)?;
    tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("{what} on {addr}"))
}

/// The single node and the storage node.
fn start_storage(
    config: Config,
    state: StateDir,
    link: Option<Arc<link::Link>>,
    runtime: tokio::runtime::Runtime,
) -> Result<Node> {
    if config.role == Role::Both {
        for (given, name) in [
            (config.cpu_listen.is_some(), "cpu-listen"),
            (!config.storage.is_empty(), "storage"),
        ] {
            if given {
                bail!(
                    "{name} is for a grid of storage and cpu nodes (role=storage or role=cpu), not role=both"
                );
            }
        }
    } else if !config.storage.is_empty() {
        bail!(
            "storage= is a cpu node's (role=cpu): a storage node takes its cpu nodes' links at cpu-listen"
        );
    }
    if let Some(l) = &config.listen.strip_prefix("tls!") {
        bail!("listen=tls!{l}: the front door is SSH; give HOST:PORT or tcp!HOST!PORT");
    }
    let key = grid::ssh::host_key(&state.host_key())?;
    let mut bucket = None;
    let (store, log): (Arc<dyn BlockStore>, Option<Arc<LogStore>>) = match (
        &config.venti,
        &config.store,
    ) {
        (Some(_), Some(_)) => {
            bail!("give the node a venti server or a bucket (venti= or store=), not both")
        }
        (Some(addr), None) => {
            let dial = link::dial::redial(addr, link.clone(), link::dial::STORE_SERVERS);
            (Arc::new(RemoteStore::connect(addr, dial)?), None)
        }
        (None, Some(url)) => {
            let Some(settings) = &config.s3 else {
                bail!(
                    "store={url} needs the object store's settings (the binary reads them from AWS_* and the S3 settings file)"
                );
            };
            let opened = s3store::open_with(settings).with_context(|| format!("opening {url}"))?;
            // Collections mark through the cache, uncounted.
            bucket = Some((opened.packs, opened.store.clone()));
            (opened.store, None)
        }
        (None, None) => {
            let log = open_log_store(&state)?;
            (log.clone(), Some(log))
        }
    };
    let pool = match config.role {
        Role::Storage => Some(storage_pool(&config, &state, link.as_ref())?),
        _ => None,
    };
    // `colony grid status` shows a storage node's cpu nodes too.
    let more_status = pool.as_ref().map(|(p, _)| {
        let p = p.clone();
        Arc::new(move || p.cpus()) as Arc<dyn Fn() -> String + Send + Sync>
    });
    let replication = replication(&config, &state, log.clone(), link.as_ref(), more_status)?;
    // A node that reads through serves its environments from the store
    // that fetches what replication has not brought yet.
    let store: Arc<dyn BlockStore> = match replication.as_ref().and_then(|r| r.through.clone()) {
        Some(through) => through,
        None => store,
    };
    let streams = match &config.hubs_listen {
        Some(addr) => {
            let addr = link::dial::parse(addr)?;
            let listener = std::net::TcpListener::bind(&addr)
                .with_context(|| format!("hub listener on {addr}"))?;
            if !listener.local_addr()?.ip().is_loopback() {
                bail!(
                    "hubs-listen serves 9P without authentication: give a loopback address (e.g. 127.0.0.1:5641)"
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
    // Every block the node stores or reads through its commands is counted.
    let metrics = Arc::new(storage::metrics::Metrics::new());
    let store: Arc<dyn BlockStore> = Arc::new(storage::metrics::MeteredStore {
        inner: store,
        metrics: metrics.clone(),
    });
    // The status page's events outlive a restart.
    metrics.keep_events_in(&state.root.join(EVENTS_FILE));
    if let Some(log) = &log {
        let log = log.clone();
        metrics.refresh_with(Box::new(move |m| {
            m.store_bytes.set(log.durable_end() as i64);
        }));
    }
    let node = match &pool {
        Some((pool, _)) => storage::Node::new(state.clone(), pool.clone()),
        None => storage::Node::local(state.clone(), store.clone(), config.cpu.clone())?,
    }
    .with_store(store.clone())
    .with_metrics(metrics.clone());
    // Its own log store is collected, and so is its bucket (a venti
    // server's blocks are not this node's to drop).
    let node = match (&log, bucket) {
        (Some(log), _) => {
            log.set_grace(config.gc_grace);
            node.with_collector(Arc::new(storage::collect::Collector::new(
                log.clone(),
                config.gc_memory,
                replication.as_ref().map(|r| r.replicator.clone()),
            )))
        }
        (None, Some((packs, cached))) => {
            packs.set_grace(config.gc_grace);
            let user = bucket_user(&state)?;
            let name = link.as_ref().map(|l| l.me.name.clone());
            let about = format!(
                "{} on {}, state {}",
                name.as_deref().unwrap_or("a storage node"),
                cpu::host_name(),
                state.root.display()
            );
            // Another node on the bucket stops this one's collections;
            // this is how it learns of this one.
            packs
                .register_collector(&user, &about)
                .context("registering this node on its bucket")?;
            node.with_collector(Arc::new(storage::collect::Collector::for_bucket(
                packs,
                cached,
                user,
                config.gc_memory,
            )))
        }
        _ => node,
    };
    if let (Some(s), Some((pool, _))) = (&streams, &pool) {
        let _ = pool.streams.set(s.clone());
    }
    if let Some((pool, _)) = &pool {
        let _ = pool.metrics.set(metrics.clone());
        let _ = pool.store.set(store.clone());
    }
    if let (Some(s), Some(rep)) = (&streams, &replication) {
        let s = s.clone();
        rep.replicator
            .board
            .tell(Arc::new(move |event| s.event(event)));
    }
    let node = Arc::new(match streams {
        Some(s) => node.with_streams(s),
        None => node,
    });
    // A user's work is one set across the grid: peers ask this node about
    // what it holds, and it asks them.
    if let (Some(rep), Some(link)) = (&replication, &link) {
        let desk: Arc<dyn replica::ask::Desk> = Arc::new(storage::Desk(Arc::downgrade(&node)));
        let _ = rep.replicator.desk.set(desk);
        node.set_peers(storage::peers::Peers::new(
            link.clone(),
            rep.replicator.clone(),
            runtime.handle().clone(),
        ));
    }
    let name = match &link {
        Some(l) => l.me.name.clone(),
        None => cpu::host_name(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = runtime.block_on(async {
        let front = bind(&config.listen, "the front door").await?;
        let front_door = front.local_addr()?;
        if let Some(venti_listen) = &config.venti_listen {
            let (transport, _) = link::dial::parse_transport(venti_listen)?;
            // With the node's certificate, its block store is served to
            // grid members only, whichever way the address is written.
            match (&link, transport) {
                (None, link::dial::Transport::Tls) => {
                    bail!("venti-listen=tls!… needs the node's certificate: tls=DIR")
                }
                (Some(_), link::dial::Transport::Tcp) => {
                    tracing::warn!(address = %venti_listen, "venti-listen is written tcp!… but serves mutual TLS to grid members only, since the node has a certificate: write tls!… to say so");
                }
                _ => {}
            }
            let listener = bind(venti_listen, "the venti listener").await?;
            tracing::info!(address = %listener.local_addr()?, tls = link.is_some(), "serving the block store over venti");
            let (store, forever) = (store.clone(), std::future::pending());
            match &link {
                Some(link) => {
                    let admit = link.admitter(link::Role::ALL.to_vec(), "a venti link");
                    tokio::spawn(venti::server::serve_with(listener, store, admit, forever));
                }
                None => {
                    tokio::spawn(venti::server::serve(listener, store, forever));
                }
            }
        }
        let admin_rep = replication.as_ref().map(|r| r.replicator.clone());
        if let Some(r) = replication {
            r.replicator.start().map_err(anyhow::Error::msg)?;
            if let Some(listen) = &r.listen {
                let listener = bind(listen, "the replication listener").await?;
                tracing::info!(address = %listener.local_addr()?, node = %r.replicator.node, peers = r.replicator.peers.len(), "accepting replication");
                tokio::spawn(replica::keep::serve(r.replicator, listener));
            }
        }
        let admin_pool = pool.as_ref().map(|(p, _)| p.clone());
        if let (Some((pool, listen)), Some(link)) = (pool, &link) {
            let listener = bind(&listen, "the cpu node listener").await?;
            tracing::info!(address = %listener.local_addr()?, venti = %pool.venti, "accepting cpu nodes");
            tokio::spawn(storage::placement::serve(pool, link.clone(), listener));
        }
        let admin = match &config.admin_listen {
            Some(addr) => {
                let listener = bind(addr, "the admin listener").await?;
                let bound = listener.local_addr()?;
                let tls = if bound.ip().is_loopback() {
                    None
                } else {
                    match &link {
                        Some(l) => Some(l.clone()),
                        None => bail!(
                            "admin-listen={bound} is off loopback: it needs the node's certificate (tls=DIR), and then answers only grid certificates"
                        ),
                    }
                };
                refresh_metrics(&metrics, &node, link.as_ref(), admin_rep.clone());
                let admin = Arc::new(storage::admin::Admin {
                    node: node.clone(),
                    metrics: metrics.clone(),
                    name: name.clone(),
                    replication: admin_rep.clone(),
                    cpu_nodes: admin_pool.clone(),
                });
                tracing::info!(address = %bound, tls = tls.is_some(), "admin address: /metrics and the status page");
                // Where it listens (a port of 0 picks one), for scripts.
                let _ = std::fs::write(state.root.join("admin.addr"), format!("{bound}\n"));
                tokio::spawn(storage::admin::serve(admin, listener, tls));
                Some(bound)
            }
            None => None,
        };
        // On a schedule only the node's own log: a bucket may hold archives
        // other processes wrote and no name here keeps (`colony vac
        // --store`), so its collections run only when asked for.
        if let (Some(every), Some(_)) = (config.gc_every, &log) {
            let node = node.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let node = node.clone();
                    let _ = tokio::task::spawn_blocking(move || node.collect(&mut |_| {})).await;
                }
            });
        }
        // The growth plot's samples come on a timer, not only when someone looks.
        {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(GROWTH_SAMPLE_EVERY);
                loop {
                    every.tick().await;
                    let m = metrics.clone();
                    let _ = tokio::task::spawn_blocking(move || m.sample()).await;
                }
            });
        }
        let mut stopped = stopped;
        let shutdown = async move {
            let _ = stopped.wait_for(|&s| s).await;
        };
        let serving = tokio::spawn(storage::frontdoor::serve(
            node.clone(),
            front,
            key,
            config.login_grace,
            shutdown,
        ));
        // Jobs a previous run left queued (or running, with retries left)
        // take their turns again.
        node.up();
        tracing::info!(address = %front_door, "grid node ready");
        anyhow::Ok((front_door, admin, serving))
    });
    let (front_door, admin, serving) = match started {
        Ok(s) => s,
        Err(e) => {
            node.shutdown();
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            return Err(e);
        }
    };
    let socket = admin_socket::AdminSocket::serve(node.clone(), &state);
    let mut started = Node {
        name,
        role: config.role,
        front_door: Some(front_door),
        admin,
        link,
        runs: Runs::Node(node),
        stop: Some(stop),
        serving: Some(serving),
        admin_socket: None,
        runtime: Some(runtime),
    };
    // Without its socket the node is stopped again (by drop) before the
    // error is returned: nothing it started outlives the call.
    started.admin_socket = Some(socket?);
    Ok(started)
}

/// What the admin address's /metrics refreshes when it is read.
fn refresh_metrics(
    metrics: &Arc<storage::metrics::Metrics>,
    node: &Arc<storage::Node>,
    link: Option<&Arc<link::Link>>,
    rep: Option<Arc<replica::Replicator>>,
) {
    // Weak: the node holds its metrics, which would otherwise hold the
    // node (and its store's lock) for ever.
    let node = Arc::downgrade(node);
    metrics.refresh_with(Box::new(move |m| {
        let Some(node) = node.upgrade() else {
            return;
        };
        for (state, n) in node.counts().by_state() {
            m.environments
                .get_or_create(&storage::metrics::StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        // Only the environments running now.
        m.cache_used_bytes.clear();
        m.cache_capacity_bytes.clear();
        for (user, environment, used, capacity) in node.cache_use() {
            let l = storage::metrics::CacheLabels { user, environment };
            m.cache_used_bytes.get_or_create(&l).set(used as i64);
            m.cache_capacity_bytes
                .get_or_create(&l)
                .set(capacity as i64);
        }
    }));
    if let Some(link) = link.cloned() {
        metrics.refresh_with(Box::new(move |m| {
            for (reason, n) in link.refused_so_far() {
                let l = storage::metrics::ReasonLabel {
                    reason: reason.into(),
                };
                storage::metrics::catch_up(&m.tls_refused.get_or_create(&l), n);
            }
        }));
    }
    if let Some(rep) = rep {
        metrics.refresh_with(Box::new(move |m| {
            for (peer, blocks, bytes) in rep.lag() {
                let l = storage::metrics::PeerLabel { peer };
                m.replication_lag_blocks
                    .get_or_create(&l)
                    .set(blocks as i64);
                m.replication_lag_bytes.get_or_create(&l).set(bytes as i64);
            }
        }));
    }
}

/// The node's certificate, which a node of `role` must have, and for
/// that role, to link to `others`.
fn certificate_for<'a>(
    link: Option<&'a Arc<link::Link>>,
    role: link::Role,
    others: &str,
) -> Result<&'a Arc<link::Link>> {
    let Some(link) = link else {
        bail!(
            "a {} node links to {others} over mutual TLS: give its certificate (tls=DIR)",
            role.as_str()
        );
    };
    if link.me.role != role {
        bail!(
            "role={} needs a {} node's certificate; this one is for {}",
            role.as_str(),
            role.as_str(),
            link.me.role.as_str()
        );
    }
    Ok(link)
}

/// A storage node's placement of environments on its cpu nodes, and
/// where it accepts them.
fn storage_pool(
    config: &Config,
    state: &StateDir,
    link: Option<&Arc<link::Link>>,
) -> Result<(Arc<storage::placement::Pool>, String)> {
    let link = certificate_for(link, link::Role::Storage, "its cpu nodes")?;
    let Some(listen) = config.cpu_listen.clone() else {
        bail!(
            "a storage node needs cpu-listen=ADDRESS (e.g. tls!0.0.0.0!17036) for its cpu nodes to link to"
        );
    };
    // Its cpu nodes read blocks from its venti service, over TLS.
    let Some(venti_listen) = &config.venti_listen else {
        bail!("a storage node serves its cpu nodes' blocks: give venti-listen=tls!HOST!PORT");
    };
    let (_, venti_addr) = link::dial::parse_transport(venti_listen)?;
    let (host, port) = venti_addr
        .rsplit_once(':')
        .context("the venti-listen address has no port")?;
    // Listening everywhere: the cpu nodes dial it by the public name.
    let host = match host {
        "0.0.0.0" | "[::]" | "::" => config.cpu.public_host.as_str(),
        h => h,
    };
    let venti = format!("tls!{host}!{port}");
    let pool = storage::placement::Pool::new(link.me.name.clone(), venti, state.clone());
    Ok((Arc::new(pool), listen))
}

/// This node's id on a bucket it collects: made once, kept in its state
/// directory, so that a restart is the same user.
fn bucket_user(state: &StateDir) -> Result<String> {
    let path = state.root.join("bucket-user");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    // Unique, not secret: the hasher's random keys, the time and the pid.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let id = format!("{}-{:016x}", cpu::host_name(), h.finish());
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The replication service a node was asked for.
struct Replication {
    replicator: Arc<replica::Replicator>,
    /// Where it accepts its peers.
    listen: Option<String>,
    /// The store that reads through to the peers (read-through=yes).
    through: Option<Arc<replica::readthrough::ReadThrough>>,
}

fn replication(
    config: &Config,
    state: &StateDir,
    log: Option<Arc<LogStore>>,
    link: Option<&Arc<link::Link>>,
    more_status: Option<Arc<dyn Fn() -> String + Send + Sync>>,
) -> Result<Option<Replication>> {
    let peers = config.peers.clone();
    let listen = config.replica_listen.clone();
    if peers.is_empty() && listen.is_none() {
        if config.read_through {
            bail!("read-through needs peers to read from (peer=NAME=ADDRESS)");
        }
        return Ok(None);
    }
    let Some(store) = log else {
        bail!(
            "replication needs the node's embedded store (it reads the store's log); drop venti= or store= (nodes on one bucket share its blocks already)"
        );
    };
    if link.is_none() && (listen.is_some() || peers.iter().any(|p| !p.plain_venti)) {
        bail!(
            "replication between storage nodes runs over mutual TLS: give the node's certificate (tls=DIR)"
        );
    }
    let node = match link {
        Some(l) => l.me.name.clone(),
        None => config.cpu.public_host.clone(),
    };
    if let Some(l) = link
        && l.me.role != link::Role::Storage
    {
        bail!(
            "replication is between storage nodes; this node's certificate is for {}",
            l.me.role.as_str()
        );
    }
    let through = match (link, config.read_through) {
        (Some(link), true) => Some(replica::readthrough::ReadThrough::start(
            store.clone(),
            link.clone(),
            node.clone(),
            peers.clone(),
        )),
        (None, true) => bail!("read-through needs the node's certificate (tls=DIR)"),
        _ => None,
    };
    let catalog = Arc::new(catalog::NodeCatalog::new(
        state.clone(),
        store.clone(),
        node.clone(),
        through.clone(),
    ));
    let replicator = Arc::new(replica::Replicator {
        node,
        store,
        catalog,
        link: link.cloned(),
        dir: state.replica_dir(),
        changes: state.changes.subscribe(),
        board: replica::board::Board::default(),
        peers,
        batch_records: config.replica_batch.clamp(1, replica::frame::MAX_OFFER),
        batch_bytes: replica::BATCH_BYTES,
        catch_up: std::time::Duration::from_secs(1),
        more_status,
        desk: Default::default(),
        read_through: through.is_some(),
    });
    Ok(Some(Replication {
        replicator,
        listen,
        through,
    }))
}

/// `role=cpu`: environments for the storage nodes it links to; no front
/// door and no store of its own, only the shared block cache.
fn start_cpu(
    config: Config,
    state: StateDir,
    link: Option<Arc<link::Link>>,
    runtime: tokio::runtime::Runtime,
) -> Result<Node> {
    let link = certificate_for(link.as_ref(), link::Role::Cpu, "its storage nodes")?.clone();
    for (given, name) in [
        (config.venti.is_some(), "venti"),
        (config.store.is_some(), "store"),
        (config.venti_listen.is_some(), "venti-listen"),
        (config.cpu_listen.is_some(), "cpu-listen"),
        (config.replica_listen.is_some(), "replica-listen"),
        (!config.peers.is_empty(), "peer"),
        (config.admin_listen.is_some(), "admin-listen"),
        (config.hubs_listen.is_some(), "hubs-listen"),
    ] {
        if given {
            bail!(
                "{name}= is not for a cpu node: it has no store, names or front door of its own (its storage nodes do)"
            );
        }
    }
    if config.storage.is_empty() {
        bail!("a cpu node needs at least one storage=NAME=ADDRESS to run environments for");
    }
    let cache = venti::BlockCache::open(&state.root.join("blockcache"), config.block_cache)?;
    let envs = cpu::Environments::new(state, config.cpu.clone())?;
    let agent = cpu::agent::Agent::new(envs.clone(), link.clone(), cache, config.block_wait);
    runtime.block_on(async {
        for s in config.storage {
            tracing::info!(storage = %s.name, addr = %s.addr, "linking to storage node");
            tokio::spawn(agent.clone().run(s));
        }
    });
    tracing::info!(node = %link.me.name, "cpu node ready");
    Ok(Node {
        name: link.me.name.clone(),
        role: Role::Cpu,
        front_door: None,
        admin: None,
        link: Some(link),
        runs: Runs::Cpu(envs),
        stop: None,
        serving: None,
        admin_socket: None,
        runtime: Some(runtime),
    })
}
