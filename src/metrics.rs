//! The counters, histograms and gauges a node records (requests at the
//! service gates, applications decided, department calls, policy reloads
//! refused, the node's gauges), as a cheap-to-clone handle over one
//! `prometheus-client` registry. `server` creates one per node and hands it
//! to whatever records; nothing reaches a process-wide global. Encoded in
//! the OpenMetrics text format by [`Metrics::encode`]; `server` sets the
//! gauges read from the running node ([`NodeGauges`]) just before.
//!
//! The metric names (README "Metrics" lists them too):
//!
//! | name                                        | type      | labels                |
//! |---------------------------------------------|-----------|-----------------------|
//! | `proofgate_requests_total`                  | counter   | service, verdict      |
//! | `proofgate_applications_total`              | counter   | status                |
//! | `proofgate_submit_seconds`                  | histogram |                       |
//! | `proofgate_department_calls_total`          | counter   | department, result    |
//! | `proofgate_department_call_seconds`         | histogram | department            |
//! | `proofgate_policy_reload_refused_total`     | counter   | reason                |
//! | `proofgate_circuit_state`                   | gauge     | department            |
//! | `proofgate_audit_queue_depth`               | gauge     |                       |
//! | `proofgate_audit_entries`                   | gauge     |                       |
//! | `proofgate_audit_log_bytes`                 | gauge     |                       |
//! | `proofgate_watched_applications`            | gauge     |                       |
//! | `proofgate_tls_reloads_total`               | counter   | result                |
//! | `proofgate_tls_handshakes_refused_total`    | counter   |                       |
//! | `proofgate_crl_expired`                     | gauge     |                       |
//! | `proofgate_crl_next_update_seconds`         | gauge     |                       |
//! | `proofgate_witness_cosigned_size`           | gauge     | witness               |
//! | `proofgate_witness_lag_entries`             | gauge     | witness               |
//! | `proofgate_witness_refusals_total`          | counter   | witness, status       |
//! | `proofgate_witness_fork_alarms_total`       | counter   | witness               |
//! | `proofgate_mirror_acked_size`               | gauge     | mirror                |
//! | `proofgate_mirror_ack_required`             | gauge     |                       |
//! | `proofgate_mirror_ack_timeouts_total`       | counter   |                       |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in seconds (1 ms to 5 s).
const BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS_SECONDS)
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a policy reload is refused, as the `reason` label: an invalid set,
/// or a signature problem (see `security::policy_signing`). All are
/// exposed, zeros included, so an alert on their rate always has a series.
pub const POLICY_REFUSAL_REASONS: &[&str] = &[
    "invalid",
    "unsigned",
    "malformed",
    "unknown_key",
    "changed",
    "bad_signature",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    department: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepartmentLabels {
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    origin: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessLabels {
    witness: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessStatusLabels {
    witness: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// What the running node is like now; `server` reads it from the gateway
/// at each scrape and hands it to [`Metrics::set_node_gauges`].
#[derive(Debug, Default, Clone)]
pub struct NodeGauges {
    /// Each registered data source's circuit: 0 closed, 1 half-open, 2 open.
    pub circuits: Vec<(String, i64)>,
    pub audit_queue_depth: i64,
    pub audit_entries: i64,
    pub audit_log_bytes: i64,
    pub watched_applications: i64,
}

/// A handle on one node's metrics; clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    applications: Family<StatusLabels, Counter>,
    submit_latency: Histogram,
    department_calls: Family<CallLabels, Counter>,
    department_latency: Family<DepartmentLabels, Histogram, fn() -> Histogram>,
    policy_reloads_refused: Family<ReasonLabels, Counter>,
    circuit_state: Family<DepartmentLabels, Gauge>,
    audit_queue_depth: Gauge,
    audit_entries: Gauge,
    audit_log_bytes: Gauge,
    watched_applications: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
    tls_handshakes_refused: Counter,
    crl_expired: Gauge,
    crl_next_update_seconds: Gauge,
    mirror_tree_size: Family<OriginLabels, Gauge>,
    mirror_fork: Family<OriginLabels, Gauge>,
    mirror_pulls: Family<PullLabels, Counter>,
    witness_cosigned_size: Family<WitnessLabels, Gauge>,
    witness_lag: Family<WitnessLabels, Gauge>,
    witness_refusals: Family<WitnessStatusLabels, Counter>,
    witness_fork_alarms: Family<WitnessLabels, Counter>,
    mirror_acked_size: Family<MirrorLabels, Gauge>,
    mirror_ack_required: Gauge,
    mirror_ack_timeouts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    mirror: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("proofgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Calls at the service gates, by verdict",
            requests.clone(),
        );
        let applications = Family::<StatusLabels, Counter>::default();
        registry.register(
            "applications",
            "Applications decided, by status",
            applications.clone(),
        );
        let submit_latency = latency_histogram();
        registry.register(
            "submit_seconds",
            "SubmitApplication latency, decision and durable log entry included",
            submit_latency.clone(),
        );
        let department_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "department_calls",
            "Department calls by result",
            department_calls.clone(),
        );
        let department_latency =
            Family::<DepartmentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "department_call_seconds",
            "Department call latency",
            department_latency.clone(),
        );
        let policy_reloads_refused = Family::<ReasonLabels, Counter>::default();
        for reason in POLICY_REFUSAL_REASONS {
            drop(policy_reloads_refused.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            }));
        }
        registry.register(
            "policy_reload_refused",
            "Policy reloads refused (the old set kept serving), by reason",
            policy_reloads_refused.clone(),
        );
        let circuit_state = Family::<DepartmentLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit of each data source: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let audit_queue_depth = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Appends waiting for the writer",
            audit_queue_depth.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register("audit_entries", "Entries in the log", audit_entries.clone());
        let audit_log_bytes = Gauge::default();
        registry.register(
            "audit_log_bytes",
            "Size of the log store on disk",
            audit_log_bytes.clone(),
        );
        let watched_applications = Gauge::default();
        registry.register(
            "watched_applications",
            "Pending applications being followed",
            watched_applications.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        for result in ["ok", "failed"] {
            drop(tls_reloads.get_or_create(&ResultLabels {
                result: result.to_owned(),
            }));
        }
        registry.register(
            "tls_reloads",
            "TLS reloads (certificate, key, CA, CRLs): ok, or failed (the old configuration kept serving)",
            tls_reloads.clone(),
        );
        let tls_handshakes_refused = Counter::default();
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes refused at the gRPC listener",
            tls_handshakes_refused.clone(),
        );
        let crl_expired = Gauge::default();
        registry.register(
            "crl_expired",
            "1 while a configured certificate revocation list is past its nextUpdate: every peer certificate is refused",
            crl_expired.clone(),
        );
        let crl_next_update_seconds = Gauge::default();
        registry.register(
            "crl_next_update_seconds",
            "Earliest nextUpdate of the configured revocation lists (Unix time; 0: none configured)",
            crl_next_update_seconds.clone(),
        );
        let mirror_tree_size = Family::<OriginLabels, Gauge>::default();
        registry.register(
            "mirror_tree_size",
            "Verified entries of each log this node mirrors (its newest stored checkpoint)",
            mirror_tree_size.clone(),
        );
        let mirror_fork = Family::<OriginLabels, Gauge>::default();
        registry.register(
            "mirror_fork",
            "1 once a mirrored log showed a fork (a checkpoint inconsistent with what was mirrored): its mirroring stopped",
            mirror_fork.clone(),
        );
        let mirror_pulls = Family::<PullLabels, Counter>::default();
        registry.register(
            "mirror_pulls",
            "Mirror rounds per mirrored log and result (ok, error, fork)",
            mirror_pulls.clone(),
        );
        let witness_cosigned_size = Family::<WitnessLabels, Gauge>::default();
        registry.register(
            "witness_cosigned_size",
            "Largest tree size each witness has cosigned for this log",
            witness_cosigned_size.clone(),
        );
        let witness_lag = Family::<WitnessLabels, Gauge>::default();
        registry.register(
            "witness_lag_entries",
            "Entries the newest checkpoint is ahead of the newest one each witness cosigned",
            witness_lag.clone(),
        );
        let witness_refusals = Family::<WitnessStatusLabels, Counter>::default();
        registry.register(
            "witness_refusals",
            "Checkpoints a witness did not cosign, by HTTP status (or unreachable, bad_response)",
            witness_refusals.clone(),
        );
        let witness_fork_alarms = Family::<WitnessLabels, Counter>::default();
        registry.register(
            "witness_fork_alarms",
            "Possible forks reported: a witness refused a consistency proof (422) or a size conflict (409) did not resolve",
            witness_fork_alarms.clone(),
        );
        let mirror_acked_size = Family::<MirrorLabels, Gauge>::default();
        registry.register(
            "mirror_acked_size",
            "Entries of this node's own log each mirror reports holding, verified and durable",
            mirror_acked_size.clone(),
        );
        let mirror_ack_required = Gauge::default();
        registry.register(
            "mirror_ack_required",
            "Mirrors that must hold a decision before it is answered (serve --mirror-ack)",
            mirror_ack_required.clone(),
        );
        let mirror_ack_timeouts = Counter::default();
        registry.register(
            "mirror_ack_timeouts",
            "Answers not given because too few mirrors held the entry in time (the decision stands; the retry gets it)",
            mirror_ack_timeouts.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                applications,
                submit_latency,
                department_calls,
                department_latency,
                policy_reloads_refused,
                circuit_state,
                audit_queue_depth,
                audit_entries,
                audit_log_bytes,
                watched_applications,
                tls_reloads,
                tls_handshakes_refused,
                crl_expired,
                crl_next_update_seconds,
                mirror_tree_size,
                mirror_fork,
                mirror_pulls,
                witness_cosigned_size,
                witness_lag,
                witness_refusals,
                witness_fork_alarms,
                mirror_acked_size,
                mirror_ack_required,
                mirror_ack_timeouts,
            }),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A call reached a service gate: admitted, denied, limited, unauthenticated.
    pub fn request(&self, service: &str, verdict: &'static str) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                service: service.to_owned(),
                verdict: verdict.to_owned(),
            })
            .inc();
    }

    pub fn application(&self, status: &'static str, latency: Duration) {
        self.inner
            .applications
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .inc();
        self.inner.submit_latency.observe(latency.as_secs_f64());
    }

    /// A department call ended: `result` is "ok" or the failure kind.
    pub fn department_call(&self, department: &str, result: &str, latency: Duration) {
        self.inner
            .department_calls
            .get_or_create(&CallLabels {
                department: department.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.inner
            .department_latency
            .get_or_create(&DepartmentLabels {
                department: department.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Department calls of `department` that ended with `result` since the
    /// node started (0 if none).
    pub fn department_calls(&self, department: &str, result: &str) -> u64 {
        self.inner
            .department_calls
            .get(&CallLabels {
                department: department.to_owned(),
                result: result.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// A policy reload was refused and the old set keeps serving.
    pub fn policy_reload_refused(&self, reason: &'static str) {
        self.inner
            .policy_reloads_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A TLS reload ended: "ok" (new files serving) or "failed" (the old
    /// configuration keeps serving).
    pub fn tls_reload(&self, result: &'static str) {
        self.inner
            .tls_reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// A TLS handshake at a listener failed (refused certificate, timeout).
    pub fn tls_handshake_refused(&self) {
        self.inner.tls_handshakes_refused.inc();
    }

    /// Whether a configured CRL is past its nextUpdate (then certificates
    /// are refused), and the earliest nextUpdate (Unix ms), if any CRL.
    pub fn set_crl_state(&self, expired: bool, next_update_unix_ms: Option<i64>) {
        self.inner.crl_expired.set(i64::from(expired));
        self.inner
            .crl_next_update_seconds
            .set(next_update_unix_ms.map_or(0, |ms| ms.div_euclid(1000)));
    }

    /// A mirror round of `origin` ended with `result` (ok, error, fork);
    /// `verified` is the mirror's verified size after it.
    pub fn mirror_pull(&self, origin: &str, result: &'static str, verified: u64) {
        self.inner
            .mirror_pulls
            .get_or_create(&PullLabels {
                origin: origin.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        let labels = OriginLabels {
            origin: origin.to_owned(),
        };
        self.inner
            .mirror_tree_size
            .get_or_create(&labels)
            .set(i64::try_from(verified).unwrap_or(i64::MAX));
        if result == "fork" {
            self.inner.mirror_fork.get_or_create(&labels).set(1);
        }
    }

    /// Whether the mirror of `origin` stopped on a fork.
    pub fn mirror_forked(&self, origin: &str) -> bool {
        self.inner
            .mirror_fork
            .get(&OriginLabels {
                origin: origin.to_owned(),
            })
            .is_some_and(|g| g.get() == 1)
    }

    /// The mirror of `origin`'s verified size as last reported (0: none).
    pub fn mirror_tree_size(&self, origin: &str) -> u64 {
        self.inner
            .mirror_tree_size
            .get(&OriginLabels {
                origin: origin.to_owned(),
            })
            .map_or(0, |g| u64::try_from(g.get()).unwrap_or(0))
    }

    /// A witness's progress: the largest size it cosigned, and how far the
    /// log's newest checkpoint is ahead of it.
    pub fn witness_progress(&self, witness: &str, cosigned: u64, newest: u64) {
        let labels = WitnessLabels {
            witness: witness.to_owned(),
        };
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.inner
            .witness_cosigned_size
            .get_or_create(&labels)
            .set(as_gauge(cosigned));
        self.inner
            .witness_lag
            .get_or_create(&labels)
            .set(as_gauge(newest.saturating_sub(cosigned)));
    }

    /// A witness did not cosign: `status` is the HTTP status, or
    /// `unreachable` / `bad_response`.
    pub fn witness_refusal(&self, witness: &str, status: &str) {
        self.inner
            .witness_refusals
            .get_or_create(&WitnessStatusLabels {
                witness: witness.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// A witness's answer says this log may have forked.
    pub fn witness_fork_alarm(&self, witness: &str) {
        self.inner
            .witness_fork_alarms
            .get_or_create(&WitnessLabels {
                witness: witness.to_owned(),
            })
            .inc();
    }

    /// `mirror` holds this node's own log up to `size`.
    pub fn mirror_acked(&self, mirror: &str, size: u64) {
        self.inner
            .mirror_acked_size
            .get_or_create(&MirrorLabels {
                mirror: mirror.to_owned(),
            })
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// How many mirrors an answer waits for.
    pub fn mirror_ack_required(&self, required: usize) {
        self.inner
            .mirror_ack_required
            .set(i64::try_from(required).unwrap_or(i64::MAX));
    }

    /// An answer waited for mirrors in vain.
    pub fn mirror_ack_timeout(&self) {
        self.inner.mirror_ack_timeouts.inc();
    }

    /// Answers that waited for mirrors in vain, so far.
    pub fn mirror_ack_timeouts(&self) -> u64 {
        self.inner.mirror_ack_timeouts.get()
    }

    /// Replaces the gauges read from the running node.
    pub fn set_node_gauges(&self, gauges: &NodeGauges) {
        let inner = &self.inner;
        // A source removed since the last scrape loses its series.
        inner.circuit_state.clear();
        for (department, state) in &gauges.circuits {
            inner
                .circuit_state
                .get_or_create(&DepartmentLabels {
                    department: department.clone(),
                })
                .set(*state);
        }
        inner.audit_queue_depth.set(gauges.audit_queue_depth);
        inner.audit_entries.set(gauges.audit_entries);
        inner.audit_log_bytes.set(gauges.audit_log_bytes);
        inner.watched_applications.set(gauges.watched_applications);
    }

    /// Appends [`Metrics::encode`]'s text to `out`.
    pub fn render(&self, out: &mut String) {
        out.push_str(&self.encode());
    }

    /// The whole exposition in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; a metric that could not be
        // encoded would show as a truncated exposition, never a panic.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters_and_encode_them() {
        let metrics = Metrics::default();
        let recorder = metrics.clone();
        recorder.request("proofgate.v1.ApplicationService", "admitted");
        recorder.department_call("health", "ok", Duration::from_millis(3));
        recorder.department_call("health", "bad_signature", Duration::from_millis(3));
        recorder.policy_reload_refused("changed");
        recorder.set_node_gauges(&NodeGauges {
            circuits: vec![("health".into(), 2)],
            audit_entries: 7,
            ..NodeGauges::default()
        });
        let out = metrics.encode();
        assert!(out.contains("proofgate_policy_reload_refused_total{reason=\"changed\"} 1"));
        assert!(out.contains("proofgate_policy_reload_refused_total{reason=\"unsigned\"} 0"));
        assert!(out.contains(
            "proofgate_requests_total{service=\"proofgate.v1.ApplicationService\",verdict=\"admitted\"} 1"
        ));
        assert!(out.contains("proofgate_department_call_seconds_count{department=\"health\"} 2"));
        assert!(
            out.contains(
                "proofgate_department_call_seconds_bucket{le=\"0.005\",department=\"health\"} 2"
            ) || out.contains(
                "proofgate_department_call_seconds_bucket{department=\"health\",le=\"0.005\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("proofgate_circuit_state{department=\"health\"} 2"));
        assert!(out.contains("proofgate_audit_entries 7"));
        assert!(out.contains("proofgate_tls_reloads_total{result=\"failed\"} 0"));
        recorder.tls_reload("failed");
        recorder.tls_handshake_refused();
        recorder.set_crl_state(true, Some(1_700_000_000_500));
        let mut tls = String::new();
        metrics.render(&mut tls);
        assert!(
            tls.contains("proofgate_tls_reloads_total{result=\"failed\"} 1"),
            "{tls}"
        );
        assert!(
            tls.contains("proofgate_tls_handshakes_refused_total 1"),
            "{tls}"
        );
        assert!(tls.contains("proofgate_crl_expired 1"), "{tls}");
        assert!(
            tls.contains("proofgate_crl_next_update_seconds 1700000000"),
            "{tls}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
        assert_eq!(metrics.department_calls("health", "bad_signature"), 1);
        assert_eq!(metrics.department_calls("health", "timeout"), 0);

        // A source gone since the last scrape loses its series.
        metrics.set_node_gauges(&NodeGauges::default());
        assert!(!metrics.encode().contains("proofgate_circuit_state{"));
    }

    #[test]
    fn witness_progress_lag_refusals_and_alarms_are_per_witness() {
        let metrics = Metrics::default();
        metrics.witness_progress("w1", 5, 9);
        metrics.witness_progress("w2", 9, 9);
        metrics.witness_refusal("w1", "unreachable");
        metrics.witness_refusal("w1", "409");
        metrics.witness_fork_alarm("w1");
        let out = metrics.encode();
        for line in [
            "proofgate_witness_cosigned_size{witness=\"w1\"} 5",
            "proofgate_witness_lag_entries{witness=\"w1\"} 4",
            "proofgate_witness_lag_entries{witness=\"w2\"} 0",
            "proofgate_witness_refusals_total{witness=\"w1\",status=\"409\"} 1",
            "proofgate_witness_fork_alarms_total{witness=\"w1\"} 1",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
    }
}
