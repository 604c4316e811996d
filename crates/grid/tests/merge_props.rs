//! A peer's names, as `ScoreNames::merge` takes them, are network input:
//! whatever the text (bindings, tombstones, working-set lists, well formed
//! or not, in any order), a merge never panics, a refused batch changes
//! nothing, and a batch taken once changes nothing when sent again.

use grid::scorenames::ScoreNames;
use proptest::prelude::*;
use venti::Score;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("web".to_string()),
        Just("db".to_string()),
        Just("alice".to_string()),
        Just("bob".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("1".to_string()),
        Just("7".to_string()),
        Just("x y".to_string()),
        Just("../up".to_string()),
        Just(vac::format_vac(&Score::of(b"one"))),
        Just(vac::format_vac(&Score::of(b"two"))),
        Just(Score::of(b"list").to_string()),
        Just("vac:nothex".to_string()),
        "[a-z0-9.:-]{0,12}",
    ]
}

fn attr() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "scorename",
        "rootscore",
        "user",
        "origin",
        "time",
        "at",
        "forgot",
        "workingset",
        "for",
        "conflict",
        "pos",
        "waiting",
        "other",
    ])
}

/// An entry: a first attribute that makes it a binding, a tombstone or a
/// list (or anything), then more pairs.
fn entry() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    (
        prop::sample::select(vec!["scorename", "forgot", "workingset", "user"]),
        value(),
        prop::collection::vec((attr(), value()), 0..7),
    )
        .prop_map(|(first, v, rest)| {
            let mut e = vec![(first, v)];
            e.extend(rest);
            e
        })
}

/// A well-formed binding or tombstone, so that some batches are taken.
fn good() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    (
        prop::sample::select(vec!["web", "db"]),
        prop::sample::select(vec!["one", "two"]),
        prop::sample::select(vec!["a", "b"]),
        1u64..4,
        prop::sample::select(vec!["alice", "bob"]),
        any::<bool>(),
    )
        .prop_map(|(name, root, origin, time, user, tombstone)| {
            vec![
                (
                    if tombstone { "forgot" } else { "scorename" },
                    name.to_string(),
                ),
                ("rootscore", vac::format_vac(&Score::of(root.as_bytes()))),
                ("origin", origin.to_string()),
                ("time", time.to_string()),
                ("user", user.to_string()),
            ]
        })
}

fn text(entries: &[Vec<(&'static str, String)>]) -> String {
    let mut out = String::new();
    for e in entries {
        let pairs: Vec<(&str, &str)> = e.iter().map(|(a, v)| (*a, v.as_str())).collect();
        if let Ok(t) = ndb::Entry::new(&pairs).to_text() {
            out.push_str(&t);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_merge_never_panics_and_is_all_or_nothing_and_idempotent(
        batches in prop::collection::vec(
            prop::collection::vec(prop_oneof![3 => good(), 1 => entry()], 1..6),
            1..5,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let names = ScoreNames::new(dir.path().join("n"));
        names.bind("web", &Score::of(b"mine"), &["alice"]).unwrap();
        let all = |_: &Score| Ok(true);
        for batch in &batches {
            let t = text(batch);
            let before = std::fs::read(names.path()).unwrap();
            match names.merge(&t, "p", "here", all, || 1) {
                Err(_) => prop_assert_eq!(std::fs::read(names.path()).unwrap(), before),
                Ok(_) => {
                    let once = std::fs::read(names.path()).unwrap();
                    names.merge(&t, "p", "here", all, || 2).unwrap();
                    prop_assert_eq!(std::fs::read(names.path()).unwrap(), once);
                }
            }
            // Whatever was taken, every name shown resolves.
            for user in ["alice", "bob"] {
                for name in names.names_for(user).unwrap() {
                    prop_assert!(names.lookup_for(&name, user).unwrap().is_some());
                }
            }
        }
    }
}
