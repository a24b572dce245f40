//! The compiled, in-memory form of a policy set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::condition::Condition;
use crate::pb::ProofMode;

/// How a proof is handled (the policy words of the catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Abolished,
    Commitment,
    DataQuery,
    DepartmentVerification,
}

impl Mode {
    pub fn as_pb(self) -> ProofMode {
        match self {
            Mode::Abolished => ProofMode::Abolished,
            Mode::Commitment => ProofMode::Commitment,
            Mode::DataQuery => ProofMode::DataQuery,
            Mode::DepartmentVerification => ProofMode::DepartmentVerification,
        }
    }

    pub fn policy_word(self) -> &'static str {
        match self {
            Mode::Abolished => "abolished",
            Mode::Commitment => "commitment",
            Mode::DataQuery => "data_query",
            Mode::DepartmentVerification => "department_verification",
        }
    }

    /// Whether this mode asks a department, and so needs the applicant's consent.
    pub fn asks_department(self) -> bool {
        matches!(self, Mode::DataQuery | Mode::DepartmentVerification)
    }
}

/// The commitment text an applicant signs instead of bringing a proof.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitmentTerms {
    pub text: String,
    pub version: String,
    /// Share of commitments sampled for a later spot check, 0.0–1.0.
    pub spot_check_rate: f64,
    /// Refused (and the fallback used) while the applicant has a live
    /// dishonesty record.
    pub refuse_if_dishonest: bool,
    /// How long a false commitment bars the applicant, in days.
    pub dishonesty_days: u32,
}

/// One proof item of the catalog.
#[derive(Debug)]
pub struct Proof {
    pub id: String,
    pub name: String,
    pub mode: Mode,
    pub fallback: Option<Mode>,
    pub department: Option<String>,
    pub query: Option<String>,
    /// The minimum fields a data query asks for; the only ones kept.
    pub fields: Vec<String>,
    pub condition: Option<Condition>,
    /// What a department verification asks the department to confirm.
    pub claim: Option<String>,
    pub legal_basis: String,
    pub commitment: Option<CommitmentTerms>,
    /// Deadline of one department call.
    pub call_timeout: Duration,
    /// How long a department may take to finish a pending verification.
    pub verification_deadline_working_days: Option<u32>,
}

/// A proof a matter needs, always or when a condition on the applicant holds.
#[derive(Debug)]
pub struct RequiredProof {
    pub proof: Arc<Proof>,
    pub when: Option<Condition>,
}

#[derive(Debug)]
pub struct Matter {
    pub id: String,
    pub name: String,
    pub proofs: Vec<RequiredProof>,
}

/// A loaded, validated policy set. Immutable: a reload builds a new one.
#[derive(Debug)]
pub struct PolicySet {
    /// `sha256:` and the hex digest of [`PolicySet::canonical`].
    pub version: String,
    /// The set in canonical TOML (sorted, comments dropped): what is
    /// digested, and what the audit log keeps so replay needs nothing else.
    pub canonical: String,
    pub proofs: BTreeMap<String, Arc<Proof>>,
    pub matters: BTreeMap<String, Matter>,
}

impl PolicySet {
    pub fn matter(&self, id: &str) -> Option<&Matter> {
        self.matters.get(id)
    }

    pub fn proof(&self, id: &str) -> Option<&Arc<Proof>> {
        self.proofs.get(id)
    }
}

impl PolicySet {
    /// Every (proof, department, query or verification) of the set that none
    /// of `sources` serves, as sentences for a person; empty when all are served.
    pub fn unserved(&self, sources: &[crate::pb::DataSource]) -> Vec<String> {
        let mut problems = Vec::new();
        for proof in self.proofs.values() {
            let Some(department) = proof.department.as_deref() else {
                continue;
            };
            let source = sources.iter().find(|s| s.department_id == department);
            let modes = std::iter::once(proof.mode).chain(proof.fallback);
            for mode in modes {
                let (kind, name) = match mode {
                    Mode::DataQuery => ("query", proof.query.clone().unwrap_or_default()),
                    Mode::DepartmentVerification => ("verification", proof.id.clone()),
                    Mode::Abolished | Mode::Commitment => continue,
                };
                let served = source.is_some_and(|s| match mode {
                    Mode::DataQuery => s.queries.contains(&name),
                    _ => s.verifications.contains(&name),
                });
                if !served {
                    problems.push(match source {
                        None => format!(
                            "proof `{}`: no data source is registered for department `{department}`",
                            proof.id
                        ),
                        Some(_) => format!(
                            "proof `{}`: department `{department}` does not serve {kind} `{name}`",
                            proof.id
                        ),
                    });
                }
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }
}
