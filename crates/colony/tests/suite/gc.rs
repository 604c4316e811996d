//! Garbage collection on a running node (`colony gc`), with real imports,
//! environments, jobs and OpenSSH, and the block store read back over
//! venti by `colony unvac`.
//!
//! Invariants checked: a forgotten root no other root shares gives its
//! disk back, and every root still named, run on, suspended or saved from
//! extracts whole (byte for byte as imported or written); a running
//! environment, a suspended one's resume point and a job's log keep their
//! blocks though no name points at them; a node killed at any moment of a
//! collection opens again with every live root whole, and the next
//! collection finishes the work; writes and saves during collections lose
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::grid::{random_tree, spawn_port, wait_for, wait_for_job};
use crate::common::node::{Node, can_mount};
use crate::common::run::COLONY;

/// The grace period the tests run with: records older than twice it
/// (2 s, in whole seconds: 3 s are always enough) may be collected.
const GRACE: &str = "1s";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Collected {
    g: Node,
    venti: String,
}

impl Collected {
    fn new() -> Collected {
        Collected {
            g: Node::new(),
            venti: format!("tcp!127.0.0.1!{}", free_port()),
        }
    }

    fn start(&mut self) {
        let venti = self.venti.clone();
        self.g.start(&[
            "--venti-listen",
            &venti,
            "--gc-grace",
            GRACE,
            "--gc-every",
            "0",
        ]);
    }

    /// `colony gc` beside the running node: its report.
    fn gc(&self) -> String {
        self.g.colony(&["gc"])
    }

    /// A collection after the grace period: everything written before it
    /// is old enough. (The first one marks the store's end as of now, so
    /// that the second knows how old it is.)
    fn gc_after_grace(&self) -> String {
        self.gc();
        std::thread::sleep(Duration::from_millis(3100));
        self.gc()
    }

    fn root_of(&self, name: &str) -> String {
        let db = ndb::Db::open(&self.g.state.join("scorenames")).unwrap();
        db.entries()
            .iter()
            .rev()
            .find(|e| e.get("scorename") == Some(name))
            .and_then(|e| e.get("rootscore").map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in scorenames"))
    }

    /// Extracts `root` from the running node's store into a fresh
    /// directory.
    fn extract(&self, root: &str) -> Result<PathBuf, String> {
        let dir = tempfile::tempdir_in(self.g.tmp.path()).unwrap().keep();
        let out = Command::new(COLONY)
            .args(["unvac", "-h", &self.venti, root])
            .arg(&dir)
            .output()
            .unwrap();
        crate::common::run::outcome(&out).map(|_| dir)
    }

    /// `root` extracts and holds what `tree` holds.
    fn whole(&self, root: &str, tree: &Path) {
        let got = self
            .extract(root)
            .unwrap_or_else(|e| panic!("{root} does not extract: {e}"));
        same_files(tree, &got);
    }

    fn log_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.g.state.join("store/log"))
            .unwrap()
            .blocks()
            * 512
    }

    fn import(&self, name: &str, tree: &Path) -> String {
        self.g
            .colony(&["import", name, tree.to_str().unwrap(), "--user", "alice"]);
        self.root_of(name)
    }
}

/// Every regular file of `want` is in `got` with the same bytes.
fn same_files(want: &Path, got: &Path) {
    for entry in walk(want) {
        let rel = entry.strip_prefix(want).unwrap();
        let theirs = got.join(rel);
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        if meta.is_file() {
            assert!(
                std::fs::read(&entry).unwrap() == std::fs::read(&theirs).unwrap_or_default(),
                "{} differs after extraction",
                rel.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A busybox tree with `mb` MB of incompressible data of its own under
/// /data.
fn tree_with_data(g: &Node, tag: &str, mb: usize) -> PathBuf {
    let tree = g.tmp.path().join(format!("tree-{tag}"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(g.tmp.path().join("rootfs"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(random_tree(g.tmp.path(), tag, mb), tree.join("data")).unwrap();
    tree
}

/// Forget, then collect: the forgotten root's own data gives its disk
/// back; a root that shares most of its blocks keeps them, and both the
/// kept roots extract whole, before and after.
#[test]
fn forget_then_gc_gives_back_a_roots_disk_and_shared_blocks_stay() {
    if !can_mount() {
        return;
    }
    let mut c = Collected::new();
    c.start();
    let lone_tree = tree_with_data(&c.g, "lone", 12);
    let big_tree = tree_with_data(&c.g, "big", 6);
    // twin: big's files and one more, so it shares all of big's blocks.
    let twin_tree = c.g.tmp.path().join("tree-twin");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&big_tree)
            .arg(&twin_tree)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(twin_tree.join("etc/twin"), "twin\n").unwrap();
    let lone = c.import("lone", &lone_tree);
    let big = c.import("big", &big_tree);
    let twin = c.import("twin", &twin_tree);
    c.whole(&lone, &lone_tree);
    c.whole(&big, &big_tree);
    c.whole(&twin, &twin_tree);

    // Nothing is forgotten yet: a collection drops nothing live.
    c.gc_after_grace();
    c.whole(&lone, &lone_tree);
    c.whole(&big, &big_tree);

    let before = c.log_bytes();
    assert!(
        c.g.ok("alice", &["forget", "lone"])
            .starts_with("lone forgotten")
    );
    c.g.ok("alice", &["forget", "big"]);
    let report = c.gc_after_grace();
    let after = c.log_bytes();
    assert!(
        before - after >= 11 << 20,
        "lone's 12 MB should be given back: {before} → {after} bytes\n{report}"
    );
    assert!(
        before - after < 17 << 20,
        "big's data is twin's too and must stay: {before} → {after} bytes\n{report}"
    );
    c.whole(&twin, &twin_tree);
    let gone = c.extract(&lone).expect_err("lone's blocks are gone");
    assert!(gone.contains("not found") || gone.contains("missing") || !gone.is_empty());
    // The busybox root, still named, is whole too.
    c.whole(&c.root_of("busybox"), &c.g.tmp.path().join("rootfs"));
}

/// What runs keeps its roots, though every name is forgotten: a running
/// environment (the root it came from and what it saved last), a
/// suspended one (its resume point) and an ended job (its log).
#[test]
fn running_suspended_and_job_work_keep_their_blocks() {
    if !can_mount() {
        return;
    }
    let mut c = Collected::new();
    c.start();
    let base_tree = tree_with_data(&c.g, "base", 4);
    let nap_tree = tree_with_data(&c.g, "nap", 4);
    c.import("base", &base_tree);
    c.import("nap", &nap_tree);

    // A running environment that saved once; then both names go.
    let out = c.g.ok("alice", &["spawn", "base"]);
    let port = spawn_port(&out);
    c.g.env_ok(port, "head -c 3000000 /dev/urandom > /root/written && sync");
    let kept_sum = c.g.env_ok(port, "md5sum /root/written");
    let saved = c.g.ok("alice", &["save", "base", "saved"]);
    assert!(saved.starts_with("saved saved"), "{saved}");
    c.g.ok("alice", &["forget", "saved"]);
    c.g.ok("alice", &["forget", "base"]);

    // A suspended one whose name goes.
    let out = c.g.ok("alice", &["spawn", "nap", "idle=1s"]);
    let nap_port = spawn_port(&out);
    c.g.env_ok(nap_port, "echo asleep > /root/note");
    wait_for(30, "nap to be suspended", || {
        c.g.ok("alice", &["status"])
            .lines()
            .any(|l| l.starts_with("nap\t") && l.contains("\tsuspended "))
    });
    c.g.ok("alice", &["forget", "nap"]);

    // A job whose output is kept in the store.
    let id =
        c.g.ok(
            "alice",
            &["run", "-d", "busybox", "--", "echo", "job-output"],
        )
        .trim()
        .strip_prefix("job ")
        .unwrap()
        .to_string();
    wait_for_job(60, &id, "succeeded", || c.g.ok("alice", &["jobs"]));

    // Garbage beside them, so the collection has work to do.
    let junk_tree = tree_with_data(&c.g, "junk", 3);
    c.import("junk", &junk_tree);
    c.g.ok("alice", &["forget", "junk"]);
    let report = c.gc_after_grace();
    assert!(!report.contains(" 0 blocks dropped"), "{report}");

    // Everything reads whole, first what the environment has not read yet.
    assert_eq!(
        c.g.env_ok(port, "md5sum < /data/f3"),
        md5_of(&base_tree.join("data/f3"))
    );
    assert_eq!(c.g.env_ok(port, "md5sum /root/written"), kept_sum);
    let resaved = c.g.ok("alice", &["save", "base", "resaved"]);
    assert!(resaved.starts_with("resaved saved"), "{resaved}");
    let resaved_root = c.root_of("resaved");
    let got = c
        .extract(&resaved_root)
        .expect("the environment's new save extracts");
    same_files(&base_tree.join("data"), &got.join("data"));
    assert_eq!(
        std::fs::read(got.join("root/written")).unwrap().len(),
        3_000_000
    );
    assert_eq!(c.g.env_ok(nap_port, "cat /root/note"), "asleep\n");
    assert_eq!(
        c.g.env_ok(nap_port, "md5sum < /data/f2"),
        md5_of(&nap_tree.join("data/f2"))
    );
    assert_eq!(c.g.ok("alice", &["logs", &id]), "job-output\n");
    c.g.ok("alice", &["boom", "base"]);
    c.g.ok("alice", &["boom", "nap"]);
}

fn md5_of(path: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("md5sum < {}", path.display()))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// kill -9 of the node at random moments of collections, many rounds:
/// each time it opens again, every live root extracts whole; then a
/// collection that is let finish gives the forgotten roots' disk back.
/// Imports go on between rounds (writers during collections).
#[test]
fn a_node_killed_during_collections_keeps_every_live_root() {
    if !can_mount() {
        return;
    }
    let mut c = Collected::new();
    c.start();
    let mut live = Vec::new();
    let mut seed: u64 = 0x5eed ^ u64::from(std::process::id());
    for round in 0..5 {
        // Each round: garbage, and a writer whose root must survive.
        let junk = tree_with_data(&c.g, &format!("junk{round}"), 3);
        c.import(&format!("junk{round}"), &junk);
        c.g.ok("alice", &["forget", &format!("junk{round}")]);
        let tree = tree_with_data(&c.g, &format!("w{round}"), 1);
        let root = c.import(&format!("w{round}"), &tree);
        live.push((root, tree));
        std::thread::sleep(Duration::from_millis(3100));
        let gc = Command::new(COLONY)
            .args(["gc", "--state"])
            .arg(&c.g.state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 300));
        c.g.kill9();
        let _ = gc.wait_with_output();
        c.start();
        for (root, tree) in &live {
            c.whole(root, tree);
        }
    }
    let before = c.log_bytes();
    let report = c.gc_after_grace();
    for (root, tree) in &live {
        c.whole(root, tree);
    }
    // What the killed collections left is given back by this one (the
    // log holds 5 × 3 MB of garbage and about 5 MB live).
    assert!(
        c.log_bytes() < 12 << 20,
        "the garbage outlived a whole collection: {before} → {} bytes\n{report}",
        c.log_bytes()
    );
}

/// Saves and imports while collections run back to back: nothing they
/// bind loses a block.
#[test]
fn saves_and_imports_during_collections_lose_nothing() {
    if !can_mount() {
        return;
    }
    let mut c = Collected::new();
    c.start();
    let base_tree = tree_with_data(&c.g, "during", 2);
    c.import("during", &base_tree);
    let out = c.g.ok("alice", &["spawn", "during"]);
    let port = spawn_port(&out);
    c.g.ok("alice", &["forget", "during"]);
    c.gc();
    std::thread::sleep(Duration::from_millis(3100));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collecting = {
        let (stop, state) = (stop.clone(), c.g.state.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                crate::common::run::gc(&state).unwrap_or_else(|e| panic!("{e}"));
                runs += 1;
            }
            runs
        })
    };
    let mut saved = Vec::new();
    for i in 0..5 {
        c.g.env_ok(port, &format!("echo {i} > /root/n{i}"));
        let name = format!("s{i}");
        c.g.ok("alice", &["save", "during", &name]);
        saved.push((name, i));
        let tree = tree_with_data(&c.g, &format!("d{i}"), 1);
        let root = c.import(&format!("d{i}"), &tree);
        c.whole(&root, &tree);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = collecting.join().unwrap();
    assert!(runs >= 2, "{runs} collections ran");
    std::thread::sleep(Duration::from_millis(3100));
    c.gc();
    for (name, i) in &saved {
        let got = c.extract(&c.root_of(name)).unwrap();
        same_files(&base_tree.join("data"), &got.join("data"));
        assert_eq!(
            std::fs::read_to_string(got.join(format!("root/n{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    c.g.ok("alice", &["boom", "during"]);
}

/// An upload not yet named survives a collection within the grace period,
/// even when every block of it is old garbage the store already held (a
/// tree forgotten long ago, written again through the node's venti
/// service): the store copies an old block written again forward, so the
/// collection sweeps only the old copies. The node's metered store once
/// answered "held" itself, and the copies never happened.
#[test]
fn an_unnamed_upload_of_old_garbage_survives_a_collection_in_its_grace() {
    if !can_mount() {
        return;
    }
    let mut c = Collected::new();
    c.start();
    let tree = tree_with_data(&c.g, "again", 3);
    c.import("again", &tree);
    c.g.ok("alice", &["forget", "again"]);
    c.gc();
    std::thread::sleep(Duration::from_millis(3100));
    // The same tree, unnamed, through venti: every block is old garbage.
    let out = Command::new(COLONY)
        .args(["vac", "-h", &c.venti])
        .arg(format!("{}/.", tree.display()))
        .output()
        .unwrap();
    let root = crate::common::run::ok(&out).trim().to_string();
    let before = c.log_bytes();
    let report = c.gc();
    c.whole(&root, &tree);
    assert!(
        c.log_bytes() + (2 << 20) < before,
        "the old copies were given back: {before} → {}\n{report}",
        c.log_bytes()
    );
}

/// A node whose store is another's venti server (`venti=`) collects
/// nothing, and says why: the blocks are not its own.
#[test]
fn a_node_on_a_venti_server_refuses_to_collect_and_says_why() {
    let mut server = Collected::new();
    server.start();
    let mut client = Node::with_users();
    client.start(&["--venti", &server.venti, "--gc-every", "0"]);
    let err = crate::common::run::gc(&client.state).expect_err("a collection on venti=");
    assert!(err.contains("kept by a venti server"), "{err}");
    // The server's own collection is unaffected.
    server.gc();
}
