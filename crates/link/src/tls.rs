//! Mutual TLS between grid nodes: TLS 1.3 only, both ends verified against
//! the grid CA, revoked names refused, roles checked where they matter, and
//! sessions resumed so a reconnect costs no full handshake.
//!
//! Revocation is checked twice: during a full handshake by the verifier (the
//! CA-signed list), and after every handshake against the serials of the
//! list as last loaded — a resumed session skips certificate verification,
//! and a revoked node must not come back in on an old ticket. The list is
//! reloaded when its file changes (checked at each handshake) or on
//! [`Link::reload`] (SIGHUP).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use crate::CertError;

/// One accepted connection being admitted (see [`Link::admitter`]).
pub type Admitting = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Option<tokio_rustls::server::TlsStream<TcpStream>>> + Send,
    >,
>;
use crate::ca::{CA_CERT, CERT, CRL, KEY};
use crate::identity::{Peer, Role, peer_of};
use crate::listener::{LogBudget, Place, Places};

/// How long a peer may take to finish its handshake, unless the node's
/// configuration says otherwise (`tls-timeout`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many peers may be in their handshake with one node at once. Until it
/// is done a peer is nobody, yet it holds a socket (and on the 9P export a
/// thread) for up to [`HANDSHAKE_TIMEOUT`]; past this many, a connection is
/// refused at once, so strangers opening sockets cannot use up the node.
/// Peers that finished are not counted: they are members of the grid.
pub const MAX_HANDSHAKES: usize = 256;

/// The server name a dialer puts in its hello. Nodes are not known by
/// address or DNS name: the server's certificate is checked against the
/// name it carries itself, and then its role.
const DIAL_NAME: &str = "colony-grid";

/// Why a link was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake { peer: SocketAddr, reason: String },
    #[error("TLS handshake with {peer} did not finish within {secs} s")]
    Timeout { peer: SocketAddr, secs: u64 },
    #[error(
        "{peer} presented a certificate for {who}, whose role may not use this link (allowed: {allowed})"
    )]
    Role {
        peer: SocketAddr,
        who: Peer,
        allowed: String,
    },
    #[error("{peer} presented the revoked certificate of {who}")]
    Revoked { peer: SocketAddr, who: Peer },
    #[error("{peer}: {reason}")]
    Identity { peer: SocketAddr, reason: String },
    #[error("{peer} refused at once: {limit} TLS handshakes are already in progress")]
    Busy { peer: SocketAddr, limit: usize },
}

impl LinkError {
    /// The kinds of refusal, in a word each (a metric's label), in the
    /// order of [`LinkError::kind`].
    pub const REASONS: [&'static str; 6] = [
        "handshake",
        "timeout",
        "role",
        "revoked",
        "identity",
        "busy",
    ];

    /// The place of this kind of refusal in [`LinkError::REASONS`].
    fn kind(&self) -> usize {
        match self {
            LinkError::Handshake { .. } => 0,
            LinkError::Timeout { .. } => 1,
            LinkError::Role { .. } => 2,
            LinkError::Revoked { .. } => 3,
            LinkError::Identity { .. } => 4,
            LinkError::Busy { .. } => 5,
        }
    }

    /// The peer that was refused.
    pub fn peer(&self) -> SocketAddr {
        match self {
            LinkError::Handshake { peer, .. }
            | LinkError::Timeout { peer, .. }
            | LinkError::Role { peer, .. }
            | LinkError::Revoked { peer, .. }
            | LinkError::Identity { peer, .. }
            | LinkError::Busy { peer, .. } => *peer,
        }
    }
}

/// The revocation list as loaded, and when its file was last seen changed.
struct Revocations {
    modified: Option<SystemTime>,
    serials: HashSet<Vec<u8>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

/// A node's (or client's) side of grid links: its certificate and key, the
/// grid CA, and the revocation list, from a certificate directory.
pub struct Link {
    dir: PathBuf,
    pub me: Peer,
    roots: Arc<RootCertStore>,
    revocations: RwLock<Revocations>,
    /// Shared with the configs' verifiers, which use whatever is in force.
    verifiers: Arc<RwLock<Verifiers>>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    pub handshake_timeout: Duration,
    /// At most this many server-side handshakes at once ([`MAX_HANDSHAKES`]).
    pub max_handshakes: usize,
    handshaking: Places,
    /// Lines for refused peers, shared by all of the node's TLS listeners.
    refusals: LogBudget,
    /// Peers refused so far, by [`LinkError::REASONS`]: all of them, also
    /// those the budget left out of the log.
    refused: [AtomicU64; LinkError::REASONS.len()],
}

struct Verifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// Loads the revocation list at `path`. `first` is the load at start, where
/// no file means nothing is revoked; later a missing or empty file is an
/// error (the list in force stays): a list being copied in, or removed by
/// mistake, must never un-revoke anyone.
fn load_revocations(path: &Path, first: bool) -> Result<Revocations, CertError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified.is_none() {
        if !first {
            return Err(CertError::bad(format!("{} is gone", path.display())));
        }
        return Ok(Revocations {
            modified,
            serials: HashSet::new(),
            crls: Vec::new(),
        });
    }
    let pem =
        std::fs::read(path).map_err(|e| CertError::io(format!("reading {}", path.display()), e))?;
    let mut crls = Vec::new();
    let mut serials = HashSet::new();
    for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
        let crl = crl.map_err(|e| CertError::bad(format!("{}: {e}", path.display())))?;
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| {
            CertError::bad(format!(
                "{}: unreadable revocation list: {e}",
                path.display()
            ))
        })?;
        for revoked in parsed.iter_revoked_certificates() {
            serials.insert(revoked.raw_serial().to_vec());
        }
        crls.push(crl);
    }
    if crls.is_empty() {
        return Err(CertError::bad(format!(
            "{} holds no revocation list",
            path.display()
        )));
    }
    Ok(Revocations {
        modified,
        serials,
        crls,
    })
}

fn verifiers(
    roots: &Arc<RootCertStore>,
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Verifiers, CertError> {
    let provider = crate::provider();
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.iter().cloned())
        .build()
        .map_err(|e| CertError::bad(format!("grid CA: {e}")))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
        .with_crls(crls.iter().cloned())
        .build()
        .map_err(|e| CertError::bad(format!("grid CA: {e}")))?;
    Ok(Verifiers { client, server })
}

impl Link {
    /// Loads the certificate directory `dir` (as `colony grid ca issue` writes it).
    pub fn load(dir: &Path) -> Result<Arc<Link>, CertError> {
        Link::load_with(dir, HANDSHAKE_TIMEOUT)
    }

    /// [`Link::load`], giving peers `handshake_timeout` to finish their handshake.
    pub fn load_with(dir: &Path, handshake_timeout: Duration) -> Result<Arc<Link>, CertError> {
        let file = |name: &str| dir.join(name);
        let read = |name: &str| {
            std::fs::read(file(name))
                .map_err(|e| CertError::io(format!("reading {}", file(name).display()), e))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(CERT)?)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::bad(format!("{}: {e}", file(CERT).display())))?;
        let Some(leaf) = certs.first() else {
            return Err(CertError::bad(format!(
                "{} holds no certificate",
                file(CERT).display()
            )));
        };
        let me = peer_of(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(&read(KEY)?)
            .map_err(|e| CertError::bad(format!("{}: {e}", file(KEY).display())))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read(CA_CERT)?) {
            let ca = ca.map_err(|e| CertError::bad(format!("{}: {e}", file(CA_CERT).display())))?;
            roots
                .add(ca)
                .map_err(|e| CertError::bad(format!("{}: {e}", file(CA_CERT).display())))?;
        }
        let roots = Arc::new(roots);
        let revocations = load_revocations(&file(CRL), true)?;
        let verifiers = verifiers(&roots, &revocations.crls)?;

        let shared = Arc::new(RwLock::new(verifiers));
        let provider = crate::provider();
        let bad_key = |e: rustls::Error| CertError::bad(format!("{}: {e}", dir.display()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad_key)?
            .with_client_cert_verifier(Arc::new(ClientSide(shared.clone())))
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(bad_key)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad_key)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerSide(shared.clone())))
            .with_client_auth_cert(certs, key)
            .map_err(bad_key)?;
        Ok(Arc::new(Link {
            dir: dir.to_path_buf(),
            me,
            roots,
            revocations: RwLock::new(revocations),
            verifiers: shared,
            server: Arc::new(server),
            client: Arc::new(client),
            handshake_timeout,
            max_handshakes: MAX_HANDSHAKES,
            handshaking: Places::default(),
            refusals: LogBudget::default(),
            refused: Default::default(),
        }))
    }

    /// Reloads the revocation list if its file changed since it was loaded.
    pub fn reload_if_changed(&self) {
        let path = self.dir.join(CRL);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let seen = self
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .modified;
        if modified != seen {
            self.reload();
        }
    }

    /// Reloads the revocation list (SIGHUP). A list that does not load is
    /// logged and the one in force is kept.
    pub fn reload(&self) {
        let path = self.dir.join(CRL);
        let loaded =
            load_revocations(&path, false).and_then(|r| Ok((verifiers(&self.roots, &r.crls)?, r)));
        match loaded {
            Ok((verifiers, revocations)) => {
                tracing::info!(revoked = revocations.serials.len(), list = %path.display(), "revocation list loaded");
                *self.verifiers.write().unwrap_or_else(|p| p.into_inner()) = verifiers;
                *self.revocations.write().unwrap_or_else(|p| p.into_inner()) = revocations;
            }
            Err(e) => {
                tracing::error!(error = %e, "the new revocation list does not load; keeping the old one");
                // Not tried again until the file changes once more.
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                self.revocations
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .modified = modified;
            }
        }
    }

    /// The peer's identity after a handshake: its certificate read, its
    /// serial not revoked, its role one of `allowed`.
    fn admit(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
        addr: SocketAddr,
        allowed: &[Role],
    ) -> Result<Peer, LinkError> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| LinkError::Identity {
                peer: addr,
                reason: "presented no certificate".into(),
            })?;
        let who = peer_of(leaf).map_err(|e| LinkError::Identity {
            peer: addr,
            reason: e.to_string(),
        })?;
        let revoked = self
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .serials
            .contains(&who.serial);
        if revoked {
            return Err(LinkError::Revoked { peer: addr, who });
        }
        // A resumed session skipped the chain's dates: an expired
        // certificate must not live on in its tickets.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now > who.not_after {
            return Err(LinkError::Identity {
                peer: addr,
                reason: format!("the certificate of {who} has expired"),
            });
        }
        if !allowed.contains(&who.role) {
            return Err(LinkError::Role {
                peer: addr,
                who,
                allowed: allowed
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        Ok(who)
    }

    /// Logs that `what` (such as "a venti link") was refused and why,
    /// within the node's budget of refusal lines: a flood of strangers is
    /// counted, not written out line by line.
    pub fn log_refusal(&self, what: &str, error: &LinkError) {
        self.refused[error.kind()].fetch_add(1, Ordering::Relaxed);
        self.refusals.warn_refused(error.peer(), what, error);
    }

    /// Peers refused so far by this node's TLS listeners (as logged, or
    /// left out of the log, by [`Link::log_refusal`]), by reason.
    pub fn refused_so_far(&self) -> Vec<(&'static str, u64)> {
        LinkError::REASONS
            .iter()
            .zip(&self.refused)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// How many peers are in their handshake with this node now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshaking.taken()
    }

    /// Counts a server-side handshake with `addr` as begun until the place
    /// is dropped, or refuses it when [`Link::max_handshakes`] are already
    /// under way.
    fn begin_handshake(&self, addr: SocketAddr) -> Result<Place, LinkError> {
        self.handshaking
            .take(self.max_handshakes)
            .ok_or(LinkError::Busy {
                peer: addr,
                limit: self.max_handshakes,
            })
    }

    /// A handshake with `addr`, given the handshake timeout; `other` is what
    /// the peer probably is if it does not speak TLS at all.
    async fn timed<T>(
        &self,
        addr: SocketAddr,
        other: &str,
        handshake: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, LinkError> {
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| LinkError::Timeout {
                peer: addr,
                secs: self.handshake_timeout.as_secs(),
            })?
            .map_err(|e| LinkError::Handshake {
                peer: addr,
                reason: describe(&e, other),
            })
    }

    /// Runs the server side of a handshake on an accepted connection and
    /// admits the peer if its role is one of `allowed`.
    pub async fn accept(
        &self,
        socket: TcpStream,
        addr: SocketAddr,
        allowed: &[Role],
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Peer), LinkError> {
        let handshaking = self.begin_handshake(addr)?;
        self.reload_if_changed();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let stream = self
            .timed(
                addr,
                "a plaintext client on a TLS port",
                acceptor.accept(socket),
            )
            .await?;
        drop(handshaking);
        let who = self.admit(stream.get_ref().1.peer_certificates(), addr, allowed)?;
        Ok((stream, who))
    }

    /// How a server admits the connections it accepts: each one's
    /// handshake, its peer checked against `allowed`. A refusal is logged
    /// (naming `what`, such as "a venti link") and comes back as `None`.
    /// The server is given this and knows nothing of TLS.
    pub fn admitter(
        self: &Arc<Self>,
        allowed: Vec<Role>,
        what: &'static str,
    ) -> impl Fn(TcpStream, SocketAddr) -> Admitting + Send + Sync + 'static {
        let (link, allowed) = (self.clone(), Arc::new(allowed));
        move |socket, addr| {
            let (link, allowed) = (link.clone(), allowed.clone());
            Box::pin(async move {
                match link.accept(socket, addr, &allowed).await {
                    Ok((stream, who)) => {
                        tracing::debug!(peer = %addr, %who, "{what} over TLS");
                        Some(stream)
                    }
                    Err(e) => {
                        link.log_refusal(what, &e);
                        None
                    }
                }
            })
        }
    }

    /// As [`Link::accept`], for a blocking server (the 9P export runs a
    /// thread per client).
    pub fn accept_blocking(
        &self,
        mut socket: std::net::TcpStream,
        addr: SocketAddr,
        allowed: &[Role],
    ) -> Result<
        (
            rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
            Peer,
        ),
        LinkError,
    > {
        let handshaking = self.begin_handshake(addr)?;
        self.reload_if_changed();
        let failed = |e: std::io::Error| LinkError::Handshake {
            peer: addr,
            reason: describe(&e, "a plaintext client on a TLS port"),
        };
        let mut conn = rustls::ServerConnection::new(self.server.clone()).map_err(|e| {
            LinkError::Handshake {
                peer: addr,
                reason: e.to_string(),
            }
        })?;
        let deadline = std::time::Instant::now() + self.handshake_timeout;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(LinkError::Timeout {
                    peer: addr,
                    secs: self.handshake_timeout.as_secs(),
                });
            }
            socket.set_read_timeout(Some(left)).map_err(failed)?;
            match conn.complete_io(&mut socket) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(LinkError::Timeout {
                        peer: addr,
                        secs: self.handshake_timeout.as_secs(),
                    });
                }
                Err(e) => return Err(failed(e)),
            }
        }
        socket.set_read_timeout(None).map_err(failed)?;
        drop(handshaking);
        let who = self.admit(conn.peer_certificates(), addr, allowed)?;
        Ok((rustls::StreamOwned::new(conn, socket), who))
    }

    /// Runs the client side of a handshake on a connected socket and admits
    /// the server if its role is one of `allowed`.
    pub async fn connect(
        &self,
        socket: TcpStream,
        allowed: &[Role],
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Peer), LinkError> {
        let addr = socket
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.reload_if_changed();
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let name = ServerName::try_from(DIAL_NAME).expect("a valid DNS name");
        let stream = self
            .timed(addr, "a plaintext server", connector.connect(name, socket))
            .await?;
        let who = self.admit(stream.get_ref().1.peer_certificates(), addr, allowed)?;
        Ok((stream, who))
    }
}

/// A handshake error in words an operator can act on; `other` is what the
/// peer probably is when it does not speak TLS at all.
fn describe(e: &std::io::Error, other: &str) -> String {
    let text = e.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        format!("{text} (not TLS: {other}?)")
    } else {
        text
    }
}

/// Verifies client certificates with the verifier of the list in force.
struct ClientSide(Arc<RwLock<Verifiers>>);

impl std::fmt::Debug for ClientSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("grid client verifier")
    }
}

impl ClientSide {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone())
    }
}

impl ClientCertVerifier for ClientSide {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Verifies a server's certificate against the name it carries itself (a
/// node is not known by its address), with the list in force.
struct ServerSide(Arc<RwLock<Verifiers>>);

impl std::fmt::Debug for ServerSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("grid server verifier")
    }
}

impl ServerSide {
    fn inner(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .server
            .clone())
    }
}

impl ServerCertVerifier for ServerSide {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let who = peer_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(who.name.as_str())
            .map_err(|e| rustls::Error::General(format!("{}: {e}", who.name)))?;
        self.inner()?
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Handshake signatures, checked the same way at both ends: with the
/// provider's algorithms, whatever list of revocations is in force.
mod signatures {
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::pki_types::CertificateDer;
    use rustls::{DigitallySignedStruct, SignatureScheme};

    fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
        crate::provider().signature_verification_algorithms
    }

    pub fn tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    pub fn tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    pub fn schemes() -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
