//! Ledger benchmarks (a plain bench binary; run with
//! `cargo bench -p tollgate-ledger --bench ledger`). Measures, with medians over
//! several runs and baselines measured in the same run:
//! - ingest with running aggregates in `batched` mode, from OS threads calling
//!   `record` and from tokio tasks calling `record_async` (as the gateway does),
//!   vs raw sled inserts;
//! - ingest in `sync` mode from 64 concurrent writers (group commit) vs raw sled
//!   inserts each followed by its own flush;
//! - statement, payout and settlement for a month of 1,000,000 records, from the
//!   running aggregates, vs recomputing one statement by scanning the records.
//!
//! Sizes scale with `LEDGER_BENCH_SCALE` (default 1.0). `LEDGER_BENCH_ONLY` (a
//! comma-separated subset of `ingest`, `async`, `raw`, `sync`, `month`) runs only those
//! sections; `LEDGER_BENCH_WRITERS` (e.g. `64`) limits the batched ingest runs;
//! `LEDGER_BENCH_CACHE_MIB` sets the ledger's sled page cache (default: the
//! ledger's default, 4 MiB).

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tollgate_ledger::{
    Durability, Ledger, LedgerConfig, LedgerStore, ManualClock, Period, PluginRef, RecordFlags,
    SledStore, Tokens, UsageRecord,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CLIENTS: u64 = 1000;
const AGENCIES: u64 = 10;

fn jan(i: u64) -> DateTime<Utc> {
    let base = DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default(); // 2025-01-01
    base + chrono::Duration::seconds(i64::try_from(i % 2_600_000).unwrap_or(0))
}

fn record(key: String, i: u64) -> UsageRecord {
    let client = i % CLIENTS;
    let cost = Decimal::new(i64::try_from(i % 9973).unwrap_or(0) + 1, 6);
    let surcharge = Decimal::new(i64::try_from(i % 101).unwrap_or(0), 6);
    let ts = jan(i);
    UsageRecord {
        idempotency_key: key,
        request_id: format!("req-{i}"),
        agency_id: format!("agency-{}", client % AGENCIES),
        client_id: format!("client-{client}"),
        app_id: Some("app".into()),
        end_user_id: Some(format!("user-{}", i % 5000)),
        started_at: ts,
        finished_at: ts,
        requested_model: "auto".into(),
        requested_provider: None,
        routed_model: format!("model-{}", i % 20),
        routed_provider: format!("provider-{}", i % 5),
        tokens: Tokens {
            input: 500 + i % 1000,
            output: 200 + i % 300,
            cached: i % 100,
        },
        provider_cost: cost,
        price_version: "2025-01-01".into(),
        surcharge,
        total_charged: cost + surcharge,
        units: BTreeMap::from([(format!("unit-{}", i % 5), Decimal::new(1, 0))]),
        plugin: PluginRef {
            name: "pricing".into(),
            content_hash: "sha256:0123456789abcdef".into(),
            version: "1.2.3".into(),
        },
        flags: RecordFlags::default(),
        reservation_id: None,
    }
}

/// CPU seconds (user + system) this process has used so far, from
/// `/proc/self/stat` (Linux; 100 ticks/s). Other builds share this 2-core machine,
/// so records per CPU-second is reported beside wall-clock throughput.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let Some(rest) = stat.rsplit(')').next() else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Throughput of one run: wall-clock records/s and records per CPU-second.
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

fn median_rate(xs: &[Rate]) -> Rate {
    Rate {
        wall: median(xs.iter().map(|r| r.wall).collect()),
        cpu: median(xs.iter().map(|r| r.cpu).collect()),
    }
}

/// Runs `f` `runs` times and prints one table row with the median rates.
fn median_row(
    runs: usize,
    label: &str,
    mut f: impl FnMut() -> Result<Rate, BoxError>,
) -> Result<(), BoxError> {
    let mut xs = Vec::with_capacity(runs);
    for _ in 0..runs {
        xs.push(f()?);
    }
    let r = median_rate(&xs);
    println!(
        "| {label} | {:.0} records/s | {:.0} records/CPU-s |",
        r.wall, r.cpu
    );
    Ok(())
}

/// The records writer `w` of `writers` sends, `per` of them, with keys
/// unique across all writers.
fn writer_records(w: u64, per: u64) -> Vec<UsageRecord> {
    (0..per)
        .map(|j| {
            let i = w * per + j;
            record(format!("k{i}"), i)
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn open(
    dir: &std::path::Path,
    durability: Durability,
    clock: &ManualClock,
) -> Result<Ledger, BoxError> {
    Ok(Ledger::open(LedgerConfig {
        path: Some(dir.to_path_buf()),
        durability,
        clock: clock.clock(),
        cache_bytes: cache_bytes(),
        ..LedgerConfig::default()
    })?)
}

/// The sled page cache of every ledger the bench opens.
fn cache_bytes() -> u64 {
    std::env::var("LEDGER_BENCH_CACHE_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(tollgate_ledger::DEFAULT_CACHE_BYTES, |mib| mib << 20)
}

/// Records `total` records from `writers` threads; returns records/s until the
/// last acknowledgement (and, for batched, the final flush).
fn ingest(durability: Durability, writers: u64, total: u64) -> Result<Rate, BoxError> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(jan(0) + chrono::Duration::days(20));
    let ledger = open(dir.path(), durability, &clock)?;
    let barrier = Arc::new(Barrier::new(usize::try_from(writers)? + 1));
    let per = total / writers;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(), BoxError> {
                let recs = writer_records(w, per);
                barrier.wait();
                for r in recs {
                    ledger.record(r)?;
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    for h in handles {
        h.join().map_err(|_| "writer panicked")??;
    }
    ledger.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let n = (per * writers) as f64;
    Ok(Rate {
        wall: n / secs,
        cpu: n / (cpu_secs() - cpu0),
    })
}

/// Like [`ingest`], but the writers are `writers` tasks on a two-thread tokio
/// runtime calling `record_async`, which is how the gateway records.
fn ingest_async(durability: Durability, writers: u64, total: u64) -> Result<Rate, BoxError> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(jan(0) + chrono::Duration::days(20));
    let ledger = open(dir.path(), durability, &clock)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let per = total / writers;
    let batches: Vec<Vec<UsageRecord>> = (0..writers).map(|w| writer_records(w, per)).collect();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    runtime.block_on(async {
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|recs| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for r in recs {
                        ledger.record_async(r).await?;
                    }
                    Ok::<(), tollgate_ledger::LedgerError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok::<(), BoxError>(())
    })?;
    ledger.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let n = (per * writers) as f64;
    Ok(Rate {
        wall: n / secs,
        cpu: n / (cpu_secs() - cpu0),
    })
}

/// Baseline: the same serialized records inserted straight into sled, one key
/// each, no idempotency, aggregates or index; `flush_each` flushes per insert.
fn raw_sled(writers: u64, total: u64, flush_each: bool) -> Result<Rate, BoxError> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let tree = db.open_tree("raw")?;
    let barrier = Arc::new(Barrier::new(usize::try_from(writers)? + 1));
    let per = total / writers;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (db, tree, barrier) = (db.clone(), tree.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(), BoxError> {
                let recs: Vec<_> = (0..per)
                    .map(|j| {
                        let i = w * per + j;
                        record(format!("k{i}"), i)
                    })
                    .collect();
                barrier.wait();
                for (j, r) in recs.iter().enumerate() {
                    let key = (w * per + j as u64).to_be_bytes();
                    tree.insert(key, serde_json::to_vec(r)?)?;
                    if flush_each {
                        db.flush()?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    for h in handles {
        h.join().map_err(|_| "writer panicked")??;
    }
    db.flush()?;
    let n = (per * writers) as f64;
    Ok(Rate {
        wall: n / start.elapsed().as_secs_f64(),
        cpu: n / (cpu_secs() - cpu0),
    })
}

fn time_ms<T>(runs: usize, mut f: impl FnMut() -> Result<T, BoxError>) -> Result<f64, BoxError> {
    let mut xs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f()?);
        xs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(xs))
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let scale: f64 = std::env::var("LEDGER_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |x: f64| (x * scale).max(64.0) as u64;
    let runs = 3;
    let only = std::env::var("LEDGER_BENCH_ONLY").unwrap_or_default();
    let run = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let writer_counts: Vec<u64> = match std::env::var("LEDGER_BENCH_WRITERS") {
        Ok(s) => s.split(',').filter_map(|w| w.trim().parse().ok()).collect(),
        Err(_) => vec![1, 8, 64],
    };
    println!(
        "## tollgate-ledger benchmarks (scale {scale}, medians of {runs} runs, sled cache {} MiB)\n",
        cache_bytes() >> 20
    );
    println!("| benchmark | median | per CPU-second |");
    println!("|---|---|---|");

    let batched = Durability::Batched {
        flush_every: Duration::from_millis(100),
    };
    let sizes = n(50_000.0);
    for &writers in &writer_counts {
        if run("ingest") {
            median_row(
                runs,
                &format!(
                    "ingest, batched (100 ms), {writers} writer(s), {sizes} records, with aggregates"
                ),
                || ingest(batched, writers, sizes),
            )?;
        }
        if run("async") {
            median_row(
                runs,
                &format!(
                    "ingest, batched (100 ms), {writers} async writer(s) on 2 tokio threads, {sizes} records, with aggregates"
                ),
                || ingest_async(batched, writers, sizes),
            )?;
        }
        if !run("raw") {
            continue;
        }
        median_row(
            runs,
            &format!(
                "baseline: raw sled insert, {writers} writer(s), {sizes} records, no aggregates"
            ),
            || raw_sled(writers, sizes, false),
        )?;
    }

    if run("sync") {
        sync_section(runs, n)?;
    }
    if run("month") {
        month_section(n)?;
    }
    Ok(())
}

fn sync_section(runs: usize, n: impl Fn(f64) -> u64) -> Result<(), BoxError> {
    let sync_n = n(20_000.0);
    median_row(
        runs,
        &format!("ingest, sync (group commit), 64 writers, {sync_n} records, with aggregates"),
        || ingest(Durability::Sync, 64, sync_n),
    )?;
    let raw_n = n(4_000.0);
    median_row(
        runs,
        &format!("baseline: raw sled insert + flush per record, 64 writers, {raw_n} records"),
        || raw_sled(64, raw_n, true),
    )?;

    Ok(())
}

/// A month of records, then reports from the running aggregates.
fn month_section(n: impl Fn(f64) -> u64) -> Result<(), BoxError> {
    let batched = Durability::Batched {
        flush_every: Duration::from_millis(100),
    };
    let month = n(1_000_000.0);
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(jan(0) + chrono::Duration::days(20));
    let ledger = open(dir.path(), batched, &clock)?;
    let fill = Instant::now();
    let writers = 64u64;
    let per = month / writers;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            std::thread::spawn(move || -> Result<(), BoxError> {
                for j in 0..per {
                    let i = w * per + j;
                    ledger.record(record(format!("k{i}"), i))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "writer panicked")??;
    }
    ledger.flush()?;
    let fill_s = fill.elapsed().as_secs_f64();
    println!(
        "| fill: {} records (1000 clients, 10 agencies, 20 models, 5 providers), batched, 64 writers | {:.1} s ({:.0} records/s) | |",
        per * writers,
        fill_s,
        (per * writers) as f64 / fill_s
    );
    clock.set(jan(0) + chrono::Duration::days(45));
    let period: Period = "2025-01".parse()?;
    let st_ms = time_ms(11, || Ok(ledger.statement("client-7", period)?))?;
    let po_ms = time_ms(11, || Ok(ledger.payout("agency-7", period)?))?;
    let se_ms = time_ms(11, || Ok(ledger.settlement(period)?))?;
    let all_ms = time_ms(5, || {
        let mut sum = Decimal::ZERO;
        for a in 0..AGENCIES {
            sum += ledger.payout(&format!("agency-{a}"), period)?.payout;
        }
        for c in 0..CLIENTS {
            sum += ledger.statement(&format!("client-{c}"), period)?.total;
        }
        Ok(sum)
    })?;
    // Every client's month once: the first read of each misses the
    // in-memory published usage and reads the store (its pages warm from the
    // statements above); the later rounds are served from memory.
    let read_every_client = || {
        let mut spend = Decimal::ZERO;
        for c in 0..CLIENTS {
            spend += ledger.usage_so_far(&format!("client-{c}"), period)?.spend;
        }
        Ok(spend)
    };
    let first_usage_ms = time_ms(1, read_every_client)? / CLIENTS as f64;
    let usage_ms = time_ms(11, read_every_client)? / CLIENTS as f64;
    println!("| statement for one client (20 model lines, 5 unit lines) | {st_ms:.2} ms | |");
    println!("| payout for one agency (100 clients) | {po_ms:.2} ms | |");
    println!("| provider settlement for the month | {se_ms:.2} ms | |");
    println!("| all 10 payouts + all 1000 statements | {all_ms:.1} ms | |");
    println!(
        "| usage_so_far (request summary read), first read of a client's month | {:.1} µs | |",
        first_usage_ms * 1e3
    );
    println!(
        "| usage_so_far (request summary read), month already read | {:.1} µs | |",
        usage_ms * 1e3
    );
    drop(ledger);

    // Baseline: one client's statement total by scanning every record.
    let store = SledStore::open_with_cache(dir.path(), cache_bytes())?;
    let scan_ms = time_ms(1, || {
        let mut total = Decimal::ZERO;
        store.for_each_record(None, &mut |r| {
            if r.record.client_id == "client-7" {
                total += r.record.total_charged;
            }
            Ok(())
        })?;
        Ok(total)
    })?;
    println!("| baseline: one client's total by scanning all records | {scan_ms:.0} ms | |");
    Ok(())
}
