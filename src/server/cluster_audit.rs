//! AuditService `ListLogs`: the cluster's logs as this node knows them —
//! the log records and node directory in etcd, its own log, the logs it
//! mirrors — so an auditor who reaches any node finds every log and where
//! each can be read (the owner, or a mirror while the owner is down).

use std::collections::BTreeMap;

use super::audit::Logs;
use crate::cluster::{ClusterOptions, KnownLog, ListedNode};
use crate::pb::{ClusterLog, ListLogsResponse};

/// A log this node holds itself (its own, or a mirror): origin, key, size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeldLog {
    pub origin: String,
    pub vkey: String,
    pub tree_size: u64,
}

/// `proofgate/<node-id>` → `<node-id>`; another origin names no node.
fn node_of(origin: &str) -> String {
    origin
        .strip_prefix("proofgate/")
        .unwrap_or_default()
        .to_owned()
}

/// What the node holds: its own log, then each mirror (a log without a
/// checkpoint yet is listed with size 0 and the key it is pinned to, if any).
fn held(logs: &Logs) -> (HeldLog, Vec<HeldLog>) {
    let of = |origin: &str| {
        let checkpoint = logs.resolve(origin).and_then(|r| r.checkpoint()).ok();
        HeldLog {
            origin: origin.to_owned(),
            vkey: checkpoint
                .as_ref()
                .map(|c| c.verifier_key.clone())
                .unwrap_or_default(),
            tree_size: checkpoint.map_or(0, |c| c.tree_size),
        }
    };
    let own = of(logs.own_origin());
    let mirrors = logs.mirrored().iter().map(|o| of(o)).collect();
    (own, mirrors)
}

/// The list: etcd's log records, overridden by the live directory, then
/// what this node holds. Sorted by origin.
pub(super) fn merge(
    own: &HeldLog,
    mirrors: &[HeldLog],
    known: &[KnownLog],
    nodes: &[ListedNode],
) -> Vec<ClusterLog> {
    let mut by_origin: BTreeMap<String, ClusterLog> = BTreeMap::new();
    for log in known {
        let entry = by_origin.entry(log.origin.clone()).or_default();
        entry.node_id = log.node_id.clone();
        entry.verifier_key = log.vkey.clone();
        entry.endpoint = log.address.clone();
    }
    for node in nodes {
        let entry = by_origin.entry(node.record.origin.clone()).or_default();
        entry.node_id = node.record.node_id.clone();
        entry.verifier_key = node.record.vkey.clone();
        entry.endpoint = node.record.address.clone();
        entry.live = node.live;
    }
    let mut hold = |log: &HeldLog, own: bool| {
        let entry = by_origin.entry(log.origin.clone()).or_default();
        if entry.node_id.is_empty() {
            entry.node_id = node_of(&log.origin);
        }
        if entry.verifier_key.is_empty() {
            entry.verifier_key = log.vkey.clone();
        }
        if own {
            entry.own = true;
        } else {
            entry.mirrored_here = true;
        }
        entry.tree_size = entry.tree_size.max(log.tree_size);
    };
    hold(own, true);
    for mirror in mirrors {
        hold(mirror, false);
    }
    by_origin
        .into_iter()
        .map(|(origin, log)| ClusterLog { origin, ..log })
        .collect()
}

/// The answer to `ListLogs`. An etcd that cannot be read is said in
/// `directory_problem`; the node's own knowledge is listed anyway.
pub(super) async fn list_logs(logs: &Logs, cluster: Option<&ClusterOptions>) -> ListLogsResponse {
    let (own, mirrors) = held(logs);
    let (known, nodes, directory_problem) = match cluster {
        None => (Vec::new(), Vec::new(), String::new()),
        Some(options) => {
            let read = async {
                let known = crate::cluster::list_logs(options).await?;
                let nodes = crate::cluster::list_nodes(options).await?;
                Ok::<_, crate::cluster::ClusterError>((known, nodes))
            };
            match read.await {
                Ok((known, nodes)) => (known, nodes, String::new()),
                Err(e) => (Vec::new(), Vec::new(), e.to_string()),
            }
        }
    };
    ListLogsResponse {
        logs: merge(&own, &mirrors, &known, &nodes),
        directory_problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeRecord;

    fn held(origin: &str, size: u64) -> HeldLog {
        HeldLog {
            origin: origin.into(),
            vkey: format!("{origin}+held"),
            tree_size: size,
        }
    }

    fn known(id: &str) -> KnownLog {
        KnownLog {
            node_id: id.into(),
            origin: format!("proofgate/{id}"),
            vkey: format!("proofgate/{id}+etcd"),
            address: format!("https://{id}:1"),
        }
    }

    fn listed(id: &str) -> ListedNode {
        ListedNode {
            record: NodeRecord {
                node_id: id.into(),
                address: format!("https://{id}:2"),
                origin: format!("proofgate/{id}"),
                vkey: format!("proofgate/{id}+directory"),
                policy_version: String::new(),
                tree_size: 3,
                updated_unix_ms: 0,
                software: String::new(),
                digest_key: String::new(),
            },
            lease: "1".into(),
            lease_ttl_s: Some(9),
            live: true,
        }
    }

    #[test]
    fn every_log_once_with_the_directory_first_and_what_is_held_here() {
        let logs = merge(
            &held("proofgate/node-1", 7),
            &[held("proofgate/node-2", 5), held("proofgate/node-9", 2)],
            &[known("node-1"), known("node-2"), known("node-3")],
            &[listed("node-1"), listed("node-3")],
        );
        let origins: Vec<_> = logs.iter().map(|l| l.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "proofgate/node-1",
                "proofgate/node-2",
                "proofgate/node-3",
                "proofgate/node-9"
            ]
        );
        let [one, two, three, nine] = logs.as_slice() else {
            unreachable!()
        };
        assert!(one.own && one.live && !one.mirrored_here);
        assert_eq!(one.endpoint, "https://node-1:2");
        assert_eq!(one.tree_size, 7);
        // Down (not in the directory): the record kept in etcd, mirrored here.
        assert!(!two.live && two.mirrored_here && !two.own);
        assert_eq!(
            (two.endpoint.as_str(), two.verifier_key.as_str()),
            ("https://node-2:1", "proofgate/node-2+etcd")
        );
        assert_eq!(two.tree_size, 5);
        assert!(three.live && !three.mirrored_here && three.tree_size == 0);
        assert_eq!(three.verifier_key, "proofgate/node-3+directory");
        // Known only as a mirror: the pinned key, no endpoint.
        assert_eq!(nine.node_id, "node-9");
        assert_eq!(nine.verifier_key, "proofgate/node-9+held");
        assert!(nine.endpoint.is_empty() && nine.mirrored_here);
    }

    #[test]
    fn without_etcd_the_own_log_and_the_mirrors() {
        let logs = merge(&held("proofgate/a", 1), &[held("proofgate/b", 1)], &[], &[]);
        assert_eq!(logs.len(), 2);
        assert!(logs[0].own && logs[1].mirrored_here && !logs[1].live);
    }
}
