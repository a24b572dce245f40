//! Assembling and running a gateway node: keys, store, audit writer, policy,
//! department directory, the gRPC services (with health and reflection), the
//! metrics handle every recorder shares, and — on embedded defaults — the
//! mock departments, which register themselves over gRPC like real ones.
//!
//! The gRPC service implementations live here, one file each; they check
//! who may call what and map the lower layers' errors in [`status`], the one
//! error boundary.

mod application;
mod audit;
pub mod catalog;
mod cluster_audit;
mod cluster_hook;
mod cluster_shared;
pub mod console;
pub mod cosign;
pub mod health;
pub mod http;
pub mod mirror;
mod mirror_reads;
mod operations;
mod peers;
mod registry;
pub mod status;
pub mod witness;

pub use application::ApplicationApi;
pub use audit::{AuditApi, Logs};
pub use mirror::MirrorTarget;
pub use operations::OperationsApi;
pub use registry::RegistryApi;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::audit::{AuditLog, AuditReader, WriterOptions};
use crate::departments::mock::{builtin_fixture_with_capacity, RunningMock, BUILTIN_DEPARTMENTS};
use crate::departments::{DepartmentDirectory, Registry};
use crate::gateway::Gateway;
use crate::pb;
use crate::pb::application_service_server::ApplicationServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::department_registry_server::DepartmentRegistryServer;
use crate::pb::operations_service_server::OperationsServiceServer;
use crate::policy::{load_dir, PolicyErrors, PolicySet};
use crate::security::tls::{NodeTls, TlsError, TlsReload, TlsSources, TLS_POLL_EVERY};
use crate::security::{
    ensure_dev_certs, Approval, CertError, Guard, LogKeyError, PolicyKeyError, PolicyTrust,
    RateLimits, RoleMap, SignatureError, TlsFiles, GATEWAY_IDENTITY,
};
pub use crate::security::{log_origin, open_log, rotate_log_key};
use tonic::service::interceptor::InterceptedService;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "proofgate-data";
/// The policy folder used when none is given and it exists in the working
/// folder; otherwise the sample catalog compiled in ([`catalog`]) serves.
pub const DEFAULT_POLICIES: &str = "policies";
pub const DEFAULT_NODE_ID: &str = "node-1";
/// In a cluster, how many next nodes each node mirrors by default: with
/// `--mirror-ack 1`, one of them may be down and decisions go on.
pub const DEFAULT_MIRROR_PEERS: usize = 2;
/// Largest request a caller may send; a submission is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest a caller waits for one unary call before the server gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often pending verifications are checked against their deadlines.
pub const OVERDUE_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Calls in progress at once, over all connections; past it calls are shed
/// with RESOURCE_EXHAUSTED instead of queueing without bound.
pub const MAX_IN_FLIGHT: usize = 4096;
/// How often the policy folder is checked for changes.
pub const POLICY_POLL_EVERY: Duration = Duration::from_secs(2);
/// The health service name that is NOT_SERVING while a configured
/// certificate revocation list is expired (and the node refuses every
/// certificate); SERVING otherwise.
pub const CRL_HEALTH_SERVICE: &str = "proofgate.crl";
/// In the data folder: the highest CRL number seen per revocation list, so
/// a restart refuses an older list (one line per list).
pub const CRL_NUMBERS: &str = "crl-numbers";

/// Names, sizes and modification times of the policy files: a change to any
/// of them is a reason to reload.
fn policy_stamp(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut stamp: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((e.path(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    stamp.sort();
    stamp
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The policy folder, watched for changes. None: `./policies` if it
    /// exists, else the sample catalog compiled into the binary.
    pub policies: Option<PathBuf>,
    /// Policy-signing vkey files (`--policy-key`). Any given: every set,
    /// at start and at each reload, must be signed by one of them.
    pub policy_keys: Vec<PathBuf>,
    pub node_id: String,
    /// Start the built-in mock departments in-process on loopback ports.
    pub mock_departments: bool,
    /// The calls per second those mocks announce (their quota for the
    /// gateway is twice that); None: each fixture's.
    pub mock_capacity_per_second: Option<u32>,
    pub writer: WriterOptions,
    /// Mutual TLS on every listener and outgoing call (certificates from
    /// DATA_DIR/certs, a dev CA made on first start, unless `certs`). Off
    /// only on explicit request, and then only on loopback.
    pub tls: bool,
    /// A shared PKI folder (`--certs DIR`, e.g. made by `dev-certs`) used
    /// instead of DATA_DIR/certs; nothing is generated in it. The node
    /// presents `<node-id>.gateway.proofgate` if DIR holds that certificate,
    /// else `gateway.proofgate`, to callers and on its own outgoing calls.
    pub certs: Option<PathBuf>,
    /// The URL other nodes reach this one at, published in the node
    /// directory (`--advertise-address`); None: `https://<bound address>`.
    pub advertise_address: Option<String>,
    /// Nodes whose logs this one mirrors (`--mirror URL[=VKEY]`), into
    /// DATA_DIR/mirrors/, served by origin over AuditService.
    pub mirrors: Vec<MirrorTarget>,
    /// `--mirror off`: in a cluster, do not mirror a peer by default.
    pub mirror_off: bool,
    /// `--mirror-ack K`: answer a decision only once K mirrors hold it.
    /// None: 1 in a cluster that mirrors by default, else 0.
    pub mirror_ack: Option<usize>,
    /// `--mirror-ack-timeout-ms`: how long an answer waits for them.
    pub mirror_ack_timeout: Duration,
    /// `--mirror-peers N`: in a cluster, how many next nodes to mirror.
    pub mirror_peers: usize,
    /// Certificate revocation lists (`--crl`, PEM or DER), checked on the
    /// node's gRPC listener and on its calls to departments (not by the
    /// in-process mock departments); reloaded with the node's
    /// certificate on SIGHUP and when the files change. Needs TLS.
    pub crls: Vec<PathBuf>,
    /// How often the TLS files are checked for changes; None: never (only
    /// SIGHUP reloads them). `serve --tls-poll-seconds`, 0 for None.
    pub tls_poll: Option<Duration>,
    pub roles: RoleMap,
    pub rate_limits: RateLimits,
    pub max_in_flight: usize,
    /// The HTTP listener: Prometheus metrics (GET /metrics) and the
    /// console; None: no listener. (`proofgate serve` turns it on by
    /// default; see `config`.)
    pub metrics_listen: Option<SocketAddr>,
    /// The console at `/` on the metrics listener (read-only aggregates).
    pub console: bool,
    /// Drives rate limits and circuit breakers; tests hand in a fake one.
    pub monotonic_clock: crate::clock::Monotonic,
    /// The wall clock decisions, deadlines, completions and the overdue
    /// sweep read (tests drive a [`crate::clock::ManualClock`]).
    pub clock: crate::clock::SharedClock,
    /// Cluster mode (`--etcd`): join the node directory in etcd and decide
    /// only while the etcd session is live. None: one node, no etcd.
    pub cluster: Option<crate::cluster::ClusterOptions>,
    /// C2SP witnesses asked to cosign each new checkpoint (`--witness URL=VKEY`).
    pub witnesses: Vec<cosign::WitnessTarget>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            policies: None,
            policy_keys: Vec::new(),
            node_id: DEFAULT_NODE_ID.into(),
            mock_departments: true,
            mock_capacity_per_second: None,
            writer: WriterOptions::default(),
            tls: true,
            certs: None,
            advertise_address: None,
            mirrors: Vec::new(),
            mirror_off: false,
            mirror_ack: None,
            mirror_ack_timeout: crate::audit::DEFAULT_MIRROR_ACK_TIMEOUT,
            mirror_peers: DEFAULT_MIRROR_PEERS,
            crls: Vec::new(),
            tls_poll: Some(TLS_POLL_EVERY),
            roles: RoleMap::default(),
            rate_limits: RateLimits::default(),
            max_in_flight: MAX_IN_FLIGHT,
            metrics_listen: None,
            console: true,
            monotonic_clock: crate::clock::Monotonic::default(),
            clock: crate::clock::system(),
            cluster: None,
            witnesses: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("node id `{0}` must be 1–32 characters of a-z, 0-9 and '-'")]
    NodeId(String),
    #[error("--policies {0}: no such folder")]
    PoliciesMissing(PathBuf),
    #[error("policy set refused:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("policy set refused: {0}")]
    PolicySignature(#[from] SignatureError),
    #[error(transparent)]
    PolicyKey(#[from] PolicyKeyError),
    #[error(transparent)]
    Log(#[from] LogKeyError),
    #[error(transparent)]
    Store(#[from] crate::audit::StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr} (--metrics-listen; `off` disables them): {source}")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mock department: {0}")]
    Mock(#[from] crate::departments::mock::MockError),
    #[error("mock department fixture: {0}")]
    Fixture(#[from] crate::departments::mock::FixtureError),
    #[error("reflection service: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error("TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("--certs {}: no ca.pem there (make the folder with `proofgate dev-certs --dir {}`, or copy the shared PKI there)", .0.display(), .0.display())]
    CertsMissing(PathBuf),
    #[error("--certs needs TLS: it cannot apply with --insecure-plaintext")]
    CertsWithoutTls,
    #[error("--advertise-address `{0}`: give the URL other nodes reach this one at, e.g. https://10.0.0.5:50051")]
    AdvertiseAddress(String),
    #[error("--insecure-plaintext is allowed only on a loopback address, not {0}")]
    PlaintextOffLoopback(SocketAddr),
    #[error(
        "--crl needs TLS: certificate revocation lists cannot apply with --insecure-plaintext"
    )]
    CrlWithoutTls,
    #[error(transparent)]
    NodeTls(#[from] TlsError),
    /// Cluster mode: etcd options, etcd unreachable, or the node id taken.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A `--witness` that cannot be used.
    #[error("{0}")]
    Witness(String),
}

/// Exit codes of the `proofgate` command (sysexits.h), documented in README.
pub mod exit {
    /// Done.
    pub const SUCCESS: u8 = 0;
    /// Bad configuration or arguments.
    pub const CONFIG: u8 = 64;
    /// Bad data: a refused policy set, a log that does not verify or replay.
    pub const DATA: u8 = 65;
    /// A resource the node needs is unavailable: an address cannot be
    /// bound, the store is in use by another process, etcd does not answer,
    /// or (cluster mode) a live node already holds this node id.
    pub const UNAVAILABLE: u8 = 69;
    /// Anything else.
    pub const FAILURE: u8 = 1;

    use crate::audit::{RecordError, StoreError};
    use crate::security::LogKeyError;

    /// Cluster mode: options that cannot work are configuration; etcd
    /// unreachable, or the node id held by another live node, is a
    /// resource in use or unavailable, like a bound port or a locked store.
    pub fn of_cluster(e: &crate::cluster::ClusterError) -> u8 {
        use crate::cluster::ClusterError;
        match e {
            ClusterError::Config(_)
            | ClusterError::ReadTls { .. }
            | ClusterError::DigestKeyMismatch { .. } => CONFIG,
            ClusterError::Etcd { .. }
            | ClusterError::Timeout { .. }
            | ClusterError::NodeIdTaken { .. }
            | ClusterError::NotLive
            | ClusterError::Watch(_)
            | ClusterError::StillDeciding { .. }
            | ClusterError::Unconfirmed { .. }
            | ClusterError::TakenOver { .. }
            | ClusterError::OwnerUnreachable { .. } => UNAVAILABLE,
            ClusterError::BadRecord { .. } => DATA,
        }
    }

    /// A store that cannot be opened: in use by another process, or not.
    pub fn of_store(e: &StoreError) -> u8 {
        match e {
            StoreError::InUse(_) | StoreError::Compacting(_) => UNAVAILABLE,
            StoreError::Corrupt(_) | StoreError::HalfCompacted { .. } => DATA,
            StoreError::Sled(_)
            | StoreError::Compress(_)
            | StoreError::Io(_)
            | StoreError::WriteFailed(_) => FAILURE,
        }
    }

    /// Reading a log (a data folder or an export file) failed.
    pub fn of_records(e: &RecordError) -> u8 {
        match e {
            RecordError::Store(e) => of_store(e),
            RecordError::Corrupt { .. } => DATA,
            RecordError::Io(_) => FAILURE,
        }
    }

    /// Opening the node's log, or rotating its key, failed.
    pub fn of_log_key(e: &LogKeyError) -> u8 {
        match e {
            LogKeyError::Store(e) => of_store(e),
            LogKeyError::NoKey(_) | LogKeyError::ForeignLog { .. } => CONFIG,
            LogKeyError::Keys(_)
            | LogKeyError::Audit(_)
            | LogKeyError::Checkpoint(_)
            | LogKeyError::Write { .. } => FAILURE,
        }
    }
}

impl ServeError {
    /// What failed, as an exit code (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::NodeId(_)
            | ServeError::PoliciesMissing(_)
            | ServeError::PlaintextOffLoopback(_)
            | ServeError::CrlWithoutTls
            | ServeError::Witness(_)
            | ServeError::CertsMissing(_)
            | ServeError::CertsWithoutTls
            | ServeError::AdvertiseAddress(_)
            | ServeError::PolicyKey(_) => exit::CONFIG,
            // A revocation list past its nextUpdate is bad data, like a
            // refused policy set; files that cannot be used are configuration.
            ServeError::NodeTls(e) if e.is_bad_crl() => exit::DATA,
            ServeError::NodeTls(_) => exit::CONFIG,
            ServeError::Policy(_) | ServeError::PolicySignature(_) | ServeError::Fixture(_) => {
                exit::DATA
            }
            ServeError::Bind { .. } | ServeError::MetricsBind { .. } => exit::UNAVAILABLE,
            ServeError::Store(e) => exit::of_store(e),
            ServeError::Cluster(e) => exit::of_cluster(e),
            ServeError::Log(e) => exit::of_log_key(e),
            ServeError::Certs(_) => exit::CONFIG,
            ServeError::Audit(_)
            | ServeError::Write { .. }
            | ServeError::Mock(_)
            | ServeError::Reflection(_)
            | ServeError::Tls(_) => exit::FAILURE,
        }
    }
}

/// A running gateway node.
pub struct Running {
    pub addr: SocketAddr,
    /// Where GET /metrics (and the console, unless off) answers, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether the console answers at `/` on `metrics_addr`.
    pub console: bool,
    /// The policy folder reloads read; None: the compiled-in sample catalog.
    pub policies: Option<PathBuf>,
    /// Where the node's certificates are (None in plaintext mode).
    pub certs_dir: Option<PathBuf>,
    /// The identity the node presents (None in plaintext mode):
    /// `gateway.proofgate`, or `<node-id>.gateway.proofgate` from `--certs`.
    pub identity: Option<String>,
    pub gateway: Arc<Gateway>,
    pub directory: Arc<DepartmentDirectory>,
    pub mocks: Vec<RunningMock>,
    /// The node's metrics handle (what GET /metrics renders).
    pub metrics: crate::metrics::Metrics,
    /// The policy keys reloads check signatures against.
    policy_trust: Arc<PolicyTrust>,
    /// The node's reloadable TLS (None in plaintext mode).
    node_tls: Option<NodeTls>,
    health: health::NodeHealth,
    tls_watcher: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    policy_watcher: JoinHandle<()>,
    /// Pulls the mirrored logs (None: nothing to mirror).
    mirror_task: Option<JoinHandle<()>>,
    /// The logs AuditService serves: the node's own and its mirrors.
    pub logs: Logs,
    metrics_task: Option<JoinHandle<()>>,
    /// One task per witness asking it to cosign new checkpoints.
    cosigners: Vec<JoinHandle<()>>,
    /// Cluster mode: the etcd session (None: one node, no etcd).
    cluster: Option<cluster_hook::Joined>,
}

impl Running {
    /// `https://addr` (`http://` in plaintext mode), for clients.
    pub fn endpoint(&self) -> String {
        let scheme = if self.certs_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Loads the policy folder again; a valid set (signed by a configured
    /// policy key, if any) replaces the serving one and is recorded in the
    /// log, any other is refused, counted in the metrics, and the old
    /// version keeps serving. Returns the version now serving.
    pub async fn reload_policies(&self) -> Result<String, ServeError> {
        match &self.policies {
            Some(dir) => {
                reload_policies(&self.gateway, dir, &self.policy_trust, &self.metrics).await
            }
            None => Ok(self.gateway.policy().version.clone()),
        }
    }

    /// Reads the node's certificate, key, CA and revocation lists again
    /// (what SIGHUP and a change of the files do): new connections use
    /// them, open connections are kept. A set of files that does not load
    /// is refused, logged and counted, and the old one keeps serving. Also
    /// re-judges the lists' expiry on the node's clock and shows it in
    /// health and metrics. None in plaintext mode.
    pub async fn reload_tls(&self) -> Result<Option<TlsReload>, ServeError> {
        let Some(tls) = &self.node_tls else {
            return Ok(None);
        };
        let reloaded = tls.reload();
        let expired = tls.check_expiry().is_some();
        self.health.set(|r| r.crl_expired = expired).await;
        Ok(Some(reloaded?))
    }

    /// The node's live TLS (certificate now serving, CRL status).
    pub fn tls(&self) -> Option<&NodeTls> {
        self.node_tls.as_ref()
    }

    pub fn mock(&self, department: &str) -> Option<&RunningMock> {
        self.mocks.iter().find(|m| m.department_id == department)
    }

    /// Stops accepting, lets in-flight calls finish, stops the mocks.
    pub async fn shutdown(mut self) {
        // First leave the cluster: no decision after this, and the node's
        // record goes now instead of when its lease runs out.
        if let Some(joined) = self.cluster.take() {
            joined.leave().await;
        }
        // Mirrors' long polls end now, so they do not hold the stop up.
        self.gateway.audit().end_long_polls();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
        let _ = (&mut self.sweeper).await;
        if let Some(mut task) = self.mirror_task.take() {
            task.abort();
            let _ = (&mut task).await;
        }
        self.policy_watcher.abort();
        let _ = (&mut self.policy_watcher).await;
        self.tls_watcher.abort();
        let _ = (&mut self.tls_watcher).await;
        if let Some(mut task) = self.metrics_task.take() {
            task.abort();
            let _ = (&mut task).await;
        }
        for task in self.cosigners.drain(..) {
            task.abort();
            let _ = task.await;
        }
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "gateway server ended with an error"),
            Err(e) => warn!(error = %e, "gateway server task failed"),
        }
        for mock in self.mocks.drain(..) {
            mock.stop().await;
        }
        // In-flight applications have their replies, so their entries are
        // durable; stopping the writer releases the store for a restart.
        let log = self.gateway.audit().clone();
        log.stop().await;
        drop(self.gateway);
        drop(self.directory);
        // Connection tasks drop their service handles shortly after the server
        // future ends; the store's file lock goes with the last of them.
        for _ in 0..200 {
            if log.handles() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("gateway stopped");
    }
}

/// An advertised address: `http(s)://host:port`, nothing after it.
pub fn valid_advertise_address(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.port_u16().is_some()
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
}

/// The certificates folder and the identity the node presents: the shared
/// `--certs` folder (which must exist) with the node's own certificate if
/// it holds one, else DATA_DIR/certs (made on first start) as
/// `gateway.proofgate`.
fn node_certs(options: &ServeOptions) -> Result<(PathBuf, String, bool), ServeError> {
    match &options.certs {
        Some(dir) => {
            if !dir.join(crate::security::certs::CA_CERT).is_file() {
                return Err(ServeError::CertsMissing(dir.clone()));
            }
            let node = crate::security::node_identity(&options.node_id);
            let identity = if dir.join(format!("{node}.pem")).is_file() {
                node
            } else {
                GATEWAY_IDENTITY.to_owned()
            };
            Ok((dir.clone(), identity, false))
        }
        None => {
            let dir = options.data_dir.join("certs");
            let created = ensure_dev_certs(&dir, &crate::departments::mock::dev_identities())?;
            Ok((dir, GATEWAY_IDENTITY.to_owned(), created))
        }
    }
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// See [`Running::reload_policies`].
pub async fn reload_policies(
    gateway: &Gateway,
    dir: &std::path::Path,
    trust: &PolicyTrust,
    metrics: &crate::metrics::Metrics,
) -> Result<String, ServeError> {
    let current = gateway.policy();
    let loaded = match load_dir(dir) {
        Ok(set) => Arc::new(set),
        Err(errors) => {
            metrics.policy_reload_refused("invalid");
            warn!(version = %current.version, "policy reload refused; the old version keeps serving:\n{errors}");
            return Err(ServeError::Policy(errors));
        }
    };
    // Checked before the version comparison: a folder whose signature went
    // bad is reported even when its rules are the ones serving.
    let approval = match trust.check(Some(dir), &loaded) {
        Ok(approval) => approval,
        Err(e) => {
            metrics.policy_reload_refused(e.reason());
            warn!(version = %current.version, reason = e.reason(), "policy reload refused; the old version keeps serving: {e}");
            return Err(ServeError::PolicySignature(e));
        }
    };
    if loaded.version == current.version {
        return Ok(current.version.clone());
    }
    record_policy(gateway.audit(), &loaded, approval.as_ref()).await?;
    for problem in loaded.unserved(&gateway.departments().list()) {
        warn!(%problem, "policy names something no registered data source serves");
    }
    gateway.replace_policy(Arc::clone(&loaded));
    info!(from = %current.version, to = %loaded.version, "policy set reloaded");
    Ok(loaded.version.clone())
}

/// Logs the policy set, with who approved it, unless that version with
/// that approval is the one logged last.
async fn record_policy(
    log: &AuditLog,
    policy: &PolicySet,
    approval: Option<&Approval>,
) -> Result<(), ServeError> {
    let store = log.store();
    let signer = approval.map_or("", |a| a.signer.as_str());
    if store.meta(crate::audit::POLICY_VERSION_KEY)?.as_deref()
        == Some(crate::audit::policy_version_meta(&policy.version, signer).as_slice())
    {
        return Ok(());
    }
    let event = pb::audit_entry::Event::PolicySetLoaded(pb::PolicySetLoaded {
        policy_version: policy.version.clone(),
        proof_count: policy.proofs.len() as u32,
        matter_count: policy.matters.len() as u32,
        canonical: policy.canonical.clone().into_bytes(),
        signer: signer.to_owned(),
        signature: approval.map(|a| a.signature.clone()).unwrap_or_default(),
    });
    log.append_event(event).await?;
    info!(version = %policy.version, signer, "policy set recorded in the log");
    Ok(())
}

/// The policy set to serve and the folder it came from: `dir` if given (it
/// must exist), else `./policies` if it exists, else the compiled-in sample
/// catalog (no folder).
fn load_policies(
    dir: Option<&std::path::Path>,
) -> Result<(PolicySet, Option<PathBuf>), ServeError> {
    match dir {
        Some(dir) if !dir.is_dir() => Err(ServeError::PoliciesMissing(dir.to_path_buf())),
        Some(dir) => Ok((load_dir(dir)?, Some(dir.to_path_buf()))),
        None => {
            let default = PathBuf::from(DEFAULT_POLICIES);
            if default.is_dir() {
                Ok((load_dir(&default)?, Some(default)))
            } else {
                Ok((catalog::sample()?, None))
            }
        }
    }
}

/// Starts a gateway node; returns once it serves (and its mocks are registered).
pub async fn start(options: ServeOptions) -> Result<Running, ServeError> {
    if !valid_node_id(&options.node_id) {
        return Err(ServeError::NodeId(options.node_id));
    }
    let witness_ids = cosign::check_targets(&options.witnesses).map_err(ServeError::Witness)?;
    // Keys first: one that cannot be read stops the start (exit 64); it is
    // never taken as "no keys", which would turn the signature check off.
    let policy_trust = Arc::new(PolicyTrust::load(&options.policy_keys)?);
    let (policy, policies) = load_policies(options.policies.as_deref())?;
    let approval = policy_trust.check(policies.as_deref(), &policy)?;
    match &approval {
        Some(approval) => {
            info!(signer = %approval.signer, "policy set signature verified")
        }
        None => warn!(
            "no policy key configured (--policy-key): policy sets load unsigned, so whoever can write the policy folder can change the rules"
        ),
    }
    let policy = Arc::new(policy);
    match &policies {
        Some(dir) => {
            info!(version = %policy.version, proofs = policy.proofs.len(), matters = policy.matters.len(), dir = %dir.display(), "policy set loaded")
        }
        None => {
            info!(version = %policy.version, proofs = policy.proofs.len(), matters = policy.matters.len(), "no policy folder (no --policies, no ./policies): serving the sample catalog compiled into the binary")
        }
    }
    // One metrics handle per node, handed to everything that records.
    // TLS before the store: a certificate or CRL that cannot be used stops
    // the start before anything is opened.
    let metrics = crate::metrics::Metrics::default();
    if let Some(url) = &options.advertise_address {
        if !valid_advertise_address(url) {
            return Err(ServeError::AdvertiseAddress(url.clone()));
        }
    }
    if options.certs.is_some() && !options.tls {
        return Err(ServeError::CertsWithoutTls);
    }
    let mut certs_dir = options.data_dir.join("certs");
    let mut identity = GATEWAY_IDENTITY.to_owned();
    let tls = if options.tls {
        let (dir, presented, created) = node_certs(&options)?;
        if created {
            info!(dir = %dir.display(), "development CA and certificates created");
        }
        certs_dir = dir;
        identity = presented;
        info!(dir = %certs_dir.display(), %identity, "node certificate");
        let node_tls = NodeTls::load(
            TlsSources {
                dir: certs_dir.clone(),
                identity: identity.clone(),
                crls: options.crls.clone(),
                watermarks: Some(options.data_dir.join(CRL_NUMBERS)),
            },
            Arc::clone(&options.clock),
            metrics.clone(),
        )?;
        if options.crls.is_empty() {
            info!("no --crl: client and department certificates are not checked for revocation");
        }
        Some(node_tls)
    } else {
        if !options.crls.is_empty() {
            return Err(ServeError::CrlWithoutTls);
        }
        if !options.listen.ip().is_loopback() {
            return Err(ServeError::PlaintextOffLoopback(options.listen));
        }
        warn!("PLAINTEXT: no TLS, callers name themselves in a header; for local development only");
        None
    };
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ServeError::Write {
        path: options.data_dir.clone(),
        source,
    })?;
    let (log, pseudonyms) = open_log(&options.data_dir, &options.node_id, options.writer)?;
    // Acknowledgements wait for K mirrors: by default one in a cluster that
    // mirrors by default (each node is then mirrored by its predecessors).
    let mirror_ack = options.mirror_ack.unwrap_or(usize::from(
        default_mirror(&options, tls.is_some()) && options.mirror_peers > 0,
    ));
    log.replication()
        .configure(mirror_ack, options.mirror_ack_timeout, metrics.clone());
    if mirror_ack > 0 && tls.is_some() && identity == GATEWAY_IDENTITY {
        warn!("this node presents the shared gateway.proofgate identity: a mirror presenting it too cannot be told from this node, so its acknowledgements do not count; give each node its own certificate (dev-certs --issue <node-id>.gateway.proofgate)");
    }
    if mirror_ack > 0 {
        info!(
            mirrors = mirror_ack,
            timeout_ms = options.mirror_ack_timeout.as_millis() as u64,
            "decisions are answered once this many other nodes mirror them"
        );
    }
    record_policy(&log, &policy, approval.as_ref()).await?;

    let directory = Arc::new(
        DepartmentDirectory::with_clock(tls.clone(), options.monotonic_clock.clone())
            .with_metrics(metrics.clone()),
    );
    // In cluster mode the registry is the cluster's (etcd), loaded at join.
    for source in log
        .store()
        .data_sources()?
        .into_iter()
        .filter(|_| options.cluster.is_none())
    {
        let department = source.department_id.clone();
        if let Err(e) = directory.upsert(source) {
            warn!(%department, error = %e, "stored data source skipped");
        }
    }
    let gateway = Arc::new(
        Gateway::new(
            options.node_id.clone(),
            Arc::clone(&policy),
            Arc::clone(&directory),
            log.clone(),
            pseudonyms.clone(),
        )
        .with_clock(Arc::clone(&options.clock)),
    );

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;

    // Bound before anything is served, so a busy port fails the start cleanly.
    let (metrics_addr, metrics_listener) = match options.metrics_listen {
        Some(listen) => {
            let listener = http::bind(listen)
                .await
                .map_err(|source| ServeError::MetricsBind {
                    addr: listen,
                    source,
                })?;
            let addr = listener
                .local_addr()
                .map_err(|source| ServeError::MetricsBind {
                    addr: listen,
                    source,
                })?;
            (Some(addr), Some(listener))
        }
        None => (None, None),
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let node_health = health::NodeHealth::new(health_reporter);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let mut guard = Guard::with_clock(
        tls.is_some(),
        options.roles.clone(),
        options.rate_limits.clone(),
        options.monotonic_clock.clone(),
    )
    .with_metrics(metrics.clone());
    if let Some(node_tls) = &tls {
        guard = guard.with_revocations(node_tls.clone());
    }
    // Cluster mode: register in the node directory before serving anything,
    // so a node whose id is taken stops here (exit 69).
    let endpoint = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let advertised = options
        .advertise_address
        .clone()
        .unwrap_or_else(|| endpoint.clone());
    if let Some(cluster) = &options.cluster {
        cluster_shared::agree_on_pseudonym_key(cluster, &pseudonyms).await?;
    }
    let cluster = match &options.cluster {
        Some(cluster) => {
            let joined = cluster_hook::join(
                cluster,
                &options.node_id,
                &advertised,
                &gateway,
                &log,
                tls.clone(),
                &identity,
            )
            .await?;
            // The log stays listed for auditors after the node stops.
            crate::cluster::publish_log(
                cluster,
                &crate::cluster::KnownLog {
                    node_id: options.node_id.clone(),
                    origin: crate::security::log_origin(&options.node_id),
                    vkey: log.verifier_key().to_owned(),
                    address: advertised.clone(),
                },
            )
            .await?;
            Some(joined)
        }
        None => None,
    };
    // The logs this node serves: its own, and those it mirrors (added as
    // the mirrors open). In a cluster they also answer reads of a down
    // node's applications (`mirror_reads`).
    let logs = Logs::new(
        crate::security::log_origin(&options.node_id),
        AuditReader::new(log.clone(), pseudonyms.clone()).with_witnesses(witness_ids),
    );
    let cluster = cluster.map(|joined| joined.serve_mirrors(logs.clone()));
    let (shared_sources, cluster) = match (&options.cluster, cluster) {
        (Some(options), Some(joined)) => {
            match cluster_shared::start(options, joined.live(), &directory, &gateway).await {
                Ok(shared) => (Some(shared), Some(joined)),
                Err(e) => {
                    // Leave at once rather than when the lease runs out.
                    joined.leave().await;
                    return Err(e);
                }
            }
        }
        (_, cluster) => (None, cluster),
    };
    let applications = InterceptedService::new(
        ApplicationServiceServer::new(
            ApplicationApi::new(Arc::clone(&gateway), metrics.clone())
                .with_cluster(cluster.as_ref().map(cluster_hook::Joined::submit)),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service("proofgate.v1.ApplicationService", &["hall", "admin"]),
    );
    let registry = InterceptedService::new(
        DepartmentRegistryServer::new(
            RegistryApi::new(
                Registry::new(Arc::clone(&directory), log.clone()).with_shared(shared_sources),
                Arc::clone(&gateway),
            )
            .with_cluster(cluster.as_ref().map(cluster_hook::Joined::submit)),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service(
            "proofgate.v1.DepartmentRegistry",
            &["department", "admin", "auditor"],
        ),
    );
    let audit = InterceptedService::new(
        AuditServiceServer::new(
            AuditApi::new(logs.clone())
                .with_own_identity(&identity)
                .with_cluster(options.cluster.clone()),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service(
            "proofgate.v1.AuditService",
            // A gateway identity: a peer node mirroring this node's log.
            &["auditor", "admin", "citizen-portal", "gateway"],
        ),
    );

    let operations = InterceptedService::new(
        OperationsServiceServer::new(OperationsApi::new(crate::operations::Operations::new(
            Arc::clone(&gateway),
        )))
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service("proofgate.v1.OperationsService", &["admin"]),
    );

    let (shutdown, on_shutdown) = oneshot::channel::<()>();
    // Outermost first: shed load once MAX_IN_FLIGHT calls are in progress.
    let limits = tower::ServiceBuilder::new().load_shed().layer(
        tower::limit::GlobalConcurrencyLimitLayer::new(options.max_in_flight.max(1)),
    );
    let router = tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .layer(limits)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(applications)
        .add_service(registry)
        .add_service(audit)
        .add_service(operations);
    let stop = async {
        let _ = on_shutdown.await;
    };
    let task = match &tls {
        // TLS by our own acceptor, not tonic's: it takes the server
        // configuration current at each connection (reloaded certificate,
        // CRLs), and tonic still sees the peer's certificates.
        Some(node_tls) => {
            tokio::spawn(router.serve_with_incoming_shutdown(node_tls.incoming(listener), stop))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            // Without nodelay, replies split over two writes wait on a delayed ACK (~40 ms).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )),
    };
    if let Some(node_tls) = &tls {
        let expired = node_tls.check_expiry().is_some();
        node_health.set(|r| r.crl_expired = expired).await;
    }
    let mut mocks = Vec::new();
    if options.mock_departments {
        for (name, _) in BUILTIN_DEPARTMENTS {
            let mock_tls = match &tls {
                Some(_) => Some(TlsFiles::load(
                    &certs_dir,
                    &crate::departments::department_identity(name),
                )?),
                None => None,
            };
            let fixture = builtin_fixture_with_capacity(name, options.mock_capacity_per_second)?;
            let mock = RunningMock::start(
                fixture,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Some(endpoint.clone()),
                mock_tls,
            )
            .await?;
            mock.register(&endpoint).await?;
            mocks.push(mock);
        }
    }
    for problem in policy.unserved(&directory.list()) {
        warn!(%problem, "policy names something no registered data source serves");
    }
    // The mocks are registered: the services show what the reasons say
    // (before this, with TLS, the CRL check already showed them); a halted
    // audit writer is such a reason from then on (the task ends with it).
    node_health.set(|_| {}).await;
    node_health.follow_log(gateway.audit().halted());
    let cluster = cluster.map(|joined| joined.report_health(node_health.clone()));
    let metrics_task = metrics_listener.map(|listener| {
        let state = http::HttpState {
            metrics: metrics.clone(),
            gateway: Arc::clone(&gateway),
        };
        let console = options.console.then(|| {
            Arc::new(console::Console::new(
                crate::operations::Operations::new(Arc::clone(&gateway)),
                metrics.clone(),
            ))
        });
        tokio::spawn(http::serve(listener, http::router(state, console)))
    });
    let cosigners = cosign::start(
        &options.witnesses,
        &log,
        &metrics,
        tls.is_some().then_some(certs_dir.as_path()),
    )
    .map_err(ServeError::Witness)?;
    let watching = Arc::clone(&gateway);
    let watched = policies.clone();
    let watch_trust = Arc::clone(&policy_trust);
    let watch_metrics = metrics.clone();
    let policy_watcher = tokio::spawn(async move {
        // The compiled-in catalog never changes: nothing to watch.
        let Some(watched) = watched else { return };
        let mut last = policy_stamp(&watched);
        let mut every = tokio::time::interval(POLICY_POLL_EVERY);
        loop {
            every.tick().await;
            let now = policy_stamp(&watched);
            if now != last {
                last = now;
                // A refused set is logged by reload_policies; keep watching.
                let _ = reload_policies(&watching, &watched, &watch_trust, &watch_metrics).await;
            }
        }
    });
    let tls_watcher = {
        let node_tls = tls.clone();
        let tls_poll = options.tls_poll;
        let health = node_health.clone();
        tokio::spawn(async move {
            let Some(node_tls) = node_tls else { return };
            // Without polling, the health still follows the CRLs' expiry.
            let polling = tls_poll.is_some();
            let mut every = tokio::time::interval(tls_poll.unwrap_or(TLS_POLL_EVERY));
            let mut shown = node_tls.crl_problem().is_some();
            loop {
                every.tick().await;
                // A refused reload is logged and counted by reload itself.
                if polling {
                    let _ = node_tls.reload_if_changed();
                }
                let expired = node_tls.check_expiry();
                if expired.is_some() != shown {
                    shown = expired.is_some();
                    health.set(|r| r.crl_expired = shown).await;
                }
            }
        })
    };
    let sweeping = Arc::clone(&gateway);
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(OVERDUE_SWEEP_EVERY);
        loop {
            every.tick().await;
            if let Err(e) = sweeping.sweep_overdue(sweeping.now_unix_ms()).await {
                warn!(error = %e, "overdue sweep failed; retrying next round");
            }
        }
    });
    let default_mirror = default_mirror(&options, tls.is_some());
    if options.cluster.is_some() && !options.mirror_off && !default_mirror {
        warn!("cluster mode without --certs: this node mirrors no peer by default (its dev CA is its own; give every node the same --certs DIR)");
    }
    let mirror_task = mirror::start(
        mirror::MirrorPlan {
            targets: options.mirrors.clone(),
            peers: options.mirror_peers,
            cluster: options.cluster.clone().filter(|_| default_mirror),
            node_id: options.node_id.clone(),
            data_dir: options.data_dir.clone(),
            tls: tls.clone(),
            identity: if tls.is_some() {
                identity.clone()
            } else {
                crate::security::node_identity(&options.node_id)
            },
        },
        logs.clone(),
        metrics.clone(),
    );
    info!(%addr, metrics = ?metrics_addr, node = %options.node_id, mocks = mocks.len(), "gateway serving");
    Ok(Running {
        console: options.console && metrics_addr.is_some(),
        metrics_addr,
        metrics_task,
        cosigners,
        policy_watcher,
        policies,
        identity: tls.is_some().then_some(identity),
        certs_dir: tls.is_some().then_some(certs_dir),
        sweeper,
        mirror_task,
        logs,
        addr,
        gateway,
        directory,
        mocks,
        metrics,
        policy_trust,
        node_tls: tls,
        health: node_health,
        tls_watcher,
        shutdown: Some(shutdown),
        task,
        cluster,
    })
}

/// Runs a node until SIGINT or SIGTERM (SIGHUP reloads the policy folder
/// and the TLS files),
/// then shuts it down. Prints the bound addresses on stdout, for people and
/// for scripts that started it on port 0.
pub async fn serve_until_signal(options: ServeOptions) -> Result<(), ServeError> {
    let running = start(options).await?;
    // Before the address is printed: whoever read it may send SIGHUP at
    // once, and SIGHUP's default action would end the process.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangup = None::<()>;
    {
        // Whoever started us may stop reading after the first line: a closed
        // stdout must not stop the node, so write errors are ignored.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "proofgate serving on {} ({} mock departments); Ctrl-C to stop",
            running.endpoint(),
            running.mocks.len()
        );
        if let Some(addr) = running.metrics_addr {
            let _ = writeln!(out, "metrics on http://{addr}/metrics");
            if running.console {
                let _ = writeln!(out, "console on http://{addr}/");
            }
        }
        let _ = out.flush();
    }
    wait_reloading(&running, hangup).await;
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM; SIGHUP reloads the policy folder and the
/// TLS files meanwhile.
#[cfg(unix)]
async fn wait_reloading(running: &Running, hangup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hangup) = hangup else {
        return wait_for_signal().await;
    };
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = hangup.recv() => {
                // A refused set (or TLS file) is logged and the old one
                // keeps serving.
                let _ = running.reload_policies().await;
                let _ = running.reload_tls().await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_reloading(_running: &Running, _hangup: Option<()>) {
    wait_for_signal().await;
}

/// SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// In a cluster each node mirrors its next nodes by default, over mutual
/// TLS: that needs one PKI for all nodes (`--certs`); a node with its own
/// dev CA could not reach its peers, so it does not try.
fn default_mirror(options: &ServeOptions, tls: bool) -> bool {
    options.cluster.is_some() && !options.mirror_off && (options.certs.is_some() || !tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_address_is_a_url_with_a_port() {
        assert!(valid_advertise_address("https://10.0.0.5:50051"));
        assert!(valid_advertise_address("https://node-2.example:443/"));
        assert!(valid_advertise_address("http://127.0.0.1:50051"));
        assert!(!valid_advertise_address("10.0.0.5:50051"));
        assert!(!valid_advertise_address("https://10.0.0.5"));
        assert!(!valid_advertise_address("ftp://10.0.0.5:21"));
        assert!(!valid_advertise_address("https://10.0.0.5:1/path"));
        assert!(!valid_advertise_address(""));
    }
}
