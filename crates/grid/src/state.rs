//! The node's state directory:
//!
//! ```text
//! STATE/users        ndb: user=NAME key="ssh-ed25519 …"
//! STATE/scorenames   ndb: scorename=NAME rootscore=vac:HEX user=USER…
//! STATE/host_key     the SSH host key (OpenSSH format), made on first start
//! STATE/store/       the embedded venti block store (unless --venti is given)
//! STATE/mnt/USER/ENV where environments' file systems are mounted
//! STATE/cache/       spawndisk cache files
//! ```
//!
//! The directory is `--state DIR`, else `$COLONY_STATE`, else
//! `$XDG_STATE_HOME/colony`, else `~/.local/state/colony` (`/var/lib/colony`
//! for root).

use std::path::{Path, PathBuf};

use crate::error::{GridError, GridResult};
use crate::scorenames::ScoreNames;
use crate::users::Users;

#[derive(Clone)]
pub struct StateDir {
    pub root: PathBuf,
    /// Bumped whenever this process changes names or users, so the
    /// replication pushers wake at once.
    pub changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateDir {
    /// Resolves the default as documented above.
    pub fn resolve(explicit: Option<&Path>) -> GridResult<StateDir> {
        let root = match explicit {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("COLONY_STATE").filter(|v| !v.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
                    Some(p) => PathBuf::from(p).join("colony"),
                    // SAFETY: geteuid has no preconditions.
                    None if unsafe { libc::geteuid() } == 0 => PathBuf::from("/var/lib/colony"),
                    None => match std::env::var_os("HOME") {
                        Some(h) => PathBuf::from(h).join(".local/state/colony"),
                        None => {
                            return Err(GridError::refused(
                                "no state directory: use --state DIR or set COLONY_STATE",
                            ));
                        }
                    },
                },
            },
        };
        std::fs::create_dir_all(&root)
            .map_err(|e| GridError::io(format!("creating {}", root.display()), e))?;
        Ok(StateDir {
            root,
            changes: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    pub fn users(&self) -> Users {
        Users::new(self.root.join("users")).notifying(self.changes.clone())
    }

    pub fn scorenames(&self) -> ScoreNames {
        ScoreNames::new(self.root.join("scorenames")).notifying(self.changes.clone())
    }

    /// Per-user quotas of new stored bytes.
    pub fn quotas(&self) -> crate::quota::Quotas {
        crate::quota::Quotas::new(self.root.join("quotas"))
    }

    /// Replication's per-peer progress files.
    pub fn replica_dir(&self) -> PathBuf {
        self.root.join("replica")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn host_key(&self) -> PathBuf {
        self.root.join("host_key")
    }

    pub fn mount_dir(&self, user: &str, env: &str) -> PathBuf {
        self.root.join("mnt").join(user).join(env)
    }

    /// The control socket of an environment's user-mode network.
    pub fn net_socket(&self, user: &str, env: &str) -> PathBuf {
        self.root
            .join("run")
            .join(format!("{}.net", pair_id(user, env)))
    }

    /// One file per (user, environment), named so no two pairs can share it.
    pub fn cache_file(&self, user: &str, env: &str) -> PathBuf {
        self.root
            .join("cache")
            .join(format!("{}.img", pair_id(user, env)))
    }
}

/// A short name for a (user, environment) pair that no other pair shares.
pub fn pair_id(user: &str, env: &str) -> String {
    venti::Score::of(format!("{user}\0{env}").as_bytes()).to_string()[..16].to_string()
}
