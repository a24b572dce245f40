//! The audit log: every state change is an entry, hashed into an RFC 6962
//! Merkle tree, stored in sled by a single writer that group-commits, and
//! sealed per batch by an Ed25519-signed checkpoint (C2SP signed note).

mod checkpoint;
mod merkle;
mod project;
mod proof;
mod rebuild;
mod records;
mod replay;
pub mod report;
mod service;
mod store;
mod verify;
mod writer;

pub use checkpoint::{parse_checkpoint, Checkpoint, CheckpointError, NoteSigner, NoteVerifier};
pub use merkle::{leaf_hash, node_hash, root_of, Frontier, Hash, EMPTY_ROOT};
pub use project::{projections_of, DishonestyDays, Projection};
pub use proof::{
    consistency_proof, inclusion_proof, subtree_hash, verify_consistency, verify_inclusion,
    ProofError, SubtreeSource,
};
pub use rebuild::{rebuild_data_dir, rebuild_report, KindReport, RebuildReport};
pub use records::{data_dir_records, export, file_records, LogRecord, RecordError, Records};
pub use replay::{replay_records, Discrepancy, ReplayReport};
pub use service::AuditApi;
pub use store::{
    application_key, data_source_key, dishonesty_key, request_key, spot_check_key, ticket_key,
    AuditStore, DishonestyRecord, SpotCheckRecord, StoreError, TicketRecord, POLICY_VERSION_KEY,
};
pub use verify::{rotation_message, verify_records, Problem, VerifyReport};
pub use writer::{AuditError, AuditLog, Receipt, WriterOptions};
