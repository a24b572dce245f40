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
use crate::pb::department_service_client::DepartmentServiceClient;
use crate::pb::{
    CompleteVerificationRequest, DataSource, QueryRequest, QueryResponse, VerifyRequest,
    VerifyResponse,
};
use crate::security::TlsFiles;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_ID_LEN: usize = 64;
/// Longest piece of department-supplied text (a field name, a claimed
/// department id) quoted in a failure, which goes to the hall and the log.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Department-supplied text made fit to quote: control characters dropped,
/// at most `max_chars` characters (cut on a character boundary, marked with
/// an ellipsis).
pub fn quoted(text: &str, max_chars: usize) -> String {
    let mut clean = text.chars().filter(|c| !c.is_control());
    let mut out: String = clean.by_ref().take(max_chars).collect();
    if clean.next().is_some() {
        out.push('…');
    }
    out
}

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

struct Source {
    info: DataSource,
    client: DepartmentServiceClient<Channel>,
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
    /// The gateway's client identity for mutual TLS to departments; None in
    /// plaintext dev mode.
    client_tls: Option<TlsFiles>,
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
    pub fn new(client_tls: Option<TlsFiles>) -> Self {
        Self::with_clock(client_tls, Monotonic::default())
    }

    /// A directory whose breakers and rate limits run on `clock`.
    pub fn with_clock(client_tls: Option<TlsFiles>, clock: Monotonic) -> Self {
        Self {
            sources: RwLock::default(),
            answers: AnswerVerifier::default(),
            rng: SystemRandom::new(),
            client_tls,
            clock,
        }
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
        let mut endpoint = Self::validate(&info)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.client_tls {
            if !info.endpoint.starts_with("https://") {
                return Err(DirectoryError::PlaintextEndpoint(info.endpoint.clone()));
            }
            // The department must present its own certificate: an answer
            // over this channel comes from that department.
            endpoint = endpoint
                .tls_config(tls.client_config(&department_identity(&info.department_id)))
                .map_err(|_| DirectoryError::BadEndpoint(info.endpoint.clone()))?;
        }
        self.insert(info, endpoint.connect_lazy());
        Ok(())
    }

    /// Puts a source on `channel` in place, with a fresh breaker and limiter.
    fn insert(&self, info: DataSource, channel: Channel) {
        let source = Arc::new(Source {
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
        self.read()
            .get(department)
            .cloned()
            .ok_or_else(|| CallFailure::NotRegistered(department.to_owned()))
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
        crate::operations::metrics::metrics().department_call(
            &source.info.department_id,
            kind,
            started.elapsed(),
        );
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
