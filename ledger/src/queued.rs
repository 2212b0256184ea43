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

use foldhash::{HashMap, HashMapExt};
use rust_decimal::Decimal;

use crate::model::{UsageRecord, UsageSoFar};
use crate::period::{Calendar, Period};

/// Queued usage by client and period.
pub(crate) struct QueuedUsage {
    pending: Mutex<HashMap<String, BTreeMap<Period, Pending>>>,
}

/// What one client's queued records add up to in one period.
#[derive(Debug, Default)]
struct Pending {
    records: i64,
    spend: Decimal,
    units: BTreeMap<String, Decimal>,
}

/// One record's share of the tally. Made from the record wherever it is
/// needed (when it is queued, when its group is published), and the same
/// record always makes the same tally.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tally {
    client: String,
    period: Period,
    spend: Decimal,
    units: Vec<(String, Decimal)>,
}

impl Tally {
    /// `record`'s tally. It is counted in the period it finished in: a
    /// record for a period already closed is booked into a later one when
    /// applied, and until then it is not counted in that later period.
    pub(crate) fn of(calendar: &Calendar, record: &UsageRecord) -> Tally {
        Tally {
            client: record.client_id.clone(),
            period: calendar.period_of(record.finished_at),
            spend: record.total_charged,
            units: record
                .units
                .iter()
                .map(|(unit, quantity)| (unit.clone(), *quantity))
                .collect(),
        }
    }
}

impl QueuedUsage {
    pub(crate) fn new() -> Self {
        QueuedUsage {
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a record until [`QueuedUsage::remove`] is called with its tally.
    pub(crate) fn add(&self, tally: &Tally) {
        let mut pending = self.lock();
        let entry = match pending.get_mut(&tally.client) {
            Some(periods) => periods.entry(tally.period).or_default(),
            None => pending
                .entry(tally.client.clone())
                .or_default()
                .entry(tally.period)
                .or_default(),
        };
        entry.records += 1;
        entry.spend += tally.spend;
        for (unit, quantity) in &tally.units {
            *entry.units.entry(unit.clone()).or_default() += quantity;
        }
    }

    /// Stops counting a record given to [`QueuedUsage::add`]: its group is
    /// published, or it was refused or never queued.
    pub(crate) fn remove(&self, tally: &Tally) {
        let mut pending = self.lock();
        let Some(periods) = pending.get_mut(&tally.client) else {
            return;
        };
        let Some(entry) = periods.get_mut(&tally.period) else {
            return;
        };
        entry.records -= 1;
        if entry.records <= 0 {
            periods.remove(&tally.period);
            if periods.is_empty() {
                pending.remove(&tally.client);
            }
            return;
        }
        entry.spend -= tally.spend;
        for (unit, quantity) in &tally.units {
            if let Some(total) = entry.units.get_mut(unit) {
                *total -= quantity;
            }
        }
    }

    /// The client's queued usage in `period`.
    pub(crate) fn of(&self, client: &str, period: Period) -> UsageSoFar {
        let pending = self.lock();
        let Some(entry) = pending.get(client).and_then(|periods| periods.get(&period)) else {
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
            .values()
            .flat_map(BTreeMap::values)
            .map(|p| p.records)
            .sum()
    }

    // Plain sums: one left half-updated by a panic elsewhere is still the
    // best figure there is, so a poisoned lock is not an error here.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, BTreeMap<Period, Pending>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
