//! Per-user quotas of new stored bytes: what a user's imports may add to
//! the node's store (blocks the store already held cost nothing). The
//! admin sets the limit (`colony user add … --quota 10G`); imports count
//! what they add. The file (`STATE/quotas`) holds a line per user,
//! `USER LIMIT USED` in bytes, and is replaced whole under a lock, so the
//! node and the admin's commands can change it at once.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::{GridError, GridResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// None: no limit.
    pub limit: Option<u64>,
    pub used: u64,
}

impl Quota {
    /// Bytes the user may still add.
    pub fn left(&self) -> u64 {
        self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.used))
    }
}

pub struct Quotas {
    path: PathBuf,
}

impl Quotas {
    pub fn new(path: impl Into<PathBuf>) -> Quotas {
        Quotas { path: path.into() }
    }

    fn read_all(&self) -> GridResult<Vec<(String, Quota)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(GridError::io(format!("reading {}", self.path.display()), e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let bad = || {
                GridError::refused(format!(
                    "{}:{}: expected USER LIMIT USED, got {line:?}",
                    self.path.display(),
                    n + 1
                ))
            };
            match words.as_slice() {
                [] => {}
                [user, limit, used] => {
                    let limit = match *limit {
                        "-" => None,
                        l => Some(l.parse().map_err(|_| bad())?),
                    };
                    out.push((
                        user.to_string(),
                        Quota {
                            limit,
                            used: used.parse().map_err(|_| bad())?,
                        },
                    ));
                }
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }

    pub fn get(&self, user: &str) -> GridResult<Quota> {
        Ok(self
            .read_all()?
            .into_iter()
            .find(|(u, _)| u == user)
            .map(|(_, q)| q)
            .unwrap_or_default())
    }

    /// Changes `user`'s entry with `change`, under the file's lock; returns
    /// what `change` returned.
    pub fn update<T>(
        &self,
        user: &str,
        change: impl FnOnce(&mut Quota) -> GridResult<T>,
    ) -> GridResult<T> {
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| GridError::io(format!("creating {}", lock_path.display()), e))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        let mut all = self.read_all()?;
        let at = match all.iter().position(|(u, _)| u == user) {
            Some(i) => i,
            None => {
                all.push((user.to_string(), Quota::default()));
                all.len() - 1
            }
        };
        let result = change(&mut all[at].1)?;
        let mut text = String::new();
        for (u, q) in &all {
            let limit = q.limit.map_or("-".to_string(), |l| l.to_string());
            text.push_str(&format!("{u} {limit} {}\n", q.used));
        }
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        written.map_err(|e| GridError::io(format!("writing {}", self.path.display()), e))?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_use_persist() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::new(dir.path().join("quotas"));
        assert_eq!(q.get("alice").unwrap(), Quota::default());
        q.update("alice", |q| {
            q.limit = Some(100);
            Ok(())
        })
        .unwrap();
        q.update("alice", |q| {
            q.used += 40;
            Ok(())
        })
        .unwrap();
        q.update("bob", |q| {
            q.used = 7;
            Ok(())
        })
        .unwrap();
        let a = q.get("alice").unwrap();
        assert_eq!((a.limit, a.used, a.left()), (Some(100), 40, 60));
        assert_eq!(q.get("bob").unwrap().left(), u64::MAX);
        std::fs::write(dir.path().join("quotas"), "alice lots 0\n").unwrap();
        assert!(q.get("alice").is_err());
    }
}
