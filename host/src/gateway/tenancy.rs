//! Who is calling: app keys, clients and their plugin bindings.
//!
//! Keys are never stored, only their sha256; a lookup hashes the presented
//! key. The [`Directory`] is an immutable snapshot swapped atomically when
//! anything changes, so a request keeps the binding it started with while a
//! new one takes over for the next request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::plugin::policy::FailurePolicy;
use crate::plugin::{CompiledPlugin, PluginError, PluginStats, Session, WarmSession};

/// Prefix of client app keys.
pub const APP_KEY_PREFIX: &str = "tg_live_";
/// Prefix of agency and operator tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "tg_admin_";

/// Which plugin version and configuration serve a client.
pub struct Binding {
    /// The compiled plugin.
    pub plugin: Arc<CompiledPlugin>,
    /// Its configuration document.
    pub config: Arc<str>,
    /// What a plugin failure does.
    pub policy: FailurePolicy,
    /// This agency's call figures for the version.
    pub stats: Arc<PluginStats>,
    /// An instance created ahead of this binding's next request.
    pub warm: std::sync::Mutex<Option<WarmSession>>,
    /// Whether a task is creating the next one (one at a time, so busy
    /// bindings do not instantiate instances only to throw them away).
    creating: AtomicBool,
}

impl Binding {
    /// A binding with no instance waiting yet.
    pub fn new(
        plugin: Arc<CompiledPlugin>,
        config: Arc<str>,
        policy: FailurePolicy,
        stats: Arc<PluginStats>,
    ) -> Self {
        Self {
            plugin,
            config,
            policy,
            stats,
            warm: std::sync::Mutex::new(None),
            creating: AtomicBool::new(false),
        }
    }

    /// A fresh plugin instance for one request, counted for this agency: the
    /// one created ahead of it if there is one (so instantiating does not
    /// delay the request), else a new one. Either way a replacement is then
    /// created on a task of its own, which runs while this request waits on
    /// something else (the provider, the client).
    pub async fn session(self: &Arc<Self>, request_id: &str) -> Result<Session, PluginError> {
        let waiting = self.warm.lock().ok().and_then(|mut slot| slot.take());
        self.create_ahead();
        match waiting {
            Some(warm) => Ok(warm.into_session(request_id)),
            None => {
                self.plugin
                    .session_for(request_id, self.stats.clone())
                    .await
            }
        }
    }

    /// Starts creating the next instance unless a task already is; only
    /// that task fills the slot, and only [`Binding::session`] empties it.
    fn create_ahead(self: &Arc<Self>) {
        if self.creating.swap(true, Ordering::AcqRel) {
            return;
        }
        let binding = Arc::clone(self);
        tokio::spawn(async move {
            let warm = binding.plugin.warm_session_for(binding.stats.clone()).await;
            if let (Some(warm), Ok(mut slot)) = (warm, binding.warm.lock()) {
                *slot = Some(warm);
            }
            binding.creating.store(false, Ordering::Release);
        });
    }
}

/// A client of an agency, as the data path needs it.
pub struct ClientEntry {
    /// Client id.
    pub id: String,
    /// Owning agency.
    pub agency_id: String,
    /// The plugin binding in force.
    pub binding: Arc<Binding>,
    /// Models the client may use; `None` means the whole catalog.
    pub models: Option<HashSet<String>>,
    /// Requests-per-minute limit, shared by all the client's apps (and kept
    /// across directory rebuilds).
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// A client's request rate limit: a token bucket refilled continuously.
pub struct RateLimit {
    limiter: governor::DefaultDirectRateLimiter,
    per_minute: u32,
}

impl RateLimit {
    /// At most `per_minute` requests a minute, with bursts up to that many.
    pub fn per_minute(per_minute: std::num::NonZeroU32) -> Self {
        Self {
            limiter: governor::RateLimiter::direct(governor::Quota::per_minute(per_minute)),
            per_minute: per_minute.get(),
        }
    }

    /// The configured requests per minute.
    pub fn per_minute_limit(&self) -> u32 {
        self.per_minute
    }

    /// Takes one request's token, or says how long until one is free.
    pub fn check(&self) -> Result<(), ApiError> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Err(ApiError::rate_limited(self.per_minute, wait))
            }
        }
    }
}

/// An app key's owner.
#[derive(Debug, Clone)]
pub struct AppKey {
    /// The client.
    pub client_id: String,
    /// The app.
    pub app_id: String,
    /// When the key stops working.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The authenticated caller of a data-path request.
#[derive(Clone)]
pub struct Caller {
    /// The app.
    pub app_id: String,
    /// The client, with its binding at the time of the request.
    pub client: Arc<ClientEntry>,
}

/// A snapshot of keys and clients.
#[derive(Default)]
pub struct Directory {
    keys: HashMap<[u8; 32], AppKey>,
    clients: HashMap<String, Arc<ClientEntry>>,
    /// Clients with neither their own binding nor an agency default.
    unbound: HashSet<String>,
}

impl Directory {
    /// Adds or replaces a client.
    pub fn insert_client(&mut self, client: ClientEntry) {
        self.clients.insert(client.id.clone(), Arc::new(client));
    }

    /// Marks a client as having no plugin bound: its requests are refused
    /// with a clear message instead of an invalid-key error.
    pub fn insert_unbound(&mut self, client_id: &str) {
        self.unbound.insert(client_id.to_owned());
    }

    /// Adds a key by its hash.
    pub fn insert_key(&mut self, sha256: [u8; 32], key: AppKey) {
        self.keys.insert(sha256, key);
    }

    /// The client `id`.
    pub fn client(&self, id: &str) -> Option<&Arc<ClientEntry>> {
        self.clients.get(id)
    }

    /// Resolves an `Authorization` header value to its caller.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let Some(header) = authorization else {
            return Err(ApiError::unauthorized(
                "missing API key: send `Authorization: Bearer tg_live_…`",
            ));
        };
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or(header)
            .trim();
        if !key.starts_with(APP_KEY_PREFIX) {
            return Err(ApiError::unauthorized(
                "invalid API key: client app keys start with `tg_live_`",
            ));
        }
        let app = self
            .keys
            .get(&hash_key(key))
            .filter(|app| app.expires_at.is_none_or(|at| at > chrono::Utc::now()))
            .ok_or_else(|| ApiError::unauthorized("invalid, expired or revoked API key"))?;
        if self.unbound.contains(&app.client_id) {
            return Err(ApiError::unbound());
        }
        let client = self
            .clients
            .get(&app.client_id)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked API key"))?;
        Ok(Caller {
            app_id: app.app_id.clone(),
            client: client.clone(),
        })
    }
}

/// The sha256 a key is stored as.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key with `prefix` and 192 bits of entropy.
pub fn generate_key(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}
