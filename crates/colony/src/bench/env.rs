//! What the benchmarks that spawn set up alike: a user `bench` with a
//! fresh SSH key, a small busybox root, and an OpenSSH client command for
//! a login on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use grid::state::StateDir;
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, Score};

/// `dir` archived into `store` as a vac tree: its root.
pub fn archive(store: &dyn BlockStore, dir: &Path) -> Result<Score> {
    let mut tree = Tree::default();
    DirImporter::new(store, BlockSizes::default(), &Quiet, None).add(&mut tree, &dir.join("."))?;
    Ok(tree.write(store, BlockSizes::default(), None)?)
}

/// A new ed25519 key `dir/key` (needs ssh-keygen); returns its path.
pub fn new_key(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        bail!("ssh-keygen is needed (openssh-client)");
    }
    Ok(key)
}

/// Registers `key` as user `bench` of `state`.
pub fn add_bench_user(state: &StateDir, key: &Path) -> Result<()> {
    state.users().add(
        "bench",
        &std::fs::read_to_string(key.with_extension("pub"))?,
    )?;
    Ok(())
}

/// A new key in `dir`, registered as user `bench` of `state`; returns the
/// private key's path.
pub fn bench_user(dir: &Path, state: &StateDir) -> Result<PathBuf> {
    let key = new_key(dir)?;
    add_bench_user(state, &key)?;
    Ok(key)
}

/// `dir/busybox`: /bin/busybox with `sh`, `echo` and `cat`, and an `etc`.
pub fn busybox_root(dir: &Path) -> Result<PathBuf> {
    let busybox = dir.join("busybox");
    std::fs::create_dir_all(busybox.join("bin"))?;
    std::fs::create_dir_all(busybox.join("etc"))?;
    std::fs::copy("/bin/busybox", busybox.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", busybox.join("bin").join(applet))?;
    }
    Ok(busybox)
}

/// `dir/busybox`: /bin/busybox with `applets`, and root's passwd, group
/// and home: a root whose login works.
pub fn login_root(dir: &Path, applets: &[&str]) -> Result<PathBuf> {
    let root = dir.join("busybox");
    for d in ["bin", "etc", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(root)
}

/// `ssh -p PORT -i KEY … bench@127.0.0.1`, quiet and asking nothing; the
/// remote command is the caller's to add.
pub fn ssh_bench(key: &Path, port: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-p", port, "-i"])
        .arg(key)
        .args(grid::ssh::SCRIPTED_CLIENT_OPTS)
        .arg("bench@127.0.0.1");
    cmd
}

/// The login port in a spawn's reply (its `ssh -p PORT USER@HOST` line).
pub fn login_port(reply: &str) -> Option<String> {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("ssh -p "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// A single-node grid on `state_dir`, started in this process as `colony
/// serve` starts one, its front door on a loopback port of its own, with
/// `more` settings; returns the node and its front door's port.
pub fn single_node(state_dir: &Path, more: &[(&str, String)]) -> Result<(node::Node, u16)> {
    let mut sources = node::Sources::new();
    let base = [
        ("state", state_dir.display().to_string()),
        ("listen", "127.0.0.1:0".into()),
        ("public-host", "127.0.0.1".into()),
    ];
    for (setting, value) in base.iter().chain(more) {
        sources.flag(setting, value.clone())?;
    }
    let node = node::Node::start(node::Config::from_sources(&sources)?)?;
    let Some(port) = node.front_door.as_ref().map(|d| d.port()) else {
        node.shutdown();
        bail!("the node has no front door");
    };
    Ok((node, port))
}
