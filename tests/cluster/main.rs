//! Cluster mode against a real etcd (3 members on loopback) and gateway
//! nodes as child processes: joining and the node directory, a node id
//! taken twice, a killed node leaving the directory with its lease, one
//! etcd member down (still deciding), and losing the etcd quorum — nothing
//! decided meanwhile, recovery without a restart.

mod audit;
mod batching;
#[path = "../common/mod.rs"]
mod common;
mod etcd;
mod idempotency;
mod reads;
mod shared;

use std::time::{Duration, Instant};

use common::*;
use etcd::{cluster_status, run_node_to_end, share_pseudonym_key, spawn_node, EtcdCluster, BOUND};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::{GetCheckpointRequest, SubmitApplicationResponse};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_shows_in_cluster_status_and_its_id_cannot_be_taken_twice() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One pseudonym key, so the second node below is refused for its id alone.
    share_pseudonym_key(&[&dir.path().join("n1"), &dir.path().join("n1-again")]);
    let node = spawn_node(&etcd.endpoints(), "node-1", &dir.path().join("n1"));

    // The table: one row with what the node published.
    let out = cluster_status(&etcd.endpoints(), &[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("node-1 "))
        .unwrap_or_else(|| panic!("node-1 listed:\n{table}"));
    assert!(row.contains(&node.endpoint), "{row}");
    assert!(row.contains("proofgate/node-1 "), "{row}");
    assert!(row.contains(&node.vkey()), "{row}");
    assert!(row.contains("live"), "{row}");

    // JSON: the same, field by field.
    let out = cluster_status(&etcd.endpoints(), &["--json"]);
    assert!(out.status.success(), "{out:?}");
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = nodes.as_array().expect("an array of nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["node_id"], "node-1");
    assert_eq!(nodes[0]["address"], node.endpoint.as_str());
    assert_eq!(nodes[0]["origin"], "proofgate/node-1");
    assert_eq!(nodes[0]["vkey"], node.vkey().as_str());
    assert_eq!(nodes[0]["live"], true);
    assert!(nodes[0]["policy_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("sha256:")));

    // A second live node with the same id (its own data dir) is refused.
    let second = run_node_to_end(&etcd.endpoints(), "node-1", &dir.path().join("n1-again"));
    assert_eq!(second.status.code(), Some(69), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("node id `node-1` is already taken by a live node")
            && stderr.contains(&node.endpoint),
        "{stderr}"
    );
    // ... and the first is still the one registered.
    let listed = etcd.nodes().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.address, node.endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_directory_when_its_lease_expires() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_node(&etcd.endpoints(), "node-2", &dir.path().join("n2"));
    assert_eq!(etcd.nodes().await.len(), 1);
    node.kill(); // SIGKILL: no chance to revoke its lease
    let started = Instant::now();
    while !etcd.nodes().await.is_empty() {
        assert!(
            started.elapsed() < BOUND,
            "the killed node's record outlived its lease by far"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The id is free again: a new node with it joins.
    let again = spawn_node(&etcd.endpoints(), "node-2", &dir.path().join("n2"));
    let listed = etcd.nodes().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.address, again.endpoint);
}

async fn tree_size(auditor: &tonic::transport::Channel) -> u64 {
    AuditServiceClient::new(auditor.clone())
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .expect("checkpoint readable while etcd is down")
        .into_inner()
        .tree_size
}

async fn application_health(channel: &tonic::transport::Channel) -> ServingStatus {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "proofgate.v1.ApplicationService".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

async fn submit(
    channel: &tonic::transport::Channel,
    request_id: &str,
) -> Result<SubmitApplicationResponse, tonic::Status> {
    let mut request = request("elderly-subsidy", ELDERLY);
    request.request_id = request_id.to_owned();
    ApplicationServiceClient::new(channel.clone())
        .submit_application(request)
        .await
        .map(|r| r.into_inner())
}

/// Submits until the node decides: UNAVAILABLE (no etcd session, e.g. on a
/// machine so busy a renewal timed out) is retried within [`BOUND`].
async fn submit_until_decided(
    channel: &tonic::transport::Channel,
    request_id: &str,
) -> SubmitApplicationResponse {
    let started = Instant::now();
    loop {
        match submit(channel, request_id).await {
            Ok(reply) => return reply,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(started.elapsed() < BOUND, "never decided: {status:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn wait_for_health(channel: &tonic::transport::Channel, want: ServingStatus) {
    let started = Instant::now();
    while application_health(channel).await != want {
        assert!(
            started.elapsed() < BOUND,
            "ApplicationService health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_still_decides_without_a_quorum_nothing_is_decided_and_the_node_recovers() {
    let Some(mut etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(&etcd.endpoints(), "node-3", &dir.path().join("n3"));
    let hall = connect_with(&node.endpoint, &node.certs(), HALL).await;
    let auditor = connect_with(&node.endpoint, &node.certs(), AUDITOR).await;
    let before = submit_until_decided(&hall, "quorum-0").await;
    assert!(!before.replayed);

    // One member gone: two of three are a quorum, the node keeps deciding.
    etcd.kill(2);
    let one_down = submit_until_decided(&hall, "quorum-half").await;
    assert!(!one_down.replayed);

    // Two of three members gone: no quorum.
    etcd.kill(1);
    wait_for_health(&hall, ServingStatus::NotServing).await;
    let size = tree_size(&auditor).await;
    let refused = submit(&hall, "quorum-1")
        .await
        .expect_err("no decision without a quorum");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("nothing was decided"),
        "{refused:?}"
    );
    assert_eq!(tree_size(&auditor).await, size, "nothing was logged");

    // Members back: the node gets a session again by itself.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy().await;
    wait_for_health(&hall, ServingStatus::Serving).await;
    let after = submit_until_decided(&hall, "quorum-1").await;
    // The refused request was never decided: this is its first decision.
    assert!(!after.replayed);
    assert!(tree_size(&auditor).await > size);
    let listed = etcd.nodes().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.node_id, "node-3");
    assert!(listed[0].live);
}

/// `--advertise-address`: what the node directory publishes instead of the
/// bound address (a node listening on 0.0.0.0 is reached by another name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_publishes_the_advertised_address() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    options.node_id = "node-3".into();
    options.mock_departments = false;
    options.advertise_address = Some("https://node-3.example:50051".into());
    options.cluster = Some(etcd.options());
    let running = proofgate::server::start(options)
        .await
        .expect("node starts");
    let listed = etcd.nodes().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.address, "https://node-3.example:50051");
    running.shutdown().await;

    let mut bad = proofgate::server::ServeOptions {
        advertise_address: Some("node-3:50051".into()),
        ..common::options(dir.path())
    };
    bad.node_id = "node-4".into();
    let err = proofgate::server::start(bad).await.err().expect("refused");
    assert_eq!(err.exit_code(), 64, "{err}");
    assert!(err.to_string().contains("--advertise-address"), "{err}");
}

/// In a cluster each node mirrors the next node id in the directory by
/// default (wrapping around), with the key the directory gives, and serves
/// that mirror by origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_mirrors_the_next_one_by_default() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        pki.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Nodes of one cluster share the pseudonym key (refused at start else).
    etcd::share_pseudonym_key(&[&dir.path().join("node-1"), &dir.path().join("node-2")]);
    let mut nodes = Vec::new();
    for id in ["node-1", "node-2"] {
        let mut options = options(&dir.path().join(id));
        options.node_id = id.into();
        options.mock_departments = false;
        options.certs = Some(pki.path().to_path_buf());
        options.cluster = Some(etcd.options());
        nodes.push(
            proofgate::server::start(options)
                .await
                .expect("node starts"),
        );
    }
    for (node, peer) in [(0, "proofgate/node-2"), (1, "proofgate/node-1")] {
        let started = Instant::now();
        loop {
            let served = nodes[node]
                .logs
                .resolve(peer)
                .ok()
                .and_then(|r| r.checkpoint().ok());
            if served.is_some_and(|c| c.tree_size > 0 && c.from_mirror) {
                break;
            }
            assert!(
                started.elapsed() < BOUND,
                "{peer} not mirrored by node {node}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
}
