//! The cluster's logs: one JSON [`KnownLog`] per node that ever joined,
//! under `<prefix>logs/<node-id>`, WITHOUT a lease. The node directory
//! (`nodes/`) forgets a node when its lease expires; an auditor must not:
//! a log that once took decisions stays to be verified (from a mirror while
//! its node is down). A node writes its record each time it joins; a node
//! retired for good is removed by hand (`etcdctl del <prefix>logs/<node-id>`).

use serde::{Deserialize, Serialize};

use super::{bounded, ClusterError, ClusterOptions};

/// A log of the cluster: whose it is, how to check it, where it was served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownLog {
    pub node_id: String,
    /// `proofgate/<node-id>`.
    pub origin: String,
    /// Its verifier key (C2SP vkey) when the node last joined.
    pub vkey: String,
    /// The address the node last joined with.
    pub address: String,
}

impl ClusterOptions {
    /// The folder of log records: `<prefix>logs/`.
    pub fn logs_prefix(&self) -> String {
        format!("{}logs/", self.prefix)
    }
}

/// Writes (or rewrites) this node's log record; kept after the node stops.
pub async fn publish_log(options: &ClusterOptions, log: &KnownLog) -> Result<(), ClusterError> {
    let mut client = super::connect(options).await?;
    let key = format!("{}{}", options.logs_prefix(), log.node_id);
    // A struct of strings always serialises.
    let value = serde_json::to_string(log).unwrap_or_default();
    bounded(options, client.put(key, value, None)).await?;
    Ok(())
}

/// Every log recorded under the options' prefix, by node id.
pub async fn list_logs(options: &ClusterOptions) -> Result<Vec<KnownLog>, ClusterError> {
    let mut client = super::connect(options).await?;
    let records =
        super::directory::json_records(&mut client, options, &options.logs_prefix()).await?;
    let mut logs: Vec<KnownLog> = records.into_iter().map(|(log, _lease)| log).collect();
    logs.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_sit_beside_the_directory_and_round_trip() {
        let options = ClusterOptions::new(vec!["http://127.0.0.1:2379".into()]);
        assert_eq!(options.logs_prefix(), "/proofgate/logs/");
        let log = KnownLog {
            node_id: "node-2".into(),
            origin: "proofgate/node-2".into(),
            vkey: "proofgate/node-2+abcd1234+AAAA".into(),
            address: "https://127.0.0.1:50052".into(),
        };
        let text = serde_json::to_string(&log).unwrap();
        assert_eq!(serde_json::from_str::<KnownLog>(&text).unwrap(), log);
    }
}
