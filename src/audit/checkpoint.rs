//! Checkpoints in the C2SP tlog-checkpoint format, as C2SP signed notes
//! signed with Ed25519 — the form Go's sumdb, Sigstore and other transparency
//! logs use, so their tooling can read ours.
//!
//! ```text
//! proofgate/node-1          <- origin
//! 42                        <- tree size
//! qINS1GRFhWHwdkUeqLEoP4yEMkTBBrxEPSnTt+JtT1o=   <- base64 root
//!
//! — proofgate/node-1 Az3grlgt...   <- key id (4 bytes) || signature, base64
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use thiserror::Error;

use super::merkle::Hash;

/// Signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Signs checkpoints for one log (one gateway node).
pub struct NoteSigner {
    name: String,
    key_id: [u8; 4],
    key_pair: Ed25519KeyPair,
}

/// A checkpoint whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("malformed verifier key: {0}")]
    VerifierKey(&'static str),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by key {0} on the note")]
    NoSignature(String),
    #[error("signature by {0} does not verify")]
    BadSignature(String),
}

fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut material = Vec::with_capacity(name.len() + 2 + public_key.len());
    material.extend_from_slice(name.as_bytes());
    material.push(b'\n');
    material.push(ALG_ED25519);
    material.extend_from_slice(public_key);
    let hash = digest(&SHA256, &material);
    let mut id = [0u8; 4];
    id.copy_from_slice(&hash.as_ref()[..4]);
    id
}

/// A key name must be non-empty with no whitespace and no '+'.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl NoteSigner {
    pub fn new(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::VerifierKey(
                "name must be non-empty, without spaces or '+'",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key_pair.public_key().as_ref()),
            key_pair,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP vkey: `name+hex(key id)+base64(0x01 || public key)`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key_pair.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(key)
        )
    }

    /// Signs arbitrary bytes (key rotation statements).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key_pair.sign(message).as_ref().to_vec()
    }

    /// The signed note of a checkpoint with this signer's name as origin.
    pub fn sign_checkpoint(&self, size: u64, root: &Hash) -> String {
        let body = format!("{}\n{}\n{}\n", self.name, size, B64.encode(root));
        self.sign_note(&body)
    }

    fn sign_note(&self, body: &str) -> String {
        let signature = self.key_pair.sign(body.as_bytes());
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        )
    }
}

/// Checks notes signed by one key, given as a C2SP vkey.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: Vec<u8>,
}

impl NoteVerifier {
    pub fn from_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::VerifierKey("expected name+keyid+key"));
        };
        if !valid_name(name) {
            return Err(CheckpointError::VerifierKey("bad name"));
        }
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CheckpointError::VerifierKey("key id must be 8 hex digits"))?;
        let key = B64
            .decode(key_b64)
            .map_err(|_| CheckpointError::VerifierKey("key is not base64"))?;
        if key.len() != 33 || key[0] != ALG_ED25519 {
            return Err(CheckpointError::VerifierKey("not an Ed25519 key"));
        }
        let public_key = key[1..].to_vec();
        if key_id(name, &public_key) != id {
            return Err(CheckpointError::VerifierKey(
                "key id does not match the key",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The key id, 4 bytes of SHA-256 over name and key.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// `name+hex(key id)`: who signs with this key, as the vkey names it.
    pub fn signer_id(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.key_id))
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`
    /// (statements other than notes: key rotations, policy sets).
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies the note's signature by this key and parses the checkpoint body.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        self.verify_signature(note)?;
        parse_checkpoint(note)
    }

    /// Checks that the note carries a valid signature by this key.
    pub fn verify_signature(&self, note: &str) -> Result<(), CheckpointError> {
        let split = note.find("\n\n").ok_or(CheckpointError::Malformed(
            "no blank line before signatures",
        ))?;
        let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(CheckpointError::Malformed(
                "signature block must end with a newline",
            ));
        }
        let mut found = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
                return Err(CheckpointError::Malformed(
                    "signature line must start with an em dash",
                ));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(CheckpointError::Malformed(
                    "signature line needs a name and a signature",
                ));
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = B64.decode(blob) else {
                return Err(CheckpointError::Malformed("signature is not base64"));
            };
            if blob.len() < 4 || blob[..4] != self.key_id {
                continue;
            }
            found = true;
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(body.as_bytes(), &blob[4..])
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(CheckpointError::NoSignature(self.name.clone()));
        }
        Ok(())
    }
}

/// Parses a checkpoint note's body WITHOUT checking its signature.
pub fn parse_checkpoint(note: &str) -> Result<Checkpoint, CheckpointError> {
    let body = note
        .split_once("\n\n")
        .map(|(body, _)| body)
        .ok_or(CheckpointError::Malformed(
            "no blank line before signatures",
        ))?;
    let mut lines = body.lines();
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or(CheckpointError::Malformed("missing origin line"))?;
    let size =
        lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(CheckpointError::Malformed(
                "tree size is not a decimal number",
            ))?;
    let root: Hash = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or(CheckpointError::Malformed(
            "root hash is not 32 bytes of base64",
        ))?;
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn signer(name: &str) -> NoteSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        NoteSigner::new(name, Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()).unwrap()
    }

    #[test]
    fn signed_checkpoint_round_trips_through_the_vkey() {
        let s = signer("proofgate/node-1");
        let note = s.sign_checkpoint(42, &[7u8; 32]);
        assert!(note.starts_with("proofgate/node-1\n42\n"));
        let v = NoteVerifier::from_vkey(&s.verifier_key()).unwrap();
        let cp = v.verify_checkpoint(&note).unwrap();
        assert_eq!(cp.size, 42);
        assert_eq!(cp.root, [7u8; 32]);
        assert_eq!(cp.origin, "proofgate/node-1");
    }

    #[test]
    fn edited_note_or_other_key_is_refused() {
        let s = signer("proofgate/node-1");
        let note = s.sign_checkpoint(42, &[7u8; 32]);
        let v = NoteVerifier::from_vkey(&s.verifier_key()).unwrap();
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            v.verify_checkpoint(&edited),
            Err(CheckpointError::BadSignature("proofgate/node-1".into()))
        );
        let other = signer("proofgate/node-1");
        let v_other = NoteVerifier::from_vkey(&other.verifier_key()).unwrap();
        assert!(matches!(
            v_other.verify_checkpoint(&note),
            Err(CheckpointError::NoSignature(_))
        ));
    }

    #[test]
    fn malformed_vkeys_are_refused() {
        let s = signer("n");
        let vkey = s.verifier_key();
        assert!(NoteVerifier::from_vkey("nonsense").is_err());
        let wrong_id = format!("n+00000000+{}", vkey.rsplit('+').next().unwrap());
        assert!(NoteVerifier::from_vkey(&wrong_id).is_err());
    }
}
