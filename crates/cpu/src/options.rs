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
    /// Its logins may forward the user's SSH agent (`ssh -A`) into it.
    pub agent: bool,
    /// Suspended after this long idle (`idle=`, else the node's
    /// `--idle-suspend`); never if none.
    pub idle: Option<std::time::Duration>,
}

pub const SPAWN_USAGE: &str = "NAME [memory=SIZE] [pids=N] [cpu=WEIGHT] [net=private|host] [publish=PORT]… [userns=yes|no] [agent=yes|no] [idle=DURATION|never]";

/// The most option words a spawn may give (each key once, and a few
/// published ports).
pub const MAX_OPTIONS: usize = 16;
/// The longest option word.
pub const MAX_OPTION_LEN: usize = 64;
/// The option keys a spawn knows (`node=` is the placement's, on a
/// storage node of a grid; the cpu node never sees it).
const KEYS: [&str; 9] = [
    "memory", "pids", "cpu", "net", "publish", "userns", "agent", "idle", "node",
];

/// The form of a spawn's option words, checked where they arrive (the
/// front door) before they go anywhere: at most [`MAX_OPTIONS`] words of
/// at most [`MAX_OPTION_LEN`] bytes, each `KEY=VALUE` with a known key.
/// Their values are judged by the node that runs the spawn ([`parse`]).
pub fn check_form(words: &[&str]) -> GridResult<()> {
    if words.len() > MAX_OPTIONS {
        return Err(GridError::refused(format!(
            "{} options: a spawn takes at most {MAX_OPTIONS}",
            words.len()
        )));
    }
    for w in words {
        if w.len() > MAX_OPTION_LEN {
            return Err(GridError::refused(format!(
                "an option of {} bytes: at most {MAX_OPTION_LEN}",
                w.len()
            )));
        }
        let key = w.split_once('=').map(|(k, _)| k);
        if !key.is_some_and(|k| KEYS.contains(&k)) {
            return Err(GridError::refused(format!(
                "bad option {w:?}: use {}",
                KEYS.map(|k| format!("{k}=")).join(", ")
            )));
        }
    }
    Ok(())
}

/// The highest `memory=`, `pids=` and `cpu=` a spawn may ask for on this
/// node, and the flag that sets each (named in refusals).
fn check_ceilings(limits: &Limits, ceilings: &Limits) -> GridResult<()> {
    let over = |what: String, ceiling: String, flag: &str| {
        Err(GridError::refused(format!(
            "{what} is above this node's ceiling of {ceiling} (its admin sets it with serve --{flag})"
        )))
    };
    if limits.memory > ceilings.memory {
        return over(
            format!("memory={}", units::human(limits.memory)),
            units::human(ceilings.memory),
            "env-memory-max",
        );
    }
    if limits.pids > ceilings.pids {
        return over(
            format!("pids={}", limits.pids),
            ceilings.pids.to_string(),
            "env-pids-max",
        );
    }
    if limits.cpu_weight > ceilings.cpu_weight {
        return over(
            format!("cpu={}", limits.cpu_weight),
            ceilings.cpu_weight.to_string(),
            "env-cpu-max",
        );
    }
    Ok(())
}

/// The node's default limits with `memory=`, `pids=` and `cpu=` overrides
/// (at most the node's ceilings), the network (`net=`) and the ports to
/// publish (`publish=`).
pub fn parse(config: &CpuConfig, words: &[String]) -> GridResult<SpawnOptions> {
    let borrowed: Vec<&str> = words.iter().map(String::as_str).collect();
    check_form(&borrowed)?;
    if let Some(node) = borrowed.iter().find(|w| w.starts_with("node=")) {
        return Err(GridError::refused(format!(
            "{node}: only a storage node of a grid places environments on named cpu nodes"
        )));
    }
    let mut limits = config.limits.clone();
    let (mut network, mut publish) = (Network::Private, Vec::new());
    let mut rootless = config.userns;
    let mut agent = false;
    let mut idle = config.idle_suspend;
    for w in words {
        let w = w.as_str();
        let bad = || {
            GridError::refused(format!(
                "bad option {w:?}: use memory=SIZE (K/M/G, at least 4M), pids=N, cpu=WEIGHT (1-10000), \
                 net=private|host|none, publish=PORT (1-65535), userns=yes|no, agent=yes|no \
                 or idle=DURATION (at least 1s) or idle=never"
            ))
        };
        let (key, value) = w.split_once('=').ok_or_else(bad)?;
        match key {
            "net" => {
                network = match value {
                    "private" => Network::Private,
                    "none" => Network::Isolated,
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
            "agent" => {
                agent = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad()),
                }
            }
            "idle" => {
                idle = match value {
                    "never" => None,
                    _ => Some(
                        units::parse_duration(value)
                            .ok()
                            .filter(|d| *d >= crate::idle::MIN_IDLE)
                            .ok_or_else(bad)?,
                    ),
                }
            }
            "publish" => {
                let port: u16 = value.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?;
                if !publish.contains(&port) {
                    publish.push(port);
                }
            }
            "memory" => {
                limits.memory = units::parse_size(value)
                    .ok()
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
    check_ceilings(&limits, &config.ceilings)?;
    if network == Network::Host && !publish.is_empty() {
        return Err(GridError::refused(
            "publish= is for a private network: with net=host the environment's ports are the node's",
        ));
    }
    if network == Network::Isolated && !publish.is_empty() {
        return Err(GridError::refused(
            "publish= is for a private network: with net=none nothing reaches the environment",
        ));
    }
    Ok(SpawnOptions {
        limits,
        network,
        rootless,
        publish,
        agent,
        idle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    /// net=none: a namespace of its own with nothing published into it.
    #[test]
    fn net_none_is_isolated_and_publishes_nothing() {
        let config = CpuConfig::default();
        let ok = parse(&config, &words("net=none")).unwrap();
        assert_eq!(ok.network, Network::Isolated);
        let err = parse(&config, &words("net=none publish=80"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("with net=none nothing reaches"), "{err}");
        let err = parse(&config, &words("net=nowhere"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("net=private|host|none"), "{err}");
    }

    /// Before, a spawn could ask for any memory, pids or cpu weight: the
    /// node's defaults were not ceilings.
    #[test]
    fn a_spawn_above_the_ceilings_is_refused_naming_the_ceiling() {
        let config = CpuConfig::default();
        for (asked, ceiling, flag) in [
            ("memory=64G", "2.0 GiB", "--env-memory-max"),
            ("pids=1000000", "2048", "--env-pids-max"),
            ("cpu=10000", "1000", "--env-cpu-max"),
        ] {
            let err = parse(&config, &words(asked))
                .err()
                .expect(asked)
                .to_string();
            assert!(
                err.contains(ceiling) && err.contains(flag),
                "{asked}: {err}"
            );
        }
        let ok = parse(&config, &words("memory=2G pids=2048 cpu=1000")).unwrap();
        assert_eq!(ok.limits.memory, 2 << 30);
        // An admin's higher ceiling allows more.
        let mut roomy = CpuConfig::default();
        roomy.ceilings.memory = 8 << 30;
        assert_eq!(
            parse(&roomy, &words("memory=4G")).unwrap().limits.memory,
            4 << 30
        );
    }

    /// 4,097 option words made the storage node send a control frame the
    /// cpu node's reader refused, dropping the link for every user on it.
    #[test]
    fn option_words_are_bounded_in_count_length_and_kind() {
        let many: Vec<&str> = std::iter::repeat_n("pids=5", 4097).collect();
        let err = check_form(&many).unwrap_err().to_string();
        assert!(err.contains("at most 16"), "{err}");
        let long = format!("net={}", "x".repeat(100));
        let err = check_form(&[&long]).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
        let err = check_form(&["colour=blue"]).unwrap_err().to_string();
        assert!(
            err.contains("bad option") && err.contains("memory="),
            "{err}"
        );
        check_form(&["memory=1G", "pids=10", "publish=80", "publish=443"]).unwrap();
    }

    #[test]
    fn idle_is_the_nodes_unless_the_spawn_says() {
        let config = CpuConfig {
            idle_suspend: Some(std::time::Duration::from_secs(600)),
            ..CpuConfig::default()
        };
        let idle_with = |config: &CpuConfig, w: &str| parse(config, &words(w)).map(|o| o.idle);
        let idle = |w: &str| idle_with(&config, w);
        assert_eq!(idle("").unwrap(), config.idle_suspend);
        assert_eq!(
            idle("idle=2s").unwrap(),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(idle("idle=never").unwrap(), None);
        for bad in ["idle=0", "idle=500ms", "idle=soon"] {
            let err = idle(bad).expect_err(bad).to_string();
            assert!(err.contains("idle=DURATION (at least 1s)"), "{bad}: {err}");
        }
        let never = CpuConfig {
            idle_suspend: None,
            ..CpuConfig::default()
        };
        assert_eq!(idle_with(&never, "").unwrap(), None);
    }
}
