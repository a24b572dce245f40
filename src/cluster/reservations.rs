//! Idempotency across nodes: one reservation per `(caller, request_id)`
//! under `<prefix>requests/<caller>/<request_id>`, so a hall's retry finds
//! the first attempt on whichever node it lands.
//!
//! - **Reserve** (one etcd write): a transaction that creates the key only if
//!   it is absent *and* this node's directory record is still under its
//!   lease. So a node decides nothing without an etcd quorum and a live
//!   session: the reservation is what gates a decision (it replaced the
//!   linearizable read made before each decision).
//! - **Mark decided** (the second write): once the decision is durable in the
//!   node's own log, the reservation gets its application id — only if it
//!   is unchanged since this node wrote it (its mod revision). Only then is
//!   the hall answered: an acknowledged decision is always the one etcd names.
//! - **Take over**: a reservation whose owner's session is gone (its record is
//!   absent or under another lease) and that names no decision is rewritten
//!   by the node that found it, compared on its mod revision, so two nodes
//!   cannot both take it.
//! - **Expire**: every key carries the lease of its hour (one lease per hour
//!   and node, time to live = the idempotency window + 1 h), so a
//!   reservation lives at least the window, and etcd drops it after.
//!
//! The value is JSON, for operators who read it with `etcdctl`: owner node,
//! the owner's session lease, the keyed request digest (hex), the id of the
//! key that made the digest, the application id once decided.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};

use super::batch::{BatchError, Batcher, Limits};
use super::session::Shared;
use super::{bounded, ClusterError};

/// How long a reservation is kept when `--idempotency-window` is not given.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Pause before the one retry of a failed transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Reservations made in the same hour share one lease.
const BUCKET_MS: u64 = 3_600_000;

/// What etcd holds for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The node that decides (or decided) it.
    pub owner: String,
    /// The owner's session lease when it reserved: the owner is live while
    /// its directory record is under this lease.
    pub owner_lease: i64,
    /// Keyed digest of the request (hex): a retry must carry the same request.
    pub digest: String,
    /// Which key made the digest (nodes of one cluster share it).
    pub digest_key: String,
    /// The decision, once durable in the owner's log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application_id: String,
    /// When it was reserved (Unix ms, the owner's clock).
    pub reserved_unix_ms: u64,
}

impl Reservation {
    /// The application decided for the request, once marked.
    pub fn decided(&self) -> Option<&str> {
        (!self.application_id.is_empty()).then_some(self.application_id.as_str())
    }

    fn to_json(&self) -> String {
        // Strings and integers always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The outcome of [`Reservations::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// This node holds the reservation, written at `revision`: decide.
    Ours { revision: i64 },
    /// The request was reserved before (by any node, this one included).
    Held {
        reservation: Reservation,
        revision: i64,
    },
}

/// `/` and `%` escaped, so a caller or request id cannot reach into another
/// key's path.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

/// The key of a request's reservation under `prefix`.
pub fn request_key(prefix: &str, caller: &str, request_id: &str) -> String {
    format!("{prefix}requests/{}/{}", escape(caller), escape(request_id))
}

/// The reservations of one node; cheap to clone.
#[derive(Clone)]
pub struct Reservations {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    node_id: String,
    window: Duration,
    digest_key: String,
    /// Hour bucket → its lease.
    buckets: Mutex<HashMap<u64, i64>>,
    /// Every write goes through it: one etcd transaction per batch.
    batcher: Batcher<Txn, Outcome, ClusterError>,
}

impl Reservations {
    pub(super) fn new(
        shared: Arc<Shared>,
        node_id: String,
        window: Duration,
        digest_key: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::clone(&shared),
                node_id,
                window,
                digest_key,
                buckets: Mutex::new(HashMap::new()),
                batcher: Batcher::start_with(EtcdTxns(Arc::clone(&shared)), Limits::from_env()),
            }),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Held by this node under its current session.
    pub fn is_ours(&self, held: &Reservation) -> bool {
        let shared = &self.inner.shared;
        held.owner == self.inner.node_id && held.owner_lease == shared.lease() && shared.is_live()
    }

    /// The last known state of the session, without asking etcd.
    pub fn is_live(&self) -> bool {
        self.inner.shared.is_live()
    }

    fn key(&self, caller: &str, request_id: &str) -> String {
        request_key(&self.inner.shared.options.prefix, caller, request_id)
    }

    fn record(&self, digest: &[u8; 32], lease: i64, now_unix_ms: u64) -> Reservation {
        Reservation {
            owner: self.inner.node_id.clone(),
            owner_lease: lease,
            digest: hex::encode(digest),
            digest_key: self.inner.digest_key.clone(),
            application_id: String::new(),
            reserved_unix_ms: now_unix_ms,
        }
    }

    /// Checks that a held reservation is for this very request.
    pub fn same_request(
        &self,
        held: &Reservation,
        digest: &[u8; 32],
    ) -> Result<bool, ClusterError> {
        if held.digest_key != self.inner.digest_key {
            return Err(ClusterError::DigestKeyMismatch {
                owner: held.owner.clone(),
            });
        }
        Ok(held.digest == hex::encode(digest))
    }

    /// One transaction, through the batcher (with the writes of concurrent
    /// submissions when etcd is busy; alone and at once when it is idle). An
    /// etcd error (e.g. the member this client talked to just died) is tried
    /// once more after a short pause, on whichever member the client reaches
    /// then. Every transaction here compares before it writes, so a second
    /// try never writes twice; a first try whose answer was lost shows as a
    /// failed compare, which the callers check.
    async fn txn(&self, key: &str, txn: Txn) -> Result<Outcome, ClusterError> {
        let shared = &self.inner.shared;
        let once = || async {
            self.inner
                .batcher
                .write(key.to_owned(), txn.clone())
                .await
                .unwrap_or_else(|| {
                    Err(ClusterError::Timeout {
                        endpoints: shared.options.endpoints_text(),
                        timeout: super::CALL_TIMEOUT,
                    })
                })
        };
        let mut result = once().await;
        if let Err(ClusterError::Etcd { source, .. }) = &result {
            tracing::debug!(error = %source, "etcd transaction failed; trying once more");
            // Time for the client to drop a connection that just broke.
            tokio::time::sleep(RETRY_PAUSE).await;
            result = once().await;
        }
        if let Err(ClusterError::Etcd { source, .. }) = &result {
            if source.to_string().contains("lease not found") {
                // A bucket lease etcd no longer knows: grant a new one next time.
                lock(&self.inner.buckets).clear();
            }
        }
        result
    }

    /// (etcd transactions, reservation writes) this node has sent: under
    /// load one transaction carries several writes.
    pub fn etcd_counts(&self) -> (u64, u64) {
        self.inner.batcher.counts()
    }

    /// One read (`get` with `options`), tried once more after a short pause
    /// on an etcd error, as [`Self::txn`].
    async fn read(
        &self,
        key: &str,
        options: Option<etcd_client::GetOptions>,
    ) -> Result<etcd_client::GetResponse, ClusterError> {
        let shared = &self.inner.shared;
        let once = || {
            let mut client = shared.client.clone();
            let options = options.clone();
            async move { bounded(&shared.options, client.get(key.as_bytes(), options)).await }
        };
        match once().await {
            Err(ClusterError::Etcd { source, .. }) => {
                tracing::debug!(error = %source, "etcd read failed; trying once more");
                tokio::time::sleep(RETRY_PAUSE).await;
                once().await
            }
            result => result,
        }
    }

    /// The lease of `now`'s hour, granted on first use.
    async fn bucket_lease(&self, now_unix_ms: u64) -> Result<i64, ClusterError> {
        let bucket = now_unix_ms / BUCKET_MS;
        if let Some(lease) = lock(&self.inner.buckets).get(&bucket) {
            return Ok(*lease);
        }
        let ttl = self.inner.window.as_secs().saturating_add(BUCKET_MS / 1000);
        let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
        let shared = &self.inner.shared;
        let granted = bounded(
            &shared.options,
            shared.client.clone().lease_grant(ttl, None),
        )
        .await?;
        let mut buckets = lock(&self.inner.buckets);
        // Keys keep their leases; only the current hour's is handed out.
        buckets.retain(|b, _| *b >= bucket);
        Ok(*buckets.entry(bucket).or_insert(granted.id()))
    }

    /// Reserves the request for this node, or tells who holds it. Refused
    /// with [`ClusterError::NotLive`] when this node's session is not live
    /// in etcd at this moment: nothing may be decided then.
    pub async fn reserve(
        &self,
        caller: &str,
        request_id: &str,
        digest: &[u8; 32],
        now_unix_ms: u64,
    ) -> Result<Reserved, ClusterError> {
        let shared = &self.inner.shared;
        if !shared.is_live() {
            return Err(ClusterError::NotLive);
        }
        let key = self.key(caller, request_id);
        let bucket = self.bucket_lease(now_unix_ms).await?;
        let lease = shared.lease();
        let value = self.record(digest, lease, now_unix_ms).to_json();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_bytes(), CompareOp::Equal, 0),
                Compare::lease(shared.key.as_bytes(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::put(
                key.as_bytes(),
                value,
                Some(PutOptions::new().with_lease(bucket)),
            )])
            .or_else([
                TxnOp::get(key.as_bytes(), None),
                TxnOp::get(shared.key.as_bytes(), None),
            ]);
        let response = self
            .txn(&key, txn)
            .await
            .inspect_err(|_| shared.lost_session())?;
        if response.succeeded {
            return Ok(Reserved::Ours {
                revision: response.revision,
            });
        }
        let (request, node) = two_gets(response.ops);
        if node
            .as_ref()
            .is_none_or(|(_, node_lease, _)| *node_lease != lease)
        {
            tracing::warn!(key = %shared.key, "this node's record is gone or under another lease");
            shared.lost_session();
            return Err(ClusterError::NotLive);
        }
        match request {
            Some((value, _, revision)) => Ok(Reserved::Held {
                reservation: parse(&key, &value)?,
                revision,
            }),
            // Both compares cannot fail with the key absent and our record
            // in place; etcd changed between them only in theory.
            None => Err(ClusterError::Timeout {
                endpoints: shared.options.endpoints_text(),
                timeout: super::CALL_TIMEOUT,
            }),
        }
    }

    /// Marks the reservation decided with `application_id`, if it is still
    /// the one this node wrote at `revision`. False: another node took it
    /// over meanwhile, so this node's decision must not be acknowledged.
    pub async fn mark_decided(
        &self,
        caller: &str,
        request_id: &str,
        revision: i64,
        digest: &[u8; 32],
        application_id: &str,
        now_unix_ms: u64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(caller, request_id);
        let mut record = self.record(digest, self.inner.shared.lease(), now_unix_ms);
        application_id.clone_into(&mut record.application_id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                key.as_bytes(),
                record.to_json(),
                // Keeps the lease of the hour it was reserved in.
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        if self.txn(&key, txn).await?.succeeded {
            return Ok(true);
        }
        // A first try that wrote, whose answer was lost, looks like this too.
        Ok(self
            .get(caller, request_id)
            .await?
            .is_some_and(|(held, _)| held.decided() == Some(application_id)))
    }

    /// Gives up a reservation this node wrote at `revision` and decided
    /// nothing for, so a retry on any node can reserve it at once. False:
    /// it changed meanwhile (left as it is).
    pub async fn release(
        &self,
        caller: &str,
        request_id: &str,
        revision: i64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(caller, request_id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_bytes(), None)]);
        Ok(self.txn(&key, txn).await?.succeeded)
    }

    /// Claims a reservation that is absent (it expired) as decided by this
    /// node's `application_id`. False: someone holds it.
    pub async fn claim_decided(
        &self,
        caller: &str,
        request_id: &str,
        digest: &[u8; 32],
        application_id: &str,
        now_unix_ms: u64,
    ) -> Result<bool, ClusterError> {
        let key = self.key(caller, request_id);
        let bucket = self.bucket_lease(now_unix_ms).await?;
        let mut record = self.record(digest, self.inner.shared.lease(), now_unix_ms);
        application_id.clone_into(&mut record.application_id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_bytes(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                key.as_bytes(),
                record.to_json(),
                Some(PutOptions::new().with_lease(bucket)),
            )]);
        Ok(self.txn(&key, txn).await?.succeeded)
    }

    /// Takes over a reservation left by a dead owner, if it is still as read
    /// at `revision` and this node's session is live. Some(new revision):
    /// this node decides it now; None: it changed meanwhile, read it again.
    pub async fn take_over(
        &self,
        caller: &str,
        request_id: &str,
        revision: i64,
        digest: &[u8; 32],
        now_unix_ms: u64,
    ) -> Result<Option<i64>, ClusterError> {
        let shared = &self.inner.shared;
        if !shared.is_live() {
            return Err(ClusterError::NotLive);
        }
        let key = self.key(caller, request_id);
        let bucket = self.bucket_lease(now_unix_ms).await?;
        let lease = shared.lease();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_bytes(), CompareOp::Equal, revision),
                Compare::lease(shared.key.as_bytes(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::put(
                key.as_bytes(),
                self.record(digest, lease, now_unix_ms).to_json(),
                Some(PutOptions::new().with_lease(bucket)),
            )])
            .or_else([
                TxnOp::get(key.as_bytes(), None),
                TxnOp::get(shared.key.as_bytes(), None),
            ]);
        let response = self
            .txn(&key, txn)
            .await
            .inspect_err(|_| shared.lost_session())?;
        if response.succeeded {
            return Ok(Some(response.revision));
        }
        let (_, node) = two_gets(response.ops);
        if node
            .as_ref()
            .is_none_or(|(_, node_lease, _)| *node_lease != lease)
        {
            shared.lost_session();
            return Err(ClusterError::NotLive);
        }
        Ok(None)
    }

    /// The reservation of a request now, with its mod revision.
    pub async fn get(
        &self,
        caller: &str,
        request_id: &str,
    ) -> Result<Option<(Reservation, i64)>, ClusterError> {
        let key = self.key(caller, request_id);
        let response = self.read(&key, None).await?;
        response
            .kvs()
            .first()
            .map(|kv| Ok((parse(&key, kv.value())?, kv.mod_revision())))
            .transpose()
    }

    /// Whether the node that holds `reservation` still has the session it
    /// reserved with (its directory record under that lease).
    pub async fn owner_live(&self, reservation: &Reservation) -> Result<bool, ClusterError> {
        let shared = &self.inner.shared;
        if reservation.owner_lease == 0 {
            return Ok(false);
        }
        if reservation.owner == self.inner.node_id && reservation.owner_lease == shared.lease() {
            return Ok(shared.is_live());
        }
        let key = shared.options.node_key(&reservation.owner);
        let response = self.read(&key, None).await?;
        Ok(response
            .kvs()
            .first()
            .is_some_and(|kv| kv.lease() == reservation.owner_lease))
    }

    /// The address the owner node published in the directory, if it is there.
    pub async fn owner_address(&self, owner: &str) -> Result<Option<String>, ClusterError> {
        let key = self.inner.shared.options.node_key(owner);
        let response = self.read(&key, None).await?;
        Ok(response.kvs().first().and_then(|kv| {
            serde_json::from_slice::<super::NodeRecord>(kv.value())
                .ok()
                .map(|r| r.address)
        }))
    }

    /// The ids of the nodes in the directory now, this one excluded.
    pub async fn other_nodes(&self) -> Result<Vec<String>, ClusterError> {
        let prefix = self.inner.shared.options.nodes_prefix();
        let response = self
            .read(
                &prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(prefix.as_bytes()))
            .filter_map(|id| std::str::from_utf8(id).ok())
            .filter(|id| *id != self.inner.node_id)
            .map(str::to_owned)
            .collect())
    }

    /// Waits until the reservation changes after `revision` (decided, taken
    /// over, expired), or `at_most` passes, whichever is first.
    pub async fn wait_change(
        &self,
        caller: &str,
        request_id: &str,
        revision: i64,
        at_most: Duration,
    ) -> Result<(), ClusterError> {
        let shared = &self.inner.shared;
        let key = self.key(caller, request_id);
        let mut client = shared.client.clone();
        let wait = async {
            let mut stream = client
                .watch(
                    key.as_bytes(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            loop {
                match stream.message().await? {
                    Some(response) if !response.events().is_empty() => return Ok(()),
                    Some(response) if response.canceled() => return Ok(()),
                    Some(_) => continue,
                    None => return Ok(()),
                }
            }
        };
        match tokio::time::timeout(at_most, wait).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(source)) => Err(ClusterError::Etcd {
                endpoints: shared.options.endpoints_text(),
                source,
            }),
        }
    }
}

/// One write's answer: which branch its transaction took, the answers of
/// that branch's operations, and the revision of the transaction (a write
/// that succeeded has it as its key's mod revision).
#[derive(Debug)]
pub(super) struct Outcome {
    succeeded: bool,
    ops: Vec<TxnOpResponse>,
    revision: i64,
}

/// Sends the batcher's writes to etcd: one write as its own transaction,
/// several nested in one.
struct EtcdTxns(Arc<Shared>);

impl super::batch::Send<Txn, Outcome, ClusterError> for EtcdTxns {
    async fn send(&self, ops: Vec<Txn>) -> Result<Vec<Outcome>, BatchError<ClusterError>> {
        let shared = &self.0;
        let single = ops.len() == 1;
        let txn = match <[Txn; 1]>::try_from(ops) {
            Ok([txn]) => txn,
            Err(ops) => Txn::new().and_then(ops.into_iter().map(TxnOp::txn).collect::<Vec<_>>()),
        };
        let response = bounded(&shared.options, shared.client.clone().txn(txn))
            .await
            .map_err(|e| {
                if refused_for_a_write(&e) {
                    BatchError::Refused(e)
                } else {
                    BatchError::Shared(e)
                }
            })?;
        let revision = revision_of(&response);
        if single {
            return Ok(vec![Outcome {
                succeeded: response.succeeded(),
                ops: response.op_responses(),
                revision,
            }]);
        }
        Ok(response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Txn(nested) => Outcome {
                    succeeded: nested.succeeded(),
                    ops: nested.op_responses(),
                    revision,
                },
                // etcd answers a nested transaction with its answer; anything
                // else reads as a failed compare with nothing read, which
                // the callers treat as "read it again".
                _ => Outcome {
                    succeeded: false,
                    ops: Vec::new(),
                    revision,
                },
            })
            .collect())
    }

    fn copy(&self, error: &ClusterError) -> ClusterError {
        match error {
            ClusterError::Etcd {
                endpoints,
                source: etcd_client::Error::GRpcStatus(status),
            } => ClusterError::Etcd {
                endpoints: endpoints.clone(),
                source: etcd_client::Error::GRpcStatus(status.clone()),
            },
            ClusterError::Timeout { endpoints, timeout } => ClusterError::Timeout {
                endpoints: endpoints.clone(),
                timeout: *timeout,
            },
            ClusterError::Etcd { endpoints, source } => ClusterError::Etcd {
                endpoints: endpoints.clone(),
                source: etcd_client::Error::Internal(source.to_string()),
            },
            other => ClusterError::Etcd {
                endpoints: self.0.options.endpoints_text(),
                source: etcd_client::Error::Internal(other.to_string()),
            },
        }
    }
}

/// etcd refused the transaction for something in it (a lease it does not
/// know, a key written twice, too many operations, too large), not because
/// it cannot answer: each write is worth sending alone.
fn refused_for_a_write(error: &ClusterError) -> bool {
    matches!(
        error,
        ClusterError::Etcd {
            source: etcd_client::Error::GRpcStatus(status),
            ..
        } if matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
        )
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn revision_of(response: &etcd_client::TxnResponse) -> i64 {
    response.header().map(|h| h.revision()).unwrap_or_default()
}

/// (value, lease, mod revision) of a key read in a transaction.
type Read = Option<(Vec<u8>, i64, i64)>;

/// The two gets of a failed transaction's else branch.
fn two_gets(ops: Vec<TxnOpResponse>) -> (Read, Read) {
    let mut reads = ops.into_iter().map(|op| match op {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.lease(), kv.mod_revision())),
        _ => None,
    });
    let first = reads.next().flatten();
    let second = reads.next().flatten();
    (first, second)
}

fn parse(key: &str, value: &[u8]) -> Result<Reservation, ClusterError> {
    serde_json::from_slice(value).map_err(|source| ClusterError::BadRecord {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_slashes_so_ids_stay_in_their_folder() {
        assert_eq!(
            request_key("/proofgate/", "hall-1", "r/../x%"),
            "/proofgate/requests/hall-1/r%2F..%2Fx%25"
        );
        assert_ne!(
            request_key("/p/", "a/b", "c"),
            request_key("/p/", "a", "b/c")
        );
    }

    #[test]
    fn a_reservation_round_trips_and_says_when_it_is_decided() {
        let mut r = Reservation {
            owner: "node-1".into(),
            owner_lease: 0x694d,
            digest: hex::encode([7u8; 32]),
            digest_key: "k1".into(),
            application_id: String::new(),
            reserved_unix_ms: 1,
        };
        assert_eq!(r.decided(), None);
        assert!(!r.to_json().contains("application_id"));
        r.application_id = "node-1.abc".into();
        let back: Reservation = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.decided(), Some("node-1.abc"));
    }
}
