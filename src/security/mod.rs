//! Security: the node's keys on disk; mutual TLS certificates (dev CA with
//! rcgen); caller identity from the client certificate and its role; the
//! per-service gate with per-caller rate limits; signed policy sets (who may
//! change the rules).

pub mod authz;
pub mod certs;
pub mod crl;
pub mod identity;
mod keys;
pub mod policy_signing;
pub mod tls;

pub use authz::{
    caller, connect, denied, resource_exhausted, ForwardedBy, Guard, IdentityHeader, RateLimits,
    ServiceGate, ON_BEHALF_OF_HEADER, PLAINTEXT_IDENTITY_HEADER,
};
pub use certs::{
    ensure_dev_certs, is_gateway_identity, issue, node_identity, standard_identities, CertError,
    TlsFiles, Validity, GATEWAY_IDENTITY,
};
pub use identity::{Caller, Role, RoleMap};
pub use keys::{
    generate_keys, load_or_generate_key_file, load_or_generate_keys, log_origin, open_log,
    rotate_log_key, write_log_vkey, KeyError, LogKeyError, NodeKeys, LOG_ORIGIN_PREFIX,
};
pub use policy_signing::{Approval, PolicyKeyError, PolicyTrust, SignatureError};
