//! The figures a city reports, folded from the log itself — so they agree
//! with what an auditor sees — by the gRPC service and `proofgate stats` alike.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use crate::audit::{LogRecord, RecordError};
use crate::pb::{
    audit_entry::Event, Application, AuditEntry, DepartmentFigures, MatterStatusCount,
    ModeOutcomeCount, ProofMode, ProofOutcome, ProofResult, ProofsNotBrought, RecordedAnswer,
    Statistics,
};
use crate::policy::{application_id_of, apply};

/// Folds log entries into statistics.
#[derive(Default)]
pub struct StatisticsFold {
    entries: u64,
    applications: HashMap<String, Application>,
    latencies: BTreeMap<String, (Vec<u32>, u64)>,
    spot_checks_sampled: u64,
    spot_checks_done: u64,
    spot_checks_false: u64,
    dishonest: HashMap<Vec<u8>, String>,
    policy_version: String,
}

impl StatisticsFold {
    fn answer(&mut self, answer: &RecordedAnswer) {
        let entry = self
            .latencies
            .entry(answer.department_id.clone())
            .or_default();
        if answer.failure.is_empty() {
            entry.0.push(answer.latency_ms);
        } else {
            entry.1 += 1;
        }
    }

    /// Folds an event about an application with the one projection; keeps
    /// only what the figures need.
    fn apply(&mut self, event: &Event) {
        let Some(id) = application_id_of(event) else {
            return;
        };
        let application = match event {
            Event::ApplicationDecided(_) => self.applications.entry(id.to_owned()).or_default(),
            _ => match self.applications.get_mut(id) {
                Some(application) => application,
                None => return,
            },
        };
        // A change the application does not accept leaves it as it was;
        // replay reports such entries.
        if apply(application, event).is_ok() {
            for proof in &mut application.proofs {
                proof.reason.clear();
                proof.proof_name.clear();
                proof.legal_basis.clear();
            }
        }
    }

    pub fn entry(&mut self, bytes: &[u8]) {
        self.entries += 1;
        let Ok(entry) = AuditEntry::decode(bytes) else {
            return;
        };
        match entry.event {
            Some(event @ Event::ApplicationDecided(_)) => {
                if let Event::ApplicationDecided(d) = &event {
                    for p in &d.proofs {
                        for a in &p.answers {
                            self.answer(a);
                        }
                    }
                    self.spot_checks_sampled += d
                        .proofs
                        .iter()
                        .filter_map(|p| p.result.as_ref())
                        .filter(|r| r.spot_check)
                        .count() as u64;
                }
                self.apply(&event);
            }
            Some(event @ (Event::VerificationCompleted(_) | Event::VerificationOverdue(_))) => {
                self.apply(&event)
            }
            Some(Event::SpotCheckRecorded(s)) => {
                self.spot_checks_done += 1;
                if !s.truthful {
                    self.spot_checks_false += 1;
                    self.dishonest
                        .insert(s.subject_pseudonym, s.dishonest_until);
                }
            }
            Some(Event::DishonestyRevoked(r)) => {
                self.dishonest.remove(&r.subject_pseudonym);
            }
            Some(Event::PolicySetLoaded(p)) => self.policy_version = p.policy_version,
            _ => {}
        }
    }

    /// The statistics; `today` (YYYY-MM-DD) decides which dishonesty records are live.
    pub fn finish(self, today: &str) -> Statistics {
        let mut by_matter: BTreeMap<(String, i32), u64> = BTreeMap::new();
        let mut proofs: BTreeMap<(i32, i32), u64> = BTreeMap::new();
        let mut not_brought = ProofsNotBrought::default();
        let (mut pending, mut overdue) = (0, 0);
        for app in self.applications.values() {
            *by_matter
                .entry((app.matter_id.clone(), app.status))
                .or_default() += 1;
            for &ProofResult { mode, outcome, .. } in &app.proofs {
                *proofs.entry((mode, outcome)).or_default() += 1;
                let settled = matches!(
                    ProofOutcome::try_from(outcome),
                    Ok(ProofOutcome::Waived
                        | ProofOutcome::CommitmentRecorded
                        | ProofOutcome::ConditionMet
                        | ProofOutcome::Verified)
                );
                if settled {
                    match ProofMode::try_from(mode) {
                        Ok(ProofMode::Abolished) => not_brought.abolished += 1,
                        Ok(ProofMode::Commitment) => not_brought.commitment += 1,
                        Ok(ProofMode::DataQuery) => not_brought.data_query += 1,
                        Ok(ProofMode::DepartmentVerification) => {
                            not_brought.department_verification += 1
                        }
                        _ => {}
                    }
                }
                match ProofOutcome::try_from(outcome) {
                    Ok(ProofOutcome::Pending) => pending += 1,
                    Ok(ProofOutcome::Overdue) => overdue += 1,
                    _ => {}
                }
            }
        }
        not_brought.total = not_brought.abolished
            + not_brought.commitment
            + not_brought.data_query
            + not_brought.department_verification;
        let departments = self
            .latencies
            .into_iter()
            .map(|(department_id, (mut latencies, failures))| {
                latencies.sort_unstable();
                let pick = |p: f64| {
                    if latencies.is_empty() {
                        0
                    } else {
                        let rank = ((p * latencies.len() as f64).ceil() as usize)
                            .clamp(1, latencies.len());
                        latencies[rank - 1]
                    }
                };
                DepartmentFigures {
                    department_id,
                    answers: latencies.len() as u64,
                    failures,
                    p50_latency_ms: pick(0.50),
                    p99_latency_ms: pick(0.99),
                }
            })
            .collect();
        Statistics {
            entries: self.entries,
            applications: self.applications.len() as u64,
            applications_by_matter: by_matter
                .into_iter()
                .map(|((matter_id, status), count)| MatterStatusCount {
                    matter_id,
                    status,
                    count,
                })
                .collect(),
            proofs: proofs
                .into_iter()
                .map(|((mode, outcome), count)| ModeOutcomeCount {
                    mode,
                    outcome,
                    count,
                })
                .collect(),
            not_brought: Some(not_brought),
            departments,
            pending_verifications: pending,
            overdue_verifications: overdue,
            spot_checks_sampled: self.spot_checks_sampled,
            spot_checks_done: self.spot_checks_done,
            spot_checks_false: self.spot_checks_false,
            dishonesty_records_active: self
                .dishonest
                .values()
                .filter(|until| until.as_str() > today)
                .count() as u64,
            policy_version: self.policy_version,
        }
    }
}

/// Statistics of a whole log.
pub fn statistics(
    records: impl Iterator<Item = Result<LogRecord, RecordError>>,
    today: &str,
) -> Result<Statistics, RecordError> {
    let mut fold = StatisticsFold::default();
    for record in records {
        if let LogRecord::Entry { bytes, .. } = record? {
            fold.entry(&bytes);
        }
    }
    Ok(fold.finish(today))
}

fn status_name(status: i32) -> &'static str {
    crate::pb::ApplicationStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn mode_name(mode: i32) -> &'static str {
    ProofMode::try_from(mode)
        .map(|m| m.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn outcome_name(outcome: i32) -> &'static str {
    ProofOutcome::try_from(outcome)
        .map(|o| o.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// A table for people.
pub fn to_table(s: &Statistics) -> String {
    let nb = s.not_brought.unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("policy version          {}\n", s.policy_version));
    out.push_str(&format!("log entries             {}\n", s.entries));
    out.push_str(&format!("applications            {}\n\n", s.applications));
    out.push_str("proofs citizens no longer had to bring\n");
    for (label, n) in [
        ("abolished (直接取消)", nb.abolished),
        ("commitment (告知承诺)", nb.commitment),
        ("data query (数据查询)", nb.data_query),
        (
            "department verification (部门核验)",
            nb.department_verification,
        ),
        ("total", nb.total),
    ] {
        let share = if nb.total == 0 {
            0.0
        } else {
            100.0 * n as f64 / nb.total as f64
        };
        out.push_str(&format!("  {label:<36} {n:>10}  {share:>5.1} %\n"));
    }
    out.push_str("\napplications by matter and status\n");
    for m in &s.applications_by_matter {
        out.push_str(&format!(
            "  {:<28} {:<40} {:>8}\n",
            m.matter_id,
            status_name(m.status),
            m.count
        ));
    }
    out.push_str("\nproofs by mode and outcome\n");
    for p in &s.proofs {
        out.push_str(&format!(
            "  {:<36} {:<36} {:>8}\n",
            mode_name(p.mode),
            outcome_name(p.outcome),
            p.count
        ));
    }
    out.push_str("\ndepartments              answers  failures   p50 ms   p99 ms\n");
    for d in &s.departments {
        out.push_str(&format!(
            "  {:<22} {:>8} {:>9} {:>8} {:>8}\n",
            d.department_id, d.answers, d.failures, d.p50_latency_ms, d.p99_latency_ms
        ));
    }
    out.push_str(&format!(
        "\nverifications pending {}, overdue {}\nspot checks sampled {}, done {}, false {}; dishonesty records active {}\n",
        s.pending_verifications,
        s.overdue_verifications,
        s.spot_checks_sampled,
        s.spot_checks_done,
        s.spot_checks_false,
        s.dishonesty_records_active
    ));
    out
}

/// JSON for machines.
pub fn to_json(s: &Statistics) -> serde_json::Value {
    let nb = s.not_brought.unwrap_or_default();
    serde_json::json!({
        "policy_version": s.policy_version,
        "entries": s.entries,
        "applications": s.applications,
        "not_brought": {
            "abolished": nb.abolished, "commitment": nb.commitment,
            "data_query": nb.data_query, "department_verification": nb.department_verification,
            "total": nb.total,
        },
        "applications_by_matter": s.applications_by_matter.iter().map(|m| serde_json::json!({
            "matter_id": m.matter_id, "status": status_name(m.status), "count": m.count,
        })).collect::<Vec<_>>(),
        "proofs": s.proofs.iter().map(|p| serde_json::json!({
            "mode": mode_name(p.mode), "outcome": outcome_name(p.outcome), "count": p.count,
        })).collect::<Vec<_>>(),
        "departments": s.departments.iter().map(|d| serde_json::json!({
            "department_id": d.department_id, "answers": d.answers, "failures": d.failures,
            "p50_latency_ms": d.p50_latency_ms, "p99_latency_ms": d.p99_latency_ms,
        })).collect::<Vec<_>>(),
        "pending_verifications": s.pending_verifications,
        "overdue_verifications": s.overdue_verifications,
        "spot_checks": {"sampled": s.spot_checks_sampled, "done": s.spot_checks_done, "false": s.spot_checks_false},
        "dishonesty_records_active": s.dishonesty_records_active,
    })
}
