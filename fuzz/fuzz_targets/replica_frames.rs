//! The replication protocol's frames (`replica::frame`), as a keeper reads
//! them from a pusher and as a node reads a status client's first frame.
//!
//! The input is a limit selector and then a byte stream of length-prefixed
//! frames, read with `frame::read` (the storage peer's limit, `MAX_FRAME`)
//! or `frame::read_at_most` (`MAX_STATUS_REQUEST`, or a small limit from
//! the input) until the stream ends or a frame is refused. Half the time the
//! stream is first rewritten from a recipe: frames of every kind encoded
//! with `Frame::encode`, with announced lengths that may lie.
//!
//! Checks: reading never panics; a frame whose announced length exceeds the
//! limit is refused, whatever follows it; every frame read back re-encodes
//! to exactly the bytes it came from, and decode→encode→decode is the
//! identity; a recipe frame within the limit reads back as itself.
//!
//! A quarter of the inputs (first byte ≡ 0 mod 4) drive a real keeper
//! instead: `replica::keep::keep` (made `pub` for this) over an in-memory
//! duplex stream, with a `Replicator` on a `venti::LogStore` in a scratch
//! directory (one per process, so blocks accumulate across inputs) and a
//! catalog that takes any names but those containing `refuse`. The pusher
//! follows a script: honest rounds (Offer; Blocks of exactly what the Need
//! asked for; Stored), rounds that cheat (a block that does not hash to its
//! score, a wrong batch number, a block not asked for, one left out),
//! Ping, Names, Users and Fetch; then, optionally, frames from the recipe
//! above in any order; then it hangs up. Checks: no panic; the keeper ends
//! within 10 s of the hang-up; every reply decodes and is one a keeper may
//! send; each Need answers its Offer, one flag per block, never asking for
//! a block the store holds or for one twice; after Stored every block sent
//! is in the store with its bytes; Ping gets Pong, Names and Users get
//! Applied, a Fetch of a stored block gets its bytes, all with the same seq;
//! and a cheating round ends the session with an error, never a Stored.
#![no_main]

use arbitrary::Unstructured;
use colony_fuzz::{interesting_u64, ready};
use libfuzzer_sys::fuzz_target;
use replica::frame::{self, Frame, MAX_FRAME, MAX_OFFER, MAX_STATUS_REQUEST, WireBlock};
use venti::Score;

fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    // Costly shapes only for a 15 (an exhausted input reads as zeros).
    Ok(if u.int_in_range(0..=15u8)? == 15 {
        "scorename=x\n".repeat(u.int_in_range(0..=20000usize)?)
    } else {
        u.arbitrary()?
    })
}

fn count(u: &mut Unstructured, small: usize) -> arbitrary::Result<usize> {
    Ok(if u.int_in_range(0..=15u8)? == 15 {
        [MAX_OFFER - 1, MAX_OFFER, MAX_OFFER + 1][u.choose_index(3)?]
    } else {
        u.int_in_range(0..=small)?
    })
}

fn block_data(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let mut d: Vec<u8> = u.arbitrary()?;
    if u.int_in_range(0..=15u8)? == 15 {
        // Around venti's largest block.
        let n = venti::MAX_BLOCK_SIZE - 2 + u.int_in_range(0..=4usize)?;
        d.resize(n, 7);
    }
    Ok(d)
}

pub(crate) fn recipe_frame(u: &mut Unstructured) -> arbitrary::Result<Frame> {
    let seq = interesting_u64(u)?;
    Ok(match u.int_in_range(0..=14u8)? {
        0 => Frame::Hello {
            version: u.arbitrary()?,
            node: text(u)?,
            flags: u.arbitrary()?,
        },
        1 => {
            let n = count(u, 5)?;
            let first: (u8, [u8; 20]) = u.arbitrary()?;
            Frame::Offer {
                seq,
                blocks: (0..n)
                    .map(|i| (first.0, Score::of(&[first.1[0], i as u8, (i >> 8) as u8])))
                    .collect(),
            }
        }
        2 => {
            let n = count(u, 40)?;
            let bits: u64 = u.arbitrary()?;
            Frame::Need {
                seq,
                want: (0..n).map(|i| bits >> (i % 64) & 1 == 1).collect(),
            }
        }
        3 => {
            let n = u.int_in_range(0..=3usize)?;
            let mut blocks = Vec::new();
            for _ in 0..n {
                let data = block_data(u)?;
                blocks.push(WireBlock {
                    wire_type: u.arbitrary()?,
                    score: if u.arbitrary()? {
                        Score::of(&data)
                    } else {
                        Score(u.arbitrary()?)
                    },
                    data,
                });
            }
            Frame::Blocks {
                seq,
                upto: interesting_u64(u)?,
                blocks,
            }
        }
        4 => Frame::Stored { seq },
        5 => Frame::Names {
            seq,
            text: text(u)?,
        },
        6 => Frame::Users {
            seq,
            text: text(u)?,
        },
        7 => Frame::Applied { seq },
        8 => Frame::Ping { seq },
        9 => Frame::Pong { seq },
        10 => Frame::Fetch {
            seq,
            wire_type: u.arbitrary()?,
            score: Score(u.arbitrary()?),
        },
        11 => Frame::Block {
            seq,
            data: if u.arbitrary()? {
                Some(block_data(u)?)
            } else {
                None
            },
        },
        12 => Frame::StatusRequest,
        13 => Frame::Status { text: text(u)? },
        _ => Frame::Error { message: text(u)? },
    })
}

/// A stream of recipe frames; some with a lying length prefix. Returns the
/// stream and, per frame, what the reader must make of it (the frame when
/// its prefix is true).
fn recipe_stream(u: &mut Unstructured) -> arbitrary::Result<(Vec<u8>, Vec<Option<Frame>>)> {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    let n = u.int_in_range(1..=6usize)?;
    for _ in 0..n {
        let f = recipe_frame(u)?;
        let mut bytes = f.encode();
        if u.int_in_range(0..=7u8)? == 7 {
            let lie = match u.int_in_range(0..=3u8)? {
                0 => u32::MAX,
                1 => MAX_FRAME as u32 + 1,
                2 => 0,
                _ => u.arbitrary()?,
            };
            bytes[..4].copy_from_slice(&lie.to_be_bytes());
            out.extend_from_slice(&bytes);
            frames.push(None);
            break;
        }
        out.extend_from_slice(&bytes);
        frames.push(Some(f));
    }
    Ok((out, frames))
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let limit = match u.int_in_range(0..=3u8)? {
        0 | 1 => MAX_FRAME,
        2 => MAX_STATUS_REQUEST,
        _ => u.int_in_range(1..=64usize)?,
    };
    let (stream, expected) = if u.arbitrary()? {
        let (s, e) = recipe_stream(&mut u)?;
        (s, Some(e))
    } else {
        (u.take_rest().to_vec(), None)
    };
    let mut r = &stream[..];
    let mut i = 0;
    loop {
        let before = r;
        let announced = (before.len() >= 4)
            .then(|| u32::from_be_bytes(before[..4].try_into().unwrap()) as usize);
        let got = if limit == MAX_FRAME {
            ready(frame::read(&mut r))
        } else {
            ready(frame::read_at_most(&mut r, limit))
        };
        let Some(announced) = announced else {
            assert!(got.is_err(), "a frame read from fewer than 4 bytes");
            break;
        };
        match got {
            Ok(f) => {
                assert!(
                    (1..=limit).contains(&announced),
                    "a frame of {announced} bytes read with the limit {limit}"
                );
                let body = &before[4..4 + announced];
                let again = f.encode();
                assert_eq!(&again[4..], body, "frame {f:?} re-encodes to other bytes");
                let back = Frame::decode(&again[4..]).expect("a re-encoded frame decodes");
                assert_eq!(back, f, "decode→encode→decode changed the frame");
                if let Some(Some(Some(want))) = expected.as_ref().map(|e| e.get(i)) {
                    assert_eq!(&f, want, "a recipe frame read back as another");
                }
            }
            Err(_) => {
                // Refused: too long for the limit, or not a frame. A recipe
                // frame with a true prefix within the limit must not be.
                if let Some(Some(Some(want))) = expected.as_ref().map(|e| e.get(i)) {
                    let len = want.encode().len() - 4;
                    assert!(
                        len > limit || len > MAX_FRAME || decodes_not(want),
                        "recipe frame {} of {len} bytes refused with limit {limit}",
                        want.kind()
                    );
                }
                break;
            }
        }
        i += 1;
    }
    Ok(())
}

/// Frames the encoder builds that the decoder refuses by design (lists
/// beyond MAX_OFFER, blocks beyond MAX_BLOCK_SIZE).
fn decodes_not(f: &Frame) -> bool {
    Frame::decode(&f.encode()[4..]).is_err()
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&first, rest)) if first % 4 == 0 => {
            let _ = session::run(rest);
        }
        _ => {
            let _ = run(data.get(1..).unwrap_or(&[]));
        }
    }
});

/// A keeper's session, driven by a scripted pusher.
mod session {
    use std::path::PathBuf;
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use arbitrary::Unstructured;
    use replica::frame::{self, Frame, WireBlock};
    use replica::{Catalog, Replicator};
    use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
    use venti::{BlockStore, BlockType, LogStore, Score};

    use super::recipe_frame;

    /// Takes any names and users, but refuses names containing `refuse`.
    struct Names;

    impl Catalog for Names {
        fn names_since(&self, from: u64, _: u64, _: bool) -> Result<(String, u64), String> {
            Ok((String::new(), from))
        }
        fn names_count(&self) -> Result<u64, String> {
            Ok(0)
        }
        fn merge_names(&self, text: &str, _peer: &str) -> Result<(), String> {
            if text.contains("refuse") {
                return Err("fuzz: refused names".into());
            }
            Ok(())
        }
        fn blocks_arrived(&self, _peer: &str, _upto: u64) -> Result<(), String> {
            Ok(())
        }
        fn users_text(&self) -> Result<String, String> {
            Ok(String::new())
        }
        fn merge_users(&self, _text: &str) -> Result<(), String> {
            Ok(())
        }
    }

    fn dir() -> &'static PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("colony-fuzz-replica-")
                .tempdir()
                .expect("tempdir")
                .keep()
        })
    }

    fn store() -> &'static Arc<LogStore> {
        static STORE: OnceLock<Arc<LogStore>> = OnceLock::new();
        STORE.get_or_init(|| Arc::new(LogStore::open(dir().join("store")).expect("a log store")))
    }

    /// The keeper's replicator, with or without reading through; made once
    /// (its `changes` sender is kept alive by being forgotten, which leaks
    /// nothing per input).
    fn replicator(read_through: bool) -> Arc<Replicator> {
        static REPS: OnceLock<[Arc<Replicator>; 2]> = OnceLock::new();
        let make = |read_through| {
            let (tx, changes) = tokio::sync::watch::channel(0u64);
            std::mem::forget(tx);
            Arc::new(Replicator {
                node: "keeper".into(),
                store: store().clone(),
                catalog: Arc::new(Names),
                link: None,
                dir: dir().join("replica"),
                changes,
                board: Default::default(),
                peers: Vec::new(),
                batch_records: replica::BATCH_RECORDS,
                batch_bytes: replica::BATCH_BYTES,
                read_through,
                catch_up: Duration::from_secs(1),
                more_status: None,
desk: Default::default(),
            })
        };
        REPS.get_or_init(|| [make(false), make(true)])[read_through as usize].clone()
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        })
    }

    /// How a round cheats.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Cheat {
        None,
        BadHash,
        WrongSeq,
        Unasked,
        LeftOut,
    }

    #[derive(Debug)]
    enum Step {
        /// Offer these blocks of the pool (indexes, repeats allowed).
        Round(Vec<usize>, Cheat),
        Ping,
        Names(String),
        Users(String),
        /// Fetch a block of the pool, or a score nobody stored.
        Fetch(Option<usize>),
    }

    fn step(u: &mut Unstructured, pool: usize) -> arbitrary::Result<Step> {
        Ok(match u.int_in_range(0..=9u8)? {
            0..=4 => {
                let n = u.int_in_range(0..=6usize)?;
                let blocks = (0..n)
                    .map(|_| u.choose_index(pool))
                    .collect::<Result<_, _>>()?;
                let cheat = if u.ratio(1, 6)? {
                    [
                        Cheat::BadHash,
                        Cheat::WrongSeq,
                        Cheat::Unasked,
                        Cheat::LeftOut,
                    ][u.choose_index(4)?]
                } else {
                    Cheat::None
                };
                Step::Round(blocks, cheat)
            }
            5 => Step::Ping,
            6 => Step::Names(
                ["scorename=a root=00 user=x\n", "refuse\n", "", "garbage"][u.choose_index(4)?]
                    .to_string(),
            ),
            7 => Step::Users(u.arbitrary()?),
            _ => Step::Fetch(if u.arbitrary()? {
                Some(u.choose_index(pool)?)
            } else {
                None
            }),
        })
    }

    type Pr = ReadHalf<tokio::io::DuplexStream>;
    type Pw = WriteHalf<tokio::io::DuplexStream>;

    /// Sends `f` and reads one reply; None when the keeper has gone.
    async fn ask(r: &mut Pr, w: &mut Pw, f: &Frame) -> Option<Frame> {
        frame::write(w, f).await.ok()?;
        reply(r).await
    }

    async fn reply(r: &mut Pr) -> Option<Frame> {
        match frame::read(r).await {
            Ok(f) => {
                assert!(
                    matches!(
                        f,
                        Frame::Need { .. }
                            | Frame::Stored { .. }
                            | Frame::Applied { .. }
                            | Frame::Pong { .. }
                            | Frame::Block { .. }
                    ),
                    "the keeper sent {}",
                    f.kind()
                );
                Some(f)
            }
            Err(e) => {
                // Only an end of the stream, never a malformed frame.
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof,
                    "a keeper's reply did not read: {e}"
                );
                None
            }
        }
    }

    /// The pusher; returns whether a round cheated and whether the keeper
    /// went away before the script was done.
    async fn pusher(
        mut r: Pr,
        mut w: Pw,
        pool: Vec<(u8, Vec<u8>)>,
        steps: Vec<Step>,
        then: Vec<Frame>,
    ) -> (bool, bool) {
        let store = store();
        let has = |i: usize| store.has(&Score::of(&pool[i].1), pool[i].0).unwrap();
        let mut cheated = false;
        let mut seq = 0u64;
        for st in &steps {
            seq += 1;
            if colony_fuzz::trace() {
                eprintln!("pusher: {st:?}");
            }
            match st {
                Step::Round(blocks, cheat) => {
                    let offer: Vec<(u8, Score)> = blocks
                        .iter()
                        .map(|&i| (pool[i].0, Score::of(&pool[i].1)))
                        .collect();
                    let held: Vec<bool> = blocks.iter().map(|&i| has(i)).collect();
                    let Some(got) = ask(
                        &mut r,
                        &mut w,
                        &Frame::Offer {
                            seq,
                            blocks: offer.clone(),
                        },
                    )
                    .await
                    else {
                        return (cheated, true);
                    };
                    let Frame::Need { seq: s, want } = got else {
                        panic!("an Offer answered with {}", got.kind());
                    };
                    assert_eq!(s, seq, "a Need for another batch");
                    assert_eq!(want.len(), offer.len(), "a Need of another length");
                    let mut asked = std::collections::HashSet::new();
                    for (k, &wanted) in want.iter().enumerate() {
                        if wanted {
                            assert!(!held[k], "the keeper asked for a block it holds");
                            assert!(asked.insert(offer[k]), "the keeper asked for a block twice");
                        }
                    }
                    let mut send: Vec<WireBlock> = blocks
                        .iter()
                        .zip(&want)
                        .filter(|(_, w)| **w)
                        .map(|(&i, _)| WireBlock {
                            wire_type: pool[i].0,
                            score: Score::of(&pool[i].1),
                            data: pool[i].1.clone(),
                        })
                        .collect();
                    let mut batch = seq;
                    let cheats = match cheat {
                        Cheat::None => false,
                        Cheat::BadHash => match send.first_mut() {
                            Some(b) => {
                                b.data.push(1);
                                true
                            }
                            None => false,
                        },
                        Cheat::WrongSeq => {
                            batch = seq + 1;
                            true
                        }
                        Cheat::Unasked => {
                            let data = format!("never offered {seq}").into_bytes();
                            send.push(WireBlock {
                                wire_type: BlockType::DATA.to_wire(),
                                score: Score::of(&data),
                                data,
                            });
                            true
                        }
                        Cheat::LeftOut => send.pop().is_some(),
                    };
                    let f = Frame::Blocks {
                        seq: batch,
                        upto: seq * 1000,
                        blocks: send.clone(),
                    };
                    let Some(got) = ask(&mut r, &mut w, &f).await else {
                        assert!(cheats, "the keeper went away after an honest batch");
                        return (true, true);
                    };
                    assert!(!cheats, "a cheating batch was answered with {got:?}");
                    assert_eq!(got, Frame::Stored { seq }, "an honest batch not Stored");
                    for b in &send {
                        let ty = BlockType::from_wire(b.wire_type).unwrap();
                        let back = store.read(&b.score, ty).unwrap();
                        assert_eq!(
                            back.as_deref(),
                            Some(&b.data[..]),
                            "a stored block reads back otherwise"
                        );
                    }
                    cheated |= cheats;
                }
                Step::Ping => match ask(&mut r, &mut w, &Frame::Ping { seq }).await {
                    Some(f) => assert_eq!(f, Frame::Pong { seq }),
                    None => return (cheated, true),
                },
                Step::Names(text) => {
                    match ask(
                        &mut r,
                        &mut w,
                        &Frame::Names {
                            seq,
                            text: text.clone(),
                        },
                    )
                    .await
                    {
                        Some(f) => assert_eq!(f, Frame::Applied { seq }),
                        None => {
                            assert!(
                                text.contains("refuse"),
                                "the keeper went away on names {text:?}"
                            );
                            return (true, true);
                        }
                    }
                }
                Step::Users(text) => {
                    match ask(
                        &mut r,
                        &mut w,
                        &Frame::Users {
                            seq,
                            text: text.clone(),
                        },
                    )
                    .await
                    {
                        Some(f) => assert_eq!(f, Frame::Applied { seq }),
                        None => return (cheated, true),
                    }
                }
                Step::Fetch(which) => {
                    let (wire_type, score, known) = match which {
                        Some(i) => (pool[*i].0, Score::of(&pool[*i].1), has(*i).then_some(*i)),
                        None => (BlockType::DATA.to_wire(), Score([0x5a; 20]), None),
                    };
                    let f = Frame::Fetch {
                        seq,
                        wire_type,
                        score,
                    };
                    match ask(&mut r, &mut w, &f).await {
                        Some(Frame::Block { seq: s, data }) => {
                            assert_eq!(s, seq, "a Block for another fetch");
                            if let Some(i) = known {
                                assert_eq!(
                                    data.as_deref(),
                                    Some(&pool[i].1[..]),
                                    "a fetched block differs"
                                );
                            }
                        }
                        Some(other) => panic!("a Fetch answered with {}", other.kind()),
                        None => return (cheated, true),
                    }
                }
            }
        }
        // Then anything, in any order, without waiting.
        for f in &then {
            if frame::write(&mut w, f).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
        while reply(&mut r).await.is_some() {}
        (cheated || !then.is_empty(), false)
    }

    pub fn run(data: &[u8]) -> arbitrary::Result<()> {
        let mut u = Unstructured::new(data);
        let read_through: bool = u.arbitrary()?;
        let n = u.int_in_range(1..=6usize)?;
        let mut pool = Vec::new();
        for i in 0..n {
            let ty = [BlockType::DATA, BlockType::DIR][u.choose_index(2)?].to_wire();
            let mut b: Vec<u8> = u.arbitrary()?;
            b.truncate(300);
            // Distinct from run to run now and then, so the store also
            // gets blocks it lacks.
            if u.arbitrary()? {
                b.extend_from_slice(&(i as u32).to_be_bytes());
            }
            pool.push((ty, b));
        }
        let k = u.int_in_range(0..=8usize)?;
        let mut steps = Vec::new();
        for _ in 0..k {
            steps.push(step(&mut u, pool.len())?);
        }
        let mut then = Vec::new();
        // (An exhausted input reads as zeros: no frames then.)
        if u.int_in_range(0..=2u8)? == 2 {
            for _ in 0..u.int_in_range(1..=4usize)? {
                then.push(recipe_frame(&mut u)?);
            }
        }
        let rep = replicator(read_through);
        let (outcome, keep) = runtime().block_on(async {
            let (p, k) = tokio::io::duplex(1 << 16);
            let (pr, pw) = tokio::io::split(p);
            let (mut kr, mut kw) = tokio::io::split(k);
            let keeper = async {
                let result = replica::keep::keep(&rep, "pusher", &mut kr, &mut kw).await;
                // Hang up on the pusher, as the connection would.
                drop((kr, kw));
                result
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(pusher(pr, pw, pool, steps, then), keeper)
            })
            .await
            .expect("the keeper's session did not end within 10 s of the hang-up")
        });
        let (cheated, cut_short) = outcome;
        if colony_fuzz::trace() {
            eprintln!("keep: {keep:?}; cheated {cheated}, cut short {cut_short}");
        }
        if cut_short {
            assert!(
                keep.is_err(),
                "the keeper hung up but its session ended well"
            );
        } else if !cheated {
            assert!(keep.is_ok(), "an honest session ended with {keep:?}");
        }
        Ok(())
    }
}
