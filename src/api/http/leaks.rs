//! Leak reports. `POST /v1/leaks/github`: GitHub's secret scanning partner
//! endpoint; the signature over the raw body is checked before anything is
//! parsed, and a report that fails it gets 401 and changes nothing.
//! `POST /v1/leaks/report`: anyone's report, answered the same whatever it
//! held (see [`PublicReportRoute`]). Tokens are never logged: a report's
//! tokens may be live keys.

use std::{sync::Arc, time::Instant};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};

use super::{Peer, authorize::TrustedProxies, error, header_text};
use crate::{
    domain::Error,
    domain::leaks::{LeakKeys, MAX_BODY_BYTES, PUBLIC_ACTOR, parse_public_report, parse_report},
    services::KeyService,
};

#[derive(Debug)]
pub struct LeakRoute {
    keys: LeakKeys,
    service: KeyService,
}

impl LeakRoute {
    pub fn new(keys: LeakKeys, service: KeyService) -> Self {
        Self { keys, service }
    }
}

pub fn routes(route: Arc<LeakRoute>) -> Router {
    Router::new()
        .route("/v1/leaks/github", post(report))
        // Larger bodies are refused with 413 before the signature is checked:
        // a declared one before any of it is read.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(|req, next| {
            super::refuse_declared_over(MAX_BODY_BYTES, req, next)
        }))
        .with_state(route)
}

async fn report(State(route): State<Arc<LeakRoute>>, headers: HeaderMap, body: Bytes) -> Response {
    let signed = route.keys.verify(
        header_text(&headers, "github-public-key-identifier"),
        header_text(&headers, "github-public-key-signature"),
        &body,
    );
    if let Err(e) = signed {
        crate::metrics::leak_report_refused(e.reason());
        static REFUSED: std::sync::LazyLock<crate::logging::Throttle> =
            std::sync::LazyLock::new(Default::default);
        if let Some(dropped) = REFUSED.allow(e.reason(), std::time::Instant::now()) {
            tracing::warn!(
                reason = %e,
                bytes = body.len(),
                dropped,
                "leak report refused"
            );
        }
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let tokens = match parse_report(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match route.service.report_leaks(&tokens).await {
        Ok(verdicts) => {
            let revoked = crate::domain::leaks::revoked(&verdicts);
            tracing::info!(tokens = tokens.len(), revoked, "leak report handled");
            let body = serde_json::to_string(&verdicts).unwrap_or_else(|_| "[]".into());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        // GitHub retries a report that fails: nothing is lost by answering 503.
        Err(e) => {
            if !matches!(e, Error::Unavailable) {
                tracing::error!(error = ?e, "leak report failed");
            }
            e.into_response()
        }
    }
}

/// `POST /v1/leaks/report`: anyone who finds a keygate key in public may
/// report it, without credentials, as GitHub lets anyone report a token. A
/// live key named in full is revoked (`LEAKED`, then `REVOKED`, by
/// `public-report`), and its organization hears of it through the webhooks.
///
/// The answer must not tell a caller whether a token was a key: it is the
/// same `202 {"received": N}` for a live key, a forged one and junk, and it is
/// sent no sooner than [`ANSWER_AFTER`] from the request's arrival, so the
/// store work a well-formed token causes is not visible in the timing either
/// (unless the store is slower than that). The revocations are committed
/// before the answer, so a 202 is never a report lost to a crash.
#[derive(Debug, Clone)]
pub struct PublicReportRoute {
    service: KeyService,
    trusted: TrustedProxies,
    limiter: Arc<ReportLimiter>,
}

/// When the answer to an anonymous report is sent, from its arrival.
pub const ANSWER_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Anonymous reports each client address may send in a burst; one more
/// becomes available every [`REPORT_REFILL`].
pub const REPORT_BURST: u32 = 10;
pub const REPORT_REFILL: std::time::Duration = std::time::Duration::from_secs(6);
/// The body of an anonymous report: 100 tokens of at most 256 characters fit.
const PUBLIC_BODY_BYTES: usize = 64 * 1024;

impl PublicReportRoute {
    pub fn new(service: KeyService, trusted: TrustedProxies) -> Self {
        Self {
            service,
            trusted,
            limiter: Arc::new(ReportLimiter::default()),
        }
    }
}

/// A token bucket per client address, in a bounded cache: an address that
/// stops reporting is forgotten, and a flood of addresses cannot grow it
/// without bound.
#[derive(Debug)]
pub struct ReportLimiter {
    buckets: moka::sync::Cache<std::net::IpAddr, Arc<std::sync::Mutex<(f64, Instant)>>>,
}

impl Default for ReportLimiter {
    fn default() -> Self {
        Self {
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(REPORT_REFILL * REPORT_BURST)
                .build(),
        }
    }
}

impl ReportLimiter {
    /// Whether `addr` may send a report at `now`; takes one if so.
    pub fn allow(&self, addr: std::net::IpAddr, now: Instant) -> bool {
        let bucket = self.buckets.get_with(addr, || {
            Arc::new(std::sync::Mutex::new((f64::from(REPORT_BURST), now)))
        });
        let mut b = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let refilled =
            now.saturating_duration_since(b.1).as_secs_f64() / REPORT_REFILL.as_secs_f64();
        b.0 = (b.0 + refilled).min(f64::from(REPORT_BURST));
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub fn public_routes(route: PublicReportRoute) -> Router {
    Router::new()
        .route("/v1/leaks/report", post(public_report))
        .layer(DefaultBodyLimit::max(PUBLIC_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(|req, next| {
            super::refuse_declared_over(PUBLIC_BODY_BYTES, req, next)
        }))
        .with_state(route)
}

/// `work`'s result, not before `at`: whether it read the store, revoked a
/// key or did nothing, its caller sees the same moment.
async fn no_sooner_than<T>(at: tokio::time::Instant, work: impl Future<Output = T>) -> T {
    let out = work.await;
    tokio::time::sleep_until(at).await;
    out
}

async fn public_report(
    State(route): State<PublicReportRoute>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = tokio::time::Instant::now();
    let peer = peer.map(|Extension(Peer(p))| p.ip());
    // Per the presenter's address, as forward auth finds it; a report whose
    // address is unknown shares one bucket with every other such report.
    let (client, _) = route.trusted.presenter(peer, &headers);
    let client = client.unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    if !route.limiter.allow(client, Instant::now()) {
        crate::metrics::leak_report_refused("rate_limited");
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many reports from this address; try again later",
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(REPORT_REFILL.as_secs()),
        );
        return response;
    }
    let tokens = match parse_public_report(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // Every token is checked offline first (shape and checksum): only a
    // well-formed one costs a store read.
    let result = no_sooner_than(
        arrived + ANSWER_AFTER,
        route.service.report_leaks_as(PUBLIC_ACTOR, &tokens),
    )
    .await;
    match result {
        Ok(verdicts) => {
            let revoked = crate::domain::leaks::revoked(&verdicts);
            tracing::info!(tokens = tokens.len(), revoked, "public leak report handled");
        }
        // Nothing was answered yet: the reporter may send it again.
        Err(e) => {
            if !matches!(e, Error::Unavailable) {
                tracing::error!(error = ?e, "public leak report failed");
            }
            return e.into_response();
        }
    }
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"received\":{}}}", tokens.len()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, Instant, sleep};

    /// On a paused clock: an answer whose work took nothing, a little, or
    /// nearly the whole floor is sent at the floor exactly, so its timing
    /// tells a reporter nothing of what the tokens were.
    #[tokio::test(start_paused = true)]
    async fn every_answer_waits_for_the_same_floor() {
        for work in [0, 3, 400, 999] {
            let arrived = Instant::now();
            no_sooner_than(arrived + ANSWER_AFTER, sleep(Duration::from_millis(work))).await;
            assert_eq!(arrived.elapsed(), ANSWER_AFTER, "work of {work} ms");
        }
    }
}
