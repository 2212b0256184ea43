//! Test plugin logic natively, without Wasm.
//!
//! [`Native`] runs a [`Plugin`] through the same steps and the
//! same output checks as the gateway (config parsing, route, meter, price,
//! and the contract's limits), so a plugin that passes here is not refused
//! by the host for a reason the tests never saw. [`run_fixtures`] runs a
//! fixture folder, the same one `tollgate plugin test` runs against the
//! built Wasm.

use crate::Plugin;
use std::marker::PhantomData;
use std::path::Path;
use tollgate_plugin_types::fixture::{self, Capabilities};
use tollgate_plugin_types::validate;
use tollgate_plugin_types::{
    BusinessUnit, Decimal, ModelOffer, PriceQuote, Rejection, RequestSummary, RouteDecision, Usage,
};

/// The surcharge bound used when a route declares none: the gateway's
/// default per-request cap.
pub const DEFAULT_SURCHARGE_BOUND: Decimal = Decimal::from_parts(100, 0, 0, false, 0);

/// Runs a plugin natively, applying the gateway's checks to every output.
pub struct Native<P> {
    bound: Decimal,
    _plugin: PhantomData<P>,
}

impl<P: Plugin> Default for Native<P> {
    fn default() -> Self {
        Self {
            bound: DEFAULT_SURCHARGE_BOUND,
            _plugin: PhantomData,
        }
    }
}

impl<P: Plugin> Native<P> {
    /// A runner for `P`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<P: Plugin> Capabilities for Native<P> {
    fn validate_config(&mut self, config: &str) -> Result<(), String> {
        let parsed = crate::parse_config::<P::Config>(config)?;
        P::validate(&parsed)
    }

    fn route(
        &mut self,
        config: &str,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<Result<RouteDecision, Rejection>, String> {
        let parsed = crate::parse_config::<P::Config>(config)?;
        let routed = P::route(&parsed, request, offers);
        match &routed {
            Ok(decision) => {
                validate::check_route(decision, offers).map_err(|e| e.to_string())?;
                self.bound = decision.surcharge_bound.unwrap_or(DEFAULT_SURCHARGE_BOUND);
            }
            Err(rejection) => validate::check_rejection(rejection).map_err(|e| e.to_string())?,
        }
        Ok(routed)
    }

    fn meter(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let parsed = crate::parse_config::<P::Config>(config)?;
        let units = P::meter(&parsed, request, usage)?;
        validate::check_units(&units).map_err(|e| e.to_string())?;
        Ok(units)
    }

    fn price(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let parsed = crate::parse_config::<P::Config>(config)?;
        let quote = P::price(&parsed, request, usage, units)?;
        validate::check_quote(&quote, self.bound).map_err(|e| e.to_string())?;
        Ok(quote)
    }
}

/// Runs every case of a fixture folder natively and panics with a report of
/// each failing case, for use inside a `#[test]`.
///
/// ```no_run
/// # struct MyPlugin;
/// # impl tollgate_plugin_sdk::Plugin for MyPlugin { type Config = tollgate_plugin_sdk::NoConfig; }
/// #[test]
/// fn fixtures() {
///     tollgate_plugin_sdk::testing::run_fixtures::<MyPlugin>(
///         concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
///     );
/// }
/// ```
#[allow(clippy::panic, reason = "a test helper reports failure by panicking")]
pub fn run_fixtures<P: Plugin>(dir: impl AsRef<Path>) {
    let dir = dir.as_ref();
    let cases = match fixture::load_dir(dir) {
        Ok(cases) => cases,
        Err(e) => panic!("{e}"),
    };
    let mut failures = Vec::new();
    for case in &cases {
        let actual = fixture::run_case(&mut Native::<P>::new(), &case.input);
        let diffs = fixture::compare(&case.expected, &actual);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n  - {}", case.name, diffs.join("\n  - ")));
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {} fixture cases in {} failed:\n{}",
            failures.len(),
            cases.len(),
            dir.display(),
            failures.join("\n")
        );
    }
}

/// An offer for tests, with prices per million tokens given as text.
pub fn offer(
    model: &str,
    provider: &str,
    input_per_mtok: &str,
    output_per_mtok: &str,
) -> ModelOffer {
    let parse = |s: &str| tollgate_plugin_types::decimal::parse(s).unwrap_or_default();
    ModelOffer {
        model: model.into(),
        provider: provider.into(),
        input_per_mtok: parse(input_per_mtok),
        output_per_mtok: parse(output_per_mtok),
        cached_input_per_mtok: parse(input_per_mtok) / Decimal::TWO,
        context_window: 128_000,
        price_version: "test".into(),
    }
}
