//! Mock departments: real `DepartmentService` gRPC servers answering from
//! fixture files, signing every answer like a production department would.
//! Each has runtime knobs ([`MockControls`]) so tests can make it slow,
//! garbled, badly signed or impersonating, without a second implementation.

mod fixture;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

pub use fixture::{
    builtin_fixture, builtin_fixture_with_capacity, Fixture, FixtureError, VerificationFixture,
    BUILTIN_DEPARTMENTS,
};

use crate::departments::department_identity;
use crate::pb::department_registry_client::DepartmentRegistryClient;
use crate::pb::department_service_server::{DepartmentService, DepartmentServiceServer};
use crate::pb::{
    CompleteVerificationRequest, DataSource, QueryRequest, QueryResponse,
    RegisterDataSourceRequest, VerificationOutcome, VerifyRequest, VerifyResponse,
};
use crate::security::{
    connect, Guard, IdentityHeader, RateLimits, RoleMap, TlsFiles, GATEWAY_IDENTITY,
};
use crate::signing::{sign_completion, BatchSigner};

/// Faults a test can switch on while the mock runs.
#[derive(Debug, Default)]
pub struct MockControls {
    /// Added before every answer.
    pub latency_ms: AtomicU64,
    /// Answer with a nonce that does not match the request.
    pub garble: AtomicBool,
    /// Sign with a key other than the registered one.
    pub wrong_key: AtomicBool,
    /// Claim to be another department.
    pub impersonate: AtomicBool,
    /// Refuse every call with UNAVAILABLE.
    pub refuse: AtomicBool,
    /// Refuse every other call with UNAVAILABLE (a flapping department).
    pub flap: AtomicBool,
    /// Calls answered, for tests that check a department was (not) asked.
    pub calls: AtomicU64,
}

struct MockDepartment {
    fixture: Arc<Fixture>,
    key: Arc<Ed25519KeyPair>,
    signer: BatchSigner,
    impostor: BatchSigner,
    controls: Arc<MockControls>,
    gateway: Option<String>,
    tls: Option<TlsFiles>,
    tickets: AtomicU64,
}

fn new_key() -> Result<Ed25519KeyPair, MockError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| MockError::Key)?;
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| MockError::Key)
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot create a signing key")]
    Key,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register with the gateway at {gateway}: {message}")]
    Register { gateway: String, message: String },
}

impl MockDepartment {
    async fn before_answer(&self) -> Result<(), Status> {
        let call = self.controls.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.controls.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.controls.refuse.load(Ordering::Relaxed)
            || (self.controls.flap.load(Ordering::Relaxed) && call.is_multiple_of(2))
        {
            return Err(Status::unavailable("department maintenance"));
        }
        Ok(())
    }

    fn department_id(&self) -> String {
        if self.controls.impersonate.load(Ordering::Relaxed) {
            format!("{}-impostor", self.fixture.department)
        } else {
            self.fixture.department.clone()
        }
    }

    fn nonce(&self, sent: String) -> String {
        if self.controls.garble.load(Ordering::Relaxed) {
            "garbage".into()
        } else {
            sent
        }
    }

    fn signer(&self) -> &BatchSigner {
        if self.controls.wrong_key.load(Ordering::Relaxed) {
            &self.impostor
        } else {
            &self.signer
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[tonic::async_trait]
impl DepartmentService for Arc<MockDepartment> {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        self.before_answer().await?;
        let request = request.into_inner();
        let subject = request
            .subject
            .ok_or_else(|| Status::invalid_argument("subject is required"))?;
        if !self.fixture.queries.contains(&request.query) {
            return Err(Status::unimplemented(format!(
                "{} does not serve query `{}`",
                self.fixture.department, request.query
            )));
        }
        let record = self.fixture.record(&request.query, &subject.id_number);
        let mut answer = QueryResponse {
            request_nonce: self.nonce(request.request_nonce),
            department_id: self.department_id(),
            found: record.is_some(),
            // Only the requested fields leave the department.
            fields: record
                .map(|fields| {
                    fields
                        .iter()
                        .filter(|f| request.fields.contains(&f.name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        self.signer()
            .sign(&mut answer)
            .await
            .map_err(Status::internal)?;
        Ok(Response::new(answer))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        self.before_answer().await?;
        let request = request.into_inner();
        let subject = request
            .subject
            .ok_or_else(|| Status::invalid_argument("subject is required"))?;
        let fixture = self
            .fixture
            .verification(&request.proof_id, &subject.id_number);
        let mut answer = VerifyResponse {
            request_nonce: self.nonce(request.request_nonce),
            department_id: self.department_id(),
            ..Default::default()
        };
        match fixture {
            None => {
                answer.outcome = VerificationOutcome::NotVerified as i32;
                answer.reason = "no such record at the issuing department".into();
            }
            Some(VerificationFixture {
                outcome,
                reason,
                complete_after_ms,
                final_outcome,
                ..
            }) => {
                answer.outcome = *outcome as i32;
                answer.reason = reason.clone();
                if *outcome == VerificationOutcome::Pending {
                    let n = self.tickets.fetch_add(1, Ordering::Relaxed);
                    let ticket = format!("{}-{}-{n}", self.fixture.department, now_unix_ms());
                    answer.ticket = ticket.clone();
                    answer.expected_completion_unix_ms = now_unix_ms() + *complete_after_ms as i64;
                    self.complete_later(ticket, *complete_after_ms, *final_outcome, reason.clone());
                }
            }
        }
        self.signer()
            .sign(&mut answer)
            .await
            .map_err(Status::internal)?;
        Ok(Response::new(answer))
    }
}

impl MockDepartment {
    /// Calls the gateway back once the slow verification is "done".
    fn complete_later(
        &self,
        ticket: String,
        after_ms: u64,
        outcome: VerificationOutcome,
        reason: String,
    ) {
        let Some(gateway) = self.gateway.clone() else {
            warn!(%ticket, "no gateway to report the verification to");
            return;
        };
        let gateways = gateway_urls(&gateway);
        let key = Arc::clone(&self.key);
        let department_id = self.fixture.department.clone();
        let identity = department_identity(&department_id);
        let tls = self.tls.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            let mut request = CompleteVerificationRequest {
                department_id,
                ticket: ticket.clone(),
                outcome: outcome as i32,
                reason,
                signature: Vec::new(),
            };
            sign_completion(&key, &mut request);
            // A node may be down or restarting: the next one is tried (any
            // node of a cluster takes the completion), for a while.
            for attempt in 0..20u32 {
                let gateway = &gateways[attempt as usize % gateways.len()];
                match connect(gateway, tls.as_ref(), GATEWAY_IDENTITY).await {
                    Ok(channel) => match DepartmentRegistryClient::with_interceptor(
                        channel,
                        IdentityHeader::new(&identity),
                    )
                    .complete_verification(request.clone())
                    .await
                    {
                        Ok(_) => return,
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            warn!(%ticket, %gateway, %status, attempt, "gateway unavailable; trying the next")
                        }
                        Err(status) => {
                            warn!(%ticket, %status, "gateway refused the completed verification");
                            return;
                        }
                    },
                    Err(e) => {
                        warn!(%ticket, %gateway, error = %e, attempt, "gateway not reachable; trying the next")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
        });
    }
}

/// The gateway URLs of `list` (`URL[,URL…]`), never empty.
fn gateway_urls(list: &str) -> Vec<String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        vec![list.to_owned()]
    } else {
        urls
    }
}

/// The names of the built-in mock departments.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_DEPARTMENTS.iter().map(|(name, _)| *name)
}

/// The development identities for a node running the built-in mocks.
pub fn dev_identities() -> Vec<String> {
    crate::security::standard_identities(builtin_names())
}

/// The data sources the built-in mock departments would register (with no
/// endpoint or key): what `policy check` compares a policy set against when
/// no data folder is given.
pub fn builtin_sources() -> Vec<DataSource> {
    BUILTIN_DEPARTMENTS
        .iter()
        .filter_map(|(name, _)| builtin_fixture(name).ok())
        .map(|f| DataSource {
            department_id: f.department,
            queries: f.queries,
            verifications: f.verifications,
            capacity_per_second: f.capacity_per_second,
            ..Default::default()
        })
        .collect()
}

/// A mock department serving on a loopback port.
pub struct RunningMock {
    pub department_id: String,
    pub addr: SocketAddr,
    pub controls: Arc<MockControls>,
    fixture: Arc<Fixture>,
    public_key: Vec<u8>,
    tls: Option<TlsFiles>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningMock {
    /// Starts `fixture` on `listen` (port 0 for any); pending verifications are
    /// reported to the registry at `gateway`. With `tls` (the department's own
    /// certificate) it serves mutual TLS and answers only the gateway.
    pub async fn start(
        fixture: Fixture,
        listen: SocketAddr,
        gateway: Option<String>,
        tls: Option<TlsFiles>,
    ) -> Result<Self, MockError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MockError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| MockError::Bind {
            addr: listen,
            source,
        })?;
        // A department's own quota for the gateway (TLS only: in plaintext
        // no caller is known) is twice what it announces. The gateway paces
        // itself to the announced capacity with the same kind of bucket; the
        // headroom keeps latency jitter from turning calls it admitted into
        // refusals, and still stops a caller that does not pace itself (the
        // bench's relay) at twice the capacity.
        let mut limits = RateLimits::default();
        limits.per_role.insert(
            "gateway".into(),
            fixture.capacity_per_second.max(1).saturating_mul(2),
        );
        let fixture = Arc::new(fixture);
        let key = new_key()?;
        let public_key = key.public_key().as_ref().to_vec();
        let controls = Arc::new(MockControls::default());
        let key = Arc::new(key);
        let service = Arc::new(MockDepartment {
            fixture: Arc::clone(&fixture),
            signer: BatchSigner::start(Arc::clone(&key)),
            impostor: BatchSigner::start(Arc::new(new_key()?)),
            key,
            controls: Arc::clone(&controls),
            gateway,
            tls: tls.clone(),
            tickets: AtomicU64::new(1),
        });
        let (shutdown, on_shutdown) = oneshot::channel::<()>();
        let department_id = fixture.department.clone();
        let server_tls = tls.clone();
        let task = tokio::spawn(async move {
            let incoming =
                // Without nodelay, replies split over two writes wait on a delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true));
            let shutdown = async {
                let _ = on_shutdown.await;
            };
            let result = match server_tls {
                Some(files) => {
                    // Only the gateway may ask a department.
                    let gate = Guard::new(true, RoleMap::default(), limits)
                        .for_service("DepartmentService", &["gateway"]);
                    match tonic::transport::Server::builder().tls_config(files.server_config()) {
                        Ok(mut builder) => {
                            builder
                                .add_service(tonic::service::interceptor::InterceptedService::new(
                                    DepartmentServiceServer::new(service),
                                    gate,
                                ))
                                .serve_with_incoming_shutdown(incoming, shutdown)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    tonic::transport::Server::builder()
                        .add_service(DepartmentServiceServer::new(service))
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "mock department stopped with an error");
            }
        });
        info!(department = %department_id, %addr, "mock department listening");
        Ok(Self {
            department_id,
            addr,
            controls,
            fixture,
            public_key,
            tls,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// The registration this mock announces.
    pub fn data_source(&self) -> DataSource {
        DataSource {
            department_id: self.department_id.clone(),
            endpoint: format!(
                "{}://{}",
                if self.tls.is_some() { "https" } else { "http" },
                self.addr
            ),
            queries: self.fixture.queries.clone(),
            verifications: self.fixture.verifications.clone(),
            capacity_per_second: self.fixture.capacity_per_second,
            answer_public_key: self.public_key.clone(),
        }
    }

    /// Registers with the gateway's DepartmentRegistry over gRPC. `gateway`
    /// may list several nodes of a cluster (`URL,URL,…`): the first that
    /// takes the registration is enough (every node then knows it); a node
    /// unreachable or UNAVAILABLE is passed over for the next.
    pub async fn register(&self, gateway: &str) -> Result<(), MockError> {
        let mut problems = Vec::new();
        for url in gateway_urls(gateway) {
            let fail = |message: String| MockError::Register {
                gateway: url.clone(),
                message,
            };
            let channel = match connect(&url, self.tls.as_ref(), GATEWAY_IDENTITY).await {
                Ok(channel) => channel,
                Err(e) => {
                    problems.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let mut client = DepartmentRegistryClient::with_interceptor(
                channel,
                IdentityHeader::new(&department_identity(&self.department_id)),
            );
            match client
                .register_data_source(RegisterDataSourceRequest {
                    source: Some(self.data_source()),
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    problems.push(format!("{url}: {}", s.message()));
                }
                Err(s) => return Err(fail(s.message().to_owned())),
            }
        }
        Err(MockError::Register {
            gateway: gateway.to_owned(),
            message: format!("no node took the registration ({})", problems.join("; ")),
        })
    }

    /// Stops serving; the port refuses connections afterwards.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gateway_urls;

    #[test]
    fn a_gateway_list_is_split_on_commas_and_never_empty() {
        assert_eq!(
            gateway_urls("https://a:1, https://b:2,,"),
            vec!["https://a:1".to_owned(), "https://b:2".to_owned()]
        );
        assert_eq!(gateway_urls("https://a:1"), vec!["https://a:1".to_owned()]);
        assert_eq!(gateway_urls(""), vec![String::new()]);
    }

    #[tokio::test]
    async fn a_lifted_capacity_is_what_the_mock_announces() {
        let declared = super::builtin_fixture("public-security")
            .unwrap()
            .capacity_per_second;
        let unchanged = super::builtin_fixture_with_capacity("public-security", None).unwrap();
        assert_eq!(unchanged.capacity_per_second, declared);
        let lifted =
            super::builtin_fixture_with_capacity("public-security", Some(declared * 4)).unwrap();
        let mock = super::RunningMock::start(
            lifted,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(mock.data_source().capacity_per_second, declared * 4);
        mock.stop().await;
    }
}
