//! Auditing a cluster (issue 10 item 9), with real etcd and three nodes as
//! processes on one PKI (each mirrors the next node id by default):
//! `ListLogs` on any node lists all three logs; `audit verify --cluster`
//! verifies each online (three OK rows), a SIGKILLed node's log from the
//! node that mirrors it, and reports a log with neither its node nor its
//! mirror up as UNREACHABLE (exit 69); `stats --cluster` is the sum of the
//! nodes' own figures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::operations_service_client::OperationsServiceClient;
use proofgate::pb::{ClusterLog, GetStatisticsRequest, ListLogsRequest};
use serde_json::Value;

use crate::common::{connect_with, request, ADMIN, AUDITOR, ELDERLY, HALL};
use crate::etcd::{spawn_node_with, EtcdCluster, Node, BOUND};

const IDS: [&str; 3] = ["node-1", "node-2", "node-3"];

/// A node's data folder with its own log key and the cluster's one
/// pseudonym key (a node with another is refused).
fn data_dir(dir: &Path, node_id: &str) -> PathBuf {
    let template = dir.join("template");
    if !template.join("keys/pseudonym.key").exists() {
        let out = cli(&["keygen", "--data-dir", &template.display().to_string()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let data = dir.join(node_id);
    let out = cli(&["keygen", "--data-dir", &data.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(
        template.join("keys/pseudonym.key"),
        data.join("keys/pseudonym.key"),
    )
    .unwrap();
    data
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(args)
        .output()
        .expect("proofgate runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn list_logs(node: &Node, pki: &Path) -> Vec<ClusterLog> {
    AuditServiceClient::new(connect_with(&node.endpoint, pki, AUDITOR).await)
        .list_logs(ListLogsRequest {})
        .await
        .expect("ListLogs answers the auditor")
        .into_inner()
        .logs
}

/// Decides `n` applications on `node` (UNAVAILABLE, e.g. a renewal late on
/// a busy machine, is retried within [`BOUND`]).
async fn decide(node: &Node, pki: &Path, n: usize) {
    let hall = ApplicationServiceClient::new(connect_with(&node.endpoint, pki, HALL).await);
    for i in 0..n {
        let started = Instant::now();
        loop {
            let mut request = request("elderly-subsidy", ELDERLY);
            request.request_id = format!("audit-{}-{i}", node.endpoint);
            match hall.clone().submit_application(request).await {
                Ok(_) => break,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(started.elapsed() < BOUND, "never decided: {status:?}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// Waits until every log is mirrored by some node up to its owner's size.
async fn wait_for_mirrors(nodes: &[Node], pki: &Path) {
    let started = Instant::now();
    loop {
        let mut own = std::collections::BTreeMap::new();
        let mut mirrored = std::collections::BTreeMap::new();
        for node in nodes {
            for log in list_logs(node, pki).await {
                if log.own {
                    own.insert(log.origin.clone(), log.tree_size);
                } else if log.mirrored_here {
                    mirrored.insert(log.origin.clone(), log.tree_size);
                }
            }
        }
        if own.len() == 3 && own.iter().all(|(o, size)| mirrored.get(o) == Some(size)) {
            return;
        }
        assert!(
            started.elapsed() < BOUND,
            "mirrors never caught up: own {own:?}, mirrored {mirrored:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn verify_json(etcd: &str, pki: &Path) -> (Output, Vec<Value>) {
    let output = cli(&[
        "audit",
        "verify",
        "--cluster",
        "--etcd",
        etcd,
        "--certs",
        &pki.display().to_string(),
        "--json",
    ]);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("JSON rows ({e}): {}", text(&output)));
    (output, rows)
}

fn row<'a>(rows: &'a [Value], origin: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["origin"] == origin)
        .unwrap_or_else(|| panic!("no row for {origin}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_audited_through_any_node_and_a_dead_nodes_log_from_its_mirror() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let pki = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        pki.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    let pki_arg = pki.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = IDS
        .iter()
        .map(|id| {
            spawn_node_with(
                &endpoints,
                id,
                &data_dir(dir.path(), id),
                &["--certs", &pki_arg, "--mock-departments"],
            )
        })
        .collect();
    decide(&nodes[0], pki.path(), 2).await;
    decide(&nodes[1], pki.path(), 1).await;

    // Any node lists the three logs, with the directory's key and address.
    for (i, node) in nodes.iter().enumerate() {
        let logs = list_logs(node, pki.path()).await;
        assert_eq!(logs.len(), 3, "{logs:?}");
        for (log, (id, owner)) in logs.iter().zip(IDS.iter().zip(&nodes)) {
            assert_eq!(log.origin, format!("proofgate/{id}"));
            assert_eq!(&log.node_id, id);
            assert_eq!(log.endpoint, owner.endpoint);
            assert_eq!(log.verifier_key, owner.vkey());
            assert!(log.live);
            assert_eq!(log.own, log.node_id == IDS[i], "{log:?}");
        }
    }
    wait_for_mirrors(&nodes, pki.path()).await;

    // Three passing rows, each verified from its own node.
    let table = cli(&[
        "audit",
        "verify",
        "--cluster",
        "--etcd",
        &endpoints,
        "--certs",
        &pki_arg,
    ]);
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    let stdout = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", text(&table));
    assert!(lines[0].starts_with("ORIGIN"));
    for (line, id) in lines[1..].iter().zip(IDS) {
        assert!(line.starts_with(&format!("proofgate/{id} ")), "{line}");
        assert!(line.contains(" OK "), "{line}");
    }
    let (output, rows) = verify_json(&endpoints, pki.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(rows.len(), 3);
    for (r, id) in rows.iter().zip(IDS) {
        assert_eq!(r["result"], "ok", "{r}");
        assert_eq!(r["verified_from"], id, "{r}");
        assert!(r["tree_size"].as_u64().unwrap() > 0, "{r}");
    }

    // stats --cluster: the sum of what each node says of itself.
    let mut applications = 0;
    let mut entries = 0;
    for node in &nodes {
        let figures =
            OperationsServiceClient::new(connect_with(&node.endpoint, pki.path(), ADMIN).await)
                .get_statistics(GetStatisticsRequest {})
                .await
                .expect("statistics for the admin")
                .into_inner();
        applications += figures.applications;
        entries += figures.entries;
    }
    assert_eq!(applications, 3);
    let stats = cli(&[
        "stats",
        "--cluster",
        "--etcd",
        &endpoints,
        "--certs",
        &pki_arg,
        "--json",
    ]);
    assert_eq!(stats.status.code(), Some(0), "{}", text(&stats));
    let summed: Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    assert_eq!(summed["applications"], applications, "{summed}");
    assert_eq!(summed["entries"], entries, "{summed}");
    assert_eq!(summed["nodes"], serde_json::json!(IDS));
    let stats_table = cli(&[
        "stats",
        "--cluster",
        "--etcd",
        &endpoints,
        "--certs",
        &pki_arg,
    ]);
    assert_eq!(stats_table.status.code(), Some(0), "{}", text(&stats_table));
    assert!(String::from_utf8_lossy(&stats_table.stdout)
        .contains("figures of 3 node(s): node-1, node-2, node-3"));

    // node-2 killed: its log is verified from node-1's mirror.
    nodes[1].kill();
    let (output, rows) = verify_json(&endpoints, pki.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let two = row(&rows, "proofgate/node-2");
    assert_eq!(two["result"], "ok", "{two}");
    assert_eq!(two["verified_from"], "mirror on node-1", "{two}");
    assert_eq!(two["from_mirror"], true);
    // Its figures cannot be had: the sum says so and fails.
    let stats = cli(&[
        "stats",
        "--cluster",
        "--etcd",
        &endpoints,
        "--certs",
        &pki_arg,
    ]);
    assert_eq!(stats.status.code(), Some(69), "{}", text(&stats));
    assert!(text(&stats).contains("MISSING: node-2"), "{}", text(&stats));

    // Wait until node-2 has left the directory (its log stays listed in
    // etcd), then kill node-1: node-3 mirrors both (each node mirrors its
    // next two by default).
    let started = Instant::now();
    while etcd
        .nodes()
        .await
        .iter()
        .any(|n| n.record.node_id == "node-2")
    {
        assert!(started.elapsed() < BOUND, "node-2 never left the directory");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = list_logs(&nodes[2], pki.path()).await;
    assert!(
        listed
            .iter()
            .any(|l| l.origin == "proofgate/node-2" && !l.live),
        "{listed:?}"
    );
    nodes[0].kill();
    let (output, rows) = verify_json(&endpoints, pki.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for origin in ["proofgate/node-1", "proofgate/node-2"] {
        let from = row(&rows, origin);
        assert_eq!(from["result"], "ok", "{from}");
        assert_eq!(from["verified_from"], "mirror on node-3", "{from}");
    }
    assert_eq!(row(&rows, "proofgate/node-3")["result"], "ok");

    // With every node down, no log can be had: each row says so.
    nodes[2].kill();
    let (output, rows) = verify_json(&endpoints, pki.path());
    assert_eq!(output.status.code(), Some(69), "{}", text(&output));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for origin in ["proofgate/node-1", "proofgate/node-2", "proofgate/node-3"] {
        assert_eq!(row(&rows, origin)["result"], "unreachable", "{rows:?}");
    }
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("unreachable: proofgate/node-1, proofgate/node-2, proofgate/node-3"),
        "{}",
        text(&output)
    );
}
