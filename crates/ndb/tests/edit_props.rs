//! Properties of parsing and editing: whatever [`Db::parse`] accepts prints
//! back byte for byte, and any edit either writes text that parses into
//! exactly the entries asked for or is refused, leaving the database alone.

use ndb::{Db, Entry, Pair};
use proptest::prelude::*;

type Content = Vec<Vec<(String, String)>>;

/// What the test expects of each entry: its pairs, and while no edit has
/// touched it, its text (see [`extents`]).
type Model = Vec<(Vec<(String, String)>, Option<String>)>;

fn content(db: &Db) -> Content {
    db.entries()
        .iter()
        .map(|e| {
            e.pairs
                .iter()
                .map(|p| (p.attr.clone(), p.value.clone()))
                .collect()
        })
        .collect()
}

/// The spec's rule (§10.1), independent of the writer: a value can be
/// written bare (no white space, no leading `"` or `#`) or quoted (no `"`),
/// and never with a newline.
fn representable(value: &str) -> bool {
    let bare =
        !value.is_empty() && !value.starts_with(['"', '#']) && !value.contains([' ', '\t', '\r']);
    !value.contains('\n') && (bare || !value.contains('"'))
}

// ---- text that parses -------------------------------------------------------

/// `min` to `max` characters of the kinds that matter to ndb, and a few that
/// might trip a parser (NUL, vertical tab, non-ASCII space).
fn junk(min: usize, max: usize) -> impl Strategy<Value = String> {
    let chars = "[a-z0-9=\"#!. \t\r\u{e9}\u{a0}\u{3000}\u{0}\u{b}-]";
    proptest::string::string_regex(&format!("{chars}{{{min},{max}}}")).expect("a valid regex")
}

fn space() -> impl Strategy<Value = String> {
    "[ \t\r]{1,3}"
}

fn pair_text() -> impl Strategy<Value = String> {
    let attr = "[a-z!.\"-][a-z0-9#\"!.\u{e9}-]{0,4}";
    let bare = "[^ \t\r\n\"#][^ \t\r\n]{0,6}";
    let quoted = "[^\"\n]{0,6}";
    (
        attr,
        prop_oneof![
            Just(String::new()),
            Just("=".to_string()),
            bare.prop_map(|v| format!("={v}")),
            quoted.prop_map(|v| format!("=\"{v}\"")),
            "[^\n]{0,6}".prop_map(|c| format!("=#{c}")),
        ],
    )
        .prop_map(|(a, v)| format!("{a}{v}"))
}

fn pairs_text() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((pair_text(), space()), 1..4),
        proptest::option::of("#[^\n]{0,6}"),
    )
        .prop_map(|(pairs, comment)| {
            let mut line: String = pairs.into_iter().map(|(p, s)| p + &s).collect();
            line.extend(comment);
            line
        })
}

/// Lines of every kind the parser knows, and some junk it may refuse.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        1 => "[ \t\r]{1,3}",
        2 => "#[^\n]{0,10}",
        2 => (space(), "#[^\n]{0,10}").prop_map(|(s, c)| s + &c),
        6 => pairs_text(),
        4 => (space(), pairs_text()).prop_map(|(s, p)| s + &p),
        1 => junk(0, 12),
    ]
}

fn db_text() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(line(), 0..14),
        prop_oneof![3 => Just(String::new()), 1 => junk(1, 6)],
    )
        .prop_map(|(lines, tail)| anchor(lines) + &tail)
        .prop_filter("Db::parse accepts it", |t| Db::parse("p", t).is_ok())
}

/// Joins lines into text. An indented line with pairs and no entry open is
/// refused, so such a line loses its indent; indented comments and
/// white-space lines keep theirs, as libndb skips them. Refused texts are
/// slow to generate, so this keeps them rare.
fn anchor(lines: Vec<String>) -> String {
    let mut text = String::new();
    let mut open = false;
    for line in lines {
        let line = match line.chars().next() {
            None => {
                open = false;
                line.as_str()
            }
            // Keep indented comments and white-space lines: libndb skips them.
            Some(' ' | '\t' | '\r') if !open => {
                let bare = line.trim_start_matches([' ', '\t', '\r']);
                if bare.is_empty() || bare.starts_with('#') {
                    line.as_str()
                } else {
                    bare
                }
            }
            Some('#' | ' ' | '\t' | '\r') => line.as_str(),
            Some(_) => {
                open = true;
                line.as_str()
            }
        };
        text.push_str(line);
        text.push('\n');
    }
    text
}

// ---- edits ----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Edit {
    Remove(usize),
    Replace(usize, Vec<Vec<(String, String)>>),
    Append(Vec<Vec<(String, String)>>),
}

/// Lines of pairs with valid attributes and arbitrary printable values
/// (some of which ndb cannot hold).
fn new_lines() -> impl Strategy<Value = Vec<Vec<(String, String)>>> {
    let attr = "[a-zA-Z0-9_.!\"-][a-zA-Z0-9_.!#\"-]{0,7}";
    let value = prop_oneof![
        4 => "[a-zA-Z0-9 \"#=.!-]{0,8}",
        1 => "\\PC{0,8}",
        1 => "[a-z\n\t\r\"]{0,4}",
    ];
    proptest::collection::vec(proptest::collection::vec((attr, value), 1..4), 1..3)
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), new_lines()).prop_map(|(i, l)| Edit::Replace(i, l)),
        new_lines().prop_map(Edit::Append),
    ]
}

fn entry(lines: &[Vec<(String, String)>]) -> Entry {
    let mut e = Entry::new(&[]);
    for (n, line) in lines.iter().enumerate() {
        e.pairs.extend(line.iter().map(|(attr, value)| Pair {
            attr: attr.clone(),
            value: value.clone(),
            line: n,
        }));
    }
    e
}

fn flat(lines: &[Vec<(String, String)>]) -> Vec<(String, String)> {
    lines.concat()
}

/// Each entry's text, by the extent rule of the crate documentation
/// (written independently here): from its first line through its last line
/// that begins with white space, with the column-0 comments between.
fn extents(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    let mut comments = String::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        match line.chars().next() {
            Some('\n') => open = false,
            Some('#') => comments.push_str(line),
            Some(' ' | '\t' | '\r') if open => {
                let last = out.last_mut().expect("an entry is open");
                last.push_str(&comments);
                last.push_str(line);
                comments.clear();
            }
            Some(' ' | '\t' | '\r') => {}
            _ => {
                open = true;
                out.push(line.to_string());
            }
        }
        if !line.starts_with('#') {
            comments.clear();
        }
    }
    out
}

/// The column-0 comments, which no edit may drop.
fn comments(text: &str) -> Vec<&str> {
    text.split_inclusive('\n')
        .filter(|l| l.starts_with('#') && l.ends_with('\n'))
        .collect()
}

/// Applies one edit to `db` and to `model`; returns whether it was made.
fn apply(db: &mut Db, model: &mut Model, edit: &Edit) -> bool {
    let n = model.len();
    match edit {
        Edit::Remove(_) | Edit::Replace(..) if n == 0 => false,
        Edit::Remove(i) => {
            let target = db.entries()[i % n].clone();
            assert_eq!(db.try_edit(|e| *e == target, |_| None), Ok(1));
            model.remove(i % n);
            true
        }
        Edit::Replace(i, lines) => {
            let target = db.entries()[i % n].clone();
            let said = db.try_edit(|e| *e == target, |_| Some(entry(lines)));
            let ok = said.is_ok();
            if ok {
                model[i % n] = (flat(lines), None);
            }
            ok
        }
        Edit::Append(lines) => {
            let ok = db.try_append(entry(lines)).is_ok();
            if ok {
                model.push((flat(lines), None));
            }
            ok
        }
    }
}

fn new_values(edit: &Edit) -> Vec<String> {
    match edit {
        Edit::Remove(_) => Vec::new(),
        Edit::Replace(_, lines) | Edit::Append(lines) => {
            flat(lines).into_iter().map(|(_, v)| v).collect()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn parse_never_panics_and_what_it_accepts_prints_back(
        bytes in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(db) = Db::parse("p", &text) {
            prop_assert_eq!(db.to_string(), text.as_ref());
            prop_assert_eq!(db.checked_text(), Ok(text.to_string()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn accepted_text_prints_back_byte_for_byte(text in db_text()) {
        let db = Db::parse("p", &text).unwrap();
        prop_assert_eq!(db.to_string(), text.clone());
        prop_assert_eq!(db.checked_text(), Ok(text));
    }

    #[test]
    fn edits_write_what_was_asked_or_nothing(
        text in db_text(),
        edits in proptest::collection::vec(edit(), 1..5),
    ) {
        let mut db = Db::parse("p", &text).unwrap();
        let texts = extents(&text);
        prop_assert_eq!(texts.len(), db.entries().len());
        let mut model: Model = content(&db).into_iter().zip(texts.into_iter().map(Some)).collect();
        for edit in &edits {
            let before = db.to_string();
            let no_target = model.is_empty() && !matches!(edit, Edit::Append(_));
            let writable = new_values(edit).iter().all(|v| representable(v));
            let made = apply(&mut db, &mut model, edit);
            let after = db.to_string();
            prop_assert_eq!(made, writable && !no_target, "{:?}", edit);
            if !made {
                prop_assert_eq!(&after, &before, "a refused edit changed the text");
            }
            let again = Db::parse("p", &after)
                .unwrap_or_else(|e| panic!("{after:?} does not parse: {e}"));
            let pairs: Content = model.iter().map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(content(&again), pairs.clone());
            prop_assert_eq!(content(&db), pairs);
            let texts = extents(&after);
            prop_assert_eq!(texts.len(), model.len());
            for (got, (_, want)) in texts.iter().zip(&model) {
                if let Some(want) = want {
                    prop_assert_eq!(got, want, "an untouched entry's text changed");
                }
            }
            prop_assert_eq!(db.checked_text(), Ok(after.clone()));
            prop_assert_eq!(comments(&after), comments(&before));
        }
    }
}
