//! The venti message bodies (spec §4.4): `type[1] tag[1] params…`, big-endian,
//! strings as `n[2] bytes[n]`. Decoding is strict and never panics: every
//! malformed body is a [`DecodeError`].

use crate::Score;

/// Longest string a message may carry (`VtMaxStringSize`).
pub const MAX_STRING: usize = 1024;

/// Message type numbers.
pub mod kind {
    pub const RERROR: u8 = 1;
    pub const TPING: u8 = 2;
    pub const RPING: u8 = 3;
    pub const THELLO: u8 = 4;
    pub const RHELLO: u8 = 5;
    pub const TGOODBYE: u8 = 6;
    pub const TREAD: u8 = 12;
    pub const RREAD: u8 = 13;
    pub const TWRITE: u8 = 14;
    pub const RWRITE: u8 = 15;
    pub const TSYNC: u8 = 16;
    pub const RSYNC: u8 = 17;
}

/// One venti message. `wire_type` fields carry the wire numbering (§2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Rerror {
        tag: u8,
        error: String,
    },
    Tping {
        tag: u8,
    },
    Rping {
        tag: u8,
    },
    Thello {
        tag: u8,
        version: String,
        uid: String,
        strength: u8,
        crypto: Vec<u8>,
        codec: Vec<u8>,
    },
    Rhello {
        tag: u8,
        sid: String,
        rcrypto: u8,
        rcodec: u8,
    },
    Tgoodbye {
        tag: u8,
    },
    Tread {
        tag: u8,
        score: Score,
        wire_type: u8,
        count: u32,
    },
    Rread {
        tag: u8,
        data: Vec<u8>,
    },
    Twrite {
        tag: u8,
        wire_type: u8,
        data: Vec<u8>,
    },
    Rwrite {
        tag: u8,
        score: Score,
    },
    Tsync {
        tag: u8,
    },
    Rsync {
        tag: u8,
    },
}

/// Why a message body could not be decoded. The tag is kept when it could be
/// read, so a server can answer the right request with an Rerror.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message type {kind} is truncated")]
    Truncated { kind: u8, tag: Option<u8> },
    #[error("message type {kind} has {extra} bytes of trailing junk")]
    TrailingBytes { kind: u8, tag: u8, extra: usize },
    #[error("unknown request type {kind}")]
    UnknownType { kind: u8, tag: Option<u8> },
    #[error("string longer than {MAX_STRING} bytes in message type {kind}")]
    StringTooLong { kind: u8, tag: u8 },
    #[error("string is not UTF-8 in message type {kind}")]
    BadUtf8 { kind: u8, tag: u8 },
}

impl DecodeError {
    /// The request's tag, if the body was long enough to carry one.
    pub fn tag(&self) -> Option<u8> {
        match *self {
            DecodeError::Empty => None,
            DecodeError::Truncated { tag, .. } | DecodeError::UnknownType { tag, .. } => tag,
            DecodeError::TrailingBytes { tag, .. }
            | DecodeError::StringTooLong { tag, .. }
            | DecodeError::BadUtf8 { tag, .. } => Some(tag),
        }
    }
}

impl Message {
    pub fn tag(&self) -> u8 {
        match *self {
            Message::Rerror { tag, .. }
            | Message::Tping { tag }
            | Message::Rping { tag }
            | Message::Thello { tag, .. }
            | Message::Rhello { tag, .. }
            | Message::Tgoodbye { tag }
            | Message::Tread { tag, .. }
            | Message::Rread { tag, .. }
            | Message::Twrite { tag, .. }
            | Message::Rwrite { tag, .. }
            | Message::Tsync { tag }
            | Message::Rsync { tag } => tag,
        }
    }

    /// Appends the body (without the length prefix) to `out`.
    /// Strings longer than [`MAX_STRING`] are cut at a character boundary.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let head = |out: &mut Vec<u8>, kind: u8, tag: u8| out.extend_from_slice(&[kind, tag]);
        match self {
            Message::Rerror { tag, error } => {
                head(out, kind::RERROR, *tag);
                put_string(out, error);
            }
            Message::Tping { tag } => head(out, kind::TPING, *tag),
            Message::Rping { tag } => head(out, kind::RPING, *tag),
            Message::Thello {
                tag,
                version,
                uid,
                strength,
                crypto,
                codec,
            } => {
                head(out, kind::THELLO, *tag);
                put_string(out, version);
                put_string(out, uid);
                out.push(*strength);
                put_bytes(out, crypto);
                put_bytes(out, codec);
            }
            Message::Rhello {
                tag,
                sid,
                rcrypto,
                rcodec,
            } => {
                head(out, kind::RHELLO, *tag);
                put_string(out, sid);
                out.extend_from_slice(&[*rcrypto, *rcodec]);
            }
            Message::Tgoodbye { tag } => head(out, kind::TGOODBYE, *tag),
            Message::Tread {
                tag,
                score,
                wire_type,
                count,
            } => {
                head(out, kind::TREAD, *tag);
                out.extend_from_slice(&score.0);
                out.extend_from_slice(&[*wire_type, 0]);
                // libventi uses the 2-byte count whenever it fits, even in protocol 04.
                match u16::try_from(*count) {
                    Ok(short) => out.extend_from_slice(&short.to_be_bytes()),
                    Err(_) => out.extend_from_slice(&count.to_be_bytes()),
                }
            }
            Message::Rread { tag, data } => {
                head(out, kind::RREAD, *tag);
                out.extend_from_slice(data);
            }
            Message::Twrite {
                tag,
                wire_type,
                data,
            } => {
                head(out, kind::TWRITE, *tag);
                out.extend_from_slice(&[*wire_type, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Message::Rwrite { tag, score } => {
                head(out, kind::RWRITE, *tag);
                out.extend_from_slice(&score.0);
            }
            Message::Tsync { tag } => head(out, kind::TSYNC, *tag),
            Message::Rsync { tag } => head(out, kind::RSYNC, *tag),
        }
    }

    /// Decodes one body. No bytes may remain after the fields.
    pub fn decode(body: &[u8]) -> Result<Message, DecodeError> {
        let (&kind, rest) = body.split_first().ok_or(DecodeError::Empty)?;
        let Some((&tag, rest)) = rest.split_first() else {
            return Err(match kind {
                1..=6 | 12..=17 => DecodeError::Truncated { kind, tag: None },
                _ => DecodeError::UnknownType { kind, tag: None },
            });
        };
        let mut r = Reader {
            buf: rest,
            kind,
            tag,
        };
        let message = match kind {
            kind::RERROR => Message::Rerror {
                tag,
                error: r.string()?,
            },
            kind::TPING => Message::Tping { tag },
            kind::RPING => Message::Rping { tag },
            kind::THELLO => Message::Thello {
                tag,
                version: r.string()?,
                uid: r.string()?,
                strength: r.u8()?,
                crypto: r.bytes()?,
                codec: r.bytes()?,
            },
            kind::RHELLO => Message::Rhello {
                tag,
                sid: r.string()?,
                rcrypto: r.u8()?,
                rcodec: r.u8()?,
            },
            kind::TGOODBYE => Message::Tgoodbye { tag },
            kind::TREAD => {
                let score = Score(r.take(20)?.try_into().expect("took 20"));
                let wire_type = r.u8()?;
                r.u8()?; // pad
                // The remaining length (2 or 4) decides the width of count.
                let count = match r.buf.len() {
                    4 => u32::from_be_bytes(r.take(4)?.try_into().expect("took 4")),
                    _ => u16::from_be_bytes(r.take(2)?.try_into().expect("took 2")) as u32,
                };
                Message::Tread {
                    tag,
                    score,
                    wire_type,
                    count,
                }
            }
            kind::RREAD => Message::Rread {
                tag,
                data: r.rest(),
            },
            kind::TWRITE => {
                let wire_type = r.u8()?;
                r.take(3)?; // pad
                Message::Twrite {
                    tag,
                    wire_type,
                    data: r.rest(),
                }
            }
            kind::RWRITE => Message::Rwrite {
                tag,
                score: Score(r.take(20)?.try_into().expect("took 20")),
            },
            kind::TSYNC => Message::Tsync { tag },
            kind::RSYNC => Message::Rsync { tag },
            _ => {
                return Err(DecodeError::UnknownType {
                    kind,
                    tag: Some(tag),
                });
            }
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes {
                kind,
                tag,
                extra: r.buf.len(),
            });
        }
        Ok(message)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&b[..n]);
}

/// A cursor over a body that turns every short read into a `Truncated` error.
struct Reader<'a> {
    buf: &'a [u8],
    kind: u8,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                tag: Some(self.tag),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().expect("took 2")) as usize;
        if n > MAX_STRING {
            return Err(DecodeError::StringTooLong {
                kind: self.kind,
                tag: self.tag,
            });
        }
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadUtf8 {
            kind: self.kind,
            tag: self.tag,
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u8()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::hex::decode(s).expect("hex")
    }

    fn encoded(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out);
        out
    }

    /// The bodies of the §4.8 transcript (its `len[2]` prefixes stripped).
    #[test]
    fn transcript_4_8_bodies() {
        let hello = Message::Thello {
            tag: 0,
            version: "02".into(),
            uid: "anonymous".into(),
            strength: 0,
            crypto: vec![],
            codec: vec![],
        };
        let bytes = unhex("04 00 0002 3032 0009 616e6f6e796d6f7573 00 00 00");
        assert_eq!(encoded(&hello), bytes);
        assert_eq!(Message::decode(&bytes).unwrap(), hello);

        let rhello = unhex("05 00 0009 616e6f6e796d6f7573 00 00");
        assert_eq!(
            Message::decode(&rhello).unwrap(),
            Message::Rhello {
                tag: 0,
                sid: "anonymous".into(),
                rcrypto: 0,
                rcodec: 0
            }
        );

        let twrite = unhex("0e 01 0d 000000 68656c6c6f20776f726c64");
        assert_eq!(
            Message::decode(&twrite).unwrap(),
            Message::Twrite {
                tag: 1,
                wire_type: 13,
                data: b"hello world".to_vec()
            }
        );

        let score: Score = "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed".parse().unwrap();
        let rwrite = unhex("0f 01 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed");
        assert_eq!(
            Message::decode(&rwrite).unwrap(),
            Message::Rwrite { tag: 1, score }
        );

        let tread = Message::Tread {
            tag: 2,
            score,
            wire_type: 13,
            count: 8192,
        };
        let tread_bytes = unhex("0c 02 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 2000");
        assert_eq!(encoded(&tread), tread_bytes);
        assert_eq!(Message::decode(&tread_bytes).unwrap(), tread);

        let rerror = unhex("01 01 000f 756e6b6e6f776e2072657175657374");
        assert_eq!(
            Message::decode(&rerror).unwrap(),
            Message::Rerror {
                tag: 1,
                error: "unknown request".into()
            }
        );
        assert_eq!(
            Message::decode(&unhex("02 01")).unwrap(),
            Message::Tping { tag: 1 }
        );
        assert_eq!(encoded(&Message::Tsync { tag: 4 }), unhex("10 04"));
        assert_eq!(encoded(&Message::Rsync { tag: 4 }), unhex("11 04"));
    }

    #[test]
    fn tread_count_width_follows_the_remaining_length() {
        let score: Score = "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed".parse().unwrap();
        let long = unhex("0c 03 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 00011170");
        assert_eq!(
            Message::decode(&long).unwrap(),
            Message::Tread {
                tag: 3,
                score,
                wire_type: 13,
                count: 70000
            }
        );
        assert_eq!(
            encoded(&Message::Tread {
                tag: 3,
                score,
                wire_type: 13,
                count: 70000
            }),
            long
        );
        let short = unhex("0c 03 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 0064");
        assert_eq!(
            Message::decode(&short).unwrap(),
            Message::Tread {
                tag: 3,
                score,
                wire_type: 13,
                count: 100
            }
        );
        // Three bytes of count is neither form.
        let odd = unhex("0c 03 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed 0d 00 000064");
        assert!(matches!(
            Message::decode(&odd),
            Err(DecodeError::TrailingBytes { tag: 3, .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_errors_that_keep_the_tag() {
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Message::decode(&[12]),
            Err(DecodeError::Truncated {
                kind: 12,
                tag: None
            })
        );
        assert_eq!(Message::decode(&[12, 9, 1]).unwrap_err().tag(), Some(9));
        assert_eq!(
            Message::decode(&[8, 5]),
            Err(DecodeError::UnknownType {
                kind: 8,
                tag: Some(5)
            })
        );
        assert_eq!(
            Message::decode(&[2, 5, 0]),
            Err(DecodeError::TrailingBytes {
                kind: 2,
                tag: 5,
                extra: 1
            })
        );
        let mut long = vec![1, 7];
        long.extend_from_slice(&2000u16.to_be_bytes());
        long.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(
            Message::decode(&long),
            Err(DecodeError::StringTooLong { kind: 1, tag: 7 })
        );
        assert_eq!(
            Message::decode(&[1, 7, 0, 1, 0xff]),
            Err(DecodeError::BadUtf8 { kind: 1, tag: 7 })
        );
    }
}
