//! scorenames: `scorename=NAME rootscore=vac:HEX user=USER [user=…]`, an ndb
//! file. Names are immutable: binding a name again is refused. Every update
//! is serialised and atomic (see [`ndb::update`]).

use std::path::{Path, PathBuf};

use venti::Score;

use crate::error::{GridError, GridResult};
use crate::names::check_score_name;

/// One name binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub root: Score,
    pub users: Vec<String>,
}

pub struct ScoreNames {
    path: PathBuf,
}

impl ScoreNames {
    pub fn new(path: impl Into<PathBuf>) -> ScoreNames {
        ScoreNames { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds `name` to `root` for `users`; refuses a name that exists.
    pub fn bind(&self, name: &str, root: &Score, users: &[&str]) -> GridResult<()> {
        check_score_name(name)?;
        if users.is_empty() {
            return Err(GridError::refused("a score name needs at least one user"));
        }
        ndb::update(&self.path, |db| {
            if db.search("scorename", name).next().is_some() {
                return Err(GridError::refused(format!(
                    "name {name} is taken: names are immutable, choose another"
                )));
            }
            let root = vac::format_vac(root);
            let mut pairs = vec![("scorename", name), ("rootscore", root.as_str())];
            pairs.extend(users.iter().map(|u| ("user", *u)));
            db.append(ndb::Entry::new(&pairs));
            Ok(())
        })
    }

    /// Binds `name`, or if it is taken `name.2`, `name.3`, …; returns the name used.
    pub fn bind_unique(&self, name: &str, root: &Score, users: &[&str]) -> GridResult<String> {
        for n in 1..1000 {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                format!("{name}.{n}")
            };
            match self.bind(&candidate, root, users) {
                Err(GridError::Refused(why)) if why.contains("is taken") => continue,
                other => return other.map(|()| candidate),
            }
        }
        Err(GridError::refused(format!("no free name like {name}")))
    }

    pub fn lookup(&self, name: &str) -> GridResult<Option<Binding>> {
        let db = ndb::Db::open(&self.path)?;
        let Some(entry) = db.search("scorename", name).next() else {
            return Ok(None);
        };
        Ok(Some(binding(entry)?))
    }

    /// The names `user` may spawn, in file order.
    pub fn names_for(&self, user: &str) -> GridResult<Vec<String>> {
        let db = ndb::Db::open(&self.path)?;
        Ok(db
            .search("user", user)
            .filter_map(|e| e.get("scorename").map(str::to_string))
            .collect())
    }
}

fn binding(entry: &ndb::Entry) -> GridResult<Binding> {
    let name = entry.get("scorename").unwrap_or_default().to_string();
    let text = entry
        .get("rootscore")
        .ok_or_else(|| GridError::refused(format!("scorenames entry {name} has no rootscore")))?;
    let root = vac::parse_vac(text, true).map_err(|_| {
        GridError::refused(format!(
            "scorenames entry {name} has a bad rootscore {text:?}"
        ))
    })?;
    Ok(Binding {
        name,
        root,
        users: entry.all("user").map(str::to_string).collect(),
    })
}
