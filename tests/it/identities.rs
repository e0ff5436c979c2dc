//! Identities on both stores: the calls (admins only, bad input named and
//! changing nothing, an external id unique per organization, no deletion while
//! a live key uses one), and their limits shared by every key they own:
//! checked after the key's own, all or nothing, exact across instances and
//! through a SIGKILL, and carried through a rotation.

use std::collections::BTreeMap;

use keygate::proto::{
    self, CreateIdentityRequest, DeleteIdentityRequest, GetIdentityRequest, Identity,
    ListIdentitiesRequest, Quota, QuotaPeriod, RateLimit, RotateKeyRequest, UpdateIdentityRequest,
    UpdateKeyRequest, VerifyCode, key_verify_client::KeyVerifyClient,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::{store_tests, support::*, usage_limits::hammer};

const ORG: &str = "owners";

fn meta(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn per_minute(limit: u64) -> RateLimit {
    RateLimit {
        name: "per_minute".into(),
        limit,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }
}

fn total(limit: u64) -> Option<Quota> {
    Some(Quota {
        limit,
        period: QuotaPeriod::Total.into(),
    })
}

fn new_identity(external_id: &str) -> CreateIdentityRequest {
    CreateIdentityRequest {
        organization_id: ORG.into(),
        external_id: external_id.into(),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn create_identity(app: &TestApp, req: CreateIdentityRequest) -> Identity {
    app.admin
        .clone()
        .create_identity(admin(req))
        .await
        .expect("identity created")
        .into_inner()
        .identity
        .expect("identity")
}

/// A bot key of [`ORG`] owned by `identity`, with scope `links:read`.
async fn owned_key(app: &TestApp, identity: &str, name: &str) -> (proto::ApiKey, String) {
    app.create(admin(proto::CreateKeyRequest {
        identity_id: identity.into(),
        ..bot_key(ORG, name, &["links:read"])
    }))
    .await
}

fn call(secret: &str) -> proto::VerifyKeyRequest {
    verify_req(secret, &["links:read"])
}

store_tests!(
    identities_are_created_read_listed_updated_and_deleted_by_admins_only,
    bad_identity_input_is_named_and_changes_nothing,
    an_identity_with_live_keys_cannot_be_deleted,
    verify_answers_with_the_identity_and_spends_its_limits_after_the_keys,
    a_refused_call_consumes_nothing_of_the_key_or_the_identity,
    a_rotated_key_keeps_its_identity_and_spends_the_same_quota,
);

async fn identities_are_created_read_listed_updated_and_deleted_by_admins_only(b: Backend) {
    let app = spawn_app(b).await;
    let created = create_identity(
        &app,
        CreateIdentityRequest {
            metadata: meta(&[("plan", "pro")]),
            rate_limits: vec![per_minute(100)],
            quota: Some(Quota {
                limit: 1000,
                period: QuotaPeriod::Month.into(),
            }),
            ..new_identity("cus_1")
        },
    )
    .await;
    assert_eq!(created.organization_id, ORG);
    assert_eq!(created.external_id, "cus_1");
    assert_eq!(created.metadata, meta(&[("plan", "pro")]));
    assert_eq!(created.rate_limits, vec![per_minute(100)]);
    assert_eq!(created.quota_usage.as_ref().map(|u| u.used), Some(0));
    assert!(created.create_time.is_some());

    let get = |id: &str, external: &str| GetIdentityRequest {
        organization_id: ORG.into(),
        id: id.into(),
        external_id: external.into(),
    };
    let by_id = app
        .admin
        .clone()
        .get_identity(admin(get(&created.id, "")))
        .await;
    assert_eq!(
        by_id.expect("by id").into_inner().identity,
        Some(created.clone())
    );
    let by_external = app
        .admin
        .clone()
        .get_identity(admin(get("", "cus_1")))
        .await;
    assert_eq!(
        by_external.expect("by external id").into_inner().identity,
        Some(created.clone())
    );
    // Another organization's identity does not exist for this one.
    let elsewhere = GetIdentityRequest {
        organization_id: "someone-else".into(),
        ..get(&created.id, "")
    };
    assert_code(
        app.admin.clone().get_identity(admin(elsewhere)).await,
        Code::NotFound,
    );

    // The external id is unique in the organization.
    let twice = app
        .admin
        .clone()
        .create_identity(admin(new_identity("cus_1")))
        .await;
    assert_code(twice, Code::AlreadyExists);

    // Pages in creation order.
    let second = create_identity(&app, new_identity("cus_2")).await;
    let third = create_identity(&app, new_identity("cus_3")).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .admin
            .clone()
            .list_identities(admin(ListIdentitiesRequest {
                organization_id: ORG.into(),
                page_size: 2,
                page_token: token,
            }))
            .await
            .expect("list")
            .into_inner();
        assert!(page.identities.len() <= 2);
        seen.extend(page.identities.into_iter().map(|i| i.external_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["cus_1", "cus_2", "cus_3"]);

    // Only the masked fields change.
    let updated = app
        .admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: created.id.clone(),
            external_id: "cus_1b".into(),
            metadata: meta(&[("plan", "enterprise")]),
            quota: None,
            update_mask: mask(&["external_id", "metadata", "quota"]),
            ..Default::default()
        }))
        .await
        .expect("update")
        .into_inner()
        .identity
        .expect("identity");
    assert_eq!(updated.external_id, "cus_1b");
    assert_eq!(updated.metadata, meta(&[("plan", "enterprise")]));
    assert_eq!(updated.quota, None, "an unset quota in the mask removes it");
    assert_eq!(updated.rate_limits, created.rate_limits, "not in the mask");
    // Renaming onto a taken external id is refused.
    let clash = app
        .admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: second.id.clone(),
            external_id: "cus_3".into(),
            update_mask: mask(&["external_id"]),
            ..Default::default()
        }))
        .await;
    assert_code(clash, Code::AlreadyExists);

    // Members manage no identity, and may not put a key in one.
    let m = |msg| member("usr_7", msg);
    let mut client = app.admin.clone();
    assert_code(
        client.create_identity(m(new_identity("cus_9"))).await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .get_identity(member("usr_7", get(&created.id, "")))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .list_identities(member(
                "usr_7",
                ListIdentitiesRequest {
                    organization_id: ORG.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .delete_identity(member(
                "usr_7",
                DeleteIdentityRequest {
                    organization_id: ORG.into(),
                    id: third.id.clone(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let member_key = client
        .create_key(member(
            "usr_7",
            proto::CreateKeyRequest {
                identity_id: created.id.clone(),
                ..user_key(ORG, "mine", &["links:read"])
            },
        ))
        .await;
    assert_code(member_key, Code::PermissionDenied);

    // Deleted, it is gone; its external id is free again.
    client
        .delete_identity(admin(DeleteIdentityRequest {
            organization_id: ORG.into(),
            id: third.id.clone(),
        }))
        .await
        .expect("delete");
    assert_code(
        client.get_identity(admin(get(&third.id, ""))).await,
        Code::NotFound,
    );
    create_identity(&app, new_identity("cus_3")).await;

    // Each change is in the audit trail, naming the identity.
    let events = app.events(ORG, "").await;
    let named: Vec<(i32, String)> = events
        .iter()
        .filter(|e| e.identity_id == third.id)
        .map(|e| (e.action, e.key_id.clone()))
        .collect();
    assert_eq!(
        named,
        [
            (proto::KeyEventAction::IdentityCreated as i32, String::new()),
            (proto::KeyEventAction::IdentityDeleted as i32, String::new()),
        ]
    );
    app.stop().await;
}

async fn bad_identity_input_is_named_and_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let mut client = app.admin.clone();
    let bad = CreateIdentityRequest {
        external_id: "has space".into(),
        metadata: meta(&[("Not-A-Name", "x")]),
        rate_limits: vec![per_minute(0)],
        quota: Some(Quota {
            limit: 10,
            period: 0,
        }),
        ..new_identity("")
    };
    let status = assert_code(
        client.create_identity(admin(bad)).await,
        Code::InvalidArgument,
    );
    let fields = bad_fields(&status);
    for f in ["external_id", "rate_limits[0].limit", "quota.period"] {
        assert!(fields.iter().any(|x| x == f), "{f} not in {fields:?}");
    }
    assert!(
        fields.iter().any(|x| x.starts_with("metadata")),
        "{fields:?}"
    );
    let listed = client
        .list_identities(admin(ListIdentitiesRequest {
            organization_id: ORG.into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.identities.is_empty(), "nothing was created");

    let kept = create_identity(&app, new_identity("cus_1")).await;
    let bad_update = UpdateIdentityRequest {
        organization_id: ORG.into(),
        id: kept.id.clone(),
        external_id: "ok_now".into(),
        rate_limits: vec![per_minute(0)],
        update_mask: mask(&["external_id", "rate_limits"]),
        ..Default::default()
    };
    assert_bad_field(
        client.update_identity(admin(bad_update)).await,
        "rate_limits[0].limit",
    );
    let unknown_path = UpdateIdentityRequest {
        organization_id: ORG.into(),
        id: kept.id.clone(),
        update_mask: mask(&["name"]),
        ..Default::default()
    };
    assert_bad_field(
        client.update_identity(admin(unknown_path)).await,
        "update_mask.paths[0]",
    );
    let after = client
        .get_identity(admin(GetIdentityRequest {
            organization_id: ORG.into(),
            id: kept.id.clone(),
            external_id: String::new(),
        }))
        .await
        .expect("get")
        .into_inner()
        .identity;
    assert_eq!(
        after,
        Some(kept.clone()),
        "a refused update changes nothing"
    );

    // A key naming no identity of its organization is refused, unchanged.
    let stranger = keygate::domain::identities::IdentityId::generate();
    let refused = client
        .create_key(admin(proto::CreateKeyRequest {
            identity_id: stranger.as_str().into(),
            ..bot_key(ORG, "k", &["links:read"])
        }))
        .await;
    assert_code(refused, Code::FailedPrecondition);
    let malformed = client
        .create_key(admin(proto::CreateKeyRequest {
            identity_id: "cus_1".into(),
            ..bot_key(ORG, "k", &["links:read"])
        }))
        .await;
    assert_bad_field(malformed, "identity_id");
    let other_org = create_identity(
        &app,
        CreateIdentityRequest {
            organization_id: "elsewhere".into(),
            ..new_identity("cus_1")
        },
    )
    .await;
    let (key, _) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    let moved = client
        .update_key(admin(UpdateKeyRequest {
            organization_id: ORG.into(),
            id: key.id.clone(),
            identity_id: other_org.id.clone(),
            update_mask: mask(&["identity_id"]),
            ..Default::default()
        }))
        .await;
    assert_code(moved, Code::FailedPrecondition);
    assert_eq!(app.get(ORG, &key.id).await.identity_id, "");
    assert!(
        app.all_keys(ORG).await.len() == 1,
        "only the good key exists"
    );
    app.stop().await;
}

async fn an_identity_with_live_keys_cannot_be_deleted(b: Backend) {
    let app = spawn_app(b).await;
    let identity = create_identity(&app, new_identity("cus_1")).await;
    let (key, _) = owned_key(&app, &identity.id, "k").await;
    assert_eq!(key.identity_id, identity.id);
    let delete = || {
        let mut client = app.admin.clone();
        let req = admin(DeleteIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
        });
        async move { client.delete_identity(req).await }
    };
    let status = assert_code(delete().await, Code::FailedPrecondition);
    assert!(status.message().contains("live keys"), "{status:?}");
    // A key in the grace period of a rotation is live too.
    app.admin
        .clone()
        .rotate_key(admin(RotateKeyRequest {
            organization_id: ORG.into(),
            id: key.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .expect("rotate");
    for k in app.all_keys(ORG).await {
        if !k.revoked && k.rotated_to_id.is_empty() {
            app.revoke(ORG, &k.id).await;
        }
    }
    assert_code(delete().await, Code::FailedPrecondition);
    for k in app.all_keys(ORG).await {
        if !k.revoked {
            app.revoke(ORG, &k.id).await;
        }
    }
    delete().await.expect("no live key is left");
    // Its dead keys name no identity any more.
    for k in app.all_keys(ORG).await {
        assert_eq!(k.identity_id, "", "{}", k.name);
    }
    app.stop().await;
}

async fn verify_answers_with_the_identity_and_spends_its_limits_after_the_keys(b: Backend) {
    let app = spawn_app(b).await;
    let identity = create_identity(
        &app,
        CreateIdentityRequest {
            metadata: meta(&[("customer", "cus_1"), ("plan", "pro")]),
            rate_limits: vec![per_minute(5)],
            ..new_identity("cus_1")
        },
    )
    .await;
    let mut secrets = Vec::new();
    for name in ["a", "b", "c"] {
        secrets.push(owned_key(&app, &identity.id, name).await.1);
    }
    // The answer names the identity (its limits' settings stay out of it).
    let first = app.verify(call(&secrets[0])).await;
    assert_eq!(first.code(), VerifyCode::Valid);
    let shown = first.key.expect("key").identity.expect("identity");
    assert_eq!(
        shown,
        Identity {
            id: identity.id.clone(),
            organization_id: ORG.into(),
            external_id: "cus_1".into(),
            metadata: meta(&[("customer", "cus_1"), ("plan", "pro")]),
            ..Default::default()
        }
    );
    let limit = first.rate_limit.expect("the identity's rate limit");
    assert_eq!(
        (limit.name.as_str(), limit.remaining),
        ("identity.per_minute", 4)
    );
    // Three keys share five calls a minute, not fifteen.
    let mut codes = Vec::new();
    for i in 0..9 {
        codes.push(app.verify_code(call(&secrets[i % 3])).await);
    }
    let valid = codes.iter().filter(|c| **c == VerifyCode::Valid).count();
    assert_eq!(valid, 4, "{codes:?}");
    let refused = app.verify(call(&secrets[2])).await;
    assert_eq!(refused.code(), VerifyCode::RateLimited);
    assert_eq!(
        refused.rate_limit.expect("limit").name,
        "identity.per_minute"
    );
    assert!(refused.retry_after.is_some());

    // A change of the identity reaches its keys' answers at once.
    app.admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
            metadata: meta(&[("plan", "enterprise")]),
            rate_limits: vec![],
            update_mask: mask(&["metadata", "rate_limits"]),
            ..Default::default()
        }))
        .await
        .expect("update");
    let after = app.verify(call(&secrets[1])).await;
    assert_eq!(after.code(), VerifyCode::Valid);
    assert_eq!(
        after.key.expect("key").identity.expect("identity").metadata,
        meta(&[("plan", "enterprise")])
    );
    assert!(after.rate_limit.is_none(), "no rate limit is left");
    // A key leaves its identity through the mask.
    let (plain, plain_secret) = owned_key(&app, &identity.id, "d").await;
    app.admin
        .clone()
        .update_key(admin(UpdateKeyRequest {
            organization_id: ORG.into(),
            id: plain.id,
            update_mask: mask(&["identity_id"]),
            ..Default::default()
        }))
        .await
        .expect("leave");
    let alone = app.verify(call(&plain_secret)).await;
    assert!(alone.key.expect("key").identity.is_none());
    app.stop().await;
}

async fn a_refused_call_consumes_nothing_of_the_key_or_the_identity(b: Backend) {
    let app = spawn_app(b).await;
    let identity = create_identity(
        &app,
        CreateIdentityRequest {
            rate_limits: vec![per_minute(100)],
            quota: total(4),
            ..new_identity("cus_1")
        },
    )
    .await;
    // `small` has a key quota of 1: its second call is refused by the key,
    // and must take nothing of the identity's 4.
    let (_, small) = app
        .create(admin(proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            quota: total(1),
            ..bot_key(ORG, "small", &["links:read"])
        }))
        .await;
    // `big` has a key quota of 10: the identity's refusals must give its
    // credits back.
    let (_, big) = app
        .create(admin(proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            quota: total(10),
            ..bot_key(ORG, "big", &["links:read"])
        }))
        .await;
    assert_eq!(app.verify_code(call(&small)).await, VerifyCode::Valid);
    let refused = app.verify(call(&small)).await;
    assert_eq!(refused.code(), VerifyCode::QuotaExceeded);
    assert_eq!(refused.quota.expect("quota").name, "quota");
    // Three of the identity's four credits are left, and then none.
    let mut passed = 0;
    for _ in 0..5 {
        let a = app.verify(call(&big)).await;
        if a.code() == VerifyCode::Valid {
            passed += 1;
        } else {
            assert_eq!(a.code(), VerifyCode::QuotaExceeded);
            assert_eq!(a.quota.expect("quota").name, "identity.quota");
        }
    }
    assert_eq!(passed, 3);
    // The refusals took nothing of the identity's rate limit: only the 4
    // calls that passed count.
    let last = app
        .verify(proto::VerifyKeyRequest {
            cost: Some(0),
            ..call(&big)
        })
        .await;
    let rate = last.rate_limit.expect("rate limit");
    assert_eq!(rate.name, "identity.per_minute");
    assert_eq!(rate.remaining, 100 - 4);
    // The store agrees: 4 credits used.
    let stored = app
        .admin
        .clone()
        .get_identity(admin(GetIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
            external_id: String::new(),
        }))
        .await
        .expect("get")
        .into_inner()
        .identity
        .expect("identity");
    assert_eq!(stored.quota_usage.expect("usage").used, 4);
    // Nor of `big`'s own quota: with the identity's quota gone, 7 of its 10
    // are left (3 calls passed; the 2 the identity refused gave theirs back).
    app.admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
            update_mask: mask(&["quota"]),
            ..Default::default()
        }))
        .await
        .expect("remove the identity's quota");
    let own = app
        .verify(proto::VerifyKeyRequest {
            cost: Some(0),
            ..call(&big)
        })
        .await;
    assert_eq!(own.code(), VerifyCode::Valid);
    let quota = own.quota.expect("the key's quota");
    assert_eq!((quota.name.as_str(), quota.remaining), ("quota", 7));
    app.stop().await;
}

async fn a_rotated_key_keeps_its_identity_and_spends_the_same_quota(b: Backend) {
    let app = spawn_app(b).await;
    let identity = create_identity(
        &app,
        CreateIdentityRequest {
            quota: total(3),
            ..new_identity("cus_1")
        },
    )
    .await;
    let (key, old_secret) = owned_key(&app, &identity.id, "k").await;
    assert_eq!(app.verify_code(call(&old_secret)).await, VerifyCode::Valid);
    let rotated = app
        .admin
        .clone()
        .rotate_key(admin(RotateKeyRequest {
            organization_id: ORG.into(),
            id: key.id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .expect("rotate")
        .into_inner();
    let new = rotated.key.expect("new key");
    assert_eq!(new.identity_id, identity.id);
    // Old (in grace) and new key spend the identity's two credits left.
    assert_eq!(app.verify_code(call(&old_secret)).await, VerifyCode::Valid);
    assert_eq!(
        app.verify_code(call(&rotated.secret)).await,
        VerifyCode::Valid
    );
    assert_eq!(
        app.verify_code(call(&rotated.secret)).await,
        VerifyCode::QuotaExceeded
    );
    assert_eq!(
        app.verify_code(call(&old_secret)).await,
        VerifyCode::QuotaExceeded
    );
    app.stop().await;
}

/// Three keys of one identity on two instances of one MariaDB database share
/// its quota of 60 exactly, and an update on one instance reaches the other's
/// answers through the event poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keys_on_two_instances_share_an_identity_quota_exactly() {
    let a = spawn_app(Backend::MySql).await;
    let identity = create_identity(
        &a,
        CreateIdentityRequest {
            quota: total(60),
            ..new_identity("cus_1")
        },
    )
    .await;
    let mut secrets = Vec::new();
    for name in ["a", "b", "c"] {
        secrets.push(owned_key(&a, &identity.id, name).await.1);
    }
    let b = start_app(&a.db, &[]).await.expect("second instance");
    let clients = [
        a.verify.clone(),
        KeyVerifyClient::new(connect(b.addr()).await),
    ];
    let mut set = tokio::task::JoinSet::new();
    for secret in secrets.clone() {
        let clients = clients.clone();
        set.spawn(
            async move { hammer(&clients, &secret, 3, 12, &[VerifyCode::QuotaExceeded]).await },
        );
    }
    let mut valid = 0;
    while let Some(n) = set.join_next().await {
        valid += n.expect("caller");
    }
    assert_eq!(
        valid, 60,
        "3 keys x 2 instances x 36 calls against 60 credits"
    );

    // Changed on `a`, seen on `b` once its poll has read the event.
    a.admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
            metadata: meta(&[("plan", "gold")]),
            update_mask: mask(&["metadata"]),
            ..Default::default()
        }))
        .await
        .expect("update");
    let on_b = KeyVerifyClient::new(connect(b.addr()).await);
    eventually(
        std::time::Duration::from_secs(10),
        "the other instance answers with the new metadata",
        || {
            let mut on_b = on_b.clone();
            let secret = secrets[0].clone();
            async move {
                let answer = on_b.verify_key(call(&secret)).await.expect("answer");
                let shown = answer.into_inner().key.and_then(|k| k.identity);
                shown.and_then(|i| i.metadata.get("plan").cloned()) == Some("gold".into())
            }
        },
    )
    .await;
    b.shutdown().await.expect("stop b");
    a.stop().await;
}

/// A SIGKILLed instance never over-grants an identity's quota: what it had
/// leased is lost for the period (at most one lease), never handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_quota_holds_through_a_sigkill() {
    const LIMIT: u64 = 400;
    let db = TestDb::create(Backend::MySql).await;
    let first = spawn_process_on(&db, &[]);
    let mut client = proto::key_admin_client::KeyAdminClient::new(connect(first.addr).await);
    let identity = client
        .create_identity(admin(CreateIdentityRequest {
            quota: total(LIMIT),
            ..new_identity("cus_1")
        }))
        .await
        .expect("identity")
        .into_inner()
        .identity
        .expect("identity");
    let mut secrets = Vec::new();
    for name in ["a", "b"] {
        let created = client
            .create_key(admin(proto::CreateKeyRequest {
                identity_id: identity.id.clone(),
                ..bot_key(ORG, name, &["links:read"])
            }))
            .await
            .expect("key")
            .into_inner();
        secrets.push(created.secret);
    }
    let verify = [KeyVerifyClient::new(connect(first.addr).await)];
    let mut before = 0;
    for secret in &secrets {
        before += hammer(&verify, secret, 4, 15, &[VerifyCode::QuotaExceeded]).await;
    }
    assert_eq!(before, 120, "under the quota every call passes");
    let store = keygate::store::Store::connect(&db.url, &Default::default())
        .await
        .expect("store");
    let org = keygate::domain::model::OrganizationId::parse(ORG).expect("org");
    let id = keygate::domain::identities::IdentityId::parse(&identity.id).expect("id");
    let taken = store
        .get_identity(&org, &keygate::domain::identities::IdentityName::Id(id))
        .await
        .expect("read")
        .expect("identity")
        .quota_used;
    assert!(taken > before, "the instance holds leased credits: {taken}");
    drop(first); // SIGKILL: the lease is never given back.

    let second = spawn_process_on(&db, &[]);
    let verify = [KeyVerifyClient::new(connect(second.addr).await)];
    let mut after = 0;
    for secret in &secrets {
        after += hammer(&verify, secret, 4, 60, &[VerifyCode::QuotaExceeded]).await;
    }
    let lost = taken - before;
    assert_eq!(before + after, LIMIT - lost, "never more than the limit");
    assert!(lost <= LIMIT / 20, "at most one open lease lost: {lost}");
    drop(second);
    store.close().await;
    db.drop_db().await;
}

/// The webhook of an identity change: type `identity.updated`, the event
/// naming the identity, `data.identity` as the change left it and no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_change_is_a_webhook() {
    use crate::webhooks::{hook_flags, start_receiver, strs};
    let (receiver, addr) = start_receiver(0);
    let flags = hook_flags(addr);
    let app = spawn_app_with(Backend::Sqlite, &strs(&flags)).await;
    let identity = create_identity(&app, new_identity("cus_1")).await;
    app.admin
        .clone()
        .update_identity(admin(UpdateIdentityRequest {
            organization_id: ORG.into(),
            id: identity.id.clone(),
            metadata: meta(&[("plan", "pro")]),
            quota: total(100),
            update_mask: mask(&["metadata", "quota"]),
            ..Default::default()
        }))
        .await
        .expect("update");
    let id = format!("{ORG}-2");
    eventually(
        std::time::Duration::from_secs(30),
        "the identity webhook",
        || async { receiver.delivered().contains_key(&id) },
    )
    .await;
    let body = receiver.delivered()[&id][0].clone();
    assert_eq!(body["type"], "identity.updated");
    assert_eq!(body["data"]["key"], serde_json::Value::Null);
    let event = &body["data"]["event"];
    assert_eq!(event["action"], "KEY_EVENT_ACTION_IDENTITY_UPDATED");
    assert_eq!(event["keyId"], "");
    assert_eq!(event["identityId"], identity.id.as_str());
    let shown = &body["data"]["identity"];
    assert_eq!(shown["externalId"], "cus_1");
    assert_eq!(shown["metadata"], serde_json::json!({"plan": "pro"}));
    assert_eq!(
        shown["quota"],
        serde_json::json!({"limit": "100", "period": "QUOTA_PERIOD_TOTAL"})
    );
    app.stop().await;
}
