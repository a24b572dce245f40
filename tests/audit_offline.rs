//! The auditor's view: proofs over gRPC, a citizen's access list, and the
//! offline tools on a data folder and on an exported file — including every
//! kind of tampering they must catch.

mod common;

use common::*;
use proofgate::audit::{
    application_key, data_dir_records, decode_group, encode_group, export, file_records, group_key,
    leaf_hash, rebuild_data_dir, replay_records, verify_consistency, verify_inclusion,
    verify_records, AuditLog, AuditStore, LogRecord, NoteSigner, NoteVerifier, Problem,
    WriterOptions, GROUP_ENTRIES,
};
use proofgate::pb::{
    audit_entry::Event, AuditEntry, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, IdType, ListAccessesRequest, ProofOutcome, Subject,
    WatchApplicationRequest,
};
use prost::Message;
use tokio_stream::StreamExt;

fn hash(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().expect("32-byte hash")
}

/// A stopped gateway's data folder holding decisions of every kind, including
/// a verification completed later.
async fn filled_data_dir() -> tempfile::TempDir {
    let gw = TestGateway::start().await;
    for (matter, id) in [
        ("elderly-subsidy", ELDERLY),
        ("elderly-subsidy", FAILS_ALL),
        ("coach-licence-renewal", PASSES_ALL),
    ] {
        gw.submit(request(matter, id)).await;
    }
    gw.submit(with_commitments(
        request("hpf-withdrawal-mortgage", PASSES_ALL),
        &[("income-statement", "income-v1")],
    ))
    .await;
    let pending = gw
        .submit(request("coach-licence-renewal", PENDING_THEN_VERIFIED))
        .await;
    let mut watch = gw
        .applications()
        .watch_application(WatchApplicationRequest {
            application_id: pending.application_id,
        })
        .await
        .unwrap()
        .into_inner();
    while tokio::time::timeout(COMPLETION_BOUND, watch.next())
        .await
        .expect("completion arrives")
        .is_some()
    {}
    // One more left pending, then marked overdue by the sweep.
    let overdue = gw
        .submit(request("coach-licence-renewal", PENDING_THEN_REFUSED))
        .await;
    let due = overdue
        .proofs
        .iter()
        .map(|p| p.due_unix_ms)
        .max()
        .unwrap_or_default();
    assert!(due > 0, "a pending proof has a deadline");
    assert!(gw.running.gateway.sweep_overdue(due + 1).await.unwrap() >= 1);
    let TestGateway {
        running, data_dir, ..
    } = gw;
    running.shutdown().await;
    data_dir
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_verify_against_signed_checkpoints() {
    let gw = TestGateway::start().await;
    let first = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    let old = gw
        .audit()
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    for id in [PASSES_ALL, FAILS_ALL, ELDERLY] {
        gw.submit(request("elderly-subsidy", id)).await;
    }
    let new = gw
        .audit()
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let verifier = NoteVerifier::from_vkey(&new.verifier_key).unwrap();
    let old_cp = verifier.verify_checkpoint(&old.note).unwrap();
    let new_cp = verifier.verify_checkpoint(&new.note).unwrap();

    let receipt = first.receipt.unwrap();
    let proof = gw
        .audit()
        .get_inclusion_proof(GetInclusionProofRequest {
            index: receipt.index,
            tree_size: new_cp.size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.leaf_hash, receipt.leaf_hash);
    let hashes: Vec<[u8; 32]> = proof.hashes.iter().map(|h| hash(h)).collect();
    assert!(verify_inclusion(
        receipt.index,
        new_cp.size,
        &hash(&receipt.leaf_hash),
        &hashes,
        &new_cp.root
    ));
    assert!(!verify_inclusion(
        receipt.index + 1,
        new_cp.size,
        &hash(&receipt.leaf_hash),
        &hashes,
        &new_cp.root
    ));

    let consistency = gw
        .audit()
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: old_cp.size,
            new_size: new_cp.size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<[u8; 32]> = consistency.hashes.iter().map(|h| hash(h)).collect();
    assert!(verify_consistency(
        old_cp.size,
        new_cp.size,
        &old_cp.root,
        &new_cp.root,
        &hashes
    ));

    let status = gw
        .audit()
        .get_inclusion_proof(GetInclusionProofRequest {
            index: new_cp.size + 5,
            tree_size: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = gw
        .audit()
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 1,
            new_size: new_cp.size + 100,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
}

#[tokio::test]
async fn a_citizen_sees_who_queried_which_department_for_which_matter() {
    let gw = TestGateway::start().await;
    let a = gw.submit(request("elderly-subsidy", ELDERLY)).await;
    gw.submit(request("elderly-subsidy", PASSES_ALL)).await;
    let b = gw
        .submit(request("minimum-living-allowance", ELDERLY))
        .await;
    let reply = gw
        .audit()
        .list_accesses(ListAccessesRequest {
            subject: Some(Subject {
                id_type: IdType::ResidentId as i32,
                id_number: ELDERLY.into(),
                name: String::new(),
            }),
            after_index: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = reply
        .accesses
        .iter()
        .map(|x| x.application_id.as_str())
        .collect();
    assert_eq!(ids, [a.application_id.as_str(), b.application_id.as_str()]);
    let first = &reply.accesses[0];
    assert_eq!(first.matter_id, "elderly-subsidy");
    assert_eq!(first.officer_id, "officer-007");
    let departments: Vec<&str> = first
        .departments
        .iter()
        .map(|d| d.department_id.as_str())
        .collect();
    assert!(departments.contains(&"public-security"), "{departments:?}");
    assert!(departments.contains(&"human-resources"), "{departments:?}");

    let paged = gw
        .audit()
        .list_accesses(ListAccessesRequest {
            subject: Some(Subject {
                id_type: IdType::ResidentId as i32,
                id_number: ELDERLY.into(),
                name: String::new(),
            }),
            after_index: 0,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.accesses.len(), 1);
    assert_eq!(paged.next_after_index, paged.accesses[0].index);

    let status = gw
        .audit()
        .list_accesses(ListAccessesRequest {
            subject: Some(Subject {
                id_type: IdType::ResidentId as i32,
                id_number: "330702194005050621".into(),
                name: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_data_folder_and_its_export_verify_and_replay_cleanly() {
    let dir = filled_data_dir().await;
    let report = verify_records(data_dir_records(dir.path()).unwrap(), None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert!(report.checkpoints > 0);
    let replay = replay_records(data_dir_records(dir.path()).unwrap(), |_| {}).unwrap();
    assert!(
        replay.discrepancies.is_empty(),
        "{:#?}",
        replay.discrepancies
    );
    assert!(replay.decisions >= 5);
    assert_eq!(replay.completions, 1);
    assert!(replay.answers_checked >= 5);

    let file = dir.path().join("export.bin");
    let (entries, _) = export(data_dir_records(dir.path()).unwrap(), &file).unwrap();
    assert_eq!(entries, report.entries);
    let vkey = std::fs::read_to_string(dir.path().join("log.vkey")).unwrap();
    let from_file = verify_records(file_records(&file).unwrap(), Some(&vkey), |_| {}).unwrap();
    assert!(from_file.ok(), "{:?}", from_file.problem);
    assert_eq!(from_file.root, report.root);
    let replay = replay_records(file_records(&file).unwrap(), |_| {}).unwrap();
    assert!(replay.discrepancies.is_empty());
}

#[tokio::test]
async fn every_projection_rebuilds_from_the_entries_and_a_changed_one_is_named() {
    let dir = filled_data_dir().await;
    let report = rebuild_data_dir(dir.path()).unwrap();
    assert!(report.consistent(), "{report:#?}");
    let count = |kind: &str| {
        report
            .kinds
            .iter()
            .find(|k| k.kind == kind)
            .map(|k| k.expected)
            .unwrap_or_default()
    };
    assert!(count("applications") >= 6, "{report:#?}");
    assert_eq!(count("applications"), count("request keys"));
    assert!(count("access index") >= count("applications"));
    assert!(count("data sources") >= 8);

    // Drop one application projection and forge another; rebuild names both.
    let store = AuditStore::open(&dir.path().join("log")).unwrap();
    let first = String::from_utf8(
        store
            .entries(0, u64::MAX)
            .filter_map(|e| AuditEntry::decode(&e.unwrap().1[..]).ok())
            .find_map(|e| match e.event {
                Some(Event::ApplicationDecided(d)) => Some(d.application_id.into_bytes()),
                _ => None,
            })
            .expect("a decision"),
    )
    .unwrap();
    let mut app = store.application(&first).unwrap().unwrap();
    app.status = proofgate::pb::ApplicationStatus::Unspecified as i32;
    drop(store);
    {
        let db = open_raw(&dir.path().join("log"));
        db.insert(application_key(&first), app.encode_to_vec())
            .unwrap();
        db.insert(application_key("node-1.forged"), vec![]).unwrap();
        db.flush().unwrap();
    }
    let report = rebuild_data_dir(dir.path()).unwrap();
    assert!(!report.consistent());
    let apps = report
        .kinds
        .iter()
        .find(|k| k.kind == "applications")
        .unwrap();
    assert_eq!(
        (apps.different, apps.extra, apps.missing),
        (1, 1, 0),
        "{report:#?}"
    );
    assert!(
        report.examples.iter().any(|e| e.contains(&first)),
        "{:?}",
        report.examples
    );
    assert!(report.examples.iter().any(|e| e.contains("node-1.forged")));
}

fn records_of(file: &std::path::Path) -> Vec<LogRecord> {
    file_records(file).unwrap().map(|r| r.unwrap()).collect()
}

fn verify_vec(records: Vec<LogRecord>, vkey: &str) -> Option<Problem> {
    verify_records(records.into_iter().map(Ok), Some(vkey), |_| {})
        .unwrap()
        .problem
}

fn entry_positions(records: &[LogRecord]) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, LogRecord::Entry { .. }))
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn every_kind_of_tampering_with_an_export_is_caught_with_its_index() {
    let dir = filled_data_dir().await;
    let file = dir.path().join("export.bin");
    export(data_dir_records(dir.path()).unwrap(), &file).unwrap();
    let vkey = std::fs::read_to_string(dir.path().join("log.vkey")).unwrap();
    let original = records_of(&file);
    assert_eq!(verify_vec(original.clone(), &vkey), None);
    let entries = entry_positions(&original);
    let target = entries[entries.len() / 2];
    let LogRecord::Entry { index: k, .. } = original[target].clone() else {
        unreachable!()
    };

    // A flipped byte: the recorded leaf hash names the entry exactly.
    for at in [5usize, 40, 200] {
        let mut t = original.clone();
        if let LogRecord::Entry { bytes, .. } = &mut t[target] {
            let at = at.min(bytes.len() - 1);
            flip(bytes, at, 0x01);
        }
        let problem = verify_vec(t, &vkey).expect("flip detected");
        assert!(
            matches!(&problem, Problem::Entry { index, .. } if *index == k),
            "{problem}"
        );
    }
    // The same flip with the recorded leaf hashes stripped (a forger would
    // recompute them): the covering checkpoint catches it and names the range.
    let mut t: Vec<LogRecord> = original
        .iter()
        .cloned()
        .map(|r| match r {
            LogRecord::Entry { index, bytes, .. } => LogRecord::Entry {
                index,
                bytes,
                recorded_leaf: None,
            },
            other => other,
        })
        .collect();
    if let LogRecord::Entry { bytes, .. } = &mut t[target] {
        let last = bytes.len() - 1;
        flip(bytes, last, 0x01);
    }
    match verify_vec(t, &vkey).expect("flip detected") {
        Problem::Checkpoint { size, reason } => {
            assert!(size > k, "checkpoint {size} must cover entry {k}");
            assert!(reason.contains("root does not match"), "{reason}");
        }
        // A flip in the index field is caught even earlier.
        Problem::Entry { index, .. } => assert_eq!(index, k),
        other => panic!("{other}"),
    }

    // A deleted entry.
    let mut t = original.clone();
    t.remove(target);
    let problem = verify_vec(t, &vkey).expect("deletion detected").to_string();
    assert!(
        problem.contains(&format!("entry {k}")) && problem.contains("missing"),
        "{problem}"
    );

    // Two entries swapped.
    let mut t = original.clone();
    let next = entries[entries.iter().position(|&p| p == target).unwrap() + 1];
    t.swap(target, next);
    let problem = verify_vec(t, &vkey).expect("reorder detected");
    assert!(
        matches!(&problem, Problem::Entry { index, .. } if *index == k),
        "{problem}"
    );

    // A checkpoint moved to another place.
    let checkpoints: Vec<usize> = original
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, LogRecord::Checkpoint(_)))
        .map(|(i, _)| i)
        .collect();
    let mut t = original.clone();
    let (a, b) = (checkpoints[1], checkpoints[checkpoints.len() - 1]);
    t.swap(a, b);
    let problem = verify_vec(t, &vkey).expect("swapped checkpoint detected");
    assert!(
        matches!(&problem, Problem::Checkpoint { reason, .. } if reason.contains("moved or swapped")),
        "{problem}"
    );

    // A checkpoint edited, or signed by another key.
    let mut t = original.clone();
    if let LogRecord::Checkpoint(note) = &mut t[checkpoints[2]] {
        *note = note.replacen('\n', "\n1", 1);
    }
    let problem = verify_vec(t, &vkey).expect("edited checkpoint detected");
    assert!(matches!(&problem, Problem::Checkpoint { .. }), "{problem}");
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let forger = NoteSigner::new(
        "proofgate/test-node",
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
    )
    .unwrap();
    let mut t = original.clone();
    let last = *checkpoints.last().unwrap();
    if let LogRecord::Checkpoint(note) = &t[last] {
        let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
        t[last] = LogRecord::Checkpoint(forger.sign_checkpoint(size, &[0u8; 32]));
    }
    let problem = verify_vec(t, &vkey).expect("forged checkpoint detected");
    assert!(
        matches!(&problem, Problem::Checkpoint { reason, .. } if reason.contains("no signature")),
        "{problem}"
    );

    // Entries appended after the last checkpoint.
    let mut t = original.clone();
    let LogRecord::Entry { bytes, .. } = original[target].clone() else {
        unreachable!()
    };
    let size = entries.len() as u64;
    let mut extra = AuditEntry::decode(&bytes[..]).unwrap();
    extra.index = size;
    let extra = extra.encode_to_vec();
    t.push(LogRecord::Entry {
        index: size,
        recorded_leaf: Some(leaf_hash(&extra)),
        bytes: extra.into(),
    });
    let problem = verify_vec(t, &vkey).expect("unsigned tail detected");
    assert!(
        matches!(&problem, Problem::Log { reason } if reason.contains("signed by no checkpoint")),
        "{problem}"
    );

    // A damaged file is an error, not a panic.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 7);
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, bytes).unwrap();
    assert!(verify_records(file_records(&cut).unwrap(), Some(&vkey), |_| {}).is_err());
}

#[tokio::test]
async fn changing_a_stored_entry_in_the_data_folder_is_caught() {
    let dir = filled_data_dir().await;
    let index = {
        let size = AuditStore::open(&dir.path().join("log"))
            .unwrap()
            .tree_size()
            .unwrap();
        let index = size / 2;
        // Flip the entry's last byte, leaving its recorded leaf hash as it
        // was. It is in a complete group of sixteen (the tail's entries are
        // in chunks).
        assert!(
            index < size / GROUP_ENTRIES * GROUP_ENTRIES,
            "{index} of {size}"
        );
        let db = open_raw(&dir.path().join("log"));
        let group = index / GROUP_ENTRIES;
        let key = group_key(group);
        let mut entries = decode_group(group, &db.get(key).unwrap().unwrap()).unwrap();
        let bytes = &mut entries[(index % GROUP_ENTRIES) as usize].1;
        let last = bytes.len() - 1;
        flip(bytes, last, 0x80);
        let value = encode_group(&mut zstd::block::Compressor::new(), &entries).unwrap();
        db.insert(key, value).unwrap();
        db.flush().unwrap();
        index
    };
    let report = verify_records(data_dir_records(dir.path()).unwrap(), None, |_| {}).unwrap();
    assert!(
        matches!(&report.problem, Some(Problem::Entry { index: i, .. }) if *i == index),
        "{:?}",
        report.problem
    );
}

#[tokio::test]
async fn replay_catches_a_re_signed_log_whose_decision_does_not_follow() {
    let dir = filled_data_dir().await;
    let events: Vec<Event> = {
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let size = store.tree_size().unwrap();
        store
            .entries(0, size)
            .map(|e| {
                AuditEntry::decode(&e.unwrap().1[..])
                    .unwrap()
                    .event
                    .unwrap()
            })
            .collect()
    };
    // A dishonest operator holding the node key rewrites one rejection into a
    // completion and re-signs everything: the log verifies, replay does not.
    let forged_dir = tempfile::tempdir().unwrap();
    let (log, _) =
        proofgate::security::open_log(forged_dir.path(), "test-node", WriterOptions::default())
            .unwrap();
    let mut forged_index = None;
    for (i, event) in events.into_iter().enumerate() {
        let event = match event {
            Event::ApplicationDecided(mut d) if forged_index.is_none() && d.status == 3 => {
                forged_index = Some(i as u64);
                d.status = 1;
                for p in &mut d.proofs {
                    if let Some(r) = &mut p.result {
                        if r.outcome == ProofOutcome::ConditionNotMet as i32 {
                            r.outcome = ProofOutcome::ConditionMet as i32;
                        }
                    }
                }
                Event::ApplicationDecided(d)
            }
            other => other,
        };
        log.append(event, Vec::new()).await.unwrap();
    }
    log.stop().await;
    drop(log);
    let forged_index = forged_index.expect("the fixture has a rejected application");
    let report =
        verify_records(data_dir_records(forged_dir.path()).unwrap(), None, |_| {}).unwrap();
    assert!(
        report.ok(),
        "the forged log is internally consistent: {:?}",
        report.problem
    );
    let replay = replay_records(data_dir_records(forged_dir.path()).unwrap(), |_| {}).unwrap();
    assert!(!replay.discrepancies.is_empty());
    assert!(
        replay.discrepancies.iter().all(|d| d.index == forged_index),
        "{:#?}",
        replay.discrepancies
    );
    let _ = AuditLog::stop; // the writer API used above
}

#[tokio::test]
async fn a_rotated_key_is_followed_from_the_first_key() {
    let dir = filled_data_dir().await;
    let first_key = std::fs::read_to_string(dir.path().join("log.vkey")).unwrap();
    let new_key = proofgate::security::rotate_log_key(dir.path(), "test-node")
        .await
        .unwrap();
    assert_ne!(first_key.trim(), new_key);
    // The node goes on under the new key.
    let running = proofgate::server::start(options(dir.path())).await.unwrap();
    let channel = connect(&running).await;
    proofgate::pb::application_service_client::ApplicationServiceClient::new(channel)
        .submit_application(request("elderly-subsidy", ELDERLY))
        .await
        .unwrap();
    running.shutdown().await;
    let report = verify_records(
        data_dir_records(dir.path()).unwrap(),
        Some(&first_key),
        |_| {},
    )
    .unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.keys[1], new_key);
    // Trusting only the new key, the old checkpoints do not verify.
    let report = verify_records(
        data_dir_records(dir.path()).unwrap(),
        Some(&new_key),
        |_| {},
    )
    .unwrap();
    assert!(report.problem.is_some());
}

/// The store's sled database, raw, for tampering. sled frees the lock of a
/// store closed a moment ago only when its background writes end, so this
/// waits for it (as `AuditStore::open` does), within a bound.
fn open_raw(path: &std::path::Path) -> sled::Db {
    let mut attempts = 0;
    loop {
        match proofgate::audit::sled_config(path, Default::default()).open() {
            Ok(db) => return db,
            Err(e) if attempts < 150 && e.to_string().contains("could not acquire lock") => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

/// A data folder written before issue 12 kept a full copy of each
/// application beside its entries: such a folder still reads and rebuilds,
/// and `migrate_projections` (run by `serve` at start) converts it to lists
/// of entries, giving the same applications.
#[tokio::test]
async fn applications_stored_in_the_old_form_still_read_and_are_converted() {
    let dir = filled_data_dir().await;
    let path = dir.path().join("log");
    let store = AuditStore::open(&path).unwrap();
    let ids: Vec<String> = store
        .entries(0, u64::MAX)
        .filter_map(|e| AuditEntry::decode(&e.unwrap().1[..]).ok())
        .filter_map(|e| match e.event {
            Some(Event::ApplicationDecided(d)) => Some(d.application_id),
            _ => None,
        })
        .collect();
    let before: Vec<_> = ids
        .iter()
        .map(|id| store.application(id).unwrap().unwrap())
        .collect();
    assert!(before.iter().any(|a| a.receipt.is_some()));
    drop(store);
    {
        // Write them back as the store kept them before: encoded, receipt included.
        let db = open_raw(&path);
        for app in &before {
            db.insert(application_key(&app.application_id), app.encode_to_vec())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let store = AuditStore::open(&path).unwrap();
    for (id, app) in ids.iter().zip(&before) {
        assert_eq!(&store.application(id).unwrap().unwrap(), app);
    }
    let report = proofgate::audit::rebuild_report(&store).unwrap();
    assert!(report.consistent(), "{report:#?}");
    assert_eq!(
        proofgate::audit::migrate_projections(&store).unwrap(),
        ids.len() as u64
    );
    assert_eq!(proofgate::audit::migrate_projections(&store).unwrap(), 0);
    for (id, app) in ids.iter().zip(&before) {
        assert_eq!(&store.application(id).unwrap().unwrap(), app);
        let raw = store.meta(&application_key(id)).unwrap().unwrap();
        assert_eq!(raw[0], proofgate::audit::APPLICATION_CHAIN);
    }
    assert!(proofgate::audit::rebuild_report(&store)
        .unwrap()
        .consistent());
}

/// `bytes` with the bits of `mask` flipped at `at`.
fn flip(bytes: &mut prost::bytes::Bytes, at: usize, mask: u8) {
    let mut changed = bytes.to_vec();
    changed[at] ^= mask;
    *bytes = changed.into();
}
