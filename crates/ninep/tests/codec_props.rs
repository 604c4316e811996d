//! The 9P codec never panics on arbitrary input and round-trips what it encodes.

use ninep::fcall::{Fcall, Qid, Stat};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), kind in 100u8..128) {
        if bytes.len() >= 7 {
            let n = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&n.to_le_bytes());
            bytes[4] = kind;
        }
        let _ = Fcall::decode(&bytes);
        let _ = Stat::decode(&bytes);
    }

    #[test]
    fn messages_round_trip(name in "[a-z.]{0,20}", fid in any::<u32>(), offset in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..100), tag in any::<u16>()) {
        let stat = Stat { qid: Qid { ty: 0x80, version: 1, path: offset }, mode: fid, name: name.clone(), uid: "0".into(), ..Default::default() };
        for f in [
            Fcall::Twalk { fid, newfid: fid ^ 1, wnames: vec![name.clone(); 3] },
            Fcall::Twrite { fid, offset, data: data.clone() },
            Fcall::Rread { data },
            Fcall::Twstat { fid, stat: stat.clone() },
            Fcall::Rstat { stat },
            Fcall::Tcreate { fid, name, perm: fid, mode: 2 },
        ] {
            prop_assert_eq!(Fcall::decode(&f.encode(tag)).unwrap(), (tag, f));
        }
    }
}
