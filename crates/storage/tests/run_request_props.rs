//! `run …` lines are typed by tenants: whatever they send, reading one
//! never panics, and a line that reads is within the bounds the node
//! relies on (counts, retries, a command to run, a name to save to) and
//! reads back the same from the job record it is kept in (what a restarted
//! node runs again).

use proptest::prelude::*;
use storage::run::{MAX_COUNT, MAX_RETRIES, RunRequest};

/// Words near what `run` knows, and some it does not.
fn word() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "count", "retries", "timeout", "save", "memory", "pids", "cpu", "net", "publish", "userns",
        "agent", "node", "", "COUNT",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "2",
            "10",
            "11",
            "256",
            "257",
            "4294967296",
            "-1",
            "+3",
            "1s",
            "0s",
            "5m",
            "1h30m",
            "10ms",
            "99999999999h",
            "none",
            "host",
            "built",
            "a/b",
            "..",
            "x.y",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => prop::sample::select(vec!["-d", "run", "--", "busybox", "="]).prop_map(str::to_string),
        1 => "\\PC{0,16}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(word(), 0..6),
        prop_oneof![Just(None), "\\PC{0,24}".prop_map(Some)],
        "\\PC{0,8}",
    )
        .prop_map(|(run, detached, words, command, root)| {
            let mut line = String::new();
            if run {
                line.push_str("run ");
            }
            if detached {
                line.push_str("-d ");
            }
            line.push_str(&root);
            for w in words {
                line.push(' ');
                line.push_str(&w);
            }
            if let Some(c) = command {
                line.push_str(" -- ");
                line.push_str(&c);
            }
            line
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn a_run_line_that_reads_is_within_bounds_and_reads_back_the_same(line in line()) {
        if let Ok(r) = RunRequest::parse(&line) {
            prop_assert!((1..=MAX_COUNT).contains(&r.count), "{line:?}");
            prop_assert!(r.retries <= MAX_RETRIES, "{line:?}");
            prop_assert!(r.detached || (r.count == 1 && r.retries == 0), "{line:?}");
            prop_assert!(r.count == 1 || r.save.is_none(), "{line:?}");
            prop_assert!(r.timeout.is_none_or(|t| !t.is_zero()), "{line:?}");
            prop_assert!(!r.command.is_empty() && r.command == r.command.trim(), "{line:?}");
            if let Some(name) = &r.save {
                prop_assert!(grid::names::check_score_name(name).is_ok(), "{line:?}");
            }
            // What reaches the spawn: none of run's own words, none it refuses.
            for o in &r.options {
                let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
                prop_assert!(
                    !["count", "retries", "timeout", "save", "publish", "userns", "agent", "node"]
                        .contains(&key),
                    "{line:?} passed {o:?} on"
                );
            }
            prop_assert_eq!(&r.line, &line);
            prop_assert_eq!(RunRequest::parse(&r.line), Ok(r));
        }
    }
}
