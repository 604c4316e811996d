//! The grid's other storage nodes, as one storage node's commands see
//! them: a user's environments and jobs are held by the storage node that
//! placed or accepted them, and the others ask it ([`replica::ask`])
//! rather than keep copies that could disagree. So `status` and `jobs`
//! through any storage node list the user's work on every node in reach,
//! a command for an environment or a job another node holds is carried
//! out there, and a spawn is refused when the name runs anywhere.
//!
//! A peer whose replication link is down is not asked (a partition would
//! otherwise cost every command a dial timeout): listings say it is out of
//! reach and what they therefore leave out, and a spawn goes ahead, so on
//! each side of a partition a user may start a name the other side runs.

use std::sync::Arc;
use std::time::Duration;

use replica::Peer;
use replica::ask::{Asking, Told};

/// How long a peer has to take a connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// The other storage nodes this node replicates with.
pub struct Peers {
    link: Arc<link::Link>,
    replicator: Arc<replica::Replicator>,
    runtime: tokio::runtime::Handle,
}

/// One peer's answer, or why there is none.
pub struct Answer {
    pub peer: String,
    pub told: Result<Told, String>,
}

impl Peers {
    pub fn new(
        link: Arc<link::Link>,
        replicator: Arc<replica::Replicator>,
        runtime: tokio::runtime::Handle,
    ) -> Peers {
        Peers {
            link,
            replicator,
            runtime,
        }
    }

    /// The colony peers, and whether this node's link to each is up.
    fn known(&self) -> Vec<(Peer, bool)> {
        let (outgoing, _) = self.replicator.board.snapshot();
        self.replicator
            .peers
            .iter()
            .filter(|p| !p.plain_venti)
            .map(|p| {
                let up = outgoing.get(&p.name).is_some_and(|o| o.connected);
                (p.clone(), up)
            })
            .collect()
    }

    /// The replication it asks over.
    pub fn replicator(&self) -> &Arc<replica::Replicator> {
        &self.replicator
    }

    /// This node's name, as its peers know it.
    pub fn me(&self) -> &str {
        &self.replicator.node
    }

    /// The colony peers' names.
    pub fn names(&self) -> Vec<String> {
        self.known().into_iter().map(|(p, _)| p.name).collect()
    }

    /// Whether there are peers to ask at all.
    pub fn any(&self) -> bool {
        self.replicator.peers.iter().any(|p| !p.plain_venti)
    }

    /// Asks every peer at once to carry out `line` for `user`, each
    /// within `within`; the answers in the peers' order. A peer whose
    /// link is down answers "out of reach" without being dialled.
    pub fn ask_all(&self, user: &str, line: &str, within: Duration) -> Vec<Answer> {
        let known = self.known();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (peer, up)) in known.iter().enumerate() {
            if !up {
                let _ = tx.send((
                    i,
                    Err(format!(
                        "out of reach: this node's link to it is down{}",
                        self.last_error(&peer.name)
                    )),
                ));
                continue;
            }
            let (tx, link, peer) = (tx.clone(), self.link.clone(), peer.clone());
            let (user, line) = (user.to_string(), line.to_string());
            self.runtime.spawn(async move {
                let told = async {
                    let mut asking = Asking::open(&link, &peer, CONNECT_WITHIN).await?;
                    asking.ask(&user, &line, within).await
                }
                .await;
                let _ = tx.send((i, told));
            });
        }
        drop(tx);
        let mut answers: Vec<Option<Result<Told, String>>> = vec![None; known.len()];
        // Every task sends once, or drops its sender when the runtime
        // ends; the deadline is the tasks' own.
        for (i, told) in rx.iter() {
            answers[i] = Some(told);
        }
        known
            .into_iter()
            .zip(answers)
            .map(|((peer, _), told)| Answer {
                peer: peer.name,
                told: told.unwrap_or_else(|| Err("the node is stopping".into())),
            })
            .collect()
    }

    /// The first answer to `line` that succeeded (exit status 0), asking
    /// every peer at once: which peer, and what it said.
    pub fn first_done(&self, user: &str, line: &str, within: Duration) -> Option<(String, Told)> {
        self.ask_all(user, line, within)
            .into_iter()
            .find_map(|a| match a.told {
                Ok(t) if t.status == 0 => Some((a.peer, t)),
                _ => None,
            })
    }

    /// Asks the peers one after another (those in reach) to carry out
    /// `line` for `user`, until one's answer is `taken` (a command for
    /// work only one node should act on): that peer and its answer, or
    /// the peers that could not be asked and why.
    pub fn ask_in_turn(
        &self,
        user: &str,
        line: &str,
        within: Duration,
        taken: impl Fn(&Told) -> bool,
    ) -> Result<(String, Told), Vec<(String, String)>> {
        let mut unasked = Vec::new();
        for (peer, up) in self.known() {
            if !up {
                let why = format!("out of reach{}", self.last_error(&peer.name));
                unasked.push((peer.name, why));
                continue;
            }
            let link = self.link.clone();
            let (u, l, p) = (user.to_string(), line.to_string(), peer.clone());
            let told = self.block_on(async move {
                let mut asking = Asking::open(&link, &p, CONNECT_WITHIN).await?;
                asking.ask(&u, &l, within).await
            });
            match told {
                Ok(t) if taken(&t) => return Ok((peer.name, t)),
                Ok(_) => {}
                Err(why) if why.contains("did not answer within") => unasked.push((
                    peer.name,
                    format!("slow ({why}; it may still be carrying it out)"),
                )),
                Err(why) => unasked.push((peer.name, format!("out of reach ({why})"))),
            }
        }
        Err(unasked)
    }

    /// Runs `f` on the node's runtime and waits for it, from a thread
    /// that is not one of the runtime's workers.
    fn block_on<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("the node is stopping".into()))
    }

    /// A connection to `peer` for a series of asks (following a log).
    pub async fn open(&self, peer: &str) -> Result<Asking, String> {
        let Some(p) = self.replicator.peers.iter().find(|p| p.name == peer) else {
            return Err(format!("no storage node {peer} among this node's peers"));
        };
        Asking::open(&self.link, p, CONNECT_WITHIN).await
    }

    fn last_error(&self, peer: &str) -> String {
        let (outgoing, _) = self.replicator.board.snapshot();
        match outgoing.get(peer).and_then(|o| o.last_error.clone()) {
            Some((_, why)) => format!(" ({why})"),
            None => String::new(),
        }
    }
}
