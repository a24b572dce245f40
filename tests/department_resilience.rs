//! Departments that flap, fail, exceed their capacity or never finish:
//! retries, circuit breaking, rate limits and overdue verifications — never
//! a positive outcome from a failure, and nothing pending lost on restart.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use proofgate::departments::resilience::{CircuitState, BREAKER_OPEN_FOR, BREAKER_THRESHOLD};
use proofgate::pb::{
    ApplicationStatus as Status, DeregisterDataSourceRequest, GetApplicationRequest,
    ListDataSourcesRequest, ProofOutcome as Outcome, RegisterDataSourceRequest,
};

#[tokio::test]
async fn a_flapping_department_is_retried_for_queries_and_never_verified_by_accident() {
    let gw = TestGateway::start().await;
    let police = gw.running.mock("public-security").unwrap();
    police.controls.flap.store(true, Ordering::Relaxed);
    let mut unavailable = 0;
    for _ in 0..6 {
        // A query (retried on UNAVAILABLE) and a verification (never retried).
        let app = gw
            .submit(request("coach-licence-renewal", PASSES_ALL))
            .await;
        assert_eq!(
            outcome(&app, "no-criminal-record"),
            Outcome::ConditionMet,
            "{app:#?}"
        );
        match outcome(&app, "safe-driving-record") {
            Outcome::Verified => {}
            Outcome::Unavailable => unavailable += 1,
            other => panic!("a flapping department gave {other:?}"),
        }
    }
    assert!(unavailable > 0, "some verifications hit the refusal");
}

#[tokio::test]
async fn the_circuit_opens_on_a_failing_department_and_closes_when_it_recovers() {
    // Breakers run on a clock that moves only when told to.
    let (gw, clock) = TestGateway::start_on_fake_clock(|_| {}).await;
    let civil = gw.running.mock("civil-affairs").unwrap();
    civil.controls.refuse.store(true, Ordering::Relaxed);
    let commitments = [
        ("no-spouse-declaration", "no-spouse-v1"),
        ("no-close-kinship-declaration", "kinship-v1"),
    ];
    let submit = || {
        gw.submit(with_commitments(
            request("marriage-registration", FAILS_ALL),
            &commitments,
        ))
    };
    // Each submission fails at least once (a query is retried up to three
    // times), so the circuit opens within the threshold's count.
    let mut submissions = 0;
    while gw.running.directory.circuit("civil-affairs") != Some(CircuitState::Open) {
        assert!(submissions < BREAKER_THRESHOLD, "the circuit never opened");
        let app = submit().await;
        assert_eq!(
            outcome(&app, "unmarried-record"),
            Outcome::Unavailable,
            "{app:#?}"
        );
        submissions += 1;
    }
    // An open circuit does not call the department at all.
    let calls = civil.controls.calls.load(Ordering::Relaxed);
    let app = submit().await;
    let unmarried = proof(&app, "unmarried-record");
    assert_eq!(unmarried.outcome(), Outcome::Unavailable);
    assert!(
        unmarried.reason.contains("circuit open"),
        "{}",
        unmarried.reason
    );
    assert_eq!(civil.controls.calls.load(Ordering::Relaxed), calls);

    // Once the open period has passed, one probe goes out; it succeeds.
    civil.controls.refuse.store(false, Ordering::Relaxed);
    clock.advance(BREAKER_OPEN_FOR);
    let app = submit().await;
    assert_eq!(
        outcome(&app, "unmarried-record"),
        Outcome::ConditionMet,
        "the probe succeeds"
    );
    assert_eq!(civil.controls.calls.load(Ordering::Relaxed), calls + 1);
    assert_eq!(
        gw.running.directory.circuit("civil-affairs"),
        Some(CircuitState::Closed)
    );
}

#[tokio::test]
async fn a_burst_over_the_declared_capacity_is_refused_not_forwarded() {
    // Rate limits run on a clock that does not move during the burst, so
    // the bucket holds exactly its one slot whatever the machine's speed.
    let (gw, clock) = TestGateway::start_on_fake_clock(|_| {}).await;
    let civil = gw.running.mock("civil-affairs").unwrap();
    let mut source = civil.data_source();
    source.capacity_per_second = 2; // one slot, then one per 500 ms
    gw.registry()
        .register_data_source(RegisterDataSourceRequest {
            source: Some(source),
        })
        .await
        .unwrap();
    let marriage = || {
        with_commitments(
            request("marriage-registration", FAILS_ALL),
            &[
                ("no-spouse-declaration", "no-spouse-v1"),
                ("no-close-kinship-declaration", "kinship-v1"),
            ],
        )
    };
    let calls_before = civil.controls.calls.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = gw.applications();
        let req = marriage();
        tasks.push(tokio::spawn(
            async move { client.submit_application(req).await },
        ));
    }
    let mut limited = 0;
    for t in tasks {
        let app = t.await.unwrap().unwrap().into_inner().application.unwrap();
        let p = proof(&app, "unmarried-record");
        if p.outcome() == Outcome::Unavailable {
            assert!(p.reason.contains("declared capacity"), "{}", p.reason);
            limited += 1;
        } else {
            assert_eq!(p.outcome(), Outcome::ConditionMet);
        }
    }
    let forwarded = civil.controls.calls.load(Ordering::Relaxed) - calls_before;
    assert_eq!(forwarded, 1, "only the one slot reached the department");
    assert_eq!(limited, 7);

    // The next slot comes after 500 ms.
    clock.advance(Duration::from_millis(500));
    let app = gw.submit(marriage()).await;
    assert_eq!(outcome(&app, "unmarried-record"), Outcome::ConditionMet);
    assert_eq!(
        civil.controls.calls.load(Ordering::Relaxed) - calls_before,
        2
    );
}

#[tokio::test]
async fn departments_register_list_and_deregister_over_grpc_and_it_persists() {
    let data_dir = tempfile::tempdir().unwrap();
    let running = proofgate::server::start(options(data_dir.path()))
        .await
        .unwrap();
    let mut registry = proofgate::pb::department_registry_client::DepartmentRegistryClient::new(
        connect_as(&running, ADMIN).await,
    );
    let listed = registry
        .list_data_sources(ListDataSourcesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert_eq!(listed.len(), running.mocks.len());
    registry
        .deregister_data_source(DeregisterDataSourceRequest {
            department_id: "health".into(),
        })
        .await
        .unwrap();
    let bad = registry
        .register_data_source(RegisterDataSourceRequest {
            source: Some(proofgate::pb::DataSource {
                department_id: "Bad Id".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut apps = proofgate::pb::application_service_client::ApplicationServiceClient::new(
        connect(&running).await,
    );
    let app = apps
        .submit_application(with_commitments(
            request("school-enrolment", PASSES_ALL),
            &[("guardianship", "guardian-v1")],
        ))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let birth = proof(&app, "birth-medical-certificate");
    assert_eq!(birth.outcome(), Outcome::Unavailable);
    assert!(
        birth.reason.contains("no data source is registered"),
        "{}",
        birth.reason
    );
    running.shutdown().await;

    // Registrations persist (and the mocks re-register on start).
    let store = proofgate::audit::AuditStore::open(&data_dir.path().join("log")).unwrap();
    let stored: Vec<String> = store
        .data_sources()
        .unwrap()
        .into_iter()
        .map(|s| s.department_id)
        .collect();
    assert!(!stored.contains(&"health".to_owned()));
    assert!(stored.contains(&"civil-affairs".to_owned()));
}

#[tokio::test]
async fn a_verification_past_its_deadline_becomes_overdue_and_survives_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let running = proofgate::server::start(options(data_dir.path()))
        .await
        .unwrap();
    let mut apps = proofgate::pb::application_service_client::ApplicationServiceClient::new(
        connect(&running).await,
    );
    let app = apps
        .submit_application(with_commitments(
            request("teacher-qualification", PENDING_THEN_VERIFIED),
            &[("character-reference", "character-v2")],
        ))
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!(status(&app), Status::Pending);
    let due = proof(&app, "degree-certificate").due_unix_ms;
    // Before the deadline nothing happens.
    assert_eq!(running.gateway.sweep_overdue(due - 1).await.unwrap(), 0);
    running.shutdown().await;

    // The pending verification survives the restart and goes overdue there.
    let running = proofgate::server::start(options(data_dir.path()))
        .await
        .unwrap();
    assert_eq!(running.gateway.sweep_overdue(due + 1).await.unwrap(), 1);
    assert_eq!(
        running.gateway.sweep_overdue(due + 2).await.unwrap(),
        0,
        "once"
    );
    let mut apps = proofgate::pb::application_service_client::ApplicationServiceClient::new(
        connect(&running).await,
    );
    let stored = apps
        .get_application(GetApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let degree = proof(&stored, "degree-certificate");
    assert_eq!(degree.outcome(), Outcome::Overdue);
    assert!(degree.reason.contains("deadline"), "{}", degree.reason);
    assert_eq!(status(&stored), Status::NeedsApplicantAction);
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

#[test]
fn the_shipped_policies_are_served_by_the_mocks_and_gaps_are_named() {
    let set = proofgate::policy::load_dir(&policies_dir()).unwrap();
    let sources = proofgate::departments::mock::builtin_sources();
    assert_eq!(set.unserved(&sources), Vec::<String>::new());
    let without_health: Vec<_> = sources
        .into_iter()
        .filter(|s| s.department_id != "health")
        .collect();
    let gaps = set.unserved(&without_health);
    assert!(
        gaps.iter()
            .any(|g| g.contains("birth-medical-certificate") && g.contains("`health`")),
        "{gaps:?}"
    );
}
