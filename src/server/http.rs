//! The node's HTTP listener, on axum (the HTTP stack tonic already brings):
//! GET /metrics (the [`Metrics`] handle, with the gauges read from the
//! running node now) and, unless turned off, the console (see
//! [`super::console`]). Read-only; no route takes input beyond its path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::departments::resilience::CircuitState;
use crate::gateway::Gateway;
use crate::metrics::{Metrics, NodeGauges, CONTENT_TYPE};

use super::console::Console;

/// What the HTTP routes read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub gateway: Arc<Gateway>,
}

/// The gauges of the running node, as of now.
pub fn node_gauges(gateway: &Gateway) -> NodeGauges {
    let directory = gateway.departments();
    let circuits = directory
        .list()
        .into_iter()
        .map(|source| {
            let state = circuit_code(directory.circuit(&source.department_id));
            (source.department_id, state)
        })
        .collect();
    let audit = gateway.audit();
    let store = audit.store();
    let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    NodeGauges {
        circuits,
        audit_queue_depth: as_gauge(audit.queue_depth() as u64),
        audit_entries: as_gauge(store.tree_size().unwrap_or(0)),
        audit_log_bytes: as_gauge(store.size_on_disk().unwrap_or(0)),
        watched_applications: as_gauge(gateway.watchers().followed() as u64),
    }
}

/// 0 closed (or unknown), 1 half-open, 2 open.
pub fn circuit_code(state: Option<CircuitState>) -> i64 {
    match state {
        Some(CircuitState::Closed) | None => 0,
        Some(CircuitState::HalfOpen) => 1,
        Some(CircuitState::Open) => 2,
    }
}

/// The exposition text: the node's gauges are refreshed first.
pub fn render_metrics(metrics: &Metrics, gateway: &Gateway) -> String {
    metrics.set_node_gauges(&node_gauges(gateway));
    metrics.encode()
}

async fn metrics_route(State(state): State<HttpState>) -> impl IntoResponse {
    let gateway = Arc::clone(&state.gateway);
    // Reading the store's size walks its files: off the async threads.
    match tokio::task::spawn_blocking(move || render_metrics(&state.metrics, &gateway)).await {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            warn!(error = %e, "metrics not rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics not rendered\n").into_response()
        }
    }
}

fn not_found(hint: &'static str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        hint,
    )
        .into_response()
}

/// The routes: /metrics always, the console's when `console` is given.
pub fn router(state: HttpState, console: Option<Arc<Console>>) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics_route))
        .with_state(state);
    match console {
        Some(console) => metrics
            .merge(super::console::routes(console))
            .fallback(|| async {
                not_found("not found: try GET / (the console) or GET /metrics\n")
            }),
        None => metrics.fallback(|| async {
            not_found("not found: try GET /metrics (the console is off: --console off)\n")
        }),
    }
}

/// Longest a client may take to send a request's head; past it the
/// connection is closed, so idle or slow clients cannot hold connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past it a new one is closed at once (a
/// scraper or a browser retries), so the listener's memory stays bounded.
pub const MAX_CONNECTIONS: usize = 256;
/// The pause after an accept error that is not about one connection (too
/// many open files, ...), so the loop neither spins nor ends.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// Serves `router` on `listener` until the task is aborted: HTTP/1.1, one
/// task per connection (at most [`MAX_CONNECTIONS`]), [`HEADER_READ_TIMEOUT`]
/// for each request head.
/// Accept errors never end the loop: one connection's is skipped, any other
/// is logged and waited out ([`ACCEPT_BACKOFF`]).
pub async fn serve(listener: TcpListener, router: Router) {
    serve_with(listener, router, None).await
}

/// [`serve`], each connection over TLS with `tls` first when given (the
/// handshake bounded by [`HEADER_READ_TIMEOUT`] too).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if connection_error(&e) => continue,
            Err(e) => {
                warn!(error = %e, "HTTP listener cannot accept; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(
                limit = MAX_CONNECTIONS,
                "HTTP listener at its connection limit; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let service = service.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let http = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .clone();
            let served = match tls {
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

/// Binds the HTTP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// On tokio's paused clock: the timeout passes in virtual time.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_request_head_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/metrics", get(|| async { "counted\n" }));
        let server = tokio::spawn(serve(listener, router));

        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        // Ends when the server closes the connection (or resets it).
        let _ = slow.read_to_end(&mut rest).await;
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT);

        // The listener still serves others.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        ok.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("counted\n"), "{response}");
        server.abort();
    }
}
