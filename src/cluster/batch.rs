//! Group commit for etcd writes: the reservation writes of concurrent
//! submissions (reserve, mark decided, release, take over) go to etcd
//! together, as one transaction whose operations are the writes' own
//! transactions, nested. Each nested transaction keeps its own compares, so
//! every write has its own outcome: a conflict on one key (the request was
//! reserved before) takes that write's `else` branch and leaves the others
//! alone. etcd 3.3 and later run nested transactions; every write of one
//! transaction gets the same revision, so the revision a write reports is
//! the batch's.
//!
//! - **No waiting when idle.** A write that finds nothing in flight is sent at
//!   once, alone and not nested (the same transaction as before batching).
//! - **Batching under load.** At most [`MAX_IN_FLIGHT`] batches (by default
//!   one) are in flight; writes that arrive meanwhile queue, and the next
//!   free slot takes all of them (up to [`MAX_BATCH`]) as one transaction — as the audit writer's
//!   group commit does with entries.
//! - **One write per key per batch.** etcd refuses a transaction that writes
//!   a key twice, so a second write of a key queued behind the first waits
//!   for the next batch.
//! - **Failures stay per write.** A batch etcd refuses as a whole for a reason
//!   of one write's (an argument error, e.g. a lease it no longer knows) is
//!   sent again as single writes, so one bad write fails alone. Errors of
//!   etcd itself (unreachable, no leader, timeout) are every write's.
//!
//! The batcher is generic over what it sends, so its rules are tested
//! without etcd; [`super::reservations`] plugs in etcd transactions.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most writes in one transaction: etcd's default `--max-txn-ops` is 128.
pub const MAX_BATCH: usize = 64;

/// Batches sent and not yet answered, at most: while one is out, writes
/// queue for the next one. One, because etcd's cost is per transaction
/// more than per write: at c=64 on one 2-core machine (node, 3 members and
/// load generator sharing it) one batch in flight made batches larger and
/// took the members' CPU per application from 0.22 to 0.17 ms, and the
/// node from ~1,930 to ~2,120 applications/s, p50 33 → 30 ms
/// (BENCHMARKS.md, 2026-12-07). An idle write still goes at once.
pub const MAX_IN_FLIGHT: usize = 1;

/// How many writes go in one transaction, and how many transactions may be
/// in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_batch: usize,
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: MAX_BATCH,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// Names the environment variable that sets the batch size: `1` sends every
/// write alone and at once, as many in flight as there are writes (no
/// batching: for comparison in benchmarks).
pub const BATCH_ENV: &str = "PROOFGATE_ETCD_BATCH";

/// Names the environment variable that sets how many batches may be in
/// flight (1..=16, default [`MAX_IN_FLIGHT`]).
pub const IN_FLIGHT_ENV: &str = "PROOFGATE_ETCD_IN_FLIGHT";

impl Limits {
    /// The defaults, or `PROOFGATE_ETCD_BATCH=N` (1..=64) for the batch
    /// size — 1 also lifts the in-flight bound — and
    /// `PROOFGATE_ETCD_IN_FLIGHT=M` (1..=16). Anything else: the default,
    /// with a warning.
    pub fn from_env() -> Self {
        let read = |name: &str, range: std::ops::RangeInclusive<usize>, default: usize| {
            let Ok(text) = std::env::var(name) else {
                return default;
            };
            match text.trim().parse::<usize>() {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    tracing::warn!(value = %text, "{name} must be a number from {} to {}; using {default}", range.start(), range.end());
                    default
                }
            }
        };
        let max_batch = read(BATCH_ENV, 1..=MAX_BATCH, MAX_BATCH);
        let max_in_flight = if max_batch == 1 {
            Semaphore::MAX_PERMITS
        } else {
            read(IN_FLIGHT_ENV, 1..=16, MAX_IN_FLIGHT)
        };
        Self {
            max_batch,
            max_in_flight,
        }
    }
}

/// How a batch failed as a whole.
#[derive(Debug)]
pub enum BatchError<E> {
    /// The error belongs to the store, not to any one write (unreachable,
    /// timeout): every write of the batch gets a copy.
    Shared(E),
    /// The store refused the batch because of some write in it: each write
    /// is sent again alone, so only the bad one fails.
    Refused(E),
}

/// What the batcher hands its sender.
pub trait Send<Op, Out, E>: std::marker::Send + Sync + 'static {
    /// Sends `ops` as one transaction (one op: sent alone, not nested);
    /// answers one outcome per op, in order.
    fn send(
        &self,
        ops: Vec<Op>,
    ) -> impl Future<Output = Result<Vec<Out>, BatchError<E>>> + std::marker::Send;
    /// A copy of an error for each write of a batch.
    fn copy(&self, error: &E) -> E;
}

struct Job<Op, Out, E> {
    key: String,
    op: Op,
    reply: oneshot::Sender<Result<Out, E>>,
}

/// Counts of what went to the store.
#[derive(Debug, Default)]
pub struct Counts {
    /// Transactions sent (one per batch, one per single write).
    pub transactions: AtomicU64,
    /// Writes carried by them.
    pub writes: AtomicU64,
}

/// The queue of writes in front of one sender; cheap to clone. Its task
/// ends when the last clone is dropped.
pub struct Batcher<Op, Out, E> {
    queue: mpsc::UnboundedSender<Job<Op, Out, E>>,
    counts: Arc<Counts>,
}

impl<Op, Out, E> Clone for Batcher<Op, Out, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            counts: Arc::clone(&self.counts),
        }
    }
}

impl<Op, Out, E> Batcher<Op, Out, E>
where
    Op: Clone + std::marker::Send + 'static,
    Out: std::marker::Send + 'static,
    E: std::marker::Send + 'static,
{
    /// Starts the batcher's task (needs a tokio runtime): at most
    /// [`MAX_BATCH`] writes per transaction, [`MAX_IN_FLIGHT`] transactions
    /// in flight.
    pub fn start<S: Send<Op, Out, E>>(sender: S) -> Self {
        Self::start_with(sender, Limits::default())
    }

    /// Starts the batcher's task with these limits.
    pub fn start_with<S: Send<Op, Out, E>>(sender: S, limits: Limits) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(Arc::new(sender), jobs, Arc::clone(&counts), limits));
        Self { queue, counts }
    }

    /// Sends one write of `key` (with the writes queued meanwhile); None:
    /// the batcher's task is gone (the runtime is shutting down).
    pub async fn write(&self, key: String, op: Op) -> Option<Result<Out, E>> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { key, op, reply }).ok()?;
        answer.await.ok()
    }

    /// (transactions, writes) sent so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.transactions.load(Ordering::Relaxed),
            self.counts.writes.load(Ordering::Relaxed),
        )
    }
}

async fn run<Op, Out, E, S>(
    sender: Arc<S>,
    mut jobs: mpsc::UnboundedReceiver<Job<Op, Out, E>>,
    counts: Arc<Counts>,
    limits: Limits,
) where
    Op: Clone + std::marker::Send + 'static,
    Out: std::marker::Send + 'static,
    E: std::marker::Send + 'static,
    S: Send<Op, Out, E>,
{
    let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut pending: VecDeque<Job<Op, Out, E>> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match jobs.recv().await {
                Some(job) => pending.push_back(job),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Everything that queued while the slots were busy goes now.
        while let Ok(job) = jobs.try_recv() {
            pending.push_back(job);
        }
        let batch = take_batch(&mut pending, limits.max_batch.max(1));
        let sender = Arc::clone(&sender);
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            send_batch(&*sender, batch, &counts).await;
            drop(slot);
        });
    }
}

/// Up to `max` jobs with distinct keys, in queue order; the rest stay
/// queued in order.
fn take_batch<J: Keyed>(pending: &mut VecDeque<J>, max: usize) -> Vec<J> {
    let mut keys = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = VecDeque::new();
    while let Some(job) = pending.pop_front() {
        if batch.len() < max && keys.insert(job.key().to_owned()) {
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *pending = rest;
    batch
}

trait Keyed {
    fn key(&self) -> &str;
}

impl<Op, Out, E> Keyed for Job<Op, Out, E> {
    fn key(&self) -> &str {
        &self.key
    }
}

async fn send_batch<Op, Out, E, S>(sender: &S, batch: Vec<Job<Op, Out, E>>, counts: &Counts)
where
    Op: Clone,
    S: Send<Op, Out, E>,
{
    let n = batch.len();
    let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.reply)).unzip();
    // Kept for single tries, should etcd refuse the batch for one write's sake.
    let again = if n > 1 { Some(ops.clone()) } else { None };
    counts.transactions.fetch_add(1, Ordering::Relaxed);
    counts.writes.fetch_add(n as u64, Ordering::Relaxed);
    match (sender.send(ops).await, again) {
        (Ok(outs), _) if outs.len() == n => {
            for (reply, out) in replies.into_iter().zip(outs) {
                let _ = reply.send(Ok(out));
            }
        }
        // A sender that answers the wrong number of outcomes is a bug of
        // the sender; dropping the replies fails each write (None).
        (Ok(_), _) => {}
        (Err(BatchError::Shared(e) | BatchError::Refused(e)), None) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        (Err(BatchError::Shared(e)), Some(_)) => {
            for reply in replies {
                let _ = reply.send(Err(sender.copy(&e)));
            }
        }
        (Err(BatchError::Refused(_)), Some(ops)) => {
            let singles = ops.into_iter().zip(replies).map(|(op, reply)| async move {
                counts.transactions.fetch_add(1, Ordering::Relaxed);
                counts.writes.fetch_add(1, Ordering::Relaxed);
                let result = match sender.send(vec![op]).await {
                    Ok(mut outs) if outs.len() == 1 => outs.pop().map(Ok),
                    Ok(_) => None,
                    Err(BatchError::Shared(e) | BatchError::Refused(e)) => Some(Err(e)),
                };
                if let Some(result) = result {
                    let _ = reply.send(result);
                }
            });
            futures_util::future::join_all(singles).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// One write of the fake store: create `key` if absent (true), or find
    /// it present (false); key "bad" makes the store refuse any batch that
    /// holds it, "down" fails the whole batch as the store's own error.
    #[derive(Clone, Debug)]
    struct Create(String);

    #[derive(Default)]
    struct Fake {
        keys: Mutex<HashMap<String, ()>>,
        /// Keys of each transaction, in the order they were sent.
        sent: Mutex<Vec<Vec<String>>>,
        /// Each send takes a permit first: 0 permits holds the store.
        gate: Option<Arc<Semaphore>>,
    }

    impl Send<Create, bool, String> for Arc<Fake> {
        async fn send(&self, ops: Vec<Create>) -> Result<Vec<bool>, BatchError<String>> {
            let keys: Vec<String> = ops.iter().map(|op| op.0.clone()).collect();
            self.sent.lock().unwrap().push(keys.clone());
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if keys.iter().any(|k| k == "down") {
                return Err(BatchError::Shared("store down".into()));
            }
            if keys.iter().any(|k| k == "bad") {
                return Err(BatchError::Refused("bad write".into()));
            }
            let mut map = self.keys.lock().unwrap();
            Ok(keys
                .into_iter()
                .map(|k| map.insert(k, ()).is_none())
                .collect())
        }

        fn copy(&self, error: &String) -> String {
            error.clone()
        }
    }

    /// What a write of the fake store comes to.
    type Outcome = Option<Result<bool, String>>;

    fn sent(fake: &Fake) -> Vec<Vec<String>> {
        fake.sent.lock().unwrap().clone()
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_idle_write_goes_at_once_and_alone() {
        tokio::time::pause();
        let fake = Arc::new(Fake::default());
        let batcher = Batcher::start(Arc::clone(&fake));
        let before = tokio::time::Instant::now();
        let out = batcher.write("a".into(), Create("a".into())).await;
        assert_eq!(out, Some(Ok(true)));
        // No timer was waited on: the paused clock did not move.
        assert_eq!(tokio::time::Instant::now(), before);
        let out = batcher.write("b".into(), Create("b".into())).await;
        assert_eq!(out, Some(Ok(true)));
        assert_eq!(tokio::time::Instant::now(), before);
        assert_eq!(sent(&fake), [vec!["a"], vec!["b"]]);
        assert_eq!(batcher.counts(), (2, 2));
    }

    #[tokio::test]
    async fn writes_queued_while_busy_go_as_one_batch_each_with_its_own_outcome() {
        queued_while_busy(MAX_IN_FLIGHT).await;
    }

    #[tokio::test]
    async fn with_two_batches_in_flight_both_slots_fill_before_writes_queue() {
        queued_while_busy(2).await;
    }

    async fn queued_while_busy(in_flight: usize) {
        tokio::time::pause();
        let gate = Arc::new(Semaphore::new(0));
        let fake = Arc::new(Fake {
            gate: Some(Arc::clone(&gate)),
            ..Fake::default()
        });
        fake.keys.lock().unwrap().insert("taken".into(), ());
        let limits = Limits {
            max_in_flight: in_flight,
            ..Limits::default()
        };
        let batcher = Batcher::start_with(Arc::clone(&fake), limits);
        let write = |key: &str| {
            let batcher = batcher.clone();
            let key = key.to_owned();
            tokio::spawn(async move { batcher.write(key.clone(), Create(key)).await })
        };
        // Fill every slot with a single write, one at a time.
        let mut first = Vec::new();
        for i in 0..in_flight {
            first.push(write(&format!("slot-{i}")));
            settle().await;
            assert_eq!(sent(&fake).len(), i + 1);
        }
        // These queue meanwhile: one conflicts (reserved before), one key
        // comes twice.
        let keys = ["c", "d", "taken", "e", "c", "f"];
        let queued: Vec<_> = keys.iter().map(|k| write(k)).collect();
        settle().await;
        assert_eq!(sent(&fake).len(), in_flight, "nothing sent while busy");
        gate.add_permits(100);
        for handle in first {
            assert_eq!(handle.await.unwrap(), Some(Ok(true)));
        }
        let outs: Vec<_> = futures_util::future::join_all(queued)
            .await
            .into_iter()
            .map(|h| h.unwrap())
            .collect();
        // Per key: the conflict fails alone; the second `c` (next batch)
        // finds the first one's key.
        let want: Vec<Outcome> = [true, true, false, true, false, true]
            .into_iter()
            .map(|b| Some(Ok(b)))
            .collect();
        assert_eq!(outs, want);
        let sent = sent(&fake);
        assert_eq!(sent.len(), in_flight + 2, "{sent:?}");
        assert_eq!(sent[in_flight], ["c", "d", "taken", "e", "f"]);
        assert_eq!(sent[in_flight + 1], ["c"]);
        let (transactions, writes) = batcher.counts();
        assert_eq!(
            (transactions, writes),
            (in_flight as u64 + 2, in_flight as u64 + 6)
        );
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_distinct_keys_in_queue_order() {
        struct K(String);
        impl Keyed for K {
            fn key(&self) -> &str {
                &self.0
            }
        }
        let mut pending: VecDeque<K> = (0..MAX_BATCH + 3)
            .map(|i| K(format!("k{i}")))
            .chain([K("k0".into())])
            .collect();
        let batch = take_batch(&mut pending, MAX_BATCH);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(batch[0].0, "k0");
        let left: Vec<_> = pending.iter().map(|k| k.0.as_str()).collect();
        let last = MAX_BATCH + 2;
        assert_eq!(
            left,
            [
                format!("k{MAX_BATCH}"),
                format!("k{}", MAX_BATCH + 1),
                format!("k{last}"),
                "k0".to_owned()
            ]
        );
    }

    /// Holds the store until every write below is queued, so they go as
    /// one batch.
    async fn one_batch(keys: &[&str]) -> (Vec<Outcome>, Vec<Vec<String>>) {
        let gate = Arc::new(Semaphore::new(0));
        let fake = Arc::new(Fake {
            gate: Some(Arc::clone(&gate)),
            ..Fake::default()
        });
        let batcher = Batcher::start(Arc::clone(&fake));
        let mut handles = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            let batcher = batcher.clone();
            handles.push(tokio::spawn(async move {
                let key = format!("slot-{i}");
                batcher.write(key.clone(), Create(key)).await
            }));
            settle().await;
        }
        let queued: Vec<_> = keys
            .iter()
            .map(|k| {
                let batcher = batcher.clone();
                let k = (*k).to_owned();
                tokio::spawn(async move { batcher.write(k.clone(), Create(k)).await })
            })
            .collect();
        settle().await;
        gate.add_permits(1000);
        for h in handles {
            h.await.unwrap();
        }
        let outs = futures_util::future::join_all(queued)
            .await
            .into_iter()
            .map(|h| h.unwrap())
            .collect();
        (outs, sent(&fake)[MAX_IN_FLIGHT..].to_vec())
    }

    #[tokio::test]
    async fn a_batch_refused_for_one_write_is_sent_again_write_by_write() {
        tokio::time::pause();
        let (outs, sent) = one_batch(&["x", "bad", "y"]).await;
        let want: Vec<Outcome> = vec![
            Some(Ok(true)),
            Some(Err("bad write".into())),
            Some(Ok(true)),
        ];
        assert_eq!(outs, want);
        assert_eq!(
            sent,
            [vec!["x", "bad", "y"], vec!["x"], vec!["bad"], vec!["y"]]
        );
    }

    #[tokio::test]
    async fn an_error_of_the_store_is_every_writes_error() {
        tokio::time::pause();
        let (outs, sent) = one_batch(&["x", "down", "y"]).await;
        let want: Vec<Outcome> = vec![Some(Err("store down".into())); 3];
        assert_eq!(outs, want);
        assert_eq!(sent, [vec!["x", "down", "y"]]);
    }
}
