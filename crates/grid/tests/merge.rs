//! Names and users as replication merges them: grow-only sets whose merge
//! is order-free (every node converges on the same file contents whatever
//! order bindings arrive in), idempotent (replaying changes nothing), and
//! loses nothing (a conflicting root stays reachable under a derived name).

mod common;

use common::{KEY_A, KEY_B, root};
use grid::scorenames::ScoreNames;
use grid::users::Users;
use venti::Score;

/// What each name resolves to, sorted: the part of the file that must agree.
fn view(names: &ScoreNames) -> Vec<(String, Score)> {
    let db = ndb::Db::open(names.path()).unwrap();
    let mut v: Vec<(String, Score)> = db
        .entries()
        .iter()
        .map(|e| {
            let name = e.get("scorename").unwrap().to_string();
            let b = names.lookup(&name).unwrap().unwrap();
            (name, b.root)
        })
        .collect();
    v.sort();
    v
}

/// A name bound on node `origin`, as its own `since` sends it.
fn bound_on(dir: &std::path::Path, origin: &str, name: &str, r: Score) -> String {
    let names = ScoreNames::new(dir.join(format!("{origin}.names")));
    names.bind(name, &r, &["alice"]).unwrap();
    let (text, count) = names.since(0, u64::MAX, false, origin, || 100).unwrap();
    assert_eq!(count, 1);
    text
}

#[test]
fn two_roots_for_one_name_converge_on_one_winner_and_the_other_is_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let from_a = bound_on(dir.path(), "a", "web", root(1));
    let from_b = bound_on(dir.path(), "b", "web", root(2));
    let all = |_: &Score| Ok(true);
    // Node c hears a first, node d hears b first.
    let c = ScoreNames::new(dir.path().join("c"));
    let d = ScoreNames::new(dir.path().join("d"));
    assert!(c.merge(&from_a, "p", "here", all, || 7).unwrap().is_empty());
    let renamed_c = c.merge(&from_b, "p", "here", all, || 8).unwrap();
    d.merge(&from_b, "p", "here", all, || 7).unwrap();
    let renamed_d = d.merge(&from_a, "p", "here", all, || 8).unwrap();
    assert_eq!(view(&c), view(&d), "the same names everywhere");
    // a bound first, so a's root keeps the name.
    assert_eq!(c.lookup("web").unwrap().unwrap().root, root(1));
    let derived = grid::scorenames::derived_name("web", "b", &vac::format_vac(&root(2)));
    assert_eq!(c.lookup(&derived).unwrap().unwrap().root, root(2));
    assert_eq!(renamed_c.len(), 1);
    assert_eq!(renamed_c[0].shown_as, derived);
    assert!(renamed_d.iter().any(|r| r.shown_as == derived));
    assert_eq!(c.renamed().unwrap(), d.renamed().unwrap());
    // The originals converge too once each hears the other.
    let a = ScoreNames::new(dir.path().join("a.names"));
    let b = ScoreNames::new(dir.path().join("b.names"));
    a.merge(&from_b, "p", "here", all, || 9).unwrap();
    b.merge(&from_a, "p", "here", all, || 9).unwrap();
    assert_eq!(view(&a), view(&c));
    assert_eq!(view(&b), view(&c));
    // Replaying changes nothing.
    let before = std::fs::read_to_string(c.path()).unwrap();
    c.merge(&from_a, "p", "here", all, || 10).unwrap();
    c.merge(&from_b, "p", "here", all, || 10).unwrap();
    assert_eq!(std::fs::read_to_string(c.path()).unwrap(), before);
    // A forwarded binding carries the name it was bound as, so a node
    // down the chain reaches the same view.
    let (forwarded, _) = d.since(0, u64::MAX, false, "d", || 11).unwrap();
    let e = ScoreNames::new(dir.path().join("e"));
    e.merge(&forwarded, "p", "here", all, || 12).unwrap();
    assert_eq!(view(&e), view(&c));
}

#[test]
fn a_name_whose_root_block_is_missing_is_not_bound() {
    let dir = tempfile::tempdir().unwrap();
    let text = bound_on(dir.path(), "a", "late", root(3));
    let c = ScoreNames::new(dir.path().join("c"));
    let err = c
        .merge(&text, "p", "here", |_| Ok(false), || 1)
        .unwrap_err();
    assert!(err.to_string().contains("before its root block"), "{err}");
    assert!(c.lookup("late").unwrap().is_none());
}

#[test]
fn bindings_go_out_only_when_their_blocks_have() {
    let dir = tempfile::tempdir().unwrap();
    let names = ScoreNames::new(dir.path().join("n"));
    names.bind("one", &root(1), &["alice"]).unwrap();
    // Placed at the durable end when first seen: 500.
    let (text, count) = names.since(0, 499, false, "a", || 500).unwrap();
    assert_eq!(
        (text.as_str(), count),
        ("", 0),
        "blocks not yet acknowledged"
    );
    names.bind("two", &root(2), &["alice"]).unwrap();
    let (text, count) = names.since(0, 500, false, "a", || 900).unwrap();
    assert_eq!(count, 1, "only the binding whose blocks lie before 500");
    assert!(text.contains("scorename=one") && text.contains("origin=a"));
    assert!(!text.contains("pos="), "positions are local: {text}");
    let (text, count) = names.since(1, 900, false, "a", || 900).unwrap();
    assert_eq!(count, 2);
    assert!(text.contains("scorename=two"));
}

#[test]
fn users_merge_as_a_set_with_tombstones_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = Users::new(dir.path().join("a"));
    a.add("alice", KEY_A).unwrap();
    let added = a.text().unwrap();
    a.remove("alice").unwrap();
    let removed = a.text().unwrap();
    a.add("bob", KEY_B).unwrap();
    // b hears the removal before the addition it ends.
    let b = Users::new(dir.path().join("b"));
    b.merge(&removed).unwrap();
    b.merge(&added).unwrap();
    assert!(
        !b.exists("alice").unwrap(),
        "the tombstone wins over an older add"
    );
    b.merge(&a.text().unwrap()).unwrap();
    assert_eq!(b.list().unwrap(), vec![("bob".to_string(), 1)]);
    assert_eq!(a.list().unwrap(), b.list().unwrap());
    // Replaying is harmless.
    assert_eq!(b.merge(&a.text().unwrap()).unwrap(), 0);
    // Alice comes back later, with a key added after her tombstone.
    a.add("alice", KEY_A).unwrap();
    b.merge(&a.text().unwrap()).unwrap();
    assert!(b.exists("alice").unwrap());
    // Malformed input is refused whole.
    assert!(b.merge("user=\"bad name\" key=x\n").is_err());
}

#[test]
fn a_name_taken_ahead_of_its_blocks_goes_no_further_until_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let a = ScoreNames::new(dir.path().join("a"));
    a.bind("early", &root(4), &["alice"]).unwrap();
    let (text, _) = a.since(0, u64::MAX, true, "a", || 4000).unwrap();
    assert!(text.contains("at=4000"), "{text}");
    // b reads through: it binds the name at once, waiting on a's blocks.
    let b = ScoreNames::new(dir.path().join("b"));
    b.merge(&text, "a", "b", |_| Ok(true), || 10).unwrap();
    assert!(b.lookup("early").unwrap().is_some(), "spawnable at once");
    let (fwd, count) = b.since(0, u64::MAX, false, "b", || 20).unwrap();
    assert_eq!(
        (fwd.as_str(), count),
        ("", 0),
        "not forwarded before its blocks"
    );
    assert_eq!(
        b.resolve("a", 3999, || 30).unwrap(),
        0,
        "a's blocks not all here yet"
    );
    assert_eq!(
        b.resolve("other", 5000, || 30).unwrap(),
        0,
        "only a's word counts"
    );
    assert_eq!(b.resolve("a", 4000, || 30).unwrap(), 1);
    let (fwd, count) = b.since(0, 30, false, "b", || 40).unwrap();
    assert_eq!(count, 1);
    assert!(
        fwd.contains("scorename=early") && !fwd.contains("waiting"),
        "{fwd}"
    );
}

/// A node cut off from the grid binds a name no peer has heard of (its own
/// binding not yet stamped with its origin); the peer's binding of the same
/// name, made earlier, arrives: the local one is renamed under its own
/// origin, as every other node names it. (The derived name once came out
/// as `NAME.-HEX`, with no origin, and nodes disagreed.)
#[test]
fn a_local_binding_that_loses_is_renamed_under_this_nodes_name() {
    let dir = tempfile::tempdir().unwrap();
    let from_b = bound_on(dir.path(), "b", "clash", root(5));
    let a = ScoreNames::new(dir.path().join("a"));
    a.bind("clash", &root(6), &["alice"]).unwrap();
    let renamed = a.merge(&from_b, "b", "a", |_| Ok(true), || 50).unwrap();
    let derived = grid::scorenames::derived_name("clash", "a", &vac::format_vac(&root(6)));
    assert_eq!(renamed.len(), 1);
    assert_eq!(renamed[0].shown_as, derived);
    assert_eq!(a.lookup("clash").unwrap().unwrap().root, root(5));
    assert_eq!(a.lookup(&derived).unwrap().unwrap().root, root(6));
    // A third node hearing both ends up with the same names.
    let (from_a, _) = a.since(0, u64::MAX, false, "a", || 60).unwrap();
    let c = ScoreNames::new(dir.path().join("c"));
    c.merge(&from_a, "a", "c", |_| Ok(true), || 1).unwrap();
    c.merge(&from_b, "b", "c", |_| Ok(true), || 2).unwrap();
    assert_eq!(view(&c), view(&a));
}

/// A peer's record is used as it came (compared, cut into derived names,
/// written back), so only its one canonical form is taken. Before, a
/// rootscore starting with Unicode spaces parsed (it is trimmed) and then
/// panicked the merge where its first eight bytes were cut for a derived
/// name, on every node the record reached; an origin was never checked.
#[test]
fn a_peers_record_in_any_but_its_canonical_form_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let all = |_: &Score| Ok(true);
    let here = ScoreNames::new(dir.path().join("here"));
    here.bind("web", &root(1), &["alice"]).unwrap();
    let hex = vac::format_vac(&root(2));
    // Bound after this node's binding, so each loses the name and is cut
    // into a derived one (where the panic was).
    const LATER: u64 = 9_000_000_000_000_000_000;
    let bad = [
        // Unicode spaces (U+2003, 3 bytes each) before the score: byte 8 falls inside the third.
        (
            format!(
                "scorename=web rootscore=\u{2003}\u{2003}\u{2003}{hex} user=alice origin=b time={LATER}\n"
            ),
            "rootscore",
        ),
        (
            format!(
                "scorename=web rootscore={} user=alice origin=b time={LATER}\n",
                hex.to_uppercase().replace("VAC:", "vac:")
            ),
            "rootscore",
        ),
        (
            format!("scorename=web rootscore={hex} user=alice origin=b/../../x time={LATER}\n"),
            "node name",
        ),
        (
            format!("scorename=web rootscore={hex} user=\"al ice\" origin=b time={LATER}\n"),
            "user name",
        ),
        (
            format!("scorename=web rootscore={hex} user=alice origin=b time={LATER} at=soon\n"),
            "position",
        ),
    ];
    for (text, why) in bad {
        let err = here
            .merge(&text, "p", "here", all, || 7)
            .expect_err(&text)
            .to_string();
        assert!(err.contains(why), "{text}: {err}");
    }
    // Nothing of them was stored, and the name is still this node's.
    assert_eq!(view(&here), vec![("web".to_string(), root(1))]);
    // A derived name never cuts inside a character, whatever it is given.
    let derived = grid::scorenames::derived_name("web", "b", "\u{2003}\u{2003}\u{2003}");
    assert!(derived.starts_with("web.b-"), "{derived}");
}

/// Names are per user: alice's `web` on one node and bob's `web` on
/// another are two bindings everywhere, neither renamed, in either order;
/// each user still cannot bind a name they have twice. Before, a name was
/// global: bob was refused a name only alice could see ("name web is
/// taken"), and the two bindings fought as a replication conflict.
#[test]
fn one_name_for_two_users_is_two_bindings_not_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let all = |_: &Score| Ok(true);
    let a = ScoreNames::new(dir.path().join("a"));
    a.bind("web", &root(1), &["alice"]).unwrap();
    let (from_a, _) = a.since(0, u64::MAX, false, "a", || 100).unwrap();
    let b = ScoreNames::new(dir.path().join("b"));
    b.bind("web", &root(2), &["bob"]).unwrap();
    let (from_b, _) = b.since(0, u64::MAX, false, "b", || 100).unwrap();
    let c = ScoreNames::new(dir.path().join("c"));
    let d = ScoreNames::new(dir.path().join("d"));
    assert!(c.merge(&from_a, "p", "c", all, || 7).unwrap().is_empty());
    assert!(c.merge(&from_b, "p", "c", all, || 8).unwrap().is_empty());
    assert!(d.merge(&from_b, "p", "d", all, || 7).unwrap().is_empty());
    assert!(d.merge(&from_a, "p", "d", all, || 8).unwrap().is_empty());
    for n in [&a, &b, &c, &d] {
        assert!(n.renamed().unwrap().is_empty());
    }
    for n in [&c, &d] {
        assert_eq!(n.lookup_for("web", "alice").unwrap().unwrap().root, root(1));
        assert_eq!(n.lookup_for("web", "bob").unwrap().unwrap().root, root(2));
        assert_eq!(n.names_for("alice").unwrap(), vec!["web".to_string()]);
        assert_eq!(n.names_for("bob").unwrap(), vec!["web".to_string()]);
    }
    let err = c.bind("web", &root(3), &["alice"]).unwrap_err().to_string();
    assert!(err.contains("is taken") && !err.contains("bob"), "{err}");
    c.bind("web", &root(3), &["carol"]).unwrap();
    let err = c
        .bind("web", &root(4), &["dave", "bob"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("taken for bob"), "{err}");
}

/// Each node's names as its users see them: (user, name, root), sorted.
fn seen(names: &ScoreNames) -> Vec<(String, String, Score)> {
    let db = ndb::Db::open(names.path()).unwrap();
    let mut v: Vec<(String, String, Score)> = db
        .entries()
        .iter()
        .filter_map(|e| {
            let name = e.get("scorename")?.to_string();
            let user = e.get("user")?.to_string();
            let b = names.lookup_for(&name, &user).unwrap()?;
            Some((user, name, b.root))
        })
        .collect();
    v.sort();
    v
}

/// Everything `names` holds, as a peer is sent it.
fn all_of(names: &ScoreNames, node: &str) -> String {
    names.since(0, u64::MAX, false, node, || 100).unwrap().0
}

#[test]
fn a_forgotten_name_is_gone_everywhere_and_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let all = |_: &Score| Ok(true);
    let a = ScoreNames::new(dir.path().join("a"));
    a.bind("web", &root(1), &["alice"]).unwrap();
    a.bind("db", &root(2), &["alice"]).unwrap();
    let (before, sent) = a.since(0, u64::MAX, false, "a", || 100).unwrap();
    let b = ScoreNames::new(dir.path().join("b"));
    b.merge(&before, "a", "b", all, || 1).unwrap();

    assert_eq!(a.forget("web", "alice").unwrap(), root(1));
    // A peer that has had everything up to here is sent the tombstone:
    // the entries already sent keep their places.
    let (more, _) = a.since(sent, u64::MAX, false, "a", || 100).unwrap();
    assert!(more.starts_with("forgot=web "), "{more}");
    assert!(a.lookup_for("web", "alice").unwrap().is_none());
    assert_eq!(a.names_for("alice").unwrap(), ["db"]);
    let e = a.forget("web", "alice").unwrap_err();
    assert!(e.to_string().contains("no name web"), "{e}");
    // The tombstone travels; an old copy of the binding is not taken again.
    b.merge(&all_of(&a, "a"), "a", "b", all, || 2).unwrap();
    assert!(b.lookup_for("web", "alice").unwrap().is_none());
    b.merge(&before, "a", "b", all, || 3).unwrap();
    assert!(b.lookup_for("web", "alice").unwrap().is_none());
    // A node that hears of the tombstone first never takes the binding.
    let c = ScoreNames::new(dir.path().join("c"));
    let tombstone: String = all_of(&a, "a")
        .lines()
        .filter(|l| l.starts_with("forgot="))
        .map(|l| format!("{l}\n"))
        .collect();
    c.merge(&tombstone, "a", "c", all, || 1).unwrap();
    c.merge(&before, "a", "c", all, || 2).unwrap();
    assert_eq!(seen(&b), seen(&c));
    assert_eq!(seen(&a), seen(&c));
    // …nor does one that hears both in one batch, the tombstone first.
    let d = ScoreNames::new(dir.path().join("d"));
    d.merge(&format!("{tombstone}{before}"), "a", "d", all, || 1)
        .unwrap();
    assert_eq!(seen(&a), seen(&d));
    // The name is free again for its user: a new binding, a new identity.
    a.bind("web", &root(3), &["alice"]).unwrap();
    b.merge(&all_of(&a, "a"), "a", "b", all, || 4).unwrap();
    assert_eq!(b.lookup_for("web", "alice").unwrap().unwrap().root, root(3));
    // Another user's name of the same spelling is not theirs to forget.
    a.bind("web", &root(4), &["bob"]).unwrap();
    a.forget("web", "bob").unwrap();
    assert_eq!(a.lookup_for("web", "alice").unwrap().unwrap().root, root(3));
}

#[test]
fn forgetting_a_conflicts_winner_gives_its_name_back_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let all = |_: &Score| Ok(true);
    let from_a = bound_on(dir.path(), "a", "web", root(1));
    let from_b = bound_on(dir.path(), "b", "web", root(2));
    let a = ScoreNames::new(dir.path().join("a.names"));
    // a's binding (earlier) wins; a forgets it.
    a.merge(&from_b, "b", "a", all, || 1).unwrap();
    let derived = grid::scorenames::derived_name("web", "b", &vac::format_vac(&root(2)));
    assert_eq!(
        a.lookup_for(&derived, "alice").unwrap().unwrap().root,
        root(2)
    );
    a.forget("web", "alice").unwrap();
    // b's root takes the name back where it was shown as derived.
    assert_eq!(a.lookup_for("web", "alice").unwrap().unwrap().root, root(2));
    assert!(a.lookup_for(&derived, "alice").unwrap().is_none());
    let tombstone: String = all_of(&a, "a")
        .lines()
        .filter(|l| l.starts_with("forgot="))
        .map(|l| format!("{l}\n"))
        .collect();
    // Three more nodes hear the same three things in different orders.
    let orders: [[&str; 3]; 3] = [
        [&from_a, &from_b, &tombstone],
        [&from_b, &tombstone, &from_a],
        [&tombstone, &from_a, &from_b],
    ];
    let mut views = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let n = ScoreNames::new(dir.path().join(format!("n{i}")));
        for (k, text) in order.iter().enumerate() {
            n.merge(text, "p", "here", all, || k as u64).unwrap();
        }
        views.push(seen(&n));
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
    assert_eq!(views[0], seen(&a));
    assert_eq!(
        views[0],
        [("alice".to_string(), "web".to_string(), root(2))]
    );
}

#[test]
fn a_shared_name_is_not_forgotten_for_one_and_a_bad_tombstone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = ScoreNames::new(dir.path().join("a"));
    a.bind("team", &root(1), &["alice", "bob"]).unwrap();
    let e = a.forget("team", "alice").unwrap_err();
    assert!(e.to_string().contains("alice, bob"), "{e}");
    assert!(a.lookup_for("team", "bob").unwrap().is_some());
    let all = |_: &Score| Ok(true);
    for bad in [
        "forgot=web rootscore=vac:nothex origin=a time=1 user=alice\n",
        "forgot=web rootscore=vac:0000000000000000000000000000000000000000 time=1 user=alice\n",
        "forgot=web rootscore=vac:0000000000000000000000000000000000000000 origin=a time=1\n",
        "forgot=../x rootscore=vac:0000000000000000000000000000000000000000 origin=a time=1 user=alice\n",
    ] {
        assert!(a.merge(bad, "p", "a", all, || 1).is_err(), "{bad}");
    }
}

/// Review fixes: a tombstone ends one binding, the one with its users too;
/// a binding shared with others takes a name back only if it beats them
/// all; a forgotten binding from before bindings had times makes a
/// tombstone peers take; a peer's extra pairs on a tombstone are not kept.
#[test]
fn a_tombstone_ends_its_own_users_binding_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let all = |_: &Score| Ok(true);
    let r = vac::format_vac(&root(1));
    // Two users' bindings of one name to one root, from before times.
    let path = dir.path().join("old");
    std::fs::write(
        &path,
        format!(
            "scorename=debian rootscore={r} user=alice\nscorename=debian rootscore={r} user=bob\n"
        ),
    )
    .unwrap();
    let placed =
        ScoreNames::new(&path).placed_by(Some(std::sync::Arc::new(grid::scorenames::Placement {
            node: "n".into(),
            durable_end: Box::new(|| 5),
        })));
    placed.forget("debian", "alice").unwrap();
    assert!(placed.lookup_for("debian", "alice").unwrap().is_none());
    assert!(
        placed.lookup_for("debian", "bob").unwrap().is_some(),
        "bob's is not alice's"
    );
    // Its tombstone is whole (a time and an origin): a peer takes it.
    let (text, _) = placed.since(0, u64::MAX, false, "n", || 5).unwrap();
    let peer = ScoreNames::new(dir.path().join("peer"));
    peer.merge(&text, "n", "peer", all, || 1).unwrap();
    assert!(peer.lookup_for("debian", "alice").unwrap().is_none());
    assert!(peer.lookup_for("debian", "bob").unwrap().is_some());

    // X1{a} < X3{b} < X2{a,b}: X1 forgotten, X2 still loses to X3 for b.
    let binding = |n: u8, time: u8, users: &[&str]| {
        let users: String = users.iter().map(|u| format!(" user={u}")).collect();
        format!(
            "scorename=web rootscore={}{users} origin=p time={time}\n",
            vac::format_vac(&root(n))
        )
    };
    let (x1, x3, x2) = (
        binding(11, 1, &["a"]),
        binding(13, 2, &["b"]),
        binding(12, 3, &["a", "b"]),
    );
    let tomb = format!(
        "forgot=web rootscore={} origin=p time=1 user=a scorename=sneaky\n",
        vac::format_vac(&root(11))
    );
    let mut views = Vec::new();
    for (i, order) in [[&x1, &x3, &x2, &tomb], [&tomb, &x2, &x1, &x3]]
        .iter()
        .enumerate()
    {
        let n = ScoreNames::new(dir.path().join(format!("m{i}")));
        for (k, text) in order.iter().enumerate() {
            n.merge(text, "p", "here", all, || k as u64).unwrap();
        }
        assert_eq!(n.lookup_for("web", "b").unwrap().unwrap().root, root(13));
        assert!(
            n.lookup_for("sneaky", "a").unwrap().is_none(),
            "a peer's extra pair"
        );
        // X1 is gone, and X2 is still shown to a under its derived name.
        assert!(n.lookup_for("web", "a").unwrap().is_none());
        views.push(seen(&n));
    }
    assert_eq!(views[0], views[1]);
}
