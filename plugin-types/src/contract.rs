//! Rust mirrors of the WIT records in `wit/v0.1/types.wit`.
//!
//! Field names follow the WIT names in snake case. JSON forms (used by
//! fixtures and `tollgate plugin run`) write money as strings, never numbers,
//! and most fields have defaults so a fixture states only what matters.

use crate::decimal::{exact, exact_map, exact_opt};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which OpenAI-style endpoint the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    #[default]
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

/// The client's usage so far in the current billing period. Requests still
/// in flight are not in it: concurrent ones never are, and with the ledger's
/// `batched` durability a request answered a moment ago may not be either.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeriodUsage {
    /// Start of the billing period, Unix milliseconds (UTC).
    pub period_start_ms: i64,
    /// Total charged to the client so far this period.
    #[serde(with = "exact")]
    pub spend: Decimal,
    /// Requests recorded so far this period.
    pub request_count: u64,
    /// Business units recorded so far this period, by unit name.
    #[serde(with = "exact_map")]
    pub units: BTreeMap<String, Decimal>,
}

impl PeriodUsage {
    /// The quantity of `unit` used so far this period (zero if none).
    pub fn unit(&self, unit: &str) -> Decimal {
        self.units.get(unit).copied().unwrap_or_default()
    }
}

/// A model a client may be routed to, with the provider's prices per million
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOffer {
    /// Model name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Upstream provider, e.g. `openai`.
    pub provider: String,
    /// Price per million input tokens.
    #[serde(with = "exact")]
    pub input_per_mtok: Decimal,
    /// Price per million output tokens.
    #[serde(with = "exact")]
    pub output_per_mtok: Decimal,
    /// Price per million cached input tokens.
    #[serde(with = "exact")]
    pub cached_input_per_mtok: Decimal,
    /// Context window in tokens.
    pub context_window: u32,
    /// Version of the price list.
    #[serde(default)]
    pub price_version: String,
}

impl ModelOffer {
    /// A reference naming this offer.
    pub fn reference(&self) -> OfferRef {
        OfferRef {
            model: self.model.clone(),
            provider: self.provider.clone(),
        }
    }

    /// Whether `r` names this offer.
    pub fn is(&self, r: &OfferRef) -> bool {
        self.model == r.model && self.provider == r.provider
    }

    /// The exact provider cost of a request with these token counts.
    /// Unrounded: rounding happens only on statement lines.
    pub fn cost(&self, input_tokens: u32, output_tokens: u32, cached_input_tokens: u32) -> Decimal {
        let per_token = |tokens: u32, per_mtok: Decimal| {
            Decimal::from(tokens) * per_mtok / Decimal::from(1_000_000u32)
        };
        per_token(input_tokens, self.input_per_mtok)
            + per_token(output_tokens, self.output_per_mtok)
            + per_token(cached_input_tokens, self.cached_input_per_mtok)
    }
}

/// Names one offer of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferRef {
    /// The offer's model.
    pub model: String,
    /// The offer's provider.
    pub provider: String,
}

/// What the host knows about a request before calling any provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestSummary {
    /// Unique id of this request.
    pub request_id: String,
    /// When the host received the request, Unix milliseconds (UTC).
    pub timestamp_ms: i64,
    /// The agency that owns the plugin.
    pub agency_id: String,
    /// The agency's client.
    pub client_id: String,
    /// The client's application.
    pub app_id: String,
    /// The endpoint called.
    pub endpoint: Endpoint,
    /// The model the client asked for.
    pub requested_model: String,
    /// Number of chat messages.
    pub message_count: u32,
    /// Prompt tokens counted by the host.
    pub estimated_prompt_tokens: u32,
    /// The request's `max_tokens`, if given.
    pub max_tokens: Option<u32>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The end user id, if given.
    pub end_user: Option<String>,
    /// ISO 4217 currency code of every amount.
    pub currency: String,
    /// Usage so far this billing period.
    pub usage_so_far: PeriodUsage,
    /// Tags the client attached, by lower-case key.
    pub tags: BTreeMap<String, String>,
}

impl Default for RequestSummary {
    fn default() -> Self {
        Self {
            request_id: "req-test".into(),
            timestamp_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            agency_id: "agency-test".into(),
            client_id: "client-test".into(),
            app_id: "app-test".into(),
            endpoint: Endpoint::ChatCompletions,
            requested_model: String::new(),
            message_count: 1,
            estimated_prompt_tokens: 0,
            max_tokens: None,
            stream: false,
            end_user: None,
            currency: "USD".into(),
            usage_so_far: PeriodUsage::default(),
            tags: BTreeMap::new(),
        }
    }
}

impl RequestSummary {
    /// The value of tag `key`, if the client attached it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// How a provider call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The model finished its answer.
    #[default]
    Completed,
    /// Cut off at `max_tokens` or the context window.
    Truncated,
    /// The stream stopped early (client disconnect or upstream cut-off).
    Interrupted,
    /// The provider call failed.
    Failed,
}

/// What a request actually consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// The offer that served the request.
    pub served_by: OfferRef,
    /// Input tokens excluding cached ones.
    pub input_tokens: u32,
    /// Output tokens.
    pub output_tokens: u32,
    /// Cached input tokens.
    pub cached_input_tokens: u32,
    /// The provider's cost for this request.
    #[serde(with = "exact")]
    pub provider_cost: Decimal,
    /// Wall time of the provider call, milliseconds.
    pub latency_ms: u32,
    /// How the call ended.
    pub outcome: Outcome,
    /// Whether token counts were estimated by the host.
    pub estimated: bool,
}

/// A quantity of a business unit for the client's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessUnit {
    /// Unit name, e.g. `ticket`.
    pub name: String,
    /// Quantity.
    #[serde(with = "exact")]
    pub quantity: Decimal,
}

impl BusinessUnit {
    /// A unit with a quantity.
    pub fn new(name: impl Into<String>, quantity: impl Into<Decimal>) -> Self {
        Self {
            name: name.into(),
            quantity: quantity.into(),
        }
    }
}

/// The plugin's routing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDecision {
    /// The offer to try first.
    pub primary: OfferRef,
    /// Offers to try in order if the primary fails.
    #[serde(default)]
    pub fallbacks: Vec<OfferRef>,
    /// The most `price` will charge for this request, if the plugin knows.
    #[serde(default, with = "exact_opt")]
    pub surcharge_bound: Option<Decimal>,
}

impl RouteDecision {
    /// Route to `primary` with no fallbacks and no declared bound.
    pub fn to(primary: OfferRef) -> Self {
        Self {
            primary,
            fallbacks: Vec::new(),
            surcharge_bound: None,
        }
    }

    /// The primary followed by the fallbacks, in the order to try them.
    pub fn attempts(&self) -> impl Iterator<Item = &OfferRef> {
        std::iter::once(&self.primary).chain(self.fallbacks.iter())
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectionKind {
    /// Malformed for this plugin (HTTP 400).
    InvalidRequest,
    /// Not allowed (HTTP 403).
    Forbidden,
    /// A plugin-enforced quota is used up (HTTP 429).
    QuotaExceeded,
}

/// A refusal to route, shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// Status family.
    pub kind: RejectionKind,
    /// Human-readable reason.
    pub message: String,
}

impl Rejection {
    /// A rejection of `kind` with `message`.
    pub fn new(kind: RejectionKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The agency's surcharge with its statement line description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceQuote {
    /// The surcharge.
    #[serde(with = "exact")]
    pub surcharge: Decimal,
    /// Short statement-line description.
    pub description: String,
}

impl PriceQuote {
    /// A zero surcharge.
    pub fn zero() -> Self {
        Self {
            surcharge: Decimal::ZERO,
            description: String::new(),
        }
    }
}

/// The plugin's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One-line description.
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(input: &str, output: &str, cached: &str) -> ModelOffer {
        ModelOffer {
            model: "m".into(),
            provider: "p".into(),
            input_per_mtok: input.parse().unwrap(),
            output_per_mtok: output.parse().unwrap(),
            cached_input_per_mtok: cached.parse().unwrap(),
            context_window: 128_000,
            price_version: "v1".into(),
        }
    }

    #[test]
    fn cost_is_exact_to_the_token() {
        let o = offer("0.15", "0.60", "0.075");
        // 1 input token at $0.15/M is $0.00000015: kept, not rounded away.
        assert_eq!(o.cost(1, 0, 0), "0.00000015".parse().unwrap());
        assert_eq!(
            o.cost(1_000, 500, 2_000),
            "0.00015".parse::<Decimal>().unwrap()
                + "0.0003".parse::<Decimal>().unwrap()
                + "0.00015".parse::<Decimal>().unwrap()
        );
    }

    #[test]
    fn request_json_needs_only_what_matters() {
        let r: RequestSummary = serde_json::from_str(
            r#"{"requested_model": "gpt-4o-mini", "tags": {"ticket": "T-1"},
                "usage_so_far": {"spend": "1.5", "units": {"lead": "3"}}}"#,
        )
        .unwrap();
        assert_eq!(r.tag("ticket"), Some("T-1"));
        assert_eq!(r.usage_so_far.unit("lead"), Decimal::from(3));
        assert_eq!(r.currency, "USD");
        assert!(serde_json::from_str::<RequestSummary>(r#"{"modle": "x"}"#).is_err());
    }
}
