//! Admin API helpers: JSON calls with a token, and a ready-made tenant
//! (agency, admin token, client, app, key, plugin version, binding).

use reqwest::Method;
use serde_json::{Value, json};

use super::gateway::TestGateway;
use super::plugin_bytes;

/// A support-desk configuration valid against the test catalog.
pub const SUPPORT: &str = r#"{"ticket_fee": "0.05", "margin_percent": "20", "cheap_model": "mini-ok", "strong_model": "pro-ok"}"#;
/// A lead-qualifier configuration valid against the test catalog.
pub const LEADS: &str = r#"{"model": "mini-ok", "tier1_leads": 10, "tier1_rate": "0.5", "tier2_rate": "0.3", "monthly_lead_cap": 0}"#;

/// Sends `method path` with `token` and an optional JSON body; returns the
/// status and the JSON answer (`Value::Null` when the body is not JSON).
pub async fn call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = gw.admin(method, path, token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Uploads the compiled plugin package `name` with `token`.
pub async fn upload(gw: &TestGateway, token: &str, name: &str, query: &str) -> (u16, Value) {
    let resp = gw
        .admin(Method::POST, &format!("/admin/v1/plugins?{query}"), token)
        .header("content-type", "application/wasm")
        .body(plugin_bytes(name))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One agency with everything an isolation test needs to aim at.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Agency id.
    pub agency: String,
    /// Its admin token.
    pub token: String,
    /// The admin token's id.
    pub token_id: String,
    /// A client.
    pub client: String,
    /// The client's app.
    pub app: String,
    /// The app's key id.
    pub key_id: String,
    /// The app key itself (`tg_live_…`).
    pub key: String,
    /// An uploaded plugin version (support-desk), bound to the client.
    pub plugin: String,
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
        .to_owned()
}

/// Creates agency `id` through the operator, then a token, a client, an
/// app, a key, a plugin version and a binding through the agency's token.
pub async fn tenant(gw: &TestGateway, id: &str) -> Tenant {
    let op = gw.operator.clone();
    let (st, _) = call(
        gw,
        Method::POST,
        "/admin/v1/agencies",
        &op,
        Some(json!({"id": id, "name": format!("Agency {id}")})),
    )
    .await;
    assert_eq!(st, 201, "create agency {id}");
    let (st, tok) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/agencies/{id}/tokens"),
        &op,
        Some(json!({"label": "ci"})),
    )
    .await;
    assert_eq!(st, 201, "{tok}");
    let token = s(&tok, "secret");
    let (st, client) = call(
        gw,
        Method::POST,
        "/admin/v1/clients",
        &token,
        Some(json!({"name": format!("{id} client")})),
    )
    .await;
    assert_eq!(st, 201, "{client}");
    let client_id = s(&client, "id");
    let (st, app) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/clients/{client_id}/apps"),
        &token,
        Some(json!({"name": "widget"})),
    )
    .await;
    assert_eq!(st, 201, "{app}");
    let app_id = s(&app, "id");
    let (st, key) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/apps/{app_id}/keys"),
        &token,
        Some(json!({})),
    )
    .await;
    assert_eq!(st, 201, "{key}");
    let sample = urlencode(SUPPORT);
    let (st, plugin) = upload(
        gw,
        &token,
        "support-desk",
        &format!("label=v1&sample_config={sample}"),
    )
    .await;
    assert!(st == 201 || st == 200, "{st} {plugin}");
    let sha = s(&plugin, "sha256");
    let (st, bound) = call(
        gw,
        Method::PUT,
        &format!("/admin/v1/clients/{client_id}/binding"),
        &token,
        Some(json!({"plugin_sha256": sha, "config": serde_json::from_str::<Value>(SUPPORT).unwrap()})),
    )
    .await;
    assert_eq!(st, 200, "{bound}");
    Tenant {
        agency: id.to_owned(),
        token,
        token_id: s(&tok, "id"),
        client: client_id,
        app: app_id,
        key_id: s(&key, "id"),
        key: s(&key, "secret"),
        plugin: sha,
    }
}

/// Percent-encodes a query value.
pub fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends a chat completion with an app key.
pub async fn chat_with(gw: &TestGateway, key: &str, content: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&json!({"model": "mini-ok", "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap()
}

/// Every admin route: (method, path as the OpenAPI document writes it).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/admin/v1/agencies"),
    ("GET", "/admin/v1/agencies"),
    ("GET", "/admin/v1/agencies/{agency}"),
    ("PATCH", "/admin/v1/agencies/{agency}"),
    ("POST", "/admin/v1/agencies/{agency}/tokens"),
    ("GET", "/admin/v1/agencies/{agency}/tokens"),
    ("DELETE", "/admin/v1/agencies/{agency}/tokens/{token}"),
    ("PUT", "/admin/v1/agencies/{agency}/binding"),
    ("GET", "/admin/v1/agencies/{agency}/binding"),
    ("POST", "/admin/v1/agencies/{agency}/binding/rollback"),
    ("GET", "/admin/v1/agencies/{agency}/payouts/{period}"),
    ("GET", "/admin/v1/settlement/{period}"),
    ("POST", "/admin/v1/clients"),
    ("GET", "/admin/v1/clients"),
    ("GET", "/admin/v1/clients/{client}"),
    ("PATCH", "/admin/v1/clients/{client}"),
    ("DELETE", "/admin/v1/clients/{client}"),
    ("PUT", "/admin/v1/clients/{client}/binding"),
    ("GET", "/admin/v1/clients/{client}/binding"),
    ("DELETE", "/admin/v1/clients/{client}/binding"),
    ("POST", "/admin/v1/clients/{client}/binding/rollback"),
    ("GET", "/admin/v1/clients/{client}/plan"),
    ("PUT", "/admin/v1/clients/{client}/plan"),
    ("DELETE", "/admin/v1/clients/{client}/plan/cap"),
    ("POST", "/admin/v1/clients/{client}/credits"),
    ("GET", "/admin/v1/clients/{client}/credits"),
    ("GET", "/admin/v1/clients/{client}/statements/{period}"),
    ("POST", "/admin/v1/clients/{client}/apps"),
    ("GET", "/admin/v1/clients/{client}/apps"),
    ("POST", "/admin/v1/apps/{app}/keys"),
    ("GET", "/admin/v1/apps/{app}/keys"),
    ("DELETE", "/admin/v1/keys/{key}"),
    ("POST", "/admin/v1/plugins"),
    ("GET", "/admin/v1/plugins"),
    ("GET", "/admin/v1/plugins/{sha256}"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/audit"),
];

/// Fills the `{name}` parameters of an OpenAPI path template (the first
/// value given for a name wins).
pub fn fill(template: &str, params: &[(&str, &str)]) -> String {
    let mut path = template.to_owned();
    for (name, value) in params {
        path = path.replace(&format!("{{{name}}}"), value);
    }
    path
}
