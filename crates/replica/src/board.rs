//! What each link is doing, for `colony grid status`: per peer, how far
//! behind it is, when it was last heard from, how fast blocks travel and
//! the last thing that went wrong. The changes that matter to someone
//! watching (a link up or failing, blocks acknowledged, names sent or
//! merged) are also told as events, to the node's `events` hub.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// One outgoing link's state.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub address: String,
    pub plain_venti: bool,
    pub connected: bool,
    pub last_contact: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
    /// Where the peer stands in this node's log.
    pub position: u64,
    pub names_sent: u64,
    pub blocks_offered: u64,
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    /// (when, bytes_sent) samples of the last seconds, for the rate.
    samples: VecDeque<(Instant, u64)>,
}

impl Outgoing {
    /// Block bytes per second over the last few seconds.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// One incoming link's totals.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub last_contact: Option<SystemTime>,
    pub blocks_stored: u64,
    pub bytes_stored: u64,
    pub blocks_offered: u64,
    pub names_merged: u64,
}

/// Where the board tells its events.
pub type Events = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub struct Board {
    out: Mutex<BTreeMap<String, Outgoing>>,
    inc: Mutex<BTreeMap<String, Incoming>>,
    events: OnceLock<Events>,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Board {
    /// Tells replication's events to `events` from now on.
    pub fn tell(&self, events: Events) {
        let _ = self.events.set(events);
    }

    pub fn outgoing(&self, peer: &str, change: impl FnOnce(&mut Outgoing)) {
        let mut map = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let o = map.entry(peer.to_string()).or_default();
        let before = self.events.get().map(|_| o.clone());
        change(o);
        let now = Instant::now();
        if o.samples.back().is_none_or(|s| s.1 != o.bytes_sent) || o.samples.is_empty() {
            o.samples.push_back((now, o.bytes_sent));
        }
        while o
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.0) > RATE_WINDOW)
            && o.samples.len() > 1
        {
            o.samples.pop_front();
        }
        if let (Some(before), Some(events)) = (before, self.events.get()) {
            for event in outgoing_events(peer, &before, o) {
                events(&event);
            }
        }
    }

    pub fn incoming(&self, peer: &str, change: impl FnOnce(&mut Incoming)) {
        let mut map = self.inc.lock().unwrap_or_else(|p| p.into_inner());
        let i = map.entry(peer.to_string()).or_default();
        let before = i.clone();
        change(i);
        if let Some(events) = self.events.get() {
            if i.blocks_stored > before.blocks_stored {
                events(&format!(
                    "replica: stored {} blocks ({}) from {peer}",
                    i.blocks_stored - before.blocks_stored,
                    human_bytes((i.bytes_stored - before.bytes_stored) as f64)
                ));
            }
            if i.names_merged > before.names_merged {
                events(&format!(
                    "replica: merged {} names from {peer}",
                    i.names_merged - before.names_merged
                ));
            }
        }
    }

    pub fn snapshot(&self) -> (BTreeMap<String, Outgoing>, BTreeMap<String, Incoming>) {
        (
            self.out.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            self.inc.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    }
}

/// What changed on an outgoing link, as events.
fn outgoing_events(peer: &str, before: &Outgoing, now: &Outgoing) -> Vec<String> {
    let mut events = Vec::new();
    if now.connected && !before.connected {
        events.push(format!("replica: linked to {peer} at {}", now.address));
    }
    if now.last_error.as_ref().map(|e| &e.1) != before.last_error.as_ref().map(|e| &e.1)
        && let Some((_, error)) = &now.last_error
    {
        events.push(format!("replica: link to {peer} failed: {error}"));
    } else if before.connected && !now.connected {
        events.push(format!("replica: link to {peer} down"));
    }
    if now.position > before.position {
        events.push(format!(
            "replica: {peer} has this node's log to {} ({} blocks, {} sent so far)",
            now.position,
            now.blocks_sent,
            human_bytes(now.bytes_sent as f64)
        ));
    }
    if now.names_sent > before.names_sent {
        events.push(format!(
            "replica: sent {} names to {peer}",
            now.names_sent - before.names_sent
        ));
    }
    events
}

/// How far behind a peer is, worked out from this node's log and catalog.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behind {
    pub blocks: u64,
    pub bytes: u64,
    pub names: u64,
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{:.1} s ago", d.as_secs_f64()),
        None => "never".into(),
    }
}

pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Where a node's peers stand (see `Replicator::peers`).
#[derive(Debug, Clone)]
pub struct Peers {
    /// Each peer this node sends to, by name, with how far behind it is.
    pub outgoing: Vec<(String, Outgoing, Behind)>,
    /// Each peer that has sent here, by name.
    pub incoming: BTreeMap<String, Incoming>,
}

/// The status text: one paragraph per peer.
pub fn render(node: &str, peers: &Peers) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "node {node}");
    if peers.outgoing.is_empty() {
        let _ = writeln!(s, "no peers configured");
    }
    for (name, o, b) in &peers.outgoing {
        let _ = writeln!(
            s,
            "peer {name} at {}{}: {}",
            o.address,
            if o.plain_venti { " (plain venti)" } else { "" },
            if o.connected {
                "connected"
            } else {
                "not connected"
            }
        );
        let _ = writeln!(
            s,
            "  behind: {} blocks ({}), {} names",
            b.blocks,
            human_bytes(b.bytes as f64),
            b.names
        );
        let _ = writeln!(
            s,
            "  last contact: {}; rate {}/s; sent {} of {} offered blocks ({})",
            ago(o.last_contact),
            human_bytes(o.rate()),
            o.blocks_sent,
            o.blocks_offered,
            human_bytes(o.bytes_sent as f64)
        );
        match &o.last_error {
            Some((t, e)) => {
                let _ = writeln!(s, "  last error ({}): {e}", ago(Some(*t)));
            }
            None => {
                let _ = writeln!(s, "  last error: none");
            }
        }
    }
    for (name, i) in &peers.incoming {
        let _ = writeln!(
            s,
            "from {name}: last contact {}; stored {} of {} offered blocks ({}); {} names merged",
            ago(i.last_contact),
            i.blocks_stored,
            i.blocks_offered,
            human_bytes(i.bytes_stored as f64),
            i.names_merged
        );
    }
    s
}
