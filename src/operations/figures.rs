//! The console's figures: one snapshot that joins the [`Statistics`] of
//! [`Operations::statistics`] (the very value `GetStatistics` and `proofgate
//! stats` return) with what the node knows now — the serving catalog, the
//! registered data sources and their circuits, the log's size, checkpoint
//! and key. Aggregates only: nothing here names an applicant, a pseudonym
//! or an application.

use std::collections::BTreeMap;

use crate::audit::NoteVerifier;
use crate::departments::resilience::CircuitState;
use crate::metrics::Metrics;
use crate::pb::{DataSource, Statistics};
use crate::policy::{Mode, PolicySet};

use super::{Operations, OperationsError};

/// The four modes, in the order every figure lists them.
pub const MODES: [Mode; 4] = [
    Mode::Abolished,
    Mode::Commitment,
    Mode::DataQuery,
    Mode::DepartmentVerification,
];

/// Jinhua's 2019 split of its 4,052 proofs over [`MODES`].
pub const JINHUA: [u64; 4] = {
    let c = crate::policy::synthetic::JINHUA_COUNTS;
    [c[0] as u64, c[1] as u64, c[2] as u64, c[3] as u64]
};

/// Certificates Jinhua no longer demanded in 2019 (137.97 万).
pub const JINHUA_CERTIFICATES_SAVED: u64 = 1_379_700;

/// One registered data source, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepartmentRow {
    pub department_id: String,
    pub capacity_per_second: u32,
    /// "closed", "half-open" or "open".
    pub circuit: &'static str,
    /// Usable answers logged in the last hour, and over the whole log.
    pub answers_last_hour: u64,
    pub answers: u64,
    /// Calls that gave no usable answer, over the whole log.
    pub failures: u64,
    pub p50_latency_ms: u32,
    pub p99_latency_ms: u32,
    pub pending_verifications: u64,
    pub overdue_verifications: u64,
    /// Answers whose batch signature did not verify, since the node started
    /// (counted by the directory; not in the log, which keeps verified answers).
    pub batch_signature_failures: u64,
}

/// The log, as the console shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFigures {
    pub tree_size: u64,
    /// The newest signed checkpoint note (public: origin, size, root, signature).
    pub checkpoint: Option<String>,
    /// `name+keyid` of the key that signs checkpoints.
    pub signing_key: String,
}

/// Everything the console shows.
#[derive(Debug, Clone)]
pub struct ConsoleFigures {
    /// Exactly what GetStatistics returns at this moment.
    pub statistics: Statistics,
    /// Proofs of the serving catalog, by [`MODES`].
    pub catalog: [u64; 4],
    /// Matter id → its name in the serving catalog.
    pub matter_names: BTreeMap<String, String>,
    pub departments: Vec<DepartmentRow>,
    pub log: LogFigures,
}

/// Proofs of `policy` by [`MODES`].
pub fn catalog_by_mode(policy: &PolicySet) -> [u64; 4] {
    let mut counts = [0; 4];
    for proof in policy.proofs.values() {
        if let Some(i) = MODES.iter().position(|m| *m == proof.mode) {
            counts[i] += 1;
        }
    }
    counts
}

/// `state` as the console names it.
pub fn circuit_name(state: Option<CircuitState>) -> &'static str {
    match state {
        Some(CircuitState::Closed) | None => "closed",
        Some(CircuitState::HalfOpen) => "half-open",
        Some(CircuitState::Open) => "open",
    }
}

/// One row per registered source (sorted by id), its figures from
/// `statistics`; a department the log knows but no longer registered keeps
/// a row too (capacity 0), so no figure of GetStatistics is dropped.
pub fn department_rows(
    sources: &[DataSource],
    circuit: impl Fn(&str) -> Option<CircuitState>,
    statistics: &Statistics,
    batch_signature_failures: impl Fn(&str) -> u64,
) -> Vec<DepartmentRow> {
    let mut rows: BTreeMap<String, DepartmentRow> = BTreeMap::new();
    let mut row = |id: &str, capacity: u32, circuit: &'static str| {
        rows.entry(id.to_owned())
            .or_insert_with(|| DepartmentRow {
                department_id: id.to_owned(),
                capacity_per_second: capacity,
                circuit,
                answers_last_hour: 0,
                answers: 0,
                failures: 0,
                p50_latency_ms: 0,
                p99_latency_ms: 0,
                pending_verifications: 0,
                overdue_verifications: 0,
                batch_signature_failures: batch_signature_failures(id),
            })
            .department_id
            .clone()
    };
    for source in sources {
        row(
            &source.department_id,
            source.capacity_per_second,
            circuit_name(circuit(&source.department_id)),
        );
    }
    for figures in &statistics.departments {
        row(&figures.department_id, 0, "unregistered");
    }
    for figures in &statistics.departments {
        if let Some(row) = rows.get_mut(&figures.department_id) {
            row.answers_last_hour = figures.answers_last_hour;
            row.answers = figures.answers;
            row.failures = figures.failures;
            row.p50_latency_ms = figures.p50_latency_ms;
            row.p99_latency_ms = figures.p99_latency_ms;
            row.pending_verifications = figures.pending_verifications;
            row.overdue_verifications = figures.overdue_verifications;
        }
    }
    rows.into_values().collect()
}

impl Operations {
    /// The console's snapshot: [`Operations::statistics`] and the node now.
    /// `metrics` is the node's handle (batch-signature failures).
    pub async fn console_figures(
        &self,
        metrics: &Metrics,
    ) -> Result<ConsoleFigures, OperationsError> {
        let statistics = self.statistics().await?;
        let policy = self.gateway.policy();
        let directory = self.gateway.departments();
        let departments = department_rows(
            &directory.list(),
            |id| directory.circuit(id),
            &statistics,
            |id| metrics.department_calls(id, "bad_signature"),
        );
        let audit = self.gateway.audit();
        let store = audit.store();
        let log = LogFigures {
            tree_size: store.tree_size()?,
            checkpoint: store.latest_checkpoint()?.map(|(_, note)| note),
            signing_key: NoteVerifier::from_vkey(audit.verifier_key())
                .map(|v| v.signer_id())
                .unwrap_or_else(|e| format!("(unreadable verifier key: {e})")),
        };
        Ok(ConsoleFigures {
            catalog: catalog_by_mode(&policy),
            matter_names: policy
                .matters
                .values()
                .map(|m| (m.id.clone(), m.name.clone()))
                .collect(),
            statistics,
            departments,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::DepartmentFigures;

    #[test]
    fn rows_join_sources_circuits_statistics_and_signature_failures() {
        let sources = [
            DataSource {
                department_id: "tax".into(),
                capacity_per_second: 200,
                ..Default::default()
            },
            DataSource {
                department_id: "civil".into(),
                capacity_per_second: 50,
                ..Default::default()
            },
        ];
        let statistics = Statistics {
            departments: vec![
                DepartmentFigures {
                    department_id: "civil".into(),
                    answers: 3,
                    failures: 1,
                    p50_latency_ms: 40,
                    p99_latency_ms: 50,
                    answers_last_hour: 2,
                    pending_verifications: 1,
                    overdue_verifications: 4,
                },
                DepartmentFigures {
                    department_id: "gone".into(),
                    answers: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let rows = department_rows(
            &sources,
            |id| (id == "civil").then_some(CircuitState::Open),
            &statistics,
            |id| if id == "tax" { 2 } else { 0 },
        );
        let ids: Vec<_> = rows.iter().map(|r| r.department_id.as_str()).collect();
        assert_eq!(ids, ["civil", "gone", "tax"]);
        assert_eq!(
            rows[0],
            DepartmentRow {
                department_id: "civil".into(),
                capacity_per_second: 50,
                circuit: "open",
                answers_last_hour: 2,
                answers: 3,
                failures: 1,
                p50_latency_ms: 40,
                p99_latency_ms: 50,
                pending_verifications: 1,
                overdue_verifications: 4,
                batch_signature_failures: 0,
            }
        );
        assert_eq!((rows[1].circuit, rows[1].answers), ("unregistered", 9));
        assert_eq!(
            (
                rows[2].circuit,
                rows[2].capacity_per_second,
                rows[2].batch_signature_failures
            ),
            ("closed", 200, 2)
        );
    }

    #[test]
    fn the_jinhua_split_and_the_sample_catalog_by_mode() {
        assert_eq!(JINHUA.iter().sum::<u64>(), 4052);
        let sample = crate::policy::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        )
        .unwrap();
        let counts = catalog_by_mode(&sample);
        assert_eq!(counts.iter().sum::<u64>(), sample.proofs.len() as u64);
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    }
}
