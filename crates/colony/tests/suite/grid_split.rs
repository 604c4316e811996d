//! A grid of one storage node and two cpu nodes, each on a host of its own
//! (network namespaces on a bridge), run as an admin would: a grid CA,
//! `colony serve --role storage` and `--role cpu`, users on OpenSSH.
//!
//! Invariants checked:
//! * an environment runs where its spawn said, and only its owner logs in;
//! * a name a save binds is never visible before every block of its root
//!   is on the storage node (the tree reads back through its venti as soon
//!   as the save returns);
//! * a cpu node out of reach shows as lost (in `status` and in the storage
//!   node's metrics, which otherwise show each environment's cache as its
//!   cpu node reports it), spawns go elsewhere, and when it returns it runs
//!   exactly what the storage node still places there;
//! * environments outlive a kill -9 of their storage node: reads wait for
//!   it (and fail with EIO past the node's deadline), and its successor
//!   adopts them;
//! * the shared block cache stays within its bound, and a damaged entry is
//!   fetched again, never served;
//! * a cpu node serves two replicating storage nodes, each of which sees
//!   and commands only what it placed, and a root saved through one spawns
//!   through the other.
//! * an idle environment is suspended on its cpu node and woken there by
//!   a login, and stays its storage node's through a kill -9 and restart
//!   of the cpu node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::grid::{
    COLONY, Proc, Reaped, SSH_OPTS, busybox_root, colony, grid_ca, random_tree, spawn_host,
    spawn_port, wait_for, wait_for_job,
};
use crate::common::netns::{self, Hosts};

const CONTROL_PORT: u16 = 17036;

fn can_run() -> bool {
    netns::available() && Path::new("/dev/fuse").exists()
}

/// host 0: storage node s1; hosts 1 and 2: cpu nodes c1 and c2; host 3:
/// storage node s2, replicating with s1, when the grid has two.
struct Split {
    tmp: tempfile::TempDir,
    hosts: Hosts,
    s1: Proc,
    c1: Proc,
    c2: Proc,
    s2: Option<Proc>,
}

/// `serve --config DIR/NAME.conf`, the file holding every `--key value`
/// of `args` (which start with `serve`) as `key=value`: each node of the
/// grid starts from its configuration file alone, as the shipped unit
/// starts it.
fn from_file(dir: &Path, name: &str, args: &[String]) -> Vec<String> {
    assert_eq!(args[0], "serve");
    let mut text = format!("# {name}, written by the test\n");
    for pair in args[1..].chunks(2) {
        let key = pair[0].strip_prefix("--").expect("a flag");
        text.push_str(&format!("{key}={}\n", pair[1]));
    }
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, text).unwrap();
    vec![
        "serve".into(),
        "--config".into(),
        path.display().to_string(),
    ]
}

impl Split {
    fn new(c1_extra: &[&str], c2_extra: &[&str]) -> Split {
        Split::with_storage(1, c1_extra, c2_extra)
    }

    /// A grid of `storage` storage nodes (1 or 2) and two cpu nodes.
    fn with_storage(storage: usize, c1_extra: &[&str], c2_extra: &[&str]) -> Split {
        let tmp = tempfile::tempdir().unwrap();
        grid_ca(
            tmp.path(),
            &[
                ("s1", "storage"),
                ("s2", "storage"),
                ("c1", "cpu"),
                ("c2", "cpu"),
                ("admin", "client"),
            ],
            &["alice", "bob"],
        );
        let hosts = Hosts::new(4);
        let dir = |n: &str| tmp.path().join(n).display().to_string();
        // (name, host) of each storage node.
        let stores: Vec<(&str, usize)> = [("s1", 0), ("s2", 3)][..storage].to_vec();
        let storage_node = |name: &str, host: usize| {
            let a = &hosts.addrs[host];
            let mut args: Vec<String> = [
                "serve",
                "--role",
                "storage",
                "--listen",
                &format!("{a}:16999"),
                "--public-host",
                a,
                "--venti-listen",
                &format!("tls!{a}!17034"),
                "--cpu-listen",
                &format!("tls!{a}!{CONTROL_PORT}"),
                "--hubs-listen",
                "127.0.0.1:5641",
                "--admin-listen",
                &format!("{a}:16990"),
                "--tls",
                &dir(&format!("{name}.tls")),
                "--state",
                &dir(&format!("{name}.state")),
            ]
            .map(String::from)
            .to_vec();
            for &(peer, h) in stores.iter().filter(|(p, _)| *p != name) {
                args.push("--replica-listen".into());
                args.push(format!("tls!{a}!17035"));
                args.push("--peer".into());
                args.push(format!("{peer}=tls!{}!17035", hosts.addrs[h]));
            }
            Proc::new(name, from_file(tmp.path(), name, &args))
        };
        let s1 = storage_node("s1", 0);
        let s2 = (storage > 1).then(|| storage_node("s2", 3));
        let cpu = |i: usize, name: &str, extra: &[&str]| {
            let addr = &hosts.addrs[i];
            let mut args: Vec<String> = [
                "serve",
                "--role",
                "cpu",
                "--public-host",
                addr,
                "--env-ports",
                "20001-20010",
                "--tls",
                &dir(&format!("{name}.tls")),
                "--state",
                &dir(&format!("{name}.state")),
            ]
            .map(String::from)
            .to_vec();
            for &(s, h) in &stores {
                args.push("--storage".into());
                args.push(format!("{s}=tls!{}!{CONTROL_PORT}", hosts.addrs[h]));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            Proc::new(name, from_file(tmp.path(), name, &args))
        };
        let (c1, c2) = (cpu(1, "c1", c1_extra), cpu(2, "c2", c2_extra));
        std::fs::create_dir_all(tmp.path().join("s1.state")).unwrap();
        for user in ["alice", "bob"] {
            colony(&[
                "user",
                "add",
                user,
                "--key",
                &dir(&format!("{user}.pub")),
                "--state",
                &dir("s1.state"),
            ]);
        }
        Split {
            tmp,
            hosts,
            s1,
            c1,
            c2,
            s2,
        }
    }

    fn state(&self, node: &str) -> PathBuf {
        self.tmp.path().join(format!("{node}.state"))
    }

    /// Imports `dir` as `name` for alice into the stopped storage node.
    fn import(&self, name: &str, dir: &Path) -> String {
        let out = colony(&[
            "import",
            name,
            dir.to_str().unwrap(),
            "--user",
            "alice",
            "--state",
            self.state("s1").to_str().unwrap(),
        ]);
        out.split_whitespace().nth(1).unwrap().to_string()
    }

    fn start_s1(&mut self) {
        let cmd = self.hosts.command(0, COLONY);
        self.s1.start_with(env_logged(cmd), "listening on ");
    }

    fn start_s2(&mut self) {
        let cmd = env_logged(self.hosts.command(3, COLONY));
        self.s2
            .as_mut()
            .expect("a grid of two storage nodes")
            .start_with(cmd, "listening on ");
    }

    fn start_cpu(&mut self, i: usize) {
        let cmd = env_logged(self.hosts.command(i, COLONY));
        let node = if i == 1 { &mut self.c1 } else { &mut self.c2 };
        node.start_with(cmd, "cpu node ");
    }

    /// Waits until the storage node has seen `n` links from cpu nodes in
    /// all (over all its runs).
    fn wait_links(&self, n: usize) {
        wait_for(20, &format!("{n} cpu node links"), || {
            self.s1.log_count("cpu node linked") >= n
        });
    }

    /// `ssh USER@s1 ARGS` to the storage node's front door.
    fn door(&self, user: &str, args: &[&str]) -> Output {
        self.door_on(0, user, args)
    }

    /// `ssh USER@HOST ARGS` to the front door of the storage node on `host`.
    fn door_on(&self, host: usize, user: &str, args: &[&str]) -> Output {
        self.door_command(host, user, args).output().unwrap()
    }

    /// alice's `ssh … ARGS` (a follower: `logs -f`, `service logs -f`)
    /// to the front door on `host`, started, once it has printed `first`.
    fn following(&self, host: usize, args: &[&str], first: &[u8]) -> std::process::Child {
        let mut child = self
            .door_command(host, "alice", args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut got = vec![0u8; first.len()];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut got).unwrap();
        assert_eq!(got, first, "{args:?}");
        child
    }

    /// The `ssh` of [`Split::door_on`], to start.
    fn door_command(&self, host: usize, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.hosts.command(0, "ssh");
        cmd.args(["-p", "16999", "-i"])
            .arg(self.tmp.path().join(user))
            .args(SSH_OPTS)
            .arg("-T")
            .arg(format!("{user}@{}", self.hosts.addrs[host]))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn door_on_ok(&self, host: usize, user: &str, args: &[&str]) -> String {
        let out = self.door_on(host, user, args);
        assert!(
            out.status.success(),
            "{user} {args:?} on host {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn door_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.door(user, args);
        assert!(
            out.status.success(),
            "{user} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn door_err(&self, user: &str, args: &[&str]) -> String {
        let out = self.door(user, args);
        assert!(!out.status.success(), "{user} {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs `command` in the environment a spawn `reply` logs in to, from
    /// the storage node's host (as a user elsewhere in the grid would).
    fn in_env(&self, user: &str, reply: &str, command: &str) -> Output {
        let mut cmd = self.hosts.command(0, "ssh");
        cmd.args(["-p", &spawn_port(reply).to_string(), "-i"])
            .arg(self.tmp.path().join(user))
            .args(SSH_OPTS)
            .args(["-o", "ConnectTimeout=5", "-T"])
            .arg(format!("{user}@{}", spawn_host(reply)))
            .arg(command)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }

    fn in_env_ok(&self, user: &str, reply: &str, command: &str) -> String {
        let out = self.in_env(user, reply, command);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Reads the whole tree of `root` through the storage node's venti:
    /// Ok only if every block is there.
    fn read_tree(&self, root: &str) -> Result<String, String> {
        let out = self
            .hosts
            .command(0, COLONY)
            .env("COLONY_TLS", self.tmp.path().join("admin.tls"))
            .args([
                "unvac",
                "-t",
                "-h",
                &format!("tls!{}!17034", self.hosts.addrs[0]),
                root,
            ])
            .output()
            .unwrap();
        crate::common::run::outcome(&out)
    }

    fn root_of(&self, name: &str) -> Option<String> {
        self.root_on("s1", name)
    }

    /// The root `name` is bound to on storage node `node`.
    fn root_on(&self, node: &str, name: &str) -> Option<String> {
        let db = ndb::Db::open(&self.state(node).join("scorenames")).ok()?;
        db.entries()
            .iter()
            .find(|e| e.get("scorename") == Some(name))
            .and_then(|e| e.get("rootscore").map(str::to_string))
    }
}

fn env_logged(mut cmd: Command) -> Command {
    cmd.env("COLONY_LOG", "info");
    cmd
}

/// Flips a byte in every 512 of a cpu node's block cache: every cached
/// block but the smallest is damaged. Returns the bytes it went through.
fn damage_cache(dir: &Path) -> u64 {
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let mut bytes = std::fs::read(f.path()).unwrap();
        for b in bytes.iter_mut().skip(256).step_by(512) {
            *b ^= 0x5a;
        }
        n += bytes.len() as u64;
        std::fs::write(f.path(), &bytes).unwrap();
    }
    n
}

fn cache_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

#[test]
fn spawns_land_on_cpu_nodes_and_their_commands_follow_them() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    g.import(
        "busybox",
        &busybox_root(g.tmp.path(), "hello from the grid\n"),
    );
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);
    let (c1, c2) = (g.hosts.addrs[1].clone(), g.hosts.addrs[2].clone());

    // A spawn lands on a cpu node, not the storage node, and logs in there.
    let first = g.door_ok("alice", &["spawn", "busybox"]);
    let host = spawn_host(&first);
    assert!(host == c1 || host == c2, "placed on {host}: {first}");
    assert_eq!(
        g.in_env_ok("alice", &first, "cat /etc/motd"),
        "hello from the grid\n"
    );
    // Only its owner logs in; others are refused at the door and there.
    assert!(!g.in_env("bob", &first, "true").status.success());
    assert!(
        g.door_err("bob", &["spawn", "busybox"])
            .contains("not found for bob")
    );
    assert!(
        g.door_err("alice", &["spawn", "busybox"])
            .contains("already running"),
        "one environment per name and user"
    );

    // Save there: the name is bound only once its blocks are on the
    // storage node.
    g.in_env_ok("alice", &first, "echo changed on a cpu node > /root/note");
    let saved = g.door_ok("alice", &["save", "busybox", "withnote"]);
    assert!(saved.starts_with("withnote saved"), "{saved}");
    let root = g.root_of("withnote").expect("withnote bound");
    let tree = g.read_tree(&root).expect("every block on the storage node");
    assert!(tree.contains("root/note"), "{tree}");

    // …and spawn the saved name on the other cpu node, by name.
    let other = if host == c1 { "c2" } else { "c1" };
    let other_addr = if host == c1 { &c2 } else { &c1 };
    let second = g.door_ok(
        "alice",
        &["spawn", "withnote", &format!("node={other}"), "memory=64M"],
    );
    assert_eq!(&spawn_host(&second), other_addr, "{second}");
    assert_eq!(
        g.in_env_ok("alice", &second, "cat /root/note"),
        "changed on a cpu node\n"
    );

    // status reaches both cpu nodes and says where each runs.
    let status = g.door_ok("alice", &["status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 2, "{status}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("busybox\t") && l.contains("on cpu ")),
        "{status}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("withnote\t") && l.ends_with(&format!("on cpu {other}"))),
        "{status}"
    );
    assert_eq!(g.door_ok("bob", &["status"]), "no environments running\n");

    // invite reaches the environment's cpu node; bob spawns his copy.
    let invited = g.door_ok("alice", &["invite", "bob", "busybox"]);
    assert!(invited.contains("busybox+bob"), "{invited}");
    let bobs = g.door_ok("bob", &["spawn", "busybox+bob", "node=c2"]);
    assert_eq!(spawn_host(&bobs), c2);
    assert!(
        g.in_env_ok("bob", &bobs, "cat /etc/passwd")
            .contains("bob:")
    );
    assert!(!g.in_env("alice", &bobs, "true").status.success());

    // Placement errors name the problem.
    assert!(
        g.door_err("alice", &["spawn", "busybox+bob"])
            .contains("not found for alice")
    );
    let err = g.door_err("alice", &["save", "nosuch", "x"]);
    assert!(err.contains("nosuch is not running for alice"), "{err}");
    g.door_ok("alice", &["boom", "withnote"]);
    let err = g.door_err("alice", &["spawn", "withnote", "node=nope"]);
    assert!(err.contains("no cpu node nope"), "{err}");
    // An unknown key is refused at the front door, never sent; a known
    // key's value is the cpu node's to judge.
    let err = g.door_err("alice", &["spawn", "withnote", "bogus=1"]);
    assert!(err.contains("bad option"), "{err}");
    let err = g.door_err("alice", &["spawn", "withnote", "memory=lots"]);
    assert!(err.contains("bad option"), "{err}");

    // A warm cpu node: the boomed root spawns again from its cache, and a
    // damaged cache entry is fetched again, never served.
    let cpu_name = if host == c1 { "c1" } else { "c2" };
    g.door_ok("alice", &["boom", "busybox"]);
    let damaged = damage_cache(&g.state(cpu_name).join("blockcache"));
    assert!(damaged > 0, "the cpu node cached blocks");
    let again = g.door_ok("alice", &["spawn", "busybox", &format!("node={cpu_name}")]);
    assert_eq!(
        g.in_env_ok("alice", &again, "cat /etc/motd"),
        "hello from the grid\n"
    );
    let node = if host == c1 { &g.c1 } else { &g.c2 };
    assert!(
        node.log_has("fails its score check"),
        "the damage was noticed"
    );
    g.door_ok("alice", &["boom", "busybox"]);
    g.door_ok("bob", &["boom", "busybox+bob"]);
    assert_eq!(g.door_ok("alice", &["status"]), "no environments running\n");

    // The admin watches the control link and the grid's events as hubs.
    let backlog = |hub: &str| hub_backlog(&g.hosts, 0, hub);
    let sent = backlog("cpu.in");
    assert!(sent.contains(" spawn alice busybox vac:"), "{sent}");
    assert!(sent.contains(" save alice busybox"), "{sent}");
    assert!(
        !sent.contains("bogus=1"),
        "refused at the front door: {sent}"
    );
    let answers = backlog("cpu.out");
    assert!(answers.contains("ok ssh -p "), "{answers}");
    assert!(answers.contains("refused bad option"), "{answers}");
    let events = backlog("events");
    assert!(
        events.contains("cpu node c1 linked") && events.contains("cpu node c2 linked"),
        "{events}"
    );

    // The admin address off loopback speaks only TLS to grid certificates:
    // a plain client gets nothing; the admin's certificate (through a
    // tunnel) gets the metrics.
    let a0 = g.hosts.addrs[0].clone();
    let plain = g
        .hosts
        .command(1, "curl")
        .args(["-s", "-m", "5", &format!("http://{a0}:16990/metrics")])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("colony_"),
        "a client without a certificate was answered"
    );
    // That refusal is counted, whatever the log's budget wrote of it.
    let refused = |m: &str, reason: &str| -> u64 {
        let line = format!("colony_tls_refused_total{{reason=\"{reason}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let metrics = scrape_s1(&g, 1, "the metrics through the tunnel", |m| {
        m.contains("colony_spawn_seconds_count") && refused(m, "handshake") >= 1
    });
    assert_eq!(refused(&metrics, "revoked"), 0, "{metrics}");
}

/// Storage node s1's `/metrics`, scraped from `host` with the admin's
/// certificate (through `colony tunnel`), once `ready` holds of them;
/// fails after 15 s.
fn scrape_s1(g: &Split, host: usize, what: &str, ready: impl Fn(&str) -> bool) -> String {
    fetch_from_s1(g, host, "/metrics", what, ready)
}

/// `path` of s1's admin address, fetched from `host` through a tunnel with
/// the admin's certificate, once `ready` says it is what the test waits for.
fn fetch_from_s1(
    g: &Split,
    host: usize,
    path: &str,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    // A port of its own for each scrape: no waiting for the last to close.
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(17990);
    let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _tunnel = Reaped(
        g.hosts
            .command(host, COLONY)
            .args([
                "tunnel",
                "--listen",
                &format!("tcp!127.0.0.1!{port}"),
                "--to",
            ])
            .arg(format!("tls!{}!16990", g.hosts.addrs[0]))
            .arg("--cert")
            .arg(g.tmp.path().join("admin.tls"))
            .args(["--peer-roles", "storage"])
            .spawn()
            .unwrap(),
    );
    let mut metrics = String::new();
    wait_for(15, what, || {
        let out = g
            .hosts
            .command(host, "curl")
            .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .unwrap();
        metrics = String::from_utf8_lossy(&out.stdout).into_owned();
        ready(&metrics)
    });
    metrics
}

#[test]
fn a_lost_cpu_node_shows_in_status_and_is_reconciled_when_it_returns() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "lost and found\n");
    g.import("one", &root);
    g.import("two", &root);
    g.import("three", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);
    let (c1, c2) = (g.hosts.addrs[1].clone(), g.hosts.addrs[2].clone());

    let one = g.door_ok("alice", &["spawn", "one", "node=c1"]);
    assert_eq!(spawn_host(&one), c1);
    g.in_env_ok("alice", &one, "true");
    // The storage node's metrics show the environment's cache, as c1
    // reports it, and its state.
    let one_cache = "colony_environment_cache_capacity_bytes{user=\"alice\",environment=\"one\"} ";
    scrape_s1(&g, 0, "one's cache in s1's metrics", |m| {
        m.contains(one_cache)
            && m.contains("colony_environments{state=\"running\"} 1")
            && m.contains("colony_environments{state=\"lost\"} 0")
    });

    // Cut c1 off: once it has missed its pings it shows as lost, with
    // when it was last seen. (Before, `status` waited for the link to be
    // declared dead and then said "last seen 0m00s ago".)
    g.hosts.cut(1);
    std::thread::sleep(Duration::from_millis(2800));
    let status = g.door_ok("alice", &["status"]);
    let seen = status
        .split("lost: cpu node c1 out of reach, last seen 0m")
        .nth(1)
        .unwrap_or_else(|| panic!("c1 is not lost: {status}"));
    let secs: u64 = seen[..2].parse().unwrap();
    assert!(secs >= 2, "c1 was last seen 2.8 s ago or more: {status}");
    // A lost environment is counted as lost, and its cache figures, which
    // nobody can vouch for now, are gone.
    scrape_s1(&g, 0, "one lost in s1's metrics", |m| {
        m.contains("colony_environments{state=\"lost\"} 1")
            && m.contains("colony_environments{state=\"running\"} 0")
            && !m.contains(one_cache)
    });
    // The status page tells of the loss among its events, as a failure,
    // and shows `one` as lost on c1 (before, the page had neither).
    fetch_from_s1(
        &g,
        0,
        "/status.json",
        "c1's loss on s1's status page",
        |page| {
            page.contains("\"failure\":true,\"text\":\"cpu node c1 lost\"")
                && page.contains("\"cpu\":\"c1\",\"last_seen_seconds_ago\":")
                // Its cpu nodes in a table of their own: c1 lost, c2 linked.
                && page.matches("\"linked\":false").count() == 1
                && page.matches("\"linked\":true").count() == 1
        },
    );
    // New spawns go elsewhere; commands to its environments say why not.
    let two = g.door_ok("alice", &["spawn", "two"]);
    assert_eq!(spawn_host(&two), c2, "{two}");
    let err = g.door_err("alice", &["save", "one", "x"]);
    assert!(err.contains("which was lost"), "{err}");
    let err = g.door_err("alice", &["spawn", "one"]);
    assert!(err.contains("out of reach; boom it"), "{err}");
    // Boomed while out of reach: the grid no longer places it there.
    assert_eq!(g.door_ok("alice", &["boom", "one"]), "one BOOMed\n");

    // When it returns, it ends what it should no longer run.
    g.hosts.heal(1);
    wait_for(20, "c1 ends `one`", || {
        g.c1.log_has("environment ended") && g.s1.log_count("cpu node linked") >= 3
    });
    let status = g.door_ok("alice", &["status"]);
    assert!(!status.contains("one\t"), "{status}");
    assert!(!g.in_env("alice", &one, "true").status.success());
    // …and takes spawns again.
    let three = g.door_ok("alice", &["spawn", "three", "node=c1"]);
    assert_eq!(spawn_host(&three), c1);

    // kill -9 of c2 mid-session: lost, then its restart ends `two`, and
    // the storage node's records say so.
    g.c2.kill9();
    wait_for(15, "c2 lost", || {
        g.door_ok("alice", &["status"])
            .contains("lost: cpu node c2 out of reach")
    });
    let links = g.s1.log_count("cpu node linked");
    g.start_cpu(2);
    wait_for(20, "c2 back", || g.s1.log_count("cpu node linked") > links);
    // The admin's status page looking first takes nothing from alice
    // (before, it took the notice below, and alice never saw it).
    fetch_from_s1(&g, 0, "/status.json", "s1's status page", |page| {
        page.contains("\"environments\"") && page.contains("three")
    });
    let status = g.door_ok("alice", &["status"]);
    assert!(
        status.contains("two\tended: cpu node c2 restarted"),
        "{status}"
    );
    assert!(status.contains("three\t"), "{status}");
    // Said once; then two is simply not running, and spawns again.
    assert!(!g.door_ok("alice", &["status"]).contains("two\t"));
    let again = g.door_ok("alice", &["spawn", "two", "node=c2"]);
    assert_eq!(
        g.in_env_ok("alice", &again, "cat /etc/motd"),
        "lost and found\n"
    );
}

#[test]
fn environments_outlive_a_storage_node_restart_and_the_cache_keeps_its_bound() {
    if !can_run() {
        return;
    }
    // c2 gives up on a missing block after 2 s and caches at most 1 MiB.
    let mut g = Split::new(&[], &["--block-wait", "2", "--block-cache", "1M"]);
    let root = busybox_root(g.tmp.path(), "outlives its storage\n");
    let data = random_tree(g.tmp.path(), "data", 4);
    std::fs::rename(&data, root.join("data")).unwrap();
    let md5 = |f: &str| {
        let out = Command::new("md5sum")
            .arg(root.join("data").join(f))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..32].to_string()
    };
    g.import("big", &root);
    g.import("big2", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);

    let on1 = g.door_ok("alice", &["spawn", "big", "node=c1"]);
    let on2 = g.door_ok("alice", &["spawn", "big2", "node=c2"]);
    let sum = |reply: &str, f: &str| {
        g.in_env_ok("alice", reply, &format!("busybox md5sum /data/{f}"))[..32].to_string()
    };
    assert_eq!(sum(&on2, "f0"), md5("f0"));
    assert_eq!(sum(&on2, "f3"), md5("f3"));
    let held = cache_bytes(&g.state("c2").join("blockcache"));
    assert!(held <= 1 << 20, "c2's cache holds {held} bytes");

    // kill -9 of the storage node under running environments.
    g.s1.kill9();
    // A read on c1 of blocks it never fetched waits for the storage node…
    let waiting = {
        let mut cmd = g.hosts.command(0, "ssh");
        cmd.args(["-p", &spawn_port(&on1).to_string(), "-i"])
            .arg(g.tmp.path().join("alice"))
            .args(SSH_OPTS)
            .arg("-T")
            .arg(format!("alice@{}", spawn_host(&on1)))
            .arg("busybox md5sum /data/f1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    // …while on c2, with its 2 s deadline, it fails with EIO.
    let failed = g.in_env("alice", &on2, "busybox md5sum /data/f1");
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("Input/output error"), "{err}");

    let links = g.s1.log_count("cpu node linked");
    g.start_s1();
    // The failed read did not end the environment: with its storage node
    // back, the same environment reads on.
    assert_eq!(
        g.in_env_ok("alice", &on2, "cat /etc/motd"),
        "outlives its storage\n"
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap()[..32], md5("f1"));
    // The new storage process adopts both environments from their nodes.
    wait_for(20, "both cpu nodes back", || {
        g.s1.log_count("cpu node linked") >= links + 2
    });
    let status = g.door_ok("alice", &["status"]);
    assert!(
        status.contains("big\t") && status.contains("on cpu c1"),
        "{status}"
    );
    assert!(
        status.contains("big2\t") && status.contains("on cpu c2"),
        "{status}"
    );
    g.in_env_ok("alice", &on1, "echo after the restart > /root/later");
    g.door_ok("alice", &["save", "big", "later"]);
    let root = g.root_of("later").unwrap();
    assert!(g.read_tree(&root).unwrap().contains("root/later"));
    std::thread::sleep(Duration::from_millis(10));
}

/// What a storage node's stream hub `hub` holds, read on `host` as the
/// admin (over the node's loopback 9P).
fn hub_backlog(hosts: &Hosts, host: usize, hub: &str) -> String {
    let mut cat = hosts
        .command(host, COLONY)
        .args([
            "hub",
            "cat",
            hub,
            "--at",
            "127.0.0.1:5641",
            "--user",
            "admin",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The backlog, then an eof that ends the reader once it has read it.
    std::thread::sleep(Duration::from_millis(300));
    let ok = hosts
        .command(host, COLONY)
        .args(["hub", "ctl", "eof", hub, "--at", "127.0.0.1:5641"])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut text = String::new();
    std::io::Read::read_to_string(cat.stdout.as_mut().unwrap(), &mut text).unwrap();
    cat.wait().unwrap();
    text
}

#[test]
fn a_cpu_node_serves_two_replicating_storage_nodes() {
    if !can_run() {
        return;
    }
    let mut g = Split::with_storage(2, &["--block-cache", "48M"], &[]);
    g.import("busybox", &busybox_root(g.tmp.path(), "two stores\n"));
    g.start_s1();
    g.start_s2();
    g.start_cpu(1);
    wait_for(20, "c1 linked to both storage nodes", || {
        g.s1.log_has("cpu node linked") && g.s2.as_ref().unwrap().log_has("cpu node linked")
    });
    // Users and names reach s2 by replication; the blocks before the name.
    wait_for(20, "busybox on s2", || {
        g.root_on("s2", "busybox").is_some()
            && g.door_on(3, "alice", &["scores"]).stdout == b"busybox\n"
    });
    let c1 = g.hosts.addrs[1].clone();
    // The admin's view of a storage node lists its cpu nodes.
    let out = g
        .hosts
        .command(0, COLONY)
        .args([
            "grid",
            "status",
            &format!("tls!{}!17035", g.hosts.addrs[0]),
            "--cert",
        ])
        .arg(g.tmp.path().join("admin.tls"))
        .output()
        .unwrap();
    let board = String::from_utf8_lossy(&out.stdout);
    assert!(
        board.contains("cpu c1\tlinked\t0/5 environments"),
        "{board}"
    );
    // Sizes in the unit that fits (a 48 MiB cache showed as "0.0 GiB").
    assert!(board.contains(", 48.0 MiB block cache"), "{board}");

    // Spawned through s2: c1 reads the root's blocks from s2's venti.
    let via2 = g.door_on_ok(3, "alice", &["spawn", "busybox"]);
    assert_eq!(spawn_host(&via2), c1);
    assert_eq!(g.in_env_ok("alice", &via2, "cat /etc/motd"), "two stores\n");
    g.in_env_ok("alice", &via2, "echo saved through s2 > /root/note");
    g.door_on_ok(3, "alice", &["save", "busybox", "fromtwo"]);
    // …replicated to s1, spawned through it on the same cpu node.
    wait_for(20, "fromtwo on s1", || g.root_of("fromtwo").is_some());
    let via1 = g.door_ok("alice", &["spawn", "fromtwo"]);
    assert_eq!(spawn_host(&via1), c1);
    assert_eq!(
        g.in_env_ok("alice", &via1, "cat /root/note"),
        "saved through s2\n"
    );
    // A user's environments are one set across the grid (before: each
    // storage node knew only what it placed; s1 said busybox was "not
    // running" and would have placed a second one on another cpu node).
    // Invariant: through either storage node, alice sees and acts on all
    // of her environments and jobs, and a name runs once.
    let err = g.door_err("alice", &["spawn", "busybox"]);
    assert!(
        err.contains("busybox already runs for alice, placed by storage node s2"),
        "{err}"
    );
    let one = g.door_ok("alice", &["status"]);
    assert!(one.starts_with("fromtwo\t"), "{one}");
    assert!(
        one.lines()
            .any(|l| l.starts_with("busybox\t") && l.ends_with("\tthrough storage node s2")),
        "{one}"
    );
    let two = g.door_on_ok(3, "alice", &["status"]);
    assert!(two.starts_with("busybox\t"), "{two}");
    assert!(
        two.lines()
            .any(|l| l.starts_with("fromtwo\t") && l.ends_with("\tthrough storage node s1")),
        "{two}"
    );
    // Commands through s1 for what s2 placed are carried out by s2.
    assert!(
        g.door_ok("alice", &["save", "busybox", "copy"])
            .starts_with("copy saved\n")
    );
    wait_for(20, "copy on s1", || g.root_of("copy").is_some());
    assert!(
        g.door_ok("alice", &["invite", "bob", "busybox"])
            .starts_with("bob invited: ")
    );

    // Jobs: accepted by s1, seen, read, followed and cancelled through s2.
    let out = g.door_ok(
        "alice",
        &[
            "run",
            "-d",
            "busybox",
            "--",
            "echo start; sleep 60; echo done",
        ],
    );
    let id = out
        .trim()
        .strip_prefix("job ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    wait_for_job(60, &id, "running", || g.door_on_ok(3, "alice", &["jobs"]));
    wait_for(20, "the job's output through s2", || {
        g.door_on_ok(3, "alice", &["logs", &id]) == "start\n"
    });
    let jobs = g.door_on_ok(3, "alice", &["jobs"]);
    assert!(
        jobs.lines()
            .any(|l| l.starts_with(&id) && l.ends_with("\tthrough storage node s1")),
        "{jobs}"
    );
    // Following the running job before it is cancelled.
    let follower = g.following(3, &["logs", "-f", &id], b"start\n");
    assert_eq!(
        g.door_on_ok(3, "alice", &["cancel", &id]),
        format!("{id} cancelled\n")
    );
    let followed = follower.wait_with_output().unwrap();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(!followed.contains("done"), "{followed}");
    split_job_line(&g, &id, "cancelled");
    assert_eq!(
        g.door_err("alice", &["logs", "0123abcd"]).trim(),
        "no job 0123abcd of yours"
    );

    // Services too: kept by s2, listed, refused again and removed
    // through s1.
    g.door_on_ok(
        3,
        "alice",
        &[
            "service",
            "add",
            "idle",
            "busybox",
            "--",
            "busybox sleep 1000",
        ],
    );
    wait_for(30, "idle up, seen through s1", || {
        g.door_ok("alice", &["service", "ls"]).lines().any(|l| {
            l.starts_with("idle\tbusybox\t1/1 up") && l.ends_with("\tthrough storage node s2")
        })
    });
    // Its record travels to s1 as a copy.
    let copies = g.state("s1").join("services/.copies/s2/alice");
    let copy = |name: &str| copies.join(format!("{name}.json"));
    wait_for(30, "idle's record copied to s1", || copy("idle").exists());
    let err = g.door_err(
        "alice",
        &["service", "add", "idle", "busybox", "--", "true"],
    );
    assert!(err.contains("kept by storage node s2"), "{err}");
    assert!(
        g.door_ok("alice", &["service", "ls", "idle"])
            .starts_with("service=idle user=alice")
    );
    // A follower through s1 whose client leaves stops following: its
    // connection to s2 closes. (Before, it went on asking for ever.)
    let asks_on_s2 = || {
        let out = g
            .hosts
            .command(3, "ss")
            .args(["-Htn", "state", "established", "( sport = :17035 )"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = asks_on_s2();
    let mut gone = g.following(0, &["service", "logs", "-f", "idle"], b"service:");
    assert_eq!(asks_on_s2(), before + 1);
    gone.kill().unwrap();
    gone.wait().unwrap();
    wait_for(20, "the left follower's connection to s2 to close", || {
        asks_on_s2() == before
    });
    // Its log followed through s1 until it is removed.
    let follower = g.following(0, &["service", "logs", "-f", "idle"], b"service:");
    assert!(
        g.door_ok("alice", &["service", "rm", "idle"])
            .starts_with("idle removed")
    );
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success(), "{followed:?}");
    wait_for(30, "idle's environment to end", || {
        !g.door_on_ok(3, "alice", &["status"]).contains("idle.")
    });
    wait_for(30, "idle's copy dropped on s1", || !copy("idle").exists());
    assert_eq!(g.door_on_ok(3, "alice", &["service", "ls"]), "");

    assert_eq!(g.door_ok("alice", &["boom", "busybox"]), "busybox BOOMed\n");
    assert!(!g.door_on_ok(3, "alice", &["status"]).contains("busybox\t"));
    g.door_ok("alice", &["boom", "fromtwo"]);
    let none = g.door_on(3, "alice", &["status"]);
    assert_eq!(none.stdout, b"no environments running\n");
    assert!(
        none.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    // A service kept by s2 when the partition comes.
    g.add_service_on(3, "later busybox -- busybox sleep 1000");
    wait_for(30, "later's record copied to s1", || copy("later").exists());

    // A partition: s2 gone. s1 lists what it holds and says what it
    // cannot; a command for work it does not hold says who might; s2's
    // services are listed from their copies, and their names stay taken.
    g.s2.as_mut().unwrap().kill9();
    let ls = g.door_ok("alice", &["service", "ls"]);
    assert!(
        ls.starts_with("later\tbusybox\tkept by storage node s2, out of reach: as copied "),
        "{ls}"
    );
    let err = g.door_err(
        "alice",
        &["service", "add", "later", "busybox", "--", "true"],
    );
    assert!(err.contains("kept by storage node s2"), "{err}");
    let cut = g.door("alice", &["status"]);
    assert!(cut.status.success());
    let said = String::from_utf8_lossy(&cut.stderr);
    assert!(said.contains("storage node s2 is out of reach"), "{said}");
    let err = g.door_err("alice", &["boom", "ghost"]);
    assert!(
        err.contains("storage node s2, which may hold it, is out of reach"),
        "{err}"
    );

    // s2 back: the service it kept is removed through s1, s1's copy goes
    // with it, and the name is free again.
    g.start_s2();
    wait_for(30, "s2 back in s1's view", || {
        g.door_ok("alice", &["service", "ls"])
            .lines()
            .any(|l| l.starts_with("later\tbusybox\t") && l.ends_with("\tthrough storage node s2"))
    });
    // (Right after s2 started, s1's ask was once seen to find its
    // connection closed before the answer, cause not found: the command
    // then says s2 is out of reach, and is asked again.)
    wait_for(30, "later removed through s1", || {
        let out = g.door("alice", &["service", "rm", "later"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("out of reach"),
            "{err}"
        );
        out.status.success()
    });
    wait_for(30, "later's copy dropped on s1", || !copy("later").exists());
    g.add_service("later busybox -- busybox sleep 1000");
    assert!(
        g.door_ok("alice", &["service", "rm", "later"])
            .starts_with("later removed")
    );

    // Replication's progress is in each storage node's events.
    let events = hub_backlog(&g.hosts, 0, "events");
    for said in [
        "replica: linked to s2 at tls!",
        "replica: s2 has this node's log to ",
        " names to s2",
        " names from s2",
        "replica: stored ",
    ] {
        assert!(events.contains(said), "no {said:?} in {events}");
    }
}

/// Before, the status page gathered its figures on the storage node's
/// runtime: each look asked the cpu nodes for their environments and held
/// a worker until they answered, so two looks at once left no worker to
/// read the answers, or the pings, and the cpu nodes were taken as lost.
/// Invariant: looking at the status page, however many at once, never
/// loses a cpu node, and shows the environment running where it runs.
#[test]
fn looking_at_the_status_page_never_loses_a_cpu_node() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "looked at\n");
    g.import("one", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);
    g.door_ok("alice", &["spawn", "one", "node=c1"]);
    let g = &g;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(move || {
                for _ in 0..4 {
                    fetch_from_s1(g, 0, "/status.json", "s1's status page", |page| {
                        page.contains("\"environments\"")
                    });
                }
            });
        }
    });
    let page = fetch_from_s1(g, 0, "/status.json", "s1's status page", |page| {
        page.contains("\"environments\"")
    });
    assert_eq!(
        g.s1.log_count("cpu node lost"),
        0,
        "{}",
        g.s1.log.lock().unwrap()
    );
    assert!(
        page.contains("\"cpu\":\"c1\"")
            && page.contains("\"name\":\"one\"")
            && page.contains("\"state\":\"running\""),
        "{page}"
    );
}

/// `run` through a storage node: the command runs on a cpu node (the
/// storage node logs in there with a key made for the run, checking the
/// host key the cpu node sent over the control link), its output and exit
/// status come back through the front door, and its environment ends.
#[test]
fn a_run_through_the_storage_node_runs_on_a_cpu_node() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "run me\n");
    g.import("bb", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);
    for _ in 0..2 {
        let out = g.door(
            "alice",
            &[
                "run",
                "bb",
                "--",
                "cat /etc/motd; hostname; echo oops >&2; exit 5",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("run me\nbb.run-"), "{stdout}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
        assert_eq!(out.status.code(), Some(5));
    }
    wait_for(15, "the runs' environments to end", || {
        !g.door_ok("alice", &["status"]).contains(".run-")
    });
}

/// `count=50` spread over two cpu nodes runs each task exactly once. A
/// job whose cpu node is killed (kill -9) under it runs again on the
/// other cpu node, from the start, as its retries allow: `jobs` shows the
/// second try, its log both tries and why there was a second, and the
/// storage node's events stream each transition.
///
/// Invariants: without faults every task of a count runs exactly once; a
/// job with a retry left is not lost to one cpu node's death.
#[test]
fn a_job_whose_cpu_node_dies_runs_again_on_another() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "job\n");
    g.import("bb", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);

    // Fan-out over both cpu nodes: each task of count=50 runs once.
    let out = g.door_ok(
        "alice",
        &[
            "run",
            "-d",
            "bb",
            "count=50",
            "--",
            "echo task $COLONY_TASK",
        ],
    );
    let ids: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix("job ").unwrap_or_else(|| panic!("{out}")))
        .collect();
    assert_eq!(ids.len(), 50, "{out}");
    wait_for(120, "50 tasks to succeed", || {
        g.door_ok("alice", &["jobs"])
            .matches("\tsucceeded\t")
            .count()
            == 50
    });
    let mut tasks: Vec<String> = ids
        .iter()
        .map(|id| g.door_ok("alice", &["logs", id]))
        .collect();
    tasks.sort();
    let mut want: Vec<String> = (0..50).map(|t| format!("task {t}\n")).collect();
    want.sort();
    assert_eq!(tasks, want, "each task once");

    let id = started_job(&g, 8);
    // Where it runs: the cpu node whose address its environment's login
    // names.
    let mut on = 0;
    let status = g.door_ok("alice", &["status"]);
    let env = status
        .lines()
        .find(|l| l.contains("bb.run-"))
        .unwrap_or_else(|| panic!("{status}"));
    for i in [1, 2] {
        if env.contains(&format!("@{}", g.hosts.addrs[i])) {
            on = i;
        }
    }
    assert!(on != 0, "which cpu node runs it? {env}");
    if on == 1 {
        g.c1.kill9();
    } else {
        g.c2.kill9();
    }
    let line = split_job_line(&g, &id, "succeeded");
    let other = if on == 1 { "c2" } else { "c1" };
    assert!(
        line.contains("try 2") && line.contains(&format!("\ton {other}\t")),
        "{line}"
    );
    let log = g.door_ok("alice", &["logs", &id]);
    assert!(
        log.starts_with("start\nrun: lost on try 1: ")
            && log.ends_with("; trying again\nstart\ndone\n"),
        "{log}"
    );
    let events = hub_backlog(&g.hosts, 0, "events");
    for said in [
        format!("alice job {id} queued: bb -- echo start"),
        format!("alice job {id} running in bb.run-"),
        format!("alice job {id} lost on try 1: "),
        format!("alice job {id} succeeded"),
    ] {
        assert!(events.contains(&said), "no {said:?} in {events}");
    }
    wait_for(15, "the run's environment to end", || {
        !g.door_ok("alice", &["status"]).contains(".run-")
            || g.door_ok("alice", &["status"]).contains("lost")
    });
}

/// alice's `jobs` through s1 until `id`'s line says `state`; the line.
fn split_job_line(g: &Split, id: &str, state: &str) -> String {
    wait_for_job(60, id, state, || g.door_ok("alice", &["jobs"]))
}

/// A storage node killed (-9) while its job runs on a cpu node and
/// another waits in its queue runs the first again (its retry) and ends
/// the environment its first try ran in, once that cpu node reports it;
/// then the queued one. Before, the restarted storage node adopted that
/// environment and it ran on beside the second try, holding a slot for
/// ever.
/// Invariants: a kill -9 of the storage node holding the queue loses no
/// queued job; after it, no job's earlier try keeps an environment.
#[test]
fn a_killed_storage_node_keeps_its_queue_and_ends_the_environment_of_a_jobs_earlier_try() {
    if !can_run() {
        return;
    }
    // One environment at a time on the one cpu node: the second job waits.
    let mut g = Split::new(&["--spawn-max", "1"], &[]);
    let root = busybox_root(g.tmp.path(), "job\n");
    g.import("bb", &root);
    g.start_s1();
    g.start_cpu(1);
    g.wait_links(1);
    let id = started_job(&g, 4);
    let waiting = g.door_ok("alice", &["run", "-d", "bb", "--", "echo second"]);
    let waiting = waiting.trim().strip_prefix("job ").unwrap().to_string();
    split_job_line(&g, &waiting, "queued");
    let first = g.door_ok("alice", &["status"]);
    let first = first
        .lines()
        .find_map(|l| l.split('\t').next().filter(|n| n.contains(".run-")))
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    g.s1.kill9();
    g.start_s1();
    g.wait_links(2);
    let line = split_job_line(&g, &id, "succeeded");
    assert!(line.contains("try 2"), "{line}");
    split_job_line(&g, &waiting, "succeeded");
    assert_eq!(g.door_ok("alice", &["logs", &waiting]), "second\n");
    wait_for(20, "the first try's environment to end", || {
        !g.door_ok("alice", &["status"]).contains(&first)
    });
    wait_for(20, "the second try's environment to end", || {
        !g.door_ok("alice", &["status"]).contains(".run-")
    });
}

/// alice's `run -d bb retries=1 -- echo start; sleep SECS; echo done`
/// through s1, once it runs and has said `start`: its id.
fn started_job(g: &Split, secs: u32) -> String {
    let command = format!("echo start; sleep {secs}; echo done");
    let out = g.door_ok("alice", &["run", "-d", "bb", "retries=1", "--", &command]);
    let id = out
        .trim()
        .strip_prefix("job ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    split_job_line(g, &id, "running");
    wait_for(20, "the job's first output", || {
        g.door_ok("alice", &["logs", &id]) == "start\n"
    });
    id
}

impl Split {
    /// Starts s1 (and s2, in a grid of two storage nodes) and both cpu
    /// nodes, and waits for their links to s1.
    fn start_grid(&mut self) {
        self.start_s1();
        if self.s2.is_some() {
            self.start_s2();
        }
        self.start_cpu(1);
        self.start_cpu(2);
        self.wait_links(2);
    }

    /// `service add SPEC` for alice through s1's front door: SPEC is
    /// `NAME ROOT [OPTIONS] -- COMMAND`, the command passed as one word.
    fn add_service(&self, spec: &str) -> String {
        self.add_service_on(0, spec)
    }

    /// [`Split::add_service`] through the front door on `host`.
    fn add_service_on(&self, host: usize, spec: &str) -> String {
        let (head, command) = spec.split_once(" -- ").expect("NAME ROOT … -- COMMAND");
        let mut args = vec!["service", "add"];
        args.extend(head.split_whitespace());
        args.extend(["--", command]);
        self.door_on_ok(host, "alice", &args)
    }
}

/// A busybox root with every applet and `/www/index.html` saying `page`
/// (its `motd` too, which names the root's directory).
fn web_root(dir: &Path, page: &str) -> PathBuf {
    let root = busybox_root(dir, page);
    crate::common::grid::every_busybox_applet(&root);
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), page).unwrap();
    root
}

/// The `up` replicas' addresses in the storage node's services directory,
/// as a client finds them: `(node, HOST:PORT)`.
fn directory_of(g: &Split, service: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(g.state("s1").join("services.ndb")).unwrap_or_default();
    let mut found = Vec::new();
    let mut current: Option<(bool, String)> = None;
    for line in text.lines() {
        let attrs: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str| attrs.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
        if !line.starts_with('\t') {
            current = (get("service") == Some(service)).then(|| {
                (
                    get("state") == Some("up"),
                    get("node").unwrap_or("").to_string(),
                )
            });
        } else if let (Some((true, node)), Some(dial)) = (&current, get("dial")) {
            let mut parts = dial.split('!').skip(1);
            let (host, port) = (parts.next().unwrap(), parts.next().unwrap());
            found.push((node.clone(), format!("{host}:{port}")));
        }
    }
    found
}

/// `GET /` at `addr` from s1's host: the page, if it answered.
fn fetch(g: &Split, addr: &str) -> Option<String> {
    let out = g
        .hosts
        .command(0, "curl")
        .args(["-sf", "-m", "2", &format!("http://{addr}/")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Services on two storage nodes (s1 keeps them) and two cpu nodes in
/// network namespaces.
/// Invariants: a service's replicas run on distinct cpu nodes while there
/// are enough, and the directory lists each where it can be reached; a
/// command that keeps crashing is started again with a growing backoff,
/// not in a loop; a rolling update never leaves a client that tries the
/// directory's addresses without an answer; a new root that fails its
/// health check stops the rollout and the old replicas serve on; the
/// replicas of a cpu node killed -9 come back on the other; removing a
/// service ends its replicas.
#[test]
fn a_service_is_kept_running_through_crashes_updates_and_a_lost_cpu_node() {
    if !can_run() {
        return;
    }
    // Two storage nodes: s1 keeps the services, s2 sees them.
    let mut g = Split::with_storage(2, &[], &[]);
    let one = web_root(g.tmp.path(), "one\n");
    g.import("web1", &one);
    g.import("web2", &web_root(g.tmp.path(), "two!\n"));
    // No /www: its httpd ends at once, so it never passes its check.
    let broken = web_root(g.tmp.path(), "broken\n");
    std::fs::remove_dir_all(broken.join("www")).unwrap();
    g.import("broken", &broken);
    g.start_grid();

    let httpd = "httpd -f -p 8080 -h /www";
    let added = g.add_service(&format!(
        "web web1 replicas=2 publish=8080 health=http:8080/ -- {httpd}"
    ));
    assert!(added.starts_with("web added"), "{added}");
    // A command that crashes at once, started again with a backoff.
    let crash_added = std::time::Instant::now();
    g.add_service("crash web1 -- echo tick; exit 3");
    wait_for(60, "web's two replicas up", || {
        g.door_ok("alice", &["service", "ls"])
            .contains("web\tweb1\t2/2 up")
    });
    wait_for(30, "web seen through s2", || {
        g.door_on_ok(3, "alice", &["service", "ls"])
            .lines()
            .any(|l| l.starts_with("web\tweb1\t2/2 up") && l.ends_with("\tthrough storage node s1"))
    });
    let found = directory_of(&g, "web");
    assert_eq!(found.len(), 2, "{found:?}");
    assert_ne!(found[0].0, found[1].0, "replicas on one node: {found:?}");
    for (_, addr) in &found {
        assert_eq!(fetch(&g, addr).as_deref(), Some("one\n"), "{addr}");
    }
    // A check program run in the replica's environment.
    g.add_service("probe web1 health=cmd:/bin/true -- sleep 1000");
    wait_for(60, "probe up by its check program", || {
        g.door_ok("alice", &["service", "ls"])
            .contains("probe\tweb1\t1/1 up\thealth cmd:/bin/true")
    });
    g.door_ok("alice", &["service", "rm", "probe"]);
    // Told on the events stream, as where a client finds it after a move.
    let events = hub_backlog(&g.hosts, 0, "events");
    assert!(
        events.contains(" alice service web replica web.0 up on c"),
        "{events}"
    );
    // The same directory through the front door and `colony ndb query`.
    let listed = g.door_ok("alice", &["service", "ls", "web"]);
    assert_eq!(
        listed
            .matches("service=web user=alice replica=web.")
            .count(),
        2,
        "{listed}"
    );
    let dials = colony(&[
        "ndb",
        "query",
        "-f",
        g.state("s1").join("services.ndb").to_str().unwrap(),
        "service",
        "web",
        "dial",
        "-a",
    ]);
    assert_eq!(dials.lines().count(), 2, "{dials}");

    // A rolling update under a client that tries the directory's
    // addresses in turn: never without an answer.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen_two = std::sync::atomic::AtomicBool::new(false);
    let (failed, pages) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let (mut failed, mut pages) = (0, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let page = directory_of(&g, "web")
                    .iter()
                    .find_map(|(_, addr)| fetch(&g, addr));
                match page {
                    Some(p) => {
                        if p == "two!\n" {
                            seen_two.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        pages.insert(p);
                    }
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (failed, pages)
        });
        g.door_ok("alice", &["service", "update", "web", "web2"]);
        wait_for(120, "web rolled out to web2", || {
            let ls = g.door_ok("alice", &["service", "ls"]);
            ls.contains("web\tweb2\t2/2 up") && !ls.contains("rolling out")
        });
        wait_for(20, "the client to be served by web2", || {
            seen_two.load(std::sync::atomic::Ordering::SeqCst)
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        poller.join().unwrap()
    });
    assert_eq!(failed, 0, "polls without an answer during the rollout");
    assert!(pages.contains("two!\n"), "{pages:?}");
    wait_for(20, "only web2's pages", || {
        let found = directory_of(&g, "web");
        found.len() == 2
            && found
                .iter()
                .all(|(_, a)| fetch(&g, a).as_deref() == Some("two!\n"))
    });

    // A root whose replicas never pass their check: the rollout stops.
    g.door_ok("alice", &["service", "update", "web", "broken"]);
    wait_for(60, "the broken rollout to stop", || {
        g.door_ok("alice", &["service", "ls"])
            .contains("rollout of broken stopped")
    });
    let ls = g.door_ok("alice", &["service", "ls"]);
    assert!(ls.contains("web\tweb2\t2/2 up"), "{ls}");
    for (_, addr) in directory_of(&g, "web") {
        assert_eq!(fetch(&g, &addr).as_deref(), Some("two!\n"));
    }

    // A replica whose health check fails is started again, fresh from
    // its root.
    let status = g.door_ok("alice", &["status"]);
    let login = status
        .lines()
        .filter(|l| l.starts_with("web."))
        .find_map(|l| l.split('\t').find(|f| f.starts_with("ssh -p ")))
        .unwrap_or_else(|| panic!("{status}"))
        .to_string();
    g.in_env_ok("alice", &format!("{login}\n"), "rm /www/index.html");
    wait_for(60, "the unhealthy replica started again", || {
        g.door_ok("alice", &["service", "logs", "web"])
            .contains("failed its health check 3 times")
    });
    wait_for(60, "web's two replicas up again", || {
        let found = directory_of(&g, "web");
        found.len() == 2
            && found
                .iter()
                .all(|(_, a)| fetch(&g, a).as_deref() == Some("two!\n"))
    });

    // The crashing command: restarted after 1 s, then 2 s, then 4 s (a
    // loop would have run it hundreds of times by its fourth end).
    let restarts = || {
        g.door_ok("alice", &["service", "logs", "crash"])
            .matches("exited with status 3")
            .count()
    };
    wait_for(60, "crash's fourth end", || restarts() >= 4);
    assert!(crash_added.elapsed() >= Duration::from_secs(7));
    let log = g.door_ok("alice", &["service", "logs", "crash"]);
    assert!(log.contains("starting again in 4s"), "{log}");
    // Followed until it is removed.
    let follower = g.following(0, &["service", "logs", "-f", "crash"], b"service:");
    g.door_ok("alice", &["service", "rm", "crash"]);
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success(), "{followed:?}");
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.contains("tick\n"), "{followed}");

    // kill -9 of a cpu node: its replica comes back on the other.
    let lost = directory_of(&g, "web")[0].0.clone();
    if lost == "c1" {
        g.c1.kill9()
    } else {
        g.c2.kill9()
    }
    wait_for(60, "both replicas up on the other node", || {
        let found = directory_of(&g, "web");
        found.len() == 2 && found.iter().all(|(n, _)| *n != lost)
    });
    for (_, addr) in directory_of(&g, "web") {
        assert_eq!(fetch(&g, &addr).as_deref(), Some("two!\n"));
    }

    // The storage node killed -9 and started again keeps its services,
    // and ends the environments their replicas ran in before.
    let before: Vec<String> = g
        .door_ok("alice", &["status"])
        .lines()
        .filter(|l| l.starts_with("web."))
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");
    g.s1.kill9();
    g.start_s1();
    wait_for(60, "the replicas' earlier environments to end", || {
        let now = g.door_ok("alice", &["status"]);
        before.iter().all(|env| !now.contains(env.as_str()))
            && now.lines().filter(|l| l.starts_with("web.")).count() == 2
    });
    wait_for(60, "web kept again, two replicas up", || {
        let found = directory_of(&g, "web");
        found.len() == 2
            && found
                .iter()
                .all(|(_, a)| fetch(&g, a).as_deref() == Some("two!\n"))
    });
    let log = g.door_ok("alice", &["service", "logs", "web"]);
    assert!(log.contains("kept again: its node restarted"), "{log}");

    // Removed during a rollout: the rollout ends with it, and the name
    // can be added and rolled out again at once.
    g.door_ok("alice", &["service", "update", "web", "web1"]);
    assert!(
        g.door_ok("alice", &["service", "rm", "web"])
            .starts_with("web removed")
    );
    g.add_service(&format!("web web2 publish=8080 -- {httpd}"));
    wait_for(10, "the old rollout to end with its service", || {
        g.door("alice", &["service", "update", "web", "web1"])
            .status
            .success()
    });
    assert!(
        g.door_ok("alice", &["service", "rm", "web"])
            .starts_with("web removed")
    );
    wait_for(30, "web's environments to end", || {
        !g.door_ok("alice", &["status"]).contains("web.")
    });
    assert!(directory_of(&g, "web").is_empty());
    assert_eq!(g.door_ok("alice", &["service", "ls"]), "");
}

/// A busybox root with this build's `colony` in it (stripped) and the
/// libraries it loads.
fn colony_root(dir: &Path) -> PathBuf {
    let root = busybox_root(dir, "a root with colony in it\n");
    let status = Command::new("strip")
        .arg("-o")
        .arg(root.join("bin/colony"))
        .arg(COLONY)
        .status()
        .unwrap();
    assert!(status.success());
    let ldd = Command::new("ldd").arg(COLONY).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    root
}

/// One message through the chat at `addr` (a hubfs): written to the hub
/// `room` (made if it is not there) and read back by a reader (which
/// starts at the oldest byte the hub keeps).
fn chat(g: &Split, addr: &str, message: &str) -> Result<(), String> {
    let mut writer = g
        .hosts
        .command(0, COLONY)
        .args(["hub", "write", "--at", addr, "room"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(writer.stdin.as_mut().unwrap(), message.as_bytes()).unwrap();
    drop(writer.stdin.take());
    let wrote = writer.wait_with_output().unwrap();
    if !wrote.status.success() {
        return Err(String::from_utf8_lossy(&wrote.stderr).into_owned());
    }
    let mut reader = Reaped(
        g.hosts
            .command(0, COLONY)
            .args(["hub", "cat", "--at", addr, "room"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut heard = Vec::new();
    let mut byte = [0u8; 1];
    let out = reader.0.stdout.as_mut().unwrap();
    while !heard.ends_with(message.as_bytes()) {
        match std::io::Read::read(out, &mut byte) {
            Ok(1) => heard.push(byte[0]),
            _ => {
                return Err(format!(
                    "the reader heard {:?}",
                    String::from_utf8_lossy(&heard)
                ));
            }
        }
    }
    Ok(())
}

/// The grid keeps one of its own services: a `colony hubfs` chat,
/// published, one replica. Invariant: after kill -9 of its cpu node, a
/// client finds it again through the directory and chats.
#[test]
fn a_hubfs_chat_kept_as_a_service_is_found_again_after_its_node_dies() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    g.import("chat", &colony_root(g.tmp.path()));
    g.start_grid();
    g.add_service("chat chat publish=5641 health=tcp:5641 -- colony hubfs --listen 0.0.0.0:5641");
    wait_for(90, "the chat up", || directory_of(&g, "chat").len() == 1);
    let (node, addr) = directory_of(&g, "chat").remove(0);
    if let Err(e) = chat(&g, &addr, "alice: hello\n") {
        panic!("{e}\n{}", g.door_ok("alice", &["service", "logs", "chat"]));
    }

    if node == "c1" {
        g.c1.kill9()
    } else {
        g.c2.kill9()
    }
    wait_for(90, "the chat up on the other node", || {
        directory_of(&g, "chat")
            .first()
            .is_some_and(|(n, _)| *n != node)
    });
    let (_, moved) = directory_of(&g, "chat").remove(0);
    assert_ne!(moved, addr);
    chat(&g, &moved, "alice: still here?\n").unwrap();
    g.door_ok("alice", &["service", "rm", "chat"]);
}

/// A cpu node cut off by a pulled cable (no reset reaches anyone), then
/// plugged back. Before, a replica's session to its environment there
/// waited for ever, and the service stayed a replica short.
/// Invariants: the replica comes back on the other cpu node within
/// seconds; the directory never lists more up replicas than asked; once
/// the cable is back the cut-off node's old environment is ended, and the
/// service runs exactly its replicas again.
#[test]
fn a_service_outlives_a_cut_link_and_converges_when_it_heals() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    g.import("web1", &web_root(g.tmp.path(), "one\n"));
    g.start_grid();
    // No health check: the loss is found by the replica's session to its
    // environment alone.
    g.add_service("web web1 replicas=2 publish=8080 -- httpd -f -p 8080 -h /www");
    wait_for(60, "two replicas up", || directory_of(&g, "web").len() == 2);
    let envs_before: Vec<String> = g
        .door_ok("alice", &["status"])
        .lines()
        .filter(|l| l.starts_with("web.") && l.ends_with("on cpu c1"))
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(envs_before.len(), 1, "{envs_before:?}");

    g.hosts.cut(1);
    // On the storage node's side of the cut, never more than 2 replicas'
    // environments running (the cut-off one shows as lost, then goes).
    let mut most = 0;
    wait_for(60, "both replicas up on c2", || {
        let running = g
            .door_ok("alice", &["status"])
            .lines()
            .filter(|l| l.starts_with("web.") && !l.contains("lost"))
            .count();
        most = most.max(running);
        let found = directory_of(&g, "web");
        found.len() == 2 && found.iter().all(|(n, _)| n == "c2")
    });
    assert!(most <= 2, "{most} replicas ran on the storage node's side");
    wait_for(20, "both serving", || {
        directory_of(&g, "web")
            .iter()
            .all(|(_, a)| fetch(&g, a).as_deref() == Some("one\n"))
    });

    g.hosts.heal(1);
    wait_for(60, "c1 back, its old replica ended", || {
        let status = g.door_ok("alice", &["status"]);
        envs_before.iter().all(|e| !status.contains(e.as_str()))
            && status.lines().filter(|l| l.starts_with("web.")).count() == 2
            && !status.contains("lost")
    });
    assert_eq!(directory_of(&g, "web").len(), 2);
    g.door_ok("alice", &["service", "rm", "web"]);
}

/// `waited=N` of the `n`th "a start's first reads" line of a cpu node's
/// log: the reads of that start that waited on the link.
fn start_waited(cpu: &Proc, n: usize) -> (u64, u64) {
    let log = cpu.log.lock().unwrap();
    let line = log
        .lines()
        .filter(|l| l.contains("a start's first reads"))
        .nth(n)
        .unwrap_or_else(|| panic!("no start {n} in the log"))
        .to_string();
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
    };
    (field("waited"), field("listed"))
}

/// The working-set list storage node `node` holds for `root` (vac:HEX).
fn working_set_on(g: &Split, node: &str, root: &str) -> Option<String> {
    let db = ndb::Db::open(&g.state(node).join("scorenames")).ok()?;
    db.entries()
        .iter()
        .rev()
        .find(|e| e.get("for") == Some(root))
        .and_then(|e| e.get("workingset").map(str::to_string))
}

/// A root's first start records what it reads; the list is kept with the
/// root, replicated with the names, and on the next start on a cold cpu
/// node its blocks are fetched ahead, so far fewer reads wait on the link.
/// A save passes the list on to the saved root. A list that is not one is
/// ignored with a log line and the spawn works.
///
/// Invariants: a list is only a hint (every spawn reads the same files
/// whatever list it was given); a name's list reaches the other storage
/// node; a cold start with a list waits on the link for fewer reads.
#[test]
fn a_roots_working_set_is_kept_replicated_and_fetched_ahead_on_a_cold_start() {
    if !can_run() {
        return;
    }
    let window = ["--working-set-window", "2s"];
    let mut g = Split::with_storage(2, &window, &[]);
    let tree = busybox_root(g.tmp.path(), "working set\n");
    // A start that reads many small files in many directories: each one a
    // round trip or more when nothing is fetched ahead.
    let mut total = 0;
    for d in 0..12 {
        let dir = tree.join(format!("data/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..6 {
            let text = format!("{d}/{f}\n").repeat(400);
            total += text.len();
            std::fs::write(dir.join(format!("f{f}")), text).unwrap();
        }
    }
    let root = g.import("ws", &tree);
    g.start_s1();
    g.start_s2();
    g.start_cpu(1);
    wait_for(20, "c1 linked to both storage nodes", || {
        g.s1.log_has("cpu node linked") && g.s2.as_ref().unwrap().log_has("cpu node linked")
    });
    let read_all = "cat /data/*/* | wc -c";
    let bytes = total.to_string();

    // 1. The first start: no list. What it reads is recorded and kept.
    let reply = g.door_ok("alice", &["spawn", "ws"]);
    assert_eq!(g.in_env_ok("alice", &reply, read_all).trim(), bytes.trim());
    wait_for(30, "the first start's reads", || {
        g.c1.log_has("a start's first reads")
    });
    let (cold, listed) = start_waited(&g.c1, 0);
    assert_eq!(listed, 0, "the first start had no list");
    wait_for(20, "ws's list on s1", || {
        working_set_on(&g, "s1", &root).is_some()
    });
    let list = working_set_on(&g, "s1", &root).unwrap();
    // 2. It travels with the names.
    wait_for(30, "ws's list on s2", || {
        working_set_on(&g, "s2", &root).as_deref() == Some(list.as_str())
    });
    g.door_ok("alice", &["boom", "ws"]);

    // 3. A cold cpu node, spawned through s2: the list's blocks come ahead.
    let cold_cache = |g: &mut Split| {
        g.c1.stop();
        std::fs::remove_dir_all(g.state("c1").join("blockcache")).unwrap();
        let links = g.s1.log_count("cpu node linked");
        g.start_cpu(1);
        wait_for(20, "c1 linked again", || {
            g.s1.log_count("cpu node linked") > links
        });
    };
    cold_cache(&mut g);
    let reply = g.door_on_ok(3, "alice", &["spawn", "ws"]);
    assert_eq!(g.in_env_ok("alice", &reply, read_all).trim(), bytes.trim());
    wait_for(30, "the second start's reads", || {
        g.c1.log_count("a start's first reads") >= 2
    });
    let (ahead, listed) = start_waited(&g.c1, 1);
    assert!(listed > 0, "the second start was given the list");
    assert!(
        ahead * 2 < cold,
        "with its list, {ahead} reads waited on the link; without, {cold}"
    );

    // 4. A save passes the list on to the saved root.
    g.door_on_ok(3, "alice", &["save", "ws", "ws2"]);
    let saved = {
        let db = ndb::Db::open(&g.state("s2").join("scorenames")).unwrap();
        db.entries()
            .iter()
            .find(|e| e.get("scorename") == Some("ws2"))
            .and_then(|e| e.get("rootscore").map(str::to_string))
            .unwrap()
    };
    assert_eq!(
        working_set_on(&g, "s2", &saved),
        working_set_on(&g, "s2", &root)
    );
    g.door_on_ok(3, "alice", &["boom", "ws"]);

    // 5. A list that is not one (here, the root block's score), the
    // newest, appended to s1's names by hand while it runs: ignored, and
    // the spawn works.
    let mut names = std::fs::OpenOptions::new()
        .append(true)
        .open(g.state("s1").join("scorenames"))
        .unwrap();
    use std::io::Write as _;
    writeln!(
        names,
        "workingset={} for={root} time={} origin=s1 pos=0",
        root.trim_start_matches("vac:"),
        // The newest is in force.
        u64::MAX / 2
    )
    .unwrap();
    drop(names);
    cold_cache(&mut g);
    let reply = g.door_ok("alice", &["spawn", "ws"]);
    assert_eq!(g.in_env_ok("alice", &reply, read_all).trim(), bytes.trim());
    wait_for(20, "the damaged list noticed", || {
        g.c1.log_has("a working-set list ignored")
    });
    g.door_ok("alice", &["boom", "ws"]);
}

/// alice's `status` line for `name` through s1.
fn split_status_line(g: &Split, name: &str) -> String {
    g.door_ok("alice", &["status"])
        .lines()
        .find(|l| l.starts_with(&format!("{name}\t")))
        .unwrap_or_default()
        .to_string()
}

/// An idle environment on a cpu node is suspended there and shows so
/// through the storage node; a login wakes it on the same cpu node and
/// port; after a kill -9 and restart of the cpu node, it listens again, is
/// still the storage node's, wakes whole and saves through the front door.
#[test]
fn an_idle_environment_on_a_cpu_node_sleeps_wakes_and_outlives_its_restart() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "sleepy\n");
    g.import("nap", &root);
    g.start_s1();
    g.start_cpu(1);
    g.start_cpu(2);
    g.wait_links(2);
    let nap = g.door_ok("alice", &["spawn", "nap", "node=c1", "idle=1s"]);
    g.in_env_ok("alice", &nap, "echo written > /root/note");
    let suspended = |g: &Split| split_status_line(g, "nap").contains("\tsuspended ");
    wait_for(20, "nap suspended on c1", || suspended(&g));
    assert!(
        split_status_line(&g, "nap").contains(&format!("@{}", g.hosts.addrs[1])),
        "{}",
        split_status_line(&g, "nap")
    );
    assert_eq!(g.in_env_ok("alice", &nap, "cat /root/note"), "written\n");
    assert_eq!(g.c1.log_count("woke a suspended environment"), 1);
    wait_for(20, "nap suspended again", || {
        g.c1.log_count("suspended an idle environment") == 2
    });

    g.c1.kill9();
    let links = g.s1.log_count("cpu node linked");
    g.start_cpu(1);
    wait_for(20, "c1 back", || g.s1.log_count("cpu node linked") > links);
    assert!(g.c1.log_has("a suspended environment listens again"));
    wait_for(10, "nap suspended after c1's restart", || suspended(&g));
    // Saved while asleep: its resume point, bound as a name on s1.
    g.door_ok("alice", &["save", "nap", "napped"]);
    let napped = g.root_of("napped").expect("napped bound on s1");
    assert!(g.read_tree(&napped).unwrap().contains("root/note"));
    assert_eq!(g.in_env_ok("alice", &nap, "cat /root/note"), "written\n");
    assert_eq!(g.door_ok("alice", &["boom", "nap"]), "nap BOOMed\n");
}

/// `colony gc` beside the storage node s1: its report, or its refusal.
fn gc_on_s1(g: &Split) -> Result<String, String> {
    crate::common::run::gc(&g.state("s1"))
}

/// A storage node restarted while a cpu node that ran its environments is
/// away knows nothing yet of what they stand on (they are adopted when the
/// cpu node links again): a collection is refused, naming the cpu node,
/// and goes ahead once it has linked. Invariant: nothing is collected on a
/// view that may miss an environment's roots.
#[test]
fn a_collection_waits_for_every_cpu_node_that_ever_linked() {
    if !can_run() {
        return;
    }
    let mut g = Split::new(&[], &[]);
    let root = busybox_root(g.tmp.path(), "remembered\n");
    g.import("kept", &root);
    g.start_s1();
    g.start_cpu(1);
    g.wait_links(1);
    let reply = g.door_ok("alice", &["spawn", "kept", "node=c1"]);
    assert_eq!(
        g.in_env_ok("alice", &reply, "cat /etc/motd"),
        "remembered\n"
    );
    assert!(gc_on_s1(&g).is_ok());

    g.s1.kill9();
    g.c1.stop();
    g.start_s1();
    let refused = gc_on_s1(&g).expect_err("a collection before c1 links again");
    assert!(refused.contains("cpu node c1 has not linked"), "{refused}");
    g.start_cpu(1);
    g.wait_links(2);
    let report = gc_on_s1(&g).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("swept the log"), "{report}");
}
