//! The admin side of Tollgate: roles and tokens, the admin REST API under
//! `/admin/v1`, the plugin lifecycle (upload, versions, bindings, hot swap,
//! rollback) and the audit log.
//!
//! - `model` — stored documents, request bodies and views.
//! - `service` — the domain operations ([`Admin`]) with tenant checks and
//!   typed errors; every change is one audited control-store write followed
//!   by an atomic swap of the data path's directory.
//! - `seed` — applying the config file's tenants at start.
//! - `http` — the thin axum handlers and the generated OpenAPI document.
//!
//! Persistence goes through the ledger crate's control store (only `ledger`
//! touches sled).

pub mod http;
pub mod model;
pub mod seed;
pub mod service;

pub use service::{Admin, AdminError, AdminSettings, Principal};
