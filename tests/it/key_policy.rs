//! An organization's key policy (`SetKeyPolicy` / `GetKeyPolicy`) on both
//! stores: admins only; bad fields named; each rule enforced on `CreateKey`,
//! `UpdateKey` and `RotateKey` with FAILED_PRECONDITION naming it; keys that
//! exist untouched by a new policy; each change an event with the policy, and
//! a webhook; another organization unaffected.

use keygate::proto::{
    self, CreateKeyRequest, GetKeyPolicyRequest, KeyEventAction, KeyPolicy, RotateKeyRequest,
    SetKeyPolicyRequest, UpdateKeyRequest,
};
use prost_types::{Duration, FieldMask, Timestamp};
use tonic::Code;

use crate::{store_tests, support::*};

const ORG: &str = "acme";
const DAY: i64 = 86_400;

fn days(n: i64) -> Option<Duration> {
    Some(Duration {
        seconds: n * DAY,
        nanos: 0,
    })
}

fn set(policy: Option<KeyPolicy>) -> SetKeyPolicyRequest {
    SetKeyPolicyRequest {
        organization_id: ORG.into(),
        policy,
    }
}

fn strict() -> KeyPolicy {
    KeyPolicy {
        max_lifetime: days(90),
        require_networks_for_bot_keys: true,
        allowed_bot_scopes: vec!["links:read".into(), "reports:*".into()],
        max_rotation_grace: Some(Duration {
            seconds: 3_600,
            nanos: 0,
        }),
    }
}

fn bot(scopes: &[&str], networks: &[&str]) -> CreateKeyRequest {
    CreateKeyRequest {
        allowed_networks: networks.iter().map(|s| (*s).to_owned()).collect(),
        ..bot_key(ORG, "bot", scopes)
    }
}

/// The status of a refused call, which must be FAILED_PRECONDITION naming `rule`.
fn assert_breaks<T: std::fmt::Debug>(result: Result<T, tonic::Status>, rule: &str) {
    let status = assert_code(result, Code::FailedPrecondition);
    assert!(
        status
            .message()
            .starts_with(&format!("key policy {rule}: ")),
        "{status:?}"
    );
}

/// The organization's policy as an admin reads it.
async fn policy_of(app: &TestApp, org: &str) -> Option<KeyPolicy> {
    app.admin
        .clone()
        .get_key_policy(admin(GetKeyPolicyRequest {
            organization_id: org.into(),
        }))
        .await
        .expect("get")
        .into_inner()
        .policy
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

store_tests!(
    only_admins_set_and_read_the_policy_and_bad_fields_are_named,
    each_rule_holds_on_create_update_and_rotate,
    existing_keys_are_untouched_and_changes_are_events,
);

async fn only_admins_set_and_read_the_policy_and_bad_fields_are_named(b: Backend) {
    let app = spawn_app(b).await;
    let mut client = app.admin.clone();
    // None set: every field unset.
    let empty = policy_of(&app, ORG).await;
    assert_eq!(empty, Some(KeyPolicy::default()));
    assert_code(
        client
            .set_key_policy(member("bob", set(Some(strict()))))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .get_key_policy(member(
                "bob",
                GetKeyPolicyRequest {
                    organization_id: ORG.into(),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    for (policy, field) in [
        (
            KeyPolicy {
                max_lifetime: Some(Duration {
                    seconds: 59,
                    nanos: 0,
                }),
                ..KeyPolicy::default()
            },
            "policy.max_lifetime",
        ),
        (
            KeyPolicy {
                max_lifetime: days(3651),
                ..KeyPolicy::default()
            },
            "policy.max_lifetime",
        ),
        (
            KeyPolicy {
                max_rotation_grace: days(8),
                ..KeyPolicy::default()
            },
            "policy.max_rotation_grace",
        ),
        (
            KeyPolicy {
                max_rotation_grace: Some(Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..KeyPolicy::default()
            },
            "policy.max_rotation_grace",
        ),
        (
            KeyPolicy {
                allowed_bot_scopes: vec!["links:read".into(), "Not A Scope".into()],
                ..KeyPolicy::default()
            },
            "policy.allowed_bot_scopes[1]",
        ),
    ] {
        assert_bad_field(client.set_key_policy(admin(set(Some(policy)))).await, field);
    }
    assert_bad_field(
        client
            .set_key_policy(admin(SetKeyPolicyRequest {
                organization_id: "not an org".into(),
                policy: None,
            }))
            .await,
        "organization_id",
    );
    // Nothing refused was stored, and no event written.
    let got = policy_of(&app, ORG).await;
    assert_eq!(got, Some(KeyPolicy::default()));
    assert!(app.events(ORG, "").await.is_empty());

    let stored = client
        .set_key_policy(admin(set(Some(strict()))))
        .await
        .expect("set")
        .into_inner()
        .policy;
    assert_eq!(stored, Some(strict()));
    let got = policy_of(&app, ORG).await;
    assert_eq!(got, Some(strict()));
    // Another organization has its own (none).
    let other = policy_of(&app, "globex").await;
    assert_eq!(other, Some(KeyPolicy::default()));
    app.create(admin(bot_key("globex", "free", &["admin:*"])))
        .await;
    app.stop().await;
}

async fn each_rule_holds_on_create_update_and_rotate(b: Backend) {
    let app = spawn_app(b).await;
    let mut client = app.admin.clone();
    client
        .set_key_policy(admin(set(Some(strict()))))
        .await
        .expect("set");
    // The test clock runs with real time (a test moves it forward, it never
    // stops), so keygate's "now" at a call lies between two readings of it.
    let seconds = || keygate::clock::Clock::now(&*app.clock).0 / 1_000_000;
    let now = seconds();
    let in_90_days = |t: Option<prost_types::Timestamp>, until: i64| {
        t.is_some_and(|t| (now + 90 * DAY..=until + 90 * DAY).contains(&t.seconds))
    };

    // CreateKey: a key without an expiry gets now + 90 days.
    let (user, _) = app.create(admin(user_key(ORG, "u", &["admin:*"]))).await;
    assert!(in_90_days(user.expire_time, seconds()), "{user:?}");
    let latest = CreateKeyRequest {
        expire_time: at(now + 90 * DAY),
        ..user_key(ORG, "u2", &["links:read"])
    };
    app.create(as_actor("dave", "admin", latest.clone())).await;
    let later = CreateKeyRequest {
        // Past any "now + 90 days" of this test's run, which lasts seconds.
        expire_time: at(now + 90 * DAY + 3_600),
        ..latest
    };
    assert_breaks(
        client.create_key(as_actor("erin", "admin", later)).await,
        "max_lifetime",
    );
    // Bot keys: networks required, scopes within the allowed ones.
    assert_breaks(
        client.create_key(admin(bot(&["links:read"], &[]))).await,
        "require_networks_for_bot_keys",
    );
    assert_breaks(
        client
            .create_key(admin(bot(&["links:read", "links:write"], &["10.0.0.0/8"])))
            .await,
        "allowed_bot_scopes",
    );
    let (key, _) = app
        .create(admin(bot(
            &["links:read", "reports:export"],
            &["10.0.0.0/8"],
        )))
        .await;
    // A member's user key is under the lifetime rule too (the bot rules are
    // not about it).
    let (mine, _) = app
        .create(member("bob", user_key(ORG, "mine", &["links:write"])))
        .await;
    assert!(in_90_days(mine.expire_time, seconds()), "{mine:?}");

    // UpdateKey: only the fields it changes are checked.
    let upd = |paths: &[&str], f: &dyn Fn(&mut UpdateKeyRequest)| {
        let mut req = UpdateKeyRequest {
            organization_id: ORG.into(),
            id: key.id.clone(),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|s| (*s).to_owned()).collect(),
            }),
            ..Default::default()
        };
        f(&mut req);
        let mut client = app.admin.clone();
        async move { client.update_key(admin(req)).await }
    };
    assert_breaks(
        upd(&["allowed_networks"], &|_| {}).await,
        "require_networks_for_bot_keys",
    );
    assert_breaks(
        upd(&["scopes"], &|r| r.scopes = vec!["billing:write".into()]).await,
        "allowed_bot_scopes",
    );
    assert_breaks(upd(&["expire_time"], &|_| {}).await, "max_lifetime");
    assert_breaks(
        upd(&["expire_time"], &|r| r.expire_time = at(now + 91 * DAY)).await,
        "max_lifetime",
    );
    upd(&["expire_time", "name"], &|r| {
        r.expire_time = at(now + DAY);
        r.name = "renamed".into();
    })
    .await
    .expect("within the policy");
    let unchanged = app.get(ORG, &key.id).await;
    assert_eq!(unchanged.scopes, ["links:read", "reports:export"]);
    assert_eq!(unchanged.allowed_networks, ["10.0.0.0/8"]);

    // RotateKey: the grace period is bounded.
    let rotate = |grace: i64| RotateKeyRequest {
        organization_id: ORG.into(),
        id: key.id.clone(),
        grace_period: Some(Duration {
            seconds: grace,
            nanos: 0,
        }),
    };
    assert_breaks(
        client.rotate_key(admin(rotate(3_601))).await,
        "max_rotation_grace",
    );
    let rotated = client
        .rotate_key(admin(rotate(3_600)))
        .await
        .expect("within the policy")
        .into_inner();
    let new = rotated.key.expect("new key");
    assert_eq!(new.expire_time.map(|t| t.seconds), Some(now + DAY));
    // Every refusal changed nothing: one create event per key made, one
    // update, one rotation.
    let events = app.events(ORG, "").await;
    let count = |a: KeyEventAction| events.iter().filter(|e| e.action == a as i32).count();
    assert_eq!(count(KeyEventAction::Created), 5);
    assert_eq!(count(KeyEventAction::Updated), 1);
    assert_eq!(count(KeyEventAction::Rotated), 1);
    app.stop().await;
}

async fn existing_keys_are_untouched_and_changes_are_events(b: Backend) {
    let app = spawn_app(b).await;
    let mut client = app.admin.clone();
    // Made before the policy: no expiry, no networks, any scope.
    let (old, old_secret) = app.create(admin(bot_key(ORG, "old", &["admin:*"]))).await;
    client
        .set_key_policy(admin(set(Some(strict()))))
        .await
        .expect("set");
    let after = app.get(ORG, &old.id).await;
    assert_eq!(after.expire_time, None);
    assert_eq!(after.update_time, old.update_time);
    assert_eq!(
        app.verify_code(verify_req(&old_secret, &["admin:*"])).await,
        proto::VerifyCode::Valid
    );
    // A rename leaves its other fields alone, so the policy does not refuse it.
    let rename = UpdateKeyRequest {
        organization_id: ORG.into(),
        id: old.id.clone(),
        name: "old renamed".into(),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
        ..Default::default()
    };
    client.update_key(admin(rename)).await.expect("rename");
    // A rotation would make a new key with the old settings: refused until the
    // key meets the policy.
    let rotate = RotateKeyRequest {
        organization_id: ORG.into(),
        id: old.id.clone(),
        grace_period: None,
    };
    assert_breaks(client.rotate_key(admin(rotate)).await, "allowed_bot_scopes");

    // Clearing the policy (unset) is a change too.
    client
        .set_key_policy(admin(set(None)))
        .await
        .expect("clear");
    let events = app.events(ORG, "").await;
    let policy_events: Vec<&proto::KeyEvent> = events
        .iter()
        .filter(|e| e.action == KeyEventAction::PolicyChanged as i32)
        .collect();
    assert_eq!(policy_events.len(), 2, "{events:?}");
    for (e, want) in policy_events.iter().zip([strict(), KeyPolicy::default()]) {
        assert_eq!(e.key_id, "");
        assert_eq!(e.actor_id, "admin-1");
        assert_eq!(e.policy.as_ref(), Some(&want));
    }
    // A key's own events do not include the organization's policy changes.
    assert!(
        app.events(ORG, &old.id)
            .await
            .iter()
            .all(|e| e.action != KeyEventAction::PolicyChanged as i32)
    );
    let (free, _) = app.create(admin(bot_key(ORG, "free", &["admin:*"]))).await;
    assert_eq!(free.expire_time, None);
    app.stop().await;
}

/// The webhook of a policy change: type `key_policy.changed`, the event with
/// the policy in the protobuf JSON mapping, and no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_is_a_webhook() {
    use crate::webhooks::{hook_flags, start_receiver, strs};
    let (receiver, addr) = start_receiver(0);
    let flags = hook_flags(addr);
    let app = spawn_app_with(Backend::Sqlite, &strs(&flags)).await;
    app.admin
        .clone()
        .set_key_policy(admin(set(Some(strict()))))
        .await
        .expect("set");
    let id = format!("{ORG}-1");
    eventually(
        std::time::Duration::from_secs(30),
        "the policy webhook",
        || async { receiver.delivered().contains_key(&id) },
    )
    .await;
    let body = receiver.delivered()[&id][0].clone();
    assert_eq!(body["type"], "key_policy.changed");
    assert_eq!(body["data"]["key"], serde_json::Value::Null);
    let event = &body["data"]["event"];
    assert_eq!(event["action"], "KEY_EVENT_ACTION_POLICY_CHANGED");
    assert_eq!(event["keyId"], "");
    assert_eq!(
        event["policy"],
        serde_json::json!({
            "maxLifetime": "7776000s",
            "requireNetworksForBotKeys": true,
            "allowedBotScopes": ["links:read", "reports:*"],
            "maxRotationGrace": "3600s",
        })
    );
    app.stop().await;
}
