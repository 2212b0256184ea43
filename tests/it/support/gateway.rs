//! A real gateway on a loopback port, backed by the mock upstream, real
//! compiled plugins and a fresh ledger, for end-to-end tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mock_upstream::MockUpstream;
use rust_decimal::Decimal;
use tollgate::config::{
    CatalogEntry, ClientSettings, Config, Durability, KeySettings, LedgerSettings, ModelKind,
    PluginSettings, ProviderKind, ProviderSettings, ServerSettings,
};
use tollgate::gateway::AppState;
use tollgate::gateway::tenancy::{ADMIN_TOKEN_PREFIX, APP_KEY_PREFIX, generate_key, hash_key};
use tollgate::plugin::policy::FailurePolicy;
use tollgate_plugin_types::ModelOffer;

use super::plugin_path;

/// One client to set up.
pub struct ClientSpec {
    /// Client id (also the app key's name).
    pub id: &'static str,
    /// Plugin package.
    pub plugin: &'static str,
    /// Plugin config.
    pub config: String,
    /// Failure policy.
    pub policy: FailurePolicy,
    /// Requests per minute.
    pub rate_limit_per_minute: Option<u32>,
}

impl ClientSpec {
    /// A fail-closed client.
    pub fn new(id: &'static str, plugin: &'static str, config: impl Into<String>) -> Self {
        Self {
            id,
            plugin,
            config: config.into(),
            policy: FailurePolicy::FailClosed,
            rate_limit_per_minute: None,
        }
    }

    /// The same, limited to `n` requests a minute.
    pub fn rate_limited(mut self, n: u32) -> Self {
        self.rate_limit_per_minute = Some(n);
        self
    }

    /// The same, fail-open.
    pub fn fail_open(mut self) -> Self {
        self.policy = FailurePolicy::FailOpen;
        self
    }
}

/// A running gateway plus its mock upstream.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The gateway's state (ledger, directory, metrics).
    pub state: Arc<AppState>,
    /// Client id → app key.
    pub keys: BTreeMap<String, String>,
    /// The mock upstream.
    pub mock: MockUpstream,
    /// The operator's admin token.
    pub operator: String,
    config: Config,
    data: Arc<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// The key of client `id`.
    pub fn key(&self, id: &str) -> &str {
        &self.keys[id]
    }

    /// A POST to `path` as client `id`.
    pub fn post(&self, client: &str, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.key(client))
    }

    /// Sends a chat completion as client `id`.
    pub async fn chat(&self, client: &str, body: &serde_json::Value) -> reqwest::Response {
        self.post(client, "/v1/chat/completions")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// An admin API request with `token`.
    pub fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
    }

    /// Stops the server and starts a new one on the same data dir and
    /// config (a restart); the mock upstream keeps running.
    pub async fn restart(mut self) -> TestGateway {
        let config = self.config.clone();
        let data = self.data.clone();
        let keys = std::mem::take(&mut self.keys);
        let operator = std::mem::take(&mut self.operator);
        let mock = self.shutdown_keep_mock().await;
        launch(config, data, keys, mock, operator).await
    }

    async fn shutdown_keep_mock(mut self) -> MockUpstream {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.mock
    }

    /// Stops the server and waits for in-flight work to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

fn offer(model: &str, input: &str, output: &str, window: u32) -> ModelOffer {
    ModelOffer {
        model: model.into(),
        provider: "mock".into(),
        input_per_mtok: input.parse().unwrap(),
        output_per_mtok: output.parse().unwrap(),
        cached_input_per_mtok: input.parse::<Decimal>().unwrap() / Decimal::TWO,
        context_window: window,
        price_version: "test-2026-11".into(),
    }
}

/// The test catalog: every model is served by the mock, whose behaviour
/// follows the model's name.
pub fn catalog() -> Vec<CatalogEntry> {
    let chat = |model: &str, input: &str, output: &str| CatalogEntry {
        offer: offer(model, input, output, 128_000),
        upstream_model: model.into(),
        kind: ModelKind::Chat,
    };
    vec![
        chat("mini-ok", "0.15", "0.60"),
        chat("pro-ok", "2.50", "10.00"),
        chat("fail500-mini", "0.15", "0.60"),
        chat("fail400-mini", "0.15", "0.60"),
        chat("slow-mini", "0.15", "0.60"),
        chat("cutoff-pro", "2.50", "10.00"),
        chat("nousage-mini", "0.15", "0.60"),
        chat("stall-mini", "0.15", "0.60"),
        CatalogEntry {
            offer: offer("embed-ok", "0.02", "0", 8192),
            upstream_model: "embed-ok".into(),
            kind: ModelKind::Embeddings,
        },
    ]
}

/// Options of a test gateway.
pub struct Options {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Upstream timeout per attempt.
    pub upstream_timeout: Duration,
    /// Ledger durability.
    pub durability: Durability,
    /// Agencies' alert webhooks.
    pub webhooks: BTreeMap<String, tollgate::config::WebhookSettings>,
    /// Surcharge bound reserved when a plugin declares none.
    pub default_surcharge_bound: Decimal,
    /// Wall-clock deadline per plugin call.
    pub plugin_deadline: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 << 10,
            upstream_timeout: Duration::from_millis(700),
            durability: Durability::Sync,
            webhooks: BTreeMap::new(),
            default_surcharge_bound: Decimal::ONE_HUNDRED,
            plugin_deadline: super::TEST_DEADLINE,
        }
    }
}

/// Starts a gateway for `clients` with default options.
pub async fn start(clients: Vec<ClientSpec>) -> TestGateway {
    start_with(clients, Options::default()).await
}

/// Starts a gateway for `clients`.
pub async fn start_with(clients: Vec<ClientSpec>, options: Options) -> TestGateway {
    let mock = MockUpstream::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let keys: BTreeMap<String, String> = clients
        .iter()
        .map(|c| (c.id.to_owned(), generate_key(APP_KEY_PREFIX)))
        .collect();
    let operator = generate_key(ADMIN_TOKEN_PREFIX);
    let config = Config {
        source: PathBuf::from("<test>"),
        server: ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: options.max_body_bytes,
            operator_token_sha256: Some(hash_key(&operator)),
            alert_poll: std::time::Duration::from_millis(200),
            max_plugin_bytes: 16 << 20,
        },
        ledger: LedgerSettings {
            data_dir: data.path().to_owned(),
            durability: options.durability,
            currency: "USD".into(),
            timezone: "UTC".into(),
            grace_hours: 72,
            platform_fee_percent: Decimal::TEN,
            // Smaller than the default: the suite runs many gateways at once.
            cache_bytes: 1 << 20,
        },
        plugins: PluginSettings {
            deadline: options.plugin_deadline,
            memory_bytes: 32 << 20,
            default_surcharge_bound: options.default_surcharge_bound,
        },
        providers: vec![ProviderSettings {
            id: "mock".into(),
            kind: ProviderKind::OpenAi {
                base_url: mock.base_url(),
                api_key_env: None,
            },
            connect_timeout: Duration::from_millis(500),
            timeout: options.upstream_timeout,
            max_retries: 1,
        }],
        models: catalog(),
        agencies: [("agency-a".to_owned(), "Agency A".to_owned())].into(),
        webhooks: options.webhooks.clone(),
        clients: clients
            .iter()
            .map(|c| ClientSettings {
                id: c.id.into(),
                agency: "agency-a".into(),
                plugin: plugin_path(c.plugin),
                plugin_config: c.config.clone(),
                failure_policy: c.policy,
                models: None,
                plan: None,
                rate_limit_per_minute: c.rate_limit_per_minute,
            })
            .collect(),
        keys: keys
            .iter()
            .map(|(client, key)| KeySettings {
                client: client.clone(),
                app: format!("{client}-app"),
                sha256: hash_key(key),
            })
            .collect(),
    };
    launch(config, Arc::new(data), keys, mock, operator).await
}

async fn launch(
    config: Config,
    data: Arc<tempfile::TempDir>,
    keys: BTreeMap<String, String>,
    mock: MockUpstream,
    operator: String,
) -> TestGateway {
    let state = tollgate::server::build_state(&config).await.unwrap();
    let listener = tollgate::server::bind(config.server.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate::server::serve(
        state.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    TestGateway {
        url,
        state,
        keys,
        mock,
        operator,
        config,
        data,
        shutdown: Some(tx),
        server: Some(server),
    }
}
