//! The format decoders never panic, whatever bytes a store hands them.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn entry_root_and_dirent_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = vac::entry::Entry::unpack(&bytes);
        let _ = vac::root::Root::unpack(&bytes);
        let _ = vac::dirent::DirEntry::unpack(&bytes);
    }

    #[test]
    fn metablock_parsing_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), dsize in 0usize..4096) {
        // Make the magic right half the time so the deeper checks run.
        if bytes.len() >= 4 && bytes[0] % 2 == 0 {
            bytes[..4].copy_from_slice(&0x5656fc7au32.to_be_bytes());
        }
        if let Ok(mb) = vac::metablock::MetaBlock::parse(&bytes, dsize) {
            for i in 0..mb.len() {
                let _ = mb.entry(i);
            }
            let _ = mb.lookup("x");
        }
    }

    #[test]
    fn dirent_round_trips(elem in "[a-zA-Z0-9._-]{1,40}", entry in any::<u32>(), qid in any::<u64>(), mode in any::<u32>(), t in any::<u32>()) {
        let d = vac::dirent::DirEntry { elem, entry, mentry: entry.wrapping_add(1), qid, uid: "0".into(), gid: "0".into(), mid: "0".into(), mtime: t, atime: t, ctime: t, mode, ..Default::default() };
        prop_assert_eq!(vac::dirent::DirEntry::unpack(&d.pack()).unwrap(), d);
    }
}

/// Blocks of every depth and base type, each a run of scores picked from the
/// blocks before it (and the zero score), so a random entry has trees to walk.
fn random_store(picks: &[u8]) -> (venti::MemoryStore, Vec<venti::Score>) {
    use venti::{BlockStore, BlockType, Score};
    let store = venti::MemoryStore::new();
    let mut scores = vec![Score::ZERO];
    for level in 0..=7u8 {
        for base in [BlockType::DATA, BlockType::DIR] {
            let block: Vec<u8> = if level == 0 {
                picks.to_vec()
            } else {
                picks
                    .iter()
                    .flat_map(|p| scores[*p as usize % scores.len()].0)
                    .collect()
            };
            let ty = BlockType::at_depth(base, level).expect("depth ≤ 7");
            scores.push(store.write(ty, &block).expect("fits"));
        }
    }
    (store, scores)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any VtEntry over any such store: opening, finding stored leaves and
    /// reading never panic, and each call ends.
    #[test]
    fn stream_reader_over_random_blocks_never_panics(
        mut entry in proptest::collection::vec(any::<u8>(), 40),
        picks in proptest::collection::vec(any::<u8>(), 1..48),
        offset in any::<u64>(),
    ) {
        let (store, scores) = random_store(&picks);
        entry[20..40].copy_from_slice(&scores[picks[0] as usize % scores.len()].0);
        if picks[0] & 1 == 0 {
            entry[14..17].fill(0); // small sizes, so the depth check passes often
        }
        entry[8] |= 1; // active
        let Ok(e) = vac::entry::Entry::unpack(&entry) else { return Ok(()) };
        let Ok(mut r) = vac::stream::StreamReader::new(&store, e) else { return Ok(()) };
        let mut k = 0;
        for _ in 0..64 {
            match r.next_stored_leaf(k) {
                Ok(Some(j)) => {
                    prop_assert!(j >= k && j < r.leaf_count());
                    prop_assert_ne!(r.leaf_score(j).unwrap(), venti::Score::ZERO);
                    let _ = r.leaf(j);
                    k = j + 1;
                }
                _ => break,
            }
        }
        let mut buf = [0u8; 300];
        let _ = r.read_at(offset % (e.size + 1), &mut buf);
    }
}

/// A reader that hands out at most `step` bytes a call, as pipes and tar
/// bodies do.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The expected length only sizes the read buffer: too small, too
    /// large or zero, the stream archived is the same, whatever the reads'
    /// sizes.
    #[test]
    fn the_expected_length_never_changes_what_is_archived(
        len in 0usize..40_000,
        expected in prop_oneof![Just(0u64), 0u64..50_000, Just(u64::MAX)],
        step in 1usize..20_000,
        seed in any::<u8>(),
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let sizes = vac::BlockSizes { psize: 1024, dsize: 1024 };
        let store = venti::MemoryStore::new();
        let got = vac::walk::write_content(
            &store,
            sizes,
            &mut Trickle { data: &data, step },
            expected,
            &vac::walk::Quiet,
        )
        .unwrap()
        .unwrap();
        let want = vac::walk::write_content(&store, sizes, &mut &data[..], len as u64, &vac::walk::Quiet)
            .unwrap()
            .unwrap();
        prop_assert_eq!(got, want);
        prop_assert_eq!(got.size, len as u64);
    }
}
