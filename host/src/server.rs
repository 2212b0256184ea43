//! Assembling and running the gateway: from a validated [`Config`] to a
//! listening server, with graceful shutdown.
//!
//! Start-up checks everything a request would otherwise discover late: each
//! plugin loads and accepts its configuration (through the plugin's own
//! validation export), the ledger opens, the currency and timezone exist.

use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tollgate_ledger::{Calendar, Currency, Ledger, LedgerConfig};

use crate::admin::{Admin, AdminSettings, seed};
use crate::config::{Config, ConfigError, Durability};
use crate::gateway::catalog::Catalog;
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::tenancy::Directory;
use crate::gateway::{self, AppState};
use crate::plugin::{PluginMetrics, PluginRuntime, RuntimeLimits};
use crate::upstream::Upstreams;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ledger could not open.
    #[error("cannot open the ledger: {0}")]
    Ledger(#[from] tollgate_ledger::LedgerError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] crate::plugin::RuntimeError),
    /// An upstream client could not be built.
    #[error("cannot set up provider clients: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// The control store could not be read or written.
    #[error("cannot load tenants and plugins: {0}")]
    Admin(#[from] crate::admin::AdminError),
    /// The embedded token table is unusable (a broken build).
    #[error("cannot load the token counter: {0}")]
    Tokenizer(&'static crate::tokens::TableError),
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn config_error(config: &Config, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: config.source.clone(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// The ledger settings of `config`, checked.
pub fn ledger_config(config: &Config) -> Result<LedgerConfig, ConfigError> {
    let s = &config.ledger;
    let currency = Currency::from_str(&s.currency).map_err(|_| {
        config_error(
            config,
            "ledger.currency",
            format!("{} is not a supported currency", s.currency),
        )
    })?;
    let tz = chrono_tz::Tz::from_str(&s.timezone).map_err(|_| {
        config_error(
            config,
            "ledger.timezone",
            format!("{:?} is not an IANA timezone", s.timezone),
        )
    })?;
    let (durability, record_linger) = match s.durability {
        Durability::Sync => (tollgate_ledger::Durability::Sync, std::time::Duration::ZERO),
        Durability::Batched {
            flush_every,
            record_linger,
        } => (
            tollgate_ledger::Durability::Batched { flush_every },
            record_linger,
        ),
    };
    Ok(LedgerConfig {
        path: Some(s.data_dir.join("ledger")),
        durability,
        record_linger,
        currency,
        calendar: Calendar {
            tz,
            grace: chrono::Duration::hours(i64::from(s.grace_hours)),
        },
        platform_fee_pct: s.platform_fee_percent,
        cache_bytes: s.cache_bytes,
        ..LedgerConfig::default()
    })
}

/// Builds the shared state: ledger, runtime, plugins, directory.
pub async fn build_state(config: &Config) -> Result<Arc<AppState>, StartError> {
    let ledger_config = ledger_config(config)?;
    if let Some(path) = &ledger_config.path {
        std::fs::create_dir_all(path).map_err(|e| {
            config_error(
                config,
                "ledger.data_dir",
                format!("cannot create {}: {e}", path.display()),
            )
        })?;
    }
    let ledger = Ledger::open(ledger_config)?;
    let mut registry = Registry::default();
    let plugin_metrics = PluginMetrics::default();
    plugin_metrics.register(&mut registry);
    let runtime = PluginRuntime::new(
        RuntimeLimits {
            deadline: config.plugins.deadline,
            memory_bytes: config.plugins.memory_bytes,
            default_surcharge_bound: config.plugins.default_surcharge_bound,
            ..RuntimeLimits::default()
        },
        plugin_metrics,
    )?;
    let directory = Arc::new(ArcSwap::from_pointee(Directory::default()));
    let webhooks = Arc::new(ArcSwap::from_pointee(std::collections::HashMap::new()));
    let admin = Admin::new(
        ledger.clone(),
        runtime.clone(),
        AdminSettings {
            operator_token_sha256: config.server.operator_token_sha256,
            default_platform_fee: config.ledger.platform_fee_percent,
            max_plugin_bytes: config.server.max_plugin_bytes,
            offers: config.models.iter().map(|m| m.offer.clone()).collect(),
        },
        directory.clone(),
        webhooks.clone(),
    );
    // The config file's tenants go into the control store (new or changed
    // declarations only), then the directory is built from the store.
    seed::apply(&admin, config).await.map_err(|e| match e {
        seed::SeedError::Config(c) => StartError::Config(c),
        seed::SeedError::Admin(a) => StartError::Admin(a),
    })?;
    crate::tokens::warm_up().map_err(StartError::Tokenizer)?;
    let alerts = crate::alerts::spawn(ledger.clone(), webhooks, config.server.alert_poll);
    let metrics = GatewayMetrics::new(&mut registry);
    Ok(Arc::new(AppState {
        directory,
        admin,
        catalog: Catalog::new(config.models.clone()),
        upstreams: Upstreams::new(&config.providers)?,
        runtime,
        ledger,
        metrics,
        registry,
        max_body_bytes: config.server.max_body_bytes,
        background: std::sync::Mutex::new(vec![alerts]),
        requests: tokio_util::task::TaskTracker::new(),
    }))
}

/// How long shutdown waits for requests still finishing after their
/// clients left (streams being metered and recorded).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds `addr`.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish and
/// flushes the ledger.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = gateway::router(state.clone());
    // Small SSE frames must leave at once, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // Streams whose clients left may still be metering and recording.
    state.requests.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.requests.wait())
        .await
        .is_err()
    {
        tracing::error!(
            in_flight = state.requests.len(),
            "shutdown grace ran out with requests still finishing; their usage records may be missing"
        );
    }
    let background = std::mem::take(
        &mut *state
            .background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for task in background {
        task.abort();
        // Wait until the task is gone, so its ledger handle is dropped and a
        // restart in the same process can reopen the data dir.
        let _ = task.await;
    }
    if let Err(e) = state.ledger.flush() {
        tracing::error!(error = %e, "ledger flush at shutdown failed");
    }
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn ledger_of(ledger_section: &str) -> LedgerConfig {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\n{ledger_section}\n\n\
             [[providers]]\nid = \"demo\"\nkind = \"demo\"\n"
        );
        let config = Config::parse(&text, std::path::Path::new("linger.toml")).unwrap();
        ledger_config(&config).unwrap()
    }

    #[test]
    fn a_batched_ledger_lingers_for_records_and_a_sync_one_never() {
        let linger = |section: &str| ledger_of(section).record_linger;
        assert_eq!(linger("durability = \"batched\""), Duration::from_millis(1));
        assert_eq!(
            linger("durability = \"batched\"\nrecord_linger_us = 250"),
            Duration::from_micros(250)
        );
        assert_eq!(
            linger("durability = \"batched\"\nrecord_linger_us = 0"),
            Duration::ZERO
        );
        assert_eq!(linger("durability = \"sync\""), Duration::ZERO);
        assert_eq!(linger(""), Duration::ZERO);
    }
}
