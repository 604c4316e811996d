//! Two storage nodes' replication in one process, over real mutual TLS on
//! loopback, through a proxy that counts the bytes on the wire.
//! Invariants: only blocks the keeper lacks travel (a block it has costs a
//! score); a name reaches the keeper only after every block before its
//! position is durable there; an idle link costs pings, not log scans;
//! the keeper refuses what is not what it asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use link::ca::{self, Validity};
use link::{Link, Role};
use replica::frame::{self, Frame, WireBlock};
use replica::{Catalog, Peer, Replicator};
use venti::{BlockStore, BlockType, LogStore, Score};

/// Names as `NAME ROOTHEX` lines with the log position they need.
struct TestCatalog {
    store: Arc<LogStore>,
    names: Mutex<Vec<(String, u64)>>,
    /// Every root a merge saw, and whether all blocks were there then.
    arrivals: Mutex<Vec<(String, bool)>>,
    expect_blocks: Mutex<Vec<Score>>,
}

impl TestCatalog {
    fn new(store: Arc<LogStore>) -> Arc<TestCatalog> {
        Arc::new(TestCatalog {
            store,
            names: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            expect_blocks: Mutex::new(Vec::new()),
        })
    }
}

impl Catalog for TestCatalog {
    fn names_since(&self, from: u64, upto: u64, _with_at: bool) -> Result<(String, u64), String> {
        let names = self.names.lock().unwrap();
        let mut text = String::new();
        let mut count = from;
        for (line, pos) in names.iter().skip(from as usize) {
            if *pos > upto {
                break;
            }
            text.push_str(line);
            text.push('\n');
            count += 1;
        }
        Ok((text, count))
    }
    fn names_count(&self) -> Result<u64, String> {
        Ok(self.names.lock().unwrap().len() as u64)
    }
    fn merge_names(&self, text: &str, _peer: &str) -> Result<(), String> {
        for line in text.lines() {
            let all_here = self
                .expect_blocks
                .lock()
                .unwrap()
                .iter()
                .all(|s| self.store.has(s, BlockType::DATA.to_wire()).unwrap());
            self.arrivals
                .lock()
                .unwrap()
                .push((line.to_string(), all_here));
            let end = self.store.durable_end();
            self.names.lock().unwrap().push((line.to_string(), end));
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

struct Grid {
    dir: tempfile::TempDir,
}

impl Grid {
    fn new() -> Grid {
        let dir = tempfile::tempdir().unwrap();
        ca::init(&dir.path().join("ca"), "test").unwrap();
        Grid { dir }
    }
    fn issue(&self, name: &str, role: Role) -> Arc<Link> {
        let out = self.dir.path().join(name);
        ca::issue(
            &self.dir.path().join("ca"),
            name,
            role,
            Validity::Days(3),
            &out,
        )
        .unwrap();
        Link::load(&out).unwrap()
    }
    fn node(&self, name: &str, peers: Vec<Peer>) -> (Arc<Replicator>, Arc<TestCatalog>) {
        let store =
            Arc::new(LogStore::open(self.dir.path().join(format!("{name}.store"))).unwrap());
        let catalog = TestCatalog::new(store.clone());
        let (_tx, changes) = tokio::sync::watch::channel(0u64);
        std::mem::forget(_tx);
        let rep = Arc::new(Replicator {
            node: name.into(),
            store,
            catalog: catalog.clone(),
            link: Some(self.issue(name, Role::Storage)),
            dir: self.dir.path().join(format!("{name}.replica")),
            changes,
            board: Default::default(),
            peers,
            batch_records: 64,
            batch_bytes: 256 << 10,
            catch_up: Duration::from_millis(200),
            more_status: None,
            desk: Default::default(),
            read_through: false,
        });
        (rep, catalog)
    }
}

/// A TCP proxy to `to` that counts the bytes the client sends.
async fn counting_proxy(to: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut sw).await;
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                let _ = tokio::join!(up, down);
            });
        }
    });
    (addr, sent)
}

fn block(i: u32) -> Vec<u8> {
    // Incompressible enough and distinct: a xorshift stream seeded by i.
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_new_blocks_travel_and_a_name_follows_its_blocks() {
    let grid = Grid::new();
    let (b, b_names) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (proxy, wire) = counting_proxy(listener.local_addr().unwrap()).await;
    tokio::spawn(replica::keep::serve(b.clone(), listener));
    let (a, a_names) = grid.node(
        "a",
        vec![Peer {
            name: "b".into(),
            address: format!("tls!127.0.0.1!{}", proxy.port()),
            plain_venti: false,
        }],
    );
    a.start().unwrap();

    // b already has 100 of the blocks a will write.
    for i in 0..100 {
        b.store.write(BlockType::DATA, &block(i)).unwrap();
    }
    b.store.sync().unwrap();
    let scores: Vec<Score> = (0..400)
        .map(|i| a.store.write(BlockType::DATA, &block(i)).unwrap())
        .collect();
    *b_names.expect_blocks.lock().unwrap() = scores.clone();
    a.store.sync().unwrap();
    a_names
        .names
        .lock()
        .unwrap()
        .push(("web".into(), a.store.durable_end()));
    wait_for("the name on b", || {
        !b_names.names.lock().unwrap().is_empty()
    })
    .await;

    for s in &scores {
        assert!(b.store.has(s, BlockType::DATA.to_wire()).unwrap());
    }
    let arrivals = b_names.arrivals.lock().unwrap().clone();
    assert_eq!(
        arrivals,
        vec![("web".to_string(), true)],
        "every block was there first"
    );
    let new_bytes = 300 * 8192u64;
    let on_wire = wire.load(Ordering::Relaxed);
    // TLS records, the handshake and frames: a few per cent at most.
    assert!(
        on_wire < new_bytes + new_bytes / 50 + 16_384,
        "{on_wire} bytes on the wire for {new_bytes} new"
    );
    assert!(on_wire > new_bytes, "the new blocks travelled");
    assert_eq!(b.store.count_records(LogStore::LOG_START).unwrap(), 400);

    // Idle: only pings.
    let before = wire.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let idle = wire.load(Ordering::Relaxed) - before;
    assert!(idle < 2_000, "{idle} bytes while idle");

    // Status says b is caught up.
    let status = a.status_text();
    assert!(status.contains("peer b at"), "{status}");
    assert!(
        status.contains("behind: 0 blocks (0 B), 0 names"),
        "{status}"
    );
    assert!(
        status.contains("sent 300 of 400 offered blocks"),
        "{status}"
    );
    let from_b = b.status_text();
    assert!(from_b.contains("from a:"), "{from_b}");

    // A new block moves at once, event-driven.
    let t = Instant::now();
    let s = a.store.write(BlockType::DATA, b"one more").unwrap();
    a.store.sync().unwrap();
    wait_for("the new block on b", || b.store.has(&s, 13).unwrap()).await;
    eprintln!("one block replicated in {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_refuses_what_it_did_not_ask_for_and_clients_may_only_ask_status() {
    let grid = Grid::new();
    let (b, _) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(replica::keep::serve(b.clone(), listener));

    let connect = |link: Arc<Link>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        link.connect(tcp, &[Role::Storage]).await.unwrap().0
    };
    // A storage node sending a block whose bytes do not match its score.
    let mut s = connect(grid.issue("a", Role::Storage)).await;
    frame::write(
        &mut s,
        &Frame::Hello {
            version: 1,
            node: "a".into(),
            flags: 0,
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        frame::read(&mut s).await.unwrap(),
        Frame::Hello { .. }
    ));
    let claimed = Score::of(b"real");
    frame::write(
        &mut s,
        &Frame::Offer {
            seq: 1,
            blocks: vec![(13, claimed)],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        frame::read(&mut s).await.unwrap(),
        Frame::Need {
            seq: 1,
            want: vec![true]
        }
    );
    frame::write(
        &mut s,
        &Frame::Blocks {
            seq: 1,
            upto: 0,
            blocks: vec![WireBlock {
                wire_type: 13,
                score: claimed,
                data: b"forged".to_vec(),
            }],
        },
    )
    .await
    .unwrap();
    match frame::read(&mut s).await.unwrap() {
        Frame::Error { message } => assert!(message.contains("does not hash"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!b.store.has(&claimed, 13).unwrap());

    // A block that was not offered.
    let mut s = connect(grid.issue("a2", Role::Storage)).await;
    frame::write(
        &mut s,
        &Frame::Hello {
            version: 1,
            node: "a2".into(),
            flags: 0,
        },
    )
    .await
    .unwrap();
    frame::read(&mut s).await.unwrap();
    frame::write(
        &mut s,
        &Frame::Blocks {
            seq: 0,
            upto: 0,
            blocks: vec![WireBlock {
                wire_type: 13,
                score: Score::of(b"x"),
                data: b"x".to_vec(),
            }],
        },
    )
    .await
    .unwrap();
    match frame::read(&mut s).await.unwrap() {
        Frame::Error { message } => assert!(message.contains("not asked for"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // An admin's client: status yes, pushing no.
    let admin = grid.issue("admin", Role::Client);
    let text = replica::fetch_status(&admin, &format!("tls!127.0.0.1!{}", addr.port()))
        .await
        .unwrap();
    assert!(text.starts_with("node b\n"), "{text}");
    let mut s = connect(admin).await;
    frame::write(
        &mut s,
        &Frame::Hello {
            version: 1,
            node: "admin".into(),
            flags: 0,
        },
    )
    .await
    .unwrap();
    match frame::read(&mut s).await.unwrap() {
        Frame::Error { message } => assert!(message.contains("only storage nodes"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_names_a_peer_that_is_not_who_it_should_be() {
    let grid = Grid::new();
    let (b, _) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(replica::keep::serve(b, listener));
    let (a, _) = grid.node(
        "a",
        vec![Peer {
            name: "c".into(),
            address: format!("tls!127.0.0.1!{port}"),
            plain_venti: false,
        }],
    );
    a.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = a.status_text();
        if status.contains("last error") && status.contains("is b, not the configured peer c") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy to `to` whose connections all drop when `cut` is bumped.
async fn cuttable_proxy(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<u32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, _) = tokio::sync::watch::channel(0u32);
    let cuts = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut cut = cuts.subscribe();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_through_fetches_checked_blocks_and_outlives_a_dropped_connection() {
    let grid = Grid::new();
    let (b, _) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (proxy, cut) = cuttable_proxy(listener.local_addr().unwrap()).await;
    tokio::spawn(replica::keep::serve(b.clone(), listener));
    let first = b.store.write(BlockType::DATA, b"first block").unwrap();
    b.store.sync().unwrap();

    let (a, _) = grid.node("a", vec![]);
    let through = replica::readthrough::ReadThrough::start(
        a.store.clone(),
        grid.issue("a2", Role::Storage),
        "a".into(),
        vec![Peer {
            name: "b".into(),
            address: format!("tls!127.0.0.1!{}", proxy.port()),
            plain_venti: false,
        }],
    );
    let t = through.clone();
    let got = tokio::task::spawn_blocking(move || t.read_sourced(&first, BlockType::DATA))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Some((b"first block".to_vec(), true)), "fetched from b");
    assert!(a.store.has(&first, 13).unwrap(), "and kept here");
    assert_eq!(through.fetched(), 1);

    // The link drops; the next fetch makes a new one.
    cut.send_modify(|n| *n += 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = b.store.write(BlockType::DATA, b"second block").unwrap();
    b.store.sync().unwrap();
    let t = through.clone();
    let got = tokio::task::spawn_blocking(move || t.read(&second, BlockType::DATA))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"second block"[..]));
    // A block nobody has is absent, not an error.
    let t = through.clone();
    let none = tokio::task::spawn_blocking(move || t.read(&Score::of(b"nowhere"), BlockType::DATA))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(none, None);
}

/// A client that is not a storage node (an admin's certificate) announcing
/// a huge first frame is refused at once: the node does not wait for, or
/// hold, the 32 MiB it announced. Before the fix the keeper read the frame
/// (up to its 32 MiB limit) before it looked at the peer's role, so forty
/// such clients held over a gigabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_announcing_a_huge_frame_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let grid = Grid::new();
    let (b, _) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(replica::keep::serve(b.clone(), listener));
    let admin = grid.issue("admin", Role::Client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = admin.connect(tcp, &[Role::Storage]).await.unwrap().0;
    // A frame of 32 MiB announced, and a little of it sent.
    s.write_all(&(32u32 << 20).to_be_bytes()).await.unwrap();
    s.write_all(&[7u8; 1000]).await.unwrap();
    s.flush().await.unwrap();
    // The answer comes without the rest being sent: an error, then the end.
    let answer = tokio::time::timeout(Duration::from_secs(20), frame::read(&mut s))
        .await
        .expect("the keeper must answer without waiting for the frame");
    match answer.unwrap() {
        Frame::Error { message } => assert!(
            message.contains("only storage nodes") && message.contains("33554432"),
            "{message}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the keeper must close the connection");
}

/// A storage peer's frame is held only as far as its bytes arrived: one
/// that announces a large frame and stops is a frame cut short, not a
/// large allocation waiting to be filled.
#[tokio::test]
async fn a_frame_cut_short_is_an_error_naming_what_arrived() {
    let mut wire = (1000u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&[1u8; 10]);
    let err = frame::read(&mut &wire[..]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("10 of its 1000 bytes"), "{err}");
}

/// What a desk was asked, answered with the line backwards.
struct EchoDesk(Mutex<Vec<(String, String)>>);

impl replica::ask::Desk for EchoDesk {
    fn here(&self, peer: &str, user: &str, line: &str) -> replica::ask::Told {
        assert_eq!(peer, "a", "the asker named by its certificate");
        self.0.lock().unwrap().push((user.into(), line.into()));
        replica::ask::Told {
            out: line.bytes().rev().collect(),
            err: String::new(),
            status: if line == "fail" { 3 } else { 0 },
        }
    }
}

/// Invariants: a storage node's asks are answered by the peer's desk, in
/// turn on one connection; nobody else may ask (a cpu node's or an
/// admin's certificate is refused, the desk never sees their question);
/// a node with no desk yet refuses and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_storage_nodes_ask_and_the_desk_answers_each_in_turn() {
    let grid = Grid::new();
    let (b, _) = grid.node("b", vec![]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(replica::keep::serve(b.clone(), listener));
    let peer = Peer {
        name: "b".into(),
        address: format!("tls!127.0.0.1!{}", addr.port()),
        plain_venti: false,
    };
    let within = Duration::from_secs(5);
    let a = grid.issue("a", Role::Storage);

    let mut asking = replica::ask::Asking::open(&a, &peer, within).await.unwrap();
    let err = asking.ask("alice", "status", within).await.unwrap_err();
    assert!(err.contains("no command set to ask"), "{err}");

    let desk = Arc::new(EchoDesk(Mutex::default()));
    assert!(b.desk.set(desk.clone()).is_ok());
    let mut asking = replica::ask::Asking::open(&a, &peer, within).await.unwrap();
    let told = asking.ask("alice", "status", within).await.unwrap();
    assert_eq!((told.out, told.status), (b"sutats".to_vec(), 0));
    let told = asking.ask("bob", "fail", within).await.unwrap();
    assert_eq!(told.status, 3);
    assert_eq!(
        *desk.0.lock().unwrap(),
        [
            ("alice".to_string(), "status".to_string()),
            ("bob".to_string(), "fail".to_string())
        ]
    );

    for (name, role) in [("c1", Role::Cpu), ("admin", Role::Client)] {
        let link = grid.issue(name, role);
        let mut asking = replica::ask::Asking::open(&link, &peer, within)
            .await
            .unwrap();
        let err = asking.ask("alice", "boom x", within).await.unwrap_err();
        assert!(err.contains("only storage nodes"), "{name}: {err}");
    }
    assert_eq!(
        desk.0.lock().unwrap().len(),
        2,
        "asked by a non-storage node"
    );

    // A peer that is not who the address should reach.
    let wrong = Peer {
        name: "z".into(),
        ..peer.clone()
    };
    let err = replica::ask::Asking::open(&a, &wrong, within)
        .await
        .err()
        .unwrap();
    assert!(err.contains("is b, not the peer z"), "{err}");
}
