//! Reads across nodes (issue 10 items 6 and 7, issue 11 item 4):
//! - a down node's applications are read from a verified mirror of its log,
//!   at any node, marked as served from a mirror, with the owner's state and
//!   the owner's rule of who may read; once the owner is back it answers;
//! - a pending verification created on node 1 is completed by a department
//!   process that knows only node 3, while a watcher on node 2 follows it to
//!   its final status; the decision stays in node 1's log, which verifies
//!   and replays.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::common::*;
use super::etcd::{
    dev_certs, restart_node, share_pseudonym_key, spawn_pki_node_with, EtcdCluster, Node, BOUND,
};
use super::shared::MockProcess;
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_entry::Event;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::department_registry_client::DepartmentRegistryClient;
use proofgate::pb::{
    Application, ApplicationStatus, AuditEntry, CompleteVerificationRequest, GetApplicationRequest,
    GetCheckpointRequest, GetEntriesRequest, ListDataSourcesRequest, SubmitApplicationRequest,
    VerificationOutcome, WatchApplicationRequest,
};

async fn submit(
    channel: &Channel,
    request: &SubmitApplicationRequest,
) -> Result<proofgate::pb::SubmitApplicationResponse, tonic::Status> {
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(Duration::from_secs(20));
    ApplicationServiceClient::new(channel.clone())
        .submit_application(call)
        .await
        .map(|r| r.into_inner())
}

/// Submits until answered: UNAVAILABLE (a session renewal that timed out on
/// a busy machine, departments not yet adopted from the shared registry) is
/// retried within BOUND.
async fn submit_until_answered(
    channel: &Channel,
    request: &SubmitApplicationRequest,
) -> Application {
    let started = Instant::now();
    loop {
        match submit(channel, request).await {
            Ok(reply) => return reply.application.expect("an application"),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(started.elapsed() < BOUND, "never answered: {status:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

async fn get(channel: &Channel, application_id: &str) -> Result<Application, tonic::Status> {
    ApplicationServiceClient::new(channel.clone())
        .get_application(GetApplicationRequest {
            application_id: application_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every item of a WatchApplication stream, and how it ended.
async fn watch_to_end(
    channel: &Channel,
    application_id: &str,
) -> (Vec<Application>, Option<tonic::Status>) {
    let mut stream = ApplicationServiceClient::new(channel.clone())
        .watch_application(WatchApplicationRequest {
            application_id: application_id.to_owned(),
        })
        .await
        .expect("the watch opens")
        .into_inner();
    let mut items = Vec::new();
    loop {
        match tokio::time::timeout(BOUND, stream.next())
            .await
            .expect("the watch moves on")
        {
            None => return (items, None),
            Some(Ok(item)) => items.push(item),
            Some(Err(status)) => return (items, Some(status)),
        }
    }
}

/// The newest checkpoint size of `origin` (empty: the node's own log) at `node`.
async fn checkpoint_size(node: &Node, origin: &str) -> Option<u64> {
    let auditor = connect_with(&node.endpoint, &node.certs(), AUDITOR).await;
    AuditServiceClient::new(auditor)
        .get_checkpoint(GetCheckpointRequest {
            origin: origin.to_owned(),
            ..Default::default()
        })
        .await
        .ok()
        .map(|r| r.into_inner().tree_size)
}

/// Every entry of a node's own log, read over AuditService as the auditor.
async fn log_of(node: &Node) -> Vec<AuditEntry> {
    let size = checkpoint_size(node, "").await.expect("checkpoint");
    let auditor = connect_with(&node.endpoint, &node.certs(), AUDITOR).await;
    let mut stream = AuditServiceClient::new(auditor)
        .get_entries(GetEntriesRequest {
            start: 0,
            end: size,
            ..Default::default()
        })
        .await
        .expect("entries")
        .into_inner();
    let mut entries = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.expect("entry");
        entries.push(AuditEntry::decode(item.entry.as_slice()).expect("entry decodes"));
    }
    entries
}

/// The entries of `log` about `application_id`.
fn about(log: &[AuditEntry], application_id: &str) -> Vec<AuditEntry> {
    log.iter()
        .filter(|e| match &e.event {
            Some(Event::ApplicationDecided(d)) => d.application_id == application_id,
            Some(Event::VerificationCompleted(c)) => c.application_id == application_id,
            Some(Event::VerificationOverdue(o)) => o.application_id == application_id,
            _ => false,
        })
        .cloned()
        .collect()
}

/// `proofgate audit verify|replay --data-dir D` pass (the node is stopped).
fn verifies_and_replays(data_dir: &Path) {
    for command in ["verify", "replay"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["audit", command, "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("proofgate audit runs");
        assert!(
            out.status.success(),
            "audit {command} {}: {}{}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn elderly(request_id: &str) -> SubmitApplicationRequest {
    let mut request = request("elderly-subsidy", ELDERLY);
    request.request_id = request_id.to_owned();
    request
}

/// An application as its owner answers it: without the mirror mark.
fn unmarked(application: &Application) -> Application {
    Application {
        served_from_mirror: None,
        ..application.clone()
    }
}

/// Node 1 decides under load while node 2 mirrors it (`--mirror`, besides
/// the default mirroring of the next node); node 3 keeps no mirror of it
/// (`--mirror off`). Node 1 is SIGKILLed: every application it acknowledged
/// that node 2's mirror holds is read through node 2 (its own mirror) and
/// node 3 (which asks node 2), marked, with node 1's state; the rest is
/// UNAVAILABLE naming node 1. A watch gives the mirrored state and ends; a
/// completion and a retried submission decide nothing new. Node 1 back: it
/// answers again, unmarked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_nodes_applications_are_read_from_a_mirror_marked_until_it_is_back() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(dir.path());
    let (d1, d2, d3) = (
        dir.path().join("n1"),
        dir.path().join("n2"),
        dir.path().join("n3"),
    );
    share_pseudonym_key(&[&d1, &d2, &d3]);
    let endpoints = etcd.endpoints();
    let n1 = spawn_pki_node_with(&endpoints, "node-1", &d1, &certs, &[]);
    // Node 2 runs the departments (in-process mocks, in the shared registry).
    let n2 = spawn_pki_node_with(
        &endpoints,
        "node-2",
        &d2,
        &certs,
        &["--mock-departments", "--mirror", &n1.endpoint],
    );
    let n3 = spawn_pki_node_with(&endpoints, "node-3", &d3, &certs, &["--mirror", "off"]);
    let hall1 = connect_with(&n1.endpoint, &certs, HALL).await;
    let hall2 = connect_with(&n2.endpoint, &certs, HALL).await;
    let hall3 = connect_with(&n3.endpoint, &certs, HALL).await;

    // One application that stays pending (the education department answers
    // in an hour), decided before the load.
    let mut teacher = with_commitments(
        request("teacher-qualification", PENDING_THEN_VERIFIED),
        &[("character-reference", "character-v2")],
    );
    teacher.request_id = "mirror-pending".into();
    let pending = submit_until_answered(&hall1, &teacher).await;
    assert!(pending.application_id.starts_with("node-1."));
    assert_eq!(status(&pending), ApplicationStatus::Pending);

    // Halls submit to node 1 until it dies; node 1's answers are kept.
    let acknowledged = Arc::new(tokio::sync::Mutex::new(vec![(
        teacher.clone(),
        pending.clone(),
    )]));
    let stop = Arc::new(AtomicBool::new(false));
    let halls: Vec<_> = (0..3)
        .map(|h| {
            let (channel, acknowledged, stop) =
                (hall1.clone(), Arc::clone(&acknowledged), Arc::clone(&stop));
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let request = elderly(&format!("mirror-load-{h}-{i}"));
                    match submit(&channel, &request).await {
                        Ok(reply) => acknowledged
                            .lock()
                            .await
                            .push((request, reply.application.expect("an application"))),
                        // Node 1 gone (the loop ends at `stop`), or busy.
                        Err(status)
                            if matches!(
                                status.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                                    | tonic::Code::DeadlineExceeded
                            ) =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(status) => panic!("{status:?}"),
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.lock().await.len() < 30 {
        assert!(started.elapsed() < BOUND, "no load on node 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Until acks wait for the mirror (`--mirror-ack`), wait for node 2's
    // mirror to reach node 1's newest checkpoint, then kill node 1 while
    // the halls go on.
    let target = checkpoint_size(&n1, "").await.expect("node 1's checkpoint");
    let started = Instant::now();
    while checkpoint_size(&n2, "proofgate/node-1").await.unwrap_or(0) < target {
        assert!(started.elapsed() < BOUND, "node 2 never mirrored node 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n1 = n1;
    n1.kill();
    stop.store(true, Ordering::Relaxed);
    for hall in halls {
        hall.await.expect("hall task");
    }
    let mirrored = checkpoint_size(&n2, "proofgate/node-1")
        .await
        .expect("node 2 serves its mirror of node 1");
    assert!(mirrored >= target);
    let acknowledged = acknowledged.lock().await.clone();

    // Every acknowledged application the mirror holds: the same through
    // node 2 and node 3, marked as node 2's mirror at its size.
    let mut held = 0;
    for (_, answered) in &acknowledged {
        let receipt = answered.receipt.clone().expect("a receipt");
        for (reader, name) in [(&hall2, "node 2"), (&hall3, "node 3")] {
            let read = get(reader, &answered.application_id).await;
            if receipt.index >= mirrored {
                let down = read.expect_err("not in the mirror: not answered");
                assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
                assert!(down.message().contains("node `node-1`"), "{down:?}");
                continue;
            }
            let read = read
                .unwrap_or_else(|e| panic!("{} through {name}: {e:?}", answered.application_id));
            let mark = read
                .served_from_mirror
                .clone()
                .expect("marked as from a mirror");
            assert_eq!(mark.mirror_node_id, "node-2", "through {name}");
            assert_eq!(mark.origin, "proofgate/node-1");
            assert_eq!(mark.tree_size, mirrored);
            assert!(
                mark.checkpoint.starts_with("proofgate/node-1\n"),
                "{}",
                mark.checkpoint
            );
            assert_eq!(
                unmarked(&read),
                *answered,
                "through {name}: node 1's answer"
            );
        }
        held += usize::from(receipt.index < mirrored);
    }
    assert!(
        held >= 30,
        "{held} of {} acknowledged applications checked",
        acknowledged.len()
    );

    // The owner's rule: another hall may not read it, mirror or not.
    let other = connect_with(&n3.endpoint, &certs, OTHER_HALL).await;
    let denied = get(&other, &pending.application_id).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // A watch through node 3: the mirrored state, then the end — with a
    // clear status while it is not final (updates need the owner).
    let (items, ended) = watch_to_end(&hall3, &pending.application_id).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(unmarked(&items[0]), pending);
    assert!(items[0].served_from_mirror.is_some());
    let ended = ended.expect("a status after a pending mirrored state");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("watch again"), "{ended:?}");
    let (_, final_app) = acknowledged
        .iter()
        .find(|(_, a)| {
            a.receipt.as_ref().is_some_and(|r| r.index < mirrored)
                && status(a) != ApplicationStatus::Pending
        })
        .expect("a final application in the mirror");
    let (items, ended) = watch_to_end(&hall3, &final_app.application_id).await;
    assert!(ended.is_none(), "{ended:?}");
    assert_eq!(items.len(), 1);
    assert_eq!(unmarked(&items[0]), *final_app);

    // Mirrored data are read-only: a completion of node 1's ticket is not
    // taken (UNAVAILABLE naming node 1 while it is in the directory, then
    // NOT_FOUND; the application stays pending, checked below), and a
    // retried submission of a request node 1 decided gets that decision
    // (replayed), decided nowhere else.
    let education = connect_with(&n3.endpoint, &certs, "education.department.proofgate").await;
    let ticket = proof(&pending, "degree-certificate").ticket.clone();
    let completion = DepartmentRegistryClient::new(education)
        .complete_verification(CompleteVerificationRequest {
            department_id: "education".into(),
            ticket,
            outcome: VerificationOutcome::Verified as i32,
            reason: String::new(),
            signature: vec![0; 64],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            completion.code(),
            tonic::Code::Unavailable | tonic::Code::NotFound
        ),
        "{completion:?}"
    );
    let (request, answered) = acknowledged
        .iter()
        .find(|(r, a)| {
            r.request_id.starts_with("mirror-load")
                && a.receipt.as_ref().is_some_and(|r| r.index < mirrored)
        })
        .expect("a load request in the mirror");
    let retried = submit(&hall3, request).await.expect("a retry is answered");
    assert!(retried.replayed);
    let retried = retried.application.unwrap();
    assert!(retried.served_from_mirror.is_some());
    assert_eq!(unmarked(&retried), *answered);

    // Node 1 back (once its session is gone, so its id is free): reads
    // come from the owner again, unmarked, and nothing was completed.
    let started = Instant::now();
    while etcd
        .nodes()
        .await
        .iter()
        .any(|n| n.record.node_id == "node-1")
    {
        assert!(started.elapsed() < BOUND, "node 1's lease never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let n1 = restart_node(&endpoints, "node-1", &n1);
    let started = Instant::now();
    loop {
        match get(&hall3, &pending.application_id).await {
            Ok(read) if read.served_from_mirror.is_none() => {
                assert_eq!(read, pending);
                break;
            }
            _ => {
                assert!(started.elapsed() < BOUND, "node 1 never answered again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let from_owner = get(&hall2, &final_app.application_id)
        .await
        .expect("read through node 2");
    assert_eq!(from_owner, *final_app);
    drop((n1, n2, n3));
}

/// Issue 10: "A pending verification created on node 1 is completed through
/// node 3. A watcher on node 2 sees the final status." The department is a
/// process (`proofgate mock-department`) that knows only node 3: it
/// registers there (the shared registry tells node 1) and sends its
/// completion there; node 3 hands it to node 1, which holds the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_verification_made_on_node_1_is_completed_through_node_3_and_watched_on_node_2() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(dir.path());
    let (d1, d2, d3) = (
        dir.path().join("n1"),
        dir.path().join("n2"),
        dir.path().join("n3"),
    );
    share_pseudonym_key(&[&d1, &d2, &d3]);
    let endpoints = etcd.endpoints();
    let n1 = spawn_pki_node_with(&endpoints, "node-1", &d1, &certs, &[]);
    let n2 = spawn_pki_node_with(&endpoints, "node-2", &d2, &certs, &[]);
    let n3 = spawn_pki_node_with(&endpoints, "node-3", &d3, &certs, &[]);
    let _department = MockProcess::start("public-security", &[&n3.endpoint], &certs);
    // Node 1 knows the department once the shared registry told it.
    let auditor1 = connect_with(&n1.endpoint, &certs, AUDITOR).await;
    let started = Instant::now();
    loop {
        let sources = DepartmentRegistryClient::new(auditor1.clone())
            .list_data_sources(ListDataSourcesRequest {})
            .await
            .expect("ListDataSources")
            .into_inner()
            .sources;
        if sources.iter().any(|s| s.department_id == "public-security") {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "node 1 never learnt the department"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pending on node 1 (the department answers in 1.5 s, to node 3).
    let hall1 = connect_with(&n1.endpoint, &certs, HALL).await;
    let mut coach = request("coach-licence-renewal", PENDING_THEN_VERIFIED);
    coach.request_id = "completed-elsewhere".into();
    let decided = submit_until_answered(&hall1, &coach).await;
    assert!(decided.application_id.starts_with("node-1."));
    assert_eq!(status(&decided), ApplicationStatus::Pending, "{decided:?}");
    assert!(!proof(&decided, "safe-driving-record").ticket.is_empty());

    // A watcher on node 2 follows it (through node 1) to its final status.
    let hall2 = connect_with(&n2.endpoint, &certs, HALL).await;
    let (items, ended) = watch_to_end(&hall2, &decided.application_id).await;
    assert!(ended.is_none(), "{ended:?}");
    let last = items.last().expect("the watch gives the state");
    assert_eq!(status(last), ApplicationStatus::Complete, "{items:?}");
    assert!(last.served_from_mirror.is_none());
    assert!(items
        .iter()
        .all(|a| a.application_id == decided.application_id));

    // The decision and its completion are in node 1's log only.
    let logs = [log_of(&n1).await, log_of(&n2).await, log_of(&n3).await];
    let in_node_1 = about(&logs[0], &decided.application_id);
    assert!(
        matches!(in_node_1[0].event, Some(Event::ApplicationDecided(_))),
        "{in_node_1:?}"
    );
    assert!(
        in_node_1
            .iter()
            .any(|e| matches!(e.event, Some(Event::VerificationCompleted(_)))),
        "{in_node_1:?}"
    );
    assert!(about(&logs[1], &decided.application_id).is_empty());
    assert!(about(&logs[2], &decided.application_id).is_empty());
    // Node 1's log verifies and replays (node stopped: the store is its).
    let data_dir = n1.data_dir.clone();
    drop(n1);
    verifies_and_replays(&data_dir);
    drop((n2, n3));
}
