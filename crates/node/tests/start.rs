//! A node started in-process from a configuration, as the binary starts
//! it, and stopped again: what it serves while it runs, and that it
//! leaves nothing behind (ports, the admin socket, the store's lock).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use node::{Config, Node, Sources};

fn config(state: &Path, extra: &[(&str, &str)]) -> Config {
    let mut s = Sources::new();
    s.flag("state", state.display().to_string()).unwrap();
    s.flag("listen", "127.0.0.1:0").unwrap();
    for (k, v) in extra {
        s.flag(k, *v).unwrap();
    }
    Config::from_sources(&s).unwrap()
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

/// Invariant: after `shutdown` returns, every port the node bound refuses,
/// its admin socket is gone, and its store can be opened by the next node.
#[test]
fn a_node_starts_in_process_and_shutdown_releases_everything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(&state, &[("admin-listen", "127.0.0.1:0")]);
    let node = Node::start(config.clone()).unwrap();
    let front = node.front_door.expect("a front door");
    let admin = node.admin.expect("an admin address");

    // The front door speaks SSH.
    let mut banner = [0u8; 8];
    TcpStream::connect(front)
        .unwrap()
        .read_exact(&mut banner)
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    // The admin address serves the metrics.
    let metrics = get(admin, "/metrics");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("colony_"),
        "{metrics}"
    );
    assert!(state.join("admin.sock").exists());

    assert_eq!(node.shutdown(), 0);
    assert!(
        TcpStream::connect(front).is_err(),
        "the front door still answers"
    );
    assert!(
        TcpStream::connect(admin).is_err(),
        "the admin address still answers"
    );
    assert!(!state.join("admin.sock").exists());
    // The store's lock went with it: a node starts on the same state.
    let again = Node::start(config).unwrap();
    again.shutdown();
}

/// Invariant: a start that fails leaves nothing running: the next start
/// on the same state directory succeeds.
#[test]
fn a_failed_start_names_the_problem_and_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let err = Node::start(config(&state, &[("admin-listen", busy.as_str())]))
        .err()
        .expect("a busy admin port is an error");
    assert!(
        format!("{err:#}").contains(&format!("the admin listener on {busy}")),
        "{err:#}"
    );
    let node = Node::start(config(&state, &[("admin-listen", "127.0.0.1:0")])).unwrap();
    node.shutdown();

    for (settings, want) in [
        (
            vec![("role", "cpu")],
            "a cpu node links to its storage nodes over mutual TLS",
        ),
        (
            vec![("role", "storage")],
            "a storage node links to its cpu nodes over mutual TLS",
        ),
        (
            vec![("cpu-listen", "tls!127.0.0.1!0")],
            "cpu-listen is for a grid",
        ),
        (
            vec![("venti-listen", "tls!127.0.0.1!0")],
            "needs the node's certificate",
        ),
        (vec![("listen", "tls!127.0.0.1!0")], "the front door is SSH"),
        (vec![("read-through", "yes")], "read-through needs peers"),
    ] {
        let mut s = Sources::new();
        s.flag("state", state.display().to_string()).unwrap();
        for (k, v) in &settings {
            s.flag(k, *v).unwrap();
        }
        let err = Node::start(Config::from_sources(&s).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{settings:?} started"));
        assert!(format!("{err:#}").contains(want), "{settings:?}: {err:#}");
    }
    // And still nothing holds the state.
    Node::start(config(&state, &[])).unwrap().shutdown();
}

/// The README's table of settings is the table the node reads.
#[test]
fn the_readme_lists_every_setting_as_the_node_reads_them() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let table = node::config::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's table of settings is out of date; it should read:\n\n{table}"
    );
}

/// The shipped example configurations read without a refused key or
/// value, and say the role they are examples of.
#[test]
fn the_shipped_configurations_are_valid() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist");
    for (file, role) in [
        ("colony.ndb", node::Role::Both),
        ("storage.ndb", node::Role::Storage),
        ("cpu.ndb", node::Role::Cpu),
    ] {
        let mut s = Sources::new();
        s.read_file(&dist.join(file)).unwrap();
        assert!(s.old_spellings.is_empty(), "{file}: {:?}", s.old_spellings);
        let config = Config::from_sources(&s).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.role, role, "{file}");
    }
}

/// Before, a cpu node took `admin-listen=`, `peer=`, `venti=` and the
/// like from its file and did nothing with them. Now it refuses them,
/// naming the setting.
#[test]
fn a_cpu_node_refuses_settings_it_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    link::ca::init(&ca, "t").unwrap();
    let cert = dir.path().join("c1.tls");
    link::ca::issue(
        &ca,
        "c1",
        link::Role::Cpu,
        link::ca::Validity::Days(1),
        &cert,
    )
    .unwrap();
    for (key, value) in [
        ("admin-listen", "127.0.0.1:0"),
        ("peer", "b=tls!127.0.0.1!1"),
        ("venti", "tcp!127.0.0.1!1"),
        ("hubs-listen", "127.0.0.1:0"),
    ] {
        let mut s = Sources::new();
        s.flag("state", dir.path().join("state").display().to_string())
            .unwrap();
        s.flag("role", "cpu").unwrap();
        s.flag("tls", cert.display().to_string()).unwrap();
        s.flag("storage", "s1=tls!127.0.0.1!1").unwrap();
        s.flag(key, value).unwrap();
        let err = Node::start(Config::from_sources(&s).unwrap())
            .err()
            .unwrap_or_else(|| panic!("a cpu node took {key}="));
        assert!(
            format!("{err:#}").contains(&format!("{key}= is not for a cpu node")),
            "{key}: {err:#}"
        );
    }
}
