//! Tollgate's usage ledger: one immutable record per request, written in a group
//! commit together with its idempotency key, running aggregates, credit movements
//! and spend alerts; plus spend caps with reservations, prepaid and included
//! credit, statements, agency payouts, provider settlement and report rendering.
//!
//! Only this crate touches the database. Storage sits behind [`LedgerStore`]; the
//! embedded default is sled ([`SledStore`]). See `LEDGER.md` for the design and
//! the crash guarantees of each [`Durability`] mode.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod config;
pub mod control;
mod engine;
pub mod error;
mod ledger;
pub mod model;
pub mod money;
pub mod period;
mod published;
mod queued;
pub mod report;
pub mod sled_store;
pub mod statement;
pub mod store;
pub mod verify;

pub use alerts::{AlertPayload, Backoff, SignedHeaders, sign_payload, verify_signature};
pub use config::{Clock, DEFAULT_CACHE_BYTES, Durability, LedgerConfig, ManualClock};
pub use control::{
    AuditEntry, AuditQuery, ControlChange, ControlError, ControlStore, Document, DocumentWrite,
    MemoryControlStore, SledControlStore,
};
pub use engine::Reservation;
pub use error::{LedgerError, StoreError};
pub use ledger::{Balance, Ledger, QueuedRecord};
pub use model::*;
pub use money::Currency;
pub use period::{Calendar, Period};
pub use report::{Format, Report, render};
pub use sled_store::SledStore;
pub use statement::{
    Payout, PayoutLine, Settlement, SettlementLine, Statement, StatementLine, UnitLine, UsageReport,
};
pub use store::{AggregateWrite, CommitGroup, LedgerStore};
pub use verify::VerifyReport;
