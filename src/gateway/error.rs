//! Gateway errors; `server::status` turns them into gRPC statuses.

use thiserror::Error;

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
    #[error("the audit log cannot take the decision")]
    Audit(#[from] AuditError),
    #[error("the store cannot be read")]
    Store(#[from] StoreError),
    /// An identical request was being decided and failed: nothing was
    /// decided for it.
    #[error(
        "an identical request that was being decided failed; nothing was decided for it; retry"
    )]
    DuplicateFailed,
    /// The task deciding the request ended abnormally.
    #[error("the decision task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    /// The stored state and the event disagree (the projection refused it).
    #[error("the application does not accept this change")]
    NotApplicable(#[from] ApplyError),
    /// Decided and durable here, but not yet held by the mirrors `serve
    /// --mirror-ack` requires: not acknowledged; a retry of the same request
    /// gets this decision once they hold it.
    #[error("application `{application_id}` was decided and logged on this node, but is not yet on enough mirrors to be acknowledged: {cause}; nothing is lost or decided twice: retry with the same request_id")]
    NotReplicated {
        application_id: String,
        #[source]
        cause: crate::audit::NotReplicated,
    },
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
