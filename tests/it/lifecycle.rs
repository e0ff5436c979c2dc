//! A key's life as one state machine: one regression test per way an outside
//! attack found the features not composing (rotation × update, rotation ×
//! limits, quota × cost, quota × Redis), each on both stores; the random
//! sequences that check the whole table are in `model`.

use std::{sync::Arc, time::Duration};

use keygate::{
    clock::SharedClock,
    proto::{
        self, KeyEventAction, ListKeysRequest, Quota, QuotaPeriod, RateLimit, RotateKeyRequest,
        UpdateKeyRequest, VerifyCode, VerifyKeyRequest, key_verify_client::KeyVerifyClient,
    },
};
use prost_types::FieldMask;
use tonic::{Code, transport::Channel};

use crate::{
    store_tests,
    support::*,
    usage_limits::{PrivateRedis, free_port, hammer},
};

const ORG: &str = "lifecycle";
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

fn rate(limit: u64, seconds: i64) -> Vec<RateLimit> {
    vec![RateLimit {
        name: "per_window".into(),
        limit,
        window: Some(prost_types::Duration { seconds, nanos: 0 }),
    }]
}

fn quota(limit: u64, period: QuotaPeriod) -> Option<Quota> {
    Some(Quota {
        limit,
        period: period.into(),
    })
}

fn rotate(id: &str, grace_seconds: Option<i64>) -> RotateKeyRequest {
    RotateKeyRequest {
        organization_id: ORG.into(),
        id: id.into(),
        grace_period: grace_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    }
}

/// An UpdateKey of key `id` of [`ORG`] naming `paths`, with the values of `with`.
fn update(id: &str, paths: &[&str], with: UpdateKeyRequest) -> UpdateKeyRequest {
    UpdateKeyRequest {
        organization_id: ORG.into(),
        id: id.into(),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ..with
    }
}

fn call(secret: &str, cost: Option<u32>) -> VerifyKeyRequest {
    VerifyKeyRequest {
        cost,
        ..verify_req(secret, &["links:read"])
    }
}

/// Rotates and returns the replacement and its secret.
async fn rotated(app: &TestApp, req: tonic::Request<RotateKeyRequest>) -> (proto::ApiKey, String) {
    let (new, secret, _) = crate::rotation::rotated(app, req).await;
    (new, secret)
}

/// A bot key of [`ORG`] with the given limits.
async fn limited(
    app: &TestApp,
    rates: Vec<RateLimit>,
    q: Option<Quota>,
) -> (proto::ApiKey, String) {
    let mut req = bot_key(ORG, "limited", &["links:read"]);
    req.rate_limits = rates;
    req.quota = q;
    app.create(admin(req)).await
}

/// How many of `n` calls of cost 1 with `secret`, one after another, pass.
async fn passes(app: &TestApp, secret: &str, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        if app.verify_code(call(secret, None)).await == VerifyCode::Valid {
            passed += 1;
        }
    }
    passed
}

store_tests!(
    a_rotation_cannot_be_undone,
    a_rotation_chain_spends_one_set_of_limits,
    a_rotation_hands_out_no_fresh_burst,
    a_refused_costly_call_leaves_the_rest_spendable,
    a_call_that_can_never_fit_gets_no_retry_time,
    a_new_quota_starts_with_nothing_leased_against_it,
    a_change_of_the_newest_key_reaches_its_keys_in_grace_at_once,
    a_chain_rotated_by_the_previous_version_still_spends_its_quota,
);

/// A member rotates their user key with a grace period, then tries to clear
/// the old key's expiry; an admin tries to push it out ten years. Both are
/// FAILED_PRECONDITION and change nothing: the old key ends with its grace,
/// and three rounds of this leave the member one live user key.
async fn a_rotation_cannot_be_undone(b: Backend) {
    let app = spawn_app(b).await;
    let (mut live, _) = app
        .create(member("ann", user_key(ORG, "ann", &["links:read"])))
        .await;
    let mut in_grace = Vec::new();
    for _ in 0..3 {
        let (new, _) = rotated(&app, member("ann", rotate(&live.id, Some(1)))).await;
        let grace_end = app.get(ORG, &live.id).await.expire_time;
        assert!(grace_end.is_some(), "a rotation in grace sets an expiry");
        let clear_expiry = update(&live.id, &["expire_time"], UpdateKeyRequest::default());
        let refused = assert_code(
            app.admin
                .clone()
                .update_key(member("ann", clear_expiry.clone()))
                .await,
            Code::FailedPrecondition,
        );
        assert!(refused.message().contains("grace period"), "{refused:?}");
        let ten_years = UpdateKeyRequest {
            expire_time: Some(prost_types::Timestamp {
                seconds: 2_100_000_000,
                nanos: 0,
            }),
            ..clear_expiry
        };
        assert_code(
            app.admin.clone().update_key(admin(ten_years)).await,
            Code::FailedPrecondition,
        );
        assert_eq!(app.get(ORG, &live.id).await.expire_time, grace_end);
        in_grace.push(live.id.clone());
        live = new;
    }
    app.clock.advance(Duration::from_secs(2));
    let keys = app
        .admin
        .clone()
        .list_keys(member(
            "ann",
            ListKeysRequest {
                organization_id: ORG.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .keys;
    let now = keygate::clock::Clock::now(&*app.clock).0 / 1_000_000;
    let still_live: Vec<&proto::ApiKey> = keys
        .iter()
        .filter(|k| k.expire_time.as_ref().is_none_or(|t| t.seconds > now))
        .collect();
    assert_eq!(still_live.len(), 1, "{still_live:?}");
    assert_eq!(still_live[0].id, live.id);
    for id in &in_grace {
        let actions: Vec<KeyEventAction> = app
            .events(ORG, id)
            .await
            .iter()
            .map(proto::KeyEvent::action)
            .collect();
        assert!(
            !actions.contains(&KeyEventAction::Updated),
            "a refused update writes no event: {actions:?}"
        );
    }
    app.stop().await;
}

/// A→B→C, each rotated with an hour's grace: the three keys spend one rate
/// limit and one quota, whichever is presented, and the oldest answers
/// QUOTA_EXCEEDED only when the newest has nothing left either.
async fn a_rotation_chain_spends_one_set_of_limits(b: Backend) {
    let app = spawn_app(b).await;
    let (a, a_secret) = limited(&app, rate(10, HOUR), None).await;
    let (bk, b_secret) = rotated(&app, admin(rotate(&a.id, Some(HOUR)))).await;
    let (_, c_secret) = rotated(&app, admin(rotate(&bk.id, Some(HOUR)))).await;
    let passed = passes(&app, &a_secret, 4).await
        + passes(&app, &b_secret, 4).await
        + passes(&app, &c_secret, 4).await;
    assert_eq!(passed, 10, "one limit of 10 for the whole chain");
    assert_eq!(passes(&app, &a_secret, 1).await, 0);

    let (a, a_secret) = limited(&app, Vec::new(), quota(6, QuotaPeriod::Total)).await;
    let (bk, b_secret) = rotated(&app, admin(rotate(&a.id, Some(HOUR)))).await;
    let (_, c_secret) = rotated(&app, admin(rotate(&bk.id, Some(HOUR)))).await;
    assert_eq!(passes(&app, &a_secret, 2).await, 2);
    assert_eq!(passes(&app, &b_secret, 2).await, 2);
    let r = app.verify(call(&a_secret, None)).await;
    assert_eq!(r.code(), VerifyCode::Valid, "C still has credits: {r:?}");
    assert_eq!(r.quota.expect("quota").remaining, 1);
    assert_eq!(passes(&app, &c_secret, 3).await, 1, "6 in all");
    assert_eq!(
        app.verify_code(call(&a_secret, None)).await,
        VerifyCode::QuotaExceeded
    );
    app.stop().await;
}

/// A key with 5 calls a day, spent, then rotated with and without grace: the
/// replacement has nothing more to spend.
async fn a_rotation_hands_out_no_fresh_burst(b: Backend) {
    let app = spawn_app(b).await;
    for grace in [None, Some(HOUR)] {
        let (key, secret) = limited(&app, rate(5, DAY), None).await;
        assert_eq!(passes(&app, &secret, 6).await, 5);
        let (_, new_secret) = rotated(&app, admin(rotate(&key.id, grace))).await;
        let r = app.verify(call(&new_secret, None)).await;
        assert_eq!(r.code(), VerifyCode::RateLimited, "grace {grace:?}: {r:?}");
        assert_eq!(r.rate_limit.expect("rate").remaining, 0);
        // A fifth of the window later, one call has drained.
        app.clock.advance(Duration::from_secs(DAY as u64 / 5));
        assert_eq!(passes(&app, &new_secret, 2).await, 1, "grace {grace:?}");
    }
    app.stop().await;
}

/// Quota 1500: cost 1000 passes; a second cost 1000 is refused and says 500
/// remain; those 500 are spendable at once by cheaper calls.
async fn a_refused_costly_call_leaves_the_rest_spendable(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = limited(&app, Vec::new(), quota(1_500, QuotaPeriod::Total)).await;
    let remaining = |r: &proto::VerifyKeyResponse| r.quota.as_ref().expect("quota").remaining;
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, 500));
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::QuotaExceeded, 500));
    let r = app.verify(call(&secret, Some(1))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, 499));
    let r = app.verify(call(&secret, Some(0))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, 499));
    let r = app.verify(call(&secret, Some(499))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, 0));
    let r = app.verify(call(&secret, Some(0))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::QuotaExceeded, 0));
    app.stop().await;
}

/// A cost above a rate limit's whole limit can never pass: RATE_LIMITED with
/// no time to retry at (it used to say 32 400 s for 1000 against 100 an hour).
/// Likewise a cost above a daily quota's whole limit.
async fn a_call_that_can_never_fit_gets_no_retry_time(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = limited(&app, rate(100, HOUR), None).await;
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!(r.code(), VerifyCode::RateLimited);
    assert_eq!(r.retry_after, None, "{r:?}");
    let r = app.verify(call(&secret, Some(100))).await;
    assert_eq!(r.code(), VerifyCode::Valid, "the limit itself fits");
    let r = app.verify(call(&secret, Some(1))).await;
    assert_eq!(r.code(), VerifyCode::RateLimited);
    assert!(r.retry_after.is_some(), "a call that will fit says when");

    let (_, secret) = limited(&app, Vec::new(), quota(100, QuotaPeriod::Day)).await;
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!(r.code(), VerifyCode::QuotaExceeded);
    assert_eq!(r.retry_after, None, "{r:?}");
    let r = app.verify(call(&secret, Some(101))).await;
    assert_eq!(r.retry_after, None, "{r:?}");
    app.stop().await;
}

/// Quota 1500: after a call of 1000 and one of 1 the instance holds a leased
/// credit. The quota is removed, then set again: it starts from 0, and the
/// credit leased against the old one is not spent against the new one.
async fn a_new_quota_starts_with_nothing_leased_against_it(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, Vec::new(), quota(1_500, QuotaPeriod::Total)).await;
    let remaining = |r: &proto::VerifyKeyResponse| r.quota.as_ref().map(|q| q.remaining);
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!(remaining(&r), Some(500));
    let r = app.verify(call(&secret, Some(1))).await;
    assert_eq!(remaining(&r), Some(499));
    for q in [None, quota(1_500, QuotaPeriod::Total)] {
        let change = update(
            &key.id,
            &["quota"],
            UpdateKeyRequest {
                quota: q,
                ..Default::default()
            },
        );
        app.admin
            .clone()
            .update_key(admin(change))
            .await
            .expect("updated");
        assert_eq!(
            app.verify_code(call(&secret, Some(0))).await,
            VerifyCode::Valid
        );
    }
    let r = app.verify(call(&secret, Some(1_000))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, Some(500)));
    let r = app.verify(call(&secret, Some(500))).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, Some(0)));
    let r = app.verify(call(&secret, Some(1))).await;
    assert_eq!(r.code(), VerifyCode::QuotaExceeded, "1500 in all");
    app.stop().await;
}

/// A key in grace spends its chain's newest key's limits with that key's
/// current settings: changing them reaches the key in grace at once on the
/// instance that made the change (the invalidation poll is an hour away here).
async fn a_change_of_the_newest_key_reaches_its_keys_in_grace_at_once(b: Backend) {
    let app = spawn_app_with(b, &["--invalidation-interval", "1h"]).await;
    let (old, old_secret) = limited(&app, rate(10, HOUR), None).await;
    let (new, _) = rotated(&app, admin(rotate(&old.id, Some(HOUR)))).await;
    let r = app.verify(call(&old_secret, None)).await;
    assert_eq!(r.rate_limit.expect("rate").remaining, 9);
    let change = update(
        &new.id,
        &["rate_limits", "quota"],
        UpdateKeyRequest {
            rate_limits: rate(3, HOUR),
            quota: quota(1, QuotaPeriod::Total),
            ..Default::default()
        },
    );
    app.admin
        .clone()
        .update_key(admin(change))
        .await
        .expect("updated");
    let r = app.verify(call(&old_secret, None)).await;
    assert_eq!(r.code(), VerifyCode::Valid, "{r:?}");
    let rate_left = r.rate_limit.as_ref().expect("rate");
    assert_eq!((rate_left.limit, rate_left.remaining), (3, 1));
    assert_eq!(r.quota.as_ref().expect("the new quota").remaining, 0);
    assert_eq!(
        app.verify_code(call(&old_secret, None)).await,
        VerifyCode::QuotaExceeded
    );
    app.stop().await;
}

/// During an upgrade a keygate of the previous version may rotate a key: its
/// replacement is written without the chain's lineage, so the old key, in
/// grace, finds no newest key in its lineage. It spends its replacement's
/// quota then, as that version did, rather than being refused.
async fn a_chain_rotated_by_the_previous_version_still_spends_its_quota(b: Backend) {
    use keygate::{
        clock::Clock,
        domain::keys::{KeyPrefix, Secret},
        domain::limits::{Quota as StoredQuota, QuotaPeriod as StoredPeriod},
        domain::model::{KeyId, KeyRecord, Micros},
    };
    let app = spawn_app(b).await;
    let (old, old_secret) = limited(&app, Vec::new(), quota(5, QuotaPeriod::Total)).await;
    // What that version's RotateKey writes: a replacement of its own lineage,
    // and the old row naming it with an hour's grace.
    let now = app.clock.now();
    let secret = Secret::generate(&KeyPrefix::default());
    let replacement = KeyRecord {
        quota: Some(StoredQuota {
            limit: 5,
            period: StoredPeriod::Total,
        }),
        rotated_from_id: Some(KeyId::parse(&old.id).expect("id")),
        ..bot_record(ORG, "replacement", &secret, now)
    };
    app.store.create_key(&replacement).await.expect("insert");
    let mut raw = RawDb::connect(&app.db).await;
    raw.execute(&format!(
        "UPDATE api_keys SET rotated_to_id = '{}', expire_time = {} WHERE id = '{}'",
        replacement.id,
        Micros(now.0 + 3_600_000_000).0,
        old.id
    ))
    .await;
    let r = app.verify(call(&old_secret, None)).await;
    assert_eq!(r.code(), VerifyCode::Valid, "{r:?}");
    assert_eq!(
        r.quota.expect("quota").remaining,
        4,
        "the replacement's quota"
    );
    let r = app.verify(call(secret.expose(), Some(4))).await;
    assert_eq!(
        r.quota.expect("quota").remaining,
        0,
        "one quota for the two"
    );
    app.stop().await;
}

/// A burst: `tasks` concurrent callers on each client, `calls` calls each;
/// how many passed. A refusal is either limit's.
async fn burst(
    clients: &[KeyVerifyClient<Channel>],
    secret: &str,
    tasks: usize,
    calls: usize,
) -> u64 {
    hammer(
        clients,
        secret,
        tasks,
        calls,
        &[VerifyCode::RateLimited, VerifyCode::QuotaExceeded],
    )
    .await
}

/// Calls on each client in turn until every client refused in three turns in
/// a row, after leases have ended (the clock moved past them): how many passed.
/// (A refusal on one instance can give a call back that the next turn of
/// another spends, so one turn of refusals does not mean nothing is left.)
async fn drain(clients: &[KeyVerifyClient<Channel>], secret: &str) -> u64 {
    let mut passed = 0;
    let mut refused_turns = 0;
    loop {
        let mut any = false;
        for client in clients {
            let r = client.clone().verify_key(call(secret, None)).await;
            let r = r.expect("answer").into_inner();
            if r.code() == VerifyCode::Valid {
                passed += 1;
                any = true;
            }
        }
        refused_turns = if any { 0 } else { refused_turns + 1 };
        if refused_turns == 3 {
            return passed;
        }
    }
}

/// Two instances share a limit of 100 a day through a private Redis, and the
/// key has a quota of 100. 150 concurrent calls, then, once every lease has
/// ended, calls until both instances refuse: exactly 100 passed, every one of
/// 20 rounds. Calls leased and refused by the quota go back to the fleet, and
/// so do leased calls whose lease ended unspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_with_a_quota_grant_exactly_the_limit() {
    let port = free_port();
    let _redis = PrivateRedis::start_on(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let flags = ["--rate-limit-redis-url", url.as_str()];
    let a = spawn_app_with(Backend::MySql, &flags).await;
    // Created before the second instance starts, whose forged-key filter
    // then knows them all.
    let mut secrets = Vec::new();
    for _ in 0..20 {
        let (_, secret) = limited(&a, rate(100, DAY), quota(100, QuotaPeriod::Total)).await;
        secrets.push(secret);
    }
    let b = start_app_on_clock(&a.db, &flags, Arc::clone(&a.clock) as SharedClock)
        .await
        .expect("second instance");
    let clients = [
        a.verify.clone(),
        KeyVerifyClient::new(connect(b.addr()).await),
    ];
    let mut totals = Vec::new();
    for secret in &secrets {
        let in_burst = burst(&clients, secret, 15, 5).await;
        // Past every rate-limit lease (at most half a second) and every quota
        // lease's idle time (2 s); a day-long window drains no whole call.
        a.clock.advance(Duration::from_secs(3));
        let after = drain(&clients, secret).await;
        totals.push((in_burst, after));
    }
    let exact = totals.iter().filter(|(x, y)| x + y == 100).count();
    assert_eq!(exact, 20, "(in the burst, after it) per round: {totals:?}");
    b.shutdown().await.expect("stop");
    a.stop().await;
}

/// What a stopping instance leased from Redis and did not spend goes back:
/// after a burst on two instances, both stop, and a third passes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_calls_go_back_when_an_instance_stops() {
    let port = free_port();
    let _redis = PrivateRedis::start_on(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let flags = ["--rate-limit-redis-url", url.as_str()];
    let first = spawn_app_with(Backend::Sqlite, &flags).await;
    let second = start_app_on_clock(&first.db, &flags, Arc::clone(&first.clock) as SharedClock)
        .await
        .expect("second instance");
    let clients = [
        first.verify.clone(),
        KeyVerifyClient::new(connect(second.addr()).await),
    ];
    // 1000 a day leases 20 calls at a time, and 92 calls on each instance
    // are no multiple of 20: each ends the burst with calls leased.
    let (_, secret) = limited(&first, rate(1_000, DAY), None).await;
    let in_burst = burst(&clients, &secret, 4, 23).await;
    assert_eq!(in_burst, 184);
    second.shutdown().await.expect("stop");
    let db = first.stop_keep_db().await;
    let third = start_on(db, &flags).await;
    let after = drain(std::slice::from_ref(&third.verify), &secret).await;
    assert_eq!(in_burst + after, 1_000);
    third.stop().await;
}

/// Another instance that has a key in grace cached learns of a change of its
/// chain's newest key through the invalidation poll (which widens a changed key
/// to the keys in grace of its chain), within a few poll intervals, long
/// before its cache entry would expire by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_grace_see_a_change_of_their_chain_on_other_instances() {
    let a = spawn_app_with(Backend::MySql, &["--cache-ttl", "1h"]).await;
    let (old, old_secret) = limited(&a, rate(10, HOUR), None).await;
    let (new, _) = rotated(&a, admin(rotate(&old.id, Some(HOUR)))).await;
    let b = start_app_on_clock(
        &a.db,
        &["--cache-ttl", "1h"],
        Arc::clone(&a.clock) as SharedClock,
    )
    .await
    .expect("second instance");
    let on_b = KeyVerifyClient::new(connect(b.addr()).await);
    let limit_on_b = || {
        let (client, secret) = (on_b.clone(), old_secret.clone());
        async move {
            let r = client
                .clone()
                .verify_key(call(&secret, Some(0)))
                .await
                .expect("answer")
                .into_inner();
            r.rate_limit.expect("rate").limit
        }
    };
    assert_eq!(limit_on_b().await, 10, "cached on the second instance");
    let change = update(
        &new.id,
        &["rate_limits"],
        UpdateKeyRequest {
            rate_limits: rate(3, HOUR),
            ..Default::default()
        },
    );
    a.admin
        .clone()
        .update_key(admin(change))
        .await
        .expect("updated");
    eventually(
        Duration::from_secs(10),
        "the new limit on the second instance",
        || async { limit_on_b().await == 3 },
    )
    .await;
    b.shutdown().await.expect("stop");
    a.stop().await;
}

/// A rotation copies the old key's quota use to its replacement, and must copy
/// the last committed one: here a quota take holds the old row (uncommitted)
/// when the rotation starts, so the rotation's snapshot predates it; the
/// rotation waits for the row, the take commits, and the replacement must
/// inherit those credits. (A plain read under MySQL's REPEATABLE READ would
/// see the snapshot, and the 3 credits would be granted a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_inherits_a_quota_take_it_waited_for() {
    use sqlx::{Connection, MySqlConnection};
    let app = spawn_app_with(Backend::MySql, &["--database-timeout", "30s"]).await;
    let (old, _) = limited(&app, Vec::new(), quota(10, QuotaPeriod::Total)).await;
    let mut taker = MySqlConnection::connect(&app.db.url)
        .await
        .expect("connect");
    let mut take = taker.begin().await.expect("begin");
    sqlx::query("UPDATE api_keys SET quota_used = quota_used + 3 WHERE id = ?")
        .bind(&old.id)
        .execute(&mut *take)
        .await
        .expect("take");
    let admin_client = app.admin.clone();
    let old_id = old.id.clone();
    let rotation = tokio::spawn(async move {
        admin_client
            .clone()
            .rotate_key(admin(rotate(&old_id, Some(HOUR))))
            .await
            .map(|r| r.into_inner().key.expect("new key"))
    });
    let watcher = sqlx::MySqlPool::connect(&app.db.url)
        .await
        .expect("connect");
    eventually(
        Duration::from_secs(10),
        "the rotation waits for the row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                // The rotation's statement on the old row, blocked by the take:
                // its locking read, or (were it a plain read) its retiring UPDATE.
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE db = DATABASE() AND command <> 'Sleep' \
                 AND (info LIKE '%api_keys WHERE organization_id = ? AND id = ? FOR UPDATE' \
                   OR info LIKE 'UPDATE api_keys SET rotated_to_id%')",
            )
            .fetch_one(&watcher)
            .await
            .expect("innodb_trx");
            waiting > 0
        },
    )
    .await;
    take.commit().await.expect("commit");
    let new = rotation.await.expect("task").expect("rotated");
    assert_eq!(
        new.quota_usage.expect("usage").used,
        3,
        "the replacement inherits the take it waited for"
    );
    app.stop().await;
}
