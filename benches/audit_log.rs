//! Audit log throughput, each figure against its raw baseline in the same run:
//!
//! 1. appends through the single writer (group commit, nodes, signed
//!    checkpoint per batch) vs raw sled inserts of the same bytes with one
//!    flush per batch of the same size;
//! 2. `audit verify` over the whole log vs raw SHA-256 of the same entry bytes;
//! 3. bytes on disk per million entries.
//!
//! `cargo bench --bench audit_log -- [ENTRIES] [CONCURRENCY]` (defaults 1,000,000 and 256).

use std::time::Instant;

use proofgate::audit::{
    data_dir_records, leaf_hash, verify_records, AuditLog, AuditStore, NoteSigner, WriterOptions,
};
use proofgate::pb::{
    audit_entry::Event, ApplicationDecided, ProofDecision, ProofResult, RecordedAnswer,
};
use prost::Message;
use ring::signature::Ed25519KeyPair;

/// A decision shaped like a real one: 4 proofs, 2 signed department answers.
fn decision(n: u64) -> Event {
    let answer = |dept: &str| RecordedAnswer {
        department_id: dept.into(),
        request_nonce: format!("{n:032x}"),
        found: true,
        signature: vec![7; 64],
        latency_ms: 1,
        mode: 3,
        ..Default::default()
    };
    let proof = |id: &str, mode: i32, answers: Vec<RecordedAnswer>| ProofDecision {
        result: Some(ProofResult {
            proof_id: id.into(),
            proof_name: "证明 proof".into(),
            mode,
            outcome: 4,
            department_id: "public-security".into(),
            legal_basis: "户口登记条例".into(),
            reason: "condition `record.status == \"registered\"` holds".into(),
            planned_mode: mode,
            ..Default::default()
        }),
        answers,
        commitment: None,
    };
    Event::ApplicationDecided(ApplicationDecided {
        application_id: format!("node-1.{n:024x}"),
        request_id: format!("hall-7-{n}"),
        caller: "hall:hall-wucheng".into(),
        matter_id: "elderly-subsidy".into(),
        policy_version: format!("sha256:{}", "ab".repeat(32)),
        subject_pseudonym: vec![9; 32],
        subject_id_type: 1,
        officer_id: "officer-007".into(),
        hall_id: "hall-wucheng".into(),
        consent_to_data_queries: true,
        decision_date: "2026-11-26".into(),
        proofs: vec![
            proof("jinhua-household", 3, vec![answer("public-security")]),
            proof("alive-status", 3, vec![answer("human-resources")]),
            proof("committee-alive-proof", 1, vec![]),
        ],
        status: 1,
        applicant_facts: None,
        dishonest_until: String::new(),
        decided_unix_ms: 0,
        request_digest: Vec::new(),
        ..Default::default()
    })
}

fn signer() -> NoteSigner {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    NoteSigner::new(
        "proofgate/bench",
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
    )
    .unwrap()
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let entries: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let concurrency: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("audit log benchmark: {entries} entries, {concurrency} concurrent appenders");

    // 1. Appends through the writer.
    let log_dir = dir.path().join("node");
    std::fs::create_dir_all(&log_dir).unwrap();
    let store = AuditStore::open(&log_dir.join("log")).unwrap();
    let log = AuditLog::start(store, signer(), "bench".into(), WriterOptions::default()).unwrap();
    std::fs::write(log_dir.join("log.vkey"), log.verifier_key()).unwrap();
    // The events are built before the clock starts, as the raw baseline's
    // payloads are: both time the log, not the making of decisions.
    let mut shares: Vec<Vec<Event>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
    for n in 0..entries {
        shares[(n % concurrency.max(1)) as usize].push(decision(n));
    }
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for share in shares {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for event in share {
                    log.append(event, Vec::new()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.stop().await;
    });
    let writer_secs = started.elapsed().as_secs_f64();
    let checkpoints = log.store().checkpoints().count() as u64;
    let entry_bytes: u64 = log
        .store()
        .entries(0, entries)
        .map(|e| e.unwrap().1.len() as u64)
        .sum();
    drop(log);
    let avg_batch = (entries / checkpoints.max(1)).max(1) as usize;
    let disk = dir_size(&log_dir.join("log"));

    // Raw sled with the store's own configuration (cache, segment size,
    // compression), same bytes, one flush per batch of the writer's average size.
    let raw_db = proofgate::audit::sled_config(&dir.path().join("raw"), Default::default())
        .open()
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..entries)
        .map(|n| {
            proofgate::pb::AuditEntry {
                index: n,
                logged_unix_ms: 1,
                node_id: "bench".into(),
                event: Some(decision(n)),
            }
            .encode_to_vec()
        })
        .collect();
    let started = Instant::now();
    for (chunk_no, chunk) in payloads.chunks(avg_batch).enumerate() {
        let mut batch = sled::Batch::default();
        for (i, payload) in chunk.iter().enumerate() {
            let key = ((chunk_no * avg_batch + i) as u64).to_be_bytes();
            batch.insert(&key[..], payload.as_slice());
        }
        raw_db.apply_batch(batch).unwrap();
        raw_db.flush().unwrap();
    }
    let raw_secs = started.elapsed().as_secs_f64();
    drop(raw_db);

    // 2. Verify vs raw SHA-256 of the same bytes.
    let started = Instant::now();
    let read = data_dir_records(&log_dir).unwrap().count();
    println!(
        "reading the records alone: {:.0} records/s",
        read as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let report = verify_records(data_dir_records(&log_dir).unwrap(), None, |_| {}).unwrap();
    let verify_secs = started.elapsed().as_secs_f64();
    assert!(report.ok(), "{:?}", report.problem);
    // What `audit verify` does by default: every root, sampled signatures.
    let started = Instant::now();
    let sampled = proofgate::audit::verify_records_with(
        data_dir_records(&log_dir).unwrap(),
        None,
        proofgate::audit::VerifyOptions {
            signatures: proofgate::audit::SignatureCheck::Sampled {
                every: proofgate::audit::SIGNATURE_SAMPLE_EVERY,
            },
        },
        |_| {},
    )
    .unwrap();
    let sampled_secs = started.elapsed().as_secs_f64();
    assert!(sampled.ok(), "{:?}", sampled.problem);
    let export_path = dir.path().join("export.bin");
    proofgate::audit::export(data_dir_records(&log_dir).unwrap(), &export_path).unwrap();
    let started = Instant::now();
    let from_file = verify_records(
        proofgate::audit::file_records(&export_path).unwrap(),
        None,
        |_| {},
    )
    .unwrap();
    let file_secs = started.elapsed().as_secs_f64();
    assert!(from_file.ok());
    let started = Instant::now();
    let mut sink = 0u8;
    for p in &payloads {
        sink ^= leaf_hash(p)[0];
    }
    let sha_secs = started.elapsed().as_secs_f64();

    let per = |n: u64, s: f64| n as f64 / s;
    println!(
        "entry size: {} bytes on average",
        entry_bytes / entries.max(1)
    );
    println!(
        "appends through the writer: {:>10.0} entries/s  ({checkpoints} checkpoints, {avg_batch} entries per batch)",
        per(entries, writer_secs)
    );
    println!(
        "raw sled, flush per batch:  {:>10.0} inserts/s  ratio writer/raw = {:.2}",
        per(entries, raw_secs),
        raw_secs / writer_secs
    );
    println!(
        "audit verify (data folder, every signature): {:>10.0} entries/s  ratio to raw = {:.2}",
        per(report.entries, verify_secs),
        sha_secs / verify_secs
    );
    println!(
        "audit verify (data folder, default: {} of {} signatures): {:>10.0} entries/s  ratio to raw = {:.2}",
        sampled.signatures_checked,
        sampled.checkpoints,
        per(sampled.entries, sampled_secs),
        sha_secs / sampled_secs
    );
    println!(
        "audit verify (export file): {:>10.0} entries/s  ratio file/raw = {:.2}",
        per(from_file.entries, file_secs),
        sha_secs / file_secs
    );
    println!(
        "raw SHA-256 of the entries: {:>10.0} entries/s  ratio verify/raw = {:.2}  (checksum {sink})",
        per(entries, sha_secs),
        sha_secs / verify_secs
    );
    println!(
        "log on disk: {:.1} MiB, {:.0} MiB per million entries",
        disk as f64 / 1048576.0,
        disk as f64 / 1048576.0 * 1_000_000.0 / entries as f64
    );
}
