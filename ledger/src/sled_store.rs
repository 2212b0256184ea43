//! The embedded sled backend: everything in ONE tree with one-byte key prefixes.
//! Integers in keys are big-endian and strings are length-prefixed, so
//! `(client, period)` and `(period, seq)` range scans are plain prefix scans.
//!
//! A group commit is atomic through a redo log (see [`SledStore::commit`]), not
//! through `Tree::apply_batch`: sled seals its IO buffer before and after every
//! batch, and each seal hands a write to sled's IO thread pool, which wakes all
//! seven of its threads. Measured, that was over half of the ledger's CPU time
//! at 64 writers (BENCHMARKS.md, Ledger).
//!
//! Values: records, aggregates, credit entries and the counters are written in a
//! compact binary form (postcard) behind a leading format byte
//! [`FORMAT_BINARY_V1`]; everything else, and every value written before that
//! format existed, is JSON (which always starts with `{`). Readers accept both.
//!
//! Records: a group commit writes its records as *record blocks*
//! ([`FORMAT_RECORD_BLOCK_V1`]): one value per period holding up to
//! [`BLOCK_BYTES`] of consecutive records, keyed by the first record's id, so a
//! record costs a fraction of a sled key instead of a key of its own. Older
//! databases hold one record per key; both read the same way (a single record
//! is a block of one) in `get_record`, `query_records` and `for_each_record`.

mod client_index;

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_CACHE_BYTES;
use crate::error::StoreError;
use crate::model::{
    AggKey, AggScan, Alert, ClientPlan, CreditBucket, CreditEntry, CreditUse, Meta, Page, RecordId,
    RecordKind, RecordQuery, StoredRecord, Totals, UsageRecord,
};
use crate::period::Period;
use crate::store::{CommitGroup, LedgerStore};

use client_index::{ClientIndex, INDEX_MARK, IndexChange, IndexMark};

const META: &[u8] = b"M";
const RECORD: u8 = b'R';
const IDEMPOTENCY: u8 = b'I';
const CLIENT_INDEX: u8 = b'C';
const AGGREGATE: u8 = b'A';
const PLAN: u8 = b'P';
const BUCKET: u8 = b'B';
const TOPUP_KEY: u8 = b'T';
const ENTRY: u8 = b'E';
const ALERT: u8 = b'L';
const ALERT_MARKER: u8 = b'D';

/// Leading byte of a value in postcard (binary) encoding, version 1. Postcard
/// encodes struct fields in declaration order and enum variants by index, so a
/// change to the field list or variant order of a binary-encoded type
/// ([`StoredRecord`] via [`BinRecord`], [`Totals`], [`CreditEntry`], [`Meta`])
/// needs a new format byte; values of older formats must stay readable.
pub const FORMAT_BINARY_V1: u8 = 0x01;

/// Leading byte of a record block (the value of an `R` key written since record
/// blocks exist): `0x02`, the record count `n` (u32 BE), `n` directory entries
/// (seq u64 BE, encoded length u32 BE) in ascending seq order, then the `n`
/// records, each a postcard [`BinRecord`] (the [`FORMAT_BINARY_V1`] encoding
/// without its format byte). The key is the first record's `R` key; every record
/// of a block has the key's period and a seq below the next block's first seq.
pub const FORMAT_RECORD_BLOCK_V1: u8 = 0x02;

/// A block is closed before it grows past this many bytes of records (a record
/// larger than that gets a block of its own). Small enough that a sled leaf of
/// blocks (at most 17 values) stays below sled's out-of-line blob threshold
/// (a quarter of its 512 KiB segment), large enough that a block holds ~15
/// typical records.
pub const BLOCK_BYTES: usize = 6 * 1024;

/// Leading byte of a redo-log chunk: `0x03`, a "last chunk" flag byte (0 or 1),
/// then the group's writes as (key length u32 BE, key, value length u32 BE,
/// value), in the order they are applied.
const FORMAT_REDO_V1: u8 = 0x03;

/// A redo chunk is closed once it holds this many bytes, so none reaches sled's
/// out-of-line blob threshold (a quarter of its 512 KiB segment), which would
/// cost a file of its own.
const REDO_CHUNK_BYTES: usize = 64 * 1024;

/// Sled-backed [`LedgerStore`].
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Redo log: key (group number u64 BE, chunk number u32 BE). Holds a group's
    /// writes while they are applied one by one; empty between commits.
    redo: sled::Tree,
    /// Held exclusively while a group is applied, shared by the reads that span
    /// several keys, so those still see each group entirely or not at all.
    /// Single-key reads (and the engine's own, which know what is in flight)
    /// go without it.
    apply_lock: std::sync::RwLock<u64>,
    /// The client index's pending ids and mark. Changed by a commit while it
    /// holds `apply_lock`, and read under `apply_lock` (always taken first).
    index: Mutex<ClientIndex>,
}

/// A group's writes, in the order they are applied (and replayed).
#[derive(Debug, Default)]
struct Writes(Vec<Write>);

/// One whole-value write: (key, value).
type Write = (Vec<u8>, Vec<u8>);

impl Writes {
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push((key.into(), value.into()));
    }

    /// The redo chunks of these writes, each at most about [`REDO_CHUNK_BYTES`].
    fn redo_chunks(&self) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut cur = redo_chunk_start();
        for (k, v) in &self.0 {
            if cur.len() > 2 && cur.len() + k.len() + v.len() + 8 > REDO_CHUNK_BYTES {
                chunks.push(std::mem::replace(&mut cur, redo_chunk_start()));
            }
            for part in [k, v] {
                cur.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
                cur.extend_from_slice(part);
            }
        }
        cur[1] = 1;
        chunks.push(cur);
        chunks
    }
}

fn redo_chunk_start() -> Vec<u8> {
    let mut v = Vec::with_capacity(REDO_CHUNK_BYTES + 1024);
    v.push(FORMAT_REDO_V1);
    v.push(0);
    v
}

fn redo_key(group: u64, chunk: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// Parses a redo chunk: whether it is its group's last, and its writes.
fn decode_redo_chunk(key: &[u8], v: &[u8]) -> Result<(bool, Vec<Write>), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: format!("redo {}", hex::encode(key)),
        reason: reason.into(),
    };
    let (&[format, last], mut rest) = v
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt("too short"))?;
    if format != FORMAT_REDO_V1 || last > 1 {
        return Err(corrupt("unknown redo format"));
    }
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt("length"))?;
        if tail.len() < len {
            return Err(corrupt("truncated write"));
        }
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        Ok(part.to_vec())
    };
    let mut writes = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        writes.push((k, v));
    }
    Ok((last == 1, writes))
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Hands this thread's deferred sled garbage to crossbeam's global queue.
///
/// sled frees replaced pages and its 512 KiB log buffers through crossbeam's
/// epoch reclamation, which keeps each deferred drop in the calling thread's
/// bag until 64 have gathered. A thread that seals a buffer once per flush
/// (batched mode's flusher) filled its bag over 64 flushes, so dead buffers
/// piled up with the flush interval: the gateway peaked at 64 MB with a 2 ms
/// interval, 72 MB at 10 ms and 92 MB at 100 ms. Handing the bag over after
/// every commit and flush lets the next collection free them (67 MB at 100 ms,
/// 62-63 MB at 10 ms; CPU per request unchanged within noise: BENCHMARKS.md,
/// Gateway).
fn release_deferred_garbage() {
    crossbeam_epoch::pin().flush();
}

/// How long [`SledStore::open`] waits for the directory's file lock.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (up to [`LOCK_RELEASE_WAIT`]) until nobody holds sled's lock on the
/// database file, then lets sled take it.
///
/// sled releases the lock only when the last reference to its internals
/// goes, and after the last handle is dropped some still live for a moment
/// in its IO threads and in crossbeam's deferred drops. A store of the same
/// directory closed just before in this process (a restart of the ledger,
/// the reopen in the crash-recovery tests: about one in ten failed on it) is
/// therefore waited for, draining the deferred drops meanwhile, instead of
/// failing. A lock held by another process outlasts the wait, and sled
/// reports it.
fn wait_for_lock_release(dir: &Path) {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return; // a new database: nothing holds it
    };
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return;
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                release_deferred_garbage();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database at `path` with the default page cache
    /// ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database at `path` with a page cache of
    /// `cache_bytes`. Sled's own background flusher is off: the engine decides
    /// when to flush, per durability mode.
    ///
    /// sled's default cache (1 GiB) lets a busy gateway's resident memory grow
    /// far past what the ledger needs, so the default here is small; a larger
    /// one speeds ingest once the tree outgrows it (BENCHMARKS.md, Ledger).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        wait_for_lock_release(path);
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Self::from_db(db)
    }

    /// An in-memory database that disappears on drop (tests).
    pub fn temporary() -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()?;
        Self::from_db(db)
    }

    /// The database handle, for the control-plane store that shares it.
    pub(crate) fn db(&self) -> sled::Db {
        self.db.clone()
    }

    fn from_db(db: sled::Db) -> Result<SledStore, StoreError> {
        let tree = db.open_tree("ledger")?;
        let redo = db.open_tree("ledger_redo")?;
        let mut store = SledStore {
            db,
            tree,
            redo,
            apply_lock: std::sync::RwLock::new(0),
            index: Mutex::new(ClientIndex::new(None, 0)),
        };
        store.replay_redo()?;
        store.index = Mutex::new(store.load_client_index()?);
        Ok(store)
    }

    /// The client index as stored: its mark, and as pending every record the
    /// stored lists do not cover (only after a crash: a checkpoint, which
    /// every clean shutdown makes, writes them all).
    fn load_client_index(&self) -> Result<ClientIndex, StoreError> {
        let mark: Option<IndexMark> = self.get_json(INDEX_MARK)?;
        let mut index = ClientIndex::new(mark, self.load_meta()?.next_seq);
        if let Some(from) = index.mark().pending_from {
            self.for_each_record(Some(from), &mut |r| {
                index.add_pending(&r);
                Ok(())
            })?;
        }
        Ok(index)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, ClientIndex> {
        // Poisoned only by a commit that panicked; that commit also poisoned
        // `apply_lock`, which refuses further commits, and reads go on as
        // `read_guard` lets them.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finishes the groups a crash interrupted while they were being applied:
    /// a group whose last redo chunk survived is applied again (its writes are
    /// whole values, so applying one twice is harmless), one without it never
    /// started applying and is dropped. Then the redo log is emptied.
    fn replay_redo(&self) -> Result<(), StoreError> {
        if self.redo.is_empty() {
            return Ok(());
        }
        let mut group: Option<u64> = None;
        let mut pending: Vec<Write> = Vec::new();
        let mut replayed = 0u64;
        for kv in self.redo.iter() {
            let (k, v) = kv?;
            let no = k
                .first_chunk::<8>()
                .map(|b| u64::from_be_bytes(*b))
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("redo {}", hex::encode(&k)),
                    reason: "short key".into(),
                })?;
            if group != Some(no) {
                pending.clear();
                group = Some(no);
            }
            let (last, writes) = decode_redo_chunk(&k, &v)?;
            pending.extend(writes);
            if last {
                for (wk, wv) in pending.drain(..) {
                    self.tree.insert(wk, wv)?;
                }
                replayed += 1;
            }
        }
        self.redo.clear()?;
        self.db.flush()?;
        tracing::info!(
            groups = replayed,
            "ledger: finished group commits interrupted by a crash"
        );
        Ok(())
    }

    /// Stores a group's redo chunks, the last one flagged; returns how many.
    fn write_redo(&self, group_no: u64, writes: &Writes) -> Result<u32, StoreError> {
        let mut n = 0u32;
        for chunk in writes.redo_chunks() {
            self.redo.insert(redo_key(group_no, n), chunk)?;
            n = n
                .checked_add(1)
                .ok_or_else(|| StoreError::Backend("group too large".into()))?;
        }
        Ok(n)
    }

    /// The last entry at or before `key` whose key starts with `prefix`: the
    /// record block or client-index list that holds `key`'s record, as keys of
    /// blocks and lists are their first record's.
    fn floor_entry(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self
            .tree
            .range::<&[u8], _>(prefix..=key)
            .next_back()
            .transpose()?)
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, u64> {
        // A poisoned lock only means a commit panicked mid-way; the data is as
        // sled holds it, so reading on is no worse than without the lock.
        self.apply_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    fn scan_json<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

/// Binary encoding: [`FORMAT_BINARY_V1`] then postcard. Only for types without
/// internally tagged enums or flattened fields (postcard cannot read those back).
fn encode_bin<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_BINARY_V1);
    postcard::to_extend(v, out).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

/// Reads a value in either format (binary when it starts with the format byte).
fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    let bad = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match v.split_first() {
        Some((&FORMAT_BINARY_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| bad(format!("binary value: {e}")))
        }
        _ => serde_json::from_slice(v).map_err(|e| bad(e.to_string())),
    }
}

/// [`RecordKind`] as stored in binary form (externally tagged, by variant index).
#[derive(Serialize, Deserialize)]
enum BinKind {
    Usage,
    Reversal { original: RecordId, reason: String },
}

/// [`StoredRecord`] as stored in binary form: the same fields without the
/// flattened, internally tagged `kind` that postcard cannot decode.
#[derive(Serialize, Deserialize)]
struct BinRecord {
    id: RecordId,
    late_adjustment: bool,
    recorded_at: DateTime<Utc>,
    kind: BinKind,
    credits_applied: Vec<CreditUse>,
    record: UsageRecord,
}

/// Borrowing twin of [`BinRecord`] for encoding without copying the record.
#[derive(Serialize)]
struct BinRecordRef<'a> {
    id: RecordId,
    late_adjustment: bool,
    recorded_at: &'a DateTime<Utc>,
    kind: BinKindRef<'a>,
    credits_applied: &'a [CreditUse],
    record: &'a UsageRecord,
}

#[derive(Serialize)]
enum BinKindRef<'a> {
    Usage,
    Reversal { original: RecordId, reason: &'a str },
}

/// A single record as written before record blocks ([`FORMAT_BINARY_V1`]);
/// still read, written only by tests now.
#[cfg(test)]
fn encode_record(r: &StoredRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_BINARY_V1];
    encode_block_payload(r, &mut out)?;
    Ok(out)
}

/// Reads a record in binary form, or as JSON (records written before the
/// binary format).
fn decode_record(key: &[u8], v: &[u8]) -> Result<StoredRecord, StoreError> {
    if v.first() != Some(&FORMAT_BINARY_V1) {
        return decode(key, v);
    }
    let b: BinRecord = decode(key, v)?;
    Ok(from_bin(b))
}

fn from_bin(b: BinRecord) -> StoredRecord {
    StoredRecord {
        id: b.id,
        late_adjustment: b.late_adjustment,
        recorded_at: b.recorded_at,
        kind: match b.kind {
            BinKind::Usage => RecordKind::Usage,
            BinKind::Reversal { original, reason } => RecordKind::Reversal { original, reason },
        },
        credits_applied: b.credits_applied,
        record: b.record,
    }
}

/// Appends one record's block payload (a postcard [`BinRecord`]).
fn encode_block_payload(r: &StoredRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let v = BinRecordRef {
        id: r.id,
        late_adjustment: r.late_adjustment,
        recorded_at: &r.recorded_at,
        kind: match &r.kind {
            RecordKind::Usage => BinKindRef::Usage,
            RecordKind::Reversal { original, reason } => BinKindRef::Reversal {
                original: *original,
                reason,
            },
        },
        credits_applied: &r.credits_applied,
        record: &r.record,
    };
    let buf = std::mem::take(out);
    *out = postcard::to_extend(&v, buf).map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
    Ok(())
}

/// Everything a group changes, as whole-value writes in application order
/// (record blocks before the keys that point into them, the counters last),
/// and what it does to the client index's memory once they are applied.
fn commit_writes(
    g: &CommitGroup,
    index: &ClientIndex,
) -> Result<(Writes, IndexChange), StoreError> {
    let mut writes = group_writes(g)?;
    let change = index.plan(&g.records, !g.aggregates.is_empty(), &mut writes)?;
    writes.insert(META, encode_bin(&g.meta)?);
    Ok((writes, change))
}

/// [`commit_writes`] without the client index and the counters.
fn group_writes(g: &CommitGroup) -> Result<Writes, StoreError> {
    let mut b = Writes::default();
    write_record_blocks(&g.records, &mut b)?;
    for r in &g.records {
        b.insert(
            prefixed(IDEMPOTENCY, &r.record.idempotency_key),
            id_bytes(r.id).to_vec(),
        );
    }
    for a in &g.aggregates {
        b.insert(agg_key(&a.key), encode_bin(&a.value)?);
    }
    for e in &g.credit_entries {
        b.insert(entry_key(&e.client_id, e.seq), encode_bin(e)?);
    }
    for bk in &g.buckets {
        b.insert(bucket_key(&bk.client_id, &bk.id), encode(bk)?);
    }
    for (key, bucket) in &g.topup_keys {
        b.insert(prefixed(TOPUP_KEY, key), bucket.as_bytes().to_vec());
    }
    for p in &g.plans {
        b.insert(prefixed(PLAN, &p.client_id), encode(p)?);
    }
    for a in &g.alerts {
        b.insert(alert_key(a.id), encode(a)?);
    }
    for (client, period, pct) in &g.alert_markers {
        let mut k = marker_prefix(client, *period);
        k.extend_from_slice(&pct.to_be_bytes());
        b.insert(k, Vec::new());
    }
    Ok(b)
}

/// Records of one group, cut into blocks: per period, in seq order, at most
/// [`BLOCK_BYTES`] of records each (see [`FORMAT_RECORD_BLOCK_V1`]).
fn write_record_blocks(records: &[StoredRecord], batch: &mut Writes) -> Result<(), StoreError> {
    struct Open {
        key: Vec<u8>,
        period: Period,
        dir: Vec<(u64, u32)>,
        payload: Vec<u8>,
    }
    fn close(b: Open, batch: &mut Writes) {
        let mut v = Vec::with_capacity(5 + b.dir.len() * 12 + b.payload.len());
        v.push(FORMAT_RECORD_BLOCK_V1);
        v.extend_from_slice(&u32::try_from(b.dir.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (seq, len) in &b.dir {
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&len.to_be_bytes());
        }
        v.extend_from_slice(&b.payload);
        batch.insert(b.key, v);
    }
    let mut order: Vec<&StoredRecord> = records.iter().collect();
    // Records are pushed in seq order; a group may span periods (late records).
    order.sort_by_key(|r| (r.id.period, r.id.seq));
    let mut cur: Option<Open> = None;
    let mut scratch = Vec::with_capacity(512);
    for r in order {
        scratch.clear();
        encode_block_payload(r, &mut scratch)?;
        let len = u32::try_from(scratch.len())
            .map_err(|_| StoreError::Backend("record too large".into()))?;
        if let Some(b) = cur
            .take_if(|b| b.period != r.id.period || b.payload.len() + scratch.len() > BLOCK_BYTES)
        {
            close(b, batch);
        }
        let b = cur.get_or_insert_with(|| Open {
            key: record_key(r.id),
            period: r.id.period,
            dir: Vec::with_capacity(16),
            payload: Vec::with_capacity(BLOCK_BYTES + 512),
        });
        b.dir.push((r.id.seq, len));
        b.payload.extend_from_slice(&scratch);
    }
    if let Some(b) = cur {
        close(b, batch);
    }
    Ok(())
}

/// The records held by the value of an `R` key, as (seq, encoded record) in
/// seq order: the entries of a block, or the single record of a value written
/// before record blocks existed (its seq from the key).
fn record_entries<'a>(key: &[u8], v: &'a [u8]) -> Result<Vec<(u64, Entry<'a>)>, StoreError> {
    if v.first() != Some(&FORMAT_RECORD_BLOCK_V1) {
        let mut r = Reader { key, pos: 1 };
        r.period()?;
        return Ok(vec![(r.u64()?, Entry::Single(v))]);
    }
    let mut r = Reader { key: v, pos: 1 };
    let bad = || corrupt(key, "truncated record block");
    let n = r.u32().map_err(|_| bad())? as usize;
    let mut dir = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let seq = r.u64().map_err(|_| bad())?;
        let len = r.u32().map_err(|_| bad())? as usize;
        dir.push((seq, len));
    }
    let mut out = Vec::with_capacity(dir.len());
    for (seq, len) in dir {
        out.push((seq, Entry::Block(r.take(len).map_err(|_| bad())?)));
    }
    Ok(out)
}

/// One encoded record inside an `R` value.
#[derive(Clone, Copy)]
enum Entry<'a> {
    /// A whole value in the pre-block formats (JSON or [`FORMAT_BINARY_V1`]).
    Single(&'a [u8]),
    /// A postcard [`BinRecord`] inside a block.
    Block(&'a [u8]),
}

fn decode_entry(key: &[u8], e: Entry<'_>) -> Result<StoredRecord, StoreError> {
    match e {
        Entry::Single(v) => decode_record(key, v),
        Entry::Block(b) => postcard::from_bytes::<BinRecord>(b)
            .map(from_bin)
            .map_err(|e| corrupt(key, &format!("record in block: {e}"))),
    }
}

fn corrupt(key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Length-prefixing (rather than a terminator) keeps any byte legal in ids
    // while a prefix of fields still identifies a unique key range.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_period(buf: &mut Vec<u8>, p: Period) {
    buf.extend_from_slice(&p.key().to_be_bytes());
}

struct Reader<'a> {
    key: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.key.len());
        let end = end.ok_or_else(|| corrupt(self.key, "key too short"))?;
        let s = &self.key[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let len = self.u32()? as usize;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt(self.key, "non-UTF-8 id"))
    }
    fn period(&mut self) -> Result<Period, StoreError> {
        let k = self.u32()?;
        Period::from_key(k).map_err(|_| corrupt(self.key, "bad period"))
    }
}

fn record_key(id: RecordId) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(RECORD);
    put_period(&mut k, id.period);
    k.extend_from_slice(&id.seq.to_be_bytes());
    k
}

fn id_bytes(id: RecordId) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&id.period.key().to_be_bytes());
    b[4..].copy_from_slice(&id.seq.to_be_bytes());
    b
}

fn id_from_bytes(key: &[u8], b: &[u8]) -> Result<RecordId, StoreError> {
    let mut r = Reader { key: b, pos: 0 };
    let period = r.period().map_err(|_| corrupt(key, "bad record id"))?;
    let seq = r.u64().map_err(|_| corrupt(key, "bad record id"))?;
    Ok(RecordId { period, seq })
}

fn prefixed(tag: u8, s: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(s.as_bytes());
    k
}

/// The record ids of one client's stored `C` keys under a prefix, in
/// (period, seq) order, from the first after a cursor's id.
struct StoredClientIds {
    keys: sled::Iter,
    prefix: Vec<u8>,
    id_at: usize,
    after: Option<RecordId>,
    list: std::vec::IntoIter<RecordId>,
}

impl StoredClientIds {
    fn new(
        store: &SledStore,
        client: &str,
        prefix: Vec<u8>,
        id_at: usize,
        after: Option<RecordId>,
    ) -> Result<Self, StoreError> {
        // Resume in the list that holds the cursor's record.
        let mut start = prefix.clone();
        if let Some(a) = after
            && let Some((k, _)) = store.floor_entry(&prefix, &client_index_key(client, a))?
        {
            start = k.to_vec();
        }
        Ok(StoredClientIds {
            keys: store.tree.range(start..),
            prefix,
            id_at,
            after,
            list: Vec::new().into_iter(),
        })
    }

    fn next_id(&mut self) -> Result<Option<RecordId>, StoreError> {
        loop {
            for id in self.list.by_ref() {
                if self.after.is_none_or(|a| id > a) {
                    return Ok(Some(id));
                }
            }
            let Some(kv) = self.keys.next() else {
                return Ok(None);
            };
            let (k, v) = kv?;
            if !k.starts_with(&self.prefix) {
                return Ok(None);
            }
            self.list = client_index::stored_ids(&k, &v, self.id_at)?.into_iter();
        }
    }
}

fn client_index_key(client: &str, id: RecordId) -> Vec<u8> {
    let mut k = vec![CLIENT_INDEX];
    put_str(&mut k, client);
    k.extend_from_slice(&id_bytes(id));
    k
}

/// Encodes an aggregate key; field order matches the scans in [`agg_scan_prefix`].
pub(crate) fn agg_key(key: &AggKey) -> Vec<u8> {
    let mut k = vec![AGGREGATE];
    match key {
        AggKey::Client { client, period } => {
            k.push(1);
            put_str(&mut k, client);
            put_period(&mut k, *period);
        }
        AggKey::Agency { agency, period } => {
            k.push(2);
            put_str(&mut k, agency);
            put_period(&mut k, *period);
        }
        AggKey::AgencyClient {
            agency,
            period,
            client,
        } => {
            k.push(3);
            put_str(&mut k, agency);
            put_period(&mut k, *period);
            put_str(&mut k, client);
        }
        AggKey::ClientModel {
            client,
            period,
            model,
        } => {
            k.push(4);
            put_str(&mut k, client);
            put_period(&mut k, *period);
            put_str(&mut k, model);
        }
        AggKey::ClientUnit {
            client,
            period,
            unit,
        } => {
            k.push(5);
            put_str(&mut k, client);
            put_period(&mut k, *period);
            put_str(&mut k, unit);
        }
        AggKey::Provider { period, provider } => {
            k.push(6);
            put_period(&mut k, *period);
            put_str(&mut k, provider);
        }
        AggKey::Model { period, model } => {
            k.push(7);
            put_period(&mut k, *period);
            put_str(&mut k, model);
        }
    }
    k
}

pub(crate) fn agg_scan_prefix(scan: &AggScan) -> Vec<u8> {
    let mut k = vec![AGGREGATE];
    match scan {
        AggScan::ClientModels { client, period } => {
            k.push(4);
            put_str(&mut k, client);
            put_period(&mut k, *period);
        }
        AggScan::ClientUnits { client, period } => {
            k.push(5);
            put_str(&mut k, client);
            put_period(&mut k, *period);
        }
        AggScan::AgencyClients { agency, period } => {
            k.push(3);
            put_str(&mut k, agency);
            put_period(&mut k, *period);
        }
        AggScan::Providers { period } => {
            k.push(6);
            put_period(&mut k, *period);
        }
        AggScan::Models { period } => {
            k.push(7);
            put_period(&mut k, *period);
        }
        AggScan::All => {}
    }
    k
}

pub(crate) fn decode_agg_key(key: &[u8]) -> Result<AggKey, StoreError> {
    let mut r = Reader { key, pos: 0 };
    let tag = r.take(2)?;
    if tag[0] != AGGREGATE {
        return Err(corrupt(key, "not an aggregate key"));
    }
    let k = match tag[1] {
        1 => AggKey::Client {
            client: r.string()?,
            period: r.period()?,
        },
        2 => AggKey::Agency {
            agency: r.string()?,
            period: r.period()?,
        },
        3 => AggKey::AgencyClient {
            agency: r.string()?,
            period: r.period()?,
            client: r.string()?,
        },
        4 => AggKey::ClientModel {
            client: r.string()?,
            period: r.period()?,
            model: r.string()?,
        },
        5 => AggKey::ClientUnit {
            client: r.string()?,
            period: r.period()?,
            unit: r.string()?,
        },
        6 => AggKey::Provider {
            period: r.period()?,
            provider: r.string()?,
        },
        7 => AggKey::Model {
            period: r.period()?,
            model: r.string()?,
        },
        _ => return Err(corrupt(key, "unknown aggregate kind")),
    };
    if r.pos != key.len() {
        return Err(corrupt(key, "trailing bytes in aggregate key"));
    }
    Ok(k)
}

fn bucket_key(client: &str, id: &str) -> Vec<u8> {
    let mut k = vec![BUCKET];
    put_str(&mut k, client);
    put_str(&mut k, id);
    k
}

fn entry_key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = vec![ENTRY];
    put_str(&mut k, client);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn marker_prefix(client: &str, period: Period) -> Vec<u8> {
    let mut k = vec![ALERT_MARKER];
    put_str(&mut k, client);
    put_period(&mut k, period);
    k
}

fn alert_key(id: u64) -> Vec<u8> {
    let mut k = vec![ALERT];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn decode_cursor(c: &str) -> Result<Vec<u8>, StoreError> {
    hex::decode(c).map_err(|_| StoreError::Backend(format!("invalid cursor {c:?}")))
}

impl LedgerStore for SledStore {
    fn load_meta(&self) -> Result<Meta, StoreError> {
        Ok(self.get_json(META)?.unwrap_or_default())
    }

    /// Writes the group's redo chunks (the last one flagged), then applies the
    /// writes one by one in the same order, then empties the redo log. sled
    /// recovers a prefix of its log after a crash, so if any applied write
    /// survives, the whole redo record before it does too, and
    /// [`SledStore::replay_redo`] completes the group at the next open; if the
    /// last chunk did not survive, no write of the group did.
    ///
    /// The client index is written as lists when the group is an aggregate
    /// checkpoint (see `client_index`); until then its records are pending,
    /// in memory, which this brings in step once the writes are applied.
    fn commit(&self, g: &CommitGroup) -> Result<(), StoreError> {
        let mut group_no = self
            .apply_lock
            .write()
            .map_err(|_| StoreError::Backend("an earlier commit panicked".into()))?;
        let mut index = self.index();
        let (writes, change) = commit_writes(g, &index)?;
        *group_no += 1;
        let chunks = self.write_redo(*group_no, &writes)?;
        for (k, v) in writes.0 {
            self.tree.insert(k, v)?;
        }
        for i in 0..chunks {
            self.redo.remove(redo_key(*group_no, i))?;
        }
        index.apply(change, &g.records);
        drop(index);
        release_deferred_garbage();
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        release_deferred_garbage();
        Ok(())
    }

    fn find_idempotency_key(&self, key: &str) -> Result<Option<RecordId>, StoreError> {
        let k = prefixed(IDEMPOTENCY, key);
        match self.tree.get(&k)? {
            Some(v) => Ok(Some(id_from_bytes(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn idempotency_key_count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for kv in self.tree.scan_prefix([IDEMPOTENCY]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    fn get_record(&self, id: RecordId) -> Result<Option<StoredRecord>, StoreError> {
        // The block holding `id` is the last `R` key of its period at or before it.
        let key = record_key(id);
        let Some((k, v)) = self.floor_entry(&key[..5], &key)? else {
            return Ok(None);
        };
        match record_entries(&k, &v)?
            .into_iter()
            .find(|(seq, _)| *seq == id.seq)
        {
            Some((_, e)) => Ok(Some(decode_entry(&k, e)?)),
            None => Ok(None),
        }
    }

    fn query_records(&self, q: &RecordQuery) -> Result<Page<StoredRecord>, StoreError> {
        let _applied = self.read_guard();
        let limit = if q.limit == 0 { 100 } else { q.limit };
        let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut items = Vec::new();
        // The cursor is the key of the last record returned: its client-index
        // key, or its `R` key (a block key or, inside a block, the key the
        // record would have on its own; both sort by (period, seq)).
        let mut last_key: Option<Vec<u8>> = None;
        let wanted = |rec: &StoredRecord| {
            let u = &rec.record;
            q.model
                .as_ref()
                .is_none_or(|m| &u.routed_model == m || &u.requested_model == m)
                && q.unit.as_ref().is_none_or(|n| u.units.contains_key(n))
                && q.agency.as_ref().is_none_or(|a| &u.agency_id == a)
        };
        if let Some(c) = &q.client {
            let mut prefix = vec![CLIENT_INDEX];
            put_str(&mut prefix, c);
            let id_offset = prefix.len();
            let after = match &cursor {
                Some(k) => {
                    let id = (k.len() == id_offset + 12 && k.starts_with(&prefix))
                        .then(|| id_from_bytes(k, &k[id_offset..]).ok())
                        .flatten()
                        .filter(|id| q.period.is_none_or(|p| p == id.period));
                    match id {
                        Some(id) => Some(id),
                        None => {
                            return Err(StoreError::Backend(
                                "invalid cursor: not from this listing".into(),
                            ));
                        }
                    }
                }
                None => None,
            };
            if let Some(p) = q.period {
                put_period(&mut prefix, p);
            }
            let mut pending = self
                .index()
                .pending_ids(c, q.period, after)
                .into_iter()
                .peekable();
            let mut stored = StoredClientIds::new(self, c, prefix, id_offset, after)?;
            let mut next_stored = stored.next_id()?;
            // Stored lists and pending ids are each in (period, seq) order and
            // disjoint (pending seqs are at or above the mark, stored ones
            // below): merge.
            loop {
                let id = match (next_stored, pending.peek()) {
                    (Some(s), Some(&p)) if p < s => pending.next(),
                    (Some(_), _) => std::mem::replace(&mut next_stored, stored.next_id()?),
                    (None, _) => pending.next(),
                };
                let Some(id) = id else { break };
                let key = client_index_key(c, id);
                let Some(rec) = self.get_record(id)? else {
                    return Err(corrupt(&key, "client index points at no record"));
                };
                last_key = Some(key);
                if wanted(&rec) {
                    items.push(rec);
                    if items.len() == limit {
                        break;
                    }
                }
            }
        } else {
            let mut prefix = vec![RECORD];
            if let Some(p) = q.period {
                put_period(&mut prefix, p);
            }
            // Resume in the block that holds the cursor's record.
            let mut start = prefix.clone();
            if let Some(c) = &cursor {
                let floor = self.floor_entry(&prefix, c)?;
                start = floor.map_or_else(|| c.clone(), |(k, _)| k.to_vec());
            }
            'blocks: for kv in self.tree.range(start..) {
                let (k, v) = kv?;
                if !k.starts_with(&prefix) {
                    break;
                }
                for (seq, e) in record_entries(&k, &v)? {
                    let mut rk = k[..5].to_vec();
                    rk.extend_from_slice(&seq.to_be_bytes());
                    if cursor.as_ref().is_some_and(|c| rk <= *c) {
                        continue;
                    }
                    let rec = decode_entry(&k, e)?;
                    last_key = Some(rk);
                    if wanted(&rec) {
                        items.push(rec);
                        if items.len() == limit {
                            break 'blocks;
                        }
                    }
                }
            }
        }
        let next_cursor = if items.len() == limit {
            last_key.map(hex::encode)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    fn for_each_record(
        &self,
        from: Option<Period>,
        f: &mut dyn FnMut(StoredRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut start = vec![RECORD];
        if let Some(p) = from {
            put_period(&mut start, p);
        }
        for kv in self.tree.range(start..) {
            let (k, v) = kv?;
            if k.first() != Some(&RECORD) {
                break;
            }
            for (_, e) in record_entries(&k, &v)? {
                f(decode_entry(&k, e)?)?;
            }
        }
        Ok(())
    }

    fn get_aggregate(&self, key: &AggKey) -> Result<Option<Totals>, StoreError> {
        self.get_json(&agg_key(key))
    }

    fn scan_aggregates(&self, scan: &AggScan) -> Result<Vec<(AggKey, Totals)>, StoreError> {
        let _applied = self.read_guard();
        self.tree
            .scan_prefix(agg_scan_prefix(scan))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((decode_agg_key(&k)?, decode(&k, &v)?))
            })
            .collect()
    }

    fn get_plan(&self, client: &str) -> Result<Option<ClientPlan>, StoreError> {
        self.get_json(&prefixed(PLAN, client))
    }

    fn buckets(&self, client: &str) -> Result<Vec<CreditBucket>, StoreError> {
        let _applied = self.read_guard();
        let mut k = vec![BUCKET];
        put_str(&mut k, client);
        self.scan_json(&k)
    }

    fn all_buckets(&self) -> Result<Vec<CreditBucket>, StoreError> {
        let _applied = self.read_guard();
        self.scan_json(&[BUCKET])
    }

    fn find_topup_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let k = prefixed(TOPUP_KEY, key);
        match self.tree.get(&k)? {
            Some(v) => Ok(Some(
                String::from_utf8(v.to_vec()).map_err(|_| corrupt(&k, "bucket id"))?,
            )),
            None => Ok(None),
        }
    }

    fn credit_entries(&self, client: Option<&str>) -> Result<Vec<CreditEntry>, StoreError> {
        let _applied = self.read_guard();
        let mut k = vec![ENTRY];
        if let Some(c) = client {
            put_str(&mut k, c);
        }
        self.scan_json(&k)
    }

    fn alerted_thresholds(&self, client: &str, period: Period) -> Result<Vec<u32>, StoreError> {
        let prefix = marker_prefix(client, period);
        self.tree
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, _) = kv?;
                let mut r = Reader {
                    key: &k,
                    pos: prefix.len(),
                };
                r.u32()
            })
            .collect()
    }

    fn get_alert(&self, id: u64) -> Result<Option<Alert>, StoreError> {
        self.get_json(&alert_key(id))
    }

    fn alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let _applied = self.read_guard();
        self.scan_json(&[ALERT])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_round_trip_and_scan_prefixes_select_them() {
        let p: Period = "2025-03".parse().unwrap();
        let keys = [
            AggKey::Client {
                client: "c1".into(),
                period: p,
            },
            AggKey::Agency {
                agency: "a".into(),
                period: p,
            },
            AggKey::AgencyClient {
                agency: "a".into(),
                period: p,
                client: "c\u{0}1".into(),
            },
            AggKey::ClientModel {
                client: "c1".into(),
                period: p,
                model: "gpt".into(),
            },
            AggKey::ClientUnit {
                client: "c1".into(),
                period: p,
                unit: "doc".into(),
            },
            AggKey::Provider {
                period: p,
                provider: "openai".into(),
            },
            AggKey::Model {
                period: p,
                model: "gpt".into(),
            },
        ];
        for k in &keys {
            assert_eq!(&decode_agg_key(&agg_key(k)).unwrap(), k);
        }
        let scan = agg_scan_prefix(&AggScan::ClientModels {
            client: "c1".into(),
            period: p,
        });
        let matching: Vec<_> = keys
            .iter()
            .filter(|k| agg_key(k).starts_with(&scan))
            .collect();
        assert_eq!(matching, vec![&keys[3]]);
        // "c1" must not be a prefix-match for client "c10".
        let other = AggKey::ClientModel {
            client: "c10".into(),
            period: p,
            model: "gpt".into(),
        };
        assert!(!agg_key(&other).starts_with(&scan));
    }

    pub(super) fn sample(kind: RecordKind, seq: u64) -> StoredRecord {
        let at = DateTime::parse_from_rfc3339("2025-01-10T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let p: Period = "2025-01".parse().unwrap();
        StoredRecord {
            id: RecordId { period: p, seq },
            late_adjustment: seq.is_multiple_of(2),
            recorded_at: at,
            kind,
            credits_applied: vec![CreditUse {
                bucket_id: "topup:x".into(),
                amount: "1.2500".parse().unwrap(),
            }],
            record: UsageRecord {
                idempotency_key: format!("k{seq}"),
                request_id: "r".into(),
                agency_id: "a".into(),
                client_id: "c".into(),
                app_id: Some("app".into()),
                end_user_id: None,
                started_at: at,
                finished_at: at,
                requested_model: "auto".into(),
                requested_provider: Some("openai".into()),
                routed_model: "gpt".into(),
                routed_provider: "openai".into(),
                tokens: crate::model::Tokens {
                    input: 1,
                    output: u64::MAX,
                    cached: 0,
                },
                provider_cost: "0.000123".parse().unwrap(),
                price_version: "v".into(),
                surcharge: "-0.5".parse().unwrap(),
                total_charged: "0".parse().unwrap(),
                units: [("doc".to_string(), "2.50".parse().unwrap())].into(),
                plugin: crate::model::PluginRef::default(),
                flags: crate::model::RecordFlags {
                    failed: true,
                    ..Default::default()
                },
                reservation_id: Some(crate::model::ReservationId(7)),
            },
        }
    }

    /// Writes records the way a version before record blocks and index lists
    /// did: a key per record (its value from `encode`), its idempotency key,
    /// a client-index key with an empty value.
    pub(super) fn write_legacy(
        store: &SledStore,
        records: &[StoredRecord],
        encode: impl Fn(&StoredRecord) -> Vec<u8>,
    ) {
        for r in records {
            store.tree.insert(record_key(r.id), encode(r)).unwrap();
            store
                .tree
                .insert(
                    prefixed(IDEMPOTENCY, &r.record.idempotency_key),
                    id_bytes(r.id).to_vec(),
                )
                .unwrap();
            store
                .tree
                .insert(
                    client_index_key(&r.record.client_id, r.id),
                    Vec::<u8>::new(),
                )
                .unwrap();
        }
    }

    #[test]
    fn records_round_trip_in_binary_form_and_json_records_still_read() {
        let store = SledStore::temporary().unwrap();
        let usage = sample(RecordKind::Usage, 1);
        let reversal = sample(
            RecordKind::Reversal {
                original: usage.id,
                reason: "dispute".into(),
            },
            2,
        );
        let legacy = sample(RecordKind::Usage, 3);
        let bin = encode_record(&reversal).unwrap();
        assert_eq!(bin[0], FORMAT_BINARY_V1);
        let json = serde_json::to_vec(&reversal).unwrap();
        assert!(
            bin.len() * 2 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
        store
            .commit(&CommitGroup {
                records: vec![usage.clone(), reversal.clone()],
                ..CommitGroup::default()
            })
            .unwrap();
        // A record written by an earlier version (JSON value), with its keys.
        write_legacy(&store, std::slice::from_ref(&legacy), |r| {
            serde_json::to_vec(r).unwrap()
        });
        for r in [&usage, &reversal, &legacy] {
            // Decimal equality ignores scale; compare the exact text too.
            let got = store.get_record(r.id).unwrap().unwrap();
            assert_eq!(&got, r);
            assert_eq!(got.record.provider_cost.to_string(), "0.000123");
            assert_eq!(got.credits_applied[0].amount.to_string(), "1.2500");
            let id = store
                .find_idempotency_key(&r.record.idempotency_key)
                .unwrap();
            assert_eq!(id, Some(r.id));
        }
        let mut all = Vec::new();
        store
            .for_each_record(None, &mut |r| {
                all.push(r);
                Ok(())
            })
            .unwrap();
        assert_eq!(all, vec![usage.clone(), reversal.clone(), legacy.clone()]);
        let page = store
            .query_records(&RecordQuery {
                client: Some("c".into()),
                ..RecordQuery::default()
            })
            .unwrap();
        assert_eq!(page.items, vec![usage, reversal, legacy]);
    }

    #[test]
    fn aggregates_entries_and_counters_read_in_both_formats() {
        let store = SledStore::temporary().unwrap();
        let p: Period = "2025-01".parse().unwrap();
        let key = AggKey::Client {
            client: "c".into(),
            period: p,
        };
        let totals = Totals {
            requests: -3,
            provider_cost: "1.50".parse().unwrap(),
            absorbed: "0.25".parse().unwrap(),
            absorbed_requests: 1,
            ..Totals::default()
        };
        let meta = Meta {
            next_seq: 9,
            replay_from: Some(p),
            ..Meta::default()
        };
        let entry = CreditEntry {
            seq: 4,
            client_id: "c".into(),
            bucket_id: "b".into(),
            kind: crate::model::CreditEntryKind::Reversal,
            amount: "-2".parse().unwrap(),
            record: Some(RecordId { period: p, seq: 1 }),
            at: DateTime::from_timestamp(1_736_500_000, 5).unwrap(),
        };
        store
            .commit(&CommitGroup {
                aggregates: vec![crate::store::AggregateWrite {
                    key: key.clone(),
                    delta: totals.clone(),
                    value: totals.clone(),
                }],
                credit_entries: vec![entry.clone()],
                meta,
                ..CommitGroup::default()
            })
            .unwrap();
        assert_eq!(
            store.tree.get(agg_key(&key)).unwrap().unwrap()[0],
            FORMAT_BINARY_V1
        );
        assert_eq!(store.get_aggregate(&key).unwrap(), Some(totals.clone()));
        assert_eq!(store.load_meta().unwrap(), meta);
        assert_eq!(
            store.credit_entries(Some("c")).unwrap(),
            vec![entry.clone()]
        );
        // The same values as an earlier version wrote them (JSON).
        store
            .tree
            .insert(agg_key(&key), serde_json::to_vec(&totals).unwrap())
            .unwrap();
        store
            .tree
            .insert(META, serde_json::to_vec(&meta).unwrap())
            .unwrap();
        store
            .tree
            .insert(entry_key("c", 4), serde_json::to_vec(&entry).unwrap())
            .unwrap();
        assert_eq!(store.get_aggregate(&key).unwrap(), Some(totals));
        assert_eq!(store.load_meta().unwrap(), meta);
        assert_eq!(store.credit_entries(Some("c")).unwrap(), vec![entry]);
        // Garbage behind the format byte is reported, not misread.
        store
            .tree
            .insert(META, vec![FORMAT_BINARY_V1, 0xff, 0xff])
            .unwrap();
        assert!(matches!(store.load_meta(), Err(StoreError::Corrupt { .. })));
    }

    /// A group of `n` records with a big payload each, so its redo record
    /// spans several chunks.
    fn big_group(first_seq: u64, n: u64) -> CommitGroup {
        let records = (first_seq..first_seq + n)
            .map(|seq| {
                let mut r = sample(RecordKind::Usage, seq);
                r.record.client_id = format!("c{}", seq % 5);
                r.record.end_user_id = Some("u".repeat(2000));
                r
            })
            .collect();
        CommitGroup {
            records,
            meta: Meta {
                next_seq: first_seq + n,
                ..Meta::default()
            },
            ..CommitGroup::default()
        }
    }

    #[test]
    fn redo_chunks_split_a_large_group_and_decode_to_the_same_writes() {
        let writes = group_writes(&big_group(0, 100)).unwrap();
        let chunks = writes.redo_chunks();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        let mut decoded = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert!(
                c.len() <= REDO_CHUNK_BYTES + 8 * 1024,
                "chunk {i}: {} bytes",
                c.len()
            );
            let (last, w) = decode_redo_chunk(&redo_key(1, 0), c).unwrap();
            assert_eq!(last, i + 1 == chunks.len());
            decoded.extend(w);
        }
        assert_eq!(decoded, writes.0);
        // Damage is reported, never read as fewer writes.
        let mut cut = chunks[0].clone();
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            decode_redo_chunk(&redo_key(1, 0), &cut),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_group_interrupted_while_applied_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = big_group(0, 10);
        // A checkpoint group: it also writes the client-index lists.
        let mut interrupted = big_group(10, 60);
        interrupted.aggregates = vec![crate::store::AggregateWrite {
            key: AggKey::Client {
                client: "c0".into(),
                period: "2025-01".parse().unwrap(),
            },
            delta: Totals::default(),
            value: Totals::default(),
        }];
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.commit(&first).unwrap();
            // The crash: the redo record is complete, half the writes applied.
            let (writes, _) = commit_writes(&interrupted, &store.index()).unwrap();
            let chunks = store.write_redo(7, &writes).unwrap();
            assert!(chunks > 1);
            for (k, v) in writes.0.iter().take(writes.0.len() / 2) {
                store.tree.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            store.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let want: Vec<StoredRecord> = first
            .records
            .iter()
            .chain(&interrupted.records)
            .cloned()
            .collect();
        assert_eq!(all_records(&store, None), want);
        for r in &want {
            assert_eq!(
                store
                    .find_idempotency_key(&r.record.idempotency_key)
                    .unwrap(),
                Some(r.id)
            );
        }
        assert_eq!(store.load_meta().unwrap().next_seq, 70);
        assert!(store.redo.is_empty());
        assert!(store.tree.scan_prefix([CLIENT_INDEX]).count() > 0);
        for c in 0..5 {
            let client = format!("c{c}");
            let listed = store
                .query_records(&RecordQuery {
                    client: Some(client.clone()),
                    ..RecordQuery::default()
                })
                .unwrap()
                .items;
            let mine: Vec<&StoredRecord> = want
                .iter()
                .filter(|r| r.record.client_id == client)
                .collect();
            assert_eq!(listed.iter().collect::<Vec<_>>(), mine);
        }
        // Commits go on after the replay.
        store.commit(&big_group(70, 2)).unwrap();
        assert_eq!(all_records(&store, None).len(), 72);
        assert!(store.redo.is_empty());
    }

    #[test]
    fn a_group_whose_redo_record_is_incomplete_is_dropped_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = big_group(0, 10);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.commit(&first).unwrap();
            // The crash: only the first chunks of the next group's redo record
            // were written, so none of its writes had started.
            let (writes, _) = commit_writes(&big_group(10, 60), &store.index()).unwrap();
            let chunks = writes.redo_chunks();
            assert!(chunks.len() > 1);
            for (i, c) in chunks.iter().take(chunks.len() - 1).enumerate() {
                store
                    .redo
                    .insert(redo_key(3, u32::try_from(i).unwrap()), c.as_slice())
                    .unwrap();
            }
            store.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(all_records(&store, None), first.records);
        assert_eq!(store.load_meta().unwrap().next_seq, 10);
        assert_eq!(store.find_idempotency_key("k10").unwrap(), None);
        assert!(store.redo.is_empty());
    }

    fn all_records(store: &SledStore, from: Option<Period>) -> Vec<StoredRecord> {
        let mut all = Vec::new();
        store
            .for_each_record(from, &mut |r| {
                all.push(r);
                Ok(())
            })
            .unwrap();
        all
    }

    fn paged(store: &SledStore, q: RecordQuery) -> Vec<StoredRecord> {
        let mut q = q;
        let mut out = Vec::new();
        loop {
            let page = store.query_records(&q).unwrap();
            assert!(page.items.len() <= q.limit);
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return out,
            }
        }
    }

    #[test]
    fn record_blocks_hold_many_records_and_read_like_single_records() {
        let store = SledStore::temporary().unwrap();
        let jan: Period = "2025-01".parse().unwrap();
        let feb: Period = "2025-02".parse().unwrap();
        // Records written one per key by an earlier version (binary and JSON).
        let mut legacy = Vec::new();
        for seq in 0..3 {
            let r = sample(RecordKind::Usage, seq);
            let v = if seq == 1 {
                serde_json::to_vec(&r).unwrap()
            } else {
                encode_record(&r).unwrap()
            };
            store.tree.insert(record_key(r.id), v).unwrap();
            legacy.push(r);
        }
        // Two groups: the first spans two periods and several blocks.
        let mut groups = vec![Vec::new(), Vec::new()];
        for seq in 3..103u64 {
            let mut r = sample(RecordKind::Usage, seq);
            if seq % 7 == 0 {
                r.id.period = feb;
            }
            r.record.client_id = format!("c{}", seq % 3);
            groups[usize::from(seq >= 90)].push(r);
        }
        for g in &groups {
            store
                .commit(&CommitGroup {
                    records: g.clone(),
                    ..CommitGroup::default()
                })
                .unwrap();
        }
        let blocks = store.tree.scan_prefix([RECORD]).count();
        assert!(
            (3 + 4..3 + 20).contains(&blocks),
            "{blocks} keys for 103 records"
        );
        let mut want: Vec<StoredRecord> = legacy
            .iter()
            .chain(groups.iter().flatten())
            .cloned()
            .collect();
        want.sort_by_key(|r| (r.id.period, r.id.seq));
        for r in &want {
            assert_eq!(store.get_record(r.id).unwrap().as_ref(), Some(r));
        }
        // Ids that are not there: a gap inside a block (seq 7 is in February),
        // past the end, another period.
        for (period, seq) in [
            (jan, 7),
            (jan, 103),
            (feb, 8),
            ("2024-12".parse().unwrap(), 5),
        ] {
            assert_eq!(store.get_record(RecordId { period, seq }).unwrap(), None);
        }
        assert_eq!(all_records(&store, None), want);
        let feb_only: Vec<_> = want
            .iter()
            .filter(|r| r.id.period == feb)
            .cloned()
            .collect();
        assert_eq!(all_records(&store, Some(feb)), feb_only);
        for limit in [1, 3, 16, 1000] {
            let q = RecordQuery {
                limit,
                ..RecordQuery::default()
            };
            assert_eq!(paged(&store, q), want, "limit {limit}");
            let q = RecordQuery {
                period: Some(feb),
                limit,
                ..RecordQuery::default()
            };
            assert_eq!(paged(&store, q), feb_only, "limit {limit}");
            let q = RecordQuery {
                client: Some("c1".into()),
                limit,
                ..RecordQuery::default()
            };
            let c1: Vec<_> = want
                .iter()
                .filter(|r| r.record.client_id == "c1")
                .cloned()
                .collect();
            assert_eq!(paged(&store, q), c1, "limit {limit}");
        }
        // A cursor from a version without blocks (the key of a single record
        // inside what is now a block) resumes after that record.
        let page = store
            .query_records(&RecordQuery {
                cursor: Some(hex::encode(record_key(want[10].id))),
                limit: 2,
                ..RecordQuery::default()
            })
            .unwrap();
        assert_eq!(page.items, want[11..13].to_vec());
        // A truncated block is reported, not misread.
        let (k, v) = store.tree.scan_prefix([RECORD]).last().unwrap().unwrap();
        assert_eq!(v[0], FORMAT_RECORD_BLOCK_V1);
        store.tree.insert(&k, &v[..v.len() - 1]).unwrap();
        assert!(matches!(
            store.for_each_record(None, &mut |_| Ok(())),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn period_keys_sort_chronologically_in_record_keys() {
        let a = record_key(RecordId {
            period: "2024-12".parse().unwrap(),
            seq: 99,
        });
        let b = record_key(RecordId {
            period: "2025-01".parse().unwrap(),
            seq: 1,
        });
        assert!(a < b);
    }
}

#[cfg(test)]
mod client_index_tests {
    //! The client index as lists plus pending ids: listings must not depend on
    //! where the checkpoints fell, whether the store was reopened meanwhile or
    //! whether it started as a database from before lists.
    use proptest::prelude::*;

    use super::client_index::{FLUSH_PENDING_RECORDS, MAX_LIST_SEQS};
    use super::*;
    use crate::model::RecordKind;
    use crate::store::AggregateWrite;

    #[derive(Debug, Clone)]
    enum Op {
        /// Records for (client number, period number); `checkpoint` makes the
        /// group carry an aggregate write, which writes the index lists.
        Commit {
            records: Vec<(u8, u8)>,
            checkpoint: bool,
        },
        /// Close the store without a checkpoint (as a crash leaves it) and reopen.
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prop::collection::vec((0u8..3, 0u8..3), 1..12), any::<bool>())
                .prop_map(|(records, checkpoint)| Op::Commit { records, checkpoint }),
            1 => Just(Op::Reopen),
        ]
    }

    fn period(n: u8) -> Period {
        ["2025-01", "2025-02", "2025-03"][usize::from(n)]
            .parse()
            .unwrap()
    }

    fn record(seq: u64, client: u8, p: u8) -> StoredRecord {
        let mut r = super::tests::sample(RecordKind::Usage, seq);
        r.id.period = period(p);
        r.record.client_id = format!("c{client}");
        r.record.tokens.output = 1; // the sample's u64::MAX overflows a sum
        r
    }

    fn checkpoint_write() -> Vec<AggregateWrite> {
        vec![AggregateWrite {
            key: AggKey::Client {
                client: "c0".into(),
                period: period(0),
            },
            delta: Totals::default(),
            value: Totals::default(),
        }]
    }

    fn page(
        store: &SledStore,
        client: &str,
        period: Option<Period>,
        limit: usize,
        cursor: Option<String>,
    ) -> Page<StoredRecord> {
        store
            .query_records(&RecordQuery {
                client: Some(client.into()),
                period,
                limit,
                cursor,
                ..RecordQuery::default()
            })
            .unwrap()
    }

    /// Every id of a listing from `cursor` on, page by page.
    fn listing_from(
        store: &SledStore,
        client: &str,
        period: Option<Period>,
        limit: usize,
        mut cursor: Option<String>,
    ) -> Vec<RecordId> {
        let mut out = Vec::new();
        loop {
            let p = page(store, client, period, limit, cursor);
            assert!(p.items.len() <= limit);
            // Each page goes on after the previous one (a stuck cursor fails, not hangs).
            if let (Some(prev), Some(next)) = (out.last(), p.items.first()) {
                assert!(
                    next.id > *prev,
                    "page starts at {:?} after {prev:?}",
                    next.id
                );
            }
            out.extend(p.items.iter().map(|r| r.id));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    fn listing(
        store: &SledStore,
        client: &str,
        period: Option<Period>,
        limit: usize,
    ) -> Vec<RecordId> {
        listing_from(store, client, period, limit, None)
    }

    /// The stored lists: none longer than the limit, each ascending, and the
    /// lists of one (client, period) never overlapping.
    fn check_stored_lists(store: &SledStore) -> Result<(), TestCaseError> {
        let mut last: Option<(Vec<u8>, u64)> = None;
        for kv in store.tree.scan_prefix([CLIENT_INDEX]) {
            let (k, v) = kv.unwrap();
            let id_at = k.len() - 12;
            let ids = client_index::stored_ids(&k, &v, id_at).unwrap();
            prop_assert!(
                !ids.is_empty() && ids.len() <= MAX_LIST_SEQS,
                "{} seqs",
                ids.len()
            );
            let group = k[..id_at + 4].to_vec(); // `C` · client · period
            if let Some((g, prev)) = &last
                && *g == group
            {
                prop_assert!(ids[0].seq > *prev, "lists overlap");
            }
            last = Some((group, ids[ids.len() - 1].seq));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn client_listings_are_complete_and_ordered_whatever_the_checkpoints_and_reopens(
            legacy in prop::collection::vec((0u8..3, 0u8..3), 0..6),
            ops in prop::collection::vec(op(), 1..14),
            limit in 1usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut all: Vec<StoredRecord> = Vec::new();
            let mut next_seq = 0u64;
            let fresh = |records: Vec<(u8, u8)>, next_seq: &mut u64| -> Vec<StoredRecord> {
                records
                    .into_iter()
                    .map(|(c, p)| {
                        *next_seq += 1;
                        record(*next_seq - 1, c, p)
                    })
                    .collect()
            };
            {
                let store = SledStore::open(dir.path()).unwrap();
                let old = fresh(legacy, &mut next_seq);
                super::tests::write_legacy(&store, &old, |r| encode_record(r).unwrap());
                let meta = Meta {
                    next_seq,
                    ..Meta::default()
                };
                store.tree.insert(META, encode_bin(&meta).unwrap()).unwrap();
                all.extend(old);
            }
            let mut store = SledStore::open(dir.path()).unwrap();
            for op in ops {
                // A cursor taken before the operation must resume after it.
                let before: Vec<(&str, Page<StoredRecord>)> = ["c0", "c1", "c2"]
                    .into_iter()
                    .map(|c| (c, page(&store, c, None, limit, None)))
                    .collect();
                match op {
                    Op::Commit { records, checkpoint } => {
                        let records = fresh(records, &mut next_seq);
                        all.extend(records.iter().cloned());
                        store.commit(&CommitGroup {
                            records,
                            aggregates: if checkpoint { checkpoint_write() } else { Vec::new() },
                            meta: Meta { next_seq, ..Meta::default() },
                            ..CommitGroup::default()
                        }).unwrap();
                    }
                    Op::Reopen => {
                        drop(store);
                        store = SledStore::open(dir.path()).unwrap();
                    }
                }
                check_stored_lists(&store)?;
                for c in ["c0", "c1", "c2"] {
                    let mut want: Vec<RecordId> = all
                        .iter()
                        .filter(|r| r.record.client_id == c)
                        .map(|r| r.id)
                        .collect();
                    want.sort();
                    prop_assert_eq!(&listing(&store, c, None, limit), &want);
                    for p in 0..3 {
                        let want_p: Vec<RecordId> =
                            want.iter().filter(|id| id.period == period(p)).copied().collect();
                        prop_assert_eq!(listing(&store, c, Some(period(p)), limit), want_p);
                    }
                }
                for (c, first) in before {
                    let Some(cursor) = first.next_cursor else { continue };
                    let Some(last) = first.items.last().map(|r| r.id) else { continue };
                    let mut want: Vec<RecordId> = all
                        .iter()
                        .filter(|r| r.record.client_id == c && r.id > last)
                        .map(|r| r.id)
                        .collect();
                    want.sort();
                    prop_assert_eq!(listing_from(&store, c, None, limit, Some(cursor)), want);
                }
            }
        }
    }

    #[test]
    fn pending_records_are_written_as_short_lists_at_a_checkpoint_or_when_many_are_pending() {
        let store = SledStore::temporary().unwrap();
        let records: Vec<StoredRecord> =
            (0..40).map(|seq| record(seq, (seq % 3) as u8, 0)).collect();
        let commit = |rs: &[StoredRecord], checkpoint: bool| {
            store
                .commit(&CommitGroup {
                    records: rs.to_vec(),
                    aggregates: if checkpoint {
                        checkpoint_write()
                    } else {
                        Vec::new()
                    },
                    meta: Meta {
                        next_seq: rs.last().unwrap().id.seq + 1,
                        ..Meta::default()
                    },
                    ..CommitGroup::default()
                })
                .unwrap();
        };
        let lists = || store.tree.scan_prefix([CLIENT_INDEX]).count();
        // Pending: no `C` key yet, and the listing still has them.
        commit(&records[..9], false);
        assert_eq!(lists(), 0);
        assert_eq!(listing(&store, "c1", None, 2).len(), 3);
        // A checkpoint writes them, 3 per client, in lists of at most MAX_LIST_SEQS.
        commit(&records[9..12], true);
        assert_eq!(lists(), 3 * 4usize.div_ceil(MAX_LIST_SEQS));
        // Enough pending records are written without a checkpoint.
        commit(&records[12..12 + FLUSH_PENDING_RECORDS - 1], false);
        assert_eq!(lists(), 3 * 4usize.div_ceil(MAX_LIST_SEQS));
        commit(
            &records[12 + FLUSH_PENDING_RECORDS - 1..12 + FLUSH_PENDING_RECORDS],
            false,
        );
        assert!(lists() > 3 * 4usize.div_ceil(MAX_LIST_SEQS));
        let want: Vec<RecordId> = records[..12 + FLUSH_PENDING_RECORDS]
            .iter()
            .filter(|r| r.record.client_id == "c1")
            .map(|r| r.id)
            .collect();
        assert_eq!(listing(&store, "c1", None, 7), want);
        // A record below what the lists cover is refused, not indexed out of order.
        let err = store
            .commit(&CommitGroup {
                records: vec![record(5, 0, 0)],
                ..CommitGroup::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("below the client index's mark"),
            "{err}"
        );
        // A cursor from another client's listing, or from another period, is refused.
        let c0 = page(&store, "c0", None, 1, None);
        for (client, period) in [("c1", None), ("c0", Some("2025-02".parse().unwrap()))] {
            let err = store
                .query_records(&RecordQuery {
                    client: Some(client.into()),
                    period,
                    cursor: c0.next_cursor.clone(),
                    ..RecordQuery::default()
                })
                .unwrap_err();
            assert!(err.to_string().contains("invalid cursor"), "{err}");
        }
        // The consistency check compares every client's listing with the records
        // (this store's aggregates and credits are not realistic: only listings count).
        let listing_problems = |store: &SledStore| -> Vec<String> {
            let report = crate::verify::verify(store).unwrap();
            report
                .problems
                .into_iter()
                .filter(|p| p.contains("record listing"))
                .collect()
        };
        assert_eq!(listing_problems(&store), Vec::<String>::new());
        let (k, _) = store
            .tree
            .scan_prefix([CLIENT_INDEX])
            .next()
            .unwrap()
            .unwrap();
        let v = store.tree.remove(&k).unwrap().unwrap();
        let problems = listing_problems(&store);
        assert!(
            problems.len() == 1
                && problems[0].contains(&format!("the records say {}", want.len() + 1)),
            "{problems:?}"
        );
        // A damaged list is reported.
        store.tree.insert(&k, &v[..v.len() - 3]).unwrap();
        assert!(matches!(
            store.query_records(&RecordQuery {
                client: Some("c0".into()),
                ..RecordQuery::default()
            }),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
