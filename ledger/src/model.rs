//! The ledger's data: usage records as the gateway submits them, records as
//! stored, running-aggregate keys and totals, credit buckets and entries, client
//! plans and spend alerts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::period::Period;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
}

/// Which plugin build priced the request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PluginRef {
    pub name: String,
    pub content_hash: String,
    pub version: String,
}

/// How trustworthy the numbers of a record are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordFlags {
    /// The stream ended early; counts cover what was delivered.
    pub partial: bool,
    /// Token counts were estimated (the provider reported none).
    pub estimated: bool,
    /// A plugin failed and the gateway let the request through (fail-open).
    pub fail_open: bool,
    /// The upstream request failed.
    pub failed: bool,
}

/// Handle of a spend reservation made before the upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReservationId(pub u64);

/// One request's usage as the gateway submits it. Immutable once recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Retries of the same write carry the same key and are recorded once.
    pub idempotency_key: String,
    pub request_id: String,
    pub agency_id: String,
    pub client_id: String,
    pub app_id: Option<String>,
    pub end_user_id: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Decides the billing period.
    pub finished_at: DateTime<Utc>,
    pub requested_model: String,
    pub requested_provider: Option<String>,
    pub routed_model: String,
    pub routed_provider: String,
    pub tokens: Tokens,
    /// What the upstream provider charges for this request.
    pub provider_cost: Decimal,
    /// The price list version `provider_cost` was computed from.
    pub price_version: String,
    /// The agency's margin.
    pub surcharge: Decimal,
    /// Charged to the client: `provider_cost + surcharge`, or zero for an
    /// absorbed record (see [`UsageRecord::is_absorbed`]).
    pub total_charged: Decimal,
    /// Business units metered by the plugin: unit name -> quantity.
    pub units: BTreeMap<String, Decimal>,
    pub plugin: PluginRef,
    pub flags: RecordFlags,
    /// The reservation this usage settles, if one was made.
    pub reservation_id: Option<ReservationId>,
}

impl UsageRecord {
    /// Provider cost the client is not charged for: `provider_cost + surcharge −
    /// total_charged`. Zero for normal records; the whole provider cost for an
    /// absorbed record (failed, nothing charged), negative for its reversal.
    pub fn absorbed_cost(&self) -> Decimal {
        self.provider_cost + self.surcharge - self.total_charged
    }

    /// The provider was paid but the client is billed nothing (an agency plugin
    /// failed under `fail-closed`): `flags.failed`, zero surcharge, zero
    /// `total_charged`, non-zero provider cost. The operator absorbs the cost.
    pub fn is_absorbed(&self) -> bool {
        !self.absorbed_cost().is_zero()
    }

    /// Provider cost the client is charged for (`provider_cost − absorbed_cost`).
    pub fn charged_provider_cost(&self) -> Decimal {
        self.provider_cost - self.absorbed_cost()
    }
}

/// Position of a stored record: its period and ledger-wide sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId {
    pub period: Period,
    pub seq: u64,
}

/// Whether a stored record is usage or the reversal of earlier usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordKind {
    Usage,
    /// Negates the amounts, tokens and units of `original` (a correction).
    Reversal {
        original: RecordId,
        reason: String,
    },
}

/// Credit drawn from (positive) or refunded to (negative) a bucket by a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditUse {
    pub bucket_id: String,
    pub amount: Decimal,
}

/// A usage record as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub id: RecordId,
    /// Booked after its own period closed, so it counts in `id.period` instead.
    pub late_adjustment: bool,
    pub recorded_at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: RecordKind,
    pub credits_applied: Vec<CreditUse>,
    pub record: UsageRecord,
}

impl StoredRecord {
    /// +1 for usage, −1 for a reversal: the weight of counts (requests, tokens).
    pub fn sign(&self) -> i64 {
        match self.kind {
            RecordKind::Usage => 1,
            RecordKind::Reversal { .. } => -1,
        }
    }

    pub fn credits_total(&self) -> Decimal {
        self.credits_applied.iter().map(|c| c.amount).sum()
    }
}

/// The result of `record`: new, or the record already stored under the same key.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    Recorded(Box<StoredRecord>),
    Duplicate(Box<StoredRecord>),
}

impl RecordOutcome {
    pub fn record(&self) -> &StoredRecord {
        match self {
            RecordOutcome::Recorded(r) | RecordOutcome::Duplicate(r) => r,
        }
    }

    pub fn is_duplicate(&self) -> bool {
        matches!(self, RecordOutcome::Duplicate(_))
    }
}

/// A running aggregate's identity. Every key is scoped to a period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "dim", rename_all = "snake_case")]
pub enum AggKey {
    Client {
        client: String,
        period: Period,
    },
    Agency {
        agency: String,
        period: Period,
    },
    AgencyClient {
        agency: String,
        period: Period,
        client: String,
    },
    ClientModel {
        client: String,
        period: Period,
        model: String,
    },
    ClientUnit {
        client: String,
        period: Period,
        unit: String,
    },
    Provider {
        period: Period,
        provider: String,
    },
    Model {
        period: Period,
        model: String,
    },
}

/// A range of aggregates that reports scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggScan {
    ClientModels { client: String, period: Period },
    ClientUnits { client: String, period: Period },
    AgencyClients { agency: String, period: Period },
    Providers { period: Period },
    Models { period: Period },
    All,
}

impl AggScan {
    /// Whether `key` lies in this scan's range.
    pub fn matches(&self, key: &AggKey) -> bool {
        match (self, key) {
            (AggScan::All, _) => true,
            (
                AggScan::ClientModels { client, period },
                AggKey::ClientModel {
                    client: c,
                    period: p,
                    ..
                },
            )
            | (
                AggScan::ClientUnits { client, period },
                AggKey::ClientUnit {
                    client: c,
                    period: p,
                    ..
                },
            ) => client == c && period == p,
            (
                AggScan::AgencyClients { agency, period },
                AggKey::AgencyClient {
                    agency: a,
                    period: p,
                    ..
                },
            ) => agency == a && period == p,
            (AggScan::Providers { period }, AggKey::Provider { period: p, .. })
            | (AggScan::Models { period }, AggKey::Model { period: p, .. }) => period == p,
            _ => false,
        }
    }
}

/// Running totals of one aggregate. Counts are signed because reversals subtract.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    /// Every record's provider cost, absorbed or not (what the provider is owed).
    pub provider_cost: Decimal,
    pub surcharge: Decimal,
    /// Charged to clients: `provider_cost − absorbed + surcharge`.
    pub total: Decimal,
    /// Provider cost of absorbed records (charged to nobody; the operator's loss).
    /// Part of `provider_cost`, not of `total`.
    #[serde(default)]
    pub absorbed: Decimal,
    /// Absorbed records among `requests` (signed, like `requests`).
    #[serde(default)]
    pub absorbed_requests: i64,
    /// Units metered (only in per-unit aggregates).
    pub quantity: Decimal,
    /// Credits drawn (only in per-client aggregates).
    pub credits_applied: Decimal,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_tokens += o.cached_tokens;
        self.provider_cost += o.provider_cost;
        self.surcharge += o.surcharge;
        self.total += o.total;
        self.absorbed += o.absorbed;
        self.absorbed_requests += o.absorbed_requests;
        self.quantity += o.quantity;
        self.credits_applied += o.credits_applied;
    }

    /// Provider cost charged to clients: `provider_cost − absorbed`.
    pub fn charged_provider_cost(&self) -> Decimal {
        self.provider_cost - self.absorbed
    }

    /// Equal as amounts (Decimal equality ignores scale, `1.0 == 1.00`).
    pub fn same_as(&self, o: &Totals) -> bool {
        self == o
    }
}

/// The aggregate deltas one stored record contributes. The writer and the
/// verifier both use this, so "re-aggregated from records" means exactly this.
pub fn contributions(r: &StoredRecord) -> Vec<(AggKey, Totals)> {
    let u = &r.record;
    let s = r.sign();
    let to_i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let base = Totals {
        requests: s,
        input_tokens: s * to_i(u.tokens.input),
        output_tokens: s * to_i(u.tokens.output),
        cached_tokens: s * to_i(u.tokens.cached),
        provider_cost: u.provider_cost,
        surcharge: u.surcharge,
        total: u.total_charged,
        absorbed: u.absorbed_cost(),
        absorbed_requests: if u.is_absorbed() { s } else { 0 },
        quantity: Decimal::ZERO,
        credits_applied: Decimal::ZERO,
    };
    let p = r.id.period;
    let mut out = Vec::with_capacity(6 + u.units.len());
    out.push((
        AggKey::Client {
            client: u.client_id.clone(),
            period: p,
        },
        Totals {
            credits_applied: r.credits_total(),
            ..base.clone()
        },
    ));
    out.push((
        AggKey::Agency {
            agency: u.agency_id.clone(),
            period: p,
        },
        base.clone(),
    ));
    out.push((
        AggKey::AgencyClient {
            agency: u.agency_id.clone(),
            period: p,
            client: u.client_id.clone(),
        },
        base.clone(),
    ));
    out.push((
        AggKey::ClientModel {
            client: u.client_id.clone(),
            period: p,
            model: u.routed_model.clone(),
        },
        base.clone(),
    ));
    out.push((
        AggKey::Provider {
            period: p,
            provider: u.routed_provider.clone(),
        },
        base.clone(),
    ));
    out.push((
        AggKey::Model {
            period: p,
            model: u.routed_model.clone(),
        },
        base.clone(),
    ));
    for (unit, q) in &u.units {
        out.push((
            AggKey::ClientUnit {
                client: u.client_id.clone(),
                period: p,
                unit: unit.clone(),
            },
            Totals {
                quantity: *q,
                ..base.clone()
            },
        ));
    }
    out
}

/// Prepaid clients must hold credit before usage; postpaid clients are invoiced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    Prepaid,
    #[default]
    Postpaid,
}

/// A client's commercial settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPlan {
    pub client_id: String,
    /// When set, usage recorded for this client must name this agency.
    pub agency_id: Option<String>,
    pub billing: Billing,
    /// Hard cap on spend per period; reservations beyond it are refused.
    pub monthly_cap: Option<Decimal>,
    /// Percentages of the cap that raise an alert, once each per period.
    pub alert_thresholds_pct: Vec<u32>,
    /// Included usage granted each period; unused remainder expires at close.
    pub included_per_period: Decimal,
}

impl ClientPlan {
    /// Postpaid, no cap, nothing included, alerts at 50/80/100 % once a cap is set.
    pub fn default_for(client_id: &str) -> ClientPlan {
        ClientPlan {
            client_id: client_id.to_owned(),
            agency_id: None,
            billing: Billing::Postpaid,
            monthly_cap: None,
            alert_thresholds_pct: vec![50, 80, 100],
            included_per_period: Decimal::ZERO,
        }
    }
}

/// What a credit bucket holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BucketKind {
    /// The included-usage grant of one period.
    Included { period: Period },
    /// A prepaid top-up.
    TopUp { idempotency_key: String },
}

/// A pot of credit. `balance` always equals the sum of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditBucket {
    pub id: String,
    pub client_id: String,
    pub kind: BucketKind,
    pub granted: Decimal,
    pub balance: Decimal,
    /// Entry sequence of the grant/top-up: "oldest first" ordering.
    pub created_seq: u64,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditEntryKind {
    Grant,
    TopUp,
    Consumption,
    Expiry,
    Reversal,
}

/// One movement of credit. Positive adds to the bucket's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    pub seq: u64,
    pub client_id: String,
    pub bucket_id: String,
    pub kind: CreditEntryKind,
    pub amount: Decimal,
    pub record: Option<RecordId>,
    pub at: DateTime<Utc>,
}

/// Result of a top-up: applied now, or already applied under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpOutcome {
    Applied(CreditBucket),
    Duplicate(CreditBucket),
}

/// Delivery state machine of an outbox alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Delivery {
    Pending {
        attempts: u32,
        next_attempt_at: DateTime<Utc>,
        last_error: Option<String>,
    },
    Delivered {
        attempts: u32,
        at: DateTime<Utc>,
    },
    /// Gave up after the maximum number of attempts.
    Dead {
        attempts: u32,
        last_error: Option<String>,
    },
}

/// A spend threshold crossing, written atomically with the record that crossed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub client_id: String,
    pub agency_id: String,
    pub period: Period,
    pub threshold_pct: u32,
    pub cap: Decimal,
    /// Spend in the period right after the crossing record.
    pub spend: Decimal,
    pub record: RecordId,
    pub created_at: DateTime<Utc>,
    pub delivery: Delivery,
}

/// Counters the store persists with every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    pub next_seq: u64,
    pub next_entry_seq: u64,
    pub next_alert_id: u64,
    /// Stored aggregates reflect every record with `seq` below this.
    #[serde(default)]
    pub aggregates_through_seq: u64,
    /// Earliest period holding a record not yet in the stored aggregates
    /// (where replay starts on open); `None` when they are complete.
    #[serde(default)]
    pub replay_from: Option<Period>,
}

/// Spend and usage of a client in a period, from the running aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageSoFar {
    pub spend: Decimal,
    pub requests: i64,
    pub units: BTreeMap<String, Decimal>,
}

impl UsageSoFar {
    /// Adds `other`'s spend, requests and units.
    pub(crate) fn add(&mut self, other: &UsageSoFar) {
        self.spend += other.spend;
        self.requests += other.requests;
        for (unit, quantity) in &other.units {
            *self.units.entry(unit.clone()).or_default() += quantity;
        }
    }

    /// Takes `other` out; a unit that reaches zero goes, so a read never
    /// shows a unit the records do not have.
    pub(crate) fn subtract(&mut self, other: &UsageSoFar) {
        self.spend -= other.spend;
        self.requests -= other.requests;
        for (unit, quantity) in &other.units {
            if let Some(total) = self.units.get_mut(unit) {
                *total -= quantity;
                if total.is_zero() {
                    self.units.remove(unit);
                }
            }
        }
    }
}

/// A page of records plus the cursor for the next page (`None` at the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Filter for record listings. Records come in sequence order within a period.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordQuery {
    pub period: Option<Period>,
    pub client: Option<String>,
    /// Only records of this agency's clients.
    pub agency: Option<String>,
    /// Matches the routed or the requested model.
    pub model: Option<String>,
    /// Records that metered this business unit.
    pub unit: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn totals_stored_before_absorbed_costs_existed_still_read() {
        let old = r#"{"requests":2,"input_tokens":1,"output_tokens":1,"cached_tokens":0,
            "provider_cost":"1.5","surcharge":"0.5","total":"2","quantity":"0",
            "credits_applied":"0"}"#;
        let t: Totals = serde_json::from_str(old).unwrap();
        assert_eq!(t.absorbed, Decimal::ZERO);
        assert_eq!(t.absorbed_requests, 0);
        assert_eq!(t.charged_provider_cost(), Decimal::new(15, 1));
    }
}
