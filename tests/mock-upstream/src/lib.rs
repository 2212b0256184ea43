//! A scripted, deterministic mock of an OpenAI-compatible upstream provider.
//!
//! Tollgate's integration tests start it in-process on `127.0.0.1:0`
//! ([`MockUpstream::start`]); the load benchmark runs the `mock-upstream`
//! binary (`mock-upstream --listen 127.0.0.1:9100 [--latency-ms N]`).
//!
//! # Endpoints (OpenAI wire format)
//! - `POST /v1/chat/completions`, non-streaming or with `"stream": true`
//!   (server-sent events: a role chunk, one chunk per word, a finish chunk,
//!   a usage chunk with `"choices": []` only when
//!   `"stream_options": {"include_usage": true}`, then `data: [DONE]`).
//! - `POST /v1/embeddings`: a string, strings, token ids or token-id arrays;
//!   8-dimensional deterministic unit vectors; `"encoding_format": "base64"`
//!   is honoured (the `openai` Python SDK asks for it by default).
//! - `GET /v1/models`: `mock-ok` and every model requested so far.
//! - Anything else: 404 in OpenAI's error shape.
//!
//! Every request is recorded ([`MockUpstream::requests`]) before its
//! behaviour is applied. Invalid bodies (no `model`, no non-empty `messages`
//! array, a bad embeddings `input`) get 400 with
//! `{"error": {"message", "type": "invalid_request_error", "param", "code"}}`.
//!
//! # Determinism
//! `created` is always [`CREATED`]; chat ids are `chatcmpl-mock-N` where N is
//! the 1-based number of the request among all requests this server
//! received. The reply and token counts are pure functions of the body:
//! - prompt tokens ([`prompt_tokens`]): for every message, the
//!   whitespace-separated words of its content plus 4;
//! - the reply ([`completion_for`]): `Mock answer to:` + the words of the
//!   first 40 characters of the last `user` message + filler words, 32 words
//!   in all; one word is one completion token; `max_completion_tokens` (or
//!   else `max_tokens`) below 32 cuts it with `finish_reason` `"length"`;
//! - streamed deltas are the words, every word after the first with a leading
//!   space, so they concatenate to the non-streaming content;
//! - embeddings usage ([`input_tokens`]): the words of each string input plus
//!   the length of each token-id array.
//!
//! # Behaviours
//! Chosen per model by name ([`Behaviour::for_model`]: `fail500`, `fail429`,
//! `fail400`, `slow`, `cutoff`, `nousage`) or set at run time with
//! [`MockUpstream::set_behaviour`].

#![forbid(unsafe_code)]

mod behaviour;
mod server;
mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use behaviour::Behaviour;
pub use wire::{
    COMPLETION_WORDS, CREATED, Completion, EMBEDDING_DIMENSIONS, EXCERPT_CHARS, TOKENS_PER_MESSAGE,
    base64_f32, completion_for, count_words, embedding_of, input_tokens, message_text,
    prompt_tokens,
};

use server::Shared;

/// Server-wide options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Added before every response (before the behaviour's own delays).
    pub latency: Duration,
}

/// One request the mock received, as recorded before its behaviour applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedRequest {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The body's `model`, or `""` when it has none (and for `GET` requests).
    pub model: String,
    /// The `Authorization` header as sent, e.g. `Bearer sk-...`.
    pub authorization: Option<String>,
    /// The parsed JSON body; `Value::Null` when empty or not JSON.
    pub body: Value,
    /// Whether the body had `"stream": true`.
    pub stream: bool,
}

/// A running mock upstream. Dropping it shuts the server down: it stops
/// accepting, closes idle connections, and cuts short every scripted sleep.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1` on a free port, with default options.
    /// Must be called inside a Tokio runtime.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::start_on(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Options::default(),
        )
        .await
    }

    /// Starts a mock listening on `addr` (port 0 picks a free port).
    /// Must be called inside a Tokio runtime; the server runs as a task on it.
    pub async fn start_on(addr: SocketAddr, options: Options) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, signal) = watch::channel(false);
        let shared = Arc::new(Shared::new(options.latency, signal.clone()));
        let app = server::router(Arc::clone(&shared));
        let mut signal = signal;
        tokio::spawn(async move {
            let stopped = async move {
                let _ = signal.wait_for(|down| *down).await;
            };
            // Serving only ends on shutdown; an accept error is retried by axum.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        });
        Ok(MockUpstream {
            addr,
            shared,
            shutdown,
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received (and not cleared), in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests()
    }

    /// How many recorded requests named `model` (any endpoint).
    pub fn count(&self, model: &str) -> usize {
        self.shared.count(model)
    }

    /// Overrides the behaviour for `model` (exact name) from now on.
    pub fn set_behaviour(&self, model: &str, behaviour: Behaviour) {
        self.shared.set_behaviour(model, behaviour);
    }

    /// Forgets the recorded requests (ids and `GET /v1/models` are not
    /// affected). The binary calls this periodically so a long benchmark does
    /// not grow memory.
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
