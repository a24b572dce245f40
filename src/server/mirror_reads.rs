//! Reads of a down node's applications from a mirror (cluster mode; issue
//! 10 item 6, issue 11 item 4).
//!
//! GetApplication / WatchApplication of another node's application go to
//! its owner ([`super::peers`]). When the owner cannot be reached, the read
//! is answered from a verified mirror of the owner's log:
//! - this node's own mirror of it, if it keeps one (in a cluster each node
//!   mirrors the next node by id by default; `--mirror URL` adds more);
//! - otherwise each other live node of the directory is asked in turn (by
//!   node id), with the same forwarded GetApplication: a node that receives a
//!   forwarded read of an application it does not own answers from its own
//!   mirror, or NOT_FOUND. The first mirror holding the application answers.
//!   Who mirrors whom is not recorded in etcd: the default follows the live
//!   directory (it changes as nodes come and go) and `--mirror` targets are
//!   local choices, so asking the few live nodes is both simpler and right.
//!
//! The state is computed from the mirror's verified entries by THE
//! projection ([`crate::audit::mirrored_application`]), marked with
//! [`MirrorRead`] (which node, which origin, the signed checkpoint it
//! reflects), and checked with the same rule as the owner's (a hall reads
//! only its own applications). Mirrored data are read-only: a completion or
//! a decision for a down node's application is still UNAVAILABLE naming it.

use thiserror::Error;

use super::audit::Logs;
use crate::audit::StoreError;
use crate::pb::{Application, MirrorRead};

/// Why a mirror did not answer a read.
#[derive(Debug, Error)]
pub enum MirrorReadError {
    /// This node keeps no mirror of the owner's log.
    #[error("application {application_id}: node `{node}` keeps no mirror of {origin}")]
    NotMirroredHere {
        application_id: String,
        node: String,
        origin: String,
    },
    /// The mirror does not hold it (yet): not in its verified entries.
    #[error("application {application_id} is not in node `{node}`'s mirror of {origin} (verified up to size {tree_size})")]
    NotInMirror {
        application_id: String,
        node: String,
        origin: String,
        tree_size: u64,
    },
    #[error("the mirror of {origin} cannot be read: {source}")]
    Store {
        origin: String,
        #[source]
        source: StoreError,
    },
    /// A watch answered from a mirror: it gave the mirrored state, which
    /// is not final; updates need the owner.
    #[error("application {application_id}: its owner node `{owner}` cannot be reached, so the watch gave its state as mirrored by node `{node}` (up to size {tree_size}) and ends here; watch again to follow it once `{owner}` is back")]
    WatchEnded {
        application_id: String,
        owner: String,
        node: String,
        tree_size: u64,
    },
}

/// This node's mirrors, as a source of reads.
#[derive(Clone)]
pub(super) struct MirrorReads {
    node_id: String,
    logs: Logs,
}

impl MirrorReads {
    pub(super) fn new(node_id: String, logs: Logs) -> Self {
        Self { node_id, logs }
    }

    /// `application_id` of `owner` as this node's mirror of the owner's log
    /// holds it, marked as served from a mirror. Who may read it is the
    /// caller's check (the same as for the owner's answer).
    pub(super) fn local(
        &self,
        owner: &str,
        application_id: &str,
    ) -> Result<Application, MirrorReadError> {
        let origin = crate::security::log_origin(owner);
        let held = self
            .logs
            .mirror(&origin)
            .and_then(|reader| reader.mirrored_application(application_id))
            .ok_or_else(|| MirrorReadError::NotMirroredHere {
                application_id: application_id.to_owned(),
                node: self.node_id.clone(),
                origin: origin.clone(),
            })?
            .map_err(|source| MirrorReadError::Store {
                origin: origin.clone(),
                source,
            })?;
        let Some(application) = held.application else {
            return Err(MirrorReadError::NotInMirror {
                application_id: application_id.to_owned(),
                node: self.node_id.clone(),
                origin,
                tree_size: held.tree_size,
            });
        };
        Ok(Application {
            served_from_mirror: Some(MirrorRead {
                mirror_node_id: self.node_id.clone(),
                origin,
                tree_size: held.tree_size,
                checkpoint: held.checkpoint,
            }),
            ..application
        })
    }
}
