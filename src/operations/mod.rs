//! Operations: the OperationsService (officers: spot checks of commitments,
//! dishonesty records, statistics) and what running the node needs beyond
//! serving (policy reload).

pub mod metrics;
pub mod stats;

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::audit::{dishonesty_key, spot_check_key, DishonestyRecord, Projection};
use crate::clock::system_now_unix_ms as now_unix_ms;
use crate::gateway::Gateway;
use crate::pb::operations_service_server::OperationsService;
use crate::pb::{
    audit_entry::Event, DishonestyRevoked, GetStatisticsRequest, IdType, ListSpotChecksRequest,
    ListSpotChecksResponse, RecordSpotCheckRequest, RecordSpotCheckResponse,
    RevokeDishonestyRequest, RevokeDishonestyResponse, SpotCheck, SpotCheckRecorded, Statistics,
};
use crate::policy::calendar::{civil_date_cst, format_date};
use crate::security::{caller, denied, Role};
use crate::subject::check_id;

const MS_PER_DAY: i64 = 86_400_000;

pub struct OperationsApi {
    gateway: Arc<Gateway>,
}

impl OperationsApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

fn officer<T>(request: &Request<T>) -> Result<String, Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Admin => Ok(caller.identity),
        _ => Err(denied(
            &caller,
            "operate spot checks, dishonesty records or statistics",
        )),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    warn!(error = %e, "operations store access failed");
    Status::internal("internal error; the operator has been told")
}

fn reason_of(reason: &str) -> Result<(), Status> {
    if reason.trim().is_empty() || reason.len() > 2000 {
        return Err(Status::invalid_argument(
            "reason is required (at most 2000 bytes): it goes into the audit log",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl OperationsService for OperationsApi {
    async fn list_spot_checks(
        &self,
        request: Request<ListSpotChecksRequest>,
    ) -> Result<Response<ListSpotChecksResponse>, Status> {
        officer(&request)?;
        let spot_checks = self
            .gateway
            .audit()
            .store()
            .spot_checks()
            .map_err(internal)?
            .into_iter()
            .map(|(application_id, proof_id, record)| SpotCheck {
                application_id,
                proof_id,
                matter_id: record.matter_id,
                committed_unix_ms: record.committed_unix_ms,
            })
            .collect();
        Ok(Response::new(ListSpotChecksResponse { spot_checks }))
    }

    async fn record_spot_check(
        &self,
        request: Request<RecordSpotCheckRequest>,
    ) -> Result<Response<RecordSpotCheckResponse>, Status> {
        let recorded_by = officer(&request)?;
        let request = request.into_inner();
        reason_of(&request.reason)?;
        let store = self.gateway.audit().store();
        let record = store
            .spot_check(&request.application_id, &request.proof_id)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no open spot check of proof `{}` in application `{}`",
                    request.proof_id, request.application_id
                ))
            })?;
        let mut projections = vec![Projection::Delete(spot_check_key(
            &request.application_id,
            &request.proof_id,
        ))];
        let dishonest_until = if request.truthful {
            String::new()
        } else {
            let until = format_date(civil_date_cst(
                now_unix_ms() + i64::from(record.dishonesty_days) * MS_PER_DAY,
            ));
            projections.push(Projection::Put(
                dishonesty_key(&record.subject_pseudonym),
                DishonestyRecord {
                    until: until.clone(),
                    application_id: request.application_id.clone(),
                    proof_id: request.proof_id.clone(),
                }
                .encode_to_vec(),
            ));
            until
        };
        let receipt = self
            .gateway
            .audit()
            .append(
                Event::SpotCheckRecorded(SpotCheckRecorded {
                    application_id: request.application_id.clone(),
                    proof_id: request.proof_id.clone(),
                    truthful: request.truthful,
                    reason: request.reason.clone(),
                    recorded_by,
                    subject_pseudonym: record.subject_pseudonym,
                    dishonest_until: dishonest_until.clone(),
                }),
                projections,
            )
            .await
            .map_err(|_| {
                Status::unavailable("the audit log is not writable; nothing was recorded")
            })?;
        info!(application_id = %request.application_id, proof = %request.proof_id, truthful = request.truthful, "spot check recorded");
        Ok(Response::new(RecordSpotCheckResponse {
            audit_index: receipt.index,
            dishonest_until,
        }))
    }

    async fn revoke_dishonesty(
        &self,
        request: Request<RevokeDishonestyRequest>,
    ) -> Result<Response<RevokeDishonestyResponse>, Status> {
        let revoked_by = officer(&request)?;
        let request = request.into_inner();
        reason_of(&request.reason)?;
        let subject = request
            .subject
            .ok_or_else(|| Status::invalid_argument("subject is required"))?;
        let id_type = IdType::try_from(subject.id_type).unwrap_or_default();
        if id_type == IdType::Unspecified {
            return Err(Status::invalid_argument("subject.id_type is required"));
        }
        let checked = check_id(id_type, &subject.id_number);
        checked.map_err(|e| Status::invalid_argument(format!("subject.id_number: {e}")))?;
        let pseudonym = self.gateway.pseudonym(id_type, &subject.id_number);
        let store = self.gateway.audit().store();
        if store.dishonesty(&pseudonym).map_err(internal)?.is_none() {
            return Err(Status::not_found("this subject has no dishonesty record"));
        }
        let receipt = self
            .gateway
            .audit()
            .append(
                Event::DishonestyRevoked(DishonestyRevoked {
                    subject_pseudonym: pseudonym.to_vec(),
                    reason: request.reason,
                    revoked_by,
                }),
                vec![Projection::Delete(dishonesty_key(&pseudonym))],
            )
            .await
            .map_err(|_| {
                Status::unavailable("the audit log is not writable; nothing was revoked")
            })?;
        Ok(Response::new(RevokeDishonestyResponse {
            audit_index: receipt.index,
        }))
    }

    async fn get_statistics(
        &self,
        request: Request<GetStatisticsRequest>,
    ) -> Result<Response<Statistics>, Status> {
        officer(&request)?;
        let store = self.gateway.audit().store().clone();
        let today = format_date(civil_date_cst(now_unix_ms()));
        // A fold over the whole log: blocking work off the async threads.
        let statistics = tokio::task::spawn_blocking(move || {
            let mut fold = stats::StatisticsFold::default();
            for item in store.entries(0, u64::MAX) {
                let (_, bytes) = item?;
                fold.entry(&bytes);
            }
            Ok::<_, crate::audit::StoreError>(fold.finish(&today))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(Response::new(statistics))
    }
}
