//! Commitments that are checked, the figures a city reports, and policy
//! reloads that never leave the gateway without a valid policy.

mod common;

use common::*;
use proofgate::pb::operations_service_client::OperationsServiceClient;
use proofgate::pb::{
    audit_entry::Event, AuditEntry, GetEntriesRequest, GetStatisticsRequest, IdType,
    ListSpotChecksRequest, ProofMode, ProofOutcome as Outcome, RecordSpotCheckRequest,
    RevokeDishonestyRequest, Subject,
};
use proofgate::policy::spot_check_selected;
use prost::Message;
use tokio_stream::StreamExt;

const COMPANY: &str = "91330702MA28K00072";

fn premises_request() -> proofgate::pb::SubmitApplicationRequest {
    with_commitments(
        request("business-change", COMPANY),
        &[("business-premises", "premises-v1")],
    )
}

#[test]
fn sampling_is_deterministic_and_within_two_points_of_the_rate() {
    for rate in [0.03, 0.10, 0.5] {
        let picked = (0..10_000)
            .filter(|i| spot_check_selected(&format!("node-1.{i:024x}"), "income-statement", rate))
            .count();
        let share = picked as f64 / 10_000.0;
        assert!((share - rate).abs() <= 0.02, "rate {rate}: sampled {share}");
    }
    assert_eq!(
        spot_check_selected("node-1.abc", "p", 0.5),
        spot_check_selected("node-1.abc", "p", 0.5)
    );
    assert!(!spot_check_selected("node-1.abc", "p", 0.0));
    assert!(spot_check_selected("node-1.abc", "p", 1.0));
}

#[tokio::test]
async fn a_false_commitment_blocks_the_next_commitment_and_the_fallback_applies() {
    let gw = TestGateway::start().await;
    let mut ops = OperationsServiceClient::new(gw.admin.clone());
    // Submit until the rule samples a premises commitment (rate 10 %).
    let mut sampled = None;
    for _ in 0..300 {
        let app = gw.submit(premises_request()).await;
        if proof(&app, "business-premises").spot_check {
            sampled = Some(app);
            break;
        }
    }
    let sampled = sampled.expect("a commitment is sampled within 300 applications");
    assert!(spot_check_selected(
        &sampled.application_id,
        "business-premises",
        0.10
    ));
    let open = ops
        .list_spot_checks(ListSpotChecksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(open
        .spot_checks
        .iter()
        .any(|c| c.application_id == sampled.application_id && c.proof_id == "business-premises"));

    // Only an officer may record the finding, and it needs a reason.
    let hall_ops = OperationsServiceClient::new(gw.channel.clone())
        .list_spot_checks(ListSpotChecksRequest {})
        .await
        .unwrap_err();
    assert_eq!(hall_ops.code(), tonic::Code::PermissionDenied);
    let no_reason = ops
        .record_spot_check(RecordSpotCheckRequest {
            application_id: sampled.application_id.clone(),
            proof_id: "business-premises".into(),
            truthful: false,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), tonic::Code::InvalidArgument);
    let recorded = ops
        .record_spot_check(RecordSpotCheckRequest {
            application_id: sampled.application_id.clone(),
            proof_id: "business-premises".into(),
            truthful: false,
            reason: "site visit: the declared address is a residential flat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!recorded.dishonest_until.is_empty());

    let next = gw.submit(premises_request()).await;
    let premises = proof(&next, "business-premises");
    assert!(premises.fallback_used, "{premises:#?}");
    assert_eq!(premises.mode(), ProofMode::DepartmentVerification);
    assert_eq!(premises.outcome(), Outcome::Verified);
    assert!(
        premises.reason.contains("false commitment"),
        "{}",
        premises.reason
    );

    ops.revoke_dishonesty(RevokeDishonestyRequest {
        subject: Some(Subject {
            id_type: IdType::UnifiedSocialCreditCode as i32,
            id_number: COMPANY.into(),
            name: String::new(),
        }),
        reason: "credit repaired after rectification".into(),
    })
    .await
    .unwrap();
    let after = gw.submit(premises_request()).await;
    assert_eq!(
        outcome(&after, "business-premises"),
        Outcome::CommitmentRecorded
    );

    let TestGateway {
        running, data_dir, ..
    } = gw;
    running.shutdown().await;
    let replay = proofgate::audit::replay_records(
        proofgate::audit::data_dir_records(data_dir.path()).unwrap(),
        |_| {},
    )
    .unwrap();
    assert!(
        replay.discrepancies.is_empty(),
        "{:#?}",
        replay.discrepancies
    );
}

#[tokio::test]
async fn statistics_equal_counts_recomputed_from_the_log() {
    let gw = TestGateway::start().await;
    for (matter, id) in [
        ("elderly-subsidy", ELDERLY),
        ("elderly-subsidy", FAILS_ALL),
        ("coach-licence-renewal", PASSES_ALL),
        ("cremation-subsidy", PASSES_ALL),
    ] {
        gw.submit(request(matter, id)).await;
    }
    gw.submit(with_commitments(
        request("hpf-withdrawal-mortgage", PASSES_ALL),
        &[("income-statement", "income-v1")],
    ))
    .await;
    let stats = OperationsServiceClient::new(gw.admin.clone())
        .get_statistics(GetStatisticsRequest {})
        .await
        .unwrap()
        .into_inner();

    // Recompute independently from the entries an auditor reads.
    let mut stream = gw
        .audit()
        .get_entries(GetEntriesRequest {
            start: 0,
            end: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut applications, mut settled, mut by_mode, mut answers) = (0u64, 0u64, [0u64; 5], 0u64);
    while let Some(entry) = stream.next().await {
        let entry = AuditEntry::decode(entry.unwrap().entry.as_slice()).unwrap();
        if let Some(Event::ApplicationDecided(d)) = entry.event {
            applications += 1;
            for p in &d.proofs {
                answers += p.answers.iter().filter(|a| a.failure.is_empty()).count() as u64;
                let r = p.result.as_ref().unwrap();
                if matches!(
                    r.outcome(),
                    Outcome::Waived
                        | Outcome::CommitmentRecorded
                        | Outcome::ConditionMet
                        | Outcome::Verified
                ) {
                    settled += 1;
                    by_mode[r.mode as usize] += 1;
                }
            }
        }
    }
    let nb = stats.not_brought.unwrap();
    assert_eq!(stats.applications, applications);
    assert_eq!(nb.total, settled);
    assert_eq!(
        [
            nb.abolished,
            nb.commitment,
            nb.data_query,
            nb.department_verification
        ],
        [by_mode[1], by_mode[2], by_mode[3], by_mode[4]]
    );
    assert!(
        nb.abolished > 0
            && nb.commitment > 0
            && nb.data_query > 0
            && nb.department_verification > 0
    );
    assert_eq!(
        stats.departments.iter().map(|d| d.answers).sum::<u64>(),
        answers
    );
    let by_matter: u64 = stats.applications_by_matter.iter().map(|m| m.count).sum();
    assert_eq!(by_matter, applications);
}

#[tokio::test]
async fn a_bad_policy_reload_keeps_the_old_version_serving() {
    let data_dir = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut options = options(data_dir.path());
    options.policies = Some(policies.path().to_path_buf());
    let running = proofgate::server::start(options).await.unwrap();
    let before = running.gateway.policy().version.clone();

    std::fs::write(
        policies.path().join("zz-broken.toml"),
        "[[proof]]\nid = \"x\"\nmode = \n",
    )
    .unwrap();
    let err = running.reload_policies().await.unwrap_err().to_string();
    assert!(err.contains("zz-broken.toml:3"), "{err}");
    assert_eq!(
        running.gateway.policy().version,
        before,
        "old version keeps serving"
    );
    let channel = connect(&running).await;
    let mut apps =
        proofgate::pb::application_service_client::ApplicationServiceClient::new(channel);
    let app = apps
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(app.policy_version, before);

    // A valid change is taken and recorded in the log.
    std::fs::remove_file(policies.path().join("zz-broken.toml")).unwrap();
    std::fs::write(
        policies.path().join("zz-extra.toml"),
        "[[proof]]\nid = \"extra-waiver\"\nname = \"Extra\"\nmode = \"abolished\"\nlegal_basis = \"test\"\n",
    )
    .unwrap();
    let after = running.reload_policies().await.unwrap();
    assert_ne!(after, before);
    let size = running.gateway.audit().store().tree_size().unwrap();
    let last = AuditEntry::decode(
        running
            .gateway
            .audit()
            .store()
            .entry(size - 1)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(last.event, Some(Event::PolicySetLoaded(p)) if p.policy_version == after));
    let app = apps
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(app.policy_version, after);
    running.shutdown().await;
}

#[tokio::test]
async fn prometheus_metrics_report_requests_departments_and_the_log() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut options = options(data_dir.path());
    options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = proofgate::server::start(options).await.unwrap();
    let channel = connect(&running).await;
    proofgate::pb::application_service_client::ApplicationServiceClient::new(channel)
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .unwrap();
    let addr = running.metrics_addr.unwrap();
    let body = scrape_metrics(addr).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "proofgate_requests_total{service=\"proofgate.v1.ApplicationService\",verdict=\"admitted\"}",
        "proofgate_applications_total{status=\"APPLICATION_STATUS_COMPLETE\"}",
        "proofgate_department_calls_total{department=\"public-security\",result=\"ok\"}",
        "proofgate_circuit_state{department=\"civil-affairs\"} 0",
        "proofgate_audit_entries",
        "proofgate_submit_seconds_bucket",
    ] {
        assert!(body.contains(needle), "missing {needle}");
    }
    running.shutdown().await;
}

/// Cluster mode's shared dishonesty records, faked: either not current
/// (`unsure`), or holding one record for every subject.
struct FakeShared {
    unsure: bool,
}

#[tonic::async_trait]
impl proofgate::gateway::SharedDishonesty for FakeShared {
    fn lookup(
        &self,
        _pseudonym: &[u8],
    ) -> Result<Option<proofgate::audit::DishonestyRecord>, String> {
        if self.unsure {
            return Err("the watch is broken (test)".into());
        }
        Ok(Some(proofgate::audit::DishonestyRecord {
            until: "2999-01-01".into(),
            application_id: "node-9.000000000000000000000000".into(),
            proof_id: "business-premises".into(),
        }))
    }

    async fn record(
        &self,
        _pseudonym: &[u8],
        _record: proofgate::audit::DishonestyRecord,
    ) -> Result<(), String> {
        Err("no quorum (test)".into())
    }

    async fn revoke(&self, _pseudonym: &[u8]) -> Result<(), String> {
        Err("no quorum (test)".into())
    }
}

async fn replay_is_clean(gw: TestGateway) {
    let TestGateway {
        running, data_dir, ..
    } = gw;
    running.shutdown().await;
    let replay = proofgate::audit::replay_records(
        proofgate::audit::data_dir_records(data_dir.path()).unwrap(),
        |_| {},
    )
    .unwrap();
    assert!(
        replay.discrepancies.is_empty(),
        "{:#?}",
        replay.discrepancies
    );
}

#[tokio::test]
async fn with_stale_shared_dishonesty_records_no_commitment_is_taken_and_the_fallback_applies() {
    let gw = TestGateway::start().await;
    gw.running
        .gateway
        .share_dishonesty(std::sync::Arc::new(FakeShared { unsure: true }));
    let app = gw.submit(premises_request()).await;
    let premises = proof(&app, "business-premises");
    assert!(premises.fallback_used, "{premises:#?}");
    assert_eq!(premises.mode(), ProofMode::DepartmentVerification);
    assert_eq!(premises.outcome(), Outcome::Verified);
    assert!(
        premises
            .reason
            .contains("cannot be sure its copy of the cluster's dishonesty records is current"),
        "{}",
        premises.reason
    );
    // A proof that does not refuse dishonest applicants is not affected,
    // and the log replays (the decision records that the view was unsure).
    replay_is_clean(gw).await;
}

#[tokio::test]
async fn a_shared_dishonesty_record_bars_a_commitment_and_sharing_failures_change_nothing() {
    let gw = TestGateway::start().await;
    gw.running
        .gateway
        .share_dishonesty(std::sync::Arc::new(FakeShared { unsure: false }));
    let app = gw.submit(premises_request()).await;
    let premises = proof(&app, "business-premises");
    assert!(premises.fallback_used, "{premises:#?}");
    assert!(
        premises.reason.contains("false commitment"),
        "{}",
        premises.reason
    );
    // A revocation that cannot reach the cluster is UNAVAILABLE.
    let refused = OperationsServiceClient::new(gw.admin.clone())
        .revoke_dishonesty(RevokeDishonestyRequest {
            subject: Some(Subject {
                id_type: IdType::UnifiedSocialCreditCode as i32,
                id_number: COMPANY.into(),
                name: String::new(),
            }),
            reason: "credit repaired".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("revoke again"), "{refused:?}");
    // The record came from the cluster, not from this log: replay accepts it.
    replay_is_clean(gw).await;
}
