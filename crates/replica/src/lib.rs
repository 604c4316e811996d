//! Replication between storage nodes, ventiprog done right.
//!
//! Every storage node runs a *pusher* per configured peer and a *keeper*
//! that its peers push to, over the grid's mutual-TLS links:
//!
//! * Blocks: the pusher reads this node's log from the peer's position
//!   (kept durably in `PEER.progress`, see [`progress`]), offers the scores,
//!   sends only the blocks the keeper lacks, and moves the position once
//!   the keeper says they are durable. It starts the moment a sync makes
//!   new blocks durable ([`venti::LogStore::watch_durable`]); an idle link
//!   costs one ping round trip now and then, and no log scan.
//! * Names: after the blocks, the bindings whose blocks lie before the
//!   acknowledged position, never one beyond, so *a name is never visible
//!   on a node before every block of its root is durable there*. The keeper
//!   checks the root block again before it merges.
//! * Users: the whole (small) user set whenever it changed; merging is
//!   grow-only with tombstones, so replaying is harmless.
//! * Blocks a keeper stores enter its own log, so its pushers forward them:
//!   chains and meshes converge, and a block a node has costs one score.
//!
//! * Reading through ([`readthrough`]): a node that joins late takes its
//!   peers' names at once and fetches missing blocks from them on demand.
//!
//! The names and users themselves belong to the layer above, behind
//! [`Catalog`]. [`frame`] is the wire format; [`board`] the status text.

pub mod ask;
pub mod board;
pub mod catalog;
pub mod frame;
pub mod keep;
pub mod progress;
pub mod push;
pub mod readthrough;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use catalog::Catalog;
use venti::LogStore;

/// A peer this node pushes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The name its certificate must carry (for a plain venti server: a
    /// label for status and its progress file).
    pub name: String,
    /// `tls!HOST!PORT`, `tcp!HOST!PORT` or `HOST:PORT`.
    pub address: String,
    /// A plain venti server: blocks only, no offers, no names.
    pub plain_venti: bool,
}

impl Peer {
    /// `NAME=ADDRESS` or `venti:NAME=ADDRESS`, as `--peer` and the
    /// configuration file's `peer=` take them.
    pub fn parse(text: &str) -> Result<Peer, String> {
        let (plain_venti, rest) = match text.strip_prefix("venti:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (name, address) = rest.split_once('=').ok_or_else(|| {
            format!("peer {text:?}: expected NAME=ADDRESS (e.g. b=tls!10.0.0.2!17035)")
        })?;
        link::identity::check_name(name).map_err(|e| format!("peer {text:?}: {e}"))?;
        link::dial::parse_transport(address).map_err(|e| format!("peer {text:?}: {e}"))?;
        Ok(Peer {
            name: name.to_string(),
            address: address.to_string(),
            plain_venti,
        })
    }
}

/// The replication service of one storage node.
pub struct Replicator {
    /// This node's name (its certificate's).
    pub node: String,
    pub store: Arc<LogStore>,
    pub catalog: Arc<dyn Catalog>,
    /// The node's identity; without one only plain venti peers work.
    pub link: Option<Arc<link::Link>>,
    /// Where the progress files live.
    pub dir: PathBuf,
    /// Bumped whenever names or users change here.
    pub changes: tokio::sync::watch::Receiver<u64>,
    pub board: board::Board,
    pub peers: Vec<Peer>,
    /// A batch: at most this many blocks …
    pub batch_records: usize,
    /// … and about this many bytes.
    pub batch_bytes: usize,
    /// This node reads missing blocks through from its peers, so it asks
    /// them for names before their blocks (a node joining a grid late).
    pub read_through: bool,
    /// How often an idle link pings (and re-reads the catalog, for changes
    /// made by other processes).
    pub catch_up: Duration,
    /// More for the status text, from the node's other services (a
    /// storage node's cpu nodes).
    pub more_status: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Where peers' asks about their users' work are answered (a storage
    /// node's command set, set once it exists); without it they are
    /// refused.
    pub desk: std::sync::OnceLock<Arc<dyn ask::Desk>>,
}

/// Default batch limits: a batch is what a kill may cost again.
pub const BATCH_RECORDS: usize = 4096;
pub const BATCH_BYTES: usize = 8 << 20;

impl Replicator {
    /// Starts a pusher per peer on the current runtime.
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        for peer in &self.peers {
            if peer.name == self.node {
                return Err(format!("peer {} is this node itself", peer.name));
            }
            tokio::spawn(push::run(self.clone(), peer.clone()));
        }
        Ok(())
    }

    /// Each peer this node pushes to, with how far it has acknowledged
    /// this node's log and names (its progress file).
    pub fn acknowledged(&self) -> Vec<(Peer, progress::Position)> {
        self.peers
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    progress::ProgressFile::new(&self.dir, &p.name).load(),
                )
            })
            .collect()
    }

    /// For a collection, which must not sweep past any of them: every
    /// position this node has kept for a peer (a peer no longer
    /// configured too: one added again resumes from its file), each made
    /// durable first, so a power loss never brings back an earlier one.
    pub fn durable_positions(&self) -> Result<Vec<(String, u64)>, String> {
        let mut out = Vec::new();
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("reading {}: {e}", self.dir.display())),
        };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(peer) = name.strip_suffix(".progress") else {
                continue;
            };
            let at = progress::ProgressFile::new(&self.dir, peer)
                .load_durable()
                .map_err(|e| format!("syncing {}: {e}", entry.path().display()))?;
            out.push((peer.to_string(), at.blocks));
        }
        // A peer with no file yet reads from the log's start, which is
        // always the start of a record or of a skip: no bound.
        Ok(out)
    }

    /// The storage nodes that have ever pushed to this node (each noted in
    /// `DIR/NAME.pusher` the first time), and those pushing now.
    pub fn pushed_by(&self) -> Vec<String> {
        let mut out: Vec<String> = self.board.snapshot().1.into_keys().collect();
        if let Ok(listing) = std::fs::read_dir(&self.dir) {
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(peer) = name.strip_suffix(".pusher")
                    && !out.iter().any(|p| p == peer)
                {
                    out.push(peer.to_string());
                }
            }
        }
        out
    }

    /// Notes, durably, that storage node `peer` pushes to this node.
    pub fn note_pusher(&self, peer: &str) -> std::io::Result<()> {
        let path = self.dir.join(format!("{peer}.pusher"));
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::File::create(&path)?.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Per peer: blocks and bytes of this node's log it has not
    /// acknowledged (for metrics).
    pub fn lag(&self) -> Vec<(String, u64, u64)> {
        let (out, _) = self.board.snapshot();
        let end = self.store.durable_end();
        out.iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    self.store.count_records(o.position).unwrap_or(0),
                    end.saturating_sub(o.position),
                )
            })
            .collect()
    }

    /// Where each peer stands: this node's link to it, how far behind it
    /// is, and what it has sent here.
    pub fn peers(&self) -> board::Peers {
        let (out, inc) = self.board.snapshot();
        let names = self.catalog.names_count().unwrap_or(0);
        let end = self.store.durable_end();
        let outgoing = out
            .into_iter()
            .map(|(name, o)| {
                let behind = board::Behind {
                    blocks: self.store.count_records(o.position).unwrap_or(0),
                    bytes: end.saturating_sub(o.position),
                    names: if o.plain_venti {
                        0
                    } else {
                        names.saturating_sub(o.names_sent)
                    },
                };
                (name, o, behind)
            })
            .collect();
        board::Peers {
            outgoing,
            incoming: inc,
        }
    }

    /// The status text: one paragraph per peer, and the node's others.
    pub fn status_text(&self) -> String {
        let mut text = board::render(&self.node, &self.peers());
        if let Some(more) = &self.more_status {
            text.push_str(&more());
        }
        text
    }
}

/// Asks the node at `address` for its replication status, as a grid member
/// (an admin's client certificate, or a node's).
pub async fn fetch_status(link: &link::Link, address: &str) -> Result<String, String> {
    let (_, addr) = link::dial::parse_transport(address).map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| format!("connecting to {addr}: timed out"))?
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut tls, _) = link
        .connect(tcp, &[link::Role::Storage])
        .await
        .map_err(|e| format!("{e} (give a storage node's --replica-listen address)"))?;
    frame::write(&mut tls, &frame::Frame::StatusRequest)
        .await
        .map_err(|e| e.to_string())?;
    // What a node's other TLS ports say first, to name the mistake rather
    // than read their greeting as a frame's length.
    let reply = async {
        use tokio::io::AsyncReadExt;
        let mut first = [0u8; 4];
        tls.read_exact(&mut first).await?;
        if &first == b"vent" {
            return Err(std::io::Error::other(format!(
                "{address} serves venti (a node's --venti-listen), not replication: give the node's --replica-listen address"
            )));
        }
        frame::read(&mut (&first[..]).chain(&mut tls)).await
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), reply).await;
    // Say goodbye (TLS's close_notify), so the node sees a close, not a cut.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncWriteExt::shutdown(&mut tls),
    )
    .await;
    match reply {
        Ok(Ok(frame::Frame::Status { text })) => Ok(text),
        Ok(Ok(frame::Frame::Error { message })) => Err(message),
        Ok(Ok(f)) => Err(format!("expected a Status reply, got {}", f.kind())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no status reply within 10 s".into()),
    }
}
