//! Runs this plugin's fixture cases natively; `tollgate plugin test` runs the
//! same folder against the built Wasm.

#[test]
fn fixture_cases_pass_natively() {
    tollgate_plugin_sdk::testing::run_fixtures::<lead_qualifier::LeadQualifier>(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures"
    ));
}
