//! The ApplicationService: orchestration of one application from request to
//! logged decision, and of the later completion of pending verifications.

mod decide;
mod dishonesty;
mod error;
mod validate;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures_util::future::join_all;
use prost::Message;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch as outcome_channel;
use tracing::{info, info_span, Instrument};

pub use dishonesty::SharedDishonesty;
pub use error::GatewayError;
pub use validate::{check_submission, FieldViolation};
pub use watch::{is_final, receipt_index, WatchHub};

use crate::audit::{projections_of, request_key, ticket_key, AuditLog, Receipt};
use crate::clock::{self, SharedClock};
use crate::departments::DepartmentDirectory;
use crate::pb::{
    audit_entry::Event, Application, ApplicationDecided, ApplicationStatus,
    CompleteVerificationRequest, CompleteVerificationResponse, IdType, ProofMode, RecordedAnswer,
    SubmitApplicationRequest, VerificationCompleted, VerificationOutcome, VerificationOverdue,
};
use crate::policy::calendar::{civil_date_cst, format_date};
use crate::policy::{apply, decide_proof, ApplicantFacts, ApplyError, PolicySet, ProofContext};
use crate::subject::PseudonymKey;

/// Shards of the per-application lock that serialises completions.
const APPLICATION_LOCK_SHARDS: usize = 64;

/// The outcome of a decision in flight, as its duplicates see it.
type Outcome = Option<Result<Application, ()>>;

/// A submission being decided: its request digest (a duplicate must carry
/// the same request) and where its outcome appears.
struct InFlight {
    digest: [u8; 32],
    outcome: outcome_channel::Receiver<Outcome>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a decided submission out of the in-flight map when its task ends,
/// whether it finished, failed or panicked.
struct LeaveInFlight {
    gateway: Arc<Gateway>,
    key: Vec<u8>,
}

impl Drop for LeaveInFlight {
    fn drop(&mut self) {
        lock(&self.gateway.in_flight).remove(&self.key);
    }
}

pub struct Gateway {
    node_id: String,
    policy: RwLock<Arc<PolicySet>>,
    departments: Arc<DepartmentDirectory>,
    audit: AuditLog,
    pseudonyms: PseudonymKey,
    watchers: WatchHub,
    in_flight: Mutex<HashMap<Vec<u8>, InFlight>>,
    issued_tickets: decide::IssuedTickets,
    /// Completions logged lately, so a department resending one (its first
    /// answer was UNAVAILABLE: logged, not yet on the mirrors required) gets
    /// the same answer once the mirrors hold it, not "no pending ticket".
    completed: Mutex<RecentCompletions>,
    application_locks: Vec<tokio::sync::Mutex<()>>,
    rng: SystemRandom,
    clock: SharedClock,
    /// Cluster mode: the dishonesty records every node shares.
    shared_dishonesty: OnceLock<Arc<dyn SharedDishonesty>>,
}

impl Gateway {
    pub fn new(
        node_id: String,
        policy: Arc<PolicySet>,
        departments: Arc<DepartmentDirectory>,
        audit: AuditLog,
        pseudonyms: PseudonymKey,
    ) -> Self {
        Self {
            node_id,
            policy: RwLock::new(policy),
            departments,
            audit,
            pseudonyms,
            watchers: WatchHub::default(),
            in_flight: Mutex::new(HashMap::new()),
            issued_tickets: Mutex::new(std::collections::HashSet::new()),
            completed: Mutex::default(),
            application_locks: (0..APPLICATION_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            rng: SystemRandom::new(),
            clock: clock::system(),
            shared_dishonesty: OnceLock::new(),
        }
    }

    /// Cluster mode: from now on dishonesty records are read from (and
    /// written to) the cluster's shared records. Set once, at start.
    pub fn share_dishonesty(&self, shared: Arc<dyn SharedDishonesty>) {
        let _ = self.shared_dishonesty.set(shared);
    }

    /// The cluster's dishonesty records, in cluster mode.
    pub fn shared_dishonesty(&self) -> Option<&Arc<dyn SharedDishonesty>> {
        self.shared_dishonesty.get()
    }

    /// Uses `clock` for decision times, deadlines and completions (tests
    /// drive it by hand).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The node this gateway decides for (application ids start with it).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The time this gateway decides by.
    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    pub fn policy(&self) -> Arc<PolicySet> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn departments(&self) -> &DepartmentDirectory {
        &self.departments
    }

    /// The subject's pseudonym under this node's key.
    pub fn pseudonym(&self, id_type: IdType, id_number: &str) -> [u8; 32] {
        self.pseudonyms.pseudonym(id_type, id_number)
    }

    /// Replaces the policy set (already validated by loading it).
    pub fn replace_policy(&self, policy: Arc<PolicySet>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub fn watchers(&self) -> &WatchHub {
        &self.watchers
    }

    /// Application ids name the node that owns them, so nodes never collide,
    /// then the time (ms, 12 hex digits) and 48 random bits: a node's ids
    /// sort by time, so the store appends their keys at the end of a range
    /// instead of scattering them over its pages.
    /// Without random bits two ids of the same millisecond would be one:
    /// nothing is decided then.
    fn new_application_id(&self) -> Result<String, GatewayError> {
        let mut bytes = [0u8; 6];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| GatewayError::NoRandom)?;
        let ms = u64::try_from(self.clock.now_unix_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
        Ok(format!("{}.{ms:012x}{}", self.node_id, hex::encode(bytes)))
    }

    fn lock_for(&self, application_id: &str) -> &tokio::sync::Mutex<()> {
        let hash = digest(&SHA256, application_id.as_bytes());
        let shard = usize::from(hash.as_ref()[0]) % self.application_locks.len();
        &self.application_locks[shard]
    }

    /// Checks a submission as [`Gateway::submit`] would and returns its keyed
    /// request digest (the one idempotency compares): cluster mode reserves
    /// the request under it before deciding. Nothing is decided or stored.
    pub fn admit(&self, request: &SubmitApplicationRequest) -> Result<[u8; 32], GatewayError> {
        self.admitted(request, self.clock.now_unix_ms())
            .map(|(_, _, digest)| digest)
    }

    fn admitted(
        &self,
        request: &SubmitApplicationRequest,
        now: i64,
    ) -> Result<(IdType, Arc<PolicySet>, [u8; 32]), GatewayError> {
        let id_type = check_submission(request, now).map_err(GatewayError::Invalid)?;
        let policy = self.policy();
        if policy.matter(&request.matter_id).is_none() {
            return Err(GatewayError::UnknownMatter(request.matter_id.clone()));
        }
        let unknown: Vec<FieldViolation> = request
            .commitments
            .iter()
            .enumerate()
            .filter(|(_, c)| policy.proof(&c.proof_id).is_none())
            .map(|(i, c)| FieldViolation {
                field: format!("commitments[{i}].proof_id"),
                description: format!("unknown proof `{}`", c.proof_id),
            })
            .collect();
        if !unknown.is_empty() {
            return Err(GatewayError::Invalid(unknown));
        }
        Ok((
            id_type,
            policy,
            self.pseudonyms.digest(&request.encode_to_vec()),
        ))
    }

    /// Names the key request digests are made with, without revealing it:
    /// nodes of one cluster must share it to compare requests.
    pub fn digest_key_id(&self) -> String {
        hex::encode(&self.pseudonyms.digest(b"proofgate digest key id")[..8])
    }

    /// Cluster mode: logs that `application_id`, decided here for
    /// `(caller, request_id)` but never acknowledged, was superseded by the
    /// cluster's decision `superseded_by` (empty: not known here).
    pub async fn supersede(
        &self,
        application_id: &str,
        caller: &str,
        request_id: &str,
        superseded_by: &str,
    ) -> Result<Receipt, GatewayError> {
        let event = Event::DecisionSuperseded(crate::pb::DecisionSuperseded {
            application_id: application_id.to_owned(),
            caller: caller.to_owned(),
            request_id: request_id.to_owned(),
            superseded_by: superseded_by.to_owned(),
        });
        let projections = projections_of(&event, None, &|_, _| None);
        let receipt = self.audit.append(event, projections).await?;
        info!(%application_id, %superseded_by, index = receipt.index, "orphan decision marked superseded");
        Ok(receipt)
    }

    /// Decides a submission, or returns the application an earlier request
    /// with the same `request_id` from the same caller produced. The second
    /// value is true for such a replay. Either is answered only once the
    /// mirrors `serve --mirror-ack` requires hold it.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &str,
        request: SubmitApplicationRequest,
    ) -> Result<(Application, bool), GatewayError> {
        let (application, replayed) = self.submit_logged(caller, request).await?;
        self.replicated(&application).await?;
        Ok((application, replayed))
    }

    /// Waits until the mirrors required hold every entry of `application`
    /// (`serve --mirror-ack`): what is answered, or read, is on their disks.
    pub async fn replicated(&self, application: &Application) -> Result<(), GatewayError> {
        self.replicated_to(
            &application.application_id,
            self.log_size_holding(application),
            false,
        )
        .await
    }

    /// The log size that holds every entry of `application` (its latest
    /// entry's, or, without a receipt, the durable size).
    fn log_size_holding(&self, application: &Application) -> u64 {
        size_holding(application, self.audit.durable_size())
    }

    async fn replicated_to(
        &self,
        application_id: &str,
        size: u64,
        completion: bool,
    ) -> Result<(), GatewayError> {
        self.audit.replicated(size).await.map_err(|cause| {
            tracing::warn!(%application_id, error = %cause, "not answered: not yet on the mirrors required");
            GatewayError::NotReplicated { completion, cause }
        })
    }

    /// Whether the mirrors required hold every entry of `application_id`
    /// now (settling marks a decision in etcd only then).
    pub fn is_replicated(&self, application_id: &str) -> Result<bool, GatewayError> {
        let application = self.application(application_id)?;
        Ok(self
            .audit
            .replication()
            .covers(self.log_size_holding(&application)))
    }

    /// [`Self::submit`] up to the decision being durable here.
    async fn submit_logged(
        self: &Arc<Self>,
        caller: &str,
        request: SubmitApplicationRequest,
    ) -> Result<(Application, bool), GatewayError> {
        let now = self.clock.now_unix_ms();
        let (id_type, policy, request_digest) = self.admitted(&request, now)?;
        // Under the map's lock, a request is either in flight, or stored
        // (its task leaves the map only once its entry is durable), or new:
        // so it is decided once, however many duplicates arrive, on any
        // connection, at any moment.
        let key = request_key(caller, &request.request_id);
        let (mut outcome, decider) = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&key) {
                Some(first) if first.digest != request_digest => {
                    return Err(GatewayError::RequestIdReused(request.request_id));
                }
                Some(first) => (first.outcome.clone(), None),
                None => {
                    if let Some(replayed) = self.replay(caller, &request, request_digest)? {
                        return Ok((replayed, true));
                    }
                    let (tx, rx) = outcome_channel::channel(None);
                    in_flight.insert(
                        key.clone(),
                        InFlight {
                            digest: request_digest,
                            outcome: rx.clone(),
                        },
                    );
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = decider {
            // Decided on its own task: a hall that hangs up does not cancel a
            // decision half way (its duplicates and retries get its outcome).
            let gateway = Arc::clone(self);
            let caller = caller.to_owned();
            let task = tokio::spawn(async move {
                let _leave = LeaveInFlight {
                    gateway: Arc::clone(&gateway),
                    key,
                };
                let decided = gateway
                    .decide(&caller, &request, id_type, request_digest, &policy, now)
                    .await;
                let _ = tx.send(Some(decided.as_ref().map(Clone::clone).map_err(|_| ())));
                decided
            });
            return match task.await {
                Ok(decided) => decided.map(|application| (application, false)),
                Err(e) => Err(GatewayError::Task(e)),
            };
        }
        match outcome.wait_for(Option::is_some).await.map(|o| o.clone()) {
            Ok(Some(Ok(application))) => Ok((application, true)),
            _ => Err(GatewayError::DuplicateFailed),
        }
    }

    fn replay(
        &self,
        caller: &str,
        request: &SubmitApplicationRequest,
        request_digest: [u8; 32],
    ) -> Result<Option<Application>, GatewayError> {
        let store = self.audit.store();
        let Some((earlier_digest, application_id)) = store.request(caller, &request.request_id)?
        else {
            return Ok(None);
        };
        // Requests stored before digests were keyed carry a plain SHA-256.
        let plain = || digest(&SHA256, &request.encode_to_vec());
        if earlier_digest != request_digest && earlier_digest[..] != *plain().as_ref() {
            return Err(GatewayError::RequestIdReused(request.request_id.clone()));
        }
        let application = store
            .application(&application_id)?
            .ok_or(GatewayError::UnknownApplication(application_id))?;
        if_durable(application, self.audit.durable_size()).map(Some)
    }

    async fn decide(
        &self,
        caller: &str,
        request: &SubmitApplicationRequest,
        id_type: IdType,
        request_digest: [u8; 32],
        policy: &PolicySet,
        now: i64,
    ) -> Result<Application, GatewayError> {
        let application_id = self.new_application_id()?;
        let span = info_span!(
            "application",
            application_id = %application_id,
            matter = %request.matter_id,
            status = tracing::field::Empty,
            outcomes = tracing::field::Empty,
        );
        async {
            let subject = request.applicant.clone().unwrap_or_default();
            let decision_date = civil_date_cst(now);
            let facts = ApplicantFacts::derive(id_type, &subject.id_number, decision_date);
            // Checked by the caller; a matter cannot vanish from an immutable set.
            let matter = policy
                .matter(&request.matter_id)
                .ok_or_else(|| GatewayError::UnknownMatter(request.matter_id.clone()))?;
            let required = policy.required_proofs(matter, &facts);
            let pseudonym = self.pseudonyms.pseudonym(id_type, &subject.id_number);
            let decision_day = format_date(decision_date);
            // In cluster mode the shared records, which hold every node's;
            // when they may be stale, no commitment is taken blindly.
            let (record, dishonesty_unknown) = match self.shared_dishonesty() {
                None => (self.audit.store().dishonesty(&pseudonym)?, false),
                Some(shared) => match shared.lookup(&pseudonym) {
                    Ok(record) => (record, false),
                    Err(why) => {
                        tracing::warn!(%why, "dishonesty records may be stale: commitments that refuse dishonest applicants are unavailable");
                        (None, true)
                    }
                },
            };
            // A record counts until its end date, exclusive.
            let dishonest_until = record
                .map(|record| record.until)
                .filter(|until| until.as_str() > decision_day.as_str());
            let officer = request.officer.clone().unwrap_or_default();
            let asker = decide::Asker {
                application_id: &application_id,
                matter_id: &request.matter_id,
                officer_id: &officer.officer_id,
                hall_id: &officer.hall_id,
                subject: &subject,
            };
            let ctx = ProofContext {
                application_id: &application_id,
                facts: &facts,
                consent_to_data_queries: request.consent_to_data_queries,
                commitments: &request.commitments,
                dishonest_until: dishonest_until.as_deref(),
                dishonesty_unknown,
                decided_unix_ms: now,
            };
            // Answers are checked with the keys in force until the decision
            // is logged: a registry change waits, so it is logged before or
            // after the decision, never between the check and the entry.
            let keys = self.departments.keys_in_use().await;
            // Forgets the tickets noted here however this future ends.
            let tickets = decide::TicketGuard::new(&self.issued_tickets);
            let decisions = join_all(required.iter().map(|r| {
                let ctx = &ctx;
                let mut source = decide::LiveSource {
                    asker: &asker,
                    departments: &self.departments,
                    rng: &self.rng,
                    tickets: &tickets,
                };
                async move {
                    match decide_proof(&r.proof, ctx, &mut source).await {
                        Ok(decision) => decision,
                        Err(never) => match never {},
                    }
                }
            }))
            .await;
            let mut decided = ApplicationDecided {
                application_id: application_id.clone(),
                request_id: request.request_id.clone(),
                caller: caller.to_owned(),
                matter_id: request.matter_id.clone(),
                policy_version: policy.version.clone(),
                subject_pseudonym: pseudonym.to_vec(),
                subject_id_type: id_type as i32,
                officer_id: officer.officer_id,
                hall_id: officer.hall_id,
                consent_to_data_queries: request.consent_to_data_queries,
                decision_date: decision_day.clone(),
                proofs: decisions,
                status: ApplicationStatus::Unspecified as i32,
                applicant_facts: Some(facts.to_pb()),
                dishonest_until: dishonest_until.clone().unwrap_or_default(),
                decided_unix_ms: now,
                request_digest: request_digest.to_vec(),
                dishonesty_unknown,
                dishonesty_shared: self.shared_dishonesty().is_some(),
            };
            let mut application = Application::default();
            apply(
                &mut application,
                &Event::ApplicationDecided(decided.clone()),
            )?;
            decided.status = application.status;
            let status = application.status();
            let event = Event::ApplicationDecided(decided);
            let projections = projections_of(&event, Some(&application), &|version, proof| {
                (version == policy.version)
                    .then(|| policy.proof(proof))
                    .flatten()
                    .and_then(|p| p.commitment.as_ref())
                    .map(|t| t.dishonesty_days)
            });
            let appended = self.audit.append(event, projections).await;
            drop(keys);
            drop(tickets);
            let receipt = appended?;
            application.receipt = Some(receipt.to_pb());
            let span = tracing::Span::current();
            span.record("status", status.as_str_name());
            span.record("outcomes", outcome_summary(&application).as_str());
            info!(index = receipt.index, "application decided");
            Ok(application)
        }
        .instrument(span)
        .await
    }

    pub fn application(&self, application_id: &str) -> Result<Application, GatewayError> {
        self.audit
            .store()
            .application(application_id)?
            .ok_or_else(|| GatewayError::UnknownApplication(application_id.to_owned()))
    }

    pub async fn complete(
        &self,
        request: CompleteVerificationRequest,
    ) -> Result<CompleteVerificationResponse, GatewayError> {
        let mut problems = Vec::new();
        if request.department_id.is_empty() || request.department_id.len() > validate::MAX_ID_LEN {
            problems.push(FieldViolation {
                field: "department_id".into(),
                description: "is required (at most 64 bytes)".into(),
            });
        }
        if request.ticket.is_empty() || request.ticket.len() > validate::MAX_REQUEST_ID_LEN {
            problems.push(FieldViolation {
                field: "ticket".into(),
                description: "is required (at most 128 bytes)".into(),
            });
        }
        let outcome = VerificationOutcome::try_from(request.outcome).unwrap_or_default();
        if !matches!(
            outcome,
            VerificationOutcome::Verified | VerificationOutcome::NotVerified
        ) {
            problems.push(FieldViolation {
                field: "outcome".into(),
                description: "must be VERIFIED or NOT_VERIFIED".into(),
            });
        }
        if request.reason.len() > crate::departments::MAX_REASON_BYTES {
            problems.push(FieldViolation {
                field: "reason".into(),
                description: "must be at most 1024 bytes".into(),
            });
        }
        if !problems.is_empty() {
            return Err(GatewayError::Invalid(problems));
        }
        let unknown_ticket = || GatewayError::UnknownTicket {
            department: request.department_id.clone(),
            ticket: request.ticket.clone(),
        };
        let store = self.audit.store();
        let Some(ticket) = store.ticket(&request.department_id, &request.ticket)? else {
            let key = ticket_key(&request.department_id, &request.ticket);
            let resent = lock(&self.completed).find(&key, &request);
            if let Some((application_id, audit_index)) = resent {
                // The same completion again: answered once it is mirrored.
                self.replicated_to(&application_id, audit_index + 1, true)
                    .await?;
                return Ok(CompleteVerificationResponse {
                    application_id,
                    audit_index,
                });
            }
            let issued = self
                .issued_tickets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key);
            return Err(if issued {
                GatewayError::TicketNotYetRecorded
            } else {
                unknown_ticket()
            });
        };
        // Held until the completion is logged (see `decide`).
        let keys = self.departments.keys_in_use().await;
        if !self
            .departments
            .verify_completion(&request.department_id, &request)
        {
            return Err(GatewayError::BadSignature(request.department_id.clone()));
        }
        let guard = self.lock_for(&ticket.application_id).lock().await;
        let application = self.application(&ticket.application_id)?;
        let event = Event::VerificationCompleted(VerificationCompleted {
            application_id: application.application_id.clone(),
            proof_id: ticket.proof_id.clone(),
            ticket: request.ticket.clone(),
            answer: Some(RecordedAnswer {
                department_id: request.department_id.clone(),
                verification: request.outcome,
                signature: request.signature.clone(),
                mode: ProofMode::DepartmentVerification as i32,
                ticket: request.ticket.clone(),
                reason: request.reason.clone(),
                ..Default::default()
            }),
            result: None,
            status: ApplicationStatus::Unspecified as i32,
            completed_unix_ms: self.clock.now_unix_ms(),
            subject_pseudonym: ticket.subject_pseudonym.clone(),
        });
        let (application, receipt) = match self.record_change(application, event).await {
            Err(GatewayError::NotApplicable(ApplyError::NothingWaiting { .. })) => {
                return Err(unknown_ticket())
            }
            other => other?,
        };
        drop(guard);
        drop(keys);
        lock(&self.completed).remember(
            ticket_key(&request.department_id, &request.ticket),
            &request,
            &application.application_id,
            receipt.index,
        );
        self.replicated_to(&application.application_id, receipt.index + 1, true)
            .await?;
        info!(
            application_id = %application.application_id,
            proof = %ticket.proof_id,
            status = application.status().as_str_name(),
            index = receipt.index,
            "verification completed"
        );
        Ok(CompleteVerificationResponse {
            application_id: application.application_id,
            audit_index: receipt.index,
        })
    }

    /// Applies a later event (a completion, an overdue mark) to an
    /// application with the one projection, records the changed proof and
    /// status in the event, logs it, and tells the watchers. The caller
    /// holds the application's lock.
    async fn record_change(
        &self,
        mut application: Application,
        mut event: Event,
    ) -> Result<(Application, Receipt), GatewayError> {
        let changed = apply(&mut application, &event)?;
        let status = application.status;
        match &mut event {
            Event::VerificationCompleted(c) => (c.result, c.status) = (changed, status),
            Event::VerificationOverdue(o) => (o.result, o.status) = (changed, status),
            _ => {}
        }
        let projections = projections_of(&event, Some(&application), &|_, _| None);
        let receipt = self.audit.append(event, projections).await?;
        application.receipt = Some(receipt.to_pb());
        self.watchers.publish(Arc::new(application.clone()));
        Ok((application, receipt))
    }
}

impl Gateway {
    /// Marks every pending verification whose deadline has passed at `now`
    /// as overdue (logged; the department may still complete it). Returns
    /// how many were marked. Runs periodically; tests call it with a clock.
    pub async fn sweep_overdue(&self, now: i64) -> Result<usize, GatewayError> {
        let mut marked = 0;
        for (_department, ticket, record) in self.audit.store().tickets()? {
            if record.overdue || record.due_unix_ms == 0 || record.due_unix_ms > now {
                continue;
            }
            let _guard = self.lock_for(&record.application_id).lock().await;
            let application = match self.application(&record.application_id) {
                Ok(app) => app,
                Err(e) => {
                    // One broken record must not stop the others' deadlines.
                    tracing::warn!(error = %e, %ticket, "overdue sweep skipped a ticket");
                    continue;
                }
            };
            let event = Event::VerificationOverdue(VerificationOverdue {
                application_id: application.application_id.clone(),
                proof_id: record.proof_id.clone(),
                ticket: ticket.clone(),
                as_of_unix_ms: now,
                result: None,
                status: ApplicationStatus::Unspecified as i32,
                subject_pseudonym: record.subject_pseudonym.clone(),
            });
            match self.record_change(application, event).await {
                Ok(_) => {}
                // Completed meanwhile, or no longer pending: nothing to mark.
                Err(GatewayError::NotApplicable(_)) => continue,
                Err(e) => return Err(e),
            }
            info!(application_id = %record.application_id, proof = %record.proof_id, "verification overdue");
            marked += 1;
        }
        Ok(marked)
    }
}

fn outcome_summary(application: &Application) -> String {
    application
        .proofs
        .iter()
        .map(|p| format!("{}={}", p.proof_id, p.outcome().as_str_name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The completions this node logged lately (at most [`RecentCompletions::MAX`]).
#[derive(Default)]
struct RecentCompletions {
    by_ticket: HashMap<Vec<u8>, Completed>,
    order: std::collections::VecDeque<Vec<u8>>,
}

struct Completed {
    outcome: i32,
    signature: Vec<u8>,
    reason: String,
    application_id: String,
    audit_index: u64,
}

impl RecentCompletions {
    const MAX: usize = 4096;

    fn remember(
        &mut self,
        key: Vec<u8>,
        request: &CompleteVerificationRequest,
        application_id: &str,
        audit_index: u64,
    ) {
        if self.order.len() >= Self::MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.by_ticket.remove(&oldest);
            }
        }
        self.order.push_back(key.clone());
        self.by_ticket.insert(
            key,
            Completed {
                outcome: request.outcome,
                signature: request.signature.clone(),
                reason: request.reason.clone(),
                application_id: application_id.to_owned(),
                audit_index,
            },
        );
    }

    /// The application and entry of an identical completion logged lately.
    fn find(&self, key: &[u8], request: &CompleteVerificationRequest) -> Option<(String, u64)> {
        self.by_ticket
            .get(key)
            .filter(|c| {
                c.outcome == request.outcome
                    && c.signature == request.signature
                    && c.reason == request.reason
            })
            .map(|c| (c.application_id.clone(), c.audit_index))
    }
}

/// The log size that holds every entry of `application`: its latest
/// entry's, or, without a receipt, `durable`.
fn size_holding(application: &Application, durable: u64) -> u64 {
    application
        .receipt
        .as_ref()
        .map_or(durable, |r| r.index + 1)
}

/// `application` if every entry of it is within the `durable` size of the
/// log. A stored decision beyond it is one whose flush failed: sled shows
/// it, but a crash may lose it, so it is not answered.
fn if_durable(application: Application, durable: u64) -> Result<Application, GatewayError> {
    if size_holding(&application, durable) > durable {
        return Err(GatewayError::NotDurable);
    }
    Ok(application)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_decision_beyond_the_durable_size_is_not_answered() {
        let at = |index| Application {
            receipt: Some(crate::pb::AuditReceipt {
                index,
                ..Default::default()
            }),
            ..Default::default()
        };
        // Entry 9 is within a durable size of 10; entry 10 is not.
        assert_eq!(if_durable(at(9), 10).unwrap().receipt.unwrap().index, 9);
        assert!(matches!(
            if_durable(at(10), 10),
            Err(GatewayError::NotDurable)
        ));
        assert!(matches!(
            if_durable(at(0), 0),
            Err(GatewayError::NotDurable)
        ));
        // Without a receipt nothing of it is beyond what is durable.
        assert!(if_durable(Application::default(), 0).is_ok());
    }

    fn completion(ticket: &str, outcome: VerificationOutcome) -> CompleteVerificationRequest {
        CompleteVerificationRequest {
            department_id: "health".into(),
            ticket: ticket.into(),
            outcome: outcome as i32,
            signature: vec![1, 2, 3],
            reason: String::new(),
        }
    }

    #[test]
    fn a_resent_completion_is_found_only_when_identical_and_recent() {
        let mut recent = RecentCompletions::default();
        let sent = completion("t-1", VerificationOutcome::Verified);
        recent.remember(b"k-1".to_vec(), &sent, "node-1.app", 41);
        assert_eq!(recent.find(b"k-1", &sent), Some(("node-1.app".into(), 41)));
        // Another answer for the same ticket is not the same completion.
        let other = completion("t-1", VerificationOutcome::NotVerified);
        assert_eq!(recent.find(b"k-1", &other), None);
        assert_eq!(recent.find(b"k-2", &sent), None);
        // Bounded: the oldest goes first.
        for i in 0..RecentCompletions::MAX {
            recent.remember(format!("x-{i}").into_bytes(), &sent, "a", i as u64);
        }
        assert_eq!(recent.find(b"k-1", &sent), None);
        assert_eq!(recent.by_ticket.len(), RecentCompletions::MAX);
        assert!(recent.find(b"x-5", &sent).is_some());
    }
}
