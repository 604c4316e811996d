//! Grid links over real TCP on loopback: a CA made and used as an admin
//! would, both ends verified, and every refusal a hostile or stale peer can
//! cause. Invariant of every refusal: the server names the peer's address
//! and the reason, and keeps serving the next peer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use link::ca::{self, Validity};
use link::{Link, LinkError, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Grid {
    dir: tempfile::TempDir,
}

impl Grid {
    fn new() -> Grid {
        Grid::named("test")
    }

    fn named(grid: &str) -> Grid {
        let dir = tempfile::tempdir().unwrap();
        ca::init(&dir.path().join("ca"), grid).unwrap();
        Grid { dir }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca")
    }

    fn issue(&self, name: &str, role: Role) -> Arc<Link> {
        self.issue_valid(name, role, Validity::Days(30))
    }

    fn issue_valid(&self, name: &str, role: Role, validity: Validity) -> Arc<Link> {
        let out = self.dir.path().join(name);
        ca::issue(&self.ca(), name, role, validity, &out).unwrap();
        Link::load(&out).unwrap()
    }

    fn certs(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// An echo server that admits `allowed` roles and reports each outcome.
async fn echo_server(
    link: Arc<Link>,
    allowed: Vec<Role>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, peer) = listener.accept().await.unwrap();
            let (link, allowed, tx) = (link.clone(), allowed.clone(), tx.clone());
            tokio::spawn(async move {
                match link.accept(socket, peer, &allowed).await {
                    Ok((mut stream, who)) => {
                        let _ = tx.send(Ok(who.name.clone()));
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = stream.flush().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// As `echo_server`, on the blocking accept and a thread per connection, as
/// the 9P export serves.
fn blocking_echo_server(
    link: Arc<Link>,
    allowed: Vec<Role>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            let (socket, peer) = listener.accept().unwrap();
            let (link, allowed, tx) = (link.clone(), allowed.clone(), tx.clone());
            std::thread::spawn(move || match link.accept_blocking(socket, peer, &allowed) {
                Ok((mut stream, who)) => {
                    let _ = tx.send(Ok(who.name.clone()));
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let _ = stream.flush();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            });
        }
    });
    (addr, rx)
}

/// Why an echo through a link failed: the handshake, or the server closing
/// the link after it (a refusal after the handshake, by role or revocation).
#[derive(Debug)]
enum Failed {
    Link(LinkError),
    Closed(std::io::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Link(e) => write!(f, "{e}"),
            Failed::Closed(e) => write!(f, "closed: {e}"),
        }
    }
}

async fn echo_once(link: &Link, addr: std::net::SocketAddr) -> Result<(), Failed> {
    echo_with_kind(link, addr).await.map(|_| ())
}

/// As `echo_once`, saying whether the handshake was full or resumed.
async fn echo_with_kind(
    link: &Link,
    addr: std::net::SocketAddr,
) -> Result<Option<rustls::HandshakeKind>, Failed> {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut stream, who) = link
        .connect(socket, &[Role::Storage])
        .await
        .map_err(Failed::Link)?;
    assert_eq!(who.role, Role::Storage);
    stream.write_all(b"ping").await.map_err(Failed::Closed)?;
    stream.flush().await.map_err(Failed::Closed)?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.map_err(Failed::Closed)?;
    assert_eq!(&buf, b"ping");
    Ok(stream.get_ref().1.handshake_kind())
}

#[tokio::test]
async fn two_nodes_verify_each_other_and_a_stranger_is_refused() {
    let g = Grid::new();
    let store = g.issue("store1", Role::Storage);
    let cpu = g.issue("cpu1", Role::Cpu);
    let (addr, mut seen) = echo_server(store.clone(), Role::ALL.to_vec()).await;
    echo_once(&cpu, addr).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), Ok("cpu1".into()));

    // A node of another grid: its CA is unknown on both sides.
    let other = Grid::named("other");
    let stranger = other.issue("store1", Role::Storage);
    let err = echo_once(&stranger, addr).await.unwrap_err();
    assert!(
        matches!(err, Failed::Link(LinkError::Handshake { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("127.0.0.1"), "{refused}");
    assert!(refused.contains("UnknownCA"), "{refused}");
    // And still serving.
    echo_once(&cpu, addr).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), Ok("cpu1".into()));
    // Another grid of the same name: its CA's signature does not check out.
    let namesake = Grid::new().issue("cpu1", Role::Cpu);
    assert!(echo_once(&namesake, addr).await.is_err());
    assert!(seen.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let g = Grid::new();
    let store = g.issue("store1", Role::Storage);
    let old = g.issue_valid(
        "old",
        Role::Cpu,
        Validity::Until(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
    );
    let (addr, mut seen) = echo_server(store, Role::ALL.to_vec()).await;
    assert!(echo_once(&old, addr).await.is_err());
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.to_lowercase().contains("expired"), "{refused}");
}

#[tokio::test]
async fn a_client_certificate_on_a_node_only_port_is_refused() {
    let g = Grid::new();
    let store = g.issue("store1", Role::Storage);
    let admin = g.issue("admin", Role::Client);
    let (addr, mut seen) = echo_server(store, vec![Role::Storage, Role::Cpu]).await;
    // The handshake completes; the role check refuses right after it.
    let _ = echo_once(&admin, addr).await;
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(
        refused.contains("admin (client)") && refused.contains("storage,cpu"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_revoked_node_is_refused_after_the_reload_even_resuming() {
    let g = Grid::new();
    let store = g.issue("store1", Role::Storage);
    let cpu = g.issue("cpu1", Role::Cpu);
    let (addr, mut seen) = echo_server(store.clone(), Role::ALL.to_vec()).await;
    // Twice: the second connection resumes the first's session.
    assert_eq!(
        echo_with_kind(&cpu, addr).await.unwrap(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        echo_with_kind(&cpu, addr).await.unwrap(),
        Some(rustls::HandshakeKind::Resumed)
    );
    for _ in 0..2 {
        assert_eq!(seen.recv().await.unwrap(), Ok("cpu1".into()));
    }
    assert_eq!(ca::revoke(&g.ca(), "cpu1").unwrap(), 1);
    // The admin hands the node the new list; the node sees the file change.
    std::fs::copy(g.ca().join(ca::CRL), g.certs("store1").join(ca::CRL)).unwrap();
    let _ = echo_once(&cpu, addr).await;
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(
        refused.contains("revoked") && refused.contains("cpu1"),
        "{refused}"
    );
    // A fresh start of cpu1 (no session to resume) fares no better.
    let cpu_again = Link::load(&g.certs("cpu1")).unwrap();
    let _ = echo_once(&cpu_again, addr).await;
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("Revoked"), "{refused}");
    // A list removed, or emptied as a copy begins, un-revokes nobody.
    for emptied in [false, true] {
        let crl = g.certs("store1").join(ca::CRL);
        if emptied {
            std::fs::write(&crl, "").unwrap();
        } else {
            std::fs::remove_file(&crl).unwrap();
        }
        let _ = echo_once(&cpu_again, addr).await;
        let refused = seen.recv().await.unwrap().unwrap_err();
        assert!(
            refused.contains("Revoked") || refused.contains("revoked"),
            "{refused}"
        );
    }
    // Others still get in.
    let cpu2 = g.issue("cpu2", Role::Cpu);
    echo_once(&cpu2, addr).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), Ok("cpu2".into()));
}

#[tokio::test]
async fn plaintext_and_silence_on_a_tls_port_are_refused_in_time() {
    let g = Grid::new();
    let mut store = g.issue("store1", Role::Storage);
    Arc::get_mut(&mut store).unwrap().handshake_timeout = Duration::from_millis(300);
    let (addr, mut seen) = echo_server(store, Role::ALL.to_vec()).await;
    // A plain venti client's version line.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"venti-02-colony\n").await.unwrap();
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("not TLS"), "{refused}");
    // A peer that connects and says nothing.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("did not finish"), "{refused}");
    // A peer that vanishes mid-handshake.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    drop(half);
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.contains("127.0.0.1"), "{refused}");
}

/// Invariant: peers that connect and never finish a handshake hold at most
/// `max_handshakes` of a node. The next connection is refused at once (not
/// after the 10 s timeout, here far off), and once the silent ones go a node
/// gets in again. Both for the async accept and for the blocking one of the
/// 9P export, where each of them would otherwise hold a thread.
#[tokio::test]
async fn silent_peers_past_the_handshake_limit_are_refused_at_once() {
    let g = Grid::new();
    let cpu = g.issue("cpu1", Role::Cpu);
    for blocking in [false, true] {
        let mut store = g.issue("store1", Role::Storage);
        Arc::get_mut(&mut store).unwrap().max_handshakes = 4;
        let (addr, mut seen) = if blocking {
            blocking_echo_server(store.clone(), Role::ALL.to_vec())
        } else {
            echo_server(store.clone(), Role::ALL.to_vec()).await
        };
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        while store.handshakes_in_progress() < 4 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the server never counted 4 handshakes (blocking: {blocking})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = echo_once(&cpu, addr).await.unwrap_err();
        assert!(matches!(err, Failed::Link(_)), "{err}");
        let refused = seen.recv().await.unwrap().unwrap_err();
        assert!(
            refused.contains("127.0.0.1") && refused.contains("refused at once: 4 TLS handshakes"),
            "blocking: {blocking}: {refused}"
        );
        drop(silent);
        for _ in 0..4 {
            let gone = seen.recv().await.unwrap().unwrap_err();
            assert!(!gone.contains("refused at once"), "{gone}");
        }
        assert_eq!(store.handshakes_in_progress(), 0);
        echo_once(&cpu, addr).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), Ok("cpu1".into()));
    }
}

#[test]
fn the_ca_refuses_to_be_made_twice_and_unknown_names_to_be_revoked() {
    let g = Grid::new();
    let err = ca::init(&g.ca(), "test").unwrap_err().to_string();
    assert!(err.contains("already holds"), "{err}");
    let err = ca::revoke(&g.ca(), "nobody").unwrap_err().to_string();
    assert!(err.contains("never issued"), "{err}");
    let err = ca::issue(
        &g.ca(),
        "Bad Name",
        Role::Cpu,
        Validity::Days(1),
        Path::new("/nonexistent"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad node name"), "{err}");
    // The key is the CA's secret.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(g.ca().join(ca::CA_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
