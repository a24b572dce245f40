//! Deciding one proof from the evidence gathered for it, and the overall
//! status from the proofs. The gateway gathers evidence (I/O); this decides.

use std::collections::HashMap;

use cel::Value;

use super::condition::ConditionInputs;
use super::model::{Matter, Mode, PolicySet, Proof, RequiredProof};
use crate::pb::{
    ApplicationStatus, Commitment, FieldValue, IdType, ProofOutcome, RecordedAnswer,
    VerificationOutcome,
};
use crate::subject::check_resident_id;

/// What a condition may know about the applicant, derived from the ID number
/// and the decision date alone (no other personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicantFacts {
    pub id_type: IdType,
    pub age: Option<i64>,
    pub male: Option<bool>,
    pub region: Option<u32>,
}

impl ApplicantFacts {
    /// `decision_date` is (year, month, day).
    pub fn derive(id_type: IdType, id_number: &str, decision_date: (u16, u8, u8)) -> Self {
        let resident = (id_type == IdType::ResidentId)
            .then(|| check_resident_id(id_number).ok())
            .flatten();
        Self {
            id_type,
            age: resident.map(|r| r.age_on(decision_date.0, decision_date.1, decision_date.2)),
            male: resident.map(|r| r.male),
            region: resident.map(|r| r.region),
        }
    }

    pub fn to_pb(&self) -> crate::pb::ApplicantFacts {
        crate::pb::ApplicantFacts {
            id_type: self.id_type as i32,
            age: self.age,
            male: self.male,
            region: self.region,
        }
    }

    pub fn from_pb(facts: &crate::pb::ApplicantFacts) -> Self {
        Self {
            id_type: IdType::try_from(facts.id_type).unwrap_or_default(),
            age: facts.age,
            male: facts.male,
            region: facts.region,
        }
    }

    fn as_value(&self) -> Value {
        let mut map: HashMap<String, Value> = HashMap::new();
        let id_type = match self.id_type {
            IdType::ResidentId => "resident_id",
            IdType::UnifiedSocialCreditCode => "unified_social_credit_code",
            IdType::Unspecified => "unspecified",
        };
        map.insert("id_type".into(), Value::from(id_type.to_owned()));
        if let Some(age) = self.age {
            map.insert("age".into(), Value::Int(age));
        }
        if let Some(male) = self.male {
            let sex = if male { "male" } else { "female" };
            map.insert("sex".into(), Value::from(sex.to_owned()));
        }
        if let Some(region) = self.region {
            map.insert("region".into(), Value::Int(i64::from(region)));
        }
        Value::from(map)
    }
}

/// Longest ticket a department may hand out (it must be able to complete it).
pub const MAX_TICKET_LEN: usize = 128;

/// What was gathered for one proof in one mode.
#[derive(Debug, Clone)]
pub enum Evidence<'a> {
    /// Abolished proofs need nothing.
    Nothing,
    /// The applicant's commitment for this proof, if any.
    Commitment(Option<&'a Commitment>),
    /// The applicant has a live dishonesty record until this date (YYYY-MM-DD).
    Dishonest { until: &'a str },
    /// Cluster mode: the node cannot be sure its copy of the cluster's
    /// dishonesty records is current, so a commitment that refuses dishonest
    /// applicants cannot be accepted (unavailable; the fallback may apply).
    DishonestyUnknown,
    /// The applicant did not consent to department queries.
    NoConsent,
    /// A department answered a query; `fields` already trimmed to the policy's.
    QueryAnswer {
        found: bool,
        fields: &'a [FieldValue],
    },
    /// A department answered a verification request.
    VerifyAnswer {
        outcome: VerificationOutcome,
        reason: &'a str,
    },
    /// No usable answer: down, too slow, malformed, badly signed, unknown department.
    Unavailable { why: &'a str },
}

impl<'a> Evidence<'a> {
    /// What a recorded department answer says for `mode` — the one reading
    /// both live decisions and replay use.
    pub fn from_answer(mode: Mode, answer: &'a RecordedAnswer) -> Self {
        if !answer.failure.is_empty() {
            return Evidence::Unavailable {
                why: &answer.failure,
            };
        }
        match mode {
            Mode::DataQuery => Evidence::QueryAnswer {
                found: answer.found,
                fields: &answer.fields,
            },
            Mode::DepartmentVerification => {
                let outcome =
                    VerificationOutcome::try_from(answer.verification).unwrap_or_default();
                if outcome == VerificationOutcome::Pending && answer.ticket.is_empty() {
                    Evidence::Unavailable {
                        why: "answered pending without a ticket",
                    }
                } else if outcome == VerificationOutcome::Pending
                    && (answer.ticket.len() > MAX_TICKET_LEN
                        || answer.ticket.chars().any(char::is_control))
                {
                    Evidence::Unavailable {
                        why: "answered pending with a malformed ticket",
                    }
                } else {
                    Evidence::VerifyAnswer {
                        outcome,
                        reason: &answer.reason,
                    }
                }
            }
            Mode::Abolished | Mode::Commitment => Evidence::Unavailable {
                why: "a department answer was recorded for a mode that asks no department",
            },
        }
    }
}

/// Longest department free text (a verification's reason) quoted in a judgement.
pub const MAX_REASON_CHARS: usize = 256;

/// Department-supplied text made fit to quote to the hall and in the log:
/// control characters dropped, at most `max_chars` characters (cut on a
/// character boundary, marked with an ellipsis). The signed original stays
/// in the recorded answer, so replay checks the signature and quotes it the
/// same way.
pub fn quoted(text: &str, max_chars: usize) -> String {
    let mut clean = text.chars().filter(|c| !c.is_control());
    let mut out: String = clean.by_ref().take(max_chars).collect();
    if clean.next().is_some() {
        out.push('…');
    }
    out
}

/// The decision on one proof in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub outcome: ProofOutcome,
    pub reason: String,
}

impl Judgement {
    fn new(outcome: ProofOutcome, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            reason: reason.into(),
        }
    }

    /// Outcomes that mean "we could not check", for which a fallback mode applies.
    pub fn allows_fallback(&self) -> bool {
        matches!(
            self.outcome,
            ProofOutcome::Unavailable
                | ProofOutcome::ConsentMissing
                | ProofOutcome::CommitmentRefused
        )
    }
}

impl PolicySet {
    /// The proofs a matter needs for this applicant, in catalog order.
    /// A `when` condition that cannot be evaluated requires the proof: asking
    /// for too much is recoverable at the hall, skipping a check is not.
    pub fn required_proofs<'m>(
        &self,
        matter: &'m Matter,
        applicant: &ApplicantFacts,
    ) -> Vec<&'m RequiredProof> {
        let applicant_value = applicant.as_value();
        matter
            .proofs
            .iter()
            .filter(|required| match &required.when {
                None => true,
                Some(condition) => condition
                    .evaluate(&ConditionInputs {
                        applicant: Some(applicant_value.clone()),
                        ..Default::default()
                    })
                    .unwrap_or(true),
            })
            .collect()
    }
}

impl Proof {
    /// The evidence for `mode` from what the applicant gave and, for modes
    /// that ask a department, its answer (None: nobody was asked).
    pub fn evidence<'a>(
        &self,
        mode: Mode,
        consent: bool,
        commitment: Option<&'a Commitment>,
        answer: Option<&'a RecordedAnswer>,
        dishonest_until: Option<&'a str>,
    ) -> Evidence<'a> {
        let refuses = self
            .commitment
            .as_ref()
            .is_some_and(|c| c.refuse_if_dishonest);
        match mode {
            Mode::Abolished => Evidence::Nothing,
            Mode::Commitment => match dishonest_until {
                Some(until) if refuses => Evidence::Dishonest { until },
                _ => Evidence::Commitment(commitment),
            },
            _ if !consent => Evidence::NoConsent,
            _ => match answer {
                Some(answer) => Evidence::from_answer(mode, answer),
                None => Evidence::Unavailable {
                    why: "no department answer was recorded",
                },
            },
        }
    }

    /// The mode to fall back to after `planned`, if the policy says so.
    pub fn fallback_after(&self, planned: &Judgement) -> Option<Mode> {
        self.fallback.filter(|_| planned.allows_fallback())
    }

    /// The final mode and judgement, and whether the fallback was used.
    pub fn settle(
        &self,
        planned: Judgement,
        fallback: Option<(Mode, Judgement)>,
    ) -> (Mode, Judgement, bool) {
        match fallback {
            None => (self.mode, planned, false),
            Some((mode, second)) => (
                mode,
                Judgement {
                    outcome: second.outcome,
                    reason: format!(
                        "{}; fell back to {}: {}",
                        planned.reason,
                        mode.policy_word(),
                        second.reason
                    ),
                },
                true,
            ),
        }
    }

    /// Judges this proof in `mode` (its own or its fallback) from the evidence.
    pub fn judge(
        &self,
        mode: Mode,
        evidence: &Evidence<'_>,
        applicant: &ApplicantFacts,
    ) -> Judgement {
        use ProofOutcome as O;
        match (mode, evidence) {
            (Mode::Abolished, _) => Judgement::new(
                O::Waived,
                format!("not required: abolished ({})", self.legal_basis),
            ),
            (Mode::Commitment, Evidence::Commitment(given)) => {
                let Some(terms) = &self.commitment else {
                    return Judgement::new(
                        O::CommitmentMissing,
                        "policy defines no commitment text",
                    );
                };
                match given {
                    Some(c) if c.text_version == terms.version => Judgement::new(
                        O::CommitmentRecorded,
                        format!("applicant committed to text {}", terms.version),
                    ),
                    Some(c) => Judgement::new(
                        O::CommitmentMissing,
                        format!(
                            "commitment was given to text version `{}`, but version `{}` is current: have the applicant read and accept: {}",
                            c.text_version, terms.version, terms.text
                        ),
                    ),
                    None => Judgement::new(
                        O::CommitmentMissing,
                        format!(
                            "the applicant must accept commitment text {}: {}",
                            terms.version, terms.text
                        ),
                    ),
                }
            }
            (_, Evidence::Dishonest { until }) => Judgement::new(
                O::CommitmentRefused,
                format!(
                    "a commitment is not accepted from this applicant: a false commitment is on record until {until}"
                ),
            ),
            (_, Evidence::DishonestyUnknown) => Judgement::new(
                O::Unavailable,
                "a commitment is not accepted now: this node cannot be sure its copy of the cluster's dishonesty records is current (etcd unreachable or its watch broken); retry later or on another node",
            ),
            (_, Evidence::NoConsent) => Judgement::new(
                O::ConsentMissing,
                "the applicant has not consented to data queries for this application",
            ),
            (_, Evidence::Unavailable { why }) => Judgement::new(
                O::Unavailable,
                format!(
                    "{} could not be checked: {why}",
                    self.department.as_deref().unwrap_or("department")
                ),
            ),
            (Mode::DataQuery, Evidence::QueryAnswer { found, fields }) => {
                let Some(condition) = &self.condition else {
                    return Judgement::new(O::Unavailable, "policy defines no condition");
                };
                if !found {
                    return Judgement::new(
                        O::RecordNotFound,
                        format!(
                            "{} holds no record of the applicant for query `{}`",
                            self.department.as_deref().unwrap_or("department"),
                            self.query.as_deref().unwrap_or("")
                        ),
                    );
                }
                let inputs = ConditionInputs {
                    record: Some(fields),
                    found: Some(*found),
                    applicant: Some(applicant.as_value()),
                };
                match condition.evaluate(&inputs) {
                    Ok(true) => Judgement::new(
                        O::ConditionMet,
                        format!("condition `{}` holds", condition.source()),
                    ),
                    Ok(false) => Judgement::new(
                        O::ConditionNotMet,
                        format!("condition `{}` does not hold", condition.source()),
                    ),
                    // The answer lacked a field or had the wrong type: the
                    // department's answer is unusable, which is not a "no".
                    Err(e) => Judgement::new(O::Unavailable, format!("unusable answer: {e}")),
                }
            }
            (Mode::DepartmentVerification, Evidence::VerifyAnswer { outcome, reason }) => {
                let department = self.department.as_deref().unwrap_or("department");
                match outcome {
                    VerificationOutcome::Verified => {
                        Judgement::new(O::Verified, format!("verified by {department}"))
                    }
                    VerificationOutcome::NotVerified => Judgement::new(
                        O::NotVerified,
                        format!(
                            "{department} did not verify: {}",
                            quoted(reason, MAX_REASON_CHARS)
                        ),
                    ),
                    VerificationOutcome::Pending => Judgement::new(
                        O::Pending,
                        format!(
                            "{department} is verifying (deadline {} working days)",
                            self.verification_deadline_working_days.unwrap_or(0)
                        ),
                    ),
                    VerificationOutcome::Unspecified => Judgement::new(
                        O::Unavailable,
                        format!("{department} gave no verification outcome"),
                    ),
                }
            }
            (mode, evidence) => Judgement::new(
                O::Unavailable,
                format!(
                    "internal mismatch: {} evidence for mode {}",
                    evidence_kind(evidence),
                    mode.policy_word()
                ),
            ),
        }
    }
}

fn evidence_kind(evidence: &Evidence<'_>) -> &'static str {
    match evidence {
        Evidence::Nothing => "no",
        Evidence::Commitment(_) => "commitment",
        Evidence::Dishonest { .. } => "dishonesty",
        Evidence::DishonestyUnknown => "unknown-dishonesty",
        Evidence::NoConsent => "no-consent",
        Evidence::QueryAnswer { .. } => "query",
        Evidence::VerifyAnswer { .. } => "verification",
        Evidence::Unavailable { .. } => "unavailable",
    }
}

/// Whether a recorded commitment is sampled for a later spot check: a hash
/// of the application and proof ids against the rate. The application id is
/// random and unknown before the decision, so nobody chooses whom to check,
/// and anyone can recompute the choice from the log.
pub fn spot_check_selected(application_id: &str, proof_id: &str, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("proofgate spot check\n{application_id}\n{proof_id}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // Uniform in [0, 1).
    let draw = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    draw < rate
}

/// The judgement on a pending verification the department has finished.
pub fn completed_verification(
    department: &str,
    outcome: VerificationOutcome,
    reason: &str,
) -> Judgement {
    match outcome {
        VerificationOutcome::Verified => {
            Judgement::new(ProofOutcome::Verified, format!("verified by {department}"))
        }
        _ => Judgement::new(
            ProofOutcome::NotVerified,
            format!(
                "{department} did not verify: {}",
                quoted(reason, MAX_REASON_CHARS)
            ),
        ),
    }
}

/// The judgement on a pending verification whose deadline has passed: the
/// department may still complete it.
pub fn overdue_verification(department: &str, due_unix_ms: i64) -> Judgement {
    Judgement::new(
        ProofOutcome::Overdue,
        format!(
            "{department} did not finish the verification by its deadline ({} 24:00 CST); the department may still complete it",
            super::calendar::format_date(super::calendar::civil_date_cst(due_unix_ms.saturating_sub(1)))
        ),
    )
}

/// The application's status from its proofs' outcomes. A failed check
/// decides (rejected); then anything the applicant must do; then waiting.
pub fn overall_status(outcomes: impl IntoIterator<Item = ProofOutcome>) -> ApplicationStatus {
    use ProofOutcome as O;
    let mut status = ApplicationStatus::Complete;
    let rank = |s: ApplicationStatus| match s {
        ApplicationStatus::Complete => 0,
        ApplicationStatus::Pending => 1,
        ApplicationStatus::NeedsApplicantAction => 2,
        ApplicationStatus::Rejected => 3,
        ApplicationStatus::Unspecified => 4,
    };
    for outcome in outcomes {
        let this = match outcome {
            O::Waived | O::CommitmentRecorded | O::ConditionMet | O::Verified => {
                ApplicationStatus::Complete
            }
            O::Pending => ApplicationStatus::Pending,
            O::CommitmentMissing
            | O::ConsentMissing
            | O::Unavailable
            | O::Overdue
            | O::CommitmentRefused => ApplicationStatus::NeedsApplicantAction,
            O::ConditionNotMet | O::RecordNotFound | O::NotVerified => ApplicationStatus::Rejected,
            // Never produced by a decision; refuse to call it complete.
            O::Unspecified => ApplicationStatus::Unspecified,
        };
        if rank(this) > rank(status) {
            status = this;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoted_drops_control_characters_and_cuts_on_a_character_boundary() {
        assert_eq!(quoted("plain", 64), "plain");
        assert_eq!(quoted("a\nb\tc\u{7f}d", 64), "abcd");
        assert_eq!(quoted("民政局民政局", 3), "民政局…");
        assert_eq!(quoted("", 3), "");
        assert_eq!(quoted("abc", 3), "abc");
    }

    #[test]
    fn a_department_reason_reaches_the_judgement_bounded_and_clean() {
        let long = format!("line one\nline two {}", "字".repeat(1_000));
        let judgement =
            completed_verification("civil-affairs", VerificationOutcome::NotVerified, &long);
        assert!(!judgement.reason.contains('\n'));
        assert!(judgement.reason.chars().count() <= MAX_REASON_CHARS + 40);
        assert!(judgement.reason.ends_with('…'));
    }

    const ALL: [ProofOutcome; 12] = [
        ProofOutcome::Waived,
        ProofOutcome::CommitmentRecorded,
        ProofOutcome::CommitmentMissing,
        ProofOutcome::ConditionMet,
        ProofOutcome::ConditionNotMet,
        ProofOutcome::RecordNotFound,
        ProofOutcome::Verified,
        ProofOutcome::NotVerified,
        ProofOutcome::Pending,
        ProofOutcome::Unavailable,
        ProofOutcome::ConsentMissing,
        ProofOutcome::Overdue,
    ];

    fn is_good(o: ProofOutcome) -> bool {
        matches!(
            o,
            ProofOutcome::Waived
                | ProofOutcome::CommitmentRecorded
                | ProofOutcome::ConditionMet
                | ProofOutcome::Verified
        )
    }

    proptest! {
        #[test]
        fn complete_only_when_every_proof_is_settled_in_favour(
            picks in proptest::collection::vec(0usize..ALL.len(), 0..12)
        ) {
            let outcomes: Vec<_> = picks.iter().map(|&i| ALL[i]).collect();
            let status = overall_status(outcomes.iter().copied());
            prop_assert_eq!(
                status == ApplicationStatus::Complete,
                outcomes.iter().all(|&o| is_good(o))
            );
            let any_failed = outcomes.iter().any(|o| matches!(
                o,
                ProofOutcome::ConditionNotMet | ProofOutcome::RecordNotFound | ProofOutcome::NotVerified
            ));
            prop_assert_eq!(status == ApplicationStatus::Rejected, any_failed);
            if status == ApplicationStatus::Pending {
                prop_assert!(outcomes.contains(&ProofOutcome::Pending));
            }
            // Order of proofs never changes the status.
            let mut reversed = outcomes.clone();
            reversed.reverse();
            prop_assert_eq!(overall_status(reversed), status);
        }
    }

    fn query_proof(condition: &str) -> Proof {
        let env = std::sync::Arc::new(cel::Env::stdlib());
        Proof {
            id: "hpf-deposit".into(),
            name: "HPF".into(),
            mode: Mode::DataQuery,
            fallback: None,
            department: Some("provident-fund".into()),
            query: Some("hpf_account".into()),
            fields: vec!["status".into(), "months_paid".into()],
            condition: Some(
                super::super::condition::Condition::compile(
                    condition,
                    &["record", "found", "applicant"],
                    &env,
                )
                .unwrap(),
            ),
            claim: None,
            legal_basis: "rule".into(),
            commitment: None,
            call_timeout: std::time::Duration::from_secs(1),
            verification_deadline_working_days: Some(3),
        }
    }

    fn field(name: &str, value: crate::pb::field_value::Value) -> FieldValue {
        FieldValue {
            name: name.into(),
            value: Some(value),
        }
    }

    fn facts() -> ApplicantFacts {
        ApplicantFacts::derive(IdType::ResidentId, "330702199001011237", (2026, 11, 26))
    }

    proptest! {
        #[test]
        fn a_data_query_judgement_is_exactly_its_condition(
            status in prop_oneof![Just("normal"), Just("frozen"), Just("closed")],
            months in -50i64..500,
        ) {
            use crate::pb::field_value::Value as V;
            let proof = query_proof(r#"record.status == "normal" && record.months_paid >= 6"#);
            let record = [field("status", V::Text(status.into())), field("months_paid", V::Integer(months))];
            let judged = proof.judge(
                Mode::DataQuery,
                &Evidence::QueryAnswer { found: true, fields: &record },
                &facts(),
            );
            let expected = if status == "normal" && months >= 6 {
                ProofOutcome::ConditionMet
            } else {
                ProofOutcome::ConditionNotMet
            };
            prop_assert_eq!(judged.outcome, expected);
        }

        #[test]
        fn failures_never_judge_positive_in_any_mode(
            mode in prop_oneof![
                Just(Mode::DataQuery),
                Just(Mode::DepartmentVerification),
            ],
            why in "\\PC{0,30}",
            consent in any::<bool>(),
        ) {
            let proof = query_proof("true");
            let evidence = if consent { Evidence::Unavailable { why: &why } } else { Evidence::NoConsent };
            let judged = proof.judge(mode, &evidence, &facts());
            prop_assert!(judged.allows_fallback());
            prop_assert!(!is_good(judged.outcome));
        }

        #[test]
        fn a_record_with_missing_or_mistyped_fields_is_unusable_not_false(
            months_as_text in any::<bool>(),
        ) {
            use crate::pb::field_value::Value as V;
            let proof = query_proof(r#"record.status == "normal" && record.months_paid >= 6"#);
            let record = if months_as_text {
                vec![field("status", V::Text("normal".into())), field("months_paid", V::Text("12".into()))]
            } else {
                vec![field("status", V::Text("normal".into()))]
            };
            let judged = proof.judge(
                Mode::DataQuery,
                &Evidence::QueryAnswer { found: true, fields: &record },
                &facts(),
            );
            prop_assert_eq!(judged.outcome, ProofOutcome::Unavailable);
        }
    }

    #[test]
    fn a_record_not_found_is_a_rejection_whatever_the_condition() {
        let proof = query_proof("true");
        let judged = proof.judge(
            Mode::DataQuery,
            &Evidence::QueryAnswer {
                found: false,
                fields: &[],
            },
            &facts(),
        );
        assert_eq!(judged.outcome, ProofOutcome::RecordNotFound);
    }

    #[test]
    fn unavailable_never_becomes_complete() {
        assert_eq!(
            overall_status([ProofOutcome::Verified, ProofOutcome::Unavailable]),
            ApplicationStatus::NeedsApplicantAction
        );
    }

    #[test]
    fn applicant_facts_come_from_the_id_number_and_decision_date() {
        let facts =
            ApplicantFacts::derive(IdType::ResidentId, "11010519491231002X", (2026, 11, 26));
        assert_eq!(facts.age, Some(76));
        assert_eq!(facts.male, Some(false));
        assert_eq!(facts.region, Some(110105));
        let org = ApplicantFacts::derive(
            IdType::UnifiedSocialCreditCode,
            "91110000600037341L",
            (2026, 1, 1),
        );
        assert_eq!(org.age, None);
    }
}
