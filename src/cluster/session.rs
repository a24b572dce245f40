//! A node's etcd session: its lease, its directory record, and whether it
//! may decide.
//!
//! - **Join**: grant a lease, then put the record only if the key is absent
//!   (`create_revision == 0`), in one transaction: a second live node with
//!   the same id finds the key taken and is refused.
//! - **Keep**: renew the lease every [`RENEW_EVERY`]; republish the record
//!   when its tree size or policy version changed.
//! - **Lose**: a renewal that fails or times out, or a lease etcd no longer
//!   knows, ends the session at once: the node stops deciding
//!   (reservations answer [`ClusterError::NotLive`]) and health
//!   says NOT_SERVING for ApplicationService.
//! - **Recover**: every [`RETRY_EVERY`], grant a new lease and put the record
//!   under it — if the key is absent, or still held by our previous lease.
//!   No restart, no manual step. A key held by some other lease means
//!   another node took the id meanwhile: the node keeps not deciding, and
//!   says so in its log.
//!
//! Each decision is gated by its reservation ([`super::Reservations`]): the
//! transaction that reserves the request also compares this node's record
//! against its lease, so a node that lost etcd between two renewals does
//! not decide on a stale belief that it is live.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    bounded, ClusterError, ClusterOptions, NodeRecord, CALL_TIMEOUT, LEASE_TTL, RENEW_EVERY,
    RETRY_EVERY,
};

/// What changes in a node's record while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    pub tree_size: u64,
    pub policy_version: String,
    /// Unix ms now, on the node's clock.
    pub now_unix_ms: u64,
}

/// Reads the node's current [`Progress`]; handed in by the server, so this
/// module needs nothing from the layers that hold the state.
pub type ProgressFn = Arc<dyn Fn() -> Progress + Send + Sync>;

pub(super) struct Shared {
    pub(super) options: ClusterOptions,
    pub(super) client: Client,
    pub(super) key: String,
    /// The lease the record is attached to now (0: none).
    lease: AtomicI64,
    live: watch::Sender<bool>,
    record: Mutex<NodeRecord>,
    progress: ProgressFn,
    /// Woken when a reservation finds etcd gone or our record lost, so
    /// recovery starts at once.
    lost: Notify,
}

impl Shared {
    pub(super) fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    pub(super) fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// A reservation found that this node cannot decide (etcd gone, or its
    /// record no longer under its lease): stop deciding, recover now.
    pub(super) fn lost_session(&self) {
        self.set_live(false);
        self.lost.notify_one();
    }

    fn record_json(&self) -> String {
        self.record.lock().map(|r| r.to_json()).unwrap_or_default()
    }

    /// Folds the node's progress into the record; true if it changed.
    fn refresh_record(&self) -> bool {
        let progress = (self.progress)();
        let Ok(mut record) = self.record.lock() else {
            return false;
        };
        let changed = record.tree_size != progress.tree_size
            || record.policy_version != progress.policy_version;
        record.tree_size = progress.tree_size;
        record.policy_version = progress.policy_version;
        if changed {
            record.updated_unix_ms = progress.now_unix_ms;
        }
        changed
    }

    fn set_live(&self, live: bool) {
        let was = self.live.send_replace(live);
        match (was, live) {
            (true, false) => {
                warn!(key = %self.key, "etcd session lost: this node decides nothing until it is back")
            }
            (false, true) => {
                info!(key = %self.key, lease = %format!("{:x}", self.lease()), "etcd session live: deciding again")
            }
            _ => {}
        }
    }

    async fn put_if(&self, compare: Compare, lease: i64) -> Result<PutOutcome, ClusterError> {
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(
                self.key.as_bytes(),
                self.record_json(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.key.as_bytes(), None)]);
        let response = bounded(&self.options, self.client.clone().txn(txn)).await?;
        if response.succeeded() {
            return Ok(PutOutcome::Put);
        }
        let holder = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                let address = serde_json::from_slice::<NodeRecord>(kv.value())
                    .map(|r| r.address)
                    .unwrap_or_else(|_| "an unreadable record".into());
                (kv.lease(), address)
            }),
            _ => None,
        });
        Ok(match holder {
            Some((lease, address)) => PutOutcome::Held { lease, address },
            // Deleted between the compare and the read: try again.
            None => PutOutcome::Retry,
        })
    }

    async fn grant(&self) -> Result<i64, ClusterError> {
        let ttl = LEASE_TTL.as_secs() as i64;
        Ok(
            bounded(&self.options, self.client.clone().lease_grant(ttl, None))
                .await?
                .id(),
        )
    }

    async fn revoke(&self, lease: i64) {
        if lease != 0 {
            let _ = bounded(&self.options, self.client.clone().lease_revoke(lease)).await;
        }
    }

    /// One renewal round trip; Ok(false): etcd no longer knows the lease.
    async fn renew(&self) -> Result<bool, ClusterError> {
        let lease = self.lease();
        let mut client = self.client.clone();
        let round_trip = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.is_some_and(|r| r.ttl() > 0))
        };
        bounded(&self.options, round_trip).await
    }

    async fn publish(&self) -> Result<(), ClusterError> {
        let lease = self.lease();
        let mut client = self.client.clone();
        bounded(
            &self.options,
            client.put(
                self.key.as_bytes(),
                self.record_json(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await
        .map(|_| ())
    }

    /// Tries once to get a session back: a new lease, the record under it.
    async fn recover(&self) -> Result<bool, ClusterError> {
        let old = self.lease();
        let new = self.grant().await?;
        self.refresh_record();
        let mut outcome = self
            .put_if(
                Compare::create_revision(self.key.as_bytes(), CompareOp::Equal, 0),
                new,
            )
            .await?;
        if let PutOutcome::Held { lease, .. } = &outcome {
            if *lease == old && old != 0 {
                // Our own record, from before the cut: move it to the new lease.
                outcome = self
                    .put_if(
                        Compare::lease(self.key.as_bytes(), CompareOp::Equal, old),
                        new,
                    )
                    .await?;
            }
        }
        match outcome {
            PutOutcome::Put => {
                self.lease.store(new, Ordering::SeqCst);
                self.revoke(old).await;
                Ok(true)
            }
            PutOutcome::Held { address, .. } => {
                self.revoke(new).await;
                warn!(key = %self.key, %address, "while this node was cut off from etcd another live node took its id; not deciding");
                Ok(false)
            }
            PutOutcome::Retry => {
                self.revoke(new).await;
                Ok(false)
            }
        }
    }
}

enum PutOutcome {
    Put,
    Held { lease: i64, address: String },
    Retry,
}

/// The node's membership in the cluster; dropping it stops the renewals
/// (the record then expires with its lease), [`Session::leave`] removes the
/// record at once.
pub struct Session {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Session {
    /// Registers the node: refused with [`ClusterError::NodeIdTaken`] when a
    /// live node holds the id; an etcd that does not answer within
    /// [`CALL_TIMEOUT`] is [`ClusterError::Timeout`].
    pub async fn join(
        options: ClusterOptions,
        record: NodeRecord,
        progress: ProgressFn,
    ) -> Result<Session, ClusterError> {
        let client = super::connect(&options).await?;
        let key = options.node_key(&record.node_id);
        let (live, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            options,
            client,
            key,
            lease: AtomicI64::new(0),
            live,
            record: Mutex::new(record),
            progress,
            lost: Notify::new(),
        });
        let lease = shared.grant().await?;
        shared.refresh_record();
        let outcome = shared
            .put_if(
                Compare::create_revision(shared.key.as_bytes(), CompareOp::Equal, 0),
                lease,
            )
            .await?;
        match outcome {
            PutOutcome::Put => {}
            PutOutcome::Held { address, .. } => {
                shared.revoke(lease).await;
                let node_id = shared
                    .record
                    .lock()
                    .map(|r| r.node_id.clone())
                    .unwrap_or_default();
                return Err(ClusterError::NodeIdTaken {
                    node_id,
                    key: shared.key.clone(),
                    address,
                });
            }
            PutOutcome::Retry => {
                shared.revoke(lease).await;
                return Err(ClusterError::Config(format!(
                    "{} changed while this node registered; start it again",
                    shared.key
                )));
            }
        }
        shared.lease.store(lease, Ordering::SeqCst);
        shared.set_live(true);
        info!(key = %shared.key, lease = %format!("{lease:x}"), endpoints = %shared.options.endpoints_text(), "joined the cluster");
        let task = tokio::spawn(maintain(Arc::clone(&shared)));
        Ok(Session { shared, task })
    }

    /// The reservations of requests this node decides, kept for `window`;
    /// `digest_key` names the key request digests are made with.
    pub fn reservations(
        &self,
        node_id: &str,
        window: std::time::Duration,
        digest_key: String,
    ) -> super::Reservations {
        super::Reservations::new(
            Arc::clone(&self.shared),
            node_id.to_owned(),
            window,
            digest_key,
        )
    }

    /// True while the session is live; changes as it is lost and regained.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shared.live.subscribe()
    }

    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Stops renewing and revokes the lease, so the record goes now rather
    /// than when the lease runs out.
    pub async fn leave(self) {
        self.task.abort();
        self.shared.set_live(false);
        self.shared.revoke(self.shared.lease()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews while live; recovers while not.
async fn maintain(shared: Arc<Shared>) {
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shared.live.borrow() {
            tokio::select! {
                _ = renew.tick() => {}
                _ = shared.lost.notified() => continue,
            }
            let kept = match shared.renew().await {
                Ok(true) => {
                    if shared.refresh_record() {
                        shared.publish().await
                    } else {
                        Ok(())
                    }
                }
                Ok(false) => {
                    warn!(key = %shared.key, "etcd no longer knows this node's lease");
                    Err(ClusterError::NotLive)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = kept {
                warn!(error = %e, "etcd session renewal failed");
                shared.set_live(false);
            }
        } else {
            match shared.recover().await {
                Ok(true) => {
                    shared.set_live(true);
                    renew.reset();
                }
                Ok(false) => tokio::time::sleep(RETRY_EVERY).await,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd still unreachable");
                    tokio::time::sleep(RETRY_EVERY.max(CALL_TIMEOUT / 3)).await;
                }
            }
        }
    }
}
