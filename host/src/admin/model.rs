//! The admin API's objects: what is stored in the control store (documents)
//! and what the API accepts and returns (requests and views).
//!
//! Stored documents keep secrets (key hashes, webhook secrets); views never
//! carry them. Money is `Decimal`, written as a decimal string in JSON.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::plugin::policy::FailurePolicy;

/// Document kinds in the control store.
pub mod kind {
    /// An agency.
    pub const AGENCY: &str = "agency";
    /// An agency admin token.
    pub const ADMIN_TOKEN: &str = "admin_token";
    /// A client of an agency.
    pub const CLIENT: &str = "client";
    /// A client's app.
    pub const APP: &str = "app";
    /// A client app key.
    pub const APP_KEY: &str = "app_key";
    /// An uploaded plugin version, id `<agency>/<sha256>`.
    pub const PLUGIN: &str = "plugin";
}

/// Which plugin version and configuration serve a client (or, as the
/// agency-wide default, every client of an agency without its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BindingDoc {
    /// Increases by one with every change of this binding slot.
    pub revision: u64,
    /// The plugin version (content hash, hex).
    pub plugin_sha256: String,
    /// The plugin's configuration document (JSON text).
    pub config: String,
    /// What a plugin failure does to a request.
    #[schema(value_type = String, example = "fail-closed")]
    pub failure_policy: FailurePolicy,
    /// When it was bound.
    pub bound_at: DateTime<Utc>,
    /// Who bound it.
    pub bound_by: String,
}

/// A binding slot: the binding in force and every earlier one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BindingSlot {
    /// In force; `None` when unbound.
    pub current: Option<BindingDoc>,
    /// Every binding ever made here, oldest first (the current one included).
    pub history: Vec<BindingDoc>,
}

impl BindingSlot {
    /// The revision the next binding made here gets.
    pub fn next_revision(&self) -> u64 {
        self.history.last().map_or(1, |b| b.revision + 1)
    }

    /// Puts `binding` in force (and in the history); returns what was.
    pub fn replace(&mut self, binding: Option<BindingDoc>) -> Option<BindingDoc> {
        if let Some(b) = &binding {
            self.history.push(b.clone());
        }
        std::mem::replace(&mut self.current, binding)
    }
}

/// A stored agency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgencyDoc {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Platform fee override (percent); `None` uses the operator default.
    pub platform_fee_percent: Option<Decimal>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// The agency-wide default binding.
    #[serde(default)]
    pub binding: BindingSlot,
    /// Hash of the config-file declaration that last wrote this agency.
    #[serde(default)]
    pub seed: Option<String>,
}

/// An agency as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgencyView {
    /// Agency id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Platform fee in percent that applies to this agency's payouts.
    #[schema(value_type = String, example = "10")]
    pub platform_fee_percent: Decimal,
    /// Where spend alerts are POSTed.
    pub webhook_url: Option<String>,
    /// Whether a webhook signing secret is set (the secret is never shown).
    pub webhook_secret_set: bool,
    /// The agency-wide default binding.
    pub default_binding: Option<BindingDoc>,
}

/// A stored admin token (operator tokens are not stored: the operator's comes
/// from the environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenDoc {
    pub id: String,
    pub agency_id: String,
    pub sha256: String,
    pub hint: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token or key as the API lists it (never the secret itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    /// Id, for revocation.
    pub id: String,
    /// The first characters of the secret, to recognise it.
    pub hint: String,
    /// Free-form label.
    pub label: String,
    /// The agency.
    pub agency_id: String,
    /// The client (app keys only).
    pub client_id: Option<String>,
    /// The app (app keys only).
    pub app_id: Option<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A newly created token or key: the secret is shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewCredential {
    /// The secret; store it now, it cannot be shown again.
    pub secret: String,
    /// Its metadata.
    #[serde(flatten)]
    pub credential: CredentialView,
}

/// A stored client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientDoc {
    pub id: String,
    pub agency_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub models: Option<Vec<String>>,
    pub rate_limit_per_minute: Option<u32>,
    #[serde(default)]
    pub binding: BindingSlot,
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub seed: Option<String>,
}

/// A client as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClientView {
    /// Client id.
    pub id: String,
    /// Owning agency.
    pub agency_id: String,
    /// Display name.
    pub name: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Models the client may use; absent means the whole catalog.
    pub models: Option<Vec<String>>,
    /// Requests per minute, shared by the client's apps.
    pub rate_limit_per_minute: Option<u32>,
    /// The client's own binding, if any.
    pub binding: Option<BindingDoc>,
    /// The binding in force: the client's own, else the agency default.
    pub effective_binding: Option<BindingDoc>,
    /// Set when the client was deleted: its keys stop working, its records stay.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A stored app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppDoc {
    /// App id.
    pub id: String,
    /// Its client.
    pub client_id: String,
    /// The client's agency.
    pub agency_id: String,
    /// Display name.
    pub name: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
}

/// A stored client app key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppKeyDoc {
    pub id: String,
    pub app_id: String,
    pub client_id: String,
    pub agency_id: String,
    pub sha256: String,
    pub hint: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Declared in the config file (revoked when the file drops it).
    #[serde(default)]
    pub from_config: bool,
}

/// What the upload's smoke run saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SmokeReport {
    /// `route` result: the model chosen, or the rejection.
    pub route: String,
    /// `meter` result: units as `name×quantity`.
    pub units: Vec<String>,
    /// `price` result: the surcharge.
    #[schema(value_type = String)]
    pub surcharge: Decimal,
    /// The configuration the smoke run used.
    pub sample_config: String,
}

/// A stored plugin version (one per agency and content hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginDoc {
    pub agency_id: String,
    pub sha256: String,
    pub label: String,
    pub note: String,
    pub size_bytes: u64,
    pub uploaded_at: DateTime<Utc>,
    pub uploaded_by: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub smoke: Option<SmokeReport>,
}

/// Per-version call figures since the gateway started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionMetrics {
    /// Capability calls.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Mean call latency, microseconds.
    pub mean_latency_us: u64,
    /// Slowest call, microseconds.
    pub max_latency_us: u64,
}

/// A plugin version as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginView {
    /// Content hash (hex): the version's address.
    pub sha256: String,
    /// Owning agency.
    pub agency_id: String,
    /// Human label given at upload.
    pub label: String,
    /// Upload note.
    pub note: String,
    /// Size of the component.
    pub size_bytes: u64,
    /// Uploaded at.
    pub uploaded_at: DateTime<Utc>,
    /// Uploaded by.
    pub uploaded_by: String,
    /// Name the plugin gives itself.
    pub name: String,
    /// Version the plugin gives itself.
    pub version: String,
    /// Its description.
    pub description: String,
    /// The upload's smoke run.
    pub smoke: Option<SmokeReport>,
    /// Clients bound to it now (plus `*` for the agency default).
    pub bound_to: Vec<String>,
    /// Call figures since start.
    pub metrics: VersionMetrics,
}

/// `POST /admin/v1/agencies`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgency {
    /// Id: lower-case letters, digits and `-`, 1–64 characters.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Platform fee override in percent (0–100).
    #[schema(value_type = Option<String>)]
    pub platform_fee_percent: Option<Decimal>,
    /// Where spend alerts are POSTed.
    pub webhook_url: Option<String>,
    /// Their HMAC-SHA256 signing secret.
    pub webhook_secret: Option<String>,
}

/// `PATCH /admin/v1/agencies/{agency}`: absent fields stay as they are;
/// `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgency {
    /// Display name.
    pub name: Option<String>,
    /// Platform fee override in percent (operator only).
    #[serde(default, with = "patch")]
    #[schema(value_type = Option<String>)]
    pub platform_fee_percent: Option<Option<Decimal>>,
    /// Alert webhook URL.
    #[serde(default, with = "patch")]
    #[schema(value_type = Option<String>)]
    pub webhook_url: Option<Option<String>>,
    /// Alert webhook secret.
    #[serde(default, with = "patch")]
    #[schema(value_type = Option<String>)]
    pub webhook_secret: Option<Option<String>>,
}

/// `POST …/tokens`, `POST …/keys`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// Free-form label.
    #[serde(default)]
    pub label: Option<String>,
    /// Expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /admin/v1/clients`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    /// The agency (required for the operator; an agency token implies its own).
    #[serde(default)]
    pub agency_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Models the client may use; absent means the whole catalog.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Requests per minute, shared by the client's apps.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
}

/// `PATCH /admin/v1/clients/{client}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClient {
    /// Display name.
    pub name: Option<String>,
    /// Models the client may use (`null`: the whole catalog).
    #[serde(default, with = "patch")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
    /// Requests per minute (`null`: unlimited).
    #[serde(default, with = "patch")]
    #[schema(value_type = Option<u32>)]
    pub rate_limit_per_minute: Option<Option<u32>>,
}

/// `POST /admin/v1/clients/{client}/apps`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// Display name.
    pub name: String,
}

/// `PUT …/binding`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBinding {
    /// The plugin version (content hash) to bind.
    pub plugin_sha256: String,
    /// The plugin's configuration: a JSON object (or a string holding the
    /// document as text). Checked by the plugin's own validation.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Option<serde_json::Value>,
    /// `fail-closed` (default) or `fail-open`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub failure_policy: Option<FailurePolicy>,
}

/// `POST …/binding/rollback`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The revision to return to; default: the one before the current.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// A binding slot as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BindingsView {
    /// In force.
    pub current: Option<BindingDoc>,
    /// Every binding made here, newest first.
    pub history: Vec<BindingDoc>,
}

/// `PUT /admin/v1/clients/{client}/plan`: caps, alerts, billing, included usage.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// `prepaid` or `postpaid`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub billing: Option<tollgate_ledger::Billing>,
    /// Hard monthly cap (`null`: none).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub monthly_cap: Option<Decimal>,
    /// Alert thresholds, percent of the cap (1–100, each at most once).
    #[serde(default)]
    pub alert_thresholds: Option<Vec<u32>>,
    /// Included usage granted each period.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub included_per_period: Option<Decimal>,
}

/// `POST /admin/v1/clients/{client}/credits`: a prepaid top-up.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpBody {
    /// Amount, positive.
    #[schema(value_type = String)]
    pub amount: Decimal,
    /// Retrying with the same key applies the top-up once.
    pub idempotency_key: String,
    /// When the credit lapses.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Serde helper for PATCH fields: absent → `None`, `null` → `Some(None)`.
mod patch {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}
