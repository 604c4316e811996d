//! What replication needs of a node's names and users, which live above
//! this crate (the grid keeps them as ndb files).

/// The node's name bindings and users, as replication reads and merges them.
/// Calls may block (they read and write files); the caller runs them off
/// the async threads.
pub trait Catalog: Send + Sync + 'static {
    /// The bindings after the first `from` (in the catalog's order) whose
    /// blocks all lie before log offset `upto`, as ndb text, and the count
    /// they bring the peer to. Bindings this node has not placed in its log
    /// order yet are placed now. With `with_at`, each carries its log offset
    /// as `at=`, for a peer that reads through and takes names early.
    fn names_since(&self, from: u64, upto: u64, with_at: bool) -> Result<(String, u64), String>;

    /// How many bindings the catalog holds.
    fn names_count(&self) -> Result<u64, String>;

    /// Merges bindings from `peer`. A binding whose root block is not
    /// durable here is refused: a name never arrives before its blocks.
    fn merge_names(&self, text: &str, peer: &str) -> Result<(), String>;

    /// `peer`'s blocks before its log offset `upto` are durable here: the
    /// names it sent early (with `at=`) may go on to this node's peers.
    fn blocks_arrived(&self, peer: &str, upto: u64) -> Result<(), String>;

    /// Every user, key and tombstone, as ndb text.
    fn users_text(&self) -> Result<String, String>;

    /// Merges users from a peer.
    fn merge_users(&self, text: &str) -> Result<(), String>;
}
