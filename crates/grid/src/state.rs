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
use std::sync::{Arc, OnceLock};

use crate::scorenames::{Placement, ScoreNames};
use crate::users::Users;

#[derive(Clone)]
pub struct StateDir {
    pub root: PathBuf,
    /// Bumped whenever this process changes names or users, so the
    /// replication pushers wake at once.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The names and users files, each read through one index that every
    /// clone of this state directory shares.
    names: Arc<ndb::Indexed>,
    users: Arc<ndb::Indexed>,
    /// Set once by a node that replicates: its bindings' identity and place.
    placement: Arc<OnceLock<Arc<Placement>>>,
}

impl StateDir {
    /// Opens (making it if need be) the state directory at `root`.
    pub fn open(root: PathBuf) -> GridResult<StateDir> {
        std::fs::create_dir_all(&root)
            .map_err(|e| GridError::io(format!("creating {}", root.display()), e))?;
        Ok(StateDir {
            names: Arc::new(crate::scorenames::index(root.join("scorenames"))),
            users: Arc::new(crate::users::index(root.join("users"))),
            root,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            placement: Arc::default(),
        })
    }

    pub fn users(&self) -> Users {
        Users::through(self.users.clone()).notifying(self.changes.clone())
    }

    pub fn scorenames(&self) -> ScoreNames {
        ScoreNames::through(self.names.clone())
            .notifying(self.changes.clone())
            .placed_by(self.placement.get().cloned())
    }

    /// Reads the names and users files into their indexes on a thread of
    /// its own, so that the first login after a start does not wait for
    /// it (about 2 s for a million names). Errors are left for the commands
    /// that read them to report.
    pub fn read_indexes_ahead(&self) {
        let (names, users) = (self.names.clone(), self.users.clone());
        let _ = std::thread::Builder::new()
            .name("read-indexes".into())
            .spawn(move || {
                let _ = names.view();
                let _ = users.view();
            });
    }

    /// From now on this process's bindings are written with `placement`'s
    /// identity and place (a node that replicates; once).
    pub fn place_bindings(&self, placement: Placement) {
        let _ = self.placement.set(Arc::new(placement));
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
