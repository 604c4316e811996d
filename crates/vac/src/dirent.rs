//! DirEntry, vac's per-file metadata (spec §6.4), and its mode bits.
//!
//! ```text
//! magic[4]=0x1c4d9072 version[2] elem[s] entry[4]
//!   (v9: gen[4] mentry[4] mgen[4]) qid[8] (v7: replacement[20])
//!   uid[s] gid[s] mid[s] mtime[4] mcount[4] ctime[4] atime[4] mode[4] options…
//! ```

use crate::error::{Error, Result};

const DIR_MAGIC: u32 = 0x1c4d_9072;

/// Plan 9 / vac mode bits (plan9port src/cmd/vac/vac.h). Note that setuid and
/// setgid sit at other positions than in Unix.
pub mod mode {
    pub const PERM: u32 = 0o777;
    pub const STICKY: u32 = 0x200;
    pub const SETUID: u32 = 0x400;
    pub const SETGID: u32 = 0x800;
    pub const APPEND: u32 = 0x1000;
    pub const EXCLUSIVE: u32 = 0x2000;
    pub const LINK: u32 = 0x4000;
    pub const DIR: u32 = 0x8000;
    pub const HIDDEN: u32 = 0x10000;
    pub const SYSTEM: u32 = 0x20000;
    pub const ARCHIVE: u32 = 0x40000;
    pub const TEMPORARY: u32 = 0x80000;
    pub const SNAPSHOT: u32 = 0x100000;
    pub const DEVICE: u32 = 0x200000;
    pub const NAMED_PIPE: u32 = 0x400000;
}

const OPT_PLAN9: u8 = 1;
const OPT_QID_SPACE: u8 = 3;
const OPT_GEN: u8 = 4;

/// A decoded DirEntry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirEntry {
    pub elem: String,
    /// Index of the data stream (file) or dir stream (directory) in the parent's source.
    pub entry: u32,
    pub generation: u32,
    /// Index of a directory's meta stream.
    pub mentry: u32,
    pub mgen: u32,
    pub qid: u64,
    pub uid: String,
    pub gid: String,
    pub mid: String,
    pub mtime: u32,
    pub mcount: u32,
    pub ctime: u32,
    pub atime: u32,
    pub mode: u32,
    /// `(p9path, p9version)`, only from entries of version < 9.
    pub plan9: Option<(u64, u32)>,
    /// `(qid offset, qid max)` of the subtree.
    pub qid_space: Option<(u64, u64)>,
}

impl DirEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & mode::DIR != 0
    }

    /// Encodes as version 9 (fossil's), which states `mentry` explicitly.
    pub fn pack(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.elem.len());
        b.extend_from_slice(&DIR_MAGIC.to_be_bytes());
        b.extend_from_slice(&9u16.to_be_bytes());
        put_string(&mut b, &self.elem);
        for v in [self.entry, self.generation, self.mentry, self.mgen] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&self.qid.to_be_bytes());
        put_string(&mut b, &self.uid);
        put_string(&mut b, &self.gid);
        put_string(&mut b, &self.mid);
        for v in [self.mtime, self.mcount, self.ctime, self.atime, self.mode] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        if let Some((offset, max)) = self.qid_space {
            b.push(OPT_QID_SPACE);
            b.extend_from_slice(&16u16.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
        }
        b
    }

    /// Decodes versions 7, 8 and 9; the options must use up the bytes exactly.
    pub fn unpack(bytes: &[u8]) -> Result<DirEntry> {
        let mut r = Cursor { b: bytes };
        if r.u32()? != DIR_MAGIC {
            return Err(Error::corrupt("bad DirEntry magic"));
        }
        let version = r.u16()?;
        if !(7..=9).contains(&version) {
            return Err(Error::corrupt(format!(
                "unknown DirEntry version {version}"
            )));
        }
        let mut d = DirEntry {
            elem: r.string()?,
            entry: r.u32()?,
            ..Default::default()
        };
        if version == 9 {
            d.generation = r.u32()?;
            d.mentry = r.u32()?;
            d.mgen = r.u32()?;
        } else {
            d.mentry = d.entry.wrapping_add(1);
        }
        d.qid = r.u64()?;
        if version == 7 {
            r.take(20)?;
        }
        d.uid = r.string()?;
        d.gid = r.string()?;
        d.mid = r.string()?;
        d.mtime = r.u32()?;
        d.mcount = r.u32()?;
        d.ctime = r.u32()?;
        d.atime = r.u32()?;
        d.mode = r.u32()?;
        while !r.b.is_empty() {
            let kind = r.u8()?;
            let len = r.u16()? as usize;
            let mut opt = Cursor { b: r.take(len)? };
            match kind {
                OPT_PLAN9 if version < 9 => {
                    if len != 12 || d.plan9.is_some() {
                        return Err(Error::corrupt("bad Plan9 option in DirEntry"));
                    }
                    let path = opt.u64()?;
                    let vers = opt.u32()?;
                    if d.mcount == 0 {
                        d.mcount = vers;
                    }
                    d.plan9 = Some((path, vers));
                }
                OPT_QID_SPACE => {
                    if len != 16 || d.qid_space.is_some() {
                        return Err(Error::corrupt("bad QidSpace option in DirEntry"));
                    }
                    d.qid_space = Some((opt.u64()?, opt.u64()?));
                }
                OPT_GEN => {}
                _ => {}
            }
        }
        Ok(d)
    }

    /// The length of the name as a sort key's first part (for MetaBlock checks).
    pub(crate) fn elem_of(bytes: &[u8]) -> Option<&[u8]> {
        if bytes.len() < 8 || bytes[..4] != DIR_MAGIC.to_be_bytes() {
            return None;
        }
        let n = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
        bytes.get(8..8 + n)
    }
}

fn put_string(b: &mut Vec<u8>, s: &str) {
    let n = s.len().min(u16::MAX as usize);
    b.extend_from_slice(&(n as u16).to_be_bytes());
    b.extend_from_slice(&s.as_bytes()[..n]);
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::corrupt("DirEntry is truncated"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::corrupt("DirEntry string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        venti::hex::decode(s).expect("hex")
    }

    #[test]
    fn version_8_file_spec_11_7() {
        let bytes = unhex(
            "1c4d9072 0008 0001 78 00000000 0000000000000003 0006 676c656e6461 0006 676c656e6461 0006 676c656e6461
             6553f100 00000000 6553f100 6553f100 000001a4",
        );
        assert_eq!(bytes.len(), 65);
        let d = DirEntry::unpack(&bytes).unwrap();
        assert_eq!(d.elem, "x");
        assert_eq!((d.entry, d.mentry, d.generation, d.qid), (0, 1, 0, 3));
        assert_eq!(
            (d.uid.as_str(), d.gid.as_str(), d.mid.as_str()),
            ("glenda", "glenda", "glenda")
        );
        assert_eq!(
            (d.mtime, d.ctime, d.atime, d.mcount, d.mode),
            (1700000000, 1700000000, 1700000000, 0, 0o644)
        );
    }

    #[test]
    fn vac_root_entry_with_qid_space_spec_6_4() {
        let bytes = unhex(
            "1c4d9072 0008 0001 2f 00000000 0000000000000000 0003 766163 0003 766163 0000
             00000000 00000000 00000000 00000000 000081ff 03 0010 0000000000000000 0000000000000007",
        );
        let d = DirEntry::unpack(&bytes).unwrap();
        assert_eq!(d.elem, "/");
        assert!(d.is_dir());
        assert_eq!(d.qid_space, Some((0, 7)));
    }

    #[test]
    fn version_9_round_trip() {
        let d = DirEntry {
            elem: "sbin".into(),
            entry: 4,
            generation: 2,
            mentry: 5,
            mgen: 3,
            qid: 99,
            uid: "0".into(),
            gid: "0".into(),
            mid: "0".into(),
            mtime: 1,
            mcount: 0,
            ctime: 2,
            atime: 3,
            mode: mode::DIR | 0o755,
            plan9: None,
            qid_space: Some((0, 100)),
        };
        assert_eq!(DirEntry::unpack(&d.pack()).unwrap(), d);
    }

    #[test]
    fn truncated_and_bad_entries_are_errors() {
        let d = DirEntry {
            elem: "a".into(),
            ..Default::default()
        }
        .pack();
        for n in 0..d.len() {
            assert!(DirEntry::unpack(&d[..n]).is_err(), "prefix {n}");
        }
        let mut bad = d.clone();
        bad[5] = 6;
        assert!(DirEntry::unpack(&bad).is_err());
        // An option that claims more bytes than remain.
        let mut opt = d.clone();
        opt.extend_from_slice(&[3, 0, 16, 0]);
        assert!(DirEntry::unpack(&opt).is_err());
        // Unknown options are skipped.
        let mut unknown = d.clone();
        unknown.extend_from_slice(&[0x77, 0, 2, 1, 2]);
        assert!(DirEntry::unpack(&unknown).is_ok());
    }
}
