//! The verify path's coalesced store reads: a read of many hashes answers each
//! caller with its own key, and misses that queue behind a busy read are read
//! together.

use std::{collections::HashMap, sync::Arc, time::Duration};

use keygate::{
    domain::keys::{self, KeyPrefix, Secret, SecretHash},
    hotpath::lookup::Lookups,
    proto::VerifyCode,
    store::{PoolConfig, Store, StoreError},
};
use tokio_util::task::TaskTracker;

use crate::support::*;

/// `n` bot keys of one organization: `(key id, secret, hash)`.
async fn seed(app: &TestApp, n: usize) -> Vec<(String, String, SecretHash)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (key, secret) = app
            .create(admin(bot_key(
                "batchorg",
                &format!("k{i}"),
                &["links:read"],
            )))
            .await;
        let hash = keys::parse_token(&secret).expect("an issued secret parses");
        out.push((key.id, secret, hash));
    }
    out
}

fn unknown_hash() -> SecretHash {
    Secret::generate(&KeyPrefix::default()).hash()
}

/// More hashes than one statement takes, with repeats and unknown ones mixed in:
/// every stored key comes back exactly once, and nothing else does.
async fn a_read_of_many_hashes_returns_each_stored_key_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let keys = seed(&app, 70).await;
    let mut hashes: Vec<SecretHash> = keys.iter().map(|k| k.2).collect();
    hashes.extend([keys[0].2, keys[69].2, keys[33].2]);
    hashes.extend((0..5).map(|_| unknown_hash()));

    let found = app.store.find_by_hashes(&hashes).await.expect("read");
    let by_hash: HashMap<SecretHash, String> = found
        .iter()
        .map(|r| (r.secret_hash, r.id.as_str().to_owned()))
        .collect();
    assert_eq!(found.len(), 70, "each stored key once");
    for (id, _, hash) in &keys {
        assert_eq!(by_hash.get(hash), Some(id));
    }

    // Every padded size, from one hash up.
    for n in [1, 2, 3, 5, 17, 63, 64, 65] {
        let found = app.store.find_by_hashes(&hashes[..n]).await.expect("read");
        assert_eq!(found.len(), n.min(70), "{n} hashes");
    }
    assert!(
        app.store
            .find_by_hashes(&[])
            .await
            .expect("read")
            .is_empty()
    );
    app.stop().await;
}

/// Through the API with the cache off, so that every call is a store read: many
/// concurrent calls, known and unknown keys mixed, each get their own answer.
async fn concurrent_uncached_verifications_each_get_their_own_key(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &["--cache-capacity", "0", "--negative-cache-capacity", "0"],
    )
    .await;
    let keys = seed(&app, 40).await;
    let unknown: Vec<String> = (0..40)
        .map(|_| Secret::generate(&KeyPrefix::default()).expose().to_owned())
        .collect();
    let calls = (0..5).flat_map(|_| {
        keys.iter()
            .map(|(id, secret, _)| (secret.clone(), Some(id.clone())))
            .chain(unknown.iter().map(|s| (s.clone(), None)))
    });
    let tasks: Vec<_> = calls
        .map(|(secret, id)| {
            let mut client = app.verify.clone();
            tokio::spawn(async move {
                let resp = client
                    .verify_key(verify_req(&secret, &["links:read"]))
                    .await
                    .expect("verify answers")
                    .into_inner();
                (id, resp)
            })
        })
        .collect();
    assert_eq!(tasks.len(), 400);
    for task in tasks {
        let (id, resp) = task.await.expect("task");
        match id {
            Some(id) => {
                assert_eq!(resp.code(), VerifyCode::Valid);
                assert_eq!(resp.key.expect("key").id, id);
            }
            None => {
                assert_eq!(resp.code(), VerifyCode::NotFound);
                assert!(resp.key.is_none());
            }
        }
    }
    app.stop().await;
}

crate::store_tests!(
    a_read_of_many_hashes_returns_each_stored_key_once,
    concurrent_uncached_verifications_each_get_their_own_key,
);

/// One read slot, held by a read that MariaDB keeps waiting on a table lock:
/// the misses that arrive meanwhile queue, and are then read in one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_queued_behind_a_busy_read_are_read_together() {
    let app = spawn_app(Backend::MySql).await;
    let keys = seed(&app, 20).await;
    // A store whose statements wait on locks as long as the test needs (the
    // lock wait follows the store timeout).
    let patient = Store::connect(
        &app.db.url,
        &PoolConfig {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(60),
        },
    )
    .await
    .expect("connect");
    let lookups = Lookups::start(
        patient,
        None,
        1,
        Duration::from_secs(60),
        &TaskTracker::new(),
    );

    let mut locker = lock_keys_table(&app.db).await;

    let blocked = tokio::spawn({
        let lookups = lookups.clone();
        let hash = keys[0].2;
        async move { lookups.find(hash).await }
    });
    eventually(Duration::from_secs(10), "the first read to be out", || {
        let lookups = lookups.clone();
        async move { lookups.reads() == (1, 1) }
    })
    .await;

    let lookups = Arc::new(lookups);
    let queued: Vec<_> = keys[1..]
        .iter()
        .map(|(_, _, hash)| hash)
        .copied()
        .chain([unknown_hash()])
        .map(|hash| {
            let lookups = Arc::clone(&lookups);
            tokio::spawn(async move { (hash, lookups.find(hash).await) })
        })
        .collect();
    eventually(Duration::from_secs(10), "20 misses to queue", || {
        let lookups = Arc::clone(&lookups);
        async move { lookups.queued() == 20 }
    })
    .await;
    assert_eq!(lookups.reads(), (1, 1), "nothing else was read meanwhile");

    unlock(&mut locker).await;
    let first = blocked.await.expect("task").expect("read").expect("found");
    assert_eq!(first.id.as_str(), keys[0].0);
    let ids: HashMap<SecretHash, &str> = keys.iter().map(|k| (k.2, k.0.as_str())).collect();
    for task in queued {
        let (hash, answer) = task.await.expect("task");
        let found = answer.expect("read").map(|r| r.id.as_str().to_owned());
        assert_eq!(found.as_deref(), ids.get(&hash).copied());
    }
    assert_eq!(lookups.reads(), (2, 21), "the 20 queued misses in one read");

    app.stop().await;
}

/// A read the store never answers (MariaDB keeps it waiting on a table lock) is
/// given up as unavailable and frees its slot, so the next read is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_store_does_not_answer_is_given_up_and_frees_its_slot() {
    let app = spawn_app(Backend::MySql).await;
    let keys = seed(&app, 1).await;
    let lookups = Lookups::start(
        app.store.clone(),
        None,
        1,
        Duration::from_millis(300),
        &TaskTracker::new(),
    );

    let mut locker = lock_keys_table(&app.db).await;
    let err = tokio::time::timeout(Duration::from_secs(10), lookups.find(keys[0].2))
        .await
        .expect("the read is given up, not left waiting")
        .expect_err("no answer while the table is locked");
    assert!(matches!(*err, StoreError::Timeout(_)), "{err:?}");

    unlock(&mut locker).await;
    let found = lookups.find(keys[0].2).await.expect("read").expect("found");
    assert_eq!(found.id.as_str(), keys[0].0);
    assert_eq!(lookups.reads().0, 2);

    app.stop().await;
}

/// The store stalls (a table lock nobody releases). An admin write, then 400
/// concurrent uncached verifications, each end UNAVAILABLE within the store
/// timeout plus a margin, however many queue for the read slots; none runs into
/// the request timeout (CANCELLED). Before the fix the write waited for
/// MariaDB's own lock wait (a year for a table lock) until the request timeout,
/// and queued misses for one timed-out read after another (6 s for the last of
/// 300, three times the store timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_answers_unavailable_within_the_store_timeout() {
    const STORE_TIMEOUT: Duration = Duration::from_secs(2);
    // The store timeout and a margin for a loaded machine.
    const BOUND: Duration = Duration::from_secs(4);
    // Keys that exist but are not cached: unknown ones would be answered by
    // the forged-key filter without the store.
    let db = TestDb::create(Backend::MySql).await;
    let seed = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("seed store");
    seed.migrate().await.expect("schema");
    let mut secrets = Vec::new();
    for i in 0..400 {
        let secret = Secret::generate(&KeyPrefix::default());
        let record = bot_record(
            "seeded",
            &format!("s{i}"),
            &secret,
            keygate::domain::model::Micros::now(),
        );
        seed.create_key(&record).await.expect("seeded");
        secrets.push(secret.into_exposed());
    }
    seed.close().await;
    let app = start_on(
        db,
        &["--database-timeout", "2s", "--request-timeout", "60s"],
    )
    .await;
    let mut locker = lock_keys_table(&app.db).await;

    let start = std::time::Instant::now();
    let write = app
        .admin
        .clone()
        .create_key(admin(bot_key("acme", "during the stall", &["links:read"])))
        .await;
    let write_took = start.elapsed();
    assert_code(write, tonic::Code::Unavailable);
    assert!(write_took < BOUND, "the write took {write_took:?}");

    let calls: Vec<_> = secrets
        .iter()
        .map(|key| {
            let mut client = app.verify.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let result = client.verify_key(verify_req(&key, &[])).await;
                (start.elapsed(), result.map(|r| r.into_inner().code()))
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (took, result) = call.await.expect("task");
        let status = result.expect_err("no answer from a stalled store");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < BOUND,
        "slowest verification took {slowest:?} (store timeout {STORE_TIMEOUT:?})"
    );

    unlock(&mut locker).await;
    assert!(
        app.all_keys("acme").await.is_empty(),
        "the refused write changed nothing"
    );
    app.stop().await;
}
