//! `proofgate audit verify --cluster` and `proofgate stats --cluster`: every
//! node of a cluster, found in etcd (the log records and the node
//! directory), read online over gRPC.
//!
//! Verification is the online check the mirrors and `audit restore` make
//! ([`crate::server::mirror::pull`]: the newest checkpoint's signature by the
//! key etcd publishes, every chunk of entries against it) into a scratch
//! store, then the offline `audit verify` over that store
//! ([`crate::audit::verify_records`]): one implementation of each. A node
//! that cannot be reached is verified from a live node that mirrors its
//! log (`ListLogs` says which); with none, its row says UNREACHABLE and the
//! command exits 69 (65 when a log does not verify).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::{CliError, ClusterAuditArgs, Report};
use crate::audit::{self, VerifyReport};
use crate::cluster::{list_logs, list_nodes, ClusterOptions, ListedNode};
use crate::operations::{stats, sum};
use crate::pb::operations_service_client::OperationsServiceClient;
use crate::pb::{GetStatisticsRequest, ListLogsRequest, Statistics};
use crate::security::{self, IdentityHeader, TlsFiles, GATEWAY_IDENTITY};
use crate::server::mirror::{self, AuditClient, PullError};

/// Who `audit verify --cluster` calls as.
pub const AUDITOR_IDENTITY: &str = "auditor.auditor.proofgate";
/// Who `stats --cluster` calls as (GetStatistics is for admins).
pub const ADMIN_IDENTITY: &str = "admin.admin.proofgate";
/// Bound on one unary call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How the command reaches nodes: mutual TLS as `identity` of the certs
/// folder (https:// addresses), or plaintext naming it in a header.
struct Caller {
    certs: PathBuf,
    identity: &'static str,
    tls: Option<TlsFiles>,
}

impl Caller {
    fn new(certs: &Path, identity: &'static str) -> Self {
        Self {
            certs: certs.to_path_buf(),
            identity,
            tls: None,
        }
    }

    /// A channel to `url`. The outer error: the certs folder is unusable
    /// (exit 64); the inner: that node cannot be reached.
    async fn channel(&mut self, url: &str) -> Result<Result<Channel, String>, CliError> {
        if url.starts_with("http://") {
            let connected = match Endpoint::from_shared(url.to_owned()) {
                Ok(endpoint) => endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .map_err(|e| format!("{url}: {e}")),
                Err(e) => Err(format!("{url}: {e}")),
            };
            return Ok(connected);
        }
        if self.tls.is_none() {
            self.tls = Some(TlsFiles::load(&self.certs, self.identity)?);
        }
        Ok(security::connect(url, self.tls.as_ref(), GATEWAY_IDENTITY)
            .await
            .map_err(|e| format!("{url}: cannot connect ({e})")))
    }
}

/// A log to verify: whose, the key to trust, where its owner answers.
#[derive(Debug, Clone, Default)]
struct Target {
    node_id: String,
    vkey: String,
    /// The key came from a mirror's ListLogs, not from etcd.
    vkey_from_mirror: bool,
    owner: Option<String>,
}

/// One row of `audit verify --cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub origin: String,
    pub node: String,
    /// `node-2` (its owner) or `mirror on node-1`; empty when unreachable.
    pub source: String,
    pub tree_size: u64,
    pub result: RowResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    Ok,
    Failed(String),
    Unreachable(String),
}

impl RowResult {
    fn word(&self) -> &'static str {
        match self {
            RowResult::Ok => "OK",
            RowResult::Failed(_) => "FAILED",
            RowResult::Unreachable(_) => "UNREACHABLE",
        }
    }

    fn detail(&self) -> &str {
        match self {
            RowResult::Ok => "",
            RowResult::Failed(d) | RowResult::Unreachable(d) => d,
        }
    }
}

/// Why one source could not give a verdict, or the verdict against the log.
enum Online {
    /// Try the next source.
    Unreachable(String),
    /// What was served does not verify.
    Bad(String),
}

fn classify(e: PullError) -> Online {
    match &e {
        PullError::Connect { .. } | PullError::Timeout { .. } => Online::Unreachable(e.to_string()),
        PullError::Rpc { status, .. } => match status.code() {
            // Another node's data does not verify: a finding, not an outage.
            tonic::Code::DataLoss => Online::Bad(e.to_string()),
            _ => Online::Unreachable(e.to_string()),
        },
        PullError::Mirror(_) | PullError::BadAnswer { .. } => Online::Bad(e.to_string()),
    }
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A scratch folder for one online verification, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, CliError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "proofgate-verify-{}-{}-{nanos}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|source| CliError::Generate {
            dir: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies `origin` as served at `url`, trusting `vkey`: the pull a mirror
/// makes (signature, consistency, every chunk against the newest
/// checkpoint) into a scratch store, then `audit verify` over it.
async fn verify_online(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    vkey: &str,
) -> Result<Result<VerifyReport, Online>, CliError> {
    let scratch = Scratch::new()?;
    let path = scratch.0.join("log");
    let log = match audit::MirrorLog::open(&path, origin, vkey) {
        Ok(log) => log,
        Err(e) => return Ok(Err(Online::Bad(format!("the key {vkey}: {e}")))),
    };
    if let Err(e) = mirror::pull(client, url, origin, &log).await {
        return Ok(Err(classify(e)));
    }
    drop(log.into_log_store()?);
    // The store's file lock goes with its last handle: reopen-and-drop
    // waits for it.
    drop(audit::AuditStore::open(&path)?);
    let keys = super::audit::restored_keys(&path, vkey)?;
    let first = keys.first().cloned().unwrap_or_else(|| vkey.to_owned());
    std::fs::write(scratch.0.join("log.vkey"), format!("{first}\n")).map_err(|source| {
        CliError::Generate {
            dir: scratch.0.clone(),
            source,
        }
    })?;
    let dir = scratch.0.clone();
    let verified = tokio::task::spawn_blocking(move || {
        audit::data_dir_records(&dir).and_then(|r| audit::verify_records(r, Some(&first), |_| {}))
    })
    .await;
    drop(scratch);
    match verified {
        Ok(Ok(report)) => Ok(Ok(report)),
        Ok(Err(e)) => Ok(Err(Online::Bad(e.to_string()))),
        Err(e) => Ok(Err(Online::Bad(format!("verification stopped: {e}")))),
    }
}

/// Every log the cluster knows, and the live nodes that mirror each.
async fn find_logs(
    options: &ClusterOptions,
    caller: &mut Caller,
) -> Result<
    (
        BTreeMap<String, Target>,
        BTreeMap<String, Vec<(String, String)>>,
    ),
    CliError,
> {
    let known = list_logs(options).await?;
    let nodes = list_nodes(options).await?;
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    for log in &known {
        targets.insert(
            log.origin.clone(),
            Target {
                node_id: log.node_id.clone(),
                vkey: log.vkey.clone(),
                vkey_from_mirror: false,
                owner: Some(log.address.clone()),
            },
        );
    }
    for node in &nodes {
        let target = targets.entry(node.record.origin.clone()).or_default();
        target.node_id = node.record.node_id.clone();
        target.vkey = node.record.vkey.clone();
        target.vkey_from_mirror = false;
        target.owner = Some(node.record.address.clone());
    }
    let mut mirrors: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.live) {
        for log in listed_logs(node, caller).await? {
            if !log.mirrored_here {
                continue;
            }
            mirrors
                .entry(log.origin.clone())
                .or_default()
                .push((node.record.node_id.clone(), node.record.address.clone()));
            targets.entry(log.origin.clone()).or_insert_with(|| Target {
                node_id: log.node_id.clone(),
                vkey: log.verifier_key.clone(),
                vkey_from_mirror: true,
                owner: None,
            });
        }
    }
    Ok((targets, mirrors))
}

/// A live node's ListLogs; a node that does not answer lists nothing (its
/// own log is then tried and reported like any other).
async fn listed_logs(
    node: &ListedNode,
    caller: &mut Caller,
) -> Result<Vec<crate::pb::ClusterLog>, CliError> {
    let Ok(channel) = caller.channel(&node.record.address).await? else {
        return Ok(Vec::new());
    };
    let mut client = mirror::client_over(channel, caller.identity);
    match tokio::time::timeout(CALL_TIMEOUT, client.list_logs(ListLogsRequest {})).await {
        Ok(Ok(response)) => Ok(response.into_inner().logs),
        _ => Ok(Vec::new()),
    }
}

/// Verifies one log: from its owner, else from each mirror in turn.
async fn verify_one(
    origin: &str,
    target: &Target,
    mirrors: &[(String, String)],
    caller: &mut Caller,
) -> Result<Row, CliError> {
    let mut sources: Vec<(String, String)> = Vec::new();
    if let Some(owner) = &target.owner {
        sources.push((target.node_id.clone(), owner.clone()));
    }
    for (node, url) in mirrors {
        sources.push((format!("mirror on {node}"), url.clone()));
    }
    let mut reasons = Vec::new();
    for (label, url) in sources {
        let channel = match caller.channel(&url).await? {
            Ok(channel) => channel,
            Err(reason) => {
                reasons.push(format!("{label}: {reason}"));
                continue;
            }
        };
        let mut client = mirror::client_over(channel, caller.identity);
        let result = match verify_online(&mut client, &url, origin, &target.vkey).await? {
            Ok(report) if report.ok() => (report.tree_size, RowResult::Ok),
            Ok(report) => (
                report.tree_size,
                RowResult::Failed(report.problem.map(|p| p.to_string()).unwrap_or_default()),
            ),
            Err(Online::Bad(reason)) => (0, RowResult::Failed(reason)),
            Err(Online::Unreachable(reason)) => {
                reasons.push(format!("{label}: {reason}"));
                continue;
            }
        };
        let (tree_size, result) = result;
        return Ok(Row {
            origin: origin.to_owned(),
            node: target.node_id.clone(),
            source: label,
            tree_size,
            result,
        });
    }
    Ok(Row {
        origin: origin.to_owned(),
        node: target.node_id.clone(),
        source: String::new(),
        tree_size: 0,
        result: RowResult::Unreachable(if reasons.is_empty() {
            "no address and no live node mirrors it".into()
        } else {
            format!("{}; no live node mirrors it", reasons.join("; "))
        }),
    })
}

/// The rows as a table for people.
pub fn rows_table(rows: &[Row]) -> String {
    let header = [
        "ORIGIN",
        "NODE",
        "TREE SIZE",
        "RESULT",
        "VERIFIED FROM",
        "DETAIL",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.origin.clone(),
                r.node.clone(),
                r.tree_size.to_string(),
                r.result.word().to_owned(),
                r.source.clone(),
                r.result.detail().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    out
}

/// The rows as JSON: an array, one object per log.
pub fn rows_json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "origin": r.origin,
                    "node": r.node,
                    "tree_size": r.tree_size,
                    "result": r.result.word().to_lowercase(),
                    "verified_from": r.source,
                    "from_mirror": r.source.starts_with("mirror on "),
                    "problem": match &r.result {
                        RowResult::Ok => serde_json::Value::Null,
                        other => other.detail().into(),
                    },
                })
            })
            .collect(),
    )
}

/// What the rows mean for the exit: a log that does not verify is bad data
/// (65, the report says it); one that cannot be reached is 69.
fn outcome(rows: &[Row], text: String) -> Result<Report, CliError> {
    let failed = rows
        .iter()
        .any(|r| matches!(r.result, RowResult::Failed(_)));
    let unreachable: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.result, RowResult::Unreachable(_)))
        .map(|r| r.origin.as_str())
        .collect();
    let report = Report {
        text,
        warnings: Vec::new(),
        found_problem: failed,
    };
    if !failed && !unreachable.is_empty() {
        return Err(CliError::Unreachable {
            report: Box::new(report),
            what: format!(
                "not verified, unreachable: {} (start its node, or a node that mirrors it)",
                unreachable.join(", ")
            ),
        });
    }
    Ok(report)
}

/// `proofgate audit verify --cluster`.
pub async fn verify(args: &ClusterAuditArgs, json: bool) -> Result<Report, CliError> {
    let options = args.etcd.options()?;
    let mut caller = Caller::new(&args.certs, AUDITOR_IDENTITY);
    let (targets, mirrors) = find_logs(&options, &mut caller).await?;
    if targets.is_empty() {
        return Err(CliError::RestoreConfig(format!(
            "no logs registered under {} at {} (is this the cluster's etcd and prefix?)",
            options.logs_prefix(),
            options.endpoints_text()
        )));
    }
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    for (origin, target) in &targets {
        if target.vkey_from_mirror {
            warnings.push(format!(
                "{origin} is not in etcd: verified with the key its mirror is pinned to ({})",
                target.vkey
            ));
        }
        let empty = Vec::new();
        let mirrored = mirrors.get(origin).unwrap_or(&empty);
        rows.push(verify_one(origin, target, mirrored, &mut caller).await?);
    }
    let text = if json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&rows_json(&rows)).unwrap_or_default()
        )
    } else {
        rows_table(&rows)
    };
    let mut result = outcome(&rows, text);
    match &mut result {
        Ok(report) => report.warnings = warnings,
        Err(CliError::Unreachable { report, .. }) => report.warnings = warnings,
        Err(_) => {}
    }
    result
}

/// `proofgate stats --cluster`: GetStatistics of every live node, summed;
/// a node with a log in etcd that does not answer makes the sum partial
/// (printed, then exit 69 naming it).
pub async fn stats(args: &ClusterAuditArgs, json: bool) -> Result<Report, CliError> {
    let options = args.etcd.options()?;
    let mut caller = Caller::new(&args.certs, ADMIN_IDENTITY);
    let known = list_logs(&options).await?;
    let nodes = list_nodes(&options).await?;
    let mut expected: Vec<String> = known.iter().map(|l| l.node_id.clone()).collect();
    for node in &nodes {
        if !expected.contains(&node.record.node_id) {
            expected.push(node.record.node_id.clone());
        }
    }
    expected.sort();
    let mut figures: Vec<(String, Statistics)> = Vec::new();
    let mut problems = Vec::new();
    for node in nodes.iter().filter(|n| n.live) {
        let channel = match caller.channel(&node.record.address).await? {
            Ok(channel) => channel,
            Err(reason) => {
                problems.push(format!("{}: {reason}", node.record.node_id));
                continue;
            }
        };
        let mut client =
            OperationsServiceClient::with_interceptor(channel, IdentityHeader::new(ADMIN_IDENTITY));
        match tokio::time::timeout(CALL_TIMEOUT, client.get_statistics(GetStatisticsRequest {}))
            .await
        {
            Ok(Ok(response)) => figures.push((node.record.node_id.clone(), response.into_inner())),
            Ok(Err(status)) => {
                problems.push(format!("{}: {}", node.record.node_id, status.message()))
            }
            Err(_) => problems.push(format!(
                "{}: no answer within {}s",
                node.record.node_id,
                CALL_TIMEOUT.as_secs()
            )),
        }
    }
    let counted: Vec<String> = figures.iter().map(|(n, _)| n.clone()).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|n| !counted.contains(n))
        .cloned()
        .collect();
    let total = sum::sum(&figures.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>());
    let text = if json {
        let mut value = stats::to_json(&total);
        if let Some(object) = value.as_object_mut() {
            object.insert("nodes".into(), json!(counted));
            object.insert("missing_nodes".into(), json!(missing));
        }
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )
    } else {
        format!(
            "cluster: figures of {} node(s): {}{}\n{}",
            counted.len(),
            counted.join(", "),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; MISSING: {}", missing.join(", "))
            },
            stats::to_table(&total)
        )
    };
    let report = Report {
        text,
        warnings: problems,
        found_problem: false,
    };
    if missing.is_empty() {
        Ok(report)
    } else {
        Err(CliError::Unreachable {
            report: Box::new(report),
            what: format!(
                "the sum leaves out {} (not answering); start them and ask again",
                missing.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(origin: &str, result: RowResult) -> Row {
        Row {
            origin: origin.into(),
            node: origin.trim_start_matches("proofgate/").into(),
            source: "mirror on node-1".into(),
            tree_size: 12,
            result,
        }
    }

    #[test]
    fn the_table_has_one_aligned_row_per_log_and_json_says_the_same() {
        let rows = [
            row("proofgate/node-1", RowResult::Ok),
            row("proofgate/node-22", RowResult::Unreachable("down".into())),
        ];
        let table = rows_table(&rows);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ORIGIN "));
        let column = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(column(lines[1], "12"), column(lines[2], "12"));
        assert!(lines[2].contains("UNREACHABLE") && lines[2].ends_with("down"));
        let json = rows_json(&rows);
        assert_eq!(json[0]["result"], "ok");
        assert_eq!(json[0]["from_mirror"], true);
        assert_eq!(json[1]["problem"], "down");
    }

    #[test]
    fn failures_are_bad_data_and_unreachable_logs_unavailable() {
        let ok = outcome(&[row("a", RowResult::Ok)], String::new()).unwrap();
        assert!(!ok.found_problem);
        let failed = outcome(
            &[
                row("a", RowResult::Failed("root".into())),
                row("b", RowResult::Unreachable("down".into())),
            ],
            String::new(),
        )
        .unwrap();
        assert!(failed.found_problem);
        let down = outcome(
            &[row("b", RowResult::Unreachable("down".into()))],
            "t".into(),
        );
        assert!(
            matches!(&down, Err(CliError::Unreachable { report, what }) if report.text == "t" && what.contains("b"))
        );
        assert_eq!(super::super::exit_code(&down), 69);
    }
}
