//! keygate on the request path: Envoy's `Authorization/Check`,
//! called with a client built from Envoy's own protos (the `envoy-types`
//! crate), and HTTP forward auth on `/v1/authorize`, both under the Hoko route
//! policy. Allowed requests carry the caller's identity and never the secret;
//! each denial family has its status, headers and body; a client can neither
//! forge an identity header nor lower a requirement; limits, usage and metrics
//! count these calls as `VerifyKey` calls.

use std::collections::HashMap;

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse},
    pb::envoy::service::auth::v3::{
        AttributeContext, attribute_context::HttpRequest, attribute_context::Request as Attr,
        authorization_client::AuthorizationClient,
    },
};
use keygate::{
    domain::keys::{KeyPrefix, Secret},
    proto::{RateLimit, VerifyKeyRequest},
};
use serde_json::Value;
use tonic::Code;

use crate::{metrics::scrape, store_tests, support::*};

const ORG: &str = "hoko";

/// The README's worked example, as shipped: `deploy/edge/routes.toml`.
pub(crate) fn hoko_policy() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/edge/routes.toml");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Writes `text` to a fresh file and returns its path.
pub(crate) fn policy_file(text: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "keygate-routes-{}-{}.toml",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&path, text).expect("write policy");
    path.to_str().expect("utf-8 path").to_owned()
}

struct Edge {
    app: TestApp,
    envoy: AuthorizationClient<tonic::transport::Channel>,
    http: String,
}

async fn edge(b: Backend, extra: &[&str]) -> Edge {
    let policy = hoko_policy();
    let mut args = vec!["--http-listen", "127.0.0.1:0", "--route-policy", &policy];
    args.extend_from_slice(extra);
    let app = spawn_app_with(b, &args).await;
    let running = app.app.as_ref().expect("running");
    let http = format!(
        "http://{}/v1/authorize",
        running.http_addr().expect("http listener")
    );
    let envoy = AuthorizationClient::new(connect(running.addr()).await);
    Edge { app, envoy, http }
}

fn check(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Attr {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn with_extensions(mut req: CheckRequest, ext: &[(&str, &str)]) -> CheckRequest {
    if let Some(a) = req.attributes.as_mut() {
        a.context_extensions = ext
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }
    req
}

impl Edge {
    async fn check(&self, req: CheckRequest) -> Result<CheckResponse, tonic::Status> {
        self.envoy.clone().check(req).await.map(|r| r.into_inner())
    }

    async fn allowed(&self, req: CheckRequest) -> Allowed {
        let resp = self.check(req).await.expect("check answers");
        assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0), "{resp:?}");
        match resp.http_response {
            Some(HttpResponse::OkResponse(ok)) => Allowed {
                set: ok
                    .headers
                    .iter()
                    .map(|h| {
                        assert_eq!(
                            h.append_action,
                            HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                            "identity headers overwrite"
                        );
                        let h = h.header.as_ref().expect("header");
                        (h.key.clone(), h.value.clone())
                    })
                    .collect(),
                removed: ok.headers_to_remove,
                to_client: ok
                    .response_headers_to_add
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect(),
            },
            other => panic!("expected an OK response, got {other:?}"),
        }
    }

    async fn denied(&self, req: CheckRequest) -> Denied {
        let resp = self.check(req).await.expect("check answers");
        let grpc = resp.status.as_ref().map_or(-1, |s| s.code);
        match resp.http_response {
            Some(HttpResponse::DeniedResponse(d)) => Denied {
                grpc: Code::from_i32(grpc),
                http: d.status.map_or(0, |s| s.code),
                headers: d
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect(),
                body: serde_json::from_str(&d.body).expect("a JSON body"),
            },
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// `/v1/authorize` as nginx calls it.
    async fn forward(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .get(&self.http)
            .header("x-original-method", method)
            .header("x-original-uri", uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("forward auth answers")
    }
}

#[derive(Debug)]
struct Allowed {
    set: HashMap<String, String>,
    removed: Vec<String>,
    to_client: HashMap<String, String>,
}

#[derive(Debug)]
struct Denied {
    grpc: Code,
    http: i32,
    headers: HashMap<String, String>,
    body: Value,
}

impl Denied {
    fn assert(&self, grpc: Code, http: i32, code: &str) {
        assert_eq!((self.grpc, self.http), (grpc, http), "{self:?}");
        assert_eq!(
            self.headers.get("x-keygate-code").map(String::as_str),
            Some(code)
        );
        assert_eq!(self.body["code"], code, "{self:?}");
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(
            self.headers.get("www-authenticate").map(String::as_str),
            (http == 401).then_some("Bearer realm=\"keygate\""),
            "{self:?}"
        );
    }
}

/// A bot key of `org` with `links:read` and one call a minute.
pub(crate) fn once_a_minute(org: &str) -> keygate::proto::CreateKeyRequest {
    let mut req = bot_key(org, "limited", &["links:read"]);
    req.rate_limits = vec![RateLimit {
        name: "per_minute".into(),
        limit: 1,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }];
    req
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// Method, path, headers, then the expected gRPC code, HTTP status and code name.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, Code, i32, &'a str);

store_tests!(
    envoy_allows_with_the_identity_and_keeps_the_secret_and_forgeries_out,
    each_denial_family_has_its_status_headers_and_body,
);

async fn envoy_allows_with_the_identity_and_keeps_the_secret_and_forgeries_out(b: Backend) {
    let edge = edge(b, &[]).await;
    let (user, user_secret) = edge
        .app
        .create(admin(user_key(ORG, "reader", &["links:read"])))
        .await;
    let (bot, bot_secret) = edge
        .app
        .create(admin(bot_key(ORG, "robot", &["links:read"])))
        .await;

    let auth = bearer(&user_secret);
    let ok = edge
        .allowed(check(
            "GET",
            "/api/links?page=2",
            &[
                ("authorization", &auth),
                ("x-keygate-key-id", "forged"),
                ("x-keygate-user-id", "admin"),
                ("x-keygate-role", "owner"),
                ("x-api-key", "not-a-keygate-key"),
            ],
        ))
        .await;
    let expected: HashMap<String, String> = [
        ("x-keygate-key-id", user.id.as_str()),
        ("x-keygate-organization-id", ORG),
        ("x-keygate-key-type", "user"),
        ("x-keygate-user-id", user.user_id.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(ok.set, expected);
    let mut removed = ok.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["authorization", "x-api-key", "x-keygate-role"],
        "{ok:?}"
    );
    assert!(ok.to_client.is_empty(), "no limits, no RateLimit headers");

    // A bot key has no user: a forged user id is removed, not passed on.
    let ok = edge
        .allowed(check(
            "GET",
            "/api/links/abc",
            &[("x-api-key", &bot_secret), ("x-keygate-user-id", "admin")],
        ))
        .await;
    assert_eq!(
        ok.set.get("x-keygate-key-type").map(String::as_str),
        Some("bot")
    );
    assert_eq!(ok.set.get("x-keygate-key-id"), Some(&bot.id));
    assert!(!ok.set.contains_key("x-keygate-user-id"));
    let mut removed = ok.removed.clone();
    removed.sort();
    assert_eq!(removed, ["x-api-key", "x-keygate-user-id"]);

    // The same forgery with underscores, which CGI, WSGI and Rack-style
    // upstreams read as the same variable: removed too, in every case, and
    // beside a header keygate sets under the hyphenated name.
    let ok = edge
        .allowed(check(
            "GET",
            "/api/links/abc",
            &[
                ("x-api-key", &bot_secret),
                ("x_keygate_user_id", "admin"),
                ("X_Keygate_Key_Id", "forged"),
                ("x-keygate_organization_id", "victim"),
            ],
        ))
        .await;
    assert_eq!(ok.set.get("x-keygate-key-id"), Some(&bot.id));
    let mut removed = ok.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "x-api-key",
            "x-keygate_organization_id",
            "x_keygate_key_id",
            "x_keygate_user_id"
        ]
    );

    // Envoy joins a repeated header with commas in `headers` and keeps the
    // copies apart in `header_map`; older Envoys overwrite only the first copy
    // of a header keygate sets, so a repeated identity header is refused.
    let d = edge
        .denied(check(
            "GET",
            "/api/links",
            &[
                ("authorization", &auth),
                ("x-keygate-organization-id", "victim,victim"),
            ],
        ))
        .await;
    d.assert(Code::PermissionDenied, 403, "ROUTE_NOT_ALLOWED");
    let mut repeated = check("GET", "/api/links", &[]);
    if let Some(http) = repeated
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        let entry = |k: &str, v: &str| envoy_types::pb::envoy::config::core::v3::HeaderValue {
            key: k.into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        http.header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: vec![
                entry("authorization", &auth),
                entry("x-keygate-user-id", "victim"),
                entry("X-Keygate-User-Id", "victim"),
            ],
        });
    }
    edge.denied(repeated)
        .await
        .assert(Code::PermissionDenied, 403, "ROUTE_NOT_ALLOWED");
    // A Bearer key among repeated Authorization values never reaches the
    // upstream, even when the key was read from X-Api-Key.
    let joined = format!("Basic dXNlcg==,Bearer {user_secret}");
    let ok = edge
        .allowed(check(
            "GET",
            "/api/links",
            &[("authorization", &joined), ("x-api-key", &user_secret)],
        ))
        .await;
    assert!(ok.removed.iter().any(|h| h == "authorization"), "{ok:?}");
    assert!(ok.removed.iter().any(|h| h == "x-api-key"), "{ok:?}");

    // Forward auth answers the same identity.
    let resp = edge
        .forward("GET", "/api/links", &[("authorization", &auth)])
        .await;
    assert_eq!(resp.status(), 200);
    for (k, v) in &expected {
        assert_eq!(
            resp.headers().get(k).and_then(|v| v.to_str().ok()),
            Some(v.as_str()),
            "{k}"
        );
    }
    // A client's forged identity, in either spelling, never comes back in
    // forward auth's answer (which the proxy copies onto the request); the
    // proxy's own configuration drops the client's copies (see nginx.rs).
    let resp = edge
        .forward(
            "GET",
            "/api/links/abc",
            &[
                ("x-api-key", &bot_secret),
                ("x_keygate_user_id", "admin"),
                ("x-keygate-user-id", "admin"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-keygate-key-id")
            .and_then(|v| v.to_str().ok()),
        Some(bot.id.as_str())
    );
    assert!(
        !resp
            .headers()
            .keys()
            .any(|k| k.as_str().ends_with("user_id") || k.as_str().ends_with("user-id")),
        "{:?}",
        resp.headers()
    );
    edge.app.stop().await;
}

async fn each_denial_family_has_its_status_headers_and_body(b: Backend) {
    let edge = edge(b, &[]).await;
    let (reader, reader_secret) = edge
        .app
        .create(admin(user_key(ORG, "reader", &["links:read"])))
        .await;
    let (_, other_org_secret) = edge
        .app
        .create(admin(bot_key("elsewhere", "robot", &["links:read"])))
        .await;
    let mut pinned = bot_key(ORG, "pinned", &["links:read"]);
    pinned.allowed_hostnames = vec!["app.hoko.example".into()];
    let (_, pinned_secret) = edge.app.create(admin(pinned)).await;
    let (_, limited_secret) = edge.app.create(admin(once_a_minute(ORG))).await;
    let (revoked, revoked_secret) = edge
        .app
        .create(admin(bot_key(ORG, "gone", &["links:read"])))
        .await;
    edge.app.revoke(ORG, &revoked.id).await;
    let unknown = Secret::generate(&KeyPrefix::default()).into_exposed();

    let reader_auth = bearer(&reader_secret);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/links",
            vec![],
            Code::Unauthenticated,
            401,
            "VERIFY_CODE_MISSING",
        ),
        (
            "GET",
            "/api/links",
            vec![("authorization", "Bearer kg_live_nope".into())],
            Code::Unauthenticated,
            401,
            "VERIFY_CODE_MALFORMED",
        ),
        (
            "GET",
            "/api/links",
            vec![("x-api-key", unknown.clone())],
            Code::Unauthenticated,
            401,
            "VERIFY_CODE_NOT_FOUND",
        ),
        (
            "GET",
            "/api/links",
            vec![("authorization", bearer(&revoked_secret))],
            Code::Unauthenticated,
            401,
            "VERIFY_CODE_REVOKED",
        ),
        (
            "POST",
            "/api/links",
            vec![("authorization", reader_auth.clone())],
            Code::PermissionDenied,
            403,
            "VERIFY_CODE_INSUFFICIENT_SCOPE",
        ),
        (
            "GET",
            "/api/links",
            vec![
                ("authorization", bearer(&pinned_secret)),
                ("origin", "https://evil.example".into()),
            ],
            Code::PermissionDenied,
            403,
            "VERIFY_CODE_HOSTNAME_BLOCKED",
        ),
        (
            "GET",
            "/api/admin",
            vec![("authorization", reader_auth.clone())],
            Code::PermissionDenied,
            403,
            "ROUTE_NOT_ALLOWED",
        ),
        (
            "PATCH",
            "/api/links",
            vec![("authorization", reader_auth.clone())],
            Code::PermissionDenied,
            403,
            "ROUTE_NOT_ALLOWED",
        ),
    ];
    for (method, path, headers, grpc, http, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        edge.denied(check(method, path, &headers))
            .await
            .assert(*grpc, *http, code);
        // The same request through forward auth: the same status, header and body.
        let resp = edge.forward(method, path, &headers).await;
        assert_eq!(i32::from(resp.status().as_u16()), *http, "{method} {path}");
        assert_eq!(
            resp.headers()
                .get("x-keygate-code")
                .and_then(|v| v.to_str().ok()),
            Some(*code)
        );
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            (*http == 401).then_some("Bearer realm=\"keygate\"")
        );
        let body: Value =
            serde_json::from_str(&resp.text().await.expect("body")).expect("JSON body");
        assert_eq!(body["code"], *code);
    }

    // The organization comes from the route's context_extensions.
    let req = with_extensions(
        check(
            "GET",
            "/api/links",
            &[("authorization", &bearer(&other_org_secret))],
        ),
        &[("keygate_organization_id", ORG)],
    );
    edge.denied(req).await.assert(
        Code::PermissionDenied,
        403,
        "VERIFY_CODE_ORGANIZATION_MISMATCH",
    );

    // Rate limited: 429 with Retry-After and the RateLimit headers.
    let limited_auth = bearer(&limited_secret);
    let ok = edge
        .allowed(check(
            "GET",
            "/api/links",
            &[("authorization", &limited_auth)],
        ))
        .await;
    assert_eq!(
        ok.to_client.get("ratelimit-limit").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        ok.to_client.get("ratelimit-remaining").map(String::as_str),
        Some("0")
    );
    let d = edge
        .denied(check(
            "GET",
            "/api/links",
            &[("authorization", &limited_auth)],
        ))
        .await;
    d.assert(Code::ResourceExhausted, 429, "VERIFY_CODE_RATE_LIMITED");
    let retry: i64 = d.headers["retry-after"].parse().expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let resp = edge
        .forward("GET", "/api/links", &[("authorization", &limited_auth)])
        .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");

    // Forward auth without the original URI: with a policy, nothing to match.
    let resp = reqwest::Client::new()
        .get(&edge.http)
        .header("authorization", &reader_auth)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-keygate-code"], "ROUTE_NOT_ALLOWED");
    // Traefik's and Caddy's headers are read too.
    let resp = reqwest::Client::new()
        .post(&edge.http)
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/links/x?y=1")
        .header("authorization", &reader_auth)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keygate-key-id"], reader.id.as_str());
    // Traefik and Caddy pass a client's own X-Original-URI through beside the
    // X-Forwarded-Uri they set: two different answers are refused, whichever
    // the client hoped would be read.
    for (client_sets, proxy_sets) in [
        (
            ("x-original-uri", "/api/links"),
            ("x-forwarded-uri", "/api/admin"),
        ),
        (
            ("x-original-method", "GET"),
            ("x-forwarded-method", "DELETE"),
        ),
    ] {
        let resp = reqwest::Client::new()
            .get(&edge.http)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api/links")
            .header(client_sets.0, client_sets.1)
            .header(proxy_sets.0, proxy_sets.1)
            .header("authorization", &reader_auth)
            .send()
            .await
            .expect("answers");
        assert_eq!(resp.status(), 403, "{client_sets:?} {proxy_sets:?}");
        assert_eq!(resp.headers()["x-keygate-code"], "ROUTE_NOT_ALLOWED");
    }
    // The same header twice is as ambiguous.
    let resp = reqwest::Client::new()
        .get(&edge.http)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/links")
        .header("x-original-uri", "/api/admin")
        .header("authorization", &reader_auth)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 403);
    edge.app.stop().await;
}

/// Route matching on normalised paths: traversal, encodings and what cannot be
/// normalised never borrow another route's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_a_route_is_chosen() {
    let edge = edge(Backend::Sqlite, &[]).await;
    let (_, reader) = edge
        .app
        .create(admin(user_key(ORG, "reader", &["links:read"])))
        .await;
    let auth = bearer(&reader);
    for path in [
        "/api/links",
        "/api//links/",
        "/api/links/./x",
        "/api/l%69nks",
        "/api/links/x/..",
        "/api/links/x/../../me",
        "/api/admin/../links?x=/admin",
    ] {
        edge.allowed(check("GET", path, &[("authorization", &auth)]))
            .await;
    }
    for path in [
        "/api/links/../admin",
        "/api/links/%2E%2E/admin",
        "/api/links/x/y",
        "/api/links%2Fx",
        "/api/links/..;/admin",
        "/api/links;x",
        "/api/links/%2e%2e/me",
        "/api/links/x//../../me",
        "/api/links#/../../me",
        "/api/links/%252e%252e/admin",
        "/api/links/%zz",
        "/api/../../links",
        "api/links",
        "",
    ] {
        edge.denied(check("GET", path, &[("authorization", &auth)]))
            .await
            .assert(Code::PermissionDenied, 403, "ROUTE_NOT_ALLOWED");
        let resp = edge.forward("GET", path, &[("authorization", &auth)]).await;
        assert_eq!(resp.status(), 403, "{path}");
    }
    edge.app.stop().await;
}

/// `context_extensions` add scopes to the policy's and never replace them; a
/// malformed one is the proxy's configuration error (INVALID_ARGUMENT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_extensions_add_requirements_and_never_remove_them() {
    let edge = edge(Backend::Sqlite, &[]).await;
    let (_, reader) = edge
        .app
        .create(admin(user_key(ORG, "reader", &["links:read"])))
        .await;
    let (_, both) = edge
        .app
        .create(admin(bot_key(ORG, "both", &["links:read", "billing:read"])))
        .await;
    let get = |secret: &str, ext: &[(&str, &str)]| {
        with_extensions(
            check("GET", "/api/links", &[("authorization", &bearer(secret))]),
            ext,
        )
    };
    let more = [("keygate_required_scopes", "billing:read")];
    edge.denied(get(&reader, &more)).await.assert(
        Code::PermissionDenied,
        403,
        "VERIFY_CODE_INSUFFICIENT_SCOPE",
    );
    edge.allowed(get(&both, &more)).await;
    // An empty extension does not lift the policy's links:read.
    let (_, nothing) = edge
        .app
        .create(admin(bot_key(ORG, "nothing", &["billing:read"])))
        .await;
    edge.denied(get(&nothing, &[("keygate_required_scopes", "")]))
        .await
        .assert(
            Code::PermissionDenied,
            403,
            "VERIFY_CODE_INSUFFICIENT_SCOPE",
        );
    for (ext, field) in [
        (
            ("keygate_required_scopes", "links:read Billing"),
            "context_extensions.keygate_required_scopes",
        ),
        (
            ("keygate_organization_id", "no spaces"),
            "context_extensions.keygate_organization_id",
        ),
    ] {
        let status = edge
            .check(get(&both, &[ext]))
            .await
            .expect_err("a bad extension is refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), [field]);
    }
    // A check request that is not about HTTP says so.
    let status = edge
        .check(CheckRequest::default())
        .await
        .expect_err("no http attributes");
    assert_eq!(status.code(), Code::InvalidArgument);
    edge.app.stop().await;
}

/// A key that is not cached while the store cannot answer: the Check RPC fails
/// UNAVAILABLE (Envoy's failure_mode_allow decides) and forward auth answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_is_unavailable_not_a_denial() {
    let edge = edge(Backend::MySql, &["--database-timeout", "300ms"]).await;
    let unknown = Secret::generate(&KeyPrefix::default()).into_exposed();
    let mut locker = lock_keys_table(&edge.app.db).await;
    let status = edge
        .check(check("GET", "/api/links", &[("x-api-key", &unknown)]))
        .await
        .expect_err("no answer without the store");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let resp = edge
        .forward("GET", "/api/links", &[("x-api-key", &unknown)])
        .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-keygate-code"], "UNAVAILABLE");
    unlock(&mut locker).await;
    edge.denied(check("GET", "/api/links", &[("x-api-key", &unknown)]))
        .await
        .assert(Code::Unauthenticated, 401, "VERIFY_CODE_NOT_FOUND");
    edge.app.stop().await;
}

/// Envoy, forward auth and `VerifyKey` spend the same rate limit and are
/// counted in the same metric, by entry point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_spends_the_same_limits_and_is_counted() {
    let edge = edge(Backend::Sqlite, &[]).await;
    let mut req = bot_key(ORG, "three", &["links:read"]);
    req.rate_limits = vec![RateLimit {
        name: "per_hour".into(),
        limit: 3,
        window: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    }];
    let (_, secret) = edge.app.create(admin(req)).await;
    let auth = bearer(&secret);
    edge.allowed(check("GET", "/api/links", &[("authorization", &auth)]))
        .await;
    let resp = edge
        .forward("GET", "/api/links", &[("authorization", &auth)])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-limit"], "3");
    assert_eq!(resp.headers()["ratelimit-remaining"], "1");
    let reset: i64 = resp.headers()["ratelimit-reset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&reset), "{reset}");
    let v = edge
        .app
        .verify(VerifyKeyRequest {
            key: secret.clone(),
            ..Default::default()
        })
        .await;
    assert!(v.valid, "{v:?}");
    edge.denied(check("GET", "/api/links", &[("authorization", &auth)]))
        .await
        .assert(Code::ResourceExhausted, 429, "VERIFY_CODE_RATE_LIMITED");
    let resp = edge.forward("GET", "/api/admin", &[]).await;
    assert_eq!(resp.status(), 403);

    let addr = edge.app.app.as_ref().expect("running").metrics_addr();
    let (_, metrics) = scrape(addr).await;
    for (series, value) in [
        (
            r#"keygate_verify_total{code="valid",entry_point="ext_authz"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="rate_limited",entry_point="ext_authz"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="valid",entry_point="http"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="route_not_allowed",entry_point="http"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="valid",entry_point="grpc"}"#,
            1.0,
        ),
    ] {
        assert!(
            metrics.get(series).is_some_and(|v| *v >= value),
            "{series}: {:?}",
            metrics.get(series)
        );
    }
    edge.app.stop().await;
}

/// The HTTP listener's bounds: headers over 16 KiB get 431 without a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let edge = edge(Backend::Sqlite, &[]).await;
    let big = "x".repeat(17 * 1024);
    let resp = edge
        .forward("GET", "/api/links", &[("x-padding", &big)])
        .await;
    assert_eq!(resp.status(), 431);
    let resp = edge.forward("GET", "/api/links", &[]).await;
    assert_eq!(resp.status(), 401, "a normal request still answers");
    edge.app.stop().await;
}

/// `/healthz` answers 200 `ok` with no credentials and no route policy
/// lookup, behind the same bounds as every route (headers over 16 KiB: 431).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_answers_its_liveness_probe() {
    let edge = edge(Backend::Sqlite, &[]).await;
    let url = edge.http.replace("/v1/authorize", "/healthz");
    let resp = reqwest::get(&url).await.expect("healthz");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "ok\n");
    let resp = reqwest::Client::new()
        .get(&url)
        .header("x-padding", "x".repeat(17 * 1024))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 431);
    edge.app.stop().await;
}

/// A bad policy file stops the start, naming the file and the line; the
/// policies we ship parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_stops_the_start() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/edge/routes.toml");
    keygate::domain::routes::RoutePolicy::load(&shipped).expect("deploy/edge/routes.toml parses");
    let db = TestDb::create(Backend::Sqlite).await;
    let path = policy_file("[[route]]\npath = \"/api/links\"\nscopes = [\"Links:read\"]\n");
    let err = start_app(&db, &["--route-policy", &path])
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&path) && msg.contains("line 3") && msg.contains("Links:read"),
        "{msg}"
    );
    let err = start_app(&db, &["--route-policy", "/nonexistent/routes.toml"])
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("/nonexistent/routes.toml"),
        "{err}"
    );
    db.drop_db().await;
}
