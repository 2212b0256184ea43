//! The host's generated wasmtime bindings, one module per contract version.
//!
//! Kept private to `plugin`: the rest of the host speaks the plain types of
//! `tollgate-plugin-types`. Each contract version is a sibling module
//! generated from its `wit/` folder; plugins built against 0.1 keep loading
//! through `v0_1` while the SDK builds 0.2.

/// `tollgate:plugin@0.1.0`, world `agency-plugin`.
pub(super) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "agency-plugin",
        exports: { default: async },
    });
}

/// `tollgate:plugin@0.2.0`, world `agency-plugin`: binary decimals and a
/// per-request `request-context` resource.
pub(super) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "agency-plugin",
        exports: { default: async },
    });
}
