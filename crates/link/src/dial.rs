//! Addresses in Plan 9 dial form (`tcp!host!port`, `tls!host!port`,
//! `net!host!venti`) or the usual `host:port`: read ([`parse`],
//! [`parse_transport`]) and dialed ([`connect`]), over a grid link when the
//! address says `tls!`. The servers these reach (venti, hubs) know nothing
//! of either: they are given the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Link, Role};

/// The conventional venti port, for an address that names none.
pub const DEFAULT_PORT: u16 = 17034;

/// Why an address could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {0:?}: use tcp!HOST!PORT, tls!HOST!PORT or HOST:PORT")]
pub struct BadAddress(pub String);

/// How a dial string reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP: `tcp!HOST!PORT`, `HOST:PORT`.
    Tcp,
    /// Mutual TLS between grid members: `tls!HOST!PORT`.
    Tls,
}

/// Splits off the transport of a dial string: `tls!HOST!PORT` is TLS, any
/// other form plain TCP; the rest is as [`parse`] reads it.
pub fn parse_transport(addr: &str) -> Result<(Transport, String), BadAddress> {
    match addr.trim().strip_prefix("tls!") {
        Some(rest) => Ok((
            Transport::Tls,
            parse(&format!("tcp!{rest}")).map_err(|_| BadAddress(addr.to_string()))?,
        )),
        None => Ok((Transport::Tcp, parse(addr)?)),
    }
}

/// Turns a dial string into `host:port`. A missing port or the service name
/// `venti` means 17034; the host `*` means every interface.
pub fn parse(addr: &str) -> Result<String, BadAddress> {
    let bad = || BadAddress(addr.to_string());
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(bad());
    }
    let (host, port) = if addr.contains('!') {
        let parts: Vec<&str> = addr.split('!').collect();
        match parts.as_slice() {
            [net, host] if is_net(net) => (*host, None),
            [net, host, port] if is_net(net) => (*host, Some(*port)),
            [host, port] if !is_net(host) => (*host, Some(*port)),
            _ => return Err(bad()),
        }
    } else if let Some(rest) = addr.strip_prefix('[') {
        // [v6]:port or [v6]
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        return Ok(format!("[{host}]:{}", port_number(port).ok_or_else(bad)?));
    } else if addr.matches(':').count() == 1 {
        let (host, port) = addr.split_once(':').expect("one colon");
        (host, Some(port))
    } else if addr.contains(':') {
        // A bare IPv6 address.
        return Ok(format!("[{addr}]:{DEFAULT_PORT}"));
    } else {
        (addr, None)
    };
    if host.is_empty() {
        return Err(bad());
    }
    let host = if host == "*" { "0.0.0.0" } else { host };
    let port = port_number(port).ok_or_else(bad)?;
    if host.contains(':') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

/// Who may serve a block store: a storage node, or a cpu node serving
/// its own.
pub const STORE_SERVERS: &[Role] = &[Role::Storage, Role::Cpu];

/// A connection a dial string reached, plain TCP or TLS alike.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// Dials `addr`. A `tls!HOST!PORT` address is reached over mutual TLS with
/// `link`, this machine's grid certificate, and its server must hold one
/// of `roles`; any other form is plain TCP. The error says what failed,
/// without the address (the caller's message names it).
pub async fn connect(
    addr: &str,
    link: Option<&Arc<Link>>,
    roles: &[Role],
) -> Result<Box<dyn Duplex>, String> {
    let (transport, target) = parse_transport(addr).map_err(|e| e.to_string())?;
    // Before dialing: a missing certificate is this machine's fault.
    let link = match transport {
        Transport::Tls => Some(link.ok_or(
            "a tls! address needs this machine's grid certificate (a node's --tls DIR; COLONY_TLS for the command line)",
        )?),
        Transport::Tcp => None,
    };
    let socket = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    Ok(match link {
        Some(link) => {
            let (tls, _server) = link
                .connect(socket, roles)
                .await
                .map_err(|e| e.to_string())?;
            Box::new(tls)
        }
        None => Box::new(socket),
    })
}

/// One dialing of [`redial`].
pub type Dialing = Pin<Box<dyn Future<Output = Result<Box<dyn Duplex>, String>> + Send>>;

/// [`connect`] as something to call again whenever a connection is lost
/// (a remote store reconnecting, say).
pub fn redial(
    addr: &str,
    link: Option<Arc<Link>>,
    roles: &'static [Role],
) -> impl Fn() -> Dialing + Send + Sync + 'static {
    let addr = addr.to_string();
    move || {
        let (addr, link) = (addr.clone(), link.clone());
        Box::pin(async move { connect(&addr, link.as_ref(), roles).await })
    }
}

fn is_net(word: &str) -> bool {
    matches!(word, "tcp" | "net")
}

fn port_number(port: Option<&str>) -> Option<u16> {
    match port {
        None | Some("venti") => Some(DEFAULT_PORT),
        Some(p) => p.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn tls_addresses() {
        use super::{Transport, parse_transport};
        assert_eq!(
            parse_transport("tls!10.0.0.1!17035").unwrap(),
            (Transport::Tls, "10.0.0.1:17035".into())
        );
        assert_eq!(
            parse_transport("tls!node").unwrap(),
            (Transport::Tls, "node:17034".into())
        );
        assert_eq!(
            parse_transport("tcp!h!1").unwrap(),
            (Transport::Tcp, "h:1".into())
        );
        for bad in ["tls!", "tls!a!b!c", "tls!a!x"] {
            assert!(parse_transport(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plan9_and_unix_forms() {
        assert_eq!(parse("tcp!127.0.0.1!17034").unwrap(), "127.0.0.1:17034");
        assert_eq!(parse("tcp!example.org!venti").unwrap(), "example.org:17034");
        assert_eq!(parse("net!example.org").unwrap(), "example.org:17034");
        assert_eq!(parse("tcp!*!9999").unwrap(), "0.0.0.0:9999");
        assert_eq!(parse("example.org!123").unwrap(), "example.org:123");
        assert_eq!(parse("localhost:80").unwrap(), "localhost:80");
        assert_eq!(parse("localhost").unwrap(), "localhost:17034");
        assert_eq!(parse("[::1]:5").unwrap(), "[::1]:5");
        assert_eq!(parse("::1").unwrap(), "[::1]:17034");
        assert_eq!(parse("tcp!::1!7").unwrap(), "[::1]:7");
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "tcp!",
            "tcp!host!port!x",
            "host:notaport",
            "udp!a!b!c",
            "tcp!h!99999",
            "[::1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
