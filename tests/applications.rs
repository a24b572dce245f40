//! End to end: real gRPC over loopback, sled in a temp dir, mock departments
//! as real gRPC servers.

mod common;

use common::*;
use proofgate::pb::{
    ApplicationStatus as Status, GetApplicationRequest, ListMattersRequest, ProofMode,
    ProofOutcome as Outcome, WatchApplicationRequest,
};
use tokio_stream::StreamExt;

#[tokio::test]
async fn abolished_proofs_are_waived_with_their_legal_basis() {
    let gw = TestGateway::start().await;
    let app = gw.submit(request("cremation-subsidy", PASSES_ALL)).await;
    for id in ["cremation-death-proof", "landless-farmer-proof"] {
        let p = proof(&app, id);
        assert_eq!(p.outcome(), Outcome::Waived);
        assert_eq!(p.mode(), ProofMode::Abolished);
        assert!(!p.legal_basis.is_empty());
        assert!(p.reason.contains(&p.legal_basis), "{}", p.reason);
    }
    assert_eq!(status(&app), Status::Complete);
}

#[tokio::test]
async fn given_commitments_are_recorded_and_missing_ones_name_their_text() {
    let gw = TestGateway::start().await;
    let committed = gw
        .submit(with_commitments(
            request("security-guard-licence", PASSES_ALL),
            &[
                ("education-level", "education-v1"),
                ("character-reference", "character-v2"),
            ],
        ))
        .await;
    assert_eq!(
        outcome(&committed, "education-level"),
        Outcome::CommitmentRecorded
    );
    assert_eq!(status(&committed), Status::Complete);

    let missing = gw
        .submit(with_commitments(
            request("security-guard-licence", PASSES_ALL),
            &[("education-level", "education-v0")],
        ))
        .await;
    assert_eq!(status(&missing), Status::NeedsApplicantAction);
    let stale = proof(&missing, "education-level");
    assert_eq!(stale.outcome(), Outcome::CommitmentMissing);
    assert!(stale.reason.contains("education-v1"), "{}", stale.reason);
    let absent = proof(&missing, "character-reference");
    assert_eq!(absent.outcome(), Outcome::CommitmentMissing);
    assert!(
        absent.reason.contains("本人承诺遵守宪法和法律"),
        "{}",
        absent.reason
    );
}

#[tokio::test]
async fn data_queries_pass_and_fail_on_the_policy_condition() {
    let gw = TestGateway::start().await;
    let passes = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    assert_eq!(outcome(&passes, "jinhua-household"), Outcome::ConditionMet);
    assert_eq!(outcome(&passes, "alive-status"), Outcome::ConditionMet);
    assert_eq!(status(&passes), Status::Complete);

    let fails = gw.submit(request("elderly-subsidy", FAILS_ALL)).await;
    assert_eq!(
        outcome(&fails, "jinhua-household"),
        Outcome::ConditionNotMet
    );
    assert!(proof(&fails, "jinhua-household")
        .reason
        .contains("record.status"));
    assert_eq!(status(&fails), Status::Rejected);

    let unknown = gw.submit(request("elderly-subsidy", UNKNOWN_PERSON)).await;
    assert_eq!(
        outcome(&unknown, "jinhua-household"),
        Outcome::RecordNotFound
    );
    assert_eq!(status(&unknown), Status::Rejected);
}

#[tokio::test]
async fn department_verification_answers_at_once() {
    let gw = TestGateway::start().await;
    let ok = gw
        .submit(request("coach-licence-renewal", PASSES_ALL))
        .await;
    assert_eq!(outcome(&ok, "safe-driving-record"), Outcome::Verified);
    assert_eq!(status(&ok), Status::Complete);
    let refused = gw.submit(request("coach-licence-renewal", FAILS_ALL)).await;
    assert_eq!(
        outcome(&refused, "safe-driving-record"),
        Outcome::NotVerified
    );
    assert!(proof(&refused, "safe-driving-record")
        .reason
        .contains("accident"));
    assert_eq!(status(&refused), Status::Rejected);
}

#[tokio::test]
async fn a_matter_mixing_all_four_modes_completes() {
    let gw = TestGateway::start().await;
    let app = gw
        .submit(with_commitments(
            request("hpf-withdrawal-mortgage", PASSES_ALL),
            &[("income-statement", "income-v1")],
        ))
        .await;
    assert_eq!(status(&app), Status::Complete, "{app:#?}");
    let modes: std::collections::BTreeSet<i32> = app.proofs.iter().map(|p| p.mode).collect();
    assert_eq!(modes.len(), 4, "all four modes: {modes:?}");
    assert_eq!(outcome(&app, "house-paid-off"), Outcome::Waived);
    assert_eq!(
        outcome(&app, "income-statement"),
        Outcome::CommitmentRecorded
    );
    assert_eq!(outcome(&app, "hpf-deposit"), Outcome::ConditionMet);
    assert_eq!(outcome(&app, "commercial-loan-contract"), Outcome::Verified);
    let receipt = app.receipt.expect("reply names its audit entry");
    assert_eq!(receipt.leaf_hash.len(), 32);
    assert!(app.application_id.starts_with("test-node."));
}

#[tokio::test]
async fn a_pending_verification_completes_and_watch_sees_it() {
    let gw = TestGateway::start().await;
    let app = gw
        .submit(request("coach-licence-renewal", PENDING_THEN_VERIFIED))
        .await;
    assert_eq!(status(&app), Status::Pending);
    let pending = proof(&app, "safe-driving-record");
    assert_eq!(pending.outcome(), Outcome::Pending);
    assert!(!pending.ticket.is_empty());
    assert!(pending.due_unix_ms > app.created_unix_ms);

    let mut stream = gw
        .applications()
        .watch_application(WatchApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(status(&first), Status::Pending);
    let last = tokio::time::timeout(COMPLETION_BOUND, stream.next())
        .await
        .expect("completion arrives")
        .unwrap()
        .unwrap();
    assert_eq!(status(&last), Status::Complete);
    assert_eq!(outcome(&last, "safe-driving-record"), Outcome::Verified);
    assert!(last.receipt.as_ref().unwrap().index > app.receipt.as_ref().unwrap().index);
    assert!(
        stream.next().await.is_none(),
        "stream ends at a final status"
    );

    let stored = gw
        .applications()
        .get_application(GetApplicationRequest {
            application_id: app.application_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&stored), Status::Complete);
}

#[tokio::test]
async fn a_pending_verification_can_end_refused() {
    let gw = TestGateway::start().await;
    let app = gw
        .submit(request("coach-licence-renewal", PENDING_THEN_REFUSED))
        .await;
    assert_eq!(status(&app), Status::Pending);
    let mut stream = gw
        .applications()
        .watch_application(WatchApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(item) = tokio::time::timeout(COMPLETION_BOUND, stream.next())
        .await
        .expect("stream progresses")
    {
        last = Some(item.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(status(&last), Status::Rejected);
    assert_eq!(outcome(&last, "safe-driving-record"), Outcome::NotVerified);
}

#[tokio::test]
async fn resubmitting_the_same_request_returns_the_same_application_without_a_second_entry() {
    let gw = TestGateway::start().await;
    let req = request("elderly-subsidy", ELDERLY);
    let first = gw
        .applications()
        .submit_application(req.clone())
        .await
        .unwrap()
        .into_inner();
    let size = gw.tree_size();
    let again = gw
        .applications()
        .submit_application(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(first.application, again.application);
    assert_eq!(gw.tree_size(), size, "no second entry");

    // Concurrent duplicates are decided once.
    let fresh = request("elderly-subsidy", ELDERLY);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = gw.applications();
        let r = fresh.clone();
        clients.push(tokio::spawn(async move { c.submit_application(r).await }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for c in clients {
        let reply = c.await.unwrap().unwrap().into_inner();
        ids.insert(reply.application.unwrap().application_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(gw.tree_size(), size + 1);

    let mut changed = req;
    changed.consent_to_data_queries = false;
    let err = gw
        .applications()
        .submit_application(changed)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("request_id"));
}

#[tokio::test]
async fn list_matters_tells_a_hall_how_each_proof_is_handled() {
    let gw = TestGateway::start().await;
    let reply = gw
        .applications()
        .list_matters(ListMattersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reply.matters.len() >= 8);
    assert!(reply.policy_version.starts_with("sha256:"));
    let school = reply
        .matters
        .iter()
        .find(|m| m.matter_id == "school-enrolment")
        .unwrap();
    let conditional = school
        .proofs
        .iter()
        .find(|p| p.proof_id == "social-insurance")
        .unwrap();
    assert!(conditional.required_when.contains("applicant.region"));
    let guardianship = school
        .proofs
        .iter()
        .find(|p| p.proof_id == "guardianship")
        .unwrap();
    assert_eq!(guardianship.mode(), ProofMode::Commitment);
    assert!(!guardianship.commitment_text.is_empty());
}

#[tokio::test]
async fn conditional_proofs_follow_the_applicant() {
    let gw = TestGateway::start().await;
    let commitments = [("guardianship", "guardian-v1")];
    let local = gw
        .submit(with_commitments(
            request("school-enrolment", PASSES_ALL),
            &commitments,
        ))
        .await;
    assert!(local
        .proofs
        .iter()
        .all(|p| p.proof_id != "social-insurance"));
    assert_eq!(status(&local), Status::Complete, "{local:#?}");
    let migrant = gw
        .submit(with_commitments(
            request("school-enrolment", "360426199101010071"),
            &commitments,
        ))
        .await;
    assert_eq!(outcome(&migrant, "social-insurance"), Outcome::ConditionMet);
    assert_eq!(status(&migrant), Status::Complete, "{migrant:#?}");
}

#[tokio::test]
async fn without_consent_no_department_is_asked() {
    let gw = TestGateway::start().await;
    let calls_before: u64 = gw
        .running
        .mocks
        .iter()
        .map(|m| m.controls.calls.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let mut req = request("elderly-subsidy", ELDERLY);
    req.consent_to_data_queries = false;
    let app = gw.submit(req).await;
    assert_eq!(outcome(&app, "jinhua-household"), Outcome::ConsentMissing);
    assert_eq!(status(&app), Status::NeedsApplicantAction);
    let calls_after: u64 = gw
        .running
        .mocks
        .iter()
        .map(|m| m.controls.calls.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(calls_before, calls_after);
}

#[tokio::test]
async fn off_the_shelf_tools_find_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let gw = TestGateway::start().await;
    let health = HealthClient::new(gw.channel.clone())
        .check(HealthCheckRequest {
            service: "proofgate.v1.ApplicationService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(gw.channel.clone());
    let mut replies = reflection
        .server_reflection_info(tokio_stream::once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "proofgate.v1.ApplicationService",
        "proofgate.v1.DepartmentRegistry",
        "proofgate.v1.AuditService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
}
