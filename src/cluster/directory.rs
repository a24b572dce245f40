//! The node directory: one JSON [`NodeRecord`] per live node under
//! `<prefix>nodes/<node-id>`, attached to the node's lease. JSON because
//! operators read it with `etcdctl get --prefix /proofgate/nodes/` too; a
//! record is a few hundred bytes, written every few seconds at most.

use serde::{Deserialize, Serialize};

use super::{bounded, ClusterError, ClusterOptions};

/// What a node says about itself in the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// Where its gRPC services answer (`https://host:port`).
    pub address: String,
    /// Its log's origin, `proofgate/<node-id>`.
    pub origin: String,
    /// Its log's verifier key (C2SP vkey).
    pub vkey: String,
    /// The policy set version it serves.
    pub policy_version: String,
    /// Entries in its log when it last published.
    pub tree_size: u64,
    /// When it last published (Unix ms, its own clock).
    pub updated_unix_ms: u64,
    /// The proofgate version it runs.
    pub software: String,
    /// Names (without revealing) the pseudonym key its request digests and
    /// pseudonyms are made with; every node of a cluster needs the same.
    /// Empty in records of nodes from before it was published.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest_key: String,
}

impl NodeRecord {
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One entry of `proofgate cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedNode {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// The lease holding the record (hex, as `etcdctl lease list` shows it).
    pub lease: String,
    /// Seconds left on the lease when listed; the record goes when it
    /// reaches 0 without renewal. None: the lease could not be asked.
    pub lease_ttl_s: Option<i64>,
    /// The record exists with a lease that is still granted.
    pub live: bool,
}

/// Every JSON record under `prefix`, with the lease it is attached to (0:
/// none); a record that does not decode is [`ClusterError::BadRecord`].
pub(super) async fn json_records<T: serde::de::DeserializeOwned>(
    client: &mut etcd_client::Client,
    options: &ClusterOptions,
    prefix: &str,
) -> Result<Vec<(T, i64)>, ClusterError> {
    let response = bounded(
        options,
        client.get(
            prefix.as_bytes(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    response
        .kvs()
        .iter()
        .map(|kv| {
            serde_json::from_slice(kv.value())
                .map(|record| (record, kv.lease()))
                .map_err(|source| ClusterError::BadRecord {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    source,
                })
        })
        .collect()
}

/// Every node registered under the options' prefix, by node id.
pub async fn list_nodes(options: &ClusterOptions) -> Result<Vec<ListedNode>, ClusterError> {
    let mut client = super::connect(options).await?;
    let records: Vec<(NodeRecord, i64)> =
        json_records(&mut client, options, &options.nodes_prefix()).await?;
    let mut nodes = Vec::new();
    for (record, lease) in records {
        let lease_ttl_s = if lease == 0 {
            None
        } else {
            bounded(options, client.lease_time_to_live(lease, None))
                .await
                .ok()
                .map(|r| r.ttl())
        };
        nodes.push(ListedNode {
            live: lease != 0 && lease_ttl_s.is_none_or(|ttl| ttl > 0),
            lease: format!("{lease:x}"),
            lease_ttl_s,
            record,
        });
    }
    nodes.sort_by(|a, b| a.record.node_id.cmp(&b.record.node_id));
    Ok(nodes)
}

/// The nodes as a table for people: one row per node.
pub fn render_table(options: &ClusterOptions, nodes: &[ListedNode]) -> String {
    if nodes.is_empty() {
        return format!(
            "no nodes registered under {} at {}\n",
            options.nodes_prefix(),
            options.endpoints_text()
        );
    }
    let header = [
        "NODE",
        "LIVE",
        "ADDRESS",
        "ORIGIN",
        "TREE SIZE",
        "POLICY VERSION",
        "VKEY",
    ];
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            let live = match (n.live, n.lease_ttl_s) {
                (true, Some(ttl)) => format!("live (lease {ttl}s)"),
                (true, None) => "live".to_owned(),
                (false, _) => "expiring".to_owned(),
            };
            [
                n.record.node_id.clone(),
                live,
                n.record.address.clone(),
                n.record.origin.clone(),
                n.record.tree_size.to_string(),
                // `sha256:` and 12 hex digits: enough to tell versions apart.
                n.record.policy_version.chars().take(19).collect(),
                n.record.vkey.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len() - 1;
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ttl: Option<i64>) -> ListedNode {
        ListedNode {
            record: NodeRecord {
                node_id: id.into(),
                address: "https://127.0.0.1:50051".into(),
                origin: format!("proofgate/{id}"),
                vkey: format!("proofgate/{id}+abcd1234+AAAA"),
                policy_version: "sha256:0123456789abcdef0123456789abcdef".into(),
                tree_size: 7,
                updated_unix_ms: 1,
                software: "0.1.0".into(),
                digest_key: "0123abcd".into(),
            },
            lease: "694d8f".into(),
            lease_ttl_s: ttl,
            live: true,
        }
    }

    #[test]
    fn the_table_has_one_aligned_row_per_node() {
        let options = ClusterOptions::new(vec!["http://127.0.0.1:2379".into()]);
        let table = render_table(&options, &[node("node-1", Some(9)), node("node-22", None)]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NODE "));
        assert!(lines[1].contains("live (lease 9s)") && lines[1].contains("proofgate/node-1+"));
        assert!(
            lines[2].contains("sha256:0123456789ab") && !lines[2].contains("sha256:0123456789abc")
        );
        let column = |l: &str| l.find("https://").unwrap();
        assert_eq!(column(lines[1]), column(lines[2]));
        assert!(render_table(&options, &[]).contains("no nodes registered under /proofgate/nodes/"));
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = node("node-3", None).record;
        let back: NodeRecord = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(back, record);
    }
}
