//! OpenAI-compatible HTTP providers, over one pooled `reqwest` client each.

use std::time::Duration;

use futures::StreamExt;

use super::{UpstreamError, UpstreamRequest, UpstreamResponse};

/// An OpenAI-compatible API at `base_url`.
pub struct HttpProvider {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl HttpProvider {
    /// A provider with a pooled client.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            base_url: base_url.to_owned(),
            api_key,
            timeout,
        })
    }

    /// Sends the request; the timeout covers the wait for response headers
    /// (a stream then runs as long as the provider keeps sending).
    pub async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let url = format!("{}{}", self.base_url, request.path.suffix());
        let mut builder = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = match tokio::time::timeout(self.timeout, builder.send()).await {
            Err(_) => return Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_timeout() => return Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::Connect(root_cause(&e))),
            Ok(Err(e)) => return Err(UpstreamError::Io(root_cause(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| UpstreamError::Io(root_cause(&e))));
        Ok(UpstreamResponse {
            status,
            body: Box::pin(body),
        })
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
