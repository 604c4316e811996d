//! Scores: the SHA-1 names of venti blocks (spec §1).

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

/// What a refusal of a block carrying a collision attack says, also over
/// the venti protocol (whose errors are text).
pub const COLLISION_REFUSAL: &str = "its bytes carry a SHA-1 collision attack";

/// A block whose bytes carry a SHA-1 collision attack, named by its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collision(pub Score);

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} refused: {COLLISION_REFUSAL} (made to share its score with different bytes)",
            self.0
        )
    }
}

impl std::error::Error for Collision {}

/// Length of a score in bytes.
pub const SCORE_SIZE: usize = 20;

/// The SHA-1 digest of a block's stored (zero-truncated) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Score(pub [u8; SCORE_SIZE]);

impl Score {
    /// `vtzeroscore`: the SHA-1 of the empty block. Every empty block, and every
    /// all-zero file, is named by it.
    pub const ZERO: Score = Score([
        0xda, 0x39, 0xa3, 0xee, 0x5e, 0x6b, 0x4b, 0x0d, 0x32, 0x55, 0xbf, 0xef, 0x95, 0x60, 0x18,
        0x90, 0xaf, 0xd8, 0x07, 0x09,
    ]);

    /// The all-zero-bytes value, a different "zero score" used by the venti server
    /// internally and as the `prev` of a fresh vac root. Never confuse it with [`Score::ZERO`].
    pub const ALL_ZEROS: Score = Score([0; SCORE_SIZE]);

    /// Hashes `data` exactly as given (callers truncate first, see [`crate::zero`]).
    /// For checking a block against its name; a block being stored for the
    /// first time is hashed by [`Score::of_new`].
    pub fn of(data: &[u8]) -> Score {
        Score(Sha1::digest(data).into())
    }

    /// As [`Score::of`], for a block about to be stored: with git's SHA-1
    /// collision detection (sha1dc), so that a block crafted to share its
    /// score with a different one (SHAttered, SHA-mbles and any attack of
    /// their kind) is refused instead of stored. The score is the block's
    /// true SHA-1 either way; an error carries it, to name the block.
    pub fn of_new(data: &[u8]) -> Result<Score, Collision> {
        let mut hasher = sha1collisiondetection::Sha1CD::configure()
            .safe_hash(false)
            .build();
        hasher.update(data);
        let mut digest = sha1collisiondetection::Output::default();
        let attacked = hasher.finalize_into_dirty_cd(&mut digest).is_err();
        let score = Score(digest.into());
        if attacked {
            return Err(Collision(score));
        }
        Ok(score)
    }

    /// True for either zero score: both name the empty block.
    pub fn is_zero(&self) -> bool {
        *self == Score::ZERO || *self == Score::ALL_ZEROS
    }

    pub fn as_bytes(&self) -> &[u8; SCORE_SIZE] {
        &self.0
    }

    /// Reads a score from the first 20 bytes of `bytes`, which must be at least that long.
    pub fn from_slice(bytes: &[u8]) -> Option<Score> {
        bytes
            .get(..SCORE_SIZE)
            .map(|b| Score(b.try_into().expect("length checked")))
    }

    /// Parses `[label:]HEX` as Plan 9 does: the label is everything before the first `:`.
    /// Returns the label (if any) and the score.
    pub fn parse_labeled(text: &str) -> Result<(Option<&str>, Score), ScoreParseError> {
        match text.split_once(':') {
            Some((label, hex)) => Ok((Some(label), hex.parse()?)),
            None => Ok((None, text.parse()?)),
        }
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Score({self})")
    }
}

/// Why a text is not a score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreParseError {
    #[error("a score is 40 hex digits, got {0} characters")]
    Length(usize),
    #[error("a score is 40 hex digits, found {0:?}")]
    NotHex(char),
}

impl FromStr for Score {
    type Err = ScoreParseError;

    /// Parses exactly 40 hex digits of either case. Unlike plan9port, letters past `f`
    /// are rejected.
    fn from_str(hex: &str) -> Result<Self, Self::Err> {
        if hex.len() != 2 * SCORE_SIZE {
            return Err(ScoreParseError::Length(hex.chars().count()));
        }
        let mut out = [0u8; SCORE_SIZE];
        for (i, c) in hex.chars().enumerate() {
            let nibble = c.to_digit(16).ok_or(ScoreParseError::NotHex(c))? as u8;
            out[i / 2] |= nibble << if i % 2 == 0 { 4 } else { 0 };
        }
        Ok(Score(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Score {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_blocks_score_is_its_plain_sha1() {
        for len in [0usize, 1, 55, 56, 64, 100, 8192, 57344] {
            let data: Vec<u8> = (0..len).map(|i| (i * 131 + i / 7 + len) as u8).collect();
            assert_eq!(Score::of_new(&data), Ok(Score::of(&data)), "{len} bytes");
        }
    }

    #[test]
    fn spec_vectors_11_1() {
        assert_eq!(Score::of(b""), Score::ZERO);
        assert_eq!(
            Score::ZERO.to_string(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            Score::of(b"hello world"),
            hex("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")
        );
        assert_eq!(
            Score::of(b"abc"),
            hex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            Score::of(b"abc\0\0\0"),
            hex("3d66e677c33fa7629c37820ef110ff67a644e4df")
        );
        assert_eq!(
            Score::of(b"hello, venti\n"),
            hex("20f87bde04892e9ca0c2d880bbe284978c0d261f")
        );
        assert_eq!(
            Score::of(b"xx"),
            hex("dd7b7b74ea160e049dd128478e074ce47254bde8")
        );
    }

    #[test]
    fn parses_either_case_and_prints_lowercase() {
        let s = hex("2AAE6C35C94FCFB415DBE95F408B9CE91EE846ED");
        assert_eq!(s.to_string(), "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed");
    }

    #[test]
    fn rejects_letters_past_f_and_wrong_lengths() {
        assert_eq!(
            "g".repeat(40).parse::<Score>(),
            Err(ScoreParseError::NotHex('g'))
        );
        assert_eq!("abc".parse::<Score>(), Err(ScoreParseError::Length(3)));
        assert!("".parse::<Score>().is_err());
        // A multi-byte character must not be sliced in half.
        assert!(format!("{}é", "a".repeat(38)).parse::<Score>().is_err());
    }

    #[test]
    fn label_is_everything_before_the_first_colon() {
        let (label, score) =
            Score::parse_labeled("vac:e5b83eda5dbab14e0ad75448c4032489de467245").unwrap();
        assert_eq!(label, Some("vac"));
        assert_eq!(score, hex("e5b83eda5dbab14e0ad75448c4032489de467245"));
        assert!(Score::parse_labeled("a:b:e5b83eda5dbab14e0ad75448c4032489de467245").is_err());
        assert_eq!(
            Score::parse_labeled("e5b83eda5dbab14e0ad75448c4032489de467245")
                .unwrap()
                .0,
            None
        );
    }

    #[test]
    fn both_zero_scores_are_zero() {
        assert!(Score::ZERO.is_zero());
        assert!(Score::ALL_ZEROS.is_zero());
        assert!(!Score::of(b"x").is_zero());
    }
}
