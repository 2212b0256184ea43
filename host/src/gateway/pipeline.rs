//! The path of one data-path request, independent of HTTP framing:
//! summary → plugin route (with the failure policy) → spend reservation →
//! upstream attempts down the fallback list → plugin meter and price →
//! exactly one usage record.
//!
//! A request either is refused before any provider is called (nothing is
//! reserved or billed), or ends with exactly one usage record, which also
//! settles its reservation.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_ledger::{
    Durability, Ledger, PluginRef, QueuedRecord, RecordFlags, Reservation, Tokens, UsageRecord,
};
use tollgate_plugin_types::{
    BusinessUnit, Endpoint, ModelOffer, OfferRef, Outcome, PeriodUsage, PriceQuote, RequestSummary,
    RouteDecision, Usage,
};
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use super::metrics::GatewayMetrics;
use super::tenancy::Caller;
use crate::config::{CatalogEntry, ModelKind};
use crate::plugin::PluginError;
use crate::plugin::policy::{self, RouteOutcome};
use crate::upstream::{UpstreamError, UpstreamPath, UpstreamRequest, UpstreamResponse};

/// A request that passed routing and reservation, ready for the upstream.
pub struct Prepared {
    /// The caller.
    pub caller: Caller,
    /// The summary the plugin saw.
    pub summary: RequestSummary,
    /// The route in force.
    pub decision: RouteDecision,
    /// The plugin failure bypassed by fail-open routing, if any.
    pub route_failed_open: Option<PluginError>,
    /// The surcharge bound `price` is held to.
    pub bound: Decimal,
    /// The spend reservation this request settles (none when nothing can be
    /// charged: a free model with a zero surcharge bound).
    pub reservation: Option<Reservation>,
    /// When the request arrived.
    pub started_at: DateTime<Utc>,
}

/// The model kind an endpoint serves.
pub fn model_kind(endpoint: Endpoint) -> ModelKind {
    match endpoint {
        Endpoint::ChatCompletions => ModelKind::Chat,
        Endpoint::Embeddings => ModelKind::Embeddings,
    }
}

/// What the host knows before routing, taken from the parsed body.
pub struct Incoming {
    /// The request id.
    pub request_id: String,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The body's `model`.
    pub model: String,
    /// Chat messages (0 for embeddings).
    pub message_count: u32,
    /// Prompt tokens counted with the tokenizer.
    pub prompt_tokens: u32,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Whether a stream was asked for.
    pub stream: bool,
    /// The body's `user`.
    pub end_user: Option<String>,
    /// Tags from headers and `metadata`.
    pub tags: BTreeMap<String, String>,
}

/// Routes and reserves. Errors are ready for the client.
pub async fn prepare(
    state: &AppState,
    caller: Caller,
    incoming: Incoming,
) -> Result<Prepared, ApiError> {
    let started_at = Utc::now();
    let client = &caller.client;
    if let Some(limit) = &client.rate_limit {
        limit.check()?;
    }
    let offers = state
        .catalog
        .offers_for(client, model_kind(incoming.endpoint));
    if !offers.iter().any(|o| o.model == incoming.model) {
        return Err(ApiError::unknown_model(&incoming.model));
    }
    let period = state.ledger.current_period();
    let so_far = state
        .ledger
        .usage_so_far(&client.id, period)
        .map_err(|e| ApiError::from_ledger(&e))?;
    let summary = RequestSummary {
        request_id: incoming.request_id,
        timestamp_ms: started_at.timestamp_millis(),
        agency_id: client.agency_id.clone(),
        client_id: client.id.clone(),
        app_id: caller.app_id.clone(),
        endpoint: incoming.endpoint,
        requested_model: incoming.model,
        message_count: incoming.message_count,
        estimated_prompt_tokens: incoming.prompt_tokens,
        max_tokens: incoming.max_tokens,
        stream: incoming.stream,
        end_user: incoming.end_user,
        currency: state.ledger.currency().code().to_owned(),
        usage_so_far: PeriodUsage {
            period_start_ms: state.ledger.calendar().start(period).timestamp_millis(),
            spend: so_far.spend,
            request_count: u64::try_from(so_far.requests).unwrap_or(0),
            units: so_far.units,
        },
        tags: incoming.tags,
    };
    let binding = &client.binding;
    let routed = match binding.session(&summary.request_id).await {
        Ok(mut session) => session.route(&binding.config, &summary, &offers).await,
        // No instance slot is free: the gateway is at capacity. That is not
        // the plugin's failure, so its policy does not apply.
        Err(PluginError::Instantiate(detail)) => {
            tracing::warn!(%detail, "no plugin instance available");
            return Err(ApiError::unavailable(
                "the gateway is at capacity; retry shortly",
            ));
        }
        Err(e) => Err(e),
    };
    let (decision, route_failed_open) = match policy::route_outcome(
        binding.policy,
        routed,
        &summary,
        &offers,
    ) {
        RouteOutcome::Route {
            decision,
            failed_open,
        } => (decision, failed_open),
        RouteOutcome::Rejected(rejection) => return Err(ApiError::rejected(&rejection)),
        RouteOutcome::Failed(error) => {
            tracing::warn!(plugin = %binding.plugin.info().name, error = %error, "plugin route failed; refusing (fail-closed)");
            return Err(ApiError::plugin_failed(
                &binding.plugin.info().name,
                &error,
                true,
            ));
        }
    };
    if let Some(error) = &route_failed_open {
        tracing::warn!(plugin = %binding.plugin.info().name, error = %error, "plugin route failed; serving as requested (fail-open)");
    }
    let bound = if route_failed_open.is_some() {
        Decimal::ZERO
    } else {
        state.runtime.surcharge_bound(&decision)
    };
    let estimate = max_cost(&decision, &offers, &summary) + bound;
    let reservation = if estimate.is_zero() {
        None
    } else {
        Some(
            state
                .ledger
                .reserve(&client.id, estimate)
                .map_err(|e| ApiError::from_ledger(&e))?,
        )
    };
    Ok(Prepared {
        caller,
        summary,
        decision,
        route_failed_open,
        bound,
        reservation,
        started_at,
    })
}

/// The most any attempt of the route can cost at provider prices: every
/// prompt token, plus `max_tokens` (or the rest of the window) of output.
fn max_cost(decision: &RouteDecision, offers: &[ModelOffer], summary: &RequestSummary) -> Decimal {
    decision
        .attempts()
        .filter_map(|r| offers.iter().find(|o| o.is(r)))
        .map(|o| {
            let output = summary.max_tokens.unwrap_or_else(|| {
                o.context_window
                    .saturating_sub(summary.estimated_prompt_tokens)
            });
            o.cost(summary.estimated_prompt_tokens, output, 0)
        })
        .max()
        .unwrap_or_default()
}

/// The attempt that answered.
pub struct Answer {
    /// The catalog entry that served.
    pub entry: CatalogEntry,
    /// The provider's response (status may be a non-retryable error).
    pub response: UpstreamResponse,
    /// When the winning attempt started.
    pub started: Instant,
}

/// Why no attempt answered.
pub struct NoAnswer {
    /// The error for the client.
    pub error: ApiError,
    /// The last offer tried.
    pub last: Option<CatalogEntry>,
}

/// Calls the route's offers in order. Connect errors, 429 and 5xx are retried
/// on the same provider up to its `max_retries`, then the next fallback is
/// tried; a timeout moves straight to the next fallback. Nothing is retried
/// once a response is accepted (so never after a stream's first byte).
pub async fn call_upstream(
    state: &AppState,
    prepared: &Prepared,
    path: UpstreamPath,
    body: &Value,
) -> Result<Answer, NoAnswer> {
    let stream = prepared.summary.stream;
    let mut last_error = String::from("no provider was available");
    let mut timed_out = false;
    let mut last = None;
    for attempt in prepared.decision.attempts() {
        let Some(entry) = state.catalog.entry(attempt) else {
            continue;
        };
        let Some((provider, settings)) = state.upstreams.get(&entry.offer.provider) else {
            continue;
        };
        last = Some(entry.clone());
        let upstream_body = upstream_body(body, &entry.upstream_model, stream);
        for try_number in 0..=settings.max_retries {
            let started = Instant::now();
            let request = UpstreamRequest {
                path,
                body: upstream_body.clone(),
                stream,
            };
            let provider_label = entry.offer.provider.as_str();
            match provider.send(request).await {
                Ok(response) if response.status == 429 || response.status >= 500 => {
                    state
                        .metrics
                        .upstream_attempt(provider_label, "retryable_status");
                    last_error =
                        format!("{} answered HTTP {}", entry.offer.provider, response.status);
                    timed_out = false;
                    tracing::info!(
                        provider = provider_label,
                        status = response.status,
                        try_number,
                        "upstream attempt failed"
                    );
                }
                Ok(response) => {
                    state.metrics.upstream_attempt(provider_label, "ok");
                    return Ok(Answer {
                        entry: entry.clone(),
                        response,
                        started,
                    });
                }
                Err(UpstreamError::Timeout(t)) => {
                    state.metrics.upstream_attempt(provider_label, "timeout");
                    last_error = format!("{} did not answer within {t:?}", entry.offer.provider);
                    timed_out = true;
                    break;
                }
                Err(e) => {
                    state
                        .metrics
                        .upstream_attempt(provider_label, "connect_error");
                    last_error = format!("{}: {e}", entry.offer.provider);
                    timed_out = false;
                    tracing::info!(provider = provider_label, error = %e, try_number, "upstream attempt failed");
                }
            }
        }
    }
    Err(NoAnswer {
        error: ApiError::upstream(timed_out, &last_error),
        last,
    })
}

/// The client's body as the provider must see it: the upstream model name,
/// and for streams `stream_options.include_usage` forced on (the usage chunk
/// is stripped again if the client did not ask for it). Unknown fields pass
/// through untouched.
fn upstream_body(body: &Value, upstream_model: &str, stream: bool) -> bytes::Bytes {
    let rewritten = Rewritten {
        body,
        model: upstream_model,
        stream,
    };
    bytes::Bytes::from(serde_json::to_vec(&rewritten).unwrap_or_default())
}

/// Serializes the client's body with the rewrites, without copying it.
struct Rewritten<'a> {
    body: &'a Value,
    model: &'a str,
    stream: bool,
}

impl serde::Serialize for Rewritten<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let fields = self.body.as_object();
        for (key, value) in fields.into_iter().flatten() {
            if key == "model" || (self.stream && key == "stream_options") {
                continue;
            }
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("model", self.model)?;
        if self.stream {
            let mut options = fields
                .and_then(|f| f.get("stream_options"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            options.insert("include_usage".into(), Value::Bool(true));
            map.serialize_entry("stream_options", &options)?;
        }
        map.end()
    }
}

/// What the provider reported (or the host estimated) for one request.
#[derive(Debug, Clone)]
pub struct Consumption {
    /// Prompt tokens, cached included (as providers report them).
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Cached prompt tokens.
    pub cached_tokens: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Counts are the host's estimate.
    pub estimated: bool,
    /// The response stopped early.
    pub partial: bool,
}

impl Consumption {
    /// Reads an OpenAI `usage` object.
    pub fn from_usage(usage: &Value, outcome: Outcome) -> Option<Self> {
        let count = |pointer: &str| {
            usage
                .pointer(pointer)
                .and_then(Value::as_u64)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        Some(Self {
            prompt_tokens: count("/prompt_tokens")?,
            completion_tokens: count("/completion_tokens").unwrap_or(0),
            cached_tokens: count("/prompt_tokens_details/cached_tokens").unwrap_or(0),
            outcome,
            estimated: false,
            partial: false,
        })
    }
}

/// The billed outcome of a request, as shown to the client.
#[derive(Debug, Clone)]
pub struct Bill {
    /// The offer that served.
    pub served_by: OfferRef,
    /// Provider cost.
    pub provider_cost: Decimal,
    /// Agency surcharge.
    pub surcharge: Decimal,
    /// Charged to the client.
    pub total: Decimal,
    /// Business units.
    pub units: Vec<BusinessUnit>,
    /// Statement description.
    pub description: String,
    /// Record flags.
    pub flags: RecordFlags,
    /// A fail-closed plugin failure after the provider answered.
    pub plugin_failure: Option<PluginError>,
}

impl Bill {
    /// `name=qty;name=qty`, for the `x-tollgate-units` header.
    pub fn units_header(&self) -> String {
        self.units
            .iter()
            .map(|u| format!("{}={}", u.name, u.quantity.normalize()))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The figures as JSON, for the final SSE chunk.
    pub fn to_json(&self, request_id: &str) -> Value {
        let units: serde_json::Map<String, Value> = self
            .units
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Value::String(u.quantity.normalize().to_string()),
                )
            })
            .collect();
        serde_json::json!({
            "request_id": request_id,
            "model": self.served_by.model,
            "provider": self.served_by.provider,
            "provider_cost": self.provider_cost.to_string(),
            "surcharge": self.surcharge.to_string(),
            "total": self.total.to_string(),
            "units": units,
        })
    }
}

/// Meters and prices what was consumed and writes the one usage record,
/// settling the reservation.
pub async fn settle(
    state: &AppState,
    prepared: &Prepared,
    served: &CatalogEntry,
    used: Consumption,
) -> Result<Bill, ApiError> {
    let offer = &served.offer;
    let cached = used.cached_tokens.min(used.prompt_tokens);
    let input = used.prompt_tokens - cached;
    let provider_cost = offer.cost(input, used.completion_tokens, cached);
    let usage = Usage {
        served_by: offer.reference(),
        input_tokens: input,
        output_tokens: used.completion_tokens,
        cached_input_tokens: cached,
        provider_cost,
        latency_ms: u32::try_from((Utc::now() - prepared.started_at).num_milliseconds().max(0))
            .unwrap_or(u32::MAX),
        outcome: used.outcome,
        estimated: used.estimated,
    };
    let binding = &prepared.caller.client.binding;
    let mut flags = RecordFlags {
        partial: used.partial,
        estimated: used.estimated,
        fail_open: prepared.route_failed_open.is_some(),
        failed: used.outcome == Outcome::Failed,
    };
    let mut plugin_failure = None;
    let (units, quote) = if prepared.route_failed_open.is_some() {
        (Vec::new(), PriceQuote::zero())
    } else {
        let charged = meter_and_price(prepared, &usage).await;
        match policy::charge(binding.policy, charged) {
            Ok(charge) => {
                if let Some(error) = &charge.failed_open {
                    tracing::warn!(plugin = %binding.plugin.info().name, error = %error, "plugin meter/price failed; zero surcharge (fail-open)");
                    flags.fail_open = true;
                }
                (charge.units, charge.quote)
            }
            Err(error) => {
                tracing::warn!(plugin = %binding.plugin.info().name, error = %error, "plugin meter/price failed; not billing the client (fail-closed)");
                flags.failed = true;
                plugin_failure = Some(error);
                (Vec::new(), PriceQuote::zero())
            }
        }
    };
    // A fail-closed plugin failure bills the client nothing; the provider
    // cost stays on the record for provider settlement.
    let total = if plugin_failure.is_some() {
        Decimal::ZERO
    } else {
        provider_cost + quote.surcharge
    };
    let bill = Bill {
        served_by: offer.reference(),
        provider_cost,
        surcharge: quote.surcharge,
        total,
        units,
        description: quote.description,
        flags,
        plugin_failure,
    };
    record(state, prepared, &offer.price_version, &usage, &bill).await?;
    Ok(bill)
}

async fn meter_and_price(
    prepared: &Prepared,
    usage: &Usage,
) -> Result<(Vec<BusinessUnit>, PriceQuote), PluginError> {
    let binding = &prepared.caller.client.binding;
    let mut session = binding.session(&prepared.summary.request_id).await?;
    session
        .meter_and_price(&binding.config, &prepared.summary, usage, prepared.bound)
        .await
}

/// Records a request that reached no provider successfully (every attempt
/// failed), so it still has its one record and its reservation is settled.
pub async fn settle_failed(
    state: &AppState,
    prepared: &Prepared,
    last: Option<&CatalogEntry>,
) -> Result<(), ApiError> {
    let served = last
        .map(|e| e.offer.reference())
        .unwrap_or_else(|| prepared.decision.primary.clone());
    let price_version = last
        .map(|e| e.offer.price_version.clone())
        .unwrap_or_default();
    let usage = Usage {
        served_by: served.clone(),
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        provider_cost: Decimal::ZERO,
        latency_ms: 0,
        outcome: Outcome::Failed,
        estimated: false,
    };
    let bill = Bill {
        served_by: served,
        provider_cost: Decimal::ZERO,
        surcharge: Decimal::ZERO,
        total: Decimal::ZERO,
        units: Vec::new(),
        description: String::new(),
        flags: RecordFlags {
            failed: true,
            fail_open: prepared.route_failed_open.is_some(),
            ..RecordFlags::default()
        },
        plugin_failure: None,
    };
    record(state, prepared, &price_version, &usage, &bill).await
}

async fn record(
    state: &AppState,
    prepared: &Prepared,
    price_version: &str,
    usage: &Usage,
    bill: &Bill,
) -> Result<(), ApiError> {
    let summary = &prepared.summary;
    let plugin = &prepared.caller.client.binding.plugin;
    let record = UsageRecord {
        idempotency_key: summary.request_id.clone(),
        request_id: summary.request_id.clone(),
        agency_id: summary.agency_id.clone(),
        client_id: summary.client_id.clone(),
        app_id: Some(summary.app_id.clone()),
        end_user_id: summary.end_user.clone(),
        started_at: prepared.started_at,
        // A wall clock stepped back must not make the record invalid.
        finished_at: Utc::now().max(prepared.started_at),
        requested_model: summary.requested_model.clone(),
        requested_provider: None,
        routed_model: bill.served_by.model.clone(),
        routed_provider: bill.served_by.provider.clone(),
        tokens: Tokens {
            input: u64::from(usage.input_tokens),
            output: u64::from(usage.output_tokens),
            cached: u64::from(usage.cached_input_tokens),
        },
        provider_cost: bill.provider_cost,
        price_version: price_version.to_owned(),
        surcharge: bill.surcharge,
        total_charged: bill.total,
        units: bill
            .units
            .iter()
            .map(|u| (u.name.clone(), u.quantity))
            .collect(),
        plugin: PluginRef {
            name: plugin.info().name.clone(),
            content_hash: plugin.hash().hex(),
            version: plugin.info().version.clone(),
        },
        flags: bill.flags,
        reservation_id: prepared.reservation.as_ref().map(|r| r.id),
    };
    // The same idempotency key makes retries safe: a retry after a lost
    // acknowledgement is recorded once. Only queueing is retried; a full
    // queue pushes back on the request in both durability modes.
    let mut last_error = None;
    for attempt in 0..3u32 {
        match state.ledger.queue_record_async(record.clone()).await {
            Ok(queued) => {
                match state.ledger.durability() {
                    // Sync mode promises the record is on disk before the
                    // answer completes.
                    Durability::Sync => {
                        await_outcome(queued, &state.ledger, &state.metrics, &record).await;
                    }
                    // Batched mode promises a flush within the interval, not
                    // an applied group before the answer: the reservation holds
                    // the spend until the record settles it, so the answer
                    // need not wait for the writer. Shutdown waits for the
                    // tracked task (and the ledger drains its queue).
                    Durability::Batched { .. } => {
                        let (ledger, metrics) = (state.ledger.clone(), state.metrics.clone());
                        let settled =
                            async move { await_outcome(queued, &ledger, &metrics, &record).await };
                        state.requests.spawn(settled.in_current_span());
                    }
                }
                return Ok(());
            }
            Err(e @ tollgate_ledger::LedgerError::Overloaded { .. }) => {
                tracing::warn!(attempt, error = %e, "ledger overloaded; retrying the usage record");
                last_error = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(10 << (attempt * 2))).await;
            }
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    let error = last_error.map(|e| e.to_string()).unwrap_or_default();
    not_written(&state.ledger, &state.metrics, &record, &error);
    Ok(())
}

/// Waits for a queued record's outcome: counts it, or (refused or lost)
/// releases its reservation and logs it for replay.
async fn await_outcome(
    queued: QueuedRecord,
    ledger: &Ledger,
    metrics: &GatewayMetrics,
    record: &UsageRecord,
) {
    match queued.outcome().await {
        Ok(_) => metrics.recorded(&record.flags),
        Err(e) => not_written(ledger, metrics, record, &e.to_string()),
    }
}

/// A usage record the ledger refused or lost after the provider answered.
fn not_written(ledger: &Ledger, metrics: &GatewayMetrics, record: &UsageRecord, error: &str) {
    metrics.record_failed();
    if let Some(id) = record.reservation_id
        && let Err(e) = ledger.release(id)
    {
        tracing::warn!(error = %e, "could not release a reservation");
    }
    // The provider has answered and the client gets the answer: withholding
    // it would only make the client retry and pay for a second provider call.
    // The record is logged in full, counted in
    // `tollgate_usage_record_failures_total`, and can be replayed (its
    // idempotency key makes a replay count once).
    tracing::error!(
        error = %error,
        record = %serde_json::to_string(record).unwrap_or_default(),
        "USAGE RECORD NOT WRITTEN: the answer was served; replay this record"
    );
}
