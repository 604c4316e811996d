//! `colony mount` and `colony save`: a fossil file system on a vac root,
//! mounted through FUSE, and the console another process uses to save it.
//!
//! The console is a Unix socket (fossil's `fscons` in spirit). Its default
//! path is derived from the mount point, so `colony save MOUNTPOINT` finds it:
//! `$XDG_RUNTIME_DIR/colony/` (or `/run/colony/` for root, else
//! `/tmp/colony-UID/`) + `mount-<hash of the mount point>.sock`. One line in,
//! one line out: `save` → `ok vac:HEX`, `status` → `ok …`, or `error …`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fossil::{CacheConfig, Fs};
use venti::BlockStore;

use crate::vac_cmd::StoreArg;

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct MountArgs {
    #[command(flatten)]
    store: StoreArg,
    /// vac:SCORE, a bare score, or a .vac file.
    root: String,
    /// Where to mount it.
    mountpoint: PathBuf,
    /// RAM for changed and fetched blocks (K, M, G are powers of 1024).
    #[arg(long, default_value = "100M", conflicts_with = "disk")]
    cache: String,
    /// Keep changed blocks in this sparse file instead of RAM.
    #[arg(long, requires = "size")]
    disk: Option<PathBuf>,
    /// Size of the --disk file.
    #[arg(long)]
    size: Option<String>,
    /// Console socket [default: derived from the mount point].
    #[arg(long)]
    console: Option<PathBuf>,
    /// Also serve the file system over 9P2000 on this address
    /// (tcp!HOST!PORT or HOST:PORT, or tls!HOST!PORT with --tls), for Plan 9
    /// clients.
    #[arg(long)]
    listen: Option<String>,
    /// Serve 9P over mutual TLS with this node's certificate directory.
    #[arg(long)]
    tls: Option<PathBuf>,
    /// With --tls: the roles admitted (storage, cpu, client).
    #[arg(long, default_value = "storage,cpu,client")]
    peer_roles: String,
    /// Let 9P clients attach as root (the 9P service has no authentication:
    /// only on a trusted network).
    #[arg(long = "9p-allow-root")]
    allow_root: bool,
}

#[derive(Args)]
pub struct SaveArgs {
    /// The mount point of a running `colony mount`.
    mountpoint: PathBuf,
    /// Console socket [default: derived from the mount point].
    #[arg(long)]
    console: Option<PathBuf>,
}

/// Parses `100M`, `1G`, `512K` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    Ok(units::parse_size(text)?)
}

/// The console path for a mount point.
pub fn console_path(mountpoint: &Path) -> Result<PathBuf> {
    let canonical =
        std::fs::canonicalize(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let hash = venti::Score::of(canonical.as_os_str().as_encoded_bytes()).to_string();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("colony"),
        None if uid == 0 => PathBuf::from("/run/colony"),
        None => PathBuf::from(format!("/tmp/colony-{uid}")),
    };
    Ok(dir.join(format!("mount-{}.sock", &hash[..16])))
}

pub fn mount(args: MountArgs) -> Result<()> {
    let store: Arc<dyn BlockStore> = args.store.open()?;
    let root = vac::resolve_root_arg(&args.root)?;
    let config = match &args.disk {
        Some(path) => CacheConfig::Disk {
            path: path.clone(),
            bytes: parse_size(args.size.as_deref().unwrap_or("1G"))?,
            read_cache: 64 << 20,
        },
        None => CacheConfig::Memory {
            bytes: parse_size(&args.cache)?,
        },
    };
    let fs =
        Arc::new(Fs::open(store, root, config).with_context(|| format!("opening vac:{root}"))?);
    let console = match &args.console {
        Some(p) => p.clone(),
        None => console_path(&args.mountpoint)?,
    };
    if let Some(dir) = console.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&console);
    let listener = UnixListener::bind(&console)
        .with_context(|| format!("console socket {}", console.display()))?;
    let session = fusefs::mount(fs.clone(), &args.mountpoint)
        .with_context(|| format!("mounting on {}", args.mountpoint.display()))?;
    {
        let fs = fs.clone();
        std::thread::spawn(move || serve_console(listener, fs));
    }
    let exported = match &args.listen {
        Some(addr) => {
            let (transport, addr) = link::dial::parse_transport(addr)?;
            let tls = match (&args.tls, transport) {
                (Some(dir), _) => Some((
                    link::Link::load(dir)?,
                    link::Role::parse_list(&args.peer_roles)?,
                )),
                (None, link::dial::Transport::Tls) => {
                    anyhow::bail!("a tls! 9P listener needs the node's certificate: --tls DIR")
                }
                (None, link::dial::Transport::Tcp) => None,
            };
            let listener = std::net::TcpListener::bind(&addr)
                .with_context(|| format!("9P listener on {addr}"))?;
            let local = listener.local_addr()?;
            let fs = fs.clone();
            let options = fossil9p::Options {
                allow_root: args.allow_root,
            };
            let secure = tls.is_some();
            std::thread::spawn(move || match tls {
                Some((link, roles)) => serve_9p_tls(listener, fs, options, link, roles),
                None => fossil9p::serve_with(listener, fs, options),
            });
            format!(", 9P{} on {local}", if secure { " over TLS" } else { "" })
        }
        None => String::new(),
    };
    println!(
        "mounted vac:{root} on {} (console {}{exported})",
        args.mountpoint.display(),
        console.display()
    );
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let unmounted_elsewhere = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = term.recv() => return anyhow::Ok(false),
                _ = int.recv() => return anyhow::Ok(false),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return anyhow::Ok(true);
                    }
                }
            }
        }
    })?;
    let _ = std::fs::remove_file(&console);
    let usage = fs.usage();
    if !unmounted_elsewhere {
        session.umount_and_join().context("unmounting")?;
    } else {
        let _ = session.join();
    }
    if usage.dirty_blocks > 0 {
        eprintln!(
            "colony: {} changed blocks were not saved (run `colony save` before unmounting to keep them)",
            usage.dirty_blocks
        );
    }
    eprintln!("colony: unmounted {}", args.mountpoint.display());
    Ok(())
}

/// The 9P export over mutual TLS: a thread per client, each admitted by
/// the grid CA and `roles` before its first message. Peers still in their
/// handshake are bounded by `link::MAX_HANDSHAKES`: past it a thread ends at
/// once, so strangers cannot make the export start threads without end.
fn serve_9p_tls(
    listener: std::net::TcpListener,
    fs: Arc<Fs>,
    options: fossil9p::Options,
    link: Arc<link::Link>,
    roles: Vec<link::Role>,
) {
    loop {
        let (socket, peer) = link::listener::accept_blocking(&listener, "9P");
        let (fs, link, roles) = (fs.clone(), link.clone(), roles.clone());
        std::thread::spawn(move || match link.accept_blocking(socket, peer, &roles) {
            Ok((stream, who)) => match fossil9p::serve_stream(stream, fs, options) {
                Ok(()) => tracing::debug!(%peer, %who, "9P connection closed"),
                Err(e) => tracing::info!(%peer, %who, error = %e, "9P connection ended"),
            },
            Err(e) => link.log_refusal("a 9P link", &e),
        });
    }
}

fn serve_console(listener: UnixListener, fs: Arc<Fs>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let fs = fs.clone();
        std::thread::spawn(move || {
            if let Err(e) = console_session(conn, &fs) {
                tracing::debug!(error = %e, "console connection ended");
            }
        });
    }
}

fn console_session(conn: UnixStream, fs: &Fs) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let reply = match line?.trim() {
            "save" => match fs.save() {
                Ok(r) => format!("ok vac:{}", r.score),
                Err(e) => format!("error {e}"),
            },
            "status" => {
                let u = fs.usage();
                format!(
                    "ok vac:{} changed-blocks {}/{} fetched {} read-cache {}",
                    fs.root_score(),
                    u.dirty_blocks,
                    u.capacity_blocks,
                    u.fetched_bytes,
                    u.read_cache_bytes
                )
            }
            "" => continue,
            other => format!("error unknown console command {other:?}: use save or status"),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}

/// Sends one console command and returns the text after `ok `.
pub fn console_command(console: &Path, command: &str) -> Result<String> {
    let mut conn = UnixStream::connect(console).with_context(|| {
        format!(
            "no colony mount answers on {} (is it mounted?)",
            console.display()
        )
    })?;
    writeln!(conn, "{command}")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let line = line.trim_end();
    match line.strip_prefix("ok ") {
        Some(rest) => Ok(rest.to_string()),
        None => bail!("{}", line.strip_prefix("error ").unwrap_or(line)),
    }
}

pub fn save(args: SaveArgs) -> Result<()> {
    let console = match &args.console {
        Some(p) => p.clone(),
        None => console_path(&args.mountpoint)?,
    };
    let score = console_command(&console, "save")?;
    println!("{score}");
    Ok(())
}
