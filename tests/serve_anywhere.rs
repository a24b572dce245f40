//! `proofgate serve` started from an empty folder (no ./policies, no
//! --policies) serves the sample catalog compiled into the binary, with
//! metrics; flags that cannot work fail with a clear message and exit code.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::ListMattersRequest;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proofgate(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proofgate"));
    command.current_dir(cwd).env("RUST_LOG", "info");
    command
}

/// Starts `serve` in `cwd`; returns the server, its gRPC endpoint, its
/// metrics address and its stderr lines.
fn serve(cwd: &Path, data_dir: &Path) -> (Server, String, String, mpsc::Receiver<String>) {
    let mut child = proofgate(cwd)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log_tx.send(line).is_err() {
                return;
            }
        }
    });
    let server = Server(child);
    let mut endpoint = None;
    let mut metrics = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("stdout readable");
        if let Some(rest) = line.strip_prefix("proofgate serving on ") {
            endpoint = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            metrics = rest.strip_suffix("/metrics").map(str::to_owned);
        }
        if endpoint.is_some() && metrics.is_some() {
            break;
        }
    }
    (
        server,
        endpoint.expect("server prints its address"),
        metrics.expect("server prints its metrics address"),
        log_rx,
    )
}

#[tokio::test]
async fn serve_from_an_empty_folder_uses_the_compiled_in_catalog_with_metrics() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (_server, endpoint, metrics, logs) = serve(cwd.path(), data.path());

    let channel = connect_with(&endpoint, &data.path().join("certs"), HALL).await;
    let matters = ApplicationServiceClient::new(channel)
        .list_matters(ListMattersRequest {})
        .await
        .expect("ListMatters answers")
        .into_inner();
    let from_folder = proofgate::policy::load_dir(&policies_dir()).unwrap();
    assert_eq!(matters.policy_version, from_folder.version);
    assert_eq!(matters.matters.len(), from_folder.matters.len());
    // The line was logged before the server printed its address; the reader
    // thread may still be on its way to it.
    let said_so = std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(60)).ok())
        .any(|line| line.contains("compiled into the binary"));
    assert!(said_so, "the server says it serves the compiled-in catalog");

    let response = scrape_metrics(&metrics).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("proofgate_requests_total"), "{response}");
    assert!(response.contains("proofgate_audit_entries"), "{response}");
}

#[test]
fn a_missing_policies_folder_is_a_config_error() {
    let cwd = tempfile::tempdir().unwrap();
    let out = proofgate(cwd.path())
        .args(["serve", "--data-dir", "d", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off", "--policies", "no-such-folder"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--policies no-such-folder"), "{stderr}");
}

#[test]
fn a_busy_metrics_port_names_the_flag() {
    let cwd = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut child = proofgate(cwd.path())
        .args(["serve", "--data-dir", "d", "--listen", "127.0.0.1:0"])
        .args(["--no-mock-departments", "--metrics-listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
    drop(busy);
}
