//! Glue between the generated WIT bindings and [`Plugin`](crate::Plugin).
//!
//! The bindings are generated here and stay hidden: plugin authors see only
//! the plain types of `tollgate-plugin-types`. Conversions parse every
//! decimal the host sends with the strict wire grammar.
#![allow(missing_docs)]

use crate::Plugin;
use crate::log::Level;
use tollgate_plugin_types::{self as t, decimal};

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.1",
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
pub trait Exports {
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

    fn route(
        config: String,
        request: w::RequestSummary,
        offers: Vec<w::ModelOffer>,
    ) -> Result<w::RouteDecision, w::Rejection> {
        let invalid = |message: String| w::Rejection {
            kind: w::RejectionKind::InvalidRequest,
            message,
        };
        let config = cached_config::<<E::Plugin as Plugin>::Config>(&config).map_err(invalid)?;
        let request = request_from_wit(request).map_err(invalid)?;
        let offers = offers
            .into_iter()
            .map(offer_from_wit)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        match <E::Plugin as Plugin>::route(&config, &request, &offers) {
            Ok(decision) => Ok(w::RouteDecision {
                primary: ref_to_wit(decision.primary),
                fallbacks: decision.fallbacks.into_iter().map(ref_to_wit).collect(),
                surcharge_bound: decision.surcharge_bound.as_ref().map(decimal::format),
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

    fn meter(
        config: String,
        request: w::RequestSummary,
        usage: w::Usage,
    ) -> Result<Vec<w::BusinessUnit>, String> {
        let config = cached_config::<<E::Plugin as Plugin>::Config>(&config)?;
        let request = request_from_wit(request)?;
        let usage = usage_from_wit(usage)?;
        let units = <E::Plugin as Plugin>::meter(&config, &request, &usage)?;
        Ok(units.into_iter().map(unit_to_wit).collect())
    }

    fn price(
        config: String,
        request: w::RequestSummary,
        usage: w::Usage,
        units: Vec<w::BusinessUnit>,
    ) -> Result<w::PriceQuote, String> {
        let config = cached_config::<<E::Plugin as Plugin>::Config>(&config)?;
        let request = request_from_wit(request)?;
        let usage = usage_from_wit(usage)?;
        let units = units
            .into_iter()
            .map(unit_from_wit)
            .collect::<Result<Vec<_>, _>>()?;
        let quote = <E::Plugin as Plugin>::price(&config, &request, &usage, &units)?;
        Ok(w::PriceQuote {
            surcharge: decimal::format(&quote.surcharge),
            description: quote.description,
        })
    }
}

thread_local! {
    /// The last configuration parsed in this instance: `route`, `meter` and
    /// `price` of one request get the same document, so it is parsed once.
    static CONFIG: std::cell::RefCell<Option<(String, std::rc::Rc<dyn std::any::Any>)>> =
        const { std::cell::RefCell::new(None) };
}

fn cached_config<C: serde::de::DeserializeOwned + 'static>(
    text: &str,
) -> Result<std::rc::Rc<C>, String> {
    let hit = CONFIG.with(|cache| {
        cache
            .borrow()
            .as_ref()
            .filter(|(cached, _)| cached == text)
            .and_then(|(_, value)| value.clone().downcast::<C>().ok())
    });
    if let Some(config) = hit {
        return Ok(config);
    }
    let parsed = std::rc::Rc::new(crate::parse_config::<C>(text)?);
    let erased: std::rc::Rc<dyn std::any::Any> = parsed.clone();
    CONFIG.with(|cache| *cache.borrow_mut() = Some((text.to_owned(), erased)));
    Ok(parsed)
}

fn dec(field: &str, text: &str) -> Result<t::Decimal, String> {
    decimal::parse(text).map_err(|e| format!("host sent an invalid {field}: {e}"))
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
        quantity: decimal::format(&u.quantity),
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
