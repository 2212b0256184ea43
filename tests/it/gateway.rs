//! The data path end to end: a real gateway on loopback, the mock OpenAI
//! upstream, real plugins compiled to Wasm, and the sled ledger.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mock_upstream::Behaviour;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate_ledger::{RecordQuery, StoredRecord};

use crate::support::gateway::{self, ClientSpec, Options, TestGateway};

const SUPPORT: &str = r#"{"ticket_fee": "0.05", "margin_percent": "20", "cheap_model": "mini-ok", "strong_model": "pro-ok"}"#;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

fn records(gw: &TestGateway, client: &str) -> Vec<StoredRecord> {
    let query = RecordQuery {
        period: None,
        client: Some(client.to_owned()),
        model: None,
        unit: None,
        agency: None,
        cursor: None,
        limit: 1000,
    };
    gw.state.ledger.records(&query).unwrap().items
}

async fn wait_for_records(gw: &TestGateway, client: &str, n: usize) -> Vec<StoredRecord> {
    for _ in 0..100 {
        let found = records(gw, client);
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{client} never got {n} usage records");
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].is_string(),
        "not OpenAI-shaped: {body}"
    );
    assert!(
        body["error"]["type"].is_string(),
        "not OpenAI-shaped: {body}"
    );
    (status, body["error"].clone())
}

fn price(model: &str) -> (Decimal, Decimal) {
    match model {
        "mini-ok" => (dec("0.15"), dec("0.60")),
        "pro-ok" => (dec("2.50"), dec("10.00")),
        other => panic!("no price for {other}"),
    }
}

fn cost(model: &str, prompt: u64, completion: u64) -> Decimal {
    let (input, output) = price(model);
    (Decimal::from(prompt) * input + Decimal::from(completion) * output) / Decimal::from(1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_request_is_routed_metered_priced_and_recorded_once() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "support-desk", SUPPORT)]).await;
    let body = chat("pro-ok", "My order never arrived");
    let r = gw
        .post("acme", "/v1/chat/completions")
        .header("x-tollgate-tag-ticket", "T-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = header(&r, "x-request-id").to_owned();
    assert!(request_id.starts_with("req_"));
    assert_eq!(
        header(&r, "x-tollgate-model"),
        "mini-ok",
        "short prompt goes to the cheap model"
    );
    assert_eq!(header(&r, "x-tollgate-units"), "ticket=1;answer=1");
    let headers = (
        dec(header(&r, "x-tollgate-provider-cost")),
        dec(header(&r, "x-tollgate-surcharge")),
        dec(header(&r, "x-tollgate-cost")),
    );
    let answer: Value = r.json().await.unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        prompt,
        mock_upstream::prompt_tokens(body["messages"].as_array().unwrap())
    );
    let provider_cost = cost("mini-ok", prompt, completion);
    let surcharge = dec("0.05") + provider_cost * dec("0.20");
    assert_eq!(
        headers,
        (provider_cost, surcharge, provider_cost + surcharge)
    );

    // The upstream saw the routed model, not the requested one.
    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model, "mini-ok");

    let recs = records(&gw, "acme");
    assert_eq!(recs.len(), 1, "exactly one usage record");
    let rec = &recs[0].record;
    assert_eq!(rec.request_id, request_id);
    assert_eq!(
        (rec.requested_model.as_str(), rec.routed_model.as_str()),
        ("pro-ok", "mini-ok")
    );
    assert_eq!(
        (rec.provider_cost, rec.surcharge, rec.total_charged),
        (provider_cost, surcharge, provider_cost + surcharge)
    );
    assert_eq!(rec.units.get("ticket"), Some(&Decimal::ONE));
    assert_eq!(rec.plugin.name, "support-desk");
    assert_eq!(rec.price_version, "test-2026-11");
    assert!(
        !rec.flags.partial && !rec.flags.estimated && !rec.flags.failed && !rec.flags.fail_open
    );
    assert_eq!(
        gw.state.ledger.outstanding("acme").unwrap(),
        Decimal::ZERO,
        "reservation settled"
    );
    gw.stop().await;
}

/// A binding keeps one instance created ahead of its next request (off that
/// request's path), and requests served from it behave like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_keeps_an_instance_ready_for_its_next_request() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "support-desk", SUPPORT)]).await;
    let binding = gw
        .state
        .directory
        .load()
        .client("acme")
        .unwrap()
        .binding
        .clone();
    assert!(
        binding.warm.lock().unwrap().is_none(),
        "none before any request"
    );
    for round in 0..3 {
        let r = gw
            .post("acme", "/v1/chat/completions")
            .header("x-tollgate-tag-ticket", format!("T-{round}"))
            .json(&chat("pro-ok", "My order never arrived"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-tollgate-units"), "ticket=1;answer=1");
        let mut ready = false;
        for _ in 0..100 {
            if binding.warm.lock().unwrap().is_some() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "an instance waits after request {round}");
    }
    assert_eq!(records(&gw, "acme").len(), 3);
    gw.stop().await;
}

/// In `batched` mode the gateway answers once a record is queued, not
/// applied (a timing this test does not observe): every request must still
/// end with exactly one record, each reservation must be settled by its
/// record, each outcome counted, and a restart (a graceful shutdown waits for
/// the queued records) must keep them all. The ledger writer lingers for
/// records here, so they are written in shared groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_gateway_records_each_request_it_answered_once_and_keeps_them() {
    let options = Options {
        durability: tollgate::config::Durability::Batched {
            flush_every: Duration::from_millis(50),
            record_linger: Duration::from_millis(5),
        },
        ..Options::default()
    };
    let gw = gateway::start_with(
        vec![ClientSpec::new("acme", "support-desk", SUPPORT)],
        options,
    )
    .await;
    let sent = 24;
    let answers = futures::future::join_all((0..sent).map(|i| {
        let mut body = chat("mini-ok", &format!("question {i}"));
        if i % 3 == 0 {
            body["stream"] = json!(true);
        }
        let gw = &gw;
        async move {
            let r = gw.chat("acme", &body).await;
            let status = r.status().as_u16();
            let id = header(&r, "x-request-id").to_owned();
            let text = r.text().await.unwrap();
            (status, id, text)
        }
    }))
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, id, text) in &answers {
        assert_eq!(*status, 200, "{text}");
        ids.insert(id.clone());
    }
    assert_eq!(ids.len(), sent);

    let recs = wait_for_records(&gw, "acme", sent).await;
    let recorded: std::collections::BTreeSet<_> =
        recs.iter().map(|r| r.record.request_id.clone()).collect();
    assert_eq!(recorded, ids, "one record per answered request");
    for _ in 0..100 {
        if gw.state.ledger.outstanding("acme").unwrap() == Decimal::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.state.ledger.outstanding("acme").unwrap(),
        Decimal::ZERO,
        "every reservation settled by its record"
    );
    // The outcome of each queued record is still waited for (off the
    // request's path) and counted.
    let counted = format!("tollgate_usage_records_total {sent}");
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("{}/metrics", gw.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(&counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains(&counted), "{metrics}");
    assert!(
        metrics.contains("tollgate_usage_record_failures_total 0"),
        "{metrics}"
    );

    let gw = gw.restart().await;
    assert_eq!(records(&gw, "acme").len(), sent, "kept across a restart");
    gw.stop().await;
}

/// A plugin's quota from `usage_so_far` holds for a client's sequential
/// requests in `batched` mode, with another client keeping the ledger busy:
/// the lead-qualifier plugin caps scored leads, so with a cap of 2 the third
/// lead of every client must be refused, never priced. Answers go out once
/// records are queued, and the ledger writer lingers 100 ms over records
/// here, far longer than a client's round trip: `usage_so_far` must count
/// queued records, or the third lead would get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_batched_mode_a_clients_next_request_sees_its_previous_usage() {
    let leads = r#"{"model": "mini-ok", "tier1_leads": 10, "tier1_rate": "0.5", "tier2_rate": "0.3", "monthly_lead_cap": 2}"#;
    let clients = [
        "crm0", "crm1", "crm2", "crm3", "crm4", "crm5", "crm6", "crm7", "crm8", "crm9", "crm10",
        "crm11",
    ];
    let options = Options {
        durability: tollgate::config::Durability::Batched {
            flush_every: Duration::from_millis(200),
            record_linger: Duration::from_millis(100),
        },
        ..Options::default()
    };
    let mut specs: Vec<ClientSpec> = clients
        .iter()
        .map(|&c| ClientSpec::new(c, "lead-qualifier", leads))
        .collect();
    specs.push(ClientSpec::new("busy", "support-desk", SUPPORT));
    let gw = Arc::new(gateway::start_with(specs, options).await);
    // Another client keeps the ledger's queue busy meanwhile, so records
    // wait behind others before they are applied.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = gw.chat("busy", &chat("mini-ok", "keep busy")).await;
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    let mut overshoots = Vec::new();
    for client in &clients {
        for lead in 0..3 {
            let r = gw
                .post(client, "/v1/chat/completions")
                .header("x-tollgate-tag-lead", format!("L-{lead}"))
                .json(&chat("mini-ok", "score this lead"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let expected = if lead < 2 { 200 } else { 429 };
            if status != expected {
                overshoots.push(format!("{client} lead {lead}: {status}"));
            }
            let _ = r.bytes().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    assert!(overshoots.is_empty(), "{overshoots:?}");
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.stop().await;
    }
}

async fn sse_events(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_passes_through_and_its_final_chunk_carries_usage_and_charges() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "support-desk", SUPPORT)]).await;
    let mut body = chat("mini-ok", "hello there");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.chat("acme", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let usage = &usage_chunk["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let figures = &usage_chunk["tollgate"];
    let provider_cost = cost("mini-ok", prompt, completion);
    assert_eq!(
        dec(figures["provider_cost"].as_str().unwrap()),
        provider_cost
    );
    assert_eq!(
        dec(figures["total"].as_str().unwrap()),
        provider_cost + provider_cost * dec("0.2")
    );
    let content: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content.split_whitespace().count() as u64, completion);

    // Without include_usage the client gets no usage chunk, yet the gateway
    // still asked the upstream for it and billed exactly.
    let mut body = chat("mini-ok", "hello there");
    body["stream"] = json!(true);
    let r = gw.chat("acme", &body).await;
    let events = sse_events(r).await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "usage chunk leaked: {events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let sent = gw.mock.requests();
    assert_eq!(sent[1].body["stream_options"]["include_usage"], json!(true));
    let recs = wait_for_records(&gw, "acme", 2).await;
    assert!(
        recs.iter()
            .all(|r| !r.record.flags.estimated && !r.record.flags.partial)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_and_timeouts_fall_back_down_the_route() {
    for (cheap, expected_tries) in [("fail500-mini", 2), ("slow-mini", 1)] {
        let config = format!(
            r#"{{"ticket_fee": "0", "margin_percent": "10", "cheap_model": "{cheap}", "strong_model": "pro-ok"}}"#
        );
        let gw = gateway::start(vec![ClientSpec::new("acme", "support-desk", config)]).await;
        let r = gw.chat("acme", &chat("pro-ok", "short question")).await;
        assert_eq!(r.status(), 200, "{cheap}");
        assert_eq!(
            header(&r, "x-tollgate-model"),
            "pro-ok",
            "{cheap}: served by the fallback"
        );
        // 5xx is retried once on the same provider; a timeout moves on at once.
        assert_eq!(gw.mock.count(cheap), expected_tries, "{cheap}");
        assert_eq!(gw.mock.count("pro-ok"), 1);
        let recs = records(&gw, "acme");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].record.routed_model, "pro-ok");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_client_gets_502_and_one_zero_record() {
    let config = r#"{"ticket_fee": "0.05", "margin_percent": "10", "cheap_model": "fail500-mini", "strong_model": "fail500-mini"}"#;
    let gw = gateway::start(vec![
        ClientSpec::new("acme", "support-desk", config),
        ClientSpec::new("direct", "hostile", "ok"),
    ])
    .await;
    let r = gw.chat("acme", &chat("fail500-mini", "hi")).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (502, Some("upstream_error"))
    );
    let recs = records(&gw, "acme");
    assert_eq!(recs.len(), 1);
    assert!(recs[0].record.flags.failed);
    assert_eq!(recs[0].record.total_charged, Decimal::ZERO);
    assert_eq!(gw.state.ledger.outstanding("acme").unwrap(), Decimal::ZERO);

    // A provider's own 4xx is passed through as the provider worded it,
    // without retries, and leaves one zero record.
    let r = gw
        .post("direct", "/v1/chat/completions")
        .json(&chat("fail400-mini", "hi"))
        .send()
        .await;
    let (status, error) = error_of(r.unwrap()).await;
    assert_eq!(
        (status, error["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    assert_eq!(gw.mock.count("fail400-mini"), 1, "a 4xx is not retried");
    let recs = records(&gw, "direct");
    assert_eq!(recs.len(), 1);
    assert!(recs[0].record.flags.failed && recs[0].record.total_charged.is_zero());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_billed_for_what_it_got() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "hostile", "ok")]).await;
    gw.mock.set_behaviour(
        "stall-mini",
        Behaviour::StallAfter {
            chunks: 4,
            stall: Duration::from_secs(10),
        },
    );
    let mut body = chat("stall-mini", "tell me a long story");
    body["stream"] = json!(true);
    let r = gw.chat("acme", &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut received = String::new();
    while received.matches("\"content\"").count() < 4 {
        let chunk = stream.next().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    let recs = wait_for_records(&gw, "acme", 1).await;
    let rec = &recs[0].record;
    assert!(rec.flags.partial && rec.flags.estimated, "{:?}", rec.flags);
    assert!(rec.tokens.output > 0, "the delivered words are counted");
    assert!(rec.provider_cost > Decimal::ZERO);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cuts_off_is_recorded_as_partial() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "hostile", "ok")]).await;
    let mut body = chat("cutoff-pro", "go");
    body["stream"] = json!(true);
    let r = gw.chat("acme", &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(
        !text.contains("[DONE]"),
        "a cut-off stream must not look complete"
    );
    let recs = wait_for_records(&gw, "acme", 1).await;
    assert!(recs[0].record.flags.partial && recs[0].record.flags.estimated);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rejection_reaches_the_client_and_nothing_is_called_or_billed() {
    let config = r#"{"model": "mini-ok", "tier1_leads": 10, "tier1_rate": "0.5", "tier2_rate": "0.3", "monthly_lead_cap": 0}"#;
    let gw = gateway::start(vec![ClientSpec::new("crm", "lead-qualifier", config)]).await;
    let r = gw
        .post("crm", "/v1/chat/completions")
        .header("x-tollgate-tag-lead", "L-1")
        .json(&chat("mini-ok", "score this lead"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 429);
    assert_eq!(error["code"], "plugin_rejected");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("monthly cap of 0 scored leads")
    );
    assert_eq!(gw.mock.requests().len(), 0);
    assert!(records(&gw, "crm").is_empty());
    assert_eq!(gw.state.ledger.outstanding("crm").unwrap(), Decimal::ZERO);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_follow_the_bindings_failure_policy() {
    let gw = gateway::start(vec![
        ClientSpec::new("closed", "hostile", "panic"),
        ClientSpec::new("open", "hostile", "panic").fail_open(),
        ClientSpec::new("closed-meter", "hostile", "panic@meter"),
        ClientSpec::new("open-price", "hostile", "spin@price").fail_open(),
    ])
    .await;
    // Route fails, fail-closed: refused before any provider, nothing recorded.
    let r = gw.chat("closed", &chat("mini-ok", "hi")).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (500, Some("plugin_failed"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`hostile` failed (trap)")
    );
    assert_eq!(gw.mock.count("mini-ok"), 0);
    assert!(records(&gw, "closed").is_empty());

    // Route fails, fail-open: served as requested, flagged, no surcharge.
    let r = gw.chat("open", &chat("mini-ok", "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-flags"), "fail_open");
    let rec = &records(&gw, "open")[0].record;
    assert!(rec.flags.fail_open);
    assert_eq!(rec.surcharge, Decimal::ZERO);
    assert_eq!(rec.total_charged, rec.provider_cost);

    // Meter fails after the provider answered, fail-closed: an error, and a
    // record that bills the client nothing but keeps the provider cost.
    let r = gw.chat("closed-meter", &chat("mini-ok", "hi")).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (500, Some("plugin_failed"))
    );
    let rec = &records(&gw, "closed-meter")[0].record;
    assert!(rec.flags.failed);
    assert_eq!(rec.total_charged, Decimal::ZERO);
    assert!(rec.provider_cost > Decimal::ZERO);

    // Price times out, fail-open: answer delivered, zero surcharge, flagged.
    let r = gw.chat("open-price", &chat("mini-ok", "hi")).await;
    assert_eq!(r.status(), 200);
    let rec = &records(&gw, "open-price")[0].record;
    assert!(rec.flags.fail_open && rec.surcharge.is_zero());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_malformed_and_oversized_bodies_get_clear_errors() {
    let gw = gateway::start_with(
        vec![ClientSpec::new("acme", "hostile", "ok")],
        Options {
            max_body_bytes: 64 << 10,
            ..Options::default()
        },
    )
    .await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let client = reqwest::Client::new();
    let body = chat("mini-ok", "hi");
    for (auth, what) in [
        (None, "missing"),
        (Some("Bearer sk-openai-style"), "wrong prefix"),
        (
            Some("Bearer tg_live_0000000000000000000000000000000000000000000000"),
            "unknown",
        ),
    ] {
        let mut req = client.post(&url).json(&body);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let (status, error) = error_of(req.send().await.unwrap()).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (401, Some("invalid_api_key")),
            "{what}"
        );
    }
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, None),
        (b"[1, 2]".to_vec(), 400, Some("body")),
        (br#"{"messages": [{"role": "user", "content": "x"}]}"#.to_vec(), 400, Some("model")),
        (br#"{"model": "mini-ok", "messages": "hi"}"#.to_vec(), 400, Some("messages")),
        (br#"{"model": "mini-ok", "messages": []}"#.to_vec(), 400, Some("messages")),
        (br#"{"model": "mini-ok", "messages": [{"content": "x"}]}"#.to_vec(), 400, Some("messages[0]")),
        (br#"{"model": "mini-ok", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#.to_vec(), 400, Some("max_tokens")),
        (br#"{"model": "mini-ok", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#.to_vec(), 400, Some("stream")),
        (br#"{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}"#.to_vec(), 404, Some("model")),
        (vec![b' '; 70 << 10], 413, None),
    ];
    for (raw, expected_status, param) in cases {
        let r = client
            .post(&url)
            .bearer_auth(gw.key("acme"))
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(r).await;
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        assert_eq!(status, expected_status, "{shown}: {error}");
        assert_eq!(error["param"].as_str(), param, "{shown}: {error}");
    }
    // Unknown fields pass through to the upstream untouched.
    let mut body = chat("mini-ok", "hi");
    body["logit_bias"] = json!({"42": 1});
    body["x_vendor_flag"] = json!(true);
    let r = gw.chat("acme", &body).await;
    assert_eq!(r.status(), 200);
    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.body["x_vendor_flag"], json!(true));
    assert_eq!(sent.body["logit_bias"], json!({"42": 1}));
    assert!(
        records(&gw, "acme").len() == 1,
        "refused requests leave no record"
    );
    let r = client
        .get(format!("{}/v2/nothing", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_models_usage_health_and_metrics() {
    let gw = gateway::start(vec![ClientSpec::new("acme", "hostile", "ok")]).await;
    let r = gw
        .post("acme", "/v1/embeddings")
        .json(&json!({"model": "embed-ok", "input": ["one two three", "four"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cost = dec(header(&r, "x-tollgate-provider-cost"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        cost,
        Decimal::from(prompt) * dec("0.02") / Decimal::from(1_000_000)
    );
    // A chat model is not an embeddings model.
    let r = gw
        .post("acme", "/v1/embeddings")
        .json(&json!({"model": "mini-ok", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);

    let client = reqwest::Client::new();
    let models: Value = client
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(gw.key("acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"mini-ok") && ids.contains(&"embed-ok"));

    let usage: Value = client
        .get(format!("{}/v1/usage", gw.url))
        .bearer_auth(gw.key("acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["requests"], 1);
    assert_eq!(
        dec(usage["spend"].as_str().unwrap()),
        cost + dec("0.01"),
        "hostile `ok` charges 0.01"
    );

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            client
                .get(format!("{}{path}", gw.url))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let metrics = client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_requests_total{endpoint=\"embeddings\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_requests_total{endpoint=\"embeddings\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_plugin_calls_total{plugin=\"hostile\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_usage_records_total 1"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_caps_and_prepaid_balances_refuse_before_the_provider() {
    let gw = gateway::start(vec![
        ClientSpec::new("capped", "hostile", "ok"),
        ClientSpec::new("prepaid", "hostile", "ok"),
    ])
    .await;
    let ledger = &gw.state.ledger;
    let mut plan = ledger.plan("capped").unwrap();
    plan.monthly_cap = Some(dec("0.01"));
    ledger.set_plan(plan).unwrap();
    let mut plan = ledger.plan("prepaid").unwrap();
    plan.billing = tollgate_ledger::Billing::Prepaid;
    ledger.set_plan(plan).unwrap();

    // max_tokens bounds the reservation; the hostile plugin's bound is the
    // host default (100), far above a 1-cent cap.
    let mut body = chat("mini-ok", "hi");
    body["max_tokens"] = json!(10);
    let r = gw.chat("capped", &body).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("spend_cap_exceeded"))
    );
    let r = gw.chat("prepaid", &body).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (402, Some("insufficient_balance"))
    );
    assert_eq!(
        gw.mock.requests().len(),
        0,
        "refused before any provider call"
    );
    ledger
        .top_up("prepaid", dec("500"), "topup-1", None)
        .unwrap();
    let r = gw.chat("prepaid", &body).await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_a_spend_threshold_sends_one_signed_webhook() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks/spend",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hooks/spend", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let secret = b"agency-a-webhook-secret".to_vec();
    let gw = gateway::start_with(
        vec![ClientSpec::new("acme", "hostile", "ok")],
        Options {
            webhooks: [(
                "agency-a".to_owned(),
                tollgate::config::WebhookSettings {
                    url: hook_url,
                    secret: secret.clone(),
                },
            )]
            .into(),
            default_surcharge_bound: dec("0.05"),
            ..Options::default()
        },
    )
    .await;
    let mut plan = gw.state.ledger.plan("acme").unwrap();
    plan.monthly_cap = Some(dec("1.00"));
    plan.alert_thresholds_pct = vec![1];
    gw.state.ledger.set_plan(plan).unwrap();
    // Each request costs a little over a cent (the hostile plugin's 0.01
    // surcharge): the first crosses 1% of the cap, the second does not
    // alert again.
    for _ in 0..2 {
        let mut body = chat("mini-ok", "hi");
        body["max_tokens"] = json!(5);
        let r = gw.chat("acme", &body).await;
        assert_eq!(r.status(), 200);
    }
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = received.lock().unwrap().clone();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered_after = received.lock().unwrap().len();
    assert_eq!(
        (delivered.len(), delivered_after),
        (1, 1),
        "exactly one alert for the 1% threshold"
    );
    let (headers, body) = &delivered[0];
    let signature = headers["x-tollgate-signature"].to_str().unwrap();
    assert!(tollgate_ledger::verify_signature(&secret, body, signature));
    assert!(!tollgate_ledger::verify_signature(
        b"another-agency",
        body,
        signature
    ));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (
            payload["client_id"].as_str(),
            payload["threshold_pct"].as_u64()
        ),
        (Some("acme"), Some(1))
    );
    let alerts = gw.state.ledger.alerts().unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "the alert is visible through the reports too"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_whole_answer_is_still_recorded_once() {
    let gw = gateway::start_with(
        vec![ClientSpec::new("acme", "hostile", "ok")],
        Options {
            upstream_timeout: Duration::from_secs(5),
            ..Options::default()
        },
    )
    .await;
    gw.mock
        .set_behaviour("mini-ok", Behaviour::Slow(Duration::from_millis(800)));
    let gave_up = gw
        .post("acme", "/v1/chat/completions")
        .timeout(Duration::from_millis(200))
        .json(&chat("mini-ok", "hi"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    // The provider still answers after the client left: the request is
    // billed once and its reservation settled.
    let recs = wait_for_records(&gw, "acme", 1).await;
    assert_eq!(recs.len(), 1);
    assert!(!recs[0].record.flags.failed);
    assert!(recs[0].record.provider_cost > Decimal::ZERO);
    assert_eq!(gw.state.ledger.outstanding("acme").unwrap(), Decimal::ZERO);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_gets_429_before_anything_else() {
    let gw = gateway::start(vec![
        ClientSpec::new("limited", "hostile", "ok").rate_limited(2),
        ClientSpec::new("free", "hostile", "ok"),
    ])
    .await;
    for _ in 0..2 {
        let r = gw.chat("limited", &chat("mini-ok", "hi")).await;
        assert_eq!(r.status(), 200);
    }
    let r = gw.chat("limited", &chat("mini-ok", "hi")).await;
    let (status, error) = error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    assert_eq!(
        records(&gw, "limited").len(),
        2,
        "the refused request left no record"
    );
    // Another client is not affected.
    let r = gw.chat("free", &chat("mini-ok", "hi")).await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
}
