//! Hubs read, written and listed by plan9port's own `9p` and `9pfuse`,
//! not colony's client: the interoperability the issue asks for.
//!
//! plan9port is built from its source (`../shared/tools/build-plan9port.sh`)
//! and is not in Debian, so these tests run when `PLAN9` names a built tree
//! and say they were skipped otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubfs::{HubSet, Limits};

fn plan9() -> Option<PathBuf> {
    let root = PathBuf::from(std::env::var_os("PLAN9")?);
    root.join("bin/9p").exists().then_some(root)
}

/// A hub set served on loopback; its address in plan9port's dial form.
fn server() -> (Arc<HubSet>, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hubs = Arc::new(HubSet::new(Limits::default()));
    let served = hubs.clone();
    std::thread::spawn(move || hubfs::server::serve(listener, served));
    (hubs, format!("tcp!127.0.0.1!{port}"))
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

fn ninep(plan9: &PathBuf, addr: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(plan9.join("bin/9p"))
        .env("PLAN9", plan9)
        .arg("-a")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn plan9ports_9p_lists_reads_and_writes_hubs() {
    let Some(plan9) = plan9() else {
        eprintln!("skipped: set PLAN9 to a plan9port tree built with build-plan9port.sh");
        return;
    };
    let (hubs, addr) = server();
    hubs.create("chat", &user(), 0o600).unwrap();
    hubs.write("chat", b"kept\n").unwrap();

    let ls = ninep(&plan9, &addr, &["ls", "-l"], b"");
    assert!(ls.status.success(), "{ls:?}");
    let ls = String::from_utf8(ls.stdout).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.ends_with(" chat") && l.contains(&user())),
        "{ls}"
    );
    assert!(ls.lines().any(|l| l.ends_with(" ctl")), "{ls}");

    // A waiting `9p read` gets the kept byte and what `9p write` adds, and
    // ends at an eof written to ctl by `9p write` too.
    let reader = {
        let (plan9, addr) = (plan9.clone(), addr.clone());
        std::thread::spawn(move || ninep(&plan9, &addr, &["read", "chat"], b""))
    };
    let start = Instant::now();
    while hubs.info("chat").unwrap().readers == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no reader came");
        std::thread::sleep(Duration::from_millis(10));
    }
    let w = ninep(&plan9, &addr, &["write", "chat"], b"from plan9port\n");
    assert!(w.status.success(), "{w:?}");
    let eof = ninep(&plan9, &addr, &["write", "ctl"], b"eof chat");
    assert!(eof.status.success(), "{eof:?}");
    let read = reader.join().unwrap();
    assert!(read.status.success(), "{read:?}");
    assert_eq!(read.stdout, b"kept\nfrom plan9port\n");

    // The ctl file's text, and a bad command's error reaching plan9port.
    let status = ninep(&plan9, &addr, &["read", "ctl"], b"");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("hub chat written 20"),
        "{status:?}"
    );
    let bad = ninep(&plan9, &addr, &["write", "ctl"], b"explode");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid ctl message"),
        "{bad:?}"
    );
    // A missing hub is an error, not an empty read.
    let missing = ninep(&plan9, &addr, &["read", "nosuch"], b"");
    assert!(!missing.status.success());
}

#[test]
fn plan9ports_9pfuse_mounts_hubs_on_linux() {
    let Some(plan9) = plan9() else {
        eprintln!("skipped: set PLAN9 to a plan9port tree built with build-plan9port.sh");
        return;
    };
    let (hubs, addr) = server();
    hubs.create("bobs", "bob", 0o600).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("hubs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new(plan9.join("bin/9pfuse"))
        .env("PLAN9", &plan9)
        .arg(&addr)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    // A hub made by the kernel's create, through 9pfuse (it failed with
    // ERANGE before hub errors used Plan 9's words: a lookup of a new
    // name must be ENOENT).
    std::fs::write(mnt.join("made"), b"through the kernel\n").unwrap();
    let info = hubs.info("made").unwrap();
    assert_eq!(info.owner, user());
    // A cat through the mount waits for writes like any reader.
    let cat = Command::new("cat")
        .arg(mnt.join("made"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while hubs.info("made").unwrap().readers == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no reader came");
        std::thread::sleep(Duration::from_millis(10));
    }
    hubs.write("made", b"and from inside\n").unwrap();
    hubs.ctl("eof made").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"through the kernel\nand from inside\n");

    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["bobs", "ctl", "made"]);
    // Another user's hub: plan9port turns our "permission denied" into
    // EACCES.
    let err = std::fs::read(mnt.join("bobs")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // And a missing one into ENOENT.
    let err = std::fs::read(mnt.join("nosuch")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}
