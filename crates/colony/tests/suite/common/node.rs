//! One node on loopback (or in a network namespace of the test's), as the
//! single-node tests drive it: `colony serve` with users alice and bob (and
//! carol, who has a key but no account), a busybox root of alice's, and
//! OpenSSH as their client. The node's stderr is kept for the failure
//! report; a node left running is killed and its mounts detached on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use super::grid::SSH_OPTS;
use super::run::{COLONY, run_with_input};

/// `COLONY_TEST_USERNS=no` runs the whole suite against rootful
/// environments (`serve --rootful`); by default they are rootless.
pub fn rootful_suite() -> bool {
    std::env::var_os("COLONY_TEST_USERNS").is_some_and(|v| v == "no")
}

pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0 && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: FUSE mounts need root and /dev/fuse (CI has both)");
    }
    ok
}

pub struct Node {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub child: Option<Child>,
    pub port: u16,
    /// The admin address (with `--admin-listen`).
    pub admin: Option<String>,
    /// A network namespace the node and the test's ssh clients run in.
    pub netns: Option<String>,
    /// The node's environment, beyond the test's own.
    pub env: Vec<(&'static str, String)>,
    /// The node's stderr so far, read by a thread of its own (a pipe left
    /// unread would stall the node once full), and that thread.
    pub log: Arc<Mutex<Vec<u8>>>,
    pub log_reader: Option<std::thread::JoinHandle<()>>,
    /// A file the node is started holding open as descriptor 9, not
    /// close-on-exec, as a supervisor or wrapper may start it.
    pub inherit: Option<std::fs::File>,
}

impl Node {
    /// A state directory with users alice and bob and a busybox root for alice.
    pub fn new() -> Node {
        let g = Node::with_users();
        // The tests find it as TMP/rootfs.
        let root = g.tmp.path().join("rootfs");
        std::fs::rename(super::grid::busybox_root(g.tmp.path(), "hello\n"), &root).unwrap();
        super::grid::every_busybox_applet(&root);
        g.colony(&[
            "import",
            "busybox",
            root.to_str().unwrap(),
            "--user",
            "alice",
        ]);
        g
    }

    /// A state directory with users alice and bob (keys TMP/alice and
    /// TMP/bob; carol's key is no user's) and no names.
    pub fn with_users() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let g = Node {
            state,
            tmp,
            child: None,
            port: 0,
            admin: None,
            netns: None,
            env: Vec::new(),
            log: Arc::default(),
            log_reader: None,
            inherit: None,
        };
        for user in ["alice", "bob", "carol"] {
            let key = g.tmp.path().join(user);
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(ok.success());
            if user != "carol" {
                g.colony(&[
                    "user",
                    "add",
                    user,
                    "--key",
                    key.with_extension("pub").to_str().unwrap(),
                ]);
            }
        }
        g
    }

    pub fn colony(&self, args: &[&str]) -> String {
        let out = Command::new(COLONY)
            .args(args)
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "colony {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The node's venti listener (with `--venti-listen`).
    pub fn start(&mut self, extra: &[&str]) {
        // Login ports of their own, so tests running at once never collide,
        // and all below Linux's ephemeral range (32768-60999): there an
        // outgoing connection of another test (an ssh client's) may hold
        // one. A run's block of 60 slots, 6 ports each, by its pid.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60;
        let base = 21000 + (std::process::id() % 32) as u16 * 360 + slot * 6;
        assert!(base + 4 < 32768);
        let ports = format!("{}-{}", base, base + 4);
        let mut cmd = self.command(COLONY);
        if let Some(file) = &self.inherit {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = file.as_raw_fd();
            // SAFETY: only dup2, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 9) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--env-ports",
                &ports,
                "--public-host",
                "127.0.0.1",
                "--state",
            ])
            .arg(&self.state)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args((rootful_suite() && !extra.contains(&"--rootful")).then_some("--rootful"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line:?}"));
        self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        self.log = log.clone();
        self.log_reader = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }));
        if extra.contains(&"--admin-listen") {
            // The node writes where it listens once it does.
            let addr = std::fs::read_to_string(self.state.join("admin.addr")).unwrap();
            self.admin = Some(addr.trim().to_string());
        }
        self.child = Some(child);
    }

    /// `program`, run in the grid's network namespace if it has one.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            // nsenter, not `ip netns exec`: that also remounts /sys, which
            // would hide the cgroup file systems from the node.
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `ssh -p PORT -i KEY -T LOGIN@127.0.0.1 ARGS…` to the front door.
    pub fn door_command(&self, key: &str, login: &str, args: &[&str]) -> Command {
        let mut cmd = self.command("ssh");
        cmd.args(["-p", &self.port.to_string(), "-i"])
            .arg(self.tmp.path().join(key))
            .args(SSH_OPTS)
            .arg("-T")
            .arg(format!("{login}@127.0.0.1"))
            .args(args);
        cmd
    }

    /// The front door's `ssh … ARGS` as `login` with `key`, `input` on stdin.
    pub fn ssh_as(&self, key: &str, login: &str, args: &[&str], input: &str) -> Output {
        run_with_input(self.door_command(key, login, args), input)
    }

    pub fn ssh(&self, user: &str, args: &[&str]) -> Output {
        self.ssh_as(user, user, args, "")
    }

    pub fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.ssh(user, args);
        assert!(
            out.status.success(),
            "{user} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn refused(&self, user: &str, args: &[&str]) -> String {
        let out = self.ssh(user, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{user} {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
        String::from_utf8(out.stderr).unwrap()
    }

    /// SIGTERM, then the daemon's stderr.
    pub fn stop(&mut self) -> String {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        let log = self.log_so_far();
        assert!(status.success(), "{status}: {log}");
        log
    }

    /// SIGKILL: the node writes nothing as it goes.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
    }

    /// What the running node has written to stderr so far.
    pub fn log_so_far(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    pub fn mounted(&self) -> Vec<String> {
        let prefix = std::fs::canonicalize(&self.state)
            .unwrap()
            .display()
            .to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in self.mounted() {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

impl Node {
    /// Runs `command` inside an environment through its own SSH login.
    pub fn env_ssh(&self, key: &str, port: u16, command: &str, input: &str, tty: bool) -> Output {
        let mut cmd = self.command("ssh");
        cmd.args(["-p", &port.to_string(), "-i"])
            .arg(self.tmp.path().join(key))
            .args(SSH_OPTS);
        cmd.arg(if tty { "-tt" } else { "-T" });
        cmd.arg(format!("{key}@127.0.0.1")).arg(command);
        run_with_input(cmd, input)
    }

    pub fn env_ok(&self, port: u16, command: &str) -> String {
        let out = self.env_ssh("alice", port, command, "", false);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// This node's cgroups still present.
    pub fn cgroups(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            if let Ok(groups) = std::fs::read_dir(c.path().join("colony")) {
                for g in groups.flatten() {
                    let name = g.file_name().to_string_lossy().into_owned();
                    let node =
                        venti::Score::of(self.state.as_os_str().as_encoded_bytes()).to_string();
                    if name.starts_with(&node[..8]) {
                        out.push(g.path().display().to_string());
                    }
                }
            }
        }
        out
    }
}

/// Builds the C program `source` statically as `name` in the grid's
/// scratch directory (with gcc; CI installs it), to run as a probe inside
/// an environment.
pub fn build_probe(g: &Node, name: &str, source: &str) -> PathBuf {
    let src = g.tmp.path().join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let probe = g.tmp.path().join(name);
    let cc = Command::new("cc")
        .args(["-static", "-O1", "-pthread", "-o"])
        .arg(&probe)
        .arg(&src)
        .output()
        .expect("a C compiler (gcc) to build the probe");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    probe
}
