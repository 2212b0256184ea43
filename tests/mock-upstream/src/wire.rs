//! The OpenAI wire format as the mock speaks it: request validation, the
//! deterministic reply and token counts, embeddings, and the JSON bodies.
//!
//! Everything here is a pure function of the request body, so a test can
//! compute exactly what the mock will answer (see [`completion_for`] and
//! [`prompt_tokens`]).

use serde_json::{Value, json};

/// The fixed `created` timestamp of every response (2026-01-01T00:00:00Z).
pub const CREATED: u64 = 1_767_225_600;

/// How many words (= completion tokens) a reply has when nothing caps it.
pub const COMPLETION_WORDS: usize = 32;

/// How many characters of the last user message the reply quotes.
pub const EXCERPT_CHARS: usize = 40;

/// How many dimensions every mock embedding has.
pub const EMBEDDING_DIMENSIONS: usize = 8;

/// Prompt tokens charged per message on top of its content's words.
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// Words appended after the quoted excerpt until the reply has
/// [`COMPLETION_WORDS`] words.
const FILLER: [&str; 16] = [
    "this",
    "is",
    "a",
    "deterministic",
    "reply",
    "from",
    "the",
    "mock",
    "upstream",
    "so",
    "that",
    "tests",
    "can",
    "count",
    "every",
    "token.",
];

/// The reply the mock gives to a chat completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The words of the reply, in order; one word is one completion token.
    pub words: Vec<String>,
    /// `"stop"`, or `"length"` when `max_tokens`/`max_completion_tokens` cut it.
    pub finish_reason: &'static str,
}

impl Completion {
    /// The reply text: the words joined by single spaces. The streamed deltas
    /// concatenate to exactly this text.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    /// The completion tokens: the number of words.
    pub fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }
}

/// An error the mock reports in OpenAI's shape with status 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

impl InvalidRequest {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
        }
    }
}

/// Counts whitespace-separated words.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a message's `content`: a string as is, an array of parts as
/// its `text` parts joined by spaces, anything else (null, tool calls) as "".
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The prompt tokens the mock charges for a `messages` array:
/// for every message, the whitespace-separated words of its content
/// ([`message_text`]) plus [`TOKENS_PER_MESSAGE`] (4). Nothing else (role,
/// name, tools, system fingerprint) is counted.
pub fn prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|message| count_words(&message_text(message)) + TOKENS_PER_MESSAGE)
        .sum()
}

/// The reply the mock gives to a chat completion request body:
/// `"Mock answer to:"`, then the words of the first [`EXCERPT_CHARS`] (40)
/// characters of the last `user` message (none if there is no user message),
/// then filler words up to [`COMPLETION_WORDS`] (32) words in all. When the
/// request has `max_completion_tokens` (preferred) or `max_tokens` below that,
/// the reply is cut to that many words and `finish_reason` is `"length"`.
pub fn completion_for(body: &Value) -> Completion {
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        })
        .map(message_text)
        .unwrap_or_default();
    let excerpt: String = last_user.chars().take(EXCERPT_CHARS).collect();
    let mut words: Vec<String> = ["Mock", "answer", "to:"]
        .into_iter()
        .map(str::to_owned)
        .chain(excerpt.split_whitespace().map(str::to_owned))
        .collect();
    let mut filler = FILLER.iter().cycle();
    while words.len() < COMPLETION_WORDS {
        match filler.next() {
            Some(word) => words.push((*word).to_owned()),
            None => break,
        }
    }
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_u64));
    let mut finish_reason = "stop";
    if let Some(limit) = limit {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit < words.len() {
            words.truncate(limit);
            finish_reason = "length";
        }
    }
    Completion {
        words,
        finish_reason,
    }
}

/// A validated chat completion request.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub completion: Completion,
}

impl ChatRequest {
    /// Validates a chat completion body: `model` must be a non-empty string
    /// and `messages` a non-empty array. Unknown fields are ignored.
    pub fn parse(body: &Value) -> Result<Self, InvalidRequest> {
        if !body.is_object() {
            return Err(InvalidRequest::new(
                "We could not parse the JSON body of your request: expected a JSON object.",
                None,
            ));
        }
        let model = required_model(body)?;
        let messages = match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => messages,
            Some(Value::Array(_)) => {
                return Err(InvalidRequest::new(
                    "[] is too short - 'messages'",
                    Some("messages"),
                ));
            }
            Some(_) => {
                return Err(InvalidRequest::new(
                    "Invalid type for 'messages': expected an array.",
                    Some("messages"),
                ));
            }
            None => {
                return Err(InvalidRequest::new(
                    "Missing required parameter: 'messages'.",
                    Some("messages"),
                ));
            }
        };
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            model,
            stream,
            include_usage,
            prompt_tokens: prompt_tokens(messages),
            completion: completion_for(body),
        })
    }

    /// The `usage` object of this request's response.
    pub fn usage(&self) -> Value {
        let completion_tokens = self.completion.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "prompt_tokens_details": { "cached_tokens": 0 },
        })
    }

    /// The non-streaming `chat.completion` body.
    pub fn completion_body(&self, id: &str, with_usage: bool) -> Value {
        let mut body = json!({
            "id": id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.completion.text() },
                "finish_reason": self.completion.finish_reason,
            }],
        });
        if with_usage && let Some(object) = body.as_object_mut() {
            object.insert("usage".to_owned(), self.usage());
        }
        body
    }

    /// One `chat.completion.chunk` with a single choice.
    pub fn chunk(&self, id: &str, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    }

    /// The final usage chunk (`"choices": []`).
    pub fn usage_chunk(&self, id: &str) -> Value {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        })
    }

    /// The content deltas, one per word: the first word as is, every later
    /// word with a leading space, so the deltas concatenate to the
    /// non-streaming text.
    pub fn deltas(&self) -> Vec<String> {
        self.completion
            .words
            .iter()
            .enumerate()
            .map(|(i, word)| {
                if i == 0 {
                    word.clone()
                } else {
                    format!(" {word}")
                }
            })
            .collect()
    }
}

/// A validated embeddings request.
#[derive(Debug)]
pub(crate) struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<Value>,
    pub base64: bool,
}

impl EmbeddingsRequest {
    /// Validates an embeddings body: `model` a non-empty string, `input` a
    /// string, an array of strings, an array of token ids, or an array of
    /// token-id arrays (not empty).
    pub fn parse(body: &Value) -> Result<Self, InvalidRequest> {
        if !body.is_object() {
            return Err(InvalidRequest::new(
                "We could not parse the JSON body of your request: expected a JSON object.",
                None,
            ));
        }
        let model = required_model(body)?;
        let invalid = || {
            InvalidRequest::new(
                "'input' must be a string, an array of strings, an array of token ids or an array of token-id arrays, and not empty.",
                Some("input"),
            )
        };
        let inputs = match body.get("input") {
            None => {
                return Err(InvalidRequest::new(
                    "Missing required parameter: 'input'.",
                    Some("input"),
                ));
            }
            Some(Value::String(text)) => vec![Value::String(text.clone())],
            Some(Value::Array(items)) if items.is_empty() => return Err(invalid()),
            Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
                vec![Value::Array(items.clone())]
            }
            Some(Value::Array(items)) => {
                let valid = items.iter().all(|item| match item {
                    Value::String(_) => true,
                    Value::Array(tokens) => !tokens.is_empty() && tokens.iter().all(Value::is_u64),
                    _ => false,
                });
                if !valid {
                    return Err(invalid());
                }
                items.clone()
            }
            Some(_) => return Err(invalid()),
        };
        let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        Ok(Self {
            model,
            inputs,
            base64,
        })
    }

    /// The response body.
    pub fn body(&self, with_usage: bool) -> Value {
        let data: Vec<Value> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let vector = embedding_of(input);
                let embedding = if self.base64 {
                    Value::String(base64_f32(&vector))
                } else {
                    json!(vector)
                };
                json!({ "object": "embedding", "index": index, "embedding": embedding })
            })
            .collect();
        let mut body = json!({ "object": "list", "data": data, "model": self.model });
        if with_usage && let Some(object) = body.as_object_mut() {
            let tokens: u64 = self.inputs.iter().map(input_tokens).sum();
            object.insert(
                "usage".to_owned(),
                json!({ "prompt_tokens": tokens, "total_tokens": tokens }),
            );
        }
        body
    }
}

fn required_model(body: &Value) -> Result<String, InvalidRequest> {
    match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => Ok(model.clone()),
        Some(_) => Err(InvalidRequest::new(
            "Invalid 'model': expected a non-empty string.",
            Some("model"),
        )),
        None => Err(InvalidRequest::new(
            "You must provide a model parameter.",
            Some("model"),
        )),
    }
}

/// The tokens an embedding input counts for: the words of a string, the
/// length of a token-id array.
pub fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(text) => count_words(text),
        Value::Array(tokens) => tokens.len() as u64,
        _ => 0,
    }
}

/// The mock embedding of one input (a string, or an array of token ids):
/// [`EMBEDDING_DIMENSIONS`] values seeded by the 64-bit FNV-1a hash of the
/// input (a string's UTF-8 bytes; a token array's compact JSON text), spread
/// by splitmix64 into [-1, 1) and scaled to unit length.
pub fn embedding_of(input: &Value) -> [f32; EMBEDDING_DIMENSIONS] {
    let bytes = match input {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    };
    let mut state = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut vector = [0.0_f32; EMBEDDING_DIMENSIONS];
    for value in &mut vector {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 24 bits, exactly representable in an f32.
        let unit = (z >> 40) as f32 / (1_u64 << 24) as f32;
        *value = unit * 2.0 - 1.0;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut vector {
            *value /= norm;
        }
    }
    vector
}

/// Standard base64 (with padding) of the little-endian bytes of `values`,
/// as OpenAI sends embeddings for `"encoding_format": "base64"`.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b0 = group.first().copied().unwrap_or(0);
        let b1 = group.get(1).copied().unwrap_or(0);
        let b2 = group.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if group.len() > 1 { sextet(6) } else { '=' });
        out.push(if group.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// An OpenAI-shaped error body.
pub(crate) fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_count_words_plus_four_per_message() {
        let messages = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "image_url"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
        ];
        assert_eq!(prompt_tokens(&messages), (2 + 4) + (2 + 4) + 4);
    }

    #[test]
    fn completion_quotes_the_last_user_message_and_has_fixed_length() {
        let body = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "What is the capital of France and why is it Paris?"},
        ]});
        let completion = completion_for(&body);
        assert_eq!(completion.words.len(), COMPLETION_WORDS);
        assert_eq!(completion.finish_reason, "stop");
        assert!(
            completion
                .text()
                .starts_with("Mock answer to: What is the capital of France and why is"),
            "{}",
            completion.text()
        );
    }

    #[test]
    fn completion_is_capped_by_max_completion_tokens_first() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "max_completion_tokens": 5});
        let completion = completion_for(&body);
        assert_eq!(completion.completion_tokens(), 5);
        assert_eq!(completion.finish_reason, "length");
        let exact = completion_for(&json!({"messages": [], "max_tokens": COMPLETION_WORDS}));
        assert_eq!(exact.finish_reason, "stop");
    }

    #[test]
    fn excerpt_is_cut_on_characters_not_bytes() {
        let body = json!({"messages": [{"role": "user", "content": "é".repeat(100)}]});
        let completion = completion_for(&body);
        assert_eq!(completion.words[3], "é".repeat(40));
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_of(&json!("hello"));
        assert_eq!(a, embedding_of(&json!("hello")));
        assert_ne!(a, embedding_of(&json!("hello!")));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_matches_known_values() {
        // 1.0f32 = 00 00 80 3f little-endian.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[1.0, 1.0, 1.0]).len(), 16);
    }

    #[test]
    fn chat_validation() {
        assert!(ChatRequest::parse(&json!({"messages": []})).is_err());
        assert_eq!(
            ChatRequest::parse(&json!({"model": "m"}))
                .map(|_| ())
                .map_err(|e| e.param),
            Err(Some("messages"))
        );
        assert!(ChatRequest::parse(&json!({"model": "m", "messages": "hi"})).is_err());
        assert!(ChatRequest::parse(&json!([1])).is_err());
        let ok = ChatRequest::parse(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "extra": {"ignored": true}}),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn embeddings_validation_and_usage() {
        assert!(EmbeddingsRequest::parse(&json!({"model": "e", "input": []})).is_err());
        assert!(EmbeddingsRequest::parse(&json!({"model": "e", "input": 3})).is_err());
        assert!(EmbeddingsRequest::parse(&json!({"model": "e", "input": [1, "a"]})).is_err());
        let tokens = EmbeddingsRequest::parse(&json!({"model": "e", "input": [1, 2, 3]})).unwrap();
        assert_eq!(tokens.inputs.len(), 1);
        let many =
            EmbeddingsRequest::parse(&json!({"model": "e", "input": ["a b", [7, 8, 9]]})).unwrap();
        let body = many.body(true);
        assert_eq!(body["usage"]["prompt_tokens"], 5);
        assert_eq!(body["data"][1]["index"], 1);
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    }
}
