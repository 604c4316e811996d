//! What a user types at the front door: a spawn's option words, an
//! import's format word, score and user names.
//!
//! The input is a recipe for a list of words (mostly `KEY=VALUE` with the
//! keys a spawn knows and values near their bounds: sizes with suffixes,
//! ports, weights, overflowing numbers; sometimes arbitrary text, long
//! words, more words than allowed) and for names.
//!
//! Checks: nothing panics; `check_form` refuses more than `MAX_OPTIONS`
//! words or a word longer than `MAX_OPTION_LEN`, and accepts only
//! `KEY=VALUE` words with known keys; whatever `cpu::options::parse`
//! accepts also passes `check_form`, and its limits are within the node's
//! ceilings (`CpuConfig::default()`); `Format::parse` accepts exactly
//! nothing, `oci` and `oci:TAG`; an accepted score or user name is short
//! and plain.
#![no_main]

use arbitrary::Unstructured;
use cpu::CpuConfig;
use cpu::options::{MAX_OPTION_LEN, MAX_OPTIONS, check_form, parse};
use libfuzzer_sys::fuzz_target;
use storage::import::Format;

const KEYS: [&str; 10] = [
    "memory", "pids", "cpu", "net", "publish", "userns", "node", "", "colour", "MEMORY",
];

const VALUES: [&str; 32] = [
    "",
    "0",
    "1",
    "4M",
    "4194303",
    "4194304",
    "2G",
    "2g",
    "2GiB",
    "2049M",
    "1T",
    "16E",
    "18446744073709551615",
    "18446744073709551616",
    "17179869184G",
    "-1",
    "+5",
    " 5",
    "5 ",
    "1000",
    "1001",
    "10000",
    "2048",
    "2049",
    "65535",
    "65536",
    "private",
    "host",
    "yes",
    "no",
    "=",
    "x=y",
];

fn word(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => u.arbitrary()?,
        1 => {
            let key = KEYS[u.choose_index(KEYS.len())?];
            let n = u.int_in_range(0..=80usize)?;
            format!("{key}={}", "9".repeat(n))
        }
        2 => KEYS[u.choose_index(KEYS.len())?].to_string(),
        _ => {
            let key = KEYS[u.choose_index(KEYS.len())?];
            let value = if u.ratio(1, 4)? {
                u.arbitrary::<String>()?
            } else {
                VALUES[u.choose_index(VALUES.len())?].to_string()
            };
            format!("{key}={value}")
        }
    })
}

fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => [
            ".",
            "..",
            "...",
            ".a",
            "-x",
            "a/b",
            "é",
            "a+b",
            "debian.12",
            "",
            "x\n",
        ][u.choose_index(11)?]
        .to_string(),
        1 => "n".repeat(u.int_in_range(60..=70usize)?),
        _ => u.arbitrary()?,
    })
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let n = if u.ratio(1, 8)? {
        u.int_in_range(MAX_OPTIONS - 1..=MAX_OPTIONS + 2)?
    } else {
        u.int_in_range(0..=5usize)?
    };
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        words.push(word(&mut u)?);
    }
    let borrowed: Vec<&str> = words.iter().map(String::as_str).collect();

    let form = check_form(&borrowed);
    let known = |w: &&str| {
        w.split_once('=').is_some_and(|(k, _)| {
            ["memory", "pids", "cpu", "net", "publish", "userns", "node"].contains(&k)
        })
    };
    let well_formed = words.len() <= MAX_OPTIONS
        && borrowed
            .iter()
            .all(|w| w.len() <= MAX_OPTION_LEN && known(w));
    assert_eq!(
        form.is_ok(),
        well_formed,
        "check_form({words:?}) = {:?}",
        form.err().map(|e| e.to_string())
    );

    let config = CpuConfig::default();
    if let Ok(opts) = parse(&config, &words) {
        assert!(
            form.is_ok(),
            "parse accepted {words:?}, check_form refused it"
        );
        let (l, c) = (&opts.limits, &config.ceilings);
        assert!(
            l.memory <= c.memory && l.pids <= c.pids && l.cpu_weight <= c.cpu_weight,
            "parse({words:?}) gave limits above the ceilings"
        );
        assert!(l.memory >= 4 << 20 && l.pids >= 1 && (1..=10000).contains(&l.cpu_weight));
        assert!(opts.publish.iter().all(|&p| p > 0));
        assert!(
            !borrowed.iter().any(|w| w.starts_with("node=")),
            "a cpu node accepted node="
        );
    }

    // The import's format word: nothing, `oci` or `oci:TAG`.
    let fw: Option<String> = if u.ratio(1, 4)? {
        None
    } else if u.arbitrary()? {
        Some(
            ["oci", "oci:", "oci:v1", "OCI", "tar", "oci:a:b", "oci: "][u.choose_index(7)?]
                .to_string(),
        )
    } else {
        Some(u.arbitrary()?)
    };
    match (fw.as_deref(), Format::parse(fw.as_deref())) {
        (None, Ok(f)) => assert_eq!(f, Format::Tar),
        (Some("oci"), Ok(f)) => assert_eq!(f, Format::Oci(None)),
        (Some(w), Ok(Format::Oci(Some(tag)))) => {
            assert!(!tag.is_empty() && w == format!("oci:{tag}"), "{w:?}")
        }
        (Some(w), Ok(f)) => panic!("Format::parse({w:?}) = {f:?}"),
        (Some(w), Err(_)) => assert!(w != "oci" && !(w.starts_with("oci:") && w.len() > 4)),
        (None, Err(e)) => panic!("no format word refused: {e}"),
    }

    let plain = |n: &str, extra: &[char]| {
        !n.is_empty()
            && n.len() <= grid::names::MAX_NAME
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
            && !n.chars().all(|c| c == '.')
    };
    for _ in 0..3 {
        let n = name(&mut u)?;
        if grid::names::check_score_name(&n).is_ok() {
            assert!(
                plain(&n, &['.', '_', '-', '+']),
                "score name {n:?} accepted"
            );
        }
        if grid::names::check_user_name(&n).is_ok() {
            assert!(
                plain(&n, &['.', '_', '-']) && n.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "user name {n:?} accepted"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
