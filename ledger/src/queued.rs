//! Usage of records handed to the writer but not yet visible to readers.
//!
//! A record reaches the aggregates readers see only after the writer has
//! applied it and the committer has committed and published its group. In
//! `batched` mode the gateway answers a request before that (once its record
//! is queued), so a client's next request could read usage that lacks the
//! previous one. [`QueuedUsage`] closes that window: a record is counted here
//! from before it is queued until after its group is published (or it is
//! refused), and [`crate::Ledger::usage_so_far`] adds this to the published
//! aggregates.
//!
//! A reader takes this tally first and the aggregates second. A record leaves
//! the tally only after its group is published, so a reader never misses it;
//! a read that straddles the publish counts it twice for that instant (the
//! safe side for a limit).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::HashMap;
use rust_decimal::Decimal;

use crate::model::{UsageRecord, UsageSoFar};
use crate::period::{Calendar, Period};

/// Queued usage by client and period.
pub(crate) struct QueuedUsage {
    pending: Mutex<Shares>,
}

/// Records' usage summed by client and period: what is queued, or what one
/// batch takes out of it.
#[derive(Debug, Default)]
pub(crate) struct Shares(HashMap<String, BTreeMap<Period, Pending>>);

/// What some records of one client add up to in one period.
#[derive(Debug, Default, Clone, PartialEq)]
struct Pending {
    records: i64,
    spend: Decimal,
    units: BTreeMap<String, Decimal>,
}

impl Pending {
    fn add(&mut self, other: &Pending) {
        self.records += other.records;
        self.spend += other.spend;
        for (unit, quantity) in &other.units {
            *self.units.entry(unit.clone()).or_default() += quantity;
        }
    }

    fn subtract(&mut self, other: &Pending) {
        self.records -= other.records;
        self.spend -= other.spend;
        for (unit, quantity) in &other.units {
            if let Some(total) = self.units.get_mut(unit) {
                *total -= quantity;
            }
        }
    }
}

impl Shares {
    /// Adds `record`, counted in the period it finished in: a record for a
    /// period already closed is booked into a later one when applied, and
    /// until then it is not counted in that later period.
    pub(crate) fn add(&mut self, calendar: &Calendar, record: &UsageRecord) {
        let period = calendar.period_of(record.finished_at);
        let entry = match self.0.get_mut(&record.client_id) {
            Some(periods) => periods.entry(period).or_default(),
            None => self
                .0
                .entry(record.client_id.clone())
                .or_default()
                .entry(period)
                .or_default(),
        };
        entry.records += 1;
        entry.spend += record.total_charged;
        for (unit, quantity) in &record.units {
            *entry.units.entry(unit.clone()).or_default() += quantity;
        }
    }

    /// The shares of one record.
    pub(crate) fn of(calendar: &Calendar, record: &UsageRecord) -> Shares {
        let mut shares = Shares::default();
        shares.add(calendar, record);
        shares
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl QueuedUsage {
    pub(crate) fn new() -> Self {
        QueuedUsage {
            pending: Mutex::new(Shares::default()),
        }
    }

    /// Counts records until [`QueuedUsage::remove`] is called with the same
    /// shares.
    pub(crate) fn add(&self, shares: &Shares) {
        let mut pending = self.lock();
        for (client, periods) in &shares.0 {
            let mine = match pending.0.get_mut(client) {
                Some(mine) => mine,
                None => pending.0.entry(client.clone()).or_default(),
            };
            for (period, share) in periods {
                mine.entry(*period).or_default().add(share);
            }
        }
    }

    /// Stops counting records given to [`QueuedUsage::add`]: their group is
    /// published, or they were refused or never queued.
    pub(crate) fn remove(&self, shares: &Shares) {
        if shares.is_empty() {
            return;
        }
        let mut pending = self.lock();
        for (client, periods) in &shares.0 {
            let Some(mine) = pending.0.get_mut(client) else {
                continue;
            };
            for (period, share) in periods {
                if let Some(entry) = mine.get_mut(period) {
                    entry.subtract(share);
                    if entry.records <= 0 {
                        mine.remove(period);
                    }
                }
            }
            if mine.is_empty() {
                pending.0.remove(client);
            }
        }
    }

    /// The client's queued usage in `period`.
    pub(crate) fn of(&self, client: &str, period: Period) -> UsageSoFar {
        let pending = self.lock();
        let Some(entry) = pending
            .0
            .get(client)
            .and_then(|periods| periods.get(&period))
        else {
            return UsageSoFar::default();
        };
        UsageSoFar {
            spend: entry.spend,
            requests: entry.records,
            units: entry.units.clone(),
        }
    }

    /// Records queued and not yet published, over all clients.
    #[cfg(test)]
    pub(crate) fn len(&self) -> i64 {
        self.lock()
            .0
            .values()
            .flat_map(BTreeMap::values)
            .map(|p| p.records)
            .sum()
    }

    // Plain sums: one left half-updated by a panic elsewhere is still the
    // best figure there is, so a poisoned lock is not an error here.
    fn lock(&self) -> MutexGuard<'_, Shares> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
