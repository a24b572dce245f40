//! The one error boundary: every service's error enum becomes a
//! `tonic::Status` here, one arm per variant.
//!
//! - bad input: INVALID_ARGUMENT with a readable message and
//!   `google.rpc.BadRequest` details, one field violation per bad field;
//! - NOT_FOUND, PERMISSION_DENIED (the gates), RESOURCE_EXHAUSTED with a
//!   retry hint, UNAVAILABLE (the log cannot take a change; retry later);
//! - anything unexpected is logged with `warn!`, cause included, and answered
//!   as an opaque INTERNAL: no internals, no personal data.

use std::error::Error;
use std::fmt::Write as _;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::warn;

use crate::audit::{AuditError, ReadError};
use crate::cluster::ClusterError;
use crate::departments::{DirectoryError, RegistryError};
use crate::gateway::GatewayError;
use crate::merkle::ProofError;
use crate::operations::OperationsError;

use super::mirror_reads::MirrorReadError;

/// INVALID_ARGUMENT: `message` for people, one BadRequest field violation
/// per `(field, description)` for programs.
pub fn invalid_argument(
    message: impl Into<String>,
    violations: impl IntoIterator<Item = (String, String)>,
) -> Status {
    let mut details = ErrorDetails::new();
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INVALID_ARGUMENT about one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    invalid_argument(
        format!("{field}: {description}"),
        [(field.to_owned(), description)],
    )
}

/// RESOURCE_EXHAUSTED with a retry hint; built by the gates, below this layer.
pub use crate::security::resource_exhausted;

/// The error and its causes, for the operator's log only.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Logged for the operator, answered opaquely.
fn internal(e: &dyn Error) -> Status {
    warn!(error = %chain(e), "internal error answered as INTERNAL");
    Status::internal("internal error; the operator has been told")
}

/// The audit log cannot take a change: nothing was done, the caller retries.
fn log_unavailable(e: &dyn Error, message: String) -> Status {
    warn!(error = %chain(e), "change not logged");
    Status::unavailable(message)
}

/// The retry hint of a request still being decided, or decided by a node
/// that cannot be reached now.
const CLUSTER_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// UNAVAILABLE with a `google.rpc.RetryInfo` hint.
fn unavailable_retry(message: String, after: std::time::Duration) -> Status {
    let mut status = Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(after)),
    );
    if let Ok(value) = after.as_millis().max(1).to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    status
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match &e {
            GatewayError::Invalid(violations) => invalid_argument(
                e.to_string(),
                violations
                    .iter()
                    .map(|v| (v.field.clone(), v.description.clone())),
            ),
            GatewayError::UnknownMatter(_) => Status::not_found(e.to_string()),
            GatewayError::UnknownApplication(_) => Status::not_found(e.to_string()),
            GatewayError::UnknownTicket { .. } => Status::not_found(e.to_string()),
            GatewayError::RequestIdReused(_) => Status::already_exists(e.to_string()),
            GatewayError::BadSignature(_) => Status::unauthenticated(e.to_string()),
            GatewayError::TicketNotYetRecorded => Status::unavailable(e.to_string()),
            GatewayError::Audit(AuditError::Halted(_)) => log_unavailable(
                &e,
                "this node's audit log refuses appends until the node restarts, so nothing was decided here; retry with the same request_id on another node or after the restart".into(),
            ),
            // A failed flush may still leave the decision on disk: the same
            // request_id gets it then, and nothing is decided twice.
            GatewayError::Audit(_) => log_unavailable(
                &e,
                "the audit log could not record the decision, so it is not answered; retry later with the same request_id".into(),
            ),
            GatewayError::NoRandom => Status::unavailable(e.to_string()),
            GatewayError::NotDurable => {
                unavailable_retry(e.to_string(), std::time::Duration::from_secs(1))
            }
            GatewayError::Store(_) => internal(&e),
            // The stored state refused the event: a bug or a race the
            // gateway should have caught, not something the caller can fix.
            GatewayError::NotApplicable(_) => internal(&e),
            GatewayError::DuplicateFailed => Status::unavailable(e.to_string()),
            GatewayError::Task(_) => internal(&e),
            GatewayError::NotReplicated { .. } => {
                unavailable_retry(e.to_string(), std::time::Duration::from_secs(1))
            }
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Invalid { field, problem } => {
                invalid_argument(problem.clone(), [((*field).to_owned(), problem.clone())])
            }
            RegistryError::Directory(d) => directory_status(d),
            RegistryError::NotRegistered(_) => Status::not_found(e.to_string()),
            RegistryError::Log(_) => log_unavailable(&e, e.to_string()),
            RegistryError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// A registration the directory refuses, naming the field.
fn directory_status(e: &DirectoryError) -> Status {
    let field = match e {
        DirectoryError::BadDepartmentId => "source.department_id",
        DirectoryError::BadEndpoint(_) => "source.endpoint",
        DirectoryError::PlaintextEndpoint(_) => "source.endpoint",
        DirectoryError::BadPublicKey(_) => "source.answer_public_key",
        DirectoryError::ServesNothing => "source.queries",
    };
    invalid_argument(e.to_string(), [(field.to_owned(), e.to_string())])
}

fn proof_status(e: &ProofError) -> Status {
    let field = match e {
        ProofError::IndexOutOfRange { .. } => "index",
        ProofError::SizesOutOfOrder { .. } => "old_size",
        ProofError::BeyondLog { .. } => "tree_size",
        ProofError::Store(_) => return internal(e),
    };
    invalid_argument(e.to_string(), [(field.to_owned(), e.to_string())])
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        match &e {
            ReadError::NoCheckpoint | ReadError::NoCheckpointAt(_) => {
                Status::not_found(e.to_string())
            }
            ReadError::UnknownOrigin { .. } => Status::not_found(e.to_string()),
            ReadError::PastTheLog { .. } => Status::out_of_range(e.to_string()),
            ReadError::Invalid { field, problem } => invalid_field(field, problem.clone()),
            ReadError::Proof(p) => proof_status(p),
            ReadError::Store(_) => internal(&e),
            ReadError::Missing(_) => internal(&e),
            ReadError::Decode { .. } => internal(&e),
            ReadError::QuorumUnreachable { .. } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation("min_cosignatures", e.to_string());
                Status::with_error_details(Code::FailedPrecondition, e.to_string(), details)
            }
            ReadError::NotCosigned { .. } => Status::not_found(e.to_string()),
        }
    }
}

impl From<OperationsError> for Status {
    fn from(e: OperationsError) -> Self {
        match &e {
            OperationsError::Invalid { field, problem } => invalid_field(field, problem.clone()),
            OperationsError::NoSpotCheck { .. } => Status::not_found(e.to_string()),
            OperationsError::NoDishonesty => Status::not_found(e.to_string()),
            OperationsError::Log(..) => log_unavailable(&e, e.to_string()),
            OperationsError::Shared(_) => Status::unavailable(e.to_string()),
            OperationsError::Store(_) => internal(&e),
            OperationsError::Task(_) => internal(&e),
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        match &e {
            // The node may not decide without a live etcd session: nothing
            // was decided, the caller retries later or on another node.
            ClusterError::NotLive | ClusterError::Watch(_) => Status::unavailable(e.to_string()),
            ClusterError::Etcd { .. } | ClusterError::Timeout { .. } => log_unavailable(
                &e,
                "the cluster's etcd cannot be reached, so nothing was decided; retry later or on another node".into(),
            ),
            // Nothing new was decided; the same request_id gets the one
            // decision the cluster keeps.
            ClusterError::StillDeciding { .. }
            | ClusterError::Unconfirmed { .. }
            | ClusterError::TakenOver { .. }
            | ClusterError::OwnerUnreachable { .. } => {
                unavailable_retry(e.to_string(), CLUSTER_RETRY_AFTER)
            }
            // An operator's mistake (nodes with different pseudonym keys):
            // logged for them, opaque to the caller.
            ClusterError::NodeIdTaken { .. }
            | ClusterError::Config(_)
            | ClusterError::ReadTls { .. }
            | ClusterError::DigestKeyMismatch { .. }
            | ClusterError::BadRecord { .. } => internal(&e),
        }
    }
}

impl From<MirrorReadError> for Status {
    fn from(e: MirrorReadError) -> Self {
        match &e {
            // Asked of a node as one possible mirror: the asker tries the
            // next one.
            MirrorReadError::NotMirroredHere { .. } | MirrorReadError::NotInMirror { .. } => {
                Status::not_found(e.to_string())
            }
            MirrorReadError::Store { .. } => internal(&e),
            // The watcher watches again later, at any node.
            MirrorReadError::WatchEnded { .. } => {
                unavailable_retry(e.to_string(), CLUSTER_RETRY_AFTER)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::FieldViolation;
    use std::time::Duration;

    #[test]
    fn invalid_requests_carry_one_violation_per_field() {
        let status: Status = GatewayError::Invalid(vec![
            FieldViolation {
                field: "request_id".into(),
                description: "is required".into(),
            },
            FieldViolation {
                field: "applicant.name".into(),
                description: "is required".into(),
            },
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("applicant.name"));
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["request_id", "applicant.name"]);
    }

    #[test]
    fn a_node_without_its_etcd_session_says_nothing_was_decided() {
        let status: Status = ClusterError::NotLive.into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("nothing was decided"));
    }

    #[test]
    fn unexpected_errors_are_opaque() {
        let status: Status = ReadError::Missing(7).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains('7'));
    }

    #[test]
    fn a_request_still_being_decided_elsewhere_is_unavailable_with_a_retry_hint() {
        let status: Status = ClusterError::StillDeciding {
            owner: "node-1".into(),
            request_id: "r-7".into(),
        }
        .into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("node `node-1`") && status.message().contains("r-7"));
        let retry = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(CLUSTER_RETRY_AFTER));
        let owner_down: Status = ClusterError::OwnerUnreachable {
            owner: "node-2".into(),
            what: "application node-2.ab".into(),
            reason: "connection refused".into(),
        }
        .into();
        assert_eq!(owner_down.code(), Code::Unavailable);
        assert!(owner_down.message().contains("node `node-2`"));
        let keys: Status = ClusterError::DigestKeyMismatch {
            owner: "node-3".into(),
        }
        .into();
        assert_eq!(keys.code(), Code::Internal);
        assert!(!keys.message().contains("pseudonym.key"));
    }

    #[test]
    fn exhausted_carries_a_retry_hint() {
        let status = resource_exhausted("slow down", Duration::from_millis(250));
        let retry = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
    }
}
