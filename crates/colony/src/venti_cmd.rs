//! `colony venti …`: the block-store server and the simple clients modelled on
//! plan9port's `venti/read`, `venti/write` and a sync command.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, Subcommand};
use venti::{BlockStore, BlockType, Client, MAX_BLOCK_SIZE, Score};

#[derive(Subcommand)]
pub enum VentiCommand {
    /// Serve a block store over the venti protocol.
    Serve {
        /// Address to listen on: tcp!HOST!PORT or HOST:PORT. Venti has no
        /// authentication, so the default is loopback only.
        #[arg(long, default_value = "tcp!127.0.0.1!17034")]
        listen: String,
        /// Store directory or s3://BUCKET/PREFIX [default: the embedded
        /// store, see COLONY_STORE].
        #[arg(long)]
        store: Option<String>,
        /// Serve over mutual TLS with this node's certificate directory
        /// (colony grid ca issue … --out DIR); clients dial tls!HOST!PORT.
        #[arg(long)]
        tls: Option<PathBuf>,
        /// With --tls: the roles admitted (storage,cpu,client); a node-only
        /// port is `storage,cpu`.
        #[arg(long, default_value = "storage,cpu,client")]
        peer_roles: String,
    },
    /// Write one block from standard input and print its score.
    #[command(disable_help_flag = true)]
    Write {
        #[command(flatten)]
        server: ServerArg,
        /// Logical block type, in decimal (0 data, 8 directory, 16 root).
        #[arg(short = 't', default_value_t = 0)]
        ty: u8,
        /// Zero-truncate the block for its type before writing.
        #[arg(short = 'z')]
        truncate: bool,
    },
    /// Read one block and write its stored bytes to standard output.
    #[command(disable_help_flag = true)]
    Read {
        #[command(flatten)]
        server: ServerArg,
        /// Logical block type, in decimal; without it every type is tried.
        #[arg(short = 't')]
        ty: Option<u8>,
        /// The score, 40 hex digits (a `label:` prefix is allowed).
        score: String,
    },
    /// Ask the server to make every earlier write durable.
    #[command(disable_help_flag = true)]
    Sync {
        #[command(flatten)]
        server: ServerArg,
    },
}

/// `-h ADDR`, as in Plan 9; `--help` stays available as a long option.
#[derive(Args)]
pub struct ServerArg {
    /// Venti server address [default: $venti].
    #[arg(short = 'h', long = "host", env = "venti")]
    host: Option<String>,
    #[arg(long, action = ArgAction::Help, help = "Print help")]
    help: Option<bool>,
}

impl ServerArg {
    async fn connect(&self) -> Result<Client> {
        let Some(addr) = &self.host else {
            bail!("no venti server given: use -h ADDR or set $venti");
        };
        let link = crate::paths::link_for(addr)?;
        let dialing = link::dial::connect(addr, link.as_ref(), link::dial::STORE_SERVERS);
        Ok(Client::connect(addr, dialing).await?)
    }
}

pub fn run(cmd: VentiCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            VentiCommand::Serve {
                listen,
                store,
                tls,
                peer_roles,
            } => serve(&listen, store, tls, &peer_roles).await,
            VentiCommand::Write {
                server,
                ty,
                truncate,
            } => write(&server, ty, truncate).await,
            VentiCommand::Read { server, ty, score } => read(&server, ty, &score).await,
            VentiCommand::Sync { server } => Ok(server.connect().await?.sync().await?),
        }
    })
}

fn block_type(ty: u8) -> Result<BlockType> {
    BlockType::new(ty).with_context(|| format!("bad block type {ty}: types are 0 to 16"))
}

async fn serve(
    listen: &str,
    store: Option<String>,
    tls: Option<PathBuf>,
    peer_roles: &str,
) -> Result<()> {
    let spec = match store {
        Some(spec) => spec,
        None => crate::paths::default_store_dir()?.display().to_string(),
    };
    let (transport, addr) = link::dial::parse_transport(listen)?;
    let tls = match (tls, transport) {
        (Some(certs), _) => Some((
            link::Link::load(&certs)?,
            link::Role::parse_list(peer_roles)?,
        )),
        (None, link::dial::Transport::Tls) => {
            bail!("a tls! listener needs the node's certificate: --tls DIR")
        }
        (None, link::dial::Transport::Tcp) => None,
    };
    let store: Arc<dyn BlockStore> = tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || crate::stores::open(&spec)
    })
    .await??;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    match &tls {
        Some((link, _)) => {
            tracing::info!(address = %local, store = %spec, me = %link.me, "venti server ready, mutual TLS");
            crate::signals::reload_on_sighup(link.clone());
        }
        None => tracing::info!(address = %local, store = %spec, "venti server ready"),
    }
    let shutdown = crate::signals::shutdown_signal();
    // One line on stdout so scripts and tests learn the port.
    println!("listening on {local}");
    std::io::stdout().flush()?;
    match tls {
        Some((link, roles)) => {
            let admit = link.admitter(roles, "a venti link");
            venti::server::serve_with(listener, store, admit, shutdown).await?
        }
        None => venti::server::serve(listener, store, shutdown).await?,
    }
    tracing::info!("venti server stopped; store synced");
    Ok(())
}

async fn write(server: &ServerArg, ty: u8, truncate: bool) -> Result<()> {
    let ty = block_type(ty)?;
    let mut data = Vec::new();
    std::io::stdin()
        .take(65536)
        .read_to_end(&mut data)
        .context("reading standard input")?;
    if data.len() > 65535 {
        bail!("input too big: a block is at most {MAX_BLOCK_SIZE} bytes");
    }
    if truncate {
        data.truncate(venti::zero::truncated_len(ty, &data));
    }
    let client = server.connect().await?;
    let score = client.write(ty, data).await?;
    client.sync().await?;
    println!("{score}");
    Ok(())
}

async fn read(server: &ServerArg, ty: Option<u8>, text: &str) -> Result<()> {
    let (_, score) = Score::parse_labeled(text).with_context(|| format!("bad score {text:?}"))?;
    let client = server.connect().await?;
    let types = match ty {
        Some(t) => vec![block_type(t)?],
        // Without -t, try every type, once per distinct wire type.
        None => {
            let mut seen = Vec::new();
            (0..=16)
                .filter_map(BlockType::new)
                .filter(|t| {
                    let fresh = !seen.contains(&t.to_wire());
                    seen.push(t.to_wire());
                    fresh
                })
                .collect()
        }
    };
    let mut last_err = None;
    for t in types {
        match client.read(&score, t, 65535).await {
            Ok(data) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()?;
                return Ok(());
            }
            Err(e) if e.is_missing_block() => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    match (ty, last_err) {
        (Some(_), Some(e)) => Err(e.into()),
        _ => bail!("no block with score {score} exists (tried every type)"),
    }
}
