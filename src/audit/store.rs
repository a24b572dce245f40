//! The sled store behind the log. One tree, keys prefixed by kind, so that a
//! batch (entries + checkpoint + frontier + application projections) is one
//! atomic write: after a crash either all of a batch is there or none.
//!
//! | prefix | key                         | value                          |
//! |--------|-----------------------------|--------------------------------|
//! | `G`    | group (u64 BE)              | entries 16g..16g+16: leaf hashes and encoded AuditEntries, one zstd frame (see `groups`) |
//! | `j`    | first index (u64 BE)        | a chunk of the last, incomplete group: one batch's entries of it, as a group's |
//! | `e`    | index (u64 BE)              | before issue 12, each entry alone: leaf hash (32) then the encoded AuditEntry |
//! | `c`    | tree size (u64 BE)          | signed checkpoint note         |
//! | `m`    | `frontier`                  | Merkle frontier                |
//! | `a`    | application id              | 0, then the indices of its entries (varints); before issue 12: the encoded Application |
//! | `r`    | caller NUL request id       | request digest (32) + app id   |
//! | `t`    | department NUL ticket       | encoded TicketRecord           |
//! | `d`    | department id               | encoded DataSource             |
//! | `n`    | level (u8), index (u64 BE)  | Merkle node: perfect subtree root, levels ≥ 4 only |
//! | `x`    | pseudonym (32), index       | empty: the entry touched this subject |
//! | `s`    | application NUL proof       | encoded SpotCheckRecord: a sampled commitment awaiting its check |
//! | `h`    | pseudonym (32)              | encoded DishonestyRecord       |

use std::path::Path;

use prost::Message;
use thiserror::Error;

use super::groups::{stored_entry, AppendTail, Entries};
use super::merkle::{Frontier, Hash};
use super::proof::{ProofError, SubtreeSource};
use crate::pb::{Application, DataSource};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("audit store: {0}")]
    Sled(#[from] sled::Error),
    #[error("the audit store at {0} is in use by another process (is its server still running? stop it first)")]
    InUse(String),
    #[error("audit store is corrupt: {0}")]
    Corrupt(String),
    #[error("audit store: cannot compress a group of entries")]
    Compress(#[source] std::io::Error),
    #[error("the audit store {0} is being compacted (`proofgate audit compact` is running on it): start the node once it has finished")]
    Compacting(String),
    #[error("a compaction of the audit store {store} stopped half way: {previous} holds the store as it was before. If {store} exists, it is the copy, checked against {previous} before the swap: remove {previous} (or, to keep the original, remove {store} and rename {previous} to {store}); if it does not exist, rename {previous} to {store}")]
    HalfCompacted { store: String, previous: String },
    #[error("audit store: {0}")]
    Io(#[from] std::io::Error),
    /// A write to the store failed earlier: sled may hold in memory what is
    /// not on disk, so nothing more is written or acknowledged from it.
    #[error("audit store: an earlier write failed ({0}), so what it holds in memory may not be on disk: restart the node (sled recovers the durable state)")]
    WriteFailed(String),
}

/// A pending verification, found by the department's ticket.
#[derive(Clone, PartialEq, Message)]
pub struct TicketRecord {
    #[prost(string, tag = "1")]
    pub application_id: String,
    #[prost(string, tag = "2")]
    pub proof_id: String,
    #[prost(int64, tag = "3")]
    pub due_unix_ms: i64,
    /// The subject's pseudonym, so the completion is listed among its accesses.
    #[prost(bytes = "vec", tag = "4")]
    pub subject_pseudonym: Vec<u8>,
    /// Already reported overdue; the department may still complete it.
    #[prost(bool, tag = "5")]
    pub overdue: bool,
}

/// A commitment sampled for a spot check, not yet checked.
#[derive(Clone, PartialEq, Message)]
pub struct SpotCheckRecord {
    #[prost(string, tag = "1")]
    pub matter_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub subject_pseudonym: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub dishonesty_days: u32,
    #[prost(int64, tag = "4")]
    pub committed_unix_ms: i64,
}

/// A false commitment on record for a subject.
#[derive(Clone, PartialEq, Message)]
pub struct DishonestyRecord {
    /// Exclusive end date, YYYY-MM-DD (China Standard Time).
    #[prost(string, tag = "1")]
    pub until: String,
    #[prost(string, tag = "2")]
    pub application_id: String,
    #[prost(string, tag = "3")]
    pub proof_id: String,
}

pub fn spot_check_key(application_id: &str, proof_id: &str) -> Vec<u8> {
    [b"s", application_id.as_bytes(), b"\0", proof_id.as_bytes()].concat()
}

pub fn dishonesty_key(pseudonym: &[u8]) -> Vec<u8> {
    [b"h", pseudonym].concat()
}

fn decode_checkpoint((key, value): (sled::IVec, sled::IVec)) -> Result<(u64, String), StoreError> {
    let size = key
        .get(1..)
        .and_then(|k| <[u8; 8]>::try_from(k).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("checkpoint key is not 9 bytes".into()))?;
    let note = String::from_utf8(value.to_vec())
        .map_err(|_| StoreError::Corrupt("checkpoint is not UTF-8".into()))?;
    Ok((size, note))
}

/// Read side of the store; cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct AuditStore {
    db: sled::Db,
}

pub(super) const FRONTIER_KEY: &[u8] = b"mfrontier";

/// The sled tree of [`AuditStore::note_reservation`].
const RESERVATION_NOTES_TREE: &str = "cluster-reservation-notes";

/// The version of the policy set logged last.
pub const POLICY_VERSION_KEY: &[u8] = b"mpolicy-version";

pub(super) fn entry_key(index: u64) -> [u8; 9] {
    prefixed(b'e', index)
}

pub(super) fn checkpoint_key(size: u64) -> [u8; 9] {
    prefixed(b'c', size)
}

pub(super) fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

/// Subtrees below this level are recomputed from the entries' recorded leaf
/// hashes (at most 2^4 = 16 reads); storing them too would triple the
/// inserts per append.
pub(super) const LOWEST_STORED_NODE_LEVEL: u8 = 4;

/// The value stored for an entry alone before issue 12: its leaf hash, then
/// its bytes (what tests write to stand for such a store).
#[cfg(test)]
pub(super) fn entry_value(leaf: &Hash, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(32 + bytes.len());
    value.extend_from_slice(leaf);
    value.extend_from_slice(bytes);
    value
}

/// Stages one entry at the frontier's next index into `batch`: the entry
/// (with its leaf hash; with its group once the group is complete) and the
/// Merkle nodes it completes (levels ≥ [`LOWEST_STORED_NODE_LEVEL`]). The
/// writer and a mirror both append through here; the caller adds the
/// frontier and the checkpoint. Returns the entry's index.
pub(super) fn stage_entry(
    frontier: &mut Frontier,
    tail: &mut AppendTail,
    leaf: Hash,
    bytes: &[u8],
    batch: &mut sled::Batch,
    nodes: &mut Vec<(u8, u64, Hash)>,
) -> Result<u64, StoreError> {
    let index = frontier.size();
    tail.stage(index, leaf, bytes, batch)?;
    nodes.clear();
    frontier.push_with_nodes(leaf, nodes);
    for (level, node_index, hash) in nodes.iter() {
        if *level >= LOWEST_STORED_NODE_LEVEL {
            batch.insert(&node_key(*level, *node_index)[..], &hash[..]);
        }
    }
    Ok(index)
}

/// The index of an entry key (`e` + u64 BE).
pub(super) fn entry_index(key: &[u8]) -> Result<u64, StoreError> {
    key.get(1..)
        .and_then(|k| <[u8; 8]>::try_from(k).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("an entry, chunk or group key is not 9 bytes".into()))
}

pub(super) fn split_entry(index: u64, value: &[u8]) -> Result<(Hash, &[u8]), StoreError> {
    let (leaf, bytes) = value.split_first_chunk::<32>().ok_or_else(|| {
        StoreError::Corrupt(format!("entry {index} is shorter than its leaf hash"))
    })?;
    Ok((*leaf, bytes))
}

pub(super) fn node_key(level: u8, index: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = b'n';
    key[1] = level;
    key[2..].copy_from_slice(&index.to_be_bytes());
    key
}

pub(super) fn access_key(pseudonym: &[u8; 32], index: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = b'x';
    key[1..33].copy_from_slice(pseudonym);
    key[33..].copy_from_slice(&index.to_be_bytes());
    key
}

pub fn application_key(id: &str) -> Vec<u8> {
    [b"a", id.as_bytes()].concat()
}

pub fn request_key(caller: &str, request_id: &str) -> Vec<u8> {
    [b"r", caller.as_bytes(), b"\0", request_id.as_bytes()].concat()
}

pub fn ticket_key(department: &str, ticket: &str) -> Vec<u8> {
    [b"t", department.as_bytes(), b"\0", ticket.as_bytes()].concat()
}

pub fn data_source_key(department: &str) -> Vec<u8> {
    [b"d", department.as_bytes()].concat()
}

/// How long [`AuditStore::open`] waits for a lock that a handle dropped in
/// this process may still hold (see there). Another process's server holds it
/// for good, and is reported after this wait.
const LOCK_RELEASE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// sled's page cache when nothing else is said: sled's own default is 1 GB,
/// which a node fills as its log grows (227 MB after 54 k applications).
/// 16 MB keeps the writer's working set (the right edge of the tree, the
/// frontier, recent projections) in memory; older entries are read from the
/// OS page cache, which the kernel can take back.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Segment size of stores created from now on (sled's default is 512 KiB):
/// smaller segments are reclaimed sooner once their pages move on, so less
/// dead space is kept. Existing stores keep the size they were made with.
const NEW_STORE_SEGMENT_BYTES: usize = 256 * 1024;

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// zstd compression of what sled writes, for stores created with these
    /// options. A store keeps what it was created with (sled refuses to
    /// change it), whatever is asked here.
    pub compression: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            compression: true,
        }
    }
}

/// The storage parameters sled persisted in `path/conf` when the store was
/// created: (segment size, compression); None for a new store. sled refuses
/// to open a store with other values, so an existing store is always opened
/// with its own.
fn persisted_parameters(path: &Path) -> Option<(usize, bool)> {
    let text = std::fs::read(path.join("conf")).ok()?;
    let text = String::from_utf8_lossy(&text);
    let mut segment = None;
    let mut compression = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("segment_size: ") {
            segment = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("use_compression: ") {
            compression = v.trim().parse().ok();
        }
    }
    Some((segment?, compression?))
}

/// The sled configuration a store at `path` is opened with: its persisted
/// segment size and compression if it exists (sled refuses others), else
/// those of `options` for a new one. Tools that open a store's database
/// raw (tests that tamper with it) use this too.
pub fn sled_config(path: &Path, options: StoreOptions) -> sled::Config {
    let (segment, compression) =
        persisted_parameters(path).unwrap_or((NEW_STORE_SEGMENT_BYTES, options.compression));
    sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_bytes)
        .segment_size(segment)
        .use_compression(compression)
        // zstd level 3: most of the gain of higher levels at a fraction of
        // the writer's time.
        .compression_factor(3)
        // The writer flushes each batch itself; sled's own timer would only
        // add flushes outside the group commit.
        .flush_every_ms(None)
}

impl AuditStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        while_released(|| {
            let (_, previous) = compact_siblings(path);
            if previous.exists() {
                // `compact` holds the original's lock until it is done: a
                // running compaction is not a half-done one to repair.
                if locked_by_another(&previous.join("db")) {
                    return Err(StoreError::Compacting(path.display().to_string()));
                }
                return Err(StoreError::HalfCompacted {
                    store: path.display().to_string(),
                    previous: previous.display().to_string(),
                });
            }
            Ok(Self {
                db: open_db(path, options)?,
            })
        })
    }

    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The frontier as of the last committed batch, checked against the entries.
    pub fn frontier(&self) -> Result<Frontier, StoreError> {
        let frontier = match self.db.get(FRONTIER_KEY)? {
            None => Frontier::default(),
            Some(bytes) => Frontier::from_bytes(&bytes)
                .ok_or_else(|| StoreError::Corrupt("frontier record is malformed".into()))?,
        };
        let size = frontier.size();
        if size > 0 && stored_entry(self, size - 1)?.is_none() {
            return Err(StoreError::Corrupt(format!(
                "tree size is {size} but entry {} is missing",
                size - 1
            )));
        }
        if stored_entry(self, size)?.is_some() {
            return Err(StoreError::Corrupt(format!(
                "entry {size} exists beyond the committed tree size"
            )));
        }
        Ok(frontier)
    }

    pub fn tree_size(&self) -> Result<u64, StoreError> {
        Ok(self.frontier()?.size())
    }

    pub fn entry(&self, index: u64) -> Result<Option<bytes::Bytes>, StoreError> {
        Ok(stored_entry(self, index)?.map(|(_, bytes)| bytes))
    }

    /// Entries `[start, end)` in order.
    pub fn entries(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, bytes::Bytes), StoreError>> + Send + use<> {
        self.entries_with_leaves(start, end)
            .map(|item| item.map(|(index, _, bytes)| (index, bytes)))
    }

    /// Entries `[start, end)` in order, each with the leaf hash recorded when
    /// it was written.
    pub fn entries_with_leaves(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, Hash, bytes::Bytes), StoreError>> + Send + use<> {
        Entries::new(self.clone(), start, end)
    }

    /// The latest checkpoint note, if any batch was committed.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.checkpoint_at_or_below(u64::MAX)
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(&self) -> impl Iterator<Item = Result<(u64, String), StoreError>> + use<> {
        self.db
            .range(checkpoint_key(0)..=checkpoint_key(u64::MAX))
            .map(|item| decode_checkpoint(item?))
    }

    /// The application as of its latest entry, with that entry's receipt.
    pub fn application(&self, id: &str) -> Result<Option<Application>, StoreError> {
        self.db
            .get(application_key(id))?
            .map(|value| self.application_from_value(&value))
            .transpose()
    }

    /// An application from its stored value: the list of its entries,
    /// replayed through [`crate::policy::apply`]; or, in a store written
    /// before issue 12, the encoded application itself.
    pub(super) fn application_from_value(&self, value: &[u8]) -> Result<Application, StoreError> {
        let Some(indices) = super::project::chain_indices(value) else {
            return Application::decode(value)
                .map_err(|e| StoreError::Corrupt(format!("application record: {e}")));
        };
        let mut application = Application::default();
        let mut receipt = None;
        for index in indices {
            let (leaf, bytes) = stored_entry(self, index)?.ok_or_else(|| {
                StoreError::Corrupt(format!("entry {index} of an application is missing"))
            })?;
            let event = crate::pb::AuditEntry::decode(&bytes[..])
                .ok()
                .and_then(|e| e.event)
                .ok_or_else(|| StoreError::Corrupt(format!("entry {index} does not decode")))?;
            if matches!(event, crate::pb::audit_entry::Event::ApplicationDecided(_)) {
                application = Application::default();
            }
            crate::policy::apply(&mut application, &event)
                .map_err(|e| StoreError::Corrupt(format!("entry {index}: {e}")))?;
            receipt = Some(crate::pb::AuditReceipt {
                index,
                leaf_hash: leaf.to_vec(),
            });
        }
        application.receipt = receipt;
        Ok(application)
    }

    /// (request digest, application id) of an earlier request with this key.
    pub fn request(
        &self,
        caller: &str,
        request_id: &str,
    ) -> Result<Option<([u8; 32], String)>, StoreError> {
        let Some(value) = self.db.get(request_key(caller, request_id))? else {
            return Ok(None);
        };
        let (digest, id) = value
            .split_first_chunk::<32>()
            .ok_or_else(|| StoreError::Corrupt("request record is short".into()))?;
        let id = String::from_utf8(id.to_vec())
            .map_err(|_| StoreError::Corrupt("request record is not UTF-8".into()))?;
        Ok(Some((*digest, id)))
    }

    /// Cluster mode: notes that this node reserved a request in etcd and may
    /// log a decision for it that the cluster has not yet marked decided.
    /// Kept in their own sled tree, outside the log and its projections
    /// (`audit rebuild` has nothing to say about them); a note written
    /// before a decision is made durable by the same flush as the decision.
    fn reservation_notes(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(RESERVATION_NOTES_TREE)?)
    }

    /// Notes a reservation (not flushed by itself: the decision's batch
    /// flushes it).
    pub fn note_reservation(&self, caller: &str, request_id: &str) -> Result<(), StoreError> {
        self.reservation_notes()?
            .insert(request_key(caller, request_id), &[])?;
        Ok(())
    }

    /// The reservation is settled (marked decided, or its orphan superseded).
    pub fn forget_reservation(&self, caller: &str, request_id: &str) -> Result<(), StoreError> {
        self.reservation_notes()?
            .remove(request_key(caller, request_id))?;
        Ok(())
    }

    /// Every noted reservation: (caller, request id).
    pub fn noted_reservations(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.reservation_notes()?.iter() {
            let (key, _) = item?;
            let rest = key.get(1..).unwrap_or_default();
            let Some(split) = rest.iter().position(|b| *b == 0) else {
                return Err(StoreError::Corrupt(
                    "reservation note has no separator".into(),
                ));
            };
            let text = |bytes: &[u8]| {
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| StoreError::Corrupt("reservation note is not UTF-8".into()))
            };
            out.push((text(&rest[..split])?, text(&rest[split + 1..])?));
        }
        Ok(out)
    }

    pub fn ticket(
        &self,
        department: &str,
        ticket: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        self.decode(&ticket_key(department, ticket))
    }

    pub fn data_sources(&self) -> Result<Vec<DataSource>, StoreError> {
        self.db
            .scan_prefix(b"d")
            .map(|item| {
                let (_, value) = item?;
                DataSource::decode(value.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("data source record: {e}")))
            })
            .collect()
    }

    fn decode<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StoreError> {
        self.db
            .get(key)?
            .map(|v| {
                M::decode(v.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("record {:?}: {e}", key.first())))
            })
            .transpose()
    }

    /// Size of the store on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Keys and bytes of one key kind (first key byte) of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindUsage {
    pub kind: &'static str,
    pub prefix: char,
    pub keys: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// What the store holds, by key kind, against what it takes on disk.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Usage {
    pub kinds: Vec<KindUsage>,
    /// Bytes of the files under the store's folder (what `du` counts).
    pub on_disk: u64,
}

impl Usage {
    pub fn payload(&self) -> u64 {
        self.kinds.iter().map(|k| k.key_bytes + k.value_bytes).sum()
    }
}

/// The key kinds of the table at the top of this file.
fn kind_name(prefix: u8) -> &'static str {
    match prefix {
        b'j' => "entries (the incomplete group)",
        b'e' => "entries (one a record, before issue 12)",
        b'G' => "entries (groups of 16)",
        b'c' => "checkpoints",
        b'm' => "bookkeeping (frontier, meta)",
        b'a' => "application projections",
        b'r' => "request keys",
        b't' => "tickets",
        b'd' => "data sources",
        b'n' => "Merkle nodes",
        b'x' => "access index",
        b's' => "spot checks",
        b'h' => "dishonesty records",
        _ => "other",
    }
}

fn folder_bytes(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

impl AuditStore {
    /// Keys and bytes per key kind, one pass over the store, and the bytes of
    /// the folder `path` it lives in: where a data folder's disk goes.
    pub fn usage(&self, path: &Path) -> Result<Usage, StoreError> {
        let mut kinds: std::collections::BTreeMap<u8, KindUsage> = Default::default();
        for item in self.db.iter() {
            let (key, value) = item?;
            let prefix = key.first().copied().unwrap_or(0);
            let kind = kinds.entry(prefix).or_insert_with(|| KindUsage {
                kind: kind_name(prefix),
                prefix: char::from(prefix),
                ..Default::default()
            });
            kind.keys += 1;
            kind.key_bytes += key.len() as u64;
            kind.value_bytes += value.len() as u64;
        }
        let on_disk = folder_bytes(path)
            .map_err(|e| StoreError::Corrupt(format!("cannot size {}: {e}", path.display())))?;
        let mut kinds: Vec<KindUsage> = kinds.into_values().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.key_bytes + k.value_bytes));
        Ok(Usage { kinds, on_disk })
    }
}

/// Bytes copied per batch by [`compact`].
const COMPACT_BATCH_BYTES: usize = 4 << 20;

/// The folders [`compact`] writes beside the store at `path`: the copy
/// being made, and the store as it was, kept until the copy is in place
/// and checked. While the latter exists the store does not open.
/// Whether another open file description holds the lock sled takes on a
/// store's `db` file (an exclusive `flock`). Ours, if we get it, is
/// released at once.
fn locked_by_another(db_file: &Path) -> bool {
    match std::fs::File::open(db_file) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn compact_siblings(path: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    (
        path.with_file_name(format!("{name}{COMPACTING}")),
        path.with_file_name(format!("{name}{BEFORE_COMPACT}")),
    )
}

const COMPACTING: &str = ".compacting";
const BEFORE_COMPACT: &str = ".before-compact";

/// The store that a folder [`compact`] leaves beside it belongs to: `X` for
/// `X.compacting` (a copy being made) and `X.before-compact` (the store as
/// it was); None for any other name. Neither is a store to open.
pub fn compaction_leftover_of(name: &str) -> Option<&str> {
    name.strip_suffix(COMPACTING)
        .or_else(|| name.strip_suffix(BEFORE_COMPACT))
}

/// Rewrites the stopped store at `path` into a fresh sled database, every
/// tree and key as it is, and puts it in its place: sled reuses the space
/// of dead pages but never gives it back, so a store keeps the largest
/// size it ever needed. The copy is checked (sled's checksum of every tree)
/// before it replaces the original, and again once in place. The original
/// stays locked until then, and is kept beside the store (the store does
/// not open meanwhile) until the copy is checked in place. Returns the
/// bytes of the folder before and after.
pub fn compact(path: &Path) -> Result<(u64, u64), StoreError> {
    let size_of = |p: &Path| folder_bytes(p).map_err(StoreError::Io);
    let (fresh, previous) = compact_siblings(path);
    if !path.exists() && !previous.exists() {
        // Opening would make an empty store there.
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no audit store at {} (is --data-dir the node's data folder?)",
                path.display()
            ),
        )));
    }
    let source = AuditStore::open(path)?;
    let before = size_of(path)?;
    let compression = persisted_parameters(path).is_none_or(|(_, c)| c);
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    let checksum = {
        let target = sled_config(
            &fresh,
            StoreOptions {
                compression,
                ..StoreOptions::default()
            },
        )
        .open()?;
        for name in source.db.tree_names() {
            let from = source.db.open_tree(&name)?;
            let to = target.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut bytes = 0;
            for item in from.iter() {
                let (key, value) = item?;
                bytes += key.len() + value.len();
                batch.insert(key, value);
                if bytes >= COMPACT_BATCH_BYTES {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    // sled holds what is not flushed in memory.
                    to.flush()?;
                    bytes = 0;
                }
            }
            to.apply_batch(batch)?;
        }
        target.flush()?;
        let (want, got) = (source.db.checksum()?, target.checksum()?);
        if want != got {
            drop(target);
            std::fs::remove_dir_all(&fresh)?;
            return Err(StoreError::Corrupt(format!(
                "the compacted copy differs from the store (checksum {got:08x}, not {want:08x}); the store is unchanged"
            )));
        }
        want
    };
    // From the first rename to the removal of `previous`, the store does
    // not open (see `open_once`): no node starts on a missing or unchecked
    // store. The original stays locked by `source` throughout.
    std::fs::rename(path, &previous)?;
    std::fs::rename(&fresh, path)?;
    let in_place = while_released(|| Ok(open_db(path, StoreOptions::default())?.checksum()?));
    if !matches!(in_place, Ok(sum) if sum == checksum) {
        // The original goes back, whatever failed: only a copy checked in
        // place may replace it.
        std::fs::rename(path, &fresh)?;
        std::fs::rename(&previous, path)?;
        return Err(match in_place {
            Err(e) => e,
            Ok(_) => StoreError::Corrupt(
                "the compacted copy read back differently; the store is unchanged".into(),
            ),
        });
    }
    drop(source);
    // sled's background jobs may still write into the original a moment
    // after its handle is gone.
    while_released(|| Ok(std::fs::remove_dir_all(&previous)?))?;
    Ok((before, size_of(path)?))
}

/// The sled database at `path`, its lock held by another handle told as
/// [`StoreError::InUse`].
fn open_db(path: &Path, options: StoreOptions) -> Result<sled::Db, StoreError> {
    sled_config(path, options).open().map_err(|e| match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::Other
                && io.to_string().contains("could not acquire lock") =>
        {
            StoreError::InUse(path.display().to_string())
        }
        _ => StoreError::Sled(e),
    })
}

/// Runs `step` again, within [`LOCK_RELEASE_BOUND`], while it fails as a
/// sled handle dropped in this process would make it fail: sled releases
/// its lock and files only when the handle's last background job ends, on
/// sled's own threads, a moment after the handle is gone (the store still
/// in use, its folder not yet empty). Another process's server holds the
/// lock for good, and is reported after this wait.
fn while_released<T>(mut step: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_BOUND;
    loop {
        match step() {
            Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {}
            Err(StoreError::Io(io))
                if io.kind() == std::io::ErrorKind::DirectoryNotEmpty
                    && std::time::Instant::now() < deadline => {}
            result => return result,
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl AuditStore {
    /// A bookkeeping value written by a batch (prefix `m`).
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }
}

impl AuditStore {
    /// The leaf hash recorded for entry `index` when it was written.
    pub fn leaf_hash(&self, index: u64) -> Result<Option<Hash>, StoreError> {
        Ok(stored_entry(self, index)?.map(|(leaf, _)| leaf))
    }

    /// Indexes of the entries that touched `pseudonym`, after `after` (exclusive).
    pub fn accesses(
        &self,
        pseudonym: &[u8; 32],
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<u64, StoreError>> + use<> {
        let start = match after {
            Some(i) => access_key(pseudonym, i.saturating_add(1)),
            None => access_key(pseudonym, 0),
        };
        self.db
            .range(start..=access_key(pseudonym, u64::MAX))
            .map(|item| {
                let (key, _) = item?;
                key[33..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("access key is not 41 bytes".into()))
            })
    }
}

impl SubtreeSource for AuditStore {
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        let store_error = |e: StoreError| ProofError::Store(e.to_string());
        if level < LOWEST_STORED_NODE_LEVEL {
            let width = 1u64 << level;
            let start = index << level;
            let leaves: Vec<Hash> = self
                .entries_with_leaves(start, start + width)
                .map(|e| e.map(|(_, leaf, _)| leaf))
                .collect::<Result<_, _>>()
                .map_err(store_error)?;
            if leaves.len() as u64 != width {
                return Err(ProofError::Store(format!(
                    "entries {start}..{} are missing",
                    start + width
                )));
            }
            return Ok(super::merkle::root_of(&leaves));
        }
        let value = self
            .db
            .get(node_key(level, index))
            .map_err(|e| ProofError::Store(e.to_string()))?
            .ok_or_else(|| ProofError::Store(format!("node {level}/{index} is missing")))?;
        value
            .as_ref()
            .try_into()
            .map_err(|_| ProofError::Store(format!("node {level}/{index} is not 32 bytes")))
    }
}

impl AuditStore {
    /// The checkpoint note stored for `size`, if any.
    pub fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.db
            .get(checkpoint_key(size))?
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| StoreError::Corrupt("checkpoint is not UTF-8".into()))
            })
            .transpose()
    }
}

impl AuditStore {
    /// Every open ticket: (department, ticket, record).
    pub fn tickets(&self) -> Result<Vec<(String, String, TicketRecord)>, StoreError> {
        self.db
            .scan_prefix(b"t")
            .map(|item| {
                let (key, value) = item?;
                let rest = &key[1..];
                let split = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| StoreError::Corrupt("ticket key without separator".into()))?;
                let department = String::from_utf8_lossy(&rest[..split]).into_owned();
                let ticket = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
                let record = TicketRecord::decode(value.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("ticket record: {e}")))?;
                Ok((department, ticket, record))
            })
            .collect()
    }
}

impl AuditStore {
    pub fn dishonesty(&self, pseudonym: &[u8]) -> Result<Option<DishonestyRecord>, StoreError> {
        self.decode(&dishonesty_key(pseudonym))
    }

    pub fn spot_check(
        &self,
        application_id: &str,
        proof_id: &str,
    ) -> Result<Option<SpotCheckRecord>, StoreError> {
        self.decode(&spot_check_key(application_id, proof_id))
    }

    /// Open spot checks: (application id, proof id, record).
    pub fn spot_checks(&self) -> Result<Vec<(String, String, SpotCheckRecord)>, StoreError> {
        self.db
            .scan_prefix(b"s")
            .map(|item| {
                let (key, value) = item?;
                let rest = &key[1..];
                let split = rest.iter().position(|&b| b == 0).ok_or_else(|| {
                    StoreError::Corrupt("spot check key without separator".into())
                })?;
                let record = SpotCheckRecord::decode(value.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("spot check record: {e}")))?;
                Ok((
                    String::from_utf8_lossy(&rest[..split]).into_owned(),
                    String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
                    record,
                ))
            })
            .collect()
    }
}

impl AuditStore {
    /// The newest checkpoint whose size is at most `size`.
    pub fn checkpoint_at_or_below(&self, size: u64) -> Result<Option<(u64, String)>, StoreError> {
        self.db
            .range(checkpoint_key(0)..=checkpoint_key(size))
            .next_back()
            .map(|item| decode_checkpoint(item?))
            .transpose()
    }
}

/// Witness cosignatures live in their own sled tree beside the log's, written
/// by the task that asks witnesses, never by the writer's batches:
///
/// | key                              | value                                   |
/// |----------------------------------|-----------------------------------------|
/// | `c`, tree size (u64 BE), key id (4) | the cosignature line (newline included) |
/// | `w`, key id (4)                  | largest size that witness cosigned (u64 BE) |
const COSIGNATURE_TREE: &str = "cosignatures";

fn cosignature_key(size: u64, key_id: [u8; 4]) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = b'c';
    key[1..9].copy_from_slice(&size.to_be_bytes());
    key[9..].copy_from_slice(&key_id);
    key
}

fn witness_key(key_id: [u8; 4]) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = b'w';
    key[1..].copy_from_slice(&key_id);
    key
}

impl AuditStore {
    fn cosignature_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(COSIGNATURE_TREE)?)
    }

    /// Keeps a (checked) cosignature of the checkpoint of `size` by the
    /// witness `key_id`, and that witness's progress; flushed before it returns.
    pub fn add_cosignature(
        &self,
        size: u64,
        key_id: [u8; 4],
        line: &str,
    ) -> Result<(), StoreError> {
        let tree = self.cosignature_tree()?;
        let mut batch = sled::Batch::default();
        batch.insert(&cosignature_key(size, key_id)[..], line.as_bytes());
        let progress = self.witness_progress(key_id)?.unwrap_or(0).max(size);
        batch.insert(&witness_key(key_id)[..], &progress.to_be_bytes()[..]);
        tree.apply_batch(batch)?;
        tree.flush()?;
        Ok(())
    }

    /// The largest size the witness `key_id` cosigned for this log, if any.
    pub fn witness_progress(&self, key_id: [u8; 4]) -> Result<Option<u64>, StoreError> {
        self.cosignature_tree()?
            .get(witness_key(key_id))?
            .map(|v| {
                <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("witness progress is not 8 bytes".into()))
            })
            .transpose()
    }

    /// Whether any witness cosignature is kept.
    pub fn has_cosignatures(&self) -> Result<bool, StoreError> {
        Ok(!self.cosignature_tree()?.is_empty())
    }

    /// The cosignature lines gathered for the checkpoint of `size`, by key id.
    pub fn cosignatures(&self, size: u64) -> Result<Vec<([u8; 4], String)>, StoreError> {
        self.cosignature_tree()?
            .scan_prefix(&cosignature_key(size, [0; 4])[..9])
            .map(|item| {
                let (key, value) = item?;
                let id = key
                    .get(9..13)
                    .and_then(|k| <[u8; 4]>::try_from(k).ok())
                    .ok_or_else(|| StoreError::Corrupt("cosignature key is not 13 bytes".into()))?;
                let line = String::from_utf8(value.to_vec())
                    .map_err(|_| StoreError::Corrupt("cosignature is not UTF-8".into()))?;
                Ok((id, line))
            })
            .collect()
    }

    /// The checkpoint note of `size` with every cosignature gathered for it
    /// appended (a C2SP signed note with several signature lines).
    pub fn cosigned_checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        let Some(mut note) = self.checkpoint(size)? else {
            return Ok(None);
        };
        for (_, line) in self.cosignatures(size)? {
            note.push_str(&line);
        }
        Ok(Some(note))
    }

    /// The newest checkpoint at or below `size` cosigned by at least `quorum`
    /// of the witnesses `key_ids`: (size, note with its cosignatures).
    pub fn newest_cosigned(
        &self,
        size: u64,
        quorum: usize,
        key_ids: &[[u8; 4]],
    ) -> Result<Option<(u64, String)>, StoreError> {
        let tree = self.cosignature_tree()?;
        let end = cosignature_key(size, [0xff; 4]);
        let mut current: Option<(u64, usize)> = None;
        for item in tree.range(&cosignature_key(0, [0; 4])[..]..=&end[..]).rev() {
            let (key, _) = item?;
            let (Some(at), Some(id)) = (
                key.get(1..9).and_then(|k| <[u8; 8]>::try_from(k).ok()),
                key.get(9..13).and_then(|k| <[u8; 4]>::try_from(k).ok()),
            ) else {
                return Err(StoreError::Corrupt(
                    "cosignature key is not 13 bytes".into(),
                ));
            };
            let at = u64::from_be_bytes(at);
            let counted = match current {
                Some((s, n)) if s == at => n,
                _ => 0,
            } + usize::from(key_ids.contains(&id));
            current = Some((at, counted));
            if counted >= quorum {
                return Ok(self.cosigned_checkpoint(at)?.map(|note| (at, note)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_notes_are_kept_apart_from_the_log_and_listed_by_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = AuditStore::open(&path).unwrap();
        store.note_reservation("hall-1", "r-1").unwrap();
        store.note_reservation("hall-1", "r-2").unwrap();
        store.forget_reservation("hall-1", "r-1").unwrap();
        assert_eq!(
            store.noted_reservations().unwrap(),
            vec![("hall-1".to_owned(), "r-2".to_owned())]
        );
        // Not a key of the log's tree: rebuild and usage do not see it.
        assert!(store
            .db
            .get(request_key("hall-1", "r-2"))
            .unwrap()
            .is_none());
        store.db.flush().unwrap();
        drop(store);
        let again = AuditStore::open(&path).unwrap();
        assert_eq!(again.noted_reservations().unwrap().len(), 1);
    }

    #[test]
    fn compact_keeps_every_tree_and_key_and_gives_back_dead_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = AuditStore::open(&path).unwrap();
        // Values written over and over: dead pages the file keeps.
        for round in 0..40u32 {
            let mut batch = sled::Batch::default();
            for k in 0..200u32 {
                batch.insert(&k.to_be_bytes()[..], vec![(round % 251) as u8; 2000]);
            }
            store.db.apply_batch(batch).unwrap();
            store.db.flush().unwrap();
        }
        store.note_reservation("hall-1", "r-1").unwrap();
        let want: Vec<_> = store.db.iter().map(Result::unwrap).collect();
        store.db.flush().unwrap();
        drop(store);
        let (before, after) = compact(&path).unwrap();
        assert!(after < before, "{after} < {before}");
        let store = AuditStore::open(&path).unwrap();
        let got: Vec<_> = store.db.iter().map(Result::unwrap).collect();
        assert_eq!(got, want);
        assert_eq!(
            store.noted_reservations().unwrap(),
            vec![("hall-1".to_owned(), "r-1".to_owned())]
        );
        assert!(!dir.path().join("log.before-compact").exists());
        assert!(!dir.path().join("log.compacting").exists());
        drop(store);
        // Stopped half way: the store does not open (no node starts on it)
        // and the message says what to do; nothing is guessed.
        std::fs::create_dir(dir.path().join("log.before-compact")).unwrap();
        let refused = AuditStore::open(&path).err().unwrap();
        assert!(
            matches!(refused, StoreError::HalfCompacted { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("remove"), "{refused}");
        assert!(matches!(
            compact(&path),
            Err(StoreError::HalfCompacted { .. })
        ));
        // No store there: said, and none is made.
        let nowhere = dir.path().join("nowhere").join("log");
        let refused = compact(&nowhere).err().unwrap();
        assert!(refused.to_string().contains("no audit store"), "{refused}");
        assert!(!nowhere.exists());
    }

    #[test]
    fn a_store_being_compacted_is_said_to_be_so_not_half_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let previous = dir.path().join("log.before-compact");
        // As `compact` leaves it mid-way: the original moved aside, still
        // open (and locked) by the compaction.
        let held = AuditStore::open(&path).unwrap();
        std::fs::rename(&path, &previous).unwrap();
        let refused = AuditStore::open(&path).err().unwrap();
        assert!(matches!(refused, StoreError::Compacting(_)), "{refused}");
        assert!(refused.to_string().contains("being compacted"), "{refused}");
        assert!(matches!(compact(&path), Err(StoreError::Compacting(_))));
        // The compaction gone without finishing: half done, to repair.
        drop(held);
        let refused = AuditStore::open(&path).err().unwrap();
        assert!(
            matches!(refused, StoreError::HalfCompacted { .. }),
            "{refused}"
        );
    }

    #[test]
    fn usage_counts_keys_and_bytes_per_kind_and_sizes_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // Uncompressed: zeros compressed by zstd take less disk than payload.
        let options = StoreOptions {
            compression: false,
            ..StoreOptions::default()
        };
        let store = AuditStore::open_with(&path, options).unwrap();
        store
            .db
            .insert(application_key("app-1"), vec![0u8; 100])
            .unwrap();
        store
            .db
            .insert(application_key("app-22"), vec![0u8; 50])
            .unwrap();
        store
            .db
            .insert(b"e\0\0\0\0\0\0\0\x01", vec![0u8; 300])
            .unwrap();
        store.db.flush().unwrap();
        let usage = store.usage(&path).unwrap();
        let apps = usage.kinds.iter().find(|k| k.prefix == 'a').unwrap();
        assert_eq!(
            (apps.keys, apps.key_bytes, apps.value_bytes),
            (2, 6 + 7, 150)
        );
        assert_eq!(apps.kind, "application projections");
        // Largest kind first.
        assert_eq!(
            usage.kinds[0].kind,
            "entries (one a record, before issue 12)"
        );
        assert_eq!(usage.payload(), 13 + 150 + 9 + 300);
        assert!(usage.on_disk >= usage.payload(), "{usage:?}");
    }
}
