//! The audit log: every state change is an entry, hashed into an RFC 6962
//! Merkle tree, stored in sled by a single writer that group-commits, and
//! sealed per batch by an Ed25519-signed checkpoint (C2SP signed note).

mod checkpoint;
mod groups;
mod mirror;
mod mirror_reads;
mod project;
mod reader;
mod rebuild;
mod records;
mod replay;
mod replication;
pub mod report;
mod store;
mod verify;
pub mod witness;
mod writer;

pub use checkpoint::{
    cosignature_message, count_cosignatures, note_signatures, parse_checkpoint, split_note,
    Checkpoint, CheckpointError, NoteSignature, NoteSigner, NoteVerifier,
};
// The Merkle tree is a leaf module shared with answer signing; the names
// stay importable from here (and as `super::merkle` / `super::proof`).
pub use crate::merkle::proof::{
    consistency_proof, inclusion_proof, subtree_hash, verify_consistency, verify_inclusion,
    ProofError, SubtreeSource,
};
use crate::merkle::{self, proof};
pub use crate::merkle::{leaf_hash, node_hash, root_of, Frontier, Hash, EMPTY_ROOT};
pub use groups::{chunk_key, decode_group, encode_group, group_key, GROUP_ENTRIES};
pub use mirror::{mirror_identity, recorded_fork, MirrorError, MirrorLog, Standing};
pub use mirror_reads::{index_mirrored, mirrored_application, MirroredApplication};
pub use project::{
    policy_version_meta, projections_of, DishonestyDays, Projection, APPLICATION_CHAIN,
};
pub use reader::{AuditReader, ReadError, MAX_ACCESSES, MAX_ENTRIES_PER_CALL};
pub use rebuild::{
    migrate_projections, rebuild_data_dir, rebuild_report, restore_projections, KindReport,
    RebuildReport,
};
pub use records::{data_dir_records, export, file_records, LogRecord, RecordError, Records};
pub use replay::{replay_records, Discrepancy, PolicyApproval, ReplayReport};
pub use replication::{NotReplicated, Replication, DEFAULT_MIRROR_ACK_TIMEOUT};
pub use store::{
    application_key, compact, compaction_leftover_of, data_source_key, dishonesty_key, request_key,
    sled_config, spot_check_key, ticket_key, AuditStore, DishonestyRecord, KindUsage,
    SpotCheckRecord, StoreError, StoreOptions, TicketRecord, Usage, DEFAULT_CACHE_BYTES,
    POLICY_VERSION_KEY,
};
pub use verify::{
    rotation_message, verify_records, verify_records_with, Problem, SignatureCheck, VerifyOptions,
    VerifyReport, SIGNATURE_SAMPLE_EVERY,
};
pub use writer::{AuditError, AuditLog, Receipt, WriterOptions};
