//! Policy sets: `policy check`, `policy generate-jinhua`.

use std::path::Path;
use std::time::Instant;

use super::{CliError, Report};
use crate::audit::AuditStore;
use crate::departments::mock::builtin_sources;
use crate::policy::{self, synthetic};

/// `proofgate policy check DIR`: validates the policy set in `dir` and names
/// its version digest. Departments, queries and verifications nobody serves
/// are warnings: compared with the data sources registered in `data_dir`'s
/// store (a stopped node), or else with the built-in mock departments.
pub fn check(dir: &Path, data_dir: Option<&Path>) -> Result<Report, CliError> {
    let started = Instant::now();
    let set = policy::load_dir(dir).map_err(CliError::Policy)?;
    let text = format!(
        "{}: {} proofs, {} matters, version {} (checked in {:.0} ms)\n",
        dir.display(),
        set.proofs.len(),
        set.matters.len(),
        set.version,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let (sources, against) = match data_dir {
        Some(d) => (
            AuditStore::open(&d.join("log")).and_then(|s| s.data_sources())?,
            format!("data sources registered in {}", d.display()),
        ),
        None => (
            builtin_sources(),
            "the built-in mock departments".to_owned(),
        ),
    };
    let unserved = set.unserved(&sources);
    let mut warnings: Vec<String> = unserved.iter().map(|p| format!("warning: {p}")).collect();
    if !unserved.is_empty() {
        warnings.push(format!(
            "{} item(s) not served by {against}",
            unserved.len()
        ));
    }
    Ok(Report {
        text,
        warnings,
        found_problem: false,
    })
}

/// `proofgate policy generate-jinhua OUT_DIR`: a synthetic catalogue of
/// Jinhua's scale (`proofs` proofs, `matters` matters) for load tests.
pub fn generate_jinhua(out_dir: &Path, proofs: usize, matters: usize) -> Result<Report, CliError> {
    let summary =
        synthetic::write_jinhua_catalogue(out_dir, proofs, matters).map_err(|source| {
            CliError::Generate {
                dir: out_dir.to_owned(),
                source,
            }
        })?;
    Ok(Report::line(summary))
}
