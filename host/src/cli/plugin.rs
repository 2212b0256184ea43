//! `tollgate plugin …`: write, check, run and test plugins locally, offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tollgate_plugin_types::fixture::{self, CaseInput, UsageInput};
use tollgate_plugin_types::{ModelOffer, RequestSummary};

use crate::plugin::local::{LocalRunner, total_time};
use crate::plugin::{PluginMetrics, PluginRuntime, RuntimeLimits};

/// Plugin tooling.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin project that builds and passes its own tests.
    New(NewArgs),
    /// Validate a component and print what it is.
    Check(CheckArgs),
    /// Run route, meter and price on one request, as the gateway would.
    Run(RunArgs),
    /// Run a folder of fixture cases against a plugin's Wasm build.
    Test(TestArgs),
    /// Upload a component to a gateway's admin API (and optionally bind it).
    Publish(PublishArgs),
}

/// Arguments of `plugin publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The gateway, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "TOLLGATE_SERVER")]
    pub server: String,
    /// An admin token (`tg_admin_…`).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A human label for the version.
    #[arg(long)]
    pub label: Option<String>,
    /// An upload note.
    #[arg(long)]
    pub note: Option<String>,
    /// Configuration for the upload's smoke run: a JSON file, or inline JSON.
    #[arg(long)]
    pub sample_config: Option<String>,
    /// The agency to upload to (operator tokens only).
    #[arg(long)]
    pub agency: Option<String>,
    /// Also bind the version to this client (`*` = the agency default).
    #[arg(long)]
    pub bind: Option<String>,
    /// The binding's configuration (with `--bind`): a JSON file, or inline JSON.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Print the server's JSON answers.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Crate name: lower-case letters, digits and `-`.
    pub name: String,
    /// Where to create the project (default: `./NAME`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Path to the tollgate-plugin-sdk crate (default: the one this binary was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// Arguments of `plugin check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `plugin run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The binding configuration: a JSON file, or inline JSON.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// The request summary (JSON; fields left out take defaults).
    #[arg(long)]
    pub request: PathBuf,
    /// What the request consumed (JSON; default: the prompt tokens, no output).
    #[arg(long)]
    pub usage: Option<PathBuf>,
    /// The offers the client may use (JSON list; default: the demo catalog).
    #[arg(long)]
    pub offers: Option<PathBuf>,
    /// Per-call deadline in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub deadline_ms: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `plugin test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// A plugin project (built, then its `fixtures/` run) or a fixtures folder.
    pub dir: PathBuf,
    /// Test this component instead of building the project.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Cargo target directory for the build.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// Per-call deadline in milliseconds. Fixtures check behaviour, so the
    /// default is generous: a busy machine must not fail a case over a
    /// descheduled millisecond. Pass the gateway's deadline (5) to hold the
    /// plugin to it as well.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub deadline_ms: u64,
}

/// Runs a plugin subcommand; returns the exit code.
pub fn run(cmd: PluginCommand) -> anyhow::Result<i32> {
    match cmd {
        PluginCommand::New(args) => new(args),
        PluginCommand::Check(args) => check(args),
        PluginCommand::Run(args) => run_one(args),
        PluginCommand::Test(args) => test(args),
        PluginCommand::Publish(args) => publish(args),
    }
}

fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn runner(
    path: &Path,
    measure_fuel: bool,
    deadline: Option<Duration>,
) -> anyhow::Result<LocalRunner> {
    let defaults = RuntimeLimits::default();
    let limits = RuntimeLimits {
        measure_fuel,
        deadline: deadline.unwrap_or(defaults.deadline),
        ..defaults
    };
    let runtime = PluginRuntime::new(limits, PluginMetrics::default())?;
    let bytes = read_component(path)?;
    LocalRunner::load(runtime, bytes).with_context(|| format!("{} was refused", path.display()))
}

fn new(args: NewArgs) -> anyhow::Result<i32> {
    let name = args.name;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name {name:?} is invalid: use lower-case letters, digits and `-`, starting with a letter"
        );
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = match args.sdk {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the plugin SDK is not at {} (pass --sdk PATH)",
            sdk.display()
        )
    })?;
    let crate_ident = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", &name)
            .replace("{{crate_ident}}", &crate_ident)
            .replace(
                "{{sdk_path}}",
                &sdk.display().to_string().replace('\\', "/"),
            )
            .replace("{{channel}}", TOOLCHAIN_CHANNEL)
    };
    let files: [(&str, String); 10] = [
        ("Cargo.toml", fill(include_str!("scaffold/Cargo.toml.tmpl"))),
        // The same shadow-stack size as this repository's plugins, so a new
        // plugin's working set fits the pool's resident window.
        (
            ".cargo/config.toml",
            include_str!("../../../.cargo/config.toml").into(),
        ),
        (
            "rust-toolchain.toml",
            fill(include_str!("scaffold/rust-toolchain.toml.tmpl")),
        ),
        ("README.md", fill(include_str!("scaffold/README.md.tmpl"))),
        ("src/lib.rs", fill(include_str!("scaffold/lib.rs.tmpl"))),
        (
            "tests/fixtures.rs",
            fill(include_str!("scaffold/fixtures_test.rs.tmpl")),
        ),
        (
            "fixtures/catalog.json",
            include_str!("scaffold/catalog.json").into(),
        ),
        (
            "fixtures/basic/input.json",
            include_str!("scaffold/basic_input.json").into(),
        ),
        (
            "fixtures/basic/expected.json",
            include_str!("scaffold/basic_expected.json").into(),
        ),
        (
            "fixtures/bad-config/input.json",
            include_str!("scaffold/bad_config_input.json").into(),
        ),
    ];
    for (rel, content) in files
        .iter()
        .map(|(r, c)| (*r, c.as_str()))
        .chain([(
            "fixtures/bad-config/expected.json",
            include_str!("scaffold/bad_config_expected.json"),
        )])
        .chain([(".gitignore", "/target\n")])
    {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("Created plugin `{name}` in {}", dir.display());
    println!(
        "  cd {} && cargo test                # native tests",
        dir.display()
    );
    println!(
        "  tollgate plugin test {}            # the fixtures against the Wasm build",
        dir.display()
    );
    Ok(0)
}

/// The toolchain the scaffold pins: the one this repository pins.
const TOOLCHAIN_CHANNEL: &str = "1.95.0";

#[derive(serde::Serialize)]
struct CheckReport<'a> {
    file: String,
    sha256: String,
    size_bytes: usize,
    world: &'static str,
    name: &'a str,
    version: &'a str,
    description: &'a str,
    exports: &'a [String],
    imports: &'a [String],
    compile_ms: f64,
    initial_memory_bytes: u64,
}

fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let runner = match runner(&args.file, false, None) {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"file": args.file, "valid": false, "error": format!("{e:#}")})
                );
            } else {
                eprintln!("✗ {e:#}");
            }
            return Ok(1);
        }
    };
    let p = runner.plugin();
    let report = CheckReport {
        file: args.file.display().to_string(),
        sha256: p.hash().hex(),
        size_bytes: p.size(),
        world: p.world().as_str(),
        name: &p.info().name,
        version: &p.info().version,
        description: &p.info().description,
        exports: p.exports(),
        imports: p.imports(),
        compile_ms: p.compile_time().as_secs_f64() * 1000.0,
        initial_memory_bytes: p.initial_memory_bytes(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!("✓ {} is a valid Tollgate plugin", report.file);
    println!("  plugin     {} {}", report.name, report.version);
    if !report.description.is_empty() {
        println!("  about      {}", report.description);
    }
    println!("  world      {}", report.world);
    println!("  sha256     {}", report.sha256);
    println!("  size       {} bytes", report.size_bytes);
    println!("  compile    {:.1} ms", report.compile_ms);
    let kept = crate::plugin::MEMORY_KEEP_RESIDENT as u64;
    print!(
        "  memory     {} KiB at start",
        report.initial_memory_bytes / 1024
    );
    if report.initial_memory_bytes > kept {
        // Pages past the resident window are faulted in again by every
        // request; rustc's default 1 MiB shadow stack alone puts the heap there.
        print!(
            " (over the {} KiB kept resident between requests: link with -zstack-size=131072)",
            kept / 1024
        );
    }
    println!();
    println!("  exports    {}", report.exports.join(", "));
    println!("  imports    {}", report.imports.join("\n             "));
    Ok(0)
}

fn read_config(arg: &str) -> anyhow::Result<serde_json::Value> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {arg}"))?
    } else {
        arg.to_owned()
    };
    serde_json::from_str(&text)
        .with_context(|| format!("--config {arg} is neither a JSON file nor JSON"))
}

fn publish(args: PublishArgs) -> anyhow::Result<i32> {
    let bytes = read_component(&args.file)?;
    let sample = args
        .sample_config
        .as_deref()
        .map(read_config)
        .transpose()?
        .map(|v| v.to_string());
    let base = args.server.trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let mut query: Vec<(&str, String)> = Vec::new();
        for (name, value) in [
            ("label", args.label.clone()),
            ("note", args.note.clone()),
            ("sample_config", sample),
            ("agency_id", args.agency.clone()),
        ] {
            if let Some(v) = value {
                query.push((name, v));
            }
        }
        let resp = http
            .post(format!("{base}/admin/v1/plugins"))
            .bearer_auth(&args.token)
            .header("content-type", "application/wasm")
            .query(&query)
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .with_context(|| format!("{base} did not answer with JSON (status {status})"))?;
        if !status.is_success() {
            eprintln!(
                "upload refused ({status}): {}",
                body["error"]["message"].as_str().unwrap_or("no message")
            );
            return Ok(1);
        }
        let sha = body["sha256"].as_str().unwrap_or_default().to_owned();
        if args.json {
            println!("{body:#}");
        } else {
            let verb = if status == reqwest::StatusCode::CREATED {
                "uploaded"
            } else {
                "already uploaded"
            };
            println!(
                "{verb}: {} {} ({} bytes)\n  sha256 {sha}\n  label  {}\n  smoke  {}",
                body["name"].as_str().unwrap_or_default(),
                body["version"].as_str().unwrap_or_default(),
                body["size_bytes"],
                body["label"].as_str().unwrap_or_default(),
                body["smoke"]["route"].as_str().unwrap_or("(not run)"),
            );
        }
        let Some(target) = args.bind else {
            return Ok(0);
        };
        let path = if target == "*" {
            let agency = match args.agency.clone() {
                Some(a) => a,
                None => body["agency_id"].as_str().unwrap_or_default().to_owned(),
            };
            format!("{base}/admin/v1/agencies/{agency}/binding")
        } else {
            format!("{base}/admin/v1/clients/{target}/binding")
        };
        let config = read_config(&args.config)?;
        let resp = http
            .put(path)
            .bearer_auth(&args.token)
            .json(&serde_json::json!({"plugin_sha256": sha, "config": config}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        let bound: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            eprintln!(
                "binding refused ({status}): {}",
                bound["error"]["message"].as_str().unwrap_or("no message")
            );
            return Ok(1);
        }
        if args.json {
            println!("{bound:#}");
        } else {
            println!(
                "bound to {target} (revision {})",
                bound["current"]["revision"]
            );
        }
        Ok(0)
    })
}

fn run_one(args: RunArgs) -> anyhow::Result<i32> {
    let request: RequestSummary = fixture::read_json(&args.request)?;
    let usage: UsageInput = match &args.usage {
        Some(p) => fixture::read_json(p)?,
        None => UsageInput::default(),
    };
    let offers: Vec<ModelOffer> = match &args.offers {
        Some(p) => fixture::read_json(p)?,
        None => crate::demo_catalog::offers(),
    };
    let input = CaseInput {
        config: read_config(&args.config)?,
        request,
        offers: Some(offers),
        usage,
    };
    let mut runner = runner(
        &args.file,
        true,
        Some(Duration::from_millis(args.deadline_ms)),
    )?;
    let actual = fixture::run_case(&mut runner, &input);
    let peak = runner
        .reports
        .iter()
        .map(|r| r.peak_memory_bytes)
        .max()
        .unwrap_or(0);
    let failed = matches!(actual.config, Some(Err(_)))
        || matches!(actual.route, Some(Err(_)))
        || matches!(actual.units, Some(Err(_)))
        || matches!(actual.quote, Some(Err(_)));
    if args.json {
        let out = serde_json::json!({
            "plugin": runner.plugin().info(),
            "result": actual,
            "calls": runner.reports,
            "peak_memory_bytes": peak,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(i32::from(failed));
    }
    let info = runner.plugin().info();
    println!(
        "{} {} ({})",
        info.name,
        info.version,
        runner.plugin().hash().short()
    );
    match &actual.config {
        Some(Err(msg)) => println!("config     ✗ refused: {msg}"),
        _ => println!("config     ✓ accepted"),
    }
    match &actual.route {
        Some(Ok(Ok(d))) => {
            println!("route      → {}/{}", d.primary.provider, d.primary.model);
            for f in &d.fallbacks {
                println!("           ↪ fallback {}/{}", f.provider, f.model);
            }
            match d.surcharge_bound {
                Some(b) => println!("bound      {b}"),
                None => println!("bound      (host default {})", runner_default_bound()),
            }
        }
        Some(Ok(Err(rejection))) => {
            println!(
                "route      ✗ rejected ({:?}): {}",
                rejection.kind, rejection.message
            )
        }
        Some(Err(e)) => println!("route      ✗ failed: {e}"),
        None => {}
    }
    if let Some(usage) = &actual.usage {
        println!(
            "usage      {} in / {} out / {} cached tokens, provider cost {}",
            usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.provider_cost
        );
    }
    match &actual.units {
        Some(Ok(units)) if units.is_empty() => println!("units      (none)"),
        Some(Ok(units)) => {
            let list: Vec<String> = units
                .iter()
                .map(|u| format!("{} × {}", u.name, u.quantity))
                .collect();
            println!("units      {}", list.join(", "));
        }
        Some(Err(e)) => println!("units      ✗ failed: {e}"),
        None => {}
    }
    match &actual.quote {
        Some(Ok(q)) => println!("surcharge  {} ({})", q.surcharge, q.description),
        Some(Err(e)) => println!("surcharge  ✗ failed: {e}"),
        None => {}
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["call", "time µs", "fuel", "peak memory KiB"]);
    for r in &runner.reports {
        table.add_row([
            r.capability.to_string(),
            r.micros.to_string(),
            r.fuel.map(|f| f.to_string()).unwrap_or_default(),
            (r.peak_memory_bytes / 1024).to_string(),
        ]);
    }
    println!("{table}");
    println!(
        "total      {} µs (fresh instance per phase, as in the gateway)",
        total_time(&runner.reports).as_micros()
    );
    Ok(i32::from(failed))
}

fn runner_default_bound() -> rust_decimal::Decimal {
    RuntimeLimits::default().default_surcharge_bound
}

fn test(args: TestArgs) -> anyhow::Result<i32> {
    let is_project = args.dir.join("Cargo.toml").is_file();
    let fixtures = if is_project {
        args.dir.join("fixtures")
    } else {
        args.dir.clone()
    };
    let wasm = match (&args.plugin, is_project) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            let dir = args
                .dir
                .canonicalize()
                .with_context(|| format!("cannot open {}", args.dir.display()))?;
            eprintln!("building {} for wasm32-wasip2 …", dir.display());
            super::plugin_build::build(&dir, args.target_dir.as_deref())?
        }
        (None, false) => bail!(
            "{} is not a plugin project (no Cargo.toml): pass --plugin FILE.wasm",
            args.dir.display()
        ),
    };
    let cases = fixture::load_dir(&fixtures)?;
    let mut runner = runner(&wasm, false, Some(Duration::from_millis(args.deadline_ms)))?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["case", "result", "detail"]);
    let mut failed = 0;
    for case in &cases {
        let actual = fixture::run_case(&mut runner, &case.input);
        let diffs = fixture::compare(&case.expected, &actual);
        if diffs.is_empty() {
            table.add_row([case.name.as_str(), "pass", ""]);
        } else {
            failed += 1;
            table.add_row([case.name.as_str(), "FAIL", &diffs.join("\n")]);
        }
    }
    println!("{} ({})", wasm.display(), runner.plugin().hash().short());
    println!("{table}");
    println!("{} passed, {} failed", cases.len() - failed, failed);
    Ok(i32::from(failed > 0))
}
