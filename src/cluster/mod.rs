//! Cluster mode (`serve --etcd …`): several gateway nodes that act as one
//! service, with the small state they must agree on in etcd (DESIGN.md,
//! "Several nodes"). Without `--etcd` none of this runs: one node, sled, no
//! etcd, exactly as before.
//!
//! What exists so far (the foundation of issue 10):
//! - [`ClusterOptions`]: where etcd is (`--etcd`, TLS files, key prefix);
//! - the node directory ([`directory`]): each node's [`NodeRecord`] under
//!   `<prefix>nodes/<node-id>`, attached to an etcd lease, so the key goes
//!   when the node dies; [`list_nodes`] for `proofgate cluster status`;
//! - the node's etcd session ([`Session`]): registers create-if-absent (a
//!   second live node with the same id is refused), keeps the lease alive,
//!   republishes tree size and policy version; it re-grants and re-registers
//!   by itself when etcd returns;
//! - idempotency across nodes ([`Reservations`]): each submission reserves
//!   `(caller, request_id)` under `<prefix>requests/` before it is decided,
//!   in a transaction that also proves the node's session is live (no
//!   quorum, no live session: nothing decided), and marks it decided once
//!   durable; a retry on any node finds it.
//!
//! Layer: below `server` (which joins at start and gates submissions), beside
//! `operations`; it names no module above the leaves, so the node's state
//! (tree size, policy version) is handed in as a [`ProgressFn`].

pub mod batch;
pub mod directory;
pub mod logs;
mod reservations;
mod session;
pub mod shared;
pub mod txn_bench;

pub use directory::{list_nodes, render_table, ListedNode, NodeRecord};
pub use logs::{list_logs, publish_log, KnownLog};
pub use reservations::{
    request_key, Reservation, Reservations, Reserved, DEFAULT_IDEMPOTENCY_WINDOW,
};
pub use session::{Progress, ProgressFn, Session};
pub use shared::{ChangeFn, SharedFolder, SharedHandle};

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// The key prefix when `--etcd-prefix` is not given; several clusters can
/// share one etcd under different prefixes.
pub const DEFAULT_PREFIX: &str = "/proofgate/";
/// Lifetime of a node's lease: a node that stops renewing disappears from
/// the directory at most this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the lease is renewed and the record republished if it changed.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Bound on each etcd call: past it the call counts as failed (and a node
/// whose renewal failed stops deciding until it has a session again).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts to get a session back after losing it.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Where the cluster's etcd is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Client URLs of the etcd members (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// CA that signed the members' certificates (etcd over TLS).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for etcd with client-certificate auth.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Every key of this cluster lives under it; ends with `/`.
    pub prefix: String,
    /// How long a request's reservation is kept: a retry within it gets
    /// the first decision (`--idempotency-window`, default 7 days).
    pub idempotency_window: Duration,
}

impl ClusterOptions {
    /// Options for these endpoints, no TLS, the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            ca: None,
            cert: None,
            key: None,
            prefix: DEFAULT_PREFIX.into(),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }

    /// Checks what can be checked without etcd; normalises the prefix to end
    /// with `/`.
    pub fn validated(mut self) -> Result<Self, ClusterError> {
        self.endpoints = self
            .endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if self.endpoints.is_empty() {
            return Err(ClusterError::Config(
                "--etcd needs at least one URL (e.g. http://127.0.0.1:2379)".into(),
            ));
        }
        let tls = self.ca.is_some() || self.cert.is_some();
        for endpoint in &self.endpoints {
            let scheme_ok = endpoint.starts_with("https://")
                || (!tls && endpoint.starts_with("http://"))
                || !endpoint.contains("://");
            if !scheme_ok {
                return Err(ClusterError::Config(format!(
                    "etcd URL `{endpoint}`: {}",
                    if tls {
                        "with --etcd-ca/--etcd-cert the URLs must be https://"
                    } else {
                        "use http://HOST:PORT or https://HOST:PORT"
                    }
                )));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ClusterError::Config(
                "--etcd-cert and --etcd-key go together: give both or neither".into(),
            ));
        }
        if self.prefix.trim().is_empty() {
            return Err(ClusterError::Config(
                "--etcd-prefix must not be empty (default /proofgate/)".into(),
            ));
        }
        if !self.prefix.ends_with('/') {
            self.prefix.push('/');
        }
        Ok(self)
    }

    /// The folder of node records: `<prefix>nodes/`.
    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// One node's record key: `<prefix>nodes/<node-id>`.
    pub fn node_key(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.nodes_prefix())
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Reads an idempotency window: a whole number and a unit, `d`, `h`, `m` or
/// `s` (`7d`, `36h`, `90m`, `600s`); at least one minute.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let problem = || {
        format!("idempotency window `{text}`: give a whole number and a unit d, h, m or s (e.g. 7d, 36h), at least 1m")
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: u64 = number.parse().map_err(|_| problem())?;
    let seconds = match unit {
        "d" => number.checked_mul(86_400),
        "h" => number.checked_mul(3_600),
        "m" => number.checked_mul(60),
        "s" => Some(number),
        _ => None,
    }
    .ok_or_else(problem)?;
    // etcd keeps a lease for at most about 285 years; a window is far less.
    if !(60..=100 * 365 * 86_400).contains(&seconds) {
        return Err(problem());
    }
    Ok(Duration::from_secs(seconds))
}

#[derive(Debug, Error)]
pub enum ClusterError {
    /// Options that cannot work (exit 64).
    #[error("{0}")]
    Config(String),
    /// A TLS file for etcd that cannot be read (exit 64).
    #[error("cannot read {path}: {source}")]
    ReadTls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// etcd answered with an error, or could not be reached (exit 69).
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer in time (exit 69).
    #[error("etcd at {endpoints} did not answer within {}s (are the members up, with a quorum?)", timeout.as_secs())]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    /// Another live node holds this node id (exit 69).
    #[error("node id `{node_id}` is already taken by a live node (registered at {address}, key {key}): stop that node, or give this one another --node-id")]
    NodeIdTaken {
        node_id: String,
        key: String,
        address: String,
    },
    /// The node cannot prove that its etcd session is live, so it must not
    /// decide (answered UNAVAILABLE: nothing was decided).
    #[error("this node has lost its etcd session, so nothing was decided; retry later or on another node")]
    NotLive,
    /// The watch of shared records broke (they may be stale until it is back).
    #[error("watch of shared records: {0}")]
    Watch(String),
    /// The request is reserved by a live node that has not finished
    /// deciding it within the caller's deadline.
    #[error("request `{request_id}` is still being decided by node `{owner}`; retry with the same request_id in a moment (nothing else was decided)")]
    StillDeciding { owner: String, request_id: String },
    /// This node decided, but etcd could not confirm the decision, so it is
    /// not acknowledged.
    #[error("request `{request_id}`: the cluster's etcd could not confirm the decision, so it is not acknowledged; retry with the same request_id to get the one decision the cluster keeps")]
    Unconfirmed { request_id: String },
    /// Another node took the request over while this one decided it.
    #[error("request `{request_id}` was taken over by another node while this node decided it; retry with the same request_id to get the decision the cluster keeps")]
    TakenOver { request_id: String },
    /// The node that owns an application (or holds a request's decision)
    /// cannot be asked now. `what` names it: "application X", "request `r`
    /// (application X)".
    #[error("{what} belongs to node `{owner}`, which cannot be reached now ({reason}); retry later (nothing was decided here)")]
    OwnerUnreachable {
        owner: String,
        what: String,
        reason: String,
    },
    /// A reservation made by a node whose request digests are keyed
    /// differently: the two cannot tell whether requests are the same.
    #[error("request reserved by node `{owner}`, whose pseudonym key differs from this node's: every node of a cluster needs the same keys/pseudonym.key (nothing was decided)")]
    DigestKeyMismatch { owner: String },
    /// A record under the prefix that is not a node or reservation record.
    #[error("record {key} is not a record proofgate wrote: {source}")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn read_tls(path: &Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|source| ClusterError::ReadTls {
        path: path.to_path_buf(),
        source,
    })
}

/// A client for the cluster's etcd. etcd-client connects lazily: an
/// unreachable etcd shows up as the first call timing out, not here.
pub async fn connect(options: &ClusterOptions) -> Result<etcd_client::Client, ClusterError> {
    let mut connect = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), CALL_TIMEOUT)
        .with_keep_alive_while_idle(true)
        // A member cut off from its leader answers "no leader" at once
        // instead of letting the call hang: that is how quorum loss shows.
        .with_require_leader(true);
    if options.ca.is_some() || options.cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &options.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_tls(ca)?));
        }
        if let (Some(cert), Some(key)) = (&options.cert, &options.key) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read_tls(cert)?,
                read_tls(key)?,
            ));
        }
        connect = connect.with_tls(tls);
    }
    etcd_client::Client::connect(&options.endpoints, Some(connect))
        .await
        .map_err(|source| ClusterError::Etcd {
            endpoints: options.endpoints_text(),
            source,
        })
}

/// Runs one etcd call under [`CALL_TIMEOUT`], mapping both ways of failing.
pub(crate) async fn bounded<T>(
    options: &ClusterOptions,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(ClusterError::Etcd {
            endpoints: options.endpoints_text(),
            source,
        }),
        Err(_) => Err(ClusterError::Timeout {
            endpoints: options.endpoints_text(),
            timeout: CALL_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_gets_its_slash_and_keys_sit_under_it() {
        let mut options = ClusterOptions::new(vec!["http://127.0.0.1:2379".into()]);
        options.prefix = "/city-a".into();
        let options = options.validated().unwrap();
        assert_eq!(options.node_key("node-2"), "/city-a/nodes/node-2");
    }

    #[test]
    fn windows_read_with_their_unit_and_nonsense_is_refused() {
        assert_eq!(parse_window("7d"), Ok(DEFAULT_IDEMPOTENCY_WINDOW));
        assert_eq!(parse_window("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_window(" 90m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_window("600s"), Ok(Duration::from_secs(600)));
        for bad in [
            "",
            "7",
            "d",
            "7w",
            "-1d",
            "30s",
            "1.5h",
            "99999999999999999d",
        ] {
            let e = parse_window(bad).expect_err(bad);
            assert!(e.contains("e.g. 7d"), "{e}");
        }
    }

    #[test]
    fn bad_options_are_refused_with_what_to_do() {
        let none = ClusterOptions::new(vec![" ".into()]).validated();
        assert!(matches!(none, Err(ClusterError::Config(m)) if m.contains("--etcd")));
        let mut half = ClusterOptions::new(vec!["https://127.0.0.1:2379".into()]);
        half.cert = Some("c.pem".into());
        assert!(
            matches!(half.validated(), Err(ClusterError::Config(m)) if m.contains("--etcd-key"))
        );
        let mut plain_tls = ClusterOptions::new(vec!["http://127.0.0.1:2379".into()]);
        plain_tls.ca = Some("ca.pem".into());
        assert!(
            matches!(plain_tls.validated(), Err(ClusterError::Config(m)) if m.contains("https"))
        );
        let odd = ClusterOptions::new(vec!["ftp://x".into()]).validated();
        assert!(odd.is_err());
        let mut empty_prefix = ClusterOptions::new(vec!["127.0.0.1:2379".into()]);
        empty_prefix.prefix = String::new();
        assert!(empty_prefix.validated().is_err());
    }
}
