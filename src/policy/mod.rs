//! The published catalog: parse, validate, compile and evaluate policies.
//!
//! Pure: no I/O beyond reading the policy files in [`load`], no clock (the
//! decision date is an input), so an auditor replaying the log re-derives the
//! same decisions from the same policy version.

pub mod calendar;
mod condition;
mod decide;
mod evaluate;
mod load;
mod model;
mod projection;
pub mod synthetic;

pub use condition::{Condition, ConditionError, ConditionInputs};
pub use decide::{decide_proof, AnswerSource, ProofContext};
pub use evaluate::{
    completed_verification, overall_status, overdue_verification, quoted, spot_check_selected,
    ApplicantFacts, Evidence, Judgement,
};
pub use load::{load_dir, load_sources, PolicyError, PolicyErrors};
pub use model::{CommitmentTerms, Matter, Mode, PolicySet, Proof, RequiredProof};
pub use projection::{application_id_of, apply, is_waiting, ApplyError};
