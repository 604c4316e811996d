//! MetaBlocks: the leaves of a directory's meta stream, each holding sorted
//! DirEntries (spec §6.3, §6.5).
//!
//! ```text
//! magic[4] size[2] free[2] maxindex[2] nindex[2] index[4*maxindex] bodies…
//! ```
//!
//! Two magics exist: vac's 0x5656fc79 sorts a proper prefix *after* the longer
//! name ("botched"), fossil's 0x5656fc7a sorts it before. We write fossil's, and
//! read both, searching each block with its own order.

use std::cmp::Ordering;

use crate::dirent::DirEntry;
use crate::error::{Error, Result};

pub const MAGIC_BOTCHED: u32 = 0x5656_fc79;
pub const MAGIC_CORRECT: u32 = 0x5656_fc7a;
const HEADER: usize = 12;

/// Index capacity a writer gives a block of `dsize` bytes.
pub fn max_index(dsize: usize) -> usize {
    dsize / 100
}

/// Packs `entries` (already sorted in correct order) into as many MetaBlocks
/// as needed, each `dsize` bytes before zero truncation; none for no entries.
/// An entry too big for a block of its own (a long name in small blocks) is
/// an error naming it.
pub fn pack(entries: &[DirEntry], dsize: usize) -> Result<Vec<Vec<u8>>> {
    let maxindex = max_index(dsize);
    let bodies_start = HEADER + 4 * maxindex;
    let mut blocks = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut used = bodies_start;
    let finish = |bodies: &mut Vec<Vec<u8>>| {
        let mut b = vec![0u8; dsize];
        let mut offset = bodies_start;
        for (i, body) in bodies.iter().enumerate() {
            let slot = HEADER + 4 * i;
            b[slot..slot + 2].copy_from_slice(&(offset as u16).to_be_bytes());
            b[slot + 2..slot + 4].copy_from_slice(&(body.len() as u16).to_be_bytes());
            b[offset..offset + body.len()].copy_from_slice(body);
            offset += body.len();
        }
        b[0..4].copy_from_slice(&MAGIC_CORRECT.to_be_bytes());
        b[4..6].copy_from_slice(&(offset as u16).to_be_bytes());
        b[6..8].copy_from_slice(&0u16.to_be_bytes());
        b[8..10].copy_from_slice(&(maxindex as u16).to_be_bytes());
        b[10..12].copy_from_slice(&(bodies.len() as u16).to_be_bytes());
        bodies.clear();
        b
    };
    for entry in entries {
        let body = entry.pack();
        if bodies_start + body.len() > dsize {
            return Err(Error::Invalid(format!(
                "{:?}: its directory entry takes {} bytes, more than a {dsize}-byte meta block holds \
                 ({} after its header): use a shorter name or a larger block size",
                entry.elem,
                body.len(),
                dsize.saturating_sub(bodies_start)
            )));
        }
        if !current.is_empty() && (current.len() == maxindex || used + body.len() > dsize) {
            blocks.push(finish(&mut current));
            used = bodies_start;
        }
        used += body.len();
        current.push(body);
    }
    if !current.is_empty() {
        blocks.push(finish(&mut current));
    }
    Ok(blocks)
}

/// Byte-wise name order: `a < ab < abc < b`.
pub fn cmp_correct(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

/// vac's order: byte-wise, but a proper prefix sorts after the longer name.
pub fn cmp_botched(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    match a[..n].cmp(&b[..n]) {
        Ordering::Equal => b.len().cmp(&a.len()),
        other => other,
    }
}

/// A validated view of one MetaBlock.
pub struct MetaBlock<'a> {
    block: &'a [u8],
    botched: bool,
    slots: Vec<(usize, usize)>,
}

impl<'a> MetaBlock<'a> {
    /// Checks the header and every used index slot.
    pub fn parse(block: &'a [u8], dsize: usize) -> Result<MetaBlock<'a>> {
        if block.len() < HEADER {
            return Err(Error::corrupt("MetaBlock is shorter than its header"));
        }
        let magic = u32::from_be_bytes(block[0..4].try_into().expect("4"));
        let botched = match magic {
            MAGIC_BOTCHED => true,
            MAGIC_CORRECT => false,
            _ => return Err(Error::corrupt(format!("bad MetaBlock magic {magic:#x}"))),
        };
        let size = u16::from_be_bytes([block[4], block[5]]) as usize;
        let maxindex = u16::from_be_bytes([block[8], block[9]]) as usize;
        let nindex = u16::from_be_bytes([block[10], block[11]]) as usize;
        let bodies_start = HEADER + 4 * maxindex;
        if size > dsize
            || dsize < bodies_start
            || nindex > maxindex
            || block.len() < size.min(bodies_start)
        {
            return Err(Error::corrupt("bad MetaBlock header"));
        }
        let mut slots = Vec::with_capacity(nindex);
        for i in 0..nindex {
            let s = HEADER + 4 * i;
            let slot = block.get(s..s + 4).unwrap_or(&[0, 0, 0, 0]);
            let offset = u16::from_be_bytes([slot[0], slot[1]]) as usize;
            let len = u16::from_be_bytes([slot[2], slot[3]]) as usize;
            if offset < bodies_start || offset + len > size || offset + len > block.len() || len < 8
            {
                return Err(Error::corrupt(format!("bad MetaBlock index slot {i}")));
            }
            let name = DirEntry::elem_of(&block[offset..offset + len])
                .ok_or_else(|| Error::corrupt(format!("bad DirEntry in MetaBlock slot {i}")))?;
            if len < 8 + name.len() {
                return Err(Error::corrupt(format!(
                    "bad DirEntry length in MetaBlock slot {i}"
                )));
            }
            slots.push((offset, len));
        }
        Ok(MetaBlock {
            block,
            botched,
            slots,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn body(&self, i: usize) -> &'a [u8] {
        let (offset, len) = self.slots[i];
        &self.block[offset..offset + len]
    }

    pub fn entry(&self, i: usize) -> Result<DirEntry> {
        DirEntry::unpack(self.body(i))
    }

    /// Binary search for `name` with the order this block's magic promises.
    pub fn lookup(&self, name: &str) -> Result<Option<DirEntry>> {
        let cmp = if self.botched {
            cmp_botched
        } else {
            cmp_correct
        };
        let (mut lo, mut hi) = (0, self.slots.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let elem = DirEntry::elem_of(self.body(mid)).expect("validated");
            match cmp(elem, name.as_bytes()) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return self.entry(mid).map(Some),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        venti::hex::decode(s).expect("hex")
    }

    fn named(name: &str) -> DirEntry {
        DirEntry {
            elem: name.into(),
            uid: "u".into(),
            gid: "g".into(),
            ..Default::default()
        }
    }

    #[test]
    fn metablock_spec_11_8() {
        let x = "1c4d9072 0008 0001 78 00000000 0000000000000003 0006 676c656e6461 0006 676c656e6461 0006 676c656e6461 6553f100 00000000 6553f100 6553f100 000001a4";
        let mut block = unhex(&format!(
            "5656fc79 0191 0000 0051 0001 0150 0041 {} {x}",
            "00000000".repeat(80)
        ));
        assert_eq!(block.len(), 401);
        assert_eq!(
            venti::Score::of(&block).to_string(),
            "19738c73aceb9a50b277d5c41f67e9e4d9af117a"
        );
        block.resize(8192, 0);
        let mb = MetaBlock::parse(&block, 8192).unwrap();
        assert_eq!(mb.len(), 1);
        assert_eq!(mb.lookup("x").unwrap().unwrap().qid, 3);
        assert!(mb.lookup("y").unwrap().is_none());
    }

    #[test]
    fn orderings_spec_11_9() {
        let mut botched = vec!["a", "ab", "abc", "b"];
        botched.sort_by(|a, b| cmp_botched(a.as_bytes(), b.as_bytes()));
        assert_eq!(botched, ["abc", "ab", "a", "b"]);
        let mut correct = vec!["b", "abc", "a", "ab"];
        correct.sort_by(|a, b| cmp_correct(a.as_bytes(), b.as_bytes()));
        assert_eq!(correct, ["a", "ab", "abc", "b"]);
    }

    #[test]
    fn lookup_in_a_botched_block() {
        // Build a vac-style block by hand: entries in botched order.
        let names = ["abc", "ab", "a", "b"];
        let mut entries: Vec<DirEntry> = names.iter().map(|n| named(n)).collect();
        for (i, e) in entries.iter_mut().enumerate() {
            e.qid = i as u64;
        }
        let mut block = pack(&entries, 8192).unwrap().remove(0);
        block[0..4].copy_from_slice(&MAGIC_BOTCHED.to_be_bytes());
        let mb = MetaBlock::parse(&block, 8192).unwrap();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(mb.lookup(n).unwrap().unwrap().qid, i as u64, "{n}");
        }
    }

    #[test]
    fn packing_splits_into_blocks_and_every_name_is_found() {
        let mut entries: Vec<DirEntry> = (0..500).map(|i| named(&format!("file-{i:04}"))).collect();
        entries.sort_by(|a, b| a.elem.cmp(&b.elem));
        let blocks = pack(&entries, 8192).unwrap();
        assert!(blocks.len() >= 7, "81 entries per block at most");
        let mut found = 0;
        for b in &blocks {
            let mb = MetaBlock::parse(b, 8192).unwrap();
            for i in 0..mb.len() {
                let e = mb.entry(i).unwrap();
                assert_eq!(mb.lookup(&e.elem).unwrap().unwrap(), e);
                found += 1;
            }
        }
        assert_eq!(found, 500);
    }

    #[test]
    fn corrupt_blocks_are_refused() {
        let block = pack(&[named("a")], 8192).unwrap().remove(0);
        let mut bad = block.clone();
        bad[0] = 0;
        assert!(MetaBlock::parse(&bad, 8192).is_err());
        let mut bad = block.clone();
        bad[12..14].copy_from_slice(&9000u16.to_be_bytes());
        assert!(MetaBlock::parse(&bad, 8192).is_err());
        assert!(MetaBlock::parse(&block[..5], 8192).is_err());
        // A block truncated by zero truncation is still fine when parsed extended.
        let stored = &block[..venti::zero::truncated_len(venti::BlockType::DATA, &block)];
        let mut extended = stored.to_vec();
        extended.resize(8192, 0);
        assert!(MetaBlock::parse(&extended, 8192).is_ok());
    }
}
