//! Mutual TLS, roles and per-caller limits: every RPC refuses a caller
//! without a certificate and a caller of the wrong role; certificates from
//! another CA or expired ones are refused; halls and departments stay within
//! their own scope; one caller's flood is limited, not another's.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::*;
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::department_registry_client::DepartmentRegistryClient;
use proofgate::pb::*;
use proofgate::security::{issue, TlsFiles, Validity, GATEWAY_IDENTITY};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

type Call = fn(Channel) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

macro_rules! rpc {
    ($client:ident, $method:ident, $request:expr) => {
        (|channel: Channel| {
            Box::pin(async move { $client::new(channel).$method($request).await.map(|_| ()) })
                as Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>
        }) as Call
    };
}

/// Every RPC of the three services, and an identity whose role may not call it.
fn every_rpc() -> Vec<(&'static str, Call, &'static str)> {
    vec![
        (
            "SubmitApplication",
            rpc!(
                ApplicationServiceClient,
                submit_application,
                request("elderly-subsidy", ELDERLY)
            ),
            AUDITOR,
        ),
        (
            "GetApplication",
            rpc!(
                ApplicationServiceClient,
                get_application,
                GetApplicationRequest {
                    application_id: "x".into()
                }
            ),
            PORTAL,
        ),
        (
            "WatchApplication",
            rpc!(
                ApplicationServiceClient,
                watch_application,
                WatchApplicationRequest {
                    application_id: "x".into()
                }
            ),
            "civil-affairs.department.proofgate",
        ),
        (
            "ListMatters",
            rpc!(
                ApplicationServiceClient,
                list_matters,
                ListMattersRequest {}
            ),
            AUDITOR,
        ),
        (
            "RegisterDataSource",
            rpc!(
                DepartmentRegistryClient,
                register_data_source,
                RegisterDataSourceRequest { source: None }
            ),
            HALL,
        ),
        (
            "ListDataSources",
            rpc!(
                DepartmentRegistryClient,
                list_data_sources,
                ListDataSourcesRequest {}
            ),
            PORTAL,
        ),
        (
            "DeregisterDataSource",
            rpc!(
                DepartmentRegistryClient,
                deregister_data_source,
                DeregisterDataSourceRequest {
                    department_id: "health".into()
                }
            ),
            AUDITOR,
        ),
        (
            "CompleteVerification",
            rpc!(
                DepartmentRegistryClient,
                complete_verification,
                CompleteVerificationRequest {
                    department_id: "health".into(),
                    ..Default::default()
                }
            ),
            HALL,
        ),
        (
            "GetCheckpoint",
            rpc!(
                AuditServiceClient,
                get_checkpoint,
                GetCheckpointRequest::default()
            ),
            PORTAL,
        ),
        (
            "GetEntries",
            rpc!(
                AuditServiceClient,
                get_entries,
                GetEntriesRequest {
                    start: 0,
                    end: 0,
                    ..Default::default()
                }
            ),
            HALL,
        ),
        (
            "GetInclusionProof",
            rpc!(
                AuditServiceClient,
                get_inclusion_proof,
                GetInclusionProofRequest {
                    index: 0,
                    tree_size: 0,
                    ..Default::default()
                }
            ),
            PORTAL,
        ),
        (
            "GetConsistencyProof",
            rpc!(
                AuditServiceClient,
                get_consistency_proof,
                GetConsistencyProofRequest {
                    old_size: 0,
                    new_size: 0,
                    ..Default::default()
                }
            ),
            "civil-affairs.department.proofgate",
        ),
        (
            "ListAccesses",
            rpc!(
                AuditServiceClient,
                list_accesses,
                ListAccessesRequest::default()
            ),
            HALL,
        ),
    ]
}

#[tokio::test]
async fn every_rpc_refuses_callers_without_a_certificate_or_of_the_wrong_role() {
    let gw = TestGateway::start().await;
    let anonymous = connect_without_certificate(&gw.running).await;
    for (name, call, wrong_role) in every_rpc() {
        let status = call(anonymous.clone()).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert!(status.message().contains("client certificate"), "{name}");
        let status = call(gw.channel_as(wrong_role).await).await.expect_err(name);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{name} as {wrong_role}: {status:?}"
        );
        assert!(
            status.message().contains(wrong_role),
            "{name}: the denial names the caller"
        );
    }
}

async fn handshake_with(gw: &TestGateway, cert: &[u8], key: &[u8]) -> Result<(), String> {
    let certs = gw.running.certs_dir.clone().unwrap();
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let channel = Endpoint::from_shared(gw.running.endpoint())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .identity(tonic::transport::Identity::from_pem(cert, key))
                .domain_name(GATEWAY_IDENTITY),
        )
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    ApplicationServiceClient::new(channel)
        .list_matters(ListMattersRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

#[tokio::test]
async fn certificates_of_another_ca_or_expired_ones_are_refused() {
    let gw = TestGateway::start().await;
    let certs = gw.running.certs_dir.clone().unwrap();
    let good = TlsFiles::load(&certs, HALL).unwrap();
    assert!(handshake_with(&gw, &good.cert, &good.key).await.is_ok());

    let other_ca = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        other_ca.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    let foreign = TlsFiles::load(other_ca.path(), HALL).unwrap();
    assert!(
        handshake_with(&gw, &foreign.cert, &foreign.key)
            .await
            .is_err(),
        "another CA"
    );

    issue(&certs, "old-hall.hall.proofgate", Validity::Expired).unwrap();
    let expired = TlsFiles::load(&certs, "old-hall.hall.proofgate").unwrap();
    assert!(
        handshake_with(&gw, &expired.cert, &expired.key)
            .await
            .is_err(),
        "expired"
    );
}

#[tokio::test]
async fn a_hall_sees_only_its_own_applications_and_submits_only_for_itself() {
    let gw = TestGateway::start().await;
    let app = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    let other = gw.channel_as(OTHER_HALL).await;
    let status = ApplicationServiceClient::new(other.clone())
        .get_application(GetApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = ApplicationServiceClient::new(other.clone())
        .watch_application(WatchApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Submitting in the name of another hall.
    let status = ApplicationServiceClient::new(other)
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("hall-wucheng"),
        "{}",
        status.message()
    );
    // An admin may read any application.
    let read = ApplicationServiceClient::new(gw.admin.clone())
        .get_application(GetApplicationRequest {
            application_id: app.application_id,
        })
        .await;
    assert!(read.is_ok());
}

#[tokio::test]
async fn a_department_acts_only_for_itself() {
    let gw = TestGateway::start().await;
    let civil = gw.channel_as("civil-affairs.department.proofgate").await;
    let status = DepartmentRegistryClient::new(civil.clone())
        .complete_verification(CompleteVerificationRequest {
            department_id: "public-security".into(),
            ticket: "public-security-1-1".into(),
            outcome: VerificationOutcome::Verified as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut source = gw.running.mock("public-security").unwrap().data_source();
    source.endpoint = "https://127.0.0.1:1".into();
    let status = DepartmentRegistryClient::new(civil.clone())
        .register_data_source(RegisterDataSourceRequest {
            source: Some(source),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = DepartmentRegistryClient::new(civil)
        .deregister_data_source(DeregisterDataSourceRequest {
            department_id: "public-security".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Auditors read but never write.
    let status = DepartmentRegistryClient::new(gw.auditor.clone())
        .deregister_data_source(DeregisterDataSourceRequest {
            department_id: "health".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(DepartmentRegistryClient::new(gw.auditor.clone())
        .list_data_sources(ListDataSourcesRequest {})
        .await
        .is_ok());
}

#[tokio::test]
async fn a_flood_from_one_caller_is_refused_with_a_retry_hint_while_another_is_admitted() {
    // 20 calls/s for the hall: a burst of 2, then one every 50 ms, on a
    // clock that moves only when the test says so. (The exact rates are
    // tested beside the guard; here, the wiring.)
    let (gw, clock) = TestGateway::start_on_fake_clock(|options| {
        options.rate_limits.per_identity.insert(HALL.into(), 20);
    })
    .await;
    let mut hall = gw.applications();
    for _ in 0..2 {
        hall.list_matters(ListMattersRequest {}).await.unwrap();
    }
    let mut flood = Vec::new();
    for _ in 0..16 {
        let mut client = gw.applications();
        flood.push(tokio::spawn(async move {
            client.list_matters(ListMattersRequest {}).await
        }));
    }
    for call in flood {
        let status = call.await.unwrap().expect_err("past the hall's rate");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let hint = status
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(hint, Some(50), "{status:?}");
        assert!(status.message().contains(HALL), "{}", status.message());
    }
    // Another caller has its own bucket.
    let mut other = ApplicationServiceClient::new(gw.channel_as(OTHER_HALL).await);
    other.list_matters(ListMattersRequest {}).await.unwrap();
    // After the hinted wait, the hall is admitted again.
    clock.advance(Duration::from_millis(50));
    hall.list_matters(ListMattersRequest {}).await.unwrap();
    assert_eq!(
        hall.list_matters(ListMattersRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut options = options(data_dir.path());
    options.tls = false;
    options.listen = "0.0.0.0:0".parse().unwrap();
    let result = proofgate::server::start(options).await;
    assert!(matches!(
        result,
        Err(proofgate::server::ServeError::PlaintextOffLoopback(_))
    ));
}

/// A copy of the shipped policies in which public-security's queries may
/// take up to a minute.
fn patient_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("timeout_ms = 1500", "timeout_ms = 60000");
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

#[tokio::test]
async fn overload_is_shed_with_resource_exhausted_instead_of_queueing() {
    let policies = patient_policies();
    let gw = TestGateway::start_with(|options| {
        options.max_in_flight = 2;
        options.policies = Some(policies.path().to_path_buf());
    })
    .await;
    let police = gw.running.mock("public-security").unwrap();
    // The department holds every call for an hour, and the policy waits a
    // minute: two submissions stay in flight for the rest of the test.
    police
        .controls
        .latency_ms
        .store(3_600_000, std::sync::atomic::Ordering::Relaxed);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = gw.applications();
        held.push(tokio::spawn(async move {
            client
                .submit_application(request("elderly-subsidy", ELDERLY))
                .await
        }));
    }
    // Both are in flight once the department has been asked twice (a
    // condition, polled; not a guess at how long that takes).
    while police
        .controls
        .calls
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..4 {
        let status = gw
            .applications()
            .submit_application(request("elderly-subsidy", ELDERLY))
            .await
            .expect_err("two calls are in flight already");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    for call in held {
        call.abort();
    }
}

/// A node of a shared PKI (`<node-id>.gateway.proofgate`) is a gateway
/// identity: it may read the log (a mirror reads as its node), and nothing
/// a hall or a department does.
#[tokio::test]
async fn a_gateway_node_may_read_the_audit_log_and_nothing_else() {
    let gw = TestGateway::start().await;
    let node = gw.channel_as("node-2.gateway.proofgate").await;
    let mut audit = AuditServiceClient::new(node.clone());
    let checkpoint = audit
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .expect("a gateway node reads checkpoints")
        .into_inner();
    assert!(checkpoint.tree_size > 0);
    let mut entries = audit
        .get_entries(GetEntriesRequest {
            start: 0,
            end: checkpoint.tree_size,
            ..Default::default()
        })
        .await
        .expect("a gateway node reads entries")
        .into_inner();
    assert!(entries.message().await.unwrap().is_some());
    audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 1,
            new_size: checkpoint.tree_size,
            ..Default::default()
        })
        .await
        .expect("and proofs");
    let status = ApplicationServiceClient::new(node.clone())
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .expect_err("a node is no hall");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node-2.gateway.proofgate"));
    let status = DepartmentRegistryClient::new(node)
        .list_data_sources(ListDataSourcesRequest {})
        .await
        .expect_err("nor a department");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// `serve --certs DIR`: nothing generated in the data folder; the node
/// presents its own certificate where DIR has one (callers and departments
/// expecting `gateway.proofgate` still accept it), else the gateway's.
#[tokio::test]
async fn a_node_of_a_shared_pki_presents_its_node_certificate() {
    let pki = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        pki.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    let shared = pki.path().to_path_buf();
    let gw = TestGateway::start_with(|o| {
        o.certs = Some(shared.clone());
        o.node_id = "node-2".into();
    })
    .await;
    assert_eq!(
        gw.running.identity.as_deref(),
        Some("node-2.gateway.proofgate")
    );
    assert_eq!(gw.running.certs_dir.as_deref(), Some(pki.path()));
    assert!(
        !gw.data_dir.path().join("certs").exists(),
        "no PKI made in the data folder"
    );
    // Halls (expecting gateway.proofgate) submit; the node's calls to the
    // mock departments (as node-2.gateway.proofgate) are admitted.
    let application = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    assert_eq!(
        application.status,
        ApplicationStatus::Complete as i32,
        "{application:?}"
    );
    // The certificate presented is the node's own.
    let files = TlsFiles::load(pki.path(), HALL).unwrap();
    proofgate::security::connect(
        &gw.running.endpoint(),
        Some(&files),
        "node-2.gateway.proofgate",
    )
    .await
    .expect("the node presents node-2.gateway.proofgate");
    assert!(
        proofgate::security::connect(
            &gw.running.endpoint(),
            Some(&files),
            "node-1.gateway.proofgate",
        )
        .await
        .is_err(),
        "and not another node's"
    );
    gw.running.shutdown().await;

    // A node id without a certificate in DIR: the gateway's.
    let other = TestGateway::start_with(|o| {
        o.certs = Some(pki.path().to_path_buf());
        o.node_id = "node-9".into();
    })
    .await;
    assert_eq!(other.running.identity.as_deref(), Some(GATEWAY_IDENTITY));
    other.running.shutdown().await;

    // A folder without a CA is refused, naming what to do.
    let empty = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut options = options(data.path());
    options.certs = Some(empty.path().to_path_buf());
    let err = proofgate::server::start(options)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.exit_code(), 64);
    assert!(err.to_string().contains("dev-certs"), "{err}");
}
