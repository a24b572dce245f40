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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
use super::crl::{issuer_and_serial, parse_crl};
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
    #[error("{path}: this certificate revocation list expired at {next_update} (its nextUpdate); load a fresh one (proofgate dev-certs --renew-crl, or your CA's current list)")]
    Expired { path: PathBuf, next_update: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
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
}

impl TlsSources {
    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.identity))
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.identity))
    }

    /// Every file a reload reads.
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

/// Everything built from one read of the files.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    certificate: CertificateDer<'static>,
    crls: Vec<CrlStatus>,
    /// (issuer name DER, serial) of every revoked certificate.
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    /// The earliest nextUpdate of the CRLs: past it, they fail closed.
    expires_unix_ms: Option<i64>,
    /// Digest of the files' contents, to notice a change.
    stamp: Vec<u8>,
}

struct Shared {
    sources: TlsSources,
    clock: SharedClock,
    metrics: Metrics,
    current: RwLock<Arc<Loaded>>,
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

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
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

fn load(sources: &TlsSources, clock: &SharedClock) -> Result<Loaded, TlsError> {
    let mut stamp = ring::digest::Context::new(&ring::digest::SHA256);
    let mut read_stamped = |path: &Path| -> Result<Vec<u8>, TlsError> {
        let bytes = read(path)?;
        stamp.update(path.as_os_str().as_encoded_bytes());
        stamp.update(&(bytes.len() as u64).to_be_bytes());
        stamp.update(&bytes);
        Ok(bytes)
    };
    let ca_path = sources.dir.join(CA_CERT);
    let cert_path = sources.cert_path();
    let key_path = sources.key_path();
    let ca_pem = read_stamped(&ca_path)?;
    let cert_pem = read_stamped(&cert_path)?;
    let key_pem = read_stamped(&key_path)?;
    let mut crl_ders = Vec::new();
    let mut crls = Vec::new();
    let mut revoked = HashSet::new();
    let mut expires_unix_ms: Option<i64> = None;
    for path in &sources.crls {
        let bytes = read_stamped(path)?;
        let (der, info) = parse_crl(&bytes).map_err(|problem| invalid(path, problem))?;
        let next_update = info
            .next_update_unix_ms
            .ok_or_else(|| invalid(path, "names no nextUpdate"))?;
        expires_unix_ms = Some(expires_unix_ms.map_or(next_update, |e| e.min(next_update)));
        for (serial, _) in &info.revoked {
            revoked.insert((info.issuer.clone(), serial.clone()));
        }
        crls.push(CrlStatus {
            path: path.clone(),
            crl_number: info.crl_number,
            next_update_unix_ms: info.next_update_unix_ms,
            revoked: info.revoked.len(),
        });
        crl_ders.push(der);
    }
    let stamp = stamp.finish().as_ref().to_vec();

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| invalid(&ca_path, format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(&ca_path, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(&ca_path, "holds no certificate"));
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&cert_path, format!("not PEM certificates: {e}")))?;
    let Some(certificate) = chain.first().cloned() else {
        return Err(invalid(&cert_path, "holds no certificate"));
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
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
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(fresh(
            expires_unix_ms,
            clock,
            ClientSide(client_verifier),
        )))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&cert_path, format!("certificate and key do not fit: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider());
    if !crl_ders.is_empty() {
        server_verifier = server_verifier.with_crls(crl_ders);
    }
    let server_verifier = server_verifier
        .build()
        .map_err(|e| invalid(&sources.dir, format!("server verifier: {e}")))?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(fresh(
            expires_unix_ms,
            clock,
            ServerSide(server_verifier),
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
    })
}

/// Whether `new` may replace `current`: no CRL already expired (it would
/// fail every peer closed for nothing: the serving lists stay), and no CRL
/// older than the one it replaces (a lower CRL number: replaying an old,
/// validly signed list would un-revoke what was revoked since).
fn successor(current: &Loaded, new: &Loaded, now_unix_ms: i64) -> Result<(), TlsError> {
    for crl in &new.crls {
        if let Some(next_update) = crl.next_update_unix_ms.filter(|n| now_unix_ms >= *n) {
            return Err(TlsError::Expired {
                path: crl.path.clone(),
                next_update: rfc3339(next_update),
            });
        }
        if let Some(old) = current.crls.iter().find(|c| c.path == crl.path) {
            if crl.crl_number < old.crl_number {
                return Err(invalid(
                    &crl.path,
                    format!(
                        "CRL number {} is lower than the loaded list's {}: an older list would un-revoke certificates revoked since",
                        crl.crl_number, old.crl_number
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
    /// Loads the node's TLS. Any file that cannot be used — or a CRL that
    /// expired already — is an error: a node does not start on a
    /// configuration it would refuse to reload.
    pub fn load(
        sources: TlsSources,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Self, TlsError> {
        let loaded = load(&sources, &clock)?;
        let now = clock.now_unix_ms();
        if let Some(expired) = loaded
            .crls
            .iter()
            .find(|c| c.next_update_unix_ms.is_some_and(|n| now >= n))
        {
            return Err(TlsError::Expired {
                path: expired.path.clone(),
                next_update: rfc3339(expired.next_update_unix_ms.unwrap_or_default()),
            });
        }
        metrics.set_crl_state(false, loaded.expires_unix_ms);
        info!(
            certificate = %fingerprint(&loaded.certificate),
            crls = loaded.crls.len(),
            revoked = loaded.revoked.len(),
            "TLS loaded"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                sources,
                clock,
                metrics,
                current: RwLock::new(Arc::new(loaded)),
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

    /// Reads the files again. If they all load, new connections use them;
    /// otherwise the old configuration keeps serving, the failure is logged
    /// and counted (`proofgate_tls_reloads_total{result="failed"}`).
    /// Files identical to the serving ones change nothing.
    pub fn reload(&self) -> Result<TlsReload, TlsError> {
        let loaded = match load(&self.shared.sources, &self.shared.clock) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.shared.metrics.tls_reload("failed");
                warn!(error = %e, "TLS reload refused; the old certificate and revocation lists keep serving");
                return Err(e);
            }
        };
        let changed = {
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let changed = current.stamp != loaded.stamp;
            if changed {
                if let Err(e) = successor(&current, &loaded, self.shared.clock.now_unix_ms()) {
                    drop(current);
                    self.shared.metrics.tls_reload("failed");
                    warn!(error = %e, "TLS reload refused; the old certificate and revocation lists keep serving");
                    return Err(e);
                }
                let from = fingerprint(&current.certificate);
                let to = fingerprint(&loaded.certificate);
                *current = Arc::new(loaded);
                info!(
                    %from, %to,
                    crls = ?current.crls.iter().map(|c| c.crl_number).collect::<Vec<_>>(),
                    revoked = current.revoked.len(),
                    "TLS reloaded: new connections use it; open ones keep theirs"
                );
            }
            changed
        };
        if changed {
            self.shared.metrics.tls_reload("ok");
        }
        self.check_expiry();
        let current = self.current();
        Ok(TlsReload {
            changed,
            certificate_sha256: fingerprint(&current.certificate),
            crls: current.crls.clone(),
        })
    }

    /// Reloads if any file changed since the last load (what the poller calls).
    pub fn reload_if_changed(&self) -> Option<Result<TlsReload, TlsError>> {
        let mut stamp = ring::digest::Context::new(&ring::digest::SHA256);
        for path in self.shared.sources.files() {
            // A file that cannot be read is a change: the reload reports it.
            let Ok(bytes) = std::fs::read(&path) else {
                return Some(self.reload());
            };
            stamp.update(path.as_os_str().as_encoded_bytes());
            stamp.update(&(bytes.len() as u64).to_be_bytes());
            stamp.update(&bytes);
        }
        if stamp.finish().as_ref() == self.current().stamp.as_slice() {
            self.check_expiry();
            return None;
        }
        Some(self.reload())
    }

    /// Why the CRLs cannot be relied on now (they expired), judged by the
    /// node's clock; None while they are current (or none is configured).
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

    /// Why a peer presenting `certs` must be refused now: its certificate
    /// is on a loaded CRL, or the CRLs expired. None: go ahead. Asked per
    /// call, so a revocation reaches connections opened before it.
    pub fn refusal(&self, certs: &[CertificateDer<'_>]) -> Option<String> {
        if let Some(problem) = self.crl_problem() {
            return Some(problem);
        }
        let leaf = certs.first()?;
        let current = self.current();
        if current.revoked.is_empty() {
            return None;
        }
        let key = issuer_and_serial(leaf)?;
        current
            .revoked
            .contains(&key)
            .then(|| format!("certificate {} is revoked", hex::encode(&key.1)))
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
    /// tonic). The peer's certificate of the latest connection is kept in
    /// `peer`, for [`Self::refusal`] per call.
    pub fn connector(
        &self,
        server_identity: &str,
        peer: Arc<Mutex<Option<CertificateDer<'static>>>>,
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
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned());
                *peer.lock().unwrap_or_else(|p| p.into_inner()) = leaf;
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
        assert!(tls
            .refusal(std::slice::from_ref(&hall))
            .unwrap()
            .contains("revoked"));

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
        let admin = cert_of(dir.path(), "admin.admin.proofgate");
        assert!(tls.refusal(std::slice::from_ref(&admin)).is_some());

        // Past nextUpdate on the node's clock: every certificate refused.
        assert_eq!(tls.check_expiry(), None);
        clock.advance(CRL_VALIDITY.as_millis() as i64 + 1);
        assert!(tls.check_expiry().unwrap().contains("expired"));
        let other = cert_of(dir.path(), "auditor.auditor.proofgate");
        assert!(tls
            .refusal(std::slice::from_ref(&other))
            .unwrap()
            .contains("expired"));
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
}
