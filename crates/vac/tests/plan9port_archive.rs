//! The spec's plan9port-made archive (§11.10), rebuilt block by block from its
//! description: every block must hash to the score the spec lists (so these
//! are the very bytes plan9port wrote), and our reader must read it.

use venti::{BlockStore, BlockType, MemoryStore, Score};

fn unhex(s: &str) -> Vec<u8> {
    venti::hex::decode(s).expect("hex")
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A version-8 DirEntry as plan9port vac writes it.
fn dirent8(
    elem: &str,
    entry: u32,
    qid: u64,
    owner: [&str; 3],
    time: u32,
    mode: u32,
    qid_space: Option<u64>,
) -> Vec<u8> {
    let mut b = unhex("1c4d9072 0008");
    string(&mut b, elem);
    b.extend_from_slice(&entry.to_be_bytes());
    b.extend_from_slice(&qid.to_be_bytes());
    for o in owner {
        string(&mut b, o);
    }
    for v in [time, 0, time, time, mode] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(max) = qid_space {
        b.extend_from_slice(&unhex("03 0010 0000000000000000"));
        b.extend_from_slice(&max.to_be_bytes());
    }
    b
}

/// A botched-order MetaBlock with bodies packed from offset 336.
fn metablock(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![0u8; 12 + 4 * 81];
    let mut offset = 336usize;
    for (i, body) in bodies.iter().enumerate() {
        b[12 + 4 * i..14 + 4 * i].copy_from_slice(&(offset as u16).to_be_bytes());
        b[14 + 4 * i..16 + 4 * i].copy_from_slice(&(body.len() as u16).to_be_bytes());
        offset += body.len();
    }
    b[0..4].copy_from_slice(&0x5656fc79u32.to_be_bytes());
    b[4..6].copy_from_slice(&(offset as u16).to_be_bytes());
    b[8..10].copy_from_slice(&81u16.to_be_bytes());
    b[10..12].copy_from_slice(&(bodies.len() as u16).to_be_bytes());
    for body in bodies {
        b.extend_from_slice(body);
    }
    b
}

fn entry(flags: u8, size: u64, score: &str) -> Vec<u8> {
    let mut b = unhex("00000000 1ff4 2000");
    b.push(flags);
    b.extend_from_slice(&[0; 5]);
    b.extend_from_slice(&size.to_be_bytes()[2..]);
    b.extend_from_slice(&unhex(score));
    b
}

fn put(store: &MemoryStore, ty: BlockType, data: &[u8], expect: &str) {
    let score = store.write(ty, data).unwrap();
    assert_eq!(
        score.to_string(),
        expect,
        "block of type {ty} and {} bytes",
        data.len()
    );
}

fn x_bytes() -> Vec<u8> {
    (0..10000).map(|i| ((13 * i + 5) % 256) as u8).collect()
}

/// Stores the eleven blocks of §11.10, checking each score.
fn plan9port_archive() -> (MemoryStore, Score) {
    let s = MemoryStore::new();
    let glenda = ["glenda", "glenda", "glenda"];
    let t = 1_700_000_000;
    let x = x_bytes();
    put(
        &s,
        BlockType::DATA,
        &x[..8192],
        "c2bc083c8604dcd664a1c5c7fb47bb79dcfd8140",
    );
    put(
        &s,
        BlockType::DATA,
        &x[8192..],
        "1826cc9a28dd01f9fae11e11e2a71846ea83b234",
    );
    let ptr =
        unhex("c2bc083c8604dcd664a1c5c7fb47bb79dcfd8140 1826cc9a28dd01f9fae11e11e2a71846ea83b234");
    put(
        &s,
        BlockType::at_depth(BlockType::DATA, 1).unwrap(),
        &ptr,
        "63eb622ced2edadd6053896042e2642e679c7c04",
    );
    put(
        &s,
        BlockType::DIR,
        &entry(0x05, 10000, "63eb622ced2edadd6053896042e2642e679c7c04"),
        "ad5d499a13a8ca541677b872d4e226430c0c2423",
    );
    let x_entry = dirent8("x", 0, 3, glenda, t, 0o644, None);
    put(
        &s,
        BlockType::DATA,
        &metablock(&[x_entry]),
        "19738c73aceb9a50b277d5c41f67e9e4d9af117a",
    );
    put(
        &s,
        BlockType::DATA,
        b"hello, venti\n",
        "20f87bde04892e9ca0c2d880bbe284978c0d261f",
    );
    let d_stream = [
        entry(0x01, 13, "20f87bde04892e9ca0c2d880bbe284978c0d261f"),
        entry(0x03, 40, "ad5d499a13a8ca541677b872d4e226430c0c2423"),
        entry(0x01, 8192, "19738c73aceb9a50b277d5c41f67e9e4d9af117a"),
    ]
    .concat();
    put(
        &s,
        BlockType::DIR,
        &d_stream,
        "babf526b2b4d69fa04fb632decaa7309961b7f1e",
    );
    let m = metablock(&[
        dirent8("d", 1, 2, glenda, t, 0x81ed, None),
        dirent8("hello.txt", 0, 1, glenda, t, 0o644, None),
    ]);
    put(
        &s,
        BlockType::DATA,
        &m,
        "f5bd680d3afb2937925cff75d42da86715370f08",
    );
    let mr = metablock(&[dirent8("/", 0, 0, ["vac", "vac", ""], 0, 0x81ff, Some(4))]);
    put(
        &s,
        BlockType::DATA,
        &mr,
        "7a7c5a0fea4bfde369b296360e2c116dc26ee674",
    );
    let top = unhex(
        "000000001ff42000030000000000000000000078babf526b2b4d69fa04fb632decaa7309961b7f1e
         000000001ff42000010000000000000000002000f5bd680d3afb2937925cff75d42da86715370f08
         000000001ff420000100000000000000000020007a7c5a0fea4bfde369b296360e2c116dc26ee674",
    );
    put(
        &s,
        BlockType::DIR,
        &top,
        "f018803ca0017c313a395d1a66980a7c35742d23",
    );
    let root = unhex(&format!(
        "0002{}766163{}f018803ca0017c313a395d1a66980a7c35742d232000{}",
        "00".repeat(128),
        "00".repeat(125),
        "00".repeat(20)
    ));
    put(
        &s,
        BlockType::ROOT,
        &root,
        "e5b83eda5dbab14e0ad75448c4032489de467245",
    );
    (
        s,
        "e5b83eda5dbab14e0ad75448c4032489de467245".parse().unwrap(),
    )
}

#[test]
fn reads_the_plan9port_archive() {
    let (store, score) = plan9port_archive();
    let archive = vac::Archive::open(&store, &score).unwrap();
    assert_eq!(archive.root().dirent.elem, "/");
    assert_eq!(archive.root().dirent.qid_space, Some((0, 4)));

    let mut listing = Vec::new();
    vac::extract::list(&archive, archive.root(), "", true, &mut listing).unwrap();
    assert_eq!(
        String::from_utf8(listing).unwrap(),
        "drwxr-xr-x glenda glenda 0 2023-11-14 22:13 d\n\
         -rw-r--r-- glenda glenda 10000 2023-11-14 22:13 d/x\n\
         -rw-r--r-- glenda glenda 13 2023-11-14 22:13 hello.txt\n"
    );

    let x = archive.walk("d/x").unwrap();
    assert_eq!(x.dirent.qid, 3);
    let mut buf = vec![0u8; 10000];
    assert_eq!(
        archive.open_file(&x).unwrap().read_at(0, &mut buf).unwrap(),
        10000
    );
    assert_eq!(buf, x_bytes());
    let hello = archive.walk("/hello.txt").unwrap();
    assert_eq!(archive.read_small(&hello, 100).unwrap(), b"hello, venti\n");
    assert!(matches!(
        archive.walk("d/nope"),
        Err(vac::Error::NotFound(_))
    ));
}

#[test]
fn extracts_the_plan9port_archive() {
    let (store, score) = plan9port_archive();
    let archive = vac::Archive::open(&store, &score).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let options = vac::extract::ExtractOptions {
        owners: false,
        devices: false,
    };
    vac::extract::extract(
        &archive,
        archive.root(),
        dest.path(),
        options,
        &vac::walk::Quiet,
    )
    .unwrap();
    assert_eq!(std::fs::read(dest.path().join("d/x")).unwrap(), x_bytes());
    assert_eq!(
        std::fs::read(dest.path().join("hello.txt")).unwrap(),
        b"hello, venti\n"
    );
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dest.path().join("hello.txt")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o644, 1_700_000_000));
}

#[test]
fn reads_the_fossil_layout_through_its_one_entry() {
    // fossil's top block holds one entry whose stream is [D, M, MR] (§6.1, §11.13).
    let (store, _) = plan9port_archive();
    let inner = store
        .read(
            &"f018803ca0017c313a395d1a66980a7c35742d23".parse().unwrap(),
            BlockType::DIR,
        )
        .unwrap()
        .unwrap();
    let inner_score = store.write(BlockType::DIR, &inner).unwrap();
    let mut top = unhex("000000001fe02000030000000000000000000078");
    top.extend_from_slice(&inner_score.0);
    top.extend_from_slice(&unhex(
        "0000000000000000030000000000000000000000da39a3ee5e6b4b0d3255bfef95601890afd80709",
    ));
    let top_score = store.write(BlockType::DIR, &top).unwrap();
    let root = vac::root::Root {
        name: "fossil".into(),
        kind: "vac".into(),
        score: top_score,
        block_size: 8192,
        prev: Score::ZERO,
    };
    let root_score = store.write(BlockType::ROOT, &root.pack()).unwrap();
    let archive = vac::Archive::open(&store, &root_score).unwrap();
    assert_eq!(
        archive
            .read_small(&archive.walk("hello.txt").unwrap(), 100)
            .unwrap(),
        b"hello, venti\n"
    );
}
