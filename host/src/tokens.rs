//! Token counting with a real BPE tokenizer (`o200k_base`), for prompt
//! estimates before routing and for usage estimates when a provider reports
//! none (an interrupted stream).
//!
//! The counter (`bpe`) is ours: tiktoken-rs's tables hold ~40 MB for what
//! a counter needs in ~4 MB; it is property-tested to count exactly as
//! tiktoken-rs does. Its tables load once, lazily; [`warm_up`] loads them at
//! start so the first request does not pay for it.

mod bpe;

use std::sync::OnceLock;

use serde_json::Value;

use bpe::O200kCounter;
pub use bpe::TableError;

static COUNTER: OnceLock<Result<O200kCounter, TableError>> = OnceLock::new();

fn counter() -> Result<&'static O200kCounter, &'static TableError> {
    COUNTER.get_or_init(O200kCounter::load).as_ref()
}

/// Loads the tokenizer tables now, so the first request does not pay for
/// it, and reports a table the build got wrong.
pub fn warm_up() -> Result<(), &'static TableError> {
    counter().map(|_| ())
}

/// Tokens in a piece of text. Should the table be unusable (a broken build,
/// which [`warm_up`] refuses at start), every byte counts as a token: an
/// upper bound, so a spend cap still holds.
pub fn count_text(text: &str) -> u32 {
    let tokens = match counter() {
        Ok(counter) => counter.count(text),
        Err(_) => text.len(),
    };
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// Per-message framing tokens OpenAI chat models add (role and separators),
/// and the tokens that prime the reply.
const PER_MESSAGE: u32 = 3;
const REPLY_PRIMING: u32 = 3;

/// Prompt tokens of a chat `messages` array, counted the way OpenAI's chat
/// models do: each message's text parts and name, plus framing.
pub fn count_messages(messages: &[Value]) -> u32 {
    let mut total = REPLY_PRIMING;
    for message in messages {
        total = total.saturating_add(PER_MESSAGE);
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            total = total.saturating_add(count_text(role));
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            total = total.saturating_add(count_text(name).saturating_add(1));
        }
        total = total.saturating_add(count_content(message.get("content")));
        if let Some(calls) = message.get("tool_calls") {
            total = total.saturating_add(count_text(&calls.to_string()));
        }
    }
    total
}

fn count_content(content: Option<&Value>) -> u32 {
    match content {
        Some(Value::String(s)) => count_text(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(count_text)
            .fold(0u32, u32::saturating_add),
        _ => 0,
    }
}

/// Tokens of an embeddings `input`: a string, a list of strings, or token
/// arrays (counted as given).
pub fn count_embedding_input(input: &Value) -> u32 {
    match input {
        Value::String(s) => count_text(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => count_text(s),
                Value::Number(_) => 1,
                Value::Array(tokens) => u32::try_from(tokens.len()).unwrap_or(u32::MAX),
                _ => 0,
            })
            .fold(0u32, u32::saturating_add),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_with_the_real_tokenizer() {
        // "hello world" is two tokens in o200k_base, not eleven characters.
        assert_eq!(count_text("hello world"), 2);
        let messages = [json!({"role": "user", "content": "hello world"})];
        assert_eq!(
            count_messages(&messages),
            REPLY_PRIMING + PER_MESSAGE + 1 + 2
        );
        let parts = [json!({"role": "user", "content": [{"type": "text", "text": "hello world"}]})];
        assert_eq!(count_messages(&parts), count_messages(&messages));
        assert_eq!(
            count_embedding_input(&json!(["hello world", "hello world"])),
            4
        );
        assert_eq!(count_embedding_input(&json!([[1, 2, 3]])), 3);
    }
}
