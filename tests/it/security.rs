//! The promises a security reviewer checks first: the secret exists nowhere but in
//! CreateKey's answer, and KeyAdmin answers only trusted, identified callers.

use keygate::proto::{self, CreateKeyRequest, UpdateKeyRequest, VerifyKeyRequest};
use prost_types::FieldMask;
use tonic::{Code, Request};

use crate::support::*;

/// The secret, and its random body alone, which would be just as bad to leak.
fn needles(secret: &str) -> [String; 2] {
    let body = secret.rsplit('_').next().expect("has a body").to_owned();
    [secret.to_owned(), body]
}

#[track_caller]
fn assert_absent(haystack: &str, secret: &str, place: &str) {
    for needle in needles(secret) {
        assert!(!haystack.contains(&needle), "the secret appears in {place}");
    }
}

async fn the_secret_is_stored_nowhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, user_secret) = app
        .create(member("alice", user_key("acme", "laptop", &["links:read"])))
        .await;
    let (bot, bot_secret) = app.create(admin(bot_key("acme", "ci", &["links:*"]))).await;
    let mut c = app.admin.clone();

    // Use the keys every way there is, including ways that fail.
    let mut errors = Vec::new();
    for secret in [&user_secret, &bot_secret] {
        for req in [
            verify_req(secret, &["links:read"]),
            verify_req(secret, &["stats:read"]),
            VerifyKeyRequest {
                organization_id: "globex".into(),
                ..verify_req(secret, &[])
            },
        ] {
            app.verify(req).await;
        }
        // A secret where it does not belong must not be echoed back.
        let as_scope = CreateKeyRequest {
            scopes: vec![secret.clone()],
            ..bot_key("acme", "x", &[])
        };
        errors.push(
            c.create_key(admin(as_scope))
                .await
                .expect_err("not a scope"),
        );
        // A key is a well-formed hostname and could be a name: refused all the same.
        let as_host = CreateKeyRequest {
            allowed_hostnames: vec![secret.clone()],
            ..bot_key("acme", "x", &["a:b"])
        };
        errors.push(
            c.create_key(admin(as_host))
                .await
                .expect_err("a secret is no hostname"),
        );
        let in_name = bot_key("acme", &format!("key is {secret}, keep safe"), &["a:b"]);
        errors.push(
            c.create_key(admin(in_name))
                .await
                .expect_err("a secret is no name"),
        );
        let as_required = verify_req(secret, &[secret.as_str()]);
        errors.push(
            app.verify
                .clone()
                .verify_key(as_required)
                .await
                .expect_err("not a scope"),
        );
        let mut as_token = Request::new(proto::GetKeyRequest {
            organization_id: "acme".into(),
            id: bot.id.clone(),
        });
        as_token.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("ascii"),
        );
        errors.push(c.get_key(as_token).await.expect_err("not a token"));
        // A key fits the id grammars too: refused as an id, and not echoed.
        let as_org = VerifyKeyRequest {
            organization_id: secret.clone(),
            ..verify_req(secret, &[])
        };
        let refused = app.verify.clone().verify_key(as_org).await;
        errors.push(assert_code(refused, Code::InvalidArgument));
        let as_owner = bot_key(secret, "x", &["a:b"]);
        errors.push(assert_code(
            c.create_key(admin(as_owner)).await,
            Code::InvalidArgument,
        ));
        let as_actor_id = as_actor(secret, "admin", bot_key("acme", "x", &["a:b"]));
        errors.push(assert_code(
            c.create_key(as_actor_id).await,
            Code::InvalidArgument,
        ));
    }
    let update = UpdateKeyRequest {
        organization_id: "acme".into(),
        id: user.id.clone(),
        name: "renamed".into(),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
        ..Default::default()
    };
    c.update_key(admin(update)).await.expect("update");
    app.revoke("acme", &bot.id).await;
    assert_eq!(
        app.all_keys("acme").await.len(),
        2,
        "nothing else was stored"
    );

    let stored = dump_all_text(&app.db).await;
    assert!(!stored.is_empty());
    let listed = format!(
        "{:?}{:?}",
        app.all_keys("acme").await,
        app.events("acme", "").await
    );
    let fetched = format!(
        "{:?}{:?}",
        app.get("acme", &user.id).await,
        app.get("acme", &bot.id).await
    );
    for secret in [&user_secret, &bot_secret] {
        for column in &stored {
            assert_absent(
                &String::from_utf8_lossy(column),
                secret,
                "a database column",
            );
        }
        assert_absent(&listed, secret, "ListKeys or ListKeyEvents");
        assert_absent(&fetched, secret, "GetKey");
        for e in &errors {
            assert_absent(&format!("{e:?}"), secret, "an error");
        }
    }
    app.stop().await;
}

async fn key_admin_refuses_unidentified_callers(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    let create = || bot_key("acme", "sneaky", &["links:read"]);
    let with = |pairs: &[(&'static str, String)]| {
        let mut req = Request::new(create());
        for (k, v) in pairs {
            req.metadata_mut().insert(*k, v.parse().expect("ascii"));
        }
        req
    };
    let actor = |token: &str| {
        vec![
            ("authorization", token.to_owned()),
            ("x-actor-id", "mallory".to_owned()),
            ("x-actor-role", "admin".to_owned()),
        ]
    };
    let mut c = app.admin.clone();
    for (pairs, code, says) in [
        (vec![], Code::Unauthenticated, "authorization"),
        (
            actor("Bearer wrong-token"),
            Code::Unauthenticated,
            "invalid service token",
        ),
        (
            actor(&format!("Bearer {TOKEN}x")),
            Code::Unauthenticated,
            "invalid service token",
        ),
        (actor(TOKEN), Code::Unauthenticated, "Bearer"),
        (actor("Basic dXNlcjpwYXNz"), Code::Unauthenticated, "Bearer"),
        (
            actor(&format!("Bearer {secret}")),
            Code::Unauthenticated,
            "API keys",
        ),
        (
            vec![("authorization", format!("Bearer {TOKEN}"))],
            Code::Unauthenticated,
            "x-actor-id",
        ),
        (
            vec![
                ("authorization", format!("Bearer {TOKEN}")),
                ("x-actor-id", "mallory".into()),
            ],
            Code::Unauthenticated,
            "x-actor-role",
        ),
        (
            vec![
                ("authorization", format!("Bearer {TOKEN}")),
                ("x-actor-id", "mallory".into()),
                ("x-actor-role", "owner".into()),
            ],
            Code::InvalidArgument,
            "x-actor-role",
        ),
        (
            vec![
                ("authorization", format!("Bearer {TOKEN}")),
                ("x-actor-id", "mal lory".into()),
                ("x-actor-role", "admin".into()),
            ],
            Code::InvalidArgument,
            "x-actor-id",
        ),
    ] {
        let status = assert_code(c.create_key(with(&pairs)).await, code);
        assert!(status.message().contains(says), "{pairs:?}: {status:?}");
    }
    assert_eq!(app.all_keys("acme").await.len(), 1, "nothing was created");
    app.stop().await;
}

crate::store_tests!(
    the_secret_is_stored_nowhere,
    key_admin_refuses_unidentified_callers
);

/// Every type that can hold a secret prints none in `Debug`, so a value
/// logged by mistake (a `?request` in a span, an error holding one) leaks
/// nothing: the generated request and answers that carry one, the domain's
/// verification and the edge request.
#[test]
fn types_that_hold_a_secret_print_none() {
    let secret = "kg_live_7Qz3mWc9XbT2rLp8vNd4hJk6sFa1gYe5uRo0iPq7wEtCyBxVnMl";
    let scopes = vec!["links:read".to_owned()];
    let shown = [
        format!(
            "{:?}",
            VerifyKeyRequest {
                key: secret.into(),
                required_scopes: scopes.clone(),
                ..Default::default()
            }
        ),
        format!(
            "{:?}",
            proto::CreateKeyResponse {
                key: None,
                secret: secret.into(),
            }
        ),
        format!(
            "{:?}",
            proto::RotateKeyResponse {
                key: None,
                secret: secret.into(),
                previous_key: None,
            }
        ),
        format!(
            "{:?}",
            keygate::domain::verify::Verification::new(secret, &scopes, "", "", "", None)
                .expect("a valid verification")
        ),
        format!(
            "{:#?}",
            keygate::services::authorizer::EdgeRequest {
                method: "GET",
                key: secret,
                ..Default::default()
            }
        ),
    ];
    for text in &shown {
        assert_absent(text, secret, text);
        assert!(
            text.contains("<redacted>"),
            "says a secret was there: {text}"
        );
    }
    assert!(
        shown[0].contains("links:read"),
        "the rest is shown: {}",
        shown[0]
    );
}
