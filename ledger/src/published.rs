//! The published usage of recently read clients, kept in memory.
//!
//! [`crate::Ledger::usage_so_far`] runs on every gateway request. Read from
//! the aggregates it costs one store lookup and one prefix scan, tens of
//! microseconds on a cold cache. [`Published`] keeps the answer per client
//! and period instead: filled on a miss from what readers see (the overlay,
//! else the store), and kept current by the committer, which hands it every
//! aggregate value it publishes, checkpoints included.
//!
//! It is derived state, never written to the store, and it lives under the
//! same lock as the queued records' count ([`crate::queued::LiveUsage`]), so
//! a publish moves a group's records from one to the other in one step.
//!
//! A fill must not store a value older than one already published: a miss
//! remembers the [`Generation`] it started in, every publish advances it, and
//! a fill whose generation has moved on is dropped. The committer publishes
//! under the overlay's write lock, so a reader that starts after a publish
//! also reads the overlay after it.
//!
//! There is no eviction by age: past [`MAX_ENTRIES`] client-periods the
//! cache is emptied and refills as clients are read.

use std::collections::BTreeMap;

use foldhash::HashMap;

use crate::model::{AggKey, Totals, UsageSoFar};
use crate::period::Period;

/// The most client-periods kept. A fill past it starts the cache afresh:
/// the next read of each client refills it, at the price of one store read.
const MAX_ENTRIES: usize = 65_536;

/// Usage as published, by client and period.
#[derive(Default)]
pub(crate) struct Published {
    generation: u64,
    entries: usize,
    clients: HashMap<String, BTreeMap<Period, UsageSoFar>>,
}

/// The publish count a miss saw, to hand back to [`Published::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

impl Published {
    /// The client's published usage in `period`, or on a miss the
    /// generation to fill it with once read.
    pub(crate) fn get(&self, client: &str, period: Period) -> Result<&UsageSoFar, Generation> {
        self.clients
            .get(client)
            .and_then(|periods| periods.get(&period))
            .ok_or(Generation(self.generation))
    }

    /// Keeps `usage`, read after `get` missed with `seen`, unless a publish
    /// has happened since (the value may then predate it); says which.
    pub(crate) fn fill(
        &mut self,
        client: &str,
        period: Period,
        usage: &UsageSoFar,
        seen: Generation,
    ) -> bool {
        if self.generation != seen.0 {
            return false;
        }
        if let Some(held) = self.held(client, period) {
            // Another reader missed and filled it first, in this generation.
            usage.clone_into(held);
            return true;
        }
        if self.entries >= MAX_ENTRIES {
            self.clear();
        }
        self.clients
            .entry(client.to_owned())
            .or_default()
            .insert(period, usage.clone());
        self.entries += 1;
        true
    }

    /// Takes the values of a published batch: the client totals and unit
    /// quantities of the client-periods held are replaced by them.
    pub(crate) fn publish<'a>(
        &mut self,
        values: impl IntoIterator<Item = (&'a AggKey, &'a Totals)>,
    ) {
        self.generation += 1;
        if self.entries == 0 {
            // Nothing held to update (no reader yet, as in bulk ingest).
            return;
        }
        for (key, totals) in values {
            match key {
                AggKey::Client { client, period } => {
                    if let Some(usage) = self.held(client, *period) {
                        usage.spend = totals.total;
                        usage.requests = totals.requests;
                    }
                }
                AggKey::ClientUnit {
                    client,
                    period,
                    unit,
                } => {
                    if let Some(usage) = self.held(client, *period) {
                        usage.units.insert(unit.clone(), totals.quantity);
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets everything, and any fill under way.
    pub(crate) fn clear(&mut self) {
        self.clients.clear();
        self.entries = 0;
        self.generation += 1;
    }

    /// Client-periods held, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    fn held(&mut self, client: &str, period: Period) -> Option<&mut UsageSoFar> {
        self.clients.get_mut(client)?.get_mut(&period)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rust_decimal::Decimal;

    use super::*;

    fn period() -> Period {
        "2025-01".parse().unwrap()
    }

    fn client_totals(requests: i64, total: i64) -> (AggKey, Totals) {
        (
            AggKey::Client {
                client: "c".into(),
                period: period(),
            },
            Totals {
                requests,
                total: Decimal::from(total),
                ..Totals::default()
            },
        )
    }

    fn unit_totals(unit: &str, quantity: i64) -> (AggKey, Totals) {
        (
            AggKey::ClientUnit {
                client: "c".into(),
                period: period(),
                unit: unit.into(),
            },
            Totals {
                quantity: Decimal::from(quantity),
                ..Totals::default()
            },
        )
    }

    fn usage(requests: i64, spend: i64, units: &[(&str, i64)]) -> UsageSoFar {
        UsageSoFar {
            requests,
            spend: Decimal::from(spend),
            units: units
                .iter()
                .map(|(u, q)| ((*u).to_owned(), Decimal::from(*q)))
                .collect(),
        }
    }

    #[test]
    fn a_fill_that_a_publish_overtook_is_dropped() {
        let mut cache = Published::default();
        let Err(seen) = cache.get("c", period()) else {
            panic!("an empty cache has nothing")
        };
        // The reader read (1 request) before this publish (2 requests)
        // reached the overlay: its value must not be kept.
        cache.publish([client_totals(2, 20)].iter().map(|(k, t)| (k, t)));
        assert!(!cache.fill("c", period(), &usage(1, 10, &[]), seen));
        assert!(cache.get("c", period()).is_err());
        assert_eq!(cache.len(), 0);

        let Err(seen) = cache.get("c", period()) else {
            panic!("still nothing held")
        };
        assert!(cache.fill("c", period(), &usage(2, 20, &[]), seen));
        assert_eq!(cache.get("c", period()), Ok(&usage(2, 20, &[])));
    }

    #[test]
    fn a_publish_replaces_held_totals_and_units_and_adds_nothing_else() {
        let mut cache = Published::default();
        let Err(seen) = cache.get("c", period()) else {
            panic!("an empty cache has nothing")
        };
        cache.fill("c", period(), &usage(1, 10, &[("doc", 1)]), seen);
        let values = [
            client_totals(3, 30),
            unit_totals("doc", 4),
            unit_totals("page", 2),
            (
                AggKey::Client {
                    client: "other".into(),
                    period: period(),
                },
                Totals::default(),
            ),
            (
                AggKey::Agency {
                    agency: "a".into(),
                    period: period(),
                },
                Totals::default(),
            ),
        ];
        cache.publish(values.iter().map(|(k, t)| (k, t)));
        assert_eq!(
            cache.get("c", period()),
            Ok(&usage(3, 30, &[("doc", 4), ("page", 2)]))
        );
        assert!(cache.get("other", period()).is_err());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_starts_afresh_past_its_bound() {
        let mut cache = Published::default();
        for i in 0..MAX_ENTRIES {
            let name = format!("c{i}");
            let Err(seen) = cache.get(&name, period()) else {
                panic!("{name} was never filled")
            };
            cache.fill(&name, period(), &usage(1, 1, &[]), seen);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let Err(seen) = cache.get("one-more", period()) else {
            panic!("never filled")
        };
        cache.fill("one-more", period(), &usage(1, 1, &[]), seen);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("c0", period()).is_err());
        assert!(cache.get("one-more", period()).is_ok());
    }
}
