//! OperationsService over gRPC: admins only, over [`Operations`].

use tonic::{Request, Response, Status};

use crate::operations::Operations;
use crate::pb::operations_service_server::OperationsService;
use crate::pb::{
    GetStatisticsRequest, ListSpotChecksRequest, ListSpotChecksResponse, RecordSpotCheckRequest,
    RecordSpotCheckResponse, RevokeDishonestyRequest, RevokeDishonestyResponse, Statistics,
};
use crate::security::{caller, denied, Role};

pub struct OperationsApi {
    operations: Operations,
}

impl OperationsApi {
    pub fn new(operations: Operations) -> Self {
        Self { operations }
    }
}

/// The officer's identity, if the caller is an admin.
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

#[tonic::async_trait]
impl OperationsService for OperationsApi {
    async fn list_spot_checks(
        &self,
        request: Request<ListSpotChecksRequest>,
    ) -> Result<Response<ListSpotChecksResponse>, Status> {
        officer(&request)?;
        Ok(Response::new(ListSpotChecksResponse {
            spot_checks: self.operations.spot_checks()?,
        }))
    }

    async fn record_spot_check(
        &self,
        request: Request<RecordSpotCheckRequest>,
    ) -> Result<Response<RecordSpotCheckResponse>, Status> {
        let recorded_by = officer(&request)?;
        Ok(Response::new(
            self.operations
                .record_spot_check(recorded_by, request.into_inner())
                .await?,
        ))
    }

    async fn revoke_dishonesty(
        &self,
        request: Request<RevokeDishonestyRequest>,
    ) -> Result<Response<RevokeDishonestyResponse>, Status> {
        let revoked_by = officer(&request)?;
        Ok(Response::new(
            self.operations
                .revoke_dishonesty(revoked_by, request.into_inner())
                .await?,
        ))
    }

    async fn get_statistics(
        &self,
        request: Request<GetStatisticsRequest>,
    ) -> Result<Response<Statistics>, Status> {
        officer(&request)?;
        Ok(Response::new(self.operations.statistics().await?))
    }
}
