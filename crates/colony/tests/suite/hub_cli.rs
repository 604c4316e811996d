//! `colony hubfs` and `colony hub` as a user runs them: a hub written by
//! one process and read by two others, an eof that ends the readers, the
//! listing and ctl, and clear errors.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::run::COLONY;

struct Server(std::process::Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hubfs(args: &[&str]) -> Server {
    let mut child = Command::new(COLONY)
        .args(["hubfs", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("hubfs on ").unwrap().to_string();
    Server(child, addr)
}

fn hub(addr: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(COLONY)
        .arg("hub")
        .args(args)
        .args(["--at", addr, "--user", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_hub_carries_one_writer_to_every_reader_until_eof() {
    let s = hubfs(&[]);
    let out = hub(&s.1, &["write", "chat"], b"hello, hub\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two readers, waiting for more after the backlog.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(COLONY)
                .args(["hub", "cat", "chat", "--at", &s.1, "--user", "alice"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(hub(&s.1, &["write", "chat"], b"second\n").status.success());
    std::thread::sleep(Duration::from_millis(200));
    // eof ends the waiting readers with what they read.
    assert!(hub(&s.1, &["ctl", "eof", "chat"], b"").status.success());
    for r in readers {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello, hub\nsecond\n");
    }
    let ls = hub(&s.1, &["ls"], b"");
    let ls = String::from_utf8(ls.stdout).unwrap();
    assert!(
        ls.contains("ctl\t") && ls.contains("chat\talice\t600\t18"),
        "{ls}"
    );
    let status = String::from_utf8(hub(&s.1, &["ctl"], b"").stdout).unwrap();
    assert!(status.contains("hub chat written 18 kept 18"), "{status}");
}

#[test]
fn errors_name_the_problem() {
    let s = hubfs(&["--max-write", "8", "--max-hubs", "1"]);
    // A write beyond the limit is refused, not cut.
    let out = hub(&s.1, &["write", "one"], b"0123456789");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too long: the limit is 8"), "{err}");
    let out = hub(&s.1, &["write", "two"], b"x");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too many hubs: the limit is 1"), "{err}");
    let out = hub(&s.1, &["cat", "nosuch"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("hub nosuch does not exist"),
        "{err}"
    );
    let out = hub(&s.1, &["ctl", "quit"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid ctl message"), "{err}");
    let out = Command::new(COLONY)
        .args(["hub", "ls", "--at", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to hubfs at 127.0.0.1:1"));
}

#[test]
fn the_fuse_mount_and_9p_are_one_hub_set_with_permissions_per_hub() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: mounting needs root and /dev/fuse (CI has both)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("hubs");
    std::fs::create_dir(&mnt).unwrap();
    let s = hubfs(&["--mount", mnt.to_str().unwrap()]);
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Made through the mount by root, mode 0600; written through it.
    sh(&format!("umask 077; echo hello > {}/chat", mnt.display()));
    let fuse_reader = Command::new("cat")
        .arg(mnt.join("chat"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ninep_reader = Command::new(COLONY)
        .args(["hub", "cat", "chat", "--at", &s.1, "--user", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Written through 9P, read through both.
    let out = Command::new(COLONY)
        .args(["hub", "write", "chat", "--at", &s.1, "--user", "0"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"more\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    sh(&format!("echo eof chat > {}/ctl", mnt.display()));
    for r in [fuse_reader, ninep_reader] {
        let out = r.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nmore\n");
    }
    // Another user may not open root's 0600 hub; ls shows it.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(mnt.join("chat"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(listing, ["ctl", "chat"]);
    // A bad ctl command is an error to the writer.
    let out = Command::new("sh")
        .args(["-c", &format!("echo explode > {}/ctl", mnt.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_file(mnt.join("chat")).unwrap();
    assert!(!mnt.join("chat").exists());
    // A SIGTERM (or SIGINT, SIGHUP) unmounts before the server goes: no
    // dead mount is left behind.
    let mut s = s;
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(mnt.to_str().unwrap())
    };
    assert!(mounted());
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(s.0.id() as i32, libc::SIGTERM) };
    let status = s.0.wait().unwrap();
    let gone = !mounted();
    if !gone {
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    assert!(gone, "the mount outlived the server");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}
