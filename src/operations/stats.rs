//! The figures a city reports, folded from the log itself — so they agree
//! with what an auditor sees — by the gRPC service and `proofgate stats` alike.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use crate::audit::{LogRecord, RecordError};
use crate::pb::{
    audit_entry::Event, Application, AuditEntry, DayStatusCount, DepartmentFigures,
    MatterModeCount, MatterStatusCount, ModeOutcomeCount, ProofMode, ProofOutcome, ProofResult,
    ProofsNotBrought, RecordedAnswer, Statistics,
};
use crate::policy::calendar::{civil_date_cst, format_date};
use crate::policy::{application_id_of, apply};

/// The window of [`DepartmentFigures::answers_last_hour`].
const HOUR_MS: i64 = 3_600_000;

/// Folds log entries into statistics, as of one moment ([`StatisticsFold::at`]).
#[derive(Default)]
pub struct StatisticsFold {
    now_unix_ms: i64,
    entries: u64,
    applications: HashMap<String, Application>,
    /// The day each application was decided on (its decision date).
    decided_on: HashMap<String, String>,
    latencies: BTreeMap<String, (Vec<u32>, u64)>,
    answers_last_hour: BTreeMap<String, u64>,
    spot_checks_sampled: u64,
    spot_checks_done: u64,
    spot_checks_false: u64,
    dishonest: HashMap<Vec<u8>, String>,
    policy_version: String,
}

impl StatisticsFold {
    /// A fold whose figures are as of `now_unix_ms`: it decides which
    /// answers fall in the last hour and which dishonesty records are live.
    pub fn at(now_unix_ms: i64) -> Self {
        Self {
            now_unix_ms,
            ..Self::default()
        }
    }

    fn answer(&mut self, answer: &RecordedAnswer, recent: bool) {
        let entry = self
            .latencies
            .entry(answer.department_id.clone())
            .or_default();
        if answer.failure.is_empty() {
            entry.0.push(answer.latency_ms);
            if recent {
                *self
                    .answers_last_hour
                    .entry(answer.department_id.clone())
                    .or_default() += 1;
            }
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
                    // The node's (injectable) clock, as decisions and `now` read it.
                    let recent = d.decided_unix_ms > self.now_unix_ms.saturating_sub(HOUR_MS)
                        && d.decided_unix_ms <= self.now_unix_ms;
                    for p in &d.proofs {
                        for a in &p.answers {
                            self.answer(a, recent);
                        }
                    }
                    self.decided_on
                        .entry(d.application_id.clone())
                        .or_insert_with(|| d.decision_date.clone());
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
            // A cluster orphan: its request counts once, by the decision the
            // cluster acknowledged (on another node), so this one leaves the
            // figures.
            Some(Event::DecisionSuperseded(s)) => {
                if let Some(application) = self.applications.remove(&s.application_id) {
                    let sampled = application.proofs.iter().filter(|p| p.spot_check).count() as u64;
                    self.spot_checks_sampled = self.spot_checks_sampled.saturating_sub(sampled);
                }
                self.decided_on.remove(&s.application_id);
            }
            Some(Event::PolicySetLoaded(p)) => self.policy_version = p.policy_version,
            _ => {}
        }
    }

    /// The statistics, as of the fold's moment.
    pub fn finish(self) -> Statistics {
        let today = format_date(civil_date_cst(self.now_unix_ms));
        let mut by_matter: BTreeMap<(String, i32), u64> = BTreeMap::new();
        let mut by_day: BTreeMap<(String, i32), u64> = BTreeMap::new();
        let mut settled_by_matter: BTreeMap<(String, i32), u64> = BTreeMap::new();
        // Per department: (pending, overdue).
        let mut waiting: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut proofs: BTreeMap<(i32, i32), u64> = BTreeMap::new();
        let mut not_brought = ProofsNotBrought::default();
        let (mut pending, mut overdue) = (0, 0);
        for (id, app) in &self.applications {
            *by_matter
                .entry((app.matter_id.clone(), app.status))
                .or_default() += 1;
            if let Some(day) = self.decided_on.get(id) {
                *by_day.entry((day.clone(), app.status)).or_default() += 1;
            }
            for ProofResult {
                mode,
                outcome,
                department_id,
                ..
            } in &app.proofs
            {
                let (mode, outcome) = (*mode, *outcome);
                *proofs.entry((mode, outcome)).or_default() += 1;
                let settled = matches!(
                    ProofOutcome::try_from(outcome),
                    Ok(ProofOutcome::Waived
                        | ProofOutcome::CommitmentRecorded
                        | ProofOutcome::ConditionMet
                        | ProofOutcome::Verified)
                );
                if settled {
                    *settled_by_matter
                        .entry((app.matter_id.clone(), mode))
                        .or_default() += 1;
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
                    Ok(ProofOutcome::Pending) => {
                        pending += 1;
                        waiting.entry(department_id.clone()).or_default().0 += 1;
                    }
                    Ok(ProofOutcome::Overdue) => {
                        overdue += 1;
                        waiting.entry(department_id.clone()).or_default().1 += 1;
                    }
                    _ => {}
                }
            }
        }
        not_brought.total = not_brought.abolished
            + not_brought.commitment
            + not_brought.data_query
            + not_brought.department_verification;
        let mut latencies = self.latencies;
        for department in waiting.keys() {
            latencies.entry(department.clone()).or_default();
        }
        let departments = latencies
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
                let (pending, overdue) = waiting.get(&department_id).copied().unwrap_or_default();
                DepartmentFigures {
                    answers: latencies.len() as u64,
                    failures,
                    p50_latency_ms: pick(0.50),
                    p99_latency_ms: pick(0.99),
                    answers_last_hour: self
                        .answers_last_hour
                        .get(&department_id)
                        .copied()
                        .unwrap_or(0),
                    pending_verifications: pending,
                    overdue_verifications: overdue,
                    department_id,
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
                .filter(|until| until.as_str() > today.as_str())
                .count() as u64,
            policy_version: self.policy_version,
            not_brought_by_matter: settled_by_matter
                .into_iter()
                .map(|((matter_id, mode), count)| MatterModeCount {
                    matter_id,
                    mode,
                    count,
                })
                .collect(),
            applications_by_day: by_day
                .into_iter()
                .map(|((date, status), count)| DayStatusCount {
                    date,
                    status,
                    count,
                })
                .collect(),
        }
    }
}

/// Statistics of a whole log, as of `now_unix_ms`.
pub fn statistics(
    records: impl Iterator<Item = Result<LogRecord, RecordError>>,
    now_unix_ms: i64,
) -> Result<Statistics, RecordError> {
    let mut fold = StatisticsFold::at(now_unix_ms);
    for record in records {
        if let LogRecord::Entry { bytes, .. } = record? {
            fold.entry(&bytes);
        }
    }
    Ok(fold.finish())
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
            "answers_last_hour": d.answers_last_hour,
            "pending_verifications": d.pending_verifications,
            "overdue_verifications": d.overdue_verifications,
        })).collect::<Vec<_>>(),
        "not_brought_by_matter": s.not_brought_by_matter.iter().map(|m| serde_json::json!({
            "matter_id": m.matter_id, "mode": mode_name(m.mode), "count": m.count,
        })).collect::<Vec<_>>(),
        "applications_by_day": s.applications_by_day.iter().map(|d| serde_json::json!({
            "date": d.date, "status": status_name(d.status), "count": d.count,
        })).collect::<Vec<_>>(),
        "pending_verifications": s.pending_verifications,
        "overdue_verifications": s.overdue_verifications,
        "spot_checks": {"sampled": s.spot_checks_sampled, "done": s.spot_checks_done, "false": s.spot_checks_false},
        "dishonesty_records_active": s.dishonesty_records_active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{
        ApplicationDecided, ApplicationStatus, ProofDecision, VerificationCompleted,
        VerificationOutcome,
    };

    const NOW: i64 = 1_764_300_000_000; // 2025-11-28, 11:20 CST

    fn result(proof: &str, mode: ProofMode, outcome: ProofOutcome, dept: &str) -> ProofResult {
        ProofResult {
            proof_id: proof.into(),
            mode: mode as i32,
            outcome: outcome as i32,
            department_id: dept.into(),
            ticket: if outcome == ProofOutcome::Pending {
                format!("t-{proof}")
            } else {
                String::new()
            },
            due_unix_ms: NOW + 86_400_000,
            ..Default::default()
        }
    }

    fn answer(dept: &str, latency_ms: u32, failure: &str) -> RecordedAnswer {
        RecordedAnswer {
            department_id: dept.into(),
            latency_ms,
            failure: failure.into(),
            ..Default::default()
        }
    }

    fn entry(index: u64, event: Event) -> Vec<u8> {
        AuditEntry {
            index,
            logged_unix_ms: NOW,
            node_id: "n".into(),
            event: Some(event),
        }
        .encode_to_vec()
    }

    fn decided(
        id: &str,
        matter: &str,
        date: &str,
        decided_unix_ms: i64,
        proofs: Vec<(ProofResult, Vec<RecordedAnswer>)>,
    ) -> Event {
        Event::ApplicationDecided(ApplicationDecided {
            application_id: id.into(),
            matter_id: matter.into(),
            decision_date: date.into(),
            decided_unix_ms,
            proofs: proofs
                .into_iter()
                .map(|(result, answers)| ProofDecision {
                    result: Some(result),
                    answers,
                    commitment: None,
                })
                .collect(),
            ..Default::default()
        })
    }

    /// A log with known decisions gives known figures: by mode, by matter,
    /// by day and status, per department (last hour, pending, overdue).
    #[test]
    fn a_log_of_known_decisions_gives_known_figures() {
        use ProofMode::*;
        use ProofOutcome::*;
        let events = vec![
            // Yesterday: all four modes settled (complete).
            decided(
                "a1",
                "m-one",
                "2025-11-27",
                NOW - 86_400_000,
                vec![
                    (result("p1", Abolished, Waived, ""), vec![]),
                    (result("p2", Commitment, CommitmentRecorded, ""), vec![]),
                    (
                        result("p3", DataQuery, ConditionMet, "tax"),
                        vec![answer("tax", 10, "")],
                    ),
                    (
                        result("p4", DepartmentVerification, Verified, "civil"),
                        vec![answer("civil", 30, "")],
                    ),
                ],
            ),
            // Today, ten minutes ago: a data query, and a verification pending then verified.
            decided(
                "a2",
                "m-two",
                "2025-11-28",
                NOW - 600_000,
                vec![
                    (
                        result("p3", DataQuery, ConditionMet, "tax"),
                        vec![answer("tax", 20, ""), answer("tax", 0, "timeout")],
                    ),
                    (
                        result("p4", DepartmentVerification, Pending, "civil"),
                        vec![answer("civil", 40, "")],
                    ),
                ],
            ),
            // Today: one pending that stays pending, one commitment missing (not settled).
            decided(
                "a3",
                "m-two",
                "2025-11-28",
                NOW - 60_000,
                vec![
                    (
                        result("p4", DepartmentVerification, Pending, "civil"),
                        vec![answer("civil", 50, "")],
                    ),
                    (result("p2", Commitment, CommitmentMissing, ""), vec![]),
                ],
            ),
            Event::VerificationCompleted(VerificationCompleted {
                application_id: "a2".into(),
                proof_id: "p4".into(),
                ticket: "t-p4".into(),
                answer: Some(RecordedAnswer {
                    department_id: "civil".into(),
                    verification: VerificationOutcome::Verified as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ];
        let mut fold = StatisticsFold::at(NOW);
        for (i, event) in events.into_iter().enumerate() {
            fold.entry(&entry(i as u64, event));
        }
        let s = fold.finish();
        assert_eq!(s.entries, 4);
        assert_eq!(s.applications, 3);
        let nb = s.not_brought.unwrap();
        assert_eq!(
            (
                nb.abolished,
                nb.commitment,
                nb.data_query,
                nb.department_verification,
                nb.total
            ),
            (1, 1, 2, 2, 6),
            "{s:#?}"
        );
        let by_matter: Vec<_> = s
            .not_brought_by_matter
            .iter()
            .map(|m| (m.matter_id.as_str(), m.mode(), m.count))
            .collect();
        assert_eq!(
            by_matter,
            [
                ("m-one", Abolished, 1),
                ("m-one", Commitment, 1),
                ("m-one", DataQuery, 1),
                ("m-one", DepartmentVerification, 1),
                ("m-two", DataQuery, 1),
                ("m-two", DepartmentVerification, 1),
            ]
        );
        let by_day: Vec<_> = s
            .applications_by_day
            .iter()
            .map(|d| (d.date.as_str(), d.status(), d.count))
            .collect();
        assert_eq!(
            by_day,
            [
                ("2025-11-27", ApplicationStatus::Complete, 1),
                ("2025-11-28", ApplicationStatus::Complete, 1),
                ("2025-11-28", ApplicationStatus::NeedsApplicantAction, 1),
            ]
        );
        assert_eq!((s.pending_verifications, s.overdue_verifications), (1, 0));
        let civil = s
            .departments
            .iter()
            .find(|d| d.department_id == "civil")
            .unwrap();
        assert_eq!(
            (civil.answers, civil.answers_last_hour, civil.failures),
            (3, 2, 0)
        );
        assert_eq!(
            (civil.pending_verifications, civil.overdue_verifications),
            (1, 0)
        );
        assert_eq!((civil.p50_latency_ms, civil.p99_latency_ms), (40, 50));
        let tax = s
            .departments
            .iter()
            .find(|d| d.department_id == "tax")
            .unwrap();
        assert_eq!(
            (tax.answers, tax.answers_last_hour, tax.failures),
            (2, 1, 1)
        );
    }
}
