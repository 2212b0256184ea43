//! The built-in demo provider: answers chat completions (streaming too) and
//! embeddings in-process, deterministically, with token usage counted by
//! the same tokenizer the gateway uses, so the whole product works offline.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{UpstreamPath, UpstreamRequest, UpstreamResponse};
use crate::tokens;

/// The demo provider. Stateless.
pub struct DemoProvider;

/// A fixed creation time keeps answers byte-for-byte reproducible.
const CREATED: i64 = 1_767_225_600;

impl DemoProvider {
    /// Answers `request` in-process.
    pub fn send(&self, request: UpstreamRequest) -> UpstreamResponse {
        let parsed: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let body = &parsed;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("demo")
            .to_owned();
        match request.path {
            UpstreamPath::Embeddings => reply(200, embeddings(body, &model)),
            UpstreamPath::ChatCompletions => {
                let Some(messages) = body.get("messages").and_then(Value::as_array) else {
                    return reply(
                        400,
                        json!({"error": {"message": "messages is required", "type": "invalid_request_error", "param": "messages", "code": null}}),
                    );
                };
                let (words, finish) = answer_words(messages, max_tokens(body));
                let prompt_tokens = tokens::count_messages(messages);
                if request.stream {
                    let include_usage = body
                        .pointer("/stream_options/include_usage")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    stream(&model, &words, finish, prompt_tokens, include_usage)
                } else {
                    let text = words.concat();
                    let completion_tokens = tokens::count_text(&text);
                    reply(
                        200,
                        json!({
                            "id": "chatcmpl-demo",
                            "object": "chat.completion",
                            "created": CREATED,
                            "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                            "usage": usage(prompt_tokens, completion_tokens),
                        }),
                    )
                }
            }
        }
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
    })
}

fn max_tokens(body: &Value) -> Option<u32> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The answer as word pieces (each with its trailing space), cut at
/// `max_tokens` tokens, and the finish reason.
fn answer_words(messages: &[Value], max_tokens: Option<u32>) -> (Vec<String>, &'static str) {
    let question = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let topic: String = question.chars().take(60).collect();
    let text = format!(
        "This is the Tollgate demo provider answering \"{topic}\". A real deployment routes this \
         request to the provider your agency's plugin picks; the demo answers offline with \
         realistic token usage so routing, metering, pricing and the ledger can be seen end to end."
    );
    let mut words = Vec::new();
    let mut used = 0u32;
    for word in text.split_inclusive(' ') {
        let cost = tokens::count_text(word);
        if max_tokens.is_some_and(|max| used + cost > max) {
            return (words, "length");
        }
        used += cost;
        words.push(word.to_owned());
    }
    (words, "stop")
}

fn embeddings(body: &Value, model: &str) -> Value {
    let inputs: Vec<Value> = match body.get("input") {
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            // Vector components are not money: floats are the wire format here.
            let seed = input
                .to_string()
                .bytes()
                .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let vector: Vec<f64> = (0..16u64)
                .map(|i| {
                    let x = seed.rotate_left(u32::try_from(i * 4).unwrap_or(0)) % 2001;
                    (x as f64 - 1000.0) / 1000.0
                })
                .collect();
            let embedding = if base64 {
                // The OpenAI SDKs ask for little-endian f32s in base64 by default.
                use base64::Engine as _;
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|x| (*x as f32).to_le_bytes())
                    .collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt = body
        .get("input")
        .map(tokens::count_embedding_input)
        .unwrap_or(0);
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })
}

fn reply(status: u16, body: Value) -> UpstreamResponse {
    let bytes = Bytes::from(body.to_string());
    UpstreamResponse {
        status,
        body: Box::pin(futures::stream::once(async move { Ok(bytes) })),
    }
}

fn stream(
    model: &str,
    words: &[String],
    finish: &str,
    prompt_tokens: u32,
    include_usage: bool,
) -> UpstreamResponse {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        words
            .iter()
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let completion = tokens::count_text(&words.concat());
        events.push(json!({
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage(prompt_tokens, completion),
        }));
    }
    let mut frames: Vec<Result<Bytes, super::UpstreamError>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
        .collect();
    frames.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    UpstreamResponse {
        status: 200,
        body: Box::pin(futures::stream::iter(frames)),
    }
}
