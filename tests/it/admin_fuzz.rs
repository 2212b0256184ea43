//! The admin API's input, fuzzed: malformed JSON, wrong types, huge and
//! odd values (long strings, huge numbers, deep nesting, unicode, nulls),
//! unknown fields, odd path segments and query strings, on every route of
//! [`ROUTES`], with the operator token and with an agency token, against
//! one running gateway.
//!
//! The property: no answer is ever a 5xx, every non-2xx answer is JSON
//! shaped `{"error": {"message", "type", "code", "param"}}`, and the gateway
//! still answers `/healthz` afterwards.
//!
//! A fixed sweep sends a set of nasty inputs to every route with both
//! tokens; then proptest draws random requests. The proptest runner is
//! driven by hand (not the `proptest!` macro) so that all cases share one
//! gateway, and each case is sent with `Runtime::block_on`.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::admin::{LEADS, ROUTES, SUPPORT, Tenant, call, fill, tenant, urlencode};
use crate::support::gateway::{self, TestGateway};
use crate::support::plugin_bytes;

/// Random cases after the fixed sweep.
const RANDOM_CASES: u32 = 256;

/// Real ids a path parameter or a field can take.
#[derive(Debug, Clone)]
struct Ids {
    agency: String,
    client: String,
    app: String,
    key: String,
    /// A second admin token of the agency (never the one the tests call
    /// with, so that revoking it leaves the fuzzing token working).
    token: String,
    sha256: String,
    period: String,
}

impl Ids {
    fn param(&self, name: &str) -> &str {
        match name {
            "agency" => &self.agency,
            "client" => &self.client,
            "app" => &self.app,
            "key" => &self.key,
            "token" => &self.token,
            "sha256" => &self.sha256,
            "period" => &self.period,
            other => panic!("unknown path parameter {other}"),
        }
    }
}

/// Path segments that are odd as URL text (kept as they are, not encoded).
const RAW_SEGMENTS: &[&str] = &[
    "",
    ".",
    "..",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "%00",
    "%FF",
    "%C3%28",
    "%ED%A0%80",
    "%",
    "%zz",
    "~",
    "-1",
    "0",
    "18446744073709551616",
    "99999999999999999999999999999",
    "2026-13",
    "2026-00",
    "9999-12",
    "0000-01",
    "-001-01",
    "2026-1",
    "2026-011",
    "+2026-01",
    "2026-01-01",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
    "%F0%9F%98%80",
    "null",
    "%20",
    "cl_",
    "app_",
    "key_",
    "tok_",
];

/// Path segments that percent-decode to invalid UTF-8.
const INVALID_UTF8_SEGMENTS: &[&str] = &["%FF", "%C3%28", "%E2%82", "%ED%A0%80"];

/// Values that are odd as text (for fields, query values, path segments).
const ODD_TEXT: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\n",
    "\u{202e}",
    "é",
    "😀",
    "null",
    "true",
    "{}",
    "[]",
    "{\"model\": 1}",
    "mini-ok",
    "no-such-model",
    "prepaid",
    "postpaid",
    "fail-open",
    "fail-closed",
    "weird-policy",
    "2999-01-01T00:00:00Z",
    "2020-01-01T00:00:00Z",
    "not a date",
    "-262144-01-01T00:00:00Z",
    "+262143-12-31T23:59:59Z",
    "79228162514264337593543950335",
    "79228162514264337593543950336",
    "-79228162514264337593543950336",
    "1e30",
    "1e-30",
    "NaN",
    "inf",
    "-0",
    "0.0000000000000000000000000001",
    "0.00000000000000000000000000001",
    "100.0000000000000000000000001",
    "https://hooks.example/x",
    "http://[::1",
    "ftp://x",
    "javascript:alert(1)",
    "0000000000000000000000000000000000000000000000000000000000000000",
];

/// Field names the admin bodies know (and some they do not).
const FIELDS: &[&str] = &[
    "id",
    "name",
    "platform_fee_percent",
    "webhook_url",
    "webhook_secret",
    "label",
    "expires_at",
    "agency_id",
    "models",
    "rate_limit_per_minute",
    "plugin_sha256",
    "config",
    "failure_policy",
    "revision",
    "billing",
    "monthly_cap",
    "alert_thresholds",
    "included_per_period",
    "amount",
    "idempotency_key",
    "surprise",
    "",
    "__proto__",
    "ID",
];

/// Query parameter names the admin routes know (and some they do not).
const QUERY_KEYS: &[&str] = &[
    "agency_id",
    "client_id",
    "label",
    "note",
    "sample_config",
    "period",
    "model",
    "unit",
    "cursor",
    "limit",
    "before",
    "surprise",
    "",
    "limit[]",
];

/// Bodies that are not JSON, or JSON that no `Value` can hold.
const RAW_BODIES: &[&str] = &[
    "{",
    "}",
    "[",
    "{\"name\":}",
    "{\"name\": \"x\",}",
    "{'name': 'x'}",
    "nul",
    "NaN",
    "\u{feff}{}",
    "{} {}",
    "{\"name\": \"x\"} trailing",
    "{\"revision\": 18446744073709551616}",
    "{\"revision\": -1}",
    "{\"revision\": 1.5}",
    "{\"revision\": 1e400}",
    "{\"rate_limit_per_minute\": 4294967296}",
    "{\"rate_limit_per_minute\": -1}",
    "{\"amount\": 1e400, \"idempotency_key\": \"k\"}",
    "{\"amount\": 123456789012345678901234567890, \"idempotency_key\": \"k\"}",
    "{\"amount\": \"1\", \"idempotency_key\": \"k\", \"amount\": \"2\"}",
    "{\"monthly_cap\": 1e308}",
    "{\"alert_thresholds\": [4294967296]}",
    "{\"name\": \"\\ud800\"}",
    "{\"name\": \"\\u0000\"}",
    "\"\\ud83d\"",
    "\u{0}",
    "\u{ff}\u{fe}",
];

#[derive(Debug, Clone)]
enum Seg {
    /// The caller's own object.
    Own,
    /// The other tenant's object.
    Other,
    /// Text, percent-encoded.
    Text(String),
    /// Raw URL text.
    Raw(&'static str),
}

#[derive(Debug, Clone)]
enum FuzzBody {
    None,
    Json(Value),
    Raw(Vec<u8>),
    /// `depth` nested arrays (or objects).
    Deep {
        depth: usize,
        objects: bool,
    },
    /// A JSON string of `len` bytes.
    Huge(usize),
    /// A plugin package's bytes, cut to `keep` bytes when set.
    Wasm {
        package: &'static str,
        keep: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct Input {
    route: usize,
    operator: bool,
    segs: Vec<Seg>,
    query: Option<String>,
    body: FuzzBody,
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => prop::sample::select(ODD_TEXT).prop_map(str::to_owned),
        1 => (1usize..20_000, prop::sample::select(&["x", "é", "😀", "%", "\u{0}"][..]))
            .prop_map(|(n, s)| s.repeat(n)),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(&[0i64, 1, -1, 100, 101, i64::MAX, i64::MIN][..])
            .prop_map(Value::from),
        arb_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
                    1 => any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object of mostly known fields with odd values: the shape most likely
/// to get past parsing and reach the service's checks.
fn arb_fields() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(FIELDS), arb_json(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn arb_seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => Just(Seg::Own),
        2 => Just(Seg::Other),
        2 => arb_text().prop_map(Seg::Text),
        2 => prop::sample::select(RAW_SEGMENTS).prop_map(Seg::Raw),
    ]
}

fn arb_query() -> impl Strategy<Value = Option<String>> {
    let value = prop_oneof![
        2 => arb_text().prop_map(|t| urlencode(&t)),
        1 => prop::sample::select(RAW_SEGMENTS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => Just("99999999999999999999999999".to_owned()),
        1 => Just(urlencode(SUPPORT)),
        1 => Just(urlencode(LEADS)),
    ];
    let pair = (prop::sample::select(QUERY_KEYS), value).prop_map(|(k, v)| format!("{k}={v}"));
    prop_oneof![
        3 => Just(None),
        4 => prop::collection::vec(pair, 1..4).prop_map(|p| Some(p.join("&"))),
        1 => prop::sample::select(&["&&", "=", "==&=", "a", "%", "%zz=1", "limit=1&limit=2", "agency_id", "agency_id="][..])
            .prop_map(|q| Some(q.to_owned())),
    ]
}

fn arb_body() -> impl Strategy<Value = FuzzBody> {
    prop_oneof![
        3 => Just(FuzzBody::None),
        6 => arb_fields().prop_map(FuzzBody::Json),
        3 => arb_json().prop_map(FuzzBody::Json),
        2 => prop::sample::select(RAW_BODIES).prop_map(|b| FuzzBody::Raw(b.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(FuzzBody::Raw),
        1 => (100usize..100_000, any::<bool>())
            .prop_map(|(depth, objects)| FuzzBody::Deep { depth, objects }),
        1 => prop_oneof![Just(70_000usize), Just(1 << 20), Just((1 << 20) + 1024)].prop_map(FuzzBody::Huge),
        1 => (
            prop::sample::select(&["support-desk", "lead-qualifier"][..]),
            prop::option::of(0usize..4096)
        )
            .prop_map(|(package, keep)| FuzzBody::Wasm { package, keep }),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    (
        0..ROUTES.len(),
        any::<bool>(),
        prop::collection::vec(arb_seg(), 2),
        arb_query(),
        arb_body(),
    )
        .prop_map(|(route, operator, segs, query, body)| Input {
            route,
            operator,
            segs,
            query,
            body,
        })
}

fn body_bytes(body: &FuzzBody) -> Option<Vec<u8>> {
    match body {
        FuzzBody::None => None,
        FuzzBody::Json(v) => Some(serde_json::to_vec(v).unwrap()),
        FuzzBody::Raw(b) => Some(b.clone()),
        FuzzBody::Deep { depth, objects } => {
            let (open, close) = if *objects {
                ("{\"config\":", "}")
            } else {
                ("[", "]")
            };
            Some(format!("{}1{}", open.repeat(*depth), close.repeat(*depth)).into_bytes())
        }
        FuzzBody::Huge(len) => Some(format!("{{\"name\": \"{}\"}}", "x".repeat(*len)).into_bytes()),
        FuzzBody::Wasm { package, keep } => {
            let mut bytes = plugin_bytes(package);
            if let Some(keep) = keep {
                bytes.truncate(*keep);
            }
            Some(bytes)
        }
    }
}

/// Everything the fuzzer sends at.
struct World {
    gw: TestGateway,
    /// How many answers of each status the fuzzing got.
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, usize>>,
    http: reqwest::Client,
    a: Tenant,
    own: Ids,
    other: Ids,
}

impl World {
    /// The request `input` describes: method, path with query, token.
    fn request(&self, input: &Input) -> (Method, String, String) {
        let (method, template) = ROUTES[input.route];
        let caller = if input.operator {
            &self.gw.operator
        } else {
            &self.a.token
        };
        let mut path = template.to_owned();
        let mut segs = input.segs.iter();
        while let Some(start) = path.find('{') {
            let end = start + path[start..].find('}').unwrap();
            let name = path[start + 1..end].to_owned();
            let value = match segs.next().unwrap_or(&Seg::Own) {
                Seg::Own => self.own.param(&name).to_owned(),
                Seg::Other => self.other.param(&name).to_owned(),
                Seg::Text(t) => urlencode(t),
                Seg::Raw(r) => (*r).to_owned(),
            };
            path = fill(&path, &[(&name, &value)]);
        }
        if let Some(q) = &input.query {
            let _ = write!(path, "?{q}");
        }
        (
            Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            caller.clone(),
        )
    }

    /// Sends `input`; checks the answer; describes a violation.
    async fn probe(&self, input: &Input) -> Result<(), String> {
        let (method, path, token) = self.request(input);
        let url = format!("{}{path}", self.gw.url);
        if reqwest::Url::parse(&url).is_err() {
            return Ok(()); // not a request a client could send
        }
        let mut req = self.http.request(method.clone(), &url).bearer_auth(token);
        if let Some(bytes) = body_bytes(&input.body) {
            let ctype = if matches!(input.body, FuzzBody::Wasm { .. }) {
                "application/wasm"
            } else {
                "application/json"
            };
            req = req.header("content-type", ctype).body(bytes);
        }
        let what = format!(
            "{method} {} (operator: {})",
            path.chars().take(300).collect::<String>(),
            input.operator
        );
        let resp = match req.send().await {
            Ok(resp) => resp,
            // Not a request a client can send (e.g. a URI over `http`'s
            // length limit): nothing reached the gateway.
            Err(e) if e.is_builder() => return Ok(()),
            Err(e) => {
                let e: String = format!("{:?}", e.without_url()).chars().take(300).collect();
                return Err(format!("{what}: no answer: {e}"));
            }
        };
        let status = resp.status().as_u16();
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{what}: answer cut: {e}"))?;
        check_answer(&what, status, &text)
    }
}

/// The property of one answer.
fn check_answer(what: &str, status: u16, text: &str) -> Result<(), String> {
    let shown: String = text.chars().take(500).collect();
    if status >= 500 {
        return Err(format!("{what}: {status}: {shown}"));
    }
    let body: Value = serde_json::from_str(text)
        .map_err(|_| format!("{what}: {status} with a body that is not JSON: {shown:?}"))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let shaped = body.as_object().is_some_and(|o| o.len() == 1)
        && body["error"].as_object().is_some_and(|e| {
            e.len() == 4
                && e.get("message")
                    .is_some_and(|m| m.as_str().is_some_and(|m| !m.is_empty()))
                && e.get("type")
                    .is_some_and(|t| t.as_str().is_some_and(|t| !t.is_empty()))
                && e.get("code").is_some_and(|c| c.is_string() || c.is_null())
                && e.get("param").is_some_and(|p| p.is_string() || p.is_null())
        });
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "{what}: {status} with an error body of the wrong shape: {shown}"
        ))
    }
}

/// The fixed sweep: nasty inputs every route gets with both tokens.
fn sweep() -> Vec<Input> {
    let nasty: Vec<(Vec<Seg>, Option<String>, FuzzBody)> = vec![
        (vec![Seg::Own, Seg::Own], None, FuzzBody::Raw(b"{".to_vec())),
        (vec![Seg::Own, Seg::Own], None, FuzzBody::Json(json!([]))),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Json(json!("text")),
        ),
        (vec![Seg::Own, Seg::Own], None, FuzzBody::Json(json!(12345))),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Json(json!({"surprise": 1})),
        ),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Json(Value::Object(
                FIELDS
                    .iter()
                    .map(|f| ((*f).to_owned(), Value::Null))
                    .collect(),
            )),
        ),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Json(Value::Object(
                FIELDS
                    .iter()
                    .map(|f| ((*f).to_owned(), json!({"nested": [1, "x", null]})))
                    .collect(),
            )),
        ),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Raw(b"{\"revision\": 18446744073709551616, \"amount\": 1e400}".to_vec()),
        ),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Deep {
                depth: 10_000,
                objects: false,
            },
        ),
        (
            vec![Seg::Own, Seg::Own],
            None,
            FuzzBody::Huge((1 << 20) + 1),
        ),
        (
            vec![Seg::Text("x".repeat(10_000)), Seg::Text("😀/é\u{0}".into())],
            None,
            FuzzBody::None,
        ),
        (
            vec![Seg::Raw("%FF"), Seg::Raw("%C3%28")],
            None,
            FuzzBody::None,
        ),
        (
            vec![Seg::Raw(".."), Seg::Raw("%2e%2e")],
            None,
            FuzzBody::None,
        ),
        (vec![Seg::Other, Seg::Other], None, FuzzBody::None),
        (
            vec![Seg::Own, Seg::Raw("9999-12")],
            Some("surprise=1".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Raw("0000-01")],
            Some("limit=99999999999999999999999&before=-1".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("cursor=zz&period=2026-13&agency_id=%FF".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("cursor=zz".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("cursor=&limit=1".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("cursor=00&limit=0".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("cursor=ffffffffffffffffffffffffffffffff".into()),
            FuzzBody::None,
        ),
        (
            vec![Seg::Own, Seg::Own],
            Some("sample_config=%7B&label=%00".into()),
            FuzzBody::Wasm {
                package: "support-desk",
                keep: Some(100),
            },
        ),
    ];
    let mut all = Vec::new();
    for route in 0..ROUTES.len() {
        for operator in [false, true] {
            for (segs, query, body) in &nasty {
                all.push(Input {
                    route,
                    operator,
                    segs: segs.clone(),
                    query: query.clone(),
                    body: body.clone(),
                });
            }
        }
    }
    all
}

async fn ids_of(gw: &TestGateway, t: &Tenant) -> Ids {
    let (st, second) = call(
        gw,
        Method::POST,
        &format!("/admin/v1/agencies/{}/tokens", t.agency),
        &t.token,
        Some(json!({"label": "fuzz target"})),
    )
    .await;
    assert_eq!(st, 201, "{second}");
    Ids {
        agency: t.agency.clone(),
        client: t.client.clone(),
        app: t.app.clone(),
        key: t.key_id.clone(),
        token: second["id"].as_str().unwrap().to_owned(),
        sha256: t.plugin.clone(),
        period: gw.state.ledger.current_period().to_string(),
    }
}

#[test]
fn admin_api_input_never_gets_a_5xx_or_an_unshaped_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(async {
        let gw = gateway::start(vec![]).await;
        let a = tenant(&gw, "fuzz-a").await;
        let b = tenant(&gw, "fuzz-b").await;
        let own = ids_of(&gw, &a).await;
        let other = ids_of(&gw, &b).await;
        World {
            // A fresh connection per request: a server may close a
            // connection after answering without reading a large body,
            // and a pooled connection would then fail the next request.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
            gw,
            statuses: std::sync::Mutex::default(),
            a,
            own,
            other,
        }
    });

    let swept = sweep();
    let failures: Vec<String> = swept
        .iter()
        .filter_map(|input| rt.block_on(world.probe(input)).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} sweep requests broke the property:\n{}",
        failures.len(),
        swept.len(),
        failures.join("\n")
    );

    // Methods a path does not serve (e.g. `POST /admin/v1/clients/./credits`,
    // which URL normalisation makes `POST /admin/v1/clients/credits`): a
    // JSON 405, strictly.
    let mut wrong = Vec::new();
    for &(_, template) in ROUTES {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if !ROUTES.contains(&(method, template)) {
                let path = fill(
                    template,
                    &[
                        ("agency", &world.own.agency),
                        ("client", &world.own.client),
                        ("app", &world.own.app),
                        ("key", &world.own.key),
                        ("token", &world.own.token),
                        ("sha256", &world.own.sha256),
                        ("period", &world.own.period),
                    ],
                );
                wrong.push((method, path));
            }
        }
    }
    wrong.push(("POST", "/admin/v1/clients/./credits".to_owned()));
    let failures: Vec<String> = wrong
        .iter()
        .filter_map(|(method, path)| {
            rt.block_on(async {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let resp = world
                    .gw
                    .admin(method.clone(), path, &world.a.token)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                check_answer(&format!("{method} {path}"), status, &text).err()
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut runner = TestRunner::new(Config {
        cases: RANDOM_CASES,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let result = runner.run(&arb_input(), |input| {
        rt.block_on(world.probe(&input))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The fuzzing got past authentication and parsing, not only refusals.
    let statuses = world.statuses.lock().unwrap().clone();
    eprintln!("admin fuzz answers by status: {statuses:?}");
    for status in [200, 400, 404] {
        assert!(
            statuses.contains_key(&status),
            "no {status} at all: {statuses:?}"
        );
    }

    rt.block_on(async {
        let r = world
            .http
            .get(format!("{}/healthz", world.gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "the gateway still answers after the fuzzing"
        );
        // And still serves its tenants' admin calls.
        let (st, body) = call(
            &world.gw,
            Method::GET,
            "/admin/v1/clients",
            &world.a.token,
            None,
        )
        .await;
        assert_eq!(st, 200, "{body}");
    });
    let World { gw, .. } = world;
    rt.block_on(gw.stop());
}

/// Path segments that decode to invalid UTF-8 get the JSON error shape
/// too (axum's own `Path` rejection is plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_path_parameters_get_a_json_error() {
    let gw = gateway::start(vec![]).await;
    let mut requests = Vec::new();
    for &(method, template) in ROUTES {
        for seg in INVALID_UTF8_SEGMENTS {
            if template.contains('{') {
                let params: Vec<(&str, &str)> = [
                    "agency", "client", "app", "key", "token", "sha256", "period",
                ]
                .iter()
                .map(|name| (*name, *seg))
                .collect();
                requests.push((method, fill(template, &params)));
            }
        }
    }
    let mut failures = Vec::new();
    for (method, path) in requests {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = gw
            .admin(method.clone(), &path, &gw.operator)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if let Err(e) = check_answer(&format!("{method} {path}"), status, &text) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}
