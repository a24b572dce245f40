//! The command line, as clap derive types: `main` parses [`Cli`] and hands
//! each [`Command`] to one function of [`crate::cli`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Flags, MetricsListen, Switch};
use crate::server;
use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "proofgate",
    version,
    about = "Data-verification gateway of a certificate-free city"
)]
pub struct Cli {
    /// Log lines as JSON instead of text. RUST_LOG sets the filter (default: info).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and matched once: the size of the largest variant
// (serve's options) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run a gateway node. With no arguments: sled in ./proofgate-data, policies
    /// from ./policies (or, without that folder, the sample catalog compiled
    /// in), mock departments started in-process on loopback ports, metrics on
    /// 127.0.0.1:9464.
    Serve(ServeArgs),
    /// Validate a node configuration file (with the PROOFGATE_* environment) and print the result.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create a development CA, its (empty, signed) revocation list ca.crl and
    /// certificates for the gateway, nodes node-1 to node-3, halls, every
    /// mock department, an auditor, a citizen portal and an admin; or issue,
    /// re-issue or revoke one.
    DevCerts(DevCertsArgs),
    /// Run one built-in mock department standalone.
    MockDepartment {
        /// public-security, civil-affairs, human-resources, provident-fund,
        /// market-regulation, natural-resources, health or education.
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Gateway to register with and report finished verifications to; in
        /// a cluster, several nodes `URL,URL,…` (the next is tried when one is
        /// down or UNAVAILABLE).
        #[arg(long, default_value = "https://127.0.0.1:50051")]
        gateway: String,
        /// Certificates folder holding <name>.department.proofgate.pem/.key and ca.pem.
        #[arg(long, default_value = "proofgate-data/certs")]
        certs: PathBuf,
        /// No TLS (the gateway must run plaintext too). For development.
        #[arg(long)]
        insecure_plaintext: bool,
        /// Calls per second the department announces (its quota for the
        /// gateway, with TLS, is twice that) [default: its fixture's, 3000
        /// or 5000]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        capacity_per_second: Option<u32>,
    },
    /// Work with policy sets.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Offline audit tools: work on a data folder (server stopped) or an exported file.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The reform's figures, computed from a (stopped) node's log; with
    /// --cluster, the sum of every node's figures (GetStatistics, as the
    /// certs folder's admin).
    Stats {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: ClusterAuditArgs,
    },
    /// Create the node's signing and pseudonym keys in DATA_DIR/keys, and
    /// write the log's verifier key to DATA_DIR/log.vkey (for witnesses).
    Keygen {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The node the log belongs to: its origin is proofgate/NODE_ID.
        #[arg(long, default_value = server::DEFAULT_NODE_ID)]
        node_id: String,
    },
    /// Run a C2SP transparency-log witness (tlog-witness, cosignature/v1):
    /// POST /add-checkpoint cosigns a log's checkpoint only if it is
    /// consistent with what it cosigned before. Prints its vkey (also in
    /// DATA_DIR/witness.vkey).
    Witness(WitnessArgs),
    /// Drive SubmitApplication against a running gateway and report applications/s and latency.
    Bench(BenchArgs),
    /// Cluster mode: look at the nodes registered in etcd.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

/// Where the cluster's etcd is (`serve --etcd …` takes the same options).
#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated or repeated (e.g.
    /// http://127.0.0.1:2379). Turns cluster mode on.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub etcd: Vec<String>,
    /// CA of the etcd members' certificates (etcd over TLS; https:// URLs).
    #[arg(long, value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, value_name = "PEM")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (with --etcd-cert).
    #[arg(long, value_name = "PEM")]
    pub etcd_key: Option<PathBuf>,
    /// Every key of this cluster lives under it [default: /proofgate/]
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// How long a request's reservation is kept across the cluster: a retry
    /// of the same request_id within it gets the first decision (e.g. 7d,
    /// 36h, 90m) [default: 7d]
    #[arg(long, value_name = "DURATION", value_parser = crate::cluster::parse_window)]
    pub idempotency_window: Option<std::time::Duration>,
}

impl EtcdArgs {
    /// The options, checked (exit 64 when wrong).
    pub fn options(&self) -> Result<crate::cluster::ClusterOptions, crate::cluster::ClusterError> {
        crate::cluster::ClusterOptions {
            endpoints: self.etcd.clone(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            prefix: self
                .etcd_prefix
                .clone()
                .unwrap_or_else(|| crate::cluster::DEFAULT_PREFIX.into()),
            idempotency_window: self
                .idempotency_window
                .unwrap_or(crate::cluster::DEFAULT_IDEMPOTENCY_WINDOW),
        }
        .validated()
    }
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The nodes registered in etcd: liveness (lease), address, log origin,
    /// tree size, policy version, verifier key.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[arg(long)]
        json: bool,
    },
}

// No doc comment here: the `DevCerts` variant's is the subcommand's help.
#[derive(clap::Args)]
pub struct DevCertsArgs {
    /// Folder of the CA and certificates.
    #[arg(long, default_value = "proofgate-data/certs")]
    pub dir: PathBuf,
    /// Issue a certificate for this identity (<name>.<role>.proofgate, role one of
    /// hall, department, auditor, citizen-portal, admin, gateway) with the
    /// existing CA. A node certificate is <node-id>.gateway.proofgate (node-1
    /// to node-3 are made with the CA); it also names gateway.proofgate.
    /// An identity that has one gets a new one (key included): how a node's
    /// certificate is rotated; a running node picks it up by itself.
    #[arg(
        long,
        visible_alias = "reissue",
        value_name = "IDENTITY",
        group = "dev_certs_action"
    )]
    pub issue: Option<String>,
    /// Add this identity's current certificate to DIR/ca.crl (earlier
    /// revocations kept, CRL number incremented, current for 30 days).
    #[arg(long, value_name = "IDENTITY", group = "dev_certs_action")]
    pub revoke: Option<String>,
    /// With --revoke: that identity's certificate of this serial (hex), the
    /// current one or one a re-issue kept as IDENTITY.SERIAL.pem.
    #[arg(long, value_name = "HEX", requires = "revoke")]
    pub serial: Option<String>,
    /// Re-sign DIR/ca.crl with the same revocations for another 30 days
    /// (before its nextUpdate passes, or nodes refuse every certificate).
    #[arg(long, group = "dev_certs_action")]
    pub renew_crl: bool,
}

/// `--cluster --etcd URL[,URL…] [--certs DIR]`: the commands that read
/// every node of a cluster, online.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterAuditArgs {
    /// Every node of the cluster, found in the node directory in etcd
    /// (--etcd), over gRPC (a node that is down: from a node mirroring it).
    #[arg(long, group = "LogSource", requires = "etcd")]
    pub cluster: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With --cluster: the PKI folder; calls are made as its
    /// auditor.auditor.proofgate (verify) or admin.admin.proofgate (stats).
    #[arg(
        long,
        value_name = "DIR",
        requires = "cluster",
        default_value = "proofgate-data/certs"
    )]
    pub certs: PathBuf,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct LogSource {
    /// A node's data folder (its server must be stopped).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A file written by `proofgate audit export`.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Write every entry and checkpoint, with the verifier key, to one file.
    Export {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Recompute every leaf and root; check every checkpoint signature; report the first bad index.
    /// With --cluster: every log of the cluster, online, one row per log.
    Verify {
        #[command(flatten)]
        source: LogSource,
        /// The verifier key you trust (C2SP vkey text, or a file holding it).
        /// Without it, the key carried by the log is used.
        #[arg(long, conflicts_with = "cluster")]
        vkey: Option<String>,
        /// A witness you trust (its cosignature/v1 vkey, or a file holding
        /// it); repeatable. With --quorum.
        #[arg(long = "witness", value_name = "VKEY", requires = "quorum")]
        witnesses: Vec<String>,
        /// Fail unless the newest checkpoint carries valid cosignatures by
        /// at least this many of the --witness keys.
        #[arg(long, value_name = "K", requires = "witnesses")]
        quorum: Option<usize>,
        /// Check the signatures of only the newest checkpoint, the last of
        /// each key and one per 10,000 entries (the newest signature over
        /// the recomputed root already authenticates every entry). Default:
        /// every checkpoint's signature, on all cores. Every checkpoint's
        /// size and root are checked against the tree either way.
        #[arg(long)]
        sample_signatures: bool,
        /// Also hash the same entry bytes in memory (RFC 6962 leaf hashes,
        /// one core) and print that raw SHA-256 rate beside verify's.
        #[arg(long)]
        timing: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: ClusterAuditArgs,
    },
    /// Re-derive every decision from the logged policy and signed answers; report differences.
    Replay {
        #[command(flatten)]
        source: LogSource,
        #[arg(long)]
        json: bool,
    },
    /// Recompute every projection (applications, request keys, tickets, spot
    /// checks, dishonesty records, data sources, access index) from the
    /// entries of a stopped node's data folder; report what differs (exit 65).
    Rebuild {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Where a stopped node's disk goes: keys and bytes per key kind (entries,
    /// projections, request keys, access index, Merkle nodes...) against the
    /// bytes of the store's files (sled's overhead), per application.
    Usage {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Give back the disk of a stopped node's log, and of each log it
    /// mirrors (D/mirrors/*), that sled holds but no longer uses: each
    /// store is copied, checked, and put in its place.
    Compact {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Rebuild a node's data folder from a mirror (or from the node itself):
    /// entries, checkpoint, Merkle nodes, then projections, each chunk
    /// verified against the newest checkpoint before it is written.
    Restore(RestoreArgs),
    /// Replace the checkpoint key; the change is logged and signed by the old key.
    RotateKey {
        #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = server::DEFAULT_NODE_ID)]
        node_id: String,
    },
}

// No doc comment here: the `Restore` variant's is the subcommand's help.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// A node that mirrors the log (or serves it as its own), https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The log to restore, e.g. proofgate/node-1.
    #[arg(long)]
    pub origin: String,
    /// The data folder to write; it must be empty or absent.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The PKI folder; the call is made as its auditor.auditor.proofgate.
    #[arg(long, value_name = "DIR")]
    pub certs: PathBuf,
    /// The origin's verifier key (text or a file holding it, e.g. the lost
    /// node's log.vkey). Without it, the key the mirror serves is trusted.
    #[arg(long)]
    pub vkey: Option<String>,
    /// A witness key whose cosignature the newest checkpoint must carry
    /// (repeatable; with --quorum).
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// How many of the --witness keys must have cosigned it.
    #[arg(long, value_name = "K")]
    pub quorum: Option<usize>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file; exit 64 naming file and line when it is wrong.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory and print its version digest; also report
    /// departments, queries and verifications nobody serves.
    Check {
        dir: PathBuf,
        /// Compare with the data sources registered in this (stopped) node's
        /// data folder; without it, with the built-in mock departments.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a Jinhua-scale synthetic catalogue (4,052 proofs, ~1,000 matters) for load tests.
    GenerateJinhua {
        out_dir: PathBuf,
        #[arg(long, default_value_t = 4052)]
        proofs: usize,
        #[arg(long, default_value_t = 1000)]
        matters: usize,
    },
    /// Make a policy-signing key pair: DIR/policy-signing.key (private,
    /// owner-only) and DIR/policy-signing.vkey (for `serve --policy-key`).
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The signer's name in the verifier key and in the log.
        #[arg(long, default_value = crate::security::policy_signing::DEFAULT_KEY_NAME)]
        name: String,
    },
    /// Sign a policy folder's version: writes DIR/policy.sig.
    Sign {
        dir: PathBuf,
        /// The private key from `policy keygen`.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// The signer's name [default: from the .vkey beside the key]
        #[arg(long)]
        name: Option<String>,
    },
}

// No doc comment here: the `Serve` variant's is the subcommand's help.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A node configuration file (TOML); PROOFGATE_* variables override it,
    /// flags override both. `proofgate config check FILE` validates one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// [default: 127.0.0.1:50051]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// [default: proofgate-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A policy folder, watched for changes [default: ./policies if it
    /// exists, else the sample catalog compiled into the binary]
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// A policy-signing verifier key (a .vkey file from `policy keygen`);
    /// repeatable. Given any, every policy set must be signed by one.
    #[arg(long = "policy-key", value_name = "VKEYFILE")]
    pub policy_keys: Vec<PathBuf>,
    /// Names this node in application ids and its log's checkpoints [default: node-1].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Prometheus metrics over HTTP on this address (GET /metrics; the
    /// console at / too), or `off` [default: 127.0.0.1:9464]
    #[arg(long)]
    pub metrics_listen: Option<MetricsListen>,
    /// The console at / on the metrics listener: `on` or `off` [default: on]
    #[arg(long, value_name = "on|off")]
    pub console: Option<Switch>,
    /// Do not start the built-in mock departments; real ones register over gRPC.
    #[arg(long)]
    pub no_mock_departments: bool,
    /// Start the built-in mock departments in-process even in cluster mode
    /// (with --etcd they are off by default: run `proofgate mock-department`).
    #[arg(long)]
    pub mock_departments: bool,
    /// No TLS (loopback only; callers name themselves in a header). For development.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// A certificate revocation list (PEM or DER; `dev-certs` writes
    /// certs/ca.crl); repeatable. Revoked client and department certificates
    /// are refused; reloaded on SIGHUP and when the file changes. Once one is
    /// past its nextUpdate, every certificate is refused (fail closed).
    #[arg(long = "crl", value_name = "FILE")]
    pub crls: Vec<PathBuf>,
    /// Cluster mode: join the cluster whose shared state is on this etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// How often the TLS files (certificate, key, CA, CRLs) are checked for
    /// changes, in seconds; 0: never, only SIGHUP reloads them [default: 2]
    #[arg(long, value_name = "SECONDS")]
    pub tls_poll_seconds: Option<u64>,
    /// A C2SP witness to ask to cosign each new checkpoint: its URL, `=`,
    /// its vkey (or a file holding it); repeatable.
    #[arg(long = "witness", value_name = "URL=VKEY")]
    pub witnesses: Vec<crate::server::cosign::WitnessTarget>,
    /// A shared PKI folder (from `dev-certs --dir DIR`) instead of one made
    /// in DATA_DIR/certs. The node presents <node-id>.gateway.proofgate if
    /// DIR holds it, else gateway.proofgate, on its listener and its calls.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// The URL other nodes reach this one at, published in the node
    /// directory [default: https://<bound listen address>]
    #[arg(long, value_name = "URL")]
    pub advertise_address: Option<String>,
    /// Keep a verified copy of this node's log (repeatable): URL, or
    /// URL=VKEY to pin the origin's key (else the key the peer serves on
    /// first contact is pinned). `off`: in a cluster, mirror no peer (by
    /// default, with a shared --certs, each node mirrors the next node in
    /// the directory).
    #[arg(long = "mirror", value_name = "URL[=VKEY]|off")]
    pub mirrors: Vec<String>,
    /// Answer a decision only once K other nodes mirror it (its entry is on
    /// K more disks) [default: 1 in a cluster whose nodes mirror each other
    /// by default (--etcd with --certs, not --mirror off, --mirror-peers >
    /// 0), else 0]
    #[arg(long, value_name = "K")]
    pub mirror_ack: Option<usize>,
    /// How long an answer waits for those mirrors (100–20000); then
    /// UNAVAILABLE ("logged here; retry with the same request_id")
    /// [default: 10000]
    #[arg(long, value_name = "MS")]
    pub mirror_ack_timeout_ms: Option<u64>,
    /// In a cluster, how many next nodes (by node id) each node mirrors
    /// [default: 2]
    #[arg(long, value_name = "N")]
    pub mirror_peers: Option<usize>,
    /// Calls per second each built-in mock department announces (its quota
    /// for the gateway is twice that; benchmarks lift it) [default: its
    /// fixture's, 3000 or 5000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "no_mock_departments")]
    pub mock_capacity_per_second: Option<u32>,
}

impl ServeArgs {
    /// The flags, for [`crate::config::resolve`] (defaults < file < env < flags).
    pub fn flags(&self) -> Flags {
        Flags {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            policies: self.policies.clone(),
            policy_keys: self.policy_keys.clone(),
            node_id: self.node_id.clone(),
            metrics_listen: self.metrics_listen,
            console: self.console,
            no_mock_departments: self.no_mock_departments,
            mock_departments: self.mock_departments,
            insecure_plaintext: self.insecure_plaintext,
            crls: self.crls.clone(),
            etcd: self.etcd.etcd.clone(),
            etcd_ca: self.etcd.etcd_ca.clone(),
            etcd_cert: self.etcd.etcd_cert.clone(),
            etcd_key: self.etcd.etcd_key.clone(),
            etcd_prefix: self.etcd.etcd_prefix.clone(),
            idempotency_window: self.etcd.idempotency_window,
            tls_poll_seconds: self.tls_poll_seconds,
            witnesses: self.witnesses.clone(),
            certs: self.certs.clone(),
            advertise_address: self.advertise_address.clone(),
            mirrors: self.mirrors.clone(),
            mirror_ack: self.mirror_ack,
            mirror_ack_timeout_ms: self.mirror_ack_timeout_ms,
            mirror_peers: self.mirror_peers,
            mock_capacity_per_second: self.mock_capacity_per_second,
        }
    }
}

// No doc comment here: the `Witness` variant's is the subcommand's help.
#[derive(clap::Args)]
pub struct WitnessArgs {
    /// Plain HTTP only on a loopback address; elsewhere give --tls-cert/--tls-key.
    #[arg(long, default_value = "127.0.0.1:7380")]
    pub listen: SocketAddr,
    /// Its key (generated on first start, 0600), vkey and state (sled).
    #[arg(long, default_value = "proofgate-witness")]
    pub data_dir: PathBuf,
    /// Its name in its vkey and cosignatures (a schema-less URL is usual).
    #[arg(long, default_value = server::witness::DEFAULT_WITNESS_NAME)]
    pub name: String,
    /// A log it witnesses: the log's vkey, or a file holding it (a node's
    /// DATA_DIR/log.vkey); repeatable. A file with several lines gives several keys.
    #[arg(long = "log", value_name = "VKEY", required = true)]
    pub logs: Vec<String>,
    /// Serve HTTPS with this certificate (PEM chain), with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

// No doc comment here: the `Bench` variant's is the subcommand's help.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The gateway, or the nodes of a cluster, comma-separated: workers are
    /// spread over them, and a request a node does not answer is sent with
    /// the same request_id to the next node (retries and `replayed` answers
    /// are reported).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL",
        default_value = "https://127.0.0.1:50051"
    )]
    pub endpoint: Vec<String>,
    /// Certificates folder (the load generator is hall-wucheng.hall.proofgate).
    #[arg(long, default_value = "proofgate-data/certs")]
    pub certs: PathBuf,
    /// Talk plaintext to a gateway started with --insecure-plaintext.
    #[arg(long)]
    pub insecure_plaintext: bool,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds per phase (baseline, then submissions).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value = "hpf-withdrawal-mortgage")]
    pub matter: String,
    /// Baseline of plain Query calls straight to these departments, all at
    /// once per application: NAME=URI,NAME=URI,... (default: health checks).
    #[arg(long, value_delimiter = ',')]
    pub fanout: Vec<String>,
    /// Measure etcd instead of a gateway: the etcd members (comma-separated
    /// client URLs, plaintext) that --etcd-txn writes to.
    #[arg(long, value_delimiter = ',', value_name = "URL", requires = "etcd_txn")]
    pub etcd: Vec<String>,
    /// With --etcd: N create-if-absent transactions, one after the other,
    /// each on a new key with a reservation-sized value (keys under
    /// /proofgate/bench/, deleted at the end); prints txn/s, mean, p50, p99.
    #[arg(long, value_name = "N", requires = "etcd")]
    pub etcd_txn: Option<usize>,
    /// With --etcd-txn: B writes nested in each transaction (1-64), as the
    /// nodes batch reservation writes under load.
    #[arg(long, value_name = "B", default_value_t = 1, requires = "etcd_txn")]
    pub etcd_batch: usize,
    /// With --etcd-txn: P µs of idle time before each transaction (not
    /// counted), as a node at concurrency 1 leaves etcd idle while it
    /// decides between its two writes.
    #[arg(long, value_name = "P", default_value_t = 0, requires = "etcd_txn")]
    pub etcd_pause_us: u64,
    /// Disk mode: start a node in-process on a fresh data folder (mutual
    /// TLS, the built-in mock departments), submit N applications of
    /// --matter at --concurrency, stop it cleanly, and report bytes per
    /// application of its folder (`audit usage`) and resident memory.
    /// --endpoint, --certs, --seconds and --fanout do not apply.
    #[arg(long, value_name = "N")]
    pub applications: Option<u64>,
    /// Disk mode: of the N, this many are left pending (a teacher
    /// qualification whose degree verification stays open for an hour).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "applications")]
    pub pending: u64,
    /// Disk mode: the node's data folder (must not exist; kept afterwards).
    /// Default: a temporary folder, removed afterwards unless --keep.
    #[arg(long, requires = "applications")]
    pub data_dir: Option<PathBuf>,
    /// Disk mode: keep the temporary data folder.
    #[arg(long, requires = "applications")]
    pub keep: bool,
    /// Disk mode: sled's page cache of the node's store, in MB (what
    /// `store_cache_mb` sets for `serve`).
    #[arg(long, value_name = "MB", default_value_t = crate::audit::DEFAULT_CACHE_BYTES / (1024 * 1024), requires = "applications")]
    pub cache_mb: u64,
    /// Disk mode: sled's zstd compression of the node's new store (what
    /// `store_compression` sets for `serve`).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, requires = "applications")]
    pub store_compression: bool,
    /// Disk mode, against a node already serving in another process: send
    /// the N applications to --endpoint (with --certs) instead of starting a
    /// node; no folder figures (stop the node, then `audit usage`). The
    /// node's memory is then its own, not the load generator's.
    #[arg(long, requires = "applications", conflicts_with_all = ["data_dir", "keep"])]
    pub external: bool,
    /// With --external: request ids start at disk-K, so that a long run can
    /// be sent in chunks (the pending ones are ids below --pending).
    #[arg(long, value_name = "K", default_value_t = 0, requires = "external")]
    pub first: u64,
    /// With --external: the node's process id; its VmRSS and VmHWM
    /// (/proc/PID/status) are printed after the run.
    #[arg(long, value_name = "PID", requires = "external")]
    pub node_pid: Option<u32>,
    /// The yardstick run before the submissions: `health` (gRPC health
    /// checks to the gateway) or `relay` (a minimal relay started in this
    /// run: same mutual TLS, the matter's department calls to the same
    /// departments as registered at the gateway, no policy, signature
    /// checks or log); the report gives gateway / relay.
    #[arg(long, value_enum, default_value = "health", conflicts_with = "fanout")]
    pub baseline: BenchBaseline,
    /// The catalog the relay reads the matter's department calls from
    /// [default: ./policies if it exists, else the built-in sample catalog].
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
}

/// `bench --baseline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBaseline {
    Health,
    Relay,
}
