//! `colony hub [NAME]`, the hubshell (the original's `hub` and `hubshell`,
//! `../shared/reference/ants-spawngrid.md` §3.13–3.14): a shell whose input,
//! output and errors are the hubs `NAME0`, `NAME1` and `NAME2` of a hubfs,
//! and a terminal attached to them. The shell keeps running when the
//! terminal leaves (`%detach`, a closed window); any machine that reaches
//! the hubfs can attach to it, and several terminals can share it.
//!
//! Two processes do this:
//!
//! * the **keeper** (`colony hub --keep NAME`, started in the background by
//!   the first `colony hub NAME`) runs the shell and copies between it and
//!   the hubs. Notes written to `NAME0.note` reach the shell's foreground
//!   process group: `interrupt` as SIGINT, `hangup`, `kill`, and (pty mode)
//!   `winsize COLS ROWS`. When the shell exits it finishes `NAME1` and
//!   `NAME2` (a lasting eof) and removes `NAME0`, so a later `colony hub
//!   NAME` makes a new shell.
//! * the **attachment** (every `colony hub NAME`) copies the terminal to
//!   `NAME0` and the output hubs to the terminal, and takes lines that start
//!   with `%` as its own commands.
//!
//! Without `--pty` the shell sees pipes, as in the original: the terminal
//! edits lines, Ctrl-C is a SIGINT to the attachment, which writes
//! `interrupt` to the note hub, and Ctrl-D is `eof NAME0` on the ctl file,
//! which closes the shell's input. With `--pty` the shell runs on a
//! pseudo-terminal (full-screen programs work), the attached terminal is
//! raw, and Ctrl-C and Ctrl-D reach the pty's line discipline as keys; its
//! errors share `NAME1`, and there is no `NAME2`.
//!
//! If nothing serves the hubfs address and it is on loopback, the first
//! `colony hub` starts `colony hubfs` there.
//!
//! This crate is the client side of hubfs, as the binary's `colony hub`
//! runs it: the keeper and the hubfs it may start are that same program
//! (`current_exe`), run as `PROGRAM hub --keep …` and `PROGRAM hubfs
//! --listen ADDR`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hubfs::typed::{Key, Typed};
use ninep::Client;
use ninep::client::ClientError;
use ninep::fcall::{OREAD, OWRITE};

mod blocked;
pub use blocked::Blocked;

/// Bytes asked for by each read of a hub.
const CHUNK: u32 = 64 * 1024;

/// A hub shell, as `colony hub` is asked for one.
#[derive(Debug, Clone)]
pub struct ShellArgs {
    /// The shell's name: its hubs are NAME0, NAME1, NAME2 and NAME0.note.
    pub name: String,
    pub at: HubAddr,
    /// Make the shell if needed, but do not attach to it.
    pub background: bool,
    /// Run a new shell on a pseudo-terminal (full-screen programs work).
    pub pty: bool,
    /// The shell to run [default: $SHELL, or /bin/sh].
    pub shell: Option<String>,
    /// Be the keeper of shell NAME (started by `colony hub` itself).
    pub keep: bool,
}

/// Where a hubfs is, and who to attach as.
#[derive(Debug, Clone)]
pub struct HubAddr {
    /// The hubfs's 9P address (a hub shell's own hubfs, inside one).
    pub at: String,
    /// The user name to attach as [default: $USER].
    pub user: Option<String>,
}

impl HubAddr {
    pub fn user_name(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "none".into())
    }

    pub fn connect(&self) -> Result<Client> {
        let addr = link::dial::parse(&self.at)?;
        let mut c = Client::connect(&addr, 256 * 1024)
            .with_context(|| format!("connecting to hubfs at {addr}"))?;
        c.attach(0, &self.user_name())?;
        Ok(c)
    }
}

fn check_name(name: &str) -> Result<()> {
    hubfs::typed::check_shell_name(name).map_err(anyhow::Error::msg)
}

pub fn run(args: ShellArgs) -> Result<()> {
    check_name(&args.name)?;
    if args.keep {
        return keep(&args);
    }
    let mut c = connect_or_start(&args.at)?;
    if !exists(&mut c, &format!("{}0", args.name)) {
        start_keeper(&args)?;
    }
    if args.background {
        eprintln!("colony hub: shell {} runs on {}", args.name, args.at.at);
        return Ok(());
    }
    drop(c);
    attach(&args.at, args.name.clone())
}

fn exists(c: &mut Client, hub: &str) -> bool {
    let found = c.walk(0, 9, &[hub]).is_ok();
    if found {
        let _ = c.clunk(9);
    }
    found
}

/// A connection to the hubfs, starting one on a loopback address if none
/// answers there.
fn connect_or_start(at: &HubAddr) -> Result<Client> {
    match at.connect() {
        Ok(c) => return Ok(c),
        Err(e) => {
            let refused = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .or_else(|| match c.downcast_ref::<ClientError>() {
                        Some(ClientError::Io(io)) => Some(io),
                        _ => None,
                    })
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            });
            let addr = link::dial::parse(&at.at)?;
            let loopback = addr
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !refused || !loopback {
                return Err(e);
            }
        }
    }
    eprintln!("colony hub: starting a hubfs on {}", at.at);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["hubfs", "--listen", &at.at])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = detached(&mut cmd)
        .spawn()
        .context("starting colony hubfs")?;
    // It says where it listens once it does.
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if !line.starts_with("hubfs on") {
        // Another `colony hub` may have started one a moment ago.
        return at.connect().context("the hubfs did not start");
    }
    at.connect()
}

/// Starts shell `args.name`'s keeper in its own session and waits until
/// its hubs are there (or another keeper's are).
fn start_keeper(args: &ShellArgs) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["hub", "--keep", "--at", &args.at.at]);
    if let Some(user) = &args.at.user {
        cmd.args(["--user", user]);
    }
    if args.pty {
        cmd.arg("--pty");
    }
    if let Some(shell) = &args.shell {
        cmd.args(["--shell", shell]);
    }
    cmd.arg(&args.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = detached(&mut cmd)
        .spawn()
        .context("starting the shell's keeper")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    match line.trim_end() {
        "ready" | "exists" => Ok(()),
        "" => bail!("the shell's keeper ended before its shell started"),
        why => bail!("{why}"),
    }
}

/// `cmd` in a session of its own, so that closing the terminal it was
/// started from hangs up neither it nor what it runs.
fn detached(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// What the keeper runs the shell on.
enum Terminal {
    /// Pipes: the shell's stdin (dropped at an eof), stdout and stderr.
    Pipes,
    /// A pty's master.
    Pty(Arc<std::fs::File>),
}

/// The keeper: makes the hubs, runs the shell, copies, and cleans up.
fn keep(args: &ShellArgs) -> Result<()> {
    let name = &args.name;
    let (input, output, errors, note) = (
        format!("{name}0"),
        format!("{name}1"),
        format!("{name}2"),
        format!("{name}0.note"),
    );
    let say = |line: &str| {
        // The starter reads one line from our stdout.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let result = (|| -> Result<Option<(Terminal, std::process::Child)>> {
        let mut c = args.at.connect()?;
        // The output hubs first, so that whoever sees NAME0 finds them; a
        // leftover of an ended shell is used again.
        let mut outputs = vec![output.as_str()];
        if args.pty {
            if exists(&mut c, &errors) {
                remove(&mut c, &errors)?;
            }
        } else {
            outputs.push(&errors);
        }
        for hub in outputs.iter().copied().chain([note.as_str()]) {
            if !exists(&mut c, hub) {
                make(&mut c, hub).or_else(|e| {
                    // A keeper racing us made it.
                    if exists(&mut c, hub) { Ok(()) } else { Err(e) }
                })?;
            }
        }
        // NAME0 is the claim: only one keeper makes it.
        if let Err(e) = make(&mut c, &input) {
            return if exists(&mut c, &input) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        for hub in &outputs {
            ctl(&mut c, &format!("unfinish {hub}"))?;
        }
        let shell = args
            .shell
            .clone()
            .or_else(|| std::env::var("SHELL").ok())
            .unwrap_or_else(|| "/bin/sh".into());
        let mut cmd = Command::new(&shell);
        cmd.arg("-i")
            .env("PS1", format!("{name}% "))
            .env("COLONY_HUBFS", &args.at.at);
        let terminal = if args.pty {
            let (master, slave) = open_pty()?;
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: setsid and TIOCSCTTY on fd 0 are async-signal-safe:
            // the pty becomes the shell's controlling terminal.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY as _, 0);
                    Ok(())
                });
            }
            Terminal::Pty(Arc::new(master))
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            Terminal::Pipes
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the shell {shell}"))?;
        Ok(Some((terminal, child)))
    })();
    let (terminal, mut child) = match result {
        Ok(Some(started)) => started,
        Ok(None) => {
            say("exists");
            return Ok(());
        }
        Err(e) => {
            say(&format!("{e:#}"));
            return Err(e);
        }
    };
    say("ready");
    // Nothing more goes to the starter, who has stopped reading.
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 of a descriptor we own onto stdout.
    unsafe { libc::dup2(null.as_raw_fd(), 1) };

    let pid = child.id() as libc::pid_t;
    // The shell's foreground process group, which notes reach.
    let foreground = {
        let terminal = match &terminal {
            Terminal::Pty(m) => Some(m.clone()),
            Terminal::Pipes => None,
        };
        move || match &terminal {
            // SAFETY: tcgetpgrp on our pty master.
            Some(m) => match unsafe { libc::tcgetpgrp(m.as_raw_fd()) } {
                pg if pg > 0 => pg,
                _ => pid,
            },
            // On pipes the shell has no job control: its jobs stay in its group.
            None => pid,
        }
    };

    // The hubs' input, to the shell.
    {
        let mut c = args.at.connect()?;
        c.walk(0, 1, &[&input])?;
        c.open(1, OREAD)?;
        let mut to: Box<dyn Write + Send> = match &terminal {
            Terminal::Pty(m) => Box::new(m.try_clone()?),
            Terminal::Pipes => Box::new(child.stdin.take().expect("piped")),
        };
        let pty = matches!(terminal, Terminal::Pty(_));
        let foreground = foreground.clone();
        std::thread::spawn(move || {
            loop {
                match c.read(1, 0, CHUNK) {
                    Ok(d) if d.is_empty() => {
                        // An eof (Ctrl-D on a pipe attachment): on a pty,
                        // the key; on pipes, the end of the shell's input.
                        if !pty || to.write_all(&[4]).is_err() {
                            break;
                        }
                    }
                    Ok(d) => {
                        if to.write_all(&d).is_err() {
                            break;
                        }
                    }
                    Err(ClientError::Server(e)) if e.contains("lost") => continue,
                    Err(ClientError::Server(e)) if e.contains("does not exist") => break,
                    Err(_) => {
                        // The hubfs is gone, and with it every way to the
                        // shell: a hangup, as a terminal's, to the shell
                        // and its foreground job (on a pty, a job is in a
                        // group of its own).
                        // SAFETY: kill of the shell's own process groups.
                        unsafe {
                            libc::kill(-foreground(), libc::SIGHUP);
                            libc::kill(-pid, libc::SIGHUP);
                        }
                        break;
                    }
                }
            }
        });
    }
    // The shell's output and errors, to the hubs.
    let mut copiers = Vec::new();
    let sources: Vec<(Box<dyn Read + Send>, &String)> = match &terminal {
        Terminal::Pty(m) => vec![(Box::new(m.try_clone()?), &output)],
        Terminal::Pipes => vec![
            (Box::new(child.stdout.take().expect("piped")), &output),
            (Box::new(child.stderr.take().expect("piped")), &errors),
        ],
    };
    for (mut from, hub) in sources {
        let mut c = args.at.connect()?;
        c.walk(0, 1, &[hub])?;
        c.open(1, OWRITE)?;
        let (done, finished) = mpsc::channel::<()>();
        copiers.push(finished);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK as usize];
            // A pty's master reads EIO once no one holds the terminal.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || c.write_all(1, 0, &buf[..n]).is_err() {
                    break;
                }
            }
            drop(done);
        });
    }
    // Notes, to the foreground process group.
    {
        let mut c = args.at.connect()?;
        c.walk(0, 1, &[&note])?;
        c.open(1, OREAD)?;
        let terminal = match &terminal {
            Terminal::Pty(m) => Some(m.clone()),
            Terminal::Pipes => None,
        };
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            loop {
                match c.read(1, 0, CHUNK) {
                    Ok(d) => pending.extend_from_slice(&d),
                    Err(ClientError::Server(e)) if e.contains("lost") => continue,
                    Err(_) => break,
                }
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    deliver_note(line.trim(), &foreground, terminal.as_deref());
                }
                // A note written without a newline is whole as written.
                if !pending.is_empty() && pending.len() < 64 {
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    if matches!(line.trim(), "interrupt" | "hangup" | "kill") {
                        deliver_note(line.trim(), &foreground, terminal.as_deref());
                        pending.clear();
                    }
                }
            }
        });
    }
    let status = child.wait()?;
    // Let what the shell wrote last reach the hubs (but not wait for a
    // background job that still holds its output).
    for finished in copiers {
        let _ = finished.recv_timeout(Duration::from_secs(1));
    }
    let mut c = args.at.connect()?;
    remove(&mut c, &input)?;
    let _ = remove(&mut c, &note);
    ctl(&mut c, &format!("finish {output}"))?;
    if !args.pty {
        ctl(&mut c, &format!("finish {errors}"))?;
    }
    if let Terminal::Pty(_) = terminal {
        // What the shell left running on its terminal goes with it.
        // SAFETY: kill of the shell's own session's process group.
        unsafe { libc::kill(-pid, libc::SIGHUP) };
    }
    std::process::exit(status.code().unwrap_or(128 + 1));
}

fn deliver_note(
    note: &str,
    foreground: &dyn Fn() -> libc::pid_t,
    terminal: Option<&std::fs::File>,
) {
    let words: Vec<&str> = note.split_whitespace().collect();
    let signal = match words.as_slice() {
        ["interrupt"] => libc::SIGINT,
        ["hangup"] => libc::SIGHUP,
        ["kill"] => libc::SIGKILL,
        ["winsize", cols, rows] => {
            if let (Some(m), Ok(cols), Ok(rows)) = (terminal, cols.parse(), rows.parse()) {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
                unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
            return;
        }
        _ => return,
    };
    // SAFETY: a signal to the shell's foreground process group.
    unsafe { libc::kill(-foreground(), signal) };
}

/// A new pty: its master, and its terminal for the shell.
fn open_pty() -> Result<(std::fs::File, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; no name, termios or winsize.
    if unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("opening a pty");
    }
    // SAFETY: both descriptors are new and ours alone.
    unsafe {
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        ))
    }
}

fn make(c: &mut Client, hub: &str) -> Result<()> {
    c.walk(0, 9, &[])?;
    let made = c.create(9, hub, 0o600, OWRITE);
    let _ = c.clunk(9);
    made.with_context(|| format!("making hub {hub}"))?;
    Ok(())
}

fn remove(c: &mut Client, hub: &str) -> Result<()> {
    c.walk(0, 9, &[hub])
        .with_context(|| format!("no hub {hub}"))?;
    c.remove(9).with_context(|| format!("removing hub {hub}"))?;
    Ok(())
}

fn ctl(c: &mut Client, command: &str) -> Result<()> {
    c.walk(0, 9, &["ctl"])?;
    c.open(9, OWRITE)?;
    let done = c.write(9, 0, command.as_bytes());
    let _ = c.clunk(9);
    done.with_context(|| format!("ctl {command:?}"))?;
    Ok(())
}

/// The attachment's settings that `%` commands change.
struct Delays {
    input: AtomicU64,
    output: AtomicU64,
    errors: AtomicU64,
}

/// What the attachment waits for: keys, or a watched shell's end.
enum Event {
    Keys(std::io::Result<Vec<u8>>),
    /// The output of the shell watched as this generation has ended.
    Ended(u64),
}

/// The threads copying one shell's output hubs to the terminal.
struct Watching {
    hangups: Vec<TcpStream>,
    generation: u64,
}

impl Watching {
    fn stop(self) {
        for h in self.hangups {
            let _ = h.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn watch(
    at: &HubAddr,
    name: &str,
    pty: bool,
    delays: &Arc<Delays>,
    events: &mpsc::Sender<Event>,
) -> Result<Watching> {
    static GENERATIONS: AtomicU64 = AtomicU64::new(0);
    let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    let mut hangups = Vec::new();
    let mut hubs = vec![(format!("{name}1"), false)];
    if !pty {
        hubs.push((format!("{name}2"), true));
    }
    for (hub, is_errors) in hubs {
        let mut c = at.connect()?;
        c.walk(0, 1, &[&hub])
            .with_context(|| format!("no shell {name}"))?;
        c.open(1, OREAD)?;
        hangups.push(c.hangup_handle()?);
        let (events, delays, input) = (events.clone(), delays.clone(), format!("{name}0"));
        std::thread::spawn(move || {
            loop {
                match c.read(1, 0, CHUNK) {
                    Ok(d) if d.is_empty() => {
                        // An eof: the shell's end if its input hub is gone.
                        if !exists(&mut c, &input) {
                            if !is_errors {
                                let _ = events.send(Event::Ended(generation));
                            }
                            break;
                        }
                    }
                    Ok(d) => {
                        let pause = if is_errors {
                            &delays.errors
                        } else {
                            &delays.output
                        };
                        let ms = pause.load(Ordering::Relaxed);
                        if ms > 0 {
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        let written = if is_errors {
                            let mut e = std::io::stderr().lock();
                            e.write_all(&d).and_then(|_| e.flush())
                        } else {
                            let mut o = std::io::stdout().lock();
                            o.write_all(&d).and_then(|_| o.flush())
                        };
                        if written.is_err() {
                            break;
                        }
                    }
                    Err(ClientError::Server(e)) if e.contains("lost") => {
                        eprint!("\r\ncolony hub: {e}\r\n");
                    }
                    Err(_) => {
                        // Stopped (%attach, %detach), or the hubfs is gone.
                        if !is_errors {
                            let _ = events.send(Event::Ended(generation));
                        }
                        break;
                    }
                }
            }
        });
    }
    Ok(Watching {
        hangups,
        generation,
    })
}

/// The terminal in raw mode while a pty shell is attached, restored after.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new(raw: bool) -> RawTerminal {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if !raw || libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ into a winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some((ws.ws_col, ws.ws_row))
    }
}

/// Where the attachment writes: the shell's input and note hubs, and ctl.
struct Writer {
    c: Client,
}

impl Writer {
    fn open(at: &HubAddr, name: &str) -> Result<Writer> {
        let mut c = at.connect()?;
        c.walk(0, 1, &[&format!("{name}0")])
            .with_context(|| format!("no shell {name}"))?;
        c.open(1, OWRITE)?;
        // A shell's note hub may be missing (a keeper of an older colony).
        if c.walk(0, 2, &[&format!("{name}0.note")]).is_ok() {
            c.open(2, OWRITE)?;
        }
        c.walk(0, 3, &["ctl"])?;
        c.open(3, OWRITE)?;
        Ok(Writer { c })
    }
    fn input(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.c.write_all(1, 0, data)?)
    }
    fn note(&mut self, note: &str) {
        let _ = self.c.write(2, 0, format!("{note}\n").as_bytes());
    }
    fn ctl(&mut self, command: &str) -> Result<()> {
        self.c
            .write(3, 0, command.as_bytes())
            .map(|_| ())
            .with_context(|| format!("ctl {command:?}"))
    }
}

const HELP: &str = "commands: %detach %attach NAME %remote NAME %list %status \
%fear %calm %freeze %melt %trunc %notrunc %eof %in MS %out MS %err MS";

/// Copies the terminal to shell `name` and its output back, until the
/// shell ends or `%detach`.
fn attach(at: &HubAddr, mut name: String) -> Result<()> {
    // Ctrl-C (on a pipe shell), a closed window and a resize are taken by
    // a thread that turns them into notes.
    let signals = Blocked::new(&[libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGWINCH]);
    let delays = Arc::new(Delays {
        input: AtomicU64::new(0),
        output: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let writer = Arc::new(Mutex::new(Writer::open(at, &name)?));
    let pty = !probe_exists(at, &format!("{name}2"))?;
    // SAFETY: isatty only looks at the descriptor.
    let tty = unsafe { libc::isatty(0) } == 1;
    let raw = RawTerminal::new(pty && tty);
    {
        let (writer, saved) = (writer.clone(), raw.0);
        std::thread::spawn(move || {
            loop {
                let sig = signals.wait();
                let mut w = lock(&writer);
                match sig {
                    libc::SIGINT => w.note("interrupt"),
                    libc::SIGWINCH => {
                        if let Some((cols, rows)) = window_size() {
                            w.note(&format!("winsize {cols} {rows}"));
                        }
                    }
                    _ => {
                        // The terminal is gone or we are told to go; the
                        // shell stays.
                        drop(RawTerminal(saved));
                        std::process::exit(0);
                    }
                }
            }
        });
    }
    let (events_tx, events) = mpsc::channel::<Event>();
    let mut watching = watch(at, &name, pty, &delays, &events_tx)?;
    if pty && let Some((cols, rows)) = window_size() {
        lock(&writer).note(&format!("winsize {cols} {rows}"));
    }
    // The terminal is read by a thread, so that the shell's end is seen
    // while no key is pressed.
    {
        let events = events_tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 4096];
            loop {
                let got = stdin.read(&mut buf).map(|n| buf[..n].to_vec());
                let stop = got.as_ref().map_or(true, |d| d.is_empty() && !tty);
                if events.send(Event::Keys(got)).is_err() || stop {
                    break;
                }
            }
        });
    }
    let mut typed = Typed::new();
    let newline = if pty { "\r\n" } else { "\n" };
    let say = |text: &str| {
        let mut o = std::io::stdout().lock();
        let _ = write!(o, "{}{newline}", text.replace('\n', newline));
        let _ = o.flush();
    };
    // Piped input that is over: only the shell's end is awaited now.
    let mut input_over = false;
    while let Ok(event) = events.recv() {
        let data = match event {
            Event::Ended(generation) if generation == watching.generation => {
                if !input_over {
                    say(&format!("colony hub: shell {name} ended"));
                }
                return Ok(());
            }
            // A shell attached before.
            Event::Ended(_) => continue,
            Event::Keys(Err(_)) => return Ok(()),
            Event::Keys(Ok(data)) => data,
        };
        if data.is_empty() {
            // Ctrl-D on a line-editing terminal, or the end of piped input:
            // the shell's input ends (once; a terminal reads on).
            lock(&writer).ctl(&format!("eof {name}0"))?;
            input_over = !tty;
            continue;
        }
        for key in typed.feed(&data) {
            let line = match key {
                Key::Shell(bytes) => {
                    let ms = delays.input.load(Ordering::Relaxed);
                    if ms > 0 {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    lock(&writer).input(&bytes)?;
                    continue;
                }
                Key::Echo(bytes) => {
                    // A line-editing terminal has shown it already.
                    if pty {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(&bytes);
                        let _ = o.flush();
                    }
                    continue;
                }
                Key::Command(line) => line,
            };
            if pty {
                say("");
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let to = match words.as_slice() {
                ["%detach"] => {
                    say(&format!("colony hub: detached from {name}"));
                    watching.stop();
                    return Ok(());
                }
                ["%attach", to] => to.to_string(),
                ["%remote", to] => {
                    // Made by the current shell, on its machine.
                    check_name(to)?;
                    lock(&writer).input(format!("colony hub -b {to}\n").as_bytes())?;
                    if let Err(e) = wait_for(at, &format!("{to}0")) {
                        say(&format!("colony hub: {e:#}"));
                        continue;
                    }
                    to.to_string()
                }
                ["%list"] => {
                    say(&list(at)?);
                    continue;
                }
                ["%status"] => {
                    say(&format!(
                        "attached to shell {name} on hubfs {} as {} ({}); delays in {} out {} err {} ms",
                        at.at,
                        at.user_name(),
                        if pty { "pty" } else { "pipes" },
                        delays.input.load(Ordering::Relaxed),
                        delays.output.load(Ordering::Relaxed),
                        delays.errors.load(Ordering::Relaxed),
                    ));
                    continue;
                }
                [cmd @ ("%fear" | "%calm" | "%freeze" | "%melt" | "%trunc" | "%notrunc")] => {
                    if let Err(e) = lock(&writer).ctl(&cmd[1..]) {
                        say(&format!("colony hub: {e:#}"));
                    }
                    continue;
                }
                ["%eof"] => {
                    lock(&writer).ctl(&format!("eof {name}0"))?;
                    continue;
                }
                [which @ ("%in" | "%out" | "%err"), ms] if ms.parse::<u64>().is_ok() => {
                    match *which {
                        "%in" => &delays.input,
                        "%out" => &delays.output,
                        _ => &delays.errors,
                    }
                    .store(ms.parse().expect("checked"), Ordering::Relaxed);
                    continue;
                }
                _ => {
                    // As the original: the list, and the line is the shell's.
                    say(HELP);
                    lock(&writer).input(format!("{line}\n").as_bytes())?;
                    continue;
                }
            };
            match switch(at, &to, pty, &delays, &events_tx) {
                Ok((w, watch)) => {
                    watching.stop();
                    *lock(&writer) = w;
                    watching = watch;
                    name = to;
                }
                Err(e) => say(&format!("colony hub: {e:#}")),
            }
        }
    }
    Ok(())
}

fn lock(w: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Attaches to shell `to`, made here (in the same mode as the current
/// one) if it is not running.
fn switch(
    at: &HubAddr,
    to: &str,
    pty: bool,
    delays: &Arc<Delays>,
    events: &mpsc::Sender<Event>,
) -> Result<(Writer, Watching)> {
    check_name(to)?;
    if !probe_exists(at, &format!("{to}0"))? {
        start_keeper(&ShellArgs {
            name: to.to_string(),
            at: at.clone(),
            background: true,
            pty,
            shell: None,
            keep: false,
        })?;
    }
    if probe_exists(at, &format!("{to}2"))? == pty {
        bail!(
            "shell {to} is a {} shell: attach to it with its own colony hub",
            if pty { "pipe" } else { "pty" }
        );
    }
    let writer = Writer::open(at, to)?;
    let watching = watch(at, to, pty, delays, events)?;
    Ok((writer, watching))
}

fn probe_exists(at: &HubAddr, hub: &str) -> Result<bool> {
    Ok(exists(&mut at.connect()?, hub))
}

/// Waits up to 5 s for `hub` to be made (by a command typed into a shell).
fn wait_for(at: &HubAddr, hub: &str) -> Result<()> {
    let mut c = at.connect()?;
    for _ in 0..100 {
        if exists(&mut c, hub) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no hub {hub} after 5 s")
}

/// `%list`: the shells on the hubfs, with what their output hubs hold.
fn list(at: &HubAddr) -> Result<String> {
    let mut c = at.connect()?;
    c.walk(0, 1, &[])?;
    c.open(1, OREAD)?;
    let stats = c.read_dir(1)?;
    let mut out = Vec::new();
    for s in &stats {
        if let Some(shell) = s.name.strip_suffix('0')
            && !shell.is_empty()
        {
            let kept = stats
                .iter()
                .find(|o| o.name == format!("{shell}1"))
                .map_or(0, |o| o.length);
            out.push(format!("{shell}\t{kept} bytes of output kept"));
        }
    }
    out.sort();
    Ok(out.join("\n"))
}
