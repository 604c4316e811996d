//! The control link's frames (`control::Frame`), as bytes and as a recipe.
//!
//! Odd first byte: the rest is a frame body for `Frame::decode`, and the
//! same bytes as a stream of length-prefixed frames for `control::read`.
//! Even: a recipe for a frame of any variant, with lists that may be longer
//! than `MAX_ITEMS` and texts that may pass `MAX_FRAME` (made by repeating a
//! piece, so a short input can describe a frame of megabytes).
//!
//! Checks: decoding never panics; a body that decodes re-encodes to exactly
//! its bytes; and the rule the storage node relies on: every frame the
//! encoder builds either decodes back to itself, or `fits()` refuses it
//! (so a frame the peer's reader would take as a broken link is never sent).
#![no_main]

use arbitrary::Unstructured;
use colony_fuzz::{interesting_u64, ready};
use control::{
    Answer, CacheUse, EnvStatus, Frame, Held, MAX_FRAME, MAX_ITEMS, Refusal, Request, Sleep, Spawn,
};
use libfuzzer_sys::fuzz_target;
use venti::Score;

/// A text: short and arbitrary, or a piece repeated up to past MAX_FRAME.
fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    // The costly shapes sit at the top of each range: an exhausted input
    // reads as zeros, and must stay cheap.
    Ok(match u.int_in_range(0..=31u8)? {
        31 => {
            let piece = ["x", "é", "\0", "ab\ncd", "🦀"][u.choose_index(5)?];
            // Lengths around the frame limit, in bytes.
            let target = [
                MAX_FRAME - 64,
                MAX_FRAME - 8,
                MAX_FRAME,
                MAX_FRAME + 1,
                MAX_FRAME + 100,
            ][u.choose_index(5)?];
            piece.repeat(target / piece.len())
        }
        30 => "y".repeat(u.int_in_range(0..=70000usize)?),
        _ => u.arbitrary()?,
    })
}

/// A list length: usually small, sometimes around MAX_ITEMS.
fn count(u: &mut Unstructured) -> arbitrary::Result<usize> {
    Ok(if u.int_in_range(0..=15u8)? == 15 {
        [MAX_ITEMS - 1, MAX_ITEMS, MAX_ITEMS + 1, 2 * MAX_ITEMS][u.choose_index(4)?]
    } else {
        u.int_in_range(0..=4usize)?
    })
}

fn score(u: &mut Unstructured) -> arbitrary::Result<Score> {
    Ok(Score(u.arbitrary()?))
}

/// A list of `count` items, the first few from the input and the rest copies.
fn list<T: Clone>(
    u: &mut Unstructured,
    mut item: impl FnMut(&mut Unstructured) -> arbitrary::Result<T>,
) -> arbitrary::Result<Vec<T>> {
    let n = count(u)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i < 4 {
            out.push(item(u)?);
        } else {
            out.push(out[i % 4].clone());
        }
    }
    Ok(out)
}

fn short(u: &mut Unstructured) -> arbitrary::Result<String> {
    // Items of long lists stay small, so a list of 8192 costs little; a
    // key-sized one makes a list of MAX_ITEMS pass MAX_FRAME.
    if u.int_in_range(0..=7u8)? == 7 {
        return Ok("k".repeat(u.int_in_range(200..=300usize)?));
    }
    let s: String = u.arbitrary()?;
    Ok(s.chars().take(16).collect())
}

fn request(u: &mut Unstructured) -> arbitrary::Result<Request> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Request::Spawn {
            spawn: Spawn {
                user: text(u)?,
                name: text(u)?,
                root: score(u)?,
                disk: u.arbitrary()?,
                options: list(u, short)?,
                // Empty is no key, as the wire has it.
                run_key: Some(text(u)?).filter(|k| !k.is_empty()),
            },
            keys: list(u, short)?,
            working_set: if u.arbitrary()? {
                Some(score(u)?)
            } else {
                None
            },
        },
        1 => Request::Save {
            user: text(u)?,
            env: text(u)?,
        },
        2 => Request::Invite {
            user: text(u)?,
            env: text(u)?,
            invitee: text(u)?,
        },
        3 => Request::Boom {
            user: text(u)?,
            env: text(u)?,
        },
        _ => Request::Status {
            user: text(u)?,
            envs: list(u, short)?,
        },
    })
}

fn frame(u: &mut Unstructured) -> arbitrary::Result<Frame> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Frame::Hello {
            version: u.arbitrary()?,
            node: text(u)?,
            slots: u.arbitrary()?,
            memory: interesting_u64(u)?,
            cache: interesting_u64(u)?,
            held: list(u, |u| {
                Ok(Held {
                    user: short(u)?,
                    name: short(u)?,
                    root: score(u)?,
                    login: short(u)?,
                })
            })?,
        },
        1 => Frame::Welcome {
            node: text(u)?,
            venti: text(u)?,
        },
        2 => Frame::Request {
            id: interesting_u64(u)?,
            deadline_ms: u.arbitrary()?,
            request: request(u)?,
        },
        3 => Frame::Reply {
            id: interesting_u64(u)?,
            result: match u.int_in_range(0..=4u8)? {
                0 => Ok(Answer::Spawned {
                    text: text(u)?,
                    login: text(u)?,
                    host_key: text(u)?,
                }),
                1 => Ok(Answer::Saved { root: score(u)? }),
                2 => Ok(Answer::Boomed {
                    was_running: u.arbitrary()?,
                }),
                3 => Ok(Answer::Status {
                    envs: (0..u.int_in_range(0..=3usize)?)
                        .map(|_| {
                            Ok(EnvStatus {
                                name: text(u)?,
                                spawned_from: text(u)?,
                                root: score(u)?,
                                cache_kind: text(u)?,
                                cache_bytes: interesting_u64(u)?,
                                changed_bytes: interesting_u64(u)?,
                                login: text(u)?,
                                uptime_secs: interesting_u64(u)?,
                                processes: interesting_u64(u)?,
                                network: text(u)?,
                                root_now: score(u)?,
                                note: if u.arbitrary()? { Some(text(u)?) } else { None },
                                sleep: match u.int_in_range(0..=2u8)? {
                                    0 => None,
                                    1 => Some(Sleep::Suspending),
                                    _ => Some(Sleep::Suspended {
                                        secs: interesting_u64(u)?,
                                    }),
                                },
                            })
                        })
                        .collect::<arbitrary::Result<_>>()?,
                }),
                _ => Err(Refusal {
                    message: text(u)?,
                    full: u.arbitrary()?,
                }),
            },
        },
        4 => Frame::Load {
            running: u.arbitrary()?,
            slots: u.arbitrary()?,
        },
        5 => Frame::Caches {
            envs: list(u, |u| {
                Ok(CacheUse {
                    user: short(u)?,
                    name: short(u)?,
                    used: interesting_u64(u)?,
                    capacity: interesting_u64(u)?,
                })
            })?,
        },
        6 => Frame::Ping {
            seq: interesting_u64(u)?,
        },
        7 => Frame::Pong {
            seq: interesting_u64(u)?,
        },
        8 => Frame::WorkingSet {
            root: score(u)?,
            list: score(u)?,
        },
        _ => Frame::Error { message: text(u)? },
    })
}

fn bytes(body: &[u8]) {
    if let Ok(f) = Frame::decode(body) {
        let again = f.encode();
        assert_eq!(
            &again[4..],
            body,
            "a decoded frame re-encodes to other bytes: {f:?}"
        );
        assert!(
            f.fits().is_ok() || body.len() > MAX_FRAME,
            "a frame that decoded does not fit"
        );
    }
    // The same bytes as a stream of frames, as a link reads them.
    let mut r = body;
    for _ in 0..64 {
        if ready(control::read(&mut r)).is_err() {
            break;
        }
    }
}

fn recipe(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let f = frame(&mut u)?;
    let encoded = f.encode();
    assert_eq!(
        u32::from_be_bytes(encoded[..4].try_into().unwrap()) as usize,
        encoded.len() - 4,
        "the length prefix counts the body"
    );
    let fits = f.fits();
    match Frame::decode(&encoded[4..]) {
        Ok(back) => {
            assert!(back == f, "a frame decoded to another frame");
            if fits.is_err() {
                // Refused only for its size.
                assert!(
                    encoded.len() - 4 > MAX_FRAME,
                    "fits() refused a frame that decodes: {fits:?}"
                );
            }
        }
        Err(e) => {
            assert!(
                fits.is_err(),
                "fits() accepts a frame that does not decode ({e})"
            );
        }
    }
    if fits.is_ok() {
        // What is sent is read back whole by the peer's reader.
        let mut r = &encoded[..];
        let got = ready(control::read(&mut r)).expect("a fitting frame reads back");
        assert!(got == f, "a fitting frame read back as another");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if first & 1 == 1 {
        bytes(rest);
    } else {
        let _ = recipe(rest);
    }
});
