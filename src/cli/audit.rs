//! Offline work on a node's log (its server stopped) or an exported file:
//! `audit export / verify / replay / rebuild / rotate-key` and `stats`.

use std::path::Path;
use std::time::Instant;

use super::{CliError, LogSource, Report};
use crate::audit::{self, report, Records};
use crate::clock::system_now_unix_ms;
use crate::operations::stats;
use crate::security;

/// `proofgate audit export`: every entry and checkpoint of `data_dir`'s log,
/// with the verifier key, into the file `out`.
pub fn export(data_dir: &Path, out: &Path) -> Result<Report, CliError> {
    let (entries, checkpoints) =
        audit::data_dir_records(data_dir).and_then(|records| audit::export(records, out))?;
    Ok(Report::line(format_args!(
        "exported {entries} entries and {checkpoints} checkpoints to {}",
        out.display()
    )))
}

/// What `audit verify --witness … --quorum K` requires.
pub struct Quorum {
    /// Witness vkeys (text, or files holding them).
    pub witnesses: Vec<String>,
    pub quorum: usize,
}

/// `proofgate audit verify`: recomputes every leaf and root and checks every
/// checkpoint signature, against `vkey` (C2SP vkey text, or a file holding
/// it) or else the key the log carries; with `quorum`, also that the newest
/// checkpoint carries valid cosignatures by at least K of the witnesses. A
/// log that does not verify, or cannot be read to its end, is bad data
/// (exit 65).
pub fn verify(
    source: &LogSource,
    vkey: Option<String>,
    quorum: Option<Quorum>,
    json: bool,
) -> Result<Report, CliError> {
    let started = Instant::now();
    let vkey = vkey.map(|v| std::fs::read_to_string(&v).unwrap_or(v).trim().to_owned());
    let witnesses = match &quorum {
        None => Vec::new(),
        Some(q) => q
            .witnesses
            .iter()
            .map(|given| {
                let vkey = crate::server::cosign::read_vkey(given);
                audit::NoteVerifier::from_cosigner_vkey(&vkey).map_err(|e| CliError::WitnessKey {
                    vkey: given.clone(),
                    problem: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut r = open_records(source)?
        .and_then(|records| audit::verify_records(records, vkey.as_deref(), progress("verified")))
        .map_err(CliError::Check)?;
    if let (Some(q), true) = (&quorum, r.ok()) {
        let (valid, problems) = audit::count_cosignatures(&r.newest_note, &witnesses);
        if valid < q.quorum {
            let mut reason = format!(
                "the newest checkpoint (size {}) carries valid cosignatures by {valid} of the {} given witness(es); {} required (--quorum)",
                r.tree_size,
                witnesses.len(),
                q.quorum
            );
            for problem in problems {
                reason.push_str("; ");
                reason.push_str(&problem);
            }
            r.problem = Some(audit::Problem::Log { reason });
        } else {
            r.cosignatures = Some((valid, q.quorum));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let text = if json {
        format!("{}\n", report::verify_json(&r, seconds))
    } else {
        report::verify_table(&r, seconds)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.ok(),
    })
}

/// `proofgate audit replay`: re-derives every decision from the logged policy
/// and signed answers. Any discrepancy, or a log that cannot be read to its
/// end, is bad data (exit 65).
pub fn replay(source: &LogSource, json: bool) -> Result<Report, CliError> {
    let started = Instant::now();
    let r = open_records(source)?
        .and_then(|records| audit::replay_records(records, progress("replayed")))
        .map_err(CliError::Check)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = if json {
        format!("{}\n", report::replay_json(&r, seconds))
    } else {
        report::replay_table(&r, seconds)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.discrepancies.is_empty(),
    })
}

/// `proofgate audit rebuild`: recomputes every projection from the entries of
/// a stopped node's `data_dir`; any difference is bad data (exit 65).
pub fn rebuild(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let started = Instant::now();
    let r = audit::rebuild_data_dir(data_dir)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = if json {
        format!("{}\n", report::rebuild_json(&r, seconds))
    } else {
        report::rebuild_table(&r, seconds)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: !r.consistent(),
    })
}

/// `proofgate audit usage`: keys and bytes per key kind of a stopped node's
/// store, against the bytes its files take; per application where there are
/// applications.
pub fn usage(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let path = data_dir.join("log");
    let usage = audit::AuditStore::open(&path)?.usage(&path)?;
    let text = if json {
        format!("{}\n", report::usage_json(&usage))
    } else {
        report::usage_table(&usage)
    };
    Ok(Report {
        text,
        warnings: Vec::new(),
        found_problem: false,
    })
}

/// `proofgate audit rotate-key`: replaces the checkpoint key of `data_dir`'s
/// log; the change is logged and signed by the old key.
pub async fn rotate_key(data_dir: &Path, node_id: &str) -> Result<Report, CliError> {
    let vkey = security::rotate_log_key(data_dir, node_id).await?;
    Ok(Report::line(format_args!("new checkpoint key: {vkey}")))
}

/// `proofgate stats`: the reform's figures from `data_dir`'s log, as a table
/// or as JSON, as of the system clock (China Standard Time for dates).
pub fn stats(data_dir: &Path, json: bool) -> Result<Report, CliError> {
    let figures = audit::data_dir_records(data_dir)
        .and_then(|records| stats::statistics(records, system_now_unix_ms()))?;
    let text = if json {
        format!("{}\n", stats::to_json(&figures))
    } else {
        stats::to_table(&figures)
    };
    Ok(Report {
        text,
        ..Report::default()
    })
}

/// The log a `verify` or `replay` reads. The outer error: no source given;
/// the inner: the source cannot be opened (bad data to an auditor).
fn open_records(source: &LogSource) -> Result<Result<Records, audit::RecordError>, CliError> {
    match (&source.data_dir, &source.file) {
        (Some(dir), _) => Ok(audit::data_dir_records(dir)),
        (None, Some(file)) => Ok(audit::file_records(file)),
        (None, None) => Err(CliError::NoLogSource),
    }
}

/// Progress on standard error, with the rate so far.
fn progress(what: &'static str) -> impl FnMut(u64) {
    let started = Instant::now();
    move |n| {
        eprintln!(
            "{what}: {n} entries ({:.0}/s)",
            n as f64 / started.elapsed().as_secs_f64().max(1e-9)
        )
    }
}
