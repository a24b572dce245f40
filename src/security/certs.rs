//! Development certificates: a local CA and one certificate per known party,
//! made with rcgen. Identities are DNS names `<name>.<role>.proofgate` in the
//! subject alternative names, which [`super::identity`] maps to roles.
//! A production deployment brings its own CA and certificates in the same
//! shape (or maps its names in the configuration).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (0600); `dev-certs --issue/--revoke` sign with it.
pub const CA_KEY: &str = "ca.key";
/// The gateway's identity; departments' TLS clients expect it. A single
/// node presents a certificate of this name; every node certificate
/// (`<node-id>.gateway.proofgate`) names it too, as a second DNS name, so
/// clients that expect `gateway.proofgate` accept any node of the PKI.
pub const GATEWAY_IDENTITY: &str = "gateway.proofgate";
/// Node certificates are `<node-id>` followed by this.
pub const NODE_IDENTITY_SUFFIX: &str = ".gateway.proofgate";
/// How many node certificates (`node-1` … `node-N`) `dev-certs` issues;
/// more with `dev-certs --issue node-4.gateway.proofgate`.
pub const DEV_NODES: usize = 3;

/// A node's identity in a shared PKI: `<node-id>.gateway.proofgate`.
pub fn node_identity(node_id: &str) -> String {
    format!("{node_id}{NODE_IDENTITY_SUFFIX}")
}

/// `gateway.proofgate` or a node's `<node-id>.gateway.proofgate`.
pub fn is_gateway_identity(identity: &str) -> bool {
    identity == GATEWAY_IDENTITY
        || identity
            .strip_suffix(NODE_IDENTITY_SUFFIX)
            .is_some_and(|node| !node.is_empty() && !node.contains('.'))
}

#[derive(Debug, Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("identity `{0}` must look like <name>.<role>.proofgate with name of a-z, 0-9 and '-'")]
    BadIdentity(String),
    #[error("{path}: {problem}")]
    Crl { path: PathBuf, problem: String },
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for ten years.
    Normal,
    /// Expired yesterday (for tests of refusal).
    Expired,
}

/// The identities `proofgate dev-certs` (and a first `serve`) create: the
/// gateway, [`DEV_NODES`] node certificates (`node-1.gateway.proofgate`…,
/// for nodes sharing the folder with `serve --certs`), two halls, an auditor, a citizen portal, an admin, and one
/// department identity per name in `departments` (the caller knows which
/// departments it runs; security does not).
pub fn standard_identities<'a>(departments: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names = vec![GATEWAY_IDENTITY.to_owned()];
    names.extend((1..=DEV_NODES).map(|n| node_identity(&format!("node-{n}"))));
    names.extend([
        "hall-wucheng.hall.proofgate".to_owned(),
        "hall-jindong.hall.proofgate".to_owned(),
        "auditor.auditor.proofgate".to_owned(),
        "portal.citizen-portal.proofgate".to_owned(),
        "admin.admin.proofgate".to_owned(),
    ]);
    names.extend(
        departments
            .into_iter()
            .map(|name| format!("{name}.department.proofgate")),
    );
    names
}

pub(super) fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "proofgate development CA");
    dn.push(DnType::OrganizationName, "proofgate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

pub(super) fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))
}

pub(super) fn valid_identity(identity: &str) -> bool {
    identity.ends_with(".proofgate")
        && identity.len() <= 128
        && identity.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Creates the CA, its empty revocation list (`ca.crl`) and a certificate
/// for each of `identities` in `dir` unless a CA exists. Returns whether
/// anything was created. The list is made with the CA only: a missing
/// `ca.crl` beside an existing CA is never recreated (an empty list would
/// un-revoke every certificate on the lost one).
pub fn ensure_dev_certs(dir: &Path, identities: &[String]) -> Result<bool, CertError> {
    if dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&key)?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    fs::write(dir.join(CA_CERT), ca.pem()).map_err(io(&dir.join(CA_CERT)))?;
    for identity in identities {
        issue(dir, identity, Validity::Normal)?;
    }
    super::crl::first_crl(dir, crate::clock::system_now_unix_ms())?;
    Ok(true)
}

/// Issues `<identity>.pem` and `<identity>.key` in `dir`, signed by its CA.
/// The certificate serves both ends (server and client authentication) and
/// also names `localhost` and 127.0.0.1, so local servers can present it.
/// A node certificate (`<node-id>.gateway.proofgate`) also names
/// `gateway.proofgate`, after its own name: the caller's identity is the
/// first `.proofgate` name (see [`super::identity::identity_of`]), and
/// clients expecting `gateway.proofgate` accept it.
pub fn issue(dir: &Path, identity: &str, validity: Validity) -> Result<PathBuf, CertError> {
    if !valid_identity(identity) {
        return Err(CertError::BadIdentity(identity.to_owned()));
    }
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names = vec![identity.to_owned()];
    if identity != GATEWAY_IDENTITY && is_gateway_identity(identity) {
        names.push(GATEWAY_IDENTITY.to_owned());
    }
    names.push("localhost".to_owned());
    let mut params = CertificateParams::new(names)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match validity {
        Validity::Normal => {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        }
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    // Written beside and renamed into place, one right after the other, so a
    // node reloading its certificate (see `tls`) almost never reads a new
    // certificate with the old key (a reload that does is refused and the
    // next one takes the pair).
    let cert_path = dir.join(format!("{identity}.pem"));
    let key_path = dir.join(format!("{identity}.key"));
    let cert_partial = dir.join(format!("{identity}.pem.partial"));
    let key_partial = dir.join(format!("{identity}.key.partial"));
    write_private(&key_partial, &key.serialize_pem())?;
    fs::write(&cert_partial, cert.pem()).map_err(io(&cert_partial))?;
    // The certificate replaced stays beside as `<identity>.<serial>.pem`:
    // it is still valid until revoked (`dev-certs --revoke IDENTITY
    // --serial HEX`).
    if let Ok(old) = fs::read(&cert_path) {
        use rustls_pki_types::pem::PemObject;
        if let Some((_, serial)) = rustls_pki_types::CertificateDer::from_pem_slice(&old)
            .ok()
            .and_then(|c| super::crl::issuer_and_serial(&c))
        {
            let kept = dir.join(format!("{identity}.{}.pem", hex::encode(serial)));
            fs::write(&kept, &old).map_err(io(&kept))?;
        }
    }
    fs::rename(&key_partial, &key_path).map_err(io(&key_path))?;
    fs::rename(&cert_partial, &cert_path).map_err(io(&cert_path))?;
    Ok(cert_path)
}

/// PEM files of one identity, and the CA that vouches for the others.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsFiles {
    pub fn load(dir: &Path, identity: &str) -> Result<Self, CertError> {
        let read = |name: String| {
            let path = dir.join(name);
            fs::read(&path).map_err(io(&path))
        };
        Ok(Self {
            ca: read(CA_CERT.to_owned())?,
            cert: read(format!("{identity}.pem"))?,
            key: read(format!("{identity}.key"))?,
        })
    }

    pub fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert, &self.key)
    }

    pub fn ca_certificate(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(&self.ca)
    }

    /// Server side: present this identity; ask clients for a certificate of
    /// the CA. Optional at the TLS layer so a missing certificate gets a
    /// gRPC UNAUTHENTICATED with a reason instead of a bare handshake failure.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca_certificate())
            .client_auth_optional(true)
    }

    /// Client side: present this identity; expect the server to be `server_identity`.
    pub fn client_config(&self, server_identity: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca_certificate())
            .identity(self.identity())
            .domain_name(server_identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_are_made_once_with_private_keys_closed() {
        let dir = tempfile::tempdir().unwrap();
        let identities = standard_identities(["civil-affairs"]);
        assert!(identities.contains(&"civil-affairs.department.proofgate".to_owned()));
        assert!(ensure_dev_certs(dir.path(), &identities).unwrap());
        assert!(
            !ensure_dev_certs(dir.path(), &identities).unwrap(),
            "kept on the next start"
        );
        for identity in &identities {
            assert!(
                dir.path().join(format!("{identity}.pem")).exists(),
                "{identity}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in ["ca.key", "gateway.proofgate.key"] {
                let mode = fs::metadata(dir.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{key} readable by others");
            }
        }
        assert!(matches!(
            issue(dir.path(), "Not Valid", Validity::Normal),
            Err(CertError::BadIdentity(_))
        ));
    }

    #[test]
    fn a_node_certificate_names_the_node_first_and_the_gateway_second() {
        use rustls_pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let identities = standard_identities([]);
        for n in 1..=DEV_NODES {
            assert!(identities.contains(&node_identity(&format!("node-{n}"))));
        }
        ensure_dev_certs(dir.path(), &identities).unwrap();
        let der = |identity: &str| {
            rustls_pki_types::CertificateDer::from_pem_file(
                dir.path().join(format!("{identity}.pem")),
            )
            .unwrap()
        };
        let node = der("node-2.gateway.proofgate");
        assert_eq!(
            super::super::identity::identity_of(std::slice::from_ref(&node)).as_deref(),
            Some("node-2.gateway.proofgate"),
            "the caller is the node"
        );
        let names: Vec<String> = webpki::EndEntityCert::try_from(&node)
            .unwrap()
            .valid_dns_names()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            names,
            ["node-2.gateway.proofgate", GATEWAY_IDENTITY, "localhost"],
            "clients expecting gateway.proofgate accept it"
        );
        let single = der(GATEWAY_IDENTITY);
        let names: Vec<String> = webpki::EndEntityCert::try_from(&single)
            .unwrap()
            .valid_dns_names()
            .map(str::to_owned)
            .collect();
        assert_eq!(names, [GATEWAY_IDENTITY, "localhost"], "unchanged");
        assert!(is_gateway_identity("node-7.gateway.proofgate"));
        assert!(!is_gateway_identity("x.y.gateway.proofgate"));
        assert!(!is_gateway_identity("auditor.auditor.proofgate"));
    }
}
