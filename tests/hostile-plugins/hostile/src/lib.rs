//! A test-only plugin that misbehaves on command, written against the raw
//! WIT bindings (not the SDK) so it can return anything at all.
//!
//! The binding config names the misbehaviour and the capability it hits,
//! as `MODE` (in `route`) or `MODE@CAPABILITY`. Modes: `spin`, `grow-memory`,
//! `recurse`, `panic`, `exit`, `sleep`, `huge-output`, `log-flood`,
//! `snoop` (file, socket, environment), `clock` (reports clock and random),
//! `counter` (reports a per-instance counter), `negative-surcharge`,
//! `malformed-surcharge`, `unknown-model`, `absurd-units`, `bad-unit-name`,
//! `huge-bound` (declares an absurd surcharge bound),
//! `ok` (behaves). Anything else behaves too.
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
        path: "../../../wit/v0.1",
        world: "agency-plugin",
    });
}

use bindings::exports::tollgate::plugin::plugin::Guest;
use bindings::tollgate::plugin::log;
use bindings::tollgate::plugin::types::*;
mod misbehave;

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

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: "0.0.1".into(),
            description: "misbehaves on command".into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        misbehave::validate(&config, log_error)
    }

    fn route(
        config: String,
        request: RequestSummary,
        offers: Vec<ModelOffer>,
    ) -> Result<RouteDecision, Rejection> {
        let mode = mode_for(&config, "route").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(reject(message));
        }
        let offered = offers
            .iter()
            .map(|o| (o.model.as_str(), o.provider.as_str()));
        let Some((model, provider)) = pick(&mode, &request.requested_model, offered) else {
            return Err(reject("no offers".into()));
        };
        let primary = OfferRef { model, provider };
        Ok(RouteDecision {
            primary,
            fallbacks: Vec::new(),
            surcharge_bound: (mode == "huge-bound").then(|| "9999999999999999999999999999".into()),
        })
    }

    fn meter(
        config: String,
        _request: RequestSummary,
        _usage: Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let mode = mode_for(&config, "meter").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(message);
        }
        let unit = |name: &str, quantity: &str| BusinessUnit {
            name: name.into(),
            quantity: quantity.into(),
        };
        Ok(match mode.as_str() {
            "absurd-units" => vec![unit("page", "99999999999")],
            "bad-unit-name" => vec![unit("Pages Processed!", "1")],
            _ => vec![unit("request", "1")],
        })
    }

    fn price(
        config: String,
        _request: RequestSummary,
        _usage: Usage,
        _units: Vec<BusinessUnit>,
    ) -> Result<PriceQuote, String> {
        let mode = mode_for(&config, "price").unwrap_or_default();
        if let Some(message) = misbehave(&mode, log_error) {
            return Err(message);
        }
        let surcharge = match mode.as_str() {
            "negative-surcharge" => "-5",
            "malformed-surcharge" => "1e5",
            _ => "0.01",
        };
        Ok(PriceQuote {
            surcharge: surcharge.into(),
            description: "hostile".into(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, reason = "the export glue is unsafe code")]
const _: () = {
    bindings::export!(Hostile with_types_in bindings);
};
