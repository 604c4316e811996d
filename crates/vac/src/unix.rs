//! Linux file metadata in vac terms. vac has no Unix extension fields, so
//! everything is carried by the DirEntry's mode bits and strings and by the
//! file's data, as plan9port does it:
//!
//! * symlinks: `ModeLink`, the data is the target;
//! * devices: `ModeDevice`, the data is `"c MAJOR MINOR"` or `"b MAJOR MINOR"`;
//! * fifos: `ModeNamedPipe`, no data;
//! * setuid, setgid, sticky: vac's own bits (which sit elsewhere than Unix's);
//! * owner and group: decimal uid and gid strings (`"0"`), so they round-trip
//!   exactly whatever the password file says;
//! * mtime in whole seconds (the format's resolution); atime and ctime are
//!   written equal to mtime, so archiving the same tree twice gives the same
//!   root score, and a tar stream gives the same score as its unpacked tree.
//!
//! Not kept: extended attributes (file capabilities among them), ACLs,
//! sub-second times. Hard links are archived as separate files whose data is
//! stored once (content addressing), so space is kept but link identity is not.

use crate::dirent::{DirEntry, mode};
use crate::error::{Error, Result};

/// What kind of file a node is, with what the kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// The metadata a root file system needs, as colony archives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits with setuid (0o4000), setgid (0o2000) and sticky (0o1000), Unix style.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
}

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

impl Meta {
    /// Reads a file's metadata without following a final symlink.
    pub fn from_std(md: &std::fs::Metadata, link_target: Option<Vec<u8>>) -> Option<Meta> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let ft = md.file_type();
        let rdev = md.rdev();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink(link_target.unwrap_or_default())
        } else if ft.is_char_device() {
            Kind::CharDevice {
                major: dev_major(rdev),
                minor: dev_minor(rdev),
            }
        } else if ft.is_block_device() {
            Kind::BlockDevice {
                major: dev_major(rdev),
                minor: dev_minor(rdev),
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            return None; // sockets
        };
        Some(Meta {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
        })
    }

    /// The vac mode word.
    pub fn vac_mode(&self) -> u32 {
        let mut m = self.perm & mode::PERM;
        if self.perm & S_ISUID != 0 {
            m |= mode::SETUID;
        }
        if self.perm & S_ISGID != 0 {
            m |= mode::SETGID;
        }
        if self.perm & S_ISVTX != 0 {
            m |= mode::STICKY;
        }
        m | match self.kind {
            Kind::File => 0,
            Kind::Dir => mode::DIR,
            Kind::Symlink(_) => mode::LINK,
            Kind::CharDevice { .. } | Kind::BlockDevice { .. } => mode::DEVICE,
            Kind::Fifo => mode::NAMED_PIPE,
        }
    }

    /// The bytes stored as the node's data, for kinds other than files and dirs.
    pub fn special_data(&self) -> Vec<u8> {
        match &self.kind {
            Kind::Symlink(target) => target.clone(),
            Kind::CharDevice { major, minor } => format!("c {major} {minor}").into_bytes(),
            Kind::BlockDevice { major, minor } => format!("b {major} {minor}").into_bytes(),
            Kind::File | Kind::Dir | Kind::Fifo => Vec::new(),
        }
    }

    /// Fills the metadata fields of a DirEntry (not its name, indexes or qid).
    pub fn fill_dirent(&self, d: &mut DirEntry) {
        d.uid = self.uid.to_string();
        d.gid = self.gid.to_string();
        d.mid = d.uid.clone();
        let t = self.mtime.clamp(0, u32::MAX as i64) as u32;
        d.mtime = t;
        d.atime = t;
        d.ctime = t;
        d.mode = self.vac_mode();
    }

    /// Recovers metadata from a DirEntry and, for symlinks and devices, the
    /// node's data. Owners that are names rather than numbers (archives made
    /// on Plan 9) are looked up in the password and group files, else `None`.
    pub fn from_dirent(d: &DirEntry, data: &[u8]) -> Result<(Meta, bool)> {
        let m = d.mode;
        let kind = if m & mode::DIR != 0 {
            Kind::Dir
        } else if m & mode::LINK != 0 {
            Kind::Symlink(data.to_vec())
        } else if m & mode::DEVICE != 0 {
            parse_device(data).ok_or_else(|| {
                Error::corrupt(format!(
                    "{}: bad device data {:?}",
                    d.elem,
                    String::from_utf8_lossy(data)
                ))
            })?
        } else if m & mode::NAMED_PIPE != 0 {
            Kind::Fifo
        } else {
            Kind::File
        };
        let mut perm = m & mode::PERM;
        if m & mode::SETUID != 0 {
            perm |= S_ISUID;
        }
        if m & mode::SETGID != 0 {
            perm |= S_ISGID;
        }
        if m & mode::STICKY != 0 {
            perm |= S_ISVTX;
        }
        let uid = d.uid.parse().ok().or_else(|| lookup_id(&d.uid, false));
        let gid = d.gid.parse().ok().or_else(|| lookup_id(&d.gid, true));
        let owners_known = uid.is_some() && gid.is_some();
        Ok((
            Meta {
                kind,
                perm,
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
                mtime: d.mtime as i64,
            },
            owners_known,
        ))
    }
}

/// Whether a kind keeps data in its stream that is not file content.
pub fn needs_data(d: &DirEntry) -> bool {
    d.mode & (mode::LINK | mode::DEVICE) != 0
}

fn parse_device(data: &[u8]) -> Option<Kind> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split_whitespace();
    let kind = parts.next()?;
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    match kind {
        "c" => Some(Kind::CharDevice { major, minor }),
        "b" => Some(Kind::BlockDevice { major, minor }),
        _ => None,
    }
}

/// glibc's major()/minor() for a 64-bit dev_t.
pub fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as u32
}

pub fn dev_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32
}

/// glibc's makedev().
pub fn make_dev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (major as u64, minor as u64);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Finds a user or group id by name in /etc/passwd or /etc/group.
fn lookup_id(name: &str, group: bool) -> Option<u32> {
    let file = if group { "/etc/group" } else { "/etc/passwd" };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bits_move_to_vac_positions_and_back() {
        let meta = Meta {
            kind: Kind::File,
            perm: 0o6755,
            uid: 0,
            gid: 0,
            mtime: 5,
        };
        let m = meta.vac_mode();
        assert_eq!(m & mode::SETUID, mode::SETUID);
        assert_eq!(m & mode::SETGID, mode::SETGID);
        assert_eq!(m & 0o777, 0o755);
        let mut d = DirEntry::default();
        meta.fill_dirent(&mut d);
        assert_eq!(Meta::from_dirent(&d, &[]).unwrap().0, meta);
        let sticky = Meta {
            kind: Kind::Dir,
            perm: 0o1777,
            uid: 3,
            gid: 4,
            mtime: 5,
        };
        let mut d = DirEntry::default();
        sticky.fill_dirent(&mut d);
        assert_eq!(d.mode, mode::DIR | mode::STICKY | 0o777);
        assert_eq!(Meta::from_dirent(&d, &[]).unwrap().0, sticky);
    }

    #[test]
    fn devices_symlinks_and_fifos() {
        for kind in [
            Kind::CharDevice { major: 1, minor: 3 },
            Kind::BlockDevice {
                major: 259,
                minor: 65536,
            },
            Kind::Symlink(b"../lib/x".to_vec()),
            Kind::Fifo,
        ] {
            let meta = Meta {
                kind,
                perm: 0o644,
                uid: 1000,
                gid: 100,
                mtime: 1_700_000_000,
            };
            let mut d = DirEntry::default();
            meta.fill_dirent(&mut d);
            assert_eq!(Meta::from_dirent(&d, &meta.special_data()).unwrap().0, meta);
        }
        assert_eq!(make_dev(259, 65536), {
            let d = make_dev(259, 65536);
            assert_eq!((dev_major(d), dev_minor(d)), (259, 65536));
            d
        });
    }

    #[test]
    fn plan9_names_fall_back_when_unknown() {
        let d = DirEntry {
            uid: "glenda-no-such-user".into(),
            gid: "root".into(),
            mode: 0o644,
            ..Default::default()
        };
        let (_, known) = Meta::from_dirent(&d, &[]).unwrap();
        assert!(!known);
    }
}
