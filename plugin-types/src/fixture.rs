//! Fixture cases: a plugin's inputs and the outputs it must produce.
//!
//! A fixture folder holds one sub-folder per case, each with `input.json`
//! and `expected.json`, plus an optional `catalog.json` at the top with the
//! offers used by cases that list none. The same folder is run natively by
//! the SDK's test harness (`cargo test`) and against the built Wasm by
//! `tollgate plugin test`, so both must agree.
//!
//! `expected.json` states only what the case is about; absent keys are not
//! checked.

use crate::contract::{
    BusinessUnit, ModelOffer, OfferRef, Outcome, PriceQuote, Rejection, RejectionKind,
    RequestSummary, RouteDecision, Usage,
};
use crate::decimal::{exact_map, exact_opt};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A failure to read fixtures (not a failing case).
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid for its role.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A case lists no offers and the folder has no `catalog.json`.
    #[error("case {0} lists no offers and there is no catalog.json")]
    NoOffers(String),
    /// The folder holds no cases.
    #[error("no fixture cases in {0} (expected sub-folders with input.json and expected.json)")]
    Empty(PathBuf),
}

/// The inputs of one case, also the format of `tollgate plugin run` files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseInput {
    /// The binding's configuration: a JSON value passed to the plugin as text.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// The request summary.
    pub request: RequestSummary,
    /// The offers; defaults to the folder's `catalog.json`.
    #[serde(default)]
    pub offers: Option<Vec<ModelOffer>>,
    /// What the request consumed; defaults are derived from the route.
    #[serde(default)]
    pub usage: UsageInput,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Renders a configuration value as the text the plugin receives: a JSON
/// string is passed as-is, anything else as compact JSON.
pub fn config_text(config: &serde_json::Value) -> String {
    match config {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Usage as written in fixtures: anything left out is derived.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageInput {
    /// The serving offer; defaults to the route's primary.
    pub served_by: Option<OfferRef>,
    /// Input tokens; defaults to the request's estimated prompt tokens.
    pub input_tokens: Option<u32>,
    /// Output tokens.
    pub output_tokens: u32,
    /// Cached input tokens.
    pub cached_input_tokens: u32,
    /// Provider cost; defaults to the serving offer's prices applied to the tokens.
    #[serde(with = "exact_opt")]
    pub provider_cost: Option<Decimal>,
    /// Latency in milliseconds.
    pub latency_ms: u32,
    /// How the call ended.
    pub outcome: Outcome,
    /// Whether the counts were estimated.
    pub estimated: bool,
}

impl UsageInput {
    /// Fills in derived fields for a request routed by `decision`.
    pub fn resolve(
        &self,
        request: &RequestSummary,
        decision: &RouteDecision,
        offers: &[ModelOffer],
    ) -> Usage {
        let served_by = self
            .served_by
            .clone()
            .unwrap_or_else(|| decision.primary.clone());
        let input_tokens = self.input_tokens.unwrap_or(request.estimated_prompt_tokens);
        let provider_cost = self.provider_cost.unwrap_or_else(|| {
            offers
                .iter()
                .find(|o| o.is(&served_by))
                .map(|o| o.cost(input_tokens, self.output_tokens, self.cached_input_tokens))
                .unwrap_or_default()
        });
        Usage {
            served_by,
            input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            provider_cost,
            latency_ms: self.latency_ms,
            outcome: self.outcome,
            estimated: self.estimated,
        }
    }
}

/// What a case must produce. Absent keys are not checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expected {
    /// The config must be refused with a message containing this.
    pub config_error: Option<String>,
    /// The primary route.
    pub route: Option<OfferRef>,
    /// The fallbacks, in order.
    pub fallbacks: Option<Vec<OfferRef>>,
    /// The declared surcharge bound.
    #[serde(with = "exact_opt")]
    pub surcharge_bound: Option<Decimal>,
    /// The request must be rejected.
    pub rejected: Option<ExpectedRejection>,
    /// The exact set of business units.
    #[serde(with = "exact_map_opt")]
    pub units: Option<BTreeMap<String, Decimal>>,
    /// The surcharge.
    #[serde(with = "exact_opt")]
    pub surcharge: Option<Decimal>,
    /// The statement description must contain this.
    pub description_contains: Option<String>,
    /// `meter` or `price` must fail with a message containing this.
    pub error_contains: Option<String>,
}

/// An expected rejection.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectedRejection {
    /// The rejection kind.
    pub kind: Option<RejectionKind>,
    /// The message must contain this.
    pub message_contains: Option<String>,
}

mod exact_map_opt {
    use rust_decimal::Decimal;
    use serde::{Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        value: &Option<BTreeMap<String, Decimal>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(m) => super::exact_map::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BTreeMap<String, Decimal>>, D::Error> {
        super::exact_map::deserialize(d).map(Some)
    }
}

/// One case: a name, its inputs (offers resolved) and its expectations.
#[derive(Debug, Clone)]
pub struct Case {
    /// The sub-folder name.
    pub name: String,
    /// Inputs, with `offers` always present.
    pub input: CaseInput,
    /// Expected outputs.
    pub expected: Expected,
}

/// Reads every case of a fixture folder, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, FixtureError> {
    let catalog_path = dir.join("catalog.json");
    let catalog: Option<Vec<ModelOffer>> = if catalog_path.exists() {
        Some(read_json(&catalog_path)?)
    } else {
        None
    };
    let entries = std::fs::read_dir(dir).map_err(|source| FixtureError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut case_dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("input.json").is_file())
        .collect();
    case_dirs.sort();
    if case_dirs.is_empty() {
        return Err(FixtureError::Empty(dir.to_owned()));
    }
    case_dirs
        .into_iter()
        .map(|case_dir| {
            let name = case_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut input: CaseInput = read_json(&case_dir.join("input.json"))?;
            if input.offers.is_none() {
                input.offers = Some(
                    catalog
                        .clone()
                        .ok_or(FixtureError::NoOffers(name.clone()))?,
                );
            }
            let expected_path = case_dir.join("expected.json");
            let expected = if expected_path.exists() {
                read_json(&expected_path)?
            } else {
                Expected::default()
            };
            Ok(Case {
                name,
                input,
                expected,
            })
        })
        .collect()
}

/// Reads and parses one JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| FixtureError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The four calls a plugin answers, however it runs. `Err` from a method
/// means the call failed (a trap, a timeout, invalid output or an error the
/// plugin returned); its text is what a developer needs to see.
pub trait Capabilities {
    /// `validate-config`.
    fn validate_config(&mut self, config: &str) -> Result<(), String>;
    /// `route`: `Ok(Err(_))` is a rejection, not a failure.
    fn route(
        &mut self,
        config: &str,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<Result<RouteDecision, Rejection>, String>;
    /// `meter`.
    fn meter(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, String>;
    /// `price`.
    fn price(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> Result<PriceQuote, String>;
}

/// What a plugin produced for one case; later steps are absent when an
/// earlier one stopped the request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Actual {
    /// The config check: `Err` holds the plugin's message.
    pub config: Option<Result<(), String>>,
    /// The route (or rejection), or the failure.
    pub route: Option<Result<Result<RouteDecision, Rejection>, String>>,
    /// The usage `meter` and `price` saw.
    pub usage: Option<Usage>,
    /// The units, or the failure.
    pub units: Option<Result<Vec<BusinessUnit>, String>>,
    /// The quote, or the failure.
    pub quote: Option<Result<PriceQuote, String>>,
}

/// Runs the capabilities in the order the gateway does.
pub fn run_case<C: Capabilities + ?Sized>(plugin: &mut C, input: &CaseInput) -> Actual {
    let mut actual = Actual::default();
    let config = config_text(&input.config);
    let offers = input.offers.as_deref().unwrap_or_default();
    let validated = plugin.validate_config(&config);
    let config_ok = validated.is_ok();
    actual.config = Some(validated);
    if !config_ok {
        return actual;
    }
    let route = plugin.route(&config, &input.request, offers);
    let decision = match &route {
        Ok(Ok(decision)) => Some(decision.clone()),
        _ => None,
    };
    actual.route = Some(route);
    let Some(decision) = decision else {
        return actual;
    };
    let usage = input.usage.resolve(&input.request, &decision, offers);
    let units = plugin.meter(&config, &input.request, &usage);
    if let Ok(units) = &units {
        actual.quote = Some(plugin.price(&config, &input.request, &usage, units));
    }
    actual.units = Some(units);
    actual.usage = Some(usage);
    actual
}

/// Lists every way `actual` differs from `expected`; empty means the case passed.
pub fn compare(expected: &Expected, actual: &Actual) -> Vec<String> {
    let mut diffs = Vec::new();
    match (&expected.config_error, &actual.config) {
        (Some(want), Some(Err(got))) if got.contains(want.as_str()) => return diffs,
        (Some(want), Some(Err(got))) => {
            diffs.push(format!("config error {got:?} does not contain {want:?}"));
            return diffs;
        }
        (Some(want), _) => {
            diffs.push(format!(
                "config was accepted, expected an error containing {want:?}"
            ));
            return diffs;
        }
        (None, Some(Err(got))) => {
            diffs.push(format!("config was refused: {got}"));
            return diffs;
        }
        (None, _) => {}
    }
    let route = match &actual.route {
        Some(Ok(r)) => r,
        Some(Err(failure)) => {
            diffs.push(format!("route failed: {failure}"));
            return diffs;
        }
        None => {
            diffs.push("route was not called".into());
            return diffs;
        }
    };
    match (&expected.rejected, route) {
        (Some(want), Err(rejection)) => {
            if let Some(kind) = want.kind
                && kind != rejection.kind
            {
                diffs.push(format!(
                    "rejected as {:?}, expected {kind:?}",
                    rejection.kind
                ));
            }
            if let Some(text) = &want.message_contains
                && !rejection.message.contains(text.as_str())
            {
                diffs.push(format!(
                    "rejection {:?} does not contain {text:?}",
                    rejection.message
                ));
            }
            return diffs;
        }
        (Some(_), Ok(decision)) => {
            diffs.push(format!(
                "expected a rejection, got a route to {}/{}",
                decision.primary.provider, decision.primary.model
            ));
            return diffs;
        }
        (None, Err(rejection)) => {
            diffs.push(format!("unexpected rejection: {}", rejection.message));
            return diffs;
        }
        (None, Ok(decision)) => {
            if let Some(want) = &expected.route
                && want != &decision.primary
            {
                diffs.push(format!(
                    "routed to {}/{}, expected {}/{}",
                    decision.primary.provider, decision.primary.model, want.provider, want.model
                ));
            }
            if let Some(want) = &expected.fallbacks
                && want != &decision.fallbacks
            {
                diffs.push(format!(
                    "fallbacks {:?}, expected {want:?}",
                    decision.fallbacks
                ));
            }
            if let Some(want) = expected.surcharge_bound
                && Some(want) != decision.surcharge_bound
            {
                diffs.push(format!(
                    "surcharge bound {:?}, expected {want}",
                    decision.surcharge_bound
                ));
            }
        }
    }
    let failure = match (&actual.units, &actual.quote) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => Some(e.clone()),
        _ => None,
    };
    match (&expected.error_contains, &failure) {
        (Some(want), Some(got)) if got.contains(want.as_str()) => return diffs,
        (Some(want), Some(got)) => {
            diffs.push(format!("error {got:?} does not contain {want:?}"));
            return diffs;
        }
        (Some(want), None) => {
            diffs.push(format!("expected meter/price to fail with {want:?}"));
            return diffs;
        }
        (None, Some(got)) => {
            diffs.push(format!("meter/price failed: {got}"));
            return diffs;
        }
        (None, None) => {}
    }
    if let (Some(want), Some(Ok(units))) = (&expected.units, &actual.units) {
        let got: BTreeMap<String, Decimal> =
            units.iter().map(|u| (u.name.clone(), u.quantity)).collect();
        let normalize = |m: &BTreeMap<String, Decimal>| -> BTreeMap<String, Decimal> {
            m.iter().map(|(k, v)| (k.clone(), v.normalize())).collect()
        };
        if normalize(&got) != normalize(want) {
            diffs.push(format!("units {got:?}, expected {want:?}"));
        }
    }
    if let Some(Ok(quote)) = &actual.quote {
        if let Some(want) = expected.surcharge
            && want != quote.surcharge
        {
            diffs.push(format!("surcharge {}, expected {want}", quote.surcharge));
        }
        if let Some(text) = &expected.description_contains
            && !quote.description.contains(text.as_str())
        {
            diffs.push(format!(
                "description {:?} does not contain {text:?}",
                quote.description
            ));
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(model: &str) -> ModelOffer {
        ModelOffer {
            model: model.into(),
            provider: "demo".into(),
            input_per_mtok: Decimal::from(2),
            output_per_mtok: Decimal::from(8),
            cached_input_per_mtok: Decimal::ONE,
            context_window: 1000,
            price_version: "v1".into(),
        }
    }

    fn route(model: &str) -> Actual {
        Actual {
            config: Some(Ok(())),
            route: Some(Ok(Ok(RouteDecision::to(offer(model).reference())))),
            units: Some(Ok(vec![BusinessUnit::new("ticket", 1)])),
            quote: Some(Ok(PriceQuote {
                surcharge: Decimal::new(5, 2),
                description: "1 ticket".into(),
            })),
            usage: None,
        }
    }

    #[test]
    fn matching_case_has_no_diffs_and_each_mismatch_is_named() {
        let expected: Expected = serde_json::from_str(
            r#"{"route": {"model": "small", "provider": "demo"},
                "units": {"ticket": "1.0"}, "surcharge": "0.05",
                "description_contains": "ticket"}"#,
        )
        .unwrap();
        assert!(compare(&expected, &route("small")).is_empty());
        let diffs = compare(&expected, &route("large"));
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(diffs[0].contains("expected demo/small"));
    }

    #[test]
    fn an_unexpected_failure_is_a_diff() {
        let mut actual = route("small");
        actual.quote = Some(Err("trap".into()));
        let diffs = compare(&Expected::default(), &actual);
        assert_eq!(diffs, vec!["meter/price failed: trap".to_string()]);
    }

    #[test]
    fn usage_defaults_come_from_the_route() {
        let offers = [offer("small")];
        let request = RequestSummary {
            estimated_prompt_tokens: 1000,
            ..Default::default()
        };
        let usage = UsageInput {
            output_tokens: 500,
            ..Default::default()
        }
        .resolve(&request, &RouteDecision::to(offers[0].reference()), &offers);
        assert_eq!(usage.input_tokens, 1000);
        // 1000 × 2/M + 500 × 8/M = 0.002 + 0.004
        assert_eq!(usage.provider_cost, Decimal::new(6, 3));
    }
}
