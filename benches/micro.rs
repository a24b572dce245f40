//! Criterion micro benchmarks of the per-application and per-entry hot paths:
//! `cargo bench --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use proofgate::audit::{leaf_hash, Frontier, NoteSigner, NoteVerifier};
use proofgate::departments::signing::{AnswerVerifier, BatchSigned, BatchSigner};
use proofgate::pb::{field_value, FieldValue, IdType, QueryResponse};
use proofgate::policy::{load_dir, ApplicantFacts, Evidence, Mode};
use proofgate::subject::{check_resident_id, PseudonymKey};
use ring::signature::{Ed25519KeyPair, KeyPair};

fn key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn merkle(c: &mut Criterion) {
    let entry = vec![7u8; 900];
    c.bench_function("leaf hash of a 900-byte entry", |b| {
        b.iter(|| leaf_hash(black_box(&entry)))
    });
    c.bench_function("frontier append + root", |b| {
        let mut frontier = Frontier::default();
        let leaf = leaf_hash(&entry);
        b.iter(|| {
            frontier.push(black_box(leaf));
            black_box(frontier.root())
        })
    });
}

fn checkpoints(c: &mut Criterion) {
    let signer = NoteSigner::new("proofgate/bench", key()).unwrap();
    let verifier = NoteVerifier::from_vkey(&signer.verifier_key()).unwrap();
    let note = signer.sign_checkpoint(1_000_000, &[3u8; 32]);
    c.bench_function("sign a checkpoint (Ed25519)", |b| {
        b.iter(|| signer.sign_checkpoint(black_box(1_000_000), &[3u8; 32]))
    });
    c.bench_function("verify a checkpoint", |b| {
        b.iter(|| verifier.verify_checkpoint(black_box(&note)).unwrap())
    });
}

fn policy(c: &mut Criterion) {
    let set = load_dir(std::path::Path::new("policies")).unwrap();
    let proof = set.proof("hpf-deposit").unwrap().clone();
    let facts = ApplicantFacts::derive(IdType::ResidentId, "330702199001011237", (2026, 11, 26));
    let record = [
        FieldValue {
            name: "status".into(),
            value: Some(field_value::Value::Text("normal".into())),
        },
        FieldValue {
            name: "months_paid".into(),
            value: Some(field_value::Value::Integer(84)),
        },
    ];
    c.bench_function("judge a data query (CEL condition)", |b| {
        b.iter(|| {
            proof.judge(
                Mode::DataQuery,
                &Evidence::QueryAnswer {
                    found: true,
                    fields: black_box(&record),
                },
                &facts,
            )
        })
    });
    let matter = set.matter("school-enrolment").unwrap();
    c.bench_function("required proofs of a matter (CEL when)", |b| {
        b.iter(|| set.required_proofs(black_box(matter), &facts).len())
    });
}

fn subjects(c: &mut Criterion) {
    c.bench_function("GB 11643 check", |b| {
        b.iter(|| check_resident_id(black_box("330702199001011237")))
    });
    let pseudonyms = PseudonymKey::new(&[9; 32]);
    c.bench_function("pseudonym (HMAC-SHA256)", |b| {
        b.iter(|| pseudonyms.pseudonym(IdType::ResidentId, black_box("330702199001011237")))
    });
}

fn answers(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let department = Arc::new(key());
    let public = department.public_key().as_ref().to_vec();
    let signer = runtime.block_on(async { BatchSigner::start(Arc::clone(&department)) });
    let mut answer = QueryResponse {
        request_nonce: "n".into(),
        department_id: "civil-affairs".into(),
        found: true,
        ..Default::default()
    };
    runtime.block_on(signer.sign(&mut answer)).unwrap();
    let cached = AnswerVerifier::default();
    c.bench_function("verify a batch-signed answer (root cached)", |b| {
        b.iter(|| assert!(cached.verify(&public, black_box(&answer))))
    });
    c.bench_function("verify a batch-signed answer (cold)", |b| {
        b.iter(|| assert!(AnswerVerifier::default().verify(&public, black_box(&answer))))
    });
    c.bench_function("answer signing bytes", |b| {
        b.iter(|| black_box(&answer).signing_bytes())
    });
}

/// Policy load at Jinhua scale (4,052 proofs, 1,000 matters): what `policy
/// check` and a node's start-up pay, split into reading+TOML and the whole.
fn policy_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    proofgate::policy::synthetic::write_jinhua_catalogue(dir.path(), 4052, 1000).unwrap();
    let mut group = c.benchmark_group("jinhua catalog");
    group.sample_size(10);
    group.bench_function("load_dir (parse, compile, canonical form, digest)", |b| {
        b.iter(|| load_dir(black_box(dir.path())).unwrap().proofs.len())
    });
    let texts: Vec<String> = ["matters.toml", "proofs.toml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
        .collect();
    group.bench_function("TOML parse only (toml::Table)", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| t.parse::<toml::Table>().unwrap().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    merkle,
    checkpoints,
    policy,
    subjects,
    answers,
    policy_load
);
criterion_main!(benches);
