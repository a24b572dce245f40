//! What the gRPC health service says about the node, from every reason a
//! service cannot serve, in one place: an expired revocation list (every
//! client certificate is refused), a cluster session that is not live (the
//! node must not decide), an audit log that refuses appends (the writer
//! halted after the store failed). Each watcher sets its own reason; the
//! statuses are always computed from all of them, so one watcher clearing
//! its reason cannot show SERVING while another still holds.

use std::sync::Arc;

use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::pb::application_service_server::ApplicationServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::department_registry_server::DepartmentRegistryServer;

use super::{ApplicationApi, AuditApi, RegistryApi, CRL_HEALTH_SERVICE};

/// Why services cannot serve; all false: everything serves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reasons {
    /// A revocation list is past its nextUpdate: every certificate is refused.
    pub crl_expired: bool,
    /// In a cluster: the node's session with the shared state is not live.
    pub cluster_not_live: bool,
    /// The audit writer refuses appends until the node restarts.
    pub log_halted: bool,
}

const APPLICATIONS: &str = <ApplicationServiceServer<ApplicationApi> as NamedService>::NAME;
const REGISTRY: &str = <DepartmentRegistryServer<RegistryApi> as NamedService>::NAME;
const AUDIT: &str = <AuditServiceServer<AuditApi> as NamedService>::NAME;

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The status of each service the health service names, for `reasons`.
/// "" (the node as a whole) is NOT_SERVING when the node cannot decide for
/// a reason of its own (certificates, its log); a cluster session that is
/// not live is shown on ApplicationService, as before, so a balancer sends
/// halls elsewhere while the node itself keeps running.
pub fn statuses(reasons: Reasons) -> [(&'static str, ServingStatus); 5] {
    let Reasons {
        crl_expired,
        cluster_not_live,
        log_halted,
    } = reasons;
    [
        (CRL_HEALTH_SERVICE, status(!crl_expired)),
        ("", status(!crl_expired && !log_halted)),
        (
            APPLICATIONS,
            status(!crl_expired && !log_halted && !cluster_not_live),
        ),
        // Registrations and completions are logged.
        (REGISTRY, status(!crl_expired && !log_halted)),
        // Reads serve what is durable, halted or not.
        (AUDIT, status(!crl_expired)),
    ]
}

/// The node's health service and the reasons it shows; cheap to clone.
#[derive(Clone)]
pub struct NodeHealth {
    reporter: HealthReporter,
    /// Held while the statuses are shown, so two changes show in order.
    reasons: Arc<tokio::sync::Mutex<Reasons>>,
}

impl NodeHealth {
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            reasons: Arc::default(),
        }
    }

    /// Changes the reasons with `change` and shows the result.
    pub async fn set(&self, change: impl FnOnce(&mut Reasons)) {
        let mut reasons = self.reasons.lock().await;
        change(&mut reasons);
        for (service, status) in statuses(*reasons) {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// The reasons shown now.
    pub async fn reasons(&self) -> Reasons {
        *self.reasons.lock().await
    }

    /// Shows NOT_SERVING, from now until the node restarts, once `halted`
    /// says the audit log refuses appends.
    pub fn follow_log(
        &self,
        mut halted: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            // An error: the writer is gone (the node is stopping).
            if halted.wait_for(|h| *h).await.is_ok() {
                health.set(|r| r.log_halted = true).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(reasons: Reasons, service: &str) -> ServingStatus {
        statuses(reasons)
            .into_iter()
            .find(|(s, _)| *s == service)
            .map(|(_, status)| status)
            .unwrap()
    }

    #[test]
    fn every_service_serves_without_a_reason() {
        for (service, status) in statuses(Reasons::default()) {
            assert_eq!(status, ServingStatus::Serving, "{service}");
        }
    }

    #[test]
    fn a_halted_log_stops_decisions_and_registrations_but_not_reads() {
        let halted = Reasons {
            log_halted: true,
            ..Default::default()
        };
        assert_eq!(of(halted, ""), ServingStatus::NotServing);
        assert_eq!(of(halted, APPLICATIONS), ServingStatus::NotServing);
        assert_eq!(of(halted, REGISTRY), ServingStatus::NotServing);
        assert_eq!(of(halted, AUDIT), ServingStatus::Serving);
        assert_eq!(of(halted, CRL_HEALTH_SERVICE), ServingStatus::Serving);
    }

    #[test]
    fn a_live_cluster_session_does_not_hide_another_reason() {
        // Before: the cluster's watcher set ApplicationService SERVING when
        // its session came back, whatever the revocation lists said.
        let expired_and_live = Reasons {
            crl_expired: true,
            ..Default::default()
        };
        assert_eq!(
            of(expired_and_live, APPLICATIONS),
            ServingStatus::NotServing
        );
        let not_live = Reasons {
            cluster_not_live: true,
            ..Default::default()
        };
        assert_eq!(of(not_live, APPLICATIONS), ServingStatus::NotServing);
        assert_eq!(of(not_live, ""), ServingStatus::Serving);
        assert_eq!(of(not_live, REGISTRY), ServingStatus::Serving);
    }

    #[tokio::test]
    async fn the_log_halting_is_shown_and_stays() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let health = NodeHealth::new(reporter);
        health.set(|_| {}).await;
        let (halt, halted) = tokio::sync::watch::channel(false);
        let task = health.follow_log(halted);
        assert!(!health.reasons().await.log_halted);
        halt.send_replace(true);
        task.await.unwrap();
        assert!(health.reasons().await.log_halted);
        // Another reason clearing does not bring the node back.
        health.set(|r| r.cluster_not_live = false).await;
        assert_eq!(
            of(health.reasons().await, APPLICATIONS),
            ServingStatus::NotServing
        );
    }
}
