//! scorenames: `scorename=NAME rootscore=vac:HEX user=USER [user=…]`, an ndb
//! file. Names are per user: alice's `debian` and bob's `debian` are two
//! bindings, and nothing about one shows to the other (a refusal to bind
//! a name says only that the name is taken *for you*). Names are
//! immutable: binding a name again for a user who has it is refused. Every
//! update is serialised and atomic (see [`ndb::Indexed`]).
//!
//! For replication each entry also carries `origin=NODE time=NANOS` (where
//! and when it was bound: together with the name and root, the binding's
//! identity) and `pos=OFFSET`, the end of this node's durable log when the
//! binding became visible here, so a peer is sent a binding only after every
//! block before `pos`. Bindings are a grow-only set: when two nodes bind one
//! name to different roots, the earliest binding (by time, then origin, then
//! root) keeps the name everywhere and each other one is shown under a
//! derived name `NAME.ORIGIN-ROOT8` with `conflict=NAME`, which `scores`
//! points out to its users.
//!
//! The file is kept indexed ([`ndb::Indexed`]): a lookup, a bind and a peer's
//! new bindings cost about the same with a million names as with ten. Only
//! what changes entries already written (a lost conflict, a read-through
//! binding taking its place, a binding another process made without a
//! place) rewrites the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use venti::Score;

use crate::error::{GridError, GridResult};
use crate::names::{check_node_name, check_score_name, check_user_name};

/// One name binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub root: Score,
    pub users: Vec<String>,
}

/// What an entry keeps alive in the block store (see
/// [`ScoreNames::each_kept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A binding's vac root (of one taken ahead of its blocks, reading
    /// through, too: its blocks may not all be here yet).
    Root(Score),
    /// A working-set list (one block).
    List(Score),
    /// A tombstone's root: kept by nothing here, but a peer that has not
    /// yet heard of the forget may still stand on it.
    Forgotten(Score),
}

/// What `entries` keep alive, in order: each binding's root, each
/// working-set list's block, each tombstone's root (see [`Kept`]).
fn kept_in(entries: &[ndb::Entry]) -> Vec<Kept> {
    entries
        .iter()
        .filter_map(|e| {
            if is_tombstone(e) {
                return e
                    .get("rootscore")
                    .and_then(|r| vac::parse_vac(r, true).ok())
                    .map(Kept::Forgotten);
            }
            if is_working_set(e) {
                return working_set_of(e).ok().map(|(list, _)| Kept::List(list));
            }
            e.get("rootscore")
                .and_then(|r| vac::parse_vac(r, true).ok())
                .map(Kept::Root)
        })
        .collect()
}

/// A name that lost a conflict, and the name it was bound as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub shown_as: String,
    pub bound_as: String,
    pub origin: String,
}

pub struct ScoreNames {
    index: Arc<ndb::Indexed>,
    changes: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    placement: Option<Arc<Placement>>,
}

/// Where a replicating node's own bindings come from and where they sit in
/// its log: given to [`ScoreNames::bind`] so that a binding is written
/// whole, with the identity and place that [`ScoreNames::since`] would
/// otherwise have to write into it later (a rewrite of the file).
pub struct Placement {
    /// This node's name: the origin of its bindings.
    pub node: String,
    /// The end of this node's durable log (read under the file's lock).
    pub durable_end: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// The attributes looked up by value.
const BY_VALUE: [&str; 5] = ["scorename", "user", "conflict", "for", "forgot"];
/// The attributes whose presence is looked up.
const BY_PRESENCE: [&str; 5] = ["pos", "waiting", "origin", "time", "conflict"];

/// Whether an entry is a root's working-set list (`workingset=HEX
/// for=vac:ROOT`: the blocks a start of ROOT reads, a venti block that cpu
/// nodes fetch ahead), not a binding. Lists replicate with the names, in
/// the same order and under the same rule (after their blocks); the last
/// one for a root is the one in force.
fn is_working_set(e: &ndb::Entry) -> bool {
    e.get("workingset").is_some()
}

/// The (list, root) of a working-set entry, checked.
fn working_set_of(e: &ndb::Entry) -> GridResult<(Score, Score)> {
    let bad = || GridError::refused("a working-set entry is not `workingset=HEX for=vac:HEX`");
    let list = e.get("workingset").ok_or_else(bad)?;
    let list: Score = list.parse().map_err(|_| bad())?;
    let root = vac::parse_vac(e.get("for").ok_or_else(bad)?, true).map_err(|_| bad())?;
    Ok((list, root))
}

/// Whether an entry is a tombstone: `forgot=NAME rootscore=vac:ROOT
/// origin=NODE time=NANOS user=USER`, which ends the binding of NAME (as
/// it was bound) with that root, origin and time, everywhere, for good:
/// the binding's entry is dropped, and a copy of it that arrives later is
/// not taken. Tombstones replicate with the names.
fn is_tombstone(e: &ndb::Entry) -> bool {
    e.get("forgot").is_some()
}

/// What identifies a binding (its name as bound, root, origin, time and
/// users), of a binding or of the tombstone that ends it. The users are
/// part of it: two users' bindings of one name to one root, made before
/// bindings had times, differ only by them.
fn identity(e: &ndb::Entry) -> [String; 5] {
    let name = e.get("forgot").unwrap_or_else(|| bound_name(e));
    let [root, origin, time] =
        ["rootscore", "origin", "time"].map(|a| e.get(a).unwrap_or_default());
    let mut users: Vec<&str> = e.all("user").collect();
    users.sort_unstable();
    [name, root, origin, time, &users.join(" ")].map(str::to_string)
}

/// The tombstone of binding `b`: its identity and users, and of its other
/// attributes those in `keep`.
fn tombstone_of(b: &ndb::Entry, keep: &[&str]) -> ndb::Entry {
    let first = ndb::Entry::new(&[("forgot", bound_name(b))]);
    with_pairs(first, b, |a| {
        TOMBSTONE_ATTRS[1..].contains(&a) || keep.contains(&a)
    })
}

/// What a tombstone holds: the name as bound, then the binding's identity.
const TOMBSTONE_ATTRS: [&str; 5] = ["forgot", "rootscore", "origin", "time", "user"];

/// `out` with those pairs of `e` whose attribute `keep` takes, in order.
fn with_pairs(mut out: ndb::Entry, e: &ndb::Entry, keep: impl Fn(&str) -> bool) -> ndb::Entry {
    for p in e.pairs.iter().filter(|p| keep(&p.attr)) {
        out.push(&p.attr, &p.value);
    }
    out
}

/// Whether `t` is a tombstone that ends binding `b`.
fn ends(t: &ndb::Entry, b: &ndb::Entry) -> bool {
    is_tombstone(t) && !is_tombstone(b) && identity(t) == identity(b)
}

/// The binding shown as `name` to `user`, if any, in `db`.
fn shown_to<'a>(db: &'a ndb::Db, name: &str, user: &str) -> Option<&'a ndb::Entry> {
    db.entries()
        .iter()
        .find(|e| e.get("scorename") == Some(name) && e.has("user", user))
}

/// After a binding of `name` left (forgotten): the earliest binding left
/// of those it competed with (for a user in common with `gone`) takes
/// `name` back if it was shown under a derived name, as it would have had
/// the forgotten one never been bound. So every node shows the same names
/// whatever order bindings and tombstones reach it in.
fn reshow(db: &mut ndb::Db, name: &str, gone: &ndb::Entry) {
    let Some(first) = db
        .entries()
        .iter()
        .filter(|x| bound_name(x) == name && share_a_user(x, gone))
        .min_by_key(|x| precedence(x))
        .cloned()
    else {
        return;
    };
    if first.get("conflict").is_none() {
        return;
    }
    let p = precedence(&first);
    // It takes the name back only if it beats every binding it competes
    // with for any of its users (one shared with others may still lose).
    let beaten = db
        .entries()
        .iter()
        .any(|x| bound_name(x) == name && share_a_user(x, &first) && precedence(x) < p);
    if beaten {
        return;
    }
    db.edit(
        |x| bound_name(x) == name && precedence(x) == p && share_a_user(x, gone),
        |x| Some(rebuilt(name, x, &["conflict"])),
    );
}

/// Refuses a peer's tombstone that is not whole and in canonical form.
fn check_tombstone(e: &ndb::Entry) -> GridResult<()> {
    let bad = |why: &str| GridError::refused(format!("a replicated tombstone {why}"));
    check_score_name(e.get("forgot").unwrap_or_default())?;
    let root = e.get("rootscore").unwrap_or_default();
    match vac::parse_vac(root, true) {
        Ok(r) if vac::format_vac(&r) == root => {}
        _ => return Err(bad("has a bad rootscore")),
    }
    check_node_name(e.get("origin").ok_or_else(|| bad("has no origin"))?)?;
    if e.get("time").and_then(|t| t.parse::<u64>().ok()).is_none()
        || e.get("at").is_some_and(|at| at.parse::<u64>().is_err())
    {
        return Err(bad("has no time, or a bad one"));
    }
    check_user_name(e.get("user").ok_or_else(|| bad("has no user"))?)
}

/// How long a root's working-set list stays in force before a start may
/// replace it.
pub const WORKING_SET_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The time and list of `root`'s newest working-set entry.
fn newest_working_set(view: &ndb::View<'_>, root: &Score) -> GridResult<Option<(u64, Score)>> {
    Ok(view
        .search("for", &vac::format_vac(root))?
        .iter()
        .filter(|e| is_working_set(e))
        .filter_map(|e| {
            let time = e.get("time")?.parse::<u64>().ok()?;
            let (list, _) = working_set_of(e).ok()?;
            Some((
                (time, e.get("origin").unwrap_or_default().to_string()),
                list,
            ))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|((time, _), list)| (time, list)))
}

/// A peer's entry of a kind other than a binding, with only the attributes
/// that kind has: a peer's extra pairs (a `scorename` on a tombstone, say)
/// are not taken.
fn known_only(e: &ndb::Entry) -> ndb::Entry {
    let attrs: &[&str] = if is_tombstone(e) {
        &TOMBSTONE_ATTRS
    } else {
        &["workingset", "for", "origin", "time"]
    };
    with_pairs(ndb::Entry::new(&[]), e, |a| attrs.contains(&a))
}

/// Whether two working-set entries are the same one (a replay).
fn same_working_set(x: &ndb::Entry, e: &ndb::Entry) -> bool {
    ["workingset", "for", "origin", "time"]
        .iter()
        .all(|a| x.get(a) == e.get(a))
}

/// The index a scorenames file is read through; one per file per process
/// (see [`crate::state::StateDir`]).
pub fn index(path: impl Into<PathBuf>) -> ndb::Indexed {
    ndb::Indexed::new(path, &BY_VALUE, &BY_PRESENCE)
}

/// At most this much ndb text goes in one reply of [`ScoreNames::since`]:
/// a peer far behind is brought up in steps, each well within a frame.
pub const NAMES_BATCH_BYTES: usize = 4 << 20;

/// How many entries [`ScoreNames::since`] reads from the file at a time.
const READ_ENTRIES: usize = 4096;

/// The replicated identity and order of a binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    time: u64,
    origin: String,
    root: String,
}

/// Whether two bindings are for a user in common: only then do they
/// compete for a name.
fn share_a_user(a: &ndb::Entry, b: &ndb::Entry) -> bool {
    a.all("user").any(|u| b.all("user").any(|v| v == u))
}

/// The one of `users` who already has `name`, if any.
fn holder(view: &ndb::View<'_>, name: &str, users: &[&str]) -> GridResult<Option<String>> {
    Ok(view
        .search("scorename", name)?
        .iter()
        .find_map(|e| e.all("user").find(|u| users.contains(u)))
        .map(str::to_string))
}

/// The bindings that compete with `e` for its name: bound as that name,
/// for a user in common.
fn rivals(view: &ndb::View<'_>, e: &ndb::Entry) -> GridResult<Vec<Precedence>> {
    let name = bound_name(e);
    let mut found = view.search("scorename", name)?;
    found.extend(view.search("conflict", name)?);
    Ok(found
        .iter()
        .filter(|x| bound_name(x) == name && share_a_user(x, e))
        .map(precedence)
        .collect())
}

/// The refusal of a name a user already has; `for_whom` names that user
/// (where the binding was asked for several). It never speaks of another
/// user's names: names are per user.
pub fn taken(name: &str, for_whom: Option<&str>) -> GridError {
    let whose = for_whom.map(|u| format!(" for {u}")).unwrap_or_default();
    GridError::refused(format!(
        "name {name} is taken{whose}: names are immutable, choose another"
    ))
}

fn bound_name(e: &ndb::Entry) -> &str {
    e.get("conflict")
        .or_else(|| e.get("scorename"))
        .unwrap_or_default()
}

fn precedence(e: &ndb::Entry) -> Precedence {
    Precedence {
        time: e.get("time").and_then(|t| t.parse().ok()).unwrap_or(0),
        origin: e.get("origin").unwrap_or_default().to_string(),
        root: e.get("rootscore").unwrap_or_default().to_string(),
    }
}

/// The name a losing binding is shown under: `NAME.ORIGIN-ROOT8`, cut to fit.
pub fn derived_name(name: &str, origin: &str, root: &str) -> String {
    let hex = root.strip_prefix("vac:").unwrap_or(root);
    // By characters: a byte index could fall inside one.
    let short: String = hex.chars().take(8).collect();
    let suffix = format!(".{origin}-{short}");
    let keep = crate::names::MAX_NAME.saturating_sub(suffix.len());
    let mut cut = name.to_string();
    while cut.len() > keep {
        cut.pop();
    }
    format!("{cut}{suffix}")
}

/// This node's own attributes of an entry, which a peer never receives:
/// its place in this node's order and how this node shows it.
const LOCAL_ATTRS: [&str; 4] = ["pos", "conflict", "waiting", "at"];

/// `e` shown as `scorename`, without the attributes in `drop`.
fn rebuilt(scorename: &str, e: &ndb::Entry, drop: &[&str]) -> ndb::Entry {
    let first = ndb::Entry::new(&[("scorename", scorename)]);
    with_pairs(first, e, |a| a != "scorename" && !drop.contains(&a))
}

/// The entry as a peer receives it: without this node's `pos`, under the
/// name it was bound as.
fn wire_entry(e: &ndb::Entry) -> ndb::Entry {
    if is_working_set(e) || is_tombstone(e) {
        return without_local(e);
    }
    rebuilt(bound_name(e), e, &LOCAL_ATTRS)
}

/// `e` without this node's own attributes.
fn without_local(e: &ndb::Entry) -> ndb::Entry {
    without(e, &LOCAL_ATTRS)
}

/// `e` without the attributes in `drop`, the rest in order.
fn without(e: &ndb::Entry, drop: &[&str]) -> ndb::Entry {
    with_pairs(ndb::Entry::new(&[]), e, |a| !drop.contains(&a))
}

/// A peer's entry (`kept`: without the peer's own attributes) in this
/// node's order at `end`, or, sent ahead of its blocks (`at`), waiting
/// for `peer`'s blocks up to there.
fn placed_here(mut kept: ndb::Entry, at: Option<&str>, peer: &str, end: &str) -> ndb::Entry {
    match at {
        Some(at) => kept.push("waiting", &format!("{peer}:{at}")),
        None => kept.push("pos", end),
    }
    kept
}

/// A binding this node made, given its identity (this node's name as its
/// origin, and time 0 if it was made before bindings had times).
fn with_identity(e: &ndb::Entry, node: &str) -> ndb::Entry {
    let mut e = e.clone();
    if e.get("origin").is_none() {
        e.push("origin", node);
    }
    if e.get("time").is_none() {
        e.push("time", "0");
    }
    e
}

impl ScoreNames {
    /// The names in `path`, through an index of their own.
    pub fn new(path: impl Into<PathBuf>) -> ScoreNames {
        ScoreNames::through(Arc::new(index(path)))
    }

    /// The names in an index's file, through that (shared) index.
    pub fn through(index: Arc<ndb::Indexed>) -> ScoreNames {
        ScoreNames {
            index,
            changes: None,
            placement: None,
        }
    }

    /// Binds this node's names with their origin and place already written.
    pub fn placed_by(mut self, placement: Option<Arc<Placement>>) -> Self {
        self.placement = placement;
        self
    }

    /// Bumps `changes` after every change, so replication wakes at once.
    pub fn notifying(mut self, changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn changed(&self) {
        if let Some(c) = &self.changes {
            c.send_modify(|n| *n += 1);
        }
    }

    pub fn path(&self) -> &Path {
        self.index.path()
    }

    /// Binds `name` to `root` for `users`; refuses a name one of them
    /// already has (another user's binding of the same name is theirs, and
    /// no concern of these users).
    pub fn bind(&self, name: &str, root: &Score, users: &[&str]) -> GridResult<()> {
        check_score_name(name)?;
        if users.is_empty() {
            return Err(GridError::refused("a score name needs at least one user"));
        }
        self.index.append(|view| {
            if let Some(user) = holder(view, name, users)? {
                return Err(taken(name, (users.len() > 1).then_some(user.as_str())));
            }
            let root = vac::format_vac(root);
            let mut pairs = vec![("scorename", name), ("rootscore", root.as_str())];
            pairs.extend(users.iter().map(|u| ("user", *u)));
            Ok((vec![self.stamped(&pairs)], ()))
        })?;
        self.changed();
        Ok(())
    }

    /// An entry of `pairs` with its time and, on a node that replicates,
    /// its origin and place. Called under the file's lock: the entry's
    /// blocks were made durable before it, so they lie before that place.
    fn stamped(&self, pairs: &[(&str, &str)]) -> ndb::Entry {
        let mut e = ndb::Entry::new(pairs);
        e.push("time", &crate::names::now_nanos().to_string());
        if let Some(p) = &self.placement {
            e.push("origin", &p.node);
            e.push("pos", &(p.durable_end)().to_string());
        }
        e
    }

    /// Forgets `user`'s name `name`: the binding is dropped and a
    /// tombstone, which replicates, keeps it from coming back. A binding
    /// shared with other users is refused (it is theirs too). Returns the
    /// root it was bound to. The root's blocks stay in the store (until a
    /// garbage collector frees what no name, environment or job holds).
    pub fn forget(&self, name: &str, user: &str) -> GridResult<Score> {
        let root = self.index.rewrite(|db| {
            let Some(gone) = shown_to(db, name, user).cloned() else {
                return Err(GridError::refused(format!("no name {name} for {user}")));
            };
            let users: Vec<&str> = gone.all("user").collect();
            if users.len() > 1 {
                return Err(GridError::refused(format!(
                    "{name} is bound for {} together; it cannot be forgotten for one of them",
                    users.join(", ")
                )));
            }
            let mut tombstone = tombstone_of(&gone, &[]);
            if let Some(p) = &self.placement {
                // A binding made before this node replicated has no origin
                // or time yet: `since` gives it what it gives this.
                tombstone = with_identity(&tombstone, &p.node);
                tombstone.push("pos", &(p.durable_end)().to_string());
            }
            // The binding's entry becomes a tombstone where it is, so the
            // entries keep their places (a peer's progress counts them),
            // and one more is appended, for the peers past that place.
            db.edit(
                |x| identity(x) == identity(&gone) && !is_tombstone(x),
                |x| Some(tombstone_of(x, &["pos", "waiting"])),
            );
            reshow(db, bound_name(&gone), &gone);
            db.append(tombstone);
            binding(&gone).map(|b| b.root)
        })?;
        self.changed();
        Ok(root)
    }

    /// Keeps `list` (a working-set list's block, durable in this node's
    /// store) as `root`'s, in place of any earlier one, unless the list in
    /// force was kept less than [`WORKING_SET_EVERY`] ago: starts may come
    /// by the thousand (jobs), and each list is an entry kept for good.
    /// True if it was kept.
    pub fn set_working_set(&self, root: &Score, list: &Score) -> GridResult<bool> {
        let kept = self.index.append(|view| {
            let now = crate::names::now_nanos();
            let recent = newest_working_set(view, root)?.is_some_and(|(time, _)| {
                now.saturating_sub(time) < WORKING_SET_EVERY.as_nanos() as u64
            });
            if recent {
                return Ok::<_, GridError>((Vec::new(), false));
            }
            let (list, root) = (list.to_string(), vac::format_vac(root));
            let entry = self.stamped(&[("workingset", &list), ("for", &root)]);
            Ok((vec![entry], true))
        })?;
        if kept {
            self.changed();
        }
        Ok(kept)
    }

    /// `root`'s working-set list, if it has one: the newest (by time, then
    /// origin), so every node chooses the same whatever order they came in.
    pub fn working_set(&self, root: &Score) -> GridResult<Option<Score>> {
        Ok(newest_working_set(&self.index.view()?, root)?.map(|(_, list)| list))
    }

    /// What the entries from the `from`th on keep alive, for a
    /// collection, read a chunk at a time: each binding's root (tombstones
    /// keep nothing), and each working-set list's block (not its root).
    pub fn each_kept(&self, from: usize, kept: &mut dyn FnMut(Kept)) -> GridResult<()> {
        let view = self.index.view()?;
        let mut at = from;
        while at < view.len() {
            let upto = (at + READ_ENTRIES).min(view.len());
            for k in kept_in(&view.entries(at..upto)?) {
                kept(k);
            }
            at = upto;
        }
        Ok(())
    }

    /// [`ScoreNames::each_kept`] from the first entry, for a caller that
    /// takes long over each (a walk of the root's tree): the file is read
    /// a chunk at a time, and nothing waits on it meanwhile. An entry
    /// that a rewrite moves between two chunks may be missed (or met
    /// twice), so a caller that must see every one holds the names
    /// ([`ScoreNames::hold`]) while it reads.
    /// Each is told with the entry's place in the file.
    pub fn each_kept_slowly(
        &self,
        kept: &mut dyn FnMut(usize, Kept) -> GridResult<()>,
    ) -> GridResult<()> {
        let mut at = 0;
        loop {
            let (from, chunk) = {
                let view = self.index.view()?;
                if at >= view.len() {
                    return Ok(());
                }
                let upto = (at + READ_ENTRIES).min(view.len());
                let chunk: Vec<(usize, Kept)> = view
                    .entries(at..upto)?
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| {
                        kept_in(std::slice::from_ref(e))
                            .into_iter()
                            .map(move |k| (i, k))
                    })
                    .collect();
                let from = at;
                at = upto;
                (from, chunk)
            };
            for (i, k) in chunk {
                kept(from + i, k)?;
            }
        }
    }

    /// Freezes the names until the guard is dropped: no bind, forget or
    /// peer's merge changes them meanwhile (each waits); lookups go on.
    pub fn hold(&self) -> GridResult<ndb::Lock> {
        Ok(self.index.hold()?)
    }

    /// How many bindings there are.
    pub fn count(&self) -> GridResult<u64> {
        Ok(self.index.view()?.len() as u64)
    }

    /// For replication: the bindings after the first `from` whose `pos` is
    /// at most `upto`, as ndb text, and the count they bring a peer to.
    /// Bindings made without a position (by this node's commands, or by
    /// another process on its state directory) are first given `durable_end`
    /// — their blocks were synced before they were bound — and `node` as
    /// their origin. With `with_at`, each binding carries its position as
    /// `at=`, for a peer that takes names before their blocks (reading
    /// through) and binds them for good once blocks up to `at` are there.
    /// A binding this node took that way (`waiting=`) goes no further until
    /// its own blocks are here.
    pub fn since(
        &self,
        from: u64,
        upto: u64,
        with_at: bool,
        node: &str,
        durable_end: impl Fn() -> u64,
    ) -> GridResult<(String, u64)> {
        let unplaced = |e: &ndb::Entry| e.get("pos").is_none() && e.get("waiting").is_none();
        let any_unplaced = {
            let view = self.index.view()?;
            let waiting = view.ids_where("waiting", true);
            view.ids_where("pos", false)
                .iter()
                .any(|id| waiting.binary_search(id).is_err())
        };
        if any_unplaced {
            self.index.rewrite(|db| {
                // Read inside the lock: every binding now in the file was
                // made after its blocks were durable, so they lie before it.
                let end = durable_end().to_string();
                db.edit(unplaced, |e| {
                    let mut e = with_identity(e, node);
                    e.push("pos", &end);
                    Some(e)
                });
                Ok::<_, GridError>(())
            })?;
        }
        // Under the lock: an entry is passed on only once it is synced,
        // or a crash could take back what a peer has counted.
        self.index.read_synced(|view| {
            let mut text = String::new();
            let mut count = from;
            'read: while (count as usize) < view.len() && text.len() < NAMES_BATCH_BYTES {
                let at = count as usize;
                for e in view.entries(at..(at + READ_ENTRIES).min(view.len()))? {
                    let pos: u64 = e
                        .get("pos")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(u64::MAX);
                    if pos > upto || e.get("waiting").is_some() || text.len() >= NAMES_BATCH_BYTES {
                        break 'read;
                    }
                    let mut wire = wire_entry(&e);
                    if with_at {
                        wire.push("at", &pos.to_string());
                    }
                    text.push_str(&wire.to_text().map_err(ndb::Error::from)?);
                    count += 1;
                }
            }
            Ok::<_, GridError>((text, count))
        })
    }

    /// Merges bindings a peer sent (ndb text from [`ScoreNames::since`]);
    /// `node` is this node, the origin of its own bindings.
    /// Every root must satisfy `has_root` (its block durable here), or
    /// nothing is merged: a name never runs ahead of its blocks. New
    /// bindings get `pos = durable_end()`, read under the file's lock.
    /// A binding that comes with `at=` (sent ahead of its blocks to a node
    /// that reads through) is kept as `waiting=PEER:AT` until
    /// [`ScoreNames::resolve`] says `peer`'s blocks up to `at` are here.
    /// Returns the bindings shown under a derived name by this merge.
    pub fn merge(
        &self,
        text: &str,
        peer: &str,
        node: &str,
        has_root: impl Fn(&Score) -> GridResult<bool>,
        durable_end: impl Fn() -> u64,
    ) -> GridResult<Vec<Renamed>> {
        let incoming = ndb::Db::parse("replicated names", text)
            .map_err(|e| GridError::refused(format!("replicated names: {e}")))?;
        for e in incoming.entries() {
            if is_tombstone(e) {
                check_tombstone(e)?;
                continue;
            }
            if is_working_set(e) {
                working_set_of(e)?;
                if e.get("origin").is_none_or(|o| check_node_name(o).is_err())
                    || e.get("time").and_then(|t| t.parse::<u64>().ok()).is_none()
                    || e.get("at").is_some_and(|at| at.parse::<u64>().is_err())
                {
                    return Err(GridError::refused(
                        "a replicated working-set entry lacks its origin or time, or has a bad one",
                    ));
                }
                continue;
            }
            let b = binding(e)?;
            check_score_name(&b.name)?;
            // Every field is used as it came (compared, cut into derived
            // names, written back): only its one canonical form is taken.
            let root_text = e.get("rootscore").unwrap_or_default();
            if root_text != vac::format_vac(&b.root) {
                return Err(GridError::refused(format!(
                    "replicated name {} has rootscore {root_text:?}, not in the form vac:<40 lower-case hex digits>",
                    b.name
                )));
            }
            for u in &b.users {
                check_user_name(u)?;
            }
            if let Some(origin) = e.get("origin") {
                check_node_name(origin)?;
            }
            if e.get("at").is_some_and(|at| at.parse::<u64>().is_err()) {
                return Err(GridError::refused(format!(
                    "replicated name {} has a position that is not a number",
                    b.name
                )));
            }
            if b.users.is_empty() {
                return Err(GridError::refused(format!(
                    "replicated name {} has no user",
                    b.name
                )));
            }
            if e.get("origin").is_none()
                || e.get("time").and_then(|t| t.parse::<u64>().ok()).is_none()
            {
                return Err(GridError::refused(format!(
                    "replicated name {} lacks its origin or time",
                    b.name
                )));
            }
            if !has_root(&b.root)? {
                return Err(GridError::refused(format!(
                    "name {} arrived before its root block {}; not bound",
                    b.name, b.root
                )));
            }
        }
        if let Some(renamed) = self.merge_by_appending(&incoming, peer, &durable_end)? {
            self.changed();
            return Ok(renamed);
        }
        let renamed = self.index.rewrite(|db| {
            let end = durable_end().to_string();
            // This node's own bindings must carry their identity before
            // they are compared with a peer's, or the two would disagree
            // about which one is which.
            db.edit(
                |e| e.get("origin").is_none() || e.get("time").is_none(),
                |e| Some(with_identity(e, node)),
            );
            let mut renamed = Vec::new();
            // The identities this file's tombstones end, looked up once.
            let mut forgotten: std::collections::HashSet<[String; 5]> = db
                .entries()
                .iter()
                .filter(|t| is_tombstone(t))
                .map(identity)
                .collect();
            for e in incoming.entries() {
                let id = identity(e);
                if is_tombstone(e) {
                    if forgotten.insert(id) {
                        let gone = db.entries().iter().find(|b| ends(e, b)).cloned();
                        db.edit(
                            |b| ends(e, b),
                            |b| Some(tombstone_of(b, &["pos", "waiting"])),
                        );
                        if let Some(gone) = gone {
                            reshow(db, &identity(e)[0], &gone);
                        }
                        db.append(placed_here(known_only(e), e.get("at"), peer, &end));
                    }
                    continue;
                }
                if forgotten.contains(&id) {
                    continue; // Forgotten here already.
                }
                if is_working_set(e) {
                    if !db.entries().iter().any(|x| same_working_set(x, e)) {
                        db.append(placed_here(known_only(e), e.get("at"), peer, &end));
                    }
                    continue;
                }
                let name = bound_name(e).to_string();
                let new = precedence(e);
                // Names are per user: only bindings for a user in common
                // compete for this one.
                let group: Vec<Precedence> = db
                    .entries()
                    .iter()
                    .filter(|x| bound_name(x) == name && share_a_user(x, e))
                    .map(precedence)
                    .collect();
                if group.contains(&new) {
                    continue; // Seen before: replaying is harmless.
                }
                let wins = group.iter().all(|g| new < *g);
                if wins {
                    // The binding shown as `name` until now gives way.
                    db.edit(
                        |x| x.get("scorename") == Some(name.as_str()) && share_a_user(x, e),
                        |x| {
                            let p = precedence(x);
                            let shown = derived_name(&name, &p.origin, &p.root);
                            let mut y = rebuilt(&shown, x, &["conflict"]);
                            y.push("conflict", &name);
                            Some(y)
                        },
                    );
                    for x in db.entries() {
                        if x.get("conflict") == Some(name.as_str())
                            && share_a_user(x, e)
                            && !renamed
                                .iter()
                                .any(|r: &Renamed| Some(r.shown_as.as_str()) == x.get("scorename"))
                        {
                            renamed.push(Renamed {
                                shown_as: x.get("scorename").unwrap_or_default().to_string(),
                                bound_as: name.clone(),
                                origin: x.get("origin").unwrap_or_default().to_string(),
                            });
                        }
                    }
                }
                let shown = if wins {
                    name.clone()
                } else {
                    derived_name(&name, &new.origin, &new.root)
                };
                let mut entry = rebuilt(&shown, e, &LOCAL_ATTRS);
                if !wins {
                    entry.push("conflict", &name);
                    renamed.push(Renamed {
                        shown_as: shown,
                        bound_as: name.clone(),
                        origin: new.origin.clone(),
                    });
                }
                db.append(placed_here(entry, e.get("at"), peer, &end));
            }
            Ok::<_, GridError>(renamed)
        })?;
        self.changed();
        Ok(renamed)
    }

    /// [`ScoreNames::merge`] at the cost of the new bindings alone, in the
    /// common case: each one is new to every user it names (or was seen
    /// before), and this node's own bindings already carry their identity.
    /// None, having written nothing, when a binding competes with another
    /// for a name: the rewrite decides which keeps it.
    fn merge_by_appending(
        &self,
        incoming: &ndb::Db,
        peer: &str,
        durable_end: &impl Fn() -> u64,
    ) -> GridResult<Option<Vec<Renamed>>> {
        self.index.append(|view| {
            let unidentified = !view.ids_where("origin", false).is_empty()
                || !view.ids_where("time", false).is_empty();
            if unidentified {
                return Ok((Vec::new(), None));
            }
            let end = durable_end().to_string();
            // (name, user) pairs this batch binds: two bindings of one
            // name for one user in a batch compete with each other.
            let mut claimed = std::collections::HashSet::new();
            let mut new = Vec::new();
            for e in incoming.entries() {
                if is_tombstone(e) {
                    if view
                        .search("forgot", &identity(e)[0])?
                        .iter()
                        .any(|t| identity(t) == identity(e))
                    {
                        continue; // Seen before.
                    }
                    return Ok((Vec::new(), None));
                }
                if view
                    .search("forgot", bound_name(e))?
                    .iter()
                    .any(|t| ends(t, e))
                {
                    continue; // Forgotten here already.
                }
                if is_working_set(e) {
                    let root = e.get("for").unwrap_or_default();
                    let seen = view
                        .search("for", root)?
                        .iter()
                        .chain(&new)
                        .any(|x| same_working_set(x, e));
                    if !seen {
                        new.push(placed_here(known_only(e), e.get("at"), peer, &end));
                    }
                    continue;
                }
                let name = bound_name(e);
                if e.all("user").any(|u| !claimed.insert((name, u))) {
                    return Ok((Vec::new(), None));
                }
                let group = rivals(view, e)?;
                if group.contains(&precedence(e)) {
                    continue; // Seen before: replaying is harmless.
                }
                if !group.is_empty() {
                    return Ok((Vec::new(), None));
                }
                new.push(placed_here(
                    rebuilt(name, e, &LOCAL_ATTRS),
                    e.get("at"),
                    peer,
                    &end,
                ));
            }
            Ok((new, Some(Vec::new())))
        })
    }

    /// `peer` says every block before its log offset `upto` is durable
    /// here: the bindings it sent ahead of those blocks take their place in
    /// this node's order now (`pos = durable_end()`), and go on to peers.
    pub fn resolve(
        &self,
        peer: &str,
        upto: u64,
        durable_end: impl Fn() -> u64,
    ) -> GridResult<usize> {
        let ready = |e: &ndb::Entry| {
            e.get("waiting")
                .and_then(|w| w.rsplit_once(':'))
                .is_some_and(|(p, at)| p == peer && at.parse::<u64>().is_ok_and(|at| at <= upto))
        };
        if !self.entries_holding("waiting")?.iter().any(ready) {
            return Ok(0);
        }
        let n = self.index.rewrite(|db| {
            let end = durable_end().to_string();
            Ok::<_, GridError>(db.edit(ready, |e| {
                let mut y = without(e, &["waiting"]);
                y.push("pos", &end);
                Some(y)
            }))
        })?;
        self.changed();
        Ok(n)
    }

    /// Every entry that holds `attr` (one indexed by presence).
    fn entries_holding(&self, attr: &str) -> GridResult<Vec<ndb::Entry>> {
        let view = self.index.view()?;
        let ids = view.ids_where(attr, true);
        Ok(ids
            .into_iter()
            .map(|id| view.entry(id))
            .collect::<Result<_, _>>()?)
    }

    /// The bindings shown under a derived name, for `scores` to point out.
    pub fn renamed(&self) -> GridResult<Vec<Renamed>> {
        Ok(self
            .entries_holding("conflict")?
            .iter()
            .filter_map(|e| {
                Some(Renamed {
                    shown_as: e.get("scorename")?.to_string(),
                    bound_as: e.get("conflict")?.to_string(),
                    origin: e.get("origin").unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// Binds `name`, or if it is taken `name.2`, `name.3`, …; returns the name used.
    pub fn bind_unique(&self, name: &str, root: &Score, users: &[&str]) -> GridResult<String> {
        for n in 1..1000 {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                format!("{name}.{n}")
            };
            match self.bind(&candidate, root, users) {
                Err(GridError::Refused(why)) if why.contains("is taken") => continue,
                other => return other.map(|()| candidate),
            }
        }
        Err(GridError::refused(format!("no free name like {name}")))
    }

    /// The one of `users` who already has `name`, if any: checked before
    /// work that would end in [`ScoreNames::bind`] (which checks again).
    pub fn holder_of(&self, name: &str, users: &[&str]) -> GridResult<Option<String>> {
        holder(&self.index.view()?, name, users)
    }

    /// `user`'s binding of `name`, if they have one.
    pub fn lookup_for(&self, name: &str, user: &str) -> GridResult<Option<Binding>> {
        let found = self.index.view()?.search("scorename", name)?;
        let Some(entry) = found.iter().find(|e| e.all("user").any(|u| u == user)) else {
            return Ok(None);
        };
        Ok(Some(binding(entry)?))
    }

    /// The first binding of `name`, whoever's it is (for the admin's
    /// tools; a user's command asks [`ScoreNames::lookup_for`]).
    pub fn lookup(&self, name: &str) -> GridResult<Option<Binding>> {
        let found = self.index.view()?.search("scorename", name)?;
        let Some(entry) = found.first() else {
            return Ok(None);
        };
        Ok(Some(binding(entry)?))
    }

    /// The names `user` may spawn, in file order.
    pub fn names_for(&self, user: &str) -> GridResult<Vec<String>> {
        Ok(self
            .index
            .view()?
            .search("user", user)?
            .iter()
            .filter_map(|e| e.get("scorename").map(str::to_string))
            .collect())
    }
}

fn binding(entry: &ndb::Entry) -> GridResult<Binding> {
    let name = entry.get("scorename").unwrap_or_default().to_string();
    let text = entry
        .get("rootscore")
        .ok_or_else(|| GridError::refused(format!("scorenames entry {name} has no rootscore")))?;
    let root = vac::parse_vac(text, true).map_err(|_| {
        GridError::refused(format!(
            "scorenames entry {name} has a bad rootscore {text:?}"
        ))
    })?;
    Ok(Binding {
        name,
        root,
        users: entry.all("user").map(str::to_string).collect(),
    })
}
