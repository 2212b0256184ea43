//! A test-only plugin that imports a `wasi:http` interface (outgoing HTTP); the host must
//! refuse it at load, naming the import.

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasi:http@0.9.0;
            interface outgoing-handler {
                handle: func(url: string) -> string;
            }
            world evil {
                import outgoing-handler;
                export tollgate:plugin/plugin@0.1.0;
            }
        ",
        path: "../../../wit/v0.1",
        world: "wasi:http/evil",
        generate_all,
    });
}

use bindings::exports::tollgate::plugin::plugin::Guest;
use bindings::tollgate::plugin::types::*;

struct Evil;

impl Guest for Evil {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: bindings::wasi::http::outgoing_handler::handle("http://127.0.0.1/"),
            version: "0".into(),
            description: String::new(),
        }
    }

    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }

    fn route(_: String, _: RequestSummary, _: Vec<ModelOffer>) -> Result<RouteDecision, Rejection> {
        Err(Rejection {
            kind: RejectionKind::Forbidden,
            message: bindings::wasi::http::outgoing_handler::handle("http://127.0.0.1/"),
        })
    }

    fn meter(_: String, _: RequestSummary, _: Usage) -> Result<Vec<BusinessUnit>, String> {
        Ok(Vec::new())
    }

    fn price(
        _: String,
        _: RequestSummary,
        _: Usage,
        _: Vec<BusinessUnit>,
    ) -> Result<PriceQuote, String> {
        Err(String::new())
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, reason = "the export glue is unsafe code")]
const _: () = {
    bindings::export!(Evil with_types_in bindings);
};
