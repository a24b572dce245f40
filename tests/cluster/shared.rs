//! The registry and the dishonesty records every node shares (etcd): a data
//! source registered through one node is used by another; a dishonesty
//! record made on one node bars commitments on another, and its revocation
//! lifts it everywhere; without an etcd quorum no registry change and no
//! commitment is accepted, while reads keep working.
//!
//! The nodes share one development PKI (so each can reach a department that
//! registered through another) and one pseudonym key (so a dishonesty record
//! names the same subject on every node), as README "Running a cluster" says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use super::etcd::{run_node_to_end, spawn_node_with, EtcdCluster, Node, BOUND};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::department_registry_client::DepartmentRegistryClient;
use proofgate::pb::operations_service_client::OperationsServiceClient;
use proofgate::pb::{
    Application, AuditEntry, DataSource, DeregisterDataSourceRequest, GetApplicationRequest,
    GetEntriesRequest, IdType, ListDataSourcesRequest, ProofOutcome, RecordSpotCheckRequest,
    RegisterDataSourceRequest, RevokeDishonestyRequest, Subject, SubmitApplicationRequest,
};
use tonic::transport::Channel;

const COMPANY: &str = "91330702MA28K00072";

/// One PKI and one pseudonym key for every node of a test cluster.
struct SharedSetup {
    dir: tempfile::TempDir,
}

impl SharedSetup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["dev-certs", "--dir"])
            .arg(dir.path().join("pki"))
            .output()
            .expect("proofgate runs");
        assert!(out.status.success(), "dev-certs: {out:?}");
        let out = Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["keygen", "--data-dir"])
            .arg(dir.path().join("template"))
            .output()
            .expect("proofgate runs");
        assert!(out.status.success(), "keygen: {out:?}");
        Self { dir }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A data folder for a new node: the shared certificates and pseudonym
    /// key, its own log signing key.
    fn data_dir(&self, name: &str) -> PathBuf {
        let data = self.dir.path().join(name);
        let certs = data.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        for entry in std::fs::read_dir(self.pki()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), certs.join(entry.file_name())).unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["keygen", "--data-dir"])
            .arg(&data)
            .output()
            .expect("proofgate runs");
        assert!(out.status.success(), "keygen: {out:?}");
        let key = data.join("keys/pseudonym.key");
        std::fs::remove_file(&key).unwrap();
        std::fs::copy(self.dir.path().join("template/keys/pseudonym.key"), &key).unwrap();
        data
    }

    fn node(&self, etcd: &EtcdCluster, node_id: &str) -> Node {
        spawn_node_with(&etcd.endpoints(), node_id, &self.data_dir(node_id), &[])
    }
}

/// `proofgate mock-department NAME --gateway A,B,C --certs PKI`, until drop.
pub(super) struct MockProcess(Child);

impl MockProcess {
    pub(super) fn start(name: &str, gateways: &[&str], pki: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["mock-department", name, "--gateway", &gateways.join(",")])
            .arg("--certs")
            .arg(pki)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("proofgate runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = BufReader::new(stdout).lines().next();
        match line {
            Some(Ok(line)) if line.starts_with("mock department") => Self(child),
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!("mock department {name} did not register: {other:?}, {status:?}")
            }
        }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn sources(channel: &Channel) -> Vec<DataSource> {
    DepartmentRegistryClient::new(channel.clone())
        .list_data_sources(ListDataSourcesRequest {})
        .await
        .expect("ListDataSources answers")
        .into_inner()
        .sources
}

/// Waits (within [`BOUND`]) until `node` lists (or no longer lists) `department`.
async fn wait_listed(channel: &Channel, department: &str, listed: bool) {
    let started = Instant::now();
    while sources(channel)
        .await
        .iter()
        .any(|s| s.department_id == department)
        != listed
    {
        assert!(
            started.elapsed() < BOUND,
            "{department} never became {}",
            if listed { "listed" } else { "unlisted" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits, retrying UNAVAILABLE (no etcd session for a moment on a busy
/// machine) within [`BOUND`].
async fn submit(channel: &Channel, request: SubmitApplicationRequest) -> Application {
    let started = Instant::now();
    loop {
        let mut request = request.clone();
        request.request_id = format!("{}-{}", request.request_id, started.elapsed().as_nanos());
        match ApplicationServiceClient::new(channel.clone())
            .submit_application(request)
            .await
        {
            Ok(reply) => {
                return reply
                    .into_inner()
                    .application
                    .expect("an application in the reply")
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(started.elapsed() < BOUND, "never decided: {status:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

fn premises_request() -> SubmitApplicationRequest {
    with_commitments(
        request("business-change", COMPANY),
        &[("business-premises", "premises-v1")],
    )
}

fn company() -> Subject {
    Subject {
        id_type: IdType::UnifiedSocialCreditCode as i32,
        id_number: COMPANY.into(),
        name: String::new(),
    }
}

/// How many registry changes of `department` a node's own log holds.
/// The registry changes of `department` in a node's log: (received by that
/// node, adopted from the shared registry).
async fn logged_changes(auditor: &Channel, department: &str) -> (usize, usize) {
    use proofgate::pb::audit_entry::Event;
    use prost::Message;
    use tokio_stream::StreamExt;
    let mut stream = AuditServiceClient::new(auditor.clone())
        .get_entries(GetEntriesRequest {
            start: 0,
            end: 0,
            ..Default::default()
        })
        .await
        .expect("entries readable")
        .into_inner();
    let mut changes = (0, 0);
    while let Some(stored) = stream.next().await {
        let entry =
            AuditEntry::decode(stored.expect("an entry").entry.as_slice()).expect("an audit entry");
        if let Some(Event::DataSourceChanged(changed)) = entry.event {
            if changed
                .source
                .is_some_and(|s| s.department_id == department)
            {
                if changed.changed_by == "cluster shared registry" {
                    changes.1 += 1;
                } else {
                    changes.0 += 1;
                }
            }
        }
    }
    changes
}

/// Replays a stopped node's log: no discrepancy.
fn replays(node: &mut Node) {
    node.kill();
    let out = Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["audit", "replay", "--data-dir"])
        .arg(&node.data_dir)
        .output()
        .expect("proofgate runs");
    assert!(
        out.status.success(),
        "replay of {}: {}\n{}",
        node.data_dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_source_registered_through_node_1_is_used_by_node_3_and_removed_through_node_2() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let setup = SharedSetup::new();
    let nodes: Vec<Node> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| setup.node(&etcd, id))
        .collect();
    let pki = setup.pki();
    // A node with another pseudonym key (its own, generated) is refused:
    // dishonesty records would not name the same subjects on it.
    let stranger = run_node_to_end(&etcd.endpoints(), "node-4", &setup.dir.path().join("n4"));
    assert_eq!(stranger.status.code(), Some(64), "{stranger:?}");
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains("pseudonym key") && stderr.contains("differs from the cluster's"),
        "{stderr}"
    );
    assert_eq!(etcd.nodes().await.len(), 3, "the refused node left at once");
    let hall_3 = connect_with(&nodes[2].endpoint, &pki, HALL).await;
    let auditor_3 = connect_with(&nodes[2].endpoint, &pki, AUDITOR).await;
    // With --etcd no in-process mock departments: nothing is registered.
    assert!(sources(&auditor_3).await.is_empty());
    let before = submit(&hall_3, request("elderly-subsidy", ELDERLY)).await;
    assert_eq!(
        outcome(&before, "jinhua-household"),
        ProofOutcome::Unavailable
    );

    // A department process registers through node 1: the first URL of its
    // list is a node that is down, passed over.
    let down = format!("https://127.0.0.1:{}", {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    });
    let _department = MockProcess::start(
        "public-security",
        &[
            &down,
            &nodes[0].endpoint,
            &nodes[1].endpoint,
            &nodes[2].endpoint,
        ],
        &pki,
    );
    let auditor_1 = connect_with(&nodes[0].endpoint, &pki, AUDITOR).await;
    assert!(sources(&auditor_1)
        .await
        .iter()
        .any(|s| s.department_id == "public-security"));
    wait_listed(&auditor_3, "public-security", true).await;

    // Node 3 asks it: the household query is answered.
    let after = submit(&hall_3, request("elderly-subsidy", ELDERLY)).await;
    let household = proof(&after, "jinhua-household");
    assert_eq!(
        household.outcome(),
        ProofOutcome::ConditionMet,
        "{household:#?}"
    );

    // Withdrawn through node 2: gone on node 3 too.
    let admin_2 = connect_with(&nodes[1].endpoint, &pki, ADMIN).await;
    DepartmentRegistryClient::new(admin_2)
        .deregister_data_source(DeregisterDataSourceRequest {
            department_id: "public-security".into(),
        })
        .await
        .expect("deregistered through node 2");
    wait_listed(&auditor_3, "public-security", false).await;
    // Each change is logged as received by the node that received it, and
    // as adopted by every other node before that node uses it (so each log
    // names the keys of the answers it holds and replays on its own).
    let auditor_2 = connect_with(&nodes[1].endpoint, &pki, AUDITOR).await;
    for (auditor, expected) in [
        (&auditor_1, (1, 1)),
        (&auditor_2, (1, 1)),
        (&auditor_3, (0, 2)),
    ] {
        let started = std::time::Instant::now();
        loop {
            let logged = logged_changes(auditor, "public-security").await;
            if logged == expected {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60) && logged.0 <= expected.0,
                "{logged:?}, expected {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let gone = submit(&hall_3, request("elderly-subsidy", ELDERLY)).await;
    assert_eq!(
        outcome(&gone, "jinhua-household"),
        ProofOutcome::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dishonesty_record_made_on_node_2_bars_commitments_on_node_3_until_revoked() {
    let Some(etcd) = EtcdCluster::start().await else {
        return;
    };
    let setup = SharedSetup::new();
    let node_2 = setup.node(&etcd, "node-2");
    let mut node_3 = setup.node(&etcd, "node-3");
    let pki = setup.pki();
    let hall_2 = connect_with(&node_2.endpoint, &pki, HALL).await;
    let hall_3 = connect_with(&node_3.endpoint, &pki, HALL).await;
    let mut ops_2 = OperationsServiceClient::new(connect_with(&node_2.endpoint, &pki, ADMIN).await);
    let mut ops_3 = OperationsServiceClient::new(connect_with(&node_3.endpoint, &pki, ADMIN).await);

    // A premises commitment sampled for a spot check on node 2 (rate 10 %).
    let mut sampled = None;
    for _ in 0..300 {
        let app = submit(&hall_2, premises_request()).await;
        if proof(&app, "business-premises").spot_check {
            sampled = Some(app);
            break;
        }
    }
    let sampled = sampled.expect("a commitment is sampled within 300 applications");
    let recorded = ops_2
        .record_spot_check(RecordSpotCheckRequest {
            application_id: sampled.application_id.clone(),
            proof_id: "business-premises".into(),
            truthful: false,
            reason: "site visit: the declared address is a residential flat".into(),
        })
        .await
        .expect("spot check recorded on node 2")
        .into_inner();
    assert!(!recorded.dishonest_until.is_empty());

    // Node 3 does not accept the company's commitment (watched within 1 s;
    // polled here within the bound).
    let started = Instant::now();
    let barred = loop {
        let app = submit(&hall_3, premises_request()).await;
        if outcome(&app, "business-premises") != ProofOutcome::CommitmentRecorded {
            break app;
        }
        assert!(started.elapsed() < BOUND, "node 3 never saw the record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let premises = proof(&barred, "business-premises");
    assert!(premises.fallback_used, "{premises:#?}");
    assert!(
        premises.reason.contains("false commitment"),
        "{}",
        premises.reason
    );

    // Revoked on node 3 (the record was made on node 2): lifted on node 2.
    ops_3
        .revoke_dishonesty(RevokeDishonestyRequest {
            subject: Some(company()),
            reason: "credit repaired after rectification".into(),
        })
        .await
        .expect("revoked on node 3");
    let started = Instant::now();
    loop {
        let app = submit(&hall_2, premises_request()).await;
        if outcome(&app, "business-premises") == ProofOutcome::CommitmentRecorded {
            break;
        }
        assert!(started.elapsed() < BOUND, "node 2 never saw the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = ops_2
        .revoke_dishonesty(RevokeDishonestyRequest {
            subject: Some(company()),
            reason: "twice".into(),
        })
        .await
        .expect_err("nothing left to revoke");
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");

    // Node 3 used a record from node 2's log: its own log still replays.
    replays(&mut node_3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_etcd_quorum_no_commitment_and_no_registry_change_is_accepted_reads_work() {
    let Some(mut etcd) = EtcdCluster::start().await else {
        return;
    };
    let setup = SharedSetup::new();
    let node = setup.node(&etcd, "node-1");
    let pki = setup.pki();
    let hall = connect_with(&node.endpoint, &pki, HALL).await;
    let admin = connect_with(&node.endpoint, &pki, ADMIN).await;
    let source = |department: &str| DataSource {
        department_id: department.into(),
        endpoint: "https://127.0.0.1:9".into(),
        queries: vec!["household_registration".into()],
        verifications: Vec::new(),
        capacity_per_second: 10,
        answer_public_key: vec![7; 32],
    };
    let register = |department: &str| {
        let mut client = DepartmentRegistryClient::new(admin.clone());
        let request = RegisterDataSourceRequest {
            source: Some(source(department)),
        };
        async move { client.register_data_source(request).await }
    };
    register("public-security")
        .await
        .expect("registered with a quorum");
    let earlier = submit(&hall, premises_request()).await;

    // Two of three members gone: no quorum.
    etcd.kill(2);
    etcd.kill(1);
    let started = Instant::now();
    let refused = loop {
        match register("health").await {
            Err(status) => break status,
            // The node may not have noticed yet.
            Ok(_) => {
                assert!(started.elapsed() < BOUND, "registry changes never refused");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("registry changes are refused"),
        "{refused:?}"
    );
    // Until the quorum is back, no commitment is taken: the submission is
    // refused whole (nothing decided), or the commitment is unavailable.
    let mut request = premises_request();
    request.request_id = "no-quorum-commitment".into();
    match ApplicationServiceClient::new(hall.clone())
        .submit_application(request)
        .await
    {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(reply) => {
            let app = reply.into_inner().application.expect("an application");
            assert_ne!(
                outcome(&app, "business-premises"),
                ProofOutcome::CommitmentRecorded,
                "{app:#?}"
            );
        }
    }
    // Reads keep working: the registry as last known, an earlier application.
    let listed = sources(&admin).await;
    assert_eq!(
        listed
            .iter()
            .map(|s| s.department_id.as_str())
            .collect::<Vec<_>>(),
        ["public-security"]
    );
    let read = ApplicationServiceClient::new(hall.clone())
        .get_application(GetApplicationRequest {
            application_id: earlier.application_id.clone(),
        })
        .await
        .expect("own application readable without etcd")
        .into_inner();
    assert_eq!(read.application_id, earlier.application_id);

    // Quorum back: changes are taken again, without restarting the node.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy().await;
    let started = Instant::now();
    while let Err(status) = register("health").await {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < BOUND,
            "registry changes never taken again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_listed(&admin, "health", true).await;
    // Commitments again once the dishonesty records are followed again; until
    // then the commitment is unavailable, never taken blindly.
    let started = Instant::now();
    loop {
        let app = submit(&hall, premises_request()).await;
        let premises = proof(&app, "business-premises");
        if premises.outcome() == ProofOutcome::CommitmentRecorded {
            break;
        }
        assert!(
            premises.reason.contains("dishonesty records is current"),
            "{premises:#?}"
        );
        assert!(started.elapsed() < BOUND, "commitments never taken again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_folder_follows_changes_and_knows_when_it_may_be_stale() {
    use proofgate::cluster::SharedFolder;
    use std::sync::{Arc, Mutex};
    let Some(mut etcd) = EtcdCluster::start().await else {
        return;
    };
    let options = etcd.options();
    type Heard = Arc<Mutex<Vec<(String, Option<Vec<u8>>)>>>;
    let heard: Heard = Arc::default();
    let told = Arc::clone(&heard);
    let folder = SharedFolder::start(
        &options,
        "test-folder",
        Arc::new(move |name, value| {
            told.lock()
                .unwrap()
                .push((name.to_owned(), value.map(<[u8]>::to_vec)))
        }),
    )
    .await
    .expect("etcd answers");
    let mirror = folder.handle();
    assert!(mirror.is_current());

    // Written by another client (another node): seen here.
    let other = SharedFolder::start(&options, "test-folder", Arc::new(|_, _| {}))
        .await
        .expect("etcd answers");
    other.handle().put("a", b"one".to_vec()).await.unwrap();
    let started = Instant::now();
    while mirror.get("a").as_deref() != Some(&b"one"[..]) {
        assert!(started.elapsed() < BOUND, "the change never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *heard.lock().unwrap(),
        vec![("a".to_owned(), Some(b"one".to_vec()))]
    );

    // No quorum: the mirror stops calling itself current, and a write fails.
    etcd.kill(2);
    etcd.kill(1);
    let started = Instant::now();
    while mirror.is_current() {
        assert!(
            started.elapsed() < BOUND,
            "a mirror without etcd stayed current"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(mirror.put("b", b"two".to_vec()).await.is_err());
    assert_eq!(mirror.get("a").as_deref(), Some(&b"one"[..]), "reads work");

    // Quorum back: current again by itself, with what changed meanwhile.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy().await;
    let started = Instant::now();
    while let Err(e) = other.handle().delete("a").await {
        assert!(
            started.elapsed() < BOUND,
            "etcd never took a write again: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let started = Instant::now();
    while !(mirror.is_current() && mirror.get("a").is_none()) {
        assert!(started.elapsed() < BOUND, "the mirror never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        heard.lock().unwrap().last(),
        Some(&("a".to_owned(), None)),
        "the owner heard of the deletion"
    );
}
