//! Verified mirrors and restore (issue 11 items 4–5), real servers on
//! ephemeral loopback ports over mutual TLS with one shared PKI, sled in
//! temp dirs:
//! - node A under load, mirrored by node B; A's data folder lost; A restored
//!   from B: the log verifies, holds every application A acknowledged, and
//!   A (its key copied back) resumes appending to the same log, which B
//!   keeps mirroring;
//! - a forked log (same key, another history) offered to a mirror is
//!   refused and nothing of it is stored;
//! - with `--mirror-ack 1` a decision is answered only once the mirror holds
//!   it: without a mirror the hall gets UNAVAILABLE (decided, logged, not
//!   lost; the retry gets it), and every acknowledged decision is on the
//!   mirror the moment it is answered;
//! - an acknowledgement counts only from another node, for the tree this
//!   log signed (not a size alone: another history under the same origin,
//!   or the node itself, never counts);
//! - a department's completion refused for want of a mirror is logged once
//!   however often the department sends it again, and reads complete once
//!   a mirror holds it;
//! - a mirror follows its origin's key rotation (`audit rotate-key`), so a
//!   node with `--mirror-ack` keeps deciding after rotating its key.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proofgate::cli::{LogSource, RestoreArgs};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::{GetCheckpointRequest, GetEntriesRequest};
use proofgate::server::{self, MirrorTarget, Running, ServeOptions};

/// A bound on waiting for a condition, not a measurement.
const BOUND: Duration = Duration::from_secs(120);
const ORIGIN_A: &str = "proofgate/node-1";

fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        dir.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    dir
}

fn node(pki: &Path, data_dir: &Path, node_id: &str) -> ServeOptions {
    ServeOptions {
        certs: Some(pki.to_path_buf()),
        node_id: node_id.into(),
        ..options(data_dir)
    }
}

/// Node B ("node-2", no departments of its own) mirroring `a`.
fn mirror_of(a: &Running, pki: &Path, data_dir: &Path) -> ServeOptions {
    ServeOptions {
        mirrors: vec![MirrorTarget {
            url: a.endpoint(),
            vkey: None,
        }],
        mock_departments: false,
        ..node(pki, data_dir, "node-2")
    }
}

/// Node A ("node-1") answering only once one mirror holds a decision,
/// waiting for it 300 ms.
fn needing_a_mirror(pki: &Path, data_dir: &Path) -> ServeOptions {
    ServeOptions {
        mirror_ack: Some(1),
        mirror_ack_timeout: Duration::from_millis(300),
        ..node(pki, data_dir, "node-1")
    }
}

async fn start(options: ServeOptions) -> Served {
    Served::new(server::start(options).await.expect("node starts"))
}

/// B's view of A's log: (tree size, root) of the mirror's newest checkpoint.
async fn mirrored(b: &Running, origin: &str) -> Option<(u64, Vec<u8>)> {
    let channel = connect_as(b, AUDITOR).await;
    let checkpoint = AuditServiceClient::new(channel)
        .get_checkpoint(GetCheckpointRequest {
            origin: origin.into(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    assert!(checkpoint.from_mirror, "served as a mirror");
    Some((checkpoint.tree_size, checkpoint.root_hash))
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Halls submitting to `endpoint` until `stop`; every application id
/// answered is kept (what the node acknowledged).
fn load(
    endpoint: String,
    certs: PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeSet<String>> {
    tokio::spawn(async move {
        let channel = connect_with(&endpoint, &certs, HALL).await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut client = ApplicationServiceClient::new(channel.clone());
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(reply) = client
                        .submit_application(request("elderly-subsidy", ELDERLY))
                        .await
                    {
                        if let Some(app) = reply.into_inner().application {
                            acknowledged.insert(app.application_id);
                        }
                    }
                }
                acknowledged
            }));
        }
        let mut all = BTreeSet::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_lost_is_restored_from_its_mirror_and_resumes_its_log() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a_data = dirs.path().join("a");
    let a = start(node(pki.path(), &a_data, "node-1")).await;
    let a_addr = a.addr;
    let a_vkey = a.gateway.audit().verifier_key().to_owned();
    let b = start(mirror_of(&a, pki.path(), &dirs.path().join("b"))).await;

    // A under load while B mirrors it: B's copy grows in several steps.
    let stop = Arc::new(AtomicBool::new(false));
    let halls = load(a.endpoint(), pki.path().to_path_buf(), Arc::clone(&stop));
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while seen.len() < 3 {
        assert!(
            started.elapsed() < BOUND,
            "the mirror did not advance under load"
        );
        if let Some((size, _)) = mirrored(&b, ORIGIN_A).await {
            seen.insert(size);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = halls.await.unwrap();
    assert!(
        acknowledged.len() >= 10,
        "{} acknowledged",
        acknowledged.len()
    );
    let final_size = a.gateway.audit().durable_size();
    wait_until("the mirror catching up", || async {
        mirrored(&b, ORIGIN_A)
            .await
            .is_some_and(|(s, _)| s == final_size)
    })
    .await;
    assert!(b.metrics.mirror_tree_size(ORIGIN_A) >= final_size.min(1));
    assert!(!b.metrics.mirror_forked(ORIGIN_A));
    // Entries read from the mirror are A's, byte for byte.
    let from_mirror: Vec<_> = {
        let mut stream = AuditServiceClient::new(connect_as(&b, AUDITOR).await)
            .get_entries(GetEntriesRequest {
                start: 0,
                end: 3,
                origin: ORIGIN_A.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut entries = Vec::new();
        while let Some(e) = stream.message().await.unwrap() {
            entries.push(e.entry);
        }
        entries
    };
    let own = a.gateway.audit().store();
    for (i, entry) in from_mirror.iter().enumerate() {
        assert_eq!(Some(&entry[..]), own.entry(i as u64).unwrap().as_deref());
    }

    // A's disk is lost (its keys saved elsewhere by the operator).
    a.shutdown().await;
    let keys_backup = dirs.path().join("a-keys");
    copy_dir(&a_data.join("keys"), &keys_backup);
    std::fs::remove_dir_all(&a_data).unwrap();

    // Restored from B, as the PKI's auditor, against A's known key.
    let report = proofgate::cli::audit::restore(&RestoreArgs {
        from: b.endpoint(),
        origin: ORIGIN_A.into(),
        data_dir: a_data.clone(),
        certs: pki.path().to_path_buf(),
        vkey: Some(a_vkey.clone()),
        witnesses: Vec::new(),
        quorum: None,
    })
    .await
    .expect("restored");
    assert!(
        report
            .text
            .contains(&format!("restored {final_size} entries")),
        "{}",
        report.text
    );
    // A second restore into the now non-empty folder is refused.
    let again = proofgate::cli::audit::restore(&RestoreArgs {
        from: b.endpoint(),
        origin: ORIGIN_A.into(),
        data_dir: a_data.clone(),
        certs: pki.path().to_path_buf(),
        vkey: Some(a_vkey.clone()),
        witnesses: Vec::new(),
        quorum: None,
    })
    .await
    .expect_err("not into a non-empty folder");
    assert_eq!(proofgate::cli::exit_code(&Err(again)), 64);

    // The restored log verifies, its projections match its entries, and it
    // holds every application A acknowledged.
    let source = LogSource {
        data_dir: Some(a_data.clone()),
        file: None,
    };
    let verified =
        proofgate::cli::audit::verify(&source, Some(a_vkey.clone()), None, false).unwrap();
    assert!(!verified.found_problem, "{}", verified.text);
    let rebuilt = proofgate::cli::audit::rebuild(&a_data, false).unwrap();
    assert!(!rebuilt.found_problem, "{}", rebuilt.text);
    {
        let store = proofgate::audit::AuditStore::open(&a_data.join("log")).unwrap();
        assert_eq!(store.tree_size().unwrap(), final_size);
        for id in &acknowledged {
            assert!(store.application(id).unwrap().is_some(), "{id} lost");
        }
    }

    // Without its key the node refuses to append to the restored log.
    let refused = server::start(ServeOptions {
        listen: a_addr,
        ..node(pki.path(), &a_data, "node-1")
    })
    .await
    .err()
    .expect("no appending with another key");
    assert_eq!(refused.exit_code(), 64, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("not signed by this node's key"),
        "{refused}"
    );
    std::fs::remove_dir_all(a_data.join("keys")).unwrap();

    // With its key copied back, A resumes the same log where it was.
    copy_dir(&keys_backup, &a_data.join("keys"));
    let a = start(ServeOptions {
        listen: a_addr,
        ..node(pki.path(), &a_data, "node-1")
    })
    .await;
    assert_eq!(a.gateway.audit().verifier_key(), a_vkey);
    let channel = connect_as(&a, HALL).await;
    let reply = ApplicationServiceClient::new(channel)
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .expect("A decides again")
        .into_inner();
    let receipt = reply.application.unwrap().receipt.unwrap();
    assert!(
        receipt.index >= final_size,
        "appended after the restored entries"
    );
    let resumed = a.gateway.audit().durable_size();
    // B keeps mirroring it: the resumed log is consistent with its copy.
    wait_until("the mirror following the resumed log", || async {
        mirrored(&b, ORIGIN_A)
            .await
            .is_some_and(|(s, _)| s == resumed)
    })
    .await;
    assert!(!b.metrics.mirror_forked(ORIGIN_A));
    a.shutdown().await;
    let verified = proofgate::cli::audit::verify(&source, Some(a_vkey), None, false).unwrap();
    assert!(!verified.found_problem, "{}", verified.text);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_refuses_a_forked_log_and_stores_nothing_of_it() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a_data = dirs.path().join("a");
    let a = start(node(pki.path(), &a_data, "node-1")).await;
    let a_addr = a.addr;
    let b = start(ServeOptions {
        mirrors: vec![MirrorTarget {
            url: a.endpoint(),
            vkey: Some(a.gateway.audit().verifier_key().to_owned()),
        }],
        mock_departments: false,
        ..node(pki.path(), &dirs.path().join("b"), "node-2")
    })
    .await;
    for _ in 0..5 {
        let channel = connect_as(&a, HALL).await;
        ApplicationServiceClient::new(channel)
            .submit_application(request("elderly-subsidy", ELDERLY))
            .await
            .unwrap();
    }
    let size = a.gateway.audit().durable_size();
    wait_until("the mirror catching up", || async {
        mirrored(&b, ORIGIN_A).await.is_some_and(|(s, _)| s == size)
    })
    .await;
    let before = mirrored(&b, ORIGIN_A).await.unwrap();
    a.shutdown().await;

    // The same key, another history: a second data folder with A's keys,
    // served where A was, grown past what B holds.
    let fork_data = dirs.path().join("fork");
    copy_dir(&a_data.join("keys"), &fork_data.join("keys"));
    let fork = start(ServeOptions {
        listen: a_addr,
        ..node(pki.path(), &fork_data, "node-1")
    })
    .await;
    let channel = connect_as(&fork, HALL).await;
    while fork.gateway.audit().durable_size() <= size + 3 {
        ApplicationServiceClient::new(channel.clone())
            .submit_application(request("elderly-subsidy", PASSES_ALL))
            .await
            .unwrap();
    }
    wait_until("the mirror reporting the fork", || async {
        b.metrics.mirror_forked(ORIGIN_A)
    })
    .await;
    let metrics = b.metrics.encode();
    assert!(
        metrics.contains("proofgate_mirror_fork{origin=\"proofgate/node-1\"} 1"),
        "{metrics}"
    );
    // Nothing of the fork was stored; what was verified is still served.
    assert_eq!(mirrored(&b, ORIGIN_A).await.unwrap(), before);
    let stored = b.logs.resolve(ORIGIN_A).unwrap().checkpoint().unwrap();
    assert_eq!(stored.tree_size, size);
    fork.shutdown().await;
    b.shutdown().await;

    // Restarted, B still does not mirror that log (the fork is recorded),
    // and still serves what it verified.
    let b = start(ServeOptions {
        mirrors: Vec::new(),
        mock_departments: false,
        ..node(pki.path(), &dirs.path().join("b"), "node-2")
    })
    .await;
    assert!(b.metrics.mirror_forked(ORIGIN_A));
    assert_eq!(mirrored(&b, ORIGIN_A).await.unwrap(), before);
    // An origin nobody mirrors here is NOT_FOUND, naming it.
    let status = AuditServiceClient::new(connect_as(&b, AUDITOR).await)
        .get_checkpoint(GetCheckpointRequest {
            origin: "proofgate/node-9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("proofgate/node-9"), "{status:?}");
    let status = AuditServiceClient::new(connect_as(&b, AUDITOR).await)
        .get_checkpoint(GetCheckpointRequest {
            origin: "bad origin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A restore of an origin the node does not serve, or one naming a
    // witness key that is not one, fails (exit 64) and leaves the folder
    // empty, so it can be run again.
    let target = dirs.path().join("restore");
    let args = RestoreArgs {
        from: b.endpoint(),
        origin: "proofgate/node-9".into(),
        data_dir: target.clone(),
        certs: pki.path().to_path_buf(),
        vkey: None,
        witnesses: Vec::new(),
        quorum: None,
    };
    let err = proofgate::cli::audit::restore(&args).await.unwrap_err();
    assert!(err.to_string().contains("proofgate/node-9"), "{err}");
    assert_eq!(proofgate::cli::exit_code(&Err(err)), 64);
    assert_eq!(std::fs::read_dir(&target).map_or(0, |d| d.count()), 0);
    let err = proofgate::cli::audit::restore(&RestoreArgs {
        origin: ORIGIN_A.into(),
        witnesses: vec!["witness+00000000+AAAA".into()],
        quorum: Some(1),
        ..args
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--witness"), "{err}");
    assert_eq!(proofgate::cli::exit_code(&Err(err)), 64);
    b.shutdown().await;
}

/// Without etcd, ListLogs lists the node's own log and the logs it mirrors
/// (with the pinned key and the mirrored size); it is a log read: the
/// auditor and gateway identities may, a hall may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_logs_without_etcd_names_the_own_log_and_the_mirrors() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a = start(node(pki.path(), &dirs.path().join("a"), "node-1")).await;
    let a_vkey = a.gateway.audit().verifier_key().to_owned();
    let b = start(ServeOptions {
        mirrors: vec![MirrorTarget {
            url: a.endpoint(),
            vkey: Some(a_vkey.clone()),
        }],
        mock_departments: false,
        ..node(pki.path(), &dirs.path().join("b"), "node-2")
    })
    .await;
    let size = a.gateway.audit().durable_size();
    wait_until("the mirror catching up", || async {
        mirrored(&b, ORIGIN_A).await.is_some_and(|(s, _)| s == size)
    })
    .await;
    let list = |identity: &'static str| {
        let b = &b;
        async move {
            AuditServiceClient::new(connect_as(b, identity).await)
                .list_logs(proofgate::pb::ListLogsRequest {})
                .await
        }
    };
    let answer = list(AUDITOR).await.expect("the auditor may").into_inner();
    assert!(answer.directory_problem.is_empty());
    let [one, two] = answer.logs.as_slice() else {
        panic!("two logs: {:?}", answer.logs)
    };
    assert_eq!(one.origin, ORIGIN_A);
    assert!(one.mirrored_here && !one.own && !one.live);
    assert_eq!(one.verifier_key, a_vkey);
    // At least what was waited for (A may have logged more since).
    assert!(one.tree_size >= size, "{one:?}");
    assert_eq!(one.node_id, "node-1");
    assert_eq!(two.origin, "proofgate/node-2");
    assert!(two.own && !two.mirrored_here);
    assert_eq!(two.verifier_key, b.gateway.audit().verifier_key());
    assert!(list("node-3.gateway.proofgate").await.is_ok());
    let refused = list(HALL).await.expect_err("a hall may not read the log");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    b.shutdown().await;
    a.shutdown().await;
}

/// Issue 11, "no disk can lose": with `--mirror-ack 1` an answer waits for
/// a mirror, so the mirror holds every decision a hall was told about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mirror_ack_every_answered_decision_is_already_on_the_mirror() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a = start(needing_a_mirror(pki.path(), &dirs.path().join("a"))).await;
    let mut hall = ApplicationServiceClient::new(connect_as(&a, HALL).await);

    // No mirror yet: decided and logged here, but not answered as done.
    let first = request("elderly-subsidy", ELDERLY);
    let before = a.gateway.audit().durable_size();
    let refused = hall
        .submit_application(first.clone())
        .await
        .expect_err("no mirror holds it");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("logged on this node but not yet on enough mirrors")
            && refused.message().contains("retry with the same request_id"),
        "{}",
        refused.message()
    );
    assert!(refused.metadata().get("retry-after-ms").is_some());
    assert_eq!(a.gateway.audit().durable_size(), before + 1, "it is logged");

    // A mirror starts: the retry gets that very decision, not a second one.
    let b = start(mirror_of(&a, pki.path(), &dirs.path().join("b"))).await;
    let started = Instant::now();
    let replayed = loop {
        match hall.submit_application(first.clone()).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(started.elapsed() < BOUND, "the mirror never caught up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(replayed.replayed);
    let receipt = replayed
        .application
        .as_ref()
        .unwrap()
        .receipt
        .clone()
        .unwrap();
    assert_eq!(receipt.index, before, "the decision logged the first time");
    assert_eq!(a.gateway.audit().durable_size(), before + 1, "decided once");

    // Under load, each answer is checked against the mirror right away
    // (B's gauge of the size it holds, verified and flushed).
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = hall.clone();
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..15 {
                // Retried as a hall would (the same request) when the mirror
                // was slower than the short ack timeout; checked when answered.
                let submitted = request("elderly-subsidy", ELDERLY);
                let reply = loop {
                    match client.submit_application(submitted.clone()).await {
                        Ok(reply) => break reply.into_inner(),
                        Err(status) if status.code() == tonic::Code::Unavailable => {}
                        Err(status) => panic!("{status:?}"),
                    }
                };
                let index = reply.application.unwrap().receipt.unwrap().index;
                let held = b.metrics.mirror_tree_size(ORIGIN_A);
                assert!(
                    held > index,
                    "entry {index} answered, the mirror holds {held}"
                );
                answered += 1;
            }
            answered
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 15);
    }
    let b = Arc::into_inner(b).expect("the tasks are done");
    b.shutdown().await;
    a.shutdown().await;
}

/// A rotation recorded in the log (signed by the old key) is followed by
/// the mirror; a node that needs its mirror's acknowledgement decides again
/// after `audit rotate-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_a_recorded_key_rotation_and_acknowledgements_go_on() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a_data = dirs.path().join("a");
    let a_options = |listen| ServeOptions {
        listen,
        mirror_ack: Some(1),
        ..node(pki.path(), &a_data, "node-1")
    };
    let a = start(a_options("127.0.0.1:0".parse().unwrap())).await;
    let a_addr = a.addr;
    let old_vkey = a.gateway.audit().verifier_key().to_owned();
    let b = start(mirror_of(&a, pki.path(), &dirs.path().join("b"))).await;
    submit(&a, request("elderly-subsidy", ELDERLY))
        .await
        .expect("mirrored by B: answered");
    a.shutdown().await;

    let new_vkey = proofgate::cli::audit::rotate_key(&a_data, "node-1")
        .await
        .expect("rotated")
        .text;
    let a = start(a_options(a_addr)).await;
    let rotated = a.gateway.audit().verifier_key().to_owned();
    assert_ne!(rotated, old_vkey);
    assert!(new_vkey.contains(&rotated), "{new_vkey}");
    // Answered only once B, having followed the rotation, holds it.
    let started = Instant::now();
    let after = request("elderly-subsidy", ELDERLY);
    let reply = loop {
        match submit(&a, after.clone()).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(started.elapsed() < BOUND, "B did not follow the rotation");
            }
        }
    };
    let index = reply.application.unwrap().receipt.unwrap().index;
    let channel = connect_as(&b, AUDITOR).await;
    let served = AuditServiceClient::new(channel)
        .get_checkpoint(GetCheckpointRequest {
            origin: ORIGIN_A.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(served.from_mirror && served.tree_size > index);
    assert_eq!(
        served.verifier_key, rotated,
        "B serves A's log under its new key"
    );
    assert!(!b.metrics.mirror_forked(ORIGIN_A));
    a.shutdown().await;
    b.shutdown().await;
}

/// A completion that arrives while no mirror holds the log is logged but
/// answered UNAVAILABLE; the department (the mock) sends it again, as it
/// is; once a mirror holds it the application reads complete, and the
/// completion is in the log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_refused_for_want_of_a_mirror_is_answered_when_sent_again() {
    use proofgate::pb::audit_entry::Event;
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a = start(needing_a_mirror(pki.path(), &dirs.path().join("a"))).await;
    // Pending at public-security; the mock completes it 1.5 s later and
    // sends the completion again while the node answers UNAVAILABLE.
    let refused = submit(&a, request("coach-licence-renewal", PENDING_THEN_VERIFIED))
        .await
        .expect_err("no mirror holds the decision");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let completions = |a: &Running| -> Vec<String> {
        let store = a.gateway.audit().store();
        store
            .entries(0, a.gateway.audit().durable_size())
            .filter_map(|item| {
                let (_, bytes) = item.unwrap();
                match prost::Message::decode(&bytes[..]) {
                    Ok(proofgate::pb::AuditEntry {
                        event: Some(Event::VerificationCompleted(done)),
                        ..
                    }) => Some(done.application_id),
                    _ => None,
                }
            })
            .collect()
    };
    // The completion is logged, and its answer waited for a mirror in vain
    // (the decision's answer was the first wait): only then does a mirror start.
    wait_until("the completion is logged and refused", || async {
        completions(&a).len() == 1 && a.metrics.mirror_ack_timeouts() >= 2
    })
    .await;
    let application_id = completions(&a).remove(0);
    let b = start(mirror_of(&a, pki.path(), &dirs.path().join("b"))).await;
    let mut hall = ApplicationServiceClient::new(connect_as(&a, HALL).await);
    wait_until("the application reads complete", || {
        let mut hall = hall.clone();
        let application_id = application_id.clone();
        async move {
            hall.get_application(proofgate::pb::GetApplicationRequest { application_id })
                .await
                .is_ok_and(|reply| {
                    status(&reply.into_inner()) == proofgate::pb::ApplicationStatus::Complete
                })
        }
    })
    .await;
    // However often the mock sent it again, nothing was logged twice (the
    // answer to an identical resend: RecentCompletions' unit test).
    assert_eq!(completions(&a), vec![application_id.clone()], "logged once");
    let read = hall
        .get_application(proofgate::pb::GetApplicationRequest {
            application_id: application_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.metrics.mirror_tree_size(ORIGIN_A) > read.receipt.unwrap().index);
    b.shutdown().await;
    a.shutdown().await;
}

async fn submit(
    node: &Running,
    request: proofgate::pb::SubmitApplicationRequest,
) -> Result<tonic::Response<proofgate::pb::SubmitApplicationResponse>, tonic::Status> {
    ApplicationServiceClient::new(connect_as(node, HALL).await)
        .submit_application(request)
        .await
}

/// The acknowledgement a mirror sends (`mirrored_size` + `mirrored_root`)
/// counts only when it names a tree this log signed, and only from another
/// node calling for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_counts_only_for_the_signed_tree_and_from_another_node() {
    let pki = pki();
    let dirs = tempfile::tempdir().unwrap();
    let a = start(ServeOptions {
        mirror_ack: Some(1),
        mirror_ack_timeout: Duration::from_millis(200),
        ..node(pki.path(), &dirs.path().join("a"), "node-1")
    })
    .await;
    let first = request("elderly-subsidy", ELDERLY);
    let refused = submit(&a, first.clone()).await.expect_err("no mirror");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let size = a.gateway.audit().durable_size();
    let signed = a
        .gateway
        .audit()
        .store()
        .checkpoint(size)
        .unwrap()
        .expect("a checkpoint at the durable size");
    let root = proofgate::audit::parse_checkpoint(&signed)
        .unwrap()
        .root
        .to_vec();
    let ack = |identity: &'static str, size: u64, root: Vec<u8>| {
        let endpoint = a.endpoint();
        let certs = pki.path().to_path_buf();
        async move {
            AuditServiceClient::new(connect_with(&endpoint, &certs, identity).await)
                .get_checkpoint(GetCheckpointRequest {
                    mirrored_size: size,
                    mirrored_root: root,
                    ..Default::default()
                })
                .await
                .expect("a gateway may read the log");
        }
    };
    let still_refused = || async {
        let status = submit(&a, first.clone())
            .await
            .expect_err("not acknowledged");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    };
    // Another history under this origin (a wrong root), a size past the
    // log, and this node acknowledging itself: none counts.
    ack("node-2.gateway.proofgate", size, vec![7; 32]).await;
    still_refused().await;
    ack("node-2.gateway.proofgate", size + 5, root.clone()).await;
    still_refused().await;
    ack("node-1.gateway.proofgate", size, root.clone()).await;
    still_refused().await;
    assert_eq!(a.gateway.audit().replication().replicated_size(), 0);
    // The tree this log signed, from another node: the decision is answered.
    ack("node-2.gateway.proofgate", size, root).await;
    let reply = submit(&a, first).await.expect("acknowledged").into_inner();
    assert!(reply.replayed);
    assert_eq!(a.gateway.audit().durable_size(), size, "decided once");
    assert!(a.metrics.encode().contains(&format!(
        "proofgate_mirror_acked_size{{mirror=\"node-2.gateway.proofgate\"}} {size}"
    )));
    a.shutdown().await;
}
