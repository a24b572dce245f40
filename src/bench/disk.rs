//! `proofgate bench --applications N`: disk, memory and writer figures of a
//! node that decided N applications. The bench starts its own node
//! in-process (the real serve path: mutual TLS, the built-in mock
//! departments over loopback gRPC, the audit writer) on a fresh data folder,
//! submits N applications through its gRPC listener, stops it cleanly, and
//! then sizes the folder (`audit usage`): bytes per application.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::audit::{AuditStore, Usage};
use crate::pb::application_service_client::ApplicationServiceClient;
use crate::security::{connect, IdentityHeader, TlsFiles, GATEWAY_IDENTITY};
use crate::server::{self, ServeOptions};

use super::{sample_submission, ATTEMPT_TIMEOUT, BENCH_HALL};

/// The applicant whose degree verification the education bureau's mock
/// leaves pending for an hour (its fixture): a pending application.
const PENDING_APPLICANT: &str = "330702198807080042";
/// The matter that asks for that verification.
const PENDING_MATTER: &str = "teacher-qualification";

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub applications: u64,
    /// Of those, how many are left pending (a department verification
    /// still open) — the node keeps their tickets.
    pub pending: u64,
    pub concurrency: usize,
    pub matter: String,
    /// The node's data folder; it must not exist yet. None: a fresh folder
    /// under the system's temporary folder, removed afterwards unless `keep`.
    pub data_dir: Option<PathBuf>,
    pub keep: bool,
    /// How the node's store is opened (sled's page cache, compression).
    pub store: crate::audit::StoreOptions,
}

/// `bench --applications N --external`: the same submissions, sent to a
/// node already serving in another process (so that its memory is the
/// node's alone), in chunks that may be resumed: request ids start at
/// `disk-{first}`, and the pending ones are the first `pending` of all.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    pub applications: u64,
    pub first: u64,
    pub pending: u64,
    pub concurrency: usize,
    pub matter: String,
    pub endpoint: String,
    pub certs: PathBuf,
    /// The node's process: its VmRSS and VmHWM are read after the run.
    pub node_pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ExternalReport {
    pub submitted: u64,
    pub failed: u64,
    pub seconds: f64,
    pub node_pid: Option<u32>,
    pub node_rss: Option<(u64, u64)>,
}

/// The first line of both reports: how many applications, in how long.
fn applications_line(
    f: &mut std::fmt::Formatter<'_>,
    submitted: u64,
    failed: u64,
    seconds: f64,
) -> std::fmt::Result {
    writeln!(
        f,
        "applications       {submitted} decided, {failed} failed, in {seconds:.1} s ({:.0}/s)",
        submitted as f64 / seconds.max(1e-9)
    )
}

impl std::fmt::Display for ExternalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        applications_line(f, self.submitted, self.failed, self.seconds)?;
        match (self.node_pid, self.node_rss) {
            (Some(pid), Some((rss, peak))) => writeln!(
                f,
                "node process {pid} after the run: VmRSS {:.1} MB, VmHWM {:.1} MB (the node alone)",
                rss as f64 / 1e6,
                peak as f64 / 1e6
            ),
            (Some(pid), None) => writeln!(f, "node process {pid}: no /proc status"),
            _ => Ok(()),
        }
    }
}

/// Submits to a node serving elsewhere; see [`ExternalOptions`].
pub async fn run_external(options: &ExternalOptions) -> Result<ExternalReport, String> {
    let hall_identity = format!("{BENCH_HALL}.hall.proofgate");
    let tls = TlsFiles::load(&options.certs, &hall_identity).map_err(|e| e.to_string())?;
    let channel = connect(&options.endpoint, Some(&tls), GATEWAY_IDENTITY)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", options.endpoint))?;
    let client =
        ApplicationServiceClient::with_interceptor(channel, IdentityHeader::new(&hall_identity));
    let plan = Plan {
        first: options.first,
        end: options.first + options.applications,
        pending: options.pending,
        concurrency: options.concurrency,
        matter: options.matter.clone(),
    };
    let (submitted, failed, seconds) = submit(client, plan).await;
    let node_rss = options
        .node_pid
        .and_then(|pid| memory_of(&format!("/proc/{pid}/status")));
    Ok(ExternalReport {
        submitted,
        failed,
        seconds,
        node_pid: options.node_pid,
        node_rss,
    })
}

#[derive(Debug, Clone)]
pub struct DiskReport {
    pub data_dir: PathBuf,
    pub kept: bool,
    pub submitted: u64,
    pub failed: u64,
    pub seconds: f64,
    /// The store after the clean stop: bytes per key kind and on disk.
    pub usage: Usage,
    /// Bytes of the whole data folder (store, keys, certificates).
    pub folder_bytes: u64,
    /// Resident memory of this process (node and load generator together)
    /// just before the node stopped, and its peak, in bytes.
    pub rss: Option<(u64, u64)>,
}

impl DiskReport {
    pub fn per_application(&self, bytes: u64) -> f64 {
        bytes as f64 / self.submitted.max(1) as f64
    }
}

impl std::fmt::Display for DiskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        applications_line(f, self.submitted, self.failed, self.seconds)?;
        writeln!(f, "data folder        {}", self.data_dir.display())?;
        f.write_str(&crate::audit::report::usage_table(&self.usage))?;
        writeln!(
            f,
            "bytes per application: {:.0} (store on disk), {:.0} (whole data folder), {:.0} (payload)",
            self.per_application(self.usage.on_disk),
            self.per_application(self.folder_bytes),
            self.per_application(self.usage.payload())
        )?;
        if let Some((rss, peak)) = self.rss {
            writeln!(
                f,
                "resident memory before the stop: {:.1} MB (peak {:.1} MB; node and load generator in one process)",
                rss as f64 / 1e6,
                peak as f64 / 1e6
            )?;
        }
        Ok(())
    }
}

/// VmRSS and VmHWM of this process, in bytes (Linux); None elsewhere.
pub fn resident_memory() -> Option<(u64, u64)> {
    memory_of("/proc/self/status")
}

/// VmRSS and VmHWM from a /proc/PID/status file, in bytes.
fn memory_of(status_file: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn folder_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Starts a node on a fresh data folder, submits the applications, stops
/// the node and sizes its folder.
pub async fn run(options: &DiskOptions) -> Result<DiskReport, String> {
    let data_dir = match &options.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "proofgate-bench-{}-{}",
            std::process::id(),
            crate::clock::system_now_unix_ms()
        )),
    };
    if data_dir.exists() {
        return Err(format!(
            "{} exists: give a data folder that does not exist yet (the figures are of a fresh node)",
            data_dir.display()
        ));
    }
    let mut serve = ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.clone(),
        metrics_listen: None,
        console: false,
        ..ServeOptions::default()
    };
    serve.writer.store = options.store;
    let running = server::start(serve)
        .await
        .map_err(|e| format!("cannot start the node: {e}"))?;
    let result = submit_all(&running, options).await;
    let rss = resident_memory();
    running.shutdown().await;
    let (submitted, failed, seconds) = result?;
    let log = data_dir.join("log");
    let usage = AuditStore::open(&log)
        .and_then(|store| store.usage(&log))
        .map_err(|e| format!("cannot size {}: {e}", log.display()))?;
    let report = DiskReport {
        folder_bytes: folder_bytes(&data_dir),
        data_dir: data_dir.clone(),
        kept: options.keep || options.data_dir.is_some(),
        submitted,
        failed,
        seconds,
        usage,
        rss,
    };
    if !report.kept {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(report)
}

async fn submit_all(
    running: &server::Running,
    options: &DiskOptions,
) -> Result<(u64, u64, f64), String> {
    let certs = running
        .certs_dir
        .clone()
        .ok_or("the node serves no TLS: nothing to connect with")?;
    let hall_identity = format!("{BENCH_HALL}.hall.proofgate");
    let tls = TlsFiles::load(&certs, &hall_identity).map_err(|e| e.to_string())?;
    let channel = connect(&running.endpoint(), Some(&tls), GATEWAY_IDENTITY)
        .await
        .map_err(|e| format!("cannot connect to the node: {e}"))?;
    let client =
        ApplicationServiceClient::with_interceptor(channel, IdentityHeader::new(&hall_identity));
    let plan = Plan {
        first: 0,
        end: options.applications,
        pending: options.pending.min(options.applications),
        concurrency: options.concurrency,
        matter: options.matter.clone(),
    };
    Ok(submit(client, plan).await)
}

/// Which applications to submit: ids `disk-{first}` up to `disk-{end}`
/// (excluded); those below `pending` are left pending.
struct Plan {
    first: u64,
    end: u64,
    pending: u64,
    concurrency: usize,
    matter: String,
}

type Client = ApplicationServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, IdentityHeader>,
>;

/// Submits the plan's applications at its concurrency; (decided, failed,
/// seconds).
async fn submit(client: Client, plan: Plan) -> (u64, u64, f64) {
    let next = Arc::new(AtomicU64::new(plan.first));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let (end, pending) = (plan.end, plan.pending);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency.max(1) {
        let (client, next, failed, first_error) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&failed),
            Arc::clone(&first_error),
        );
        let matter = plan.matter.clone();
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break;
                }
                let id = format!("disk-{n}");
                let request = if n < pending {
                    let mut request = sample_submission(PENDING_MATTER, id);
                    if let Some(applicant) = request.applicant.as_mut() {
                        applicant.id_number = PENDING_APPLICANT.into();
                    }
                    request
                } else {
                    sample_submission(&matter, id)
                };
                let mut call = tonic::Request::new(request);
                call.set_timeout(ATTEMPT_TIMEOUT);
                if let Err(status) = client.clone().submit_application(call).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = first_error.lock() {
                        first.get_or_insert_with(|| status.to_string());
                    }
                }
                if n > 0 && n % 100_000 == 0 {
                    eprintln!("bench: {n} applications submitted");
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if let Some(error) = first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("bench: {failed} submissions failed; the first: {error}");
    }
    let total = end.saturating_sub(plan.first);
    (total - failed, failed, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--external` sends its chunk (ids from `first`) to a node serving
    /// elsewhere and reads that process's memory; a node in this process
    /// stands in for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn external_chunk_reaches_a_serving_node() {
        let dir = tempfile::tempdir().unwrap();
        let serve = ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            metrics_listen: None,
            console: false,
            ..ServeOptions::default()
        };
        let running = server::start(serve).await.unwrap();
        let options = ExternalOptions {
            applications: 3,
            first: 10,
            pending: 0,
            concurrency: 2,
            matter: "public-rental-housing".into(),
            endpoint: running.endpoint(),
            certs: running.certs_dir.clone().unwrap(),
            node_pid: Some(std::process::id()),
        };
        let report = run_external(&options).await.unwrap();
        running.shutdown().await;
        assert_eq!((report.submitted, report.failed), (3, 0));
        assert!(report
            .node_rss
            .is_some_and(|(rss, peak)| rss > 0 && peak >= rss));
        assert!(report.to_string().contains("the node alone"));
    }
}
