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

fn refused(why: String) -> RegistryError {
    RegistryError::Unavailable(format!(
        "registry changes are refused while this node cannot write the cluster's etcd ({why}); nothing was changed, retry later or through another node (reads keep working)"
    ))
}

fn not_applied(why: String) -> RegistryError {
    RegistryError::Unavailable(format!(
        "the change was logged on this node but the cluster's etcd did not take it ({why}), so it is not in effect; retry"
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
        if let Some(shared) = &self.shared {
            shared.writable().await.map_err(refused)?;
        }
        self.audit
            .append_event(Event::DataSourceChanged(DataSourceChanged {
                source: Some(source.clone()),
                removed: false,
                changed_by,
            }))
            .await
            .map_err(RegistryError::Log)?;
        match &self.shared {
            Some(shared) => shared.put(&source).await.map_err(not_applied)?,
            None => self.directory.upsert(source.clone())?,
        }
        info!(department = %source.department_id, endpoint = %source.endpoint, "data source registered");
        Ok(source)
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
        if let Some(shared) = &self.shared {
            shared.writable().await.map_err(refused)?;
        }
        self.audit
            .append_event(Event::DataSourceChanged(DataSourceChanged {
                source: Some(source),
                removed: true,
                changed_by,
            }))
            .await
            .map_err(RegistryError::Log)?;
        match &self.shared {
            Some(shared) => shared.remove(department_id).await.map_err(not_applied)?,
            None => {
                self.directory.remove(department_id);
            }
        }
        info!(department = %department_id, "data source deregistered");
        Ok(())
    }
}
