//! Archiving a tar stream (ustar, GNU and POSIX pax, as `tar`, `docker export`
//! and root file system tarballs make them) without unpacking it to disk.
//!
//! Supported: regular files, directories, symlinks, hard links (to a file seen
//! earlier in the stream), character and block devices, fifos; GNU long names
//! and long link names (`L`, `K`); pax `path`, `linkpath`, `size`, `uid`, `gid`
//! and `mtime`; base-256 numbers. A stream that ends before its end-of-archive
//! blocks is an error: a truncated download must not become an archive.

use std::io::{self, Read};
use std::path::Path;

use venti::BlockStore;

use crate::error::{Error, Result};
use crate::stream::write_bytes;
use crate::tree::{BlockSizes, Tree, TreeNode};
use crate::unix::{Kind, Meta};
use crate::walk::{Observer, Stats, write_content};

const BLOCK: usize = 512;

/// Where in the stream we are, for error messages.
struct Position {
    entries: u64,
    offset: u64,
}

/// Reads exactly `buf.len()` bytes, or reports a stream that ended early.
fn read_exact(r: &mut dyn Read, buf: &mut [u8], pos: &mut Position, what: &str) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Error::Invalid(format!(
                    "tar stream ended early at byte {} (in {what}, after {} entries)",
                    pos.offset + done as u64,
                    pos.entries
                )));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("tar stream", e)),
        }
    }
    pos.offset += buf.len() as u64;
    Ok(())
}

/// A reader of exactly `remaining` bytes of the stream, failing if it ends first.
struct Body<'r> {
    inner: &'r mut dyn Read,
    remaining: u64,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ended in the middle of a file",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Parses an octal (or GNU base-256) numeric field.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256: the remaining bits, big-endian; negative values are refused.
        if field[0] & 0x40 != 0 {
            return None;
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let text = std::str::from_utf8(&text).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn text(field: &[u8]) -> Vec<u8> {
    field.iter().copied().take_while(|&b| b != 0).collect()
}

/// Overrides from a pax extended header or GNU long-name entries.
#[derive(Default)]
struct Overrides {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
}

fn parse_pax(data: &[u8], into: &mut Overrides) -> Result<()> {
    let bad = || Error::Invalid("malformed pax extended header in tar stream".into());
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let num = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        match key {
            b"path" => into.path = Some(value.to_vec()),
            b"linkpath" => into.linkpath = Some(value.to_vec()),
            b"size" => into.size = Some(num().ok_or_else(bad)?),
            b"uid" => into.uid = Some(num().ok_or_else(bad)?),
            b"gid" => into.gid = Some(num().ok_or_else(bad)?),
            b"mtime" => {
                let whole = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.split('.').next())
                    .and_then(|s| s.parse::<i64>().ok());
                into.mtime = Some(whole.ok_or_else(bad)?);
            }
            k if k.starts_with(b"GNU.sparse") => {
                return Err(Error::Invalid(
                    "sparse files in tar streams are not supported".into(),
                ));
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// The longest file name Linux (and so an extracted archive) allows.
const NAME_MAX: usize = 255;

/// Splits a tar path into archive components, dropping `.`, leading `/` and
/// refusing `..` and non-UTF-8 names.
fn components(path: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(path).map_err(|_| {
        Error::Invalid(format!(
            "tar entry name {:?} is not UTF-8",
            String::from_utf8_lossy(path)
        ))
    })?;
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::Invalid(format!(
                    "tar entry {text:?} climbs out with '..'"
                )));
            }
            p if p.len() > NAME_MAX => {
                return Err(Error::Invalid(format!(
                    "tar entry {text:?} has a name of {} bytes; names are at most {NAME_MAX}",
                    p.len()
                )));
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// Archives a tar stream into `tree`. Entries are placed at their paths from the
/// archive root; an entry for `./` sets the root's metadata.
pub fn import_tar(
    store: &dyn BlockStore,
    sizes: BlockSizes,
    tree: &mut Tree,
    input: &mut dyn Read,
    observer: &dyn Observer,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut pos = Position {
        entries: 0,
        offset: 0,
    };
    let mut header = [0u8; BLOCK];
    let mut pending = Overrides::default();
    let mut global = Overrides::default();
    loop {
        read_exact(input, &mut header, &mut pos, "a header")?;
        if header.iter().all(|&b| b == 0) {
            // End of archive: a zero block (GNU tar writes two; one is accepted).
            // Drain the rest so a writer on a pipe is not cut off mid-write.
            let _ = io::copy(input, &mut io::sink());
            return Ok(stats);
        }
        let stored: u64 = number(&header[148..156]).ok_or_else(|| {
            Error::Invalid(format!(
                "bad tar header checksum field at byte {}",
                pos.offset - 512
            ))
        })?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    b as u64
                }
            })
            .sum();
        if sum != stored {
            return Err(Error::Invalid(format!(
                "tar header checksum mismatch at byte {} (not a tar stream, or corrupt)",
                pos.offset - 512
            )));
        }
        let typeflag = header[156];
        let field = |range: std::ops::Range<usize>, name: &str| {
            number(&header[range]).ok_or_else(|| {
                Error::Invalid(format!(
                    "bad {name} field in tar header at byte {}",
                    pos.offset - 512
                ))
            })
        };
        let size = pending
            .size
            .or(global.size)
            .map_or_else(|| field(124..136, "size"), Ok)?;
        let mut name = text(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = text(&header[345..500]);
            if !prefix.is_empty() && header[263] != b' ' {
                name = [prefix, b"/".to_vec(), name].concat();
            }
        }
        let mut body = Body {
            inner: input,
            remaining: size,
        };
        let padding = (BLOCK - (size as usize % BLOCK)) % BLOCK;

        // Meta entries describe the next entry.
        if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
            if size > 16 << 20 {
                return Err(Error::Invalid(format!(
                    "tar extended header of {size} bytes is too large"
                )));
            }
            let mut data = vec![0u8; size as usize];
            read_exact(&mut body, &mut data, &mut pos, "an extended header")?;
            let mut pad = vec![0u8; padding];
            read_exact(input, &mut pad, &mut pos, "padding")?;
            match typeflag {
                b'x' => parse_pax(&data, &mut pending)?,
                b'g' => parse_pax(&data, &mut global)?,
                b'L' => pending.path = Some(text(&data)),
                _ => pending.linkpath = Some(text(&data)),
            }
            continue;
        }

        let path = pending
            .path
            .take()
            .or_else(|| global.path.clone())
            .unwrap_or(name);
        let linkpath = pending
            .linkpath
            .take()
            .or_else(|| global.linkpath.clone())
            .unwrap_or_else(|| text(&header[157..257]));
        let uid = match pending.uid.take().or(global.uid) {
            Some(v) => v,
            None => field(108..116, "uid")?,
        };
        let gid = match pending.gid.take().or(global.gid) {
            Some(v) => v,
            None => field(116..124, "gid")?,
        };
        let mtime = match pending.mtime.take().or(global.mtime) {
            Some(v) => v,
            None => field(136..148, "mtime")? as i64,
        };
        let perm = field(100..108, "mode")? as u32 & 0o7777;
        let major = field(329..337, "devmajor").unwrap_or(0);
        let minor = field(337..345, "devminor").unwrap_or(0);
        pending = Overrides::default();
        pos.entries += 1;
        // Ids past 32 bits must not wrap into others (uid 2^32 would be
        // root, setuid bits and all): such an entry is refused.
        let fits = |value: u64, what: &str| {
            u32::try_from(value).map_err(|_| {
                Error::Invalid(format!(
                    "tar entry {:?}: {what} {value} does not fit 32 bits",
                    String::from_utf8_lossy(&path)
                ))
            })
        };
        let (uid, gid) = (fits(uid, "uid")?, fits(gid, "gid")?);
        let (major, minor) = (fits(major, "devmajor")?, fits(minor, "devminor")?);

        let parts = components(&path)?;
        let parts_ref: Vec<&str> = parts.iter().map(String::as_str).collect();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let meta = |kind| Meta {
            kind,
            perm,
            uid,
            gid,
            mtime,
        };
        let node = match typeflag {
            b'0' | 0 | b'7' => {
                let data = match write_content(store, sizes, &mut body, size, observer) {
                    Ok(r) => r?,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(Error::Invalid(format!(
                            "tar stream ended early, in the middle of {shown} (after {} entries)",
                            pos.entries - 1
                        )));
                    }
                    Err(e) => return Err(Error::io("tar stream", e)),
                };
                pos.offset += size;
                stats.bytes += size;
                Some(TreeNode::Leaf {
                    meta: meta(Kind::File),
                    data,
                })
            }
            b'5' => Some(TreeNode::dir(meta(Kind::Dir))),
            b'2' => Some(leaf(store, sizes, meta(Kind::Symlink(linkpath)))?),
            b'3' => Some(leaf(store, sizes, meta(Kind::CharDevice { major, minor }))?),
            b'4' => Some(leaf(
                store,
                sizes,
                meta(Kind::BlockDevice { major, minor }),
            )?),
            b'6' => Some(leaf(store, sizes, meta(Kind::Fifo))?),
            b'1' => {
                let target = components(&linkpath)?;
                let target: Vec<&str> = target.iter().map(String::as_str).collect();
                match tree.get(&target) {
                    Some(TreeNode::Leaf { data, .. }) => Some(TreeNode::Leaf {
                        meta: meta(Kind::File),
                        data: *data,
                    }),
                    // As GNU tar: a link whose target is not there is
                    // an error, not a file silently missing from the root.
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{shown}: a hard link to {:?}, which is not a file earlier in the stream",
                            String::from_utf8_lossy(&linkpath)
                        )));
                    }
                }
            }
            other => {
                observer.warn(
                    Path::new(&shown),
                    &format!(
                        "tar entry type {:?} is not supported; left out",
                        other as char
                    ),
                );
                stats.warnings += 1;
                None
            }
        };
        // Skip whatever of the body was not consumed (non-file entries with data).
        let mut rest = Body {
            inner: input,
            remaining: body_remaining(typeflag, size),
        };
        io::copy(&mut rest, &mut io::sink()).map_err(|e| {
            Error::Invalid(format!("tar stream: {e} (after {} entries)", pos.entries))
        })?;
        let mut pad = vec![0u8; padding];
        read_exact(input, &mut pad, &mut pos, "padding")?;
        if let Some(node) = node {
            stats.files += 1;
            observer.file();
            tree.insert(&parts_ref, node)?;
        }
    }
}

/// Bytes of an entry's body not read by the entry's handler.
fn body_remaining(typeflag: u8, size: u64) -> u64 {
    match typeflag {
        b'0' | 0 | b'7' => 0,
        _ => size,
    }
}

fn leaf(store: &dyn BlockStore, sizes: BlockSizes, meta: Meta) -> Result<TreeNode> {
    let data = write_bytes(store, &meta.special_data(), sizes.psize, sizes.dsize)?;
    Ok(TreeNode::Leaf { meta, data })
}
