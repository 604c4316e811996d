//! Asking a peer about a user's work. A storage node knows only the
//! environments it placed and the jobs it accepted; for the rest of a
//! user's work it asks the storage node that has it, over the same
//! mutual-TLS listener replication uses: `Ask(user, line)`, answered
//! with what the command printed (`Told`). The peer carries the line out
//! as it alone sees it (its [`Desk`]), so an ask never asks on, and two
//! nodes cannot bounce one between them. Only storage nodes may ask:
//! they vouch for their users as they do when they replicate them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::Peer;
use crate::frame::{self, Frame};

/// The most output one answer carries (a job's log is 8 MiB).
pub const MAX_OUT: usize = 16 << 20;

/// The most of its error text one answer carries.
pub const MAX_ERR: usize = 64 << 10;

/// What a command printed, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub out: Vec<u8>,
    pub err: String,
    pub status: u32,
}

/// Where a node carries out what its peers ask: a storage node's command
/// set, limited to the work this node holds.
pub trait Desk: Send + Sync {
    /// Carries out `line` for `user`, as storage node `peer` (its
    /// certificate's name) asks, without asking any peer in turn.
    fn here(&self, peer: &str, user: &str, line: &str) -> Told;
}

/// The keeper's side: answers `first` and every further ask on the
/// connection, in turn, until the asker hangs up.
pub(crate) async fn answer<R, W>(
    desk: Arc<dyn Desk>,
    peer: &str,
    first: (u64, String, String),
    r: &mut R,
    w: &mut W,
) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut seq, mut user, mut line) = first;
    loop {
        tracing::debug!(peer, user, line, "a peer asks");
        let (d, asker) = (desk.clone(), peer.to_string());
        let mut told = tokio::task::spawn_blocking(move || d.here(&asker, &user, &line))
            .await
            .map_err(|e| format!("answering an ask failed: {e}"))?;
        if told.out.len() > MAX_OUT {
            told.out.truncate(MAX_OUT);
            told.err.push_str("[the answer was cut at 16 MiB]\n");
        }
        if told.err.len() > MAX_ERR {
            let mut at = MAX_ERR;
            while !told.err.is_char_boundary(at) {
                at -= 1;
            }
            told.err.truncate(at);
        }
        let reply = Frame::Told {
            seq,
            out: told.out,
            err: told.err,
            status: told.status,
        };
        frame::write(w, &reply).await.map_err(|e| e.to_string())?;
        // An asker keeps its connection for the next question a while
        // (a `logs -f` through it); a closed one is the end.
        match tokio::time::timeout(IDLE, frame::read(r)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Frame::Ask {
                seq: s,
                user: u,
                line: l,
            })) => (seq, user, line) = (s, u, l),
            Ok(Ok(other)) => return Err(format!("expected Ask, got {}", other.kind())),
        }
    }
}

/// How long an asking connection may stay quiet.
const IDLE: Duration = Duration::from_secs(60);

/// A connection to a peer for asking.
pub struct Asking {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    seq: u64,
    peer: String,
}

impl Asking {
    /// Connects to `peer` (a colony storage node) within `within`.
    pub async fn open(
        link: &Arc<link::Link>,
        peer: &Peer,
        within: Duration,
    ) -> Result<Asking, String> {
        let connecting = async {
            let (_, addr) =
                link::dial::parse_transport(&peer.address).map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (stream, who) = link
                .connect(tcp, &[link::Role::Storage])
                .await
                .map_err(|e| e.to_string())?;
            if who.name != peer.name {
                return Err(format!(
                    "the server at {} is {}, not the peer {}",
                    peer.address, who.name, peer.name
                ));
            }
            Ok(stream)
        };
        let stream = tokio::time::timeout(within, connecting)
            .await
            .map_err(|_| format!("no connection within {} s", within.as_secs_f32()))??;
        Ok(Asking {
            stream,
            seq: 0,
            peer: peer.name.clone(),
        })
    }

    /// Asks the peer to carry out `line` for `user`; its answer within
    /// `within`.
    pub async fn ask(&mut self, user: &str, line: &str, within: Duration) -> Result<Told, String> {
        self.seq += 1;
        let seq = self.seq;
        let asked = async {
            let question = Frame::Ask {
                seq,
                user: user.to_string(),
                line: line.to_string(),
            };
            frame::write(&mut self.stream, &question)
                .await
                .map_err(|e| e.to_string())?;
            match frame::read(&mut self.stream)
                .await
                .map_err(|e| e.to_string())?
            {
                Frame::Told {
                    seq: s,
                    out,
                    err,
                    status,
                } if s == seq => Ok(Told { out, err, status }),
                Frame::Error { message } => Err(message),
                other => Err(format!("expected Told({seq}), got {}", other.kind())),
            }
        };
        tokio::time::timeout(within, asked).await.map_err(|_| {
            format!(
                "storage node {} did not answer within {} s",
                self.peer,
                within.as_secs()
            )
        })?
    }
}
