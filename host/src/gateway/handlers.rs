//! HTTP handlers: parse and validate, call the pipeline, shape the answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tollgate_plugin_types::{Endpoint, Outcome};
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use super::pipeline::{self, Bill, Consumption, Incoming, Prepared};
use super::sse;
use super::tenancy::Caller;
use crate::tokens;
use crate::upstream::{BodyStream, UpstreamPath};

type Shared = Arc<AppState>;

/// Most tags one request may carry, and their sizes.
const MAX_TAGS: usize = 32;
const MAX_TAG_KEY: usize = 64;
const MAX_TAG_VALUE: usize = 512;
/// How long a stream may go without an event before it counts as cut off.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// Largest upstream body read whole (non-streaming answers).
const MAX_UPSTREAM_BODY: usize = 32 << 20;
const TAG_HEADER_PREFIX: &str = "x-tollgate-tag-";

fn request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.directory.load().authenticate(auth)
}

async fn read_json(state: &AppState, body: Body) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large(state.max_body_bytes))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(ApiError::malformed_json)?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "body",
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn model_of(body: &Value) -> Result<String, ApiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(_) => Err(ApiError::invalid(
            "model",
            "`model` must be a non-empty string",
        )),
        None => Err(ApiError::invalid("model", "you must provide a `model`")),
    }
}

fn max_tokens_of(body: &Value) -> Result<Option<u32>, ApiError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::invalid(field, format!("`{field}` must be a positive integer"))
                    })?;
                return Ok(Some(n));
            }
        }
    }
    Ok(None)
}

fn validate_messages(body: &Value) -> Result<&Vec<Value>, ApiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
        None => return Err(ApiError::invalid("messages", "you must provide `messages`")),
    };
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                &param,
                format!("{param} must be an object with a string `role`"),
            )
        })?;
        if !matches!(
            role,
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                format!("unknown role `{role}`"),
            ));
        }
        match m.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            None | Some(Value::Null) if role == "assistant" => {}
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.content"),
                    format!("{param}.content must be a string or an array of content parts"),
                ));
            }
        }
    }
    Ok(messages)
}

fn stream_of(body: &Value) -> Result<bool, ApiError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid("stream", "`stream` must be a boolean")),
    }
}

fn end_user_of(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("user") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(u)) => Ok(Some(u.clone())),
        Some(_) => Err(ApiError::invalid("user", "`user` must be a string")),
    }
}

/// Tags from `x-tollgate-tag-*` headers and the body's `metadata` object.
fn tags_of(headers: &HeaderMap, body: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let mut tags = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(TAG_HEADER_PREFIX) {
            let value = value.to_str().map_err(|_| {
                ApiError::invalid(name.as_str(), "tag values must be visible ASCII")
            })?;
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
    match body.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("metadata.{key}"),
                            "metadata values must be strings",
                        ));
                    }
                };
                tags.insert(key.to_ascii_lowercase(), value);
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata",
                "`metadata` must be an object of strings",
            ));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "metadata",
            format!("at most {MAX_TAGS} tags per request"),
        ));
    }
    for (key, value) in &tags {
        if key.is_empty() || key.len() > MAX_TAG_KEY || value.len() > MAX_TAG_VALUE {
            return Err(ApiError::invalid(
                &format!("metadata.{key}"),
                format!(
                    "tag keys are 1 to {MAX_TAG_KEY} characters and values at most {MAX_TAG_VALUE}"
                ),
            ));
        }
    }
    Ok(tags)
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn bill_headers(headers: &mut HeaderMap, bill: &Bill, currency: &str) {
    set_header(headers, "x-tollgate-model", &bill.served_by.model);
    set_header(headers, "x-tollgate-provider", &bill.served_by.provider);
    set_header(
        headers,
        "x-tollgate-provider-cost",
        &bill.provider_cost.to_string(),
    );
    set_header(headers, "x-tollgate-surcharge", &bill.surcharge.to_string());
    set_header(headers, "x-tollgate-cost", &bill.total.to_string());
    set_header(headers, "x-tollgate-currency", currency);
    set_header(headers, "x-tollgate-units", &bill.units_header());
    let flags: Vec<&str> = [
        ("partial", bill.flags.partial),
        ("estimated", bill.flags.estimated),
        ("fail_open", bill.flags.fail_open),
        ("failed", bill.flags.failed),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !flags.is_empty() {
        set_header(headers, "x-tollgate-flags", &flags.join(","));
    }
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    set_header(response.headers_mut(), "x-request-id", request_id);
    response
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(state, headers, body, Endpoint::ChatCompletions).await
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    serve(state, headers, body, Endpoint::Embeddings).await
}

async fn serve(state: Shared, headers: HeaderMap, body: Body, endpoint: Endpoint) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let request_id = request_id();
    let span = tracing::info_span!("request", request_id = %request_id, endpoint = endpoint_name(endpoint));
    let response = match handle(state.clone(), headers, body, endpoint, request_id.clone())
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => {
            span.in_scope(|| tracing::info!(status = error.status.as_u16(), code = ?error.code, "request refused"));
            error.into_response()
        }
    };
    state.metrics.request(
        endpoint_name(endpoint),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    with_request_id(response, &request_id)
}

fn endpoint_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat_completions",
        Endpoint::Embeddings => "embeddings",
    }
}

async fn handle(
    state: Shared,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
    request_id: String,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let body = read_json(&state, body).await?;
    let model = model_of(&body)?;
    let (message_count, prompt_tokens, stream, max_tokens) = match endpoint {
        Endpoint::ChatCompletions => {
            let messages = validate_messages(&body)?;
            (
                u32::try_from(messages.len()).unwrap_or(u32::MAX),
                tokens::count_messages(messages),
                stream_of(&body)?,
                max_tokens_of(&body)?,
            )
        }
        Endpoint::Embeddings => {
            let input = body
                .get("input")
                .filter(|i| i.is_string() || i.is_array())
                .ok_or_else(|| {
                    ApiError::invalid("input", "`input` must be a string or an array")
                })?;
            (0, tokens::count_embedding_input(input), false, None)
        }
    };
    let client_wants_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let incoming = Incoming {
        request_id,
        endpoint,
        model,
        message_count,
        prompt_tokens,
        max_tokens,
        stream,
        end_user: end_user_of(&body)?,
        tags: tags_of(&headers, &body)?,
    };
    let prepared = pipeline::prepare(&state, caller, incoming).await?;
    // From here the provider may be called and the reservation must end in
    // a record even if the client goes away and this handler is dropped: the
    // rest runs on a task of its own.
    let finishing = state.clone().requests.spawn(
        finish(state, prepared, body, endpoint, stream, client_wants_usage).in_current_span(),
    );
    match finishing.await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "request task failed");
            Err(ApiError::internal())
        }
    }
}

async fn finish(
    state: Shared,
    prepared: Prepared,
    body: Value,
    endpoint: Endpoint,
    stream: bool,
    client_wants_usage: bool,
) -> Result<Response, ApiError> {
    let path = match endpoint {
        Endpoint::ChatCompletions => UpstreamPath::ChatCompletions,
        Endpoint::Embeddings => UpstreamPath::Embeddings,
    };
    let answer = match pipeline::call_upstream(&state, &prepared, path, &body).await {
        Ok(answer) => answer,
        Err(no_answer) => {
            pipeline::settle_failed(&state, &prepared, no_answer.last.as_ref()).await?;
            return Err(no_answer.error);
        }
    };
    if answer.response.status != 200 {
        return upstream_refusal(&state, &prepared, answer).await;
    }
    if stream {
        Ok(stream_response(state, prepared, answer, client_wants_usage))
    } else {
        whole_response(&state, &prepared, answer, endpoint).await
    }
}

async fn collect(mut body: BodyStream, limit: usize) -> Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A non-retryable error answer (4xx) from the provider: passed through as
/// the provider worded it, with a zero-usage record.
async fn upstream_refusal(
    state: &AppState,
    prepared: &Prepared,
    answer: pipeline::Answer,
) -> Result<Response, ApiError> {
    let status = answer.response.status;
    let body = collect(answer.response.body, MAX_UPSTREAM_BODY)
        .await
        .unwrap_or_default();
    pipeline::settle_failed(state, prepared, Some(&answer.entry)).await?;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    // Only errors about the client's own request are passed through; a 401,
    // 403 or 404 from the provider is about our credentials or catalog and
    // must not reach the client (nor leak key fragments or upstream names).
    let passes_through = matches!(status, 400 | 413 | 422);
    if !passes_through {
        tracing::warn!(status, body = %String::from_utf8_lossy(&body), "provider refused the request");
    }
    match parsed {
        Some(json) if passes_through && json.get("error").is_some() => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((code, axum::Json(json)).into_response())
        }
        _ => Err(ApiError::upstream(
            false,
            &format!("the provider answered HTTP {status}"),
        )),
    }
}

async fn whole_response(
    state: &AppState,
    prepared: &Prepared,
    answer: pipeline::Answer,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let entry = answer.entry;
    let timeout = state
        .upstreams
        .get(&entry.offer.provider)
        .map_or(STREAM_IDLE, |(_, settings)| settings.timeout);
    let collected = tokio::time::timeout(timeout, collect(answer.response.body, MAX_UPSTREAM_BODY))
        .await
        .unwrap_or_else(|_| Err(format!("the answer did not complete within {timeout:?}")));
    let body = match collected {
        Ok(body) => body,
        Err(detail) => {
            tracing::info!(%detail, "upstream body failed");
            pipeline::settle_failed(state, prepared, Some(&entry)).await?;
            return Err(ApiError::upstream(false, &detail));
        }
    };
    let json: Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(_) => {
            pipeline::settle_failed(state, prepared, Some(&entry)).await?;
            return Err(ApiError::upstream(
                false,
                "the provider's answer is not JSON",
            ));
        }
    };
    let outcome = match json
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
    {
        Some("length") => Outcome::Truncated,
        _ => Outcome::Completed,
    };
    let used = match json
        .get("usage")
        .and_then(|u| Consumption::from_usage(u, outcome))
    {
        Some(used) => used,
        None => Consumption {
            prompt_tokens: prepared.summary.estimated_prompt_tokens,
            completion_tokens: match endpoint {
                Endpoint::ChatCompletions => json
                    .get("choices")
                    .and_then(Value::as_array)
                    .map(|choices| {
                        let mut text = String::new();
                        for choice in choices {
                            for pointer in ["/message/content", "/message/refusal"] {
                                if let Some(t) = choice.pointer(pointer).and_then(Value::as_str) {
                                    text.push_str(t);
                                }
                            }
                            for call in choice
                                .pointer("/message/tool_calls")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                            {
                                if let Some(t) =
                                    call.pointer("/function/arguments").and_then(Value::as_str)
                                {
                                    text.push_str(t);
                                }
                            }
                        }
                        tokens::count_text(&text)
                    })
                    .unwrap_or(0),
                Endpoint::Embeddings => 0,
            },
            cached_tokens: 0,
            outcome,
            estimated: true,
            partial: false,
        },
    };
    let bill = pipeline::settle(state, prepared, &entry, used).await?;
    if let Some(error) = &bill.plugin_failure {
        let name = &prepared.caller.client.binding.plugin.info().name;
        return Err(ApiError::plugin_failed(name, error, false));
    }
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    bill_headers(response.headers_mut(), &bill, &prepared.summary.currency);
    Ok(response)
}

/// Forwards the provider's events as they arrive. The usage chunk (asked of
/// the provider always) is held back until the request is billed, then sent
/// with the Tollgate figures if the client asked for usage, or dropped.
fn stream_response(
    state: Shared,
    prepared: Prepared,
    answer: pipeline::Answer,
    client_wants_usage: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_header(&mut headers, "x-tollgate-model", &answer.entry.offer.model);
    set_header(
        &mut headers,
        "x-tollgate-provider",
        &answer.entry.offer.provider,
    );
    set_header(
        &mut headers,
        "x-tollgate-currency",
        &prepared.summary.currency,
    );
    let tracker = state.requests.clone();
    tracker
        .spawn(forward_stream(state, prepared, answer, client_wants_usage, tx).in_current_span());
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response
}

async fn forward_stream(
    state: Shared,
    prepared: Prepared,
    answer: pipeline::Answer,
    client_wants_usage: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut body = answer.response.body;
    let mut parser = sse::Parser::default();
    let mut delivered = String::new();
    let mut usage: Option<Value> = None;
    let mut usage_event: Option<Value> = None;
    let mut finish: Option<String> = None;
    let (mut done, mut client_gone, mut cut_off) = (false, false, false);
    'read: loop {
        let chunk = tokio::select! {
            biased;
            _ = tx.closed() => { client_gone = true; break 'read; }
            chunk = tokio::time::timeout(STREAM_IDLE, body.next()) => match chunk {
                Ok(chunk) => chunk,
                Err(_) => {
                    tracing::info!(idle = ?STREAM_IDLE, "upstream stream went silent; cutting it off");
                    cut_off = true;
                    break 'read;
                }
            },
        };
        let bytes = match chunk {
            None => {
                if parser.finish().is_some_and(|e| e.data == "[DONE]") {
                    done = true;
                }
                break;
            }
            Some(Ok(bytes)) => bytes,
            Some(Err(error)) => {
                tracing::info!(%error, "upstream stream failed");
                cut_off = true;
                break;
            }
        };
        let events = match parser.push(&bytes) {
            Ok(events) => events,
            Err(size) => {
                tracing::warn!(size, "upstream event too large; cutting the stream");
                cut_off = true;
                break;
            }
        };
        for event in events {
            if event.data == "[DONE]" {
                done = true;
                break 'read;
            }
            let mut frame = event.raw;
            let json: Option<Value> = serde_json::from_str(&event.data).ok();
            if let Some(mut json) = json {
                let has_usage = json.get("usage").is_some_and(Value::is_object);
                if has_usage {
                    usage = json.get("usage").cloned();
                }
                let choices = json.get("choices").and_then(Value::as_array);
                if choices.is_none_or(|c| c.is_empty()) && has_usage {
                    // The usage-only chunk: held back until billed.
                    usage_event = Some(json);
                    continue;
                }
                for choice in choices.into_iter().flatten() {
                    collect_delivered(choice, &mut delivered);
                    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                        finish = Some(reason.to_owned());
                    }
                }
                // Some providers put usage on a chunk that also has choices:
                // a client that did not ask for usage must not see it.
                if has_usage && !client_wants_usage {
                    if let Some(obj) = json.as_object_mut() {
                        obj.remove("usage");
                    }
                    frame = Bytes::from(format!("data: {json}\n\n"));
                }
            }
            if tx.send(Ok(frame)).await.is_err() {
                client_gone = true;
                break 'read;
            }
        }
    }
    drop(body);
    let complete = done || (finish.is_some() && !cut_off && !client_gone);
    let outcome = if !complete {
        Outcome::Interrupted
    } else if finish.as_deref() == Some("length") {
        Outcome::Truncated
    } else {
        Outcome::Completed
    };
    let mut used = usage
        .as_ref()
        .and_then(|u| Consumption::from_usage(u, outcome))
        .unwrap_or_else(|| Consumption {
            prompt_tokens: prepared.summary.estimated_prompt_tokens,
            completion_tokens: tokens::count_text(&delivered),
            cached_tokens: 0,
            outcome,
            estimated: true,
            partial: false,
        });
    used.partial = !complete;
    if client_gone {
        tracing::info!(
            delivered_chars = delivered.len(),
            "client disconnected mid-stream; recording what was delivered"
        );
    }
    let bill = match pipeline::settle(&state, &prepared, &answer.entry, used).await {
        Ok(bill) => bill,
        Err(error) => {
            let _ = tx.send(Ok(error_event(&error))).await;
            return;
        }
    };
    if client_gone {
        return;
    }
    if let Some(error) = &bill.plugin_failure {
        let name = &prepared.caller.client.binding.plugin.info().name;
        let _ = tx
            .send(Ok(error_event(&ApiError::plugin_failed(
                name, error, false,
            ))))
            .await;
        return;
    }
    if client_wants_usage {
        // The figures shown are the ones billed: the provider's usage when it
        // sent one, else the host's estimate.
        let shown_usage = usage.clone().unwrap_or_else(|| {
            json!({
                "prompt_tokens": prepared.summary.estimated_prompt_tokens,
                "completion_tokens": tokens::count_text(&delivered),
                "total_tokens": prepared.summary.estimated_prompt_tokens + tokens::count_text(&delivered),
            })
        });
        let mut event = usage_event.unwrap_or_else(|| {
            json!({
                "id": "chatcmpl-tollgate",
                "object": "chat.completion.chunk",
                "created": prepared.started_at.timestamp(),
                "model": answer.entry.offer.model,
                "choices": [],
                "usage": shown_usage,
            })
        });
        if let Some(obj) = event.as_object_mut() {
            obj.insert(
                "tollgate".into(),
                bill.to_json(&prepared.summary.request_id),
            );
        }
        if tx
            .send(Ok(Bytes::from(format!("data: {event}\n\n"))))
            .await
            .is_err()
        {
            return;
        }
    }
    if done {
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    }
}

/// Appends the text a streamed choice delivered: content, refusals,
/// reasoning and tool-call arguments all cost output tokens.
fn collect_delivered(choice: &Value, delivered: &mut String) {
    for pointer in [
        "/delta/content",
        "/delta/refusal",
        "/delta/reasoning_content",
    ] {
        if let Some(text) = choice.pointer(pointer).and_then(Value::as_str) {
            delivered.push_str(text);
        }
    }
    for call in choice
        .pointer("/delta/tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for pointer in ["/function/name", "/function/arguments"] {
            if let Some(text) = call.pointer(pointer).and_then(Value::as_str) {
                delivered.push_str(text);
            }
        }
    }
}

fn error_event(error: &ApiError) -> Bytes {
    let body = json!({"error": {"message": error.message, "type": error.kind, "code": error.code, "param": error.param}});
    Bytes::from(format!("data: {body}\n\n"))
}

/// `GET /v1/models`: the models this client may use.
pub async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut seen = std::collections::BTreeSet::new();
    let data: Vec<Value> = state
        .catalog
        .all_for(&caller.client)
        .filter(|e| seen.insert(e.offer.model.clone()))
        .map(|e| json!({"id": e.offer.model, "object": "model", "created": 0, "owned_by": e.offer.provider}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/usage`: the calling client's usage and balance this period.
pub async fn usage(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let client = &caller.client.id;
    let period = state.ledger.current_period();
    let result = state
        .ledger
        .usage_so_far(client, period)
        .and_then(|so_far| {
            Ok((
                so_far,
                state.ledger.balance(client)?,
                state.ledger.plan(client)?,
            ))
        });
    match result {
        Ok((so_far, balance, plan)) => {
            let units: serde_json::Map<String, Value> = so_far
                .units
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.normalize().to_string())))
                .collect();
            axum::Json(json!({
                "client_id": client,
                "period": period.to_string(),
                "currency": state.ledger.currency().code(),
                "spend": so_far.spend.to_string(),
                "requests": so_far.requests,
                "units": units,
                "balance": serde_json::to_value(&balance).unwrap_or(Value::Null),
                "monthly_cap": plan.monthly_cap.map(|c| c.to_string()),
            }))
            .into_response()
        }
        Err(e) => ApiError::from_ledger(&e).into_response(),
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the ledger takes writes and its store answers a read.
pub async fn readyz(State(state): State<Shared>) -> Response {
    match state.ledger.check_ready() {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            ApiError::unavailable("the usage ledger is not ready").into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Shared>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}

/// Any other route.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::no_route(method.as_str(), uri.path()).into_response()
}

/// A known path with the wrong method: OpenAI-shaped 405.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::wrong_method(method.as_str(), uri.path()).into_response()
}
