//! Reading and changing an environment's root through its file system
//! itself (never through the mount, which the root's own symlinks could
//! steer): the login shell, the owner's and invitees' accounts.

use fossil::{FileKind, Fs, ROOT_INO};

use grid::error::{GridError, GridResult};

/// Adds `user` to the environment's /etc/passwd and /etc/group (creating
/// them if needed) and makes /home/USER.
pub fn add_login(fs: &Fs, user: &str) -> GridResult<()> {
    let etc = match fs.lookup(ROOT_INO, "etc") {
        Ok(a) => a.ino,
        Err(_) => {
            fs.mkdir(ROOT_INO, "etc", 0o755, 0, 0)
                .map_err(crate::fs_error)?
                .ino
        }
    };
    let read_all = |name: &str| -> GridResult<Option<(u64, String)>> {
        match fs.lookup(etc, name) {
            Ok(a) if a.kind == FileKind::File => {
                let data = fs.read(a.ino, 0, a.size as u32).map_err(crate::fs_error)?;
                Ok(Some((a.ino, String::from_utf8_lossy(&data).into_owned())))
            }
            Ok(_) => Err(GridError::refused(format!(
                "/etc/{name} in the environment is not a file"
            ))),
            Err(_) => Ok(None),
        }
    };
    let passwd = read_all("passwd")?;
    let text = passwd.as_ref().map(|(_, t)| t.as_str()).unwrap_or("");
    if let Some(line) = text.lines().find(|l| l.split(':').next() == Some(user)) {
        tracing::info!(user, line, "already in the environment's passwd");
        return Ok(());
    }
    let uid = text
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter(|&u| (1000..60000).contains(&u))
        .max()
        .map_or(1000, |u| u + 1);
    let append = |file: Option<(u64, String)>, name: &str, line: String| -> GridResult<()> {
        let (ino, old) = match file {
            Some(f) => f,
            None => (
                fs.create(etc, name, 0o644, 0, 0)
                    .map_err(crate::fs_error)?
                    .ino,
                String::new(),
            ),
        };
        let sep = if old.is_empty() || old.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        fs.write(ino, old.len() as u64, format!("{sep}{line}\n").as_bytes())
            .map_err(crate::fs_error)?;
        Ok(())
    };
    append(
        passwd,
        "passwd",
        format!("{user}:x:{uid}:{uid}::/home/{user}:/bin/sh"),
    )?;
    append(read_all("group")?, "group", format!("{user}:x:{uid}:"))?;
    let home = match fs.lookup(ROOT_INO, "home") {
        Ok(a) => a.ino,
        Err(_) => {
            fs.mkdir(ROOT_INO, "home", 0o755, 0, 0)
                .map_err(crate::fs_error)?
                .ino
        }
    };
    if fs.lookup(home, user).is_err() {
        fs.mkdir(home, user, 0o755, uid, uid)
            .map_err(crate::fs_error)?;
    }
    Ok(())
}

/// root's shell from the environment's /etc/passwd, else /bin/sh.
pub fn root_shell(fs: &Fs) -> String {
    read_file(fs, "etc/passwd", 1 << 20)
        .and_then(|data| {
            String::from_utf8_lossy(&data)
                .lines()
                .find(|l| l.starts_with("root:"))
                .and_then(|l| l.split(':').nth(6))
                .map(str::trim)
                .filter(|s| s.starts_with('/'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "/bin/sh".into())
}

/// A regular file of the environment's root, read through the file system
/// itself: no symlink is followed and nothing but a regular file is read, so
/// a root cannot point the node at host files, FIFOs or endless devices.
pub fn read_file(fs: &Fs, path: &str, limit: u64) -> Option<Vec<u8>> {
    let mut ino = ROOT_INO;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let attr = fs.lookup(ino, part).ok()?;
        let last = i + 1 == parts.len();
        if (last && attr.kind != FileKind::File) || (!last && attr.kind != FileKind::Dir) {
            return None;
        }
        ino = attr.ino;
    }
    let size = fs.getattr(ino).ok()?.size;
    if size > limit {
        return None;
    }
    fs.read(ino, 0, size as u32).ok()
}
