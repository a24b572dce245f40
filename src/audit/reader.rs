//! What an auditor (or a citizen portal) reads from the log: checkpoints,
//! entries, proofs, and the accesses recorded about one subject. Only what is
//! durable is shown: a checkpoint a crash could still take back never is.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use prost::Message;
use thiserror::Error;

use super::store::{AuditStore, StoreError};
use super::writer::AuditLog;
use crate::merkle::{consistency_proof, inclusion_proof, leaf_hash, ProofError};
use crate::pb::{
    audit_entry::Event, Access, AuditEntry, Checkpoint, ConsistencyProof, DepartmentAccess, IdType,
    InclusionProof, ListAccessesResponse, StoredEntry, Subject,
};
use crate::subject::{check_id, PseudonymKey};

/// Entries sent per stream before the client must ask again; bounds one call.
pub const MAX_ENTRIES_PER_CALL: u64 = 100_000;

/// Accesses listed per call at most.
pub const MAX_ACCESSES: u32 = 500;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("the log has no checkpoint yet")]
    NoCheckpoint,
    #[error("the log signed no checkpoint at size {0}")]
    NoCheckpointAt(u64),
    /// A requested size or index is past the durable log.
    #[error("{what} {requested} is past the log's {size}")]
    PastTheLog {
        what: &'static str,
        requested: u64,
        size: u64,
    },
    /// A field of the request is wrong; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Neither this node's own log nor one it mirrors.
    #[error("no log of origin `{origin}` here (this node serves {known})")]
    UnknownOrigin { origin: String, known: String },
    #[error("indexed entry {0} is missing from the store")]
    Missing(u64),
    /// More cosignatures asked for than witnesses configured.
    #[error("min_cosignatures {asked} cannot be met: this node is configured with {configured} witness(es) for this log (serve --witness URL=VKEY); ask for at most {configured}")]
    QuorumUnreachable { asked: u32, configured: usize },
    /// No checkpoint carries the cosignatures asked for yet.
    #[error("no checkpoint carries {asked} cosignature(s) by this node's witnesses yet (newest checkpoint: size {newest}); a witness may be down or lagging: retry later, or ask for fewer")]
    NotCosigned { asked: u32, newest: u64 },
    #[error("stored entry {index} does not decode")]
    Decode {
        index: u64,
        #[source]
        source: prost::DecodeError,
    },
}

/// Reads one log: the node's own, or one it mirrors.
#[derive(Clone)]
pub struct AuditReader {
    source: Source,
    /// Key ids of the witnesses this node asks (`serve --witness`); none
    /// for a mirrored log.
    witnesses: Vec<[u8; 4]>,
}

#[derive(Clone)]
// One reader per log, cloned per call: the size difference is not worth a box.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// The node's own log: served up to its durable size.
    Own {
        log: AuditLog,
        pseudonyms: PseudonymKey,
    },
    /// A mirrored log: served up to its newest verified checkpoint (entries
    /// pulled beyond it are not shown until one covers them).
    Mirror { store: AuditStore, vkey: String },
}

/// The department accesses one entry records about its subject.
fn access_of(index: u64, entry: &AuditEntry) -> Option<Access> {
    let mut access = Access {
        index,
        logged_unix_ms: entry.logged_unix_ms,
        ..Default::default()
    };
    match entry.event.as_ref()? {
        Event::ApplicationDecided(d) => {
            access.application_id = d.application_id.clone();
            access.matter_id = d.matter_id.clone();
            access.officer_id = d.officer_id.clone();
            access.hall_id = d.hall_id.clone();
            for proof in &d.proofs {
                let proof_id = proof
                    .result
                    .as_ref()
                    .map(|r| r.proof_id.clone())
                    .unwrap_or_default();
                for answer in &proof.answers {
                    access.departments.push(DepartmentAccess {
                        department_id: answer.department_id.clone(),
                        proof_id: proof_id.clone(),
                        mode: answer.mode,
                        answered: answer.failure.is_empty(),
                    });
                }
            }
        }
        Event::VerificationCompleted(c) => {
            access.application_id = c.application_id.clone();
            if let Some(answer) = &c.answer {
                access.departments.push(DepartmentAccess {
                    department_id: answer.department_id.clone(),
                    proof_id: c.proof_id.clone(),
                    mode: answer.mode,
                    answered: true,
                });
            }
        }
        _ => return None,
    }
    Some(access)
}

impl AuditReader {
    pub fn new(log: AuditLog, pseudonyms: PseudonymKey) -> Self {
        Self {
            source: Source::Own { log, pseudonyms },
            witnesses: Vec::new(),
        }
    }

    /// The key ids of the witnesses whose cosignatures count for
    /// [`AuditReader::checkpoint_with`].
    pub fn with_witnesses(mut self, key_ids: Vec<[u8; 4]>) -> Self {
        self.witnesses = key_ids;
        self
    }

    /// A reader of a mirrored log (see [`super::MirrorLog`]), verified with `vkey`.
    pub fn mirrored(store: AuditStore, vkey: String) -> Self {
        Self {
            source: Source::Mirror { store, vkey },
            witnesses: Vec::new(),
        }
    }

    /// For a mirrored log: the application `id` as the mirror holds it
    /// (see [`super::mirrored_application`]). None for the node's own log,
    /// whose applications the gateway answers from its projections.
    pub fn mirrored_application(
        &self,
        id: &str,
    ) -> Option<Result<super::MirroredApplication, StoreError>> {
        match &self.source {
            Source::Own { .. } => None,
            Source::Mirror { store, .. } => Some(super::mirrored_application(store, id)),
        }
    }

    /// The root hash of the checkpoint this log signed at exactly `size`,
    /// if it signed one there within what is served.
    pub fn signed_root(&self, size: u64) -> Result<Option<Vec<u8>>, ReadError> {
        if size > self.durable_size()? {
            return Ok(None);
        }
        Ok(self
            .store()
            .checkpoint(size)?
            .and_then(|note| super::parse_checkpoint(&note).ok())
            .map(|checkpoint| checkpoint.root.to_vec()))
    }

    /// The node's own log behind this reader; None for a mirrored log.
    pub fn own_log(&self) -> Option<&super::AuditLog> {
        match &self.source {
            Source::Own { log, .. } => Some(log),
            Source::Mirror { .. } => None,
        }
    }

    fn store(&self) -> &AuditStore {
        match &self.source {
            Source::Own { log, .. } => log.store(),
            Source::Mirror { store, .. } => store,
        }
    }

    /// What is served: the durable size, or a mirror's newest checkpoint.
    fn durable_size(&self) -> Result<u64, ReadError> {
        match &self.source {
            Source::Own { log, .. } => Ok(log.durable_size()),
            Source::Mirror { store, .. } => {
                Ok(store.latest_checkpoint()?.map_or(0, |(size, _)| size))
            }
        }
    }

    fn verifier_key(&self) -> &str {
        match &self.source {
            Source::Own { log, .. } => log.verifier_key(),
            Source::Mirror { vkey, .. } => vkey,
        }
    }

    /// `requested` or, for 0, the durable size; never past the log.
    fn tree_size(&self, requested: u64) -> Result<u64, ReadError> {
        let size = self.durable_size()?;
        if requested > size {
            return Err(ReadError::PastTheLog {
                what: "tree size",
                requested,
                size,
            });
        }
        Ok(if requested == 0 { size } else { requested })
    }

    /// The latest durable checkpoint, with every cosignature gathered for it.
    pub fn checkpoint(&self) -> Result<Checkpoint, ReadError> {
        self.checkpoint_with(0)
    }

    /// `GetCheckpoint`: the newest durable checkpoint (with every
    /// cosignature gathered for it), or with `min_cosignatures` K > 0 the
    /// newest one carrying at least K cosignatures by this node's witnesses.
    pub fn checkpoint_with(&self, min_cosignatures: u32) -> Result<Checkpoint, ReadError> {
        self.checkpoint_of(min_cosignatures, 0)
    }

    /// The checkpoint signed at exactly `size` (0: the newest), or the
    /// newest with `min_cosignatures` (see GetCheckpointRequest).
    pub fn checkpoint_of(&self, min_cosignatures: u32, size: u64) -> Result<Checkpoint, ReadError> {
        let store = self.store();
        let durable = self.durable_size()?;
        if size > 0 && min_cosignatures > 0 {
            return Err(ReadError::Invalid {
                field: "tree_size",
                problem: "ask for a checkpoint at a size, or for one with cosignatures, not both"
                    .into(),
            });
        }
        if size > durable {
            return Err(ReadError::PastTheLog {
                what: "tree size",
                requested: size,
                size: durable,
            });
        }
        let Some((newest, note)) = store.checkpoint_at_or_below(durable)? else {
            return Err(ReadError::NoCheckpoint);
        };
        let (size, note) = if size > 0 {
            let note = store
                .checkpoint(size)?
                .ok_or(ReadError::NoCheckpointAt(size))?;
            (size, store.cosigned_checkpoint(size)?.unwrap_or(note))
        } else if min_cosignatures == 0 {
            let note = store.cosigned_checkpoint(newest)?.unwrap_or(note);
            (newest, note)
        } else {
            if min_cosignatures as usize > self.witnesses.len() {
                return Err(ReadError::QuorumUnreachable {
                    asked: min_cosignatures,
                    configured: self.witnesses.len(),
                });
            }
            store
                .newest_cosigned(durable, min_cosignatures as usize, &self.witnesses)?
                .ok_or(ReadError::NotCosigned {
                    asked: min_cosignatures,
                    newest,
                })?
        };
        let cosignatures = store
            .cosignatures(size)?
            .iter()
            .filter(|(id, _)| self.witnesses.contains(id))
            .count();
        let root = note
            .lines()
            .nth(2)
            .and_then(|r| B64.decode(r).ok())
            .unwrap_or_default();
        Ok(Checkpoint {
            note,
            tree_size: size,
            root_hash: root,
            verifier_key: self.verifier_key().to_owned(),
            cosignatures: u32::try_from(cosignatures).unwrap_or(u32::MAX),
            from_mirror: matches!(self.source, Source::Mirror { .. }),
        })
    }

    /// Entries `start..end` (0: the durable size), at most
    /// [`MAX_ENTRIES_PER_CALL`] of them.
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> Result<impl Iterator<Item = Result<StoredEntry, ReadError>> + Send + 'static, ReadError>
    {
        let size = self.durable_size()?;
        let end = if end == 0 { size } else { end };
        if end > size {
            return Err(ReadError::PastTheLog {
                what: "end",
                requested: end,
                size,
            });
        }
        if start > end {
            return Err(ReadError::Invalid {
                field: "start",
                problem: format!("start {start} is after end {end}"),
            });
        }
        let end = end.min(start.saturating_add(MAX_ENTRIES_PER_CALL));
        Ok(self.store().entries(start, end).map(|item| {
            item.map(|(index, entry)| StoredEntry {
                index,
                leaf_hash: leaf_hash(&entry).to_vec(),
                entry: entry.to_vec(),
            })
            .map_err(ReadError::from)
        }))
    }

    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<InclusionProof, ReadError> {
        let tree_size = self.tree_size(tree_size)?;
        let store = self.store();
        let hashes = inclusion_proof(store, index, tree_size)?;
        let leaf_hash = store.leaf_hash(index)?.ok_or(ReadError::Missing(index))?;
        Ok(InclusionProof {
            index,
            tree_size,
            leaf_hash: leaf_hash.to_vec(),
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        })
    }

    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, ReadError> {
        let new_size = self.tree_size(new_size)?;
        let hashes = consistency_proof(self.store(), old_size, new_size)?;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        })
    }

    /// The accesses recorded about `subject`, after `after_index` (0: from
    /// the start), at most `limit` (0: [`MAX_ACCESSES`]).
    pub fn accesses(
        &self,
        subject: Option<Subject>,
        limit: u32,
        after_index: u64,
    ) -> Result<ListAccessesResponse, ReadError> {
        let subject = subject.ok_or(ReadError::Invalid {
            field: "subject",
            problem: "is required".into(),
        })?;
        let id_type = IdType::try_from(subject.id_type).map_err(|_| ReadError::Invalid {
            field: "subject.id_type",
            problem: format!("unknown value {}", subject.id_type),
        })?;
        if id_type == IdType::Unspecified {
            return Err(ReadError::Invalid {
                field: "subject.id_type",
                problem: "is required".into(),
            });
        }
        check_id(id_type, &subject.id_number).map_err(|e| ReadError::Invalid {
            field: "subject.id_number",
            problem: e.to_string(),
        })?;
        let limit = match limit {
            0 => MAX_ACCESSES,
            n => n.min(MAX_ACCESSES),
        } as usize;
        let Source::Own { log, pseudonyms } = &self.source else {
            return Err(ReadError::Invalid {
                field: "origin",
                problem: "accesses are listed by the log's own node, not by a mirror".into(),
            });
        };
        let pseudonym = pseudonyms.pseudonym(id_type, &subject.id_number);
        let store = log.store();
        let after = (after_index > 0).then_some(after_index);
        let mut accesses = Vec::new();
        let mut next_after_index = 0;
        for index in store.accesses(&pseudonym, after) {
            let index = index?;
            if accesses.len() == limit {
                next_after_index = accesses.last().map(|a: &Access| a.index).unwrap_or(0);
                break;
            }
            let Some(bytes) = store.entry(index)? else {
                return Err(ReadError::Missing(index));
            };
            let entry = AuditEntry::decode(&bytes[..])
                .map_err(|source| ReadError::Decode { index, source })?;
            if let Some(access) = access_of(index, &entry) {
                accesses.push(access);
            }
        }
        Ok(ListAccessesResponse {
            accesses,
            next_after_index,
        })
    }
}
