//! The node's live mutual TLS, reloadable without a restart: its own
//! certificate and key, the CA it trusts, and the certificate revocation
//! lists (`serve --crl`). One [`NodeTls`] handle serves the gRPC listener
//! ([`NodeTls::incoming`], a tokio-rustls acceptor that reads the current
//! rustls `ServerConfig` per connection) and the calls to departments
//! ([`NodeTls::connector`], the current `ClientConfig` per connection).
//!
//! A reload ([`NodeTls::reload`], on SIGHUP and when the files change)
//! builds a whole new pair of configurations and swaps it in only if every
//! file loads; otherwise the old one keeps serving and the failure is logged
//! and counted. Open connections are never touched: they keep their
//! session. Calls on an open connection whose peer certificate has since
//! been revoked are refused by [`NodeTls::refusal`], which the service gate
//! and the department directory ask per call.
//!
//! **An expired CRL fails closed.** Once the wall clock (the injected
//! [`crate::clock`]) passes a configured CRL's `nextUpdate`, no certificate
//! can be checked against current revocations, so every peer certificate is
//! refused — new handshakes and calls on open connections alike — until a
//! fresh CRL is loaded. It is logged (error), counted in the metrics and
//! shown as NOT_SERVING in the health service. A CRL already expired at start
//! stops the start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

use super::certs::CA_CERT;
use super::crl::{parse_crl, verify_crl};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How often the TLS files are checked for changes.
pub const TLS_POLL_EVERY: Duration = Duration::from_secs(2);
/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPT_QUEUE: usize = 128;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: this certificate revocation list is missing; a missing list is never replaced by an empty one (that would un-revoke every certificate on it): restore it, or have your CA re-sign it")]
    CrlMissing { path: PathBuf },
    #[error("{path}: {problem}")]
    CrlRefused { path: PathBuf, problem: String },
    #[error("{path}: this certificate revocation list expired at {next_update} (its nextUpdate); load a fresh one (proofgate dev-certs --renew-crl, or your CA's current list)")]
    Expired { path: PathBuf, next_update: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// Bad revocation data (missing, expired, older, foreign) rather than a
    /// configuration that cannot be used.
    pub fn is_bad_crl(&self) -> bool {
        matches!(
            self,
            TlsError::CrlMissing { .. } | TlsError::CrlRefused { .. } | TlsError::Expired { .. }
        )
    }
}

/// Where the node's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsSources {
    /// Holds `ca.pem`, `<identity>.pem` and `<identity>.key`.
    pub dir: PathBuf,
    /// The node's own identity (its certificate's name).
    pub identity: String,
    /// CRL files (PEM or DER), each authoritative for certificates of its issuer.
    pub crls: Vec<PathBuf>,
    /// Where the highest CRL number seen per list is kept, so a restart
    /// refuses an older list too (`serve` uses `DATA_DIR/crl-numbers`).
    /// None: remembered in memory only.
    pub watermarks: Option<PathBuf>,
}

impl TlsSources {
    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.identity))
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.identity))
    }

    /// Every file a reload reads: CA, certificate, key, then the CRLs.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.dir.join(CA_CERT), self.cert_path(), self.key_path()];
        files.extend(self.crls.iter().cloned());
        files
    }
}

/// One configured CRL as last loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlStatus {
    pub path: PathBuf,
    pub crl_number: u128,
    pub next_update_unix_ms: Option<i64>,
    pub revoked: usize,
    /// SHA-256 (hex) of the list's DER.
    pub sha256: String,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReload {
    /// Whether anything on disk differed from what was serving.
    pub changed: bool,
    /// SHA-256 (hex) of the node's certificate now serving.
    pub certificate_sha256: String,
    pub crls: Vec<CrlStatus>,
}

/// Why a peer certificate is refused now. Its text names no file: it may
/// be sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The revocation lists expired: no certificate can be checked.
    CrlsExpired,
    /// The verifier now loaded refuses the certificate (revoked, expired,
    /// not of a trusted CA, unparseable).
    Untrusted(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::CrlsExpired => f.write_str(
                "the revocation lists expired: no certificate can be checked until they are renewed",
            ),
            Refusal::Untrusted(why) => write!(f, "certificate not trusted now: {why}"),
        }
    }
}

/// Everything built from one read of the files.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    certificate: CertificateDer<'static>,
    crls: Vec<CrlStatus>,
    /// Certificates on the lists, for the log.
    revoked: usize,
    /// The earliest nextUpdate of the CRLs: past it, they fail closed.
    expires_unix_ms: Option<i64>,
    /// [`stamp`] of the files, to notice a change.
    stamp: Vec<u8>,
    /// The verifiers the handshakes use (without the expiry check, which
    /// [`NodeTls::crl_problem`] makes): asked again per call.
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    /// Which load this is (per call verdicts are cached per generation).
    generation: u64,
}

/// Per call verdicts: (leaf SHA-256, load generation, server name or "",
/// minute of the clock) → refusal. Cleared when it grows past this.
const VERDICTS_MAX: usize = 4096;
type VerdictKey = (Vec<u8>, u64, String, i64);

struct Shared {
    sources: TlsSources,
    clock: SharedClock,
    metrics: Metrics,
    current: RwLock<Arc<Loaded>>,
    /// Held across a reload's load and swap: reloads run one at a time.
    reloading: Mutex<()>,
    /// Stamp of files whose reload was refused: not retried until they
    /// change again (a forced reload, SIGHUP, retries).
    refused: Mutex<Option<Vec<u8>>>,
    generations: AtomicU64,
    verdicts: Mutex<HashMap<VerdictKey, Option<Refusal>>>,
    /// Whether the expiry was reported (logged once per episode).
    expired: AtomicBool,
}

/// The node's reloadable TLS; clones share it.
#[derive(Clone)]
pub struct NodeTls {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("sources", &self.shared.sources)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration for a plain HTTPS listener (the witness): the
/// certificate chain and key of two PEM files, no client certificates,
/// HTTP/1.1.
pub fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid(cert, format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting the CA certificates of one PEM file (the
/// node asking a witness over HTTPS), no client certificate, HTTP/1.1.
pub fn https_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let pem = std::fs::read(ca).map_err(|source| TlsError::Read {
        path: ca.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(ca, format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(ca, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(ca, "holds no certificate"));
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn invalid(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

fn crl_refused(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::CrlRefused {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// A Unix time in milliseconds as RFC 3339 (UTC), for messages.
pub fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970"))
}

/// The files' contents as read now (an error for one that cannot be read).
type Contents = Vec<(PathBuf, std::io::Result<Vec<u8>>)>;

fn read_files(paths: &[PathBuf]) -> Contents {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p)))
        .collect()
}

/// The one digest of a set of files that tells whether they changed: their
/// paths and contents (an unreadable file counts as its error kind).
fn stamp(contents: &Contents) -> Vec<u8> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for (path, bytes) in contents {
        digest.update(path.as_os_str().as_encoded_bytes());
        match bytes {
            Ok(bytes) => {
                digest.update(&[1]);
                digest.update(&(bytes.len() as u64).to_be_bytes());
                digest.update(bytes);
            }
            Err(e) => {
                digest.update(&[0]);
                digest.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    digest.finish().as_ref().to_vec()
}

/// How far a CRL's thisUpdate may lie ahead of the node's clock (skew).
const FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

fn load(
    sources: &TlsSources,
    clock: &SharedClock,
    contents: Contents,
    generation: u64,
) -> Result<Loaded, TlsError> {
    let stamp = stamp(&contents);
    let crl_paths: HashSet<&PathBuf> = sources.crls.iter().collect();
    let mut bytes = Vec::with_capacity(contents.len());
    for (path, read) in &contents {
        match read {
            Ok(b) => bytes.push(b.as_slice()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && crl_paths.contains(path) => {
                return Err(TlsError::CrlMissing { path: path.clone() })
            }
            Err(e) => {
                return Err(TlsError::Read {
                    path: path.clone(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                })
            }
        }
    }
    let ca_path = sources.dir.join(CA_CERT);
    let cert_path = sources.cert_path();
    let key_path = sources.key_path();
    let (ca_pem, cert_pem, key_pem) = (bytes[0], bytes[1], bytes[2]);
    let now = clock.now_unix_ms();

    let mut roots = RootCertStore::empty();
    let mut root_ders = Vec::new();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| invalid(&ca_path, format!("not PEM certificates: {e}")))?;
        root_ders.push(cert.clone());
        roots
            .add(cert)
            .map_err(|e| invalid(&ca_path, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(&ca_path, "holds no certificate"));
    }
    let roots = Arc::new(roots);

    let mut crl_ders = Vec::new();
    let mut crls = Vec::new();
    let mut revoked = 0;
    let mut expires_unix_ms: Option<i64> = None;
    for (path, bytes) in sources.crls.iter().zip(&bytes[3..]) {
        let (der, info) = parse_crl(bytes).map_err(|problem| invalid(path, problem))?;
        // Only a list signed by a CA the node trusts counts: a forged one
        // would otherwise un-revoke, or raise the rollback watermark.
        verify_crl(der.as_ref(), &root_ders).map_err(|problem| crl_refused(path, problem))?;
        if info.this_update_unix_ms > now.saturating_add(FUTURE_SKEW_MS) {
            return Err(crl_refused(
                path,
                format!(
                    "its thisUpdate {} lies in the future (the node's clock says {})",
                    rfc3339(info.this_update_unix_ms),
                    rfc3339(now)
                ),
            ));
        }
        let next_update = info
            .next_update_unix_ms
            .ok_or_else(|| invalid(path, "names no nextUpdate"))?;
        expires_unix_ms = Some(expires_unix_ms.map_or(next_update, |e| e.min(next_update)));
        revoked += info.revoked.len();
        crls.push(CrlStatus {
            path: path.clone(),
            crl_number: info.crl_number,
            next_update_unix_ms: info.next_update_unix_ms,
            revoked: info.revoked.len(),
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref())),
        });
        crl_ders.push(der);
    }

    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&cert_path, format!("not PEM certificates: {e}")))?;
    let Some(certificate) = chain.first().cloned() else {
        return Err(invalid(&cert_path, "holds no certificate"));
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(&key_path, format!("not a PEM private key: {e}")))?;

    fn fresh<V>(expires_unix_ms: Option<i64>, clock: &SharedClock, inner: V) -> Freshness<V> {
        Freshness {
            expires_unix_ms,
            clock: Arc::clone(clock),
            inner,
        }
    }
    // Client certificates are optional at the TLS layer, so a caller without
    // one gets a gRPC UNAUTHENTICATED with a reason (and health stays
    // reachable); one that is presented must verify, and not be revoked.
    let mut client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .allow_unauthenticated();
    if !crl_ders.is_empty() {
        client_verifier = client_verifier.with_crls(crl_ders.iter().cloned());
    }
    let client_verifier = client_verifier
        .build()
        .map_err(|e| invalid(&sources.dir, format!("client verifier: {e}")))?;
    let mut server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider());
    if !crl_ders.is_empty() {
        server_verifier = server_verifier.with_crls(crl_ders);
    }
    let server_verifier = server_verifier
        .build()
        .map_err(|e| invalid(&sources.dir, format!("server verifier: {e}")))?;

    // The node's own certificate must be one its peers accept: of a
    // configured CA, current on the node's clock, not revoked, naming the
    // node's identity.
    let name = ServerName::try_from(sources.identity.clone())
        .map_err(|_| invalid(&cert_path, format!("`{}` is not a name", sources.identity)))?;
    server_verifier
        .verify_server_cert(&certificate, &chain[1..], &name, &[], unix_time(now))
        .map_err(|e| {
            invalid(
                &cert_path,
                format!(
                    "the node's certificate is not usable as `{}`: {e}",
                    sources.identity
                ),
            )
        })?;

    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(fresh(
            expires_unix_ms,
            clock,
            ClientSide(Arc::clone(&client_verifier)),
        )))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&cert_path, format!("certificate and key do not fit: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(fresh(
            expires_unix_ms,
            clock,
            ServerSide(Arc::clone(&server_verifier)),
        )))
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(&cert_path, format!("certificate and key do not fit: {e}")))?;
    client.alpn_protocols = vec![b"h2".to_vec()];

    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        certificate,
        crls,
        revoked,
        expires_unix_ms,
        stamp,
        client_verifier,
        server_verifier,
        generation,
    })
}

fn unix_time(unix_ms: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0)))
}

/// The highest CRL number seen per list, and the digest of that list.
type Watermarks = std::collections::BTreeMap<PathBuf, (u128, String)>;

fn watermark_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads the watermarks file: lines of `<CRL number> <sha256 hex> <path>`.
/// Missing: none yet. Unreadable or garbled: an error (never "none").
fn read_watermarks(file: Option<&Path>) -> Result<Watermarks, TlsError> {
    let mut marks = Watermarks::new();
    let Some(file) = file else { return Ok(marks) };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(marks),
        Err(source) => {
            return Err(TlsError::Read {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut parts = line.splitn(3, ' ');
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some(number), Some(sha), Some(path)) => number
                .parse::<u128>()
                .ok()
                .map(|number| (PathBuf::from(path), (number, sha.to_owned()))),
            _ => None,
        };
        let (path, mark) = parsed.ok_or_else(|| {
            invalid(
                file,
                format!(
                    "line {} is not `<CRL number> <sha256> <path>`; fix or delete the file",
                    n + 1
                ),
            )
        })?;
        marks.insert(path, mark);
    }
    Ok(marks)
}

fn write_watermarks(file: &Path, marks: &Watermarks) -> std::io::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text: String = marks
        .iter()
        .map(|(path, (number, sha))| format!("{number} {sha} {}\n", path.display()))
        .collect();
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, file)
}

/// `marks` with the lists of `loaded` (they passed [`successor`]).
fn raised(mut marks: Watermarks, loaded: &Loaded) -> Watermarks {
    for crl in &loaded.crls {
        marks.insert(
            watermark_key(&crl.path),
            (crl.crl_number, crl.sha256.clone()),
        );
    }
    marks
}

/// Whether `new` may follow what was seen before: no CRL already expired
/// (it would fail every peer closed for nothing: the serving lists stay),
/// and no CRL older than one seen (a lower CRL number, or the same number
/// with other contents: replaying an old, validly signed list would
/// un-revoke what was revoked since).
fn successor(
    current: Option<&Loaded>,
    marks: &Watermarks,
    new: &Loaded,
    now_unix_ms: i64,
) -> Result<(), TlsError> {
    for crl in &new.crls {
        if let Some(next_update) = crl.next_update_unix_ms.filter(|n| now_unix_ms >= *n) {
            return Err(TlsError::Expired {
                path: crl.path.clone(),
                next_update: rfc3339(next_update),
            });
        }
        let serving = current
            .and_then(|c| c.crls.iter().find(|c| c.path == crl.path))
            .map(|c| (c.crl_number, c.sha256.clone()));
        let remembered = marks.get(&watermark_key(&crl.path)).cloned();
        for (number, sha) in serving.into_iter().chain(remembered) {
            if crl.crl_number < number {
                return Err(crl_refused(
                    &crl.path,
                    format!(
                        "CRL number {} is lower than {number}, seen before: an older list would un-revoke certificates revoked since",
                        crl.crl_number
                    ),
                ));
            }
            if crl.crl_number == number && crl.sha256 != sha {
                return Err(crl_refused(
                    &crl.path,
                    format!(
                        "CRL number {number} was seen before with other contents: a changed list must have a higher number"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// SHA-256 of a certificate, hex: how logs and tests name a certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()))
}

impl NodeTls {
    /// Loads the node's TLS. Any file that cannot be used — a missing CRL,
    /// one that expired already, is older than one seen before, or is not
    /// signed by a configured CA; a node certificate its peers would refuse
    /// — is an error: a node does not start on a configuration it would
    /// refuse to reload.
    pub fn load(
        sources: TlsSources,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Self, TlsError> {
        let loaded = load(&sources, &clock, read_files(&sources.files()), 0)?;
        let marks = read_watermarks(sources.watermarks.as_deref())?;
        successor(None, &marks, &loaded, clock.now_unix_ms())?;
        if let Some(file) = &sources.watermarks {
            write_watermarks(file, &raised(marks, &loaded)).map_err(|source| TlsError::Read {
                path: file.clone(),
                source,
            })?;
        }
        metrics.set_crl_state(false, loaded.expires_unix_ms);
        info!(
            certificate = %fingerprint(&loaded.certificate),
            crls = loaded.crls.len(),
            revoked = loaded.revoked,
            "TLS loaded"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                sources,
                clock,
                metrics,
                current: RwLock::new(Arc::new(loaded)),
                reloading: Mutex::new(()),
                refused: Mutex::new(None),
                generations: AtomicU64::new(0),
                verdicts: Mutex::new(HashMap::new()),
                expired: AtomicBool::new(false),
            }),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// The rustls server configuration new connections get.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The rustls client configuration new outgoing connections get.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// The node's certificate now serving.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.current().certificate.clone()
    }

    /// The configured CRLs as last loaded.
    pub fn crls(&self) -> Vec<CrlStatus> {
        self.current().crls.clone()
    }

    pub fn sources(&self) -> &TlsSources {
        &self.shared.sources
    }

    /// Reads the files again (SIGHUP: even files refused before). If they
    /// all load, new connections use them; otherwise the old configuration
    /// keeps serving, the failure is logged and counted
    /// (`proofgate_tls_reloads_total{result="failed"}`). Files identical to
    /// the serving ones change nothing.
    pub fn reload(&self) -> Result<TlsReload, TlsError> {
        self.reload_files(true)
            .unwrap_or_else(|| Ok(self.unchanged()))
    }

    /// Reloads if any file changed since the last load or the last refused
    /// reload (what the poller calls): files refused once are not retried,
    /// logged nor counted again until they change.
    pub fn reload_if_changed(&self) -> Option<Result<TlsReload, TlsError>> {
        let reloaded = self.reload_files(false);
        if reloaded.is_none() {
            self.check_expiry();
        }
        reloaded
    }

    fn unchanged(&self) -> TlsReload {
        let current = self.current();
        TlsReload {
            changed: false,
            certificate_sha256: fingerprint(&current.certificate),
            crls: current.crls.clone(),
        }
    }

    /// None: nothing to do (files as serving, or as refused and not forced).
    fn reload_files(&self, forced: bool) -> Option<Result<TlsReload, TlsError>> {
        let _one_at_a_time = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let contents = read_files(&self.shared.sources.files());
        let stamp = stamp(&contents);
        let current = self.current();
        if stamp == current.stamp {
            if forced {
                self.check_expiry();
                return Some(Ok(self.unchanged()));
            }
            return None;
        }
        {
            let refused = self
                .shared
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !forced && refused.as_deref() == Some(stamp.as_slice()) {
                return None;
            }
        }
        let generation = self.shared.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = load(
            &self.shared.sources,
            &self.shared.clock,
            contents,
            generation,
        )
        .and_then(|loaded| {
            let marks = read_watermarks(self.shared.sources.watermarks.as_deref())?;
            successor(
                Some(&current),
                &marks,
                &loaded,
                self.shared.clock.now_unix_ms(),
            )?;
            Ok((loaded, marks))
        });
        let (loaded, marks) = match outcome {
            Ok(done) => done,
            Err(e) => {
                *self
                    .shared
                    .refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(stamp);
                self.shared.metrics.tls_reload("failed");
                warn!(error = %e, "TLS reload refused; the old certificate and revocation lists keep serving (retried when the files change, or on SIGHUP)");
                return Some(Err(e));
            }
        };
        if let Some(file) = &self.shared.sources.watermarks {
            if let Err(e) = write_watermarks(file, &raised(marks, &loaded)) {
                error!(file = %file.display(), error = %e, "the CRL numbers seen could not be kept: a restart may not refuse an older list");
            }
        }
        let from = fingerprint(&current.certificate);
        let to = fingerprint(&loaded.certificate);
        let loaded = Arc::new(loaded);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::clone(&loaded);
        *self
            .shared
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.shared
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        info!(
            %from, %to,
            crls = ?loaded.crls.iter().map(|c| c.crl_number).collect::<Vec<_>>(),
            revoked = loaded.revoked,
            "TLS reloaded: new connections use it; open ones keep theirs"
        );
        self.shared.metrics.tls_reload("ok");
        self.check_expiry();
        Some(Ok(TlsReload {
            changed: true,
            certificate_sha256: to,
            crls: loaded.crls.clone(),
        }))
    }

    /// Why the CRLs cannot be relied on now (they expired), judged by the
    /// node's clock; None while they are current (or none is configured).
    /// Names the file: for the node's log and health, not for peers.
    pub fn crl_problem(&self) -> Option<String> {
        let current = self.current();
        let now = self.shared.clock.now_unix_ms();
        current
            .crls
            .iter()
            .find(|c| c.next_update_unix_ms.is_some_and(|n| now >= n))
            .map(|c| {
                format!(
                    "certificate revocation list {} expired at {}",
                    c.path.display(),
                    rfc3339(c.next_update_unix_ms.unwrap_or_default())
                )
            })
    }

    /// Updates the metrics for the CRLs' expiry and logs a change of it.
    /// Returns the problem, if any.
    pub fn check_expiry(&self) -> Option<String> {
        let problem = self.crl_problem();
        let expired = problem.is_some();
        self.shared
            .metrics
            .set_crl_state(expired, self.current().expires_unix_ms);
        let was = self.shared.expired.swap(expired, Ordering::SeqCst);
        match (&problem, was) {
            (Some(problem), false) => error!(
                %problem,
                "failing closed: every peer certificate is refused until a current revocation list is loaded"
            ),
            (None, true) => info!("revocation lists current again; certificates are accepted"),
            _ => {}
        }
        problem
    }

    /// Why a client presenting `certs` (leaf first) must be refused now:
    /// the verifier of the handshakes, as loaded now, refuses the chain
    /// (revoked, expired, of an untrusted CA, unparseable), or the CRLs
    /// expired. None: go ahead (also when no certificate is presented: the
    /// caller decides). Asked per call, so a revocation reaches connections
    /// opened before it; cached per certificate and load.
    pub fn refusal(&self, certs: &[CertificateDer<'_>]) -> Option<Refusal> {
        self.verdict(certs, None)
    }

    /// Like [`Self::refusal`], for a server (a department) that must be
    /// `server_identity`.
    pub fn server_refusal(
        &self,
        certs: &[CertificateDer<'_>],
        server_identity: &str,
    ) -> Option<Refusal> {
        self.verdict(certs, Some(server_identity))
    }

    fn verdict(&self, certs: &[CertificateDer<'_>], server: Option<&str>) -> Option<Refusal> {
        if self.crl_problem().is_some() {
            return Some(Refusal::CrlsExpired);
        }
        let (leaf, intermediates) = certs.split_first()?;
        let current = self.current();
        let now = self.shared.clock.now_unix_ms();
        let key: VerdictKey = (
            ring::digest::digest(&ring::digest::SHA256, leaf.as_ref())
                .as_ref()
                .to_vec(),
            current.generation,
            server.unwrap_or_default().to_owned(),
            now.div_euclid(60_000),
        );
        if let Some(known) = self
            .shared
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return known.clone();
        }
        let checked = match server {
            None => current
                .client_verifier
                .verify_client_cert(leaf, intermediates, unix_time(now))
                .map(|_| ()),
            Some(name) => match ServerName::try_from(name.to_owned()) {
                Ok(name) => current
                    .server_verifier
                    .verify_server_cert(leaf, intermediates, &name, &[], unix_time(now))
                    .map(|_| ()),
                Err(_) => Err(rustls::Error::General(format!("`{name}` is not a name"))),
            },
        };
        let verdict = checked.err().map(|e| {
            Refusal::Untrusted(match e {
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                    "it is revoked".to_owned()
                }
                e => e.to_string(),
            })
        });
        if let Some(refusal) = &verdict {
            // Once per certificate and load, not per call.
            warn!(certificate = %hex::encode(&key.0), %refusal, "peer certificate refused on an open connection");
        }
        let mut verdicts = self
            .shared
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= VERDICTS_MAX {
            verdicts.clear();
        }
        verdicts.insert(key, verdict.clone());
        verdict
    }

    /// Handshaken TLS connections from `listener`, for
    /// `Server::serve_with_incoming`. Each handshake runs in its own task,
    /// bounded by [`HANDSHAKE_TIMEOUT`], with the server configuration
    /// current when the connection arrived. The stream ends when its
    /// receiver is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause, not spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without nodelay, replies split over two writes wait on a delayed ACK (~40 ms).
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                let tx = tx.clone();
                let metrics = tls.shared.metrics.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake_refused();
                            debug!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            metrics.tls_handshake_refused();
                            debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// A connector for tonic's `Endpoint::connect_with_connector`: TCP to
    /// the URI's authority, then TLS with the client configuration current
    /// at that moment, expecting the server to be `server_identity`. The
    /// endpoint's URI must be `http://` (the TLS is done here, not by
    /// tonic). The peer's certificates of the latest connection are kept in
    /// `peer`, for [`Self::server_refusal`] per call.
    pub fn connector(
        &self,
        server_identity: &str,
        peer: Arc<Mutex<Option<Vec<CertificateDer<'static>>>>>,
    ) -> impl tower::Service<
        tonic::transport::Uri,
        Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = std::io::Error,
        Future = impl std::future::Future<
            Output = Result<
                hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                std::io::Error,
            >,
        > + Send,
    > + Clone
           + Send
           + 'static {
        let tls = self.clone();
        let identity = server_identity.to_owned();
        tower::service_fn(move |uri: tonic::transport::Uri| {
            let config = tls.client_config();
            let identity = identity.clone();
            let peer = Arc::clone(&peer);
            async move {
                let bad =
                    |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
                let host = uri
                    .host()
                    .ok_or_else(|| bad(format!("`{uri}` names no host")))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = uri
                    .port_u16()
                    .ok_or_else(|| bad(format!("`{uri}` names no port")))?;
                let name = ServerName::try_from(identity.clone())
                    .map_err(|_| bad(format!("`{identity}` is not a server name")))?;
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                let chain = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
                *peer.lock().unwrap_or_else(|p| p.into_inner()) = chain;
                Ok(hyper_util::rt::TokioIo::new(stream))
            }
        })
    }
}

/// A webpki verifier that, past the CRLs' earliest nextUpdate on the node's
/// clock, refuses every certificate: an expired list fails closed.
#[derive(Debug)]
struct Freshness<V> {
    expires_unix_ms: Option<i64>,
    clock: SharedClock,
    inner: V,
}

impl<V> Freshness<V> {
    fn check(&self) -> Result<(), rustls::Error> {
        match self.expires_unix_ms {
            Some(expires) if self.clock.now_unix_ms() >= expires => Err(
                rustls::Error::InvalidCertificate(CertificateError::ExpiredRevocationList),
            ),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct ClientSide(Arc<dyn ClientCertVerifier>);
#[derive(Debug)]
struct ServerSide(Arc<WebPkiServerVerifier>);

impl ClientCertVerifier for Freshness<ClientSide> {
    fn offer_client_auth(&self) -> bool {
        self.inner.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check()?;
        self.inner
            .0
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Freshness<ServerSide> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check()?;
        self.inner
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::security::certs::{ensure_dev_certs, issue, standard_identities, Validity};
    use crate::security::crl::{revoke, CA_CRL, CRL_VALIDITY};

    const HALL: &str = "hall-wucheng.hall.proofgate";

    fn cert_of(dir: &Path, identity: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(&std::fs::read(dir.join(format!("{identity}.pem"))).unwrap())
            .unwrap()
    }

    #[test]
    fn reloads_swap_in_only_what_loads_and_expiry_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let now = crate::clock::system_now_unix_ms();
        let clock = ManualClock::new(now);
        let metrics = Metrics::default();
        let tls = NodeTls::load(
            TlsSources {
                dir: dir.path().to_path_buf(),
                identity: crate::security::GATEWAY_IDENTITY.into(),
                crls: vec![dir.path().join(CA_CRL)],
                watermarks: Some(dir.path().join("crl-numbers")),
            },
            clock.clone(),
            metrics.clone(),
        )
        .unwrap();
        assert!(tls.reload_if_changed().is_none(), "nothing changed");
        let hall = cert_of(dir.path(), HALL);
        assert_eq!(tls.refusal(std::slice::from_ref(&hall)), None);

        revoke(dir.path(), HALL, now).unwrap();
        let reloaded = tls.reload_if_changed().expect("changed").unwrap();
        assert!(reloaded.changed);
        assert_eq!(reloaded.crls[0].revoked, 1);
        assert!(
            matches!(tls.refusal(std::slice::from_ref(&hall)), Some(Refusal::Untrusted(ref why)) if why.contains("revoked")),
            "{:?}",
            tls.refusal(std::slice::from_ref(&hall))
        );

        // A broken CRL keeps the old lists serving.
        let good = std::fs::read(dir.path().join(CA_CRL)).unwrap();
        std::fs::write(dir.path().join(CA_CRL), "not a crl").unwrap();
        assert!(tls.reload().is_err());
        assert!(tls.refusal(std::slice::from_ref(&hall)).is_some());
        std::fs::write(dir.path().join(CA_CRL), good).unwrap();

        // Rotation: a new certificate for the node.
        let before = fingerprint(&tls.certificate());
        issue(
            dir.path(),
            crate::security::GATEWAY_IDENTITY,
            Validity::Normal,
        )
        .unwrap();
        let rotated = tls.reload().unwrap();
        assert_ne!(rotated.certificate_sha256, before);

        // An older list (lower CRL number) is not taken back.
        let older = std::fs::read(dir.path().join(CA_CRL)).unwrap();
        revoke(dir.path(), "admin.admin.proofgate", now).unwrap();
        tls.reload().unwrap();
        std::fs::write(dir.path().join(CA_CRL), &older).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("lower"), "{err}");
        // Nor after a restart: the number seen is kept in the data folder.
        let err =
            NodeTls::load(tls.sources().clone(), clock.clone(), Metrics::default()).unwrap_err();
        assert!(err.to_string().contains("lower"), "{err}");
        assert!(err.is_bad_crl());
        let admin = cert_of(dir.path(), "admin.admin.proofgate");
        assert!(tls.refusal(std::slice::from_ref(&admin)).is_some());

        // Past nextUpdate on the node's clock: every certificate refused.
        assert_eq!(tls.check_expiry(), None);
        clock.advance(CRL_VALIDITY.as_millis() as i64 + 1);
        assert!(tls.check_expiry().unwrap().contains("expired"));
        let other = cert_of(dir.path(), "auditor.auditor.proofgate");
        assert_eq!(
            tls.refusal(std::slice::from_ref(&other)),
            Some(Refusal::CrlsExpired)
        );
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("proofgate_crl_expired 1"), "{text}");
        assert!(
            text.contains("proofgate_tls_reloads_total{result=\"failed\"} 2"),
            "{text}"
        );

        // And a node does not start on an expired list.
        let err = NodeTls::load(tls.sources().clone(), clock, Metrics::default()).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    }

    fn node(dir: &Path, clock: &SharedClock, metrics: &Metrics) -> NodeTls {
        NodeTls::load(
            TlsSources {
                dir: dir.to_path_buf(),
                identity: crate::security::GATEWAY_IDENTITY.into(),
                crls: vec![dir.join(CA_CRL)],
                watermarks: Some(dir.join("crl-numbers")),
            },
            Arc::clone(clock),
            metrics.clone(),
        )
        .unwrap()
    }

    fn failed(metrics: &Metrics) -> String {
        let mut text = String::new();
        metrics.render(&mut text);
        text.lines()
            .find(|l| l.starts_with("proofgate_tls_reloads_total{result=\"failed\"}"))
            .unwrap_or("none")
            .to_owned()
    }

    #[test]
    fn an_unparseable_or_foreign_peer_certificate_is_refused_per_call() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let foreign = tempfile::tempdir().unwrap();
        ensure_dev_certs(foreign.path(), &standard_identities([])).unwrap();
        let manual = ManualClock::new(crate::clock::system_now_unix_ms());
        let clock: SharedClock = manual.clone();
        let tls = node(dir.path(), &clock, &Metrics::default());
        let garbage = CertificateDer::from(b"not a certificate".to_vec());
        assert!(matches!(
            tls.refusal(std::slice::from_ref(&garbage)),
            Some(Refusal::Untrusted(_))
        ));
        let stranger = cert_of(foreign.path(), HALL);
        assert!(tls.refusal(std::slice::from_ref(&stranger)).is_some());
        assert_eq!(tls.refusal(&[cert_of(dir.path(), HALL)]), None);
        // A department must also be the one it claims to be.
        let department = cert_of(dir.path(), HALL);
        assert!(tls
            .server_refusal(
                std::slice::from_ref(&department),
                "other.department.proofgate"
            )
            .is_some());
        assert_eq!(
            tls.server_refusal(std::slice::from_ref(&department), HALL),
            None
        );
        // The text sent to peers names no file.
        manual.advance(CRL_VALIDITY.as_millis() as i64 + 1);
        let refusal = tls.refusal(std::slice::from_ref(&department)).unwrap();
        assert!(
            !refusal.to_string().contains(&*dir.path().to_string_lossy()),
            "{refusal}"
        );
    }

    #[test]
    fn a_refused_reload_is_not_retried_until_the_files_change_or_it_is_forced() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let clock: SharedClock = ManualClock::new(crate::clock::system_now_unix_ms());
        let metrics = Metrics::default();
        let tls = node(dir.path(), &clock, &metrics);
        let good = std::fs::read(dir.path().join(CA_CRL)).unwrap();
        std::fs::write(dir.path().join(CA_CRL), "not a crl").unwrap();
        assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
        assert!(tls.reload_if_changed().is_none(), "retried");
        assert!(tls.reload_if_changed().is_none(), "retried");
        assert!(failed(&metrics).ends_with(" 1"), "{}", failed(&metrics));
        // SIGHUP forces it.
        assert!(tls.reload().is_err());
        assert!(failed(&metrics).ends_with(" 2"), "{}", failed(&metrics));
        assert!(tls.reload_if_changed().is_none());
        // A missing list is a change, refused once too.
        std::fs::remove_file(dir.path().join(CA_CRL)).unwrap();
        assert!(matches!(
            tls.reload_if_changed(),
            Some(Err(TlsError::CrlMissing { .. }))
        ));
        assert!(tls.reload_if_changed().is_none());
        std::fs::write(dir.path().join(CA_CRL), &good).unwrap();
        assert!(
            tls.reload_if_changed().is_none(),
            "the serving list again: nothing to do"
        );
        revoke(dir.path(), HALL, clock.now_unix_ms()).unwrap();
        assert!(tls.reload_if_changed().unwrap().unwrap().changed);
    }

    #[test]
    fn a_foreign_crl_or_node_certificate_is_refused_and_the_old_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &standard_identities([])).unwrap();
        let foreign = tempfile::tempdir().unwrap();
        ensure_dev_certs(foreign.path(), &standard_identities([])).unwrap();
        let now = crate::clock::system_now_unix_ms();
        let clock: SharedClock = ManualClock::new(now);
        let metrics = Metrics::default();
        let tls = node(dir.path(), &clock, &metrics);
        revoke(dir.path(), HALL, now).unwrap();
        tls.reload().unwrap();
        let hall = cert_of(dir.path(), HALL);
        assert!(tls.refusal(std::slice::from_ref(&hall)).is_some());

        // Another CA's list (empty, same issuer name, its own key): refused.
        let ours = std::fs::read(dir.path().join(CA_CRL)).unwrap();
        for _ in 0..5 {
            revoke(foreign.path(), "admin.admin.proofgate", now).unwrap();
        }
        std::fs::copy(foreign.path().join(CA_CRL), dir.path().join(CA_CRL)).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        assert!(
            tls.refusal(std::slice::from_ref(&hall)).is_some(),
            "un-revoked"
        );
        assert!(failed(&metrics).ends_with(" 1"), "{}", failed(&metrics));
        std::fs::write(dir.path().join(CA_CRL), &ours).unwrap();

        // A node certificate of another CA: refused, the old one serves.
        let serving = fingerprint(&tls.certificate());
        for ext in ["pem", "key"] {
            let name = format!("{}.{ext}", crate::security::GATEWAY_IDENTITY);
            std::fs::copy(foreign.path().join(&name), dir.path().join(&name)).unwrap();
        }
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("not usable"), "{err}");
        assert_eq!(fingerprint(&tls.certificate()), serving);
        assert!(failed(&metrics).ends_with(" 2"), "{}", failed(&metrics));
        // Nor does a node start on it.
        assert!(NodeTls::load(tls.sources().clone(), clock, Metrics::default()).is_err());
    }
}
