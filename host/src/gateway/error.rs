//! Errors as clients see them: OpenAI-shaped JSON with the right status.
//!
//! Domain errors are turned into [`ApiError`] here and only here. Messages
//! say what happened and what to do; internal details (paths, traps, store
//! errors) go to the logs, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_ledger::LedgerError;
use tollgate_plugin_types::{Rejection, RejectionKind};

use crate::admin::AdminError;
use crate::plugin::PluginError;

/// An error response: `{"error": {"message", "type", "code", "param"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type.
    pub kind: &'static str,
    /// Machine-readable code.
    pub code: Option<&'static str>,
    /// The request field at fault.
    pub param: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
        }
    }

    /// A malformed request, naming the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                message,
            )
        }
    }

    /// A body that is not JSON.
    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_json"),
            format!("the request body is not valid JSON: {detail}"),
        )
    }

    /// A missing, unknown, expired or revoked key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// A model the client may not use or that does not exist.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                format!("the model `{model}` does not exist or you do not have access to it"),
            )
        }
    }

    /// A body over the size cap.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// Over the client's request rate.
    pub fn rate_limited(per_minute: u32, wait: std::time::Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            Some("rate_limit_exceeded"),
            format!(
                "rate limit of {per_minute} requests per minute reached; retry in {:.1} s",
                wait.as_secs_f64().max(0.1)
            ),
        )
    }

    /// An unknown route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            format!("unrecognized request URL ({method} {path})"),
        )
    }

    /// A known path called with a method it does not take.
    pub fn wrong_method(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{path} does not take {method}"),
        )
    }

    /// The agency plugin refused the request.
    pub fn rejected(rejection: &Rejection) -> Self {
        let status = match rejection.kind {
            RejectionKind::InvalidRequest => StatusCode::BAD_REQUEST,
            RejectionKind::Forbidden => StatusCode::FORBIDDEN,
            RejectionKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        };
        Self::new(
            status,
            "invalid_request_error",
            Some("plugin_rejected"),
            format!("rejected by the agency's policy: {}", rejection.message),
        )
    }

    /// The agency plugin failed and its policy is fail-closed.
    pub fn plugin_failed(plugin: &str, error: &PluginError, billed_nothing: bool) -> Self {
        let tail = if billed_nothing {
            "the request was not sent to any provider and nothing was billed"
        } else {
            "nothing was billed"
        };
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("plugin_failed"),
            format!(
                "the agency plugin `{plugin}` failed ({}); {tail}",
                error.kind()
            ),
        )
    }

    /// Every upstream attempt failed.
    pub fn upstream(timeout: bool, detail: &str) -> Self {
        if timeout {
            Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                Some("upstream_timeout"),
                format!("the provider did not answer in time: {detail}"),
            )
        } else {
            Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("upstream_error"),
                format!("the provider failed: {detail}"),
            )
        }
    }

    /// Something on our side failed; the detail is logged, not shown.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("internal_error"),
            "internal error; it has been logged",
        )
    }

    /// Temporarily unable to take the request.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            message,
        )
    }

    /// A client whose agency has bound no plugin.
    pub fn unbound() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("no_plugin_bound"),
            "no plugin is bound to this client yet; its agency must bind one",
        )
    }

    /// Maps an admin API error to its answer.
    pub fn from_admin(error: &AdminError) -> Self {
        let with_param = |e: Self, param: &str| Self {
            param: Some(param.to_owned()),
            ..e
        };
        match error {
            AdminError::Unauthorized(m) => Self::unauthorized(m.clone()),
            AdminError::Forbidden(m) => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("operator_only"),
                m.clone(),
            ),
            AdminError::NotFound { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
                error.to_string(),
            ),
            AdminError::Invalid { field, reason } => {
                Self::invalid(field, format!("{field}: {reason}"))
            }
            AdminError::Conflict(m) => Self::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("conflict"),
                m.clone(),
            ),
            AdminError::PluginRefused(m) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                Some("plugin_refused"),
                m.clone(),
            ),
            AdminError::ConfigRefused(_) => with_param(
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    Some("config_refused"),
                    error.to_string(),
                ),
                "config",
            ),
            AdminError::TooLarge(limit) => Self::too_large(*limit),
            AdminError::Ledger(LedgerError::InvalidArgument(m)) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                m.clone(),
            ),
            AdminError::Ledger(e @ LedgerError::InvalidPeriod(_)) => {
                Self::invalid("period", e.to_string())
            }
            AdminError::Ledger(e @ LedgerError::PeriodOpen { .. }) => Self::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("period_open"),
                e.to_string(),
            ),
            AdminError::Ledger(e @ LedgerError::NotFound(_)) => Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
                e.to_string(),
            ),
            AdminError::Ledger(e) => Self::from_ledger(e),
            AdminError::Store(detail) => {
                tracing::error!(error = %detail, "control store error");
                Self::internal()
            }
        }
    }

    /// Maps a ledger refusal to the client's answer.
    pub fn from_ledger(error: &LedgerError) -> Self {
        match error {
            LedgerError::CapExceeded { cap, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("spend_cap_exceeded"),
                format!(
                    "this request could exceed the monthly spend cap of {cap}; ask the app's provider to raise it"
                ),
            ),
            LedgerError::InsufficientBalance { available, .. } => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                Some("insufficient_balance"),
                format!(
                    "the prepaid balance ({available}) cannot cover this request; top up to continue"
                ),
            ),
            LedgerError::Overloaded { .. } => {
                Self::unavailable("the usage ledger is overloaded; retry shortly")
            }
            other => {
                tracing::error!(error = %other, "ledger error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}
