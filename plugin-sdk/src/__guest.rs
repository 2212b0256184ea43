//! Glue between the generated WIT bindings and [`Plugin`](crate::Plugin).
//!
//! The bindings (contract 0.2) are generated here and stay hidden: plugin
//! authors see only the plain types of `tollgate-plugin-types`. Every
//! decimal the host sends is checked as it is decoded. The host makes one
//! `request-context` per request and instance, so the configuration and
//! request summary are parsed and converted once for all three capabilities.
#![allow(missing_docs)]

use crate::Plugin;
use crate::log::Level;
use tollgate_plugin_types as t;

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2",
        world: "agency-plugin",
        pub_export_macro: true,
        export_macro_name: "__tollgate_export_agency_plugin",
        default_bindings_module: "tollgate_plugin_sdk::__guest",
    });
}

pub use bindings::*;
use exports::tollgate::plugin::plugin as wit_plugin;
use tollgate::plugin::types as w;

/// The identity of an exported plugin, implemented by [`crate::export_plugin!`].
pub trait Exports: 'static {
    /// The plugin implementation.
    type Plugin: Plugin;
    /// The crate name.
    const NAME: &'static str;
    /// The crate version.
    const VERSION: &'static str;
}

#[doc(hidden)]
#[macro_export]
macro_rules! __tollgate_export_world {
    ($ty:ident) => {
        $crate::__guest::__tollgate_export_agency_plugin!($ty with_types_in $crate::__guest);
    };
}
pub use crate::__tollgate_export_world as export_world;

impl<E: Exports> wit_plugin::Guest for E {
    type RequestContext = Context<E>;

    fn describe() -> w::PluginInfo {
        w::PluginInfo {
            name: E::NAME.into(),
            version: E::VERSION.into(),
            description: <E::Plugin as Plugin>::DESCRIPTION.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        let parsed = crate::parse_config::<<E::Plugin as Plugin>::Config>(&config)?;
        <E::Plugin as Plugin>::validate(&parsed)
    }
}

/// One request's configuration and summary, decoded once. A constructor
/// cannot fail, so a problem with either is kept and reported by every
/// capability called on the context.
pub struct Context<E: Exports> {
    inputs: Result<(<E::Plugin as Plugin>::Config, t::RequestSummary), String>,
}

impl<E: Exports> Context<E> {
    fn inputs(&self) -> Result<(&<E::Plugin as Plugin>::Config, &t::RequestSummary), String> {
        match &self.inputs {
            Ok((config, request)) => Ok((config, request)),
            Err(e) => Err(e.clone()),
        }
    }
}

impl<E: Exports> wit_plugin::GuestRequestContext for Context<E> {
    fn new(config: String, request: w::RequestSummary) -> Self {
        let inputs = crate::parse_config::<<E::Plugin as Plugin>::Config>(&config)
            .and_then(|config| Ok((config, request_from_wit(request)?)));
        Context { inputs }
    }

    fn route(&self, offers: Vec<w::ModelOffer>) -> Result<w::RouteDecision, w::Rejection> {
        let invalid = |message: String| w::Rejection {
            kind: w::RejectionKind::InvalidRequest,
            message,
        };
        let (config, request) = self.inputs().map_err(invalid)?;
        let offers = offers
            .into_iter()
            .map(offer_from_wit)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        match <E::Plugin as Plugin>::route(config, request, &offers) {
            Ok(decision) => Ok(w::RouteDecision {
                primary: ref_to_wit(decision.primary),
                fallbacks: decision.fallbacks.into_iter().map(ref_to_wit).collect(),
                surcharge_bound: decision.surcharge_bound.as_ref().map(dec_to_wit),
            }),
            Err(rejection) => Err(w::Rejection {
                kind: match rejection.kind {
                    t::RejectionKind::InvalidRequest => w::RejectionKind::InvalidRequest,
                    t::RejectionKind::Forbidden => w::RejectionKind::Forbidden,
                    t::RejectionKind::QuotaExceeded => w::RejectionKind::QuotaExceeded,
                },
                message: rejection.message,
            }),
        }
    }

    fn meter(&self, usage: w::Usage) -> Result<Vec<w::BusinessUnit>, String> {
        let (config, request) = self.inputs()?;
        let usage = usage_from_wit(usage)?;
        let units = <E::Plugin as Plugin>::meter(config, request, &usage)?;
        Ok(units.into_iter().map(unit_to_wit).collect())
    }

    fn price(&self, usage: w::Usage, units: Vec<w::BusinessUnit>) -> Result<w::PriceQuote, String> {
        let (config, request) = self.inputs()?;
        let usage = usage_from_wit(usage)?;
        let units = units
            .into_iter()
            .map(unit_from_wit)
            .collect::<Result<Vec<_>, _>>()?;
        let quote = <E::Plugin as Plugin>::price(config, request, &usage, &units)?;
        Ok(w::PriceQuote {
            surcharge: dec_to_wit(&quote.surcharge),
            description: quote.description,
        })
    }
}

/// The 0.2 wire form of a decimal: `rust_decimal`'s own parts.
fn dec_to_wit(d: &t::Decimal) -> w::Decimal {
    let p = t::decimal::to_parts(d);
    w::Decimal {
        mantissa_low: p.mantissa_low,
        mantissa_high: p.mantissa_high,
        scale: p.scale,
        negative: p.negative,
    }
}

fn dec(field: &str, d: &w::Decimal) -> Result<t::Decimal, String> {
    t::decimal::from_parts(t::decimal::Parts {
        mantissa_low: d.mantissa_low,
        mantissa_high: d.mantissa_high,
        scale: d.scale,
        negative: d.negative,
    })
    .map_err(|e| format!("host sent an invalid {field}: {e}"))
}

fn request_from_wit(r: w::RequestSummary) -> Result<t::RequestSummary, String> {
    let units = r
        .usage_so_far
        .units
        .into_iter()
        .map(|u| Ok((u.unit, dec("unit count", &u.quantity)?)))
        .collect::<Result<_, String>>()?;
    Ok(t::RequestSummary {
        request_id: r.request_id,
        timestamp_ms: r.timestamp_ms,
        agency_id: r.agency_id,
        client_id: r.client_id,
        app_id: r.app_id,
        endpoint: match r.endpoint {
            w::Endpoint::ChatCompletions => t::Endpoint::ChatCompletions,
            w::Endpoint::Embeddings => t::Endpoint::Embeddings,
        },
        requested_model: r.requested_model,
        message_count: r.message_count,
        estimated_prompt_tokens: r.estimated_prompt_tokens,
        max_tokens: r.max_tokens,
        stream: r.stream,
        end_user: r.end_user,
        currency: r.currency,
        usage_so_far: t::PeriodUsage {
            period_start_ms: r.usage_so_far.period_start_ms,
            spend: dec("spend", &r.usage_so_far.spend)?,
            request_count: r.usage_so_far.request_count,
            units,
        },
        tags: r.tags.into_iter().map(|tag| (tag.key, tag.value)).collect(),
    })
}

fn offer_from_wit(o: w::ModelOffer) -> Result<t::ModelOffer, String> {
    Ok(t::ModelOffer {
        input_per_mtok: dec("input price", &o.input_per_mtok)?,
        output_per_mtok: dec("output price", &o.output_per_mtok)?,
        cached_input_per_mtok: dec("cached input price", &o.cached_input_per_mtok)?,
        model: o.model,
        provider: o.provider,
        context_window: o.context_window,
        price_version: o.price_version,
    })
}

fn ref_to_wit(r: t::OfferRef) -> w::OfferRef {
    w::OfferRef {
        model: r.model,
        provider: r.provider,
    }
}

fn usage_from_wit(u: w::Usage) -> Result<t::Usage, String> {
    Ok(t::Usage {
        served_by: t::OfferRef {
            model: u.served_by.model,
            provider: u.served_by.provider,
        },
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cached_input_tokens,
        provider_cost: dec("provider cost", &u.provider_cost)?,
        latency_ms: u.latency_ms,
        outcome: match u.outcome {
            w::Outcome::Completed => t::Outcome::Completed,
            w::Outcome::Truncated => t::Outcome::Truncated,
            w::Outcome::Interrupted => t::Outcome::Interrupted,
            w::Outcome::Failed => t::Outcome::Failed,
        },
        estimated: u.estimated,
    })
}

fn unit_to_wit(u: t::BusinessUnit) -> w::BusinessUnit {
    w::BusinessUnit {
        quantity: dec_to_wit(&u.quantity),
        name: u.name,
    }
}

fn unit_from_wit(u: w::BusinessUnit) -> Result<t::BusinessUnit, String> {
    Ok(t::BusinessUnit {
        quantity: dec("unit quantity", &u.quantity)?,
        name: u.name,
    })
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn host_log(level: Level, message: &str) {
    use tollgate::plugin::log as host;
    let level = match level {
        Level::Trace => host::Level::Trace,
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    };
    host::log(level, message);
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn take_captured() -> Vec<(Level, String)> {
    Vec::new()
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static CAPTURED: std::cell::RefCell<Vec<(Level, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host_log(level: Level, message: &str) {
    CAPTURED.with(|c| c.borrow_mut().push((level, message.to_owned())));
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn take_captured() -> Vec<(Level, String)> {
    CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}
