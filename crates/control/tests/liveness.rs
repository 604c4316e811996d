//! A link's two halves on a real socket pair: the writer task sends what it
//! is given in order and pings between, and the reader takes a link that
//! says nothing for `SILENT_FOR` as lost, and a closed one as ended.

use control::{Frame, Lost, PING_EVERY, SILENT_FOR};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dialled = TcpStream::connect(listener.local_addr().unwrap());
    let (dialled, accepted) = tokio::join!(dialled, listener.accept());
    (dialled.unwrap(), accepted.unwrap().0)
}

#[tokio::test]
async fn frames_go_in_order_with_pings_and_a_silent_or_closed_link_is_lost() {
    let (a, b) = pair().await;
    let (mut rd, _keep) = tokio::io::split(b);
    let (out, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let writer = control::spawn_writer(a, outgoing);
    for seq in [10, 11, 12] {
        out.send(Frame::Pong { seq }).unwrap();
    }
    // The interval's first tick is at once, so a ping may come first.
    let mut pongs = Vec::new();
    let mut pings = 0;
    while pings < 2 {
        match control::read_live(&mut rd).await.unwrap() {
            Frame::Pong { seq } => pongs.push(seq),
            Frame::Ping { .. } => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, [10, 11, 12]);
    assert!(SILENT_FOR >= PING_EVERY * 3);

    // A peer that keeps its socket open and says nothing (its node hangs,
    // or the path to it is cut where TCP has not noticed).
    let (quiet, b) = pair().await;
    let (mut rd, _keep) = tokio::io::split(b);
    let lost = control::read_live(&mut rd).await.unwrap_err();
    assert!(matches!(lost, Lost::Silent), "{lost}");
    assert_eq!(
        lost.to_string(),
        format!("silent for {}s", SILENT_FOR.as_secs())
    );
    drop(quiet);
    drop(writer);

    // Every sender gone: the writer shuts the stream down, and the reader
    // sees the link end rather than waiting out the silence.
    let (a, b) = pair().await;
    let (mut rd, _keep) = tokio::io::split(b);
    let (out, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let writer = control::spawn_writer(a, outgoing);
    drop(out);
    writer.await.unwrap();
    let lost = loop {
        match control::read_live(&mut rd).await {
            Ok(Frame::Ping { .. }) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(lost) => break lost,
        }
    };
    assert!(matches!(lost, Lost::Ended(_)), "{lost}");
}
