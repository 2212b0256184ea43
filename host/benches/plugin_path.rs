//! Benchmark of the per-request plugin path: a fresh instance plus route,
//! meter and price on realistic inputs, with the `support-desk` plugin.
//!
//! Run with `cargo bench -p tollgate --bench plugin_path`. Prints median,
//! p90, p99 and p99.9 for each variant, interleaved in rounds so machine
//! noise hits every variant alike, and the ratio to a baseline measured in
//! the same run: the same plugin logic compiled natively (no Wasm, no
//! sandbox), through the SDK's native harness.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark binary"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use tollgate::plugin::{CompiledPlugin, PluginMetrics, PluginRuntime, RuntimeLimits};
use tollgate_plugin_sdk::testing::Native;
use tollgate_plugin_types::fixture::Capabilities;
use tollgate_plugin_types::{Outcome, RequestSummary, Usage};

const CONFIG: &str = r#"{"ticket_fee": "0.05", "margin_percent": "20", "cheap_model": "demo-mini", "strong_model": "demo-pro"}"#;
const ROUNDS: usize = 40;
const PER_ROUND: usize = 500;

fn request() -> RequestSummary {
    let mut r = RequestSummary {
        request_id: "req-01JD2Z8Q6Q5T2M9V3N4B7C8X0Y".into(),
        requested_model: "demo-pro".into(),
        message_count: 2,
        estimated_prompt_tokens: 312,
        max_tokens: Some(512),
        end_user: Some("user-4711".into()),
        ..Default::default()
    };
    r.tags.insert("ticket".into(), "T-88213".into());
    r.tags.insert("channel".into(), "web-widget".into());
    r.usage_so_far.spend = "41.2750".parse().unwrap();
    r.usage_so_far.request_count = 1843;
    r.usage_so_far
        .units
        .insert("ticket".into(), "612".parse().unwrap());
    r.usage_so_far
        .units
        .insert("answer".into(), "1790".parse().unwrap());
    r
}

fn usage() -> Usage {
    Usage {
        served_by: tollgate_plugin_types::OfferRef {
            model: "demo-mini".into(),
            provider: "demo".into(),
        },
        input_tokens: 312,
        output_tokens: 188,
        cached_input_tokens: 0,
        provider_cost: "0.0001596".parse().unwrap(),
        latency_ms: 820,
        outcome: Outcome::Completed,
        estimated: false,
    }
}

async fn one_instance(plugin: &CompiledPlugin, runtime: &PluginRuntime) {
    let (req, offers, usage) = (request(), tollgate::demo_catalog::offers(), usage());
    let mut s = plugin.session(&req.request_id).await.unwrap();
    let d = s.route(CONFIG, &req, &offers).await.unwrap().unwrap();
    let q = s
        .meter_and_price(CONFIG, &req, &usage, runtime.surcharge_bound(&d))
        .await
        .unwrap();
    std::hint::black_box(q);
}

/// The one-instance path with each phase timed on its own: instantiate,
/// route, meter, price, and dropping the instance (returning its slot).
async fn one_instance_phases(
    plugin: &CompiledPlugin,
    runtime: &PluginRuntime,
    phases: &mut [Vec<Duration>; PHASES.len()],
) {
    let (req, offers, usage) = (request(), tollgate::demo_catalog::offers(), usage());
    let t0 = Instant::now();
    let mut s = plugin.session(&req.request_id).await.unwrap();
    let t1 = Instant::now();
    let d = s.route(CONFIG, &req, &offers).await.unwrap().unwrap();
    let t2 = Instant::now();
    let units = s.meter(CONFIG, &req, &usage).await.unwrap();
    let t3 = Instant::now();
    let q = s
        .price(CONFIG, &req, &usage, &units, runtime.surcharge_bound(&d))
        .await
        .unwrap();
    let t4 = Instant::now();
    drop(s);
    let t5 = Instant::now();
    std::hint::black_box(q);
    for (i, (a, b)) in [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]
        .into_iter()
        .enumerate()
    {
        phases[i].push(b - a);
    }
}

const PHASES: [&str; 5] = [
    "instantiate",
    "route (first call)",
    "meter",
    "price",
    "drop (slot reset)",
];

async fn two_instances(plugin: &CompiledPlugin, runtime: &PluginRuntime) {
    let (req, offers, usage) = (request(), tollgate::demo_catalog::offers(), usage());
    let mut s = plugin.session(&req.request_id).await.unwrap();
    let d = s.route(CONFIG, &req, &offers).await.unwrap().unwrap();
    drop(s);
    let mut s = plugin.session(&req.request_id).await.unwrap();
    let q = s
        .meter_and_price(CONFIG, &req, &usage, runtime.surcharge_bound(&d))
        .await
        .unwrap();
    std::hint::black_box(q);
}

async fn validate_only(plugin: &CompiledPlugin) {
    let mut s = plugin.session("x").await.unwrap();
    s.validate_config(CONFIG).await.unwrap().unwrap();
}

async fn validate_twice(plugin: &CompiledPlugin) {
    let mut s = plugin.session("x").await.unwrap();
    s.validate_config(CONFIG).await.unwrap().unwrap();
    s.validate_config(CONFIG).await.unwrap().unwrap();
}

async fn instantiate_only(plugin: &CompiledPlugin) {
    std::hint::black_box(plugin.session("x").await.unwrap());
}

fn native() {
    let (req, offers, usage) = (request(), tollgate::demo_catalog::offers(), usage());
    let mut n = Native::<support_desk::SupportDesk>::new();
    let _ = n.route(CONFIG, &req, &offers).unwrap().unwrap();
    let units = n.meter(CONFIG, &req, &usage).unwrap();
    std::hint::black_box(n.price(CONFIG, &req, &usage, &units).unwrap());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = tollgate::cli::plugin_build::build_packages(
        root,
        &["support-desk"],
        Some(&root.join("target/plugins")),
    )
    .expect("build support-desk");
    // `PLUGIN_BENCH_WASM=<file>` measures another build of support-desk
    // instead (e.g. the same source with a different SDK, for an A/B).
    let wasm = std::env::var_os("PLUGIN_BENCH_WASM")
        .map_or_else(|| built["support-desk"].clone(), std::path::PathBuf::from);
    let bytes = std::fs::read(&wasm).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A generous deadline: this measures the path, it does not enforce it,
    // and a noisy machine must not turn a descheduled call into an error.
    let limits = RuntimeLimits {
        deadline: Duration::from_secs(1),
        ..RuntimeLimits::default()
    };
    let runtime = PluginRuntime::new(limits, PluginMetrics::default()).unwrap();
    let plugin = rt.block_on(runtime.load(bytes)).unwrap();

    // For profiling: `PLUGIN_BENCH_PROFILE=<seconds>` runs only the
    // one-instance path in a loop for that long and prints nothing else.
    if let Some(secs) = std::env::var("PLUGIN_BENCH_PROFILE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < until {
            rt.block_on(one_instance(&plugin, &runtime));
            n += 1;
        }
        println!("{n} iterations");
        return;
    }
    let names = [
        "native baseline (no Wasm)",
        "instantiate only",
        "instantiate + validate-config (1 call)",
        "instantiate + validate-config twice",
        "instantiate + route + meter + price",
        "gateway flow (2 instances)",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    // Warm up every variant (page faults in the pool, caches).
    for _ in 0..2_000 {
        native();
        rt.block_on(one_instance(&plugin, &runtime));
    }
    let mut phases: [Vec<Duration>; PHASES.len()] = Default::default();
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            rt.block_on(one_instance_phases(&plugin, &runtime, &mut phases));
        }
        for (i, samples) in samples.iter_mut().enumerate() {
            for _ in 0..PER_ROUND {
                let started = Instant::now();
                match i {
                    0 => native(),
                    1 => rt.block_on(instantiate_only(&plugin)),
                    2 => rt.block_on(validate_only(&plugin)),
                    3 => rt.block_on(validate_twice(&plugin)),
                    4 => rt.block_on(one_instance(&plugin, &runtime)),
                    _ => rt.block_on(two_instances(&plugin, &runtime)),
                }
                samples.push(started.elapsed());
            }
        }
    }
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            percentile(s, 0.5)
        })
        .collect();
    println!(
        "plugin path, support-desk, {} samples per variant in {ROUNDS} interleaved rounds",
        ROUNDS * PER_ROUND
    );
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "variant", "median", "p90", "p99", "p99.9", "vs native"
    );
    for (i, s) in samples.iter().enumerate() {
        println!(
            "{:<38} {:>8.1}µs {:>8.1}µs {:>8.1}µs {:>8.1}µs {:>11.1}×",
            names[i],
            medians[i].as_secs_f64() * 1e6,
            percentile(s, 0.9).as_secs_f64() * 1e6,
            percentile(s, 0.99).as_secs_f64() * 1e6,
            percentile(s, 0.999).as_secs_f64() * 1e6,
            medians[i].as_secs_f64() / medians[0].as_secs_f64(),
        );
    }
    println!();
    println!(
        "phases of the one-instance path, timed separately (medians of {} samples)",
        ROUNDS * PER_ROUND
    );
    let mut total = 0.0;
    for (name, s) in PHASES.iter().zip(phases.iter_mut()) {
        s.sort();
        let median = percentile(s, 0.5).as_secs_f64() * 1e6;
        total += median;
        println!(
            "{name:<38} {median:>8.1}µs {:>8.1}µs (p99)",
            percentile(s, 0.99).as_secs_f64() * 1e6
        );
    }
    println!("{:<38} {total:>8.1}µs", "sum of the phase medians");
}
