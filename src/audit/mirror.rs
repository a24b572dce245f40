//! A verified copy of another node's log (DESIGN.md "Witnesses and
//! mirrors"), kept in an [`AuditStore`] of the same shape as a node's own:
//! entries, Merkle nodes, frontier and the origin's signed checkpoints. So a
//! mirrored log is read, served and verified by the same code as an own one,
//! and a node's data folder can be restored from it.
//!
//! Nothing is stored before it is checked:
//! - each new checkpoint must carry a valid signature by the origin's key
//!   (pinned in the store on first contact) and name the origin;
//! - it must be consistent with the tree already stored (RFC 6962
//!   consistency proof from the stored size to the new one; equal roots at
//!   equal sizes; a smaller checkpoint must match the stored tree there);
//! - pulled entries are re-hashed onto the stored frontier, and each chunk's
//!   root must be a prefix of the new signed tree (a consistency proof from
//!   the chunk's end to the checkpoint, or the checkpoint's root itself at
//!   its end).
//!
//! A checkpoint inconsistent with what is stored is a fork of the origin's
//! log (two histories under one key): it is refused, the store records it
//! (so mirroring stays stopped across restarts) and nothing of the fork is
//! written. Entries that do not hash to a valid checkpoint are a bad peer,
//! not a fork: refused, and retried later.

use std::path::Path;

use thiserror::Error;

use super::checkpoint::{Checkpoint, CheckpointError, NoteVerifier};
use super::merkle::{leaf_hash, Hash};
use super::proof::{subtree_hash, verify_consistency};
use super::store::{checkpoint_key, stage_entry, AuditStore, StoreError, FRONTIER_KEY};

/// Meta keys of a mirror store (prefix `m`, bookkeeping).
const ORIGIN_KEY: &[u8] = b"mmirror-origin";
const VKEY_KEY: &[u8] = b"mmirror-vkey";
const FORK_KEY: &[u8] = b"mmirror-fork";

#[derive(Debug, Error)]
pub enum MirrorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("verifier key `{vkey}` of {origin}: {source}")]
    Key {
        origin: String,
        vkey: String,
        #[source]
        source: CheckpointError,
    },
    #[error("checkpoint of {origin} refused: {source}")]
    Signature {
        origin: String,
        #[source]
        source: CheckpointError,
    },
    #[error("the checkpoint names origin `{got}`, not `{expected}`")]
    WrongOrigin { expected: String, got: String },
    #[error("{origin} is mirrored with key `{pinned}`, but the peer serves `{served}` (a key rotation, or another log under that name): mirroring it stops until an operator decides")]
    KeyChanged {
        origin: String,
        pinned: String,
        served: String,
    },
    /// Two histories under one key: refused, recorded, mirroring stopped.
    #[error(
        "FORK of {origin}: {reason}; nothing of it was stored and mirroring this log is stopped"
    )]
    Fork { origin: String, reason: String },
    /// A fork was found before: this log is no longer mirrored.
    #[error("mirroring {origin} stopped after a fork was found: {reason}")]
    Stopped { origin: String, reason: String },
    /// What the peer sent cannot be checked or does not check out (not a
    /// fork: the signed checkpoint may be fine); nothing stored, try again.
    #[error("{origin}: the peer's answer is refused: {reason}")]
    BadPeer { origin: String, reason: String },
}

impl MirrorError {
    /// A fork, found now or before: mirroring this log stops.
    pub fn is_fork(&self) -> bool {
        matches!(self, MirrorError::Fork { .. } | MirrorError::Stopped { .. })
    }
}

/// Where a checkpoint stands against the stored tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nothing new: the stored tree is as large or larger, and agrees.
    Behind,
    /// Entries `from..checkpoint.size` are to be pulled.
    Ahead { from: u64 },
}

/// One origin's log, mirrored. A clone shares the store and the round
/// lock (an append runs on a blocking thread with a clone).
#[derive(Clone)]
pub struct MirrorLog {
    store: AuditStore,
    origin: String,
    vkey: String,
    verifier: NoteVerifier,
    /// Held for a whole pull round, from reading the stored size to the
    /// last append, including an append still running on a blocking
    /// thread after the task that awaited it was aborted: the next round
    /// starts from what that append left.
    round: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Set by the first write to the store that fails (shared by clones):
    /// sled may then hold in memory what is not on disk, so from then on
    /// nothing is appended, and no size is reported as held, until the
    /// node restarts and sled recovers the durable state.
    broken: std::sync::Arc<std::sync::OnceLock<String>>,
}

/// The stored origin and key of the mirror store at `path`, if it is one.
pub fn mirror_identity(store: &AuditStore) -> Result<Option<(String, String)>, StoreError> {
    let text = |key| -> Result<Option<String>, StoreError> {
        Ok(store
            .meta(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    };
    Ok(match (text(ORIGIN_KEY)?, text(VKEY_KEY)?) {
        (Some(origin), Some(vkey)) => Some((origin, vkey)),
        _ => None,
    })
}

impl MirrorLog {
    /// Opens (or creates) the mirror of `origin` at `path`, verified with
    /// `vkey`. A store that mirrors another origin, is pinned to another key,
    /// or found a fork before, is refused.
    pub fn open(path: &Path, origin: &str, vkey: &str) -> Result<Self, MirrorError> {
        let store = AuditStore::open(path)?;
        Self::over(store, origin, vkey)
    }

    /// As [`Self::open`], over an open store.
    pub fn over(store: AuditStore, origin: &str, vkey: &str) -> Result<Self, MirrorError> {
        let verifier = NoteVerifier::from_vkey(vkey).map_err(|source| MirrorError::Key {
            origin: origin.to_owned(),
            vkey: vkey.to_owned(),
            source,
        })?;
        if verifier.name() != origin {
            return Err(MirrorError::WrongOrigin {
                expected: origin.to_owned(),
                got: verifier.name().to_owned(),
            });
        }
        if let Some(reason) = store.meta(FORK_KEY)? {
            return Err(MirrorError::Stopped {
                origin: origin.to_owned(),
                reason: String::from_utf8_lossy(&reason).into_owned(),
            });
        }
        match mirror_identity(&store)? {
            Some((stored, _)) if stored != origin => {
                return Err(MirrorError::WrongOrigin {
                    expected: origin.to_owned(),
                    got: stored,
                })
            }
            Some((_, pinned)) if pinned != vkey => {
                return Err(MirrorError::KeyChanged {
                    origin: origin.to_owned(),
                    pinned,
                    served: vkey.to_owned(),
                })
            }
            Some(_) => {}
            None => {
                let db = store.db();
                db.insert(ORIGIN_KEY, origin.as_bytes())
                    .map_err(StoreError::from)?;
                db.insert(VKEY_KEY, vkey.as_bytes())
                    .map_err(StoreError::from)?;
                db.flush().map_err(StoreError::from)?;
            }
        }
        Ok(Self {
            store,
            origin: origin.to_owned(),
            vkey: vkey.to_owned(),
            verifier,
            round: Default::default(),
            broken: Default::default(),
        })
    }

    /// Err once a write to the store failed (see the field).
    fn writable(&self) -> Result<(), StoreError> {
        match self.broken.get() {
            Some(reason) => Err(StoreError::WriteFailed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Writes to the store; a failure marks it broken for every clone.
    fn write(&self, f: impl FnOnce(&sled::Db) -> sled::Result<()>) -> Result<(), StoreError> {
        self.writable()?;
        f(self.store.db()).map_err(|e| {
            let _ = self.broken.set(e.to_string());
            StoreError::from(e)
        })
    }

    /// The round lock (see the field), owned: moved into the blocking
    /// thread of an append and handed back with its result.
    pub async fn round(&self) -> tokio::sync::OwnedMutexGuard<()> {
        std::sync::Arc::clone(&self.round).lock_owned().await
    }

    pub fn store(&self) -> &AuditStore {
        &self.store
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn verifier_key(&self) -> &str {
        &self.vkey
    }

    /// The newest stored (verified) checkpoint's size, 0 if none.
    pub fn verified_size(&self) -> Result<u64, StoreError> {
        self.writable()?;
        Ok(self.store.latest_checkpoint()?.map_or(0, |(size, _)| size))
    }

    /// The newest stored (verified) checkpoint's size and root hash; (0,
    /// empty) if none.
    pub fn verified(&self) -> Result<(u64, Vec<u8>), StoreError> {
        self.writable()?;
        Ok(match self.store.latest_checkpoint()? {
            Some((size, note)) => {
                let root = super::checkpoint::parse_checkpoint(&note)
                    .map(|c| c.root.to_vec())
                    .map_err(|e| StoreError::Corrupt(format!("stored checkpoint: {e}")))?;
                (size, root)
            }
            None => (0, Vec::new()),
        })
    }

    /// Checks `note`'s signature by the origin's key and its origin line.
    pub fn check_signature(&self, note: &str) -> Result<Checkpoint, MirrorError> {
        let checkpoint =
            self.verifier
                .verify_checkpoint(note)
                .map_err(|source| MirrorError::Signature {
                    origin: self.origin.clone(),
                    source,
                })?;
        if checkpoint.origin != self.origin {
            return Err(MirrorError::WrongOrigin {
                expected: self.origin.clone(),
                got: checkpoint.origin,
            });
        }
        Ok(checkpoint)
    }

    /// Where the (signature-checked) `checkpoint` stands against the stored
    /// tree; `proof` is the consistency proof from the stored size to its
    /// size (asked for only when it is larger). A checkpoint that cannot be
    /// a later state of the stored tree is a fork: recorded, and refused.
    pub fn check_consistency(
        &self,
        checkpoint: &Checkpoint,
        proof: &[Hash],
    ) -> Result<Standing, MirrorError> {
        let frontier = self.store.frontier()?;
        let size = frontier.size();
        let fork = |reason: String| self.fork(reason);
        if checkpoint.size < size {
            let root = subtree_hash(&self.store, 0, checkpoint.size)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            return if root == checkpoint.root {
                Ok(Standing::Behind)
            } else {
                Err(fork(format!(
                    "a checkpoint at size {} has another root than the {size} entries already mirrored",
                    checkpoint.size
                )))
            };
        }
        if checkpoint.size == size {
            return if frontier.root() == checkpoint.root {
                Ok(Standing::Behind)
            } else {
                Err(fork(format!(
                    "a checkpoint at size {size} has another root than the one mirrored"
                )))
            };
        }
        if size > 0
            && !verify_consistency(
                size,
                checkpoint.size,
                &frontier.root(),
                &checkpoint.root,
                proof,
            )
        {
            return Err(fork(format!(
                "the checkpoint at size {} is not consistent with the {size} entries already mirrored (its consistency proof fails)",
                checkpoint.size
            )));
        }
        Ok(Standing::Ahead { from: size })
    }

    /// Re-hashes `entries` (indices `start..`) onto the stored tree and
    /// stores them if they are a prefix of the signed `checkpoint`: at its
    /// size, their root must be its root; before it, `proof_to_checkpoint`
    /// (from the chunk's end to its size) must verify. The checkpoint's note
    /// is stored with the chunk that completes it. Returns the stored size.
    pub fn append(
        &self,
        checkpoint: &Checkpoint,
        note: &str,
        start: u64,
        entries: &[Vec<u8>],
        proof_to_checkpoint: &[Hash],
    ) -> Result<u64, MirrorError> {
        self.writable()?;
        let bad = |reason: String| MirrorError::BadPeer {
            origin: self.origin.clone(),
            reason,
        };
        let mut frontier = self.store.frontier()?;
        if start != frontier.size() {
            return Err(bad(format!(
                "entries start at {start}, the mirror holds {}",
                frontier.size()
            )));
        }
        let end = start + entries.len() as u64;
        if end > checkpoint.size {
            return Err(bad(format!(
                "{} entries sent past the checkpoint's size {}",
                end - checkpoint.size,
                checkpoint.size
            )));
        }
        let mut batch = sled::Batch::default();
        let mut nodes = Vec::with_capacity(16);
        let (mut tail, _) = super::groups::AppendTail::open(&self.store, start)?;
        for bytes in entries {
            stage_entry(
                &mut frontier,
                &mut tail,
                leaf_hash(bytes),
                bytes,
                &mut batch,
                &mut nodes,
            )?;
        }
        tail.finish(&mut batch)?;
        let root = frontier.root();
        if end == checkpoint.size {
            if root != checkpoint.root {
                return Err(bad(format!(
                    "entries {start}..{end} do not hash to the signed root at size {end}"
                )));
            }
            batch.insert(&checkpoint_key(end), note.as_bytes());
        } else if !verify_consistency(
            end,
            checkpoint.size,
            &root,
            &checkpoint.root,
            proof_to_checkpoint,
        ) {
            return Err(bad(format!(
                "entries {start}..{end} are not a prefix of the signed tree of size {}",
                checkpoint.size
            )));
        }
        batch.insert(FRONTIER_KEY, frontier.to_bytes());
        self.write(|db| {
            db.apply_batch(batch)?;
            db.flush().map(drop)
        })?;
        Ok(end)
    }

    /// Stores a checkpoint at the size already held (a re-signed note, or
    /// the first one after entries were stored in chunks), once checked.
    pub fn store_checkpoint(&self, checkpoint: &Checkpoint, note: &str) -> Result<(), MirrorError> {
        let frontier = self.store.frontier()?;
        if checkpoint.size != frontier.size() || checkpoint.root != frontier.root() {
            return Err(MirrorError::BadPeer {
                origin: self.origin.clone(),
                reason: "checkpoint does not match the stored tree".into(),
            });
        }
        // A note of the same checkpoint with more signature lines (witness
        // cosignatures gathered since) replaces the one held: its origin
        // signature was checked, and its text is the same.
        let lines = |note: &str| {
            super::checkpoint::split_note(note)
                .ok()
                .and_then(|(text, block)| {
                    super::checkpoint::note_signatures(block)
                        .ok()
                        .map(|s| (text.to_owned(), s.len()))
                })
        };
        let newer = match self.store.checkpoint(checkpoint.size)? {
            None => true,
            Some(held) => match (lines(&held), lines(note)) {
                (Some((held_text, held_n)), Some((text, n))) => held_text == text && n > held_n,
                _ => false,
            },
        };
        if newer {
            self.write(|db| {
                db.insert(checkpoint_key(checkpoint.size), note.as_bytes())?;
                db.flush().map(drop)
            })?;
        }
        Ok(())
    }

    /// Whether stored entry `index` is the origin's rotation from the
    /// pinned key to `new_vkey`, signed by the pinned key.
    pub fn is_rotation_to(&self, index: u64, new_vkey: &str) -> Result<bool, MirrorError> {
        use prost::Message;
        let Some(bytes) = self.store.entry(index)? else {
            return Ok(false);
        };
        let Ok(entry) = crate::pb::AuditEntry::decode(&bytes[..]) else {
            return Ok(false);
        };
        let Some(crate::pb::audit_entry::Event::KeyRotated(rotation)) = entry.event else {
            return Ok(false);
        };
        Ok(rotation.previous_verifier_key == self.vkey
            && rotation.new_verifier_key == new_vkey
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::ED25519,
                self.verifier.public_key(),
            )
            .verify(
                &super::verify::rotation_message(new_vkey),
                &rotation.signature,
            )
            .is_ok())
    }

    /// Follows the origin's key rotation: the last entry of the verified
    /// tree (its newest checkpoint, signed by the pinned key, covers it)
    /// must rotate the pinned key to `new_vkey`, signed by the pinned key,
    /// as `audit rotate-key` writes it. Then `new_vkey` is pinned and
    /// verifies the checkpoints from here on.
    pub fn follow_rotation(&mut self, new_vkey: &str) -> Result<(), MirrorError> {
        let refused = |reason: String| MirrorError::KeyChanged {
            origin: self.origin.clone(),
            pinned: self.vkey.clone(),
            served: format!("{new_vkey} ({reason})"),
        };
        let size = self.verified_size()?;
        if size == 0
            || self.store.tree_size()? != size
            || !self.is_rotation_to(size - 1, new_vkey)?
        {
            return Err(refused(format!(
                "the mirrored log's last verified entry (size {size}) is not a rotation to it signed by the pinned key"
            )));
        }
        let verifier = NoteVerifier::from_vkey(new_vkey).map_err(|source| MirrorError::Key {
            origin: self.origin.clone(),
            vkey: new_vkey.to_owned(),
            source,
        })?;
        if verifier.name() != self.origin {
            return Err(refused("it names another origin".into()));
        }
        let db = self.store.db();
        db.insert(VKEY_KEY, new_vkey.as_bytes())
            .map_err(StoreError::from)?;
        db.flush().map_err(StoreError::from)?;
        self.vkey = new_vkey.to_owned();
        self.verifier = verifier;
        Ok(())
    }

    /// Records a fork (durably, so a restart does not resume mirroring
    /// this log) and returns the error to report.
    fn fork(&self, reason: String) -> MirrorError {
        let db = self.store.db();
        // Best effort: the refusal stands whether or not the mark is written.
        let _ = db.insert(FORK_KEY, reason.as_bytes());
        let _ = db.flush();
        MirrorError::Fork {
            origin: self.origin.clone(),
            reason,
        }
    }

    /// Forgets the mirror's bookkeeping (origin, key, fork mark): what a
    /// restore does once the store is a node's own log again.
    pub fn into_log_store(self) -> Result<AuditStore, StoreError> {
        let db = self.store.db();
        db.remove(ORIGIN_KEY)?;
        db.remove(VKEY_KEY)?;
        db.remove(FORK_KEY)?;
        db.flush()?;
        Ok(self.store)
    }
}

/// The fork recorded in a mirror store, if any.
pub fn recorded_fork(store: &AuditStore) -> Result<Option<String>, StoreError> {
    Ok(store
        .meta(FORK_KEY)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::NoteSigner;
    use crate::merkle::proof::{consistency_proof, LeafHashes};
    use crate::merkle::root_of;
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    fn signer() -> NoteSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        NoteSigner::new(
            "proofgate/node-1",
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        )
        .unwrap()
    }

    /// A log of `n` entries tagged `tag`, as the origin would serve it.
    struct Origin {
        entries: Vec<Vec<u8>>,
        leaves: Vec<Hash>,
    }

    impl Origin {
        fn new(tag: &str, n: usize) -> Self {
            let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect();
            let leaves = entries.iter().map(|e| leaf_hash(e)).collect();
            Self { entries, leaves }
        }
        fn note(&self, signer: &NoteSigner, size: usize) -> String {
            signer.sign_checkpoint(size as u64, &root_of(&self.leaves[..size]))
        }
        fn proof(&self, old: usize, new: usize) -> Vec<Hash> {
            consistency_proof(&LeafHashes(&self.leaves[..new]), old as u64, new as u64).unwrap()
        }
    }

    /// Pulls `origin` up to `size` in chunks of `chunk`, as the puller does.
    fn pull(
        mirror: &MirrorLog,
        origin: &Origin,
        signer: &NoteSigner,
        size: usize,
        chunk: usize,
    ) -> Result<(), MirrorError> {
        let note = origin.note(signer, size);
        let checkpoint = mirror.check_signature(&note)?;
        let have = mirror.store().tree_size()? as usize;
        let proof = if size > have {
            origin.proof(have, size)
        } else {
            Vec::new()
        };
        let Standing::Ahead { from } = mirror.check_consistency(&checkpoint, &proof)? else {
            return Ok(());
        };
        let mut at = from as usize;
        while at < size {
            let end = (at + chunk).min(size);
            let to_checkpoint = if end < size {
                origin.proof(end, size)
            } else {
                Vec::new()
            };
            mirror.append(
                &checkpoint,
                &note,
                at as u64,
                &origin.entries[at..end],
                &to_checkpoint,
            )?;
            at = end;
        }
        Ok(())
    }

    /// The way `pull_to` runs an append: the round lock moved into the
    /// blocking thread. A round aborted meanwhile leaves the lock with the
    /// append, and the next round starts only once the append is done.
    #[tokio::test]
    async fn a_round_lock_moved_into_an_append_outlives_the_aborted_round() {
        let dir = tempfile::tempdir().unwrap();
        let vkey = signer().verifier_key();
        let mirror = MirrorLog::open(&dir.path().join("m"), "proofgate/node-1", &vkey).unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, appending) = tokio::sync::oneshot::channel::<()>();
        let log = mirror.clone();
        let round_task = tokio::spawn(async move {
            let round = log.round().await;
            let _ = tokio::task::spawn_blocking(move || {
                let _ = started.send(());
                let _ = released.recv(); // the append's work
                drop(round);
            })
            .await;
        });
        appending.await.unwrap();
        round_task.abort();
        assert!(round_task.await.unwrap_err().is_cancelled());
        assert!(
            mirror.round.try_lock().is_err(),
            "the append of the aborted round still holds the round"
        );
        release.send(()).unwrap();
        // The next round starts once the append ends (the bound only keeps a
        // regression from hanging the suite).
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), mirror.round()).await;
        assert!(next.is_ok());
    }

    #[test]
    fn after_a_failed_write_a_mirror_reports_nothing_held_and_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let vkey = signer.verifier_key();
        let mirror = MirrorLog::open(&dir.path().join("m"), "proofgate/node-1", &vkey).unwrap();
        let origin = Origin::new("a", 40);
        pull(&mirror, &origin, &signer, 20, 10).unwrap();
        assert_eq!(mirror.verified().unwrap().0, 20);
        // What `write` does when sled fails to apply or flush; every clone
        // (the server's, a follower's) sees it.
        let clone = mirror.clone();
        mirror.broken.set("flush: disk gone".into()).unwrap();
        for held in [clone.verified().map(|v| v.0), clone.verified_size()] {
            assert!(
                matches!(&held, Err(StoreError::WriteFailed(reason)) if reason.contains("disk gone")),
                "{held:?}"
            );
        }
        let err = pull(&clone, &origin, &signer, 40, 10).unwrap_err();
        assert!(
            matches!(err, MirrorError::Store(StoreError::WriteFailed(_))),
            "{err}"
        );
        assert_eq!(mirror.store().tree_size().unwrap(), 20, "nothing appended");
        // A restart opens the store afresh: sled recovered what is durable.
        drop((mirror, clone));
        let again = MirrorLog::open(&dir.path().join("m"), "proofgate/node-1", &vkey).unwrap();
        assert_eq!(again.verified().unwrap().0, 20);
    }

    #[test]
    fn a_mirror_follows_its_origin_in_chunks_and_refuses_a_fork_storing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let vkey = signer.verifier_key();
        let mirror = MirrorLog::open(&dir.path().join("m"), "proofgate/node-1", &vkey).unwrap();
        let origin = Origin::new("a", 100);
        pull(&mirror, &origin, &signer, 37, 10).unwrap();
        assert_eq!(mirror.verified_size().unwrap(), 37);
        pull(&mirror, &origin, &signer, 37, 10).unwrap();
        pull(&mirror, &origin, &signer, 20, 10).unwrap();
        pull(&mirror, &origin, &signer, 100, 7).unwrap();
        assert_eq!(mirror.verified_size().unwrap(), 100);
        assert_eq!(mirror.store().tree_size().unwrap(), 100);

        // Same key, another history: larger, equal and smaller checkpoints.
        let forked = Origin::new("b", 120);
        let before = mirror.store().frontier().unwrap().root();
        for size in [120, 100, 50] {
            let err = pull(&mirror, &forked, &signer, size, 10).unwrap_err();
            assert!(err.is_fork(), "size {size}: {err}");
            assert_eq!(mirror.store().tree_size().unwrap(), 100, "nothing stored");
            assert_eq!(mirror.store().frontier().unwrap().root(), before);
        }
        // Stopped for good, across a reopen.
        drop(mirror);
        let again = MirrorLog::open(&dir.path().join("m"), "proofgate/node-1", &vkey);
        assert!(matches!(again, Err(MirrorError::Stopped { .. })));
    }

    #[test]
    fn bad_signatures_other_keys_and_bad_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let mirror = MirrorLog::open(
            &dir.path().join("m"),
            "proofgate/node-1",
            &signer.verifier_key(),
        )
        .unwrap();
        let origin = Origin::new("a", 10);
        let impostor = self::signer();
        assert!(matches!(
            pull(&mirror, &origin, &impostor, 5, 10),
            Err(MirrorError::Signature { .. })
        ));
        // Entries that do not hash to the signed root: a bad peer, not a fork.
        let note = origin.note(&signer, 5);
        let checkpoint = mirror.check_signature(&note).unwrap();
        let mut wrong = origin.entries[..5].to_vec();
        wrong[2] = b"edited".to_vec();
        let err = mirror
            .append(&checkpoint, &note, 0, &wrong, &[])
            .unwrap_err();
        assert!(matches!(err, MirrorError::BadPeer { .. }), "{err}");
        assert!(!err.is_fork());
        assert_eq!(mirror.store().tree_size().unwrap(), 0);
        pull(&mirror, &origin, &signer, 5, 10).unwrap();
        drop(mirror);
        let other_key = MirrorLog::open(
            &dir.path().join("m"),
            "proofgate/node-1",
            &impostor.verifier_key(),
        );
        assert!(matches!(other_key, Err(MirrorError::KeyChanged { .. })));
    }
}
