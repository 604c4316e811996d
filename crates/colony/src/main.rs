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
    /// Archive a root file system and bind a score name to it for some users.
    Import(grid_cmd::ImportArgs),
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

/// Marks every descriptor this process inherited past stdin, stdout and
/// stderr close-on-exec. A supervisor, `flock` or a CI runner may start
/// the node holding open files or directories; without this, every
/// process the node runs (environments' pid 1 and logins, slirp4netns)
/// would inherit them, and a tenant could reach the host through
/// `/proc/self/fd/N`. The node's own files are opened close-on-exec by
/// the standard library, so after this nothing leaks by accident.
fn close_inherited_descriptors() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if done != 0 {
        // Kernels before 5.11: mark them one by one.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: fcntl on a descriptor number; a stale one fails harmlessly.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

fn main() -> ExitCode {
    close_inherited_descriptors();
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
    // The environments' helper processes: before anything starts a thread.
    if std::env::var_os(cpu::env::HELPER_VAR).is_some_and(|v| v == "init") {
        let request = cpu::env::InitRequest::read(&mut std::io::stdin().lock());
        match request {
            Ok(r) => cpu::env::launch::init_main(&r),
            Err(e) => {
                println!("error {e}");
                std::process::exit(2)
            }
        }
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "__env-exec") {
        env_helper(&args[1..]);
    }
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
        Command::Import(args) => grid_cmd::import(args),
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

/// `colony __env-exec [--pty] [--term T] [--agent SOCKET] -- ARGV…`, with where to enter
/// in its environment (cpu::env::EXEC_REQUEST_VAR): run by the grid node,
/// never by hand (see cpu::env::launch). The init helper is started as
/// `init` with its request on stdin (see `main`).
fn env_helper(args: &[String]) -> ! {
    let (mut pty, mut term, mut agent) = (false, None, None);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--term" => {
                term = args.get(i + 1).cloned();
                i += 2;
            }
            "--pty" => {
                pty = true;
                i += 1;
            }
            "--agent" => {
                agent = args.get(i + 1).cloned();
                i += 2;
            }
            "--" => break,
            other => {
                eprintln!("colony: {}: unexpected argument {other}", args[0]);
                std::process::exit(2)
            }
        }
    }
    let request = std::env::var(cpu::env::EXEC_REQUEST_VAR)
        .ok()
        .and_then(|text| cpu::env::ExecRequest::parse(&text));
    match request {
        Some(request) if i + 1 < args.len() => cpu::env::launch::exec_main(
            &request,
            pty,
            term.as_deref(),
            agent.as_deref(),
            &args[i + 1..],
            cpu::services::BUILTINS,
        ),
        _ => {
            eprintln!(
                "colony: {} is run by the grid node with arguments it supplies",
                args[0]
            );
            std::process::exit(2)
        }
    }
}
