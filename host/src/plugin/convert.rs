//! Conversions between the plain contract types and each contract version's
//! generated bindings, and the size accounting for the input and output caps.
//!
//! The versions differ only in how a decimal crosses the boundary (text in
//! 0.1, a mantissa-and-scale record in 0.2), so the conversions are written
//! once, in `conversions!`, over [`WireDecimal`]. A decimal from a plugin that
//! does not decode exactly fails with a typed error naming the field.

use super::error::PluginError;
use tollgate_plugin_types::{self as t, decimal};

/// How one contract version carries a decimal.
pub(super) trait WireDecimal: Sized + WireSize {
    fn encode(d: &t::Decimal) -> Self;
    fn decode(self, field: &'static str) -> Result<t::Decimal, PluginError>;
}

/// 0.1: the strict text grammar.
impl WireDecimal for String {
    fn encode(d: &t::Decimal) -> Self {
        decimal::format(d)
    }

    fn decode(self, field: &'static str) -> Result<t::Decimal, PluginError> {
        decimal::parse(&self).map_err(|e| PluginError::InvalidOutput(format!("{field}: {e}")))
    }
}

type DecimalV0_2 = super::bindings::v0_2::tollgate::plugin::types::Decimal;

/// 0.2: `rust_decimal`'s own layout, a 96-bit mantissa and a scale.
impl WireDecimal for DecimalV0_2 {
    fn encode(d: &t::Decimal) -> Self {
        let p = decimal::to_parts(d);
        DecimalV0_2 {
            mantissa_low: p.mantissa_low,
            mantissa_high: p.mantissa_high,
            scale: p.scale,
            negative: p.negative,
        }
    }

    fn decode(self, field: &'static str) -> Result<t::Decimal, PluginError> {
        decimal::from_parts(decimal::Parts {
            mantissa_low: self.mantissa_low,
            mantissa_high: self.mantissa_high,
            scale: self.scale,
            negative: self.negative,
        })
        .map_err(|e| PluginError::InvalidOutput(format!("{field}: {e}")))
    }
}

impl WireSize for DecimalV0_2 {
    fn wire_size(&self) -> usize {
        16
    }
}

/// The conversions of one version, written against `w`, the version's
/// `types` module in scope at the call site.
macro_rules! conversions {
    () => {
        use super::{RECORD_OVERHEAD, WireDecimal, WireSize};
        use crate::plugin::error::PluginError;
        use tollgate_plugin_types as t;

        fn wire(d: &t::Decimal) -> w::Decimal {
            WireDecimal::encode(d)
        }

        pub(in crate::plugin) fn request(r: &t::RequestSummary) -> w::RequestSummary {
            w::RequestSummary {
                request_id: r.request_id.clone(),
                timestamp_ms: r.timestamp_ms,
                agency_id: r.agency_id.clone(),
                client_id: r.client_id.clone(),
                app_id: r.app_id.clone(),
                endpoint: match r.endpoint {
                    t::Endpoint::ChatCompletions => w::Endpoint::ChatCompletions,
                    t::Endpoint::Embeddings => w::Endpoint::Embeddings,
                },
                requested_model: r.requested_model.clone(),
                message_count: r.message_count,
                estimated_prompt_tokens: r.estimated_prompt_tokens,
                max_tokens: r.max_tokens,
                stream: r.stream,
                end_user: r.end_user.clone(),
                currency: r.currency.clone(),
                usage_so_far: w::PeriodUsage {
                    period_start_ms: r.usage_so_far.period_start_ms,
                    spend: wire(&r.usage_so_far.spend),
                    request_count: r.usage_so_far.request_count,
                    units: r
                        .usage_so_far
                        .units
                        .iter()
                        .map(|(unit, quantity)| w::UnitCount {
                            unit: unit.clone(),
                            quantity: wire(quantity),
                        })
                        .collect(),
                },
                tags: r
                    .tags
                    .iter()
                    .map(|(key, value)| w::Tag {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            }
        }

        pub(in crate::plugin) fn offers(offers: &[t::ModelOffer]) -> Vec<w::ModelOffer> {
            offers
                .iter()
                .map(|o| w::ModelOffer {
                    model: o.model.clone(),
                    provider: o.provider.clone(),
                    input_per_mtok: wire(&o.input_per_mtok),
                    output_per_mtok: wire(&o.output_per_mtok),
                    cached_input_per_mtok: wire(&o.cached_input_per_mtok),
                    context_window: o.context_window,
                    price_version: o.price_version.clone(),
                })
                .collect()
        }

        pub(in crate::plugin) fn usage(u: &t::Usage) -> w::Usage {
            w::Usage {
                served_by: w::OfferRef {
                    model: u.served_by.model.clone(),
                    provider: u.served_by.provider.clone(),
                },
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cached_input_tokens: u.cached_input_tokens,
                provider_cost: wire(&u.provider_cost),
                latency_ms: u.latency_ms,
                outcome: match u.outcome {
                    t::Outcome::Completed => w::Outcome::Completed,
                    t::Outcome::Truncated => w::Outcome::Truncated,
                    t::Outcome::Interrupted => w::Outcome::Interrupted,
                    t::Outcome::Failed => w::Outcome::Failed,
                },
                estimated: u.estimated,
            }
        }

        pub(in crate::plugin) fn units(units: &[t::BusinessUnit]) -> Vec<w::BusinessUnit> {
            units
                .iter()
                .map(|u| w::BusinessUnit {
                    name: u.name.clone(),
                    quantity: wire(&u.quantity),
                })
                .collect()
        }

        fn offer_ref_out(r: w::OfferRef) -> t::OfferRef {
            t::OfferRef {
                model: r.model,
                provider: r.provider,
            }
        }

        pub(in crate::plugin) fn route_out(
            r: Result<w::RouteDecision, w::Rejection>,
        ) -> Result<Result<t::RouteDecision, t::Rejection>, PluginError> {
            Ok(match r {
                Ok(d) => Ok(t::RouteDecision {
                    primary: offer_ref_out(d.primary),
                    fallbacks: d.fallbacks.into_iter().map(offer_ref_out).collect(),
                    surcharge_bound: d
                        .surcharge_bound
                        .map(|b| b.decode("surcharge-bound"))
                        .transpose()?,
                }),
                Err(j) => Err(t::Rejection {
                    kind: match j.kind {
                        w::RejectionKind::InvalidRequest => t::RejectionKind::InvalidRequest,
                        w::RejectionKind::Forbidden => t::RejectionKind::Forbidden,
                        w::RejectionKind::QuotaExceeded => t::RejectionKind::QuotaExceeded,
                    },
                    message: j.message,
                }),
            })
        }

        pub(in crate::plugin) fn units_out(
            units: Vec<w::BusinessUnit>,
        ) -> Result<Vec<t::BusinessUnit>, PluginError> {
            units
                .into_iter()
                .map(|u| {
                    Ok(t::BusinessUnit {
                        quantity: u.quantity.decode("business-unit.quantity")?,
                        name: u.name,
                    })
                })
                .collect()
        }

        pub(in crate::plugin) fn quote_out(q: w::PriceQuote) -> Result<t::PriceQuote, PluginError> {
            Ok(t::PriceQuote {
                surcharge: q.surcharge.decode("price-quote.surcharge")?,
                description: q.description,
            })
        }

        pub(in crate::plugin) fn info_out(i: w::PluginInfo) -> t::PluginInfo {
            t::PluginInfo {
                name: i.name,
                version: i.version,
                description: i.description,
            }
        }

        impl WireSize for w::OfferRef {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD + self.model.wire_size() + self.provider.wire_size()
            }
        }

        impl WireSize for w::BusinessUnit {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD + self.name.wire_size() + self.quantity.wire_size()
            }
        }

        impl WireSize for w::RouteDecision {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD
                    + self.primary.wire_size()
                    + self.fallbacks.wire_size()
                    + self.surcharge_bound.as_ref().map_or(0, |b| b.wire_size())
            }
        }

        impl WireSize for w::Rejection {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD + self.message.wire_size()
            }
        }

        impl WireSize for w::PriceQuote {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD + self.surcharge.wire_size() + self.description.wire_size()
            }
        }

        impl WireSize for w::PluginInfo {
            fn wire_size(&self) -> usize {
                RECORD_OVERHEAD
                    + self.name.wire_size()
                    + self.version.wire_size()
                    + self.description.wire_size()
            }
        }
    };
}

/// `tollgate:plugin@0.1`.
pub(super) mod v0_1 {
    use crate::plugin::bindings::v0_1::tollgate::plugin::types as w;
    conversions!();
}

/// `tollgate:plugin@0.2`.
pub(super) mod v0_2 {
    use crate::plugin::bindings::v0_2::tollgate::plugin::types as w;
    conversions!();
}

/// Bytes a value occupies when passed across the boundary, counted as its
/// strings plus a fixed overhead per record, so a cap can be enforced before
/// copying anything into the guest.
pub(super) trait WireSize {
    fn wire_size(&self) -> usize;
}

const RECORD_OVERHEAD: usize = 16;

/// What a decimal counts for in the input cap, in either encoding: the
/// longest text form (sign, 28 digits, point) plus a string's overhead.
const DECIMAL_INPUT: usize = 38;

impl WireSize for str {
    fn wire_size(&self) -> usize {
        self.len() + 8
    }
}

impl WireSize for String {
    fn wire_size(&self) -> usize {
        self.as_str().wire_size()
    }
}

impl<T: WireSize> WireSize for [T] {
    fn wire_size(&self) -> usize {
        8 + self.iter().map(WireSize::wire_size).sum::<usize>()
    }
}

impl<T: WireSize> WireSize for Vec<T> {
    fn wire_size(&self) -> usize {
        self.as_slice().wire_size()
    }
}

impl<T: WireSize, E: WireSize> WireSize for Result<T, E> {
    fn wire_size(&self) -> usize {
        match self {
            Ok(v) => v.wire_size(),
            Err(e) => e.wire_size(),
        }
    }
}

impl WireSize for () {
    fn wire_size(&self) -> usize {
        0
    }
}

// Inputs are measured on the plain types, before any version's conversion.

impl WireSize for t::RequestSummary {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD * 4
            + self.request_id.wire_size()
            + self.agency_id.wire_size()
            + self.client_id.wire_size()
            + self.app_id.wire_size()
            + self.requested_model.wire_size()
            + self.end_user.as_ref().map_or(0, |u| u.wire_size())
            + self.currency.wire_size()
            + DECIMAL_INPUT
            + self
                .usage_so_far
                .units
                .keys()
                .map(|unit| RECORD_OVERHEAD + unit.wire_size() + DECIMAL_INPUT)
                .sum::<usize>()
            + self
                .tags
                .iter()
                .map(|(key, value)| RECORD_OVERHEAD + key.wire_size() + value.wire_size())
                .sum::<usize>()
    }
}

impl WireSize for t::ModelOffer {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD
            + self.model.wire_size()
            + self.provider.wire_size()
            + 3 * DECIMAL_INPUT
            + self.price_version.wire_size()
    }
}

impl WireSize for t::Usage {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD * 3
            + self.served_by.model.wire_size()
            + self.served_by.provider.wire_size()
            + DECIMAL_INPUT
    }
}

impl WireSize for t::BusinessUnit {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD + self.name.wire_size() + DECIMAL_INPUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v0_2_decimal_round_trips_and_a_scale_above_28_is_invalid_output() {
        let d: t::Decimal = "-0.000125".parse().unwrap();
        assert_eq!(DecimalV0_2::encode(&d).decode("x").unwrap(), d);
        let bad = DecimalV0_2 {
            mantissa_low: 1,
            mantissa_high: 0,
            scale: 29,
            negative: false,
        };
        match bad.decode("price-quote.surcharge") {
            Err(PluginError::InvalidOutput(msg)) => {
                assert_eq!(msg, "price-quote.surcharge: scale 29 is above 28");
            }
            other => panic!("{other:?}"),
        }
    }
}
