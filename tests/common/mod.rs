//! Shared helpers of the end-to-end tests: a real gateway on an ephemeral
//! loopback port with sled in a temp dir and the mock departments in-process.

#![allow(dead_code)] // each test binary uses a different subset

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use governor::clock::FakeRelativeClock;

use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::department_registry_client::DepartmentRegistryClient;
use proofgate::pb::{
    Application, ApplicationStatus, Commitment, IdType, Officer, ProofOutcome, ProofResult,
    Subject, SubmitApplicationRequest,
};
use proofgate::server::{self, Running, ServeOptions};
use tonic::transport::Channel;

/// Passes every check of the mock departments.
/// How long a test waits for a mock department's later completion (sent
/// 1.5–2 s after the decision) before it calls it lost: a bound, not a
/// measurement, generous so that a slow machine cannot fail the test.
pub const COMPLETION_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

pub const PASSES_ALL: &str = "330702199001011237";
/// Fails every check.
pub const FAILS_ALL: &str = "330702197503120450";
/// 86 years old, passes the elderly subsidy.
pub const ELDERLY: &str = "330702194005050628";
/// Verifications come back pending and are verified later.
pub const PENDING_THEN_VERIFIED: &str = "330702198807080042";
/// Verifications come back pending and are refused later.
pub const PENDING_THEN_REFUSED: &str = "330702199512200072";
/// Valid number, unknown to every department.
pub const UNKNOWN_PERSON: &str = "330782196002140012";

pub struct TestGateway {
    pub running: Served,
    pub data_dir: tempfile::TempDir,
    /// As the test hall.
    pub channel: Channel,
    pub auditor: Channel,
    pub admin: Channel,
}

pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

pub fn options(data_dir: &Path) -> ServeOptions {
    ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        policies: Some(policies_dir()),
        node_id: "test-node".into(),
        mock_departments: true,
        ..ServeOptions::default()
    }
}

/// The hall most tests submit as.
pub const HALL: &str = "hall-wucheng.hall.proofgate";
pub const OTHER_HALL: &str = "hall-jindong.hall.proofgate";
pub const AUDITOR: &str = "auditor.auditor.proofgate";
pub const ADMIN: &str = "admin.admin.proofgate";
pub const PORTAL: &str = "portal.citizen-portal.proofgate";

/// A mutual-TLS channel to the gateway at `endpoint` as `identity`, with the
/// certificates of `certs_dir`.
pub async fn connect_with(endpoint: &str, certs_dir: &Path, identity: &str) -> Channel {
    let files =
        proofgate::security::TlsFiles::load(certs_dir, identity).expect("certificates exist");
    proofgate::security::connect(
        endpoint,
        Some(&files),
        proofgate::security::GATEWAY_IDENTITY,
    )
    .await
    .expect("gateway reachable")
}

/// A channel to a running gateway as the test hall.
pub async fn connect(running: &Running) -> Channel {
    connect_as(running, HALL).await
}

pub async fn connect_as(running: &Running, identity: &str) -> Channel {
    let certs = running.certs_dir.as_ref().expect("TLS is on");
    connect_with(&running.endpoint(), certs, identity).await
}

/// TLS that trusts the gateway but presents no client certificate (health
/// needs none; every other service refuses it).
pub async fn connect_without_certificate(running: &Running) -> Channel {
    let certs = running.certs_dir.as_ref().expect("TLS is on");
    let ca = std::fs::read(certs.join("ca.pem")).expect("the CA certificate exists");
    tonic::transport::Endpoint::from_shared(running.endpoint())
        .expect("a valid endpoint")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name(proofgate::security::GATEWAY_IDENTITY),
        )
        .expect("a valid TLS configuration")
        .connect()
        .await
        .expect("gateway reachable")
}

/// A served gateway that shuts itself down when dropped, so a test that
/// ends (or fails) without [`Served::shutdown`] leaks no server. Derefs to
/// the [`Running`] node.
pub struct Served(Option<Running>);

impl Served {
    pub fn new(running: Running) -> Self {
        Self(Some(running))
    }

    /// Stops accepting, drains, stops the mocks and the log writer, and
    /// releases the store; returns once all of that is done.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.0.take() {
            running.shutdown().await;
        }
    }
}

impl Deref for Served {
    type Target = Running;

    fn deref(&self) -> &Running {
        self.0.as_ref().expect("the node runs until shut down")
    }
}

impl DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Running {
        self.0.as_mut().expect("the node runs until shut down")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let Some(running) = self.0.take() else {
            return;
        };
        // Drop cannot wait: the same graceful shutdown runs on the test's
        // runtime; if the runtime ends first, it cancels every task of the
        // node and the store is released with them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(running.shutdown());
        }
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A gateway started with `options` adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut ServeOptions)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = options(data_dir.path());
        configure(&mut options);
        let running = Served::new(server::start(options).await.expect("gateway starts"));
        let channel = connect(&running).await;
        let auditor = connect_as(&running, AUDITOR).await;
        let admin = connect_as(&running, ADMIN).await;
        Self {
            running,
            data_dir,
            channel,
            auditor,
            admin,
        }
    }

    /// A gateway whose rate limits and circuit breakers run on the returned
    /// clock, which moves only when the test advances it.
    pub async fn start_on_fake_clock(
        configure: impl FnOnce(&mut ServeOptions),
    ) -> (Self, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let gw = Self::start_with(|options| {
            options.monotonic_clock = clock.clone().into();
            configure(options);
        })
        .await;
        (gw, clock)
    }

    pub async fn channel_as(&self, identity: &str) -> Channel {
        connect_as(&self.running, identity).await
    }

    pub fn applications(&self) -> ApplicationServiceClient<Channel> {
        ApplicationServiceClient::new(self.channel.clone())
    }

    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.auditor.clone())
    }

    pub fn registry(&self) -> DepartmentRegistryClient<Channel> {
        DepartmentRegistryClient::new(self.admin.clone())
    }

    pub fn tree_size(&self) -> u64 {
        self.running.gateway.audit().store().tree_size().unwrap()
    }

    pub async fn submit(&self, request: SubmitApplicationRequest) -> Application {
        self.applications()
            .submit_application(request)
            .await
            .expect("submission accepted")
            .into_inner()
            .application
            .expect("reply carries the application")
    }
}

static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn request(matter: &str, id_number: &str) -> SubmitApplicationRequest {
    let id_type = if id_number.starts_with('9') {
        IdType::UnifiedSocialCreditCode
    } else {
        IdType::ResidentId
    };
    SubmitApplicationRequest {
        request_id: format!(
            "req-{}",
            NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
        matter_id: matter.into(),
        officer: Some(Officer {
            officer_id: "officer-007".into(),
            hall_id: "hall-wucheng".into(),
        }),
        applicant: Some(Subject {
            id_type: id_type as i32,
            id_number: id_number.into(),
            name: "测试申请人".into(),
        }),
        commitments: Vec::new(),
        consent_to_data_queries: true,
    }
}

pub fn with_commitments(
    mut request: SubmitApplicationRequest,
    commitments: &[(&str, &str)],
) -> SubmitApplicationRequest {
    request.commitments = commitments
        .iter()
        .map(|(proof, version)| Commitment {
            proof_id: (*proof).into(),
            text_version: (*version).into(),
            accepted_at_unix_ms: proofgate::clock::system_now_unix_ms() - 1000,
        })
        .collect();
    request
}

pub fn proof<'a>(application: &'a Application, proof_id: &str) -> &'a ProofResult {
    application
        .proofs
        .iter()
        .find(|p| p.proof_id == proof_id)
        .unwrap_or_else(|| panic!("application has no proof {proof_id}: {application:#?}"))
}

pub fn outcome(application: &Application, proof_id: &str) -> ProofOutcome {
    proof(application, proof_id).outcome()
}

pub fn status(application: &Application) -> ApplicationStatus {
    application.status()
}

/// GET /metrics from a node's metrics listener: the whole HTTP response.
pub async fn scrape_metrics(addr: impl tokio::net::ToSocketAddrs) -> String {
    http_get(addr, "/metrics").await
}

/// GET `path` from a node's HTTP listener: the whole HTTP/1.1 response
/// (status line, headers, body). The request asks the server to close the
/// connection after answering, so reading to the end returns.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP listener");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: proofgate\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request written");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    response
}
