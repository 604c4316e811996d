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
//! Where it is by default is the binary's business (it reads the
//! environment); this crate is given the path.

use std::path::PathBuf;

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
    /// Opens (making it if need be) the state directory at `root`.
    pub fn open(root: PathBuf) -> GridResult<StateDir> {
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
