//! Offline verification of a whole log: recompute every leaf and the tree,
//! check every checkpoint's signature (following key rotations) and that its
//! root is the root of the entries before it — which also makes successive
//! checkpoints consistent — and report the first problem with its index.

use std::fmt;

use prost::Message;
use ring::signature::{UnparsedPublicKey, ED25519};

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use super::checkpoint::{parse_checkpoint, NoteVerifier};
use super::merkle::{leaf_hash, Frontier, Hash};
use super::records::{LogRecord, RecordError};
use crate::pb::{audit_entry::Event, AuditEntry, KeyRotated};

/// What is signed when a log's checkpoint key is rotated.
pub fn rotation_message(new_verifier_key: &str) -> Vec<u8> {
    [
        b"proofgate key rotation\n".as_slice(),
        new_verifier_key.as_bytes(),
    ]
    .concat()
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Entry { index: u64, reason: String },
    Checkpoint { size: u64, reason: String },
    Log { reason: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Entry { index, reason } => write!(f, "entry {index}: {reason}"),
            Problem::Checkpoint { size, reason } => {
                write!(f, "checkpoint at size {size}: {reason}")
            }
            Problem::Log { reason } => f.write_str(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    /// Checkpoint signatures checked (all of them, or a sample: see
    /// [`SignatureCheck`]).
    pub signatures_checked: u64,
    pub tree_size: u64,
    pub root: Hash,
    pub origin: String,
    /// Keys that signed checkpoints, in order (more than one after rotations).
    pub keys: Vec<String>,
    pub problem: Option<Problem>,
    /// The newest checkpoint note, with the cosignatures it carries.
    pub newest_note: String,
    /// Witness cosignatures found on the newest checkpoint and the quorum
    /// asked for (set by `audit verify --witness … --quorum K` when met).
    pub cosignatures: Option<(usize, usize)>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// The index field (1) of an encoded AuditEntry and whether its event is a
/// key rotation (field 14), read without decoding the whole entry: the hot
/// path of verification is hashing, not parsing.
fn scan_entry(bytes: &[u8]) -> Option<(u64, bool)> {
    let mut buf = bytes;
    let mut index = 0;
    let mut rotation = false;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = prost::encoding::decode_varint(&mut buf).ok()?;
                if field == 1 {
                    index = v;
                }
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).ok()? as usize;
                buf = buf.get(len..)?;
                if field == 14 {
                    rotation = true;
                }
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some((index, rotation))
}

/// Which checkpoint signatures a verification checks. Every checkpoint's
/// size and root are checked against the recomputed tree whatever is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Every checkpoint's signature, on all cores.
    All,
    /// The newest checkpoint's, the last one signed by each key before a
    /// rotation, and the first at or past each multiple of `every` entries.
    /// The newest signature over the recomputed root authenticates every
    /// entry, and every older checkpoint whose root matches the tree at its
    /// size states a prefix of that signed tree; what is left unchecked is
    /// whether the signature lines of those older notes were kept intact.
    Sampled { every: u64 },
}

/// How [`verify_records_with`] verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    pub signatures: SignatureCheck,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            signatures: SignatureCheck::All,
        }
    }
}

/// Entries between two sampled checkpoint signatures (`audit verify`'s default).
pub const SIGNATURE_SAMPLE_EVERY: u64 = 10_000;

/// Size stated by a note, before its signature is checked (to pick the key).
fn stated_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// A checkpoint signature to check: (record number, size, note, key).
type SignatureJob = (u64, u64, String, Arc<NoteVerifier>);

struct Verifier {
    key: Option<Arc<NoteVerifier>>,
    key_text: String,
    /// A rotation seen in entry `index` takes effect after checkpoint `index + 1`.
    rotation: Option<(u64, NoteVerifier, String)>,
    frontier: Frontier,
    report: VerifyReport,
    last_checkpoint: u64,
    /// Records seen so far; orders problems found on different threads.
    seq: u64,
    problem_seq: u64,
    /// Signatures are checked on other threads, off the hashing path.
    signatures: Vec<SyncSender<SignatureJob>>,
    /// Round robin over `signatures`.
    next_checker: usize,
    check: SignatureCheck,
    /// Sampled: the newest checkpoint not sent for checking yet (sent at
    /// the end, or when a rotation makes it the last of its key).
    held: Option<SignatureJob>,
    /// Sampled: the size of the last checkpoint sent for checking.
    last_sampled: u64,
    /// Signature checks asked for.
    signatures_asked: u64,
}

impl Verifier {
    fn fail(&mut self, problem: Problem) {
        if self.report.problem.is_none() {
            self.report.problem = Some(problem);
            self.problem_seq = self.seq;
        }
    }

    /// Verifies checkpoints with `vkey` from now on (`whose` names it in
    /// the problem if it does not parse).
    fn take_key(&mut self, vkey: &str, whose: &str) {
        match NoteVerifier::from_vkey(vkey) {
            Ok(key) => {
                self.key = Some(Arc::new(key));
                self.key_text = vkey.trim().to_owned();
                self.report.keys.push(self.key_text.clone());
            }
            Err(e) => self.fail(Problem::Log {
                reason: format!("{whose} is unusable: {e}"),
            }),
        }
    }

    fn send_signature(&mut self, job: SignatureJob) {
        if self.signatures.is_empty() {
            return;
        }
        self.signatures_asked += 1;
        let n = self.next_checker % self.signatures.len();
        self.next_checker = self.next_checker.wrapping_add(1);
        let _ = self.signatures[n].send(job);
    }

    /// The checkpoint `job` passed its other checks: ask for its signature
    /// as the [`SignatureCheck`] says.
    fn ask_signature(&mut self, job: SignatureJob) {
        match self.check {
            SignatureCheck::All => self.send_signature(job),
            SignatureCheck::Sampled { every } => {
                let size = job.1;
                let every = every.max(1);
                if self.last_sampled == 0 || size / every > self.last_sampled / every {
                    self.last_sampled = size;
                    self.held = None;
                    self.send_signature(job);
                } else {
                    self.held = Some(job);
                }
            }
        }
    }

    /// The held checkpoint (the newest, or the last of a key) is checked.
    fn release_held(&mut self) {
        if let Some(job) = self.held.take() {
            self.send_signature(job);
        }
    }

    fn entry(&mut self, index: u64, bytes: &[u8], recorded_leaf: Option<Hash>, leaf: Hash) {
        let expected = self.frontier.size();
        if index != expected {
            let reason = if index > expected {
                format!("missing (the next stored entry is {index})")
            } else {
                format!(
                    "entry {index} appears again after entry {} (reordered or duplicated)",
                    expected - 1
                )
            };
            let at = index.min(expected);
            return self.fail(Problem::Entry { index: at, reason });
        }
        let Some((stated, rotation)) = scan_entry(bytes) else {
            return self.fail(Problem::Entry {
                index,
                reason: "does not decode as an AuditEntry".into(),
            });
        };
        if stated != index {
            return self.fail(Problem::Entry {
                index,
                reason: format!("says it is entry {stated}: moved from its place"),
            });
        }
        if recorded_leaf.is_some_and(|recorded| recorded != leaf) {
            return self.fail(Problem::Entry {
                index,
                reason: "content changed after it was logged (its leaf hash differs from the one recorded at write time)".into(),
            });
        }
        if rotation {
            if let Err(reason) = self.rotation(index, bytes) {
                return self.fail(Problem::Entry { index, reason });
            }
        }
        self.frontier.push(leaf);
        self.report.entries += 1;
    }

    fn rotation(&mut self, index: u64, bytes: &[u8]) -> Result<(), String> {
        let entry = AuditEntry::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
        let Some(Event::KeyRotated(KeyRotated {
            previous_verifier_key,
            new_verifier_key,
            signature,
        })) = entry.event
        else {
            return Err("field 14 is not a key rotation".into());
        };
        let Some(current) = &self.key else {
            return Err("key rotation before any key is known".into());
        };
        if previous_verifier_key != self.key_text {
            return Err("key rotation names a previous key that is not the one in force".into());
        }
        let new_key = NoteVerifier::from_vkey(&new_verifier_key)
            .map_err(|e| format!("new key of the rotation: {e}"))?;
        UnparsedPublicKey::new(&ED25519, current.public_key())
            .verify(&rotation_message(&new_verifier_key), &signature)
            .map_err(|_| "key rotation is not signed by the key in force".to_owned())?;
        self.rotation = Some((index + 1, new_key, new_verifier_key));
        Ok(())
    }

    fn checkpoint(&mut self, note: &str) {
        let size = stated_size(note).unwrap_or(0);
        if let Some((effective_after, _, _)) = &self.rotation {
            if size > *effective_after {
                if let Some((_, key, text)) = self.rotation.take() {
                    // The last checkpoint of the old key is checked.
                    self.release_held();
                    self.key = Some(Arc::new(key));
                    self.key_text = text.clone();
                    self.report.keys.push(text);
                }
            }
        }
        let Some(key) = &self.key else {
            return self.fail(Problem::Log {
                reason: "no verifier key: pass --vkey or export with the key".into(),
            });
        };
        let key = Arc::clone(key);
        let checkpoint = match parse_checkpoint(note) {
            Ok(c) => c,
            Err(e) => {
                return self.fail(Problem::Checkpoint {
                    size,
                    reason: e.to_string(),
                })
            }
        };
        self.ask_signature((self.seq, size, note.to_owned(), key));
        if self.report.origin.is_empty() {
            self.report.origin = checkpoint.origin.clone();
        } else if self.report.origin != checkpoint.origin {
            return self.fail(Problem::Checkpoint {
                size,
                reason: format!(
                    "origin `{}` is not this log's `{}`",
                    checkpoint.origin, self.report.origin
                ),
            });
        }
        let present = self.frontier.size();
        if checkpoint.size > present {
            return self.fail(Problem::Checkpoint {
                size,
                reason: format!(
                    "covers {} entries but only {present} precede it: entry {present}..{} missing, or this checkpoint was moved or swapped",
                    checkpoint.size,
                    checkpoint.size - 1
                ),
            });
        }
        if checkpoint.size < present {
            return self.fail(Problem::Checkpoint {
                size,
                reason: format!(
                    "stands after entry {} but covers only {} entries (moved or swapped)",
                    present - 1,
                    checkpoint.size
                ),
            });
        }
        if checkpoint.root != self.frontier.root() {
            return self.fail(Problem::Checkpoint {
                size,
                reason: format!(
                    "root does not match entries {}..{}: one of them changed after it was signed",
                    self.last_checkpoint,
                    size.saturating_sub(1)
                ),
            });
        }
        self.last_checkpoint = size;
        self.report.checkpoints += 1;
    }
}

/// Verifies a whole log. `trusted_vkey` is the key the auditor trusts; without
/// one the key carried by the records is used (and the report says which).
/// `progress` is called with the entries verified so far, every 100,000.
/// Every checkpoint signature is checked ([`SignatureCheck::All`]).
pub fn verify_records(
    records: impl Iterator<Item = Result<LogRecord, RecordError>> + Send,
    trusted_vkey: Option<&str>,
    progress: impl FnMut(u64),
) -> Result<VerifyReport, RecordError> {
    verify_records_with(records, trusted_vkey, VerifyOptions::default(), progress)
}

/// A signature checker thread: the first bad signature it sees, by record number.
fn signature_checker(
    jobs: std::sync::mpsc::Receiver<SignatureJob>,
) -> std::thread::JoinHandle<Option<(u64, Problem)>> {
    std::thread::spawn(move || {
        for (seq, size, note, key) in jobs {
            if let Err(e) = key.verify_signature(&note) {
                return Some((
                    seq,
                    Problem::Checkpoint {
                        size,
                        reason: e.to_string(),
                    },
                ));
            }
        }
        None
    })
}

/// Records taken from the source at a time, hashed together.
const CHUNK: usize = 1024;

/// Chunks hashed ahead of the checks.
const CHUNKS_AHEAD: usize = 4;

/// A chunk of records with the leaf hash of each entry (None for other
/// records).
type Hashed = (Vec<Result<LogRecord, RecordError>>, Vec<Option<Hash>>);

/// Takes chunks of records from `records` and hashes their entries, on the
/// thread that calls it, for the checks on another: reading (its own
/// threads), hashing and checking overlap, a stage per thread, with no
/// stage waiting on another's chunk but through the bounded channel.
fn hash_ahead(
    mut records: impl Iterator<Item = Result<LogRecord, RecordError>>,
    out: SyncSender<Hashed>,
) {
    loop {
        let chunk: Vec<_> = records.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return;
        }
        let leaves = chunk
            .iter()
            .map(|r| match r {
                Ok(LogRecord::Entry { bytes, .. }) => Some(leaf_hash(bytes)),
                _ => None,
            })
            .collect();
        // After a record that failed to read, the checks stop there.
        let failed = chunk.iter().any(Result::is_err);
        if out.send((chunk, leaves)).is_err() || failed {
            return; // the checks stopped at a problem, or will
        }
    }
}

/// [`verify_records`] with a choice of which checkpoint signatures to check.
pub fn verify_records_with(
    records: impl Iterator<Item = Result<LogRecord, RecordError>> + Send,
    trusted_vkey: Option<&str>,
    options: VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, RecordError> {
    let checkers = match options.signatures {
        SignatureCheck::All => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8),
        SignatureCheck::Sampled { .. } => 1,
    };
    let mut senders = Vec::with_capacity(checkers);
    let mut threads = Vec::with_capacity(checkers);
    for _ in 0..checkers {
        let (tx, rx) = sync_channel::<SignatureJob>(1024);
        senders.push(tx);
        threads.push(signature_checker(rx));
    }
    let mut v = Verifier {
        seq: 0,
        problem_seq: u64::MAX,
        signatures: senders,
        next_checker: 0,
        check: options.signatures,
        held: None,
        last_sampled: 0,
        signatures_asked: 0,
        key: None,
        key_text: String::new(),
        rotation: None,
        frontier: Frontier::default(),
        report: VerifyReport {
            entries: 0,
            checkpoints: 0,
            signatures_checked: 0,
            tree_size: 0,
            root: [0; 32],
            origin: String::new(),
            keys: Vec::new(),
            problem: None,
            newest_note: String::new(),
            cosignatures: None,
        },
        last_checkpoint: 0,
    };
    if let Some(vkey) = trusted_vkey {
        v.take_key(vkey, "the trusted key");
    }
    std::thread::scope(|scope| -> Result<(), RecordError> {
        let (tx, hashed) = sync_channel::<Hashed>(CHUNKS_AHEAD);
        scope.spawn(move || hash_ahead(records, tx));
        for (chunk, leaves) in hashed {
            for (record, leaf) in chunk.into_iter().zip(leaves) {
                if v.report.problem.is_some() {
                    // Dropping `hashed` stops the hashing thread.
                    return Ok(());
                }
                v.seq += 1;
                match record? {
                    LogRecord::VerifierKey(key) => {
                        if v.key.is_none() {
                            v.take_key(&key, "the log's verifier key");
                        }
                    }
                    LogRecord::Entry {
                        index,
                        bytes,
                        recorded_leaf,
                    } => {
                        let leaf = leaf.unwrap_or_else(|| leaf_hash(&bytes));
                        v.entry(index, &bytes, recorded_leaf, leaf);
                        if v.report.entries.is_multiple_of(100_000) {
                            progress(v.report.entries);
                        }
                    }
                    LogRecord::Checkpoint(note) => {
                        v.checkpoint(&note);
                        v.report.newest_note = note;
                    }
                }
            }
        }
        Ok(())
    })?;
    if v.report.problem.is_none() && v.frontier.size() > v.last_checkpoint {
        let reason = if v.last_checkpoint == 0 && v.report.checkpoints == 0 {
            format!("{} entries and no checkpoint signs them", v.frontier.size())
        } else {
            format!(
                "entries {}..{} are signed by no checkpoint (appended afterwards?)",
                v.last_checkpoint,
                v.frontier.size() - 1
            )
        };
        v.fail(Problem::Log { reason });
    }
    // The newest checkpoint (or the one a problem stopped at) is always checked.
    v.release_held();
    v.report.signatures_checked = v.signatures_asked;
    v.signatures.clear();
    let first_bad = threads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .min_by_key(|(seq, _)| *seq);
    if let Some((seq, problem)) = first_bad {
        // On the same record the signature is the first thing checked.
        if seq <= v.problem_seq {
            v.report.problem = Some(problem);
        }
    }
    v.report.tree_size = v.frontier.size();
    v.report.root = v.frontier.root();
    Ok(v.report)
}
