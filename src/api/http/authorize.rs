//! `/v1/authorize`: forward auth for nginx `auth_request`, Traefik `ForwardAuth`
//! and Caddy `forward_auth`. The proxy sends the client's headers and says
//! which request it holds (`X-Original-Method`/`X-Original-URI` from nginx,
//! `X-Forwarded-Method`/`X-Forwarded-Uri` from Traefik and Caddy); keygate
//! answers 200 with the caller's identity, or the same denial Envoy would get.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};

use super::{Peer, header_text};
use crate::{
    api::edge::{self, Answer, IdentityParts},
    domain::Error,
    domain::networks::{AllowedNetworks, NetworksError, parse_client_ip},
    hotpath::cache::CachedKey,
    metrics::VerifyMetrics,
    services::authorizer::{Authorizer, Decision, EdgeRequest},
};

#[derive(Debug, Clone)]
pub struct AuthorizeRoute {
    authorizer: Authorizer,
    metrics: VerifyMetrics,
    trusted: TrustedProxies,
    /// An allowed answer's headers per key: building them is six hashed
    /// inserts and three copies, cloning them is two allocations.
    heads: IdentityParts<HeaderMap>,
}

impl AuthorizeRoute {
    pub fn new(authorizer: Authorizer, trusted: TrustedProxies) -> Self {
        Self {
            authorizer,
            metrics: VerifyMetrics::new("http"),
            trusted,
            heads: IdentityParts::new(edge::IDENTITY_PARTS),
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
        let principal = header_text(headers, &X_CLIENT_PRINCIPAL).unwrap_or_default();
        // Right to left without collecting: the last header's last entry
        // first. A value that is not text is one entry that is no address.
        let entries = headers
            .get_all(&X_FORWARDED_FOR)
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
    // Shared, not cloned per request: the route holds the verifier and a
    // dozen metric handles, each an `Arc`.
    Router::new()
        .route("/v1/authorize", any(authorize))
        .with_state(Arc::new(route))
}

// The names forward auth reads, made once: a lookup by `&str` parses the
// name on every call.
const X_API_KEY: HeaderName = HeaderName::from_static(edge::API_KEY);
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_CLIENT_PRINCIPAL: HeaderName = HeaderName::from_static("x-client-principal");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request headers forward auth reads, found in one pass over the
/// request's headers rather than a hashed lookup per name (nine of them).
#[derive(Debug, Default)]
struct Seen<'a> {
    /// The first `Authorization`, `X-Api-Key`, `Origin` and `Referer`, each
    /// `None` inside when it is not visible ASCII (which counts as absent).
    authorization: Option<Option<&'a str>>,
    api_key: Option<Option<&'a str>>,
    origin: Option<Option<&'a str>>,
    referer: Option<Option<&'a str>>,
    method: Original<'a>,
    uri: Original<'a>,
}

impl<'a> Seen<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            let slot = if name == header::AUTHORIZATION {
                &mut seen.authorization
            } else if name == header::ORIGIN {
                &mut seen.origin
            } else if name == header::REFERER {
                &mut seen.referer
            } else if name == X_API_KEY {
                &mut seen.api_key
            } else {
                if name == X_ORIGINAL_METHOD {
                    seen.method.add(0, value);
                } else if name == X_FORWARDED_METHOD {
                    seen.method.add(1, value);
                } else if name == X_ORIGINAL_URI {
                    seen.uri.add(0, value);
                } else if name == X_FORWARDED_URI {
                    seen.uri.add(1, value);
                }
                continue;
            };
            if slot.is_none() {
                *slot = Some(value.to_str().ok());
            }
        }
        seen
    }
}

/// What the proxy says about the original request, under nginx's name
/// (0) or Traefik's and Caddy's (1). Each proxy sets its own and may pass
/// the other through from the client, so two different values, or one
/// header sent twice, mean a client is trying to choose what is checked.
#[derive(Debug, Default)]
struct Original<'a> {
    found: Option<&'a str>,
    copies: [u8; 2],
    conflict: bool,
}

impl<'a> Original<'a> {
    fn add(&mut self, which: usize, value: &'a HeaderValue) {
        self.copies[which] = self.copies[which].saturating_add(1);
        match (value.to_str(), self.found) {
            (Ok(v), Some(have)) if have != v => self.conflict = true,
            (Ok(v), _) => self.found = Some(v),
            (Err(_), _) => self.conflict = true,
        }
    }

    fn get(&self) -> Result<Option<&'a str>, ()> {
        if self.conflict || self.copies.iter().any(|&n| n > 1) {
            return Err(());
        }
        Ok(self.found)
    }
}

/// The whole request rather than extractors: the headers are read where
/// they are, not copied into a map of their own, and the body is never read.
async fn authorize(State(route): State<Arc<AuthorizeRoute>>, request: Request) -> Response {
    let start = route.metrics.start();
    let headers = request.headers();
    // Checked here rather than by a layer around the route, which would
    // cost every request a boxed clone of the handler.
    if let Some(refused) = super::declared_over(MAX_BODY_BYTES, headers) {
        return refused;
    }
    let peer = request.extensions().get::<Peer>().map(|Peer(p)| p.ip());
    let (client_ip, client_principal) = route.trusted.presenter(peer, headers);
    let seen = Seen::scan(headers);
    let (key, _) = edge::credential(seen.authorization.flatten(), seen.api_key.flatten());
    let (Ok(method), Ok(path)) = (seen.method.get(), seen.uri.get()) else {
        let decision = Decision::RouteNotAllowed(
            "the original method or URI is given twice, differently".into(),
        );
        route.metrics.observe_route_not_allowed(start);
        return respond(
            &route,
            Answer::from_decision(&decision, route.authorizer.now()),
        );
    };
    let request = EdgeRequest {
        // Never the subrequest's own method: nginx always sends GET, so a
        // proxy that did not say would have every request look like a read.
        method: method.unwrap_or_default(),
        path,
        key,
        origin: seen.origin.flatten().unwrap_or_default(),
        referer: seen.referer.flatten().unwrap_or_default(),
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
    respond(&route, answer)
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

fn respond(route: &AuthorizeRoute, answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = Response::new(axum::body::Body::from(answer.body()));
    *response.status_mut() = status;
    let out = response.headers_mut();
    // An allowed answer (the only kind that carries its key) starts from
    // the key's head: the content type and its identity.
    match &answer.key {
        Some(key) => *out = route.heads.get(key, allowed_head),
        None => {
            out.insert(header::CONTENT_TYPE, APPLICATION_JSON);
        }
    }
    for (name, value) in &answer.headers {
        let value = match value {
            Cow::Borrowed(v) => Ok(header_value(v)),
            Cow::Owned(v) => HeaderValue::try_from(v.as_str()),
        };
        if let Ok(value) = value {
            out.insert(header_name(name), value);
        }
    }
    response
}

/// What every allowed answer for `key` carries whatever was asked: the
/// content type and the key's identity.
fn allowed_head(key: &CachedKey) -> HeaderMap {
    let mut head = HeaderMap::with_capacity(8);
    head.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    for (name, value) in edge::identity(key) {
        // Ids are checked when a key is made: every one is a header value.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            head.insert(header_name(name), value);
        }
    }
    head
}

/// A fixed header value; the valid key's code, on nearly every answer,
/// made once.
fn header_value(value: &'static str) -> HeaderValue {
    const VALID: HeaderValue = HeaderValue::from_static(edge::VALID_CODE);
    if value == VALID {
        return VALID;
    }
    HeaderValue::from_static(value)
}

/// The name of a header keygate answers with; the ones every answer carries
/// are made once, since making one from a `&str` parses it.
fn header_name(name: &'static str) -> HeaderName {
    const KEY_ID: HeaderName = HeaderName::from_static(edge::KEY_ID);
    const ORGANIZATION_ID: HeaderName = HeaderName::from_static(edge::ORGANIZATION_ID);
    const KEY_TYPE: HeaderName = HeaderName::from_static(edge::KEY_TYPE);
    const USER_ID: HeaderName = HeaderName::from_static(edge::USER_ID);
    const CODE: HeaderName = HeaderName::from_static(edge::CODE);
    match name {
        edge::KEY_ID => KEY_ID,
        edge::ORGANIZATION_ID => ORGANIZATION_ID,
        edge::KEY_TYPE => KEY_TYPE,
        edge::USER_ID => USER_ID,
        edge::CODE => CODE,
        other => HeaderName::from_static(other),
    }
}
