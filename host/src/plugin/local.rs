//! Runs a plugin outside the gateway, for the `tollgate plugin` tools.
//!
//! [`LocalRunner`] drives a compiled plugin exactly as the gateway does
//! (route in one instance; meter and price in a second one, with the route's
//! surcharge bound), on a private single-threaded async runtime, and keeps
//! per-call measurements (time, fuel, peak memory) for reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tollgate_plugin_types::fixture::Capabilities;
use tollgate_plugin_types::{
    BusinessUnit, ModelOffer, PriceQuote, Rejection, RequestSummary, RouteDecision, Usage,
};

use super::{Capability, CompiledPlugin, PluginError, PluginRuntime, Session};

/// Measurements of one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallReport {
    /// Which capability.
    pub capability: &'static str,
    /// Wall time, microseconds (including instantiation for the first call
    /// of an instance).
    pub micros: u64,
    /// Fuel consumed (≈ Wasm operations executed), when measured.
    pub fuel: Option<u64>,
    /// Peak linear memory of the instance, bytes.
    pub peak_memory_bytes: usize,
}

/// A plugin driven synchronously, outside any async context.
pub struct LocalRunner {
    rt: tokio::runtime::Runtime,
    runtime: PluginRuntime,
    plugin: Arc<CompiledPlugin>,
    bound: Decimal,
    charge_session: Option<Session>,
    /// Measurements of every call so far.
    pub reports: Vec<CallReport>,
}

/// Failure to set up a local run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The async runtime could not start.
    #[error("cannot start a local runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The plugin did not load.
    #[error(transparent)]
    Load(#[from] super::LoadError),
}

impl LocalRunner {
    /// Loads `bytes` into `runtime` for local runs.
    pub fn load(runtime: PluginRuntime, bytes: Vec<u8>) -> Result<Self, LocalError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let plugin = rt.block_on(runtime.load(bytes))?;
        Ok(Self {
            rt,
            bound: runtime.limits().default_surcharge_bound,
            runtime,
            plugin,
            charge_session: None,
            reports: Vec::new(),
        })
    }

    /// The loaded plugin.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    fn measure<T>(
        &mut self,
        capability: Capability,
        started: Instant,
        session: &Session,
        value: T,
    ) -> T {
        self.reports.push(CallReport {
            capability: capability.as_str(),
            micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            fuel: session.fuel_consumed(),
            peak_memory_bytes: session.peak_memory(),
        });
        value
    }

    fn fresh_session(&mut self, label: &str) -> Result<Session, PluginError> {
        let plugin = self.plugin.clone();
        self.rt.block_on(plugin.session(label))
    }
}

fn text(e: PluginError) -> String {
    e.to_string()
}

impl Capabilities for LocalRunner {
    fn validate_config(&mut self, config: &str) -> Result<(), String> {
        let started = Instant::now();
        let mut session = self.fresh_session("validate-config").map_err(text)?;
        let result = self.rt.block_on(session.validate_config(config));
        let result = self.measure(Capability::ValidateConfig, started, &session, result);
        result.map_err(text)?
    }

    fn route(
        &mut self,
        config: &str,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<Result<RouteDecision, Rejection>, String> {
        let started = Instant::now();
        let mut session = self.fresh_session(&request.request_id).map_err(text)?;
        let result = self.rt.block_on(session.route(config, request, offers));
        let result = self.measure(Capability::Route, started, &session, result);
        if let Ok(Ok(decision)) = &result {
            self.bound = self.runtime.surcharge_bound(decision);
        }
        // The gateway meters and prices in a new instance after the provider call.
        self.charge_session = None;
        result.map_err(text)
    }

    fn meter(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let started = Instant::now();
        let mut session = self.fresh_session(&request.request_id).map_err(text)?;
        let result = self.rt.block_on(session.meter(config, request, usage));
        let result = self.measure(Capability::Meter, started, &session, result);
        self.charge_session = Some(session);
        result.map_err(text)
    }

    fn price(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let started = Instant::now();
        let mut session = match self.charge_session.take() {
            Some(s) => s,
            None => self.fresh_session(&request.request_id).map_err(text)?,
        };
        let bound = self.bound;
        let result = self
            .rt
            .block_on(session.price(config, request, usage, units, bound));
        let result = self.measure(Capability::Price, started, &session, result);
        result.map_err(text)
    }
}

/// Total wall time of the recorded calls.
pub fn total_time(reports: &[CallReport]) -> Duration {
    Duration::from_micros(reports.iter().map(|r| r.micros).sum())
}
