//! What every 9P2000 file server here does the same way, whatever it
//! serves: reading framed requests within the size agreed, negotiating the
//! version, and sending replies no larger than the msize agreed. A file server
//! implements [`Service`] (its fids and files) and [`serve`] runs one
//! connection for it.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::fcall::{DecodeError, Fcall, IOHDRSZ, NOTAG};

/// The msize a session starts with, before its Tversion.
pub const FIRST_MSIZE: u32 = 8192 + IOHDRSZ;
/// The smallest msize agreed to: a smaller message cannot hold a stat
/// (plan9port's vacfs refuses below 256 too).
pub const MIN_MSIZE: u32 = 256;

/// One connection's file server: its fids and what they name.
pub trait Service<W: Write> {
    /// The largest msize this server agrees to.
    fn max_msize(&self) -> u32;

    /// A Tversion has started the session again with `msize`: every fid
    /// is forgotten (and whatever waits on one ended), as 9P requires.
    fn version(&mut self, msize: u32);

    /// Answers one request (never a Tversion): now, by returning it, or
    /// later through `replies` (a read that waits for data), by returning
    /// `None`. A request answered later must still be answered, or flushed.
    fn handle(&mut self, tag: u16, request: Fcall, replies: &Replies<W>) -> Option<Fcall>;

    /// The connection has ended: release every fid.
    fn hang_up(&mut self);
}

/// Where a connection's replies go: shared, so a reply answered later (from
/// another thread) and one answered now never interleave their bytes.
pub struct Replies<W> {
    out: Arc<Mutex<W>>,
    msize: Arc<AtomicU32>,
}

impl<W> Clone for Replies<W> {
    fn clone(&self) -> Self {
        Replies {
            out: self.out.clone(),
            msize: self.msize.clone(),
        }
    }
}

impl<W: Write> Replies<W> {
    /// Replies written to `out`, at the first msize until a Tversion.
    pub fn new(out: W) -> Replies<W> {
        Replies {
            out: Arc::new(Mutex::new(out)),
            msize: Arc::new(AtomicU32::new(FIRST_MSIZE)),
        }
    }

    /// The msize agreed for this connection.
    pub fn msize(&self) -> u32 {
        self.msize.load(Ordering::Relaxed)
    }

    /// Sends `reply` to request `tag` (an error is cut to ERRMAX bytes by
    /// its encoding). A reply that would not fit the msize (a stat with a long name, say)
    /// becomes an error saying so. A connection that is gone is noticed by
    /// the reading side, so a failed write is not reported here.
    pub fn send(&self, tag: u16, reply: Fcall) {
        let mut bytes = reply.encode(tag);
        let msize = self.msize();
        if bytes.len() > msize as usize {
            let too_big = error(format!(
                "the reply is {} bytes, more than this connection's msize of {msize}",
                bytes.len()
            ));
            bytes = too_big.encode(tag);
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
    }
}

/// An Rerror carrying `why`.
pub fn error(why: impl ToString) -> Fcall {
    Fcall::Rerror {
        ename: why.to_string(),
    }
}

/// Serves one connection, reading requests from `input` and replying
/// through `replies`, until the client closes it (`Ok`) or it fails. A message whose
/// size is out of range ends the connection, since its framing can no
/// longer be trusted; one that does not decode is answered with an error.
/// The service hears [`Service::hang_up`] however the connection ends.
pub fn serve<W: Write, S: Service<W>>(
    mut input: impl Read,
    replies: &Replies<W>,
    service: &mut S,
) -> io::Result<()> {
    let result = serve_requests(&mut input, replies, service);
    service.hang_up();
    result
}

fn serve_requests<W: Write, S: Service<W>>(
    input: &mut impl Read,
    replies: &Replies<W>,
    service: &mut S,
) -> io::Result<()> {
    loop {
        let mut size = [0u8; 4];
        match input.read_exact(&mut size) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = u32::from_le_bytes(size);
        if !(7..=service.max_msize()).contains(&size) {
            replies.send(NOTAG, error(format!("message size {size} out of range")));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a 9P message of {size} bytes"),
            ));
        }
        let mut message = vec![0u8; size as usize];
        message[..4].copy_from_slice(&size.to_le_bytes());
        input.read_exact(&mut message[4..])?;
        let tag = u16::from_le_bytes([message[5], message[6]]);
        match Fcall::decode(&message) {
            Ok((tag, Fcall::Tversion { msize, version })) => {
                replies.send(tag, negotiate(msize, &version, replies, service));
            }
            Ok((tag, request)) => {
                if let Some(reply) = service.handle(tag, request, replies) {
                    replies.send(tag, reply);
                }
            }
            Err(e) => replies.send(tag, bad_message(e)),
        }
    }
}

fn bad_message(e: DecodeError) -> Fcall {
    error(format!("bad message: {e}"))
}

/// Tversion: never more than the client offered nor the server allows, and
/// the session starts again.
fn negotiate<W: Write, S: Service<W>>(
    offered: u32,
    version: &str,
    replies: &Replies<W>,
    service: &mut S,
) -> Fcall {
    if offered < MIN_MSIZE {
        return error(format!(
            "msize {offered} is too small: at least {MIN_MSIZE}"
        ));
    }
    let msize = offered.min(service.max_msize());
    service.version(msize);
    replies.msize.store(msize, Ordering::Relaxed);
    Fcall::Rversion {
        msize,
        version: if version.starts_with("9P2000") {
            "9P2000".into()
        } else {
            "unknown".into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcall::Stat;
    use std::os::unix::net::UnixStream;

    /// A service with one answer for everything: a stat of a file whose
    /// name is as long as the request's fid says.
    struct Echo {
        versions: Vec<u32>,
        hung_up: bool,
    }

    impl<W: Write> Service<W> for Echo {
        fn max_msize(&self) -> u32 {
            1024
        }
        fn version(&mut self, msize: u32) {
            self.versions.push(msize);
        }
        fn handle(&mut self, _tag: u16, request: Fcall, _: &Replies<W>) -> Option<Fcall> {
            Some(match request {
                Fcall::Tstat { fid } => Fcall::Rstat {
                    stat: Stat {
                        name: "n".repeat(fid as usize),
                        ..Default::default()
                    },
                },
                other => error(format!("unexpected {other:?}")),
            })
        }
        fn hang_up(&mut self) {
            self.hung_up = true;
        }
    }

    fn ask(client: &mut UnixStream, tag: u16, request: Fcall) -> (u16, Fcall) {
        client.write_all(&request.encode(tag)).unwrap();
        read_reply(client)
    }

    fn read_reply(client: &mut UnixStream) -> (u16, Fcall) {
        let mut size = [0u8; 4];
        client.read_exact(&mut size).unwrap();
        let mut message = vec![0u8; u32::from_le_bytes(size) as usize];
        message[..4].copy_from_slice(&size);
        client.read_exact(&mut message[4..]).unwrap();
        Fcall::decode(&message).unwrap()
    }

    fn start() -> (UnixStream, std::thread::JoinHandle<(io::Result<()>, Echo)>) {
        let (client, server) = UnixStream::pair().unwrap();
        let serving = std::thread::spawn(move || {
            let mut echo = Echo {
                versions: Vec::new(),
                hung_up: false,
            };
            let result = serve(
                server.try_clone().unwrap(),
                &Replies::new(server),
                &mut echo,
            );
            (result, echo)
        });
        (client, serving)
    }

    #[test]
    fn the_msize_is_the_smaller_of_the_offer_and_the_limit_and_limits_replies() {
        let (mut client, serving) = start();
        let small = Fcall::Tversion {
            msize: 100,
            version: "9P2000".into(),
        };
        let (_, reply) = ask(&mut client, NOTAG, small);
        assert!(matches!(reply, Fcall::Rerror { ename } if ename.contains("too small")));
        let offer = Fcall::Tversion {
            msize: 1 << 20,
            version: "9P2000.u".into(),
        };
        let (_, reply) = ask(&mut client, NOTAG, offer);
        assert_eq!(
            reply,
            Fcall::Rversion {
                msize: 1024,
                version: "9P2000".into()
            }
        );
        // A reply that fits goes as it is; one that does not becomes an error.
        let (tag, reply) = ask(&mut client, 7, Fcall::Tstat { fid: 500 });
        assert_eq!(tag, 7);
        assert!(matches!(reply, Fcall::Rstat { stat } if stat.name.len() == 500));
        let (_, reply) = ask(&mut client, 8, Fcall::Tstat { fid: 2000 });
        assert!(matches!(reply, Fcall::Rerror { ename } if ename.contains("msize of 1024")));
        drop(client);
        let (result, echo) = serving.join().unwrap();
        result.unwrap();
        assert_eq!(echo.versions, [1024]);
        assert!(echo.hung_up);
    }

    #[test]
    fn a_size_out_of_range_ends_the_connection_after_saying_why() {
        let (mut client, serving) = start();
        client.write_all(&5000u32.to_le_bytes()).unwrap();
        let (tag, reply) = read_reply(&mut client);
        assert_eq!(tag, NOTAG);
        assert!(matches!(reply, Fcall::Rerror { ename } if ename.contains("5000")));
        let (result, echo) = serving.join().unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(echo.hung_up);
    }

    #[test]
    fn a_message_that_does_not_decode_is_answered_and_the_connection_goes_on() {
        let (mut client, _serving) = start();
        // Type 250 is no 9P message.
        let mut junk = 7u32.to_le_bytes().to_vec();
        junk.extend_from_slice(&[250, 9, 0]);
        client.write_all(&junk).unwrap();
        let (tag, reply) = read_reply(&mut client);
        assert_eq!(tag, 9);
        assert!(matches!(reply, Fcall::Rerror { ename } if ename.starts_with("bad message")));
        let (_, reply) = ask(&mut client, 2, Fcall::Tstat { fid: 3 });
        assert!(matches!(reply, Fcall::Rstat { .. }));
    }
}
