//! Write Tollgate agency plugins in Rust.
//!
//! A plugin decides three things for every request an agency's client app
//! sends through Tollgate: which model and provider serve it (**route**),
//! which business units it counts as on the client's statement (**meter**),
//! and what the agency charges on top of the provider cost (**price**).
//!
//! Implement [`Plugin`] (every method has a sensible default), export it with
//! [`export_plugin!`], and build for `wasm32-wasip2`:
//!
//! ```no_run
//! use tollgate_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     #[serde(with = "tollgate_plugin_sdk::money::exact")]
//!     fee: Decimal,
//! }
//!
//! struct FlatFee;
//!
//! impl Plugin for FlatFee {
//!     type Config = Config;
//!     const DESCRIPTION: &'static str = "A flat fee per request";
//!
//!     fn price(config: &Config, _: &RequestSummary, _: &Usage, _: &[BusinessUnit])
//!         -> Result<PriceQuote, String>
//!     {
//!         Ok(PriceQuote { surcharge: config.fee, description: "request fee".into() })
//!     }
//! }
//!
//! tollgate_plugin_sdk::export_plugin!(FlatFee);
//! ```
//!
//! Plugin logic is ordinary Rust over ordinary types, so it is unit-tested
//! natively with `cargo test`; [`testing`] runs fixture folders through the
//! same checks the gateway applies. The plugin runs sandboxed: no files,
//! network, environment or real clock. Time comes in
//! [`RequestSummary::timestamp_ms`]; money is exact [`Decimal`], never a float.
//!
//! The SDK builds against the plugin contract `tollgate:plugin@0.2` (`wit/v0.2`):
//! the gateway hands the configuration and request over once per request and
//! decimals cross in binary. Each request gets a fresh instance, so in Wasm
//! builds the heap is a bump arena in front of the standard allocator (the
//! default `arena` feature; turn it off to bring your own
//! `#[global_allocator]`).
#![deny(missing_docs)]

#[doc(hidden)]
pub mod __guest;
mod arena;
pub mod log;
pub mod money;
pub mod testing;

/// Each request runs in a fresh instance, so the heap is a bump arena (see
/// `arena.rs`); the default `arena` feature turns it off for plugins that
/// bring their own allocator.
#[cfg(all(target_arch = "wasm32", feature = "arena"))]
#[global_allocator]
static ALLOCATOR: arena::Arena = arena::Arena::new();

pub use tollgate_plugin_types::{
    BusinessUnit, Decimal, Endpoint, ModelOffer, OfferRef, Outcome, PeriodUsage, PluginInfo,
    PriceQuote, Rejection, RejectionKind, RequestSummary, RouteDecision, Usage,
};

/// Everything a plugin usually needs, for `use tollgate_plugin_sdk::prelude::*`.
pub mod prelude {
    pub use crate::{
        BusinessUnit, Decimal, Endpoint, ModelOffer, NoConfig, OfferRef, Outcome, PeriodUsage,
        Plugin, PriceQuote, Rejection, RejectionKind, RequestSummary, RouteDecision, Usage,
        route_as_requested,
    };
}

/// An agency plugin. Each method is called on a fresh instance with the
/// binding's parsed configuration; nothing survives between requests.
pub trait Plugin {
    /// The configuration document an agency sets per client, parsed from
    /// JSON. An empty document is read as `{}`. Use [`NoConfig`] for none.
    type Config: serde::de::DeserializeOwned + 'static;

    /// One line on what the plugin does, shown by `tollgate plugin check`.
    const DESCRIPTION: &'static str = "";

    /// Checks a parsed configuration beyond what its type enforces (e.g. a
    /// margin within range). Called when an agency binds the plugin, so a bad
    /// setting is refused with this message before any request sees it.
    fn validate(config: &Self::Config) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Picks the offer to call and the fallbacks, or rejects the request.
    /// Defaults to [`route_as_requested`].
    fn route(
        config: &Self::Config,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<RouteDecision, Rejection> {
        let _ = config;
        route_as_requested(request, offers)
    }

    /// Maps what the request consumed to business units. Defaults to none.
    fn meter(
        config: &Self::Config,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let _ = (config, request, usage);
        Ok(Vec::new())
    }

    /// Computes the surcharge. Defaults to zero.
    fn price(
        config: &Self::Config,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let _ = (config, request, usage, units);
        Ok(PriceQuote::zero())
    }
}

/// A configuration that accepts any document and holds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConfig;

impl<'de> serde::Deserialize<'de> for NoConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NoConfig)
    }
}

/// Routes to the first offer whose model is the one the client asked for,
/// with no fallbacks; rejects the request if the client may not use it.
pub fn route_as_requested(
    request: &RequestSummary,
    offers: &[ModelOffer],
) -> Result<RouteDecision, Rejection> {
    offers
        .iter()
        .find(|o| o.model == request.requested_model)
        .map(|o| RouteDecision::to(o.reference()))
        .ok_or_else(|| {
            Rejection::new(
                RejectionKind::InvalidRequest,
                format!(
                    "model `{}` is not available to this client",
                    request.requested_model
                ),
            )
        })
}

/// Parses a configuration document the way the gateway passes it.
pub fn parse_config<C: serde::de::DeserializeOwned>(text: &str) -> Result<C, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))
}

/// Exports a [`Plugin`] implementation as the plugin's Wasm component.
///
/// Use it once, at the root of the plugin crate: `export_plugin!(MyPlugin);`.
/// It also records the crate's name and version as the plugin's identity.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Only a Wasm build exports anything: natively the plugin is a plain
        // library for unit tests. The canonical ABI exports are unsafe
        // extern functions by nature.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            #[doc(hidden)]
            pub struct __TollgateExport;

            impl $crate::__guest::Exports for __TollgateExport {
                type Plugin = $plugin;
                const NAME: &'static str = env!("CARGO_PKG_NAME");
                const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            }

            $crate::__guest::export_world!(__TollgateExport);
        };
    };
}
