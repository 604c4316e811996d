//! The replication frames are parsed from the network: decoding arbitrary
//! bytes never panics, and every frame decodes to itself.

use proptest::prelude::*;
use replica::frame::{Frame, WireBlock};
use venti::Score;

fn score() -> impl Strategy<Value = Score> {
    any::<[u8; 20]>().prop_map(Score)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), ".{0,20}", any::<u8>()).prop_map(|(version, node, flags)| Frame::Hello {
            version,
            node,
            flags
        }),
        (any::<u64>(), any::<u8>(), score()).prop_map(|(seq, wire_type, score)| Frame::Fetch {
            seq,
            wire_type,
            score
        }),
        (
            any::<u64>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..300))
        )
            .prop_map(|(seq, data)| Frame::Block { seq, data }),
        (
            any::<u64>(),
            prop::collection::vec((any::<u8>(), score()), 0..40)
        )
            .prop_map(|(seq, blocks)| Frame::Offer { seq, blocks }),
        (any::<u64>(), prop::collection::vec(any::<bool>(), 0..70))
            .prop_map(|(seq, want)| Frame::Need { seq, want }),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(
                (
                    any::<u8>(),
                    score(),
                    prop::collection::vec(any::<u8>(), 0..300)
                ),
                0..8
            )
        )
            .prop_map(|(seq, upto, b)| Frame::Blocks {
                seq,
                upto,
                blocks: b
                    .into_iter()
                    .map(|(wire_type, score, data)| WireBlock {
                        wire_type,
                        score,
                        data
                    })
                    .collect()
            }),
        any::<u64>().prop_map(|seq| Frame::Stored { seq }),
        (any::<u64>(), ".{0,60}").prop_map(|(seq, text)| Frame::Names { seq, text }),
        (any::<u64>(), ".{0,60}").prop_map(|(seq, text)| Frame::Users { seq, text }),
        any::<u64>().prop_map(|seq| Frame::Applied { seq }),
        any::<u64>().prop_map(|seq| Frame::Ping { seq }),
        any::<u64>().prop_map(|seq| Frame::Pong { seq }),
        Just(Frame::StatusRequest),
        ".{0,60}".prop_map(|text| Frame::Status { text }),
        ".{0,60}".prop_map(|message| Frame::Error { message }),
        (any::<u64>(), ".{0,20}", ".{0,60}").prop_map(|(seq, user, line)| Frame::Ask {
            seq,
            user,
            line
        }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            ".{0,60}",
            any::<u32>()
        )
            .prop_map(|(seq, out, err, status)| Frame::Told {
                seq,
                out,
                err,
                status
            }),
    ]
}

proptest! {
    #[test]
    fn every_frame_decodes_to_itself(f in frame()) {
        let bytes = f.encode();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, bytes.len() - 4);
        prop_assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
    }

    #[test]
    fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Frame::decode(&body);
    }

    #[test]
    fn a_cut_or_extended_frame_is_an_error_not_a_panic(f in frame(), cut in any::<prop::sample::Index>(), extra in 1u8..=255) {
        let bytes = f.encode();
        let body = &bytes[4..];
        let at = cut.index(body.len());
        if at < body.len() {
            // Some cuts of variable-length frames still parse (an empty
            // text); what matters is that none panics and none reads past.
            let _ = Frame::decode(&body[..at]);
        }
        let mut longer = body.to_vec();
        longer.push(extra);
        prop_assert!(Frame::decode(&longer).is_err());
    }
}

#[test]
fn a_forged_count_is_refused_before_allocating() {
    // An Offer that claims 60,000 blocks in a 17-byte body.
    let mut body = vec![2u8];
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&60_000u32.to_be_bytes());
    let err = Frame::decode(&body).unwrap_err();
    assert!(err.to_string().contains("cannot fit"), "{err}");
    let mut big = vec![4u8];
    big.extend_from_slice(&1u64.to_be_bytes());
    big.extend_from_slice(&0u64.to_be_bytes());
    big.extend_from_slice(&1u32.to_be_bytes());
    big.push(0);
    big.extend_from_slice(&[0u8; 20]);
    big.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let err = Frame::decode(&big).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}
