//! VtEntry: the 40-byte description of a stream's hash tree (spec §5.1).
//!
//! ```text
//! gen[4] psize[2] dsize[2] flags[1] zero[5] size[6] score[20]
//! ```

use venti::{BlockType, Score};

use crate::error::{Error, Result};

pub const ENTRY_SIZE: usize = 40;

/// The smallest psize or dsize an active entry may claim (plan9port's checksize).
pub const MIN_BLOCK_SIZE: u32 = 256;
/// The largest: a venti block (plan9port's VtMaxLumpSize, 56 KiB).
pub const MAX_BLOCK_SIZE: u32 = venti::MAX_BLOCK_SIZE as u32;
/// The deepest tree a VtEntry can describe (its depth field has 3 bits).
pub const MAX_DEPTH: u8 = 7;

pub const FLAG_ACTIVE: u8 = 0x01;
const FLAG_DIR: u8 = 0x02;
const DEPTH_SHIFT: u8 = 2;
const DEPTH_MASK: u8 = 0x1c;
/// Fossil's "score is a local block address"; plan9port vac leaks it on
/// venti-resident entries, so readers ignore it and we never write it.
pub const FLAG_LOCAL: u8 = 0x20;
const FLAG_BIG: u8 = 0x40;
pub const FLAG_NO_ARCHIVE: u8 = 0x80;

/// A decoded VtEntry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub generation: u32,
    pub psize: u32,
    pub dsize: u32,
    /// Active and NoArchive only; the Dir, depth and Big bits live in other fields.
    pub flags: u8,
    pub depth: u8,
    /// A directory stream (base type 8) rather than data (base 0).
    pub dir: bool,
    pub size: u64,
    pub score: Score,
}

impl Entry {
    /// An active, empty stream.
    pub fn empty(psize: u32, dsize: u32, dir: bool) -> Entry {
        Entry {
            generation: 0,
            psize,
            dsize,
            flags: FLAG_ACTIVE,
            depth: 0,
            dir,
            size: 0,
            score: Score::ZERO,
        }
    }

    /// The all-zero inactive slot.
    pub fn inactive() -> Entry {
        Entry {
            generation: 0,
            psize: 0,
            dsize: 0,
            flags: 0,
            depth: 0,
            dir: false,
            size: 0,
            score: Score::ALL_ZEROS,
        }
    }

    pub fn is_active(&self) -> bool {
        self.flags & FLAG_ACTIVE != 0
    }

    /// The base type of the stream's leaves.
    pub fn base_type(&self) -> BlockType {
        if self.dir {
            BlockType::DIR
        } else {
            BlockType::DATA
        }
    }

    /// The type of the block `entry.score` names.
    ///
    /// # Panics
    /// If `depth > 7`, which [`Entry::unpack`] never returns (the field has
    /// 3 bits) and [`Entry::check_geometry`] refuses.
    pub fn top_type(&self) -> BlockType {
        BlockType::at_depth(self.base_type(), self.depth).expect("depth ≤ 7")
    }

    /// Checks that the stream's tree can be walked: at least 2 pointers per
    /// pointer block, blocks no larger than a venti block, a depth of at most
    /// 7 and at least what `size` needs (plan9port: "bad depth").
    ///
    /// Looser than [`Entry::unpack`] (which also wants sizes ≥ 256), so
    /// entries built in memory with small blocks stay readable.
    pub fn check_geometry(&self) -> Result<()> {
        let np = pointers_per_block(self.psize);
        if np < 2 || self.psize > MAX_BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "impossible stream geometry: psize {} holds {np} pointers \
                 (a pointer block needs 2 to {} scores)",
                self.psize,
                MAX_BLOCK_SIZE as usize / venti::SCORE_SIZE
            )));
        }
        if self.dsize == 0 || self.dsize > MAX_BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "impossible stream geometry: dsize {} is outside 1..={MAX_BLOCK_SIZE}",
                self.dsize
            )));
        }
        if self.depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "bad depth {} for a stream of {} bytes: deeper than {MAX_DEPTH}",
                self.depth, self.size
            )));
        }
        let need = depth_for(self.size, self.psize, self.dsize);
        if need > MAX_DEPTH as u32 {
            return Err(Error::corrupt(format!(
                "impossible stream geometry: {} bytes in {}-byte leaves needs a tree \
                 {need} levels deep with psize {}; a VtEntry holds at most {MAX_DEPTH}",
                self.size, self.dsize, self.psize
            )));
        }
        if (self.depth as u32) < need {
            return Err(Error::corrupt(format!(
                "bad depth {} for a stream of {} bytes (psize {}, dsize {}): it needs {need}",
                self.depth, self.size, self.psize, self.dsize
            )));
        }
        Ok(())
    }

    pub fn pack(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.generation.to_be_bytes());
        let big = self.psize > 0xffff || self.dsize > 0xffff;
        let (psize, dsize) = if big {
            (
                big_code(self.psize).unwrap_or(0),
                big_code(self.dsize).unwrap_or(0),
            )
        } else {
            (self.psize as u16, self.dsize as u16)
        };
        b[4..6].copy_from_slice(&psize.to_be_bytes());
        b[6..8].copy_from_slice(&dsize.to_be_bytes());
        let mut flags = self.flags & (FLAG_ACTIVE | FLAG_NO_ARCHIVE);
        if self.dir {
            flags |= FLAG_DIR;
        }
        flags |= (self.depth << DEPTH_SHIFT) & DEPTH_MASK;
        if big {
            flags |= FLAG_BIG;
        }
        b[8] = flags;
        b[14..20].copy_from_slice(&self.size.to_be_bytes()[2..]);
        b[20..40].copy_from_slice(&self.score.0);
        b
    }

    /// Decodes 40 bytes (shorter input is zero-extended, as a truncated
    /// directory leaf would be).
    pub fn unpack(bytes: &[u8]) -> Result<Entry> {
        let mut b = [0u8; ENTRY_SIZE];
        let n = bytes.len().min(ENTRY_SIZE);
        b[..n].copy_from_slice(&bytes[..n]);
        let flags = b[8];
        let raw_psize = u16::from_be_bytes([b[4], b[5]]);
        let raw_dsize = u16::from_be_bytes([b[6], b[7]]);
        let (mut psize, mut dsize) = if flags & FLAG_BIG != 0 {
            (from_big_code(raw_psize), from_big_code(raw_dsize))
        } else {
            (raw_psize as u32, raw_dsize as u32)
        };
        let mut size_bytes = [0u8; 8];
        size_bytes[2..].copy_from_slice(&b[14..20]);
        let score = Score::from_slice(&b[20..40]).expect("20 bytes");
        let entry_flags = flags & (FLAG_ACTIVE | FLAG_LOCAL | FLAG_NO_ARCHIVE);
        if entry_flags & FLAG_ACTIVE != 0 {
            // Old vac files wrote empty entries with zero sizes.
            if psize == 0 && dsize == 0 && score == Score::ZERO {
                psize = 4096;
                dsize = 4096;
            }
            // plan9port's checksize: 256 ≤ n ≤ VtMaxLumpSize. The upper bound
            // also keeps a crafted entry from sizing buffers past a block.
            for (what, n) in [("psize", psize), ("dsize", dsize)] {
                if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&n) {
                    return Err(Error::corrupt(format!(
                        "bad block size in entry: {what} {n} is outside \
                         {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE} (psize {psize}, dsize {dsize})"
                    )));
                }
            }
        }
        Ok(Entry {
            generation: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            psize,
            dsize,
            // Bit 0x20 is dropped: on a venti-resident entry it is plan9port's leak.
            flags: entry_flags & !FLAG_LOCAL,
            depth: (flags & DEPTH_MASK) >> DEPTH_SHIFT,
            dir: flags & FLAG_DIR != 0,
            size: u64::from_be_bytes(size_bytes),
            score,
        })
    }
}

/// `size = m << e` with `m < 2048`, coded as `(m << 5) | e` with the smallest
/// such `e` (libventi's choice: 65536 is 0x8006).
pub(crate) fn big_code(size: u32) -> Option<u16> {
    (0..32).find_map(|e| {
        let m = size >> e;
        (m < 2048 && m << e == size).then_some(((m << 5) | e) as u16)
    })
}

/// Decodes a big size; one past `u32` (a crafted code) saturates to
/// `u32::MAX`, which every size check refuses, instead of wrapping.
pub(crate) fn from_big_code(code: u16) -> u32 {
    let size = u64::from(code >> 5) << (code & 31);
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// Pointers per pointer block.
pub fn pointers_per_block(psize: u32) -> u64 {
    (psize / venti::SCORE_SIZE as u32) as u64
}

/// The least depth of a tree of `size` bytes (plan9port's sizetodepth);
/// `psize` must hold 2 pointers and `dsize` be non-zero.
pub fn depth_for(size: u64, psize: u32, dsize: u32) -> u32 {
    let np = pointers_per_block(psize).max(2);
    let mut n = size.div_ceil(u64::from(dsize.max(1)));
    let mut depth = 0;
    while n > 1 {
        n = n.div_ceil(np);
        depth += 1;
    }
    depth
}

/// Entries per directory-stream leaf.
pub fn entries_per_block(dsize: u32) -> u64 {
    (dsize / ENTRY_SIZE as u32) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        venti::hex::decode(s).expect("hex")
    }

    #[test]
    fn file_entry_spec_11_5() {
        let bytes = unhex(
            "000000001ff4200001000000000000000000000d20f87bde04892e9ca0c2d880bbe284978c0d261f",
        );
        let e = Entry::unpack(&bytes).unwrap();
        assert_eq!(
            (e.psize, e.dsize, e.depth, e.dir, e.size),
            (8180, 8192, 0, false, 13)
        );
        assert!(e.is_active());
        assert_eq!(
            e.score.to_string(),
            "20f87bde04892e9ca0c2d880bbe284978c0d261f"
        );
        assert_eq!(e.pack().to_vec(), bytes);
    }

    #[test]
    fn dir_entry_spec_11_5() {
        let bytes = unhex(
            "000000001ff42000030000000000000000000028ad5d499a13a8ca541677b872d4e226430c0c2423",
        );
        let e = Entry::unpack(&bytes).unwrap();
        assert!(e.dir && e.is_active());
        assert_eq!((e.size, e.top_type()), (40, BlockType::DIR));
        assert_eq!(e.pack().to_vec(), bytes);
    }

    #[test]
    fn depth_one_flags_and_the_leaked_local_bit() {
        let mut e = Entry::empty(8180, 8192, false);
        e.depth = 1;
        e.size = 10000;
        assert_eq!(e.pack()[8], 0x05);
        // plan9port vac writes 0x25; the Local bit is ignored on read.
        let mut leaked = e.pack();
        leaked[8] = 0x25;
        assert_eq!(Entry::unpack(&leaked).unwrap(), e);
    }

    #[test]
    fn big_sizes() {
        assert_eq!(big_code(65536), Some(0x8006));
        assert_eq!(big_code(131072), Some(0x8007));
        assert_eq!(from_big_code(0x8006), 65536);
        // Past 2^32 saturates (and is refused) instead of wrapping.
        assert_eq!(from_big_code((2047 << 5) | 31), u32::MAX);
        let mut e = Entry::empty(65536, 131072, false);
        e.size = 5;
        let packed = e.pack();
        assert_eq!(packed[8] & FLAG_BIG, FLAG_BIG);
        // Coded, but more than a venti block: refused on read, as plan9port does.
        let err = Entry::unpack(&packed).unwrap_err().to_string();
        assert!(err.contains("psize 65536 is outside 256..=57344"), "{err}");
        // A big code that decodes to a size in range reads back.
        let mut packed = Entry::empty(8180, 8192, false).pack();
        packed[4..6].copy_from_slice(&big_code(8180).unwrap().to_be_bytes());
        packed[6..8].copy_from_slice(&big_code(8192).unwrap().to_be_bytes());
        packed[8] |= FLAG_BIG;
        let back = Entry::unpack(&packed).unwrap();
        assert_eq!((back.psize, back.dsize), (8180, 8192));
    }

    #[test]
    fn bad_block_sizes_are_refused_for_active_entries_only() {
        let mut b = Entry::empty(8180, 8192, false).pack();
        b[4..6].copy_from_slice(&100u16.to_be_bytes());
        assert!(Entry::unpack(&b).is_err());
        assert_eq!(Entry::unpack(&[0; 40]).unwrap(), Entry::inactive());
        // Old vac's all-zero sizes with the zero score mean 4096/4096.
        let mut old = Entry::empty(0, 0, false).pack();
        old[4..8].fill(0);
        assert_eq!(Entry::unpack(&old).unwrap().dsize, 4096);
    }
}
