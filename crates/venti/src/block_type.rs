//! Block types: the logical numbering used by the libventi API and the vac
//! format, and the older wire/disk numbering sent in Tread/Twrite (spec §2).

use std::fmt;

/// A logical block type (0..=16). Construct with the constants or [`BlockType::new`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockType(u8);

impl BlockType {
    /// Leaf data block.
    pub const DATA: BlockType = BlockType(0);
    /// Leaf of a directory stream: packed 40-byte VtEntries.
    pub const DIR: BlockType = BlockType(8);
    /// A 300-byte VtRoot.
    pub const ROOT: BlockType = BlockType(16);
    /// Pointer depth mask: `type & 7` is the level in the hash tree.
    pub const DEPTH_MASK: u8 = 7;

    /// Accepts 0..=16; anything else is not a block type.
    pub fn new(value: u8) -> Option<BlockType> {
        (value <= 16).then_some(BlockType(value))
    }

    /// A pointer block at `depth` (1..=7) above `base` (DATA or DIR), or the leaf itself for depth 0.
    pub fn at_depth(base: BlockType, depth: u8) -> Option<BlockType> {
        if base != BlockType::DATA && base != BlockType::DIR || depth > 7 {
            return None;
        }
        Some(BlockType(base.0 + depth))
    }

    pub fn value(self) -> u8 {
        self.0
    }

    /// Pointer depth: 0 for leaves and roots.
    pub fn depth(self) -> u8 {
        if self == BlockType::ROOT {
            0
        } else {
            self.0 & Self::DEPTH_MASK
        }
    }

    /// True for pointer blocks (depth ≥ 1), whose zero truncation works on 20-byte slots.
    pub fn is_pointer(self) -> bool {
        self.depth() != 0
    }

    /// The wire/disk type (`vttodisktype`): data 13, dir 2, root 1, pointers of
    /// level n (of either base) 2+n.
    pub fn to_wire(self) -> u8 {
        match self.0 {
            0 => 13,
            8 => 2,
            16 => 1,
            n => 2 + (n & Self::DEPTH_MASK),
        }
    }

    /// The logical type for a wire type (`vtfromdisktype`), or `None` for the
    /// types plan9port maps to "corrupt" (0, 10, 11, 12, ≥ 14). Pointer types
    /// always come back as directory pointers, as in plan9port.
    pub fn from_wire(wire: u8) -> Option<BlockType> {
        match wire {
            1 => Some(BlockType::ROOT),
            2 => Some(BlockType::DIR),
            3..=9 => Some(BlockType(8 + wire - 2)),
            13 => Some(BlockType::DATA),
            _ => None,
        }
    }
}

impl fmt::Display for BlockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for BlockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockType({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_to_wire_spec_11_3() {
        let pairs = [(0, 13), (1, 3), (7, 9), (8, 2), (9, 3), (15, 9), (16, 1)];
        for (logical, wire) in pairs {
            assert_eq!(
                BlockType::new(logical).unwrap().to_wire(),
                wire,
                "logical {logical}"
            );
        }
    }

    #[test]
    fn wire_to_logical_spec_11_3() {
        assert_eq!(BlockType::from_wire(0), None);
        assert_eq!(BlockType::from_wire(3), BlockType::new(9));
        assert_eq!(BlockType::from_wire(9), BlockType::new(15));
        assert_eq!(BlockType::from_wire(10), None);
        assert_eq!(BlockType::from_wire(12), None);
        assert_eq!(BlockType::from_wire(13), Some(BlockType::DATA));
        assert_eq!(BlockType::from_wire(14), None);
        assert_eq!(BlockType::from_wire(255), None);
    }

    #[test]
    fn every_logical_type_survives_the_wire_up_to_pointer_base() {
        for v in 0..=16 {
            let t = BlockType::new(v).unwrap();
            let back = BlockType::from_wire(t.to_wire()).unwrap();
            assert_eq!(back.to_wire(), t.to_wire());
            assert_eq!(back.depth(), t.depth());
        }
        assert_eq!(BlockType::new(17), None);
    }
}
