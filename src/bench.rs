//! The load generator: drives SubmitApplication at a fixed concurrency for a
//! fixed time against a running gateway, after a baseline of plain gRPC
//! health checks against the same server over the same connection, so the
//! figures carry their own yardstick.
//!
//! With `--baseline relay` the yardstick is a minimal relay started in the
//! same run ([`relay`]): the gateway's hops (hall → relay → the same
//! department processes, same mutual TLS) with none of its work.
//!
//! With several endpoints (the nodes of a cluster) the workers are spread
//! over them, and a worker whose node does not answer (UNAVAILABLE, a broken
//! connection, no answer in time) sends the same request — same request_id —
//! to the next node, as a hall would; the report counts those retries and
//! how many answers were `replayed` (the first attempt had been decided).

pub mod disk;
pub mod relay;

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::security::{connect, IdentityHeader, TlsFiles, GATEWAY_IDENTITY};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::pb::application_service_client::ApplicationServiceClient;
use crate::pb::department_registry_client::DepartmentRegistryClient;
use crate::pb::department_service_client::DepartmentServiceClient;
use crate::pb::{
    Commitment, IdType, ListDataSourcesRequest, Officer, QueryRequest, Subject,
    SubmitApplicationRequest, SubmitApplicationResponse,
};
use crate::policy::PolicySet;

/// How long one submission may take before the hall gives up on that node
/// and tries the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a hall keeps retrying one request (on the nodes in turn) before
/// counting it failed.
pub const RETRY_BOUND: Duration = Duration::from_secs(60);

/// Pause before a retry, so that a cluster with every node down is not
/// hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The gateway, or the nodes of a cluster (workers are spread over them).
    pub endpoints: Vec<String>,
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
    /// What the submissions are measured against (when `fanout` is empty).
    pub baseline: Baseline,
    /// The catalog the relay takes the matter's department calls from
    /// (None: ./policies if it exists, else the built-in sample catalog).
    pub policies: Option<std::path::PathBuf>,
}

/// The yardstick phase run before the submissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Baseline {
    /// Plain gRPC health checks to the gateway over the same connection.
    #[default]
    Health,
    /// SubmitApplication through a minimal relay started in this run: same
    /// mutual TLS, the same department calls to the same departments, no
    /// policy, signature checks or log.
    Relay,
}

/// The identity the bench reads the gateway's registry as (to find the
/// departments' endpoints for the relay).
const AUDITOR_IDENTITY: &str = "auditor.auditor.proofgate";

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
    /// Submissions sent again (same request_id) after a node did not answer.
    pub retries: u64,
    /// Acknowledged answers that were `replayed`: an earlier attempt of the
    /// same request had been decided.
    pub replayed: u64,
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
        )?;
        if self.retries > 0 || self.replayed > 0 {
            write!(f, "  retries {}  replayed {}", self.retries, self.replayed)?;
        }
        Ok(())
    }
}

/// What one call of a phase came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOutcome {
    pub ok: bool,
    pub retries: u32,
    pub replayed: bool,
}

impl From<bool> for CallOutcome {
    fn from(ok: bool) -> Self {
        Self {
            ok,
            ..Self::default()
        }
    }
}

/// A node that answered this is not deciding the request now: try the next.
fn worth_retrying(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Submits one request as a hall does across the nodes of a cluster: to
/// node `start`, and when a node does not answer, the same request to the
/// next, until one answers or `bound` passes. `submit(node, request)` is
/// one attempt.
pub async fn submit_with_retries<F, Fut>(
    nodes: usize,
    start: usize,
    request: &SubmitApplicationRequest,
    bound: Duration,
    submit: F,
) -> CallOutcome
where
    F: Fn(usize, SubmitApplicationRequest) -> Fut,
    Fut: Future<Output = Result<SubmitApplicationResponse, tonic::Status>>,
{
    let started = tokio::time::Instant::now();
    let nodes = nodes.max(1);
    let mut node = start % nodes;
    let mut retries = 0u32;
    loop {
        match submit(node, request.clone()).await {
            Ok(reply) => {
                return CallOutcome {
                    ok: true,
                    retries,
                    replayed: reply.replayed,
                }
            }
            Err(status) if worth_retrying(status.code()) && started.elapsed() < bound => {
                retries += 1;
                node = (node + 1) % nodes;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                return CallOutcome {
                    ok: false,
                    retries,
                    replayed: false,
                }
            }
        }
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
    Fut: std::future::Future<Output = CallOutcome> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let call = call.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let (mut failed, mut retries, mut replayed) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = call(worker, n).await;
                if outcome.ok {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
                retries += u64::from(outcome.retries);
                replayed += u64::from(outcome.replayed);
                n += 1;
            }
            (latencies, failed, retries, replayed)
        });
    }
    let mut latencies = Vec::new();
    let (mut failed, mut retries, mut replayed) = (0, 0, 0);
    while let Some(joined) = workers.join_next().await {
        if let Ok((l, f, r, p)) = joined {
            latencies.extend(l);
            failed += f;
            retries += r;
            replayed += p;
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
        retries,
        replayed,
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

/// Drives SubmitApplication on `clients` (workers spread over them, a
/// request a node does not answer retried on the next).
async fn submission_phase(
    name: &'static str,
    clients: Vec<ApplicationServiceClient<InterceptedService<Channel, IdentityHeader>>>,
    matter: &str,
    concurrency: usize,
    duration: Duration,
) -> PhaseReport {
    let run_id = crate::clock::system_now_unix_ms();
    let matter = matter.to_owned();
    run_phase(name, concurrency, duration, move |worker, n| {
        let clients = clients.clone();
        let request = sample_submission(&matter, format!("bench-{run_id}-{worker}-{n}"));
        async move {
            submit_with_retries(
                clients.len(),
                worker,
                &request,
                RETRY_BOUND,
                |node, request| {
                    let mut client = clients[node].clone();
                    async move {
                        let mut call = tonic::Request::new(request);
                        call.set_timeout(ATTEMPT_TIMEOUT);
                        client
                            .submit_application(call)
                            .await
                            .map(|r| r.into_inner())
                    }
                },
            )
            .await
        }
    })
    .await
}

/// The catalog the relay reads the matter's department calls from.
fn relay_policy(dir: Option<&std::path::Path>) -> Result<PolicySet, String> {
    let default = std::path::Path::new("policies");
    let dir = dir.or_else(|| default.is_dir().then_some(default));
    match dir {
        Some(dir) => crate::policy::load_dir(dir)
            .map_err(|e| format!("the relay reads the catalog in {}: {e}", dir.display())),
        None => crate::server::catalog::sample().map_err(|e| e.to_string()),
    }
}

/// Starts the relay for `options.matter`, with the departments registered
/// at the gateway `channel` (read as the auditor).
async fn start_relay(
    options: &BenchOptions,
    channel: Channel,
    load: &dyn Fn(&str) -> Result<Option<TlsFiles>, String>,
) -> Result<relay::Relay, String> {
    let policy = relay_policy(options.policies.as_deref())?;
    let request = sample_submission(&options.matter, "relay-plan".into());
    let calls = relay::calls_of(&policy, &request, crate::clock::system_now_unix_ms())?;
    // The registry is read as the auditor: over mutual TLS that takes the
    // auditor's certificate; in plaintext the identity header.
    let registry_channel = match (&options.certs, load(AUDITOR_IDENTITY)?) {
        (Some(_), Some(auditor)) => {
            connect(&options.endpoints[0], Some(&auditor), GATEWAY_IDENTITY)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", options.endpoints[0]))?
        }
        _ => channel,
    };
    let sources = DepartmentRegistryClient::with_interceptor(
        registry_channel,
        IdentityHeader::new(AUDITOR_IDENTITY),
    )
    .list_data_sources(ListDataSourcesRequest {})
    .await
    .map_err(|s| format!("cannot list the gateway's data sources: {}", s.message()))?
    .into_inner()
    .sources;
    relay::start(
        calls,
        &sources,
        options.certs.clone().map(|certs| relay::RelayTls { certs }),
    )
    .await
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
    if options.endpoints.is_empty() {
        return Err("no endpoint to drive (--endpoint URL[,URL…])".into());
    }
    let mut channels = Vec::with_capacity(options.endpoints.len());
    for endpoint in &options.endpoints {
        // Nodes present `<node-id>.gateway.proofgate` certificates that
        // also name the gateway's identity.
        channels.push(
            connect(endpoint, hall_tls.as_ref(), GATEWAY_IDENTITY)
                .await
                .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?,
        );
    }
    let channel = channels[0].clone();
    let hall_client = |channel: Channel| {
        ApplicationServiceClient::with_interceptor(channel, IdentityHeader::new(&hall_identity))
    };
    let baseline = if !options.fanout.is_empty() {
        fanout_phase(options, &load).await?
    } else if options.baseline == Baseline::Relay {
        let relay = start_relay(options, channel.clone(), &load).await?;
        let relay_channel = connect(&relay.endpoint, hall_tls.as_ref(), GATEWAY_IDENTITY)
            .await
            .map_err(|e| format!("cannot connect to the relay at {}: {e}", relay.endpoint))?;
        let report = submission_phase(
            "baseline: relay",
            vec![hall_client(relay_channel)],
            &options.matter,
            options.concurrency,
            options.duration,
        )
        .await;
        // Stopped before the gateway's phase: it takes no cores from it.
        relay.stop().await;
        report
    } else {
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
                        .into()
                }
            },
        )
        .await
    };
    drop(channel);
    let clients: Vec<_> = channels.into_iter().map(hall_client).collect();
    let submissions = submission_phase(
        "SubmitApplication",
        clients,
        &options.matter,
        options.concurrency,
        options.duration,
    )
    .await;
    Ok(vec![baseline, submissions])
}

/// The plain fan-out baseline: the matter's queries straight to the
/// departments, as the gateway, without the hop through a server.
async fn fanout_phase(
    options: &BenchOptions,
    load: &dyn Fn(&str) -> Result<Option<TlsFiles>, String>,
) -> Result<PhaseReport, String> {
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
    Ok(run_phase(
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
                    .into()
            }
        },
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(replayed: bool) -> Result<SubmitApplicationResponse, tonic::Status> {
        Ok(SubmitApplicationResponse {
            application: None,
            replayed,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_no_node_answers_goes_to_the_next_with_the_same_id() {
        let request = sample_submission("elderly-subsidy", "r-1".into());
        let seen = std::sync::Mutex::new(Vec::new());
        // Node 1 is down; node 2 had decided the first attempt.
        let outcome = submit_with_retries(3, 1, &request, RETRY_BOUND, |node, r| {
            seen.lock().unwrap().push((node, r.request_id.clone()));
            async move {
                match node {
                    1 => Err(tonic::Status::unavailable("connection refused")),
                    _ => answer(true),
                }
            }
        })
        .await;
        assert_eq!(
            outcome,
            CallOutcome {
                ok: true,
                retries: 1,
                replayed: true
            }
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, "r-1".to_owned()), (2, "r-1".to_owned())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried_and_retries_stop_at_the_bound() {
        let request = sample_submission("elderly-subsidy", "r-2".into());
        let refused = submit_with_retries(2, 0, &request, RETRY_BOUND, |_, _| async {
            Err(tonic::Status::already_exists("request_id reused"))
        })
        .await;
        assert_eq!(refused, CallOutcome::default());
        // Every node down: retried (paused clock) until the bound, then failed.
        let down = submit_with_retries(2, 0, &request, Duration::from_secs(1), |_, _| async {
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert!(!down.ok);
        assert_eq!(
            u64::from(down.retries),
            Duration::from_secs(1).as_millis() as u64 / RETRY_PAUSE.as_millis() as u64
        );
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
