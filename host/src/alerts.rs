//! Delivers spend alerts: HMAC-signed webhook POSTs to each agency's URL,
//! with retries on the ledger's backoff schedule.
//!
//! The ledger writes an alert atomically with the usage record that crossed
//! a threshold, into a durable outbox; this task drains the outbox, so an
//! alert survives a crash and is retried until delivered or given up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tollgate_ledger::{AlertPayload, Ledger};

/// Where an agency receives alerts.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The URL POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key.
    pub secret: Vec<u8>,
}

/// Most alerts sent per poll.
const BATCH: usize = 32;

/// Starts the delivery loop; it polls every `interval` until the runtime stops.
pub fn spawn(
    ledger: Ledger,
    webhooks: Arc<arc_swap::ArcSwap<HashMap<String, Webhook>>>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; alerts stay in the outbox");
                return;
            }
        };
        loop {
            // The admin API changes webhooks at run time.
            let current = webhooks.load_full();
            deliver_pending(&ledger, &current, &client).await;
            tokio::time::sleep(interval).await;
        }
    })
}

async fn deliver_pending(
    ledger: &Ledger,
    webhooks: &HashMap<String, Webhook>,
    client: &reqwest::Client,
) {
    // Alerts of agencies without a webhook stay pending (they are read
    // through the reports); filter them out before taking a batch, or they
    // would crowd out everyone else's.
    let pending = match ledger.pending_alerts(Utc::now(), usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the alert outbox");
            return;
        }
    };
    let deliverable = pending
        .into_iter()
        .filter_map(|alert| webhooks.get(&alert.agency_id).map(|hook| (alert, hook)))
        .take(BATCH);
    for (alert, hook) in deliverable {
        let outcome = post(ledger, client, hook, &alert).await;
        let marked = match outcome {
            Ok(()) => ledger.mark_delivered(alert.id).map(|_| ()),
            Err(error) => {
                tracing::info!(alert = alert.id, %error, "alert delivery failed; will retry");
                ledger.mark_attempt_failed(alert.id, &error).map(|_| ())
            }
        };
        if let Err(e) = marked {
            tracing::warn!(alert = alert.id, error = %e, "cannot update the alert outbox");
        }
    }
}

async fn post(
    ledger: &Ledger,
    client: &reqwest::Client,
    hook: &Webhook,
    alert: &tollgate_ledger::Alert,
) -> Result<(), String> {
    let body = AlertPayload::new(alert, ledger.currency())
        .to_body()
        .map_err(|e| e.to_string())?;
    let signed = tollgate_ledger::sign_payload(&hook.secret, &body, Utc::now())
        .map_err(|e| e.to_string())?;
    let response = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header(tollgate_ledger::alerts::SIGNATURE_HEADER, signed.signature)
        .header(tollgate_ledger::alerts::TIMESTAMP_HEADER, signed.timestamp)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered HTTP {}", response.status()))
    }
}
