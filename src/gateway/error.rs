//! Gateway errors and the one place they become gRPC statuses.

use thiserror::Error;
use tonic::{Code, Status};
use tracing::warn;

use super::validate::FieldViolation;
use crate::audit::{AuditError, StoreError};
use crate::policy::ApplyError;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("invalid request: {}", join(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("unknown matter `{0}`; ListMatters lists the matters this gateway serves")]
    UnknownMatter(String),
    #[error("no application `{0}`")]
    UnknownApplication(String),
    #[error("request_id `{0}` was already used by this caller for a different request; use a new request_id")]
    RequestIdReused(String),
    #[error("department `{department}` holds no pending ticket `{ticket}`")]
    UnknownTicket { department: String, ticket: String },
    #[error(
        "the ticket was just issued and its decision is still being logged; retry in a moment"
    )]
    TicketNotYetRecorded,
    #[error("the completion is not signed by the registered key of department `{0}`")]
    BadSignature(String),
    #[error("the audit log cannot take the decision: {0}")]
    Audit(#[from] AuditError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The stored state and the event disagree (the projection refused it).
    #[error("the application does not accept this change: {0}")]
    NotApplicable(#[from] ApplyError),
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        let code = match &e {
            GatewayError::Invalid(_) => Code::InvalidArgument,
            GatewayError::UnknownMatter(_)
            | GatewayError::UnknownApplication(_)
            | GatewayError::UnknownTicket { .. } => Code::NotFound,
            GatewayError::RequestIdReused(_) => Code::AlreadyExists,
            GatewayError::BadSignature(_) => Code::Unauthenticated,
            GatewayError::TicketNotYetRecorded => Code::Unavailable,
            GatewayError::Audit(_) => {
                warn!(error = %e, "decision not logged");
                return Status::unavailable(
                    "the audit log is not writable, so nothing was decided; retry later",
                );
            }
            GatewayError::Store(_) | GatewayError::NotApplicable(_) => {
                warn!(error = %e, "store read failed");
                return Status::internal("internal error; the operator has been told");
            }
        };
        Status::new(code, e.to_string())
    }
}
