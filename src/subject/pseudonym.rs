//! Keyed pseudonyms: the ID number never enters the log, but a citizen's
//! accesses can still be found by recomputing the pseudonym from the number.

use ring::hmac;

use crate::pb::IdType;

pub const PSEUDONYM_KEY_LEN: usize = 32;

/// HMAC-SHA256 key of this node. Whoever holds it can link pseudonyms to
/// numbers by trial, so it lives beside the signing key with owner-only access.
#[derive(Clone)]
pub struct PseudonymKey(hmac::Key);

impl PseudonymKey {
    pub fn new(secret: &[u8; PSEUDONYM_KEY_LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The subject's pseudonym. Numbers are upper-cased first so that `x`
    /// and `X` check characters name the same person.
    pub fn pseudonym(&self, id_type: IdType, id_number: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(id_type.as_str_name().as_bytes());
        context.update(b":");
        context.update(id_number.to_ascii_uppercase().as_bytes());
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A keyed digest of arbitrary bytes (a request), so that equal inputs
    /// can be recognised without anyone testing guesses of them.
    pub fn digest(&self, bytes: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Domain-separated from pseudonyms, which share the key.
        let mut context = hmac::Context::with_key(&self.0);
        context.update(b"proofgate request digest\n");
        context.update(bytes);
        out.copy_from_slice(context.sign().as_ref());
        out
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonym_depends_on_key_and_ignores_check_letter_case() {
        let a = PseudonymKey::new(&[1; 32]);
        let b = PseudonymKey::new(&[2; 32]);
        let id = "11010519491231002X";
        assert_eq!(
            a.pseudonym(IdType::ResidentId, id),
            a.pseudonym(IdType::ResidentId, &id.to_lowercase())
        );
        assert_ne!(
            a.pseudonym(IdType::ResidentId, id),
            b.pseudonym(IdType::ResidentId, id)
        );
        assert_ne!(
            a.pseudonym(IdType::ResidentId, id),
            a.pseudonym(IdType::UnifiedSocialCreditCode, id)
        );
    }
}
