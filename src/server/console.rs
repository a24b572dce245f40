//! The console (stub, filled in next).

use std::sync::Arc;

use axum::Router;

use crate::metrics::Metrics;
use crate::operations::Operations;

pub struct Console {
    #[allow(dead_code)]
    operations: Operations,
    #[allow(dead_code)]
    metrics: Metrics,
}

impl Console {
    pub fn new(operations: Operations, metrics: Metrics) -> Self {
        Self {
            operations,
            metrics,
        }
    }
}

pub fn routes(_console: Arc<Console>) -> Router {
    Router::new()
}
