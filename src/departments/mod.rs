//! Departments: the directory of registered data sources with their clients,
//! answer signatures, the registry of data sources, and the mock
//! departments (real gRPC servers over fixture data) for development and tests.

mod directory;
pub mod mock;
mod registry;
pub mod resilience;
/// The answer-signature format is a leaf module; kept reachable here.
pub use crate::signing;

pub use directory::{
    department_identity, CallFailure, DepartmentDirectory, DirectoryError, MAX_REASON_BYTES,
};
pub use registry::{Registry, RegistryError, SharedSources};
