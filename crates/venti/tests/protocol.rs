//! Our server driven byte by byte with the spec's captured transcripts (§4.8),
//! and every kind of bad input a peer can send.

mod common;

use std::sync::Arc;

use common::{HELLO_02, Raw, TestServer, unhex};
use venti::MemoryStore;

async fn server() -> TestServer {
    TestServer::start(Arc::new(MemoryStore::new())).await
}

#[tokio::test]
async fn transcript_4_8_in_02_framing() {
    let srv = server().await;
    let (mut c, line) = Raw::connect(srv.addr, "venti-02-pytest\n").await;
    assert_eq!(line, "venti-04:02-colony\n");
    c.send(&unhex(HELLO_02)).await;
    assert_eq!(
        c.recv(17).await,
        unhex("000f 05 00 0009 616e6f6e796d6f7573 00 00")
    );

    c.send(&unhex("0011 0e 01 0d 000000 68656c6c6f20776f726c64"))
        .await;
    assert_eq!(
        c.recv(24).await,
        unhex("0016 0f 01 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")
    );

    c.send(&unhex(
        "001a 0c 02 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 2000",
    ))
    .await;
    assert_eq!(c.recv(15).await, unhex("000d 0d 02 68656c6c6f20776f726c64"));

    c.send(&unhex(
        "001a 0c 03 6f8f2141577ba09cd814316ef160871cc2dcadcc 0d 00 2000",
    ))
    .await;
    let mut expected = unhex("0049 01 03 0045");
    expected.extend_from_slice(
        b"no block with score 6f8f2141577ba09cd814316ef160871cc2dcadcc/0 exists",
    );
    assert_eq!(c.recv(expected.len()).await, expected);

    // We answer Tping with Rping (plan9port's server sends an error instead).
    c.send(&unhex("0002 02 01")).await;
    assert_eq!(c.recv(4).await, unhex("0002 03 01"));

    c.send(&unhex("0002 10 04")).await;
    assert_eq!(c.recv(4).await, unhex("0002 11 04"));
}

#[tokio::test]
async fn transcript_4_8_in_04_framing_with_both_count_widths() {
    let srv = server().await;
    let (mut c, _) = Raw::connect(srv.addr, "venti-04:02-pytest\n").await;
    c.send(&unhex(
        "00000014 04 00 0002 3034 0009 616e6f6e796d6f7573 00 00 00",
    ))
    .await;
    assert_eq!(
        c.recv(19).await,
        unhex("0000000f 05 00 0009 616e6f6e796d6f7573 00 00")
    );
    c.send(&unhex("00000011 0e 01 0d 000000 68656c6c6f20776f726c64"))
        .await;
    assert_eq!(
        c.recv(26).await,
        unhex("00000016 0f 01 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")
    );
    c.send(&unhex(
        "0000001c 0c 03 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 00011170",
    ))
    .await;
    assert_eq!(
        c.recv(17).await,
        unhex("0000000d 0d 03 68656c6c6f20776f726c64")
    );
    c.send(&unhex(
        "0000001a 0c 04 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 0064",
    ))
    .await;
    assert_eq!(
        c.recv(17).await,
        unhex("0000000d 0d 04 68656c6c6f20776f726c64")
    );
}

#[tokio::test]
async fn both_zero_scores_read_as_empty_blocks() {
    let srv = server().await;
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    c.send(&unhex(HELLO_02)).await;
    c.recv02().await;
    for score in [
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "0000000000000000000000000000000000000000",
    ] {
        c.send(&unhex(&format!("001a 0c 05 {score} 0d 00 2000")))
            .await;
        assert_eq!(c.recv02().await, unhex("0d 05"));
    }
    // An empty write stores nothing and returns the zero score.
    c.send(&unhex("0006 0e 06 0d 000000")).await;
    assert_eq!(
        c.recv02().await,
        unhex("0f 06 da39a3ee5e6b4b0d3255bfef95601890afd80709")
    );
}

/// Sends one request, expects an Rerror with `tag` whose text starts with `prefix`.
async fn expect_error(c: &mut Raw, request: &[u8], tag: u8, prefix: &str) {
    c.send(request).await;
    let reply = c.recv02().await;
    assert_eq!(reply[0], 1, "expected Rerror, got {reply:?}");
    assert_eq!(reply[1], tag);
    let text = String::from_utf8(reply[4..].to_vec()).unwrap();
    assert!(
        text.starts_with(prefix),
        "error {text:?} should start with {prefix:?}"
    );
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_session_goes_on() {
    let srv = server().await;
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    c.send(&unhex(HELLO_02)).await;
    c.recv02().await;

    // Unknown message types, including the unimplemented auth messages.
    expect_error(&mut c, &unhex("0002 63 07"), 7, "unknown request").await;
    expect_error(&mut c, &unhex("0002 08 08"), 8, "unknown request").await;
    // A reply type sent as a request.
    expect_error(&mut c, &unhex("0002 11 09"), 9, "unknown request").await;
    // A second hello.
    let mut again = unhex(HELLO_02);
    again[3] = 10;
    expect_error(&mut c, &again, 10, "unknown request").await;
    // Trailing junk after a ping, and a truncated read.
    expect_error(&mut c, &unhex("0003 02 0b ff"), 11, "bad packet").await;
    expect_error(&mut c, &unhex("0004 0c 0c 0102"), 12, "bad packet").await;
    // Invalid wire types are refused, not stored (plan9port stores them).
    expect_error(
        &mut c,
        &unhex("0007 0e 0d 00 000000 41"),
        13,
        "invalid block type 0",
    )
    .await;
    expect_error(
        &mut c,
        &unhex("0007 0e 0e 0a 000000 41"),
        14,
        "invalid block type 10",
    )
    .await;
    // A block over 56 KiB.
    let mut big = vec![0u8; 2 + 6 + 57345];
    big[..2].copy_from_slice(&((6 + 57345) as u16).to_be_bytes());
    big[2..8].copy_from_slice(&[0x0e, 15, 13, 0, 0, 0]);
    big[8..].fill(b'x');
    expect_error(&mut c, &big, 15, "lump too large").await;
    // A read whose count is smaller than the block.
    c.send(&unhex("0011 0e 10 0d 000000 68656c6c6f20776f726c64"))
        .await;
    c.recv02().await;
    expect_error(
        &mut c,
        &unhex("001a 0c 11 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 0005"),
        17,
        "read too small: asked for 5 need at least 11",
    )
    .await;

    // After all that the session still works.
    c.send(&unhex("0002 02 12")).await;
    assert_eq!(c.recv02().await, unhex("03 12"));
}

#[tokio::test]
async fn an_untrustworthy_frame_gets_an_error_then_the_connection_closes() {
    let srv = server().await;
    let (mut c, _) = Raw::connect(srv.addr, "venti-04-t\n").await;
    c.send(&unhex(
        "00000014 04 00 0002 3034 0009 616e6f6e796d6f7573 00 00 00",
    ))
    .await;
    c.recv(19).await;
    c.send(&unhex("7fffffff 0c 01")).await;
    let len = c.recv(4).await;
    let body = c
        .recv(u32::from_be_bytes(len.try_into().unwrap()) as usize)
        .await;
    assert_eq!(body[0], 1);
    assert!(String::from_utf8_lossy(&body[4..]).contains("larger than the limit"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn bad_handshakes_close_the_connection_without_a_reply() {
    let srv = server().await;
    // Not a venti version line.
    let (mut c, _) = Raw::connect(srv.addr, "GET / HTTP/1.0\n").await;
    assert!(c.closed().await);
    // No version in common.
    let (mut c, _) = Raw::connect(srv.addr, "venti-99-future\n").await;
    assert!(c.closed().await);
    // Hello with a tag other than 0.
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    let mut hello = unhex(HELLO_02);
    hello[3] = 1;
    c.send(&hello).await;
    assert!(c.closed().await);
    // Hello naming a version other than the negotiated one.
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    c.send(&unhex(
        "0014 04 00 0002 3034 0009 616e6f6e796d6f7573 00 00 00",
    ))
    .await;
    assert!(c.closed().await);
    // Something other than hello first.
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    c.send(&unhex("0002 02 00")).await;
    assert!(c.closed().await);

    // The server is still fine.
    let client = venti::Client::connect_tcp(&srv.addr.to_string())
        .await
        .unwrap();
    client.ping().await.unwrap();
}

#[tokio::test]
async fn goodbye_ends_the_session_without_a_reply() {
    let srv = server().await;
    let (mut c, _) = Raw::connect(srv.addr, "venti-02-t\n").await;
    c.send(&unhex(HELLO_02)).await;
    c.recv02().await;
    c.send(&unhex("0002 06 00")).await;
    assert!(c.closed().await);
}
