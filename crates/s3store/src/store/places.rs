//! Where each block is in the bucket: the place reads use, and every
//! other pack that holds it too.
//!
//! Most blocks are in one pack. Some are in several: two writers stored
//! the same block, a block written again in an old pack was stored again
//! (a copy forward), a collection copied a live block out of a pack it was
//! about to delete. The others are kept so that when a pack goes, each of
//! its blocks falls back to a pack still there, whatever order the packs
//! were learnt in; a block is forgotten only with its last pack.

use std::collections::{HashMap, HashSet};

use venti::Score;

use super::Loc;

#[derive(Default)]
pub(super) struct Places {
    /// The place reads use: the newest learnt.
    read_from: HashMap<Score, Loc>,
    /// Every other place, for the blocks that have one.
    others: HashMap<Score, Vec<Loc>>,
}

impl Places {
    pub(super) fn len(&self) -> usize {
        self.read_from.len()
    }

    pub(super) fn get(&self, score: &Score) -> Option<&Loc> {
        self.read_from.get(score)
    }

    /// Adds a place of `score`; true if the block had one already.
    pub(super) fn insert(&mut self, score: Score, loc: Loc) -> bool {
        match self.read_from.insert(score, loc) {
            Some(earlier) if earlier.pack != loc.pack => {
                self.others.entry(score).or_default().push(earlier);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Forgets every place in `gone`: a block read from one of them is read
    /// from another place it has, if any, else forgotten. Returns the
    /// blocks forgotten.
    pub(super) fn forget(&mut self, gone: &HashSet<u32>) -> usize {
        let mut forgotten = 0;
        self.others.retain(|_, o| {
            o.retain(|l| !gone.contains(&l.pack));
            !o.is_empty()
        });
        let others = &mut self.others;
        self.read_from.retain(|score, l| {
            if !gone.contains(&l.pack) {
                return true;
            }
            match others.get_mut(score).and_then(|o| o.pop()) {
                Some(next) => {
                    *l = next;
                    if others.get(score).is_some_and(Vec::is_empty) {
                        others.remove(score);
                    }
                    true
                }
                None => {
                    forgotten += 1;
                    false
                }
            }
        });
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pack: u32) -> Loc {
        Loc {
            pack,
            ty: 0,
            offset: 8,
            len: 1,
        }
    }

    /// The loss a review found: a block in an old pack and in its copy
    /// forward, learnt old pack last (a restart reads its index copies in
    /// directory order), then the old pack deleted. The block must stay,
    /// read from the copy.
    #[test]
    fn a_block_falls_back_to_another_pack_when_the_one_read_from_goes() {
        let s = Score::of(b"block");
        for order in [[1, 2], [2, 1]] {
            let mut places = Places::default();
            assert!(!places.insert(s, at(order[0])));
            assert!(places.insert(s, at(order[1])));
            assert_eq!(places.get(&s).map(|l| l.pack), Some(order[1]));
            assert_eq!(places.forget(&HashSet::from([1])), 0);
            assert_eq!(places.get(&s).map(|l| l.pack), Some(2), "{order:?}");
            assert_eq!(places.forget(&HashSet::from([2])), 1);
            assert!(places.get(&s).is_none());
            assert!(places.others.is_empty());
        }
    }

    #[test]
    fn packs_gone_together_take_only_what_is_nowhere_else() {
        let (a, b, c) = (Score::of(b"a"), Score::of(b"b"), Score::of(b"c"));
        let mut places = Places::default();
        places.insert(a, at(1));
        places.insert(a, at(2));
        places.insert(a, at(3));
        places.insert(b, at(1));
        places.insert(c, at(4));
        // The same place learnt twice is one place.
        assert!(places.insert(c, at(4)));
        assert_eq!(places.forget(&HashSet::from([1, 3])), 1);
        assert_eq!(places.get(&a).map(|l| l.pack), Some(2));
        assert!(places.get(&b).is_none());
        assert_eq!(places.get(&c).map(|l| l.pack), Some(4));
        assert_eq!(places.forget(&HashSet::from([4])), 1);
        assert_eq!(places.len(), 1);
    }
}
