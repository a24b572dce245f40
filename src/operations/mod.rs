//! Operations: what officers do besides deciding — spot checks of
//! commitments, dishonesty records, statistics — as plain methods; the gRPC
//! OperationsService in `server` checks the caller and maps the errors.

pub mod figures;
pub mod stats;
pub mod sum;

use std::sync::Arc;

use thiserror::Error;
use tracing::info;

use crate::audit::{AuditError, StoreError};
use crate::gateway::Gateway;
use crate::pb::{
    audit_entry::Event, DishonestyRevoked, IdType, RecordSpotCheckRequest, RecordSpotCheckResponse,
    RevokeDishonestyRequest, RevokeDishonestyResponse, SpotCheck, SpotCheckRecorded, Statistics,
};
use crate::policy::calendar::{civil_date_cst, format_date};
use crate::subject::check_id;

const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, Error)]
pub enum OperationsError {
    /// A field of the request is wrong; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("no open spot check of proof `{proof_id}` in application `{application_id}`")]
    NoSpotCheck {
        application_id: String,
        proof_id: String,
    },
    #[error("this subject has no dishonesty record")]
    NoDishonesty,
    #[error("the audit log is not writable; nothing was {0}")]
    Log(&'static str, #[source] AuditError),
    /// Cluster mode: the cluster's shared dishonesty records cannot be
    /// written now (etcd unreachable or without a quorum).
    #[error("{0}")]
    Shared(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the statistics task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Officers' operations on one node.
pub struct Operations {
    gateway: Arc<Gateway>,
}

fn reason_of(reason: &str) -> Result<(), OperationsError> {
    if reason.trim().is_empty() || reason.len() > 2000 {
        return Err(OperationsError::Invalid {
            field: "reason",
            problem: "is required (at most 2000 bytes): it goes into the audit log".into(),
        });
    }
    Ok(())
}

impl Operations {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// The open spot checks.
    pub fn spot_checks(&self) -> Result<Vec<SpotCheck>, OperationsError> {
        Ok(self
            .gateway
            .audit()
            .store()
            .spot_checks()?
            .into_iter()
            .map(|(application_id, proof_id, record)| SpotCheck {
                application_id,
                proof_id,
                matter_id: record.matter_id,
                committed_unix_ms: record.committed_unix_ms,
            })
            .collect())
    }
    /// Records the result of a spot check; a false commitment bars the
    /// applicant from commitments for the proof's dishonesty period.
    pub async fn record_spot_check(
        &self,
        recorded_by: String,
        request: RecordSpotCheckRequest,
    ) -> Result<RecordSpotCheckResponse, OperationsError> {
        reason_of(&request.reason)?;
        let store = self.gateway.audit().store();
        let record = store
            .spot_check(&request.application_id, &request.proof_id)?
            .ok_or_else(|| OperationsError::NoSpotCheck {
                application_id: request.application_id.clone(),
                proof_id: request.proof_id.clone(),
            })?;
        let dishonest_until = if request.truthful {
            String::new()
        } else {
            format_date(civil_date_cst(self.gateway.now_unix_ms().saturating_add(
                i64::from(record.dishonesty_days).saturating_mul(MS_PER_DAY),
            )))
        };
        // Cluster mode: shared first, so every node bars the applicant; if
        // this fails the spot check stays open and can be recorded again.
        if let (false, Some(shared)) = (request.truthful, self.gateway.shared_dishonesty()) {
            shared
                .record(
                    &record.subject_pseudonym,
                    crate::audit::DishonestyRecord {
                        until: dishonest_until.clone(),
                        application_id: request.application_id.clone(),
                        proof_id: request.proof_id.clone(),
                    },
                )
                .await
                .map_err(|why| {
                    OperationsError::Shared(format!(
                        "the dishonesty record cannot be shared with the cluster ({why}); nothing was recorded, retry later"
                    ))
                })?;
        }
        let receipt = self
            .gateway
            .audit()
            .append_event(Event::SpotCheckRecorded(SpotCheckRecorded {
                application_id: request.application_id.clone(),
                proof_id: request.proof_id.clone(),
                truthful: request.truthful,
                reason: request.reason.clone(),
                recorded_by,
                subject_pseudonym: record.subject_pseudonym,
                dishonest_until: dishonest_until.clone(),
            }))
            .await
            .map_err(|e| OperationsError::Log("recorded", e))?;
        info!(application_id = %request.application_id, proof = %request.proof_id, truthful = request.truthful, "spot check recorded");
        Ok(RecordSpotCheckResponse {
            audit_index: receipt.index,
            dishonest_until,
        })
    }

    /// Lifts the dishonesty record of a subject.
    pub async fn revoke_dishonesty(
        &self,
        revoked_by: String,
        request: RevokeDishonestyRequest,
    ) -> Result<RevokeDishonestyResponse, OperationsError> {
        reason_of(&request.reason)?;
        let subject = request.subject.ok_or(OperationsError::Invalid {
            field: "subject",
            problem: "is required".into(),
        })?;
        let id_type = IdType::try_from(subject.id_type).unwrap_or_default();
        if id_type == IdType::Unspecified {
            return Err(OperationsError::Invalid {
                field: "subject.id_type",
                problem: "is required".into(),
            });
        }
        check_id(id_type, &subject.id_number).map_err(|e| OperationsError::Invalid {
            field: "subject.id_number",
            problem: e.to_string(),
        })?;
        let pseudonym = self.gateway.pseudonym(id_type, &subject.id_number);
        let store = self.gateway.audit().store();
        let shared = self.gateway.shared_dishonesty();
        let on_record = match shared {
            // Cluster mode: a record made on any node may be revoked here.
            Some(shared) => shared
                .lookup(&pseudonym)
                .map_err(|why| {
                    OperationsError::Shared(format!(
                        "the cluster's dishonesty records cannot be read now ({why}); nothing was revoked, retry later"
                    ))
                })?
                .is_some(),
            None => store.dishonesty(&pseudonym)?.is_some(),
        };
        if !on_record {
            return Err(OperationsError::NoDishonesty);
        }
        let receipt = self
            .gateway
            .audit()
            .append_event(Event::DishonestyRevoked(DishonestyRevoked {
                subject_pseudonym: pseudonym.to_vec(),
                reason: request.reason,
                revoked_by,
            }))
            .await
            .map_err(|e| OperationsError::Log("revoked", e))?;
        // Logged first: if sharing fails the record is still on file
        // everywhere and the revocation can be made again.
        if let Some(shared) = shared {
            shared.revoke(&pseudonym).await.map_err(|why| {
                OperationsError::Shared(format!(
                    "the revocation was logged on this node but the cluster's record could not be removed ({why}); it still bars commitments: revoke again later"
                ))
            })?;
        }
        Ok(RevokeDishonestyResponse {
            audit_index: receipt.index,
        })
    }

    /// The reform's figures, folded over the whole log.
    pub async fn statistics(&self) -> Result<Statistics, OperationsError> {
        let store = self.gateway.audit().store().clone();
        let now = self.gateway.now_unix_ms();
        // A fold over the whole log: blocking work off the async threads.
        let statistics = tokio::task::spawn_blocking(move || {
            let mut fold = stats::StatisticsFold::at(now);
            for item in store.entries(0, u64::MAX) {
                let (_, bytes) = item?;
                fold.entry(&bytes);
            }
            Ok::<_, StoreError>(fold.finish())
        })
        .await??;
        Ok(statistics)
    }
}
