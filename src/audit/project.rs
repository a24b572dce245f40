//! The derived state (projections) each entry writes beside itself, in the
//! same atomic batch: the latest application, the request key, tickets,
//! spot checks, dishonesty records, data sources and the access index.
//!
//! [`projections_of`] is the one place that says what an entry stores; the
//! live appenders and `audit rebuild` both call it, so the store can always be
//! recomputed from the entries. What an event does to an *application* is
//! [`crate::policy::apply`]; this module only lays the result out in keys.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

#[cfg(test)]
use super::merkle::Hash;
use super::store::{
    access_key, application_key, data_source_key, dishonesty_key, request_key, spot_check_key,
    ticket_key, DishonestyRecord, SpotCheckRecord, StoreError, TicketRecord, POLICY_VERSION_KEY,
};
#[cfg(test)]
use crate::pb::AuditReceipt;
use crate::pb::{audit_entry::Event, Application, ProofOutcome};

/// One change to the store, written in the same batch as its entry.
#[derive(Debug, Clone)]
pub enum Projection {
    /// The entry changes this application. What is stored for it is the
    /// list of its entries (see [`APPLICATION_CHAIN`]), not a copy of
    /// them: `starts` when the entry decides it (a new list), else the
    /// entry is added to the list.
    Application {
        id: String,
        starts: bool,
    },
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// The entry touched this subject (for ListAccesses).
    Access([u8; 32]),
}

/// Looks up the `dishonesty_days` of a proof in a policy version: how long a
/// false commitment sampled from this decision would bar the applicant.
pub type DishonestyDays<'a> = &'a dyn Fn(&str, &str) -> Option<u32>;

/// How long a false commitment bars the applicant when the policy set of
/// the decision no longer says.
const DEFAULT_DISHONESTY_DAYS: u32 = 365;

fn pseudonym(bytes: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).ok()
}

/// The projections of one event. `application` is the application's state
/// after the event (from [`crate::policy::apply`]) for events about one.
pub fn projections_of(
    event: &Event,
    application: Option<&Application>,
    dishonesty_days: DishonestyDays<'_>,
) -> Vec<Projection> {
    let mut out = Vec::new();
    match event {
        Event::ApplicationDecided(decided) => {
            out.extend(application.map(|a| Projection::Application {
                id: a.application_id.clone(),
                starts: true,
            }));
            out.push(Projection::Put(
                request_key(&decided.caller, &decided.request_id),
                [
                    &decided.request_digest[..],
                    decided.application_id.as_bytes(),
                ]
                .concat(),
            ));
            out.extend(pseudonym(&decided.subject_pseudonym).map(Projection::Access));
            for result in decided.proofs.iter().filter_map(|p| p.result.as_ref()) {
                if result.spot_check {
                    let record = SpotCheckRecord {
                        matter_id: decided.matter_id.clone(),
                        subject_pseudonym: decided.subject_pseudonym.clone(),
                        dishonesty_days: dishonesty_days(&decided.policy_version, &result.proof_id)
                            .unwrap_or(DEFAULT_DISHONESTY_DAYS),
                        committed_unix_ms: decided.decided_unix_ms,
                    };
                    out.push(Projection::Put(
                        spot_check_key(&decided.application_id, &result.proof_id),
                        record.encode_to_vec(),
                    ));
                }
                if result.outcome() == ProofOutcome::Pending {
                    let record = TicketRecord {
                        application_id: decided.application_id.clone(),
                        proof_id: result.proof_id.clone(),
                        due_unix_ms: result.due_unix_ms,
                        subject_pseudonym: decided.subject_pseudonym.clone(),
                        overdue: false,
                    };
                    out.push(Projection::Put(
                        ticket_key(&result.department_id, &result.ticket),
                        record.encode_to_vec(),
                    ));
                }
            }
        }
        Event::VerificationCompleted(completed) => {
            out.extend(application.map(|a| Projection::Application {
                id: a.application_id.clone(),
                starts: false,
            }));
            let department = completed
                .answer
                .as_ref()
                .map(|a| a.department_id.as_str())
                .unwrap_or_default();
            out.push(Projection::Delete(ticket_key(
                department,
                &completed.ticket,
            )));
            out.extend(pseudonym(&completed.subject_pseudonym).map(Projection::Access));
        }
        Event::VerificationOverdue(overdue) => {
            out.extend(application.map(|a| Projection::Application {
                id: a.application_id.clone(),
                starts: false,
            }));
            let proof = application.and_then(|a| {
                a.proofs
                    .iter()
                    .find(|p| p.proof_id == overdue.proof_id && p.ticket == overdue.ticket)
            });
            if let Some(proof) = proof {
                let record = TicketRecord {
                    application_id: overdue.application_id.clone(),
                    proof_id: overdue.proof_id.clone(),
                    due_unix_ms: proof.due_unix_ms,
                    subject_pseudonym: overdue.subject_pseudonym.clone(),
                    overdue: true,
                };
                out.push(Projection::Put(
                    ticket_key(&proof.department_id, &overdue.ticket),
                    record.encode_to_vec(),
                ));
            }
        }
        Event::SpotCheckRecorded(check) => {
            out.push(Projection::Delete(spot_check_key(
                &check.application_id,
                &check.proof_id,
            )));
            if !check.truthful {
                out.push(Projection::Put(
                    dishonesty_key(&check.subject_pseudonym),
                    DishonestyRecord {
                        until: check.dishonest_until.clone(),
                        application_id: check.application_id.clone(),
                        proof_id: check.proof_id.clone(),
                    }
                    .encode_to_vec(),
                ));
            }
        }
        Event::DishonestyRevoked(revoked) => {
            out.push(Projection::Delete(dishonesty_key(
                &revoked.subject_pseudonym,
            )));
        }
        // The orphan no longer answers its request on this node: a retry
        // goes by the cluster's reservation to the acknowledged decision.
        Event::DecisionSuperseded(superseded) => out.push(Projection::Delete(request_key(
            &superseded.caller,
            &superseded.request_id,
        ))),
        Event::DataSourceChanged(changed) => {
            if let Some(source) = &changed.source {
                let key = data_source_key(&source.department_id);
                out.push(if changed.removed {
                    Projection::Delete(key)
                } else {
                    Projection::Put(key, source.encode_to_vec())
                });
            }
        }
        Event::PolicySetLoaded(loaded) => out.push(Projection::Put(
            POLICY_VERSION_KEY.to_vec(),
            policy_version_meta(&loaded.policy_version, &loaded.signer),
        )),
        Event::KeyRotated(_) => {}
    }
    out
}

/// What the store keeps of the policy set logged last: its version, and
/// its signer when one approved it, so a node records the same version
/// again when a (new) signer approves it.
pub fn policy_version_meta(version: &str, signer: &str) -> Vec<u8> {
    if signer.is_empty() {
        version.as_bytes().to_vec()
    } else {
        format!("{version} {signer}").into_bytes()
    }
}

/// The first byte of an application's stored value since issue 12: the
/// indices of the entries that made it (varints, oldest first) follow. A
/// protobuf encoding never starts with 0 (field 0 does not exist), so a
/// value written before — the whole Application with its receipt — is told
/// apart and still read.
pub const APPLICATION_CHAIN: u8 = 0;

/// The indices of an application chain value (after its first byte).
pub(super) fn chain_indices(value: &[u8]) -> Option<Vec<u64>> {
    let mut rest = value.strip_prefix(&[APPLICATION_CHAIN])?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(prost::encoding::decode_varint(&mut rest).ok()?);
    }
    Some(out)
}

/// The stored value of an application before issue 12: its encoding
/// followed by its receipt (field 9), which decoders accept in any position.
#[cfg(test)]
pub(super) fn application_value(encoded: &[u8], index: u64, leaf: &Hash) -> Vec<u8> {
    let mut value = Vec::with_capacity(encoded.len() + 48);
    value.extend_from_slice(encoded);
    prost::encoding::message::encode(
        9,
        &AuditReceipt {
            index,
            leaf_hash: leaf.to_vec(),
        },
        &mut value,
    );
    value
}

/// A projection ready for the writer.
#[derive(Debug)]
pub(super) enum Staged {
    Application { id: String, starts: bool },
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Access([u8; 32]),
}

impl From<Projection> for Staged {
    fn from(projection: Projection) -> Self {
        match projection {
            Projection::Application { id, starts } => Staged::Application { id, starts },
            Projection::Put(k, v) => Staged::Put(k, v),
            Projection::Delete(k) => Staged::Delete(k),
            Projection::Access(p) => Staged::Access(p),
        }
    }
}

/// Where staged projections land: the writer's batch ([`BatchSink`]) or a
/// map (`audit rebuild`). `get` sees what was staged before in the same sink.
pub(super) trait Sink {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn remove(&mut self, key: &[u8]);
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A sled batch over a store: reads see the application values staged in
/// the batch, then the store.
pub(super) struct BatchSink<'a> {
    pub batch: sled::Batch,
    staged: HashMap<Vec<u8>, Vec<u8>>,
    db: &'a sled::Db,
}

impl<'a> BatchSink<'a> {
    pub fn new(db: &'a sled::Db) -> Self {
        Self {
            batch: sled::Batch::default(),
            staged: HashMap::new(),
            db,
        }
    }
}

impl Sink for BatchSink<'_> {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.first() == Some(&b'a') {
            self.staged.insert(key.clone(), value.clone());
        }
        self.batch.insert(key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        self.staged.remove(key);
        self.batch.remove(key);
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.staged.get(key) {
            return Ok(Some(value.clone()));
        }
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }
}

impl Sink for BTreeMap<Vec<u8>, Vec<u8>> {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        BTreeMap::insert(self, key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        BTreeMap::remove(self, key);
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

impl Staged {
    /// Writes this projection of entry `index` to `sink`.
    pub(super) fn write(&self, index: u64, sink: &mut impl Sink) -> Result<(), StoreError> {
        match self {
            Staged::Application { id, starts } => {
                let key = application_key(id);
                let mut value = match (*starts, sink.get(&key)?) {
                    (false, Some(held)) if held.first() == Some(&APPLICATION_CHAIN) => held,
                    (false, Some(_)) => {
                        return Err(StoreError::Corrupt(format!(
                            "application {id} is stored in the format before issue 12: run `proofgate serve` once on this folder to convert it"
                        )))
                    }
                    _ => vec![APPLICATION_CHAIN],
                };
                prost::encoding::encode_varint(index, &mut value);
                sink.insert(key, value)
            }
            Staged::Put(key, value) => sink.insert(key.clone(), value.clone()),
            Staged::Delete(key) => sink.remove(key),
            Staged::Access(pseudonym) => {
                sink.insert(access_key(pseudonym, index).to_vec(), Vec::new())
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_is_stored_as_the_list_of_its_entries() {
        let mut map = BTreeMap::new();
        let decided = Staged::Application {
            id: "n.1".into(),
            starts: true,
        };
        let completed = Staged::Application {
            id: "n.1".into(),
            starts: false,
        };
        decided.write(7, &mut map).unwrap();
        completed.write(300, &mut map).unwrap();
        completed.write(70_000, &mut map).unwrap();
        let value = map.get(&application_key("n.1")).unwrap();
        assert_eq!(value[0], APPLICATION_CHAIN);
        assert_eq!(chain_indices(value), Some(vec![7, 300, 70_000]));
        // A new decision under the same id starts a new list.
        decided.write(80_000, &mut map).unwrap();
        assert_eq!(
            chain_indices(map.get(&application_key("n.1")).unwrap()),
            Some(vec![80_000])
        );
        // A value in the format before (an encoded Application) is not a list,
        // and a change to it is refused rather than written half-converted.
        let old = application_value(
            &Application {
                application_id: "n.2".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            &[1; 32],
        );
        assert_eq!(chain_indices(&old), None);
        map.insert(application_key("n.2"), old);
        let change = Staged::Application {
            id: "n.2".into(),
            starts: false,
        };
        assert!(change.write(9, &mut map).is_err());
    }
}
