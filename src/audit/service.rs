//! AuditService over gRPC: what an auditor reads.

use std::pin::Pin;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::warn;

use prost::Message;

use super::proof::{consistency_proof, inclusion_proof, ProofError};
use super::writer::AuditLog;
use crate::pb::audit_service_server::AuditService;
use crate::pb::{
    audit_entry::Event, Access, AuditEntry, Checkpoint, ConsistencyProof, DepartmentAccess,
    GetCheckpointRequest, GetConsistencyProofRequest, GetEntriesRequest, GetInclusionProofRequest,
    IdType, InclusionProof, ListAccessesRequest, ListAccessesResponse, StoredEntry,
};
use crate::security::{caller, denied, Role};
use crate::subject::{check_id, PseudonymKey};

/// The log itself is for auditors (and admins); citizen portals see only
/// the accesses of the subject they ask about.
fn log_reader<T>(request: &Request<T>) -> Result<(), Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Auditor | Role::Admin => Ok(()),
        _ => Err(denied(&caller, "read the audit log")),
    }
}

/// Entries sent per stream before the client must ask again; bounds one call.
const MAX_ENTRIES_PER_CALL: u64 = 100_000;

/// Accesses listed per call at most.
const MAX_ACCESSES: u32 = 500;

pub struct AuditApi {
    log: AuditLog,
    pseudonyms: PseudonymKey,
}

impl AuditApi {
    pub fn new(log: AuditLog, pseudonyms: PseudonymKey) -> Self {
        Self { log, pseudonyms }
    }

    /// `requested` or, for 0, the latest checkpoint's size; never past the log.
    fn tree_size(&self, requested: u64) -> Result<u64, Status> {
        // Only what is durable: a checkpoint a crash could still take back is
        // never shown.
        let size = self.log.durable_size();
        if requested > size {
            return Err(Status::out_of_range(format!(
                "tree size {requested} is past the log's {size}"
            )));
        }
        Ok(if requested == 0 { size } else { requested })
    }
}

fn proof_status(e: ProofError) -> Status {
    match e {
        ProofError::Store(_) => internal(e),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The department accesses one entry records about its subject.
fn access_of(index: u64, entry: &AuditEntry) -> Option<Access> {
    let mut access = Access {
        index,
        logged_unix_ms: entry.logged_unix_ms,
        ..Default::default()
    };
    match entry.event.as_ref()? {
        Event::ApplicationDecided(d) => {
            access.application_id = d.application_id.clone();
            access.matter_id = d.matter_id.clone();
            access.officer_id = d.officer_id.clone();
            access.hall_id = d.hall_id.clone();
            for proof in &d.proofs {
                let proof_id = proof
                    .result
                    .as_ref()
                    .map(|r| r.proof_id.clone())
                    .unwrap_or_default();
                for answer in &proof.answers {
                    access.departments.push(DepartmentAccess {
                        department_id: answer.department_id.clone(),
                        proof_id: proof_id.clone(),
                        mode: answer.mode,
                        answered: answer.failure.is_empty(),
                    });
                }
            }
        }
        Event::VerificationCompleted(c) => {
            access.application_id = c.application_id.clone();
            if let Some(answer) = &c.answer {
                access.departments.push(DepartmentAccess {
                    department_id: answer.department_id.clone(),
                    proof_id: c.proof_id.clone(),
                    mode: answer.mode,
                    answered: true,
                });
            }
        }
        _ => return None,
    }
    Some(access)
}

fn internal(e: impl std::fmt::Display) -> Status {
    warn!(error = %e, "audit store read failed");
    Status::internal("audit store read failed")
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        log_reader(&request)?;
        let store = self.log.store();
        let durable = self.log.durable_size();
        let Some((size, note)) = store.checkpoint_at_or_below(durable).map_err(internal)? else {
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
        log_reader(&request)?;
        let GetEntriesRequest { start, end } = request.into_inner();
        let size = self.log.durable_size();
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
            item.map(|(index, entry)| StoredEntry {
                index,
                leaf_hash: super::merkle::leaf_hash(&entry).to_vec(),
                entry,
            })
            .map_err(internal)
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        log_reader(&request)?;
        let GetInclusionProofRequest { index, tree_size } = request.into_inner();
        let tree_size = self.tree_size(tree_size)?;
        let store = self.log.store();
        let hashes = inclusion_proof(store, index, tree_size).map_err(proof_status)?;
        let leaf_hash = store
            .leaf_hash(index)
            .map_err(internal)?
            .ok_or_else(|| internal(format!("leaf {index} is missing")))?;
        Ok(Response::new(InclusionProof {
            index,
            tree_size,
            leaf_hash: leaf_hash.to_vec(),
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        log_reader(&request)?;
        let GetConsistencyProofRequest { old_size, new_size } = request.into_inner();
        let new_size = self.tree_size(new_size)?;
        let hashes =
            consistency_proof(self.log.store(), old_size, new_size).map_err(proof_status)?;
        Ok(Response::new(ConsistencyProof {
            old_size,
            new_size,
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn list_accesses(
        &self,
        request: Request<ListAccessesRequest>,
    ) -> Result<Response<ListAccessesResponse>, Status> {
        let request = request.into_inner();
        let subject = request
            .subject
            .ok_or_else(|| Status::invalid_argument("subject is required"))?;
        let id_type = IdType::try_from(subject.id_type).map_err(|_| {
            Status::invalid_argument(format!(
                "subject.id_type: unknown value {}",
                subject.id_type
            ))
        })?;
        if id_type == IdType::Unspecified {
            return Err(Status::invalid_argument("subject.id_type is required"));
        }
        let checked = check_id(id_type, &subject.id_number);
        checked.map_err(|e| Status::invalid_argument(format!("subject.id_number: {e}")))?;
        let limit = match request.limit {
            0 => MAX_ACCESSES,
            n => n.min(MAX_ACCESSES),
        } as usize;
        let pseudonym = self.pseudonyms.pseudonym(id_type, &subject.id_number);
        let store = self.log.store();
        let after = (request.after_index > 0).then_some(request.after_index);
        let mut accesses = Vec::new();
        let mut next_after_index = 0;
        for index in store.accesses(&pseudonym, after) {
            let index = index.map_err(internal)?;
            if accesses.len() == limit {
                next_after_index = accesses.last().map(|a: &Access| a.index).unwrap_or(0);
                break;
            }
            let Some(bytes) = store.entry(index).map_err(internal)? else {
                return Err(internal(format!("indexed entry {index} is missing")));
            };
            let entry = AuditEntry::decode(bytes.as_slice()).map_err(internal)?;
            if let Some(access) = access_of(index, &entry) {
                accesses.push(access);
            }
        }
        Ok(Response::new(ListAccessesResponse {
            accesses,
            next_after_index,
        }))
    }
}
