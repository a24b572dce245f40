//! A C2SP transparency-log witness (c2sp.org/tlog-witness), without its HTTP
//! side: the `add-checkpoint` request body, the checks in the spec's order,
//! the latest cosigned checkpoint per log kept in sled (compare of the old
//! size and store of the new one atomic, flushed before the answer), and the
//! `cosignature/v1` it returns. `server::witness` serves it over HTTP;
//! `server::cosign` is the log's side that asks witnesses.
//!
//! Request body (every line ends in `\n`):
//!
//! ```text
//! old 20852014                                   <- size the witness last cosigned
//! PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=   <- 0..=63 consistency proof hashes
//!                                                <- blank line
//! example.com/behind-the-sofa                    <- the checkpoint, a signed note
//! 20852163
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
//!
//! — example.com/behind-the-sofa Az3grlgt...
//! ```

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use thiserror::Error;

use super::checkpoint::{
    note_signatures, parse_checkpoint, split_note, CheckpointError, NoteSigner, NoteVerifier,
};
use crate::clock::SharedClock;
use crate::merkle::{verify_consistency, Hash};

/// At most this many consistency proof lines (the spec's limit).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest request body a witness reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Content type of a 409's body: the witness's latest size and a newline.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// An `add-checkpoint` request body, parsed (not yet checked against any key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    /// The checkpoint note, exactly as sent.
    pub checkpoint: String,
}

/// A request the witness could not parse (400), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed add-checkpoint request: {0}")]
pub struct Malformed(pub String);

fn malformed(reason: impl Into<String>) -> Malformed {
    Malformed(reason.into())
}

/// A decimal with no leading zeroes (`0` alone for zero), as the spec wants.
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl AddCheckpoint {
    /// The request body, byte for byte as the spec writes it.
    pub fn encode(&self) -> String {
        let mut body = format!("old {}\n", self.old_size);
        for hash in &self.proof {
            body.push_str(&B64.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.checkpoint);
        body
    }

    /// Parses a request body; any deviation from the spec's format is
    /// [`Malformed`], never a panic.
    pub fn parse(body: &[u8]) -> Result<Self, Malformed> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(malformed(format!(
                "body is larger than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(body).map_err(|_| malformed("body is not UTF-8"))?;
        let (old_line, mut rest) = text
            .split_once('\n')
            .ok_or_else(|| malformed("no old size line"))?;
        let old_size = old_line
            .strip_prefix("old ")
            .and_then(parse_decimal)
            .ok_or_else(|| {
                malformed("first line must be `old <size>` (decimal, no leading zeroes)")
            })?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or_else(|| malformed("no blank line before the checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(malformed(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                )));
            }
            let hash: Hash = B64
                .decode(line)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| malformed("a proof line is not 32 bytes of base64"))?;
            proof.push(hash);
        }
        if rest.is_empty() {
            return Err(malformed("no checkpoint after the blank line"));
        }
        Ok(Self {
            old_size,
            proof,
            checkpoint: rest.to_owned(),
        })
    }
}

/// Why the witness did not cosign, each with the spec's HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no log with this origin is configured.
    #[error("unknown log origin `{0}`")]
    UnknownLog(String),
    /// 403: no signature by a key trusted for the origin verifies.
    #[error("no valid signature by a key trusted for `{0}`")]
    BadSignature(String),
    /// 409: the old size is not the witness's latest size (which the body
    /// carries), or the same size with another root.
    #[error("{reason}; the witness's latest size for this log is {latest}")]
    Conflict { latest: u64, reason: String },
    /// 422: the consistency proof does not verify.
    #[error("the consistency proof from size {old} to {new} does not verify")]
    BadProof { old: u64, new: u64 },
    /// 500: the witness's own store failed; nothing was cosigned.
    #[error("witness store: {0}")]
    Store(String),
}

impl Refusal {
    /// The HTTP status code of the spec.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnknownLog(_) => 404,
            Refusal::BadSignature(_) => 403,
            Refusal::Conflict { .. } => 409,
            Refusal::BadProof { .. } => 422,
            Refusal::Store(_) => 500,
        }
    }
}

#[derive(Debug, Error)]
pub enum WitnessError {
    #[error("witness store: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "the witness store at {0} is in use by another process (is the witness already running?)"
    )]
    InUse(String),
    #[error("log key `{vkey}`: {source}")]
    LogKey {
        vkey: String,
        #[source]
        source: CheckpointError,
    },
    #[error(
        "no log configured: pass --log VKEY (a log's vkey, or a file holding one) at least once"
    )]
    NoLogs,
}

/// The latest checkpoint a witness cosigned for one log: size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub size: u64,
    pub root: Hash,
}

impl Latest {
    fn to_bytes(self) -> [u8; 40] {
        let mut bytes = [0u8; 40];
        bytes[..8].copy_from_slice(&self.size.to_be_bytes());
        bytes[8..].copy_from_slice(&self.root);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (size, root) = bytes.split_first_chunk::<8>()?;
        Some(Self {
            size: u64::from_be_bytes(*size),
            root: root.try_into().ok()?,
        })
    }
}

/// A checkpoint the witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub origin: String,
    pub size: u64,
    /// The response body: the cosignature line, newline included.
    pub line: String,
}

/// A witness: its cosigning key, the logs it knows, and its state.
pub struct Witness {
    signer: NoteSigner,
    /// Trusted keys per origin (a log may have several, e.g. across a rotation).
    logs: HashMap<String, Vec<NoteVerifier>>,
    /// Latest cosigned checkpoint per origin: origin → size (8 BE) || root.
    state: sled::Tree,
    db: sled::Db,
    clock: SharedClock,
}

/// The sled tree holding the latest cosigned checkpoint per origin.
const STATE_TREE: &str = "latest";

impl Witness {
    /// Opens (or creates) the witness state in `path`; `logs` are the log
    /// vkeys it accepts (each names its origin).
    pub fn open(
        path: &Path,
        signer: NoteSigner,
        logs: &[String],
        clock: SharedClock,
    ) -> Result<Self, WitnessError> {
        if logs.is_empty() {
            return Err(WitnessError::NoLogs);
        }
        let mut trusted: HashMap<String, Vec<NoteVerifier>> = HashMap::new();
        for vkey in logs {
            let key = NoteVerifier::from_vkey(vkey).map_err(|source| WitnessError::LogKey {
                vkey: vkey.clone(),
                source,
            })?;
            trusted.entry(key.name().to_owned()).or_default().push(key);
        }
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    WitnessError::InUse(path.display().to_string())
                }
                _ => WitnessError::Sled(e),
            })?;
        let state = db.open_tree(STATE_TREE)?;
        Ok(Self {
            signer,
            logs: trusted,
            state,
            db,
            clock,
        })
    }

    /// The witness's vkey (`name+id+base64(0x04 || key)`).
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// The latest checkpoint cosigned for `origin`, if any.
    pub fn latest(&self, origin: &str) -> Result<Option<Latest>, WitnessError> {
        Ok(self
            .state
            .get(origin.as_bytes())?
            .and_then(|v| Latest::from_bytes(&v)))
    }

    /// `POST /add-checkpoint`: the response body (cosignature lines) or the
    /// refusal with its status. Blocking (sled flush): call off the async
    /// threads.
    pub fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refusal> {
        self.cosign(body).map(|c| c.line)
    }

    /// [`Witness::add_checkpoint`], saying what was cosigned.
    pub fn cosign(&self, body: &[u8]) -> Result<Cosigned, Refusal> {
        let request = AddCheckpoint::parse(body).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let note = request.checkpoint.as_str();
        let (text, block) =
            split_note(note).map_err(|e| Refusal::BadRequest(format!("checkpoint: {e}")))?;
        let checkpoint =
            parse_checkpoint(note).map_err(|e| Refusal::BadRequest(format!("checkpoint: {e}")))?;
        let signatures =
            note_signatures(block).map_err(|e| Refusal::BadRequest(format!("checkpoint: {e}")))?;
        let keys = self
            .logs
            .get(&checkpoint.origin)
            .ok_or_else(|| Refusal::UnknownLog(checkpoint.origin.clone()))?;
        // Unknown keys are ignored; one valid signature by a trusted key suffices.
        let signed = keys.iter().any(|key| {
            signatures
                .iter()
                .filter(|s| key.is_signer_of(s))
                .any(|s| key.check(text, s).is_ok())
        });
        if !signed {
            return Err(Refusal::BadSignature(checkpoint.origin.clone()));
        }
        if request.old_size > checkpoint.size {
            return Err(Refusal::BadRequest(format!(
                "old size {} is larger than the checkpoint's size {}",
                request.old_size, checkpoint.size
            )));
        }
        let new = Latest {
            size: checkpoint.size,
            root: checkpoint.root,
        };
        let key = checkpoint.origin.as_bytes();
        // Compare and store atomically: a concurrent request that changed
        // the state makes this one check again against the new state.
        loop {
            let stored = self.state.get(key).map_err(store)?;
            let latest = match &stored {
                None => None,
                Some(bytes) => Some(Latest::from_bytes(bytes).ok_or_else(|| {
                    Refusal::Store(format!("state of `{}` is corrupt", checkpoint.origin))
                })?),
            };
            let latest_size = latest.map_or(0, |l| l.size);
            if request.old_size != latest_size {
                return Err(Refusal::Conflict {
                    latest: latest_size,
                    reason: format!(
                        "old size {} is not the latest size cosigned",
                        request.old_size
                    ),
                });
            }
            match latest {
                None => {
                    if !request.proof.is_empty() {
                        return Err(Refusal::BadProof {
                            old: 0,
                            new: new.size,
                        });
                    }
                }
                Some(latest) if latest.size == new.size => {
                    if latest.root != new.root || !request.proof.is_empty() {
                        return Err(Refusal::Conflict {
                            latest: latest.size,
                            reason: format!(
                                "a checkpoint of size {} with another root hash was cosigned",
                                latest.size
                            ),
                        });
                    }
                }
                Some(latest) => {
                    if !verify_consistency(
                        latest.size,
                        new.size,
                        &latest.root,
                        &new.root,
                        &request.proof,
                    ) {
                        return Err(Refusal::BadProof {
                            old: latest.size,
                            new: new.size,
                        });
                    }
                }
            }
            let swapped = self
                .state
                .compare_and_swap(key, stored.as_deref(), Some(&new.to_bytes()[..]))
                .map_err(store)?;
            if swapped.is_ok() {
                break;
            }
        }
        self.db.flush().map_err(store)?;
        let now = u64::try_from(self.clock.now_unix_ms().div_euclid(1000)).unwrap_or(0);
        let line = self
            .signer
            .cosignature_line(text, now)
            .map_err(|e| Refusal::Store(e.to_string()))?;
        Ok(Cosigned {
            origin: checkpoint.origin,
            size: checkpoint.size,
            line,
        })
    }
}

fn store(e: sled::Error) -> Refusal {
    Refusal::Store(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::count_cosignatures;
    use crate::merkle::proof::{consistency_proof, LeafHashes};
    use crate::merkle::{leaf_hash, root_of};
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    fn pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    struct Fixture {
        log: NoteSigner,
        witness: Witness,
        leaves: Vec<Hash>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = NoteSigner::new("example.com/log", pair()).unwrap();
        let witness = Witness::open(
            &dir.path().join("w"),
            NoteSigner::cosigner("witness.example/w1", pair()).unwrap(),
            &[log.verifier_key()],
            crate::clock::ManualClock::new(1_679_315_147_000),
        )
        .unwrap();
        let leaves = (0..20u8).map(|i| leaf_hash(&[i])).collect();
        Fixture {
            log,
            witness,
            leaves,
            _dir: dir,
        }
    }

    impl Fixture {
        fn checkpoint(&self, size: u64) -> String {
            self.log
                .sign_checkpoint(size, &root_of(&self.leaves[..size as usize]))
        }

        fn request(&self, old: u64, size: u64) -> String {
            let proof = if old == 0 {
                Vec::new()
            } else {
                consistency_proof(&LeafHashes(&self.leaves), old, size).unwrap()
            };
            AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: self.checkpoint(size),
            }
            .encode()
        }
    }

    #[test]
    fn cosigns_consistent_checkpoints_and_refuses_the_rest_with_the_spec_status() {
        let f = fixture();
        let response = f
            .witness
            .add_checkpoint(f.request(0, 5).as_bytes())
            .unwrap();
        assert!(response.starts_with("\u{2014} witness.example/w1 "));
        assert!(response.ends_with('\n'));
        // The response appended to the checkpoint verifies as a cosignature.
        let note = format!("{}{response}", f.checkpoint(5));
        let key = NoteVerifier::from_cosigner_vkey(&f.witness.verifier_key()).unwrap();
        assert_eq!(count_cosignatures(&note, &[key]).0, 1);

        let r = f.witness.add_checkpoint(f.request(0, 8).as_bytes());
        assert_eq!(r.unwrap_err().status(), 409);
        assert!(f.witness.add_checkpoint(f.request(5, 8).as_bytes()).is_ok());
        assert_eq!(
            f.witness.latest("example.com/log").unwrap().unwrap().size,
            8
        );

        // Same size, other root: 409, state unchanged.
        let fork = AddCheckpoint {
            old_size: 8,
            proof: vec![],
            checkpoint: f.log.sign_checkpoint(8, &[9u8; 32]),
        };
        let refused = f
            .witness
            .add_checkpoint(fork.encode().as_bytes())
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::Conflict { latest: 8, .. }),
            "{refused:?}"
        );
        // Larger size, bogus proof: 422.
        let bogus = AddCheckpoint {
            old_size: 8,
            proof: vec![[1u8; 32]; 3],
            checkpoint: f.checkpoint(12),
        };
        let refused = f
            .witness
            .add_checkpoint(bogus.encode().as_bytes())
            .unwrap_err();
        assert_eq!(refused.status(), 422);
        assert_eq!(
            f.witness.latest("example.com/log").unwrap().unwrap().size,
            8
        );
        // Old size past the checkpoint: 400.
        let r = f
            .witness
            .add_checkpoint(f.request(8, 8).replace("old 8", "old 9").as_bytes());
        assert_eq!(r.unwrap_err().status(), 400);
        // Unknown origin: 404; a key not trusted: 403.
        let stranger = NoteSigner::new("example.com/other", pair()).unwrap();
        let unknown = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: stranger.sign_checkpoint(1, &[0u8; 32]),
        };
        assert_eq!(
            f.witness
                .add_checkpoint(unknown.encode().as_bytes())
                .unwrap_err()
                .status(),
            404
        );
        let impostor = NoteSigner::new("example.com/log", pair()).unwrap();
        let forged = AddCheckpoint {
            old_size: 8,
            proof: consistency_proof(&LeafHashes(&f.leaves), 8, 9).unwrap(),
            checkpoint: impostor.sign_checkpoint(9, &root_of(&f.leaves[..9])),
        };
        assert_eq!(
            f.witness
                .add_checkpoint(forged.encode().as_bytes())
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            f.witness.latest("example.com/log").unwrap().unwrap().size,
            8
        );
    }

    #[test]
    fn the_spec_example_body_parses() {
        let body = "old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\njrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n";
        let parsed = AddCheckpoint::parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.old_size, 20852014);
        assert_eq!(parsed.proof.len(), 4);
        assert_eq!(parse_checkpoint(&parsed.checkpoint).unwrap().size, 20852163);
        assert_eq!(parsed.encode(), body);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        for (body, reason) in [
            ("", "old size line"),
            ("old 01\n\nx", "leading zeroes"),
            ("old -1\n\nx", "decimal"),
            ("new 1\n\nx", "old <size>"),
            ("old 1\nnot base64\n\nx", "32 bytes"),
            ("old 1\nAAAA\n\nx", "32 bytes"),
            ("old 1\n", "blank line"),
            ("old 1\n\n", "no checkpoint"),
        ] {
            let e = AddCheckpoint::parse(body.as_bytes()).unwrap_err();
            assert!(e.0.contains(reason), "{body:?}: {e}");
        }
        let many = format!(
            "old 1\n{}\nx",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".repeat(64)
        );
        assert!(AddCheckpoint::parse(many.as_bytes())
            .unwrap_err()
            .0
            .contains("63"));
    }

    proptest! {
        #[test]
        fn no_body_makes_the_parser_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = AddCheckpoint::parse(&body);
        }

        #[test]
        fn no_text_makes_the_witness_panic(body in "(old [0-9]{1,3}\n)?([A-Za-z0-9+/=]{0,44}\n){0,3}\n?[ -~\n\u{2014}]{0,200}") {
            static SHARED: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
            let f = SHARED.get_or_init(fixture);
            let _ = f.witness.add_checkpoint(body.as_bytes());
        }

        #[test]
        fn requests_round_trip(
            old in any::<u64>(),
            proof in proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_PROOF_LINES),
            origin in "[a-z./]{1,20}",
            size in any::<u64>(),
        ) {
            let request = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: format!("{origin}\n{size}\n{}\n\n\u{2014} k AAAA\n", B64.encode([0u8; 32])),
            };
            prop_assert_eq!(AddCheckpoint::parse(request.encode().as_bytes()), Ok(request));
        }
    }
}
