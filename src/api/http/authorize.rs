//! `/v1/authorize`: forward auth for nginx `auth_request`, Traefik `ForwardAuth`
//! and Caddy `forward_auth`. The proxy sends the client's headers and says
//! which request it holds (`X-Original-Method`/`X-Original-URI` from nginx,
//! `X-Forwarded-Method`/`X-Forwarded-Uri` from Traefik and Caddy); keygate
//! answers 200 with the caller's identity, or the same denial Envoy would get.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};

use super::{Peer, header_text};
use crate::{
    api::edge::{self, Answer},
    domain::Error,
    domain::networks::{AllowedNetworks, NetworksError, parse_client_ip},
    metrics::VerifyMetrics,
    services::authorizer::{Authorizer, Decision, EdgeRequest},
};

#[derive(Debug, Clone)]
pub struct AuthorizeRoute {
    authorizer: Authorizer,
    metrics: VerifyMetrics,
    trusted: TrustedProxies,
}

impl AuthorizeRoute {
    pub fn new(authorizer: Authorizer, trusted: TrustedProxies) -> Self {
        Self {
            authorizer,
            metrics: VerifyMetrics::new("http"),
            trusted,
        }
    }
}

/// `--trusted-proxies`: the peers whose `X-Forwarded-For` and
/// `X-Client-Principal` forward auth believes. None by default: a client that
/// reaches keygate directly could write either header.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Option<Arc<AllowedNetworks>>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, NetworksError> {
        if entries.is_empty() {
            return Ok(Self(None));
        }
        AllowedNetworks::parse(entries).map(|n| Self(Some(Arc::new(n))))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.as_ref().is_some_and(|n| n.allows(ip))
    }

    /// Who presented the key: the peer; or, from a trusted proxy, the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy (each
    /// proxy appends the address it saw, so entries to its left are the
    /// client's own words), and the proxy's `X-Client-Principal`. An entry that
    /// is not an address stops the walk with no address: what lies beyond it
    /// cannot be told apart from what a client wrote, and a key restricted to
    /// networks then fails closed.
    pub fn presenter<'a>(
        &self,
        peer: Option<IpAddr>,
        headers: &'a HeaderMap,
    ) -> (Option<IpAddr>, &'a str) {
        let Some(peer) = peer.filter(|p| self.trusts(*p)) else {
            return (peer, "");
        };
        let principal = header_text(headers, "x-client-principal").unwrap_or_default();
        // Right to left without collecting: the last header's last entry
        // first. A value that is not text is one entry that is no address.
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .map(str::trim);
        let mut client = peer;
        for entry in entries {
            match parse_client_ip(entry) {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => return (None, principal),
            }
        }
        (Some(client), principal)
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

async fn authorize(
    State(route): State<AuthorizeRoute>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let start = route.metrics.start();
    let peer = peer.map(|Extension(Peer(p))| p.ip());
    let (client_ip, client_principal) = route.trusted.presenter(peer, &headers);
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
        client_ip,
        client_principal,
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
