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
    /// The system's random source failed, so no application id can be
    /// drawn: nothing was decided.
    #[error("this node cannot draw random numbers for an application id, so nothing was decided; retry on another node")]
    NoRandom,
    /// A retried request whose decision this node's store shows but its log
    /// did not make durable (a flush failed; the log refuses appends until
    /// the node restarts): not answered, since a crash may still lose it.
    #[error("the decision for this request_id is not durable on this node (its audit log could not be flushed); retry with the same request_id, on another node or after this one restarts")]
    NotDurable,
    /// Logged here, but not yet held by the mirrors `serve --mirror-ack`
    /// requires: not answered. (The application id is not told: until it
    /// is answered, the decision is not the caller's to rely on.)
    #[error("{}", not_replicated(*completion, cause))]
    NotReplicated {
        /// A completion (resent as it is), not a submission or a read.
        completion: bool,
        #[source]
        cause: crate::audit::NotReplicated,
    },
}

fn not_replicated(completion: bool, cause: &crate::audit::NotReplicated) -> String {
    let (required, held_by) = (cause.required, cause.held_by);
    if completion {
        format!("the completion was logged on this node but is not yet on enough mirrors to be acknowledged ({held_by} of {required} hold it); send the same completion again: it is answered once they do")
    } else {
        format!("the application is logged on this node but not yet on enough mirrors to be answered ({held_by} of {required} hold it); retry with the same request_id: you get this decision once they do (or, should this node fail first, the one decision the cluster makes for it)")
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
