//! The `tollgate plugin` subcommands, run as a plugin developer would:
//! the real binary as a subprocess against real components.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{self, plugin_path, tollgate_bin};

fn tollgate(args: &[&str]) -> Output {
    Command::new(tollgate_bin())
        .args(args)
        .output()
        .expect("run tollgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// `tollgate plugin test DIR --plugin WASM [EXTRA…]`.
fn plugin_test(dir: &Path, wasm: &Path, extra: &[&str]) -> Output {
    let (dir, wasm) = (path_arg(dir), path_arg(wasm));
    let mut args = vec!["plugin", "test", &dir, "--plugin", &wasm];
    args.extend_from_slice(extra);
    tollgate(&args)
}

/// The initial linear memory `plugin check --json` reports for `wasm`.
fn initial_memory(wasm: &Path) -> u64 {
    let out = tollgate(&["plugin", "check", "--json", &path_arg(wasm)]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["initial_memory_bytes"].as_u64().unwrap()
}

#[test]
fn check_prints_world_exports_imports_size_and_compile_time() {
    let wasm = plugin_path("support-desk");
    let out = tollgate(&["plugin", "check", &path_arg(&wasm)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for expected in [
        "is a valid Tollgate plugin",
        "support-desk 1.0.0",
        "world      tollgate:plugin@0.2",
        "exports    tollgate:plugin/plugin@0.2.0",
        "tollgate:plugin/types@0.2.0",
        "compile ",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    let out = tollgate(&["plugin", "check", "--json", &path_arg(&wasm)]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = std::fs::metadata(&wasm).unwrap().len();
    assert_eq!(report["size_bytes"], size);
    assert_eq!(report["name"], "support-desk");
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
}

/// Each example plugin starts inside the pool's resident window, so reusing
/// a slot costs no page faults. This fails if the plugins lose the build
/// setting that shrinks their shadow stack (`.cargo/config.toml`).
#[test]
fn example_plugins_start_with_memory_inside_the_resident_window() {
    for name in ["support-desk", "document-pipeline", "lead-qualifier"] {
        let wasm = plugin_path(name);
        let initial = initial_memory(&wasm);
        assert!(
            initial > 0 && initial <= tollgate::plugin::MEMORY_KEEP_RESIDENT as u64,
            "{name} starts with {initial} bytes of linear memory"
        );
        let out = tollgate(&["plugin", "check", &path_arg(&wasm)]);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("memory     {} KiB at start\n", initial / 1024)),
            "{stdout}"
        );
    }
}

#[test]
fn check_refuses_a_bad_component_and_says_why() {
    let out = tollgate(&[
        "plugin",
        "check",
        &path_arg(&plugin_path("imports-unknown")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("imports `tollgate:evil/backdoor`"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let out = tollgate(&["plugin", "check", &path_arg(&not_wasm)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a WebAssembly component"));

    let out = tollgate(&["plugin", "check", "/definitely/not/here.wasm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /definitely/not/here.wasm"));
}

#[test]
fn run_shows_route_units_surcharge_and_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("request.json");
    std::fs::write(
        &request,
        r#"{"requested_model": "demo-mini", "estimated_prompt_tokens": 2400, "max_tokens": 800}"#,
    )
    .unwrap();
    let usage = dir.path().join("usage.json");
    std::fs::write(&usage, r#"{"output_tokens": 600}"#).unwrap();
    let config = r#"{"page_fee": "0.02", "document_fee": "0.10", "standard_model": "demo-mini", "long_context_model": "demo-long"}"#;
    let wasm = path_arg(&plugin_path("document-pipeline"));
    let base = ["plugin", "run", &wasm, "--config", config, "--request"];
    let mut args: Vec<&str> = base.to_vec();
    let (request, usage) = (path_arg(&request), path_arg(&usage));
    args.extend([request.as_str(), "--usage", usage.as_str()]);

    let out = tollgate(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("route      → demo/demo-mini"), "{stdout}");
    assert!(stdout.contains("document × 1, page × 5"), "{stdout}");
    assert!(stdout.contains("surcharge  0.20"), "{stdout}");
    assert!(stdout.contains("fuel"), "{stdout}");

    args.push("--json");
    let out = tollgate(&args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"]["quote"]["Ok"]["surcharge"], "0.20");
    assert_eq!(
        report["result"]["route"]["Ok"]["Ok"]["primary"]["model"],
        "demo-mini"
    );
    let calls = report["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "validate_config, route, meter, price");
    assert!(calls.iter().all(|c| c["fuel"].as_u64().unwrap_or(0) > 0));
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn test_passes_every_example_plugins_fixtures_against_its_wasm() {
    for name in ["support-desk", "document-pipeline", "lead-qualifier"] {
        let project = support::root().join("plugins").join(name);
        let out = plugin_test(&project, &plugin_path(name), &[]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{name}:\n{stdout}{}",
            text(&out.stderr)
        );
        let cases = std::fs::read_dir(project.join("fixtures"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        assert!(
            stdout.contains(&format!("{cases} passed, 0 failed")),
            "{name}:\n{stdout}"
        );
    }
}

#[test]
fn test_reports_a_failing_case_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = support::root().join("plugins/lead-qualifier/fixtures");
    for entry in walk(&fixtures) {
        let rel = entry.strip_prefix(&fixtures).unwrap();
        let dest = dir.path().join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
    let broken = dir
        .path()
        .join("second-tier-after-first-hundred/expected.json");
    std::fs::write(&broken, r#"{"surcharge": "0.50"}"#).unwrap();
    let out = plugin_test(dir.path(), &plugin_path("lead-qualifier"), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("second-tier-after-first-hundred"),
        "{stdout}"
    );
    assert!(stdout.contains("surcharge 0.30, expected 0.50"), "{stdout}");
    assert!(stdout.contains("5 passed, 1 failed"), "{stdout}");

    // The deadline is the caller's to set, within bounds.
    let out = plugin_test(
        dir.path(),
        &plugin_path("lead-qualifier"),
        &["--deadline-ms", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--deadline-ms"),
        "{}",
        text(&out.stderr)
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn new_scaffolds_a_plugin_that_builds_and_passes_its_own_tests() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("acme-fee");
    let out = tollgate(&["plugin", "new", "acme-fee", "--dir", &path_arg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(project.join("fixtures/basic/expected.json").is_file());

    // Its own native tests pass out of the box.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = support::plugin_target_dir();
    let out = Command::new(&cargo)
        .args(["test", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("fixture_cases_pass_natively ... ok"));

    // And the same fixtures pass against its Wasm build.
    let out = tollgate(&[
        "plugin",
        "test",
        &path_arg(&project),
        "--target-dir",
        &path_arg(&target_dir),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");

    // It is built with the same small shadow stack as the examples.
    let initial = initial_memory(&target_dir.join("wasm32-wasip2/plugin/acme_fee.wasm"));
    assert!(
        initial <= tollgate::plugin::MEMORY_KEEP_RESIDENT as u64,
        "the scaffold starts with {initial} bytes of linear memory"
    );

    // Names that are not crate names are refused before anything is written.
    let out = tollgate(&[
        "plugin",
        "new",
        "Bad Name",
        "--dir",
        &path_arg(&dir.path().join("x")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("plugin name \"Bad Name\" is invalid"));
    assert!(!dir.path().join("x").exists());
}
