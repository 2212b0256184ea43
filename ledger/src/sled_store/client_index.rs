//! The sled backend's client index (`C` keys): which records belong to which
//! client, written as lists at checkpoints instead of one key per record.
//!
//! A key of its own per record was one of the two sled inserts each record
//! cost (the other is its idempotency key), and the committer's inserts are
//! what bounds batched ingest (BENCHMARKS.md, Ledger). So the index is derived
//! data, like the running aggregates: records committed since the last index
//! checkpoint are *pending*, held in memory and merged into client listings;
//! a checkpoint writes them as one list per (client, period), in the same
//! atomic group as the records it commits. The stored [`IndexMark`] says which
//! records the stored lists cover, so after a crash [`ClientIndex`] is rebuilt
//! from the records the lists do not cover.
//!
//! Keys: `C` · client · period · first seq. The value is
//! [`FORMAT_INDEX_LIST_V1`] then at most [`MAX_LIST_SEQS`] seqs (u64 BE,
//! ascending, the first one the key's), or empty: a key written before lists
//! existed, which stands for its own record. Both read the same way, so old
//! databases need no migration. The lists of one (client, period) never
//! overlap: each holds seqs above every seq of the lists before it.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};

use super::{Writes, client_index_key, corrupt, encode_bin, id_from_bytes};
use crate::error::StoreError;
use crate::model::{RecordId, StoredRecord};
use crate::period::Period;

/// The key of the stored [`IndexMark`].
pub(super) const INDEX_MARK: &[u8] = b"X";

/// Leading byte of a client-index list value.
pub(super) const FORMAT_INDEX_LIST_V1: u8 = 0x04;

/// Pending records that make a commit write the index even without an
/// aggregate checkpoint, which bounds the memory the pending index holds.
/// Small in tests, so that they cross it.
pub(super) const FLUSH_PENDING_RECORDS: usize = if cfg!(test) { 16 } else { 65_536 };

/// Seqs per list value at most: 6 KiB, like a record block, so a sled leaf
/// of lists stays below sled's out-of-line blob size and a list fits a redo
/// chunk. Small in tests, so that lists split.
pub(super) const MAX_LIST_SEQS: usize = if cfg!(test) { 3 } else { 768 };

/// What the stored lists cover; written in the same group as the lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IndexMark {
    /// Every record with a lower seq is in a stored list.
    pub through_seq: u64,
    /// The earliest period of a record at or above `through_seq` (where a
    /// rebuild starts reading); `None` when there is none.
    pub pending_from: Option<Period>,
}

/// The index state the committer keeps next to the stored lists.
#[derive(Debug)]
pub(super) struct ClientIndex {
    mark: IndexMark,
    /// The mark above is not yet stored (a database from before index lists,
    /// whose per-record keys cover everything; or a new one).
    mark_unsaved: bool,
    /// Client -> period -> seqs of its records at or above `mark.through_seq`,
    /// ascending (seqs are given out in increasing order).
    pending: HashMap<String, BTreeMap<Period, Vec<u64>>>,
    pending_records: usize,
}

/// What one commit does to the index, decided before its writes and applied
/// to memory only once they are stored.
#[derive(Debug)]
pub(super) enum IndexChange {
    /// The pending ids and the group's records were written as lists.
    Flushed(IndexMark),
    /// The group's records join the pending ids, under this mark.
    Pending(IndexMark),
}

impl ClientIndex {
    /// The index of a database whose mark is `mark` (or, without one, whose
    /// records all have keys of their own up to `next_seq`). Pending ids are
    /// added by the caller from the records the mark does not cover.
    pub(super) fn new(mark: Option<IndexMark>, next_seq: u64) -> ClientIndex {
        ClientIndex {
            mark: mark.unwrap_or(IndexMark {
                through_seq: next_seq,
                pending_from: None,
            }),
            mark_unsaved: mark.is_none(),
            pending: HashMap::new(),
            pending_records: 0,
        }
    }

    pub(super) fn mark(&self) -> IndexMark {
        self.mark
    }

    /// Adds a stored record the lists do not cover (rebuilding after a crash).
    pub(super) fn add_pending(&mut self, record: &StoredRecord) {
        if record.id.seq >= self.mark.through_seq {
            self.push(record);
        }
    }

    fn push(&mut self, record: &StoredRecord) {
        let client = &record.record.client_id;
        let periods = match self.pending.get_mut(client.as_str()) {
            Some(periods) => periods,
            None => self.pending.entry(client.clone()).or_default(),
        };
        periods
            .entry(record.id.period)
            .or_default()
            .push(record.id.seq);
        self.pending_records += 1;
    }

    /// Adds the index writes of a group holding `records` to `writes`:
    /// the lists when `checkpoint` is set or enough is pending, else the
    /// mark when it moves. Memory changes only in [`ClientIndex::apply`].
    pub(super) fn plan(
        &self,
        records: &[StoredRecord],
        checkpoint: bool,
        writes: &mut Writes,
    ) -> Result<IndexChange, StoreError> {
        // The engine gives seqs out in increasing order, so a record below the
        // mark is a bug: a rebuild would skip it and its list could overlap
        // stored ones. Refuse the group rather than index it wrongly.
        if let Some(r) = records.iter().find(|r| r.id.seq < self.mark.through_seq) {
            return Err(StoreError::Backend(format!(
                "record seq {} is below the client index's mark {}",
                r.id.seq, self.mark.through_seq
            )));
        }
        let flush = checkpoint || self.pending_records + records.len() >= FLUSH_PENDING_RECORDS;
        if !flush {
            let pending_from = records
                .iter()
                .map(|r| r.id.period)
                .chain(self.mark.pending_from)
                .min();
            let mark = IndexMark {
                through_seq: self.mark.through_seq,
                pending_from,
            };
            if mark != self.mark || (self.mark_unsaved && !records.is_empty()) {
                writes.insert(INDEX_MARK, encode_bin(&mark)?);
            }
            return Ok(IndexChange::Pending(mark));
        }
        let mut lists: BTreeMap<(&str, Period), Vec<u64>> = BTreeMap::new();
        let mut through_seq = self.mark.through_seq;
        for (client, periods) in &self.pending {
            for (period, seqs) in periods {
                lists
                    .entry((client.as_str(), *period))
                    .or_default()
                    .extend_from_slice(seqs);
            }
        }
        for r in records {
            lists
                .entry((r.record.client_id.as_str(), r.id.period))
                .or_default()
                .push(r.id.seq);
        }
        for ((client, period), mut seqs) in lists {
            seqs.sort_unstable();
            if let Some(&last) = seqs.last() {
                through_seq = through_seq.max(last.saturating_add(1));
            }
            for run in seqs.chunks(MAX_LIST_SEQS) {
                let mut value = Vec::with_capacity(1 + 8 * run.len());
                value.push(FORMAT_INDEX_LIST_V1);
                for seq in run {
                    value.extend_from_slice(&seq.to_be_bytes());
                }
                let first = RecordId {
                    period,
                    seq: run[0],
                };
                writes.insert(client_index_key(client, first), value);
            }
        }
        let mark = IndexMark {
            through_seq,
            pending_from: None,
        };
        writes.insert(INDEX_MARK, encode_bin(&mark)?);
        Ok(IndexChange::Flushed(mark))
    }

    /// Brings memory in step with a group whose writes (from [`ClientIndex::plan`])
    /// are stored.
    pub(super) fn apply(&mut self, change: IndexChange, records: &[StoredRecord]) {
        match change {
            IndexChange::Flushed(mark) => {
                self.pending.clear();
                self.pending_records = 0;
                self.mark = mark;
            }
            IndexChange::Pending(mark) => {
                for r in records {
                    self.push(r);
                }
                self.mark = mark;
            }
        }
        self.mark_unsaved = false;
    }

    /// The pending ids of `client` (in `period`, when given) after `after`,
    /// in (period, seq) order.
    pub(super) fn pending_ids(
        &self,
        client: &str,
        period: Option<Period>,
        after: Option<RecordId>,
    ) -> Vec<RecordId> {
        use std::ops::Bound;
        let Some(periods) = self.pending.get(client) else {
            return Vec::new();
        };
        let from = match (period, after) {
            (Some(p), _) => Bound::Included(p),
            (None, Some(a)) => Bound::Included(a.period),
            (None, None) => Bound::Unbounded,
        };
        let to = period.map_or(Bound::Unbounded, Bound::Included);
        let mut ids = Vec::new();
        for (p, seqs) in periods.range((from, to)) {
            // Seqs are ascending: start after the cursor's without a scan.
            // The range starts at the cursor's period, so only that one is cut.
            let start = match after {
                Some(a) if a.period == *p => seqs.partition_point(|s| *s <= a.seq),
                _ => 0,
            };
            let tail = seqs.get(start..).unwrap_or_default();
            ids.extend(tail.iter().map(|&seq| RecordId { period: *p, seq }));
        }
        ids
    }
}

/// The record ids a stored `C` value stands for, in seq order.
pub(super) fn stored_ids(
    key: &[u8],
    value: &[u8],
    id_at: usize,
) -> Result<Vec<RecordId>, StoreError> {
    let first = id_from_bytes(key, key.get(id_at..).unwrap_or_default())?;
    let Some((&format, seqs)) = value.split_first() else {
        return Ok(vec![first]); // a key of its own, from before lists
    };
    if format != FORMAT_INDEX_LIST_V1 || seqs.is_empty() || seqs.len() % 8 != 0 {
        return Err(corrupt(key, "malformed client-index list"));
    }
    let ids: Vec<RecordId> = seqs
        .chunks_exact(8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            RecordId {
                period: first.period,
                seq: u64::from_be_bytes(a),
            }
        })
        .collect();
    if ids.first() != Some(&first) || ids.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err(corrupt(key, "client-index list out of order"));
    }
    Ok(ids)
}
