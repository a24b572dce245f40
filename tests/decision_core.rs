//! Live == replay, by construction and by test: policy sets, applicants and
//! department answers are generated; each proof is decided live through the
//! decision core with a scripted answer source (answers signed by real
//! department keys in batches, as the mock departments do), the decisions are
//! written as log entries, and replay must re-derive every proof exactly.
//! A tampered copy of the same entries must be caught, naming the proof.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use proofgate::audit::{replay_records, LogRecord, ReplayReport};
use proofgate::departments::signing::BatchSigner;
use proofgate::pb::{
    audit_entry::Event, ApplicationDecided, AuditEntry, Commitment, DataSource, DataSourceChanged,
    FieldValue, IdType, PolicySetLoaded, ProofDecision, QueryResponse, RecordedAnswer,
    SpotCheckRecorded, VerificationOutcome, VerifyResponse,
};
use proofgate::policy::{
    decide_proof, load_sources, AnswerSource, ApplicantFacts, Mode, PolicySet, Proof, ProofContext,
};

const DEPARTMENTS: [&str; 2] = ["dept-a", "dept-b"];
const CONDITIONS: [&str; 4] = [
    "record.level >= 3",
    r#"record.status == "ok""#,
    r#"record.level >= 2 && record.status == "ok""#,
    "applicant.age >= 60 || record.level > 4",
];
const DECIDED_UNIX_MS: i64 = 1_795_000_000_000;
const DECISION_DATE: &str = "2026-11-18";

#[derive(Debug, Clone)]
struct ProofSpec {
    mode: Mode,
    fallback: Option<Mode>,
    refuse_if_dishonest: bool,
    spot_check_rate: f64,
    condition: usize,
    department: usize,
    deadline_days: u32,
    conditional: bool,
}

fn word(mode: Mode) -> &'static str {
    mode.policy_word()
}

fn mode_strategy() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Abolished),
        Just(Mode::Commitment),
        Just(Mode::DataQuery),
        Just(Mode::DepartmentVerification),
    ]
}

fn proof_spec() -> impl Strategy<Value = ProofSpec> {
    (
        mode_strategy(),
        proptest::option::of(mode_strategy()),
        any::<bool>(),
        prop_oneof![Just(0.0), Just(0.5), Just(1.0)],
        0..CONDITIONS.len(),
        0..DEPARTMENTS.len(),
        1u32..6,
        any::<bool>(),
    )
        .prop_map(
            |(mode, fallback, refuse, rate, condition, department, days, conditional)| {
                // Only what the catalogue accepts: no fallback from or to
                // abolished, none to itself; a commitment falls back only
                // when it refuses the dishonest.
                let fallback = fallback
                    .filter(|f| *f != mode && *f != Mode::Abolished && mode != Mode::Abolished);
                let refuse_if_dishonest =
                    refuse || (mode == Mode::Commitment && fallback.is_some());
                ProofSpec {
                    mode,
                    fallback,
                    refuse_if_dishonest,
                    spot_check_rate: rate,
                    condition,
                    department,
                    deadline_days: days,
                    conditional,
                }
            },
        )
}

fn policy_toml(specs: &[ProofSpec]) -> String {
    let mut out = String::new();
    for (i, s) in specs.iter().enumerate() {
        let uses = |m: Mode| s.mode == m || s.fallback == Some(m);
        out.push_str(&format!(
            "[[proof]]\nid = \"p{i}\"\nname = \"Proof {i}\"\nmode = \"{}\"\nlegal_basis = \"rule {i}\"\n",
            word(s.mode)
        ));
        if let Some(f) = s.fallback {
            out.push_str(&format!("fallback = \"{}\"\n", word(f)));
        }
        if uses(Mode::DataQuery) || uses(Mode::DepartmentVerification) {
            out.push_str(&format!("department = \"{}\"\n", DEPARTMENTS[s.department]));
        }
        if uses(Mode::DataQuery) {
            out.push_str(&format!(
                "query = \"q{i}\"\nfields = [\"level\", \"status\"]\ncondition = '{}'\n",
                CONDITIONS[s.condition]
            ));
        }
        if uses(Mode::DepartmentVerification) {
            out.push_str(&format!(
                "claim = \"claim {i}\"\nverification_deadline_working_days = {}\n",
                s.deadline_days
            ));
        }
        if uses(Mode::Commitment) {
            out.push_str(&format!(
                "commitment_text = \"I commit {i}\"\ncommitment_version = \"v{i}\"\nspot_check_rate = {:?}\nrefuse_if_dishonest = {}\n",
                s.spot_check_rate, s.refuse_if_dishonest
            ));
        }
        out.push('\n');
    }
    out.push_str("[[matter]]\nid = \"m\"\nname = \"Matter\"\nproofs = [");
    let unconditional: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.conditional)
        .map(|(i, _)| format!("\"p{i}\""))
        .collect();
    out.push_str(&unconditional.join(", "));
    out.push_str("]\n");
    for (i, _) in specs.iter().enumerate().filter(|(_, s)| s.conditional) {
        out.push_str(&format!(
            "\n[[matter.conditional]]\nproof = \"p{i}\"\nwhen = \"applicant.age >= 40\"\n"
        ));
    }
    out
}

/// One scripted department answer: what it says if asked a query, and if
/// asked to verify.
#[derive(Debug, Clone)]
struct Script {
    down: bool,
    found: bool,
    level: Option<i64>,
    status: Option<&'static str>,
    outcome: VerificationOutcome,
    ticket: Option<String>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.8),
        proptest::option::weighted(0.9, 0i64..7),
        proptest::option::weighted(0.9, prop_oneof![Just("ok"), Just("closed")]),
        prop_oneof![
            3 => Just(VerificationOutcome::Verified),
            2 => Just(VerificationOutcome::NotVerified),
            4 => Just(VerificationOutcome::Pending),
            1 => Just(VerificationOutcome::Unspecified),
        ],
        proptest::option::weighted(0.8, "[a-z0-9]{1,12}"),
    )
        .prop_map(|(down, found, level, status, outcome, ticket)| Script {
            down,
            found,
            level,
            status,
            outcome,
            ticket,
        })
}

/// Answers from a script, signed by the department's key in batches.
struct Scripted {
    scripts: VecDeque<Script>,
    keys: Arc<Vec<(String, BatchSigner)>>,
    nonce: u64,
}

impl Scripted {
    fn signer(&self, department: &str) -> &BatchSigner {
        &self
            .keys
            .iter()
            .find(|(d, _)| d == department)
            .expect("every generated department has a key")
            .1
    }
}

impl AnswerSource for Scripted {
    type Error = Infallible;

    async fn answer(&mut self, proof: &Proof, mode: Mode) -> Result<RecordedAnswer, Infallible> {
        let department = proof.department.clone().unwrap_or_default();
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        let script = self.scripts.pop_front().unwrap_or(Script {
            down: true,
            found: false,
            level: None,
            status: None,
            outcome: VerificationOutcome::Unspecified,
            ticket: None,
        });
        let answer = match mode {
            _ if script.down => RecordedAnswer {
                department_id: department,
                request_nonce: nonce,
                failure: "department unavailable: connection refused".into(),
                mode: mode.as_pb() as i32,
                ..Default::default()
            },
            Mode::DataQuery => {
                let mut fields = Vec::new();
                if let Some(level) = script.level {
                    fields.push(FieldValue {
                        name: "level".into(),
                        value: Some(proofgate::pb::field_value::Value::Integer(level)),
                    });
                }
                if let Some(status) = script.status {
                    fields.push(FieldValue {
                        name: "status".into(),
                        value: Some(proofgate::pb::field_value::Value::Text(status.into())),
                    });
                }
                let mut response = QueryResponse {
                    request_nonce: nonce,
                    department_id: department.clone(),
                    found: script.found,
                    fields: if script.found { fields } else { Vec::new() },
                    ..Default::default()
                };
                self.signer(&department)
                    .sign(&mut response)
                    .await
                    .expect("signer runs");
                RecordedAnswer {
                    department_id: response.department_id,
                    request_nonce: response.request_nonce,
                    found: response.found,
                    fields: response.fields,
                    signature: response.signature,
                    batch: response.batch,
                    latency_ms: 3,
                    mode: mode.as_pb() as i32,
                    ..Default::default()
                }
            }
            Mode::DepartmentVerification => {
                let mut response = VerifyResponse {
                    request_nonce: nonce,
                    department_id: department.clone(),
                    outcome: script.outcome as i32,
                    ticket: script.ticket.unwrap_or_default(),
                    reason: "as the archive shows".into(),
                    expected_completion_unix_ms: 0,
                    ..Default::default()
                };
                self.signer(&department)
                    .sign(&mut response)
                    .await
                    .expect("signer runs");
                RecordedAnswer {
                    department_id: response.department_id,
                    request_nonce: response.request_nonce,
                    verification: response.outcome,
                    signature: response.signature,
                    batch: response.batch,
                    latency_ms: 4,
                    mode: mode.as_pb() as i32,
                    ticket: response.ticket,
                    reason: response.reason,
                    expected_completion_unix_ms: response.expected_completion_unix_ms,
                    ..Default::default()
                }
            }
            Mode::Abolished | Mode::Commitment => RecordedAnswer {
                department_id: department,
                request_nonce: nonce,
                failure: "no department is asked in this mode".into(),
                mode: mode.as_pb() as i32,
                ..Default::default()
            },
        };
        Ok(answer)
    }
}

#[derive(Debug, Clone)]
struct Case {
    specs: Vec<ProofSpec>,
    age: i64,
    consent: bool,
    dishonest: bool,
    /// Per proof: 0 none, 1 the current text, 2 an old text.
    commitments: Vec<u8>,
    scripts: Vec<Script>,
    tamper: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(proof_spec(), 1..6),
        0i64..100,
        prop::bool::weighted(0.8),
        any::<bool>(),
        proptest::collection::vec(0u8..3, 6),
        proptest::collection::vec(script(), 12),
        any::<usize>(),
    )
        .prop_map(
            |(specs, age, consent, dishonest, commitments, scripts, tamper)| Case {
                specs,
                age,
                consent,
                dishonest,
                commitments,
                scripts,
                tamper,
            },
        )
}

fn entry(index: u64, event: Event) -> LogRecord {
    LogRecord::Entry {
        index,
        bytes: AuditEntry {
            index,
            logged_unix_ms: DECIDED_UNIX_MS,
            node_id: "node-1".into(),
            event: Some(event),
        }
        .encode_to_vec()
        .into(),
        recorded_leaf: None,
    }
}

fn replay(entries: Vec<LogRecord>) -> ReplayReport {
    replay_records(entries.into_iter().map(Ok), |_| {}).expect("records are in memory")
}

struct World {
    policy: PolicySet,
    signers: Arc<Vec<(String, BatchSigner)>>,
    public_keys: Vec<(String, Vec<u8>)>,
}

fn world(specs: &[ProofSpec]) -> World {
    let policy = load_sources([(PathBuf::from("generated.toml"), policy_toml(specs))])
        .unwrap_or_else(|e| panic!("generated policy must load: {e}\n{}", policy_toml(specs)));
    let rng = SystemRandom::new();
    let mut signers = Vec::new();
    let mut public_keys = Vec::new();
    for department in DEPARTMENTS {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key generation");
        let key = Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh key"));
        public_keys.push((department.to_owned(), key.public_key().as_ref().to_vec()));
        signers.push((department.to_owned(), BatchSigner::start(key)));
    }
    World {
        policy,
        signers: Arc::new(signers),
        public_keys,
    }
}

/// Decides the case live and returns the log entries it would write.
async fn decide_live(case: &Case, world: &World) -> (Vec<LogRecord>, ApplicationDecided) {
    let policy = &world.policy;
    let facts = ApplicantFacts {
        id_type: IdType::ResidentId,
        age: Some(case.age),
        male: Some(true),
        region: Some(330_702),
    };
    let commitments: Vec<Commitment> = policy
        .proofs
        .values()
        .enumerate()
        .filter_map(|(i, proof)| {
            let version = proof.commitment.as_ref()?.version.clone();
            match case.commitments.get(i).copied().unwrap_or(0) {
                1 => Some(version),
                2 => Some(format!("{version}-old")),
                _ => None,
            }
            .map(|text_version| Commitment {
                proof_id: proof.id.clone(),
                text_version,
                accepted_at_unix_ms: DECIDED_UNIX_MS - 1_000,
            })
        })
        .collect();
    let pseudonym = vec![7u8; 32];
    let dishonest_until = case.dishonest.then_some("2027-01-01");
    let ctx = ProofContext {
        application_id: "node-1.0123456789abcdef01234567",
        facts: &facts,
        consent_to_data_queries: case.consent,
        commitments: &commitments,
        dishonest_until,
        dishonesty_unknown: false,
        decided_unix_ms: DECIDED_UNIX_MS,
    };
    let matter = policy.matter("m").expect("generated matter");
    let mut source = Scripted {
        scripts: case.scripts.iter().cloned().collect(),
        keys: Arc::clone(&world.signers),
        nonce: 0,
    };
    let mut proofs: Vec<ProofDecision> = Vec::new();
    for required in policy.required_proofs(matter, &facts) {
        let Ok(decision) = decide_proof(&required.proof, &ctx, &mut source).await;
        proofs.push(decision);
    }
    let decided = ApplicationDecided {
        application_id: ctx.application_id.into(),
        request_id: "r-1".into(),
        caller: "hall-1.hall.proofgate".into(),
        matter_id: "m".into(),
        policy_version: policy.version.clone(),
        subject_pseudonym: pseudonym.clone(),
        subject_id_type: IdType::ResidentId as i32,
        officer_id: "o-1".into(),
        hall_id: "hall-1".into(),
        consent_to_data_queries: case.consent,
        decision_date: DECISION_DATE.into(),
        status: proofgate::policy::overall_status(
            proofs
                .iter()
                .filter_map(|p| p.result.as_ref())
                .map(|r| r.outcome()),
        ) as i32,
        proofs,
        applicant_facts: Some(facts.to_pb()),
        dishonest_until: dishonest_until.unwrap_or_default().into(),
        decided_unix_ms: DECIDED_UNIX_MS,
        request_digest: vec![1; 32],
        ..Default::default()
    };
    let mut entries = vec![entry(
        0,
        Event::PolicySetLoaded(PolicySetLoaded {
            policy_version: policy.version.clone(),
            proof_count: policy.proofs.len() as u32,
            matter_count: policy.matters.len() as u32,
            canonical: policy.canonical.clone().into_bytes(),
            ..PolicySetLoaded::default()
        }),
    )];
    for (department, key) in &world.public_keys {
        entries.push(entry(
            entries.len() as u64,
            Event::DataSourceChanged(DataSourceChanged {
                source: Some(DataSource {
                    department_id: department.clone(),
                    endpoint: "https://127.0.0.1:1".into(),
                    answer_public_key: key.clone(),
                    capacity_per_second: 100,
                    ..Default::default()
                }),
                removed: false,
                changed_by: format!("{department}.department.proofgate"),
            }),
        ));
    }
    if let Some(until) = dishonest_until {
        entries.push(entry(
            entries.len() as u64,
            Event::SpotCheckRecorded(SpotCheckRecorded {
                application_id: "node-1.earlier".into(),
                proof_id: "p0".into(),
                truthful: false,
                reason: "false income".into(),
                recorded_by: "admin".into(),
                subject_pseudonym: pseudonym,
                dishonest_until: until.into(),
            }),
        ));
    }
    entries.push(entry(
        entries.len() as u64,
        Event::ApplicationDecided(decided.clone()),
    ));
    (entries, decided)
}

fn runtime() -> tokio::runtime::Runtime {
    // Paused time: the signers' batch window passes at once, whatever the machine.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replay_rederives_every_live_decision_proof_by_proof(case in case()) {
        let rt = runtime();
        let world = rt.block_on(async { world(&case.specs) });
        let (entries, decided) = rt.block_on(decide_live(&case, &world));
        let report = replay(entries.clone());
        prop_assert_eq!(report.decisions, 1);
        prop_assert!(
            report.discrepancies.is_empty(),
            "live and replay differ: {:?}\npolicy:\n{}",
            report.discrepancies,
            policy_toml(&case.specs)
        );

        // The same entries with one proof's recorded reason changed: replay
        // must name that proof.
        let victim = case.tamper % decided.proofs.len().max(1);
        if let Some(result) = decided.proofs.get(victim).and_then(|p| p.result.clone()) {
            let mut tampered = decided.clone();
            if let Some(r) = tampered.proofs[victim].result.as_mut() {
                r.reason.push_str(" (edited)");
            }
            let mut forged = entries.clone();
            let last = forged.len() as u64 - 1;
            forged.pop();
            forged.push(entry(last, Event::ApplicationDecided(tampered)));
            let report = replay(forged.clone());
            prop_assert!(
                report
                    .discrepancies
                    .iter()
                    .any(|d| d.what.starts_with(&format!("{}:", result.proof_id))),
                "an edited reason of {} went unnoticed: {:?}",
                result.proof_id,
                report.discrepancies
            );
        }

        // An answer moved to another department, or an outcome edited: named too.
        for (i, decision) in decided.proofs.iter().enumerate() {
            let proof_id = decision.result.as_ref().map(|r| r.proof_id.clone()).unwrap_or_default();
            let mut tampered = decided.clone();
            if let Some(answer) = tampered.proofs[i].answers.first_mut() {
                answer.department_id = if answer.department_id == DEPARTMENTS[0] {
                    DEPARTMENTS[1].into()
                } else {
                    DEPARTMENTS[0].into()
                };
            } else if let Some(r) = tampered.proofs[i].result.as_mut() {
                r.outcome = if r.outcome() == proofgate::pb::ProofOutcome::Verified {
                    proofgate::pb::ProofOutcome::NotVerified as i32
                } else {
                    proofgate::pb::ProofOutcome::Verified as i32
                };
            }
            let mut forged = entries.clone();
            let last = forged.len() as u64 - 1;
            forged.pop();
            forged.push(entry(last, Event::ApplicationDecided(tampered)));
            let report = replay(forged);
            prop_assert!(
                report.discrepancies.iter().any(|d| d.what.starts_with(&format!("{proof_id}:"))),
                "a moved answer or edited outcome of {} went unnoticed: {:?}",
                proof_id,
                report.discrepancies
            );
        }
    }
}
