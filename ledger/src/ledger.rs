//! The public handle the gateway and admin tools hold: writes go through the
//! group-commit queue (sync and async flavours), reads go straight to the store's
//! running aggregates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::Durability;
use crate::config::LedgerConfig;
use crate::control::{ControlStore, MemoryControlStore, SledControlStore};
use crate::engine::{Command, Job, Reply, Reservation, Shared, run_flusher, run_writer};
use crate::error::LedgerError;
use crate::model::{
    AggKey, AggScan, Alert, ClientPlan, CreditBucket, CreditEntry, Delivery, Page, RecordId,
    RecordOutcome, RecordQuery, ReservationId, StoredRecord, TopUpOutcome, UsageRecord, UsageSoFar,
};
use crate::money::Currency;
use crate::period::{Calendar, Period};
use crate::queued::QueuedShare;
use crate::sled_store::SledStore;
use crate::statement::{self, Payout, Settlement, Statement, UsageReport};
use crate::store::LedgerStore;
use crate::verify::{self, VerifyReport};

/// Store reads `usage_so_far` makes on a miss before it settles for a
/// reading that may count a record being published twice.
const USAGE_READ_TRIES: usize = 4;

/// A client's credit: `total` is the sum of every bucket balance (which equals
/// the sum of all its entries); `available` excludes expired buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub client_id: String,
    pub total: Decimal,
    pub available: Decimal,
    pub buckets: Vec<CreditBucket>,
}

struct Inner {
    shared: Arc<Shared>,
    control: Arc<dyn ControlStore>,
    tx: Option<flume::Sender<Job>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    flusher_stop: Option<flume::Sender<()>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is queued, checkpoint,
        // flush, and exit; then the flusher (batched mode) is stopped.
        self.tx.take();
        for (stop, handle) in [(false, &self.writer), (true, &self.flusher)] {
            if stop {
                self.flusher_stop.take();
            }
            if let Ok(mut w) = handle.lock()
                && let Some(h) = w.take()
            {
                let _ = h.join();
            }
        }
    }
}

/// A usage record in the writer's queue ([`Ledger::queue_record_async`]).
#[derive(Debug)]
#[must_use = "dropping it does not cancel the record, but its outcome is then unknown"]
pub struct QueuedRecord {
    reply: flume::Receiver<Result<Reply, LedgerError>>,
}

impl QueuedRecord {
    /// Waits until the record is applied (`batched`) or durable (`sync`).
    pub async fn outcome(self) -> Result<RecordOutcome, LedgerError> {
        expect_record(
            self.reply
                .recv_async()
                .await
                .map_err(|_| LedgerError::Closed)??,
        )
    }
}

/// The usage ledger. Cheap to clone; the writer stops when the last clone drops.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("durability", &self.inner.shared.cfg.durability)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens the sled ledger at `config.path` (temporary when `None`).
    pub fn open(config: LedgerConfig) -> Result<Ledger, LedgerError> {
        let store = match &config.path {
            Some(p) => SledStore::open_with_cache(p, config.cache_bytes)?,
            None => SledStore::temporary()?,
        };
        let control = SledControlStore::new(store.db())?;
        Self::open_with_stores(Arc::new(store), Arc::new(control), config)
    }

    /// Opens the ledger on any [`LedgerStore`], with an in-memory control store.
    pub fn open_with_store(
        store: Arc<dyn LedgerStore>,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        Self::open_with_stores(store, Arc::new(MemoryControlStore::default()), config)
    }

    /// Opens the ledger on any [`LedgerStore`] and [`ControlStore`].
    pub fn open_with_stores(
        store: Arc<dyn LedgerStore>,
        control: Arc<dyn ControlStore>,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        if config.queue_capacity == 0 || config.max_batch == 0 {
            return Err(LedgerError::InvalidArgument(
                "queue_capacity and max_batch must be positive".into(),
            ));
        }
        if config.record_linger >= config.enqueue_timeout {
            // A full queue behind a sleeping writer would refuse every writer.
            return Err(LedgerError::InvalidArgument(format!(
                "record_linger ({:?}) must be shorter than enqueue_timeout ({:?})",
                config.record_linger, config.enqueue_timeout
            )));
        }
        let shared = Arc::new(Shared::open(store, config)?);
        let (tx, rx) = flume::bounded(shared.cfg.queue_capacity);
        let writer_shared = Arc::clone(&shared);
        let spawn_err = |e: std::io::Error| LedgerError::InvalidArgument(format!("spawn: {e}"));
        let handle = std::thread::Builder::new()
            .name("tollgate-ledger-writer".into())
            .spawn(move || run_writer(writer_shared, rx))
            .map_err(spawn_err)?;
        let (flusher_stop, flusher) = match shared.cfg.durability {
            Durability::Sync => (None, None),
            Durability::Batched { flush_every } => {
                let (stop_tx, stop_rx) = flume::bounded::<()>(1);
                let sh = Arc::clone(&shared);
                let h = std::thread::Builder::new()
                    .name("tollgate-ledger-flusher".into())
                    .spawn(move || run_flusher(sh, stop_rx, flush_every))
                    .map_err(spawn_err)?;
                (Some(stop_tx), Some(h))
            }
        };
        Ok(Ledger {
            inner: Arc::new(Inner {
                shared,
                control,
                tx: Some(tx),
                writer: Mutex::new(Some(handle)),
                flusher_stop,
                flusher: Mutex::new(flusher),
            }),
        })
    }

    /// The control-plane store (admin documents, plugin binaries, audit log)
    /// that lives beside the usage records.
    pub fn control(&self) -> Arc<dyn ControlStore> {
        Arc::clone(&self.inner.control)
    }

    /// Jobs waiting in the writer's queue.
    #[cfg(test)]
    pub(crate) fn queued_jobs(&self) -> usize {
        self.inner.tx.as_ref().map_or(0, flume::Sender::len)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn store(&self) -> &dyn LedgerStore {
        &*self.inner.shared.store
    }

    /// When a write counts as done.
    pub fn durability(&self) -> Durability {
        self.shared().cfg.durability
    }

    pub fn currency(&self) -> Currency {
        self.shared().cfg.currency
    }

    pub fn calendar(&self) -> Calendar {
        self.shared().cfg.calendar
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared().cfg.clock.now()
    }

    /// The period usage finishing now is booked into.
    pub fn current_period(&self) -> Period {
        self.calendar().period_of(self.now())
    }

    fn submit(&self, cmd: Command) -> Result<Reply, LedgerError> {
        let tx = self.inner.tx.as_ref().ok_or(LedgerError::Closed)?;
        let (rtx, rrx) = flume::bounded(1);
        let timeout = self.shared().cfg.enqueue_timeout;
        tx.send_timeout(
            Job {
                cmd,
                reply: rtx,
                queued: None,
            },
            timeout,
        )
        .map_err(|e| match e {
            flume::SendTimeoutError::Timeout(_) => LedgerError::Overloaded {
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
            flume::SendTimeoutError::Disconnected(_) => LedgerError::Closed,
        })?;
        rrx.recv().map_err(|_| LedgerError::Closed)?
    }

    /// Async flavour of the queue round trip. Must run inside a tokio runtime
    /// (the enqueue timeout uses tokio's timer); the group-commit wait is awaited.
    async fn submit_async(&self, cmd: Command) -> Result<Reply, LedgerError> {
        let reply = self.enqueue_async(cmd, None).await?;
        reply.recv_async().await.map_err(|_| LedgerError::Closed)?
    }

    /// Queues `cmd`, waiting for room in a full queue (backpressure) up to the
    /// enqueue timeout; returns the channel its reply will arrive on. A
    /// record's `queued` count travels in its job: the committer's publish
    /// takes it out with the record's group, and a job dropped on the way (a
    /// failed or abandoned enqueue) takes it out when dropped.
    async fn enqueue_async(
        &self,
        cmd: Command,
        queued: Option<QueuedShare>,
    ) -> Result<flume::Receiver<Result<Reply, LedgerError>>, LedgerError> {
        let tx = self.inner.tx.as_ref().ok_or(LedgerError::Closed)?;
        let (rtx, rrx) = flume::bounded(1);
        let timeout = self.shared().cfg.enqueue_timeout;
        let job = Job {
            cmd,
            reply: rtx,
            queued,
        };
        match tokio::time::timeout(timeout, tx.send_async(job)).await {
            Err(_) => Err(LedgerError::Overloaded {
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(_)) => Err(LedgerError::Closed),
            Ok(Ok(())) => Ok(rrx),
        }
    }

    /// Records one request's usage, settling its reservation if it names one.
    /// Retries with the same idempotency key return `Duplicate` with the stored
    /// record. Blocks until durable (sync) or applied (batched).
    pub fn record(&self, record: UsageRecord) -> Result<RecordOutcome, LedgerError> {
        expect_record(self.submit(Command::Record(Box::new(record)))?)
    }

    /// [`Ledger::record`] for async callers.
    pub async fn record_async(&self, record: UsageRecord) -> Result<RecordOutcome, LedgerError> {
        // Answered once the record is published, so unlike
        // `queue_record_async` it needs no count in `usage_so_far`.
        expect_record(self.submit_async(Command::Record(Box::new(record))).await?)
    }

    /// The first half of [`Ledger::record_async`]: returns once the record is
    /// in the writer's queue (waiting for room in a full queue, so overload
    /// still pushes back on the caller, and `Overloaded` after the enqueue
    /// timeout). [`QueuedRecord::outcome`] then waits for what `record_async`
    /// waits for. A queued record is applied even if its `QueuedRecord` is
    /// dropped, and a ledger that closes drains its queue first; a crash
    /// before the next flush loses it, as it would an applied one in
    /// `batched` mode. [`Ledger::usage_so_far`] counts the record from
    /// before it is queued, so the caller's next read sees it even before it
    /// is applied.
    pub async fn queue_record_async(
        &self,
        record: UsageRecord,
    ) -> Result<QueuedRecord, LedgerError> {
        let queued = QueuedShare::count(
            &self.shared().usage,
            &self.shared().cfg.calendar,
            self.now(),
            &record,
        );
        self.enqueue_async(Command::Record(Box::new(record)), Some(queued))
            .await
            .map(|reply| QueuedRecord { reply })
    }

    /// Books a reversal of the record stored under `original_idempotency_key`:
    /// negated amounts, tokens and units, credit given back. Idempotent.
    pub fn reverse(
        &self,
        original_idempotency_key: &str,
        reason: &str,
    ) -> Result<RecordOutcome, LedgerError> {
        expect_record(self.submit(Command::Reverse {
            original_key: original_idempotency_key.to_owned(),
            reason: reason.to_owned(),
        })?)
    }

    /// [`Ledger::reverse`] for async callers.
    pub async fn reverse_async(
        &self,
        original_idempotency_key: &str,
        reason: &str,
    ) -> Result<RecordOutcome, LedgerError> {
        expect_record(
            self.submit_async(Command::Reverse {
                original_key: original_idempotency_key.to_owned(),
                reason: reason.to_owned(),
            })
            .await?,
        )
    }

    /// Reserves an upper estimate before the upstream call. Refused with
    /// `CapExceeded` when spent + outstanding + estimate would pass the hard cap,
    /// and with `InsufficientBalance` when a prepaid client's credit can't cover it.
    /// In-memory only: reservations do not survive a restart (their requests don't either).
    pub fn reserve(&self, client_id: &str, estimate: Decimal) -> Result<Reservation, LedgerError> {
        self.shared().reserve(client_id, estimate)
    }

    /// Releases a reservation whose request failed without usage.
    pub fn release(&self, id: ReservationId) -> Result<(), LedgerError> {
        self.shared().release(id)
    }

    /// Sum of the client's outstanding reservations.
    pub fn outstanding(&self, client_id: &str) -> Result<Decimal, LedgerError> {
        self.shared().outstanding(client_id)
    }

    /// Spend, request count and unit totals of a client in a period: the
    /// published aggregates, held in memory once read (the first read of a
    /// client-period is a point read plus a short prefix scan; the committer
    /// keeps it current), plus the client's records still on their way
    /// through the writer: a record counts from the moment it is queued, in
    /// either durability mode, and once: both parts are read together, and a
    /// publish moves a group's records from one to the other in one step.
    pub fn usage_so_far(&self, client_id: &str, period: Period) -> Result<UsageSoFar, LedgerError> {
        let live = &self.shared().usage;
        for _ in 0..USAGE_READ_TRIES {
            match live.read(client_id, period) {
                Ok(usage) => return Ok(usage),
                Err(seen) => {
                    let published = self.read_published_usage(client_id, period)?;
                    if let Some(usage) = live.fill(client_id, period, &published, seen) {
                        return Ok(usage);
                    }
                }
            }
        }
        // Publishes kept overtaking the read. The queued count first: a
        // record leaves it only once published, so it is never missed, and
        // one published in between counts twice (the safe side for a limit).
        let mut usage = live.queued_of(client_id, period);
        usage.add(&self.read_published_usage(client_id, period)?);
        Ok(usage)
    }

    /// Whether the ledger can take writes and read its store: not poisoned
    /// by a failed commit or flush, and a read of a probe client's
    /// aggregates, made past every in-memory cache, succeeds.
    pub fn check_ready(&self) -> Result<(), LedgerError> {
        self.shared().check_poisoned()?;
        self.read_published_usage("readiness-probe", self.current_period())
            .map(|_| ())
    }

    /// A client's usage in `period` from the aggregates readers see.
    fn read_published_usage(
        &self,
        client_id: &str,
        period: Period,
    ) -> Result<UsageSoFar, LedgerError> {
        let t = self
            .shared()
            .aggregate(&AggKey::Client {
                client: client_id.to_owned(),
                period,
            })?
            .unwrap_or_default();
        let mut units = BTreeMap::new();
        for (k, v) in self.shared().scan_aggregates(&AggScan::ClientUnits {
            client: client_id.to_owned(),
            period,
        })? {
            if let AggKey::ClientUnit { unit, .. } = k {
                units.insert(unit, v.quantity);
            }
        }
        Ok(UsageSoFar {
            spend: t.total,
            requests: t.requests,
            units,
        })
    }

    /// Sets a client's plan (cap, thresholds, billing, included usage). Durable.
    pub fn set_plan(&self, plan: ClientPlan) -> Result<(), LedgerError> {
        self.submit(Command::SetPlan(plan)).map(|_| ())
    }

    pub fn plan(&self, client_id: &str) -> Result<ClientPlan, LedgerError> {
        Ok(self
            .store()
            .get_plan(client_id)?
            .unwrap_or_else(|| ClientPlan::default_for(client_id)))
    }

    /// Adds prepaid credit. Idempotent on `idempotency_key`.
    pub fn top_up(
        &self,
        client_id: &str,
        amount: Decimal,
        idempotency_key: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<TopUpOutcome, LedgerError> {
        match self.submit(Command::TopUp {
            client: client_id.to_owned(),
            amount,
            key: idempotency_key.to_owned(),
            expires_at,
        })? {
            Reply::TopUp(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes expiry entries for the client's lapsed credit now (otherwise done
    /// lazily with its next usage).
    pub fn sweep_expired(&self, client_id: &str) -> Result<(), LedgerError> {
        self.submit(Command::SweepExpired(client_id.to_owned()))
            .map(|_| ())
    }

    pub fn balance(&self, client_id: &str) -> Result<Balance, LedgerError> {
        let now = self.now();
        let buckets = self.store().buckets(client_id)?;
        let total = buckets.iter().map(|b| b.balance).sum();
        let available = buckets
            .iter()
            .filter(|b| b.expires_at.is_none_or(|e| e > now))
            .map(|b| b.balance)
            .sum();
        Ok(Balance {
            client_id: client_id.to_owned(),
            total,
            available,
            buckets,
        })
    }

    pub fn credit_entries(&self, client_id: &str) -> Result<Vec<CreditEntry>, LedgerError> {
        Ok(self.store().credit_entries(Some(client_id))?)
    }

    pub fn get_record(&self, id: RecordId) -> Result<Option<StoredRecord>, LedgerError> {
        Ok(self.store().get_record(id)?)
    }

    /// Records by period / client / model / unit, a page at a time.
    pub fn records(&self, query: &RecordQuery) -> Result<Page<StoredRecord>, LedgerError> {
        Ok(self.store().query_records(query)?)
    }

    /// Every alert in the outbox, oldest first.
    pub fn alerts(&self) -> Result<Vec<Alert>, LedgerError> {
        Ok(self.store().alerts()?)
    }

    /// Alerts due for a delivery attempt at `now`, oldest first.
    pub fn pending_alerts(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Alert>, LedgerError> {
        let mut out: Vec<Alert> = self
            .store()
            .alerts()?
            .into_iter()
            .filter(|a| {
                matches!(a.delivery, Delivery::Pending { next_attempt_at, .. } if next_attempt_at <= now)
            })
            .collect();
        out.truncate(limit);
        Ok(out)
    }

    /// The webhook accepted the alert.
    pub fn mark_delivered(&self, alert_id: u64) -> Result<Alert, LedgerError> {
        expect_alert(self.submit(Command::AlertDelivered(alert_id))?)
    }

    /// A delivery attempt failed; schedules the next one (exponential backoff)
    /// or gives up after the last attempt.
    pub fn mark_attempt_failed(&self, alert_id: u64, error: &str) -> Result<Alert, LedgerError> {
        expect_alert(self.submit(Command::AlertFailed {
            id: alert_id,
            error: error.to_owned(),
        })?)
    }

    /// A client's statement for a period, from running aggregates.
    pub fn statement(&self, client_id: &str, period: Period) -> Result<Statement, LedgerError> {
        statement::statement(self.shared(), self.currency(), client_id, period)
    }

    /// An agency's payout for a closed period.
    pub fn payout(&self, agency_id: &str, period: Period) -> Result<Payout, LedgerError> {
        self.payout_with_fee(agency_id, period, self.shared().cfg.platform_fee_pct)
    }

    /// An agency's payout for a closed period with the platform fee `fee_pct`
    /// (percent) instead of the configured default: the operator may set a
    /// fee per agency.
    pub fn payout_with_fee(
        &self,
        agency_id: &str,
        period: Period,
        fee_pct: Decimal,
    ) -> Result<Payout, LedgerError> {
        if fee_pct < Decimal::ZERO || fee_pct > Decimal::ONE_HUNDRED {
            return Err(LedgerError::InvalidArgument(format!(
                "platform fee {fee_pct}% is outside 0..=100"
            )));
        }
        let cal = self.calendar();
        if !cal.is_closed(period, self.now()) {
            return Err(LedgerError::PeriodOpen {
                period,
                closes_at: cal.end(period) + cal.grace,
            });
        }
        statement::payout(self.shared(), self.currency(), agency_id, period, fee_pct)
    }

    /// What is owed to each upstream provider for a period.
    pub fn settlement(&self, period: Period) -> Result<Settlement, LedgerError> {
        statement::settlement(self.shared(), self.currency(), period)
    }

    /// Usage per model for a period, for one client or everyone.
    pub fn usage_report(
        &self,
        period: Period,
        client_id: Option<&str>,
    ) -> Result<UsageReport, LedgerError> {
        statement::usage_report(self.shared(), self.currency(), period, client_id)
    }

    /// Checkpoints, then recomputes aggregates, balances and idempotency claims
    /// from the raw records and entries and compares them with the stored state.
    /// Meant for a quiescent ledger (admin "fsck", tests): writes racing with it
    /// can show up as differences.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.checkpoint()?;
        verify::verify(self.store())
    }

    /// Writes every dirty running aggregate to the store now, durably.
    pub fn checkpoint(&self) -> Result<(), LedgerError> {
        self.submit(Command::Checkpoint)?;
        Ok(self.store().sync()?)
    }

    /// Durability barrier: everything acknowledged so far is on disk afterwards.
    pub fn flush(&self) -> Result<(), LedgerError> {
        Ok(self.store().sync()?)
    }
}

fn unexpected(r: &Reply) -> LedgerError {
    LedgerError::InvalidArgument(format!("writer replied with unexpected {r:?}"))
}

fn expect_record(r: Reply) -> Result<RecordOutcome, LedgerError> {
    match r {
        Reply::Record(o) => Ok(o),
        other => Err(unexpected(&other)),
    }
}

fn expect_alert(r: Reply) -> Result<Alert, LedgerError> {
    match r {
        Reply::Alert(a) => Ok(a),
        other => Err(unexpected(&other)),
    }
}
