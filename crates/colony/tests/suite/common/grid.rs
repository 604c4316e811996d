//! Pieces of the multi-node grid tests: the colony binary, OpenSSH as the
//! users' client, test roots, and nodes run as processes whose logs are
//! kept for the failure report.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::run::COLONY;

/// OpenSSH as a script would run it against throwaway hosts.
pub const SSH_OPTS: [&str; 10] = grid::ssh::SCRIPTED_CLIENT_OPTS;

/// Runs colony; its stdout, or a failure naming its stderr.
pub fn colony(args: &[&str]) -> String {
    super::run::ok(&super::run::run(args, &[], b""))
}

/// A grid CA in `dir/ca` and a certificate from it for each (name, role),
/// in `dir/NAME.tls`; ed25519 keys for `users` in `dir/USER`.
pub fn grid_ca(dir: &Path, certs: &[(&str, &str)], users: &[&str]) {
    let ca = dir.join("ca");
    colony(&[
        "grid",
        "ca",
        "init",
        "--grid",
        "test",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    for (name, role) in certs {
        let out = dir.join(format!("{name}.tls"));
        colony(&[
            "grid",
            "ca",
            "issue",
            name,
            "--role",
            role,
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    for user in users {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(user))
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Waits up to `secs` until job `id`'s line in what `jobs` answers says
/// `state`; that line.
pub fn wait_for_job(secs: u64, id: &str, state: &str, jobs: impl Fn() -> String) -> String {
    let mut line = String::new();
    wait_for(secs, &format!("job {id} {state}"), || {
        line = jobs()
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_string();
        line.contains(&format!("\t{state}\t"))
    });
    line
}

/// Waits up to `secs` for `done`, else fails naming `what`.
pub fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A busybox root with a file of its own.
pub fn busybox_root(dir: &Path, motd: &str) -> PathBuf {
    let root = dir.join(format!("root-{}", motd.len()));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/motd"), motd).unwrap();
    root
}

/// Links the rest of busybox's applets into a [`busybox_root`]'s `bin`.
pub fn every_busybox_applet(root: &Path) {
    let applets = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(applets.stdout).unwrap().lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
}

/// `mb` MB of incompressible files in a fresh directory, its own for each
/// `tag`.
pub fn random_tree(dir: &Path, tag: &str, mb: usize) -> PathBuf {
    let root = dir.join(format!("random-{tag}"));
    std::fs::create_dir_all(&root).unwrap();
    // Seeded by the whole tag: two trees of different tags share no block.
    let mut x = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    for f in 0..mb {
        let mut data = vec![0u8; 1 << 20];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::File::create(root.join(format!("f{f}")))
            .unwrap()
            .write_all(&data)
            .unwrap();
    }
    root
}

/// The login port in a spawn's reply.
pub fn spawn_port(reply: &str) -> u16 {
    let line = reply
        .lines()
        .find(|l| l.starts_with("ssh -p "))
        .unwrap_or_else(|| panic!("no login in {reply:?}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The host in a spawn's login line (`ssh -p PORT USER@HOST`).
pub fn spawn_host(reply: &str) -> String {
    let line = reply
        .lines()
        .find(|l| l.starts_with("ssh -p "))
        .unwrap_or_else(|| panic!("no login in {reply:?}"));
    line.rsplit('@').next().unwrap().trim().to_string()
}

/// A child that is killed when dropped (a helper of one test).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies what `from` yields into `log` on a thread of its own.
pub fn gather(
    mut from: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// Waits (up to 5 s: a helper the process left may hold the pipe) until
/// `gathering` has copied all a stopped process wrote, so a test reading
/// its log sees the end of it.
pub fn drained(gathering: Option<std::thread::JoinHandle<()>>) {
    let Some(g) = gathering else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !g.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node run as a process: `start` waits for the line it prints when
/// ready; everything it writes to stderr, over all its runs, is kept.
pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub log: Arc<Mutex<String>>,
    gathering: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn new(name: &str, args: Vec<String>) -> Proc {
        Proc {
            name: name.to_string(),
            args,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            gathering: None,
        }
    }

    /// Starts `cmd` (the program to run, args still to add) and waits
    /// for a first line of stdout starting with `ready`.
    pub fn start_with(&mut self, mut cmd: Command, ready: &str) {
        let mut child = cmd
            .args(&self.args)
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
            line.starts_with(ready),
            "{} did not start: {line:?}\n{}",
            self.name,
            self.log.lock().unwrap()
        );
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        drained(self.gathering.take());
    }

    pub fn stop(&mut self) {
        let c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait_with_output().unwrap();
        drained(self.gathering.take());
    }

    pub fn log_has(&self, text: &str) -> bool {
        self.log.lock().unwrap().contains(text)
    }

    pub fn log_count(&self, text: &str) -> usize {
        self.log.lock().unwrap().matches(text).count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let ended = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => format!(" (it had ended: {status})"),
                _ => String::new(),
            };
            eprintln!("--- {}{ended} ---\n{}", self.name, self.log.lock().unwrap());
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
