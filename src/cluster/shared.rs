//! A folder of shared records in etcd (`<prefix><folder>/<name>`), mirrored
//! in memory on every node: the registry of data sources (`sources/`) and
//! the dishonesty records (`dishonesty/`).
//!
//! - **Load**: one get of the whole folder (linearizable, so it needs a
//!   quorum) gives the records and the revision they are current at.
//! - **Follow**: a watch from the next revision delivers every later put and
//!   delete, in order; each is handed to the owner's [`ChangeFn`] (the
//!   registry connects to a new data source, say). A change written through
//!   this node is applied at once too, so its caller reads it back at once.
//! - **Know when it may be stale**: the mirror is *current* only while its
//!   watch is up and etcd answered a progress request within
//!   [`STALE_AFTER`]. A broken watch, a compacted revision, a member that
//!   lost its leader (the client requires one): not current, until a new
//!   load and watch succeed — by themselves, every [`RETRY_EVERY`].
//!
//! Every record carries the etcd revision it was written at; an older one
//! never replaces a newer one (a node's own write and the watch's echo of
//! it can arrive in either order).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{bounded, ClusterError, ClusterOptions, RETRY_EVERY};

/// How often the watch is asked for a progress report.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// A mirror that heard nothing from etcd for this long is not current.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Told about every change of a record: its name (the key after the
/// folder) and its new value, None when it was deleted. Called under the
/// mirror's lock: it must not call back into the folder.
pub type ChangeFn = Arc<dyn Fn(&str, Option<&[u8]>) + Send + Sync>;

/// A record as mirrored: its value (None: deleted) and the revision that
/// wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    value: Option<Vec<u8>>,
    revision: i64,
}

struct Inner {
    options: ClusterOptions,
    client: Client,
    /// `<prefix><folder>/`.
    folder: String,
    records: Mutex<BTreeMap<String, Held>>,
    /// True while the watch is up (after a load).
    watching: watch::Sender<bool>,
    /// When etcd last answered on the watch (an event or a progress report).
    heard: Mutex<Option<Instant>>,
    on_change: ChangeFn,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn name_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.folder.as_str())
            .filter(|name| !name.is_empty())
    }

    /// Applies one change unless the mirror already holds a newer one; tells
    /// the owner when the value changed — under the lock, so two changes of
    /// one record reach the owner in the order of their revisions.
    fn apply(&self, name: &str, value: Option<&[u8]>, revision: i64) {
        let mut records = lock(&self.records);
        let before = match records.get(name) {
            Some(held) if held.revision >= revision => return,
            held => held.and_then(|h| h.value.clone()),
        };
        records.insert(
            name.to_owned(),
            Held {
                value: value.map(<[u8]>::to_vec),
                revision,
            },
        );
        if before.as_deref() != value {
            (self.on_change)(name, value);
        }
    }

    fn heard_now(&self) {
        *lock(&self.heard) = Some(Instant::now());
    }

    /// Loads the whole folder; returns the revision it is current at.
    async fn load(&self) -> Result<i64, ClusterError> {
        let response = bounded(
            &self.options,
            self.client.clone().get(
                self.folder.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let mut present = std::collections::BTreeSet::new();
        for kv in response.kvs() {
            if let Some(name) = self.name_of(kv.key()) {
                present.insert(name.to_owned());
                self.apply(name, Some(kv.value()), kv.mod_revision());
            }
        }
        // Records gone since the last load (deleted while the watch was down).
        let gone: Vec<String> = lock(&self.records)
            .iter()
            .filter(|(name, held)| {
                held.value.is_some() && held.revision <= revision && !present.contains(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.apply(&name, None, revision);
        }
        self.heard_now();
        Ok(revision)
    }

    /// Follows the folder from `revision + 1` until the watch breaks.
    async fn follow(&self, revision: i64) -> Result<(), ClusterError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = bounded(
            &self.options,
            self.client
                .clone()
                .watch(self.folder.as_bytes(), Some(options)),
        )
        .await?;
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = progress.tick() => {
                    if stream.request_progress().await.is_err() {
                        return Err(ClusterError::Watch("the watch stream closed".into()));
                    }
                }
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return Err(ClusterError::Watch("the watch stream ended".into())),
                        Err(e) => return Err(ClusterError::Watch(e.to_string())),
                    };
                    if response.canceled() {
                        let why = if response.compact_revision() > 0 {
                            format!("revision {} was compacted", revision + 1)
                        } else {
                            response.cancel_reason().to_owned()
                        };
                        return Err(ClusterError::Watch(format!("etcd cancelled the watch: {why}")));
                    }
                    if response.created() {
                        self.watching.send_replace(true);
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Some(name) = self.name_of(kv.key()) else { continue };
                        match event.event_type() {
                            EventType::Put => self.apply(name, Some(kv.value()), kv.mod_revision()),
                            EventType::Delete => self.apply(name, None, kv.mod_revision()),
                        }
                    }
                    self.heard_now();
                }
            }
        }
    }
}

/// One folder of shared records, mirrored; dropping it stops following.
pub struct SharedFolder {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

/// A cheap handle on a [`SharedFolder`]: reads, writes, currency.
#[derive(Clone)]
pub struct SharedHandle {
    inner: Arc<Inner>,
}

impl SharedFolder {
    /// Loads `<prefix><folder>/` (the owner's [`ChangeFn`] hears of every
    /// record in it) and follows it from then on. Fails when etcd does not
    /// answer the first load.
    pub async fn start(
        options: &ClusterOptions,
        folder: &str,
        on_change: ChangeFn,
    ) -> Result<SharedFolder, ClusterError> {
        let client = super::connect(options).await?;
        let (watching, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            options: options.clone(),
            client,
            folder: format!("{}{folder}/", options.prefix),
            records: Mutex::default(),
            watching,
            heard: Mutex::default(),
            on_change,
        });
        let revision = inner.load().await?;
        info!(folder = %inner.folder, records = inner.len(), revision, "shared records loaded");
        let mut watching = inner.watching.subscribe();
        let task = tokio::spawn(keep_following(Arc::clone(&inner), revision));
        // Serve with the watch up, so the first decisions are not judged on
        // a copy that is not yet known to be current.
        let up = tokio::time::timeout(super::CALL_TIMEOUT, watching.wait_for(|up| *up)).await;
        if !matches!(up, Ok(Ok(_))) {
            warn!(folder = %inner.folder, "the watch of shared records is not up yet; they count as stale until it is");
        }
        Ok(SharedFolder { inner, task })
    }

    pub fn handle(&self) -> SharedHandle {
        SharedHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Drop for SharedFolder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn len(&self) -> usize {
        lock(&self.records)
            .values()
            .filter(|h| h.value.is_some())
            .count()
    }
}

/// Follows; after a break, reloads and follows again, for as long as the
/// folder lives.
async fn keep_following(inner: Arc<Inner>, mut revision: i64) {
    loop {
        if let Err(e) = inner.follow(revision).await {
            inner.watching.send_replace(false);
            warn!(folder = %inner.folder, error = %e, "watch of shared records broken; they may be stale until it is back");
        }
        loop {
            tokio::time::sleep(RETRY_EVERY).await;
            match inner.load().await {
                Ok(loaded) => {
                    revision = loaded;
                    info!(folder = %inner.folder, revision, "shared records reloaded; following again");
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "shared records: etcd still unreachable"),
            }
        }
    }
}

impl SharedHandle {
    /// Whether the mirror may be trusted to hold every record written so
    /// far, give or take the propagation delay: its watch is up and etcd
    /// answered within [`STALE_AFTER`].
    pub fn is_current(&self) -> bool {
        *self.inner.watching.borrow()
            && lock(&self.inner.heard).is_some_and(|at| at.elapsed() < STALE_AFTER)
    }

    /// The record `name`, as mirrored.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.inner.records)
            .get(name)
            .and_then(|held| held.value.clone())
    }

    /// Every record, sorted by name.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.inner.records)
            .iter()
            .filter_map(|(name, held)| held.value.clone().map(|v| (name.clone(), v)))
            .collect()
    }

    /// Writes `name` (needs a quorum), and applies it here at once.
    pub async fn put(&self, name: &str, value: Vec<u8>) -> Result<(), ClusterError> {
        let key = format!("{}{name}", self.inner.folder);
        let response = bounded(
            &self.inner.options,
            self.inner.client.clone().put(key, value.clone(), None),
        )
        .await?;
        if let Some(header) = response.header() {
            self.inner.apply(name, Some(&value), header.revision());
        }
        Ok(())
    }

    /// Deletes `name` (needs a quorum), and here at once; true if it was
    /// there.
    pub async fn delete(&self, name: &str) -> Result<bool, ClusterError> {
        let key = format!("{}{name}", self.inner.folder);
        let response = bounded(
            &self.inner.options,
            self.inner.client.clone().delete(key, None),
        )
        .await?;
        if let Some(header) = response.header() {
            self.inner.apply(name, None, header.revision());
        }
        Ok(response.deleted() > 0)
    }

    /// A linearizable read of the folder's revision: Ok only if etcd (with
    /// a quorum) can be written to now.
    pub async fn check_reachable(&self) -> Result<(), ClusterError> {
        let key = self.inner.folder.clone();
        bounded(
            &self.inner.options,
            self.inner
                .client
                .clone()
                .get(key, Some(GetOptions::new().with_prefix().with_count_only())),
        )
        .await
        .map(|_| ())
    }
}

/// Makes every node agree on one value under `<prefix><name>`: the first
/// node to start writes it; a later one with another value is refused with
/// [`ClusterError::Config`] saying `what` differs. Used for the fingerprint
/// of the pseudonym key, which every node must share for dishonesty records
/// (keyed by pseudonym) to mean the same subject on every node.
pub async fn agree(
    options: &ClusterOptions,
    name: &str,
    value: &str,
    what: &str,
) -> Result<(), ClusterError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let client = super::connect(options).await?;
    let key = format!("{}{name}", options.prefix);
    let txn = Txn::new()
        .when([Compare::create_revision(
            key.as_bytes(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(key.as_bytes(), value, None)])
        .or_else([TxnOp::get(key.as_bytes(), None)]);
    let response = bounded(options, client.clone().txn(txn)).await?;
    if response.succeeded() {
        return Ok(());
    }
    let held = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    match held {
        Some(held) if held == value.as_bytes() => Ok(()),
        Some(held) => Err(ClusterError::Config(format!(
            "{what} differs from the cluster's (etcd {key} holds {}, this node has {value}): every node of a cluster must use the same one",
            String::from_utf8_lossy(&held)
        ))),
        None => Err(ClusterError::Config(format!(
            "{key} changed while this node read it; start it again"
        ))),
    }
}

#[cfg(test)]
mod tests {
    //! The mirror's bookkeeping without etcd: revisions order the changes,
    //! the owner hears of real changes only.

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, Option<Vec<u8>>)>>>;

    async fn inner(seen: Seen) -> Inner {
        let options = ClusterOptions::new(vec!["http://127.0.0.1:1".into()]);
        // Connecting is lazy: no etcd is needed to build a client.
        let client = super::super::connect(&options).await;
        Inner {
            options,
            client: client.expect("a lazy client"),
            folder: "/proofgate/sources/".into(),
            records: Mutex::default(),
            watching: watch::channel(false).0,
            heard: Mutex::default(),
            on_change: Arc::new(move |name, value| {
                lock(&seen).push((name.to_owned(), value.map(<[u8]>::to_vec)))
            }),
        }
    }

    #[tokio::test]
    async fn an_older_revision_never_replaces_a_newer_one() {
        let seen = Arc::default();
        let inner = inner(Arc::clone(&seen)).await;
        inner.apply("gone", None, 3); // never seen: nothing to tell
        inner.apply("health", Some(b"v2"), 7);
        inner.apply("health", Some(b"v1"), 5); // the watch's late echo
        inner.apply("health", None, 6);
        assert_eq!(
            lock(&inner.records).get("health").unwrap().value.as_deref(),
            Some(&b"v2"[..])
        );
        inner.apply("health", Some(b"v2"), 7); // the same write again
        inner.apply("health", None, 8);
        assert_eq!(
            *lock(&seen),
            vec![
                ("health".to_owned(), Some(b"v2".to_vec())),
                ("health".to_owned(), None)
            ]
        );
        assert_eq!(inner.len(), 0);
    }

    #[tokio::test]
    async fn keys_outside_the_folder_are_not_records() {
        let inner = inner(Arc::default()).await;
        assert_eq!(inner.name_of(b"/proofgate/sources/health"), Some("health"));
        assert_eq!(inner.name_of(b"/proofgate/sources/"), None);
        assert_eq!(inner.name_of(b"/proofgate/nodes/node-1"), None);
        assert_eq!(inner.name_of(&[0xff, 0xfe]), None);
    }
}
