//! Crash safety: a child process writes through the ledger and is SIGKILLed
//! mid-stream, several times over the same database. After reopening, in `sync`
//! mode every acknowledged write is present; in both modes the running
//! aggregates equal the aggregates recomputed from the records, balances equal
//! their entries, and no idempotency key is counted twice.
//!
//! SIGKILL loses the process, not the OS page cache, so this proves atomicity
//! and recovery of whatever sled had written; losing power is what the fsync in
//! `sync` mode additionally protects against (see LEDGER.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic on setup failure

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rust_decimal::Decimal;
use tollgate_ledger::{
    Durability, Ledger, LedgerConfig, PluginRef, RecordFlags, RecordQuery, Tokens, UsageRecord,
};

const ROUNDS: usize = 3;
const THREADS: &str = "6";

/// Runs the writer until it has acknowledged at least `acks` writes, then SIGKILLs it.
fn run_and_kill(dir: &std::path::Path, mode: &str, round: usize, acks: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledger-crash-writer"))
        .args([dir.to_str().unwrap(), mode, &round.to_string(), THREADS])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < acks {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => acked.push(line.strip_prefix("ACK ").unwrap().to_owned()),
            Err(e) => {
                let _ = child.kill();
                panic!("writer stopped early after {} acks: {e:?}", acked.len());
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // Lines already in the pipe were acknowledged before the kill too.
    reader.join().unwrap();
    acked.extend(
        rx.try_iter()
            .map(|l| l.strip_prefix("ACK ").unwrap().to_owned()),
    );
    acked
}

fn reopen(dir: &std::path::Path) -> Ledger {
    Ledger::open(LedgerConfig {
        path: Some(dir.to_path_buf()),
        durability: Durability::Sync,
        ..LedgerConfig::default()
    })
    .unwrap()
}

/// A usage record under `key` (content is irrelevant to idempotency).
fn resend(key: &str) -> UsageRecord {
    // Keys look like r{round}-t{thread}-{i}; the writer's client is c{thread}.
    let client = key.split('-').nth(1).unwrap().replace('t', "c");
    let now = chrono::Utc::now();
    UsageRecord {
        idempotency_key: key.to_owned(),
        request_id: key.to_owned(),
        agency_id: "agency".into(),
        client_id: client,
        app_id: None,
        end_user_id: None,
        started_at: now,
        finished_at: now,
        requested_model: "m".into(),
        requested_provider: None,
        routed_model: "m-a".into(),
        routed_provider: "p".into(),
        tokens: Tokens::default(),
        provider_cost: Decimal::ONE,
        price_version: "v1".into(),
        surcharge: Decimal::ZERO,
        total_charged: Decimal::ONE,
        units: Default::default(),
        plugin: PluginRef::default(),
        flags: RecordFlags::default(),
        reservation_id: None,
    }
}

fn crash_repeatedly(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked = Vec::new();
    for round in 0..ROUNDS {
        let acked = run_and_kill(dir.path(), mode, round, 400);
        assert!(acked.len() >= 400);
        all_acked.extend(acked);

        let l = reopen(dir.path());
        let v = l.verify().unwrap();
        assert!(v.is_consistent(), "{mode} round {round}: {:#?}", v.problems);
        assert!(v.records > 0);
        drop(l);
    }

    let l = reopen(dir.path());
    let mut present = std::collections::HashSet::new();
    let mut q = RecordQuery {
        limit: 1000,
        ..RecordQuery::default()
    };
    loop {
        let page = l.records(&q).unwrap();
        present.extend(page.items.iter().map(|r| r.record.idempotency_key.clone()));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    let acked_records: Vec<&String> = all_acked
        .iter()
        .filter(|k| !k.starts_with("TOPUP "))
        .collect();
    let missing: Vec<_> = acked_records
        .iter()
        .filter(|k| !present.contains(k.as_str()))
        .collect();
    eprintln!(
        "{mode}: {} acknowledged record writes, {} records present, {} acknowledged but missing",
        acked_records.len(),
        present.len(),
        missing.len()
    );
    if mode == "sync" {
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
        let topups: Vec<_> = all_acked
            .iter()
            .filter_map(|k| k.strip_prefix("TOPUP "))
            .collect();
        assert!(!topups.is_empty());
        for tk in topups {
            let bucket_id = format!("topup:{tk}");
            // Top-up keys look like top-r{round}-t{thread}-{i}.
            let client = tk.split('-').nth(2).unwrap().replace('t', "c");
            let b = l.balance(&client).unwrap();
            assert!(
                b.buckets.iter().any(|bk| bk.id == bucket_id),
                "acknowledged top-up {tk} lost"
            );
        }
    } else {
        // Batched mode may lose the last unflushed window, never more than that
        // and never part of a group.
        assert!(missing.len() < acked_records.len());
    }
    // Re-sending acknowledged writes that survived counts nothing twice.
    let before = l.verify().unwrap();
    let mut resent = 0;
    for key in acked_records
        .iter()
        .filter(|k| !k.starts_with("reversal:") && present.contains(k.as_str()))
        .take(300)
    {
        assert!(l.record(resend(key)).unwrap().is_duplicate(), "{key}");
        resent += 1;
    }
    assert!(resent > 0);
    let after = l.verify().unwrap();
    assert_eq!(before.records, after.records);
    assert!(after.is_consistent(), "{:#?}", after.problems);
}

#[test]
fn sync_mode_keeps_every_acknowledged_write_across_sigkill() {
    crash_repeatedly("sync");
}

#[test]
fn batched_mode_recovers_consistent_aggregates_across_sigkill() {
    crash_repeatedly("batched");
}
