//! Usage of records handed to the writer but not yet visible to readers.
//!
//! A record reaches the aggregates readers see only after the writer has
//! applied it and the committer has committed and published its group. In
//! `batched` mode the gateway answers a request before that (once its record
//! is queued), so a client's next request could read usage that lacks the
//! previous one. [`QueuedUsage`] closes that window: a record given to
//! `queue_record_async` is counted here from before it is queued until after
//! its group is published (or it is refused), and
//! [`crate::Ledger::usage_so_far`] adds this to the published aggregates.
//!
//! A reader takes this tally first and the aggregates second. A record leaves
//! the tally only after its group is published, so a reader never misses it;
//! a read that straddles the publish counts it twice for that instant (the
//! safe side for a limit).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use foldhash::HashMap;

use crate::model::{UsageRecord, UsageSoFar};
use crate::period::{Calendar, Period};

/// Queued usage by client and period.
pub(crate) struct QueuedUsage {
    pending: Mutex<Shares>,
}

/// Records' usage summed by client and period.
#[derive(Debug, Default)]
struct Shares(HashMap<String, BTreeMap<Period, UsageSoFar>>);

/// One record's usage, in the period it will be booked into.
#[derive(Debug)]
struct Tally {
    client: String,
    period: Period,
    usage: UsageSoFar,
}

impl Shares {
    fn add(&mut self, tally: &Tally) {
        // The client's name is copied only the first time it is seen.
        let entry = match self.0.get_mut(&tally.client) {
            Some(periods) => periods.entry(tally.period).or_default(),
            None => self
                .0
                .entry(tally.client.clone())
                .or_default()
                .entry(tally.period)
                .or_default(),
        };
        entry.add(&tally.usage);
    }

    /// Takes `other` out; an entry left with no records goes.
    fn subtract(&mut self, other: &Shares) {
        for (client, periods) in &other.0 {
            let Some(mine) = self.0.get_mut(client) else {
                continue;
            };
            for (period, share) in periods {
                if let Some(entry) = mine.get_mut(period) {
                    entry.subtract(share);
                    if entry.requests <= 0 {
                        mine.remove(period);
                    }
                }
            }
            if mine.is_empty() {
                self.0.remove(client);
            }
        }
    }
}

impl Tally {
    /// `record`'s usage, counted in the period it will be booked into
    /// (`Calendar::assign` at `now`, as the writer will): its own, or for a
    /// record from a month already closed the first open one after it.
    fn of(calendar: &Calendar, now: DateTime<Utc>, record: &UsageRecord) -> Tally {
        Tally {
            client: record.client_id.clone(),
            period: calendar.assign(record.finished_at, now).0,
            usage: UsageSoFar {
                spend: record.total_charged,
                requests: 1,
                units: record.units.clone(),
            },
        }
    }
}

/// One record counted in the queued usage. It travels inside the record's
/// job, so whoever holds the job holds the count: dropped anywhere (a failed
/// or abandoned enqueue, a queue dropped at shutdown) it takes the record
/// out again, and the writer moves it into the [`QueuedBatch`] of the
/// record's group.
pub(crate) struct QueuedShare {
    usage: Arc<QueuedUsage>,
    tally: Option<Tally>,
}

impl QueuedShare {
    /// Counts `record` from now on.
    pub(crate) fn count(
        usage: &Arc<QueuedUsage>,
        calendar: &Calendar,
        now: DateTime<Utc>,
        record: &UsageRecord,
    ) -> QueuedShare {
        let tally = Tally::of(calendar, now, record);
        usage.lock().add(&tally);
        QueuedShare {
            usage: Arc::clone(usage),
            tally: Some(tally),
        }
    }
}

impl Drop for QueuedShare {
    fn drop(&mut self) {
        if let Some(tally) = self.tally.take() {
            let mut one = Shares::default();
            one.add(&tally);
            self.usage.lock().subtract(&one);
        }
    }
}

/// The counts of one group's records, taken out together, under one lock,
/// when this is dropped: by the committer once the group is published, or
/// by whatever unwinds if the group never gets there.
pub(crate) struct QueuedBatch {
    usage: Arc<QueuedUsage>,
    shares: Shares,
}

impl QueuedBatch {
    pub(crate) fn new(usage: &Arc<QueuedUsage>) -> QueuedBatch {
        QueuedBatch {
            usage: Arc::clone(usage),
            shares: Shares::default(),
        }
    }

    /// Takes over a record's count.
    pub(crate) fn absorb(&mut self, mut share: QueuedShare) {
        if let Some(tally) = share.tally.take() {
            self.shares.add(&tally);
        }
    }
}

impl Drop for QueuedBatch {
    fn drop(&mut self) {
        if !self.shares.0.is_empty() {
            self.usage.lock().subtract(&self.shares);
        }
    }
}

impl QueuedUsage {
    pub(crate) fn new() -> Self {
        QueuedUsage {
            pending: Mutex::new(Shares::default()),
        }
    }

    /// The client's queued usage in `period`.
    pub(crate) fn of(&self, client: &str, period: Period) -> UsageSoFar {
        self.lock()
            .0
            .get(client)
            .and_then(|periods| periods.get(&period))
            .cloned()
            .unwrap_or_default()
    }

    /// Records queued and not yet published, over all clients.
    #[cfg(test)]
    pub(crate) fn len(&self) -> i64 {
        self.lock()
            .0
            .values()
            .flat_map(BTreeMap::values)
            .map(|u| u.requests)
            .sum()
    }

    // Plain sums: one left half-updated by a panic elsewhere is still the
    // best figure there is, so a poisoned lock is not an error here.
    fn lock(&self) -> MutexGuard<'_, Shares> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
