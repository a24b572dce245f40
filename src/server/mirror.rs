//! Verified mirrors of other nodes' logs (`serve --mirror URL[=VKEY]`, and
//! in a cluster a peer from the node directory by default), and the pull
//! that `audit restore` shares with them.
//!
//! Each round asks the peer's AuditService (as this node's identity, a
//! gateway identity, which may read it) for the newest checkpoint of the
//! origin, checks it and pulls the entries it adds into a [`MirrorLog`]
//! under `DATA_DIR/mirrors/<origin>/`: see [`crate::audit::MirrorLog`] for
//! what is checked before anything is stored. A fork stops that log's
//! mirroring, loudly (an error line and `proofgate_mirror_fork{origin}`);
//! other failures (peer down, a bad answer) are retried next round.
//!
//! The key: `--mirror URL=VKEY` pins it; `--mirror URL` trusts the key the
//! peer serves on first contact (and pins it in the mirror store); in a
//! cluster the node directory gives it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{error, info, warn};

use super::audit::Logs;
use crate::audit::{
    mirror_identity, AuditReader, AuditStore, Hash, MirrorError, MirrorLog, Standing,
};
use crate::metrics::Metrics;
use crate::pb::audit_service_client::AuditServiceClient;
use crate::pb::{GetCheckpointRequest, GetConsistencyProofRequest, GetEntriesRequest};
use crate::security::tls::NodeTls;
use crate::security::{IdentityHeader, GATEWAY_IDENTITY};

/// How often the peers to mirror are looked up, and how long a mirror
/// waits after a failed round before the next.
pub const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// A mirror asks its peer for the next checkpoint with a long poll of this
/// length: a new checkpoint is pulled as soon as it is durable there, so the
/// peer's acknowledgements (`--mirror-ack`) wait for one round trip and one
/// flush here, not for a timer.
pub const LONG_POLL: Duration = Duration::from_secs(10);
/// Entries asked for per GetEntries call (each chunk is checked, then stored).
pub const MIRROR_CHUNK: u64 = 10_000;
/// The folder of mirror stores in a data folder.
pub const MIRRORS_DIR: &str = "mirrors";
/// Bound on one call to a peer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An AuditService client; in plaintext mode it names itself in a header
/// (ignored by a TLS node, which reads the certificate).
pub type AuditClient = AuditServiceClient<InterceptedService<Channel, IdentityHeader>>;

/// `--mirror URL[=VKEY]`: a node whose own log to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    pub url: String,
    /// The origin's verifier key; None: trust the key the peer serves on
    /// first contact.
    pub vkey: Option<String>,
}

impl std::str::FromStr for MirrorTarget {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (url, vkey) = match text.split_once('=') {
            Some((url, vkey)) => (url, Some(vkey.trim().to_owned())),
            None => (text, None),
        };
        if !super::valid_advertise_address(url) {
            return Err(format!(
                "--mirror `{text}`: give the node's URL, e.g. https://10.0.0.6:50051, optionally =VKEY"
            ));
        }
        if let Some(vkey) = &vkey {
            crate::audit::NoteVerifier::from_vkey(vkey)
                .map_err(|e| format!("--mirror `{text}`: the verifier key: {e}"))?;
        }
        Ok(Self {
            url: url.to_owned(),
            vkey,
        })
    }
}

/// Why one round of pulling failed.
#[derive(Debug, Error)]
pub enum PullError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("{url}: {status}")]
    Rpc { url: String, status: tonic::Status },
    #[error("{url}: {problem}")]
    Connect { url: String, problem: String },
    #[error("{url}: {problem}")]
    BadAnswer { url: String, problem: String },
    #[error("{url}: no answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { url: String },
}

impl PullError {
    pub fn is_fork(&self) -> bool {
        matches!(self, PullError::Mirror(e) if e.is_fork())
    }
}

/// A client of the AuditService at `url`: mutual TLS through `tls` (the
/// node's own, reloaded, certificate; the peer must be a gateway of the
/// PKI) or, without, plaintext naming `identity` in a header.
pub fn node_client(
    url: &str,
    tls: Option<&NodeTls>,
    identity: &str,
) -> Result<AuditClient, PullError> {
    let channel = node_channel(url, tls).map_err(|problem| PullError::Connect {
        url: url.to_owned(),
        problem,
    })?;
    Ok(AuditServiceClient::with_interceptor(
        channel,
        IdentityHeader::new(identity),
    ))
}

/// A lazy channel from this node to another node at `url` (`https://` with
/// `tls`): the node's own certificate, reloaded, is presented, and the peer
/// must present a gateway certificate of the PKI (every node certificate
/// names `gateway.proofgate`). Plaintext (`http://`) without `tls`.
pub fn node_channel(url: &str, tls: Option<&NodeTls>) -> Result<Channel, String> {
    node_channel_expecting(url, tls, GATEWAY_IDENTITY)
}

/// [`node_channel`], with the certificate name the peer must present (a
/// node's own `<node-id>.gateway.proofgate`, when the caller knows which
/// node it means to reach).
pub fn node_channel_expecting(
    url: &str,
    tls: Option<&NodeTls>,
    server_identity: &str,
) -> Result<Channel, String> {
    let channel = match tls {
        Some(tls) => {
            let authority = url
                .strip_prefix("https://")
                .ok_or_else(|| "with TLS the URL must be https://".to_owned())?;
            let peer = Arc::new(Mutex::new(None));
            Endpoint::from_shared(format!("http://{}", authority.trim_end_matches('/')))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect_with_connector_lazy(tls.connector(server_identity, peer))
        }
        None => Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    };
    Ok(channel)
}

/// A client over an open channel (e.g. `security::connect` with a client
/// certificate), naming `identity` for plaintext peers.
pub fn client_over(channel: Channel, identity: &str) -> AuditClient {
    AuditServiceClient::with_interceptor(channel, IdentityHeader::new(identity))
}

async fn bounded<T>(
    url: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, PullError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(PullError::Rpc {
            url: url.to_owned(),
            status,
        }),
        Err(_) => Err(PullError::Timeout {
            url: url.to_owned(),
        }),
    }
}

fn hashes(url: &str, raw: Vec<Vec<u8>>) -> Result<Vec<Hash>, PullError> {
    raw.into_iter()
        .map(|h| {
            Hash::try_from(h.as_slice()).map_err(|_| PullError::BadAnswer {
                url: url.to_owned(),
                problem: "a proof hash is not 32 bytes".into(),
            })
        })
        .collect()
}

/// The newest checkpoint the peer serves for `origin` (empty: its own log):
/// its note, and the verifier key it names.
pub async fn peer_checkpoint(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
) -> Result<crate::pb::Checkpoint, PullError> {
    bounded(
        url,
        client.get_checkpoint(GetCheckpointRequest {
            origin: origin.to_owned(),
            ..Default::default()
        }),
    )
    .await
}

async fn consistency(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, PullError> {
    let proof = bounded(
        url,
        client.get_consistency_proof(GetConsistencyProofRequest {
            old_size,
            new_size,
            origin: origin.to_owned(),
        }),
    )
    .await?;
    hashes(url, proof.hashes)
}

/// One round: the newest checkpoint of `origin` at `url`, checked against
/// `log` (signature, consistency), then the entries it adds, pulled in
/// chunks, each checked before it is stored. Returns the verified size.
pub async fn pull(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    log: &MirrorLog,
) -> Result<u64, PullError> {
    let served = peer_checkpoint(client, url, origin).await?;
    pull_to(client, url, origin, log, served).await
}

/// The newest checkpoint of the peer's own log once it is larger than
/// `held` (a long poll of at most [`LONG_POLL`]), telling the peer that
/// this mirror holds its log, verified and durable, up to `held`, with the
/// signed root `root`: the acknowledgement `serve --mirror-ack` waits for.
pub async fn next_checkpoint(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    held: u64,
    root: Vec<u8>,
) -> Result<crate::pb::Checkpoint, PullError> {
    bounded(
        url,
        client.get_checkpoint(GetCheckpointRequest {
            origin: origin.to_owned(),
            mirrored_size: held,
            mirrored_root: root,
            wait_beyond_size: held,
            wait_ms: LONG_POLL.as_millis() as u32,
            ..Default::default()
        }),
    )
    .await
}

/// [`pull`] from a checkpoint the peer served: checked, then the entries it
/// adds. Returns the verified size.
pub async fn pull_to(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    log: &MirrorLog,
    served: crate::pb::Checkpoint,
) -> Result<u64, PullError> {
    // One round at a time, counting an append of an aborted round that is
    // still running: the size read below is what it left.
    let mut round = log.round().await;
    let checkpoint = match log.check_signature(&served.note) {
        Ok(checkpoint) => checkpoint,
        Err(e) if served.verifier_key != log.verifier_key() => {
            return Err(MirrorError::KeyChanged {
                origin: log.origin().to_owned(),
                pinned: log.verifier_key().to_owned(),
                served: format!("{} ({e})", served.verifier_key),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let have = log.store().tree_size().map_err(MirrorError::from)?;
    let proof = if have > 0 && checkpoint.size > have {
        consistency(client, url, origin, have, checkpoint.size).await?
    } else {
        Vec::new()
    };
    let from = match log.check_consistency(&checkpoint, &proof)? {
        Standing::Behind => {
            if checkpoint.size == have {
                // Entries stored in chunks earlier: seal them with this note.
                log.store_checkpoint(&checkpoint, &served.note)?;
            }
            return Ok(log.verified_size().map_err(MirrorError::from)?);
        }
        Standing::Ahead { from } => from,
    };
    let mut at = from;
    while at < checkpoint.size {
        let end = checkpoint.size.min(at.saturating_add(MIRROR_CHUNK));
        let entries = fetch_entries(client, url, origin, at, end, checkpoint.size).await?;
        let chunk_end = at + entries.len() as u64;
        let to_checkpoint = if chunk_end < checkpoint.size {
            consistency(client, url, origin, chunk_end, checkpoint.size).await?
        } else {
            Vec::new()
        };
        // Hashing, compressing and flushing up to MIRROR_CHUNK entries (and
        // regrouping an old store) is blocking work: off the runtime that
        // answers the halls, with the round lock, which comes back with the
        // result (or is released when the append ends, if this task is
        // aborted meanwhile).
        let (appending, signed, note) = (log.clone(), checkpoint.clone(), served.note.clone());
        let (held, appended) = tokio::task::spawn_blocking(move || {
            let appended = appending.append(&signed, &note, at, &entries, &to_checkpoint);
            (round, appended)
        })
        .await
        .map_err(|e| {
            MirrorError::from(crate::audit::StoreError::Io(std::io::Error::other(
                format!("the mirror's append stopped: {e}"),
            )))
        })?;
        round = held;
        at = appended?;
    }
    Ok(log.verified_size().map_err(MirrorError::from)?)
}

/// Entries `start..end` of `origin` from the peer, unchecked (possibly
/// fewer: a peer sends at most so many per call, but at least one: its
/// checkpoint of `size` says they exist).
async fn fetch_entries(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    start: u64,
    end: u64,
    size: u64,
) -> Result<Vec<Vec<u8>>, PullError> {
    let mut stream = bounded(
        url,
        client.get_entries(GetEntriesRequest {
            start,
            end,
            origin: origin.to_owned(),
        }),
    )
    .await?;
    let mut entries = Vec::with_capacity(end.saturating_sub(start).min(MIRROR_CHUNK) as usize);
    loop {
        let next = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| PullError::Timeout {
                url: url.to_owned(),
            })?
            .map_err(|status| PullError::Rpc {
                url: url.to_owned(),
                status,
            })?;
        let Some(entry) = next else { break };
        let expected = start + entries.len() as u64;
        if entry.index != expected {
            return Err(PullError::BadAnswer {
                url: url.to_owned(),
                problem: format!("sent entry {} where {expected} was due", entry.index),
            });
        }
        entries.push(entry.entry);
        if start + entries.len() as u64 == end {
            break;
        }
    }
    if entries.is_empty() {
        return Err(PullError::BadAnswer {
            url: url.to_owned(),
            problem: format!("no entries from {start} though its checkpoint has {size}"),
        });
    }
    Ok(entries)
}

/// Most key rotations followed in one go (A→B→C… while the mirror was away).
const MAX_ROTATIONS: usize = 16;

/// The origin serves a checkpoint (`served`) its pinned key does not sign:
/// follow it only through rotations the log recorded (`audit rotate-key`):
/// each KeyRotated entry, signed by the key pinned then, is the last entry
/// of a checkpoint that key signed. Pulls up to that checkpoint (all checked
/// as usual), pins the rotation's new key, and goes on until the pinned key
/// signs `served`. Returns whether a key was followed.
pub async fn follow_rotations(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    log: &mut MirrorLog,
    served: &crate::pb::Checkpoint,
) -> Result<bool, PullError> {
    let mut followed = false;
    for _ in 0..MAX_ROTATIONS {
        if log.check_signature(&served.note).is_ok() {
            return Ok(followed);
        }
        let held = log.verified_size().map_err(MirrorError::from)?;
        let (rotated_at, new_vkey) = find_rotation(client, url, origin, log, held, served).await?;
        if rotated_at > held {
            let old_checkpoint = bounded(
                url,
                client.get_checkpoint(GetCheckpointRequest {
                    origin: origin.to_owned(),
                    tree_size: rotated_at,
                    ..Default::default()
                }),
            )
            .await?;
            pull_to(client, url, origin, log, old_checkpoint).await?;
        }
        log.follow_rotation(&new_vkey)?;
        followed = true;
    }
    Err(MirrorError::KeyChanged {
        origin: origin.to_owned(),
        pinned: log.verifier_key().to_owned(),
        served: format!(
            "{} (more than {MAX_ROTATIONS} rotations)",
            served.verifier_key
        ),
    }
    .into())
}

/// The next rotation from the pinned key: (the tree size just after its
/// entry, its new key). Located in unchecked entries from `held` on (or the
/// last entry held); checked afterwards, through the old key's checkpoint.
async fn find_rotation(
    client: &mut AuditClient,
    url: &str,
    origin: &str,
    log: &MirrorLog,
    held: u64,
    served: &crate::pb::Checkpoint,
) -> Result<(u64, String), PullError> {
    let rotation_from = |bytes: &[u8]| {
        use prost::Message;
        match crate::pb::AuditEntry::decode(bytes).ok()?.event? {
            crate::pb::audit_entry::Event::KeyRotated(r)
                if r.previous_verifier_key == log.verifier_key() =>
            {
                Some(r.new_verifier_key)
            }
            _ => None,
        }
    };
    if held > 0 {
        if let Some(new_vkey) = log
            .store()
            .entry(held - 1)
            .map_err(MirrorError::from)?
            .and_then(|bytes| rotation_from(&bytes))
        {
            return Ok((held, new_vkey));
        }
    }
    let mut at = held;
    while at < served.tree_size {
        let entries = fetch_entries(
            client,
            url,
            origin,
            at,
            served.tree_size.min(at + MIRROR_CHUNK),
            served.tree_size,
        )
        .await?;
        for (i, bytes) in entries.iter().enumerate() {
            if let Some(new_vkey) = rotation_from(bytes) {
                return Ok((at + i as u64 + 1, new_vkey));
            }
        }
        at += entries.len() as u64;
    }
    Err(MirrorError::KeyChanged {
        origin: origin.to_owned(),
        pinned: log.verifier_key().to_owned(),
        served: format!(
            "{} (its checkpoint is not signed by the pinned key, and the log records no rotation from it after entry {held})",
            served.verifier_key
        ),
    }
    .into())
}

/// The folder of `origin`'s mirror store in `data_dir`: the origin with
/// anything but a-z, 0-9, '-' and '.' written as `_XX` (hex).
pub fn mirror_path(data_dir: &Path, origin: &str) -> PathBuf {
    let mut name = String::with_capacity(origin.len());
    for b in origin.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("_{b:02x}"));
        }
    }
    data_dir.join(MIRRORS_DIR).join(name)
}

/// What the node mirrors, and how it reaches the peers.
pub(super) struct MirrorPlan {
    pub targets: Vec<MirrorTarget>,
    /// Cluster mode and not `--mirror off`: mirror the next `peers` nodes
    /// in the directory (by node id, wrapping around).
    pub cluster: Option<crate::cluster::ClusterOptions>,
    pub peers: usize,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub tls: Option<NodeTls>,
    /// This node's identity (plaintext mode: named in a header).
    pub identity: String,
}

/// One mirrored origin: None once stopped (a fork, or a key that changed);
/// it is still served as it is. The lock keeps two followers of one origin
/// (e.g. a node that moved to another address) from appending at once.
type Mirrored = Option<Arc<tokio::sync::Mutex<MirrorLog>>>;

/// What the followers share.
struct Shared {
    plan: MirrorPlan,
    logs: Logs,
    metrics: Metrics,
    mirrored: Mutex<BTreeMap<String, Mirrored>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the mirror stores already in the data folder and serves them (a
/// node serves what it mirrored even when the origin is gone), then follows
/// every peer to mirror, each on its own task.
pub(super) fn start(plan: MirrorPlan, logs: Logs, metrics: Metrics) -> Option<JoinHandle<()>> {
    let mut mirrored: BTreeMap<String, Mirrored> = BTreeMap::new();
    if let Ok(dirs) = std::fs::read_dir(plan.data_dir.join(MIRRORS_DIR)) {
        for dir in dirs.filter_map(Result::ok) {
            let path = dir.path();
            let name = dir.file_name().to_string_lossy().into_owned();
            if let Some(store) = crate::audit::compaction_leftover_of(&name) {
                // A partial or previous copy: never served or appended to.
                // (The store itself, if any, refuses to open while the
                // previous copy is beside it, and says what to do.)
                warn!(folder = %path.display(), "left by an interrupted `proofgate audit compact` of the mirror `{store}`: not opened (a `.compacting` copy is removed by the next `audit compact`; for a `.before-compact` folder, see the error the store gives)");
                continue;
            }
            let opened = AuditStore::open(&path).and_then(|store| {
                mirror_identity(&store).map(|identity| identity.map(|i| (store, i)))
            });
            match opened {
                Ok(Some((store, (origin, vkey)))) => {
                    logs.add_mirror(&origin, AuditReader::mirrored(store.clone(), vkey.clone()));
                    let verified = store
                        .latest_checkpoint()
                        .ok()
                        .flatten()
                        .map_or(0, |(size, _)| size);
                    let log = match MirrorLog::over(store.clone(), &origin, &vkey) {
                        Ok(log) => {
                            metrics.mirror_pull(&origin, "ok", verified);
                            Some(Arc::new(tokio::sync::Mutex::new(log)))
                        }
                        Err(e) => {
                            error!(%origin, error = %e, "mirror stays stopped; it is still served as it is");
                            let result = if e.is_fork() { "fork" } else { "error" };
                            metrics.mirror_pull(&origin, result, verified);
                            None
                        }
                    };
                    mirrored.insert(origin, log);
                }
                Ok(None) => warn!(path = %path.display(), "not a mirror store; ignored"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "mirror store cannot be opened; ignored")
                }
            }
        }
    }
    if plan.targets.is_empty() && plan.cluster.is_none() && mirrored.is_empty() {
        return None;
    }
    let shared = Arc::new(Shared {
        plan,
        logs,
        metrics,
        mirrored: Mutex::new(mirrored),
    });
    Some(tokio::spawn(run(shared)))
}

/// One peer to follow: where, which origin, which key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Peer {
    url: String,
    /// Empty: the peer's own log, whatever its origin (learnt on contact).
    origin: String,
    vkey: Option<String>,
}

/// Looks up the peers to mirror every [`MIRROR_EVERY`] and keeps one
/// follower task per peer; a peer that leaves the list (in a cluster: no
/// longer among the next live nodes) is no longer followed. The followers
/// belong to this task: when it is aborted (the node stops), so are they.
async fn run(shared: Arc<Shared>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut followers: BTreeMap<Peer, tokio::task::AbortHandle> = BTreeMap::new();
    // The last failure to read the node directory, logged once.
    let mut directory_problem: Option<String> = None;
    let mut every = tokio::time::interval(MIRROR_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let plan = &shared.plan;
        let mut peers: Vec<Peer> = plan
            .targets
            .iter()
            .map(|t| Peer {
                url: t.url.clone(),
                origin: String::new(),
                vkey: t.vkey.clone(),
            })
            .collect();
        if let Some(cluster) = &plan.cluster {
            match crate::cluster::list_nodes(cluster).await {
                Ok(nodes) => {
                    if directory_problem.take().is_some() {
                        info!("node directory readable again");
                    }
                    peers.extend(
                        successors(&plan.node_id, &nodes, plan.peers)
                            .into_iter()
                            .map(|next| Peer {
                                url: next.address.clone(),
                                origin: next.origin.clone(),
                                vkey: Some(next.vkey.clone()),
                            }),
                    );
                }
                Err(e) => {
                    let problem = e.to_string();
                    if directory_problem.as_deref() != Some(problem.as_str()) {
                        warn!(error = %problem, "node directory unreadable; following the peers already known");
                        directory_problem = Some(problem);
                    }
                    continue;
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        followers.retain(|peer, task| {
            let keep = peers.contains(peer) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for peer in peers {
            if let std::collections::btree_map::Entry::Vacant(slot) = followers.entry(peer) {
                let task = tasks.spawn(follow(Arc::clone(&shared), slot.key().clone()));
                slot.insert(task);
            }
        }
    }
}

/// The next `n` live nodes after `own` by node id (wrapping around), not
/// `own`.
fn successors<'a>(
    own: &str,
    nodes: &'a [crate::cluster::ListedNode],
    n: usize,
) -> Vec<&'a crate::cluster::NodeRecord> {
    let mut live: Vec<_> = nodes
        .iter()
        .filter(|n| n.live && n.record.node_id != own)
        .map(|n| &n.record)
        .collect();
    live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let first = live
        .iter()
        .position(|n| n.node_id.as_str() > own)
        .unwrap_or(0);
    let len = live.len();
    live.rotate_left(first.min(len));
    live.truncate(n);
    live
}

/// Follows one peer: rounds back to back (each waits in a long poll for the
/// peer's next checkpoint); after a failed round, waits [`MIRROR_EVERY`].
async fn follow(shared: Arc<Shared>, peer: Peer) {
    let plan = &shared.plan;
    // An address this node cannot call (e.g. http:// with TLS on) stays
    // unusable: said once, looked at again now and then.
    let mut client = loop {
        match node_client(&peer.url, plan.tls.as_ref(), &plan.identity) {
            Ok(client) => break client,
            Err(e) => {
                warn!(error = %e, "mirror peer unusable");
                tokio::time::sleep(KEY_CHANGED_BACKOFF * 10).await;
            }
        }
    };
    let mut follower = Follower {
        shared: &shared,
        peer,
        origin: None,
        problem: None,
        backoff: MIRROR_EVERY,
    };
    loop {
        if !follower.round(&mut client).await {
            tokio::time::sleep(std::mem::replace(&mut follower.backoff, MIRROR_EVERY)).await;
        }
    }
}

/// After a key the mirror cannot follow, the next try waits this long (the
/// search for a rotation reads the log from the mirrored size on).
const KEY_CHANGED_BACKOFF: Duration = Duration::from_secs(30);

struct Follower<'a> {
    shared: &'a Shared,
    peer: Peer,
    /// The origin the peer serves, once known.
    origin: Option<(String, String)>,
    /// The last failure logged, so a peer down for an hour is one line.
    problem: Option<String>,
    /// How long to wait after a failed round.
    backoff: Duration,
}

impl Follower<'_> {
    fn failed(&mut self, origin: &str, problem: String) {
        if self.problem.as_deref() != Some(problem.as_str()) {
            warn!(%origin, url = %self.peer.url, error = %problem, "mirror round failed; retrying every {}s", MIRROR_EVERY.as_secs());
            self.problem = Some(problem);
        }
    }

    /// The origin and key to follow: given, or learnt on first contact.
    async fn identify(&mut self, client: &mut AuditClient) -> Option<(String, String)> {
        if let Some(known) = &self.origin {
            return Some(known.clone());
        }
        let pinned = |origin: &str| {
            lock(&self.shared.mirrored)
                .get(origin)
                .and_then(|m| m.as_ref().map(Arc::clone))
        };
        let peer = &self.peer;
        let known = if !peer.origin.is_empty() && peer.vkey.is_some() {
            (peer.origin.clone(), peer.vkey.clone().unwrap_or_default())
        } else {
            match peer_checkpoint(client, &peer.url, &peer.origin).await {
                Ok(served) => {
                    let origin = crate::audit::parse_checkpoint(&served.note)
                        .map(|c| c.origin)
                        .unwrap_or_default();
                    if origin.is_empty() {
                        self.failed("?", "it serves a checkpoint without an origin".into());
                        return None;
                    }
                    if origin == crate::security::log_origin(&self.shared.plan.node_id) {
                        // A copy on this node's own disk guards against nothing.
                        self.failed(
                            &origin,
                            "it serves this node's own log: not mirrored".into(),
                        );
                        return None;
                    }
                    // After first contact a URL given without a key keeps
                    // the pinned one.
                    let vkey = match (&peer.vkey, pinned(&origin)) {
                        (Some(vkey), _) => vkey.clone(),
                        (None, Some(log)) => log.lock().await.verifier_key().to_owned(),
                        (None, None) => served.verifier_key,
                    };
                    (origin, vkey)
                }
                Err(e) => {
                    self.failed("?", e.to_string());
                    return None;
                }
            }
        };
        self.origin = Some(known.clone());
        Some(known)
    }

    /// The mirror log of `origin`, opened (and served) on first use.
    fn log(&self, origin: &str, vkey: &str) -> Mirrored {
        let shared = self.shared;
        let mut mirrored = lock(&shared.mirrored);
        if let Some(log) = mirrored.get(origin) {
            return log.clone();
        }
        let path = mirror_path(&shared.plan.data_dir, origin);
        // Only the parent: the store's own folder is made by the open, after
        // it checked that no interrupted compaction left the store aside.
        let folder = path.parent().unwrap_or(&path);
        let opened = std::fs::create_dir_all(folder)
            .map_err(|e| {
                MirrorError::from(crate::audit::StoreError::Corrupt(format!(
                    "{}: {e}",
                    folder.display()
                )))
            })
            .and_then(|_| Ok(AuditStore::open(&path)?));
        let store = match opened {
            Ok(store) => store,
            Err(MirrorError::Store(e @ crate::audit::StoreError::HalfCompacted { .. })) => {
                // Said once: it needs the operator, with the node stopped.
                error!(%origin, error = %e, "mirror store left aside by an interrupted compaction; not mirrored until it is put right and the node restarted");
                mirrored.insert(origin.to_owned(), None);
                return None;
            }
            Err(e) => {
                error!(%origin, error = %e, "mirror store cannot be opened");
                return None;
            }
        };
        let log = match MirrorLog::over(store.clone(), origin, vkey) {
            Ok(log) => {
                info!(%origin, url = %self.peer.url, %vkey, path = %path.display(), "mirroring a log");
                shared
                    .logs
                    .add_mirror(origin, AuditReader::mirrored(store, vkey.to_owned()));
                Some(Arc::new(tokio::sync::Mutex::new(log)))
            }
            Err(e) => {
                error!(%origin, error = %e, "not mirroring this log");
                let result = if e.is_fork() { "fork" } else { "error" };
                shared.metrics.mirror_pull(origin, result, 0);
                None
            }
        };
        mirrored.insert(origin.to_owned(), log.clone());
        log
    }

    /// One round: tell the peer what this mirror holds, wait for its next
    /// checkpoint, pull and check what it adds. True: go on at once; false:
    /// wait before the next round (a failure, or mirroring stopped: a fork
    /// or a key that changed, which an operator must look at).
    async fn round(&mut self, client: &mut AuditClient) -> bool {
        let Some((origin, vkey)) = self.identify(client).await else {
            return false;
        };
        let Some(log) = self.log(&origin, &vkey) else {
            self.failed(&origin, "mirroring this log is stopped".into());
            return false;
        };
        let metrics = &self.shared.metrics;
        let (held, root) = {
            let log = log.lock().await;
            // Not while an aborted round's append is still flushing: only
            // what is durable is acknowledged.
            let _round = log.round().await;
            log.verified().unwrap_or_default()
        };
        // A long poll of the peer's own log that acknowledges `held`.
        let served = next_checkpoint(client, &self.peer.url, &origin, held, root).await;
        let pulled = match served {
            Ok(served) => {
                let mut log = log.lock().await;
                let url = &self.peer.url;
                // Signed by another key: followed only through rotations the
                // log recorded, each signed by the key pinned before it.
                let rotated = follow_rotations(client, url, &origin, &mut log, &served).await;
                if let Ok(true) = rotated {
                    info!(%origin, vkey = %log.verifier_key(), "mirror followed the origin's key rotation");
                    self.shared.logs.add_mirror(
                        &origin,
                        AuditReader::mirrored(log.store().clone(), log.verifier_key().to_owned()),
                    );
                    self.origin = Some((origin.clone(), log.verifier_key().to_owned()));
                }
                match rotated {
                    Ok(_) => pull_to(client, url, &origin, &log, served)
                        .await
                        .map(|size| (size, log.store().clone())),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match pulled {
            Ok((size, store)) => {
                metrics.mirror_pull(&origin, "ok", size);
                // Reads of the origin's applications find them by this index
                // (brought up to date by a read too, if this fails).
                // Blocking work after a catch-up: off the runtime.
                let indexed =
                    tokio::task::spawn_blocking(move || crate::audit::index_mirrored(&store))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|done| done.map_err(|e| e.to_string()));
                if let Err(e) = indexed {
                    warn!(%origin, error = %e, "mirror's application index not updated");
                }
                if self.problem.take().is_some() {
                    info!(%origin, "mirror rounds succeed again");
                }
                // An empty log is not waited on by the long poll: pace it.
                size > 0
            }
            Err(e) if e.is_fork() => {
                error!(%origin, url = %self.peer.url, error = %e, "MIRROR REFUSED A FORK: mirroring this log stopped");
                metrics.mirror_pull(&origin, "fork", held);
                // Served as it is (the verified history); no longer pulled.
                lock(&self.shared.mirrored).insert(origin, None);
                false
            }
            Err(e) => {
                if matches!(e, PullError::Mirror(MirrorError::KeyChanged { .. })) {
                    self.backoff = KEY_CHANGED_BACKOFF;
                }
                self.failed(&origin, e.to_string());
                metrics.mirror_pull(&origin, "error", held);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_mirrors_its_next_live_nodes_wrapping_around() {
        let listed = |id: &str, live: bool| crate::cluster::ListedNode {
            record: crate::cluster::NodeRecord {
                node_id: id.into(),
                ..Default::default()
            },
            lease: String::new(),
            lease_ttl_s: None,
            live,
        };
        let nodes = [
            listed("node-3", true),
            listed("node-1", true),
            listed("node-4", false),
            listed("node-2", true),
        ];
        let ids = |own: &str, n: usize| -> Vec<String> {
            successors(own, &nodes, n)
                .into_iter()
                .map(|r| r.node_id.clone())
                .collect()
        };
        assert_eq!(ids("node-1", 2), ["node-2", "node-3"]);
        assert_eq!(ids("node-2", 2), ["node-3", "node-1"]);
        assert_eq!(ids("node-3", 2), ["node-1", "node-2"]);
        assert_eq!(ids("node-3", 1), ["node-1"]);
        assert_eq!(
            ids("node-3", 5),
            ["node-1", "node-2"],
            "never itself, never a dead node"
        );
        assert!(ids("node-1", 0).is_empty());
    }

    #[test]
    fn targets_take_an_optional_key_and_paths_name_the_origin() {
        let t: MirrorTarget = "https://10.0.0.6:50051".parse().unwrap();
        assert_eq!(t.vkey, None);
        assert!("10.0.0.6:50051".parse::<MirrorTarget>().is_err());
        assert!("https://10.0.0.6:50051=nonsense"
            .parse::<MirrorTarget>()
            .is_err());
        assert_eq!(
            mirror_path(Path::new("d"), "proofgate/node-2"),
            Path::new("d/mirrors/proofgate_2fnode-2")
        );
    }
}
