//! KeyVerify: every row of the contract's check-order table, scopes, hostnames,
//! expiry, usage, and changes taking effect at once.
//!
//! Size: just over 400 lines: the check-order table is written out row by row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use keygate::{
    domain::keys::{KeyPrefix, Secret},
    proto::{self, UpdateKeyRequest, VerifyCode, VerifyKeyRequest},
};
use prost_types::{FieldMask, Timestamp};

fn at(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
    Timestamp {
        seconds: i64::try_from(d.as_secs()).expect("fits"),
        nanos: i32::try_from(d.subsec_nanos()).expect("fits"),
    }
}

fn with_headers(key: &str, origin: &str, referer: &str) -> VerifyKeyRequest {
    VerifyKeyRequest {
        key: key.into(),
        origin: origin.into(),
        referer: referer.into(),
        ..Default::default()
    }
}

/// Changes one character of the body so that the checksum no longer matches.
fn corrupt_body(secret: &str) -> String {
    let mut chars: Vec<char> = secret.chars().collect();
    let i = "kg_live_".len() + 5;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

async fn every_row_of_the_check_order_table(backend: Backend) {
    let app = spawn_app(backend).await;
    let expire_at = SystemTime::now() + Duration::from_secs(2);
    let mut req = bot_key("acme", "bot", &["links:read", "stats:*"]);
    req.allowed_hostnames = vec!["app.example.com".into()];
    req.expire_time = Some(at(expire_at));
    let (key, secret) = app.create(admin(req)).await;
    let unknown = Secret::generate(&KeyPrefix::default());

    let check = |req: VerifyKeyRequest| app.verify(req);
    // Without a key: MISSING; with a bad shape or checksum: MALFORMED; no key attached.
    for (req, code) in [
        (verify_req("", &["links:read"]), VerifyCode::Missing),
        (verify_req("hello", &[]), VerifyCode::Malformed),
        (
            verify_req(&corrupt_body(&secret), &[]),
            VerifyCode::Malformed,
        ),
        (
            verify_req(&format!("{secret}x"), &[]),
            VerifyCode::Malformed,
        ),
        (verify_req(&"k".repeat(300), &[]), VerifyCode::Malformed),
        (
            verify_req(&secret.replace("kg_live_", "KG_live_"), &[]),
            VerifyCode::Malformed,
        ),
        (verify_req(unknown.expose(), &[]), VerifyCode::NotFound),
    ] {
        let resp = check(req).await;
        assert_eq!(resp.code(), code);
        assert!(
            !resp.valid && resp.key.is_none() && resp.missing_scopes.is_empty(),
            "{resp:?}"
        );
    }

    // Found: each later check in order, each answer carrying the key.
    let valid = VerifyKeyRequest {
        key: secret.clone(),
        required_scopes: vec!["links:read".into(), "stats:read".into()],
        origin: "https://app.example.com".into(),
        referer: String::new(),
        organization_id: "acme".into(),
        cost: None,
        ..VerifyKeyRequest::default()
    };
    let resp = check(valid.clone()).await;
    assert!(resp.valid, "{resp:?}");
    assert_eq!(resp.code(), VerifyCode::Valid);
    let verified = resp.key.expect("key attached");
    assert_eq!(verified.id, key.id);
    assert_eq!(verified.organization_id, "acme");
    assert_eq!(verified.r#type(), proto::KeyType::Bot);
    assert_eq!(verified.user_id, "");
    assert_eq!(verified.name, "bot");
    assert_eq!(verified.scopes, ["links:read", "stats:*"]);
    assert_eq!(verified.expire_time, key.expire_time);

    // Each failure is reported even when every later check would fail too.
    let insufficient = VerifyKeyRequest {
        required_scopes: vec![
            "links:write".into(),
            "links:read".into(),
            "users:read".into(),
        ],
        ..valid.clone()
    };
    let resp = check(insufficient.clone()).await;
    assert_eq!(resp.code(), VerifyCode::InsufficientScope);
    assert_eq!(resp.missing_scopes, ["links:write", "users:read"]);
    assert!(!resp.valid && resp.key.is_some());

    let blocked = VerifyKeyRequest {
        origin: "https://evil.example.net".into(),
        ..insufficient.clone()
    };
    let resp = check(blocked.clone()).await;
    assert_eq!(resp.code(), VerifyCode::HostnameBlocked);
    assert!(resp.missing_scopes.is_empty() && resp.key.is_some());

    let mismatch = VerifyKeyRequest {
        organization_id: "globex".into(),
        ..blocked.clone()
    };
    let resp = check(mismatch.clone()).await;
    assert_eq!(resp.code(), VerifyCode::OrganizationMismatch);
    assert!(resp.key.is_some());

    // Expiry is checked against the clock on every call, even for a cached key.
    app.clock.advance(Duration::from_secs(3));
    let resp = check(mismatch.clone()).await;
    assert_eq!(resp.code(), VerifyCode::Expired);
    assert!(resp.key.is_some());

    // Revocation comes before expiry.
    app.revoke("acme", &key.id).await;
    let resp = check(mismatch).await;
    assert_eq!(resp.code(), VerifyCode::Revoked);
    assert_eq!(resp.key.map(|k| k.id), Some(key.id.clone()));
    app.stop().await;
}

async fn scope_wildcards_and_bad_required_scopes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:*", "stats:read"])))
        .await;
    for (scopes, code) in [
        (vec!["links:read", "links:delete"], VerifyCode::Valid),
        (vec!["links:*"], VerifyCode::Valid),
        (vec![], VerifyCode::Valid),
        (
            vec!["stats:read", "stats:write"],
            VerifyCode::InsufficientScope,
        ),
        (vec!["stats:*"], VerifyCode::InsufficientScope),
        (vec!["linksx:read"], VerifyCode::InsufficientScope),
    ] {
        assert_eq!(
            app.verify_code(verify_req(&secret, &scopes)).await,
            code,
            "{scopes:?}"
        );
    }
    // A required scope that is not well-formed is the caller's bug, not a denial.
    for bad in ["links", "Links:read", "links:read ", ""] {
        let result = app
            .verify
            .clone()
            .verify_key(verify_req(&secret, &["links:read", bad]))
            .await;
        assert_bad_field(result, "required_scopes[1]");
    }
    assert_bad_field(
        app.verify
            .clone()
            .verify_key(VerifyKeyRequest {
                organization_id: "bad org".into(),
                ..verify_req(&secret, &[])
            })
            .await,
        "organization_id",
    );
    app.stop().await;
}

async fn hostname_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key("acme", "web", &["links:read"]);
    req.allowed_hostnames = vec![
        "*.example.com".into(),
        "exact.org".into(),
        "bücher.example".into(),
    ];
    let (_, secret) = app.create(admin(req)).await;
    let (_, open) = app
        .create(admin(bot_key("acme", "open", &["links:read"])))
        .await;

    let allowed = VerifyCode::Valid;
    let blocked = VerifyCode::HostnameBlocked;
    for (origin, referer, code) in [
        ("https://a.example.com", "", allowed),
        ("https://a.b.example.com:8443", "", allowed),
        ("https://A.Example.COM", "", allowed),
        ("https://example.com", "", blocked),
        ("https://badexample.com", "", blocked),
        ("https://example.com.evil.net", "", blocked),
        ("https://exact.org", "", allowed),
        ("http://exact.org:8080", "", allowed),
        ("https://www.exact.org", "", blocked),
        ("https://xn--bcher-kva.example", "", allowed),
        ("https://bücher.example", "", allowed),
        ("null", "", blocked),
        ("not a url", "", blocked),
        ("https://", "", blocked),
        // Origin wins over Referer, whichever of them would allow.
        ("https://evil.net", "https://a.example.com/page", blocked),
        ("https://a.example.com", "https://evil.net/page", allowed),
        ("null", "https://a.example.com/", blocked),
        // Referer counts when Origin is empty.
        ("", "https://a.example.com/path?q=1#x", allowed),
        ("", "https://evil.net/", blocked),
        ("", "garbage", blocked),
        // No header at all is not filtered.
        ("", "", allowed),
    ] {
        let got = app
            .verify_code(with_headers(&secret, origin, referer))
            .await;
        assert_eq!(got, code, "origin {origin:?} referer {referer:?}");
    }
    // An empty list allows any hostname, even `null`.
    for origin in ["https://anything.net", "null", "garbage"] {
        assert_eq!(
            app.verify_code(with_headers(&open, origin, "")).await,
            allowed
        );
    }
    app.stop().await;
}

async fn keys_of_any_prefix_verify(backend: Backend) {
    let app = spawn_app_with(backend, &["--key-prefix", "kg_test"]).await;
    let (_, secret) = app
        .create(admin(bot_key("acme", "old prefix", &["links:read"])))
        .await;
    assert!(secret.starts_with("kg_test_"));
    let db = app.stop_keep_db().await;
    // The deployment changes its prefix: old keys keep working.
    let app = start_on(db, &["--key-prefix", "acme_live"]).await;
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid
    );
    let (_, new) = app
        .create(admin(bot_key("acme", "new prefix", &["links:read"])))
        .await;
    assert!(new.starts_with("acme_live_"), "{new}");
    assert_eq!(
        app.verify_code(verify_req(&new, &[])).await,
        VerifyCode::Valid
    );
    app.stop().await;
}

async fn changes_take_effect_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    // Cached now.
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid
    );
    let update = |paths: &[&str], req: UpdateKeyRequest| {
        let mut c = app.admin.clone();
        let req = UpdateKeyRequest {
            organization_id: "acme".into(),
            id: key.id.clone(),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            ..req
        };
        async move { c.update_key(admin(req)).await.expect("update") }
    };
    update(
        &["scopes"],
        UpdateKeyRequest {
            scopes: vec!["stats:read".into()],
            ..Default::default()
        },
    )
    .await;
    let resp = app.verify(verify_req(&secret, &["links:read"])).await;
    assert_eq!(resp.code(), VerifyCode::InsufficientScope);
    assert_eq!(
        resp.key.map(|k| k.scopes),
        Some(vec!["stats:read".to_owned()])
    );

    update(
        &["allowed_hostnames"],
        UpdateKeyRequest {
            allowed_hostnames: vec!["ok.example.com".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        app.verify_code(with_headers(&secret, "https://other.example.com", ""))
            .await,
        VerifyCode::HostnameBlocked
    );

    let past_soon = SystemTime::now() + Duration::from_secs(60);
    update(
        &["expire_time"],
        UpdateKeyRequest {
            expire_time: Some(at(past_soon)),
            ..Default::default()
        },
    )
    .await;
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(
        app.verify_code(verify_req(&secret, &[])).await,
        VerifyCode::Expired
    );
    // An expired key has ended: clearing its expiry cannot bring it back.
    let revive = UpdateKeyRequest {
        organization_id: "acme".into(),
        id: key.id.clone(),
        update_mask: Some(FieldMask {
            paths: vec!["expire_time".into()],
        }),
        ..Default::default()
    };
    assert_code(
        app.admin.clone().update_key(admin(revive)).await,
        tonic::Code::FailedPrecondition,
    );
    assert_eq!(
        app.verify_code(verify_req(&secret, &[])).await,
        VerifyCode::Expired
    );

    app.revoke("acme", &key.id).await;
    assert_eq!(
        app.verify_code(verify_req(&secret, &[])).await,
        VerifyCode::Revoked
    );
    app.stop().await;
}

async fn usage_counts_every_verification_that_found_the_key(backend: Backend) {
    let app = spawn_app_with(backend, &["--usage-flush-interval", "20ms"]).await;
    let (key, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    let (other, _) = app
        .create(admin(bot_key("acme", "other", &["links:read"])))
        .await;
    let before = SystemTime::now();
    // Five outcomes that resolved to the key, whatever they were...
    app.verify(verify_req(&secret, &["links:read"])).await;
    app.verify(verify_req(&secret, &["links:read"])).await;
    app.verify(verify_req(&secret, &["stats:read"])).await;
    app.verify(VerifyKeyRequest {
        organization_id: "globex".into(),
        ..verify_req(&secret, &[])
    })
    .await;
    // ...and three that did not.
    app.verify(verify_req("", &[])).await;
    app.verify(verify_req(&corrupt_body(&secret), &[])).await;
    app.verify(verify_req(
        Secret::generate(&KeyPrefix::default()).expose(),
        &[],
    ))
    .await;
    app.revoke("acme", &key.id).await;
    app.verify(verify_req(&secret, &[])).await;

    eventually(Duration::from_secs(10), "usage flushed", || async {
        app.get("acme", &key.id).await.request_count == 5
    })
    .await;
    let stored = app.get("acme", &key.id).await;
    let last_used = stored.last_used_time.expect("last_used_time set");
    let before = at(before);
    assert!(
        (last_used.seconds, last_used.nanos) >= (before.seconds, before.nanos),
        "{last_used:?}"
    );
    let untouched = app.get("acme", &other.id).await;
    assert_eq!(untouched.request_count, 0);
    assert!(untouched.last_used_time.is_none());
    // Usage is not a change: it moves neither update_time nor the audit trail.
    assert_eq!(untouched.update_time, untouched.create_time);
    assert_eq!(
        app.events("acme", &key.id).await.len(),
        2,
        "created and revoked only"
    );
    app.stop().await;
}

async fn usage_is_flushed_on_graceful_shutdown(backend: Backend) {
    // A flush interval far longer than the test: only the shutdown flush can write.
    let app = spawn_app_with(backend, &["--usage-flush-interval", "1h"]).await;
    let (key, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    for _ in 0..7 {
        app.verify(verify_req(&secret, &[])).await;
    }
    assert_eq!(
        app.get("acme", &key.id).await.request_count,
        0,
        "nothing written yet"
    );
    let db = app.stop_keep_db().await;
    let app = start_on(db, &[]).await;
    assert_eq!(app.get("acme", &key.id).await.request_count, 7);
    app.stop().await;
}

crate::store_tests!(
    every_row_of_the_check_order_table,
    scope_wildcards_and_bad_required_scopes,
    hostname_rules,
    keys_of_any_prefix_verify,
    changes_take_effect_at_once,
    usage_counts_every_verification_that_found_the_key,
    usage_is_flushed_on_graceful_shutdown,
);
