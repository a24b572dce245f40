//! Certificate revocation and rotation without restart (issue 13, items 2
//! and 3): a real node on loopback with mutual TLS, sled in a temp folder,
//! the mock departments in-process; CRLs made and edited with the same code
//! as `proofgate dev-certs --revoke`. Reloads are triggered by a direct call
//! (what SIGHUP does) or by the file poller; time-dependent parts run on the
//! node's injected clock.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proofgate::clock::{Clock as _, ManualClock, SharedClock};
use proofgate::pb::application_service_client::ApplicationServiceClient;
use proofgate::pb::{ListMattersRequest, ProofOutcome, WatchApplicationRequest};
use proofgate::security::crl::{renew_crl, revoke, CA_CRL, CRL_VALIDITY};
use proofgate::security::tls::fingerprint;
use proofgate::security::{issue, Validity, GATEWAY_IDENTITY};
use proofgate::server::{self, ServeError, CRL_HEALTH_SERVICE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A bound, not a measurement: how long a test waits for the file poller.
const POLL_BOUND: Duration = Duration::from_secs(120);
const DEPARTMENT: &str = "public-security.department.proofgate";

fn certs_of(gw: &TestGateway) -> PathBuf {
    gw.running.certs_dir.clone().expect("TLS is on")
}

/// A gateway that checks the CRL `dev-certs` wrote into its certs folder.
async fn start_with_crl(configure: impl FnOnce(&mut server::ServeOptions)) -> TestGateway {
    TestGateway::start_with(|options| {
        options.crls = vec![options.data_dir.join("certs").join(CA_CRL)];
        configure(options);
    })
    .await
}

async fn list_matters(channel: &Channel) -> Result<(), tonic::Status> {
    ApplicationServiceClient::new(channel.clone())
        .list_matters(ListMattersRequest {})
        .await
        .map(|_| ())
}

/// A new connection as `identity` and one call on it; Err if the handshake
/// or the call is refused.
async fn fresh_call(gw: &TestGateway, identity: &str) -> Result<(), String> {
    let certs = certs_of(gw);
    let files = proofgate::security::TlsFiles::load(&certs, identity).unwrap();
    let channel =
        proofgate::security::connect(&gw.running.endpoint(), Some(&files), GATEWAY_IDENTITY)
            .await
            .map_err(|e| format!("connect: {e}"))?;
    list_matters(&channel).await.map_err(|s| format!("{s:?}"))
}

/// The sum of the metric lines that start with `prefix` and contain all of `with`.
fn metric(gw: &TestGateway, prefix: &str, with: &[&str]) -> u64 {
    let mut text = String::new();
    gw.running.metrics.render(&mut text);
    text.lines()
        .filter(|l| l.starts_with(prefix) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const HANDSHAKES_REFUSED: &str = "proofgate_tls_handshakes_refused_total";

/// Waits (bounded) until the listener counted a refused handshake after `before`.
async fn handshake_refused_since(gw: &TestGateway, before: u64) {
    let counted = tokio::time::timeout(POLL_BOUND, async {
        while metric(gw, HANDSHAKES_REFUSED, &[]) <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "no refused TLS handshake was counted");
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

#[tokio::test]
async fn a_revoked_hall_is_refused_after_the_reload_while_other_callers_and_open_connections_go_on()
{
    let gw = start_with_crl(|_| {}).await;
    let certs = certs_of(&gw);
    // Open connections: the hall that stays, and the one to be revoked.
    let staying = gw.channel.clone();
    let revoked_hall = gw.channel_as(OTHER_HALL).await;
    list_matters(&staying).await.unwrap();
    list_matters(&revoked_hall).await.unwrap();
    // A stream that must outlive the reload on the same connection.
    let app = gw
        .submit(request("coach-licence-renewal", PENDING_THEN_VERIFIED))
        .await;
    let mut watch = ApplicationServiceClient::new(staying.clone())
        .watch_application(WatchApplicationRequest {
            application_id: app.application_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("current state");
    assert_eq!(first.application_id, app.application_id);

    let revocation = revoke(&certs, OTHER_HALL, proofgate::clock::system_now_unix_ms()).unwrap();
    // (The file poller may have loaded it first: either way it serves now.)
    let reloaded = gw.running.reload_tls().await.unwrap().expect("TLS is on");
    assert_eq!(reloaded.crls[0].revoked, 1);
    assert_eq!(reloaded.crls[0].crl_number, revocation.crl_number);

    // The revoked hall: refused on its open connection and on a new one.
    let status = list_matters(&revoked_hall).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(
        !status.message().contains(&*certs.to_string_lossy()),
        "a file path sent to the caller: {status:?}"
    );
    let refused = metric(&gw, HANDSHAKES_REFUSED, &[]);
    let err = fresh_call(&gw, OTHER_HALL).await.unwrap_err();
    assert!(!err.contains("PermissionDenied"), "{err}");
    handshake_refused_since(&gw, refused).await;

    // Everyone else goes on: the same channel, the open stream, new connections.
    list_matters(&staying).await.unwrap();
    fresh_call(&gw, HALL).await.unwrap();
    // Another caller's open connection: through TLS to the role check.
    let status = list_matters(&gw.auditor).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "not a TLS refusal");
    let mut last = first;
    while last.status() == proofgate::pb::ApplicationStatus::Pending {
        last = tokio::time::timeout(COMPLETION_BOUND, watch.message())
            .await
            .expect("completion within the bound")
            .expect("the stream survived the reload")
            .expect("a final state");
    }
    assert_eq!(last.status(), proofgate::pb::ApplicationStatus::Complete);
}

#[tokio::test]
async fn a_revoked_department_is_never_asked_and_cannot_register() {
    let gw = start_with_crl(|_| {}).await;
    let certs = certs_of(&gw);
    // The node has a connection to the department, with its certificate.
    let before = gw
        .submit(request("coach-licence-renewal", PASSES_ALL))
        .await;
    assert_eq!(
        outcome(&before, "safe-driving-record"),
        ProofOutcome::Verified
    );

    revoke(&certs, DEPARTMENT, proofgate::clock::system_now_unix_ms()).unwrap();
    gw.running.reload_tls().await.unwrap();

    let mock = gw.running.mock("public-security").expect("mock runs");
    let untrusted = |gw: &TestGateway| {
        metric(
            gw,
            "proofgate_department_calls",
            &["public-security", "untrusted"],
        )
    };
    let untrusted_before = untrusted(&gw);
    let asked = mock
        .controls
        .calls
        .load(std::sync::atomic::Ordering::SeqCst);
    let after = gw
        .submit(request("coach-licence-renewal", PASSES_ALL))
        .await;
    let result = proof(&after, "safe-driving-record");
    assert_ne!(result.outcome(), ProofOutcome::Verified, "{result:?}");
    assert_eq!(
        mock.controls
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        asked,
        "the revoked department was not asked over its open connection"
    );
    assert!(
        untrusted(&gw) > untrusted_before,
        "refused as untrusted, not for another reason"
    );
    // What is kept (the audit log) names no file.
    assert!(
        !format!("{after:?}").contains(&*certs.to_string_lossy()),
        "{after:?}"
    );
    // Nor over a new one: the node's handshake refuses its server certificate.
    gw.running.directory.upsert(mock.data_source()).unwrap();
    let again = gw
        .submit(request("coach-licence-renewal", PASSES_ALL))
        .await;
    assert_ne!(
        outcome(&again, "safe-driving-record"),
        ProofOutcome::Verified
    );
    assert_eq!(
        mock.controls
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        asked
    );
    // And it cannot register: its client certificate is refused at the listener.
    let handshakes = metric(&gw, HANDSHAKES_REFUSED, &[]);
    let refused = mock.register(&gw.running.endpoint()).await;
    assert!(refused.is_err(), "a revoked department registered");
    handshake_refused_since(&gw, handshakes).await;
}

/// The certificate a new TLS connection to the node is served, checked
/// against the CA as the hall would.
async fn served_certificate(gw: &TestGateway) -> CertificateDer<'static> {
    let certs = certs_of(gw);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.join(format!("{HALL}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{HALL}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(GATEWAY_IDENTITY).unwrap(), tcp)
        .await
        .expect("handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn certificate_on_disk(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join(format!("{GATEWAY_IDENTITY}.pem"))).unwrap()
}

#[tokio::test]
async fn a_replaced_node_certificate_is_served_to_new_connections_without_a_restart() {
    let gw = TestGateway::start().await;
    let certs = certs_of(&gw);
    let original = certificate_on_disk(&certs);
    assert_eq!(served_certificate(&gw).await, original);
    list_matters(&gw.channel).await.unwrap();

    // Rotation by the explicit reload (what SIGHUP does).
    issue(&certs, GATEWAY_IDENTITY, Validity::Normal).unwrap();
    let rotated = certificate_on_disk(&certs);
    assert_ne!(rotated, original);
    let reloaded = gw.running.reload_tls().await.unwrap().unwrap();
    assert_eq!(reloaded.certificate_sha256, fingerprint(&rotated));
    assert_eq!(served_certificate(&gw).await, rotated);
    list_matters(&gw.channel).await.unwrap();
    fresh_call(&gw, HALL).await.unwrap();

    // Rotation by the file poller alone.
    issue(&certs, GATEWAY_IDENTITY, Validity::Normal).unwrap();
    let again = certificate_on_disk(&certs);
    let waited = tokio::time::timeout(POLL_BOUND, async {
        loop {
            if served_certificate(&gw).await == again {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the poller never served the new certificate"
    );
    list_matters(&gw.channel).await.unwrap();

    // A broken certificate file is refused; the rotated one keeps serving.
    let failed_before = metric(&gw, "proofgate_tls_reloads_total{result=\"failed\"}", &[]);
    std::fs::write(certs.join(format!("{GATEWAY_IDENTITY}.pem")), "garbage").unwrap();
    assert!(gw.running.reload_tls().await.is_err());
    assert_eq!(served_certificate(&gw).await, again);
    // Counted once, however often the poller sees the same broken file.
    let failed = metric(&gw, "proofgate_tls_reloads_total{result=\"failed\"}", &[]);
    assert_eq!(failed, failed_before + 1, "the refused reload is counted");
}

#[tokio::test]
async fn an_expired_crl_shows_in_health_and_metrics_and_refuses_every_certificate() {
    let clock = ManualClock::new(proofgate::clock::system_now_unix_ms());
    let shared: SharedClock = clock.clone();
    let gw = start_with_crl(|options| {
        options.clock = shared;
        options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let certs = certs_of(&gw);
    let probe = connect_without_certificate(&gw.running).await;
    assert_eq!(
        health(&probe, CRL_HEALTH_SERVICE).await,
        ServingStatus::Serving
    );
    list_matters(&gw.channel).await.unwrap();

    clock.advance(CRL_VALIDITY.as_millis() as i64 + 1);
    gw.running.reload_tls().await.unwrap();

    assert_eq!(
        health(&probe, CRL_HEALTH_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&probe, "").await, ServingStatus::NotServing);
    let scraped = scrape_metrics(gw.running.metrics_addr.unwrap()).await;
    assert!(scraped.contains("proofgate_crl_expired 1"), "{scraped}");
    // Not silently accepted: open connections and new ones are refused.
    let status = list_matters(&gw.channel).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");
    assert!(
        !status.message().contains(&*certs.to_string_lossy()),
        "a file path sent to the caller: {status:?}"
    );
    let refused = metric(&gw, HANDSHAKES_REFUSED, &[]);
    let err = fresh_call(&gw, HALL).await.unwrap_err();
    assert!(!err.contains("PermissionDenied"), "{err}");
    handshake_refused_since(&gw, refused).await;

    // A fresh list (signed at the node's "now") brings everything back.
    renew_crl(&certs, clock.now_unix_ms()).unwrap();
    gw.running.reload_tls().await.unwrap();
    assert_eq!(
        health(&probe, CRL_HEALTH_SERVICE).await,
        ServingStatus::Serving
    );
    list_matters(&gw.channel).await.unwrap();
    fresh_call(&gw, HALL).await.unwrap();
    let scraped = scrape_metrics(gw.running.metrics_addr.unwrap()).await;
    assert!(scraped.contains("proofgate_crl_expired 0"), "{scraped}");
}

#[tokio::test]
async fn a_node_does_not_start_on_an_expired_crl() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut options = options(data_dir.path());
    options.mock_departments = false;
    options.crls = vec![data_dir.path().join("certs").join(CA_CRL)];
    // A day past the list's nextUpdate, whenever within this test it is made.
    options.clock = ManualClock::new(
        proofgate::clock::system_now_unix_ms() + CRL_VALIDITY.as_millis() as i64 + 86_400_000,
    );
    let err = match server::start(options).await {
        Ok(_) => panic!("started on an expired CRL"),
        Err(e) => e,
    };
    assert!(matches!(err, ServeError::NodeTls(_)), "{err}");
    assert_eq!(err.exit_code(), server::exit::DATA);
    assert!(err.to_string().contains("ca.crl"), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");

    let mut plaintext = common::options(data_dir.path());
    plaintext.tls = false;
    plaintext.crls = vec![PathBuf::from("ca.crl")];
    let err = match server::start(plaintext).await {
        Ok(_) => panic!("CRLs without TLS"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), server::exit::CONFIG, "{err}");
}

#[tokio::test]
async fn a_lost_crl_or_an_older_one_after_a_restart_stops_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let crl = data_dir.path().join("certs").join(CA_CRL);
    let start = || {
        let mut options = options(data_dir.path());
        options.mock_departments = false;
        options.crls = vec![crl.clone()];
        server::start(options)
    };
    let running = start().await.expect("starts on the list dev-certs made");
    let certs = running.certs_dir.clone().expect("TLS is on");
    let now = proofgate::clock::system_now_unix_ms();
    revoke(&certs, OTHER_HALL, now).unwrap();
    let older = std::fs::read(&crl).unwrap();
    revoke(&certs, HALL, now).unwrap();
    let reloaded = running.reload_tls().await.unwrap().expect("TLS is on");
    assert_eq!(reloaded.crls[0].crl_number, 3);
    running.shutdown().await;

    // An older list put back while the node was down: refused at start.
    std::fs::write(&crl, &older).unwrap();
    let err = match start().await {
        Ok(_) => panic!("started on an older CRL (number 2 after 3)"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), server::exit::DATA, "{err}");
    assert!(err.to_string().contains("lower than 3"), "{err}");

    // A lost list: refused, never recreated empty.
    std::fs::remove_file(&crl).unwrap();
    let err = match start().await {
        Ok(_) => panic!("started without its CRL"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), server::exit::DATA, "{err}");
    assert!(err.to_string().contains(&*crl.to_string_lossy()), "{err}");
    assert!(!crl.exists(), "a lost CRL was recreated");

    // Nor do --renew-crl and --revoke start an empty one.
    renew_crl(&certs, now).unwrap_err();
    revoke(&certs, HALL, now).unwrap_err();
    assert!(!crl.exists());
}

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proofgate(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_commands_revoke_and_a_served_node_reloads_on_sighup() {
    use std::ffi::OsStr;
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let certs = data.path().join("certs");
    let made = proofgate(&[
        OsStr::new("dev-certs"),
        OsStr::new("--dir"),
        certs.as_os_str(),
    ]);
    assert!(made.status.success(), "{made:?}");
    assert!(String::from_utf8_lossy(&made.stdout).contains("revocation list"));
    let crl = certs.join(CA_CRL);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--no-mock-departments")
        .arg("--policies")
        .arg(policies_dir())
        .arg("--crl")
        .arg(&crl)
        // No file poller: only SIGHUP can load the new list.
        .args(["--tls-poll-seconds", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = Child(child);
    let first = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .expect("the node prints its address")
        .unwrap();
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no endpoint in {first}"))
        .to_owned();
    let call = |identity: &'static str| {
        let endpoint = endpoint.clone();
        let certs = certs.clone();
        async move {
            let files = proofgate::security::TlsFiles::load(&certs, identity).unwrap();
            let channel = proofgate::security::connect(&endpoint, Some(&files), GATEWAY_IDENTITY)
                .await
                .map_err(|e| e.to_string())?;
            list_matters(&channel).await.map_err(|s| s.to_string())
        }
    };
    call(OTHER_HALL).await.unwrap();

    let revoked = proofgate(&[
        OsStr::new("dev-certs"),
        OsStr::new("--dir"),
        certs.as_os_str(),
        OsStr::new("--revoke"),
        OsStr::new(OTHER_HALL),
    ]);
    assert!(revoked.status.success(), "{revoked:?}");
    let said = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        said.contains("CRL number 2") && said.contains("1 revoked"),
        "{said}"
    );
    // Still admitted: with the poller off nothing reloads the list but SIGHUP.
    call(OTHER_HALL).await.unwrap();
    // The shell's builtin kill: no procps needed (and no unsafe libc call).
    let hup = std::process::Command::new("sh")
        .args(["-c", &format!("kill -HUP {}", child.0.id())])
        .status()
        .unwrap();
    assert!(hup.success());
    let refused = tokio::time::timeout(POLL_BOUND, async {
        while call(OTHER_HALL).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the revoked hall is still admitted");
    call(HALL).await.unwrap();
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the node"
    );
}
