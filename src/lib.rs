//! proofgate — the data-verification gateway of a certificate-free city.
//!
//! For every proof a matter needs, the published policy says whether it is
//! abolished, replaced by a commitment, checked by a data query, or verified by
//! the issuing department; the gateway applies it and logs every decision in a
//! signed, tamper-evident log.
//!
//! ## Layers: imports point down only
//!
//! ```text
//! main (src/main.rs)  parse, config, tracing, call the library, exit code
//!  → cli              one function per subcommand: a report or an error, the exit code
//!  → config, bench    configuration precedence; the load generator
//!  → server           assembly, gRPC service impls, the error boundary, HTTP: /metrics, the console
//!  → operations, cluster  spot checks, dishonesty records, statistics, console figures; etcd session, node directory, reservations
//!  → gateway          ApplicationService logic: one application from request to log
//!  → departments      directory and clients, registry, mocks (used by server/cli only)
//!  → security         keys and key rotation, certificates and CRLs, the node's reloadable TLS,
//!                     identities, roles, the gates, policy signatures
//!  → audit            entries, store, writer, checkpoints, reads, verify, replay
//!  → policy           pure: catalog, conditions, the decision core
//!  → leaves           signing, subject, merkle, metrics, clock, telemetry, pb
//! ```
//!
//! `tests/layers.rs` holds the same table and fails on a cycle or an upward
//! import. Cross-cutting things are handed in: `server` creates the
//! [`metrics::Metrics`] handle and gives it to whatever records.
//!
//! | module          | part (see DESIGN.md)                                        |
//! |-----------------|-------------------------------------------------------------|
//! | [`cli`]         | the commands of the binary, their reports and exit codes    |
//! | [`config`]      | the node configuration: defaults < file < env < flags       |
//! | [`bench`](mod@bench) | the load generator                                          |
//! | [`server`]      | assembling and running a node; gRPC services; error boundary|
//! | [`operations`]  | spot checks, dishonesty records, statistics                 |
//! | [`cluster`]     | cluster mode: etcd session, node directory, request reservations (`serve --etcd`) |
//! | [`gateway`]     | one application from request to log, watchers               |
//! | [`departments`] | data-source directory, registry, mock departments           |
//! | [`security`]    | keys, mutual TLS certificates, revocation lists and reloads, caller roles, rate limits, signed policy sets |
//! | [`audit`]       | entries, checkpoints, sled store, writer, reads, replay     |
//! | [`policy`]      | parse, validate, compile and evaluate the catalog (pure)    |
//! | [`signing`]     | department answer batch signatures and their verification   |
//! | [`subject`]     | ID-number checksums and keyed pseudonyms                    |
//! | [`merkle`]      | RFC 6962 Merkle tree hashing and proofs                     |
//! | [`metrics`]     | the metrics a node records (prometheus-client), as a handle |
//! | [`clock`]       | time, injectable                                            |
//! | [`telemetry`]   | tracing setup                                               |
//! | [`pb`]          | the gRPC contract `proofgate.v1`, generated from `proto/`   |

#![forbid(unsafe_code)]

pub mod audit;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod departments;
pub mod gateway;
pub mod merkle;
pub mod metrics;
pub mod operations;
pub mod pb;
pub mod policy;
pub mod security;
pub mod server;
pub mod signing;
pub mod subject;
pub mod telemetry;
