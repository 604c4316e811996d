//! Hubs over 9P2000: a flat directory of hubs and `ctl`, for plan9port's
//! `9p`/`9pfuse` and colony's own client.
//!
//! Unlike a file server whose requests finish at once, a hub read waits for
//! data, so each connection answers requests concurrently: a streaming read
//! waits on a thread of its own (a Tflush ends it), writes go in order
//! through one writer thread (a write may wait, in fear mode or under a rate
//! limit, without holding up the connection's reads), and everything else
//! is answered inline.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};

use ninep::fcall::*;
use ninep::server::{self, Replies, error};

use crate::hub::{Got, HubError, HubSet, ReaderId};

/// Largest msize we agree to.
pub const MAX_MSIZE: u32 = 256 * 1024 + IOHDRSZ;

/// Serves `hubs` on `listener`, a thread per client. A failed accept (out
/// of file descriptors, say) is logged and retried after a pause: it never
/// ends the server, which serves for good.
pub fn serve(listener: TcpListener, hubs: Arc<HubSet>) {
    loop {
        let (stream, peer) = link::listener::accept_blocking(&listener, "hub");
        let hubs = hubs.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_conn(stream, hubs) {
                tracing::info!(%peer, error = %e, "hub connection ended");
            }
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Root,
    Ctl,
    Hub(String),
}

struct Fid {
    node: Node,
    open: Option<u8>,
    reader: Option<ReaderId>,
}

/// A read waiting for data: how to end it, and a signal when it has.
struct Waiting {
    cancel: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

type Out = Replies<BufWriter<TcpStream>>;

struct Conn {
    hubs: Arc<HubSet>,
    fids: HashMap<u32, Fid>,
    waiting: Arc<Mutex<HashMap<u16, Waiting>>>,
    user: String,
    msize: u32,
    writes: mpsc::Sender<(u16, String, Vec<u8>)>,
}

/// Serves one client until it closes.
pub fn serve_conn(stream: TcpStream, hubs: Arc<HubSet>) -> io::Result<()> {
    let replies: Out = Replies::new(BufWriter::new(stream.try_clone()?));
    let (writes, queue) = mpsc::channel::<(u16, String, Vec<u8>)>();
    // Writes in the order they came, each answered when it is done.
    let writer = {
        let (hubs, replies) = (hubs.clone(), replies.clone());
        std::thread::spawn(move || {
            for (tag, hub, data) in queue {
                let f = match hubs.write(&hub, &data) {
                    Ok(n) => Fcall::Rwrite { count: n as u32 },
                    Err(e) => error(e),
                };
                replies.send(tag, f);
            }
        })
    };
    let mut conn = Conn {
        hubs,
        fids: HashMap::new(),
        waiting: Arc::default(),
        user: "none".into(),
        msize: server::FIRST_MSIZE,
        writes,
    };
    let result = server::serve(BufReader::new(stream), &replies, &mut conn);
    drop(conn);
    let _ = writer.join();
    result
}

/// Hub reads wait on threads of their own and writes go through the
/// connection's writer, so both are answered later through the replies.
impl server::Service<BufWriter<TcpStream>> for Conn {
    fn max_msize(&self) -> u32 {
        MAX_MSIZE
    }

    fn version(&mut self, msize: u32) {
        self.clunk_all();
        self.msize = msize;
    }

    fn handle(&mut self, tag: u16, request: Fcall, replies: &Out) -> Option<Fcall> {
        self.answer(tag, request, replies)
    }

    fn hang_up(&mut self) {
        self.clunk_all();
    }
}

impl Conn {
    fn clunk_all(&mut self) {
        for (_, fid) in self.fids.drain() {
            if let (Node::Hub(name), Some(reader)) = (&fid.node, fid.reader) {
                self.hubs.close_reader(name, reader);
            }
        }
        for (_, w) in self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            w.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.hubs.interrupt();
    }

    fn qid(&self, node: &Node) -> Result<Qid, HubError> {
        Ok(match node {
            Node::Root => Qid {
                ty: QTDIR,
                version: 0,
                path: 0,
            },
            Node::Ctl => Qid {
                ty: QTFILE,
                version: 0,
                path: 1,
            },
            Node::Hub(name) => Qid {
                ty: QTFILE,
                version: 0,
                path: 1 + self.hubs.info(name)?.id,
            },
        })
    }

    fn stat(&self, node: &Node) -> Result<Stat, HubError> {
        let qid = self.qid(node)?;
        let (name, mode, length, uid) = match node {
            Node::Root => ("/".to_string(), DMDIR | 0o777, 0, "hubfs".to_string()),
            Node::Ctl => (
                "ctl".into(),
                0o666,
                self.hubs.status().len() as u64,
                "hubfs".into(),
            ),
            Node::Hub(n) => {
                let i = self.hubs.info(n)?;
                (i.name, i.mode, i.kept, i.owner)
            }
        };
        Ok(Stat {
            qid,
            mode,
            length,
            name,
            gid: uid.clone(),
            muid: uid.clone(),
            uid,
            ..Default::default()
        })
    }

    /// Whether the attached user may open `node` for `mode`.
    fn allowed(&self, node: &Node, mode: u8) -> Result<(), HubError> {
        let Node::Hub(name) = node else {
            return Ok(());
        };
        let info = self.hubs.info(name)?;
        let bits = if info.owner == self.user {
            (info.mode >> 6) & 7
        } else {
            info.mode & 7
        };
        let need = match mode & 3 {
            OREAD => 4,
            OWRITE => 2,
            _ => 6,
        };
        if bits & need == need {
            Ok(())
        } else {
            Err(HubError::Denied(format!("{name} is {}'s", info.owner)))
        }
    }

    fn answer(&mut self, tag: u16, f: Fcall, replies: &Out) -> Option<Fcall> {
        Some(match f {
            Fcall::Tauth { .. } => error("no authentication required"),
            Fcall::Tattach { fid, uname, .. } => {
                self.user = uname;
                self.fids.insert(
                    fid,
                    Fid {
                        node: Node::Root,
                        open: None,
                        reader: None,
                    },
                );
                Fcall::Rattach {
                    qid: self.qid(&Node::Root).expect("root"),
                }
            }
            Fcall::Tflush { oldtag } => {
                let w = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&oldtag);
                if let Some(w) = w {
                    w.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.hubs.interrupt();
                    let _ = w.done.recv();
                }
                Fcall::Rflush
            }
            Fcall::Twalk {
                fid,
                newfid,
                wnames,
            } => match self.walk(fid, newfid, &wnames) {
                Ok(qids) => Fcall::Rwalk { qids },
                Err(e) => error(e),
            },
            Fcall::Topen { fid, mode } => match self.open(fid, mode) {
                Ok(qid) => Fcall::Ropen {
                    qid,
                    iounit: self.msize - IOHDRSZ,
                },
                Err(e) => error(e),
            },
            Fcall::Tcreate {
                fid,
                name,
                perm,
                mode,
            } => match self.create(fid, &name, perm, mode) {
                Ok(qid) => Fcall::Rcreate {
                    qid,
                    iounit: self.msize - IOHDRSZ,
                },
                Err(e) => error(e),
            },
            Fcall::Tread { fid, offset, count } => {
                return self.read(tag, fid, offset, count, replies);
            }
            Fcall::Twrite { fid, offset, data } => return self.write(tag, fid, offset, data),
            Fcall::Tclunk { fid } => {
                if let Some(f) = self.fids.remove(&fid)
                    && let (Node::Hub(name), Some(reader)) = (&f.node, f.reader)
                {
                    self.hubs.close_reader(name, reader);
                }
                Fcall::Rclunk
            }
            Fcall::Tremove { fid } => {
                let Some(f) = self.fids.remove(&fid) else {
                    return Some(error("unknown fid"));
                };
                match &f.node {
                    Node::Hub(name) => {
                        if let Some(reader) = f.reader {
                            self.hubs.close_reader(name, reader);
                        }
                        match self.hubs.info(name) {
                            Ok(i) if i.owner != self.user => {
                                error(HubError::Denied(format!("{name} is {}'s", i.owner)))
                            }
                            _ => match self.hubs.remove(name) {
                                Ok(()) => Fcall::Rremove,
                                Err(e) => error(e),
                            },
                        }
                    }
                    _ => error("only hubs can be removed"),
                }
            }
            Fcall::Tstat { fid } => match self.fids.get(&fid) {
                Some(f) => match self.stat(&f.node.clone()) {
                    Ok(stat) => Fcall::Rstat { stat },
                    Err(e) => error(e),
                },
                None => error("unknown fid"),
            },
            // Truncating opens send a length-0 wstat; nothing else changes.
            Fcall::Twstat { stat, .. } => {
                if stat.length == 0 || stat.length == u64::MAX {
                    Fcall::Rwstat
                } else {
                    error("hubs cannot be changed by wstat")
                }
            }
            other => error(format!("unexpected message {other:?}")),
        })
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[String]) -> Result<Vec<Qid>, HubError> {
        let from = self
            .fids
            .get(&fid)
            .ok_or_else(|| HubError::NoHub("(unknown fid)".into()))?;
        let mut node = from.node.clone();
        let mut qids = Vec::new();
        for n in names {
            node = match (&node, n.as_str()) {
                (Node::Root, "..") => Node::Root,
                (Node::Root, "ctl") => Node::Ctl,
                (Node::Root, name) => {
                    self.hubs.info(name)?;
                    Node::Hub(name.to_string())
                }
                _ => break,
            };
            qids.push(self.qid(&node)?);
        }
        if qids.len() == names.len() {
            self.fids.insert(
                newfid,
                Fid {
                    node,
                    open: None,
                    reader: None,
                },
            );
        } else if qids.is_empty() {
            return Err(HubError::NoHub(names[0].clone()));
        }
        Ok(qids)
    }

    fn open(&mut self, fid: u32, mode: u8) -> Result<Qid, HubError> {
        let f = self
            .fids
            .get(&fid)
            .ok_or_else(|| HubError::NoHub("(unknown fid)".into()))?;
        // 9P: an open fid is not opened again (its reader would be lost,
        // and with it a way to end the reads waiting on it).
        if f.open.is_some() {
            return Err(HubError::Denied("the fid is already open".into()));
        }
        let node = f.node.clone();
        self.allowed(&node, mode)?;
        let reader = match &node {
            Node::Hub(name) if mode & 3 != OWRITE => Some(self.hubs.open_reader(name)?),
            _ => None,
        };
        let f = self.fids.get_mut(&fid).expect("looked up");
        f.open = Some(mode);
        f.reader = reader;
        self.qid(&node)
    }

    fn create(&mut self, fid: u32, name: &str, perm: u32, mode: u8) -> Result<Qid, HubError> {
        if self.fids.get(&fid).is_some_and(|f| f.open.is_some()) {
            return Err(HubError::Denied("the fid is already open".into()));
        }
        match self.fids.get(&fid).map(|f| &f.node) {
            Some(Node::Root) => {}
            _ => {
                return Err(HubError::Denied(
                    "hubs are made in the hub directory".into(),
                ));
            }
        }
        if perm & DMDIR != 0 {
            return Err(HubError::Denied(format!(
                "{name}: hubs are files, not directories"
            )));
        }
        self.hubs.create(name, &self.user, perm & 0o777)?;
        let node = Node::Hub(name.to_string());
        let reader = (mode & 3 != OWRITE)
            .then(|| self.hubs.open_reader(name))
            .transpose()?;
        self.fids.insert(
            fid,
            Fid {
                node: node.clone(),
                open: Some(mode),
                reader,
            },
        );
        self.qid(&node)
    }

    fn read(
        &mut self,
        tag: u16,
        fid: u32,
        offset: u64,
        count: u32,
        replies: &Out,
    ) -> Option<Fcall> {
        let Some(f) = self.fids.get(&fid) else {
            return Some(error("unknown fid"));
        };
        let count = count.min(self.msize - IOHDRSZ) as usize;
        let node = f.node.clone();
        Some(match node {
            Node::Root => {
                let mut entries = Vec::new();
                let mut nodes = vec![Node::Ctl];
                nodes.extend(self.hubs.list().into_iter().map(|h| Node::Hub(h.name)));
                for n in nodes {
                    if let Ok(s) = self.stat(&n) {
                        let mut b = Vec::new();
                        s.encode(&mut b);
                        entries.push(b);
                    }
                }
                // Whole entries from `offset`, as many as fit; one that
                // cannot fit at all is an error, not a silent end of the
                // listing.
                let (mut at, mut data) = (0u64, Vec::new());
                for e in entries {
                    if at >= offset {
                        if data.len() + e.len() > count {
                            if data.is_empty() {
                                return Some(error(format!(
                                    "a directory entry of {} bytes does not fit a read of {count}",
                                    e.len()
                                )));
                            }
                            break;
                        }
                        data.extend_from_slice(&e);
                    }
                    at += e.len() as u64;
                }
                Fcall::Rread { data }
            }
            Node::Ctl => {
                let text = self.hubs.status().into_bytes();
                let from = (offset as usize).min(text.len());
                Fcall::Rread {
                    data: text[from..(from + count).min(text.len())].to_vec(),
                }
            }
            Node::Hub(name) => {
                if self.hubs.frozen() {
                    return Some(match self.hubs.read_at(&name, offset, count) {
                        Ok(data) => Fcall::Rread { data },
                        Err(e) => error(e),
                    });
                }
                let Some(reader) = f.reader else {
                    return Some(error("not open for reading"));
                };
                // Waits on a thread of its own; a Tflush ends it.
                let cancel = Arc::new(AtomicBool::new(false));
                let (done_tx, done) = mpsc::channel();
                self.waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        tag,
                        Waiting {
                            cancel: cancel.clone(),
                            done,
                        },
                    );
                let (hubs, replies, waiting) =
                    (self.hubs.clone(), replies.clone(), self.waiting.clone());
                std::thread::spawn(move || {
                    let f = match hubs.read(&name, reader, count, &cancel) {
                        Ok(Got::Data(data)) => Some(Fcall::Rread { data }),
                        Ok(Got::Eof) => Some(Fcall::Rread { data: Vec::new() }),
                        // Flushed: the Tflush's Rflush is the answer.
                        Err(HubError::Interrupted) => None,
                        Err(e) => Some(error(e)),
                    };
                    // Answered under the lock a Tflush takes to find it:
                    // a flush either finds it waiting (and its Rflush comes
                    // after), or finds it answered; never an Rread after an
                    // Rflush.
                    let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                    waiting.remove(&tag);
                    if let Some(f) = f {
                        replies.send(tag, f);
                    }
                    drop(waiting);
                    let _ = done_tx.send(());
                });
                return None;
            }
        })
    }

    fn write(&mut self, tag: u16, fid: u32, offset: u64, data: Vec<u8>) -> Option<Fcall> {
        let Some(f) = self.fids.get(&fid) else {
            return Some(error("unknown fid"));
        };
        if f.open.is_none_or(|m| m & 3 == OREAD) {
            return Some(error("not open for writing"));
        }
        Some(match f.node.clone() {
            Node::Root => error("the hub directory cannot be written"),
            Node::Ctl => {
                let text = String::from_utf8_lossy(&data).into_owned();
                let mut result = Ok(());
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    result = result.and_then(|()| self.hubs.ctl(line));
                }
                match result {
                    Ok(()) => Fcall::Rwrite {
                        count: data.len() as u32,
                    },
                    Err(e) => error(e),
                }
            }
            Node::Hub(name) if self.hubs.frozen() => match self.hubs.write_at(&name, offset, &data)
            {
                Ok(n) => Fcall::Rwrite { count: n as u32 },
                Err(e) => error(e),
            },
            Node::Hub(name) => {
                let _ = self.writes.send((tag, name, data));
                return None;
            }
        })
    }
}
