//! The `colony venti` commands as a user runs them: a real server process,
//! the CLI clients, SIGTERM and SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use venti::{BlockStore, BlockType, Client, LogStore, Score};

use crate::common::run::{COLONY, run};

/// A `colony venti serve` child process; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(store: &Path) -> Server {
        let mut child = Command::new(COLONY)
            .args(["venti", "serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start colony venti serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, addr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for exit and returns (success, stderr).
    fn wait(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status.success(), err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn colony(args: &[&str], stdin: &[u8]) -> std::process::Output {
    run(args, &[], stdin)
}

#[test]
fn write_read_and_sync_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let h = server.addr.as_str();

    let out = colony(&["venti", "write", "-h", h], b"hello world");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed\n"
    );

    // -z truncates for the type before hashing (the spec's vector).
    let out = colony(&["venti", "write", "-z", "-h", h], b"abc\0\0\0");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "a9993e364706816aba3e25717850c26c9cd0d89d\n"
    );
    let out = colony(&["venti", "write", "-t", "8", "-h", h], b"dir block");
    let dir_score = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let out = colony(
        &[
            "venti",
            "read",
            "-h",
            h,
            "-t",
            "0",
            "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed",
        ],
        b"",
    );
    assert_eq!(out.stdout, b"hello world");
    // Without -t every type is tried; a label prefix is accepted.
    let out = colony(
        &["venti", "read", "-h", h, &format!("vac:{dir_score}")],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"dir block");

    // The address may come from $venti instead of -h, in Plan 9 dial form.
    let port = h.rsplit(':').next().unwrap();
    let out = Command::new(COLONY)
        .args(["venti", "sync"])
        .env("venti", format!("tcp!127.0.0.1!{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Failures: non-zero exit, the reason on stderr, nothing on stdout.
    let missing = "6f8f2141577ba09cd814316ef160871cc2dcadcc";
    let out = colony(&["venti", "read", "-h", h, "-t", "0", missing], b"");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("no block with score {missing}/0 exists")),
        "{err}"
    );

    let out = colony(&["venti", "read", "-h", h, "xyz"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad score"));

    let out = colony(&["venti", "write", "-h", h], &vec![b'x'; 60000]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lump too large")
            || String::from_utf8_lossy(&out.stderr).contains("larger than the limit")
    );

    let out = colony(&["venti", "write"], b"x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no venti server given"));
}

#[test]
fn sigterm_syncs_and_the_next_start_scans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = colony(
        &["venti", "write", "-h", &server.addr],
        b"survives shutdown",
    );
    assert!(out.status.success());
    server.signal("-TERM");
    let (ok, stderr) = server.wait();
    assert!(ok, "exit status after SIGTERM; stderr: {stderr}");
    assert!(stderr.contains("store synced"), "{stderr}");

    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery(), &venti::store::Recovery::default());
    assert_eq!(
        store
            .read(&Score::of(b"survives shutdown"), BlockType::DATA)
            .unwrap()
            .unwrap(),
        b"survives shutdown"
    );
}

fn crash_block(i: u64) -> Vec<u8> {
    let len = 50 + (i * 7919 % 700) as usize;
    let mut b = vec![(i % 253) as u8; len];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

/// SIGKILL in the middle of a stream of pipelined writes: every block written
/// before a completed sync is readable afterwards, and no read returns wrong
/// bytes. Enough blocks are written to cross an index batch, so the crash
/// lands after an index commit with more records behind it.
#[test]
fn sigkill_mid_write_loses_no_synced_block() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let synced_upto = rt.block_on(async {
        let client = Client::connect_tcp(&server.addr).await.unwrap();
        let mut synced = 0u64;
        let mut i = 0u64;
        while i < 80_000 {
            let batch: Vec<_> = (i..i + 10_000)
                .map(|j| {
                    let c = client.clone();
                    tokio::spawn(async move { c.write(BlockType::DATA, crash_block(j)).await })
                })
                .collect();
            for t in batch {
                t.await.unwrap().unwrap();
            }
            client.sync().await.unwrap();
            i += 10_000;
            synced = i;
        }
        // Keep writing without syncing, and kill the server in the middle.
        let writer = {
            let c = client.clone();
            tokio::spawn(async move {
                let mut j = 80_000u64;
                loop {
                    let batch: Vec<_> = (j..j + 64)
                        .map(|k| {
                            let c = c.clone();
                            tokio::spawn(
                                async move { c.write(BlockType::DATA, crash_block(k)).await },
                            )
                        })
                        .collect();
                    for t in batch {
                        if t.await.unwrap().is_err() {
                            return j;
                        }
                    }
                    j += 64;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.signal("-KILL");
        let reached = writer.await.unwrap();
        assert!(
            reached > 80_000,
            "the kill should land while unsynced writes are flowing"
        );
        synced
    });
    drop(server);

    let store = LogStore::open(dir.path()).unwrap();
    // The index had committed its first batch; the records after it were found by the scan.
    assert!(
        store.recovery().records_recovered > 0,
        "{:?}",
        store.recovery()
    );
    for i in 0..synced_upto {
        let data = crash_block(i);
        let got = store.read(&Score::of(&data), BlockType::DATA).unwrap();
        assert_eq!(got.as_deref(), Some(&data[..]), "synced block {i}");
    }
    // Unsynced blocks may or may not have made it, but are never wrong.
    for i in synced_upto..synced_upto + 20_000 {
        let data = crash_block(i);
        if let Some(got) = store.read(&Score::of(&data), BlockType::DATA).unwrap() {
            assert_eq!(got, data, "unsynced block {i}");
        }
    }
}
