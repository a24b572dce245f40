//! Every entry written can be read back, hashes into the signed checkpoint,
//! and the log resumes at the right size after a restart.

mod common;

use common::*;
use proofgate::audit::{leaf_hash, root_of, NoteVerifier};
use proofgate::pb::{audit_entry::Event, AuditEntry, GetCheckpointRequest, GetEntriesRequest};
use prost::Message;
use tokio_stream::StreamExt;

async fn read_all(gw: &TestGateway) -> (Vec<Vec<u8>>, proofgate::pb::Checkpoint) {
    let checkpoint = gw
        .audit()
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut stream = gw
        .audit()
        .get_entries(GetEntriesRequest {
            start: 0,
            end: checkpoint.tree_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.unwrap();
        assert_eq!(item.index, entries.len() as u64);
        entries.push(item.entry);
    }
    (entries, checkpoint)
}

#[tokio::test]
async fn every_entry_reads_back_and_its_checkpoint_signature_verifies() {
    let gw = TestGateway::start().await;
    let mut receipts = Vec::new();
    for id in [PASSES_ALL, FAILS_ALL, ELDERLY] {
        let app = gw.submit(request("elderly-subsidy", id)).await;
        receipts.push(app.receipt.unwrap());
    }
    let (entries, checkpoint) = read_all(&gw).await;
    assert_eq!(entries.len() as u64, checkpoint.tree_size);

    let vkey = std::fs::read_to_string(gw.data_dir.path().join("log.vkey")).unwrap();
    assert_eq!(vkey.trim(), checkpoint.verifier_key);
    let verified = NoteVerifier::from_vkey(&vkey)
        .unwrap()
        .verify_checkpoint(&checkpoint.note)
        .unwrap();
    assert_eq!(verified.origin, "proofgate/test-node");
    assert_eq!(verified.size, checkpoint.tree_size);

    let leaves: Vec<_> = entries.iter().map(|e| leaf_hash(e)).collect();
    assert_eq!(root_of(&leaves), verified.root);
    assert_eq!(verified.root.to_vec(), checkpoint.root_hash);

    for receipt in receipts {
        let entry = AuditEntry::decode(entries[receipt.index as usize].as_slice()).unwrap();
        assert_eq!(entry.index, receipt.index);
        assert_eq!(
            leaf_hash(&entries[receipt.index as usize]).to_vec(),
            receipt.leaf_hash
        );
        let Some(Event::ApplicationDecided(decided)) = entry.event else {
            panic!("entry {} is not a decision", receipt.index);
        };
        assert_eq!(decided.subject_pseudonym.len(), 32);
        assert!(!decided.proofs.is_empty());
        assert!(decided.policy_version.starts_with("sha256:"));
        // The answers kept are the minimum fields, with the department's signature.
        for answer in decided.proofs.iter().flat_map(|p| &p.answers) {
            assert!(!answer.signature.is_empty() || !answer.failure.is_empty());
        }
    }
    // The first entry records the policy set itself, so replay needs nothing else.
    let first = AuditEntry::decode(entries[0].as_slice()).unwrap();
    assert!(matches!(first.event, Some(Event::PolicySetLoaded(_))));
}

#[tokio::test]
async fn id_numbers_and_names_never_enter_the_log() {
    let gw = TestGateway::start().await;
    gw.submit(request("elderly-subsidy", ELDERLY)).await;
    let (entries, _) = read_all(&gw).await;
    for entry in &entries {
        let text = String::from_utf8_lossy(entry);
        assert!(!text.contains(ELDERLY), "ID number in the log");
        assert!(!text.contains("测试申请人"), "name in the log");
    }
}

#[tokio::test]
async fn the_log_resumes_at_the_right_size_after_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let first = proofgate::server::start(options(data_dir.path()))
        .await
        .unwrap();
    let channel = connect(&first).await;
    let mut client =
        proofgate::pb::application_service_client::ApplicationServiceClient::new(channel);
    let req = request("elderly-subsidy", ELDERLY);
    let decided = client
        .submit_application(req.clone())
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let size_before = first.gateway.audit().store().tree_size().unwrap();
    let vkey_before = std::fs::read_to_string(data_dir.path().join("log.vkey")).unwrap();
    first.shutdown().await;

    let second = proofgate::server::start(options(data_dir.path()))
        .await
        .unwrap();
    let store = second.gateway.audit().store().clone();
    // Same policy: no second PolicySetLoaded; the mocks re-register (one entry each).
    let mocks = second.mocks.len() as u64;
    assert_eq!(store.tree_size().unwrap(), size_before + mocks);
    assert_eq!(
        std::fs::read_to_string(data_dir.path().join("log.vkey")).unwrap(),
        vkey_before,
        "keys are kept across restarts"
    );
    let channel = connect(&second).await;
    let mut client =
        proofgate::pb::application_service_client::ApplicationServiceClient::new(channel);
    let replay = client.submit_application(req).await.unwrap().into_inner();
    assert!(replay.replayed, "idempotency survives the restart");
    assert_eq!(
        replay.application.unwrap().application_id,
        decided.application_id
    );

    let entries: Vec<Vec<u8>> = store
        .entries(0, store.tree_size().unwrap())
        .map(|e| e.unwrap().1.to_vec())
        .collect();
    let (size, note) = store.latest_checkpoint().unwrap().unwrap();
    let vkey = std::fs::read_to_string(data_dir.path().join("log.vkey")).unwrap();
    let checkpoint = NoteVerifier::from_vkey(&vkey)
        .unwrap()
        .verify_checkpoint(&note)
        .unwrap();
    assert_eq!(size, entries.len() as u64);
    let leaves: Vec<_> = entries.iter().map(|e| leaf_hash(e)).collect();
    assert_eq!(root_of(&leaves), checkpoint.root);
    second.shutdown().await;
}
