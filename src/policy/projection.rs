//! THE projection: an application's state is the fold of its log events.
//!
//! [`apply`] is the one place that says what an event does to an
//! application. Submission, completion, the overdue sweep, replay, statistics
//! and `audit rebuild` all call it, so "application state can be rebuilt from
//! the log" holds by construction. It derives the changed proof and the
//! overall status from the event's inputs; the result and status an event
//! records are what the live path derived with this same function, and
//! replay checks them against it.

use thiserror::Error;

use super::evaluate::{completed_verification, overall_status, overdue_verification};
use crate::pb::{audit_entry::Event, Application, ProofOutcome, ProofResult, VerificationOutcome};

/// Why an event does not apply to an application.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    #[error("the event is about application {event}, not {application}")]
    OtherApplication { application: String, event: String },
    #[error("no waiting proof {proof_id} with ticket {ticket}")]
    NothingWaiting { proof_id: String, ticket: String },
    #[error("{proof_id} marked overdue at {as_of_unix_ms} before its deadline {due_unix_ms}")]
    NotYetDue {
        proof_id: String,
        as_of_unix_ms: i64,
        due_unix_ms: i64,
    },
    #[error("the completion records no department answer")]
    NoAnswer,
    #[error("the event does not change an application")]
    NotAnApplicationEvent,
}

/// Whether the application still waits on a department (a pending or overdue
/// verification may still be completed).
pub fn is_waiting(application: &Application) -> bool {
    application
        .proofs
        .iter()
        .any(|p| matches!(p.outcome(), ProofOutcome::Pending | ProofOutcome::Overdue))
}

fn check_id(application: &Application, event_application_id: &str) -> Result<(), ApplyError> {
    if application.application_id == event_application_id {
        Ok(())
    } else {
        Err(ApplyError::OtherApplication {
            application: application.application_id.clone(),
            event: event_application_id.to_owned(),
        })
    }
}

fn waiting_proof<'a>(
    application: &'a mut Application,
    proof_id: &str,
    ticket: &str,
    from: &[ProofOutcome],
) -> Result<&'a mut ProofResult, ApplyError> {
    application
        .proofs
        .iter_mut()
        .find(|p| p.proof_id == proof_id && p.ticket == ticket && from.contains(&p.outcome()))
        .ok_or_else(|| ApplyError::NothingWaiting {
            proof_id: proof_id.to_owned(),
            ticket: ticket.to_owned(),
        })
}

/// After one proof changed at `at`: the overall status follows from the
/// proofs; returns the changed proof.
fn restate(application: &mut Application, changed: ProofResult, at: i64) -> ProofResult {
    application.status = overall_status(application.proofs.iter().map(|p| p.outcome())) as i32;
    application.updated_unix_ms = at;
    changed
}

/// Applies one event to an application and returns the proof it changed
/// (`None` for a decision, which sets the whole application). On error the
/// application is unchanged.
pub fn apply(
    application: &mut Application,
    event: &Event,
) -> Result<Option<ProofResult>, ApplyError> {
    match event {
        Event::ApplicationDecided(decided) => {
            let proofs: Vec<ProofResult> = decided
                .proofs
                .iter()
                .filter_map(|p| p.result.clone())
                .collect();
            *application = Application {
                application_id: decided.application_id.clone(),
                request_id: decided.request_id.clone(),
                matter_id: decided.matter_id.clone(),
                status: overall_status(proofs.iter().map(|p| p.outcome())) as i32,
                proofs,
                policy_version: decided.policy_version.clone(),
                created_unix_ms: decided.decided_unix_ms,
                updated_unix_ms: decided.decided_unix_ms,
                receipt: None,
                officer_id: decided.officer_id.clone(),
                hall_id: decided.hall_id.clone(),
                caller: decided.caller.clone(),
                served_from_mirror: None,
            };
            Ok(None)
        }
        Event::VerificationCompleted(completed) => {
            check_id(application, &completed.application_id)?;
            let answer = completed.answer.as_ref().ok_or(ApplyError::NoAnswer)?;
            let outcome = VerificationOutcome::try_from(answer.verification).unwrap_or_default();
            let judgement = completed_verification(&answer.department_id, outcome, &answer.reason);
            let proof = waiting_proof(
                application,
                &completed.proof_id,
                &completed.ticket,
                &[ProofOutcome::Pending, ProofOutcome::Overdue],
            )?;
            // Only the department asked may complete its verification.
            if proof.department_id != answer.department_id {
                return Err(ApplyError::NothingWaiting {
                    proof_id: completed.proof_id.clone(),
                    ticket: completed.ticket.clone(),
                });
            }
            proof.outcome = judgement.outcome as i32;
            proof.reason = judgement.reason;
            let changed = proof.clone();
            Ok(Some(restate(
                application,
                changed,
                completed.completed_unix_ms,
            )))
        }
        Event::VerificationOverdue(overdue) => {
            check_id(application, &overdue.application_id)?;
            let proof = waiting_proof(
                application,
                &overdue.proof_id,
                &overdue.ticket,
                &[ProofOutcome::Pending],
            )?;
            if proof.due_unix_ms > overdue.as_of_unix_ms {
                return Err(ApplyError::NotYetDue {
                    proof_id: overdue.proof_id.clone(),
                    as_of_unix_ms: overdue.as_of_unix_ms,
                    due_unix_ms: proof.due_unix_ms,
                });
            }
            let judgement = overdue_verification(&proof.department_id, proof.due_unix_ms);
            proof.outcome = judgement.outcome as i32;
            proof.reason = judgement.reason;
            let changed = proof.clone();
            Ok(Some(restate(application, changed, overdue.as_of_unix_ms)))
        }
        Event::PolicySetLoaded(_)
        | Event::DataSourceChanged(_)
        | Event::KeyRotated(_)
        | Event::SpotCheckRecorded(_)
        | Event::DishonestyRevoked(_)
        | Event::DecisionSuperseded(_) => Err(ApplyError::NotAnApplicationEvent),
    }
}

/// The application an event is about, if it is about one.
pub fn application_id_of(event: &Event) -> Option<&str> {
    match event {
        Event::ApplicationDecided(d) => Some(&d.application_id),
        Event::VerificationCompleted(c) => Some(&c.application_id),
        Event::VerificationOverdue(o) => Some(&o.application_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{
        ApplicationDecided, ApplicationStatus, ProofDecision, RecordedAnswer,
        VerificationCompleted, VerificationOverdue,
    };

    fn result(id: &str, outcome: ProofOutcome, ticket: &str, due: i64) -> ProofResult {
        ProofResult {
            proof_id: id.into(),
            outcome: outcome as i32,
            department_id: "dept".into(),
            ticket: ticket.into(),
            due_unix_ms: due,
            ..Default::default()
        }
    }

    fn decided() -> Application {
        let event = Event::ApplicationDecided(ApplicationDecided {
            application_id: "n.1".into(),
            caller: "hall".into(),
            decided_unix_ms: 1_000,
            proofs: vec![
                ProofDecision {
                    result: Some(result("a", ProofOutcome::Waived, "", 0)),
                    ..Default::default()
                },
                ProofDecision {
                    result: Some(result("b", ProofOutcome::Pending, "t-1", 5_000)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let mut app = Application::default();
        assert_eq!(apply(&mut app, &event), Ok(None));
        app
    }

    fn completion(ticket: &str, outcome: crate::pb::VerificationOutcome) -> Event {
        Event::VerificationCompleted(VerificationCompleted {
            application_id: "n.1".into(),
            proof_id: "b".into(),
            ticket: ticket.into(),
            answer: Some(RecordedAnswer {
                department_id: "dept".into(),
                verification: outcome as i32,
                reason: "archive".into(),
                ..Default::default()
            }),
            completed_unix_ms: 2_000,
            ..Default::default()
        })
    }

    #[test]
    fn a_decision_sets_the_application_and_derives_its_status() {
        let app = decided();
        assert_eq!(app.application_id, "n.1");
        assert_eq!(app.status(), ApplicationStatus::Pending);
        assert_eq!((app.created_unix_ms, app.updated_unix_ms), (1_000, 1_000));
        assert!(is_waiting(&app));
    }

    #[test]
    fn a_completion_settles_the_waiting_proof_once() {
        let mut app = decided();
        let changed = apply(
            &mut app,
            &completion("t-1", crate::pb::VerificationOutcome::Verified),
        )
        .unwrap()
        .unwrap();
        assert_eq!(changed.outcome(), ProofOutcome::Verified);
        assert_eq!(app.status(), ApplicationStatus::Complete);
        assert_eq!(app.updated_unix_ms, 2_000);
        assert!(!is_waiting(&app));
        let again = apply(
            &mut app,
            &completion("t-1", crate::pb::VerificationOutcome::NotVerified),
        );
        assert!(matches!(again, Err(ApplyError::NothingWaiting { .. })));
        assert_eq!(app.status(), ApplicationStatus::Complete);
    }

    #[test]
    fn a_wrong_ticket_or_application_changes_nothing() {
        let mut app = decided();
        let before = app.clone();
        let wrong_ticket = completion("t-2", crate::pb::VerificationOutcome::Verified);
        assert!(apply(&mut app, &wrong_ticket).is_err());
        let mut other = completion("t-1", crate::pb::VerificationOutcome::Verified);
        if let Event::VerificationCompleted(c) = &mut other {
            c.application_id = "n.2".into();
        }
        assert!(matches!(
            apply(&mut app, &other),
            Err(ApplyError::OtherApplication { .. })
        ));
        assert_eq!(app, before);
    }

    #[test]
    fn overdue_only_after_the_deadline_and_a_late_completion_still_settles() {
        let mut app = decided();
        let overdue = |as_of| {
            Event::VerificationOverdue(VerificationOverdue {
                application_id: "n.1".into(),
                proof_id: "b".into(),
                ticket: "t-1".into(),
                as_of_unix_ms: as_of,
                ..Default::default()
            })
        };
        assert!(matches!(
            apply(&mut app, &overdue(4_999)),
            Err(ApplyError::NotYetDue { .. })
        ));
        let changed = apply(&mut app, &overdue(5_000)).unwrap().unwrap();
        assert_eq!(changed.outcome(), ProofOutcome::Overdue);
        assert_eq!(app.status(), ApplicationStatus::NeedsApplicantAction);
        assert!(is_waiting(&app));
        apply(
            &mut app,
            &completion("t-1", crate::pb::VerificationOutcome::NotVerified),
        )
        .unwrap();
        assert_eq!(app.status(), ApplicationStatus::Rejected);
    }
}
