//! Who is at the other end of a link: the name and role a grid certificate
//! carries. The name is the certificate's common name and its one DNS name;
//! the role is its organizational unit.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::CertError;

/// What a certificate's holder is in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A storage node: serves and replicates blocks and names.
    Storage,
    /// A cpu node: runs environments.
    Cpu,
    /// An admin or user tool (vac, a tunnel's client end).
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Storage, Role::Cpu, Role::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Cpu => "cpu",
            Role::Client => "client",
        }
    }

    pub fn parse(text: &str) -> Result<Role, CertError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                CertError::bad(format!("unknown role {text:?}: use storage, cpu or client"))
            })
    }

    /// A comma-separated list of roles (`storage,cpu`).
    pub fn parse_list(text: &str) -> Result<Vec<Role>, CertError> {
        text.split(',').map(|r| Role::parse(r.trim())).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The holder of a verified grid certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub role: Role,
    /// The certificate's serial number (big-endian bytes), which revocation names.
    pub serial: Vec<u8>,
    /// When the certificate stops being valid (seconds since the epoch).
    pub not_after: i64,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// Checks a node name: it becomes a DNS name in the certificate, so
/// lowercase letters, digits, `-` and `.`, starting with a letter or digit,
/// at most 63 bytes.
pub fn check_name(name: &str) -> Result<(), CertError> {
    // Valid DNS labels (a letter or digit at each end), and a letter
    // somewhere, so that no name reads as an IP address.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = name.len() <= 63
        && name.split('.').all(label_ok)
        && name.bytes().any(|b| b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(CertError::bad(format!(
            "bad node name {name:?}: use lowercase letters, digits, '-' and '.' (DNS labels, \
             at least one letter), at most 63"
        )))
    }
}

/// The name, role and serial of a grid certificate (already verified, or
/// about to be).
pub fn peer_of(cert: &CertificateDer<'_>) -> Result<Peer, CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::bad(format!("unreadable certificate: {e}")))?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| CertError::bad("the certificate names no node (no common name)"))?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .ok_or_else(|| CertError::bad(format!("the certificate of {name} has no role")))?;
    let role = Role::parse(role)?;
    check_name(&name)?;
    Ok(Peer {
        name,
        role,
        serial: parsed.raw_serial().to_vec(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_make_good_dns_names_only() {
        for good in ["a", "store-1", "node.grid", "0abc"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            "A",
            "a..b",
            "a.",
            "a b",
            "a_b",
            "x-",
            "a.-b",
            "10.0.0.1",
            "123",
            &"x".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_read_back() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()).unwrap(), r);
        }
        assert_eq!(
            Role::parse_list("storage, cpu").unwrap(),
            vec![Role::Storage, Role::Cpu]
        );
        assert!(Role::parse("admin").is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A peer's certificate is network input: any bytes are an error, never a panic.
        #[test]
        fn any_bytes_as_a_certificate_are_an_error_or_a_peer(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = peer_of(&CertificateDer::from(bytes));
        }

        /// A real certificate cut or flipped anywhere reads back or is refused.
        #[test]
        fn a_damaged_certificate_is_refused_or_read(cut in 0usize..4096, flip in 0usize..4096) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["node".to_string()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, "node");
            params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "cpu");
            let der = params.self_signed(&key).unwrap().der().to_vec();
            let mut damaged = der.clone();
            let at = flip % damaged.len();
            damaged[at] ^= 0x5a;
            damaged.truncate(cut.max(1).min(damaged.len()));
            let _ = peer_of(&CertificateDer::from(damaged));
            prop_assert_eq!(peer_of(&CertificateDer::from(der)).unwrap().role, Role::Cpu);
        }
    }
}
