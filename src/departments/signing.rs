//! Department answer signatures: Ed25519 over the deterministic protobuf bytes
//! of the answer with its signature field empty, behind a domain label so a
//! signature on one kind of message never verifies as another.

use prost::Message;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use crate::pb::{CompleteVerificationRequest, QueryResponse, VerifyResponse};

/// A message a department signs.
pub trait Signed: Message + Clone {
    const DOMAIN: &'static [u8];
    fn signature_mut(&mut self) -> &mut Vec<u8>;
    fn signature(&self) -> &[u8];

    fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature_mut().clear();
        let mut bytes = Self::DOMAIN.to_vec();
        bytes.extend_from_slice(&unsigned.encode_to_vec());
        bytes
    }
}

macro_rules! signed {
    ($t:ty, $domain:literal) => {
        impl Signed for $t {
            const DOMAIN: &'static [u8] = $domain;
            fn signature_mut(&mut self) -> &mut Vec<u8> {
                &mut self.signature
            }
            fn signature(&self) -> &[u8] {
                &self.signature
            }
        }
    };
}

signed!(QueryResponse, b"proofgate.v1.QueryResponse\0");
signed!(VerifyResponse, b"proofgate.v1.VerifyResponse\0");
signed!(
    CompleteVerificationRequest,
    b"proofgate.v1.CompleteVerificationRequest\0"
);

/// Signs `message` in place.
pub fn sign<M: Signed>(key: &Ed25519KeyPair, message: &mut M) {
    let signature = key.sign(&message.signing_bytes());
    *message.signature_mut() = signature.as_ref().to_vec();
}

/// Whether `message` carries a valid signature by `public_key`.
pub fn verify<M: Signed>(public_key: &[u8], message: &M) -> bool {
    !message.signature().is_empty()
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&message.signing_bytes(), message.signature())
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    #[test]
    fn a_signed_answer_verifies_and_any_change_breaks_it() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut answer = QueryResponse {
            request_nonce: "n1".into(),
            department_id: "civil-affairs".into(),
            found: true,
            ..Default::default()
        };
        assert!(
            !verify(key.public_key().as_ref(), &answer),
            "unsigned must not verify"
        );
        sign(&key, &mut answer);
        assert!(verify(key.public_key().as_ref(), &answer));
        let mut replayed = answer.clone();
        replayed.request_nonce = "n2".into();
        assert!(!verify(key.public_key().as_ref(), &replayed));
        let mut flipped = answer.clone();
        flipped.found = false;
        assert!(!verify(key.public_key().as_ref(), &flipped));
    }
}
