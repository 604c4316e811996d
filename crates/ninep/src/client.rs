//! A small blocking 9P2000 client, enough to test the server with and to
//! script a colony file system without a kernel 9P driver.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use crate::fcall::*;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("9P: {0}")]
    Io(#[from] io::Error),
    #[error("9P server: {0}")]
    Server(String),
    #[error("9P: bad reply: {0}")]
    Protocol(String),
}

pub struct Client {
    stream: TcpStream,
    pub msize: u32,
    tag: u16,
}

impl Client {
    /// Connects and negotiates the version and msize.
    pub fn connect(addr: impl ToSocketAddrs, msize: u32) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            stream,
            msize,
            tag: 0,
        };
        match c.rpc_tag(
            NOTAG,
            Fcall::Tversion {
                msize,
                version: "9P2000".into(),
            },
        )? {
            Fcall::Rversion { msize, version } if version == "9P2000" => c.msize = msize,
            other => return Err(ClientError::Protocol(format!("{other:?}"))),
        }
        Ok(c)
    }

    /// A handle on the connection whose `shutdown` ends a request that
    /// waits (a hub read) from another thread: the request then fails.
    pub fn hangup_handle(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Sends raw bytes (for tests of malformed input) and reads one reply.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(u16, Fcall), ClientError> {
        self.stream.write_all(bytes)?;
        self.receive()
    }

    fn receive(&mut self) -> Result<(u16, Fcall), ClientError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let n = u32::from_le_bytes(size) as usize;
        if !(7..=16 << 20).contains(&n) {
            return Err(ClientError::Protocol(format!("reply size {n}")));
        }
        let mut msg = vec![0u8; n];
        msg[..4].copy_from_slice(&size);
        self.stream.read_exact(&mut msg[4..])?;
        Fcall::decode(&msg).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn rpc_tag(&mut self, tag: u16, request: Fcall) -> Result<Fcall, ClientError> {
        self.stream.write_all(&request.encode(tag))?;
        let (got, reply) = self.receive()?;
        if got != tag {
            return Err(ClientError::Protocol(format!(
                "reply tag {got}, expected {tag}"
            )));
        }
        match reply {
            Fcall::Rerror { ename } => Err(ClientError::Server(ename)),
            r => Ok(r),
        }
    }

    /// One request, one reply; Rerror becomes an error.
    pub fn rpc(&mut self, request: Fcall) -> Result<Fcall, ClientError> {
        self.tag = (self.tag + 1) % NOTAG;
        self.rpc_tag(self.tag, request)
    }

    pub fn attach(&mut self, fid: u32, uname: &str) -> Result<Qid, ClientError> {
        match self.rpc(Fcall::Tattach {
            fid,
            afid: NOFID,
            uname: uname.into(),
            aname: String::new(),
        })? {
            Fcall::Rattach { qid } => Ok(qid),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, ClientError> {
        let wnames = names.iter().map(|s| s.to_string()).collect();
        match self.rpc(Fcall::Twalk {
            fid,
            newfid,
            wnames,
        })? {
            Fcall::Rwalk { qids } => Ok(qids),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn open(&mut self, fid: u32, mode: u8) -> Result<(Qid, u32), ClientError> {
        match self.rpc(Fcall::Topen { fid, mode })? {
            Fcall::Ropen { qid, iounit } => Ok((qid, iounit)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn create(
        &mut self,
        fid: u32,
        name: &str,
        perm: u32,
        mode: u8,
    ) -> Result<Qid, ClientError> {
        match self.rpc(Fcall::Tcreate {
            fid,
            name: name.into(),
            perm,
            mode,
        })? {
            Fcall::Rcreate { qid, .. } => Ok(qid),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, ClientError> {
        match self.rpc(Fcall::Tread { fid, offset, count })? {
            Fcall::Rread { data } => Ok(data),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Reads a whole open file.
    pub fn read_all(&mut self, fid: u32) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        loop {
            let chunk = self.read(fid, out.len() as u64, self.msize - IOHDRSZ)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// Reads a whole open directory.
    pub fn read_dir(&mut self, fid: u32) -> Result<Vec<Stat>, ClientError> {
        let data = self.read_all(fid)?;
        let mut out = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let (stat, used) =
                Stat::decode(rest).map_err(|e| ClientError::Protocol(e.to_string()))?;
            out.push(stat);
            rest = &rest[used..];
        }
        Ok(out)
    }

    pub fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, ClientError> {
        match self.rpc(Fcall::Twrite {
            fid,
            offset,
            data: data.to_vec(),
        })? {
            Fcall::Rwrite { count } => Ok(count),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Writes all of `data` in iounit-sized pieces.
    pub fn write_all(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min((self.msize - IOHDRSZ) as usize);
            let wrote = self.write(fid, offset + done as u64, &data[done..done + n])?;
            if wrote == 0 {
                return Err(ClientError::Protocol("short write".into()));
            }
            done += wrote as usize;
        }
        Ok(())
    }

    pub fn clunk(&mut self, fid: u32) -> Result<(), ClientError> {
        self.rpc(Fcall::Tclunk { fid }).map(|_| ())
    }

    pub fn remove(&mut self, fid: u32) -> Result<(), ClientError> {
        self.rpc(Fcall::Tremove { fid }).map(|_| ())
    }

    pub fn stat(&mut self, fid: u32) -> Result<Stat, ClientError> {
        match self.rpc(Fcall::Tstat { fid })? {
            Fcall::Rstat { stat } => Ok(stat),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn wstat(&mut self, fid: u32, stat: Stat) -> Result<(), ClientError> {
        self.rpc(Fcall::Twstat { fid, stat }).map(|_| ())
    }
}
