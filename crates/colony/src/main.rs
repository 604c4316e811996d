//! `colony`: the command line and daemon of the colony spawngrid. This file only
//! parses arguments and dispatches; each command lives in its own module.

mod bench;
mod grid_cmd;
mod hub_cmd;
mod link_cmd;
mod mount_cmd;
mod paths;
mod progress;
mod signals;
mod stores;
mod vac_cmd;
mod venti_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "colony",
    version,
    about = "Spawn and save snapshotted root file systems from a venti block store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The venti block store: server and simple clients.
    #[command(subcommand)]
    Venti(venti_cmd::VentiCommand),
    /// Archive directory trees or a tar stream into the block store; prints vac:SCORE.
    Vac(vac_cmd::VacArgs),
    /// List or extract a vac archive.
    Unvac(vac_cmd::UnvacArgs),
    /// Mount a vac root as a writable copy-on-write file system (FUSE).
    Mount(mount_cmd::MountArgs),
    /// Ask a running mount to archive its changes; prints the new vac:SCORE.
    Save(mount_cmd::SaveArgs),
    /// Run a grid node: the SSH front door and the storage service.
    Serve(Box<grid_cmd::ServeArgs>),
    /// Manage the node's users (SSH keys).
    #[command(subcommand)]
    User(grid_cmd::UserCommand),
    /// Manage the node's score names.
    #[command(subcommand)]
    Name(grid_cmd::NameCommand),
    /// Archive a root file system and bind a score name to it for some users.
    Import(grid_cmd::ImportArgs),
    /// Collect the running node's garbage now: drop the blocks nothing
    /// needs any more and give their disk back.
    Gc(grid_cmd::GcArgs),
    /// The Plan 9 ndb database format.
    #[command(subcommand)]
    Ndb(grid_cmd::NdbCommand),
    /// The grid's certificate authority (node identities for links).
    #[command(subcommand)]
    Grid(link_cmd::GridCommand),
    /// Carry plain TCP on loopback over mutual TLS to a grid member, or
    /// the other way round (as Plan 9's tlsclient and tlssrv).
    Tunnel(link_cmd::TunnelArgs),
    /// Serve hubs (broadcast pipes with a ring buffer) over 9P2000.
    Hubfs(hub_cmd::HubfsArgs),
    /// A shell on hubs that outlives its terminal (`colony hub [NAME]`), or
    /// a client of a hubfs: ls, cat, write, ctl.
    Hub(hub_cmd::HubArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    cpu::env::helper::close_inherited_descriptors();
    // Large buffers (FUSE's 16 MiB request buffer per mount thread, block
    // batches) always from fresh mappings: glibc otherwise raises its mmap
    // threshold after the first such buffer is freed and serves the next
    // from an arena, where calloc must zero — touching — all of it. With a
    // fixed threshold an idle mount's buffers cost only the pages requests
    // actually fill.
    // SAFETY: mallopt only changes allocator tuning; called before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    // Where no colony-env sits beside this binary, it is the environments'
    // helper itself: before anything starts a thread.
    cpu::env::helper::run_if_asked();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Venti(cmd) => venti_cmd::run(cmd),
        Command::Vac(args) => vac_cmd::vac(args),
        Command::Unvac(args) => vac_cmd::unvac(args),
        Command::Mount(args) => mount_cmd::mount(args),
        Command::Save(args) => mount_cmd::save(args),
        Command::Serve(args) => grid_cmd::serve(*args),
        Command::User(cmd) => grid_cmd::user(cmd),
        Command::Name(cmd) => grid_cmd::name(cmd),
        Command::Import(args) => grid_cmd::import(args),
        Command::Gc(args) => grid_cmd::gc(args),
        Command::Ndb(cmd) => grid_cmd::ndb_query(cmd),
        Command::Grid(cmd) => link_cmd::grid(cmd),
        Command::Tunnel(args) => link_cmd::tunnel(args),
        Command::Hubfs(args) => hub_cmd::hubfs(args),
        Command::Hub(cmd) => hub_cmd::hub(cmd),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`colony unvac -t … | head`) is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colony: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `COLONY_LOG` (e.g. `debug`, `venti=trace`) sets the filter.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COLONY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colours: they are control characters too, and every one in a
    // line is escaped (see EscapedLog).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| EscapedLog(std::io::stderr()))
        .with_ansi(false)
        .init();
}

/// Log output with every control character escaped (`\x1b`), but the
/// newline that ends each line. Log lines carry text from the network
/// (version strings, names, commands, peers' error messages): raw, an
/// escape sequence could clear or rewrite the reader's terminal and a
/// newline could forge a whole log line.
struct EscapedLog<W>(W);

impl<W: std::io::Write> std::io::Write for EscapedLog<W> {
    /// One call is one whole formatted line (the formatter writes each
    /// event at once).
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_controls(line))?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `line` with its control characters (but a tab, and the final newline)
/// written as `\xHH`.
fn escape_controls(line: &[u8]) -> Vec<u8> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (line, &b""[..]),
    };
    let mut out = Vec::with_capacity(line.len() + 8);
    for &b in body {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(end);
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io =
            cause
                .downcast_ref::<std::io::Error>()
                .or(match cause.downcast_ref::<vac::Error>() {
                    Some(vac::Error::Io { err, .. }) => Some(err),
                    _ => None,
                });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
