//! Where the services can be reached: an ndb file, as Plan 9 keeps its
//! services, with an entry per replica:
//!
//! ```text
//! service=web user=alice replica=web.0 state=up node=c1 root=busybox
//!     port=8080 dial=tcp!10.0.0.3!30001
//! ```
//!
//! (the second line starts with a tab, as ndb's continuation lines do)
//!
//! so `colony ndb query -f STATE/services.ndb service web dial -a` gives every
//! address of `web`, and `service ls web` at the front door shows the same
//! entries. Only replicas whose environment runs are listed; a replica that
//! is not up says so in `state=`.

use std::fmt::Write as _;
use std::sync::Arc;

use super::{Service, State};

/// The entries of `services`' replicas.
pub fn render(services: &[Arc<Service>]) -> String {
    let mut out = String::new();
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
    for s in sorted {
        for r in s.replicas() {
            let Some(placed) = r.placed() else {
                continue;
            };
            let _ = writeln!(
                out,
                "service={} user={} replica={}.{} state={} node={} root={}",
                s.name,
                s.user,
                s.name,
                r.number,
                r.state().word(),
                placed.node,
                r.root
            );
            for (port, host, node_port) in &placed.ports {
                let _ = writeln!(out, "\tport={port} dial=tcp!{host}!{node_port}");
            }
        }
    }
    out
}

/// One line of `service ls`, and a line for each replica under it.
pub fn summary(s: &Service) -> String {
    let spec = s.spec();
    let replicas = s.replicas();
    let up = replicas
        .iter()
        .filter(|r| !r.retired() && r.state() == State::Up)
        .count();
    let mut out = format!(
        "{}\t{}\t{up}/{} up\thealth {}\t{}\n",
        s.name,
        spec.root,
        spec.replicas,
        spec.health.text(),
        spec.command
    );
    if let Some(note) = s.note.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = writeln!(out, "\t{note}");
    }
    for r in replicas {
        let mut line = format!("\t{}.{}\t{}", s.name, r.number, r.state().word());
        if let Some(p) = r.placed() {
            let _ = write!(line, "\ton {}", p.node);
            for (port, host, node_port) in &p.ports {
                let _ = write!(line, "\t{port} at {host}:{node_port}");
            }
        }
        if r.root != spec.root {
            let _ = write!(line, "\troot {}", r.root);
        }
        if let State::Restarting { why, .. } = r.state() {
            let _ = write!(line, "\t{why}");
        }
        let restarts = r.restarts.load(std::sync::atomic::Ordering::Relaxed);
        if restarts > 0 {
            let _ = write!(line, "\t{restarts} restarts");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
