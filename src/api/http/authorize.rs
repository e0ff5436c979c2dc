//! `/v1/authorize`: forward auth for nginx `auth_request`, Traefik `ForwardAuth`
//! and Caddy `forward_auth`. The proxy sends the client's headers and says
//! which request it holds (`X-Original-Method`/`X-Original-URI` from nginx,
//! `X-Forwarded-Method`/`X-Forwarded-Uri` from Traefik and Caddy); keygate
//! answers 200 with the caller's identity, or the same denial Envoy would get.

use std::borrow::Cow;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};

use super::header_text;
use crate::{
    api::edge::{self, Answer},
    domain::Error,
    metrics::VerifyMetrics,
    services::authorizer::{Authorizer, Decision, EdgeRequest},
};

#[derive(Debug, Clone)]
pub struct AuthorizeRoute {
    authorizer: Authorizer,
    metrics: VerifyMetrics,
}

impl AuthorizeRoute {
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer,
            metrics: VerifyMetrics::new("http"),
        }
    }
}

/// The most body a forward-auth request may declare. keygate reads none of
/// it (the proxies send the client's headers, not its body), so anything
/// larger is a client trying to hold the connection.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes(route: AuthorizeRoute) -> Router {
    // Any method: Traefik and Caddy repeat the client's, nginx sends GET.
    Router::new()
        .route("/v1/authorize", any(authorize))
        .route_layer(axum::middleware::from_fn(|req, next| {
            super::refuse_declared_over(MAX_BODY_BYTES, req, next)
        }))
        .with_state(route)
}

/// What the proxy says about the original request, under nginx's name or
/// Traefik's and Caddy's. Each proxy sets its own and may pass the other
/// through from the client, so two different values, or one header sent
/// twice, mean a client is trying to choose what is checked: `Err`.
fn original<'a>(headers: &'a HeaderMap, names: [&str; 2]) -> Result<Option<&'a str>, ()> {
    let mut found: Option<&str> = None;
    for name in names {
        for value in headers.get_all(name) {
            let value = value.to_str().map_err(|_| ())?;
            match found {
                Some(have) if have != value => return Err(()),
                _ => found = Some(value),
            }
        }
        if headers.get_all(name).iter().count() > 1 {
            return Err(());
        }
    }
    Ok(found)
}

async fn authorize(State(route): State<AuthorizeRoute>, headers: HeaderMap) -> Response {
    let start = route.metrics.start();
    let (key, _) = edge::credential(
        header_text(&headers, edge::AUTHORIZATION),
        header_text(&headers, edge::API_KEY),
    );
    let (Ok(method), Ok(path)) = (
        original(&headers, ["x-original-method", "x-forwarded-method"]),
        original(&headers, ["x-original-uri", "x-forwarded-uri"]),
    ) else {
        let decision = Decision::RouteNotAllowed(
            "the original method or URI is given twice, differently".into(),
        );
        route.metrics.observe_route_not_allowed(start);
        return respond(Answer::from_decision(&decision, route.authorizer.now()));
    };
    let request = EdgeRequest {
        // Never the subrequest's own method: nginx always sends GET, so a
        // proxy that did not say would have every request look like a read.
        method: method.unwrap_or_default(),
        path,
        key,
        origin: header_text(&headers, "origin").unwrap_or_default(),
        referer: header_text(&headers, "referer").unwrap_or_default(),
        extra_scopes: "",
        organization_id: "",
    };
    let decision = route.authorizer.authorize(&request).await;
    edge::observe(&route.metrics, &decision, start);
    let answer = match decision {
        Ok(decision) => Answer::from_decision(&decision, route.authorizer.now()),
        Err(Error::Unavailable) => Answer::unavailable(),
        Err(e) => {
            tracing::error!(error = ?e, "forward auth failed");
            return e.into_response();
        }
    };
    respond(answer)
}

fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
    let body = answer.body();
    let mut response = (status, body).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let identity = answer.identity.into_iter().map(|(n, v)| (n, Cow::Owned(v)));
    for (name, value) in answer.headers.into_iter().chain(identity) {
        let value = match value {
            Cow::Borrowed(v) => Ok(HeaderValue::from_static(v)),
            Cow::Owned(v) => HeaderValue::try_from(v),
        };
        if let Ok(value) = value {
            out.insert(HeaderName::from_static(name), value);
        }
    }
    response
}
