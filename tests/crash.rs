//! Durability: the server process is killed with SIGKILL repeatedly under load
//! and restarted. Every application that got a reply must be in the log, the
//! log must verify and replay, and the tree must resume at the right size.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proofgate::audit::{data_dir_records, replay_records, verify_records};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::{GetApplicationRequest, GetCheckpointRequest};

const KILLS: usize = 10;

fn spawn(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--policies")
        .arg(policies_dir())
        .args(["--listen", "127.0.0.1:0", "--node-id", "crash-node"])
        .args(["--metrics-listen", "off"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = loop {
        let line = lines
            .next()
            .expect("server prints its address")
            .expect("stdout readable");
        if let Some(rest) = line.strip_prefix("proofgate serving on ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, endpoint)
}

/// (application id, audit index) of every submission that got a reply.
type Acknowledged = Arc<Mutex<Vec<(String, u64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_application_survives_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Acknowledged = Arc::default();
    let mut max_size_seen = 0u64;
    for round in 0..KILLS {
        let (mut child, endpoint) = spawn(dir.path());
        let channel = connect_with(&endpoint, &dir.path().join("certs"), HALL).await;
        // The tree resumes where the acknowledged entries left it.
        let auditor = connect_with(&endpoint, &dir.path().join("certs"), AUDITOR).await;
        let size = AuditServiceClient::new(auditor)
            .get_checkpoint(GetCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tree_size;
        let max_acked = acknowledged.lock().unwrap().iter().map(|(_, i)| *i).max();
        if let Some(max) = max_acked {
            assert!(
                size > max,
                "round {round}: tree size {size} lost acknowledged entry {max}"
            );
        }
        assert!(size >= max_size_seen, "round {round}: the tree shrank");
        max_size_seen = size;

        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut workers = Vec::new();
        for worker in 0..8 {
            let mut client = ApplicationServiceClient::new(channel.clone());
            let acknowledged = Arc::clone(&acknowledged);
            let acked_tx = acked_tx.clone();
            workers.push(tokio::spawn(async move {
                for n in 0.. {
                    let mut req = request("elderly-subsidy", ELDERLY);
                    req.request_id = format!("crash-{round}-{worker}-{n}");
                    match client.submit_application(req).await {
                        Ok(reply) => {
                            let app = reply.into_inner().application.unwrap();
                            let index = app.receipt.unwrap().index;
                            acknowledged
                                .lock()
                                .unwrap()
                                .push((app.application_id, index));
                            let _ = acked_tx.send(());
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(acked_tx);
        // Kill at a different moment of the load each round: after a number
        // of replies, not after a time, so a slow machine kills no earlier.
        for _ in 0..(5 + 7 * round) {
            acked_rx.recv().await.expect("the load runs until the kill");
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= (0..KILLS).map(|r| 5 + 7 * r).sum::<usize>(),
        "the load ran: {} replies",
        acknowledged.len()
    );

    let (mut child, endpoint) = spawn(dir.path());
    let mut client = ApplicationServiceClient::new(
        connect_with(&endpoint, &dir.path().join("certs"), HALL).await,
    );
    for (id, index) in &acknowledged {
        let stored = client
            .get_application(GetApplicationRequest {
                application_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"))
            .into_inner();
        assert_eq!(stored.receipt.unwrap().index, *index);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let report = verify_records(data_dir_records(dir.path()).unwrap(), None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    let max = acknowledged.iter().map(|(_, i)| *i).max().unwrap();
    assert!(report.tree_size > max);
    let replay = replay_records(data_dir_records(dir.path()).unwrap(), |_| {}).unwrap();
    assert!(
        replay.discrepancies.is_empty(),
        "{:#?}",
        replay.discrepancies
    );
}
