//! The load generator: drives SubmitApplication at a fixed concurrency for a
//! fixed time against a running gateway, after a baseline of plain gRPC
//! health checks against the same server over the same connection, so the
//! figures carry their own yardstick.

use std::time::{Duration, Instant};

use crate::security::{connect, IdentityHeader, TlsFiles, GATEWAY_IDENTITY};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::pb::application_service_client::ApplicationServiceClient;
use crate::pb::department_service_client::DepartmentServiceClient;
use crate::pb::{Commitment, IdType, Officer, QueryRequest, Subject, SubmitApplicationRequest};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub endpoint: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub matter: String,
    /// (department, endpoint) of departments to call directly as the
    /// baseline: one plain Query to each, concurrently, per "application" —
    /// the fan-out the gateway does, without policy, signatures or log.
    /// Empty: the baseline is a gRPC health check.
    pub fanout: Vec<(String, String)>,
    /// Certificates folder (mutual TLS); None for a plaintext gateway.
    pub certs: Option<std::path::PathBuf>,
}

/// The query each built-in department answers in a plain fan-out.
fn fanout_query(department: &str) -> (&'static str, &'static [&'static str]) {
    match department {
        "public-security" => ("household_registration", &["status", "registered_region"]),
        "natural-resources" => ("property_ownership", &["properties"]),
        "human-resources" => ("social_insurance", &["months_paid", "status"]),
        "civil-affairs" => ("marriage_record", &["status"]),
        "provident-fund" => ("hpf_account", &["status", "months_paid"]),
        "market-regulation" => ("business_registration", &["status"]),
        "health" => ("birth_record", &["has_birth_record"]),
        _ => ("enrolment", &["enrolled"]),
    }
}

/// The hall the load generator submits as (its certificate's identity is
/// `hall-wucheng.hall.proofgate`).
pub const BENCH_HALL: &str = "hall-wucheng";

/// Figures of one phase.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub name: &'static str,
    pub completed: u64,
    pub failed: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl std::fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<28} {:>10.0}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ok {:>8}  failed {:>6}",
            self.name,
            self.per_second,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
            self.completed,
            self.failed
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run_phase<F, Fut>(
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> PhaseReport
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let call = call.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(worker, n).await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
                n += 1;
            }
            (latencies, failed)
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(joined) = workers.join_next().await {
        if let Ok((l, f)) = joined {
            latencies.extend(l);
            failed += f;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    PhaseReport {
        name,
        completed: latencies.len() as u64,
        failed,
        per_second: latencies.len() as f64 / elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

/// A submission the built-in mock departments decide "complete" for the
/// sample matters (the applicant passes every check there).
pub fn sample_submission(matter: &str, request_id: String) -> SubmitApplicationRequest {
    let (id_type, id_number, name) = match matter {
        "business-change" => (
            IdType::UnifiedSocialCreditCode,
            "91330702MA28K00072",
            "金华某某科技有限公司",
        ),
        "elderly-subsidy" => (IdType::ResidentId, "330702194005050628", "陈秀英"),
        _ => (IdType::ResidentId, "330702199001011237", "王伟"),
    };
    let now = crate::clock::system_now_unix_ms();
    let commit = |proof: &str, version: &str| Commitment {
        proof_id: proof.into(),
        text_version: version.into(),
        accepted_at_unix_ms: now,
    };
    SubmitApplicationRequest {
        request_id,
        matter_id: matter.into(),
        officer: Some(Officer {
            officer_id: "bench-officer".into(),
            hall_id: BENCH_HALL.into(),
        }),
        applicant: Some(Subject {
            id_type: id_type as i32,
            id_number: id_number.into(),
            name: name.into(),
        }),
        commitments: vec![
            commit("income-statement", "income-v1"),
            commit("business-premises", "premises-v1"),
            commit("guardianship", "guardian-v1"),
            commit("character-reference", "character-v2"),
        ],
        consent_to_data_queries: true,
    }
}

/// Runs the baseline and the submission phase; returns both reports.
pub async fn run(options: &BenchOptions) -> Result<Vec<PhaseReport>, String> {
    let load = |identity: &str| -> Result<Option<TlsFiles>, String> {
        options
            .certs
            .as_ref()
            .map(|dir| TlsFiles::load(dir, identity).map_err(|e| e.to_string()))
            .transpose()
    };
    let hall_identity = format!("{BENCH_HALL}.hall.proofgate");
    let hall_tls = load(&hall_identity)?;
    let channel = connect(&options.endpoint, hall_tls.as_ref(), GATEWAY_IDENTITY)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", options.endpoint))?;
    let baseline = if options.fanout.is_empty() {
        let health = HealthClient::new(channel.clone());
        run_phase(
            "baseline: health check",
            options.concurrency,
            options.duration,
            move |_, _| {
                let mut client = health.clone();
                async move {
                    client
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok()
                }
            },
        )
        .await
    } else {
        // Departments answer only the gateway: the baseline calls as the gateway.
        let gateway_tls = load(GATEWAY_IDENTITY)?;
        let mut departments = Vec::new();
        for (department, endpoint) in &options.fanout {
            let channel = connect(
                endpoint,
                gateway_tls.as_ref(),
                &crate::departments::department_identity(department),
            )
            .await
            .map_err(|e| format!("cannot connect to {department} at {endpoint}: {e}"))?;
            departments.push((department.clone(), DepartmentServiceClient::new(channel)));
        }
        run_phase(
            "baseline: plain fan-out",
            options.concurrency,
            options.duration,
            move |_, n| {
                let calls: Vec<_> = departments
                    .iter()
                    .map(|(department, client)| {
                        let (query, fields) = fanout_query(department);
                        let mut client = client.clone();
                        let request = QueryRequest {
                            request_nonce: format!("fanout-{n}"),
                            query: query.into(),
                            subject: Some(Subject {
                                id_type: IdType::ResidentId as i32,
                                id_number: "330702199001011237".into(),
                                name: "王伟".into(),
                            }),
                            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
                            purpose: None,
                        };
                        async move { client.query(request).await.is_ok() }
                    })
                    .collect();
                async move {
                    futures_util::future::join_all(calls)
                        .await
                        .into_iter()
                        .all(|ok| ok)
                }
            },
        )
        .await
    };
    let applications =
        ApplicationServiceClient::with_interceptor(channel, IdentityHeader::new(&hall_identity));
    let run_id = crate::clock::system_now_unix_ms();
    let matter = options.matter.clone();
    let submissions = run_phase(
        "SubmitApplication",
        options.concurrency,
        options.duration,
        move |worker, n| {
            let mut client = applications.clone();
            let request = sample_submission(&matter, format!("bench-{run_id}-{worker}-{n}"));
            async move { client.submit_application(request).await.is_ok() }
        },
    )
    .await;
    Ok(vec![baseline, submissions])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
