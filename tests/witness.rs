//! Witnesses end to end (issue 11): our log and our witness (a real
//! `proofgate witness` process, or one served in-process on an ephemeral
//! port), real sled in temp folders, real signatures. The checkpoints and
//! cosignatures are checked with an independent implementation of C2SP
//! signed notes (Cloudflare's `signed_note` crate, Ed25519 by
//! ed25519-dalek); requests are written byte for byte in the spec's format.
//! Nothing waits on time: conditions are polled with a generous bound.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use proofgate::audit::witness::AddCheckpoint;
use proofgate::audit::{consistency_proof, root_of, Hash, NoteSigner};
use proofgate::merkle::proof::LeafHashes;
use proofgate::pb::audit_service_client::AuditServiceClient;
use proofgate::pb::GetCheckpointRequest;
use proofgate::server::cosign::WitnessTarget;
use proofgate::server::{self, ServeOptions};

/// How long a condition may take to come true before the test fails: a
/// bound, not a measurement.
const BOUND: Duration = Duration::from_secs(120);
const NODE: &str = "test-node";
const ORIGIN: &str = "proofgate/test-node";
const WITNESS_NAME: &str = "proofgate-witness";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_proofgate")
}

/// A `proofgate witness` process: (child, URL, vkey).
fn spawn_witness(data_dir: &Path, listen: &str, log_vkey: &str) -> (Child, String, String) {
    let mut child = Command::new(bin())
        .args(["witness", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(["--log", log_vkey])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("witness starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let vkey = lines.next().expect("prints its vkey").expect("stdout");
    let serving = lines.next().expect("prints its URL").expect("stdout");
    let url = serving
        .strip_prefix("witness serving on ")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("unexpected line {serving:?}"))
        .to_owned();
    (child, url, vkey)
}

/// The node's keys made before it first starts (`keygen` does the same),
/// so the witness can be told about the log; returns the log's vkey.
fn keygen(data_dir: &Path) -> String {
    proofgate::security::write_log_vkey(data_dir, NODE).expect("keys written")
}

fn log_signer(data_dir: &Path) -> NoteSigner {
    let keys = proofgate::security::load_or_generate_keys(&data_dir.join("keys")).unwrap();
    NoteSigner::new(ORIGIN, keys.signing).unwrap()
}

async fn start_node(data_dir: &Path, witnesses: Vec<WitnessTarget>) -> Served {
    let options = ServeOptions {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        console: false,
        witnesses,
        ..options(data_dir)
    };
    Served::new(server::start(options).await.expect("node starts"))
}

fn target(url: &str, vkey: &str) -> WitnessTarget {
    format!("{url}={vkey}").parse().expect("URL=VKEY")
}

async fn submit_some(node: &Served, n: usize) {
    let mut hall = proofgate::pb::application_service_client::ApplicationServiceClient::new(
        connect(node).await,
    );
    for _ in 0..n {
        hall.submit_application(request("hpf-withdrawal-mortgage", PASSES_ALL))
            .await
            .expect("the node decides while witnesses lag or are down");
    }
}

fn durable_size(node: &Served) -> u64 {
    node.gateway.audit().durable_size()
}

/// The value of one metric line (`name{labels} value`), if present.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn metrics_of(node: &Served) -> String {
    scrape_metrics(node.metrics_addr.expect("metrics on")).await
}

/// Waits until the witness has cosigned the node's newest checkpoint.
async fn wait_cosigned(node: &Served) -> u64 {
    let mut auditor = AuditServiceClient::new(connect_as(node, AUDITOR).await);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let size = durable_size(node);
        let got = auditor
            .get_checkpoint(GetCheckpointRequest {
                min_cosignatures: 1,
                ..Default::default()
            })
            .await;
        if let Ok(checkpoint) = got {
            if checkpoint.get_ref().tree_size == size && durable_size(node) == size {
                return size;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the witness did not cosign size {size} within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The witness's key as an independent `signed_note` verifier of
/// `cosignature/v1` (type 0x04): key id by `signed_note::key_id`, message
/// built from tlog-cosignature, Ed25519 by ed25519-dalek.
struct Cosigner {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl Cosigner {
    fn from_vkey(vkey: &str) -> Self {
        let mut parts = vkey.trim().splitn(3, '+');
        let (name, id_hex, key) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            B64.decode(parts.next().unwrap()).unwrap(),
        );
        assert_eq!(key.len(), 33);
        assert_eq!(key[0], 0x04, "a cosignature/v1 vkey has type 0x04");
        let id = signed_note::key_id(name, &key);
        assert_eq!(format!("{id:08x}"), id_hex, "the key id is the spec's");
        Self {
            name: name.to_owned(),
            id,
            key: ed25519_dalek::VerifyingKey::from_bytes(&key[1..].try_into().unwrap()).unwrap(),
        }
    }
}

impl signed_note::Verifier for Cosigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        let Some((time, signature)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let Ok(signature) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let mut message =
            format!("cosignature/v1\ntime {}\n", u64::from_be_bytes(*time)).into_bytes();
        message.extend_from_slice(text);
        self.key
            .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
            .is_ok()
    }
}

/// Verifies `note` with the independent implementation: the log's signature
/// and the witness's cosignature must both verify.
fn independently_verified(note: &str, log_vkey: &str, witness_vkey: &str) {
    let log = signed_note::StandardVerifier::new(log_vkey.trim()).expect("our log vkey parses");
    let witness = Cosigner::from_vkey(witness_vkey);
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).expect("our note parses");
    let (verified, unverified) = parsed
        .verify(&signed_note::VerifierList::new(vec![
            Box::new(log),
            Box::new(witness),
        ]))
        .expect("every known signature verifies");
    let names: Vec<_> = verified.iter().map(|s| s.name().to_owned()).collect();
    assert!(names.contains(&ORIGIN.to_owned()), "{names:?}");
    assert!(names.contains(&WITNESS_NAME.to_owned()), "{names:?}");
    assert!(unverified.is_empty());
}

/// POSTs `body` to `path` on `addr` as raw HTTP/1.1: (status, content type, body).
async fn post(addr: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("witness");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: witness\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn leaves(n: u8) -> Vec<Hash> {
    (0..n).map(|i| proofgate::audit::leaf_hash(&[i])).collect()
}

/// An add-checkpoint body written out as the spec's example is: `old N`,
/// one base64 hash per line, a blank line, the checkpoint note.
fn spec_body(old: u64, proof: &[Hash], checkpoint: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&B64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(checkpoint);
    body
}

fn verify_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("audit verify runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_log_and_our_witness_end_to_end() {
    let node_dir = tempfile::tempdir().unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let log_vkey = keygen(node_dir.path());
    let log_vkey_file = node_dir.path().join("log.vkey");
    let (mut witness, url, witness_vkey) = spawn_witness(
        witness_dir.path(),
        "127.0.0.1:0",
        log_vkey_file.to_str().unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(witness_dir.path().join("witness.vkey")).unwrap(),
        format!("{witness_vkey}\n")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(witness_dir.path().join("witness-key.pk8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the witness's key is readable by others");
    }
    let node = start_node(node_dir.path(), vec![target(&url, &witness_vkey)]).await;
    submit_some(&node, 3).await;
    let size = wait_cosigned(&node).await;

    // GetCheckpoint: the log's signature and the witness's cosignature.
    let mut auditor = AuditServiceClient::new(connect_as(&node, AUDITOR).await);
    let checkpoint = auditor
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, size);
    assert_eq!(checkpoint.cosignatures, 1);
    assert!(
        checkpoint
            .note
            .contains(&format!("\n\u{2014} {WITNESS_NAME} ")),
        "{}",
        checkpoint.note
    );
    independently_verified(&checkpoint.note, &log_vkey, &witness_vkey);
    // The note's text is the tlog-checkpoint the cosignature covers.
    let mut lines = checkpoint.note.lines();
    assert_eq!(lines.next(), Some(ORIGIN));
    assert_eq!(lines.next(), Some(size.to_string().as_str()));
    assert_eq!(
        lines.next(),
        Some(B64.encode(&checkpoint.root_hash).as_str())
    );

    // More cosignatures than witnesses: FAILED_PRECONDITION; another origin: NOT_FOUND.
    let err = auditor
        .get_checkpoint(GetCheckpointRequest {
            min_cosignatures: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("1 witness"), "{}", err.message());
    let err = auditor
        .get_checkpoint(GetCheckpointRequest {
            origin: "proofgate/other".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let own = auditor
        .get_checkpoint(GetCheckpointRequest {
            origin: ORIGIN.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(own.get_ref().tree_size, size);

    // Metrics: the witness's cosigned size and no lag.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let text = metrics_of(&node).await;
        let series = format!("proofgate_witness_cosigned_size{{witness=\"{WITNESS_NAME}\"}}");
        if metric(&text, &series) == Some(size) {
            assert_eq!(
                metric(
                    &text,
                    &format!("proofgate_witness_lag_entries{{witness=\"{WITNESS_NAME}\"}}")
                ),
                Some(0)
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    witness.kill().unwrap();
    let _ = witness.wait();

    // Offline: the auditor requires the witness.
    let dir = node_dir.path().to_str().unwrap();
    let witness_vkey_file = witness_dir.path().join("witness.vkey");
    let wfile = witness_vkey_file.to_str().unwrap();
    let (code, out) = verify_cli(&["--data-dir", dir, "--witness", wfile, "--quorum", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 valid cosignature"), "{out}");
    let (code, out) = verify_cli(&[
        "--data-dir",
        dir,
        "--witness",
        &witness_vkey,
        "--quorum",
        "2",
    ]);
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("required (--quorum)"), "{out}");
    // Another witness's key (not the one that cosigned): fails.
    let stranger = {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        NoteSigner::cosigner(
            WITNESS_NAME,
            ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        )
        .unwrap()
        .verifier_key()
    };
    let (code, out) = verify_cli(&["--data-dir", dir, "--witness", &stranger, "--quorum", "1"]);
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("by 0 of the 1"), "{out}");
    // A log key given as a witness key is a usage error.
    let (code, out) = verify_cli(&["--data-dir", dir, "--witness", &log_vkey, "--quorum", "1"]);
    assert_eq!(code, 64, "{out}");
    // An export carries the cosignatures too.
    let export = node_dir.path().join("node.log");
    let status = Command::new(bin())
        .args(["audit", "export", "--data-dir", dir, "--out"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let file = export.to_str().unwrap();
    let (code, out) = verify_cli(&["--file", file, "--witness", wfile, "--quorum", "1"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_cli(&["--file", file, "--witness", &stranger, "--quorum", "1"]);
    assert_eq!(code, 65, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_speaks_the_spec_format_and_refuses_forks() {
    let dir = tempfile::tempdir().unwrap();
    let pair = || {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    };
    let log = NoteSigner::new("example.com/behind-the-sofa", pair()).unwrap();
    let witness = server::witness::start(server::witness::WitnessOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        name: WITNESS_NAME.into(),
        logs: vec![log.verifier_key()],
        tls: None,
        clock: proofgate::clock::system(),
    })
    .await
    .expect("witness starts");
    let addr = witness.addr.to_string();
    let tree = leaves(20);
    let checkpoint = |size: u64| log.sign_checkpoint(size, &root_of(&tree[..size as usize]));

    // The spec's example form: "old 0", no proof, blank line, the checkpoint.
    let (status, content_type, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(0, &[], &checkpoint(5)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(body.starts_with(&format!("\u{2014} {WITNESS_NAME} ")) && body.ends_with('\n'));
    // The client may concatenate the response to the checkpoint (the spec's words).
    let cosigned = format!("{}{body}", checkpoint(5));
    let parsed = signed_note::Note::from_bytes(cosigned.as_bytes()).unwrap();
    let (verified, _) = parsed
        .verify(&signed_note::VerifierList::new(vec![
            Box::new(signed_note::StandardVerifier::new(&log.verifier_key()).unwrap()),
            Box::new(Cosigner::from_vkey(&witness.vkey)),
        ]))
        .expect("the cosignature verifies independently");
    assert_eq!(verified.len(), 2);

    // A consistent larger checkpoint with its proof lines: cosigned.
    let proof = consistency_proof(&LeafHashes(&tree), 5, 8).unwrap();
    assert!(!proof.is_empty());
    let (status, _, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(5, &proof, &checkpoint(8)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A second, different checkpoint at the size it saw, signed by the log's own key: 409.
    let fork = log.sign_checkpoint(8, &[7u8; 32]);
    let (status, content_type, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(8, &[], &fork).as_bytes(),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "8\n")
    );
    // A stale old size: 409 with the witness's size.
    let (status, content_type, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(5, &proof, &checkpoint(8)).as_bytes(),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "8\n")
    );
    // A larger size with a bogus proof: 422.
    let bogus = [[3u8; 32], [4u8; 32]];
    let (status, _, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(8, &bogus, &checkpoint(12)).as_bytes(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    // Unknown origin 404, an untrusted key 403, malformed 400 (with a reason), old > size 400.
    let stranger = NoteSigner::new("example.com/elsewhere", pair()).unwrap();
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(0, &[], &stranger.sign_checkpoint(1, &tree[0])).as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    let impostor = NoteSigner::new("example.com/behind-the-sofa", pair()).unwrap();
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(8, &[], &impostor.sign_checkpoint(8, &[7u8; 32])).as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    for garbage in [
        &b"old 08\n\nx"[..],
        b"\xff\xfe",
        b"",
        b"old 1\nnot base64\n\n",
    ] {
        let (status, _, body) = post(&addr, "/add-checkpoint", garbage).await;
        assert_eq!(status, 400, "{garbage:?}: {body}");
        assert!(
            body.contains("malformed") || body.contains("checkpoint"),
            "{body}"
        );
    }
    let (status, _, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(9, &[], &checkpoint(8)).as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = post(&addr, "/add-checkpoint", &vec![b'a'; 1 << 20]).await;
    assert_eq!(status, 413, "a body past the limit is refused");

    // After all the refusals the state is what was cosigned: 8 → 12 works.
    let proof = consistency_proof(&LeafHashes(&tree), 8, 12).unwrap();
    let (status, _, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(8, &proof, &checkpoint(12)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    witness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_history_is_refused_and_the_node_reports_it() {
    let node_dir = tempfile::tempdir().unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let log_vkey = keygen(node_dir.path());
    let (mut witness, url, witness_vkey) =
        spawn_witness(witness_dir.path(), "127.0.0.1:0", &log_vkey);
    // Someone holding the log's key shows the witness another history first.
    let forger = log_signer(node_dir.path());
    let other_history = forger.sign_checkpoint(1, &[0xEE; 32]);
    let (status, _, body) = post(
        &host_port(&url),
        "/add-checkpoint",
        AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: other_history,
        }
        .encode()
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The real node asks the same witness: 409 (it saw size 1), resent from
    // size 1 with a proof the witness cannot accept (422) or a root that
    // differs (409 again): a possible fork, reported in the metrics.
    let node = start_node(node_dir.path(), vec![target(&url, &witness_vkey)]).await;
    let alarm = format!("proofgate_witness_fork_alarms_total{{witness=\"{WITNESS_NAME}\"}}");
    let deadline = tokio::time::Instant::now() + BOUND;
    let text = loop {
        let text = metrics_of(&node).await;
        if metric(&text, &alarm).unwrap_or(0) >= 1 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fork alarm: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refusals = |status: &str| {
        metric(
            &text,
            &format!(
                "proofgate_witness_refusals_total{{witness=\"{WITNESS_NAME}\",status=\"{status}\"}}"
            ),
        )
        .unwrap_or(0)
    };
    assert!(refusals("409") >= 1, "{text}");
    assert!(refusals("409") + refusals("422") >= 2, "{text}");
    // Nothing was cosigned, so no checkpoint carries a cosignature.
    let mut auditor = AuditServiceClient::new(connect_as(&node, AUDITOR).await);
    let err = auditor
        .get_checkpoint(GetCheckpointRequest {
            min_cosignatures: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("retry later"), "{}", err.message());
    // The node keeps serving.
    submit_some(&node, 1).await;
    node.shutdown().await;
    witness.kill().unwrap();
    let _ = witness.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_witness_is_down_the_node_serves_and_cosignatures_catch_up() {
    let node_dir = tempfile::tempdir().unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let log_vkey = keygen(node_dir.path());
    let (mut witness, url, witness_vkey) =
        spawn_witness(witness_dir.path(), "127.0.0.1:0", &log_vkey);
    let node = start_node(node_dir.path(), vec![target(&url, &witness_vkey)]).await;
    submit_some(&node, 1).await;
    let first = wait_cosigned(&node).await;

    witness.kill().expect("SIGKILL");
    let _ = witness.wait();
    submit_some(&node, 2).await;
    let newest = durable_size(&node);
    assert!(newest > first);
    // The lag shows in the metrics, and unreachable attempts are counted.
    let lag = format!("proofgate_witness_lag_entries{{witness=\"{WITNESS_NAME}\"}}");
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let text = metrics_of(&node).await;
        if metric(&text, &lag) == Some(newest - first) {
            assert!(text.contains(&format!(
                "proofgate_witness_refusals_total{{witness=\"{WITNESS_NAME}\",status=\"unreachable\"}}"
            )), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meanwhile auditors asking for a cosigned checkpoint get the last one
    // the witness cosigned, with its cosignature; the newest has none yet.
    let mut auditor = AuditServiceClient::new(connect_as(&node, AUDITOR).await);
    let witnessed = auditor
        .get_checkpoint(GetCheckpointRequest {
            min_cosignatures: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((witnessed.tree_size, witnessed.cosignatures), (first, 1));
    independently_verified(&witnessed.note, &log_vkey, &witness_vkey);
    let newest_now = auditor
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((newest_now.tree_size, newest_now.cosignatures), (newest, 0));

    // The witness comes back on the same address with its state: catch up.
    let (mut witness, again, _) = spawn_witness(witness_dir.path(), &host_port(&url), &log_vkey);
    assert_eq!(again, url);
    let cosigned = wait_cosigned(&node).await;
    assert_eq!(cosigned, newest);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let text = metrics_of(&node).await;
        if metric(&text, &lag) == Some(0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    witness.kill().unwrap();
    let _ = witness.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_killed_with_sigkill_still_refuses_what_it_did_not_cosign() {
    let log_dir = tempfile::tempdir().unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let log_vkey = keygen(log_dir.path());
    let log = log_signer(log_dir.path());
    let tree = leaves(16);
    let checkpoint = |size: u64| log.sign_checkpoint(size, &root_of(&tree[..size as usize]));
    let (mut witness, url, _) = spawn_witness(witness_dir.path(), "127.0.0.1:0", &log_vkey);
    let addr = host_port(&url);
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(0, &[], &checkpoint(3)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let proof = consistency_proof(&LeafHashes(&tree), 3, 6).unwrap();
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(3, &proof, &checkpoint(6)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    // Between requests: SIGKILL, no shutdown of any kind.
    witness.kill().expect("SIGKILL");
    let _ = witness.wait();

    // On any free port: only its folder carries over.
    let (mut witness, url, _) = spawn_witness(witness_dir.path(), "127.0.0.1:0", &log_vkey);
    let addr = host_port(&url);
    // What it cosigned before the kill still binds it.
    let (status, content_type, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(6, &[], &log.sign_checkpoint(6, &[1u8; 32])).as_bytes(),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "6\n")
    );
    let (status, _, body) = post(
        &addr,
        "/add-checkpoint",
        spec_body(0, &[], &checkpoint(9)).as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (409, "6\n"));
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(6, &[[9u8; 32]], &checkpoint(9)).as_bytes(),
    )
    .await;
    assert_eq!(status, 422);
    let proof = consistency_proof(&LeafHashes(&tree), 6, 9).unwrap();
    let (status, _, _) = post(
        &addr,
        "/add-checkpoint",
        spec_body(6, &proof, &checkpoint(9)).as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "a consistent checkpoint is still cosigned");
    witness.kill().unwrap();
    let _ = witness.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_over_tls_cosigns_and_plain_http_is_loopback_only() {
    let node_dir = tempfile::tempdir().unwrap();
    let witness_dir = tempfile::tempdir().unwrap();
    let log_vkey = keygen(node_dir.path());
    let certs = node_dir.path().join("certs");
    proofgate::security::ensure_dev_certs(&certs, &proofgate::departments::mock::dev_identities())
        .unwrap();
    let witness_options = |listen: &str, tls| server::witness::WitnessOptions {
        listen: listen.parse().unwrap(),
        data_dir: witness_dir.path().to_path_buf(),
        name: WITNESS_NAME.into(),
        logs: vec![log_vkey.clone()],
        tls,
        clock: proofgate::clock::system(),
    };
    let refused = server::witness::start(witness_options("0.0.0.0:0", None))
        .await
        .err()
        .expect("plain HTTP off loopback is refused");
    assert!(refused.to_string().contains("--tls-cert"), "{refused}");
    assert_eq!(refused.exit_code(), server::exit::CONFIG);
    // The development certificate names localhost and 127.0.0.1, from the node's CA.
    let witness = server::witness::start(witness_options(
        "127.0.0.1:0",
        Some((
            certs.join("gateway.proofgate.pem"),
            certs.join("gateway.proofgate.key"),
        )),
    ))
    .await
    .expect("witness over TLS starts");
    assert!(
        witness.url.starts_with("https://127.0.0.1:"),
        "{}",
        witness.url
    );
    let node = start_node(node_dir.path(), vec![target(&witness.url, &witness.vkey)]).await;
    submit_some(&node, 1).await;
    let size = wait_cosigned(&node).await;
    let mut auditor = AuditServiceClient::new(connect_as(&node, AUDITOR).await);
    let checkpoint = auditor
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((checkpoint.tree_size, checkpoint.cosignatures), (size, 1));
    independently_verified(&checkpoint.note, &log_vkey, &witness.vkey);
    node.shutdown().await;
    witness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_carries_the_cosignatures_and_a_restore_can_require_them() {
    let pki = tempfile::tempdir().unwrap();
    proofgate::security::ensure_dev_certs(
        pki.path(),
        &proofgate::departments::mock::dev_identities(),
    )
    .unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let a_data = dirs.path().join("a");
    let a_vkey = proofgate::security::write_log_vkey(&a_data, "node-1").unwrap();
    let witness = server::witness::start(server::witness::WitnessOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dirs.path().join("witness"),
        name: WITNESS_NAME.into(),
        logs: vec![a_vkey.clone()],
        tls: None,
        clock: proofgate::clock::system(),
    })
    .await
    .unwrap();
    let a = Served::new(
        server::start(ServeOptions {
            certs: Some(pki.path().to_path_buf()),
            node_id: "node-1".into(),
            witnesses: vec![target(&witness.url, &witness.vkey)],
            ..options(&a_data)
        })
        .await
        .expect("node A starts"),
    );
    let b = Served::new(
        server::start(ServeOptions {
            certs: Some(pki.path().to_path_buf()),
            node_id: "node-2".into(),
            mock_departments: false,
            mirrors: vec![server::MirrorTarget {
                url: a.endpoint(),
                vkey: Some(a_vkey.clone()),
            }],
            ..options(&dirs.path().join("b"))
        })
        .await
        .expect("node B starts"),
    );
    submit_some(&a, 2).await;
    let size = wait_cosigned(&a).await;
    // B's copy of A's newest checkpoint comes to carry the cosignature.
    let mut auditor = AuditServiceClient::new(connect_as(&b, AUDITOR).await);
    let deadline = tokio::time::Instant::now() + BOUND;
    let mirrored = loop {
        if let Ok(c) = auditor
            .get_checkpoint(GetCheckpointRequest {
                origin: "proofgate/node-1".into(),
                ..Default::default()
            })
            .await
        {
            let c = c.into_inner();
            if c.tree_size == size && c.note.contains(&format!("\u{2014} {WITNESS_NAME} ")) {
                break c;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirror did not get the cosigned checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(mirrored.from_mirror);
    let signed = signed_note::Note::from_bytes(mirrored.note.as_bytes()).unwrap();
    let (verified, _) = signed
        .verify(&signed_note::VerifierList::new(vec![
            Box::new(signed_note::StandardVerifier::new(&a_vkey).unwrap()),
            Box::new(Cosigner::from_vkey(&witness.vkey)),
        ]))
        .unwrap();
    assert_eq!(verified.len(), 2);
    // Min cosignatures on a mirrored log: this node has no witnesses for it.
    let err = auditor
        .get_checkpoint(GetCheckpointRequest {
            origin: "proofgate/node-1".into(),
            min_cosignatures: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // A is lost; restored from B, requiring the witness.
    a.shutdown().await;
    let args = proofgate::cli::RestoreArgs {
        from: b.endpoint(),
        origin: "proofgate/node-1".into(),
        data_dir: dirs.path().join("restored"),
        certs: pki.path().to_path_buf(),
        vkey: Some(a_vkey.clone()),
        witnesses: vec![witness.vkey.clone()],
        quorum: Some(1),
    };
    let report = proofgate::cli::audit::restore(&args)
        .await
        .expect("restored with the witness's cosignature");
    assert!(!report.found_problem, "{}", report.text);
    let verified = proofgate::cli::audit::verify(
        &proofgate::cli::LogSource {
            data_dir: Some(args.data_dir.clone()),
            file: None,
        },
        Some(a_vkey.clone()),
        Some(proofgate::cli::audit::Quorum {
            witnesses: vec![witness.vkey.clone()],
            quorum: 1,
        }),
        false,
    )
    .unwrap();
    assert!(!verified.found_problem, "{}", verified.text);
    // Requiring a witness that did not cosign: refused, nothing left behind.
    let stranger = {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        NoteSigner::cosigner(
            "witness.example/other",
            ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        )
        .unwrap()
        .verifier_key()
    };
    let refused_dir = dirs.path().join("refused");
    let err = proofgate::cli::audit::restore(&proofgate::cli::RestoreArgs {
        data_dir: refused_dir.clone(),
        witnesses: vec![stranger],
        ..args
    })
    .await
    .expect_err("the witness did not cosign");
    assert!(err.to_string().contains("required (--quorum)"), "{err}");
    assert_eq!(proofgate::cli::exit_code(&Err(err)), 65);
    assert_eq!(std::fs::read_dir(&refused_dir).map_or(0, |d| d.count()), 0);
    b.shutdown().await;
    witness.stop().await;
}
