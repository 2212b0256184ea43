//! Consistency check ("fsck"): recomputes running aggregates, credit balances,
//! idempotency claims and each client's record listing from the immutable
//! records and entries, and reports every difference from the stored state.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::LedgerError;
use crate::model::{
    AggKey, AggScan, CreditEntryKind, RecordId, RecordQuery, Totals, contributions,
};
use crate::store::LedgerStore;

/// Outcome of [`crate::Ledger::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub records: u64,
    pub aggregates: u64,
    pub buckets: u64,
    pub credit_entries: u64,
    /// Human-readable description of every inconsistency; empty when consistent.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(crate) fn verify(store: &dyn LedgerStore) -> Result<VerifyReport, LedgerError> {
    let mut rep = VerifyReport::default();
    let mut recomputed: HashMap<AggKey, Totals> = HashMap::new();
    let mut keys = HashSet::new();
    let mut credits_by_records = Decimal::ZERO;
    let mut problems = Vec::new();
    let mut by_client: BTreeMap<String, Vec<RecordId>> = BTreeMap::new();
    store.for_each_record(None, &mut |r| {
        rep.records += 1;
        by_client
            .entry(r.record.client_id.clone())
            .or_default()
            .push(r.id);
        if !keys.insert(r.record.idempotency_key.clone()) {
            problems.push(format!(
                "idempotency key {:?} is used by more than one record",
                r.record.idempotency_key
            ));
        }
        match store.find_idempotency_key(&r.record.idempotency_key)? {
            Some(id) if id == r.id => {}
            other => problems.push(format!(
                "record {:?}: its idempotency key points at {other:?}",
                r.id
            )),
        }
        credits_by_records += r.credits_total();
        for (k, d) in contributions(&r) {
            recomputed.entry(k).or_default().add(&d);
        }
        Ok(())
    })?;
    let claimed = store.idempotency_key_count()?;
    if claimed != rep.records {
        problems.push(format!(
            "{claimed} idempotency keys claimed for {} records",
            rep.records
        ));
    }
    for (client, want) in &by_client {
        let listed = client_listing(store, client)?;
        if &listed != want {
            let at = listed.iter().zip(want).take_while(|(a, b)| a == b).count();
            problems.push(format!(
                "client {client:?}: its record listing has {} records, the records say {} \
                 (first difference at position {at})",
                listed.len(),
                want.len()
            ));
        }
    }
    let stored: HashMap<AggKey, Totals> =
        store.scan_aggregates(&AggScan::All)?.into_iter().collect();
    rep.aggregates = stored.len() as u64;
    let zero = Totals::default();
    for (k, want) in &recomputed {
        let got = stored.get(k).unwrap_or(&zero);
        if got != want {
            problems.push(format!(
                "aggregate {k:?}: stored {got:?}, recomputed {want:?}"
            ));
        }
    }
    for (k, got) in &stored {
        if !recomputed.contains_key(k) && got != &zero {
            problems.push(format!("aggregate {k:?} has no records behind it: {got:?}"));
        }
    }

    let entries = store.credit_entries(None)?;
    rep.credit_entries = entries.len() as u64;
    let mut sums: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut drawn = Decimal::ZERO;
    for e in &entries {
        *sums
            .entry((e.client_id.clone(), e.bucket_id.clone()))
            .or_default() += e.amount;
        if matches!(
            e.kind,
            CreditEntryKind::Consumption | CreditEntryKind::Reversal
        ) {
            drawn -= e.amount;
        }
    }
    if drawn != credits_by_records {
        problems.push(format!(
            "records say {credits_by_records} credit was drawn, entries say {drawn}"
        ));
    }
    let buckets = store.all_buckets()?;
    rep.buckets = buckets.len() as u64;
    for b in &buckets {
        let sum = sums
            .remove(&(b.client_id.clone(), b.id.clone()))
            .unwrap_or_default();
        if sum != b.balance {
            problems.push(format!(
                "bucket {}/{}: balance {} but entries sum to {sum}",
                b.client_id, b.id, b.balance
            ));
        }
        if b.balance < Decimal::ZERO {
            problems.push(format!("bucket {}/{} is negative", b.client_id, b.id));
        }
    }
    for ((client, bucket), sum) in sums {
        problems.push(format!(
            "entries for unknown bucket {client}/{bucket} (sum {sum})"
        ));
    }
    rep.problems = problems;
    Ok(rep)
}

/// Every record id a client listing returns, page by page.
fn client_listing(store: &dyn LedgerStore, client: &str) -> Result<Vec<RecordId>, LedgerError> {
    let mut q = RecordQuery {
        client: Some(client.to_owned()),
        limit: 1000,
        ..RecordQuery::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = store.query_records(&q)?;
        ids.extend(page.items.iter().map(|r| r.id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return Ok(ids),
        }
    }
}
