//! The directory of data sources the gateway may ask, one multiplexed gRPC
//! channel each, and the checks every answer passes before it is used:
//! deadline, nonce echo, department identity, signature, requested fields.
//! Any failure is a [`CallFailure`], which the policy turns into
//! "unavailable" — never into a positive outcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::Clock as _;
use thiserror::Error;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use ring::rand::SystemRandom;

use super::resilience::{
    acquire, backoff, rate_limiter, CircuitBreaker, CircuitState, Limiter, MAX_QUERY_ATTEMPTS,
    MAX_RATE_WAIT,
};
use super::signing::{verify_completion, AnswerVerifier, BatchSigned};
use crate::clock::Monotonic;
use crate::metrics::Metrics;
use crate::pb::department_service_client::DepartmentServiceClient;
use crate::pb::{
    CompleteVerificationRequest, DataSource, QueryRequest, QueryResponse, VerifyRequest,
    VerifyResponse,
};
use crate::security::tls::{NodeTls, Refusal};
use rustls_pki_types::CertificateDer;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_ID_LEN: usize = 64;
/// Longest piece of department-supplied text (a field name, a claimed
/// department id) quoted in a failure, which goes to the hall and the log.
pub const MAX_QUOTED_CHARS: usize = 64;

pub use crate::policy::quoted;

/// Longest reason a department may give with a verification (the same bound
/// a completion's reason has).
pub const MAX_REASON_BYTES: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("department_id must be 1–{MAX_ID_LEN} characters of a-z, 0-9, '-' or '_'")]
    BadDepartmentId,
    #[error("endpoint `{0}` is not a valid http(s) URI")]
    BadEndpoint(String),
    #[error("answer_public_key must be a 32-byte Ed25519 public key, got {0} bytes")]
    BadPublicKey(usize),
    #[error("a data source must serve at least one query or verification")]
    ServesNothing,
    #[error("endpoint `{0}` must be https:// (mutual TLS is on)")]
    PlaintextEndpoint(String),
}

/// Why a department gave no usable answer. Messages carry no personal data.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallFailure {
    #[error("no data source is registered for department `{0}`")]
    NotRegistered(String),
    #[error("department `{department}` does not serve `{what}`")]
    NotServed { department: String, what: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("department unreachable ({0})")]
    Unreachable(String),
    #[error("department refused the call: {0}")]
    Refused(String),
    #[error("malformed answer: {0}")]
    BadAnswer(String),
    #[error("answer signature does not verify against the registered key")]
    BadSignature,
    #[error("circuit open: the department failed repeatedly; not asked, probing again shortly")]
    CircuitOpen,
    #[error("department at its declared capacity; no slot within {0:?}")]
    RateLimited(Duration),
}

impl CallFailure {
    /// Failures of the department's health (they count for its circuit);
    /// a refusal or a "not served" is an answer from a working department.
    fn is_health_failure(&self) -> bool {
        matches!(
            self,
            CallFailure::Timeout(_)
                | CallFailure::Unreachable(_)
                | CallFailure::BadAnswer(_)
                | CallFailure::BadSignature
        )
    }

    /// Whether an idempotent query may be sent again.
    fn is_retryable(&self) -> bool {
        matches!(self, CallFailure::Unreachable(_))
    }
}

/// The certificates (leaf first) the department presented on its latest
/// connection.
type PeerCertificate = Arc<std::sync::Mutex<Option<Vec<CertificateDer<'static>>>>>;

struct Source {
    info: DataSource,
    client: DepartmentServiceClient<Channel>,
    /// Checked against the node's revocation lists before every call, so a
    /// revocation reaches a connection opened before it.
    peer: PeerCertificate,
    breaker: CircuitBreaker,
    limiter: Limiter<Monotonic>,
}

/// A checked answer and how long it took.
pub struct Answered<T> {
    pub answer: T,
    pub latency: Duration,
}

pub struct DepartmentDirectory {
    sources: RwLock<HashMap<String, Arc<Source>>>,
    answers: AnswerVerifier,
    rng: SystemRandom,
    /// The node's TLS (its client identity, the CA, the revocation lists)
    /// for mutual TLS to departments, reloadable; None in plaintext dev mode.
    client_tls: Option<NodeTls>,
    /// Where call results and latencies are counted (handed in by the server).
    metrics: Metrics,
    /// Drives the circuit breakers and rate limits. Deadlines and retry
    /// pauses run on tokio's timer (`tokio::time::pause` in tests).
    clock: Monotonic,
}

impl Default for DepartmentDirectory {
    fn default() -> Self {
        Self::new(None)
    }
}

/// The certificate name a department's server must present.
pub fn department_identity(department_id: &str) -> String {
    format!("{department_id}.department.proofgate")
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl DepartmentDirectory {
    pub fn new(client_tls: Option<NodeTls>) -> Self {
        Self::with_clock(client_tls, Monotonic::default())
    }

    /// A directory whose breakers and rate limits run on `clock`.
    pub fn with_clock(client_tls: Option<NodeTls>, clock: Monotonic) -> Self {
        Self {
            sources: RwLock::default(),
            answers: AnswerVerifier::default(),
            rng: SystemRandom::new(),
            client_tls,
            metrics: Metrics::default(),
            clock,
        }
    }

    /// Counts department calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Checks a registration without applying it.
    pub fn validate(info: &DataSource) -> Result<Endpoint, DirectoryError> {
        if !valid_id(&info.department_id) {
            return Err(DirectoryError::BadDepartmentId);
        }
        if info.answer_public_key.len() != 32 {
            return Err(DirectoryError::BadPublicKey(info.answer_public_key.len()));
        }
        if info.queries.is_empty() && info.verifications.is_empty() {
            return Err(DirectoryError::ServesNothing);
        }
        if !(info.endpoint.starts_with("http://") || info.endpoint.starts_with("https://")) {
            return Err(DirectoryError::BadEndpoint(info.endpoint.clone()));
        }
        Endpoint::from_shared(info.endpoint.clone())
            .map_err(|_| DirectoryError::BadEndpoint(info.endpoint.clone()))
    }

    /// Everything [`Self::upsert`] would refuse, without applying it.
    pub fn check(&self, info: &DataSource) -> Result<(), DirectoryError> {
        Self::validate(info)?;
        if self.client_tls.is_some() && !info.endpoint.starts_with("https://") {
            return Err(DirectoryError::PlaintextEndpoint(info.endpoint.clone()));
        }
        Ok(())
    }

    /// Adds or replaces a department's data source. The channel connects
    /// lazily and reconnects by itself, so a department that starts later
    /// or restarts is picked up without re-registering.
    pub fn upsert(&self, info: DataSource) -> Result<(), DirectoryError> {
        let endpoint = Self::validate(&info)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let peer = PeerCertificate::default();
        let channel = match &self.client_tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let Some(authority) = info.endpoint.strip_prefix("https://") else {
                    return Err(DirectoryError::PlaintextEndpoint(info.endpoint.clone()));
                };
                // The TLS is done by the node's connector (with the client
                // configuration current at each connection: reloaded
                // certificates and revocation lists), so tonic sees http.
                // The department must present its own certificate: an
                // answer over this channel comes from that department.
                let bad = || DirectoryError::BadEndpoint(info.endpoint.clone());
                Endpoint::from_shared(format!("http://{authority}"))
                    .map_err(|_| bad())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_with_connector_lazy(
                        tls.connector(&department_identity(&info.department_id), Arc::clone(&peer)),
                    )
            }
        };
        self.insert_with_peer(info, channel, peer);
        Ok(())
    }

    /// Puts a source on `channel` in place, with a fresh breaker and limiter.
    #[cfg(test)]
    fn insert(&self, info: DataSource, channel: Channel) {
        self.insert_with_peer(info, channel, PeerCertificate::default());
    }

    fn insert_with_peer(&self, info: DataSource, channel: Channel, peer: PeerCertificate) {
        let source = Arc::new(Source {
            peer,
            limiter: rate_limiter(info.capacity_per_second, self.clock.clone()),
            breaker: CircuitBreaker::default(),
            info,
            client: DepartmentServiceClient::new(channel),
        });
        self.write()
            .insert(source.info.department_id.clone(), source);
    }

    pub fn remove(&self, department_id: &str) -> Option<DataSource> {
        self.write().remove(department_id).map(|s| s.info.clone())
    }

    pub fn get(&self, department_id: &str) -> Option<DataSource> {
        self.read().get(department_id).map(|s| s.info.clone())
    }

    /// Every registered source, sorted by department id.
    pub fn list(&self) -> Vec<DataSource> {
        let sorted: BTreeMap<_, _> = self
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.info.clone()))
            .collect();
        sorted.into_values().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Source>>> {
        self.sources.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Source>>> {
        self.sources.write().unwrap_or_else(|p| p.into_inner())
    }

    fn source(&self, department: &str) -> Result<Arc<Source>, CallFailure> {
        let source = self
            .read()
            .get(department)
            .cloned()
            .ok_or_else(|| CallFailure::NotRegistered(department.to_owned()))?;
        // A department whose certificate was revoked (or any, once the
        // revocation lists expired) is not asked, even over a connection
        // opened before: what it says can no longer be trusted.
        if let Some(tls) = &self.client_tls {
            let peer = source
                .peer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let refusal = match peer {
                Some(chain) => tls.server_refusal(&chain, &department_identity(department)),
                None => tls.crl_problem().map(|_| Refusal::CrlsExpired),
            };
            // Logged by the TLS once per certificate and load (an expiry
            // once per episode), counted here per call; the text names no
            // file (it is kept in the audit log).
            if let Some(refusal) = refusal {
                self.metrics
                    .department_call(department, "untrusted", Duration::ZERO);
                return Err(CallFailure::Unreachable(format!(
                    "department certificate refused: {refusal}"
                )));
            }
        }
        Ok(source)
    }

    /// The circuit state of a department's source, if registered.
    pub fn circuit(&self, department_id: &str) -> Option<CircuitState> {
        self.read().get(department_id).map(|s| s.breaker.state())
    }

    /// Admits one call to `source`: circuit closed (or probing) and a
    /// rate-limit slot within the bounded wait.
    async fn admit(&self, source: &Source, remaining: Duration) -> Result<(), CallFailure> {
        if !source.breaker.admit(self.clock.now()) {
            return Err(CallFailure::CircuitOpen);
        }
        let wait = MAX_RATE_WAIT.min(remaining);
        if !acquire(&source.limiter, &self.clock, wait).await {
            // Not the department's fault: give the probe slot back unused,
            // neither a success nor a failure.
            source.breaker.release(self.clock.now());
            return Err(CallFailure::RateLimited(wait));
        }
        Ok(())
    }

    fn settle<T>(&self, source: &Source, result: &Result<T, CallFailure>, started: Instant) {
        let healthy = match result {
            Ok(_) => true,
            Err(failure) => !failure.is_health_failure(),
        };
        source.breaker.record(healthy, self.clock.now());
        let kind = match result {
            Ok(_) => "ok",
            Err(CallFailure::Timeout(_)) => "timeout",
            Err(CallFailure::Unreachable(_)) => "unreachable",
            Err(CallFailure::BadAnswer(_)) => "bad_answer",
            Err(CallFailure::BadSignature) => "bad_signature",
            Err(_) => "refused",
        };
        self.metrics
            .department_call(&source.info.department_id, kind, started.elapsed());
    }

    /// Queries a department: idempotent, so unreachable attempts are retried
    /// with jittered backoff while the deadline allows.
    pub async fn query(
        &self,
        department: &str,
        request: QueryRequest,
        deadline: Duration,
    ) -> Result<Answered<QueryResponse>, CallFailure> {
        let source = self.source(department)?;
        if !source.info.queries.contains(&request.query) {
            return Err(CallFailure::NotServed {
                department: department.to_owned(),
                what: format!("query {}", request.query),
            });
        }
        let started = Instant::now();
        let give_up = started + deadline;
        let mut attempt = 1;
        loop {
            let remaining = give_up.saturating_duration_since(Instant::now());
            let result = self.query_once(&source, request.clone(), remaining).await;
            match result {
                Err(failure) if failure.is_retryable() && attempt < MAX_QUERY_ATTEMPTS => {
                    let pause = backoff(attempt, &self.rng);
                    // Never past the deadline: a retry needs time to answer too.
                    if Instant::now() + pause * 2 >= give_up {
                        return Err(failure);
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => {
                    return other.map(|answer| Answered {
                        answer,
                        latency: started.elapsed(),
                    })
                }
            }
        }
    }

    async fn query_once(
        &self,
        source: &Source,
        request: QueryRequest,
        deadline: Duration,
    ) -> Result<QueryResponse, CallFailure> {
        self.admit(source, deadline).await?;
        let started = Instant::now();
        let result = self.query_unguarded(source, request, deadline).await;
        self.settle(source, &result, started);
        result
    }

    async fn query_unguarded(
        &self,
        source: &Source,
        request: QueryRequest,
        deadline: Duration,
    ) -> Result<QueryResponse, CallFailure> {
        let nonce = request.request_nonce.clone();
        let wanted = request.fields.clone();
        let mut client = source.client.clone();
        let mut call = tonic::Request::new(request);
        call.set_timeout(deadline);
        let answer = tokio::time::timeout(deadline, client.query(call))
            .await
            .map_err(|_| CallFailure::Timeout(deadline))?
            .map_err(|status| status_failure(status, deadline))?
            .into_inner();
        self.check_envelope(
            &source.info,
            &nonce,
            &answer.request_nonce,
            &answer.department_id,
            &answer,
        )?;
        // Only what was asked may be kept, and the log keeps the answer
        // exactly as signed: an answer with extra fields is refused whole.
        if let Some(extra) = answer.fields.iter().find(|f| !wanted.contains(&f.name)) {
            return Err(CallFailure::BadAnswer(format!(
                "answer carries field `{}`, which was not asked for",
                quoted(&extra.name, MAX_QUOTED_CHARS)
            )));
        }
        if answer.found {
            for field in &wanted {
                if !answer.fields.iter().any(|f| &f.name == field) {
                    return Err(CallFailure::BadAnswer(format!(
                        "requested field `{field}` is missing"
                    )));
                }
            }
        }
        Ok(answer)
    }

    /// Asks a department to verify. Not idempotent (it may open a ticket),
    /// so never retried.
    pub async fn verify(
        &self,
        department: &str,
        request: VerifyRequest,
        deadline: Duration,
    ) -> Result<Answered<VerifyResponse>, CallFailure> {
        let source = self.source(department)?;
        if !source.info.verifications.contains(&request.proof_id) {
            return Err(CallFailure::NotServed {
                department: department.to_owned(),
                what: format!("verification of {}", request.proof_id),
            });
        }
        let started = Instant::now();
        self.admit(&source, deadline).await?;
        let call_started = Instant::now();
        let result = self.verify_unguarded(&source, request, deadline).await;
        self.settle(&source, &result, call_started);
        result.map(|answer| Answered {
            answer,
            latency: started.elapsed(),
        })
    }

    async fn verify_unguarded(
        &self,
        source: &Source,
        request: VerifyRequest,
        deadline: Duration,
    ) -> Result<VerifyResponse, CallFailure> {
        let nonce = request.request_nonce.clone();
        let mut client = source.client.clone();
        let mut call = tonic::Request::new(request);
        call.set_timeout(deadline);
        let answer = tokio::time::timeout(deadline, client.verify(call))
            .await
            .map_err(|_| CallFailure::Timeout(deadline))?
            .map_err(|status| status_failure(status, deadline))?
            .into_inner();
        self.check_envelope(
            &source.info,
            &nonce,
            &answer.request_nonce,
            &answer.department_id,
            &answer,
        )?;
        // The reason is kept in the log as signed: an oversized one is a bad
        // answer (unavailable, never verified), as it is for completions.
        if answer.reason.len() > MAX_REASON_BYTES {
            return Err(CallFailure::BadAnswer(format!(
                "reason of {} bytes (at most {MAX_REASON_BYTES})",
                answer.reason.len()
            )));
        }
        Ok(answer)
    }

    /// Whether a completion is signed by the registered key of `department`.
    pub fn verify_completion(
        &self,
        department: &str,
        request: &CompleteVerificationRequest,
    ) -> bool {
        self.read()
            .get(department)
            .is_some_and(|s| verify_completion(&s.info.answer_public_key, request))
    }

    fn check_envelope<M: BatchSigned>(
        &self,
        source: &DataSource,
        sent_nonce: &str,
        nonce: &str,
        department: &str,
        answer: &M,
    ) -> Result<(), CallFailure> {
        if nonce != sent_nonce {
            return Err(CallFailure::BadAnswer(
                "answer does not echo the request nonce".into(),
            ));
        }
        if department != source.department_id {
            return Err(CallFailure::BadAnswer(format!(
                "answer claims to come from `{}`, not `{}`",
                quoted(department, MAX_QUOTED_CHARS),
                source.department_id
            )));
        }
        if !self.answers.verify(&source.answer_public_key, answer) {
            return Err(CallFailure::BadSignature);
        }
        Ok(())
    }
}

fn status_failure(status: tonic::Status, deadline: Duration) -> CallFailure {
    match status.code() {
        // tonic reports its own client-side timeout as CANCELLED.
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallFailure::Timeout(deadline),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
            CallFailure::Unreachable(format!("{:?}", status.code()))
        }
        // Only the code: a department's message text could carry personal
        // data, and this reason goes into the log and back to the hall.
        code => CallFailure::Refused(format!("{code:?}")),
    }
}

#[cfg(test)]
mod tests {
    //! The directory against an in-memory department (no sockets), with
    //! tokio's clock paused and the breakers and limits on a fake clock:
    //! nothing here depends on how fast the machine is.

    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use governor::clock::FakeRelativeClock;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use tonic::{Request, Response, Status};

    use crate::departments::resilience::{BREAKER_OPEN_FOR, BREAKER_THRESHOLD};
    use crate::departments::signing::BatchSigner;
    use crate::pb::department_service_server::{DepartmentService, DepartmentServiceServer};
    use crate::pb::{FieldValue, VerificationOutcome};

    const DEPARTMENT: &str = "civil-affairs";
    const DEADLINE: Duration = Duration::from_millis(1500);

    /// What the fake department does, changed by the test as it goes.
    #[derive(Default)]
    struct Script {
        /// Calls refused with UNAVAILABLE before it answers again.
        unavailable: AtomicU32,
        /// Refuses every call with UNAVAILABLE.
        down: AtomicBool,
        /// Never answers.
        silent: AtomicBool,
        /// Calls that reached it.
        calls: AtomicU32,
        /// Claims to be this department instead (impersonation).
        claims: std::sync::Mutex<Option<String>>,
        /// Reason given with a refused verification.
        reason: std::sync::Mutex<String>,
    }

    struct FakeDepartment {
        signer: BatchSigner,
        script: Arc<Script>,
    }

    impl FakeDepartment {
        async fn before_answer(&self) -> Result<String, Status> {
            self.script.calls.fetch_add(1, Ordering::SeqCst);
            if self.script.silent.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let scripted = self
                .script
                .unavailable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if scripted || self.script.down.load(Ordering::SeqCst) {
                return Err(Status::unavailable("maintenance"));
            }
            let claims = self.script.claims.lock().unwrap().clone();
            Ok(claims.unwrap_or_else(|| DEPARTMENT.to_owned()))
        }
    }

    #[tonic::async_trait]
    impl DepartmentService for FakeDepartment {
        async fn query(
            &self,
            request: Request<QueryRequest>,
        ) -> Result<Response<QueryResponse>, Status> {
            let department_id = self.before_answer().await?;
            let request = request.into_inner();
            let mut answer = QueryResponse {
                request_nonce: request.request_nonce,
                department_id,
                found: true,
                fields: request
                    .fields
                    .into_iter()
                    .map(|name| FieldValue {
                        name,
                        value: Some(crate::pb::field_value::Value::Boolean(true)),
                    })
                    .collect(),
                ..Default::default()
            };
            self.signer
                .sign(&mut answer)
                .await
                .map_err(Status::internal)?;
            Ok(Response::new(answer))
        }

        async fn verify(
            &self,
            request: Request<VerifyRequest>,
        ) -> Result<Response<VerifyResponse>, Status> {
            let department_id = self.before_answer().await?;
            let mut answer = VerifyResponse {
                request_nonce: request.into_inner().request_nonce,
                department_id,
                outcome: VerificationOutcome::NotVerified as i32,
                reason: self.script.reason.lock().unwrap().clone(),
                ..Default::default()
            };
            self.signer
                .sign(&mut answer)
                .await
                .map_err(Status::internal)?;
            Ok(Response::new(answer))
        }
    }

    struct Harness {
        directory: DepartmentDirectory,
        script: Arc<Script>,
        clock: FakeRelativeClock,
    }

    /// A directory with one department on an in-memory transport.
    fn harness(capacity_per_second: u32) -> Harness {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap());
        let script = Arc::new(Script::default());
        let department = Arc::new(FakeDepartment {
            signer: BatchSigner::start(Arc::clone(&key)),
            script: Arc::clone(&script),
        });
        let channel = Endpoint::from_static("http://department.test").connect_with_connector_lazy(
            tower::service_fn(move |_: tonic::transport::Uri| {
                let service = DepartmentServiceServer::from_arc(Arc::clone(&department));
                async move {
                    let (client, server) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(
                        tonic::transport::Server::builder()
                            .add_service(service)
                            .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(
                                server,
                            ))),
                    );
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
                }
            }),
        );
        let clock = FakeRelativeClock::default();
        let directory = DepartmentDirectory::with_clock(None, Monotonic::from(clock.clone()));
        directory.insert(
            DataSource {
                department_id: DEPARTMENT.into(),
                endpoint: "http://department.test".into(),
                queries: vec!["marriage_record".into()],
                verifications: vec!["unmarried-record".into()],
                capacity_per_second,
                answer_public_key: key.public_key().as_ref().to_vec(),
            },
            channel,
        );
        Harness {
            directory,
            script,
            clock,
        }
    }

    fn query_request() -> QueryRequest {
        QueryRequest {
            request_nonce: "n-1".into(),
            query: "marriage_record".into(),
            fields: vec!["married".into()],
            ..Default::default()
        }
    }

    fn verify_request() -> VerifyRequest {
        VerifyRequest {
            request_nonce: "n-2".into(),
            proof_id: "unmarried-record".into(),
            ..Default::default()
        }
    }

    impl Harness {
        fn calls(&self) -> u32 {
            self.script.calls.load(Ordering::SeqCst)
        }

        async fn query(&self, deadline: Duration) -> Result<Answered<QueryResponse>, CallFailure> {
            self.directory
                .query(DEPARTMENT, query_request(), deadline)
                .await
        }

        async fn verify(&self) -> Result<Answered<VerifyResponse>, CallFailure> {
            self.directory
                .verify(DEPARTMENT, verify_request(), DEADLINE)
                .await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_department_is_retried_with_backoff_until_it_answers() {
        let h = harness(5000);
        h.script.unavailable.store(2, Ordering::SeqCst);
        let started = Instant::now();
        let answered = h.query(DEADLINE).await.expect("the third attempt answers");
        assert!(answered.answer.found);
        assert_eq!(h.calls(), MAX_QUERY_ATTEMPTS);
        // Two jittered pauses of 5–10 ms and 10–20 ms, on tokio's paused
        // clock.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(15) && waited <= Duration::from_millis(40),
            "{waited:?}"
        );
        assert_eq!(h.directory.circuit(DEPARTMENT), Some(CircuitState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_last_attempt() {
        let h = harness(5000);
        h.script.down.store(true, Ordering::SeqCst);
        let failure = h.query(DEADLINE).await.err().unwrap();
        assert!(matches!(failure, CallFailure::Unreachable(_)), "{failure}");
        assert_eq!(h.calls(), MAX_QUERY_ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_started_that_could_not_finish_before_the_deadline() {
        let h = harness(5000);
        h.script.down.store(true, Ordering::SeqCst);
        // The first pause is at least 5 ms and a retry needs as long again.
        let failure = h.query(Duration::from_millis(10)).await.err().unwrap();
        assert!(matches!(failure, CallFailure::Unreachable(_)), "{failure}");
        assert_eq!(h.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_department_that_never_answers_times_out_at_the_deadline_and_is_not_retried() {
        let h = harness(5000);
        h.script.silent.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let failure = h.query(DEADLINE).await.err().unwrap();
        assert_eq!(failure, CallFailure::Timeout(DEADLINE));
        assert_eq!(started.elapsed(), DEADLINE, "on tokio's paused clock");
        assert_eq!(h.calls(), 1);
        let failure = h.verify().await.err().unwrap();
        assert_eq!(failure, CallFailure::Timeout(DEADLINE));
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_open_the_circuit_for_two_seconds_then_one_probe_closes_it() {
        let h = harness(5000);
        h.script.down.store(true, Ordering::SeqCst);
        // Verifications are never retried: one call, one failure each.
        for _ in 0..BREAKER_THRESHOLD {
            assert!(matches!(h.verify().await, Err(CallFailure::Unreachable(_))));
        }
        assert_eq!(h.directory.circuit(DEPARTMENT), Some(CircuitState::Open));
        let calls = h.calls();
        assert_eq!(h.verify().await.err(), Some(CallFailure::CircuitOpen));
        assert_eq!(
            h.query(DEADLINE).await.err(),
            Some(CallFailure::CircuitOpen)
        );
        assert_eq!(h.calls(), calls, "an open circuit asks nobody");

        h.script.down.store(false, Ordering::SeqCst);
        h.clock.advance(BREAKER_OPEN_FOR - Duration::from_millis(1));
        assert_eq!(h.verify().await.err(), Some(CallFailure::CircuitOpen));
        h.clock.advance(Duration::from_millis(1));
        assert!(h.verify().await.is_ok(), "the probe goes out and succeeds");
        assert_eq!(h.calls(), calls + 1);
        assert_eq!(h.directory.circuit(DEPARTMENT), Some(CircuitState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_department_at_its_declared_capacity_is_not_asked() {
        let h = harness(2); // burst 1, one slot per 500 ms
        assert!(h.verify().await.is_ok());
        assert_eq!(
            h.verify().await.err(),
            Some(CallFailure::RateLimited(MAX_RATE_WAIT))
        );
        assert_eq!(h.calls(), 1, "the refused call never left");
        // Refusals by the gateway itself are not the department's failures.
        assert_eq!(h.directory.circuit(DEPARTMENT), Some(CircuitState::Closed));
        h.clock.advance(Duration::from_millis(500));
        assert!(h.verify().await.is_ok());
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn department_text_quoted_in_a_failure_is_bounded_and_clean() {
        let h = harness(5000);
        let claimed = format!("evil\n\u{1b}[31m{}", "x".repeat(10_000));
        *h.script.claims.lock().unwrap() = Some(claimed);
        let failure = h.verify().await.err().unwrap().to_string();
        assert!(
            failure.contains("claims to come from `evil[31mxxx"),
            "{failure}"
        );
        assert!(!failure.chars().any(char::is_control), "{failure:?}");
        assert!(failure.chars().count() < 200, "{}", failure.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_verification_answer_is_kept_exactly_as_signed() {
        // Its reason is covered by the department's signature, which replay
        // checks again from the log: the directory must not rewrite it. The
        // reason is bounded and cleaned where it becomes a judgement.
        let h = harness(5000);
        let reason = format!("line one\nline two {}", "y".repeat(900));
        *h.script.reason.lock().unwrap() = reason.clone();
        let answered = h.verify().await.unwrap();
        assert_eq!(answered.answer.reason, reason);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_reason_makes_the_answer_unusable_never_verified() {
        let h = harness(5000);
        *h.script.reason.lock().unwrap() = "y".repeat(MAX_REASON_BYTES + 1);
        let failure = h.verify().await.err();
        assert!(
            matches!(failure, Some(CallFailure::BadAnswer(_))),
            "{failure:?}"
        );
    }
}
