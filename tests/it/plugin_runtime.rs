//! The sandboxed plugin runtime against real components: the example
//! plugins, and hostile plugins that loop, hoard memory, recurse, panic,
//! flood, snoop and lie.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::plugin::policy::{FailurePolicy, RouteOutcome, route_outcome};
use tollgate::plugin::{
    ContentHash, LoadError, MAX_WARM_INSTANCES, PluginError, PluginStats, RuntimeLimits,
    WorldVersion,
};
use tollgate_plugin_types::{Outcome, RouteDecision, Usage};

use crate::support::{self, offers, plugin_bytes, request};

const SUPPORT_CONFIG: &str = r#"{"ticket_fee": "0.05", "margin_percent": "20",
    "cheap_model": "demo-mini", "strong_model": "demo-pro"}"#;

/// The slack allowed on top of the deadline before a failure must surface:
/// scheduling noise on a loaded two-core machine. A broken deadline would
/// hang forever instead.
const MARGIN: Duration = Duration::from_millis(500);

fn usage(decision: &RouteDecision) -> Usage {
    Usage {
        served_by: decision.primary.clone(),
        input_tokens: 120,
        output_tokens: 80,
        cached_input_tokens: 0,
        provider_cost: "0.000066".parse().unwrap(),
        latency_ms: 300,
        outcome: Outcome::Completed,
        estimated: false,
    }
}

/// Routes one honest support-desk request and checks the answer.
async fn honest_call_still_works(runtime: &tollgate::plugin::PluginRuntime) {
    let plugin = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    let mut session = plugin.session("honest").await.unwrap();
    let decision = session
        .route(SUPPORT_CONFIG, &request("demo-pro"), &offers())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        decision.primary.model, "demo-mini",
        "short prompt goes to the cheap model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_load_and_describe_themselves() {
    let (runtime, _) = support::runtime();
    for name in ["support-desk", "document-pipeline", "lead-qualifier"] {
        let bytes = plugin_bytes(name);
        let plugin = runtime.load(bytes.clone()).await.unwrap();
        assert_eq!(plugin.info().name, name);
        assert!(!plugin.info().description.is_empty());
        assert_eq!(plugin.world(), WorldVersion::V0_2);
        assert_eq!(plugin.hash(), ContentHash::of(&bytes));
        assert_eq!(plugin.size(), bytes.len());
        assert!(
            plugin
                .exports()
                .iter()
                .any(|e| e == "tollgate:plugin/plugin@0.2.0")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_compile_once() {
    let (runtime, _) = support::runtime();
    let first = runtime.load(plugin_bytes("lead-qualifier")).await.unwrap();
    let second = runtime.load(plugin_bytes("lead-qualifier")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
}

/// An instance created ahead of its request is as fresh as any other: never
/// called before, serving the request it is handed to, and no more than
/// `MAX_WARM_INSTANCES` wait at once (each holds a pool slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_created_ahead_are_fresh_and_capped() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let stats = Arc::new(PluginStats::default());
    let mut waiting = Vec::new();
    for _ in 0..MAX_WARM_INSTANCES {
        waiting.push(
            plugin
                .warm_session_for(stats.clone())
                .await
                .expect("room for one more"),
        );
    }
    assert!(
        plugin.warm_session_for(stats.clone()).await.is_none(),
        "no more than MAX_WARM_INSTANCES wait"
    );
    for (i, warm) in waiting.into_iter().enumerate() {
        let request_id = format!("r{i}");
        let mut session = warm.into_session(&request_id);
        assert_eq!(session.request_id(), request_id);
        let first = session
            .route("counter", &request("demo-mini"), &offers())
            .await
            .unwrap();
        assert_eq!(first.unwrap_err().message, "calls=1", "{request_id}");
    }
    // Handed over, they no longer count against the cap.
    assert!(plugin.warm_session_for(stats.clone()).await.is_some());
    assert_eq!(
        stats.calls(),
        MAX_WARM_INSTANCES as u64,
        "calls counted for the tenant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_instance() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    for request_id in ["r1", "r2", "r3"] {
        let mut session = plugin.session(request_id).await.unwrap();
        let first = session
            .route("counter", &request("demo-mini"), &offers())
            .await
            .unwrap();
        assert_eq!(
            first.unwrap_err().message,
            "calls=1",
            "state leaked into {request_id}"
        );
        // Within one instance state does persist, which shows the counter works.
        let second = session
            .route("counter", &request("demo-mini"), &offers())
            .await
            .unwrap();
        assert_eq!(second.unwrap_err().message, "calls=2");
    }
}

/// (config, the capability that must fail, the error kind)
const HOSTILE_CASES: &[(&str, &str, &str)] = &[
    ("spin", "route", "timeout"),
    ("spin@meter", "meter", "timeout"),
    ("spin@price", "price", "timeout"),
    ("grow-memory", "route", "memory_limit"),
    ("grow-memory@price", "price", "memory_limit"),
    ("recurse", "route", "stack_overflow"),
    ("panic", "route", "trap"),
    ("panic@meter", "meter", "trap"),
    ("exit", "route", "trap"),
    ("sleep", "route", "trap"),
    ("huge-output", "route", "output_too_large"),
    ("huge-output@meter", "meter", "output_too_large"),
    ("unknown-model", "route", "invalid_output"),
    ("absurd-units@meter", "meter", "invalid_output"),
    ("bad-unit-name@meter", "meter", "invalid_output"),
    ("negative-surcharge@price", "price", "invalid_output"),
    ("malformed-surcharge@price", "price", "invalid_output"),
];

/// Runs the hostile plugin with `config` as the gateway would and returns
/// the capability that failed and its error.
async fn run_hostile(
    runtime: &tollgate::plugin::PluginRuntime,
    config: &str,
) -> Option<(&'static str, PluginError)> {
    run_hostile_plugin(runtime, "hostile", config).await
}

/// [`run_hostile`] with the plugin package to load.
async fn run_hostile_plugin(
    runtime: &tollgate::plugin::PluginRuntime,
    package: &str,
    config: &str,
) -> Option<(&'static str, PluginError)> {
    let plugin = runtime.load(plugin_bytes(package)).await.unwrap();
    let req = request("demo-mini");
    let mut session = plugin.session("hostile").await.unwrap();
    let decision = match session.route(config, &req, &offers()).await {
        Ok(Ok(d)) => d,
        Ok(Err(rejection)) => panic!("{config}: unexpected rejection {}", rejection.message),
        Err(e) => return Some(("route", e)),
    };
    let mut session = plugin.session("hostile").await.unwrap();
    let usage = usage(&decision);
    let units = match session.meter(config, &req, &usage).await {
        Ok(units) => units,
        Err(e) => return Some(("meter", e)),
    };
    let bound = runtime.surcharge_bound(&decision);
    match session.price(config, &req, &usage, &units, bound).await {
        Ok(_) => None,
        Err(e) => Some(("price", e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_behaviour_becomes_a_typed_error_and_the_host_keeps_serving() {
    let (runtime, _) = support::runtime();
    let deadline = runtime.limits().deadline;
    // Compile outside the timed region.
    let _held = runtime.load(plugin_bytes("hostile")).await.unwrap();
    for (config, capability, kind) in HOSTILE_CASES {
        let started = Instant::now();
        let failure = run_hostile(&runtime, config).await;
        let elapsed = started.elapsed();
        let (failed_at, error) = failure.unwrap_or_else(|| panic!("{config}: no failure"));
        assert_eq!(
            (failed_at, error.kind()),
            (*capability, *kind),
            "{config}: {error}"
        );
        // Route, meter and price each get the deadline.
        assert!(
            elapsed < deadline * 3 + MARGIN,
            "{config} took {elapsed:?} to fail (deadline {deadline:?})"
        );
        honest_call_still_works(&runtime).await;
    }
    // The honest path of the same plugin still works after all that.
    assert!(run_hostile(&runtime, "ok").await.is_none());
}

/// The same misbehaviours from a contract-0.2 plugin (raw bindings, not the
/// SDK), plus misbehaving in the `request-context` constructor, which runs
/// inside the first capability called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_v0_2_plugin_gets_the_same_typed_errors() {
    let (runtime, _) = support::runtime();
    let deadline = runtime.limits().deadline;
    let plugin = runtime.load(plugin_bytes("hostile-v2")).await.unwrap();
    assert_eq!(plugin.world(), WorldVersion::V0_2);
    let cases = HOSTILE_CASES.iter().copied().chain([
        ("panic@context", "route", "trap"),
        ("spin@context", "route", "timeout"),
    ]);
    for (config, capability, kind) in cases {
        let started = Instant::now();
        let failure = run_hostile_plugin(&runtime, "hostile-v2", config).await;
        let elapsed = started.elapsed();
        let (failed_at, error) = failure.unwrap_or_else(|| panic!("{config}: no failure"));
        assert_eq!(
            (failed_at, error.kind()),
            (capability, kind),
            "{config}: {error}"
        );
        assert!(
            elapsed < deadline * 3 + MARGIN,
            "{config} took {elapsed:?} to fail (deadline {deadline:?})"
        );
    }
    // A scale above 28 is named as such.
    let (_, error) = run_hostile_plugin(&runtime, "hostile-v2", "malformed-surcharge@price")
        .await
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("price-quote.surcharge: scale 29 is above 28"),
        "{error}"
    );
    assert!(
        run_hostile_plugin(&runtime, "hostile-v2", "ok")
            .await
            .is_none()
    );
    honest_call_still_works(&runtime).await;
}

/// Runs the hostile plugin's endless `route` in a fresh session: the error
/// it ended with and how long the call took.
async fn spin_route(
    plugin: &tollgate::plugin::CompiledPlugin,
) -> Result<(PluginError, Duration), PluginError> {
    let mut session = plugin.session("spin").await?;
    let started = Instant::now();
    let err = session
        .route("spin", &request("demo-mini"), &offers())
        .await
        .unwrap_err();
    Ok((err, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_deadline_stops_a_spinning_plugin_within_milliseconds() {
    let (runtime, _) = support::runtime_with(RuntimeLimits::default());
    let deadline = runtime.limits().deadline;
    assert_eq!(deadline, Duration::from_millis(5));
    // Loading runs `describe` under the same 5 ms deadline, which a loaded
    // machine can miss for reasons that have nothing to do with the plugin.
    let mut plugin = None;
    for _ in 0..10 {
        if let Ok(p) = runtime.load(plugin_bytes("hostile")).await {
            plugin = Some(p);
            break;
        }
    }
    let plugin = plugin.expect("the hostile plugin loads within 10 tries");
    let (err, elapsed) = spin_route(&plugin).await.unwrap();
    assert_eq!(err, PluginError::Timeout(deadline));
    assert!(elapsed < deadline + MARGIN, "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_holds_after_the_epoch_ticker_parked_while_idle() {
    let (runtime, _) = support::runtime_with(RuntimeLimits {
        deadline: Duration::from_millis(20),
        ..RuntimeLimits::default()
    });
    let deadline = runtime.limits().deadline;
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    // Idle: no call for a while parks the ticker, and the epoch stands still.
    let idle_since = Instant::now();
    while !runtime.epoch_ticker_idle() {
        assert!(
            idle_since.elapsed() < Duration::from_secs(10),
            "the epoch ticker never parked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next call wakes it, so a spinning plugin still meets its deadline.
    // The call runs on a thread of its own: were the ticker not woken, the
    // spin would never end, and the watchdog below fails the test instead of
    // hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(spin_route(&plugin)));
    });
    let (err, elapsed) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a spinning plugin after an idle spell was never stopped")
        .unwrap();
    assert_eq!(err, PluginError::Timeout(deadline));
    assert!(elapsed < deadline + MARGIN, "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_honest_calls_run_side_by_side() {
    // Spinners hold both workers for a whole deadline each; honest calls
    // queue behind them, so the deadline must cover that queueing too.
    let (runtime, _) = support::runtime_with(RuntimeLimits {
        deadline: Duration::from_millis(250),
        ..RuntimeLimits::default()
    });
    let hostile = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let honest = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (hostile, honest) = (hostile.clone(), honest.clone());
        tasks.push(tokio::spawn(async move {
            if i % 10 == 0 {
                let mut s = hostile.session("spin").await.unwrap();
                let err = s
                    .route("spin", &request("demo-mini"), &offers())
                    .await
                    .unwrap_err();
                assert_eq!(err.kind(), "timeout");
            } else {
                let mut s = honest.session(&format!("r{i}")).await.unwrap();
                let d = s
                    .route(SUPPORT_CONFIG, &request("demo-pro"), &offers())
                    .await;
                assert_eq!(d.unwrap().unwrap().primary.model, "demo-mini");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_denies_files_sockets_and_environment() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let mut session = plugin.session("snoop").await.unwrap();
    let report = session
        .route("snoop", &request("demo-mini"), &offers())
        .await
        .unwrap();
    let report = report.unwrap_err().message;
    for expected in [
        "file=denied",
        "dir=denied",
        "socket=denied",
        "env=0",
        "secret=none",
        "args=0",
    ] {
        assert!(
            report.split(';').any(|part| part == expected),
            "{expected} not in {report}"
        );
    }
    let host_cwd = std::env::current_dir().unwrap();
    assert!(
        !report.contains(&format!("cwd={}", host_cwd.display())),
        "the host's working directory leaked: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_are_fixed_and_randomness_is_seeded() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let mut reports = Vec::new();
    for _ in 0..2 {
        let mut session = plugin.session("clock").await.unwrap();
        let r = session
            .route("clock", &request("demo-mini"), &offers())
            .await
            .unwrap();
        reports.push(r.unwrap_err().message);
    }
    assert!(reports[0].starts_with("clock=0;"), "{}", reports[0]);
    assert_eq!(
        reports[0], reports[1],
        "two instances must see identical clock and randomness"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_imports_are_refused_at_load() {
    let (runtime, _) = support::runtime();
    for (name, import) in [
        ("imports-unknown", "tollgate:evil/backdoor"),
        ("imports-http", "wasi:http/outgoing-handler"),
    ] {
        match runtime.load(plugin_bytes(name)).await {
            Err(LoadError::UnsupportedImport(found)) => {
                assert!(found.starts_with(import), "{name}: refused for {found}")
            }
            Err(other) => panic!("{name}: refused for the wrong reason: {other}"),
            Ok(_) => panic!("{name} was accepted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_that_are_not_plugin_components_are_refused() {
    let (runtime, _) = support::runtime_with(RuntimeLimits {
        max_component_bytes: 1 << 20,
        ..RuntimeLimits::default()
    });
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    type Case = (&'static str, Vec<u8>, fn(&LoadError) -> bool);
    let cases: Vec<Case> = vec![
        ("empty", Vec::new(), |e| {
            matches!(e, LoadError::NotAComponent(_))
        }),
        ("text", b"hello".to_vec(), |e| {
            matches!(e, LoadError::NotAComponent(_))
        }),
        ("elf", b"\x7fELF\x02\x01\x01".to_vec(), |e| {
            matches!(e, LoadError::NotAComponent(_))
        }),
        ("core module", core_module, |e| {
            matches!(e, LoadError::NotAComponent(_))
        }),
        (
            "truncated component",
            plugin_bytes("support-desk")[..4096].to_vec(),
            |e| matches!(e, LoadError::Invalid(_)),
        ),
        ("too large", vec![0u8; 2 << 20], |e| {
            matches!(e, LoadError::TooLarge { .. })
        }),
    ];
    for (what, bytes, expected) in cases {
        match runtime.load(bytes).await {
            Err(e) => assert!(expected(&e), "{what}: wrong error {e}"),
            Ok(_) => panic!("{what} was accepted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_is_refused_before_the_call() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    let mut req = request("demo-mini");
    req.tags.insert("ticket".into(), "x".repeat(300 << 10));
    let mut session = plugin.session("big").await.unwrap();
    let err = session
        .route(SUPPORT_CONFIG, &req, &offers())
        .await
        .unwrap_err();
    assert!(matches!(err, PluginError::InputTooLarge { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_is_reported_as_capacity_not_a_plugin_failure() {
    let (runtime, _) = support::runtime_with(RuntimeLimits {
        max_instances: 2,
        deadline: support::TEST_DEADLINE,
        ..RuntimeLimits::default()
    });
    let plugin = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    let held: Vec<_> = vec![
        plugin.session("a").await.unwrap(),
        plugin.session("b").await.unwrap(),
    ];
    match plugin.session("c").await {
        Err(PluginError::Instantiate(_)) => {}
        Err(other) => panic!("expected Instantiate, got {other}"),
        Ok(_) => panic!("a third instance fit in a pool of two"),
    }
    drop(held);
    assert!(
        plugin.session("d").await.is_ok(),
        "slots come back when sessions end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_surcharge_bound_is_clamped_to_the_operators_ceiling() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let mut session = plugin.session("bound").await.unwrap();
    let decision = session
        .route("huge-bound", &request("demo-mini"), &offers())
        .await
        .unwrap()
        .unwrap();
    assert!(decision.surcharge_bound.unwrap() > rust_decimal::Decimal::from(1_000_000_000u64));
    assert_eq!(
        runtime.surcharge_bound(&decision),
        runtime.limits().default_surcharge_bound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_checked_by_the_plugins_own_validation() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    assert_eq!(plugin.validate_config(SUPPORT_CONFIG).await, Ok(Ok(())));
    let refused = plugin
        .validate_config(r#"{"ticket_fee": "0.05", "margin_percent": "900", "cheap_model": "a", "strong_model": "b"}"#)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.contains("margin_percent must be between 0 and 200"),
        "{refused}"
    );
    let malformed = plugin
        .validate_config("{not json")
        .await
        .unwrap()
        .unwrap_err();
    assert!(malformed.starts_with("invalid config"), "{malformed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_policy_decides_what_a_failing_route_gets() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    let req = request("demo-pro");
    for policy in [FailurePolicy::FailClosed, FailurePolicy::FailOpen] {
        let mut session = plugin.session("policy").await.unwrap();
        let result = session.route("panic", &req, &offers()).await;
        match (policy, route_outcome(policy, result, &req, &offers())) {
            (FailurePolicy::FailClosed, RouteOutcome::Failed(e)) => assert_eq!(e.kind(), "trap"),
            (
                FailurePolicy::FailOpen,
                RouteOutcome::Route {
                    decision,
                    failed_open: Some(e),
                },
            ) => {
                assert_eq!(
                    decision.primary.model, "demo-pro",
                    "fail-open routes as requested"
                );
                assert_eq!(e.kind(), "trap");
            }
            (policy, other) => panic!("{policy:?}: unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_errors_and_latency_are_measured_per_plugin() {
    let (runtime, metrics) = support::runtime();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    // Held, so the honest call below runs on this very (cached) component.
    let support = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    honest_call_still_works(&runtime).await;
    let _ = run_hostile(&runtime, "panic@meter").await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let version = support.hash().short();
    assert!(
        text.contains(&format!(
            "tollgate_plugin_calls_total{{plugin=\"support-desk\",version=\"{version}\",capability=\"route\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("tollgate_plugin_errors_total{plugin=\"hostile\"")
            && text.contains("capability=\"meter\",kind=\"trap\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_plugin_call_duration_seconds_bucket{"),
        "{text}"
    );
    assert_eq!(support.stats().calls(), 2, "describe at load and one route");
    assert_eq!(support.stats().errors(), 0);
}

#[test]
fn plugin_logging_is_bounded() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let (runtime, _) = support::runtime_with(RuntimeLimits {
                deadline: Duration::from_millis(200),
                ..RuntimeLimits::default()
            });
            let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
            let mut session = plugin.session("flood").await.unwrap();
            let routed = session
                .route("log-flood", &request("demo-mini"), &offers())
                .await;
            assert!(matches!(routed, Ok(Ok(_))), "{routed:?}");
        })
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tollgate::plugin_log"))
        .collect();
    assert_eq!(lines.len(), 32, "at most 32 lines per instance");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("request_id=flood") && l.len() < 1024 + 300)
    );
}

/// The SDK's heap is a bump arena that hands memory to the standard
/// allocator once full. A plugin built with it that allocates twice the
/// memory cap in short-lived blocks, and keeps a MiB alive across the arena's
/// end, must still succeed with every block intact: freed memory is reused
/// and no block overlaps another.
#[tokio::test]
async fn the_sdk_heap_reuses_freed_memory_and_keeps_live_blocks_intact() {
    let (runtime, _) = support::runtime_with(RuntimeLimits {
        deadline: Duration::from_secs(10),
        ..RuntimeLimits::default()
    });
    let cap_mib = RuntimeLimits::default().memory_bytes >> 20;
    let plugin = runtime.load(plugin_bytes("allocator")).await.unwrap();
    let config = format!(r#"{{"churn_mib": {}, "hold_kib": 1024}}"#, 2 * cap_mib);
    for request_id in ["a1", "a2"] {
        let mut session = plugin.session(request_id).await.unwrap();
        let decision = session
            .route(&config, &request("demo-mini"), &offers())
            .await
            .unwrap();
        match decision {
            Ok(d) => assert_eq!(d.primary.model, "demo-mini"),
            Err(rejection) => panic!("{request_id}: {}", rejection.message),
        }
    }
}

/// Plugins built against contract 0.1 (decimals as text, configuration and
/// request passed to every call) keep working beside the SDK's 0.2: the
/// hostile test plugin is a raw 0.1 component, and in `ok` mode it routes,
/// meters and prices like any other.
#[tokio::test]
async fn a_v0_1_plugin_still_routes_meters_and_prices() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("hostile")).await.unwrap();
    assert_eq!(plugin.world(), WorldVersion::V0_1);
    let req = request("demo-mini");
    let mut session = plugin.session("v01").await.unwrap();
    let decision = session.route("ok", &req, &offers()).await.unwrap().unwrap();
    assert_eq!(decision.primary.model, "demo-mini");
    let (units, quote) = session
        .meter_and_price("ok", &req, &usage(&decision), "1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].name, "request");
    assert_eq!(units[0].quantity, "1".parse().unwrap());
    assert_eq!(quote.surcharge, "0.01".parse().unwrap());
    assert_eq!(quote.surcharge.scale(), 2);
}

/// A 0.2 session builds its `request-context` from the first call's
/// configuration and request and reuses it only while both stay the same:
/// a call with another configuration is priced with that configuration.
#[tokio::test]
async fn a_v0_2_session_rebuilds_its_context_when_the_config_changes() {
    let (runtime, _) = support::runtime();
    let plugin = runtime.load(plugin_bytes("support-desk")).await.unwrap();
    let config = |fee: &str| {
        format!(
            r#"{{"ticket_fee": "{fee}", "margin_percent": "0", "cheap_model": "demo-mini", "strong_model": "demo-pro"}}"#
        )
    };
    let mut req = request("demo-pro");
    req.tags.insert("ticket".into(), "T-1".into());
    let bound: tollgate_plugin_types::Decimal = "100".parse().unwrap();
    let mut session = plugin.session("ctx").await.unwrap();
    let decision = session
        .route(&config("0.05"), &req, &offers())
        .await
        .unwrap()
        .unwrap();
    let usage = usage(&decision);
    let units = session.meter(&config("0.05"), &req, &usage).await.unwrap();
    let first = session
        .price(&config("0.05"), &req, &usage, &units, bound)
        .await
        .unwrap();
    let second = session
        .price(&config("0.25"), &req, &usage, &units, bound)
        .await
        .unwrap();
    assert_eq!(second.surcharge - first.surcharge, "0.20".parse().unwrap());
    // Back to the first configuration: the first quote again.
    let third = session
        .price(&config("0.05"), &req, &usage, &units, bound)
        .await
        .unwrap();
    assert_eq!(third, first);
}
