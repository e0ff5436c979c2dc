//! `envoy.service.auth.v3.Authorization/Check` on the gRPC listener: Envoy's
//! (and Istio's) external authorization. A denial is a `CheckResponse` with the
//! HTTP answer Envoy sends the client; the RPC itself fails only when the key
//! cannot be looked up (UNAVAILABLE, so the proxy's `failure_mode_allow` and
//! `status_on_error` decide) or when the proxy's own configuration is wrong
//! (INVALID_ARGUMENT: a bad `context_extensions` scope or organization).

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::{envoy::service::auth::v3::attribute_context::HttpRequest, google::rpc},
};
use tonic::{Request, Response, Status};

use crate::{
    api::edge::{self, Answer, CredentialHeader},
    metrics::VerifyMetrics,
    services::authorizer::{Authorizer, Decision, EdgeRequest},
};

pub const SCOPES_EXTENSION: &str = "keygate_required_scopes";
pub const ORGANIZATION_EXTENSION: &str = "keygate_organization_id";

#[derive(Debug, Clone)]
pub struct EnvoyApi {
    authorizer: Authorizer,
    metrics: VerifyMetrics,
}

impl EnvoyApi {
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer,
            metrics: VerifyMetrics::new("ext_authz"),
        }
    }
}

/// A request header by its lower-case name: Envoy sends `headers` (names lower
/// case), or `header_map` with raw values when `encode_raw_headers` is set.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(v) = http.headers.get(name) {
        return Some(v.as_str());
    }
    let map = http.header_map.as_ref()?;
    map.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| {
            if h.value.is_empty() {
                std::str::from_utf8(&h.raw_value).ok()
            } else {
                Some(h.value.as_str())
            }
        })
}

/// Whether the client sent one of the identity headers keygate sets more
/// than once. Envoy overwrites a header keygate sets, but older releases
/// replace only its first copy: a second one would reach the upstream beside
/// keygate's. Envoy joins repeats with commas in `headers`; `header_map` keeps
/// them apart.
fn repeats_identity(http: &HttpRequest) -> bool {
    edge::IDENTITY.iter().any(|name| {
        let joined = http.headers.get(*name).is_some_and(|v| v.contains(','));
        let copies = http
            .header_map
            .iter()
            .flat_map(|m| &m.headers)
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .count();
        joined || copies > 1
    })
}

/// Every header name the client sent.
fn header_names(http: &HttpRequest) -> impl Iterator<Item = &str> {
    let map = http.header_map.iter().flat_map(|m| &m.headers);
    http.headers
        .keys()
        .map(String::as_str)
        .chain(map.map(|h| h.key.as_str()))
}

fn set(name: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        // Overwrite, so a value the client sent under the same name is gone.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn rpc_status(code: tonic::Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

/// Allowed: identity headers set with overwrite; every other `x-keygate-*`
/// header and the key's own header removed, so the upstream sees neither a
/// forged identity nor the secret.
fn allowed(http: &HttpRequest, answer: Answer, from: Option<CredentialHeader>) -> CheckResponse {
    let prefix = edge::IDENTITY_PREFIX.as_bytes();
    let mut remove: Vec<String> = header_names(http)
        .filter(|name| {
            name.len() > prefix.len()
                && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix)
                && !answer
                    .identity
                    .iter()
                    .any(|(set, _)| set.eq_ignore_ascii_case(name))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    // X-Api-Key is keygate's own header: whatever it holds, never passed on.
    // Authorization only when it carried the key (another scheme is the
    // upstream's business).
    if from == Some(CredentialHeader::Authorization)
        || header(http, edge::AUTHORIZATION).is_some_and(edge::carries_bearer)
    {
        remove.push(edge::AUTHORIZATION.into());
    }
    if header(http, edge::API_KEY).is_some() {
        remove.push(edge::API_KEY.into());
    }
    let response_headers_to_add = answer
        .headers
        .into_iter()
        .filter(|(name, _)| name.starts_with("ratelimit-"))
        .map(|(name, value)| set(name, value))
        .collect();
    CheckResponse {
        status: Some(rpc_status(tonic::Code::Ok, "")),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: answer
                .identity
                .into_iter()
                .map(|(name, value)| set(name, value))
                .collect(),
            headers_to_remove: remove,
            response_headers_to_add,
            ..Default::default()
        })),
        dynamic_metadata: None,
    }
}

fn denied(answer: Answer) -> CheckResponse {
    let code = match answer.status {
        401 => tonic::Code::Unauthenticated,
        429 => tonic::Code::ResourceExhausted,
        _ => tonic::Code::PermissionDenied,
    };
    let body = answer.body();
    let mut headers: Vec<HeaderValueOption> = answer
        .headers
        .into_iter()
        .map(|(name, value)| set(name, value))
        .collect();
    headers.push(set("content-type", "application/json"));
    CheckResponse {
        status: Some(rpc_status(code, &answer.message)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(answer.status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let start = self.metrics.start();
        let check = request.into_inner();
        let attributes = check.attributes.unwrap_or_default();
        let Some(http) = attributes.request.and_then(|r| r.http) else {
            self.metrics.observe(None, start);
            return Err(Status::invalid_argument(
                "attributes.request.http is required: keygate authorizes HTTP requests",
            ));
        };
        let (key, from) = edge::credential(
            header(&http, edge::AUTHORIZATION),
            header(&http, edge::API_KEY),
        );
        let extension = |name: &str| {
            attributes
                .context_extensions
                .get(name)
                .map_or("", String::as_str)
        };
        let request = EdgeRequest {
            method: &http.method,
            path: Some(http.path.as_str()),
            key,
            origin: header(&http, "origin").unwrap_or_default(),
            referer: header(&http, "referer").unwrap_or_default(),
            extra_scopes: extension(SCOPES_EXTENSION),
            organization_id: extension(ORGANIZATION_EXTENSION),
        };
        let decision = if repeats_identity(&http) {
            Ok(Decision::RouteNotAllowed(
                "the request carries a keygate identity header more than once".into(),
            ))
        } else {
            self.authorizer.authorize(&request).await
        };
        edge::observe(&self.metrics, &decision, start);
        let decision = decision.map_err(Status::from)?;
        let answer = Answer::from_decision(&decision, self.authorizer.now());
        let response = if answer.allowed() {
            allowed(&http, answer, from)
        } else {
            denied(answer)
        };
        Ok(Response::new(response))
    }
}
