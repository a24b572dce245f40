//! Cluster mode: the registry of data sources and the dishonesty records
//! every node shares, on etcd (DESIGN.md, "Several nodes"):
//! - `<prefix>sources/<department>`: a `DataSource` (protobuf). Every node
//!   mirrors the folder into its department directory (load, then watch);
//!   a change received by a node is logged there and written here. A
//!   change another node received is logged here too (`changed_by`
//!   [`ADOPTED_BY`]) before this node uses it, so every node's log names
//!   the keys of the answers it holds and replays on its own.
//! - `<prefix>dishonesty/<pseudonym-hex>`: a `DishonestyRecord` (protobuf).
//!   Every node mirrors it; a commitment is judged against the mirror only
//!   while it is current and the node's session is live.
//! - `<prefix>pseudonym-key`: the fingerprint of the pseudonym key, which
//!   every node must share (a dishonesty record names a subject by its
//!   pseudonym): a node with another key is refused at start.
//!
//! Changes are refused while the node cannot write etcd; reads keep working.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::ServeError;
use crate::audit::DishonestyRecord;
use crate::cluster::{self, ChangeFn, ClusterOptions, SharedFolder, SharedHandle};
use crate::departments::{DepartmentDirectory, SharedSources};
use crate::gateway::{Gateway, SharedDishonesty};
use crate::pb::{audit_entry::Event, DataSource, DataSourceChanged};
use crate::subject::PseudonymKey;

const SOURCES: &str = "sources";
const DISHONESTY: &str = "dishonesty";
const PSEUDONYM_KEY: &str = "pseudonym-key";
/// `changed_by` of a registry change this node logs because another node
/// received it (the shared registry changed under it).
pub const ADOPTED_BY: &str = "cluster shared registry";

/// What the adopting task is handed: a watched change, or a request to say
/// when everything before it is applied.
enum Adopt {
    Change(String, Option<Vec<u8>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Takes watched registry changes one by one, in the watch's order. A
/// change that differs from this node's directory is logged, then applied,
/// both while no department signature is being verified (the directory's
/// key-change lock), so this node's log always names the key it verifies
/// with; a change it made itself comes back equal and is not logged twice.
/// A change that cannot be logged or used here is not applied (this node
/// keeps its old view and says so).
async fn adopt_sources(
    mut changes: mpsc::UnboundedReceiver<Adopt>,
    directory: Arc<DepartmentDirectory>,
    log: crate::audit::AuditLog,
) {
    while let Some(change) = changes.recv().await {
        let (department, value) = match change {
            Adopt::Change(department, value) => (department, value),
            Adopt::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let _change = directory.changing_keys().await;
        let known = directory.get(&department);
        let event = match &value {
            Some(bytes) => match DataSource::decode(bytes.as_slice()) {
                Ok(source) if source.department_id == department => {
                    if known.as_ref() == Some(&source) {
                        continue;
                    }
                    if let Err(e) = directory.check(&source) {
                        warn!(%department, error = %e, "shared data source not usable here; skipped");
                        continue;
                    }
                    DataSourceChanged {
                        source: Some(source),
                        removed: false,
                        changed_by: ADOPTED_BY.to_owned(),
                    }
                }
                // apply_source says why it skips it.
                _ => {
                    apply_source(&directory, &department, value.as_deref());
                    continue;
                }
            },
            None => match known {
                Some(source) => DataSourceChanged {
                    source: Some(source),
                    removed: true,
                    changed_by: ADOPTED_BY.to_owned(),
                },
                None => continue,
            },
        };
        if let Err(e) = log.append_event(Event::DataSourceChanged(event)).await {
            warn!(%department, error = %e, "a shared registry change could not be logged here, so this node does not use it");
            continue;
        }
        apply_source(&directory, &department, value.as_deref());
    }
}

/// The fingerprint of a pseudonym key: a keyed digest of a fixed text, so
/// nodes can compare keys without showing them.
fn key_fingerprint(pseudonyms: &PseudonymKey) -> String {
    format!(
        "hmac-sha256:{}",
        hex::encode(pseudonyms.digest(b"proofgate pseudonym key fingerprint"))
    )
}

/// Applies a shared registration to this node's directory.
fn apply_source(directory: &DepartmentDirectory, department: &str, value: Option<&[u8]>) {
    let Some(bytes) = value else {
        if directory.remove(department).is_some() {
            info!(%department, "data source deregistered (shared registry)");
        }
        return;
    };
    match DataSource::decode(bytes) {
        Ok(source) if source.department_id == department => {
            let endpoint = source.endpoint.clone();
            match directory.upsert(source) {
                Ok(()) => info!(%department, %endpoint, "data source registered (shared registry)"),
                Err(e) => {
                    warn!(%department, error = %e, "shared data source not usable here; skipped")
                }
            }
        }
        Ok(source) => warn!(
            %department,
            claims = %crate::policy::quoted(&source.department_id, 64),
            "shared data source names another department; skipped"
        ),
        Err(e) => warn!(%department, error = %e, "shared data source unreadable; skipped"),
    }
}

/// The shared registry, as [`crate::departments::Registry`] writes it.
struct ClusterSources {
    _folder: SharedFolder,
    handle: SharedHandle,
    live: watch::Receiver<bool>,
}

/// Ok if a change can be written now: the node's session is live and etcd
/// answers a linearizable read (it has a leader and a quorum).
async fn writable(live: &watch::Receiver<bool>, handle: &SharedHandle) -> Result<(), String> {
    if !*live.borrow() {
        return Err("this node's etcd session is not live".into());
    }
    handle.check_reachable().await.map_err(|e| e.to_string())
}

#[tonic::async_trait]
impl SharedSources for ClusterSources {
    async fn writable(&self) -> Result<(), String> {
        writable(&self.live, &self.handle).await
    }

    async fn put(&self, source: &DataSource) -> Result<(), String> {
        self.handle
            .put(&source.department_id, source.encode_to_vec())
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove(&self, department_id: &str) -> Result<(), String> {
        self.handle
            .delete(department_id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The shared dishonesty records, as the gateway and the operations use them.
struct ClusterDishonesty {
    _folder: SharedFolder,
    handle: SharedHandle,
    live: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl SharedDishonesty for ClusterDishonesty {
    fn lookup(&self, pseudonym: &[u8]) -> Result<Option<DishonestyRecord>, String> {
        if !*self.live.borrow() {
            return Err("this node's etcd session is not live".into());
        }
        if !self.handle.is_current() {
            return Err("the watch of the cluster's dishonesty records is not current".into());
        }
        self.handle
            .get(&hex::encode(pseudonym))
            .map(|bytes| {
                DishonestyRecord::decode(bytes.as_slice())
                    .map_err(|e| format!("the shared dishonesty record is unreadable: {e}"))
            })
            .transpose()
    }

    async fn record(&self, pseudonym: &[u8], record: DishonestyRecord) -> Result<(), String> {
        writable(&self.live, &self.handle).await?;
        self.handle
            .put(&hex::encode(pseudonym), record.encode_to_vec())
            .await
            .map_err(|e| e.to_string())
    }

    async fn revoke(&self, pseudonym: &[u8]) -> Result<(), String> {
        self.handle
            .delete(&hex::encode(pseudonym))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Every node of a cluster uses one pseudonym key (request digests,
/// pseudonyms and so dishonesty records are keyed with it): the first node
/// writes the key's fingerprint under `<prefix>pseudonym-key`, and a node
/// with another key is refused before it joins (exit 64).
pub(super) async fn agree_on_pseudonym_key(
    options: &ClusterOptions,
    pseudonyms: &PseudonymKey,
) -> Result<(), ServeError> {
    cluster::shared::agree(
        options,
        PSEUDONYM_KEY,
        &key_fingerprint(pseudonyms),
        "this node's pseudonym key (DATA_DIR/keys/pseudonym.key)",
    )
    .await?;
    Ok(())
}

/// Loads and follows the shared registry (into `directory`) and dishonesty records (handed to the
/// gateway); returns the registry for [`crate::departments::Registry`].
pub(super) async fn start(
    options: &ClusterOptions,
    live: watch::Receiver<bool>,
    directory: &Arc<DepartmentDirectory>,
    gateway: &Gateway,
) -> Result<Arc<dyn SharedSources>, ServeError> {
    let (changes, adopted) = mpsc::unbounded_channel();
    tokio::spawn(adopt_sources(
        adopted,
        Arc::clone(directory),
        gateway.audit().clone(),
    ));
    let on_source: ChangeFn = {
        let changes = changes.clone();
        Arc::new(move |department, value| {
            // The adopting task ends only with this node; a send after that
            // has nowhere to go.
            let _ = changes.send(Adopt::Change(
                department.to_owned(),
                value.map(<[u8]>::to_vec),
            ));
        })
    };
    let sources = SharedFolder::start(options, SOURCES, on_source).await?;
    // The registry as loaded is logged and applied before this node serves.
    let (done, applied) = tokio::sync::oneshot::channel();
    if changes.send(Adopt::Flush(done)).is_ok()
        && tokio::time::timeout(std::time::Duration::from_secs(10), applied)
            .await
            .is_err()
    {
        warn!(
            "the shared registry was not applied within 10 s of start; it will be as it is logged"
        );
    }
    let dishonesty = SharedFolder::start(options, DISHONESTY, Arc::new(|_, _| {})).await?;
    gateway.share_dishonesty(Arc::new(ClusterDishonesty {
        handle: dishonesty.handle(),
        _folder: dishonesty,
        live: live.clone(),
    }));
    Ok(Arc::new(ClusterSources {
        handle: sources.handle(),
        _folder: sources,
        live,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_shows_whether_keys_match_not_the_key() {
        let a = PseudonymKey::new(&[1; crate::subject::PSEUDONYM_KEY_LEN]);
        let b = PseudonymKey::new(&[2; crate::subject::PSEUDONYM_KEY_LEN]);
        assert_eq!(key_fingerprint(&a), key_fingerprint(&a));
        assert_ne!(key_fingerprint(&a), key_fingerprint(&b));
        assert!(!key_fingerprint(&a).contains(&hex::encode([1u8; 8])));
    }

    #[tokio::test]
    async fn a_shared_source_is_applied_only_under_its_own_name() {
        let directory = DepartmentDirectory::default();
        let source = DataSource {
            department_id: "health".into(),
            endpoint: "http://127.0.0.1:1".into(),
            queries: vec!["q".into()],
            capacity_per_second: 1,
            answer_public_key: vec![0; 32],
            ..Default::default()
        };
        let bytes = source.encode_to_vec();
        apply_source(&directory, "education", Some(&bytes));
        assert!(
            directory.list().is_empty(),
            "named under another department"
        );
        apply_source(&directory, "health", Some(b"\xff\xff not protobuf"));
        assert!(directory.list().is_empty());
        apply_source(&directory, "health", Some(&bytes));
        assert_eq!(directory.list(), vec![source]);
        apply_source(&directory, "health", None);
        assert!(directory.list().is_empty());
    }
}
