//! Prometheus metrics in the text exposition format over a minimal HTTP
//! listener (GET /metrics): requests by service and verdict, submission and
//! department latencies, department health and circuit state, audit queue
//! depth and log size. Counters are process-wide.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

use crate::departments::resilience::CircuitState;
use crate::gateway::Gateway;

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, latency: Duration) {
        let ms = latency.as_millis() as u64;
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {}",
                *bound as f64 / 1000.0,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    applications: Mutex<BTreeMap<&'static str, u64>>,
    submit_latency: Histogram,
    department_calls: Mutex<BTreeMap<(String, String), u64>>,
    department_latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// A call reached a service gate: admitted, denied, limited, unauthenticated.
    pub fn request(&self, service: &str, verdict: &'static str) {
        *lock(&self.requests)
            .entry((service.to_owned(), verdict))
            .or_default() += 1;
    }

    pub fn application(&self, status: &'static str, latency: Duration) {
        *lock(&self.applications).entry(status).or_default() += 1;
        self.submit_latency.observe(latency);
    }

    /// A department call ended: `result` is "ok" or the failure kind.
    pub fn department_call(&self, department: &str, result: &str, latency: Duration) {
        *lock(&self.department_calls)
            .entry((department.to_owned(), result.to_owned()))
            .or_default() += 1;
        let histogram = Arc::clone(
            lock(&self.department_latency)
                .entry(department.to_owned())
                .or_default(),
        );
        histogram.observe(latency);
    }

    /// The exposition text, with gauges read from `gateway` now.
    pub fn render(&self, gateway: &Gateway) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP proofgate_requests_total Calls at the service gates, by verdict.\n# TYPE proofgate_requests_total counter\n");
        for ((service, verdict), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "proofgate_requests_total{{service=\"{service}\",verdict=\"{verdict}\"}} {n}"
            );
        }
        out.push_str("# HELP proofgate_applications_total Applications decided, by status.\n# TYPE proofgate_applications_total counter\n");
        for (status, n) in lock(&self.applications).iter() {
            let _ = writeln!(
                out,
                "proofgate_applications_total{{status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP proofgate_submit_seconds SubmitApplication latency, decision and durable log entry included.\n# TYPE proofgate_submit_seconds histogram\n");
        self.submit_latency
            .render(&mut out, "proofgate_submit_seconds", "");
        out.push_str("# HELP proofgate_department_calls_total Department calls by result.\n# TYPE proofgate_department_calls_total counter\n");
        for ((department, result), n) in lock(&self.department_calls).iter() {
            let _ = writeln!(out, "proofgate_department_calls_total{{department=\"{department}\",result=\"{result}\"}} {n}");
        }
        out.push_str("# HELP proofgate_department_call_seconds Department call latency.\n# TYPE proofgate_department_call_seconds histogram\n");
        for (department, histogram) in lock(&self.department_latency).iter() {
            histogram.render(
                &mut out,
                "proofgate_department_call_seconds",
                &format!("department=\"{department}\""),
            );
        }
        out.push_str("# HELP proofgate_circuit_state Circuit of each data source: 0 closed, 1 half-open, 2 open.\n# TYPE proofgate_circuit_state gauge\n");
        let directory = gateway.departments();
        for source in directory.list() {
            let state = match directory.circuit(&source.department_id) {
                Some(CircuitState::Closed) | None => 0,
                Some(CircuitState::HalfOpen) => 1,
                Some(CircuitState::Open) => 2,
            };
            let _ = writeln!(
                out,
                "proofgate_circuit_state{{department=\"{}\"}} {state}",
                source.department_id
            );
        }
        let audit = gateway.audit();
        let store = audit.store();
        let _ = writeln!(out, "# HELP proofgate_audit_queue_depth Appends waiting for the writer.\n# TYPE proofgate_audit_queue_depth gauge\nproofgate_audit_queue_depth {}", audit.queue_depth());
        let _ = writeln!(out, "# HELP proofgate_audit_entries Entries in the log.\n# TYPE proofgate_audit_entries gauge\nproofgate_audit_entries {}", store.tree_size().unwrap_or(0));
        let _ = writeln!(out, "# HELP proofgate_audit_log_bytes Size of the log store on disk.\n# TYPE proofgate_audit_log_bytes gauge\nproofgate_audit_log_bytes {}", store.size_on_disk().unwrap_or(0));
        let _ = writeln!(out, "# HELP proofgate_watched_applications Pending applications being followed.\n# TYPE proofgate_watched_applications gauge\nproofgate_watched_applications {}", gateway.watchers().followed());
        out
    }
}

/// Serves GET /metrics on `listener` until the task is aborted.
pub async fn serve_metrics(listener: TcpListener, gateway: Arc<Gateway>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&request[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                ("200 OK", metrics().render(&gateway))
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                warn!(error = %e, "metrics response not sent");
            }
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
