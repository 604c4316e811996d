//! `colony hub [NAME]`, the hubshell, on a real `colony hubfs`: a shell
//! that outlives its attachment, shared and found as it was left; an
//! interrupt that reaches the foreground job and not the shell; Ctrl-D
//! (the end of input) that ends the shell, after which the name makes a
//! new one; two attachments racing to make one name get one shell; and
//! the pty mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::run::COLONY;

/// A hubfs; killing it ends the keepers and shells on it too (their hubs
/// are gone), which the drop checks.
struct Hubfs(Child, String);

impl Drop for Hubfs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hubfs() -> Hubfs {
    let mut child = Command::new(COLONY)
        .args(["hubfs", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("hubfs on ").unwrap().to_string();
    Hubfs(child, addr)
}

/// A running `colony hub` whose output is gathered as it comes.
struct Attachment {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn gather(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let to = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            to.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn attach(hubfs: &Hubfs, args: &[&str]) -> Attachment {
    let mut child = Command::new(COLONY)
        .arg("hub")
        .args(["--at", &hubfs.1, "--user", "alice", "--shell", "/bin/sh"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Attachment {
        stdin: child.stdin.take(),
        out: gather(child.stdout.take().unwrap()),
        err: gather(child.stderr.take().unwrap()),
        child,
    }
}

impl Attachment {
    fn type_in(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("input still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn errors(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits (up to 20 s, a bound for a hang, not a measure) for `text`.
    fn expect(&self, text: &str) {
        let start = Instant::now();
        while !self.output().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {text:?} in the output {:?} (errors {:?})",
                self.output(),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn expect_error(&self, text: &str) {
        let start = Instant::now();
        while !self.errors().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {text:?} in the errors {:?}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the attachment to end by itself.
    fn ends(mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the attachment did not end; output {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hub_names(hubfs: &Hubfs) -> Vec<String> {
    let out = Command::new(COLONY)
        .args(["hub", "ls", "--at", &hubfs.1, "--user", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

/// Waits (a bound for a hang) until `n` keepers serve shells at `addr`.
fn keepers_become(addr: &str, n: usize) {
    let start = Instant::now();
    while keepers(addr) != n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} keepers, not {n}",
            keepers(addr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The keepers serving shells on the hubfs at `addr`.
fn keepers(addr: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.contains(&&b"--keep"[..]) && args.contains(&addr.as_bytes()) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_shell_outlives_its_attachment_and_is_found_as_it_was_left() {
    let s = hubfs();
    let mut first = attach(&s, &["work"]);
    first.type_in("cd /tmp; X=forty-two; sleep 300 & echo started-$X\n");
    first.expect("started-forty-two");
    // Errors come on their own hub, to the attachment's stderr.
    first.type_in("echo oops >&2\n");
    first.expect_error("oops");
    first.type_in("%detach\n");
    first.expect("detached from work");
    assert!(first.ends().success());
    for hub in ["work0", "work1", "work2", "work0.note"] {
        assert!(hub_names(&s).contains(&hub.to_string()), "{hub}");
    }

    // A second attachment (and a third, at once) find the shell's state:
    // its directory, its variable and its background job.
    let mut second = attach(&s, &["work"]);
    let mut third = attach(&s, &["work"]);
    // The recent output is shown first.
    second.expect("started-forty-two");
    second.type_in("echo in-$(pwd)-$X-$(kill -0 $! && echo job-alive)\n");
    second.expect("in-/tmp-forty-two-job-alive");
    // Both see what either types.
    third.expect("in-/tmp-forty-two-job-alive");
    third.type_in("%status\n");
    third.expect("attached to shell work on hubfs");
    third.type_in("%list\n");
    third.expect("work\t");
    // An unknown command lists the commands and goes to the shell.
    third.type_in("%nosuch\n");
    third.expect("commands: %detach");
    third.expect_error("nosuch");
    third.type_in("%detach\n");
    assert!(third.ends().success());
    second.type_in("%detach\n");
    assert!(second.ends().success());
    assert_eq!(keepers(&s.1), 1);
}

#[test]
fn an_interrupt_reaches_the_foreground_job_and_the_shell_goes_on() {
    let s = hubfs();
    let mut a = attach(&s, &["int"]);
    a.type_in("echo ready\n");
    a.expect("ready");
    a.type_in("sleep 300; echo after-$?\n");
    // Give the shell time to start the job (else the note finds only the
    // shell, which ignores it, and the test fails rather than passes).
    std::thread::sleep(Duration::from_millis(500));
    // What Ctrl-C on a line-editing terminal does: a SIGINT to us.
    assert!(
        Command::new("kill")
            .args(["-INT", &a.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    a.type_in("echo alive\n");
    a.expect("alive");
    // `sleep` died of the interrupt; the shell (and the attachment) did not.
    assert!(!a.output().contains("after-0"), "{}", a.output());
    assert!(a.child.try_wait().unwrap().is_none());
    a.type_in("%detach\n");
    assert!(a.ends().success());
}

#[test]
fn the_end_of_input_ends_the_shell_and_the_name_makes_a_new_one() {
    let s = hubfs();
    let mut a = attach(&s, &["once"]);
    a.type_in("echo shell-$$\n");
    a.expect("shell-");
    let first_pid = a.output();
    // Ctrl-D, or the end of piped input: `eof once0`, the shell's input ends.
    drop(a.stdin.take());
    assert!(a.ends().success());
    // Its input and note hubs go; its output stays readable.
    let names = hub_names(&s);
    assert!(!names.contains(&"once0".to_string()), "{names:?}");
    assert!(names.contains(&"once1".to_string()), "{names:?}");
    keepers_become(&s.1, 0);
    // The same name again: a new shell.
    let mut b = attach(&s, &["once"]);
    b.type_in("echo again-$$\n");
    b.expect("again-");
    assert_ne!(
        first_pid.trim().strip_prefix("shell-"),
        b.output()
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("again-"))
    );
    b.type_in("%detach\n");
    assert!(b.ends().success());
}

#[test]
fn two_attachments_making_one_name_at_once_get_one_shell() {
    let s = hubfs();
    // Invariant: one keeper, and so one shell, per name.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            Command::new(COLONY)
                .args(["hub", "-b", "--at", &s.1, "--user", "alice", "race"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in racers {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    keepers_become(&s.1, 1);
    // Switching with %attach to another name makes it.
    let mut a = attach(&s, &["race"]);
    a.type_in("%attach other\necho on-other\n");
    a.expect("on-other");
    keepers_become(&s.1, 2);
    a.type_in("%detach\n");
    assert!(a.ends().success());
    // The hubfs gone, its keepers and shells go too.
    let addr = s.1.clone();
    drop(s);
    keepers_become(&addr, 0);
}

#[test]
fn a_pty_shell_has_a_terminal_and_its_interrupt_key() {
    let s = hubfs();
    let mut a = attach(&s, &["--pty", "term"]);
    a.type_in("tty\n");
    a.expect("/dev/pts/");
    // No error hub: the terminal carries errors.
    assert!(!hub_names(&s).contains(&"term2".to_string()));
    a.type_in("sleep 300\n");
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-C as a key, through the pty's line discipline.
    a.type_in("\x03");
    a.type_in("echo status-$?\n");
    a.expect("status-130");
    // A note from anyone who may write the hubs (plan9port's `9p write`,
    // say) reaches the foreground job too.
    a.type_in("sleep 300\n");
    std::thread::sleep(Duration::from_millis(500));
    let mut note = Command::new(COLONY)
        .args([
            "hub",
            "write",
            "term0.note",
            "--at",
            &s.1,
            "--user",
            "alice",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    note.stdin
        .take()
        .unwrap()
        .write_all(b"interrupt\n")
        .unwrap();
    assert!(note.wait().unwrap().success());
    a.type_in("echo again-$?\n");
    a.expect("again-130");
    // Left with a job in the foreground, then the hubfs goes: the shell
    // is hung up too, not only its job (it was left reading a terminal
    // no one could reach).
    a.type_in("sleep 300\n%detach\n");
    assert!(a.ends().success());
    let addr = s.1.clone();
    drop(s);
    keepers_become(&addr, 0);
}
