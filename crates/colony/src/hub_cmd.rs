//! `colony hubfs` (serve a set of hubs over 9P) and `colony hub …` (a
//! client of one: list, cat, write, ctl).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hubfs::{HubSet, Limits, RateLimit};

use ninep::fcall::{OREAD, OWRITE};

#[derive(Args)]
pub struct HubfsArgs {
    /// 9P address to serve on, e.g. tcp!127.0.0.1!5640 or 127.0.0.1:5640.
    /// 9P2000 has no authentication: the user name is the client's word,
    /// so keep it on loopback or a private network.
    #[arg(long, default_value = "127.0.0.1:5640")]
    listen: String,
    /// Bytes each hub keeps (K, M, G are powers of 1024).
    #[arg(long, default_value = "777777")]
    buffer: String,
    /// Hubs at once.
    #[arg(long, default_value_t = 77)]
    max_hubs: usize,
    /// Largest single write; a larger one is an error.
    #[arg(long, default_value = "666666")]
    max_write: String,
    /// New readers start at the end, not at the oldest kept byte.
    #[arg(long)]
    trunc: bool,
    /// Seconds a write waits for slow readers in fear mode.
    #[arg(long, default_value_t = 5)]
    fear_deadline: u64,
    /// Limit each hub's writers to this many bytes a second.
    #[arg(long)]
    rate: Option<String>,
    /// And to at least this many milliseconds between writes.
    #[arg(long)]
    min_gap_ms: Option<u64>,
    /// Also mount the hubs here through FUSE (as root).
    #[arg(long)]
    mount: Option<std::path::PathBuf>,
}

pub fn hubfs(args: HubfsArgs) -> Result<()> {
    let limits = Limits {
        buffer: crate::mount_cmd::parse_size(&args.buffer)? as usize,
        hubs: args.max_hubs,
        write: crate::mount_cmd::parse_size(&args.max_write)? as usize,
        fear_deadline: Duration::from_secs(args.fear_deadline),
        ..Limits::default()
    };
    if limits.buffer == 0 || limits.write == 0 {
        bail!("--buffer and --max-write must be more than 0");
    }
    let mut hubs = HubSet::new(limits);
    if args.rate.is_some() || args.min_gap_ms.is_some() {
        hubs.rate = Some(RateLimit {
            bytes_per_sec: match &args.rate {
                Some(r) => crate::mount_cmd::parse_size(r)?,
                None => 0,
            },
            min_gap: Duration::from_millis(args.min_gap_ms.unwrap_or(0)),
        });
    }
    if args.trunc {
        hubs.ctl("trunc").expect("a known command");
    }
    let addr = link::dial::parse(&args.listen)?;
    let listener =
        std::net::TcpListener::bind(&addr).with_context(|| format!("listening on {addr}"))?;
    let hubs = Arc::new(hubs);
    // Taken by a thread, so that a mount is unmounted before we go.
    let signals = hubshell::Blocked::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let mounted = match &args.mount {
        Some(dir) => Some(
            hubfs::fuse::mount(hubs.clone(), dir)
                .with_context(|| format!("mounting the hubs on {}", dir.display()))?,
        ),
        None => None,
    };
    std::thread::spawn(move || {
        let signal = signals.wait();
        drop(mounted);
        std::process::exit(128 + signal);
    });
    println!("hubfs on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    hubfs::server::serve(listener, hubs);
    Ok(())
}

/// `colony hub [NAME]` is the hubshell; `colony hub ls|cat|write|ctl` are
/// plain clients.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HubArgs {
    #[command(subcommand)]
    command: Option<HubCommand>,
    #[command(flatten)]
    shell: ShellArgs,
}

#[derive(Args)]
struct ShellArgs {
    /// The shell's name: its hubs are NAME0, NAME1, NAME2 and NAME0.note.
    #[arg(default_value = "io")]
    name: String,
    #[command(flatten)]
    at: HubAddr,
    /// Make the shell if needed, but do not attach to it.
    #[arg(short = 'b', long)]
    background: bool,
    /// Run a new shell on a pseudo-terminal (full-screen programs work).
    #[arg(long)]
    pty: bool,
    /// The shell to run [default: $SHELL, or /bin/sh].
    #[arg(long)]
    shell: Option<String>,
    /// Be the keeper of shell NAME (started by `colony hub` itself).
    #[arg(long, hide = true)]
    keep: bool,
}

/// Where a hubfs is, and who to attach as: the shell's and `colony hub
/// ls|cat|write|ctl`'s option.
#[derive(Args, Clone)]
pub struct HubAddr {
    /// The hubfs's 9P address (a hub shell's own hubfs, inside one).
    #[arg(long, env = "COLONY_HUBFS", default_value = "127.0.0.1:5640")]
    at: String,
    /// The user name to attach as [default: $USER].
    #[arg(long)]
    user: Option<String>,
}

impl From<HubAddr> for hubshell::HubAddr {
    fn from(HubAddr { at, user }: HubAddr) -> Self {
        hubshell::HubAddr { at, user }
    }
}

impl HubAddr {
    fn connect(self) -> Result<ninep::Client> {
        hubshell::HubAddr::from(self).connect()
    }
}

#[derive(Subcommand)]
pub enum HubCommand {
    /// List the hubs: name, owner, mode, bytes written and kept.
    Ls(HubAddr),
    /// Copy a hub to stdout until an eof (a slow reader is warned of what
    /// it lost, and reads on).
    Cat {
        #[command(flatten)]
        at: HubAddr,
        hub: String,
    },
    /// Copy stdin to a hub, making it (mode 0600) if it is not there.
    Write {
        #[command(flatten)]
        at: HubAddr,
        hub: String,
    },
    /// Send a ctl command (fear, calm, freeze, melt, trunc, notrunc,
    /// eof [HUB]); with none, print the status.
    Ctl {
        #[command(flatten)]
        at: HubAddr,
        command: Vec<String>,
    },
}

pub fn hub(args: HubArgs) -> Result<()> {
    let Some(cmd) = args.command else {
        let ShellArgs {
            name,
            at,
            background,
            pty,
            shell,
            keep,
        } = args.shell;
        return hubshell::run(hubshell::ShellArgs {
            name,
            at: at.into(),
            background,
            pty,
            shell,
            keep,
        });
    };
    match cmd {
        HubCommand::Ls(at) => {
            let mut c = at.connect()?;
            c.walk(0, 1, &[])?;
            c.open(1, OREAD)?;
            for s in c.read_dir(1)? {
                println!("{}\t{}\t{:o}\t{}", s.name, s.uid, s.mode & 0o777, s.length);
            }
        }
        HubCommand::Cat { at, hub } => {
            let mut c = at.connect()?;
            c.walk(0, 1, &[&hub])
                .with_context(|| format!("hub {hub} does not exist"))?;
            c.open(1, OREAD)?;
            let mut out = std::io::stdout().lock();
            loop {
                match c.read(1, 0, 128 * 1024) {
                    Ok(data) if data.is_empty() => break,
                    Ok(data) => {
                        out.write_all(&data)?;
                        out.flush()?;
                    }
                    Err(ninep::client::ClientError::Server(e)) if e.contains("lost") => {
                        eprintln!("colony hub: {e}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        HubCommand::Write { at, hub } => {
            let mut c = at.connect()?;
            if c.walk(0, 1, &[&hub]).is_ok() {
                c.open(1, OWRITE)?;
            } else {
                c.walk(0, 1, &[])?;
                c.create(1, &hub, 0o600, OWRITE)?;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut input = std::io::stdin().lock();
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                c.write_all(1, 0, &buf[..n])?;
            }
        }
        HubCommand::Ctl { at, command } => {
            let mut c = at.connect()?;
            c.walk(0, 1, &["ctl"])?;
            c.open(1, ninep::fcall::ORDWR)?;
            if command.is_empty() {
                print!("{}", String::from_utf8_lossy(&c.read_all(1)?));
            } else {
                c.write(1, 0, command.join(" ").as_bytes())?;
            }
        }
    }
    Ok(())
}
