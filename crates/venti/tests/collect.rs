//! Collecting a log store: the sweep turns dead records into skips and
//! gives their disk back; live blocks, readers of the log and a reopen
//! (clean or rebuilding the index) never notice but by what is gone.

use std::collections::HashSet;
use std::time::Duration;

use venti::reach::{Bloom, Marker};
use venti::{BlockStore, BlockType, LogStore, Score, SweepLimits};

fn block(i: u32, len: usize) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8 + 1; len];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b
}

/// 400 blocks of 8 KiB, in runs of 10: runs 0, 2, 4… live, the rest dead.
fn striped(store: &LogStore) -> (Vec<Score>, Vec<Score>) {
    let (mut live, mut dead) = (Vec::new(), Vec::new());
    for i in 0..400u32 {
        let s = store.write(BlockType::DATA, &block(i, 8192)).unwrap();
        if (i / 10) % 2 == 0 {
            live.push(s)
        } else {
            dead.push(s)
        }
    }
    store.sync().unwrap();
    (live, dead)
}

/// A sweep in the default batches, without progress.
fn sweep(
    store: &LogStore,
    horizon: u64,
    live: &dyn Fn(&Score, u8) -> bool,
) -> Result<venti::Collected, venti::StoreError> {
    store.sweep(horizon, live, SweepLimits::default(), &mut |_, _| {})
}

fn live_set(scores: &[Score]) -> impl Fn(&Score, u8) -> bool {
    let set: HashSet<Score> = scores.iter().copied().collect();
    move |s: &Score, _ty: u8| set.contains(s)
}

fn all_read(store: &LogStore, scores: &[Score]) -> bool {
    scores
        .iter()
        .all(|s| store.read(s, BlockType::DATA).unwrap().is_some())
}

fn none_read(store: &LogStore, scores: &[Score]) -> bool {
    scores
        .iter()
        .all(|s| store.read(s, BlockType::DATA).unwrap().is_none())
}

/// Invariants: every live block reads back, before and after a reopen
/// and after the index is rebuilt from the log; no dead block does; the
/// log reads in order with the dead passed over; the disk of the dead
/// runs is given back; a second sweep changes nothing.
#[test]
fn a_sweep_drops_the_dead_keeps_the_live_and_gives_the_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (live, dead) = striped(&store);
    let horizon = store.durable_end();
    let done = sweep(&store, horizon, &live_set(&live)).unwrap();
    assert_eq!(done.records, 400);
    assert_eq!(done.live, 200);
    assert_eq!(done.blocks_dropped, 200);
    assert_eq!(done.skips, 20, "one skip per dead run");
    assert!(!done.holes_unsupported);
    let freed = done.disk_before - done.disk_after;
    assert!(
        (20 * 9 * 8192..=200 * 8224).contains(&freed),
        "{freed} bytes given back for 200 dead blocks of 8 KiB: {done:?}"
    );
    assert!(all_read(&store, &live));
    assert!(none_read(&store, &dead));
    let (records, end) = store.read_log(LogStore::LOG_START, 1000, 64 << 20).unwrap();
    assert_eq!(end, store.durable_end());
    assert_eq!(
        records.iter().map(|r| r.score).collect::<Vec<_>>(),
        live,
        "the log reads the live records in order"
    );
    assert_eq!(store.count_records(LogStore::LOG_START).unwrap(), 200);

    let again = sweep(&store, store.durable_end(), &live_set(&live)).unwrap();
    assert_eq!((again.skips, again.blocks_dropped), (0, 0), "{again:?}");

    let dead_run = records[9].offset + 32 + 8192;
    // A peer's position that a skip now covers (the start of a record
    // that died): its reader goes on after the skip.
    let (after, _) = store.read_log(dead_run + 8224, 1000, 64 << 20).unwrap();
    assert_eq!(
        after.iter().map(|r| r.score).collect::<Vec<_>>(),
        live[10..],
        "a read from inside a skip goes on after it"
    );

    // A horizon that moved back into a skip: the sweep stops where the
    // skip starts, and changes nothing.
    let inside = sweep(&store, dead_run + 100, &live_set(&live)).unwrap();
    assert_eq!((inside.horizon, inside.skips), (dead_run, 0), "{inside:?}");

    // A dead block written again is a new block.
    let back = store.write(BlockType::DATA, &block(15, 8192)).unwrap();
    assert_eq!(back, dead[5]);
    assert!(store.read(&back, BlockType::DATA).unwrap().is_some());
    store.close().unwrap();

    let store = LogStore::open(dir.path()).unwrap();
    assert!(all_read(&store, &live));
    assert!(none_read(&store, &dead[..5]));
    store.close().unwrap();

    // An index lost and rebuilt from the log passes over the skips.
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().records_recovered, 201);
    assert!(all_read(&store, &live));
    assert!(none_read(&store, &dead[..5]));
    assert!(none_read(&store, &dead[6..]));
}

/// Small batches cut a long dead stretch into many skips: memory stays
/// bounded by the batch, and the result is the same.
#[test]
fn a_long_dead_stretch_is_swept_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (live, dead) = striped(&store);
    let mut seen = Vec::new();
    let done = store
        .sweep(
            store.durable_end(),
            &live_set(&live[..10]),
            SweepLimits {
                batch_blocks: 7,
                batch_runs: 2,
            },
            &mut |at, of| seen.push((at, of)),
        )
        .unwrap();
    assert_eq!(done.blocks_dropped, 390);
    assert!(done.skips >= 390 / 7, "{done:?}");
    assert!(all_read(&store, &live[..10]));
    assert!(none_read(&store, &live[10..]));
    assert!(none_read(&store, &dead));
    assert_eq!(seen.last(), Some(&(done.horizon, done.horizon)));
    let (records, _) = store.read_log(LogStore::LOG_START, 1000, 64 << 20).unwrap();
    assert_eq!(records.len(), 10);
}

/// Only records below the horizon are looked at: what was written after
/// it stays, live or not.
#[test]
fn nothing_at_or_past_the_horizon_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (live, dead) = striped(&store);
    let horizon = store.durable_end();
    let young: Vec<Score> = (1000..1100)
        .map(|i| store.write(BlockType::DATA, &block(i, 8192)).unwrap())
        .collect();
    store.sync().unwrap();
    sweep(&store, horizon, &live_set(&live)).unwrap();
    assert!(all_read(&store, &young));
    assert!(none_read(&store, &dead));
    // No marks are older than a day: a collection now sweeps nothing.
    assert_eq!(store.collection_horizon(), LogStore::LOG_START);
}

/// A block written again, or claimed by a peer, once it is older than
/// the grace period is copied to the end of the log, so a collection
/// keeps it; a young one is left where it is.
#[test]
fn an_old_block_touched_again_is_copied_forward_and_outlives_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    store.set_grace(Duration::from_secs(1));
    let old = store.write(BlockType::DATA, &block(1, 8192)).unwrap();
    let claimed = store.write(BlockType::DATA, &block(2, 8192)).unwrap();
    let filler: Vec<Score> = (10..30)
        .map(|i| store.write(BlockType::DATA, &block(i, 8192)).unwrap())
        .collect();
    store.sync().unwrap();
    // A mark covering them, then time for them to grow old.
    std::thread::sleep(Duration::from_millis(1100));
    store.write(BlockType::DATA, &block(99, 100)).unwrap();
    store.sync().unwrap();
    // Young (no mark covers it yet): written again, left alone.
    store.write(BlockType::DATA, &block(98, 100)).unwrap();
    store.flush().unwrap();
    let before = std::fs::metadata(store.log_path()).unwrap().len();
    store.write(BlockType::DATA, &block(98, 100)).unwrap();
    store.flush().unwrap();
    assert_eq!(std::fs::metadata(store.log_path()).unwrap().len(), before);
    std::thread::sleep(Duration::from_millis(2100));
    let horizon = store.collection_horizon();
    assert!(
        horizon > LogStore::LOG_START,
        "the old records lie below the horizon"
    );
    store.write(BlockType::DATA, &block(1, 8192)).unwrap();
    assert!(store.claim(&claimed, BlockType::DATA.to_wire()).unwrap());
    assert!(
        !store
            .claim(&Score::of(b"absent"), BlockType::DATA.to_wire())
            .unwrap()
    );
    store.sync().unwrap();
    // Everything live: the old records the copies replaced go all the
    // same, the blocks stay readable from their copies.
    let copies_read = || {
        assert_eq!(
            store.read(&old, BlockType::DATA).unwrap(),
            Some(block(1, 8192))
        );
        assert_eq!(
            store.read(&claimed, BlockType::DATA).unwrap(),
            Some(block(2, 8192))
        );
    };
    let done = sweep(&store, horizon, &|_, _| true).unwrap();
    assert_eq!(done.skips, 1, "{done:?}");
    assert_eq!(done.live, done.records - 2, "{done:?}");
    copies_read();
    // Nothing marked live: only the copies survive.
    sweep(&store, horizon, &|_, _| false).unwrap();
    copies_read();
    assert!(none_read(&store, &filler));
}

/// The marker and the sweep together: a root's whole tree is kept, a
/// stranger is not, within the memory the filter was given.
#[test]
fn what_a_root_reaches_is_kept_and_the_rest_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let leaves: Vec<Score> = (0..40)
        .map(|i| store.write(BlockType::DATA, &block(i, 8192)).unwrap())
        .collect();
    let strangers: Vec<Score> = (100..140)
        .map(|i| store.write(BlockType::DATA, &block(i, 8192)).unwrap())
        .collect();
    let pointers: Vec<u8> = leaves.iter().flat_map(|s| s.0).collect();
    let top = store
        .write(BlockType::at_depth(BlockType::DATA, 1).unwrap(), &pointers)
        .unwrap();
    store.sync().unwrap();
    let mut marker = Marker::new(&store, Bloom::new(100, 16, 1 << 20), 1 << 20);
    marker
        .mark(top, BlockType::at_depth(BlockType::DATA, 1).unwrap())
        .unwrap();
    let (bloom, marked) = marker.finish();
    assert_eq!(marked.blocks, 41);
    sweep(&store, store.durable_end(), &|s, _| bloom.contains(s)).unwrap();
    assert!(all_read(&store, &leaves));
    assert!(none_read(&store, &strangers));
}
