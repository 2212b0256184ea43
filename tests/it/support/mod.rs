//! Shared test harness: building the test plugins once, paths, and the
//! common request fixtures.

pub mod admin;
pub mod gateway;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tollgate::plugin::{PluginMetrics, PluginRuntime, RuntimeLimits};
use tollgate_plugin_types::{ModelOffer, RequestSummary};

/// Every plugin package the tests load.
pub const PLUGINS: &[&str] = &[
    "support-desk",
    "document-pipeline",
    "lead-qualifier",
    "hostile",
    "hostile-v2",
    "imports-unknown",
    "imports-http",
    "allocator",
];

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where plugins are built: a target dir of its own, because the outer
/// `cargo test` holds the lock on the main one while tests run.
pub fn plugin_target_dir() -> PathBuf {
    root().join("target").join("plugins")
}

static BUILT: OnceLock<Result<BTreeMap<String, PathBuf>, String>> = OnceLock::new();

/// The component of plugin package `name`, built on first use.
pub fn plugin_path(name: &str) -> PathBuf {
    let built = BUILT.get_or_init(|| {
        tollgate::cli::plugin_build::build_packages(&root(), PLUGINS, Some(&plugin_target_dir()))
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(paths) => paths
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not a test plugin")),
        Err(e) => panic!("building the test plugins failed: {e}"),
    }
}

/// The bytes of plugin package `name`.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(name)).expect("read plugin")
}

/// The deadline tests run plugins under. Longer than the serving default
/// because a test machine runs many tests on two cores, and a wall-clock
/// deadline must not fail honest calls there; `plugin_runtime` checks the
/// default deadline separately.
pub const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_millis(100);

/// A runtime with the test deadline and its own metrics.
pub fn runtime() -> (PluginRuntime, PluginMetrics) {
    runtime_with(RuntimeLimits {
        deadline: TEST_DEADLINE,
        ..RuntimeLimits::default()
    })
}

/// A runtime with `limits` and its own metrics.
pub fn runtime_with(limits: RuntimeLimits) -> (PluginRuntime, PluginMetrics) {
    let metrics = PluginMetrics::default();
    let runtime = PluginRuntime::new(limits, metrics.clone()).expect("runtime");
    (runtime, metrics)
}

/// The demo catalog.
pub fn offers() -> Vec<ModelOffer> {
    tollgate::demo_catalog::offers()
}

/// A chat request for `model`.
pub fn request(model: &str) -> RequestSummary {
    RequestSummary {
        requested_model: model.into(),
        estimated_prompt_tokens: 120,
        max_tokens: Some(200),
        ..Default::default()
    }
}

/// The `tollgate` binary under test.
pub fn tollgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}
