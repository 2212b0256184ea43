//! `tollgate report …`: usage, client statements, agency payouts and
//! provider settlement for a period, from the ledger's running aggregates.
//!
//! Reads the sled data directory directly, which only one process may hold:
//! run it while the gateway is stopped (the admin API serves the same
//! reports from a running gateway).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tollgate_ledger::{Format, Ledger, LedgerConfig, Period};

/// Which report.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Usage by client, model and unit.
    Usage {
        /// Only this client.
        #[arg(long)]
        client: Option<String>,
        /// Common options.
        #[command(flatten)]
        common: Common,
    },
    /// What a client pays for a period.
    Statement {
        /// The client.
        #[arg(long)]
        client: String,
        /// Common options.
        #[command(flatten)]
        common: Common,
    },
    /// What an agency earned in a closed period.
    Payout {
        /// The agency.
        #[arg(long)]
        agency: String,
        /// Common options.
        #[command(flatten)]
        common: Common,
    },
    /// What is owed to each upstream provider.
    Settlement {
        /// Common options.
        #[command(flatten)]
        common: Common,
    },
    /// Spend alerts (thresholds crossed) and their webhook delivery state.
    Alerts {
        /// Common options (the period filters alerts by period).
        #[command(flatten)]
        common: Common,
    },
}

/// Options every report takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The period, `YYYY-MM` (default: the current one).
    #[arg(long)]
    period: Option<String>,
    /// The gateway's configuration file (for the data dir, currency and timezone).
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory, with default settings (USD, UTC).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV instead of a table.
    #[arg(long)]
    csv: bool,
}

impl Common {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else {
            Format::Table
        }
    }

    fn ledger(&self) -> anyhow::Result<Ledger> {
        let config = match (&self.config, &self.data_dir) {
            (Some(file), _) => {
                let config = crate::config::Config::load(file)?;
                crate::server::ledger_config(&config)?
            }
            (None, dir) => LedgerConfig {
                path: Some(
                    dir.clone()
                        .unwrap_or_else(|| PathBuf::from("tollgate-data"))
                        .join("ledger"),
                ),
                ..LedgerConfig::default()
            },
        };
        let path = config.path.clone().unwrap_or_default();
        anyhow::ensure!(
            path.exists(),
            "no ledger at {} (pass --data-dir or --config)",
            path.display()
        );
        Ledger::open(config).with_context(|| {
            format!(
                "cannot open the ledger at {} (is a gateway running on it?)",
                path.display()
            )
        })
    }

    fn period(&self, ledger: &Ledger) -> anyhow::Result<Period> {
        match &self.period {
            Some(p) => p.parse().with_context(|| format!("--period {p:?}")),
            None => Ok(ledger.current_period()),
        }
    }
}

/// Runs a report subcommand, printing it.
pub fn run(cmd: ReportCommand) -> anyhow::Result<i32> {
    let text = match &cmd {
        ReportCommand::Usage { client, common } => {
            let ledger = common.ledger()?;
            let report = ledger.usage_report(common.period(&ledger)?, client.as_deref())?;
            tollgate_ledger::render(&report, common.format())?
        }
        ReportCommand::Statement { client, common } => {
            let ledger = common.ledger()?;
            let report = ledger.statement(client, common.period(&ledger)?)?;
            tollgate_ledger::render(&report, common.format())?
        }
        ReportCommand::Payout { agency, common } => {
            let ledger = common.ledger()?;
            let report = ledger.payout(agency, common.period(&ledger)?)?;
            tollgate_ledger::render(&report, common.format())?
        }
        ReportCommand::Settlement { common } => {
            let ledger = common.ledger()?;
            let report = ledger.settlement(common.period(&ledger)?)?;
            tollgate_ledger::render(&report, common.format())?
        }
        ReportCommand::Alerts { common } => {
            let ledger = common.ledger()?;
            let period = common
                .period
                .as_ref()
                .map(|_| common.period(&ledger))
                .transpose()?;
            let alerts: Vec<_> = ledger
                .alerts()?
                .into_iter()
                .filter(|a| period.is_none_or(|p| a.period == p))
                .collect();
            render_alerts(&alerts, common.format())?
        }
    };
    print!("{text}");
    Ok(0)
}

fn delivery(alert: &tollgate_ledger::Alert) -> (String, u32, String) {
    match &alert.delivery {
        tollgate_ledger::Delivery::Pending {
            attempts,
            last_error,
            ..
        } => (
            "pending".into(),
            *attempts,
            last_error.clone().unwrap_or_default(),
        ),
        tollgate_ledger::Delivery::Delivered { attempts, .. } => {
            ("delivered".into(), *attempts, String::new())
        }
        tollgate_ledger::Delivery::Dead {
            attempts,
            last_error,
        } => (
            "gave up".into(),
            *attempts,
            last_error.clone().unwrap_or_default(),
        ),
    }
}

fn render_alerts(alerts: &[tollgate_ledger::Alert], format: Format) -> anyhow::Result<String> {
    let header = [
        "alert",
        "period",
        "agency",
        "client",
        "threshold %",
        "cap",
        "spend",
        "created",
        "delivery",
        "attempts",
        "last error",
    ];
    let rows: Vec<[String; 11]> = alerts
        .iter()
        .map(|a| {
            let (state, attempts, error) = delivery(a);
            [
                a.id.to_string(),
                a.period.to_string(),
                a.agency_id.clone(),
                a.client_id.clone(),
                a.threshold_pct.to_string(),
                a.cap.to_string(),
                a.spend.to_string(),
                a.created_at.to_rfc3339(),
                state,
                attempts.to_string(),
                error,
            ]
        })
        .collect();
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(alerts)?),
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(header)?;
            for row in &rows {
                writer.write_record(row)?;
            }
            String::from_utf8(writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?
        }
        Format::Table => {
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header(header);
            for row in rows {
                table.add_row(row);
            }
            format!("Spend alerts ({} in all)\n{table}\n", alerts.len())
        }
    })
}
