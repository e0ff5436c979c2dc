//! Prometheus metrics, served as text at `http://<metrics-listen>/metrics`.
//!
//! Labels carry only bounded values (outcome codes, RPC names, status codes):
//! never a key, a hash, an organization or a user, which are unbounded.
//! The hot path increments handles registered once at start, so a verification
//! costs an atomic add per metric, no label lookup and no allocation.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::proto::VerifyCode;

const VERIFY_SECONDS: &str = "keygate_verify_duration_seconds";
const INVALIDATION_LAG: &str = "keygate_invalidation_lag_seconds";
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The recorder is process-wide (the `metrics` facade has one global recorder);
/// every keygate in the process (several, in tests) reports into it.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns the handle that renders it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(VERIFY_SECONDS.into()),
                &[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(INVALIDATION_LAG.into()),
                    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                )
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // Bucket lists are constants: this cannot fail, but keygate runs without
            // histograms rather than not at all.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's); our
        // handle then renders only what was recorded before, which is harmless.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        gauge!("keygate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// HELP text and unit of every metric keygate exports, so `/metrics` passes
/// `promtool check metrics` and dashboards can show what a series means.
/// A metric added anywhere in keygate gets its line here.
fn describe() {
    describe_gauge!(
        "keygate_connections_open",
        Unit::Count,
        "Connections open now, by listener: grpc (the main and admin gRPC listeners) or http (--http-listen)"
    );
    describe_counter!(
        "keygate_connections_refused_total",
        Unit::Count,
        "Connections closed at once because the listener was at its cap (--http-max-connections), by listener"
    );
    describe_counter!(
        "keygate_requests_shed_total",
        Unit::Count,
        "Calls answered RESOURCE_EXHAUSTED at once because --max-in-flight calls were in progress, by listener"
    );
    describe_counter!(
        "keygate_store_errors_total",
        Unit::Count,
        "Store calls that failed, by kind: unavailable (the caller may retry; logged at most once a second) or internal"
    );
    describe_counter!(
        "keygate_leak_reports_refused_total",
        Unit::Count,
        "Leak reports on /v1/leaks/github refused for their signature, by reason: missing, unknown_key, malformed, invalid"
    );
    describe_counter!(
        "keygate_notices_sent_total",
        Unit::Count,
        "Notices this instance claimed and sent, by notice: key.expiring, key.dormant, quota.low, quota.exhausted"
    );
    describe_gauge!(
        "keygate_open_files_limit",
        Unit::Count,
        "The process's open-file soft limit after start raised it to the hard limit"
    );
    describe_counter!(
        "keygate_verify_total",
        Unit::Count,
        "VerifyKey calls by outcome: the VerifyCode answered (valid, not_found, revoked, ...) or rpc_error when keygate could not answer"
    );
    describe_histogram!(
        VERIFY_SECONDS,
        Unit::Seconds,
        "verification latency inside keygate, from request decoded to answer ready; one call in 16 per thread is timed (the counts are in keygate_verify_total)"
    );
    describe_counter!(
        "keygate_cache_hits_total",
        Unit::Count,
        "Verify-path lookups answered from memory, by cache: keys (known keys) or unknown_keys (remembered misses)"
    );
    describe_counter!(
        "keygate_cache_misses_total",
        Unit::Count,
        "Verify-path lookups found in neither cache, so read from the store"
    );
    describe_counter!(
        "keygate_cache_evictions_total",
        Unit::Count,
        "Keys dropped from the key cache for capacity or age"
    );
    describe_counter!(
        "keygate_cache_stale_fills_dropped_total",
        Unit::Count,
        "Store reads not cached because a change to the key raced them"
    );
    describe_histogram!(
        INVALIDATION_LAG,
        Unit::Seconds,
        "Time from a key change in the store to this instance dropping the key from its cache"
    );
    describe_counter!(
        "keygate_usage_flushes_total",
        Unit::Count,
        "Batched usage writes to the store, by result (ok or error; errors are retried)"
    );
    describe_counter!(
        "keygate_usage_flushed_keys_total",
        Unit::Count,
        "Keys whose usage counts were written by successful usage flushes"
    );
    describe_counter!(
        "keygate_admin_requests_total",
        Unit::Count,
        "KeyAdmin calls by RPC method and gRPC status code"
    );
    describe_counter!(
        "keygate_store_lookups_total",
        Unit::Count,
        "Store reads made by the verify path (each answers up to 64 cache misses)"
    );
    describe_counter!(
        "keygate_store_lookup_hashes_total",
        Unit::Count,
        "Key hashes carried by the verify path's store reads"
    );
    describe_gauge!(
        "keygate_usage_pending_keys",
        Unit::Count,
        "keys whose usage counts wait in memory for the write budget (--usage-write-budget)"
    );
    describe_gauge!(
        "keygate_usage_oldest_pending_seconds",
        Unit::Seconds,
        "how long the oldest usage count waiting for the write budget has waited"
    );
    describe_gauge!(
        "keygate_key_filter_keys",
        Unit::Count,
        "key hashes the forged-key filter was last loaded with"
    );
    describe_gauge!(
        "keygate_key_filter_bytes",
        Unit::Bytes,
        "memory of the forged-key filter"
    );
    describe_gauge!(
        "keygate_key_filter_load_seconds",
        Unit::Seconds,
        "how long the forged-key filter's last load from the store took (keys are verified meanwhile, each one not cached reading the store)"
    );
    describe_counter!(
        "keygate_key_filter_ruled_out_total",
        Unit::Count,
        "lookups of keys the forged-key filter ruled out: not_found without a store read, or bypassed to the store (a few a second)"
    );
    describe_gauge!(
        "keygate_replica_lag_seconds",
        Unit::Seconds,
        "how far behind the primary the replica (--database-read-url) is known to be: time since the primary state it was last seen to hold"
    );
    describe_counter!(
        "keygate_replica_missing_keys_total",
        Unit::Count,
        "keys the replica did not have, read again from the primary"
    );
    describe_gauge!(
        "keygate_store_up",
        Unit::Count,
        "1 when the store answered the last health ping (every second), 0 when it did not"
    );
    describe_gauge!(
        "keygate_health_serving",
        Unit::Count,
        "grpc.health.v1 status this instance reports, by service: 1 SERVING, 0 NOT_SERVING"
    );
    describe_gauge!(
        "keygate_store_connections",
        Unit::Count,
        "Open store pool connections by state (idle or in_use)"
    );
    describe_gauge!(
        "keygate_store_connections_max",
        Unit::Count,
        "Most connections the store pool may open (--database-max-connections)"
    );
    describe_counter!(
        "keygate_rate_limit_redis_round_trips_total",
        Unit::Count,
        "Calls to Redis for shared rate-limit credits (--rate-limit-redis-url), by result: ok or error"
    );
    describe_gauge!(
        "keygate_rate_limit_redis_up",
        Unit::Count,
        "1 while Redis answers for shared rate limits, 0 while this instance counts alone because it does not"
    );
    describe_counter!(
        "keygate_quota_lease_round_trips_total",
        Unit::Count,
        "Store round trips for quota credits, by operation (take or return) and result (ok, exhausted or error)"
    );
    describe_gauge!(
        "keygate_quota_leased_credits",
        Unit::Count,
        "Quota credits this instance has taken from the store and not yet spent or given back"
    );
    describe_counter!(
        "keygate_webhook_deliveries_total",
        Unit::Count,
        "Webhook POSTs by result: delivered (2xx), failed_attempt (retried later) or given_up (no attempt succeeded in 24 hours)"
    );
    describe_gauge!(
        "keygate_webhook_oldest_undelivered_seconds",
        Unit::Seconds,
        "Age of the oldest event an endpoint has not received yet (0 when none is waiting)"
    );
    describe_gauge!(
        "keygate_build_info",
        Unit::Count,
        "Always 1; the version label is the running keygate's version"
    );
}

/// Binds `/metrics` on `addr` and returns the bound address and the server, to
/// run until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let handle = handle();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            handle.run_upkeep();
            handle.render()
        }),
    );
    let stop_upkeep = shutdown.clone();
    let task = async move {
        // Histogram samples are buffered until upkeep folds them in; without a
        // timer they would pile up for as long as nobody scrapes.
        let upkeep = async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    () = stop_upkeep.cancelled() => return,
                }
            }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        let (served, ()) = tokio::join!(served.into_future(), upkeep);
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    };
    Ok((bound, task))
}

fn code_label(code: VerifyCode) -> &'static str {
    match code {
        VerifyCode::Unspecified => "unspecified",
        VerifyCode::Valid => "valid",
        VerifyCode::Missing => "missing",
        VerifyCode::Malformed => "malformed",
        VerifyCode::NotFound => "not_found",
        VerifyCode::Revoked => "revoked",
        VerifyCode::Expired => "expired",
        VerifyCode::OrganizationMismatch => "organization_mismatch",
        VerifyCode::HostnameBlocked => "hostname_blocked",
        VerifyCode::RateLimited => "rate_limited",
        VerifyCode::QuotaExceeded => "quota_exceeded",
        VerifyCode::InsufficientScope => "insufficient_scope",
        VerifyCode::NetworkBlocked => "network_blocked",
        VerifyCode::PrincipalMismatch => "principal_mismatch",
    }
}

/// One call in this many has its latency recorded.
pub const LATENCY_SAMPLE: u32 = 16;

/// A call's start, when this call is one whose latency is recorded.
#[derive(Debug)]
pub struct Timer(Option<std::time::Instant>);

/// The verify path's instruments for one entry point (`grpc` for `VerifyKey`,
/// `ext_authz` for Envoy, `http` for forward auth), registered once.
#[derive(Debug, Clone)]
pub struct VerifyMetrics {
    /// Indexed by `VerifyCode as usize`.
    by_code: [Counter; 14],
    rpc_errors: Counter,
    route_not_allowed: Counter,
    duration: Histogram,
}

impl VerifyMetrics {
    pub fn new(entry_point: &'static str) -> Self {
        handle();
        let codes = [
            VerifyCode::Unspecified,
            VerifyCode::Valid,
            VerifyCode::Missing,
            VerifyCode::Malformed,
            VerifyCode::NotFound,
            VerifyCode::Revoked,
            VerifyCode::Expired,
            VerifyCode::OrganizationMismatch,
            VerifyCode::HostnameBlocked,
            VerifyCode::InsufficientScope,
            VerifyCode::RateLimited,
            VerifyCode::QuotaExceeded,
            VerifyCode::NetworkBlocked,
            VerifyCode::PrincipalMismatch,
        ];
        let verify_total = |code: &'static str| counter!("keygate_verify_total", "code" => code, "entry_point" => entry_point);
        Self {
            by_code: codes.map(|c| verify_total(code_label(c))),
            rpc_errors: verify_total("rpc_error"),
            route_not_allowed: verify_total("route_not_allowed"),
            duration: histogram!(VERIFY_SECONDS, "entry_point" => entry_point),
        }
    }

    /// Starts timing a call, for one call in [`LATENCY_SAMPLE`] on each thread
    /// (the first included): reading the clock twice and appending to the
    /// histogram's sample buffer on every call costs more than the rest of a
    /// cached verification's bookkeeping, and a sample shows the same
    /// distribution.
    pub fn start(&self) -> Timer {
        thread_local! {
            static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        let n = CALLS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        Timer((n % LATENCY_SAMPLE == 1).then(std::time::Instant::now))
    }

    pub fn observe(&self, code: Option<VerifyCode>, timer: Timer) {
        match code.and_then(|c| self.by_code.get(c as usize)) {
            Some(c) => c.increment(1),
            None => self.rpc_errors.increment(1),
        }
        self.record(timer);
    }

    /// A proxied request no route of the policy allows (its key was not checked).
    pub fn observe_route_not_allowed(&self, timer: Timer) {
        self.route_not_allowed.increment(1);
        self.record(timer);
    }

    fn record(&self, timer: Timer) {
        if let Some(start) = timer.0 {
            self.duration.record(start.elapsed().as_secs_f64());
        }
    }
}

/// Cache instruments, shared by the positive and negative caches.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub negative_hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
    pub stale_fills_dropped: Counter,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        handle();
        Self {
            hits: counter!("keygate_cache_hits_total", "cache" => "keys"),
            negative_hits: counter!("keygate_cache_hits_total", "cache" => "unknown_keys"),
            misses: counter!("keygate_cache_misses_total"),
            evictions: counter!("keygate_cache_evictions_total"),
            stale_fills_dropped: counter!("keygate_cache_stale_fills_dropped_total"),
        }
    }
}

/// The verify path's store reads: their number and the hashes they carried,
/// whose ratio is how much concurrent misses were coalesced.
#[derive(Debug, Clone)]
pub struct LookupMetrics {
    reads: Counter,
    hashes: Counter,
}

impl Default for LookupMetrics {
    fn default() -> Self {
        handle();
        Self {
            reads: counter!("keygate_store_lookups_total"),
            hashes: counter!("keygate_store_lookup_hashes_total"),
        }
    }
}

impl LookupMetrics {
    pub fn observe(&self, hashes: usize) {
        self.reads.increment(1);
        self.hashes.increment(hashes as u64);
    }
}

/// Counts an admin RPC by method and resulting status code.
/// A store call that failed: `unavailable` (retried by callers) or `internal`.
pub fn store_error(kind: &'static str) {
    counter!("keygate_store_errors_total", "kind" => kind).increment(1);
}

/// A leak report refused for its signature (`reason`: missing, unknown_key,
/// malformed, invalid).
pub fn leak_report_refused(reason: &'static str) {
    counter!("keygate_leak_reports_refused_total", "reason" => reason).increment(1);
}

/// A notice this instance claimed and sent (`key.expiring`, …).
pub fn notice_sent(notice: &'static str) {
    counter!("keygate_notices_sent_total", "notice" => notice).increment(1);
}

pub fn admin_request(method: &'static str, code: tonic::Code) {
    counter!("keygate_admin_requests_total", "method" => method, "code" => code_name(code))
        .increment(1);
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A usage flush and how it went.
pub fn usage_flush(keys: usize, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("keygate_usage_flushes_total", "result" => result).increment(1);
    if ok {
        counter!("keygate_usage_flushed_keys_total").increment(keys as u64);
    }
}

/// Keys the replica did not have, read again from the primary.
pub fn replica_missing(keys: usize) {
    counter!("keygate_replica_missing_keys_total").increment(keys as u64);
}

/// How far behind the replica is known to be.
pub fn replica_lag(lag: Duration) {
    gauge!("keygate_replica_lag_seconds").set(lag.as_secs_f64());
}

/// A lookup the forged-key filter ruled out: answered NOT_FOUND at once, or
/// let through to the store by the bypass.
pub fn filter_ruled_out(bypassed: bool) {
    let outcome = if bypassed { "bypassed" } else { "not_found" };
    counter!("keygate_key_filter_ruled_out_total", "outcome" => outcome).increment(1);
}

/// The forged-key filter was (re)loaded: its keys and its size.
pub fn filter_loaded(keys: u64, bytes: usize, took: Duration) {
    gauge!("keygate_key_filter_keys").set(keys as f64);
    gauge!("keygate_key_filter_bytes").set(bytes as f64);
    gauge!("keygate_key_filter_load_seconds").set(took.as_secs_f64());
}

/// Keys whose usage counts wait for the write budget, and the oldest one's wait.
pub fn usage_pending(keys: usize, oldest: Duration) {
    gauge!("keygate_usage_pending_keys").set(keys as f64);
    gauge!("keygate_usage_oldest_pending_seconds").set(oldest.as_secs_f64());
}

/// How long after a change another instance's cache dropped it.
pub fn invalidation_lag(lag: Duration) {
    histogram!(INVALIDATION_LAG).record(lag.as_secs_f64());
}

/// Store pool gauges, refreshed by the health watcher.
pub fn store_pool(size: u32, idle: usize) {
    let idle = idle as f64;
    gauge!("keygate_store_connections", "state" => "idle").set(idle);
    gauge!("keygate_store_connections", "state" => "in_use").set((f64::from(size) - idle).max(0.0));
}

/// The pool's ceiling, set once at start.
pub fn store_pool_max(max: u32) {
    // Called before anything else has touched the recorder: install it first.
    handle();
    gauge!("keygate_store_connections_max").set(f64::from(max));
}

/// The grpc.health.v1 status reported for `service` (`""` is the whole server).
pub fn health_serving(service: &'static str, serving: bool) {
    gauge!("keygate_health_serving", "service" => service).set(if serving { 1.0 } else { 0.0 });
}

/// Whether the store answers (1) or not (0).
pub fn store_up(up: bool) {
    gauge!("keygate_store_up").set(if up { 1.0 } else { 0.0 });
}

/// A connection of `listener` opened; the gauge goes down when the returned
/// guard is dropped (with the connection).
pub fn connection_opened(listener: &'static str) -> OpenConnection {
    let open = gauge!("keygate_connections_open", "listener" => listener);
    open.increment(1.0);
    OpenConnection(open)
}

/// Counts one open connection for as long as it lives.
#[derive(Debug)]
pub struct OpenConnection(metrics::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Makes `listener`'s connection series exist from its start (at 0), so that
/// dashboards and alerts see them before the first connection or refusal.
pub fn listener_started(listener: &'static str) {
    gauge!("keygate_connections_open", "listener" => listener).increment(0.0);
    counter!("keygate_connections_refused_total", "listener" => listener).increment(0);
}

/// A connection of `listener` closed at once: the listener was full.
pub fn connection_refused(listener: &'static str) {
    counter!("keygate_connections_refused_total", "listener" => listener).increment(1);
}

/// The handle that counts calls shed on `listener`, registered once.
pub fn requests_shed(listener: &'static str) -> Counter {
    counter!("keygate_requests_shed_total", "listener" => listener)
}

pub fn open_files_limit(limit: u64) {
    gauge!("keygate_open_files_limit").set(limit as f64);
}
