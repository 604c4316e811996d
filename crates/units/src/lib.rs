//! Sizes and durations as people write them, read one way everywhere.
//!
//! Before this crate three size grammars disagreed (`1MiB` was a size to a
//! spawn option and an error to the object-store settings). Now a size is
//! a whole number with an optional unit, where `K`, `M`, `G` and `T` are
//! powers of 1024 and may be written `k`, `KB`, `KiB` and so on:
//! `512`, `100M`, `1GiB`, `4g`. A duration is a number with an optional
//! unit of `ms`, `s`, `m`, `h` or `d`, seconds when bare: `30`, `30s`,
//! `1.5s`, `250ms`, `5m`.

use std::fmt;
use std::time::Duration;

/// Why a size or a duration was refused; its text is meant to follow the
/// name of what was being set (`spawn-max=lots: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

/// `100M`, `1GiB`, `512k` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, BadValue> {
    let bad = || {
        BadValue(format!(
            "{text:?} is not a size: write a whole number of bytes, optionally with K, M, G or T (powers of 1024), e.g. 512M"
        ))
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if split == 0 {
        return Err(bad());
    }
    let n: u64 = t[..split].parse().map_err(|_| bad())?;
    let unit = t[split..].trim_start().to_ascii_uppercase();
    // `M`, `MB` and `MiB` all mean 2^20 here, as they do to most of the
    // tools the same people use (dd, ulimit, cgroup files).
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| BadValue(format!("{text:?} is too large a size")))
}

/// `30`, `30s`, `1.5s`, `250ms`, `5m`, `2h`, `1d`: bare numbers are seconds.
pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    let bad = || {
        BadValue(format!(
            "{text:?} is not a duration: write a number of seconds, or a number with ms, s, m, h or d, e.g. 30s"
        ))
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if split == 0 {
        return Err(bad());
    }
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let scale = match t[split..].trim_start() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * scale)
        .map_err(|_| BadValue(format!("{text:?} is too long a duration")))
}

/// A byte count in the largest unit that leaves a whole part, one
/// decimal: `48.0 MiB`, `1.5 GiB`, `512 bytes`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 40 => format!("{:.1} TiB", b as f64 / (1u64 << 40) as f64),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

/// A duration as a setting would be written: `30s`, `5m`, `250ms`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_in_every_spelling_people_use() {
        for (text, want) in [
            ("512", 512),
            ("100M", 100 << 20),
            ("100m", 100 << 20),
            ("1MiB", 1 << 20),
            ("1MB", 1 << 20),
            ("1 G", 1 << 30),
            ("2t", 2 << 40),
            ("64K", 64 << 10),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "M", "lots", "1.5G", "-1", "1X", "1GG", "99999999999T"] {
            let err = parse_size(bad).unwrap_err().0;
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_bare_are_seconds() {
        for (text, want) in [
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("250ms", Duration::from_millis(250)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "s", "soon", "-1s", "3 weeks", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn written_durations_read_back() {
        for d in [30_000u64, 300_000, 7_200_000, 250, 0] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&duration_text(d)), Ok(d));
        }
    }

    proptest! {
        #[test]
        fn no_text_makes_the_parsers_panic(text in ".{0,24}") {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
        }

        #[test]
        fn a_number_with_a_unit_is_that_many_units(n in 0u64..1 << 20, unit in 0usize..5) {
            let (suffix, shift) = [("", 0), ("K", 10), ("M", 20), ("G", 30), ("T", 40)][unit];
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n << shift));
        }
    }
}
