//! The single writer: one thread owns the tree's right edge and the sled
//! batch. Appends queue on a bounded channel; the writer takes whatever has
//! queued (group commit), writes it in one atomic batch with one signed
//! checkpoint, flushes once, and only then answers every appender. So a
//! reply a caller sees is always backed by a durable, checkpointed entry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use super::checkpoint::NoteSigner;
use super::groups::AppendTail;
use super::merkle::{leaf_hash, Frontier, Hash};
use super::project::{BatchSink, Projection, Staged};
use super::store::{checkpoint_key, stage_entry, AuditStore, StoreError, FRONTIER_KEY};
use crate::pb::{audit_entry::Event, AuditReceipt};

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Most entries in one batch; bounds a batch's latency and memory.
    pub max_batch: usize,
    /// Appends waiting for the writer before appenders feel back-pressure.
    pub queue_depth: usize,
    /// How the node's store is opened (sled's cache, compression of a new store).
    pub store: super::store::StoreOptions,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch: 2048,
            queue_depth: 8192,
            store: super::store::StoreOptions::default(),
        }
    }
}

/// Where an entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub index: u64,
    pub leaf_hash: Hash,
    /// Tree size of the checkpoint that covers this entry.
    pub tree_size: u64,
}

impl Receipt {
    pub fn to_pb(self) -> AuditReceipt {
        AuditReceipt {
            index: self.index,
            leaf_hash: self.leaf_hash.to_vec(),
        }
    }
}

/// The encoding of `AuditEntry { index, logged_unix_ms, node_id, event }`
/// with `event` already encoded: byte for byte what prost writes for the
/// whole message (fields in number order, defaults omitted).
fn entry_bytes(index: u64, logged_unix_ms: i64, node_id: &str, event: &[u8]) -> Vec<u8> {
    use prost::encoding::{int64, string, uint64};
    let mut out = Vec::with_capacity(event.len() + node_id.len() + 24);
    if index != 0 {
        uint64::encode(1, &index, &mut out);
    }
    if logged_unix_ms != 0 {
        int64::encode(2, &logged_unix_ms, &mut out);
    }
    if !node_id.is_empty() {
        string::encode(3, &node_id.to_owned(), &mut out);
    }
    out.extend_from_slice(event);
    out
}

/// Why an entry was not appended. Clone: one failed batch answers every
/// appender in it, each with the same cause.
#[derive(Debug, Error, Clone)]
pub enum AuditError {
    #[error("audit log is not writable")]
    Storage(#[source] Arc<StoreError>),
    #[error("the audit writer thread cannot start")]
    Thread(#[source] Arc<std::io::Error>),
    #[error("audit writer has stopped")]
    Stopped,
    #[error("the audit log refuses appends since sled failed to apply or flush a batch: restart the node (sled recovers the durable state)")]
    Halted(#[source] Arc<StoreError>),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        AuditError::Storage(Arc::new(e))
    }
}

struct AppendRequest {
    /// The entry's event, encoded by the appender (with its oneof tag), so
    /// the single writer thread only prefixes index, time and node.
    event: Vec<u8>,
    projections: Vec<Staged>,
    reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

enum Command {
    Append(Box<AppendRequest>),
    /// Commit what came before, release the store, then answer.
    Stop(oneshot::Sender<()>),
}

/// Handle to append to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    store: AuditStore,
    verifier_key: String,
    /// Tree size of the last flushed batch: readers serve nothing beyond it,
    /// so no one sees a checkpoint a crash could still take back.
    durable: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Which mirrors hold how much of the log (`serve --mirror-ack`).
    replication: super::replication::Replication,
    /// Set when the node stops: long polls end.
    closing: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Counts the handles alive, so a shutdown can wait for the last one
    /// (and with it the store's file lock) to go.
    lease: std::sync::Arc<()>,
    /// True once the writer refuses appends until a restart
    /// ([`AuditError::Halted`]); closed when the writer is gone.
    halted: tokio::sync::watch::Receiver<bool>,
}

impl AuditLog {
    /// Starts the writer thread over `store`, resuming at its committed size.
    pub fn start(
        store: AuditStore,
        signer: NoteSigner,
        node_id: String,
        options: WriterOptions,
    ) -> Result<Self, AuditError> {
        let frontier = store.frontier()?;
        let (tail, grouped) = AppendTail::open(&store, frontier.size())?;
        if grouped > 0 {
            info!(
                entries = grouped,
                "entries stored one to a value (before issue 12) grouped sixteen to a value"
            );
        }
        let verifier_key = signer.verifier_key();
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let durable = std::sync::Arc::new(tokio::sync::watch::Sender::new(frontier.size()));
        let (halt, halted) = tokio::sync::watch::channel(false);
        let writer = Writer {
            halt,
            durable: std::sync::Arc::clone(&durable),
            store: store.clone(),
            signer,
            node_id,
            frontier,
            tail,
            broken: None,
            max_batch: options.max_batch.max(1),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Thread(Arc::new(e)))?;
        Ok(Self {
            tx,
            store,
            verifier_key,
            durable,
            replication: Default::default(),
            closing: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
            lease: std::sync::Arc::new(()),
            halted,
        })
    }

    /// Appends one entry; resolves once it is durable and checkpointed.
    pub async fn append(
        &self,
        event: Event,
        projections: Vec<Projection>,
    ) -> Result<Receipt, AuditError> {
        let (reply, answer) = oneshot::channel();
        let mut encoded = Vec::with_capacity(event.encoded_len() + 4);
        event.encode(&mut encoded);
        // Application projections are encoded here too, off the writer thread.
        let projections = projections.into_iter().map(Staged::from).collect();
        self.tx
            .send(Command::Append(Box::new(AppendRequest {
                event: encoded,
                projections,
                reply,
            })))
            .await
            .map_err(|_| AuditError::Stopped)?;
        answer.await.map_err(|_| AuditError::Stopped)?
    }

    /// Appends an event that is not about an application (policy sets, data
    /// sources, spot checks, dishonesty records): its projections follow from
    /// the event alone.
    pub async fn append_event(&self, event: Event) -> Result<Receipt, AuditError> {
        let projections = super::project::projections_of(&event, None, &|_, _| None);
        self.append(event, projections).await
    }

    /// Stops the writer after the appends queued before this call; later
    /// appends fail with [`AuditError::Stopped`]. Returns once the writer has
    /// released its handle on the store.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.tx.send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// True once the writer refuses every append until the node restarts
    /// (sled failed to apply or flush a batch); the sender is gone with the
    /// writer.
    pub fn halted(&self) -> tokio::sync::watch::Receiver<bool> {
        self.halted.clone()
    }

    /// Entries durably committed (and checkpointed).
    pub fn durable_size(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until more than `size` entries are durable, at most `wait`,
    /// or until [`Self::end_long_polls`]; returns the durable size then (a
    /// mirror's long poll).
    pub async fn durable_beyond(&self, size: u64, wait: std::time::Duration) -> u64 {
        let mut durable = self.durable.subscribe();
        let mut closing = self.closing.subscribe();
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = durable.wait_for(|now| *now > size) => {}
                _ = closing.wait_for(|closing| *closing) => {}
            }
        })
        .await;
        self.durable_size()
    }

    /// The node stops: long polls answer at once from now on.
    pub fn end_long_polls(&self) {
        self.closing.send_replace(true);
    }

    /// The mirrors' acknowledgements of this log.
    pub fn replication(&self) -> &super::replication::Replication {
        &self.replication
    }

    /// Waits until the first `size` entries are held by the mirrors that
    /// `serve --mirror-ack` requires (at once when none are).
    pub async fn replicated(&self, size: u64) -> Result<(), super::replication::NotReplicated> {
        self.replication.wait(size).await
    }

    /// Handles of this log alive, this one included.
    pub fn handles(&self) -> usize {
        std::sync::Arc::strong_count(&self.lease)
    }

    pub fn store(&self) -> &AuditStore {
        &self.store
    }

    /// The C2SP vkey that verifies this log's checkpoints.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// Appends waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteStage {
    /// Building the batch, before anything reaches sled.
    Stage,
    Apply,
    Flush,
}

struct Writer {
    durable: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    store: AuditStore,
    signer: NoteSigner,
    node_id: String,
    frontier: Frontier,
    /// The entries of the incomplete group, staged again with its last one.
    tail: AppendTail,
    /// Set when sled failed to apply or flush a batch: every later append is
    /// refused.
    broken: Option<Arc<StoreError>>,
    /// Tells [`AuditLog::halted`] when `broken` is set.
    halt: tokio::sync::watch::Sender<bool>,
    max_batch: usize,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut stop = None;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(request) => batch.push(*request),
                    Command::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if batch.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if stop.is_some() {
                break;
            }
        }
        rx.close();
        // Appends that raced with the stop are refused, not lost silently.
        let mut stops: Vec<_> = stop.into_iter().collect();
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Append(request) => {
                    let _ = request.reply.send(Err(AuditError::Stopped));
                }
                Command::Stop(done) => stops.push(done),
            }
        }
        drop(self);
        debug!("audit writer stopped");
        for done in stops {
            let _ = done.send(());
        }
    }

    /// From now on every append is refused, and [`AuditLog::halted`] says so.
    fn halt(&mut self, e: &Arc<StoreError>) {
        self.broken = Some(Arc::clone(e));
        self.halt.send_replace(true);
    }

    fn commit(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Some(e) = &self.broken {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(AuditError::Halted(Arc::clone(e))));
            }
            return;
        }
        let before = self.frontier.clone();
        match self.write(batch) {
            Ok(receipts) => {
                for (request, receipt) in batch.drain(..).zip(receipts) {
                    // An appender that gave up still has its entry logged.
                    let _ = request.reply.send(Ok(receipt));
                }
            }
            Err((stage, e)) => {
                error!(error = %e, entries = batch.len(), ?stage, "audit batch failed; nothing of it was acknowledged");
                let e = Arc::new(e);
                match stage {
                    // Nothing reached the store: the batch's indices are
                    // free again.
                    WriteStage::Stage => match AppendTail::open(&self.store, before.size()) {
                        Ok((tail, _)) => {
                            self.tail = tail;
                            self.frontier = before;
                        }
                        Err(reread) => {
                            error!(error = %reread, "the audit log's tail cannot be read again; appends are refused until the node restarts");
                            self.halt(&e);
                        }
                    },
                    // sled may hold part of a batch it failed to apply (in
                    // memory, not durably): a later batch reusing its
                    // indices could leave a group of the failed one
                    // readable. After a failed flush sled holds the whole
                    // batch, readable but not durable, and the OS may have
                    // dropped what it failed to write, so a later flush that
                    // succeeds proves nothing about it. Either way, refuse
                    // appends until a restart recovers the durable state.
                    // Neither failure moves `durable_size`: a retried request
                    // is not answered beyond it (the gateway's replay).
                    WriteStage::Apply | WriteStage::Flush => {
                        error!("appends are refused until the node restarts");
                        self.halt(&e);
                    }
                }
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(AuditError::Storage(Arc::clone(&e))));
                }
            }
        }
    }

    fn write(&mut self, batch: &[AppendRequest]) -> Result<Vec<Receipt>, (WriteStage, StoreError)> {
        let logged_unix_ms = now_unix_ms();
        let db = self.store.db();
        let mut sink = BatchSink::new(db);
        let mut receipts = Vec::with_capacity(batch.len());
        let mut nodes = Vec::with_capacity(16);
        for request in batch.iter() {
            let index = self.frontier.size();
            let bytes = entry_bytes(index, logged_unix_ms, &self.node_id, &request.event);
            let leaf = leaf_hash(&bytes);
            stage_entry(
                &mut self.frontier,
                &mut self.tail,
                leaf,
                &bytes,
                &mut sink.batch,
                &mut nodes,
            )
            .map_err(|e| (WriteStage::Stage, e))?;
            receipts.push(Receipt {
                index,
                leaf_hash: leaf,
                tree_size: 0,
            });
            for projection in &request.projections {
                projection
                    .write(index, &mut sink)
                    .map_err(|e| (WriteStage::Stage, e))?;
            }
        }
        self.tail
            .finish(&mut sink.batch)
            .map_err(|e| (WriteStage::Stage, e))?;
        let size = self.frontier.size();
        let note = self.signer.sign_checkpoint(size, &self.frontier.root());
        sink.batch.insert(&checkpoint_key(size), note.as_bytes());
        sink.batch.insert(FRONTIER_KEY, self.frontier.to_bytes());
        db.apply_batch(sink.batch)
            .map_err(|e| (WriteStage::Apply, e.into()))?;
        db.flush().map_err(|e| (WriteStage::Flush, e.into()))?;
        self.durable.send_replace(size);
        for receipt in &mut receipts {
            receipt.tree_size = size;
        }
        Ok(receipts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{AuditEntry, PolicySetLoaded};
    use prost::Message;

    #[test]
    fn prefixed_entries_are_byte_for_byte_what_prost_writes() {
        let event = Event::PolicySetLoaded(PolicySetLoaded {
            policy_version: "sha256:ab".into(),
            proof_count: 3,
            matter_count: 1,
            canonical: b"[[proof]]".to_vec(),
            ..PolicySetLoaded::default()
        });
        let mut encoded = Vec::new();
        event.encode(&mut encoded);
        for (index, time, node) in [(0, 0, ""), (1, 5, "n"), (u64::MAX, -1, "node-1")] {
            let whole = AuditEntry {
                index,
                logged_unix_ms: time,
                node_id: node.into(),
                event: Some(event.clone()),
            }
            .encode_to_vec();
            assert_eq!(entry_bytes(index, time, node, &encoded), whole);
        }
    }

    #[test]
    fn an_appended_receipt_decodes_as_the_receipt_field() {
        use crate::pb::Application;
        let app = Application {
            application_id: "n.1".into(),
            status: 1,
            caller: "hall".into(),
            ..Default::default()
        };
        let bytes = super::super::project::application_value(&app.encode_to_vec(), 7, &[1; 32]);
        let receipt = AuditReceipt {
            index: 7,
            leaf_hash: vec![1; 32],
        };
        let decoded = Application::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.receipt, Some(receipt));
        assert_eq!(decoded.caller, "hall");
    }
}
