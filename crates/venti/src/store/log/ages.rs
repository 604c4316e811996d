//! How old the log's records are: marks of (Unix time, log end), each
//! saying that every record below that end was written before that time.
//!
//! The promise, for a grace period G: a block written or touched (written
//! again, or claimed by a replication peer) within G of a collection is
//! not swept by it, named or not. Two rules keep it:
//!
//! * a collection at time T sweeps only records below the newest mark
//!   whose second ended by T − 2G ([`Ages::horizon`] with `2G`);
//! * a touch at time t of a block whose record lies below the newest mark
//!   whose second ended by t − G copies the block to the end of the log
//!   (`LogStore::refresh_horizon`).
//!
//! A block touched at t > T − G and not copied lay at or above the mark of
//! t − G > T − 2G (every mark that old was known, and whole, at t), so
//! above the collection's horizon. Records are thus copied at most once
//! per G, and only when they are touched.
//!
//! Fewer marks only ever make records look younger (a horizon further
//! back), which keeps more: marks are sampled at most every G/1024, kept
//! in memory, and saved with each index commit; those lost in a crash
//! cost nothing but garbage kept a little longer.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The grace period of a store nobody configured: a day, as the issue of
/// unnamed archives asks.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

pub struct Ages {
    grace: Duration,
    /// Oldest first, times never decreasing.
    marks: VecDeque<(u64, u64)>,
    /// Marks not yet saved in the index.
    pub unsaved: Vec<(u64, u64)>,
    /// The wall clock and the boot clock when last looked at, to see the
    /// wall clock step forward (see [`Ages::watch_clock`]).
    anchor: Option<(u64, u64)>,
    /// The marks were moved: the saved ones are to be replaced by these.
    pub moved: bool,
}

/// How far the wall clock may run ahead of the boot clock between two
/// looks before it counts as a step.
const CLOCK_SLACK: u64 = 60;

/// Seconds since boot, suspended time included (`CLOCK_BOOTTIME`).
pub fn boot_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Ages {
    pub fn new(saved: impl IntoIterator<Item = (u64, u64)>) -> Ages {
        let mut marks: Vec<(u64, u64)> = saved.into_iter().collect();
        marks.sort_unstable();
        Ages {
            grace: DEFAULT_GRACE,
            marks: marks.into(),
            unsaved: Vec::new(),
            anchor: None,
            moved: false,
        }
    }

    /// Told the wall clock and the boot clock together: a wall clock that
    /// stepped forward (NTP on a machine without a clock of its own, a
    /// restored virtual machine) would make every record written before
    /// the step look older by the step, and a collection could sweep an
    /// upload within its grace period. So every mark is moved forward by
    /// the step: records only ever look younger for it. (A step while
    /// the store was closed is not seen.)
    pub fn watch_clock(&mut self, wall: u64, boot: u64) {
        if let Some((w0, b0)) = self.anchor {
            let expected = w0 + boot.saturating_sub(b0);
            if wall > expected + CLOCK_SLACK {
                let step = wall - expected;
                tracing::warn!(
                    step_secs = step,
                    "the wall clock stepped forward; the log's marks of age move with it"
                );
                for m in self.marks.iter_mut() {
                    m.0 += step;
                }
                self.unsaved.clear();
                self.moved = true;
            }
        }
        self.anchor = Some((wall, boot));
    }

    /// Every mark, for saving in place of the saved ones after a move.
    pub fn all(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.marks.iter().copied()
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Notes that the log ended at `end` at time `now` (a Unix second: a
    /// mark says its records were written before that second ended). In
    /// the second of the last mark, that mark grows; else a new one is
    /// taken unless the last is less than G/1024 old (fewer marks only
    /// make records look younger).
    pub fn note(&mut self, now: u64, end: u64) {
        let every = (self.grace.as_secs() / 1024).max(1);
        if let Some(last) = self.marks.back_mut() {
            if end <= last.1 {
                return;
            }
            // A clock that went back does not make old records young: the
            // last mark grows, keeping its later time.
            if now <= last.0 {
                last.1 = end;
                match self.unsaved.last_mut() {
                    Some(u) if u.0 == last.0 => u.1 = end,
                    _ => self.unsaved.push(*last),
                }
                return;
            }
            if now < last.0 + every {
                return;
            }
        }
        self.marks.push_back((now, end));
        self.unsaved.push((now, end));
        // Marks much older than the grace are never a horizon again but
        // the newest of them; keep that one.
        let keep_after = now.saturating_sub(4 * self.grace.as_secs().max(1));
        while self.marks.len() > 2 && self.marks[1].0 < keep_after {
            self.marks.pop_front();
        }
    }

    /// Where records older than `age` end: the end of the newest mark
    /// whose second ended at least `age` ago (`floor` if there is none).
    pub fn horizon(&self, now: u64, age: Duration, floor: u64) -> u64 {
        let cutoff = now.saturating_sub(age.as_secs());
        let at = self.marks.partition_point(|&(t, _)| t < cutoff);
        if at == 0 {
            floor
        } else {
            self.marks[at - 1].1.max(floor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_horizon_is_the_end_of_the_newest_mark_old_enough() {
        let mut ages = Ages::new([]);
        // Marks at most every 2 s.
        ages.set_grace(Duration::from_secs(2048));
        assert_eq!(ages.horizon(1000, Duration::from_secs(10), 64), 64);
        ages.note(1000, 500);
        ages.note(1000, 600); // the same second: the mark grows
        ages.note(1001, 650); // within the sampling interval: not taken
        ages.note(1010, 700);
        ages.note(1020, 650); // the log did not grow: not taken
        // A mark's second must have ended `age` ago.
        assert_eq!(ages.horizon(1010, Duration::from_secs(10), 64), 64);
        assert_eq!(ages.horizon(1011, Duration::from_secs(10), 64), 600);
        assert_eq!(ages.horizon(1020, Duration::from_secs(10), 64), 600);
        assert_eq!(ages.horizon(1021, Duration::from_secs(10), 64), 700);
        assert_eq!(ages.unsaved, vec![(1000, 600), (1010, 700)]);
    }

    #[test]
    fn a_wall_clock_that_steps_forward_moves_the_marks_with_it() {
        let mut ages = Ages::new([]);
        ages.set_grace(Duration::from_secs(10));
        ages.watch_clock(1000, 50);
        ages.note(1000, 500);
        // 5 s later by the boot clock, 1005 s by the wall clock.
        ages.watch_clock(2005, 55);
        assert!(ages.moved);
        // The record written at 1000 is 5 s old, not 1005: too young.
        assert_eq!(ages.horizon(2005, Duration::from_secs(20), 64), 64);
        assert_eq!(ages.horizon(2030, Duration::from_secs(20), 64), 500);
        // Slow drift and steps back are not steps forward.
        let mut calm = Ages::new([]);
        calm.watch_clock(1000, 50);
        calm.watch_clock(1030, 60);
        calm.watch_clock(900, 70);
        assert!(!calm.moved);
    }

    #[test]
    fn old_marks_are_dropped_but_the_newest_of_them() {
        let mut ages = Ages::new([]);
        ages.set_grace(Duration::from_secs(10));
        for i in 0..1000u64 {
            ages.note(i, 100 + i);
        }
        assert!(ages.marks.len() <= 45, "{} marks kept", ages.marks.len());
        assert_eq!(ages.horizon(999, Duration::from_secs(10), 64), 1088);
        assert_eq!(ages.horizon(999, Duration::from_secs(40), 64), 1058);
    }
}
