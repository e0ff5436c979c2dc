//! KeyAdmin.RotateKey on both stores: what the new key copies, the
//! grace period and its cap, the preconditions, who may rotate, the
//! one-live-user-key rule, the events, and quotas that rotation never refills.

use std::time::Duration;

use keygate::proto::{
    self, KeyEventAction, Quota, QuotaPeriod, RateLimit, RotateKeyRequest, VerifyCode,
};
use tonic::Code;

use crate::{store_tests, support::*};

const ORG: &str = "rotation";

fn rotate(id: &str, grace_seconds: Option<i64>) -> RotateKeyRequest {
    RotateKeyRequest {
        organization_id: ORG.into(),
        id: id.into(),
        grace_period: grace_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    }
}

fn in_seconds(app: &TestApp, s: i64) -> prost_types::Timestamp {
    use keygate::clock::Clock;
    keygate::domain::model::Micros(app.clock.now().0 + s * 1_000_000).to_timestamp()
}

pub(crate) async fn rotated(
    app: &TestApp,
    req: tonic::Request<RotateKeyRequest>,
) -> (proto::ApiKey, String, proto::ApiKey) {
    let r = app
        .admin
        .clone()
        .rotate_key(req)
        .await
        .expect("rotated")
        .into_inner();
    (
        r.key.expect("new key"),
        r.secret,
        r.previous_key.expect("previous key"),
    )
}

store_tests!(
    a_rotation_without_grace_revokes_the_old_key_and_copies_everything_else,
    in_its_grace_period_the_old_key_verifies_and_names_its_replacement,
    only_a_live_key_not_yet_rotated_can_be_rotated,
    members_rotate_their_own_user_key_and_the_replacement_is_the_live_one,
    rotation_never_hands_out_fresh_credits,
);

async fn a_rotation_without_grace_revokes_the_old_key_and_copies_everything_else(b: Backend) {
    let app = spawn_app(b).await;
    let mut req = bot_key(ORG, "deploy", &["links:read", "stats:read"]);
    req.allowed_hostnames = vec!["*.example.com".into()];
    req.expire_time = Some(in_seconds(&app, 86_400));
    req.rate_limits = vec![RateLimit {
        name: "per_minute".into(),
        limit: 100,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }];
    req.quota = Some(Quota {
        limit: 1_000,
        period: QuotaPeriod::Month.into(),
    });
    let (old, old_secret) = app.create(admin(req)).await;

    let (new, secret, previous) = rotated(&app, admin(rotate(&old.id, None))).await;
    assert_ne!(new.id, old.id);
    assert_ne!(secret, old_secret);
    assert!(keygate::domain::keys::parse_token(&secret).is_ok());
    for (field, same) in [
        ("organization", new.organization_id == old.organization_id),
        ("type", new.r#type == old.r#type),
        ("name", new.name == old.name),
        ("scopes", new.scopes == old.scopes),
        ("hostnames", new.allowed_hostnames == old.allowed_hostnames),
        ("expiry", new.expire_time == old.expire_time),
        ("rate limits", new.rate_limits == old.rate_limits),
        ("quota", new.quota == old.quota),
    ] {
        assert!(same, "the new key copies the {field}");
    }
    assert_eq!(new.rotated_from_id, old.id);
    assert!(new.rotated_to_id.is_empty() && !new.revoked);
    assert_eq!(previous.rotated_to_id, new.id);
    assert!(previous.revoked, "grace 0 revokes at once");
    assert_eq!(app.get(ORG, &old.id).await, previous);

    let check = |s: &str| {
        let mut r = verify_req(s, &["links:read"]);
        r.origin = "https://app.example.com".into();
        r
    };
    assert_eq!(
        app.verify_code(check(&old_secret)).await,
        VerifyCode::Revoked
    );
    assert_eq!(app.verify_code(check(&secret)).await, VerifyCode::Valid);

    let events: Vec<(String, KeyEventAction)> = app
        .events(ORG, "")
        .await
        .into_iter()
        .map(|e| (e.key_id.clone(), e.action()))
        .collect();
    assert_eq!(
        events,
        [
            (old.id.clone(), KeyEventAction::Created),
            (old.id.clone(), KeyEventAction::Rotated),
            (old.id.clone(), KeyEventAction::Revoked),
            (new.id.clone(), KeyEventAction::Created),
        ]
    );
    app.stop().await;
}

async fn in_its_grace_period_the_old_key_verifies_and_names_its_replacement(b: Backend) {
    let app = spawn_app(b).await;
    let (old, old_secret) = app.create(admin(bot_key(ORG, "ci", &["links:read"]))).await;
    let (new, _, previous) = rotated(&app, admin(rotate(&old.id, Some(3_600)))).await;
    assert!(!previous.revoked);
    let expiry = previous.expire_time.expect("the grace sets an expiry");
    let want = in_seconds(&app, 3_600).seconds;
    assert!((expiry.seconds - want).abs() <= 2, "now + grace");

    let r = app.verify(verify_req(&old_secret, &["links:read"])).await;
    assert_eq!(r.code(), VerifyCode::Valid);
    assert_eq!(r.key.expect("key").rotated_to_id, new.id);
    app.clock.advance(Duration::from_secs(3_601));
    assert_eq!(
        app.verify_code(verify_req(&old_secret, &["links:read"]))
            .await,
        VerifyCode::Expired
    );
    let events: Vec<KeyEventAction> = app
        .events(ORG, &old.id)
        .await
        .iter()
        .map(proto::KeyEvent::action)
        .collect();
    assert_eq!(events, [KeyEventAction::Created, KeyEventAction::Rotated]);

    // The grace never extends a key's own expiry.
    let mut short = bot_key(ORG, "short", &["links:read"]);
    short.expire_time = Some(in_seconds(&app, 600));
    let (short, _) = app.create(admin(short)).await;
    let (_, _, previous) = rotated(&app, admin(rotate(&short.id, Some(7 * 86_400)))).await;
    assert_eq!(previous.expire_time, short.expire_time);
    app.stop().await;
}

async fn only_a_live_key_not_yet_rotated_can_be_rotated(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = app.admin.clone();
    let (key, _) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    for (seconds, nanos) in [(-1, 0), (0, 500_000_000), (7 * 86_400 + 1, 0), (0, -5)] {
        let mut req = rotate(&key.id, None);
        req.grace_period = Some(prost_types::Duration { seconds, nanos });
        assert_bad_field(c.rotate_key(admin(req)).await, "grace_period");
    }
    assert_bad_field(c.rotate_key(admin(rotate("nope", None))).await, "id");
    assert_eq!(app.get(ORG, &key.id).await, key, "refusals change nothing");
    assert_eq!(app.all_keys(ORG).await.len(), 1);

    let (_, _, _) = rotated(&app, admin(rotate(&key.id, Some(60)))).await;
    let again = assert_code(
        c.rotate_key(admin(rotate(&key.id, Some(60)))).await,
        Code::FailedPrecondition,
    );
    assert!(again.message().contains("already rotated"), "{again:?}");

    let (revoked, _) = app.create(admin(bot_key(ORG, "r", &["links:read"]))).await;
    app.revoke(ORG, &revoked.id).await;
    assert_code(
        c.rotate_key(admin(rotate(&revoked.id, None))).await,
        Code::FailedPrecondition,
    );

    let mut expiring = bot_key(ORG, "e", &["links:read"]);
    expiring.expire_time = Some(in_seconds(&app, 60));
    let (expiring, _) = app.create(admin(expiring)).await;
    app.clock.advance(Duration::from_secs(61));
    assert_code(
        c.rotate_key(admin(rotate(&expiring.id, None))).await,
        Code::FailedPrecondition,
    );
    let mut other_org = rotate(&expiring.id, None);
    other_org.organization_id = "elsewhere".into();
    assert_code(c.rotate_key(admin(other_org)).await, Code::NotFound);
    assert_eq!(app.all_keys(ORG).await.len(), 4, "one replacement in all");
    app.stop().await;
}

async fn members_rotate_their_own_user_key_and_the_replacement_is_the_live_one(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = app.admin.clone();
    let (mine, _) = app
        .create(member("ann", user_key(ORG, "ann's", &["links:read"])))
        .await;
    let (bots, _) = app
        .create(admin(bot_key(ORG, "bot", &["links:read"])))
        .await;
    let (bens, _) = app
        .create(member("ben", user_key(ORG, "ben's", &["links:read"])))
        .await;
    assert_code(
        c.rotate_key(member("ann", rotate(&bots.id, None))).await,
        Code::PermissionDenied,
    );
    assert_code(
        c.rotate_key(member("ann", rotate(&bens.id, None))).await,
        Code::PermissionDenied,
    );
    // In its grace period the old key does not count against the one live user
    // key per member; its replacement does.
    let (new, _, previous) = rotated(&app, member("ann", rotate(&mine.id, Some(600)))).await;
    assert!(!previous.revoked);
    assert_eq!(new.user_id, "ann");
    assert_eq!(new.created_by, "ann");
    assert_code(
        c.create_key(member("ann", user_key(ORG, "second", &["links:read"])))
            .await,
        Code::AlreadyExists,
    );
    app.revoke(ORG, &new.id).await;
    app.create(member("ann", user_key(ORG, "after", &["links:read"])))
        .await;
    app.stop().await;
}

async fn rotation_never_hands_out_fresh_credits(b: Backend) {
    let app = spawn_app(b).await;
    let mut req = bot_key(ORG, "metered", &["links:read"]);
    req.quota = Some(Quota {
        limit: 5,
        period: QuotaPeriod::Total.into(),
    });
    let (old, old_secret) = app.create(admin(req)).await;
    for _ in 0..3 {
        assert_eq!(
            app.verify_code(verify_req(&old_secret, &["links:read"]))
                .await,
            VerifyCode::Valid
        );
    }
    let (new, secret, _) = rotated(&app, admin(rotate(&old.id, Some(600)))).await;
    assert_eq!(new.quota_usage.expect("usage").used, 3);
    // 2 credits are left, for both keys together.
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid
    );
    assert_eq!(
        app.verify_code(verify_req(&old_secret, &["links:read"]))
            .await,
        VerifyCode::Valid
    );
    for s in [&secret, &old_secret] {
        assert_eq!(
            app.verify_code(verify_req(s, &["links:read"])).await,
            VerifyCode::QuotaExceeded
        );
    }
    app.stop().await;
}

/// Another instance whose cache still holds the old key (its invalidation poll
/// is an hour away) spends the old key's own quota row: the rotation used that
/// row up, so the two keys together never pass more than the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_instance_gets_no_second_copy_of_the_credits() {
    let a = spawn_app(Backend::MySql).await;
    let b = start_app(&a.db, &["--invalidation-interval", "1h"])
        .await
        .expect("second instance");
    let b_verify = proto::key_verify_client::KeyVerifyClient::new(connect(b.addr()).await);
    let mut req = bot_key(ORG, "metered", &["links:read"]);
    req.quota = Some(Quota {
        limit: 10,
        period: QuotaPeriod::Total.into(),
    });
    let (old, old_secret) = a.create(admin(req)).await;
    let on_b = |secret: String| {
        let client = b_verify.clone();
        async move {
            client
                .clone()
                .verify_key(verify_req(&secret, &["links:read"]))
                .await
                .expect("answer")
                .into_inner()
                .code()
        }
    };
    // B caches the old key (and leases its first credit).
    assert_eq!(on_b(old_secret.clone()).await, VerifyCode::Valid);
    let (_, secret, _) = rotated(&a, admin(rotate(&old.id, Some(3_600)))).await;
    let mut valid = 1;
    for _ in 0..15 {
        if on_b(old_secret.clone()).await == VerifyCode::Valid {
            valid += 1;
        }
        if a.verify_code(verify_req(&secret, &["links:read"])).await == VerifyCode::Valid {
            valid += 1;
        }
    }
    assert!(valid <= 10, "{valid} calls passed a quota of 10");
    b.shutdown().await.expect("stop b");
    a.stop().await;
}
