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
