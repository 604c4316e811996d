//! A multi-host test harness: each host a network namespace of its own with
//! its own address on a veth link to a bridge (in a hub namespace), so
//! traffic between hosts crosses real interfaces. The namespaces (and with
//! them their links and the bridge) are removed on drop, also when the test
//! fails; a test's processes on the hosts are its own to end first.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Hosts {
    hub: String,
    names: Vec<String>,
    /// Each host's address, in order.
    pub addrs: Vec<String>,
}

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{cmd}");
}

/// Whether this machine lets a test make namespaces (root, and ip(8)).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && ip) {
        eprintln!("skipped: network namespaces need root and ip(8) (CI has both)");
    }
    root && ip
}

impl Hosts {
    /// `n` hosts on one link, at 10.210.K.1, 10.210.K.2, …
    pub fn new(n: usize) -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{seq}", std::process::id() % 10000);
        let subnet = (std::process::id() * 7 + seq * 31) % 250;
        let hub = format!("hub{tag}");
        sh(&format!(
            "ip netns add {hub} && ip -n {hub} link add br0 type bridge && ip -n {hub} link set br0 up"
        ));
        let mut hosts = Hosts {
            hub,
            names: Vec::new(),
            addrs: Vec::new(),
        };
        for i in 0..n {
            let name = format!("h{tag}x{i}");
            let addr = format!("10.210.{subnet}.{}", i + 1);
            // Pushed first, so a failure below still removes it.
            hosts.names.push(name.clone());
            let hub = &hosts.hub;
            sh(&format!(
                "ip netns add {name} && \
                 ip link add eth0 netns {name} type veth peer name p{i} netns {hub} && \
                 ip -n {hub} link set p{i} master br0 up && \
                 ip -n {name} addr add {addr}/24 dev eth0 && \
                 ip -n {name} link set eth0 up && ip -n {name} link set lo up"
            ));
            hosts.addrs.push(addr);
        }
        hosts
    }

    /// Host `i`'s network namespace.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// `program`, to run on host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.names[i]))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Hosts {
    /// Cuts host `i` off the bridge (its link goes down), as a pulled cable.
    #[allow(dead_code)]
    pub fn cut(&self, i: usize) {
        sh(&format!("ip -n {} link set p{i} down", self.hub));
    }

    /// Plugs host `i` back in.
    #[allow(dead_code)]
    pub fn heal(&self, i: usize) {
        sh(&format!("ip -n {} link set p{i} up", self.hub));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.names.iter().chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Two test hosts: a node's (0) and a web server's (1), which serves
/// `/hello` ("from another host") on `port`; all of it ends on drop.
pub struct WebHost {
    pub hosts: Hosts,
    _server: super::grid::Reaped,
    _www: tempfile::TempDir,
}

impl WebHost {
    pub fn new(port: u16) -> WebHost {
        let hosts = Hosts::new(2);
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("hello"), "from another host\n").unwrap();
        let server = hosts
            .command(1, "busybox")
            .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(www.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        WebHost {
            hosts,
            _server: super::grid::Reaped(server),
            _www: www,
        }
    }
}
