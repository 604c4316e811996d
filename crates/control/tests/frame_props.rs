//! Control frames come from the network: decoding arbitrary bytes never
//! panics, and every frame decodes to itself.

use control::{Answer, CacheUse, EnvStatus, Frame, Held, Refusal, Request, Spawn};
use proptest::prelude::*;
use venti::Score;

fn score() -> impl Strategy<Value = Score> {
    any::<[u8; 20]>().prop_map(Score)
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(".{0,12}", 0..5)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            (".{0,8}", ".{0,8}", score(), any::<bool>()),
            texts(),
            texts(),
            proptest::option::of(".{1,40}"),
            proptest::option::of(score()),
        )
            .prop_map(
                |((user, name, root, disk), options, keys, run_key, working_set)| {
                    Request::Spawn {
                        spawn: Spawn {
                            user,
                            name,
                            root,
                            disk,
                            options,
                            run_key,
                        },
                        keys,
                        working_set,
                    }
                }
            ),
        (".{0,8}", ".{0,8}").prop_map(|(user, env)| Request::Save { user, env }),
        (".{0,8}", ".{0,8}", ".{0,8}").prop_map(|(user, env, invitee)| Request::Invite {
            user,
            env,
            invitee
        }),
        (".{0,8}", ".{0,8}").prop_map(|(user, env)| Request::Boom { user, env }),
        (".{0,8}", texts()).prop_map(|(user, envs)| Request::Status { user, envs }),
    ]
}

fn env_status() -> impl Strategy<Value = EnvStatus> {
    (
        (
            ".{0,8}",
            ".{0,8}",
            score(),
            ".{0,4}",
            any::<u64>(),
            any::<u64>(),
        ),
        (
            ".{0,16}",
            any::<u64>(),
            any::<u64>(),
            ".{0,16}",
            score(),
            proptest::option::of(".{0,8}"),
            proptest::option::of(prop_oneof![
                Just(control::Sleep::Suspending),
                any::<u64>().prop_map(|secs| control::Sleep::Suspended { secs }),
            ]),
        ),
    )
        .prop_map(
            |(
                (name, spawned_from, root, cache_kind, cache_bytes, changed_bytes),
                (login, uptime_secs, processes, network, root_now, note, sleep),
            )| EnvStatus {
                name,
                spawned_from,
                root,
                cache_kind,
                cache_bytes,
                changed_bytes,
                login,
                uptime_secs,
                processes,
                network,
                root_now,
                note,
                sleep,
            },
        )
}

fn answer() -> impl Strategy<Value = Result<Answer, Refusal>> {
    prop_oneof![
        (".{0,30}", ".{0,30}", ".{0,30}").prop_map(|(text, login, host_key)| Ok(Answer::Spawned {
            text,
            login,
            host_key
        })),
        score().prop_map(|root| Ok(Answer::Saved { root })),
        any::<bool>().prop_map(|was_running| Ok(Answer::Boomed { was_running })),
        proptest::collection::vec(env_status(), 0..4).prop_map(|envs| Ok(Answer::Status { envs })),
        (".{0,30}", any::<bool>()).prop_map(|(message, full)| Err(Refusal { message, full })),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u8>(),
            ".{0,10}",
            any::<u32>(),
            any::<(u64, u64)>(),
            prop::collection::vec((".{0,6}", ".{0,6}", score(), ".{0,20}"), 0..4)
        )
            .prop_map(
                |(version, node, slots, (memory, cache), held)| Frame::Hello {
                    version,
                    node,
                    slots,
                    memory,
                    cache,
                    held: held
                        .into_iter()
                        .map(|(user, name, root, login)| Held {
                            user,
                            name,
                            root,
                            login
                        })
                        .collect()
                }
            ),
        (".{0,10}", ".{0,20}").prop_map(|(node, venti)| Frame::Welcome { node, venti }),
        (any::<u64>(), any::<u32>(), request()).prop_map(|(id, deadline_ms, request)| {
            Frame::Request {
                id,
                deadline_ms,
                request,
            }
        }),
        (any::<u64>(), answer()).prop_map(|(id, result)| Frame::Reply { id, result }),
        (any::<u32>(), any::<u32>()).prop_map(|(running, slots)| Frame::Load { running, slots }),
        prop::collection::vec((".{0,6}", ".{0,6}", any::<(u64, u64)>()), 0..4).prop_map(|envs| {
            Frame::Caches {
                envs: envs
                    .into_iter()
                    .map(|(user, name, (used, capacity))| CacheUse {
                        user,
                        name,
                        used,
                        capacity,
                    })
                    .collect(),
            }
        }),
        (score(), score()).prop_map(|(root, list)| Frame::WorkingSet { root, list }),
        any::<u64>().prop_map(|seq| Frame::Ping { seq }),
        any::<u64>().prop_map(|seq| Frame::Pong { seq }),
        ".{0,30}".prop_map(|message| Frame::Error { message }),
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
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Frame::decode(&bytes);
    }

    #[test]
    fn a_cut_or_altered_frame_is_an_error_not_a_panic(f in frame(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let bytes = f.encode();
        let body = &bytes[4..];
        let n = cut.index(body.len());
        if n < body.len() {
            prop_assert!(Frame::decode(&body[..n]).is_err());
        }
        let mut altered = body.to_vec();
        let i = flip.0.index(altered.len());
        altered[i] ^= flip.1;
        // Whatever decodes has one form: it encodes back to the same bytes.
        if let Ok(again) = Frame::decode(&altered) {
            prop_assert_eq!(&again.encode()[4..], &altered[..], "{:?}", again);
        }
    }
}

#[test]
fn a_forged_count_does_not_allocate() {
    // A Hello claiming 4096 environments in a few bytes.
    let mut body = vec![1u8, 1, 0, 0, 0, 1, b'c', 0, 0, 0, 1];
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&4096u32.to_be_bytes());
    let err = Frame::decode(&body).unwrap_err();
    assert!(err.to_string().contains("cannot fit"), "{err}");
}

/// What the encoder would build but the reader refuses (a list past
/// MAX_ITEMS, a frame past MAX_FRAME) is caught by `fits` before it is
/// sent: 4,097 spawn options once dropped a cpu node's link.
#[test]
fn frames_the_reader_would_refuse_do_not_fit() {
    let spawn = |options: Vec<String>, keys: Vec<String>| Frame::Request {
        id: 1,
        deadline_ms: 1000,
        request: Request::Spawn {
            spawn: Spawn {
                user: "alice".into(),
                name: "debian".into(),
                root: Score::of(b"root"),
                disk: false,
                options,
                run_key: None,
            },
            keys,
            working_set: None,
        },
    };
    assert!(spawn(vec!["pids=5".into(); 3], vec![]).fits().is_ok());
    let err = spawn(vec!["pids=5".into(); control::MAX_ITEMS + 1], vec![])
        .fits()
        .unwrap_err();
    assert!(err.contains("4097 items exceed"), "{err}");
    let err = spawn(vec![], vec!["k".repeat(control::MAX_FRAME)])
        .fits()
        .unwrap_err();
    assert!(err.contains("more than the"), "{err}");
}

/// A status whose sleep state is "awake" or "suspending" but carries
/// seconds, or whose absent note carries text, has a second form that
/// re-encodes differently: refused (found by the property above in CI).
#[test]
fn a_status_in_a_second_form_is_refused() {
    let status = EnvStatus {
        name: "e".into(),
        spawned_from: "e".into(),
        root: Score::of(b"r"),
        cache_kind: "ram".into(),
        cache_bytes: 1,
        changed_bytes: 0,
        login: "ssh".into(),
        uptime_secs: 0,
        processes: 0,
        network: "net".into(),
        root_now: Score::of(b"r"),
        note: None,
        sleep: None,
    };
    let reply = Frame::Reply {
        id: 0,
        result: Ok(Answer::Status { envs: vec![status] }),
    };
    let body = reply.encode()[4..].to_vec();
    assert_eq!(Frame::decode(&body).unwrap(), reply);
    // The last 9 bytes: the sleep tag, then its seconds.
    let mut awake_with_secs = body.clone();
    let at = awake_with_secs.len() - 1;
    awake_with_secs[at] = 1;
    let err = Frame::decode(&awake_with_secs).unwrap_err();
    assert!(
        err.to_string().contains("sleep state 0 with 1 seconds"),
        "{err}"
    );
    let mut suspending_with_secs = awake_with_secs.clone();
    suspending_with_secs[at - 8] = 1;
    assert!(Frame::decode(&suspending_with_secs).is_err());
    // The note: its flag, then its text (empty: a 4-byte length of 0).
    let mut note_text = body[..body.len() - 9 - 4].to_vec();
    note_text.extend_from_slice(&1u32.to_be_bytes());
    note_text.push(b'x');
    note_text.extend_from_slice(&body[body.len() - 9..]);
    let err = Frame::decode(&note_text).unwrap_err();
    assert!(err.to_string().contains("absent but has text"), "{err}");
}
