//! Shared helpers for the ledger's integration tests: record builders, dates,
//! and ledgers on a manual clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tollgate_ledger::{
    Calendar, Durability, Ledger, LedgerConfig, ManualClock, PluginRef, RecordFlags, Tokens,
    UsageRecord,
};

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A record with sane defaults; amounts are exact strings.
pub fn rec(key: &str, client: &str, cost: &str, surcharge: &str) -> UsageRecord {
    let cost = d(cost);
    let surcharge = d(surcharge);
    UsageRecord {
        idempotency_key: key.to_owned(),
        request_id: format!("req-{key}"),
        agency_id: "agency-1".into(),
        client_id: client.to_owned(),
        app_id: Some("app".into()),
        end_user_id: None,
        started_at: t("2025-01-10T10:00:00Z"),
        finished_at: t("2025-01-10T10:00:01Z"),
        requested_model: "gpt-4o".into(),
        requested_provider: None,
        routed_model: "gpt-4o".into(),
        routed_provider: "openai".into(),
        tokens: Tokens {
            input: 100,
            output: 50,
            cached: 10,
        },
        provider_cost: cost,
        price_version: "2025-01-01".into(),
        surcharge,
        total_charged: cost + surcharge,
        units: BTreeMap::new(),
        plugin: PluginRef {
            name: "pricing".into(),
            content_hash: "sha256:abc".into(),
            version: "1.0.0".into(),
        },
        flags: RecordFlags::default(),
        reservation_id: None,
    }
}

/// A temporary ledger whose clock starts at `now` (UTC calendar, 24 h grace).
pub fn ledger_at(now: &str) -> (Ledger, ManualClock) {
    let clock = ManualClock::new(t(now));
    let ledger = Ledger::open(LedgerConfig {
        clock: clock.clock(),
        calendar: Calendar {
            tz: chrono_tz::UTC,
            grace: chrono::Duration::hours(24),
        },
        durability: Durability::Batched {
            flush_every: std::time::Duration::from_millis(50),
        },
        ..LedgerConfig::default()
    })
    .unwrap();
    (ledger, clock)
}
