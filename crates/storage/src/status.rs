//! What `status` knows of a user's environments, typed from where it is
//! gathered (a cpu node's records of what it runs, the placement's of what
//! is starting or lost) to where it is shown: the front door renders it as
//! text, the admin address as JSON for the status page.

use std::time::SystemTime;

use venti::Score;

/// A user's environments, and what the node has to tell them once.
#[derive(Debug, Clone, Default)]
pub struct UserStatus {
    pub envs: Vec<EnvRecord>,
    /// Told once, then forgotten (an environment ended by its cpu node's
    /// restart, say); each ends with a newline.
    pub notices: Vec<String>,
}

/// One environment, and where it runs.
#[derive(Debug, Clone)]
pub struct EnvRecord {
    pub name: String,
    /// The cpu node it was placed on; none on the single node.
    pub cpu: Option<String>,
    pub state: EnvState,
}

#[derive(Debug, Clone)]
pub enum EnvState {
    Running(control::EnvStatus),
    /// Placed; its cpu node is still starting it.
    Starting,
    /// Its cpu node is out of reach.
    Lost {
        root: Score,
        login: String,
        /// When the cpu node was last heard from (never, if unknown).
        last_seen: Option<SystemTime>,
    },
}

impl EnvState {
    pub fn word(&self) -> &'static str {
        match self {
            EnvState::Running(_) => "running",
            EnvState::Starting => "starting",
            EnvState::Lost { .. } => "lost",
        }
    }
}

impl UserStatus {
    /// The lines `status` prints (without the quota line the node adds).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.envs {
            let cpu = e.cpu.as_deref().unwrap_or("?");
            match (&e.state, &e.cpu) {
                (EnvState::Running(s), None) => out.push_str(&s.lines()),
                (EnvState::Running(s), Some(cpu)) => {
                    for line in s.lines().lines() {
                        out.push_str(&format!("{line}\ton cpu {cpu}\n"));
                    }
                }
                (EnvState::Starting, _) => {
                    out.push_str(&format!("{}\tstarting on cpu {cpu}\n", e.name))
                }
                (
                    EnvState::Lost {
                        root,
                        login,
                        last_seen,
                    },
                    _,
                ) => {
                    let seen = last_seen.map_or_else(|| "just now".to_string(), ago);
                    out.push_str(&format!(
                        "{}\tfrom vac:{root}\tlost: cpu node {cpu} out of reach, last seen {seen}\t{login}\n",
                        e.name
                    ));
                }
            }
        }
        for n in &self.notices {
            out.push_str(n);
        }
        out
    }
}

/// `t` as `3m07s ago`.
pub fn ago(t: SystemTime) -> String {
    let secs = seconds_since(t);
    format!("{}m{:02}s ago", secs / 60, secs % 60)
}

/// Whole seconds from `t` to now (0 for a time in the future).
pub fn seconds_since(t: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs()
}
