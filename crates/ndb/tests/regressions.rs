//! Regression tests for edits that used to write files that do not parse
//! back, or parse back into other pairs.

use ndb::{Db, Entry};

fn pairs(e: &Entry) -> Vec<(String, String)> {
    e.pairs
        .iter()
        .map(|p| (p.attr.clone(), p.value.clone()))
        .collect()
}

fn all_pairs(db: &Db) -> Vec<Vec<(String, String)>> {
    db.entries().iter().map(pairs).collect()
}

fn reparsed(db: &Db) -> Vec<Vec<(String, String)>> {
    let text = db.to_string();
    let again = Db::parse("t", &text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    all_pairs(&again)
}

/// Runs `change` through [`ndb::update`] on a file holding `text`; returns
/// what it said and the file afterwards.
fn update_file(text: &str, change: impl FnOnce(&mut Db)) -> (Result<(), ndb::Error>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, text).unwrap();
    let said = ndb::update(&path, |db| {
        change(db);
        Ok::<_, ndb::Error>(())
    });
    (said, std::fs::read_to_string(&path).unwrap())
}

#[test]
fn removing_an_entry_takes_its_trailing_indented_comment() {
    let mut db = Db::parse("t", "a=1\n\t# c\nb=2\n").unwrap();
    assert_eq!(db.edit(|e| e.has("a", "1"), |_| None), 1);
    assert_eq!(db.to_string(), "b=2\n");
    // Column-0 comments are the file's and stay; indented ones and
    // white-space lines go with the entry.
    let mut db = Db::parse(
        "t",
        "x=0\na=1\n# keep\n\t# go\n \r\n\tb=2\n\t# go too\nc=3\n",
    )
    .unwrap();
    db.edit(|e| e.has("a", "1"), |_| None);
    assert_eq!(db.to_string(), "x=0\n# keep\nc=3\n");
    assert_eq!(reparsed(&db), all_pairs(&db));
}

#[test]
fn replacing_an_entry_keeps_its_comments_with_it() {
    let text = "a=1\n# mine\n\t# c\n \nb=2\n";
    let mut db = Db::parse("t", text).unwrap();
    db.edit(
        |e| e.has("a", "1"),
        |_| Some(Entry::new(&[("a", "2"), ("k", "v")])),
    );
    assert_eq!(db.to_string(), "a=2 k=v\n# mine\n\t# c\n \nb=2\n");
    assert_eq!(reparsed(&db), all_pairs(&db));
    // An indented comment between the entry's lines stays with it too.
    let mut db = Db::parse("t", "a=1\n\t# c\n\tb=2\nz=9\n").unwrap();
    db.edit(|e| e.has("a", "1"), |_| Some(Entry::new(&[("a", "2")])));
    assert_eq!(db.to_string(), "a=2\n\t# c\nz=9\n");
}

#[test]
fn a_replacement_that_cannot_be_written_leaves_the_file_alone() {
    let text = "a=1\n\t# c\nb=2\n";
    for bad in [&[][..], &[("", "x")], &[("two words", "x")], &[("#a", "x")]] {
        let (said, after) = update_file(text, |db| {
            db.edit(|e| e.has("a", "1"), |_| Some(Entry::new(bad)));
        });
        assert!(said.is_err(), "{bad:?} was written as {after:?}");
        assert_eq!(after, text);
    }
}

#[test]
fn a_value_with_a_quote_and_a_hash_survives_an_edit() {
    let text = "x=a\"#b y=1\n";
    let mut db = Db::parse("t", text).unwrap();
    let before = pairs(&db.entries()[0]);
    db.edit(
        |e| e.has("y", "1"),
        |e| {
            let mut e = e.clone();
            e.push("z", "2");
            Some(e)
        },
    );
    let mut want = before;
    want.push(("z".into(), "2".into()));
    assert_eq!(reparsed(&db), [want]);
    assert_eq!(db.to_string(), "x=a\"#b y=1 z=2\n");
}

#[test]
fn values_ndb_cannot_hold_are_refused_not_written() {
    let text = "# users\n";
    for bad in ["two\nlines", "a\" b", "\"lead", "#\"", "tab\"\tx", "cr\"\r"] {
        let (said, after) = update_file(text, |db| {
            db.append(Entry::new(&[("note", bad)]));
        });
        assert!(said.is_err(), "{bad:?} was written as {after:?}");
        assert_eq!(after, text);
    }
}

#[test]
fn lone_carriage_return_lines_round_trip() {
    for text in [
        "a=1\n\r\n\tb=2\n",
        "a=1\r\nb=2\r\n",
        "\r\na=1\n",
        "a=1\n\r\n\nb=2\n",
    ] {
        let db = Db::parse("t", text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(db.to_string(), text);
    }
    let db = Db::parse("t", "a=1\n\r\n\tb=2\n").unwrap();
    assert_eq!(
        all_pairs(&db),
        [vec![("a".into(), "1".into()), ("b".into(), "2".into())]],
        "a lone \\r is a white-space line, which does not end the entry"
    );
    // An edit elsewhere keeps the line byte for byte.
    let mut db = Db::parse("t", "a=1\n\r\nb=2\r\n").unwrap();
    db.edit(|e| e.has("b", "2"), |_| Some(Entry::new(&[("b", "3")])));
    assert_eq!(db.to_string(), "a=1\n\r\nb=3\n");
}

#[test]
fn an_indented_comment_outside_any_entry_parses_and_stays() {
    // libndb skips it; refusing the file would lock users out.
    let text = "\t# orphan\na=1\n\n \t# also\nb=2\n";
    let mut db = Db::parse("t", text).unwrap();
    assert_eq!(db.to_string(), text);
    db.edit(|e| e.has("b", "2"), |_| None);
    assert_eq!(db.to_string(), "\t# orphan\na=1\n\n \t# also\n");
}

#[test]
fn an_unterminated_last_line_is_ignored_but_kept() {
    let mut db = Db::parse("t", "a=1\nb=2").unwrap();
    assert_eq!(all_pairs(&db).len(), 1);
    assert_eq!(db.to_string(), "a=1\nb=2");
    db.append(Entry::new(&[("c", "3")]));
    assert_eq!(db.to_string(), "a=1\nc=3\nb=2");
}
