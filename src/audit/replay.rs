//! Decision replay: re-derive every logged decision from what the log itself
//! holds — the policy set of the recorded version (logged, content-addressed),
//! the applicant facts, the commitments, and the department answers checked
//! against the departments' registered keys — and report every entry whose
//! recorded decision differs. A log can verify (nothing changed since it was
//! signed) and still fail replay (a decision that does not follow from policy
//! and answers, e.g. one written by a tampered gateway).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use super::records::{LogRecord, RecordError};
use futures_util::FutureExt;

use crate::pb::{
    audit_entry::Event, Application, ApplicationDecided, AuditEntry, Commitment,
    CompleteVerificationRequest, ProofDecision, ProofMode, ProofResult, QueryResponse,
    RecordedAnswer, VerificationCompleted, VerificationOverdue, VerifyResponse,
};
use crate::policy::calendar::{civil_date_cst, format_date};
use crate::policy::{
    application_id_of, apply, decide_proof, is_waiting, AnswerSource, ApplicantFacts, Mode,
    PolicySet, Proof, ProofContext,
};
use crate::signing::{verify_completion, AnswerVerifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub index: u64,
    pub application_id: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub entries: u64,
    pub decisions: u64,
    pub completions: u64,
    pub policy_versions: u64,
    /// Each policy set the log records, in order, with who approved it.
    pub policy_approvals: Vec<PolicyApproval>,
    pub answers_checked: u64,
    pub discrepancies: Vec<Discrepancy>,
}

/// A policy set recorded in the log and who approved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyApproval {
    pub index: u64,
    pub version: String,
    /// `name+keyid` of the policy key that signed it; empty: loaded unsigned.
    pub signer: String,
}

#[derive(Default)]
struct Replayer {
    policies: HashMap<String, Arc<PolicySet>>,
    department_keys: HashMap<String, Vec<u8>>,
    /// Applications still waiting on a department, by id.
    waiting: HashMap<String, Application>,
    answers: AnswerVerifier,
    /// Live dishonesty records by pseudonym: their end date.
    dishonest: HashMap<Vec<u8>, String>,
    report: ReplayReport,
}

fn mode_of(mode: i32) -> Option<Mode> {
    match ProofMode::try_from(mode).ok()? {
        ProofMode::Abolished => Some(Mode::Abolished),
        ProofMode::Commitment => Some(Mode::Commitment),
        ProofMode::DataQuery => Some(Mode::DataQuery),
        ProofMode::DepartmentVerification => Some(Mode::DepartmentVerification),
        ProofMode::Unspecified => None,
    }
}

impl Replayer {
    fn differs(&mut self, index: u64, application_id: &str, what: String) {
        self.report.discrepancies.push(Discrepancy {
            index,
            application_id: application_id.to_owned(),
            what,
        });
    }

    fn entry(&mut self, index: u64, bytes: &[u8]) {
        self.report.entries += 1;
        let entry = match AuditEntry::decode(bytes) {
            Ok(e) => e,
            Err(e) => return self.differs(index, "", format!("entry does not decode: {e}")),
        };
        match entry.event {
            Some(Event::PolicySetLoaded(loaded)) => {
                let canonical = String::from_utf8_lossy(&loaded.canonical);
                match PolicySet::from_canonical(&canonical) {
                    Ok(set) if set.version == loaded.policy_version => {
                        self.report.policy_versions += 1;
                        self.report.policy_approvals.push(PolicyApproval {
                            index,
                            version: set.version.clone(),
                            signer: loaded.signer.clone(),
                        });
                        self.policies.insert(set.version.clone(), Arc::new(set));
                    }
                    Ok(set) => self.differs(
                        index,
                        "",
                        format!(
                            "policy set recorded as {} digests to {}",
                            loaded.policy_version, set.version
                        ),
                    ),
                    Err(e) => {
                        self.differs(index, "", format!("recorded policy set does not load: {e}"))
                    }
                }
            }
            Some(Event::DataSourceChanged(changed)) => {
                if let Some(source) = changed.source {
                    if changed.removed {
                        self.department_keys.remove(&source.department_id);
                    } else {
                        self.department_keys
                            .insert(source.department_id, source.answer_public_key);
                    }
                }
            }
            Some(Event::ApplicationDecided(decided)) => self.decided(index, decided),
            Some(Event::VerificationCompleted(completed)) => self.completed(index, completed),
            Some(Event::VerificationOverdue(overdue)) => self.overdue(index, overdue),
            Some(Event::SpotCheckRecorded(check)) => {
                if !check.truthful {
                    self.dishonest
                        .insert(check.subject_pseudonym, check.dishonest_until);
                }
            }
            Some(Event::DishonestyRevoked(revoked)) => {
                self.dishonest.remove(&revoked.subject_pseudonym);
            }
            Some(Event::KeyRotated(_)) | None => {}
        }
    }

    /// Whether a recorded department answer carries that department's signature.
    fn answer_signed(&mut self, mode: Mode, answer: &RecordedAnswer) -> bool {
        if !answer.failure.is_empty() {
            return true; // nothing was used from it
        }
        self.report.answers_checked += 1;
        let Some(key) = self.department_keys.get(&answer.department_id) else {
            return false;
        };
        match mode {
            Mode::DataQuery => self.answers.verify(
                key,
                &QueryResponse {
                    request_nonce: answer.request_nonce.clone(),
                    department_id: answer.department_id.clone(),
                    found: answer.found,
                    fields: answer.fields.clone(),
                    signature: answer.signature.clone(),
                    batch: answer.batch.clone(),
                },
            ),
            Mode::DepartmentVerification => self.answers.verify(
                key,
                &VerifyResponse {
                    request_nonce: answer.request_nonce.clone(),
                    department_id: answer.department_id.clone(),
                    outcome: answer.verification,
                    ticket: answer.ticket.clone(),
                    expected_completion_unix_ms: answer.expected_completion_unix_ms,
                    reason: answer.reason.clone(),
                    signature: answer.signature.clone(),
                    batch: answer.batch.clone(),
                },
            ),
            Mode::Abolished | Mode::Commitment => false,
        }
    }

    fn decided(&mut self, index: u64, decided: ApplicationDecided) {
        self.report.decisions += 1;
        let app = decided.application_id.clone();
        let Some(policy) = self.policies.get(&decided.policy_version).cloned() else {
            return self.differs(
                index,
                &app,
                format!(
                    "policy version {} is not in the log",
                    decided.policy_version
                ),
            );
        };
        let Some(matter) = policy.matter(&decided.matter_id) else {
            return self.differs(
                index,
                &app,
                format!("matter {} is not in its policy set", decided.matter_id),
            );
        };
        let facts = ApplicantFacts::from_pb(&decided.applicant_facts.unwrap_or_default());
        // The date ages and dishonesty records are judged on follows from the
        // decision time (logs from before it was recorded carry only the date).
        if decided.decided_unix_ms != 0 {
            let date = format_date(civil_date_cst(decided.decided_unix_ms));
            if date != decided.decision_date {
                self.differs(
                    index,
                    &app,
                    format!(
                        "decision date {} is not the date of the decision time ({date})",
                        decided.decision_date
                    ),
                );
            }
        }
        let derived_dishonesty = self
            .dishonest
            .get(&decided.subject_pseudonym)
            .filter(|until| until.as_str() > decided.decision_date.as_str())
            .cloned()
            .unwrap_or_default();
        // In cluster mode the record may come from another node's log (the
        // cluster's shared records): this log cannot confirm it.
        if derived_dishonesty != decided.dishonest_until
            && !decided.dishonesty_shared
            && !decided.dishonesty_unknown
        {
            self.differs(
                index,
                &app,
                format!(
                    "dishonesty record used: `{}`, but the log's spot checks give `{derived_dishonesty}`",
                    decided.dishonest_until
                ),
            );
        }
        let required: Vec<&str> = policy
            .required_proofs(matter, &facts)
            .iter()
            .map(|r| r.proof.id.as_str())
            .collect();
        let recorded: Vec<&str> = decided
            .proofs
            .iter()
            .filter_map(|p| p.result.as_ref().map(|r| r.proof_id.as_str()))
            .collect();
        if required != recorded {
            return self.differs(
                index,
                &app,
                format!("proofs required {required:?}, recorded {recorded:?}"),
            );
        }
        let commitments: Vec<Commitment> = decided
            .proofs
            .iter()
            .filter_map(|p| p.commitment.clone())
            .collect();
        let ctx = ProofContext {
            application_id: &app,
            facts: &facts,
            consent_to_data_queries: decided.consent_to_data_queries,
            commitments: &commitments,
            dishonest_until: (!decided.dishonest_until.is_empty())
                .then_some(decided.dishonest_until.as_str()),
            dishonesty_unknown: decided.dishonesty_unknown,
            decided_unix_ms: decided.decided_unix_ms,
        };
        for decision in &decided.proofs {
            let Some(result) = &decision.result else {
                continue;
            };
            let Some(proof) = policy.proof(&result.proof_id).cloned() else {
                continue;
            };
            let mut source = ReplaySource {
                answers: decision.answers.iter(),
                replayer: self,
            };
            let rederived = decide_proof(&proof, &ctx, &mut source).now_or_never();
            let leftover = source.answers.next().is_some();
            match rederived {
                None => self.differs(
                    index,
                    &app,
                    format!("{}: replay did not finish", result.proof_id),
                ),
                Some(Err(what)) => {
                    self.differs(index, &app, format!("{}: {what}", result.proof_id))
                }
                Some(Ok(_)) if leftover => self.differs(
                    index,
                    &app,
                    format!(
                        "{}: more answers recorded than the policy asks for",
                        result.proof_id
                    ),
                ),
                Some(Ok(rederived)) => {
                    for what in
                        decision_differences(&with_old_due(rederived, result, &decided), decision)
                    {
                        self.differs(index, &app, format!("{}: {what}", result.proof_id));
                    }
                }
            }
        }
        let event = Event::ApplicationDecided(decided);
        let mut application = Application::default();
        if let Err(e) = apply(&mut application, &event) {
            return self.differs(index, &app, e.to_string());
        }
        let Event::ApplicationDecided(decided) = &event else {
            return;
        };
        if application.status != decided.status {
            self.differs(
                index,
                &app,
                format!(
                    "recorded status {:?}, proofs give {:?}",
                    decided.status(),
                    application.status()
                ),
            );
        }
        self.keep_if_waiting(application);
    }

    /// Remembers an application while any verification may still arrive.
    fn keep_if_waiting(&mut self, application: Application) {
        if is_waiting(&application) {
            self.waiting
                .insert(application.application_id.clone(), application);
        }
    }

    /// Applies a later event (a completion, an overdue mark) to its waiting
    /// application with the one projection, and checks the result and
    /// status the event records against it.
    fn later(
        &mut self,
        index: u64,
        event: &Event,
        recorded: Option<&ProofResult>,
        recorded_status: i32,
    ) {
        let app = application_id_of(event).unwrap_or_default().to_owned();
        let Some(mut application) = self.waiting.remove(&app) else {
            return self.differs(
                index,
                &app,
                "changes an application with nothing waiting".into(),
            );
        };
        match apply(&mut application, event) {
            Err(e) => self.differs(index, &app, e.to_string()),
            Ok(changed) => {
                let derived = changed.as_ref().map(|r| (r.outcome, r.reason.as_str()));
                if recorded.map(|r| (r.outcome, r.reason.as_str())) != derived {
                    let proof = changed.map(|r| r.proof_id).unwrap_or_default();
                    self.differs(index, &app, format!("{proof}: recorded result differs"));
                }
                if application.status != recorded_status {
                    self.differs(
                        index,
                        &app,
                        format!(
                            "recorded status {recorded_status}, proofs give {:?}",
                            application.status()
                        ),
                    );
                }
            }
        }
        // Kept whatever happened, so later events of the application still replay.
        self.keep_if_waiting(application);
    }

    fn completed(&mut self, index: u64, completed: VerificationCompleted) {
        self.report.completions += 1;
        let app = completed.application_id.clone();
        let Some(answer) = completed.answer.as_ref() else {
            return self.differs(index, &app, "completion records no answer".into());
        };
        let request = CompleteVerificationRequest {
            department_id: answer.department_id.clone(),
            ticket: completed.ticket.clone(),
            outcome: answer.verification,
            reason: answer.reason.clone(),
            signature: answer.signature.clone(),
        };
        self.report.answers_checked += 1;
        let signed = self
            .department_keys
            .get(&answer.department_id)
            .is_some_and(|key| verify_completion(key, &request));
        if !signed {
            self.differs(
                index,
                &app,
                format!(
                    "completion by {} is not signed by its registered key",
                    answer.department_id
                ),
            );
        }
        let (result, status) = (completed.result.clone(), completed.status);
        self.later(
            index,
            &Event::VerificationCompleted(completed),
            result.as_ref(),
            status,
        );
    }

    fn overdue(&mut self, index: u64, overdue: VerificationOverdue) {
        let (result, status) = (overdue.result.clone(), overdue.status);
        self.later(
            index,
            &Event::VerificationOverdue(overdue),
            result.as_ref(),
            status,
        );
    }
}

/// Logs written before decisions recorded their time cannot re-derive a
/// pending proof's deadline; replay then takes the recorded one.
fn with_old_due(
    mut rederived: ProofDecision,
    recorded: &ProofResult,
    decided: &ApplicationDecided,
) -> ProofDecision {
    if decided.decided_unix_ms == 0 {
        if let Some(r) = rederived.result.as_mut() {
            r.due_unix_ms = recorded.due_unix_ms;
        }
    }
    rederived
}

/// Where a re-derived proof decision differs from the recorded one, field by field.
fn decision_differences(rederived: &ProofDecision, recorded: &ProofDecision) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(r), Some(l)) = (&rederived.result, &recorded.result) else {
        return vec!["no result recorded".into()];
    };
    if (r.outcome, &r.reason) != (l.outcome, &l.reason) {
        out.push(format!(
            "recorded {:?} ({}) but policy and answers give {:?} ({})",
            l.outcome(),
            l.reason,
            r.outcome(),
            r.reason
        ));
    }
    if (r.mode, r.planned_mode, r.fallback_used) != (l.mode, l.planned_mode, l.fallback_used) {
        out.push(format!(
            "recorded mode {:?} (planned {:?}, fallback {}) but the policy gives {:?} (planned {:?}, fallback {})",
            l.mode(), l.planned_mode(), l.fallback_used, r.mode(), r.planned_mode(), r.fallback_used
        ));
    }
    if r.spot_check != l.spot_check {
        out.push(format!(
            "spot-check sampling recorded {}, the rule gives {}",
            l.spot_check, r.spot_check
        ));
    }
    if (&r.ticket, r.due_unix_ms) != (&l.ticket, l.due_unix_ms) {
        out.push(format!(
            "recorded ticket `{}` due {}, the answers and deadline give `{}` due {}",
            l.ticket, l.due_unix_ms, r.ticket, r.due_unix_ms
        ));
    }
    if (&r.proof_name, &r.department_id, &r.legal_basis)
        != (&l.proof_name, &l.department_id, &l.legal_basis)
    {
        out.push("recorded name, department or legal basis differ from the policy".into());
    }
    if rederived.commitment != recorded.commitment {
        out.push("the recorded commitment is not the one the decision used".into());
    }
    out
}

/// Hands the decision core the answers recorded for one proof, in order,
/// each checked against its department's registered key.
struct ReplaySource<'r, 'a> {
    answers: std::slice::Iter<'a, RecordedAnswer>,
    replayer: &'r mut Replayer,
}

impl AnswerSource for ReplaySource<'_, '_> {
    type Error = String;

    async fn answer(&mut self, proof: &Proof, mode: Mode) -> Result<RecordedAnswer, String> {
        let answer = self
            .answers
            .next()
            .ok_or_else(|| format!("no answer recorded for {}", mode.policy_word()))?;
        if mode_of(answer.mode) != Some(mode) {
            return Err("answers recorded out of order".into());
        }
        // Only the proof's own department may answer for it.
        if Some(answer.department_id.as_str()) != proof.department.as_deref() {
            return Err(format!(
                "the answer recorded is from {}, not from the proof's department",
                answer.department_id
            ));
        }
        if !self.replayer.answer_signed(mode, answer) {
            return Err(format!(
                "answer of {} does not carry its registered signature",
                answer.department_id
            ));
        }
        Ok(answer.clone())
    }
}

/// Replays every decision of a log. `progress` gets the entries replayed so
/// far, every 100,000.
pub fn replay_records(
    records: impl Iterator<Item = Result<LogRecord, RecordError>>,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, RecordError> {
    let mut replayer = Replayer::default();
    for record in records {
        if let LogRecord::Entry { index, bytes, .. } = record? {
            replayer.entry(index, &bytes);
            if replayer.report.entries.is_multiple_of(100_000) {
                progress(replayer.report.entries);
            }
        }
    }
    Ok(replayer.report)
}
