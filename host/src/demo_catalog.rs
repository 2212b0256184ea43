//! The demo provider's model catalog: the offers used by `tollgate demo`
//! and by `tollgate plugin run` when no offers file is given.
//!
//! Prices are illustrative but realistic in shape (per million tokens, exact
//! decimals) so the example plugins' routing and margins behave as they would
//! against a real provider.

use rust_decimal::Decimal;
use tollgate_plugin_types::ModelOffer;

/// The provider id of the built-in demo provider.
pub const DEMO_PROVIDER: &str = "demo";

/// The demo price list version recorded on usage records.
pub const DEMO_PRICE_VERSION: &str = "demo-2026-11";

fn offer(model: &str, input: Decimal, output: Decimal, cached: Decimal, window: u32) -> ModelOffer {
    ModelOffer {
        model: model.into(),
        provider: DEMO_PROVIDER.into(),
        input_per_mtok: input,
        output_per_mtok: output,
        cached_input_per_mtok: cached,
        context_window: window,
        price_version: DEMO_PRICE_VERSION.into(),
    }
}

/// The demo catalog.
pub fn offers() -> Vec<ModelOffer> {
    vec![
        offer(
            "demo-mini",
            Decimal::new(15, 2),
            Decimal::new(60, 2),
            Decimal::new(75, 3),
            128_000,
        ),
        offer(
            "demo-pro",
            Decimal::new(250, 2),
            Decimal::new(1000, 2),
            Decimal::new(125, 2),
            128_000,
        ),
        offer(
            "demo-long",
            Decimal::new(125, 2),
            Decimal::new(500, 2),
            Decimal::new(625, 3),
            1_000_000,
        ),
        offer(
            "demo-embed",
            Decimal::new(2, 2),
            Decimal::ZERO,
            Decimal::ZERO,
            8_192,
        ),
    ]
}
