//! An environment's login as developers' tools use it, with OpenSSH's own
//! client: forwards (`ssh -L`, `-W`, `-D`, `-R`, to unix sockets) are made
//! inside the environment, so they reach what a process inside could and
//! nothing else; the front door, which is not a machine, refuses them and
//! says so.
//!
//! Invariants checked: a forward never reaches the node's loopback (its
//! front door) nor another environment's; a remote forward listens inside
//! the environment only, within the per-environment limit.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::grid::{Reaped, SSH_OPTS, spawn_port, wait_for};
use crate::common::netns::WebHost;
use crate::common::node::{Node, build_probe, can_mount};
use crate::common::run::run_with_input;

/// `ssh ARGS… alice@127.0.0.1` to the environment whose login is `port`,
/// run where the node runs (its network namespace, if it has one). The
/// client logs at INFO: a forward's refusal (`open failed: …`) is said
/// at that level.
fn login(g: &Node, port: u16, args: &[&str]) -> Command {
    let mut cmd = g.command("ssh");
    // The first value of an option wins: before the scripted ones.
    cmd.args(["-o", "LogLevel=INFO", "-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(args)
        .arg("alice@127.0.0.1");
    cmd
}

/// A port nothing listens on now, on the test's loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` from the server at `127.0.0.1:port`, if it answers.
fn http_body(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Starts busybox httpd inside the environment on its loopback, serving
/// `/www/hello` with `text`.
fn serve_inside(g: &Node, login: u16, port: u16, text: &str) {
    g.env_ok(
        login,
        // Its stdio must not hold the login session open.
        &format!(
            "mkdir -p /www && echo {text} > /www/hello && httpd -p 127.0.0.1:{port} -h /www </dev/null >/dev/null 2>&1"
        ),
    );
}

#[test]
fn local_forwards_reach_the_environments_loopback_and_nothing_else() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    serve_inside(&g, port, 8080, "inside");

    // -L: a local port onto the server on the environment's loopback.
    let local = free_port();
    let _forward = Reaped(
        login(
            &g,
            port,
            &["-N", "-L", &format!("127.0.0.1:{local}:localhost:8080")],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut body = None;
    wait_for(15, "the forwarded port to answer", || {
        body = http_body(local, "/hello");
        body.is_some()
    });
    assert_eq!(body.unwrap(), "inside\n");

    // -W is the same channel on stdin and stdout.
    let out = run_with_input(
        login(&g, port, &["-W", "localhost:8080"]),
        "GET /hello HTTP/1.0\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\r\n\r\ninside\n"));

    // The node's loopback (its front door) is not the environment's: a
    // forward to it finds nothing there, and says where it looked.
    let out = run_with_input(
        login(&g, port, &["-W", &format!("127.0.0.1:{}", g.port)]),
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "connecting to 127.0.0.1:{} inside the environment",
            g.port
        )) && err.contains("refused"),
        "{err}"
    );

    // Nor is another environment's: bob's server on his loopback is not
    // reached from alice's.
    g.ok("alice", &["invite", "bob", "busybox"]);
    let bobs = spawn_port(&g.ok("bob", &["spawn", "busybox+bob"]));
    let bob_serves = g.env_ssh(
        "bob",
        bobs,
        "mkdir -p /www && echo bob > /www/hello && httpd -p 127.0.0.1:8081 -h /www </dev/null >/dev/null 2>&1",
        "",
        false,
    );
    assert!(bob_serves.status.success());
    let inside_bobs = g.env_ssh(
        "bob",
        bobs,
        "wget -q -O - http://127.0.0.1:8081/hello",
        "",
        false,
    );
    assert_eq!(String::from_utf8_lossy(&inside_bobs.stdout), "bob\n");
    let out = run_with_input(login(&g, port, &["-W", "localhost:8081"]), "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The front door is no machine to forward through, and says so.
    let mut door = g.command("ssh");
    door.args(["-o", "LogLevel=INFO", "-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-W", "localhost:8080", "alice@127.0.0.1"]);
    let out = run_with_input(door, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the front door is not a machine"), "{err}");

    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

#[test]
fn a_remote_forward_listens_inside_only_and_within_the_limit() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    // What the client side serves: one line per connection.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let served = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in server.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.write_all(b"from the client side\n");
        }
    });
    // A port inside the environment; the same one on the host is free.
    let inside = 9000 + (std::process::id() % 500) as u16;
    let _forward = Reaped(
        login(
            &g,
            port,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("{inside}:127.0.0.1:{served}"),
            ],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut got = String::new();
    wait_for(15, "the remote forward inside the environment", || {
        let out = g.env_ssh("alice", port, &format!("nc 127.0.0.1 {inside}"), "", false);
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        got == "from the client side\n"
    });
    // Inside only: on the node's own loopback nothing listens there.
    assert!(TcpStream::connect(("127.0.0.1", inside)).is_err());

    // At most eight listeners per environment: with one held, eight more
    // ask for one too many, and the client is told.
    let mut many = vec!["-N", "-o", "ExitOnForwardFailure=yes"];
    let specs: Vec<String> = (1..=8)
        .map(|i| format!("{}:127.0.0.1:{served}", inside + i))
        .collect();
    for spec in &specs {
        many.extend(["-R", spec.as_str()]);
    }
    let out = run_with_input(login(&g, port, &many), "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("remote port forwarding failed"), "{err}");

    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// `ssh -D`: a SOCKS proxy whose connections leave from the environment's
/// network, here to a web server on another (test) host.
#[test]
fn a_socks_forward_goes_out_through_the_environments_network() {
    if !can_mount() {
        return;
    }
    let web = WebHost::new(8082);
    let hosts = &web.hosts;
    let mut g = Node::new();
    g.netns = Some(hosts.name(0).to_string());
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let socks = free_port();
    let _proxy = Reaped(
        login(&g, port, &["-N", "-D", &format!("127.0.0.1:{socks}")])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{}:8082/hello", hosts.addrs[1]);
    let mut got = String::new();
    wait_for(15, "the page through the SOCKS forward", || {
        let out = g
            .command("curl")
            .args(["-s", "-m", "5", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg(&url)
            .output()
            .unwrap();
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(got, "from another host\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A TCP server on 127.0.0.1:8080 that holds each connection in a child
/// of its own until the client's request ends, then answers. Unlike
/// busybox httpd (whose listen backlog is 9, so a burst of connects loses
/// SYNs and waits seconds for retransmits on a busy machine), its backlog
/// takes a burst of 64 at once.
const HOLDING_SERVER: &str = r#"
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    signal(SIGCHLD, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(8080),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 256)) return 1;
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        if (fork() == 0) {
            char buf[4096];
            size_t got = 0;
            ssize_t n;
            while (got < sizeof buf - 1 && (n = read(c, buf + got, sizeof buf - 1 - got)) > 0) {
                got += n;
                buf[got] = 0;
                if (strstr(buf, "\r\n\r\n")) break;
            }
            const char *reply = "HTTP/1.0 200 OK\r\n\r\nheld\n";
            write(c, reply, strlen(reply));
            _exit(0);
        }
        close(c);
    }
}
"#;

/// A unix-socket server of the test's, static so it runs in any root.
const UNIX_SERVER: &str = r#"
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(void) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, "/root/app.sock");
    unlink(a.sun_path);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4)) return 1;
    for (int i = 0; i < 4; i++) {
        int c = accept(s, 0, 0);
        if (c < 0) return 1;
        write(c, "unix hello\n", 11);
        close(c);
    }
    return 0;
}
"#;

/// `ssh -L PORT:/path/to/socket`: a unix socket inside the environment,
/// found in its file system.
#[test]
fn a_unix_socket_inside_is_forwarded() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let program = build_probe(&g, "usock", UNIX_SERVER);
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    std::fs::copy(&program, g.state.join("mnt/alice/busybox/usock")).unwrap();
    g.env_ok(port, "/usock </dev/null >/dev/null 2>&1 &");
    wait_for(10, "the socket inside", || {
        g.env_ok(port, "test -S /root/app.sock && echo yes") == "yes\n"
    });
    let local = free_port();
    let _forward = Reaped(
        login(
            &g,
            port,
            &["-N", "-L", &format!("127.0.0.1:{local}:/root/app.sock")],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut got = String::new();
    wait_for(15, "the forwarded unix socket to answer", || {
        got.clear();
        TcpStream::connect(("127.0.0.1", local))
            .and_then(|mut s| s.read_to_string(&mut got))
            .is_ok_and(|n| n > 0)
    });
    assert_eq!(got, "unix hello\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Forwarded connections are the node's descriptors and relays, charged to
/// the environment: at most 64 open at once over all its logins; the next
/// is refused, and the client is told why.
#[test]
fn an_environment_holds_a_bounded_number_of_forwarded_connections() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let holder = build_probe(&g, "holder", HOLDING_SERVER);
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    std::fs::copy(&holder, g.state.join("mnt/alice/busybox/holder")).unwrap();
    g.env_ok(port, "/holder </dev/null >/dev/null 2>&1 &");
    let local = free_port();
    let log = g.tmp.path().join("forward.log");
    let _forward = Reaped(
        login(
            &g,
            port,
            &["-N", "-L", &format!("127.0.0.1:{local}:localhost:8080")],
        )
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    wait_for(15, "the forward", || http_body(local, "/").is_some());
    // That request's relay holds its place until the node closes its end,
    // which may come after our read; wait for it, or the 64th below would
    // be refused. A socket inside in any state but listening or TIME_WAIT
    // is a connection still held.
    wait_for(15, "the first request's relay to end", || {
        g.env_ok(
            port,
            "awk 'NR > 1 && $4 != \"0A\" && $4 != \"06\"' /proc/net/tcp | wc -l",
        )
        .trim()
            == "0"
    });
    // 64 held open: the server's children wait for their requests.
    let held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", local)).unwrap())
        .collect();
    let mut inside = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while inside <= 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{inside} holder processes inside, not 65; the client said: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
        inside = g
            .env_ok(port, "ps | grep -c '[h]older'")
            .trim()
            .parse::<usize>()
            .unwrap_or(0);
    }
    let mut refused = TcpStream::connect(("127.0.0.1", local)).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(refused.read(&mut [0u8; 16]).unwrap(), 0, "closed at once");
    wait_for(10, "the client to say why", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("64 forwarded connections open, the most it may")
    });
    // One given back makes room for one more.
    drop(held);
    wait_for(15, "room again", || http_body(local, "/").is_some());
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A `net=host` environment shares the node's network, so its forwards
/// reach what a process inside it would: the node's loopback too.
#[test]
fn a_host_network_environments_forwards_see_what_it_sees() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--allow-host-net"]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "net=host"]));
    // The front door's banner, through a forward from inside.
    let out = run_with_input(
        login(&g, port, &["-W", &format!("127.0.0.1:{}", g.port)]),
        "",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("SSH-2.0-"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}
