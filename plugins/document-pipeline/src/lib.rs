//! `document-pipeline`: the plugin of an agency that runs a client's
//! document workflow (contracts summarised, invoices extracted).
//!
//! - **Units**: a `document` per processed request and its `page`s: the
//!   client's `pages` tag when given, otherwise the prompt's tokens divided
//!   by `tokens_per_page`, rounded up.
//! - **Route**: inputs longer than `long_input_tokens` (or than the standard
//!   model's window allows) go to the long-context model; a document longer
//!   than every window is refused before any provider is called.
//! - **Price**: a fee per document plus a fee per page.

use tollgate_plugin_sdk::money;
use tollgate_plugin_sdk::prelude::*;

/// Per-client settings.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Charged per page.
    #[serde(with = "money::exact")]
    pub page_fee: Decimal,
    /// Charged per document.
    #[serde(with = "money::exact")]
    pub document_fee: Decimal,
    /// Tokens that make one page when the client gives no `pages` tag.
    #[serde(default = "default_tokens_per_page")]
    pub tokens_per_page: u32,
    /// Model for ordinary documents.
    pub standard_model: String,
    /// Model for long documents.
    pub long_context_model: String,
    /// Prompts above this many tokens go to the long-context model.
    #[serde(default = "default_long_input_tokens")]
    pub long_input_tokens: u32,
}

fn default_tokens_per_page() -> u32 {
    500
}

fn default_long_input_tokens() -> u32 {
    16_000
}

/// Most pages one request may claim: a guard against a mistyped tag.
pub const MAX_PAGES: u32 = 10_000;

/// The plugin.
pub struct DocumentPipeline;

/// Pages of the document in `request`, or why the request is malformed.
fn pages(config: &Config, request: &RequestSummary) -> Result<u32, String> {
    match request.tag("pages") {
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGES).contains(&n) => Ok(n),
            _ => Err(format!(
                "tag `pages` must be a whole number from 1 to {MAX_PAGES}, got {text:?}"
            )),
        },
        None => Ok(request
            .estimated_prompt_tokens
            .div_ceil(config.tokens_per_page)
            .max(1)),
    }
}

fn find<'a>(offers: &'a [ModelOffer], model: &str) -> Option<&'a ModelOffer> {
    offers.iter().find(|o| o.model == model)
}

fn fits(offer: &ModelOffer, request: &RequestSummary) -> bool {
    let output = request.max_tokens.unwrap_or(0);
    u64::from(request.estimated_prompt_tokens) + u64::from(output)
        <= u64::from(offer.context_window)
}

impl Plugin for DocumentPipeline {
    type Config = Config;
    const DESCRIPTION: &'static str =
        "Document workflow: documents and pages as units, per-page fee";

    fn validate(config: &Config) -> Result<(), String> {
        if config.page_fee < Decimal::ZERO || config.document_fee < Decimal::ZERO {
            return Err("page_fee and document_fee must not be negative".into());
        }
        if config.tokens_per_page == 0 {
            return Err("tokens_per_page must be at least 1".into());
        }
        Ok(())
    }

    fn route(
        config: &Config,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<RouteDecision, Rejection> {
        if request.endpoint == Endpoint::Embeddings {
            return route_as_requested(request, offers);
        }
        let pages =
            pages(config, request).map_err(|m| Rejection::new(RejectionKind::InvalidRequest, m))?;
        let standard = find(offers, &config.standard_model);
        let long = find(offers, &config.long_context_model);
        let wants_long = request.estimated_prompt_tokens > config.long_input_tokens
            || standard.is_none_or(|o| !fits(o, request));
        let candidates: Vec<&ModelOffer> = if wants_long {
            long.into_iter().collect()
        } else {
            standard.into_iter().chain(long).collect()
        };
        let mut usable = candidates.into_iter().filter(|o| fits(o, request));
        let Some(primary) = usable.next() else {
            let longest = offers.iter().map(|o| o.context_window).max().unwrap_or(0);
            return Err(Rejection::new(
                RejectionKind::InvalidRequest,
                format!(
                    "document too long: {} prompt tokens, the longest model available takes {longest}",
                    request.estimated_prompt_tokens
                ),
            ));
        };
        Ok(RouteDecision {
            primary: primary.reference(),
            fallbacks: usable.map(ModelOffer::reference).collect(),
            surcharge_bound: Some(config.document_fee + config.page_fee * Decimal::from(pages)),
        })
    }

    fn meter(
        config: &Config,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        if usage.outcome == Outcome::Failed || request.endpoint == Endpoint::Embeddings {
            return Ok(Vec::new());
        }
        Ok(vec![
            BusinessUnit::new("document", 1),
            BusinessUnit::new("page", pages(config, request)?),
        ])
    }

    fn price(
        config: &Config,
        _request: &RequestSummary,
        _usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String> {
        let count = |name: &str| -> Decimal {
            units
                .iter()
                .filter(|u| u.name == name)
                .map(|u| u.quantity)
                .sum()
        };
        let (documents, pages) = (count("document"), count("page"));
        Ok(PriceQuote {
            surcharge: documents * config.document_fee + pages * config.page_fee,
            description: format!(
                "{} document(s), {} page(s)",
                documents.normalize(),
                pages.normalize()
            ),
        })
    }
}

tollgate_plugin_sdk::export_plugin!(DocumentPipeline);
