//! `envoy.service.auth.v3.Authorization/Check` on the gRPC listener: Envoy's
//! (and Istio's) external authorization. A denial is a `CheckResponse` with the
//! HTTP answer Envoy sends the client; the RPC itself fails only when the key
//! cannot be looked up (UNAVAILABLE, so the proxy's `failure_mode_allow` and
//! `status_on_error` decide) or when the proxy's own configuration is wrong
//! (INVALID_ARGUMENT: a bad `context_extensions` scope or organization).

pub mod answer;
pub mod wire;

use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus,
    },
    pb::google::rpc,
};
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use self::answer::{Allowed, CheckAnswer};

pub use self::wire::authorization_server::AuthorizationServer;
use self::wire::{
    Check, CheckRequest, Header, HeaderKind, Malformed, authorization_server::Authorization,
};

use crate::{
    api::edge::{self, Answer, CredentialHeader, IdentityParts},
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
    /// Each key's identity headers, encoded: written once per key rather
    /// than field by field on every check.
    identity: IdentityParts<Bytes>,
}

impl EnvoyApi {
    pub fn new(authorizer: Authorizer) -> Self {
        Self {
            authorizer,
            metrics: VerifyMetrics::new("ext_authz"),
            identity: IdentityParts::new(edge::IDENTITY_PARTS),
        }
    }
}

/// The request headers keygate reads, found in one pass over what Envoy sent:
/// `headers` (names in lower case, repeats joined with commas), or
/// `header_map` (repeats apart, raw values) when `encode_raw_headers` is set.
/// One pass rather than a lookup per name: a check reads a dozen names.
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
    /// A header keygate reads whose name or value is a proto string that is
    /// not UTF-8 is a malformed request, as the generated types refused it.
    fn scan(check: &Check<'a>) -> Result<Self, Malformed> {
        let mut seen = Self::default();
        for header in &check.headers {
            seen.add(header)?;
        }
        Ok(seen)
    }

    fn add(&mut self, header: &Header<'a>) -> Result<(), Malformed> {
        let name = header.name;
        let joined = header.kind == HeaderKind::Joined;
        let slot = if name.eq_ignore_ascii_case(edge::AUTHORIZATION.as_bytes()) {
            &mut self.authorization
        } else if name.eq_ignore_ascii_case(edge::API_KEY.as_bytes()) {
            &mut self.api_key
        } else if name.eq_ignore_ascii_case(b"origin") {
            &mut self.origin
        } else if name.eq_ignore_ascii_case(b"referer") {
            &mut self.referer
        } else {
            if edge::in_identity_namespace(name) {
                let name = wire::text(name, "a header name")?;
                let set_by_us = edge::IDENTITY.iter().any(|n| n.eq_ignore_ascii_case(name));
                let again = self.identity.iter().any(|n| n.eq_ignore_ascii_case(name));
                if set_by_us && (again || (joined && header.value.contains(&b','))) {
                    self.repeated_identity = true;
                }
                self.identity.push(name);
            }
            return Ok(());
        };
        // `raw_value` is the client's bytes: a value that is not text is no
        // value (no credential: 401), never an RPC error that the proxy's
        // failure mode might let through.
        let value = match header.kind {
            HeaderKind::Raw => std::str::from_utf8(header.value).unwrap_or_default(),
            HeaderKind::Joined | HeaderKind::Apart => wire::text(header.value, "a header value")?,
        };
        // The first copy, as Envoy's own lookups would find it; in the
        // `headers` map the last entry of a name, as a decoded map keeps it.
        if slot.is_none() || joined {
            *slot = Some(value);
        }
        Ok(())
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
fn allowed(
    identity: &IdentityParts<Bytes>,
    seen: &Seen<'_>,
    answer: Answer,
    from: Option<CredentialHeader>,
) -> CheckAnswer {
    let forged = seen
        .identity
        .iter()
        .filter(|name| {
            !answer
                .identity()
                .any(|(set, _)| set.eq_ignore_ascii_case(name))
        })
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let response_headers = answer
        .headers
        .into_iter()
        .filter(|(name, _)| name.starts_with("ratelimit-"))
        .collect();
    match answer.key {
        Some(key) => CheckAnswer::Allowed(Allowed::new(
            identity.get(&key, answer::identity_headers),
            forged,
            // Authorization only when it carried the key (another scheme is
            // the upstream's business).
            from == Some(CredentialHeader::Authorization)
                || seen.authorization.is_some_and(edge::carries_bearer),
            // X-Api-Key is keygate's own header: whatever it holds, never
            // passed on.
            seen.api_key.is_some(),
            response_headers,
        )),
        // Cannot happen: an allowed outcome carries its key. Closed if it did.
        None => denied(Answer::unavailable()),
    }
}

fn denied(answer: Answer) -> CheckAnswer {
    let code = match answer.status {
        401 => tonic::Code::Unauthenticated,
        429 => tonic::Code::ResourceExhausted,
        _ => tonic::Code::PermissionDenied,
    };
    let body = answer.body().into_owned();
    let mut headers: Vec<HeaderValueOption> = answer
        .headers
        .into_iter()
        .map(|(name, value)| set(name, value))
        .collect();
    headers.push(set("content-type", "application/json"));
    CheckAnswer::Other(Box::new(CheckResponse {
        status: Some(rpc_status(code, &answer.message)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(answer.status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }))
}

/// The request as keygate's rules read it, and where its key was.
fn edge_request<'a>(
    check: &Check<'a>,
    seen: &Seen<'a>,
) -> Result<(EdgeRequest<'a>, Option<CredentialHeader>), Malformed> {
    let (key, from) = edge::credential(seen.authorization, seen.api_key);
    // The last entry of a name, as a decoded map keeps it.
    let extension = |name: &str| {
        check
            .extensions
            .iter()
            .rev()
            .find(|(k, _)| *k == name.as_bytes())
            .map_or(Ok(""), |(_, v)| wire::text(v, "a context extension"))
    };
    // Envoy has applied its own trusted hops (`xff_num_trusted_hops`) to the
    // source address already. A source that is not an IP address (a Unix
    // socket) is no address: a key restricted to networks fails closed.
    let source_address = wire::text(check.source_address, "the source address")?;
    let request = EdgeRequest {
        method: wire::text(check.method, "the method")?,
        path: Some(wire::text(check.path, "the path")?),
        key,
        origin: seen.origin.unwrap_or_default(),
        referer: seen.referer.unwrap_or_default(),
        extra_scopes: extension(SCOPES_EXTENSION)?,
        organization_id: extension(ORGANIZATION_EXTENSION)?,
        client_ip: parse_client_ip(source_address).ok(),
        client_principal: wire::text(check.source_principal, "the source principal")?,
    };
    Ok((request, from))
}

#[tonic::async_trait]
impl Authorization for EnvoyApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckAnswer>, Status> {
        let start = self.metrics.start();
        let bytes = request.into_inner().0;
        let read = Check::read(&bytes).and_then(|check| {
            let seen = Seen::scan(&check)?;
            let (request, from) = edge_request(&check, &seen)?;
            Ok((check.http, seen, request, from))
        });
        let (seen, request, from) = match read {
            Ok((true, seen, request, from)) => (seen, request, from),
            Ok((false, ..)) => {
                self.metrics.observe(None, start);
                return Err(Status::invalid_argument(
                    "attributes.request.http is required: keygate authorizes HTTP requests",
                ));
            }
            Err(e) => {
                self.metrics.observe(None, start);
                return Err(Status::invalid_argument(format!(
                    "the request is not a valid message: {e}"
                )));
            }
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
            allowed(&self.identity, &seen, answer, from)
        } else {
            denied(answer)
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(name: &'a [u8], value: &'a [u8], kind: HeaderKind) -> Header<'a> {
        Header { name, value, kind }
    }

    /// A client's raw header bytes that are not text read as no value, so a
    /// binary credential is a missing one (401), not a malformed request
    /// (an RPC error, which a proxy failing open would let through). Proto
    /// strings that are not UTF-8 are a malformed request, as before.
    #[test]
    fn raw_bytes_that_are_not_text_are_no_value() {
        let check = Check {
            headers: vec![
                header(b"authorization", b"Bearer \xff\xfe", HeaderKind::Raw),
                header(b"origin", b"https://a.example", HeaderKind::Raw),
            ],
            ..Default::default()
        };
        let seen = Seen::scan(&check).expect("scans");
        assert_eq!(seen.authorization, Some(""));
        assert_eq!(seen.origin, Some("https://a.example"));

        for kind in [HeaderKind::Joined, HeaderKind::Apart] {
            let check = Check {
                headers: vec![header(b"authorization", b"Bearer \xff", kind)],
                ..Default::default()
            };
            assert_eq!(
                Seen::scan(&check).expect_err("malformed"),
                Malformed::NotText("a header value")
            );
        }
    }
}
