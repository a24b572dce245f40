//! Fixture files of the mock departments: who each department knows, what its
//! records say, and how its verifications go (including ones that finish later).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::pb::{field_value, FieldValue, VerificationOutcome};

/// The built-in departments, embedded so `proofgate serve` works from any folder.
pub const BUILTIN_DEPARTMENTS: &[(&str, &str)] = &[
    (
        "public-security",
        include_str!("fixtures/public-security.toml"),
    ),
    ("civil-affairs", include_str!("fixtures/civil-affairs.toml")),
    (
        "human-resources",
        include_str!("fixtures/human-resources.toml"),
    ),
    (
        "provident-fund",
        include_str!("fixtures/provident-fund.toml"),
    ),
    (
        "market-regulation",
        include_str!("fixtures/market-regulation.toml"),
    ),
    (
        "natural-resources",
        include_str!("fixtures/natural-resources.toml"),
    ),
    ("health", include_str!("fixtures/health.toml")),
    ("education", include_str!("fixtures/education.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("unknown department `{0}`; built in: {1}")]
    Unknown(String, String),
    #[error("fixture of {name}: {message}")]
    Parse { name: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    department: String,
    name: String,
    #[serde(default = "default_capacity")]
    capacity_per_second: u32,
    #[serde(default)]
    queries: Vec<String>,
    #[serde(default)]
    verifications: Vec<String>,
    #[serde(default)]
    record: Vec<RawRecord>,
    #[serde(default)]
    verification: Vec<RawVerification>,
}

fn default_capacity() -> u32 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    query: String,
    subject: String,
    fields: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawOutcome {
    Verified,
    NotVerified,
    Pending,
}

impl RawOutcome {
    fn to_pb(self) -> VerificationOutcome {
        match self {
            RawOutcome::Verified => VerificationOutcome::Verified,
            RawOutcome::NotVerified => VerificationOutcome::NotVerified,
            RawOutcome::Pending => VerificationOutcome::Pending,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerification {
    proof: String,
    subject: String,
    outcome: RawOutcome,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    complete_after_ms: u64,
    final_outcome: Option<RawOutcome>,
}

#[derive(Debug, Clone)]
pub struct VerificationFixture {
    pub outcome: VerificationOutcome,
    pub reason: String,
    pub complete_after_ms: u64,
    /// What a pending verification finally says.
    pub final_outcome: VerificationOutcome,
}

/// A department's data, indexed for lookups.
#[derive(Debug)]
pub struct Fixture {
    pub department: String,
    pub name: String,
    pub capacity_per_second: u32,
    pub queries: Vec<String>,
    pub verifications: Vec<String>,
    records: HashMap<(String, String), Vec<FieldValue>>,
    verdicts: HashMap<(String, String), VerificationFixture>,
}

impl Fixture {
    pub fn parse(name: &str, text: &str) -> Result<Self, FixtureError> {
        let raw: RawFixture = toml::from_str(text).map_err(|e| FixtureError::Parse {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        let mut records = HashMap::new();
        for r in raw.record {
            let mut fields = Vec::with_capacity(r.fields.len());
            for (field, value) in r.fields {
                let value = match value {
                    toml::Value::String(s) => field_value::Value::Text(s),
                    toml::Value::Integer(i) => field_value::Value::Integer(i),
                    toml::Value::Boolean(b) => field_value::Value::Boolean(b),
                    other => {
                        return Err(FixtureError::Parse {
                            name: name.to_owned(),
                            message: format!("field `{field}`: unsupported value {other}"),
                        })
                    }
                };
                fields.push(FieldValue {
                    name: field,
                    value: Some(value),
                });
            }
            records.insert((r.query, r.subject.to_ascii_uppercase()), fields);
        }
        let verdicts = raw
            .verification
            .into_iter()
            .map(|v| {
                let fixture = VerificationFixture {
                    outcome: v.outcome.to_pb(),
                    reason: v.reason,
                    complete_after_ms: v.complete_after_ms,
                    final_outcome: v.final_outcome.unwrap_or(RawOutcome::Verified).to_pb(),
                };
                ((v.proof, v.subject.to_ascii_uppercase()), fixture)
            })
            .collect();
        Ok(Self {
            department: raw.department,
            name: raw.name,
            capacity_per_second: raw.capacity_per_second,
            queries: raw.queries,
            verifications: raw.verifications,
            records,
            verdicts,
        })
    }

    pub fn record(&self, query: &str, subject: &str) -> Option<&Vec<FieldValue>> {
        self.records
            .get(&(query.to_owned(), subject.to_ascii_uppercase()))
    }

    pub fn verification(&self, proof: &str, subject: &str) -> Option<&VerificationFixture> {
        self.verdicts
            .get(&(proof.to_owned(), subject.to_ascii_uppercase()))
    }
}

impl Fixture {
    /// The fixture with another capacity: what the mock announces when it
    /// registers, from which its quota for the gateway follows (benchmarks
    /// lift it so the departments are not what is measured).
    pub fn with_capacity(mut self, per_second: u32) -> Self {
        self.capacity_per_second = per_second.max(1);
        self
    }
}

/// A built-in department's fixture, its capacity lifted to `per_second` if
/// given (`serve --mock-capacity-per-second`, `mock-department
/// --capacity-per-second`).
pub fn builtin_fixture_with_capacity(
    name: &str,
    per_second: Option<u32>,
) -> Result<Fixture, FixtureError> {
    let fixture = builtin_fixture(name)?;
    Ok(match per_second {
        Some(n) => fixture.with_capacity(n),
        None => fixture,
    })
}

/// A built-in department's fixture by name.
pub fn builtin_fixture(name: &str) -> Result<Fixture, FixtureError> {
    let (_, text) = BUILTIN_DEPARTMENTS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| {
            let known: Vec<&str> = BUILTIN_DEPARTMENTS.iter().map(|(n, _)| *n).collect();
            FixtureError::Unknown(name.to_owned(), known.join(", "))
        })?;
    Fixture::parse(name, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_fixture_parses_and_names_itself() {
        for (name, _) in BUILTIN_DEPARTMENTS {
            let f = builtin_fixture(name).unwrap();
            assert_eq!(&f.department, name);
            assert!(
                !f.queries.is_empty() || !f.verifications.is_empty(),
                "{name}"
            );
        }
        assert!(matches!(
            builtin_fixture("nope"),
            Err(FixtureError::Unknown(..))
        ));
    }
}
