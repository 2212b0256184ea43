//! Tollgate: an OpenAI-compatible inference gateway where each agency's
//! WebAssembly plugin routes, meters and prices its clients' requests.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod cli;
pub mod config;
pub mod demo;
pub mod demo_catalog;
pub mod gateway;
pub mod plugin;
pub mod server;
pub mod tokens;
pub mod upstream;
