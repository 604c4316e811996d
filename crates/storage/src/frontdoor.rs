//! The SSH front door. A user authenticates with a registered key (the name
//! the client claims is ignored: the key says who it is), then either runs
//! one command (`ssh -p 16999 alice@node spawn debian`, exit status and
//! stderr as usual) or gets the interactive prompt when no command is given.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use russh::keys::{PrivateKey, ssh_key};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use tokio::net::TcpListener;

use crate::{Node, Reply, commands, import, run};
use grid::error::GridError;
use grid::ssh::server_config;

/// The default port of the front door.
pub const DEFAULT_PORT: u16 = 16999;

/// Serves the front door on `listener` until `shutdown` resolves; a
/// connection has `login_grace` to log in.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    key: PrivateKey,
    login_grace: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) {
    let new_connection = |peer, logging_in| Connection {
        refused: false,
        node: node.clone(),
        user: None,
        peer,
        logging_in,
        channels: HashMap::new(),
    };
    grid::ssh_server::serve(
        &listener,
        None,
        server_config(key),
        login_grace,
        new_connection,
        || {
            if let Some(m) = node.metrics() {
                m.connections_refused.inc();
            }
        },
        async {
            shutdown.await;
            grid::ssh_server::Stop::End
        },
        "the node is shutting down",
    )
    .await;
}

/// The longest line the prompt reads as a command.
const MAX_LINE: usize = 4096;

/// Per-channel state of an interactive session.
#[derive(Default)]
struct Interactive {
    pty: bool,
    /// A shell (prompt) session, as opposed to a one-shot command.
    shell: bool,
    line: Vec<u8>,
    /// The line being typed passed [`MAX_LINE`].
    too_long: bool,
    /// An `import`'s or a `run`'s input: the channel's data goes there
    /// (an empty chunk is the end of input).
    input: Option<Input>,
    /// A follower's (`logs -f`, `service logs -f`): dropped with the
    /// channel, which tells the follower its client left.
    following: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Waits `pause` before a follower looks again: false if its client left
/// meanwhile (its channel closed), and it should stop.
async fn still_followed(
    left: &mut tokio::sync::oneshot::Receiver<()>,
    pause: std::time::Duration,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        _ = left => false,
    }
}

/// Where a channel's data goes.
#[derive(Clone)]
enum Input {
    /// An import's stream: a few chunks in flight, so a slow store holds
    /// the client back.
    Import(tokio::sync::mpsc::Sender<Vec<u8>>),
    /// A run's input (see [`run::MAX_WAITING_INPUT`]).
    Run(run::InputTo),
}

impl Input {
    /// Passes `chunk` on; what a reader that stopped (an error) would
    /// have had is dropped.
    async fn send(&self, chunk: Vec<u8>) {
        match self {
            Input::Import(to) => {
                let _ = to.send(chunk).await;
            }
            Input::Run(to) => {
                to.send(chunk).await;
            }
        }
    }
}

/// The importer's end of an `import` stream. The channel's data comes as
/// chunks; an empty chunk is the client's end of file. The sender is kept
/// until the connection's channel closes, so a closed stream without that
/// empty chunk is a client that left mid-stream.
struct ImportStream {
    from: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl std::io::Read for ImportStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            let Some(next) = self.from.blocking_recv() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the client left before the end of its stream",
                ));
            };
            self.ended = next.is_empty();
            self.chunk = next;
            self.at = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

struct Connection {
    /// A key was offered and none admitted (so far).
    refused: bool,
    node: Arc<Node>,
    /// The user the key belongs to, once authenticated.
    user: Option<String>,
    peer: std::net::SocketAddr,
    logging_in: grid::ssh_server::LoggingIn,
    channels: HashMap<ChannelId, Interactive>,
}

impl Drop for Connection {
    /// A connection that ends without a login after offering keys is a
    /// login refused.
    fn drop(&mut self) {
        if self.refused && self.user.is_none() {
            self.logging_in
                .log_refused("no key it offered is a registered user's");
            if let Some(m) = self.node.metrics() {
                m.logins_refused.inc();
            }
        }
    }
}

impl Connection {
    /// What tells a follower on `channel` that its client left.
    fn followed(&mut self, channel: ChannelId) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.channels.entry(channel).or_default().following = Some(tx);
        rx
    }

    fn owner(&self, key: &ssh_key::PublicKey) -> Option<String> {
        match self.node.users().owner_of(key) {
            Ok(owner) => owner,
            Err(e) => {
                tracing::error!(error = %e, "reading the users file");
                None
            }
        }
    }

    /// Text for the terminal: with a pty, newlines need carriage returns.
    fn term(&self, channel: ChannelId, text: &str) -> Vec<u8> {
        if self.channels.get(&channel).is_some_and(|c| c.pty) {
            text.replace('\n', "\r\n").into_bytes()
        } else {
            text.as_bytes().to_vec()
        }
    }

    async fn run(&self, line: String) -> Reply {
        let node = self.node.clone();
        let user = self.user.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || node.run(&user, &line))
            .await
            .unwrap_or_else(|e| Reply {
                out: String::new(),
                err: format!("internal error: {e}\n"),
                status: 1,
            })
    }
}

/// Why the front door refuses every forward: the client prints it
/// (`open failed: administratively prohibited: …`).
fn not_a_machine() -> russh::ChannelOpenFailure {
    russh::ChannelOpenFailure::Other {
        code: 1,
        reason: "the front door is not a machine; forward through an environment's own login (ssh -p PORT -L …)".into(),
    }
}

/// `logs -f JOB`: the job's output as it comes, until it has ended and
/// all of it was sent (or the client left). A job another storage node
/// holds is followed through that node.
async fn follow(
    node: Arc<Node>,
    user: String,
    id: String,
    handle: russh::server::Handle,
    channel: ChannelId,
    mut left: tokio::sync::oneshot::Receiver<()>,
) {
    let mut sent = 0u64;
    let mut source = match find_log(&node, &user, &id).await {
        Ok(source) => Some(source),
        Err(why) => {
            let _ = handle
                .extended_data(channel, 1, format!("logs {id}: {why}\n").into_bytes())
                .await;
            None
        }
    };
    let status = loop {
        let Some(from) = source.as_mut() else {
            break Err(String::new());
        };
        let (ended, data) = match from.next(&node, &user, &id, sent).await {
            Ok(got) => got,
            Err(e) => break Err(e),
        };
        if !data.is_empty() {
            sent += data.len() as u64;
            if handle.data(channel, data).await.is_err() {
                return;
            }
            continue;
        }
        if ended {
            break Ok(());
        }
        if !still_followed(&mut left, std::time::Duration::from_millis(200)).await {
            return;
        }
    };
    let code = match status {
        Ok(()) => 0,
        Err(why) => {
            if !why.is_empty() {
                let _ = handle
                    .extended_data(channel, 1, format!("logs {id}: {why}\n").into_bytes())
                    .await;
            }
            1
        }
    };
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// `service logs -f NAME`: the service's log as it grows, until the
/// service is removed (or the client leaves). A log trimmed meanwhile is
/// read again from its new start. A service another storage node keeps
/// is followed through that node.
async fn follow_service(
    node: Arc<Node>,
    user: String,
    name: String,
    handle: russh::server::Handle,
    channel: ChannelId,
    mut left: tokio::sync::oneshot::Receiver<()>,
) {
    let (mut sent, mut trims) = (0u64, 0u32);
    // The peer that keeps it, once known, over one connection.
    let mut peer: Option<Box<replica::ask::Asking>> = None;
    let why = loop {
        let got = match peer.as_mut() {
            Some(asking) => {
                let line = format!("service-log-since {name} {sent} {trims}");
                match asking
                    .ask(&user, &line, std::time::Duration::from_secs(30))
                    .await
                {
                    Ok(t) if t.status == 0 => {
                        let mut said = t.err.split_whitespace().map(str::parse::<u64>);
                        match (said.next(), said.next()) {
                            (Some(Ok(from)), Some(Ok(now))) => Ok(Some((from, now as u32, t.out))),
                            _ => Err(format!("an answer that does not read: {:?}", t.err)),
                        }
                    }
                    Ok(t) if t.status == crate::NOT_HERE => Ok(None),
                    Ok(t) => Err(t.err.trim_end().to_string()),
                    Err(why) => Err(why),
                }
            }
            None => {
                let (n, u, s) = (node.clone(), user.clone(), name.clone());
                let here = tokio::task::spawn_blocking(move || {
                    let services = n.services().map_err(|e| e.to_string())?;
                    match services.get(&u, &s) {
                        Some(service) => Ok(Ok(Some(service.log_from(sent, trims)))),
                        None if sent > 0 => Ok(Ok(None)),
                        None => match n.held_by_peer(&u, &format!("service ls {s}")) {
                            Some(peer) => Ok(Err(peer)),
                            None => Err(format!("no service {s} of yours")),
                        },
                    }
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match here {
                    Ok(Ok(got)) => Ok(got),
                    // Kept by a peer: followed there from now on.
                    Ok(Err(keeper)) => match node.peers() {
                        Some(peers) => match peers.open(&keeper).await {
                            Ok(asking) => {
                                peer = Some(Box::new(asking));
                                continue;
                            }
                            Err(why) => {
                                Err(format!("storage node {keeper}, which keeps it: {why}"))
                            }
                        },
                        None => Err("this node has no peers now".into()),
                    },
                    Err(why) => Err(why),
                }
            }
        };
        match got {
            Ok(Some((from, now, data))) => {
                (sent, trims) = (from + data.len() as u64, now);
                if !data.is_empty() {
                    if handle.data(channel, data).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            // Removed: its log has ended.
            Ok(None) => break None,
            Err(why) => break Some(why),
        }
        if !still_followed(&mut left, std::time::Duration::from_millis(200)).await {
            return;
        }
    };
    let code = match why {
        None => 0,
        Some(why) => {
            let _ = handle
                .extended_data(
                    channel,
                    1,
                    format!("service logs {name}: {why}\n").into_bytes(),
                )
                .await;
            1
        }
    };
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Where a followed job's log is read.
enum LogSource {
    Here,
    /// A peer's, over one connection kept for the follow.
    Peer(Box<replica::ask::Asking>),
}

/// Where `user`'s job `id` is held: here, or the peer that holds it.
async fn find_log(node: &Arc<Node>, user: &str, id: &str) -> Result<LogSource, String> {
    let (n, u, i) = (node.clone(), user.to_string(), id.to_string());
    let held = tokio::task::spawn_blocking(move || {
        let here = n.jobs().and_then(|j| j.record(&u, &i));
        match (here, n.peers()) {
            (Ok(_), _) => Ok(None),
            (Err(e), None) => Err(e.to_string()),
            (Err(e), Some(peers)) => {
                // Where it is, without its bytes (they come in the follow).
                let line = format!("logs-since {i} {}", u64::MAX);
                match peers.ask_in_turn(&u, &line, std::time::Duration::from_secs(10), |t| {
                    t.status != crate::NOT_HERE
                }) {
                    Ok((peer, t)) if t.status == 0 => Ok(Some(peer)),
                    Ok((peer, t)) => Err(format!("storage node {peer}: {}", t.err.trim_end())),
                    Err(unasked) => {
                        let mut why = e.to_string();
                        for (peer, said) in unasked {
                            why.push_str(&format!(
                                "; storage node {peer}, which may hold it, is {said}"
                            ));
                        }
                        Err(why)
                    }
                }
            }
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    match held {
        None => Ok(LogSource::Here),
        Some(peer) => {
            let peers = node.peers().ok_or("this node has no peers now")?;
            Ok(LogSource::Peer(Box::new(peers.open(&peer).await?)))
        }
    }
}

impl LogSource {
    /// Whether the job has ended, and what it logged from byte `from` on.
    async fn next(
        &mut self,
        node: &Arc<Node>,
        user: &str,
        id: &str,
        from: u64,
    ) -> Result<(bool, Vec<u8>), String> {
        match self {
            LogSource::Here => {
                let jobs = node.jobs().map_err(|e| e.to_string())?.clone();
                let (u, i) = (user.to_string(), id.to_string());
                tokio::task::spawn_blocking(move || {
                    let ended = !jobs.record(&u, &i)?.state.active();
                    Ok::<_, GridError>((ended, jobs.log(&u, &i, from)?))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            LogSource::Peer(asking) => {
                let line = format!("logs-since {id} {from}");
                let told = asking
                    .ask(user, &line, std::time::Duration::from_secs(30))
                    .await?;
                if told.status != 0 {
                    return Err(told.err.trim_end().to_string());
                }
                Ok((told.err == crate::ENDED, told.out))
            }
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.owner(offer.public_key).is_some() {
            Auth::Accept
        } else {
            self.refused = true;
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        claimed: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.owner(key.public_key) {
            Some(user) => {
                if user != claimed {
                    tracing::info!(claimed, user = %user, "client claimed another name; the key decides");
                }
                tracing::info!(user = %user, peer = %self.peer, "authenticated");
                self.logging_in.logged_in();
                self.user = Some(user);
                Ok(Auth::Accept)
            }
            None => {
                // Logged (within a budget) when the connection goes.
                self.refused = true;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), Interactive::default());
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(user = ?self.user, host, port, "refused a forward at the front door");
        reply.reject(not_a_machine()).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(not_a_machine()).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // A global request's refusal carries no reason: the log says it.
        tracing::info!(user = ?self.user, address, port = *port, "refused a remote forward at the front door: it is not a machine; forward through an environment's login");
        Ok(false)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().pty = true;
        session.channel_success(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let line = String::from_utf8_lossy(data).into_owned();
        tracing::info!(user = ?self.user, command = %line, "command");
        let handle = session.handle();
        let node = self.node.clone();
        let user = self.user.clone().unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["import", name, rest @ ..] = words.as_slice()
            && rest.len() <= 1
        {
            let name = name.to_string();
            // Refused before a byte of the stream is read.
            let checked = import::Format::parse(rest.first().copied())
                .map_err(GridError::refused)
                .and_then(|f| node.check_import(&user, &name).map(|()| f));
            let format = match checked {
                Ok(f) => f,
                Err(e) => {
                    session.extended_data(
                        channel,
                        1,
                        format!("import {name}: {e}\n").into_bytes(),
                    )?;
                    session.exit_status_request(channel, 1)?;
                    session.eof(channel)?;
                    session.close(channel)?;
                    return Ok(());
                }
            };
            // A few chunks in flight: a slow store holds the client back
            // (through SSH's window) instead of filling memory.
            let (to, from) = tokio::sync::mpsc::channel(16);
            let client = to.downgrade();
            self.channels.entry(channel).or_default().input = Some(Input::Import(to));
            tokio::spawn(async move {
                let mut stream = ImportStream {
                    from,
                    chunk: Vec::new(),
                    at: 0,
                    ended: false,
                };
                let reply = tokio::task::spawn_blocking(move || {
                    // Every sender gone: the client left (the connection
                    // or its channel closed), so its import is cancelled.
                    let client_left = move || client.upgrade().is_none();
                    let upload = import::Upload {
                        format: &format,
                        input: &mut stream,
                        cancelled: &client_left,
                    };
                    node.import(&user, &name, upload)
                })
                .await
                .unwrap_or_else(|e| Reply {
                    out: String::new(),
                    err: format!("internal error: {e}\n"),
                    status: 1,
                });
                let _ = handle.data(channel, reply.out.into_bytes()).await;
                let _ = handle
                    .extended_data(channel, 1, reply.err.into_bytes())
                    .await;
                let _ = handle.exit_status_request(channel, reply.status).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
            });
            return Ok(());
        }
        if let ["service", "logs", "-f", name] = words.as_slice() {
            let left = self.followed(channel);
            tokio::spawn(follow_service(
                node,
                user,
                name.to_string(),
                handle,
                channel,
                left,
            ));
            return Ok(());
        }
        if let ["logs", "-f", id] = words.as_slice() {
            let left = self.followed(channel);
            tokio::spawn(follow(node, user, id.to_string(), handle, channel, left));
            return Ok(());
        }
        if words.first() == Some(&"run") {
            let request = match run::RunRequest::parse(&line) {
                Ok(r) => r,
                Err(why) => {
                    session.extended_data(channel, 1, format!("{why}\n").into_bytes())?;
                    session.exit_status_request(channel, 2)?;
                    session.eof(channel)?;
                    session.close(channel)?;
                    return Ok(());
                }
            };
            if request.detached {
                let answer = run::submit_jobs(&node, &user, request);
                let (text, status) = match answer {
                    Ok(ids) => (ids.iter().map(|id| format!("job {id}\n")).collect(), 0),
                    Err(e) => (format!("run: {e}\n"), 1),
                };
                if status == 0 {
                    session.data(channel, text.into_bytes())?;
                } else {
                    session.extended_data(channel, 1, text.into_bytes())?;
                }
                session.exit_status_request(channel, status)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
            let (to, input) = run::input_pipe(node.input_budget(&user));
            self.channels.entry(channel).or_default().input = Some(Input::Run(to));
            tokio::spawn(run::serve(node, user, request, handle, channel, input));
            return Ok(());
        }
        // Run it off the session task, so the connection keeps being served.
        tokio::spawn(async move {
            let reply = tokio::task::spawn_blocking(move || node.run(&user, &line))
                .await
                .unwrap_or_else(|e| Reply {
                    out: String::new(),
                    err: format!("internal error: {e}\n"),
                    status: 1,
                });
            if !reply.out.is_empty() {
                let _ = handle.data(channel, reply.out.into_bytes()).await;
            }
            if !reply.err.is_empty() {
                let _ = handle
                    .extended_data(channel, 1, reply.err.into_bytes())
                    .await;
            }
            let _ = handle.exit_status_request(channel, reply.status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.channels.entry(channel).or_default().shell = true;
        let user = self.user.clone().unwrap_or_default();
        let banner = format!("colony grid: you are {user}\n{}\n{user}% ", commands());
        session.data(channel, self.term(channel, &banner))?;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(to) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            // The importer or the run may have stopped (an error): the
            // rest is dropped.
            if !data.is_empty() {
                to.send(data.to_vec()).await;
            }
            return Ok(());
        }
        // A one-shot command's standard input belongs to that command, and
        // only `import` reads it: it is never run as commands (a tar sent
        // to a mistyped `import` must not have its lines executed).
        if !self.channels.get(&channel).is_some_and(|c| c.shell) {
            return Ok(());
        }
        let pty = self.channels.get(&channel).is_some_and(|c| c.pty);
        let mut lines = Vec::new();
        {
            let state = self.channels.entry(channel).or_default();
            for &b in data {
                match b {
                    b'\r' | b'\n' => {
                        if pty {
                            session.data(channel, b"\r\n".to_vec())?;
                        }
                        let line = std::mem::take(&mut state.line);
                        lines.push(if std::mem::take(&mut state.too_long) {
                            Err(())
                        } else {
                            Ok(String::from_utf8_lossy(&line).into_owned())
                        });
                    }
                    0x7f | 0x08 if pty => {
                        if state.line.pop().is_some() {
                            session.data(channel, b"\x08 \x08".to_vec())?;
                        }
                    }
                    0x03 if pty => {
                        state.line.clear();
                        state.too_long = false;
                        session.data(channel, b"^C\r\n".to_vec())?;
                        lines.push(Ok(String::new()));
                    }
                    0x04 if state.line.is_empty() => lines.push(Ok("exit".into())),
                    // Past the longest line a command can be, the rest
                    // is dropped (and the line refused when it ends), so a
                    // prompt fed without newlines holds bounded memory.
                    _ if state.line.len() >= MAX_LINE => state.too_long = true,
                    b => {
                        state.line.push(b);
                        if pty {
                            session.data(channel, vec![b])?;
                        }
                    }
                }
            }
        }
        let user = self.user.clone().unwrap_or_default();
        for line in lines {
            let Ok(line) = line else {
                let err = format!("a command line is at most {MAX_LINE} bytes\n");
                session.data(channel, self.term(channel, &err))?;
                session.data(channel, self.term(channel, &format!("{user}% ")))?;
                continue;
            };
            let trimmed = line.trim();
            if trimmed == "exit" {
                session.exit_status_request(channel, 0)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
            if !trimmed.is_empty() {
                tracing::info!(user = %user, command = %trimmed, "command");
                let reply = self.run(trimmed.to_string()).await;
                if !reply.out.is_empty() {
                    session.data(channel, self.term(channel, &reply.out))?;
                }
                // At the prompt an error goes to the terminal in order with
                // the rest (on stderr it could land after the next prompt).
                if !reply.err.is_empty() {
                    session.data(channel, self.term(channel, &reply.err))?;
                }
            }
            session.data(channel, self.term(channel, &format!("{user}% ")))?;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Its import (if any) loses its sender: the importer stops.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The end of an import's stream (its sender stays until the
        // channel closes: see ImportStream).
        if let Some(to) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            to.send(Vec::new()).await;
        }
        // End of input at the prompt: finish like `exit`. (A one-shot
        // command's channel closes when the command is done.)
        if self.channels.get(&channel).is_some_and(|c| c.shell) {
            session.exit_status_request(channel, 0)?;
            session.close(channel)?;
        }
        Ok(())
    }
}
