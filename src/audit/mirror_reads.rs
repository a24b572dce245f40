//! Applications of a mirrored log: what a node answers for a down node's
//! application (DESIGN.md "Several nodes": "when the owner is down, a mirror
//! answers reads").
//!
//! The state is computed from the mirror's verified entries (those covered
//! by the newest stored checkpoint, which [`super::MirrorLog`] checked) with
//! THE projection, [`crate::policy::apply`], folded the way `audit rebuild`
//! folds it: so it is what the owner's own store held at that size, receipt
//! included. Nothing here writes to the log or its projections.
//!
//! To find an application's entries without reading the whole log, the
//! mirror store keeps an index in its own sled tree ([`INDEX_TREE`]): one
//! key per (application id, entry index), and the size indexed so far. It is
//! derived data: brought up to the verified size before each read (and by
//! the mirror after each pull), rebuilt from the entries if it is lost.

use prost::Message;
use sled::transaction::{ConflictableTransactionResult, TransactionError};

use super::store::{AuditStore, StoreError};
use crate::pb::{audit_entry::Event, Application, AuditEntry, AuditReceipt};
use crate::policy::{application_id_of, apply};

/// The sled tree of the index, in the mirror store's database.
pub const INDEX_TREE: &str = "mirror-application-index";
/// In [`INDEX_TREE`]: the number of entries indexed (a u64, big-endian).
/// Index keys are at least 10 bytes long, so they never collide with it.
const INDEXED_KEY: &[u8] = b"size";
/// Entries indexed per transaction.
const INDEX_CHUNK: u64 = 10_000;

/// An application as a mirror holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct MirroredApplication {
    /// None: no entry about it up to `tree_size`.
    pub application: Option<Application>,
    /// The size of the newest verified checkpoint: what the answer reflects.
    pub tree_size: u64,
    /// That checkpoint's note, as the owner signed it (empty at size 0).
    pub checkpoint: String,
}

/// `len(id) (u16, big-endian) || id`: the prefix of one application's keys.
fn id_prefix(id: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(id.len()).ok()?;
    Some([&len.to_be_bytes()[..], id.as_bytes()].concat())
}

fn index_key(id: &str, index: u64) -> Option<Vec<u8>> {
    id_prefix(id).map(|prefix| [prefix, index.to_be_bytes().to_vec()].concat())
}

fn decode_u64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

fn index_tree(store: &AuditStore) -> Result<sled::Tree, StoreError> {
    Ok(store.db().open_tree(INDEX_TREE)?)
}

/// Brings the index of `store` (a mirror store) up to its newest verified
/// checkpoint; returns the size indexed. Safe to call concurrently: each
/// chunk is written in one transaction that checks where the index stood.
pub fn index_mirrored(store: &AuditStore) -> Result<u64, StoreError> {
    let verified = store.latest_checkpoint()?.map_or(0, |(size, _)| size);
    index_up_to(store, verified)
}

fn index_up_to(store: &AuditStore, size: u64) -> Result<u64, StoreError> {
    let tree = index_tree(store)?;
    loop {
        let from = tree.get(INDEXED_KEY)?.map_or(0, |v| decode_u64(&v));
        if from >= size {
            return Ok(from);
        }
        let end = size.min(from.saturating_add(INDEX_CHUNK));
        let mut keys = Vec::new();
        for item in store.entries(from, end) {
            let (index, bytes) = item?;
            // An entry that does not decode is about no application anyone
            // can find; `audit verify` of the mirror reports it.
            let Ok(AuditEntry {
                event: Some(event), ..
            }) = AuditEntry::decode(&bytes[..])
            else {
                continue;
            };
            if let Some(key) = application_id_of(&event).and_then(|id| index_key(id, index)) {
                keys.push(key);
            }
        }
        let written: Result<bool, TransactionError<()>> =
            tree.transaction(|tx| -> ConflictableTransactionResult<bool, ()> {
                let now = tx.get(INDEXED_KEY)?.map_or(0, |v| decode_u64(&v));
                if now != from {
                    // Another reader indexed this chunk meanwhile.
                    return Ok(false);
                }
                for key in &keys {
                    tx.insert(key.as_slice(), &[][..])?;
                }
                tx.insert(INDEXED_KEY, &end.to_be_bytes()[..])?;
                Ok(true)
            });
        match written {
            Ok(_) => {}
            Err(TransactionError::Storage(e)) => return Err(e.into()),
            Err(TransactionError::Abort(())) => {
                return Err(StoreError::Corrupt(
                    "mirror index transaction aborted".into(),
                ))
            }
        }
    }
}

/// The application `id` as the mirror store `store` holds it: its entries
/// up to the newest verified checkpoint, folded with [`apply`]; the receipt
/// is its latest entry's, as the owner's store would give it.
pub fn mirrored_application(
    store: &AuditStore,
    id: &str,
) -> Result<MirroredApplication, StoreError> {
    let Some((tree_size, checkpoint)) = store.latest_checkpoint()? else {
        return Ok(MirroredApplication {
            application: None,
            tree_size: 0,
            checkpoint: String::new(),
        });
    };
    index_up_to(store, tree_size)?;
    let Some(prefix) = id_prefix(id) else {
        return Ok(MirroredApplication {
            application: None,
            tree_size,
            checkpoint,
        });
    };
    let tree = index_tree(store)?;
    let mut application = Application::default();
    let mut last = None;
    for item in tree.scan_prefix(&prefix) {
        let (key, _) = item?;
        let index = decode_u64(&key[prefix.len()..]);
        if index >= tree_size {
            break;
        }
        let corrupt = |what: String| {
            StoreError::Corrupt(format!(
                "mirrored entry {index} of application {id}: {what}"
            ))
        };
        let (_, leaf, bytes) = store
            .entries_with_leaves(index, index + 1)
            .next()
            .ok_or_else(|| corrupt("indexed but not stored".into()))??;
        let event = AuditEntry::decode(&bytes[..])
            .map_err(|e| corrupt(format!("does not decode: {e}")))?
            .event
            .ok_or_else(|| corrupt("has no event".into()))?;
        if matches!(event, Event::ApplicationDecided(_)) {
            application = Application::default();
        }
        apply(&mut application, &event).map_err(|e| corrupt(e.to_string()))?;
        last = Some((index, leaf));
    }
    let application = last.map(|(index, leaf)| Application {
        receipt: Some(AuditReceipt {
            index,
            leaf_hash: leaf.to_vec(),
        }),
        ..application
    });
    Ok(MirroredApplication {
        application,
        tree_size,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::NoteSigner;
    use crate::audit::{leaf_hash, MirrorLog, Standing};
    use crate::merkle::proof::{consistency_proof, LeafHashes};
    use crate::merkle::root_of;
    use crate::pb::{
        ApplicationDecided, ApplicationStatus, ProofDecision, ProofOutcome, ProofResult,
        RecordedAnswer, VerificationCompleted, VerificationOutcome,
    };
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

    fn entry(event: Event) -> Vec<u8> {
        AuditEntry {
            event: Some(event),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn decided(id: &str) -> Vec<u8> {
        entry(Event::ApplicationDecided(ApplicationDecided {
            application_id: id.into(),
            caller: "hall".into(),
            decided_unix_ms: 1_000,
            proofs: vec![ProofDecision {
                result: Some(ProofResult {
                    proof_id: "b".into(),
                    outcome: ProofOutcome::Pending as i32,
                    department_id: "dept".into(),
                    ticket: "t-1".into(),
                    due_unix_ms: 5_000,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    fn completed(id: &str) -> Vec<u8> {
        entry(Event::VerificationCompleted(VerificationCompleted {
            application_id: id.into(),
            proof_id: "b".into(),
            ticket: "t-1".into(),
            answer: Some(RecordedAnswer {
                department_id: "dept".into(),
                verification: VerificationOutcome::Verified as i32,
                ..Default::default()
            }),
            completed_unix_ms: 2_000,
            ..Default::default()
        }))
    }

    /// Mirrors `entries[..size]` (signed at `size`) into `mirror`.
    fn pull(mirror: &MirrorLog, signer: &NoteSigner, entries: &[Vec<u8>], size: usize) {
        let leaves: Vec<_> = entries[..size].iter().map(|e| leaf_hash(e)).collect();
        let note = signer.sign_checkpoint(size as u64, &root_of(&leaves));
        let checkpoint = mirror.check_signature(&note).unwrap();
        let have = mirror.store().tree_size().unwrap();
        let proof = if have > 0 {
            consistency_proof(&LeafHashes(&leaves), have, size as u64).unwrap()
        } else {
            Vec::new()
        };
        let Standing::Ahead { from } = mirror.check_consistency(&checkpoint, &proof).unwrap()
        else {
            panic!("nothing to pull")
        };
        mirror
            .append(&checkpoint, &note, from, &entries[from as usize..size], &[])
            .unwrap();
    }

    #[test]
    fn an_application_is_the_fold_of_its_verified_entries_with_the_latest_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let mirror = MirrorLog::open(
            &dir.path().join("m"),
            "proofgate/node-1",
            &signer.verifier_key(),
        )
        .unwrap();
        let entries = vec![
            decided("node-1.a"),
            decided("node-1.b"),
            completed("node-1.a"),
        ];
        let store = mirror.store();
        let empty = mirrored_application(store, "node-1.a").unwrap();
        assert_eq!((empty.application, empty.tree_size), (None, 0));

        pull(&mirror, &signer, &entries, 2);
        let pending = mirrored_application(store, "node-1.a").unwrap();
        assert_eq!(pending.tree_size, 2);
        assert!(pending.checkpoint.contains("proofgate/node-1"));
        let app = pending.application.unwrap();
        assert_eq!(app.status(), ApplicationStatus::Pending);
        let receipt = app.receipt.clone().unwrap();
        assert_eq!(receipt.index, 0);
        assert_eq!(receipt.leaf_hash, leaf_hash(&entries[0]).to_vec());
        assert_eq!(app.served_from_mirror, None, "marked by the server");

        pull(&mirror, &signer, &entries, 3);
        // The mirror indexes after its pull; a read catches up by itself too.
        assert_eq!(index_mirrored(store).unwrap(), 3);
        let app = mirrored_application(store, "node-1.a")
            .unwrap()
            .application
            .unwrap();
        assert_eq!(app.status(), ApplicationStatus::Complete);
        assert_eq!(app.updated_unix_ms, 2_000);
        assert_eq!(app.receipt.unwrap().index, 2);
        // The same fold as the owner's projection.
        let mut expected = Application::default();
        for bytes in [&entries[0], &entries[2]] {
            let event = AuditEntry::decode(&bytes[..]).unwrap().event.unwrap();
            apply(&mut expected, &event).unwrap();
        }
        assert_eq!(app.proofs, expected.proofs);

        let other = mirrored_application(store, "node-1.b").unwrap();
        assert_eq!(other.application.unwrap().receipt.unwrap().index, 1);
        // An id that is a prefix of another finds nothing.
        let none = mirrored_application(store, "node-1.").unwrap();
        assert_eq!(none.application, None);
        assert_eq!(none.tree_size, 3);
    }
}
