//! VtRoot (spec §5.2) and the `vac:HEX` text and `.vac` file that name one (§6.7).

use std::path::Path;

use venti::Score;

use crate::error::{Error, Result};

pub const ROOT_SIZE: usize = 300;
const ROOT_VERSION: u16 = 2;
const ROOT_VERSION_BIG: u16 = 0x8000;

/// A decoded VtRoot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub name: String,
    pub kind: String,
    /// The root directory block (type 8).
    pub score: Score,
    pub block_size: u32,
    /// The previous root of the series, or all zero bytes.
    pub prev: Score,
}

impl Root {
    pub fn pack(&self) -> [u8; ROOT_SIZE] {
        let mut b = [0u8; ROOT_SIZE];
        let (version, bsize) = match u16::try_from(self.block_size) {
            Ok(bs) => (ROOT_VERSION, bs),
            Err(_) => (
                ROOT_VERSION | ROOT_VERSION_BIG,
                crate::entry::big_code(self.block_size).unwrap_or(0),
            ),
        };
        b[0..2].copy_from_slice(&version.to_be_bytes());
        put_text(&mut b[2..130], &self.name);
        put_text(&mut b[130..258], &self.kind);
        b[258..278].copy_from_slice(&self.score.0);
        b[278..280].copy_from_slice(&bsize.to_be_bytes());
        b[280..300].copy_from_slice(&self.prev.0);
        b
    }

    pub fn unpack(bytes: &[u8]) -> Result<Root> {
        if bytes.len() != ROOT_SIZE {
            return Err(Error::corrupt(format!(
                "root block is {} bytes, not {ROOT_SIZE}",
                bytes.len()
            )));
        }
        let version = u16::from_be_bytes([bytes[0], bytes[1]]);
        if version & !ROOT_VERSION_BIG != ROOT_VERSION {
            return Err(Error::corrupt(format!("unknown root version {version}")));
        }
        let raw = u16::from_be_bytes([bytes[278], bytes[279]]);
        let block_size = if version & ROOT_VERSION_BIG != 0 {
            crate::entry::from_big_code(raw)
        } else {
            raw as u32
        };
        // plan9port's checksize, as for entries; readers (and fossil) size
        // buffers from it, so a crafted root must not claim more than a block.
        if !(crate::entry::MIN_BLOCK_SIZE..=crate::entry::MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::corrupt(format!(
                "root block size {block_size} is outside {}..={}",
                crate::entry::MIN_BLOCK_SIZE,
                crate::entry::MAX_BLOCK_SIZE
            )));
        }
        Ok(Root {
            name: get_text(&bytes[2..130]),
            kind: get_text(&bytes[130..258]),
            score: Score::from_slice(&bytes[258..278]).expect("20 bytes"),
            block_size,
            prev: Score::from_slice(&bytes[280..300]).expect("20 bytes"),
        })
    }
}

fn put_text(field: &mut [u8], text: &str) {
    // The last byte stays NUL.
    let n = text.len().min(field.len() - 1);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

fn get_text(field: &[u8]) -> String {
    let field = &field[..field.len() - 1];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Formats a root score as plan9port prints it: `vac:` and 40 hex digits.
pub fn format_vac(score: &Score) -> String {
    format!("vac:{score}")
}

/// Parses `vac:HEX`. A bare score is refused, as plan9port refuses it, unless
/// `allow_bare` is set.
pub fn parse_vac(text: &str, allow_bare: bool) -> Result<Score> {
    let text = text.trim();
    let not_vac = || {
        Error::Invalid(format!(
            "{text:?} is not a vac score (expected vac:<40 hex digits>)"
        ))
    };
    match Score::parse_labeled(text) {
        Ok((Some("vac"), score)) => Ok(score),
        Ok((None, score)) if allow_bare => Ok(score),
        _ => Err(not_vac()),
    }
}

/// Resolves a command-line argument naming an archive: `vac:HEX`, a bare score,
/// or a `.vac` file whose first 44 bytes are `vac:HEX`.
pub fn resolve_root_arg(arg: &str) -> Result<Score> {
    if let Ok(score) = parse_vac(arg, true) {
        return Ok(score);
    }
    let path = Path::new(arg);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 44 {
        return Err(Error::Invalid(format!("{arg}: not a vac file (too short)")));
    }
    let head = std::str::from_utf8(&bytes[..44])
        .map_err(|_| Error::Invalid(format!("{arg}: not a vac file")))?;
    parse_vac(head, false).map_err(|_| Error::Invalid(format!("{arg}: not a vac file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        venti::hex::decode(s).expect("hex")
    }

    #[test]
    fn root_spec_11_6() {
        let hex = format!(
            "0002{}766163{}f018803ca0017c313a395d1a66980a7c35742d232000{}",
            "00".repeat(128),
            "00".repeat(125),
            "00".repeat(20)
        );
        let bytes = unhex(&hex);
        assert_eq!(
            Score::of(&bytes).to_string(),
            "e5b83eda5dbab14e0ad75448c4032489de467245"
        );
        let root = Root::unpack(&bytes).unwrap();
        assert_eq!(root.kind, "vac");
        assert_eq!(root.name, "");
        assert_eq!(root.block_size, 8192);
        assert_eq!(root.prev, Score::ALL_ZEROS);
        assert_eq!(
            root.score.to_string(),
            "f018803ca0017c313a395d1a66980a7c35742d23"
        );
        assert_eq!(root.pack().to_vec(), bytes);
    }

    #[test]
    fn bad_roots() {
        assert!(Root::unpack(&[0; 299]).is_err());
        let mut b = [0u8; ROOT_SIZE];
        b[1] = 3;
        assert!(Root::unpack(&b).is_err());
        b[1] = 2;
        assert!(Root::unpack(&b).is_err(), "block size 0");
    }

    #[test]
    fn vac_strings_and_files() {
        let s = "vac:e5b83eda5dbab14e0ad75448c4032489de467245";
        let score = parse_vac(s, false).unwrap();
        assert_eq!(format_vac(&score), s);
        assert!(parse_vac("e5b83eda5dbab14e0ad75448c4032489de467245", false).is_err());
        assert!(parse_vac("ffs:e5b83eda5dbab14e0ad75448c4032489de467245", true).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.vac");
        std::fs::write(&f, format!("{s}\n")).unwrap();
        assert_eq!(resolve_root_arg(f.to_str().unwrap()).unwrap(), score);
        std::fs::write(&f, "vac:e5b8\n").unwrap();
        assert!(
            resolve_root_arg(f.to_str().unwrap())
                .unwrap_err()
                .to_string()
                .contains("not a vac file")
        );
    }
}
