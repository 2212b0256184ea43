//! `support-desk`: the plugin of an agency that runs a client's support chatbot.
//!
//! - **Units**: a `ticket` when a conversation tagged `ticket=<id>` opens (its
//!   first turn), an `answer` for every reply in a ticket, and an
//!   `escalation` when the client tags the request `escalate=true`.
//! - **Route**: escalations go to the strong model; short prompts go to the
//!   cheap model; anything else gets the model the client asked for. The
//!   other model is the fallback. Embeddings (the knowledge base) go to the
//!   model asked for.
//! - **Price**: a fee per ticket opened plus a percentage margin on the
//!   provider cost.

use tollgate_plugin_sdk::money::{self, percent_of};
use tollgate_plugin_sdk::prelude::*;

/// Per-client settings.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Charged once per ticket opened.
    #[serde(with = "money::exact")]
    pub ticket_fee: Decimal,
    /// Margin on provider cost, in percent.
    #[serde(with = "money::exact")]
    pub margin_percent: Decimal,
    /// Model for short questions.
    pub cheap_model: String,
    /// Model for escalations.
    pub strong_model: String,
    /// Prompts up to this many tokens count as short.
    #[serde(default = "default_short_prompt_tokens")]
    pub short_prompt_tokens: u32,
    /// A request with at most this many messages opens its ticket.
    #[serde(default = "default_opening_messages")]
    pub opening_messages: u32,
}

fn default_short_prompt_tokens() -> u32 {
    400
}

fn default_opening_messages() -> u32 {
    2
}

/// The plugin.
pub struct SupportDesk;

fn is_escalation(request: &RequestSummary) -> bool {
    matches!(request.tag("escalate"), Some("true" | "yes" | "1"))
}

fn opens_ticket(config: &Config, request: &RequestSummary) -> bool {
    request.tag("ticket").is_some() && request.message_count <= config.opening_messages
}

fn find<'a>(offers: &'a [ModelOffer], model: &str) -> Option<&'a ModelOffer> {
    offers.iter().find(|o| o.model == model)
}

impl Plugin for SupportDesk {
    type Config = Config;
    const DESCRIPTION: &'static str =
        "Support chatbot: tickets and answers as units, per-ticket fee plus margin";

    fn validate(config: &Config) -> Result<(), String> {
        if config.ticket_fee < Decimal::ZERO {
            return Err("ticket_fee must not be negative".into());
        }
        if config.margin_percent < Decimal::ZERO || config.margin_percent > Decimal::from(200) {
            return Err("margin_percent must be between 0 and 200".into());
        }
        if config.cheap_model.is_empty() || config.strong_model.is_empty() {
            return Err("cheap_model and strong_model must be set".into());
        }
        Ok(())
    }

    fn route(
        config: &Config,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<RouteDecision, Rejection> {
        if request.endpoint == Endpoint::Embeddings {
            // Knowledge-base embeddings: as requested, margin only.
            let mut decision = route_as_requested(request, offers)?;
            let max_cost = offers
                .iter()
                .find(|o| o.is(&decision.primary))
                .map(|o| money::max_cost(o, request.estimated_prompt_tokens, 0))
                .unwrap_or_default();
            decision.surcharge_bound = Some(percent_of(max_cost, config.margin_percent));
            return Ok(decision);
        }
        let cheap = find(offers, &config.cheap_model);
        let strong = find(offers, &config.strong_model);
        let preferred = if is_escalation(request) {
            strong
        } else if request.estimated_prompt_tokens <= config.short_prompt_tokens {
            cheap
        } else {
            find(offers, &request.requested_model).or(strong)
        };
        let Some(primary) = preferred.or(strong).or(cheap) else {
            return Err(Rejection::new(
                RejectionKind::Forbidden,
                "no support model is available to this client",
            ));
        };
        let fallbacks: Vec<&ModelOffer> = [strong, cheap]
            .into_iter()
            .flatten()
            .filter(|o| !o.is(&primary.reference()))
            .take(1)
            .collect();
        // The bound covers the most any attempt can cost: every prompt token
        // plus the whole remaining window (or max_tokens) of output.
        let max_cost = std::iter::once(primary)
            .chain(fallbacks.iter().copied())
            .map(|o| {
                let output = request.max_tokens.unwrap_or(
                    o.context_window
                        .saturating_sub(request.estimated_prompt_tokens),
                );
                money::max_cost(
                    o,
                    o.context_window
                        .min(request.estimated_prompt_tokens.saturating_mul(2)),
                    output,
                )
            })
            .max()
            .unwrap_or_default();
        let ticket_fee = if opens_ticket(config, request) {
            config.ticket_fee
        } else {
            Decimal::ZERO
        };
        Ok(RouteDecision {
            primary: primary.reference(),
            fallbacks: fallbacks.into_iter().map(ModelOffer::reference).collect(),
            surcharge_bound: Some(ticket_fee + percent_of(max_cost, config.margin_percent)),
        })
    }

    fn meter(
        config: &Config,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let mut units = Vec::new();
        if request.tag("ticket").is_none() {
            return Ok(units);
        }
        if opens_ticket(config, request) {
            units.push(BusinessUnit::new("ticket", 1));
        }
        if usage.outcome != Outcome::Failed && usage.output_tokens > 0 {
            units.push(BusinessUnit::new("answer", 1));
        }
        if is_escalation(request) {
            units.push(BusinessUnit::new("escalation", 1));
        }
        Ok(units)
    }

    fn price(
        config: &Config,
        _request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let tickets: Decimal = units
            .iter()
            .filter(|u| u.name == "ticket")
            .map(|u| u.quantity)
            .sum();
        let margin = percent_of(usage.provider_cost, config.margin_percent);
        let mut description = format!("{}% support margin", config.margin_percent.normalize());
        if !tickets.is_zero() {
            description = format!("ticket fee + {description}");
        }
        Ok(PriceQuote {
            surcharge: tickets * config.ticket_fee + margin,
            description,
        })
    }
}

tollgate_plugin_sdk::export_plugin!(SupportDesk);
