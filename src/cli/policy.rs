//! Policy sets: `policy check`, `policy generate-jinhua`.

use std::path::Path;
use std::time::Instant;

use super::{CliError, Report};
use crate::audit::AuditStore;
use crate::departments::mock::builtin_sources;
use crate::policy::{self, synthetic};
use crate::server::exit;

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

/// The exit code of a failed `policy keygen` / `policy sign`.
pub fn signing_exit_code(e: &crate::security::policy_signing::SigningToolError) -> u8 {
    use crate::security::policy_signing::SigningToolError as E;
    match e {
        E::Policy(_) => exit::DATA,
        E::Key(crate::security::KeyError::Io { .. })
        | E::Key(crate::security::KeyError::Random)
        | E::Write { .. } => exit::FAILURE,
        E::Key(_) | E::Name { .. } | E::Mismatch { .. } | E::Vkey { .. } => exit::CONFIG,
    }
}

/// `proofgate policy keygen --out DIR [--name NAME]`: a policy-signing key pair.
pub fn keygen(out: &Path, name: &str) -> Result<Report, CliError> {
    let made = crate::security::policy_signing::keygen(out, name)?;
    Ok(Report {
        text: format!(
            "policy signing key written to {}\nverifier key written to {} (give it to `serve --policy-key`):\n{}\n",
            made.key_file.display(),
            made.vkey_file.display(),
            made.vkey
        ),
        ..Report::default()
    })
}

/// `proofgate policy sign DIR --key KEYFILE [--name NAME]`: writes DIR/policy.sig.
pub fn sign(dir: &Path, key: &Path, name: Option<&str>) -> Result<Report, CliError> {
    let signed = crate::security::policy_signing::sign_dir(dir, key, name)?;
    Ok(Report::line(format!(
        "signed {} version {} as {}: {}",
        dir.display(),
        signed.version,
        signed.signer,
        signed.path.display()
    )))
}
