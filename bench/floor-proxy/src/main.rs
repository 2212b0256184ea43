//! `floor-proxy`: the load benchmark's baseline for "any proxy hop at all".
//!
//! ```text
//! floor-proxy --listen 127.0.0.1:19183 --upstream http://127.0.0.1:19100
//! ```
//!
//! Forwards every request's method, path, `content-type` and body to the
//! upstream and streams the answer back, with the gateway's own stack and
//! settings: a multi-threaded Tokio runtime, axum with `TCP_NODELAY` on
//! accepted sockets, a pooled reqwest client with `TCP_NODELAY`, jemalloc.
//! It parses nothing and decides nothing, so its CPU per request, throughput
//! and added latency are what the gateway would cost if it did no work of
//! its own; `bench/gateway.sh` measures it beside the gateway in the same
//! run. Not a product component and not hardened: loopback benchmarks only.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use clap::Parser;
use futures::TryStreamExt;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A pass-through HTTP proxy, the floor of the gateway load benchmark.
#[derive(Debug, Parser)]
#[command(name = "floor-proxy", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:19183")]
    listen: SocketAddr,
    /// The upstream's base URL; a request's path and query are appended.
    #[arg(long)]
    upstream: String,
}

struct Upstream {
    client: reqwest::Client,
    base: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("floor-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("floor-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // The same client settings as the gateway's OpenAI-compatible provider.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let upstream = Arc::new(Upstream {
        client,
        base: args.upstream.trim_end_matches('/').to_owned(),
    });
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    println!("floor-proxy listening on {}", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

async fn forward(
    State(upstream): State<Arc<Upstream>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = upstream
        .client
        .request(method, format!("{}{path}", upstream.base))
        .body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let body = Body::from_stream(answer.bytes_stream().map_err(std::io::Error::other));
            let mut response = (status, body).into_response();
            if let Some(value) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
