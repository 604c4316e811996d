//! `colony bench grid TREE`: a grid node in this process; times `spawn` (to
//! its reply) and `save` after changing one file, for a busybox root and for
//! TREE. Needs root (spawn mounts through FUSE). SSH adds its own round trip
//! on top; `ssh … scores` against a running node measures that.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use grid::state::StateDir;
use grid::{Node, NodeConfig};
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, LogStore};

pub fn run(tree: &Path, runs: usize) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-grid-")
        .tempdir()?;
    let state = StateDir::resolve(Some(&scratch.path().join("state")))?;
    let store: Arc<dyn BlockStore> = Arc::new(LogStore::open(state.store_dir())?);
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGP1b2hqEI4x6AnqeHtY2xSk5QbyN6n6fN3Eo1J8O1Xq bench";
    state.users().add("bench", key)?;

    let busybox = scratch.path().join("busybox");
    std::fs::create_dir_all(busybox.join("bin"))?;
    std::fs::create_dir_all(busybox.join("etc"))?;
    if Path::new("/bin/busybox").exists() {
        std::fs::copy("/bin/busybox", busybox.join("bin/busybox"))?;
    }
    std::fs::write(busybox.join("etc/motd"), "hello\n")?;
    let names = state.scorenames();
    for (name, dir) in [("busybox", busybox.as_path()), ("tree", tree)] {
        let mut t = Tree::default();
        DirImporter::new(store.as_ref(), BlockSizes::default(), &Quiet, None)
            .add(&mut t, &dir.join("."))?;
        let root = t.write(store.as_ref(), BlockSizes::default(), None)?;
        names.bind(name, &root, &["bench"])?;
    }
    let mounts = scratch.path().join("state/mnt/bench");
    let node = Node::new(state, store, NodeConfig::default())?;
    println!("grid benchmark: median of {runs} runs, in process (no SSH round trip)");
    for name in ["busybox", "tree"] {
        let mut spawn = Vec::new();
        let mut save = Vec::new();
        for i in 0..runs.max(1) {
            let t = Instant::now();
            let r = node.run("bench", &format!("spawn {name}"));
            spawn.push(t.elapsed().as_secs_f64());
            if r.status != 0 {
                bail!("spawn {name}: {}", r.err);
            }
            std::fs::write(mounts.join(name).join("etc/motd"), format!("run {i}\n"))?;
            let t = Instant::now();
            let r = node.run("bench", &format!("save {name} {name}-saved-{i}"));
            save.push(t.elapsed().as_secs_f64());
            if r.status != 0 {
                bail!("save {name}: {}", r.err);
            }
            node.run("bench", &format!("boom {name}"));
        }
        spawn.sort_by(f64::total_cmp);
        save.sort_by(f64::total_cmp);
        let label = if name == "tree" {
            tree.display().to_string()
        } else {
            "a busybox root".into()
        };
        println!(
            "{:<44} {:>8.1} ms (range {:.1}..{:.1})",
            format!("spawn {label}"),
            spawn[spawn.len() / 2] * 1e3,
            spawn[0] * 1e3,
            spawn[spawn.len() - 1] * 1e3
        );
        println!(
            "{:<44} {:>8.1} ms (range {:.1}..{:.1})",
            format!("save after one file, {label}"),
            save[save.len() / 2] * 1e3,
            save[0] * 1e3,
            save[save.len() - 1] * 1e3
        );
    }
    Ok(())
}
