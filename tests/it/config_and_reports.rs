//! Configuration checking (data-driven from `tests/fixtures/config`) and the
//! `tollgate report` subcommands, through the real binary.

use std::process::Command;

use chrono::Utc;
use rust_decimal::Decimal;
use tollgate_ledger::{Ledger, LedgerConfig, PluginRef, RecordFlags, Tokens, UsageRecord};

use crate::support::{plugin_path, root, tollgate_bin};

/// Each `NAME.toml` has a `NAME.expected`: `ok`, or text the error must
/// contain (the key and the reason).
#[test]
fn config_check_names_the_file_key_and_reason() {
    plugin_path("support-desk"); // the fixtures point at the built plugin
    let dir = root().join("tests/fixtures/config");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "fixtures missing");
    let mut failures = Vec::new();
    for case in &cases {
        let expected = std::fs::read_to_string(case.with_extension("expected")).unwrap();
        let expected = expected.trim();
        let out = Command::new(tollgate_bin())
            .args(["config", "check"])
            .arg(case)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let ok = if expected == "ok" {
            out.status.success() && stdout.contains("is valid")
        } else {
            out.status.code() == Some(1) && stderr.contains(expected) && stderr.contains(&name)
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {expected:?}\n  stdout: {stdout}\n  stderr: {stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The documented example configuration is valid as shipped.
    let example = root().join("examples/gateway.toml");
    let out = Command::new(tollgate_bin())
        .args(["config", "check"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn usage(n: u32, client: &str, model: &str, cost: &str, surcharge: &str) -> UsageRecord {
    let (cost, surcharge): (Decimal, Decimal) = (cost.parse().unwrap(), surcharge.parse().unwrap());
    UsageRecord {
        idempotency_key: format!("req-{client}-{n}"),
        request_id: format!("req-{client}-{n}"),
        agency_id: "agency-a".into(),
        client_id: client.into(),
        app_id: Some("web".into()),
        end_user_id: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        requested_model: model.into(),
        requested_provider: None,
        routed_model: model.into(),
        routed_provider: "mock".into(),
        tokens: Tokens {
            input: 100,
            output: 50,
            cached: 0,
        },
        provider_cost: cost,
        price_version: "v1".into(),
        surcharge,
        total_charged: cost + surcharge,
        units: [("ticket".to_owned(), Decimal::ONE)].into(),
        plugin: PluginRef {
            name: "support-desk".into(),
            content_hash: "00".repeat(32),
            version: "1.0.0".into(),
        },
        flags: RecordFlags::default(),
        reservation_id: None,
    }
}

#[test]
fn reports_render_as_tables_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(LedgerConfig {
            path: Some(dir.path().join("ledger")),
            ..LedgerConfig::default()
        })
        .unwrap();
        let mut plan = ledger.plan("shop").unwrap();
        plan.monthly_cap = Some("1.00".parse().unwrap());
        plan.alert_thresholds_pct = vec![10, 90];
        ledger.set_plan(plan).unwrap();
        for n in 0..3 {
            ledger
                .record(usage(n, "shop", "mini-ok", "0.001", "0.0502"))
                .unwrap();
        }
        ledger
            .record(usage(9, "clinic", "pro-ok", "0.01", "0.005"))
            .unwrap();
        ledger.flush().unwrap();
    }
    let data_dir = dir.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = Command::new(tollgate_bin())
            .arg("report")
            .args(args)
            .args(["--data-dir", &data_dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&["statement", "--client", "shop"]);
    assert!(table.contains("mini-ok"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["statement", "--client", "shop", "--json"])).unwrap();
    // 3 × (0.001 + 0.0502) = 0.1536, rounded to cents on its line: 0.15.
    let text = json.to_string();
    assert!(text.contains("0.15"), "{text}");
    let csv = run(&["settlement", "--csv"]);
    assert!(csv.lines().count() >= 2 && csv.contains("mock"), "{csv}");
    // 3 × 0.0512 crosses 10% of the 1.00 cap once, and never 90%.
    let alerts: serde_json::Value = serde_json::from_str(&run(&["alerts", "--json"])).unwrap();
    let alerts = alerts.as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (
            alerts[0]["client_id"].as_str(),
            alerts[0]["threshold_pct"].as_u64()
        ),
        (Some("shop"), Some(10))
    );
    let table = run(&["alerts"]);
    assert!(
        table.contains("Spend alerts (1 in all)") && table.contains("pending"),
        "{table}"
    );
    let usage = run(&["usage", "--json"]);
    assert!(
        usage.contains("mini-ok") && usage.contains("pro-ok"),
        "{usage}"
    );
    // Payouts come only from closed periods: the current one is refused
    // with a clear reason.
    let out = Command::new(tollgate_bin())
        .args([
            "report",
            "payout",
            "--agency",
            "agency-a",
            "--data-dir",
            &data_dir,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is still open"));
    let out = Command::new(tollgate_bin())
        .args([
            "report",
            "usage",
            "--period",
            "2026-13",
            "--data-dir",
            &data_dir,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--period \"2026-13\""));
}
