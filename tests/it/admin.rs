//! The admin API end to end: roles, the plugin lifecycle (upload, smoke
//! run, versions, binding, hot swap under load, rollback), plans and
//! credits, reports, the audit log, persistence across restarts, and the
//! OpenAPI document.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_ledger::RecordQuery;

use crate::support::admin::{LEADS, SUPPORT, Tenant, call, chat_with, tenant, upload, urlencode};
use crate::support::gateway::{self, TestGateway};

fn records_of(gw: &TestGateway, client: &str) -> Vec<tollgate_ledger::StoredRecord> {
    gw.state
        .ledger
        .records(&RecordQuery {
            client: Some(client.to_owned()),
            limit: 100_000,
            ..RecordQuery::default()
        })
        .unwrap()
        .items
}

async fn bind(gw: &TestGateway, t: &Tenant, sha: &str, config: &str) -> (u16, Value) {
    call(
        gw,
        Method::PUT,
        &format!("/admin/v1/clients/{}/binding", t.client),
        &t.token,
        Some(json!({"plugin_sha256": sha, "config": config})),
    )
    .await
}

async fn bindings_of(gw: &TestGateway, t: &Tenant) -> Value {
    let (st, view) = call(
        gw,
        Method::GET,
        &format!("/admin/v1/clients/{}/binding", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200, "{view}");
    view
}

async fn rollback(gw: &TestGateway, t: &Tenant, body: Value) -> (u16, Value) {
    call(
        gw,
        Method::POST,
        &format!("/admin/v1/clients/{}/binding/rollback", t.client),
        &t.token,
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_lifecycle_upload_bind_swap_and_roll_back() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "northwind").await;

    // The key works and its requests run on the bound version.
    let r = chat_with(&gw, &t.key, "Where is my order?").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let recs = records_of(&gw, &t.client);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].record.plugin.content_hash, t.plugin);
    assert_eq!(recs[0].record.agency_id, "northwind");

    // Same bytes again: the existing version, not a new one.
    let (st, again) = upload(&gw, &t.token, "support-desk", "label=again").await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["sha256"], t.plugin.as_str());
    assert_eq!(again["label"], "v1", "the stored version is immutable");

    // A plugin that refuses the default sample config is refused with its
    // own message and a hint.
    let (st, refused) = upload(&gw, &t.token, "lead-qualifier", "label=v2").await;
    assert_eq!(st, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "plugin_refused");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sample_config"),
        "{refused}"
    );
    let (st, v2) = upload(
        &gw,
        &t.token,
        "lead-qualifier",
        &format!("label=v2&note=tiered&sample_config={}", urlencode(LEADS)),
    )
    .await;
    assert_eq!(st, 201, "{v2}");
    let v2_sha = v2["sha256"].as_str().unwrap().to_owned();
    assert_ne!(v2_sha, t.plugin);
    assert_eq!(v2["note"], "tiered");
    assert!(
        v2["smoke"]["route"].as_str().unwrap().contains("mini-ok"),
        "{v2}"
    );

    // Config is checked by the plugin's own validation at bind time.
    let (st, bad) = bind(&gw, &t, &v2_sha, r#"{"model": "mini-ok"}"#).await;
    assert_eq!(st, 422, "{bad}");
    assert_eq!(bad["error"]["code"], "config_refused");
    assert_eq!(bad["error"]["param"], "config");
    // Nothing changed: still v1.
    let (_, view) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/clients/{}", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(view["binding"]["plugin_sha256"], t.plugin.as_str());

    let (st, swapped) = bind(&gw, &t, &v2_sha, LEADS).await;
    assert_eq!(st, 200, "{swapped}");
    assert_eq!(swapped["current"]["revision"], 2);
    let r = chat_with(&gw, &t.key, "New lead: ACME Corp").await;
    assert_eq!(r.status(), 200);
    let recs = records_of(&gw, &t.client);
    assert_eq!(recs.last().unwrap().record.plugin.content_hash, v2_sha);

    // Roll back to the previous revision: v1 again, as a new revision.
    let (st, back) = rollback(&gw, &t, json!({})).await;
    assert_eq!(st, 200, "{back}");
    assert_eq!(back["current"]["plugin_sha256"], t.plugin.as_str());
    assert_eq!(back["current"]["revision"], 3);
    assert_eq!(back["history"].as_array().unwrap().len(), 3);
    let r = chat_with(&gw, &t.key, "Still there?").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        records_of(&gw, &t.client)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        t.plugin
    );
    // Rolling back to a named revision.
    let (st, named) = rollback(&gw, &t, json!({"revision": 2})).await;
    assert_eq!(st, 200, "{named}");
    assert_eq!(named["current"]["plugin_sha256"], v2_sha.as_str());
    let (st, missing) = rollback(&gw, &t, json!({"revision": 99})).await;
    assert_eq!(st, 400, "{missing}");
    assert_eq!(missing["error"]["param"], "revision");

    // Versions list with per-version metrics.
    let (st, versions) = call(&gw, Method::GET, "/admin/v1/plugins", &t.token, None).await;
    assert_eq!(st, 200);
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    let v1 = versions
        .iter()
        .find(|v| v["sha256"] == t.plugin.as_str())
        .unwrap();
    assert!(v1["metrics"]["calls"].as_u64().unwrap() >= 3, "{v1}");
    let v2 = versions
        .iter()
        .find(|v| v["sha256"] == v2_sha.as_str())
        .unwrap();
    assert_eq!(v2["bound_to"], json!([t.client]));

    // The audit log holds every change, with before and after.
    let (st, log) = call(
        &gw,
        Method::GET,
        "/admin/v1/audit?limit=100",
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "agency.create",
        "token.create",
        "client.create",
        "app.create",
        "key.create",
        "plugin.upload",
        "binding.set",
        "binding.rollback",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    // Newest first: the last match is the first rollback (v2 → v1).
    let rollback = entries
        .iter()
        .rfind(|e| e["action"] == "binding.rollback")
        .unwrap();
    assert_eq!(rollback["before"]["plugin_sha256"], v2_sha.as_str());
    assert_eq!(rollback["after"]["plugin_sha256"], t.plugin.as_str());
    assert_eq!(rollback["actor"], format!("token:{}", t.token_id));
    assert!(entries.iter().all(|e| e["agency_id"] == "northwind"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_request_and_loses_no_record() {
    // Generous timeouts: on a loaded CI machine a slow call must not be
    // mistaken for a request the swap dropped.
    let options = gateway::Options {
        upstream_timeout: std::time::Duration::from_secs(10),
        plugin_deadline: std::time::Duration::from_millis(1000),
        ..gateway::Options::default()
    };
    let gw = Arc::new(gateway::start_with(vec![], options).await);
    let t = tenant(&gw, "swapco").await;
    let sample = urlencode(LEADS);
    let (st, v2) = upload(
        &gw,
        &t.token,
        "lead-qualifier",
        &format!("sample_config={sample}"),
    )
    .await;
    assert_eq!(st, 201, "{v2}");
    let v2 = v2["sha256"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (gw, key, stop, sent) = (gw.clone(), t.key.clone(), stop.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = HashMap::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = chat_with(&gw, &key, &format!("worker {w} request {i}")).await;
                *statuses.entry(r.status().as_u16()).or_insert(0u32) += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            statuses
        }));
    }
    let swaps = 12;
    for i in 0..swaps {
        let (sha, config) = if i % 2 == 0 {
            (v2.as_str(), LEADS)
        } else {
            (t.plugin.as_str(), SUPPORT)
        };
        let (st, body) = bind(&gw, &t, sha, config).await;
        assert_eq!(st, 200, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut statuses: HashMap<u16, u32> = HashMap::new();
    for w in workers {
        for (k, v) in w.await.unwrap() {
            *statuses.entry(k).or_default() += v;
        }
    }
    let total = sent.load(Ordering::Relaxed);
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "every request during the swaps succeeded: {statuses:?}"
    );
    assert!(total >= 30, "the load was real: {total} requests");
    let recs = records_of(&gw, &t.client);
    assert_eq!(recs.len() as u64, total, "one record per request");
    let hashes: BTreeSet<&str> = recs
        .iter()
        .map(|r| r.record.plugin.content_hash.as_str())
        .collect();
    assert_eq!(
        hashes,
        BTreeSet::from([t.plugin.as_str(), v2.as_str()]),
        "both versions served traffic"
    );
    // The final binding (after an even number of swaps: v1) is in force.
    let view = bindings_of(&gw, &t).await;
    assert_eq!(view["current"]["plugin_sha256"], t.plugin.as_str());
    assert_eq!(view["current"]["revision"], swaps + 1);

    // A restart right after the swaps keeps the last acknowledged binding
    // and every record.
    let gw = Arc::try_unwrap(gw).ok().expect("workers are done");
    let gw = gw.restart().await;
    let view = bindings_of(&gw, &t).await;
    assert_eq!(view["current"]["plugin_sha256"], t.plugin.as_str());
    assert_eq!(view["current"]["revision"], swaps + 1);
    assert_eq!(records_of(&gw, &t.client).len() as u64, total);
    assert_eq!(chat_with(&gw, &t.key, "after restart").await.status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_made_through_the_api_survives_a_restart() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "durable").await;
    let sample = urlencode(LEADS);
    let (_, v2) = upload(
        &gw,
        &t.token,
        "lead-qualifier",
        &format!("sample_config={sample}"),
    )
    .await;
    let v2 = v2["sha256"].as_str().unwrap().to_owned();
    let (st, _) = bind(&gw, &t, &v2, LEADS).await;
    assert_eq!(st, 200);
    let (st, _) = call(
        &gw,
        Method::PUT,
        &format!("/admin/v1/clients/{}/plan", t.client),
        &t.token,
        Some(json!({"monthly_cap": "25", "alert_thresholds": [50, 90]})),
    )
    .await;
    assert_eq!(st, 200);
    // A second key, then revoked: it must stay revoked.
    let (_, k2) = call(
        &gw,
        Method::POST,
        &format!("/admin/v1/apps/{}/keys", t.app),
        &t.token,
        Some(json!({"label": "temp"})),
    )
    .await;
    let (st, _) = call(
        &gw,
        Method::DELETE,
        &format!("/admin/v1/keys/{}", k2["id"].as_str().unwrap()),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        chat_with(&gw, k2["secret"].as_str().unwrap(), "hi")
            .await
            .status(),
        401
    );
    let audit_before = call(
        &gw,
        Method::GET,
        "/admin/v1/audit",
        &gw.operator.clone(),
        None,
    )
    .await
    .1["entries"]
        .as_array()
        .unwrap()
        .len();

    let gw = gw.restart().await;
    // Tokens, keys, bindings, plans and the audit log came back.
    let r = chat_with(&gw, &t.key, "after restart").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        records_of(&gw, &t.client)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        v2
    );
    assert_eq!(
        chat_with(&gw, k2["secret"].as_str().unwrap(), "hi")
            .await
            .status(),
        401
    );
    let (st, plan) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/clients/{}/plan", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(plan["monthly_cap"], "25");
    let (_, log) = call(
        &gw,
        Method::GET,
        "/admin/v1/audit",
        &gw.operator.clone(),
        None,
    )
    .await;
    assert_eq!(log["entries"].as_array().unwrap().len(), audit_before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tokens_and_errors() {
    let gw = gateway::start(vec![]).await;
    let op = gw.operator.clone();
    let t = tenant(&gw, "roles").await;

    // No token, a malformed one, a client key: 401, OpenAI-shaped.
    let (st, e) = call(&gw, Method::GET, "/admin/v1/clients", "", None).await;
    assert_eq!(st, 401, "{e}");
    let (st, e) = call(&gw, Method::GET, "/admin/v1/clients", "nonsense", None).await;
    assert_eq!(st, 401, "{e}");
    let (st, e) = call(&gw, Method::GET, "/admin/v1/clients", &t.key, None).await;
    assert_eq!(st, 401);
    assert!(e["error"]["message"].as_str().unwrap().contains("tg_live_"));
    // Operator-only operations.
    let (st, e) = call(
        &gw,
        Method::POST,
        "/admin/v1/agencies",
        &t.token,
        Some(json!({"id": "mine", "name": "Mine"})),
    )
    .await;
    assert_eq!(st, 403, "{e}");
    let (st, _) = call(
        &gw,
        Method::GET,
        "/admin/v1/settlement/2026-11",
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = call(
        &gw,
        Method::PATCH,
        "/admin/v1/agencies/roles",
        &t.token,
        Some(json!({"platform_fee_percent": "0"})),
    )
    .await;
    assert_eq!(st, 403);
    let (st, a) = call(
        &gw,
        Method::PATCH,
        "/admin/v1/agencies/roles",
        &op,
        Some(json!({"platform_fee_percent": "12.5"})),
    )
    .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["platform_fee_percent"], "12.5");
    // Validation names the field.
    for (body, field) in [
        (json!({"id": "Bad Id", "name": "x"}), "id"),
        (json!({"id": "ok-id", "name": ""}), "name"),
        (
            json!({"id": "ok-id", "name": "x", "platform_fee_percent": "101"}),
            "platform_fee_percent",
        ),
        (
            json!({"id": "ok-id", "name": "x", "webhook_url": "ftp://x"}),
            "webhook_url",
        ),
        (json!({"id": "ok-id", "name": "x", "surprise": 1}), "body"),
        (json!({"id": 7, "name": "x"}), "id"),
    ] {
        let (st, e) = call(
            &gw,
            Method::POST,
            "/admin/v1/agencies",
            &op,
            Some(body.clone()),
        )
        .await;
        assert_eq!(st, 400, "{body} → {e}");
        let param = e["error"]["param"].as_str().unwrap();
        assert!(
            param == field || field == "body",
            "{body}: param {param}, want {field}"
        );
    }
    let (st, _) = call(
        &gw,
        Method::POST,
        "/admin/v1/agencies",
        &op,
        Some(json!({"id": "roles", "name": "dup"})),
    )
    .await;
    assert_eq!(st, 409);
    // A known path with the wrong method, and an unknown path: shaped errors.
    let (st, e) = call(&gw, Method::PUT, "/admin/v1/agencies", &op, None).await;
    assert_eq!(st, 405, "{e}");
    assert_eq!(e["error"]["code"], "method_not_allowed");
    let (st, e) = call(&gw, Method::GET, "/admin/v1/nothing-here", &op, None).await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], "unknown_url");
    // Unknown ids: 404.
    for path in [
        "/admin/v1/agencies/nope",
        "/admin/v1/clients/cl_nope",
        "/admin/v1/clients/cl_nope/binding",
        "/admin/v1/apps/app_nope/keys",
        "/admin/v1/plugins/0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let (st, e) = call(&gw, Method::GET, path, &t.token, None).await;
        assert_eq!(st, 404, "{path}: {e}");
        assert_eq!(e["error"]["code"], "not_found");
    }
    // A revoked token stops at once; an expired one never works.
    let (_, second) = call(
        &gw,
        Method::POST,
        "/admin/v1/agencies/roles/tokens",
        &t.token,
        Some(json!({"label": "short-lived"})),
    )
    .await;
    let second_token = second["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&gw, Method::GET, "/admin/v1/clients", &second_token, None)
            .await
            .0,
        200
    );
    let (st, _) = call(
        &gw,
        Method::DELETE,
        &format!(
            "/admin/v1/agencies/roles/tokens/{}",
            second["id"].as_str().unwrap()
        ),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        call(&gw, Method::GET, "/admin/v1/clients", &second_token, None)
            .await
            .0,
        401
    );
    let (st, e) = call(
        &gw,
        Method::POST,
        "/admin/v1/agencies/roles/tokens",
        &t.token,
        Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "expires_at");
    // Listings never show secrets.
    let (_, tokens) = call(
        &gw,
        Method::GET,
        "/admin/v1/agencies/roles/tokens",
        &t.token,
        None,
    )
    .await;
    let text = tokens.to_string();
    assert!(
        !text.contains(&t.token) && !text.contains("sha256"),
        "{text}"
    );
    // Deleting a client stops its keys; its records stay readable.
    assert_eq!(chat_with(&gw, &t.key, "before delete").await.status(), 200);
    let (st, _) = call(
        &gw,
        Method::DELETE,
        &format!("/admin/v1/clients/{}", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(chat_with(&gw, &t.key, "after delete").await.status(), 401);
    let (st, usage) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/usage?client_id={}", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(usage["records"].as_array().unwrap().len(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_credits_and_reports_through_the_api() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "billing").await;
    let base = format!("/admin/v1/clients/{}", t.client);
    // Prepaid with no credit: requests are refused with 402.
    let (st, plan) = call(
        &gw,
        Method::PUT,
        &format!("{base}/plan"),
        &t.token,
        Some(json!({"billing": "prepaid"})),
    )
    .await;
    assert_eq!(st, 200, "{plan}");
    assert_eq!(chat_with(&gw, &t.key, "no money").await.status(), 402);
    // Top-ups are idempotent by key.
    let top = json!({"amount": "5.00", "idempotency_key": "inv-1"});
    let (st, bucket) = call(
        &gw,
        Method::POST,
        &format!("{base}/credits"),
        &t.token,
        Some(top.clone()),
    )
    .await;
    assert_eq!(st, 201, "{bucket}");
    let (st, _) = call(
        &gw,
        Method::POST,
        &format!("{base}/credits"),
        &t.token,
        Some(top),
    )
    .await;
    assert_eq!(st, 200, "a retried top-up applies once");
    let (st, bal) = call(&gw, Method::GET, &format!("{base}/credits"), &t.token, None).await;
    assert_eq!(st, 200);
    assert_eq!(bal["balance"]["total"], "5.00");
    let (st, e) = call(
        &gw,
        Method::POST,
        &format!("{base}/credits"),
        &t.token,
        Some(json!({"amount": "-1", "idempotency_key": "x"})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "amount");
    assert_eq!(chat_with(&gw, &t.key, "now with money").await.status(), 200);

    // The client app reads its own usage and balance.
    let me: Value = reqwest::Client::new()
        .get(format!("{}/v1/usage", gw.url))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["client_id"], t.client.as_str());
    assert_eq!(me["requests"], 1);

    // Statement of the current period; the payout of an open period is 409.
    let period = gw.state.ledger.current_period().to_string();
    let (st, stmt) = call(
        &gw,
        Method::GET,
        &format!("{base}/statements/{period}"),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200, "{stmt}");
    assert_eq!(stmt["client_id"], t.client.as_str());
    let (st, e) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/agencies/billing/payouts/{period}"),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "period_open");
    let (st, payout) = call(
        &gw,
        Method::GET,
        "/admin/v1/agencies/billing/payouts/2020-01",
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200, "{payout}");
    let (st, e) = call(
        &gw,
        Method::GET,
        &format!("{base}/statements/2026-13"),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 400, "{e}");
    let (st, _) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/settlement/{period}"),
        &gw.operator.clone(),
        None,
    )
    .await;
    assert_eq!(st, 200);
    // Usage listing pages with a cursor.
    assert_eq!(chat_with(&gw, &t.key, "second").await.status(), 200);
    let (st, page) = call(&gw, Method::GET, "/admin/v1/usage?limit=1", &t.token, None).await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/usage?limit=1&cursor={cursor}"),
        &t.token,
        None,
    )
    .await;
    assert_eq!(next["records"].as_array().unwrap().len(), 1);
    assert_ne!(next["records"][0]["id"], page["records"][0]["id"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_admin_route() {
    let gw = gateway::start(vec![]).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", gw.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = crate::support::admin::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, expected);
    // Every documented route is served: with no token each answers 401,
    // never 404 or 405.
    for (method, path) in &expected {
        let url = format!("{}{}", gw.url, path.replace('{', "x").replace('}', ""));
        let r = reqwest::Client::new()
            .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_publish_uploads_and_binds_from_the_command_line() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "cli-agency").await;
    let wasm = crate::support::plugin_path("lead-qualifier");
    let publish = |token: String, extra: Vec<String>| {
        let url = gw.url.clone();
        let wasm = wasm.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::support::tollgate_bin())
                .arg("plugin")
                .arg("publish")
                .arg(&wasm)
                .args(["--server", &url, "--token", &token])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let args = vec![
        "--label".to_owned(),
        "tiered pricing".to_owned(),
        "--sample-config".to_owned(),
        LEADS.to_owned(),
        "--bind".to_owned(),
        t.client.clone(),
        "--config".to_owned(),
        LEADS.to_owned(),
    ];
    let out = publish(t.token.clone(), args.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("uploaded: lead-qualifier"), "{stdout}");
    assert!(stdout.contains("bound to"), "{stdout}");
    let (_, view) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/clients/{}", t.client),
        &t.token,
        None,
    )
    .await;
    let bound = view["binding"]["plugin_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(bound, t.plugin, "the new version is bound");
    let r = chat_with(&gw, &t.key, "lead: Initech").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        records_of(&gw, &t.client)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        bound
    );
    // Publishing the same file again finds the existing version.
    let out = publish(t.token.clone(), vec![]).await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already uploaded"));
    // A bad token fails with the server's reason and a non-zero exit.
    let out = publish("tg_admin_wrong".into(), vec![]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agency_default_binding_serves_clients_without_their_own() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "defaults").await;
    // A second client with no binding of its own, and no agency default yet.
    let (st, c2) = call(
        &gw,
        Method::POST,
        "/admin/v1/clients",
        &t.token,
        Some(json!({"name": "second", "rate_limit_per_minute": 1000})),
    )
    .await;
    assert_eq!(st, 201, "{c2}");
    let c2 = c2["id"].as_str().unwrap().to_owned();
    let (_, app) = call(
        &gw,
        Method::POST,
        &format!("/admin/v1/clients/{c2}/apps"),
        &t.token,
        Some(json!({"name": "app"})),
    )
    .await;
    let (_, key) = call(
        &gw,
        Method::POST,
        &format!("/admin/v1/apps/{}/keys", app["id"].as_str().unwrap()),
        &t.token,
        Some(json!({"label": "second"})),
    )
    .await;
    let key = key["secret"].as_str().unwrap().to_owned();
    let r = chat_with(&gw, &key, "anyone there?").await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "no_plugin_bound");

    // The agency default takes over for it, not for the client bound on its own.
    let (_, leads) = upload(
        &gw,
        &t.token,
        "lead-qualifier",
        &format!("sample_config={}", urlencode(LEADS)),
    )
    .await;
    let leads = leads["sha256"].as_str().unwrap().to_owned();
    let (st, d) = call(
        &gw,
        Method::PUT,
        "/admin/v1/agencies/defaults/binding",
        &t.token,
        Some(json!({"plugin_sha256": leads, "config": LEADS, "failure_policy": "fail-open"})),
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(chat_with(&gw, &key, "lead: Hooli").await.status(), 200);
    assert_eq!(
        records_of(&gw, &c2)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        leads
    );
    assert_eq!(chat_with(&gw, &t.key, "order?").await.status(), 200);
    assert_eq!(
        records_of(&gw, &t.client)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        t.plugin
    );
    let (_, view) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/clients/{c2}"),
        &t.token,
        None,
    )
    .await;
    assert!(view["binding"].is_null());
    assert_eq!(view["effective_binding"]["plugin_sha256"], leads.as_str());
    assert_eq!(view["rate_limit_per_minute"], 1000);

    // Removing the first client's own binding hands it to the default too.
    let (st, _) = call(
        &gw,
        Method::DELETE,
        &format!("/admin/v1/clients/{}/binding", t.client),
        &t.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        chat_with(&gw, &t.key, "lead: Pied Piper").await.status(),
        200
    );
    assert_eq!(
        records_of(&gw, &t.client)
            .last()
            .unwrap()
            .record
            .plugin
            .content_hash,
        leads
    );

    // Restricting a client's models through the API takes effect at once.
    let (st, patched) = call(
        &gw,
        Method::PATCH,
        &format!("/admin/v1/clients/{c2}"),
        &t.token,
        Some(json!({"models": ["pro-ok"]})),
    )
    .await;
    assert_eq!(st, 200, "{patched}");
    assert_eq!(chat_with(&gw, &key, "mini please").await.status(), 404);
    let (st, e) = call(
        &gw,
        Method::PATCH,
        &format!("/admin/v1/clients/{c2}"),
        &t.token,
        Some(json!({"models": ["no-such-model"]})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "models");

    // A cap, then its removal.
    let base = format!("/admin/v1/clients/{c2}/plan");
    let (_, plan) = call(
        &gw,
        Method::PUT,
        &base,
        &t.token,
        Some(json!({"monthly_cap": "0.000001"})),
    )
    .await;
    assert_eq!(plan["monthly_cap"], "0.000001");
    let (st, plan) = call(&gw, Method::DELETE, &format!("{base}/cap"), &t.token, None).await;
    assert_eq!(st, 200);
    assert!(plan["monthly_cap"].is_null());
    gw.stop().await;
}

/// `bytes` with a custom section appended: the same plugin under another
/// sha256, i.e. another version.
fn variant(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = format!("tollgate-test-{tag}");
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name.as_bytes());
    bytes.push(0); // custom section
    leb128(section.len(), &mut bytes);
    bytes.extend_from_slice(&section);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_plugin_versions_are_unloaded_and_compiled_again_when_bound() {
    let gw = gateway::start(vec![]).await;
    let t = tenant(&gw, "globex").await;
    let admin = &gw.state.admin;
    assert_eq!(admin.loaded_plugin_versions(), 1, "the bound version");

    let mut shas = Vec::new();
    for tag in ["a", "b", "c"] {
        let resp = gw
            .admin(
                Method::POST,
                &format!(
                    "/admin/v1/plugins?label={tag}&sample_config={}",
                    urlencode(SUPPORT)
                ),
                &t.token,
            )
            .header("content-type", "application/wasm")
            .body(variant(crate::support::plugin_bytes("support-desk"), tag))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "upload {tag}: {v}");
        let sha = v["sha256"].as_str().unwrap().to_owned();
        assert_ne!(sha, t.plugin);
        shas.push(sha);
    }
    // Three unbound uploads: only the two used last stay compiled.
    assert_eq!(admin.loaded_plugin_versions(), 1 + 2);

    // The evicted one binds (compiled again) and serves requests.
    let (st, body) = bind(&gw, &t, &shas[0], SUPPORT).await;
    assert_eq!(st, 200, "{body}");
    let r = chat_with(&gw, &t.key, "Where is my order?").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let recs = records_of(&gw, &t.client);
    assert_eq!(recs.last().unwrap().record.plugin.content_hash, shas[0]);
    // Bound: `a`; unbound and used last: the version `a` replaced and `c`.
    assert_eq!(admin.loaded_plugin_versions(), 1 + 2);

    // Rolling back to the version before works as before.
    let (st, body) = rollback(&gw, &t, json!({})).await;
    assert_eq!(st, 200, "{body}");
    let r = chat_with(&gw, &t.key, "Where is my order?").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let recs = records_of(&gw, &t.client);
    assert_eq!(recs.last().unwrap().record.plugin.content_hash, t.plugin);
    gw.stop().await;
}
