//! Acknowledgement after replication (`serve --mirror-ack K`, issue 11:
//! "a node's disk can be lost without losing one acknowledged decision").
//!
//! A mirror of this node's log reports, with each GetCheckpoint it sends,
//! the size up to which it holds the log verified and durable
//! (`mirrored_size`). [`Replication`] keeps the highest size each mirror has
//! reported; an entry is replicated once `required` distinct mirrors hold
//! it. The gateway answers a decision only then: an answer a hall gets is
//! on this node's disk and on K other disks.
//!
//! With `required` = 0 (the default of a node without mirrors) every entry
//! counts as replicated at once. Time comes from tokio, so tests pause it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How long an acknowledgement waits for mirrors by default.
pub const DEFAULT_MIRROR_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// An entry durable here but not yet held by enough mirrors.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("entries up to size {size} are logged here, but {held_by} of the {required} mirrors required hold them yet (mirrors: {mirrors})")]
pub struct NotReplicated {
    pub size: u64,
    pub required: usize,
    pub held_by: usize,
    /// The mirrors heard from, with their sizes, for the message.
    pub mirrors: String,
}

/// The mirrors' acknowledgements of one log. Cheap to clone.
#[derive(Clone, Default)]
pub struct Replication {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    required: AtomicUsize,
    timeout: Mutex<Option<Duration>>,
    /// Reports acknowledgements and timeouts, once configured.
    metrics: Mutex<Option<Metrics>>,
    /// Mirror identity → the highest size it has reported holding.
    acks: watch::Sender<BTreeMap<String, u64>>,
}

impl Replication {
    /// Acknowledgements wait for `required` mirrors, at most `timeout`;
    /// `metrics` shows what the mirrors hold and every wait in vain.
    pub fn configure(&self, required: usize, timeout: Duration, metrics: Metrics) {
        self.inner.required.store(required, Ordering::Release);
        *self.inner.timeout.lock().unwrap_or_else(|p| p.into_inner()) = Some(timeout);
        metrics.mirror_ack_required(required);
        *self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner()) = Some(metrics);
    }

    fn metrics(&self) -> Option<Metrics> {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn required(&self) -> usize {
        self.inner.required.load(Ordering::Acquire)
    }

    fn timeout(&self) -> Duration {
        self.inner
            .timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(DEFAULT_MIRROR_ACK_TIMEOUT)
    }

    /// `mirror` holds the log up to `size` (the caller has checked that
    /// the log signed that tree). Its latest report counts: a mirror whose
    /// store was replaced and reports less holds less.
    pub fn record(&self, mirror: &str, size: u64) {
        let changed = self
            .inner
            .acks
            .send_if_modified(|acks| match acks.get_mut(mirror) {
                Some(held) if *held == size => false,
                Some(held) => {
                    *held = size;
                    true
                }
                None => {
                    acks.insert(mirror.to_owned(), size);
                    true
                }
            });
        if let (true, Some(metrics)) = (changed, self.metrics()) {
            metrics.mirror_acked(mirror, size);
        }
    }

    /// The mirrors heard from and the sizes they hold.
    pub fn acks(&self) -> BTreeMap<String, u64> {
        self.inner.acks.borrow().clone()
    }

    /// The largest size that `required` mirrors hold (`u64::MAX` when none
    /// are required).
    pub fn replicated_size(&self) -> u64 {
        Self::kth(&self.inner.acks.borrow(), self.required())
    }

    fn kth(acks: &BTreeMap<String, u64>, required: usize) -> u64 {
        if required == 0 {
            return u64::MAX;
        }
        let mut sizes: Vec<u64> = acks.values().copied().collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.get(required - 1).copied().unwrap_or(0)
    }

    /// Whether the first `size` entries are held by enough mirrors now.
    pub fn covers(&self, size: u64) -> bool {
        self.replicated_size() >= size
    }

    /// Waits until the first `size` entries are held by enough mirrors, at
    /// most the configured timeout.
    pub async fn wait(&self, size: u64) -> Result<(), NotReplicated> {
        let required = self.required();
        if required == 0 {
            return Ok(());
        }
        let mut acks = self.inner.acks.subscribe();
        let waited = tokio::time::timeout(
            self.timeout(),
            acks.wait_for(|acks| Self::kth(acks, required) >= size),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `self`: it cannot close while we wait.
            Ok(Err(_)) | Err(_) => {
                if let Some(metrics) = self.metrics() {
                    metrics.mirror_ack_timeout();
                }
                let acks = self.acks();
                Err(NotReplicated {
                    size,
                    required,
                    held_by: acks.values().filter(|held| **held >= size).count(),
                    mirrors: if acks.is_empty() {
                        "none has reported yet".to_owned()
                    } else {
                        acks.iter()
                            .map(|(mirror, held)| format!("{mirror} holds {held}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_entry_counts_once_enough_distinct_mirrors_hold_it() {
        let replication = Replication::default();
        assert!(replication.covers(10), "nothing required: at once");
        let metrics = Metrics::default();
        replication.configure(2, Duration::from_secs(5), metrics.clone());
        assert!(!replication.covers(1));

        let waiting = {
            let replication = replication.clone();
            tokio::spawn(async move { replication.wait(10).await })
        };
        tokio::task::yield_now().await;
        replication.record("node-2.gateway.proofgate", 3);
        // The same mirror twice is still one mirror; its latest report counts.
        replication.record("node-2.gateway.proofgate", 12);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(replication.replicated_size(), 0);
        replication.record("node-3.gateway.proofgate", 10);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(replication.replicated_size(), 10);
        assert_eq!(replication.acks()["node-2.gateway.proofgate"], 12);
        let shown = metrics.encode();
        for line in [
            "proofgate_mirror_acked_size{mirror=\"node-2.gateway.proofgate\"} 12",
            "proofgate_mirror_acked_size{mirror=\"node-3.gateway.proofgate\"} 10",
            "proofgate_mirror_ack_required 2",
        ] {
            assert!(shown.contains(line), "{line} missing:\n{shown}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_after_the_timeout_saying_who_holds_what() {
        let replication = Replication::default();
        let metrics = Metrics::default();
        replication.configure(1, Duration::from_secs(5), metrics.clone());
        replication.record("node-2.gateway.proofgate", 4);
        let started = tokio::time::Instant::now();
        let err = replication.wait(5).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(err.held_by, 0);
        assert!(
            err.to_string().contains("node-2.gateway.proofgate holds 4"),
            "{err}"
        );
        assert_eq!(replication.wait(4).await, Ok(()));
        assert!(metrics
            .encode()
            .contains("proofgate_mirror_ack_timeouts_total 1"));
    }
}
