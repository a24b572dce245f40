//! The fair baseline of `proofgate bench --baseline relay`: a minimal relay
//! with the gateway's hops and nothing else. It serves `SubmitApplication`
//! over gRPC with the same mutual TLS as a node (the node's acceptor and its
//! gateway certificate), and per request makes the department calls the
//! matter needs — concurrently, to the same department processes, over
//! channels built like the gateway's (the node's TLS connector, one
//! multiplexed channel per department) — and answers. It has no policy
//! evaluation, no signature checks, no idempotency and no log: hall → relay
//! → departments has the hops of hall → gateway → departments, so the ratio
//! of the two throughputs is what the gateway's own work costs.
//!
//! The relay runs on a runtime of its own (two workers, on its own threads)
//! so it shares the machine with the load generator as a node process does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::departments::department_identity;
use crate::pb::application_service_server::{ApplicationService, ApplicationServiceServer};
use crate::pb::department_service_client::DepartmentServiceClient;
use crate::pb::{
    Application, ApplicationStatus, DataSource, GetApplicationRequest, ListMattersRequest,
    ListMattersResponse, ProofOutcome, ProofResult, Purpose, QueryRequest,
    SubmitApplicationRequest, SubmitApplicationResponse, VerifyRequest, WatchApplicationRequest,
};
use crate::policy::{ApplicantFacts, Mode, PolicySet};
use crate::security::tls::{NodeTls, TlsSources};
use crate::security::GATEWAY_IDENTITY;

/// How long one department call may take in the relay (the catalog's usual
/// call deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One department call a matter needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCall {
    Query {
        proof_id: String,
        department: String,
        query: String,
        fields: Vec<String>,
    },
    Verify {
        proof_id: String,
        department: String,
        claim: String,
    },
}

impl RelayCall {
    pub fn department(&self) -> &str {
        match self {
            RelayCall::Query { department, .. } | RelayCall::Verify { department, .. } => {
                department
            }
        }
    }

    fn proof_id(&self) -> &str {
        match self {
            RelayCall::Query { proof_id, .. } | RelayCall::Verify { proof_id, .. } => proof_id,
        }
    }
}

/// The department calls the gateway makes for `request` under `policy`:
/// one per required proof whose mode asks a department (the proofs the
/// sample applicant needs, with consent given and commitments offered where
/// the catalog takes them, so no fallback asks anyone else).
pub fn calls_of(
    policy: &PolicySet,
    request: &SubmitApplicationRequest,
    now_unix_ms: i64,
) -> Result<Vec<RelayCall>, String> {
    let matter = policy
        .matter(&request.matter_id)
        .ok_or_else(|| format!("the catalog has no matter `{}`", request.matter_id))?;
    let subject = request.applicant.clone().unwrap_or_default();
    let id_type = crate::pb::IdType::try_from(subject.id_type).unwrap_or_default();
    let facts = ApplicantFacts::derive(
        id_type,
        &subject.id_number,
        crate::policy::calendar::civil_date_cst(now_unix_ms),
    );
    let mut calls = Vec::new();
    for required in policy.required_proofs(matter, &facts) {
        let proof = &required.proof;
        let department = proof.department.clone().unwrap_or_default();
        match proof.mode {
            Mode::DataQuery => calls.push(RelayCall::Query {
                proof_id: proof.id.clone(),
                department,
                query: proof.query.clone().unwrap_or_default(),
                fields: proof.fields.clone(),
            }),
            Mode::DepartmentVerification => calls.push(RelayCall::Verify {
                proof_id: proof.id.clone(),
                department,
                claim: proof.claim.clone().unwrap_or_else(|| proof.name.clone()),
            }),
            Mode::Abolished | Mode::Commitment => {}
        }
    }
    Ok(calls)
}

/// Where the relay's TLS comes from: the certificates folder of the node
/// (it presents the gateway's certificate, as a node does).
pub struct RelayTls {
    pub certs: PathBuf,
}

/// A relay serving on a loopback port; stopped by [`Relay::stop`] or when
/// dropped.
pub struct Relay {
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl Relay {
    /// Stops serving and waits (a bounded time) until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), stopped).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Target {
    call: RelayCall,
    client: DepartmentServiceClient<Channel>,
}

struct RelayService {
    targets: Vec<Target>,
    next: AtomicU64,
}

fn load_tls(certs: &Path) -> Result<NodeTls, String> {
    NodeTls::load(
        TlsSources {
            dir: certs.to_owned(),
            identity: GATEWAY_IDENTITY.to_owned(),
            crls: Vec::new(),
            watermarks: None,
        },
        crate::clock::system(),
        crate::metrics::Metrics::default(),
    )
    .map_err(|e| format!("relay TLS from {}: {e}", certs.display()))
}

/// A channel to a department as the gateway builds it.
fn department_channel(source: &DataSource, tls: Option<&NodeTls>) -> Result<Channel, String> {
    let bad = |e: tonic::transport::Error| format!("endpoint `{}`: {e}", source.endpoint);
    match tls {
        None => Ok(Endpoint::from_shared(source.endpoint.clone())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy()),
        Some(tls) => {
            let authority = source.endpoint.strip_prefix("https://").ok_or_else(|| {
                format!(
                    "department `{}` registered `{}`, not https:// (mutual TLS is on)",
                    source.department_id, source.endpoint
                )
            })?;
            Ok(Endpoint::from_shared(format!("http://{authority}"))
                .map_err(bad)?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_with_connector_lazy(
                    tls.connector(&department_identity(&source.department_id), Arc::default()),
                ))
        }
    }
}

/// Starts a relay on a loopback port making `calls` to the departments of
/// `sources` (as registered at the gateway). With `tls`, mutual TLS on both
/// sides, as a node. The relay runs on its own runtime and threads.
pub async fn start(
    calls: Vec<RelayCall>,
    sources: &[DataSource],
    tls: Option<RelayTls>,
) -> Result<Relay, String> {
    let node_tls = tls.as_ref().map(|t| load_tls(&t.certs)).transpose()?;
    let mut plan = Vec::with_capacity(calls.len());
    for call in calls {
        let source = sources
            .iter()
            .find(|s| s.department_id == call.department())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no data source of `{}` is registered at the gateway",
                    call.department()
                )
            })?;
        plan.push((call, source));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("relay")
        .enable_all()
        .build()
        .map_err(|e| format!("relay runtime: {e}"))?;
    let (ready, on_ready) = oneshot::channel::<Result<String, String>>();
    let (stop, on_stop) = oneshot::channel::<()>();
    let (stopped, on_stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            runtime.block_on(serve(plan, node_tls, ready, on_stop));
            drop(runtime);
            let _ = stopped.send(());
        })
        .map_err(|e| format!("relay thread: {e}"))?;
    let endpoint = on_ready
        .await
        .map_err(|_| "the relay stopped before serving".to_owned())??;
    Ok(Relay {
        endpoint,
        stop: Some(stop),
        stopped: Some(on_stopped),
    })
}

/// The relay's life on its own runtime: connect, listen, say where, serve
/// until told to stop.
async fn serve(
    plan: Vec<(RelayCall, DataSource)>,
    node_tls: Option<NodeTls>,
    ready: oneshot::Sender<Result<String, String>>,
    on_stop: oneshot::Receiver<()>,
) {
    let mut targets = Vec::with_capacity(plan.len());
    for (call, source) in plan {
        match department_channel(&source, node_tls.as_ref()) {
            Ok(channel) => targets.push(Target {
                call,
                client: DepartmentServiceClient::new(channel),
            }),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let listener = match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!("relay cannot listen: {e}")));
            return;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            let _ = ready.send(Err(format!("relay address: {e}")));
            return;
        }
    };
    let scheme = if node_tls.is_some() { "https" } else { "http" };
    let _ = ready.send(Ok(format!("{scheme}://{addr}")));
    let router = tonic::transport::Server::builder().add_service(ApplicationServiceServer::new(
        RelayService {
            targets,
            next: AtomicU64::new(0),
        },
    ));
    let stopped = async {
        let _ = on_stop.await;
    };
    let served = match node_tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), stopped)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped,
                )
                .await
        }
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, "relay stopped with an error");
    }
}

impl RelayService {
    fn purpose(request: &SubmitApplicationRequest, proof_id: &str, id: &str) -> Purpose {
        let officer = request.officer.clone().unwrap_or_default();
        Purpose {
            application_id: id.to_owned(),
            matter_id: request.matter_id.clone(),
            proof_id: proof_id.to_owned(),
            officer_id: officer.officer_id,
            hall_id: officer.hall_id,
            legal_basis: String::new(),
        }
    }

    async fn ask(target: &Target, request: &SubmitApplicationRequest, id: &str) -> bool {
        let mut client = target.client.clone();
        let nonce = format!("{id}-{}", target.call.proof_id());
        let purpose = Some(Self::purpose(request, target.call.proof_id(), id));
        match &target.call {
            RelayCall::Query { query, fields, .. } => {
                let mut call = Request::new(QueryRequest {
                    request_nonce: nonce,
                    query: query.clone(),
                    subject: request.applicant.clone(),
                    fields: fields.clone(),
                    purpose,
                });
                call.set_timeout(CALL_TIMEOUT);
                report_first_error(client.query(call).await)
            }
            RelayCall::Verify {
                proof_id, claim, ..
            } => {
                let mut call = Request::new(VerifyRequest {
                    request_nonce: nonce,
                    proof_id: proof_id.clone(),
                    subject: request.applicant.clone(),
                    claim: claim.clone(),
                    purpose,
                });
                call.set_timeout(CALL_TIMEOUT);
                report_first_error(client.verify(call).await)
            }
        }
    }
}

/// Whether a department call succeeded; the first failure of the process is
/// printed, so that a relay whose calls fail (and are retried by the load
/// generator) says why.
fn report_first_error<T>(result: Result<T, Status>) -> bool {
    static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match result {
        Ok(_) => true,
        Err(status) => {
            if !PRINTED.swap(true, Ordering::Relaxed) {
                eprintln!("relay: a department call failed (first of the run): {status}");
            }
            false
        }
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Application, Status>> + Send>>;

#[tonic::async_trait]
impl ApplicationService for RelayService {
    async fn submit_application(
        &self,
        request: Request<SubmitApplicationRequest>,
    ) -> Result<Response<SubmitApplicationResponse>, Status> {
        let request = request.into_inner();
        let id = format!("relay.{}", self.next.fetch_add(1, Ordering::Relaxed));
        let answered = join_all(
            self.targets
                .iter()
                .map(|target| Self::ask(target, &request, &id)),
        )
        .await;
        let proofs = self
            .targets
            .iter()
            .zip(&answered)
            .map(|(target, ok)| ProofResult {
                proof_id: target.call.proof_id().to_owned(),
                outcome: if *ok {
                    ProofOutcome::Verified
                } else {
                    ProofOutcome::Unavailable
                } as i32,
                ..Default::default()
            })
            .collect();
        if answered.iter().any(|ok| !ok) {
            return Err(Status::unavailable("a department did not answer the relay"));
        }
        Ok(Response::new(SubmitApplicationResponse {
            application: Some(Application {
                application_id: id,
                matter_id: request.matter_id,
                status: ApplicationStatus::Complete as i32,
                proofs,
                ..Default::default()
            }),
            replayed: false,
        }))
    }

    async fn get_application(
        &self,
        _request: Request<GetApplicationRequest>,
    ) -> Result<Response<Application>, Status> {
        Err(Status::unimplemented(
            "the bench relay only relays submissions",
        ))
    }

    type WatchApplicationStream = WatchStream;

    async fn watch_application(
        &self,
        _request: Request<WatchApplicationRequest>,
    ) -> Result<Response<Self::WatchApplicationStream>, Status> {
        Err(Status::unimplemented(
            "the bench relay only relays submissions",
        ))
    }

    async fn list_matters(
        &self,
        _request: Request<ListMattersRequest>,
    ) -> Result<Response<ListMattersResponse>, Status> {
        Err(Status::unimplemented(
            "the bench relay only relays submissions",
        ))
    }
}
