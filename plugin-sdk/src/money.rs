//! Exact money helpers. Amounts are [`Decimal`]; never use floats for money.
//!
//! Plugins compute exact, unrounded amounts: the ledger rounds once, when a
//! statement line is made, to the currency's minor units, half away from zero.

pub use tollgate_plugin_types::Decimal;

/// Serde support for `Decimal` fields in plugin configs, as JSON strings
/// (`"0.05"`); JSON numbers are refused because they are floats in most tools.
pub use tollgate_plugin_types::decimal::exact;
/// Serde support for `Option<Decimal>` fields, as optional JSON strings.
pub use tollgate_plugin_types::decimal::exact_opt;

/// Parses an exact decimal such as `"12.50"`; refuses exponents and floats' forms.
pub fn parse(text: &str) -> Result<Decimal, String> {
    tollgate_plugin_types::decimal::parse(text).map_err(|e| e.to_string())
}

/// `percent`% of `amount`, exactly (`percent_of(10, 15)` is 1.5).
pub fn percent_of(amount: Decimal, percent: Decimal) -> Decimal {
    amount * percent / Decimal::ONE_HUNDRED
}

/// The price of `tokens` tokens at `per_mtok` per million tokens, exactly.
pub fn tokens_cost(tokens: u32, per_mtok: Decimal) -> Decimal {
    Decimal::from(tokens) * per_mtok / Decimal::from(1_000_000u32)
}

/// The most a request can cost at `offer`'s prices: every prompt token at
/// the input price plus `max_output_tokens` at the output price. Useful for
/// declaring a surcharge bound for percentage margins.
pub fn max_cost(offer: &crate::ModelOffer, prompt_tokens: u32, max_output_tokens: u32) -> Decimal {
    tokens_cost(prompt_tokens, offer.input_per_mtok)
        + tokens_cost(max_output_tokens, offer.output_per_mtok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_exact() {
        assert_eq!(
            percent_of(Decimal::new(1, 1), Decimal::from(15)),
            Decimal::new(15, 3)
        );
        assert_eq!(tokens_cost(3, Decimal::new(15, 2)), Decimal::new(45, 8));
        assert!(parse("1e3").is_err());
    }
}
