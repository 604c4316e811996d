//! The glue between a node's state directory (names and users, in the grid
//! crate) and its replication (the replica crate).

use std::sync::Arc;

use grid::state::StateDir;
use venti::{BlockType, LogStore};

// A batch of names, and the one entry that may take it past its bound,
// always fits in a replication frame.
const _: () = assert!(grid::scorenames::NAMES_BATCH_BYTES + (1 << 20) < replica::frame::MAX_FRAME);

/// A node's names and users as replication sees them.
pub struct NodeCatalog {
    pub state: StateDir,
    pub store: Arc<LogStore>,
    pub node: String,
    /// On a node that reads through, a name's root block may come from
    /// the peer that sent the name.
    pub read_through: Option<Arc<replica::readthrough::ReadThrough>>,
}

impl NodeCatalog {
    /// The catalog of a node that replicates. From now on the node's own
    /// bindings are written with their origin and their place in its log,
    /// as replication would otherwise have to add them (a rewrite of the
    /// names file per bind).
    pub fn new(
        state: StateDir,
        store: Arc<LogStore>,
        node: String,
        read_through: Option<Arc<replica::readthrough::ReadThrough>>,
    ) -> NodeCatalog {
        let log = store.clone();
        state.place_bindings(grid::scorenames::Placement {
            node: node.clone(),
            durable_end: Box::new(move || log.durable_end()),
        });
        NodeCatalog {
            state,
            store,
            node,
            read_through,
        }
    }
}

impl replica::Catalog for NodeCatalog {
    fn names_since(&self, from: u64, upto: u64, with_at: bool) -> Result<(String, u64), String> {
        let store = self.store.clone();
        self.state
            .scorenames()
            .since(from, upto, with_at, &self.node, move || store.durable_end())
            .map_err(|e| e.to_string())
    }

    fn names_count(&self) -> Result<u64, String> {
        self.state.scorenames().count().map_err(|e| e.to_string())
    }

    fn merge_names(&self, text: &str, peer: &str) -> Result<(), String> {
        let store = self.store.clone();
        let has = self.store.clone();
        let through = self.read_through.clone();
        let renamed = self
            .state
            .scorenames()
            .merge(
                text,
                peer,
                &self.node,
                move |root| {
                    let wire = BlockType::ROOT.to_wire();
                    match &through {
                        Some(t) => t.has_or_fetch(root, wire),
                        None => has.has(root, wire),
                    }
                    .map_err(|e| grid::GridError::refused(e.to_string()))
                },
                move || store.durable_end(),
            )
            .map_err(|e| e.to_string())?;
        for r in renamed {
            tracing::warn!(peer, name = %r.bound_as, shown_as = %r.shown_as, origin = %r.origin, "two roots bound to one name: the later binding is kept under a derived name");
        }
        Ok(())
    }

    fn blocks_arrived(&self, peer: &str, upto: u64) -> Result<(), String> {
        let store = self.store.clone();
        self.state
            .scorenames()
            .resolve(peer, upto, move || store.durable_end())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn users_text(&self) -> Result<String, String> {
        self.state.users().text().map_err(|e| e.to_string())
    }

    fn merge_users(&self, text: &str) -> Result<(), String> {
        self.state
            .users()
            .merge(text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
