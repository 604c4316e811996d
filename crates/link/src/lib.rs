//! Grid links. The venti protocol has neither authentication nor encryption;
//! the original grid kept every venti on loopback and reached it through
//! `tlssrv`/`tlsclient`. colony builds that in: a grid certificate authority
//! ([`ca`]) issues each node and admin client a certificate naming it and its
//! role ([`identity`]), and every link between nodes is TLS 1.3 with both ends
//! verified against the grid CA ([`tls`]). A node's identity is the name in
//! its certificate, never its address. Its servers accept connections
//! through [`listener`], which rides out failed accepts; its clients reach
//! servers by Plan 9 dial strings ([`dial`]).

pub mod ca;
pub mod dial;
pub mod identity;
pub mod listener;
pub mod tls;

pub use identity::{Peer, Role};
pub use tls::{Link, LinkError, MAX_HANDSHAKES};

/// Why a grid certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
}

impl CertError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> CertError {
        CertError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn bad(what: impl Into<String>) -> CertError {
        CertError::Bad(what.into())
    }
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Bad(format!("certificate: {e}"))
    }
}

/// The crypto provider of every TLS link: ring, as russh uses it.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
