//! Conversions between the plain contract types and the generated bindings,
//! and the size accounting for the input and output caps.
//!
//! Decimals from a plugin are parsed with the strict wire grammar; a plugin
//! that sends anything else fails with a typed error naming the field.

use super::bindings::v0_1::tollgate::plugin::types as w;
use super::error::PluginError;
use tollgate_plugin_types::{self as t, decimal};

fn dec_out(field: &'static str, text: &str) -> Result<t::Decimal, PluginError> {
    decimal::parse(text).map_err(|e| PluginError::InvalidOutput(format!("{field}: {e}")))
}

fn fmt(d: &t::Decimal) -> String {
    decimal::format(d)
}

pub(super) fn request(r: &t::RequestSummary) -> w::RequestSummary {
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
            spend: fmt(&r.usage_so_far.spend),
            request_count: r.usage_so_far.request_count,
            units: r
                .usage_so_far
                .units
                .iter()
                .map(|(unit, quantity)| w::UnitCount {
                    unit: unit.clone(),
                    quantity: fmt(quantity),
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

pub(super) fn offer(o: &t::ModelOffer) -> w::ModelOffer {
    w::ModelOffer {
        model: o.model.clone(),
        provider: o.provider.clone(),
        input_per_mtok: fmt(&o.input_per_mtok),
        output_per_mtok: fmt(&o.output_per_mtok),
        cached_input_per_mtok: fmt(&o.cached_input_per_mtok),
        context_window: o.context_window,
        price_version: o.price_version.clone(),
    }
}

pub(super) fn usage(u: &t::Usage) -> w::Usage {
    w::Usage {
        served_by: offer_ref_in(&u.served_by),
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cached_input_tokens,
        provider_cost: fmt(&u.provider_cost),
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

fn offer_ref_in(r: &t::OfferRef) -> w::OfferRef {
    w::OfferRef {
        model: r.model.clone(),
        provider: r.provider.clone(),
    }
}

fn offer_ref_out(r: w::OfferRef) -> t::OfferRef {
    t::OfferRef {
        model: r.model,
        provider: r.provider,
    }
}

pub(super) fn unit_in(u: &t::BusinessUnit) -> w::BusinessUnit {
    w::BusinessUnit {
        name: u.name.clone(),
        quantity: fmt(&u.quantity),
    }
}

pub(super) fn route_out(
    r: Result<w::RouteDecision, w::Rejection>,
) -> Result<Result<t::RouteDecision, t::Rejection>, PluginError> {
    Ok(match r {
        Ok(d) => Ok(t::RouteDecision {
            primary: offer_ref_out(d.primary),
            fallbacks: d.fallbacks.into_iter().map(offer_ref_out).collect(),
            surcharge_bound: d
                .surcharge_bound
                .map(|b| dec_out("surcharge-bound", &b))
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

pub(super) fn units_out(units: Vec<w::BusinessUnit>) -> Result<Vec<t::BusinessUnit>, PluginError> {
    units
        .into_iter()
        .map(|u| {
            Ok(t::BusinessUnit {
                quantity: dec_out("business-unit.quantity", &u.quantity)?,
                name: u.name,
            })
        })
        .collect()
}

pub(super) fn quote_out(q: w::PriceQuote) -> Result<t::PriceQuote, PluginError> {
    Ok(t::PriceQuote {
        surcharge: dec_out("price-quote.surcharge", &q.surcharge)?,
        description: q.description,
    })
}

pub(super) fn info_out(i: w::PluginInfo) -> t::PluginInfo {
    t::PluginInfo {
        name: i.name,
        version: i.version,
        description: i.description,
    }
}

/// Bytes a value occupies when passed across the boundary, counted as its
/// strings plus a fixed overhead per record, so a cap can be enforced before
/// copying anything into the guest.
pub(super) trait WireSize {
    fn wire_size(&self) -> usize;
}

const RECORD_OVERHEAD: usize = 16;

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

impl WireSize for w::RequestSummary {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD * 4
            + self.request_id.wire_size()
            + self.agency_id.wire_size()
            + self.client_id.wire_size()
            + self.app_id.wire_size()
            + self.requested_model.wire_size()
            + self.end_user.as_ref().map_or(0, |u| u.wire_size())
            + self.currency.wire_size()
            + self.usage_so_far.spend.wire_size()
            + self
                .usage_so_far
                .units
                .iter()
                .map(|u| RECORD_OVERHEAD + u.unit.wire_size() + u.quantity.wire_size())
                .sum::<usize>()
            + self
                .tags
                .iter()
                .map(|t| RECORD_OVERHEAD + t.key.wire_size() + t.value.wire_size())
                .sum::<usize>()
    }
}

impl WireSize for w::ModelOffer {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD
            + self.model.wire_size()
            + self.provider.wire_size()
            + self.input_per_mtok.wire_size()
            + self.output_per_mtok.wire_size()
            + self.cached_input_per_mtok.wire_size()
            + self.price_version.wire_size()
    }
}

impl WireSize for w::OfferRef {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD + self.model.wire_size() + self.provider.wire_size()
    }
}

impl WireSize for w::Usage {
    fn wire_size(&self) -> usize {
        RECORD_OVERHEAD * 2 + self.served_by.wire_size() + self.provider_cost.wire_size()
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
