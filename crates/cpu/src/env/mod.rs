//! Environments: the cpu half of a node. A spawned root becomes what behaves
//! like an independent system: its own mount, pid, uts and ipc namespaces,
//! pivoted into the spawned FUSE root, resource-limited by cgroups, with a
//! network of its own ([`net`]) or, where allowed, the node's. This is the
//! container runtime; what runs in an environment for its owner (the SSH
//! login, SFTP, the hub shells) is `crate::services`'.
//!
//! Isolation, chosen and documented: processes run as root *inside* the
//! environment, with Docker's default capability set minus CAP_MKNOD and
//! CAP_NET_RAW, with no_new_privs (see [`caps`]) and Docker's syscall filter
//! (see [`seccomp`]). A rootless environment ([`userns`]) is root only in a
//! user namespace of its own, an unprivileged range of host ids; otherwise
//! its root is the host's root, bounded as above. They cannot see or signal
//! host processes (pid namespace), mount or load modules (no CAP_SYS_ADMIN /
//! CAP_SYS_MODULE), reach host devices (a minimal /dev, no mknod), or gain
//! privileges (no_new_privs, bounded capabilities).

pub mod caps;
pub mod cgroup;
pub mod helper;
pub mod launch;
pub mod net;
pub mod seccomp;
pub mod userns;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use cgroup::{Cgroups, Limits};
pub use launch::{EXEC_REQUEST_VAR, ExecRequest, HELPER_VAR, InitRequest, Namespaces};
pub use net::{Network, Published};

/// As `argv[0]` of [`Environment::command`]: run a built-in of colony (named
/// by `argv[1]`, e.g. `__sftp-server`) inside the environment.
pub const SELF: &str = "__colony_self__";

/// A running environment, seen from the node.
pub struct Environment {
    /// pid 1 of the environment, in the host's numbering.
    pub init_pid: u32,
    /// Its namespaces, which every entry checks.
    namespaces: Namespaces,
    /// A rootless environment's host ids.
    ids: Option<userns::IdShift>,
    helper: PathBuf,
    outer: std::sync::Mutex<Child>,
    cgroups: Cgroups,
    /// The user-mode network of a private-network environment.
    slirp: std::sync::Mutex<Option<net::Slirp>>,
    /// The init helper's stdin: while it is open, the node is alive.
    _lifeline: std::process::ChildStdin,
}

/// What an environment is to be.
pub struct Spec<'a> {
    /// Its root: a mounted file system.
    pub root: &'a Path,
    pub hostname: &'a str,
    /// The name of its cgroups.
    pub group: &'a str,
    pub limits: &'a Limits,
    pub network: &'a Network,
    /// A private network's control socket.
    pub net_api: &'a Path,
    /// A rootless environment's range of host ids (its root mounted with
    /// the same shift).
    pub ids: Option<&'a userns::Lease>,
}

impl Environment {
    /// Starts an environment as `spec` says, with `helper` (the colony
    /// executable) as its helper processes.
    pub fn start(helper: &Path, spec: &Spec) -> io::Result<Environment> {
        let Spec {
            root,
            hostname,
            group,
            limits,
            network,
            net_api,
            ids,
        } = *spec;
        let cgroups = Cgroups::create(group, limits)?;
        // pid 1 is forked from this helper and shows its command line and
        // environment to everyone inside: so it is called `init`, has an
        // empty environment, and gets the host paths it needs on stdin.
        // Nothing is arranged between fork and exec (no pre_exec), so the
        // standard library spawns with vfork: a fork of this large process
        // cost each spawn milliseconds.
        let mut cmd = Command::new(helper);
        cmd.arg0("init").env_clear().env(HELPER_VAR, "init");
        let mut outer = match cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                cgroups.remove();
                return Err(e);
            }
        };
        let mut request = InitRequest {
            root: root.to_path_buf(),
            hostname: hostname.to_string(),
            cgroups: cgroups.dirs.clone(),
            // Its own namespace unless it shares the node's.
            private_net: *network != Network::Host,
            ids: ids.map(|l| l.ids),
            // pid 1 holds the id range too, so it is not handed out again
            // while any process of the environment may live (even if the
            // node dies first).
            lease: ids.map(|l| l.path().to_path_buf()),
            own_userns: ids.is_some() && userns::owned_namespaces_work(),
        }
        .encode();
        request.push(b'\n');
        // The helper's stdin stays open while the environment runs: its
        // closing, when this process dies, ends the environment.
        let mut lifeline = outer.stdin.take().expect("piped");
        let sent = lifeline.write_all(&request);
        if let Err(e) = sent {
            let _ = outer.kill();
            let _ = outer.wait();
            cgroups.remove();
            return Err(e);
        }
        let stdout = outer.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut init_pid = None;
        let mut ready = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(ready && init_pid.is_some()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let failure = match rx.recv_timeout(left) {
                Ok(line) if line == "ready" => {
                    ready = true;
                    continue;
                }
                Ok(line) if line.starts_with("pid ") => {
                    init_pid = line[4..].trim().parse().ok();
                    continue;
                }
                Ok(line) => line.strip_prefix("error ").unwrap_or(&line).to_string(),
                Err(_) => "the environment did not start in time".to_string(),
            };
            let _ = outer.kill();
            let _ = outer.wait();
            cgroups.remove();
            return Err(io::Error::other(format!(
                "starting the environment: {failure}"
            )));
        }
        let init_pid = init_pid.expect("checked");
        let ns_inode = |ns: &str| {
            std::fs::metadata(format!("/proc/{init_pid}/ns/{ns}"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        };
        let user = match ids {
            Some(_) => ns_inode("user").map(Some),
            None => Ok(None),
        };
        let namespaces = match (ns_inode("mnt"), ns_inode("pid"), user) {
            (Ok(mnt), Ok(pid), Ok(user)) => Namespaces { mnt, pid, user },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                let _ = outer.kill();
                let _ = outer.wait();
                cgroups.remove();
                return Err(e);
            }
        };
        let environment = Environment {
            init_pid,
            namespaces,
            ids: ids.map(|l| l.ids),
            helper: helper.to_path_buf(),
            outer: std::sync::Mutex::new(outer),
            cgroups,
            slirp: std::sync::Mutex::new(None),
            _lifeline: lifeline,
        };
        if *network == Network::Private {
            match net::Slirp::start(init_pid, net_api)
                .and_then(|slirp| environment.cgroups.charge(slirp.pid()).map(|()| slirp))
            {
                Ok(slirp) => {
                    *environment.slirp.lock().unwrap_or_else(|p| p.into_inner()) = Some(slirp)
                }
                Err(e) => {
                    environment.stop();
                    return Err(io::Error::other(format!("its network: {e}")));
                }
            }
        }
        Ok(environment)
    }

    /// Forwards a node port to a port inside (private network only).
    pub fn publish(&self, p: Published) -> io::Result<()> {
        match self
            .slirp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(slirp) => slirp.publish(p),
            None => Err(io::Error::other(
                "only an environment with a private network publishes ports",
            )),
        }
    }

    /// A command that runs `argv` inside the environment; the caller sets its stdio.
    pub fn command(&self, argv: &[String], pty: bool, term: Option<&str>) -> Command {
        self.command_with_agent(argv, pty, term, None)
    }

    /// As [`Environment::command`], with `SSH_AUTH_SOCK` set to `agent`
    /// (a forwarded agent's socket inside) if given.
    pub fn command_with_agent(
        &self,
        argv: &[String],
        pty: bool,
        term: Option<&str>,
        agent: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new(&self.helper);
        // Nothing of the node's environment (its state directory, say) is
        // passed on: the program's own is built inside.
        // Where it enters goes in its environment, not its command line
        // (see EXEC_REQUEST_VAR).
        let request = launch::ExecRequest {
            init_pid: self.init_pid,
            namespaces: self.namespaces,
            cgroups: self.cgroups.dirs.clone(),
        };
        cmd.env_clear()
            .env(launch::EXEC_REQUEST_VAR, request.encode())
            .arg("__env-exec");
        if pty {
            cmd.arg("--pty");
        }
        if let Some(t) = term {
            cmd.arg("--term").arg(t);
        }
        if let Some(a) = agent {
            cmd.arg("--agent").arg(a);
        }
        cmd.arg("--").args(argv);
        cmd
    }

    /// The host id of the environment's root, if it is rootless.
    pub fn root_on_host(&self) -> Option<u32> {
        self.ids.map(|ids| ids.base())
    }

    /// Processes of the environment still alive (host numbering).
    pub fn processes(&self) -> Vec<u32> {
        // Its slirp4netns is charged to its groups but is not one of its
        // processes.
        let slirp = self
            .slirp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(net::Slirp::pid);
        let mut procs = self.cgroups.procs();
        procs.retain(|&p| Some(p) != slirp);
        procs
    }

    /// The CPU time its processes (and its network helper) have used: the
    /// kernel's count for its groups, or where there is none, what its
    /// living processes and the children they reaped have used.
    pub fn cpu_used(&self) -> Option<Duration> {
        self.cgroups.cpu_used().or_else(|| {
            // SAFETY: sysconf has no preconditions.
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            if ticks <= 0 {
                return None;
            }
            let used: u64 = self.cgroups.procs().iter().map(|&p| process_ticks(p)).sum();
            Some(Duration::from_secs_f64(used as f64 / ticks as f64))
        })
    }

    /// How many times the memory limit killed something.
    pub fn oom_kills(&self) -> u64 {
        self.cgroups.oom_kills()
    }

    /// Kills everything the environment runs and removes its cgroups.
    pub fn stop(&self) {
        // Dropping the network stack ends it.
        drop(self.slirp.lock().unwrap_or_else(|p| p.into_inner()).take());
        let mut outer = self.outer.lock().unwrap_or_else(|p| p.into_inner());
        // pid 1 is the outer helper's child: while the helper has not exited,
        // pid 1 has not been reaped and its number cannot belong to anyone else.
        if matches!(outer.try_wait(), Ok(None)) {
            // SAFETY: signalling the environment's own, still living, pid 1.
            unsafe { libc::kill(self.init_pid as i32, libc::SIGTERM) };
            wait_for_exit(&mut outer, Duration::from_secs(2));
        }
        if matches!(outer.try_wait(), Ok(None)) {
            // SAFETY: as above; SIGKILL of pid 1 ends the whole pid namespace.
            unsafe { libc::kill(self.init_pid as i32, libc::SIGKILL) };
        }
        let _ = outer.kill();
        let _ = outer.wait();
        self.cgroups.remove();
    }
}

/// utime + stime + cutime + cstime of process `pid`, in clock ticks (0 if
/// it is gone).
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold anything, spaces included: fields follow
    // its closing parenthesis, starting at the third (state).
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    rest.split(' ')
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Waits up to `limit` for `child` to exit: on its pidfd where the kernel
/// has them (woken the moment it exits), else by looking now and then.
fn wait_for_exit(child: &mut std::process::Child, limit: Duration) {
    // SAFETY: pidfd_open of our own child, not yet reaped.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if pidfd >= 0 {
        let mut p = libc::pollfd {
            fd: pidfd as libc::c_int,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, then closing the fd we opened.
        unsafe {
            libc::poll(&mut p, 1, limit.as_millis() as libc::c_int);
            libc::close(pidfd as libc::c_int);
        }
        return;
    }
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
