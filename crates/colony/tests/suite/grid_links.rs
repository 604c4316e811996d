//! Links between grid nodes, run as an admin would: a grid CA made with
//! `colony grid ca`, venti servers with `--tls` on hosts of their own
//! (network namespaces joined by veth links to a bridge), and clients and
//! tunnels dialing them. Invariants: blocks cross only between grid members
//! that verified each other; every refusal is logged by the server with the
//! peer's address and the reason, and the server goes on serving.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::common::netns::{self, Hosts};

use crate::common::run::{COLONY, failed};

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let c = Certs { dir };
        c.colony(
            &["grid", "ca", "init", "--grid", "test", "--ca"],
            &[&c.ca()],
        );
        c
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn colony(&self, args: &[&str], paths: &[&Path]) -> String {
        let out = Command::new(COLONY)
            .args(args)
            .args(paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "colony {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Issues `name` in `role`; returns its certificate directory.
    fn issue(&self, name: &str, role: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        let ca = self.ca();
        self.colony(
            &["grid", "ca", "issue", name, "--role", role, "--ca"],
            &[&ca, Path::new("--out"), &out],
        );
        out
    }
}

/// A process whose first stdout line is `listening on ADDR`, with its
/// stderr (the log) collected in the background.
struct Daemon {
    child: Child,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .env("COLONY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line:?}: {}", log.lock().unwrap()));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Daemon { child, port, log }
    }

    /// Waits until the log holds a line with every one of `words`, and returns it.
    fn logged(&self, words: &[&str]) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log.lock().unwrap().clone();
            if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
                return line.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {words:?} in:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venti_server(
    hosts: &Hosts,
    host: usize,
    store: &Path,
    listen: &str,
    tls: Option<(&Path, &str)>,
) -> Daemon {
    let mut cmd = hosts.command(host, COLONY);
    cmd.args(["venti", "serve", "--listen", listen, "--store"])
        .arg(store);
    if let Some((certs, roles)) = tls {
        cmd.arg("--tls").arg(certs).args(["--peer-roles", roles]);
    }
    Daemon::start(cmd)
}

/// `colony venti write` of `data` to `server`, as `certs`.
fn venti_write(
    hosts: &Hosts,
    host: usize,
    certs: Option<&Path>,
    server: &str,
    data: &[u8],
) -> Output {
    let mut cmd = hosts.command(host, COLONY);
    cmd.args(["venti", "write", "-h", server]);
    if let Some(c) = certs {
        cmd.env("COLONY_TLS", c);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap()
}

fn venti_read(
    hosts: &Hosts,
    host: usize,
    certs: Option<&Path>,
    server: &str,
    score: &str,
) -> Output {
    let mut cmd = hosts.command(host, COLONY);
    cmd.args(["venti", "read", "-h", server, score]);
    if let Some(c) = certs {
        cmd.env("COLONY_TLS", c);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    crate::common::run::ok(out).trim().to_string()
}

#[test]
fn two_nodes_exchange_blocks_over_mutual_tls_and_strangers_are_refused() {
    if !netns::available() {
        return;
    }
    let certs = Certs::new();
    let (a, b) = (
        certs.issue("store-a", "storage"),
        certs.issue("store-b", "storage"),
    );
    let stores = tempfile::tempdir().unwrap();
    let hosts = Hosts::new(2);
    let listen = |i: usize| format!("tls!{}!17035", hosts.addrs[i]);
    let sa = venti_server(
        &hosts,
        0,
        &stores.path().join("a"),
        &listen(0),
        Some((&a, "storage,cpu,client")),
    );
    let sb = venti_server(
        &hosts,
        1,
        &stores.path().join("b"),
        &listen(1),
        Some((&b, "storage,cpu,client")),
    );
    // Each node writes a block to the other, across the link, and reads it back.
    let to_a = ok(&venti_write(&hosts, 1, Some(&b), &listen(0), b"from b"));
    let to_b = ok(&venti_write(&hosts, 0, Some(&a), &listen(1), b"from a"));
    assert_eq!(
        ok(&venti_read(&hosts, 1, Some(&b), &listen(0), &to_a)),
        "from b"
    );
    assert_eq!(
        ok(&venti_read(&hosts, 0, Some(&a), &listen(1), &to_b)),
        "from a"
    );
    // The block is where it was written, and only there.
    assert!(
        !venti_read(&hosts, 1, Some(&b), &listen(1), &to_a)
            .status
            .success()
    );

    // A member of another grid is refused, and says why.
    let other = Certs::new();
    let stranger = other.issue("store-a", "storage");
    let e = failed(&venti_write(&hosts, 1, Some(&stranger), &listen(0), b"x"));
    assert!(
        e.contains("UnknownIssuer") || e.contains("BadSignature"),
        "{e}"
    );
    let line = sa.logged(&["refused a venti link", &hosts.addrs[1]]);
    assert!(
        line.contains("alert") || line.contains("certificate"),
        "{line}"
    );
    // No certificate at all: the client says what is missing.
    let e = failed(&venti_write(&hosts, 1, None, &listen(0), b"x"));
    assert!(e.contains("COLONY_TLS"), "{e}");
    // Plaintext to the TLS port: refused, logged, nothing stored.
    let e = failed(&venti_write(
        &hosts,
        1,
        None,
        &format!("tcp!{}!17035", hosts.addrs[0]),
        b"plain",
    ));
    assert!(!e.is_empty());
    sa.logged(&["refused a venti link", "not TLS", &hosts.addrs[1]]);
    // And the server still serves members.
    assert_eq!(
        ok(&venti_read(&hosts, 1, Some(&b), &listen(0), &to_a)),
        "from b"
    );
    drop(sb);
}

#[test]
fn a_node_only_port_refuses_clients_and_a_revoked_node_is_refused_after_the_reload() {
    if !netns::available() {
        return;
    }
    let certs = Certs::new();
    let (store, cpu, admin) = (
        certs.issue("store", "storage"),
        certs.issue("cpu1", "cpu"),
        certs.issue("admin", "client"),
    );
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new(2);
    let addr = format!("tls!{}!17036", hosts.addrs[0]);
    let server = venti_server(&hosts, 0, dir.path(), &addr, Some((&store, "storage,cpu")));
    let score = ok(&venti_write(&hosts, 1, Some(&cpu), &addr, b"by cpu1"));
    // An admin client's certificate on the node-only port.
    let _ = failed(&venti_read(&hosts, 1, Some(&admin), &addr, &score));
    let line = server.logged(&["refused a venti link", "admin (client)"]);
    assert!(
        line.contains(&hosts.addrs[1]) && line.contains("storage,cpu"),
        "{line}"
    );

    // cpu1 revoked at the CA; its node gets the new list.
    certs.colony(&["grid", "ca", "revoke", "cpu1", "--ca"], &[&certs.ca()]);
    std::fs::copy(certs.ca().join("crl.pem"), store.join("crl.pem")).unwrap();
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.logged(&["revocation list loaded", "revoked=1"]);
    let _ = failed(&venti_read(&hosts, 1, Some(&cpu), &addr, &score));
    server.logged(&["refused a venti link", "Revoked"]);
    // Other nodes are unaffected.
    let cpu2 = certs.issue("cpu2", "cpu");
    assert_eq!(
        ok(&venti_read(&hosts, 1, Some(&cpu2), &addr, &score)),
        "by cpu1"
    );
}

/// Plan 9 clients speak plain venti: a tunnel on their machine carries it
/// over mutual TLS to a grid node, and a tunnel on a node can front a plain
/// venti on its loopback. (Our own client speaking plain venti to the
/// tunnel's loopback end stands in for plan9port's.)
#[test]
fn plain_clients_reach_a_grid_node_through_tunnels() {
    if !netns::available() {
        return;
    }
    let certs = Certs::new();
    let (store, laptop) = (
        certs.issue("store", "storage"),
        certs.issue("laptop", "client"),
    );
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new(2);
    // On the node: a plain venti on loopback, fronted by a TLS tunnel.
    let plain = venti_server(&hosts, 0, dir.path(), "tcp!127.0.0.1!0", None);
    let mut front = hosts.command(0, COLONY);
    front
        .args([
            "tunnel",
            "--listen",
            &format!("tls!{}!17037", hosts.addrs[0]),
        ])
        .args(["--to", &format!("tcp!127.0.0.1!{}", plain.port), "--cert"])
        .arg(&store);
    let front = Daemon::start(front);
    // On the laptop: a plain listener on loopback carried to the node.
    let mut back = hosts.command(1, COLONY);
    back.args(["tunnel", "--listen", "tcp!127.0.0.1!0"])
        .args(["--to", &format!("tls!{}!17037", hosts.addrs[0])])
        .args(["--peer-roles", "storage", "--cert"])
        .arg(&laptop);
    let back = Daemon::start(back);
    // A plain listener on a host address would lend the laptop's identity
    // to the whole network: refused.
    let open = hosts
        .command(1, COLONY)
        .args(["tunnel", "--listen", &format!("tcp!{}!0", hosts.addrs[1])])
        .args(["--to", &format!("tls!{}!17037", hosts.addrs[0]), "--cert"])
        .arg(&laptop)
        .output()
        .unwrap();
    assert!(failed(&open).contains("must be on loopback"));
    let local = format!("tcp!127.0.0.1!{}", back.port);
    let score = ok(&venti_write(
        &hosts,
        1,
        None,
        &local,
        b"through two tunnels",
    ));
    assert_eq!(
        ok(&venti_read(&hosts, 1, None, &local, &score)),
        "through two tunnels"
    );
    // A grid client may also dial the node's tunnel directly.
    assert_eq!(
        ok(&venti_read(
            &hosts,
            1,
            Some(&laptop),
            &format!("tls!{}!17037", hosts.addrs[0]),
            &score
        )),
        "through two tunnels"
    );
    // The plain venti itself is out of reach from the other host.
    let e = failed(&venti_read(
        &hosts,
        1,
        None,
        &format!("tcp!{}!{}", hosts.addrs[0], plain.port),
        &score,
    ));
    assert!(!e.is_empty());
    drop((front, back));
}

#[test]
fn tls_to_a_plaintext_port_is_refused_with_a_reason() {
    if !netns::available() {
        return;
    }
    let certs = Certs::new();
    let node = certs.issue("node", "storage");
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new(1);
    let server = venti_server(&hosts, 0, dir.path(), "tcp!127.0.0.1!0", None);
    let e = failed(&venti_write(
        &hosts,
        0,
        Some(&node),
        &format!("tls!127.0.0.1!{}", server.port),
        b"x",
    ));
    assert!(e.contains("not TLS"), "{e}");
    server.logged(&["a TLS handshake on a plaintext venti port"]);
}

/// Invariant: every one of a flood of strangers at a TLS port is refused,
/// but the node logs them within its budget of refusal lines (20 in 10 s)
/// rather than one line each, and its next refusal line after the window
/// says how many went unlogged: a flood cannot flood the log too.
#[test]
fn a_flood_of_strangers_is_counted_not_logged_line_by_line() {
    use std::io::Read;
    let certs = Certs::new();
    let node = certs.issue("node", "storage");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(COLONY);
    cmd.args(["venti", "serve", "--listen", "tls!127.0.0.1!0", "--store"])
        .arg(dir.path())
        .arg("--tls")
        .arg(&node);
    let server = Daemon::start(cmd);
    let flood = |n: usize| {
        for _ in 0..n {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let _ = s.write_all(b"venti-02-plaintext\n");
            // Refused: the server closes the connection, having sent no
            // venti reply.
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(!got.starts_with(b"venti-"), "{got:?}");
        }
    };
    let refusals = || {
        let log = server.log.lock().unwrap().clone();
        log.lines()
            .filter(|l| l.contains("refused a venti link"))
            .count()
    };
    let began = std::time::Instant::now();
    flood(30);
    let deadline = began + std::time::Duration::from_secs(9);
    while refusals() < link::listener::REFUSAL_LINES {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        refusals(),
        link::listener::REFUSAL_LINES,
        "{}",
        server.log.lock().unwrap()
    );
    // The next window: one more, and its line tells of the ten left out.
    let next = began + link::listener::REFUSALS_WINDOW + std::time::Duration::from_secs(1);
    std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    flood(1);
    server.logged(&[
        "refused a venti link",
        "10 refusals before this one were not logged",
    ]);
}

/// `colony grid status` pointed at a node's TLS venti port says so. Before,
/// it read the venti greeting as a frame's length: "a frame of 1986358900
/// bytes" ("vent").
#[test]
fn grid_status_at_a_venti_port_says_what_the_port_is() {
    if !netns::available() {
        return;
    }
    let certs = Certs::new();
    let node = certs.issue("node", "storage");
    let admin = certs.issue("admin", "client");
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new(1);
    let server = venti_server(
        &hosts,
        0,
        dir.path(),
        "tls!127.0.0.1!0",
        Some((&node, "client")),
    );
    let out = hosts
        .command(0, COLONY)
        .args([
            "grid",
            "status",
            &format!("tls!127.0.0.1!{}", server.port),
            "--cert",
        ])
        .arg(&admin)
        .output()
        .unwrap();
    let e = failed(&out);
    assert!(
        e.contains("serves venti") && e.contains("--replica-listen"),
        "{e}"
    );
}

/// Before, a node with a certificate served TLS on a `tcp!` venti-listen
/// address without a word (a plain venti client then failed with nothing
/// to say why). Now it says so when it starts.
#[test]
fn a_tcp_venti_address_that_serves_tls_is_named_in_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| tmp.path().join(n).display().to_string();
    ok(&crate::common::run::run(
        &["grid", "ca", "init", "--grid", "t", "--ca", &dir("ca")],
        &[],
        b"",
    ));
    ok(&crate::common::run::run(
        &[
            "grid",
            "ca",
            "issue",
            "n1",
            "--role",
            "storage",
            "--ca",
            &dir("ca"),
            "--out",
            &dir("n1.tls"),
        ],
        &[],
        b"",
    ));
    let mut node = Command::new(COLONY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--venti-listen",
            "tcp!127.0.0.1!0",
        ])
        .args(["--tls", &dir("n1.tls"), "--state", &dir("state")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let out = node.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("venti-listen is written tcp!… but serves mutual TLS"),
        "{log}"
    );
}
