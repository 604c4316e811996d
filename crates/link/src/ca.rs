//! The grid's certificate authority, a directory (whose key can stay
//! offline, on the admin's machine):
//!
//! * `ca.pem`, `ca-key.pem` (mode 0600): the CA's certificate and key;
//! * `issued/NAME/SERIAL.pem`: every certificate issued, by node name;
//! * `revoked`: lines of `SERIAL NAME` (serial in hex), and `crl.pem`, the
//!   signed revocation list made from them, which nodes load.
//!
//! A certificate directory, as `issue` writes it for a node, holds
//! `cert.pem`, `key.pem` (0600), `ca.pem` and a copy of `crl.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::CertError;
use crate::identity::{Role, check_name};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CRL: &str = "crl.pem";
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";
const REVOKED: &str = "revoked";
const ISSUED: &str = "issued";

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path)
        .map_err(|e| CertError::io(format!("reading {}", path.display()), e))
}

/// Writes `data` to `path` whole or not at all (a temporary file renamed),
/// with `mode`.
fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        // A leftover temporary file could have any mode: made afresh, the
        // mode (0600 for keys) is the one asked for.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| CertError::io(format!("writing {}", path.display()), e))
}

fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| CertError::io("reading /dev/urandom", e))?;
    // Positive, and never a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Makes a new grid CA in `dir` (which must not hold one yet).
pub fn init(dir: &Path, grid: &str) -> Result<(), CertError> {
    check_name(grid)?;
    if dir.join(CA_KEY).exists() {
        return Err(CertError::bad(format!(
            "{} already holds a grid CA; refusing to replace it",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir.join(ISSUED))
        .map_err(|e| CertError::io(format!("creating {}", dir.display()), e))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{grid} grid CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    write(&dir.join(REVOKED), b"", 0o644)?;
    write_crl(dir, &[])
}

fn issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
    Ok(Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, key)?)
}

/// When an issued certificate stops being valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    Days(u32),
    /// Up to this moment (a moment past makes an expired certificate, which
    /// is what tests of refusals need).
    Until(OffsetDateTime),
}

/// Issues a certificate for `name` in `role` into the certificate
/// directory `out`, with the CA's certificate and current revocation list.
pub fn issue(
    dir: &Path,
    name: &str,
    role: Role,
    validity: Validity,
    out: &Path,
) -> Result<(), CertError> {
    check_name(name)?;
    let issuer = issuer(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.subject_alt_names =
        vec![SanType::DnsName(name.try_into().map_err(|e| {
            CertError::bad(format!("bad node name {name:?}: {e}"))
        })?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both ends of links: it serves and it dials.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    match validity {
        Validity::Days(days) => {
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(days.into());
        }
        Validity::Until(end) => {
            params.not_before = (now - Duration::hours(1)).min(end - Duration::days(1));
            params.not_after = end;
        }
    }
    let cert = params.signed_by(&key, &issuer)?;
    // Recorded before it is handed out: a certificate the CA cannot find
    // could never be revoked.
    let record = dir.join(ISSUED).join(name);
    std::fs::create_dir_all(&record)
        .map_err(|e| CertError::io(format!("creating {}", record.display()), e))?;
    let serial = params.serial_number.as_ref().expect("set above").to_bytes();
    write(
        &record.join(format!("{}.pem", hex(&serial))),
        cert.pem().as_bytes(),
        0o644,
    )?;
    std::fs::create_dir_all(out)
        .map_err(|e| CertError::io(format!("creating {}", out.display()), e))?;
    write(&out.join(KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write(&out.join(CERT), cert.pem().as_bytes(), 0o644)?;
    write(
        &out.join(CA_CERT),
        read(&dir.join(CA_CERT))?.as_bytes(),
        0o644,
    )?;
    write(&out.join(CRL), read(&dir.join(CRL))?.as_bytes(), 0o644)?;
    Ok(())
}

/// Revokes every certificate issued to `name` and rewrites the CA's
/// revocation list; nodes refuse `name` once they load it. Returns how many
/// certificates were newly revoked.
pub fn revoke(dir: &Path, name: &str) -> Result<usize, CertError> {
    check_name(name)?;
    let record = dir.join(ISSUED).join(name);
    let entries = std::fs::read_dir(&record)
        .map_err(|_| CertError::bad(format!("this CA never issued a certificate to {name}")))?;
    let mut revoked = revoked(dir)?;
    let mut count = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| CertError::io(format!("reading {}", record.display()), e))?
            .path();
        if path.extension().is_none_or(|e| e != "pem") {
            continue;
        }
        let pem = read(&path)?;
        let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
            .map_err(|e| CertError::bad(format!("{}: {e}", path.display())))?;
        let peer = crate::identity::peer_of(&der)?;
        if !revoked.iter().any(|(serial, _)| *serial == peer.serial) {
            revoked.push((peer.serial, name.to_string()));
            count += 1;
        }
    }
    let text: String = revoked
        .iter()
        .map(|(serial, who)| format!("{} {who}\n", hex(serial)))
        .collect();
    write(&dir.join(REVOKED), text.as_bytes(), 0o644)?;
    write_crl(dir, &revoked)?;
    Ok(count)
}

fn revoked(dir: &Path) -> Result<Vec<(Vec<u8>, String)>, CertError> {
    let text = read(&dir.join(REVOKED)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (serial, name) = l.split_once(' ').unwrap_or((l, ""));
            let serial = unhex(serial)
                .ok_or_else(|| CertError::bad(format!("bad line in {REVOKED}: {l:?}")))?;
            Ok((serial, name.to_string()))
        })
        .collect()
}

fn write_crl(dir: &Path, revoked: &[(Vec<u8>, String)]) -> Result<(), CertError> {
    let issuer = issuer(dir)?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(3650),
        // Increasing with every list: seconds since the epoch will do.
        crl_number: SerialNumber::from(now.unix_timestamp() as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, _)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write(&dir.join(CRL), crl.pem()?.as_bytes(), 0o644)
}
