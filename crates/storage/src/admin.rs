//! The node's admin address: `/metrics` for Prometheus, a status page
//! (`/`, plain HTML with a little JavaScript, no build step) and the JSON
//! it reads (`/status.json`).
//!
//! On loopback it is plain HTTP. On any other address it is HTTPS with
//! mutual TLS: only holders of a grid certificate (an admin's client
//! certificate, or a node's) get an answer; others fail the handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Node;
use crate::metrics::Metrics;

const PAGE: &str = include_str!("admin_page.html");

/// What the admin address shows.
pub struct Admin {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
    /// This node's name (its certificate's, or the host's).
    pub name: String,
    /// The node's replication, if it has peers.
    pub replication: Option<Arc<replica::Replicator>>,
    /// A storage node's cpu nodes, for the page's table of them.
    pub cpu_nodes: Option<Arc<crate::placement::Pool>>,
}

/// Serves `listener`; `tls` is required off loopback (the caller checks).
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, tls: Option<Arc<link::Link>>) {
    loop {
        let (tcp, peer) = link::listener::accept(&listener, "admin").await;
        let (admin, tls) = (admin.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                Some(link) => match link.accept(tcp, peer, &link::Role::ALL).await {
                    Ok((stream, _)) => answer(admin, stream, peer).await,
                    Err(e) => link.log_refusal("an admin client", &e),
                },
                None => answer(admin, tcp, peer).await,
            }
        });
    }
}

/// How long a client has to send its request's head, all of it: a time per
/// read would let one that sends a byte every few seconds hold its
/// connection for hours.
const HEAD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

async fn answer(admin: Arc<Admin>, mut s: impl AsyncRead + AsyncWrite + Unpin, peer: SocketAddr) {
    // One request per connection; its head is enough.
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + HEAD_TIME;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    // HEAD is GET without the body (monitoring checks use it).
    let head_only = method == "HEAD";
    let method = if head_only { "GET" } else { method };
    // What the figures take to gather may block (asking the cpu nodes, up
    // to their deadline): on a thread of its own, never on the runtime
    // that carries those very links' pings and replies.
    let gather = |f: fn(&Admin) -> String| {
        let admin = admin.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&admin))
                .await
                .unwrap_or_else(|e| format!("gathering failed: {e}"))
        }
    };
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            gather(|a| a.metrics.encode()).await,
        ),
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        ("GET", "/status.json") => ("200 OK", "application/json", gather(status_json).await),
        ("GET", _) => ("404 Not Found", "text/plain", "no such page\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET or HEAD only\n".into(),
        ),
    };
    tracing::debug!(peer = %peer, path, status, "admin request");
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
    if !head_only {
        let _ = s.write_all(body.as_bytes()).await;
    }
    let _ = s.shutdown().await;
}

/// Where each replication peer stands, for the page's tables.
fn peers_json(peers: &replica::board::Peers) -> serde_json::Value {
    use crate::status::seconds_since;
    use serde_json::json;
    let outgoing: Vec<serde_json::Value> = peers
        .outgoing
        .iter()
        .map(|(name, o, behind)| {
            json!({
                "name": name,
                "address": o.address,
                "plain_venti": o.plain_venti,
                "connected": o.connected,
                "last_contact_seconds_ago": o.last_contact.map(seconds_since),
                "behind_blocks": behind.blocks,
                "behind_bytes": behind.bytes,
                "behind_names": behind.names,
                "rate_bytes_per_second": o.rate(),
                "blocks_sent": o.blocks_sent,
                "blocks_offered": o.blocks_offered,
                "bytes_sent": o.bytes_sent,
                "last_error": o.last_error.as_ref().map(|(_, e)| e),
                "last_error_seconds_ago": o.last_error.as_ref().map(|(t, _)| seconds_since(*t)),
            })
        })
        .collect();
    let incoming: Vec<serde_json::Value> = peers
        .incoming
        .iter()
        .map(|(name, i)| {
            json!({
                "name": name,
                "last_contact_seconds_ago": i.last_contact.map(seconds_since),
                "blocks_stored": i.blocks_stored,
                "blocks_offered": i.blocks_offered,
                "bytes_stored": i.bytes_stored,
                "names_merged": i.names_merged,
            })
        })
        .collect();
    json!({ "outgoing": outgoing, "incoming": incoming })
}

/// The page's data: the node, its peers, its environments, growth, events.
fn status_json(admin: &Admin) -> String {
    use crate::status::EnvState;
    use serde_json::json;
    let (envs, error) = match admin.node.all_status() {
        Ok(list) => (list, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let envs: Vec<serde_json::Value> = envs
        .into_iter()
        .map(|(user, e)| {
            let mut v = json!({
                "user": user,
                "name": e.name,
                "cpu": e.cpu,
                "state": e.state.word(),
            });
            match e.state {
                EnvState::Running(s) => {
                    v["root"] = json!(format!("vac:{}", s.root));
                    v["from"] = json!(s.spawned_from);
                    v["cache"] = json!(s.cache_kind);
                    v["cache_bytes"] = json!(s.cache_bytes);
                    v["changed_bytes"] = json!(s.changed_bytes);
                    v["uptime_seconds"] = json!(s.uptime_secs);
                    v["processes"] = json!(s.processes);
                    v["network"] = json!(s.network);
                    v["login"] = json!(s.login);
                    if let Some(sleep) = s.sleep {
                        if let control::Sleep::Suspended { secs } = sleep {
                            v["suspended_seconds"] = json!(secs);
                        }
                        v["resume_point"] = json!(format!("vac:{}", s.root_now));
                    }
                }
                EnvState::Starting => {}
                EnvState::Lost {
                    root,
                    login,
                    last_seen,
                } => {
                    v["root"] = json!(format!("vac:{root}"));
                    v["login"] = json!(login);
                    v["last_seen_seconds_ago"] = json!(last_seen.map(crate::status::seconds_since));
                }
            }
            v
        })
        .collect();
    let growth: Vec<serde_json::Value> = admin
        .metrics
        .growth()
        .into_iter()
        .map(|(t, b)| json!([t, b]))
        .collect();
    let events: Vec<serde_json::Value> = admin
        .metrics
        .events()
        .into_iter()
        .map(|e| json!({ "at": e.at, "failure": e.failure, "text": e.text }))
        .collect();
    let m = &admin.metrics;
    let (free, total) = admin.node.disk_space().unwrap_or((0, 0));
    json!({
        "node": admin.name,
        "uptime_seconds": m.started.elapsed().as_secs(),
        "store_bytes": m.store_bytes.get(),
        "disk_free_bytes": free,
        "disk_bytes": total,
        "environments": envs,
        "environments_error": error,
        "refused": {
            "commands": m.refused_total.load(std::sync::atomic::Ordering::Relaxed),
            "logins": m.logins_refused.get(),
            "connections": m.connections_refused.get(),
        },
        "peers": admin.replication.as_ref().map(|rep| peers_json(&rep.peers())),
        "cpu_nodes": admin.cpu_nodes.as_ref().map(|pool| {
            pool.cpu_nodes()
                .into_iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "linked": c.linked,
                        "last_seen_seconds_ago": crate::status::seconds_since(c.last_seen),
                        "running": c.running,
                        "slots": c.slots,
                        "memory_bytes": c.memory,
                        "block_cache_bytes": c.cache,
                    })
                })
                .collect::<Vec<_>>()
        }),
        "growth": growth,
        "events": events,
    })
    .to_string()
}
