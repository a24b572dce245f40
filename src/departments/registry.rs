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
}

/// Registration changes: checked, logged, then applied to the directory.
pub struct Registry {
    directory: Arc<DepartmentDirectory>,
    audit: AuditLog,
}

impl Registry {
    pub fn new(directory: Arc<DepartmentDirectory>, audit: AuditLog) -> Self {
        Self { directory, audit }
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
        self.audit
            .append_event(Event::DataSourceChanged(DataSourceChanged {
                source: Some(source.clone()),
                removed: false,
                changed_by,
            }))
            .await
            .map_err(RegistryError::Log)?;
        self.directory.upsert(source.clone())?;
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
        self.audit
            .append_event(Event::DataSourceChanged(DataSourceChanged {
                source: Some(source),
                removed: true,
                changed_by,
            }))
            .await
            .map_err(RegistryError::Log)?;
        self.directory.remove(department_id);
        info!(department = %department_id, "data source deregistered");
        Ok(())
    }
}
