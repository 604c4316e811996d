//! Property tests: the message codec never panics on arbitrary input, and
//! everything it encodes decodes back to the same message.

use proptest::prelude::*;
use venti::{Message, Score};

fn score() -> impl Strategy<Value = Score> {
    any::<[u8; 20]>().prop_map(Score)
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), text()).prop_map(|(tag, error)| Message::Rerror { tag, error }),
        any::<u8>().prop_map(|tag| Message::Tping { tag }),
        any::<u8>().prop_map(|tag| Message::Rping { tag }),
        (
            any::<u8>(),
            text(),
            text(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..4),
            proptest::collection::vec(any::<u8>(), 0..4)
        )
            .prop_map(
                |(tag, version, uid, strength, crypto, codec)| Message::Thello {
                    tag,
                    version,
                    uid,
                    strength,
                    crypto,
                    codec
                }
            ),
        (any::<u8>(), text(), any::<u8>(), any::<u8>()).prop_map(|(tag, sid, rcrypto, rcodec)| {
            Message::Rhello {
                tag,
                sid,
                rcrypto,
                rcodec,
            }
        }),
        any::<u8>().prop_map(|tag| Message::Tgoodbye { tag }),
        (any::<u8>(), score(), any::<u8>(), any::<u32>()).prop_map(
            |(tag, score, wire_type, count)| Message::Tread {
                tag,
                score,
                wire_type,
                count
            }
        ),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(tag, data)| Message::Rread { tag, data }),
        (
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(tag, wire_type, data)| Message::Twrite {
                tag,
                wire_type,
                data
            }),
        (any::<u8>(), score()).prop_map(|(tag, score)| Message::Rwrite { tag, score }),
        any::<u8>().prop_map(|tag| Message::Tsync { tag }),
        any::<u8>().prop_map(|tag| Message::Rsync { tag }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn decoding_mutated_valid_messages_never_panics(m in message(), flip in any::<(usize, u8)>(), cut in any::<usize>()) {
        let mut bytes = Vec::new();
        m.encode(&mut bytes);
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        let _ = Message::decode(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let mut bytes = Vec::new();
        m.encode(&mut bytes);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), v04 in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let version = if v04 { venti::conn::Version::V04 } else { venti::conn::Version::V02 };
            let mut r: &[u8] = &bytes;
            while let Ok(Some(body)) = venti::conn::read_frame(&mut r, version).await {
                let _ = Message::decode(&body);
            }
            let mut r: &[u8] = &bytes;
            let _ = venti::conn::read_version_line(&mut r).await;
        });
    }
}
