//! The block store on a real Garage cluster (three nodes, three zones,
//! replication factor 3, on loopback), started and torn down here:
//! writers sharing a bucket, a Garage node killed during writes, damaged
//! objects, an unreachable store, and colony's commands on a bucket.
//!
//! `.ci/run` installs Garage; without it these tests fail, unless
//! COLONY_SKIP_GARAGE=1 says to skip them.

#[path = "../../src/bench/garage_cluster.rs"]
mod garage_cluster;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use garage_cluster::Garage;
use object_store::ObjectStoreExt;
use s3store::{PackStore, Settings};
use venti::{BlockStore, BlockType, Score};

use crate::common::run::COLONY;

fn garage(bucket: &str) -> Option<Garage> {
    if std::env::var_os("COLONY_SKIP_GARAGE").is_some() {
        eprintln!("skipped: COLONY_SKIP_GARAGE is set");
        return None;
    }
    Some(Garage::start(bucket).unwrap_or_else(|e| panic!("{e}")))
}

/// A writer's settings: through Garage node `node`, with its own cache.
fn settings(g: &Garage, node: usize, prefix: &str, cache: &Path) -> Settings {
    Settings {
        url: s3store::S3Url::parse(&format!("s3://{}/{prefix}", g.bucket)).unwrap(),
        endpoint: Some(g.endpoint(node)),
        region: "garage".into(),
        access_key_id: g.key_id.clone(),
        secret_access_key: g.secret.clone(),
        session_token: None,
        cache: cache.to_path_buf(),
        cache_bytes: 64 << 20,
        // Small packs, so a few hundred blocks make many.
        pack_bytes: 256 << 10,
        file: None,
    }
}

/// Distinct blocks: `n` of them from `seed`.
fn blocks(seed: u32, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = vec![0u8; 8192];
            b[..4].copy_from_slice(&seed.to_be_bytes());
            b[4..8].copy_from_slice(&i.to_be_bytes());
            b
        })
        .collect()
}

#[test]
fn writers_share_a_bucket_and_a_third_reader_sees_all() {
    let Some(g) = garage("shared") else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Two writers at once, through different Garage nodes; 100 blocks in
    // common (both store them: harmless, and counted).
    let common = blocks(0, 100);
    // Both open before either writes, so neither knows the other's blocks.
    let stores: Vec<PackStore> = [1usize, 2]
        .into_iter()
        .map(|w| {
            PackStore::open(&settings(
                &g,
                w - 1,
                "grid",
                &tmp.path().join(format!("w{w}")),
            ))
            .unwrap()
        })
        .collect();
    let handles: Vec<_> = stores
        .into_iter()
        .zip([1u32, 2])
        .map(|(store, w)| {
            let common = common.clone();
            std::thread::spawn(move || {
                let mut scores = Vec::new();
                for b in blocks(w, 300).iter().chain(&common) {
                    scores.push(store.write(BlockType::DATA, b).unwrap());
                }
                store.sync().unwrap();
                (scores, store.stats())
            })
        })
        .collect();
    let written: Vec<(Vec<Score>, s3store::Stats)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (_, stats) in &written {
        assert!(stats.puts >= 2 * 8, "packs went as many objects: {stats:?}");
    }
    // A third, which wrote nothing, reads every block of both.
    let reader = PackStore::open(&settings(&g, 2, "grid", &tmp.path().join("r"))).unwrap();
    let want: HashMap<Score, Vec<u8>> = blocks(1, 300)
        .into_iter()
        .chain(blocks(2, 300))
        .chain(common.clone())
        .map(|b| (Score::of(&b), b))
        .collect();
    for (score, data) in &want {
        assert!(reader.read(score, BlockType::DATA).unwrap().as_ref() == Some(data));
    }
    let stats = reader.stats();
    assert_eq!(stats.blocks, 700);
    // Each common block is in both writers' packs.
    assert_eq!(stats.duplicates, 100);
    // Cold reads cost a ranged GET per stretch of a pack, not per block:
    // these packs are shorter than a stretch, so at most one each.
    assert!(
        stats.block_gets <= stats.packs,
        "{} GETs for {} packs",
        stats.block_gets,
        stats.packs
    );
    // A block nobody wrote is not there (and costs a LIST, not an error).
    assert!(
        reader
            .read(&Score::of(b"never written"), BlockType::DATA)
            .unwrap()
            .is_none()
    );
    // A writer that knows a block does not store it again; and a restart
    // learns the bucket from its local index copies: a LIST to check the
    // bucket, one for new indexes, and no index fetched again (one GET:
    // of the grace period a collector would publish, none here).
    drop(reader);
    let again = PackStore::open(&settings(&g, 0, "grid", &tmp.path().join("r"))).unwrap();
    for b in &common {
        again.write(BlockType::DATA, b).unwrap();
    }
    again.sync().unwrap();
    let s = again.stats();
    assert_eq!((s.deduplicated, s.puts), (100, 0), "{s:?}");
    assert_eq!((s.lists, s.object_gets, s.blocks), (2, 1, 700), "{s:?}");
    drop(again);
    // A second process on one cache directory is refused, by name.
    let first = PackStore::open(&settings(&g, 0, "grid", &tmp.path().join("w1"))).unwrap();
    let err = PackStore::open(&settings(&g, 0, "grid", &tmp.path().join("w1")))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(first);
}

#[test]
fn every_acknowledged_block_survives_a_garage_node_killed_during_writes() {
    let Some(mut g) = garage("faults") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(PackStore::open(&settings(&g, 0, "kill", &tmp.path().join("w"))).unwrap());
    // Invariant: a block whose sync returned Ok reads back, whatever
    // happened to a Garage node meanwhile.
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut unacknowledged = 0;
            for round in 0..20u32 {
                let batch = blocks(100 + round, 50);
                for b in &batch {
                    store.write(BlockType::DATA, b).unwrap();
                }
                match store.sync() {
                    Ok(()) => acknowledged.extend(batch),
                    Err(_) => unacknowledged += 1,
                }
            }
            (acknowledged, unacknowledged)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Not the node the writer talks to: the cluster keeps a quorum.
    g.kill_node(2);
    let (acknowledged, unacknowledged) = writer.join().unwrap();
    assert!(!acknowledged.is_empty());
    eprintln!(
        "{} blocks acknowledged, {unacknowledged} syncs failed",
        acknowledged.len()
    );
    drop(store);
    // A fresh reader (no cache), through another node.
    let reader = PackStore::open(&settings(&g, 1, "kill", &tmp.path().join("r"))).unwrap();
    for b in &acknowledged {
        assert!(
            reader
                .read(&Score::of(b), BlockType::DATA)
                .unwrap()
                .as_ref()
                == Some(b),
            "a block read back wrong"
        );
    }
    // And with the node back, it has them too.
    g.start_node(2).unwrap();
}

#[test]
fn damaged_objects_are_named_and_never_served() {
    let Some(g) = garage("damage") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&g, 0, "dmg", &tmp.path().join("w"));
    let store = PackStore::open(&s).unwrap();
    let data = blocks(7, 40);
    for b in &data {
        store.write(BlockType::DATA, b).unwrap();
    }
    store.sync().unwrap();
    let writer = store.writer().to_string();
    drop(store);
    // The raw bucket, as someone (or a fault) might change it.
    let raw = raw_bucket(&g);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pack = object_store::path::Path::from(format!("dmg/packs/{writer}/00000000.pack"));
    let index = object_store::path::Path::from(format!("dmg/index/{writer}/00000000.idx"));
    let original = rt.block_on(async { raw.get(&pack).await.unwrap().bytes().await.unwrap() });

    // A damaged index: the pack is indexed again from its own records.
    let good_index = rt.block_on(async { raw.get(&index).await.unwrap().bytes().await.unwrap() });
    let mut bad = good_index.to_vec();
    bad[20] ^= 0xff;
    rt.block_on(raw.put(&index, bad.into())).unwrap();
    let reader = PackStore::open(&settings(&g, 1, "dmg", &tmp.path().join("r1"))).unwrap();
    assert_eq!(reader.stats().damaged_indexes, 1);
    for b in &data {
        assert!(
            reader
                .read(&Score::of(b), BlockType::DATA)
                .unwrap()
                .as_ref()
                == Some(b),
            "a block read back wrong"
        );
    }
    drop(reader);

    // A damaged pack (its index whole again): the block that fails its
    // score check is an error naming the pack, never its bytes.
    rt.block_on(raw.put(&index, good_index.into())).unwrap();
    // (The first block's data starts after the magic and its header.)
    let mut flipped = original.to_vec();
    flipped[8 + 25 + 10] ^= 0xff;
    rt.block_on(raw.put(&pack, flipped.into())).unwrap();
    let reader = PackStore::open(&settings(&g, 1, "dmg", &tmp.path().join("r2"))).unwrap();
    let victim = Score::of(&data[0]);
    let err = match reader.read(&victim, BlockType::DATA) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a damaged block was served"),
    };
    assert!(
        err.contains("score check") && err.contains(&writer),
        "{err}"
    );
    // The others are fine.
    assert!(
        reader
            .read(&Score::of(&data[1]), BlockType::DATA)
            .unwrap()
            .as_ref()
            == Some(&data[1]),
        "a block read back wrong"
    );
    // A pack cut short: the blocks past its end are errors. (A 256 KiB
    // pack holds the first 31 blocks.)
    rt.block_on(raw.put(&pack, original.slice(..original.len() / 2).into()))
        .unwrap();
    // (A fresh reader: this one keeps the stretch it read, which was whole.)
    let reader = PackStore::open(&settings(&g, 1, "dmg", &tmp.path().join("r3"))).unwrap();
    let err = match reader.read(&Score::of(&data[25]), BlockType::DATA) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a block past the end of a cut pack was served"),
    };
    assert!(err.contains(&writer), "{err}");
    // The blocks before the cut are still good.
    assert!(
        reader
            .read(&Score::of(&data[1]), BlockType::DATA)
            .unwrap()
            .as_ref()
            == Some(&data[1])
    );
}

#[test]
fn an_unreachable_store_fails_writes_clearly_and_loses_nothing_acknowledged() {
    let Some(mut g) = garage("outage") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let opened = s3store::open_with(&settings(&g, 0, "out", &tmp.path().join("w"))).unwrap();
    let store = opened.store.clone();
    let before = blocks(1, 20);
    for b in &before {
        store.write(BlockType::DATA, b).unwrap();
    }
    store.sync().unwrap();
    // Every node down.
    for i in 0..3 {
        g.kill_node(i);
    }
    // Cached blocks still read (the cache has what was written).
    assert!(
        store
            .read(&Score::of(&before[0]), BlockType::DATA)
            .unwrap()
            .as_ref()
            == Some(&before[0]),
        "a block read back wrong"
    );
    // A write is taken, but its sync fails with a clear error (after a
    // bounded retry) instead of acknowledging it.
    let during = blocks(2, 5);
    for b in &during {
        store.write(BlockType::DATA, b).unwrap();
    }
    let err = store.sync().unwrap_err().to_string();
    assert!(
        err.contains("sending") && err.contains("s3://outage/out"),
        "{err}"
    );
    // Opening the store now names the problem.
    let err = PackStore::open(&settings(&g, 0, "out", &tmp.path().join("x")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot reach"), "{err}");
    // Back up: the kept pack goes at the next sync, and a fresh reader
    // finds everything.
    for i in 0..3 {
        g.start_node(i).unwrap();
    }
    g.reconnect();
    let start = std::time::Instant::now();
    while let Err(e) = store.sync() {
        assert!(start.elapsed().as_secs() < 60, "sync never recovered: {e}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(opened);
    drop(store);
    let reader = PackStore::open(&settings(&g, 1, "out", &tmp.path().join("r"))).unwrap();
    for b in before.iter().chain(&during) {
        assert!(
            reader
                .read(&Score::of(b), BlockType::DATA)
                .unwrap()
                .as_ref()
                == Some(b),
            "a block read back wrong"
        );
    }
}

fn colony(g: &Garage, cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(COLONY)
        .args(args)
        .envs(g.env(0))
        .env("COLONY_S3_CACHE", cache)
        .env("COLONY_S3_CONFIG", "/dev/null")
        .output()
        .unwrap()
}

/// `colony ARGS` on the bucket, which must succeed: its stdout.
fn colony_ok(g: &Garage, cache: &Path, args: &[&str]) -> String {
    let out = colony(g, cache, args);
    assert!(
        out.status.success(),
        "colony {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn colony_vacs_into_a_bucket_and_unvacs_back_and_bad_settings_are_named() {
    let Some(g) = garage("trees") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), "on garage\n").unwrap();
    std::fs::write(src.join("big"), vec![7u8; 300_000]).unwrap();
    let url = format!("s3://{}/roots", g.bucket);
    let out = colony_ok(
        &g,
        &tmp.path().join("c1"),
        &["vac", "--store", &url, &format!("{}/.", src.display())],
    );
    let score = out.trim().to_string();
    assert!(score.starts_with("vac:"), "{score}");
    // Another machine (another cache) extracts it.
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    colony_ok(
        &g,
        &tmp.path().join("c2"),
        &["unvac", "--store", &url, &score, dest.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/motd")).unwrap(),
        "on garage\n"
    );
    assert!(std::fs::read(dest.join("big")).unwrap() == vec![7u8; 300_000]);

    // No credentials: named, with where to put them.
    let out = Command::new(COLONY)
        .args(["unvac", "--store", &url, &score])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("COLONY_S3_CONFIG", "/dev/null")
        .env("AWS_ENDPOINT_URL", g.endpoint(0))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no S3 credentials"),
        "{err}"
    );
    // A bucket that does not exist.
    let out = colony(
        &g,
        &tmp.path().join("c3"),
        &["unvac", "--store", "s3://nosuch/x", &score],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bucket nosuch does not exist"),
        "{err}"
    );
    // Wrong credentials.
    let out = Command::new(COLONY)
        .args(["unvac", "--store", &url, &score])
        .envs(g.env(0))
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .env("COLONY_S3_CACHE", tmp.path().join("c4"))
        .env("COLONY_S3_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refused the credentials"),
        "{err}"
    );
    // And the secret is never printed, even in an error.
    assert!(!err.contains(&g.secret));
}

#[test]
fn a_mount_on_a_bucket_saves_into_it_and_a_restart_finds_everything_through_the_index() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: mounting needs root and /dev/fuse (CI has both)");
        return;
    }
    let Some(g) = garage("mounts") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), "from the bucket\n").unwrap();
    let url = format!("s3://{}/m", g.bucket);
    let cache = tmp.path().join("cache");
    let out = colony_ok(
        &g,
        &cache,
        &["vac", "--store", &url, &format!("{}/.", src.display())],
    );
    let root = out.trim().to_string();

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = Command::new(COLONY)
        .args(["mount", "--store", &url, &root])
        .arg(&mnt)
        .envs(g.env(0))
        .env("COLONY_S3_CACHE", &cache)
        .env("COLONY_S3_CONFIG", "/dev/null")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mount.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("mounted vac:"), "{line:?}");
    // The secret is in the environment, never in what `ps` shows.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", mount.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&g.secret));
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello")).unwrap(),
        "from the bucket\n"
    );
    std::fs::write(mnt.join("new"), "saved through the mount\n").unwrap();
    let saved = Command::new(COLONY).arg("save").arg(&mnt).output().unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let saved = String::from_utf8(saved.stdout).unwrap().trim().to_string();
    let _ = Command::new("kill")
        .args(["-TERM", &mount.id().to_string()])
        .status();
    assert!(mount.wait().unwrap().success());

    // Another machine (a fresh cache): what was saved is in the bucket.
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    colony_ok(
        &g,
        &tmp.path().join("elsewhere"),
        &["unvac", "--store", &url, &saved, dest.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("new")).unwrap(),
        "saved through the mount\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("hello")).unwrap(),
        "from the bucket\n"
    );
    // And this one after its restart: its index copies say where
    // everything is, with one LIST for anything new.
    let listing = colony_ok(&g, &cache, &["unvac", "--store", &url, "-t", &saved]);
    assert!(
        listing.contains("new") && listing.contains("hello"),
        "{listing}"
    );
}

/// A root's working set on a bucket: fetched ahead with one ranged GET per
/// stretch of a pack (many at once), not one per block; every block
/// arrives checked, and a later read costs no request.
#[test]
fn a_working_set_on_a_bucket_is_fetched_ahead_a_stretch_at_a_time() {
    let Some(g) = garage("ahead") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let writer = PackStore::open(&settings(&g, 0, "ws", &tmp.path().join("w"))).unwrap();
    let data = blocks(9, 300);
    let keys: Vec<(Score, BlockType)> = data
        .iter()
        .map(|b| (writer.write(BlockType::DATA, b).unwrap(), BlockType::DATA))
        .collect();
    writer.sync().unwrap();
    drop(writer);

    // read_each hands over every block, each once, whatever the order.
    let reader = PackStore::open(&settings(&g, 1, "ws", &tmp.path().join("r"))).unwrap();
    let mut got = vec![None; keys.len()];
    reader.read_each(&keys, &mut |i, block| {
        assert!(got[i].is_none(), "block {i} twice");
        got[i] = Some(block.unwrap().unwrap());
    });
    for (i, b) in got.iter().enumerate() {
        assert_eq!(b.as_ref(), Some(&data[i]), "block {i}");
    }
    let s = reader.stats();
    assert!(
        s.block_gets <= s.packs,
        "{} GETs for {} packs",
        s.block_gets,
        s.packs
    );
    drop(reader);

    // As a storage node on the bucket opens it: the hint fills its cache.
    let opened = s3store::open_with(&settings(&g, 2, "ws", &tmp.path().join("n"))).unwrap();
    opened.store.prefetch(keys.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while opened.cache.stats().blocks < keys.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            opened.cache.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gets = opened.packs.stats().block_gets;
    assert!(gets <= opened.packs.stats().packs, "{gets} GETs");
    for (i, (score, ty)) in keys.iter().enumerate() {
        assert_eq!(
            opened.store.read(score, *ty).unwrap().as_ref(),
            Some(&data[i])
        );
    }
    assert_eq!(
        opened.packs.stats().block_gets,
        gets,
        "reads after it cost no GET"
    );
}

/// The bucket itself, as anyone with its key sees it.
fn raw_bucket(g: &Garage) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&g.bucket)
        .with_region("garage")
        .with_endpoint(g.endpoint(0))
        .with_allow_http(true)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap()
}

/// Every object key under `prefix` in the bucket.
fn keys_under(g: &Garage, prefix: &str) -> std::collections::BTreeSet<String> {
    let raw = raw_bucket(g);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let path = object_store::path::Path::from(prefix);
        let mut out = std::collections::BTreeSet::new();
        let mut listing = object_store::ObjectStore::list(&raw, Some(&path));
        while let Some(meta) = listing.next().await {
            out.insert(meta.unwrap().location.to_string());
        }
        out
    })
}

/// A collection of a bucket while a second writer goes on (real Garage,
/// two processes' worth of stores). Invariants: every live block reads
/// back whole afterwards through the collector, through the second writer
/// (whose index still named the deleted packs) and through a fresh
/// reader; a dead block the second writer wrote again during the
/// collection survives (copied forward); what the second writer writes
/// while the sweep runs is all there after; the second writer's packs and
/// indexes are all still there; mostly dead packs are written again,
/// dead ones deleted, mostly live ones kept, and the bucket's bytes fall.
/// Then the collector restarts (learning its packs again in directory
/// order) and, once everything is old, a second collection with all of it
/// live changes nothing and loses nothing.
#[test]
fn a_collection_rewrites_and_deletes_old_packs_while_another_writer_goes_on() {
    let Some(g) = garage("collect") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grace = std::time::Duration::from_secs(1);
    let a = PackStore::open(&settings(&g, 0, "gc", &tmp.path().join("a"))).unwrap();
    a.set_grace(grace);
    // Which publishes the grace period for every writer.
    a.register_collector("a", "collector a").unwrap();
    // 600 blocks of 8 KiB in 256 KiB packs: about 20 packs. Blocks
    // 0..200 are one live in ten (their packs mostly dead), 200..400 all
    // dead, 400..600 all live.
    let data = blocks(30, 600);
    let live_at = |i: usize| (i < 200 && i.is_multiple_of(10)) || i >= 400;
    for b in &data {
        a.write(BlockType::DATA, b).unwrap();
    }
    a.sync().unwrap();
    let old_objects = keys_under(&g, "gc/packs");
    // The second writer is left at the default grace period (a day): it
    // keeps to the collector's, published in the bucket.
    let b = PackStore::open(&settings(&g, 1, "gc", &tmp.path().join("b"))).unwrap();
    // Older than twice the grace period, by the bucket's clock.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let candidates = a.collection_candidates().unwrap();
    assert_eq!(candidates.old(), old_objects.len(), "{old_objects:?}");

    // While the collection marks: the second writer's fresh blocks, and a
    // dead block written again (an archive not named yet that holds it).
    let fresh = blocks(31, 100);
    for x in &fresh {
        b.write(BlockType::DATA, x).unwrap();
    }
    let again = &data[250];
    b.write(BlockType::DATA, again).unwrap();
    b.sync().unwrap();
    assert_eq!(b.stats().copied_forward, 1, "{:?}", b.stats());
    let b_objects: Vec<String> = keys_under(&g, "gc")
        .into_iter()
        .filter(|k| k.contains(b.writer()))
        .collect();
    assert!(b_objects.len() >= 2, "{b_objects:?}");

    let live: std::collections::HashSet<Score> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| live_at(*i))
        .map(|(_, d)| Score::of(d))
        .collect();
    // The second writer goes on while the sweep runs, and a reader opens.
    let during = blocks(32, 200);
    let swept = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for x in &during {
                b.write(BlockType::DATA, x).unwrap();
            }
            b.sync().unwrap();
            let d = PackStore::open(&settings(&g, 1, "gc", &tmp.path().join("d"))).unwrap();
            for (i, x) in data.iter().enumerate().filter(|(i, _)| live_at(*i)) {
                assert_eq!(
                    d.read(&Score::of(x), BlockType::DATA).unwrap().as_deref(),
                    Some(&x[..]),
                    "live block {i} through a reader opened during the sweep"
                );
            }
        });
        let swept = a
            .sweep(&candidates, "a", &|s| live.contains(s), &mut |_, _| {})
            .unwrap();
        writer.join().unwrap();
        swept
    });
    eprintln!("{swept}");
    assert!(swept.packs_rewritten >= 5, "{swept:?}");
    assert!(swept.packs_deleted >= 5, "{swept:?}");
    assert!(swept.packs_kept >= 5, "{swept:?}");
    // One in ten of the first 200, and the live ones of a pack across the
    // boundary at 400 if that pack is mostly dead (a pack holds 31).
    assert!((20..=20 + 31).contains(&swept.blocks_copied), "{swept:?}");
    assert!(swept.bytes_after * 10 < swept.bytes_before * 6, "{swept:?}");

    // The second writer's objects are untouched.
    let now = keys_under(&g, "gc");
    for k in &b_objects {
        assert!(now.contains(k), "{k} went");
    }
    // Every live block, through each store; the fresh reader knows only
    // what the bucket holds now.
    let c = PackStore::open(&settings(&g, 2, "gc", &tmp.path().join("c"))).unwrap();
    for (i, d) in data.iter().enumerate() {
        let s = Score::of(d);
        if live_at(i) {
            for (who, store) in [("collector", &a), ("writer", &b), ("reader", &c)] {
                assert_eq!(
                    store.read(&s, BlockType::DATA).unwrap().as_deref(),
                    Some(&d[..]),
                    "live block {i} through the {who}"
                );
            }
        } else if i == 250 {
            assert_eq!(
                c.read(&s, BlockType::DATA).unwrap().as_deref(),
                Some(&d[..]),
                "the block written again"
            );
        } else {
            assert_eq!(c.read(&s, BlockType::DATA).unwrap(), None, "dead block {i}");
        }
    }
    for x in fresh.iter().chain(&during) {
        assert_eq!(
            c.read(&Score::of(x), BlockType::DATA).unwrap().as_deref(),
            Some(&x[..])
        );
    }
    // The second writer met deleted packs and caught up.
    assert!(b.stats().packs_forgotten > 0, "{:?}", b.stats());
    // A restart, and a second collection once everything is old, with
    // the second writer's blocks live too: what is left is live, so it
    // changes nothing, and every block reads from a fresh reader after.
    let live: std::collections::HashSet<Score> = live
        .into_iter()
        .chain(fresh.iter().chain(&during).map(|x| Score::of(x)))
        .chain([Score::of(&data[250])])
        .collect();
    drop(a);
    let a = PackStore::open(&settings(&g, 0, "gc", &tmp.path().join("a"))).unwrap();
    a.set_grace(grace);
    // And a pack without an index, as a writer killed between its two
    // objects leaves: deleted once old.
    let ghost = "gc/packs/ghost/00000000.pack";
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(raw_bucket(&g).put(
            &object_store::path::Path::from(ghost),
            s3store::Bytes::from_static(b"CLNYPAK1").into(),
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let again = a.collection_candidates().unwrap();
    let second = a
        .sweep(&again, "a", &|s| live.contains(s), &mut |_, _| {})
        .unwrap();
    assert_eq!(
        (
            second.packs_rewritten,
            second.packs_deleted,
            second.orphans_deleted
        ),
        (0, 0, 1),
        "{second:?}"
    );
    assert!(!keys_under(&g, "gc/packs").contains(ghost));
    let e = PackStore::open(&settings(&g, 2, "gc", &tmp.path().join("e"))).unwrap();
    for x in data.iter().chain(&fresh).chain(&during) {
        let s = Score::of(x);
        if live.contains(&s) {
            assert_eq!(
                e.read(&s, BlockType::DATA).unwrap().as_deref(),
                Some(&x[..])
            );
        }
    }
}

/// A storage node on a bucket collects it (`colony gc`): a forgotten
/// root's packs leave the bucket, a named root extracts whole before and
/// after, also when the node is killed in the middle of a collection;
/// and another storage node registered on the bucket stops collections,
/// naming it.
#[test]
fn a_node_on_a_bucket_collects_it_and_a_kill_loses_no_live_root() {
    use crate::common::grid::random_tree;
    use crate::common::node::Node;
    let Some(g) = garage("gcnode") else { return };
    let mut n = Node::with_users();
    let cache = n.tmp.path().join("s3cache");
    n.env = g.env(0);
    n.env.push(("COLONY_S3_CACHE", cache.display().to_string()));
    n.env.push(("COLONY_S3_CONFIG", "/dev/null".into()));
    let venti = format!(
        "tcp!127.0.0.1!{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let url = format!("s3://{}/n", g.bucket);
    let args = [
        "--store",
        url.as_str(),
        "--venti-listen",
        venti.as_str(),
        "--gc-grace",
        "1s",
        "--gc-every",
        "0",
    ];
    n.start(&args);
    let import = |n: &Node, name: &str, mb: usize| {
        let tree = random_tree(n.tmp.path(), name, mb);
        n.colony(&["import", name, tree.to_str().unwrap(), "--user", "alice"]);
        let db = ndb::Db::open(&n.state.join("scorenames")).unwrap();
        let root = db
            .entries()
            .iter()
            .rev()
            .find(|e| e.get("scorename") == Some(name))
            .and_then(|e| e.get("rootscore").map(str::to_string))
            .unwrap();
        (root, tree)
    };
    let scratch = n.tmp.path().to_path_buf();
    let extracts = |root: &str, tree: &Path| {
        let dest = tempfile::tempdir_in(&scratch).unwrap();
        let out = Command::new(COLONY)
            .args(["unvac", "-h", &venti, root])
            .arg(dest.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{root} does not extract: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff = Command::new("diff")
            .arg("-r")
            .arg(tree)
            .arg(dest.path())
            .output()
            .unwrap();
        assert!(
            diff.status.success(),
            "{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    };
    let pack_count = || keys_under(&g, "n/packs").len();
    let kept = import(&n, "kept", 1);
    for name in ["junk0", "junk1"] {
        import(&n, name, 2);
        n.ok("alice", &["forget", name]);
    }
    let packs_with_junk = pack_count();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    for round in 0..3u64 {
        // kill -9 somewhere in a collection, then the node again.
        let gc = Command::new(COLONY)
            .args(["gc", "--state"])
            .arg(&n.state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50 + 120 * round));
        n.kill9();
        let _ = gc.wait_with_output();
        n.start(&args);
        extracts(&kept.0, &kept.1);
    }
    // What the killed collections left (copies, packs without an index)
    // is old by the next one.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let report = n.colony(&["gc"]);
    extracts(&kept.0, &kept.1);
    // The junk's packs (4 MB of its own data) are gone; the kept root's
    // are not (it extracts, through the bucket: a fresh cache).
    assert!(
        pack_count() < packs_with_junk,
        "{packs_with_junk} → {} packs\n{report}",
        pack_count()
    );
    n.stop();
    let _ = std::fs::remove_dir_all(&cache);
    n.start(&args);
    extracts(&kept.0, &kept.1);

    // Another storage node on the bucket: its names are unseen here.
    let other = PackStore::open(&settings(&g, 1, "n", &n.tmp.path().join("other"))).unwrap();
    other
        .register_collector("node-b", "node b on elsewhere")
        .unwrap();
    let err = crate::common::run::gc(&n.state).expect_err("a collection beside another node");
    assert!(
        err.contains("node-b") && err.contains("uses this bucket too"),
        "{err}"
    );
    extracts(&kept.0, &kept.1);
}

/// A collection looks at the bucket's registry again before it deletes:
/// a storage node that registered while it ran stops it, and nothing is
/// deleted. A pack whose index cannot be read (here, damaged in the
/// bucket and its local copy gone) is kept, not taken for empty.
#[test]
fn a_collection_stops_for_a_node_that_came_meanwhile_and_keeps_a_pack_it_cannot_read() {
    let Some(g) = garage("collect2") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = PackStore::open(&settings(&g, 0, "gc2", &tmp.path().join("a"))).unwrap();
    a.set_grace(std::time::Duration::from_secs(1));
    a.register_collector("a", "collector a").unwrap();
    // About four packs, all of it dead.
    for b in blocks(40, 100) {
        a.write(BlockType::DATA, &b).unwrap();
    }
    a.sync().unwrap();
    let packs = keys_under(&g, "gc2/packs");
    assert!(packs.len() >= 3, "{packs:?}");
    // The first pack's index, damaged in the bucket, and not kept here.
    let index = format!("gc2/index/{}/00000000.idx", a.writer());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(raw_bucket(&g).put(
        &object_store::path::Path::from(index.as_str()),
        s3store::Bytes::from_static(b"not an index").into(),
    ))
    .unwrap();
    std::fs::remove_file(tmp.path().join("a/index").join(index.replace('/', "%"))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3100));

    let other = PackStore::open(&settings(&g, 1, "gc2", &tmp.path().join("b"))).unwrap();
    let candidates = a.collection_candidates().unwrap();
    let mut registered = false;
    let err = a
        .sweep(&candidates, "a", &|_| false, &mut |_, _| {
            if !registered {
                other
                    .register_collector("node-b", "node b, come meanwhile")
                    .unwrap();
                registered = true;
            }
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node-b") && err.contains("uses this bucket too"),
        "{err}"
    );
    assert_eq!(keys_under(&g, "gc2/packs"), packs, "nothing was deleted");

    // node-b is gone for good: the next collection deletes what it may.
    rt.block_on(raw_bucket(&g).delete(&object_store::path::Path::from("gc2/users/node-b")))
        .unwrap();
    let candidates = a.collection_candidates().unwrap();
    let swept = a
        .sweep(&candidates, "a", &|_| false, &mut |_, _| {})
        .unwrap();
    assert_eq!(
        (swept.packs_deleted, swept.packs_kept),
        (packs.len() as u64 - 1, 1),
        "{swept:?}"
    );
    let left = keys_under(&g, "gc2/packs");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left.iter().next().unwrap().ends_with("00000000.pack"));
}
