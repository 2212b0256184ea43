//! Property tests over random usage: statements reconcile, surcharges billed to
//! clients equal agency earnings, payout = earnings − fee, every balance equals
//! the sum of its entries, and re-aggregating the records from scratch gives the
//! running aggregates. A plain in-test model checks the ledger's arithmetic.
//! Some records are absorbed (failed, provider paid, client charged nothing):
//! they never reach a client's bill or credit, and the provider settlement
//! equals the client-charged provider cost plus the absorbed cost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic on setup failure

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use common::{rec, t};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tollgate_ledger::*;

const CLIENTS: usize = 4;
const MODELS: [&str; 3] = ["gpt-4o", "claude", "mistral"];
const PROVIDERS: [&str; 2] = ["openai", "bedrock"];
const UNITS: [&str; 3] = ["doc", "page", "call"];

#[derive(Debug, Clone)]
enum Op {
    Record {
        client: usize,
        model: usize,
        provider: usize,
        cost: Decimal,
        surcharge: Decimal,
        units: Vec<(usize, Decimal)>,
        day: u32,
        /// Failed after the provider answered: surcharge and charge are zero.
        absorbed: bool,
    },
    /// Re-send an earlier record (same key).
    Retry(usize),
    /// Reverse an earlier record.
    Reverse(usize),
    TopUp {
        client: usize,
        amount: Decimal,
        expires_day: Option<u32>,
    },
    /// Write every running aggregate to the store.
    Checkpoint,
}

fn amount() -> impl Strategy<Value = Decimal> {
    (0i64..5_000_000, 0u32..=6).prop_map(|(m, s)| Decimal::new(m, s))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..CLIENTS,
            0..MODELS.len(),
            0..PROVIDERS.len(),
            amount(),
            amount(),
            proptest::collection::vec((0..UNITS.len(), amount()), 0..3),
            1u32..=28,
            proptest::bool::weighted(0.25),
        )
            .prop_map(|(client, model, provider, cost, surcharge, units, day, absorbed)| Op::Record {
                client,
                model,
                provider,
                cost,
                surcharge,
                units,
                day,
                absorbed,
            }),
        1 => any::<prop::sample::Index>().prop_map(|i| Op::Retry(i.index(1 << 16))),
        1 => any::<prop::sample::Index>().prop_map(|i| Op::Reverse(i.index(1 << 16))),
        1 => (0..CLIENTS, amount(), proptest::option::of(1u32..=28)).prop_map(
            |(client, amount, expires_day)| Op::TopUp {
                client,
                amount,
                expires_day,
            }
        ),
        1 => Just(Op::Checkpoint),
    ]
}

fn client(i: usize) -> String {
    format!("client-{i}")
}

fn agency(i: usize) -> String {
    format!("agency-{}", i % 2)
}

fn jan(day: u32) -> chrono::DateTime<chrono::Utc> {
    t(&format!("2025-01-{day:02}T12:00:00Z"))
}

/// What the model expects per client.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expect {
    requests: i64,
    total: Decimal,
    surcharge: Decimal,
    /// Provider cost charged to the client.
    cost: Decimal,
    /// Provider cost of absorbed records (charged to nobody).
    absorbed: Decimal,
    absorbed_requests: i64,
    units: BTreeMap<String, Decimal>,
}

impl Expect {
    fn add(&mut self, r: &UsageRecord, sign: i64) {
        let s = Decimal::from(sign);
        self.requests += sign;
        self.total += s * r.total_charged;
        self.surcharge += s * r.surcharge;
        if r.total_charged.is_zero() && !r.provider_cost.is_zero() {
            self.absorbed += s * r.provider_cost;
            self.absorbed_requests += sign;
        } else {
            self.cost += s * r.provider_cost;
        }
        for (u, q) in &r.units {
            *self.units.entry(u.clone()).or_default() += s * q;
        }
    }
}

/// `usage_so_far` agrees with the model: requests, spend and every unit.
fn assert_usage(u: &UsageSoFar, want: Option<&Expect>, client: &str) {
    let want = want.cloned().unwrap_or_default();
    assert_eq!(u.requests, want.requests, "{client} requests");
    assert_eq!(u.spend, want.total, "{client} spend");
    let units: BTreeMap<&String, Decimal> = want
        .units
        .iter()
        .chain(&u.units)
        .map(|(unit, _)| (unit, want.units.get(unit).copied().unwrap_or_default()))
        .collect();
    for (unit, q) in units {
        assert_eq!(
            u.units.get(unit).copied().unwrap_or_default(),
            q,
            "{client} unit {unit}"
        );
    }
}

/// `dirty_bound` small makes the writer checkpoint in the same batch as
/// records now and then, besides the explicit `Checkpoint` steps.
fn run(ops: &[Op], currency: Currency, fee_pct: Decimal, dirty_bound: usize) {
    let clock = ManualClock::new(jan(1));
    let l = Ledger::open(LedgerConfig {
        currency,
        platform_fee_pct: fee_pct,
        clock: clock.clock(),
        durability: Durability::Batched {
            flush_every: std::time::Duration::from_millis(100),
        },
        max_dirty_aggregates: dirty_bound,
        ..LedgerConfig::default()
    })
    .unwrap();
    for c in 0..CLIENTS {
        let mut plan = ClientPlan::default_for(&client(c));
        plan.agency_id = Some(agency(c));
        plan.included_per_period = Decimal::new(c as i64 * 37, 1);
        l.set_plan(plan).unwrap();
    }

    let mut sent: Vec<UsageRecord> = Vec::new();
    let mut reversed: HashSet<usize> = HashSet::new();
    let mut expect: HashMap<String, Expect> = HashMap::new();
    let mut topups = 0;
    let january: Period = "2025-01".parse().unwrap();
    for op in ops {
        match op {
            Op::Record {
                client: c,
                model,
                provider,
                cost,
                surcharge,
                units,
                day,
                absorbed,
            } => {
                clock.set(jan(*day).max(clock.now()));
                let key = format!("k{}", sent.len());
                let mut r = rec(&key, &client(*c), "0", "0");
                r.agency_id = agency(*c);
                r.routed_model = MODELS[*model].into();
                r.routed_provider = PROVIDERS[*provider].into();
                r.provider_cost = *cost;
                if *absorbed {
                    r.flags.failed = true;
                    r.surcharge = Decimal::ZERO;
                    r.total_charged = Decimal::ZERO;
                } else {
                    r.surcharge = *surcharge;
                    r.total_charged = cost + surcharge;
                }
                r.finished_at = jan(*day);
                r.started_at = jan(*day);
                for (u, q) in units {
                    *r.units.entry(UNITS[*u].into()).or_default() += q;
                }
                let o = l.record(r.clone()).unwrap();
                assert!(!o.is_duplicate());
                if *absorbed {
                    assert!(
                        o.record().credits_applied.is_empty(),
                        "an absorbed record draws no credit"
                    );
                }
                expect.entry(client(*c)).or_default().add(&r, 1);
                sent.push(r);
            }
            Op::Retry(i) if !sent.is_empty() => {
                let r = sent[i % sent.len()].clone();
                let o = l.record(r.clone()).unwrap();
                assert!(o.is_duplicate());
                assert_eq!(o.record().record, r);
            }
            Op::Reverse(i) if !sent.is_empty() => {
                let idx = i % sent.len();
                let r = &sent[idx];
                let o = l.reverse(&r.idempotency_key, "prop").unwrap();
                assert_eq!(o.is_duplicate(), !reversed.insert(idx));
                if !o.is_duplicate() {
                    expect.entry(r.client_id.clone()).or_default().add(r, -1);
                }
            }
            Op::TopUp {
                client: c,
                amount,
                expires_day,
            } => {
                topups += 1;
                let res = l.top_up(
                    &client(*c),
                    *amount,
                    &format!("t{topups}"),
                    expires_day.map(jan),
                );
                if amount.is_zero() {
                    assert!(matches!(res, Err(LedgerError::InvalidArgument(_))));
                } else {
                    assert!(matches!(res.unwrap(), TopUpOutcome::Applied(_)));
                }
            }
            Op::Checkpoint => l.checkpoint().unwrap(),
            Op::Retry(_) | Op::Reverse(_) => {}
        }
        // Read after every step, so the in-memory published usage is filled
        // early and must then follow each publish (checkpoints included).
        for c in 0..CLIENTS {
            let name = client(c);
            let u = l.usage_so_far(&name, january).unwrap();
            assert_usage(&u, expect.get(&name), &name);
        }
    }
    for c in 0..CLIENTS {
        l.sweep_expired(&client(c)).unwrap();
    }

    // Re-aggregation from scratch, balances = Σ entries, idempotency claims.
    let v = l.verify().unwrap();
    assert!(v.is_consistent(), "{:#?}", v.problems);
    assert_eq!(v.records as usize, sent.len() + reversed.len());

    let period: Period = "2025-01".parse().unwrap();
    let half_unit = Decimal::new(5, currency.minor_units() + 1);
    let mut billed_surcharge: HashMap<String, Decimal> = HashMap::new();
    let mut exact_surcharge: HashMap<String, Decimal> = HashMap::new();
    let mut exact_cost_all = Decimal::ZERO;
    let mut exact_absorbed_all = Decimal::ZERO;
    let mut absorbed_requests_all = 0i64;
    let mut billed_cost_all = Decimal::ZERO;
    let mut statement_lines = 0usize;
    for c in 0..CLIENTS {
        let name = client(c);
        let want = expect.get(&name).cloned().unwrap_or_default();
        assert_usage(&l.usage_so_far(&name, period).unwrap(), Some(&want), &name);

        let st = l.statement(&name, period).unwrap();
        let lines_total: Decimal = st.lines.iter().map(|l| l.total).sum();
        assert_eq!(st.total, lines_total);
        assert_eq!(st.total, st.provider_cost + st.surcharge);
        for line in &st.lines {
            assert_eq!(line.total, line.provider_cost + line.surcharge);
            assert_eq!(line.total, currency.round(line.total));
        }
        assert_eq!(st.exact_total, want.total);
        assert_eq!(st.rounding_difference, st.total - st.exact_total);
        // Each line rounds two amounts by at most half a minor unit each.
        let bound = half_unit * Decimal::from(2 * st.lines.len().max(1));
        assert!(st.rounding_difference.abs() <= bound);
        assert_eq!(st.amount_due, st.total - st.credits_applied);
        assert_eq!(st.requests, want.requests);
        assert_eq!(st.unbilled_requests, want.absorbed_requests);
        assert_eq!(
            st.unbilled_requests,
            st.lines.iter().map(|l| l.unbilled_requests).sum::<i64>()
        );
        assert!(st.exact_credits_applied <= st.exact_total.max(Decimal::ZERO));

        let b = l.balance(&name).unwrap();
        let entries: Decimal = l
            .credit_entries(&name)
            .unwrap()
            .iter()
            .map(|e| e.amount)
            .sum();
        assert_eq!(b.total, entries);
        assert!(b.buckets.iter().all(|bk| bk.balance >= Decimal::ZERO));

        *billed_surcharge.entry(agency(c)).or_default() += st.surcharge;
        *exact_surcharge.entry(agency(c)).or_default() += want.surcharge;
        exact_cost_all += want.cost;
        exact_absorbed_all += want.absorbed;
        absorbed_requests_all += want.absorbed_requests;
        billed_cost_all += st.provider_cost;
        statement_lines += st.lines.len();
    }

    clock.set(t("2025-03-01T00:00:00Z"));
    for a in 0..2 {
        let name = format!("agency-{a}");
        let po = l.payout(&name, period).unwrap();
        let lines: Decimal = po.lines.iter().map(|l| l.surcharge).sum();
        assert_eq!(po.earnings, lines);
        assert_eq!(
            po.earnings,
            billed_surcharge.get(&name).copied().unwrap_or_default(),
            "Σ client surcharges billed = agency earnings before fees"
        );
        assert_eq!(
            po.exact_earnings,
            exact_surcharge.get(&name).copied().unwrap_or_default()
        );
        assert_eq!(po.payout, po.earnings - po.platform_fee);
        assert_eq!(
            po.platform_fee,
            currency.round(po.earnings * fee_pct / Decimal::ONE_HUNDRED)
        );
    }
    let s = l.settlement(period).unwrap();
    // Σ settlement provider cost = Σ client-charged provider cost + absorbed.
    assert_eq!(s.exact_total, exact_cost_all + exact_absorbed_all);
    assert_eq!(s.exact_absorbed, exact_absorbed_all);
    assert_eq!(
        s.total,
        s.lines.iter().map(|l| l.provider_cost).sum::<Decimal>()
    );
    assert_eq!(
        s.absorbed,
        s.lines.iter().map(|l| l.absorbed).sum::<Decimal>()
    );
    assert_eq!(
        s.lines.iter().map(|l| l.absorbed_requests).sum::<i64>(),
        absorbed_requests_all
    );
    // The same identity on the rounded documents holds up to each rounded
    // line's half minor unit (statement lines, settlement cost and absorbed).
    let bound = half_unit * Decimal::from(statement_lines + 2 * s.lines.len());
    assert!(
        (billed_cost_all + s.absorbed - s.total).abs() <= bound,
        "statements {billed_cost_all} + absorbed {} vs settlement {}",
        s.absorbed,
        s.total
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ledger_invariants_hold_for_random_usage(
        ops in proptest::collection::vec(op(), 1..60),
        currency in prop_oneof![Just(Currency::Usd), Just(Currency::Jpy), Just(Currency::Kwd)],
        fee in (0i64..=3000).prop_map(|b| Decimal::new(b, 2)),
        dirty_bound in prop_oneof![Just(8usize), Just(LedgerConfig::default().max_dirty_aggregates)],
    ) {
        run(&ops, currency, fee, dirty_bound);
    }

    #[test]
    fn rounding_is_half_away_from_zero_at_minor_units(m in -10_000_000i64..10_000_000, s in 0u32..8) {
        let x = Decimal::new(m, s);
        for c in [Currency::Usd, Currency::Jpy, Currency::Kwd] {
            let r = c.round(x);
            prop_assert_eq!(r.scale(), c.minor_units());
            let unit = Decimal::new(1, c.minor_units());
            prop_assert!((r - x).abs() * Decimal::TWO <= unit);
            // Exactly-half cases go away from zero.
            if (r - x).abs() * Decimal::TWO == unit {
                prop_assert!(r.abs() > x.abs());
            }
        }
    }
}
