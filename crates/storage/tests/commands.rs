//! The storage service's commands over a fake of the machines that run
//! environments (the `Cpus` seam): what the front door refuses before any
//! cpu node hears of it, whose names a user may spawn, what `status`
//! hands over and to whom, and what the status page's events count.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use grid::error::{GridError, GridResult};
use grid::state::StateDir;
use storage::status::{EnvRecord, EnvState, UserStatus};
use storage::{Cpus, EnvCounts, Node};
use venti::Score;

const ALICE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL0iGjV1vvWOjhQIzwls8EcgvFnHhOxHVT9VqxeWsgEk alice";
const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3JDkQtQfkf110n010GwS1LyF5EWua9AngOmoxV/GjG bob";

/// Environments kept in memory: what was asked of the machines that run
/// them, and notices per user to hand over once.
#[derive(Default)]
struct FakeCpus {
    running: Mutex<BTreeMap<(String, String), control::Spawn>>,
    notices: Mutex<HashMap<String, Vec<String>>>,
    limit: usize,
}

impl Cpus for FakeCpus {
    fn spawn(&self, spawn: &control::Spawn) -> GridResult<storage::Spawned> {
        let mut running = self.running.lock().unwrap();
        if running.len() >= self.limit {
            return Err(GridError::full("spawn limit reached"));
        }
        running.insert((spawn.user.clone(), spawn.name.clone()), spawn.clone());
        Ok(storage::Spawned {
            text: format!("{} spawned\n", spawn.name),
            login: format!("ssh -p 20001 {}@127.0.0.1", spawn.user),
            host_key: String::new(),
            node: "fake".into(),
        })
    }
    fn pins(&self) -> GridResult<Vec<Score>> {
        Ok(Vec::new())
    }
    fn save(&self, _user: &str, env: &str) -> GridResult<Score> {
        Ok(Score::of(env.as_bytes()))
    }
    fn invite(&self, _user: &str, env: &str, _invitee: &str) -> GridResult<Score> {
        Ok(Score::of(env.as_bytes()))
    }
    fn boom(&self, user: &str, env: &str) -> GridResult<bool> {
        let key = (user.to_string(), env.to_string());
        Ok(self.running.lock().unwrap().remove(&key).is_some())
    }
    fn end_stale(&self, _node: Option<&str>, user: &str, env: &str) {
        let _ = self.boom(user, env);
    }
    fn holds(&self, user: &str, env: &str) -> bool {
        let key = (user.to_string(), env.to_string());
        self.running.lock().unwrap().contains_key(&key)
    }
    fn status(&self, user: &str, take_notices: bool) -> GridResult<UserStatus> {
        let envs = self
            .running
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.user == user)
            .map(|s| EnvRecord {
                name: s.name.clone(),
                cpu: Some("c1".into()),
                state: EnvState::Starting,
            })
            .collect();
        let mut notices = self.notices.lock().unwrap();
        let notices = if take_notices {
            notices.remove(user).unwrap_or_default()
        } else {
            notices.get(user).cloned().unwrap_or_default()
        };
        Ok(UserStatus { envs, notices })
    }
    fn live(&self) -> usize {
        self.running.lock().unwrap().len()
    }
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.live())
    }
    fn counts(&self) -> EnvCounts {
        EnvCounts {
            starting: self.live(),
            ..EnvCounts::default()
        }
    }
    fn cache_use(&self) -> Vec<(String, String, u64, u64)> {
        Vec::new()
    }
    fn shutdown(&self) {
        self.running.lock().unwrap().clear();
    }
}

/// A node over a fresh state directory with alice and bob, `busybox`
/// bound for alice only.
fn node(limit: usize) -> (tempfile::TempDir, Arc<FakeCpus>, Node) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path().join("state")).unwrap();
    state.users().add("alice", ALICE).unwrap();
    state.users().add("bob", BOB).unwrap();
    state
        .scorenames()
        .bind("busybox", &Score::of(b"busybox root"), &["alice"])
        .unwrap();
    let cpus = Arc::new(FakeCpus {
        limit,
        ..FakeCpus::default()
    });
    let metrics = Arc::new(storage::metrics::Metrics::new());
    let node = Node::new(state, cpus.clone()).with_metrics(metrics);
    (dir, cpus, node)
}

#[test]
fn a_spawn_reaches_the_cpus_in_one_shape_with_its_root_and_options() {
    let (_dir, cpus, node) = node(5);
    let reply = node.run("alice", "spawndisk busybox memory=1G net=host");
    assert_eq!(reply.status, 0, "{}", reply.err);
    let running = cpus.running.lock().unwrap();
    let spawn = &running[&("alice".to_string(), "busybox".to_string())];
    assert_eq!(
        spawn,
        &control::Spawn {
            user: "alice".into(),
            name: "busybox".into(),
            root: Score::of(b"busybox root"),
            disk: true,
            options: vec!["memory=1G".into(), "net=host".into()],
            run_key: None,
        }
    );
}

/// Invariant: options of a bad form are refused at the door; the machines
/// that run environments never hear of them.
#[test]
fn options_of_a_bad_form_never_reach_the_cpus() {
    let (_dir, cpus, node) = node(5);
    let many = format!("spawn busybox {}", vec!["pids=64"; 17].join(" "));
    for line in [
        "spawn busybox memory",
        "spawn busybox colour=blue",
        many.as_str(),
    ] {
        let reply = node.run("alice", line);
        assert_ne!(reply.status, 0, "{line} was taken");
    }
    assert!(cpus.running.lock().unwrap().is_empty());
}

/// Names are per user: bob cannot spawn alice's name, and is told it is
/// not found (not that it exists for someone else).
#[test]
fn a_user_spawns_only_names_bound_for_them() {
    let (_dir, cpus, node) = node(5);
    let reply = node.run("bob", "spawn busybox");
    assert_ne!(reply.status, 0);
    assert_eq!(reply.err.trim(), "busybox not found for bob");
    assert!(cpus.running.lock().unwrap().is_empty());
}

/// The admin's page sees a user's notices without taking them; the user's
/// own `status` takes them, once.
#[test]
fn notices_go_to_their_user_once_and_the_admin_only_looks() {
    let (_dir, cpus, node) = node(5);
    cpus.notices.lock().unwrap().insert(
        "alice".into(),
        vec!["two\tended: cpu node c2 restarted\n".into()],
    );
    assert!(node.all_status().unwrap().is_empty());
    let first = node.run("alice", "status");
    assert!(
        first.out.contains("two\tended: cpu node c2 restarted"),
        "{}",
        first.out
    );
    let again = node.run("alice", "status");
    assert!(!again.out.contains("two\tended"), "{}", again.out);
}

/// Every refused command is an event of the status page, counted, with
/// the refusal's words; a command done is an event too.
#[test]
fn refusals_are_counted_events_with_their_reasons() {
    let (_dir, _cpus, node) = node(1);
    assert_eq!(node.run("alice", "spawn busybox").status, 0);
    let refused = node.run("alice", "spawn busybox");
    assert_ne!(refused.status, 0);
    let m = node.metrics().unwrap();
    let events = m.events();
    let texts: Vec<_> = events
        .iter()
        .map(|e| (e.failure, e.text.as_str()))
        .collect();
    assert!(
        texts.contains(&(false, "alice spawn busybox: busybox spawned")),
        "{texts:?}"
    );
    assert!(
        texts.contains(&(true, "refused: alice spawn busybox: spawn limit reached")),
        "{texts:?}"
    );
    assert_eq!(
        m.refused_total.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Events carry when they happened.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(events.iter().all(|e| now.abs_diff(e.at) < 60));
}

/// A run's environment reaches the cpus as any spawn does, named apart
/// from the root (so it never collides with the user's own `spawn` of it)
/// and carrying its one-time key; a run is only a one-shot session's.
#[test]
fn a_runs_environment_is_named_apart_and_carries_its_key() {
    let (_dir, cpus, node) = node(5);
    let spawned = node
        .spawn_for_run(
            "alice",
            "busybox",
            "busybox.run-0011aabb",
            &["memory=64M".into()],
            "ssh-ed25519 AAAA… run".into(),
        )
        .unwrap();
    assert_eq!(spawned.login, "ssh -p 20001 alice@127.0.0.1");
    let running = cpus.running.lock().unwrap();
    let spawn = &running[&("alice".to_string(), "busybox.run-0011aabb".to_string())];
    assert_eq!(spawn.root, Score::of(b"busybox root"));
    assert_eq!(spawn.options, ["memory=64M"]);
    assert_eq!(spawn.run_key.as_deref(), Some("ssh-ed25519 AAAA… run"));
    drop(running);
    // bob may not run alice's root; bad option words never reach the cpus.
    assert!(
        node.spawn_for_run("bob", "busybox", "busybox.run-1", &[], String::new())
            .is_err()
    );
    assert!(
        node.spawn_for_run(
            "alice",
            "busybox",
            "busybox.run-2",
            &["bogus=1".into()],
            String::new()
        )
        .is_err()
    );
    assert_eq!(cpus.running.lock().unwrap().len(), 1);
    // At the prompt, run says how it is used instead.
    let reply = node.run("alice", "run busybox -- true");
    assert_eq!(reply.status, 1);
    assert!(reply.err.contains("one run a session"), "{}", reply.err);
}
