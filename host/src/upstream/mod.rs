//! Upstream providers: where routed requests go.
//!
//! [`Provider`] is either an OpenAI-compatible HTTP API ([`http`]) or the
//! built-in demo provider ([`demo`]) that answers in-process. Both return
//! the response body as a byte stream, so the gateway handles streaming and
//! non-streaming answers from either the same way.

pub mod demo;
pub mod http;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::config::{ProviderKind, ProviderSettings};

/// A response body arriving in pieces.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Which OpenAI-style endpoint a call targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamPath {
    /// `/chat/completions`.
    ChatCompletions,
    /// `/embeddings`.
    Embeddings,
}

impl UpstreamPath {
    fn suffix(self) -> &'static str {
        match self {
            UpstreamPath::ChatCompletions => "/chat/completions",
            UpstreamPath::Embeddings => "/embeddings",
        }
    }
}

/// One call to a provider.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The endpoint.
    pub path: UpstreamPath,
    /// The JSON body, already rewritten for the upstream (model name,
    /// `stream_options`) and serialized once: retries resend the same bytes.
    pub body: Bytes,
    /// Whether the body asks for a stream.
    pub stream: bool,
}

/// A provider's answer: status and body stream.
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: BodyStream,
}

/// Why a call to a provider failed before or while it answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("cannot connect to provider: {0}")]
    Connect(String),
    /// No response within the timeout.
    #[error("provider did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed mid-response.
    #[error("provider connection failed: {0}")]
    Io(String),
}

/// A configured upstream.
pub enum Provider {
    /// OpenAI-compatible HTTP.
    Http(http::HttpProvider),
    /// The in-process demo provider.
    Demo(demo::DemoProvider),
}

impl Provider {
    /// Sends one request.
    pub async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        match self {
            Provider::Http(p) => p.send(request).await,
            Provider::Demo(p) => Ok(p.send(request)),
        }
    }
}

/// Every configured provider, with its settings.
#[derive(Clone, Default)]
pub struct Upstreams {
    providers: HashMap<String, (Arc<Provider>, ProviderSettings)>,
}

impl Upstreams {
    /// Builds the providers; fails if an HTTP client cannot be made.
    pub fn new(settings: &[ProviderSettings]) -> Result<Self, UpstreamError> {
        let mut providers = HashMap::new();
        for s in settings {
            let provider = match &s.kind {
                ProviderKind::Demo => Provider::Demo(demo::DemoProvider),
                ProviderKind::OpenAi {
                    base_url,
                    api_key_env,
                } => Provider::Http(http::HttpProvider::new(
                    base_url,
                    api_key_env.as_deref().and_then(|v| std::env::var(v).ok()),
                    s.connect_timeout,
                    s.timeout,
                )?),
            };
            providers.insert(s.id.clone(), (Arc::new(provider), s.clone()));
        }
        Ok(Self { providers })
    }

    /// The provider `id` and its settings.
    pub fn get(&self, id: &str) -> Option<(&Arc<Provider>, &ProviderSettings)> {
        self.providers.get(id).map(|(p, s)| (p, s))
    }
}
