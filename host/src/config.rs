//! The gateway's TOML configuration: parsed strictly, then validated into
//! typed settings.
//!
//! Parsing refuses unknown keys (`deny_unknown_fields`); validation checks
//! what types cannot (prices present and exact, ids unique, references
//! resolvable). Every failure is a [`ConfigError`] naming the file, the key
//! and the reason, so a bad config stops the gateway at start, not at the
//! first request.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use tollgate_plugin_types::ModelOffer;

use crate::plugin::policy::FailurePolicy;

/// A configuration problem: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key, as a dotted path (`models[2].input_per_mtok`), or `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    agencies: Vec<RawAgency>,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    operator_token_env: Option<String>,
    operator_token_sha256: Option<String>,
    alert_poll_ms: Option<u64>,
    max_plugin_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    batch_interval_ms: Option<u64>,
    record_linger_us: Option<u64>,
    currency: Option<String>,
    timezone: Option<String>,
    grace_hours: Option<u32>,
    platform_fee_percent: Option<String>,
    cache_mib: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    deadline_ms: Option<u64>,
    memory_mib: Option<usize>,
    default_surcharge_bound: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: String,
    kind: String,
    base_url: Option<String>,
    api_key_env: Option<String>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    provider: String,
    upstream_model: Option<String>,
    kind: Option<String>,
    input_per_mtok: Option<String>,
    output_per_mtok: Option<String>,
    cached_input_per_mtok: Option<String>,
    context_window: Option<u32>,
    price_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    id: String,
    name: Option<String>,
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    agency: String,
    plugin: PathBuf,
    #[serde(default)]
    plugin_config: Option<toml::Value>,
    failure_policy: Option<String>,
    models: Option<Vec<String>>,
    billing: Option<String>,
    rate_limit_per_minute: Option<u32>,
    monthly_cap: Option<String>,
    alert_thresholds: Option<Vec<u32>>,
    included_per_period: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    client: String,
    app: String,
    sha256: String,
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// sha256 of the operator's admin token, read from the environment
    /// variable `server.operator_token_env` names (default
    /// `TOLLGATE_OPERATOR_TOKEN`); `None` when unset.
    pub operator_token_sha256: Option<[u8; 32]>,
    /// How often the alert outbox is drained.
    pub alert_poll: Duration,
    /// Largest plugin component the admin API accepts.
    pub max_plugin_bytes: usize,
}

/// Ledger settings.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// The sled data directory.
    pub data_dir: PathBuf,
    /// `sync` (default) or `batched`.
    pub durability: Durability,
    /// Currency code of every amount.
    pub currency: String,
    /// IANA timezone of billing periods.
    pub timezone: String,
    /// Hours after a month ends before it closes.
    pub grace_hours: u32,
    /// The operator's fee on agency earnings, percent.
    pub platform_fee_percent: Decimal,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
}

/// How usage records reach disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before the response completes (group commit).
    Sync,
    /// Flushed every `flush_every`. The ledger writer waits `record_linger`
    /// after a record arrives so records are written in larger groups (the
    /// gateway does not wait for its records in this mode). The `usage-so-far`
    /// a plugin sees counts a record from when it is queued, so the wait does
    /// not hide a client's previous request from its next one.
    Batched {
        /// How often the ledger is flushed to disk.
        flush_every: Duration,
        /// How long the writer gathers records before writing a group.
        record_linger: Duration,
    },
}

/// The default `ledger.record_linger_us` in `batched` mode: 1 ms. Measured
/// with `bench/ab.sh` (closed loop, 64 connections): it cut the gateway's CPU
/// per request by 8–14 % against none; see BENCHMARKS.md.
pub const DEFAULT_RECORD_LINGER: Duration = Duration::from_millis(1);

/// Plugin runtime settings.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Memory cap per instance.
    pub memory_bytes: usize,
    /// Bound used when a route declares none.
    pub default_surcharge_bound: Decimal,
}

/// What kind of upstream a provider is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// An OpenAI-compatible HTTP API.
    OpenAi {
        /// Base URL ending before `/chat/completions`, e.g. `https://api.example.com/v1`.
        base_url: String,
        /// Environment variable holding the API key.
        api_key_env: Option<String>,
    },
    /// The built-in, in-process demo provider.
    Demo,
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Its id, used in the catalog.
    pub id: String,
    /// What it is.
    pub kind: ProviderKind,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of one attempt (until the response headers for streams).
    pub timeout: Duration,
    /// Retries of the same provider before moving to the next fallback.
    pub max_retries: u32,
}

/// Which endpoint a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Chat completions.
    Chat,
    /// Embeddings.
    Embeddings,
}

/// One priced model of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// The offer as plugins see it.
    pub offer: ModelOffer,
    /// The model name sent upstream.
    pub upstream_model: String,
    /// Its endpoint.
    pub kind: ModelKind,
}

/// A client bound to a plugin, defined in the file.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Client id.
    pub id: String,
    /// Owning agency.
    pub agency: String,
    /// Path of the plugin component.
    pub plugin: PathBuf,
    /// The plugin's configuration document (JSON text).
    pub plugin_config: String,
    /// What a plugin failure does.
    pub failure_policy: FailurePolicy,
    /// Models the client may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Billing, cap, alerts and included usage (`None`: leave the ledger's plan as is).
    pub plan: Option<PlanSettings>,
    /// Most requests per minute (`None`: unlimited).
    pub rate_limit_per_minute: Option<u32>,
}

/// A client's commercial settings from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    /// Prepaid (refused when the balance cannot cover a request) or postpaid.
    pub prepaid: bool,
    /// Hard monthly cap.
    pub monthly_cap: Option<Decimal>,
    /// Alert thresholds, percent of the cap.
    pub alert_thresholds: Vec<u32>,
    /// Usage included each period.
    pub included_per_period: Decimal,
}

/// An agency's alert webhook.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The URL.
    pub url: String,
    /// The HMAC key.
    pub secret: Vec<u8>,
}

/// An app key, stored as the sha256 of the key.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// The client.
    pub client: String,
    /// The app.
    pub app: String,
    /// sha256 of the key.
    pub sha256: [u8; 32],
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// Server settings.
    pub server: ServerSettings,
    /// Ledger settings.
    pub ledger: LedgerSettings,
    /// Plugin runtime settings.
    pub plugins: PluginSettings,
    /// Upstream providers.
    pub providers: Vec<ProviderSettings>,
    /// The model catalog.
    pub models: Vec<CatalogEntry>,
    /// Agencies: id → display name.
    pub agencies: BTreeMap<String, String>,
    /// Agencies' alert webhooks, by agency id.
    pub webhooks: BTreeMap<String, WebhookSettings>,
    /// Clients.
    pub clients: Vec<ClientSettings>,
    /// App keys.
    pub keys: Vec<KeySettings>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        Validator { file: path }.validate(raw)
    }
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e.span().map(|span| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    });
    let message = e.message().to_owned();
    // toml names the key in "unknown field `x`" messages; report the
    // enclosing table from the error's own key path when it has one.
    ConfigError {
        file: path.to_owned(),
        key: e
            .span()
            .and_then(|span| key_at(text, span.start))
            .unwrap_or_else(|| "-".into()),
        reason: format!("{message}{}", location.unwrap_or_default()),
    }
}

/// The `[table]` or `[[array]]` header in force at byte `offset`, with the
/// key on that line: enough for a human to find the spot.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let table = before.lines().rev().find_map(|l| {
        let t = l.trim();
        t.starts_with('[')
            .then(|| t.trim_matches(|c| c == '[' || c == ']').to_owned())
    });
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (Some(t), None) => Some(t),
        (None, Some(k)) => Some(k.to_owned()),
        (None, None) => None,
    }
}

struct Validator<'a> {
    file: &'a Path,
}

/// Where the operator token is read from when `server.operator_token_env`
/// is not set.
pub const DEFAULT_OPERATOR_TOKEN_ENV: &str = "TOLLGATE_OPERATOR_TOKEN";

/// The largest amount (price, cap, top-up) accepted anywhere.
pub const MAX_AMOUNT: u64 = 1_000_000_000;

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Ids name things in keys and records: non-empty, printable, bounded.
    fn id(&self, key: String, id: &str) -> Result<(), ConfigError> {
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(self.err(key, "must be 1 to 256 printable characters"));
        }
        Ok(())
    }

    fn decimal(&self, key: String, text: Option<&str>) -> Result<Decimal, ConfigError> {
        let text = text.ok_or_else(|| {
            self.err(
                &key,
                "is required: a model with no price is never billed at zero",
            )
        })?;
        let value = tollgate_plugin_types::decimal::parse_lenient(text).map_err(|e| {
            self.err(
                &key,
                format!("{e} (write prices as strings, e.g. \"0.15\")"),
            )
        })?;
        if value.is_sign_negative() && !value.is_zero() {
            return Err(self.err(&key, "must not be negative"));
        }
        // Far above any real price or cap, far below where exact arithmetic
        // on token counts could overflow.
        if value > Decimal::from(MAX_AMOUNT) {
            return Err(self.err(&key, format!("must be at most {MAX_AMOUNT}")));
        }
        Ok(value)
    }

    /// A sha256 written as 64 hex digits.
    fn sha256(&self, key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
        hex::decode(text)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                self.err(
                    key,
                    "must be a sha256 as 64 hex digits (printf '%s' TOKEN | sha256sum)",
                )
            })
    }

    /// The operator token's hash, from the environment.
    fn operator_token(&self, env: Option<&str>) -> Result<Option<[u8; 32]>, ConfigError> {
        let (name, required) = match env {
            Some(name) => (name, true),
            None => (DEFAULT_OPERATOR_TOKEN_ENV, false),
        };
        let token = match std::env::var(name) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ if required => {
                return Err(self.err(
                    "server.operator_token_env",
                    format!("the environment variable {name} is not set"),
                ));
            }
            _ => return Ok(None),
        };
        if !token.starts_with(crate::gateway::tenancy::ADMIN_TOKEN_PREFIX) || token.len() < 41 {
            return Err(self.err(
                "server.operator_token_env",
                format!(
                    "the token in {name} must start with `tg_admin_` and carry at least 32 random characters"
                ),
            ));
        }
        Ok(Some(crate::gateway::tenancy::hash_key(&token)))
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let base_dir = self.file.parent().unwrap_or(Path::new("."));
        let listen = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let server = ServerSettings {
            listen: listen.parse().map_err(|e| {
                self.err(
                    "server.listen",
                    format!("{listen:?} is not an address: {e}"),
                )
            })?,
            max_body_bytes: raw.server.max_body_bytes.unwrap_or(4 << 20),
            operator_token_sha256: match raw.server.operator_token_sha256.as_deref() {
                Some(_) if raw.server.operator_token_env.is_some() => {
                    return Err(self.err(
                        "server.operator_token_sha256",
                        "set either operator_token_sha256 or operator_token_env, not both",
                    ));
                }
                Some(hex_hash) => Some(self.sha256("server.operator_token_sha256", hex_hash)?),
                None => self.operator_token(raw.server.operator_token_env.as_deref())?,
            },
            alert_poll: Duration::from_millis(raw.server.alert_poll_ms.unwrap_or(1000).max(10)),
            max_plugin_bytes: raw.server.max_plugin_bytes.unwrap_or(16 << 20),
        };
        if !(1024..=256 << 20).contains(&server.max_plugin_bytes) {
            return Err(self.err(
                "server.max_plugin_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        if server.max_body_bytes < 1024 {
            return Err(self.err("server.max_body_bytes", "must be at least 1024"));
        }

        let durability = match raw.ledger.durability.as_deref().unwrap_or("sync") {
            "sync" if raw.ledger.record_linger_us.is_some() => {
                return Err(self.err(
                    "ledger.record_linger_us",
                    "applies only to durability = \"batched\" (a `sync` writer never waits)",
                ));
            }
            "sync" => Durability::Sync,
            "batched" => {
                let flush_every =
                    Duration::from_millis(raw.ledger.batch_interval_ms.unwrap_or(10).max(1));
                let record_linger = match raw.ledger.record_linger_us {
                    None => DEFAULT_RECORD_LINGER,
                    Some(us) if us <= 1_000_000 && Duration::from_micros(us) <= flush_every => {
                        Duration::from_micros(us)
                    }
                    Some(_) => {
                        return Err(self.err(
                            "ledger.record_linger_us",
                            "must be at most batch_interval_ms and at most 1000000 (records \
                             would wait longer than the flush window)",
                        ));
                    }
                };
                Durability::Batched {
                    flush_every,
                    record_linger,
                }
            }
            other => {
                return Err(self.err(
                    "ledger.durability",
                    format!("{other:?} is not `sync` or `batched`"),
                ));
            }
        };
        let currency = raw.ledger.currency.unwrap_or_else(|| "USD".into());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(self.err(
                "ledger.currency",
                format!("{currency:?} is not an ISO 4217 code"),
            ));
        }
        let ledger = LedgerSettings {
            data_dir: base_dir.join(
                raw.ledger
                    .data_dir
                    .unwrap_or_else(|| "tollgate-data".into()),
            ),
            durability,
            currency,
            timezone: raw.ledger.timezone.unwrap_or_else(|| "UTC".into()),
            grace_hours: raw.ledger.grace_hours.unwrap_or(72),
            platform_fee_percent: match raw.ledger.platform_fee_percent {
                Some(p) => {
                    let fee = self.decimal("ledger.platform_fee_percent".into(), Some(&p))?;
                    if fee > Decimal::ONE_HUNDRED {
                        return Err(self.err("ledger.platform_fee_percent", "must be at most 100"));
                    }
                    fee
                }
                None => Decimal::TEN,
            },
            cache_bytes: match raw.ledger.cache_mib {
                None => tollgate_ledger::DEFAULT_CACHE_BYTES,
                Some(mib @ 1..=65536) => mib << 20,
                Some(_) => return Err(self.err("ledger.cache_mib", "must be between 1 and 65536")),
            },
        };

        let plugins = PluginSettings {
            deadline: Duration::from_millis(raw.plugins.deadline_ms.unwrap_or(5)),
            memory_bytes: match raw.plugins.memory_mib.unwrap_or(32) {
                mib @ 1..=4096 => mib << 20,
                _ => return Err(self.err("plugins.memory_mib", "must be between 1 and 4096")),
            },
            default_surcharge_bound: match raw.plugins.default_surcharge_bound {
                Some(b) => self.decimal("plugins.default_surcharge_bound".into(), Some(&b))?,
                None => Decimal::ONE_HUNDRED,
            },
        };
        // Plugin calls run on the async workers; a long deadline would let a
        // looping plugin hold a worker for that long.
        if plugins.deadline.is_zero() || plugins.deadline > Duration::from_secs(1) {
            return Err(self.err("plugins.deadline_ms", "must be between 1 and 1000"));
        }

        let mut provider_ids = HashSet::new();
        let mut providers = Vec::new();
        for (i, p) in raw.providers.into_iter().enumerate() {
            let key = |field: &str| format!("providers[{i}].{field}");
            self.id(key("id"), &p.id)?;
            if !provider_ids.insert(p.id.clone()) {
                return Err(self.err(key("id"), format!("provider {:?} is defined twice", p.id)));
            }
            let kind = match p.kind.as_str() {
                "demo" => ProviderKind::Demo,
                "openai" => {
                    let base_url = p.base_url.ok_or_else(|| {
                        self.err(key("base_url"), "is required for kind = \"openai\"")
                    })?;
                    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                        return Err(self.err(
                            key("base_url"),
                            format!("{base_url:?} is not an http(s) URL"),
                        ));
                    }
                    if let Some(var) = &p.api_key_env
                        && std::env::var_os(var).is_none()
                    {
                        return Err(self.err(
                            key("api_key_env"),
                            format!("environment variable {var} is not set"),
                        ));
                    }
                    ProviderKind::OpenAi {
                        base_url: base_url.trim_end_matches('/').to_owned(),
                        api_key_env: p.api_key_env,
                    }
                }
                other => {
                    return Err(
                        self.err(key("kind"), format!("{other:?} is not `openai` or `demo`"))
                    );
                }
            };
            providers.push(ProviderSettings {
                id: p.id,
                kind,
                connect_timeout: Duration::from_millis(
                    match p.connect_timeout_ms.unwrap_or(2_000) {
                        0 => return Err(self.err(key("connect_timeout_ms"), "must be at least 1")),
                        ms => ms,
                    },
                ),
                timeout: Duration::from_millis(match p.timeout_ms.unwrap_or(120_000) {
                    0 => return Err(self.err(key("timeout_ms"), "must be at least 1")),
                    ms => ms,
                }),
                max_retries: p.max_retries.unwrap_or(1).min(5),
            });
        }

        let mut model_keys = HashSet::new();
        let mut models = Vec::new();
        for (i, m) in raw.models.into_iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            self.id(key("model"), &m.model)?;
            if !provider_ids.contains(&m.provider) {
                return Err(self.err(
                    key("provider"),
                    format!("no provider {:?} is defined", m.provider),
                ));
            }
            if !model_keys.insert((m.model.clone(), m.provider.clone())) {
                return Err(self.err(
                    key("model"),
                    format!("{} from {} is listed twice", m.model, m.provider),
                ));
            }
            let kind = match m.kind.as_deref().unwrap_or("chat") {
                "chat" => ModelKind::Chat,
                "embeddings" => ModelKind::Embeddings,
                other => {
                    return Err(self.err(
                        key("kind"),
                        format!("{other:?} is not `chat` or `embeddings`"),
                    ));
                }
            };
            let offer = ModelOffer {
                input_per_mtok: self.decimal(key("input_per_mtok"), m.input_per_mtok.as_deref())?,
                output_per_mtok: self
                    .decimal(key("output_per_mtok"), m.output_per_mtok.as_deref())?,
                cached_input_per_mtok: match m.cached_input_per_mtok.as_deref() {
                    Some(t) => self.decimal(key("cached_input_per_mtok"), Some(t))?,
                    None => self.decimal(key("input_per_mtok"), m.input_per_mtok.as_deref())?,
                },
                context_window: m.context_window.filter(|w| *w > 0).ok_or_else(|| {
                    self.err(key("context_window"), "is required and must be positive")
                })?,
                price_version: m.price_version.ok_or_else(|| {
                    self.err(
                        key("price_version"),
                        "is required (it is stored on every usage record)",
                    )
                })?,
                model: m.model.clone(),
                provider: m.provider,
            };
            models.push(CatalogEntry {
                upstream_model: m.upstream_model.unwrap_or(m.model),
                offer,
                kind,
            });
        }

        let mut agencies = BTreeMap::new();
        let mut webhooks = BTreeMap::new();
        for (i, a) in raw.agencies.into_iter().enumerate() {
            self.id(format!("agencies[{i}].id"), &a.id)?;
            if agencies
                .insert(a.id.clone(), a.name.unwrap_or_else(|| a.id.clone()))
                .is_some()
            {
                return Err(self.err(
                    format!("agencies[{i}].id"),
                    format!("agency {:?} is defined twice", a.id),
                ));
            }
            match (a.webhook_url, a.webhook_secret_env) {
                (None, None) => {}
                (Some(url), Some(var)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(self.err(
                            format!("agencies[{i}].webhook_url"),
                            format!("{url:?} is not an http(s) URL"),
                        ));
                    }
                    let secret = std::env::var(&var).map_err(|_| {
                        self.err(
                            format!("agencies[{i}].webhook_secret_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    webhooks.insert(
                        a.id.clone(),
                        WebhookSettings {
                            url,
                            secret: secret.into_bytes(),
                        },
                    );
                }
                _ => {
                    return Err(self.err(
                        format!("agencies[{i}]"),
                        "webhook_url and webhook_secret_env go together (alerts are always signed)",
                    ));
                }
            }
        }
        let mut client_ids = HashSet::new();
        let mut clients = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            let key = |field: &str| format!("clients[{i}].{field}");
            self.id(key("id"), &c.id)?;
            if !agencies.contains_key(&c.agency) {
                return Err(self.err(
                    key("agency"),
                    format!("no agency {:?} is defined", c.agency),
                ));
            }
            if !client_ids.insert(c.id.clone()) {
                return Err(self.err(key("id"), format!("client {:?} is defined twice", c.id)));
            }
            let plugin = base_dir.join(&c.plugin);
            if !plugin.is_file() {
                return Err(self.err(
                    key("plugin"),
                    format!("{} does not exist", plugin.display()),
                ));
            }
            let failure_policy = match c.failure_policy.as_deref().unwrap_or("fail-closed") {
                "fail-closed" => FailurePolicy::FailClosed,
                "fail-open" => FailurePolicy::FailOpen,
                other => {
                    return Err(self.err(
                        key("failure_policy"),
                        format!("{other:?} is not `fail-closed` or `fail-open`"),
                    ));
                }
            };
            if let Some(list) = &c.models {
                for (j, model) in list.iter().enumerate() {
                    if !models.iter().any(|m| &m.offer.model == model) {
                        return Err(self.err(
                            format!("clients[{i}].models[{j}]"),
                            format!("no model {model:?} is in the catalog"),
                        ));
                    }
                }
            }
            let plan = if c.billing.is_none()
                && c.monthly_cap.is_none()
                && c.alert_thresholds.is_none()
                && c.included_per_period.is_none()
            {
                None
            } else {
                let prepaid = match c.billing.as_deref().unwrap_or("postpaid") {
                    "prepaid" => true,
                    "postpaid" => false,
                    other => {
                        return Err(self.err(
                            key("billing"),
                            format!("{other:?} is not `prepaid` or `postpaid`"),
                        ));
                    }
                };
                let thresholds = c.alert_thresholds.unwrap_or_else(|| vec![50, 80, 100]);
                if thresholds.iter().any(|t| *t == 0 || *t > 1000) {
                    return Err(self.err(
                        key("alert_thresholds"),
                        "thresholds are percentages from 1 to 1000",
                    ));
                }
                Some(PlanSettings {
                    prepaid,
                    monthly_cap: c
                        .monthly_cap
                        .as_deref()
                        .map(|t| self.decimal(key("monthly_cap"), Some(t)))
                        .transpose()?,
                    alert_thresholds: thresholds,
                    included_per_period: c
                        .included_per_period
                        .as_deref()
                        .map(|t| self.decimal(key("included_per_period"), Some(t)))
                        .transpose()?
                        .unwrap_or_default(),
                })
            };
            let plugin_config = match c.plugin_config {
                None => "{}".to_owned(),
                Some(toml::Value::String(s)) => s,
                Some(other) => serde_json::to_string(&other)
                    .map_err(|e| self.err(key("plugin_config"), e.to_string()))?,
            };
            clients.push(ClientSettings {
                id: c.id,
                agency: c.agency,
                plugin,
                plugin_config,
                failure_policy,
                models: c.models,
                plan,
                rate_limit_per_minute: match c.rate_limit_per_minute {
                    Some(0) => {
                        return Err(self.err(
                            key("rate_limit_per_minute"),
                            "must be at least 1 (leave it out for no limit)",
                        ));
                    }
                    other => other,
                },
            });
        }
        let mut keys = Vec::new();
        let mut key_hashes = HashSet::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            self.id(format!("keys[{i}].app"), &k.app)?;
            if !client_ids.contains(&k.client) {
                return Err(self.err(
                    format!("keys[{i}].client"),
                    format!("no client {:?} is defined", k.client),
                ));
            }
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&k.sha256, &mut sha256).map_err(|_| {
                self.err(
                    format!("keys[{i}].sha256"),
                    "must be 64 hex digits (the sha256 of the key)",
                )
            })?;
            if !key_hashes.insert(sha256) {
                return Err(self.err(
                    format!("keys[{i}].sha256"),
                    "the same key is listed twice (each key belongs to one app)",
                ));
            }
            keys.push(KeySettings {
                client: k.client,
                app: k.app,
                sha256,
            });
        }
        Ok(Config {
            source: self.file.to_owned(),
            server,
            ledger,
            plugins,
            providers,
            models,
            agencies,
            webhooks,
            clients,
            keys,
        })
    }
}
