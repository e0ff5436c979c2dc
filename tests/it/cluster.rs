//! Several instances on one database behave as one: changes made through one are
//! seen by the others within the invalidation interval, and usage adds up exactly.

use std::{sync::Arc, time::Duration};

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

/// Polls an instance until it answers `code`. Only the invalidation poll can
/// bring the change: the cached entry's TTL (60 s) is longer than this wait. The
/// one-second promise itself (four polls at the default 250 ms) is a latency
/// claim, not asserted here: under a parallel test load a wall-clock bound
/// fails for reasons that are not keygate's.
async fn seen_through_invalidation(
    client: &KeyVerifyClient<Channel>,
    key: &str,
    scopes: &[&str],
    want: VerifyCode,
) {
    eventually(
        Duration::from_secs(30),
        &format!("{want:?} through the invalidation poll"),
        || async { code(client, key, scopes).await == want },
    )
    .await;
}

async fn changes_reach_every_instance_through_invalidation(backend: Backend) {
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
        seen_through_invalidation(
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
        seen_through_invalidation(&b.verify, &secret, &[], VerifyCode::Revoked).await;
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

crate::store_tests!(
    changes_reach_every_instance_through_invalidation,
    usage_from_several_instances_adds_up_exactly,
);

/// A store read held open across a revocation must not put the key back in the
/// cache. MariaDB keeps the read of an uncached key waiting on a table lock
/// (`LOCK TABLES api_keys WRITE` from another connection); meanwhile the key's
/// cache entry is invalidated, which is what a revocation does once it has
/// committed (the revocation's own write would wait on the same lock, so the
/// cache is driven directly, as the verify path drives it: `get` gives the
/// read's ticket, `fill` hands back what the read returned). The read then
/// returns the row as it was before, live: it answers that one call, but the
/// cache must not keep it. Without the cache's generation check it would, and
/// every later verification would see the revoked key as valid until the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_a_revocation_never_resurrects_the_key() {
    use keygate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::Micros,
        hotpath::cache::{CacheConfig, KeyCache, Lookup},
        store::{PoolConfig, Store},
    };

    let db = TestDb::create(Backend::MySql).await;
    // A store whose statements wait on locks as long as the test needs (the
    // lock wait follows the store timeout).
    let store = Store::connect(
        &db.url,
        &PoolConfig {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(60),
        },
    )
    .await
    .expect("store");
    store.migrate().await.expect("migrate");
    let secret = Secret::generate(&KeyPrefix::default());
    let hash = secret.hash();
    let now = Micros::now();
    let key = bot_record("acme", "raced", &secret, now);
    store.create_key(&key).await.expect("create");
    let cache = KeyCache::new(&CacheConfig::default());

    // A verification of the uncached key: a miss, and its store read...
    let Lookup::Miss(ticket) = cache.get(&hash, Micros::now()) else {
        panic!("the key is not cached yet")
    };
    let mut locker = lock_keys_table(&db).await;
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.find_by_hashes(&[hash]).await }
    });
    // ...is held by MariaDB on the table lock.
    let watcher = sqlx::MySqlPool::connect(&db.url).await.expect("connect");
    let db_name = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    eventually(
        Duration::from_secs(30),
        "the read to wait on the lock",
        || {
            let (watcher, db_name) = (watcher.clone(), db_name.clone());
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND STATE LIKE 'Waiting for table%' AND INFO LIKE 'SELECT%'",
                )
                .bind(db_name)
                .fetch_one(&watcher)
                .await
                .expect("processlist");
                waiting == 1
            }
        },
    )
    .await;
    assert!(!read.is_finished(), "the read is blocked");

    // The revocation's cache step, while the read is blocked.
    cache.invalidate(&hash);

    unlock(&mut locker).await;
    let stale = read
        .await
        .expect("task")
        .expect("read")
        .pop()
        .expect("the key, as it was before the revocation");
    assert!(stale.revoke_time.is_none(), "the read returned the old row");
    let answered = cache.fill(ticket, hash, Some(stale));
    assert!(answered.is_some(), "the read still answers its own call");
    // The revocation's store step, for the record: the key is revoked.
    store
        .revoke_key(
            &key.organization_id,
            &key.id,
            &key.created_by,
            Micros::now(),
        )
        .await
        .expect("revoke");

    match cache.get(&hash, Micros::now()) {
        Lookup::Miss(_) => {}
        Lookup::Found(k) => panic!(
            "the stale read was cached: the revoked key is served as {:?} (revoke_time {:?})",
            k.verified().name,
            k.revoke_time()
        ),
        Lookup::Unknown => panic!("the key is cached as unknown"),
    }

    watcher.close().await;
    store.close().await;
    db.drop_db().await;
}

/// Auto-increment ids are handed out at insert but seen at commit: an event with a
/// lower id can become visible after a higher one was polled. The poller must not
/// skip it. (SQLite serializes writers, so only MySQL can commit out of order;
/// keygate serializes the event writers of one organization, so two organizations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_out_of_order_still_invalidates() {
    use keygate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::Micros,
        hotpath::cache::{CacheConfig, KeyCache, Lookup},
        hotpath::invalidation::Poller,
        store::{PoolConfig, Store},
    };
    use sqlx::{Connection, MySqlConnection};

    let db = TestDb::create(Backend::MySql).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let cache = std::sync::Arc::new(KeyCache::new(&CacheConfig::default()));
    let mut poller = Poller::start(
        store.clone(),
        cache.clone(),
        Arc::new(keygate::hotpath::identities::IdentityCache::new(
            store.clone(),
            100,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5),
        )),
        Arc::new(keygate::hotpath::filter::KnownKeys::new(10)),
        None,
    )
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
        let Lookup::Miss(ticket) = cache.get(&s.hash(), Micros::now()) else {
            panic!("empty cache")
        };
        cache.fill(ticket, s.hash(), None);
    }
    assert_eq!(
        poller.poll_once().await.expect("poll"),
        1,
        "only the committed event is visible"
    );
    assert!(matches!(
        cache.get(&fast_secret.hash(), Micros::now()),
        Lookup::Miss(_)
    ));
    assert!(
        matches!(
            cache.get(&slow_secret.hash(), Micros::now()),
            Lookup::Unknown
        ),
        "not yet committed"
    );

    slow_tx.commit().await.expect("commit");
    assert_eq!(
        poller.poll_once().await.expect("poll"),
        1,
        "the late event is picked up"
    );
    assert!(matches!(
        cache.get(&slow_secret.hash(), Micros::now()),
        Lookup::Miss(_)
    ));
    assert_eq!(poller.poll_once().await.expect("poll"), 0, "and only once");
    store.close().await;
    db.drop_db().await;
}
