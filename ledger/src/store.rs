//! The storage boundary. The engine decides everything (sequence numbers,
//! idempotency, aggregates, credit movements, alerts) and hands the store one
//! [`CommitGroup`] per group commit, which the store must apply atomically.
//! A SQL backend maps a group to one transaction; see LEDGER.md.

use crate::error::StoreError;
use crate::model::{
    AggKey, AggScan, Alert, ClientPlan, CreditBucket, CreditEntry, Meta, Page, RecordId,
    RecordQuery, StoredRecord, Totals,
};
use crate::period::Period;

/// A running aggregate at a checkpoint: `delta` is what changed since the previous
/// checkpoint, `value` the new total. Sled writes `value` (the writer owns the
/// totals); SQL applies `x = x + delta`, which stays correct with several writers.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateWrite {
    pub key: AggKey,
    pub delta: Totals,
    pub value: Totals,
}

/// Everything one group commit changes. All or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitGroup {
    /// New records; each also claims its idempotency key (the engine has checked
    /// the key is free; a SQL backend still inserts with `ON CONFLICT DO NOTHING`
    /// and fails the group if a key was taken meanwhile).
    pub records: Vec<StoredRecord>,
    /// Aggregates flushed by this group (a checkpoint); empty in most groups,
    /// see `meta.aggregates_through_seq` and LEDGER.md.
    pub aggregates: Vec<AggregateWrite>,
    pub credit_entries: Vec<CreditEntry>,
    /// Buckets created or whose balance changed (upsert).
    pub buckets: Vec<CreditBucket>,
    /// Top-up idempotency keys claimed: (key, bucket id).
    pub topup_keys: Vec<(String, String)>,
    pub plans: Vec<ClientPlan>,
    /// Alerts created or whose delivery state changed (upsert).
    pub alerts: Vec<Alert>,
    /// (client, period, threshold %) marked as alerted.
    pub alert_markers: Vec<(String, Period, u32)>,
    pub meta: Meta,
}

impl CommitGroup {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.aggregates.is_empty()
            && self.credit_entries.is_empty()
            && self.buckets.is_empty()
            && self.topup_keys.is_empty()
            && self.plans.is_empty()
            && self.alerts.is_empty()
            && self.alert_markers.is_empty()
    }
}

/// A durable home for the ledger. Reads may run concurrently with the writer;
/// they must observe each commit entirely or not at all.
pub trait LedgerStore: Send + Sync + 'static {
    fn load_meta(&self) -> Result<Meta, StoreError>;
    /// Applies the group atomically; visible to reads once this returns.
    fn commit(&self, group: &CommitGroup) -> Result<(), StoreError>;
    /// Durability barrier: every commit so far survives a crash once this returns.
    fn sync(&self) -> Result<(), StoreError>;

    fn find_idempotency_key(&self, key: &str) -> Result<Option<RecordId>, StoreError>;
    fn idempotency_key_count(&self) -> Result<u64, StoreError>;
    fn get_record(&self, id: RecordId) -> Result<Option<StoredRecord>, StoreError>;
    fn query_records(&self, q: &RecordQuery) -> Result<Page<StoredRecord>, StoreError>;
    /// Visits every record of `from` and later periods (all when `None`), in
    /// (period, seq) order: verification and aggregate replay.
    fn for_each_record(
        &self,
        from: Option<Period>,
        f: &mut dyn FnMut(StoredRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    fn get_aggregate(&self, key: &AggKey) -> Result<Option<Totals>, StoreError>;
    fn scan_aggregates(&self, scan: &AggScan) -> Result<Vec<(AggKey, Totals)>, StoreError>;

    fn get_plan(&self, client: &str) -> Result<Option<ClientPlan>, StoreError>;
    fn buckets(&self, client: &str) -> Result<Vec<CreditBucket>, StoreError>;
    fn all_buckets(&self) -> Result<Vec<CreditBucket>, StoreError>;
    fn find_topup_key(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn credit_entries(&self, client: Option<&str>) -> Result<Vec<CreditEntry>, StoreError>;

    fn alerted_thresholds(&self, client: &str, period: Period) -> Result<Vec<u32>, StoreError>;
    fn get_alert(&self, id: u64) -> Result<Option<Alert>, StoreError>;
    fn alerts(&self) -> Result<Vec<Alert>, StoreError>;
}
