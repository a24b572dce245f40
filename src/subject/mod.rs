//! The people and organisations proofs are about: ID-number checksums
//! (GB 11643, GB 32100) and the keyed pseudonym that stands for a subject in
//! the audit log.

mod id_number;
mod pseudonym;

pub use id_number::{
    check_id, check_resident_id, check_unified_social_credit_code, IdNumberError, ResidentId,
};
pub use pseudonym::{PseudonymKey, PSEUDONYM_KEY_LEN};
