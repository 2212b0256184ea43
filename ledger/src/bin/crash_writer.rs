//! Crash-test helper (not part of the gateway): writes usage records, reversals,
//! retries and top-ups into a ledger from several threads and prints
//! `ACK <idempotency key>` for every write the ledger acknowledged, until it is
//! killed. `tests/crash.rs` SIGKILLs it mid-stream and checks the reopened ledger.
//!
//! Usage: `ledger-crash-writer <dir> <sync|batched> <round> <threads>`

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use rust_decimal::Decimal;
use tollgate_ledger::{
    ClientPlan, Durability, Ledger, LedgerConfig, PluginRef, RecordFlags, Tokens, UsageRecord,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn record(key: &str, client: &str, i: u64) -> UsageRecord {
    let now = Utc::now();
    let cost = Decimal::new(i64::try_from(i % 997).unwrap_or(0) + 1, 4);
    let surcharge = Decimal::new(i64::try_from(i % 13).unwrap_or(0), 3);
    UsageRecord {
        idempotency_key: key.to_owned(),
        request_id: format!("req-{key}"),
        agency_id: "agency".into(),
        client_id: client.to_owned(),
        app_id: None,
        end_user_id: None,
        started_at: now,
        finished_at: now,
        requested_model: "m".into(),
        requested_provider: None,
        routed_model: if i.is_multiple_of(2) { "m-a" } else { "m-b" }.into(),
        routed_provider: "p".into(),
        tokens: Tokens {
            input: i % 100,
            output: i % 50,
            cached: 0,
        },
        provider_cost: cost,
        price_version: "v1".into(),
        surcharge,
        total_charged: cost + surcharge,
        units: BTreeMap::from([("u".to_owned(), Decimal::ONE)]),
        plugin: PluginRef::default(),
        flags: RecordFlags::default(),
        reservation_id: None,
    }
}

fn ack(out: &Mutex<std::io::Stdout>, key: &str) -> Result<(), BoxError> {
    let out = out.lock().map_err(|_| "stdout lock poisoned")?;
    let mut o = out.lock();
    writeln!(o, "ACK {key}")?;
    o.flush()?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, mode, round, threads] = args.as_slice() else {
        return Err("usage: ledger-crash-writer <dir> <sync|batched> <round> <threads>".into());
    };
    let durability = match mode.as_str() {
        "sync" => Durability::Sync,
        "batched" => Durability::Batched {
            flush_every: std::time::Duration::from_millis(20),
        },
        other => return Err(format!("unknown mode {other}").into()),
    };
    let threads: usize = threads.parse()?;
    let ledger = Ledger::open(LedgerConfig {
        path: Some(dir.into()),
        durability,
        ..LedgerConfig::default()
    })?;
    for c in 0..threads {
        let mut plan = ClientPlan::default_for(&format!("c{c}"));
        plan.monthly_cap = Some(Decimal::new(5, 0));
        plan.included_per_period = Decimal::new(1, 1);
        ledger.set_plan(plan)?;
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let ledger = ledger.clone();
            let out = out.clone();
            let round = round.clone();
            std::thread::spawn(move || -> Result<(), BoxError> {
                let client = format!("c{th}");
                for i in 0u64.. {
                    let key = format!("r{round}-t{th}-{i}");
                    ledger.record(record(&key, &client, i))?;
                    ack(&out, &key)?;
                    if i % 7 == 3 {
                        // A retry of an acknowledged write must stay a duplicate.
                        let again = ledger.record(record(&key, &client, i))?;
                        if !again.is_duplicate() {
                            return Err(format!("retry of {key} was recorded twice").into());
                        }
                    }
                    if i % 10 == 5 {
                        ledger.reverse(&key, "crash test")?;
                        ack(&out, &format!("reversal:{key}"))?;
                    }
                    if i.is_multiple_of(25) {
                        let tk = format!("top-{key}");
                        ledger.top_up(&client, Decimal::new(3, 1), &tk, None)?;
                        ack(&out, &format!("TOPUP {tk}"))?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "writer thread panicked")??;
    }
    Ok(())
}
