//! `run ROOT [options] -- COMMAND` through the front door with OpenSSH's
//! client: the command runs in a fresh environment, its stdout and stderr
//! stream back separately, the session's stdin reaches it, its exit status
//! is the session's.
//!
//! Invariants checked: a run never leaves its environment behind (after an
//! exit, a timeout, or a client that left); `save=` binds its name only
//! after a zero exit.

use std::process::{Command, Output, Stdio};

use crate::common::grid::{SSH_OPTS, wait_for, wait_for_job};
use crate::common::node::{Node, can_mount};
use crate::common::run::run_with_input;

/// `ssh alice@door run ARGS…` with `input` on stdin.
fn run(g: &Node, args: &str, input: &str) -> Output {
    let mut cmd = g.command("ssh");
    cmd.args(["-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1"])
        .arg(format!("run {args}"));
    run_with_input(cmd, input)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No environment of a run is left in alice's status.
fn no_run_left(g: &Node) {
    wait_for(15, "the run's environment to end", || {
        !g.ok("alice", &["status"]).contains(".run-")
    });
}

#[test]
fn a_run_streams_its_output_takes_its_input_and_exits_with_its_status() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = run(
        &g,
        "busybox -- sh -c 'echo out; echo err >&2; cat; exit 3'",
        "the input\n",
    );
    assert_eq!(text(&out.stdout), "out\nthe input\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("err"));
    assert_eq!(out.status.code(), Some(3));
    no_run_left(&g);

    // net=none: loopback alone (a private network has its tap too).
    let interfaces = "sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let out = run(&g, &format!("busybox net=none -- {interfaces}"), "");
    assert_eq!(text(&out.stdout), "lo\n", "{}", text(&out.stderr));
    let out = run(&g, &format!("busybox -- {interfaces}"), "");
    assert_eq!(text(&out.stdout), "lo\ntap0\n", "{}", text(&out.stderr));
    let err = g.refused("alice", &["spawn", "busybox", "net=none", "publish=80"]);
    assert!(err.contains("with net=none nothing reaches"), "{err}");
    no_run_left(&g);

    // Bad requests are refused before anything starts.
    let out = run(&g, "busybox true", "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: run [-d] ROOT"));
    let out = run(&g, "nonesuch -- true", "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nonesuch not found"),
        "{}",
        text(&out.stderr)
    );
    g.stop();
}

#[test]
fn save_binds_its_name_only_after_a_zero_exit() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = run(
        &g,
        "busybox save=built -- sh -c 'echo made > /root/made'",
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("saved to built"));
    let out = run(
        &g,
        "busybox save=never -- sh -c 'echo half > /root/made; false'",
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let scores = g.ok("alice", &["scores"]);
    assert!(
        scores.contains("built\n") && !scores.contains("never"),
        "{scores}"
    );
    // The saved result is a root like any other.
    let out = run(&g, "built -- cat /root/made", "");
    assert_eq!(text(&out.stdout), "made\n");
    no_run_left(&g);
    g.stop();
}

#[test]
fn a_run_that_times_out_or_loses_its_client_leaves_nothing_running() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let out = run(&g, "busybox timeout=1s -- sleep 60", "");
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("timed out after"),
        "{}",
        text(&out.stderr)
    );
    no_run_left(&g);

    // A client that goes away mid-run takes its run with it.
    let mut client = g.command("ssh");
    client
        .args(["-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "run busybox -- sleep 61"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut client = client.spawn().unwrap();
    wait_for(15, "the run to start", || {
        g.ok("alice", &["status"]).contains(".run-")
    });
    client.kill().unwrap();
    client.wait().unwrap();
    no_run_left(&g);
    // Nothing of it runs on: no sleep of the run's is left on the machine.
    let sleeping = Command::new("pgrep")
        .args(["-x", "-f", "sleep 61"])
        .output()
        .unwrap();
    assert!(sleeping.stdout.is_empty(), "{}", text(&sleeping.stdout));
    g.stop();
}

/// Much input and much output at once, three times what a run keeps of
/// its input waiting: both directions keep flowing (a command that writes
/// as it reads never waits on the front door as the front door waits on
/// it), and every byte comes back in order.
#[test]
fn a_run_moves_much_input_and_output_at_once() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let input: String = (0..2_500_000).map(|i| format!("line {i}\n")).collect();
    assert!(input.len() > 3 * storage::run::MAX_WAITING_INPUT);
    let out = run(&g, "busybox -- cat", &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input.as_bytes());
    no_run_left(&g);
    g.stop();
}

/// `jobs` until `id`'s line says `state`; the line.
fn job_line(g: &Node, id: &str, state: &str) -> String {
    wait_for_job(20, id, state, || g.ok("alice", &["jobs"]))
}

fn submit(g: &Node, args: &str) -> String {
    let out = run(g, &format!("-d {args}"), "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .strip_prefix("job ")
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("{}", text(&out.stdout)))
}

/// A run that ends without taking its input while the client still sends
/// (here: it waits for a turn while 12 MB come in, then its root is not
/// found): the session ends with the refusal, and the input it left gives
/// its room back. Before, the front door's connection stayed blocked on
/// room the ended run would never give back, and the client never heard
/// how it ended.
#[test]
fn a_run_that_ends_while_its_client_sends_ends_its_session() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--spawn-max", "1"]);
    let busy = submit(&g, "busybox -- sleep 3");
    job_line(&g, &busy, "running");
    let mut cmd = g.command("timeout");
    cmd.args(["60", "ssh", "-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "run nonesuch -- true"]);
    // More than a user's runs may hold waiting.
    let input = "y\n".repeat(3 * storage::run::MAX_WAITING_INPUT / 4);
    let out = run_with_input(cmd, &input);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nonesuch not found"),
        "{}",
        text(&out.stderr)
    );
    // The user's budget is whole again: the next run takes its input.
    let out = run(&g, "busybox -- wc -c", "four\n");
    assert_eq!(text(&out.stdout).trim(), "5", "{}", text(&out.stderr));
    g.stop();
}

/// A program that does not read its input while the client sends more:
/// its environment's login holds a bounded amount, then ends the session
/// saying why. Before, the login kept all of it in the cpu node's memory.
#[test]
fn a_program_that_leaves_its_input_unread_is_ended_past_a_bound() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let mut cmd = g.command("timeout");
    cmd.args(["120", "ssh", "-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", "run busybox -- sleep 100"]);
    let input = "y\n".repeat(cpu::services::door::MAX_UNREAD_INPUT);
    let out = run_with_input(cmd, &input);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the program left more than 64 MiB of its input unread"),
        "{}",
        text(&out.stderr)
    );
    no_run_left(&g);
    g.stop();
}

/// Detached jobs: `run -d` answers with an id at once; `logs -f` follows
/// one to its end; `jobs` shows each with its state, exit status and saved
/// name; `cancel` ends one and leaves nothing running; nobody sees another
/// user's jobs; a node that restarts calls the job it was running lost.
#[test]
fn detached_jobs_are_listed_followed_cancelled_and_lost_with_their_node() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&[]);
    let id = submit(
        &g,
        "busybox save=djob -- sh -c 'echo one; sleep 1; echo two >&2'",
    );
    let mut follow = g.command("ssh");
    follow
        .args(["-p", &g.port.to_string(), "-i"])
        .arg(g.tmp.path().join("alice"))
        .args(SSH_OPTS)
        .args(["-T", "alice@127.0.0.1", &format!("logs -f {id}")]);
    let followed = run_with_input(follow, "");
    assert_eq!(followed.status.code(), Some(0));
    assert_eq!(text(&followed.stdout), "one\ntwo\nrun: saved to djob\n");
    let line = job_line(&g, &id, "succeeded");
    assert!(
        line.contains("exit 0") && line.contains("saved djob"),
        "{line}"
    );
    assert!(g.ok("alice", &["scores"]).contains("djob\n"));
    assert_eq!(
        g.ok("alice", &["logs", &id]),
        "one\ntwo\nrun: saved to djob\n"
    );

    let failing = submit(&g, "busybox save=never -- exit 7");
    assert!(job_line(&g, &failing, "failed").contains("exit 7"));
    assert!(!g.ok("alice", &["scores"]).contains("never"));

    let long = submit(&g, "busybox -- sleep 63");
    job_line(&g, &long, "running");
    assert_eq!(
        g.ok("alice", &["cancel", &long]),
        format!("{long} cancelled\n")
    );
    job_line(&g, &long, "cancelled");
    no_run_left(&g);
    let sleeping = Command::new("pgrep")
        .args(["-x", "-f", "sleep 63"])
        .output()
        .unwrap();
    assert!(sleeping.stdout.is_empty());

    // Nobody else's.
    assert_eq!(g.ok("bob", &["jobs"]), "no jobs\n");
    let out = g.ssh("bob", &["logs", &id]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(&format!("no job {id} of yours")));

    // A restart: the job its node was running is lost, and says so.
    let lost = submit(&g, "busybox -- sleep 64");
    job_line(&g, &lost, "running");
    g.stop();
    g.start(&[]);
    let line = job_line(&g, &lost, "lost");
    assert!(line.contains("the node stopped while it ran"), "{line}");
    g.stop();
}

/// The ids `run -d …` answered with, one `job ID` line each.
fn submit_many(g: &Node, args: &str) -> Vec<String> {
    let out = run(g, &format!("-d {args}"), "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            l.strip_prefix("job ")
                .unwrap_or_else(|| panic!("{l}"))
                .to_string()
        })
        .collect()
}

/// A node with room for two environments queues what does not fit and
/// drains it: `count=6` jobs each run exactly once, each with its own
/// `COLONY_TASK`, never more than two environments at once; a foreground
/// run waits its turn and says so; a queued job cancelled never runs; a
/// node that restarts keeps its queue, runs again the job it was running
/// that has retries left (its record says which try), and calls lost the
/// one that has none; the same through a kill -9 of the node.
///
/// Invariants: every task of a count runs exactly once (no faults); the
/// environments running never pass the room; no queued job is lost to a
/// restart or a kill -9.
#[test]
fn a_full_node_queues_jobs_and_drains_each_task_once_through_a_restart() {
    if !can_mount() {
        return;
    }
    let mut g = Node::new();
    g.start(&["--spawn-max", "2"]);
    let ids = submit_many(
        &g,
        "busybox count=6 -- sh -c 'echo task $COLONY_TASK; sleep 1'",
    );
    assert_eq!(ids.len(), 6);
    let queued_line = job_line(&g, &ids[5], "queued");
    assert!(queued_line.contains("task 5"), "{queued_line}");
    let never = submit(&g, "busybox -- echo never");
    assert_eq!(
        g.ok("alice", &["cancel", &never]),
        format!("{never} cancelled\n")
    );
    job_line(&g, &never, "cancelled");

    // A foreground run in the same queue: it waits, says so, and runs.
    let fg = run(&g, "busybox -- echo in the foreground", "");
    assert_eq!(fg.status.code(), Some(0), "{}", text(&fg.stderr));
    assert_eq!(text(&fg.stdout), "in the foreground\n");
    assert!(
        text(&fg.stderr).contains("waiting for a turn"),
        "{}",
        text(&fg.stderr)
    );

    let mut most = 0;
    wait_for(60, "every task to succeed", || {
        let running = g.ok("alice", &["status"]).matches(".run-").count();
        most = most.max(running);
        let jobs = g.ok("alice", &["jobs"]);
        ids.iter().all(|id| {
            jobs.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("\tsucceeded\t"))
        })
    });
    assert!(most <= 2, "{most} environments ran at once with room for 2");
    let mut tasks: Vec<String> = ids.iter().map(|id| g.ok("alice", &["logs", id])).collect();
    tasks.sort();
    let want: Vec<String> = (0..6).map(|t| format!("task {t}\n")).collect();
    assert_eq!(tasks, want, "each task once");
    assert_eq!(g.ok("alice", &["logs", &never]), "");

    // A restart with the node full: the queued job is kept and runs, the
    // running one with a retry runs again, the one without is lost.
    restart_keeps_the_queue(&mut g, "again", "sleep 65", |g| {
        g.stop();
    });
    // The same through kill -9, where the node writes nothing as it goes:
    // still no queued job is lost, and nothing of the lost one runs on.
    restart_keeps_the_queue(&mut g, "nine", "sleep 66", Node::kill9);
    no_run_left(&g);
    let sleeping = Command::new("pgrep")
        .args(["-x", "-f", "sleep 6[56]"])
        .output()
        .unwrap();
    assert!(sleeping.stdout.is_empty(), "{}", text(&sleeping.stdout));
    g.stop();
}

/// On a node with room for two: a job with a retry (`echo WORD`) and one
/// without (`long`) running, a third queued; `stop` stops the node, which
/// starts again. The queued job runs, the retried one runs again (try 2,
/// both tries' output in its log), the other is lost.
fn restart_keeps_the_queue(g: &mut Node, word: &str, long: &str, stop: fn(&mut Node)) {
    let again = submit(
        g,
        &format!("busybox retries=1 -- sh -c 'echo {word}; sleep 5'"),
    );
    let once = submit(g, &format!("busybox -- {long}"));
    job_line(g, &again, "running");
    job_line(g, &once, "running");
    // Its first try has run its echo (running is only its environment).
    wait_for(20, "the first try's output", || {
        g.ok("alice", &["logs", &again]) == format!("{word}\n")
    });
    let kept = submit(g, &format!("busybox -- echo kept {word}"));
    job_line(g, &kept, "queued");
    stop(g);
    g.start(&["--spawn-max", "2"]);
    let lost = job_line(g, &once, "lost");
    assert!(lost.contains("the node stopped while it ran"), "{lost}");
    let retried = job_line(g, &again, "succeeded");
    assert!(retried.contains("try 2"), "{retried}");
    assert_eq!(
        g.ok("alice", &["logs", &again]),
        format!("{word}\n{word}\n")
    );
    job_line(g, &kept, "succeeded");
    assert_eq!(g.ok("alice", &["logs", &kept]), format!("kept {word}\n"));
}
