//! The 9P2000 export of a live file system, driven by our 9P client over TCP.

use std::net::TcpListener;
use std::sync::Arc;

use fossil::{CacheConfig, Fs};
use ninep::fcall::*;
use ninep::{Client, Fcall, Stat};
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, MemoryStore};

fn x_bytes() -> Vec<u8> {
    (0..10000).map(|i| ((13 * i + 5) % 256) as u8).collect()
}

/// The spec's §11.10 tree (d/x and hello.txt), archived and exported.
fn export() -> (std::net::SocketAddr, Arc<Fs>, Arc<MemoryStore>) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("d")).unwrap();
    std::fs::write(src.path().join("d/x"), x_bytes()).unwrap();
    std::fs::write(src.path().join("hello.txt"), b"hello, venti\n").unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut tree = Tree::default();
    DirImporter::new(store.as_ref(), BlockSizes::default(), &Quiet, None)
        .add(&mut tree, &src.path().join("."))
        .unwrap();
    let root = tree
        .write(store.as_ref(), BlockSizes::default(), None)
        .unwrap();
    let fs = Arc::new(Fs::open(store.clone(), root, CacheConfig::memory_default()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = fs.clone();
    std::thread::spawn(move || {
        fossil9p::serve_with(listener, served, fossil9p::Options { allow_root: true })
    });
    (addr, fs, store)
}

fn server_error(r: Result<impl std::fmt::Debug, ninep::client::ClientError>) -> String {
    match r {
        Err(ninep::client::ClientError::Server(e)) => e,
        other => panic!("expected an Rerror, got {other:?}"),
    }
}

#[test]
fn version_negotiation() {
    let (addr, _, _) = export();
    let c = Client::connect(addr, 8216).unwrap();
    assert_eq!(c.msize, 8216);
    let c = Client::connect(addr, 10 << 20).unwrap();
    assert_eq!(c.msize, fossil9p::MAX_MSIZE, "the server caps msize");
    let mut c = Client::connect(addr, 8216).unwrap();
    // 9P2000.u is downgraded; anything else is "unknown", in an Rversion.
    assert_eq!(
        c.rpc(Fcall::Tversion {
            msize: 8216,
            version: "9P2000.u".into()
        })
        .unwrap(),
        Fcall::Rversion {
            msize: 8216,
            version: "9P2000".into()
        }
    );
    assert_eq!(
        c.rpc(Fcall::Tversion {
            msize: 8216,
            version: "9P1999".into()
        })
        .unwrap(),
        Fcall::Rversion {
            msize: 8216,
            version: "unknown".into()
        }
    );
}

#[test]
fn walk_stat_open_and_read_like_the_spec_exchange() {
    let (addr, _, _) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    let err = server_error(c.rpc(Fcall::Tauth {
        afid: 5,
        uname: "glenda".into(),
        aname: "".into(),
    }));
    assert_eq!(err, "colony: authentication not required");
    let root = c.attach(0, "glenda").unwrap();
    assert_eq!(root.ty, QTDIR);

    let qids = c.walk(0, 1, &["d", "x"]).unwrap();
    assert_eq!(qids.len(), 2);
    assert_eq!((qids[0].ty, qids[1].ty), (QTDIR, QTFILE));
    // A later element missing: the prefix, and no new fid.
    assert_eq!(c.walk(0, 2, &["d", "nope"]).unwrap().len(), 1);
    assert!(server_error(c.stat(2)).contains("unknown fid"));
    // The first element missing: an Rerror (vacfs's Rwalk nwqid=0 is a bug).
    assert!(server_error(c.walk(0, 2, &["nope"])).contains("no such file"));
    // ".." at the root stays at the root.
    assert_eq!(c.walk(0, 4, &[".."]).unwrap()[0], root);

    let st = c.stat(1).unwrap();
    assert_eq!((st.name.as_str(), st.length, st.mode), ("x", 10000, 0o644));
    let (_, iounit) = c.open(1, OREAD).unwrap();
    assert_eq!(iounit, 8216 - 24);
    assert_eq!(c.read(1, 0, 16).unwrap(), &x_bytes()[..16]);
    assert_eq!(c.read_all(1).unwrap(), x_bytes());
    assert!(c.read(1, 10000, 100).unwrap().is_empty(), "at EOF");
    assert!(server_error(c.open(1, OREAD)).contains("already open"));
    c.clunk(1).unwrap();
    assert_eq!(c.rpc(Fcall::Tflush { oldtag: 3 }).unwrap(), Fcall::Rflush);

    // The root directory lists whole stat entries; a non-continuing offset is refused.
    c.walk(0, 5, &[]).unwrap();
    c.open(5, OREAD).unwrap();
    let names: Vec<String> = c.read_dir(5).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["d", "hello.txt"]);
    assert!(server_error(c.read(5, 7, 100)).contains("bad offset"));
    let first = c.read(5, 0, 60).unwrap();
    assert!(
        first.is_empty() || Stat::decode(&first).unwrap().1 == first.len(),
        "never a partial entry"
    );
}

#[test]
fn create_write_wstat_remove_and_the_result_saves() {
    let (addr, fs, store) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["d"]).unwrap();
    c.create(1, "new", 0o664, ORDWR).unwrap();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(1, 0, &data).unwrap();
    assert_eq!(c.read(1, 29_990, 100).unwrap(), &data[29_990..]);
    c.clunk(1).unwrap();

    // Rename and truncate through wstat.
    c.walk(0, 2, &["d", "new"]).unwrap();
    let mut st = Stat::dont_touch();
    st.name = "renamed".into();
    st.length = 1000;
    c.wstat(2, st).unwrap();
    assert_eq!(c.stat(2).unwrap().name, "renamed");
    assert_eq!(c.stat(2).unwrap().length, 1000);
    // Mode changes keep the DMDIR bit fixed.
    let mut st = Stat::dont_touch();
    st.mode = DMDIR | 0o755;
    assert!(server_error(c.wstat(2, st)).contains("DMDIR"));
    let mut st = Stat::dont_touch();
    st.mode = 0o600;
    c.wstat(2, st).unwrap();
    // All don't-touch means "flush": fine.
    c.wstat(2, Stat::dont_touch()).unwrap();

    // A directory, and removing things.
    c.walk(0, 3, &[]).unwrap();
    c.create(3, "tmpdir", DMDIR | 0o777, OREAD).unwrap();
    c.clunk(3).unwrap();
    c.walk(0, 4, &["hello.txt"]).unwrap();
    c.remove(4).unwrap();
    assert!(
        server_error(c.stat(4)).contains("unknown fid"),
        "remove clunks the fid"
    );
    // Creating an existing name fails.
    c.walk(0, 5, &["d"]).unwrap();
    assert!(server_error(c.create(5, "renamed", 0o644, OWRITE)).contains("exists"));

    let saved = fs.save().unwrap().score;
    let a = vac::Archive::open(store.as_ref() as &dyn BlockStore, &saved).unwrap();
    let node = a.walk("d/renamed").unwrap();
    assert_eq!(a.read_small(&node, 1 << 20).unwrap(), &data[..1000]);
    assert_eq!(node.dirent.mode & 0o777, 0o600);
    assert!(a.walk("hello.txt").is_err());
    assert!(a.walk("tmpdir").unwrap().dir.is_some());
}

#[test]
fn permissions_are_checked_for_other_users() {
    let (addr, _, _) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["d", "x"]).unwrap();
    let mut st = Stat::dont_touch();
    st.mode = 0o600;
    c.wstat(1, st).unwrap();
    // Someone else may not read it, nor write in d (0755, owned by root).
    let mut other = Client::connect(addr, 8216).unwrap();
    other.attach(0, "4242").unwrap();
    other.walk(0, 1, &["d", "x"]).unwrap();
    assert!(server_error(other.open(1, OREAD)).contains("permission denied"));
    other.walk(0, 2, &["d"]).unwrap();
    assert!(server_error(other.create(2, "mine", 0o644, OWRITE)).contains("permission denied"));
    let mut st = Stat::dont_touch();
    st.mode = 0o777;
    assert!(server_error(other.wstat(1, st)).contains("owner"));
}

#[test]
fn malformed_messages_and_vanishing_clients() {
    let (addr, _, _) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    // Framed but malformed: an Rerror with the request's tag, and the session goes on.
    let (tag, reply) = c
        .raw(&[0x0c, 0, 0, 0, 120, 9, 0, 1, 0, 0, 0, 0xff])
        .unwrap();
    assert_eq!(tag, 9);
    assert!(matches!(reply, Fcall::Rerror { .. }));
    let (tag, reply) = c.raw(&[7, 0, 0, 0, 106, 10, 0]).unwrap();
    assert_eq!((tag, matches!(reply, Fcall::Rerror { .. })), (10, true));
    assert_eq!(c.walk(0, 1, &["d"]).unwrap().len(), 1);

    // A client that disappears mid-message leaves the server serving others.
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, &[0xff, 0, 0, 0, 110, 1]).unwrap();
    }
    // A size beyond msize: an Rerror, then the connection closes.
    let mut bad = Client::connect(addr, 8216).unwrap();
    let (_, reply) = bad.raw(&[0xff, 0xff, 0xff, 0x7f, 100, 0, 0]).unwrap();
    assert!(matches!(reply, Fcall::Rerror { .. }));
    assert!(
        bad.raw(&Fcall::Tclunk { fid: 1 }.encode(1)).is_err(),
        "closed"
    );
    assert_eq!(c.walk(0, 2, &["hello.txt"]).unwrap().len(), 1);
}

#[test]
fn root_is_refused_unless_allowed_and_stale_names_are_not_acted_on() {
    let (_, fs, _) = export();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = fs.clone();
    std::thread::spawn(move || fossil9p::serve(listener, served));
    let mut c = Client::connect(addr, 8216).unwrap();
    assert!(server_error(c.attach(0, "root")).contains("may not attach"));
    assert!(server_error(c.attach(0, "0")).contains("may not attach"));
    c.attach(0, "glenda").unwrap();

    // A fid walked to hello.txt, which is then replaced by another file of the
    // same name: removing through the old fid must not delete the new file.
    let (addr, fs, _) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["hello.txt"]).unwrap();
    fs.rename(
        fossil::ROOT_INO,
        "hello.txt",
        fossil::ROOT_INO,
        "moved.txt",
        false,
    )
    .unwrap();
    fs.create(fossil::ROOT_INO, "hello.txt", 0o644, 0, 0)
        .unwrap();
    assert!(server_error(c.remove(1)).contains("renamed or replaced"));
    assert!(fs.lookup(fossil::ROOT_INO, "hello.txt").is_ok());
}

/// Offsets and sizes at the edge of u64 and of the vac format: refused
/// (EFBIG), never wrapped onto the file's start or cut on save. Invariant:
/// after every refused request the file reads back exactly as before.
#[test]
fn writes_and_lengths_past_the_format_limit_are_refused_and_change_nothing() {
    let (addr, fs, store) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["hello.txt"]).unwrap();
    c.open(1, ORDWR).unwrap();
    let before = c.read_all(1).unwrap();

    // A zero-length write far out does nothing (it once set the size to 2^64-1).
    assert_eq!(c.write(1, u64::MAX, b"").unwrap(), 0);
    assert_eq!(c.stat(1).unwrap().length, before.len() as u64);
    // A write that would wrap past 2^64 once landed at offset 0.
    let err = server_error(c.write(1, u64::MAX - 9, &[b'X'; 20]));
    assert!(err.contains("too large"), "{err}");
    let err = server_error(c.write(1, 1 << 48, b"x"));
    assert!(err.contains("too large"), "{err}");
    let mut st = Stat::dont_touch();
    st.length = 300 << 40;
    let err = server_error(c.wstat(1, st));
    assert!(err.contains("too large"), "{err}");
    assert_eq!(c.read_all(1).unwrap(), before);
    let report = fs.save().unwrap();
    let saved = vac::Archive::open(store.as_ref(), &report.score).unwrap();
    let node = saved.walk("hello.txt").unwrap();
    assert_eq!(saved.read_small(&node, 1 << 20).unwrap(), before);
}

/// A wstat is all or nothing: with a bad name in it, the length and mode it
/// also asked for are not applied either.
#[test]
fn a_wstat_with_a_bad_name_changes_nothing() {
    let (addr, _, _) = export();
    let mut c = Client::connect(addr, 8216).unwrap();
    c.attach(0, "0").unwrap();
    c.walk(0, 1, &["hello.txt"]).unwrap();
    let before = c.stat(1).unwrap();
    let mut st = Stat::dont_touch();
    st.length = 0;
    st.mode = 0o600;
    st.name = "a/b".into();
    let err = server_error(c.wstat(1, st));
    assert!(err.contains("a/b"), "the name is what is refused: {err}");
    let after = c.stat(1).unwrap();
    assert_eq!(after.length, before.length, "not truncated");
    assert_eq!(after.mode, before.mode, "not chmodded");
    assert_eq!(after.name, "hello.txt");
}
