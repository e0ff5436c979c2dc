//! The HTTP listener (`--http-listen`): forward auth (`/v1/authorize`) and
//! GitHub's leak reports. Plain axum on hyper, with the same discipline as the
//! gRPC side: a body limit per route, a cap on the headers and a deadline on
//! every request, so a slow or huge request costs a bounded amount.

pub mod authorize;
mod errors;
pub mod leaks;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

/// What the HTTP routes need.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub authorize: authorize::AuthorizeRoute,
    pub leaks: Option<Arc<leaks::LeakRoute>>,
    pub public_reports: leaks::PublicReportRoute,
    pub request_timeout: Duration,
}

/// The address of the connection a request came on, which the accept loop
/// puts in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// A request header as text; one that is not visible ASCII counts as absent.
pub(crate) fn header_text(
    headers: &HeaderMap,
    name: impl axum::http::header::AsHeaderName,
) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A small JSON error body: `{"message": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The most header bytes (names and values) a request may carry, as on the
/// gRPC side (HTTP/2's usual 16 KiB header list): a forward-auth request is a
/// client's request replayed, and no legitimate one comes near it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Answers 413 at once when a request declares (`Content-Length`) a body
/// larger than its route takes, before reading any of it: otherwise the
/// connection would wait for a body nobody will read until the request
/// deadline. The connection is closed after the answer, since the body it
/// announced was never read. Bodies without a declared length are held to the
/// same limit while they are read (axum's body limit).
pub async fn refuse_declared_over(limit: usize, req: Request, next: Next) -> Response {
    match declared_over(limit, req.headers()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The 413 of [`refuse_declared_over`], for a handler that checks itself.
pub fn declared_over(limit: usize, headers: &HeaderMap) -> Option<Response> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit_bytes = u64::try_from(limit).unwrap_or(u64::MAX);
    if declared.is_none_or(|n| n <= limit_bytes) {
        return None;
    }
    let mut response = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body may be at most {limit} bytes"),
    );
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    Some(response)
}

/// The bytes of a request's headers, names and values: what the HTTP routes
/// and the gRPC admission layer each hold to their limit.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

async fn limit_headers(req: Request, next: Next) -> Response {
    let size = header_bytes(req.headers());
    if size > MAX_HEADER_BYTES {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("the request's headers exceed {MAX_HEADER_BYTES} bytes"),
        );
    }
    next.run(req).await
}

/// The routes; a route whose feature is not configured is absent (404).
pub fn router(config: HttpConfig) -> Router {
    let mut router = authorize::routes(config.authorize)
        .merge(leaks::public_routes(config.public_reports))
        // The listener's liveness, for probes and load balancers: 200 while
        // the process serves HTTP. Readiness (the store) is the gRPC health
        // service's. It also is the HTTP listener's ceiling that forward
        // auth is measured against (BENCHMARKS.md).
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    if let Some(leaks) = config.leaks {
        router = router.merge(leaks::routes(leaks));
    }
    let timeout = config.request_timeout;
    let router = router.layer(middleware::from_fn(limit_headers));
    // Outermost: the deadline covers reading the body too, so a client that
    // trickles its request is cut off like one that never finishes.
    router.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(response) => response,
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the request took too long"),
            }
        },
    ))
}
