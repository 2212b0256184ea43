//! Scripted behaviours and the model-name conventions that pick one.

use std::time::Duration;

/// What the mock does with a request for a model, after recording it.
///
/// Behaviours apply to `POST /v1/chat/completions` and `POST /v1/embeddings`
/// (the streaming variants only to streamed chat completions). A request
/// that fails validation gets its 400 whatever the behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// A normal, well-formed response.
    Ok,
    /// Responds with this HTTP status and an OpenAI-shaped error body
    /// (`{"error": {"message", "type", "param", "code"}}`); `type` is
    /// `invalid_request_error` for 4xx (`code` `invalid_api_key` for 401,
    /// `model_not_found` for 404), `requests` with code
    /// `rate_limit_exceeded` for 429, and `server_error` for 5xx. A number
    /// that is no valid status (below 100 or above 999) gives 500.
    Status(u16),
    /// Sleeps this long before sending the response headers, then responds
    /// as [`Behaviour::Ok`].
    Slow(Duration),
    /// Streaming: sends the role chunk and then at most `after_chunks`
    /// content chunks, then drops the connection (no finish chunk, no usage,
    /// no `data: [DONE]`; the chunked body is never terminated).
    /// Non-streaming: sends the headers (with the full `Content-Length`) and
    /// half the body, then drops the connection.
    CutOff {
        /// Content chunks sent before the connection is dropped.
        after_chunks: usize,
    },
    /// Streaming: sends the role chunk and `chunks` content chunks, then
    /// sleeps `stall`, then finishes the stream normally.
    /// Non-streaming: sends the headers and half the body, sleeps `stall`,
    /// then sends the rest.
    StallAfter {
        /// Content chunks sent before the stall.
        chunks: usize,
        /// How long the stream stalls.
        stall: Duration,
    },
    /// A normal response without `usage`: omitted from non-streaming bodies,
    /// and no usage chunk in a stream even when `include_usage` was asked.
    NoUsage,
}

impl Behaviour {
    /// The default behaviour for a model, by name convention (case-sensitive
    /// substring, first match wins in this order): `fail500` →
    /// `Status(500)`, `fail429` → `Status(429)`, `fail400` → `Status(400)`,
    /// `slow` → `Slow(3 s)`, `cutoff` → `CutOff { after_chunks: 3 }`,
    /// `nousage` → `NoUsage`, anything else → `Ok`.
    pub fn for_model(model: &str) -> Behaviour {
        if model.contains("fail500") {
            Behaviour::Status(500)
        } else if model.contains("fail429") {
            Behaviour::Status(429)
        } else if model.contains("fail400") {
            Behaviour::Status(400)
        } else if model.contains("slow") {
            Behaviour::Slow(Duration::from_secs(3))
        } else if model.contains("cutoff") {
            Behaviour::CutOff { after_chunks: 3 }
        } else if model.contains("nousage") {
            Behaviour::NoUsage
        } else {
            Behaviour::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        assert_eq!(Behaviour::for_model("gpt-fail500"), Behaviour::Status(500));
        assert_eq!(Behaviour::for_model("x-fail429-y"), Behaviour::Status(429));
        assert_eq!(Behaviour::for_model("fail400"), Behaviour::Status(400));
        assert_eq!(
            Behaviour::for_model("mock-slow"),
            Behaviour::Slow(Duration::from_secs(3))
        );
        assert_eq!(
            Behaviour::for_model("mock-cutoff"),
            Behaviour::CutOff { after_chunks: 3 }
        );
        assert_eq!(Behaviour::for_model("mock-nousage"), Behaviour::NoUsage);
        assert_eq!(Behaviour::for_model("gpt-4o-mini"), Behaviour::Ok);
        assert_eq!(Behaviour::for_model("slow-fail500"), Behaviour::Status(500));
        assert_eq!(Behaviour::for_model("mock-SLOW"), Behaviour::Ok);
    }
}
