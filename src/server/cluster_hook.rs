//! Where the server meets cluster mode: joining the node directory with
//! this node's record, handing its progress (tree size, policy version) to
//! the session, and turning the session's liveness into health status for
//! ApplicationService. Everything else of cluster mode lives in
//! [`crate::cluster`].

use std::sync::Arc;

use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use super::{ApplicationApi, ServeError};
use crate::audit::AuditLog;
use crate::cluster::{ClusterOptions, DecideGate, NodeRecord, Progress, ProgressFn, Session};
use crate::gateway::Gateway;
use crate::pb::application_service_server::ApplicationServiceServer;

/// A node in the cluster: its session, and the task that mirrors the
/// session's liveness into health.
pub(super) struct Joined {
    session: Session,
    health: Option<JoinHandle<()>>,
}

/// Registers this node (refused if a live node holds its id).
pub(super) async fn join(
    options: &ClusterOptions,
    node_id: &str,
    endpoint: &str,
    gateway: &Arc<Gateway>,
    log: &AuditLog,
) -> Result<Joined, ServeError> {
    let node_id = node_id.to_owned();
    let progress: ProgressFn = {
        let gateway = Arc::clone(gateway);
        Arc::new(move || Progress {
            // A store read that fails leaves the size at 0 for this round.
            tree_size: gateway.audit().store().tree_size().unwrap_or(0),
            policy_version: gateway.policy().version.clone(),
            now_unix_ms: u64::try_from(gateway.now_unix_ms()).unwrap_or(0),
        })
    };
    let record = NodeRecord {
        origin: crate::security::log_origin(&node_id),
        node_id,
        address: endpoint.to_owned(),
        vkey: log.verifier_key().to_owned(),
        policy_version: String::new(),
        tree_size: 0,
        updated_unix_ms: 0,
        software: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let session = Session::join(options.clone(), record, progress).await?;
    Ok(Joined {
        session,
        health: None,
    })
}

impl Joined {
    pub(super) fn gate(&self) -> DecideGate {
        self.session.gate()
    }

    /// True while the node's etcd session is live.
    pub(super) fn live(&self) -> tokio::sync::watch::Receiver<bool> {
        self.session.subscribe()
    }

    /// From now on health says NOT_SERVING for ApplicationService while the
    /// session is not live, SERVING when it is again.
    pub(super) fn report_health(mut self, reporter: HealthReporter) -> Self {
        let mut live = self.session.subscribe();
        self.health = Some(tokio::spawn(async move {
            loop {
                let now = *live.borrow_and_update();
                if now {
                    reporter
                        .set_serving::<ApplicationServiceServer<ApplicationApi>>()
                        .await;
                } else {
                    reporter
                        .set_not_serving::<ApplicationServiceServer<ApplicationApi>>()
                        .await;
                }
                if live.changed().await.is_err() {
                    return;
                }
            }
        }));
        self
    }

    /// Leaves the cluster: no more decisions, the record removed now.
    pub(super) async fn leave(mut self) {
        if let Some(task) = self.health.take() {
            task.abort();
        }
        self.session.leave().await;
    }
}
