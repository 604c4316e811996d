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
            EnvState::Running(s) => match s.sleep {
                None => "running",
                Some(control::Sleep::Suspending) => "suspending",
                Some(control::Sleep::Suspended { .. }) => "suspended",
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> control::EnvStatus {
        control::EnvStatus {
            name: "web".into(),
            spawned_from: "debian".into(),
            root: Score::of(b"root"),
            cache_kind: "ram".into(),
            cache_bytes: 100 << 20,
            changed_bytes: 25 << 20,
            login: "ssh -p 20001 alice@c1".into(),
            uptime_secs: 125,
            processes: 3,
            network: "net private, rootless".into(),
            root_now: Score::of(b"now"),
            note: None,
            sleep: None,
        }
    }

    /// The text `status` printed before its records were typed, field for
    /// field: scripts read it.
    #[test]
    fn the_text_is_the_status_lines_users_and_scripts_read() {
        let s = UserStatus {
            envs: vec![
                EnvRecord {
                    name: "web".into(),
                    cpu: Some("c1".into()),
                    state: EnvState::Running(running()),
                },
                EnvRecord {
                    name: "db".into(),
                    cpu: Some("c2".into()),
                    state: EnvState::Starting,
                },
                EnvRecord {
                    name: "old".into(),
                    cpu: Some("c3".into()),
                    state: EnvState::Lost {
                        root: Score::of(b"old"),
                        login: "ssh -p 20002 alice@c3".into(),
                        last_seen: Some(SystemTime::now() - std::time::Duration::from_secs(65)),
                    },
                },
            ],
            notices: vec!["gone\tended: cpu node c4 restarted\n".into()],
        };
        let want = format!(
            "web\tfrom debian vac:{}\tram 100 MB, 25% changed\tssh -p 20001 alice@c1\tup 2m05s\t3 processes\tnet private, rootless\troot now vac:{}\ton cpu c1\n\
             db\tstarting on cpu c2\n\
             old\tfrom vac:{}\tlost: cpu node c3 out of reach, last seen 1m05s ago\tssh -p 20002 alice@c3\n\
             gone\tended: cpu node c4 restarted\n",
            Score::of(b"root"),
            Score::of(b"now"),
            Score::of(b"old"),
        );
        assert_eq!(s.text(), want);
        // The single node's lines carry no cpu; a note is a line of its own.
        let mut one = running();
        one.note = Some("depends on a peer: 3 blocks read through".into());
        let single = UserStatus {
            envs: vec![EnvRecord {
                name: "web".into(),
                cpu: None,
                state: EnvState::Running(one),
            }],
            notices: Vec::new(),
        };
        let text = single.text();
        assert!(!text.contains("on cpu"), "{text}");
        assert!(
            text.ends_with("\nweb\tdepends on a peer: 3 blocks read through\n"),
            "{text}"
        );
    }
}
