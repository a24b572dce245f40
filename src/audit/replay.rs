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
use crate::pb::{
    audit_entry::Event, ApplicationDecided, AuditEntry, CompleteVerificationRequest, ProofDecision,
    ProofMode, ProofOutcome, ProofResult, QueryResponse, RecordedAnswer, VerificationCompleted,
    VerificationOutcome, VerifyResponse,
};
use crate::policy::{
    completed_verification, overall_status, overdue_verification, ApplicantFacts, Mode, PolicySet,
    Proof,
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
    pub answers_checked: u64,
    pub discrepancies: Vec<Discrepancy>,
}

/// A later event about one waiting proof.
struct LaterChange<'a> {
    application_id: &'a str,
    proof_id: &'a str,
    ticket: &'a str,
    /// Outcomes the proof may have before the change.
    from: &'a [ProofOutcome],
    recorded: Option<&'a ProofResult>,
    recorded_status: i32,
}

#[derive(Default)]
struct Replayer {
    policies: HashMap<String, Arc<PolicySet>>,
    department_keys: HashMap<String, Vec<u8>>,
    /// Proof results of applications still pending, by application id.
    pending: HashMap<String, Vec<ProofResult>>,
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
        let derived_dishonesty = self
            .dishonest
            .get(&decided.subject_pseudonym)
            .filter(|until| until.as_str() > decided.decision_date.as_str())
            .cloned()
            .unwrap_or_default();
        if derived_dishonesty != decided.dishonest_until {
            self.differs(
                index,
                &app,
                format!(
                    "dishonesty record used: `{}`, but the log's spot checks give `{derived_dishonesty}`",
                    decided.dishonest_until
                ),
            );
        }
        let dishonest_until =
            (!decided.dishonest_until.is_empty()).then_some(decided.dishonest_until.as_str());
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
        let mut results = Vec::with_capacity(decided.proofs.len());
        for decision in &decided.proofs {
            let Some(result) = &decision.result else {
                continue;
            };
            let Some(proof) = policy.proof(&result.proof_id).cloned() else {
                continue;
            };
            let sampled = result.outcome() == crate::pb::ProofOutcome::CommitmentRecorded
                && proof.commitment.as_ref().is_some_and(|t| {
                    crate::policy::spot_check_selected(&app, &proof.id, t.spot_check_rate)
                });
            if sampled != result.spot_check {
                self.differs(
                    index,
                    &app,
                    format!(
                        "{}: spot-check sampling recorded {}, the rule gives {sampled}",
                        result.proof_id, result.spot_check
                    ),
                );
            }
            match self.redecide(
                &proof,
                decision,
                decided.consent_to_data_queries,
                &facts,
                dishonest_until,
            ) {
                Err(what) => self.differs(index, &app, format!("{}: {what}", result.proof_id)),
                Ok(rederived) => {
                    let same = rederived.outcome == result.outcome
                        && rederived.mode == result.mode
                        && rederived.fallback_used == result.fallback_used
                        && rederived.reason == result.reason;
                    if !same {
                        self.differs(
                            index,
                            &app,
                            format!(
                                "{}: recorded {:?} ({}) but policy and answers give {:?} ({})",
                                result.proof_id,
                                result.outcome(),
                                result.reason,
                                rederived.outcome(),
                                rederived.reason
                            ),
                        );
                    }
                }
            }
            results.push(result.clone());
        }
        let status = overall_status(results.iter().map(|r| r.outcome()));
        if status as i32 != decided.status {
            self.differs(
                index,
                &app,
                format!(
                    "recorded status {:?}, proofs give {status:?}",
                    decided.status()
                ),
            );
        }
        self.keep_if_waiting(app, results);
    }

    /// Remembers an application while any verification may still arrive.
    fn keep_if_waiting(&mut self, app: String, results: Vec<ProofResult>) {
        let waiting = results.iter().any(|r| {
            matches!(
                r.outcome(),
                crate::pb::ProofOutcome::Pending | crate::pb::ProofOutcome::Overdue
            )
        });
        if waiting {
            self.pending.insert(app, results);
        }
    }

    fn overdue(&mut self, index: u64, overdue: crate::pb::VerificationOverdue) {
        let as_of = overdue.as_of_unix_ms;
        let change = LaterChange {
            application_id: &overdue.application_id,
            proof_id: &overdue.proof_id,
            ticket: &overdue.ticket,
            from: &[ProofOutcome::Pending],
            recorded: overdue.result.as_ref(),
            recorded_status: overdue.status,
        };
        self.settle_waiting(index, change, |result| {
            let early = (result.due_unix_ms > as_of)
                .then(|| "marked overdue before its deadline".to_owned());
            let judgement = overdue_verification(&result.department_id, result.due_unix_ms);
            result.outcome = judgement.outcome as i32;
            result.reason = judgement.reason;
            early
        });
    }

    /// Applies a later event to a waiting proof — a completion or an overdue
    /// mark — and checks the recorded result and status against it.
    fn settle_waiting(
        &mut self,
        index: u64,
        change: LaterChange<'_>,
        apply: impl FnOnce(&mut ProofResult) -> Option<String>,
    ) {
        let app = change.application_id.to_owned();
        let Some(mut results) = self.pending.remove(&app) else {
            return self.differs(
                index,
                &app,
                "changes an application with nothing waiting".into(),
            );
        };
        let found = results.iter_mut().find(|r| {
            r.proof_id == change.proof_id
                && r.ticket == change.ticket
                && change.from.contains(&r.outcome())
        });
        match found {
            None => self.differs(
                index,
                &app,
                format!("no waiting proof {} with that ticket", change.proof_id),
            ),
            Some(result) => {
                if let Some(problem) = apply(result) {
                    self.differs(index, &app, format!("{}: {problem}", change.proof_id));
                }
                let rederived = (result.outcome, result.reason.clone());
                if change.recorded.map(|r| (r.outcome, r.reason.clone())) != Some(rederived) {
                    self.differs(
                        index,
                        &app,
                        format!("{}: recorded result differs", change.proof_id),
                    );
                }
                let status = overall_status(results.iter().map(|r| r.outcome()));
                if status as i32 != change.recorded_status {
                    self.differs(
                        index,
                        &app,
                        format!(
                            "recorded status {}, proofs give {status:?}",
                            change.recorded_status
                        ),
                    );
                }
            }
        }
        // Kept whatever happened, so later events of the application still replay.
        self.keep_if_waiting(app, results);
    }

    fn redecide(
        &mut self,
        proof: &Proof,
        decision: &ProofDecision,
        consent: bool,
        facts: &ApplicantFacts,
        dishonest_until: Option<&str>,
    ) -> Result<ProofResult, String> {
        let mut answers = decision.answers.iter();
        let mut judge = |this: &mut Self, mode: Mode| -> Result<_, String> {
            let answer = if mode.asks_department() && consent {
                let a = answers
                    .next()
                    .ok_or_else(|| format!("no answer recorded for {}", mode.policy_word()))?;
                if mode_of(a.mode) != Some(mode) {
                    return Err("answers recorded out of order".into());
                }
                if !this.answer_signed(mode, a) {
                    return Err(format!(
                        "answer of {} does not carry its registered signature",
                        a.department_id
                    ));
                }
                Some(a)
            } else {
                None
            };
            let evidence = proof.evidence(
                mode,
                consent,
                decision.commitment.as_ref(),
                answer,
                dishonest_until,
            );
            Ok(proof.judge(mode, &evidence, facts))
        };
        let planned = judge(self, proof.mode)?;
        let fallback = match proof.fallback_after(&planned) {
            Some(mode) => Some((mode, judge(self, mode)?)),
            None => None,
        };
        if answers.next().is_some() {
            return Err("more answers recorded than the policy asks for".into());
        }
        let (mode, judgement, fallback_used) = proof.settle(planned, fallback);
        Ok(ProofResult {
            proof_id: proof.id.clone(),
            mode: mode.as_pb() as i32,
            outcome: judgement.outcome as i32,
            reason: judgement.reason,
            fallback_used,
            ..Default::default()
        })
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
        let outcome = VerificationOutcome::try_from(answer.verification).unwrap_or_default();
        let judgement = completed_verification(&answer.department_id, outcome, &answer.reason);
        let change = LaterChange {
            application_id: &completed.application_id,
            proof_id: &completed.proof_id,
            ticket: &completed.ticket,
            from: &[ProofOutcome::Pending, ProofOutcome::Overdue],
            recorded: completed.result.as_ref(),
            recorded_status: completed.status,
        };
        self.settle_waiting(index, change, |result| {
            result.outcome = judgement.outcome as i32;
            result.reason = judgement.reason;
            None
        });
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
