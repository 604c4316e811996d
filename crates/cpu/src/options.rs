//! What a spawn may ask for beyond its root: limits, network, published
//! ports and the kind of root, checked against what this machine allows.

use crate::CpuConfig;
use crate::env::{Limits, Network};
use grid::error::{GridError, GridResult};

/// What a `spawn` asks for beyond the root.
pub struct SpawnOptions {
    pub limits: Limits,
    pub network: Network,
    /// A user namespace of its own.
    pub rootless: bool,
    /// Environment ports to publish at node ports.
    pub publish: Vec<u16>,
}

pub const SPAWN_USAGE: &str =
    "NAME [memory=SIZE] [pids=N] [cpu=WEIGHT] [net=private|host] [publish=PORT]… [userns=yes|no]";

/// The node's default limits with `memory=`, `pids=` and `cpu=` overrides,
/// the network (`net=`) and the ports to publish (`publish=`).
pub fn parse(config: &CpuConfig, words: &[String]) -> GridResult<SpawnOptions> {
    let mut limits = config.limits.clone();
    let (mut network, mut publish) = (Network::Private, Vec::new());
    let mut rootless = config.userns;
    for w in words {
        let w = w.as_str();
        let bad = || {
            GridError::refused(format!(
                "bad option {w:?}: use memory=SIZE (K/M/G, at least 4M), pids=N, cpu=WEIGHT (1-10000), \
                 net=private|host, publish=PORT (1-65535) or userns=yes|no"
            ))
        };
        let (key, value) = w.split_once('=').ok_or_else(bad)?;
        match key {
            "net" => {
                network = match value {
                    "private" => Network::Private,
                    "host" if config.allow_host_net => Network::Host,
                    "host" => {
                        return Err(GridError::refused(
                            "net=host is not allowed on this node (its admin may start it with serve --allow-host-net)",
                        ));
                    }
                    _ => return Err(bad()),
                }
            }
            "userns" => {
                rootless = match value {
                    "yes" => true,
                    "no" if config.allow_rootful || !config.userns => false,
                    "no" => {
                        return Err(GridError::refused(
                            "userns=no is not allowed on this node (its admin may start it with serve --allow-rootful)",
                        ));
                    }
                    _ => return Err(bad()),
                }
            }
            "publish" => {
                let port: u16 = value.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?;
                if !publish.contains(&port) {
                    publish.push(port);
                }
            }
            "memory" => {
                limits.memory = parse_size(value)
                    .filter(|&m| m >= 4 << 20)
                    .ok_or_else(bad)?
            }
            "pids" => {
                limits.pids = value
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n >= 1)
                    .ok_or_else(bad)?
            }
            "cpu" => {
                limits.cpu_weight = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=10000).contains(n))
                    .ok_or_else(bad)?
            }
            _ => return Err(bad()),
        }
    }
    if network == Network::Host && !publish.is_empty() {
        return Err(GridError::refused(
            "publish= is for a private network: with net=host the environment's ports are the node's",
        ));
    }
    Ok(SpawnOptions {
        limits,
        network,
        rootless,
        publish,
    })
}

/// `100M`, `1G`, `512K` or bytes (K, M, G, T are powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    let mult = match t[split..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2t"), Some(2 << 40));
        for bad in ["", "M", "5Q", "-1M", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
