//! VtEntry: the 40-byte description of a stream's hash tree (spec §5.1).
//!
//! ```text
//! gen[4] psize[2] dsize[2] flags[1] zero[5] size[6] score[20]
//! ```

use venti::{BlockType, Score};

use crate::error::{Error, Result};

pub const ENTRY_SIZE: usize = 40;

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
    pub fn top_type(&self) -> BlockType {
        BlockType::at_depth(self.base_type(), self.depth).expect("depth ≤ 7")
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
            if psize < 256 || dsize < 256 {
                return Err(Error::corrupt(format!(
                    "bad block size in entry (psize {psize}, dsize {dsize})"
                )));
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

pub(crate) fn from_big_code(code: u16) -> u32 {
    ((code >> 5) as u32)
        .checked_shl((code & 31) as u32)
        .unwrap_or(0)
}

/// Pointers per pointer block.
pub fn pointers_per_block(psize: u32) -> u64 {
    (psize / venti::SCORE_SIZE as u32) as u64
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
        let mut e = Entry::empty(65536, 131072, false);
        e.size = 5;
        let packed = e.pack();
        assert_eq!(packed[8] & FLAG_BIG, FLAG_BIG);
        assert_eq!(Entry::unpack(&packed).unwrap(), e);
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
