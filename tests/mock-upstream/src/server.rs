//! The HTTP side: shared state, the axum router and its handlers, and the
//! scripted delivery of response bodies (flushed event by event).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::ReceivedRequest;
use crate::behaviour::Behaviour;
use crate::wire::{self, CREATED, ChatRequest, EmbeddingsRequest, InvalidRequest};

/// The largest request body accepted (the gateway may forward big prompts).
const BODY_LIMIT: usize = 64 << 20;

/// How long a cut-off waits so the bytes sent before it reach the client.
const FLUSH_BEFORE_DROP: Duration = Duration::from_millis(25);

/// The model always listed by `GET /v1/models`.
pub(crate) const ALWAYS_LISTED: &str = "mock-ok";

/// State shared by the handle and every handler.
pub(crate) struct Shared {
    state: Mutex<Log>,
    latency: Duration,
    shutdown: watch::Receiver<bool>,
}

#[derive(Default)]
struct Log {
    requests: Vec<ReceivedRequest>,
    overrides: HashMap<String, Behaviour>,
    models: Vec<String>,
    received: u64,
}

impl Shared {
    pub(crate) fn new(latency: Duration, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            state: Mutex::new(Log::default()),
            latency,
            shutdown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock leaves the log consistent enough.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn requests(&self) -> Vec<ReceivedRequest> {
        self.lock().requests.clone()
    }

    pub(crate) fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    pub(crate) fn count(&self, model: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|request| request.model == model)
            .count()
    }

    pub(crate) fn set_behaviour(&self, model: &str, behaviour: Behaviour) {
        self.lock().overrides.insert(model.to_owned(), behaviour);
    }

    /// Records a request and returns its 1-based sequence number and the
    /// behaviour in force for its model.
    fn record(&self, request: ReceivedRequest) -> (u64, Behaviour) {
        let mut log = self.lock();
        log.received += 1;
        let sequence = log.received;
        let behaviour = log
            .overrides
            .get(&request.model)
            .cloned()
            .unwrap_or_else(|| Behaviour::for_model(&request.model));
        if !request.model.is_empty() && !log.models.contains(&request.model) {
            log.models.push(request.model.clone());
        }
        log.requests.push(request);
        (sequence, behaviour)
    }

    /// Sleeps for `duration`, or less if the server is shutting down.
    async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = shutdown.wait_for(|down| *down) => {}
        }
    }
}

/// The router serving the mock's endpoints.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat).fallback(unknown))
        .route("/v1/embeddings", post(embeddings).fallback(unknown))
        .route("/v1/models", get(models).fallback(unknown))
        .fallback(unknown)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// Parses and records a request; returns its sequence number, behaviour and
/// parsed body (`Value::Null` if it is not JSON).
fn receive(shared: &Shared, uri: &Uri, headers: &HeaderMap, raw: &[u8]) -> (u64, Behaviour, Value) {
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(raw).unwrap_or(Value::Null)
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let authorization = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (sequence, behaviour) = shared.record(ReceivedRequest {
        path: uri.path().to_owned(),
        model,
        authorization,
        body: body.clone(),
        stream,
    });
    (sequence, behaviour, body)
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let (sequence, behaviour, body) = receive(&shared, &uri, &headers, &raw);
    shared.pause(shared.latency).await;
    let request = match ChatRequest::parse(&body) {
        Ok(request) => request,
        Err(invalid) => return invalid_request(&invalid),
    };
    if let Some(response) = apply_before_headers(&shared, &behaviour, &request.model).await {
        return response;
    }
    let id = format!("chatcmpl-mock-{sequence}");
    let steps = if request.stream {
        stream_steps(&request, &id, &behaviour)
    } else {
        let body = request.completion_body(&id, behaviour != Behaviour::NoUsage);
        body_steps(&body, &behaviour)
    };
    deliver(shared, steps)
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let (_, behaviour, body) = receive(&shared, &uri, &headers, &raw);
    shared.pause(shared.latency).await;
    let request = match EmbeddingsRequest::parse(&body) {
        Ok(request) => request,
        Err(invalid) => return invalid_request(&invalid),
    };
    if let Some(response) = apply_before_headers(&shared, &behaviour, &request.model).await {
        return response;
    }
    let body = request.body(behaviour != Behaviour::NoUsage);
    deliver(shared, body_steps(&body, &behaviour))
}

async fn models(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    receive(&shared, &uri, &headers, &[]);
    shared.pause(shared.latency).await;
    let mut ids = vec![ALWAYS_LISTED.to_owned()];
    for model in &shared.lock().models {
        if !ids.contains(model) {
            ids.push(model.clone());
        }
    }
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": CREATED, "owned_by": "mock-upstream" }))
        .collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

async fn unknown(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    receive(&shared, &uri, &headers, &raw);
    shared.pause(shared.latency).await;
    let message = format!("Unknown request URL: {method} {}.", uri.path());
    json_response(
        StatusCode::NOT_FOUND,
        &wire::error_body(&message, "invalid_request_error", None, Some("unknown_url")),
    )
}

/// Applies the behaviours that act before the headers: `Status` answers
/// with an error, `Slow` sleeps.
async fn apply_before_headers(
    shared: &Shared,
    behaviour: &Behaviour,
    model: &str,
) -> Option<Response> {
    match behaviour {
        Behaviour::Status(code) => Some(scripted_status(*code, model)),
        Behaviour::Slow(delay) => {
            shared.pause(*delay).await;
            None
        }
        _ => None,
    }
}

fn scripted_status(code: u16, model: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, error_code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let message = format!(
        "mock-upstream: scripted status {} for model '{model}'.",
        status.as_u16()
    );
    json_response(status, &wire::error_body(&message, kind, None, error_code))
}

fn invalid_request(invalid: &InvalidRequest) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &wire::error_body(
            &invalid.message,
            "invalid_request_error",
            invalid.param,
            None,
        ),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One step of a scripted body.
enum Step {
    /// Send these bytes (one flush).
    Send(String),
    /// Sleep (cut short by shutdown).
    Pause(Duration),
    /// Drop the connection without finishing the body.
    Drop,
}

fn sse(event: &Value) -> String {
    format!("data: {event}\n\n")
}

/// A scripted response body: its steps, and for a JSON body the length of
/// the whole body (announced as `Content-Length` even when it is cut).
struct Script {
    steps: Vec<Step>,
    json_length: Option<usize>,
}

/// The steps of a streamed chat completion under `behaviour`.
fn stream_steps(request: &ChatRequest, id: &str, behaviour: &Behaviour) -> Script {
    let mut steps = vec![Step::Send(sse(&request.chunk(
        id,
        json!({ "role": "assistant", "content": "" }),
        None,
    )))];
    let deltas = request.deltas();
    for (index, delta) in deltas.iter().enumerate() {
        match behaviour {
            Behaviour::CutOff { after_chunks } if index == *after_chunks => {
                steps.push(Step::Drop);
                return Script {
                    steps,
                    json_length: None,
                };
            }
            Behaviour::StallAfter { chunks, stall } if index == *chunks => {
                steps.push(Step::Pause(*stall));
            }
            _ => {}
        }
        steps.push(Step::Send(sse(&request.chunk(
            id,
            json!({ "content": delta }),
            None,
        ))));
    }
    match behaviour {
        Behaviour::CutOff { .. } => {
            steps.push(Step::Drop);
            return Script {
                steps,
                json_length: None,
            };
        }
        Behaviour::StallAfter { chunks, stall } if *chunks >= deltas.len() => {
            steps.push(Step::Pause(*stall));
        }
        _ => {}
    }
    steps.push(Step::Send(sse(&request.chunk(
        id,
        json!({}),
        Some(request.completion.finish_reason),
    ))));
    if request.include_usage && *behaviour != Behaviour::NoUsage {
        steps.push(Step::Send(sse(&request.usage_chunk(id))));
    }
    steps.push(Step::Send("data: [DONE]\n\n".to_owned()));
    Script {
        steps,
        json_length: None,
    }
}

/// The steps of a non-streamed JSON body under `behaviour`: whole, or cut
/// or stalled at the middle.
fn body_steps(body: &Value, behaviour: &Behaviour) -> Script {
    let text = body.to_string();
    let json_length = Some(text.len());
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle -= 1;
    }
    let (first, rest) = text.split_at(middle);
    let steps = match behaviour {
        Behaviour::CutOff { .. } => vec![Step::Send(first.to_owned()), Step::Drop],
        Behaviour::StallAfter { stall, .. } => vec![
            Step::Send(first.to_owned()),
            Step::Pause(*stall),
            Step::Send(rest.to_owned()),
        ],
        _ => vec![Step::Send(text.clone())],
    };
    Script { steps, json_length }
}

/// Sends a script as the response body, each step flushed as it is
/// produced.
fn deliver(shared: Arc<Shared>, script: Script) -> Response {
    let builder = Response::builder().status(StatusCode::OK);
    let builder = match script.json_length {
        Some(length) => builder
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, length),
        None => builder
            .header(CONTENT_TYPE, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache"),
    };
    let mut steps = script.steps;
    if let [Step::Send(_)] = steps.as_slice()
        && let Some(Step::Send(whole)) = steps.pop()
    {
        // Nothing scripted: send the body at once, without a producer task.
        return builder
            .body(Body::from(whole))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Send(text) => {
                    if sender.send(Ok(Bytes::from(text))).await.is_err() {
                        return; // the client went away
                    }
                }
                Step::Pause(duration) => shared.pause(duration).await,
                Step::Drop => {
                    // Let hyper flush what was sent before the connection is
                    // dropped; an error right behind ready data discards it.
                    tokio::time::sleep(FLUSH_BEFORE_DROP).await;
                    let cut = io::Error::other("mock-upstream: scripted cut-off");
                    let _ = sender.send(Err(cut)).await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
