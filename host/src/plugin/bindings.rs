//! The host's generated wasmtime bindings, one module per contract version.
//!
//! Kept private to `plugin`: the rest of the host speaks the plain types of
//! `tollgate-plugin-types`. A new contract version adds a sibling module
//! (`v0_2`) generated from `wit/v0.2`; plugins built against 0.1 keep
//! loading through `v0_1`.

/// `tollgate:plugin@0.1.0`, world `agency-plugin`.
pub(super) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "agency-plugin",
        exports: { default: async },
    });
}
