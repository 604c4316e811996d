//! `run ROOT [options] -- COMMAND ARGS…` at the front door: work handed to
//! the grid. A fresh environment of ROOT is placed as a spawn is; the
//! storage node logs in to it over SSH with a key made for this run alone
//! (which the login admits besides the owner's), checking the login's host
//! key as its cpu answered it over the control link; COMMAND runs there
//! through the environment's shell. Its stdout and stderr come back as
//! they come, each to its own stream; the session's stdin goes to it; its
//! exit status is the session's. Then, after a zero exit only, `save=NAME`
//! saves the environment to NAME (so a result is an immutable name, bound
//! once its blocks are durable, as any save), and the environment is ended
//! whatever happened: a client that leaves, a timeout, a failure.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{self, PublicKey};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{ChannelId, ChannelMsg};
use tokio::sync::mpsc;

use crate::Node;

/// How `run` is asked for.
pub const USAGE: &str = "run [-d] ROOT [memory=SIZE] [pids=N] [cpu=WEIGHT] [net=private|host] [timeout=DURATION] [save=NAME] -- COMMAND ARGS…";

/// The exit status of a run that timed out, as timeout(1)'s.
const TIMED_OUT: u32 = 124;
/// The exit status of a run that was cancelled (as a shell's after SIGINT).
const CANCELLED: u32 = 130;

/// What a `run` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// `-d`: a job, answered with its id at once (see [`crate::jobs`]).
    pub detached: bool,
    pub root: String,
    /// The spawn's option words (`memory=`, `net=`, …).
    pub options: Vec<String>,
    pub timeout: Option<Duration>,
    /// The name to save the environment to after a zero exit.
    pub save: Option<String>,
    /// What the environment's shell runs, as given after `--`.
    pub command: String,
}

impl RunRequest {
    /// Reads `run ROOT [options] -- COMMAND…` (the whole line as the
    /// session sent it): everything after ` -- ` is the command, as typed.
    pub fn parse(line: &str) -> Result<RunRequest, String> {
        let usage = || format!("usage: {USAGE}");
        let (head, command) = line.split_once(" -- ").ok_or_else(usage)?;
        let command = command.trim().to_string();
        let mut words = head.split_whitespace();
        if words.next() != Some("run") {
            return Err(usage());
        }
        let mut root = words.next().ok_or_else(usage)?;
        let detached = root == "-d";
        if detached {
            root = words.next().ok_or_else(usage)?;
        }
        let root = root.to_string();
        if command.is_empty() {
            return Err(format!("no command after --: {}", usage()));
        }
        let (mut options, mut timeout, mut save) = (Vec::new(), None, None);
        for word in words {
            match word.split_once('=') {
                Some(("timeout", value)) => {
                    let d = units::parse_duration(value)
                        .map_err(|e| format!("timeout={value}: {e}"))?;
                    if d.is_zero() {
                        return Err("timeout=0: a run needs some time".into());
                    }
                    timeout = Some(d);
                }
                Some(("save", name)) => {
                    grid::names::check_score_name(name).map_err(|e| e.to_string())?;
                    save = Some(name.to_string());
                }
                Some(("publish" | "userns" | "agent" | "node", _)) => {
                    return Err(format!(
                        "{word}: a run takes memory=, pids=, cpu=, net=, timeout= and save="
                    ));
                }
                _ => options.push(word.to_string()),
            }
        }
        Ok(RunRequest {
            detached,
            root,
            options,
            timeout,
            save,
            command,
        })
    }
}

/// Where a run's output goes: the front door's channel (a run in the
/// foreground), or a job's log (see [`crate::jobs`]).
pub enum Output {
    Channel {
        handle: russh::server::Handle,
        channel: ChannelId,
    },
    Job(Arc<crate::jobs::Running>),
}

impl Output {
    /// Passes on a piece of stdout (`err` false) or stderr; false when
    /// nobody hears it any more (the client left).
    async fn write(&self, err: bool, data: Vec<u8>) -> bool {
        match self {
            Output::Channel { handle, channel } if err => {
                handle.extended_data(*channel, 1, data).await.is_ok()
            }
            Output::Channel { handle, channel } => handle.data(*channel, data).await.is_ok(),
            Output::Job(job) => {
                job.log(&data);
                true
            }
        }
    }
}

/// What a run's session is: where its output goes, where its input comes
/// from (chunks; an empty one is the end of input; every sender gone is a
/// client that left), and what cancels it.
pub struct Session {
    pub output: Output,
    pub input: mpsc::Receiver<Vec<u8>>,
    pub cancel: Arc<tokio::sync::Notify>,
}

/// How a run ended, when its command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The command exited with this status.
    Exited(u32),
    /// Its `timeout=` passed.
    TimedOut,
    /// `cancel` ended it.
    Cancelled,
}

impl Ended {
    /// The status a session exits with.
    pub fn status(self) -> u32 {
        match self {
            Ended::Exited(s) => s,
            Ended::TimedOut => TIMED_OUT,
            Ended::Cancelled => CANCELLED,
        }
    }
}

/// Runs `request` for `user` in the foreground and answers the session on
/// `handle`'s `channel`: its output, its exit status, and the channel
/// closed.
pub async fn serve(
    node: Arc<Node>,
    user: String,
    request: RunRequest,
    handle: russh::server::Handle,
    channel: ChannelId,
    input: mpsc::Receiver<Vec<u8>>,
) {
    let session = Session {
        output: Output::Channel {
            handle: handle.clone(),
            channel,
        },
        input,
        cancel: Arc::default(),
    };
    let status = match run(&node, &user, &request, session).await {
        Ok((ended, _)) => ended.status(),
        Err(why) => {
            let _ = handle
                .extended_data(
                    channel,
                    1,
                    format!("run {}: {why}\n", request.root).into_bytes(),
                )
                .await;
            1
        }
    };
    let _ = handle.exit_status_request(channel, status).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Starts `request` as a job of `user`'s (`run -d`): its id, at once; it
/// runs on (with no input) and its record and log tell how it went.
pub fn start_job(
    node: &Arc<Node>,
    user: &str,
    request: RunRequest,
) -> grid::error::GridResult<String> {
    use crate::jobs::State;
    let job = node.jobs()?.submit(user, &request.root, &request.command)?;
    let id = job.id();
    let (node, user) = (node.clone(), user.to_string());
    tokio::spawn(async move {
        // No input: its end at once (the sender is kept, so it is not a
        // client that left).
        let (to, input) = mpsc::channel(1);
        let _ = to.send(Vec::new()).await;
        let session = Session {
            output: Output::Job(job.clone()),
            input,
            cancel: job.cancel.clone(),
        };
        let result = run(&node, &user, &request, session).await;
        drop(to);
        match result {
            Ok((Ended::Exited(0), saved)) => job.finish(State::Succeeded, Some(0), saved, None),
            Ok((Ended::Exited(status), _)) => job.finish(State::Failed, Some(status), None, None),
            Ok((Ended::TimedOut, _)) => job.finish(
                State::Failed,
                Some(TIMED_OUT),
                None,
                Some("timed out".into()),
            ),
            Ok((Ended::Cancelled, _)) => job.finish(State::Cancelled, None, None, None),
            Err(why) => {
                job.log(format!("run {}: {why}\n", request.root).as_bytes());
                job.finish(State::Failed, None, None, Some(why))
            }
        }
    });
    Ok(id)
}

/// Runs `request` for `user`: how it ended, and the name it was saved to
/// (with `save=`, after a zero exit).
pub async fn run(
    node: &Arc<Node>,
    user: &str,
    request: &RunRequest,
    mut session: Session,
) -> Result<(Ended, Option<String>), String> {
    let key = one_time_key()?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("encoding the run's key: {e}"))?;
    let env = format!("{}.run-{}", request.root, hex(&random::<4>()?));
    let spawned = {
        let (node, user, root, env, options) = (
            node.clone(),
            user.to_string(),
            request.root.clone(),
            env.clone(),
            request.options.clone(),
        );
        tokio::task::spawn_blocking(move || {
            node.spawn_for_run(&user, &root, &env, &options, public)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    if let Output::Job(job) = &session.output {
        job.started(&env);
    }
    // From here on the environment is this run's to end.
    let ran = in_environment(&spawned, user, key, request, &mut session).await;
    let ended = match ran {
        Ok(ended) => ended,
        Err(why) => {
            boom(node, user, &env).await;
            return Err(why);
        }
    };
    let mut saved = None;
    let mut ended = ended;
    if ended == Ended::Exited(0)
        && let Some(name) = &request.save
    {
        let reply = command(node, user, format!("save {env} {name}")).await;
        let note = if reply.status == 0 {
            saved = Some(name.clone());
            format!("run: saved to {name}\n")
        } else {
            // The command succeeded; its result could not be kept.
            ended = Ended::Exited(1);
            format!("run: saving to {name} failed: {}", reply.err)
        };
        session.output.write(true, note.into_bytes()).await;
    }
    boom(node, user, &env).await;
    Ok((ended, saved))
}

/// Logs in to the run's environment, runs the command, relays both ways;
/// its exit status.
async fn in_environment(
    spawned: &crate::Spawned,
    user: &str,
    key: PrivateKey,
    request: &RunRequest,
    session: &mut Session,
) -> Result<Ended, String> {
    let (host, port) = login_address(&spawned.login)
        .ok_or_else(|| format!("no login in the spawn's answer {:?}", spawned.login))?;
    let expected = PublicKey::from_openssh(spawned.host_key.trim())
        .map_err(|e| format!("the environment's host key: {e}"))?;
    let config = Arc::new(russh::client::Config {
        // The run lasts as long as its command; its own timeout is above.
        inactivity_timeout: None,
        ..Default::default()
    });
    let mut client = russh::client::connect(config, (host.as_str(), port), HostKey(expected))
        .await
        .map_err(|e| format!("reaching the environment at {host}:{port}: {e}"))?;
    let auth = client
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .map_err(|e| format!("logging in to the environment: {e}"))?;
    if !auth.success() {
        return Err("the environment refused the run's key".into());
    }
    let env = client
        .channel_open_session()
        .await
        .map_err(|e| format!("opening a session in the environment: {e}"))?;
    env.exec(true, request.command.as_bytes())
        .await
        .map_err(|e| format!("starting the command: {e}"))?;
    let deadline = request.timeout.map(|t| tokio::time::Instant::now() + t);
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let cancel = session.cancel.clone();
    let (output, input) = (&session.output, &mut session.input);
    // Input is fed while output is read, never one waiting on the other:
    // a command that reads its input only after writing output (cat with
    // more than a window of both) would otherwise wait on us as we wait on
    // it.
    let (mut from_env, to_env) = env.split();
    let feeding = async {
        while let Some(chunk) = input.recv().await {
            if chunk.is_empty() {
                let _ = to_env.eof().await;
                return Fed::Ended;
            }
            if to_env.data(&chunk[..]).await.is_err() {
                return Fed::Ended;
            }
        }
        Fed::ClientLeft
    };
    tokio::pin!(feeding);
    let (mut fed, mut status) = (false, None);
    loop {
        tokio::select! {
            () = &mut expired => {
                let t = request.timeout.map(units::duration_text).unwrap_or_default();
                let note = format!("run: timed out after {t}\n");
                output.write(true, note.into_bytes()).await;
                return Ok(Ended::TimedOut);
            }
            () = cancel.notified() => {
                output.write(true, b"run: cancelled\n".to_vec()).await;
                return Ok(Ended::Cancelled);
            }
            outcome = &mut feeding, if !fed => match outcome {
                Fed::Ended => fed = true,
                // The client left: so does the run.
                Fed::ClientLeft => return Err("the client left".into()),
            },
            msg = from_env.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if !output.write(false, data.to_vec()).await {
                        return Err("the client left".into());
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    if !output.write(true, data.to_vec()).await {
                        return Err("the client left".into());
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { .. }) => status = status.or(Some(128 + 9)),
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    status
        .map(Ended::Exited)
        .ok_or_else(|| "the environment ended before its command did".into())
}

/// How feeding a run's input ended.
enum Fed {
    /// Its end was passed on (or the command stopped taking it).
    Ended,
    /// The client left before its end.
    ClientLeft,
}

/// The host and port of a login command (`ssh -p PORT USER@HOST`).
fn login_address(login: &str) -> Option<(String, u16)> {
    let mut words = login.split_whitespace();
    let (_ssh, _p, port, target) = (words.next()?, words.next()?, words.next()?, words.next()?);
    let host = target.rsplit_once('@')?.1;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

/// Accepts exactly the host key the environment's cpu node said its
/// logins present.
struct HostKey(PublicKey);

impl russh::client::Handler for HostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.0.key_data()
            }
            _ => false,
        })
    }
}

/// A fresh Ed25519 key, never written anywhere.
fn one_time_key() -> Result<PrivateKey, String> {
    let seed = random::<32>()?;
    Ok(PrivateKey::from(
        ssh_key::private::Ed25519Keypair::from_seed(&seed),
    ))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `line` through the node's command set, off the runtime.
async fn command(node: &Arc<Node>, user: &str, line: String) -> crate::Reply {
    let (node, user) = (node.clone(), user.to_string());
    tokio::task::spawn_blocking(move || node.run(&user, &line))
        .await
        .unwrap_or_else(|e| crate::Reply {
            out: String::new(),
            err: format!("internal error: {e}\n"),
            status: 1,
        })
}

/// Ends the run's environment.
async fn boom(node: &Arc<Node>, user: &str, env: &str) {
    let reply = command(node, user, format!("boom {env}")).await;
    if reply.status != 0 {
        tracing::warn!(user, env, error = %reply.err.trim(), "ending a run's environment failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_reads_as_its_parts_and_bad_ones_say_why() {
        let r = RunRequest::parse(
            "run debian memory=1G timeout=5m save=built -- sh -c 'tar x && make'",
        )
        .unwrap();
        assert_eq!(r.root, "debian");
        assert_eq!(r.options, ["memory=1G"]);
        assert_eq!(r.timeout, Some(Duration::from_secs(300)));
        assert_eq!(r.save.as_deref(), Some("built"));
        assert_eq!(r.command, "sh -c 'tar x && make'");
        assert!(!r.detached);
        let d = RunRequest::parse("run -d debian -- make").unwrap();
        assert!(d.detached && d.root == "debian" && d.command == "make");
        for (bad, says) in [
            ("run debian true", "usage"),
            ("run -- true", "usage"),
            ("run -d -- true", "usage"),
            ("run debian -- ", "no command"),
            ("run debian timeout=soon -- true", "timeout=soon"),
            ("run debian timeout=0s -- true", "some time"),
            ("run debian save=../x -- true", "name"),
            ("run debian publish=80 -- true", "a run takes"),
        ] {
            let err = RunRequest::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_login_address_is_read_from_the_login_command() {
        assert_eq!(
            login_address("ssh -p 20001 alice@10.0.0.5"),
            Some(("10.0.0.5".into(), 20001))
        );
        assert_eq!(
            login_address("ssh -p 20001 alice@[::1]"),
            Some(("::1".into(), 20001))
        );
        assert_eq!(login_address("ssh alice@host"), None);
    }
}
