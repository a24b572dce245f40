//! Entries are stored sixteen to a sled value (issue 12): one zstd frame per
//! aligned group of [`GROUP_ENTRIES`] consecutive entries, under key `G` +
//! group number (u64 BE). One at a time, zstd brought an entry to 0.81 of
//! its bytes; sixteen together compress to 0.31, sled keeps one key where it
//! kept sixteen (its page metadata lives in memory), and a reader fetches one
//! value per sixteen entries.
//!
//! The entries of the group not yet complete (the log's tail, at most
//! fifteen) are stored as chunks: each batch's entries of that group in one
//! value under `j` + the index of its first entry. The batch that appends a
//! group's last entry writes the group and removes its chunks, atomically;
//! so the groups are always a prefix of the log and the chunks its tail.
//! One value per batch, not per entry: sled rewrites a whole page after ten
//! changes to it, and a page of single entries, each written and then
//! removed, was rewritten about three times per group (measured: the store
//! grew by 1.7 KB per application of dead pages).
//!
//! A store written before issue 12 holds each entry alone (`e` + index,
//! leaf hash then bytes). Readers still read those; [`AppendTail::open`]
//! groups them, oldest first, before the first append.
//!
//! A group's or a chunk's value: format byte 1, the length of the
//! uncompressed bytes (a varint), then one zstd frame of, for each entry,
//! its leaf hash (32), its length (varint) and its bytes.

use std::cell::RefCell;

use bytes::Bytes;

use super::merkle::Hash;
use super::store::{entry_index, entry_key, prefixed, split_entry, AuditStore, StoreError};

/// Entries per group: 2^[`super::store::LOWEST_STORED_NODE_LEVEL`], so the
/// Merkle subtrees recomputed from leaves each come from one group.
pub const GROUP_ENTRIES: u64 = 16;
const _: () = assert!(GROUP_ENTRIES == 1 << super::store::LOWEST_STORED_NODE_LEVEL);

const FORMAT: u8 = 1;

/// zstd level 3, as sled compresses: most of the gain of higher levels at a
/// fraction of the writer's time.
const LEVEL: i32 = 3;

/// The most bytes a group or chunk holds uncompressed: sixteen entries of
/// the largest record an export carries (16 MiB), and their framing. Larger
/// is refused when written and called corrupt when read.
const MAX_GROUP_BYTES: usize = 16 * (16 << 20) + (1 << 20);

/// Where groups and chunks sit among the store's keys matters: sled keeps
/// sixteen keys to a page and rewrites a whole page after ten changes to
/// it. Groups (about 9 KB each) come first (`G` sorts before every
/// lowercase prefix), so the page where they are appended holds only the
/// first application projections beside them, which are rarely written;
/// under `g`, that page also held the frontier, written by every batch,
/// and was rewritten, sixteen groups at a time, every ten batches (the
/// store grew by 2.4 KB of dead pages per application). Chunks sit among
/// small, often written records (`h` dishonesty records, `m` the
/// frontier), never beside a group.
const GROUP_PREFIX: u8 = b'G';
const CHUNK_PREFIX: u8 = b'j';

pub fn group_key(group: u64) -> [u8; 9] {
    prefixed(GROUP_PREFIX, group)
}

/// The key of a chunk of the incomplete group whose first entry is `first`.
pub fn chunk_key(first: u64) -> [u8; 9] {
    prefixed(CHUNK_PREFIX, first)
}

/// The group holding entry `index`, and the first index of that group.
pub(super) fn group_of(index: u64) -> (u64, u64) {
    let group = index / GROUP_ENTRIES;
    (group, group * GROUP_ENTRIES)
}

/// The stored value of consecutive entries (a group, or a chunk):
/// `entries` are (leaf hash, bytes) in index order.
pub fn encode_group<B: AsRef<[u8]>>(
    compressor: &mut zstd::block::Compressor,
    entries: &[(Hash, B)],
) -> Result<Vec<u8>, StoreError> {
    let mut raw = Vec::with_capacity(entries.iter().map(|(_, b)| 34 + b.as_ref().len()).sum());
    for (leaf, bytes) in entries {
        let bytes = bytes.as_ref();
        raw.extend_from_slice(leaf);
        prost::encoding::encode_varint(bytes.len() as u64, &mut raw);
        raw.extend_from_slice(bytes);
    }
    if raw.len() > MAX_GROUP_BYTES {
        return Err(StoreError::Compress(std::io::Error::other(format!(
            "{} bytes of entries in one group, more than {MAX_GROUP_BYTES}",
            raw.len()
        ))));
    }
    let frame = compressor
        .compress(&raw, LEVEL)
        .map_err(StoreError::Compress)?;
    let mut value = Vec::with_capacity(frame.len() + 6);
    value.push(FORMAT);
    prost::encoding::encode_varint(raw.len() as u64, &mut value);
    value.extend_from_slice(&frame);
    Ok(value)
}

thread_local! {
    /// One zstd context per reading thread, reused for every value.
    static DECOMPRESSOR: RefCell<zstd::block::Decompressor> =
        RefCell::new(zstd::block::Decompressor::new());
}

/// The (leaf hash, bytes) of the entries of a stored group or chunk, `what`
/// naming it in errors. The value is decompressed into one buffer, and the
/// entries are slices of it: no copy, and one allocation per value, not
/// one per entry (a fifth of the reading thread of `audit verify` went to
/// allocating and copying entries one by one).
fn decode_entries(what: &str, value: &[u8]) -> Result<Vec<(Hash, Bytes)>, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("{what}: {why}"));
    let Some((&FORMAT, mut rest)) = value.split_first() else {
        return Err(corrupt("unknown format"));
    };
    let raw_len = prost::encoding::decode_varint(&mut rest)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= MAX_GROUP_BYTES)
        .ok_or_else(|| corrupt("bad length"))?;
    let mut raw = Vec::new();
    // A corrupt length is bounded by MAX_GROUP_BYTES; refused, not aborted on.
    raw.try_reserve_exact(raw_len)
        .map_err(|_| corrupt("its length cannot be allocated"))?;
    DECOMPRESSOR.with(
        |cell| match cell.borrow_mut().decompress_to_buffer(rest, &mut raw) {
            Err(e) => Err(corrupt(&format!("does not decompress ({e})"))),
            Ok(_) if raw.len() != raw_len => Err(corrupt("length differs from the recorded one")),
            Ok(_) => Ok(()),
        },
    )?;
    split_entries(Bytes::from(raw), &corrupt)
}

/// The (leaf hash, length, bytes) records of a decompressed value, each
/// entry a slice of `raw`.
fn split_entries(
    raw: Bytes,
    corrupt: &dyn Fn(&str) -> StoreError,
) -> Result<Vec<(Hash, Bytes)>, StoreError> {
    let mut entries = Vec::with_capacity(GROUP_ENTRIES as usize);
    let mut at = 0;
    while at < raw.len() {
        let (leaf, after) = raw[at..]
            .split_first_chunk::<32>()
            .ok_or_else(|| corrupt("an entry is shorter than its leaf hash"))?;
        let mut after = after;
        let len = prost::encoding::decode_varint(&mut after)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= after.len())
            .ok_or_else(|| corrupt("an entry's length runs past the value"))?;
        let start = raw.len() - after.len();
        entries.push((*leaf, raw.slice(start..start + len)));
        at = start + len;
    }
    Ok(entries)
}

/// The (leaf hash, bytes) of the entries of stored group `group`.
pub fn decode_group(group: u64, value: &[u8]) -> Result<Vec<(Hash, Bytes)>, StoreError> {
    let what = format!("entry group {group}");
    let entries = decode_entries(&what, value)?;
    if entries.len() as u64 != GROUP_ENTRIES {
        return Err(StoreError::Corrupt(format!(
            "{what}: holds {} entries, not {GROUP_ENTRIES}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// The entries of the chunk whose first entry is `first`: at least one, and
/// none past the end of its group.
fn decode_chunk(first: u64, value: &[u8]) -> Result<Vec<(Hash, Bytes)>, StoreError> {
    let what = format!("entry chunk at {first}");
    let entries = decode_entries(&what, value)?;
    let room = GROUP_ENTRIES - first % GROUP_ENTRIES;
    if entries.is_empty() || entries.len() as u64 > room {
        return Err(StoreError::Corrupt(format!(
            "{what}: holds {} entries, room for 1 to {room}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// The entries of the group not yet complete, kept by whoever appends (the
/// node's writer, a mirror): [`Self::stage`] each entry, then
/// [`Self::finish`] the batch.
pub(super) struct AppendTail {
    /// Index of the next entry.
    next: u64,
    /// First entry staged but not yet in a chunk or a group.
    unwritten: u64,
    /// (leaf hash, bytes) of the entries of the incomplete group, from its first.
    entries: Vec<(Hash, Bytes)>,
    /// The first index of each chunk stored for the incomplete group.
    chunks: Vec<u64>,
    compressor: zstd::block::Compressor,
}

/// Groups converted per batch by [`AppendTail::open`]: about 0.5 MB of
/// entries a batch.
const GROUPS_PER_MIGRATION_BATCH: u64 = 256;

impl AppendTail {
    /// Readies `store` of `size` entries for appending: every entry still
    /// stored alone (a store written before issue 12) is moved, oldest
    /// first, each batch atomic, into its group or, in the incomplete
    /// group, into one chunk; then the tail is read. Returns the tail and
    /// how many entries were moved.
    pub(super) fn open(store: &AuditStore, size: u64) -> Result<(Self, u64), StoreError> {
        let mut compressor = zstd::block::Compressor::new();
        let (_, tail_start) = group_of(size);
        let db = store.db();
        let first_single = match db.scan_prefix(b"e").next() {
            None => None,
            Some(item) => Some(entry_index(&item?.0)?),
        };
        let mut moved = 0;
        if let Some(first_single) = first_single {
            let mut group = first_single / GROUP_ENTRIES;
            while group * GROUP_ENTRIES < tail_start {
                let mut batch = sled::Batch::default();
                let last = (group + GROUPS_PER_MIGRATION_BATCH).min(tail_start / GROUP_ENTRIES);
                for g in group..last {
                    let first = g * GROUP_ENTRIES;
                    let entries = all_entries(store, first, first + GROUP_ENTRIES)?;
                    batch.insert(&group_key(g)[..], encode_group(&mut compressor, &entries)?);
                    for index in first..first + GROUP_ENTRIES {
                        batch.remove(&entry_key(index)[..]);
                    }
                    moved += GROUP_ENTRIES;
                }
                db.apply_batch(batch)?;
                // sled holds what is not flushed in memory.
                db.flush()?;
                group = last;
            }
        }
        let entries = all_entries(store, tail_start, size)?;
        let mut chunks = Vec::new();
        for item in db.range(chunk_key(tail_start)..chunk_key(size)) {
            chunks.push(entry_index(&item?.0)?);
        }
        if first_single.is_some_and(|first| first < size) && !entries.is_empty() {
            // Singles of the incomplete group: one chunk in their place.
            let mut batch = sled::Batch::default();
            for index in tail_start..size {
                batch.remove(&entry_key(index)[..]);
            }
            for first in chunks.drain(..) {
                batch.remove(&chunk_key(first)[..]);
            }
            batch.insert(
                &chunk_key(tail_start)[..],
                encode_group(&mut compressor, &entries)?,
            );
            chunks.push(tail_start);
            db.apply_batch(batch)?;
            moved += entries.len() as u64;
        }
        if moved > 0 {
            db.flush()?;
        }
        Ok((
            Self {
                next: size,
                unwritten: size,
                entries,
                chunks,
                compressor,
            },
            moved,
        ))
    }

    /// Stages the entry at index `index` into `batch`; when it completes its
    /// group, the group in place of the group's chunks.
    pub(super) fn stage(
        &mut self,
        index: u64,
        leaf: Hash,
        bytes: &[u8],
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        if index != self.next {
            return Err(StoreError::Corrupt(format!(
                "entry {index} staged where entry {} was due",
                self.next
            )));
        }
        self.entries.push((leaf, Bytes::copy_from_slice(bytes)));
        self.next += 1;
        if self.next.is_multiple_of(GROUP_ENTRIES) {
            let group = index / GROUP_ENTRIES;
            batch.insert(
                &group_key(group)[..],
                encode_group(&mut self.compressor, &self.entries)?,
            );
            for first in self.chunks.drain(..) {
                batch.remove(&chunk_key(first)[..]);
            }
            self.entries.clear();
            self.unwritten = self.next;
        }
        Ok(())
    }

    /// Stages the entries of the incomplete group staged since the last
    /// call as one chunk. Call once per batch, after its last entry.
    pub(super) fn finish(&mut self, batch: &mut sled::Batch) -> Result<(), StoreError> {
        if self.next == self.unwritten {
            return Ok(());
        }
        let group_start = self.next - self.entries.len() as u64;
        let from = (self.unwritten - group_start) as usize;
        batch.insert(
            &chunk_key(self.unwritten)[..],
            encode_group(&mut self.compressor, &self.entries[from..])?,
        );
        self.chunks.push(self.unwritten);
        self.unwritten = self.next;
        Ok(())
    }
}

fn missing(index: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "entry {index} is missing (in no group, chunk or single record)"
    ))
}

/// Entries `[start, end)`, all of them, wherever they are kept.
fn all_entries(store: &AuditStore, start: u64, end: u64) -> Result<Vec<(Hash, Bytes)>, StoreError> {
    let entries: Vec<(Hash, Bytes)> = Entries::new(store.clone(), start, end)
        .map(|item| item.map(|(_, leaf, bytes)| (leaf, bytes)))
        .collect::<Result<_, _>>()?;
    if entries.len() as u64 != end - start {
        return Err(missing(start + entries.len() as u64));
    }
    Ok(entries)
}

/// A stored entry: index, leaf hash, bytes.
type Stored = (u64, Hash, Bytes);

/// Entries from `next` on, consecutive, up to `stop` (at most the end of
/// `next`'s group), wherever they are kept: the group's value, chunks of the
/// incomplete group, records of one entry (before issue 12). Empty if entry
/// `next` is not stored.
///
/// An entry moves at most twice, each time in one atomic batch (a record
/// into a chunk when an old store is opened, a chunk into its group), and a
/// look that misses it must overlap a move: three looks cannot all miss it.
fn read_span(store: &AuditStore, next: u64, stop: u64) -> Result<Vec<Stored>, StoreError> {
    let db = store.db();
    let (group, first) = group_of(next);
    for _ in 0..3 {
        if let Some(value) = db.get(group_key(group))? {
            let entries = decode_group(group, &value)?;
            return Ok((next..stop)
                .zip(entries.into_iter().skip((next - first) as usize))
                .map(|(index, (leaf, bytes))| (index, leaf, bytes))
                .collect());
        }
        let mut span = Vec::new();
        let mut index = next;
        // The chunk holding `next` may start before it.
        for item in db.range(chunk_key(first)..chunk_key(stop)) {
            let (key, value) = item?;
            let start = entry_index(&key)?;
            if start > index {
                break;
            }
            for (offset, (leaf, bytes)) in decode_chunk(start, &value)?.into_iter().enumerate() {
                let at = start + offset as u64;
                if at == index && at < stop {
                    span.push((at, leaf, bytes));
                    index += 1;
                }
            }
        }
        if span.is_empty() {
            for item in db.range(entry_key(next)..entry_key(stop)) {
                let (key, value) = item?;
                if entry_index(&key)? != index {
                    break;
                }
                let (leaf, bytes) = split_entry(index, &value)?;
                span.push((index, leaf, Bytes::copy_from_slice(bytes)));
                index += 1;
            }
        }
        if !span.is_empty() {
            return Ok(span);
        }
    }
    Ok(Vec::new())
}

/// The stored entry `index`: (leaf hash, bytes), wherever it is kept. A
/// copy, not a slice: a slice would keep its whole group's buffer alive.
pub(super) fn stored_entry(
    store: &AuditStore,
    index: u64,
) -> Result<Option<(Hash, Bytes)>, StoreError> {
    Ok(read_span(store, index, index.saturating_add(1))?
        .pop()
        .map(|(_, leaf, bytes)| (leaf, Bytes::copy_from_slice(&bytes))))
}

/// Entries `[start, end)` in order, each with its leaf hash, wherever they
/// are kept; ends at the first index not stored. Safe beside an appender:
/// an entry moved while this reads is found where it went.
pub(super) struct Entries {
    store: AuditStore,
    next: u64,
    end: u64,
    ready: std::collections::VecDeque<Stored>,
    done: bool,
}

impl Entries {
    pub(super) fn new(store: AuditStore, start: u64, end: u64) -> Self {
        Self {
            store,
            next: start,
            end: end.max(start),
            ready: Default::default(),
            done: false,
        }
    }

    /// Reads what follows `next`, up to the end of its group.
    fn fill(&mut self) -> Result<(), StoreError> {
        let (_, first) = group_of(self.next);
        let stop = self.end.min(first + GROUP_ENTRIES);
        let span = read_span(&self.store, self.next, stop)?;
        match span.last() {
            None => self.done = true,
            Some((last, _, _)) => self.next = last + 1,
        }
        self.ready.extend(span);
        Ok(())
    }
}

impl Iterator for Entries {
    type Item = Result<(u64, Hash, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() {
            if self.done || self.next >= self.end {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::entry_value;
    use super::*;
    use crate::merkle::{leaf_hash, Frontier};
    use proptest::prelude::*;

    fn entry(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
    }

    /// Appends `sizes.len()` entries in batches of the given splits, as the
    /// writer does (stage, frontier, one atomic batch each).
    fn append(store: &AuditStore, sizes: &[usize], splits: &[usize]) -> Vec<(Hash, Vec<u8>)> {
        let mut frontier = store.frontier().unwrap();
        let (mut tail, _) = AppendTail::open(store, frontier.size()).unwrap();
        let mut written = Vec::new();
        let mut nodes = Vec::new();
        let mut at = 0;
        for &split in splits.iter().chain(std::iter::once(&usize::MAX)) {
            if at >= sizes.len() {
                break;
            }
            let mut batch = sled::Batch::default();
            for &len in &sizes[at..at.saturating_add(split.max(1)).min(sizes.len())] {
                let index = frontier.size();
                let bytes = entry(index, len);
                let leaf = leaf_hash(&bytes);
                super::super::store::stage_entry(
                    &mut frontier,
                    &mut tail,
                    leaf,
                    &bytes,
                    &mut batch,
                    &mut nodes,
                )
                .unwrap();
                written.push((leaf, bytes));
                at += 1;
            }
            tail.finish(&mut batch).unwrap();
            batch.insert(super::super::store::FRONTIER_KEY, frontier.to_bytes());
            store.db().apply_batch(batch).unwrap();
        }
        written
    }

    /// A store as written before issue 12: `n` entries, each alone.
    fn store_of_records(store: &AuditStore, n: u64) -> Vec<Stored> {
        let mut frontier = Frontier::default();
        let mut batch = sled::Batch::default();
        let mut written = Vec::new();
        for i in 0..n {
            let bytes = entry(i, 100 + i as usize);
            let leaf = leaf_hash(&bytes);
            batch.insert(&entry_key(i)[..], entry_value(&leaf, &bytes));
            frontier.push_with_nodes(leaf, &mut Vec::new());
            written.push((i, leaf, Bytes::from(bytes)));
        }
        batch.insert(super::super::store::FRONTIER_KEY, frontier.to_bytes());
        store.db().apply_batch(batch).unwrap();
        written
    }

    /// Every entry of `store`, as read.
    fn read(store: &AuditStore) -> Vec<Stored> {
        store
            .entries_with_leaves(0, u64::MAX)
            .map(Result::unwrap)
            .collect()
    }

    fn keys(store: &AuditStore, prefix: u8) -> usize {
        store.db().scan_prefix([prefix]).count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the batches, every complete group is one value, the
        /// tail is chunks, and every read gives back what was appended.
        #[test]
        fn entries_read_back_as_appended_whatever_the_batches(
            sizes in proptest::collection::vec(0usize..300, 0..70),
            splits in proptest::collection::vec(1usize..20, 0..70),
            a in 0u64..80,
            b in 0u64..80,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = AuditStore::open(&dir.path().join("log")).unwrap();
            let written = append(&store, &sizes, &splits);
            let n = written.len() as u64;
            prop_assert_eq!(store.frontier().unwrap().size(), n);
            prop_assert_eq!(keys(&store, GROUP_PREFIX) as u64, n / GROUP_ENTRIES);
            prop_assert_eq!(keys(&store, b'e'), 0);
            // At most one chunk per batch, none once a group is complete.
            let chunks = keys(&store, CHUNK_PREFIX) as u64;
            prop_assert!(chunks <= n % GROUP_ENTRIES);
            prop_assert_eq!(chunks == 0, n.is_multiple_of(GROUP_ENTRIES));
            let (start, end) = (a.min(b), a.max(b));
            let read: Vec<_> = store.entries_with_leaves(start, end).map(Result::unwrap).collect();
            let want: Vec<_> = (start..end.min(n))
                .map(|i| (i, written[i as usize].0, Bytes::from(written[i as usize].1.clone())))
                .collect();
            prop_assert_eq!(read, want);
            for i in [start, end, n.saturating_sub(1), n] {
                let got = store.entry(i).unwrap();
                prop_assert_eq!(got, written.get(i as usize).map(|w| Bytes::from(w.1.clone())));
                prop_assert_eq!(store.leaf_hash(i).unwrap(), written.get(i as usize).map(|w| w.0));
            }
            let mut expected = Frontier::default();
            for (leaf, _) in &written {
                expected.push_with_nodes(*leaf, &mut Vec::new());
            }
            prop_assert_eq!(store.frontier().unwrap().root(), expected.root());
        }

        /// A damaged group is an error, never a panic.
        #[test]
        fn any_group_value_decodes_or_is_refused(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_group(3, &value);
            let mut framed = vec![FORMAT];
            framed.extend_from_slice(&value);
            let _ = decode_group(3, &framed);
        }
    }

    #[test]
    fn a_store_of_singles_is_grouped_before_the_first_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        // As a store before issue 12 holds them: every entry alone.
        let written = store_of_records(&store, 40);
        assert_eq!(read(&store), written, "readable before grouping");

        let (_, moved) = AppendTail::open(&store, 40).unwrap();
        assert_eq!(moved, 40);
        let kinds = |store: &AuditStore| {
            (
                keys(store, GROUP_PREFIX),
                keys(store, CHUNK_PREFIX),
                keys(store, b'e'),
            )
        };
        assert_eq!(kinds(&store), (2, 1, 0));
        assert_eq!(read(&store), written);
        // Once moved, nothing is left to do; appending goes on.
        assert_eq!(AppendTail::open(&store, 40).unwrap().1, 0);
        append(&store, &[10; 9], &[9]);
        assert_eq!(kinds(&store), (3, 1, 0));
        assert_eq!(store.frontier().unwrap().size(), 49);
    }

    #[test]
    fn a_grouping_stopped_half_way_reads_whole_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let written = store_of_records(&store, 40);
        // What a crash after the first migration batch leaves: group 0
        // written in place of its records, the rest still alone.
        let mut batch = sled::Batch::default();
        let group: Vec<_> = written[..16]
            .iter()
            .map(|(_, l, b)| (*l, b.clone()))
            .collect();
        let value = encode_group(&mut zstd::block::Compressor::new(), &group).unwrap();
        batch.insert(&group_key(0)[..], value);
        for i in 0..16u64 {
            batch.remove(&entry_key(i)[..]);
        }
        store.db().apply_batch(batch).unwrap();
        assert_eq!(read(&store), written);
        assert_eq!(store.frontier().unwrap().size(), 40);
        assert_eq!(AppendTail::open(&store, 40).unwrap().1, 16 + 8);
        assert_eq!(read(&store), written);
        assert_eq!(keys(&store, b'e'), 0);
    }

    #[test]
    fn a_reader_finds_entries_grouped_while_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let mut written = append(&store, &[50; 15], &[15]);
        let mut reader = store.entries_with_leaves(0, u64::MAX);
        let first: Vec<_> = (&mut reader).take(3).map(Result::unwrap).collect();
        assert_eq!(first.len(), 3);
        // Entry 15 completes group 0: its chunk is replaced by the group.
        written.extend(append(&store, &[50; 2], &[2]));
        assert_eq!(
            (keys(&store, GROUP_PREFIX), keys(&store, CHUNK_PREFIX)),
            (1, 1)
        );
        let rest: Vec<_> = reader.map(Result::unwrap).collect();
        let indices: Vec<u64> = first.iter().chain(&rest).map(|(i, _, _)| *i).collect();
        assert_eq!(indices, (0..17).collect::<Vec<_>>());
        assert_eq!(rest.last().unwrap().2, written[16].1);
    }

    #[test]
    fn a_missing_entry_is_corrupt_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        let mut batch = sled::Batch::default();
        for i in (0..20u64).filter(|i| *i != 9) {
            batch.insert(&entry_key(i)[..], entry_value(&[0; 32], b"x"));
        }
        store.db().apply_batch(batch).unwrap();
        assert!(matches!(
            AppendTail::open(&store, 20),
            Err(StoreError::Corrupt(m)) if m.contains("entry 9 ")
        ));
        // A chunk that is not there: the tail cannot be read either.
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("log")).unwrap();
        append(&store, &[20; 20], &[18, 1, 1]);
        store.db().remove(chunk_key(18)).unwrap();
        assert!(matches!(
            AppendTail::open(&store, 20),
            Err(StoreError::Corrupt(m)) if m.contains("entry 18 ")
        ));
        assert_eq!(store.entries(0, 20).count(), 18);
    }
}
