//! `colony serve`, `colony user …`, `colony import` and `colony ndb query`:
//! running a grid node and keeping its state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use grid::state::StateDir;
use vac::tree::{BlockSizes, Tree};
use vac::walk::DirImporter;
use venti::BlockStore;

use crate::progress::Progress;

/// `--state DIR`, shared by every command that reads or changes a node.
#[derive(Args)]
pub struct StateArg {
    /// State directory [default: $COLONY_STATE, else $XDG_STATE_HOME/colony,
    /// else /var/lib/colony for root, else ~/.local/state/colony].
    #[arg(long, global = true)]
    state: Option<PathBuf>,
}

impl StateArg {
    fn resolve(&self) -> Result<StateDir> {
        Ok(StateDir::open(crate::paths::state_dir(
            self.state.as_deref(),
        )?)?)
    }
}

/// `colony serve`'s options: `--config FILE`, then one flag per setting of
/// the node's table (`node::config::SETTINGS`), the same names as the
/// file's keys.
pub struct ServeArgs {
    config: Option<PathBuf>,
    given: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for s in node::config::SETTINGS {
            if let Some(values) = m.get_many::<String>(s.name) {
                given.extend(values.map(|v| (s.name, v.clone())));
            }
        }
        Ok(ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            given,
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        use node::config::Kind;
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("A configuration file: `key=value` pairs in ndb form, the keys named as these flags (listen=0.0.0.0:16999 spawn-max=5); a flag wins over its key"),
        );
        for s in node::config::SETTINGS {
            let help = match s.default {
                Some(d) => format!("{} [default: {d}]", s.help),
                None => s.help.to_string(),
            };
            let mut arg = Arg::new(s.name)
                .long(s.name)
                .value_name(s.kind.placeholder())
                .help(help)
                .hide(s.hidden);
            arg = match (s.kind, s.repeat) {
                // `--rootful`, or `--rootful=no` over a file's yes.
                (Kind::Switch, _) => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("yes")
                    .action(ArgAction::Set),
                (_, true) => arg.action(ArgAction::Append),
                (_, false) => arg.action(ArgAction::Set),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Reads the flags and the file into the node's checked configuration.
fn configuration(args: &ServeArgs) -> Result<node::Config> {
    let mut sources = node::Sources::new();
    for (name, value) in &args.given {
        sources.flag(name, value.clone())?;
    }
    if let Some(path) = &args.config {
        sources.read_file(path)?;
    }
    for (at, old, new) in &sources.old_spellings {
        tracing::warn!("{at}: {old}= is the old spelling of {new}=; it still works");
    }
    let mut config = node::Config::from_sources(&sources)?;
    // The environment is read here, at the edge, not in the library.
    config.state = Some(crate::paths::state_dir(config.state.as_deref())?);
    if let Some(url) = &config.store {
        config.s3 = Some(crate::stores::s3_settings(url)?);
    }
    Ok(config)
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let config = configuration(&args)?;
    // The handlers are in place before the node says it is ready, so it
    // never dies of a signal it meant to take.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (shutdown, hangups) =
        runtime.block_on(async { (crate::signals::shutdown_signal(), crate::signals::hangups()) });
    let node = node::Node::start(config)?;
    match node.front_door {
        Some(addr) => println!("listening on {addr}"),
        None => println!("cpu node {} ready", node.name),
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    notify_ready();
    runtime.block_on(async {
        let mut hangups = hangups;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = async { hangups.as_mut()?.recv().await } => node.reload_certificates(),
            }
        }
    });
    node.shutdown();
    Ok(())
}

fn set_quota(state: &StateDir, user: &str, size: &str) -> Result<()> {
    let limit = match size {
        "none" => None,
        s => Some(crate::mount_cmd::parse_size(s)?),
    };
    state.quotas().update(user, |q| {
        q.limit = limit;
        Ok(())
    })?;
    Ok(())
}

/// Tells systemd the node is ready (a `Type=notify` unit), if it runs
/// under one: READY=1 to $NOTIFY_SOCKET.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.send_to_addr(b"READY=1\nSTATUS=the front door listens", &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "telling systemd the node is ready");
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Register a user with an SSH public key (another key for an existing user).
    Add {
        name: String,
        /// An OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).
        #[arg(long)]
        key: PathBuf,
        /// The most new stored bytes the user's imports may add (K, M, G, T).
        #[arg(long)]
        quota: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Show or set a user's quota of new stored bytes (SIZE, or `none`).
    Quota {
        name: String,
        size: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// List users and how many keys each has.
    List {
        #[command(flatten)]
        state: StateArg,
    },
    /// Remove a user and their keys.
    Del {
        name: String,
        #[command(flatten)]
        state: StateArg,
    },
}

#[derive(Subcommand)]
pub enum NameCommand {
    /// Forget a user's score name, as the user's `forget NAME` does: on
    /// every storage node (its tombstone replicates). Works beside a
    /// running node on the same state directory.
    Rm {
        name: String,
        /// Whose name it is.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        state: StateArg,
    },
}

pub fn name(cmd: NameCommand) -> Result<()> {
    match cmd {
        NameCommand::Rm { name, user, state } => {
            let root = state.resolve()?.scorenames().forget(&name, &user)?;
            println!("{name} forgotten for {user}\nvac:{root}");
        }
    }
    Ok(())
}

pub fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            key,
            quota,
            state,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let state = state.resolve()?;
            state.users().add(&name, &text)?;
            if let Some(q) = quota {
                set_quota(&state, &name, &q)?;
            }
            println!("user {name} added");
        }
        UserCommand::Quota { name, size, state } => {
            let state = state.resolve()?;
            if !state.users().exists(&name)? {
                bail!("no user {name} on this node");
            }
            if let Some(q) = &size {
                set_quota(&state, &name, q)?;
            }
            // Set or not, say where it stands.
            let q = state.quotas().get(&name)?;
            match q.limit {
                Some(l) => println!(
                    "{name}: {} of {} used",
                    units::human(q.used),
                    units::human(l)
                ),
                None => println!("{name}: no quota ({} used)", units::human(q.used)),
            }
        }
        UserCommand::List { state } => {
            for (name, keys) in state.resolve()?.users().list()? {
                println!("{name}\t{keys} key{}", if keys == 1 { "" } else { "s" });
            }
        }
        UserCommand::Del { name, state } => {
            state.resolve()?.users().remove(&name)?;
            println!("user {name} removed");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ImportArgs {
    /// The score name to bind.
    name: String,
    /// A directory whose contents become the root.
    path: Option<PathBuf>,
    /// A tar stream (file, or - for standard input) instead of a directory.
    #[arg(long, conflicts_with = "path")]
    tar: Option<PathBuf>,
    /// An OCI image layout, DIR or DIR:TAG (as `skopeo copy … oci:DIR:TAG`
    /// writes), flattened into one root.
    #[arg(long, conflicts_with_all = ["path", "tar"])]
    oci: Option<String>,
    /// Users who may spawn it (at least one).
    #[arg(long = "user", required = true)]
    users: Vec<String>,
    /// Use this venti server instead of the node's embedded store.
    #[arg(long)]
    venti: Option<String>,
    #[command(flatten)]
    state: StateArg,
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    state: StateArg,
}

/// Asks the node running on the state directory to collect its garbage,
/// showing how it goes on a terminal, and prints its report.
pub fn gc(args: GcArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let state = args.state.resolve()?;
    let path = state.root.join(node::admin_socket::ADMIN_SOCKET);
    let mut sock = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no node runs on {}: a collection runs inside the running node (it must know what its environments and peers hold)",
            state.root.display()
        )
    })?;
    writeln!(sock, "gc")?;
    let progress = Progress::new("collecting");
    let mut reader = std::io::BufReader::new(sock);
    let mut line = String::new();
    let status = loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            progress.finish();
            bail!("the node hung up before it answered");
        }
        // Progress until the status (a number); a line the node cut
        // short (it drops progress a slow reader does not take) is passed.
        let line = line.trim();
        match line.strip_prefix("progress ") {
            Some(how) => progress.say(how),
            None if line.parse::<u32>().is_ok() => break line.to_string(),
            None => {}
        }
    };
    progress.finish();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest)?;
    if status != "0" {
        bail!("{}", rest.trim_end());
    }
    print!("{rest}");
    Ok(())
}

/// `DIR[:TAG]` of `--oci`.
fn oci_arg(text: &str) -> (PathBuf, Option<String>) {
    match text.rsplit_once(':') {
        Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') && Path::new(dir).is_dir() => {
            (PathBuf::from(dir), Some(tag.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

pub fn import(args: ImportArgs) -> Result<()> {
    let state = args.state.resolve()?;
    let names = state.scorenames();
    grid::names::check_score_name(&args.name)?;
    for u in &args.users {
        if !state.users().exists(u)? {
            bail!("no user {u} on this node (add it with `colony user add`)");
        }
    }
    // Names are per user: another user's binding of it is no obstacle.
    let users: Vec<&str> = args.users.iter().map(String::as_str).collect();
    if let Some(u) = names.holder_of(&args.name, &users)? {
        return Err(grid::scorenames::taken(&args.name, Some(&u)).into());
    }
    // A node serving this state directory holds its store: go through
    // the node at once (opening the store would first wait out its lock).
    // A socket left by a node that died refuses the connection.
    if args.venti.is_none()
        && let Ok(sock) = std::os::unix::net::UnixStream::connect(
            state.root.join(node::admin_socket::ADMIN_SOCKET),
        )
    {
        return import_through_node(sock, &args);
    }
    let store: Arc<dyn BlockStore> = match args.venti.as_deref() {
        Some(addr) => Arc::new(crate::paths::remote_store(addr)?),
        None => node::open_log_store(&state)?,
    };
    let progress = Progress::new("importing");
    let mut tree = Tree::default();
    match (&args.path, &args.tar, &args.oci) {
        (Some(path), None, None) => {
            let mut importer =
                DirImporter::new(store.as_ref(), BlockSizes::default(), &progress, None);
            importer.add(&mut tree, &contents_of(path))?;
        }
        (None, Some(tar), None) => {
            let mut input: Box<dyn std::io::Read> = if tar.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(tar)
                        .with_context(|| format!("opening {}", tar.display()))?,
                )
            };
            vac::tar::import_tar(
                store.as_ref(),
                BlockSizes::default(),
                &mut tree,
                &mut input,
                &progress,
            )?;
        }
        (None, None, Some(oci)) => {
            let (dir, tag) = oci_arg(oci);
            tree = vac::oci::import_layout(
                store.as_ref(),
                BlockSizes::default(),
                &vac::oci::DirLayout::new(&dir),
                tag.as_deref(),
                &progress,
                &|| false,
            )?;
        }
        _ => bail!("give a directory, --tar FILE or --oci DIR[:TAG]"),
    }
    let score = tree.write(store.as_ref(), BlockSizes::default(), None)?;
    progress.finish();
    names.bind(&args.name, &score, &users)?;
    println!("{} vac:{score}", args.name);
    Ok(())
}

/// Streams the import to the running node: a header line, then a tar
/// stream (of the directory or the OCI layout, made by tar(1), or the
/// --tar stream itself).
fn import_through_node(mut sock: std::os::unix::net::UnixStream, args: &ImportArgs) -> Result<()> {
    use std::io::{BufRead, Read, Write};
    let (format, tar_of) = match (&args.path, &args.tar, &args.oci) {
        (Some(dir), None, None) => ("tar".to_string(), Some(dir.clone())),
        (None, Some(_), None) => ("tar".to_string(), None),
        (None, None, Some(oci)) => {
            let (dir, tag) = oci_arg(oci);
            (
                match tag {
                    Some(t) => format!("oci:{t}"),
                    None => "oci".into(),
                },
                Some(dir),
            )
        }
        _ => bail!("give a directory, --tar FILE or --oci DIR[:TAG]"),
    };
    writeln!(
        sock,
        "import {} {} {format}",
        args.name,
        args.users.join(",")
    )?;
    let mut input: Box<dyn Read> = match (&tar_of, &args.tar) {
        (Some(dir), _) => {
            let child = std::process::Command::new("tar")
                .arg("-C")
                .arg(dir)
                .args(["-cf", "-", "."])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("running tar(1) to stream the directory")?;
            Box::new(child.stdout.context("tar's output")?)
        }
        (None, Some(t)) if t.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        (None, Some(t)) => {
            Box::new(std::fs::File::open(t).with_context(|| format!("opening {}", t.display()))?)
        }
        (None, None) => unreachable!("checked above"),
    };
    std::io::copy(&mut input, &mut sock)?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let mut reply = std::io::BufReader::new(sock);
    let mut status = String::new();
    reply.read_line(&mut status)?;
    let mut text = String::new();
    reply.read_to_string(&mut text)?;
    if status.trim() == "0" {
        print!("{text}");
        Ok(())
    } else {
        bail!("{}", text.trim_end())
    }
}

/// `DIR` → `DIR/.`, so the directory's contents become the root.
fn contents_of(path: &Path) -> PathBuf {
    path.join(".")
}

#[derive(Subcommand)]
pub enum NdbCommand {
    /// Look up entries, as Plan 9's ndb/query: `-f FILE ATTR VALUE [RATTR]`.
    Query {
        /// With RATTR: every RATTR value of every matching entry.
        #[arg(short = 'a')]
        all: bool,
        #[arg(short = 'f')]
        file: PathBuf,
        attr: String,
        value: String,
        rattr: Option<String>,
    },
}

/// Prints what Plan 9 `ndb/query` prints; exits 1 when nothing matches.
pub fn ndb_query(cmd: NdbCommand) -> Result<()> {
    let NdbCommand::Query {
        all,
        file,
        attr,
        value,
        rattr,
    } = cmd;
    if !file.exists() {
        bail!("{}: no such file", file.display());
    }
    let db = ndb::Db::open(&file)?;
    let mut found = false;
    match (rattr, all) {
        (None, _) => {
            for e in db.search(&attr, &value) {
                println!("{}", e.query_line());
                found = true;
            }
        }
        (Some(r), false) => {
            if let Some(v) = db.get_value(&attr, &value, &r) {
                println!("{v}");
                found = true;
            }
        }
        (Some(r), true) => {
            for e in db.search(&attr, &value) {
                for v in e.all(&r) {
                    println!("{v}");
                    found = true;
                }
            }
        }
    }
    if !found {
        std::process::exit(1);
    }
    Ok(())
}
