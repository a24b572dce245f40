//! A down, slow, garbled, badly signed or impersonating department never
//! yields a positive outcome, and the gateway keeps serving meanwhile.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use proofgate::pb::{ApplicationStatus as Status, ProofOutcome as Outcome};

/// A mock latency no deadline reaches: the department never answers in time.
const NEVER_MS: u64 = 3_600_000;

fn never_positive(outcome: Outcome) {
    assert!(
        !matches!(outcome, Outcome::Verified | Outcome::ConditionMet),
        "a failing department produced {outcome:?}"
    );
}

#[tokio::test]
async fn a_department_that_is_down_never_yields_verified() {
    let mut gw = TestGateway::start().await;
    let index = gw
        .running
        .mocks
        .iter()
        .position(|m| m.department_id == "public-security")
        .unwrap();
    gw.running.mocks.remove(index).stop().await;

    let app = gw
        .submit(request("coach-licence-renewal", PASSES_ALL))
        .await;
    let driving = proof(&app, "safe-driving-record");
    never_positive(driving.outcome());
    assert_eq!(driving.outcome(), Outcome::Unavailable);
    assert!(
        driving.reason.contains("public-security"),
        "{}",
        driving.reason
    );
    assert_ne!(status(&app), Status::Complete);

    // Other departments still answer.
    let other = gw
        .submit(with_commitments(
            request("business-change", "91330702MA28K00072"),
            &[("business-premises", "premises-v1")],
        ))
        .await;
    assert_eq!(status(&other), Status::Complete, "{other:#?}");
}

#[tokio::test]
async fn a_department_slower_than_the_deadline_is_unavailable() {
    let gw = TestGateway::start().await;
    let police = gw.running.mock("public-security").unwrap();
    // jinhua-household allows 1500 ms; this answer would take an hour, so
    // no scheduling delay can make it arrive in time.
    police
        .controls
        .latency_ms
        .store(NEVER_MS, Ordering::Relaxed);
    let app = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    let household = proof(&app, "jinhua-household");
    assert_eq!(household.outcome(), Outcome::Unavailable);
    assert!(
        household.reason.contains("no answer within"),
        "{}",
        household.reason
    );
    assert_eq!(status(&app), Status::NeedsApplicantAction);
}

#[tokio::test]
async fn garbled_badly_signed_or_impersonating_answers_are_unavailable() {
    let gw = TestGateway::start().await;
    let civil = gw.running.mock("civil-affairs").unwrap();
    type Knob = fn(&proofgate::departments::mock::MockControls) -> &std::sync::atomic::AtomicBool;
    let knobs: [(Knob, &str); 3] = [
        (|c| &c.garble, "nonce"),
        (|c| &c.wrong_key, "signature"),
        (|c| &c.impersonate, "claims to come from"),
    ];
    for (knob, expected) in knobs {
        knob(&civil.controls).store(true, Ordering::Relaxed);
        let app = gw
            .submit(with_commitments(
                request("marriage-registration", FAILS_ALL),
                &[
                    ("no-spouse-declaration", "no-spouse-v1"),
                    ("no-close-kinship-declaration", "kinship-v1"),
                ],
            ))
            .await;
        let unmarried = proof(&app, "unmarried-record");
        assert_eq!(unmarried.outcome(), Outcome::Unavailable, "{expected}");
        assert!(unmarried.reason.contains(expected), "{}", unmarried.reason);
        knob(&civil.controls).store(false, Ordering::Relaxed);
    }
}

/// The mortgage withdrawal whose marriage record (a civil-affairs query)
/// falls back to the applicant's commitment, which is given.
async fn mortgage_with_commitments(gw: &TestGateway) -> proofgate::pb::Application {
    gw.submit(with_commitments(
        request("hpf-withdrawal-mortgage", PASSES_ALL),
        &[
            ("income-statement", "income-v1"),
            ("marriage-record", "married-v1"),
        ],
    ))
    .await
}

#[tokio::test]
async fn an_unavailable_query_falls_back_as_the_policy_says() {
    let gw = TestGateway::start().await;
    let civil = gw.running.mock("civil-affairs").unwrap();
    civil.controls.refuse.store(true, Ordering::Relaxed);
    let app = mortgage_with_commitments(&gw).await;
    let marriage = proof(&app, "marriage-record");
    assert!(marriage.fallback_used);
    assert_eq!(marriage.outcome(), Outcome::CommitmentRecorded);
    assert!(
        marriage.reason.contains("fell back to commitment"),
        "{}",
        marriage.reason
    );
    assert_eq!(status(&app), Status::Complete);
}

#[tokio::test]
async fn a_query_that_never_answers_in_time_falls_back_as_the_policy_says() {
    let gw = TestGateway::start().await;
    let civil = gw.running.mock("civil-affairs").unwrap();
    civil.controls.latency_ms.store(NEVER_MS, Ordering::Relaxed);
    let app = mortgage_with_commitments(&gw).await;
    let marriage = proof(&app, "marriage-record");
    assert!(marriage.fallback_used, "{marriage:#?}");
    assert_eq!(marriage.outcome(), Outcome::CommitmentRecorded);
    assert!(
        marriage.reason.contains("no answer within"),
        "{}",
        marriage.reason
    );
    assert_eq!(status(&app), Status::Complete);
}
