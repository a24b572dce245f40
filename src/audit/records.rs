//! The log as a stream of records — verifier key, entries, checkpoints —
//! read from a data folder or from an exported file, so offline verification
//! and replay work the same on both and need no running server.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use prost::Message;
use thiserror::Error;

use super::merkle::Hash;
use super::store::{AuditStore, StoreError};
use crate::pb::{export_record, ExportRecord, StoredEntry};

/// Largest record an export file may hold; a corrupt length cannot make the
/// reader allocate more.
const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    VerifierKey(String),
    Entry {
        index: u64,
        /// The entry as logged (from a store, a slice of its group).
        bytes: bytes::Bytes,
        /// The leaf hash recorded at write time, when the source has one.
        recorded_leaf: Option<Hash>,
    },
    Checkpoint(String),
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("reading the export file: {0}")]
    Io(#[from] std::io::Error),
    #[error("export file is corrupt at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
}

impl LogRecord {
    fn to_export(&self) -> ExportRecord {
        let record = match self {
            LogRecord::VerifierKey(k) => export_record::Record::VerifierKey(k.clone()),
            LogRecord::Entry {
                index,
                bytes,
                recorded_leaf,
            } => export_record::Record::Entry(StoredEntry {
                index: *index,
                entry: bytes.to_vec(),
                leaf_hash: recorded_leaf.map(|h| h.to_vec()).unwrap_or_default(),
            }),
            LogRecord::Checkpoint(note) => export_record::Record::Checkpoint(note.clone()),
        };
        ExportRecord {
            record: Some(record),
        }
    }

    fn from_export(record: ExportRecord, offset: u64) -> Result<Self, RecordError> {
        match record.record {
            Some(export_record::Record::VerifierKey(k)) => Ok(LogRecord::VerifierKey(k)),
            Some(export_record::Record::Entry(e)) => Ok(LogRecord::Entry {
                index: e.index,
                recorded_leaf: e.leaf_hash.as_slice().try_into().ok(),
                bytes: e.entry.into(),
            }),
            Some(export_record::Record::Checkpoint(note)) => Ok(LogRecord::Checkpoint(note)),
            None => Err(RecordError::Corrupt {
                offset,
                what: "record of unknown kind".into(),
            }),
        }
    }
}

/// The records of a data folder: its verifier key, every stored entry in
/// index order, each checkpoint after the entry that completes its size.
/// Entries and checkpoints are read as stored, so damage is reported, not hidden.
pub fn data_dir_records(data_dir: &Path) -> Result<Records, RecordError> {
    // After rotations `log.vkeys` lists every key, oldest first: verification
    // starts from the first and follows the chain in the log.
    let vkey = match std::fs::read_to_string(data_dir.join("log.vkeys")) {
        Ok(all) => all.lines().next().unwrap_or_default().to_owned(),
        Err(_) => std::fs::read_to_string(data_dir.join("log.vkey"))?,
    };
    let store = AuditStore::open(&data_dir.join("log"))?;
    // Checkpoints are read in order alongside the entries; cosignatures are
    // looked up per checkpoint only if any witness cosigned.
    let cosigned = store.has_cosignatures()?;
    let checkpoints: CheckpointIter = Box::new(store.checkpoints());
    // Entries are read and decompressed on a thread of their own, beside
    // the one that reads checkpoints and merges.
    let entries: EntryIter = read_ahead(store.entries_with_leaves(0, u64::MAX));
    let mut state = DirMerge {
        store,
        cosigned,
        checkpoints: checkpoints.peekable(),
        entries: entries.peekable(),
    };
    let first = std::iter::once(Ok(LogRecord::VerifierKey(vkey.trim().to_owned())));
    Ok(read_ahead(
        first.chain(std::iter::from_fn(move || state.next())),
    ))
}

/// A stream of log records.
pub type Records = Box<dyn Iterator<Item = Result<LogRecord, RecordError>> + Send>;

/// Items come in chunks from a reader thread, so reading (sled, file,
/// decompression) overlaps with what consumes them on the other core;
/// bounded, so memory stays flat. The thread stops after the first error
/// (passed on), or when the consumer is dropped.
fn read_ahead<T: Send + 'static, E: Send + 'static>(
    items: impl Iterator<Item = Result<T, E>> + Send + 'static,
) -> Box<dyn Iterator<Item = Result<T, E>> + Send> {
    const CHUNK: usize = 2048;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Result<T, E>>>(4);
    std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for item in items {
            let failed = item.is_err();
            chunk.push(item);
            if chunk.len() == CHUNK || failed {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                if tx.send(full).is_err() || failed {
                    return; // the consumer stopped early, or the source failed
                }
            }
        }
        let _ = tx.send(chunk);
    });
    Box::new(rx.into_iter().flatten())
}

type EntryIter = Box<dyn Iterator<Item = Result<(u64, Hash, bytes::Bytes), StoreError>> + Send>;
type CheckpointIter = Box<dyn Iterator<Item = Result<(u64, String), StoreError>> + Send>;

struct DirMerge {
    store: AuditStore,
    /// Whether any checkpoint has witness cosignatures to append.
    cosigned: bool,
    checkpoints: std::iter::Peekable<CheckpointIter>,
    entries: std::iter::Peekable<EntryIter>,
}

impl DirMerge {
    fn checkpoint(&mut self) -> Option<Result<LogRecord, RecordError>> {
        let (size, note) = match self.checkpoints.next()? {
            Ok(checkpoint) => checkpoint,
            Err(e) => return Some(Err(e.into())),
        };
        if !self.cosigned {
            return Some(Ok(LogRecord::Checkpoint(note)));
        }
        // With the witnesses' cosignatures, so exports and verification carry them.
        Some(
            self.store
                .cosigned_checkpoint(size)
                .map_err(RecordError::from)
                .and_then(|note| {
                    note.ok_or_else(|| {
                        StoreError::Corrupt(format!("checkpoint {size} vanished")).into()
                    })
                })
                .map(LogRecord::Checkpoint),
        )
    }

    fn next(&mut self) -> Option<Result<LogRecord, RecordError>> {
        // A checkpoint goes before the first entry at or past its size; a
        // failed read of either comes out where it happened.
        let checkpoint_due = match (self.checkpoints.peek(), self.entries.peek()) {
            (Some(Err(_)), _) => true,
            (Some(Ok((size, _))), Some(Ok((index, _, _)))) => *size <= *index,
            (Some(Ok(_)), Some(Err(_))) => false,
            (Some(Ok(_)), None) => true,
            (None, _) => false,
        };
        if checkpoint_due {
            return self.checkpoint();
        }
        let (index, leaf, bytes) = match self.entries.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e.into())),
        };
        Some(Ok(LogRecord::Entry {
            index,
            bytes,
            recorded_leaf: Some(leaf),
        }))
    }
}

/// Writes every record of `records` to `out` (length-delimited ExportRecord);
/// returns (entries, checkpoints) written.
pub fn export(
    records: impl Iterator<Item = Result<LogRecord, RecordError>>,
    out: &Path,
) -> Result<(u64, u64), RecordError> {
    let mut file = BufWriter::new(File::create(out)?);
    let (mut entries, mut checkpoints) = (0, 0);
    for record in records {
        let record = record?;
        match record {
            LogRecord::Entry { .. } => entries += 1,
            LogRecord::Checkpoint(_) => checkpoints += 1,
            LogRecord::VerifierKey(_) => {}
        }
        file.write_all(&record.to_export().encode_length_delimited_to_vec())?;
    }
    file.flush()?;
    file.into_inner()
        .map_err(|e| RecordError::Io(e.into_error()))?
        .sync_all()?;
    Ok((entries, checkpoints))
}

/// Reads an exported file record by record.
pub fn file_records(path: &Path) -> Result<Records, RecordError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut offset = 0u64;
    let mut failed = false;
    Ok(read_ahead(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let result = read_one(&mut reader, &mut offset);
        if !matches!(result, Some(Ok(_))) {
            failed = true;
        }
        result
    })))
}

fn read_one(reader: &mut impl Read, offset: &mut u64) -> Option<Result<LogRecord, RecordError>> {
    let start = *offset;
    // A varint of at most 10 bytes.
    let mut length = 0u64;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(0) if shift == 0 => return None,
            Ok(0) => {
                return Some(Err(RecordError::Corrupt {
                    offset: start,
                    what: "file ends inside a record length".into(),
                }))
            }
            Ok(_) => {}
            Err(e) => return Some(Err(e.into())),
        }
        *offset += 1;
        length |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift >= 64 {
            return Some(Err(RecordError::Corrupt {
                offset: start,
                what: "record length is not a varint".into(),
            }));
        }
    }
    if length > MAX_RECORD_BYTES {
        return Some(Err(RecordError::Corrupt {
            offset: start,
            what: format!("record length {length} exceeds {MAX_RECORD_BYTES}"),
        }));
    }
    let mut buffer = vec![0u8; length as usize];
    if let Err(e) = reader.read_exact(&mut buffer) {
        return Some(Err(RecordError::Corrupt {
            offset: start,
            what: format!("record truncated: {e}"),
        }));
    }
    *offset += length;
    let record = match ExportRecord::decode(buffer.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            return Some(Err(RecordError::Corrupt {
                offset: start,
                what: format!("record does not decode: {e}"),
            }))
        }
    };
    Some(LogRecord::from_export(record, start))
}
