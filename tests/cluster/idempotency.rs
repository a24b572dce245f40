//! Idempotency across nodes (issue 10, item 4): a request retried on another
//! node gets the first decision (`replayed`), a request id reused for a
//! different request is refused, and — node failover — halls that retry
//! unacknowledged requests on another node after the first was SIGKILLed
//! end with exactly one acknowledged decision per request in the cluster.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio_stream::StreamExt;

use super::common::*;
use super::etcd::{
    dev_certs, restart_node, run_node_to_end, share_pseudonym_key, spawn_pki_node,
    spawn_pki_node_with, spawn_pki_node_without_mocks, EtcdCluster, Node, BOUND,
};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_entry::Event;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::{
    Application, AuditEntry, GetApplicationRequest, GetCheckpointRequest, GetEntriesRequest,
    SubmitApplicationRequest, SubmitApplicationResponse,
};

async fn submit_on(
    channel: &tonic::transport::Channel,
    request: &SubmitApplicationRequest,
) -> Result<SubmitApplicationResponse, tonic::Status> {
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(Duration::from_secs(20));
    ApplicationServiceClient::new(channel.clone())
        .submit_application(call)
        .await
        .map(|r| r.into_inner())
}

/// Submits until answered: UNAVAILABLE (a session renewal that timed out on
/// a busy machine, a request still being decided) is retried within BOUND.
async fn submit_until_answered(
    channel: &tonic::transport::Channel,
    request: &SubmitApplicationRequest,
) -> Result<SubmitApplicationResponse, tonic::Status> {
    let started = Instant::now();
    loop {
        match submit_on(channel, request).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(started.elapsed() < BOUND, "never answered: {status:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// Every entry of a node's log, read over AuditService as the auditor.
async fn log_of(node: &Node) -> Vec<AuditEntry> {
    let auditor = connect_with(&node.endpoint, &node.certs(), AUDITOR).await;
    let mut client = AuditServiceClient::new(auditor);
    let size = client
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .expect("checkpoint")
        .into_inner()
        .tree_size;
    let mut stream = client
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

/// Per (caller, request id): the application ids decided for it and not
/// marked superseded, across these logs.
fn live_decisions(logs: &[Vec<AuditEntry>]) -> HashMap<(String, String), Vec<String>> {
    let superseded: HashSet<String> = logs
        .iter()
        .flatten()
        .filter_map(|e| match &e.event {
            Some(Event::DecisionSuperseded(s)) => Some(s.application_id.clone()),
            _ => None,
        })
        .collect();
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    for entry in logs.iter().flatten() {
        if let Some(Event::ApplicationDecided(d)) = &entry.event {
            let ids = out
                .entry((d.caller.clone(), d.request_id.clone()))
                .or_default();
            if !superseded.contains(&d.application_id) {
                ids.push(d.application_id.clone());
            }
        }
    }
    out
}

fn elderly(request_id: &str) -> SubmitApplicationRequest {
    let mut request = request("elderly-subsidy", ELDERLY);
    request.request_id = request_id.to_owned();
    request
}

/// Two nodes of one cluster: one PKI (each node with its own certificate),
/// one pseudonym key, one set of departments (node 2's in-process mocks, in
/// the shared registry: node 1 uses them).
fn two_nodes(etcd: &EtcdCluster, dir: &Path) -> (Node, Node) {
    let certs = dev_certs(dir);
    let (d1, d2) = (dir.join("n1"), dir.join("n2"));
    share_pseudonym_key(&[&d1, &d2]);
    let second = spawn_pki_node(&etcd.endpoints(), "node-2", &d2, &certs);
    let first = spawn_pki_node_without_mocks(&etcd.endpoints(), "node-1", &d1, &certs);
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_on_another_node_gets_the_same_application_and_a_reused_id_is_refused() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_nodes(&etcd, dir.path());
    let hall1 = connect_with(&n1.endpoint, &n1.certs(), HALL).await;
    let hall2 = connect_with(&n2.endpoint, &n2.certs(), HALL).await;

    let request = elderly("idem-across-1");
    let first = submit_until_answered(&hall1, &request).await.unwrap();
    assert!(!first.replayed);
    let application = first.application.unwrap();
    assert!(application.application_id.starts_with("node-1."));

    // The same request again, on the same node and on the other one.
    let again = submit_until_answered(&hall1, &request).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.application.as_ref(), Some(&application));
    let elsewhere = submit_until_answered(&hall2, &request).await.unwrap();
    assert!(elsewhere.replayed, "{elsewhere:?}");
    assert_eq!(elsewhere.application.as_ref(), Some(&application));

    // The same request id for a different request: refused on both nodes.
    let mut other = request.clone();
    other.applicant.as_mut().unwrap().id_number = PASSES_ALL.into();
    for hall in [&hall2, &hall1] {
        let refused = submit_until_answered(hall, &other).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
        assert!(refused.message().contains("idem-across-1"), "{refused:?}");
    }

    // Another hall may use the same request id: it is a different request.
    let other_hall = connect_with(&n2.endpoint, &n2.certs(), OTHER_HALL).await;
    let mut theirs = request.clone();
    theirs.officer.as_mut().unwrap().hall_id = "hall-jindong".into();
    let own = submit_until_answered(&other_hall, &theirs).await.unwrap();
    assert!(!own.replayed);
    assert!(own
        .application
        .unwrap()
        .application_id
        .starts_with("node-2."));

    // No log holds a second decision of the first request.
    let logs = [log_of(&n1).await, log_of(&n2).await];
    let decided = live_decisions(&logs);
    assert_eq!(
        decided[&(HALL.to_owned(), "idem-across-1".to_owned())],
        vec![application.application_id.clone()]
    );
    let all: usize = logs
        .iter()
        .flatten()
        .filter(|e| matches!(&e.event, Some(Event::ApplicationDecided(d)) if d.request_id == "idem-across-1"))
        .count();
    assert_eq!(all, 2, "one decision per hall, none twice");

    // etcd names the decision.
    let mut client =
        etcd_client::Client::connect(etcd.endpoints().split(',').collect::<Vec<_>>(), None)
            .await
            .unwrap();
    let key = proofgate::cluster::request_key("/proofgate/", HALL, "idem-across-1");
    let got = client.get(key.as_bytes(), None).await.unwrap();
    let record: proofgate::cluster::Reservation =
        serde_json::from_slice(got.kvs()[0].value()).unwrap();
    assert_eq!(record.owner, "node-1");
    assert_eq!(record.decided(), Some(application.application_id.as_str()));
    assert!(
        got.kvs()[0].lease() != 0,
        "reservations expire with a lease"
    );
}

/// A hall: submits its requests one after another on its current node; a
/// request that gets no answer (UNAVAILABLE, connection error) is retried
/// with the same request id on the next node, as a hall would.
async fn hall_loop(
    halls: Arc<Vec<tonic::transport::Channel>>,
    prefix: String,
    count: usize,
    start_on: usize,
    acknowledged: Arc<tokio::sync::Mutex<Vec<(String, Application)>>>,
) -> (usize, usize) {
    let (mut retries, mut replayed) = (0, 0);
    let mut node = start_on;
    for i in 0..count {
        let request = elderly(&format!("{prefix}-{i}"));
        let started = Instant::now();
        loop {
            match submit_on(&halls[node], &request).await {
                Ok(reply) => {
                    replayed += usize::from(reply.replayed);
                    acknowledged
                        .lock()
                        .await
                        .push((request.request_id.clone(), reply.application.unwrap()));
                    break;
                }
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Internal
                                | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded
                        ),
                        "{status:?}"
                    );
                    assert!(started.elapsed() < BOUND, "never answered: {status:?}");
                    retries += 1;
                    node = (node + 1) % halls.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    (retries, replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_failover_leaves_one_acknowledged_decision_per_request_and_every_log_replays() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut n1, n2) = two_nodes(&etcd, dir.path());
    let halls = Arc::new(vec![
        connect_with(&n1.endpoint, &n1.certs(), HALL).await,
        connect_with(&n2.endpoint, &n2.certs(), HALL).await,
    ]);
    let acknowledged = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    // Four halls on node 1 under load.
    const PER_HALL: usize = 40;
    let tasks: Vec<_> = (0..4)
        .map(|h| {
            tokio::spawn(hall_loop(
                Arc::clone(&halls),
                format!("failover-{h}"),
                PER_HALL,
                0,
                Arc::clone(&acknowledged),
            ))
        })
        .collect();
    // Node 1 dies once some decisions were acknowledged.
    let started = Instant::now();
    while acknowledged.lock().await.len() < 10 {
        assert!(started.elapsed() < BOUND, "no decisions before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n1.kill();
    // Halls retry on node 2; a request node 1 reserved is taken over there
    // once node 1's session is gone. Node 1 restarts (same data, same
    // address) after that, while the halls go on: a retry of a request node
    // 1 decided and acknowledged is read from it, so it must come back.
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
    let n1 = restart_node(&etcd.endpoints(), "node-1", &n1);
    let (mut retries, mut replayed) = (0, 0);
    for task in tasks {
        let (r, p) = task.await.expect("hall task");
        retries += r;
        replayed += p;
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert_eq!(acknowledged.len(), 4 * PER_HALL);
    assert!(retries > 0, "the kill made halls retry elsewhere");
    // One answer per request id, and a replay is the same application.
    let mut by_request: HashMap<String, String> = HashMap::new();
    for (request_id, application) in &acknowledged {
        let known = by_request
            .entry(request_id.clone())
            .or_insert_with(|| application.application_id.clone());
        assert_eq!(known, &application.application_id, "{request_id}");
    }

    let nodes = [&n1, &n2];
    // Every acknowledged application is readable through every node (the
    // owner answers, forwarded from the other).
    let readers = [
        connect_with(&n1.endpoint, &n1.certs(), HALL).await,
        connect_with(&n2.endpoint, &n2.certs(), HALL).await,
    ];
    for (_, application) in &acknowledged {
        for reader in &readers {
            let read = ApplicationServiceClient::new(reader.clone())
                .get_application(GetApplicationRequest {
                    application_id: application.application_id.clone(),
                })
                .await
                .expect("acknowledged application readable")
                .into_inner();
            assert_eq!(read.application_id, application.application_id);
        }
    }
    // Across the logs, exactly one decision per request that is not
    // superseded, and it is the acknowledged one (node 1 settles its
    // orphans at start: wait for it within the bound).
    let started = Instant::now();
    loop {
        let logs = [log_of(nodes[0]).await, log_of(nodes[1]).await];
        let decided = live_decisions(&logs);
        let settled = by_request.iter().all(|(request_id, application_id)| {
            decided.get(&(HALL.to_owned(), request_id.clone()))
                == Some(&vec![application_id.clone()])
        });
        if settled {
            assert_eq!(
                decided.len(),
                by_request.len(),
                "no decision for an unknown request"
            );
            let superseded = logs
                .iter()
                .flatten()
                .filter(|e| matches!(e.event, Some(Event::DecisionSuperseded(_))))
                .count();
            let on_node_2 = by_request
                .values()
                .filter(|id| id.starts_with("node-2."))
                .count();
            eprintln!(
                "failover: {} requests, {retries} retries, {replayed} answered as replayed, {on_node_2} decided on node 2, {superseded} orphans superseded",
                by_request.len()
            );
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "requests with other than one live decision: {:?}",
            by_request
                .iter()
                .filter(
                    |(r, _)| decided.get(&(HALL.to_owned(), (*r).clone())).map(Vec::len) != Some(1)
                )
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every log verifies and replays (nodes stopped: the store is theirs).
    let data_dirs = [n1.data_dir.clone(), n2.data_dir.clone()];
    drop(n1);
    drop(n2);
    for data_dir in &data_dirs {
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
}

/// Runs `proofgate ARGS` to its end; stdout as JSON.
fn proofgate_json(args: &[&str], data_dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .output()
        .expect("proofgate runs");
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Orphans, made deterministic: a node decides two requests and is killed;
/// meanwhile (as etcd then says) one was taken over and decided by another
/// node, and the other's mark never reached etcd while its owner's session
/// is gone. Restarted, the node marks the first superseded (replay and the
/// statistics count its request once) and confirms the second as decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_supersedes_its_orphans_and_confirms_its_unmarked_decisions() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(dir.path());
    let data = dir.path().join("n1");
    // Alone in its cluster: no peer to mirror it, so no acknowledgement
    // waits for one (`--mirror-ack 0`).
    let mut node = spawn_pki_node_with(
        &etcd.endpoints(),
        "node-1",
        &data,
        &certs,
        &["--mock-departments", "--mirror-ack", "0"],
    );
    let hall = connect_with(&node.endpoint, &node.certs(), HALL).await;
    let orphan = submit_until_answered(&hall, &elderly("orphan-1"))
        .await
        .unwrap()
        .application
        .unwrap();
    let unmarked = submit_until_answered(&hall, &elderly("unmarked-1"))
        .await
        .unwrap()
        .application
        .unwrap();
    node.kill();

    // What etcd says happened meanwhile.
    let mut client =
        etcd_client::Client::connect(etcd.endpoints().split(',').collect::<Vec<_>>(), None)
            .await
            .unwrap();
    let reservation =
        |request_id: &str| proofgate::cluster::request_key("/proofgate/", HALL, request_id);
    let read = |got: etcd_client::GetResponse| -> proofgate::cluster::Reservation {
        serde_json::from_slice(got.kvs()[0].value()).unwrap()
    };
    let mut taken = read(client.get(reservation("orphan-1"), None).await.unwrap());
    taken.owner = "node-2".into();
    taken.owner_lease = 1;
    taken.application_id = "node-2.0123456789abcdef01234567".into();
    client
        .put(
            reservation("orphan-1"),
            serde_json::to_string(&taken).unwrap(),
            None,
        )
        .await
        .unwrap();
    let mut left = read(client.get(reservation("unmarked-1"), None).await.unwrap());
    left.owner_lease = 1; // a session that is gone
    left.application_id.clear();
    client
        .put(
            reservation("unmarked-1"),
            serde_json::to_string(&left).unwrap(),
            None,
        )
        .await
        .unwrap();
    // ... and the node's notes of both (as if it died before marking them).
    {
        let store = proofgate::audit::AuditStore::open(&data.join("log")).unwrap();
        store.note_reservation(HALL, "orphan-1").unwrap();
        store.note_reservation(HALL, "unmarked-1").unwrap();
    } // dropped: flushed

    // The killed node's record goes with its lease; then it may rejoin.
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
    let node = restart_node(&etcd.endpoints(), "node-1", &node);
    // Settled at start: the orphan superseded, the other marked decided.
    let log = log_of(&node).await;
    let superseded: Vec<_> = log
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::DecisionSuperseded(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(superseded.len(), 1, "{superseded:?}");
    assert_eq!(superseded[0].application_id, orphan.application_id);
    assert_eq!(superseded[0].request_id, "orphan-1");
    assert_eq!(superseded[0].superseded_by, taken.application_id);
    let confirmed = read(client.get(reservation("unmarked-1"), None).await.unwrap());
    assert_eq!(confirmed.owner, "node-1");
    assert_eq!(confirmed.decided(), Some(unmarked.application_id.as_str()));

    // A retry of the confirmed request gets its decision.
    let hall = connect_with(&node.endpoint, &node.certs(), HALL).await;
    let again = submit_until_answered(&hall, &elderly("unmarked-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        again.application.unwrap().application_id,
        unmarked.application_id
    );

    // Offline: the log verifies, replays (the orphan re-derived, counted
    // superseded) and the statistics leave the orphan out.
    let data = node.data_dir.clone();
    drop(node);
    let replay = proofgate_json(&["audit", "replay"], &data);
    assert_eq!(replay["ok"], true, "{replay}");
    assert_eq!(replay["superseded"], 1, "{replay}");
    assert_eq!(replay["requests_decided"], 1, "{replay}");
    let verify = proofgate_json(&["audit", "verify"], &data);
    assert_eq!(verify["ok"], true, "{verify}");
    let stats = proofgate_json(&["stats"], &data);
    assert_eq!(stats["applications"], 1, "{stats}");
    // The store is what its entries say (the orphan's request key is gone).
    let rebuild = std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["audit", "rebuild", "--data-dir"])
        .arg(&data)
        .output()
        .expect("proofgate runs");
    assert!(rebuild.status.success(), "{rebuild:?}");
}

async fn tree_size_of(node: &Node) -> u64 {
    let auditor = connect_with(&node.endpoint, &node.certs(), AUDITOR).await;
    AuditServiceClient::new(auditor)
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .expect("checkpoint")
        .into_inner()
        .tree_size
}

/// `proofgate bench --endpoint A,B`: spread over both nodes; when one is
/// SIGKILLed, its requests go to the other with the same ids, and the
/// report counts the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_spreads_over_the_nodes_and_retries_elsewhere_when_one_dies() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_nodes(&etcd, dir.path());
    let before = (tree_size_of(&n1).await, tree_size_of(&n2).await);
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["bench", "--concurrency", "4", "--seconds", "6"])
        .args(["--matter", "elderly-subsidy", "--endpoint"])
        .arg(format!("{},{}", n1.endpoint, n2.endpoint))
        .arg("--certs")
        .arg(n1.certs())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bench starts");
    // Both nodes take load (the workers are spread) ...
    let started = Instant::now();
    while tree_size_of(&n1).await < before.0 + 10 || tree_size_of(&n2).await < before.1 + 10 {
        assert!(
            started.elapsed() < BOUND,
            "the bench never loaded both nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... until node 1 dies; it comes back once its session is gone.
    let mut n1 = n1;
    n1.kill();
    while etcd
        .nodes()
        .await
        .iter()
        .any(|n| n.record.node_id == "node-1")
    {
        assert!(started.elapsed() < BOUND, "node 1's lease never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _n1 = restart_node(&etcd.endpoints(), "node-1", &n1);
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output())
        .await
        .unwrap()
        .expect("bench ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("SubmitApplication"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let figure = |name: &str| -> u64 {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name);
        words.next().and_then(|w| w.parse().ok()).unwrap_or(0)
    };
    assert!(figure("ok") > 0, "{line}");
    assert!(figure("retries") > 0, "{line}");
    assert_eq!(figure("failed"), 0, "{line}");
    assert!(line.contains("replayed"), "{line}");
}

/// Owner routing (issue 10, item 6): GetApplication and WatchApplication of
/// another node's application, asked at any node, are answered by its owner
/// for the caller who asked (the owner checks who may read it); with the
/// owner down, node 2's mirror of node 1's log answers, marked, and what no
/// mirror holds is UNAVAILABLE naming the owner, with a retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_watches_at_any_node_are_answered_by_the_owner() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut n1, n2) = two_nodes(&etcd, dir.path());
    let hall1 = connect_with(&n1.endpoint, &n1.certs(), HALL).await;
    let hall2 = connect_with(&n2.endpoint, &n2.certs(), HALL).await;
    let mut pending = request("coach-licence-renewal", PENDING_THEN_VERIFIED);
    pending.request_id = "routed-1".into();
    let decided = submit_until_answered(&hall1, &pending)
        .await
        .unwrap()
        .application
        .unwrap();
    assert!(decided.application_id.starts_with("node-1."));
    assert_eq!(status(&decided), proofgate::pb::ApplicationStatus::Pending);

    // A watcher on node 2 follows it to its final status.
    let mut watch = ApplicationServiceClient::new(hall2.clone())
        .watch_application(proofgate::pb::WatchApplicationRequest {
            application_id: decided.application_id.clone(),
        })
        .await
        .expect("watch through node 2")
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.application_id, decided.application_id);
    let mut last = first;
    while let Some(item) = tokio::time::timeout(BOUND, watch.next())
        .await
        .expect("the watch moves on")
    {
        last = item.expect("an update");
    }
    assert_eq!(status(&last), proofgate::pb::ApplicationStatus::Complete);

    // Read through node 2: the owner's current state.
    let read = ApplicationServiceClient::new(hall2.clone())
        .get_application(GetApplicationRequest {
            application_id: decided.application_id.clone(),
        })
        .await
        .expect("read through node 2")
        .into_inner();
    assert_eq!(read, last);

    // The owner decides who may read: another hall may not, through any node.
    let other = connect_with(&n2.endpoint, &n2.certs(), OTHER_HALL).await;
    let denied = ApplicationServiceClient::new(other)
        .get_application(GetApplicationRequest {
            application_id: decided.application_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains(OTHER_HALL), "{denied:?}");
    let unknown = ApplicationServiceClient::new(hall2.clone())
        .get_application(GetApplicationRequest {
            application_id: "node-1.000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // One of node 2's own, answered while node 1 (its mirror) is up.
    let own = submit_until_answered(&hall2, &elderly("routed-2"))
        .await
        .unwrap()
        .application
        .unwrap();
    assert!(own.application_id.starts_with("node-2."));

    // Owner down: node 2 mirrors node 1 (by default, the next node ids,
    // wrapping around); once its mirror has node 1's newest checkpoint, it
    // answers for node 1, marked.
    let target = tree_size_of(&n1).await;
    let auditor2 = connect_with(&n2.endpoint, &n2.certs(), AUDITOR).await;
    let started = Instant::now();
    loop {
        let mirrored = AuditServiceClient::new(auditor2.clone())
            .get_checkpoint(GetCheckpointRequest {
                origin: "proofgate/node-1".into(),
                ..Default::default()
            })
            .await
            .map_or(0, |r| r.into_inner().tree_size);
        if mirrored >= target {
            break;
        }
        assert!(started.elapsed() < BOUND, "node 2 never mirrored node 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n1.kill();
    let mirrored = ApplicationServiceClient::new(hall2.clone())
        .get_application(GetApplicationRequest {
            application_id: decided.application_id.clone(),
        })
        .await
        .expect("read from node 2's mirror")
        .into_inner();
    let mark = mirrored.served_from_mirror.clone().expect("marked");
    assert_eq!(mark.mirror_node_id, "node-2");
    assert_eq!(
        Application {
            served_from_mirror: None,
            ..mirrored
        },
        last
    );
    // What no mirror holds: UNAVAILABLE naming the owner, with a retry hint.
    let down = ApplicationServiceClient::new(hall2.clone())
        .get_application(GetApplicationRequest {
            application_id: "node-1.000000000000000000000001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    assert!(down.message().contains("node `node-1`"), "{down:?}");
    assert!(down.metadata().get("retry-after-ms").is_some(), "{down:?}");
    // Node 2's own applications are still read.
    let read_own = ApplicationServiceClient::new(hall2.clone())
        .get_application(GetApplicationRequest {
            application_id: own.application_id.clone(),
        })
        .await
        .expect("node 2 reads its own")
        .into_inner();
    assert_eq!(read_own.application_id, own.application_id);
    // But with its only mirror down, node 2 answers no new decision: it
    // would be on one disk only (`--mirror-ack 1`, the cluster default).
    let alone = submit_on(&hall2, &elderly("routed-3")).await.unwrap_err();
    assert_eq!(alone.code(), tonic::Code::Unavailable, "{alone:?}");
    assert!(
        alone.message().contains("not yet on enough mirrors"),
        "{alone:?}"
    );
}

/// Owner routing of completions: a department completing, at node 2, a
/// ticket node 1 holds is answered by node 1 (here: its signature check
/// refuses a forged completion — node 2 alone would not know the ticket);
/// a ticket no node holds is NOT_FOUND; with node 1 down, UNAVAILABLE names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_at_any_node_reaches_the_node_that_holds_the_ticket() {
    use proofgate::pb::department_registry_client::DepartmentRegistryClient;
    use proofgate::pb::{CompleteVerificationRequest, VerificationOutcome};

    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut n1, n2) = two_nodes(&etcd, dir.path());
    let hall1 = connect_with(&n1.endpoint, &n1.certs(), HALL).await;
    // The education department answers "pending" for an hour here.
    let mut teacher = with_commitments(
        request("teacher-qualification", PENDING_THEN_VERIFIED),
        &[("character-reference", "character-v2")],
    );
    teacher.request_id = "ticket-1".into();
    let decided = submit_until_answered(&hall1, &teacher)
        .await
        .unwrap()
        .application
        .unwrap();
    let ticket = proof(&decided, "degree-certificate").ticket.clone();
    assert!(!ticket.is_empty());

    let education = connect_with(&n2.endpoint, &n2.certs(), "education.department.proofgate").await;
    let complete = |ticket: String| {
        let channel = education.clone();
        async move {
            DepartmentRegistryClient::new(channel)
                .complete_verification(CompleteVerificationRequest {
                    department_id: "education".into(),
                    ticket,
                    outcome: VerificationOutcome::Verified as i32,
                    reason: String::new(),
                    signature: vec![0; 64],
                })
                .await
        }
    };
    let forged = complete(ticket.clone()).await.unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
    assert!(forged.message().contains("education"), "{forged:?}");
    let unknown = complete("no-such-ticket".into()).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    n1.kill();
    let down = complete(ticket).await.unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    assert!(down.message().contains("node `node-1`"), "{down:?}");
}

/// Nodes compare request digests made with the pseudonym key: a node whose
/// key differs from a live node's is refused at start (exit 64), saying what
/// to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_pseudonym_key_is_refused_at_start() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(dir.path());
    let _n1 = spawn_pki_node(&etcd.endpoints(), "node-1", &dir.path().join("n1"), &certs);
    let out = run_node_to_end(&etcd.endpoints(), "node-2", &dir.path().join("n2"));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pseudonym key")
            && stderr.contains("differs from the cluster's")
            && stderr.contains("keys/pseudonym.key"),
        "{stderr}"
    );
    assert_eq!(etcd.nodes().await.len(), 1, "node-2 never joined");
}
