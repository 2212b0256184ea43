//! Checks on what a plugin returns, shared by the host and the native test
//! harness so a plugin that passes its unit tests cannot be refused by the
//! gateway for a reason the tests never saw.
//!
//! Plugins are untrusted: each check names what is wrong in words an agency
//! developer can act on.

use crate::contract::{BusinessUnit, ModelOffer, OfferRef, PriceQuote, Rejection, RouteDecision};
use rust_decimal::Decimal;
use std::collections::HashSet;

/// Most business units one `meter` call may return.
pub const MAX_UNITS: usize = 64;
/// Longest unit name.
pub const MAX_UNIT_NAME: usize = 64;
/// Largest quantity of one unit in one request; anything above is a bug.
pub const MAX_UNIT_QUANTITY: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Most fallbacks a route may list.
pub const MAX_FALLBACKS: usize = 16;
/// Longest statement-line description.
pub const MAX_DESCRIPTION: usize = 200;
/// Longest rejection message.
pub const MAX_REJECTION_MESSAGE: usize = 500;
/// Most decimal places a surcharge may carry.
pub const MAX_SURCHARGE_SCALE: u32 = 12;

/// A plugin output that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOutput {
    /// The route names an offer the client was not offered.
    #[error("route names {model} from {provider}, which is not in the client's catalog")]
    UnknownOffer {
        /// The model named.
        model: String,
        /// The provider named.
        provider: String,
    },
    /// The same offer appears twice among primary and fallbacks.
    #[error("route lists {model} from {provider} more than once")]
    DuplicateOffer {
        /// The model named.
        model: String,
        /// The provider named.
        provider: String,
    },
    /// Too many fallbacks.
    #[error("route lists {0} fallbacks (at most {MAX_FALLBACKS})")]
    TooManyFallbacks(usize),
    /// A negative surcharge bound.
    #[error("surcharge bound {0} is negative")]
    NegativeBound(Decimal),
    /// Too many business units.
    #[error("meter returned {0} units (at most {MAX_UNITS})")]
    TooManyUnits(usize),
    /// A unit name outside the allowed alphabet or length.
    #[error(
        "unit name {0:?} is invalid (1 to {MAX_UNIT_NAME} lower-case letters, digits, `-`, `_` or `.`)"
    )]
    BadUnitName(String),
    /// The same unit twice.
    #[error("unit {0:?} appears more than once")]
    DuplicateUnit(String),
    /// A negative or absurdly large quantity.
    #[error("unit {name:?} has quantity {quantity} (must be 0 to {MAX_UNIT_QUANTITY})")]
    BadQuantity {
        /// The unit.
        name: String,
        /// The quantity returned.
        quantity: Decimal,
    },
    /// A negative surcharge.
    #[error("surcharge {0} is negative")]
    NegativeSurcharge(Decimal),
    /// A surcharge with more decimal places than any currency needs.
    #[error("surcharge {0} has more than {MAX_SURCHARGE_SCALE} decimal places")]
    SurchargeTooPrecise(Decimal),
    /// A surcharge above the bound the route declared (or the host's cap).
    #[error("surcharge {surcharge} is above the bound {bound}")]
    SurchargeAboveBound {
        /// The surcharge returned.
        surcharge: Decimal,
        /// The bound in force.
        bound: Decimal,
    },
    /// An over-long text field.
    #[error("{field} is {len} characters long (at most {max})")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Checks a route decision against the offers the client may use.
pub fn check_route(decision: &RouteDecision, offers: &[ModelOffer]) -> Result<(), InvalidOutput> {
    if decision.fallbacks.len() > MAX_FALLBACKS {
        return Err(InvalidOutput::TooManyFallbacks(decision.fallbacks.len()));
    }
    let mut seen: HashSet<&OfferRef> = HashSet::new();
    for attempt in decision.attempts() {
        if !offers.iter().any(|o| o.is(attempt)) {
            return Err(InvalidOutput::UnknownOffer {
                model: attempt.model.clone(),
                provider: attempt.provider.clone(),
            });
        }
        if !seen.insert(attempt) {
            return Err(InvalidOutput::DuplicateOffer {
                model: attempt.model.clone(),
                provider: attempt.provider.clone(),
            });
        }
    }
    match decision.surcharge_bound {
        Some(b) if b.is_sign_negative() && !b.is_zero() => Err(InvalidOutput::NegativeBound(b)),
        _ => Ok(()),
    }
}

/// Checks a rejection's message length.
pub fn check_rejection(rejection: &Rejection) -> Result<(), InvalidOutput> {
    check_len(
        "rejection message",
        &rejection.message,
        MAX_REJECTION_MESSAGE,
    )
}

/// Checks the units `meter` returned.
pub fn check_units(units: &[BusinessUnit]) -> Result<(), InvalidOutput> {
    if units.len() > MAX_UNITS {
        return Err(InvalidOutput::TooManyUnits(units.len()));
    }
    let mut names = HashSet::new();
    for unit in units {
        let name_ok = !unit.name.is_empty()
            && unit.name.len() <= MAX_UNIT_NAME
            && unit
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !name_ok {
            return Err(InvalidOutput::BadUnitName(truncate(&unit.name)));
        }
        if !names.insert(unit.name.as_str()) {
            return Err(InvalidOutput::DuplicateUnit(unit.name.clone()));
        }
        if unit.quantity.is_sign_negative() && !unit.quantity.is_zero()
            || unit.quantity > MAX_UNIT_QUANTITY
        {
            return Err(InvalidOutput::BadQuantity {
                name: unit.name.clone(),
                quantity: unit.quantity,
            });
        }
    }
    Ok(())
}

/// Checks a price quote against the bound in force for the request.
pub fn check_quote(quote: &PriceQuote, bound: Decimal) -> Result<(), InvalidOutput> {
    let s = quote.surcharge;
    if s.is_sign_negative() && !s.is_zero() {
        return Err(InvalidOutput::NegativeSurcharge(s));
    }
    if s.normalize().scale() > MAX_SURCHARGE_SCALE {
        return Err(InvalidOutput::SurchargeTooPrecise(s));
    }
    if s > bound {
        return Err(InvalidOutput::SurchargeAboveBound {
            surcharge: s,
            bound,
        });
    }
    check_len("description", &quote.description, MAX_DESCRIPTION)
}

fn check_len(field: &'static str, text: &str, max: usize) -> Result<(), InvalidOutput> {
    let len = text.chars().count();
    if len > max {
        return Err(InvalidOutput::TextTooLong { field, len, max });
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_UNIT_NAME + 8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(model: &str) -> ModelOffer {
        ModelOffer {
            model: model.into(),
            provider: "p".into(),
            input_per_mtok: Decimal::ONE,
            output_per_mtok: Decimal::ONE,
            cached_input_per_mtok: Decimal::ONE,
            context_window: 1000,
            price_version: "v1".into(),
        }
    }

    fn r(model: &str) -> OfferRef {
        OfferRef {
            model: model.into(),
            provider: "p".into(),
        }
    }

    #[test]
    fn routes_must_name_offered_models_once() {
        let offers = [offer("a"), offer("b")];
        let mut d = RouteDecision::to(r("a"));
        d.fallbacks.push(r("b"));
        assert_eq!(check_route(&d, &offers), Ok(()));
        d.fallbacks.push(r("a"));
        assert!(matches!(
            check_route(&d, &offers),
            Err(InvalidOutput::DuplicateOffer { .. })
        ));
        let d = RouteDecision::to(r("z"));
        assert!(matches!(
            check_route(&d, &offers),
            Err(InvalidOutput::UnknownOffer { .. })
        ));
    }

    #[test]
    fn units_are_named_and_bounded() {
        assert_eq!(check_units(&[BusinessUnit::new("page", 12)]), Ok(()));
        for bad in ["", "Page", "pa ge", "ticket!", &"x".repeat(65)] {
            assert!(
                check_units(&[BusinessUnit::new(bad, 1)]).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_units(&[BusinessUnit::new("page", -1)]).is_err());
        assert!(check_units(&[BusinessUnit::new("page", 2_000_000_000i64)]).is_err());
        let dup = [BusinessUnit::new("page", 1), BusinessUnit::new("page", 2)];
        assert_eq!(
            check_units(&dup),
            Err(InvalidOutput::DuplicateUnit("page".into()))
        );
        let many: Vec<_> = (0..65)
            .map(|i| BusinessUnit::new(format!("u{i}"), 1))
            .collect();
        assert_eq!(check_units(&many), Err(InvalidOutput::TooManyUnits(65)));
    }

    #[test]
    fn quotes_are_non_negative_and_within_bound() {
        let q = |s: &str| PriceQuote {
            surcharge: s.parse().unwrap(),
            description: "x".into(),
        };
        let bound = Decimal::from(5);
        assert_eq!(check_quote(&q("0"), bound), Ok(()));
        assert_eq!(check_quote(&q("5"), bound), Ok(()));
        assert!(matches!(
            check_quote(&q("-0.01"), bound),
            Err(InvalidOutput::NegativeSurcharge(_))
        ));
        assert!(matches!(
            check_quote(&q("5.01"), bound),
            Err(InvalidOutput::SurchargeAboveBound { .. })
        ));
        assert!(matches!(
            check_quote(&q("0.0000000000001"), bound),
            Err(InvalidOutput::SurchargeTooPrecise(_))
        ));
    }
}
