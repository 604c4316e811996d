//! Keeping a replica running, and rolling a service out to a new root.
//!
//! A replica's keeper runs it (a [`crate::run`] with no input, its output
//! to the service's log) and, beside each run, watches its health: a
//! replica is up once its check passes, and its run is ended when the
//! check fails three times in a row once up, or has not passed a minute
//! after its environment started. Whenever the run ends (the command
//! exited, the check failed, the cpu node was lost) the keeper starts it
//! again: at once after a first loss, else after a backoff that doubles
//! from one second to thirty and starts over once a replica has been up
//! for a minute, so a command that crashes at once restarts a few times a
//! minute, not in a loop.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use grid::error::{GridError, GridResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Health, Placed, Replica, Service, State};
use crate::Node;
use crate::run::{self, Ended, Failure, Output, RunRequest, Session};

/// How long a started replica has to pass its health check.
const START_GRACE: Duration = Duration::from_secs(60);
/// Checks that fail in a row before an up replica is restarted.
const MISSES: u32 = 3;
/// How often health is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a replica without a check runs before it counts as up.
const UP_AFTER: Duration = Duration::from_secs(1);
/// Up this long, a replica's next restart starts the backoff over.
const STEADY: Duration = Duration::from_secs(60);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a rollout waits for a new replica to come up.
const ROLLOUT_WAIT: Duration = Duration::from_secs(90);

/// Where a replica's run reports: its output to the service's log, its
/// environment's place to the replica.
pub struct ReplicaRun {
    service: Arc<Service>,
    replica: Arc<Replica>,
    /// How to log in to its environment, once it started.
    login: std::sync::Mutex<Option<(crate::Spawned, russh::keys::PrivateKey)>>,
}

impl ReplicaRun {
    pub fn log(&self, data: &[u8]) {
        self.service.log(data);
    }

    /// Its environment `env` started as `spawned` says; `key` logs in to
    /// it (for a health check that runs there).
    pub fn started(&self, env: &str, spawned: &crate::Spawned, key: russh::keys::PrivateKey) {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = Some((spawned.clone(), key));
        let placed = Placed {
            env: env.to_string(),
            node: spawned.node.clone(),
            ports: published(&spawned.text),
        };
        *self
            .replica
            .placed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(placed);
        self.replica.set_state(State::Checking);
        self.service.changed();
    }
}

/// The ports a spawn's reply says it published: (environment port, host,
/// node port) from its `port P published at HOST:N` lines.
fn published(reply: &str) -> Vec<(u16, String, u16)> {
    reply
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("port ")?;
            let (port, at) = rest.split_once(" published at ")?;
            let (host, node_port) = at.trim().rsplit_once(':')?;
            Some((
                port.parse().ok()?,
                host.to_string(),
                node_port.parse().ok()?,
            ))
        })
        .collect()
}

/// Starts keeping `replica` of `service`.
pub fn start(node: Arc<Node>, service: Arc<Service>, replica: Arc<Replica>) {
    tokio::spawn(keep(node, service, replica));
}

/// Per replica: why its last run was ended by its keeper, and since when
/// it has been up.
#[derive(Default)]
struct Watched {
    why: std::sync::Mutex<Option<String>>,
    up_since: std::sync::Mutex<Option<Instant>>,
}

async fn keep(node: Arc<Node>, service: Arc<Service>, replica: Arc<Replica>) {
    let mut failures = 0u32;
    while !replica.retired() && !service.gone() {
        let spec = service.spec();
        let mut options = spec.options.clone();
        options.extend(spec.publish.iter().map(|p| format!("publish={p}")));
        let aimed = {
            // One replica of the service chooses at a time, so two that
            // start together see each other's choice.
            let _one = service.placing.lock().unwrap_or_else(|p| p.into_inner());
            let aimed = choose_node(&node, &service, &replica);
            *replica.aimed.lock().unwrap_or_else(|p| p.into_inner()) = aimed.clone();
            aimed
        };
        if let Some(n) = &aimed {
            options.push(format!("node={n}"));
        }
        let request = RunRequest {
            detached: false,
            root: replica.root.clone(),
            options,
            timeout: None,
            save: None,
            command: spec.command.clone(),
            count: 1,
            retries: 0,
            line: String::new(),
            name: Some(format!("{}.{}", spec.name, replica.number)),
        };
        let cancel = Arc::new(tokio::sync::Notify::new());
        *replica.cancel.lock().unwrap_or_else(|p| p.into_inner()) = cancel.clone();
        if replica.retired() {
            break;
        }
        replica.set_state(State::Starting);
        // No input: its end at once (the sender is kept, so it is not a
        // client that left).
        let (to, input) = run::input_pipe(Arc::default());
        to.send(Vec::new()).await;
        let out = Arc::new(ReplicaRun {
            service: service.clone(),
            replica: replica.clone(),
            login: Default::default(),
        });
        let session = Session {
            output: Output::Replica(out.clone()),
            input,
            cancel: cancel.clone(),
            place: None,
        };
        let watched = Arc::new(Watched::default());
        let health = tokio::spawn(watch(
            node.clone(),
            service.clone(),
            out,
            cancel.clone(),
            watched.clone(),
        ));
        let result = run::run(&node, &service.user, &request, session).await;
        health.abort();
        drop(to);
        // The node stops (or `rm`): the record keeps where this ran, for
        // the next run of the node to end.
        if service.gone() {
            return;
        }
        *replica.placed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if replica.retired() {
            break;
        }
        let steady = watched
            .up_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() >= STEADY);
        failures = if steady { 1 } else { failures + 1 };
        let why = match &result {
            Ok((Ended::Exited(status), _)) => format!("exited with status {status}"),
            Ok((Ended::Cancelled, _)) => watched
                .why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "was ended".into()),
            Ok((Ended::TimedOut, _)) => "timed out".into(),
            Err(Failure::Lost(why)) => format!("was lost: {why}"),
            Err(Failure::Refused(why)) => format!("could not start: {why}"),
        };
        let lost = matches!(result, Err(Failure::Lost(_)));
        let delay = if lost && failures == 1 {
            Duration::ZERO
        } else {
            backoff(failures)
        };
        replica.restarts.fetch_add(1, Ordering::Relaxed);
        replica.set_state(State::Restarting {
            why: why.clone(),
            at: SystemTime::now() + delay,
        });
        service.tell(
            &node,
            &format!(
                "replica {}.{} {why}; starting again in {}s",
                service.name,
                replica.number,
                delay.as_secs()
            ),
        );
        service.changed();
        let retired = async {
            while !replica.retired() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), replica.changed.notified()).await;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = retired => {}
        }
    }
    if !service.gone() {
        *replica.placed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        service.changed();
    }
}

/// The wait before restart number `failures` (1, 2, 4, … seconds, at
/// most [`MAX_BACKOFF`]).
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

/// A cpu node for `replica`: one with room that no other replica of the
/// service runs on (or is starting on), the roomiest first; else any
/// with room; None where the node cannot be chosen or none has room (the
/// run then waits its turn).
fn choose_node(node: &Node, service: &Service, replica: &Arc<Replica>) -> Option<String> {
    let rooms = node.room_by_node();
    let taken: HashSet<String> = service
        .replicas()
        .iter()
        .filter(|r| !Arc::ptr_eq(r, replica) && !r.retired())
        .filter_map(|r| {
            r.placed()
                .map(|p| p.node)
                .or_else(|| r.aimed.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })
        .collect();
    let mut open: Vec<(String, usize)> = rooms.into_iter().filter(|(_, room)| *room > 0).collect();
    open.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    open.iter()
        .find(|(n, _)| !taken.contains(n))
        .or(open.first())
        .map(|(n, _)| n.clone())
}

/// Watches a run of `replica`: up once its health check passes; its run
/// ended (`cancel`) when the check fails [`MISSES`] times once up, or has
/// not passed [`START_GRACE`] after its environment started.
async fn watch(
    node: Arc<Node>,
    service: Arc<Service>,
    run: Arc<ReplicaRun>,
    cancel: Arc<tokio::sync::Notify>,
    watched: Arc<Watched>,
) {
    let replica = run.replica.clone();
    let placed = loop {
        if let Some(p) = replica.placed() {
            break p;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), replica.changed.notified()).await;
    };
    let health = service.spec().health;
    let target = health.port().and_then(|port| {
        placed
            .ports
            .iter()
            .find(|(p, _, _)| *p == port)
            .map(|(_, host, node_port)| (host.clone(), *node_port))
    });
    let started = Instant::now();
    let (mut up, mut misses) = (false, 0);
    // What the last failed check said, for the reason a replica ends.
    let mut last = String::new();
    let end = |why: String| {
        *watched.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        cancel.notify_one();
    };
    loop {
        let checked = match (&health, &target) {
            (Health::Running, _) => (started.elapsed() >= UP_AFTER)
                .then_some(())
                .ok_or_else(String::new),
            (Health::Tcp(_), Some((host, port))) => probe_tcp(host, *port).await,
            (Health::Http(_, path), Some((host, port))) => probe_http(host, *port, path).await,
            (Health::Cmd(path), _) => {
                let login = run.login.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match login {
                    Some((spawned, key)) => {
                        let status = tokio::time::timeout(
                            CMD_WITHIN,
                            run::exit_status_of(&spawned, &service.user, key, path),
                        )
                        .await;
                        match status {
                            Ok(Ok(0)) => Ok(()),
                            Ok(Ok(n)) => Err(format!("{path} exited with status {n}")),
                            Ok(Err(e)) => Err(e),
                            Err(_) => {
                                Err(format!("{path} took more than {}s", CMD_WITHIN.as_secs()))
                            }
                        }
                    }
                    None => Err("its environment cannot be logged in to yet".into()),
                }
            }
            (_, None) => {
                return end(format!(
                    "its health check's port {} was not published",
                    health.port().unwrap_or(0)
                ));
            }
        };
        let ok = match checked {
            Ok(()) => true,
            Err(why) => {
                last = why;
                false
            }
        };
        if ok {
            misses = 0;
            if !up {
                up = true;
                *watched.up_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                replica.set_state(State::Up);
                let at: Vec<String> = placed
                    .ports
                    .iter()
                    .map(|(p, host, np)| format!("{p} at tcp!{host}!{np}"))
                    .collect();
                service.tell(
                    &node,
                    &format!(
                        "replica {}.{} up on {}{}{}",
                        service.name,
                        replica.number,
                        placed.node,
                        if at.is_empty() { "" } else { ": " },
                        at.join(", ")
                    ),
                );
                service.changed();
            }
        } else if up {
            misses += 1;
            if misses >= MISSES {
                return end(format!("failed its health check {MISSES} times ({last})"));
            }
        } else if started.elapsed() > START_GRACE {
            return end(format!(
                "did not pass its health check within {}s ({last})",
                START_GRACE.as_secs()
            ));
        }
        let every = if up || health == Health::Running {
            CHECK_EVERY
        } else {
            // Coming up: look often, so it counts as up soon after it is.
            Duration::from_millis(200)
        };
        tokio::time::sleep(every).await;
    }
}

/// How long one probe may take.
const PROBE_WITHIN: Duration = Duration::from_secs(2);
/// How long a check program may take.
const CMD_WITHIN: Duration = Duration::from_secs(10);

/// How long a taken connection must stay open (or say something) to count.
const HELD_OPEN: Duration = Duration::from_millis(300);

/// A TCP connection to the published port is taken and served: it stays
/// open a moment or the server speaks. (A published port is forwarded by
/// the environment's network helper, which takes every connection and
/// closes it at once when nothing listens inside: taken alone proves
/// nothing.)
async fn probe_tcp(host: &str, port: u16) -> Result<(), String> {
    let at = format!("tcp!{host}!{port}");
    let connecting = tokio::net::TcpStream::connect((host, port));
    let mut s = match tokio::time::timeout(PROBE_WITHIN, connecting).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("{at}: {e}")),
        Err(_) => {
            return Err(format!(
                "{at}: no connection within {}s",
                PROBE_WITHIN.as_secs()
            ));
        }
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(HELD_OPEN, s.read(&mut byte)).await {
        // Still open and quiet: something listens.
        Err(_) => Ok(()),
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(format!("{at}: closed at once (nothing listens inside)")),
        Ok(Err(e)) => Err(format!("{at}: {e}")),
    }
}

/// `GET path` answered with a 2xx or 3xx status line.
async fn probe_http(host: &str, port: u16, path: &str) -> Result<(), String> {
    let at = format!("http://{host}:{port}{path}");
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The status line is all it reads, and at most this much of it.
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 1024 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let line = head.lines().next().unwrap_or("").trim().to_string();
        match line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
        {
            Some(status) if (200..400).contains(&status) => Ok(()),
            Some(_) => Err(format!("answered {line:?}")),
            None => Err("no HTTP answer".to_string()),
        }
    };
    match tokio::time::timeout(PROBE_WITHIN, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("{at}: {why}")),
        Err(_) => Err(format!(
            "{at}: no answer within {}s",
            PROBE_WITHIN.as_secs()
        )),
    }
}

/// Rolls `service` out to `root`: for each replica of another root, a new
/// one of `root` is started and, once up, an old one retired; a new one
/// that does not come up stops the rollout, and the old ones serve on.
pub fn roll_out(node: Arc<Node>, service: Arc<Service>, root: String) -> GridResult<()> {
    static ROLLING: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let key = (service.user.clone(), service.name.clone());
    {
        let mut rolling = ROLLING.lock().unwrap_or_else(|p| p.into_inner());
        if rolling.contains(&key) {
            return Err(GridError::refused(format!(
                "{} is being rolled out already",
                service.name
            )));
        }
        rolling.push(key.clone());
    }
    *service.note.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("rolling out {root}"));
    service.changed();
    tokio::spawn(async move {
        let outcome = replace_each(&node, &service, &root).await;
        let note = match &outcome {
            Ok(()) => {
                service.spec.lock().unwrap_or_else(|p| p.into_inner()).root = root.clone();
                service.tell(&node, &format!("rolled out {root}"));
                None
            }
            Err(why) => {
                let note = format!("rollout of {root} stopped: {why}; the others run the old root");
                service.tell(&node, &note);
                Some(note)
            }
        };
        *service.note.lock().unwrap_or_else(|p| p.into_inner()) = note;
        service.changed();
        ROLLING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| *k != key);
    });
    Ok(())
}

async fn replace_each(node: &Arc<Node>, service: &Arc<Service>, root: &str) -> Result<(), String> {
    let old: Vec<Arc<Replica>> = service
        .replicas()
        .into_iter()
        .filter(|r| r.root != root && !r.retired())
        .collect();
    for (replaced_so_far, replaced) in old.into_iter().enumerate() {
        if service.gone() {
            return Err("the service was removed".into());
        }
        let new = service.add_replica(node, root.to_string());
        let deadline = Instant::now() + ROLLOUT_WAIT;
        loop {
            if service.gone() {
                new.retire();
                return Err("the service was removed".into());
            }
            let state = new.state();
            if state == State::Up {
                break;
            }
            let failed = match &state {
                State::Restarting { why, .. } => Some(why.clone()),
                _ if Instant::now() > deadline => {
                    Some(format!("not up within {}s", ROLLOUT_WAIT.as_secs()))
                }
                _ => None,
            };
            if let Some(why) = failed {
                new.retire();
                service.drop_replica(&new);
                let mut said = format!("its replica {}.{} {why}", service.name, new.number);
                if replaced_so_far > 0 {
                    said.push_str(&format!(
                        "; {replaced_so_far} replicas run {root} already (a restart of the storage node starts them on the old root)"
                    ));
                }
                return Err(said);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), new.changed.notified()).await;
        }
        replaced.retire();
        service.drop_replica(&replaced);
        service.changed();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_a_ceiling() {
        let waits: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_spawns_reply_names_its_published_ports() {
        let reply = "web.0-1a2b spawned\nlog in with: ssh -p 20001 alice@10.0.0.3\nport 8080 published at 10.0.0.3:30001\nport 22 published at 10.0.0.3:30002\n";
        assert_eq!(
            published(reply),
            [
                (8080, "10.0.0.3".to_string(), 30001),
                (22, "10.0.0.3".to_string(), 30002)
            ]
        );
        assert!(published("port x published at y").is_empty());
    }
}
