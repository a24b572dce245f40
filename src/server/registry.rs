//! DepartmentRegistry over gRPC: departments announce, list and withdraw
//! their data sources ([`Registry`]) and finish pending verifications (the
//! [`Gateway`], which owns applications). A department acts only for itself.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::invalid_field;
use crate::departments::Registry;
use crate::gateway::{Gateway, GatewayError};
use crate::pb::department_registry_server::DepartmentRegistry;
use crate::pb::{
    CompleteVerificationRequest, CompleteVerificationResponse, DataSource,
    DeregisterDataSourceRequest, DeregisterDataSourceResponse, ListDataSourcesRequest,
    ListDataSourcesResponse, RegisterDataSourceRequest,
};
use crate::security::{caller, denied, Caller, ForwardedBy, Role};

pub struct RegistryApi {
    registry: Registry,
    gateway: Arc<Gateway>,
    /// Cluster mode: a completion for a ticket this node does not hold is
    /// asked of the other nodes.
    cluster: Option<super::cluster_hook::ClusterSubmit>,
}

impl RegistryApi {
    pub fn new(registry: Registry, gateway: Arc<Gateway>) -> Self {
        Self {
            registry,
            gateway,
            cluster: None,
        }
    }

    pub(super) fn with_cluster(
        mut self,
        cluster: Option<super::cluster_hook::ClusterSubmit>,
    ) -> Self {
        self.cluster = cluster;
        self
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

#[tonic::async_trait]
impl DepartmentRegistry for RegistryApi {
    async fn register_data_source(
        &self,
        request: Request<RegisterDataSourceRequest>,
    ) -> Result<Response<DataSource>, Status> {
        let caller = caller(&request)?;
        let source = request
            .into_inner()
            .source
            .ok_or_else(|| invalid_field("source", "is required"))?;
        may_act_for(&caller, &source.department_id, "register a data source")?;
        Ok(Response::new(
            self.registry.register(caller.identity, source).await?,
        ))
    }

    async fn list_data_sources(
        &self,
        _request: Request<ListDataSourcesRequest>,
    ) -> Result<Response<ListDataSourcesResponse>, Status> {
        Ok(Response::new(ListDataSourcesResponse {
            sources: self.registry.list(),
        }))
    }

    async fn deregister_data_source(
        &self,
        request: Request<DeregisterDataSourceRequest>,
    ) -> Result<Response<DeregisterDataSourceResponse>, Status> {
        let caller = caller(&request)?;
        let department_id = request.into_inner().department_id;
        may_act_for(&caller, &department_id, "deregister a data source")?;
        self.registry
            .deregister(caller.identity, &department_id)
            .await?;
        Ok(Response::new(DeregisterDataSourceResponse {}))
    }

    async fn complete_verification(
        &self,
        request: Request<CompleteVerificationRequest>,
    ) -> Result<Response<CompleteVerificationResponse>, Status> {
        let caller = caller(&request)?;
        let forwarded = request.extensions().get::<ForwardedBy>().is_some();
        let request = request.into_inner();
        may_act_for(&caller, &request.department_id, "complete a verification")?;
        let cluster = self.cluster.as_ref().filter(|_| !forwarded);
        match (self.gateway.complete(request.clone()).await, cluster) {
            // Not this node's ticket: the node that asked the department
            // for it holds it (never decided twice: only that node can).
            (Err(GatewayError::UnknownTicket { .. }), Some(cluster)) => Ok(Response::new(
                cluster
                    .complete_elsewhere(request, &caller.identity)
                    .await?,
            )),
            (completed, _) => Ok(Response::new(completed?)),
        }
    }
}
