//! What a service is asked to be: `service add NAME ROOT [options] --
//! COMMAND…`, read and bounded where it arrives.

/// How the `service` commands are asked for.
pub const USAGE: &str = "service add NAME ROOT [replicas=N] [publish=PORT]… [health=tcp:PORT|http:PORT/PATH|cmd:/PATH] [memory=SIZE] [pids=N] [cpu=WEIGHT] -- COMMAND… | service ls [NAME] | service logs [-f] NAME | service update NAME ROOT | service rm NAME";

/// The most replicas a user's services have together: a user's runs at
/// once, but one, kept for a rolling update's new replica.
pub const MAX_REPLICAS: u32 = crate::queue::MAX_RUNNING as u32 - 1;

/// How a replica is known to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Up once its command has run a moment without ending.
    Running,
    /// Up while a TCP connection to the published PORT is taken.
    Tcp(u16),
    /// Up while `GET PATH` on the published PORT answers 2xx or 3xx.
    Http(u16, String),
    /// Up while the program at this path in the replica's environment
    /// exits 0 (run beside the service, with no arguments).
    Cmd(String),
}

impl Health {
    fn parse(text: &str) -> Result<Health, String> {
        let bad = || format!("health={text}: tcp:PORT, http:PORT/PATH or cmd:/PATH");
        if let Some(path) = text.strip_prefix("cmd:") {
            if !path.starts_with('/')
                || path.len() > 256
                || path
                    .bytes()
                    .any(|b| !(b.is_ascii_graphic()) || b"'\"\\$`;&|<>(){}*?[]~".contains(&b))
            {
                return Err(format!(
                    "health={text}: cmd: takes the absolute path of a program in the root (letters, digits, / . _ - + = , : @ %), at most 256"
                ));
            }
            return Ok(Health::Cmd(path.to_string()));
        }
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        if let Some(p) = text.strip_prefix("tcp:") {
            return Ok(Health::Tcp(port(p)?));
        }
        if let Some(rest) = text.strip_prefix("http:") {
            let (p, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            // What goes on the request line: no spaces or controls.
            if path.len() > 256 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "health={text}: a path of printable characters, at most 256"
                ));
            }
            return Ok(Health::Http(port(p)?, path.to_string()));
        }
        Err(bad())
    }

    /// The port it probes.
    pub fn port(&self) -> Option<u16> {
        match self {
            Health::Running | Health::Cmd(_) => None,
            Health::Tcp(p) | Health::Http(p, _) => Some(*p),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Health::Running => "running".into(),
            Health::Tcp(p) => format!("tcp:{p}"),
            Health::Http(p, path) => format!("http:{p}{path}"),
            Health::Cmd(path) => format!("cmd:{path}"),
        }
    }
}

/// A service as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub root: String,
    pub replicas: u32,
    pub publish: Vec<u16>,
    pub health: Health,
    /// The spawn options its replicas start with (memory=, pids=, cpu=).
    pub options: Vec<String>,
    pub command: String,
    /// The `service add` line as asked (what a restarted node reads).
    pub line: String,
}

impl Spec {
    /// Reads `service add NAME ROOT [options] -- COMMAND…`.
    pub fn parse(line: &str) -> Result<Spec, String> {
        let usage = || format!("usage: {USAGE}");
        let (head, command) = line.split_once(" -- ").ok_or_else(usage)?;
        let command = command.trim().to_string();
        if command.is_empty() {
            return Err(format!("no command after --: {}", usage()));
        }
        let mut words = head.split_whitespace();
        if (words.next(), words.next()) != (Some("service"), Some("add")) {
            return Err(usage());
        }
        let (Some(name), Some(root)) = (words.next(), words.next()) else {
            return Err(usage());
        };
        for n in [name, root] {
            grid::names::check_score_name(n).map_err(|e| e.to_string())?;
        }
        // Its record is NAME.json beside others: no hidden files.
        if name.starts_with('.') {
            return Err(format!(
                "{name}: a service's name starts with a letter or a digit"
            ));
        }
        let (mut replicas, mut publish, mut health) = (1, Vec::new(), Health::Running);
        let mut options = Vec::new();
        for word in words {
            match word.split_once('=') {
                Some(("replicas", n)) => {
                    replicas = crate::run::number_option("replicas", n, 1..=MAX_REPLICAS)?
                }
                Some(("publish", p)) => {
                    let port = p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("publish={p}: a port, 1-65535"))?;
                    if publish.len() >= 8 {
                        return Err("a service publishes at most 8 ports".into());
                    }
                    if !publish.contains(&port) {
                        publish.push(port);
                    }
                }
                Some(("health", h)) => health = Health::parse(h)?,
                Some(("memory" | "pids" | "cpu", _)) => options.push(word.to_string()),
                _ => {
                    return Err(format!(
                        "{word}: a service takes replicas=, publish=, health=, memory=, pids= and cpu="
                    ));
                }
            }
        }
        if let Some(p) = health.port()
            && !publish.contains(&p)
        {
            return Err(format!(
                "health={} probes port {p}, which is not published: add publish={p}",
                health.text()
            ));
        }
        let borrowed: Vec<&str> = options.iter().map(String::as_str).collect();
        cpu::options::check_form(&borrowed).map_err(|e| e.to_string())?;
        Ok(Spec {
            name: name.to_string(),
            root: root.to_string(),
            replicas,
            publish,
            health,
            options,
            command,
            line: line.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_line_reads_as_its_parts_and_bad_ones_say_why() {
        let s = Spec::parse(
            "service add web busybox replicas=2 publish=8080 health=http:8080/ok memory=64M -- httpd -f -p 8080",
        )
        .unwrap();
        assert_eq!(
            (s.name.as_str(), s.root.as_str(), s.replicas),
            ("web", "busybox", 2)
        );
        assert_eq!(s.publish, [8080]);
        assert_eq!(s.health, Health::Http(8080, "/ok".into()));
        assert_eq!(s.options, ["memory=64M"]);
        assert_eq!(s.command, "httpd -f -p 8080");
        assert_eq!(
            Spec::parse("service add a b -- sleep 1").unwrap().health,
            Health::Running
        );
        assert_eq!(
            Spec::parse("service add a b health=cmd:/bin/healthy -- sleep 1")
                .unwrap()
                .health,
            Health::Cmd("/bin/healthy".into())
        );
        for (line, said) in [
            ("service add web busybox", "usage"),
            ("service add web busybox -- ", "no command"),
            ("service add web busybox replicas=0 -- x", "replicas=0"),
            ("service add web busybox replicas=99 -- x", "replicas=99"),
            (
                "service add web busybox health=tcp:80 -- x",
                "not published",
            ),
            (
                "service add web busybox health=udp:80 publish=80 -- x",
                "tcp:PORT",
            ),
            (
                "service add web busybox health=http:80/a\u{7f}b publish=80 -- x",
                "printable",
            ),
            ("service add web busybox net=host -- x", "a service takes"),
            ("service add ../x busybox -- x", "name"),
            ("service add web busybox publish=0 -- x", "publish=0"),
            ("service add .web busybox -- x", "starts with a letter"),
        ] {
            let err = Spec::parse(line).unwrap_err();
            assert!(err.contains(said), "{line}: {err}");
        }
    }
}
