//! The grid's message streams as hubs, as the original's `gridsvc` had
//! them: every command a storage node runs goes to `sto.in`, its outcome to
//! `sto.out`, every request to a cpu node to `cpu.in` and its answer to
//! `cpu.out`, and what changes the grid (spawns, saves, invites, booms, cpu
//! nodes linking and being lost, jobs changing state) to `events`, so an admin can watch a grid
//! at work with `colony hub cat` or plan9port's `9p read`. Each user's own
//! requests and replies also go to `USER.in` and `USER.out`, theirs alone
//! (owner USER, mode 0600).

use std::sync::Arc;

use hubfs::HubSet;

/// The admin's hubs.
pub const ADMIN_HUBS: [&str; 5] = ["sto.in", "sto.out", "cpu.in", "cpu.out", "events"];

/// The stream hubs of a storage node.
pub struct Streams {
    pub hubs: Arc<HubSet>,
}

fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

impl Streams {
    /// A hub set with the admin's hubs made.
    pub fn new() -> Streams {
        let hubs = Arc::new(HubSet::new(hubfs::Limits {
            hubs: 4096,
            ..hubfs::Limits::default()
        }));
        for h in ADMIN_HUBS {
            hubs.create(h, "admin", 0o600).expect("a fresh hub set");
        }
        Streams { hubs }
    }

    fn put(&self, hub: &str, owner: &str, line: &str) {
        if self.hubs.info(hub).is_err() {
            // Made on a user's first command; losing a race to make it is fine.
            let _ = self.hubs.create(hub, owner, 0o600);
        }
        let mut line = line.replace('\n', " ").trim_end().to_string();
        line.push('\n');
        if let Err(e) = self.hubs.write(hub, line.as_bytes()) {
            tracing::warn!(hub, error = %e, "writing a stream hub");
        }
    }

    /// A command `user` sent.
    pub fn request(&self, user: &str, line: &str) {
        let text = format!("{} {user} {line}", stamp());
        self.put("sto.in", "admin", &text);
        self.put(&format!("{user}.in"), user, &text);
    }

    /// What it came to: its status and first line.
    pub fn reply(&self, user: &str, status: u32, first_line: &str) {
        let text = format!("{} {user} {status} {first_line}", stamp());
        self.put("sto.out", "admin", &text);
        self.put(&format!("{user}.out"), user, &text);
    }

    /// A request sent to a cpu node over the control link.
    pub fn to_cpu(&self, cpu: &str, id: u64, verb: &str, detail: &str) {
        self.put(
            "cpu.in",
            "admin",
            &format!("{} {cpu} {id} {verb} {detail}", stamp()),
        );
    }

    /// A cpu node's answer (or its absence) to request `id`.
    pub fn from_cpu(&self, cpu: &str, id: u64, ms: u64, outcome: &str) {
        self.put(
            "cpu.out",
            "admin",
            &format!("{} {cpu} {id} {ms}ms {outcome}", stamp()),
        );
    }

    /// A job of `user`'s changed state: on `events`, and on `USER.out`
    /// for its owner.
    pub fn job(&self, user: &str, text: &str) {
        let line = format!("{} {user} job {text}", stamp());
        self.put("events", "admin", &line);
        self.put(&format!("{user}.out"), user, &line);
    }

    /// What happened to one of `user`'s services, for the admin and the
    /// user alike.
    pub fn service(&self, user: &str, text: &str) {
        let line = format!("{} {user} service {text}", stamp());
        self.put("events", "admin", &line);
        self.put(&format!("{user}.out"), user, &line);
    }

    /// Something that changed the grid.
    pub fn event(&self, text: &str) {
        self.put("events", "admin", &format!("{} {text}", stamp()));
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new()
    }
}
