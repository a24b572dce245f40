//! Gathering evidence for one proof: ask the department (or read the
//! commitment), let the policy judge, and fall back as the policy says when
//! the department could not be asked or gave no usable answer. Every answer is
//! recorded as it came, so replay can judge it again.

use ring::rand::{SecureRandom, SystemRandom};

use crate::departments::{CallFailure, DepartmentDirectory};
use crate::pb::{
    Commitment, ProofDecision, ProofOutcome, ProofResult, Purpose, QueryRequest, RecordedAnswer,
    Subject, SubmitApplicationRequest, VerifyRequest,
};
use crate::policy::calendar::working_days_after;
use crate::policy::{spot_check_selected, ApplicantFacts, Judgement, Mode, Proof};

/// What every proof of one application shares.
pub struct DecisionContext<'a> {
    pub application_id: &'a str,
    pub request: &'a SubmitApplicationRequest,
    pub subject: &'a Subject,
    pub facts: &'a ApplicantFacts,
    pub now_unix_ms: i64,
    /// The end date of a live dishonesty record of the applicant, if any.
    pub dishonest_until: Option<&'a str>,
    /// Tickets handed out but not yet in the log: a department that
    /// completes one this early is told to retry, not that it is unknown.
    pub issued_tickets: &'a std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
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

fn nonce(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = rng.fill(&mut bytes);
    hex::encode(bytes)
}

fn millis(d: std::time::Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

fn failed(department: &str, mode: Mode, nonce: String, failure: &CallFailure) -> RecordedAnswer {
    RecordedAnswer {
        department_id: department.to_owned(),
        request_nonce: nonce,
        failure: failure.to_string(),
        mode: mode.as_pb() as i32,
        ..Default::default()
    }
}

/// Asks the proof's department in `mode` and records the answer as it came.
async fn ask(
    ctx: &DecisionContext<'_>,
    proof: &Proof,
    mode: Mode,
    departments: &DepartmentDirectory,
    rng: &SystemRandom,
) -> RecordedAnswer {
    let department = proof.department.as_deref().unwrap_or_default();
    let nonce = nonce(rng);
    match mode {
        Mode::DataQuery => {
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
                    RecordedAnswer {
                        department_id: a.department_id,
                        request_nonce: a.request_nonce,
                        found: a.found,
                        fields: a.fields,
                        signature: a.signature,
                        batch: a.batch,
                        latency_ms: millis(answered.latency),
                        mode: mode.as_pb() as i32,
                        ..Default::default()
                    }
                }
                Err(failure) => failed(department, mode, nonce, &failure),
            }
        }
        Mode::DepartmentVerification => {
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
                    RecordedAnswer {
                        department_id: a.department_id,
                        request_nonce: a.request_nonce,
                        verification: a.outcome,
                        signature: a.signature,
                        batch: a.batch,
                        latency_ms: millis(answered.latency),
                        mode: mode.as_pb() as i32,
                        ticket: a.ticket,
                        reason: a.reason,
                        expected_completion_unix_ms: a.expected_completion_unix_ms,
                        ..Default::default()
                    }
                }
                Err(failure) => failed(department, mode, nonce, &failure),
            }
        }
        Mode::Abolished | Mode::Commitment => RecordedAnswer::default(),
    }
}

/// Applies one mode: asks when the mode needs a department (and consent was
/// given), then judges.
async fn apply(
    ctx: &DecisionContext<'_>,
    proof: &Proof,
    mode: Mode,
    departments: &DepartmentDirectory,
    rng: &SystemRandom,
) -> (Judgement, Option<RecordedAnswer>) {
    let consent = ctx.request.consent_to_data_queries;
    let answer = if mode.asks_department() && consent {
        Some(ask(ctx, proof, mode, departments, rng).await)
    } else {
        None
    };
    let commitment = ctx.commitment_for(&proof.id);
    let evidence = proof.evidence(
        mode,
        consent,
        commitment,
        answer.as_ref(),
        ctx.dishonest_until,
    );
    (proof.judge(mode, &evidence, ctx.facts), answer)
}

fn note_ticket(ctx: &DecisionContext<'_>, proof: &Proof, answer: Option<&RecordedAnswer>) {
    if let Some(answer) = answer.filter(|a| !a.ticket.is_empty()) {
        let key = crate::audit::ticket_key(
            proof.department.as_deref().unwrap_or_default(),
            &answer.ticket,
        );
        ctx.issued_tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
    }
}

pub async fn decide_proof(
    ctx: &DecisionContext<'_>,
    proof: &Proof,
    departments: &DepartmentDirectory,
    rng: &SystemRandom,
) -> ProofDecision {
    let (planned, first_answer) = apply(ctx, proof, proof.mode, departments, rng).await;
    note_ticket(ctx, proof, first_answer.as_ref());
    let mut answers: Vec<RecordedAnswer> = first_answer.into_iter().collect();
    let fallback = match proof.fallback_after(&planned) {
        Some(mode) => {
            let (judgement, answer) = apply(ctx, proof, mode, departments, rng).await;
            note_ticket(ctx, proof, answer.as_ref());
            answers.extend(answer);
            Some((mode, judgement))
        }
        None => None,
    };
    let (mode, judgement, fallback_used) = proof.settle(planned, fallback);
    let (ticket, due_unix_ms) = if judgement.outcome == ProofOutcome::Pending {
        let ticket = answers.last().map(|a| a.ticket.clone()).unwrap_or_default();
        let due = working_days_after(
            ctx.now_unix_ms,
            proof.verification_deadline_working_days.unwrap_or(0),
        );
        (ticket, due)
    } else {
        (String::new(), 0)
    };
    let commitment = (mode == Mode::Commitment)
        .then(|| ctx.commitment_for(&proof.id).cloned())
        .flatten();
    let spot_check = judgement.outcome == ProofOutcome::CommitmentRecorded
        && proof.commitment.as_ref().is_some_and(|terms| {
            spot_check_selected(ctx.application_id, &proof.id, terms.spot_check_rate)
        });
    ProofDecision {
        result: Some(ProofResult {
            proof_id: proof.id.clone(),
            proof_name: proof.name.clone(),
            mode: mode.as_pb() as i32,
            outcome: judgement.outcome as i32,
            department_id: proof.department.clone().unwrap_or_default(),
            legal_basis: proof.legal_basis.clone(),
            reason: judgement.reason,
            ticket,
            due_unix_ms,
            fallback_used,
            planned_mode: proof.mode.as_pb() as i32,
            spot_check,
        }),
        answers,
        commitment,
    }
}
