//! The spec's `ndbtest` file (§11.14), queried as Plan 9 `ndb/query` does.

const NDBTEST: &str = "# comment line
sys=alpha dom=alpha.example.com
\tip=10.0.0.1 ether=0011223344ff
\t# indented comment
\tventi=tcp!10.0.0.1!17034 fs=alpha

sys = beta
\tdesc=\"two words\" note=a#b
sys=gamma ip=10.0.0.3 tag
\tip=10.0.0.33 x=#comment
  sys=delta
";

fn db() -> ndb::Db {
    ndb::Db::parse("ndbtest", NDBTEST).unwrap()
}

fn lines(db: &ndb::Db, attr: &str, value: &str) -> Vec<String> {
    db.search(attr, value).map(|e| e.query_line()).collect()
}

#[test]
fn spec_11_14_queries() {
    let db = db();
    assert_eq!(
        db.get_value("sys", "alpha", "venti"),
        Some("tcp!10.0.0.1!17034")
    );
    assert_eq!(
        lines(&db, "sys", "alpha"),
        [
            "sys=alpha dom=alpha.example.com ip=10.0.0.1 ether=0011223344ff venti=tcp!10.0.0.1!17034 fs=alpha "
        ]
    );
    let beta = "sys= beta= desc=two words note=a#b ";
    assert_eq!(lines(&db, "sys", ""), [beta]);
    assert_eq!(lines(&db, "note", "a#b"), [beta]);
    assert_eq!(
        db.get_value("sys", "gamma", "ip"),
        Some("10.0.0.3"),
        "same-line preference"
    );
    let gamma = "sys=gamma ip=10.0.0.3 tag= ip=10.0.0.33 x= sys=delta ";
    assert_eq!(lines(&db, "ip", "10.0.0.33"), [gamma]);
    assert_eq!(lines(&db, "tag", ""), [gamma]);
    assert_eq!(lines(&db, "sys", "delta"), [gamma]);
    assert_eq!(
        db.get_value("ip", "10.0.0.33", "ip"),
        Some("10.0.0.33"),
        "the matching line first"
    );
    assert!(lines(&db, "sys", "epsilon").is_empty());
}

#[test]
fn rewriting_an_unchanged_file_is_byte_identical() {
    assert_eq!(db().to_string(), NDBTEST);
}

#[test]
fn concurrent_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, "# header comment\n").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    ndb::update(&path, |db| {
                        db.append(ndb::Entry::new(&[
                            ("name", &format!("t{t}-{i}")),
                            ("n", "1"),
                        ]));
                        Ok::<_, ndb::Error>(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let db = ndb::Db::open(&path).unwrap();
    assert_eq!(db.entries().len(), 200);
    assert!(db.to_string().starts_with("# header comment\n"));
}

mod props {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parsing_never_panics(text in "[ a-z=\"#\t\n\r.!-]{0,200}") {
            if let Ok(db) = ndb::Db::parse("p", &text) {
                // What parses, prints and parses to the same entries.
                let again = ndb::Db::parse("p", &db.to_string()).unwrap();
                prop_assert_eq!(again.entries().len(), db.entries().len());
            }
        }

        #[test]
        fn entries_round_trip(values in proptest::collection::vec("[a-z0-9 #!.]{0,12}", 1..6)) {
            let pairs: Vec<(String, String)> = values.iter().enumerate().map(|(i, v)| (format!("a{i}"), v.trim().to_string())).collect();
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect();
            let mut db = ndb::Db::default();
            db.append(ndb::Entry::new(&refs));
            let again = ndb::Db::parse("p", &db.to_string()).unwrap();
            let got: Vec<(String, String)> = again.entries()[0].pairs.iter().map(|p| (p.attr.clone(), p.value.clone())).collect();
            prop_assert_eq!(got, pairs);
        }
    }
}
