//! SSH settings shared by the front door and the environments' logins, the
//! node's host key, and how a script's OpenSSH client talks to a node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, ssh_key};
use russh::{MethodKind, MethodSet};

use crate::error::{GridError, GridResult};

/// OpenSSH client options for a script talking to a node whose host key it
/// never recorded and will not keep (a benchmark's or a test's node on
/// loopback): no host-key prompt or record, no password prompt, only the
/// key given with `-i`, and quiet.
pub const SCRIPTED_CLIENT_OPTS: [&str; 10] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "IdentitiesOnly=yes",
];

/// Loads the host key, or makes and stores a new Ed25519 one (mode 0600).
pub fn host_key(path: &Path) -> GridResult<PrivateKey> {
    if path.exists() {
        return PrivateKey::read_openssh_file(path)
            .map_err(|e| GridError::refused(format!("host key {}: {e}", path.display())));
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| GridError::io("reading /dev/urandom", e))?;
    let key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| GridError::refused(format!("encoding host key: {e}")))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| GridError::io(format!("writing {}", path.display()), e))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| GridError::io(format!("writing {}", path.display()), e))?;
    tracing::info!(path = %path.display(), "made a new SSH host key");
    Ok(key)
}

/// SSH settings shared by the front door and the environments' logins:
/// public keys only, a short delay after a refused key.
pub fn server_config(key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        inactivity_timeout: None,
        // (TCP_NODELAY, and quick ACKs during a login, are set on every
        // connection as it is accepted: see ssh_server.)
        ..Default::default()
    })
}
