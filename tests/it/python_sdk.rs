//! The official `openai` Python SDK, unmodified, against a real gateway:
//! runs `tests/python` with pytest. The SDK lives in `target/pyenv` (made
//! here on first run, or by `.ci/run`); `TOLLGATE_PYTHON` may point at
//! another interpreter.

use std::path::PathBuf;
use std::process::Command;

use crate::support::gateway::{self, ClientSpec};
use crate::support::root;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join("target/pyenv/bin/python");
    if !venv.is_file() {
        // A fresh checkout: `cargo test` alone must work, so make the venv
        // with the pinned SDK the way `.ci/run` does.
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(root().join("target/pyenv"))
            .status()
            .expect("python3 is needed for the SDK test");
        assert!(made.success(), "python3 -m venv target/pyenv failed");
        let installed = Command::new(root().join("target/pyenv/bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root().join("tests/python/requirements.txt"))
            .status()
            .expect("pip in target/pyenv");
        assert!(
            installed.success(),
            "installing tests/python/requirements.txt into target/pyenv failed"
        );
    }
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_unmodified() {
    let support = r#"{"ticket_fee": "0.05", "margin_percent": "20", "cheap_model": "mini-ok", "strong_model": "pro-ok"}"#;
    let leads = r#"{"model": "mini-ok", "tier1_leads": 1, "tier1_rate": "0.5", "tier2_rate": "0.3", "monthly_lead_cap": 0}"#;
    let gw = gateway::start(vec![
        ClientSpec::new("acme", "support-desk", support),
        ClientSpec::new("crm", "lead-qualifier", leads),
    ])
    .await;
    let python = python();
    let base_url = format!("{}/v1", gw.url);
    let (key, leads_key) = (gw.key("acme").to_owned(), gw.key("crm").to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(root().join("tests/python"))
            .env("TOLLGATE_BASE_URL", base_url)
            .env("TOLLGATE_API_KEY", key)
            .env("TOLLGATE_LEADS_KEY", leads_key)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (run .ci/run once to install the SDK)",
                    python.display()
                )
            })
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pytest failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("6 passed"), "{stdout}");
    gw.stop().await;
}
