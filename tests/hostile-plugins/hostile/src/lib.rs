//! A test-only plugin that misbehaves on command, written against the raw
//! WIT bindings (not the SDK) so it can return anything at all.
//!
//! The binding config names the misbehaviour and the capability it hits,
//! as `MODE` (in `route`) or `MODE@CAPABILITY`. Modes: `spin`, `grow-memory`,
//! `recurse`, `panic`, `exit`, `sleep`, `huge-output`, `log-flood`,
//! `snoop` (file, socket, environment), `clock` (reports clock and random),
//! `counter` (reports a per-instance counter), `negative-surcharge`,
//! `malformed-surcharge`, `unknown-model`, `absurd-units`, `bad-unit-name`,
//! `huge-bound` (declares an absurd surcharge bound),
//! `ok` (behaves). Anything else behaves too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "misbehaving is the point of this plugin"
)]

#[allow(
    unsafe_code,
    reason = "wit-bindgen emits the canonical ABI glue as unsafe code"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/v0.1",
        world: "agency-plugin",
    });
}

use bindings::exports::tollgate::plugin::plugin::Guest;
use bindings::tollgate::plugin::log;
use bindings::tollgate::plugin::types::*;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

struct Hostile;

static CALLS: AtomicU32 = AtomicU32::new(0);

fn mode_for(config: &str, capability: &str) -> Option<String> {
    let (mode, target) = config.split_once('@').unwrap_or((config, "route"));
    (target == capability).then(|| mode.to_owned())
}

/// Recursion whose frames live on the Wasm stack itself (no address-taken
/// locals, so nothing goes to the shadow stack in linear memory) and whose
/// result depends on each level, so it cannot become a loop.
#[inline(never)]
fn deep(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    let r = deep(n + 1);
    r ^ n.rotate_left((r & 63) as u32)
}

fn snoop() -> String {
    let file = match std::fs::read_to_string("/etc/hostname") {
        Ok(_) => "file=READ".to_owned(),
        Err(_) => "file=denied".to_owned(),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(_) => "dir=READ".to_owned(),
        Err(_) => "dir=denied".to_owned(),
    };
    let socket = match std::net::TcpStream::connect(("127.0.0.1", 1)) {
        Ok(_) => "socket=OPEN".to_owned(),
        Err(_) => "socket=denied".to_owned(),
    };
    let env = format!("env={}", std::env::vars().count());
    let secret = match std::env::var("TOLLGATE_TEST_SECRET") {
        Ok(v) => format!("secret={v}"),
        Err(_) => "secret=none".to_owned(),
    };
    let args = format!("args={}", std::env::args().count());
    let cwd = match std::env::current_dir() {
        Ok(p) => format!("cwd={}", p.display()),
        Err(_) => "cwd=none".to_owned(),
    };
    [file, dir, socket, env, secret, args, cwd].join(";")
}

fn clock() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    let mut random = std::collections::hash_map::RandomState::new();
    let _ = &mut random;
    let hasher = std::hash::BuildHasher::hash_one(&random, 42u32);
    format!("clock={since_epoch};random={hasher}")
}

/// Misbehaves per `mode`; returns a message for the modes that report.
fn misbehave(mode: &str) -> Option<String> {
    match mode {
        "spin" => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "grow-memory" => {
            // Reserve without filling: growth, not memset speed, is the point.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block: Vec<u8> = Vec::with_capacity(1 << 20);
                block.push(1);
                hoard.push(black_box(block));
            }
        }
        "recurse" => Some(deep(black_box(0)).to_string()),
        "panic" => panic!("hostile plugin panics on purpose"),
        "exit" => std::process::exit(3),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(2));
            Some("slept".into())
        }
        "huge-output" => Some("x".repeat(8 << 20)),
        "log-flood" => {
            let line = "y".repeat(100_000);
            for _ in 0..10_000 {
                log::log(log::Level::Error, &line);
            }
            None
        }
        "snoop" => Some(snoop()),
        "clock" => Some(clock()),
        "counter" => Some(format!(
            "calls={}",
            CALLS.fetch_add(1, Ordering::SeqCst) + 1
        )),
        _ => None,
    }
}

fn reject(message: String) -> Rejection {
    Rejection {
        kind: RejectionKind::Forbidden,
        message,
    }
}

impl Guest for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: "0.0.1".into(),
            description: "misbehaves on command".into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        if let Some(mode) = mode_for(&config, "validate")
            && let Some(message) = misbehave(&mode)
        {
            return Err(message);
        }
        Ok(())
    }

    fn route(
        config: String,
        request: RequestSummary,
        offers: Vec<ModelOffer>,
    ) -> Result<RouteDecision, Rejection> {
        let mode = mode_for(&config, "route").unwrap_or_default();
        if let Some(message) = misbehave(&mode) {
            return Err(reject(message));
        }
        let primary = if mode == "unknown-model" {
            OfferRef {
                model: "not-in-the-catalog".into(),
                provider: "nowhere".into(),
            }
        } else {
            let offer = offers
                .iter()
                .find(|o| o.model == request.requested_model)
                .or(offers.first());
            match offer {
                Some(o) => OfferRef {
                    model: o.model.clone(),
                    provider: o.provider.clone(),
                },
                None => return Err(reject("no offers".into())),
            }
        };
        Ok(RouteDecision {
            primary,
            fallbacks: Vec::new(),
            surcharge_bound: (mode == "huge-bound").then(|| "9999999999999999999999999999".into()),
        })
    }

    fn meter(
        config: String,
        _request: RequestSummary,
        _usage: Usage,
    ) -> Result<Vec<BusinessUnit>, String> {
        let mode = mode_for(&config, "meter").unwrap_or_default();
        if let Some(message) = misbehave(&mode) {
            return Err(message);
        }
        let unit = |name: &str, quantity: &str| BusinessUnit {
            name: name.into(),
            quantity: quantity.into(),
        };
        Ok(match mode.as_str() {
            "absurd-units" => vec![unit("page", "99999999999")],
            "bad-unit-name" => vec![unit("Pages Processed!", "1")],
            _ => vec![unit("request", "1")],
        })
    }

    fn price(
        config: String,
        _request: RequestSummary,
        _usage: Usage,
        _units: Vec<BusinessUnit>,
    ) -> Result<PriceQuote, String> {
        let mode = mode_for(&config, "price").unwrap_or_default();
        if let Some(message) = misbehave(&mode) {
            return Err(message);
        }
        let surcharge = match mode.as_str() {
            "negative-surcharge" => "-5",
            "malformed-surcharge" => "1e5",
            _ => "0.01",
        };
        Ok(PriceQuote {
            surcharge: surcharge.into(),
            description: "hostile".into(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, reason = "the export glue is unsafe code")]
const _: () = {
    bindings::export!(Hostile with_types_in bindings);
};
