//! The commands of the `proofgate` binary, as library functions: one per
//! subcommand, each returning a [`Report`] or a [`CliError`]. `main` parses
//! the [`Cli`], loads the configuration, sets up tracing, calls one of these
//! and hands the result to [`finish`], which prints it and decides the exit
//! code (see README "Exit codes" and [`crate::server::exit`]).
//!
//! The top layer: it may use every other module; nothing but `main` uses it.
//!
//! | file        | commands                                                        |
//! |-------------|-----------------------------------------------------------------|
//! | `args.rs`   | the clap derive types                                           |
//! | `node.rs`   | serve, config check, dev-certs, keygen, mock-department, witness |
//! | `policy.rs` | policy check, policy generate-jinhua                            |
//! | `audit.rs`  | audit export / verify / replay / rebuild / restore / rotate-key, stats |
//! | `bench.rs`  | bench                                                           |
//! | `cluster.rs`| cluster status                                                  |
//! | `cluster_audit.rs` | audit verify --cluster, stats --cluster                  |

// The doc comments of the clap types are the command's help text, printed
// as is: `<name>.<role>.proofgate` there is a placeholder, not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
mod args;
pub mod audit;
pub mod bench;
pub mod cluster;
pub mod cluster_audit;
pub mod node;
pub mod policy;

pub use args::{
    AuditCommand, BenchArgs, BenchBaseline, Cli, ClusterAuditArgs, ClusterCommand, Command,
    ConfigCommand, DevCertsArgs, EtcdArgs, LogSource, PolicyCommand, RestoreArgs, ServeArgs,
    WitnessArgs,
};

use std::path::PathBuf;

use crate::audit::{RecordError, StoreError};
use crate::config::ConfigError;
use crate::departments::mock::{FixtureError, MockError};
use crate::policy::PolicyErrors;
use crate::security::{CertError, KeyError, LogKeyError};
use crate::server::{exit, ServeError};

/// What a command that ran to its end produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Printed to standard output as is (lines end with `\n`).
    pub text: String,
    /// Printed to standard error after the text, one line each.
    pub warnings: Vec<String>,
    /// The command ran, but what it checked is bad (exit 65): a log that
    /// does not verify or replay, projections that differ from the entries.
    pub found_problem: bool,
}

impl Report {
    /// A report of one line (or of none, for `""`).
    pub fn line(text: impl std::fmt::Display) -> Self {
        Self {
            text: format!("{text}\n"),
            ..Self::default()
        }
    }
}

/// Why a command failed. Each variant keeps its cause; [`exit_code`] says
/// which exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A node configuration (file, environment or flags) that is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// `dev-certs`: the CA or a certificate cannot be made.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// `mock-department`: its own certificate cannot be loaded.
    #[error("{0} (run `proofgate dev-certs` or start the gateway once)")]
    DepartmentCerts(#[source] CertError),
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    #[error(transparent)]
    Mock(#[from] MockError),
    /// A policy set that was not accepted.
    #[error("{0}\n{n} problem(s); the policy set was not accepted", n = .0.0.len())]
    Policy(#[source] PolicyErrors),
    #[error("cannot write {}: {source}", dir.display())]
    Generate {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A node's store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A log (data folder or export file) cannot be read.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// `audit verify` / `audit replay` could not read the log to its end:
    /// for an auditor that is bad data, whatever the cause.
    #[error(transparent)]
    Check(RecordError),
    /// Neither `--data-dir` nor `--file` (clap normally refuses this first).
    #[error("give --data-dir or --file")]
    NoLogSource,
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    LogKey(#[from] LogKeyError),
    #[error("--fanout takes NAME=URI items, got `{0}`")]
    Fanout(String),
    /// The load generator failed (it reports a message only).
    #[error("{0}")]
    Bench(String),
    /// `policy keygen` / `policy sign`.
    #[error(transparent)]
    PolicySigning(#[from] crate::security::policy_signing::SigningToolError),
    /// `cluster status`: etcd options, or etcd itself.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// `witness`: it could not start.
    #[error(transparent)]
    Witness(#[from] crate::server::witness::WitnessStartError),
    /// `audit verify --witness`: a key that is not a witness's vkey.
    #[error("--witness {vkey}: {problem}")]
    WitnessKey { vkey: String, problem: String },
    /// `audit restore`: options that cannot work (a non-empty data folder,
    /// a bad key, witnesses asked for but not checkable here).
    #[error("{0}")]
    RestoreConfig(String),
    /// `audit restore`: the mirror could not be read, or what it served
    /// does not verify.
    #[error("restore: {0}")]
    Pull(#[from] crate::server::mirror::PullError),
    /// `audit restore`: the restored folder does not check out.
    #[error("restore: {0}")]
    Restored(String),
    /// `--cluster`: a node or log could not be reached; what was reached is
    /// in the report, printed before the error (exit 69).
    #[error("{what}")]
    Unreachable { report: Box<Report>, what: String },
}

/// The process exit code of a command's result: 0, or what failed (64 bad
/// configuration or arguments, 65 bad data, 69 unavailable, 1 else).
pub fn exit_code(result: &Result<Report, CliError>) -> u8 {
    match result {
        Ok(report) if report.found_problem => exit::DATA,
        Ok(_) => 0,
        Err(e) => match e {
            CliError::Config(_)
            | CliError::Certs(_)
            | CliError::DepartmentCerts(_)
            | CliError::Fixture(_)
            | CliError::NoLogSource
            | CliError::WitnessKey { .. }
            | CliError::RestoreConfig(_)
            | CliError::Fanout(_) => exit::CONFIG,
            CliError::Witness(e) => e.exit_code(),
            CliError::Pull(e) => audit::pull_exit_code(e),
            CliError::Restored(_) => exit::DATA,
            CliError::Policy(_) | CliError::Check(_) => exit::DATA,
            CliError::Serve(e) => e.exit_code(),
            CliError::Store(e) => exit::of_store(e),
            CliError::Records(e) => exit::of_records(e),
            CliError::LogKey(e) => exit::of_log_key(e),
            CliError::PolicySigning(e) => policy::signing_exit_code(e),
            CliError::Cluster(e) => exit::of_cluster(e),
            CliError::Unreachable { .. } => exit::UNAVAILABLE,
            CliError::Mock(_)
            | CliError::Generate { .. }
            | CliError::Keys(_)
            | CliError::Bench(_) => exit::FAILURE,
        },
    }
}

/// Prints a command's result (the report to standard output, its warnings
/// or the error to standard error) and returns its exit code.
pub fn finish(result: Result<Report, CliError>) -> u8 {
    match &result {
        Ok(report) => {
            print!("{}", report.text);
            for warning in &report.warnings {
                eprintln!("{warning}");
            }
        }
        // A refused policy set lists its problems as `file:line: problem`,
        // without the program's name in front.
        Err(e @ CliError::Policy(_)) => eprintln!("{e}"),
        Err(e @ CliError::Unreachable { report, .. }) => {
            print!("{}", report.text);
            for warning in &report.warnings {
                eprintln!("{warning}");
            }
            eprintln!("proofgate: {e}");
        }
        Err(e) => eprintln!("proofgate: {e}"),
    }
    exit_code(&result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_found_a_problem_exits_65_and_a_clean_one_0() {
        let clean = Report::line("fine");
        assert_eq!(exit_code(&Ok(clean.clone())), 0);
        let bad = Report {
            found_problem: true,
            ..clean
        };
        assert_eq!(exit_code(&Ok(bad)), exit::DATA);
    }

    #[test]
    fn bad_arguments_exit_64() {
        assert_eq!(exit_code(&Err(CliError::Fanout("x".into()))), exit::CONFIG);
        assert_eq!(exit_code(&Err(CliError::NoLogSource)), exit::CONFIG);
    }

    #[test]
    fn a_refused_policy_set_counts_its_problems() {
        let e = CliError::Policy(PolicyErrors(Vec::new()));
        assert!(e
            .to_string()
            .ends_with("0 problem(s); the policy set was not accepted"));
        assert_eq!(exit_code(&Err(e)), exit::DATA);
    }
}
