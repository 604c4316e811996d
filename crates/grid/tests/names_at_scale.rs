//! Names and users at scale: the common changes (a bind, a peer's new
//! bindings, a new user or key) append to the ndb file and never rewrite
//! it; another process's change is seen at once; a peer far behind is sent
//! its names in batches that fit a replication frame.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use common::{KEY_A, KEY_B, root};
use grid::scorenames::{NAMES_BATCH_BYTES, Placement, ScoreNames};
use grid::users::Users;
use venti::Score;

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Asserts that `change` only appended to `path`: the same file, which
/// still begins with what it held.
fn appends_only(path: &Path, change: impl FnOnce()) {
    let (ino, before) = (inode(path), std::fs::read(path).unwrap());
    change();
    let after = std::fs::read(path).unwrap();
    assert_eq!(inode(path), ino, "the file was replaced");
    assert!(after.len() > before.len(), "nothing was appended");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the file was rewritten"
    );
}

fn placed(path: &Path, node: &str, end: u64) -> ScoreNames {
    ScoreNames::new(path).placed_by(Some(Arc::new(Placement {
        node: node.into(),
        durable_end: Box::new(move || end),
    })))
}

#[test]
fn a_replicating_nodes_binds_and_a_peers_new_names_only_append() {
    let dir = tempfile::tempdir().unwrap();
    let a = placed(&dir.path().join("a"), "a", 100);
    a.bind("first", &root(1), &["alice"]).unwrap();
    appends_only(a.path(), || a.bind("web", &root(2), &["alice"]).unwrap());
    // Placed at bind time, so sending them rewrites nothing either.
    let ino = inode(a.path());
    let (text, count) = a.since(0, 100, false, "a", || 999).unwrap();
    assert_eq!((count, inode(a.path())), (2, ino));
    assert!(
        text.contains("origin=a") && !text.contains("pos="),
        "{text}"
    );
    let (_, count) = a.since(0, 99, false, "a", || 999).unwrap();
    assert_eq!(count, 0, "a binding is sent only after its blocks");

    let b = placed(&dir.path().join("b"), "b", 7);
    b.bind("mine", &root(3), &["bob"]).unwrap();
    let all = |_: &Score| Ok(true);
    appends_only(b.path(), || {
        assert!(b.merge(&text, "a", "b", all, || 7).unwrap().is_empty());
    });
    // Replaying is harmless and writes nothing.
    let before = std::fs::read(b.path()).unwrap();
    b.merge(&text, "a", "b", all, || 8).unwrap();
    assert_eq!(std::fs::read(b.path()).unwrap(), before);
    assert_eq!(b.lookup_for("web", "alice").unwrap().unwrap().root, root(2));
    assert_eq!(b.count().unwrap(), 3);

    // A rival for a name still goes the careful way, and is renamed.
    let rival = placed(&dir.path().join("c"), "c", 1);
    rival.bind("web", &root(9), &["alice"]).unwrap();
    let (late, _) = rival.since(0, u64::MAX, false, "c", || 1).unwrap();
    let renamed = b.merge(&late, "c", "b", all, || 9).unwrap();
    assert_eq!(renamed.len(), 1, "{renamed:?}");
    assert_eq!(b.lookup_for("web", "alice").unwrap().unwrap().root, root(2));
    assert_eq!(b.renamed().unwrap().len(), 1);
}

#[test]
fn another_process_sees_a_change_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scorenames");
    let node = ScoreNames::new(&path);
    let cli = ScoreNames::new(&path);
    assert!(node.lookup_for("web", "alice").unwrap().is_none());
    cli.bind("web", &root(1), &["alice"]).unwrap();
    assert_eq!(
        node.lookup_for("web", "alice").unwrap().unwrap().root,
        root(1)
    );
    assert_eq!(node.names_for("alice").unwrap(), ["web"]);
    assert!(
        node.bind("web", &root(2), &["alice"]).is_err(),
        "taken, whoever bound it"
    );
    // A rewrite by the other (placing unplaced bindings) is seen too.
    cli.since(0, u64::MAX, false, "n", || 5).unwrap();
    node.bind("api", &root(3), &["alice"]).unwrap();
    assert_eq!(cli.names_for("alice").unwrap(), ["web", "api"]);

    let upath = dir.path().join("users");
    let (u1, u2) = (Users::new(&upath), Users::new(&upath));
    u1.add("alice", KEY_A).unwrap();
    let key = russh::keys::PublicKey::from_openssh(KEY_A).unwrap();
    assert_eq!(u2.owner_of(&key).unwrap().as_deref(), Some("alice"));
    assert!(u2.add("bob", KEY_A).is_err(), "a key has one owner");
    u2.remove("alice").unwrap();
    assert_eq!(u1.owner_of(&key).unwrap(), None);
    assert!(!u1.exists("alice").unwrap());
    u1.add("alice", KEY_B).unwrap();
    assert_eq!(u2.keys_of("alice").unwrap().len(), 1);
}

#[test]
fn new_users_and_keys_from_a_peer_only_append_and_a_tombstone_still_ends_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = Users::new(dir.path().join("a"));
    let b = Users::new(dir.path().join("b"));
    a.add("alice", KEY_A).unwrap();
    b.add("bob", KEY_B).unwrap();
    appends_only(b.path(), || {
        assert_eq!(b.merge(&a.text().unwrap()).unwrap(), 1);
    });
    assert_eq!(
        b.merge(&a.text().unwrap()).unwrap(),
        0,
        "replaying adds nothing"
    );
    assert!(b.exists("alice").unwrap());
    a.remove("alice").unwrap();
    b.merge(&a.text().unwrap()).unwrap();
    assert!(!b.exists("alice").unwrap());
    assert!(b.exists("bob").unwrap());
}

#[test]
fn a_peer_far_behind_is_sent_its_names_in_batches_that_fit_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scorenames");
    // Written as a replicating node writes them, without a bind per name.
    let root = vac::format_vac(&root(1));
    let n = 60_000;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "scorename=name{i}-{} rootscore={root} user=u{} time={i} origin=a pos=1\n",
            "x".repeat(40),
            i % 50
        ));
    }
    assert!(
        text.len() > 2 * NAMES_BATCH_BYTES,
        "the test needs several batches"
    );
    std::fs::write(&path, &text).unwrap();
    let names = ScoreNames::new(&path);
    let receiver = ScoreNames::new(dir.path().join("receiver"));
    let mut from = 0;
    let mut batches = 0;
    while from < n {
        let (batch, count) = names.since(from, 10, false, "a", || 10).unwrap();
        assert!(count > from, "no progress at {from}");
        assert!(
            batch.len() <= NAMES_BATCH_BYTES + 4096,
            "a batch of {} bytes",
            batch.len()
        );
        receiver
            .merge(&batch, "a", "r", |_| Ok(true), || 1)
            .unwrap();
        from = count;
        batches += 1;
    }
    assert!(batches >= 3, "{batches} batches");
    assert_eq!(receiver.count().unwrap(), n);
    assert!(
        receiver
            .lookup_for(&format!("name{}-{}", n - 1, "x".repeat(40)), "u49")
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_roots_working_set_travels_with_the_names_and_the_last_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let a = placed(&dir.path().join("a"), "a", 10);
    let b = placed(&dir.path().join("b"), "b", 20);
    let (web, list1, list2) = (root(1), root(2), root(3));
    a.bind("web", &web, &["alice"]).unwrap();
    assert_eq!(a.working_set(&web).unwrap(), None);
    appends_only(a.path(), || {
        assert!(a.set_working_set(&web, &list1).unwrap())
    });
    // Another list so soon is not kept: starts come by the thousand.
    assert!(!a.set_working_set(&web, &list2).unwrap());
    assert_eq!(a.working_set(&web).unwrap(), Some(list1));
    // A newer one from a peer is in force, an older one that comes after
    // it is not: every node chooses the same.
    let entry = |list: &Score, time: u64| {
        format!(
            "workingset={list} for={} origin=p time={time}\n",
            vac::format_vac(&web)
        )
    };
    let all = |_: &Score| Ok(true);
    let far = u64::MAX / 2;
    a.merge(&entry(&list2, far), "p", "a", all, || 10).unwrap();
    a.merge(&entry(&root(9), 5), "p", "a", all, || 10).unwrap();
    assert_eq!(a.working_set(&web).unwrap(), Some(list2));
    // No binding is made of it: names, lookups and scores are as they were.
    assert_eq!(a.names_for("alice").unwrap(), ["web"]);

    let (text, count) = a.since(0, 10, false, "a", || 10).unwrap();
    assert_eq!(count, 4);
    b.merge(&text, "a", "b", all, || 20).unwrap();
    assert_eq!(b.working_set(&web).unwrap(), Some(list2));
    let before = std::fs::read(b.path()).unwrap();
    b.merge(&text, "a", "b", all, || 21).unwrap();
    assert_eq!(
        std::fs::read(b.path()).unwrap(),
        before,
        "a replay adds nothing"
    );
    // Sent ahead of its blocks (read-through), it waits like a binding.
    let (early, _) = a.since(0, u64::MAX, true, "a", || 10).unwrap();
    let c = placed(&dir.path().join("c"), "c", 5);
    c.merge(&early, "a", "c", all, || 5).unwrap();
    assert_eq!(c.since(0, u64::MAX, false, "c", || 5).unwrap().1, 0);
    c.resolve("a", 10, || 6).unwrap();
    assert_eq!(c.since(0, u64::MAX, false, "c", || 6).unwrap().1, 4);
    assert_eq!(c.working_set(&web).unwrap(), Some(list2));

    // A malformed one from a peer is refused whole, naming the problem.
    for bad in [
        "workingset=nothex for=vac:0000000000000000000000000000000000000000 origin=a time=1\n",
        "workingset=0000000000000000000000000000000000000000 for=web origin=a time=1\n",
        "workingset=0000000000000000000000000000000000000000 for=vac:0000000000000000000000000000000000000000 time=1\n",
    ] {
        let e = b.merge(bad, "a", "b", all, || 22).unwrap_err();
        assert!(e.to_string().contains("working-set"), "{e}");
    }
}
