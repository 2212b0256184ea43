//! The integration test binary: one module per area, all sharing `support`.
//!
//! Tests start real things: plugins compiled to Wasm by cargo (built once per
//! run into `target/plugins`), the `tollgate` binary as a subprocess, and
//! real servers on loopback ports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failing test reports by panicking"
)]

mod admin;
mod admin_fuzz;
mod admin_isolation;
mod config_and_reports;
mod gateway;
mod plugin_runtime;
mod plugin_tooling;
mod python_sdk;
mod support;
