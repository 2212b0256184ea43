//! `lead-qualifier`: the plugin of an agency that runs a client's CRM lead
//! scoring agent.
//!
//! - **Units**: a `lead` per scored lead (a request tagged `lead=<id>` that
//!   completed).
//! - **Route**: the configured scoring model, with the fallback model.
//!   When the client has an optional monthly lead cap and has reached it,
//!   new leads are refused with a quota error before any provider call.
//! - **Price**: tiered per lead, from the leads already recorded this month
//!   (the host passes the usage so far): the first `tier1_leads` at
//!   `tier1_rate`, the rest at `tier2_rate`.

use tollgate_plugin_sdk::money;
use tollgate_plugin_sdk::prelude::*;

/// Per-client settings.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The scoring model.
    pub model: String,
    /// Tried if the scoring model fails.
    #[serde(default)]
    pub fallback_model: Option<String>,
    /// Leads per month charged at `tier1_rate`.
    pub tier1_leads: u32,
    /// Price per lead within the first tier.
    #[serde(with = "money::exact")]
    pub tier1_rate: Decimal,
    /// Price per lead beyond the first tier.
    #[serde(with = "money::exact")]
    pub tier2_rate: Decimal,
    /// Most leads per month, if capped.
    #[serde(default)]
    pub monthly_lead_cap: Option<u32>,
}

/// The plugin.
pub struct LeadQualifier;

fn is_lead(request: &RequestSummary) -> bool {
    request.tag("lead").is_some_and(|id| !id.is_empty())
}

fn leads_so_far(request: &RequestSummary) -> Decimal {
    request.usage_so_far.unit("lead")
}

/// The rate for the next lead, and which tier it falls in.
fn rate(config: &Config, request: &RequestSummary) -> (Decimal, u8) {
    if leads_so_far(request) < Decimal::from(config.tier1_leads) {
        (config.tier1_rate, 1)
    } else {
        (config.tier2_rate, 2)
    }
}

impl Plugin for LeadQualifier {
    type Config = Config;
    const DESCRIPTION: &'static str = "CRM lead scoring: leads as units, tiered per-lead pricing";

    fn validate(config: &Config) -> Result<(), String> {
        if config.tier1_rate < Decimal::ZERO || config.tier2_rate < Decimal::ZERO {
            return Err("tier rates must not be negative".into());
        }
        if config.model.is_empty() {
            return Err("model must be set".into());
        }
        Ok(())
    }

    fn route(
        config: &Config,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<RouteDecision, Rejection> {
        if is_lead(request)
            && let Some(cap) = config.monthly_lead_cap
            && leads_so_far(request) >= Decimal::from(cap)
        {
            return Err(Rejection::new(
                RejectionKind::QuotaExceeded,
                format!("the monthly cap of {cap} scored leads is reached"),
            ));
        }
        let find = |model: &str| offers.iter().find(|o| o.model == model);
        let Some(primary) = find(&config.model) else {
            return Err(Rejection::new(
                RejectionKind::Forbidden,
                format!(
                    "the scoring model `{}` is not available to this client",
                    config.model
                ),
            ));
        };
        let fallbacks = config
            .fallback_model
            .as_deref()
            .and_then(find)
            .filter(|o| !o.is(&primary.reference()))
            .map(ModelOffer::reference)
            .into_iter()
            .collect();
        let bound = if is_lead(request) {
            config.tier1_rate.max(config.tier2_rate)
        } else {
            Decimal::ZERO
        };
        Ok(RouteDecision {
            primary: primary.reference(),
            fallbacks,
            surcharge_bound: Some(bound),
        })
    }

    fn meter(
        _: &Config,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let scored = matches!(usage.outcome, Outcome::Completed | Outcome::Truncated);
        if is_lead(request) && scored {
            Ok(vec![BusinessUnit::new("lead", 1)])
        } else {
            Ok(Vec::new())
        }
    }

    fn price(
        config: &Config,
        request: &RequestSummary,
        _usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let leads: Decimal = units
            .iter()
            .filter(|u| u.name == "lead")
            .map(|u| u.quantity)
            .sum();
        if leads.is_zero() {
            return Ok(PriceQuote::zero());
        }
        let (rate, tier) = rate(config, request);
        let description = if tier == 1 {
            format!(
                "lead scored (tier 1: first {} this month)",
                config.tier1_leads
            )
        } else {
            "lead scored (tier 2)".to_owned()
        };
        Ok(PriceQuote {
            surcharge: leads * rate,
            description,
        })
    }
}

tollgate_plugin_sdk::export_plugin!(LeadQualifier);
