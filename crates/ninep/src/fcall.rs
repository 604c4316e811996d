//! 9P2000 messages (spec §9.1–9.3): `size[4] type[1] tag[2] body`, little-endian,
//! strings as `len[2] bytes`. Decoding never panics; every malformed message
//! is a [`DecodeError`].

pub const NOTAG: u16 = 0xffff;
pub const NOFID: u32 = 0xffff_ffff;
pub const MAXWELEM: usize = 16;
/// Room for the Twrite/Rread header.
pub const IOHDRSZ: u32 = 24;

pub const QTDIR: u8 = 0x80;
pub const QTAPPEND: u8 = 0x40;
pub const QTEXCL: u8 = 0x20;
pub const QTSYMLINK: u8 = 0x02;
pub const QTFILE: u8 = 0x00;

pub const DMDIR: u32 = 0x8000_0000;
pub const DMAPPEND: u32 = 0x4000_0000;
pub const DMEXCL: u32 = 0x2000_0000;
pub const DMSYMLINK: u32 = 0x0200_0000;
pub const DMDEVICE: u32 = 0x0080_0000;
pub const DMNAMEDPIPE: u32 = 0x0020_0000;
pub const DMSOCKET: u32 = 0x0010_0000;
pub const DMSETUID: u32 = 0x0008_0000;
pub const DMSETGID: u32 = 0x0004_0000;

pub const OREAD: u8 = 0;
pub const OWRITE: u8 = 1;
pub const ORDWR: u8 = 2;
pub const OEXEC: u8 = 3;
pub const OTRUNC: u8 = 0x10;
pub const ORCLOSE: u8 = 0x40;

/// A qid: the server's identity of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

/// A directory entry / stat (§9.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub ty: u16,
    pub dev: u32,
    pub qid: Qid,
    pub mode: u32,
    pub atime: u32,
    pub mtime: u32,
    pub length: u64,
    pub name: String,
    pub uid: String,
    pub gid: String,
    pub muid: String,
}

impl Stat {
    /// A Twstat stat whose every field means "don't touch".
    pub fn dont_touch() -> Stat {
        Stat {
            ty: u16::MAX,
            dev: u32::MAX,
            qid: Qid {
                ty: u8::MAX,
                version: u32::MAX,
                path: u64::MAX,
            },
            mode: u32::MAX,
            atime: u32::MAX,
            mtime: u32::MAX,
            length: u64::MAX,
            ..Default::default()
        }
    }

    /// Encodes with the leading size[2].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.ty.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        put_qid(out, &self.qid);
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.atime.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        for s in [&self.name, &self.uid, &self.gid, &self.muid] {
            put_str(out, s);
        }
        let n = (out.len() - start - 2) as u16;
        out[start..start + 2].copy_from_slice(&n.to_le_bytes());
    }

    /// Decodes one stat (with its leading size) from the front of `buf`;
    /// returns it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Stat, usize), DecodeError> {
        let mut r = Reader { b: buf };
        let n = r.u16()? as usize;
        let body = r.take(n)?;
        let mut r = Reader { b: body };
        let stat = Stat {
            ty: r.u16()?,
            dev: r.u32()?,
            qid: r.qid()?,
            mode: r.u32()?,
            atime: r.u32()?,
            mtime: r.u32()?,
            length: r.u64()?,
            name: r.string()?,
            uid: r.string()?,
            gid: r.string()?,
            muid: r.string()?,
        };
        if !r.b.is_empty() {
            return Err(DecodeError::Malformed("stat has trailing bytes"));
        }
        Ok((stat, n + 2))
    }
}

/// A 9P2000 message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcall {
    Tversion {
        msize: u32,
        version: String,
    },
    Rversion {
        msize: u32,
        version: String,
    },
    Tauth {
        afid: u32,
        uname: String,
        aname: String,
    },
    Rauth {
        aqid: Qid,
    },
    Tattach {
        fid: u32,
        afid: u32,
        uname: String,
        aname: String,
    },
    Rattach {
        qid: Qid,
    },
    Rerror {
        ename: String,
    },
    Tflush {
        oldtag: u16,
    },
    Rflush,
    Twalk {
        fid: u32,
        newfid: u32,
        wnames: Vec<String>,
    },
    Rwalk {
        qids: Vec<Qid>,
    },
    Topen {
        fid: u32,
        mode: u8,
    },
    Ropen {
        qid: Qid,
        iounit: u32,
    },
    Tcreate {
        fid: u32,
        name: String,
        perm: u32,
        mode: u8,
    },
    Rcreate {
        qid: Qid,
        iounit: u32,
    },
    Tread {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Rread {
        data: Vec<u8>,
    },
    Twrite {
        fid: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Rwrite {
        count: u32,
    },
    Tclunk {
        fid: u32,
    },
    Rclunk,
    Tremove {
        fid: u32,
    },
    Rremove,
    Tstat {
        fid: u32,
    },
    Rstat {
        stat: Stat,
    },
    Twstat {
        fid: u32,
        stat: Stat,
    },
    Rwstat,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message shorter than its header")]
    Short,
    #[error("message size {0} does not match its length")]
    BadSize(usize),
    #[error("message is truncated")]
    Truncated,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("string is not UTF-8")]
    BadUtf8,
}

/// The longest error text sent: Plan 9's ERRMAX. An error names what went
/// wrong, often with client-chosen names in it; cut to this, an Rerror
/// fits in the smallest msize a server agrees to (256 bytes).
pub const ERRMAX: usize = 128;

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A 9P string has a 16-bit length; a longer one is cut whole
    // characters short, never inside one (the reader wants UTF-8).
    let s = cut(s, u16::MAX as usize);
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_qid(out: &mut Vec<u8>, q: &Qid) {
    out.push(q.ty);
    out.extend_from_slice(&q.version.to_le_bytes());
    out.extend_from_slice(&q.path.to_le_bytes());
}

impl Fcall {
    fn kind(&self) -> u8 {
        match self {
            Fcall::Tversion { .. } => 100,
            Fcall::Rversion { .. } => 101,
            Fcall::Tauth { .. } => 102,
            Fcall::Rauth { .. } => 103,
            Fcall::Tattach { .. } => 104,
            Fcall::Rattach { .. } => 105,
            Fcall::Rerror { .. } => 107,
            Fcall::Tflush { .. } => 108,
            Fcall::Rflush => 109,
            Fcall::Twalk { .. } => 110,
            Fcall::Rwalk { .. } => 111,
            Fcall::Topen { .. } => 112,
            Fcall::Ropen { .. } => 113,
            Fcall::Tcreate { .. } => 114,
            Fcall::Rcreate { .. } => 115,
            Fcall::Tread { .. } => 116,
            Fcall::Rread { .. } => 117,
            Fcall::Twrite { .. } => 118,
            Fcall::Rwrite { .. } => 119,
            Fcall::Tclunk { .. } => 120,
            Fcall::Rclunk => 121,
            Fcall::Tremove { .. } => 122,
            Fcall::Rremove => 123,
            Fcall::Tstat { .. } => 124,
            Fcall::Rstat { .. } => 125,
            Fcall::Twstat { .. } => 126,
            Fcall::Rwstat => 127,
        }
    }

    /// The whole message, size prefix included.
    pub fn encode(&self, tag: u16) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0, self.kind()];
        out.extend_from_slice(&tag.to_le_bytes());
        let o = &mut out;
        match self {
            Fcall::Tversion { msize, version } | Fcall::Rversion { msize, version } => {
                o.extend_from_slice(&msize.to_le_bytes());
                put_str(o, version);
            }
            Fcall::Tauth { afid, uname, aname } => {
                o.extend_from_slice(&afid.to_le_bytes());
                put_str(o, uname);
                put_str(o, aname);
            }
            Fcall::Rauth { aqid } => put_qid(o, aqid),
            Fcall::Tattach {
                fid,
                afid,
                uname,
                aname,
            } => {
                o.extend_from_slice(&fid.to_le_bytes());
                o.extend_from_slice(&afid.to_le_bytes());
                put_str(o, uname);
                put_str(o, aname);
            }
            Fcall::Rattach { qid } => put_qid(o, qid),
            Fcall::Rerror { ename } => put_str(o, cut(ename, ERRMAX)),
            Fcall::Tflush { oldtag } => o.extend_from_slice(&oldtag.to_le_bytes()),
            Fcall::Rflush | Fcall::Rclunk | Fcall::Rremove | Fcall::Rwstat => {}
            Fcall::Twalk {
                fid,
                newfid,
                wnames,
            } => {
                o.extend_from_slice(&fid.to_le_bytes());
                o.extend_from_slice(&newfid.to_le_bytes());
                o.extend_from_slice(&(wnames.len() as u16).to_le_bytes());
                for w in wnames {
                    put_str(o, w);
                }
            }
            Fcall::Rwalk { qids } => {
                o.extend_from_slice(&(qids.len() as u16).to_le_bytes());
                for q in qids {
                    put_qid(o, q);
                }
            }
            Fcall::Topen { fid, mode } => {
                o.extend_from_slice(&fid.to_le_bytes());
                o.push(*mode);
            }
            Fcall::Ropen { qid, iounit } | Fcall::Rcreate { qid, iounit } => {
                put_qid(o, qid);
                o.extend_from_slice(&iounit.to_le_bytes());
            }
            Fcall::Tcreate {
                fid,
                name,
                perm,
                mode,
            } => {
                o.extend_from_slice(&fid.to_le_bytes());
                put_str(o, name);
                o.extend_from_slice(&perm.to_le_bytes());
                o.push(*mode);
            }
            Fcall::Tread { fid, offset, count } => {
                o.extend_from_slice(&fid.to_le_bytes());
                o.extend_from_slice(&offset.to_le_bytes());
                o.extend_from_slice(&count.to_le_bytes());
            }
            Fcall::Rread { data } => {
                o.extend_from_slice(&(data.len() as u32).to_le_bytes());
                o.extend_from_slice(data);
            }
            Fcall::Twrite { fid, offset, data } => {
                o.extend_from_slice(&fid.to_le_bytes());
                o.extend_from_slice(&offset.to_le_bytes());
                o.extend_from_slice(&(data.len() as u32).to_le_bytes());
                o.extend_from_slice(data);
            }
            Fcall::Rwrite { count } => o.extend_from_slice(&count.to_le_bytes()),
            Fcall::Tclunk { fid } | Fcall::Tremove { fid } | Fcall::Tstat { fid } => {
                o.extend_from_slice(&fid.to_le_bytes())
            }
            Fcall::Rstat { stat } => {
                let mut s = Vec::new();
                stat.encode(&mut s);
                o.extend_from_slice(&(s.len() as u16).to_le_bytes());
                o.extend_from_slice(&s);
            }
            Fcall::Twstat { fid, stat } => {
                o.extend_from_slice(&fid.to_le_bytes());
                let mut s = Vec::new();
                stat.encode(&mut s);
                o.extend_from_slice(&(s.len() as u16).to_le_bytes());
                o.extend_from_slice(&s);
            }
        }
        let size = out.len() as u32;
        out[0..4].copy_from_slice(&size.to_le_bytes());
        out
    }

    /// Decodes a whole message (size prefix included) into its tag and body.
    pub fn decode(msg: &[u8]) -> Result<(u16, Fcall), DecodeError> {
        if msg.len() < 7 {
            return Err(DecodeError::Short);
        }
        let size = u32::from_le_bytes(msg[0..4].try_into().expect("4")) as usize;
        if size != msg.len() {
            return Err(DecodeError::BadSize(size));
        }
        let kind = msg[4];
        let tag = u16::from_le_bytes([msg[5], msg[6]]);
        let mut r = Reader { b: &msg[7..] };
        let f = match kind {
            100 => Fcall::Tversion {
                msize: r.u32()?,
                version: r.string()?,
            },
            101 => Fcall::Rversion {
                msize: r.u32()?,
                version: r.string()?,
            },
            102 => Fcall::Tauth {
                afid: r.u32()?,
                uname: r.string()?,
                aname: r.string()?,
            },
            103 => Fcall::Rauth { aqid: r.qid()? },
            104 => Fcall::Tattach {
                fid: r.u32()?,
                afid: r.u32()?,
                uname: r.string()?,
                aname: r.string()?,
            },
            105 => Fcall::Rattach { qid: r.qid()? },
            107 => Fcall::Rerror { ename: r.string()? },
            108 => Fcall::Tflush { oldtag: r.u16()? },
            109 => Fcall::Rflush,
            110 => {
                let fid = r.u32()?;
                let newfid = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAXWELEM {
                    return Err(DecodeError::Malformed("more than 16 walk elements"));
                }
                let wnames = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
                Fcall::Twalk {
                    fid,
                    newfid,
                    wnames,
                }
            }
            111 => {
                let n = r.u16()? as usize;
                if n > MAXWELEM {
                    return Err(DecodeError::Malformed("more than 16 walk qids"));
                }
                Fcall::Rwalk {
                    qids: (0..n).map(|_| r.qid()).collect::<Result<_, _>>()?,
                }
            }
            112 => Fcall::Topen {
                fid: r.u32()?,
                mode: r.u8()?,
            },
            113 => Fcall::Ropen {
                qid: r.qid()?,
                iounit: r.u32()?,
            },
            114 => Fcall::Tcreate {
                fid: r.u32()?,
                name: r.string()?,
                perm: r.u32()?,
                mode: r.u8()?,
            },
            115 => Fcall::Rcreate {
                qid: r.qid()?,
                iounit: r.u32()?,
            },
            116 => Fcall::Tread {
                fid: r.u32()?,
                offset: r.u64()?,
                count: r.u32()?,
            },
            117 => {
                let n = r.u32()? as usize;
                Fcall::Rread {
                    data: r.take(n)?.to_vec(),
                }
            }
            118 => {
                let fid = r.u32()?;
                let offset = r.u64()?;
                let n = r.u32()? as usize;
                Fcall::Twrite {
                    fid,
                    offset,
                    data: r.take(n)?.to_vec(),
                }
            }
            119 => Fcall::Rwrite { count: r.u32()? },
            120 => Fcall::Tclunk { fid: r.u32()? },
            121 => Fcall::Rclunk,
            122 => Fcall::Tremove { fid: r.u32()? },
            123 => Fcall::Rremove,
            124 => Fcall::Tstat { fid: r.u32()? },
            125 => Fcall::Rstat {
                stat: r.wrapped_stat()?,
            },
            126 => {
                let fid = r.u32()?;
                Fcall::Twstat {
                    fid,
                    stat: r.wrapped_stat()?,
                }
            }
            127 => Fcall::Rwstat,
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !r.b.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after the message"));
        }
        Ok((tag, f))
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }
    fn qid(&mut self) -> Result<Qid, DecodeError> {
        Ok(Qid {
            ty: self.u8()?,
            version: self.u32()?,
            path: self.u64()?,
        })
    }
    fn wrapped_stat(&mut self) -> Result<Stat, DecodeError> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        let (stat, used) = Stat::decode(bytes)?;
        if used != n {
            return Err(DecodeError::Malformed(
                "stat length disagrees with its wrapper",
            ));
        }
        Ok(stat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex, white space between the bytes allowed (the spec's layout).
    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn check(hex: &str, tag: u16, f: Fcall) {
        let bytes = unhex(hex);
        assert_eq!(Fcall::decode(&bytes).unwrap(), (tag, f.clone()), "{hex}");
        assert_eq!(f.encode(tag), bytes, "{hex}");
    }

    #[test]
    fn the_captured_exchange_of_spec_9_5() {
        check(
            "13000000 64 ffff 18200000 0600 395032303030",
            NOTAG,
            Fcall::Tversion {
                msize: 8216,
                version: "9P2000".into(),
            },
        );
        check(
            "13000000 65 ffff 00200000 0600 395032303030",
            NOTAG,
            Fcall::Rversion {
                msize: 8192,
                version: "9P2000".into(),
            },
        );
        check(
            "15000000 66 0100 05000000 0600 676c656e6461 0000",
            1,
            Fcall::Tauth {
                afid: 5,
                uname: "glenda".into(),
                aname: "".into(),
            },
        );
        check(
            "19000000 68 0100 00000000 ffffffff 0600 676c656e6461 0000",
            1,
            Fcall::Tattach {
                fid: 0,
                afid: NOFID,
                uname: "glenda".into(),
                aname: "".into(),
            },
        );
        check(
            "14000000 69 0100 80 00000000 0000000000000000",
            1,
            Fcall::Rattach {
                qid: Qid {
                    ty: QTDIR,
                    version: 0,
                    path: 0,
                },
            },
        );
        check(
            "17000000 6e 0200 00000000 01000000 0200 0100 64 0100 78",
            2,
            Fcall::Twalk {
                fid: 0,
                newfid: 1,
                wnames: vec!["d".into(), "x".into()],
            },
        );
        check(
            "23000000 6f 0200 0200 80 00000000 0200000000000000 00 00000000 0300000000000000",
            2,
            Fcall::Rwalk {
                qids: vec![
                    Qid {
                        ty: QTDIR,
                        version: 0,
                        path: 2,
                    },
                    Qid {
                        ty: 0,
                        version: 0,
                        path: 3,
                    },
                ],
            },
        );
        let stat = Stat {
            qid: Qid {
                ty: 0,
                version: 0,
                path: 3,
            },
            mode: 0o644,
            atime: 1_700_000_000,
            mtime: 1_700_000_000,
            length: 10000,
            name: "x".into(),
            uid: "glenda".into(),
            gid: "glenda".into(),
            muid: "glenda".into(),
            ..Default::default()
        };
        check(
            "4d000000 7d 0400 4400 4200 0000 00000000 00 00000000 0300000000000000
             a4010000 00f15365 00f15365 1027000000000000 0100 78 0600 676c656e6461 0600 676c656e6461 0600 676c656e6461",
            4,
            Fcall::Rstat { stat },
        );
        check(
            "0c000000 70 0500 01000000 00",
            5,
            Fcall::Topen {
                fid: 1,
                mode: OREAD,
            },
        );
        check(
            "18000000 71 0500 00 00000000 0300000000000000 e81f0000",
            5,
            Fcall::Ropen {
                qid: Qid {
                    ty: 0,
                    version: 0,
                    path: 3,
                },
                iounit: 8168,
            },
        );
        check(
            "17000000 74 0600 01000000 0000000000000000 10000000",
            6,
            Fcall::Tread {
                fid: 1,
                offset: 0,
                count: 16,
            },
        );
        check(
            "1b000000 75 0600 10000000 05121f2c394653606d7a8794a1aebbc8",
            6,
            Fcall::Rread {
                data: unhex("05121f2c394653606d7a8794a1aebbc8"),
            },
        );
        check("0b000000 78 0b00 01000000", 11, Fcall::Tclunk { fid: 1 });
        check("07000000 79 0b00", 11, Fcall::Rclunk);
        check("09000000 6c 0c00 0300", 12, Fcall::Tflush { oldtag: 3 });
        check("07000000 6d 0c00", 12, Fcall::Rflush);
        let mut rerror = unhex("2b000000 6b 0100 2200");
        rerror.extend_from_slice(b"vacfs: authentication not required");
        assert_eq!(
            Fcall::decode(&rerror).unwrap().1,
            Fcall::Rerror {
                ename: "vacfs: authentication not required".into()
            }
        );
    }

    /// Before, an error's text went out whole (a hubfs error naming a
    /// long hub overran the connection's msize), and past 64 KiB a string
    /// was cut inside a character, which the reader refuses as not UTF-8.
    #[test]
    fn long_texts_are_cut_at_characters_and_errors_to_errmax() {
        let long = "é".repeat(40_000); // 80,000 bytes, two a character
        let bytes = Fcall::Rerror {
            ename: long.clone(),
        }
        .encode(1);
        assert!(bytes.len() <= 9 + ERRMAX && bytes.len() <= 256);
        let Fcall::Rerror { ename } = Fcall::decode(&bytes).unwrap().1 else {
            panic!("not an Rerror");
        };
        assert!(ename.len() <= ERRMAX && long.starts_with(&ename) && !ename.is_empty());
        // A string past the 16-bit length, in a message with no other cut.
        let bytes = Fcall::Tversion {
            msize: 8192,
            version: long.clone(),
        }
        .encode(0);
        let Fcall::Tversion { version, .. } = Fcall::decode(&bytes).unwrap().1 else {
            panic!("not a Tversion");
        };
        assert_eq!(version.len(), 65_534, "whole characters up to 65,535 bytes");
        assert!(long.starts_with(&version));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(Fcall::decode(&[1, 0, 0]), Err(DecodeError::Short));
        assert_eq!(
            Fcall::decode(&unhex("08000000 78 0100 01")),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Fcall::decode(&unhex("09000000 78 0100 01")),
            Err(DecodeError::BadSize(9))
        );
        assert_eq!(
            Fcall::decode(&unhex("07000000 6a 0100")),
            Err(DecodeError::UnknownType(106))
        );
        assert!(matches!(
            Fcall::decode(&unhex("0c000000 78 0100 01000000 ff")),
            Err(DecodeError::Malformed(_))
        ));
        let mut walk = unhex("00000000 6e 0100 00000000 01000000 1100");
        for _ in 0..17 {
            walk.extend_from_slice(&unhex("0100 61"));
        }
        let n = walk.len() as u32;
        walk[0..4].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(
            Fcall::decode(&walk),
            Err(DecodeError::Malformed(_))
        ));
    }
}
