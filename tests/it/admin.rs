//! KeyAdmin: the contract's rules for creating, reading, changing and deleting keys.
//!
//! Size: one test per rule of KeyAdmin, each short; a file per RPC would repeat
//! the setup helpers.

use std::collections::HashSet;

use keygate::proto::{
    self, CreateKeyRequest, KeyEventAction, KeyType, ListKeysRequest, UpdateKeyRequest, VerifyCode,
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

use crate::support::*;

fn in_secs(secs: i64) -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    Timestamp {
        seconds: i64::try_from(now.as_secs()).expect("fits") + secs,
        nanos: 0,
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn create_returns_the_secret_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, secret) = app
        .create(member("alice", user_key("acme", "laptop", &["links:read"])))
        .await;

    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(secret.len(), "kg_live_".len() + 49);
    assert_eq!(key.key_prefix, secret[..12]);
    assert_eq!(key.last_four, secret[secret.len() - 4..]);
    assert_eq!(key.r#type(), KeyType::User);
    assert_eq!(key.user_id, "alice");
    assert_eq!(key.created_by, "alice");
    assert_eq!(key.organization_id, "acme");
    assert!(!key.revoked);
    assert!(key.create_time.is_some() && key.last_used_time.is_none());

    let fetched = app.get("acme", &key.id).await;
    assert_eq!(fetched, key, "GetKey returns what CreateKey stored");
    let events = app.events("acme", &key.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action(), KeyEventAction::Created);
    assert_eq!(events[0].actor_id, "alice");
    app.stop().await;
}

async fn lists_are_normalised(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key("acme", "ci", &["links:write", "links:read", "links:write"]);
    req.allowed_hostnames = vec![
        "API.Example.COM.".into(),
        "*.Bücher.example".into(),
        "api.example.com".into(),
    ];
    let (key, _) = app.create(admin(req)).await;
    assert_eq!(key.scopes, ["links:read", "links:write"]);
    assert_eq!(
        key.allowed_hostnames,
        ["api.example.com", "*.xn--bcher-kva.example"]
    );
    assert_eq!(
        app.get("acme", &key.id).await.allowed_hostnames,
        key.allowed_hostnames
    );
    app.stop().await;
}

async fn bad_create_requests_name_the_field_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let good = || user_key("acme", "ok", &["links:read"]);
    let many = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>();
    let cases: Vec<(CreateKeyRequest, &str)> = vec![
        (
            CreateKeyRequest {
                name: String::new(),
                ..good()
            },
            "name",
        ),
        (
            CreateKeyRequest {
                name: "x".repeat(256),
                ..good()
            },
            "name",
        ),
        (
            CreateKeyRequest {
                name: "tab\there".into(),
                ..good()
            },
            "name",
        ),
        (
            CreateKeyRequest {
                scopes: vec![],
                ..good()
            },
            "scopes",
        ),
        (
            CreateKeyRequest {
                scopes: many(129, &|i| format!("r{i}:read")),
                ..good()
            },
            "scopes",
        ),
        (
            CreateKeyRequest {
                scopes: vec!["links:read".into(), "Links:read".into()],
                ..good()
            },
            "scopes[1]",
        ),
        (
            CreateKeyRequest {
                scopes: vec!["links".into()],
                ..good()
            },
            "scopes[0]",
        ),
        (
            CreateKeyRequest {
                scopes: vec!["links:read:x".into()],
                ..good()
            },
            "scopes[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: many(65, &|i| format!("h{i}.example.com")),
                ..good()
            },
            "allowed_hostnames",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["https://example.com".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["example.com/path".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["example.com:443".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["*".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["*.com".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["*.co.uk".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["ok.com".into(), "a.*.example.com".into()],
                ..good()
            },
            "allowed_hostnames[1]",
        ),
        (
            CreateKeyRequest {
                allowed_hostnames: vec!["api*.example.com".into()],
                ..good()
            },
            "allowed_hostnames[0]",
        ),
        (
            CreateKeyRequest {
                expire_time: Some(in_secs(-60)),
                ..good()
            },
            "expire_time",
        ),
        (
            CreateKeyRequest {
                expire_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..good()
            },
            "expire_time",
        ),
        (
            CreateKeyRequest {
                r#type: 0,
                ..good()
            },
            "type",
        ),
        (
            CreateKeyRequest {
                r#type: 7,
                ..good()
            },
            "type",
        ),
        (
            CreateKeyRequest {
                organization_id: String::new(),
                ..good()
            },
            "organization_id",
        ),
        (
            CreateKeyRequest {
                organization_id: "acme corp".into(),
                ..good()
            },
            "organization_id",
        ),
        (
            CreateKeyRequest {
                organization_id: "a".repeat(65),
                ..good()
            },
            "organization_id",
        ),
    ];
    for (req, field) in cases {
        let result = app.admin.clone().create_key(admin(req.clone())).await;
        let status = result.as_ref().err().cloned();
        assert_bad_field(result, field);
        assert!(
            status.is_some_and(|s| !s.message().is_empty()),
            "a specific message for {field}"
        );
    }
    // Several bad fields are all named at once.
    let status = assert_code(
        app.admin
            .clone()
            .create_key(admin(CreateKeyRequest {
                name: String::new(),
                scopes: vec![],
                ..good()
            }))
            .await,
        Code::InvalidArgument,
    );
    let fields = bad_fields(&status);
    assert!(
        fields.contains(&"name".into()) && fields.contains(&"scopes".into()),
        "{fields:?}"
    );

    assert!(app.all_keys("acme").await.is_empty(), "no key was stored");
    assert!(
        app.events("acme", "").await.is_empty(),
        "no event was written"
    );
    // The boundaries themselves are accepted.
    let mut edge = good();
    edge.name = "é".repeat(255);
    edge.scopes = many(128, &|i| format!("r{i}:read"));
    edge.allowed_hostnames = many(64, &|i| format!("h{i}.example.com"));
    edge.expire_time = Some(in_secs(3600));
    app.create(admin(edge)).await;
    app.stop().await;
}

async fn one_live_user_key_per_user_and_organization(backend: Backend) {
    let app = spawn_app(backend).await;
    let (first, _) = app
        .create(member("alice", user_key("acme", "one", &["links:read"])))
        .await;
    let status = assert_code(
        app.admin
            .clone()
            .create_key(member("alice", user_key("acme", "two", &["links:read"])))
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("live user key"), "{status:?}");
    // Admins are users too: the rule is per user, whatever the role.
    assert_code(
        app.admin
            .clone()
            .create_key(as_actor(
                "alice",
                "admin",
                user_key("acme", "three", &["links:read"]),
            ))
            .await,
        Code::AlreadyExists,
    );
    // Another organization, another user, and bot keys are unaffected.
    app.create(member("alice", user_key("globex", "one", &["links:read"])))
        .await;
    app.create(member("bob", user_key("acme", "one", &["links:read"])))
        .await;
    app.create(as_actor(
        "alice",
        "admin",
        bot_key("acme", "bot1", &["links:read"]),
    ))
    .await;
    app.create(as_actor(
        "alice",
        "admin",
        bot_key("acme", "bot2", &["links:read"]),
    ))
    .await;
    // Once revoked, a new one may be created.
    app.revoke("acme", &first.id).await;
    app.create(member("alice", user_key("acme", "two", &["links:read"])))
        .await;
    app.stop().await;
}

async fn live_user_key_uniqueness_is_enforced_by_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    // Concurrent creates race past any check in code; only the unique index stops them.
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..8 {
        let mut client = app.admin.clone();
        racing.spawn(async move {
            client
                .create_key(member(
                    "carol",
                    user_key("acme", &format!("k{i}"), &["links:read"]),
                ))
                .await
        });
    }
    let results = racing.join_all().await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|s| s.code() == Code::AlreadyExists)
    );
    assert_eq!(app.all_keys("acme").await.len(), 1);
    app.stop().await;
}

async fn members_act_only_on_their_own_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice_key, _) = app
        .create(member("alice", user_key("acme", "a", &["links:read"])))
        .await;
    let (bob_key, _) = app
        .create(member("bob", user_key("acme", "b", &["links:read"])))
        .await;
    let (bot, _) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    let mut c = app.admin.clone();

    // Members cannot create bot keys, remove members or read the audit trail.
    assert_code(
        c.create_key(member("alice", bot_key("acme", "b", &["links:read"])))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        c.remove_member(member(
            "alice",
            proto::RemoveMemberRequest {
                organization_id: "acme".into(),
                user_id: "bob".into(),
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    assert_code(
        c.list_key_events(member(
            "alice",
            proto::ListKeyEventsRequest {
                organization_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );
    // Another member's key, or the organization's bot key: not theirs.
    for other in [&bob_key.id, &bot.id] {
        let get = proto::GetKeyRequest {
            organization_id: "acme".into(),
            id: other.clone(),
        };
        assert_code(
            c.get_key(member("alice", get)).await,
            Code::PermissionDenied,
        );
        let update = UpdateKeyRequest {
            organization_id: "acme".into(),
            id: other.clone(),
            name: "mine now".into(),
            update_mask: mask(&["name"]),
            ..Default::default()
        };
        assert_code(
            c.update_key(member("alice", update)).await,
            Code::PermissionDenied,
        );
        let revoke = proto::RevokeKeyRequest {
            organization_id: "acme".into(),
            id: other.clone(),
        };
        assert_code(
            c.revoke_key(member("alice", revoke)).await,
            Code::PermissionDenied,
        );
    }
    assert!(
        !app.get("acme", &bob_key.id).await.revoked,
        "the refused revoke changed nothing"
    );
    assert_eq!(
        app.get("acme", &bot.id).await.name,
        "bot",
        "the refused update changed nothing"
    );

    // Listing: a member sees only its own keys and may not ask for another's.
    let listed = c
        .list_keys(member(
            "alice",
            ListKeysRequest {
                organization_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("list own keys")
        .into_inner()
        .keys;
    assert_eq!(
        listed.iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&alice_key.id]
    );
    assert_code(
        c.list_keys(member(
            "alice",
            ListKeysRequest {
                organization_id: "acme".into(),
                user_id: "bob".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::PermissionDenied,
    );

    // Own key: get, update, revoke.
    let own = proto::GetKeyRequest {
        organization_id: "acme".into(),
        id: alice_key.id.clone(),
    };
    c.get_key(member("alice", own))
        .await
        .expect("own key readable");
    let update = UpdateKeyRequest {
        organization_id: "acme".into(),
        id: alice_key.id.clone(),
        scopes: vec!["stats:read".into()],
        update_mask: mask(&["scopes"]),
        ..Default::default()
    };
    let updated = c
        .update_key(member("alice", update))
        .await
        .expect("own key updatable")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(updated.scopes, ["stats:read"]);
    let revoke = proto::RevokeKeyRequest {
        organization_id: "acme".into(),
        id: alice_key.id.clone(),
    };
    c.revoke_key(member("alice", revoke))
        .await
        .expect("own key revocable");

    // Admins act on everything in their organization.
    let update = UpdateKeyRequest {
        organization_id: "acme".into(),
        id: bob_key.id.clone(),
        name: "renamed".into(),
        update_mask: mask(&["name"]),
        ..Default::default()
    };
    c.update_key(admin(update))
        .await
        .expect("admin updates any key");
    app.revoke("acme", &bot.id).await;
    assert_eq!(app.all_keys("acme").await.len(), 3);
    app.stop().await;
}

async fn other_organizations_keys_do_not_exist(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, secret) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    let mut c = app.admin.clone();
    let get = proto::GetKeyRequest {
        organization_id: "globex".into(),
        id: key.id.clone(),
    };
    assert_code(c.get_key(admin(get)).await, Code::NotFound);
    let update = UpdateKeyRequest {
        organization_id: "globex".into(),
        id: key.id.clone(),
        name: "stolen".into(),
        update_mask: mask(&["name"]),
        ..Default::default()
    };
    assert_code(c.update_key(admin(update)).await, Code::NotFound);
    let revoke = proto::RevokeKeyRequest {
        organization_id: "globex".into(),
        id: key.id.clone(),
    };
    assert_code(c.revoke_key(admin(revoke)).await, Code::NotFound);
    assert!(app.all_keys("globex").await.is_empty());
    assert!(app.events("globex", "").await.is_empty());
    assert!(app.events("globex", &key.id).await.is_empty());
    // A well-formed id that does not exist at all is the same answer.
    let get = proto::GetKeyRequest {
        organization_id: "acme".into(),
        id: uuid::Uuid::now_v7().to_string(),
    };
    assert_code(c.get_key(admin(get)).await, Code::NotFound);
    // Untouched, and still verifying.
    let after = app.get("acme", &key.id).await;
    assert!(!after.revoked && after.name == "bot");
    assert_eq!(
        app.verify_code(verify_req(&secret, &[])).await,
        VerifyCode::Valid
    );
    app.stop().await;
}

async fn update_applies_the_mask(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = bot_key("acme", "before", &["links:read"]);
    req.expire_time = Some(in_secs(3600));
    req.allowed_hostnames = vec!["a.example.com".into()];
    let (key, _) = app.create(admin(req)).await;
    let mut c = app.admin.clone();
    let base = || UpdateKeyRequest {
        organization_id: "acme".into(),
        id: key.id.clone(),
        name: "after".into(),
        scopes: vec!["stats:read".into(), "links:*".into()],
        allowed_hostnames: vec![],
        expire_time: None,
        update_mask: None,
        ..Default::default()
    };

    assert_bad_field(c.update_key(admin(base())).await, "update_mask");
    assert_bad_field(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&[]),
            ..base()
        }))
        .await,
        "update_mask",
    );
    assert_bad_field(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["name", "secret_hash"]),
            ..base()
        }))
        .await,
        "update_mask.paths[1]",
    );
    assert_bad_field(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["name"]),
            name: String::new(),
            ..base()
        }))
        .await,
        "name",
    );
    assert_bad_field(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["expire_time"]),
            expire_time: Some(in_secs(-1)),
            ..base()
        }))
        .await,
        "expire_time",
    );
    assert_bad_field(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["name"]),
            id: "nope".into(),
            ..base()
        }))
        .await,
        "id",
    );
    assert_eq!(
        app.get("acme", &key.id).await,
        key,
        "refused updates changed nothing"
    );

    // Only the named fields change.
    let updated = c
        .update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["name"]),
            ..base()
        }))
        .await
        .expect("update name")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(updated.name, "after");
    assert_eq!(updated.scopes, key.scopes);
    assert_eq!(updated.allowed_hostnames, key.allowed_hostnames);
    assert_eq!(updated.expire_time, key.expire_time);

    // Clearing the hostnames and the expiry, replacing the scopes.
    let updated = c
        .update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["scopes", "allowed_hostnames", "expire_time"]),
            ..base()
        }))
        .await
        .expect("update the rest")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(updated.scopes, ["links:*", "stats:read"]);
    assert!(updated.allowed_hostnames.is_empty());
    assert!(updated.expire_time.is_none());
    assert_eq!(app.get("acme", &key.id).await, updated);
    let actions: Vec<_> = app
        .events("acme", &key.id)
        .await
        .iter()
        .map(|e| e.action())
        .collect();
    assert_eq!(
        actions,
        [
            KeyEventAction::Created,
            KeyEventAction::Updated,
            KeyEventAction::Updated
        ]
    );

    // A revoked key cannot be updated.
    app.revoke("acme", &key.id).await;
    assert_code(
        c.update_key(admin(UpdateKeyRequest {
            update_mask: mask(&["name"]),
            ..base()
        }))
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(app.get("acme", &key.id).await.name, "after");
    app.stop().await;
}

async fn revoking_twice_keeps_the_first_revoke_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let (key, _) = app
        .create(admin(bot_key("acme", "bot", &["links:read"])))
        .await;
    let first = app.revoke("acme", &key.id).await;
    assert!(first.revoked && first.revoke_time.is_some());
    let second = app.revoke("acme", &key.id).await;
    assert_eq!(second.revoke_time, first.revoke_time);
    assert_eq!(second.update_time, first.update_time);
    let actions: Vec<_> = app
        .events("acme", &key.id)
        .await
        .iter()
        .map(|e| e.action())
        .collect();
    assert_eq!(actions, [KeyEventAction::Created, KeyEventAction::Revoked]);
    // Revoked keys stay listed for audit, but only when asked for.
    let mut c = app.admin.clone();
    let live = c
        .list_keys(admin(ListKeysRequest {
            organization_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert!(live.is_empty());
    assert_eq!(app.all_keys("acme").await, [second]);
    app.stop().await;
}

async fn remove_member_deletes_only_that_members_user_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (old, old_secret) = app
        .create(member("bob", user_key("acme", "old", &["links:read"])))
        .await;
    app.revoke("acme", &old.id).await;
    let (live, live_secret) = app
        .create(member("bob", user_key("acme", "live", &["links:read"])))
        .await;
    let (bot, bot_secret) = app
        .create(as_actor(
            "bob",
            "admin",
            bot_key("acme", "bob's bot", &["links:read"]),
        ))
        .await;
    let (alice, _) = app
        .create(member("alice", user_key("acme", "a", &["links:read"])))
        .await;
    let (elsewhere, _) = app
        .create(member("bob", user_key("globex", "g", &["links:read"])))
        .await;
    assert_eq!(
        app.verify_code(verify_req(&live_secret, &[])).await,
        VerifyCode::Valid
    );

    let deleted = app
        .admin
        .clone()
        .remove_member(admin(proto::RemoveMemberRequest {
            organization_id: "acme".into(),
            user_id: "bob".into(),
        }))
        .await
        .expect("remove member")
        .into_inner()
        .deleted_key_count;
    assert_eq!(deleted, 2);
    let left: HashSet<_> = app
        .all_keys("acme")
        .await
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(left, HashSet::from([bot.id.clone(), alice.id.clone()]));
    assert_eq!(
        app.all_keys("globex").await.len(),
        1,
        "{elsewhere:?} untouched"
    );
    // Gone at once, even though the live key was cached.
    assert_eq!(
        app.verify_code(verify_req(&live_secret, &[])).await,
        VerifyCode::NotFound
    );
    assert_eq!(
        app.verify_code(verify_req(&old_secret, &[])).await,
        VerifyCode::NotFound
    );
    assert_eq!(
        app.verify_code(verify_req(&bot_secret, &[])).await,
        VerifyCode::Valid
    );
    for id in [&old.id, &live.id] {
        let actions: Vec<_> = app
            .events("acme", id)
            .await
            .iter()
            .map(|e| e.action())
            .collect();
        assert_eq!(
            actions.last(),
            Some(&KeyEventAction::Deleted),
            "{actions:?}"
        );
        assert_eq!(
            app.events("acme", id)
                .await
                .last()
                .map(|e| e.actor_id.clone()),
            Some("admin-1".into())
        );
    }
    // Removing again is a no-op, not an error.
    let again = app
        .admin
        .clone()
        .remove_member(admin(proto::RemoveMemberRequest {
            organization_id: "acme".into(),
            user_id: "bob".into(),
        }))
        .await
        .expect("remove member again")
        .into_inner();
    assert_eq!(again.deleted_key_count, 0);
    assert_bad_field(
        app.admin
            .clone()
            .remove_member(admin(proto::RemoveMemberRequest {
                organization_id: "acme".into(),
                user_id: "has space".into(),
            }))
            .await,
        "user_id",
    );
    app.stop().await;
}

async fn list_keys_pages_filters_and_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let (k, _) = app
            .create(admin(bot_key("acme", &format!("bot{i}"), &["links:read"])))
            .await;
        expected.push(k.id);
    }
    let (u, _) = app
        .create(member("dave", user_key("acme", "dave", &["links:read"])))
        .await;
    expected.push(u.id.clone());
    let (revoked, _) = app
        .create(member("erin", user_key("acme", "erin", &["links:read"])))
        .await;
    app.revoke("acme", &revoked.id).await;
    let mut c = app.admin.clone();

    // Three pages of three: every live key exactly once, in a stable order.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_keys(admin(ListKeysRequest {
                organization_id: "acme".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "creation order, each key once");

    let filtered = |req: ListKeysRequest| {
        let mut c = c.clone();
        async move {
            c.list_keys(admin(req))
                .await
                .expect("list")
                .into_inner()
                .keys
        }
    };
    let users = filtered(ListKeysRequest {
        organization_id: "acme".into(),
        r#type: KeyType::User.into(),
        include_revoked: true,
        ..Default::default()
    })
    .await;
    assert_eq!(users.len(), 2);
    let bots = filtered(ListKeysRequest {
        organization_id: "acme".into(),
        r#type: KeyType::Bot.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(bots.len(), 7);
    let dave = filtered(ListKeysRequest {
        organization_id: "acme".into(),
        user_id: "dave".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(dave.iter().map(|k| &k.id).collect::<Vec<_>>(), [&u.id]);
    let erin = filtered(ListKeysRequest {
        organization_id: "acme".into(),
        user_id: "erin".into(),
        ..Default::default()
    })
    .await;
    assert!(erin.is_empty(), "revoked keys are hidden by default");

    let bad = |req: ListKeysRequest| {
        let mut c = c.clone();
        async move { c.list_keys(admin(req)).await }
    };
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: "acme".into(),
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    let events_token = {
        let page = app
            .admin
            .clone()
            .list_key_events(admin(proto::ListKeyEventsRequest {
                organization_id: "acme".into(),
                page_size: 1,
                ..Default::default()
            }))
            .await
            .expect("events")
            .into_inner();
        page.next_page_token
    };
    assert!(!events_token.is_empty());
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: "acme".into(),
            page_token: events_token,
            ..Default::default()
        })
        .await,
        "page_token",
    );
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: "acme".into(),
            page_size: -1,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: "acme".into(),
            r#type: 9,
            ..Default::default()
        })
        .await,
        "type",
    );
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: "acme".into(),
            user_id: "a b".into(),
            ..Default::default()
        })
        .await,
        "user_id",
    );
    assert_bad_field(
        bad(ListKeysRequest {
            organization_id: String::new(),
            ..Default::default()
        })
        .await,
        "organization_id",
    );
    app.stop().await;
}

async fn list_key_events_pages_and_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, _) = app
        .create(admin(bot_key("acme", "a", &["links:read"])))
        .await;
    let (b, _) = app
        .create(member("frank", user_key("acme", "b", &["links:read"])))
        .await;
    app.revoke("acme", &a.id).await;
    app.revoke("acme", &b.id).await;
    let mut c = app.admin.clone();
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_key_events(admin(proto::ListKeyEventsRequest {
                organization_id: "acme".into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 4);
    let summary: Vec<_> = all
        .iter()
        .map(|e| (e.key_id.clone(), e.action(), e.actor_id.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (a.id.clone(), KeyEventAction::Created, "admin-1".to_owned()),
            (b.id.clone(), KeyEventAction::Created, "frank".to_owned()),
            (a.id.clone(), KeyEventAction::Revoked, "admin-1".to_owned()),
            (b.id.clone(), KeyEventAction::Revoked, "admin-1".to_owned()),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert!(
        all.iter()
            .all(|e| e.organization_id == "acme" && e.time.is_some())
    );
    assert_eq!(app.events("acme", &b.id).await.len(), 2);
    assert_bad_field(
        c.list_key_events(admin(proto::ListKeyEventsRequest {
            organization_id: "acme".into(),
            key_id: "x".into(),
            ..Default::default()
        }))
        .await,
        "key_id",
    );
    assert_bad_field(
        c.list_key_events(admin(proto::ListKeyEventsRequest {
            organization_id: "acme".into(),
            page_token: "eA".into(),
            ..Default::default()
        }))
        .await,
        "page_token",
    );
    app.stop().await;
}

async fn scope_catalog_rejects_unknown_scopes(backend: Backend) {
    let path = std::env::temp_dir().join(format!(
        "keygate-catalog-{}.txt",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &path,
        "# scopes of our product\nlinks:read\nlinks:write\nstats:*\n",
    )
    .expect("write catalog");
    let catalog = path.display().to_string();
    let app = spawn_app_with(backend, &["--scope-catalog", &catalog]).await;
    let status = assert_code(
        app.admin
            .clone()
            .create_key(admin(bot_key("acme", "k", &["links:read", "billing:read"])))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["scopes[1]"]);
    assert!(
        status.message().contains("billing:read"),
        "names the offending scope: {status:?}"
    );
    assert!(app.all_keys("acme").await.is_empty());
    let (key, _) = app
        .create(admin(bot_key(
            "acme",
            "k",
            &["links:read", "stats:*", "stats:read"],
        )))
        .await;
    assert_eq!(key.scopes, ["links:read", "stats:*", "stats:read"]);
    let update = UpdateKeyRequest {
        organization_id: "acme".into(),
        id: key.id.clone(),
        scopes: vec!["admin:write".into()],
        update_mask: mask(&["scopes"]),
        ..Default::default()
    };
    assert_bad_field(
        app.admin.clone().update_key(admin(update)).await,
        "scopes[0]",
    );
    app.stop().await;
    let _ = std::fs::remove_file(path);
}

async fn oversized_messages_are_refused_by_the_transport(backend: Backend) {
    let app = spawn_app(backend).await;
    let req = user_key("acme", &"n".repeat(100 * 1024), &["links:read"]);
    let status = app
        .admin
        .clone()
        .create_key(admin(req))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let verify = verify_req(&"k".repeat(70 * 1024), &[]);
    let status = app
        .verify
        .clone()
        .verify_key(verify)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(app.all_keys("acme").await.is_empty());
    app.stop().await;
}

/// Limits are the admins': a member may neither set `rate_limits` or `quota`
/// on a new key nor name either in an update of their own key (refused,
/// naming the field, nothing changed, no event); an admin may, on that key.
async fn members_may_not_set_or_change_limits(backend: Backend) {
    let app = spawn_app(backend).await;
    let limit = proto::RateLimit {
        name: "per_minute".into(),
        limit: 10,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    let quota = proto::Quota {
        limit: 100,
        period: proto::QuotaPeriod::Month.into(),
    };
    let mut c = app.admin.clone();
    let mut with_limits = user_key("acme", "a", &["links:read"]);
    with_limits.rate_limits = vec![limit.clone()];
    let mut with_quota = user_key("acme", "a", &["links:read"]);
    with_quota.quota = Some(quota);
    for (req, field) in [(with_limits, "rate_limits"), (with_quota, "quota")] {
        let status = assert_code(
            c.create_key(member("alice", req)).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains(field), "{status:?}");
    }
    assert!(app.all_keys("acme").await.is_empty(), "nothing created");

    let (key, _) = app
        .create(member("alice", user_key("acme", "a", &["links:read"])))
        .await;
    let update = |paths: &[&str]| UpdateKeyRequest {
        organization_id: "acme".into(),
        id: key.id.clone(),
        name: "renamed".into(),
        rate_limits: vec![limit.clone()],
        quota: Some(quota),
        update_mask: mask(paths),
        ..Default::default()
    };
    for (paths, field) in [
        (&["rate_limits"][..], "rate_limits"),
        (&["quota"][..], "quota"),
        (&["name", "quota"][..], "quota"),
    ] {
        let status = assert_code(
            c.update_key(member("alice", update(paths))).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains(field), "{paths:?}: {status:?}");
    }
    assert_eq!(app.get("acme", &key.id).await, key, "nothing changed");
    assert_eq!(app.events("acme", &key.id).await.len(), 1, "no event");

    let updated = c
        .update_key(admin(update(&["rate_limits", "quota"])))
        .await
        .expect("an admin may")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(updated.rate_limits, vec![limit.clone()]);
    assert_eq!(updated.quota, Some(quota));
    // The member's own changes to other fields still pass.
    c.update_key(member("alice", update(&["name"])))
        .await
        .expect("a member renames their key");
    app.stop().await;
}

crate::store_tests!(
    members_may_not_set_or_change_limits,
    an_organization_has_at_most_the_cap_of_live_keys,
    create_returns_the_secret_once,
    lists_are_normalised,
    bad_create_requests_name_the_field_and_change_nothing,
    one_live_user_key_per_user_and_organization,
    live_user_key_uniqueness_is_enforced_by_the_database,
    members_act_only_on_their_own_keys,
    other_organizations_keys_do_not_exist,
    update_applies_the_mask,
    revoking_twice_keeps_the_first_revoke_time,
    remove_member_deletes_only_that_members_user_keys,
    list_keys_pages_filters_and_tokens,
    list_key_events_pages_and_filters,
    scope_catalog_rejects_unknown_scopes,
    oversized_messages_are_refused_by_the_transport,
);

/// `--max-keys-per-organization`: past that many live keys a create is
/// RESOURCE_EXHAUSTED naming the flag, and changes nothing; racing creates
/// never get past it; a revoked key frees its place; other organizations
/// have their own count.
async fn an_organization_has_at_most_the_cap_of_live_keys(backend: Backend) {
    let app = spawn_app_with(backend, &["--max-keys-per-organization", "5"]).await;
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut c = app.admin.clone();
        creates.spawn(async move {
            c.create_key(admin(bot_key("acme", &format!("k{i}"), &["links:read"])))
                .await
        });
    }
    let mut refused = Vec::new();
    while let Some(r) = creates.join_next().await {
        if let Err(status) = r.expect("joined") {
            refused.push(status);
        }
    }
    assert_eq!(refused.len(), 7, "exactly the cap passed: {refused:?}");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-keys-per-organization"),
            "{status:?}"
        );
    }
    let keys = app.all_keys("acme").await;
    assert_eq!(keys.len(), 5);
    app.create(admin(bot_key("other", "k", &["links:read"])))
        .await;
    app.revoke("acme", &keys[0].id).await;
    app.create(admin(bot_key("acme", "after-revoke", &["links:read"])))
        .await;
    let status = assert_code(
        app.admin
            .clone()
            .create_key(admin(bot_key("acme", "one-more", &["links:read"])))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains('5'),
        "names the limit: {status:?}"
    );
    app.stop().await;
}
