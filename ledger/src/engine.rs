//! The single writer: it owns the in-memory running state (aggregates, credit
//! buckets, reservations, alert markers), drains the bounded command queue and
//! applies a whole batch to memory; its committer thread hands the store ONE
//! atomic [`CommitGroup`] per batch, flushes once (sync mode) and then wakes
//! every waiter of the batch. The two overlap: batch N+1 is applied while batch
//! N commits (at most one batch is in flight), see [`run_writer`].
//!
//! Because only this thread mutates ledger state, read-modify-write of aggregates
//! needs no transaction. Reservations are checked under the same mutex the writer
//! holds while it applies and commits a batch, so a reservation never sees spend
//! that is half-applied.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

// The writer looks up several aggregates per record; SipHash (std's default)
// was a visible share of its time. foldhash is seeded per process, so keys
// chosen by plugins (unit names) still cannot be aimed at one bucket.
use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::alerts::Backoff;
use crate::config::{Durability, LedgerConfig};
use crate::error::LedgerError;
use crate::model::{
    AggKey, AggScan, Alert, Billing, BucketKind, ClientPlan, CreditBucket, CreditEntry,
    CreditEntryKind, CreditUse, Delivery, Meta, RecordId, RecordKind, RecordOutcome, ReservationId,
    StoredRecord, TopUpOutcome, Totals, UsageRecord, contributions,
};
use crate::period::Period;
use crate::queued::{LiveUsage, QueuedBatch, QueuedShare};
use crate::store::{AggregateWrite, CommitGroup, LedgerStore};

const MAX_ID_LEN: usize = 1024;

/// A write the writer thread applies.
#[derive(Debug)]
pub(crate) enum Command {
    Record(Box<UsageRecord>),
    Reverse {
        original_key: String,
        reason: String,
    },
    TopUp {
        client: String,
        amount: Decimal,
        key: String,
        expires_at: Option<DateTime<Utc>>,
    },
    SetPlan(ClientPlan),
    AlertDelivered(u64),
    AlertFailed {
        id: u64,
        error: String,
    },
    SweepExpired(String),
    /// Write all dirty aggregates now (flush, verify, shutdown).
    Checkpoint,
}

#[derive(Debug)]
pub(crate) enum Reply {
    Record(RecordOutcome),
    /// A new record, at this index of the group's records: resolved into
    /// `Record(Recorded(..))` after the commit, so the writer does not clone
    /// every record for its reply.
    NewRecord(usize),
    TopUp(TopUpOutcome),
    Alert(Alert),
    Done,
}

pub(crate) struct Job {
    pub cmd: Command,
    pub reply: flume::Sender<Result<Reply, LedgerError>>,
    /// A record's count in [`Shared::usage`], held by whoever holds the job.
    pub queued: Option<QueuedShare>,
}

/// A granted spend reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub client_id: String,
    pub amount: Decimal,
    pub expires_at: DateTime<Utc>,
}

struct ClientState {
    plan: ClientPlan,
    buckets: Vec<CreditBucket>,
    outstanding: Decimal,
    alerted: HashMap<Period, BTreeSet<u32>>,
}

impl ClientState {
    /// Credit that usage booked into `period` at `now` may draw on, in
    /// consumption order: included first, then soonest expiry, then oldest.
    fn eligible(&self, period: Period, now: DateTime<Utc>) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.buckets.len())
            .filter(|&i| {
                let b = &self.buckets[i];
                b.balance > Decimal::ZERO
                    && match &b.kind {
                        BucketKind::Included { period: p } => *p == period,
                        BucketKind::TopUp { .. } => b.expires_at.is_none_or(|e| e > now),
                    }
            })
            .collect();
        idx.sort_by_key(|&i| {
            let b = &self.buckets[i];
            (
                !matches!(b.kind, BucketKind::Included { .. }),
                b.expires_at.is_none(),
                b.expires_at,
                b.created_seq,
            )
        });
        idx
    }

    fn has_included(&self, period: Period) -> bool {
        self.buckets
            .iter()
            .any(|b| matches!(b.kind, BucketKind::Included { period: p } if p == period))
    }

    /// What a prepaid client can still spend in `period`, before reservations.
    fn available(&self, period: Period, now: DateTime<Utc>) -> Decimal {
        let mut a: Decimal = self
            .eligible(period, now)
            .into_iter()
            .map(|i| self.buckets[i].balance)
            .sum();
        if !self.has_included(period) {
            // The grant is made lazily with the period's first usage.
            a += self.plan.included_per_period;
        }
        a
    }
}

#[derive(Default)]
struct AggSlot {
    value: Totals,
    /// Change since the last checkpoint (meaningful while `dirty`).
    delta: Totals,
    dirty: bool,
    /// Last batch that changed it.
    batch_no: u64,
}

struct Held {
    client: String,
    amount: Decimal,
    expires_at: DateTime<Utc>,
}

pub(crate) struct State {
    meta: Meta,
    /// Every aggregate the writer has touched: current value (authoritative) and
    /// what changed since the last checkpoint, in one map so that booking a
    /// record costs one lookup per aggregate.
    aggs: HashMap<AggKey, AggSlot>,
    /// Aggregates changed since the last checkpoint (the store lacks them).
    dirty: Vec<AggKey>,
    /// Number of the batch being applied (marks aggregates touched by it).
    batch_no: u64,
    last_checkpoint: Instant,
    clients: HashMap<String, ClientState>,
    reservations: HashMap<u64, Held>,
    next_reservation: u64,
    /// Idempotency keys of the batch handed to the committer last (number
    /// `inflight_no`), which may not be in the store yet.
    inflight: HashMap<String, usize>,
    inflight_no: u64,
}

/// What the `Ledger` handle and the writer thread share.
pub(crate) struct Shared {
    pub store: Arc<dyn LedgerStore>,
    pub cfg: LedgerConfig,
    state: Mutex<State>,
    /// Current values of the aggregates not yet checkpointed, for readers: a
    /// read consults this first, then the store. Entries are removed only after
    /// the checkpoint that wrote them has committed, so reads never go back.
    /// Keyed by the encoded store key: the gateway scans one client's prefix
    /// on every request, so this is ordered like the store rather than a hash
    /// map walked whole.
    pub overlay: RwLock<BTreeMap<Vec<u8>, (AggKey, Totals)>>,
    /// Records queued and not yet published, and the published usage of
    /// the clients read, for `usage_so_far`.
    pub usage: Arc<LiveUsage>,
    /// Batched mode: applied but not yet flushed.
    dirty: AtomicBool,
    /// Batched mode: signalled when `dirty` goes from false to true, so the
    /// flusher sleeps while there is nothing to flush.
    dirtied: (flume::Sender<()>, flume::Receiver<()>),
    /// Times the flusher has woken to flush, for tests.
    #[cfg(test)]
    flusher_wakeups: std::sync::atomic::AtomicU64,
    /// Set when a commit or flush failed: memory may be ahead of the store, so
    /// every write is refused until the ledger is reopened.
    poisoned: Mutex<Option<String>>,
    /// Number of the last batch the committer has finished with (committed or
    /// failed); the writer waits on it before handing over the next batch.
    committed: Mutex<u64>,
    committed_cv: Condvar,
}

/// A batch applied to memory, on its way to the committer.
struct Prepared {
    group: CommitGroup,
    /// Nothing to write (no group, no checkpoint): only replies.
    empty: bool,
    checkpoint: bool,
    /// The changed aggregates' values as of this batch, by encoded store key,
    /// for readers once it has committed (a checkpoint clears the overlay
    /// instead, and passes them only to [`Shared::usage`]). Encoded here,
    /// by the writer, because the committer's time bounds batched ingest.
    overlay: Vec<(Vec<u8>, (AggKey, Totals))>,
    results: Vec<Result<Reply, LedgerError>>,
}

/// Changes accumulated while a batch is applied.
#[derive(Default)]
struct Batch {
    group: CommitGroup,
    /// Aggregates this batch changed (published to readers after the commit).
    touched: Vec<AggKey>,
    /// Idempotency key -> index in `group.records`.
    new_records: HashMap<String, usize>,
    new_topups: HashMap<String, CreditBucket>,
    touched_buckets: BTreeSet<(String, String)>,
    alerts: BTreeMap<u64, Alert>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.group.is_empty()
            && self.touched.is_empty()
            && self.touched_buckets.is_empty()
            && self.alerts.is_empty()
    }
}

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::InvalidRecord(msg.into())
}

fn check_id(name: &str, v: &str) -> Result<(), LedgerError> {
    if v.is_empty() {
        return Err(invalid(format!("{name} is empty")));
    }
    if v.len() > MAX_ID_LEN {
        return Err(invalid(format!("{name} is longer than {MAX_ID_LEN} bytes")));
    }
    Ok(())
}

/// Rejects records that would break money conservation or key encoding.
pub(crate) fn validate(r: &UsageRecord) -> Result<(), LedgerError> {
    check_id("idempotency_key", &r.idempotency_key)?;
    check_id("request_id", &r.request_id)?;
    check_id("agency_id", &r.agency_id)?;
    check_id("client_id", &r.client_id)?;
    check_id("routed_model", &r.routed_model)?;
    check_id("routed_provider", &r.routed_provider)?;
    check_id("requested_model", &r.requested_model)?;
    for (name, v) in [
        ("provider_cost", r.provider_cost),
        ("surcharge", r.surcharge),
        ("total_charged", r.total_charged),
    ] {
        if v.is_sign_negative() && !v.is_zero() {
            return Err(invalid(format!(
                "{name} is negative ({v}); corrections are reversals"
            )));
        }
    }
    // Normal: the client pays provider cost plus surcharge. Absorbed: the
    // provider call succeeded (its cost is owed) but the request failed and the
    // client is billed nothing, so the operator absorbs the provider cost.
    let normal = r.provider_cost + r.surcharge == r.total_charged;
    let absorbed = r.flags.failed && r.surcharge.is_zero() && r.total_charged.is_zero();
    if !normal && !absorbed {
        return Err(invalid(format!(
            "total_charged {} != provider_cost {} + surcharge {} (only a failed record \
             with zero surcharge may charge nothing)",
            r.total_charged, r.provider_cost, r.surcharge
        )));
    }
    for (unit, q) in &r.units {
        check_id("unit name", unit)?;
        if q.is_sign_negative() && !q.is_zero() {
            return Err(invalid(format!("unit {unit} has negative quantity {q}")));
        }
    }
    if r.finished_at < r.started_at {
        return Err(invalid("finished_at is before started_at"));
    }
    Ok(())
}

impl Shared {
    pub(crate) fn open(
        store: Arc<dyn LedgerStore>,
        cfg: LedgerConfig,
    ) -> Result<Shared, LedgerError> {
        let meta = replay(&*store)?;
        let now = cfg.clock.now();
        Ok(Shared {
            store,
            overlay: RwLock::new(BTreeMap::new()),
            usage: Arc::new(LiveUsage::new()),
            dirty: AtomicBool::new(false),
            dirtied: flume::bounded(1),
            #[cfg(test)]
            flusher_wakeups: std::sync::atomic::AtomicU64::new(0),
            poisoned: Mutex::new(None),
            committed: Mutex::new(0),
            committed_cv: Condvar::new(),
            state: Mutex::new(State {
                meta,
                aggs: HashMap::new(),
                dirty: Vec::new(),
                batch_no: 0,
                last_checkpoint: Instant::now(),
                clients: HashMap::new(),
                reservations: HashMap::new(),
                // Reservation ids from before a restart must not collide with new ones.
                next_reservation: u64::try_from(now.timestamp_micros()).unwrap_or(1),
                inflight: HashMap::new(),
                inflight_no: 0,
            }),
            cfg,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, LedgerError> {
        let st = self
            .state
            .lock()
            .map_err(|_| LedgerError::Poisoned("state mutex poisoned by a panic".into()))?;
        self.check_poisoned()?;
        Ok(st)
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), LedgerError> {
        match &*self
            .poisoned
            .lock()
            .map_err(|_| LedgerError::Poisoned("poison flag lock poisoned".into()))?
        {
            Some(p) => Err(LedgerError::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    /// Groups the writer has formed so far.
    #[cfg(test)]
    pub(crate) fn groups_formed(&self) -> u64 {
        self.lock().map(|st| st.inflight_no).unwrap_or(0)
    }

    /// Waits until the committer is done with batch `n` (its group is in the
    /// store, or the ledger is poisoned).
    fn wait_committed(&self, n: u64) -> Result<(), LedgerError> {
        let lost = || LedgerError::Poisoned("commit counter lock poisoned".into());
        let mut c = self.committed.lock().map_err(|_| lost())?;
        while *c < n {
            c = self.committed_cv.wait(c).map_err(|_| lost())?;
        }
        drop(c);
        self.check_poisoned()
    }

    fn mark_committed(&self, n: u64) {
        if let Ok(mut c) = self.committed.lock() {
            *c = (*c).max(n);
        }
        self.committed_cv.notify_all();
    }

    pub(crate) fn reserve(
        &self,
        client: &str,
        amount: Decimal,
    ) -> Result<Reservation, LedgerError> {
        check_id("client_id", client).map_err(|e| LedgerError::InvalidArgument(e.to_string()))?;
        if amount <= Decimal::ZERO {
            return Err(LedgerError::InvalidArgument(format!(
                "reservation amount must be positive, got {amount}"
            )));
        }
        let now = self.cfg.clock.now();
        let period = self.cfg.calendar.period_of(now);
        let mut st = self.lock()?;
        st.purge_reservations(now);
        st.load_client(&*self.store, client)?;
        let key = AggKey::Client {
            client: client.to_owned(),
            period,
        };
        st.load_agg(&*self.store, &key)?;
        let spent = st.aggs.get(&key).map(|a| a.value.total).unwrap_or_default();
        let Some(cs) = st.clients.get_mut(client) else {
            return Err(LedgerError::NotFound(format!("client {client}")));
        };
        if let Some(cap) = cs.plan.monthly_cap
            && spent + cs.outstanding + amount > cap
        {
            return Err(LedgerError::CapExceeded {
                client_id: client.to_owned(),
                cap,
                spent,
                outstanding: cs.outstanding,
                requested: amount,
            });
        }
        if cs.plan.billing == Billing::Prepaid {
            let available = cs.available(period, now) - cs.outstanding;
            if amount > available {
                return Err(LedgerError::InsufficientBalance {
                    client_id: client.to_owned(),
                    available,
                    requested: amount,
                });
            }
        }
        cs.outstanding += amount;
        st.next_reservation += 1;
        let id = st.next_reservation;
        let expires_at = now + self.cfg.reservation_ttl;
        st.reservations.insert(
            id,
            Held {
                client: client.to_owned(),
                amount,
                expires_at,
            },
        );
        Ok(Reservation {
            id: ReservationId(id),
            client_id: client.to_owned(),
            amount,
            expires_at,
        })
    }

    pub(crate) fn release(&self, id: ReservationId) -> Result<(), LedgerError> {
        let mut st = self.lock()?;
        if st.settle_reservation(id) {
            Ok(())
        } else {
            Err(LedgerError::UnknownReservation(id.0))
        }
    }

    /// Total currently reserved for a client (diagnostics and tests).
    pub(crate) fn outstanding(&self, client: &str) -> Result<Decimal, LedgerError> {
        let st = self.lock()?;
        Ok(st
            .clients
            .get(client)
            .map(|c| c.outstanding)
            .unwrap_or_default())
    }

    /// Applies a batch of commands to memory and builds its commit group.
    /// `force_checkpoint` also writes every dirty aggregate in that group.
    fn prepare(&self, cmds: Vec<Command>, force_checkpoint: bool) -> Prepared {
        let mut st = match self.lock() {
            Ok(st) => st,
            Err(e) => {
                return Prepared {
                    group: CommitGroup::default(),
                    empty: true,
                    checkpoint: false,
                    overlay: Vec::new(),
                    results: cmds.iter().map(|_| Err(clone_err(&e))).collect(),
                };
            }
        };
        let now = self.cfg.clock.now();
        let mut b = Batch::default();
        b.group.records.reserve(cmds.len());
        st.batch_no += 1;
        let force_checkpoint =
            force_checkpoint || cmds.iter().any(|c| matches!(c, Command::Checkpoint));
        let results: Vec<Result<Reply, LedgerError>> = cmds
            .into_iter()
            .map(|c| st.apply(self, &mut b, now, c))
            .collect();
        let checkpoint = !st.dirty.is_empty()
            && (force_checkpoint
                || st.last_checkpoint.elapsed() >= self.cfg.aggregate_checkpoint_every
                || st.dirty.len() >= self.cfg.max_dirty_aggregates);
        if b.is_empty() && !checkpoint {
            return Prepared {
                group: CommitGroup::default(),
                empty: true,
                checkpoint: false,
                overlay: Vec::new(),
                results,
            };
        }
        if checkpoint {
            st.last_checkpoint = Instant::now();
        }
        let touched = std::mem::take(&mut b.touched);
        let new_records = std::mem::take(&mut b.new_records);
        let group = st.finish(b, checkpoint);
        let values: Vec<(AggKey, Totals)> = touched
            .into_iter()
            .filter_map(|k| {
                let v = st.aggs.get(&k)?.value.clone();
                Some((k, v))
            })
            .collect();
        st.inflight = new_records;
        // Encoded outside the state lock, which reservations also take.
        drop(st);
        let overlay = values
            .into_iter()
            .map(|(k, v)| (crate::sled_store::agg_key(&k), (k, v)))
            .collect();
        Prepared {
            group,
            empty: false,
            checkpoint,
            overlay,
            results,
        }
    }

    /// Commits a prepared batch and makes it visible to readers; returns each
    /// command's result. After a failed commit (this one or an earlier one)
    /// nothing is written and every command fails: memory is ahead of the store.
    ///
    /// The publish also takes `queued`, the group's records' counts, out of
    /// the queued usage; if the group is not published they stay in it, for
    /// the caller to drop.
    fn complete(&self, p: Prepared, queued: &mut QueuedBatch) -> Vec<Result<Reply, LedgerError>> {
        let Prepared {
            mut group,
            empty,
            checkpoint,
            overlay,
            mut results,
        } = p;
        if empty {
            return results;
        }
        if let Err(e) = self.check_poisoned() {
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(clone_err(&e));
                }
            }
            return results;
        }
        if let Err(e) = self.store.commit(&group) {
            let msg = format!("group commit failed: {e}");
            tracing::error!(error = %e, "ledger group commit failed; ledger poisoned");
            self.poison(msg.clone());
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(LedgerError::Poisoned(msg.clone()));
                }
            }
            return results;
        }
        self.publish(checkpoint, overlay, queued);
        let mut records: Vec<Option<StoredRecord>> = std::mem::take(&mut group.records)
            .into_iter()
            .map(Some)
            .collect();
        for r in &mut results {
            if let Ok(Reply::NewRecord(i)) = r {
                *r = match records.get_mut(*i).and_then(Option::take) {
                    Some(rec) => Ok(Reply::Record(RecordOutcome::Recorded(Box::new(rec)))),
                    None => Err(LedgerError::Poisoned(
                        "internal: reply for a record missing from its group".into(),
                    )),
                };
            }
        }
        results
    }

    /// One aggregate as readers should see it: the overlay, else the store.
    pub(crate) fn aggregate(&self, key: &AggKey) -> Result<Option<Totals>, LedgerError> {
        {
            let ov = self
                .overlay
                .read()
                .map_err(|_| LedgerError::Poisoned("overlay lock poisoned".into()))?;
            if let Some((_, v)) = ov.get(&crate::sled_store::agg_key(key)) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(self.store.get_aggregate(key)?)
    }

    /// A range of aggregates as readers should see them, in key order.
    pub(crate) fn scan_aggregates(
        &self,
        scan: &AggScan,
    ) -> Result<Vec<(AggKey, Totals)>, LedgerError> {
        let fresh: Vec<(Vec<u8>, (AggKey, Totals))> = {
            let ov = self
                .overlay
                .read()
                .map_err(|_| LedgerError::Poisoned("overlay lock poisoned".into()))?;
            let prefix = crate::sled_store::agg_scan_prefix(scan);
            ov.range(prefix.clone()..)
                .take_while(|(bytes, _)| bytes.starts_with(&prefix))
                .filter(|(_, (k, _))| scan.matches(k))
                .map(|(bytes, entry)| (bytes.clone(), entry.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(self.store.scan_aggregates(scan)?);
        }
        // Store order is the byte order of encoded keys; keep it.
        let mut merged: BTreeMap<Vec<u8>, (AggKey, Totals)> = self
            .store
            .scan_aggregates(scan)?
            .into_iter()
            .map(|(k, v)| (crate::sled_store::agg_key(&k), (k, v)))
            .collect();
        merged.extend(fresh);
        Ok(merged.into_values().collect())
    }

    /// Makes the batch's aggregates visible to readers (after its commit).
    fn publish(
        &self,
        checkpoint: bool,
        values: Vec<(Vec<u8>, (AggKey, Totals))>,
        queued: &mut QueuedBatch,
    ) {
        let Ok(mut ov) = self.overlay.write() else {
            self.poison("overlay lock poisoned".into());
            return;
        };
        // Under the overlay's lock: a reader whose published-usage miss came
        // after this reads the overlay after it too.
        self.usage.publish(
            values.iter().map(|(_, (key, totals))| (key, totals)),
            queued,
        );
        if checkpoint {
            // The store now holds every aggregate; the overlay is redundant.
            ov.clear();
        } else {
            ov.extend(values);
        }
    }

    fn poison(&self, msg: String) {
        if let Ok(mut p) = self.poisoned.lock() {
            p.get_or_insert(msg);
        }
    }
}

fn clone_err(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Poisoned(m) => LedgerError::Poisoned(m.clone()),
        other => LedgerError::Poisoned(other.to_string()),
    }
}

impl State {
    fn purge_reservations(&mut self, now: DateTime<Utc>) {
        let expired: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.settle_reservation(ReservationId(id));
        }
    }

    /// Drops a reservation (settled by a record, released, or expired).
    fn settle_reservation(&mut self, id: ReservationId) -> bool {
        let Some(h) = self.reservations.remove(&id.0) else {
            return false;
        };
        if let Some(c) = self.clients.get_mut(&h.client) {
            c.outstanding -= h.amount;
        }
        true
    }

    fn load_client(&mut self, store: &dyn LedgerStore, client: &str) -> Result<(), LedgerError> {
        if self.clients.contains_key(client) {
            return Ok(());
        }
        let plan = store
            .get_plan(client)?
            .unwrap_or_else(|| ClientPlan::default_for(client));
        let buckets = store.buckets(client)?;
        self.clients.insert(
            client.to_owned(),
            ClientState {
                plan,
                buckets,
                outstanding: Decimal::ZERO,
                alerted: HashMap::new(),
            },
        );
        Ok(())
    }

    fn load_agg(&mut self, store: &dyn LedgerStore, key: &AggKey) -> Result<(), LedgerError> {
        if !self.aggs.contains_key(key) {
            let value = store.get_aggregate(key)?.unwrap_or_default();
            self.aggs.insert(
                key.clone(),
                AggSlot {
                    value,
                    ..AggSlot::default()
                },
            );
        }
        Ok(())
    }

    fn load_alerted(
        &mut self,
        store: &dyn LedgerStore,
        client: &str,
        period: Period,
    ) -> Result<(), LedgerError> {
        let loaded = self
            .clients
            .get(client)
            .is_some_and(|c| c.alerted.contains_key(&period));
        if !loaded {
            let set: BTreeSet<u32> = store
                .alerted_thresholds(client, period)?
                .into_iter()
                .collect();
            if let Some(c) = self.clients.get_mut(client) {
                c.alerted.insert(period, set);
            }
        }
        Ok(())
    }

    fn next_entry_seq(&mut self) -> u64 {
        let s = self.meta.next_entry_seq;
        self.meta.next_entry_seq += 1;
        s
    }

    fn apply(
        &mut self,
        sh: &Shared,
        b: &mut Batch,
        now: DateTime<Utc>,
        cmd: Command,
    ) -> Result<Reply, LedgerError> {
        match cmd {
            Command::Record(r) => self.apply_record(sh, b, now, *r),
            Command::Reverse {
                original_key,
                reason,
            } => self.apply_reversal(sh, b, now, &original_key, &reason),
            Command::TopUp {
                client,
                amount,
                key,
                expires_at,
            } => self
                .apply_topup(sh, b, now, &client, amount, &key, expires_at)
                .map(Reply::TopUp),
            Command::SetPlan(plan) => {
                validate_plan(&plan)?;
                self.load_client(&*sh.store, &plan.client_id)?;
                if let Some(c) = self.clients.get_mut(&plan.client_id) {
                    c.plan = plan.clone();
                }
                b.group.plans.push(plan);
                Ok(Reply::Done)
            }
            Command::AlertDelivered(id) => {
                let mut a = self.find_alert(sh, b, id)?;
                a.delivery = Backoff::after_success(&a.delivery, now);
                b.alerts.insert(a.id, a.clone());
                Ok(Reply::Alert(a))
            }
            Command::AlertFailed { id, error } => {
                let mut a = self.find_alert(sh, b, id)?;
                a.delivery = sh.cfg.alert_backoff.after_failure(&a.delivery, now, &error);
                b.alerts.insert(a.id, a.clone());
                Ok(Reply::Alert(a))
            }
            Command::SweepExpired(client) => {
                self.load_client(&*sh.store, &client)?;
                self.sweep(b, &client, now);
                Ok(Reply::Done)
            }
            Command::Checkpoint => Ok(Reply::Done),
        }
    }

    fn find_alert(&self, sh: &Shared, b: &Batch, id: u64) -> Result<Alert, LedgerError> {
        if let Some(a) = b.alerts.get(&id) {
            return Ok(a.clone());
        }
        // The batch in flight may have changed it.
        sh.wait_committed(self.inflight_no)?;
        sh.store
            .get_alert(id)?
            .ok_or_else(|| LedgerError::NotFound(format!("alert {id}")))
    }

    /// Returns the record already stored under `key`, if any.
    fn existing(
        &self,
        sh: &Shared,
        b: &Batch,
        key: &str,
    ) -> Result<Option<StoredRecord>, LedgerError> {
        if let Some(r) = b.new_records.get(key).and_then(|&i| b.group.records.get(i)) {
            return Ok(Some(r.clone()));
        }
        if self.inflight.contains_key(key) {
            // Claimed by the batch being committed: read it once it is stored.
            sh.wait_committed(self.inflight_no)?;
        }
        match sh.store.find_idempotency_key(key)? {
            Some(id) => match sh.store.get_record(id)? {
                Some(r) => Ok(Some(r)),
                None => Err(LedgerError::NotFound(format!(
                    "record {id:?} behind idempotency key {key:?}"
                ))),
            },
            None => Ok(None),
        }
    }

    fn apply_record(
        &mut self,
        sh: &Shared,
        b: &mut Batch,
        now: DateTime<Utc>,
        r: UsageRecord,
    ) -> Result<Reply, LedgerError> {
        validate(&r)?;
        if let Some(existing) = self.existing(sh, b, &r.idempotency_key)? {
            // A retry may carry a fresh reservation; it must not stay held.
            if let Some(id) = r.reservation_id {
                self.settle_reservation(id);
            }
            return Ok(Reply::Record(RecordOutcome::Duplicate(Box::new(existing))));
        }
        self.load_client(&*sh.store, &r.client_id)?;
        if let Some(agency) = self
            .clients
            .get(&r.client_id)
            .and_then(|c| c.plan.agency_id.as_ref())
            && agency != &r.agency_id
        {
            return Err(invalid(format!(
                "client {} belongs to agency {agency}, record names {}",
                r.client_id, r.agency_id
            )));
        }
        let (period, late) = sh.cfg.calendar.assign(r.finished_at, now);
        let stored = StoredRecord {
            id: RecordId {
                period,
                seq: self.meta.next_seq,
            },
            late_adjustment: late,
            recorded_at: now,
            kind: RecordKind::Usage,
            credits_applied: Vec::new(),
            record: r,
        };
        let contribs = self.preload(sh, &stored)?;
        // Nothing below can fail: state changes only from here on.
        self.meta.next_seq += 1;
        let client = stored.record.client_id.as_str();
        self.sweep(b, client, now);
        self.grant_included(sh, b, client, period, now);
        let mut stored = stored;
        stored.credits_applied = self.consume(b, &stored, now);
        self.settle_reservation_opt(stored.record.reservation_id);
        self.book(b, &stored, contribs);
        self.check_alerts(b, &stored, now);
        Ok(Reply::NewRecord(push_record(b, stored)))
    }

    fn settle_reservation_opt(&mut self, id: Option<ReservationId>) {
        if let Some(id) = id {
            self.settle_reservation(id);
        }
    }

    fn apply_reversal(
        &mut self,
        sh: &Shared,
        b: &mut Batch,
        now: DateTime<Utc>,
        original_key: &str,
        reason: &str,
    ) -> Result<Reply, LedgerError> {
        let key = format!("reversal:{original_key}");
        if let Some(existing) = self.existing(sh, b, &key)? {
            return Ok(Reply::Record(RecordOutcome::Duplicate(Box::new(existing))));
        }
        let Some(orig) = self.existing(sh, b, original_key)? else {
            return Err(LedgerError::NotFound(format!(
                "record with idempotency key {original_key:?}"
            )));
        };
        if !matches!(orig.kind, RecordKind::Usage) {
            return Err(LedgerError::InvalidArgument(
                "a reversal cannot itself be reversed".into(),
            ));
        }
        self.load_client(&*sh.store, &orig.record.client_id)?;
        let mut period = orig.id.period;
        while sh.cfg.calendar.is_closed(period, now) {
            period = period.next();
        }
        let mut rec = orig.record.clone();
        rec.idempotency_key = key;
        rec.provider_cost = -rec.provider_cost;
        rec.surcharge = -rec.surcharge;
        rec.total_charged = -rec.total_charged;
        for q in rec.units.values_mut() {
            *q = -*q;
        }
        rec.reservation_id = None;
        let stored = StoredRecord {
            id: RecordId {
                period,
                seq: self.meta.next_seq,
            },
            late_adjustment: period != orig.id.period,
            recorded_at: now,
            kind: RecordKind::Reversal {
                original: orig.id,
                reason: reason.to_owned(),
            },
            credits_applied: Vec::new(),
            record: rec,
        };
        let contribs = self.preload(sh, &stored)?;
        self.meta.next_seq += 1;
        let mut stored = stored;
        stored.credits_applied = self.refund(b, &orig, &stored, now);
        self.book(b, &stored, contribs);
        Ok(Reply::NewRecord(push_record(b, stored)))
    }

    /// Loads everything `book`/`check_alerts` touch, so they cannot fail, and
    /// returns the record's contributions (before credit is applied).
    fn preload(
        &mut self,
        sh: &Shared,
        stored: &StoredRecord,
    ) -> Result<Vec<(AggKey, Totals)>, LedgerError> {
        let contribs = contributions(stored);
        for (k, _) in &contribs {
            self.load_agg(&*sh.store, k)?;
        }
        self.load_alerted(&*sh.store, &stored.record.client_id, stored.id.period)?;
        Ok(contribs)
    }

    /// Adds a record to the running aggregates: one map lookup per aggregate,
    /// noting aggregates first changed in this batch or since the checkpoint.
    /// `contribs` are the record's contributions computed before its credit was
    /// applied; only the client aggregate's `credits_applied` depends on that.
    fn book(&mut self, b: &mut Batch, stored: &StoredRecord, mut contribs: Vec<(AggKey, Totals)>) {
        for (k, t) in &mut contribs {
            if matches!(k, AggKey::Client { .. }) {
                t.credits_applied = stored.credits_total();
            }
        }
        debug_assert_eq!(contribs, contributions(stored));
        let batch_no = self.batch_no;
        for (k, delta) in contribs {
            let mut slot = match self.aggs.entry(k) {
                Entry::Occupied(o) => o,
                Entry::Vacant(v) => v.insert_entry(AggSlot::default()),
            };
            let (first_in_batch, first_since_checkpoint) = {
                let a = slot.get();
                (a.batch_no != batch_no, !a.dirty)
            };
            if first_in_batch {
                b.touched.push(slot.key().clone());
            }
            if first_since_checkpoint {
                self.dirty.push(slot.key().clone());
            }
            let a = slot.get_mut();
            a.value.add(&delta);
            if first_since_checkpoint {
                a.delta = delta;
            } else {
                a.delta.add(&delta);
            }
            a.dirty = true;
            a.batch_no = batch_no;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_entry(
        &mut self,
        b: &mut Batch,
        client: &str,
        bucket: &str,
        kind: CreditEntryKind,
        amount: Decimal,
        record: Option<RecordId>,
        now: DateTime<Utc>,
    ) -> u64 {
        let seq = self.next_entry_seq();
        b.group.credit_entries.push(CreditEntry {
            seq,
            client_id: client.to_owned(),
            bucket_id: bucket.to_owned(),
            kind,
            amount,
            record,
            at: now,
        });
        b.touched_buckets
            .insert((client.to_owned(), bucket.to_owned()));
        seq
    }

    /// Expires whatever is left in buckets past their expiry.
    fn sweep(&mut self, b: &mut Batch, client: &str, now: DateTime<Utc>) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let mut expired = Vec::new();
        for bk in &mut c.buckets {
            if bk.balance != Decimal::ZERO && bk.expires_at.is_some_and(|e| e <= now) {
                expired.push((bk.id.clone(), -bk.balance));
                bk.balance = Decimal::ZERO;
            }
        }
        for (id, amount) in expired {
            self.push_entry(b, client, &id, CreditEntryKind::Expiry, amount, None, now);
        }
    }

    fn grant_included(
        &mut self,
        sh: &Shared,
        b: &mut Batch,
        client: &str,
        period: Period,
        now: DateTime<Utc>,
    ) {
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let amount = c.plan.included_per_period;
        if amount <= Decimal::ZERO || c.has_included(period) {
            return;
        }
        let id = format!("included:{period}");
        let seq = self.push_entry(b, client, &id, CreditEntryKind::Grant, amount, None, now);
        let cal = sh.cfg.calendar;
        if let Some(c) = self.clients.get_mut(client) {
            c.buckets.push(CreditBucket {
                id,
                client_id: client.to_owned(),
                kind: BucketKind::Included { period },
                granted: amount,
                balance: amount,
                created_seq: seq,
                created_at: now,
                // Unused included usage lapses when its period closes.
                expires_at: Some(cal.end(period) + cal.grace),
            });
        }
    }

    /// Draws the record's charge from the client's credit, in consumption order.
    fn consume(
        &mut self,
        b: &mut Batch,
        stored: &StoredRecord,
        now: DateTime<Utc>,
    ) -> Vec<CreditUse> {
        let client = stored.record.client_id.as_str();
        let mut remaining = stored.record.total_charged;
        let mut uses = Vec::new();
        let Some(c) = self.clients.get_mut(client) else {
            return uses;
        };
        for i in c.eligible(stored.id.period, now) {
            if remaining <= Decimal::ZERO {
                break;
            }
            let bk = &mut c.buckets[i];
            let take = remaining.min(bk.balance);
            bk.balance -= take;
            remaining -= take;
            uses.push(CreditUse {
                bucket_id: bk.id.clone(),
                amount: take,
            });
        }
        for u in &uses {
            self.push_entry(
                b,
                client,
                &u.bucket_id,
                CreditEntryKind::Consumption,
                -u.amount,
                Some(stored.id),
                now,
            );
        }
        uses
    }

    /// Gives back what the original record drew, to the same buckets.
    fn refund(
        &mut self,
        b: &mut Batch,
        orig: &StoredRecord,
        reversal: &StoredRecord,
        now: DateTime<Utc>,
    ) -> Vec<CreditUse> {
        let client = orig.record.client_id.as_str();
        let mut uses = Vec::new();
        let Some(c) = self.clients.get_mut(client) else {
            return uses;
        };
        for u in &orig.credits_applied {
            if let Some(bk) = c.buckets.iter_mut().find(|bk| bk.id == u.bucket_id) {
                bk.balance += u.amount;
                uses.push(CreditUse {
                    bucket_id: u.bucket_id.clone(),
                    amount: -u.amount,
                });
            }
        }
        for u in &uses {
            self.push_entry(
                b,
                client,
                &u.bucket_id,
                CreditEntryKind::Reversal,
                -u.amount,
                Some(reversal.id),
                now,
            );
        }
        uses
    }

    fn check_alerts(&mut self, b: &mut Batch, stored: &StoredRecord, now: DateTime<Utc>) {
        let client = &stored.record.client_id;
        let period = stored.id.period;
        let spend = self
            .aggs
            .get(&AggKey::Client {
                client: client.clone(),
                period,
            })
            .map(|a| a.value.total)
            .unwrap_or_default();
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let Some(cap) = c.plan.monthly_cap else {
            return;
        };
        if cap <= Decimal::ZERO {
            return;
        }
        let thresholds: BTreeSet<u32> = c.plan.alert_thresholds_pct.iter().copied().collect();
        let alerted = c.alerted.entry(period).or_default();
        let mut crossed = Vec::new();
        for pct in thresholds {
            if spend * Decimal::ONE_HUNDRED >= cap * Decimal::from(pct) && alerted.insert(pct) {
                crossed.push(pct);
            }
        }
        for pct in crossed {
            let id = self.meta.next_alert_id;
            self.meta.next_alert_id += 1;
            let alert = Alert {
                id,
                client_id: client.clone(),
                agency_id: stored.record.agency_id.clone(),
                period,
                threshold_pct: pct,
                cap,
                spend,
                record: stored.id,
                created_at: now,
                delivery: Delivery::Pending {
                    attempts: 0,
                    next_attempt_at: now,
                    last_error: None,
                },
            };
            b.group.alert_markers.push((client.clone(), period, pct));
            b.alerts.insert(id, alert);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_topup(
        &mut self,
        sh: &Shared,
        b: &mut Batch,
        now: DateTime<Utc>,
        client: &str,
        amount: Decimal,
        key: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<TopUpOutcome, LedgerError> {
        check_id("client_id", client)?;
        check_id("top-up idempotency key", key)?;
        if amount <= Decimal::ZERO {
            return Err(LedgerError::InvalidArgument(format!(
                "top-up amount must be positive, got {amount}"
            )));
        }
        if let Some(bk) = b.new_topups.get(key) {
            return Ok(TopUpOutcome::Duplicate(bk.clone()));
        }
        // The batch in flight may hold this key (top-ups are rare: just wait).
        sh.wait_committed(self.inflight_no)?;
        if let Some(bucket_id) = sh.store.find_topup_key(key)? {
            let found = sh
                .store
                .buckets(client)?
                .into_iter()
                .find(|bk| bk.id == bucket_id);
            return match found {
                Some(bk) => Ok(TopUpOutcome::Duplicate(bk)),
                None => Err(LedgerError::InvalidArgument(format!(
                    "top-up key {key:?} was used for another client"
                ))),
            };
        }
        self.load_client(&*sh.store, client)?;
        let id = format!("topup:{key}");
        let seq = self.push_entry(b, client, &id, CreditEntryKind::TopUp, amount, None, now);
        let bucket = CreditBucket {
            id: id.clone(),
            client_id: client.to_owned(),
            kind: BucketKind::TopUp {
                idempotency_key: key.to_owned(),
            },
            granted: amount,
            balance: amount,
            created_seq: seq,
            created_at: now,
            expires_at,
        };
        if let Some(c) = self.clients.get_mut(client) {
            c.buckets.push(bucket.clone());
        }
        b.group.topup_keys.push((key.to_owned(), id));
        b.new_topups.insert(key.to_owned(), bucket.clone());
        Ok(TopUpOutcome::Applied(bucket))
    }

    /// Turns the batch into the store's commit group. A checkpoint group also
    /// carries every aggregate changed since the previous checkpoint.
    fn finish(&mut self, mut b: Batch, checkpoint: bool) -> CommitGroup {
        let mut g = std::mem::take(&mut b.group);
        if checkpoint {
            let aggs = &mut self.aggs;
            g.aggregates = self
                .dirty
                .drain(..)
                .filter_map(|key| {
                    let a = aggs.get_mut(&key)?;
                    a.dirty = false;
                    let delta = std::mem::take(&mut a.delta);
                    let value = a.value.clone();
                    Some(AggregateWrite { key, delta, value })
                })
                .collect();
            self.meta.aggregates_through_seq = self.meta.next_seq;
            self.meta.replay_from = None;
        } else if let Some(p) = g.records.iter().map(|r| r.id.period).min() {
            self.meta.replay_from = Some(self.meta.replay_from.map_or(p, |q| q.min(p)));
        }
        for (client, id) in b.touched_buckets {
            if let Some(bk) = self
                .clients
                .get(&client)
                .and_then(|c| c.buckets.iter().find(|bk| bk.id == id))
            {
                g.buckets.push(bk.clone());
            }
        }
        g.alerts = b.alerts.into_values().collect();
        g.meta = self.meta;
        g
    }
}

/// Adds a new record to the group; returns its index there.
fn push_record(b: &mut Batch, stored: StoredRecord) -> usize {
    let i = b.group.records.len();
    b.new_records
        .insert(stored.record.idempotency_key.clone(), i);
    b.group.records.push(stored);
    i
}

/// Brings stored aggregates up to date after a crash: adds the records written
/// since the last checkpoint and commits the result as a new checkpoint.
fn replay(store: &dyn LedgerStore) -> Result<Meta, LedgerError> {
    let mut meta = store.load_meta()?;
    let Some(from) = meta.replay_from else {
        return Ok(meta);
    };
    let through = meta.aggregates_through_seq;
    let mut deltas: HashMap<AggKey, Totals> = HashMap::new();
    let mut replayed = 0u64;
    store.for_each_record(Some(from), &mut |r| {
        if r.id.seq >= through {
            replayed += 1;
            for (k, d) in contributions(&r) {
                deltas.entry(k).or_default().add(&d);
            }
        }
        Ok(())
    })?;
    let mut group = CommitGroup::default();
    for (key, delta) in deltas {
        let mut value = store.get_aggregate(&key)?.unwrap_or_default();
        value.add(&delta);
        group.aggregates.push(AggregateWrite { key, delta, value });
    }
    meta.aggregates_through_seq = meta.next_seq;
    meta.replay_from = None;
    group.meta = meta;
    store.commit(&group)?;
    store.sync()?;
    tracing::info!(
        replayed,
        "ledger aggregates replayed from records after restart"
    );
    Ok(meta)
}

fn validate_plan(p: &ClientPlan) -> Result<(), LedgerError> {
    let bad = |m: String| Err(LedgerError::InvalidArgument(m));
    check_id("client_id", &p.client_id).map_err(|e| LedgerError::InvalidArgument(e.to_string()))?;
    if p.monthly_cap.is_some_and(|c| c < Decimal::ZERO) {
        return bad("monthly cap is negative".into());
    }
    if p.included_per_period < Decimal::ZERO {
        return bad("included usage is negative".into());
    }
    if p.alert_thresholds_pct.contains(&0) {
        return bad("alert thresholds must be positive percentages".into());
    }
    Ok(())
}

/// Flushes the store and poisons the ledger if that fails.
fn flush(sh: &Shared) -> Result<(), LedgerError> {
    if let Err(e) = sh.store.sync() {
        tracing::error!(error = %e, "ledger flush failed; ledger poisoned");
        let msg = format!("flush failed: {e}");
        sh.poison(msg.clone());
        return Err(LedgerError::Poisoned(msg));
    }
    Ok(())
}

/// A prepared batch with its waiters, handed from the writer to the committer.
struct Handoff {
    no: u64,
    prepared: Prepared,
    replies: Vec<flume::Sender<Result<Reply, LedgerError>>>,
    /// The group's records' counts in [`Shared::usage`]: taken out by the
    /// publish, or dropped with the handoff if the group never gets there.
    queued: QueuedBatch,
}

/// The writer thread's loop. Ends when every sender is gone, after a final
/// checkpoint and flush.
///
/// Applying a batch (memory only) and committing it are pipelined: the writer
/// applies batch N+1 while its committer thread commits batch N, flushes it
/// (sync mode) and wakes its waiters. Only one batch is ever in flight: before
/// handing over N+1 the writer waits until N is committed, and while applying
/// N+1 it waits for N whenever it must read something N may have written (an
/// idempotency key claimed by N, top-up keys, alerts). Groups therefore reach
/// the store one at a time and in order, exactly as without the pipeline.
pub(crate) fn run_writer(sh: Arc<Shared>, rx: flume::Receiver<Job>) {
    let (to_committer, from_writer) = flume::bounded::<Handoff>(1);
    std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name("tollgate-ledger-commit".into())
            .spawn_scoped(scope, || run_committer(&sh, from_writer));
        if committer.is_err() {
            sh.poison("could not start the ledger committer thread".into());
        }
        let linger = match sh.cfg.durability {
            Durability::Batched { .. } => sh.cfg.record_linger,
            Durability::Sync => Duration::ZERO,
        };
        let mut no = 0u64;
        while let Ok(first) = rx.recv() {
            // A record with nothing queued behind it: wait for company. With
            // work queued there is a group to form already. Sleeping rather
            // than waiting on the queue is the point: a writer blocked in
            // `recv` is woken by every send, which at a few thousand records
            // a second costs more than the records.
            if !linger.is_zero() && rx.is_empty() && matches!(first.cmd, Command::Record(_)) {
                std::thread::sleep(linger);
            }
            let mut queued = QueuedBatch::new(&sh.usage);
            let mut cmds = Vec::new();
            let mut replies = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                cmds.push(job.cmd);
                replies.push(job.reply);
                if let Some(share) = job.queued {
                    queued.absorb(share);
                }
                if cmds.len() < sh.cfg.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            let prepared = sh.prepare(cmds, false);
            // At most one batch in flight: the previous one must be stored.
            let _ = sh.wait_committed(no);
            no += 1;
            if let Ok(mut st) = sh.state.lock() {
                st.inflight_no = no;
            }
            let h = Handoff {
                no,
                prepared,
                replies,
                queued,
            };
            if let Err(flume::SendError(h)) = to_committer.send(h) {
                // No committer: nothing can be written.
                let e = LedgerError::Poisoned("ledger committer thread is gone".into());
                sh.poison(e.to_string());
                for reply in h.replies {
                    let _ = reply.send(Err(clone_err(&e)));
                }
            }
        }
        drop(to_committer);
    });
    // Shutdown (the committer has finished): checkpoint so the next open has
    // nothing to replay.
    let p = sh.prepare(Vec::new(), true);
    let _ = sh.complete(p, &mut QueuedBatch::new(&sh.usage));
    let _ = flush(&sh);
}

/// Commits the writer's batches in order, then flushes (sync mode) and
/// answers every waiter of the batch.
fn run_committer(sh: &Shared, rx: flume::Receiver<Handoff>) {
    /// Releases a writer waiting on the counter even if this thread panics.
    struct Done<'a>(&'a Shared);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.poison("ledger committer thread panicked".into());
            }
            self.0.mark_committed(u64::MAX);
        }
    }
    let _done = Done(sh);
    for Handoff {
        no,
        prepared,
        replies,
        mut queued,
    } in rx.iter()
    {
        let had_group = !prepared.empty;
        let mut results = sh.complete(prepared, &mut queued);
        // The records of a group that was not published (nothing to write,
        // or a failed commit) leave the queued count only now.
        drop(queued);
        // The group is in the store: the writer may hand over the next one.
        sh.mark_committed(no);
        // Whatever reached the store is flushed, a checkpoint riding on a
        // batch of refused commands included; after a failed commit nothing
        // did.
        let wrote = had_group && sh.check_poisoned().is_ok();
        match sh.cfg.durability {
            Durability::Sync => {
                if wrote && let Err(e) = flush(sh) {
                    for r in &mut results {
                        *r = Err(clone_err(&e));
                    }
                }
            }
            // The flusher thread makes it durable within `flush_every`; keeping
            // the fsync off this thread keeps it from stalling every writer.
            Durability::Batched { .. } => {
                if wrote && !sh.dirty.swap(true, Ordering::AcqRel) {
                    // Full means a wake-up is already pending.
                    let _ = sh.dirtied.0.try_send(());
                }
            }
        }
        for (reply, res) in replies.into_iter().zip(results) {
            // A waiter that gave up (dropped its receiver) is not an error.
            let _ = reply.send(res);
        }
    }
}

/// How long the idle flusher sleeps before it looks at `dirty` itself.
const FLUSHER_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Batched mode's flush: `every` after a commit leaves the store unflushed,
/// so each write is durable within `every` and the commits of that interval
/// share one flush. Between them it sleeps until the next such commit, so an
/// idle ledger wakes no thread, except once every [`FLUSHER_RECHECK`]: a
/// wake-up lost by the channel would otherwise leave the store unflushed
/// (no later commit signals while `dirty` stays set). Ends when `stop` is
/// dropped (the writer has flushed on its way out).
pub(crate) fn run_flusher(sh: Arc<Shared>, stop: flume::Receiver<()>, every: std::time::Duration) {
    let dirtied = sh.dirtied.1.clone();
    loop {
        let commit_waits = flume::Selector::new()
            .recv(&dirtied, |signal| signal.is_ok())
            .recv(&stop, |_| false)
            .wait_timeout(FLUSHER_RECHECK)
            .unwrap_or_else(|_| sh.dirty.load(Ordering::Acquire));
        if !commit_waits {
            if stop.is_disconnected() {
                return;
            }
            continue;
        }
        // The rest of the interval's commits join this flush.
        match stop.recv_timeout(every) {
            Err(flume::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(flume::RecvTimeoutError::Disconnected) => return,
        }
        #[cfg(test)]
        sh.flusher_wakeups.fetch_add(1, Ordering::Relaxed);
        if sh.dirty.swap(false, Ordering::AcqRel) {
            let _ = flush(&sh);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{PluginRef, RecordFlags, Tokens, UsageSoFar};

    fn rec(cost: i64, surcharge: i64, total: i64, failed: bool) -> UsageRecord {
        let t = DateTime::from_timestamp(1_736_500_000, 0).unwrap();
        UsageRecord {
            idempotency_key: "k".into(),
            request_id: "r".into(),
            agency_id: "a".into(),
            client_id: "c".into(),
            app_id: None,
            end_user_id: None,
            started_at: t,
            finished_at: t,
            requested_model: "m".into(),
            requested_provider: None,
            routed_model: "m".into(),
            routed_provider: "p".into(),
            tokens: Tokens::default(),
            provider_cost: Decimal::new(cost, 2),
            price_version: "v".into(),
            surcharge: Decimal::new(surcharge, 2),
            total_charged: Decimal::new(total, 2),
            units: BTreeMap::new(),
            plugin: PluginRef::default(),
            flags: RecordFlags {
                failed,
                ..RecordFlags::default()
            },
            reservation_id: None,
        }
    }

    #[test]
    fn validation_accepts_normal_and_absorbed_records_only() {
        // (cost, surcharge, total, failed) -> accepted?
        let cases = [
            ((100, 20, 120, false), true),
            ((100, 20, 120, true), true),
            ((0, 0, 0, false), true),
            ((100, 0, 0, true), true),
            ((100, 0, 0, false), false),
            ((100, 20, 0, true), false),
            ((100, 0, 50, true), false),
            ((100, 20, 20, true), false),
            ((100, 20, 100, false), false),
            ((100, 0, 101, true), false),
        ];
        for ((c, s, t, f), ok) in cases {
            let r = rec(c, s, t, f);
            assert_eq!(validate(&r).is_ok(), ok, "{c} {s} {t} {f}");
            if ok {
                assert_eq!(r.is_absorbed(), c != 0 && t == 0);
                assert_eq!(r.charged_provider_cost() + r.surcharge, r.total_charged);
            }
        }
    }

    fn batched(linger: Duration) -> crate::Ledger {
        crate::Ledger::open(LedgerConfig {
            durability: Durability::Batched {
                flush_every: Duration::from_millis(500),
            },
            record_linger: linger,
            ..LedgerConfig::default()
        })
        .unwrap()
    }

    fn now_record(key: &str) -> UsageRecord {
        let now = Utc::now();
        UsageRecord {
            idempotency_key: key.into(),
            started_at: now,
            finished_at: now,
            ..rec(100, 10, 110, false)
        }
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// The batched flusher sleeps while nothing is unflushed: one record
    /// wakes it once, `flush_every` later, whatever the idle time around it.
    #[test]
    fn the_batched_flusher_wakes_only_for_unflushed_commits() {
        let ledger = crate::Ledger::open(LedgerConfig {
            durability: Durability::Batched {
                flush_every: Duration::from_millis(5),
            },
            ..LedgerConfig::default()
        })
        .unwrap();
        let wakeups = || ledger.shared().flusher_wakeups.load(Ordering::Relaxed);
        let flushed_after = |n: u64| {
            let dirty = || ledger.shared().dirty.load(Ordering::Acquire);
            let start = std::time::Instant::now();
            while (wakeups() < n || dirty()) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Twenty intervals of idle time: a flusher on a timer would wake
            // about twenty more times.
            std::thread::sleep(Duration::from_millis(100));
            !dirty()
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wakeups(), 0, "no commit yet, nothing to flush");
        ledger.record(now_record("a")).unwrap();
        assert!(flushed_after(1));
        assert_eq!(wakeups(), 1);
        ledger.record(now_record("b")).unwrap();
        ledger.record(now_record("c")).unwrap();
        assert!(flushed_after(2));
        assert!((2..=3).contains(&wakeups()), "{} wake-ups", wakeups());
    }

    /// What `record_linger` groups in `batched` mode: records queued while
    /// an idle writer lingers share its group, and without a linger records
    /// written one after the other do not; a top-up, which its caller waits
    /// for, does not start a linger.
    #[test]
    fn batched_writer_lingers_for_records_only() {
        let lingering = batched(Duration::from_millis(300));
        current_thread_runtime().block_on(async {
            let a = lingering.queue_record_async(now_record("a")).await.unwrap();
            let b = lingering.queue_record_async(now_record("b")).await.unwrap();
            a.outcome().await.unwrap();
            b.outcome().await.unwrap();
        });
        assert_eq!(lingering.shared().groups_formed(), 1);

        let eager = batched(Duration::ZERO);
        eager.record(now_record("a")).unwrap();
        eager.record(now_record("b")).unwrap();
        assert_eq!(eager.shared().groups_formed(), 2);

        // A linger far longer than the wait this allows: a top-up that
        // started one would not be back in time.
        let long = batched(Duration::from_secs(4));
        let started = Instant::now();
        long.top_up("c", Decimal::ONE, "t1", None).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the top-up lingered"
        );
        assert_eq!(long.shared().groups_formed(), 1);

        // A linger the enqueue timeout cannot outlast is refused.
        let refused = crate::Ledger::open(LedgerConfig {
            durability: Durability::Batched {
                flush_every: Duration::from_millis(500),
            },
            record_linger: Duration::from_secs(5),
            enqueue_timeout: Duration::from_secs(5),
            ..LedgerConfig::default()
        });
        assert!(matches!(refused, Err(LedgerError::InvalidArgument(_))));
    }

    /// `usage_so_far` counts a record from the moment it is queued, while
    /// the writer still lingers over it, and exactly once after: a duplicate
    /// and a refused record drop out when their batch is done.
    #[test]
    fn usage_so_far_counts_queued_records_once_and_only_those_written() {
        let ledger = batched(Duration::from_millis(300));
        let runtime = current_thread_runtime();
        let ticket = |key: &str, cost: i64| UsageRecord {
            units: BTreeMap::from([("ticket".to_owned(), Decimal::ONE)]),
            provider_cost: Decimal::new(cost, 2),
            total_charged: Decimal::new(cost + 10, 2),
            ..now_record(key)
        };
        let period = ledger.calendar().period_of(ticket("x", 1).finished_at);
        let usage = || ledger.usage_so_far("c", period).unwrap();
        let seen = |requests: i64, spend: i64, tickets: i64| UsageSoFar {
            requests,
            spend: Decimal::new(spend, 2),
            units: if tickets == 0 {
                BTreeMap::new()
            } else {
                BTreeMap::from([("ticket".to_owned(), Decimal::from(tickets))])
            },
        };
        assert_eq!(usage(), seen(0, 0, 0));

        runtime.block_on(async {
            let first = ledger.queue_record_async(ticket("a", 100)).await.unwrap();
            // Queued, not yet applied: the writer lingers 300 ms.
            assert_eq!(ledger.shared().groups_formed(), 0);
            assert_eq!(usage(), seen(1, 110, 1));
            let again = ledger.queue_record_async(ticket("a", 100)).await.unwrap();
            let mut refused = ticket("b", 40);
            refused.routed_model = String::new();
            let refused = ledger.queue_record_async(refused).await.unwrap();
            // Counted while queued: a limit errs on the safe side.
            assert_eq!(usage(), seen(3, 270, 3));
            assert!(matches!(
                first.outcome().await.unwrap(),
                RecordOutcome::Recorded(_)
            ));
            assert!(matches!(
                again.outcome().await.unwrap(),
                RecordOutcome::Duplicate(_)
            ));
            assert!(refused.outcome().await.is_err());
        });
        assert_eq!(ledger.shared().usage.queued_len(), 0);
        assert_eq!(usage(), seen(1, 110, 1));
        assert_eq!(
            ledger
                .record(ticket("c", 30))
                .unwrap()
                .record()
                .record
                .total_charged,
            Decimal::new(40, 2)
        );
        assert_eq!(usage(), seen(2, 150, 2));
        assert_eq!(ledger.shared().usage.queued_len(), 0);
    }

    /// A record from a month already closed counts, while queued, in the
    /// month it will be booked into, as it does once written.
    #[test]
    fn a_queued_late_record_counts_in_the_month_it_is_booked_into() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // January closed on 4 February (72 hours of grace).
        let clock = crate::ManualClock::new(at("2025-02-05T12:00:00Z"));
        let ledger = crate::Ledger::open(LedgerConfig {
            durability: Durability::Batched {
                flush_every: Duration::from_millis(500),
            },
            record_linger: Duration::from_millis(300),
            clock: clock.clock(),
            ..LedgerConfig::default()
        })
        .unwrap();
        let (january, february) = ("2025-01".parse().unwrap(), "2025-02".parse().unwrap());
        let requests = |period| ledger.usage_so_far("c", period).unwrap().requests;
        let late = UsageRecord {
            finished_at: at("2025-01-20T12:00:00Z"),
            started_at: at("2025-01-20T12:00:00Z"),
            ..now_record("late")
        };
        current_thread_runtime().block_on(async {
            let queued = ledger.queue_record_async(late).await.unwrap();
            // Still lingering: counted from the queue alone.
            assert_eq!(ledger.shared().groups_formed(), 0);
            assert_eq!((requests(january), requests(february)), (0, 1));
            let RecordOutcome::Recorded(stored) = queued.outcome().await.unwrap() else {
                panic!("the late record was not recorded")
            };
            assert_eq!(stored.id.period, february);
        });
        assert_eq!((requests(january), requests(february)), (0, 1));
    }

    /// A record whose enqueue is given up (its future dropped while the
    /// queue is full, as a timed-out enqueue's is) is not left counted; the
    /// records that were queued are counted until written, then once.
    #[test]
    fn a_record_that_never_reaches_the_queue_is_not_counted() {
        let ledger = crate::Ledger::open(LedgerConfig {
            durability: Durability::Batched {
                flush_every: Duration::from_millis(500),
            },
            record_linger: Duration::from_millis(1500),
            queue_capacity: 1,
            enqueue_timeout: Duration::from_secs(3),
            ..LedgerConfig::default()
        })
        .unwrap();
        current_thread_runtime().block_on(async {
            // The writer takes the first and lingers; the second fills the queue.
            let first = ledger.queue_record_async(now_record("a")).await.unwrap();
            let taken = Instant::now();
            while ledger.queued_jobs() > 0 {
                assert!(
                    taken.elapsed() < Duration::from_secs(1),
                    "the writer never took it"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Past its look at the queue (a record queued before it would
            // have joined the first group instead).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let second = ledger.queue_record_async(now_record("b")).await.unwrap();
            let dropped = tokio::time::timeout(
                Duration::from_millis(5),
                ledger.queue_record_async(now_record("c")),
            )
            .await;
            assert!(dropped.is_err(), "the queue should have been full");
            assert_eq!(ledger.shared().usage.queued_len(), 2);
            first.outcome().await.unwrap();
            second.outcome().await.unwrap();
        });
        assert_eq!(ledger.shared().usage.queued_len(), 0);
        let period = ledger.current_period();
        assert_eq!(ledger.usage_so_far("c", period).unwrap().requests, 2);
    }
}
