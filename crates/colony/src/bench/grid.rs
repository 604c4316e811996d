//! `colony bench grid TREE`: a grid node in this process; times `spawn` (to
//! its reply, and to the first command's output through the environment's own
//! SSH login) and `save` after changing one file, for a busybox root and for
//! TREE, each with a private network, the node's network, and rootless. Needs root (spawn mounts and makes namespaces) and the OpenSSH client.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use cpu::CpuConfig;
use grid::state::StateDir;
use storage::Node;
use venti::{BlockStore, LogStore};

fn median(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>8.1} ms (range {:.1}..{:.1})",
        v[v.len() / 2] * 1e3,
        v[0] * 1e3,
        v[v.len() - 1] * 1e3
    )
}

pub fn run(tree: &Path, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-grid-")
        .tempdir()?;
    let state = StateDir::open(scratch.path().join("state"))?;
    let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
    // A real key, so the environments' SSH logins can be timed too.
    let key = crate::bench::env::bench_user(scratch.path(), &state)?;

    let busybox = crate::bench::env::busybox_root(scratch.path())?;
    std::fs::write(busybox.join("etc/motd"), "hello\n")?;
    let names = state.scorenames();
    for (name, dir) in [("busybox", busybox.as_path()), ("tree", tree)] {
        let root = crate::bench::env::archive(store.as_ref(), dir)?;
        names.bind(name, &root, &["bench"])?;
    }
    let mounts = scratch.path().join("state/mnt/bench");
    let config = CpuConfig {
        public_host: "127.0.0.1".into(),
        env_listen: "127.0.0.1".into(),
        allow_host_net: true,
        // Its cases include rootful environments (userns=no).
        allow_rootful: true,
        ..CpuConfig::default()
    };
    let node = Node::local(state, store, config)?;
    println!(
        "grid benchmark: median of {runs} runs; commands through the node's command set in this process"
    );
    let result = run_cases(&node, tree, &key, &mounts, runs);
    // End every environment, also after a failure, so none outlives the run.
    node.shutdown();
    result
}

/// Spawn, first output and save for each root and network, `runs` times.
fn run_cases(node: &Node, tree: &Path, key: &Path, mounts: &Path, runs: usize) -> Result<()> {
    // What isolation costs: the private network against the node's, and a
    // rootless environment (user namespace, shifted owners) against root.
    let variants = [
        ("net=private userns=no", "private"),
        ("net=host userns=no", "host"),
        ("net=private userns=yes", "rootless"),
    ];
    let cases = ["busybox", "tree"]
        .into_iter()
        .flat_map(|name| variants.map(|(options, tag)| (name, options, tag)));
    for (name, options, net) in cases {
        let (mut spawn, mut first, mut save) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs.max(1) {
            let t = Instant::now();
            let r = node.run("bench", &format!("spawn {name} {options}"));
            spawn.push(t.elapsed().as_secs_f64());
            if r.status != 0 {
                bail!("spawn {name}: {}", r.err);
            }
            let port = crate::bench::env::login_port(&r.out).unwrap_or_else(|| "0".into());
            let out = crate::bench::env::ssh_bench(key, &port)
                .arg("echo ready")
                .output()?;
            first.push(t.elapsed().as_secs_f64());
            if out.stdout != b"ready\n" {
                bail!(
                    "the first command in {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::fs::write(mounts.join(name).join("etc/motd"), format!("run {i}\n"))?;
            let t = Instant::now();
            let r = node.run("bench", &format!("save {name} {name}-{net}-saved-{i}"));
            save.push(t.elapsed().as_secs_f64());
            if r.status != 0 {
                bail!("save {name}: {}", r.err);
            }
            node.run("bench", &format!("boom {name}"));
        }
        let label = if name == "tree" {
            format!("{}, {options}", tree.display())
        } else {
            format!("a busybox root, {options}")
        };
        println!("{:<60} {}", format!("spawn {label}"), median(spawn));
        println!(
            "{:<60} {}",
            format!("spawn to first output over ssh, {label}"),
            median(first)
        );
        println!(
            "{:<60} {}",
            format!("save after one file, {label}"),
            median(save)
        );
    }
    Ok(())
}
