//! Behaviour of the ledger API: idempotent recording, reversals, late usage,
//! caps and reservations under concurrency, credits, alerts and the outbox,
//! statements, payouts, settlement, queries, reports, persistence, backpressure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic on setup failure

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};

use common::{d, ledger_at, rec, t};
use rust_decimal::Decimal;
use tollgate_ledger::*;

fn p(s: &str) -> Period {
    s.parse().unwrap()
}

#[test]
fn a_retried_write_is_recorded_once_and_returns_the_original() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut r = rec("k1", "c1", "0.010", "0.002");
    r.units.insert("doc".into(), d("2"));
    let first = l.record(r.clone()).unwrap();
    assert!(!first.is_duplicate());
    let mut retry = r.clone();
    retry.surcharge = d("9"); // a retry never rewrites what was stored
    retry.total_charged = d("9.010");
    let second = l.record(retry).unwrap();
    assert!(second.is_duplicate());
    assert_eq!(second.record(), first.record());
    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!(u.requests, 1);
    assert_eq!(u.spend, d("0.012"));
    assert_eq!(u.units, BTreeMap::from([("doc".to_string(), d("2"))]));
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn concurrent_retries_of_the_same_keys_count_once() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let l = l.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let mut recorded = 0;
                for i in 0..40 {
                    let o = l.record(rec(&format!("k{i}"), "c1", "1", "0.5")).unwrap();
                    if !o.is_duplicate() {
                        recorded += 1;
                    }
                }
                recorded
            })
        })
        .collect();
    let recorded: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(recorded, 40);
    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!(u.requests, 40);
    assert_eq!(u.spend, d("60"));
    let v = l.verify().unwrap();
    assert!(v.is_consistent(), "{:?}", v.problems);
    assert_eq!(v.records, 40);
}

#[test]
fn invalid_records_are_refused_with_typed_errors() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut bad_total = rec("a", "c1", "1", "1");
    bad_total.total_charged = d("3");
    let mut negative = rec("b", "c1", "0", "0");
    negative.provider_cost = d("-1");
    negative.total_charged = d("-1");
    let empty_client = rec("c", "", "1", "1");
    let mut neg_unit = rec("d", "c1", "1", "1");
    neg_unit.units.insert("doc".into(), d("-1"));
    let mut backwards = rec("e", "c1", "1", "1");
    backwards.finished_at = t("2025-01-01T00:00:00Z");
    for r in [bad_total, negative, empty_client, neg_unit, backwards] {
        let key = r.idempotency_key.clone();
        assert!(
            matches!(l.record(r), Err(LedgerError::InvalidRecord(_))),
            "{key}"
        );
    }
    // A refused record claims nothing.
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().requests, 0);
    assert!(!l.record(rec("a", "c1", "1", "1")).unwrap().is_duplicate());
}

#[test]
fn reversal_negates_refunds_credit_and_is_idempotent() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    l.top_up("c1", d("10"), "tu1", None).unwrap();
    let mut r = rec("k1", "c1", "1.5", "0.5");
    r.units.insert("doc".into(), d("3"));
    l.record(r).unwrap();
    l.record(rec("k2", "c1", "1", "0")).unwrap();
    assert_eq!(l.balance("c1").unwrap().total, d("7"));

    let rev = l.reverse("k1", "billing dispute").unwrap();
    let rr = rev.record();
    assert!(!rev.is_duplicate());
    assert_eq!(rr.record.total_charged, d("-2"));
    assert_eq!(rr.record.units["doc"], d("-3"));
    assert!(matches!(&rr.kind, RecordKind::Reversal { reason, .. } if reason == "billing dispute"));
    assert_eq!(l.balance("c1").unwrap().total, d("9"));

    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!(u.requests, 1);
    assert_eq!(u.spend, d("1"));
    assert_eq!(u.units["doc"], d("0"));

    assert!(l.reverse("k1", "again").unwrap().is_duplicate());
    assert!(matches!(
        l.reverse("nope", "x"),
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        l.reverse("reversal:k1", "x"),
        Err(LedgerError::InvalidArgument(_))
    ));
    let v = l.verify().unwrap();
    assert!(v.is_consistent(), "{:?}", v.problems);
}

#[test]
fn usage_after_close_goes_to_the_next_period_as_an_adjustment() {
    let (l, clock) = ledger_at("2025-02-01T12:00:00Z");
    // Within the 24 h grace window: January.
    let a = l.record(rec("a", "c1", "1", "0")).unwrap();
    assert_eq!(a.record().id.period, p("2025-01"));
    assert!(!a.record().late_adjustment);
    clock.set(t("2025-02-02T00:00:01Z"));
    let b = l.record(rec("b", "c1", "2", "0")).unwrap();
    assert_eq!(b.record().id.period, p("2025-02"));
    assert!(b.record().late_adjustment);
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().spend, d("1"));
    assert_eq!(l.usage_so_far("c1", p("2025-02")).unwrap().spend, d("2"));
    // A reversal of closed-period usage is booked in the open period too.
    let r = l.reverse("a", "late fix").unwrap();
    assert_eq!(r.record().id.period, p("2025-02"));
    assert!(r.record().late_adjustment);
}

#[test]
fn concurrent_reservations_never_exceed_the_hard_cap() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("100"));
    l.set_plan(plan).unwrap();
    l.record(rec("seed", "c1", "10", "0")).unwrap();

    let threads = 16;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let l = l.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let mut granted = Vec::new();
                let mut refused = 0;
                for _ in 0..20 {
                    match l.reserve("c1", d("1.7")) {
                        Ok(r) => granted.push(r),
                        Err(LedgerError::CapExceeded { .. }) => refused += 1,
                        Err(e) => panic!("thread {i}: {e}"),
                    }
                }
                (granted, refused)
            })
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (g, r) = h.join().unwrap();
        granted.extend(g);
        refused += r;
    }
    // 90 of headroom / 1.7 = 52 reservations fit, never 53.
    assert_eq!(granted.len(), 52);
    assert_eq!(refused, 16 * 20 - 52);
    assert_eq!(l.outstanding("c1").unwrap(), d("1.7") * Decimal::from(52));
    let ids: HashSet<_> = granted.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 52);

    // Settle concurrently at the real (lower) amount; spend stays under the cap.
    let handles: Vec<_> = granted
        .chunks(13)
        .enumerate()
        .map(|(c, chunk)| {
            let l = l.clone();
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for (i, r) in chunk.iter().enumerate() {
                    let mut u = rec(&format!("s{c}-{i}"), "c1", "1.2", "0.3");
                    u.reservation_id = Some(r.id);
                    l.record(u).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(l.outstanding("c1").unwrap(), d("0"));
    let spent = l.usage_so_far("c1", p("2025-01")).unwrap().spend;
    assert_eq!(spent, d("10") + d("1.5") * Decimal::from(52));
    assert!(spent <= d("100"));
}

#[test]
fn mixed_reserve_settle_release_under_contention_respects_the_cap() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("50"));
    l.set_plan(plan).unwrap();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let l = l.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                for i in 0..60 {
                    let Ok(r) = l.reserve("c1", d("2")) else {
                        continue;
                    };
                    if i % 3 == 0 {
                        l.release(r.id).unwrap();
                    } else {
                        let mut u = rec(&format!("m{th}-{i}"), "c1", "1.5", "0.5");
                        u.reservation_id = Some(r.id);
                        l.record(u).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let spent = l.usage_so_far("c1", p("2025-01")).unwrap().spend;
    assert_eq!(spent, d("50"), "every settle used its full estimate");
    assert_eq!(l.outstanding("c1").unwrap(), d("0"));
    assert!(matches!(
        l.reserve("c1", d("0.01")),
        Err(LedgerError::CapExceeded { .. })
    ));
}

#[test]
fn release_restores_headroom_and_unknown_ids_are_typed_errors() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("5"));
    l.set_plan(plan).unwrap();
    let r = l.reserve("c1", d("5")).unwrap();
    assert!(matches!(
        l.reserve("c1", d("0.01")),
        Err(LedgerError::CapExceeded { .. })
    ));
    l.release(r.id).unwrap();
    assert!(matches!(
        l.release(r.id),
        Err(LedgerError::UnknownReservation(_))
    ));
    l.reserve("c1", d("5")).unwrap();
    assert!(matches!(
        l.reserve("c1", d("0")),
        Err(LedgerError::InvalidArgument(_))
    ));
}

#[test]
fn reservations_lapse_after_their_ttl() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("5"));
    l.set_plan(plan).unwrap();
    l.reserve("c1", d("5")).unwrap();
    assert!(l.reserve("c1", d("1")).is_err());
    clock.set(t("2025-01-10T13:00:00Z"));
    l.reserve("c1", d("5")).unwrap();
}

#[test]
fn prepaid_clients_need_balance_and_top_ups_are_idempotent() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.billing = Billing::Prepaid;
    l.set_plan(plan).unwrap();
    assert!(matches!(
        l.reserve("c1", d("1")),
        Err(LedgerError::InsufficientBalance { .. })
    ));
    assert!(matches!(
        l.top_up("c1", d("3"), "pay-1", None).unwrap(),
        TopUpOutcome::Applied(_)
    ));
    assert!(matches!(
        l.top_up("c1", d("3"), "pay-1", None).unwrap(),
        TopUpOutcome::Duplicate(_)
    ));
    assert_eq!(l.balance("c1").unwrap().total, d("3"));
    let r = l.reserve("c1", d("2")).unwrap();
    // 3 − 2 reserved leaves 1.
    assert!(matches!(
        l.reserve("c1", d("1.01")),
        Err(LedgerError::InsufficientBalance { .. })
    ));
    let mut u = rec("u1", "c1", "1", "0.5");
    u.reservation_id = Some(r.id);
    l.record(u).unwrap();
    assert_eq!(l.balance("c1").unwrap().total, d("1.5"));
    l.reserve("c1", d("1.5")).unwrap();
}

#[test]
fn credit_is_consumed_included_first_then_soonest_expiry_then_oldest() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.included_per_period = d("1");
    l.set_plan(plan).unwrap();
    l.top_up("c1", d("1"), "old-no-expiry", None).unwrap();
    l.top_up("c1", d("1"), "late-expiry", Some(t("2025-06-01T00:00:00Z")))
        .unwrap();
    l.top_up("c1", d("1"), "new-no-expiry", None).unwrap();
    l.top_up("c1", d("1"), "soon-expiry", Some(t("2025-02-01T00:00:00Z")))
        .unwrap();
    // Each record draws 1.0 from exactly one bucket, in this order.
    let expected = [
        "included:2025-01",
        "topup:soon-expiry",
        "topup:late-expiry",
        "topup:old-no-expiry",
        "topup:new-no-expiry",
    ];
    for (i, want) in expected.iter().enumerate() {
        let o = l
            .record(rec(&format!("r{i}"), "c1", "0.75", "0.25"))
            .unwrap();
        let used: Vec<_> = o
            .record()
            .credits_applied
            .iter()
            .map(|c| (c.bucket_id.as_str(), c.amount))
            .collect();
        assert_eq!(used, vec![(*want, d("1"))], "record {i}");
    }
    // No credit left: the next record is simply billed.
    let o = l.record(rec("r5", "c1", "1", "0")).unwrap();
    assert!(o.record().credits_applied.is_empty());
    // A split draw across buckets.
    l.top_up("c1", d("0.4"), "a", None).unwrap();
    l.top_up("c1", d("0.4"), "b", None).unwrap();
    let o = l.record(rec("r6", "c1", "1", "0")).unwrap();
    assert_eq!(o.record().credits_total(), d("0.8"));
    let st = l.statement("c1", p("2025-01")).unwrap();
    assert_eq!(st.credits_applied, d("5.80"));
    assert_eq!(st.total, d("7.00"));
    assert_eq!(st.amount_due, d("1.20"));
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn expired_credit_is_written_off_with_an_entry_and_balances_match_entries() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    l.top_up("c1", d("5"), "exp", Some(t("2025-01-20T00:00:00Z")))
        .unwrap();
    l.record(rec("u1", "c1", "2", "0")).unwrap();
    clock.set(t("2025-01-21T00:00:00Z"));
    let b = l.balance("c1").unwrap();
    assert_eq!(b.total, d("3"));
    assert_eq!(b.available, d("0"));
    l.sweep_expired("c1").unwrap();
    let entries = l.credit_entries("c1").unwrap();
    let kinds: Vec<_> = entries.iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        kinds,
        vec![
            (CreditEntryKind::TopUp, d("5")),
            (CreditEntryKind::Consumption, d("-2")),
            (CreditEntryKind::Expiry, d("-3")),
        ]
    );
    assert_eq!(l.balance("c1").unwrap().total, d("0"));
    // Expired credit is not drawn.
    let o = l.record(rec("u2", "c1", "1", "0")).unwrap();
    assert!(o.record().credits_applied.is_empty());
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn included_usage_resets_each_period() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.included_per_period = d("2");
    l.set_plan(plan).unwrap();
    l.record(rec("jan", "c1", "0.5", "0")).unwrap();
    clock.set(t("2025-02-05T00:00:00Z"));
    let o = l.record(rec("feb", "c1", "3", "0")).unwrap();
    assert_eq!(
        o.record().credits_applied,
        vec![CreditUse {
            bucket_id: "included:2025-02".into(),
            amount: d("2")
        }]
    );
    // January's unused 1.5 lapsed when January closed.
    let expiries: Vec<_> = l
        .credit_entries("c1")
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == CreditEntryKind::Expiry)
        .map(|e| (e.bucket_id, e.amount))
        .collect();
    assert_eq!(expiries, vec![("included:2025-01".to_string(), d("-1.5"))]);
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn thresholds_alert_once_per_period_through_the_outbox() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("10"));
    plan.alert_thresholds_pct = vec![50, 80, 100];
    l.set_plan(plan).unwrap();
    l.record(rec("a", "c1", "4", "0")).unwrap();
    assert!(l.alerts().unwrap().is_empty());
    let crossing = l.record(rec("b", "c1", "4.5", "0")).unwrap(); // 8.5: 50 and 80
    let alerts = l.alerts().unwrap();
    let pcts: Vec<_> = alerts.iter().map(|a| a.threshold_pct).collect();
    assert_eq!(pcts, vec![50, 80]);
    assert!(alerts.iter().all(|a| a.record == crossing.record().id));
    assert_eq!(alerts[0].spend, d("8.5"));
    // Falling back under and crossing again does not re-alert.
    l.reverse("b", "x").unwrap();
    l.record(rec("c", "c1", "5", "0")).unwrap();
    assert_eq!(l.alerts().unwrap().len(), 2);
    l.record(rec("d", "c1", "1", "0")).unwrap(); // 10: 100
    assert_eq!(l.alerts().unwrap().len(), 3);
    // A new period alerts afresh.
    clock.set(t("2025-02-10T00:00:00Z"));
    let mut feb = rec("e", "c1", "6", "0");
    feb.finished_at = t("2025-02-09T00:00:00Z");
    l.record(feb).unwrap();
    let all = l.alerts().unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].period, p("2025-02"));
    assert_eq!(all[3].threshold_pct, 50);
}

#[test]
fn outbox_schedules_retries_and_records_delivery() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("10"));
    plan.alert_thresholds_pct = vec![50];
    l.set_plan(plan).unwrap();
    l.record(rec("a", "c1", "6", "0")).unwrap();
    let now = l.now();
    let due = l.pending_alerts(now, 10).unwrap();
    assert_eq!(due.len(), 1);
    let id = due[0].id;

    let body = AlertPayload::new(&due[0], l.currency()).to_body().unwrap();
    let headers = sign_payload(b"secret", &body, now).unwrap();
    assert!(verify_signature(b"secret", &body, &headers.signature));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["event"], "spend.threshold_crossed");
    assert_eq!(json["client_id"], "c1");
    assert_eq!(json["threshold_pct"], 50);
    assert_eq!(json["spend"], "6");
    assert_eq!(json["currency"], "USD");

    let a = l.mark_attempt_failed(id, "HTTP 503").unwrap();
    let Delivery::Pending {
        attempts,
        next_attempt_at,
        ..
    } = a.delivery
    else {
        panic!("{a:?}")
    };
    assert_eq!(attempts, 1);
    assert_eq!(next_attempt_at, now + chrono::Duration::seconds(30));
    assert!(l.pending_alerts(now, 10).unwrap().is_empty());
    clock.set(next_attempt_at);
    assert_eq!(l.pending_alerts(next_attempt_at, 10).unwrap().len(), 1);
    let a = l.mark_delivered(id).unwrap();
    assert!(matches!(
        a.delivery,
        Delivery::Delivered { attempts: 2, .. }
    ));
    assert!(
        l.pending_alerts(next_attempt_at + chrono::Duration::days(1), 10)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        l.mark_delivered(999),
        Err(LedgerError::NotFound(_))
    ));
}

#[test]
fn statement_rounds_lines_half_away_from_zero_and_reconciles() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    // Three gpt-4o requests at 0.0015 cost + 0.0010 surcharge = 0.0045 / 0.0030.
    for i in 0..3 {
        let mut r = rec(&format!("g{i}"), "c1", "0.0015", "0.0010");
        r.units.insert("doc".into(), d("1"));
        l.record(r).unwrap();
    }
    let mut r = rec("m", "c1", "0.125", "0.005");
    r.routed_model = "mistral".into();
    r.routed_provider = "mistral-ai".into();
    l.record(r).unwrap();
    let st = l.statement("c1", p("2025-01")).unwrap();
    let lines: Vec<_> = st
        .lines
        .iter()
        .map(|l| (l.model.as_str(), l.provider_cost, l.surcharge, l.total))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("gpt-4o", d("0.00"), d("0.00"), d("0.00")),
            ("mistral", d("0.13"), d("0.01"), d("0.14")),
        ]
    );
    assert_eq!(st.total, d("0.14"));
    assert_eq!(st.exact_total, d("0.1375"));
    assert_eq!(st.rounding_difference, d("0.0025"));
    assert_eq!(st.requests, 4);
    assert_eq!(st.units[0].quantity, d("3"));
    assert_eq!(st.amount_due, d("0.14"));
    assert_eq!(st.total.to_string(), "0.14");
}

#[test]
fn payouts_need_a_closed_period_and_deduct_the_platform_fee() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    l.record(rec("a", "c1", "1", "2.345")).unwrap();
    l.record(rec("b", "c2", "1", "1.001")).unwrap();
    let mut other = rec("c", "c3", "5", "7");
    other.agency_id = "agency-2".into();
    l.record(other).unwrap();
    let jan = p("2025-01");
    assert!(matches!(
        l.payout("agency-1", jan),
        Err(LedgerError::PeriodOpen { .. })
    ));
    clock.set(t("2025-02-01T23:59:59Z"));
    assert!(
        l.payout("agency-1", jan).is_err(),
        "grace window still open"
    );
    clock.set(t("2025-02-02T00:00:00Z"));
    let po = l.payout("agency-1", jan).unwrap();
    let lines: Vec<_> = po
        .lines
        .iter()
        .map(|l| (l.client_id.as_str(), l.surcharge))
        .collect();
    assert_eq!(lines, vec![("c1", d("2.35")), ("c2", d("1.00"))]);
    assert_eq!(po.earnings, d("3.35"));
    assert_eq!(po.exact_earnings, d("3.346"));
    assert_eq!(po.platform_fee, d("0.34")); // 10 % of 3.35 = 0.335 -> 0.34
    assert_eq!(po.payout, d("3.01"));

    let s = l.settlement(jan).unwrap();
    assert_eq!(s.lines.len(), 1);
    assert_eq!(s.lines[0].provider, "openai");
    assert_eq!(s.total, d("7.00"));
}

#[test]
fn jpy_statements_round_to_whole_yen() {
    let clock = ManualClock::new(t("2025-01-10T12:00:00Z"));
    let l = Ledger::open(LedgerConfig {
        currency: Currency::Jpy,
        clock: clock.clock(),
        ..LedgerConfig::default()
    })
    .unwrap();
    l.record(rec("a", "c1", "10.5", "2.4")).unwrap();
    let st = l.statement("c1", p("2025-01")).unwrap();
    assert_eq!(st.lines[0].provider_cost.to_string(), "11");
    assert_eq!(st.lines[0].surcharge.to_string(), "2");
    assert_eq!(st.total.to_string(), "13");
    assert_eq!(st.rounding_difference, d("0.1"));
}

#[test]
fn records_page_by_cursor_and_filter_by_client_model_and_unit() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    for i in 0..25 {
        let client = if i % 2 == 0 { "even" } else { "odd" };
        let mut r = rec(&format!("k{i:02}"), client, "1", "0");
        if i % 5 == 0 {
            r.routed_model = "small".into();
            r.units.insert("doc".into(), d("1"));
        }
        if i >= 20 {
            r.agency_id = "agency-2".into();
        }
        l.record(r).unwrap();
    }
    // An agency's records, page by page (the admin API's agency-wide listing).
    let mut agency_q = RecordQuery {
        agency: Some("agency-2".into()),
        limit: 2,
        ..RecordQuery::default()
    };
    let mut of_agency = Vec::new();
    loop {
        let page = l.records(&agency_q).unwrap();
        assert!(page.items.len() <= 2);
        of_agency.extend(page.items.iter().map(|r| r.record.idempotency_key.clone()));
        match page.next_cursor {
            Some(c) => agency_q.cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<_> = (20..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(of_agency, want);
    let mut q = RecordQuery {
        period: Some(p("2025-01")),
        limit: 10,
        ..RecordQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = l.records(&q).unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|r| r.record.idempotency_key.clone()));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<_> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, want);

    let odd = l
        .records(&RecordQuery {
            client: Some("odd".into()),
            period: Some(p("2025-01")),
            limit: 100,
            ..RecordQuery::default()
        })
        .unwrap();
    assert_eq!(odd.items.len(), 12);
    assert!(odd.next_cursor.is_none());
    let small_even = l
        .records(&RecordQuery {
            client: Some("even".into()),
            model: Some("small".into()),
            limit: 100,
            ..RecordQuery::default()
        })
        .unwrap();
    let keys: Vec<_> = small_even
        .items
        .iter()
        .map(|r| r.record.idempotency_key.as_str())
        .collect();
    assert_eq!(keys, vec!["k00", "k10", "k20"]);
    let doc = l
        .records(&RecordQuery {
            unit: Some("doc".into()),
            limit: 2,
            ..RecordQuery::default()
        })
        .unwrap();
    assert_eq!(doc.items.len(), 2);
    assert!(doc.next_cursor.is_some());
    let feb = l
        .records(&RecordQuery {
            period: Some(p("2025-02")),
            ..RecordQuery::default()
        })
        .unwrap();
    assert!(feb.items.is_empty());
}

#[test]
fn reports_render_as_table_json_and_csv() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    let mut r = rec("a", "c1", "1.234", "0.5");
    r.units.insert("doc".into(), d("2"));
    l.record(r).unwrap();
    let st = l.statement("c1", p("2025-01")).unwrap();

    let table = render(&st, Format::Table).unwrap();
    assert!(table.starts_with("Statement for client c1 — 2025-01 (USD)"));
    assert!(table.contains("gpt-4o"));
    assert!(table.contains("1.73"));

    let json = render(&st, Format::Json).unwrap();
    let back: Statement = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);

    let csv = render(&st, Format::Csv).unwrap();
    let mut rd = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[0], "kind");
    assert_eq!(header.last().unwrap(), "total");
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let by_kind = |k: &str| rows.iter().find(|r| &r[0] == k).unwrap().clone();
    assert_eq!(&by_kind("model")[9], "1.73");
    assert_eq!(&by_kind("unit")[6], "2");
    assert_eq!(&by_kind("amount_due")[9], "1.73");

    clock.set(t("2025-03-01T00:00:00Z"));
    let po = l.payout("agency-1", p("2025-01")).unwrap();
    assert!(render(&po, Format::Csv).unwrap().contains("payout,,,0.45"));
    let s = l.settlement(p("2025-01")).unwrap();
    assert!(render(&s, Format::Table).unwrap().contains("openai"));
    let u = l.usage_report(p("2025-01"), None).unwrap();
    assert!(
        render(&u, Format::Csv)
            .unwrap()
            .contains("model,gpt-4o,1,100,50,10,1.23,0.50,1.73")
    );
    assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
    assert!("xml".parse::<Format>().is_err());
}

#[test]
fn state_survives_reopening_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || LedgerConfig {
        path: Some(dir.path().to_path_buf()),
        clock: ManualClock::new(t("2025-01-10T12:00:00Z")).clock(),
        ..LedgerConfig::default()
    };
    {
        let l = Ledger::open(cfg()).unwrap();
        let mut plan = ClientPlan::default_for("c1");
        plan.monthly_cap = Some(d("10"));
        l.set_plan(plan).unwrap();
        l.top_up("c1", d("1"), "t", None).unwrap();
        l.record(rec("a", "c1", "2", "1")).unwrap();
    }
    let l = Ledger::open(cfg()).unwrap();
    assert!(l.record(rec("a", "c1", "2", "1")).unwrap().is_duplicate());
    let b = l.record(rec("b", "c1", "3", "0")).unwrap();
    assert_eq!(b.record().id.seq, 1, "sequence continues after reopen");
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().spend, d("6"));
    assert_eq!(l.plan("c1").unwrap().monthly_cap, Some(d("10")));
    assert!(matches!(
        l.reserve("c1", d("4.01")),
        Err(LedgerError::CapExceeded { .. })
    ));
    assert!(
        l.top_up("c1", d("1"), "t", None)
            .is_ok_and(|o| matches!(o, TopUpOutcome::Duplicate(_)))
    );
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn async_api_records_through_the_group_commit() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new(t("2025-01-10T12:00:00Z"));
    let l = Ledger::open(LedgerConfig {
        clock: clock.clock(),
        ..LedgerConfig::default()
    })
    .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.record_async(rec(&format!("k{}", i % 32), "c1", "1", "0"))
                    .await
                    .unwrap()
                    .is_duplicate()
            }));
        }
        let mut dups = 0;
        for t in tasks {
            if t.await.unwrap() {
                dups += 1;
            }
        }
        assert_eq!(dups, 32);
        assert!(l.reverse_async("k0", "x").await.is_ok());
    });
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().requests, 31);
}

/// A store whose commits wait for a gate (lets a test fill the queue) and can
/// be made to fail every commit from some point on (simulates a crash: nothing
/// after that point reaches the store), or every aggregate read.
struct TestStore {
    inner: Arc<SledStore>,
    gate: std::sync::Mutex<()>,
    dead: std::sync::atomic::AtomicBool,
    unreadable: std::sync::atomic::AtomicBool,
}

impl TestStore {
    fn new(inner: Arc<SledStore>) -> TestStore {
        TestStore {
            inner,
            gate: std::sync::Mutex::new(()),
            dead: std::sync::atomic::AtomicBool::new(false),
            unreadable: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn read_fails(&self) -> Result<(), StoreError> {
        if self.unreadable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("simulated read failure".into()));
        }
        Ok(())
    }
}

impl LedgerStore for TestStore {
    fn load_meta(&self) -> Result<Meta, StoreError> {
        self.inner.load_meta()
    }
    fn commit(&self, g: &CommitGroup) -> Result<(), StoreError> {
        let _held = self.gate.lock().unwrap();
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("simulated crash".into()));
        }
        self.inner.commit(g)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn find_idempotency_key(&self, k: &str) -> Result<Option<RecordId>, StoreError> {
        self.inner.find_idempotency_key(k)
    }
    fn idempotency_key_count(&self) -> Result<u64, StoreError> {
        self.inner.idempotency_key_count()
    }
    fn get_record(&self, id: RecordId) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.get_record(id)
    }
    fn query_records(&self, q: &RecordQuery) -> Result<Page<StoredRecord>, StoreError> {
        self.inner.query_records(q)
    }
    fn for_each_record(
        &self,
        from: Option<Period>,
        f: &mut dyn FnMut(StoredRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_record(from, f)
    }
    fn get_aggregate(&self, k: &AggKey) -> Result<Option<Totals>, StoreError> {
        self.read_fails()?;
        self.inner.get_aggregate(k)
    }
    fn scan_aggregates(&self, s: &AggScan) -> Result<Vec<(AggKey, Totals)>, StoreError> {
        self.read_fails()?;
        self.inner.scan_aggregates(s)
    }
    fn get_plan(&self, c: &str) -> Result<Option<ClientPlan>, StoreError> {
        self.inner.get_plan(c)
    }
    fn buckets(&self, c: &str) -> Result<Vec<CreditBucket>, StoreError> {
        self.inner.buckets(c)
    }
    fn all_buckets(&self) -> Result<Vec<CreditBucket>, StoreError> {
        self.inner.all_buckets()
    }
    fn find_topup_key(&self, k: &str) -> Result<Option<String>, StoreError> {
        self.inner.find_topup_key(k)
    }
    fn credit_entries(&self, c: Option<&str>) -> Result<Vec<CreditEntry>, StoreError> {
        self.inner.credit_entries(c)
    }
    fn alerted_thresholds(&self, c: &str, p: Period) -> Result<Vec<u32>, StoreError> {
        self.inner.alerted_thresholds(c, p)
    }
    fn get_alert(&self, id: u64) -> Result<Option<Alert>, StoreError> {
        self.inner.get_alert(id)
    }
    fn alerts(&self) -> Result<Vec<Alert>, StoreError> {
        self.inner.alerts()
    }
}

#[test]
fn a_full_queue_backpressures_then_reports_overloaded_without_losing_acknowledged_writes() {
    let store = Arc::new(TestStore::new(Arc::new(SledStore::temporary().unwrap())));
    let l = Ledger::open_with_store(
        store.clone(),
        LedgerConfig {
            queue_capacity: 2,
            max_batch: 1,
            enqueue_timeout: std::time::Duration::from_millis(100),
            clock: ManualClock::new(t("2025-01-10T12:00:00Z")).clock(),
            ..LedgerConfig::default()
        },
    )
    .unwrap();
    let gate = store.gate.lock().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let l = l.clone();
            std::thread::spawn(move || l.record(rec(&format!("k{i}"), "c1", "1", "0")))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    drop(gate);
    let mut ok = 0;
    let mut overloaded = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(o) => {
                assert!(!o.is_duplicate());
                ok += 1;
            }
            Err(LedgerError::Overloaded { waited_ms }) => {
                assert_eq!(waited_ms, 100);
                overloaded += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // One being committed, one applied and waiting to be handed to the
    // committer, two in the queue; the rest timed out.
    assert_eq!(ok, 4);
    assert_eq!(overloaded, 4);
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().requests, 4);
}

#[test]
fn a_retry_or_reversal_of_a_record_still_being_committed_sees_it_once() {
    // The writer applies the next batch while the committer writes the previous
    // one; a retry in that window must wait for the commit, not record twice.
    let store = Arc::new(TestStore::new(Arc::new(SledStore::temporary().unwrap())));
    let l = Ledger::open_with_store(
        store.clone(),
        LedgerConfig {
            clock: ManualClock::new(t("2025-01-10T12:00:00Z")).clock(),
            ..LedgerConfig::default()
        },
    )
    .unwrap();
    let gate = store.gate.lock().unwrap();
    let first = {
        let l = l.clone();
        std::thread::spawn(move || l.record(rec("k1", "c1", "1", "0")))
    };
    // Let the first batch reach the committer, which waits at the gate.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let retry = {
        let l = l.clone();
        std::thread::spawn(move || l.record(rec("k1", "c1", "1", "0")))
    };
    let reversal = {
        let l = l.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            l.reverse("k1", "test")
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(gate);
    let first = first.join().unwrap().unwrap();
    let retry = retry.join().unwrap().unwrap();
    let reversal = reversal.join().unwrap().unwrap();
    assert!(!first.is_duplicate());
    assert!(retry.is_duplicate());
    assert_eq!(retry.record(), first.record());
    assert!(!reversal.is_duplicate());
    let usage = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!(usage.requests, 0);
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn aggregates_between_checkpoints_are_read_from_memory_and_replayed_after_a_crash() {
    let sled = Arc::new(SledStore::temporary().unwrap());
    let cfg = || LedgerConfig {
        aggregate_checkpoint_every: std::time::Duration::from_secs(3600),
        clock: ManualClock::new(t("2025-01-10T12:00:00Z")).clock(),
        ..LedgerConfig::default()
    };
    let client_key = AggKey::Client {
        client: "c1".into(),
        period: p("2025-01"),
    };
    let store = Arc::new(TestStore::new(sled.clone()));
    let l = Ledger::open_with_store(store.clone(), cfg()).unwrap();
    for i in 0..5 {
        let mut r = rec(&format!("a{i}"), "c1", "1", "0.5");
        r.units.insert("doc".into(), d("1"));
        l.record(r).unwrap();
    }
    // Not checkpointed yet: the store has the records but no aggregates, and
    // readers still see the running totals.
    assert_eq!(sled.get_aggregate(&client_key).unwrap(), None);
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().spend, d("7.5"));
    assert_eq!(l.statement("c1", p("2025-01")).unwrap().total, d("7.50"));
    l.checkpoint().unwrap();
    assert_eq!(
        sled.get_aggregate(&client_key).unwrap().unwrap().total,
        d("7.5")
    );

    // Three more records, then the "crash": nothing reaches the store any more,
    // including the shutdown checkpoint.
    for i in 0..3 {
        l.record(rec(&format!("b{i}"), "c1", "2", "0")).unwrap();
    }
    // Readiness reads the store past the in-memory usage, which holds "c1".
    l.check_ready().unwrap();
    store
        .unreadable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        l.check_ready().is_err(),
        "a store that cannot be read is not ready"
    );
    store
        .unreadable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    l.check_ready().unwrap();
    store.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    // A failed group commit poisons the ledger: no write is acknowledged after it.
    assert!(matches!(
        l.record(rec("c0", "c1", "1", "0")),
        Err(LedgerError::Poisoned(_))
    ));
    assert!(matches!(
        l.record(rec("c1", "c1", "1", "0")),
        Err(LedgerError::Poisoned(_))
    ));
    assert!(matches!(
        l.reserve("c1", d("1")),
        Err(LedgerError::Poisoned(_))
    ));
    assert!(matches!(l.check_ready(), Err(LedgerError::Poisoned(_))));
    drop(l);
    assert_eq!(
        sled.get_aggregate(&client_key).unwrap().unwrap().total,
        d("7.5")
    );
    assert!(sled.load_meta().unwrap().replay_from.is_some());

    // Reopening replays the three records into the aggregates.
    let l = Ledger::open_with_store(Arc::new(TestStore::new(sled.clone())), cfg()).unwrap();
    assert_eq!(
        sled.get_aggregate(&client_key).unwrap().unwrap().total,
        d("13.5")
    );
    assert_eq!(sled.load_meta().unwrap().replay_from, None);
    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!((u.spend, u.requests), (d("13.5"), 8));
    assert!(l.record(rec("b1", "c1", "2", "0")).unwrap().is_duplicate());
    let v = l.verify().unwrap();
    assert!(v.is_consistent(), "{:?}", v.problems);
}

#[test]
fn a_retried_record_releases_the_fresh_reservation_it_carries() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("10"));
    l.set_plan(plan).unwrap();
    let first = l.reserve("c1", d("4")).unwrap();
    let mut r = rec("k", "c1", "3", "0");
    r.reservation_id = Some(first.id);
    l.record(r.clone()).unwrap();
    // The gateway retried the request and reserved again before re-sending.
    let second = l.reserve("c1", d("4")).unwrap();
    assert_eq!(l.outstanding("c1").unwrap(), d("4"));
    r.reservation_id = Some(second.id);
    assert!(l.record(r).unwrap().is_duplicate());
    assert_eq!(l.outstanding("c1").unwrap(), d("0"));
    assert!(matches!(
        l.release(second.id),
        Err(LedgerError::UnknownReservation(_))
    ));
    // 3 spent: 7 of headroom, not 3.
    l.reserve("c1", d("7")).unwrap();
}

#[test]
fn periods_follow_the_configured_timezone_end_to_end() {
    let clock = ManualClock::new(t("2025-01-31T20:00:00Z"));
    let l = Ledger::open(LedgerConfig {
        calendar: Calendar {
            tz: chrono_tz::Asia::Tokyo,
            grace: chrono::Duration::hours(1),
        },
        clock: clock.clock(),
        ..LedgerConfig::default()
    })
    .unwrap();
    // 2025-01-31T20:00Z is February 1st, 05:00 in Tokyo.
    let mut r = rec("a", "c1", "1", "0");
    r.finished_at = t("2025-01-31T20:00:00Z");
    let o = l.record(r).unwrap();
    assert_eq!(o.record().id.period, p("2025-02"));
    assert_eq!(l.current_period(), p("2025-02"));
    // January (Tokyo) ended at 2025-01-31T15:00Z and closed an hour later.
    assert!(l.payout("agency-1", p("2025-01")).is_ok());
    let mut late = rec("b", "c1", "2", "0");
    late.finished_at = t("2025-01-31T14:00:00Z");
    let o = l.record(late).unwrap();
    assert_eq!(o.record().id.period, p("2025-02"));
    assert!(o.record().late_adjustment);
}

/// A request whose provider call succeeded but whose plugin then failed
/// (fail-closed): the provider is owed `cost`, the client is charged nothing.
fn absorbed(key: &str, client: &str, cost: &str) -> UsageRecord {
    let mut r = rec(key, client, cost, "0");
    r.flags.failed = true;
    r.total_charged = Decimal::ZERO;
    r
}

#[test]
fn only_failed_records_with_zero_surcharge_and_zero_charge_may_skip_the_provider_cost() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let ok = absorbed("ok", "c1", "0.75");
    assert!(ok.is_absorbed());
    assert_eq!(ok.absorbed_cost(), d("0.75"));
    assert_eq!(ok.charged_provider_cost(), d("0"));
    assert!(!l.record(ok).unwrap().is_duplicate());
    // A failed record may still be billed normally.
    let mut failed_billed = rec("billed", "c1", "1", "0.5");
    failed_billed.flags.failed = true;
    assert!(!failed_billed.is_absorbed());
    assert!(!l.record(failed_billed).unwrap().is_duplicate());

    let mut not_failed = absorbed("not-failed", "c1", "1");
    not_failed.flags.failed = false;
    let mut with_surcharge = absorbed("surcharge", "c1", "1");
    with_surcharge.surcharge = d("0.2");
    let mut partly_charged = absorbed("partly", "c1", "1");
    partly_charged.total_charged = d("0.4");
    let mut surcharge_only = absorbed("surcharge-only", "c1", "1");
    surcharge_only.surcharge = d("0.2");
    surcharge_only.total_charged = d("0.2");
    let mut fail_open = absorbed("fail-open", "c1", "1");
    fail_open.flags.failed = false;
    fail_open.flags.fail_open = true;
    for r in [
        not_failed,
        with_surcharge,
        partly_charged,
        surcharge_only,
        fail_open,
    ] {
        let key = r.idempotency_key.clone();
        assert!(
            matches!(l.record(r), Err(LedgerError::InvalidRecord(_))),
            "{key}"
        );
    }
    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!(u.requests, 2);
    assert_eq!(u.spend, d("1.5"));
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn absorbed_records_add_nothing_to_the_statement_and_draw_no_credit() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.included_per_period = d("1");
    l.set_plan(plan).unwrap();
    l.top_up("c1", d("10"), "tu", None).unwrap();
    l.record(rec("a", "c1", "1.004", "0.5")).unwrap();
    let o = l.record(absorbed("b", "c1", "3.333")).unwrap();
    assert!(o.record().credits_applied.is_empty());
    let mut other_model = absorbed("c", "c1", "2");
    other_model.routed_model = "claude".into();
    l.record(other_model).unwrap();

    // 1.504 drawn: 1 from included usage, 0.504 from the top-up.
    assert_eq!(l.balance("c1").unwrap().total, d("9.496"));
    let consumed: Decimal = l
        .credit_entries("c1")
        .unwrap()
        .iter()
        .filter(|e| e.kind == CreditEntryKind::Consumption)
        .map(|e| e.amount)
        .sum();
    assert_eq!(consumed, d("-1.504"));

    let st = l.statement("c1", p("2025-01")).unwrap();
    let lines: Vec<_> = st
        .lines
        .iter()
        .map(|l| {
            (
                l.model.as_str(),
                l.requests,
                l.unbilled_requests,
                l.provider_cost,
                l.surcharge,
                l.total,
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("claude", 1, 1, d("0.00"), d("0.00"), d("0.00")),
            ("gpt-4o", 2, 1, d("1.00"), d("0.50"), d("1.50")),
        ]
    );
    assert_eq!(st.requests, 3);
    assert_eq!(st.unbilled_requests, 2);
    assert_eq!(st.provider_cost, d("1.00"));
    assert_eq!(st.total, st.provider_cost + st.surcharge);
    assert_eq!(st.exact_total, d("1.504"));
    assert_eq!(st.credits_applied, d("1.50"));
    assert_eq!(st.amount_due, d("0"));
    let u = l.usage_so_far("c1", p("2025-01")).unwrap();
    assert_eq!((u.requests, u.spend), (3, d("1.504")));
    let report = l.usage_report(p("2025-01"), None).unwrap();
    assert_eq!(report.exact_total, d("1.504"));
    assert_eq!(report.total, d("1.50"));
    let csv = render(&st, Format::Csv).unwrap();
    assert!(csv.contains("unbilled_requests,,2,"), "{csv}");
    assert!(l.verify().unwrap().is_consistent());
}

#[test]
fn spend_caps_and_alerts_count_only_what_the_client_is_charged() {
    let (l, _) = ledger_at("2025-01-10T12:00:00Z");
    let mut plan = ClientPlan::default_for("c1");
    plan.monthly_cap = Some(d("10"));
    l.set_plan(plan).unwrap();
    let r = l.reserve("c1", d("4")).unwrap();
    let mut big = absorbed("big", "c1", "100");
    big.reservation_id = Some(r.id);
    l.record(big).unwrap();
    assert_eq!(
        l.outstanding("c1").unwrap(),
        d("0"),
        "settled by the record"
    );
    assert!(l.alerts().unwrap().is_empty());
    // The full cap is still available.
    l.reserve("c1", d("10")).unwrap();
    assert!(matches!(
        l.reserve("c1", d("0.01")),
        Err(LedgerError::CapExceeded { .. })
    ));
}

#[test]
fn settlement_owes_absorbed_provider_cost_and_shows_it_while_payouts_ignore_it() {
    let (l, clock) = ledger_at("2025-01-10T12:00:00Z");
    l.record(rec("a", "c1", "1", "2.345")).unwrap();
    l.record(absorbed("b", "c1", "0.005")).unwrap();
    l.record(absorbed("c", "c2", "4")).unwrap();
    let mut other = absorbed("d", "c2", "2");
    other.routed_provider = "bedrock".into();
    l.record(other).unwrap();
    let jan = p("2025-01");

    let s = l.settlement(jan).unwrap();
    let lines: Vec<_> = s
        .lines
        .iter()
        .map(|l| {
            (
                l.provider.as_str(),
                l.requests,
                l.absorbed_requests,
                l.provider_cost,
                l.absorbed,
            )
        })
        .collect();
    assert_eq!(
        lines,
        // Store key order: length-prefixed names, so shorter names first.
        vec![
            ("openai", 3, 2, d("5.01"), d("4.01")),
            ("bedrock", 1, 1, d("2.00"), d("2.00")),
        ]
    );
    assert_eq!(s.total, d("7.01"));
    assert_eq!(s.exact_total, d("7.005"));
    assert_eq!(s.absorbed, d("6.01"));
    assert_eq!(s.exact_absorbed, d("6.005"));
    let csv = render(&s, Format::Csv).unwrap();
    assert!(
        csv.starts_with("kind,provider,requests,absorbed_requests,absorbed,provider_cost\n"),
        "{csv}"
    );
    assert!(csv.contains("provider,openai,3,2,4.01,5.01\n"), "{csv}");
    assert!(csv.contains("total,,,,6.01,7.01\n"), "{csv}");

    clock.set(t("2025-03-01T00:00:00Z"));
    let po = l.payout("agency-1", jan).unwrap();
    let lines: Vec<_> = po
        .lines
        .iter()
        .map(|l| (l.client_id.as_str(), l.requests, l.surcharge))
        .collect();
    assert_eq!(lines, vec![("c1", 2, d("2.35")), ("c2", 2, d("0.00"))]);
    assert_eq!(po.earnings, d("2.35"));
    assert_eq!(po.exact_earnings, d("2.345"));
}

#[test]
fn an_absorbed_record_can_be_reversed_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t("2025-01-10T12:00:00Z"));
    let cfg = || LedgerConfig {
        path: Some(dir.path().to_path_buf()),
        clock: clock.clock(),
        ..LedgerConfig::default()
    };
    {
        let l = Ledger::open(cfg()).unwrap();
        l.record(rec("a", "c1", "1", "0.5")).unwrap();
        l.record(absorbed("b", "c1", "3")).unwrap();
        l.record(absorbed("c", "c1", "2")).unwrap();
        let rev = l.reverse("b", "provider refunded").unwrap();
        let rr = rev.record();
        assert_eq!(rr.record.provider_cost, d("-3"));
        assert_eq!(rr.record.total_charged, d("0"));
        assert!(rr.credits_applied.is_empty());
        assert!(l.reverse("b", "again").unwrap().is_duplicate());
    }
    let l = Ledger::open(cfg()).unwrap();
    let v = l.verify().unwrap();
    assert!(v.is_consistent(), "{:?}", v.problems);
    assert_eq!(v.records, 4);
    let s = l.settlement(p("2025-01")).unwrap();
    assert_eq!((s.lines[0].requests, s.lines[0].absorbed_requests), (2, 1));
    assert_eq!((s.exact_total, s.exact_absorbed), (d("3"), d("2")));
    let st = l.statement("c1", p("2025-01")).unwrap();
    assert_eq!((st.requests, st.unbilled_requests), (2, 1));
    assert_eq!(st.exact_total, d("1.5"));
}

/// Between checkpoints readers see the running aggregates from memory, found
/// by key prefix: one client's figures never pick up another's, even when
/// one id is a prefix of the other.
#[test]
fn uncheckpointed_aggregates_are_read_per_client_by_prefix() {
    let l = Ledger::open_with_store(
        Arc::new(SledStore::temporary().unwrap()),
        LedgerConfig {
            aggregate_checkpoint_every: std::time::Duration::from_secs(3600),
            clock: ManualClock::new(t("2025-01-10T12:00:00Z")).clock(),
            ..LedgerConfig::default()
        },
    )
    .unwrap();
    for (i, (client, unit, qty)) in [
        ("c1", "doc", "1"),
        ("c10", "doc", "4"),
        ("c1", "page", "3"),
        ("c10", "lead", "2"),
        ("c2", "doc", "7"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rec(&format!("k{i}"), client, "1", "0.5");
        r.units.insert(unit.into(), d(qty));
        l.record(r).unwrap();
    }
    let units = |client: &str| {
        l.usage_so_far(client, p("2025-01"))
            .unwrap()
            .units
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        units("c1"),
        vec![("doc".to_owned(), d("1")), ("page".to_owned(), d("3"))]
    );
    assert_eq!(
        units("c10"),
        vec![("doc".to_owned(), d("4")), ("lead".to_owned(), d("2"))]
    );
    assert_eq!(units("c2"), vec![("doc".to_owned(), d("7"))]);
    assert_eq!(l.usage_so_far("c1", p("2025-01")).unwrap().requests, 2);
    // The same after a checkpoint, from the store.
    l.checkpoint().unwrap();
    assert_eq!(
        units("c1"),
        vec![("doc".to_owned(), d("1")), ("page".to_owned(), d("3"))]
    );
    assert_eq!(units("c10").len(), 2);
}
