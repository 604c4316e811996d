//! Resource limits of an environment through cgroups: memory, number of
//! processes and CPU share, and (v1) which devices it may open. Version 2 is used where its hierarchy has those
//! controllers; otherwise the v1 hierarchies (this machine's case: a hybrid
//! whose v2 part has no controllers). Exceeding memory OOM-kills inside the
//! environment's group only.

use std::io;
use std::path::{Path, PathBuf};

/// Limits of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (RAM; swap is not added on top).
    pub memory: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Relative CPU weight, 1..=10000 (100 is a fair share).
    pub cpu_weight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 512 << 20,
            pids: 512,
            cpu_weight: 100,
        }
    }
}

impl Limits {
    /// The most a spawn may ask for unless the node's admin says otherwise:
    /// four times the default memory and processes, ten fair shares of CPU.
    pub fn default_ceilings() -> Limits {
        Limits {
            memory: 2 << 30,
            pids: 2048,
            cpu_weight: 1000,
        }
    }

    /// Each limit raised to at least `other`'s (so a node's defaults are
    /// never above its ceilings).
    pub fn at_least(&self, other: &Limits) -> Limits {
        Limits {
            memory: self.memory.max(other.memory),
            pids: self.pids.max(other.pids),
            cpu_weight: self.cpu_weight.max(other.cpu_weight),
        }
    }
}

const ROOT: &str = "/sys/fs/cgroup";

/// The socket buffer memory an environment may pin (cgroup v1): a quarter
/// of its memory limit, at least 16 MiB.
fn tcp_limit(limits: &Limits) -> u64 {
    (limits.memory / 4).max(16 << 20)
}

/// null, zero, full, random, urandom, tty, ptmx and the pty slaves.
const DEVICES_ALLOWED: &[&str] = &[
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// The cgroup directories of one environment (one per v1 controller, or one v2 group).
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn v2_has_controllers() -> bool {
    std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
        .map(|c| {
            ["memory", "pids", "cpu"]
                .iter()
                .all(|want| c.split_whitespace().any(|have| have == *want))
        })
        .unwrap_or(false)
}

impl Cgroups {
    /// Makes `colony/NAME` groups with the limits applied.
    pub fn create(name: &str, limits: &Limits) -> io::Result<Cgroups> {
        if v2_has_controllers() {
            let parent = Path::new(ROOT).join("colony");
            std::fs::create_dir_all(&parent)?;
            let _ = write(
                &Path::new(ROOT).join("cgroup.subtree_control"),
                "+memory +pids +cpu",
            );
            let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("memory.max"), &limits.memory.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            write(
                &dir.join("cpu.weight"),
                &limits.cpu_weight.clamp(1, 10000).to_string(),
            )?;
            return Ok(Cgroups { dirs: vec![dir] });
        }
        let mut dirs = Vec::new();
        let mut make = |controller: &str| -> io::Result<PathBuf> {
            let dir = Path::new(ROOT).join(controller).join("colony").join(name);
            std::fs::create_dir_all(&dir)?;
            dirs.push(dir.clone());
            Ok(dir)
        };
        let memory = make("memory")?;
        write(
            &memory.join("memory.limit_in_bytes"),
            &limits.memory.to_string(),
        )?;
        // Without this, the limit could be dodged by swapping.
        let _ = write(
            &memory.join("memory.memsw.limit_in_bytes"),
            &limits.memory.to_string(),
        );
        // v1 counts socket buffers apart from memory, and by default
        // against nothing but the host's TCP memory, which every tenant
        // shares: bound what one environment's connections (its
        // slirp4netns's, which is in this group) may pin. (v2 counts them
        // in memory.max.) Kernels without v1 TCP accounting lack the file.
        let tcp = memory.join("memory.kmem.tcp.limit_in_bytes");
        if tcp.exists() {
            write(&tcp, &tcp_limit(limits).to_string())?;
        }
        let pids = make("pids")?;
        write(&pids.join("pids.max"), &limits.pids.to_string())?;
        // Only the devices of the minimal /dev, whatever nodes the root holds.
        if Path::new(ROOT).join("devices").is_dir() {
            let devices = make("devices")?;
            write(&devices.join("devices.deny"), "a")?;
            for allow in DEVICES_ALLOWED {
                write(&devices.join("devices.allow"), allow)?;
            }
        }
        let cpu = make("cpu")?;
        // v1 shares: 1024 is the default weight, as 100 is in v2.
        write(
            &cpu.join("cpu.shares"),
            &(limits.cpu_weight.clamp(1, 10000) * 1024 / 100)
                .max(2)
                .to_string(),
        )?;
        // CPU time used, to tell an idle environment from a busy one: in
        // the cpu group where cpuacct is mounted with it, else in a group
        // of its own.
        let cpuacct = Path::new(ROOT).join("cpuacct");
        // Only an account: without it, idleness is read from /proc.
        if !cpu.join("cpuacct.usage").exists()
            && cpuacct.join("cpuacct.usage").exists()
            && let Err(e) = make("cpuacct")
        {
            tracing::warn!(error = %e, "no cpuacct group for an environment; its CPU time is read from /proc");
        }
        Ok(Cgroups { dirs })
    }

    /// Puts process `pid` (host numbering) in every group.
    pub fn enter(dirs: &[PathBuf], pid: u32) -> io::Result<()> {
        for dir in dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Charges process `pid`, which serves the environment from outside
    /// it (its slirp4netns), to the groups that bound memory, processes and
    /// CPU: what a tenant makes it spend (a connection held open costs its
    /// buffers) is the tenant's, within the tenant's limits. Not the
    /// devices group: it reaches /dev/net/tun, which the environment may not.
    pub fn charge(&self, pid: u32) -> io::Result<()> {
        let devices = Path::new(ROOT).join("devices");
        for dir in self.dirs.iter().filter(|d| !d.starts_with(&devices)) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes still in the groups.
    pub fn procs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills whatever is left and removes the groups.
    pub fn remove(&self) {
        for _ in 0..50 {
            let left = self.procs();
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) on processes in the environment's own group.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove the environment's cgroup");
            }
        }
    }

    /// The CPU time the groups' processes have used, if the kernel counts it.
    pub fn cpu_used(&self) -> Option<std::time::Duration> {
        for dir in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
                return text
                    .trim()
                    .parse()
                    .ok()
                    .map(std::time::Duration::from_nanos);
            }
            if let Ok(text) = std::fs::read_to_string(dir.join("cpu.stat")) {
                let usage = text.lines().find_map(|l| l.strip_prefix("usage_usec "));
                if let Some(us) = usage {
                    return us.trim().parse().ok().map(std::time::Duration::from_micros);
                }
            }
        }
        None
    }

    /// Whether the memory group has OOM-killed anything (v1 and v2).
    pub fn oom_kills(&self) -> u64 {
        for dir in &self.dirs {
            for file in ["memory.oom_control", "memory.events"] {
                if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                    for line in text.lines() {
                        if let Some(n) = line.strip_prefix("oom_kill ") {
                            return n.trim().parse().unwrap_or(0);
                        }
                    }
                }
            }
        }
        0
    }
}
