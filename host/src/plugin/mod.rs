//! The sandboxed plugin runtime: loads agency plugins (Wasm components) and
//! runs their capabilities under strict limits.
//!
//! One [`PluginRuntime`] owns one wasmtime `Engine` with the pooling
//! allocator and epoch interruption. Components are validated, compiled once
//! and cached by the sha256 of their bytes; precompiled artifacts are never
//! accepted. Every request gets a fresh instance from a pre-linked
//! `InstancePre` ([`CompiledPlugin::session`]), so nothing leaks between
//! requests or tenants. Each call runs under a deadline, a memory cap, a
//! stack cap and input/output size caps; whatever the plugin does becomes a
//! typed [`PluginError`], and [`policy`] decides what the request gets.

mod bindings;
mod convert;
mod error;
pub mod local;
pub mod metrics;
pub mod policy;
mod sandbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tollgate_plugin_types::{
    BusinessUnit, ModelOffer, PluginInfo, PriceQuote, Rejection, RequestSummary, RouteDecision,
    Usage, validate,
};
use wasmtime::component::Component;
use wasmtime::{Engine, Store, Trap};

use bindings::{v0_1, v0_2};
use convert::WireSize;
pub use error::{LoadError, PluginError};
pub use metrics::{PluginMetrics, PluginStats};
use sandbox::StoreState;
pub use sandbox::{ALLOWED_IMPORT_PREFIXES, LogContext};

/// The least deadline of admin-time calls (`describe`, `validate-config`).
const ADMIN_DEADLINE: Duration = Duration::from_millis(250);

/// The interval at which the epoch advances; deadlines are whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The epoch ticker parks after this many ticks without a plugin call being
/// armed (at least; longer when a deadline is longer), so an idle gateway is
/// not woken a thousand times a second.
const EPOCH_IDLE_TICKS: u64 = 100;

/// Limits applied to every plugin and call.
#[derive(Debug, Clone)]
pub struct RuntimeLimits {
    /// Wall-clock budget of one call.
    pub deadline: Duration,
    /// Total linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Largest accepted input of one call (config, request, offers...).
    pub max_input_bytes: usize,
    /// Largest accepted output of one call.
    pub max_output_bytes: usize,
    /// Wasm stack of one call.
    pub max_wasm_stack: usize,
    /// Largest component accepted at load.
    pub max_component_bytes: usize,
    /// Most instances alive at once (the pool's size).
    pub max_instances: u32,
    /// The most a plugin may charge on one request: the bound used when a
    /// route declares none, and the ceiling of any bound it declares.
    pub default_surcharge_bound: Decimal,
    /// Count fuel (≈ executed Wasm operations) per call. Costs speed; meant
    /// for `tollgate plugin run`, not for serving.
    pub measure_fuel: bool,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(5),
            memory_bytes: 32 << 20,
            max_input_bytes: 256 << 10,
            max_output_bytes: 64 << 10,
            max_wasm_stack: 512 << 10,
            max_component_bytes: 16 << 20,
            max_instances: 1000,
            default_surcharge_bound: Decimal::ONE_HUNDRED,
            measure_fuel: false,
        }
    }
}

/// The content address of a component: sha256 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Full lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for labels and logs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Failure to set the runtime up (a host misconfiguration, not a plugin's fault).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin runtime: {0}")]
pub struct RuntimeError(String);

/// Loads, caches and runs plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    linker: wasmtime::component::Linker<StoreState>,
    limits: RuntimeLimits,
    /// Weak, because every `CompiledPlugin` holds this `Shared`: a strong
    /// cache would be a cycle that keeps the engine (and its pool's address
    /// space and mappings) alive after the last runtime handle is gone. A
    /// component stays cached while anything (a binding, the admin service)
    /// holds it.
    cache: Mutex<HashMap<ContentHash, std::sync::Weak<CompiledPlugin>>>,
    metrics: PluginMetrics,
    ticker: Arc<EpochTicker>,
    /// Instances created ahead of a request ([`WarmSession`]), runtime-wide.
    warm: std::sync::atomic::AtomicUsize,
}

/// At most this many instances wait, created ahead of the request that will
/// use them ([`CompiledPlugin::warm_session_for`]): each holds a pool slot
/// and its resident pages.
pub const MAX_WARM_INSTANCES: usize = 16;

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl PluginRuntime {
    /// A runtime with `limits`, reporting into `metrics`.
    pub fn new(limits: RuntimeLimits, metrics: PluginMetrics) -> Result<Self, RuntimeError> {
        let engine = engine(&limits).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let linker = sandbox::linker(&engine).map_err(|e| RuntimeError(format!("{e:#}")))?;
        // Every session's deadline is the configured one or, for admin-time
        // calls, at least ADMIN_DEADLINE.
        let ticker = EpochTicker::spawn(engine.clone(), limits.deadline.max(ADMIN_DEADLINE))?;
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                limits,
                cache: Mutex::new(HashMap::new()),
                metrics,
                ticker,
                warm: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &RuntimeLimits {
        &self.shared.limits
    }

    /// Whether the epoch ticker is parked because no plugin has run lately
    /// (diagnostics and tests).
    pub fn epoch_ticker_idle(&self) -> bool {
        self.shared.ticker.is_parked()
    }

    /// Validates and compiles a component. CPU-heavy: runs on a blocking
    /// thread from [`PluginRuntime::load`].
    fn compile(&self, bytes: &[u8]) -> Result<CompiledPlugin, LoadError> {
        let limits = &self.shared.limits;
        if bytes.len() > limits.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: limits.max_component_bytes,
            });
        }
        let hash = ContentHash::of(bytes);
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotAComponent(
                "it does not start with the Wasm magic number",
            ));
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(LoadError::NotAComponent("it is a core Wasm module"));
        }
        let started = Instant::now();
        let component = Component::new(&self.shared.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let compile_time = started.elapsed();
        let initial_memory_bytes = initial_memory_bytes(bytes);
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.shared.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.shared.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if let Some(bad) = imports
            .iter()
            .find(|name| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)))
        {
            return Err(LoadError::UnsupportedImport(bad.clone()));
        }
        let Some(world) = exports
            .iter()
            .find_map(|name| WorldVersion::from_export(name))
        else {
            return Err(LoadError::MissingExport {
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        };
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Incompatible(format!("{e:#}")))?;
        let incompatible = |e: wasmtime::Error| LoadError::Incompatible(format!("{e:#}"));
        let pre = match world {
            WorldVersion::V0_1 => Pre::V0_1(v0_1::AgencyPluginPre::new(pre).map_err(incompatible)?),
            WorldVersion::V0_2 => Pre::V0_2(v0_2::AgencyPluginPre::new(pre).map_err(incompatible)?),
        };
        Ok(CompiledPlugin {
            hash,
            size: bytes.len(),
            compile_time,
            initial_memory_bytes,
            world,
            imports,
            exports,
            pre,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
            },
            series: Arc::new(metrics::PluginSeries::new(
                &self.shared.metrics,
                "unnamed",
                &hash.short(),
            )),
            log_labels: ("unnamed".into(), hash.short().into()),
            shared: self.shared.clone(),
            stats: Arc::new(PluginStats::default()),
        })
    }

    /// Validates, compiles (off the async workers) and describes a
    /// component; the result is cached by content hash.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Arc<CompiledPlugin>, LoadError> {
        let hash = ContentHash::of(&bytes);
        if let Some(hit) = self.cached(&hash) {
            return Ok(hit);
        }
        let runtime = self.clone();
        let mut compiled = tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(|e| LoadError::Invalid(format!("compilation task failed: {e}")))??;
        compiled.info = compiled
            .describe()
            .await
            .map_err(|e| LoadError::Describe(Box::new(e)))?;
        let short = compiled.hash.short();
        compiled.series = Arc::new(metrics::PluginSeries::new(
            &self.shared.metrics,
            &compiled.info.name,
            &short,
        ));
        compiled.log_labels = (compiled.info.name.as_str().into(), short.into());
        let ready = Arc::new(compiled);
        let mut cache = self.lock_cache();
        // Another load of the same bytes may have finished first: keep one.
        if let Some(winner) = cache.get(&hash).and_then(std::sync::Weak::upgrade) {
            return Ok(winner);
        }
        cache.retain(|_, weak| weak.strong_count() > 0);
        cache.insert(hash, Arc::downgrade(&ready));
        Ok(ready)
    }

    /// Drops a component from the cache (instances in flight keep theirs).
    pub fn evict(&self, hash: &ContentHash) {
        self.lock_cache().remove(hash);
    }

    /// The bound a `price` result is held to for a request routed by `decision`.
    /// The bound is the route's own, clamped to the operator's per-request
    /// ceiling (`default_surcharge_bound`, also used when the route declares
    /// none), so no plugin can make the host reserve absurd amounts.
    pub fn surcharge_bound(&self, decision: &RouteDecision) -> Decimal {
        let ceiling = self.shared.limits.default_surcharge_bound;
        decision
            .surcharge_bound
            .map_or(ceiling, |bound| bound.min(ceiling))
    }

    fn cached(&self, hash: &ContentHash) -> Option<Arc<CompiledPlugin>> {
        self.lock_cache()
            .get(hash)
            .and_then(std::sync::Weak::upgrade)
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ContentHash, std::sync::Weak<CompiledPlugin>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Freed instance slots are returned to the OS in batches: each batch is one
/// `madvise` round and one TLB shootdown instead of one per instance.
const DECOMMIT_BATCH: usize = 32;

/// Bytes of each linear memory reset in place (copied back from the image or
/// zeroed) instead of decommitted when a slot is reused, so the next
/// instance takes no page faults on them. With `PAGEMAP_SCAN` (Linux 6.7 and
/// later, turned on below) wasmtime asks the kernel which pages the instance
/// wrote and resets up to this many bytes of those, wherever they are; older
/// kernels reset this prefix of the memory whole. A Rust plugin's working set
/// per request (the top of its shadow stack, the written data pages, the SDK's
/// heap arena) is 20-30 pages, and the example plugins start with at most
/// this much memory (a test holds them to it), so on either kind of kernel no
/// page is faulted in twice (`cargo bench -p tollgate --bench plugin_path`,
/// BENCHMARKS.md).
pub const MEMORY_KEEP_RESIDENT: usize = 256 << 10;

/// The largest initial linear memory of any core module in a component
/// (0 if it has none). Only called on bytes wasmtime has already validated.
fn initial_memory_bytes(bytes: &[u8]) -> u64 {
    let mut largest = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::MemorySection(memories)) = payload else {
            continue;
        };
        for memory in memories.into_iter().flatten() {
            let page = 1u64 << memory.page_size_log2.unwrap_or(16);
            largest = largest.max(memory.initial.saturating_mul(page));
        }
    }
    largest
}

/// The same for tables; a plugin's function table is a few KiB, so this
/// covers it whole.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

fn engine(limits: &RuntimeLimits) -> wasmtime::Result<Engine> {
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.decommit_batch_size(DECOMMIT_BATCH)
        // Off by default in wasmtime 48: without it every reset copied or
        // zeroed the whole resident prefix (192 KiB for the examples) even
        // when a request wrote a tenth of it.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .total_component_instances(limits.max_instances)
        .total_core_instances(limits.max_instances.saturating_mul(4))
        .total_memories(limits.max_instances.saturating_mul(2))
        .total_tables(limits.max_instances.saturating_mul(4))
        .total_stacks(limits.max_instances)
        .max_memories_per_component(4)
        .max_memory_size(limits.memory_bytes)
        .table_elements(20_000);
    let mut config = wasmtime::Config::new();
    // Reserve only what the memory cap allows (plus a small guard) instead
    // of wasmtime's default 4 GiB per linear memory: with the pool's 2,000
    // memory slots the default reserves ~8 TiB of address space per engine,
    // which runs out when several engines live in one process (tests, a
    // second runtime for tooling). The price is explicit bounds checks.
    config
        .memory_reservation(u64::try_from(limits.memory_bytes).unwrap_or(u64::MAX))
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .consume_fuel(limits.measure_fuel)
        .max_wasm_stack(limits.max_wasm_stack)
        .async_stack_size(limits.max_wasm_stack + (256 << 10))
        .wasm_backtrace_max_frames(None)
        // Plugins are small and latency matters more than peak throughput of
        // generated code, but Speed is still cheap to compile at this size.
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while plugins run, which
/// is what turns a plugin's deadline into a trap. It parks only once no call
/// has been armed for longer than the longest deadline (and at least
/// [`EPOCH_IDLE_TICKS`]), so every call armed before has reached its deadline
/// epoch and a call still spinning has trapped; the next call to
/// [`EpochTicker::arm`] wakes it. While it is parked the epoch stands still, so
/// a deadline armed then still counts whole ticks from its own start.
struct EpochTicker {
    /// Calls armed so far; the ticker compares it between ticks.
    armed: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
    thread: std::thread::Thread,
    /// Ticks without a newly armed call before parking.
    idle_ticks: u64,
}

impl EpochTicker {
    fn spawn(engine: Engine, longest_deadline: Duration) -> Result<Arc<Self>, RuntimeError> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<EpochTicker>>();
        let handle = std::thread::Builder::new()
            .name("tollgate-epoch".into())
            .spawn(move || {
                if let Ok(ticker) = rx.recv() {
                    ticker.run(&engine);
                }
            })
            .map_err(|e| RuntimeError(format!("cannot start the epoch thread: {e}")))?;
        let ticker = Arc::new(EpochTicker {
            armed: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: handle.thread().clone(),
            idle_ticks: EPOCH_IDLE_TICKS.max(deadline_ticks(longest_deadline) + 2),
        });
        tx.send(ticker.clone())
            .map_err(|_| RuntimeError("the epoch thread ended at start".into()))?;
        Ok(ticker)
    }

    fn run(&self, engine: &Engine) {
        let mut seen = self.armed.load(Ordering::SeqCst);
        let mut idle = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
            let now = self.armed.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if idle < self.idle_ticks {
                continue;
            }
            // Announce the park, then look once more: a call armed before the
            // announcement is seen here, one armed after it sees `parked` and
            // unparks (SeqCst orders the two sides).
            self.parked.store(true, Ordering::SeqCst);
            if self.armed.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            self.parked.store(false, Ordering::SeqCst);
            idle = 0;
        }
    }

    /// Called before a plugin runs under a deadline.
    fn arm(&self) {
        self.armed.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }

    fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

/// Which version of the contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldVersion {
    /// `tollgate:plugin@0.1.x`: decimals as text, the configuration and
    /// request passed to every capability.
    V0_1,
    /// `tollgate:plugin@0.2.x`: binary decimals, a per-request
    /// `request-context`. What the SDK builds.
    V0_2,
}

impl WorldVersion {
    fn from_export(name: &str) -> Option<Self> {
        if name.starts_with("tollgate:plugin/plugin@0.1.") {
            Some(WorldVersion::V0_1)
        } else if name.starts_with("tollgate:plugin/plugin@0.2.") {
            Some(WorldVersion::V0_2)
        } else {
            None
        }
    }

    /// The package version, e.g. `tollgate:plugin@0.2`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WorldVersion::V0_1 => "tollgate:plugin@0.1",
            WorldVersion::V0_2 => "tollgate:plugin@0.2",
        }
    }
}

/// A component's pre-linked instantiation, by contract version.
enum Pre {
    V0_1(v0_1::AgencyPluginPre<StoreState>),
    V0_2(v0_2::AgencyPluginPre<StoreState>),
}

impl Pre {
    async fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Guest> {
        Ok(match self {
            Pre::V0_1(pre) => Guest::V0_1 {
                plugin: pre.instantiate_async(store).await?,
                request: None,
            },
            Pre::V0_2(pre) => Guest::V0_2 {
                plugin: pre.instantiate_async(store).await?,
                context: None,
            },
        })
    }
}

/// An instantiated plugin, by contract version. Each method converts the
/// plain inputs into the version's bindings, calls, and converts the output
/// back, measuring it first for the output cap. The request side of a call
/// is prepared once per session and reused by the next capabilities (the
/// gateway calls `meter` and `price` with the same request): 0.1 keeps the
/// converted summary, 0.2 its `request-context`.
enum Guest {
    V0_1 {
        plugin: v0_1::AgencyPlugin,
        request: Option<Box<Prepared<v0_1::tollgate::plugin::types::RequestSummary>>>,
    },
    V0_2 {
        plugin: v0_2::AgencyPlugin,
        context: Option<Box<Prepared<wasmtime::component::ResourceAny>>>,
    },
}

/// What a session prepared for one configuration and request, kept with
/// them: a capability called with the same pair reuses it, a different pair
/// prepares afresh, so reuse never changes an answer.
struct Prepared<T> {
    config: String,
    request: RequestSummary,
    value: T,
}

impl<T> Prepared<T> {
    fn new(config: &str, request: &RequestSummary, value: T) -> Box<Self> {
        Box::new(Prepared {
            config: config.to_owned(),
            request: request.clone(),
            value,
        })
    }

    /// The prepared value, if it was made for this configuration and request.
    fn get<'a>(
        slot: &'a Option<Box<Self>>,
        config: &str,
        request: &RequestSummary,
    ) -> Option<&'a T> {
        slot.as_ref()
            .filter(|p| p.config == config && p.request == *request)
            .map(|p| &p.value)
    }
}

/// A call's output: its size on the wire (for the output cap) and its value
/// in plain types, or why the plugin's output was invalid.
struct Out<T> {
    size: usize,
    value: Result<T, PluginError>,
}

impl<T> WireSize for Out<T> {
    fn wire_size(&self) -> usize {
        self.size
    }
}

/// `result<T, string>` from `meter`/`price`: the plugin's own error is
/// reported as is, the value is converted.
fn reported<W, T>(
    raw: Result<W, String>,
    convert: impl FnOnce(W) -> Result<T, PluginError>,
) -> Result<Result<T, String>, PluginError> {
    match raw {
        Ok(value) => convert(value).map(Ok),
        Err(message) => Ok(Err(message)),
    }
}

impl Guest {
    async fn describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Out<PluginInfo>> {
        Ok(match self {
            Guest::V0_1 { plugin, .. } => {
                let raw = plugin.tollgate_plugin_plugin().call_describe(store).await?;
                Out {
                    size: raw.wire_size(),
                    value: Ok(convert::v0_1::info_out(raw)),
                }
            }
            Guest::V0_2 { plugin, .. } => {
                let raw = plugin.tollgate_plugin_plugin().call_describe(store).await?;
                Out {
                    size: raw.wire_size(),
                    value: Ok(convert::v0_2::info_out(raw)),
                }
            }
        })
    }

    async fn validate_config(
        &self,
        store: &mut Store<StoreState>,
        config: &str,
    ) -> wasmtime::Result<Out<Result<(), String>>> {
        let raw = match self {
            Guest::V0_1 { plugin, .. } => {
                plugin
                    .tollgate_plugin_plugin()
                    .call_validate_config(store, config)
                    .await?
            }
            Guest::V0_2 { plugin, .. } => {
                plugin
                    .tollgate_plugin_plugin()
                    .call_validate_config(store, config)
                    .await?
            }
        };
        Ok(Out {
            size: raw.wire_size(),
            value: Ok(raw),
        })
    }

    /// The 0.1 binding form of `request`, converted on first use.
    fn summary<'a>(
        slot: &'a mut Option<Box<Prepared<v0_1::tollgate::plugin::types::RequestSummary>>>,
        config: &str,
        request: &RequestSummary,
    ) -> &'a v0_1::tollgate::plugin::types::RequestSummary {
        if Prepared::get(slot, config, request).is_none() {
            *slot = None;
        }
        &slot
            .get_or_insert_with(|| Prepared::new(config, request, convert::v0_1::request(request)))
            .value
    }

    /// The 0.2 `request-context` for `config` and `request`, made on first use.
    async fn context(
        plugin: &v0_2::AgencyPlugin,
        slot: &mut Option<Box<Prepared<wasmtime::component::ResourceAny>>>,
        store: &mut Store<StoreState>,
        config: &str,
        request: &RequestSummary,
    ) -> wasmtime::Result<wasmtime::component::ResourceAny> {
        if let Some(handle) = Prepared::get(slot, config, request) {
            return Ok(*handle);
        }
        let handle = plugin
            .tollgate_plugin_plugin()
            .request_context()
            .call_constructor(store, config, &convert::v0_2::request(request))
            .await?;
        *slot = Some(Prepared::new(config, request, handle));
        Ok(handle)
    }

    async fn route(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> wasmtime::Result<Out<Result<RouteDecision, Rejection>>> {
        Ok(match self {
            Guest::V0_1 {
                plugin,
                request: slot,
            } => {
                let summary = Self::summary(slot, config, request);
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .call_route(store, config, summary, &convert::v0_1::offers(offers))
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: convert::v0_1::route_out(raw),
                }
            }
            Guest::V0_2 { plugin, context } => {
                let handle = Self::context(plugin, context, store, config, request).await?;
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .request_context()
                    .call_route(store, handle, &convert::v0_2::offers(offers))
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: convert::v0_2::route_out(raw),
                }
            }
        })
    }

    async fn meter(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
    ) -> wasmtime::Result<Out<Result<Vec<BusinessUnit>, String>>> {
        Ok(match self {
            Guest::V0_1 {
                plugin,
                request: slot,
            } => {
                let summary = Self::summary(slot, config, request);
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .call_meter(store, config, summary, &convert::v0_1::usage(usage))
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: reported(raw, convert::v0_1::units_out),
                }
            }
            Guest::V0_2 { plugin, context } => {
                let handle = Self::context(plugin, context, store, config, request).await?;
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .request_context()
                    .call_meter(store, handle, &convert::v0_2::usage(usage))
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: reported(raw, convert::v0_2::units_out),
                }
            }
        })
    }

    async fn price(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
    ) -> wasmtime::Result<Out<Result<PriceQuote, String>>> {
        Ok(match self {
            Guest::V0_1 {
                plugin,
                request: slot,
            } => {
                let summary = Self::summary(slot, config, request);
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .call_price(
                        store,
                        config,
                        summary,
                        &convert::v0_1::usage(usage),
                        &convert::v0_1::units(units),
                    )
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: reported(raw, convert::v0_1::quote_out),
                }
            }
            Guest::V0_2 { plugin, context } => {
                let handle = Self::context(plugin, context, store, config, request).await?;
                let raw = plugin
                    .tollgate_plugin_plugin()
                    .request_context()
                    .call_price(
                        store,
                        handle,
                        &convert::v0_2::usage(usage),
                        &convert::v0_2::units(units),
                    )
                    .await?;
                Out {
                    size: raw.wire_size(),
                    value: reported(raw, convert::v0_2::quote_out),
                }
            }
        })
    }
}

/// The capability a call exercised, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `describe`.
    Describe,
    /// `validate-config`.
    ValidateConfig,
    /// `route`.
    Route,
    /// `meter`.
    Meter,
    /// `price`.
    Price,
}

impl Capability {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Capability::Describe => "describe",
            Capability::ValidateConfig => "validate_config",
            Capability::Route => "route",
            Capability::Meter => "meter",
            Capability::Price => "price",
        }
    }
}

/// A validated, compiled plugin, ready to instantiate.
pub struct CompiledPlugin {
    hash: ContentHash,
    size: usize,
    compile_time: Duration,
    initial_memory_bytes: u64,
    world: WorldVersion,
    imports: Vec<String>,
    exports: Vec<String>,
    pre: Pre,
    info: PluginInfo,
    shared: Arc<Shared>,
    stats: Arc<PluginStats>,
    series: Arc<metrics::PluginSeries>,
    /// Name and short hash, shared by every instance's log lines.
    log_labels: (Arc<str>, Arc<str>),
}

impl CompiledPlugin {
    /// The sha256 of the component's bytes.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// Name, version and description, as the plugin reports them.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long compilation took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// The largest initial size of its linear memories: what a fresh
    /// instance starts with (shadow stack, static data, first heap). An
    /// instance touching no more than [`MEMORY_KEEP_RESIDENT`] takes no page
    /// faults when its pool slot is reused.
    pub fn initial_memory_bytes(&self) -> u64 {
        self.initial_memory_bytes
    }

    /// The contract version it implements.
    pub fn world(&self) -> WorldVersion {
        self.world
    }

    /// Its import names.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Its export names.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }

    /// Calls, errors and latency of this version's calls made without a
    /// tenant: at load, by the admin API and by the local tools. A tenant's
    /// calls ([`CompiledPlugin::session_for`]) count in that tenant's figures
    /// instead, so each call is counted once.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// A fresh instance for one request.
    pub async fn session(&self, request_id: &str) -> Result<Session, PluginError> {
        self.session_with_deadline(request_id, self.shared.limits.deadline, self.stats.clone())
            .await
    }

    /// A fresh instance for one request whose calls are counted in
    /// `tenant_stats`: one agency's figures for this version, apart from any
    /// other agency that uploaded the same bytes.
    pub async fn session_for(
        &self,
        request_id: &str,
        tenant_stats: Arc<PluginStats>,
    ) -> Result<Session, PluginError> {
        self.session_with_deadline(request_id, self.shared.limits.deadline, tenant_stats)
            .await
    }

    /// A fresh instance created before the request that will use it, so
    /// instantiation need not delay that request. `None` when
    /// [`MAX_WARM_INSTANCES`] are already waiting or instantiation fails (the
    /// request then instantiates as usual and meets the error itself, so it
    /// is not counted here).
    pub async fn warm_session_for(&self, tenant_stats: Arc<PluginStats>) -> Option<WarmSession> {
        use std::sync::atomic::Ordering;
        let warm = &self.shared.warm;
        warm.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_WARM_INSTANCES).then_some(n + 1)
        })
        .ok()?;
        let slot = WarmSlot(self.shared.clone());
        let deadline = self.shared.limits.deadline;
        let session = self
            .build_session("(warm)", deadline, tenant_stats, false)
            .await
            .ok()?;
        Some(WarmSession {
            session,
            _slot: slot,
        })
    }

    /// A fresh instance for an admin-time call (`describe` at load,
    /// `validate-config` at bind): no client is waiting on it, so a loaded
    /// machine must not fail an upload or a binding over a few milliseconds.
    async fn admin_session(&self, label: &str) -> Result<Session, PluginError> {
        let deadline = self.shared.limits.deadline.max(ADMIN_DEADLINE);
        self.session_with_deadline(label, deadline, self.stats.clone())
            .await
    }

    async fn session_with_deadline(
        &self,
        request_id: &str,
        deadline: Duration,
        stats: Arc<PluginStats>,
    ) -> Result<Session, PluginError> {
        self.build_session(request_id, deadline, stats, true).await
    }

    /// Instantiates; a failure is counted in `stats` and the metrics when
    /// `count_failure`.
    async fn build_session(
        &self,
        request_id: &str,
        deadline: Duration,
        stats: Arc<PluginStats>,
        count_failure: bool,
    ) -> Result<Session, PluginError> {
        let limits = &self.shared.limits;
        let state = StoreState::new(
            limits.memory_bytes,
            LogContext::new(
                self.log_labels.0.clone(),
                self.log_labels.1.clone(),
                request_id,
            ),
        );
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        self.shared.ticker.arm();
        store.set_epoch_deadline(deadline_ticks(deadline));
        if limits.measure_fuel {
            store
                .set_fuel(u64::MAX)
                .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        }
        let guest = match self.pre.instantiate(&mut store).await {
            Ok(guest) => guest,
            Err(e) => {
                let error = classify(e, &store, deadline, limits.memory_bytes);
                if count_failure {
                    stats.record(Duration::ZERO, true);
                    self.series.record_error(Capability::Describe, &error);
                }
                return Err(error);
            }
        };
        Ok(Session {
            store,
            guest,
            deadline,
            series: self.series.clone(),
            shared: self.shared.clone(),
            stats,
            poisoned: false,
        })
    }

    /// Asks the plugin who it is.
    async fn describe(&self) -> Result<PluginInfo, PluginError> {
        let mut session = self.admin_session("load").await?;
        session.describe().await
    }

    /// Runs the plugin's config check in a fresh instance: `Ok(Err(msg))` is
    /// the plugin refusing the config.
    pub async fn validate_config(&self, config: &str) -> Result<Result<(), String>, PluginError> {
        let mut session = self.admin_session("validate-config").await?;
        session.validate_config(config).await
    }
}

fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    // One extra tick: the current tick may be about to end.
    u64::try_from(deadline.as_micros().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
        + 1
}

/// Counts one waiting instance in [`MAX_WARM_INSTANCES`] until dropped.
struct WarmSlot(Arc<Shared>);

impl Drop for WarmSlot {
    fn drop(&mut self) {
        self.0
            .warm
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// An instance created ahead of its request
/// ([`CompiledPlugin::warm_session_for`]). It serves exactly one request, as
/// any [`Session`] does; it has only been instantiated, never called.
pub struct WarmSession {
    session: Session,
    _slot: WarmSlot,
}

impl WarmSession {
    /// The instance, now serving `request_id` (its log lines say so); it no
    /// longer counts as waiting.
    pub fn into_session(self, request_id: &str) -> Session {
        let WarmSession { mut session, .. } = self;
        request_id.clone_into(&mut session.store.data_mut().log.request_id);
        session
    }
}

/// One plugin instance serving one request. Drop it when done.
pub struct Session {
    store: Store<StoreState>,
    guest: Guest,
    deadline: Duration,
    series: Arc<metrics::PluginSeries>,
    shared: Arc<Shared>,
    /// Where this session's calls are counted: the tenant's figures, or the
    /// plugin's own for calls made without one.
    stats: Arc<PluginStats>,
    poisoned: bool,
}

impl Session {
    /// The request this instance serves (its log lines carry it).
    pub fn request_id(&self) -> &str {
        &self.store.data().log.request_id
    }

    /// Peak linear memory of this instance so far, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Fuel consumed so far, when the runtime measures fuel.
    pub fn fuel_consumed(&self) -> Option<u64> {
        if !self.shared.limits.measure_fuel {
            return None;
        }
        self.store.get_fuel().ok().map(|left| u64::MAX - left)
    }

    fn begin(&mut self, input_size: usize) -> Result<Instant, PluginError> {
        if self.poisoned {
            return Err(PluginError::Instantiate(
                "instance is unusable after an earlier failure".into(),
            ));
        }
        let limit = self.shared.limits.max_input_bytes;
        if input_size > limit {
            return Err(PluginError::InputTooLarge {
                size: input_size,
                limit,
            });
        }
        self.shared.ticker.arm();
        self.store.set_epoch_deadline(deadline_ticks(self.deadline));
        Ok(Instant::now())
    }

    fn finish<R: WireSize>(
        &mut self,
        capability: Capability,
        started: Instant,
        result: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, PluginError> {
        let elapsed = started.elapsed();
        let limits = &self.shared.limits;
        let outcome = match result {
            Err(_elapsed) => Err(PluginError::Timeout(self.deadline)),
            Ok(Err(e)) => Err(classify(e, &self.store, self.deadline, limits.memory_bytes)),
            Ok(Ok(value)) => {
                let size = value.wire_size();
                if size > limits.max_output_bytes {
                    Err(PluginError::OutputTooLarge {
                        size,
                        limit: limits.max_output_bytes,
                    })
                } else {
                    Ok(value)
                }
            }
        };
        if outcome.is_err() {
            self.poisoned = true;
        }
        self.stats.record(elapsed, outcome.is_err());
        self.series
            .record(capability, elapsed, outcome.as_ref().err());
        outcome
    }

    /// Records a failure found after the call returned (invalid output).
    fn reject_output(&mut self, capability: Capability, error: PluginError) -> PluginError {
        self.poisoned = true;
        self.series.record_error(capability, &error);
        self.stats.record_error_only();
        error
    }

    /// A hard stop above the epoch deadline, for time spent in host calls.
    fn hard_deadline(&self) -> Duration {
        self.deadline + Duration::from_millis(50)
    }

    async fn describe(&mut self) -> Result<PluginInfo, PluginError> {
        let started = self.begin(0)?;
        let hard = self.hard_deadline();
        let call = self.guest.describe(&mut self.store);
        let result = tokio::time::timeout(hard, call).await;
        let out = self.finish(Capability::Describe, started, result)?;
        let info = out
            .value
            .map_err(|e| self.reject_output(Capability::Describe, e))?;
        if info.name.is_empty() || info.name.len() > 64 || info.version.len() > 64 {
            return Err(self.reject_output(
                Capability::Describe,
                PluginError::InvalidOutput("plugin name must be 1 to 64 characters".into()),
            ));
        }
        Ok(info)
    }

    /// `validate-config`: `Ok(Err(msg))` is the plugin refusing the config.
    pub async fn validate_config(
        &mut self,
        config: &str,
    ) -> Result<Result<(), String>, PluginError> {
        let started = self.begin(config.wire_size())?;
        let hard = self.hard_deadline();
        let call = self.guest.validate_config(&mut self.store, config);
        let result = tokio::time::timeout(hard, call).await;
        let out = self.finish(Capability::ValidateConfig, started, result)?;
        out.value
            .map_err(|e| self.reject_output(Capability::ValidateConfig, e))
    }

    /// `route`, with the decision checked against `offers`.
    pub async fn route(
        &mut self,
        config: &str,
        request: &RequestSummary,
        offers: &[ModelOffer],
    ) -> Result<Result<RouteDecision, Rejection>, PluginError> {
        let started = self.begin(config.wire_size() + request.wire_size() + offers.wire_size())?;
        let hard = self.hard_deadline();
        let call = self.guest.route(&mut self.store, config, request, offers);
        let result = tokio::time::timeout(hard, call).await;
        let out = self.finish(Capability::Route, started, result)?;
        let routed = out
            .value
            .map_err(|e| self.reject_output(Capability::Route, e))?;
        let checked = match &routed {
            Ok(decision) => validate::check_route(decision, offers),
            Err(rejection) => validate::check_rejection(rejection),
        };
        checked.map_err(|e| {
            self.reject_output(Capability::Route, PluginError::InvalidOutput(e.to_string()))
        })?;
        Ok(routed)
    }

    /// `meter`, with the units checked.
    pub async fn meter(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
    ) -> Result<Vec<BusinessUnit>, PluginError> {
        let started = self.begin(config.wire_size() + request.wire_size() + usage.wire_size())?;
        let hard = self.hard_deadline();
        let call = self.guest.meter(&mut self.store, config, request, usage);
        let result = tokio::time::timeout(hard, call).await;
        let out = self.finish(Capability::Meter, started, result)?;
        let units = out
            .value
            .map_err(|e| self.reject_output(Capability::Meter, e))?
            .map_err(PluginError::Reported)?;
        validate::check_units(&units).map_err(|e| {
            self.reject_output(Capability::Meter, PluginError::InvalidOutput(e.to_string()))
        })?;
        Ok(units)
    }

    /// `price`, with the quote held to `bound`.
    pub async fn price(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        units: &[BusinessUnit],
        bound: Decimal,
    ) -> Result<PriceQuote, PluginError> {
        let started = self.begin(
            config.wire_size() + request.wire_size() + usage.wire_size() + units.wire_size(),
        )?;
        let hard = self.hard_deadline();
        let call = self
            .guest
            .price(&mut self.store, config, request, usage, units);
        let result = tokio::time::timeout(hard, call).await;
        let out = self.finish(Capability::Price, started, result)?;
        let quote = out
            .value
            .map_err(|e| self.reject_output(Capability::Price, e))?
            .map_err(PluginError::Reported)?;
        validate::check_quote(&quote, bound).map_err(|e| {
            self.reject_output(Capability::Price, PluginError::InvalidOutput(e.to_string()))
        })?;
        Ok(quote)
    }

    /// `meter`, then `price` on its units: what the gateway does once a
    /// request is served. The request is prepared once for both calls (see
    /// `Guest`).
    pub async fn meter_and_price(
        &mut self,
        config: &str,
        request: &RequestSummary,
        usage: &Usage,
        bound: Decimal,
    ) -> Result<(Vec<BusinessUnit>, PriceQuote), PluginError> {
        let units = self.meter(config, request, usage).await?;
        let quote = self.price(config, request, usage, &units, bound).await?;
        Ok((units, quote))
    }
}

/// Turns a wasmtime error into the plugin's typed failure.
fn classify(
    error: wasmtime::Error,
    store: &Store<StoreState>,
    deadline: Duration,
    memory_bytes: usize,
) -> PluginError {
    if store.data().limiter.hit_limit {
        return PluginError::MemoryLimit(memory_bytes);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout(deadline),
        Some(Trap::StackOverflow) => PluginError::StackOverflow,
        Some(Trap::UnreachableCodeReached) => {
            PluginError::Trap("unreachable code reached (a panic in Rust plugins)".into())
        }
        Some(trap) => PluginError::Trap(trap.to_string()),
        None => {
            if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return PluginError::Trap(format!("plugin called exit({})", exit.0));
            }
            let text = format!("{error:#}");
            if text.contains("pooling allocator") || text.contains("maximum concurrent") {
                PluginError::Instantiate(text)
            } else {
                PluginError::Trap(text)
            }
        }
    }
}
