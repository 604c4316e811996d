//! Storage nodes replicating to each other, run as an admin would: a grid
//! CA, `colony serve` on hosts of their own (network namespaces on a
//! bridge) with `--replica-listen` and `--peer`, users on OpenSSH.
//!
//! Invariants checked:
//! * a name is never visible on a node before every block of its root is
//!   there: on every arrival of a name, the whole tree is read back through
//!   that node's venti service;
//! * every root and every user reaches every node, in a mesh and along a
//!   chain, and a root saved on one node spawns on another;
//! * after kill -9 of the sender or the receiver mid-stream, every block
//!   arrives, and none is sent twice beyond one batch;
//! * a cut link heals by itself;
//! * one name bound to two roots on two nodes at once converges on one
//!   winner everywhere, and the other root stays reachable, pointed out.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::grid::{
    COLONY, Reaped, SSH_OPTS, busybox_root, colony, drained, gather, random_tree, spawn_port,
    wait_for,
};
use crate::common::netns::{self, Hosts};

const REPLICA_PORT: u16 = 17035;
/// Each node's venti service, on its own loopback, for the checks (over
/// TLS, as a node with a certificate serves it to grid members only).
const VENTI: &str = "tls!127.0.0.1!17034";
/// The pushers' batch limit (`serve --replica-batch`): small, so a kill
/// lands mid-stream and "one batch" is a tight bound.
const BATCH: u64 = 32;
/// Where a node's admin address is, when a test gives it one: its host's
/// loopback (plain HTTP there).
const ADMIN: &str = "127.0.0.1:17050";

fn can_run() -> bool {
    netns::available() && Path::new("/dev/fuse").exists()
}

/// A grid: its CA, certificates, keys and hosts.
struct Grid {
    tmp: tempfile::TempDir,
    hosts: Hosts,
    names: Vec<String>,
}

struct Node {
    i: usize,
    name: String,
    state: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Everything the node wrote to stderr, over all its runs.
    log: Arc<Mutex<String>>,
    /// The thread copying the current run's stderr into `log`.
    gathering: Option<std::thread::JoinHandle<()>>,
}

impl Grid {
    fn new(names: &[&str]) -> Grid {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        colony(&[
            "grid",
            "ca",
            "init",
            "--grid",
            "test",
            "--ca",
            ca.to_str().unwrap(),
        ]);
        for n in names {
            let out = tmp.path().join(format!("{n}.tls"));
            colony(&[
                "grid",
                "ca",
                "issue",
                n,
                "--role",
                "storage",
                "--ca",
                ca.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
        }
        let admin = tmp.path().join("admin.tls");
        colony(&[
            "grid",
            "ca",
            "issue",
            "admin",
            "--role",
            "client",
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            admin.to_str().unwrap(),
        ]);
        for user in ["alice", "bob"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(tmp.path().join(user))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        Grid {
            hosts: Hosts::new(names.len()),
            tmp,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn addr(&self, i: usize) -> &str {
        &self.hosts.addrs[i]
    }

    /// Node `i`, pushing to `peers` (indices); not started.
    fn node(&self, i: usize, peers: &[usize]) -> Node {
        let name = self.names[i].clone();
        let state = self.tmp.path().join(format!("{name}.state"));
        std::fs::create_dir_all(&state).unwrap();
        let addr = self.addr(i);
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &format!("{addr}:16999"),
            "--env-ports",
            "20001-20010",
            "--public-host",
            addr,
            "--venti-listen",
            VENTI,
            "--replica-listen",
            &format!("tls!{addr}!{REPLICA_PORT}"),
            "--replica-batch",
            &BATCH.to_string(),
            "--tls",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(
            self.tmp
                .path()
                .join(format!("{name}.tls"))
                .display()
                .to_string(),
        );
        for &p in peers {
            args.push("--peer".into());
            args.push(format!(
                "{}=tls!{}!{REPLICA_PORT}",
                self.names[p],
                self.addr(p)
            ));
        }
        args.push("--state".into());
        args.push(state.display().to_string());
        Node {
            i,
            name,
            state,
            args,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            gathering: None,
        }
    }

    fn key(&self, user: &str) -> PathBuf {
        self.tmp.path().join(user)
    }

    fn add_user(&self, node: &Node, user: &str) {
        colony(&[
            "user",
            "add",
            user,
            "--key",
            self.key(user).with_extension("pub").to_str().unwrap(),
            "--state",
            node.state.to_str().unwrap(),
        ]);
    }

    /// `ssh USER@node ARGS` to the front door of `node`.
    fn ssh(&self, node: &Node, user: &str, args: &[&str]) -> Output {
        let mut cmd = self.hosts.command(node.i, "ssh");
        cmd.args(["-p", "16999", "-i"])
            .arg(self.key(user))
            .args(SSH_OPTS)
            .arg("-T")
            .arg(format!("{user}@{}", self.addr(node.i)))
            .args(args)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }

    fn ssh_ok(&self, node: &Node, user: &str, args: &[&str]) -> String {
        let out = self.ssh(node, user, args);
        assert!(
            out.status.success(),
            "{user}@{} {args:?}: {}\n{}",
            node.name,
            String::from_utf8_lossy(&out.stderr),
            node.log.lock().unwrap()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `command` in the environment whose login `port` is on `node`.
    fn in_env(&self, node: &Node, user: &str, port: u16, command: &str) -> String {
        let mut cmd = self.hosts.command(node.i, "ssh");
        cmd.args(["-p", &port.to_string(), "-i"])
            .arg(self.key(user))
            .args(SSH_OPTS)
            .arg("-T")
            .arg(format!("{user}@{}", self.addr(node.i)))
            .arg(command)
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{command} on {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The status page's data of `node` (started with `--admin-listen
    /// ADMIN`, on its host's loopback).
    fn status_page(&self, node: &Node) -> serde_json::Value {
        let out = self
            .hosts
            .command(node.i, "curl")
            .args(["-s", "-m", "5", &format!("http://{ADMIN}/status.json")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `colony grid status` of `node`, as the grid's admin.
    fn status(&self, node: &Node) -> String {
        let out = self
            .hosts
            .command(node.i, COLONY)
            .args([
                "grid",
                "status",
                &format!("tls!{}!{REPLICA_PORT}", self.addr(node.i)),
                "--cert",
            ])
            .arg(self.tmp.path().join("admin.tls"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Reads the whole tree of `root` through `node`'s venti service: Ok
    /// only if every block is there.
    fn read_tree(&self, node: &Node, root: &str) -> Result<String, String> {
        self.read_tree_on(node.i, root)
    }

    fn read_tree_on(&self, host: usize, root: &str) -> Result<String, String> {
        let out = self
            .hosts
            .command(host, COLONY)
            .env("COLONY_TLS", self.tmp.path().join("admin.tls"))
            .args(["unvac", "-t", "-h", VENTI, root])
            .output()
            .unwrap();
        crate::common::run::outcome(&out)
    }

    /// Imports `dir` as `name` for alice into `node` (running or not).
    fn import(&self, node: &Node, name: &str, dir: &Path) -> String {
        let mut cmd = self.hosts.command(node.i, COLONY);
        cmd.args(["import", name])
            .arg(dir)
            .args(["--user", "alice", "--state"])
            .arg(&node.state);
        if node.child.is_some() {
            cmd.args(["--venti", VENTI])
                .env("COLONY_TLS", self.tmp.path().join("admin.tls"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
}

impl Node {
    fn start(&mut self, grid: &Grid) {
        let mut child = grid
            .hosts
            .command(self.i, COLONY)
            .args(&self.args)
            .env("COLONY_LOG", "info,replica=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.gathering = Some(gather(child.stderr.take().unwrap(), self.log.clone()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("listening on "),
            "{} did not start: {line:?}\n{}",
            self.name,
            self.log.lock().unwrap()
        );
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        drained(self.gathering.take());
    }

    fn stop(&mut self) {
        let c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait_with_output().unwrap();
        drained(self.gathering.take());
    }

    /// Name → root, as the node shows it.
    fn names(&self) -> Vec<(String, String)> {
        names_in(&self.state)
    }

    fn root_of(&self, name: &str) -> Option<String> {
        self.names()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r)
    }

    /// Blocks the node's keeper stored, summed over the `stored a batch`
    /// lines of all its runs.
    fn blocks_stored(&self) -> u64 {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("stored a batch"))
            .filter_map(|l| {
                l.split("blocks=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    fn batches_stored(&self) -> usize {
        self.log.lock().unwrap().matches("stored a batch").count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}\nscorenames: {:?}\nprogress: {:?}",
                self.name,
                self.log.lock().unwrap(),
                std::fs::read_to_string(self.state.join("scorenames")),
                std::fs::read_dir(self.state.join("replica")).map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| (e.file_name(), std::fs::read_to_string(e.path())))
                    .collect::<Vec<_>>())
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.state.display().to_string();
            for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if m.starts_with(&prefix) {
                    let _ = Command::new("umount").args(["-l", m]).status();
                }
            }
        }
    }
}

/// A helper process ended with the test, however it ends.
/// Name → root in a node's state directory.
fn names_in(state: &Path) -> Vec<(String, String)> {
    let Ok(db) = ndb::Db::open(&state.join("scorenames")) else {
        return Vec::new();
    };
    // Bindings only: not tombstones or working sets.
    db.entries()
        .iter()
        .filter_map(|e| {
            Some((
                e.get("scorename")?.to_string(),
                e.get("rootscore").unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Watches nodes' names while a test runs: on every name that appears, the
/// whole tree of its root must read back through that node's venti.
struct Watcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<usize, String>>>,
}

impl Watcher {
    fn start(grid: &Arc<Grid>, nodes: Vec<(usize, PathBuf)>) -> Watcher {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let grid = grid.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: BTreeSet<(usize, String)> = BTreeSet::new();
            let mut checked = 0;
            loop {
                // Read before the scan, so the last scan follows the stop.
                let stopping = flag.load(std::sync::atomic::Ordering::Relaxed);
                for (i, state) in &nodes {
                    for (name, root) in names_in(state) {
                        if seen.insert((*i, name.clone())) {
                            grid.read_tree_on(*i, &root).map_err(|e| {
                                format!("{name} visible on host {i} before its blocks: {e}")
                            })?;
                            checked += 1;
                        }
                    }
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(checked)
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns how many arrivals were checked.
    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap().unwrap()
    }
}

#[test]
fn a_full_mesh_carries_roots_saves_users_and_conflicts_to_every_node() {
    if !can_run() {
        return;
    }
    let grid = Arc::new(Grid::new(&["a", "b", "c"]));
    let mut a = grid.node(0, &[1, 2]);
    let mut b = grid.node(1, &[0, 2]);
    let mut c = grid.node(2, &[0, 1]);
    // alice exists on a only; busybox is imported on a before it starts.
    grid.add_user(&a, "alice");
    grid.import(
        &a,
        "busybox",
        &busybox_root(grid.tmp.path(), "hello from a\n"),
    );
    let watcher = Watcher::start(&grid, vec![(1, b.state.clone()), (2, c.state.clone())]);
    for n in [&mut a, &mut b, &mut c] {
        n.start(&grid);
    }

    // The root and the user reach c; alice logs in there and spawns it.
    wait_for(20, "busybox on c", || c.root_of("busybox").is_some());
    wait_for(20, "alice on c", || {
        grid.ssh(&c, "alice", &["scores"]).status.success()
    });
    let reply = grid.ssh_ok(&c, "alice", &["spawn", "busybox"]);
    let port = spawn_port(&reply);
    assert_eq!(
        grid.in_env(&c, "alice", port, "cat /etc/motd"),
        "hello from a\n"
    );
    grid.ssh_ok(&c, "alice", &["boom", "busybox"]);

    // A save on a: the name is spawnable on c with the change in it.
    let reply = grid.ssh_ok(&a, "alice", &["spawn", "busybox"]);
    let port = spawn_port(&reply);
    grid.in_env(&a, "alice", port, "echo saved on a > /root/note");
    let saved_at = Instant::now();
    grid.ssh_ok(&a, "alice", &["save", "busybox", "withnote"]);
    wait_for(20, "withnote on c", || c.root_of("withnote").is_some());
    eprintln!(
        "a save on a was bound on c {:?} after its reply",
        saved_at.elapsed()
    );
    let reply = grid.ssh_ok(&c, "alice", &["spawn", "withnote"]);
    let port = spawn_port(&reply);
    assert_eq!(
        grid.in_env(&c, "alice", port, "cat /root/note"),
        "saved on a\n"
    );
    grid.ssh_ok(&c, "alice", &["boom", "withnote"]);
    grid.ssh_ok(&a, "alice", &["boom", "busybox"]);

    // A user added on b (bob) logs in on a; a user removed on c is gone
    // everywhere.
    grid.add_user(&b, "bob");
    wait_for(20, "bob on a", || {
        grid.ssh(&a, "bob", &["scores"]).status.success()
    });
    colony(&["user", "del", "bob", "--state", c.state.to_str().unwrap()]);
    wait_for(20, "bob gone from a", || {
        !grid.ssh(&a, "bob", &["scores"]).status.success()
    });

    // One name, two roots, bound on a and b at once: a is cut off while
    // both bind, so neither can know of the other.
    let one = busybox_root(grid.tmp.path(), "clash one\n");
    let two = busybox_root(grid.tmp.path(), "clash two, longer\n");
    grid.hosts.cut(0);
    let (root_a, root_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| grid.import(&a, "clash", &one));
        let tb = s.spawn(|| grid.import(&b, "clash", &two));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    grid.hosts.heal(0);
    assert_ne!(root_a, root_b);
    let view = |n: &Node| {
        let mut v: Vec<(String, String)> = n
            .names()
            .into_iter()
            .filter(|(name, _)| name.starts_with("clash"))
            .collect();
        v.sort();
        v
    };
    wait_for(20, "the clash to converge", || {
        let va = view(&a);
        va.len() == 2 && va == view(&b) && va == view(&c)
    });
    let v = view(&c);
    let winner = &v.iter().find(|(n, _)| n == "clash").unwrap().1;
    let (derived, loser) = v.iter().find(|(n, _)| n != "clash").unwrap();
    assert!(
        [&root_a, &root_b].contains(&winner)
            && [&root_a, &root_b].contains(&loser)
            && winner != loser,
        "{v:?}"
    );
    // The owner is told where the other root went.
    let scores = grid.ssh_ok(&c, "alice", &["scores", "clash"]);
    assert!(
        scores
            .lines()
            .any(|l| l.starts_with(derived.as_str()) && l.contains("bound as clash")),
        "{scores}"
    );
    let reply = grid.ssh_ok(&b, "alice", &["spawn", derived]);
    let port = spawn_port(&reply);
    let motd = grid.in_env(&b, "alice", port, "cat /etc/motd");
    assert!(motd.starts_with("clash"), "{motd}");
    grid.ssh_ok(&b, "alice", &["boom", derived]);

    // alice forgets the winner through one node: on every node the other
    // root takes the name back, and the derived name goes.
    let forgot = grid.ssh_ok(&a, "alice", &["forget", "clash"]);
    assert_eq!(forgot, format!("clash forgotten\n{winner}\n"));
    let want = vec![("clash".to_string(), loser.to_string())];
    wait_for(20, "the forgetting to converge", || {
        view(&a) == want && view(&b) == want && view(&c) == want
    });
    let out = grid.ssh(&c, "alice", &["forget", derived]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("no name {derived}")),
        "{err}"
    );
    assert_eq!(grid.ssh_ok(&b, "alice", &["scores", "clash"]), "clash\n");

    let checked = watcher.finish();
    assert!(checked >= 6, "only {checked} arrivals checked");
    let status = grid.status(&a);
    assert!(
        status.contains("peer b at") && status.contains("peer c at"),
        "{status}"
    );
    assert!(status.contains("connected"), "{status}");
    assert!(
        status.contains("from b:") && status.contains("from c:"),
        "{status}"
    );
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[test]
fn a_chain_survives_kill_9_of_either_end_and_a_cut_link() {
    if !can_run() {
        return;
    }
    let grid = Arc::new(Grid::new(&["a", "b", "c"]));
    let mut a = grid.node(0, &[1]);
    let mut b = grid.node(1, &[2]);
    let mut c = grid.node(2, &[]);
    // a also mirrors its blocks into a plain venti server on its host.
    let mirror = grid.tmp.path().join("mirror");
    let venti_mirror = grid
        .hosts
        .command(0, COLONY)
        .args([
            "venti",
            "serve",
            "--listen",
            "tcp!127.0.0.1!17040",
            "--store",
        ])
        .arg(&mirror)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let venti_mirror = Reaped(venti_mirror);
    a.args
        .extend(["--peer".into(), "venti:mirror=tcp!127.0.0.1!17040".into()]);
    for node in [&mut a, &mut b] {
        node.set_arg("--admin-listen", ADMIN);
    }
    grid.add_user(&a, "alice");
    let big = grid.import(&a, "big", &random_tree(grid.tmp.path(), "one", 24));
    let watcher = Watcher::start(&grid, vec![(1, b.state.clone()), (2, c.state.clone())]);
    c.start(&grid);
    b.start(&grid);
    a.start(&grid);

    // The sender dies after the first batch it had acknowledged.
    wait_for(30, "a first batch on b", || b.batches_stored() >= 1);
    a.kill9();
    let before_restart = b.blocks_stored();
    assert!(
        before_restart < 24 * 128,
        "the kill came after the stream: {before_restart}"
    );
    a.start(&grid);
    wait_for(60, "big on c", || {
        c.root_of("big").as_deref() == Some(big.as_str())
    });
    let listing = grid.read_tree(&c, &big).unwrap();
    assert_eq!(
        listing.lines().filter(|l| l.contains('f')).count(),
        24,
        "{listing}"
    );
    assert!(before_restart > 0);

    // Now the receiver dies mid-stream of a second root.
    let second = grid.import(&a, "second", &random_tree(grid.tmp.path(), "two", 24));
    let batches = b.batches_stored();
    wait_for(30, "a batch of the second root on b", || {
        b.batches_stored() > batches
    });
    b.kill9();
    b.start(&grid);
    wait_for(60, "second on c", || {
        c.root_of("second").as_deref() == Some(second.as_str())
    });
    grid.read_tree(&c, &second).unwrap();

    // A cut link: nothing crosses; healed, it catches up by itself.
    grid.hosts.cut(1);
    let third = grid.import(
        &a,
        "third",
        &busybox_root(grid.tmp.path(), "after the cut\n"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(b.root_of("third").is_none(), "crossed a cut link");
    grid.hosts.heal(1);
    wait_for(60, "third on c after the heal", || {
        c.root_of("third").as_deref() == Some(third.as_str())
    });

    let checked = watcher.finish();
    assert!(checked >= 6, "only {checked} arrivals checked");
    let status = grid.status(&a);
    assert!(
        status.contains("peer mirror at tcp!127.0.0.1!17040 (plain venti)"),
        "{status}"
    );
    wait_for(30, "the mirror to catch up", || {
        grid.status(&a)
            .contains("(plain venti): connected\n  behind: 0 blocks")
    });
    // The status page has the same as records: a's links to b and to the
    // mirror up with nothing behind, and b's record of what a sent it.
    wait_for(30, "a's page to show its peers caught up", || {
        let page = grid.status_page(&a);
        let outgoing = page["peers"]["outgoing"].as_array().cloned();
        outgoing.is_some_and(|o| {
            o.len() == 2
                && o.iter()
                    .all(|p| p["connected"] == true && p["behind_blocks"] == 0)
        })
    });
    let page = grid.status_page(&a);
    let mirror_record = &page["peers"]["outgoing"][1];
    assert_eq!(mirror_record["name"], "mirror", "{page}");
    assert_eq!(mirror_record["address"], "tcp!127.0.0.1!17040");
    assert_eq!(mirror_record["plain_venti"], true);
    assert!(mirror_record["blocks_sent"].as_u64() > Some(0), "{page}");
    let page = grid.status_page(&b);
    let from_a = &page["peers"]["incoming"][0];
    assert_eq!(from_a["name"], "a", "{page}");
    assert!(from_a["blocks_stored"].as_u64() > Some(0), "{page}");

    // Every block arrived once, give or take the batch in flight at each
    // kill: b's log holds each block once, and its keeper stored no more
    // than that plus one batch per kill. (Its "stored a batch" lines count
    // what it stored; a kill -9 of b between a batch made durable and its
    // line may leave that one batch uncounted, so the count may fall short
    // of the log by at most that batch.)
    b.stop();
    let unique = venti::LogStore::open(b.state.join("store"))
        .unwrap()
        .count_records(venti::LogStore::LOG_START)
        .unwrap();
    let stored = b.blocks_stored();
    assert!(
        stored + BATCH >= unique && stored <= unique + 2 * BATCH,
        "b stored {stored} blocks for {unique} distinct"
    );
    eprintln!("b stored {stored} blocks for {unique} distinct ones, across two kills");
    a.stop();
    c.stop();
    drop(venti_mirror);
    // The mirror's store, opened directly, holds the big root whole.
    let mirror_serve = Command::new(COLONY)
        .env("COLONY_STORE", &mirror)
        .args(["unvac", "-t", &big])
        .output()
        .unwrap();
    assert!(
        mirror_serve.status.success(),
        "{}",
        String::from_utf8_lossy(&mirror_serve.stderr)
    );
}

impl Node {
    /// Sets `flag`'s value in the node's command line (adding it if absent).
    fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) => self.args[i + 1] = value.to_string(),
            None => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }
}

/// A node that joins late with --read-through: it has a's names at once
/// and spawns them while replication still fills its store, every block it
/// lacks fetched from a (checked by score), and its status says so.
#[test]
fn a_node_joining_late_reads_blocks_through_from_its_peer() {
    if !can_run() {
        return;
    }
    let grid = Arc::new(Grid::new(&["a", "b"]));
    let mut a = grid.node(0, &[1]);
    let mut b = grid.node(1, &[0]);
    // a pushes one block per batch, so catching up takes b a while.
    a.set_arg("--replica-batch", "1");
    b.args.push("--read-through".into());
    grid.add_user(&a, "alice");
    let root = busybox_root(grid.tmp.path(), "big and lazy\n");
    let data = random_tree(grid.tmp.path(), "lazy", 16);
    std::fs::rename(&data, root.join("data")).unwrap();
    let sum = |path: &Path| {
        let out = Command::new("md5sum").arg(path).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let want = sum(&root.join("data/f15"));
    let big = grid.import(&a, "lazy", &root);
    a.start(&grid);
    b.start(&grid);

    wait_for(20, "lazy on b", || {
        b.root_of("lazy").as_deref() == Some(big.as_str())
    });
    wait_for(20, "alice on b", || {
        grid.ssh(&b, "alice", &["scores"]).status.success()
    });
    let reply = grid.ssh_ok(&b, "alice", &["spawn", "lazy"]);
    let port = spawn_port(&reply);
    let got = grid.in_env(&b, "alice", port, "busybox md5sum /data/f15");
    assert_eq!(got.split_whitespace().next(), Some(want.as_str()));
    let status = grid.ssh_ok(&b, "alice", &["status"]);
    assert!(status.contains("lazy\tdepends on a peer:"), "{status}");
    // Replication had not caught up when the file was read: b read it
    // through, not from its own copy.
    let behind = grid.status(&a);
    assert!(
        !behind.contains("behind: 0 blocks"),
        "b caught up too soon to tell:\n{behind}"
    );
    grid.ssh_ok(&b, "alice", &["boom", "lazy"]);
    // It catches up all the same.
    a.stop();
    a.set_arg("--replica-batch", "4096");
    a.start(&grid);
    wait_for(60, "b to catch up", || {
        grid.status(&a).contains("behind: 0 blocks (0 B), 0 names")
    });
    a.stop();
    b.stop();
}

/// A store that holds a block carrying a SHA-1 collision attack from before
/// it was checked (written here by a store without the check): its peer
/// refuses that block for good, and replication goes on past it. Invariant:
/// no checking store ever holds an attacked block, and what comes after it
/// in the log still arrives.
#[test]
fn a_peers_old_attacked_block_is_refused_and_replication_goes_on_past_it() {
    if !can_run() {
        return;
    }
    let grid = Arc::new(Grid::new(&["a", "b"]));
    let mut a = grid.node(0, &[1]);
    let mut b = grid.node(1, &[0]);
    grid.add_user(&a, "alice");
    let attacked: &[u8] = include_bytes!("../../../venti/tests/data/shattered-1.head");
    let score = {
        let old = venti::LogStore::open(a.state.join("store"))
            .unwrap()
            .without_collision_detection();
        let score = venti::BlockStore::write(&old, venti::BlockType::DATA, attacked).unwrap();
        venti::BlockStore::sync(&old).unwrap();
        score
    };
    // After it in a's log: a root and its name.
    let root = busybox_root(grid.tmp.path(), "after the attacked block\n");
    let after = grid.import(&a, "after", &root);
    a.start(&grid);
    b.start(&grid);
    wait_for(30, "the root after it on b", || {
        b.root_of("after").as_deref() == Some(after.as_str())
    });
    wait_for(30, "b to say why it did not keep the block", || {
        b.log.lock().unwrap().contains(&format!(
            "block {score} refused: {}",
            venti::COLLISION_REFUSAL
        ))
    });
    a.stop();
    b.stop();
    {
        let held = venti::LogStore::open(b.state.join("store")).unwrap();
        assert_eq!(
            venti::BlockStore::read(&held, &score, venti::BlockType::DATA).unwrap(),
            None,
            "b holds the attacked block"
        );
    }
    // Its root arrived whole.
    let unvac = Command::new(COLONY)
        .env("COLONY_STORE", b.state.join("store"))
        .args(["unvac", "-t", &after])
        .output()
        .unwrap();
    assert!(
        unvac.status.success(),
        "{}",
        String::from_utf8_lossy(&unvac.stderr)
    );
}

/// Bytes of node `n`'s log on disk.
fn log_disk(n: &Node) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(n.state.join("store/log"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// `colony gc` beside node `n`: its report, or its refusal.
fn gc(n: &Node) -> Result<String, String> {
    crate::common::run::gc(&n.state)
}

/// A collection once the grace period (1 s) is over twice.
fn gc_after_grace(n: &Node) -> String {
    gc(n).unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    gc(n).unwrap_or_else(|e| panic!("gc on {}: {e}", n.name))
}

/// The replication race, closed: b holds a root that no name of b's
/// shows any more (forgotten everywhere) but that an environment on a
/// still runs on. b collects; then a saves that environment, and the
/// saved name (which stands on the old root's blocks: a does not send
/// them again, b had them) reaches b whole, because a's pins kept them.
/// A collection with a peer out of reach is refused and drops nothing.
/// Then, with nothing standing on the root any more, both nodes collect
/// and both give its disk back: they converge on the same live set.
#[test]
fn a_collection_keeps_what_a_peers_work_stands_on_and_both_converge() {
    if !can_run() {
        return;
    }
    let grid = Arc::new(Grid::new(&["a", "b"]));
    let mut a = grid.node(0, &[1]);
    let mut b = grid.node(1, &[0]);
    for n in [&mut a, &mut b] {
        n.args
            .extend(["--gc-grace", "1s", "--gc-every", "0"].map(String::from));
    }
    grid.add_user(&a, "alice");
    let tree = busybox_root(grid.tmp.path(), "stood on\n");
    std::fs::rename(
        random_tree(grid.tmp.path(), "standing", 4),
        tree.join("data"),
    )
    .unwrap();
    let base = grid.import(&a, "base", &tree);
    a.start(&grid);
    b.start(&grid);
    wait_for(30, "base on b", || {
        b.root_of("base").as_deref() == Some(base.as_str())
    });
    wait_for(20, "alice on b", || {
        grid.ssh(&b, "alice", &["scores"]).status.success()
    });

    let reply = grid.ssh_ok(&a, "alice", &["spawn", "base"]);
    let port = spawn_port(&reply);
    grid.ssh_ok(&a, "alice", &["forget", "base"]);
    wait_for(20, "base forgotten on b", || b.root_of("base").is_none());
    let report = gc_after_grace(&b);
    assert!(report.contains("peer a: "), "{report}");
    assert!(!report.contains("peer a: 0 roots"), "{report}");

    grid.in_env(&a, "alice", port, "echo after > /root/after");
    grid.ssh_ok(&a, "alice", &["save", "base", "kept"]);
    wait_for(30, "kept on b", || b.root_of("kept").is_some());
    let kept = b.root_of("kept").unwrap();
    let dir = grid.tmp.path().join("kept-from-b");
    let out = grid
        .hosts
        .command(b.i, COLONY)
        .env("COLONY_TLS", grid.tmp.path().join("admin.tls"))
        .args(["unvac", "-h", VENTI, &kept])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kept does not extract from b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in 0..4 {
        assert!(
            std::fs::read(dir.join(format!("data/f{f}"))).unwrap()
                == std::fs::read(tree.join(format!("data/f{f}"))).unwrap(),
            "data/f{f} differs"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("root/after")).unwrap(),
        "after\n"
    );

    // Nothing stands on it any more: both collect, both give it back.
    grid.ssh_ok(&a, "alice", &["boom", "base"]);
    grid.ssh_ok(&b, "alice", &["forget", "kept"]);
    wait_for(20, "kept forgotten on a", || a.root_of("kept").is_none());
    let before = [log_disk(&a), log_disk(&b)];
    let reports = [gc_after_grace(&a), gc_after_grace(&b)];
    for (i, n) in [&a, &b].into_iter().enumerate() {
        let after = log_disk(n);
        assert!(
            before[i] - after >= 3 << 20,
            "{}: {} → {after} bytes\n{}",
            n.name,
            before[i],
            reports[i]
        );
    }

    // A peer out of reach: refused, nothing dropped.
    a.stop();
    let refused = gc(&b).expect_err("a collection without a's pins");
    assert!(refused.contains("peer a"), "{refused}");
    b.stop();
}
