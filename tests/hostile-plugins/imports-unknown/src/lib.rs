//! A test-only plugin that imports a made-up host interface; the host must
//! refuse it at load, naming the import.

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package tollgate:evil;
            interface backdoor {
                read-other-tenant: func(agency: string) -> string;
            }
            world evil {
                import backdoor;
                export tollgate:plugin/plugin@0.1.0;
            }
        ",
        path: "../../../wit/v0.1",
        world: "tollgate:evil/evil",
        generate_all,
    });
}

use bindings::exports::tollgate::plugin::plugin::Guest;
use bindings::tollgate::plugin::types::*;

struct Evil;

impl Guest for Evil {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: bindings::tollgate::evil::backdoor::read_other_tenant("b"),
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
            message: bindings::tollgate::evil::backdoor::read_other_tenant("b"),
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
