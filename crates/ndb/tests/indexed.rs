//! [`ndb::Indexed`] answers as a fresh parse of the file would, whatever
//! wrote to the file in between: its own appends and rewrites, another
//! index of the same file (another process), a hand-appended continuation,
//! a write cut short by a crash.

use std::io::Write;

use ndb::{Db, Entry, Indexed};
use proptest::prelude::*;

const BY_VALUE: [&str; 2] = ["name", "user"];
const BY_PRESENCE: [&str; 2] = ["pos", "note"];

fn pairs(e: &Entry) -> Vec<(String, String)> {
    e.pairs
        .iter()
        .map(|p| (p.attr.clone(), p.value.clone()))
        .collect()
}

/// Every answer of `index` against a fresh parse of its file.
fn agrees(index: &Indexed) {
    let db = Db::open(index.path()).unwrap();
    let view = index.view().unwrap();
    assert_eq!(view.len(), db.entries().len());
    let all: Vec<_> = view.entries_from(0).unwrap().iter().map(pairs).collect();
    assert_eq!(all, db.entries().iter().map(pairs).collect::<Vec<_>>());
    for id in 0..view.len() {
        assert_eq!(pairs(&view.entry(id).unwrap()), pairs(&db.entries()[id]));
    }
    for attr in BY_VALUE {
        for value in ["a", "b", "c", "d", "x y", ""] {
            let got: Vec<_> = view
                .search(attr, value)
                .unwrap()
                .iter()
                .map(pairs)
                .collect();
            let want: Vec<_> = db.search(attr, value).map(pairs).collect();
            assert_eq!(got, want, "{attr}={value}");
        }
    }
    for attr in BY_PRESENCE {
        let want: Vec<usize> = (0..db.entries().len())
            .filter(|&i| db.entries()[i].get(attr).is_some())
            .collect();
        assert_eq!(view.ids_where(attr, true), want, "{attr} present");
        let lacking: Vec<usize> = (0..db.entries().len())
            .filter(|i| !want.contains(i))
            .collect();
        assert_eq!(view.ids_where(attr, false), lacking, "{attr} lacking");
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Appends an entry through the index.
    Append(Vec<(&'static str, &'static str)>),
    /// Appends an entry through a second index of the file.
    AppendElsewhere(Vec<(&'static str, &'static str)>),
    /// Removes the entries holding name=VALUE by a rewrite.
    Remove(&'static str),
    /// Adds pos= to every entry lacking it, by a rewrite.
    Place,
    /// Appends raw text to the file, as a hand or another program might.
    Raw(&'static str),
}

fn value() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just("d"),
        Just("x y"),
        Just("")
    ]
}

fn entry() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    (value(), prop::collection::vec(value(), 0..3), any::<bool>()).prop_map(
        |(name, users, note)| {
            let mut e = vec![("name", name)];
            e.extend(users.into_iter().map(|u| ("user", u)));
            if note {
                e.push(("note", "n"));
            }
            e
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => entry().prop_map(Step::Append),
        2 => entry().prop_map(Step::AppendElsewhere),
        1 => value().prop_map(Step::Remove),
        1 => Just(Step::Place),
        1 => prop_oneof![
            Just("name=d user=a\n"),
            Just("\tuser=c note=1\n"),
            Just("# a comment\n"),
            Just("\n"),
            Just("name=b\n\tuser=d\n"),
        ]
        .prop_map(Step::Raw),
    ]
}

fn apply(index: &Indexed, other: &Indexed, step: &Step) {
    match step {
        Step::Append(e) => index
            .append(|_| Ok::<_, ndb::Error>((vec![Entry::new(e)], ())))
            .unwrap(),
        Step::AppendElsewhere(e) => other
            .append(|_| Ok::<_, ndb::Error>((vec![Entry::new(e)], ())))
            .unwrap(),
        Step::Remove(v) => index
            .rewrite(|db| Ok::<_, ndb::Error>(db.edit(|e| e.has("name", v), |_| None)))
            .map(|_| ())
            .unwrap(),
        Step::Place => index
            .rewrite(|db| {
                db.edit(
                    |e| e.get("pos").is_none(),
                    |e| {
                        let mut e = e.clone();
                        e.push("pos", "1");
                        Some(e)
                    },
                );
                Ok::<_, ndb::Error>(())
            })
            .unwrap(),
        Step::Raw(text) => {
            // A continuation after a blank line would not parse: keep the
            // file one that parses, as the other writers do.
            let mut probe = std::fs::read_to_string(index.path()).unwrap_or_default();
            probe.push_str(text);
            if Db::parse("probe", &probe).is_err() {
                return;
            }
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(index.path())
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn answers_as_a_fresh_parse_does(steps in prop::collection::vec(step(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let index = Indexed::new(&path, &BY_VALUE, &BY_PRESENCE);
        let other = Indexed::new(&path, &BY_VALUE, &BY_PRESENCE);
        agrees(&index);
        for step in &steps {
            apply(&index, &other, step);
            agrees(&index);
            agrees(&other);
        }
    }
}

#[test]
fn a_line_cut_short_is_not_read_and_never_joins_an_appended_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, "name=a user=a\nname=b user=b pos=12").unwrap();
    let index = Indexed::new(&path, &BY_VALUE, &BY_PRESENCE);
    assert_eq!(index.view().unwrap().len(), 1);
    assert!(
        index
            .view()
            .unwrap()
            .search("name", "b")
            .unwrap()
            .is_empty()
    );
    index
        .append(|_| Ok::<_, ndb::Error>((vec![Entry::new(&[("name", "c")])], ())))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("pos=12\nname=c\n"), "{text:?}");
    assert!(
        text.contains("# "),
        "the cut line is kept as a comment: {text:?}"
    );
    agrees(&index);
    let names: Vec<_> = index
        .view()
        .unwrap()
        .entries_from(0)
        .unwrap()
        .iter()
        .map(|e| e.get("name").unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn a_continuation_appended_to_an_entry_already_read_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, "name=a\n").unwrap();
    let index = Indexed::new(&path, &BY_VALUE, &BY_PRESENCE);
    assert!(
        index
            .view()
            .unwrap()
            .search("user", "b")
            .unwrap()
            .is_empty()
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"\tuser=b\n")
        .unwrap();
    assert_eq!(index.view().unwrap().search("user", "b").unwrap().len(), 1);
    agrees(&index);
}

#[test]
fn a_bad_line_is_named_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, "name=a\n\n\tuser=b\n").unwrap();
    let index = Indexed::new(&path, &BY_VALUE, &BY_PRESENCE);
    let e = index.view().err().expect("a continuation with no entry");
    assert!(e.to_string().contains(":3:"), "{e}");
}
