//! Who may present a key, and from where: `allowed_networks` and
//! `bound_principals` through every admin path and every entry point. Each
//! match and mismatch (v4, v6, IPv4-mapped, a bare address, both edges of a
//! prefix), fail-closed when the caller does not say, a malformed `client_ip`
//! refused, bad entries named by index, an update taking effect at once on this
//! instance and through the invalidation poll on another; Envoy's source
//! address and principal; forward auth believing `X-Forwarded-For` and
//! `X-Client-Principal` only from a trusted proxy.

use std::{net::SocketAddr, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, HttpResponse},
    pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address},
        service::auth::v3::{
            AttributeContext, attribute_context::HttpRequest, attribute_context::Peer,
            attribute_context::Request as Attr, authorization_client::AuthorizationClient,
        },
    },
};
use keygate::proto::{
    self, CreateKeyRequest, UpdateKeyRequest, VerifyCode, VerifyKeyRequest,
    key_verify_client::KeyVerifyClient,
};
use prost_types::FieldMask;

use crate::{store_tests, support::*};

const ORG: &str = "acme";
const BILLING: &str = "spiffe://acme.test/ns/billing/sa/api";

fn restricted(networks: &[&str], principals: &[&str]) -> CreateKeyRequest {
    CreateKeyRequest {
        allowed_networks: networks.iter().map(|s| (*s).to_owned()).collect(),
        bound_principals: principals.iter().map(|s| (*s).to_owned()).collect(),
        ..bot_key(ORG, "restricted", &["links:read"])
    }
}

fn from(secret: &str, ip: &str, principal: &str) -> VerifyKeyRequest {
    VerifyKeyRequest {
        client_ip: ip.into(),
        client_principal: principal.into(),
        ..verify_req(secret, &["links:read"])
    }
}

fn update(id: &str, networks: &[&str], principals: &[&str], paths: &[&str]) -> UpdateKeyRequest {
    UpdateKeyRequest {
        organization_id: ORG.into(),
        id: id.into(),
        allowed_networks: networks.iter().map(|s| (*s).to_owned()).collect(),
        bound_principals: principals.iter().map(|s| (*s).to_owned()).collect(),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ..Default::default()
    }
}

store_tests!(
    networks_match_at_every_edge_and_fail_closed,
    principals_match_exactly_or_by_one_segment,
    bad_entries_are_named_and_change_nothing,
    an_update_applies_at_once_here_and_on_another_instance,
    envoy_reads_the_source_address_and_principal,
);

async fn networks_match_at_every_edge_and_fail_closed(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = app
        .create(admin(restricted(
            &[
                "10.1.0.0/16",
                "192.0.2.7",
                "2001:db8:1::/48",
                "::ffff:198.51.100.0/120",
                "10.1.0.0/16",
            ],
            &[],
        )))
        .await;
    // Stored normalised: a bare address is a /32, a mapped network its IPv4
    // one, duplicates once, in the order given; and so read back.
    let want = [
        "10.1.0.0/16",
        "192.0.2.7/32",
        "2001:db8:1::/48",
        "198.51.100.0/24",
    ];
    assert_eq!(key.allowed_networks, want);
    assert_eq!(app.get(ORG, &key.id).await.allowed_networks, want);
    assert_eq!(app.all_keys(ORG).await[0].allowed_networks, want);
    for (ip, want) in [
        ("10.1.0.0", VerifyCode::Valid),
        ("10.1.255.255", VerifyCode::Valid),
        ("10.0.255.255", VerifyCode::NetworkBlocked),
        ("10.2.0.0", VerifyCode::NetworkBlocked),
        ("192.0.2.7", VerifyCode::Valid),
        ("192.0.2.6", VerifyCode::NetworkBlocked),
        ("192.0.2.8", VerifyCode::NetworkBlocked),
        ("::ffff:10.1.2.3", VerifyCode::Valid),
        ("::ffff:10.2.0.0", VerifyCode::NetworkBlocked),
        ("198.51.100.255", VerifyCode::Valid),
        ("198.51.101.0", VerifyCode::NetworkBlocked),
        ("2001:db8:1::", VerifyCode::Valid),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", VerifyCode::Valid),
        ("2001:db8:2::", VerifyCode::NetworkBlocked),
        (
            "2001:db8:0:ffff:ffff:ffff:ffff:ffff",
            VerifyCode::NetworkBlocked,
        ),
        // An IPv4-compatible (not mapped) address is IPv6, not 10.1.2.3.
        ("::10.1.2.3", VerifyCode::NetworkBlocked),
        // Fail closed: no address is no network.
        ("", VerifyCode::NetworkBlocked),
    ] {
        assert_eq!(app.verify_code(from(&secret, ip, "")).await, want, "{ip:?}");
    }
    // A denial still names the key, and the check comes before the scopes.
    let denied = app
        .verify(VerifyKeyRequest {
            required_scopes: vec!["billing:write".into()],
            ..from(&secret, "10.9.9.9", "")
        })
        .await;
    assert_eq!(denied.code(), VerifyCode::NetworkBlocked);
    assert_eq!(denied.key.map(|k| k.id), Some(key.id.clone()));
    assert!(denied.missing_scopes.is_empty());
    // After the hostnames: a blocked origin is told first.
    let (_, hosted) = app
        .create(admin(CreateKeyRequest {
            allowed_hostnames: vec!["app.acme.test".into()],
            ..restricted(&["10.0.0.0/8"], &[])
        }))
        .await;
    let req = VerifyKeyRequest {
        origin: "https://evil.test".into(),
        ..from(&hosted, "192.0.2.1", "")
    };
    assert_eq!(app.verify_code(req).await, VerifyCode::HostnameBlocked);
    // A malformed address is the caller's mistake, whatever the key.
    for bad in [
        "10.1.2.3:443",
        "[2001:db8::1]",
        "10.1.2",
        "fe80::1%eth0",
        "ten",
    ] {
        let result = app.verify.clone().verify_key(from(&secret, bad, "")).await;
        assert_bad_field(result, "client_ip");
    }
    // A key without networks ignores the address, given or not.
    let (_, open) = app
        .create(admin(bot_key(ORG, "open", &["links:read"])))
        .await;
    for ip in ["", "192.0.2.1", "2001:db8::1"] {
        assert_eq!(
            app.verify_code(from(&open, ip, "")).await,
            VerifyCode::Valid
        );
    }
    app.stop().await;
}

async fn principals_match_exactly_or_by_one_segment(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = app
        .create(admin(restricted(
            &[],
            &[BILLING, "spiffe://acme.test/ns/reports/sa/*"],
        )))
        .await;
    assert_eq!(
        key.bound_principals,
        [BILLING, "spiffe://acme.test/ns/reports/sa/*"]
    );
    for (principal, want) in [
        (BILLING, VerifyCode::Valid),
        (
            "spiffe://acme.test/ns/billing/sa/api2",
            VerifyCode::PrincipalMismatch,
        ),
        (
            "spiffe://acme.test/ns/billing/sa",
            VerifyCode::PrincipalMismatch,
        ),
        (
            "SPIFFE://acme.test/ns/billing/sa/api",
            VerifyCode::PrincipalMismatch,
        ),
        ("spiffe://acme.test/ns/reports/sa/export", VerifyCode::Valid),
        (
            "spiffe://acme.test/ns/reports/sa/",
            VerifyCode::PrincipalMismatch,
        ),
        (
            "spiffe://acme.test/ns/reports/sa/a/b",
            VerifyCode::PrincipalMismatch,
        ),
        (
            "spiffe://acme.test/ns/reports/sa",
            VerifyCode::PrincipalMismatch,
        ),
        ("", VerifyCode::PrincipalMismatch),
    ] {
        assert_eq!(
            app.verify_code(from(&secret, "", principal)).await,
            want,
            "{principal:?}"
        );
    }
    // Both restrictions: the network is checked first, and both must pass.
    let (_, both) = app
        .create(admin(restricted(&["10.0.0.0/8"], &[BILLING])))
        .await;
    for (ip, principal, want) in [
        ("10.0.0.1", BILLING, VerifyCode::Valid),
        ("192.0.2.1", "", VerifyCode::NetworkBlocked),
        ("192.0.2.1", BILLING, VerifyCode::NetworkBlocked),
        ("10.0.0.1", "", VerifyCode::PrincipalMismatch),
    ] {
        assert_eq!(app.verify_code(from(&both, ip, principal)).await, want);
    }
    app.stop().await;
}

async fn bad_entries_are_named_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let create = |networks: Vec<String>, principals: Vec<String>| {
        let mut admin_client = app.admin.clone();
        async move {
            admin_client
                .create_key(admin(CreateKeyRequest {
                    allowed_networks: networks,
                    bound_principals: principals,
                    ..bot_key(ORG, "bad", &["links:read"])
                }))
                .await
        }
    };
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for (networks, principals, field) in [
        (
            s(&["10.0.0.0/8", "10.0.0.1/8"]),
            s(&[]),
            "allowed_networks[1]",
        ),
        (s(&["10.0.0.0/33"]), s(&[]), "allowed_networks[0]"),
        (s(&["", "10.0.0.0/8"]), s(&[]), "allowed_networks[0]"),
        (s(&["example.com"]), s(&[]), "allowed_networks[0]"),
        (s(&[]), s(&["billing-api"]), "bound_principals[0]"),
        (
            s(&[]),
            s(&[BILLING, "spiffe://acme.test/*/x"]),
            "bound_principals[1]",
        ),
        (
            s(&[]),
            s(&["spiffe://acme.test/ns/a b"]),
            "bound_principals[0]",
        ),
    ] {
        assert_bad_field(create(networks, principals).await, field);
    }
    let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    assert_bad_field(create(many, Vec::new()).await, "allowed_networks");
    let many: Vec<String> = (0..17)
        .map(|i| format!("spiffe://acme.test/sa/{i}"))
        .collect();
    assert_bad_field(create(Vec::new(), many).await, "bound_principals");
    assert!(
        app.all_keys(ORG).await.is_empty(),
        "a refused create stores nothing"
    );

    // An update with a bad entry changes nothing, not even the good fields.
    let (key, _) = app.create(admin(restricted(&["10.0.0.0/8"], &[]))).await;
    let mut bad = update(
        &key.id,
        &["192.0.2.0/24", "nope"],
        &[],
        &["allowed_networks", "name"],
    );
    bad.name = "renamed".into();
    assert_bad_field(
        app.admin.clone().update_key(admin(bad)).await,
        "allowed_networks[1]",
    );
    let after = app.get(ORG, &key.id).await;
    assert_eq!(
        (after.name.as_str(), after.allowed_networks),
        ("restricted", vec!["10.0.0.0/8".to_owned()])
    );
    app.stop().await;
}

async fn an_update_applies_at_once_here_and_on_another_instance(b: Backend) {
    let app = spawn_app(b).await;
    let other = start_app(&app.db, &[]).await.expect("second instance");
    let other_verify = KeyVerifyClient::new(connect(other.addr()).await);
    let code_on_other = |req: VerifyKeyRequest| {
        let mut client = other_verify.clone();
        async move {
            client
                .verify_key(req)
                .await
                .expect("verify")
                .into_inner()
                .code()
        }
    };
    let (key, secret) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    // Both instances have the key cached, unrestricted.
    assert_eq!(
        app.verify_code(from(&secret, "192.0.2.1", "")).await,
        VerifyCode::Valid
    );
    assert_eq!(
        code_on_other(from(&secret, "192.0.2.1", "")).await,
        VerifyCode::Valid
    );

    let updated = app
        .admin
        .clone()
        .update_key(admin(update(
            &key.id,
            &["10.0.0.0/8"],
            &[BILLING],
            &["allowed_networks", "bound_principals"],
        )))
        .await
        .expect("update")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(updated.allowed_networks, ["10.0.0.0/8"]);
    assert_eq!(updated.bound_principals, [BILLING]);
    // At once on the instance that made the change.
    assert_eq!(
        app.verify_code(from(&secret, "192.0.2.1", BILLING)).await,
        VerifyCode::NetworkBlocked
    );
    assert_eq!(
        app.verify_code(from(&secret, "10.0.0.1", BILLING)).await,
        VerifyCode::Valid
    );
    // On the other through the invalidation poll (its cache TTL is a minute).
    eventually(
        Duration::from_secs(30),
        "the other instance to see the networks",
        || async {
            code_on_other(from(&secret, "192.0.2.1", BILLING)).await == VerifyCode::NetworkBlocked
        },
    )
    .await;
    assert_eq!(
        code_on_other(from(&secret, "10.0.0.1", "")).await,
        VerifyCode::PrincipalMismatch
    );

    // Empty lists with their paths remove the restrictions.
    app.admin
        .clone()
        .update_key(admin(update(
            &key.id,
            &[],
            &[],
            &["allowed_networks", "bound_principals"],
        )))
        .await
        .expect("update");
    let cleared = app.get(ORG, &key.id).await;
    assert!(cleared.allowed_networks.is_empty() && cleared.bound_principals.is_empty());
    assert_eq!(
        app.verify_code(from(&secret, "", "")).await,
        VerifyCode::Valid
    );
    // The events keep each change.
    let actions: Vec<i32> = app
        .events(ORG, &key.id)
        .await
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            proto::KeyEventAction::Created as i32,
            proto::KeyEventAction::Updated as i32,
            proto::KeyEventAction::Updated as i32
        ]
    );
    other.shutdown().await.expect("clean shutdown");
    app.stop().await;
}

fn envoy_check(secret: &str, source: Option<(&str, &str)>) -> CheckRequest {
    let source = source.map(|(ip, principal)| Peer {
        address: (!ip.is_empty()).then(|| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(40_000)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(Attr {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/links".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {secret}"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The HTTP status Envoy would send, and keygate's code header on a denial.
async fn envoy_status(
    client: &AuthorizationClient<tonic::transport::Channel>,
    req: CheckRequest,
) -> (i32, String) {
    let resp = client.clone().check(req).await.expect("check").into_inner();
    match resp.http_response {
        Some(HttpResponse::OkResponse(_)) => (200, String::new()),
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.map_or(0, |s| s.code),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-keygate-code")
                .map(|h| h.value.clone())
                .unwrap_or_default(),
        ),
        other => panic!("not an answer to a client: {other:?}"),
    }
}

async fn envoy_reads_the_source_address_and_principal(b: Backend) {
    let app = spawn_app(b).await;
    let envoy = AuthorizationClient::new(connect(app.app.as_ref().expect("app").addr()).await);
    let (_, secret) = app
        .create(admin(restricted(
            &["10.0.0.0/8", "2001:db8::/32"],
            &[BILLING],
        )))
        .await;
    let ok = (200, String::new());
    let network = (403, "VERIFY_CODE_NETWORK_BLOCKED".to_owned());
    let principal = (403, "VERIFY_CODE_PRINCIPAL_MISMATCH".to_owned());
    for (source, want) in [
        (Some(("10.1.2.3", BILLING)), &ok),
        (Some(("2001:db8::7", BILLING)), &ok),
        (Some(("::ffff:10.1.2.3", BILLING)), &ok),
        (Some(("192.0.2.1", BILLING)), &network),
        (
            Some(("10.1.2.3", "spiffe://acme.test/ns/other/sa/api")),
            &principal,
        ),
        (Some(("10.1.2.3", "")), &principal),
        // No source at all, or one that is not an IP address (a Unix socket
        // path): no address, so the key fails closed.
        (Some(("", BILLING)), &network),
        (Some(("/run/envoy.sock", BILLING)), &network),
        (None, &network),
    ] {
        assert_eq!(
            &envoy_status(&envoy, envoy_check(&secret, source)).await,
            want,
            "{source:?}"
        );
    }
    app.stop().await;
}

/// `/v1/authorize` from `local` (a loopback address the client binds), with
/// headers; the status and keygate's code header.
async fn forward(
    http: SocketAddr,
    local: &str,
    secret: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = http_client_from(local);
    let mut req = client
        .get(format!("http://{http}/v1/authorize"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/links")
        .bearer_auth(secret);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("forward auth answers");
    let code = resp
        .headers()
        .get("x-keygate-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (resp.status().as_u16(), code)
}

/// The peer address, the key, the headers, and the expected status and code.
type ForwardCase<'a> = (
    &'a str,
    &'a String,
    Vec<(&'a str, &'a str)>,
    &'a (u16, String),
);

/// A client that reaches keygate directly is its own presenter, whatever it
/// writes; a trusted proxy's `X-Forwarded-For` is read from the right, past
/// other trusted proxies, and only a trusted proxy's `X-Client-Principal` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_believes_only_trusted_proxies() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--http-listen",
            "127.0.0.1:0",
            // 127.0.0.2 and 127.0.0.3 are proxies; 127.0.0.1 is a client.
            "--trusted-proxies",
            "127.0.0.2,127.0.0.3/32",
        ],
    )
    .await;
    let http = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (_, ten) = app.create(admin(restricted(&["10.0.0.0/8"], &[]))).await;
    let (_, local) = app.create(admin(restricted(&["127.0.0.1"], &[]))).await;
    let (_, bound) = app.create(admin(restricted(&[], &[BILLING]))).await;
    let ok = (200, "VERIFY_CODE_VALID".to_owned());
    let network = (403, "VERIFY_CODE_NETWORK_BLOCKED".to_owned());
    let principal = (403, "VERIFY_CODE_PRINCIPAL_MISMATCH".to_owned());

    let cases: Vec<ForwardCase<'_>> = vec![
        // Straight from a client: its own X-Forwarded-For is ignored.
        (
            "127.0.0.1",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3")],
            &network,
        ),
        (
            "127.0.0.1",
            &local,
            vec![("x-forwarded-for", "10.1.2.3")],
            &ok,
        ),
        ("127.0.0.1", &local, vec![], &ok),
        (
            "127.0.0.1",
            &bound,
            vec![("x-client-principal", BILLING)],
            &principal,
        ),
        // Through a trusted proxy: the right-most address it did not add itself.
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3")],
            &ok,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "192.0.2.9, 10.1.2.3")],
            &ok,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3, 192.0.2.9")],
            &network,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3, 127.0.0.3")],
            &ok,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![
                ("x-forwarded-for", "192.0.2.9"),
                ("x-forwarded-for", "10.1.2.3"),
            ],
            &ok,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "::ffff:10.1.2.3")],
            &ok,
        ),
        // No X-Forwarded-For: the proxy itself presented the key.
        ("127.0.0.2", &ten, vec![], &network),
        // Every entry a trusted proxy: the left-most is the client.
        (
            "127.0.0.2",
            &local,
            vec![("x-forwarded-for", "127.0.0.3")],
            &network,
        ),
        // An entry that is not an address: nothing beyond it can be believed.
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3, unknown")],
            &network,
        ),
        (
            "127.0.0.2",
            &ten,
            vec![("x-forwarded-for", "10.1.2.3:5555")],
            &network,
        ),
        // The principal, only from a trusted proxy.
        (
            "127.0.0.2",
            &bound,
            vec![("x-client-principal", BILLING)],
            &ok,
        ),
        (
            "127.0.0.3",
            &bound,
            vec![("x-client-principal", "spiffe://acme.test/x")],
            &principal,
        ),
        ("127.0.0.2", &bound, vec![], &principal),
    ];
    for (peer, secret, headers, want) in &cases {
        assert_eq!(
            &forward(http, peer, secret, headers).await,
            *want,
            "from {peer} with {headers:?}"
        );
    }
    app.stop().await;
}

/// Without `--trusted-proxies` no peer is trusted, the proxy's own address
/// included: forwarded headers never count by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_trusts_no_proxy_by_default() {
    let app = spawn_app_with(Backend::Sqlite, &["--http-listen", "127.0.0.1:0"]).await;
    let http = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (_, ten) = app.create(admin(restricted(&["10.0.0.0/8"], &[]))).await;
    let (_, bound) = app.create(admin(restricted(&[], &[BILLING]))).await;
    for (secret, header, code) in [
        (
            &ten,
            ("x-forwarded-for", "10.1.2.3"),
            "VERIFY_CODE_NETWORK_BLOCKED",
        ),
        (
            &bound,
            ("x-client-principal", BILLING),
            "VERIFY_CODE_PRINCIPAL_MISMATCH",
        ),
    ] {
        for peer in ["127.0.0.1", "127.0.0.2"] {
            assert_eq!(
                forward(http, peer, secret, &[header]).await,
                (403, code.to_owned())
            );
        }
    }
    app.stop().await;
}

/// A bad `--trusted-proxies` entry stops the start, naming the flag's problem.
#[test]
fn a_bad_trusted_proxy_is_refused_by_the_flag_parser() {
    use clap::Parser;
    let err = keygate::config::Cli::try_parse_from([
        "keygate",
        "serve",
        "--trusted-proxies",
        "10.0.0.0/8,10.0.0.1/8",
    ])
    .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("--trusted-proxies") && text.contains("did you mean 10.0.0.0/8"),
        "{text}"
    );
}
