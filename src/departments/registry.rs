//! The registry of data sources: departments announce and withdraw them.
//! Every change is an audit entry and persists in the store, so it survives
//! restarts. Who may change what is decided by the caller (the gRPC layer in
//! `server`); this module checks the registration itself.

use std::sync::Arc;

use thiserror::Error;
use tracing::info;

use super::directory::{DepartmentDirectory, DirectoryError};
use crate::audit::{AuditError, AuditLog};
use crate::pb::{audit_entry::Event, DataSource, DataSourceChanged};

const MAX_NAMES: usize = 256;
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Error)]
pub enum RegistryError {
    /// A field of the registration is wrong; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("no data source is registered for department `{0}`")]
    NotRegistered(String),
    #[error("the audit log is not writable; the change was not made, retry later")]
    Log(#[source] AuditError),
    /// Cluster mode: the shared registry (etcd) cannot be written now.
    #[error("{0}")]
    Unavailable(String),
}

/// Cluster mode: the registry every node shares (etcd, under
/// `<prefix>sources/<department>`). A change is written there; every node,
/// this one included, applies it to its directory from there.
#[tonic::async_trait]
pub trait SharedSources: Send + Sync {
    /// Ok if a change can be written now; else why not.
    async fn writable(&self) -> Result<(), String>;
    /// Writes a registration for every node.
    async fn put(&self, source: &DataSource) -> Result<(), String>;
    /// Withdraws a registration on every node.
    async fn remove(&self, department_id: &str) -> Result<(), String>;
}

/// `changed_by` of the entry that undoes a change the cluster refused.
pub const ROLLED_BACK: &str = "rolled back: the cluster's etcd did not take the change";

fn refused(why: String) -> RegistryError {
    RegistryError::Unavailable(format!(
        "registry changes are refused while this node cannot write the cluster's etcd ({why}); nothing was changed, retry later or through another node (reads keep working)"
    ))
}

fn not_applied(why: String) -> RegistryError {
    RegistryError::Unavailable(format!(
        "the cluster's etcd did not take the change ({why}), so it is not in effect (this node logged it and its undoing); retry"
    ))
}

/// Registration changes: checked, logged, then applied to the directory.
pub struct Registry {
    directory: Arc<DepartmentDirectory>,
    audit: AuditLog,
    shared: Option<Arc<dyn SharedSources>>,
}

impl Registry {
    pub fn new(directory: Arc<DepartmentDirectory>, audit: AuditLog) -> Self {
        Self {
            directory,
            audit,
            shared: None,
        }
    }

    /// Cluster mode: changes go through the shared registry.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedSources>>) -> Self {
        self.shared = shared;
        self
    }

    pub fn directory(&self) -> &Arc<DepartmentDirectory> {
        &self.directory
    }

    /// Registers (or replaces) `source`; `changed_by` goes into the log.
    pub async fn register(
        &self,
        changed_by: String,
        source: DataSource,
    ) -> Result<DataSource, RegistryError> {
        // Everything the directory would refuse is refused before logging.
        self.directory.check(&source)?;
        if source.queries.len() + source.verifications.len() > MAX_NAMES
            || source
                .queries
                .iter()
                .chain(&source.verifications)
                .any(|n| n.is_empty() || n.len() > MAX_NAME_LEN)
        {
            return Err(RegistryError::Invalid {
                field: "source.queries",
                problem: format!(
                    "queries and verifications: at most {MAX_NAMES} names of 1–{MAX_NAME_LEN} bytes"
                ),
            });
        }
        if source.capacity_per_second == 0 {
            return Err(RegistryError::Invalid {
                field: "source.capacity_per_second",
                problem: "capacity_per_second must be at least 1".into(),
            });
        }
        self.change(DataSourceChanged {
            source: Some(source.clone()),
            removed: false,
            changed_by,
        })
        .await?;
        info!(department = %source.department_id, endpoint = %source.endpoint, "data source registered");
        Ok(source)
    }

    /// One registry change, the same way for both kinds: refused while the
    /// cluster's registry cannot be written; logged and applied while the
    /// directory's keys are held (so no decision checked with the old key
    /// is logged between); in a cluster written to etcd too, and rolled
    /// back in this log when etcd does not take it. In effect here at once,
    /// in the log's order; in a cluster the watch brings it to the other
    /// nodes (and back here, unchanged).
    async fn change(&self, change: DataSourceChanged) -> Result<(), RegistryError> {
        let source = change.source.clone().unwrap_or_default();
        let department_id = source.department_id.clone();
        if let Some(shared) = &self.shared {
            shared.writable().await.map_err(refused)?;
        }
        let _change = self.directory.changing_keys().await;
        let before = self.directory.get(&department_id);
        let removed = change.removed;
        self.log(change).await?;
        if let Some(shared) = &self.shared {
            let written = if removed {
                shared.remove(&department_id).await
            } else {
                shared.put(&source).await
            };
            if let Err(why) = written {
                self.roll_back(&department_id, before).await;
                return Err(not_applied(why));
            }
        }
        if removed {
            self.directory.remove(&department_id);
        } else {
            self.directory.upsert(source)?;
        }
        Ok(())
    }

    async fn log(&self, change: DataSourceChanged) -> Result<(), RegistryError> {
        self.audit
            .append_event(Event::DataSourceChanged(change))
            .await
            .map(drop)
            .map_err(RegistryError::Log)
    }

    /// The cluster did not take a change this node logged: logs the
    /// source as it was before, so this node's log keeps naming the key it
    /// verifies with. (Should etcd have taken it after all, the watch brings
    /// it back and it is logged then, as any other node's change.)
    async fn roll_back(&self, department_id: &str, before: Option<DataSource>) {
        let change = match before {
            Some(source) => DataSourceChanged {
                source: Some(source),
                removed: false,
                changed_by: ROLLED_BACK.to_owned(),
            },
            None => DataSourceChanged {
                source: Some(DataSource {
                    department_id: department_id.to_owned(),
                    ..Default::default()
                }),
                removed: true,
                changed_by: ROLLED_BACK.to_owned(),
            },
        };
        if let Err(e) = self.log(change).await {
            tracing::error!(department = %department_id, error = %e, "a registry change the cluster refused could not be rolled back in this log; replay of this log will name it");
        }
    }

    pub fn list(&self) -> Vec<DataSource> {
        self.directory.list()
    }

    /// Withdraws the data source of `department_id`.
    pub async fn deregister(
        &self,
        changed_by: String,
        department_id: &str,
    ) -> Result<(), RegistryError> {
        let Some(source) = self.directory.get(department_id) else {
            return Err(RegistryError::NotRegistered(department_id.to_owned()));
        };
        self.change(DataSourceChanged {
            source: Some(source),
            removed: true,
            changed_by,
        })
        .await?;
        info!(department = %department_id, "data source deregistered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use crate::audit::{AuditStore, NoteSigner, WriterOptions};

    fn pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn source(key: &Ed25519KeyPair) -> DataSource {
        DataSource {
            department_id: "civil-affairs".into(),
            endpoint: "http://127.0.0.1:9".into(),
            queries: vec!["marriage_record".into()],
            verifications: vec![],
            capacity_per_second: 10,
            answer_public_key: key.public_key().as_ref().to_vec(),
        }
    }

    /// A department re-registering with a new key while a decision checked
    /// with its old key is not logged yet: the change waits for that
    /// entry, so replay checks the decision with the key it was checked
    /// with. (Before, the change could be logged in between.)
    #[tokio::test(start_paused = true)]
    async fn a_key_change_is_logged_after_the_answers_checked_with_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let signer = NoteSigner::new("proofgate/node-1", pair()).unwrap();
        let log =
            AuditLog::start(store, signer, "node-1".into(), WriterOptions::default()).unwrap();
        let directory = Arc::new(DepartmentDirectory::default());
        let registry = Arc::new(Registry::new(Arc::clone(&directory), log.clone()));
        let (old, new) = (pair(), pair());
        registry
            .register("dept".into(), source(&old))
            .await
            .unwrap();
        let size = log.durable_size();

        // A decision is checking answers with the old key.
        let in_use = directory.keys_in_use().await;
        let change = tokio::spawn({
            let registry = Arc::clone(&registry);
            let new = source(&new);
            async move { registry.register("dept".into(), new).await }
        });
        // However long it waits (the clock is paused and jumps ahead when
        // idle), the change is neither logged nor in effect.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!change.is_finished());
        assert_eq!(
            log.durable_size(),
            size,
            "the change was logged before the decision"
        );
        assert_eq!(
            directory.get("civil-affairs").unwrap().answer_public_key,
            old.public_key().as_ref()
        );

        drop(in_use);
        change.await.unwrap().unwrap();
        assert_eq!(log.durable_size(), size + 1);
        assert_eq!(
            directory.get("civil-affairs").unwrap().answer_public_key,
            new.public_key().as_ref()
        );
    }

    struct Refusing;

    #[tonic::async_trait]
    impl SharedSources for Refusing {
        async fn writable(&self) -> Result<(), String> {
            Ok(())
        }
        async fn put(&self, _: &DataSource) -> Result<(), String> {
            Err("etcd timed out".into())
        }
        async fn remove(&self, _: &str) -> Result<(), String> {
            Err("etcd timed out".into())
        }
    }

    /// The cluster refuses a change this node logged: it logs the source as
    /// it was, so its log's last word is the key it still verifies with.
    #[tokio::test]
    async fn a_change_the_cluster_refuses_is_rolled_back_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let signer = NoteSigner::new("proofgate/node-1", pair()).unwrap();
        let log =
            AuditLog::start(store, signer, "node-1".into(), WriterOptions::default()).unwrap();
        let directory = Arc::new(DepartmentDirectory::default());
        let old = source(&pair());
        directory.upsert(old.clone()).unwrap();
        let registry = Registry::new(Arc::clone(&directory), log.clone())
            .with_shared(Some(Arc::new(Refusing)));

        let refused = registry.register("dept".into(), source(&pair())).await;
        assert!(
            matches!(refused, Err(RegistryError::Unavailable(_))),
            "{refused:?}"
        );
        let refused = registry.deregister("dept".into(), "civil-affairs").await;
        assert!(
            matches!(refused, Err(RegistryError::Unavailable(_))),
            "{refused:?}"
        );
        assert_eq!(directory.get("civil-affairs"), Some(old.clone()));

        // Each change and its undoing are logged; the last word is `old`.
        assert_eq!(log.durable_size(), 4);
        let last = log.store().entry(3).unwrap().unwrap();
        let entry = <crate::pb::AuditEntry as prost::Message>::decode(&last[..]).unwrap();
        let Some(Event::DataSourceChanged(changed)) = entry.event else {
            panic!("not a registry change: {entry:?}");
        };
        assert_eq!((changed.source, changed.removed), (Some(old), false));
        assert_eq!(changed.changed_by, ROLLED_BACK);
    }
}
