//! `proofgate stats --cluster`: the figures of several nodes added up.
//! Each node's figures cover its own log, and every application lives in
//! exactly one log, so counts add. An orphan decision (logged by one node,
//! superseded by another node's acknowledged decision, issue 10) is left out
//! of its node's figures by that node once `DecisionSuperseded` entries are
//! counted there, so the sum counts each request once.
//!
//! Latency percentiles cannot be added: a department's p50/p99 in the sum is
//! the highest of the nodes' (an upper bound, said in the README).

use std::collections::BTreeMap;

use crate::pb::{
    DayStatusCount, DepartmentFigures, MatterModeCount, MatterStatusCount, ModeOutcomeCount,
    ProofsNotBrought, Statistics,
};

/// The sum of `all` (one per node). The policy version is the nodes' common
/// one, or `mixed: A, B` when they differ (a policy change rolling out).
pub fn sum(all: &[Statistics]) -> Statistics {
    let mut total = Statistics::default();
    let mut by_matter: BTreeMap<(String, i32), u64> = BTreeMap::new();
    let mut proofs: BTreeMap<(i32, i32), u64> = BTreeMap::new();
    let mut not_brought = ProofsNotBrought::default();
    let mut departments: BTreeMap<String, DepartmentFigures> = BTreeMap::new();
    let mut not_brought_by_matter: BTreeMap<(String, i32), u64> = BTreeMap::new();
    let mut by_day: BTreeMap<(String, i32), u64> = BTreeMap::new();
    let mut versions: Vec<String> = Vec::new();
    for s in all {
        total.entries += s.entries;
        total.applications += s.applications;
        total.pending_verifications += s.pending_verifications;
        total.overdue_verifications += s.overdue_verifications;
        total.spot_checks_sampled += s.spot_checks_sampled;
        total.spot_checks_done += s.spot_checks_done;
        total.spot_checks_false += s.spot_checks_false;
        total.dishonesty_records_active += s.dishonesty_records_active;
        for m in &s.applications_by_matter {
            *by_matter
                .entry((m.matter_id.clone(), m.status))
                .or_default() += m.count;
        }
        for p in &s.proofs {
            *proofs.entry((p.mode, p.outcome)).or_default() += p.count;
        }
        let nb = s.not_brought.unwrap_or_default();
        not_brought.abolished += nb.abolished;
        not_brought.commitment += nb.commitment;
        not_brought.data_query += nb.data_query;
        not_brought.department_verification += nb.department_verification;
        not_brought.total += nb.total;
        for d in &s.departments {
            let t = departments
                .entry(d.department_id.clone())
                .or_insert_with(|| DepartmentFigures {
                    department_id: d.department_id.clone(),
                    ..Default::default()
                });
            t.answers += d.answers;
            t.failures += d.failures;
            t.answers_last_hour += d.answers_last_hour;
            t.pending_verifications += d.pending_verifications;
            t.overdue_verifications += d.overdue_verifications;
            t.p50_latency_ms = t.p50_latency_ms.max(d.p50_latency_ms);
            t.p99_latency_ms = t.p99_latency_ms.max(d.p99_latency_ms);
        }
        for m in &s.not_brought_by_matter {
            *not_brought_by_matter
                .entry((m.matter_id.clone(), m.mode))
                .or_default() += m.count;
        }
        for d in &s.applications_by_day {
            *by_day.entry((d.date.clone(), d.status)).or_default() += d.count;
        }
        if !s.policy_version.is_empty() && !versions.contains(&s.policy_version) {
            versions.push(s.policy_version.clone());
        }
    }
    total.applications_by_matter = by_matter
        .into_iter()
        .map(|((matter_id, status), count)| MatterStatusCount {
            matter_id,
            status,
            count,
        })
        .collect();
    total.proofs = proofs
        .into_iter()
        .map(|((mode, outcome), count)| ModeOutcomeCount {
            mode,
            outcome,
            count,
        })
        .collect();
    total.not_brought = Some(not_brought);
    total.departments = departments.into_values().collect();
    total.not_brought_by_matter = not_brought_by_matter
        .into_iter()
        .map(|((matter_id, mode), count)| MatterModeCount {
            matter_id,
            mode,
            count,
        })
        .collect();
    total.applications_by_day = by_day
        .into_iter()
        .map(|((date, status), count)| DayStatusCount {
            date,
            status,
            count,
        })
        .collect();
    total.policy_version = match versions.as_slice() {
        [one] => one.clone(),
        _ if versions.is_empty() => String::new(),
        _ => format!("mixed: {}", versions.join(", ")),
    };
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(applications: u64, p99: u32, version: &str) -> Statistics {
        Statistics {
            entries: applications * 3,
            applications,
            applications_by_matter: vec![MatterStatusCount {
                matter_id: "elderly-subsidy".into(),
                status: 1,
                count: applications,
            }],
            proofs: vec![ModeOutcomeCount {
                mode: 2,
                outcome: 1,
                count: applications,
            }],
            not_brought: Some(ProofsNotBrought {
                data_query: applications,
                total: applications,
                ..Default::default()
            }),
            departments: vec![DepartmentFigures {
                department_id: "civil-affairs".into(),
                answers: applications,
                p50_latency_ms: p99 / 2,
                p99_latency_ms: p99,
                ..Default::default()
            }],
            spot_checks_sampled: 1,
            policy_version: version.into(),
            applications_by_day: vec![DayStatusCount {
                date: "2026-11-28".into(),
                status: 1,
                count: applications,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn counts_add_by_key_and_percentiles_take_the_highest() {
        let total = sum(&[node(2, 10, "v1"), node(5, 40, "v1"), node(0, 0, "v1")]);
        assert_eq!((total.applications, total.entries), (7, 21));
        assert_eq!(total.applications_by_matter.len(), 1);
        assert_eq!(total.applications_by_matter[0].count, 7);
        assert_eq!(total.proofs[0].count, 7);
        assert_eq!(total.not_brought.unwrap().total, 7);
        assert_eq!(total.departments.len(), 1);
        assert_eq!(total.departments[0].answers, 7);
        assert_eq!(total.departments[0].p99_latency_ms, 40);
        assert_eq!(total.spot_checks_sampled, 3);
        assert_eq!(total.applications_by_day[0].count, 7);
        assert_eq!(total.policy_version, "v1");
    }

    #[test]
    fn differing_policy_versions_are_named() {
        assert_eq!(
            sum(&[node(1, 1, "v1"), node(1, 1, "v2")]).policy_version,
            "mixed: v1, v2"
        );
        assert_eq!(
            sum(&[]),
            Statistics {
                not_brought: Some(ProofsNotBrought::default()),
                ..Default::default()
            }
        );
    }
}
