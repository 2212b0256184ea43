//! The admin domain: every operation the admin API offers, as functions that
//! take the authenticated [`Principal`] and return typed results or
//! [`AdminError`]s. No HTTP here (that is `http.rs`).
//!
//! Every change is one atomic control-store write with its audit entry,
//! made under a single write lock, after which the data path's directory is
//! rebuilt and swapped in: requests already in flight keep the binding they
//! started with; the next request sees the change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_ledger::{
    AuditEntry, AuditQuery, ControlChange, ControlError, ControlStore, Document, DocumentWrite,
    Ledger, LedgerError,
};
use tollgate_plugin_types::{ModelOffer, Outcome, RequestSummary, Usage};

use super::model::{kind, *};
use crate::alerts::Webhook;
use crate::gateway::tenancy::{
    ADMIN_TOKEN_PREFIX, APP_KEY_PREFIX, AppKey, Binding, ClientEntry, Directory, RateLimit,
    generate_key, hash_key,
};
use crate::plugin::policy::FailurePolicy;
use crate::plugin::{CompiledPlugin, PluginRuntime, PluginStats};

/// Who is calling the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The marketplace operator: sees and changes everything.
    Operator,
    /// An agency admin: sees and changes only its own agency.
    Agency {
        /// The agency.
        agency_id: String,
        /// The token used.
        token_id: String,
    },
    /// The gateway itself, applying the config file.
    Config,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::Agency { token_id, .. } => format!("token:{token_id}"),
            Principal::Config => "config".into(),
        }
    }

    fn own_agency(&self) -> Option<&str> {
        match self {
            Principal::Agency { agency_id, .. } => Some(agency_id),
            _ => None,
        }
    }

    /// Whether this caller may see agency `id`'s objects.
    fn sees(&self, agency: &str) -> bool {
        self.own_agency().is_none_or(|own| own == agency)
    }
}

/// Why an admin operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but this operation is the operator's.
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist (or belongs to another agency).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Object kind.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The upload is not an acceptable plugin.
    #[error("{0}")]
    PluginRefused(String),
    /// The plugin's own validation refused the configuration.
    #[error("the plugin refused its configuration: {0}")]
    ConfigRefused(String),
    /// The body exceeds a size cap.
    #[error("body too large: at most {0} bytes")]
    TooLarge(usize),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The control store failed.
    #[error("control store: {0}")]
    Store(String),
}

impl From<tollgate_ledger::StoreError> for AdminError {
    fn from(e: tollgate_ledger::StoreError) -> Self {
        AdminError::Store(e.to_string())
    }
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Conflict { .. } => AdminError::Conflict(format!(
                "{e}; nothing was changed, read the object again and retry"
            )),
            ControlError::Store(e) => e.into(),
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn not_found(kind: &'static str, id: &str) -> AdminError {
    AdminError::NotFound {
        kind,
        id: id.chars().take(128).collect(),
    }
}

fn operator_only(what: &str) -> AdminError {
    AdminError::Forbidden(format!("{what} is reserved to the operator"))
}

/// A new random id with `prefix` (64 bits: unguessable enough for ids,
/// which are not secrets).
fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn hint(secret: &str) -> String {
    let shown: String = secret.chars().take(14).collect();
    format!("{shown}…")
}

pub(crate) fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(v).map_err(|e| AdminError::Store(format!("encode: {e}")))
}

fn from_doc<T: DeserializeOwned>(doc: &Document) -> Result<T, AdminError> {
    serde_json::from_value(doc.body.clone())
        .map_err(|e| AdminError::Store(format!("{} {}: {e}", doc.kind, doc.id)))
}

/// Checks an agency id: lower-case letters, digits and `-`, 1–64 characters.
pub fn check_agency_id(id: &str) -> Result<(), AdminError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            "use 1 to 64 lower-case letters, digits and `-`",
        ))
    }
}

fn check_name(field: &str, name: &str) -> Result<(), AdminError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

fn check_label(field: &str, label: &str, max: usize) -> Result<(), AdminError> {
    if label.chars().count() > max || label.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(
            field,
            format!("must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

fn check_fee(fee: Decimal) -> Result<(), AdminError> {
    if fee < Decimal::ZERO || fee > Decimal::ONE_HUNDRED {
        return Err(invalid("platform_fee_percent", "must be between 0 and 100"));
    }
    Ok(())
}

fn check_webhook_url(url: &str) -> Result<(), AdminError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && reqwest::Url::parse(url).is_ok();
    if ok {
        Ok(())
    } else {
        Err(invalid("webhook_url", "must be an http(s) URL"))
    }
}

fn check_expiry(expires_at: Option<DateTime<Utc>>) -> Result<(), AdminError> {
    if let Some(at) = expires_at
        && at <= Utc::now()
    {
        return Err(invalid("expires_at", "must be in the future"));
    }
    Ok(())
}

fn check_sha(field: &str, sha: &str) -> Result<(), AdminError> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(field, "must be a sha256 in hex (64 characters)"))
    }
}

/// Normalises a binding's configuration to JSON text.
fn config_text(config: Option<serde_json::Value>) -> Result<String, AdminError> {
    match config {
        None | Some(serde_json::Value::Null) => Ok("{}".into()),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(v @ serde_json::Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(invalid(
            "config",
            "must be a JSON object, or a string holding the configuration document",
        )),
    }
}

/// Settings the admin service starts with.
pub struct AdminSettings {
    /// sha256 of the operator token, if one is configured.
    pub operator_token_sha256: Option<[u8; 32]>,
    /// Platform fee when an agency has no override.
    pub default_platform_fee: Decimal,
    /// Largest accepted plugin upload.
    pub max_plugin_bytes: usize,
    /// The model catalog (for smoke runs and model checks).
    pub offers: Vec<ModelOffer>,
}

/// The admin service.
pub struct Admin {
    store: Arc<dyn ControlStore>,
    ledger: Ledger,
    runtime: PluginRuntime,
    settings: AdminSettings,
    directory: Arc<ArcSwap<Directory>>,
    webhooks: Arc<ArcSwap<HashMap<String, Webhook>>>,
    tokens: ArcSwap<HashMap<[u8; 32], TokenDoc>>,
    plugins: Mutex<PluginCache>,
    limiters: Mutex<HashMap<String, Arc<RateLimit>>>,
    /// Per (agency, version) call figures: agencies that upload the same
    /// bytes share the compiled component, never each other's numbers.
    version_stats: Mutex<HashMap<(String, String), Arc<PluginStats>>>,
    write: tokio::sync::Mutex<()>,
}

/// Compiled plugin versions by sha256: every bound version, plus the few
/// unbound ones used most recently (just uploaded, just rolled away from), so
/// a bind right after an upload or a quick rollback does not recompile. Older
/// unbound versions are dropped at the next directory rebuild and compiled
/// again if they are ever bound: compiled code is megabytes per version and
/// uploads never stop.
#[derive(Default)]
struct PluginCache {
    entries: HashMap<String, (Arc<CompiledPlugin>, u64)>,
    tick: u64,
}

/// Unbound versions kept compiled.
const UNBOUND_PLUGINS_KEPT: usize = 2;

impl PluginCache {
    fn get(&mut self, sha: &str) -> Option<Arc<CompiledPlugin>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(sha).map(|(plugin, used)| {
            *used = tick;
            plugin.clone()
        })
    }

    fn insert(&mut self, sha: &str, plugin: Arc<CompiledPlugin>) {
        self.tick += 1;
        self.entries.insert(sha.to_owned(), (plugin, self.tick));
    }

    /// Keeps `bound` and the most recently used of the rest.
    fn prune(&mut self, bound: &HashSet<&str>) {
        let mut unbound: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(sha, _)| !bound.contains(sha.as_str()))
            .map(|(sha, (_, used))| (*used, sha.clone()))
            .collect();
        unbound.sort_unstable_by_key(|(used, _)| std::cmp::Reverse(*used));
        for (_, sha) in unbound.into_iter().skip(UNBOUND_PLUGINS_KEPT) {
            self.entries.remove(&sha);
        }
    }
}

/// One audited change: the documents written and the audit entry that
/// describes them, applied together.
pub(crate) struct Change<'a> {
    /// The agency the change belongs to (`None` for operator-wide changes).
    pub agency: Option<&'a str>,
    /// What was done, e.g. `client.create`.
    pub action: &'a str,
    /// (kind, id) of the object changed.
    pub object: (&'a str, &'a str),
    /// The object's view before the change (`None` where it did not exist
    /// or is not shown).
    pub before: Option<serde_json::Value>,
    /// Its view after the change.
    pub after: Option<serde_json::Value>,
    /// The documents written.
    pub writes: Vec<DocumentWrite>,
}

impl<'a> Change<'a> {
    /// A new object: `doc` written as `kind`/`id` at revision 0, audited as
    /// `action` with `after` as its view.
    pub(crate) fn created<T: Serialize>(
        agency: Option<&'a str>,
        action: &'a str,
        (kind, id): (&'a str, &'a str),
        doc: &T,
        after: serde_json::Value,
    ) -> Result<Self, AdminError> {
        Ok(Change {
            agency,
            action,
            object: (kind, id),
            before: None,
            after: Some(after),
            writes: vec![Admin::put(kind, id, doc, 0)?],
        })
    }
}

/// Default and maximum page size of listings.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

impl Admin {
    /// A service over the ledger's control store; call [`Admin::refresh`]
    /// before serving.
    pub fn new(
        ledger: Ledger,
        runtime: PluginRuntime,
        settings: AdminSettings,
        directory: Arc<ArcSwap<Directory>>,
        webhooks: Arc<ArcSwap<HashMap<String, Webhook>>>,
    ) -> Self {
        Self {
            store: ledger.control(),
            ledger,
            runtime,
            settings,
            directory,
            webhooks,
            tokens: ArcSwap::default(),
            plugins: Mutex::default(),
            limiters: Mutex::default(),
            version_stats: Mutex::default(),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Largest accepted plugin upload.
    pub fn max_plugin_bytes(&self) -> usize {
        self.settings.max_plugin_bytes
    }

    /// The control store.
    pub fn store(&self) -> &dyn ControlStore {
        &*self.store
    }

    /// Resolves an `Authorization` header to the admin caller.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AdminError> {
        let header = authorization.ok_or_else(|| {
            AdminError::Unauthorized(
                "missing admin token: send `Authorization: Bearer tg_admin_…`".into(),
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or(header)
            .trim();
        if token.starts_with(APP_KEY_PREFIX) {
            return Err(AdminError::Unauthorized(
                "client app keys (`tg_live_…`) cannot use the admin API; use a `tg_admin_…` token"
                    .into(),
            ));
        }
        if !token.starts_with(ADMIN_TOKEN_PREFIX) {
            return Err(AdminError::Unauthorized(
                "invalid admin token: admin tokens start with `tg_admin_`".into(),
            ));
        }
        let hash = hash_key(token);
        if self.settings.operator_token_sha256 == Some(hash) {
            return Ok(Principal::Operator);
        }
        let tokens = self.tokens.load();
        let doc = tokens
            .get(&hash)
            .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|at| at > Utc::now()))
            .ok_or_else(|| {
                AdminError::Unauthorized("invalid, expired or revoked admin token".into())
            })?;
        Ok(Principal::Agency {
            agency_id: doc.agency_id.clone(),
            token_id: doc.id.clone(),
        })
    }

    // ----- reading documents, with tenant checks -------------------------

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        id: &str,
    ) -> Result<Option<(u64, T)>, AdminError> {
        match self.store.get(kind, id)? {
            Some(doc) => Ok(Some((doc.revision, from_doc(&doc)?))),
            None => Ok(None),
        }
    }

    pub(crate) fn list<T: DeserializeOwned>(
        &self,
        kind: &'static str,
    ) -> Result<Vec<T>, AdminError> {
        self.store.list(kind)?.iter().map(from_doc).collect()
    }

    fn agency(&self, p: &Principal, id: &str) -> Result<(u64, AgencyDoc), AdminError> {
        if !p.sees(id) {
            return Err(not_found("agency", id));
        }
        self.get(kind::AGENCY, id)?
            .ok_or_else(|| not_found("agency", id))
    }

    fn client(&self, p: &Principal, id: &str) -> Result<(u64, ClientDoc), AdminError> {
        match self.get::<ClientDoc>(kind::CLIENT, id)? {
            Some((rev, c)) if p.sees(&c.agency_id) => Ok((rev, c)),
            _ => Err(not_found("client", id)),
        }
    }

    fn app(&self, p: &Principal, id: &str) -> Result<(u64, AppDoc), AdminError> {
        match self.get::<AppDoc>(kind::APP, id)? {
            Some((rev, a)) if p.sees(&a.agency_id) => Ok((rev, a)),
            _ => Err(not_found("app", id)),
        }
    }

    /// The agency a request acts for: an agency token's own; the operator
    /// must name one.
    fn acting_agency(&self, p: &Principal, named: Option<&str>) -> Result<String, AdminError> {
        let id = match (p.own_agency(), named) {
            (Some(own), Some(named)) if own != named => return Err(not_found("agency", named)),
            (Some(own), _) => own.to_owned(),
            (None, Some(named)) => named.to_owned(),
            (None, None) => return Err(invalid("agency_id", "the operator must name the agency")),
        };
        self.agency(p, &id)?;
        Ok(id)
    }

    fn plugin_doc(&self, p: &Principal, agency: &str, sha: &str) -> Result<PluginDoc, AdminError> {
        check_sha("plugin_sha256", sha)?;
        let sha = sha.to_ascii_lowercase();
        if !p.sees(agency) {
            return Err(not_found("plugin version", &sha));
        }
        self.get::<PluginDoc>(kind::PLUGIN, &format!("{agency}/{sha}"))?
            .map(|(_, d)| d)
            .ok_or_else(|| not_found("plugin version", &sha))
    }

    // ----- writing ---------------------------------------------------------

    /// Applies `change.writes` atomically with one audit entry naming `p`.
    /// Callers hold the write lock (or, at start, are the only writer).
    pub(crate) fn record(&self, p: &Principal, change: Change<'_>) -> Result<(), AdminError> {
        let Change {
            agency,
            action,
            object,
            before,
            after,
            writes,
        } = change;
        self.store.apply(ControlChange {
            writes,
            audit: Some(AuditEntry {
                seq: 0,
                at: Utc::now(),
                actor: p.actor(),
                agency_id: agency.map(str::to_owned),
                action: action.into(),
                object_kind: object.0.into(),
                object_id: object.1.into(),
                before,
                after,
            }),
        })?;
        Ok(())
    }

    /// [`Admin::record`], then the data path's directory is rebuilt.
    async fn commit(&self, p: &Principal, change: Change<'_>) -> Result<(), AdminError> {
        self.record(p, change)?;
        self.refresh().await
    }

    pub(crate) fn put<T: Serialize>(
        kind: &str,
        id: &str,
        body: &T,
        expect_revision: u64,
    ) -> Result<DocumentWrite, AdminError> {
        Ok(DocumentWrite {
            kind: kind.into(),
            id: id.into(),
            body: Some(to_value(body)?),
            expect_revision: Some(expect_revision),
        })
    }

    // ----- the directory ---------------------------------------------------

    /// The compiled plugin `sha`, loading it from the store if needed.
    async fn compiled(&self, sha: &str) -> Result<Arc<CompiledPlugin>, AdminError> {
        if let Some(hit) = self.lock_plugins().get(sha) {
            return Ok(hit);
        }
        let bytes = self
            .store
            .get_blob(sha)?
            .ok_or_else(|| AdminError::Store(format!("plugin binary {sha} is missing")))?;
        let plugin = self
            .runtime
            .load(bytes)
            .await
            .map_err(|e| AdminError::PluginRefused(e.to_string()))?;
        self.lock_plugins().insert(sha, plugin.clone());
        Ok(plugin)
    }

    fn version_stats(&self, agency: &str, sha: &str) -> Arc<PluginStats> {
        self.version_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((agency.to_owned(), sha.to_owned()))
            .or_default()
            .clone()
    }

    fn lock_plugins(&self) -> std::sync::MutexGuard<'_, PluginCache> {
        self.plugins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn limiter(&self, client: &str, per_minute: Option<u32>) -> Option<Arc<RateLimit>> {
        let per_minute = std::num::NonZeroU32::new(per_minute?)?;
        let mut limiters = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Keep a client's bucket across rebuilds so an admin change does not
        // hand every client a fresh burst.
        match limiters.get(client) {
            Some(l) if l.per_minute_limit() == per_minute.get() => Some(l.clone()),
            _ => {
                let l = Arc::new(RateLimit::per_minute(per_minute));
                limiters.insert(client.to_owned(), l.clone());
                Some(l)
            }
        }
    }

    /// Rebuilds the data path's directory, the token table and the webhook
    /// table from the control store, and swaps them in.
    pub async fn refresh(&self) -> Result<(), AdminError> {
        let agencies: Vec<AgencyDoc> = self.list(kind::AGENCY)?;
        let clients: Vec<ClientDoc> = self.list(kind::CLIENT)?;
        let keys: Vec<AppKeyDoc> = self.list(kind::APP_KEY)?;
        let tokens: Vec<TokenDoc> = self.list(kind::ADMIN_TOKEN)?;
        let defaults: HashMap<&str, &BindingDoc> = agencies
            .iter()
            .filter_map(|a| Some((a.id.as_str(), a.binding.current.as_ref()?)))
            .collect();
        let mut directory = Directory::default();
        let mut live = HashSet::new();
        let mut bound = HashSet::new();
        let mut limited = HashSet::new();
        for client in clients.iter().filter(|c| c.disabled_at.is_none()) {
            live.insert(client.id.as_str());
            let Some(doc) = client
                .binding
                .current
                .as_ref()
                .or_else(|| defaults.get(client.agency_id.as_str()).copied())
            else {
                directory.insert_unbound(&client.id);
                continue;
            };
            let plugin = match self.compiled(&doc.plugin_sha256).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(client = %client.id, plugin = %doc.plugin_sha256, error = %e,
                        "cannot load the bound plugin; the client's requests are refused");
                    directory.insert_unbound(&client.id);
                    continue;
                }
            };
            bound.insert(doc.plugin_sha256.as_str());
            if client.rate_limit_per_minute.is_some() {
                limited.insert(client.id.as_str());
            }
            directory.insert_client(ClientEntry {
                id: client.id.clone(),
                agency_id: client.agency_id.clone(),
                binding: Arc::new(Binding::new(
                    plugin,
                    doc.config.as_str().into(),
                    doc.failure_policy,
                    self.version_stats(&client.agency_id, &doc.plugin_sha256),
                )),
                models: client.models.as_ref().map(|m| m.iter().cloned().collect()),
                rate_limit: self.limiter(&client.id, client.rate_limit_per_minute),
            });
        }
        for key in keys {
            if key.revoked_at.is_some() || !live.contains(key.client_id.as_str()) {
                continue;
            }
            let Ok(hash) = hex::decode(&key.sha256)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or(())
            else {
                tracing::error!(key = %key.id, "stored key hash is malformed; key ignored");
                continue;
            };
            directory.insert_key(
                hash,
                AppKey {
                    client_id: key.client_id,
                    app_id: key.app_id,
                    expires_at: key.expires_at,
                },
            );
        }
        let token_table = tokens
            .into_iter()
            .filter_map(|t| {
                let hash = <[u8; 32]>::try_from(hex::decode(&t.sha256).ok()?).ok()?;
                Some((hash, t))
            })
            .collect();
        let webhook_table = agencies
            .iter()
            .filter_map(|a| {
                Some((
                    a.id.clone(),
                    Webhook {
                        url: a.webhook_url.clone()?,
                        secret: a.webhook_secret.clone()?.into_bytes(),
                    },
                ))
            })
            .collect();
        self.directory.store(Arc::new(directory));
        self.tokens.store(Arc::new(token_table));
        self.webhooks.store(Arc::new(webhook_table));
        // Requests in flight hold their binding's plugin themselves; these
        // are only the caches for the next rebuild.
        self.lock_plugins().prune(&bound);
        self.limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|client, _| limited.contains(client.as_str()));
        Ok(())
    }

    // ----- views -----------------------------------------------------------

    fn agency_view(&self, a: &AgencyDoc) -> AgencyView {
        AgencyView {
            id: a.id.clone(),
            name: a.name.clone(),
            created_at: a.created_at,
            platform_fee_percent: a
                .platform_fee_percent
                .unwrap_or(self.settings.default_platform_fee),
            webhook_url: a.webhook_url.clone(),
            webhook_secret_set: a.webhook_secret.is_some(),
            default_binding: a.binding.current.clone(),
        }
    }

    fn client_view(&self, c: &ClientDoc) -> Result<ClientView, AdminError> {
        let effective = match &c.binding.current {
            Some(b) => Some(b.clone()),
            None => self
                .get::<AgencyDoc>(kind::AGENCY, &c.agency_id)?
                .and_then(|(_, a)| a.binding.current),
        };
        Ok(ClientView {
            id: c.id.clone(),
            agency_id: c.agency_id.clone(),
            name: c.name.clone(),
            created_at: c.created_at,
            models: c.models.clone(),
            rate_limit_per_minute: c.rate_limit_per_minute,
            binding: c.binding.current.clone(),
            effective_binding: effective,
            disabled_at: c.disabled_at,
        })
    }

    fn token_view(t: &TokenDoc) -> CredentialView {
        CredentialView {
            id: t.id.clone(),
            hint: t.hint.clone(),
            label: t.label.clone(),
            agency_id: t.agency_id.clone(),
            client_id: None,
            app_id: None,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }

    fn key_view(k: &AppKeyDoc) -> CredentialView {
        CredentialView {
            id: k.id.clone(),
            hint: k.hint.clone(),
            label: k.label.clone(),
            agency_id: k.agency_id.clone(),
            client_id: Some(k.client_id.clone()),
            app_id: Some(k.app_id.clone()),
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
        }
    }

    // ----- agencies ----------------------------------------------------------

    /// Creates an agency (operator).
    pub async fn create_agency(
        &self,
        p: &Principal,
        body: CreateAgency,
    ) -> Result<AgencyView, AdminError> {
        if p.own_agency().is_some() {
            return Err(operator_only("creating agencies"));
        }
        check_agency_id(&body.id)?;
        check_name("name", &body.name)?;
        if let Some(fee) = body.platform_fee_percent {
            check_fee(fee)?;
        }
        if let Some(url) = &body.webhook_url {
            check_webhook_url(url)?;
        }
        if let Some(secret) = &body.webhook_secret {
            check_label("webhook_secret", secret, 512)?;
        }
        let _guard = self.write.lock().await;
        if self.store.get(kind::AGENCY, &body.id)?.is_some() {
            return Err(AdminError::Conflict(format!(
                "agency {:?} already exists",
                body.id
            )));
        }
        let doc = AgencyDoc {
            id: body.id.clone(),
            name: body.name,
            created_at: Utc::now(),
            platform_fee_percent: body.platform_fee_percent,
            webhook_url: body.webhook_url,
            webhook_secret: body.webhook_secret,
            binding: BindingSlot::default(),
            seed: None,
        };
        let view = self.agency_view(&doc);
        self.commit(
            p,
            Change::created(
                Some(&doc.id),
                "agency.create",
                (kind::AGENCY, &doc.id),
                &doc,
                to_value(&view)?,
            )?,
        )
        .await?;
        Ok(view)
    }

    /// Agencies the caller can see.
    pub fn list_agencies(&self, p: &Principal) -> Result<Vec<AgencyView>, AdminError> {
        Ok(self
            .list::<AgencyDoc>(kind::AGENCY)?
            .iter()
            .filter(|a| p.sees(&a.id))
            .map(|a| self.agency_view(a))
            .collect())
    }

    /// One agency.
    pub fn get_agency(&self, p: &Principal, id: &str) -> Result<AgencyView, AdminError> {
        Ok(self.agency_view(&self.agency(p, id)?.1))
    }

    /// Changes an agency's name, webhook or (operator) fee.
    pub async fn update_agency(
        &self,
        p: &Principal,
        id: &str,
        body: UpdateAgency,
    ) -> Result<AgencyView, AdminError> {
        if let Some(name) = &body.name {
            check_name("name", name)?;
        }
        if let Some(fee) = body.platform_fee_percent {
            if p.own_agency().is_some() {
                return Err(operator_only("setting the platform fee"));
            }
            if let Some(fee) = fee {
                check_fee(fee)?;
            }
        }
        if let Some(Some(url)) = &body.webhook_url {
            check_webhook_url(url)?;
        }
        if let Some(Some(secret)) = &body.webhook_secret {
            check_label("webhook_secret", secret, 512)?;
        }
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.agency(p, id)?;
        let before = self.agency_view(&doc);
        if let Some(name) = body.name {
            doc.name = name;
        }
        if let Some(fee) = body.platform_fee_percent {
            doc.platform_fee_percent = fee;
        }
        if let Some(url) = body.webhook_url {
            doc.webhook_url = url;
        }
        if let Some(secret) = body.webhook_secret {
            doc.webhook_secret = secret;
        }
        let after = self.agency_view(&doc);
        self.commit(
            p,
            Change {
                agency: Some(id),
                action: "agency.update",
                object: (kind::AGENCY, id),
                before: Some(to_value(&before)?),
                after: Some(to_value(&after)?),
                writes: vec![Self::put(kind::AGENCY, id, &doc, rev)?],
            },
        )
        .await?;
        Ok(after)
    }

    // ----- admin tokens ------------------------------------------------------

    /// Creates an agency admin token; the secret is returned once.
    pub async fn create_token(
        &self,
        p: &Principal,
        agency: &str,
        body: CreateCredential,
    ) -> Result<NewCredential, AdminError> {
        check_expiry(body.expires_at)?;
        let label = body.label.unwrap_or_default();
        check_label("label", &label, 200)?;
        let _guard = self.write.lock().await;
        self.agency(p, agency)?;
        let secret = generate_key(ADMIN_TOKEN_PREFIX);
        let doc = TokenDoc {
            id: new_id("tok_"),
            agency_id: agency.to_owned(),
            sha256: hex::encode(hash_key(&secret)),
            hint: hint(&secret),
            label,
            created_at: Utc::now(),
            created_by: p.actor(),
            expires_at: body.expires_at,
            revoked_at: None,
        };
        let view = Self::token_view(&doc);
        self.commit(
            p,
            Change::created(
                Some(agency),
                "token.create",
                (kind::ADMIN_TOKEN, &doc.id),
                &doc,
                to_value(&view)?,
            )?,
        )
        .await?;
        Ok(NewCredential {
            secret,
            credential: view,
        })
    }

    /// Stores a token whose secret the caller already made (the demo's).
    pub async fn adopt_token(
        &self,
        agency: &str,
        secret: &str,
        label: &str,
    ) -> Result<(), AdminError> {
        let _guard = self.write.lock().await;
        let sha = hex::encode(hash_key(secret));
        let exists = self
            .list::<TokenDoc>(kind::ADMIN_TOKEN)?
            .iter()
            .any(|t| t.sha256 == sha);
        if exists {
            return Ok(());
        }
        let doc = TokenDoc {
            id: new_id("tok_"),
            agency_id: agency.to_owned(),
            sha256: sha,
            hint: hint(secret),
            label: label.to_owned(),
            created_at: Utc::now(),
            created_by: Principal::Config.actor(),
            expires_at: None,
            revoked_at: None,
        };
        let view = Self::token_view(&doc);
        self.commit(
            &Principal::Config,
            Change::created(
                Some(agency),
                "token.create",
                (kind::ADMIN_TOKEN, &doc.id),
                &doc,
                to_value(&view)?,
            )?,
        )
        .await
    }

    /// An agency's admin tokens.
    pub fn list_tokens(
        &self,
        p: &Principal,
        agency: &str,
    ) -> Result<Vec<CredentialView>, AdminError> {
        self.agency(p, agency)?;
        Ok(self
            .list::<TokenDoc>(kind::ADMIN_TOKEN)?
            .iter()
            .filter(|t| t.agency_id == agency)
            .map(Self::token_view)
            .collect())
    }

    /// Revokes an admin token.
    pub async fn revoke_token(
        &self,
        p: &Principal,
        agency: &str,
        token_id: &str,
    ) -> Result<CredentialView, AdminError> {
        let _guard = self.write.lock().await;
        self.agency(p, agency)?;
        let (rev, mut doc) = self
            .get::<TokenDoc>(kind::ADMIN_TOKEN, token_id)?
            .filter(|(_, t)| t.agency_id == agency)
            .ok_or_else(|| not_found("token", token_id))?;
        if doc.revoked_at.is_some() {
            return Ok(Self::token_view(&doc));
        }
        let before = Self::token_view(&doc);
        doc.revoked_at = Some(Utc::now());
        let after = Self::token_view(&doc);
        self.commit(
            p,
            Change {
                agency: Some(agency),
                action: "token.revoke",
                object: (kind::ADMIN_TOKEN, token_id),
                before: Some(to_value(&before)?),
                after: Some(to_value(&after)?),
                writes: vec![Self::put(kind::ADMIN_TOKEN, token_id, &doc, rev)?],
            },
        )
        .await?;
        Ok(after)
    }

    // ----- clients -----------------------------------------------------------

    fn check_models(&self, models: &Option<Vec<String>>) -> Result<(), AdminError> {
        if let Some(models) = models {
            if models.len() > 1000 {
                return Err(invalid("models", "at most 1000 models"));
            }
            for m in models {
                if !self.settings.offers.iter().any(|o| &o.model == m) {
                    return Err(invalid(
                        "models",
                        format!("{m:?} is not in the model catalog"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Creates a client of an agency.
    pub async fn create_client(
        &self,
        p: &Principal,
        body: CreateClient,
    ) -> Result<ClientView, AdminError> {
        check_name("name", &body.name)?;
        self.check_models(&body.models)?;
        let _guard = self.write.lock().await;
        let agency = self.acting_agency(p, body.agency_id.as_deref())?;
        let doc = ClientDoc {
            id: new_id("cl_"),
            agency_id: agency.clone(),
            name: body.name,
            created_at: Utc::now(),
            models: body.models,
            rate_limit_per_minute: body.rate_limit_per_minute,
            binding: BindingSlot::default(),
            disabled_at: None,
            seed: None,
        };
        let mut plan = self.ledger.plan(&doc.id)?;
        plan.agency_id = Some(agency.clone());
        self.ledger.set_plan(plan)?;
        let view = self.client_view(&doc)?;
        self.commit(
            p,
            Change::created(
                Some(&agency),
                "client.create",
                (kind::CLIENT, &doc.id),
                &doc,
                to_value(&view)?,
            )?,
        )
        .await?;
        Ok(view)
    }

    /// Clients the caller can see, optionally of one agency.
    pub fn list_clients(
        &self,
        p: &Principal,
        agency: Option<&str>,
    ) -> Result<Vec<ClientView>, AdminError> {
        if let Some(a) = agency {
            self.agency(p, a)?;
        }
        self.list::<ClientDoc>(kind::CLIENT)?
            .iter()
            .filter(|c| p.sees(&c.agency_id) && agency.is_none_or(|a| a == c.agency_id))
            .map(|c| self.client_view(c))
            .collect()
    }

    /// One client.
    pub fn get_client(&self, p: &Principal, id: &str) -> Result<ClientView, AdminError> {
        self.client_view(&self.client(p, id)?.1)
    }

    /// Changes a client's name, models or rate limit.
    pub async fn update_client(
        &self,
        p: &Principal,
        id: &str,
        body: UpdateClient,
    ) -> Result<ClientView, AdminError> {
        if let Some(name) = &body.name {
            check_name("name", name)?;
        }
        if let Some(models) = &body.models {
            self.check_models(models)?;
        }
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.client(p, id)?;
        let before = self.client_view(&doc)?;
        if let Some(name) = body.name {
            doc.name = name;
        }
        if let Some(models) = body.models {
            doc.models = models;
        }
        if let Some(limit) = body.rate_limit_per_minute {
            doc.rate_limit_per_minute = limit;
        }
        let after = self.client_view(&doc)?;
        self.commit(
            p,
            Change {
                agency: Some(&doc.agency_id),
                action: "client.update",
                object: (kind::CLIENT, id),
                before: Some(to_value(&before)?),
                after: Some(to_value(&after)?),
                writes: vec![Self::put(kind::CLIENT, id, &doc, rev)?],
            },
        )
        .await?;
        Ok(after)
    }

    /// Disables a client: its keys stop working at once; its records,
    /// statements and credits stay.
    pub async fn delete_client(&self, p: &Principal, id: &str) -> Result<ClientView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.client(p, id)?;
        if doc.disabled_at.is_some() {
            return self.client_view(&doc);
        }
        let before = self.client_view(&doc)?;
        doc.disabled_at = Some(Utc::now());
        let after = self.client_view(&doc)?;
        self.commit(
            p,
            Change {
                agency: Some(&doc.agency_id),
                action: "client.delete",
                object: (kind::CLIENT, id),
                before: Some(to_value(&before)?),
                after: Some(to_value(&after)?),
                writes: vec![Self::put(kind::CLIENT, id, &doc, rev)?],
            },
        )
        .await?;
        Ok(after)
    }

    // ----- apps and keys -----------------------------------------------------

    /// Creates an app of a client.
    pub async fn create_app(
        &self,
        p: &Principal,
        client: &str,
        body: CreateApp,
    ) -> Result<AppDoc, AdminError> {
        check_name("name", &body.name)?;
        let _guard = self.write.lock().await;
        let (_, c) = self.client(p, client)?;
        let doc = AppDoc {
            id: new_id("app_"),
            client_id: c.id.clone(),
            agency_id: c.agency_id.clone(),
            name: body.name,
            created_at: Utc::now(),
        };
        self.commit(
            p,
            Change::created(
                Some(&c.agency_id),
                "app.create",
                (kind::APP, &doc.id),
                &doc,
                to_value(&doc)?,
            )?,
        )
        .await?;
        Ok(doc)
    }

    /// A client's apps.
    pub fn list_apps(&self, p: &Principal, client: &str) -> Result<Vec<AppDoc>, AdminError> {
        self.client(p, client)?;
        Ok(self
            .list::<AppDoc>(kind::APP)?
            .into_iter()
            .filter(|a| a.client_id == client)
            .collect())
    }

    /// Creates a client app key; the secret is returned once.
    pub async fn create_key(
        &self,
        p: &Principal,
        app: &str,
        body: CreateCredential,
    ) -> Result<NewCredential, AdminError> {
        check_expiry(body.expires_at)?;
        let label = body.label.unwrap_or_default();
        check_label("label", &label, 200)?;
        let _guard = self.write.lock().await;
        let (_, a) = self.app(p, app)?;
        let secret = generate_key(APP_KEY_PREFIX);
        let doc = AppKeyDoc {
            id: new_id("key_"),
            app_id: a.id.clone(),
            client_id: a.client_id.clone(),
            agency_id: a.agency_id.clone(),
            sha256: hex::encode(hash_key(&secret)),
            hint: hint(&secret),
            label,
            created_at: Utc::now(),
            expires_at: body.expires_at,
            revoked_at: None,
            from_config: false,
        };
        let view = Self::key_view(&doc);
        self.commit(
            p,
            Change::created(
                Some(&a.agency_id),
                "key.create",
                (kind::APP_KEY, &doc.id),
                &doc,
                to_value(&view)?,
            )?,
        )
        .await?;
        Ok(NewCredential {
            secret,
            credential: view,
        })
    }

    /// An app's keys.
    pub fn list_keys(&self, p: &Principal, app: &str) -> Result<Vec<CredentialView>, AdminError> {
        self.app(p, app)?;
        Ok(self
            .list::<AppKeyDoc>(kind::APP_KEY)?
            .iter()
            .filter(|k| k.app_id == app)
            .map(Self::key_view)
            .collect())
    }

    /// Revokes a client app key; it stops working at once.
    pub async fn revoke_key(&self, p: &Principal, key: &str) -> Result<CredentialView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self
            .get::<AppKeyDoc>(kind::APP_KEY, key)?
            .filter(|(_, k)| p.sees(&k.agency_id))
            .ok_or_else(|| not_found("key", key))?;
        if doc.revoked_at.is_some() {
            return Ok(Self::key_view(&doc));
        }
        let before = Self::key_view(&doc);
        doc.revoked_at = Some(Utc::now());
        let after = Self::key_view(&doc);
        self.commit(
            p,
            Change {
                agency: Some(&doc.agency_id.clone()),
                action: "key.revoke",
                object: (kind::APP_KEY, key),
                before: Some(to_value(&before)?),
                after: Some(to_value(&after)?),
                writes: vec![Self::put(kind::APP_KEY, key, &doc, rev)?],
            },
        )
        .await?;
        Ok(after)
    }

    // ----- plugins -----------------------------------------------------------

    fn plugin_view(&self, d: &PluginDoc) -> Result<PluginView, AdminError> {
        let mut bound_to = Vec::new();
        if let Some((_, a)) = self.get::<AgencyDoc>(kind::AGENCY, &d.agency_id)?
            && a.binding
                .current
                .as_ref()
                .is_some_and(|b| b.plugin_sha256 == d.sha256)
        {
            bound_to.push("*".to_owned());
        }
        for c in self.list::<ClientDoc>(kind::CLIENT)? {
            if c.agency_id == d.agency_id
                && c.disabled_at.is_none()
                && c.binding
                    .current
                    .as_ref()
                    .is_some_and(|b| b.plugin_sha256 == d.sha256)
            {
                bound_to.push(c.id);
            }
        }
        let s = self.version_stats(&d.agency_id, &d.sha256);
        let metrics = VersionMetrics {
            calls: s.calls(),
            errors: s.errors(),
            mean_latency_us: s.mean_micros(),
            max_latency_us: s.max_micros(),
        };
        Ok(PluginView {
            sha256: d.sha256.clone(),
            agency_id: d.agency_id.clone(),
            label: d.label.clone(),
            note: d.note.clone(),
            size_bytes: d.size_bytes,
            uploaded_at: d.uploaded_at,
            uploaded_by: d.uploaded_by.clone(),
            name: d.name.clone(),
            version: d.version.clone(),
            description: d.description.clone(),
            smoke: d.smoke.clone(),
            bound_to,
            metrics,
        })
    }

    /// Uploads a plugin component: validated, compiled, smoke-run, stored
    /// as an immutable version. Re-uploading the same bytes returns the
    /// existing version (`false` = not new).
    pub async fn upload_plugin(
        &self,
        p: &Principal,
        agency: Option<&str>,
        bytes: Vec<u8>,
        label: Option<String>,
        note: Option<String>,
        sample_config: Option<String>,
    ) -> Result<(PluginView, bool), AdminError> {
        if bytes.len() > self.settings.max_plugin_bytes {
            return Err(AdminError::TooLarge(self.settings.max_plugin_bytes));
        }
        if bytes.is_empty() {
            return Err(invalid(
                "body",
                "send the component's bytes as the request body",
            ));
        }
        let label = label.unwrap_or_default();
        let note = note.unwrap_or_default();
        check_label("label", &label, 200)?;
        check_label("note", &note, 2000)?;
        let agency = self.acting_agency(p, agency)?;
        let sha = crate::plugin::ContentHash::of(&bytes).hex();
        let id = format!("{agency}/{sha}");
        if let Some((_, existing)) = self.get::<PluginDoc>(kind::PLUGIN, &id)? {
            return Ok((self.plugin_view(&existing)?, false));
        }
        let plugin =
            self.runtime.load(bytes.clone()).await.map_err(|e| {
                AdminError::PluginRefused(format!("the component was refused: {e}"))
            })?;
        let sample_config = sample_config.unwrap_or_else(|| "{}".into());
        let smoke = self.smoke(&plugin, &sample_config).await?;
        self.store.put_blob(&sha, &bytes)?;
        self.lock_plugins().insert(&sha, plugin.clone());
        let info = plugin.info();
        let doc = PluginDoc {
            agency_id: agency.clone(),
            sha256: sha.clone(),
            label,
            note,
            size_bytes: bytes.len() as u64,
            uploaded_at: Utc::now(),
            uploaded_by: p.actor(),
            name: info.name.clone(),
            version: info.version.clone(),
            description: info.description.clone(),
            smoke: Some(smoke),
        };
        let _guard = self.write.lock().await;
        if let Some((_, existing)) = self.get::<PluginDoc>(kind::PLUGIN, &id)? {
            return Ok((self.plugin_view(&existing)?, false));
        }
        self.commit(
            p,
            Change {
                agency: Some(&agency),
                action: "plugin.upload",
                object: (kind::PLUGIN, &sha),
                before: None,
                after: Some(to_value(&doc)?),
                writes: vec![Self::put(kind::PLUGIN, &id, &doc, 0)?],
            },
        )
        .await?;
        Ok((self.plugin_view(&doc)?, true))
    }

    /// Runs `validate-config`, `route`, `meter` and `price` on sample inputs.
    async fn smoke(
        &self,
        plugin: &CompiledPlugin,
        sample_config: &str,
    ) -> Result<SmokeReport, AdminError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            AdminError::PluginRefused(format!("smoke run: `{what}` failed: {e}"))
        };
        match plugin.validate_config(sample_config).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(AdminError::PluginRefused(format!(
                    "smoke run: the plugin refused the sample configuration {sample_config}: {message}; \
                     pass a configuration it accepts as `sample_config`"
                )));
            }
            Err(e) => return Err(failed("validate-config", &e)),
        }
        let offers: Vec<ModelOffer> = self.settings.offers.clone();
        let Some(first) = offers.first() else {
            return Err(AdminError::PluginRefused(
                "smoke run: the gateway has no models in its catalog".into(),
            ));
        };
        let mut request = RequestSummary {
            request_id: "smoke-run".into(),
            timestamp_ms: Utc::now().timestamp_millis(),
            agency_id: "smoke-agency".into(),
            client_id: "smoke-client".into(),
            app_id: "smoke-app".into(),
            requested_model: first.model.clone(),
            message_count: 2,
            estimated_prompt_tokens: 250,
            max_tokens: Some(256),
            currency: self.ledger.currency().code().to_owned(),
            ..RequestSummary::default()
        };
        request.tags.insert("smoke".into(), "true".into());
        let mut session = plugin
            .session("smoke-run")
            .await
            .map_err(|e| failed("route", &e))?;
        let route = session
            .route(sample_config, &request, &offers)
            .await
            .map_err(|e| failed("route", &e))?;
        let (route_text, served, bound) = match &route {
            Ok(decision) => (
                format!(
                    "{} via {}",
                    decision.primary.model, decision.primary.provider
                ),
                decision.primary.clone(),
                self.runtime.surcharge_bound(decision),
            ),
            Err(rejection) => (
                format!("rejected: {}", rejection.message),
                first.reference(),
                self.runtime.limits().default_surcharge_bound,
            ),
        };
        let offer = offers
            .iter()
            .find(|o| o.is(&served))
            .unwrap_or(first)
            .clone();
        let usage = Usage {
            served_by: offer.reference(),
            input_tokens: 250,
            output_tokens: 180,
            cached_input_tokens: 0,
            provider_cost: offer.cost(250, 180, 0),
            latency_ms: 800,
            outcome: Outcome::Completed,
            estimated: false,
        };
        let mut session = plugin
            .session("smoke-run")
            .await
            .map_err(|e| failed("meter", &e))?;
        let units = session
            .meter(sample_config, &request, &usage)
            .await
            .map_err(|e| failed("meter", &e))?;
        let quote = session
            .price(sample_config, &request, &usage, &units, bound)
            .await
            .map_err(|e| failed("price", &e))?;
        Ok(SmokeReport {
            route: route_text,
            units: units
                .iter()
                .map(|u| format!("{}×{}", u.name, u.quantity.normalize()))
                .collect(),
            surcharge: quote.surcharge,
            sample_config: sample_config.to_owned(),
        })
    }

    /// An agency's plugin versions, newest first.
    pub fn list_plugins(
        &self,
        p: &Principal,
        agency: Option<&str>,
    ) -> Result<Vec<PluginView>, AdminError> {
        if let Some(a) = agency {
            self.agency(p, a)?;
        }
        let mut docs: Vec<PluginDoc> = self
            .list::<PluginDoc>(kind::PLUGIN)?
            .into_iter()
            .filter(|d| p.sees(&d.agency_id) && agency.is_none_or(|a| a == d.agency_id))
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d.uploaded_at));
        docs.iter().map(|d| self.plugin_view(d)).collect()
    }

    /// One plugin version of the caller's agency (the operator names one).
    pub fn get_plugin(
        &self,
        p: &Principal,
        agency: Option<&str>,
        sha: &str,
    ) -> Result<PluginView, AdminError> {
        let agency = match (p.own_agency(), agency) {
            (Some(own), _) => own.to_owned(),
            (None, Some(a)) => a.to_owned(),
            (None, None) => {
                // The operator may look a version up by hash alone.
                check_sha("plugin_sha256", sha)?;
                let sha = sha.to_ascii_lowercase();
                let doc = self
                    .list::<PluginDoc>(kind::PLUGIN)?
                    .into_iter()
                    .find(|d| d.sha256 == sha)
                    .ok_or_else(|| not_found("plugin version", &sha))?;
                return self.plugin_view(&doc);
            }
        };
        self.plugin_view(&self.plugin_doc(p, &agency, sha)?)
    }

    // ----- bindings ----------------------------------------------------------

    /// Checks a binding request against the plugin's own config validation.
    async fn make_binding(
        &self,
        p: &Principal,
        agency: &str,
        body: SetBinding,
        revision: u64,
    ) -> Result<BindingDoc, AdminError> {
        let doc = self.plugin_doc(p, agency, &body.plugin_sha256)?;
        let config = config_text(body.config)?;
        if config.len() > 64 * 1024 {
            return Err(invalid("config", "must be at most 64 KiB"));
        }
        let plugin = self.compiled(&doc.sha256).await?;
        match plugin.validate_config(&config).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(AdminError::ConfigRefused(message)),
            Err(e) => {
                return Err(AdminError::PluginRefused(format!(
                    "the plugin failed while validating the configuration: {e}"
                )));
            }
        }
        Ok(BindingDoc {
            revision,
            plugin_sha256: doc.sha256,
            config,
            failure_policy: body.failure_policy.unwrap_or(FailurePolicy::FailClosed),
            bound_at: Utc::now(),
            bound_by: p.actor(),
        })
    }

    fn slot_view(slot: &BindingSlot) -> BindingsView {
        BindingsView {
            current: slot.current.clone(),
            history: slot.history.iter().rev().cloned().collect(),
        }
    }

    /// Binds a plugin version and configuration to a client.
    pub async fn bind_client(
        &self,
        p: &Principal,
        client: &str,
        body: SetBinding,
    ) -> Result<BindingsView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.client(p, client)?;
        let binding = self
            .make_binding(p, &doc.agency_id.clone(), body, doc.binding.next_revision())
            .await?;
        self.set_client_slot(p, rev, &mut doc, Some(binding), "binding.set")
            .await
    }

    async fn set_client_slot(
        &self,
        p: &Principal,
        rev: u64,
        doc: &mut ClientDoc,
        binding: Option<BindingDoc>,
        action: &str,
    ) -> Result<BindingsView, AdminError> {
        let before = doc.binding.replace(binding);
        let object = (kind::CLIENT, doc.id.as_str());
        self.save_slot(
            p,
            action,
            &doc.agency_id,
            object,
            rev,
            &*doc,
            &doc.binding,
            before,
        )
        .await
    }

    /// Stores a document whose binding slot changed, audited as the slot's
    /// before and after.
    #[allow(clippy::too_many_arguments)]
    async fn save_slot<D: Serialize>(
        &self,
        p: &Principal,
        action: &str,
        agency: &str,
        object: (&str, &str),
        rev: u64,
        doc: &D,
        slot: &BindingSlot,
        before: Option<BindingDoc>,
    ) -> Result<BindingsView, AdminError> {
        self.commit(
            p,
            Change {
                agency: Some(agency),
                action,
                object,
                before: Some(to_value(&before)?),
                after: Some(to_value(&slot.current)?),
                writes: vec![Self::put(object.0, object.1, doc, rev)?],
            },
        )
        .await?;
        Ok(Self::slot_view(slot))
    }

    /// A client's binding and its history.
    pub fn client_bindings(&self, p: &Principal, client: &str) -> Result<BindingsView, AdminError> {
        Ok(Self::slot_view(&self.client(p, client)?.1.binding))
    }

    /// Removes a client's own binding (the agency default applies again).
    pub async fn unbind_client(
        &self,
        p: &Principal,
        client: &str,
    ) -> Result<BindingsView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.client(p, client)?;
        self.set_client_slot(p, rev, &mut doc, None, "binding.remove")
            .await
    }

    /// A new binding that repeats revision `revision` of `slot` (by
    /// default the one before the binding in force).
    fn rollback_binding(
        slot: &BindingSlot,
        revision: Option<u64>,
        p: &Principal,
    ) -> Result<BindingDoc, AdminError> {
        let target = match revision {
            Some(r) => slot.history.iter().find(|b| b.revision == r),
            None => {
                let current = slot.current.as_ref().map(|b| b.revision);
                slot.history
                    .iter()
                    .rev()
                    .find(|b| Some(b.revision) < current || current.is_none())
            }
        };
        let target = target.cloned().ok_or_else(|| match revision {
            Some(r) => invalid("revision", format!("no binding revision {r} here")),
            None => AdminError::Conflict("there is no earlier binding to roll back to".into()),
        })?;
        Ok(BindingDoc {
            revision: slot.next_revision(),
            bound_at: Utc::now(),
            bound_by: p.actor(),
            ..target
        })
    }

    /// Re-binds an earlier binding revision (the previous one by default).
    pub async fn rollback_client(
        &self,
        p: &Principal,
        client: &str,
        body: Rollback,
    ) -> Result<BindingsView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.client(p, client)?;
        let binding = Self::rollback_binding(&doc.binding, body.revision, p)?;
        self.set_client_slot(p, rev, &mut doc, Some(binding), "binding.rollback")
            .await
    }

    /// Sets the agency-wide default binding.
    pub async fn bind_agency(
        &self,
        p: &Principal,
        agency: &str,
        body: SetBinding,
    ) -> Result<BindingsView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.agency(p, agency)?;
        let binding = self
            .make_binding(p, agency, body, doc.binding.next_revision())
            .await?;
        self.set_agency_slot(p, rev, &mut doc, Some(binding), "default_binding.set")
            .await
    }

    async fn set_agency_slot(
        &self,
        p: &Principal,
        rev: u64,
        doc: &mut AgencyDoc,
        binding: Option<BindingDoc>,
        action: &str,
    ) -> Result<BindingsView, AdminError> {
        let before = doc.binding.replace(binding);
        let object = (kind::AGENCY, doc.id.as_str());
        self.save_slot(p, action, &doc.id, object, rev, &*doc, &doc.binding, before)
            .await
    }

    /// The agency default binding and its history.
    pub fn agency_bindings(&self, p: &Principal, agency: &str) -> Result<BindingsView, AdminError> {
        Ok(Self::slot_view(&self.agency(p, agency)?.1.binding))
    }

    /// Re-binds an earlier agency default.
    pub async fn rollback_agency(
        &self,
        p: &Principal,
        agency: &str,
        body: Rollback,
    ) -> Result<BindingsView, AdminError> {
        let _guard = self.write.lock().await;
        let (rev, mut doc) = self.agency(p, agency)?;
        let binding = Self::rollback_binding(&doc.binding, body.revision, p)?;
        self.set_agency_slot(p, rev, &mut doc, Some(binding), "default_binding.rollback")
            .await
    }

    // ----- plans and credits ---------------------------------------------------

    /// A client's plan: billing, cap, alert thresholds, included usage.
    pub fn get_plan(
        &self,
        p: &Principal,
        client: &str,
    ) -> Result<tollgate_ledger::ClientPlan, AdminError> {
        self.client(p, client)?;
        Ok(self.ledger.plan(client)?)
    }

    /// Changes a client's plan; absent fields stay.
    pub async fn set_plan(
        &self,
        p: &Principal,
        client: &str,
        body: PlanBody,
    ) -> Result<tollgate_ledger::ClientPlan, AdminError> {
        if let Some(cap) = body.monthly_cap
            && (cap <= Decimal::ZERO || cap > Decimal::from(crate::config::MAX_AMOUNT))
        {
            return Err(invalid(
                "monthly_cap",
                format!("must be positive and at most {}", crate::config::MAX_AMOUNT),
            ));
        }
        if let Some(inc) = body.included_per_period
            && (inc < Decimal::ZERO || inc > Decimal::from(crate::config::MAX_AMOUNT))
        {
            return Err(invalid(
                "included_per_period",
                "must be between 0 and the maximum amount",
            ));
        }
        if let Some(t) = &body.alert_thresholds {
            let unique: HashSet<_> = t.iter().collect();
            if t.len() > 10 || unique.len() != t.len() || t.iter().any(|&x| x == 0 || x > 100) {
                return Err(invalid(
                    "alert_thresholds",
                    "at most 10 distinct percentages between 1 and 100",
                ));
            }
        }
        let _guard = self.write.lock().await;
        let (_, c) = self.client(p, client)?;
        let before = self.ledger.plan(client)?;
        let mut plan = before.clone();
        plan.agency_id = Some(c.agency_id.clone());
        if let Some(b) = body.billing {
            plan.billing = b;
        }
        if body.monthly_cap.is_some() {
            plan.monthly_cap = body.monthly_cap;
        }
        if let Some(mut t) = body.alert_thresholds {
            t.sort_unstable();
            plan.alert_thresholds_pct = t;
        }
        if let Some(inc) = body.included_per_period {
            plan.included_per_period = inc;
        }
        self.ledger.set_plan(plan.clone())?;
        self.record(
            p,
            Change {
                agency: Some(&c.agency_id),
                action: "plan.set",
                object: ("plan", client),
                before: Some(to_value(&before)?),
                after: Some(to_value(&plan)?),
                writes: vec![],
            },
        )?;
        Ok(plan)
    }

    /// Removes a client's monthly cap.
    pub async fn clear_cap(
        &self,
        p: &Principal,
        client: &str,
    ) -> Result<tollgate_ledger::ClientPlan, AdminError> {
        let _guard = self.write.lock().await;
        let (_, c) = self.client(p, client)?;
        let before = self.ledger.plan(client)?;
        let mut plan = before.clone();
        plan.monthly_cap = None;
        self.ledger.set_plan(plan.clone())?;
        self.record(
            p,
            Change {
                agency: Some(&c.agency_id),
                action: "plan.clear_cap",
                object: ("plan", client),
                before: Some(to_value(&before)?),
                after: Some(to_value(&plan)?),
                writes: vec![],
            },
        )?;
        Ok(plan)
    }

    /// A prepaid top-up (idempotent by key).
    pub async fn top_up(
        &self,
        p: &Principal,
        client: &str,
        body: TopUpBody,
    ) -> Result<(tollgate_ledger::CreditBucket, bool), AdminError> {
        if body.amount <= Decimal::ZERO || body.amount > Decimal::from(crate::config::MAX_AMOUNT) {
            return Err(invalid(
                "amount",
                format!("must be positive and at most {}", crate::config::MAX_AMOUNT),
            ));
        }
        if body.idempotency_key.is_empty() || body.idempotency_key.len() > 200 {
            return Err(invalid("idempotency_key", "must be 1 to 200 characters"));
        }
        check_expiry(body.expires_at)?;
        let (_, c) = self.client(p, client)?;
        // Credit keys are global in the ledger; scope them by client so
        // agencies cannot collide (or probe each other's keys).
        let key = format!("{client}/{}", body.idempotency_key);
        let outcome = self
            .ledger
            .top_up(client, body.amount, &key, body.expires_at)?;
        let (bucket, applied) = match outcome {
            tollgate_ledger::TopUpOutcome::Applied(b) => (b, true),
            tollgate_ledger::TopUpOutcome::Duplicate(b) => (b, false),
        };
        if applied {
            self.record(
                p,
                Change {
                    agency: Some(&c.agency_id),
                    action: "credit.top_up",
                    object: ("client", client),
                    before: None,
                    after: Some(to_value(&bucket)?),
                    writes: vec![],
                },
            )?;
        }
        Ok((bucket, applied))
    }

    /// A client's balance and credit entries.
    pub fn balance(
        &self,
        p: &Principal,
        client: &str,
    ) -> Result<(tollgate_ledger::Balance, Vec<tollgate_ledger::CreditEntry>), AdminError> {
        self.client(p, client)?;
        Ok((
            self.ledger.balance(client)?,
            self.ledger.credit_entries(client)?,
        ))
    }

    // ----- reports -------------------------------------------------------------

    /// Usage records, filtered and paginated.
    pub fn usage(
        &self,
        p: &Principal,
        mut query: tollgate_ledger::RecordQuery,
    ) -> Result<tollgate_ledger::Page<tollgate_ledger::StoredRecord>, AdminError> {
        query.limit = match query.limit {
            0 => PAGE_DEFAULT,
            n => n.min(PAGE_MAX),
        };
        // Cursors are the hex `next_cursor` of an earlier page; anything else
        // is the caller's mistake, not a store failure.
        if let Some(cursor) = &query.cursor
            && hex::decode(cursor).is_err()
        {
            return Err(invalid(
                "cursor",
                "must be the `next_cursor` of an earlier page",
            ));
        }
        if let Some(client) = &query.client {
            self.client(p, client)?;
        }
        match (p.own_agency(), &query.agency) {
            (Some(own), Some(named)) if own != named => return Err(not_found("agency", named)),
            (Some(own), _) => query.agency = Some(own.to_owned()),
            (None, _) => {}
        }
        let mut page = self.ledger.records(&query)?;
        // The tenancy boundary does not rest on the store's filter alone.
        if let Some(agency) = &query.agency {
            page.items.retain(|r| &r.record.agency_id == agency);
        }
        Ok(page)
    }

    /// A client's statement.
    pub fn statement(
        &self,
        p: &Principal,
        client: &str,
        period: tollgate_ledger::Period,
    ) -> Result<tollgate_ledger::Statement, AdminError> {
        self.client(p, client)?;
        Ok(self.ledger.statement(client, period)?)
    }

    /// An agency's payout for a closed period, with its fee.
    pub fn payout(
        &self,
        p: &Principal,
        agency: &str,
        period: tollgate_ledger::Period,
    ) -> Result<tollgate_ledger::Payout, AdminError> {
        let (_, a) = self.agency(p, agency)?;
        let fee = a
            .platform_fee_percent
            .unwrap_or(self.settings.default_platform_fee);
        Ok(self.ledger.payout_with_fee(agency, period, fee)?)
    }

    /// What is owed to each provider (operator).
    pub fn settlement(
        &self,
        p: &Principal,
        period: tollgate_ledger::Period,
    ) -> Result<tollgate_ledger::Settlement, AdminError> {
        if p.own_agency().is_some() {
            return Err(operator_only("provider settlement"));
        }
        Ok(self.ledger.settlement(period)?)
    }

    /// The audit log, newest first: an agency sees its own entries.
    pub fn audit(
        &self,
        p: &Principal,
        agency: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AdminError> {
        let agency = match (p.own_agency(), agency) {
            (Some(own), Some(a)) if own != a => return Err(not_found("agency", a)),
            (Some(own), _) => Some(own.to_owned()),
            (None, a) => a.map(str::to_owned),
        };
        Ok(self.store.audit(&AuditQuery {
            agency_id: agency,
            before,
            limit: match limit {
                0 => PAGE_DEFAULT,
                n => n.min(PAGE_MAX),
            },
        })?)
    }

    // ----- the config file -------------------------------------------------------

    pub(crate) fn write_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.write
    }

    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub(crate) fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    pub(crate) fn remember_plugin(&self, sha: &str, plugin: Arc<CompiledPlugin>) {
        self.lock_plugins().insert(sha, plugin);
    }

    /// How many plugin versions are compiled and held by the admin cache.
    pub fn loaded_plugin_versions(&self) -> usize {
        self.lock_plugins().entries.len()
    }
}
