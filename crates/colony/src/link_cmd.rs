//! `colony grid ca …` (the grid's certificate authority) and `colony tunnel`
//! (plain TCP on loopback carried over mutual TLS, as Plan 9's
//! `tlsclient`/`tlssrv` did for venti).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use link::ca::{self, Validity};
use link::dial::{self, Transport};
use link::{Link, Role};

#[derive(Subcommand)]
pub enum GridCommand {
    /// The grid's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// A storage node's replication, per peer: how far behind, last
    /// contact, rate, last error.
    Status {
        /// The node's replication address (its --replica-listen), e.g.
        /// tls!10.0.0.1!17035.
        address: String,
        /// Your certificate directory (an admin client's, or a node's)
        /// [default: $COLONY_TLS].
        #[arg(long, env = "COLONY_TLS")]
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make a new grid CA in DIR (its key can then stay offline).
    Init {
        #[arg(long)]
        ca: PathBuf,
        /// The grid's name, in the CA's own name.
        #[arg(long, default_value = "colony")]
        grid: String,
    },
    /// Issue a certificate and key for a node or an admin client into OUT.
    Issue {
        /// The node's name: its identity on every link.
        name: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// storage, cpu or client.
        #[arg(long, default_value = "storage")]
        role: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Valid until this moment instead (RFC 3339, e.g. 2027-06-01T00:00:00Z).
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Revoke every certificate issued to NAME; copy the CA's crl.pem to the
    /// nodes' certificate directories, which they reload when it changes.
    Revoke {
        name: String,
        #[arg(long)]
        ca: PathBuf,
    },
}

pub fn grid(cmd: GridCommand) -> Result<()> {
    let cmd = match cmd {
        GridCommand::Ca(cmd) => cmd,
        GridCommand::Status { address, cert } => {
            let link = Link::load(&cert)?;
            let text = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(replica::fetch_status(&link, &address))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("replication status of {address}"))?;
            print!("{text}");
            return Ok(());
        }
    };
    match cmd {
        CaCommand::Init { ca: dir, grid } => {
            ca::init(&dir, &grid)?;
            println!("grid CA made in {}", dir.display());
        }
        CaCommand::Issue {
            name,
            ca: dir,
            out,
            role,
            days,
            not_after,
        } => {
            let validity = match not_after {
                Some(t) => Validity::Until(
                    time_of(&t).with_context(|| format!("bad --not-after {t:?}: use RFC 3339"))?,
                ),
                None => Validity::Days(days),
            };
            ca::issue(&dir, &name, Role::parse(&role)?, validity, &out)?;
            println!("{name} ({role}) issued into {}", out.display());
        }
        CaCommand::Revoke { name, ca: dir } => {
            let n = ca::revoke(&dir, &name)?;
            println!(
                "{name}: {n} certificate(s) newly revoked; copy {} to every node",
                dir.join(ca::CRL).display()
            );
        }
    }
    Ok(())
}

fn time_of(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[derive(Args)]
pub struct TunnelArgs {
    /// Where to accept connections: tcp!HOST!PORT (plain, for a Plan 9
    /// client on this machine) or tls!HOST!PORT (grid members only).
    #[arg(long)]
    listen: String,
    /// Where to carry them: tls!HOST!PORT from a plain listener, or
    /// tcp!HOST!PORT (a plain venti, say) from a TLS listener.
    #[arg(long)]
    to: String,
    /// This machine's certificate directory [default: $COLONY_TLS].
    #[arg(long, env = "COLONY_TLS")]
    cert: PathBuf,
    /// Roles admitted on a TLS listener [default: storage,cpu,client], or
    /// required of the TLS server dialed [default: storage,cpu].
    #[arg(long)]
    peer_roles: Option<String>,
}

pub fn tunnel(args: TunnelArgs) -> Result<()> {
    let link = Link::load(&args.cert)?;
    let (from, listen) = dial::parse_transport(&args.listen)?;
    // What dials out through a tunnel must reach a node, never another client.
    let default_roles = match from {
        Transport::Tcp => "storage,cpu",
        Transport::Tls => "storage,cpu,client",
    };
    let roles = Role::parse_list(args.peer_roles.as_deref().unwrap_or(default_roles))?;
    let (to, target) = dial::parse_transport(&args.to)?;
    if from == to {
        bail!(
            "a tunnel joins plain TCP and TLS: one of --listen and --to is tcp!…, the other tls!…"
        );
    }
    // A plain listener lends this machine's grid identity to whoever
    // connects: only programs on this machine may.
    if from == Transport::Tcp {
        let ip = listen
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']))
            .and_then(|host| host.parse::<std::net::IpAddr>().ok());
        if !ip.is_some_and(|ip| ip.is_loopback()) {
            bail!(
                "a plain tunnel listener must be on loopback (tcp!127.0.0.1!PORT): on {listen} any host could use this machine's certificate"
            );
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr()?;
        tracing::info!(listen = %local, to = %target, me = %link.me, "tunnel ready");
        println!("listening on {local}");
        crate::signals::reload_on_sighup(link.clone());
        loop {
            let (socket, peer) = link::listener::accept(&listener, "tunnel").await;
            let (link, roles, target) = (link.clone(), roles.clone(), target.clone());
            tokio::spawn(async move {
                match carry(link, socket, peer, from, &target, &roles).await {
                    Err(e) if link::listener::ordinary_disconnect(&format!("{e:#}")) => {
                        tracing::debug!(%peer, error = %e, "tunnel connection closed by its peer")
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "tunnel connection ended"),
                    Ok(()) => {}
                }
            });
        }
    })
}

/// One connection through the tunnel, until either end closes.
async fn carry(
    link: Arc<Link>,
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    from: Transport,
    target: &str,
    roles: &[Role],
) -> Result<()> {
    let dial = || async {
        let far = tokio::net::TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let _ = far.set_nodelay(true);
        anyhow::Ok(far)
    };
    match from {
        Transport::Tcp => {
            let (mut tls, server) = link.connect(dial().await?, roles).await?;
            tracing::debug!(%peer, %server, "tunnel connection");
            let mut socket = socket;
            tokio::io::copy_bidirectional(&mut socket, &mut tls).await?;
        }
        Transport::Tls => {
            // The peer is admitted before anything behind the tunnel is dialed.
            let (mut tls, client) = match link.accept(socket, peer, roles).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    link.log_refusal("a tunnel connection", &e);
                    return Ok(());
                }
            };
            tracing::debug!(%peer, %client, "tunnel connection");
            let mut far = dial().await?;
            tokio::io::copy_bidirectional(&mut tls, &mut far).await?;
        }
    }
    Ok(())
}
