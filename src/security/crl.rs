//! Certificate revocation lists (RFC 5280 CRLs) of the development CA:
//! `dev-certs` writes an empty, signed `ca.crl` beside `ca.pem` when it
//! creates the CA (only then: a lost list is never recreated empty);
//! `dev-certs --revoke IDENTITY` adds that identity's certificate serial,
//! keeping every earlier revocation, with the CRL number incremented and a
//! fresh `nextUpdate` ([`CRL_VALIDITY`] ahead). The node reads CRLs with
//! [`parse_crl`] (PEM or DER, from any CA) — see [`super::tls`].
//!
//! Files are replaced atomically (written beside, then renamed), so a node
//! polling them never reads half a list.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use super::certs::{ca_params, io, valid_identity, write_private, CertError, CA_KEY};

/// The CA's revocation list, next to `ca.pem`.
pub const CA_CRL: &str = "ca.crl";
/// How long a CRL written here is current: its `nextUpdate` is this far
/// after its `thisUpdate`. Re-sign it (`dev-certs --renew-crl`) before then.
pub const CRL_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a CRL says, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The CRL number (RFC 5280 §5.2.3); 0 when absent.
    pub crl_number: u128,
    pub this_update_unix_ms: i64,
    /// None: the list names no next update (webpki refuses such lists).
    pub next_update_unix_ms: Option<i64>,
    /// The issuer's name, DER (to match certificates of that issuer).
    pub issuer: Vec<u8>,
    /// Serials (DER INTEGER contents, leading zero bytes stripped) and when
    /// each was revoked, in list order.
    pub revoked: Vec<(Vec<u8>, i64)>,
}

impl CrlInfo {
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        let serial = normalized(serial);
        self.revoked.iter().any(|(s, _)| s == serial)
    }
}

/// A serial without the sign byte DER puts before a high first byte.
fn normalized(serial: &[u8]) -> &[u8] {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    &serial[start..]
}

/// A PEM (`-----BEGIN X509 CRL-----`) or DER CRL: its DER and what it says.
pub fn parse_crl(bytes: &[u8]) -> Result<(CertificateRevocationListDer<'static>, CrlInfo), String> {
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(bytes)
            .map_err(|e| format!("not a PEM `X509 CRL`: {e}"))?
    } else {
        CertificateRevocationListDer::from(bytes.to_vec())
    };
    let info = crl_info(der.as_ref())?;
    // What the TLS verifiers will use must parse there too.
    webpki::OwnedCertRevocationList::from_der(der.as_ref())
        .map_err(|e| format!("refused by webpki: {e}"))?;
    Ok((der, info))
}

fn crl_info(der: &[u8]) -> Result<CrlInfo, String> {
    let (rest, crl) =
        x509_parser::parse_x509_crl(der).map_err(|e| format!("not a DER CRL: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the CRL", rest.len()));
    }
    let crl_number = match crl.crl_number() {
        None => 0,
        Some(n) => {
            let bytes = n.to_bytes_be();
            if bytes.len() > 16 {
                return Err("CRL number longer than 16 bytes".into());
            }
            bytes
                .iter()
                .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
        }
    };
    let ms = |t: x509_parser::time::ASN1Time| t.timestamp().saturating_mul(1000);
    Ok(CrlInfo {
        crl_number,
        this_update_unix_ms: ms(crl.last_update()),
        next_update_unix_ms: crl.next_update().map(ms),
        issuer: crl.issuer().as_raw().to_vec(),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| (normalized(r.raw_serial()).to_vec(), ms(r.revocation_date)))
            .collect(),
    })
}

/// Whether the CRL `der` is signed by one of `roots` whose subject is its
/// issuer: only such a list may revoke (or un-revoke) anything.
pub fn verify_crl(der: &[u8], roots: &[CertificateDer<'_>]) -> Result<(), String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| format!("not a DER CRL: {e}"))?;
    let mut named = false;
    for root in roots {
        let Ok((_, root)) = x509_parser::parse_x509_certificate(root.as_ref()) else {
            continue;
        };
        if root.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(root.public_key()).is_ok() {
            return Ok(());
        }
    }
    Err(if named {
        format!(
            "its signature does not verify with the configured CA `{}`: not issued by it",
            crl.issuer()
        )
    } else {
        format!(
            "issued by `{}`, which is not a configured CA (ca.pem)",
            crl.issuer()
        )
    })
}

/// The issuer name (DER) and serial of a certificate.
pub fn issuer_and_serial(cert: &CertificateDer<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some((
        parsed.issuer().as_raw().to_vec(),
        normalized(parsed.raw_serial()).to_vec(),
    ))
}

fn datetime(unix_ms: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).map_err(|e| {
        CertError::Crl {
            path: PathBuf::new(),
            problem: format!("time {unix_ms} ms out of range: {e}"),
        }
    })
}

/// Signs a CRL of `revoked` numbered `number`, current from `now` for
/// [`CRL_VALIDITY`], and replaces `dir/ca.crl` with it.
fn write_crl(
    dir: &Path,
    revoked: &[(Vec<u8>, i64)],
    number: u128,
    now_unix_ms: i64,
) -> Result<PathBuf, CertError> {
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key_pem)?);
    let validity_ms = i64::try_from(CRL_VALIDITY.as_millis()).unwrap_or(i64::MAX);
    let params = CertificateRevocationListParams {
        this_update: datetime(now_unix_ms)?,
        next_update: datetime(now_unix_ms.saturating_add(validity_ms))?,
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, at)| {
                Ok(RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial),
                    revocation_time: datetime(*at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, CertError>>()?,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = params.signed_by(&issuer)?.pem()?;
    let path = dir.join(CA_CRL);
    let partial = dir.join(format!("{CA_CRL}.partial"));
    write_private(&partial, &pem)?;
    // Readable like ca.pem: a CRL is public.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o644)).map_err(io(&partial))?;
    }
    fs::rename(&partial, &path).map_err(io(&path))?;
    Ok(path)
}

/// The CRL of `dir` read back. A missing, unreadable or unparseable list
/// is an error, never taken as empty: that would quietly un-revoke every
/// certificate on it.
pub fn read_ca_crl(dir: &Path) -> Result<CrlInfo, CertError> {
    let path = dir.join(CA_CRL);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CertError::Crl {
                path,
                problem: "no revocation list here; it is made with the CA only and never recreated empty (that would un-revoke every certificate on the lost one): restore it from a backup".into(),
            })
        }
        Err(e) => return Err(io(&path)(e)),
    };
    parse_crl(&bytes)
        .map(|(_, info)| info)
        .map_err(|problem| CertError::Crl { path, problem })
}

/// Writes the first, empty, signed CRL of a CA just created in `dir`.
pub(super) fn first_crl(dir: &Path, now_unix_ms: i64) -> Result<PathBuf, CertError> {
    write_crl(dir, &[], 1, now_unix_ms)
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub path: PathBuf,
    /// Hex of the revoked certificate's serial.
    pub serial: String,
    /// It was on the list already (the list is re-signed all the same).
    pub already: bool,
    pub crl_number: u128,
    /// Certificates on the list now.
    pub revoked: usize,
}

/// Adds the serial of `dir/<identity>.pem` to `dir/ca.crl` (which must exist),
/// keeping earlier revocations; re-signs it with the next CRL number.
pub fn revoke(dir: &Path, identity: &str, now_unix_ms: i64) -> Result<Revocation, CertError> {
    revoke_serial(dir, identity, None, now_unix_ms)
}

/// The serial (normalized) of the PEM certificate at `path`.
fn serial_at(path: &Path, identity: &str) -> Result<Vec<u8>, CertError> {
    let pem = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CertError::Crl {
            path: path.to_path_buf(),
            problem: format!("no certificate of `{identity}` here: nothing to revoke"),
        },
        _ => io(path)(e),
    })?;
    let cert = CertificateDer::from_pem_slice(&pem).map_err(|e| CertError::Crl {
        path: path.to_path_buf(),
        problem: format!("not a PEM certificate: {e}"),
    })?;
    let (_, serial) = issuer_and_serial(&cert).ok_or_else(|| CertError::Crl {
        path: path.to_path_buf(),
        problem: "not a parseable X.509 certificate".into(),
    })?;
    Ok(serial)
}

/// Like [`revoke`]; with `serial` (hex), that certificate of `identity`:
/// the current one or one kept by a re-issue (`<identity>.<serial>.pem`).
pub fn revoke_serial(
    dir: &Path,
    identity: &str,
    serial: Option<&str>,
    now_unix_ms: i64,
) -> Result<Revocation, CertError> {
    if !valid_identity(identity) {
        return Err(CertError::BadIdentity(identity.to_owned()));
    }
    let cert_path = dir.join(format!("{identity}.pem"));
    let serial = match serial {
        None => serial_at(&cert_path, identity)?,
        Some(wanted) => {
            let wanted_bytes = hex::decode(wanted.trim_start_matches("0x"))
                .ok()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| CertError::Crl {
                    path: cert_path.clone(),
                    problem: format!("serial `{wanted}` is not hex"),
                })?;
            let wanted_bytes = normalized(&wanted_bytes).to_vec();
            let current = serial_at(&cert_path, identity).ok();
            let kept = dir.join(format!("{identity}.{}.pem", hex::encode(&wanted_bytes)));
            if current.as_ref() != Some(&wanted_bytes)
                && serial_at(&kept, identity).ok().as_ref() != Some(&wanted_bytes)
            {
                return Err(CertError::Crl {
                    path: kept,
                    problem: format!(
                        "no certificate of `{identity}` with serial {} here (neither the current one nor one kept by a re-issue)",
                        hex::encode(&wanted_bytes)
                    ),
                });
            }
            wanted_bytes
        }
    };
    let current = read_ca_crl(dir)?;
    let (mut revoked, number) = (current.revoked, current.crl_number);
    let already = revoked.iter().any(|(s, _)| *s == serial);
    if !already {
        revoked.push((serial.clone(), now_unix_ms));
    }
    let crl_number = number.saturating_add(1);
    let path = write_crl(dir, &revoked, crl_number, now_unix_ms)?;
    Ok(Revocation {
        path,
        serial: hex::encode(&serial),
        already,
        crl_number,
        revoked: revoked.len(),
    })
}

/// Re-signs `dir/ca.crl` with the same revocations, the next CRL number and
/// a new `nextUpdate`: what a CA does before its list expires.
pub fn renew_crl(dir: &Path, now_unix_ms: i64) -> Result<(PathBuf, CrlInfo), CertError> {
    let current = read_ca_crl(dir)?;
    let (revoked, number) = (current.revoked, current.crl_number);
    // Duplicates in a hand-edited list would be kept once.
    let mut seen = HashSet::new();
    let revoked: Vec<_> = revoked
        .into_iter()
        .filter(|(s, _)| seen.insert(s.clone()))
        .collect();
    let path = write_crl(dir, &revoked, number.saturating_add(1), now_unix_ms)?;
    let info = read_ca_crl(dir)?;
    Ok((path, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::certs::{ensure_dev_certs, standard_identities};

    const NOW: i64 = 1_800_000_000_000;
    const HALL: &str = "hall-wucheng.hall.proofgate";
    const OTHER: &str = "hall-jindong.hall.proofgate";

    fn serial_of(dir: &Path, identity: &str) -> Vec<u8> {
        let pem = fs::read(dir.join(format!("{identity}.pem"))).unwrap();
        issuer_and_serial(&CertificateDer::from_pem_slice(&pem).unwrap())
            .unwrap()
            .1
    }

    #[test]
    fn dev_certs_write_an_empty_signed_crl_current_for_thirty_days() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        assert!(dir.path().join(CA_CRL).exists());
        // A lost list is not recreated empty: not by dev-certs, not by
        // --revoke, not by --renew-crl.
        fs::remove_file(dir.path().join(CA_CRL)).unwrap();
        assert!(!ensure_dev_certs(dir.path(), &standard_identities([])).unwrap());
        assert!(!dir.path().join(CA_CRL).exists(), "recreated");
        let err = revoke(dir.path(), HALL, NOW).unwrap_err();
        assert!(err.to_string().contains("never recreated"), "{err}");
        assert!(renew_crl(dir.path(), NOW).is_err());
        assert!(!dir.path().join(CA_CRL).exists(), "recreated");
        first_crl(dir.path(), NOW).unwrap();
        let info = read_ca_crl(dir.path()).unwrap();
        assert!(info.revoked.is_empty());
        assert_eq!(info.crl_number, 1);
        assert_eq!(info.this_update_unix_ms, NOW);
        assert_eq!(
            info.next_update_unix_ms,
            Some(NOW + CRL_VALIDITY.as_millis() as i64)
        );
        let text = fs::read_to_string(dir.path().join(CA_CRL)).unwrap();
        assert!(text.starts_with("-----BEGIN X509 CRL-----"), "{text}");
    }

    #[test]
    fn revoking_adds_the_serial_keeps_earlier_ones_and_numbers_up() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let first = read_ca_crl(dir.path()).unwrap();

        let revoked = revoke(dir.path(), HALL, NOW).unwrap();
        assert!(!revoked.already);
        assert_eq!(revoked.revoked, 1);
        assert_eq!(revoked.crl_number, first.crl_number + 1);
        let info = read_ca_crl(dir.path()).unwrap();
        assert!(info.is_revoked(&serial_of(dir.path(), HALL)));
        assert!(!info.is_revoked(&serial_of(dir.path(), OTHER)));
        assert_eq!(info.crl_number, revoked.crl_number);
        assert_eq!(hex::encode(&info.revoked[0].0), revoked.serial);

        let later = NOW + 60_000;
        let second = revoke(dir.path(), OTHER, later).unwrap();
        assert_eq!(second.revoked, 2);
        assert_eq!(second.crl_number, revoked.crl_number + 1);
        let info = read_ca_crl(dir.path()).unwrap();
        assert!(info.is_revoked(&serial_of(dir.path(), HALL)), "kept");
        assert!(info.is_revoked(&serial_of(dir.path(), OTHER)));
        assert_eq!(info.revoked[0].1, NOW, "first revocation keeps its date");
        assert_eq!(info.this_update_unix_ms, later);

        let again = revoke(dir.path(), HALL, later).unwrap();
        assert!(again.already);
        assert_eq!(again.revoked, 2, "not listed twice");
        assert_eq!(again.crl_number, second.crl_number + 1);

        let (_, renewed) = renew_crl(dir.path(), later + 1000).unwrap();
        assert_eq!(renewed.crl_number, again.crl_number + 1);
        assert_eq!(renewed.revoked.len(), 2);
    }

    #[test]
    fn a_broken_crl_is_refused_never_taken_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        fs::write(dir.path().join(CA_CRL), "-----BEGIN X509 CRL-----\nAAAA\n").unwrap();
        assert!(matches!(
            revoke(dir.path(), HALL, NOW),
            Err(CertError::Crl { .. })
        ));
        assert!(parse_crl(b"garbage").is_err());
        assert!(parse_crl(b"").is_err());
        let err = revoke(dir.path(), "nobody.hall.proofgate", NOW).unwrap_err();
        assert!(err.to_string().contains("nothing to revoke"), "{err}");
        assert!(matches!(
            revoke(dir.path(), "../ca.hall.proofgate", NOW),
            Err(CertError::BadIdentity(_))
        ));
    }

    #[test]
    fn a_reissue_keeps_the_old_certificate_which_can_be_revoked_by_serial() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let old = serial_of(dir.path(), HALL);
        crate::security::issue(dir.path(), HALL, crate::security::Validity::Normal).unwrap();
        let new = serial_of(dir.path(), HALL);
        assert_ne!(old, new);
        let kept = dir.path().join(format!("{HALL}.{}.pem", hex::encode(&old)));
        assert!(kept.exists(), "the replaced certificate is kept");
        let done = revoke_serial(dir.path(), HALL, Some(&hex::encode(&old)), NOW).unwrap();
        assert_eq!(done.serial, hex::encode(&old));
        let info = read_ca_crl(dir.path()).unwrap();
        assert!(info.is_revoked(&old));
        assert!(!info.is_revoked(&new), "the new certificate stays valid");
        let err = revoke_serial(dir.path(), HALL, Some("abcdef"), NOW).unwrap_err();
        assert!(err.to_string().contains("serial abcdef"), "{err}");
        assert!(revoke_serial(dir.path(), HALL, Some("zz"), NOW).is_err());
        // Without --serial: the current one.
        revoke(dir.path(), HALL, NOW).unwrap();
        assert!(read_ca_crl(dir.path()).unwrap().is_revoked(&new));
    }

    #[test]
    fn der_and_pem_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        revoke(dir.path(), HALL, NOW).unwrap();
        let pem = fs::read(dir.path().join(CA_CRL)).unwrap();
        let (der, from_pem) = parse_crl(&pem).unwrap();
        let (_, from_der) = parse_crl(der.as_ref()).unwrap();
        assert_eq!(from_pem, from_der);
    }
}
