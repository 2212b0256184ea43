//! Command-line entry points of the `tollgate` binary.
//!
//! Each subcommand parses its arguments here and calls into the library;
//! output formatting lives with the subcommand.

pub mod plugin;
pub mod plugin_build;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tollgate: an inference gateway where agency plugins route, meter and price AI traffic.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole stack locally with the demo provider and example plugins.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The sled data directory (kept across restarts).
        #[arg(long, default_value = "tollgate-data")]
        data_dir: PathBuf,
        /// Directory with prebuilt example plugin components (default: build them).
        #[arg(long)]
        plugins_dir: Option<PathBuf>,
    },
    /// Run the gateway with a configuration file.
    Serve {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write, check, run and test plugins locally, offline.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Usage, statements, payouts and settlement for a period.
    #[command(subcommand)]
    Report(report::ReportCommand),
}

/// `tollgate config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file, plugins and their configs included.
    Check {
        /// The TOML configuration.
        file: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tollgate::plugin_log=info"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Demo {
            listen,
            data_dir,
            plugins_dir,
        } => {
            init_tracing();
            runtime()?.block_on(crate::demo::run(listen, data_dir, plugins_dir))?;
            Ok(0)
        }
        Command::Serve { config } => {
            init_tracing();
            let config = crate::config::Config::load(&config)?;
            runtime()?.block_on(async move {
                let state = crate::server::build_state(&config).await?;
                let listener = crate::server::bind(config.server.listen).await?;
                tracing::info!(addr = %listener.local_addr()?, "tollgate listening");
                crate::server::serve(state, listener, crate::server::shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
            Ok(0)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = match crate::config::Config::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("✗ {e}");
                    return Ok(1);
                }
            };
            let checked = runtime()?.block_on(check_plugins(&config));
            match checked {
                Ok(()) => {
                    println!(
                        "✓ {} is valid: {} providers, {} models, {} agencies, {} clients, {} keys",
                        file.display(),
                        config.providers.len(),
                        config.models.len(),
                        config.agencies.len(),
                        config.clients.len(),
                        config.keys.len()
                    );
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("✗ {e}");
                    Ok(1)
                }
            }
        }
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Report(cmd) => report::run(cmd),
    }
}

/// Loads every client's plugin and runs its config validation, without
/// opening the ledger.
async fn check_plugins(config: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    crate::server::ledger_config(config)?;
    let runtime = crate::plugin::PluginRuntime::new(Default::default(), Default::default())
        .map_err(|e| crate::config::ConfigError {
            file: config.source.clone(),
            key: "plugins".into(),
            reason: e.to_string(),
        })?;
    for (i, client) in config.clients.iter().enumerate() {
        let err = |field: &str, reason: String| crate::config::ConfigError {
            file: config.source.clone(),
            key: format!("clients[{i}].{field}"),
            reason,
        };
        let bytes = std::fs::read(&client.plugin).map_err(|e| err("plugin", e.to_string()))?;
        let plugin = runtime
            .load(bytes)
            .await
            .map_err(|e| err("plugin", e.to_string()))?;
        match plugin.validate_config(&client.plugin_config).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(err("plugin_config", message)),
            Err(e) => return Err(err("plugin", e.to_string())),
        }
    }
    Ok(())
}
