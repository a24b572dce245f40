//! Human tables and JSON for the offline audit commands.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::replay::ReplayReport;
use super::verify::{Problem, VerifyReport};

fn row(out: &mut String, key: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("  {key:<22} {value}\n"));
}

pub fn verify_table(report: &VerifyReport, seconds: f64) -> String {
    let mut out = String::from("audit verify\n");
    row(
        &mut out,
        "result",
        if report.ok() { "OK" } else { "FAILED" },
    );
    row(&mut out, "origin", &report.origin);
    row(&mut out, "entries", report.entries);
    row(&mut out, "checkpoints checked", report.checkpoints);
    row(
        &mut out,
        "signatures checked",
        if report.signatures_checked == report.checkpoints {
            format!("{} (all)", report.signatures_checked)
        } else {
            format!(
                "{} (the newest, the last of each key, one per 10,000 entries; --sample-signatures)",
                report.signatures_checked
            )
        },
    );
    row(&mut out, "tree size", report.tree_size);
    row(&mut out, "root (base64)", B64.encode(report.root));
    row(&mut out, "keys in the chain", report.keys.len());
    if let Some((valid, quorum)) = report.cosignatures {
        row(
            &mut out,
            "witnesses",
            format!("{valid} valid cosignature(s) on the newest checkpoint (quorum {quorum})"),
        );
    }
    row(
        &mut out,
        "speed",
        format!(
            "{:.0} entries/s ({seconds:.2} s)",
            report.entries as f64 / seconds.max(1e-9)
        ),
    );
    if let Some(problem) = &report.problem {
        row(&mut out, "first problem", problem);
    }
    out
}

pub fn verify_json(report: &VerifyReport, seconds: f64) -> Value {
    let problem = report.problem.as_ref().map(|p| match p {
        Problem::Entry { index, reason } => {
            json!({"kind": "entry", "index": index, "reason": reason})
        }
        Problem::Checkpoint { size, reason } => {
            json!({"kind": "checkpoint", "size": size, "reason": reason})
        }
        Problem::Log { reason } => json!({"kind": "log", "reason": reason}),
    });
    json!({
        "ok": report.ok(),
        "origin": report.origin,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "signatures_checked": report.signatures_checked,
        "tree_size": report.tree_size,
        "root": B64.encode(report.root),
        "keys": report.keys,
        "cosignatures": report.cosignatures.map(|(valid, _)| valid),
        "quorum": report.cosignatures.map(|(_, quorum)| quorum),
        "seconds": seconds,
        "problem": problem,
    })
}

pub fn replay_table(report: &ReplayReport, seconds: f64) -> String {
    let mut out = String::from("audit replay\n");
    row(
        &mut out,
        "result",
        if report.discrepancies.is_empty() {
            "OK: every decision follows from policy and answers"
        } else {
            "DIFFERENCES FOUND"
        },
    );
    row(&mut out, "entries", report.entries);
    row(&mut out, "decisions replayed", report.decisions);
    if report.superseded > 0 {
        row(
            &mut out,
            "superseded (orphans)",
            format!(
                "{} (requests decided: {})",
                report.superseded,
                report.decisions.saturating_sub(report.superseded)
            ),
        );
    }
    row(&mut out, "completions replayed", report.completions);
    row(&mut out, "policy versions", report.policy_versions);
    row(&mut out, "signatures checked", report.answers_checked);
    row(&mut out, "discrepancies", report.discrepancies.len());
    row(&mut out, "time", format!("{seconds:.2} s"));
    for p in &report.policy_approvals {
        let by = if p.signer.is_empty() {
            "unsigned"
        } else {
            p.signer.as_str()
        };
        out.push_str(&format!(
            "  entry {:>8}  policy {}  approved by {by}\n",
            p.index, p.version
        ));
    }
    for d in report.discrepancies.iter().take(50) {
        out.push_str(&format!(
            "  entry {:>8}  {:<40}  {}\n",
            d.index, d.application_id, d.what
        ));
    }
    if report.discrepancies.len() > 50 {
        out.push_str(&format!(
            "  … and {} more (use --json for all)\n",
            report.discrepancies.len() - 50
        ));
    }
    out
}

pub fn replay_json(report: &ReplayReport, seconds: f64) -> Value {
    json!({
        "ok": report.discrepancies.is_empty(),
        "entries": report.entries,
        "decisions": report.decisions,
        "superseded": report.superseded,
        "requests_decided": report.decisions.saturating_sub(report.superseded),
        "completions": report.completions,
        "policy_versions": report.policy_versions,
        "policy_approvals": report.policy_approvals.iter().map(|p| json!({
            "index": p.index, "version": p.version,
            "signer": (!p.signer.is_empty()).then_some(&p.signer),
        })).collect::<Vec<_>>(),
        "signatures_checked": report.answers_checked,
        "seconds": seconds,
        "discrepancies": report.discrepancies.iter().map(|d| json!({
            "index": d.index, "application_id": d.application_id, "what": d.what,
        })).collect::<Vec<_>>(),
    })
}

/// `audit rebuild` as a table: per key kind, what the entries give and how
/// the store differs.
pub fn rebuild_table(report: &super::RebuildReport, seconds: f64) -> String {
    let mut out = String::from("audit rebuild\n");
    row(
        &mut out,
        "result",
        if report.consistent() {
            "OK: the store holds exactly what the entries give"
        } else {
            "DIFFERENCES FOUND"
        },
    );
    row(&mut out, "entries", report.entries);
    row(&mut out, "time", format!("{seconds:.2} s"));
    out.push_str(&format!(
        "  {:<20} {:>10} {:>10} {:>8} {:>8} {:>10}\n",
        "kind", "expected", "stored", "missing", "extra", "different"
    ));
    for k in &report.kinds {
        out.push_str(&format!(
            "  {:<20} {:>10} {:>10} {:>8} {:>8} {:>10}\n",
            k.kind, k.expected, k.stored, k.missing, k.extra, k.different
        ));
    }
    for (index, why) in &report.refused {
        out.push_str(&format!("  entry {index:>8}  refused: {why}\n"));
    }
    for example in &report.examples {
        out.push_str(&format!("  {example}\n"));
    }
    out
}

/// `audit rebuild` as one JSON object.
pub fn rebuild_json(report: &super::RebuildReport, seconds: f64) -> String {
    serde_json::json!({
        "consistent": report.consistent(),
        "entries": report.entries,
        "seconds": seconds,
        "kinds": report.kinds,
        "refused": report.refused,
        "examples": report.examples,
    })
    .to_string()
}

/// `audit usage` as a table: where a data folder's bytes go.
pub fn usage_table(usage: &super::Usage) -> String {
    let mut out = String::from("audit usage\n");
    let applications = usage
        .kinds
        .iter()
        .find(|k| k.prefix == 'a')
        .map_or(0, |k| k.keys);
    out.push_str(&format!(
        "  {:<30} {:>10} {:>12} {:>12} {:>10}\n",
        "kind (key prefix)", "keys", "key bytes", "value bytes", "B/app"
    ));
    let per_app = |bytes: u64| {
        if applications == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", bytes as f64 / applications as f64)
        }
    };
    for k in &usage.kinds {
        out.push_str(&format!(
            "  {:<30} {:>10} {:>12} {:>12} {:>10}\n",
            format!("{} ({})", k.kind, k.prefix),
            k.keys,
            k.key_bytes,
            k.value_bytes,
            per_app(k.key_bytes + k.value_bytes)
        ));
    }
    let payload = usage.payload();
    let overhead = usage.on_disk.saturating_sub(payload);
    out.push_str(&format!(
        "  {:<30} {:>10} {:>25} {:>10}\n",
        "payload (keys + values)",
        "",
        payload,
        per_app(payload)
    ));
    out.push_str(&format!(
        "  {:<30} {:>10} {:>25} {:>10}\n",
        "sled overhead (disk - payload)",
        "",
        overhead,
        per_app(overhead)
    ));
    out.push_str(&format!(
        "  {:<30} {:>10} {:>25} {:>10}\n",
        "on disk (files of the store)",
        applications,
        usage.on_disk,
        per_app(usage.on_disk)
    ));
    out
}

/// `audit usage --json`.
pub fn usage_json(usage: &super::Usage) -> serde_json::Value {
    serde_json::json!({
        "kinds": usage.kinds,
        "payload_bytes": usage.payload(),
        "on_disk_bytes": usage.on_disk,
    })
}
