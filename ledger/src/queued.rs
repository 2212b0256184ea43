//! A client's usage as `usage_so_far` reports it: the records handed to the
//! writer but not yet visible to readers, and the published usage held in
//! memory ([`crate::published`]), under one lock.
//!
//! A record reaches the aggregates readers see only after the writer has
//! applied it and the committer has committed and published its group. In
//! `batched` mode the gateway answers a request before that (once its record
//! is queued), so a client's next request could read usage that lacks the
//! previous one. [`LiveUsage`] closes that window: a record given to
//! `queue_record_async` is counted here from before it is queued until its
//! group is published (or it is refused), and [`crate::Ledger::usage_so_far`]
//! adds this count to the published usage.
//!
//! The committer's publish updates the published usage and takes the
//! group's records out of the queued count under this one lock, so a reader,
//! which reads both under it, sees each record exactly once: queued before
//! the publish, published after it. (A reader whose published usage misses
//! reads the aggregates outside the lock and keeps the result only if no
//! publish happened meanwhile; see [`crate::Ledger::usage_so_far`].)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use foldhash::HashMap;

use crate::model::{AggKey, Totals, UsageRecord, UsageSoFar};
use crate::period::{Calendar, Period};
use crate::published::{Generation, Published};

/// Queued and published usage by client and period, under one lock.
pub(crate) struct LiveUsage {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queued: Shares,
    published: Published,
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
    fn get(&self, client: &str, period: Period) -> Option<&UsageSoFar> {
        self.0.get(client)?.get(&period)
    }

    /// Adds the client's queued usage in `period` to `usage`.
    fn add_to(&self, usage: &mut UsageSoFar, client: &str, period: Period) {
        if let Some(queued) = self.get(client, period) {
            usage.add(queued);
        }
    }

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
    usage: Arc<LiveUsage>,
    tally: Option<Tally>,
}

impl QueuedShare {
    /// Counts `record` from now on.
    pub(crate) fn count(
        usage: &Arc<LiveUsage>,
        calendar: &Calendar,
        now: DateTime<Utc>,
        record: &UsageRecord,
    ) -> QueuedShare {
        Self::counting(usage, Tally::of(calendar, now, record))
    }

    fn counting(usage: &Arc<LiveUsage>, tally: Tally) -> QueuedShare {
        usage.lock().queued.add(&tally);
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
            self.usage.lock().queued.subtract(&one);
        }
    }
}

/// The counts of one group's records, taken out together: by the
/// committer's publish ([`LiveUsage::publish`]), or, if the group never gets
/// there, when this is dropped with it.
pub(crate) struct QueuedBatch {
    usage: Arc<LiveUsage>,
    shares: Shares,
}

impl QueuedBatch {
    pub(crate) fn new(usage: &Arc<LiveUsage>) -> QueuedBatch {
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
            self.usage.lock().queued.subtract(&self.shares);
        }
    }
}

impl LiveUsage {
    pub(crate) fn new() -> Self {
        LiveUsage {
            state: Mutex::new(State::default()),
        }
    }

    /// The client's usage in `period`, published and queued, from one look;
    /// on a miss of the published part, the generation to hand to
    /// [`LiveUsage::fill`] with the aggregates once read.
    pub(crate) fn read(&self, client: &str, period: Period) -> Result<UsageSoFar, Generation> {
        let state = self.lock();
        let mut usage = state.published.get(client, period)?.clone();
        state.queued.add_to(&mut usage, client, period);
        Ok(usage)
    }

    /// Keeps `published`, the aggregates read after a miss in generation
    /// `seen`, and returns the usage with the queued records added, from the
    /// same look; `None` if a publish came in between (read again).
    pub(crate) fn fill(
        &self,
        client: &str,
        period: Period,
        published: &UsageSoFar,
        seen: Generation,
    ) -> Option<UsageSoFar> {
        let mut state = self.lock();
        if !state.published.fill(client, period, published, seen) {
            return None;
        }
        let mut usage = published.clone();
        state.queued.add_to(&mut usage, client, period);
        Some(usage)
    }

    /// The client's queued usage in `period`.
    pub(crate) fn queued_of(&self, client: &str, period: Period) -> UsageSoFar {
        self.lock()
            .queued
            .get(client, period)
            .cloned()
            .unwrap_or_default()
    }

    /// A committed group becomes visible: its aggregate values go into the
    /// published usage and its records leave the queued count, in one step.
    pub(crate) fn publish<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a AggKey, &'a Totals)>,
        batch: &mut QueuedBatch,
    ) {
        let shares = std::mem::take(&mut batch.shares);
        let mut state = self.lock();
        state.published.publish(values);
        state.queued.subtract(&shares);
    }

    /// Records queued and not yet published, over all clients.
    #[cfg(test)]
    pub(crate) fn queued_len(&self) -> i64 {
        self.lock()
            .queued
            .0
            .values()
            .flat_map(BTreeMap::values)
            .map(|u| u.requests)
            .sum()
    }

    // The queued count is plain sums: one left half-updated by a panic
    // elsewhere is still the best figure there is. The published usage
    // could be stale, so it is emptied.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.published.clear();
            self.state.clear_poison();
            state
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use rust_decimal::Decimal;

    use super::*;

    /// A reader sees each record once, across its publish: the publish that
    /// makes a group's records visible takes them out of the queued count in
    /// the same step. One thread queues and publishes records one at a time
    /// while another reads; a record counted both queued and published would
    /// show one request too many, then drop back, so what the reader sees
    /// must never go down.
    #[test]
    fn a_reader_sees_each_record_once_across_its_publish() {
        const RECORDS: i64 = 20_000;
        let live = Arc::new(LiveUsage::new());
        let period: Period = "2025-01".parse().unwrap();
        let Err(seen) = live.read("c", period) else {
            panic!("nothing is held yet")
        };
        assert_eq!(
            live.fill("c", period, &UsageSoFar::default(), seen),
            Some(UsageSoFar::default())
        );
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (live, done) = (Arc::clone(&live), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::Acquire) {
                    let requests = live.read("c", period).unwrap().requests;
                    assert!(requests >= last, "{requests} after {last}: counted twice");
                    assert!(requests <= RECORDS);
                    last = requests;
                }
            })
        };
        for published in 1..=RECORDS {
            let tally = Tally {
                client: "c".into(),
                period,
                usage: UsageSoFar {
                    spend: Decimal::ONE,
                    requests: 1,
                    units: BTreeMap::new(),
                },
            };
            let mut batch = QueuedBatch::new(&live);
            batch.absorb(QueuedShare::counting(&live, tally));
            let totals = Totals {
                requests: published,
                total: Decimal::from(published),
                ..Totals::default()
            };
            let key = AggKey::Client {
                client: "c".into(),
                period,
            };
            live.publish([(&key, &totals)], &mut batch);
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap();
        let usage = live.read("c", period).unwrap();
        assert_eq!(
            (usage.requests, usage.spend),
            (RECORDS, Decimal::from(RECORDS))
        );
        assert_eq!(live.queued_len(), 0);
    }
}
