//! `POST /v1/leaks/github`: GitHub's secret scanning partner endpoint. The
//! signature over the raw body is checked before anything is parsed; a report
//! that fails it gets 401 and changes nothing. Tokens are never logged: a
//! report's tokens may be live keys.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};

use super::{error, header_text};
use crate::{
    domain::Error,
    domain::leaks::{LeakKeys, MAX_BODY_BYTES, parse_report},
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
            let revoked = verdicts
                .iter()
                .filter(|v| v.label == crate::domain::leaks::Label::TruePositive)
                .count();
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
