//! The `hostile` test plugin for contract 0.2, written against the raw WIT
//! bindings (not the SDK) so it can return anything at all: the same modes
//! (`tests/hostile-plugins/hostile/src/misbehave.rs`), configured the same
//! way (`MODE` or `MODE@CAPABILITY`), reached through a `request-context`.
//! `malformed-surcharge` sends a decimal scale above 28, the binary
//! encoding's malformed case; `MODE@context` misbehaves in the
//! `request-context` constructor, which runs inside the first capability.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "misbehaving is the point of this plugin"
)]

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/v0.2",
        world: "agency-plugin",
    });
}

#[path = "../../hostile/src/misbehave.rs"]
mod misbehave;

use bindings::exports::tollgate::plugin::plugin::{Guest, GuestRequestContext};
use bindings::tollgate::plugin::log;
use bindings::tollgate::plugin::types::*;
use misbehave::{misbehave, mode_for, pick};

struct Hostile;

fn log_error(line: &str) {
    log::log(log::Level::Error, line);
}

fn reject(message: String) -> Rejection {
    Rejection {
        kind: RejectionKind::Forbidden,
        message,
    }
}

fn decimal(mantissa: u64, scale: u8, negative: bool) -> Decimal {
    Decimal {
        mantissa_low: mantissa,
        mantissa_high: 0,
        scale,
        negative,
    }
}

impl Guest for Hostile {
    type RequestContext = Context;

    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-v2".into(),
            version: "0.0.1".into(),
            description: "misbehaves on command (contract 0.2)".into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        misbehave::validate(&config, log_error)
    }
}

/// The configuration and request of one request.
struct Context {
    config: String,
    requested_model: String,
}

impl GuestRequestContext for Context {
    fn new(config: String, request: RequestSummary) -> Self {
        if let Some(mode) = mode_for(&config, "context") {
            misbehave(&mode, log_error);
        }
        Context {
            config,
            requested_model: request.requested_model,
        }
    }

    fn route(&self, offers: Vec<ModelOffer>) -> Result<RouteDecision, Rejection> {
        let mode = mode_for(&self.config, "route").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(reject(message));
        }
        let offered = offers
            .iter()
            .map(|o| (o.model.as_str(), o.provider.as_str()));
        let Some((model, provider)) = pick(&mode, &self.requested_model, offered) else {
            return Err(reject("no offers".into()));
        };
        let primary = OfferRef { model, provider };
        Ok(RouteDecision {
            primary,
            fallbacks: Vec::new(),
            surcharge_bound: (mode == "huge-bound").then_some(Decimal {
                mantissa_low: u64::MAX,
                mantissa_high: u32::MAX,
                scale: 0,
                negative: false,
            }),
        })
    }

    fn meter(&self, _usage: Usage) -> Result<Vec<BusinessUnit>, String> {
        let mode = mode_for(&self.config, "meter").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(message);
        }
        let unit = |name: &str, quantity: Decimal| BusinessUnit {
            name: name.into(),
            quantity,
        };
        Ok(match mode.as_str() {
            "absurd-units" => vec![unit("page", decimal(99_999_999_999, 0, false))],
            "bad-unit-name" => vec![unit("Pages Processed!", decimal(1, 0, false))],
            _ => vec![unit("request", decimal(1, 0, false))],
        })
    }

    fn price(&self, _usage: Usage, _units: Vec<BusinessUnit>) -> Result<PriceQuote, String> {
        let mode = mode_for(&self.config, "price").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(message);
        }
        let surcharge = match mode.as_str() {
            "negative-surcharge" => decimal(5, 0, true),
            "malformed-surcharge" => decimal(1, 29, false),
            _ => decimal(1, 2, false),
        };
        Ok(PriceQuote {
            surcharge,
            description: "hostile".into(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, reason = "the export glue is unsafe code")]
const _: () = {
    bindings::export!(Hostile with_types_in bindings);
};
