//! The console in a real browser: a node with TLS and the mock departments,
//! applications of all four modes, then Debian's headless Chromium loads
//! http://…/ (scripts run, the figures refresh once at least). The four mode
//! figures in the rendered DOM must equal GetStatistics', the page must log
//! no script error, and no fixture ID number, name or application id may
//! appear. A screenshot is saved under target/test-artifacts/.
//!
//! Chromium missing: the test fails when CI=true, and is skipped with a
//! notice otherwise (`apt-get install -y chromium`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use proofgate::pb::operations_service_client::OperationsServiceClient;
use proofgate::pb::{GetStatisticsRequest, ProofOutcome, Statistics};

/// Debian's headless Chromium; PROOFGATE_TEST_CHROMIUM names another binary
/// (e.g. a missing one, to see the CI=true failure).
const CHROMIUM: &str = "/usr/bin/chromium";
/// A bound on one Chromium run, not a measurement: generous for a slow machine.
const BROWSER_BOUND: Duration = Duration::from_secs(180);

fn chromium_binary() -> PathBuf {
    std::env::var_os("PROOFGATE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM))
}

fn chromium_available() -> bool {
    let binary = chromium_binary();
    if binary.exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing and CI=true: install Debian's chromium \
             (`apt-get install -y chromium`, as .ci/run does)",
            binary.display()
        );
    }
    eprintln!(
        "NOTICE: {} is missing; the console browser test is skipped (apt-get install -y chromium)",
        binary.display()
    );
    false
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

/// Runs headless Chromium with `args` then `url`, in a fresh profile;
/// returns (stdout, stderr). Fails the test if it does not end in the bound.
fn chromium(args: &[String], url: &str) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile folder");
    let mut child = Command::new(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // Read both pipes on threads so a full pipe never stalls the browser.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("chromium status") {
            break status;
        }
        if started.elapsed() > BROWSER_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "chromium failed ({status}):\n{err}");
    (out, err)
}

/// The text of the element carrying `data-figure="key"` in `dom`.
fn figure(dom: &str, key: &str) -> u64 {
    let marker = format!("data-figure=\"{key}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the DOM"))
        + marker.len();
    let text = &dom[start..start + dom[start..].find('<').expect("element closes")];
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("figure {key} is `{text}`: {e}"))
}

async fn statistics(gw: &TestGateway) -> Statistics {
    OperationsServiceClient::new(gw.admin.clone())
        .get_statistics(GetStatisticsRequest {})
        .await
        .expect("GetStatistics answers the admin")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_shows_the_figures_of_get_statistics() {
    if !chromium_available() {
        return;
    }
    let gw =
        TestGateway::start_with(|o| o.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = gw.running.metrics_addr.expect("HTTP listener");

    // All four modes: abolished and data query (elderly subsidy),
    // commitment (security guard licence), department verification
    // answered at once (coach licence renewal).
    let mut application_ids = Vec::new();
    for request in [
        request("elderly-subsidy", ELDERLY),
        with_commitments(
            request("security-guard-licence", PASSES_ALL),
            &[
                ("education-level", "education-v1"),
                ("character-reference", "character-v2"),
            ],
        ),
        request("coach-licence-renewal", PASSES_ALL),
        request("coach-licence-renewal", FAILS_ALL),
    ] {
        let app = gw.submit(request).await;
        assert!(
            app.proofs
                .iter()
                .all(|p| p.outcome() != ProofOutcome::Pending),
            "no verification stays pending, so the figures hold still: {app:#?}"
        );
        application_ids.push(app.application_id);
    }
    let before = statistics(&gw).await;
    let nb = before.not_brought.expect("figures");
    assert!(
        nb.abolished > 0
            && nb.commitment > 0
            && nb.data_query > 0
            && nb.department_verification > 0,
        "all four modes settled: {nb:?}"
    );

    // The page, after its script ran (virtual time: no waiting on the clock).
    let url = format!("http://{addr}/");
    let (dom, log) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            chromium(
                &["--virtual-time-budget=8000".into(), "--dump-dom".into()],
                &url,
            )
        }
    })
    .await
    .unwrap();
    let after = statistics(&gw).await;
    assert_eq!(
        before.not_brought, after.not_brought,
        "the figures held still"
    );

    for (key, expected) in [
        ("not_brought.abolished", nb.abolished),
        ("not_brought.commitment", nb.commitment),
        ("not_brought.data_query", nb.data_query),
        (
            "not_brought.department_verification",
            nb.department_verification,
        ),
        ("not_brought.total", nb.total),
        ("applications", before.applications),
    ] {
        assert_eq!(
            figure(&dom, key),
            expected,
            "{key} in the DOM and GetStatistics"
        );
    }

    // The script ran, refreshed from figures.json, and reported no error.
    let refreshed = dom
        .split("data-refreshed=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no data-refreshed on body:\n{dom}"));
    assert!(
        refreshed >= 1,
        "the page refreshed its figures: {refreshed}"
    );
    let errors = dom
        .split("id=\"console-errors\"")
        .nth(1)
        .and_then(|rest| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split("</div>").next())
        .expect("the error box is in the DOM");
    assert!(
        errors.trim().is_empty(),
        "the page reported errors: {errors}"
    );
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") && (line.contains("Uncaught") || line.contains("Error"))),
            "the page logged an error: {line}"
        );
    }

    // Aggregates only.
    for secret in [ELDERLY, PASSES_ALL, FAILS_ALL, "测试申请人", "officer-007"]
        .into_iter()
        .map(str::to_owned)
        .chain(application_ids)
    {
        assert!(!dom.contains(&secret), "the DOM shows {secret}");
    }

    // Screenshots: a desktop and a phone, as artifacts.
    let dir = artifacts_dir();
    for (name, size) in [
        ("console.png", "1280,800"),
        ("console-phone.png", "390,844"),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let url = url.clone();
        let shot = path.clone();
        tokio::task::spawn_blocking(move || {
            chromium(
                &[
                    "--virtual-time-budget=8000".into(),
                    "--hide-scrollbars".into(),
                    format!("--window-size={size}"),
                    format!("--screenshot={}", shot.display()),
                ],
                &url,
            )
        })
        .await
        .unwrap();
        let png = std::fs::read(&path).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
        eprintln!("screenshot: {}", path.display());
    }

    // The JSON the script reads carries the same figures.
    let json = http_get(addr, "/console/figures.json").await;
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    assert!(
        json.contains(&format!("\"total\":{}", nb.total)),
        "figures.json carries GetStatistics' total: {json}"
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn console_off_leaves_only_the_metrics() {
    let gw = TestGateway::start_with(|o| {
        o.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        o.console = false;
    })
    .await;
    let addr = gw.running.metrics_addr.expect("HTTP listener");
    assert!(!gw.running.console);
    let page = http_get(addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
    let json = http_get(addr, "/console/figures.json").await;
    assert!(json.starts_with("HTTP/1.1 404"), "{json}");
    let metrics = scrape_metrics(addr).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("proofgate_audit_entries"), "{metrics}");
    gw.running.shutdown().await;
}

#[tokio::test]
async fn the_console_page_answers_on_the_metrics_listener() {
    let gw =
        TestGateway::start_with(|o| o.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = gw.running.metrics_addr.expect("HTTP listener");
    gw.submit(request("elderly-subsidy", ELDERLY)).await;
    let page = http_get(addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");
    assert!(
        page.contains("data-figure=\"not_brought.data_query\""),
        "{page}"
    );
    assert!(!page.contains(ELDERLY));
    let other = http_get(addr, "/nowhere").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    gw.running.shutdown().await;
}
