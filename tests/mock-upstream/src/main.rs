//! `mock-upstream`: runs the mock OpenAI-compatible upstream until Ctrl-C.
//!
//! ```text
//! mock-upstream --listen 127.0.0.1:9100 --latency-ms 20
//! ```
//!
//! Prints `mock-upstream listening on ADDR` (the bound address, useful with
//! port 0) once it accepts connections. It keeps no request log, so a long
//! benchmark does not grow its memory.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mock_upstream::{MockUpstream, Options};

/// A scripted, deterministic mock of an OpenAI-compatible upstream.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Args {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Milliseconds added before every response.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        latency: Duration::from_millis(args.latency_ms),
    };
    let mock = match MockUpstream::start_on(args.listen, options).await {
        Ok(mock) => mock,
        Err(error) => {
            eprintln!("mock-upstream: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("mock-upstream listening on {}", mock.addr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                if let Err(error) = signal {
                    eprintln!("mock-upstream: cannot wait for Ctrl-C: {error}");
                    return ExitCode::FAILURE;
                }
                break;
            }
            _ = tick.tick() => mock.clear_requests(),
        }
    }
    drop(mock);
    ExitCode::SUCCESS
}
