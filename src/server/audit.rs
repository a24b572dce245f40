//! AuditService over gRPC: who may read the log, over [`AuditReader`].

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::AuditReader;
use crate::pb::audit_service_server::AuditService;
use crate::pb::{
    Checkpoint, ConsistencyProof, GetCheckpointRequest, GetConsistencyProofRequest,
    GetEntriesRequest, GetInclusionProofRequest, InclusionProof, ListAccessesRequest,
    ListAccessesResponse, StoredEntry,
};
use crate::security::{caller, denied, Role};

/// The log itself is for auditors (and admins); citizen portals see only
/// the accesses of the subject they ask about.
fn log_reader<T>(request: &Request<T>) -> Result<(), Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Auditor | Role::Admin => Ok(()),
        _ => Err(denied(&caller, "read the audit log")),
    }
}

pub struct AuditApi {
    reader: AuditReader,
}

impl AuditApi {
    pub fn new(reader: AuditReader) -> Self {
        Self { reader }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        log_reader(&request)?;
        let GetCheckpointRequest {
            origin,
            min_cosignatures,
        } = request.into_inner();
        Ok(Response::new(
            self.reader.checkpoint_for(&origin, min_cosignatures)?,
        ))
    }

    type GetEntriesStream = Pin<Box<dyn Stream<Item = Result<StoredEntry, Status>> + Send>>;

    async fn get_entries(
        &self,
        request: Request<GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        log_reader(&request)?;
        let GetEntriesRequest { start, end } = request.into_inner();
        let entries = self.reader.entries(start, end)?;
        let stream = tokio_stream::iter(entries.map(|item| item.map_err(Status::from)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        log_reader(&request)?;
        let GetInclusionProofRequest { index, tree_size } = request.into_inner();
        Ok(Response::new(
            self.reader.inclusion_proof(index, tree_size)?,
        ))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        log_reader(&request)?;
        let GetConsistencyProofRequest { old_size, new_size } = request.into_inner();
        Ok(Response::new(
            self.reader.consistency_proof(old_size, new_size)?,
        ))
    }

    async fn list_accesses(
        &self,
        request: Request<ListAccessesRequest>,
    ) -> Result<Response<ListAccessesResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.reader.accesses(
            request.subject,
            request.limit,
            request.after_index,
        )?))
    }
}
