//! Gathering evidence for one proof: ask the department (or read the
//! commitment), let the policy judge, and fall back as the policy says when
//! the department could not be asked or gave no usable answer.

use ring::rand::{SecureRandom, SystemRandom};

use super::calendar::working_days_after;
use crate::departments::{CallFailure, DepartmentDirectory};
use crate::pb::{
    Commitment, ProofDecision, ProofOutcome, ProofResult, Purpose, QueryRequest, RecordedAnswer,
    Subject, SubmitApplicationRequest, VerificationOutcome, VerifyRequest,
};
use crate::policy::{ApplicantFacts, Evidence, Judgement, Mode, Proof};

/// What every proof of one application shares.
pub struct DecisionContext<'a> {
    pub application_id: &'a str,
    pub request: &'a SubmitApplicationRequest,
    pub subject: &'a Subject,
    pub facts: &'a ApplicantFacts,
    pub now_unix_ms: i64,
}

impl DecisionContext<'_> {
    fn commitment_for(&self, proof_id: &str) -> Option<&Commitment> {
        self.request
            .commitments
            .iter()
            .find(|c| c.proof_id == proof_id)
    }

    fn purpose(&self, proof: &Proof) -> Purpose {
        let officer = self.request.officer.clone().unwrap_or_default();
        Purpose {
            application_id: self.application_id.to_owned(),
            matter_id: self.request.matter_id.clone(),
            proof_id: proof.id.clone(),
            officer_id: officer.officer_id,
            hall_id: officer.hall_id,
            legal_basis: proof.legal_basis.clone(),
        }
    }
}

/// The result of applying one mode.
struct ModeOutcome {
    judgement: Judgement,
    answer: Option<RecordedAnswer>,
    ticket: String,
    due_unix_ms: i64,
}

fn nonce(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = rng.fill(&mut bytes);
    hex::encode(bytes)
}

fn failed_answer(
    department: &str,
    mode: Mode,
    nonce: String,
    failure: &CallFailure,
) -> RecordedAnswer {
    RecordedAnswer {
        department_id: department.to_owned(),
        request_nonce: nonce,
        failure: failure.to_string(),
        mode: mode.as_pb() as i32,
        ..Default::default()
    }
}

pub async fn decide_proof(
    ctx: &DecisionContext<'_>,
    proof: &Proof,
    departments: &DepartmentDirectory,
    rng: &SystemRandom,
) -> ProofDecision {
    let planned = apply_mode(ctx, proof, proof.mode, departments, rng).await;
    let mut answers: Vec<RecordedAnswer> = planned.answer.clone().into_iter().collect();
    let (mode, outcome, fallback_used) = match proof.fallback {
        Some(fallback) if planned.judgement.allows_fallback() => {
            let second = apply_mode(ctx, proof, fallback, departments, rng).await;
            answers.extend(second.answer.clone());
            let reason = format!(
                "{}; fell back to {}: {}",
                planned.judgement.reason,
                fallback.policy_word(),
                second.judgement.reason
            );
            (
                fallback,
                ModeOutcome {
                    judgement: Judgement {
                        outcome: second.judgement.outcome,
                        reason,
                    },
                    ..second
                },
                true,
            )
        }
        _ => (proof.mode, planned, false),
    };
    let commitment = (mode == Mode::Commitment)
        .then(|| ctx.commitment_for(&proof.id).cloned())
        .flatten();
    ProofDecision {
        result: Some(ProofResult {
            proof_id: proof.id.clone(),
            proof_name: proof.name.clone(),
            mode: mode.as_pb() as i32,
            outcome: outcome.judgement.outcome as i32,
            department_id: proof.department.clone().unwrap_or_default(),
            legal_basis: proof.legal_basis.clone(),
            reason: outcome.judgement.reason,
            ticket: outcome.ticket,
            due_unix_ms: outcome.due_unix_ms,
            fallback_used,
            planned_mode: proof.mode.as_pb() as i32,
        }),
        answers,
        commitment,
    }
}

async fn apply_mode(
    ctx: &DecisionContext<'_>,
    proof: &Proof,
    mode: Mode,
    departments: &DepartmentDirectory,
    rng: &SystemRandom,
) -> ModeOutcome {
    let judged = |evidence: Evidence<'_>, answer: Option<RecordedAnswer>| ModeOutcome {
        judgement: proof.judge(mode, &evidence, ctx.facts),
        answer,
        ticket: String::new(),
        due_unix_ms: 0,
    };
    if mode.asks_department() && !ctx.request.consent_to_data_queries {
        return judged(Evidence::NoConsent, None);
    }
    let department = proof.department.as_deref().unwrap_or_default();
    match mode {
        Mode::Abolished => judged(Evidence::Nothing, None),
        Mode::Commitment => judged(Evidence::Commitment(ctx.commitment_for(&proof.id)), None),
        Mode::DataQuery => {
            let nonce = nonce(rng);
            let request = QueryRequest {
                request_nonce: nonce.clone(),
                query: proof.query.clone().unwrap_or_default(),
                subject: Some(ctx.subject.clone()),
                fields: proof.fields.clone(),
                purpose: Some(ctx.purpose(proof)),
            };
            match departments
                .query(department, request, proof.call_timeout)
                .await
            {
                Ok(answered) => {
                    let a = answered.answer;
                    let recorded = RecordedAnswer {
                        department_id: a.department_id.clone(),
                        request_nonce: a.request_nonce.clone(),
                        found: a.found,
                        fields: a.fields.clone(),
                        signature: a.signature.clone(),
                        latency_ms: answered.latency.as_millis().min(u32::MAX as u128) as u32,
                        mode: mode.as_pb() as i32,
                        ..Default::default()
                    };
                    judged(
                        Evidence::QueryAnswer {
                            found: a.found,
                            fields: &a.fields,
                        },
                        Some(recorded),
                    )
                }
                Err(failure) => judged(
                    Evidence::Unavailable {
                        why: &failure.to_string(),
                    },
                    Some(failed_answer(department, mode, nonce, &failure)),
                ),
            }
        }
        Mode::DepartmentVerification => {
            let nonce = nonce(rng);
            let request = VerifyRequest {
                request_nonce: nonce.clone(),
                proof_id: proof.id.clone(),
                subject: Some(ctx.subject.clone()),
                claim: proof.claim.clone().unwrap_or_else(|| proof.name.clone()),
                purpose: Some(ctx.purpose(proof)),
            };
            match departments
                .verify(department, request, proof.call_timeout)
                .await
            {
                Ok(answered) => {
                    let a = answered.answer;
                    let outcome = VerificationOutcome::try_from(a.outcome)
                        .unwrap_or(VerificationOutcome::Unspecified);
                    let recorded = RecordedAnswer {
                        department_id: a.department_id.clone(),
                        request_nonce: a.request_nonce.clone(),
                        verification: outcome as i32,
                        signature: a.signature.clone(),
                        latency_ms: answered.latency.as_millis().min(u32::MAX as u128) as u32,
                        mode: mode.as_pb() as i32,
                        ticket: a.ticket.clone(),
                        ..Default::default()
                    };
                    if outcome == VerificationOutcome::Pending && a.ticket.is_empty() {
                        let failure = CallFailure::BadAnswer("pending without a ticket".into());
                        return judged(
                            Evidence::Unavailable {
                                why: &failure.to_string(),
                            },
                            Some(recorded),
                        );
                    }
                    let mut result = judged(
                        Evidence::VerifyAnswer {
                            outcome,
                            reason: &a.reason,
                        },
                        Some(recorded),
                    );
                    if result.judgement.outcome == ProofOutcome::Pending {
                        result.ticket = a.ticket;
                        result.due_unix_ms = working_days_after(
                            ctx.now_unix_ms,
                            proof.verification_deadline_working_days.unwrap_or(0),
                        );
                    }
                    result
                }
                Err(failure) => judged(
                    Evidence::Unavailable {
                        why: &failure.to_string(),
                    },
                    Some(failed_answer(department, mode, nonce, &failure)),
                ),
            }
        }
    }
}
