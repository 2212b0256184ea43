//! Rendering for the `tollgate report` subcommands (`usage`, `statement`,
//! `payout`, `settlement`): a readable table by default, JSON or CSV on request.
//! The host wires the CLI; this module only turns report values into text.

use std::str::FromStr;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::error::LedgerError;
use crate::statement::{Payout, Settlement, Statement, UsageReport};

/// Output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

impl FromStr for Format {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "text" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(LedgerError::InvalidArgument(format!(
                "unknown report format {other:?} (table, json, csv)"
            ))),
        }
    }
}

/// A report that can be rendered in every [`Format`].
pub trait Report: Serialize {
    /// Title line shown above the table.
    fn title(&self) -> String;
    /// Column names shared by the table and the CSV.
    fn header(&self) -> Vec<&'static str>;
    /// Data rows, then summary rows (the first cell names the row).
    fn rows(&self) -> Vec<Vec<String>>;
}

/// Renders a report. JSON is the serde form; CSV has a header row; the table
/// is preceded by a title line.
pub fn render<R: Report>(report: &R, format: Format) -> Result<String, LedgerError> {
    match format {
        Format::Json => serde_json::to_string_pretty(report)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| LedgerError::Render(e.to_string())),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let err = |e: csv::Error| LedgerError::Render(e.to_string());
            w.write_record(report.header()).map_err(err)?;
            for row in report.rows() {
                w.write_record(&row).map_err(err)?;
            }
            let bytes = w
                .into_inner()
                .map_err(|e| LedgerError::Render(e.to_string()))?;
            String::from_utf8(bytes).map_err(|e| LedgerError::Render(e.to_string()))
        }
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(report.header());
            for row in report.rows() {
                t.add_row(row);
            }
            Ok(format!("{}\n{t}\n", report.title()))
        }
    }
}

fn summary(kind: &str, width: usize, value: String) -> Vec<String> {
    let mut row = vec![kind.to_owned()];
    row.resize(width - 1, String::new());
    row.push(value);
    row
}

impl Report for Statement {
    fn title(&self) -> String {
        format!(
            "Statement for client {} — {} ({})",
            self.client_id, self.period, self.currency
        )
    }

    fn header(&self) -> Vec<&'static str> {
        vec![
            "kind",
            "name",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "quantity",
            "provider_cost",
            "surcharge",
            "total",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for l in &self.lines {
            rows.push(vec![
                "model".into(),
                l.model.clone(),
                l.requests.to_string(),
                l.input_tokens.to_string(),
                l.output_tokens.to_string(),
                l.cached_tokens.to_string(),
                String::new(),
                l.provider_cost.to_string(),
                l.surcharge.to_string(),
                l.total.to_string(),
            ]);
        }
        for u in &self.units {
            rows.push(vec![
                "unit".into(),
                u.unit.clone(),
                u.requests.to_string(),
                String::new(),
                String::new(),
                String::new(),
                u.quantity.normalize().to_string(),
                u.provider_cost.to_string(),
                u.surcharge.to_string(),
                u.total.to_string(),
            ]);
        }
        let w = self.header().len();
        let mut total = summary("total", w, self.total.to_string());
        total[2] = self.requests.to_string();
        total[7] = self.provider_cost.to_string();
        total[8] = self.surcharge.to_string();
        rows.push(total);
        rows.push(summary("exact_total", w, self.exact_total.to_string()));
        rows.push(summary(
            "rounding_difference",
            w,
            self.rounding_difference.to_string(),
        ));
        let mut unbilled = summary("unbilled_requests", w, String::new());
        unbilled[2] = self.unbilled_requests.to_string();
        rows.push(unbilled);
        rows.push(summary(
            "credits_applied",
            w,
            self.credits_applied.to_string(),
        ));
        rows.push(summary("amount_due", w, self.amount_due.to_string()));
        rows
    }
}

impl Report for Payout {
    fn title(&self) -> String {
        format!(
            "Payout for agency {} — {} ({}, platform fee {}%)",
            self.agency_id, self.period, self.currency, self.platform_fee_pct
        )
    }

    fn header(&self) -> Vec<&'static str> {
        vec!["kind", "client", "requests", "amount"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| {
                vec![
                    "client".into(),
                    l.client_id.clone(),
                    l.requests.to_string(),
                    l.surcharge.to_string(),
                ]
            })
            .collect();
        rows.push(summary("earnings", 4, self.earnings.to_string()));
        rows.push(summary("platform_fee", 4, self.platform_fee.to_string()));
        rows.push(summary("payout", 4, self.payout.to_string()));
        rows
    }
}

impl Report for Settlement {
    fn title(&self) -> String {
        format!("Provider settlement — {} ({})", self.period, self.currency)
    }

    /// `absorbed` (provider cost charged to no client) is part of `provider_cost`.
    fn header(&self) -> Vec<&'static str> {
        vec![
            "kind",
            "provider",
            "requests",
            "absorbed_requests",
            "absorbed",
            "provider_cost",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| {
                vec![
                    "provider".into(),
                    l.provider.clone(),
                    l.requests.to_string(),
                    l.absorbed_requests.to_string(),
                    l.absorbed.to_string(),
                    l.provider_cost.to_string(),
                ]
            })
            .collect();
        let mut total = summary("total", 6, self.total.to_string());
        total[4] = self.absorbed.to_string();
        rows.push(total);
        let mut exact = summary("exact_total", 6, self.exact_total.to_string());
        exact[4] = self.exact_absorbed.to_string();
        rows.push(exact);
        rows.push(summary(
            "rounding_difference",
            6,
            self.rounding_difference.to_string(),
        ));
        rows
    }
}

impl Report for UsageReport {
    fn title(&self) -> String {
        match &self.client_id {
            Some(c) => format!("Usage of client {c} — {} ({})", self.period, self.currency),
            None => format!("Usage — {} ({})", self.period, self.currency),
        }
    }

    fn header(&self) -> Vec<&'static str> {
        vec![
            "kind",
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "provider_cost",
            "surcharge",
            "total",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| {
                vec![
                    "model".into(),
                    l.model.clone(),
                    l.requests.to_string(),
                    l.input_tokens.to_string(),
                    l.output_tokens.to_string(),
                    l.cached_tokens.to_string(),
                    l.provider_cost.to_string(),
                    l.surcharge.to_string(),
                    l.total.to_string(),
                ]
            })
            .collect();
        let mut total = summary("total", 9, self.total.to_string());
        total[2] = self.requests.to_string();
        rows.push(total);
        rows
    }
}
