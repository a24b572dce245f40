//! The derived state (projections) each entry writes beside itself, in the
//! same atomic batch: the latest application, the request key, tickets,
//! spot checks, dishonesty records, data sources and the access index.
//!
//! [`projections_of`] is the one place that says what an entry stores; the
//! live appenders and `audit rebuild` both call it, so the store can always be
//! recomputed from the entries. What an event does to an *application* is
//! [`crate::policy::apply`]; this module only lays the result out in keys.

use std::collections::BTreeMap;

use prost::Message;

use super::merkle::Hash;
use super::store::{
    access_key, application_key, data_source_key, dishonesty_key, request_key, spot_check_key,
    ticket_key, DishonestyRecord, SpotCheckRecord, TicketRecord, POLICY_VERSION_KEY,
};
use crate::pb::{audit_entry::Event, Application, AuditReceipt, ProofOutcome};

/// One change to the store, written in the same batch as its entry.
#[derive(Debug, Clone)]
pub enum Projection {
    /// The application's latest state; its receipt (this entry) is added
    /// when it is stored.
    Application(Box<Application>),
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
            out.extend(application.map(|a| Projection::Application(Box::new(a.clone()))));
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
            out.extend(application.map(|a| Projection::Application(Box::new(a.clone()))));
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
            out.extend(application.map(|a| Projection::Application(Box::new(a.clone()))));
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

/// The stored value of an application: its encoding followed by its
/// receipt (field 9), which decoders accept in any position.
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

/// A projection with its application already encoded, ready for the writer.
#[derive(Debug)]
pub(super) enum Staged {
    Application { id: String, encoded: Vec<u8> },
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Access([u8; 32]),
}

impl From<Projection> for Staged {
    fn from(projection: Projection) -> Self {
        match projection {
            Projection::Application(mut app) => {
                // The receipt is this entry's, appended when stored; an
                // earlier one must not linger in the encoding.
                app.receipt = None;
                Staged::Application {
                    id: app.application_id.clone(),
                    encoded: app.encode_to_vec(),
                }
            }
            Projection::Put(k, v) => Staged::Put(k, v),
            Projection::Delete(k) => Staged::Delete(k),
            Projection::Access(p) => Staged::Access(p),
        }
    }
}

/// Where staged projections land: a sled batch (the writer) or a map
/// (`audit rebuild`).
pub(super) trait Sink {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn remove(&mut self, key: &[u8]);
}

impl Sink for sled::Batch {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        sled::Batch::insert(self, key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        sled::Batch::remove(self, key);
    }
}

impl Sink for BTreeMap<Vec<u8>, Vec<u8>> {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        BTreeMap::insert(self, key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        BTreeMap::remove(self, key);
    }
}

impl Staged {
    /// Writes this projection of entry `index` (leaf hash `leaf`) to `sink`.
    pub(super) fn write(&self, index: u64, leaf: &Hash, sink: &mut impl Sink) {
        match self {
            Staged::Application { id, encoded } => {
                sink.insert(application_key(id), application_value(encoded, index, leaf))
            }
            Staged::Put(key, value) => sink.insert(key.clone(), value.clone()),
            Staged::Delete(key) => sink.remove(key),
            Staged::Access(pseudonym) => {
                sink.insert(access_key(pseudonym, index).to_vec(), Vec::new())
            }
        }
    }
}
