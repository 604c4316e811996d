//! ndb (crates/ndb): Db::parse on arbitrary text never panics; what parses
//! prints (Display) as text that parses to the same entries; each entry's
//! to_text parses back to that entry; queries run; and edits (replace,
//! remove, append) driven by the input keep the printed file parseable, with
//! exactly the entries the edits should leave.
#![no_main]

use std::cell::Cell;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ndb::{Db, Entry};

/// An entry's pairs, with the line index of each pair within its entry.
fn shape(e: &Entry) -> Vec<(String, String, usize)> {
    e.pairs
        .iter()
        .map(|p| (p.attr.clone(), p.value.clone(), p.line))
        .collect()
}

fn shapes(db: &Db) -> Vec<Vec<(String, String, usize)>> {
    db.entries().iter().map(shape).collect()
}

fn reparse(db: &Db, what: &str) -> Db {
    let text = db.to_string();
    match Db::parse("again", &text) {
        Ok(again) => again,
        Err(e) => panic!("{what}: printed text does not parse: {e}\ntext: {text:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (text_bytes, ops) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text_bytes) else {
        return;
    };
    let Ok(mut db) = Db::parse("fuzz", text) else {
        return;
    };

    // Printing and parsing again gives the same entries.
    let again = reparse(&db, "as parsed");
    assert_eq!(
        shapes(&again),
        shapes(&db),
        "parse(print(db)) differs; text {text:?}"
    );

    // Each entry's own text is that entry.
    for e in db.entries() {
        assert!(!e.pairs.is_empty());
        let t = e
            .to_text()
            .unwrap_or_else(|err| panic!("a parsed entry {e:?} cannot be written back: {err}"));
        let one = Db::parse("entry", &t)
            .unwrap_or_else(|err| panic!("to_text {t:?} does not parse: {err}"));
        assert_eq!(one.entries().len(), 1, "to_text {t:?}");
        assert_eq!(shape(&one.entries()[0]), shape(e), "to_text {t:?}");
        let _ = e.query_line();
        if let Some(p) = e.pairs.first() {
            assert!(db.search(&p.attr, &p.value).count() >= 1);
            assert!(db.get_value(&p.attr, &p.value, &p.attr).is_some());
        }
    }

    // Edits driven by the rest of the input; `expect` is what they should leave.
    let mut u = Unstructured::new(ops);
    let mut expect = shapes(&db);
    let clean = |u: &mut Unstructured| -> String {
        u.arbitrary::<String>()
            .unwrap_or_default()
            .chars()
            .filter(|&c| c != '"' && c != '\n' && c != '\r')
            .collect()
    };
    for _ in 0..8 {
        let Ok(op) = u.int_in_range(0..=2u8) else {
            break;
        };
        // `edit` asks `pick` about the entries in order, once each.
        let calls = Cell::new(0usize);
        let nth = |i: usize| {
            let calls = &calls;
            move |_: &Entry| {
                let k = calls.get();
                calls.set(k + 1);
                k == i
            }
        };
        let before = db.to_string();
        let ok = match op {
            0 if !expect.is_empty() => {
                let Ok(i) = u.choose_index(expect.len()) else {
                    break;
                };
                let r = db.try_edit(nth(i), |_| None);
                if r.is_ok() {
                    assert_eq!(r.as_ref().ok(), Some(&1));
                    expect.remove(i);
                }
                r.map(|_| ())
            }
            1 if !expect.is_empty() => {
                let Ok(i) = u.choose_index(expect.len()) else {
                    break;
                };
                let attr: String = clean(&mut u)
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(8)
                    .collect();
                let attr = if attr.is_empty() {
                    "k".to_string()
                } else {
                    attr
                };
                let value = clean(&mut u);
                let r = db.try_edit(nth(i), |e| {
                    let mut e = e.clone();
                    e.push(&attr, &value);
                    Some(e)
                });
                if r.is_ok() {
                    assert_eq!(r.as_ref().ok(), Some(&1));
                    let line = expect[i].last().map_or(0, |p| p.2);
                    expect[i].push((attr, value, line));
                }
                r.map(|_| ())
            }
            _ => {
                let value = clean(&mut u);
                let r = db.try_append(Entry::new(&[("user", "fuzz"), ("key", &value)]));
                if r.is_ok() {
                    expect.push(vec![
                        ("user".into(), "fuzz".into(), 0),
                        ("key".into(), value, 0),
                    ]);
                }
                r
            }
        };
        if ok.is_err() {
            assert_eq!(db.to_string(), before, "a refused edit changed the text");
        }
        let checked = db
            .checked_text()
            .unwrap_or_else(|e| panic!("checked_text after an accepted edit: {e}"));
        assert_eq!(checked, db.to_string());
        assert_eq!(shapes(&db), expect, "the edited Db itself");
        let again = reparse(&db, "after an edit");
        assert_eq!(shapes(&again), expect, "edits; original text {text:?}");
    }
});
