//! `proofgate cluster status`: the node directory, read from etcd.

use super::{CliError, EtcdArgs, Report};
use crate::cluster::{list_nodes, render_table};

/// The nodes registered under the prefix, as a table or JSON (an array of
/// records, each with `live`, `lease` and `lease_ttl_s`).
pub async fn status(etcd: &EtcdArgs, json: bool) -> Result<Report, CliError> {
    let options = etcd.options()?;
    let nodes = list_nodes(&options).await?;
    let text = if json {
        // Records of strings and integers always serialise.
        format!(
            "{}\n",
            serde_json::to_string_pretty(&nodes).unwrap_or_default()
        )
    } else {
        render_table(&options, &nodes)
    };
    Ok(Report {
        text,
        ..Report::default()
    })
}
