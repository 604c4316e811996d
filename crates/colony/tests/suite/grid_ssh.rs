//! The grid node driven as users drive it: `colony serve` on loopback and the
//! real OpenSSH client. Spawning mounts through FUSE, so these need root.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::grid::{SSH_OPTS, spawn_port};
use crate::common::netns::WebHost;
use crate::common::node::{Node, build_probe, can_mount, rootful_suite};
use crate::common::run::COLONY;

#[test]
fn every_command_and_its_refusals() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let venti_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let venti = format!("tcp!127.0.0.1!{venti_port}");
    g.start(&["--spawn-max", "2", "--venti-listen", &venti]);
    assert_eq!(g.ok("alice", &["scores"]), "busybox\n");
    assert_eq!(g.ok("alice", &["scores", "busy"]), "busybox\n");
    assert_eq!(g.ok("alice", &["scores", "nomatch"]), "");
    assert_eq!(g.ok("bob", &["scores"]), "");
    // No names: stdout stays an (empty) list; stderr says why.
    let none = g.ssh("bob", &["scores"]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no names yet"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    assert!(
        g.refused("bob", &["spawn", "busybox"])
            .contains("busybox not found for bob")
    );
    assert!(
        g.refused("alice", &["spawn", "../etc"])
            .contains("may not contain")
    );
    let out = g.ok("alice", &["spawn", "busybox"]);
    assert!(out.starts_with("busybox spawned from vac:"), "{out}");
    assert!(
        g.refused("alice", &["spawn", "busybox"])
            .contains("already running; use save to clone it to a new name")
    );
    let status = g.ok("alice", &["status"]);
    assert!(
        status.starts_with("busybox\tfrom busybox vac:") && status.contains("ram 100 MB"),
        "{status}"
    );
    assert_eq!(g.ok("bob", &["status"]), "no environments running\n");

    // Change the environment, save it, spawn the saved name.
    let mnt = g.state.join("mnt/alice/busybox");
    std::fs::write(mnt.join("etc/motd"), "changed\n").unwrap();
    let saved = g.ok("alice", &["save", "busybox", "busybox.1"]);
    assert!(saved.starts_with("busybox.1 saved\nvac:"), "{saved}");
    assert!(
        g.refused("alice", &["save", "busybox", "busybox.1"])
            .contains("is taken")
    );
    assert!(
        g.refused("alice", &["save", "busybox", "a/b"])
            .contains("may not contain")
    );
    assert!(
        g.refused("alice", &["save", "nothere", "x"])
            .contains("nothere is not running for alice")
    );
    g.ok("alice", &["spawndisk", "busybox.1"]);
    assert_eq!(
        std::fs::read_to_string(g.state.join("mnt/alice/busybox.1/etc/motd")).unwrap(),
        "changed\n"
    );
    assert!(
        g.refused("alice", &["spawn", "busybox.1"])
            .contains("already running")
    );
    // The limit is 2 live environments on the node.
    // Seeding a running node goes through its venti listener.
    g.colony(&[
        "import",
        "second",
        mnt.join("etc").to_str().unwrap(),
        "--user",
        "alice",
        "--venti",
        &venti,
    ]);
    assert!(
        g.refused("alice", &["spawn", "second"])
            .contains("spawn limit reached")
    );

    // Invite: bob gets his own name, with a login in /etc/passwd.
    assert!(
        g.refused("alice", &["invite", "nobody", "busybox"])
            .contains("no user nobody")
    );
    let invited = g.ok("alice", &["invite", "bob", "busybox"]);
    assert!(
        invited.starts_with("bob invited: busybox+bob\nvac:"),
        "{invited}"
    );
    assert_eq!(g.ok("bob", &["scores"]), "busybox+bob\n");
    assert!(
        !g.ok("alice", &["scores"]).contains("busybox+bob"),
        "the invited name is bob's alone"
    );
    let passwd = std::fs::read_to_string(mnt.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("\nbob:x:1000:1000::/home/bob:/bin/sh\n"),
        "{passwd}"
    );

    // Nobody touches anyone else's environment.
    assert!(
        g.refused("bob", &["save", "busybox", "stolen"])
            .contains("not running for bob")
    );
    assert!(
        g.refused("bob", &["invite", "bob", "busybox"])
            .contains("not running for bob")
    );
    assert_eq!(
        g.ok("bob", &["boom", "busybox"]),
        "busybox is not running\n"
    );
    assert!(
        mnt.join("etc").exists(),
        "bob's boom did not touch alice's environment"
    );

    // Usage errors and unknown commands.
    assert!(g.refused("alice", &["spawn"]).contains("usage: spawn NAME"));
    assert!(
        g.refused("alice", &["save", "busybox"])
            .contains("usage: save ENV NEWNAME")
    );
    assert!(g.refused("alice", &["boom"]).contains("usage: boom ENV"));
    assert!(
        g.refused("alice", &["status", "x"])
            .contains("usage: status")
    );
    assert!(
        g.refused("alice", &["invite", "bob"])
            .contains("usage: invite USER ENV")
    );
    assert!(
        g.refused("alice", &["frobnicate"])
            .contains("unknown command")
    );

    // boom frees the slot and is idempotent.
    assert_eq!(g.ok("alice", &["boom", "busybox"]), "busybox BOOMed\n");
    assert_eq!(
        g.ok("alice", &["boom", "busybox"]),
        "busybox is not running\n"
    );
    assert!(!mnt.exists());
    g.ok("alice", &["spawn", "second"]);
    g.stop();
}

#[test]
fn the_key_decides_who_you_are() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    // alice's key, claiming to be bob: she is alice.
    let out = g.ssh_as("alice", "bob", &["scores"], "");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "busybox\n");
    // An unregistered key is refused by SSH itself.
    let out = g.ssh_as("carol", "alice", &["scores"], "");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // A user removed while the node runs can no longer log in.
    g.colony(&["user", "del", "bob"]);
    assert_eq!(g.ssh("bob", &["scores"]).status.code(), Some(255));
    g.stop();
}

#[test]
fn the_interactive_prompt() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = g.ssh_as(
        "alice",
        "alice",
        &[],
        "scores\nfrob\nstatus\nexit\nscores\n",
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("colony grid: you are alice\nscores [FILTER] | spawn NAME"),
        "{text}"
    );
    // An error comes in order, before the next prompt (on stderr it
    // could land after it).
    let after_frob = text
        .split_once("alice% busybox\nalice% unknown command \"frob\"")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        after_frob.contains("\nalice% no environments running\nalice% "),
        "{text}"
    );
    assert_eq!(
        text.matches("busybox\n").count(),
        1,
        "nothing runs after exit"
    );
    g.stop();
}

#[test]
fn a_restart_ends_live_environments_and_keeps_the_names() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    g.ok("alice", &["spawn", "busybox"]);
    g.ok("alice", &["save", "busybox", "kept"]);
    assert_eq!(g.mounted().len(), 1);
    let log = g.stop();
    assert!(
        log.contains("ending environment") && log.contains("env=busybox"),
        "{log}"
    );
    assert!(g.mounted().is_empty(), "no mount left behind");

    // A node killed outright takes its environments with it (no tenant
    // process runs on, holding ports or ids), and leaves a stale mount that
    // the next start clears.
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "kept"]));
    g.env_ok(port, "sleep 1000 </dev/null >/dev/null 2>&1 &");
    let mut child = g.child.take().unwrap();
    let init = init_pid_of_only_environment(child.id()).expect("the environment's pid 1");
    let inside: Vec<u32> = children_of(init);
    assert!(!inside.is_empty(), "the sleep runs");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until_gone(std::iter::once(init).chain(inside), "its node");
    g.start(&[]);
    assert!(g.mounted().is_empty(), "stale mount cleared at start");
    assert_eq!(g.ok("alice", &["scores"]), "busybox\nkept\n");
    g.ok("alice", &["spawn", "kept"]);
    let log = g.stop();
    assert!(log.contains("left by an earlier run"), "{log}");
}

#[test]
fn a_crash_mid_update_leaves_scorenames_whole() {
    let g = Node::new();
    let root = g.tmp.path().join("rootfs");
    // Import names one after another in a child, and kill it mid-stream.
    let script = format!(
        "for i in $(seq 1 200); do {COLONY} import n$i {} --user alice --state {} >/dev/null || exit 1; done",
        root.display(),
        g.state.display()
    );
    // Its own process group, so the kill takes the running import too.
    let mut child = std::os::unix::process::CommandExt::process_group(&mut Command::new("sh"), 0)
        .args(["-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let group = child.id() as i32;
    assert!(group > 1);
    // SAFETY: kill(2) on the child's own process group (its pid), not ours.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    child.wait().ok();
    let text = std::fs::read_to_string(g.state.join("scorenames")).unwrap();
    let db = ndb::Db::parse("scorenames", &text).unwrap();
    assert!(db.entries().len() >= 2, "some imports happened");
    for e in db.entries() {
        assert!(
            e.get("scorename").is_some()
                && e.get("rootscore").is_some()
                && e.get("user") == Some("alice"),
            "{e:?}"
        );
    }
    // The names are exactly a prefix of what was asked, with no gaps.
    let names: Vec<&str> = db
        .entries()
        .iter()
        .map(|e| e.get("scorename").unwrap())
        .collect();
    for (i, n) in names.iter().skip(1).enumerate() {
        assert_eq!(*n, format!("n{}", i + 1));
    }
    // And ndb/query semantics read it.
    let out = Command::new(COLONY)
        .args(["ndb", "query", "-f"])
        .arg(g.state.join("scorenames"))
        .args(["scorename", "busybox", "user"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "alice\n");
}

#[test]
fn ndb_query_behaves_like_plan9() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ndbtest");
    std::fs::write(&f, "sys=alpha dom=alpha.example.com\n\tip=10.0.0.1 venti=tcp!10.0.0.1!17034\nsys=gamma ip=10.0.0.3 tag\n\tip=10.0.0.33\n").unwrap();
    let q = |args: &[&str]| {
        let out = Command::new(COLONY)
            .args(["ndb", "query"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let file = f.to_str().unwrap();
    assert_eq!(
        q(&["-f", file, "sys", "alpha", "venti"]),
        (Some(0), "tcp!10.0.0.1!17034\n".into())
    );
    assert_eq!(
        q(&["-f", file, "sys", "gamma", "ip"]),
        (Some(0), "10.0.0.3\n".into())
    );
    assert_eq!(
        q(&["-a", "-f", file, "sys", "gamma", "ip"]),
        (Some(0), "10.0.0.3\n10.0.0.33\n".into())
    );
    assert_eq!(
        q(&["-f", file, "tag", ""]),
        (Some(0), "sys=gamma ip=10.0.0.3 tag= ip=10.0.0.33 \n".into())
    );
    assert_eq!(q(&["-f", file, "sys", "nope"]), (Some(1), String::new()));
    std::fs::write(&f, "a=1\nb=\"broken\n").unwrap();
    let out = Command::new(COLONY)
        .args(["ndb", "query", "-f", file, "a", "1"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ndbtest:2:"),
        "the error names file and line"
    );
}

#[test]
fn a_name_whose_blocks_are_missing_and_two_saves_at_once() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    // A binding to a root that is not in the store.
    let names = g.state.join("scorenames");
    let mut text = std::fs::read_to_string(&names).unwrap();
    text.push_str(
        "scorename=ghost rootscore=vac:6f8f2141577ba09cd814316ef160871cc2dcadcc user=alice\n",
    );
    std::fs::write(&names, text).unwrap();
    g.start(&[]);
    let err = g.refused("alice", &["spawn", "ghost"]);
    assert!(err.contains("not in the store"), "{err}");
    assert_eq!(
        g.ok("alice", &["status"]),
        "no environments running\n",
        "a failed spawn leaves nothing behind"
    );

    // Two saves of one environment at once: both land, each under its name.
    g.ok("alice", &["spawn", "busybox"]);
    std::fs::write(g.state.join("mnt/alice/busybox/etc/motd"), "both\n").unwrap();
    let port = g.port;
    let runs: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let key = g.tmp.path().join("alice");
            std::thread::spawn(move || {
                Command::new("ssh")
                    .args(["-p", &port.to_string(), "-i"])
                    .arg(key)
                    .args(SSH_OPTS)
                    .args(["alice@127.0.0.1", "save", "busybox", name])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let scores = g.ok("alice", &["scores"]);
    assert!(
        scores.contains("one\n") && scores.contains("two\n"),
        "{scores}"
    );
    g.stop();
}

#[test]
fn a_save_while_the_cache_is_full_works_and_frees_it() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--ram-cache", "1M"]);
    g.ok("alice", &["spawn", "busybox"]);
    let mnt = g.state.join("mnt/alice/busybox");
    let err = std::fs::write(mnt.join("big"), vec![1u8; 2 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let status = g.ok("alice", &["status"]);
    assert!(status.contains("ram 1 MB, 100% changed"), "{status}");
    let saved = g.ok("alice", &["save", "busybox", "full"]);
    assert!(saved.starts_with("full saved\n"), "{saved}");
    assert!(
        g.ok("alice", &["status"]).contains("ram 1 MB, 0% changed"),
        "the save emptied the change cache"
    );
    std::fs::write(mnt.join("more"), vec![2u8; 512 << 10]).unwrap();
    g.stop();
}

#[test]
fn log_in_run_write_save_boom_and_find_the_files_again() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    assert_eq!(g.env_ok(port, "hostname"), "busybox\n");
    // A command's output, exit status, and stdin piped through.
    let out = g.env_ssh(
        "alice",
        port,
        "cat > /root/piped; echo made > /root/file; exit 7",
        "through the pipe\n",
        false,
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        g.env_ok(port, "cat /root/piped /root/file"),
        "through the pipe\nmade\n"
    );
    // tar through ssh, both ways.
    let tar = Command::new("tar")
        .arg("-C")
        .arg(g.tmp.path().join("rootfs/etc"))
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let mut untar = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args([
            "alice@127.0.0.1",
            "mkdir -p /root/etc && tar -C /root/etc -xf - && ls /root/etc",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    untar.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let listing = untar.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap(),
        "group\nmotd\npasswd\n"
    );
    // An interactive terminal: the shell's terminal is in the environment's /dev/pts.
    let out = g.env_ssh("alice", port, "tty", "", true);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The terminal has the client's size (ssh run under `script`, so it has a tty of its own).
    let ssh = format!(
        "ssh -p {port} -i {} {} -tt alice@127.0.0.1 'stty size'",
        g.tmp.path().join("alice").display(),
        SSH_OPTS.join(" ")
    );
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 101 rows 41; {ssh}"),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("41 101"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // status counts the environment's processes and shows the login.
    let status = g.ok("alice", &["status"]);
    assert!(
        status.contains(&format!("ssh -p {port} alice@127.0.0.1")),
        "{status}"
    );

    g.ok("alice", &["save", "busybox", "withfiles"]);
    g.ok("alice", &["boom", "busybox"]);
    assert_eq!(
        g.env_ssh("alice", port, "true", "", false).status.code(),
        Some(255),
        "the login is gone"
    );
    let port2 = spawn_port(&g.ok("alice", &["spawn", "withfiles"]));
    assert_eq!(
        g.env_ok(port2, "cat /root/file /root/etc/motd"),
        "made\nhello\n"
    );
    g.stop();
}

#[test]
fn only_the_owner_logs_in_and_escapes_fail() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--allow-rootful"]);
    // Rootless and rootful environments hold the same line.
    for mode in ["userns=yes", "userns=no"] {
        only_the_owner_logs_in_and_escapes_fail_in(&g, mode);
        g.ok("alice", &["boom", "busybox"]);
    }
    g.stop();
}

fn only_the_owner_logs_in_and_escapes_fail_in(g: &Node, mode: &str) {
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", mode]));
    let bob = g.env_ssh("bob", port, "true", "", false);
    assert_eq!(bob.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&bob.stderr).contains("Permission denied"));

    // No host processes: pid 1 is the environment's init, and few processes exist.
    let ps = g.env_ok(port, "ps -o pid,comm");
    assert!(ps.lines().count() < 8, "{ps}");
    // pid 1 is just `init`: nothing inside names the node's state directory.
    assert_eq!(g.env_ok(port, "cat /proc/1/cmdline"), "init\0");
    let state = g.state.to_str().unwrap().to_string();
    for file in [
        "/proc/1/cmdline",
        "/proc/1/environ",
        "/proc/1/mountinfo",
        "/proc/self/environ",
        "/proc/self/mountinfo",
    ] {
        // Unreadable (pid 1's environ is not the login's to read) is fine too.
        let seen = g.env_ssh("alice", port, &format!("cat {file}"), "", false);
        let seen = String::from_utf8_lossy(&seen.stdout);
        assert!(!seen.contains(&state), "{file} names {state}: {seen}");
    }
    // A device node already in the root (made on the host, as an import could
    // carry one) cannot be opened: the device cgroup allows only the minimal /dev.
    let mnt = g.state.join("mnt/alice/busybox/root/disk");
    let c = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    // SAFETY: valid path; a block device node made by root on the host side.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) },
        0
    );
    let out = g.env_ssh(
        "alice",
        port,
        "head -c 1 /root/disk && echo READ",
        "",
        false,
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("READ"),
        "a host device must not open"
    );
    let node_pid = g.child.as_ref().unwrap().id();
    let kill = g.env_ssh("alice", port, &format!("kill -9 {node_pid}"), "", false);
    assert!(
        !kill.status.success(),
        "the node's pid does not exist in here"
    );
    assert!(
        g.ok("alice", &["status"]).contains("busybox"),
        "the node is alive"
    );
    // Cannot mount, make device nodes, write /sys, or gain privileges.
    // The host's kernel tunables are read-only: write back the value already there.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = g.env_ssh("alice", port, "cat /proc/sys/kernel/core_pattern > /tmp/p && cat /tmp/p > /proc/sys/kernel/core_pattern && echo WROTE", "", false);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("WROTE"),
        "/proc/sys must be read-only"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        pattern
    );
    let out = g.env_ssh(
        "alice",
        port,
        "echo h > /proc/sysrq-trigger && echo WROTE",
        "",
        false,
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("WROTE"),
        "sysrq must be read-only"
    );
    let escapes = "mkdir -p /mnt; mount -t tmpfs x /mnt && echo MOUNTED; \
                   mknod /tmp/sda b 8 0 && echo MKNOD; \
                   touch /sys/x && echo SYSFS; \
                   ls /dev | tr '\\n' ' '; echo; \
                   grep -E 'NoNewPrivs|CapBnd' /proc/self/status";
    let out = g.env_ok(port, escapes);
    assert!(
        !out.contains("MOUNTED") && !out.contains("MKNOD") && !out.contains("SYSFS"),
        "{out}"
    );
    assert!(
        out.contains("fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let bound = out.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    let caps = u64::from_str_radix(bound.split_whitespace().nth(1).unwrap(), 16).unwrap();
    for (cap, name) in [
        (21, "SYS_ADMIN"),
        (16, "SYS_MODULE"),
        (17, "SYS_RAWIO"),
        (19, "SYS_PTRACE"),
        (27, "MKNOD"),
        (13, "NET_RAW"),
    ] {
        assert_eq!(caps & (1 << cap), 0, "CAP_{name} must be dropped ({mode})");
    }
}

#[test]
fn a_fork_bomb_and_a_memory_hog_are_contained() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.colony(&[
        "import",
        "other",
        g.tmp.path().join("rootfs").to_str().unwrap(),
        "--user",
        "alice",
    ]);
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "pids=40", "memory=64M"]));
    let other = spawn_port(&g.ok("alice", &["spawn", "other"]));
    // Fork until the process limit says no.
    let bomb = g.env_ssh(
        "alice",
        port,
        "i=0; while [ $i -lt 200 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done; echo done",
        "",
        false,
    );
    assert!(
        String::from_utf8_lossy(&bomb.stderr).contains("fork") || !bomb.status.success(),
        "the limit bites"
    );
    // The node and the other environment are fine.
    assert!(g.ok("alice", &["status"]).contains("busybox"));
    assert_eq!(g.env_ok(other, "echo fine"), "fine\n");
    // Boom ends every one of the bomb's processes.
    g.ok("alice", &["boom", "busybox"]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "memory=64M"]));
    // A process that eats memory is killed inside the environment.
    let hog = g.env_ssh(
        "alice",
        port,
        "awk 'BEGIN { s = \"x\"; while (1) s = s s }'",
        "",
        false,
    );
    assert!(!hog.status.success(), "the hog must be killed");
    assert_eq!(g.env_ok(port, "echo survived"), "survived\n");
    assert_eq!(g.env_ok(other, "echo fine"), "fine\n");
    g.stop();
}

#[test]
fn twenty_spawn_boom_cycles_leave_nothing_behind() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let mut ports = std::collections::HashSet::new();
    for _ in 0..20 {
        let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
        ports.insert(port);
        assert_eq!(g.env_ok(port, "echo up"), "up\n");
        g.ok("alice", &["boom", "busybox"]);
    }
    assert_eq!(ports.len(), 1, "the login port is reused");
    assert!(g.mounted().is_empty(), "{:?}", g.mounted());
    assert!(g.cgroups().is_empty(), "{:?}", g.cgroups());
    g.stop();
}

/// Idle environments cost the node little memory: FUSE's 16 MiB request
/// buffer per mount thread stays untouched until requests fill it. (glibc
/// once served those buffers from its arenas, zeroing — touching — every
/// byte: about 17 MB of node memory per idle environment.)
#[test]
fn idle_environments_cost_the_node_little_memory() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let root = g.tmp.path().join("rootfs");
    for i in 1..5 {
        g.colony(&[
            "import",
            &format!("busybox{i}"),
            root.to_str().unwrap(),
            "--user",
            "alice",
        ]);
    }
    g.start(&[]);
    let node = g.child.as_ref().unwrap().id();
    let rss = || {
        std::fs::read_to_string(format!("/proc/{node}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    // One environment first: what every node pays once (runtimes, caches).
    let first = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    assert_eq!(g.env_ok(first, "echo up"), "up\n");
    let before = rss();
    for i in 1..5 {
        let port = spawn_port(&g.ok("alice", &["spawn", &format!("busybox{i}")]));
        assert_eq!(g.env_ok(port, "echo up"), "up\n");
    }
    let grown_kb = rss().saturating_sub(before);
    assert!(
        grown_kb < 4 * 4096,
        "four more idle environments grew the node by {grown_kb} kB"
    );
    g.stop();
}

#[test]
fn files_move_with_scp_and_sftp() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let opts = |cmd: &mut Command| {
        cmd.args(["-P", &port.to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS);
    };
    let local = g.tmp.path().join("upload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let mut scp = Command::new("scp");
    opts(&mut scp);
    let out = scp
        .arg(&local)
        .arg("alice@127.0.0.1:/root/uploaded.bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scp up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        g.env_ok(port, "wc -c < /root/uploaded.bin").trim(),
        "300000"
    );
    let back = g.tmp.path().join("back.bin");
    let mut scp = Command::new("scp");
    opts(&mut scp);
    let out = scp
        .arg("alice@127.0.0.1:/root/uploaded.bin")
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scp down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let batch = g.tmp.path().join("batch");
    std::fs::write(&batch, "mkdir /root/viasftp\nput /etc/hostname /root/viasftp/h\nls /root/viasftp\nrename /root/viasftp/h /root/viasftp/renamed\nls /root/viasftp\n").unwrap();
    let mut sftp = Command::new("sftp");
    opts(&mut sftp);
    let out = sftp
        .arg("-b")
        .arg(&batch)
        .arg("alice@127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/root/viasftp/renamed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        g.env_ok(port, "cat /root/viasftp/renamed"),
        std::fs::read_to_string("/etc/hostname").unwrap()
    );
    g.stop();
}

/// Waits (10 s at most) until none of `pids` lives (zombies count as gone),
/// else fails: the environment outlived `what`.
fn wait_until_gone(pids: impl Iterator<Item = u32>, what: &str) {
    let pids: Vec<u32> = pids.collect();
    let alive = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(alive) {
        assert!(
            std::time::Instant::now() < deadline,
            "the environment outlived {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Host pids of the children of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?;
        (ppid.trim().parse() == Ok(parent)).then_some(pid)
    })
    .collect()
}

/// The node's init helpers (one per environment), by their command line.
fn init_helpers_of(node: u32) -> Vec<u32> {
    children_of(node)
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"init\0"))
        .collect()
}

/// The host pid of an environment's pid 1: the child of the node's `init`
/// helper (its command line names no host path to search for).
fn init_pid_of_only_environment(node: u32) -> Option<u32> {
    match init_helpers_of(node).as_slice() {
        [helper] => children_of(*helper).into_iter().next(),
        _ => None,
    }
}

#[test]
fn an_environment_whose_init_died_is_never_entered_again() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    // Signals from inside cannot end pid 1 (the kernel drops them)...
    let _ = g.env_ssh(
        "alice",
        port,
        "kill -TERM 1; kill -INT 1; kill -KILL 1",
        "",
        false,
    );
    // (pid 1 once took a SIGTERM from inside as the node's and ended the
    // environment a second later: look after that second.)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(g.env_ok(port, "hostname"), "busybox\n");
    // ...but it can die (an OOM kill, say): simulate that from the host.
    let node = g.child.as_ref().unwrap().id();
    let init = init_pid_of_only_environment(node).expect("the environment's pid 1 on the host");
    // SAFETY: kill with a pid just read from /proc.
    assert_eq!(unsafe { libc::kill(init as i32, libc::SIGKILL) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A new login must fail, not land in whatever now has that pid.
    let out = g.env_ssh("alice", port, "cat /proc/1/cmdline; hostname", "", false);
    assert!(
        !out.status.success(),
        "entered a dead environment: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // boom still cleans up after it.
    assert_eq!(g.ok("alice", &["boom", "busybox"]), "busybox BOOMed\n");
    assert!(g.mounted().is_empty() && g.cgroups().is_empty());
    g.stop();
}

#[test]
fn large_input_and_output_at_once_do_not_deadlock_a_login() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut child = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["alice@127.0.0.1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "the echo must be byte for byte");
    g.stop();
}

#[test]
fn a_root_whose_proc_is_a_symlink_is_refused() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let bad = g.tmp.path().join("badroot");
    std::fs::create_dir_all(bad.join("bin")).unwrap();
    std::os::unix::fs::symlink("/etc", bad.join("proc")).unwrap();
    g.colony(&["import", "bad", bad.to_str().unwrap(), "--user", "alice"]);
    g.start(&[]);
    let err = g.refused("alice", &["spawn", "bad"]);
    assert!(
        err.contains("/proc in the root is not a directory"),
        "{err}"
    );
    assert_eq!(g.ok("alice", &["status"]), "no environments running\n");
    assert!(
        g.mounted().is_empty() && g.cgroups().is_empty(),
        "a refused spawn leaves nothing"
    );
    g.stop();
}

/// A static C program that makes each refused call with harmless arguments
/// (unfiltered, most would fail with EFAULT, EINVAL or EBADF, or succeed)
/// and the calls that must keep working, printing `name errno` per line.
fn syscall_probe_source() -> String {
    let mut calls = String::new();
    for name in cpu::env::seccomp::refused_names() {
        calls.push_str(&format!("    {{\"{name}\", SYS_{name}}},\n"));
    }
    format!(
        r#"#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {{ const char *name; long nr; }} calls[] = {{
{calls}    {{"clone3", SYS_clone3}},
}};

static void *thread(void *arg) {{ return arg; }}

static int ran(int ok) {{ return ok ? 0 : (errno ? errno : -1); }}

int main(void) {{
    for (unsigned i = 0; i < sizeof calls / sizeof calls[0]; i++) {{
        const char *n = calls[i].name;
        long r;
        errno = 0;
        if (!strcmp(n, "add_key"))
            r = syscall(SYS_add_key, "user", "colony-probe", "x", 1, -4 /* @u */);
        else if (!strcmp(n, "keyctl"))
            r = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -4, 0);
        else if (!strcmp(n, "request_key"))
            r = syscall(SYS_request_key, "user", "colony-probe", 0, 0);
        else if (!strcmp(n, "unshare"))
            r = syscall(SYS_unshare, CLONE_NEWUSER);
        else if (!strcmp(n, "clone")) {{
            r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
            if (r == 0) _exit(0);
        }} else if (!strcmp(n, "socket"))
            r = syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
        else if (!strcmp(n, "personality"))
            r = syscall(SYS_personality, ADDR_NO_RANDOMIZE);
        else
            r = syscall(calls[i].nr, 0, 0, 0, 0, 0, 0);
        printf("%s %d\n", n, r == -1 ? errno : 0);
    }}
    pthread_t t;
    printf("thread %d\n", pthread_create(&t, 0, thread, 0) == 0 && pthread_join(t, 0) == 0 ? 0 : -1);
    int status = -1;
    pid_t pid = fork();
    if (pid == 0) _exit(7);
    printf("fork %d\n", pid > 0 && waitpid(pid, &status, 0) == pid && WEXITSTATUS(status) == 7 ? 0 : -1);
    pid = fork();
    if (pid == 0) {{ execl("/bin/true", "true", (char *)0); _exit(99); }}
    printf("execve %d\n", waitpid(pid, &status, 0) == pid && WEXITSTATUS(status) == 0 ? 0 : -1);
    printf("mmap %d\n", ran(mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED));
    printf("inet_socket %d\n", ran(socket(AF_INET, SOCK_STREAM, 0) >= 0));
    pid = fork();
    if (pid == 0) {{ ptrace(PTRACE_TRACEME, 0, 0, 0); raise(SIGSTOP); _exit(0); }}
    int traced = waitpid(pid, &status, 0) == pid && WIFSTOPPED(status)
        && ptrace(PTRACE_CONT, pid, 0, 0) == 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status);
    printf("ptrace %d\n", traced ? 0 : -1);
    return 0;
}}
"#
    )
}

/// The syscall filter, from inside, as root of the environment: every
/// refused call answers EPERM (clone3 ENOSYS, so libc falls back to clone),
/// what programs and debuggers need still works, and a key "added" inside
/// is nowhere in the node's keyrings.
#[test]
fn refused_syscalls_are_eperm_inside_and_ordinary_ones_work() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let probe = build_probe(&g, "probe", &syscall_probe_source());
    g.start(&["--allow-rootful"]);
    // Rootless and rootful environments refuse the same calls.
    for mode in ["userns=yes", "userns=no"] {
        let port = spawn_port(&g.ok("alice", &["spawn", "busybox", mode]));
        std::fs::copy(&probe, g.state.join("mnt/alice/busybox/probe")).unwrap();
        let out = g.env_ok(port, "/probe");
        check_probe_results(&out, mode);
        g.ok("alice", &["boom", "busybox"]);
    }
    g.stop();
}

/// The static probe's report: each refused call EPERM, clone3 ENOSYS, the
/// ordinary calls working, and no key in the node's keyrings.
fn check_probe_results(out: &str, mode: &str) {
    let results: std::collections::HashMap<&str, i32> = out
        .lines()
        .filter_map(|l| {
            let (name, errno) = l.split_once(' ')?;
            Some((name, errno.parse().ok()?))
        })
        .collect();
    for name in cpu::env::seccomp::refused_names() {
        assert_eq!(
            results.get(name),
            Some(&libc::EPERM),
            "{name} inside ({mode}): {out}"
        );
    }
    assert_eq!(results.get("clone3"), Some(&libc::ENOSYS), "{mode}: {out}");
    for name in ["thread", "fork", "execve", "mmap", "inet_socket", "ptrace"] {
        assert_eq!(
            results.get(name),
            Some(&0),
            "{name} must work inside ({mode}): {out}"
        );
    }
    // SAFETY: request_key with valid strings; it searches the calling (host
    // root) process's keyrings.
    let found = unsafe {
        libc::syscall(
            libc::SYS_request_key,
            c"user".as_ptr(),
            c"colony-probe".as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    assert_eq!(found, -1, "the key must not be in the node's keyrings");
}

/// A TCP connection to `addr` is refused or times out (nothing listens for us).
fn unreachable(addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_err()
}

/// Starts busybox's web server inside the environment on `port`, serving a
/// file `hello` holding `text`, and checks from inside that it answers.
fn serve_hello_inside(g: &Node, port: u16, text: &str) {
    g.env_ok(
        port_of_login(g),
        // Its stdio must not hold the login session open.
        &format!(
            "mkdir -p /www && echo {text} > /www/hello && httpd -p {port} -h /www </dev/null >/dev/null 2>&1"
        ),
    );
    let got = g.env_ok(
        port_of_login(g),
        &format!("wget -q -O - http://127.0.0.1:{port}/hello"),
    );
    assert_eq!(got.trim(), text, "the server answers inside");
}

/// The login port of alice's only environment, from `status`.
fn port_of_login(g: &Node) -> u16 {
    spawn_port(&g.ok("alice", &["status"]).replace('\t', "\n"))
}

/// Invariant: an environment's network is its own. A server inside on
/// 0.0.0.0 is not reachable at the node's addresses, and the node's
/// loopback services (the unauthenticated venti, say) are not reachable from
/// inside, neither at 127.0.0.1 nor through the user-mode gateway.
#[test]
fn a_private_network_keeps_servers_in_and_the_nodes_loopback_out() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    g.ok("alice", &["spawn", "busybox"]);
    assert!(g.ok("alice", &["status"]).contains("net private"));
    let inside = 20_980 + (std::process::id() % 17) as u16;
    serve_hello_inside(&g, inside, "inside");
    assert!(
        unreachable(&format!("127.0.0.1:{inside}")),
        "a listener inside must not be on the node's loopback"
    );
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    service.set_nonblocking(true).unwrap();
    let login = port_of_login(&g);
    for host in ["127.0.0.1", "10.0.2.2"] {
        let out = g.env_ssh(
            "alice",
            login,
            &format!("echo x | nc -w 2 {host} {port} && echo REACHED"),
            "",
            false,
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("REACHED"),
            "the node's loopback reached from inside via {host}"
        );
    }
    assert!(
        service.accept().is_err(),
        "nothing came in from the environment"
    );
}

/// `net=host` shares the node's network, so it is refused unless the node's
/// admin allows it; where allowed, a server inside is on the node's loopback.
#[test]
fn net_host_is_refused_unless_the_node_allows_it() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let err = g.refused("alice", &["spawn", "busybox", "net=host"]);
    assert!(err.contains("--allow-host-net"), "{err}");
    g.stop();
    g.start(&["--allow-host-net"]);
    g.ok("alice", &["spawn", "busybox", "net=host"]);
    assert!(g.ok("alice", &["status"]).contains("net host"));
    let inside = 21_980 + (std::process::id() % 17) as u16;
    serve_hello_inside(&g, inside, "shared");
    assert!(
        !unreachable(&format!("127.0.0.1:{inside}")),
        "net=host shares the node's ports"
    );
    let err = g.refused("alice", &["spawn", "busybox", "publish=80"]);
    assert!(err.contains("already running"), "{err}");
}

/// `publish=PORT` forwards a free node port from the pool to the
/// environment's port, says which in the reply and in `status`, and a client
/// outside reaches the server inside through it.
#[test]
fn a_published_port_reaches_the_environments_server() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    // Below every test's login ports (21000-32767) and Linux's ephemeral
    // range, a block of this run's own.
    let base = 19_000 + (std::process::id() % 50) as u16 * 10;
    let pool = format!("{base}-{}", base + 9);
    g.start(&["--publish-ports", &pool]);
    let reply = g.ok("alice", &["spawn", "busybox", "publish=8080"]);
    let node_port: u16 = reply
        .lines()
        .find_map(|l| l.strip_prefix("port 8080 published at 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{reply}"))
        .parse()
        .unwrap();
    assert!((base..base + 10).contains(&node_port));
    assert!(
        g.ok("alice", &["status"])
            .contains(&format!("127.0.0.1:{node_port}->8080"))
    );
    serve_hello_inside(&g, 8080, "published");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node_port)).unwrap();
    std::io::Write::write_all(&mut s, b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.ends_with("published\n"), "{reply}");
    // boom frees the port and ends the network stack.
    g.ok("alice", &["boom", "busybox"]);
    assert!(unreachable(&format!("127.0.0.1:{node_port}")));
    let left = Command::new("pgrep")
        .args(["-f", &format!("slirp4netns.*{}", g.state.display())])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "slirp4netns left behind");
}

/// An environment's own network still gets out: from inside, a web server
/// on another host (a test namespace, through the node's namespace) answers.
#[test]
fn outbound_connections_from_a_private_network_work() {
    if !can_mount() {
        return;
    }
    let web = WebHost::new(8081);
    let hosts = &web.hosts;
    let mut g = Node::new();
    g.netns = Some(hosts.name(0).to_string());
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let got = g.env_ok(
        port,
        &format!("wget -q -O - http://{}:8081/hello", hosts.addrs[1]),
    );
    assert_eq!(got, "from another host\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Every file of the environment's root (its own file system only, and not
/// busybox's hundreds of links) as `UID GID MODE PATH`, sorted. /proc and
/// /sys are left out: they are the kernel's, and a rootless environment
/// shows their owner, host root, as nobody.
const OWNERS: &str = "find / -xdev ! -path '/bin/*' ! -path /proc ! -path /sys \
                      -exec stat -c '%u %g %a %n' {} + | sort";

/// The uid (real, effective, saved, fs) of a host process, as its status says.
fn host_uids(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().map(|n| n.parse().ok()).collect()
}

/// Invariants: a rootless environment's processes, pid 1 and logins alike,
/// are root inside and never root (nor any id below the leased range) on the
/// host; files show their archived owners; a save stores owners as they are
/// inside, exactly, whichever way the saved root is spawned again; ids the
/// namespace cannot show are kept as archived.
#[test]
fn a_rootless_environment_is_root_inside_unprivileged_outside_and_keeps_owners() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    if !rootful_suite() {
        g.start(&[]);
        let err = g.refused("alice", &["spawn", "busybox", "userns=no"]);
        assert!(err.contains("--allow-rootful"), "{err}");
        g.ok("alice", &["spawn", "busybox"]);
        assert!(
            g.ok("alice", &["status"]).contains("rootless"),
            "the default"
        );
        g.ok("alice", &["boom", "busybox"]);
        g.stop();
    }
    g.start(&["--allow-rootful"]);
    // Owners to keep: made in a rootful environment, saved.
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "userns=no"]));
    g.env_ok(
        port,
        "mkdir -p /home/u /srv2 && touch /home/u/a /home/u/b /srv2/far /etc/setuid && \
         chown 1000:1000 /home/u /home/u/a && chown 4242:77 /home/u/b && \
         chown 70000:70001 /srv2/far && chmod 4755 /etc/setuid && chmod 1777 /srv2",
    );
    let plain = g.env_ok(port, OWNERS);
    assert!(plain.contains("70000 70001 644 /srv2/far"), "{plain}");
    assert!(!g.ok("alice", &["status"]).contains("rootless"));
    g.ok("alice", &["save", "busybox", "owners"]);
    g.ok("alice", &["boom", "busybox"]);

    let port = spawn_port(&g.ok("alice", &["spawn", "owners", "userns=yes"]));
    assert!(g.ok("alice", &["status"]).contains("rootless"));
    let id = g.env_ok(port, "id");
    assert!(id.starts_with("uid=0(root) gid=0(root)"), "{id}");
    // Files show their archived owners; the id the namespace cannot show is nobody.
    let rootless = g.env_ok(port, OWNERS);
    assert_eq!(
        rootless,
        plain.replace("70000 70001 644 /srv2/far", "65534 65534 644 /srv2/far"),
    );
    // Root inside can do root's work on its own files and directories.
    let out = g.env_ok(
        port,
        "echo x > /run/pid && echo y > /etc/made && mkdir /dev/shm/d && \
         chown 1234:4321 /home/u/a && chmod 600 /home/u/b && cat /home/u/b && \
         tty; ls -ln /run/pid /etc/made | cut -c1-30",
    );
    assert!(out.contains("not a tty"), "{out}");
    assert!(!out.contains("Permission denied"), "{out}");
    let tty = g.env_ssh("alice", port, "tty && stat -c '%u %g' $(tty)", "", true);
    let tty = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    assert_eq!(
        tty.lines().nth(1).map(str::trim),
        Some("0 0"),
        "the terminal is root's inside: {tty}"
    );

    // On the host: every process of the environment is one unprivileged id.
    let mut ssh = g
        .command("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "sleep 30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let node = g.child.as_ref().unwrap().id();
    let init = init_pid_of_only_environment(node).expect("the environment's pid 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let procs = loop {
        let procs: Vec<u32> = g
            .cgroups()
            .iter()
            .map(|c| std::fs::read_to_string(format!("{c}/cgroup.procs")).unwrap_or_default())
            .collect::<String>()
            .lines()
            .filter_map(|p| p.parse().ok())
            .collect();
        let sleeping = procs.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sleep\n")
        });
        if sleeping || std::time::Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let base = host_uids(init).unwrap()[0];
    assert!(base >= 0x7000_0000, "pid 1 runs as host uid {base}");
    // The processes inside: in pid 1's pid namespace (the node's helpers
    // share the cgroups from outside it).
    let pid_ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let inside = pid_ns(init).unwrap();
    let mut seen_sleep = false;
    for p in procs.iter().chain([&init]) {
        if pid_ns(*p).as_ref() != Some(&inside) {
            continue;
        }
        let Some(uids) = host_uids(*p) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        seen_sleep |= comm == "sleep\n";
        assert!(
            uids.iter().all(|&u| u == base),
            "{} (pid {p}) runs as {uids:?} on the host",
            comm.trim()
        );
    }
    assert!(seen_sleep, "the login's sleep was among {procs:?}");
    let _ = ssh.kill();
    let _ = ssh.wait();
    // The mount, seen from the host, holds the shifted owners, where only
    // host root may reach it.
    use std::os::unix::fs::MetadataExt;
    let mounts = std::fs::metadata(g.state.join("mnt")).unwrap();
    assert_eq!(mounts.mode() & 0o777, 0o700);
    let mount = g
        .mounted()
        .into_iter()
        .next()
        .expect("the environment's mount");
    let made = std::fs::metadata(format!("{mount}/etc/made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (base, base));
    let a = std::fs::metadata(format!("{mount}/home/u/a")).unwrap();
    assert_eq!((a.uid(), a.gid()), (base + 1234, base + 4321));

    // Saved and spawned again, rootless or not: owners exactly as inside.
    let before = g.env_ok(port, OWNERS);
    g.ok("alice", &["save", "owners", "owners2"]);
    g.ok("alice", &["boom", "owners"]);
    let port = spawn_port(&g.ok("alice", &["spawn", "owners2", "userns=no"]));
    let after_plain = g.env_ok(port, OWNERS);
    assert_eq!(
        after_plain.replace("70000 70001 644 /srv2/far", "65534 65534 644 /srv2/far"),
        before,
        "the save kept owners as they are inside"
    );
    assert!(
        after_plain.contains("1234 4321 644 /home/u/a"),
        "{after_plain}"
    );
    assert!(after_plain.contains("0 0 644 /etc/made"), "{after_plain}");
    assert!(
        after_plain.contains("70000 70001 644 /srv2/far"),
        "{after_plain}"
    );
    g.ok("alice", &["boom", "owners2"]);
    let port = spawn_port(&g.ok("alice", &["spawn", "owners2", "userns=yes"]));
    assert_eq!(g.env_ok(port, OWNERS), before);
    g.ok("alice", &["boom", "owners2"]);
    assert!(g.mounted().is_empty() && g.cgroups().is_empty());
    g.stop();
}

/// Invariant: no environment runs unwatched. If its init helper is killed
/// (an OOM kill in its cgroup, say), pid 1 and everything inside die with
/// it, and boom still leaves nothing behind.
#[test]
fn an_environment_dies_with_its_helper() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    g.env_ok(port, "sleep 1000 </dev/null >/dev/null 2>&1 &");
    let node = g.child.as_ref().unwrap().id();
    let helper = *init_helpers_of(node).first().expect("the init helper");
    let init = init_pid_of_only_environment(node).expect("pid 1");
    let inside = children_of(init);
    assert!(!inside.is_empty());
    // SAFETY: SIGKILL of the helper process this test found.
    unsafe { libc::kill(helper as i32, libc::SIGKILL) };
    wait_until_gone(std::iter::once(init).chain(inside), "its helper");
    g.ok("alice", &["boom", "busybox"]);
    assert!(g.cgroups().is_empty() && g.mounted().is_empty());
    g.stop();
}

/// An interactive `ssh -tt … COMMAND` to an environment: what it prints is
/// gathered as it comes, and input goes in when the test says.
struct Attached {
    child: Child,
    input: std::process::ChildStdin,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Attached {
    fn open(g: &Node, key: &str, port: u16, command: &str) -> Attached {
        let mut cmd = g.command("ssh");
        cmd.args(["-p", &port.to_string(), "-i"])
            .arg(g.tmp.path().join(key))
            .args(SSH_OPTS)
            .arg("-tt")
            .arg(format!("{key}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Attached { child, input, seen }
    }

    fn send(&mut self, text: &str) {
        self.input.write_all(text.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits (up to 20 s) for the session to end: a hang fails the test
    /// instead of holding up the suite.
    fn ended(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the session did not end; it printed {:?}", self.text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits (up to 10 s) until the output holds `what`.
    fn expect(&self, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.text().contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} in {:?}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn a_hub_shell_outlives_its_connection_with_its_state() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));

    // First attachment: state in the shell, and a background job.
    let mut one = Attached::open(&g, "alice", port, "hub");
    one.send("cd /tmp; X=forty-two; sleep 1000 &\n");
    one.send("echo marker-$X\n");
    one.expect("marker-forty-two");
    // The connection drops (as a closed laptop): the shell runs on.
    let _ = one.child.kill();
    let _ = one.child.wait();

    // Reattached: the recent output first, then the same shell.
    let mut two = Attached::open(&g, "alice", port, "hub main");
    two.expect("marker-forty-two");
    two.send("pwd; echo again-$X; jobs\n");
    two.expect("again-forty-two");
    let text = two.text();
    assert!(text.contains("/tmp"), "{text}");
    assert!(
        text.contains("sleep 1000"),
        "the background job runs: {text}"
    );
    // An interrupt reaches the foreground job, not the shell.
    two.send("sleep 200\n");
    std::thread::sleep(std::time::Duration::from_millis(300));
    two.send("\x03");
    two.send("echo after-the-interrupt-$X\n");
    two.expect("after-the-interrupt-forty-two");
    // %detach leaves it running and ends the session cleanly.
    two.send("%status\n");
    two.expect("main: running");
    two.send("%detach\n");
    two.expect("[detached from main; it runs on]");
    let status = two.ended();
    assert!(status.success(), "{status:?}");

    // Two attachments share one shell; another name is another shell.
    let mut three = Attached::open(&g, "alice", port, "hub");
    let mut four = Attached::open(&g, "alice", port, "hub");
    three.send("echo shared-$X\n");
    four.expect("shared-forty-two");
    let mut other = Attached::open(&g, "alice", port, "hub work");
    other.send("echo other-[$X]\n");
    other.expect("other-[]");
    other.send("%list\n");
    other.expect("work\tup");
    // %attach moves the session to another shell; the first runs on.
    other.send("%attach spare\n");
    other.expect("[work runs on; attached to spare]");
    other.send("echo in-spare\n");
    other.expect("in-spare");
    other.send("%status\n");
    other.expect("spare: running");
    // Ctrl-D at the prompt ends the shell, and its sessions with it.
    four.send("\x04");
    assert!(three.ended().success());
    assert!(four.ended().success());
    other.send("%detach\n");
    assert!(other.ended().success());

    // Only the owner reaches the shells; a bad name is refused.
    let out = g.env_ssh("bob", port, "hub", "", true);
    assert!(!out.status.success());
    let out = g.env_ssh("alice", port, "hub ../etc", "", false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad shell name"));
}

#[test]
fn the_nodes_requests_replies_and_events_are_hubs() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let addr = format!("127.0.0.1:{}", 29000 + std::process::id() % 500);
    g.start(&["--hubs-listen", &addr]);
    g.ok("alice", &["scores"]);
    g.ok("alice", &["spawn", "busybox"]);
    g.refused("bob", &["spawn", "busybox"]);
    g.ok("alice", &["boom", "busybox"]);
    // Reads a hub's backlog (a reader starts at the oldest kept byte),
    // then an eof ends it.
    let read = |hub: &str, user: &str| -> (bool, String, String) {
        let child = Command::new(COLONY)
            .args(["hub", "cat", hub, "--at", &addr, "--user", user])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let ok = Command::new(COLONY)
            .args(["hub", "ctl", "eof", hub, "--at", &addr, "--user", "admin"])
            .status()
            .unwrap();
        assert!(ok.success());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, requests, _) = read("sto.in", "admin");
    for want in [
        "alice scores",
        "alice spawn busybox",
        "bob spawn busybox",
        "alice boom busybox",
    ] {
        assert!(requests.contains(want), "{want:?} in {requests}");
    }
    let (_, replies, _) = read("sto.out", "admin");
    assert!(
        replies.contains("bob 1 busybox not found for bob"),
        "{replies}"
    );
    let (_, events, _) = read("events", "admin");
    assert!(
        events.contains("alice spawn busybox: busybox spawned from vac:"),
        "{events}"
    );
    // The whole reply on one line: the login after "log in with:" too
    // (before, every spawn event ended there).
    let spawned = events
        .lines()
        .find(|l| l.contains("alice spawn busybox:"))
        .unwrap();
    assert!(spawned.contains("ssh -p "), "{spawned}");
    assert!(
        events.contains("alice boom busybox: busybox BOOMed"),
        "{events}"
    );
    assert!(
        !events.contains("scores"),
        "only what changes the grid: {events}"
    );
    // A user's own stream holds their requests alone, and is theirs.
    let (_, mine, _) = read("alice.out", "alice");
    assert!(
        mine.contains("alice 0 busybox BOOMed") && !mine.contains("bob"),
        "{mine}"
    );
    let (ok, _, err) = read("alice.out", "bob");
    assert!(!ok && err.contains("permission denied"), "{err}");
}

impl Node {
    /// `ssh … ARGS` as `user` with `input` (any bytes) on stdin.
    fn ssh_bytes(&self, user: &str, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .door_command(user, user, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // The node may refuse before reading it all.
        let feeding = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        feeding.join().unwrap();
        out
    }
}

#[test]
fn a_tar_stream_imported_through_the_front_door_spawns_within_the_quota() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let root = g.tmp.path().join("rootfs");
    std::fs::write(root.join("etc/brought"), "brought over ssh\n").unwrap();
    let tar = tar_of(&root);
    // tar c -C DIR . | ssh -p 16999 alice@node import mine
    let out = g.ssh_bytes("alice", &["import", "mine"], &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with("mine vac:") && said.contains("new"),
        "{said}"
    );
    assert!(g.ok("alice", &["scores"]).contains("mine\n"));
    let port = spawn_port(&g.ok("alice", &["spawn", "mine"]));
    assert_eq!(g.env_ok(port, "cat /etc/brought"), "brought over ssh\n");
    g.ok("alice", &["boom", "mine"]);

    // A stream cut short, garbage, and a taken name: refused, nothing bound.
    let out = g.ssh_bytes("alice", &["import", "half"], &tar[..tar.len() / 2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing was bound"),
        "{err}"
    );
    let out = g.ssh_bytes("alice", &["import", "junk"], &[7u8; 5000]);
    assert!(!out.status.success());
    let out = g.ssh_bytes("alice", &["import", "mine"], &tar);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is taken"));
    let scores = g.ok("alice", &["scores"]);
    assert!(
        !scores.contains("half") && !scores.contains("junk"),
        "{scores}"
    );

    // A quota of new bytes: the same tree again costs nothing (its blocks
    // are stored), a new megabyte does not fit.
    g.colony(&["user", "quota", "bob", "100K"]);
    let out = g.ssh_bytes("bob", &["import", "bobs"], &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = g.ok("bob", &["status"]);
    assert!(
        status.contains("quota: ") && status.contains("of 100.0 KiB"),
        "{status}"
    );
    let big = g.tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let noise: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(big.join("noise"), noise).unwrap();
    let tar2 = tar_of(&big);
    let out = g.ssh_bytes("bob", &["import", "toobig"], &tar2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("over your quota"),
        "{err}"
    );
    assert!(!g.ok("bob", &["scores"]).contains("toobig"));
    g.stop();
}

/// An OCI image layout of two layers (gzip, then zstd) in `dir`, tagged
/// `v1`: the second deletes `etc/a`, replaces `etc/b`, and makes `dir`
/// opaque (its `x` goes) with a new `y`.
fn oci_layout(g: &Node, dir: &Path) {
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let l1 = dir.join("l1");
    let l2 = dir.join("l2");
    sh(&format!(
        "cp -a {} {}",
        g.tmp.path().join("rootfs").display(),
        l1.display()
    ));
    std::fs::create_dir_all(l1.join("dir")).unwrap();
    std::fs::write(l1.join("etc/a"), "a from layer 1\n").unwrap();
    std::fs::write(l1.join("etc/b"), "b from layer 1\n").unwrap();
    std::fs::write(l1.join("dir/x"), "x from layer 1\n").unwrap();
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::create_dir_all(l2.join("dir")).unwrap();
    std::fs::write(l2.join("etc/.wh.a"), "").unwrap();
    std::fs::write(l2.join("etc/b"), "b from layer 2\n").unwrap();
    std::fs::write(l2.join("dir/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("dir/y"), "y from layer 2\n").unwrap();
    let layout = dir.join("image");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let d = dir.display();
    sh(&format!(
        "tar -C {d}/l1 -cf - . | gzip -n > {d}/l1.tgz && tar -C {d}/l2 -cf - . | zstd -q > {d}/l2.tzst"
    ));
    let blob = |path: &Path| -> (String, u64) {
        let hex = sh(&format!("sha256sum {}", path.display()))[..64].to_string();
        std::fs::copy(path, layout.join("blobs/sha256").join(&hex)).unwrap();
        (
            format!("sha256:{hex}"),
            std::fs::metadata(path).unwrap().len(),
        )
    };
    let (g1, s1) = blob(&dir.join("l1.tgz"));
    let (g2, s2) = blob(&dir.join("l2.tzst"));
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let (gc, sc) = blob(&dir.join("config.json"));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{gc}","size":{sc}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{g1}","size":{s1}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{g2}","size":{s2}}}]}}"#
    );
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    let (gm, sm) = blob(&dir.join("manifest.json"));
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{gm}","size":{sm},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

#[test]
fn an_oci_image_of_two_layers_spawns_with_exactly_its_files() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let dir = g.tmp.path().join("oci");
    std::fs::create_dir_all(&dir).unwrap();
    oci_layout(&g, &dir);
    let layout = dir.join("image");
    // With the node stopped, straight into its store.
    g.colony(&[
        "import",
        "image",
        "--oci",
        &format!("{}:v1", layout.display()),
        "--user",
        "alice",
    ]);
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "image"]));
    let listing = g.env_ok(port, "ls -a /etc /dir; cat /etc/b /dir/y");
    assert_eq!(
        listing,
        "/dir:\n.\n..\ny\n\n/etc:\n.\n..\nb\ngroup\nmotd\npasswd\nb from layer 2\ny from layer 2\n"
    );
    g.ok("alice", &["boom", "image"]);

    // The same layout as a tar through the front door, and a bad tag.
    let tar = tar_of(&layout);
    let out = g.ssh_bytes("alice", &["import", "viassh", "oci:v1"], &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = spawn_port(&g.ok("alice", &["spawn", "viassh"]));
    assert_eq!(
        g.env_ok(port, "ls -a /etc /dir; cat /etc/b /dir/y"),
        listing
    );
    g.ok("alice", &["boom", "viassh"]);
    let out = g.ssh_bytes("alice", &["import", "badtag", "oci:v2"], &tar);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no image tagged"),
        "{err}"
    );

    // `colony import` while the node runs goes through the node.
    let out = Command::new(COLONY)
        .args(["import", "live"])
        .arg(g.tmp.path().join("rootfs"))
        .args(["--user", "alice", "--state"])
        .arg(&g.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("live vac:"));
    let port = spawn_port(&g.ok("alice", &["spawn", "live"]));
    assert_eq!(g.env_ok(port, "cat /etc/motd"), "hello\n");
    g.ok("alice", &["boom", "live"]);
    // Every import leaves a line in the node's log, the admin's too
    // (before, an admin import left none).
    let log = g.stop();
    assert!(
        log.lines().any(|l| l.contains("imported")
            && l.contains("by=\"admin\"")
            && l.contains("name=\"live\"")),
        "{log}"
    );
}

/// A plain HTTP GET: (status line, body).
/// `HEAD path`: the status line and what came after the head (nothing).
fn http_head(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn metrics_pass_promtool_and_the_status_page_shows_a_live_environment() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = g.admin.clone().expect("an admin address");
    g.ok("alice", &["spawn", "busybox"]);
    // carol's key is not registered: a login refused.
    assert!(!g.ssh("carol", &["scores"]).status.success());
    // An import refused (not a tar) is a command like the others.
    assert!(
        !g.ssh_bytes("bob", &["import", "junk"], &[7u8; 5000])
            .status
            .success()
    );
    // An import of blocks the store holds counts them deduplicated.
    let tar = tar_of(&g.tmp.path().join("rootfs"));
    let before = http_get(&admin, "/metrics").1;
    let deduplicated = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("colony_store_blocks_deduplicated_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        g.ssh_bytes("alice", &["import", "again"], &tar)
            .status
            .success()
    );
    assert!(
        deduplicated(&http_get(&admin, "/metrics").1) > deduplicated(&before),
        "an import of stored blocks counted no deduplication"
    );

    // A refused login is counted when the server is done with its
    // connection, which can be a moment after the client has given up.
    let refused = "colony_frontdoor_logins_refused_total 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, metrics) = loop {
        let (status, metrics) = http_get(&admin, "/metrics");
        if metrics.contains(refused) || std::time::Instant::now() > deadline {
            break (status, metrics);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.contains("200"), "{status}");
    // HEAD, as monitoring checks send it: the head alone (it was 405).
    let (head_status, head_body) = http_head(&admin, "/metrics");
    assert!(head_status.contains("200"), "{head_status}");
    assert!(head_body.is_empty(), "{head_body}");
    for want in [
        refused,
        "colony_spawn_seconds_count 1",
        "colony_environments{state=\"running\"} 1",
        "colony_store_bytes ",
        "colony_commands_total{command=\"spawn\",outcome=\"ok\"} 1",
        "colony_commands_total{command=\"import\",outcome=\"refused\"} 1",
        "colony_environment_cache_capacity_bytes{user=\"alice\",environment=\"busybox\"} 104857600",
        "colony_environment_cache_used_bytes{user=\"alice\",environment=\"busybox\"} ",
    ] {
        assert!(metrics.contains(want), "no {want:?} in\n{metrics}");
    }
    // Prometheus's own checker.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin
                .take()
                .unwrap()
                .write_all(metrics.as_bytes())
                .unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => panic!("promtool (Debian's prometheus, which .ci/run installs): {e}"),
    }

    // The status page, loaded and run by a real browser.
    let profile = g.tmp.path().join("chromium");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{admin}/"))
        .output()
        .expect("chromium (Debian's, which .ci/run installs)");
    let dom = String::from_utf8_lossy(&out.stdout);
    // A table with columns (before: one raw status line per environment).
    assert!(
        dom.contains("<td>alice</td><td>busybox</td><td><code>busybox ")
            && dom.contains("<td>this node</td><td class=\"running\">running</td>")
            && dom.contains("<span class=\"bar\">"),
        "the page does not show alice's busybox in columns: {dom}"
    );
    // Events carry their time, and failures are among them (before:
    // neither).
    assert!(dom.contains("alice spawn busybox"), "no spawn event: {dom}");
    assert!(
        dom.contains("UTC</td><td class=\"failure\">refused: bob import junk: "),
        "no refused import among the events: {dom}"
    );
    assert!(
        dom.contains("1 commands, 1 logins"),
        "no refusal counts: {dom}"
    );
    // The plot has its axes labelled, from the first page load.
    assert!(
        dom.contains("<text x=\"4\" y=\"12\">store size</text>"),
        "no axes: {dom}"
    );
    assert_eq!(http_get(&admin, "/nosuch").0, "HTTP/1.1 404 Not Found");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
    // Events outlive a restart (before, they were lost with it).
    g.start(&["--admin-listen", "127.0.0.1:0"]);
    let again = http_get(g.admin.as_ref().unwrap(), "/status.json").1;
    assert!(
        again.contains("alice spawn busybox") && again.contains("bob import junk"),
        "{again}"
    );
    g.stop();

    // Off loopback the admin address needs the node's certificate.
    let out = Command::new(COLONY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--state",
        ])
        .arg(&g.state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("off loopback"),
        "{err}"
    );
}

#[test]
fn under_systemd_the_node_says_when_it_is_ready_and_the_example_config_works() {
    if !can_mount() {
        return;
    }
    let g = Node::new();
    // The repository's example configuration, as the unit starts it (with
    // this test's own ports).
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/colony.ndb");
    let notify = g.tmp.path().join("notify");
    // Login ports below the other tests' and the ephemeral range.
    let first = 20_000 + (std::process::id() % 50) as u16 * 10;
    let systemd_ports = format!("{first}-{}", first + 9);
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut node = Command::new(COLONY)
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--env-ports",
            &systemd_ports,
            "--state",
        ])
        .arg(&g.state)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 from the node");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("READY=1"));
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    assert!(node.wait().unwrap().success());
}

/// The node's soft limit of open files, set to `soft`; the old one back.
fn set_open_files(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on a process of ours, with valid rlimit pointers.
    assert_eq!(
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) },
        0
    );
    old.rlim_cur
}

/// The process's open files, each as `FD -> WHAT`.
fn open_files(pid: u32) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|fd| {
            let what = std::fs::read_link(fd.path()).unwrap_or_default();
            format!("{} -> {}", fd.file_name().to_string_lossy(), what.display())
        })
        .collect();
    files.sort_by_key(|f| f.split(' ').next().and_then(|n| n.parse::<u32>().ok()));
    files
}

/// What a connection that says nothing is sent before the node closes it
/// (the read fails if the node never does within a minute).
fn read_until_closed(mut s: std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the node closes a silent connection");
    got
}

/// Invariant: connections that never log in cannot take the front door
/// away. Each is closed after the login grace time; past 64 logging in at
/// once a new one is closed at once, and a flood of those does not flood
/// the log; and when the node runs out of file
/// descriptors, accepting pauses instead of ending (before, the front door
/// returned the accept error and the whole node stopped). Afterwards users
/// log in as before.
#[test]
fn silent_connections_never_take_the_front_door_down() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--admin-listen", "127.0.0.1:0", "--login-grace", "5s"]);
    let pid = g.child.as_ref().unwrap().id();
    let connect = || std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    // Up and serving, with whatever it opens on a first login open.
    assert!(g.ok("alice", &["scores"]).contains("busybox"));

    // Out of file descriptors: room for a few connections, then accept
    // fails while more wait. The node's log says when it does; its count of
    // open files is no clock (the node may still open or close some).
    let before = open_files(pid);
    let normal = set_open_files(pid, before.len() as u64 + 6);
    let waiting: Vec<_> = (0..20).map(|_| connect()).collect();
    let failed = "SSH listener: accepting a connection failed";
    let started = std::time::Instant::now();
    while !g.log_so_far().contains(failed) {
        if let Some(status) = g.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the node stopped ({status}) when it ran out of file descriptors: {}",
                g.log_so_far()
            );
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "no accept failed in 30 s with the limit at {} open files.\n\
             before: {before:#?}\nnow: {:#?}\nlog: {}",
            before.len() + 6,
            open_files(pid),
            g.log_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A few more rounds of failed accepts (one each 100 ms).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        g.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the node stopped when it ran out of file descriptors"
    );
    set_open_files(pid, normal);
    drop(waiting);
    assert!(g.ok("alice", &["scores"]).contains("busybox"));

    // One silent connection: greeted, then closed when its time is up.
    let got = read_until_closed(connect());
    assert!(
        got.starts_with(b"SSH-2.0-"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // 64 logging in at once, and 30 more: those are closed unanswered,
    // logged within the budget of refusal lines (20 in 10 s), not each, and
    // each counted in the node's metrics.
    let held: Vec<_> = (0..64).map(|_| connect()).collect();
    let extras: Vec<_> = (0..30).map(|_| connect()).collect();
    for extra in extras {
        let got = read_until_closed(extra);
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    drop(held);
    let (_, metrics) = http_get(g.admin.as_ref().unwrap(), "/metrics");
    assert!(
        metrics.contains("colony_frontdoor_connections_refused_total 30\n"),
        "{metrics}"
    );
    let log = g.stop();
    assert!(log.contains("did not log in in time"), "{log}");
    let refusals = log
        .lines()
        .filter(|l| l.contains("too many logging in at once"))
        .count();
    assert_eq!(refusals, link::listener::REFUSAL_LINES, "{log}");
}

/// Invariant: a client of the admin address that sends its request a byte
/// at a time gets 10 s for all of it, not 10 s per byte: it is closed
/// unanswered before it is done, so it cannot hold a connection for hours.
#[test]
fn a_request_sent_a_byte_at_a_time_is_cut_off() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = g.admin.clone().expect("an admin address");
    let mut s = std::net::TcpStream::connect(&admin).unwrap();
    let mut reader = s.try_clone().unwrap();
    // 49 bytes at one each 400 ms: about 20 s for the whole head.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin:<16}\r\n\r\n");
    let request = request.into_bytes();
    let trickle = std::thread::spawn(move || {
        for b in request {
            if s.write_all(&[b]).is_err() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        true
    });
    reader
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = reader.read_to_end(&mut reply);
    assert!(
        reply.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&reply)
    );
    let _ = trickle.join();
    // Others are still served.
    let (status, _) = http_get(&admin, "/metrics");
    assert!(status.contains("200"), "{status}");
    g.stop();
}

/// A one-shot command's standard input belongs to that command, and only
/// `import` reads it. Before, the front door ran every line of it as a
/// command: `printf 'spawn d3\n' | ssh … scores` spawned d3, and a tar
/// sent to a nameless `import` had its lines executed (a file holding
/// `boom NAME` ended the user's environment). A 0x04 byte read as `exit`
/// turned a usage error into status 0. The prompt's lines are bounded.
#[test]
fn a_one_shot_commands_input_is_never_run_as_commands() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = g.ssh_as("alice", "alice", &["scores"], "spawn busybox\n");
    assert!(out.status.success());
    assert!(
        g.mounted().is_empty(),
        "stdin of scores spawned: {:?}",
        g.mounted()
    );
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let out = g.ssh_as("alice", "alice", &["import"], "boom busybox\n");
    assert_eq!(out.status.code(), Some(1), "a usage error");
    assert_eq!(g.env_ok(port, "echo alive"), "alive\n", "boom in stdin ran");
    let out = g.ssh_bytes("alice", &["import"], b"\x04");
    assert_eq!(out.status.code(), Some(1), "0x04 must not make it exit 0");
    // The prompt: a line past 4 KiB is refused, and the next one runs.
    let input = format!("{}\nscores\nexit\n", "x".repeat(5000));
    let out = g.ssh_as("alice", "alice", &[], &input);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("at most 4096 bytes"), "{said}");
    assert!(said.contains("busybox"), "{said}");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Every process under `pid`, recursively.
fn descendants_of(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

/// The targets of `pid`'s open descriptors.
fn descriptor_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// A node started holding an open directory (as a supervisor, `flock` or
/// a CI runner may start it) passes it to nothing it runs. Before, pid 1,
/// every login and slirp4netns inherited it, and a tenant read and wrote
/// host files through `/proc/self/fd/N/..`.
#[test]
fn descriptors_the_node_inherited_reach_no_environment() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let host = g.tmp.path().join("host-only-c0ffee");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("secret"), "host secret\n").unwrap();
    g.inherit = Some(std::fs::File::open(&host).unwrap());
    g.start(&[]);
    let node = g.child.as_ref().unwrap().id();
    assert!(
        descriptor_targets(node)
            .iter()
            .any(|t| t.contains("host-only-c0ffee")),
        "the node itself holds it (else this test shows nothing)"
    );
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let inside = g.env_ok(
        port,
        "for f in /proc/[0-9]*/fd/*; do readlink $f; done 2>/dev/null; cat /proc/self/fd/9/secret 2>&1; true",
    );
    assert!(!inside.contains("host-only-c0ffee"), "{inside}");
    assert!(!inside.contains("host secret"), "{inside}");
    for pid in descendants_of(node) {
        let targets = descriptor_targets(pid);
        assert!(
            !targets.iter().any(|t| t.contains("host-only-c0ffee")),
            "process {pid} of the node holds it: {targets:?}"
        );
    }
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A spawn above the node's ceilings, or with more option words than a
/// spawn takes, is refused at the front door, naming the bound; before,
/// `memory=64G pids=1000000 cpu=10000` was accepted.
#[test]
fn a_spawn_above_the_ceilings_or_with_thousands_of_options_is_refused() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--env-memory-max", "3G"]);
    let err = g.refused("alice", &["spawn", "busybox", "memory=64G"]);
    assert!(
        err.contains("ceiling of 3.0 GiB") && err.contains("--env-memory-max"),
        "{err}"
    );
    let err = g.refused("alice", &["spawn", "busybox", "pids=1000000"]);
    assert!(err.contains("ceiling of 2048"), "{err}");
    let err = g.refused("alice", &["spawn", "busybox", "cpu=10000"]);
    assert!(err.contains("ceiling of 1000"), "{err}");
    let many = vec!["pids=5"; 4097].join(" ");
    let err = g.refused("alice", &["spawn", "busybox", &many]);
    assert!(err.contains("at most 16"), "{err}");
    assert!(g.mounted().is_empty());
    // Within the ceilings it spawns.
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox", "memory=3G"]));
    assert_eq!(g.env_ok(port, "echo in"), "in\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// `tar c -C DIR .`: what a user pipes into `ssh … import`.
fn tar_of(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar of {}", dir.display());
    out.stdout
}

/// An OCI layout uploaded as a tar, with its blobs replaced by `with`.
fn hostile_layout(g: &Node, name: &str, with: impl Fn(&Path)) -> Vec<u8> {
    let dir = g.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    oci_layout(g, &dir);
    let layout = dir.join("image");
    with(&layout);
    tar_of(&layout)
}

/// Every blob file of a layout.
fn blobs(layout: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// A layout is data: the node never opens anything in it as a host path.
/// Before, a blob linked to the node's SSH host key came back as "does
/// not match its digest (got sha256:<the key's digest>)", `index.json ->
/// /dev/zero` grew the node to 1.7 GB until the OOM killer ended it, and
/// a FIFO blocked an import thread for good. What a killed node's imports
/// leave in STATE/tmp is removed when it starts again.
#[test]
fn hostile_oci_layouts_are_refused_without_touching_the_host() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let leftover = g.state.join("tmp/import-left-by-a-killed-node");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("junk"), "x").unwrap();
    g.start(&[]);
    assert!(
        !leftover.exists(),
        "a dead import's scratch is removed at start"
    );
    let key = std::fs::canonicalize(g.state.join("host_key")).unwrap();
    let key_digest = {
        let out = Command::new("sha256sum").arg(&key).output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let links = hostile_layout(&g, "links", |layout| {
        for b in blobs(layout) {
            std::fs::remove_file(&b).unwrap();
            std::os::unix::fs::symlink(&key, &b).unwrap();
        }
    });
    let zero = hostile_layout(&g, "zero", |layout| {
        std::fs::remove_file(layout.join("index.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", layout.join("index.json")).unwrap();
    });
    let fifo = hostile_layout(&g, "fifo", |layout| {
        std::fs::remove_file(layout.join("index.json")).unwrap();
        assert!(
            Command::new("mkfifo")
                .arg(layout.join("index.json"))
                .status()
                .unwrap()
                .success()
        );
    });
    let root_link = hostile_layout(&g, "rootlink", |layout| {
        std::fs::remove_dir_all(layout.join("blobs")).unwrap();
        std::os::unix::fs::symlink("/", layout.join("blobs")).unwrap();
    });
    let node = g.child.as_ref().unwrap().id();
    for (name, tar) in [
        ("links", &links),
        ("zero", &zero),
        ("fifo", &fifo),
        ("rootlink", &root_link),
    ] {
        let out = g.ssh_bytes("alice", &["import", name, "oci"], tar);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("nothing was bound"), "{name}: {err}");
        assert!(
            !err.contains(&key_digest),
            "{name}: a host file's digest: {err}"
        );
        let state = std::fs::canonicalize(&g.state).unwrap();
        assert!(
            !err.contains(state.to_str().unwrap()),
            "{name}: a server path: {err}"
        );
        let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{node}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        assert!(
            rss_kib < 400 << 10,
            "{name}: the node grew to {rss_kib} KiB"
        );
    }
    assert!(!g.ok("alice", &["scores"]).contains("links"));
    let scratch: Vec<_> = std::fs::read_dir(g.state.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "imports left {scratch:?}");
    g.stop();
}

/// `ssh alice@node import NAME oci < tar`, left running once the upload
/// is sent (the node then works on it).
fn upload_oci(g: &Node, name: &str, tar: &[u8]) -> Child {
    let mut client = g
        .door_command("alice", "alice", &["import", name, "oci"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(tar).unwrap();
    drop(stdin);
    client
}

/// An import whose client has gone is cancelled: the node stops working
/// for it at its next read instead of finishing (and binding the name).
/// The layer is a gzip bomb: 4 GB of text in 4 MB, so flattening it takes
/// the node many seconds after the upload; the client is killed once the
/// upload is done. Before, the import ran on to the end and bound the name.
#[test]
fn an_import_whose_client_left_is_cancelled() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let dir = g.tmp.path().join("bomb");
    let layout = dir.join("image");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        String::from_utf8(out.stdout).unwrap()
    };
    // One tar member of 64 gzip members of 64 MiB each: the header's
    // member, the same compressed chunk again and again, then the end.
    let chunk: u64 = 64 << 20;
    let members = 64;
    let d = dir.display();
    let header = {
        let mut h = [0u8; 512];
        h[..3].copy_from_slice(b"big");
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", chunk * members).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    };
    std::fs::write(dir.join("header"), header).unwrap();
    sh(&format!(
        "gzip -1 -c {d}/header > {d}/layer && yes colony | head -c {chunk} | gzip -1 -c > {d}/chunk \
         && for i in $(seq {members}); do cat {d}/chunk >> {d}/layer; done \
         && head -c 1024 /dev/zero | gzip -1 -c >> {d}/layer"
    ));
    let put = |path: &Path| -> (String, u64) {
        let hex = sh(&format!("sha256sum {}", path.display()))[..64].to_string();
        std::fs::copy(path, layout.join("blobs/sha256").join(&hex)).unwrap();
        (
            format!("sha256:{hex}"),
            std::fs::metadata(path).unwrap().len(),
        )
    };
    let (l, ls) = put(&dir.join("layer"));
    std::fs::write(dir.join("config"), "{}").unwrap();
    let (c, cs) = put(&dir.join("config"));
    std::fs::write(
        dir.join("manifest"),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{c}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":{ls}}}]}}"#
        ),
    )
    .unwrap();
    let (m, ms) = put(&dir.join("manifest"));
    std::fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{ms}}}]}}"#),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = tar_of(&layout);
    let mut client = upload_oci(&g, "bomb", &tar);
    // The upload is a few MB on loopback; then the node works on the layer.
    std::thread::sleep(std::time::Duration::from_secs(2));
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let log = loop {
        let log = g.log_so_far();
        if log.contains("import refused") || log.contains("imported") {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the import neither ended nor was cancelled: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(log.contains("cancelled"), "{log}");
    assert!(!g.ok("alice", &["scores"]).contains("bomb"));

    // A node told to stop while it flattens a layer stops: the import is
    // cancelled with its connection. (Before, the node logged "stopped"
    // and stayed until the import was done.)
    let mut client = upload_oci(&g, "bomb2", &tar);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let asked = std::time::Instant::now();
    g.stop();
    let took = asked.elapsed();
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        took < std::time::Duration::from_secs(30),
        "the node took {took:?} to stop mid-import"
    );
}

/// Text from the network is logged with its control characters escaped:
/// a venti version line carrying `ESC[2J` (clear the screen) and a carriage
/// return before a fake log line. Before, both reached the log raw.
#[test]
fn control_characters_from_the_network_are_escaped_in_the_log() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("tcp!127.0.0.1!{port}");
    g.start(&["--venti-listen", &listen]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "venti: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    s.write_all(b"venti-99-\x1b[2J\r2026-01-01T00:00:00Z  INFO forged line\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !g.log_so_far().contains("forged line") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not logged: {}",
            g.log_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = g.stop();
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
    assert!(log.contains("\\x1b[2J\\x0d2026"), "{log}");
}

/// A directory too large for one SFTP message is listed over several
/// (100 names each, as OpenSSH's server does), and a read of the largest
/// size a client asks fits in one message. Before, READDIR sent a whole
/// directory at once: ~2,000 long names passed OpenSSH's 256 KiB limit and
/// `sftp` aborted with "Received message too long"; a 256 KiB READ's reply
/// was 9 bytes over it.
#[test]
fn sftp_lists_a_huge_directory_and_reads_in_the_largest_blocks() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let long = "n".repeat(200);
    g.env_ok(
        port,
        &format!(
            "mkdir /root/many && cd /root/many && i=0; while [ $i -lt 2000 ]; do touch {long}$i; i=$((i+1)); done; \
             head -c 1048576 /dev/urandom > /root/big"
        ),
    );
    let batch = g.tmp.path().join("batch-many");
    let got = g.tmp.path().join("big-back");
    std::fs::write(
        &batch,
        format!("ls -1 /root/many\nget /root/big {}\n", got.display()),
    )
    .unwrap();
    let out = Command::new("sftp")
        .args(["-P", &port.to_string(), "-B", "262144", "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .arg("-b")
        .arg(&batch)
        .arg("alice@127.0.0.1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = stdout.lines().filter(|l| l.contains(&long)).count();
    assert_eq!(listed, 2000, "{}", &stdout[..stdout.len().min(2000)]);
    let inside = g.env_ok(port, "md5sum < /root/big");
    let here = Command::new("md5sum").arg(&got).output().unwrap();
    assert_eq!(
        inside.split_whitespace().next(),
        String::from_utf8_lossy(&here.stdout)
            .split_whitespace()
            .next()
    );
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A login refused for its key is logged (within the server's budget of
/// refusal lines), at the front door and at an environment's login; before,
/// neither left a line when the client offered only keys it could not use.
#[test]
fn refused_logins_are_logged() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let out = g.ssh("carol", &["scores"]);
    assert!(!out.status.success());
    let out = g.env_ssh("bob", port, "true", "", false);
    assert!(!out.status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = g.log_so_far();
        if log.contains("no key it offered is a registered user's")
            && log.contains("no key it offered may log in to alice's environment")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not logged: {log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// A probe run inside an environment: every process's command line, and
/// for each environment helper (`__env-exec`, such as the SFTP server an
/// open session runs as the helper's own fork) whether PTRACE_SEIZE of it
/// succeeds (0) or the errno.
const HELPER_PROBE: &str = r#"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(void) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 1 || pid == getpid()) continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        int n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
        buf[n] = 0;
        printf("cmdline %d %s\n", pid, buf);
        if (strstr(buf, "__env-exec")) {
            long r = ptrace(PTRACE_SEIZE, pid, 0, 0);
            printf("seize %d %d\n", pid, r == 0 ? 0 : errno);
        }
    }
    return 0;
}
"#;

/// While an SFTP session is open its server runs inside as the helper's
/// fork: it shows no host path, and nothing inside can trace it. Before,
/// its command line carried `--pid … --cgroup /sys/fs/cgroup/…` for every
/// process inside to read, and in a rootful environment a process could
/// attach to a helper before its syscall filter was in force.
#[test]
fn environment_helpers_show_no_host_paths_and_cannot_be_traced() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    let probe = build_probe(&g, "helper-probe", HELPER_PROBE);
    g.start(&["--allow-rootful"]);
    for mode in ["userns=yes", "userns=no"] {
        let port = spawn_port(&g.ok("alice", &["spawn", "busybox", mode]));
        std::fs::copy(&probe, g.state.join("mnt/alice/busybox/probe")).unwrap();
        // An SFTP session held open (its commands would come on stdin).
        let mut sftp = Command::new("sftp")
            .args(["-P", &port.to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS)
            .args(["-b", "-", "alice@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let out = loop {
            let out = g.env_ok(port, "/probe");
            if out.contains("__sftp-server") {
                break out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no SFTP server seen inside ({mode}): {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        drop(sftp.stdin.take());
        let _ = sftp.kill();
        let _ = sftp.wait();
        for host_only in ["/sys/fs/cgroup", "--cgroup", "--pid", "COLONY_"] {
            assert!(!out.contains(host_only), "{mode}: {host_only} shows: {out}");
        }
        let seized: Vec<&str> = out.lines().filter(|l| l.starts_with("seize ")).collect();
        assert!(!seized.is_empty(), "{mode}: {out}");
        for line in seized {
            assert!(
                line.ends_with(&format!(" {}", libc::EPERM)),
                "{mode}: a helper could be traced: {line}\n{out}"
            );
        }
        g.ok("alice", &["boom", "busybox"]);
    }
    g.stop();
}

/// The group of `controller` (v1) or the unified group (v2) process `pid`
/// is in.
fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    });
    v1.or_else(|| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
    })
}

/// An environment's slirp4netns is charged to that environment's memory
/// and process limits: what a tenant makes it hold (a connection kept
/// open costs its buffers) is the tenant's. Before, it ran in the node's
/// groups, and one tenant's 1,500 connections took it to 306 MB.
#[test]
fn an_environments_slirp4netns_is_charged_to_the_environment() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    let node = g.child.as_ref().unwrap().id();
    let init = init_pid_of_only_environment(node).expect("the environment's pid 1");
    let slirp = descendants_of(node)
        .into_iter()
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "slirp4netns")
        })
        .expect("the environment's slirp4netns");
    for controller in ["memory", "pids"] {
        let env = cgroup_of(init, controller).unwrap();
        assert!(env.contains("colony"), "{controller}: {env}");
        assert_eq!(cgroup_of(slirp, controller), Some(env), "{controller}");
    }
    // Its network still works from there.
    assert_eq!(g.env_ok(port, "echo up"), "up\n");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Saves count against the quota as imports do: a save is charged the
/// bytes it changed, and one that would pass what is left is refused
/// before anything is written. Before, saves were not charged at all
/// (three 95 MB saves grew the store past a 150 MiB quota showing "0
/// bytes used").
#[test]
fn saves_count_against_the_quota() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    // Setting a quota says where it stands (before, it said nothing).
    assert_eq!(
        g.colony(&["user", "quota", "alice", "3M"]),
        "alice: 0 bytes of 3.0 MiB used\n"
    );
    let port = spawn_port(&g.ok("alice", &["spawn", "busybox"]));
    g.env_ok(port, "head -c 2000000 /dev/urandom > /root/first");
    g.ok("alice", &["save", "busybox", "first"]);
    let status = g.ok("alice", &["status"]);
    let used = status
        .lines()
        .find_map(|l| l.strip_prefix("quota: "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        used.starts_with("1.9 MiB") || used.starts_with("2.0 MiB"),
        "{status}"
    );
    // 2 MB more does not fit in the 1 MB left: refused, nothing bound.
    g.env_ok(port, "head -c 2000000 /dev/urandom > /root/second");
    let err = g.refused("alice", &["save", "busybox", "second"]);
    assert!(err.contains("over your quota"), "{err}");
    assert!(!g.ok("alice", &["scores"]).contains("second"));
    // A change that fits is saved.
    g.env_ok(port, "rm /root/second; echo small > /root/small");
    g.ok("alice", &["save", "busybox", "third"]);
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Names are per user: bob may import a name alice has, each spawns their
/// own, and no refusal tells one user anything of another's names. Before,
/// `import busybox` by bob answered "name busybox is taken" for a name his
/// `scores` did not show.
#[test]
fn names_are_per_user_and_a_refusal_reveals_no_one_elses() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let root = g.tmp.path().join("bobs-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/motd"), "bob's own\n").unwrap();
    let tar = tar_of(&root);
    // bob has no busybox: his import of that name is his.
    assert!(!g.ok("bob", &["scores"]).contains("busybox"));
    let out = g.ssh_bytes("bob", &["import", "busybox"], &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(g.ok("bob", &["scores"]), "busybox\n");
    assert!(g.ok("alice", &["scores"]).contains("busybox"));
    // Each one's name leads to their own root.
    g.ok("alice", &["spawn", "busybox"]);
    let motd = std::fs::read_to_string(g.state.join("mnt/alice/busybox/etc/motd")).unwrap();
    assert_eq!(motd, "hello\n");
    g.ok("alice", &["boom", "busybox"]);
    // Taken is said only of one's own names.
    let out = g.ssh_bytes("bob", &["import", "busybox"], &tar);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is taken") && !err.contains("alice"), "{err}");
    g.stop();
}

/// On cgroup v1 an environment's socket buffers are bounded by its own
/// group (a quarter of its memory limit), not only by the host's TCP
/// memory, which every tenant shares: with its slirp4netns in that group,
/// a tenant holding many connections fills its own bound. Before, the
/// group had no TCP limit and one tenant took the host's TCP memory to
/// its hard limit.
#[test]
fn an_environments_socket_buffers_have_a_bound_of_their_own() {
    if !can_mount() {
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory/memory.kmem.tcp.limit_in_bytes").exists() {
        eprintln!("skipped: no cgroup v1 TCP accounting here (v2 counts it in memory.max)");
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    g.ok("alice", &["spawn", "busybox", "memory=256M"]);
    let node = g.child.as_ref().unwrap().id();
    let init = init_pid_of_only_environment(node).unwrap();
    let group = cgroup_of(init, "memory").unwrap();
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{group}/memory.kmem.tcp.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "{group}");
    g.ok("alice", &["boom", "busybox"]);
    g.stop();
}

/// Takes inotify instances until refused, says how many, and holds them
/// until its input ends.
const INOTIFY_HOG: &str = r#"
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
int main(void) {
    int n = 0;
    while (n < 100000 && inotify_init1(IN_CLOEXEC) >= 0) n++;
    printf("held %d\n", n);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}
"#;

/// What the kernel counts per user (inotify instances, here) is charged to
/// each rootless environment's own host id: one tenant holding all it may
/// leaves the host's root and other tenants theirs. Before, environments'
/// user namespaces were owned by host root, so a tenant holding 128
/// instances left none for anyone.
#[test]
fn a_tenant_holding_every_inotify_instance_leaves_the_host_and_others_theirs() {
    if !can_mount() || rootful_suite() {
        return;
    }
    let can_watch = || {
        // SAFETY: inotify_init1 and close on a descriptor it returned.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            if fd >= 0 {
                libc::close(fd);
            }
            fd >= 0
        }
    };
    if !can_watch() {
        eprintln!("skipped: host root has no inotify instance left before the test");
        return;
    }
    let mut g = Node::new();
    let hog = build_probe(&g, "hog", INOTIFY_HOG);
    // bob's own busybox (names are per user).
    let rootfs = g.tmp.path().join("rootfs");
    g.colony(&[
        "import",
        "busybox",
        rootfs.to_str().unwrap(),
        "--user",
        "bob",
    ]);
    g.start(&[]);
    // Starts the hog in `user`'s busybox; returns it and how many it holds.
    let hog_in = |user: &str| {
        let port = spawn_port(&g.ok(user, &["spawn", "busybox"]));
        std::fs::copy(&hog, g.state.join(format!("mnt/{user}/busybox/hog"))).unwrap();
        let mut held = Command::new("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(g.tmp.path().join(user))
            .args(SSH_OPTS)
            .args(["-T", &format!("{user}@127.0.0.1"), "/hog"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(held.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let n: u32 = line
            .trim()
            .strip_prefix("held ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{user}: {line:?}"));
        (held, n)
    };
    let (mut alice, n) = hog_in("alice");
    assert!(n > 0, "alice's hog took none");
    // While she holds all she may, host root still watches files, and
    // another tenant's environment gets its own allowance.
    let host_ok = can_watch();
    let (mut bob, m) = hog_in("bob");
    for held in [&mut alice, &mut bob] {
        drop(held.stdin.take());
        let _ = held.kill();
        let _ = held.wait();
    }
    assert!(host_ok, "alice's {n} instances left host root none");
    assert!(m > 0, "alice's {n} instances left bob none");
    g.ok("alice", &["boom", "busybox"]);
    g.ok("bob", &["boom", "busybox"]);
    g.stop();
}

/// Before, `spawnmax=lots` in the file was dropped without a word (and
/// the default used), and an unknown key was ignored. Now the node does
/// not start, and says which file, line and key.
#[test]
fn a_bad_configuration_stops_the_node_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = |config: &str, flags: &[&str]| {
        let path = tmp.path().join("node.conf");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(COLONY)
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--state"])
            .arg(tmp.path().join("state"))
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config:?} {flags:?} started");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (err, path.display().to_string())
    };
    let (err, path) = serve("listen=127.0.0.1:0\nspawnmax=lots\n", &[]);
    assert!(
        err.contains(&format!("{path}:2: spawn-max=lots: not a whole number")),
        "{err}"
    );
    let (err, path) = serve("# a node\nlisten=127.0.0.1:0\n\tram-cahce=1G\n", &[]);
    assert!(
        err.contains(&format!("{path}:3: unknown key \"ram-cahce\""))
            && err.contains("did you mean \"ram-cache\"?"),
        "{err}"
    );
    let (err, _) = serve("listen=127.0.0.1:0\n", &["--block-wait", "soon"]);
    assert!(
        err.contains("--block-wait soon: \"soon\" is not a duration"),
        "{err}"
    );
    let (err, _) = serve("", &["--rootful=maybe"]);
    assert!(err.contains("--rootful maybe: say yes or no"), "{err}");
    // Every setting that is not tuning is in --help, by the same name.
    let help = Command::new(COLONY)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for key in [
        "spawn-max",
        "venti-listen",
        "cpu-listen",
        "storage",
        "peer",
        "block-wait",
        "env-cpu-max",
    ] {
        assert!(
            help.contains(&format!("--{key} ")),
            "--{key} is not in --help:\n{help}"
        );
    }
}

/// A tenant's upload holding half of a published SHA-1 collision: the
/// import is refused, saying which block and why, and nothing is bound.
#[test]
fn an_import_holding_a_sha1_collision_is_refused_and_binds_nothing() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let root = g.tmp.path().join("rootfs");
    let attacked: &[u8] = include_bytes!("../../../venti/tests/data/shattered-2.head");
    std::fs::write(root.join("etc/shattered"), attacked).unwrap();
    let tar = tar_of(&root);
    let out = g.ssh_bytes("alice", &["import", "collided"], &tar);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // The file's one block, as stored: without its trailing zeros.
    let block = venti::zero::truncate(venti::BlockType::DATA, attacked);
    assert!(
        err.contains(&format!(
            "block {} refused: {}",
            venti::Score::of(block),
            venti::COLLISION_REFUSAL
        )) && err.contains("nothing was bound"),
        "{err}"
    );
    assert!(!g.ok("alice", &["scores"]).contains("collided"));
}

/// `forget` through the front door, and the admin's `colony name rm` on
/// the state directory of a running node: the name goes from `scores` at
/// once, a spawn of it is refused, the environment already running on it
/// runs on, and the user may bind the name again.
#[test]
fn a_name_is_forgotten_by_its_owner_or_the_admin() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = g.ok("alice", &["spawn", "busybox"]);
    let port = spawn_port(&out);
    g.ok("alice", &["save", "busybox", "kept"]);
    let forgot = g.ok("alice", &["forget", "busybox"]);
    assert!(forgot.starts_with("busybox forgotten\nvac:"), "{forgot}");
    assert_eq!(g.ok("alice", &["scores"]), "kept\n");
    assert!(
        g.refused("alice", &["spawn", "busybox"])
            .contains("busybox not found")
    );
    assert!(
        g.refused("alice", &["forget", "busybox"])
            .contains("no name busybox")
    );
    assert!(g.refused("alice", &["forget"]).contains("forget NAME"));
    // What runs on the forgotten root runs on.
    assert_eq!(g.env_ok(port, "echo still"), "still\n");
    // The name is free again for its user.
    g.ok("alice", &["save", "busybox", "busybox"]);
    assert_eq!(g.ok("alice", &["scores"]), "kept\nbusybox\n");
    g.ok("alice", &["boom", "busybox"]);

    // The admin, beside the running node.
    let said = g.colony(&["name", "rm", "kept", "--user", "alice"]);
    assert!(said.starts_with("kept forgotten for alice\nvac:"), "{said}");
    assert_eq!(g.ok("alice", &["scores"]), "busybox\n");
}
