//! What an outside review found wrong, one test per finding; each failed before
//! its fix. Store-facing ones run on SQLite and MariaDB.

use keygate::proto::{
    KeyType, ListKeyEventsRequest, ListKeysRequest, RemoveMemberRequest, UpdateKeyRequest,
    VerifyCode,
};
use prost_types::FieldMask;
use tonic::{Code, Request};

use crate::support::*;

/// A member asking for bot keys gets none: its filters apply as an admin's do.
async fn a_members_list_applies_the_type_filter(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mine, _) = app
        .create(member("alice", user_key("acme", "laptop", &["links:read"])))
        .await;
    app.create(admin(bot_key("acme", "ci", &["links:read"])))
        .await;
    let list = |key_type: KeyType| {
        let mut admin_client = app.admin.clone();
        async move {
            admin_client
                .list_keys(member(
                    "alice",
                    ListKeysRequest {
                        organization_id: "acme".into(),
                        r#type: key_type.into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("list")
                .into_inner()
                .keys
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(KeyType::Bot).await, Vec::<String>::new());
    assert_eq!(list(KeyType::User).await, std::slice::from_ref(&mine.id));
    assert_eq!(list(KeyType::Unspecified).await, [mine.id]);
    app.stop().await;
}

async fn event_ids(app: &TestApp, org: &str, page_size: i32) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .admin
            .clone()
            .list_key_events(admin(ListKeyEventsRequest {
                organization_id: org.into(),
                page_size,
                page_token,
                ..Default::default()
            }))
            .await
            .expect("events")
            .into_inner();
        ids.extend(page.events.iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// Event ids count one organization's events: the gaps of a global counter
/// would tell a tenant how busy the others are.
async fn event_ids_say_nothing_of_other_organizations(backend: Backend) {
    let app = spawn_app(backend).await;
    // Interleaved changes in two organizations, of every kind of event.
    for round in 0..3 {
        for org in ["acme", "globex"] {
            let (key, _) = app
                .create(admin(bot_key(org, &format!("k{round}"), &["links:read"])))
                .await;
            app.admin
                .clone()
                .update_key(admin(UpdateKeyRequest {
                    organization_id: org.into(),
                    id: key.id.clone(),
                    name: "renamed".into(),
                    update_mask: Some(FieldMask {
                        paths: vec!["name".into()],
                    }),
                    ..Default::default()
                }))
                .await
                .expect("update");
            app.revoke(org, &key.id).await;
        }
    }
    app.create(member("bob", user_key("globex", "laptop", &["links:read"])))
        .await;
    app.admin
        .clone()
        .remove_member(admin(RemoveMemberRequest {
            organization_id: "globex".into(),
            user_id: "bob".into(),
        }))
        .await
        .expect("remove");

    assert_eq!(
        event_ids(&app, "acme", 1000).await,
        (1..=9).collect::<Vec<_>>()
    );
    assert_eq!(
        event_ids(&app, "globex", 1000).await,
        (1..=11).collect::<Vec<_>>()
    );
    // Paging walks the same ids in the same order.
    assert_eq!(
        event_ids(&app, "globex", 2).await,
        (1..=11).collect::<Vec<_>>()
    );
    // A fresh organization starts at 1 whatever happened before.
    let (key, _) = app
        .create(admin(bot_key("initech", "k", &["links:read"])))
        .await;
    assert_eq!(event_ids(&app, "initech", 10).await, [1]);
    assert_eq!(app.events("initech", &key.id).await[0].id, 1);
    app.stop().await;
}

/// One round trip names every bad element of a repeated field, not the first.
async fn bad_requests_name_every_bad_element(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key(
        "acme",
        "k",
        &["links:read", "Bad", "links:read", "also bad"],
    );
    req.allowed_hostnames = vec![
        "ok.example.com".into(),
        "https://x.example.com".into(),
        "*.com".into(),
        "fine.example.com".into(),
    ];
    let status = assert_code(
        app.admin.clone().create_key(admin(req)).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        bad_fields(&status),
        [
            "scopes[1]",
            "scopes[3]",
            "allowed_hostnames[1]",
            "allowed_hostnames[2]"
        ]
    );
    assert!(app.all_keys("acme").await.is_empty());
    app.stop().await;
}

/// Hostnames, like scopes, are limited by what is stored: duplicates count once.
async fn the_hostname_limit_counts_distinct_names_as_the_scope_limit_does(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key("acme", "k", &["links:read"]);
    req.allowed_hostnames = (0..64).map(|i| format!("h{i}.example.com")).collect();
    req.allowed_hostnames
        .extend(["H0.example.com".into(), "h1.example.com.".into()]);
    let (key, _) = app.create(admin(req.clone())).await;
    assert_eq!(key.allowed_hostnames.len(), 64);

    req.allowed_hostnames.push("h64.example.com".into());
    let status = assert_code(
        app.admin.clone().create_key(admin(req)).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["allowed_hostnames"]);
    assert!(status.message().contains("65"), "{status:?}");
    app.stop().await;
}

/// A wildcard grants every action of its resource, so the catalog must offer
/// the wildcard itself; listing some actions is not enough.
async fn a_scope_wildcard_must_be_in_the_catalog(backend: Backend) {
    let path = std::env::temp_dir().join(format!(
        "keygate-catalog-{}.txt",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, "links:read\nlinks:write\nstats:*\n").expect("write catalog");
    let catalog = path.display().to_string();
    let app = spawn_app_with(backend, &["--scope-catalog", &catalog]).await;
    let status = assert_code(
        app.admin
            .clone()
            .create_key(admin(bot_key(
                "acme",
                "k",
                &["links:*", "links:read", "billing:*"],
            )))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["scopes[0]", "scopes[2]"]);
    let (key, _) = app
        .create(admin(bot_key(
            "acme",
            "k",
            &["stats:*", "stats:read", "links:read"],
        )))
        .await;
    assert_eq!(key.scopes, ["links:read", "stats:*", "stats:read"]);
    app.stop().await;
    let _ = std::fs::remove_file(path);
}

/// `*.aivencloud.com` spans every customer of that platform: the list makes each
/// `<x>.aivencloud.com` a public suffix.
async fn wildcards_over_a_public_suffix_rule_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    for pattern in ["*.aivencloud.com", "*.x.aivencloud.com", "*.amazonaws.com"] {
        let mut req = bot_key("acme", "k", &["links:read"]);
        req.allowed_hostnames = vec![pattern.into()];
        let status = assert_code(
            app.admin.clone().create_key(admin(req)).await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), ["allowed_hostnames[0]"], "{pattern}");
    }
    assert!(app.all_keys("acme").await.is_empty());
    app.stop().await;
}

/// Each missing scope is listed once, however often it was asked for.
async fn missing_scopes_are_listed_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret) = app
        .create(admin(bot_key("acme", "k", &["links:read"])))
        .await;
    let resp = app
        .verify(verify_req(
            &secret,
            &[
                "stats:read",
                "links:read",
                "stats:read",
                "links:write",
                "stats:read",
            ],
        ))
        .await;
    assert_eq!(resp.code(), VerifyCode::InsufficientScope);
    assert_eq!(resp.missing_scopes, ["stats:read", "links:write"]);
    app.stop().await;
}

/// An origin is `http(s)://host[:port]` and a referer an absolute http(s) URL;
/// anything looser that names an allowed host is still blocked.
async fn loosely_formed_origins_are_blocked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key("acme", "k", &["links:read"]);
    req.allowed_hostnames = vec!["example.com".into(), "*.example.com".into()];
    let (_, secret) = app.create(admin(req)).await;
    let verify = |origin: &str, referer: &str| {
        let mut r = verify_req(&secret, &[]);
        r.origin = origin.into();
        r.referer = referer.into();
        app.verify_code(r)
    };
    for origin in [
        "https://example.com/path",
        "https://user:pw@example.com",
        "file://example.com",
        "javascript://example.com",
        "https:example.com",
        "https://..a.example.com",
    ] {
        assert_eq!(
            verify(origin, "").await,
            VerifyCode::HostnameBlocked,
            "{origin}"
        );
    }
    for referer in [
        "https://user:pw@example.com/x",
        "ftp://example.com/x",
        "https:example.com",
    ] {
        assert_eq!(
            verify("", referer).await,
            VerifyCode::HostnameBlocked,
            "{referer}"
        );
    }
    assert_eq!(
        verify("https://example.com:8443", "").await,
        VerifyCode::Valid
    );
    assert_eq!(
        verify("HTTPS://API.Example.com", "").await,
        VerifyCode::Valid
    );
    assert_eq!(
        verify("", "https://a.example.com/x?y#z").await,
        VerifyCode::Valid
    );
    app.stop().await;
}

crate::store_tests!(
    a_members_list_applies_the_type_filter,
    event_ids_say_nothing_of_other_organizations,
    bad_requests_name_every_bad_element,
    the_hostname_limit_counts_distinct_names_as_the_scope_limit_does,
    a_scope_wildcard_must_be_in_the_catalog,
    wildcards_over_a_public_suffix_rule_are_refused,
    missing_scopes_are_listed_once,
    loosely_formed_origins_are_blocked,
);

fn with_metadata<T>(msg: T, pairs: &[(&'static str, &str)]) -> Request<T> {
    let mut req = Request::new(msg);
    for (name, value) in pairs {
        req.metadata_mut()
            .append(*name, value.parse().expect("ascii metadata"));
    }
    req
}

/// Two values of a security header are refused, never resolved by their order;
/// the Bearer scheme is matched without regard to case (RFC 7235).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_security_metadata_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let bearer = format!("Bearer {TOKEN}");
    let list = || ListKeysRequest {
        organization_id: "acme".into(),
        ..Default::default()
    };
    let call = |pairs: Vec<(&'static str, String)>| {
        let mut client = app.admin.clone();
        async move {
            let pairs: Vec<(&'static str, &str)> =
                pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            client.list_keys(with_metadata(list(), &pairs)).await
        }
    };
    let good = || {
        vec![
            ("authorization", bearer.clone()),
            ("x-actor-id", "alice".to_owned()),
            ("x-actor-role", "admin".to_owned()),
        ]
    };
    call(good()).await.expect("one value of each is accepted");

    let mut twice_auth = good();
    twice_auth.push(("authorization", "Bearer someone-elses-token".into()));
    assert_code(call(twice_auth).await, Code::Unauthenticated);

    let mut twice_actor = good();
    twice_actor.push(("x-actor-id", "mallory".into()));
    let status = assert_code(call(twice_actor).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["x-actor-id"]);

    let mut twice_role = good();
    twice_role.push(("x-actor-role", "member".into()));
    let status = assert_code(call(twice_role).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["x-actor-role"]);

    for scheme in ["BEARER", "bearer", "bEaReR"] {
        let mut pairs = good();
        pairs[0].1 = format!("{scheme} {TOKEN}");
        call(pairs).await.expect("the scheme is case-insensitive");
    }
    app.stop().await;
}
