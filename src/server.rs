//! Assembling and running a gateway node: keys, store, audit writer, policy,
//! department directory, the gRPC services (with health and reflection), and
//! — on embedded defaults — the mock departments, which register themselves
//! over gRPC like real ones.

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

use crate::audit::{AuditApi, AuditLog, AuditStore, NoteSigner, WriterOptions};
use crate::departments::mock::{builtin_fixture, RunningMock, BUILTIN_DEPARTMENTS};
use crate::departments::{DepartmentDirectory, RegistryApi};
use crate::gateway::{ApplicationApi, Gateway};
use crate::pb;
use crate::pb::application_service_server::ApplicationServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::department_registry_server::DepartmentRegistryServer;
use crate::pb::operations_service_server::OperationsServiceServer;
use crate::policy::{load_dir, PolicyErrors, PolicySet};
use crate::security::{
    ensure_dev_certs, load_or_generate_keys, CertError, Guard, KeyError, RateLimits, RoleMap,
    TlsFiles, GATEWAY_IDENTITY,
};
use tonic::service::interceptor::InterceptedService;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "proofgate-data";
pub const DEFAULT_POLICIES: &str = "policies";
pub const DEFAULT_NODE_ID: &str = "node-1";
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
    pub policies: PathBuf,
    pub node_id: String,
    /// Start the built-in mock departments in-process on loopback ports.
    pub mock_departments: bool,
    pub writer: WriterOptions,
    /// Mutual TLS on every listener and outgoing call (certificates from
    /// DATA_DIR/certs, a dev CA made on first start). Off only on explicit
    /// request, and then only on loopback.
    pub tls: bool,
    pub roles: RoleMap,
    pub rate_limits: RateLimits,
    pub max_in_flight: usize,
    /// Prometheus metrics over HTTP (GET /metrics); None: no listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Drives rate limits and circuit breakers; tests hand in a fake one.
    pub monotonic_clock: crate::clock::Monotonic,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            policies: PathBuf::from(DEFAULT_POLICIES),
            node_id: DEFAULT_NODE_ID.into(),
            mock_departments: true,
            writer: WriterOptions::default(),
            tls: true,
            roles: RoleMap::default(),
            rate_limits: RateLimits::default(),
            max_in_flight: MAX_IN_FLIGHT,
            metrics_listen: None,
            monotonic_clock: crate::clock::Monotonic::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("node id `{0}` must be 1–32 characters of a-z, 0-9 and '-'")]
    NodeId(String),
    #[error("policy set refused:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Store(#[from] crate::audit::StoreError),
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Checkpoint(#[from] crate::audit::CheckpointError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
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
    Reflection(String),
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error("TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("--insecure-plaintext is allowed only on a loopback address, not {0}")]
    PlaintextOffLoopback(SocketAddr),
}

/// A running gateway node.
pub struct Running {
    pub addr: SocketAddr,
    /// Where GET /metrics answers, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The policy folder reloads read.
    pub policies: PathBuf,
    /// Where the node's certificates are (None in plaintext mode).
    pub certs_dir: Option<PathBuf>,
    pub gateway: Arc<Gateway>,
    pub directory: Arc<DepartmentDirectory>,
    pub mocks: Vec<RunningMock>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    policy_watcher: JoinHandle<()>,
    metrics_task: Option<JoinHandle<()>>,
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

    /// Loads the policy folder again; a valid set replaces the serving one
    /// and is recorded in the log, an invalid one is refused and the old
    /// version keeps serving. Returns the version now serving.
    pub async fn reload_policies(&self) -> Result<String, ServeError> {
        reload_policies(&self.gateway, &self.policies).await
    }

    pub fn mock(&self, department: &str) -> Option<&RunningMock> {
        self.mocks.iter().find(|m| m.department_id == department)
    }

    /// Stops accepting, lets in-flight calls finish, stops the mocks.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
        let _ = (&mut self.sweeper).await;
        self.policy_watcher.abort();
        let _ = (&mut self.policy_watcher).await;
        if let Some(mut task) = self.metrics_task.take() {
            task.abort();
            let _ = (&mut task).await;
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

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The origin line of this node's checkpoints.
pub fn log_origin(node_id: &str) -> String {
    format!("proofgate/{node_id}")
}

/// Opens (or creates) the node's log and starts its writer.
pub fn open_log(
    data_dir: &std::path::Path,
    node_id: &str,
    writer: WriterOptions,
) -> Result<(AuditLog, crate::subject::PseudonymKey), ServeError> {
    let keys = load_or_generate_keys(&data_dir.join("keys"))?;
    let store = AuditStore::open(&data_dir.join("log"))?;
    let signer = NoteSigner::new(&log_origin(node_id), keys.signing)?;
    let log = AuditLog::start(store, signer, node_id.to_owned(), writer)?;
    let vkey_path = data_dir.join("log.vkey");
    std::fs::write(&vkey_path, format!("{}\n", log.verifier_key())).map_err(|source| {
        ServeError::Write {
            path: vkey_path,
            source,
        }
    })?;
    Ok((log, keys.pseudonym))
}

/// See [`Running::reload_policies`].
pub async fn reload_policies(
    gateway: &Gateway,
    dir: &std::path::Path,
) -> Result<String, ServeError> {
    let current = gateway.policy();
    let loaded = match load_dir(dir) {
        Ok(set) => Arc::new(set),
        Err(errors) => {
            warn!(version = %current.version, "policy reload refused; the old version keeps serving:\n{errors}");
            return Err(ServeError::Policy(errors));
        }
    };
    if loaded.version == current.version {
        return Ok(current.version.clone());
    }
    record_policy(gateway.audit(), &loaded).await?;
    for problem in loaded.unserved(&gateway.departments().list()) {
        warn!(%problem, "policy names something no registered data source serves");
    }
    gateway.replace_policy(Arc::clone(&loaded));
    info!(from = %current.version, to = %loaded.version, "policy set reloaded");
    Ok(loaded.version.clone())
}

/// Logs the policy set unless it is the version logged last.
async fn record_policy(log: &AuditLog, policy: &PolicySet) -> Result<(), ServeError> {
    let store = log.store();
    if store.meta(crate::audit::POLICY_VERSION_KEY)?.as_deref() == Some(policy.version.as_bytes()) {
        return Ok(());
    }
    let event = pb::audit_entry::Event::PolicySetLoaded(pb::PolicySetLoaded {
        policy_version: policy.version.clone(),
        proof_count: policy.proofs.len() as u32,
        matter_count: policy.matters.len() as u32,
        canonical: policy.canonical.clone().into_bytes(),
    });
    let projections = crate::audit::projections_of(&event, None, &|_, _| None);
    log.append(event, projections).await?;
    info!(version = %policy.version, "policy set recorded in the log");
    Ok(())
}

/// Starts a gateway node; returns once it serves (and its mocks are registered).
pub async fn start(options: ServeOptions) -> Result<Running, ServeError> {
    if !valid_node_id(&options.node_id) {
        return Err(ServeError::NodeId(options.node_id));
    }
    let policy = Arc::new(load_dir(&options.policies)?);
    info!(version = %policy.version, proofs = policy.proofs.len(), matters = policy.matters.len(), "policy set loaded");
    std::fs::create_dir_all(&options.data_dir).map_err(|source| ServeError::Write {
        path: options.data_dir.clone(),
        source,
    })?;
    let (log, pseudonyms) = open_log(&options.data_dir, &options.node_id, options.writer)?;
    record_policy(&log, &policy).await?;

    let certs_dir = options.data_dir.join("certs");
    let tls = if options.tls {
        if ensure_dev_certs(&certs_dir)? {
            info!(dir = %certs_dir.display(), "development CA and certificates created");
        }
        Some(TlsFiles::load(&certs_dir, GATEWAY_IDENTITY)?)
    } else {
        if !options.listen.ip().is_loopback() {
            return Err(ServeError::PlaintextOffLoopback(options.listen));
        }
        warn!("PLAINTEXT: no TLS, callers name themselves in a header; for local development only");
        None
    };
    let directory = Arc::new(DepartmentDirectory::with_clock(
        tls.clone(),
        options.monotonic_clock.clone(),
    ));
    for source in log.store().data_sources()? {
        let department = source.department_id.clone();
        if let Err(e) = directory.upsert(source) {
            warn!(%department, error = %e, "stored data source skipped");
        }
    }
    let gateway = Arc::new(Gateway::new(
        options.node_id.clone(),
        Arc::clone(&policy),
        Arc::clone(&directory),
        log.clone(),
        pseudonyms.clone(),
    ));

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

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let guard = Guard::with_clock(
        tls.is_some(),
        options.roles.clone(),
        options.rate_limits.clone(),
        options.monotonic_clock.clone(),
    );
    let applications = InterceptedService::new(
        ApplicationServiceServer::new(ApplicationApi::new(Arc::clone(&gateway)))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service("proofgate.v1.ApplicationService", &["hall", "admin"]),
    );
    let registry = InterceptedService::new(
        DepartmentRegistryServer::new(RegistryApi::new(
            Arc::clone(&directory),
            log.clone(),
            Arc::clone(&gateway) as Arc<dyn crate::departments::CompletionHandler>,
        ))
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service(
            "proofgate.v1.DepartmentRegistry",
            &["department", "admin", "auditor"],
        ),
    );
    let audit = InterceptedService::new(
        AuditServiceServer::new(AuditApi::new(log.clone(), pseudonyms.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service(
            "proofgate.v1.AuditService",
            &["auditor", "admin", "citizen-portal"],
        ),
    );

    let operations = InterceptedService::new(
        OperationsServiceServer::new(crate::operations::OperationsApi::new(Arc::clone(&gateway)))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        guard.for_service("proofgate.v1.OperationsService", &["admin"]),
    );

    let (shutdown, on_shutdown) = oneshot::channel::<()>();
    // Outermost first: shed load once MAX_IN_FLIGHT calls are in progress.
    let limits = tower::ServiceBuilder::new().load_shed().layer(
        tower::limit::GlobalConcurrencyLimitLayer::new(options.max_in_flight.max(1)),
    );
    let mut builder = tonic::transport::Server::builder().timeout(REQUEST_TIMEOUT);
    if let Some(files) = &tls {
        builder = builder.tls_config(files.server_config())?;
    }
    let task = tokio::spawn(
        builder
            .layer(limits)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(applications)
            .add_service(registry)
            .add_service(audit)
            .add_service(operations)
            .serve_with_incoming_shutdown(
                // Without nodelay, replies split over two writes wait on a delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = on_shutdown.await;
                },
            ),
    );
    let endpoint = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
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
            let mock = RunningMock::start(
                builtin_fixture(name)?,
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
    health_reporter
        .set_serving::<ApplicationServiceServer<ApplicationApi>>()
        .await;
    health_reporter
        .set_serving::<DepartmentRegistryServer<RegistryApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<AuditApi>>()
        .await;
    let (metrics_addr, metrics_task) = match options.metrics_listen {
        Some(listen) => {
            let listener = crate::operations::metrics::bind(listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
            let task = tokio::spawn(crate::operations::metrics::serve_metrics(
                listener,
                Arc::clone(&gateway),
            ));
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    let watching = Arc::clone(&gateway);
    let watched = options.policies.clone();
    let policy_watcher = tokio::spawn(async move {
        let mut last = policy_stamp(&watched);
        let mut every = tokio::time::interval(POLICY_POLL_EVERY);
        loop {
            every.tick().await;
            let now = policy_stamp(&watched);
            if now != last {
                last = now;
                // A refused set is logged by reload_policies; keep watching.
                let _ = reload_policies(&watching, &watched).await;
            }
        }
    });
    let sweeping = Arc::clone(&gateway);
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(OVERDUE_SWEEP_EVERY);
        loop {
            every.tick().await;
            if let Err(e) = sweeping
                .sweep_overdue(crate::clock::system_now_unix_ms())
                .await
            {
                warn!(error = %e, "overdue sweep failed; retrying next round");
            }
        }
    });
    info!(%addr, node = %options.node_id, mocks = mocks.len(), "gateway serving");
    Ok(Running {
        metrics_addr,
        metrics_task,
        policy_watcher,
        policies: options.policies.clone(),
        certs_dir: tls.is_some().then_some(certs_dir),
        sweeper,
        addr,
        gateway,
        directory,
        mocks,
        shutdown: Some(shutdown),
        task,
    })
}

/// Rotates the node's checkpoint key, offline (no server on this data folder):
/// appends a KeyRotated entry signed by the current key — alone in its batch,
/// so the checkpoint covering it is still the old key's — then makes the new
/// key current. `log.vkeys` keeps every key, oldest first, for verifiers.
/// Returns the new verifier key.
pub async fn rotate_log_key(
    data_dir: &std::path::Path,
    node_id: &str,
) -> Result<String, ServeError> {
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    let keys_dir = data_dir.join("keys");
    let current = keys_dir.join("log-signing-key.pk8");
    if !current.exists() {
        return Err(ServeError::Keys(KeyError::Io {
            path: current,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no key to rotate"),
        }));
    }
    let (log, _) = open_log(data_dir, node_id, WriterOptions::default())?;
    let previous = log.verifier_key().to_owned();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| ServeError::Keys(KeyError::Random))?;
    let new_pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| ServeError::Keys(KeyError::Random))?;
    let new_signer = NoteSigner::new(&log_origin(node_id), new_pair)?;
    let new_vkey = new_signer.verifier_key();
    let old_pair = load_or_generate_keys(&keys_dir)?.signing;
    let old_signer = NoteSigner::new(&log_origin(node_id), old_pair)?;
    let signature = old_signer.sign(&crate::audit::rotation_message(&new_vkey));
    log.append(
        pb::audit_entry::Event::KeyRotated(pb::KeyRotated {
            previous_verifier_key: previous.clone(),
            new_verifier_key: new_vkey.clone(),
            signature,
        }),
        Vec::new(),
    )
    .await?;
    log.stop().await;
    drop(log);
    let write = |path: PathBuf, bytes: &[u8]| {
        std::fs::write(&path, bytes).map_err(|source| ServeError::Write { path, source })
    };
    let retired = keys_dir.join(format!(
        "retired-{}.pk8",
        crate::clock::system_now_unix_ms()
    ));
    std::fs::rename(&current, &retired).map_err(|source| ServeError::Write {
        path: retired.clone(),
        source,
    })?;
    write(current.clone(), pkcs8.as_ref())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o600));
    }
    let history = data_dir.join("log.vkeys");
    let mut keys = std::fs::read_to_string(&history).unwrap_or_else(|_| format!("{previous}\n"));
    keys.push_str(&new_vkey);
    keys.push('\n');
    write(history, keys.as_bytes())?;
    write(
        data_dir.join("log.vkey"),
        format!("{new_vkey}\n").as_bytes(),
    )?;
    info!(%new_vkey, "checkpoint key rotated");
    Ok(new_vkey)
}
