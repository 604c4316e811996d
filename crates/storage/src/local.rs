//! Environments on the storage node's own machine (a node of role `both`,
//! the single-node grid): the cpu service, reading the node's own store and
//! admitting logins by the node's users file.

use std::sync::Arc;

use venti::{BlockStore, Score};

use crate::Cpus;
use cpu::{Environments, OwnerKeys, SpawnRequest};
use grid::error::GridResult;
use grid::users::Users;

pub struct LocalCpus {
    pub envs: Arc<Environments>,
    pub store: Arc<dyn BlockStore>,
    pub users: Users,
}

impl Cpus for LocalCpus {
    fn spawn(&self, spawn: &control::Spawn) -> GridResult<crate::Spawned> {
        let text = self.envs.spawn(SpawnRequest {
            spawn,
            keys: OwnerKeys::Registry(self.users.clone()),
            store: self.store.clone(),
            placed_by: "",
            // Only a node that reads through from peers fetches blocks.
            fetched_note: Some(|n| {
                format!(
                    "depends on a peer: {n} blocks read through (this node is still catching up)"
                )
            }),
        })?;
        let login = self
            .envs
            .running()
            .into_iter()
            .find(|r| r.user == spawn.user && r.name == spawn.name)
            .map(|r| r.login)
            .unwrap_or_default();
        Ok(crate::Spawned {
            text,
            login,
            host_key: self.envs.host_public_key(),
            node: "this node".into(),
        })
    }

    fn save(&self, user: &str, env: &str) -> GridResult<Score> {
        self.envs.save(user, env)
    }

    fn invite(&self, user: &str, env: &str, invitee: &str) -> GridResult<Score> {
        self.envs.invite(user, env, invitee)
    }

    fn boom(&self, user: &str, env: &str) -> GridResult<bool> {
        Ok(self.envs.boom(user, env))
    }

    fn holds(&self, user: &str, env: &str) -> bool {
        self.envs.status(user, None).iter().any(|s| s.name == env)
    }

    fn end_stale(&self, _node: Option<&str>, user: &str, env: &str) {
        self.envs.boom(user, env);
    }

    fn status(&self, user: &str, _take_notices: bool) -> GridResult<crate::status::UserStatus> {
        let envs = self.envs.status(user, None);
        Ok(crate::status::UserStatus {
            envs: envs
                .into_iter()
                .map(|s| crate::status::EnvRecord {
                    name: s.name.clone(),
                    cpu: None,
                    state: crate::status::EnvState::Running(s),
                })
                .collect(),
            notices: Vec::new(),
        })
    }

    fn pins(&self) -> GridResult<Vec<Score>> {
        let mut users: Vec<String> = self.envs.running().into_iter().map(|r| r.user).collect();
        users.dedup();
        Ok(users
            .iter()
            .flat_map(|u| self.envs.status(u, None))
            .flat_map(|s| [s.root, s.root_now])
            .collect())
    }

    fn live(&self) -> usize {
        self.envs.live()
    }

    fn room(&self) -> usize {
        let (running, starting) = self.envs.load();
        self.envs
            .config()
            .spawn_max
            .saturating_sub(running + starting)
    }

    fn counts(&self) -> crate::EnvCounts {
        let (running, starting) = self.envs.load();
        crate::EnvCounts {
            starting,
            running,
            lost: 0,
        }
    }

    fn cache_use(&self) -> Vec<(String, String, u64, u64)> {
        self.envs.cache_use()
    }

    fn shutdown(&self) {
        self.envs.shutdown()
    }
}
