//! `audit rebuild`: recompute every projection (applications, request keys,
//! tickets, spot checks, dishonesty records, data sources, the access index)
//! from the entries alone, with the same [`crate::policy::apply`] and
//! [`projections_of`] the live node uses, and report where the store differs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use prost::Message;

use super::project::{projections_of, Staged};
use super::store::{AuditStore, StoreError, POLICY_VERSION_KEY};
use crate::pb::{audit_entry::Event, Application, AuditEntry};
use crate::policy::{application_id_of, apply, PolicySet};

/// Key kinds that are projections, by their one-byte prefix.
const PROJECTION_KINDS: &[(u8, &str)] = &[
    (b'a', "applications"),
    (b'r', "request keys"),
    (b't', "tickets"),
    (b's', "spot checks"),
    (b'h', "dishonesty records"),
    (b'd', "data sources"),
    (b'x', "access index"),
];

/// How many differing keys a report names; the counts cover all of them.
const EXAMPLES: usize = 20;

/// Keys of one kind: how many the entries give, how many the store holds,
/// and how they differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindReport {
    pub kind: &'static str,
    pub expected: u64,
    pub stored: u64,
    /// Given by the entries, absent from the store.
    pub missing: u64,
    /// In the store, given by no entry.
    pub extra: u64,
    /// In both, with different values.
    pub different: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub entries: u64,
    pub kinds: Vec<KindReport>,
    /// Entries the projection refused (index, why): the log itself is
    /// inconsistent there; `audit replay` says more.
    pub refused: Vec<(u64, String)>,
    /// The first differing keys, readable.
    pub examples: Vec<String>,
}

impl RebuildReport {
    /// Whether the store holds exactly what the entries give.
    pub fn consistent(&self) -> bool {
        self.refused.is_empty()
            && self
                .kinds
                .iter()
                .all(|k| k.missing == 0 && k.extra == 0 && k.different == 0)
    }
}

/// A key as a person can read it: its kind, then text or hex.
fn readable(key: &[u8]) -> String {
    let kind = PROJECTION_KINDS
        .iter()
        .find(|(p, _)| key.first() == Some(p))
        .map(|(_, name)| *name)
        .unwrap_or("meta");
    let rest = &key[1.min(key.len())..];
    match std::str::from_utf8(rest) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\0') => {
            format!("{kind} `{}`", text.replace('\0', "/"))
        }
        _ => format!("{kind} {}", hex::encode(rest)),
    }
}

/// The projections the entries of `store` give, as the writer would store them.
fn expected_state(
    store: &AuditStore,
    report: &mut RebuildReport,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
    let mut expected = BTreeMap::new();
    let mut applications: HashMap<String, Application> = HashMap::new();
    let mut policies: HashMap<String, Arc<PolicySet>> = HashMap::new();
    for item in store.entries_with_leaves(0, u64::MAX) {
        let (index, _, bytes) = item?;
        report.entries += 1;
        let event = match AuditEntry::decode(&bytes[..]).map(|e| e.event) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(e) => {
                report
                    .refused
                    .push((index, format!("does not decode: {e}")));
                continue;
            }
        };
        if let Event::PolicySetLoaded(loaded) = &event {
            if let Ok(set) = PolicySet::from_canonical(&String::from_utf8_lossy(&loaded.canonical))
            {
                policies.insert(set.version.clone(), Arc::new(set));
            }
        }
        let days = |version: &str, proof: &str| {
            policies
                .get(version)
                .and_then(|p| p.proof(proof))
                .and_then(|p| p.commitment.as_ref())
                .map(|t| t.dishonesty_days)
        };
        let after = match application_id_of(&event) {
            None => None,
            Some(id) => {
                let mut application = match &event {
                    Event::ApplicationDecided(_) => Application::default(),
                    _ => applications.get(id).cloned().unwrap_or_default(),
                };
                match apply(&mut application, &event) {
                    Ok(_) => {
                        applications.insert(id.to_owned(), application.clone());
                        Some(application)
                    }
                    Err(e) => {
                        report.refused.push((index, e.to_string()));
                        continue;
                    }
                }
            }
        };
        for projection in projections_of(&event, after.as_ref(), &days) {
            Staged::from(projection).write(index, &mut expected)?;
        }
    }
    Ok(expected)
}

/// Whether two stored application values (a list of entries, or a copy
/// written before issue 12) give the same application.
fn same_application(store: &AuditStore, expected: &[u8], stored: &[u8]) -> bool {
    matches!(
        (
            store.application_from_value(expected),
            store.application_from_value(stored),
        ),
        (Ok(e), Ok(s)) if e == s
    )
}

/// For two stored application values, the fields in which they differ.
fn application_differences(store: &AuditStore, expected: &[u8], stored: &[u8]) -> Option<String> {
    let (Ok(e), Ok(s)) = (
        store.application_from_value(expected),
        store.application_from_value(stored),
    ) else {
        return None;
    };
    let mut fields = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            fields.push(name);
        }
    };
    check("status", e.status == s.status);
    check("proofs", e.proofs == s.proofs);
    check("created", e.created_unix_ms == s.created_unix_ms);
    check("updated", e.updated_unix_ms == s.updated_unix_ms);
    check("receipt", e.receipt == s.receipt);
    check(
        "request",
        (
            &e.request_id,
            &e.matter_id,
            &e.caller,
            &e.officer_id,
            &e.hall_id,
        ) == (
            &s.request_id,
            &s.matter_id,
            &s.caller,
            &s.officer_id,
            &s.hall_id,
        ),
    );
    check("policy version", e.policy_version == s.policy_version);
    Some(if fields.is_empty() {
        "encoding".into()
    } else {
        fields.join(", ")
    })
}

/// Recomputes the projections of a store from its entries and compares
/// them with what it holds.
pub fn rebuild_report(store: &AuditStore) -> Result<RebuildReport, StoreError> {
    let mut report = RebuildReport::default();
    let expected = expected_state(store, &mut report)?;
    let note = |report: &mut RebuildReport, what: &str, key: &[u8]| {
        if report.examples.len() < EXAMPLES {
            report.examples.push(format!("{what}: {}", readable(key)));
        }
    };
    for &(prefix, kind) in PROJECTION_KINDS {
        let mut counts = KindReport {
            kind,
            ..Default::default()
        };
        let mut want = expected.range(vec![prefix]..vec![prefix + 1]).peekable();
        counts.expected = expected.range(vec![prefix]..vec![prefix + 1]).count() as u64;
        let mut have = store.db().scan_prefix([prefix]);
        let mut next_have = have.next().transpose()?;
        loop {
            match (want.peek(), &next_have) {
                (None, None) => break,
                (Some((wk, wv)), Some((hk, hv))) if wk.as_slice() == hk.as_ref() => {
                    counts.stored += 1;
                    let differs = wv.as_slice() != hv.as_ref()
                        && !(prefix == b'a' && same_application(store, wv, hv));
                    if differs {
                        counts.different += 1;
                        let what = match application_differences(store, wv, hv) {
                            Some(fields) => format!("different ({fields})"),
                            None => "different".into(),
                        };
                        note(&mut report, &what, hk);
                    }
                    want.next();
                    next_have = have.next().transpose()?;
                }
                (Some((wk, _)), stored)
                    if stored
                        .as_ref()
                        .is_none_or(|(hk, _)| wk.as_slice() < hk.as_ref()) =>
                {
                    counts.missing += 1;
                    note(&mut report, "missing", wk);
                    want.next();
                }
                (_, Some((hk, _))) => {
                    counts.stored += 1;
                    counts.extra += 1;
                    note(&mut report, "extra", hk);
                    next_have = have.next().transpose()?;
                }
                (Some(_), None) => unreachable!("a wanted key with nothing stored is missing"),
            }
        }
        report.kinds.push(counts);
    }
    let stored_version = store.meta(POLICY_VERSION_KEY)?;
    if stored_version.as_deref() != expected.get(POLICY_VERSION_KEY).map(Vec::as_slice) {
        note(&mut report, "different", POLICY_VERSION_KEY);
        report.refused.push((
            report.entries,
            "the recorded policy version is not the one logged last".into(),
        ));
    }
    Ok(report)
}

/// [`rebuild_report`] on a (stopped) node's data folder.
pub fn rebuild_data_dir(data_dir: &Path) -> Result<RebuildReport, StoreError> {
    let store = AuditStore::open(&data_dir.join("log"))?;
    rebuild_report(&store)
}

/// Converts the application projections of a store written before issue
/// 12 (a full copy of each application beside its entries) to lists of
/// entries, recomputed from the entries in one atomic batch; the other
/// projections are rewritten as the entries give them. Nothing to do (0) for
/// a store already converted or empty; else the applications converted.
pub fn migrate_projections(store: &AuditStore) -> Result<u64, StoreError> {
    let legacy = match store.db().scan_prefix(b"a").next() {
        None => false,
        Some(item) => item?.1.first() != Some(&super::project::APPLICATION_CHAIN),
    };
    if !legacy {
        return Ok(0);
    }
    let mut scratch = RebuildReport::default();
    let expected = expected_state(store, &mut scratch)?;
    let mut batch = sled::Batch::default();
    let mut converted = 0;
    for (key, value) in expected {
        converted += u64::from(key.first() == Some(&b'a'));
        batch.insert(key, value);
    }
    let db = store.db();
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(converted)
}

/// Writes every projection the entries of `store` give (what a node's
/// writer would have stored), then checks the store against its entries:
/// how a data folder restored from a mirror gets its projections. Returns
/// the check's report (consistent unless the log itself refuses an entry).
pub fn restore_projections(store: &AuditStore) -> Result<RebuildReport, StoreError> {
    let mut scratch = RebuildReport::default();
    let expected = expected_state(store, &mut scratch)?;
    let mut batch = sled::Batch::default();
    for (key, value) in expected {
        batch.insert(key, value);
    }
    let db = store.db();
    db.apply_batch(batch)?;
    db.flush()?;
    rebuild_report(store)
}
