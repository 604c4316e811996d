//! Our client against our server over loopback TCP, with the durable store.

mod common;

use std::sync::Arc;

use common::{HELLO_02, Raw, TestServer, unhex};
use tokio::task::JoinSet;
use venti::{BlockType, Client, LogStore, Score};

fn block(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_sync_ping_through_a_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(Arc::new(LogStore::open(dir.path()).unwrap())).await;
    let client = Client::connect_tcp(&srv.addr.to_string()).await.unwrap();
    client.ping().await.unwrap();

    let data = block(1, 8192);
    let score = client.write(BlockType::DATA, data.clone()).await.unwrap();
    assert_eq!(score, Score::of(&data));
    assert_eq!(
        client.read(&score, BlockType::DATA, 8192).await.unwrap(),
        data
    );
    client.sync().await.unwrap();

    // (score, type) is the key: the same bytes under another type are missing.
    let err = client.read(&score, BlockType::DIR, 8192).await.unwrap_err();
    assert!(err.is_missing_block(), "{err}");
    assert_eq!(
        err.to_string(),
        format!("venti server: no block with score {score}/8 exists")
    );

    // A data pointer written at depth 2 reads back as a dir pointer of depth 2 (same wire type).
    let ptr = BlockType::at_depth(BlockType::DATA, 2).unwrap();
    let pscore = client.write(ptr, score.0.to_vec()).await.unwrap();
    let dir_ptr = BlockType::at_depth(BlockType::DIR, 2).unwrap();
    assert_eq!(
        client.read(&pscore, dir_ptr, 100).await.unwrap(),
        score.0.to_vec()
    );

    // The client refuses to send oversized blocks and checks the read limit.
    assert!(client.write(BlockType::DATA, vec![1; 60000]).await.is_err());
    let err = client.read(&score, BlockType::DATA, 100).await.unwrap_err();
    assert!(err.to_string().contains("read too small"), "{err}");

    drop(client);
    srv.stop().await;
    // Everything is still there after the server stops and the store reopens.
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        venti::BlockStore::read(&store, &score, BlockType::DATA)
            .unwrap()
            .unwrap(),
        data
    );
    assert_eq!(
        store.recovery().records_recovered,
        0,
        "a clean restart scans nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(Arc::new(LogStore::open(dir.path()).unwrap())).await;
    let client = Client::connect_tcp(&srv.addr.to_string()).await.unwrap();
    // More tasks than tags: the client must queue, not fail.
    let mut tasks = JoinSet::new();
    for i in 0..1000u64 {
        let client = client.clone();
        tasks.spawn(async move {
            let data = block(i, 100 + i as usize);
            let score = client.write(BlockType::DATA, data.clone()).await.unwrap();
            assert_eq!(
                client.read(&score, BlockType::DATA, 8192).await.unwrap(),
                data
            );
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    client.sync().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(Arc::new(LogStore::open(dir.path()).unwrap())).await;
    let mut tasks = JoinSet::new();
    for c in 0..64u64 {
        let addr = srv.addr.to_string();
        tasks.spawn(async move {
            let client = Client::connect_tcp(&addr).await.unwrap();
            let mut scores = Vec::new();
            for i in 0..50 {
                // Half the blocks are shared by every client: dedup under concurrency.
                let seed = if i % 2 == 0 { i } else { c * 1000 + i };
                let data = block(seed, 4096);
                scores.push((
                    client.write(BlockType::DATA, data.clone()).await.unwrap(),
                    data,
                ));
            }
            client.sync().await.unwrap();
            for (score, data) in scores {
                assert_eq!(
                    client.read(&score, BlockType::DATA, 8192).await.unwrap(),
                    data
                );
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_message_does_not_disturb_others() {
    let srv = TestServer::start(Arc::new(venti::MemoryStore::new())).await;
    let client = Client::connect_tcp(&srv.addr.to_string()).await.unwrap();
    let score = client
        .write(BlockType::DATA, b"before".to_vec())
        .await
        .unwrap();
    for _ in 0..10 {
        let (mut raw, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
        raw.send(&unhex(HELLO_02)).await;
        raw.recv02().await;
        // Half a Twrite, then hang up.
        raw.send(&unhex("1000 0e 01 0d 000000 6162")).await;
        drop(raw);
    }
    // And one that hangs up in the middle of its version line.
    let mut half = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"vent")
        .await
        .unwrap();
    drop(half);
    assert_eq!(
        client.read(&score, BlockType::DATA, 100).await.unwrap(),
        b"before"
    );
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_cleanly_when_the_server_goes_away() {
    let srv = TestServer::start(Arc::new(venti::MemoryStore::new())).await;
    let client = Client::connect_tcp(&srv.addr.to_string()).await.unwrap();
    client.ping().await.unwrap();
    srv.stop().await;
    let err = client
        .write(BlockType::DATA, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, venti::ClientError::Closed(_)), "{err:?}");
    let err = Client::connect_tcp("127.0.0.1:1").await.err().unwrap();
    assert!(
        err.to_string()
            .starts_with("connecting to venti at 127.0.0.1:1"),
        "{err}"
    );
}

/// The published SHA-1 collisions as blocks: SHAttered (identical-prefix;
/// the PDFs' first 512 bytes, which already collide) and SHA-mbles
/// (chosen-prefix). Each pair shares a score with different bytes.
fn colliding_pairs() -> [(&'static [u8], &'static [u8]); 2] {
    [
        (
            include_bytes!("data/shattered-1.head"),
            include_bytes!("data/shattered-2.head"),
        ),
        (
            include_bytes!("data/sha-mbles-1.bin"),
            include_bytes!("data/sha-mbles-2.bin"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_carrying_a_sha1_collision_are_refused_and_name_their_score() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let srv = TestServer::start(store.clone()).await;
    let client = Client::connect_tcp(&srv.addr.to_string()).await.unwrap();
    for (first, second) in colliding_pairs() {
        let score = Score::of(first);
        assert_eq!(score, Score::of(second), "not a colliding pair");
        assert_ne!(first, second);
        // Neither enters: both carry the attack, so no store can ever hold
        // two different blocks under this score.
        for bytes in [first, second] {
            let err = client
                .write(BlockType::DATA, bytes.to_vec())
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains("SHA-1 collision attack"), "{text}");
            assert!(text.contains(&score.to_string()), "{text}");
            let err = client
                .read(&score, BlockType::DATA, 8192)
                .await
                .unwrap_err();
            assert!(err.is_missing_block(), "{err}");
        }
        // The store refuses it directly too, naming it.
        match venti::BlockStore::write(store.as_ref(), BlockType::DATA, second) {
            Err(venti::StoreError::Collision(c)) => assert_eq!(c.0, score),
            other => panic!("{other:?}"),
        }
    }
    // The connection and the store go on as before.
    let data = block(7, 4096);
    let score = client.write(BlockType::DATA, data.clone()).await.unwrap();
    assert_eq!(score, Score::of(&data));
    client.sync().await.unwrap();
}
