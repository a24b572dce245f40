//! THE decision core: one proof decided from its plan, the applicant facts,
//! the commitments and a source of department answers.
//!
//! Live decisions and replay both call [`decide_proof`]; they differ only in
//! their [`AnswerSource`]. The live source asks the departments and records
//! each answer as it came; the replay source hands back the recorded,
//! signature-checked answers in order. So a replayed decision differs from the
//! logged one only if the log, not the code path, differs.

use std::future::Future;

use super::calendar::working_days_after;
use super::evaluate::{spot_check_selected, ApplicantFacts, Evidence, Judgement};
use super::model::{Mode, Proof};
use crate::pb::{Commitment, ProofDecision, ProofOutcome, ProofResult, RecordedAnswer};

/// Where department answers come from.
pub trait AnswerSource {
    /// Why no answer could be handed back at all. Live sources record a
    /// failed call as an answer (with its `failure`) and never fail;
    /// replay fails when the log holds no matching, correctly signed answer.
    type Error;

    /// The answer of `proof`'s department in `mode` (a mode that asks a
    /// department), as it is recorded in the log.
    fn answer(
        &mut self,
        proof: &Proof,
        mode: Mode,
    ) -> impl Future<Output = Result<RecordedAnswer, Self::Error>> + Send;
}

/// What every proof of one application shares.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    pub application_id: &'a str,
    pub facts: &'a ApplicantFacts,
    pub consent_to_data_queries: bool,
    pub commitments: &'a [Commitment],
    /// The end date (YYYY-MM-DD) of the applicant's live dishonesty record.
    pub dishonest_until: Option<&'a str>,
    /// Cluster mode: whether the dishonesty records could not be checked
    /// (commitments that refuse dishonest applicants are then unavailable).
    pub dishonesty_unknown: bool,
    /// When the decision is made: pending verifications are due a number of
    /// working days after it.
    pub decided_unix_ms: i64,
}

impl ProofContext<'_> {
    fn commitment_for(&self, proof_id: &str) -> Option<&Commitment> {
        self.commitments.iter().find(|c| c.proof_id == proof_id)
    }
}

/// Applies one mode: takes the department's answer when the mode asks one
/// (and consent was given), then judges.
async fn judge_in<S: AnswerSource>(
    proof: &Proof,
    mode: Mode,
    ctx: &ProofContext<'_>,
    source: &mut S,
    answers: &mut Vec<RecordedAnswer>,
) -> Result<Judgement, S::Error> {
    let consent = ctx.consent_to_data_queries;
    let answer = if mode.asks_department() && consent {
        Some(source.answer(proof, mode).await?)
    } else {
        None
    };
    let refuses_dishonest = proof
        .commitment
        .as_ref()
        .is_some_and(|c| c.refuse_if_dishonest);
    let evidence = if mode == Mode::Commitment && ctx.dishonesty_unknown && refuses_dishonest {
        Evidence::DishonestyUnknown
    } else {
        proof.evidence(
            mode,
            consent,
            ctx.commitment_for(&proof.id),
            answer.as_ref(),
            ctx.dishonest_until,
        )
    };
    let judgement = proof.judge(mode, &evidence, ctx.facts);
    answers.extend(answer);
    Ok(judgement)
}

/// Decides one proof: its planned mode, then its fallback when the planned
/// mode could not check. The result carries every answer used, the
/// commitment recorded, the ticket and deadline of a pending verification and
/// whether the commitment is sampled for a spot check.
pub async fn decide_proof<S: AnswerSource>(
    proof: &Proof,
    ctx: &ProofContext<'_>,
    source: &mut S,
) -> Result<ProofDecision, S::Error> {
    let mut answers = Vec::new();
    let planned = judge_in(proof, proof.mode, ctx, source, &mut answers).await?;
    let fallback = match proof.fallback_after(&planned) {
        Some(mode) => Some((
            mode,
            judge_in(proof, mode, ctx, source, &mut answers).await?,
        )),
        None => None,
    };
    let (mode, judgement, fallback_used) = proof.settle(planned, fallback);
    let (ticket, due_unix_ms) = if judgement.outcome == ProofOutcome::Pending {
        let ticket = answers.last().map(|a| a.ticket.clone()).unwrap_or_default();
        let due = working_days_after(
            ctx.decided_unix_ms,
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
    Ok(ProofDecision {
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
    })
}
