//! The plugin contract as plain Rust data.
//!
//! This crate mirrors the WIT package `tollgate:plugin@0.1.0` (`wit/v0.1`)
//! with ordinary Rust types that carry exact `rust_decimal::Decimal` money.
//! Both sides of the boundary use it: the guest SDK converts its generated
//! bindings into these types, the host converts its own bindings into them,
//! and the offline tooling reads them from JSON fixtures. Keeping one
//! definition means the same validation rules and fixture semantics apply
//! whether a plugin runs natively in a unit test or as Wasm in the gateway.
#![forbid(unsafe_code)]

pub mod contract;
pub mod decimal;
pub mod fixture;
pub mod validate;

pub use contract::*;
pub use rust_decimal::Decimal;
