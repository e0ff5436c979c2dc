//! The HTTP listener (`--http-listen`): GitHub's leak reports today, forward
//! auth later. Plain axum on hyper, with the same discipline as the gRPC side:
//! a body limit per route and a deadline on every request, so a slow or huge
//! request costs a bounded amount.

pub mod leaks;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

/// What the HTTP routes need.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub leaks: Option<Arc<leaks::LeakRoute>>,
    pub request_timeout: Duration,
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

/// The routes; a route whose feature is not configured is absent (404).
pub fn router(config: HttpConfig) -> Router {
    let mut router = Router::new();
    if let Some(leaks) = config.leaks {
        router = router.merge(leaks::routes(leaks));
    }
    let timeout = config.request_timeout;
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
