//! A real Garage cluster on loopback for the benchmarks and the tests
//! (which include this file): three nodes in three zones with replication
//! factor 3, a bucket and a key. Uses only std and tempfile, so a test can
//! include it with `#[path]`.
#![allow(dead_code)] // The benchmarks use less of it than the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The garage binary: `$GARAGE`, else `garage` on the PATH or in
/// ~/.cargo/bin (where `.ci/run` installs it).
pub fn garage_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// A loopback port no other cluster of this process was given and that
/// nothing listens on now. (Asking the kernel for port 0 and letting go of
/// it races with the other clusters the tests start at the same moment.)
/// Below Linux's ephemeral range (32768 and up): a port there that is free
/// when chosen can be taken as the local end of some outgoing connection,
/// the nodes' own among them, before Garage binds it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        24000 + (std::process::id() % 100) as u16 * 80,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct GarageNode {
    pub config: PathBuf,
    pub s3_port: u16,
    child: Option<Child>,
}

pub struct Garage {
    pub dir: tempfile::TempDir,
    binary: PathBuf,
    pub nodes: Vec<GarageNode>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Starts three nodes, lays them out in zones dc1..dc3, and makes
    /// `bucket` with a key that may read and write it.
    pub fn start(bucket: &str) -> Result<Garage, String> {
        let binary = garage_binary().ok_or(
            "no garage binary: `.ci/run` installs it (cargo install garage --locked), or set GARAGE",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("colony-garage")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let secret: String = {
            let mut b = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
                .map_err(|e| e.to_string())?;
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let home = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            let config = home.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{h}/meta\"\ndata_dir = \"{h}/data\"\ndb_engine = \"lmdb\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     compression_level = \"none\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    h = home.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            nodes.push(GarageNode {
                config,
                s3_port: s3,
                child: None,
            });
        }
        let mut g = Garage {
            dir,
            binary,
            nodes,
            bucket: bucket.to_string(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..3 {
            g.start_node(i)?;
        }
        let ids: Vec<String> = (0..3)
            .map(|i| g.cli_retrying(i, &["node", "id", "-q"]))
            .collect::<Result<_, _>>()?;
        for id in &ids[1..] {
            g.cli_retrying(0, &["node", "connect", id.trim()])?;
        }
        for (i, id) in ids.iter().enumerate() {
            let short = &id.trim()[..16];
            g.cli(
                0,
                &[
                    "layout",
                    "assign",
                    "-z",
                    &format!("dc{}", i + 1),
                    "-c",
                    "2G",
                    short,
                ],
            )?;
        }
        g.cli(0, &["layout", "apply", "--version", "1"])?;
        g.wait_healthy();
        g.cli_retrying(0, &["bucket", "create", bucket])?;
        let key = g.cli(0, &["key", "create", "colony-key"])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("no {name} in garage's answer: {key}"))
        };
        g.key_id = field("Key ID:")?;
        g.secret = field("Secret key:")?;
        g.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                bucket,
                "--key",
                "colony-key",
            ],
        )?;
        Ok(g)
    }

    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join(format!("n{}.log", i + 1)))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting garage: {e}"))?;
        self.nodes[i].child = Some(child);
        // Up once its S3 port answers.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].s3_port)).is_err() {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || start.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(self.dir.path().join(format!("n{}.log", i + 1)))
                    .unwrap_or_default();
                return Err(format!("garage node {} did not start: {log}", i + 1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Links the nodes again after restarts (they would find each other
    /// by themselves, but not soon).
    pub fn reconnect(&self) {
        let ids: Vec<String> = (0..self.nodes.len())
            .filter_map(|i| self.cli_retrying(i, &["node", "id", "-q"]).ok())
            .collect();
        for id in ids.iter().skip(1) {
            let _ = self.cli_retrying(0, &["node", "connect", id.trim()]);
        }
        self.wait_healthy();
    }

    /// Waits (up to 30 s) until every node sees all three healthy.
    pub fn wait_healthy(&self) {
        let start = Instant::now();
        for i in 0..self.nodes.len() {
            loop {
                let healthy = self.cli(i, &["status"]).is_ok_and(|s| {
                    !s.contains("FAILED NODES")
                        && s.lines().filter(|l| l.contains("127.0.0.1:")).count() >= 3
                });
                if healthy || start.elapsed() > Duration::from_secs(30) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// kill -9 of node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "garage {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// As `cli`, while the cluster is still coming up.
    fn cli_retrying(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let start = Instant::now();
        loop {
            match self.cli(node, args) {
                Ok(out) => return Ok(out),
                Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Node `i`'s S3 endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// The variables that point colony at the bucket through node `i`.
    pub fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint(i)),
            ("AWS_REGION", "garage".into()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
