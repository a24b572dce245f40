//! The node's HTTP listener, on axum (the HTTP stack tonic already brings):
//! GET /metrics (the [`Metrics`] handle, with the gauges read from the
//! running node now) and, unless turned off, the console (see
//! [`super::console`]). Read-only; no route takes input beyond its path.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::warn;

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

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found: try GET /metrics, or GET / for the console\n",
    )
}

/// The routes: /metrics always, the console's when `console` is given.
pub fn router(state: HttpState, console: Option<Arc<Console>>) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics_route))
        .with_state(state);
    let router = match console {
        Some(console) => metrics.merge(super::console::routes(console)),
        None => metrics,
    };
    router.fallback(not_found)
}

/// Serves `router` on `listener` until the task is aborted. Accept errors
/// (too many open files, a reset before accept) are waited out by axum
/// (a pause of a second, then accepting again); they never end the loop.
pub async fn serve(listener: TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        warn!(error = %e, "HTTP listener ended");
    }
}

/// Binds the HTTP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
