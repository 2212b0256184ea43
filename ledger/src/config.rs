//! Ledger settings: durability mode, queue bounds, currency, calendar, fees,
//! alert retry schedule, and an injectable clock (tests move time by hand).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::alerts::Backoff;
use crate::money::Currency;
use crate::period::Calendar;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Default. `record` returns only after the group commit holding the record has
    /// been flushed to disk; concurrent writers share one flush.
    Sync,
    /// `record` returns once the group is applied in memory; the writer flushes
    /// at most `flush_every` later. A crash loses at most that window.
    Batched { flush_every: Duration },
}

/// Source of "now". Cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    pub fn from_fn(f: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// A clock that only moves when told to; for tests and replays.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(start.timestamp_micros())))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        self.0.store(t.timestamp_micros(), Ordering::SeqCst);
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0.load(Ordering::SeqCst)).unwrap_or_default()
    }

    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Clock::from_fn(move || me.now())
    }
}

/// Everything `Ledger::open` needs.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Database directory; `None` opens a temporary in-memory database.
    pub path: Option<PathBuf>,
    pub durability: Durability,
    /// All amounts in this ledger are in this currency.
    pub currency: Currency,
    pub calendar: Calendar,
    /// Bound of the write queue; a full queue makes writers wait (backpressure).
    pub queue_capacity: usize,
    /// Most commands applied in one group commit.
    pub max_batch: usize,
    /// `Batched` mode only: when the writer takes a record with nothing
    /// queued behind it, it sleeps this long before it forms a group. Fewer, larger groups mean fewer store writes and thread
    /// wake-ups per record; the price is that a record reaches the store,
    /// statements and listings up to this much later, well inside the
    /// `flush_every` window a crash may lose anyway (`usage_so_far` counts it
    /// from the moment it is queued). Top-ups, plans, reversals and
    /// checkpoints never start a linger; one queued behind a record waits at
    /// most the rest of it. It pays where writers do not wait for their
    /// records (the gateway queues a record and answers its client); a
    /// writer that waits for each record waits the linger too, so the
    /// default is zero. Must be shorter than `enqueue_timeout`.
    pub record_linger: Duration,
    /// Dirty running aggregates are written to the store at most this long after
    /// they change (in the group commit that happens to be running). Zero writes
    /// them with every group. Records are always written immediately; after a
    /// crash the aggregates are replayed from them (see LEDGER.md).
    pub aggregate_checkpoint_every: Duration,
    /// ... or as soon as this many aggregates are dirty.
    pub max_dirty_aggregates: usize,
    /// How long a writer waits for room in a full queue before `Overloaded`.
    pub enqueue_timeout: Duration,
    /// Reservations neither settled nor released are dropped after this.
    pub reservation_ttl: chrono::Duration,
    /// Operator's platform fee on agency earnings, in percent.
    pub platform_fee_pct: Decimal,
    pub alert_backoff: Backoff,
    pub clock: Clock,
    /// The sled page cache, in bytes (sled counts serialized bytes; the
    /// resident memory it takes is several times this). More cache keeps more
    /// of the tree's working set (one leaf per active client and aggregate)
    /// in memory and speeds ingest; the default keeps a gateway small.
    /// Applies to on-disk ledgers (`path` set); a temporary one keeps sled's
    /// own default.
    pub cache_bytes: u64,
}

/// The default sled page cache: 4 MiB (see [`LedgerConfig::cache_bytes`]).
pub const DEFAULT_CACHE_BYTES: u64 = 4 << 20;

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            path: None,
            durability: Durability::Sync,
            currency: Currency::Usd,
            calendar: Calendar::default(),
            queue_capacity: 8192,
            max_batch: 2048,
            record_linger: Duration::ZERO,
            enqueue_timeout: Duration::from_secs(5),
            aggregate_checkpoint_every: Duration::from_millis(250),
            max_dirty_aggregates: 100_000,
            reservation_ttl: chrono::Duration::minutes(15),
            platform_fee_pct: Decimal::new(10, 0),
            alert_backoff: Backoff::default(),
            clock: Clock::system(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}
