//! The admin REST API's HTTP edge: routes under `/admin/v1`, each a thin
//! handler that authenticates, parses, calls [`super::service::Admin`] and
//! shapes the answer. The OpenAPI document (`GET /openapi.json`) is built
//! from the same route table (`utoipa-axum`), so it cannot drift.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::*;
use super::service::{AdminError, Principal};
use crate::gateway::AppState;
use crate::gateway::error::ApiError;

type Shared = Arc<AppState>;

/// Largest admin JSON body.
const MAX_JSON_BYTES: usize = 1 << 20;

/// An error answer as every route documents it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// `{"message", "type", "code", "param"}`, as OpenAI shapes errors.
    #[schema(value_type = Object)]
    error: serde_json::Value,
}

struct Fail(ApiError);

impl From<AdminError> for Fail {
    fn from(e: AdminError) -> Self {
        Fail(ApiError::from_admin(&e))
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

type Answer = Result<Response, Fail>;

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Answer {
    Ok((status, axum::Json(value)).into_response())
}

/// The authenticated admin caller.
struct Caller(Principal);

impl FromRequestParts<Shared> for Caller {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Fail> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Caller(state.admin.authenticate(header)?))
    }
}

/// A JSON body parsed strictly, with errors that name the field.
struct Body<T>(T);

impl<T: DeserializeOwned> axum::extract::FromRequest<Shared> for Body<T> {
    type Rejection = Fail;

    async fn from_request(req: axum::extract::Request, _: &Shared) -> Result<Self, Fail> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BYTES)
            .await
            .map_err(|_| Fail(ApiError::too_large(MAX_JSON_BYTES)))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map(Body).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".into() } else { path };
            Fail(ApiError::invalid(
                &field,
                format!("{field}: {}", e.into_inner()),
            ))
        })
    }
}

/// Path parameters, with an OpenAI-shaped error (not axum's plain text)
/// when a segment does not decode (e.g. invalid UTF-8).
struct Path<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<Shared> for Path<T> {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Fail> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(e) => Err(Fail(ApiError::invalid(
                "path",
                format!("path: {}", e.body_text()),
            ))),
        }
    }
}

/// Query parameters parsed with errors that name the parameter.
struct Query<T>(T);

impl<T: DeserializeOwned> FromRequestParts<Shared> for Query<T> {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Fail> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(Query)
            .map_err(|e| Fail(ApiError::invalid("query", format!("query: {e}"))))
    }
}

fn period(text: &str) -> Result<tollgate_ledger::Period, Fail> {
    text.parse()
        .map_err(|e: tollgate_ledger::LedgerError| Fail(ApiError::invalid("period", e.to_string())))
}

// ----- agencies ------------------------------------------------------------

/// Create an agency (operator).
#[utoipa::path(post, path = "/admin/v1/agencies", tag = "agencies",
    request_body = CreateAgency,
    responses((status = 201, body = AgencyView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_agency(
    State(s): State<Shared>,
    Caller(p): Caller,
    Body(b): Body<CreateAgency>,
) -> Answer {
    json(StatusCode::CREATED, &s.admin.create_agency(&p, b).await?)
}

/// List agencies (an agency token sees its own).
#[utoipa::path(get, path = "/admin/v1/agencies", tag = "agencies",
    responses((status = 200, body = Vec<AgencyView>), (status = 401, body = ErrorBody)))]
async fn list_agencies(State(s): State<Shared>, Caller(p): Caller) -> Answer {
    json(StatusCode::OK, &s.admin.list_agencies(&p)?)
}

/// One agency.
#[utoipa::path(get, path = "/admin/v1/agencies/{agency}", tag = "agencies",
    params(("agency" = String, Path)),
    responses((status = 200, body = AgencyView), (status = 404, body = ErrorBody)))]
async fn get_agency(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.get_agency(&p, &agency)?)
}

/// Change an agency's name, webhook, or (operator) platform fee.
#[utoipa::path(patch, path = "/admin/v1/agencies/{agency}", tag = "agencies",
    params(("agency" = String, Path)), request_body = UpdateAgency,
    responses((status = 200, body = AgencyView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_agency(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
    Body(b): Body<UpdateAgency>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.update_agency(&p, &agency, b).await?,
    )
}

/// Create an agency admin token (shown once).
#[utoipa::path(post, path = "/admin/v1/agencies/{agency}/tokens", tag = "agencies",
    params(("agency" = String, Path)), request_body = CreateCredential,
    responses((status = 201, body = NewCredential), (status = 404, body = ErrorBody)))]
async fn create_token(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
    Body(b): Body<CreateCredential>,
) -> Answer {
    json(
        StatusCode::CREATED,
        &s.admin.create_token(&p, &agency, b).await?,
    )
}

/// List an agency's admin tokens (never the secrets).
#[utoipa::path(get, path = "/admin/v1/agencies/{agency}/tokens", tag = "agencies",
    params(("agency" = String, Path)),
    responses((status = 200, body = Vec<CredentialView>), (status = 404, body = ErrorBody)))]
async fn list_tokens(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.list_tokens(&p, &agency)?)
}

/// Revoke an agency admin token.
#[utoipa::path(delete, path = "/admin/v1/agencies/{agency}/tokens/{token}", tag = "agencies",
    params(("agency" = String, Path), ("token" = String, Path)),
    responses((status = 200, body = CredentialView), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path((agency, token)): Path<(String, String)>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.revoke_token(&p, &agency, &token).await?,
    )
}

/// Set the agency-wide default binding.
#[utoipa::path(put, path = "/admin/v1/agencies/{agency}/binding", tag = "bindings",
    params(("agency" = String, Path)), request_body = SetBinding,
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn bind_agency(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
    Body(b): Body<SetBinding>,
) -> Answer {
    json(StatusCode::OK, &s.admin.bind_agency(&p, &agency, b).await?)
}

/// The agency default binding and its history.
#[utoipa::path(get, path = "/admin/v1/agencies/{agency}/binding", tag = "bindings",
    params(("agency" = String, Path)),
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody)))]
async fn agency_bindings(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.agency_bindings(&p, &agency)?)
}

/// Roll the agency default back to an earlier binding revision.
#[utoipa::path(post, path = "/admin/v1/agencies/{agency}/binding/rollback", tag = "bindings",
    params(("agency" = String, Path)), request_body = Rollback,
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn rollback_agency(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(agency): Path<String>,
    Body(b): Body<Rollback>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.rollback_agency(&p, &agency, b).await?,
    )
}

/// An agency's payout for a closed period (`YYYY-MM`).
#[utoipa::path(get, path = "/admin/v1/agencies/{agency}/payouts/{period}", tag = "reports",
    params(("agency" = String, Path), ("period" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
        (status = 409, description = "the period is still open", body = ErrorBody)))]
async fn payout(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path((agency, per)): Path<(String, String)>,
) -> Answer {
    json(StatusCode::OK, &s.admin.payout(&p, &agency, period(&per)?)?)
}

/// What is owed to each provider for a period (operator).
#[utoipa::path(get, path = "/admin/v1/settlement/{period}", tag = "reports",
    params(("period" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
async fn settlement(State(s): State<Shared>, Caller(p): Caller, Path(per): Path<String>) -> Answer {
    json(StatusCode::OK, &s.admin.settlement(&p, period(&per)?)?)
}

// ----- clients ---------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct AgencyFilter {
    /// Only this agency's objects.
    agency_id: Option<String>,
}

/// Create a client.
#[utoipa::path(post, path = "/admin/v1/clients", tag = "clients",
    request_body = CreateClient,
    responses((status = 201, body = ClientView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Body(b): Body<CreateClient>,
) -> Answer {
    json(StatusCode::CREATED, &s.admin.create_client(&p, b).await?)
}

/// List clients.
#[utoipa::path(get, path = "/admin/v1/clients", tag = "clients", params(AgencyFilter),
    responses((status = 200, body = Vec<ClientView>), (status = 404, body = ErrorBody)))]
async fn list_clients(
    State(s): State<Shared>,
    Caller(p): Caller,
    Query(q): Query<AgencyFilter>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.list_clients(&p, q.agency_id.as_deref())?,
    )
}

/// One client.
#[utoipa::path(get, path = "/admin/v1/clients/{client}", tag = "clients",
    params(("client" = String, Path)),
    responses((status = 200, body = ClientView), (status = 404, body = ErrorBody)))]
async fn get_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.get_client(&p, &client)?)
}

/// Change a client's name, models or rate limit.
#[utoipa::path(patch, path = "/admin/v1/clients/{client}", tag = "clients",
    params(("client" = String, Path)), request_body = UpdateClient,
    responses((status = 200, body = ClientView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<UpdateClient>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.update_client(&p, &client, b).await?,
    )
}

/// Delete (disable) a client: its keys stop working; records stay.
#[utoipa::path(delete, path = "/admin/v1/clients/{client}", tag = "clients",
    params(("client" = String, Path)),
    responses((status = 200, body = ClientView), (status = 404, body = ErrorBody)))]
async fn delete_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.delete_client(&p, &client).await?)
}

/// Bind a plugin version and configuration to a client (atomic hot swap).
#[utoipa::path(put, path = "/admin/v1/clients/{client}/binding", tag = "bindings",
    params(("client" = String, Path)), request_body = SetBinding,
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody),
        (status = 422, description = "the plugin refused the configuration", body = ErrorBody)))]
async fn bind_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<SetBinding>,
) -> Answer {
    json(StatusCode::OK, &s.admin.bind_client(&p, &client, b).await?)
}

/// A client's own binding and its history.
#[utoipa::path(get, path = "/admin/v1/clients/{client}/binding", tag = "bindings",
    params(("client" = String, Path)),
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody)))]
async fn client_bindings(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.client_bindings(&p, &client)?)
}

/// Remove a client's own binding (the agency default applies).
#[utoipa::path(delete, path = "/admin/v1/clients/{client}/binding", tag = "bindings",
    params(("client" = String, Path)),
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody)))]
async fn unbind_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.unbind_client(&p, &client).await?)
}

/// Roll a client back to an earlier binding revision (default: the previous).
#[utoipa::path(post, path = "/admin/v1/clients/{client}/binding/rollback", tag = "bindings",
    params(("client" = String, Path)), request_body = Rollback,
    responses((status = 200, body = BindingsView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn rollback_client(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<Rollback>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.rollback_client(&p, &client, b).await?,
    )
}

/// A client's plan: billing, monthly cap, alert thresholds, included usage.
#[utoipa::path(get, path = "/admin/v1/clients/{client}/plan", tag = "clients",
    params(("client" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_plan(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.get_plan(&p, &client)?)
}

/// Change a client's plan (absent fields stay).
#[utoipa::path(put, path = "/admin/v1/clients/{client}/plan", tag = "clients",
    params(("client" = String, Path)), request_body = PlanBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn set_plan(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<PlanBody>,
) -> Answer {
    json(StatusCode::OK, &s.admin.set_plan(&p, &client, b).await?)
}

/// Remove a client's monthly cap.
#[utoipa::path(delete, path = "/admin/v1/clients/{client}/plan/cap", tag = "clients",
    params(("client" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn clear_cap(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.clear_cap(&p, &client).await?)
}

/// Top up a client's prepaid credit (idempotent by key).
#[utoipa::path(post, path = "/admin/v1/clients/{client}/credits", tag = "credits",
    params(("client" = String, Path)), request_body = TopUpBody,
    responses((status = 201, description = "applied", body = Object),
        (status = 200, description = "already applied with this key", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn top_up(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<TopUpBody>,
) -> Answer {
    let (bucket, applied) = s.admin.top_up(&p, &client, b).await?;
    let status = if applied {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &bucket)
}

/// A client's credit balance and its entries.
#[utoipa::path(get, path = "/admin/v1/clients/{client}/credits", tag = "credits",
    params(("client" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn balance(State(s): State<Shared>, Caller(p): Caller, Path(client): Path<String>) -> Answer {
    let (balance, entries) = s.admin.balance(&p, &client)?;
    json(
        StatusCode::OK,
        &serde_json::json!({"balance": balance, "entries": entries}),
    )
}

/// A client's statement for a period (`YYYY-MM`).
#[utoipa::path(get, path = "/admin/v1/clients/{client}/statements/{period}", tag = "reports",
    params(("client" = String, Path), ("period" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn statement(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path((client, per)): Path<(String, String)>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.statement(&p, &client, period(&per)?)?,
    )
}

// ----- apps and keys -----------------------------------------------------------

/// Create an app of a client.
#[utoipa::path(post, path = "/admin/v1/clients/{client}/apps", tag = "keys",
    params(("client" = String, Path)), request_body = CreateApp,
    responses((status = 201, body = AppDoc), (status = 404, body = ErrorBody)))]
async fn create_app(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
    Body(b): Body<CreateApp>,
) -> Answer {
    json(
        StatusCode::CREATED,
        &s.admin.create_app(&p, &client, b).await?,
    )
}

/// A client's apps.
#[utoipa::path(get, path = "/admin/v1/clients/{client}/apps", tag = "keys",
    params(("client" = String, Path)),
    responses((status = 200, body = Vec<AppDoc>), (status = 404, body = ErrorBody)))]
async fn list_apps(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(client): Path<String>,
) -> Answer {
    json(StatusCode::OK, &s.admin.list_apps(&p, &client)?)
}

/// Create a client app key (`tg_live_…`, shown once).
#[utoipa::path(post, path = "/admin/v1/apps/{app}/keys", tag = "keys",
    params(("app" = String, Path)), request_body = CreateCredential,
    responses((status = 201, body = NewCredential), (status = 404, body = ErrorBody)))]
async fn create_key(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(app): Path<String>,
    Body(b): Body<CreateCredential>,
) -> Answer {
    json(StatusCode::CREATED, &s.admin.create_key(&p, &app, b).await?)
}

/// An app's keys (never the secrets).
#[utoipa::path(get, path = "/admin/v1/apps/{app}/keys", tag = "keys",
    params(("app" = String, Path)),
    responses((status = 200, body = Vec<CredentialView>), (status = 404, body = ErrorBody)))]
async fn list_keys(State(s): State<Shared>, Caller(p): Caller, Path(app): Path<String>) -> Answer {
    json(StatusCode::OK, &s.admin.list_keys(&p, &app)?)
}

/// Revoke a client app key.
#[utoipa::path(delete, path = "/admin/v1/keys/{key}", tag = "keys",
    params(("key" = String, Path)),
    responses((status = 200, body = CredentialView), (status = 404, body = ErrorBody)))]
async fn revoke_key(State(s): State<Shared>, Caller(p): Caller, Path(key): Path<String>) -> Answer {
    json(StatusCode::OK, &s.admin.revoke_key(&p, &key).await?)
}

// ----- plugins -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    /// The agency (operator only; an agency token uploads to its own).
    agency_id: Option<String>,
    /// A human label for the version.
    label: Option<String>,
    /// An upload note.
    note: Option<String>,
    /// Configuration (JSON text) for the smoke run; default `{}`.
    sample_config: Option<String>,
}

/// Upload a plugin component (`application/wasm` body). Validated, compiled
/// and smoke-run; the version is addressed by its sha256. Re-uploading the
/// same bytes returns the existing version (200).
#[utoipa::path(post, path = "/admin/v1/plugins", tag = "plugins", params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginView), (status = 200, body = PluginView),
        (status = 413, body = ErrorBody),
        (status = 422, description = "not a valid plugin, or the smoke run failed", body = ErrorBody)))]
async fn upload_plugin(
    State(s): State<Shared>,
    Caller(p): Caller,
    Query(q): Query<UploadParams>,
    body: axum::body::Body,
) -> Answer {
    let limit = s.admin.max_plugin_bytes();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Fail(ApiError::too_large(limit)))?;
    let (view, new) = s
        .admin
        .upload_plugin(
            &p,
            q.agency_id.as_deref(),
            bytes.to_vec(),
            q.label,
            q.note,
            q.sample_config,
        )
        .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &view)
}

/// Plugin versions with their per-version metrics, newest first.
#[utoipa::path(get, path = "/admin/v1/plugins", tag = "plugins", params(AgencyFilter),
    responses((status = 200, body = Vec<PluginView>), (status = 404, body = ErrorBody)))]
async fn list_plugins(
    State(s): State<Shared>,
    Caller(p): Caller,
    Query(q): Query<AgencyFilter>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.list_plugins(&p, q.agency_id.as_deref())?,
    )
}

/// One plugin version.
#[utoipa::path(get, path = "/admin/v1/plugins/{sha256}", tag = "plugins",
    params(("sha256" = String, Path), AgencyFilter),
    responses((status = 200, body = PluginView), (status = 404, body = ErrorBody)))]
async fn get_plugin(
    State(s): State<Shared>,
    Caller(p): Caller,
    Path(sha): Path<String>,
    Query(q): Query<AgencyFilter>,
) -> Answer {
    json(
        StatusCode::OK,
        &s.admin.get_plugin(&p, q.agency_id.as_deref(), &sha)?,
    )
}

// ----- usage and audit -------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    /// Billing period `YYYY-MM`.
    period: Option<String>,
    /// Only this client.
    client_id: Option<String>,
    /// Only this agency (operator).
    agency_id: Option<String>,
    /// Only records that routed to or asked for this model.
    model: Option<String>,
    /// Only records that metered this business unit.
    unit: Option<String>,
    /// Continue after this cursor (`next_cursor` of the previous page).
    cursor: Option<String>,
    /// Page size (default 100, at most 1000).
    limit: Option<usize>,
}

/// Usage records, filtered and paginated.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "reports", params(UsageParams),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn usage(State(s): State<Shared>, Caller(p): Caller, Query(q): Query<UsageParams>) -> Answer {
    let query = tollgate_ledger::RecordQuery {
        period: q.period.as_deref().map(period).transpose()?,
        client: q.client_id,
        agency: q.agency_id,
        model: q.model,
        unit: q.unit,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(0),
    };
    let page = s.admin.usage(&p, query)?;
    json(
        StatusCode::OK,
        &serde_json::json!({"records": page.items, "next_cursor": page.next_cursor}),
    )
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Only this agency (operator; an agency sees its own).
    agency_id: Option<String>,
    /// Entries older than this sequence number (pagination).
    before: Option<u64>,
    /// Page size (default 100, at most 1000).
    limit: Option<usize>,
}

/// The audit log of admin changes, newest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn audit(State(s): State<Shared>, Caller(p): Caller, Query(q): Query<AuditParams>) -> Answer {
    let entries = s
        .admin
        .audit(&p, q.agency_id.as_deref(), q.before, q.limit.unwrap_or(0))?;
    let next = entries.last().map(|e| e.seq).filter(|&seq| seq > 1);
    json(
        StatusCode::OK,
        &serde_json::json!({"entries": entries, "next_before": next}),
    )
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tg_admin_…")
                    .build(),
            ),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "admin_token",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Agencies, clients, apps and keys, plugin versions and bindings, caps and credits, usage, statements, payouts and the audit log. Authenticate with `Authorization: Bearer tg_admin_…`. Another agency's objects answer 404.",
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The admin routes and their OpenAPI document.
pub fn router() -> (axum::Router<Shared>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_agency, list_agencies))
        .routes(routes!(get_agency, update_agency))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(bind_agency, agency_bindings))
        .routes(routes!(rollback_agency))
        .routes(routes!(payout))
        .routes(routes!(settlement))
        .routes(routes!(create_client, list_clients))
        .routes(routes!(get_client, update_client, delete_client))
        .routes(routes!(bind_client, client_bindings, unbind_client))
        .routes(routes!(rollback_client))
        .routes(routes!(get_plan, set_plan))
        .routes(routes!(clear_cap))
        .routes(routes!(top_up, balance))
        .routes(routes!(statement))
        .routes(routes!(create_app, list_apps))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(upload_plugin, list_plugins))
        .routes(routes!(get_plugin))
        .routes(routes!(usage))
        .routes(routes!(audit))
        .split_for_parts()
}
