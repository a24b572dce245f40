//! proofgate — the data-verification gateway of a certificate-free city.
//!
//! For every proof a matter needs, the published policy says whether it is
//! abolished, replaced by a commitment, checked by a data query, or verified by
//! the issuing department; the gateway applies it and logs every decision in a
//! signed, tamper-evident log.
//!
//! | module          | part (see DESIGN.md)                                        |
//! |-----------------|-------------------------------------------------------------|
//! | [`pb`]          | the gRPC contract `proofgate.v1`, generated from `proto/`   |
//! | [`policy`]      | parse, validate, compile and evaluate the catalog (pure)    |
//! | [`gateway`]     | ApplicationService: one application from request to log     |
//! | [`departments`] | data-source directory, registry, signed answers, mocks      |
//! | [`audit`]       | entries, Merkle tree, checkpoints, sled store, writer       |
//! | [`security`]    | keys, mutual TLS certificates, caller roles, rate limits    |
//! | [`operations`]  | spot checks, dishonesty records, statistics, policy reload  |
//! | [`subject`]     | ID-number checksums and keyed pseudonyms                    |
//! | [`server`]      | assembling and running a node                               |
//! | [`bench`]       | the load generator                                          |
//! | [`telemetry`]   | tracing setup                                               |

#![forbid(unsafe_code)]

pub mod audit;
pub mod bench;
pub mod clock;
pub mod config;
pub mod departments;
pub mod gateway;
pub mod operations;
pub mod pb;
pub mod policy;
pub mod security;
pub mod server;
pub mod subject;
pub mod telemetry;
