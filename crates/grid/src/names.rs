//! Which names are allowed: score names, environment names and user names go
//! into file paths, ndb files and command lines, so they are kept plain.

use crate::error::{GridError, GridResult};

/// Nanoseconds since the epoch: the times of bindings, keys and
/// tombstones, which replication compares across nodes.
pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Longest score or user name.
pub const MAX_NAME: usize = 64;

/// Score names: letters, digits, `.`, `_`, `-`, `+`; not `.` or `..`, no `/`.
pub fn check_score_name(name: &str) -> GridResult<()> {
    check(name, "name", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
    })
}

/// User names: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn check_user_name(name: &str) -> GridResult<()> {
    check_id_name(name, "user name")
}

/// Node names (a grid certificate's name, a binding's `origin`): as user
/// names (a certificate's name is stricter still: lower-case DNS labels).
pub fn check_node_name(name: &str) -> GridResult<()> {
    check_id_name(name, "node name")
}

/// Letters, digits, `.`, `_`, `-`, starting with a letter or digit: the
/// names of those who act (users, nodes).
fn check_id_name(name: &str, what: &str) -> GridResult<()> {
    check(name, what, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })?;
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(GridError::refused(format!(
            "{what} {name:?} must start with a letter or digit"
        )));
    }
    Ok(())
}

fn check(name: &str, what: &str, allowed: impl Fn(char) -> bool) -> GridResult<()> {
    if name.is_empty() {
        return Err(GridError::refused(format!("empty {what}")));
    }
    if name.len() > MAX_NAME {
        return Err(GridError::refused(format!(
            "{what} {name:?} is longer than {MAX_NAME} characters"
        )));
    }
    if name == "."
        || name == ".."
        || name.starts_with('.') && name.trim_start_matches('.').is_empty()
    {
        return Err(GridError::refused(format!(
            "{what} {name:?} is not allowed"
        )));
    }
    if let Some(c) = name.chars().find(|&c| !allowed(c)) {
        return Err(GridError::refused(format!(
            "{what} {name:?} may not contain {c:?} (use letters, digits, . _ - +)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["debian", "debian.12", "alpine-3.19", "web+bob", "a_b"] {
            check_score_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a/b",
            "../etc",
            "a b",
            "x\n",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_score_name(bad).is_err(), "{bad:?}");
        }
        check_user_name("alice").unwrap();
        assert!(check_user_name("-x").is_err());
        assert!(check_user_name("a+b").is_err());
    }
}
