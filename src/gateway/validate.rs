//! Input checks of SubmitApplication. Every problem is collected with the
//! field it concerns, so a hall fixes the whole request in one go.

use std::collections::BTreeSet;
use std::fmt;

use crate::pb::{IdType, SubmitApplicationRequest};
use crate::subject::check_id;

pub const MAX_ID_LEN: usize = 64;
pub const MAX_REQUEST_ID_LEN: usize = 128;
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_COMMITMENTS: usize = 64;
/// Clock skew tolerated between a hall and the gateway for commitment times.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    fn identifier(&mut self, field: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.add(field, "is required");
        } else if value.len() > max {
            self.add(
                field,
                format!("must be at most {max} bytes, got {}", value.len()),
            );
        } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.add(field, "must not contain spaces or control characters");
        }
    }
}

/// Checks a submission; `now_unix_ms` bounds commitment acceptance times.
pub fn check_submission(
    request: &SubmitApplicationRequest,
    now_unix_ms: i64,
) -> Result<IdType, Vec<FieldViolation>> {
    let mut v = Violations::default();
    v.identifier("request_id", &request.request_id, MAX_REQUEST_ID_LEN);
    v.identifier("matter_id", &request.matter_id, MAX_ID_LEN);
    match &request.officer {
        None => v.add(
            "officer",
            "is required: every department query names the officer",
        ),
        Some(officer) => {
            v.identifier("officer.officer_id", &officer.officer_id, MAX_ID_LEN);
            v.identifier("officer.hall_id", &officer.hall_id, MAX_ID_LEN);
        }
    }
    let mut id_type = IdType::Unspecified;
    match &request.applicant {
        None => v.add("applicant", "is required"),
        Some(applicant) => {
            match IdType::try_from(applicant.id_type) {
                Ok(IdType::Unspecified) => v.add(
                    "applicant.id_type",
                    "is required (ID_TYPE_RESIDENT_ID or ID_TYPE_UNIFIED_SOCIAL_CREDIT_CODE)",
                ),
                Ok(t) => id_type = t,
                Err(_) => v.add(
                    "applicant.id_type",
                    format!("unknown value {}", applicant.id_type),
                ),
            }
            let number = &applicant.id_number;
            let checked = check_id(id_type, number);
            if number.is_empty() {
                v.add("applicant.id_number", "is required");
            } else if let Err(e) = checked {
                let standard = match id_type {
                    IdType::UnifiedSocialCreditCode => "GB 32100 credit code",
                    _ => "GB 11643 resident ID",
                };
                v.add(
                    "applicant.id_number",
                    format!("not a valid {standard}: {e}"),
                );
            }
            let name_chars = applicant.name.chars().count();
            if applicant.name.trim().is_empty() {
                v.add("applicant.name", "is required");
            } else if name_chars > MAX_NAME_CHARS {
                v.add(
                    "applicant.name",
                    format!("must be at most {MAX_NAME_CHARS} characters, got {name_chars}"),
                );
            } else if applicant.name.chars().any(char::is_control) {
                v.add("applicant.name", "must not contain control characters");
            }
        }
    }
    if request.commitments.len() > MAX_COMMITMENTS {
        v.add(
            "commitments",
            format!(
                "at most {MAX_COMMITMENTS} commitments, got {}",
                request.commitments.len()
            ),
        );
    } else {
        let mut seen = BTreeSet::new();
        for (i, c) in request.commitments.iter().enumerate() {
            let field = |f: &str| format!("commitments[{i}].{f}");
            v.identifier(&field("proof_id"), &c.proof_id, MAX_ID_LEN);
            v.identifier(&field("text_version"), &c.text_version, MAX_ID_LEN);
            if c.accepted_at_unix_ms <= 0 {
                v.add(field("accepted_at_unix_ms"), "is required");
            } else if c.accepted_at_unix_ms > now_unix_ms + MAX_CLOCK_SKEW_MS {
                v.add(field("accepted_at_unix_ms"), "lies in the future");
            }
            if !seen.insert(&c.proof_id) {
                v.add(
                    field("proof_id"),
                    format!("proof `{}` has two commitments", c.proof_id),
                );
            }
        }
    }
    if v.0.is_empty() {
        Ok(id_type)
    } else {
        Err(v.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Commitment, Officer, Subject};

    fn good() -> SubmitApplicationRequest {
        SubmitApplicationRequest {
            request_id: "req-1".into(),
            matter_id: "elderly-subsidy".into(),
            officer: Some(Officer {
                officer_id: "officer-7".into(),
                hall_id: "hall-wucheng".into(),
            }),
            applicant: Some(Subject {
                id_type: IdType::ResidentId as i32,
                id_number: "330702194005050628".into(),
                name: "陈秀英".into(),
            }),
            commitments: vec![Commitment {
                proof_id: "income-statement".into(),
                text_version: "income-v1".into(),
                accepted_at_unix_ms: 1_000,
            }],
            consent_to_data_queries: true,
        }
    }

    #[test]
    fn a_well_formed_request_passes() {
        assert_eq!(check_submission(&good(), 10_000), Ok(IdType::ResidentId));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut r = good();
        r.request_id.clear();
        r.applicant.as_mut().unwrap().id_number = "330702194005050621".into();
        r.applicant.as_mut().unwrap().name = "x".repeat(65);
        r.commitments.push(r.commitments[0].clone());
        let fields: Vec<String> = check_submission(&r, 10_000)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "request_id",
                "applicant.id_number",
                "applicant.name",
                "commitments[1].proof_id"
            ]
        );
    }

    #[test]
    fn unknown_enum_values_and_missing_parts_are_refused() {
        let mut r = good();
        r.applicant.as_mut().unwrap().id_type = 42;
        r.officer = None;
        let errors = check_submission(&r, 10_000).unwrap_err();
        assert!(errors
            .iter()
            .any(|e| e.field == "applicant.id_type" && e.description.contains("42")));
        assert!(errors.iter().any(|e| e.field == "officer"));
    }

    #[test]
    fn error_messages_never_echo_the_id_number() {
        let mut r = good();
        r.applicant.as_mut().unwrap().id_number = "330702194005050621".into();
        for e in check_submission(&r, 10_000).unwrap_err() {
            assert!(!e.to_string().contains("330702194005050621"));
        }
    }
}
