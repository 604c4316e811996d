//! `colony bench s3 [TREE]`: the block store on a real three-node Garage
//! cluster (replication factor 3, three zones, loopback) that the
//! benchmark starts and tears down. Prints the ingest rate of new 8 KiB
//! blocks, a vac of TREE into the bucket, the requests a cold read of it
//! makes per block, and spawn → first command output on a node whose
//! store is the bucket, with its local cache cold and warm. Needs the
//! garage binary; the spawns need root and the OpenSSH client.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cpu::CpuConfig;
use grid::state::StateDir;
use s3store::{PackStore, Settings};
use storage::Node;
use vac::tree::{BlockSizes, Tree};
use vac::walk::{DirImporter, Quiet};
use venti::{BlockStore, BlockType};

use crate::bench::garage_cluster::Garage;

fn settings(g: &Garage, cache: &Path, prefix: &str) -> Result<Settings> {
    Ok(Settings {
        url: s3store::S3Url::parse(&format!("s3://{}/{prefix}", g.bucket))
            .map_err(anyhow::Error::msg)?,
        endpoint: Some(g.endpoint(0)),
        region: "garage".into(),
        access_key_id: g.key_id.clone(),
        secret_access_key: g.secret.clone(),
        session_token: None,
        cache: cache.to_path_buf(),
        cache_bytes: 4 << 30,
        pack_bytes: s3store::config::DEFAULT_PACK_BYTES,
        file: None,
    })
}

/// `n` new 8 KiB blocks, different from every earlier run's.
fn fresh_blocks(n: usize) -> impl Iterator<Item = Vec<u8>> {
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    (0..n as u64).map(move |i| {
        let mut b = vec![0u8; 8192];
        // A cheap generator: every word differs, nothing compresses.
        let mut x = salt ^ (i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for chunk in b.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        b
    })
}

fn ingest(store: &dyn BlockStore, mb: usize) -> Result<f64> {
    let n = mb * 1024 * 1024 / 8192;
    // Made before the clock starts: the figure is the store's, not the
    // generator's.
    let blocks: Vec<Vec<u8>> = fresh_blocks(n).collect();
    let t = Instant::now();
    for b in &blocks {
        store.write(BlockType::DATA, b)?;
    }
    store.sync()?;
    Ok((n * 8192) as f64 / 1e6 / t.elapsed().as_secs_f64())
}

pub fn run(tree: Option<&Path>, mb: usize, runs: usize) -> Result<()> {
    let g = Garage::start("bench").map_err(anyhow::Error::msg)?;
    let scratch = tempfile::Builder::new()
        .prefix("colony-bench-s3-")
        .tempdir()?;
    let dir = scratch.path();
    println!(
        "object store: a Garage cluster of 3 nodes in 3 zones, replication factor 3, on loopback; packs of {} MiB",
        s3store::config::DEFAULT_PACK_BYTES >> 20
    );

    // Ingest: the packs alone, then the store colony opens (with its
    // local cache, which keeps what is written).
    // Three runs (Garage's own work, three replicas on this machine's
    // cores, varies from run to run): the median, and the range.
    let mut rates = Vec::new();
    let mut puts = 0;
    for run in 0..3 {
        let packs = PackStore::open(&settings(
            &g,
            &dir.join(format!("ingest{run}")),
            &format!("ingest{run}"),
        )?)?;
        rates.push(ingest(&packs, mb)?);
        puts = packs.stats().puts;
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{:<58} {:>8.1} MB/s (range {:.1}..{:.1}; {mb} MiB: {puts} PUTs, {} packs)",
        "ingest of new 8 KiB blocks, packs only",
        rates[1],
        rates[0],
        rates[2],
        puts / 2
    );
    // What Garage itself takes here: whole pack-sized objects, as many at
    // once as the store keeps in flight, with nothing of colony's around
    // them.
    let probe = PackStore::open(&settings(&g, &dir.join("probe"), "probe")?)?;
    let pack = s3store::config::DEFAULT_PACK_BYTES;
    let objects = (mb / (pack >> 20)).max(4);
    // The same new blocks as the ingest's, a pack's worth to an object;
    // made once for every run.
    let payloads: Vec<s3store::Bytes> = (0..objects)
        .map(|_| s3store::Bytes::from(fresh_blocks(pack / 8192).flatten().collect::<Vec<u8>>()))
        .collect();
    let mut ceiling = 0.0;
    for parallel in [1, s3store::MAX_UNSENT, 2 * s3store::MAX_UNSENT] {
        let rate = probe.measure_put_rate(payloads.clone(), parallel)?;
        println!(
            "{:<58} {:>8.1} MB/s",
            format!("the object store's own ceiling: PUTs of packs, {parallel} at once"),
            rate / 1e6
        );
        if parallel == s3store::MAX_UNSENT {
            ceiling = rate / 1e6;
        }
    }
    drop(probe);
    collection(&g, dir, mb, ceiling)?;
    let opened = s3store::open_with(&settings(&g, &dir.join("ingest-cached"), "cached")?)?;
    let rate = ingest(opened.store.as_ref(), mb)?;
    println!(
        "{:<58} {rate:>8.1} MB/s",
        "ingest of new 8 KiB blocks, through the local cache"
    );
    drop(opened);

    // The node's store: busybox and TREE archived into the bucket.
    let opened = s3store::open_with(&settings(&g, &dir.join("node-cache"), "node")?)?;
    let state = StateDir::open(dir.join("state"))?;
    let key = crate::bench::env::bench_user(dir, &state)?;
    let busybox = crate::bench::env::busybox_root(dir)?;
    let mut roots = vec![("busybox", busybox.clone())];
    if let Some(t) = tree {
        roots.push(("tree", t.to_path_buf()));
    }
    for (name, root) in &roots {
        let before = opened.packs.stats();
        let t = Instant::now();
        let mut tr = Tree::default();
        DirImporter::new(opened.store.as_ref(), BlockSizes::default(), &Quiet, None)
            .add(&mut tr, &root.join("."))
            .with_context(|| format!("archiving {}", root.display()))?;
        let score = tr.write(opened.store.as_ref(), BlockSizes::default(), None)?;
        opened.store.sync()?;
        let secs = t.elapsed().as_secs_f64();
        state.scorenames().bind(name, &score, &["bench"])?;
        let after = opened.packs.stats();
        if *name == "tree" {
            let bytes = du(root);
            println!(
                "{:<58} {:>8.2} s ({:.1} MB/s of files; {} new blocks, {:.1} MB sent, {} deduplicated)",
                format!("vac of {} into the bucket", root.display()),
                secs,
                bytes as f64 / 1e6 / secs,
                after.blocks - before.blocks,
                (after.put_bytes - before.put_bytes) as f64 / 1e6,
                after.deduplicated - before.deduplicated
            );
            // A cold read of all of it, on another machine's (empty) cache.
            let cold = s3store::open_with(&settings(&g, &dir.join("cold"), "node")?)?;
            let archive = vac::Archive::open(cold.store.as_ref(), &score)?;
            let dest = dir.join("extracted");
            let t = Instant::now();
            vac::extract::extract(
                &archive,
                archive.root(),
                &dest,
                vac::extract::ExtractOptions::for_current_user(),
                &Quiet,
            )?;
            let secs = t.elapsed().as_secs_f64();
            let s = cold.packs.stats();
            let (blocks, bytes) = cold_fetched(&cold);
            println!(
                "{:<58} {:>8.2} s ({blocks} blocks, {:.1} MB): {:.3} ranged GETs per block, {} other requests",
                "cold read of all of it (unvac, empty cache)",
                secs,
                bytes as f64 / 1e6,
                s.block_gets as f64 / blocks.max(1) as f64,
                s.lists + s.object_gets
            );
            std::fs::remove_dir_all(&dest)?;
        }
    }

    // Spawns on a node whose store is the bucket.
    let config = CpuConfig {
        public_host: "127.0.0.1".into(),
        env_listen: "127.0.0.1".into(),
        allow_host_net: true,
        ..CpuConfig::default()
    };
    let cache = opened.cache.clone();
    let packs = opened.packs.clone();
    let node = Node::local(state, opened.store.clone(), config)?;
    let result = (|| -> Result<()> {
        for (name, root) in &roots {
            for cold in [true, false] {
                let mut times = Vec::new();
                let mut gets = 0;
                for _ in 0..runs.max(1) {
                    if cold {
                        cache.clear();
                        packs.forget_reads();
                    }
                    let before = packs.stats().block_gets;
                    let t = Instant::now();
                    let r = node.run("bench", &format!("spawn {name}"));
                    if r.status != 0 {
                        bail!("spawn {name}: {}", r.err.trim());
                    }
                    let out = crate::bench::split::ssh(&key, &r.out, "echo ready")?;
                    times.push(t.elapsed().as_secs_f64());
                    if out != "ready\n" {
                        bail!("the first command in {name} printed {out:?}");
                    }
                    gets = packs.stats().block_gets - before;
                    node.run("bench", &format!("boom {name}"));
                }
                times.sort_by(f64::total_cmp);
                println!(
                    "{:<58} {:>8.1} ms (range {:.1}..{:.1}; {gets} ranged GETs)",
                    format!(
                        "spawn to first output, {}, {} cache",
                        if *name == "tree" {
                            root.display().to_string()
                        } else {
                            "busybox".into()
                        },
                        if cold { "cold" } else { "warm" }
                    ),
                    times[times.len() / 2] * 1e3,
                    times[0] * 1e3,
                    times[times.len() - 1] * 1e3
                );
            }
        }
        Ok(())
    })();
    node.shutdown();
    result
}

/// A collection of `mb` MiB of old packs in which one block in four is
/// live (so every pack is written again): how fast old packs are gone
/// through, and the copies' rate beside the bucket's own PUT rate.
fn collection(g: &Garage, dir: &Path, mb: usize, put_ceiling: f64) -> Result<()> {
    let packs = PackStore::open(&settings(g, &dir.join("gc"), "gc")?)?;
    let grace = std::time::Duration::from_secs(1);
    packs.set_grace(grace);
    let n = mb * 1024 * 1024 / 8192;
    let mut live = std::collections::HashSet::new();
    for (i, b) in fresh_blocks(n).enumerate() {
        let score = packs.write(BlockType::DATA, &b)?;
        if i % 4 == 0 {
            live.insert(score);
        }
    }
    packs.sync()?;
    // Older than twice the grace period by the bucket's clock (whole
    // seconds).
    std::thread::sleep(3 * grace + std::time::Duration::from_millis(100));
    let t = Instant::now();
    let candidates = packs.collection_candidates()?;
    let swept = packs.sweep(&candidates, "bench", &|s| live.contains(s), &mut |_, _| {})?;
    let secs = t.elapsed().as_secs_f64();
    let copied = swept.bytes_copied as f64 / 1e6 / secs;
    println!(
        "{:<58} {:>8.1} MB/s of old packs ({} packs, {:.1} MB, in {secs:.2} s; {} written again, {} deleted)",
        "collection, one block in four live",
        swept.bytes_before as f64 / 1e6 / secs,
        swept.packs_old,
        swept.bytes_before as f64 / 1e6,
        swept.packs_rewritten,
        swept.packs_deleted,
    );
    println!(
        "{:<58} {copied:>8.1} MB/s ({:.2}x the PUT ceiling)",
        "collection: live blocks copied to new packs",
        copied / put_ceiling
    );
    Ok(())
}

fn cold_fetched(opened: &s3store::Opened) -> (u64, u64) {
    let s = opened.cache.stats();
    (s.added, s.added_bytes)
}

/// Bytes of regular files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
