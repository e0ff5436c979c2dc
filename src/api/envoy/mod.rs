//! `envoy.service.auth.v3.Authorization/Check` on the gRPC listener: Envoy's
//! (and Istio's) external authorization. A denial is a `CheckResponse` with the
//! HTTP answer Envoy sends the client; the RPC itself fails only when the key
//! cannot be looked up (UNAVAILABLE, so the proxy's `failure_mode_allow` and
//! `status_on_error` decide) or when the proxy's own configuration is wrong
//! (INVALID_ARGUMENT: a bad `context_extensions` scope or organization).

pub mod wire;

use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::rpc,
};
use tonic::{Request, Response, Status};

pub use self::wire::authorization_server::AuthorizationServer;
use self::wire::{CheckRequest, HttpRequest, authorization_server::Authorization};

use crate::{
    api::edge::{self, Answer, CredentialHeader},
    domain::networks::parse_client_ip,
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

/// The request headers keygate reads, found in one pass over what Envoy sent:
/// `headers` (names in lower case, repeats joined with commas), or
/// `header_map` (repeats apart, raw values) when `encode_raw_headers` is set.
/// One pass rather than a map lookup per name: the generated map hashes with
/// SipHash, and a check reads a dozen names.
#[derive(Debug, Default)]
struct Seen<'a> {
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
    origin: Option<&'a str>,
    referer: Option<&'a str>,
    /// Every `x-keygate-*` name the client sent, in any spelling
    /// ([`edge::in_identity_namespace`]).
    identity: Vec<&'a str>,
    /// One of the identity headers keygate sets came more than once. Envoy
    /// overwrites a header keygate sets, but older releases replace only its
    /// first copy: a second one would reach the upstream beside keygate's.
    repeated_identity: bool,
}

impl<'a> Seen<'a> {
    /// `None` when a name or value of the `headers` map is not UTF-8: a
    /// request the generated types would not have decoded either.
    fn scan(http: &'a HttpRequest) -> Option<Self> {
        let mut seen = Self::default();
        for entry in &http.headers {
            let (name, value) = entry.text()?;
            seen.add(name, value, true);
        }
        for h in http.header_map.iter().flat_map(|m| &m.headers) {
            // `key` and `value` are proto strings: not UTF-8 is a malformed
            // request. `raw_value` is the client's bytes: a value that is not
            // text is no value (no credential: 401), never an RPC error that
            // the proxy's failure mode might let through.
            let (Ok(name), Ok(value)) =
                (std::str::from_utf8(&h.key), std::str::from_utf8(&h.value))
            else {
                return None;
            };
            let value = if value.is_empty() {
                std::str::from_utf8(&h.raw_value).unwrap_or_default()
            } else {
                value
            };
            seen.add(name, value, false);
        }
        Some(seen)
    }

    fn add(&mut self, name: &'a str, value: &'a str, joined: bool) {
        let slot = if name.eq_ignore_ascii_case(edge::AUTHORIZATION) {
            &mut self.authorization
        } else if name.eq_ignore_ascii_case(edge::API_KEY) {
            &mut self.api_key
        } else if name.eq_ignore_ascii_case("origin") {
            &mut self.origin
        } else if name.eq_ignore_ascii_case("referer") {
            &mut self.referer
        } else {
            if edge::in_identity_namespace(name) {
                let set_by_us = edge::IDENTITY.iter().any(|n| n.eq_ignore_ascii_case(name));
                let again = self.identity.iter().any(|n| n.eq_ignore_ascii_case(name));
                if set_by_us && (again || (joined && value.contains(','))) {
                    self.repeated_identity = true;
                }
                self.identity.push(name);
            }
            return;
        };
        // The first copy, as Envoy's own lookups would find it; in the
        // `headers` map the last entry of a name, as a decoded map keeps it.
        if slot.is_none() || joined {
            *slot = Some(value);
        }
    }
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
/// header (in any spelling: `X_Keygate_User_Id` too, which overwriting
/// `x-keygate-user-id` would leave in place) and the key's own header
/// removed, so the upstream sees neither a forged identity nor the secret.
fn allowed(seen: &Seen<'_>, answer: Answer, from: Option<CredentialHeader>) -> CheckResponse {
    let mut remove: Vec<String> = seen
        .identity
        .iter()
        .filter(|name| {
            !answer
                .identity
                .iter()
                .any(|(set, _)| set.eq_ignore_ascii_case(name))
        })
        .map(|name| name.to_ascii_lowercase())
        .collect();
    // X-Api-Key is keygate's own header: whatever it holds, never passed on.
    // Authorization only when it carried the key (another scheme is the
    // upstream's business).
    if from == Some(CredentialHeader::Authorization)
        || seen.authorization.is_some_and(edge::carries_bearer)
    {
        remove.push(edge::AUTHORIZATION.into());
    }
    if seen.api_key.is_some() {
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
        // Proto strings that are not UTF-8 make a malformed request, as the
        // generated types refused it whole.
        let extensions_are_text = attributes
            .context_extensions
            .iter()
            .all(|e| e.text().is_some());
        let (Some(seen), true) = (Seen::scan(&http), extensions_are_text) else {
            self.metrics.observe(None, start);
            return Err(Status::invalid_argument(
                "the request is not a valid message: a header or context extension is not UTF-8",
            ));
        };
        let (key, from) = edge::credential(seen.authorization, seen.api_key);
        // The last entry of a name, as a decoded map keeps it.
        let extension = |name: &str| {
            attributes
                .context_extensions
                .iter()
                .rev()
                .filter_map(wire::Entry::text)
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| v)
        };
        // Envoy has applied its own trusted hops (`xff_num_trusted_hops`) to
        // the source address already. A source that is not an IP address (a
        // Unix socket) is no address: a key restricted to networks fails closed.
        let source = attributes.source.as_ref();
        let client_ip = source
            .and_then(|s| s.address.as_ref())
            .and_then(|a| a.socket_address.as_ref())
            .and_then(|s| parse_client_ip(&s.address).ok());
        let client_principal = source.map_or("", |s| s.principal.as_str());
        let request = EdgeRequest {
            method: &http.method,
            path: Some(http.path.as_str()),
            key,
            origin: seen.origin.unwrap_or_default(),
            referer: seen.referer.unwrap_or_default(),
            extra_scopes: extension(SCOPES_EXTENSION),
            organization_id: extension(ORGANIZATION_EXTENSION),
            client_ip,
            client_principal,
        };
        let decision = if seen.repeated_identity {
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
            allowed(&seen, answer, from)
        } else {
            denied(answer)
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Entry, HeaderMap, RawHeader};

    fn raw(key: &str, raw_value: &[u8]) -> RawHeader {
        RawHeader {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::new(),
            raw_value: bytes::Bytes::copy_from_slice(raw_value),
        }
    }

    /// A client's raw header bytes that are not text read as no value, so a
    /// binary credential is a missing one (401), not a malformed request
    /// (an RPC error, which a proxy failing open would let through). Proto
    /// strings that are not UTF-8 are a malformed request, as before.
    #[test]
    fn raw_bytes_that_are_not_text_are_no_value() {
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    raw("authorization", b"Bearer \xff\xfe"),
                    raw("origin", b"https://a.example"),
                ],
            }),
            ..Default::default()
        };
        let seen = Seen::scan(&http).expect("scans");
        assert_eq!(seen.authorization, Some(""));
        assert_eq!(seen.origin, Some("https://a.example"));

        let http = HttpRequest {
            headers: vec![Entry {
                key: bytes::Bytes::from_static(b"authorization"),
                value: bytes::Bytes::from_static(b"Bearer \xff"),
            }],
            ..Default::default()
        };
        assert!(Seen::scan(&http).is_none());
    }
}
