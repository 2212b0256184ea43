//! Tenant isolation of the admin API, route by route.
//!
//! Every route of [`ROUTES`] has one or more cases: a concrete request aimed
//! at a target agency's objects (its id, client, app, key, token, plugin
//! version, a period), with a body valid for the route. Each case is sent
//!
//! * by agency A at agency B's objects: refused with the exact status (404
//!   for B's objects, 403 for operator-only routes), or, for listings, a 200
//!   that holds none of B's ids;
//! * by a third agency at its own objects (the control run): accepted, so
//!   the refusals above are due to tenancy and not to the request itself;
//! * with a client app key and with no token at all: 401.
//!
//! A also uploads the very bytes of B's plugin version: it gets a version of
//! its own, showing nothing of B's.
//!
//! B's whole state, read through the operator before and after, must not
//! change (its plugin call metrics included: they are kept per agency even
//! for bytes another agency uploaded too), B's key must keep
//! working, and the ledger records and A's usage listing (paged) must show
//! that each tenant's traffic ran on its own plugin version and agency.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_ledger::RecordQuery;

use crate::support::admin::{
    LEADS, ROUTES, SUPPORT, Tenant, call, chat_with, fill, tenant, upload, urlencode,
};
use crate::support::gateway::{self, TestGateway};
use crate::support::plugin_bytes;

/// The objects a case aims at (or, for the caller, its own).
#[derive(Debug, Clone)]
struct Target {
    agency: String,
    client: String,
    app: String,
    key_id: String,
    /// An admin token of the agency that is not the one the tests call with.
    token_id: String,
    /// A plugin version of this agency (and, for B, of no one else).
    plugin: String,
    /// Its package and a configuration it accepts.
    package: &'static str,
    config: &'static str,
    /// Strings only this agency's objects contain (labels, notes, names).
    marks: Vec<String>,
}

impl Target {
    /// Every string that must not appear in another agency's listings.
    fn ids(&self) -> Vec<String> {
        let mut ids = vec![
            self.agency.clone(),
            self.client.clone(),
            self.app.clone(),
            self.key_id.clone(),
            self.token_id.clone(),
            self.plugin.clone(),
        ];
        ids.extend(self.marks.iter().cloned());
        ids
    }
}

#[derive(Debug, Clone)]
enum Payload {
    None,
    Json(Value),
    /// A plugin upload: the package's bytes, with this query string.
    Wasm(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// This status (for errors, with the matching error code).
    Status(u16),
    /// A listing: 200; holds none of a foreign target's ids, and its own
    /// target's agency id.
    Listing,
}

#[derive(Debug, Clone)]
struct Case {
    route: (&'static str, &'static str),
    method: Method,
    path: String,
    payload: Payload,
    /// When another agency sends it.
    foreign: Expect,
    /// When the target's own agency sends it.
    own: Expect,
}

/// Periods the cases use: the open (current) one and a closed one.
struct Periods {
    open: String,
    closed: String,
}

/// The cases of `route`, sent by `caller`'s agency at `t`'s objects.
/// Empty when the route has none (which the suite refuses).
fn cases(
    route: (&'static str, &'static str),
    caller: &Target,
    t: &Target,
    p: &Periods,
) -> Vec<Case> {
    use Expect::{Listing, Status};
    let (method, template) = route;
    let at = |extra: &[(&str, &str)]| {
        // Overrides first: `fill` replaces each parameter once.
        let mut params = extra.to_vec();
        params.extend([
            ("agency", t.agency.as_str()),
            ("client", t.client.as_str()),
            ("app", t.app.as_str()),
            ("key", t.key_id.as_str()),
            ("token", t.token_id.as_str()),
            ("sha256", t.plugin.as_str()),
            ("period", p.open.as_str()),
        ]);
        fill(template, &params)
    };
    let case = |path: String, payload: Payload, foreign: Expect, own: Expect| Case {
        route,
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        path,
        payload,
        foreign,
        own,
    };
    let json = |v: Value| Payload::Json(v);
    let binding = json!({"plugin_sha256": t.plugin, "config": t.config});
    let filtered = |q: &str| format!("{}?{q}", at(&[]));
    match route {
        ("POST", "/admin/v1/agencies") => vec![
            case(
                at(&[]),
                json(json!({"id": format!("{}-2", caller.agency), "name": "Another"})),
                Status(403),
                Status(403),
            ),
            // Creating B's id again must not answer 409 (which would say
            // that B exists).
            case(
                at(&[]),
                json(json!({"id": t.agency, "name": "Clash"})),
                Status(403),
                Status(403),
            ),
        ],
        ("GET", "/admin/v1/agencies") => vec![case(at(&[]), Payload::None, Listing, Listing)],
        ("GET", "/admin/v1/agencies/{agency}") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("PATCH", "/admin/v1/agencies/{agency}") => vec![
            case(
                at(&[]),
                json(json!({"name": "Renamed by a stranger"})),
                Status(404),
                Status(200),
            ),
            case(
                at(&[]),
                json(
                    json!({"webhook_url": "https://hooks.example/steal", "webhook_secret": "s3cret"}),
                ),
                Status(404),
                Status(200),
            ),
        ],
        ("POST", "/admin/v1/agencies/{agency}/tokens") => vec![case(
            at(&[]),
            json(json!({"label": "backdoor"})),
            Status(404),
            Status(201),
        )],
        ("GET", "/admin/v1/agencies/{agency}/tokens") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("DELETE", "/admin/v1/agencies/{agency}/tokens/{token}") => vec![
            case(at(&[]), Payload::None, Status(404), Status(200)),
            // B's token id under A's own agency path.
            case(
                at(&[("agency", &caller.agency)]),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("PUT", "/admin/v1/agencies/{agency}/binding") => vec![
            case(at(&[]), json(binding.clone()), Status(404), Status(200)),
            // B's plugin version as A's own agency default.
            case(
                at(&[("agency", &caller.agency)]),
                json(binding.clone()),
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/agencies/{agency}/binding") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("POST", "/admin/v1/agencies/{agency}/binding/rollback") => vec![
            case(
                at(&[]),
                json(json!({"revision": 1})),
                Status(404),
                Status(200),
            ),
            case(at(&[]), json(json!({})), Status(404), Status(200)),
        ],
        ("GET", "/admin/v1/agencies/{agency}/payouts/{period}") => vec![
            case(
                at(&[("period", &p.closed)]),
                Payload::None,
                Status(404),
                Status(200),
            ),
            // The open period: 404, not 409 (which would say B exists).
            case(at(&[]), Payload::None, Status(404), Status(409)),
        ],
        ("GET", "/admin/v1/settlement/{period}") => vec![
            case(at(&[]), Payload::None, Status(403), Status(403)),
            case(
                at(&[("period", &p.closed)]),
                Payload::None,
                Status(403),
                Status(403),
            ),
        ],
        ("POST", "/admin/v1/clients") => vec![case(
            at(&[]),
            json(json!({"agency_id": t.agency, "name": "Planted client"})),
            Status(404),
            Status(201),
        )],
        ("GET", "/admin/v1/clients") => vec![
            case(at(&[]), Payload::None, Listing, Listing),
            case(
                filtered(&format!("agency_id={}", t.agency)),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/clients/{client}") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("PATCH", "/admin/v1/clients/{client}") => vec![
            case(
                at(&[]),
                json(json!({"name": "Renamed by a stranger"})),
                Status(404),
                Status(200),
            ),
            case(
                at(&[]),
                json(json!({"rate_limit_per_minute": 1, "models": ["mini-ok"]})),
                Status(404),
                Status(200),
            ),
        ],
        ("DELETE", "/admin/v1/clients/{client}") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("PUT", "/admin/v1/clients/{client}/binding") => vec![
            // B's own plugin on B's client.
            case(at(&[]), json(binding.clone()), Status(404), Status(200)),
            // A's plugin forced onto B's client.
            case(
                at(&[]),
                json(json!({"plugin_sha256": caller.plugin, "config": caller.config})),
                Status(404),
                if caller.agency == t.agency {
                    Status(200)
                } else {
                    Status(404)
                },
            ),
            // B's plugin version bound to A's own client: A cannot use
            // B's upload.
            case(
                at(&[("client", &caller.client)]),
                json(binding.clone()),
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/clients/{client}/binding") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("DELETE", "/admin/v1/clients/{client}/binding") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("POST", "/admin/v1/clients/{client}/binding/rollback") => vec![
            case(
                at(&[]),
                json(json!({"revision": 1})),
                Status(404),
                Status(200),
            ),
            case(at(&[]), json(json!({})), Status(404), Status(200)),
        ],
        ("GET", "/admin/v1/clients/{client}/plan") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("PUT", "/admin/v1/clients/{client}/plan") => vec![case(
            at(&[]),
            json(json!({"billing": "prepaid", "monthly_cap": "1", "alert_thresholds": [50]})),
            Status(404),
            Status(200),
        )],
        ("DELETE", "/admin/v1/clients/{client}/plan/cap") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("POST", "/admin/v1/clients/{client}/credits") => vec![
            case(
                at(&[]),
                json(json!({"amount": "1000", "idempotency_key": "iso-top-up"})),
                Status(404),
                Status(201),
            ),
            // The key B used: must not answer 200 ("already applied").
            case(
                at(&[]),
                json(json!({"amount": "5.00", "idempotency_key": "b-invoice-1"})),
                Status(404),
                Status(201),
            ),
        ],
        ("GET", "/admin/v1/clients/{client}/credits") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("GET", "/admin/v1/clients/{client}/statements/{period}") => vec![
            case(at(&[]), Payload::None, Status(404), Status(200)),
            case(
                at(&[("period", &p.closed)]),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("POST", "/admin/v1/clients/{client}/apps") => vec![case(
            at(&[]),
            json(json!({"name": "planted app"})),
            Status(404),
            Status(201),
        )],
        ("GET", "/admin/v1/clients/{client}/apps") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("POST", "/admin/v1/apps/{app}/keys") => vec![case(
            at(&[]),
            json(json!({"label": "stolen"})),
            Status(404),
            Status(201),
        )],
        ("GET", "/admin/v1/apps/{app}/keys") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("DELETE", "/admin/v1/keys/{key}") => {
            vec![case(at(&[]), Payload::None, Status(404), Status(200))]
        }
        ("POST", "/admin/v1/plugins") => vec![case(
            filtered(&format!(
                "agency_id={}&label=planted&sample_config={}",
                t.agency,
                urlencode(t.config)
            )),
            Payload::Wasm(t.package),
            Status(404),
            // The same bytes again: the existing version.
            Status(200),
        )],
        ("GET", "/admin/v1/plugins") => vec![
            case(at(&[]), Payload::None, Listing, Listing),
            case(
                filtered(&format!("agency_id={}", t.agency)),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/plugins/{sha256}") => vec![
            case(at(&[]), Payload::None, Status(404), Status(200)),
            case(
                filtered(&format!("agency_id={}", t.agency)),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/usage") => vec![
            case(at(&[]), Payload::None, Listing, Listing),
            case(
                filtered(&format!("agency_id={}", t.agency)),
                Payload::None,
                Status(404),
                Status(200),
            ),
            case(
                filtered(&format!("client_id={}", t.client)),
                Payload::None,
                Status(404),
                Status(200),
            ),
            case(
                filtered(&format!("client_id={}&period={}", t.client, p.open)),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        ("GET", "/admin/v1/audit") => vec![
            case(filtered("limit=1000"), Payload::None, Listing, Listing),
            case(
                filtered(&format!("agency_id={}", t.agency)),
                Payload::None,
                Status(404),
                Status(200),
            ),
        ],
        _ => Vec::new(),
    }
}

/// Every case of every route, deletions last (so the control run's own
/// deletions do not get in the way of its other cases). Panics when a
/// route has no case: a new route must come with its isolation cases.
fn all_cases(caller: &Target, t: &Target, p: &Periods) -> Vec<Case> {
    let mut all = Vec::new();
    let mut missing = Vec::new();
    for &route in ROUTES {
        let cs = cases(route, caller, t, p);
        if cs.is_empty() {
            missing.push(format!("{} {}", route.0, route.1));
        }
        all.extend(cs);
    }
    assert!(
        missing.is_empty(),
        "routes without an isolation case (add them to admin_isolation::cases): {missing:?}"
    );
    all.sort_by_key(|c| c.method == Method::DELETE);
    all
}

/// Sends `case` with `token` (no `Authorization` header when `None`).
async fn send(gw: &TestGateway, case: &Case, token: Option<&str>) -> (u16, Value) {
    let mut req =
        reqwest::Client::new().request(case.method.clone(), format!("{}{}", gw.url, case.path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req = match &case.payload {
        Payload::None => req,
        Payload::Json(v) => req.json(v),
        Payload::Wasm(package) => req
            .header("content-type", "application/wasm")
            .body(plugin_bytes(package)),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code_for(status: u16) -> &'static str {
    match status {
        401 => "invalid_api_key",
        403 => "operator_only",
        404 => "not_found",
        409 => "period_open",
        _ => "",
    }
}

/// Checks one answer against `expect`; `foreign` is the target whose ids a
/// listing must not show (`None`: the listing must show `own`'s agency).
fn check(
    case: &Case,
    expect: Expect,
    status: u16,
    body: &Value,
    foreign: Option<&Target>,
    own: &Target,
) {
    let what = format!("{} {} [{}]", case.method, case.path, case.route.1);
    match expect {
        Expect::Status(want) => {
            assert_eq!(status, want, "{what}: {body}");
            if want >= 400 {
                let code = code_for(want);
                if !code.is_empty() && want != 401 {
                    assert_eq!(body["error"]["code"], code, "{what}: {body}");
                }
                assert!(body["error"]["message"].is_string(), "{what}: {body}");
            }
        }
        Expect::Listing => {
            assert_eq!(status, 200, "{what}: {body}");
            let text = body.to_string();
            match foreign {
                Some(t) => {
                    for id in t.ids() {
                        assert!(
                            !text.contains(&id),
                            "{what} shows {id:?} of another agency: {text}"
                        );
                    }
                }
                None => assert!(
                    text.contains(&format!("\"{}\"", own.agency)),
                    "{what}: the agency's own listing should show it: {text}"
                ),
            }
        }
    }
}

fn records_of(gw: &TestGateway, query: RecordQuery) -> Vec<tollgate_ledger::StoredRecord> {
    gw.state
        .ledger
        .records(&RecordQuery {
            limit: 100_000,
            ..query
        })
        .unwrap()
        .items
}

async fn get_ok(gw: &TestGateway, path: &str) -> Value {
    let (st, body) = call(gw, Method::GET, path, &gw.operator.clone(), None).await;
    assert_eq!(st, 200, "operator GET {path}: {body}");
    body
}

/// Everything of `agency`, read through the operator token.
async fn snapshot(gw: &TestGateway, agency: &str, p: &Periods) -> BTreeMap<String, Value> {
    let mut snap = BTreeMap::new();
    for path in [
        format!("/admin/v1/agencies/{agency}"),
        format!("/admin/v1/agencies/{agency}/tokens"),
        format!("/admin/v1/agencies/{agency}/binding"),
        format!("/admin/v1/clients?agency_id={agency}"),
        format!("/admin/v1/plugins?agency_id={agency}"),
        format!("/admin/v1/usage?agency_id={agency}&limit=1000"),
        format!("/admin/v1/audit?agency_id={agency}&limit=1000"),
        format!("/admin/v1/agencies/{agency}/payouts/{}", p.closed),
    ] {
        let body = get_ok(gw, &path).await;
        snap.insert(path, body);
    }
    let clients = snap[&format!("/admin/v1/clients?agency_id={agency}")].clone();
    for client in clients.as_array().unwrap() {
        let id = client["id"].as_str().unwrap();
        for path in [
            format!("/admin/v1/clients/{id}"),
            format!("/admin/v1/clients/{id}/binding"),
            format!("/admin/v1/clients/{id}/plan"),
            format!("/admin/v1/clients/{id}/credits"),
            format!("/admin/v1/clients/{id}/apps"),
            format!("/admin/v1/clients/{id}/statements/{}", p.open),
        ] {
            let body = get_ok(gw, &path).await;
            snap.insert(path, body);
        }
        let apps = snap[&format!("/admin/v1/clients/{id}/apps")].clone();
        for app in apps.as_array().unwrap() {
            let path = format!("/admin/v1/apps/{}/keys", app["id"].as_str().unwrap());
            let body = get_ok(gw, &path).await;
            snap.insert(path, body);
        }
    }
    snap
}

fn assert_same(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the set of B's objects changed"
    );
    for (path, was) in before {
        assert_eq!(&after[path], was, "B's {path} changed");
    }
}

/// B as the isolation cases aim at it: a second plugin version (only B has
/// it) bound to its client and as its agency default, a second admin token,
/// credit, a plan, and some traffic.
async fn make_bravo(gw: &TestGateway) -> (Tenant, Target) {
    let b = tenant(gw, "bravo-agency").await;
    let (st, v2) = upload(
        gw,
        &b.token,
        "lead-qualifier",
        &format!(
            "label=bravo-secret-label&note=bravo-secret-note&sample_config={}",
            urlencode(LEADS)
        ),
    )
    .await;
    assert_eq!(st, 201, "{v2}");
    let sha = v2["sha256"].as_str().unwrap().to_owned();
    let leads: Value = serde_json::from_str(LEADS).unwrap();
    for path in [
        format!("/admin/v1/clients/{}/binding", b.client),
        "/admin/v1/agencies/bravo-agency/binding".to_owned(),
    ] {
        let (st, body) = call(
            gw,
            Method::PUT,
            &path,
            &b.token,
            Some(json!({"plugin_sha256": sha, "config": leads})),
        )
        .await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    let (st, second) = call(
        gw,
        Method::POST,
        "/admin/v1/agencies/bravo-agency/tokens",
        &b.token,
        Some(json!({"label": "bravo-second-token"})),
    )
    .await;
    assert_eq!(st, 201, "{second}");
    let (st, body) = call(
        gw,
        Method::PUT,
        &format!("/admin/v1/clients/{}/plan", b.client),
        &b.token,
        Some(json!({"monthly_cap": "250", "alert_thresholds": [75]})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/clients/{}/credits", b.client),
        &b.token,
        Some(json!({"amount": "5.00", "idempotency_key": "b-invoice-1"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    for i in 0..3 {
        let r = chat_with(gw, &b.key, &format!("New lead: Bravo prospect {i}")).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    let target = Target {
        agency: b.agency.clone(),
        client: b.client.clone(),
        app: b.app.clone(),
        key_id: b.key_id.clone(),
        token_id: second["id"].as_str().unwrap().to_owned(),
        plugin: sha,
        package: "lead-qualifier",
        config: LEADS,
        marks: vec![
            "bravo-secret-label".into(),
            "bravo-secret-note".into(),
            "bravo-second-token".into(),
        ],
    };
    (b, target)
}

/// A tenant as a target of its own control run: a second token to revoke,
/// and the support-desk plugin it was made with.
async fn own_target(gw: &TestGateway, t: &Tenant) -> Target {
    let (st, second) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/agencies/{}/tokens", t.agency),
        &t.token,
        Some(json!({"label": "second"})),
    )
    .await;
    assert_eq!(st, 201, "{second}");
    Target {
        agency: t.agency.clone(),
        client: t.client.clone(),
        app: t.app.clone(),
        key_id: t.key_id.clone(),
        token_id: second["id"].as_str().unwrap().to_owned(),
        plugin: t.plugin.clone(),
        package: "support-desk",
        config: SUPPORT,
        marks: Vec::new(),
    }
}

fn plugin_metrics(list: &Value, sha: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["sha256"] == sha)
        .unwrap_or_else(|| panic!("{sha} not in {list}"))["metrics"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agency_reaches_another_agencys_objects_through_any_route() {
    let gw = gateway::start(vec![]).await;
    let periods = Periods {
        open: gw.state.ledger.current_period().to_string(),
        closed: "2020-01".into(),
    };
    let a = tenant(&gw, "alpha-agency").await;
    let a_target = own_target(&gw, &a).await;
    let (b, b_target) = make_bravo(&gw).await;
    for i in 0..2 {
        let r = chat_with(&gw, &a.key, &format!("Alpha question {i}")).await;
        assert_eq!(r.status(), 200);
    }

    let before = snapshot(&gw, &b.agency, &periods).await;
    let foreign = all_cases(&a_target, &b_target, &periods);
    eprintln!(
        "isolation: {} cases over {} routes, each also sent with two client keys and with no token",
        foreign.len(),
        ROUTES.len()
    );

    // A's token at B's objects: refused, with the exact status.
    for case in &foreign {
        let (st, body) = send(&gw, case, Some(&a.token)).await;
        check(case, case.foreign, st, &body, Some(&b_target), &a_target);
    }
    // A client key (B's own, and A's) on any admin route: 401; no token: 401.
    for case in &foreign {
        for key in [&b.key, &a.key] {
            let (st, body) = send(&gw, case, Some(key)).await;
            assert_eq!(
                st, 401,
                "{} {} with a client key: {body}",
                case.method, case.path
            );
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("tg_live_"),
                "{body}"
            );
        }
        let (st, body) = send(&gw, case, None).await;
        assert_eq!(
            st, 401,
            "{} {} without a token: {body}",
            case.method, case.path
        );
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    // A uploading the very bytes of B's version gets a version of its own:
    // new, with A's label, none of B's notes, and not bound to B's client.
    let (st, mine) = upload(
        &gw,
        &a.token,
        "lead-qualifier",
        &format!("label=alpha-copy&sample_config={}", urlencode(LEADS)),
    )
    .await;
    assert_eq!(st, 201, "{mine}");
    assert_eq!(mine["sha256"], b_target.plugin.as_str());
    assert_eq!(mine["agency_id"], a.agency.as_str());
    assert_eq!(mine["label"], "alpha-copy");
    assert_eq!(mine["note"], "");
    assert_eq!(mine["bound_to"], json!([]));
    assert!(!mine.to_string().contains("bravo"), "{mine}");
    let (st, same) = call(
        &gw,
        Method::GET,
        &format!("/admin/v1/plugins/{}", b_target.plugin),
        &a.token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(same["label"], "alpha-copy", "{same}");
    assert!(!same.to_string().contains("bravo"), "{same}");

    // Nothing of B changed.
    let after = snapshot(&gw, &b.agency, &periods).await;
    assert_same(&before, &after);

    // B's key still works, on B's version.
    let r = chat_with(&gw, &b.key, "New lead: still here").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Both tenants' traffic at once: each record carries its own agency
    // and plugin version.
    let n = 8;
    let (a_statuses, b_statuses) = tokio::join!(
        async {
            let mut s = Vec::new();
            for i in 0..n {
                s.push(
                    chat_with(&gw, &a.key, &format!("Alpha load {i}"))
                        .await
                        .status()
                        .as_u16(),
                );
            }
            s
        },
        async {
            let mut s = Vec::new();
            for i in 0..n {
                s.push(
                    chat_with(&gw, &b.key, &format!("New lead: Bravo load {i}"))
                        .await
                        .status()
                        .as_u16(),
                );
            }
            s
        }
    );
    assert!(
        a_statuses.iter().chain(&b_statuses).all(|&s| s == 200),
        "{a_statuses:?} {b_statuses:?}"
    );

    let a_recs = records_of(
        &gw,
        RecordQuery {
            client: Some(a.client.clone()),
            ..RecordQuery::default()
        },
    );
    let b_recs = records_of(
        &gw,
        RecordQuery {
            client: Some(b.client.clone()),
            ..RecordQuery::default()
        },
    );
    assert_eq!(a_recs.len(), 2 + n, "A's requests, each recorded once");
    assert_eq!(b_recs.len(), 3 + 1 + n, "B's requests, each recorded once");
    for r in &a_recs {
        assert_eq!(r.record.agency_id, a.agency);
        assert_eq!(r.record.client_id, a.client);
        assert_eq!(
            r.record.plugin.content_hash, a.plugin,
            "A's traffic ran on A's binding"
        );
    }
    for r in &b_recs {
        assert_eq!(r.record.agency_id, b.agency);
        assert_eq!(r.record.client_id, b.client);
        assert_eq!(
            r.record.plugin.content_hash, b_target.plugin,
            "B's traffic ran on B's binding"
        );
    }
    // Paging through A's usage (small pages, interleaved with B's records
    // in the ledger) yields exactly A's records; the operator's agency
    // filter likewise.
    for (token, agency, want) in [
        (&a.token, &a.agency, a_recs.len()),
        (&gw.operator, &b.agency, b_recs.len()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/admin/v1/usage?agency_id={agency}&limit=3");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (st, page) = call(&gw, Method::GET, &path, token, None).await;
            assert_eq!(st, 200, "{page}");
            for r in page["records"].as_array().unwrap() {
                assert_eq!(r["record"]["agency_id"], agency.as_str(), "{r}");
                seen.push(r["id"].clone());
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen.len(), want, "{agency}'s usage, paged");
        let unique: std::collections::BTreeSet<String> =
            seen.iter().map(Value::to_string).collect();
        assert_eq!(unique.len(), want, "no record twice");
    }

    // No other record names either agency: each one's records are its
    // client's, on its plugin version.
    let all = records_of(&gw, RecordQuery::default());
    assert_eq!(all.len(), a_recs.len() + b_recs.len());
    for r in &all {
        let (client, plugin) = match r.record.agency_id.as_str() {
            "alpha-agency" => (&a.client, &a.plugin),
            "bravo-agency" => (&b.client, &b_target.plugin),
            other => panic!("a record of agency {other}"),
        };
        assert_eq!(&r.record.client_id, client, "{r:?}");
        assert_eq!(&r.record.plugin.content_hash, plugin, "{r:?}");
    }
    gw.stop().await;
}

/// The control run: every case, sent by an agency at its own objects, is
/// accepted. Shows that the refusals of the suite above come from tenancy,
/// not from a malformed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_isolation_case_is_accepted_for_the_agencys_own_objects() {
    let gw = gateway::start(vec![]).await;
    let periods = Periods {
        open: gw.state.ledger.current_period().to_string(),
        closed: "2020-01".into(),
    };
    let c = tenant(&gw, "charlie-agency").await;
    let r = chat_with(&gw, &c.key, "Charlie question").await;
    assert_eq!(r.status(), 200);
    let own = own_target(&gw, &c).await;
    let cases = all_cases(&own, &own, &periods);
    let mut covered = std::collections::BTreeSet::new();
    for case in &cases {
        let (st, body) = send(&gw, case, Some(&c.token)).await;
        check(case, case.own, st, &body, None, &own);
        covered.insert(case.route);
    }
    assert_eq!(covered.len(), ROUTES.len());
    gw.stop().await;
}

/// A plugin version's call figures (`metrics` in `GET /admin/v1/plugins`)
/// are per agency: two agencies that upload the same bytes share the
/// compiled component, never each other's numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_metrics_are_per_agency_even_for_the_same_bytes() {
    let gw = gateway::start(vec![]).await;
    // Both upload (and bind) the same support-desk bytes.
    let a = tenant(&gw, "alpha-agency").await;
    let b = tenant(&gw, "bravo-agency").await;
    assert_eq!(a.plugin, b.plugin);
    let calls = |list: &Value| plugin_metrics(list, &a.plugin)["calls"].as_u64().unwrap();
    let a_before = calls(
        &call(&gw, Method::GET, "/admin/v1/plugins", &a.token, None)
            .await
            .1,
    );
    for i in 0..3 {
        let r = chat_with(&gw, &b.key, &format!("Bravo question {i}")).await;
        assert_eq!(r.status(), 200);
    }
    let a_after = calls(
        &call(&gw, Method::GET, "/admin/v1/plugins", &a.token, None)
            .await
            .1,
    );
    assert_eq!(a_after, a_before, "A's version counted B's calls");
    gw.stop().await;
}
