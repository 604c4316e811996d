//! Venti wire messages (venti::message) and the connection layer
//! (venti::conn): decoding never panics; decode→encode→decode is the
//! identity (and byte-exact except for the one documented re-encoding, a
//! 4-byte Tread count that fits in 2); every message we can encode decodes
//! back; frames and version lines parse without panicking and agree with
//! their encoders.
#![no_main]

use arbitrary::Unstructured;
use colony_fuzz::ready;
use libfuzzer_sys::fuzz_target;
use venti::conn::{self, Version, WireError};
use venti::message::{DecodeError, MAX_STRING};
use venti::{Message, Score};

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

fn check_decoded(body: &[u8]) {
    match Message::decode(body) {
        Ok(m) => {
            assert_eq!(m.tag(), body[1], "tag of {m:?}");
            let out = encode(&m);
            let again = Message::decode(&out).expect("an encoded message decodes");
            assert_eq!(again, m, "decode(encode(m)) != m");
            let short_count =
                matches!(m, Message::Tread { count, .. } if count <= 0xffff) && body.len() == 28;
            // Pad bytes are ignored on decode (as libventi does) and written as zero.
            let mut want = body.to_vec();
            match m {
                Message::Twrite { .. } => want[3..6].fill(0),
                Message::Tread { .. } => want[23] = 0,
                _ => {}
            }
            if !short_count {
                assert_eq!(out, want, "re-encoding {m:?} changed the bytes");
            }
            check_framed(&m, &out);
        }
        Err(e) => {
            if let Some(tag) = e.tag() {
                assert_eq!(Some(&tag), body.get(1), "error {e:?} names the wrong tag");
            }
            if body.is_empty() {
                assert_eq!(e, DecodeError::Empty);
            }
        }
    }
}

/// A message framed in both versions reads back as the same body.
fn check_framed(m: &Message, body: &[u8]) {
    for v in [Version::V02, Version::V04] {
        let mut frame = Vec::new();
        match conn::encode_frame(&mut frame, v, m) {
            Ok(()) => {
                let mut r: &[u8] = &frame;
                let got = ready(conn::read_frame(&mut r, v)).expect("own frame reads back");
                assert_eq!(got.as_deref(), Some(body));
                assert!(r.is_empty());
            }
            Err(WireError::TooLarge(n)) => {
                assert!(frame.is_empty(), "a refused frame leaves nothing behind");
                assert_eq!(n, body.len());
                assert!(n > 0xffff || n > conn::MAX_BODY);
            }
            Err(e) => panic!("encode_frame: unexpected {e}"),
        }
    }
}

/// Messages built from the input: encoding then decoding gives them back
/// (strings cut at MAX_STRING on a character boundary, byte fields at 255).
fn check_encoded(u: &mut Unstructured) -> arbitrary::Result<()> {
    let tag: u8 = u.arbitrary()?;
    let s = |u: &mut Unstructured| -> arbitrary::Result<String> {
        if u.ratio(1, 8)? {
            // Long strings, to cross MAX_STRING.
            let c: char = u.arbitrary()?;
            let n = u.int_in_range(0..=1100usize)?;
            Ok(std::iter::repeat_n(c, n).collect())
        } else {
            u.arbitrary()
        }
    };
    let m = match u.int_in_range(0..=11u8)? {
        0 => Message::Rerror { tag, error: s(u)? },
        1 => Message::Tping { tag },
        2 => Message::Rping { tag },
        3 => Message::Thello {
            tag,
            version: s(u)?,
            uid: s(u)?,
            strength: u.arbitrary()?,
            crypto: u.arbitrary()?,
            codec: u.arbitrary()?,
        },
        4 => Message::Rhello {
            tag,
            sid: s(u)?,
            rcrypto: u.arbitrary()?,
            rcodec: u.arbitrary()?,
        },
        5 => Message::Tgoodbye { tag },
        6 => Message::Tread {
            tag,
            score: Score(u.arbitrary()?),
            wire_type: u.arbitrary()?,
            count: u.arbitrary()?,
        },
        7 => Message::Rread {
            tag,
            data: u.arbitrary()?,
        },
        8 => Message::Twrite {
            tag,
            wire_type: u.arbitrary()?,
            data: u.arbitrary()?,
        },
        9 => Message::Rwrite {
            tag,
            score: Score(u.arbitrary()?),
        },
        10 => Message::Tsync { tag },
        _ => Message::Rsync { tag },
    };
    let cut = |s: &String| {
        let mut end = s.len().min(MAX_STRING);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    let cut_bytes = |b: &Vec<u8>| b[..b.len().min(255)].to_vec();
    let expect = match &m {
        Message::Rerror { tag, error } => Message::Rerror {
            tag: *tag,
            error: cut(error),
        },
        Message::Thello {
            tag,
            version,
            uid,
            strength,
            crypto,
            codec,
        } => Message::Thello {
            tag: *tag,
            version: cut(version),
            uid: cut(uid),
            strength: *strength,
            crypto: cut_bytes(crypto),
            codec: cut_bytes(codec),
        },
        Message::Rhello {
            tag,
            sid,
            rcrypto,
            rcodec,
        } => Message::Rhello {
            tag: *tag,
            sid: cut(sid),
            rcrypto: *rcrypto,
            rcodec: *rcodec,
        },
        other => other.clone(),
    };
    let body = encode(&m);
    assert_eq!(
        Message::decode(&body).as_ref(),
        Ok(&expect),
        "encode→decode of {m:?}"
    );
    check_framed(&expect, &body);
    Ok(())
}

fn check_conn(data: &[u8]) {
    // The version line a peer sends.
    let mut r: &[u8] = data;
    match ready(conn::read_version_line(&mut r)) {
        Ok(line) => {
            assert!(line.starts_with("venti-"));
            assert!(line.len() < 1024);
            assert!(line.bytes().all(|b| (0x20..0x80).contains(&b)));
            match conn::negotiate(&line) {
                Ok(v) => assert!(line.contains(v.as_str())),
                Err(WireError::NoCommonVersion(l)) => assert_eq!(l, line),
                Err(e) => panic!("negotiate: unexpected {e}"),
            }
        }
        Err(WireError::Io(_) | WireError::BadVersionLine(_) | WireError::VersionTooLong) => {}
        Err(e) => panic!("read_version_line: unexpected {e}"),
    }
    // Negotiation over any text, and our own line for any comment.
    let text = String::from_utf8_lossy(data);
    let _ = conn::negotiate(&text);
    let comment: String = text
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .take(900)
        .collect();
    let ours = conn::version_line(&comment);
    let mut r: &[u8] = ours.as_bytes();
    let line = ready(conn::read_version_line(&mut r)).expect("our own version line reads back");
    assert_eq!(
        conn::negotiate(&line).expect("we speak our own versions"),
        Version::V04
    );

    // A stream of frames in either width.
    for v in [Version::V02, Version::V04] {
        let mut r: &[u8] = data;
        for _ in 0..64 {
            match ready(conn::read_frame(&mut r, v)) {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= conn::MAX_BODY);
                    check_decoded(&body);
                }
                Ok(None) => break,
                Err(WireError::TooLarge(_) | WireError::EmptyFrame | WireError::TruncatedFrame) => {
                    break;
                }
                Err(e) => panic!("read_frame: unexpected {e}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_decoded(data);
    check_conn(data);
    let _ = check_encoded(&mut Unstructured::new(data));
});
