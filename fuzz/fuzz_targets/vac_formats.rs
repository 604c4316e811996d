//! The vac formats: VtEntry (vac::entry), VtRoot (vac::root), DirEntry
//! (vac::dirent) and MetaBlock (vac::metablock). Decoders never panic, and
//! what they decode packs and unpacks to the same value (modulo what the
//! packers document they drop: DirEntry's Plan9 option, root text that is
//! not UTF-8). A MetaBlock's entries repacked with metablock::pack parse back
//! as the same entries, and every lookup of a listed name succeeds in a
//! repacked (sorted) block.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vac::dirent::DirEntry;
use vac::entry::{ENTRY_SIZE, Entry};
use vac::metablock::{self, MetaBlock};
use vac::root::{ROOT_SIZE, Root};
use venti::Score;

fn check_entry(bytes: &[u8]) {
    let Ok(e) = Entry::unpack(bytes) else { return };
    let _ = e.base_type();
    let _ = e.top_type();
    let packed = e.pack();
    let again = Entry::unpack(&packed).expect("a packed entry unpacks");
    if e.is_active() {
        assert_eq!(again, e, "entry round trip");
        assert_eq!(again.pack(), packed);
    } else {
        // An inactive slot's sizes are not checked, and a crafted big code
        // saturates to u32::MAX, which pack cannot write: compare the rest.
        assert_eq!(
            Entry {
                psize: 0,
                dsize: 0,
                ..again
            },
            Entry {
                psize: 0,
                dsize: 0,
                ..e
            },
            "inactive entry round trip"
        );
    }
}

fn check_built_entry(u: &mut Unstructured) -> arbitrary::Result<()> {
    let pick = |u: &mut Unstructured| -> arbitrary::Result<u32> {
        Ok(match u.int_in_range(0..=2u8)? {
            0 => u.int_in_range(256..=65535u32)?,
            // Representable big sizes: m << e with m < 2048.
            1 => u.int_in_range(1..=2047u32)? << u.int_in_range(0..=20u32)?,
            _ => u.arbitrary()?,
        })
    };
    let e = Entry {
        generation: u.arbitrary()?,
        psize: pick(u)?,
        dsize: pick(u)?,
        flags: u.arbitrary::<u8>()? & (vac::entry::FLAG_ACTIVE | vac::entry::FLAG_NO_ARCHIVE),
        depth: u.int_in_range(0..=7u8)?,
        dir: u.arbitrary()?,
        size: u.arbitrary::<u64>()? & ((1 << 48) - 1),
        score: Score(u.arbitrary()?),
    };
    let big = e.psize > 0xffff || e.dsize > 0xffff;
    let repr = |v: u32| (0..32).any(|s| (v >> s) < 2048 && ((v >> s) << s) == v);
    let fits = !big || (repr(e.psize) && repr(e.dsize));
    // Active entries need block sizes a store can hold (256..=MAX_BLOCK_SIZE).
    let block = 256..=venti::MAX_BLOCK_SIZE as u32;
    let ok_sizes = !e.is_active() || (block.contains(&e.psize) && block.contains(&e.dsize));
    if fits && ok_sizes {
        // The "old vac" rule rewrites an active 0/0 entry over the zero score; not reachable here.
        let got = Entry::unpack(&e.pack()).expect("a valid entry packs and unpacks");
        assert_eq!(got, e, "built entry round trip");
    } else {
        let _ = Entry::unpack(&e.pack());
    }
    Ok(())
}

fn check_root(bytes: &[u8]) {
    let mut b = bytes.to_vec();
    b.resize(ROOT_SIZE, 0);
    for input in [bytes, &b[..]] {
        let Ok(r) = Root::unpack(input) else { continue };
        assert!(r.block_size >= 256);
        let packed = r.pack();
        let again = Root::unpack(&packed).expect("a packed root unpacks");
        assert_eq!(again.score, r.score);
        assert_eq!(again.prev, r.prev);
        assert_eq!(again.block_size, r.block_size);
        let text_ok = |f: &[u8]| {
            let f = &f[..f.len() - 1];
            let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
            std::str::from_utf8(&f[..end]).is_ok()
        };
        if text_ok(&input[2..130]) {
            assert_eq!(again.name, r.name);
        }
        if text_ok(&input[130..258]) {
            assert_eq!(again.kind, r.kind);
        }
    }
}

/// What DirEntry::pack keeps of a decoded entry: it writes version 9 and no
/// Plan9 option.
fn normalized(d: &DirEntry) -> DirEntry {
    DirEntry {
        plan9: None,
        ..d.clone()
    }
}

fn check_dirent(bytes: &[u8]) {
    let Ok(d) = DirEntry::unpack(bytes) else {
        return;
    };
    let packed = d.pack();
    let again = DirEntry::unpack(&packed).expect("a packed DirEntry unpacks");
    assert_eq!(again, normalized(&d), "DirEntry round trip");
    let _ = d.is_dir();
    let _ = vac::unix::Meta::from_dirent(&d, bytes);
}

fn check_metablock(bytes: &[u8], dsize: usize) {
    let Ok(mb) = MetaBlock::parse(bytes, dsize) else {
        return;
    };
    let mut entries = Vec::new();
    for i in 0..mb.len() {
        if let Ok(d) = mb.entry(i) {
            let _ = mb.lookup(&d.elem);
            entries.push(normalized(&d));
        }
    }
    let _ = mb.lookup("");
    let _ = mb.lookup("a");
    // Repack (sorted, as the writers do) if each entry fits a block the way
    // metablock::pack lays it out.
    let room = dsize.saturating_sub(12 + 4 * metablock::max_index(dsize));
    if metablock::max_index(dsize) == 0 || entries.iter().any(|d| d.pack().len() > room) {
        return;
    }
    entries.sort_by(|a, b| metablock::cmp_correct(a.elem.as_bytes(), b.elem.as_bytes()));
    let blocks = metablock::pack(&entries, dsize).expect("entries that each fit a block pack");
    let mut back = Vec::new();
    for b in &blocks {
        assert_eq!(b.len(), dsize);
        let mb = MetaBlock::parse(b, dsize).expect("a packed MetaBlock parses");
        for i in 0..mb.len() {
            let d = mb.entry(i).expect("a packed DirEntry unpacks");
            let found = mb
                .lookup(&d.elem)
                .expect("lookup in a packed block")
                .expect("a listed name is found in a sorted block");
            assert_eq!(found.elem, d.elem);
            back.push(d);
        }
    }
    assert_eq!(back, entries, "MetaBlock repack round trip");
}

fn check_built_dirent(u: &mut Unstructured) -> arbitrary::Result<()> {
    let d = DirEntry {
        elem: u.arbitrary()?,
        entry: u.arbitrary()?,
        generation: u.arbitrary()?,
        mentry: u.arbitrary()?,
        mgen: u.arbitrary()?,
        qid: u.arbitrary()?,
        uid: u.arbitrary()?,
        gid: u.arbitrary()?,
        mid: u.arbitrary()?,
        mtime: u.arbitrary()?,
        mcount: u.arbitrary()?,
        ctime: u.arbitrary()?,
        atime: u.arbitrary()?,
        mode: u.arbitrary()?,
        plan9: None,
        qid_space: u.arbitrary()?,
    };
    let got = DirEntry::unpack(&d.pack()).expect("a built DirEntry packs and unpacks");
    assert_eq!(got, d);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    check_entry(data);
    if data.len() > ENTRY_SIZE {
        check_entry(&data[ENTRY_SIZE..]);
    }
    check_root(data);
    check_dirent(data);
    // A MetaBlock in the rest of the input, under a block size from its first two bytes.
    if data.len() >= 2 {
        let dsize = u16::from_be_bytes([data[0], data[1]]) as usize;
        let block = &data[2..];
        check_metablock(block, dsize);
        let mut full = block.to_vec();
        full.resize(dsize.max(block.len()), 0);
        check_metablock(&full, full.len());
    }
    let mut u = Unstructured::new(data);
    let _ = check_built_entry(&mut u);
    let _ = check_built_dirent(&mut u);
});
