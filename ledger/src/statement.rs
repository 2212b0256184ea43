//! Client statements, agency payouts, provider settlements and usage reports,
//! all built from running aggregates (never a record scan).
//!
//! Rounding rule: every money line is rounded once, to the currency's minor
//! units, half away from zero; a line's total is its rounded provider cost plus
//! its rounded surcharge; a document's total is the sum of its rounded lines.
//! The unrounded exact total is carried alongside, with the difference explicit.
//!
//! Absorbed records (failed after the provider answered; the client is charged
//! nothing) count in requests and in what providers are owed, never in what a
//! client is billed: statement and usage-report money columns are the
//! *charged* amounts, and the settlement shows the absorbed provider cost apart.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::Shared;
use crate::error::LedgerError;
use crate::model::{AggKey, AggScan, Totals};
use crate::money::Currency;
use crate::period::Period;

/// One model's usage on a statement or usage report. Money is rounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    /// Requests of this line that were recorded but not charged (absorbed:
    /// failed after the provider answered). Included in `requests`.
    pub unbilled_requests: i64,
    /// Provider cost charged to the client (absorbed provider cost excluded).
    pub provider_cost: Decimal,
    pub surcharge: Decimal,
    /// `provider_cost + surcharge` of this line: what the client is charged.
    pub total: Decimal,
}

impl StatementLine {
    fn new(model: String, t: &Totals, c: Currency) -> StatementLine {
        let provider_cost = c.round(t.charged_provider_cost());
        let surcharge = c.round(t.surcharge);
        StatementLine {
            model,
            requests: t.requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cached_tokens: t.cached_tokens,
            unbilled_requests: t.absorbed_requests,
            provider_cost,
            surcharge,
            total: provider_cost + surcharge,
        }
    }
}

/// One business unit on a statement. The money columns are those of the requests
/// that metered the unit; a request metering several units appears under each,
/// so unit lines are informational and are not summed into the total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLine {
    pub unit: String,
    pub quantity: Decimal,
    pub requests: i64,
    /// Provider cost charged to the client (absorbed provider cost excluded).
    pub provider_cost: Decimal,
    pub surcharge: Decimal,
    pub total: Decimal,
}

/// A client's bill for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub client_id: String,
    pub period: Period,
    pub currency: Currency,
    /// Per model; these lines make up the total.
    pub lines: Vec<StatementLine>,
    pub units: Vec<UnitLine>,
    pub requests: i64,
    /// Σ line unbilled requests (absorbed records; part of `requests`).
    pub unbilled_requests: i64,
    /// Σ line provider costs (charged provider cost; absorbed cost excluded).
    pub provider_cost: Decimal,
    /// Σ line surcharges.
    pub surcharge: Decimal,
    /// Σ line totals = `provider_cost + surcharge`: what the client is charged.
    pub total: Decimal,
    /// The same sum before any rounding.
    pub exact_total: Decimal,
    /// `total - exact_total`.
    pub rounding_difference: Decimal,
    /// Included usage and prepaid credit drawn, rounded; equals `total` when
    /// credit covered the whole exact amount.
    pub credits_applied: Decimal,
    pub exact_credits_applied: Decimal,
    /// `total - credits_applied`.
    pub amount_due: Decimal,
}

/// Per-client earnings on an agency payout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutLine {
    pub client_id: String,
    pub requests: i64,
    /// The surcharge subtotal of the client's statement for the period.
    pub surcharge: Decimal,
}

/// What the operator pays an agency for a closed period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub agency_id: String,
    pub period: Period,
    pub currency: Currency,
    pub lines: Vec<PayoutLine>,
    /// Σ line surcharges (before the platform fee).
    pub earnings: Decimal,
    pub exact_earnings: Decimal,
    pub platform_fee_pct: Decimal,
    /// `earnings × platform_fee_pct / 100`, rounded.
    pub platform_fee: Decimal,
    /// `earnings - platform_fee`.
    pub payout: Decimal,
}

/// What is owed to one upstream provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementLine {
    pub provider: String,
    pub requests: i64,
    /// Requests whose provider cost no client was charged (part of `requests`).
    pub absorbed_requests: i64,
    /// Owed to the provider: every record's provider cost, absorbed or not.
    pub provider_cost: Decimal,
    /// The part of `provider_cost` that no client was charged (rounded): the
    /// operator's loss. `provider_cost − absorbed` was charged to clients.
    pub absorbed: Decimal,
}

/// Provider costs for a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub period: Period,
    pub currency: Currency,
    pub lines: Vec<SettlementLine>,
    /// Σ line provider costs: owed to providers.
    pub total: Decimal,
    pub exact_total: Decimal,
    pub rounding_difference: Decimal,
    /// Σ line absorbed: provider cost the operator absorbs (charged to nobody).
    pub absorbed: Decimal,
    /// The same sum before rounding.
    pub exact_absorbed: Decimal,
}

/// Usage per model for a period (one client, or all clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub period: Period,
    pub currency: Currency,
    pub client_id: Option<String>,
    pub lines: Vec<StatementLine>,
    pub requests: i64,
    pub total: Decimal,
    pub exact_total: Decimal,
}

fn model_lines(
    store: &Shared,
    c: Currency,
    scan: &AggScan,
) -> Result<(Vec<StatementLine>, Totals), LedgerError> {
    let mut lines = Vec::new();
    let mut exact = Totals::default();
    for (k, t) in store.scan_aggregates(scan)? {
        let model = match k {
            AggKey::ClientModel { model, .. } | AggKey::Model { model, .. } => model,
            _ => continue,
        };
        exact.add(&t);
        lines.push(StatementLine::new(model, &t, c));
    }
    Ok((lines, exact))
}

pub(crate) fn statement(
    store: &Shared,
    c: Currency,
    client: &str,
    period: Period,
) -> Result<Statement, LedgerError> {
    let (lines, exact) = model_lines(
        store,
        c,
        &AggScan::ClientModels {
            client: client.to_owned(),
            period,
        },
    )?;
    let mut units = Vec::new();
    for (k, t) in store.scan_aggregates(&AggScan::ClientUnits {
        client: client.to_owned(),
        period,
    })? {
        if let AggKey::ClientUnit { unit, .. } = k {
            let provider_cost = c.round(t.charged_provider_cost());
            let surcharge = c.round(t.surcharge);
            units.push(UnitLine {
                unit,
                quantity: t.quantity,
                requests: t.requests,
                provider_cost,
                surcharge,
                total: provider_cost + surcharge,
            });
        }
    }
    let client_totals = store
        .aggregate(&AggKey::Client {
            client: client.to_owned(),
            period,
        })?
        .unwrap_or_default();
    let unbilled_requests: i64 = lines.iter().map(|l| l.unbilled_requests).sum();
    let provider_cost: Decimal = lines.iter().map(|l| l.provider_cost).sum();
    let surcharge: Decimal = lines.iter().map(|l| l.surcharge).sum();
    let total: Decimal = lines.iter().map(|l| l.total).sum();
    let exact_credits = client_totals.credits_applied;
    // Fully covered stays fully covered: the line rounding must not leave a cent
    // due (or owed back) on a statement that credit paid in full.
    let credits_applied = if exact_credits >= exact.total {
        total
    } else {
        c.round(exact_credits)
    };
    Ok(Statement {
        client_id: client.to_owned(),
        period,
        currency: c,
        requests: exact.requests,
        unbilled_requests,
        provider_cost,
        surcharge,
        total,
        exact_total: exact.total,
        rounding_difference: total - exact.total,
        credits_applied,
        exact_credits_applied: exact_credits,
        amount_due: total - credits_applied,
        lines,
        units,
    })
}

pub(crate) fn payout(
    store: &Shared,
    c: Currency,
    agency: &str,
    period: Period,
    fee_pct: Decimal,
) -> Result<Payout, LedgerError> {
    let mut lines = Vec::new();
    let mut exact_earnings = Decimal::ZERO;
    for (k, t) in store.scan_aggregates(&AggScan::AgencyClients {
        agency: agency.to_owned(),
        period,
    })? {
        let AggKey::AgencyClient { client, .. } = k else {
            continue;
        };
        exact_earnings += t.surcharge;
        // The same rounded lines as the client's statement, so what clients are
        // billed in surcharges is exactly what the agency earns.
        let (ml, _) = model_lines(
            store,
            c,
            &AggScan::ClientModels {
                client: client.clone(),
                period,
            },
        )?;
        lines.push(PayoutLine {
            client_id: client,
            requests: t.requests,
            surcharge: ml.iter().map(|l| l.surcharge).sum(),
        });
    }
    let earnings: Decimal = lines.iter().map(|l| l.surcharge).sum();
    let platform_fee = c.round(earnings * fee_pct / Decimal::ONE_HUNDRED);
    Ok(Payout {
        agency_id: agency.to_owned(),
        period,
        currency: c,
        lines,
        earnings,
        exact_earnings,
        platform_fee_pct: fee_pct,
        platform_fee,
        payout: earnings - platform_fee,
    })
}

pub(crate) fn settlement(
    store: &Shared,
    c: Currency,
    period: Period,
) -> Result<Settlement, LedgerError> {
    let mut lines = Vec::new();
    let mut exact_total = Decimal::ZERO;
    let mut exact_absorbed = Decimal::ZERO;
    for (k, t) in store.scan_aggregates(&AggScan::Providers { period })? {
        if let AggKey::Provider { provider, .. } = k {
            exact_total += t.provider_cost;
            exact_absorbed += t.absorbed;
            lines.push(SettlementLine {
                provider,
                requests: t.requests,
                absorbed_requests: t.absorbed_requests,
                provider_cost: c.round(t.provider_cost),
                absorbed: c.round(t.absorbed),
            });
        }
    }
    let total: Decimal = lines.iter().map(|l| l.provider_cost).sum();
    let absorbed: Decimal = lines.iter().map(|l| l.absorbed).sum();
    Ok(Settlement {
        period,
        currency: c,
        lines,
        total,
        exact_total,
        rounding_difference: total - exact_total,
        absorbed,
        exact_absorbed,
    })
}

pub(crate) fn usage_report(
    store: &Shared,
    c: Currency,
    period: Period,
    client: Option<&str>,
) -> Result<UsageReport, LedgerError> {
    let scan = match client {
        Some(cl) => AggScan::ClientModels {
            client: cl.to_owned(),
            period,
        },
        None => AggScan::Models { period },
    };
    let (lines, exact) = model_lines(store, c, &scan)?;
    Ok(UsageReport {
        period,
        currency: c,
        client_id: client.map(str::to_owned),
        requests: exact.requests,
        total: lines.iter().map(|l| l.total).sum(),
        exact_total: exact.total,
        lines,
    })
}
