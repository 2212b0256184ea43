//! `tollgate demo`: the whole product on one machine, offline.
//!
//! Starts the gateway on loopback with the built-in demo provider, the
//! example plugins (built from this repository on first run) bound to a
//! demo agency's clients, and a sled data dir. Credentials are made on first
//! start and kept in the data dir (demo only: a real deployment never keeps
//! raw keys), so a restart keeps the data and the same keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::{
    CatalogEntry, ClientSettings, Config, Durability, KeySettings, LedgerSettings, ModelKind,
    PluginSettings, ProviderKind, ProviderSettings, ServerSettings,
};
use crate::demo_catalog;
use crate::gateway::tenancy::{ADMIN_TOKEN_PREFIX, APP_KEY_PREFIX, generate_key, hash_key};
use crate::plugin::policy::FailurePolicy;

/// The demo agency.
pub const DEMO_AGENCY: &str = "demo-agency";

/// One demo client: which example plugin serves it and how it is set up.
struct DemoClient {
    id: &'static str,
    plugin: &'static str,
    config: &'static str,
    what: &'static str,
    sample_model: &'static str,
    sample_tags: &'static [(&'static str, &'static str)],
}

const CLIENTS: [DemoClient; 3] = [
    DemoClient {
        id: "acme-support",
        plugin: "support-desk",
        config: r#"{"ticket_fee": "0.05", "margin_percent": "20", "cheap_model": "demo-mini", "strong_model": "demo-pro"}"#,
        what: "support chatbot: tickets, 5¢ per ticket + 20% margin",
        sample_model: "demo-pro",
        sample_tags: &[("ticket", "T-1001")],
    },
    DemoClient {
        id: "globex-docs",
        plugin: "document-pipeline",
        config: r#"{"page_fee": "0.02", "document_fee": "0.10", "standard_model": "demo-mini", "long_context_model": "demo-long"}"#,
        what: "document workflow: 10¢ per document + 2¢ per page",
        sample_model: "demo-mini",
        sample_tags: &[("document", "contract-7.pdf"), ("pages", "4")],
    },
    DemoClient {
        id: "initech-sales",
        plugin: "lead-qualifier",
        config: r#"{"model": "demo-mini", "fallback_model": "demo-pro", "tier1_leads": 100, "tier1_rate": "0.50", "tier2_rate": "0.30"}"#,
        what: "lead scoring: 50¢ per lead for the first 100 a month, then 30¢",
        sample_model: "demo-mini",
        sample_tags: &[("lead", "L-42")],
    },
];

/// Credentials made on first start, kept in the data dir.
#[derive(Debug, Serialize, Deserialize)]
pub struct DemoCredentials {
    /// The operator token.
    pub operator_token: String,
    /// The demo agency's admin token.
    pub agency_token: String,
    /// Client id → app key.
    pub app_keys: BTreeMap<String, String>,
}

fn load_or_create_credentials(data_dir: &Path) -> std::io::Result<DemoCredentials> {
    let path = data_dir.join("demo-credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credentials) = serde_json::from_str::<DemoCredentials>(&text)
    {
        return Ok(credentials);
    }
    let credentials = DemoCredentials {
        operator_token: generate_key(ADMIN_TOKEN_PREFIX),
        agency_token: generate_key(ADMIN_TOKEN_PREFIX),
        app_keys: CLIENTS
            .iter()
            .map(|c| (c.id.to_owned(), generate_key(APP_KEY_PREFIX)))
            .collect(),
    };
    std::fs::create_dir_all(data_dir)?;
    let text = serde_json::to_string_pretty(&credentials).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(credentials)
}

/// Finds or builds the example plugins' components.
pub fn example_plugins(plugins_dir: Option<&Path>) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let names: Vec<&str> = CLIENTS.iter().map(|c| c.plugin).collect();
    if let Some(dir) = plugins_dir {
        return names
            .iter()
            .map(|name| {
                let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
                anyhow::ensure!(path.is_file(), "{} is missing", path.display());
                Ok(((*name).to_owned(), path))
            })
            .collect();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    anyhow::ensure!(
        repo.join("plugins").is_dir(),
        "the example plugins' sources are not at {}; pass --plugins-dir with built .wasm files",
        repo.display()
    );
    eprintln!("building the example plugins for wasm32-wasip2 (first run only) …");
    Ok(crate::cli::plugin_build::build_packages(
        &repo,
        &names,
        Some(&repo.join("target/plugins")),
    )?)
}

/// The demo's configuration, keys and all.
pub fn demo_config(
    listen: std::net::SocketAddr,
    data_dir: &Path,
    plugins: &BTreeMap<String, PathBuf>,
    credentials: &DemoCredentials,
) -> Config {
    let models = demo_catalog::offers()
        .into_iter()
        .map(|offer| CatalogEntry {
            kind: if offer.model == "demo-embed" {
                ModelKind::Embeddings
            } else {
                ModelKind::Chat
            },
            upstream_model: offer.model.clone(),
            offer,
        })
        .collect();
    let clients = CLIENTS
        .iter()
        .map(|c| ClientSettings {
            id: c.id.into(),
            agency: DEMO_AGENCY.into(),
            plugin: plugins.get(c.plugin).cloned().unwrap_or_default(),
            plugin_config: c.config.into(),
            failure_policy: FailurePolicy::FailClosed,
            models: None,
            plan: None,
            rate_limit_per_minute: None,
        })
        .collect();
    let keys = credentials
        .app_keys
        .iter()
        .map(|(client, key)| KeySettings {
            client: client.clone(),
            app: format!("{client}-app"),
            sha256: hash_key(key),
        })
        .collect();
    Config {
        source: PathBuf::from("<tollgate demo>"),
        server: ServerSettings {
            listen,
            max_body_bytes: 4 << 20,
            operator_token_sha256: Some(hash_key(&credentials.operator_token)),
            alert_poll: std::time::Duration::from_millis(200),
            max_plugin_bytes: 16 << 20,
        },
        ledger: LedgerSettings {
            data_dir: data_dir.to_owned(),
            durability: Durability::Sync,
            currency: "USD".into(),
            timezone: "UTC".into(),
            grace_hours: 72,
            platform_fee_percent: Decimal::TEN,
            cache_bytes: tollgate_ledger::DEFAULT_CACHE_BYTES,
        },
        plugins: PluginSettings {
            deadline: std::time::Duration::from_millis(5),
            memory_bytes: 32 << 20,
            default_surcharge_bound: Decimal::ONE_HUNDRED,
        },
        providers: vec![ProviderSettings {
            id: demo_catalog::DEMO_PROVIDER.into(),
            kind: ProviderKind::Demo,
            connect_timeout: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(30),
            max_retries: 0,
        }],
        models,
        agencies: [(DEMO_AGENCY.to_owned(), "Demo Agency".to_owned())].into(),
        webhooks: Default::default(),
        clients,
        keys,
    }
}

/// Runs `tollgate demo`.
pub async fn run(
    listen: std::net::SocketAddr,
    data_dir: PathBuf,
    plugins_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let plugins = example_plugins(plugins_dir.as_deref())?;
    let credentials = load_or_create_credentials(&data_dir)?;
    let config = demo_config(listen, &data_dir, &plugins, &credentials);
    let state = crate::server::build_state(&config).await?;
    state
        .admin
        .adopt_token(DEMO_AGENCY, &credentials.agency_token, "demo agency token")
        .await?;
    // A monthly cap with alerts for the first client shows spend control.
    let mut plan = state.ledger.plan(CLIENTS[0].id)?;
    if plan.monthly_cap.is_none() {
        plan.monthly_cap = Some(Decimal::from(50));
        plan.agency_id = Some(DEMO_AGENCY.into());
        state.ledger.set_plan(plan)?;
    }
    let listener = crate::server::bind(listen).await?;
    let addr = listener.local_addr()?;
    print_welcome(addr, &data_dir, &credentials);
    crate::server::serve(state, listener, crate::server::shutdown_signal()).await?;
    Ok(())
}

fn print_welcome(addr: std::net::SocketAddr, data_dir: &Path, credentials: &DemoCredentials) {
    let base = format!("http://{addr}/v1");
    println!(
        "\nTollgate demo is running on http://{addr}  (data: {})\n",
        data_dir.display()
    );
    println!("Demo agency `{DEMO_AGENCY}` and its clients (client app keys):");
    for c in &CLIENTS {
        let key = credentials
            .app_keys
            .get(c.id)
            .map(String::as_str)
            .unwrap_or_default();
        println!(
            "  {:<14} {key}\n  {:<14} plugin {} — {}",
            c.id, "", c.plugin, c.what
        );
    }
    println!("\nOperator token:      {}", credentials.operator_token);
    println!("Agency admin token:  {}", credentials.agency_token);
    println!(
        "  admin API: curl -s http://{addr}/admin/v1/clients -H 'Authorization: Bearer {}'",
        credentials.agency_token
    );
    println!("  OpenAPI:   curl -s http://{addr}/openapi.json");
    println!(
        "  publish a plugin: tollgate plugin publish FILE.wasm --server http://{addr} --token {} --bind {} --config '{{…}}'",
        credentials.agency_token, CLIENTS[0].id
    );
    let first = &CLIENTS[0];
    let key = credentials
        .app_keys
        .get(first.id)
        .map(String::as_str)
        .unwrap_or_default();
    let tags: String = first
        .sample_tags
        .iter()
        .map(|(k, v)| format!(" -H 'x-tollgate-tag-{k}: {v}'"))
        .collect();
    println!("\nTry it with curl:\n");
    println!(
        "  curl -s {base}/chat/completions -H 'Authorization: Bearer {key}'{tags} \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"My order never arrived\"}}]}}' -i",
        first.sample_model
    );
    println!("\nor with the OpenAI Python SDK (pip install openai):\n");
    println!("  from openai import OpenAI");
    println!("  client = OpenAI(base_url=\"{base}\", api_key=\"{key}\")");
    println!(
        "  r = client.chat.completions.with_raw_response.create(model=\"{}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}],\n                                                       extra_headers={{\"x-tollgate-tag-ticket\": \"T-1002\"}})",
        first.sample_model
    );
    println!(
        "  print(r.headers[\"x-tollgate-cost\"], r.headers[\"x-tollgate-units\"], r.parse().choices[0].message.content)"
    );
    println!("\nUsage so far:  curl -s {base}/usage -H 'Authorization: Bearer {key}'");
    println!("Metrics:       curl -s http://{addr}/metrics\n");
    println!("Ctrl-C stops; restarting keeps the data and these keys.");
}
