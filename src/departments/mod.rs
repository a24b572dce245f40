//! Departments: the directory of registered data sources with their clients,
//! answer signatures, the DepartmentRegistry service, and the mock
//! departments (real gRPC servers over fixture data) for development and tests.

mod directory;
pub mod mock;
mod registry;
pub mod resilience;
pub mod signing;

pub use directory::{department_identity, CallFailure, DepartmentDirectory, DirectoryError};
pub use registry::{CompletionHandler, RegistryApi};
