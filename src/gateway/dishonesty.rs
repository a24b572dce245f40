//! Cluster mode: the dishonesty records every node shares (etcd, under
//! `<prefix>dishonesty/<pseudonym-hex>`), as the gateway and the operations
//! see them. The server hands an implementation in
//! ([`super::Gateway::share_dishonesty`]); without one (one node, no etcd)
//! the node's own store is the only record, as before.

use crate::audit::DishonestyRecord;

/// The cluster's dishonesty records.
#[tonic::async_trait]
pub trait SharedDishonesty: Send + Sync {
    /// The record of this subject, if any. Err (why, for the log) when the
    /// node cannot be sure its copy is current: then no commitment that
    /// refuses dishonest applicants is accepted.
    fn lookup(&self, pseudonym: &[u8]) -> Result<Option<DishonestyRecord>, String>;

    /// Writes a record for every node (needs etcd with a quorum).
    async fn record(&self, pseudonym: &[u8], record: DishonestyRecord) -> Result<(), String>;

    /// Lifts a record on every node (needs etcd with a quorum).
    async fn revoke(&self, pseudonym: &[u8]) -> Result<(), String>;
}
