//! Test helpers of cluster mode: a real 3-member etcd cluster on free
//! loopback ports in a temp dir, and gateway nodes as child processes of
//! the built binary joined to it with `--etcd`.
//!
//! Without an `etcd` binary (Debian: `apt-get install -y etcd-server`) the
//! tests skip, saying why — except in CI (`CI=true`), where they fail.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use proofgate::cluster::{list_nodes, ClusterOptions, ListedNode};

/// How long a test waits for a condition (etcd healthy, a lease expired, a
/// session lost or regained) before calling it failed: a bound, generous so
/// that a slow machine cannot fail a test, never a measurement.
pub const BOUND: Duration = Duration::from_secs(120);

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH. None (outside CI):
/// skip the test; the reason is printed.
pub fn etcd_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"));
    let works = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(candidate);
    }
    let why = format!(
        "no etcd binary ({} does not run): install it with `apt-get install -y etcd-server`, or set ETCD_BIN",
        candidate.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: cluster tests must run)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct Member {
    args: Vec<String>,
    client_url: String,
    child: Option<Child>,
}

/// A 3-member etcd cluster; killed (and its data removed) on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts three members and waits until the cluster answers a
    /// linearizable read (it has a leader and a quorum). None: no etcd
    /// binary outside CI (skip).
    pub async fn start() -> Option<Self> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let token = format!(
            "proofgate-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".to_owned(),
                    format!("--initial-cluster-token={token}"),
                ];
                Member {
                    args,
                    client_url,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            binary,
            dir,
            members,
        };
        for i in 0..3 {
            cluster.restart(i);
        }
        cluster.wait_healthy().await;
        Some(cluster)
    }

    /// The client URLs, comma-separated, for `--etcd`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn options(&self) -> ClusterOptions {
        ClusterOptions::new(self.members.iter().map(|m| m.client_url.clone()).collect())
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts member `i` on its data dir (a restarted member rejoins;
    /// the --initial-* flags are ignored once the data dir exists).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let log = File::create(self.dir.path().join(format!("m{i}.log"))).expect("member log");
        let child = Command::new(&self.binary)
            .args(&self.members[i].args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    /// Waits until a linearizable read succeeds.
    pub async fn wait_healthy(&self) {
        let options = self.options();
        let started = Instant::now();
        loop {
            if list_nodes(&options).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < BOUND,
                "etcd cluster not healthy within {BOUND:?}; member logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The nodes registered now (default prefix).
    pub async fn nodes(&self) -> Vec<ListedNode> {
        list_nodes(&self.options()).await.expect("etcd answers")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A gateway node process joined to etcd; SIGKILLed on drop.
pub struct Node {
    pub child: Child,
    pub endpoint: String,
    pub data_dir: PathBuf,
    /// The shared PKI folder (`serve --certs`); None: DATA_DIR/certs.
    pub shared_certs: Option<PathBuf>,
    /// More `serve` arguments it was started with (kept by a restart).
    pub extra: Vec<String>,
}

impl Node {
    pub fn certs(&self) -> PathBuf {
        self.shared_certs
            .clone()
            .unwrap_or_else(|| self.data_dir.join("certs"))
    }

    /// The verifier key the node wrote for its log.
    pub fn vkey(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("log.vkey"))
            .expect("log.vkey written at start")
            .trim()
            .to_owned()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node_command(etcd: &str, node_id: &str, data_dir: &Path) -> Command {
    node_command_on(etcd, node_id, data_dir, "127.0.0.1:0", None)
}

fn node_command_on(
    etcd: &str,
    node_id: &str,
    data_dir: &Path,
    listen: &str,
    certs: Option<&Path>,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proofgate"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--policies")
        .arg(super::common::policies_dir())
        .args(["--listen", listen, "--metrics-listen", "off"])
        .args(["--node-id", node_id, "--etcd", etcd]);
    if let Some(certs) = certs {
        command.arg("--certs").arg(certs);
    }
    command.env("RUST_LOG", "info");
    command
}

/// Starts a node and waits until it serves (it prints its address).
pub fn spawn_node(etcd: &str, node_id: &str, data_dir: &Path) -> Node {
    spawn_node_on(etcd, node_id, data_dir, "127.0.0.1:0", None, &[])
}

/// [`spawn_node`] with more `serve` arguments.
pub fn spawn_node_with(etcd: &str, node_id: &str, data_dir: &Path, extra: &[&str]) -> Node {
    spawn_node_on(etcd, node_id, data_dir, "127.0.0.1:0", None, extra)
}

/// Starts a node of a shared PKI (`serve --certs certs`, made by
/// `proofgate dev-certs`: the node presents `<node-id>.gateway.proofgate`).
/// It runs the in-process mock departments (off by default with --etcd),
/// which register in the shared registry.
pub fn spawn_pki_node(etcd: &str, node_id: &str, data_dir: &Path, certs: &Path) -> Node {
    spawn_node_on(
        etcd,
        node_id,
        data_dir,
        "127.0.0.1:0",
        Some(certs),
        &["--mock-departments"],
    )
}

/// [`spawn_pki_node`] without mock departments: it uses those another node
/// registered in the shared registry.
pub fn spawn_pki_node_without_mocks(
    etcd: &str,
    node_id: &str,
    data_dir: &Path,
    certs: &Path,
) -> Node {
    spawn_node_on(etcd, node_id, data_dir, "127.0.0.1:0", Some(certs), &[])
}

/// [`spawn_pki_node_without_mocks`] with more `serve` arguments (kept by a
/// restart).
pub fn spawn_pki_node_with(
    etcd: &str,
    node_id: &str,
    data_dir: &Path,
    certs: &Path,
    extra: &[&str],
) -> Node {
    spawn_node_on(etcd, node_id, data_dir, "127.0.0.1:0", Some(certs), extra)
}

/// Restarts a node that was killed, on its data and its address (so
/// clients' channels reconnect to it by themselves).
pub fn restart_node(etcd: &str, node_id: &str, old: &Node) -> Node {
    let listen = old
        .endpoint
        .split("://")
        .nth(1)
        .unwrap_or(&old.endpoint)
        .to_owned();
    spawn_node_on(
        etcd,
        node_id,
        &old.data_dir,
        &listen,
        old.shared_certs.as_deref(),
        &old.extra.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn spawn_node_on(
    etcd: &str,
    node_id: &str,
    data_dir: &Path,
    listen: &str,
    certs: Option<&Path>,
    extra: &[&str],
) -> Node {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .expect("node log");
    let mut child = node_command_on(etcd, node_id, data_dir, listen, certs)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("proofgate starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("proofgate serving on ") {
                    break rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                }
            }
            _ => {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!("node {node_id} did not start:\n{log}");
            }
        }
    };
    Node {
        child,
        endpoint,
        data_dir: data_dir.to_path_buf(),
        shared_certs: certs.map(Path::to_path_buf),
        extra: extra.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// A shared PKI for a cluster's nodes and its clients: `proofgate dev-certs
/// --dir DIR` (CA, hall/auditor/... certificates, node-1..3).
pub fn dev_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["dev-certs", "--dir"])
        .arg(&certs)
        .output()
        .expect("proofgate dev-certs runs");
    assert!(out.status.success(), "{out:?}");
    certs
}

/// Node data folders that share one pseudonym key (nodes of a cluster
/// compare request digests and pseudonyms made with it), each with its own
/// signing key: `proofgate keygen` for each, then the first's pseudonym key
/// copied to the others.
pub fn share_pseudonym_key(data_dirs: &[&Path]) {
    for data_dir in data_dirs {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let keygen = Command::new(env!("CARGO_BIN_EXE_proofgate"))
            .args(["keygen", "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("proofgate keygen runs");
        assert!(keygen.status.success(), "{keygen:?}");
    }
    let Some((first, rest)) = data_dirs.split_first() else {
        return;
    };
    let seed = first.join("keys").join("pseudonym.key");
    for data_dir in rest {
        let key = data_dir.join("keys").join("pseudonym.key");
        std::fs::remove_file(&key).expect("generated pseudonym key");
        std::fs::copy(&seed, &key).expect("shared pseudonym key");
    }
}

/// Runs a node that is expected to stop by itself; its output.
pub fn run_node_to_end(etcd: &str, node_id: &str, data_dir: &Path) -> Output {
    node_command(etcd, node_id, data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("proofgate runs")
}

/// `proofgate cluster status --etcd … [args]`: its output.
pub fn cluster_status(etcd: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proofgate"))
        .args(["cluster", "status", "--etcd", etcd])
        .args(args)
        .output()
        .expect("proofgate runs")
}
