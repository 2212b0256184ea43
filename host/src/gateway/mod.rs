//! The OpenAI-compatible HTTP API for client apps, plus health, readiness
//! and metrics.
//!
//! Handlers are thin: they parse and validate the request, call
//! [`pipeline`] and turn typed errors into OpenAI-shaped responses at the
//! edge ([`error`]).

pub mod catalog;
pub mod error;
mod handlers;
pub mod metrics;
pub mod pipeline;
pub mod sse;
pub mod tenancy;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tollgate_ledger::Ledger;

use crate::plugin::PluginRuntime;
use crate::upstream::Upstreams;
use catalog::Catalog;
use metrics::GatewayMetrics;
use tenancy::Directory;

/// Everything a request needs, shared by all handlers.
pub struct AppState {
    /// Keys, clients and bindings, swapped atomically on change (by the
    /// admin service).
    pub directory: Arc<ArcSwap<Directory>>,
    /// The admin service.
    pub admin: crate::admin::Admin,
    /// Priced models.
    pub catalog: Catalog,
    /// Upstream providers.
    pub upstreams: Upstreams,
    /// The plugin runtime.
    pub runtime: PluginRuntime,
    /// The usage ledger.
    pub ledger: Ledger,
    /// Gateway metrics.
    pub metrics: GatewayMetrics,
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Background tasks (alert delivery) stopped with the server.
    pub background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Request tasks that must finish (and record) before shutdown ends.
    pub requests: tokio_util::task::TaskTracker,
}

/// The whole HTTP surface: the data path, the admin API and its OpenAPI
/// document.
pub fn router(state: Arc<AppState>) -> Router {
    let (admin, openapi) = crate::admin::http::router();
    let openapi: Arc<str> = openapi
        .to_pretty_json()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            "{}".into()
        })
        .into();
    Router::new()
        .merge(admin)
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::models))
        .route("/v1/usage", get(handlers::usage))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // Bodies are read with our own cap so the 413 is OpenAI-shaped.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
