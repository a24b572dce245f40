//! Signed policy sets (issue 13, item 1): with a policy key configured, only a
//! set signed by that key loads — at start (`proofgate serve`, exit 65 and a
//! message naming the file and the reason) and at every reload (the old
//! version keeps serving and a metric counts the refusal). Real keys, real
//! signatures, the real binary for the command line, temp folders.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::audit_entry::Event;
use proofgate::pb::{AuditEntry, ListMattersRequest};
use proofgate::security::policy_signing::{keygen, sign_dir, KEY_FILE, SIGNATURE_FILE, VKEY_FILE};
use prost::Message;

fn proofgate(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proofgate"));
    command.current_dir(cwd).env("RUST_LOG", "info");
    command
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of the shipped policy folder.
fn policy_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Changes one byte of the rules: the last letter of the first matter's
/// name (an ASCII letter; the names begin in Chinese).
fn change_one_byte(dir: &Path) {
    let path = dir.join("matters.toml");
    let mut bytes = std::fs::read(&path).unwrap();
    let start = bytes
        .windows(8)
        .position(|w| w == b"name = \"")
        .expect("a name to change")
        + 8;
    let at = start
        + bytes[start..]
            .iter()
            .position(|&b| b == b'"')
            .expect("the name ends")
        - 1;
    assert!(bytes[at].is_ascii_alphabetic());
    bytes[at] = if bytes[at] == b'X' { b'Y' } else { b'X' };
    std::fs::write(&path, bytes).unwrap();
}

/// `proofgate policy keygen --out DIR --name NAME` through the binary.
fn keygen_cli(out: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = proofgate(out)
        .args(["policy", "keygen", "--out"])
        .arg(out)
        .args(["--name", name])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    (out.join(KEY_FILE), out.join(VKEY_FILE))
}

/// `proofgate policy sign DIR --key KEY` through the binary.
fn sign_cli(dir: &Path, key: &Path) -> String {
    let signed = proofgate(dir)
        .args(["policy", "sign"])
        .arg(dir)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    String::from_utf8_lossy(&signed.stdout).into_owned()
}

/// Runs `serve` with `args`; a node that refuses its policy exits before it
/// prints its address. Returns the exit code and stderr, or panics if the
/// node started serving.
fn serve_refused(cwd: &Path, data: &Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = proofgate(cwd)
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--no-mock-departments")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    // A serving node prints its address; a refusing one closes stdout by
    // exiting. Either way this returns without waiting on a clock.
    let first = BufReader::new(stdout).lines().next();
    assert!(
        first.is_none(),
        "the node served instead of refusing: {first:?}"
    );
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    let mut server = server;
    let status = server.0.wait().unwrap();
    (status.code(), text)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn start_refuses_unsigned_changed_and_unknown_key_sets_with_exit_65_naming_the_file() {
    let keys = tempfile::tempdir().unwrap();
    let (key, vkey) = keygen_cli(keys.path(), "city-legal-office");
    let policies = policy_copy();
    let out = sign_cli(policies.path(), &key);
    assert!(out.contains("city-legal-office+"), "{out}");
    let data = tempfile::tempdir().unwrap();
    let sig = policies.path().join(SIGNATURE_FILE);
    let args = |policies: &Path| {
        vec![
            os("--policies").to_owned(),
            policies.as_os_str().to_owned(),
            os("--policy-key").to_owned(),
            vkey.as_os_str().to_owned(),
        ]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        serve_refused(keys.path(), data.path(), &refs)
    };

    // One byte changed after signing.
    change_one_byte(policies.path());
    let (code, stderr) = run(args(policies.path()));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(&sig.display().to_string()) && stderr.contains("changed after signing"),
        "{stderr}"
    );

    // Unsigned.
    std::fs::remove_file(&sig).unwrap();
    let (code, stderr) = run(args(policies.path()));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(&sig.display().to_string()) && stderr.contains("no signature file"),
        "{stderr}"
    );

    // Signed, but by a key this node does not trust.
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = keygen_cli(other.path(), "city-legal-office");
    sign_cli(policies.path(), &stranger);
    let (code, stderr) = run(args(policies.path()));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(&sig.display().to_string())
            && stderr.contains("not a configured policy key"),
        "{stderr}"
    );

    // The compiled-in sample catalog is unsigned too (no --policies, no ./policies).
    let (code, stderr) = run(vec![
        os("--policy-key").to_owned(),
        vkey.as_os_str().to_owned(),
    ]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("built-in sample catalog"), "{stderr}");

    // A policy key that cannot be read is a configuration error, not "no keys".
    let (code, stderr) = run(vec![
        os("--policies").to_owned(),
        policies.path().as_os_str().to_owned(),
        os("--policy-key").to_owned(),
        keys.path().join("missing.vkey").into_os_string(),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("missing.vkey"), "{stderr}");
}

#[test]
fn a_configuration_naming_a_policy_key_but_no_signature_file_loads_nothing_unsigned() {
    let keys = tempfile::tempdir().unwrap();
    let (_, vkey) = keygen_cli(keys.path(), "city-legal-office");
    let policies = policy_copy();
    let data = tempfile::tempdir().unwrap();
    let config = keys.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "policies = {:?}\npolicy_keys = [{:?}]\n",
            policies.path().display().to_string(),
            vkey.display().to_string()
        ),
    )
    .unwrap();
    let (code, stderr) = serve_refused(
        keys.path(),
        data.path(),
        &[os("--config"), config.as_os_str()],
    );
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains(SIGNATURE_FILE), "{stderr}");
    // Nor can the environment switch the check off with an empty list.
    let mut command = proofgate(keys.path());
    let out = command
        .env("PROOFGATE_POLICY_KEYS", "")
        .args(["serve", "--metrics-listen", "off", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // Nor can the file, with an empty list.
    std::fs::write(&config, "policy_keys = []\n").unwrap();
    let out = proofgate(keys.path())
        .args(["serve", "--metrics-listen", "off", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[tokio::test]
async fn a_signed_set_serves_and_unsigned_nodes_warn_once() {
    let keys = tempfile::tempdir().unwrap();
    let (key, vkey) = keygen_cli(keys.path(), "city-legal-office");
    let policies = policy_copy();
    sign_cli(policies.path(), &key);
    let version = proofgate::policy::load_dir(policies.path())
        .unwrap()
        .version;

    for signed in [true, false] {
        let data = tempfile::tempdir().unwrap();
        let mut command = proofgate(keys.path());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--policies")
            .arg(policies.path());
        if signed {
            command.arg("--policy-key").arg(&vkey);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let server = Server(child);
        let endpoint = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("proofgate serving on ")
                    .and_then(|r| r.split_whitespace().next().map(str::to_owned))
            })
            .expect("the node serves");
        let channel = connect_with(&endpoint, &data.path().join("certs"), HALL).await;
        let matters = ApplicationServiceClient::new(channel)
            .list_matters(ListMattersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(matters.policy_version, version);
        drop(server);
        // The node is gone: its stderr ends.
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let warnings = lines
            .iter()
            .filter(|l| l.contains("no policy key configured"))
            .count();
        if signed {
            assert_eq!(warnings, 0, "{lines:#?}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("signature verified") && l.contains("city-legal-office+")),
                "{lines:#?}"
            );
        } else {
            assert_eq!(warnings, 1, "one warning at start: {lines:#?}");
        }
    }
}

async fn metric(addr: std::net::SocketAddr, reason: &str) -> u64 {
    let response = scrape_metrics(addr).await;
    let prefix = format!("proofgate_policy_reload_refused_total{{reason=\"{reason}\"}} ");
    response
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {response}"))
}

#[tokio::test]
async fn reloads_of_changed_unsigned_or_foreign_sets_are_refused_and_counted() {
    let keys = tempfile::tempdir().unwrap();
    let trusted = keygen(keys.path(), "city-legal-office").unwrap();
    let others = tempfile::tempdir().unwrap();
    let stranger = keygen(others.path(), "city-legal-office").unwrap();
    let policies = policy_copy();
    let signed = sign_dir(policies.path(), &trusted.key_file, None).unwrap();

    let data = tempfile::tempdir().unwrap();
    let mut options = options(data.path());
    options.policies = Some(policies.path().to_path_buf());
    options.policy_keys = vec![trusted.vkey_file.clone()];
    options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = Served::new(proofgate::server::start(options).await.unwrap());
    let metrics = running.metrics_addr.unwrap();
    let mut apps = ApplicationServiceClient::new(connect(&running).await);
    let serving = |apps: &mut ApplicationServiceClient<_>| {
        let mut apps = apps.clone();
        async move {
            apps.list_matters(ListMattersRequest {})
                .await
                .unwrap()
                .into_inner()
                .policy_version
        }
    };
    assert_eq!(serving(&mut apps).await, signed.version);

    // One byte changed after signing.
    change_one_byte(policies.path());
    let err = running.reload_policies().await.unwrap_err().to_string();
    assert!(
        err.contains(SIGNATURE_FILE) && err.contains("changed after signing"),
        "{err}"
    );
    assert_eq!(serving(&mut apps).await, signed.version, "old set serves");
    assert_eq!(metric(metrics, "changed").await, 1);

    // Unsigned.
    std::fs::remove_file(policies.path().join(SIGNATURE_FILE)).unwrap();
    let err = running.reload_policies().await.unwrap_err().to_string();
    assert!(err.contains("no signature file"), "{err}");
    assert_eq!(serving(&mut apps).await, signed.version, "old set serves");
    assert_eq!(metric(metrics, "unsigned").await, 1);

    // Signed by a key this node does not trust.
    sign_dir(policies.path(), &stranger.key_file, None).unwrap();
    let err = running.reload_policies().await.unwrap_err().to_string();
    assert!(err.contains("not a configured policy key"), "{err}");
    assert_eq!(serving(&mut apps).await, signed.version, "old set serves");
    assert_eq!(metric(metrics, "unknown_key").await, 1);
    assert_eq!(metric(metrics, "changed").await, 1);

    // Signed by the trusted key: taken, and the log records who approved it.
    let resigned = sign_dir(policies.path(), &trusted.key_file, None).unwrap();
    assert_ne!(resigned.version, signed.version);
    let now = running.reload_policies().await.unwrap();
    assert_eq!(now, resigned.version);
    assert_eq!(serving(&mut apps).await, resigned.version);
    let last = {
        let store = running.gateway.audit().store();
        let bytes = store
            .entry(store.tree_size().unwrap() - 1)
            .unwrap()
            .unwrap();
        AuditEntry::decode(&bytes[..]).unwrap()
    };
    match last.event {
        Some(Event::PolicySetLoaded(p)) => {
            assert_eq!(p.policy_version, resigned.version);
            assert_eq!(p.signer, resigned.signer);
            assert_eq!(p.signature.len(), 64);
        }
        other => panic!("last entry is not the policy set: {other:?}"),
    }
    running.shutdown().await;

    // Replay shows who approved each version.
    let records = proofgate::audit::data_dir_records(data.path()).unwrap();
    let report = proofgate::audit::replay_records(records, |_| {}).unwrap();
    let approvals: Vec<(String, String)> = report
        .policy_approvals
        .iter()
        .map(|p| (p.version.clone(), p.signer.clone()))
        .collect();
    assert_eq!(
        approvals,
        [
            (signed.version.clone(), signed.signer.clone()),
            (resigned.version.clone(), resigned.signer.clone())
        ]
    );
    let table = proofgate::audit::report::replay_table(&report, 0.0);
    assert!(
        table.contains(&format!("approved by {}", signed.signer)),
        "{table}"
    );
}
