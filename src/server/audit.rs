//! AuditService over gRPC: who may read the log, over [`AuditReader`]; which
//! log (the node's own, or one it mirrors, by origin) over [`Logs`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::{AuditReader, ReadError};
use crate::pb::audit_service_server::AuditService;
use crate::pb::{
    Checkpoint, ConsistencyProof, GetCheckpointRequest, GetConsistencyProofRequest,
    GetEntriesRequest, GetInclusionProofRequest, InclusionProof, ListAccessesRequest,
    ListAccessesResponse, ListLogsRequest, ListLogsResponse, StoredEntry,
};
use crate::security::{caller, denied, ForwardedBy, Role};

/// Longest wait of a GetCheckpoint long poll.
const MAX_LONG_POLL_MS: u64 = 15_000;

/// Longest origin a request may name.
const MAX_ORIGIN_LEN: usize = 256;

/// The log itself is for auditors, admins and gateway nodes (a mirror reads
/// as its node's identity); citizen portals see only the accesses of the
/// subject they ask about.
fn log_reader<T>(request: &Request<T>) -> Result<(), Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Auditor | Role::Admin | Role::Gateway => Ok(()),
        _ => Err(denied(&caller, "read the audit log")),
    }
}

/// The logs a node serves: its own, and those it mirrors (added as their
/// mirrors open), by origin.
#[derive(Clone)]
pub struct Logs {
    own_origin: String,
    own: AuditReader,
    mirrors: Arc<RwLock<BTreeMap<String, AuditReader>>>,
}

impl Logs {
    pub fn new(own_origin: String, own: AuditReader) -> Self {
        Self {
            own_origin,
            own,
            mirrors: Arc::default(),
        }
    }

    /// Serves `reader` (a mirror of `origin`) from now on.
    pub fn add_mirror(&self, origin: &str, reader: AuditReader) {
        self.mirrors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(origin.to_owned(), reader);
    }

    /// The mirror of `origin` kept here, if any (never the node's own log).
    pub fn mirror(&self, origin: &str) -> Option<AuditReader> {
        self.mirrors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(origin)
            .cloned()
    }

    /// The node's own origin.
    pub fn own_origin(&self) -> &str {
        &self.own_origin
    }

    /// The origins mirrored here.
    pub fn mirrored(&self) -> Vec<String> {
        self.mirrors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The log of `origin`: empty or the node's own origin for its own.
    pub fn resolve(&self, origin: &str) -> Result<AuditReader, ReadError> {
        if origin.is_empty() || origin == self.own_origin {
            return Ok(self.own.clone());
        }
        if origin.len() > MAX_ORIGIN_LEN
            || origin.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ReadError::Invalid {
                field: "origin",
                problem: format!(
                    "an origin is at most {MAX_ORIGIN_LEN} characters without spaces, e.g. proofgate/node-2"
                ),
            });
        }
        let mirrors = self.mirrors.read().unwrap_or_else(|p| p.into_inner());
        mirrors
            .get(origin)
            .cloned()
            .ok_or_else(|| ReadError::UnknownOrigin {
                origin: origin.to_owned(),
                known: std::iter::once(format!("its own log {}", self.own_origin))
                    .chain(mirrors.keys().map(|o| format!("a mirror of {o}")))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

pub struct AuditApi {
    logs: Logs,
    /// The identities this node calls with (its own acknowledgements of
    /// its own log do not count).
    own_identities: Vec<String>,
    /// Cluster mode: where the node directory is (for `ListLogs`).
    cluster: Option<crate::cluster::ClusterOptions>,
}

impl AuditApi {
    pub fn new(logs: Logs) -> Self {
        let own_identities = logs
            .own_origin()
            .strip_prefix(crate::security::LOG_ORIGIN_PREFIX)
            .map(crate::security::node_identity)
            .into_iter()
            .collect();
        Self {
            logs,
            own_identities,
            cluster: None,
        }
    }

    /// The identity this node presents on its own calls, besides the one
    /// its node id gives.
    pub fn with_own_identity(mut self, identity: &str) -> Self {
        self.own_identities.push(identity.to_owned());
        self
    }

    /// `ListLogs` lists the cluster's logs from this etcd too.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::ClusterOptions>) -> Self {
        self.cluster = cluster;
        self
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        log_reader(&request)?;
        let caller = caller(&request)?;
        // A mirror is another node calling for itself: not this node (a
        // mirror on its own disk), not a call forwarded on someone's behalf.
        let mirror = caller.role == Role::Gateway
            && request.extensions().get::<ForwardedBy>().is_none()
            && !self.own_identities.contains(&caller.identity);
        let GetCheckpointRequest {
            origin,
            min_cosignatures,
            mirrored_size,
            wait_beyond_size,
            wait_ms,
            tree_size,
            mirrored_root,
        } = request.into_inner();
        let reader = self.logs.resolve(&origin)?;
        if let (Some(log), true) = (reader.own_log(), mirror) {
            // A mirror says how much of this log it holds: counted only if
            // this log signed that very tree (not another history under
            // this origin, e.g. a log started anew after a lost disk).
            if mirrored_size > 0 {
                if reader.signed_root(mirrored_size)?.as_deref() == Some(&mirrored_root[..]) {
                    log.replication().record(&caller.identity, mirrored_size);
                } else {
                    tracing::debug!(mirror = %caller.identity, size = mirrored_size, "a mirror's acknowledgement does not match this log's signed tree; not counted");
                }
            }
            if wait_beyond_size > 0 {
                let wait = Duration::from_millis(u64::from(wait_ms).min(MAX_LONG_POLL_MS));
                log.durable_beyond(wait_beyond_size, wait).await;
            }
        }
        Ok(Response::new(
            reader.checkpoint_of(min_cosignatures, tree_size)?,
        ))
    }

    type GetEntriesStream = Pin<Box<dyn Stream<Item = Result<StoredEntry, Status>> + Send>>;

    async fn get_entries(
        &self,
        request: Request<GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        log_reader(&request)?;
        let GetEntriesRequest { start, end, origin } = request.into_inner();
        let entries = self.logs.resolve(&origin)?.entries(start, end)?;
        let stream = tokio_stream::iter(entries.map(|item| item.map_err(Status::from)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        log_reader(&request)?;
        let GetInclusionProofRequest {
            index,
            tree_size,
            origin,
        } = request.into_inner();
        Ok(Response::new(
            self.logs
                .resolve(&origin)?
                .inclusion_proof(index, tree_size)?,
        ))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        log_reader(&request)?;
        let GetConsistencyProofRequest {
            old_size,
            new_size,
            origin,
        } = request.into_inner();
        Ok(Response::new(
            self.logs
                .resolve(&origin)?
                .consistency_proof(old_size, new_size)?,
        ))
    }

    async fn list_accesses(
        &self,
        request: Request<ListAccessesRequest>,
    ) -> Result<Response<ListAccessesResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.logs.resolve("")?.accesses(
            request.subject,
            request.limit,
            request.after_index,
        )?))
    }

    async fn list_logs(
        &self,
        request: Request<ListLogsRequest>,
    ) -> Result<Response<ListLogsResponse>, Status> {
        log_reader(&request)?;
        Ok(Response::new(
            super::cluster_audit::list_logs(&self.logs, self.cluster.as_ref()).await,
        ))
    }
}
