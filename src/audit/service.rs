//! AuditService over gRPC: what an auditor reads.

use std::pin::Pin;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::writer::AuditLog;
use crate::pb::audit_service_server::AuditService;
use crate::pb::{Checkpoint, GetCheckpointRequest, GetEntriesRequest, StoredEntry};

/// Entries sent per stream before the client must ask again; bounds one call.
const MAX_ENTRIES_PER_CALL: u64 = 100_000;

pub struct AuditApi {
    log: AuditLog,
}

impl AuditApi {
    pub fn new(log: AuditLog) -> Self {
        Self { log }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    warn!(error = %e, "audit store read failed");
    Status::internal("audit store read failed")
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        _request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        let store = self.log.store();
        let Some((size, note)) = store.latest_checkpoint().map_err(internal)? else {
            return Err(Status::not_found("the log has no checkpoint yet"));
        };
        let root = note
            .lines()
            .nth(2)
            .and_then(|r| B64.decode(r).ok())
            .unwrap_or_default();
        Ok(Response::new(Checkpoint {
            note,
            tree_size: size,
            root_hash: root,
            verifier_key: self.log.verifier_key().to_owned(),
        }))
    }

    type GetEntriesStream = Pin<Box<dyn Stream<Item = Result<StoredEntry, Status>> + Send>>;

    async fn get_entries(
        &self,
        request: Request<GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        let GetEntriesRequest { start, end } = request.into_inner();
        let size = self.log.store().tree_size().map_err(internal)?;
        let end = if end == 0 { size } else { end };
        if end > size {
            return Err(Status::out_of_range(format!(
                "end {end} is past the tree size {size}"
            )));
        }
        if start > end {
            return Err(Status::invalid_argument(format!(
                "start {start} is after end {end}"
            )));
        }
        let end = end.min(start.saturating_add(MAX_ENTRIES_PER_CALL));
        let entries = self.log.store().entries(start, end);
        let stream = tokio_stream::iter(entries.map(|item| {
            item.map(|(index, entry)| StoredEntry { index, entry })
                .map_err(internal)
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}
