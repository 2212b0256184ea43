//! Command-line entry points of the `tollgate` binary.
//!
//! Each subcommand parses its arguments here and calls into the library;
//! output formatting lives with the subcommand.

pub mod plugin;
pub mod plugin_build;

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
    /// Write, check, run and test plugins locally, offline.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
    }
}
