//! The store goes away under a running keygate and comes back.

use std::time::Duration;

use keygate::{
    domain::keys::{KeyPrefix, Secret},
    proto::VerifyCode,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{private_db::PrivateMariaDb, support::*};

async fn health(app: &TestApp) -> ServingStatus {
    health_at(app.app.as_ref().expect("running").addr()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_survive_a_store_outage_and_keygate_recovers_by_itself() {
    let mut server = PrivateMariaDb::start().await;
    let db = TestDb::create_mysql_on(&server.url(), "outage").await;
    let app = start_on(
        db,
        &[
            "--cache-ttl",
            "1h",
            "--usage-flush-interval",
            "20ms",
            "--database-timeout",
            "300ms",
        ],
    )
    .await;
    let (cached, cached_secret) = app
        .create(admin(bot_key("acme", "cached", &["links:read"])))
        .await;
    let (_, uncached_secret) = app
        .create(admin(bot_key("acme", "uncached", &["links:read"])))
        .await;
    assert_eq!(
        app.verify_code(verify_req(&cached_secret, &["links:read"]))
            .await,
        VerifyCode::Valid
    );
    assert_eq!(health(&app).await, ServingStatus::Serving);
    // Nothing left to flush when the server dies: a flush that commits just as
    // the server is killed, and so is never acknowledged, would be counted again
    // (the documented at-least-once bound), and this test counts exactly.
    eventually(
        Duration::from_secs(10),
        "usage before the outage flushed",
        || async { app.get("acme", &cached.id).await.request_count == 1 },
    )
    .await;

    server.kill();

    // Cached keys go on verifying; everything else is UNAVAILABLE, never NOT_FOUND.
    for _ in 0..5 {
        assert_eq!(
            app.verify_code(verify_req(&cached_secret, &["links:read"]))
                .await,
            VerifyCode::Valid
        );
    }
    let unknown = Secret::generate(&KeyPrefix::default());
    for secret in [uncached_secret.as_str(), unknown.expose()] {
        let result = app.verify.clone().verify_key(verify_req(secret, &[])).await;
        assert_code(result, Code::Unavailable);
    }
    assert_code(
        app.admin
            .clone()
            .create_key(admin(bot_key("acme", "x", &["a:b"])))
            .await,
        Code::Unavailable,
    );
    eventually(Duration::from_secs(10), "health NOT_SERVING", || async {
        health(&app).await == ServingStatus::NotServing
    })
    .await;

    server.restart().await;

    // Back without a restart of keygate: health, uncached keys, admin calls, and
    // the usage counted during the outage.
    eventually(Duration::from_secs(15), "health SERVING again", || async {
        health(&app).await == ServingStatus::Serving
    })
    .await;
    assert_eq!(
        app.verify_code(verify_req(&uncached_secret, &[])).await,
        VerifyCode::Valid
    );
    assert_eq!(
        app.verify_code(verify_req(unknown.expose(), &[])).await,
        VerifyCode::NotFound
    );
    app.create(admin(bot_key("acme", "after", &["links:read"])))
        .await;
    eventually(Duration::from_secs(10), "outage usage flushed", || async {
        app.get("acme", &cached.id).await.request_count == 6
    })
    .await;
    app.stop().await;
}

/// A quota and the webhook outbox through a store outage: the quota spends only
/// credits already leased, then answers UNAVAILABLE (never VALID without a
/// credit, never QUOTA_EXCEEDED for credits that exist); events written before
/// the outage reach their endpoint after it, though every attempt before the
/// outage failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_webhooks_ride_out_a_store_outage() {
    use std::sync::atomic::Ordering;

    use keygate::{
        domain::model::{KeyId, OrganizationId},
        proto::{Quota, QuotaPeriod},
    };

    use crate::webhooks::{hook_flags, start_receiver, strs};

    let mut server = PrivateMariaDb::start().await;
    let db = TestDb::create_mysql_on(&server.url(), "outage2").await;
    let (receiver, hook) = start_receiver(usize::MAX);
    let mut flags = strs(&hook_flags(hook))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    flags.extend(["--database-timeout".into(), "300ms".into()]);
    let app = start_on(db, &strs(&flags)).await;
    let mut req = bot_key("acme", "metered", &["links:read"]);
    req.quota = Some(Quota {
        limit: 1_000,
        period: QuotaPeriod::Total.into(),
    });
    let (key, secret) = app.create(admin(req)).await;
    app.create(admin(bot_key("acme", "other", &["links:read"])))
        .await;
    for _ in 0..30 {
        assert_eq!(
            app.verify_code(verify_req(&secret, &["links:read"])).await,
            VerifyCode::Valid
        );
    }
    let taken = app
        .store
        .get_key(
            &OrganizationId::parse("acme").expect("org"),
            &KeyId::parse(&key.id).expect("id"),
        )
        .await
        .expect("read")
        .expect("key")
        .quota_used;
    let leased = taken - 30;
    assert!(
        receiver.delivered().is_empty(),
        "every attempt so far refused"
    );

    server.kill();
    let mut valid = 0;
    loop {
        match app
            .verify
            .clone()
            .verify_key(verify_req(&secret, &["links:read"]))
            .await
        {
            Ok(r) => {
                assert_eq!(
                    r.into_inner().code(),
                    VerifyCode::Valid,
                    "only leased credits"
                );
                valid += 1;
                assert!(valid <= leased, "spent {valid} of {leased} leased credits");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
        }
    }
    assert_eq!(valid, leased, "every leased credit, then UNAVAILABLE");

    receiver.fail.store(0, Ordering::SeqCst);
    server.restart().await;
    eventually(Duration::from_secs(30), "both events delivered", || async {
        receiver.delivered().len() == 2
    })
    .await;
    app.stop().await;
}
