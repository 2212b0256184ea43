//! The misbehaviours shared by the hostile plugins of every contract
//! version (`hostile` is 0.1, `hostile-v2` includes this file for 0.2).

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

pub fn mode_for(config: &str, capability: &str) -> Option<String> {
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
/// `log` is the contract version's log import.
pub fn misbehave(mode: &str, log: impl Fn(&str)) -> Option<String> {
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
                log(&line);
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

/// The (model, provider) a behaving plugin routes to: the requested model if
/// it is offered, else the first offer; `unknown-model` names one outside the
/// catalog. `None` when there is no offer at all.
pub fn pick<'a>(
    mode: &str,
    requested: &str,
    offers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(String, String)> {
    if mode == "unknown-model" {
        return Some(("not-in-the-catalog".into(), "nowhere".into()));
    }
    let offers: Vec<_> = offers.into_iter().collect();
    offers
        .iter()
        .find(|(model, _)| *model == requested)
        .or(offers.first())
        .map(|(model, provider)| ((*model).to_owned(), (*provider).to_owned()))
}

/// `validate-config`: misbehaves for `MODE@validate`, accepts anything else.
pub fn validate(config: &str, log: impl Fn(&str)) -> Result<(), String> {
    match mode_for(config, "validate").and_then(|mode| misbehave(&mode, log)) {
        Some(message) => Err(message),
        None => Ok(()),
    }
}
