//! What a request gets when its plugin fails: the binding's failure policy.
//!
//! `fail-closed` (the default) refuses the request with an error naming the
//! plugin failure and bills nothing to the client. `fail-open` serves the
//! request as the client asked (the requested model, no units, zero
//! surcharge) and flags the usage record `fail_open`, so an agency can
//! choose availability over its margin without losing the audit trail.

use serde::{Deserialize, Serialize};
use tollgate_plugin_types::{
    BusinessUnit, ModelOffer, PriceQuote, Rejection, RequestSummary, RouteDecision,
};

use super::PluginError;

/// How a plugin failure affects the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Refuse the request; bill nothing to the client.
    #[default]
    FailClosed,
    /// Serve the request as asked, with no units and no surcharge, flagged.
    FailOpen,
}

/// The routing result after the policy is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteOutcome {
    /// Route the request. `failed_open` holds the plugin failure when the
    /// route is the fail-open default rather than the plugin's choice.
    Route {
        /// The attempts to make.
        decision: RouteDecision,
        /// The failure that was bypassed, if any.
        failed_open: Option<PluginError>,
    },
    /// The plugin refused the request.
    Rejected(Rejection),
    /// The plugin failed and the policy refuses the request.
    Failed(PluginError),
}

/// Applies `policy` to the result of a `route` call.
pub fn route_outcome(
    policy: FailurePolicy,
    result: Result<Result<RouteDecision, Rejection>, PluginError>,
    request: &RequestSummary,
    offers: &[ModelOffer],
) -> RouteOutcome {
    match result {
        Ok(Ok(decision)) => RouteOutcome::Route {
            decision,
            failed_open: None,
        },
        Ok(Err(rejection)) => RouteOutcome::Rejected(rejection),
        Err(error) => match policy {
            FailurePolicy::FailClosed => RouteOutcome::Failed(error),
            FailurePolicy::FailOpen => {
                match offers.iter().find(|o| o.model == request.requested_model) {
                    Some(offer) => RouteOutcome::Route {
                        decision: RouteDecision::to(offer.reference()),
                        failed_open: Some(error),
                    },
                    // Failing open cannot invent a model the client may not use.
                    None => RouteOutcome::Failed(error),
                }
            }
        },
    }
}

/// Units and surcharge for a served request, after the policy is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// Business units for the statement.
    pub units: Vec<BusinessUnit>,
    /// The surcharge and its description.
    pub quote: PriceQuote,
    /// The plugin failure that was bypassed, if any.
    pub failed_open: Option<PluginError>,
}

/// Applies `policy` to the results of `meter` and `price`. `Err` means the
/// request must be refused and nothing billed to the client.
pub fn charge(
    policy: FailurePolicy,
    result: Result<(Vec<BusinessUnit>, PriceQuote), PluginError>,
) -> Result<Charge, PluginError> {
    match (result, policy) {
        (Ok((units, quote)), _) => Ok(Charge {
            units,
            quote,
            failed_open: None,
        }),
        (Err(error), FailurePolicy::FailClosed) => Err(error),
        (Err(error), FailurePolicy::FailOpen) => Ok(Charge {
            units: Vec::new(),
            quote: PriceQuote::zero(),
            failed_open: Some(error),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::time::Duration;

    fn offer(model: &str) -> ModelOffer {
        ModelOffer {
            model: model.into(),
            provider: "demo".into(),
            input_per_mtok: Decimal::ONE,
            output_per_mtok: Decimal::ONE,
            cached_input_per_mtok: Decimal::ONE,
            context_window: 1000,
            price_version: "v1".into(),
        }
    }

    fn request(model: &str) -> RequestSummary {
        RequestSummary {
            requested_model: model.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fail_closed_refuses_and_fail_open_routes_as_requested() {
        let offers = [offer("small"), offer("large")];
        let failure = || Err(PluginError::Timeout(Duration::from_millis(5)));
        assert_eq!(
            route_outcome(
                FailurePolicy::FailClosed,
                failure(),
                &request("large"),
                &offers
            ),
            RouteOutcome::Failed(PluginError::Timeout(Duration::from_millis(5)))
        );
        match route_outcome(
            FailurePolicy::FailOpen,
            failure(),
            &request("large"),
            &offers,
        ) {
            RouteOutcome::Route {
                decision,
                failed_open: Some(PluginError::Timeout(_)),
            } => assert_eq!(decision.primary, offers[1].reference()),
            other => panic!("expected a fail-open route, got {other:?}"),
        }
    }

    #[test]
    fn fail_open_never_routes_to_a_model_the_client_may_not_use() {
        let outcome = route_outcome(
            FailurePolicy::FailOpen,
            Err(PluginError::StackOverflow),
            &request("secret-model"),
            &[offer("small")],
        );
        assert_eq!(outcome, RouteOutcome::Failed(PluginError::StackOverflow));
    }

    #[test]
    fn charge_policy() {
        let err = || Err(PluginError::Reported("boom".into()));
        assert!(charge(FailurePolicy::FailClosed, err()).is_err());
        let open = charge(FailurePolicy::FailOpen, err()).unwrap();
        assert!(open.units.is_empty());
        assert_eq!(open.quote.surcharge, Decimal::ZERO);
        assert_eq!(open.failed_open, Some(PluginError::Reported("boom".into())));
    }
}
