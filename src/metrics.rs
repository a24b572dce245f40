//! The counters and histograms a node records (requests at the service
//! gates, applications decided, department calls), as a cheap-to-clone
//! handle. `server` creates one per node and hands it to whatever records;
//! nothing reaches a process-wide global. Rendered in the Prometheus text
//! exposition format; the gauges read from the running node are added by
//! `server`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A handle on one node's metrics; clones share the same counters.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    applications: Mutex<BTreeMap<&'static str, u64>>,
    submit_latency: Histogram,
    department_calls: Mutex<BTreeMap<(String, String), u64>>,
    department_latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
    policy_reloads_refused: Mutex<BTreeMap<&'static str, u64>>,
    tls: TlsFigures,
}

/// The node's TLS: reloads, refused handshakes, the CRLs' freshness.
#[derive(Default)]
struct TlsFigures {
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    handshakes_refused: AtomicU64,
    crl_expired: AtomicU64,
    /// Earliest nextUpdate of the configured CRLs, Unix seconds; 0: none.
    crl_next_update_s: std::sync::atomic::AtomicI64,
}

/// Why a policy reload is refused, as the `reason` label: an invalid set,
/// or a signature problem (see `security::policy_signing`). All are
/// rendered, zeros included, so an alert on their rate always has a series.
pub const POLICY_REFUSAL_REASONS: &[&str] = &[
    "invalid",
    "unsigned",
    "malformed",
    "unknown_key",
    "changed",
    "bad_signature",
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A call reached a service gate: admitted, denied, limited, unauthenticated.
    pub fn request(&self, service: &str, verdict: &'static str) {
        *lock(&self.inner.requests)
            .entry((service.to_owned(), verdict))
            .or_default() += 1;
    }

    pub fn application(&self, status: &'static str, latency: Duration) {
        *lock(&self.inner.applications).entry(status).or_default() += 1;
        self.inner.submit_latency.observe(latency);
    }

    /// A department call ended: `result` is "ok" or the failure kind.
    pub fn department_call(&self, department: &str, result: &str, latency: Duration) {
        *lock(&self.inner.department_calls)
            .entry((department.to_owned(), result.to_owned()))
            .or_default() += 1;
        let histogram = Arc::clone(
            lock(&self.inner.department_latency)
                .entry(department.to_owned())
                .or_default(),
        );
        histogram.observe(latency);
    }

    /// A policy reload was refused and the old set keeps serving.
    pub fn policy_reload_refused(&self, reason: &'static str) {
        *lock(&self.inner.policy_reloads_refused)
            .entry(reason)
            .or_default() += 1;
    }

    /// A TLS reload ended: "ok" (new files serving) or "failed" (the old
    /// configuration keeps serving).
    pub fn tls_reload(&self, result: &'static str) {
        *lock(&self.inner.tls.reloads).entry(result).or_default() += 1;
    }

    /// A TLS handshake at a listener failed (refused certificate, timeout).
    pub fn tls_handshake_refused(&self) {
        self.inner
            .tls
            .handshakes_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a configured CRL is past its nextUpdate (then certificates
    /// are refused), and the earliest nextUpdate (Unix ms), if any CRL.
    pub fn set_crl_state(&self, expired: bool, next_update_unix_ms: Option<i64>) {
        let tls = &self.inner.tls;
        tls.crl_expired.store(u64::from(expired), Ordering::Relaxed);
        tls.crl_next_update_s.store(
            next_update_unix_ms.map_or(0, |ms| ms.div_euclid(1000)),
            Ordering::Relaxed,
        );
    }

    fn render_tls(&self, out: &mut String) {
        let tls = &self.inner.tls;
        out.push_str("# HELP proofgate_tls_reloads_total TLS reloads (certificate, key, CA, CRLs): ok, or failed (the old configuration kept serving).\n# TYPE proofgate_tls_reloads_total counter\n");
        let reloads = lock(&tls.reloads);
        for result in ["ok", "failed"] {
            let n = reloads.get(result).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "proofgate_tls_reloads_total{{result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP proofgate_tls_handshakes_refused_total TLS handshakes refused at the gRPC listener.\n# TYPE proofgate_tls_handshakes_refused_total counter\nproofgate_tls_handshakes_refused_total {}", tls.handshakes_refused.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP proofgate_crl_expired 1 while a configured certificate revocation list is past its nextUpdate: every peer certificate is refused.\n# TYPE proofgate_crl_expired gauge\nproofgate_crl_expired {}", tls.crl_expired.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP proofgate_crl_next_update_seconds Earliest nextUpdate of the configured revocation lists (Unix time; 0: none configured).\n# TYPE proofgate_crl_next_update_seconds gauge\nproofgate_crl_next_update_seconds {}", tls.crl_next_update_s.load(Ordering::Relaxed));
    }

    /// Appends the counters and histograms in the exposition format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP proofgate_requests_total Calls at the service gates, by verdict.\n# TYPE proofgate_requests_total counter\n");
        for ((service, verdict), n) in lock(&self.inner.requests).iter() {
            let _ = writeln!(
                out,
                "proofgate_requests_total{{service=\"{service}\",verdict=\"{verdict}\"}} {n}"
            );
        }
        out.push_str("# HELP proofgate_applications_total Applications decided, by status.\n# TYPE proofgate_applications_total counter\n");
        for (status, n) in lock(&self.inner.applications).iter() {
            let _ = writeln!(
                out,
                "proofgate_applications_total{{status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP proofgate_submit_seconds SubmitApplication latency, decision and durable log entry included.\n# TYPE proofgate_submit_seconds histogram\n");
        self.inner
            .submit_latency
            .render(out, "proofgate_submit_seconds", "");
        out.push_str("# HELP proofgate_department_calls_total Department calls by result.\n# TYPE proofgate_department_calls_total counter\n");
        for ((department, result), n) in lock(&self.inner.department_calls).iter() {
            let _ = writeln!(out, "proofgate_department_calls_total{{department=\"{department}\",result=\"{result}\"}} {n}");
        }
        out.push_str("# HELP proofgate_department_call_seconds Department call latency.\n# TYPE proofgate_department_call_seconds histogram\n");
        for (department, histogram) in lock(&self.inner.department_latency).iter() {
            histogram.render(
                out,
                "proofgate_department_call_seconds",
                &format!("department=\"{department}\""),
            );
        }
        out.push_str("# HELP proofgate_policy_reload_refused_total Policy reloads refused (the old set kept serving), by reason.\n# TYPE proofgate_policy_reload_refused_total counter\n");
        let refused = lock(&self.inner.policy_reloads_refused);
        let reasons = POLICY_REFUSAL_REASONS
            .iter()
            .copied()
            .chain(refused.keys().copied())
            .collect::<std::collections::BTreeSet<_>>();
        for reason in reasons {
            let n = refused.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "proofgate_policy_reload_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        drop(refused);
        self.render_tls(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counters_and_render_them() {
        let metrics = Metrics::default();
        let recorder = metrics.clone();
        recorder.request("proofgate.v1.ApplicationService", "admitted");
        recorder.department_call("health", "ok", Duration::from_millis(3));
        recorder.policy_reload_refused("changed");
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("proofgate_policy_reload_refused_total{reason=\"changed\"} 1"));
        assert!(out.contains("proofgate_policy_reload_refused_total{reason=\"unsigned\"} 0"));
        assert!(out.contains(
            "proofgate_requests_total{service=\"proofgate.v1.ApplicationService\",verdict=\"admitted\"} 1"
        ));
        assert!(out.contains("proofgate_department_call_seconds_count{department=\"health\"} 1"));
    }
}
