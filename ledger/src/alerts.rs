//! Spend-alert delivery pieces the host needs: the webhook payload shape, HMAC
//! signing and verification, and the retry schedule of the outbox state machine
//! (`Pending` → `Delivered`, or → `Dead` after the last attempt). The HTTP POST
//! itself lives in the host.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::LedgerError;
use crate::model::{Alert, Delivery};
use crate::money::Currency;

/// Header carrying `sha256=<hex HMAC of the raw body>`.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";
/// Header carrying the send time in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-tollgate-timestamp";

/// Exponential retry schedule for alert delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failed attempt; doubles after each further failure.
    pub base: chrono::Duration,
    /// Longest wait between attempts.
    pub max: chrono::Duration,
    /// Attempts after which the alert is given up (`Dead`).
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: chrono::Duration::seconds(30),
            max: chrono::Duration::hours(1),
            max_attempts: 10,
        }
    }
}

impl Backoff {
    /// Wait before the next attempt after `failed_attempts` failures (≥ 1).
    pub fn delay(&self, failed_attempts: u32) -> chrono::Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let factor = 1i32 << exp;
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The state after a failed delivery attempt at `now`.
    pub fn after_failure(&self, current: &Delivery, now: DateTime<Utc>, error: &str) -> Delivery {
        let attempts = match current {
            Delivery::Pending { attempts, .. } => attempts + 1,
            // A late failure report for an alert already delivered or dead
            // must not resurrect it.
            other => return other.clone(),
        };
        if attempts >= self.max_attempts {
            Delivery::Dead {
                attempts,
                last_error: Some(error.to_owned()),
            }
        } else {
            Delivery::Pending {
                attempts,
                next_attempt_at: now + self.delay(attempts),
                last_error: Some(error.to_owned()),
            }
        }
    }

    /// The state after a successful delivery at `now`.
    pub fn after_success(current: &Delivery, now: DateTime<Utc>) -> Delivery {
        match current {
            Delivery::Pending { attempts, .. } | Delivery::Dead { attempts, .. } => {
                Delivery::Delivered {
                    attempts: attempts + 1,
                    at: now,
                }
            }
            delivered @ Delivery::Delivered { .. } => delivered.clone(),
        }
    }
}

/// JSON body POSTed to the alert webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertPayload {
    /// Always `"spend.threshold_crossed"`.
    pub event: String,
    /// Stable across retries: receivers deduplicate on it.
    pub alert_id: u64,
    pub client_id: String,
    pub agency_id: String,
    pub period: String,
    pub threshold_pct: u32,
    pub cap: Decimal,
    pub spend: Decimal,
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
}

impl AlertPayload {
    pub fn new(alert: &Alert, currency: Currency) -> AlertPayload {
        AlertPayload {
            event: "spend.threshold_crossed".to_owned(),
            alert_id: alert.id,
            client_id: alert.client_id.clone(),
            agency_id: alert.agency_id.clone(),
            period: alert.period.to_string(),
            threshold_pct: alert.threshold_pct,
            cap: alert.cap,
            spend: alert.spend,
            currency,
            created_at: alert.created_at,
        }
    }

    /// The raw body bytes to sign and send.
    pub fn to_body(&self) -> Result<Vec<u8>, LedgerError> {
        serde_json::to_vec(self).map_err(|e| LedgerError::Render(e.to_string()))
    }
}

/// Headers to attach to a webhook POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Value of [`SIGNATURE_HEADER`]: `sha256=<lowercase hex>`.
    pub signature: String,
    /// Value of [`TIMESTAMP_HEADER`]: Unix seconds.
    pub timestamp: String,
}

impl SignedHeaders {
    pub fn pairs(&self) -> [(&'static str, &str); 2] {
        [
            (SIGNATURE_HEADER, self.signature.as_str()),
            (TIMESTAMP_HEADER, self.timestamp.as_str()),
        ]
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> Result<HmacSha256, LedgerError> {
    HmacSha256::new_from_slice(secret)
        .map_err(|e| LedgerError::InvalidArgument(format!("webhook secret: {e}")))
}

/// Signs the raw body with HMAC-SHA256 under `secret`.
pub fn sign_payload(
    secret: &[u8],
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<SignedHeaders, LedgerError> {
    let mut m = mac(secret)?;
    m.update(body);
    Ok(SignedHeaders {
        signature: format!("sha256={}", hex::encode(m.finalize().into_bytes())),
        timestamp: now.timestamp().to_string(),
    })
}

/// Checks a received signature header against the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut m) = mac(secret) else {
        return false;
    };
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_test_vector() {
        // RFC 4231 test case 2 ("Jefe").
        let h = sign_payload(
            b"Jefe",
            b"what do ya want for nothing?",
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(
            h.signature,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(h.timestamp, "1700000000");
        assert_eq!(h.pairs()[0].0, "x-tollgate-signature");
    }

    #[test]
    fn verification_rejects_tampering_and_wrong_secrets() {
        let body = br#"{"event":"spend.threshold_crossed"}"#;
        let h = sign_payload(b"s3cret", body, Utc::now()).unwrap();
        assert!(verify_signature(b"s3cret", body, &h.signature));
        assert!(!verify_signature(b"other", body, &h.signature));
        assert!(!verify_signature(b"s3cret", b"{}", &h.signature));
        assert!(!verify_signature(b"s3cret", body, "sha1=00"));
        assert!(!verify_signature(b"s3cret", body, "sha256=zz"));
    }

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let b = Backoff {
            base: chrono::Duration::seconds(10),
            max: chrono::Duration::seconds(60),
            max_attempts: 4,
        };
        let delays: Vec<i64> = (1..=5).map(|n| b.delay(n).num_seconds()).collect();
        assert_eq!(delays, vec![10, 20, 40, 60, 60]);
        assert_eq!(b.delay(1000).num_seconds(), 60);

        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let mut d = Delivery::Pending {
            attempts: 0,
            next_attempt_at: t0,
            last_error: None,
        };
        let mut nexts = Vec::new();
        for _ in 0..3 {
            d = b.after_failure(&d, t0, "503");
            match &d {
                Delivery::Pending {
                    next_attempt_at, ..
                } => nexts.push((*next_attempt_at - t0).num_seconds()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(nexts, vec![10, 20, 40]);
        d = b.after_failure(&d, t0, "timeout");
        assert_eq!(
            d,
            Delivery::Dead {
                attempts: 4,
                last_error: Some("timeout".into())
            }
        );
        // Terminal states stay put on late failure reports.
        assert_eq!(b.after_failure(&d, t0, "x"), d);
        let ok = Backoff::after_success(
            &Delivery::Pending {
                attempts: 2,
                next_attempt_at: t0,
                last_error: None,
            },
            t0,
        );
        assert_eq!(
            ok,
            Delivery::Delivered {
                attempts: 3,
                at: t0
            }
        );
        assert_eq!(Backoff::after_success(&ok, t0), ok);
    }
}
