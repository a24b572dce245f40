//! Secrets and, later, caller identity: the node's signing and pseudonym
//! keys live here; mutual TLS and roles build on it.

mod keys;

pub use keys::{generate_keys, load_or_generate_keys, KeyError, NodeKeys};
