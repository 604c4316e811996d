//! A sequence of 9P2000 requests, decoded from the input, driven against
//! the hubs' 9P server (`hubfs::server::serve_conn`) over a loopback TCP
//! connection.
//!
//! The hub set is fresh for each input, with small limits (a 4 KiB buffer,
//! 8 hubs, 2000-byte writes, a 100 ms fear deadline) and three hubs made
//! beforehand: `a` (glenda's, 0666), `b` (other's, 0600) and one with the
//! longest name allowed. The requests: Tversion with any msize, Tattach as
//! several users (long names too), Twalk to hub names (long, non-ASCII,
//! `ctl`, `..`), Tcreate, Topen, Tread, Twrite (data, or ctl commands:
//! fear, freeze, trunc, eof, finish, …), Tclunk, Tstat, Twstat, Tremove,
//! Tflush of earlier tags, Tauth, R-messages sent as requests, and raw
//! frames; a Tversion is followed by a Tattach of fid 0, as a client does.
//! Every request has a tag of its own.
//!
//! Checks: no panic (the server runs on a thread of this process); every
//! reply decodes, is at most the msize agreed when its request was sent
//! (the last Rversion's), and comes under the tag of a request that has
//! not been answered yet; an Rerror's text is UTF-8; every request is
//! answered, except that reads and writes may wait (a hub read waits for
//! data, a write in fear mode for readers): such a request's reply may come
//! later or never, but the connection answers the requests after it; and
//! after the client hangs up the server ends within 5 s and the connection
//! closes within 5 s more (no read of it is left waiting).
#![no_main]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use colony_fuzz::interesting_u64;
use hubfs::hub::{HubSet, Limits};
use hubfs::server::MAX_MSIZE;
use libfuzzer_sys::fuzz_target;
use ninep::fcall::*;
use ninep::{Fcall, Stat};

/// The server's msize before any Tversion.
const FIRST_MSIZE: u32 = 8192 + IOHDRSZ;
/// How long a request that may wait is waited for.
const MAY_WAIT: Duration = Duration::from_millis(30);
/// How long any other request is waited for.
const MUST_ANSWER: Duration = Duration::from_secs(3);

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"))
}

fn long_hub() -> String {
    "h".repeat(255)
}

fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => u.arbitrary()?,
        1 => "h".repeat(u.int_in_range(250..=260usize)?),
        2 => "n".repeat(u.int_in_range(0..=20000usize)?),
        3 => "é".repeat(u.int_in_range(1..=200usize)?),
        // The hub with the longest name there is.
        4 | 5 => long_hub(),
        _ => [
            "a", "b", "c", "ctl", "..", ".", "", "new", "x.y-z_1", "日本", "a/b", "a b",
        ][u.choose_index(12)?]
        .to_string(),
    })
}

fn uname(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary()?,
        1 => "u".repeat(u.int_in_range(100..=3000usize)?),
        _ => ["glenda", "other", "none", "", "é"][u.choose_index(5)?].to_string(),
    })
}

const CTL: [&str; 14] = [
    "fear",
    "calm",
    "freeze",
    "melt",
    "trunc",
    "notrunc",
    "eof",
    "eof a",
    "eof b",
    "finish a",
    "unfinish a",
    "finish nosuch",
    "bogus",
    "eof a b",
];

struct Req {
    msg: Vec<u8>,
    what: String,
    /// A read or write, which may wait for long.
    may_wait: bool,
}

fn request(u: &mut Unstructured, tag: u16, tags_sent: u16) -> arbitrary::Result<Req> {
    let fid = |u: &mut Unstructured| -> arbitrary::Result<u32> {
        Ok(if u.ratio(1, 16)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=5u32)?
        })
    };
    let f = match u.int_in_range(0..=19u8)? {
        0 => Fcall::Tversion {
            msize: [
                0,
                100,
                256,
                300,
                1024,
                8216,
                MAX_MSIZE,
                MAX_MSIZE + 1,
                u32::MAX,
            ][u.choose_index(9)?],
            version: ["9P2000", "9P2000.u", "9P", ""][u.choose_index(4)?].into(),
        },
        1 => Fcall::Tattach {
            fid: fid(u)?,
            afid: NOFID,
            uname: uname(u)?,
            aname: "".into(),
        },
        2..=4 => {
            let n = if u.ratio(1, 16)? {
                u.int_in_range(0..=20usize)?
            } else {
                u.int_in_range(0..=2usize)?
            };
            Fcall::Twalk {
                fid: fid(u)?,
                newfid: fid(u)?,
                wnames: (0..n).map(|_| name(u)).collect::<Result<_, _>>()?,
            }
        }
        5 => Fcall::Tcreate {
            fid: fid(u)?,
            name: name(u)?,
            perm: [0o666, 0o600, 0o644, DMDIR | 0o777, 0o000, 0xffff_ffff][u.choose_index(6)?],
            mode: [OREAD, OWRITE, ORDWR, OEXEC, OTRUNC | OWRITE][u.choose_index(5)?],
        },
        6 | 7 => Fcall::Topen {
            fid: fid(u)?,
            mode: [OREAD, OWRITE, ORDWR, OEXEC, OWRITE | OTRUNC, u.arbitrary()?]
                [u.choose_index(6)?],
        },
        8..=10 => Fcall::Tread {
            fid: fid(u)?,
            offset: if u.arbitrary()? {
                u.int_in_range(0..=5000u64)?
            } else {
                interesting_u64(u)?
            },
            count: if u.ratio(1, 4)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=9000u32)?
            },
        },
        11..=13 => {
            let data = match u.int_in_range(0..=3u8)? {
                0 => {
                    let mut text = CTL[u.choose_index(CTL.len())?].to_string();
                    if u.arbitrary()? {
                        text.push('\n');
                        text.push_str(CTL[u.choose_index(CTL.len())?]);
                    }
                    text.into_bytes()
                }
                1 => vec![b'z'; u.int_in_range(0..=10000usize)?],
                _ => u.arbitrary()?,
            };
            Fcall::Twrite {
                fid: fid(u)?,
                offset: if u.arbitrary()? {
                    u.int_in_range(0..=5000u64)?
                } else {
                    interesting_u64(u)?
                },
                data,
            }
        }
        14 => Fcall::Tclunk { fid: fid(u)? },
        15 => Fcall::Tstat { fid: fid(u)? },
        16 => {
            let mut stat = Stat::dont_touch();
            if u.arbitrary()? {
                stat.length = [0, u64::MAX, 5][u.choose_index(3)?];
            }
            if u.ratio(1, 4)? {
                stat.name = name(u)?;
            }
            if u.arbitrary()? {
                Fcall::Twstat { fid: fid(u)?, stat }
            } else {
                Fcall::Tremove { fid: fid(u)? }
            }
        }
        17 => Fcall::Tflush {
            // Usually an earlier request's tag.
            oldtag: if u.ratio(1, 4)? || tags_sent == 0 {
                u.arbitrary()?
            } else {
                u.int_in_range(1..=tags_sent)?
            },
        },
        18 => match u.int_in_range(0..=2u8)? {
            0 => Fcall::Tauth {
                afid: fid(u)?,
                uname: uname(u)?,
                aname: "".into(),
            },
            // R-messages where a request belongs.
            1 => Fcall::Rread {
                data: vec![b'r'; u.int_in_range(0..=9000usize)?],
            },
            _ => Fcall::Rerror { ename: name(u)? },
        },
        _ => {
            // Any bytes, framed with the right size and our tag; sometimes
            // a size the server refuses.
            let mut raw: Vec<u8> = u.arbitrary()?;
            raw.truncate(300);
            let mut msg = ((raw.len() + 7) as u32).to_le_bytes().to_vec();
            msg.push(if raw.is_empty() { 116 } else { raw[0] });
            msg.extend_from_slice(&tag.to_le_bytes());
            msg.extend_from_slice(raw.get(1..).unwrap_or(&[]));
            let n = msg.len() as u32;
            msg[..4].copy_from_slice(&n.to_le_bytes());
            if u.ratio(1, 16)? {
                let bad = [0u32, 6, MAX_MSIZE + 1, u32::MAX][u.choose_index(4)?];
                msg[..4].copy_from_slice(&bad.to_le_bytes());
            }
            return Ok(Req {
                what: format!("raw {:02x?}", &msg[..msg.len().min(40)]),
                msg,
                may_wait: true,
            });
        }
    };
    let tag = if matches!(f, Fcall::Tversion { .. }) {
        NOTAG
    } else {
        tag
    };
    let may_wait = matches!(f, Fcall::Tread { .. } | Fcall::Twrite { .. });
    let what: String = format!("{f:?}").chars().take(200).collect();
    Ok(Req {
        msg: f.encode(tag),
        what,
        may_wait,
    })
}

/// Every whole message the server sends, as it comes.
fn reader(mut s: TcpStream, out: mpsc::Sender<Vec<u8>>) {
    loop {
        let mut size = [0u8; 4];
        if s.read_exact(&mut size).is_err() {
            return;
        }
        let n = u32::from_le_bytes(size) as usize;
        assert!(
            (7..=MAX_MSIZE as usize).contains(&n),
            "a reply of {n} bytes"
        );
        let mut msg = vec![0u8; n];
        msg[..4].copy_from_slice(&size);
        s.read_exact(&mut msg[4..])
            .expect("a whole reply after its size");
        if out.send(msg).is_err() {
            return;
        }
    }
}

/// The requests waiting for a reply: tag → (msize when sent, what it was).
struct Waiting {
    reqs: HashMap<u16, (u32, String)>,
    msize: u32,
}

impl Waiting {
    /// Checks one reply; returns its tag and whether it is an Rversion.
    fn take(&mut self, msg: &[u8]) -> u16 {
        let tag = u16::from_le_bytes([msg[5], msg[6]]);
        if msg[4] == 107 {
            // Rerror: its text must be UTF-8 (read here by hand, so a bad
            // text is named as such rather than as a decode failure).
            let n = u16::from_le_bytes([msg[7], msg[8]]) as usize;
            let text = msg.get(9..9 + n).expect("an Rerror's text within it");
            assert!(
                std::str::from_utf8(text).is_ok(),
                "an Rerror's text is not UTF-8: {text:02x?}"
            );
        }
        let (_, reply) = Fcall::decode(msg).expect("a reply that decodes");
        let Some((msize, what)) = self.reqs.remove(&tag) else {
            panic!(
                "a reply under tag {tag}, which no request is waiting for: {}",
                format!("{reply:?}").chars().take(200).collect::<String>()
            );
        };
        assert!(
            msg.len() as u32 <= msize,
            "a reply of {} bytes to {what}, beyond the msize {msize}: {}",
            msg.len(),
            format!("{reply:?}").chars().take(300).collect::<String>()
        );
        if let Fcall::Rversion { msize, .. } = reply {
            self.msize = msize;
        }
        tag
    }
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let hubs = Arc::new(HubSet::new(Limits {
        buffer: 4096,
        hubs: 8,
        write: 2000,
        fear_deadline: Duration::from_millis(100),
        name: 255,
    }));
    hubs.create("a", "glenda", 0o666).unwrap();
    hubs.create("b", "other", 0o600).unwrap();
    hubs.create(&long_hub(), "glenda", 0o644).unwrap();
    if u.arbitrary()? {
        hubs.write("a", b"some bytes already in a\n").unwrap();
    }

    let l = listener();
    let client = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (server_end, _) = l.accept().expect("accept");
    let server = {
        let hubs = hubs.clone();
        std::thread::spawn(move || {
            let _ = hubfs::server::serve_conn(server_end, hubs);
        })
    };
    let (tx, rx) = mpsc::channel();
    let replies = {
        let s = client.try_clone().unwrap();
        std::thread::spawn(move || reader(s, tx))
    };
    let mut client = client;

    let mut reqs = vec![Req {
        msg: Fcall::Tversion {
            msize: 8216,
            version: "9P2000".into(),
        }
        .encode(NOTAG),
        what: "the first Tversion".into(),
        may_wait: false,
    }];
    let attach = Fcall::Tattach {
        fid: 0,
        afid: NOFID,
        uname: ["glenda", "other", "none"][u.choose_index(3)?].into(),
        aname: String::new(),
    };
    reqs.push(Req {
        msg: attach.encode(1),
        what: "the first Tattach".into(),
        may_wait: false,
    });
    let n = u.int_in_range(0..=30usize)?;
    for i in 0..n {
        if u.is_empty() {
            break;
        }
        match request(&mut u, 2 + i as u16, 1 + i as u16) {
            Ok(r) => {
                let version = r.what.starts_with("Tversion");
                reqs.push(r);
                if version {
                    // A Tversion clunks every fid: attach again, as a client
                    // does, so what follows runs at the new msize.
                    let attach = Fcall::Tattach {
                        fid: 0,
                        afid: NOFID,
                        uname: ["glenda", "other"][u.choose_index(2)?].into(),
                        aname: String::new(),
                    };
                    reqs.push(Req {
                        what: format!("{attach:?}"),
                        msg: attach.encode(0x8000 + i as u16),
                        may_wait: false,
                    });
                }
            }
            Err(_) => break,
        }
    }

    let mut w = Waiting {
        reqs: HashMap::new(),
        msize: FIRST_MSIZE,
    };
    let mut hung_up = false;
    for r in &reqs {
        if colony_fuzz::trace() {
            eprintln!("-> {}", r.what);
        }
        let tag = u16::from_le_bytes([r.msg[5], r.msg[6]]);
        // A tag still waiting (a read) is not sent again: the server would
        // answer one of the two, and which is its business.
        if w.reqs.contains_key(&tag) {
            continue;
        }
        let size = u32::from_le_bytes(r.msg[..4].try_into().unwrap());
        let bad_size = !(7..=MAX_MSIZE.max(w.msize)).contains(&size);
        // A bad size is answered under NOTAG, then the server hangs up.
        let reply_tag = if bad_size { NOTAG } else { tag };
        if w.reqs.contains_key(&reply_tag) {
            continue;
        }
        w.reqs.insert(reply_tag, (w.msize.max(256), r.what.clone()));
        if client.write_all(&r.msg).is_err() {
            // The server has hung up (after a frame it could not take).
            break;
        }
        let deadline = Instant::now() + if r.may_wait { MAY_WAIT } else { MUST_ANSWER };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(msg) => {
                    if colony_fuzz::trace() {
                        eprintln!(
                            "<- {}",
                            format!("{:?}", Fcall::decode(&msg))
                                .chars()
                                .take(200)
                                .collect::<String>()
                        );
                    }
                    if w.take(&msg) == reply_tag {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(r.may_wait, "no reply within {MUST_ANSWER:?} to {}", r.what);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Only a frame the server cannot take ends the
                    // connection (answered under NOTAG first).
                    assert!(
                        bad_size || r.what.starts_with("raw"),
                        "the server hung up on {}",
                        r.what
                    );
                    hung_up = true;
                    break;
                }
            }
        }
        if hung_up || bad_size {
            break;
        }
    }

    // Hang up: the server must end (its waiting reads flushed) and close.
    let _ = client.shutdown(Shutdown::Write);
    let start = Instant::now();
    while !server.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server did not end within 5 s of the hang-up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    server.join().expect("the server thread");
    drop(client);
    // Late replies (reads that got data, writes that waited) still count.
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(msg) => {
                w.take(&msg);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the connection stayed open 5 s after the server ended")
            }
        }
    }
    replies.join().expect("the reply reader");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
