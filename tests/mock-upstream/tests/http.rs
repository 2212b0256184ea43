//! Tests over real sockets: the mock is started in-process and spoken to
//! with reqwest, as the gateway will.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failing test reports by panicking"
)]

use std::time::{Duration, Instant};

use mock_upstream::{
    Behaviour, COMPLETION_WORDS, CREATED, MockUpstream, Options, completion_for, embedding_of,
    prompt_tokens,
};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn chat_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France, and why is it Paris of all cities?"},
        ],
        "temperature": 0.2,
        "some_future_field": {"ignored": true},
    })
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .bearer_auth("sk-test-key")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Reads a whole event stream; returns the `data:` payloads and whether the
/// body ended cleanly (false when the connection was dropped).
async fn read_events(mut response: reqwest::Response) -> (Vec<String>, bool) {
    let mut text = String::new();
    let clean = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let events = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"))
                .to_owned()
        })
        .collect();
    (events, clean)
}

fn parse(event: &str) -> Value {
    serde_json::from_str(event).unwrap()
}

/// The concatenated content deltas of chunk events.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|event| *event != "[DONE]")
        .filter_map(|event| {
            parse(event)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn non_streaming_shape_and_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let body = chat_body("gpt-4o-mini");
    let response = post(&mock, "/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let reply: Value = response.json().await.unwrap();

    assert_eq!(reply["id"], "chatcmpl-mock-1");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["created"], CREATED);
    assert_eq!(reply["model"], "gpt-4o-mini");
    let choice = &reply["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("Mock answer to: What is the capital of France, and why i this is a"),
        "{content}"
    );
    assert_eq!(content.split_whitespace().count(), COMPLETION_WORDS);
    assert_eq!(content, completion_for(&body).text());

    // "You are terse." = 3 words, the question = 14 words, + 4 per message.
    let prompt = (3 + 4) + (14 + 4);
    assert_eq!(
        prompt_tokens(body["messages"].as_array().unwrap()),
        prompt as u64
    );
    assert_eq!(
        reply["usage"],
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": COMPLETION_WORDS,
            "total_tokens": prompt + COMPLETION_WORDS,
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    );

    // Ids count every request the server received.
    let second: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["id"], "chatcmpl-mock-2");
    assert_eq!(second["choices"], reply["choices"]);
}

#[tokio::test]
async fn streaming_without_include_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let mut body = chat_body("mock-ok");
    body["stream"] = json!(true);
    let response = post(&mock, "/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (events, clean) = read_events(response).await;
    assert!(clean);
    // role, one per word, finish, [DONE].
    assert_eq!(events.len(), 1 + COMPLETION_WORDS + 1 + 1);

    let first = parse(&events[0]);
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["id"], "chatcmpl-mock-1");
    assert_eq!(first["created"], CREATED);
    assert_eq!(first["model"], "mock-ok");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(first["choices"][0]["finish_reason"], Value::Null);

    for event in &events[1..=COMPLETION_WORDS] {
        let chunk = parse(event);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let delta = chunk["choices"][0]["delta"]["content"].as_str().unwrap();
        assert_eq!(delta.split_whitespace().count(), 1, "{delta:?}");
        assert!(chunk.get("usage").is_none());
    }
    let finish = parse(&events[COMPLETION_WORDS + 1]);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(events.last().unwrap(), "[DONE]");

    // The deltas concatenate to exactly the non-streaming content.
    assert_eq!(streamed_text(&events), completion_for(&body).text());
    assert!(mock.requests()[0].stream);
}

#[tokio::test]
async fn streaming_with_include_usage_ends_with_a_usage_chunk() {
    let mock = MockUpstream::start().await.unwrap();
    let mut body = chat_body("mock-ok");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (events, clean) = read_events(post(&mock, "/chat/completions", &body).await).await;
    assert!(clean);
    assert_eq!(events.len(), 1 + COMPLETION_WORDS + 1 + 1 + 1);
    let finish = parse(&events[events.len() - 3]);
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = parse(&events[events.len() - 2]);
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 25);
    assert_eq!(usage["usage"]["completion_tokens"], COMPLETION_WORDS);
    assert_eq!(usage["usage"]["total_tokens"], 25 + COMPLETION_WORDS);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn no_usage_omits_usage_everywhere() {
    let mock = MockUpstream::start().await.unwrap();
    let reply: Value = post(&mock, "/chat/completions", &chat_body("mock-nousage"))
        .await
        .json()
        .await
        .unwrap();
    assert!(reply.get("usage").is_none(), "{reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    let mut body = chat_body("mock-nousage");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (events, clean) = read_events(post(&mock, "/chat/completions", &body).await).await;
    assert!(clean);
    assert_eq!(events.len(), 1 + COMPLETION_WORDS + 1 + 1);
    assert!(events.iter().all(|event| !event.contains("\"usage\"")));
    assert_eq!(events.last().unwrap(), "[DONE]");

    // set_behaviour overrides the convention, and works for any model.
    mock.set_behaviour("plain", Behaviour::NoUsage);
    let reply: Value = post(&mock, "/chat/completions", &chat_body("plain"))
        .await
        .json()
        .await
        .unwrap();
    assert!(reply.get("usage").is_none());
}

#[tokio::test]
async fn scripted_statuses_have_the_openai_error_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let response = post(&mock, "/chat/completions", &chat_body("gpt-fail500")).await;
    assert_eq!(response.status(), 500);
    let error: Value = response.json().await.unwrap();
    let object = error["error"].as_object().unwrap();
    assert!(object["message"].as_str().unwrap().contains("gpt-fail500"));
    assert_eq!(object["type"], "server_error");
    assert!(object.contains_key("param"));
    assert!(object.contains_key("code"));

    let response = post(&mock, "/chat/completions", &chat_body("gpt-fail429")).await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");

    let response = post(&mock, "/chat/completions", &chat_body("gpt-fail400")).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");

    // Overrides win, including back to Ok; they apply to streams and embeddings.
    mock.set_behaviour("gpt-fail500", Behaviour::Ok);
    mock.set_behaviour("emb", Behaviour::Status(503));
    let response = post(&mock, "/chat/completions", &chat_body("gpt-fail500")).await;
    assert_eq!(response.status(), 200);
    let response = post(&mock, "/embeddings", &json!({"model": "emb", "input": "x"})).await;
    assert_eq!(response.status(), 503);
    let mut stream = chat_body("gpt-fail429");
    stream["stream"] = json!(true);
    assert_eq!(
        post(&mock, "/chat/completions", &stream).await.status(),
        429
    );
}

#[tokio::test]
async fn invalid_bodies_get_400_in_openai_shape_and_are_still_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "m"}), "messages"),
        (
            json!({"model": "m", "messages": {"role": "user"}}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        let response = post(&mock, "/chat/completions", &body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], param);
        assert_eq!(error["error"]["code"], Value::Null);
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[3].body, Value::Null);
    assert_eq!(requests[3].authorization, None);
    assert_eq!(mock.count("m"), 2);
}

#[tokio::test]
async fn cut_off_stream_ends_early_without_done() {
    let mock = MockUpstream::start().await.unwrap();
    let mut body = chat_body("gpt-cutoff");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&mock, "/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let (events, clean) = read_events(response).await;
    assert!(!clean, "the connection must be dropped, not ended");
    assert_eq!(events.len(), 1 + 3, "{events:?}");
    assert!(events.iter().all(|event| event != "[DONE]"));
    assert!(events.iter().all(|event| !event.contains("\"usage\"")));
    assert!(
        events
            .iter()
            .all(|event| parse(event)["choices"][0]["finish_reason"].is_null())
    );

    // Non-streaming: headers and part of the body, then the connection drops.
    mock.set_behaviour("cut-json", Behaviour::CutOff { after_chunks: 0 });
    let response = post(&mock, "/chat/completions", &chat_body("cut-json")).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());

    // A count past the reply's length still drops before the finish chunk.
    mock.set_behaviour("cut-late", Behaviour::CutOff { after_chunks: 1000 });
    let mut body = chat_body("cut-late");
    body["stream"] = json!(true);
    let (events, clean) = read_events(post(&mock, "/chat/completions", &body).await).await;
    assert!(!clean);
    assert_eq!(events.len(), 1 + COMPLETION_WORDS);
}

#[tokio::test]
async fn slow_delays_the_headers_and_latency_adds_up() {
    let mock = MockUpstream::start_on(
        "127.0.0.1:0".parse().unwrap(),
        Options {
            latency: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    mock.set_behaviour("lazy", Behaviour::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let response = post(&mock, "/chat/completions", &chat_body("lazy")).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    let started = Instant::now();
    let response = post(&mock, "/chat/completions", &chat_body("quick")).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_millis(400), "{waited:?}");
}

#[tokio::test]
async fn stall_after_flushes_the_first_chunks_before_stalling() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_behaviour(
        "stall",
        Behaviour::StallAfter {
            chunks: 2,
            stall: Duration::from_millis(600),
        },
    );
    let mut body = chat_body("stall");
    body["stream"] = json!(true);
    let started = Instant::now();
    let mut response = post(&mock, "/chat/completions", &body).await;
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        let bytes = response.chunk().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the first chunks must arrive before the stall ends"
    );
    assert_eq!(text.matches("\n\n").count(), 3, "{text}");
    let (rest, clean) = read_events(response).await;
    assert!(clean);
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(rest.last().unwrap(), "[DONE]");
    assert_eq!(3 + rest.len(), 1 + COMPLETION_WORDS + 1 + 1);
}

#[tokio::test]
async fn max_tokens_truncates_with_finish_reason_length() {
    let mock = MockUpstream::start().await.unwrap();
    let mut body = chat_body("mock-ok");
    body["max_tokens"] = json!(5);
    let reply: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "Mock answer to: What is");
    assert_eq!(reply["usage"]["completion_tokens"], 5);

    // max_completion_tokens wins over max_tokens; streams are cut the same way.
    body["max_completion_tokens"] = json!(2);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (events, _) = read_events(post(&mock, "/chat/completions", &body).await).await;
    assert_eq!(events.len(), 1 + 2 + 1 + 1 + 1);
    assert_eq!(parse(&events[3])["choices"][0]["finish_reason"], "length");
    assert_eq!(parse(&events[4])["usage"]["completion_tokens"], 2);
    assert_eq!(streamed_text(&events), "Mock answer");

    // A limit at or above the natural length changes nothing.
    let mut body = chat_body("mock-ok");
    body["max_tokens"] = json!(4096);
    let reply: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn the_request_log_records_everything_in_order() {
    let mock = MockUpstream::start().await.unwrap();
    let mut streamed = chat_body("model-a");
    streamed["stream"] = json!(true);
    post(&mock, "/chat/completions", &chat_body("model-a")).await;
    read_events(post(&mock, "/chat/completions", &streamed).await).await;
    post(&mock, "/chat/completions", &chat_body("model-b-fail500")).await;
    post(
        &mock,
        "/embeddings",
        &json!({"model": "embed-1", "input": "hello"}),
    )
    .await;
    let models: Value = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let requests = mock.requests();
    let summary: Vec<(&str, &str, bool)> = requests
        .iter()
        .map(|r| (r.path.as_str(), r.model.as_str(), r.stream))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/v1/chat/completions", "model-a", false),
            ("/v1/chat/completions", "model-a", true),
            ("/v1/chat/completions", "model-b-fail500", false),
            ("/v1/embeddings", "embed-1", false),
            ("/v1/models", "", false),
        ]
    );
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    assert_eq!(requests[4].authorization, None);
    assert_eq!(requests[1].body, streamed);
    assert_eq!(mock.count("model-a"), 2);
    assert_eq!(mock.count("model-b-fail500"), 1);
    assert_eq!(mock.count("never"), 0);

    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-ok", "model-a", "model-b-fail500", "embed-1"]);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");

    mock.clear_requests();
    assert!(mock.requests().is_empty());
    let unknown = client()
        .get(format!("{}/nope", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(mock.requests()[0].path, "/v1/nope");
}

#[tokio::test]
async fn embeddings_are_deterministic_in_float_and_base64() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]});
    let reply: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "list");
    assert_eq!(reply["model"], "text-embedding-3-small");
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let data = reply["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    let floats: Vec<f32> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, embedding_of(&json!("hello world")));

    let mut base64 = body.clone();
    base64["encoding_format"] = json!("base64");
    let reply: Value = post(&mock, "/embeddings", &base64)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["data"][0]["embedding"],
        mock_upstream::base64_f32(&embedding_of(&json!("hello world")))
    );

    let tokens: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "e", "input": [[1, 2], [3]]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(tokens["usage"]["prompt_tokens"], 3);
    let bad = post(&mock, "/embeddings", &json!({"model": "e"})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn dropping_the_mock_shuts_it_down() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    assert_eq!(
        mock.base_url(),
        format!("http://127.0.0.1:{}/v1", addr.port())
    );
    mock.set_behaviour("hang", Behaviour::Slow(Duration::from_secs(60)));
    let base = mock.base_url();
    let hanging = tokio::spawn(async move {
        client()
            .post(format!("{base}/chat/completions"))
            .json(&chat_body("hang"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    drop(mock);
    // The scripted sleep is cut short, so the hanging request ends quickly.
    let _ = hanging.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener must be closed after drop");
}
