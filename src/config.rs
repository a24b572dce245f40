//! One TOML file for a node, with environment overrides and command-line
//! flags, validated at start. Precedence — the one place it is decided:
//! defaults < file < `PROOFGATE_*` environment variables < flags
//! ([`resolve`]). Loaded from a map so tests never touch the process
//! environment. Metrics are on by default at [`DEFAULT_METRICS_LISTEN`];
//! `off` (in the file, the environment or `--metrics-listen`) disables them.
//! The console on the same listener is on unless `console` is off
//! (`console = "off"`, `PROOFGATE_CONSOLE=off`, `--console off`).
//!
//! Policy keys (`policy_keys`, `PROOFGATE_POLICY_KEYS`, `--policy-key`): the
//! last place that names any replaces the earlier ones; none may name an
//! empty list, so no layer can quietly turn the signature check off.
//! Revocation lists (`crls`, `PROOFGATE_CRLS`, `--crl`) follow the same rule,
//! and so do witnesses (`[[witness]]`, `PROOFGATE_WITNESSES` as
//! comma-separated `URL=VKEY` items, `--witness URL=VKEY`).
//!
//! ```toml
//! listen = "127.0.0.1:50051"
//! data_dir = "proofgate-data"
//! policies = "policies"
//! node_id = "node-1"
//! mock_departments = true
//! tls = true
//! metrics_listen = "127.0.0.1:9464"   # or "off"
//! console = "on"                      # or "off": the console at / on that listener
//! max_in_flight = 4096
//! store_cache_mb = 16                 # sled's page cache of the log (default 16)
//! store_compression = true            # sled's zstd, for a log created from now on (default true)
//! policy_keys = ["keys/policy-signing.vkey"]  # any: every set must be signed
//! crls = ["proofgate-data/certs/ca.crl"]       # revoked certificates are refused
//! certs = "pki"                 # a shared PKI folder (dev-certs --dir pki); default DATA_DIR/certs
//! advertise_address = "https://10.0.0.5:50051"  # published in the node directory
//! mirrors = ["https://10.0.0.6:50051"]  # or ["https://...=VKEY"], or ["off"] (no default mirror in a cluster)
//! mirror_ack = 1                # answer only once K mirrors hold the entry (default: 1 in a cluster, else 0)
//! mirror_ack_timeout_ms = 10000 # then UNAVAILABLE: decided and logged here; retry with the same request_id
//! mirror_peers = 2              # in a cluster, how many next nodes each node mirrors (default 2)
//!
//! [rate_limits.per_role]        # calls per second
//! hall = 5000
//! [rate_limits.per_identity]
//! "hall-wucheng.hall.proofgate" = 800
//!
//! [roles]                       # identities outside the naming convention
//! "ops-console.example.proofgate" = "admin"
//! "jinhua-tax.example.proofgate" = "department:tax"
//!
//! [[witness]]                   # a C2SP witness asked to cosign each checkpoint (repeatable)
//! url = "http://127.0.0.1:7380"
//! vkey = "proofgate-witness+1a2b3c4d+BA..."   # or a file holding it
//!
//! [cluster]                     # cluster mode; absent: one node, no etcd
//! etcd = ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
//! etcd_prefix = "/proofgate/"
//! idempotency_window = "7d"     # how long a request_id is remembered cluster-wide
//! # etcd_ca = "etcd/ca.pem"; etcd_cert = "..."; etcd_key = "..."  (etcd over TLS)
//! ```
//!
//! Cluster flags (`--etcd`, `--etcd-ca`, `--etcd-cert`, `--etcd-key`,
//! `--etcd-prefix`, `--idempotency-window`) override the `[cluster]` table field by field;
//! `--etcd` (or the table's `etcd`) is what turns cluster mode on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::security::{RateLimits, Role, RoleMap};
use crate::server::cosign::{read_vkey, WitnessTarget};
use crate::server::ServeOptions;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {problem}")]
    Invalid {
        file: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("environment variable {name}: {problem}")]
    Env { name: String, problem: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    policies: Option<PathBuf>,
    node_id: Option<String>,
    mock_departments: Option<bool>,
    tls: Option<bool>,
    metrics_listen: Option<MetricsListen>,
    console: Option<Switch>,
    max_in_flight: Option<usize>,
    store_cache_mb: Option<u64>,
    store_compression: Option<bool>,
    policy_keys: Option<Vec<PathBuf>>,
    crls: Option<Vec<PathBuf>>,
    certs: Option<PathBuf>,
    advertise_address: Option<String>,
    mirrors: Option<Vec<String>>,
    mirror_ack: Option<usize>,
    mirror_ack_timeout_ms: Option<u64>,
    mirror_peers: Option<usize>,
    #[serde(default)]
    rate_limits: FileRateLimits,
    #[serde(default)]
    roles: HashMap<String, String>,
    cluster: Option<FileCluster>,
    #[serde(default)]
    witness: Vec<FileWitness>,
}

/// `[[witness]]`: see [`crate::server::cosign::WitnessTarget`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWitness {
    url: String,
    vkey: String,
}

/// `[cluster]`: see [`crate::cluster::ClusterOptions`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    #[serde(default)]
    etcd: Vec<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_prefix: Option<String>,
    idempotency_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimits {
    #[serde(default)]
    per_role: HashMap<String, u32>,
    #[serde(default)]
    per_identity: HashMap<String, u32>,
}

/// Where `proofgate serve` answers GET /metrics unless told otherwise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9464,
));

/// `--metrics-listen` / `metrics_listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "off" {
            return Ok(Self(None));
        }
        text.trim()
            .parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|e| format!("`{text}` is neither an address (HOST:PORT) nor `off`: {e}"))
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `--console` / `console`: `on` or `off` (a TOML boolean too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl std::str::FromStr for Switch {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "on" | "true" => Ok(Self(true)),
            "off" | "false" => Ok(Self(false)),
            other => Err(format!("`{other}` is neither `on` nor `off`")),
        }
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(on) => Ok(Self(on)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub serve: ServeOptions,
    /// Whether the file said `mock_departments` (in cluster mode the
    /// in-process mocks are off unless asked for).
    pub mock_departments_set: bool,
}

/// What the command line says; `None` / `false`: not given, the file, the
/// environment or the default decides.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub policies: Option<PathBuf>,
    pub node_id: Option<String>,
    pub metrics_listen: Option<MetricsListen>,
    /// `--console on|off`.
    pub console: Option<Switch>,
    /// `--policy-key` (repeatable); empty: not given.
    pub policy_keys: Vec<PathBuf>,
    pub no_mock_departments: bool,
    /// `--mock-departments`: start them in cluster mode too.
    pub mock_departments: bool,
    pub insecure_plaintext: bool,
    /// `--crl` (repeatable); empty: not given.
    pub crls: Vec<PathBuf>,
    /// `--etcd URL[,URL…]`; empty: not given.
    pub etcd: Vec<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_prefix: Option<String>,
    /// `--idempotency-window`; None: not given.
    pub idempotency_window: Option<std::time::Duration>,
    /// `--tls-poll-seconds` (0: no polling); None: not given.
    pub tls_poll_seconds: Option<u64>,
    /// `--witness URL=VKEY` (repeatable); empty: not given.
    pub witnesses: Vec<WitnessTarget>,
    /// `--certs DIR`: a shared PKI folder.
    pub certs: Option<PathBuf>,
    /// `--advertise-address URL`.
    pub advertise_address: Option<String>,
    /// `--mirror URL[=VKEY]` (repeatable) or `--mirror off`; empty: not given.
    pub mirrors: Vec<String>,
    /// `--mirror-ack K`.
    pub mirror_ack: Option<usize>,
    /// `--mirror-ack-timeout-ms MS`.
    pub mirror_ack_timeout_ms: Option<u64>,
    /// `--mirror-peers N`.
    pub mirror_peers: Option<usize>,
    /// `--mock-capacity-per-second N`.
    pub mock_capacity_per_second: Option<u32>,
}

/// The whole precedence: defaults < `file` < `env` < `flags`.
pub fn resolve(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    flags: &Flags,
) -> Result<NodeConfig, ConfigError> {
    let mut node = load(file, env)?;
    let mock_departments_set = node.mock_departments_set;
    let serve = &mut node.serve;
    if let Some(v) = flags.listen {
        serve.listen = v;
    }
    if let Some(v) = &flags.data_dir {
        serve.data_dir = v.clone();
    }
    if let Some(v) = &flags.policies {
        serve.policies = Some(v.clone());
    }
    if let Some(v) = &flags.node_id {
        serve.node_id = v.clone();
    }
    if let Some(v) = flags.metrics_listen {
        serve.metrics_listen = v.0;
    }
    if let Some(v) = flags.console {
        serve.console = v.0;
    }
    if !flags.policy_keys.is_empty() {
        serve.policy_keys = flags.policy_keys.clone();
    }
    if !flags.crls.is_empty() {
        serve.crls = flags.crls.clone();
    }
    if !flags.witnesses.is_empty() {
        serve.witnesses = flags.witnesses.clone();
    }
    if let Some(v) = &flags.certs {
        serve.certs = Some(v.clone());
    }
    if let Some(v) = &flags.advertise_address {
        serve.advertise_address = Some(v.clone());
    }
    if !flags.mirrors.is_empty() {
        set_mirrors(serve, &flags.mirrors).map_err(|problem| ConfigError::Invalid {
            file: PathBuf::from("<flags>"),
            line: 0,
            problem,
        })?;
    }
    if let Some(k) = flags.mirror_ack {
        serve.mirror_ack = Some(k);
    }
    if let Some(ms) = flags.mirror_ack_timeout_ms {
        serve.mirror_ack_timeout =
            mirror_ack_timeout(ms).map_err(|problem| ConfigError::Invalid {
                file: PathBuf::from("<flags>"),
                line: 0,
                problem,
            })?;
    }
    if let Some(n) = flags.mirror_peers {
        serve.mirror_peers = n;
    }
    if let Some(n) = flags.mock_capacity_per_second {
        serve.mock_capacity_per_second = Some(n);
    }
    if let Some(seconds) = flags.tls_poll_seconds {
        serve.tls_poll = (seconds > 0).then(|| std::time::Duration::from_secs(seconds));
    }
    if flags.no_mock_departments {
        serve.mock_departments = false;
    }
    if flags.insecure_plaintext {
        serve.tls = false;
    }
    resolve_cluster(&mut serve.cluster, flags).map_err(|problem| ConfigError::Invalid {
        file: file.map_or_else(|| PathBuf::from("<flags>"), Path::to_path_buf),
        line: 0,
        problem,
    })?;
    // In a cluster, departments run as their own processes and register
    // through any node: in-process mocks only when asked for.
    if serve.cluster.is_some() && !mock_departments_set && !flags.no_mock_departments {
        serve.mock_departments = false;
    }
    if flags.mock_departments {
        if flags.no_mock_departments {
            return Err(ConfigError::Invalid {
                file: PathBuf::from("<flags>"),
                line: 0,
                problem: "--mock-departments and --no-mock-departments contradict each other"
                    .into(),
            });
        }
        serve.mock_departments = true;
    }
    Ok(node)
}

/// Cluster flags over the `[cluster]` table, then the whole checked.
fn resolve_cluster(
    cluster: &mut Option<crate::cluster::ClusterOptions>,
    flags: &Flags,
) -> Result<(), String> {
    let given = !flags.etcd.is_empty()
        || flags.etcd_ca.is_some()
        || flags.etcd_cert.is_some()
        || flags.etcd_key.is_some()
        || flags.etcd_prefix.is_some()
        || flags.idempotency_window.is_some();
    if !given {
        return Ok(());
    }
    let mut options = cluster
        .take()
        .unwrap_or_else(|| crate::cluster::ClusterOptions::new(Vec::new()));
    if !flags.etcd.is_empty() {
        options.endpoints = flags.etcd.clone();
    }
    if let Some(v) = &flags.etcd_ca {
        options.ca = Some(v.clone());
    }
    if let Some(v) = &flags.etcd_cert {
        options.cert = Some(v.clone());
    }
    if let Some(v) = &flags.etcd_key {
        options.key = Some(v.clone());
    }
    if let Some(v) = &flags.etcd_prefix {
        options.prefix = v.clone();
    }
    if let Some(v) = flags.idempotency_window {
        options.idempotency_window = v;
    }
    *cluster = Some(options.validated().map_err(|e| e.to_string())?);
    Ok(())
}

/// `--mirror-ack-timeout-ms` / `mirror_ack_timeout_ms`: 100 ms to 20 s (a
/// request's own limit is 30 s, and in a cluster a retry waits at most 24 s
/// for another attempt: the UNAVAILABLE must come before those).
fn mirror_ack_timeout(ms: u64) -> Result<std::time::Duration, String> {
    if !(100..=20_000).contains(&ms) {
        return Err(format!(
            "mirror_ack_timeout_ms must be between 100 and 20000 (ms), not {ms}"
        ));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// `--mirror` / `mirrors` / `PROOFGATE_MIRRORS`: URLs (each optionally
/// `=VKEY`), or `off` alone. The last layer naming any replaces the others.
fn set_mirrors(serve: &mut ServeOptions, items: &[String]) -> Result<(), String> {
    if items.iter().any(|i| i.trim() == "off") {
        if items.len() > 1 {
            return Err("mirrors: `off` stands alone (no URLs beside it)".into());
        }
        serve.mirrors.clear();
        serve.mirror_off = true;
        return Ok(());
    }
    serve.mirrors = items
        .iter()
        .map(|i| i.parse::<crate::server::MirrorTarget>())
        .collect::<Result<_, _>>()?;
    serve.mirror_off = false;
    Ok(())
}

fn parse_role(text: &str) -> Option<Role> {
    match text.split_once(':') {
        Some(("hall", id)) if !id.is_empty() => Some(Role::ServiceHall {
            hall_id: id.to_owned(),
        }),
        Some(("department", id)) if !id.is_empty() => Some(Role::Department {
            department_id: id.to_owned(),
        }),
        None => match text {
            "auditor" => Some(Role::Auditor),
            "citizen-portal" => Some(Role::CitizenPortal),
            "admin" => Some(Role::Admin),
            _ => None,
        },
        _ => None,
    }
}

const ROLE_KINDS: &[&str] = &[
    "hall",
    "department",
    "auditor",
    "citizen-portal",
    "admin",
    "gateway",
];

/// Reads `file` (if any) and applies `env` overrides.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<NodeConfig, ConfigError> {
    let (path, parsed) = match file {
        None => (PathBuf::from("<defaults>"), FileConfig::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                file: path.to_path_buf(),
                source,
            })?;
            let parsed = toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Invalid {
                file: path.to_path_buf(),
                line: e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                    .unwrap_or(0),
                problem: e.message().trim().to_owned(),
            })?;
            (path.to_path_buf(), parsed)
        }
    };
    let invalid = |problem: String| ConfigError::Invalid {
        file: path.clone(),
        line: 0,
        problem,
    };
    let mut serve = ServeOptions {
        metrics_listen: parsed
            .metrics_listen
            .map_or(Some(DEFAULT_METRICS_LISTEN), |m| m.0),
        ..ServeOptions::default()
    };
    if let Some(v) = parsed.listen {
        serve.listen = v;
    }
    if let Some(v) = parsed.data_dir {
        serve.data_dir = v;
    }
    if let Some(v) = parsed.policies {
        serve.policies = Some(v);
    }
    if let Some(v) = parsed.node_id {
        serve.node_id = v;
    }
    let parsed_mock_departments = parsed.mock_departments;
    if let Some(v) = parsed.mock_departments {
        serve.mock_departments = v;
    }
    if let Some(v) = parsed.tls {
        serve.tls = v;
    }
    if let Some(v) = parsed.console {
        serve.console = v.0;
    }
    if let Some(v) = parsed.certs {
        serve.certs = Some(v);
    }
    if let Some(v) = parsed.advertise_address {
        serve.advertise_address = Some(v);
    }
    if let Some(items) = parsed.mirrors {
        if items.is_empty() {
            return Err(invalid(
                "mirrors is empty: name at least one URL, or \"off\", or remove the setting".into(),
            ));
        }
        set_mirrors(&mut serve, &items).map_err(invalid)?;
    }
    if let Some(keys) = parsed.policy_keys {
        if keys.is_empty() {
            return Err(invalid(
                "policy_keys is empty: name at least one policy key file, or remove the setting to load policy sets unsigned".into(),
            ));
        }
        serve.policy_keys = keys;
    }
    if let Some(crls) = parsed.crls {
        if crls.is_empty() {
            return Err(invalid(
                "crls is empty: name at least one revocation list file, or remove the setting"
                    .into(),
            ));
        }
        serve.crls = crls;
    }
    if let Some(k) = parsed.mirror_ack {
        serve.mirror_ack = Some(k);
    }
    if let Some(ms) = parsed.mirror_ack_timeout_ms {
        serve.mirror_ack_timeout = mirror_ack_timeout(ms).map_err(invalid)?;
    }
    if let Some(n) = parsed.mirror_peers {
        serve.mirror_peers = n;
    }
    if let Some(v) = parsed.max_in_flight {
        if v == 0 {
            return Err(invalid("max_in_flight must be at least 1".into()));
        }
        serve.max_in_flight = v;
    }
    if let Some(mb) = parsed.store_cache_mb {
        if mb == 0 || mb > 1 << 20 {
            return Err(invalid(
                "store_cache_mb must be between 1 and 1048576 (MB)".into(),
            ));
        }
        serve.writer.store.cache_bytes = mb * 1024 * 1024;
    }
    if let Some(on) = parsed.store_compression {
        serve.writer.store.compression = on;
    }
    let mut limits = RateLimits::default();
    for (role, rate) in parsed.rate_limits.per_role {
        if !ROLE_KINDS.contains(&role.as_str()) {
            return Err(invalid(format!(
                "rate_limits.per_role: unknown role `{role}` (one of {})",
                ROLE_KINDS.join(", ")
            )));
        }
        if rate == 0 {
            return Err(invalid(format!(
                "rate_limits.per_role.{role} must be at least 1"
            )));
        }
        limits.per_role.insert(role, rate);
    }
    for (identity, rate) in parsed.rate_limits.per_identity {
        if rate == 0 {
            return Err(invalid(format!(
                "rate_limits.per_identity.\"{identity}\" must be at least 1"
            )));
        }
        limits.per_identity.insert(identity, rate);
    }
    serve.rate_limits = limits;
    let mut roles = RoleMap::default();
    for (identity, role) in parsed.roles {
        let parsed_role = parse_role(&role).ok_or_else(|| {
            invalid(format!(
                "roles.\"{identity}\": `{role}` is not a role (hall:ID, department:ID, auditor, citizen-portal, admin)"
            ))
        })?;
        roles = roles.with(&identity, parsed_role);
    }
    serve.roles = roles;
    serve.witnesses = parsed
        .witness
        .into_iter()
        .map(|w| WitnessTarget {
            url: w.url,
            vkey: read_vkey(&w.vkey),
        })
        .collect();
    if let Some(table) = parsed.cluster {
        let options = crate::cluster::ClusterOptions {
            endpoints: table.etcd,
            ca: table.etcd_ca,
            cert: table.etcd_cert,
            key: table.etcd_key,
            prefix: table
                .etcd_prefix
                .unwrap_or_else(|| crate::cluster::DEFAULT_PREFIX.into()),
            idempotency_window: match &table.idempotency_window {
                Some(text) => crate::cluster::parse_window(text)
                    .map_err(|e| invalid(format!("[cluster]: {e}")))?,
                None => crate::cluster::DEFAULT_IDEMPOTENCY_WINDOW,
            },
        };
        serve.cluster = Some(
            options
                .validated()
                .map_err(|e| invalid(format!("[cluster]: {e}")))?,
        );
    }

    let env_error = |name: &str, problem: String| ConfigError::Env {
        name: name.to_owned(),
        problem,
    };
    if let Some(v) = env.get("PROOFGATE_LISTEN") {
        serve.listen = v
            .parse()
            .map_err(|e| env_error("PROOFGATE_LISTEN", format!("{e}")))?;
    }
    if let Some(v) = env.get("PROOFGATE_DATA_DIR") {
        serve.data_dir = PathBuf::from(v);
    }
    if let Some(v) = env.get("PROOFGATE_CERTS") {
        serve.certs = Some(PathBuf::from(v));
    }
    if let Some(v) = env.get("PROOFGATE_ADVERTISE_ADDRESS") {
        serve.advertise_address = Some(v.clone());
    }
    if let Some(v) = env.get("PROOFGATE_MIRRORS") {
        // Comma-separated (a vkey's base64 has no comma).
        let items: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            return Err(env_error(
                "PROOFGATE_MIRRORS",
                "empty: name at least one URL, or off, or unset it".into(),
            ));
        }
        set_mirrors(&mut serve, &items).map_err(|e| env_error("PROOFGATE_MIRRORS", e))?;
    }
    if let Some(v) = env.get("PROOFGATE_MIRROR_ACK") {
        serve.mirror_ack = Some(v.trim().parse().map_err(|_| {
            env_error(
                "PROOFGATE_MIRROR_ACK",
                format!("`{v}` is not a number of mirrors (0 or more)"),
            )
        })?);
    }
    if let Some(v) = env.get("PROOFGATE_MIRROR_ACK_TIMEOUT_MS") {
        let ms = v.trim().parse().map_err(|_| {
            env_error(
                "PROOFGATE_MIRROR_ACK_TIMEOUT_MS",
                format!("`{v}` is not a number of milliseconds"),
            )
        })?;
        serve.mirror_ack_timeout =
            mirror_ack_timeout(ms).map_err(|e| env_error("PROOFGATE_MIRROR_ACK_TIMEOUT_MS", e))?;
    }
    if let Some(v) = env.get("PROOFGATE_MIRROR_PEERS") {
        serve.mirror_peers = v.trim().parse().map_err(|_| {
            env_error(
                "PROOFGATE_MIRROR_PEERS",
                format!("`{v}` is not a number of peers (0 or more)"),
            )
        })?;
    }
    if let Some(v) = env.get("PROOFGATE_POLICIES") {
        serve.policies = Some(PathBuf::from(v));
    }
    if let Some(v) = env.get("PROOFGATE_NODE_ID") {
        serve.node_id = v.clone();
    }
    if let Some(v) = env.get("PROOFGATE_POLICY_KEYS") {
        // PATH-style: the platform's separator (':' on Unix).
        let keys: Vec<PathBuf> = std::env::split_paths(v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if keys.is_empty() {
            return Err(env_error(
                "PROOFGATE_POLICY_KEYS",
                "empty: name at least one policy key file, or unset it".into(),
            ));
        }
        serve.policy_keys = keys;
    }
    if let Some(v) = env.get("PROOFGATE_CRLS") {
        // PATH-style, like PROOFGATE_POLICY_KEYS.
        let crls: Vec<PathBuf> = std::env::split_paths(v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if crls.is_empty() {
            return Err(env_error(
                "PROOFGATE_CRLS",
                "empty: name at least one revocation list file, or unset it".into(),
            ));
        }
        serve.crls = crls;
    }
    if let Some(v) = env.get("PROOFGATE_WITNESSES") {
        let witnesses = v
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(str::parse::<WitnessTarget>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| env_error("PROOFGATE_WITNESSES", e))?;
        if witnesses.is_empty() {
            return Err(env_error(
                "PROOFGATE_WITNESSES",
                "empty: name at least one URL=VKEY, or unset it".into(),
            ));
        }
        serve.witnesses = witnesses;
    }
    if let Some(v) = env.get("PROOFGATE_METRICS_LISTEN") {
        serve.metrics_listen = v
            .parse::<MetricsListen>()
            .map_err(|e| env_error("PROOFGATE_METRICS_LISTEN", e))?
            .0;
    }
    if let Some(v) = env.get("PROOFGATE_CONSOLE") {
        serve.console = v
            .parse::<Switch>()
            .map_err(|e| env_error("PROOFGATE_CONSOLE", e))?
            .0;
    }
    Ok(NodeConfig {
        serve,
        mock_departments_set: parsed_mock_departments.is_some(),
    })
}

/// The `PROOFGATE_*` variables of the process environment.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("PROOFGATE_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keys_come_from_the_last_layer_naming_any_and_never_empty() {
        let file = write("policy_keys = [\"a.vkey\", \"b.vkey\"]\n");
        let config = load(Some(file.path()), &HashMap::new()).unwrap();
        assert_eq!(
            config.serve.policy_keys,
            [PathBuf::from("a.vkey"), PathBuf::from("b.vkey")]
        );
        let env = HashMap::from([("PROOFGATE_POLICY_KEYS".to_owned(), "c.vkey".to_owned())]);
        let config = load(Some(file.path()), &env).unwrap();
        assert_eq!(config.serve.policy_keys, [PathBuf::from("c.vkey")]);
        let flags = Flags {
            policy_keys: vec![PathBuf::from("d.vkey")],
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &env, &flags).unwrap();
        assert_eq!(config.serve.policy_keys, [PathBuf::from("d.vkey")]);
        // Flags that name no key leave the file's keys in force.
        let config = resolve(Some(file.path()), &HashMap::new(), &Flags::default()).unwrap();
        assert_eq!(config.serve.policy_keys.len(), 2);

        let empty = write("policy_keys = []\n");
        let err = load(Some(empty.path()), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("policy_keys is empty"), "{err}");
        let env = HashMap::from([("PROOFGATE_POLICY_KEYS".to_owned(), String::new())]);
        let err = load(Some(file.path()), &env).unwrap_err();
        assert!(err.to_string().contains("PROOFGATE_POLICY_KEYS"), "{err}");
    }

    #[test]
    fn crls_follow_file_then_environment_then_flags_and_are_never_empty() {
        let file = write("crls = [\"a.crl\"]\n");
        let config = load(Some(file.path()), &HashMap::new()).unwrap();
        assert_eq!(config.serve.crls, [PathBuf::from("a.crl")]);
        let env = HashMap::from([("PROOFGATE_CRLS".to_owned(), "b.crl".to_owned())]);
        assert_eq!(
            load(Some(file.path()), &env).unwrap().serve.crls,
            [PathBuf::from("b.crl")]
        );
        let flags = Flags {
            crls: vec![PathBuf::from("c.crl"), PathBuf::from("d.crl")],
            ..Flags::default()
        };
        assert_eq!(
            resolve(Some(file.path()), &env, &flags).unwrap().serve.crls,
            [PathBuf::from("c.crl"), PathBuf::from("d.crl")]
        );
        assert_eq!(
            resolve(Some(file.path()), &env, &Flags::default())
                .unwrap()
                .serve
                .crls,
            [PathBuf::from("b.crl")],
            "flags naming none leave the environment's"
        );
        let empty = write("crls = []\n");
        let err = load(Some(empty.path()), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("crls is empty"), "{err}");
        let env = HashMap::from([("PROOFGATE_CRLS".to_owned(), String::new())]);
        assert!(load(None, &env).is_err());
    }

    #[test]
    fn witnesses_come_from_the_table_the_environment_or_the_flags() {
        let file = write("[[witness]]\nurl = \"http://127.0.0.1:1\"\nvkey = \"w+00000000+BA\"\n[[witness]]\nurl = \"http://127.0.0.1:2\"\nvkey = \"v+00000000+BA\"\n");
        let config = load(Some(file.path()), &HashMap::new()).unwrap();
        assert_eq!(config.serve.witnesses.len(), 2);
        assert_eq!(config.serve.witnesses[1].url, "http://127.0.0.1:2");
        assert_eq!(config.serve.witnesses[1].vkey, "v+00000000+BA");
        let env = HashMap::from([(
            "PROOFGATE_WITNESSES".to_owned(),
            "http://127.0.0.1:3=x+00000000+BA=".to_owned(),
        )]);
        let config = load(Some(file.path()), &env).unwrap();
        assert_eq!(config.serve.witnesses.len(), 1);
        assert_eq!(config.serve.witnesses[0].vkey, "x+00000000+BA=");
        let flags = Flags {
            witnesses: vec!["http://127.0.0.1:4=y+00000000+BA".parse().unwrap()],
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &env, &flags).unwrap();
        assert_eq!(config.serve.witnesses[0].url, "http://127.0.0.1:4");
        let bad = write("[[witness]]\nurl = \"http://127.0.0.1:1\"\n");
        assert!(load(Some(bad.path()), &HashMap::new()).is_err());
        let env = HashMap::from([("PROOFGATE_WITNESSES".to_owned(), "nonsense".to_owned())]);
        assert!(load(None, &env)
            .unwrap_err()
            .to_string()
            .contains("PROOFGATE_WITNESSES"));
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn file_values_then_environment_overrides() {
        let file = write(
            "listen = \"127.0.0.1:6000\"\nnode_id = \"node-7\"\n[rate_limits.per_role]\nhall = 42\n[roles]\n\"ops.example.proofgate\" = \"admin\"\n",
        );
        let env = HashMap::from([("PROOFGATE_NODE_ID".to_owned(), "node-9".to_owned())]);
        let config = load(Some(file.path()), &env).unwrap();
        assert_eq!(config.serve.listen.port(), 6000);
        assert_eq!(config.serve.node_id, "node-9");
        assert_eq!(config.serve.rate_limits.per_role["hall"], 42);
        assert_eq!(
            config.serve.roles.role_of("ops.example.proofgate"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn certs_and_advertise_address_follow_file_then_environment_then_flags() {
        let file = write("certs = \"pki\"\nadvertise_address = \"https://10.0.0.5:50051\"\n");
        let config = load(Some(file.path()), &HashMap::new()).unwrap();
        assert_eq!(config.serve.certs, Some(PathBuf::from("pki")));
        assert_eq!(
            config.serve.advertise_address.as_deref(),
            Some("https://10.0.0.5:50051")
        );
        let env = HashMap::from([
            ("PROOFGATE_CERTS".to_owned(), "shared".to_owned()),
            (
                "PROOFGATE_ADVERTISE_ADDRESS".to_owned(),
                "https://node-2:50051".to_owned(),
            ),
        ]);
        let config = load(Some(file.path()), &env).unwrap();
        assert_eq!(config.serve.certs, Some(PathBuf::from("shared")));
        assert_eq!(
            config.serve.advertise_address.as_deref(),
            Some("https://node-2:50051")
        );
        let flags = Flags {
            certs: Some("flag-pki".into()),
            advertise_address: Some("https://node-3:1".into()),
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &env, &flags).unwrap();
        assert_eq!(config.serve.certs, Some(PathBuf::from("flag-pki")));
        assert_eq!(
            config.serve.advertise_address.as_deref(),
            Some("https://node-3:1")
        );
        let config = resolve(None, &HashMap::new(), &Flags::default()).unwrap();
        assert_eq!(config.serve.certs, None, "default: DATA_DIR/certs");
        assert_eq!(config.serve.advertise_address, None);
    }

    #[test]
    fn mirrors_are_urls_with_an_optional_key_or_off() {
        let file = write("mirrors = [\"https://10.0.0.6:50051\"]\n");
        let config = load(Some(file.path()), &HashMap::new()).unwrap();
        assert_eq!(config.serve.mirrors.len(), 1);
        assert!(!config.serve.mirror_off);
        let env = HashMap::from([("PROOFGATE_MIRRORS".to_owned(), "off".to_owned())]);
        let config = load(Some(file.path()), &env).unwrap();
        assert!(config.serve.mirrors.is_empty() && config.serve.mirror_off);
        let flags = Flags {
            mirrors: vec!["https://a:1".into(), "https://b:2".into()],
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &env, &flags).unwrap();
        assert_eq!(config.serve.mirrors.len(), 2);
        assert!(!config.serve.mirror_off);
        let bad = Flags {
            mirrors: vec!["off".into(), "https://a:1".into()],
            ..Flags::default()
        };
        assert!(resolve(None, &HashMap::new(), &bad).is_err());
        let err = load(Some(write("mirrors = [\"a:1\"]\n").path()), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mirror"), "{err}");
        assert!(load(Some(write("mirrors = []\n").path()), &HashMap::new()).is_err());
    }

    #[test]
    fn mistakes_name_the_line_or_the_variable() {
        let file = write("listen = \"127.0.0.1:6000\"\ncolour = \"red\"\n");
        let err = load(Some(file.path()), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:") && err.contains("colour"), "{err}");
        let file = write("[rate_limits.per_role]\nwizard = 3\n");
        let err = load(Some(file.path()), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("wizard"), "{err}");
        let env = HashMap::from([("PROOFGATE_LISTEN".to_owned(), "nowhere".to_owned())]);
        let err = load(None, &env).unwrap_err().to_string();
        assert!(err.contains("PROOFGATE_LISTEN"), "{err}");
    }

    #[test]
    fn cluster_mode_comes_from_the_table_or_the_flags_and_is_off_by_default() {
        assert!(resolve(None, &HashMap::new(), &Flags::default())
            .unwrap()
            .serve
            .cluster
            .is_none());
        let file = write("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\netcd_prefix = \"/a\"\n");
        let config = resolve(Some(file.path()), &HashMap::new(), &Flags::default()).unwrap();
        let cluster = config.serve.cluster.unwrap();
        assert_eq!(cluster.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(cluster.prefix, "/a/");
        let flags = Flags {
            etcd: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &HashMap::new(), &flags).unwrap();
        let cluster = config.serve.cluster.unwrap();
        assert_eq!(cluster.endpoints.len(), 2);
        assert_eq!(cluster.prefix, "/a/", "the table's prefix stays");
        let config = resolve(None, &HashMap::new(), &flags).unwrap();
        assert_eq!(config.serve.cluster.unwrap().prefix, "/proofgate/");
        let no_url = Flags {
            etcd_prefix: Some("/x/".into()),
            ..Flags::default()
        };
        let err = resolve(None, &HashMap::new(), &no_url).unwrap_err();
        assert!(err.to_string().contains("--etcd"), "{err}");
        let empty = write("[cluster]\netcd = []\n");
        assert!(load(Some(empty.path()), &HashMap::new()).is_err());
    }

    #[test]
    fn in_cluster_mode_the_in_process_mocks_are_off_unless_asked_for() {
        let mocks = |file: Option<&Path>, flags: &Flags| {
            resolve(file, &HashMap::new(), flags)
                .map(|c| c.serve.mock_departments)
                .map_err(|e| e.to_string())
        };
        let etcd = vec!["http://127.0.0.1:2379".to_owned()];
        assert_eq!(mocks(None, &Flags::default()), Ok(true), "one node: on");
        let cluster = Flags {
            etcd: etcd.clone(),
            ..Flags::default()
        };
        assert_eq!(mocks(None, &cluster), Ok(false));
        let asked = Flags {
            etcd: etcd.clone(),
            mock_departments: true,
            ..Flags::default()
        };
        assert_eq!(mocks(None, &asked), Ok(true));
        let file = write("mock_departments = true\n");
        assert_eq!(
            mocks(Some(file.path()), &cluster),
            Ok(true),
            "the file asks"
        );
        let both = Flags {
            mock_departments: true,
            no_mock_departments: true,
            ..Flags::default()
        };
        assert!(mocks(None, &both).is_err_and(|e| e.contains("contradict")));
    }

    #[test]
    fn the_idempotency_window_comes_from_the_table_or_the_flag() {
        let file =
            write("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nidempotency_window = \"36h\"\n");
        let config = resolve(Some(file.path()), &HashMap::new(), &Flags::default()).unwrap();
        assert_eq!(
            config.serve.cluster.unwrap().idempotency_window,
            std::time::Duration::from_secs(36 * 3600)
        );
        let flags = Flags {
            idempotency_window: Some(std::time::Duration::from_secs(600)),
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &HashMap::new(), &flags).unwrap();
        assert_eq!(
            config.serve.cluster.unwrap().idempotency_window,
            std::time::Duration::from_secs(600)
        );
        let config = resolve(
            None,
            &HashMap::new(),
            &Flags {
                etcd: vec!["http://127.0.0.1:1".into()],
                ..Flags::default()
            },
        )
        .unwrap();
        assert_eq!(
            config.serve.cluster.unwrap().idempotency_window,
            crate::cluster::DEFAULT_IDEMPOTENCY_WINDOW
        );
        let bad =
            write("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nidempotency_window = \"7w\"\n");
        let err = resolve(Some(bad.path()), &HashMap::new(), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("idempotency window `7w`"), "{err}");
    }

    #[test]
    fn flags_override_environment_and_metrics_default_on_until_off() {
        let file = write("node_id = \"node-7\"\nmetrics_listen = \"127.0.0.1:9500\"\n");
        let env = HashMap::from([("PROOFGATE_NODE_ID".to_owned(), "node-9".to_owned())]);
        let flags = Flags {
            node_id: Some("node-11".into()),
            ..Flags::default()
        };
        let config = resolve(Some(file.path()), &env, &flags).unwrap();
        assert_eq!(config.serve.node_id, "node-11");
        assert_eq!(config.serve.metrics_listen.map(|a| a.port()), Some(9500));
        let config = resolve(None, &HashMap::new(), &Flags::default()).unwrap();
        assert_eq!(config.serve.metrics_listen, Some(DEFAULT_METRICS_LISTEN));
        let off = Flags {
            metrics_listen: Some("off".parse().unwrap()),
            ..Flags::default()
        };
        let config = resolve(None, &HashMap::new(), &off).unwrap();
        assert_eq!(config.serve.metrics_listen, None);
        assert_eq!(
            config.serve.tls_poll,
            Some(crate::security::tls::TLS_POLL_EVERY)
        );
        let no_poll = Flags {
            tls_poll_seconds: Some(0),
            ..Flags::default()
        };
        let config = resolve(None, &HashMap::new(), &no_poll).unwrap();
        assert_eq!(config.serve.tls_poll, None);
        assert!("nowhere".parse::<MetricsListen>().is_err());
    }

    #[test]
    fn the_console_is_on_until_a_later_layer_turns_it_off() {
        assert!(
            resolve(None, &HashMap::new(), &Flags::default())
                .unwrap()
                .serve
                .console
        );
        let file = write("console = \"off\"\n");
        assert!(
            !load(Some(file.path()), &HashMap::new())
                .unwrap()
                .serve
                .console
        );
        let file_bool = write("console = false\n");
        assert!(
            !load(Some(file_bool.path()), &HashMap::new())
                .unwrap()
                .serve
                .console
        );
        let env = HashMap::from([("PROOFGATE_CONSOLE".to_owned(), "on".to_owned())]);
        assert!(load(Some(file.path()), &env).unwrap().serve.console);
        let off = Flags {
            console: Some("off".parse().unwrap()),
            ..Flags::default()
        };
        assert!(
            !resolve(Some(file.path()), &env, &off)
                .unwrap()
                .serve
                .console
        );
        let env = HashMap::from([("PROOFGATE_CONSOLE".to_owned(), "maybe".to_owned())]);
        let err = load(None, &env).unwrap_err().to_string();
        assert!(
            err.contains("PROOFGATE_CONSOLE") && err.contains("maybe"),
            "{err}"
        );
        let bad = write("console = \"maybe\"\n");
        let err = load(Some(bad.path()), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("maybe"), "{err}");
    }
}
