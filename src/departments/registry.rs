//! DepartmentRegistry over gRPC: departments announce, list and withdraw their
//! data sources, and finish pending verifications. Every registration change
//! is an audit entry and persists in the store, so it survives restarts.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::directory::DepartmentDirectory;
use crate::audit::{AuditLog, Projection};
use crate::pb::department_registry_server::DepartmentRegistry;
use crate::pb::{
    audit_entry::Event, CompleteVerificationRequest, CompleteVerificationResponse, DataSource,
    DataSourceChanged, DeregisterDataSourceRequest, DeregisterDataSourceResponse,
    ListDataSourcesRequest, ListDataSourcesResponse, RegisterDataSourceRequest,
};
use crate::security::{caller, denied, Caller, Role};

/// Where finished verifications go (the gateway, which owns applications).
#[tonic::async_trait]
pub trait CompletionHandler: Send + Sync + 'static {
    async fn complete_verification(
        &self,
        request: CompleteVerificationRequest,
    ) -> Result<CompleteVerificationResponse, Status>;
}

const MAX_NAMES: usize = 256;
const MAX_NAME_LEN: usize = 128;

pub struct RegistryApi {
    directory: Arc<DepartmentDirectory>,
    audit: AuditLog,
    completions: Arc<dyn CompletionHandler>,
}

impl RegistryApi {
    pub fn new(
        directory: Arc<DepartmentDirectory>,
        audit: AuditLog,
        completions: Arc<dyn CompletionHandler>,
    ) -> Self {
        Self {
            directory,
            audit,
            completions,
        }
    }
}

/// A department acts only for itself; an admin for any department.
fn may_act_for(caller: &Caller, department_id: &str, what: &str) -> Result<(), Status> {
    match &caller.role {
        Role::Admin => Ok(()),
        Role::Department { department_id: own } if own == department_id => Ok(()),
        _ => Err(denied(
            caller,
            format!("{what} for department `{department_id}`"),
        )),
    }
}

fn audit_unavailable(e: impl std::fmt::Display) -> Status {
    warn!(error = %e, "registry change not logged");
    Status::unavailable("the audit log is not writable; the change was not made, retry later")
}

#[tonic::async_trait]
impl DepartmentRegistry for RegistryApi {
    async fn register_data_source(
        &self,
        request: Request<RegisterDataSourceRequest>,
    ) -> Result<Response<DataSource>, Status> {
        let caller = caller(&request)?;
        let changed_by = caller.identity.clone();
        let source = request
            .into_inner()
            .source
            .ok_or_else(|| Status::invalid_argument("source is required"))?;
        may_act_for(&caller, &source.department_id, "register a data source")?;
        // Everything the directory would refuse is refused before logging.
        self.directory
            .check(&source)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if source.queries.len() + source.verifications.len() > MAX_NAMES
            || source
                .queries
                .iter()
                .chain(&source.verifications)
                .any(|n| n.is_empty() || n.len() > MAX_NAME_LEN)
        {
            return Err(Status::invalid_argument(format!(
                "queries and verifications: at most {MAX_NAMES} names of 1–{MAX_NAME_LEN} bytes"
            )));
        }
        if source.capacity_per_second == 0 {
            return Err(Status::invalid_argument(
                "capacity_per_second must be at least 1",
            ));
        }
        let key = crate::audit::data_source_key(&source.department_id);
        self.audit
            .append(
                Event::DataSourceChanged(DataSourceChanged {
                    source: Some(source.clone()),
                    removed: false,
                    changed_by,
                }),
                vec![Projection::Put(key, prost::Message::encode_to_vec(&source))],
            )
            .await
            .map_err(audit_unavailable)?;
        self.directory
            .upsert(source.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(department = %source.department_id, endpoint = %source.endpoint, "data source registered");
        Ok(Response::new(source))
    }

    async fn list_data_sources(
        &self,
        _request: Request<ListDataSourcesRequest>,
    ) -> Result<Response<ListDataSourcesResponse>, Status> {
        Ok(Response::new(ListDataSourcesResponse {
            sources: self.directory.list(),
        }))
    }

    async fn deregister_data_source(
        &self,
        request: Request<DeregisterDataSourceRequest>,
    ) -> Result<Response<DeregisterDataSourceResponse>, Status> {
        let caller = caller(&request)?;
        let changed_by = caller.identity.clone();
        let department_id = request.into_inner().department_id;
        may_act_for(&caller, &department_id, "deregister a data source")?;
        let Some(source) = self.directory.get(&department_id) else {
            return Err(Status::not_found(format!(
                "no data source is registered for department `{department_id}`"
            )));
        };
        self.audit
            .append(
                Event::DataSourceChanged(DataSourceChanged {
                    source: Some(source),
                    removed: true,
                    changed_by,
                }),
                vec![Projection::Delete(crate::audit::data_source_key(
                    &department_id,
                ))],
            )
            .await
            .map_err(audit_unavailable)?;
        self.directory.remove(&department_id);
        info!(department = %department_id, "data source deregistered");
        Ok(Response::new(DeregisterDataSourceResponse {}))
    }

    async fn complete_verification(
        &self,
        request: Request<CompleteVerificationRequest>,
    ) -> Result<Response<CompleteVerificationResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        may_act_for(&caller, &request.department_id, "complete a verification")?;
        self.completions
            .complete_verification(request)
            .await
            .map(Response::new)
    }
}
