//! The ledger's typed errors: what callers (the gateway, admin tools) match on.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::period::Period;

/// Errors from a storage backend. Backend-neutral apart from the sled variant.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage backend: {0}")]
    Backend(String),
}

/// Everything the ledger API can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("invalid usage record: {0}")]
    InvalidRecord(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    #[error("invalid period {0:?} (expected YYYY-MM)")]
    InvalidPeriod(String),
    /// The write queue stayed full for the configured timeout. Nothing was written;
    /// the caller may retry with the same idempotency key.
    #[error("ledger overloaded: write queue stayed full for {waited_ms} ms")]
    Overloaded { waited_ms: u64 },
    /// A reservation would take the client past its monthly hard cap (gateway: 402/429).
    #[error(
        "spend cap exceeded for client {client_id}: cap {cap}, spent {spent}, reserved {outstanding}, requested {requested}"
    )]
    CapExceeded {
        client_id: String,
        cap: Decimal,
        spent: Decimal,
        outstanding: Decimal,
        requested: Decimal,
    },
    /// A prepaid client's credit cannot cover the reservation (gateway: 402).
    #[error(
        "insufficient prepaid balance for client {client_id}: available {available}, requested {requested}"
    )]
    InsufficientBalance {
        client_id: String,
        available: Decimal,
        requested: Decimal,
    },
    #[error("unknown or already settled reservation {0}")]
    UnknownReservation(u64),
    /// Payouts are made only from closed periods.
    #[error("period {period} is still open; it closes at {closes_at}")]
    PeriodOpen {
        period: Period,
        closes_at: DateTime<Utc>,
    },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the ledger is shut down")]
    Closed,
    /// A storage failure left in-memory state possibly ahead of the store; the
    /// ledger refuses further writes until it is reopened (which reloads from disk).
    #[error("the ledger writer failed and refuses writes until reopened: {0}")]
    Poisoned(String),
    #[error("report rendering: {0}")]
    Render(String),
}
