//! GET /metrics over a minimal HTTP listener: the node's counters (a
//! [`Metrics`] handle) followed by gauges read from the running node now —
//! department circuit state, audit queue depth and log size, watchers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

use crate::departments::resilience::CircuitState;
use crate::gateway::Gateway;
use crate::metrics::Metrics;

/// The exposition text: counters, then gauges read from `gateway` now.
pub fn render(metrics: &Metrics, gateway: &Gateway) -> String {
    let mut out = String::with_capacity(4096);
    metrics.render(&mut out);
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

/// Serves GET /metrics on `listener` until the task is aborted.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, gateway: Arc<Gateway>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let gateway = Arc::clone(&gateway);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&request[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                ("200 OK", render(&metrics, &gateway))
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
