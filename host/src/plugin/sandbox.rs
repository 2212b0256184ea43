//! The sandbox every plugin instance runs in.
//!
//! WASI is linked only as an empty shell so components built with the
//! standard toolchain load: no preopened directories, no sockets, no
//! environment variables or arguments, stdin closed, stdout and stderr
//! discarded, a clock fixed at the Unix epoch and randomness from a fixed
//! seed. Waiting on a clock traps instead of sleeping, because a sleeping
//! plugin would hold a worker without being interruptible. Only the imports
//! listed in [`ALLOWED_IMPORT_PREFIXES`] may appear in a component.

use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::{v0_1, v0_2};

/// Import name prefixes a plugin may use; anything else is refused at load.
pub const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    "tollgate:plugin/log@0.1.",
    "tollgate:plugin/types@0.1.",
    "tollgate:plugin/log@0.2.",
    "tollgate:plugin/types@0.2.",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Most log lines a plugin may write per instance.
pub const MAX_LOG_LINES: u32 = 32;
/// Longest log line kept, in bytes.
pub const MAX_LOG_LINE: usize = 1024;

/// Everything a store owns for one plugin instance.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) log: LogContext,
}

/// Identifies log lines: which plugin wrote them, for which request.
#[derive(Clone, Debug, Default)]
pub struct LogContext {
    /// The plugin's name.
    pub plugin: std::sync::Arc<str>,
    /// The content hash's short form.
    pub version: std::sync::Arc<str>,
    /// The request being served.
    pub request_id: String,
    lines: u32,
    dropped: u32,
}

impl LogContext {
    /// A context for `plugin` at `version` serving `request_id`.
    pub fn new(
        plugin: std::sync::Arc<str>,
        version: std::sync::Arc<str>,
        request_id: &str,
    ) -> Self {
        Self {
            plugin,
            version,
            request_id: request_id.to_owned(),
            lines: 0,
            dropped: 0,
        }
    }
}

impl StoreState {
    pub(super) fn new(memory_limit: usize, log: LogContext) -> Self {
        Self {
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            log,
        }
    }
}

impl Drop for StoreState {
    fn drop(&mut self) {
        if self.log.dropped > 0 {
            tracing::debug!(
                plugin = %self.log.plugin,
                request_id = %self.log.request_id,
                dropped = self.log.dropped,
                "plugin log lines dropped over the limit"
            );
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreState {
    /// One line from the plugin's `log` import, within the per-call bounds.
    fn plugin_log(&mut self, level: tracing::Level, message: String) {
        if self.log.lines >= MAX_LOG_LINES {
            self.log.dropped += 1;
            return;
        }
        self.log.lines += 1;
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let ctx = &self.log;
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(
                    target: "tollgate::plugin_log",
                    $lvl,
                    plugin = %ctx.plugin,
                    plugin_version = %ctx.version,
                    request_id = %ctx.request_id,
                    "{message}"
                )
            };
        }
        // `event!` needs its level as a constant.
        match level {
            tracing::Level::TRACE => emit!(tracing::Level::TRACE),
            tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
            tracing::Level::INFO => emit!(tracing::Level::INFO),
            tracing::Level::WARN => emit!(tracing::Level::WARN),
            _ => emit!(tracing::Level::ERROR),
        }
    }
}

/// The `log` import of each contract version (the same interface).
macro_rules! log_host {
    ($version:ident) => {
        impl $version::tollgate::plugin::log::Host for StoreState {
            fn log(&mut self, level: $version::tollgate::plugin::log::Level, message: String) {
                use $version::tollgate::plugin::log::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.plugin_log(level, message);
            }
        }

        impl $version::tollgate::plugin::types::Host for StoreState {}
    };
}

log_host!(v0_1);
log_host!(v0_2);

/// Caps the total linear memory of one instance and records its peak.
pub struct MemoryLimiter {
    limit: usize,
    total: usize,
    pub(super) peak: usize,
    pub(super) hit_limit: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            total: 0,
            peak: 0,
            hit_limit: false,
        }
    }
}

/// Most table elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.hit_limit = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// The seed of every instance's randomness, so runs reproduce exactly.
const RANDOM_SEED: [u8; 16] = *b"tollgate-plugins";

fn empty_wasi() -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(wasmtime_wasi::Deterministic::new(RANDOM_SEED.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(RANDOM_SEED.to_vec()))
        .insecure_random_seed(u128::from_le_bytes(RANDOM_SEED))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(64 * 1024);
    builder.build()
}

/// Builds the linker every plugin is instantiated with.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    v0_1::AgencyPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    v0_2::AgencyPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    forbid_clock_waits(&mut linker)?;
    Ok(linker)
}

/// Replaces the monotonic clock's `subscribe-*` functions with ones that
/// trap, so a plugin cannot park the host on a real-time sleep.
fn forbid_clock_waits(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(concat!("wasi:clocks/monotonic-clock@", "0.2.12"))?;
    clock.func_wrap(
        "subscribe-duration",
        |_store, (_ns,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "plugins may not sleep or wait on a clock",
            ))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |_store, (_at,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "plugins may not sleep or wait on a clock",
            ))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
