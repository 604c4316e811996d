//! Idle environments are suspended to a resume point and woken by the next
//! login, on a single node with OpenSSH's client.
//!
//! Invariants checked: a suspended environment holds nothing on the host
//! but its login port (no mount, no cgroup, no process, no network
//! helper); a login wakes it with every file written before, in the same
//! connection, and logins at once wake it once; an environment with a
//! login open or a busy process is never suspended; a node killed at any
//! moment of a suspend comes back with either nothing (the environment
//! ended with the node, as a running one does) or a suspended environment
//! whose resume point holds every file written before.

use std::time::Duration;

use crate::common::grid::{spawn_port, wait_for};
use crate::common::node::{Node, can_mount};

/// alice's status line for busybox.
fn status_line(g: &Node) -> String {
    g.ok("alice", &["status"])
        .lines()
        .find(|l| l.starts_with("busybox\t"))
        .unwrap_or_default()
        .to_string()
}

fn wait_suspended(g: &Node, secs: u64) {
    wait_for(secs, "busybox to be suspended", || {
        status_line(g).contains("\tsuspended ")
    });
}

/// Processes on the host whose command line names this node's state
/// (its environments' helpers and their slirp4netns).
fn helpers_of(g: &Node) -> Vec<String> {
    let state = g.state.display().to_string();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&state) && !cmdline.contains(" serve ") {
            out.push(cmdline);
        }
    }
    out
}

fn occurrences(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

/// Whether something on the host listens on `port` (loopback or all) (looked up in
/// the kernel's table: a connection would wake the environment).
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let on = |addr: &str| format!("{addr}:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && (f[1] == on("0100007F") || f[1] == on("00000000")) && f[3] == "0A"
    })
}

#[test]
fn an_idle_environment_is_suspended_and_a_login_wakes_it_with_its_files() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=2s"]));
    g.env_ok(
        port,
        "echo kept > /root/note && (sleep 1000 </dev/null >/dev/null 2>&1 &)",
    );
    assert!(!g.mounted().is_empty() && !g.cgroups().is_empty());
    assert!(
        !helpers_of(&g).is_empty(),
        "a private network has its helper"
    );
    wait_suspended(&g, 20);
    let line = status_line(&g);
    assert!(line.contains("resume point vac:"), "{line}");
    assert!(line.contains(&format!("ssh -p {port} alice@")), "{line}");
    assert!(
        g.ok("alice", &["status"]).contains("its processes ended"),
        "status says what a wake brings back"
    );
    // Nothing of it on the host but its port.
    wait_for(10, "its mount, groups and helpers to go", || {
        g.mounted().is_empty() && g.cgroups().is_empty() && helpers_of(&g).is_empty()
    });
    assert!(listening(port), "its login port listens");

    // A login wakes it, in the same connection: the files are there, the
    // processes are not.
    let woke_before = occurrences(&g.log_so_far(), "woke a suspended environment");
    let out = g.env_ok(port, "cat /root/note; ps | grep -c '[s]leep 1000' || true");
    assert_eq!(out, "kept\n0\n");
    assert_eq!(
        occurrences(&g.log_so_far(), "woke a suspended environment"),
        woke_before + 1
    );
    // The banner says so (shown at OpenSSH's default log level).
    let banner = g
        .command("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        // The first value of an option is the one ssh takes.
        .args(["-o", "LogLevel=INFO"])
        .args(crate::common::grid::SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&banner.stderr).contains("processes started afresh"),
        "{}",
        String::from_utf8_lossy(&banner.stderr)
    );

    // Busy, it stays awake: a CPU loop inside…
    let suspends = || occurrences(&g.log_so_far(), "suspending an idle environment");
    let before = suspends();
    g.env_ok(
        port,
        "sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $! > /root/loop.pid",
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(suspends(), before, "a busy one was suspended");
    g.env_ok(port, "kill $(cat /root/loop.pid)");
    // …or a login held open (looked at while it is).
    std::thread::scope(|s| {
        let login = s.spawn(|| g.env_ssh("alice", port, "sleep 6; echo awake", "", false));
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(suspends(), before, "suspended under a login");
        let out = login.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "awake\n");
    });
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

#[test]
fn logins_at_once_wake_it_once_and_a_suspended_one_is_saved_or_boomed() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
    g.env_ok(port, "echo one > /root/note");
    wait_suspended(&g, 20);
    let woke_before = occurrences(&g.log_so_far(), "woke a suspended environment");
    let outs: Vec<String> = std::thread::scope(|s| {
        let g = &g;
        let logins: Vec<_> = (0..4)
            .map(|_| s.spawn(move || g.env_ok(port, "cat /root/note")))
            .collect();
        logins.into_iter().map(|l| l.join().unwrap()).collect()
    });
    assert!(outs.iter().all(|o| o == "one\n"), "{outs:?}");
    assert_eq!(
        occurrences(&g.log_so_far(), "woke a suspended environment"),
        woke_before + 1,
        "woken once"
    );

    // A save of a suspended environment saves its resume point.
    g.env_ok(port, "echo two > /root/note");
    wait_suspended(&g, 20);
    let saved = g.ok("alice", &["save", "busybox", "kept"]);
    assert!(saved.contains("kept"), "{saved}");
    assert!(
        status_line(&g).contains("suspended"),
        "a save leaves it asleep"
    );
    // An invite changes its resume point, and the wake sees it.
    g.ok("alice", &["invite", "bob", "busybox"]);
    assert!(status_line(&g).contains("suspended"));
    let out = g.env_ok(port, "cat /root/note; grep -c '^bob:' /etc/passwd");
    assert_eq!(out, "two\n1\n");
    wait_suspended(&g, 20);
    // A boom forgets it: its port closes, its record goes.
    g.ok("alice", &["boom", "busybox"]);
    assert_eq!(status_line(&g), "");
    wait_for(10, "its port to close", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    let records = std::fs::read_dir(g.state.join("suspended"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    assert_eq!(records, 0);
    // The saved name holds what the environment held.
    let port = spawn_port(&g.ok("alice", &["spawn", "kept"]));
    assert_eq!(g.env_ok(port, "cat /root/note"), "two\n");
    g.ok("alice", &["boom", "kept"]);
    g.stop();
}

#[test]
fn a_node_killed_during_a_suspend_keeps_a_whole_resume_point_or_nothing() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    // A suspended environment outlives a restart, and wakes whole.
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
    g.env_ok(port, "echo before > /root/note");
    wait_suspended(&g, 20);
    g.kill9();
    g.start(&[]);
    assert!(status_line(&g).contains("suspended"), "{}", status_line(&g));
    assert_eq!(g.env_ok(port, "cat /root/note"), "before\n");
    g.ok("alice", &["boom", "busybox"]);

    // Killed at moments around its suspend: whatever is left is whole.
    let mut suspended_after = 0;
    const ROUNDS: u64 = 10;
    let mut nothing_after = 0;
    for round in 0..ROUNDS {
        let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
        let text = format!("round {round}");
        g.env_ok(
            port,
            &format!("dd if=/dev/urandom of=/root/big bs=64k count=256 2>/dev/null; echo '{text}' > /root/note"),
        );
        // The suspend comes 1 to 1.5 s after the login ends (its idle
        // time, then the next look), and takes a moment to save 16 MiB:
        // the kills land before, during and after it.
        std::thread::sleep(Duration::from_millis(1000 + round * 400));
        g.kill9();
        g.start(&[]);
        let line = status_line(&g);
        if line.contains("suspended") {
            suspended_after += 1;
            let out = g.env_ok(port, "cat /root/note; wc -c < /root/big");
            assert_eq!(out, format!("{text}\n16777216\n"), "round {round}");
            g.ok("alice", &["boom", "busybox"]);
        } else {
            assert_eq!(line, "", "round {round}: neither running nor suspended");
            nothing_after += 1;
        }
    }
    eprintln!(
        "{suspended_after} of {ROUNDS} rounds came back suspended, {nothing_after} with nothing"
    );
    // The last kills come seconds after the suspend: at least those came
    // back suspended.
    assert!(suspended_after >= 1);
    g.stop();
}

/// A login that comes while the environment is being suspended waits in
/// the port's queue, then wakes it (or, if it came just before the door
/// closed, keeps it running): either way it gets in and sees its files.
#[test]
fn a_login_during_a_suspend_waits_for_it_and_gets_in() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
    // 32 MiB changed: its save takes a while.
    g.env_ok(
        port,
        "dd if=/dev/urandom of=/root/big bs=64k count=512 2>/dev/null; echo mid > /root/note",
    );
    wait_for(20, "the suspend to begin", || {
        g.ok("alice", &["status"]).contains("\tsuspending\t")
    });
    let out = g.env_ok(port, "cat /root/note; wc -c < /root/big");
    assert_eq!(out, "mid\n33554432\n");
    let log = g.log_so_far();
    let undone = log.contains("a login came as it was being suspended");
    let woke_after = log
        .find("suspended an idle environment")
        .zip(log.find("woke a suspended environment"))
        .is_some_and(|(slept, woke)| slept < woke);
    assert!(undone || woke_after, "{log}");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A node that runs as many environments as it may tells a waking login
/// so, and the environment stays suspended; once there is room, the next
/// login wakes it (before, the refused login left nothing waiting on the
/// port, and no later login ever got in). A suspended environment still
/// counts against its user's share: one user cannot take every login port
/// by spawning and leaving environments to sleep.
#[test]
fn a_full_node_refuses_a_wake_and_the_next_login_after_room_frees_gets_in() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--spawn-max", "1"]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
    g.env_ok(port, "echo asleep > /root/note");
    wait_suspended(&g, 20);
    g.ok("alice", &["save", "busybox", "other"]);
    let err = g.refused("alice", &["spawn", "other", "net=none"]);
    assert!(err.contains("suspended ones included"), "{err}");
    // bob fills the node.
    g.ok("alice", &["invite", "bob", "busybox"]);
    spawn_port(&g.ok("bob", &["spawn", "busybox+bob", "idle=never", "net=none"]));
    let refused = g.env_ssh("alice", port, "cat /root/note", "", false);
    assert!(!refused.status.success());
    assert!(
        g.log_so_far().contains("the node is full"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(status_line(&g).contains("\tsuspended "));
    g.ok("bob", &["boom", "busybox+bob"]);
    assert_eq!(g.env_ok(port, "cat /root/note"), "asleep\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A connection that never logs in (a port scan, a stranger) wakes a
/// suspended environment, as any connection must before the key exchange,
/// but cannot keep it awake: with nobody logged in it sleeps again soon,
/// though the connection is still held open. Before, an open connection
/// counted as a login, so one bare connect kept it awake.
#[test]
fn a_connection_that_never_logs_in_cannot_keep_it_awake() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "idle=1s", "net=none"]));
    g.env_ok(port, "echo mine > /root/note");
    wait_suspended(&g, 20);
    let woke = || occurrences(&g.log_so_far(), "woke a suspended environment");
    let stranger = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_for(10, "the stranger's connection to wake it", || woke() == 1);
    // The wake's short idle time (10 s), then the suspend that cuts the
    // stranger off.
    wait_for(30, "suspended again with the stranger still there", || {
        occurrences(&g.log_so_far(), "suspended an idle environment") == 2
    });
    drop(stranger);
    assert_eq!(g.env_ok(port, "cat /root/note"), "mine\n");
    // The login woke it; the node's line saying so may come a moment
    // after the login's output (a CI run read the log before it).
    wait_for(10, "the login's wake to be logged", || woke() == 2);
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}
