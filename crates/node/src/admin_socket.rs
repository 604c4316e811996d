//! The node's socket for its admin on the same machine, `STATE/admin.sock`
//! (mode 0600): `colony import` while the node runs, which holds the
//! store's lock, goes through it.
//!
//! A request is a header line, `import NAME USER[,USER…] tar|oci[:TAG]`,
//! then the stream; the answer is the status line, then what the import
//! printed. Or `gc` (`colony gc`): the answer is `progress TEXT` lines as
//! the collection goes, then the status line and its report.

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use grid::state::StateDir;

/// The socket's name in the state directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// The longest header line.
const MAX_HEADER: u64 = 4096;

/// The socket being served, until [`AdminSocket::stop`].
pub struct AdminSocket {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl AdminSocket {
    /// Serves `STATE/admin.sock` on a thread of its own.
    pub fn serve(node: Arc<storage::Node>, state: &StateDir) -> Result<AdminSocket> {
        let path = state.root.join(ADMIN_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("admin socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let accepting = {
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let node = node.clone();
                        std::thread::spawn(move || answer(&node, &conn));
                    }
                }
            })
        };
        Ok(AdminSocket {
            path,
            stopping,
            accepting: Some(accepting),
        })
    }

    /// Stops accepting and removes the socket.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        // The accepting thread is blocked in accept: one connection wakes it.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(node: &storage::Node, conn: &UnixStream) {
    let mut reader = std::io::BufReader::new(conn);
    let mut header = String::new();
    // A header is a line, not a stream of its own.
    let _ = std::io::Read::take(&mut reader, MAX_HEADER).read_line(&mut header);
    let words: Vec<&str> = header.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["import", name, users, format] => {
            let users: Vec<&str> = users.split(',').collect();
            let format = match *format {
                "tar" => Ok(storage::import::Format::Tar),
                f => storage::import::Format::parse(Some(f)),
            };
            match format {
                Ok(f) => node.import_for(
                    "admin",
                    None,
                    &users,
                    name,
                    storage::import::Upload {
                        format: &f,
                        input: &mut reader,
                        cancelled: &|| false,
                    },
                ),
                Err(e) => storage::Reply::fail(e),
            }
        }
        ["gc"] => {
            // A client that stops reading must not hold the collection
            // (and the names it holds): progress it does not take is
            // dropped.
            let _ = conn.set_write_timeout(Some(std::time::Duration::from_millis(200)));
            let mut out = conn;
            let mut deaf = false;
            let report = node.collect(&mut |how| {
                if !deaf && writeln!(out, "progress {how}").is_err() {
                    deaf = true;
                }
            });
            let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(30)));
            if deaf {
                // Ends a line a timed-out write may have left half sent.
                let _ = writeln!(out);
            }
            match report {
                Ok(r) => storage::Reply {
                    out: r.to_string(),
                    err: String::new(),
                    status: 0,
                },
                Err(e) => storage::Reply::fail(e.to_string()),
            }
        }
        _ => storage::Reply::fail(format!("bad request {:?}", header.trim())),
    };
    let mut out = conn;
    let _ = write!(out, "{}\n{}{}", reply.status, reply.out, reply.err);
}
