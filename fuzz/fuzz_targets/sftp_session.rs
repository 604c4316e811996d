//! An SFTP session against the built-in server (`cpu::services::sftp::serve`),
//! which acts on the real file system with the paths it is sent.
//!
//! First byte odd: a recipe for a packet stream (INIT, OPEN, READ, WRITE,
//! OPENDIR, READDIR, CLOSE, STAT/LSTAT/FSTAT, SETSTAT/FSETSTAT, MKDIR,
//! RMDIR, REMOVE, RENAME, READLINK, SYMLINK, REALPATH, unknown types; paths
//! from a small set, long, or arbitrary bytes; handles the server will have
//! given out or bad ones; packets cut short, and a last packet with a bad
//! length). Even: the rest of the input is the stream as it is.
//!
//! The session runs in a forked child that first chroots into a fresh
//! scratch directory holding a small tree (files, a 300 KB file, a
//! directory, symlinks to a file, to a host path and to themselves), so
//! nothing it does can reach the machine. The child checks, and reports by
//! its exit status: no panic; the server ends; it answers every whole packet
//! it was sent, in order, with exactly one reply carrying that packet's id
//! (VERSION for INIT); and no reply is longer than 256 KiB, the most
//! OpenSSH's client accepts ("Received message too long"). The parent
//! panics if the child died of a signal (a panic aborts it) or reported a
//! violation.
#![no_main]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Unstructured;
use colony_fuzz::{avoid_known, interesting_u64};
use libfuzzer_sys::fuzz_target;

const INIT: u8 = 1;
const VERSION: u8 = 2;
/// Request types, OPEN (3) to SYMLINK (20).
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const REPLIES: [u8; 6] = [VERSION, 101, 102, 103, 104, 105];

/// The server's packet limit, and OpenSSH's limit on what it receives.
const MAX_PACKET: usize = 1 << 20;
const MAX_MESSAGE: usize = 256 << 10;

const PATHS: [&str; 24] = [
    "/",
    ".",
    "",
    "f.txt",
    "/f.txt",
    "big",
    "/d",
    "d/x",
    "d/sub",
    "link",
    "abs",
    "loop",
    "dlink",
    "dlink/x",
    "ro",
    "new",
    "new/x",
    "d/new",
    "../../..",
    "/../d/./x",
    "/etc/hostname",
    "/proc/self/fd/0",
    "f.txt/x",
    "é",
];

fn path(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => u.arbitrary()?,
        1 => {
            // Long paths: past a name's 255 bytes, past PATH_MAX, and (but
            // for the known REALPATH reply bug) past what a reply may hold.
            let max = if avoid_known() { 4200 } else { 300_000 };
            let n = u.int_in_range(200..=max)?;
            if u.arbitrary()? {
                vec![b'n'; n]
            } else {
                b"d/".repeat(n / 2)
            }
        }
        _ => PATHS[u.choose_index(PATHS.len())?].as_bytes().to_vec(),
    })
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn handle(u: &mut Unstructured, out: &mut Vec<u8>) -> arbitrary::Result<()> {
    // The server numbers its handles 1, 2, 3, … as 4 bytes.
    if u.ratio(1, 8)? {
        let b: Vec<u8> = u.arbitrary()?;
        put_bytes(out, &b);
    } else {
        put_bytes(out, &u.int_in_range(0..=6u32)?.to_be_bytes());
    }
    Ok(())
}

fn attrs(u: &mut Unstructured, out: &mut Vec<u8>) -> arbitrary::Result<()> {
    let flags: u32 = if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        [0, 1, 2, 4, 8, 4 | 8, 1 | 4, 0x8000_0000][u.choose_index(8)?]
    };
    put_u32(out, flags);
    if flags & 1 != 0 {
        let size = if u.arbitrary()? {
            u.int_in_range(0..=400_000u64)?
        } else {
            interesting_u64(u)?
        };
        out.extend_from_slice(&size.to_be_bytes());
    }
    if flags & 2 != 0 {
        put_u32(out, u.int_in_range(0..=2000u32)?);
        put_u32(out, u.int_in_range(0..=2000u32)?);
    }
    if flags & 4 != 0 {
        let perm = [0o644, 0o755, 0o000, 0o4755, 0o1777, 0o100644, 0xffff_ffff];
        put_u32(out, perm[u.choose_index(perm.len())?]);
    }
    if flags & 8 != 0 {
        put_u32(out, u.arbitrary()?);
        put_u32(out, u.arbitrary()?);
    }
    if flags & 0x8000_0000 != 0 {
        let n = if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=2u32)?
        };
        put_u32(out, n);
        for _ in 0..n.min(3) {
            put_bytes(out, b"name@example");
            put_bytes(out, b"value");
        }
    }
    Ok(())
}

/// One packet (length prefix included) from the recipe.
fn packet(u: &mut Unstructured, id: u32) -> arbitrary::Result<Vec<u8>> {
    let kinds = [
        INIT, OPEN, OPEN, CLOSE, READ, READ, WRITE, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT,
        OPENDIR, READDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK,
        0, 200,
    ];
    let kind = kinds[u.choose_index(kinds.len())?];
    let mut p = vec![kind];
    if kind == INIT {
        put_u32(&mut p, [3, 2, 6, u32::MAX][u.choose_index(4)?]);
    } else {
        put_u32(&mut p, id);
        match kind {
            OPEN => {
                put_bytes(&mut p, &path(u)?);
                let flags: u32 = if u.ratio(1, 8)? {
                    u.arbitrary()?
                } else {
                    // READ, WRITE, APPEND, CREAT, TRUNC, EXCL combinations.
                    [1, 2, 3, 1 | 2 | 8, 2 | 8 | 0x10, 2 | 8 | 0x20, 4 | 2 | 8, 0]
                        [u.choose_index(8)?]
                };
                put_u32(&mut p, flags);
                attrs(u, &mut p)?;
            }
            CLOSE | FSTAT | READDIR => handle(u, &mut p)?,
            READ => {
                handle(u, &mut p)?;
                p.extend_from_slice(&interesting_u64(u)?.to_be_bytes());
                put_u32(
                    &mut p,
                    if u.arbitrary()? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=70000u32)?
                    },
                );
            }
            WRITE => {
                handle(u, &mut p)?;
                let off = if u.arbitrary()? {
                    u.int_in_range(0..=400_000u64)?
                } else {
                    interesting_u64(u)?
                };
                p.extend_from_slice(&off.to_be_bytes());
                let mut data: Vec<u8> = u.arbitrary()?;
                if u.ratio(1, 8)? {
                    data.resize(u.int_in_range(0..=300_000usize)?, b'w');
                }
                put_bytes(&mut p, &data);
            }
            FSETSTAT => {
                handle(u, &mut p)?;
                attrs(u, &mut p)?;
            }
            SETSTAT | MKDIR => {
                put_bytes(&mut p, &path(u)?);
                attrs(u, &mut p)?;
            }
            RENAME | SYMLINK => {
                put_bytes(&mut p, &path(u)?);
                put_bytes(&mut p, &path(u)?);
            }
            LSTAT | STAT | OPENDIR | REMOVE | RMDIR | REALPATH | READLINK => {
                put_bytes(&mut p, &path(u)?)
            }
            _ => {
                let b: Vec<u8> = u.arbitrary()?;
                p.extend_from_slice(&b);
            }
        }
    }
    if u.int_in_range(0..=15u8)? == 15 {
        // Cut short (the framing stays true).
        let keep = u.int_in_range(1..=p.len())?;
        p.truncate(keep);
    }
    let mut framed = (p.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&p);
    Ok(framed)
}

fn recipe(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let mut stream = Vec::new();
    let n = u.int_in_range(1..=24usize)?;
    for i in 0..n {
        if u.is_empty() {
            break;
        }
        stream.extend(packet(u, 1000 + i as u32)?);
    }
    // (An exhausted input reads as zeros: no bad packet then.)
    if u.int_in_range(0..=7u8)? == 7 {
        // A last packet with a length the server refuses, or longer than
        // what follows.
        let len = [0u32, MAX_PACKET as u32 + 1, u32::MAX, 100][u.choose_index(4)?];
        stream.extend_from_slice(&len.to_be_bytes());
        stream.extend_from_slice(&[OPEN, 0, 0, 0, 1]);
    }
    Ok(stream)
}

/// The replies the server owes for `stream`: per whole packet before the
/// first it cannot frame, `None` for INIT (a VERSION) or the id it carries
/// (0 when the packet is too short to hold one).
fn owed(stream: &[u8]) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    let mut s = stream;
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_PACKET || s.len() - 4 < len {
            break;
        }
        let p = &s[4..4 + len];
        out.push(if p[0] == INIT {
            None
        } else if p.len() >= 5 {
            Some(u32::from_be_bytes(p[1..5].try_into().unwrap()))
        } else {
            Some(0)
        });
        s = &s[4 + len..];
    }
    out
}

/// Checks the server's output against what it owes; a violation's text.
fn check(output: &[u8], owed: &[Option<u32>]) -> Result<(), String> {
    let mut s = output;
    for (i, want) in owed.iter().enumerate() {
        if s.len() < 4 {
            return Err(format!("{} replies for {} packets", i, owed.len()));
        }
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if len > MAX_MESSAGE {
            return Err(format!(
                "reply {i} is {len} bytes, more than the {MAX_MESSAGE} OpenSSH's client accepts (kind {})",
                s.get(4).copied().unwrap_or(0)
            ));
        }
        if len < 5 || s.len() - 4 < len {
            return Err(format!("reply {i} is malformed ({len} bytes)"));
        }
        let r = &s[4..4 + len];
        if !REPLIES.contains(&r[0]) {
            return Err(format!("reply {i} has type {}", r[0]));
        }
        match want {
            None if r[0] != VERSION => return Err(format!("INIT answered with type {}", r[0])),
            None => {}
            Some(id) => {
                let got = u32::from_be_bytes(r[1..5].try_into().unwrap());
                if r[0] == VERSION || got != *id {
                    return Err(format!(
                        "packet {i} (id {id}) answered with type {} id {got}",
                        r[0]
                    ));
                }
            }
        }
        s = &s[4 + len..];
    }
    if !s.is_empty() {
        return Err(format!(
            "{} bytes of replies beyond the {} owed",
            s.len(),
            owed.len()
        ));
    }
    Ok(())
}

/// The scratch directory the children chroot into: `<base>/jail`.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("colony-fuzz-sftp-")
            .tempdir()
            .expect("tempdir")
            .keep()
    })
}

/// The small tree the session starts from, made inside the jail.
fn make_tree() -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    std::fs::write("/f.txt", b"hello, sftp\n")?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write("/big", big)?;
    std::fs::create_dir_all("/d/sub")?;
    std::fs::write("/d/x", b"x")?;
    std::fs::write("/ro", b"read only\n")?;
    std::fs::set_permissions("/ro", std::fs::Permissions::from_mode(0o444))?;
    symlink("f.txt", "/link")?;
    symlink("/etc/hostname", "/abs")?;
    symlink("loop", "/loop")?;
    symlink("d", "/dlink")?;
    Ok(())
}

fn child(stream: &[u8], jail: &Path) -> i32 {
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::alarm(5);
    }
    let c = std::ffi::CString::new(jail.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain system calls on a valid path.
    let ok = unsafe { libc::chroot(c.as_ptr()) == 0 && libc::chdir(c"/".as_ptr()) == 0 };
    if !ok {
        return 2;
    }
    if let Err(e) = make_tree() {
        eprintln!("making the tree: {e}");
        return 4;
    }
    if colony_fuzz::trace() {
        let mut s = stream;
        while s.len() >= 4 {
            let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
            let p = &s[4..(4 + len).min(s.len())];
            eprintln!(
                "-> packet of {len} bytes, type {:?}: {:02x?}",
                p.first(),
                &p[..p.len().min(24)]
            );
            if len == 0 || len > MAX_PACKET || s.len() - 4 < len {
                break;
            }
            s = &s[4 + len..];
        }
    }
    let mut output = Vec::new();
    let result = cpu::services::sftp::serve(stream, &mut output);
    if colony_fuzz::trace() {
        eprintln!("serve: {result:?}, {} bytes of replies", output.len());
    }
    match check(&output, &owed(stream)) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("{msg}");
            3
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let stream = if first & 1 == 1 {
        match recipe(&mut Unstructured::new(rest)) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        rest.to_vec()
    };
    let jail = base().join("jail");
    if jail.exists() {
        let _ = std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755));
        std::fs::remove_dir_all(&jail).expect("remove the last session's jail");
    }
    std::fs::create_dir(&jail).expect("make the jail");
    let _ = std::io::stderr().flush();
    // SAFETY: the child only runs the session and then _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child(&stream, &jail);
        unsafe { libc::_exit(code) };
    }
    match colony_fuzz::wait_for_child(pid, "the SFTP session") {
        0 => {}
        2 => panic!("chroot into the scratch directory failed (run as root)"),
        3 => panic!("the SFTP server broke the protocol (see the child's message above)"),
        4 => panic!("could not make the tree in the jail"),
        n => panic!("the SFTP child exited with {n}"),
    }
});
