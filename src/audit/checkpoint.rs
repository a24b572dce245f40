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
//! — witness.example/w1 jWbPPw...    <- a witness's cosignature (C2SP tlog-cosignature)
//! ```
//!
//! The one implementation of signed notes here: splitting a note into its
//! text and signature lines, key ids, vkeys, and the two signature types we
//! use — Ed25519 (type 0x01, the log's own) and timestamped Ed25519
//! `cosignature/v1` (type 0x04, a witness's): the witness, the log asking
//! witnesses and the auditors all go through it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use thiserror::Error;

use super::merkle::Hash;

/// Signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// Signature type of timestamped Ed25519 witness cosignatures
/// (c2sp.org/tlog-cosignature, `cosignature/v1`).
const ALG_COSIGNATURE_V1: u8 = 0x04;
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// A `cosignature/v1` signature: key id, 8-byte big-endian timestamp, Ed25519.
const COSIGNATURE_BLOB_LEN: usize = 4 + 8 + 64;
/// Signature lines a note may carry (the spec asks verifiers to accept at
/// least 16); bounds the work a hostile note can cause.
pub const MAX_NOTE_SIGNATURES: usize = 100;

/// Signs for one key: a log's checkpoints (type 0x01) or, for a witness,
/// `cosignature/v1` cosignatures (type 0x04).
pub struct NoteSigner {
    name: String,
    alg: u8,
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
    #[error("this signer makes {0} signatures, not that kind")]
    WrongKind(&'static str),
}

/// `SHA-256(name || 0x0A || signature type || public key)[:4]`.
fn key_id(name: &str, alg: u8, public_key: &[u8]) -> [u8; 4] {
    let mut material = Vec::with_capacity(name.len() + 2 + public_key.len());
    material.extend_from_slice(name.as_bytes());
    material.push(b'\n');
    material.push(alg);
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

/// The message a `cosignature/v1` signs: two header lines, then the
/// checkpoint's note text (final newline included, no signature lines).
pub fn cosignature_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A signed note split at its last blank line: the text (with its final
/// newline) and the signature block (one line per signature, each ending in
/// a newline). Refuses notes with control characters other than newline.
pub fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(CheckpointError::Malformed(
            "a signed note may hold no control character but newline",
        ));
    }
    let split = note.rfind("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before signatures",
    ))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    if signatures.is_empty() {
        return Err(CheckpointError::Malformed("no signature line"));
    }
    if !signatures.ends_with('\n') {
        return Err(CheckpointError::Malformed(
            "signature block must end with a newline",
        ));
    }
    Ok((text, signatures))
}

/// One signature line of a note: `— <name> base64(key id || signature)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    /// What follows the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, CheckpointError> {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(CheckpointError::Malformed(
                "signature line must start with an em dash",
            ))?;
        let (name, blob) = rest.split_once(' ').ok_or(CheckpointError::Malformed(
            "signature line needs a name and a signature",
        ))?;
        if !valid_name(name) {
            return Err(CheckpointError::Malformed(
                "bad key name in a signature line",
            ));
        }
        let blob = B64
            .decode(blob)
            .map_err(|_| CheckpointError::Malformed("signature is not base64"))?;
        let Some((id, signature)) = blob.split_first_chunk::<4>() else {
            return Err(CheckpointError::Malformed(
                "signature is shorter than its key id",
            ));
        };
        Ok(Self {
            name: name.to_owned(),
            key_id: *id,
            signature: signature.to_vec(),
        })
    }

    /// The line, newline included.
    pub fn line(&self) -> String {
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// Every signature line of a signature block (at most [`MAX_NOTE_SIGNATURES`]).
pub fn note_signatures(block: &str) -> Result<Vec<NoteSignature>, CheckpointError> {
    let signatures = block
        .lines()
        .map(NoteSignature::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if signatures.len() > MAX_NOTE_SIGNATURES {
        return Err(CheckpointError::Malformed("too many signature lines"));
    }
    Ok(signatures)
}

impl NoteSigner {
    /// A log's checkpoint signer (Ed25519, type 0x01).
    pub fn new(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, CheckpointError> {
        Self::with_alg(name, ALG_ED25519, key_pair)
    }

    /// A witness's cosigner (`cosignature/v1`, type 0x04).
    pub fn cosigner(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, CheckpointError> {
        Self::with_alg(name, ALG_COSIGNATURE_V1, key_pair)
    }

    fn with_alg(name: &str, alg: u8, key_pair: Ed25519KeyPair) -> Result<Self, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::VerifierKey(
                "name must be non-empty, without spaces or '+'",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            alg,
            key_id: key_id(name, alg, key_pair.public_key().as_ref()),
            key_pair,
        })
    }

    /// The 4-byte key id of this key (name and type included).
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The `cosignature/v1` signature line over a checkpoint's note `text`
    /// at `timestamp` (POSIX seconds), newline included.
    pub fn cosignature_line(&self, text: &str, timestamp: u64) -> Result<String, CheckpointError> {
        if self.alg != ALG_COSIGNATURE_V1 {
            return Err(CheckpointError::WrongKind("checkpoint"));
        }
        let signature = self.key_pair.sign(&cosignature_message(timestamp, text));
        let mut blob = timestamp.to_be_bytes().to_vec();
        blob.extend_from_slice(signature.as_ref());
        Ok(NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: blob,
        }
        .line())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP vkey: `name+hex(key id)+base64(type || public key)`.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![self.alg];
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
        let line = NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: signature.as_ref().to_vec(),
        }
        .line();
        format!("{body}\n{line}")
    }
}

/// Checks notes signed by one key, given as a C2SP vkey: a log's Ed25519
/// key (type 0x01) or a witness's `cosignature/v1` key (type 0x04).
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    alg: u8,
    key_id: [u8; 4],
    public_key: Vec<u8>,
}

impl NoteVerifier {
    /// A log's key: `name+keyid+base64(0x01 || Ed25519 public key)`.
    pub fn from_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        Self::parse_vkey(vkey, ALG_ED25519)
    }

    /// A witness's key: `name+keyid+base64(0x04 || Ed25519 public key)`.
    pub fn from_cosigner_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        Self::parse_vkey(vkey, ALG_COSIGNATURE_V1)
    }

    fn parse_vkey(vkey: &str, alg: u8) -> Result<Self, CheckpointError> {
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
        if key.len() != 33 {
            return Err(CheckpointError::VerifierKey("not an Ed25519 key"));
        }
        if key[0] != alg {
            return Err(CheckpointError::VerifierKey(if alg == ALG_ED25519 {
                "not an Ed25519 log key (type 0x01); a witness key has type 0x04"
            } else {
                "not a cosignature/v1 witness key (type 0x04)"
            }));
        }
        let public_key = key[1..].to_vec();
        if key_id(name, alg, &public_key) != id {
            return Err(CheckpointError::VerifierKey(
                "key id does not match the key",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            alg,
            key_id: id,
            public_key,
        })
    }

    /// Whether this is a witness's (`cosignature/v1`) key.
    pub fn is_cosigner(&self) -> bool {
        self.alg == ALG_COSIGNATURE_V1
    }

    /// The vkey text of this key.
    pub fn vkey(&self) -> String {
        let mut key = vec![self.alg];
        key.extend_from_slice(&self.public_key);
        format!("{}+{}", self.signer_id(), B64.encode(key))
    }

    /// Whether `signature` (one parsed line) is by this key: same name and key id.
    pub fn is_signer_of(&self, signature: &NoteSignature) -> bool {
        signature.name == self.name && signature.key_id == self.key_id
    }

    /// Checks one signature line of this key over a note's `text`; for a
    /// cosignature, returns its timestamp.
    pub fn check(&self, text: &str, signature: &NoteSignature) -> Result<u64, CheckpointError> {
        let bad = || CheckpointError::BadSignature(self.name.clone());
        let (timestamp, message, raw) = if self.alg == ALG_COSIGNATURE_V1 {
            if signature.signature.len() != COSIGNATURE_BLOB_LEN - 4 {
                return Err(bad());
            }
            let (time, raw) = signature.signature.split_at(8);
            let mut be = [0u8; 8];
            be.copy_from_slice(time);
            let timestamp = u64::from_be_bytes(be);
            if timestamp > i64::MAX as u64 {
                return Err(bad());
            }
            (timestamp, cosignature_message(timestamp, text), raw)
        } else {
            (0, text.as_bytes().to_vec(), signature.signature.as_slice())
        };
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&message, raw)
            .map_err(|_| bad())?;
        Ok(timestamp)
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

    /// Checks that the note carries a valid signature by this key (every
    /// line with this key's name and id must verify; lines of other keys
    /// are ignored, as the signed-note spec says).
    pub fn verify_signature(&self, note: &str) -> Result<(), CheckpointError> {
        let (text, block) = split_note(note)?;
        let mut found = false;
        for signature in note_signatures(block)? {
            if !self.is_signer_of(&signature) {
                continue;
            }
            found = true;
            self.check(text, &signature)?;
        }
        if !found {
            return Err(CheckpointError::NoSignature(self.name.clone()));
        }
        Ok(())
    }
}

/// How many of `witnesses` (distinct keys) validly cosigned `note`, and the
/// problems met: a cosignature of a given witness that does not verify.
pub fn count_cosignatures(note: &str, witnesses: &[NoteVerifier]) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let (text, block) = match split_note(note) {
        Ok(parts) => parts,
        Err(e) => return (0, vec![e.to_string()]),
    };
    let signatures = match note_signatures(block) {
        Ok(s) => s,
        Err(e) => return (0, vec![e.to_string()]),
    };
    let mut counted: Vec<[u8; 4]> = Vec::new();
    for witness in witnesses.iter().filter(|w| w.is_cosigner()) {
        if counted.contains(&witness.key_id) {
            continue;
        }
        let mut valid = false;
        for signature in signatures.iter().filter(|s| witness.is_signer_of(s)) {
            match witness.check(text, signature) {
                Ok(_) => valid = true,
                Err(e) => problems.push(format!("cosignature of {}: {e}", witness.signer_id())),
            }
        }
        if valid {
            counted.push(witness.key_id);
        }
    }
    (counted.len(), problems)
}

/// Parses a checkpoint note's body WITHOUT checking its signature.
pub fn parse_checkpoint(note: &str) -> Result<Checkpoint, CheckpointError> {
    let (body, _) = split_note(note)?;
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

    #[test]
    fn cosignatures_are_timestamped_type_4_signatures_over_the_checkpoint_text() {
        let log = signer("example.com/behind-the-sofa");
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let witness = NoteSigner::cosigner("witness.example/w1", pair).unwrap();
        // Key id: SHA-256(name || 0x0A || 0x04 || key)[:4]; vkey of type 0x04.
        let expected = digest(
            &SHA256,
            &[b"witness.example/w1\n\x04".as_slice(), &public].concat(),
        );
        assert_eq!(witness.key_id(), expected.as_ref()[..4]);
        let vkey = witness.verifier_key();
        assert_eq!(
            B64.decode(vkey.splitn(3, '+').nth(2).unwrap()).unwrap()[0],
            4
        );
        assert!(NoteVerifier::from_vkey(&vkey).is_err(), "not a log key");
        assert!(NoteVerifier::from_cosigner_vkey(&log.verifier_key()).is_err());
        let key = NoteVerifier::from_cosigner_vkey(&vkey).unwrap();

        let note = log.sign_checkpoint(20852163, &[3u8; 32]);
        let (text, _) = split_note(&note).unwrap();
        let line = witness.cosignature_line(text, 1679315147).unwrap();
        let signature = NoteSignature::parse(line.trim_end()).unwrap();
        assert_eq!(signature.signature.len(), 8 + 64);
        assert_eq!(signature.signature[..8], 1679315147u64.to_be_bytes());
        assert_eq!(key.check(text, &signature), Ok(1679315147));
        let cosigned = format!("{note}{line}");
        assert_eq!(
            count_cosignatures(&cosigned, std::slice::from_ref(&key)).0,
            1
        );
        // The log's signature still verifies on the note with both lines.
        let log_key = NoteVerifier::from_vkey(&log.verifier_key()).unwrap();
        assert!(log_key.verify_checkpoint(&cosigned).is_ok());
        // Another time, another text: no longer valid.
        let mut moved = signature.clone();
        moved.signature[7] ^= 1;
        assert!(key.check(text, &moved).is_err());
        let (count, problems) = count_cosignatures(
            &format!("{note}{}", moved.line()),
            std::slice::from_ref(&key),
        );
        assert_eq!((count, problems.len()), (0, 1));
        assert!(key
            .check("example.com/behind-the-sofa\n1\nAA==\n", &signature)
            .is_err());
        // A log signer makes no cosignature.
        assert!(log.cosignature_line(text, 1).is_err());
    }

    #[test]
    fn notes_split_at_the_last_blank_line_and_refuse_control_characters() {
        let note = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
        let (text, block) = split_note(note).unwrap();
        assert!(text.ends_with("q2I=\n"));
        let signatures = note_signatures(block).unwrap();
        assert_eq!(signatures.len(), 2);
        assert_eq!(signatures[1].name, "witness.example.com/w1");
        assert_eq!(signatures[1].signature.len(), 8 + 64);
        assert_eq!(
            signatures[1].line(),
            format!("{}\n", block.lines().nth(1).unwrap())
        );
        assert_eq!(parse_checkpoint(note).unwrap().size, 20852163);
        assert!(split_note(&note.replace("20852163", "2085\r2163")).is_err());
        assert!(split_note("a\nb\n\n").is_err(), "no signature");
        assert!(
            split_note("a\n\n\u{2014} k AAAA").is_err(),
            "no final newline"
        );
    }
}
