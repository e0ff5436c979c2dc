//! Several instances on one database behave as one: changes made through one are
//! seen by the others within the invalidation interval, and usage adds up exactly.

use std::time::{Duration, Instant};

use keygate::{
    app::App,
    proto::{
        UpdateKeyRequest, VerifyCode, key_admin_client::KeyAdminClient,
        key_verify_client::KeyVerifyClient,
    },
};
use prost_types::FieldMask;
use tonic::transport::Channel;

use crate::support::*;

/// A second keygate on the test app's database.
struct Peer {
    app: App,
    verify: KeyVerifyClient<Channel>,
    admin: KeyAdminClient<Channel>,
}

async fn peer(of: &TestApp, extra: &[&str]) -> Peer {
    let app = start_app(&of.db, extra)
        .await
        .expect("second instance starts");
    let channel = connect(app.addr()).await;
    Peer {
        app,
        verify: KeyVerifyClient::new(channel.clone()),
        admin: KeyAdminClient::new(channel),
    }
}

async fn code(client: &KeyVerifyClient<Channel>, key: &str, scopes: &[&str]) -> VerifyCode {
    client
        .clone()
        .verify_key(verify_req(key, scopes))
        .await
        .expect("verify")
        .into_inner()
        .code()
}

/// Polls an instance until it answers `code`; fails past the one-second promise.
async fn seen_within_a_second(
    client: &KeyVerifyClient<Channel>,
    key: &str,
    scopes: &[&str],
    want: VerifyCode,
) {
    let start = Instant::now();
    while code(client, key, scopes).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{want:?} not seen within one second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn changes_reach_every_instance_within_a_second(backend: Backend) {
    let a = spawn_app(backend).await;
    let b = peer(&a, &[]).await;
    for round in 0..3 {
        let (key, secret) = a
            .create(admin(bot_key(
                "acme",
                &format!("k{round}"),
                &["links:read"],
            )))
            .await;
        // Both instances have the key cached before the change.
        assert_eq!(
            a.verify_code(verify_req(&secret, &["links:read"])).await,
            VerifyCode::Valid
        );
        assert_eq!(
            code(&b.verify, &secret, &["links:read"]).await,
            VerifyCode::Valid
        );

        // A scope change made through B reaches A...
        let update = UpdateKeyRequest {
            organization_id: "acme".into(),
            id: key.id.clone(),
            scopes: vec!["stats:read".into()],
            update_mask: Some(FieldMask {
                paths: vec!["scopes".into()],
            }),
            ..Default::default()
        };
        b.admin
            .clone()
            .update_key(admin(update))
            .await
            .expect("update through B");
        assert_eq!(
            code(&b.verify, &secret, &["links:read"]).await,
            VerifyCode::InsufficientScope,
            "at once on B"
        );
        seen_within_a_second(
            &a.verify,
            &secret,
            &["links:read"],
            VerifyCode::InsufficientScope,
        )
        .await;

        // ...and a revocation made through A reaches B.
        a.revoke("acme", &key.id).await;
        assert_eq!(
            a.verify_code(verify_req(&secret, &[])).await,
            VerifyCode::Revoked,
            "at once on A"
        );
        seen_within_a_second(&b.verify, &secret, &[], VerifyCode::Revoked).await;
    }
    b.app.shutdown().await.expect("stop B");
    a.stop().await;
}

async fn usage_from_several_instances_adds_up_exactly(backend: Backend) {
    let a = spawn_app_with(backend, &["--usage-flush-interval", "10ms"]).await;
    let b = peer(&a, &["--usage-flush-interval", "10ms"]).await;
    let (key, secret) = a
        .create(admin(bot_key("acme", "shared", &["links:read"])))
        .await;
    const EACH: u64 = 150;
    let mut tasks = tokio::task::JoinSet::new();
    for client in [a.verify.clone(), b.verify.clone()] {
        for _ in 0..3 {
            let mut client = client.clone();
            let secret = secret.clone();
            tasks.spawn(async move {
                for _ in 0..EACH {
                    client
                        .verify_key(verify_req(&secret, &[]))
                        .await
                        .expect("verify");
                }
            });
        }
    }
    tasks.join_all().await;
    b.app
        .shutdown()
        .await
        .expect("stop B flushes what it counted");
    eventually(Duration::from_secs(10), "A's counts flushed", || async {
        a.get("acme", &key.id).await.request_count >= 6 * EACH
    })
    .await;
    assert_eq!(
        a.get("acme", &key.id).await.request_count,
        6 * EACH,
        "exact, not approximately"
    );
    a.stop().await;
}

async fn a_read_racing_a_revocation_never_resurrects_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..10 {
        let (key, secret) = app
            .create(admin(bot_key(
                "acme",
                &format!("race{round}"),
                &["links:read"],
            )))
            .await;
        // Readers keep the key hot (and its cache entry refilled) while it is revoked.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let mut client = app.verify.clone();
            let (secret, stop) = (secret.clone(), stop.clone());
            readers.spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client
                        .verify_key(verify_req(&secret, &[]))
                        .await
                        .expect("verify");
                }
            });
        }
        app.revoke("acme", &key.id).await;
        // Once the revocation is acknowledged, no answer may be VALID again.
        for _ in 0..50 {
            assert_eq!(
                app.verify_code(verify_req(&secret, &[])).await,
                VerifyCode::Revoked
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        readers.join_all().await;
        assert_eq!(
            app.verify_code(verify_req(&secret, &[])).await,
            VerifyCode::Revoked
        );
    }
    app.stop().await;
}

crate::store_tests!(
    changes_reach_every_instance_within_a_second,
    usage_from_several_instances_adds_up_exactly,
    a_read_racing_a_revocation_never_resurrects_the_key,
);

/// Auto-increment ids are handed out at insert but seen at commit: an event with a
/// lower id can become visible after a higher one was polled. The poller must not
/// skip it. (SQLite serializes writers, so only MySQL can commit out of order;
/// keygate serializes the event writers of one organization, so two organizations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_out_of_order_still_invalidates() {
    use keygate::{
        cache::{CacheConfig, KeyCache, Lookup},
        invalidation::Poller,
        keys::{KeyPrefix, Secret},
        store::{PoolConfig, Store},
    };
    use sqlx::{Connection, MySqlConnection};

    let db = TestDb::create(Backend::MySql).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let cache = std::sync::Arc::new(KeyCache::new(&CacheConfig::default()));
    let mut poller = Poller::start(store.clone(), cache.clone())
        .await
        .expect("poller");
    let insert = "INSERT INTO key_events \
                  (key_id, organization_id, action, actor_id, event_time, secret_hash, org_seq) \
                  VALUES ('00000000-0000-7000-8000-000000000000', ?, 3, 'x', 0, ?, 1)";

    // The slow writer takes the lower id and holds its transaction open.
    let slow_secret = Secret::generate(&KeyPrefix::default());
    let mut slow = MySqlConnection::connect(&db.url).await.expect("connect");
    let mut slow_tx = slow.begin().await.expect("begin");
    sqlx::query(insert)
        .bind("acme")
        .bind(&slow_secret.hash().as_bytes()[..])
        .execute(&mut *slow_tx)
        .await
        .expect("insert");
    // A fast writer takes the next id and commits first.
    let fast_secret = Secret::generate(&KeyPrefix::default());
    let mut fast = MySqlConnection::connect(&db.url).await.expect("connect");
    sqlx::query(insert)
        .bind("globex")
        .bind(&fast_secret.hash().as_bytes()[..])
        .execute(&mut fast)
        .await
        .expect("insert");

    // Both keys are cached (as unknown keys: any entry will do to see invalidation).
    for s in [&slow_secret, &fast_secret] {
        let Lookup::Miss(ticket) = cache.get(&s.hash()) else {
            panic!("empty cache")
        };
        cache.fill(ticket, s.hash(), None);
    }
    assert_eq!(
        poller.poll_once().await.expect("poll"),
        1,
        "only the committed event is visible"
    );
    assert!(matches!(cache.get(&fast_secret.hash()), Lookup::Miss(_)));
    assert!(
        matches!(cache.get(&slow_secret.hash()), Lookup::Unknown),
        "not yet committed"
    );

    slow_tx.commit().await.expect("commit");
    assert_eq!(
        poller.poll_once().await.expect("poll"),
        1,
        "the late event is picked up"
    );
    assert!(matches!(cache.get(&slow_secret.hash()), Lookup::Miss(_)));
    assert_eq!(poller.poll_once().await.expect("poll"), 0, "and only once");
    store.close().await;
    db.drop_db().await;
}
