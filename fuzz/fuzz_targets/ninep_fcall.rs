//! 9P2000 messages (ninep::fcall): decoding never panics; a decoded message
//! re-encodes to exactly the input bytes; a stat decoded alone re-encodes to
//! its bytes; every message built from the input encodes and decodes back.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ninep::fcall::{DecodeError, MAXWELEM};
use ninep::{Fcall, Qid, Stat};

fn check_decoded(data: &[u8]) {
    match Fcall::decode(data) {
        Ok((tag, f)) => {
            let out = f.encode(tag);
            assert_eq!(out, data, "re-encoding {f:?} changed the bytes");
        }
        Err(DecodeError::Short) => assert!(data.len() < 7),
        Err(DecodeError::BadSize(n)) => assert_ne!(n, data.len()),
        Err(_) => {}
    }
    if let Ok((stat, used)) = Stat::decode(data) {
        let mut out = Vec::new();
        stat.encode(&mut out);
        assert_eq!(out, &data[..used], "re-encoding {stat:?}");
    }
}

fn qid(u: &mut Unstructured) -> arbitrary::Result<Qid> {
    Ok(Qid {
        ty: u.arbitrary()?,
        version: u.arbitrary()?,
        path: u.arbitrary()?,
    })
}

fn stat(u: &mut Unstructured) -> arbitrary::Result<Stat> {
    Ok(Stat {
        ty: u.arbitrary()?,
        dev: u.arbitrary()?,
        qid: qid(u)?,
        mode: u.arbitrary()?,
        atime: u.arbitrary()?,
        mtime: u.arbitrary()?,
        length: u.arbitrary()?,
        name: u.arbitrary()?,
        uid: u.arbitrary()?,
        gid: u.arbitrary()?,
        muid: u.arbitrary()?,
    })
}

fn check_encoded(u: &mut Unstructured) -> arbitrary::Result<()> {
    let tag: u16 = u.arbitrary()?;
    let s = |u: &mut Unstructured| u.arbitrary::<String>();
    let f = match u.int_in_range(0..=26u8)? {
        0 => Fcall::Tversion {
            msize: u.arbitrary()?,
            version: s(u)?,
        },
        1 => Fcall::Rversion {
            msize: u.arbitrary()?,
            version: s(u)?,
        },
        2 => Fcall::Tauth {
            afid: u.arbitrary()?,
            uname: s(u)?,
            aname: s(u)?,
        },
        3 => Fcall::Rauth { aqid: qid(u)? },
        4 => Fcall::Tattach {
            fid: u.arbitrary()?,
            afid: u.arbitrary()?,
            uname: s(u)?,
            aname: s(u)?,
        },
        5 => Fcall::Rattach { qid: qid(u)? },
        6 => Fcall::Rerror { ename: s(u)? },
        7 => Fcall::Tflush {
            oldtag: u.arbitrary()?,
        },
        8 => Fcall::Rflush,
        9 => Fcall::Twalk {
            fid: u.arbitrary()?,
            newfid: u.arbitrary()?,
            wnames: u.arbitrary()?,
        },
        10 => {
            let n = u.int_in_range(0..=20usize)?;
            Fcall::Rwalk {
                qids: (0..n).map(|_| qid(u)).collect::<Result<_, _>>()?,
            }
        }
        11 => Fcall::Topen {
            fid: u.arbitrary()?,
            mode: u.arbitrary()?,
        },
        12 => Fcall::Ropen {
            qid: qid(u)?,
            iounit: u.arbitrary()?,
        },
        13 => Fcall::Tcreate {
            fid: u.arbitrary()?,
            name: s(u)?,
            perm: u.arbitrary()?,
            mode: u.arbitrary()?,
        },
        14 => Fcall::Rcreate {
            qid: qid(u)?,
            iounit: u.arbitrary()?,
        },
        15 => Fcall::Tread {
            fid: u.arbitrary()?,
            offset: u.arbitrary()?,
            count: u.arbitrary()?,
        },
        16 => Fcall::Rread {
            data: u.arbitrary()?,
        },
        17 => Fcall::Twrite {
            fid: u.arbitrary()?,
            offset: u.arbitrary()?,
            data: u.arbitrary()?,
        },
        18 => Fcall::Rwrite {
            count: u.arbitrary()?,
        },
        19 => Fcall::Tclunk {
            fid: u.arbitrary()?,
        },
        20 => Fcall::Rclunk,
        21 => Fcall::Tremove {
            fid: u.arbitrary()?,
        },
        22 => Fcall::Rremove,
        23 => Fcall::Tstat {
            fid: u.arbitrary()?,
        },
        24 => Fcall::Rstat { stat: stat(u)? },
        25 => Fcall::Twstat {
            fid: u.arbitrary()?,
            stat: stat(u)?,
        },
        _ => Fcall::Rwstat,
    };
    let bytes = f.encode(tag);
    assert_eq!(
        bytes.len() as u32,
        u32::from_le_bytes(bytes[..4].try_into().unwrap())
    );
    let too_many = match &f {
        Fcall::Twalk { wnames, .. } => wnames.len() > MAXWELEM,
        Fcall::Rwalk { qids } => qids.len() > MAXWELEM,
        _ => false,
    };
    match Fcall::decode(&bytes) {
        Ok((t, g)) => {
            assert!(!too_many, "more than {MAXWELEM} walk elements decoded");
            assert_eq!((t, &g), (tag, &f), "encode→decode");
        }
        Err(DecodeError::Malformed(_)) if too_many => {}
        Err(e) => panic!("{f:?} encoded to bytes that do not decode: {e}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    check_decoded(data);
    let _ = check_encoded(&mut Unstructured::new(data));
});
