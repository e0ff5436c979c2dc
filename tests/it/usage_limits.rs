//! Rate limits and quotas in VerifyKey, on both stores: the rules
//! at create and update, the check order, what a refused call consumes
//! (nothing), `cost`, limits changed while in use, quotas across restarts,
//! periods and instances, and rate limits shared through a real Redis.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use keygate::{
    clock::Clock,
    domain::model::{KeyId, Micros},
    proto::{
        self, ListKeysRequest, Quota, QuotaPeriod, RateLimit, UpdateKeyRequest, VerifyCode,
        VerifyKeyRequest, key_verify_client::KeyVerifyClient,
    },
};
use prost_types::FieldMask;
use tokio::task::JoinSet;

use crate::{metrics::scrape, store_tests, support::*};

const ORG: &str = "limits";
const DAY: i64 = 86_400;

fn window(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

fn rate(name: &str, limit: u64, seconds: i64) -> RateLimit {
    RateLimit {
        name: name.into(),
        limit,
        window: window(seconds, 0),
    }
}

fn quota(limit: u64, period: QuotaPeriod) -> Option<Quota> {
    Some(Quota {
        limit,
        period: period.into(),
    })
}

/// A bot key of [`ORG`] with scope `links:read` and the given limits.
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

fn call(secret: &str, cost: Option<u32>) -> VerifyKeyRequest {
    VerifyKeyRequest {
        cost,
        ..verify_req(secret, &["links:read"])
    }
}

/// The codes of `n` calls made one after another.
async fn codes(app: &TestApp, secret: &str, n: usize) -> Vec<VerifyCode> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(app.verify_code(call(secret, None)).await);
    }
    out
}

fn count(codes: &[VerifyCode], code: VerifyCode) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

fn update(id: &str, paths: &[&str]) -> UpdateKeyRequest {
    UpdateKeyRequest {
        organization_id: ORG.into(),
        id: id.into(),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ..Default::default()
    }
}

fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos / 1_000)
}

fn duration_micros(d: &prost_types::Duration) -> i64 {
    d.seconds * 1_000_000 + i64::from(d.nanos / 1_000)
}

/// `tasks` concurrent callers on each client, `calls` calls each with `secret`;
/// every answer must be VALID or one of `refused`. Returns how many were VALID.
pub(crate) async fn hammer(
    clients: &[KeyVerifyClient<tonic::transport::Channel>],
    secret: &str,
    tasks: usize,
    calls: usize,
    refused: &[VerifyCode],
) -> u64 {
    let valid = Arc::new(AtomicU64::new(0));
    let refused: Arc<[VerifyCode]> = refused.into();
    let mut set = JoinSet::new();
    for client in clients {
        for _ in 0..tasks {
            let (client, secret, valid) = (client.clone(), secret.to_owned(), Arc::clone(&valid));
            let refused = Arc::clone(&refused);
            set.spawn(async move {
                for _ in 0..calls {
                    let r = client.clone().verify_key(call(&secret, None)).await;
                    match r.expect("answer").into_inner().code() {
                        VerifyCode::Valid => {
                            valid.fetch_add(1, Ordering::Relaxed);
                        }
                        code if refused.contains(&code) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.expect("caller");
    }
    valid.load(Ordering::Relaxed)
}

async fn keys_of(app: &TestApp) -> Vec<proto::ApiKey> {
    app.admin
        .clone()
        .list_keys(admin(ListKeysRequest {
            organization_id: ORG.into(),
            include_revoked: true,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .keys
}

store_tests!(
    every_limit_rule_is_checked_naming_the_field_and_bad_input_changes_nothing,
    a_burst_of_12_against_a_limit_of_5_passes_5_then_a_full_burst_after_the_window,
    a_refused_call_consumes_nothing,
    cost_weighs_a_call_and_zero_only_asks,
    changed_limits_apply_at_once,
    a_quota_survives_a_restart_and_shows_its_use,
    a_daily_quota_resets_at_utc_midnight,
    unspent_credits_go_back_when_an_instance_idles,
);

async fn every_limit_rule_is_checked_naming_the_field_and_bad_input_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let nine: Vec<RateLimit> = (0..9).map(|i| rate(&format!("l{i}"), 1, 1)).collect();
    let cases: Vec<(Vec<RateLimit>, Option<Quota>, &str)> = vec![
        (nine, None, "rate_limits"),
        (vec![rate("Per_Second", 1, 1)], None, "rate_limits[0].name"),
        (vec![rate("", 1, 1)], None, "rate_limits[0].name"),
        (
            vec![rate("a", 1, 1), rate("a", 2, 2)],
            None,
            "rate_limits[1].name",
        ),
        (vec![rate("a", 0, 1)], None, "rate_limits[0].limit"),
        (vec![rate("a", 1, 0)], None, "rate_limits[0].window"),
        (
            vec![rate("a", 1, 30 * DAY + 1)],
            None,
            "rate_limits[0].window",
        ),
        (
            vec![RateLimit {
                name: "a".into(),
                limit: 1,
                window: window(0, 999_000_000),
            }],
            None,
            "rate_limits[0].window",
        ),
        (
            vec![RateLimit {
                name: "a".into(),
                limit: 1,
                window: window(1, 500),
            }],
            None,
            "rate_limits[0].window",
        ),
        (
            vec![RateLimit {
                name: "a".into(),
                limit: 1,
                window: None,
            }],
            None,
            "rate_limits[0].window",
        ),
        (vec![rate("a", 1, -5)], None, "rate_limits[0].window"),
        (vec![], quota(0, QuotaPeriod::Day), "quota.limit"),
        (vec![], quota(5, QuotaPeriod::Unspecified), "quota.period"),
        (
            vec![],
            Some(Quota {
                limit: 5,
                period: 9,
            }),
            "quota.period",
        ),
    ];
    for (rates, q, field) in &cases {
        let mut req = bot_key(ORG, "bad", &["links:read"]);
        req.rate_limits = rates.clone();
        req.quota = *q;
        assert_bad_field(app.admin.clone().create_key(admin(req)).await, field);
    }
    assert!(
        keys_of(&app).await.is_empty(),
        "a refused create stores nothing"
    );

    // Bounds are inclusive: 1 s, 30 days, 8 limits.
    let eight: Vec<RateLimit> = (0..8).map(|i| rate(&format!("l{i}"), 1, 1)).collect();
    let (key, _) = limited(&app, eight, quota(1, QuotaPeriod::Total)).await;
    let (long, _) = limited(&app, vec![rate("monthly", 5, 30 * DAY)], None).await;
    assert_eq!(long.rate_limits[0].window, window(30 * DAY, 0));
    for (rates, q, field) in cases {
        let mut req = update(&key.id, &["rate_limits", "quota"]);
        req.rate_limits = rates;
        req.quota = q;
        assert_bad_field(app.admin.clone().update_key(admin(req)).await, field);
    }
    assert_eq!(
        app.get(ORG, &key.id).await,
        key,
        "a refused update changes nothing"
    );
}

async fn a_burst_of_12_against_a_limit_of_5_passes_5_then_a_full_burst_after_the_window(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, vec![rate("per_minute", 5, 60)], None).await;
    assert_eq!(key.rate_limits, vec![rate("per_minute", 5, 60)]);
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(app.verify(call(&secret, None)).await);
    }
    let got: Vec<VerifyCode> = answers.iter().map(|r| r.code()).collect();
    assert_eq!(&got[..5], [VerifyCode::Valid; 5]);
    assert_eq!(&got[5..], [VerifyCode::RateLimited; 7]);
    let remaining: Vec<u64> = answers
        .iter()
        .map(|r| r.rate_limit.as_ref().expect("status").remaining)
        .collect();
    assert_eq!(remaining, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let refused = &answers[5];
    assert!(!refused.valid);
    assert!(refused.key.is_some(), "the key is found, so it is shown");
    let status = refused.rate_limit.as_ref().expect("the exceeded limit");
    assert_eq!((status.name.as_str(), status.limit), ("per_minute", 5));
    // One call drains every 12 s: that is when the next one fits.
    let retry = duration_micros(refused.retry_after.as_ref().expect("retry_after"));
    assert!((1_000_000..=12_000_000).contains(&retry), "{retry}");
    assert!(refused.quota.is_none(), "the key has no quota");
    assert!(
        answers[0].retry_after.is_none(),
        "only refusals say when to retry"
    );

    app.clock.advance(Duration::from_secs(60));
    let again = codes(&app, &secret, 12).await;
    assert_eq!(count(&again, VerifyCode::Valid), 5, "{again:?}");
    assert_eq!(count(&again, VerifyCode::RateLimited), 7);
    app.stop().await;
}

async fn a_refused_call_consumes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(
        &app,
        vec![rate("burst", 3, 60)],
        quota(4, QuotaPeriod::Total),
    )
    .await;
    // Refused by an earlier check: no limit is reached, nothing is consumed.
    for _ in 0..4 {
        let r = app.verify(verify_req(&secret, &["stats:read"])).await;
        assert_eq!(r.code(), VerifyCode::InsufficientScope);
        assert!(r.rate_limit.is_none() && r.quota.is_none(), "{r:?}");
    }
    // Rate-limited calls take no quota: 3 pass, 2 are refused, 1 credit is left.
    let first = codes(&app, &secret, 5).await;
    assert_eq!(&first[..3], [VerifyCode::Valid; 3]);
    assert_eq!(&first[3..], [VerifyCode::RateLimited; 2]);

    app.clock.advance(Duration::from_secs(60));
    let second = codes(&app, &secret, 5).await;
    assert_eq!(second[0], VerifyCode::Valid, "the last credit");
    assert_eq!(&second[1..], [VerifyCode::QuotaExceeded; 4]);

    // Calls the quota refused took nothing from the rate limit: with credits
    // again, 2 of its 3 calls in this window are left.
    let mut more = update(&key.id, &["quota"]);
    more.quota = quota(100, QuotaPeriod::Total);
    app.admin
        .clone()
        .update_key(admin(more))
        .await
        .expect("update");
    let third = codes(&app, &secret, 3).await;
    assert_eq!(
        third,
        [
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::RateLimited
        ]
    );
    let shown = app.get(ORG, &key.id).await;
    assert!(
        shown.quota_usage.expect("usage").used >= 6,
        "6 credits spent (more may be leased)"
    );
    let db = app.stop_keep_db().await;
    // Stopped, the instance gave back what it leased: exactly the spent credits.
    let app = start_on(db, &[]).await;
    let shown = app.get(ORG, &key.id).await;
    assert_eq!(shown.quota_usage.expect("usage").used, 6);
    assert_eq!(
        shown.request_count, 17,
        "every call that found the key counts"
    );
    app.stop().await;
}

async fn cost_weighs_a_call_and_zero_only_asks(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = limited(
        &app,
        vec![rate("per_minute", 10, 60)],
        quota(20, QuotaPeriod::Total),
    )
    .await;
    let ask = |cost: Option<u32>| app.verify(call(&secret, cost));
    let remaining = |r: &proto::VerifyKeyResponse| {
        (
            r.rate_limit.as_ref().expect("rate").remaining,
            r.quota.as_ref().expect("quota").remaining,
        )
    };
    let r = ask(Some(0)).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, (10, 20)));
    let r = ask(Some(4)).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, (6, 16)));
    let r = ask(Some(7)).await;
    assert_eq!(r.code(), VerifyCode::RateLimited, "7 > 6 left");
    let r = ask(Some(6)).await;
    assert_eq!((r.code(), remaining(&r)), (VerifyCode::Valid, (0, 10)));
    let r = ask(Some(0)).await;
    assert_eq!(
        r.code(),
        VerifyCode::RateLimited,
        "cost 0: would one call pass?"
    );
    app.clock.advance(Duration::from_secs(60));
    let r = ask(Some(1000)).await;
    assert_eq!(
        r.code(),
        VerifyCode::RateLimited,
        "more than the limit never fits"
    );
    assert!(r.retry_after.is_none(), "so it has no time to retry at");
    let r = ask(Some(10)).await;
    assert_eq!(r.code(), VerifyCode::Valid);
    app.clock.advance(Duration::from_secs(60));
    let r = ask(Some(1)).await;
    // The quota refused the call, so it took nothing from the rate limit
    // either: all 10 calls are still there.
    assert_eq!(
        (r.code(), remaining(&r)),
        (VerifyCode::QuotaExceeded, (10, 0))
    );
    assert!(r.retry_after.is_none(), "a total quota never resets");
    assert!(r.quota.as_ref().expect("quota").reset_time.is_none());

    let status = assert_code(
        app.verify
            .clone()
            .verify_key(call(&secret, Some(1001)))
            .await,
        tonic::Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["cost"]);
    app.stop().await;
}

async fn changed_limits_apply_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, vec![rate("per_minute", 10, 60)], None).await;
    assert_eq!(count(&codes(&app, &secret, 5).await, VerifyCode::Valid), 5);

    let mut lower = update(&key.id, &["rate_limits"]);
    lower.rate_limits = vec![rate("per_minute", 4, 60)];
    let updated = app
        .admin
        .clone()
        .update_key(admin(lower))
        .await
        .expect("update");
    assert_eq!(
        updated.into_inner().key.expect("key").rate_limits[0].limit,
        4
    );
    assert_eq!(
        app.verify_code(call(&secret, None)).await,
        VerifyCode::RateLimited,
        "5 made, 4 allowed: refused at once"
    );
    let mut higher = update(&key.id, &["rate_limits"]);
    higher.rate_limits = vec![rate("per_minute", 8, 60)];
    app.admin
        .clone()
        .update_key(admin(higher))
        .await
        .expect("update");
    let after = codes(&app, &secret, 5).await;
    assert_eq!(
        count(&after, VerifyCode::Valid),
        3,
        "8 allowed, 5 made: {after:?}"
    );

    // An update of another field keeps the count; removing the limits ends it.
    let mut rename = update(&key.id, &["name"]);
    rename.name = "renamed".into();
    app.admin
        .clone()
        .update_key(admin(rename))
        .await
        .expect("update");
    assert_eq!(
        app.verify_code(call(&secret, None)).await,
        VerifyCode::RateLimited
    );
    let none = update(&key.id, &["rate_limits"]);
    app.admin
        .clone()
        .update_key(admin(none))
        .await
        .expect("update");
    let r = app.verify(call(&secret, None)).await;
    assert_eq!(r.code(), VerifyCode::Valid);
    assert!(r.rate_limit.is_none());
    assert!(app.get(ORG, &key.id).await.rate_limits.is_empty());

    // A quota added by UpdateKey applies at once too.
    let mut add = update(&key.id, &["quota"]);
    add.quota = quota(1, QuotaPeriod::Month);
    app.admin
        .clone()
        .update_key(admin(add))
        .await
        .expect("update");
    assert_eq!(
        codes(&app, &secret, 2).await,
        [VerifyCode::Valid, VerifyCode::QuotaExceeded]
    );
    app.stop().await;
}

async fn a_quota_survives_a_restart_and_shows_its_use(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, vec![], quota(5, QuotaPeriod::Total)).await;
    let usage = key.quota_usage.expect("a quota shows its usage");
    assert_eq!((usage.used, usage.reset_time), (0, None));
    assert_eq!(count(&codes(&app, &secret, 3).await, VerifyCode::Valid), 3);
    let db = app.stop_keep_db().await;

    let app = start_on(db, &[]).await;
    assert_eq!(
        app.get(ORG, &key.id).await.quota_usage.expect("usage").used,
        3
    );
    let after = codes(&app, &secret, 4).await;
    assert_eq!(
        after,
        [
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::QuotaExceeded,
            VerifyCode::QuotaExceeded
        ]
    );
    let listed = keys_of(&app).await;
    assert_eq!(listed[0].quota_usage.expect("usage").used, 5);
    assert_eq!(listed[0].quota, quota(5, QuotaPeriod::Total));
    app.stop().await;
}

async fn a_daily_quota_resets_at_utc_midnight(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, vec![], quota(2, QuotaPeriod::Day)).await;
    let reset = micros(
        key.quota_usage
            .expect("usage")
            .reset_time
            .as_ref()
            .expect("reset"),
    );
    assert_eq!(reset % (DAY * 1_000_000), 0, "midnight UTC");
    assert!(reset > Micros::now().0 && reset <= Micros::now().0 + DAY * 1_000_000);

    let got = codes(&app, &secret, 3).await;
    assert_eq!(&got[..2], [VerifyCode::Valid; 2]);
    let refused = app.verify(call(&secret, None)).await;
    assert_eq!(refused.code(), VerifyCode::QuotaExceeded);
    let status = refused.quota.as_ref().expect("quota");
    assert_eq!((status.limit, status.remaining), (2, 0));
    assert_eq!(micros(status.reset_time.as_ref().expect("reset")), reset);
    let retry = duration_micros(refused.retry_after.as_ref().expect("retry_after"));
    let now = app.clock.now().0;
    assert!(
        (retry - (reset - now)).abs() < 5_000_000,
        "until midnight: {retry}"
    );

    // One second past midnight: a new day, two new credits.
    let past = u64::try_from(reset - now).expect("future") + 1_000_000;
    app.clock.advance(Duration::from_micros(past));
    let next = codes(&app, &secret, 3).await;
    assert_eq!(
        next,
        [
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::QuotaExceeded
        ]
    );
    let usage = app.get(ORG, &key.id).await.quota_usage.expect("usage");
    assert!(usage.used >= 2);
    assert_eq!(
        micros(usage.reset_time.as_ref().expect("reset")),
        reset + DAY * 1_000_000
    );
    app.stop().await;
}

async fn unspent_credits_go_back_when_an_instance_idles(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = limited(&app, vec![], quota(1_000, QuotaPeriod::Total)).await;
    // Back-to-back calls make the lease grow, so credits are taken in advance.
    let mut set = JoinSet::new();
    for _ in 0..4 {
        let (client, secret) = (app.verify.clone(), secret.clone());
        set.spawn(async move {
            for _ in 0..25 {
                let r = client.clone().verify_key(call(&secret, None)).await;
                assert_eq!(r.expect("answer").into_inner().code(), VerifyCode::Valid);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("caller");
    }
    let id = KeyId::parse(&key.id).expect("id");
    let org = keygate::domain::model::OrganizationId::parse(ORG).expect("org");
    let used = || async {
        app.store
            .get_key(&org, &id)
            .await
            .expect("read")
            .expect("key")
            .quota_used
    };
    assert!(used().await > 100, "credits were leased ahead of use");
    app.clock.advance(Duration::from_secs(3));
    eventually(
        Duration::from_secs(10),
        "unspent credits given back",
        || async { used().await == 100 },
    )
    .await;
    app.stop().await;
}

/// Two instances on one MariaDB database hammer a quota of 60 at once: exactly
/// 60 calls pass in all, whatever each instance's cache or lease holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hammering_a_quota_of_60_pass_exactly_60() {
    let a = spawn_app(Backend::MySql).await;
    let (_, secret) = limited(&a, vec![], quota(60, QuotaPeriod::Total)).await;
    let b = start_app(&a.db, &[]).await.expect("second instance");
    let clients = [
        a.verify.clone(),
        KeyVerifyClient::new(connect(b.addr()).await),
    ];
    let valid = hammer(&clients, &secret, 8, 20, &[VerifyCode::QuotaExceeded]).await;
    assert_eq!(valid, 60);
    b.shutdown().await.expect("stop b");
    a.stop().await;
}

/// A SIGKILLed instance never over-grants: the credits it had leased are lost
/// for the period (at most its open leases), never handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instance_holding_a_lease_never_over_grants() {
    const LIMIT: u64 = 400;
    let db = TestDb::create(Backend::MySql).await;
    let first = spawn_process_on(&db, &[]);
    let admin_client = proto::key_admin_client::KeyAdminClient::new(connect(first.addr).await);
    let mut req = bot_key(ORG, "crash", &["links:read"]);
    req.quota = quota(LIMIT, QuotaPeriod::Total);
    let created = admin_client
        .clone()
        .create_key(admin(req))
        .await
        .expect("create")
        .into_inner();
    let (id, secret) = (created.key.expect("key").id, created.secret);

    let first_client = [KeyVerifyClient::new(connect(first.addr).await)];
    let before = hammer(&first_client, &secret, 8, 15, &[VerifyCode::QuotaExceeded]).await;
    assert_eq!(before, 120, "under the quota every call passes");
    let store = keygate::store::Store::connect(&db.url, &Default::default())
        .await
        .expect("store");
    let org = keygate::domain::model::OrganizationId::parse(ORG).expect("org");
    let key_id = KeyId::parse(&id).expect("id");
    let taken = store
        .get_key(&org, &key_id)
        .await
        .expect("read")
        .expect("key")
        .quota_used;
    assert!(taken > before, "the instance holds leased credits: {taken}");
    drop(first); // SIGKILL: no shutdown, the lease is never given back.

    let second = spawn_process_on(&db, &[]);
    let second_client = [KeyVerifyClient::new(connect(second.addr).await)];
    let after = hammer(&second_client, &secret, 8, 60, &[VerifyCode::QuotaExceeded]).await;
    let lost = taken - before;
    assert_eq!(before + after, LIMIT - lost, "never more than the limit");
    assert!(lost <= LIMIT / 20, "at most one open lease lost: {lost}");
    drop(second);
    store.close().await;
    db.drop_db().await;
}

/// Burst of `per_instance` calls on each of `instances` keygates (sharing one
/// Redis when `redis`) against a limit of `limit` per 30 days, so that nothing
/// drains during the burst however slow the machine; returns how many passed.
async fn burst(instances: usize, limit: u64, per_instance: usize, redis: bool) -> u64 {
    let flags: &[&str] = if redis {
        &["--rate-limit-redis-url", REDIS]
    } else {
        &[]
    };
    let a = spawn_app_with(Backend::MySql, flags).await;
    let (_, secret) = limited(&a, vec![rate("per_30_days", limit, 30 * DAY)], None).await;
    let mut apps = Vec::new();
    let mut clients = vec![a.verify.clone()];
    for _ in 1..instances {
        let app = start_app(&a.db, flags).await.expect("instance");
        clients.push(KeyVerifyClient::new(connect(app.addr()).await));
        apps.push(app);
    }
    let valid = hammer(
        &clients,
        &secret,
        4,
        per_instance / 4,
        &[VerifyCode::RateLimited],
    )
    .await;
    for app in apps {
        app.shutdown().await.expect("stop");
    }
    a.stop().await;
    valid
}

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Without Redis each instance counts alone: N instances pass N × limit. With
/// it the fleet stays within limit × 1.1 (leases charge Redis before a call is
/// spent, so it stays at the limit; what a burst leaves leased and unspent at
/// its end goes back afterwards, see `lifecycle`, so it is not counted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_stay_within_a_tenth_over_the_limit() {
    for (instances, limit) in [(2, 200_u64), (4, 200), (2, 1_000), (4, 1_000)] {
        let per_instance = usize::try_from(limit).expect("small") * 4 / instances;
        let calls = per_instance * instances;
        let alone = burst(instances, limit, per_instance, false).await;
        let shared = burst(instances, limit, per_instance, true).await;
        eprintln!(
            "{instances} instances, limit {limit}, {calls} calls: {alone} passed counting alone, {shared} sharing Redis"
        );
        assert_eq!(
            alone,
            limit * instances as u64,
            "each instance counts alone"
        );
        assert!(shared * 10 <= limit * 11, "{shared} > 1.1 x {limit}");
        // Calls still leased when the burst ends have not passed yet; on a
        // loaded machine more of them are. Never over the limit.
        assert!(shared * 10 >= limit * 8, "{shared} is far under {limit}");
    }
}

/// A private Redis on a free port, stopped on drop.
pub(crate) struct PrivateRedis {
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub(crate) fn start_on(port: u16) -> Self {
        Self::launch(port, &["--port", &port.to_string(), "--bind", "127.0.0.1"])
    }

    /// A Redis that speaks only TLS on `port`, with `cert` and `key` (PEM
    /// files) and no client certificates asked for.
    pub(crate) fn start_tls_on(port: u16, cert: &str, key: &str, ca: &str) -> Self {
        Self::launch(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    /// `redis-server` with `args`, keeping nothing on disk; returns once `port`
    /// accepts connections.
    fn launch(port: u16, args: &[&str]) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Redis goes away: the instance counts alone (exactly `limit` of a burst still
/// pass on one instance), says so in a metric and a log line, and shares again
/// by itself once Redis is back. In a child process, whose metrics are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_an_instance_counts_alone_and_recovers_by_itself() {
    let port = free_port();
    let mut redis = PrivateRedis::start_on(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let db = TestDb::create(Backend::Sqlite).await;
    let mut served = spawn_process_on(&db, &["--rate-limit-redis-url", &url]);
    let admin_client = proto::key_admin_client::KeyAdminClient::new(connect(served.addr).await);
    let mut req = bot_key(ORG, "redis", &["links:read"]);
    req.rate_limits = vec![rate("per_minute", 5, 60)];
    let created = admin_client
        .clone()
        .create_key(admin(req))
        .await
        .expect("create")
        .into_inner();
    let secret = created.secret;
    // A key far from its limit, to see Redis answer again without consuming.
    let mut req = bot_key(ORG, "redis-probe", &["links:read"]);
    req.rate_limits = vec![rate("per_minute", 1_000, 60)];
    let probe = admin_client
        .clone()
        .create_key(admin(req))
        .await
        .expect("create")
        .into_inner()
        .secret;
    let client = KeyVerifyClient::new(connect(served.addr).await);
    let code_of = |secret: &str, cost| {
        let (client, secret) = (client.clone(), secret.to_owned());
        async move {
            client
                .clone()
                .verify_key(call(&secret, cost))
                .await
                .expect("answer")
                .into_inner()
                .code()
        }
    };
    let code = |cost| code_of(&secret, cost);
    let up = || async move {
        scrape(served.metrics_addr)
            .await
            .1
            .get("keygate_rate_limit_redis_up")
            .copied()
    };
    assert_eq!(code(None).await, VerifyCode::Valid);
    assert_eq!(up().await, Some(1.0));

    redis.stop();
    let mut alone = Vec::new();
    for _ in 0..8 {
        alone.push(code(None).await);
    }
    assert_eq!(count(&alone, VerifyCode::Valid), 4, "5 in all: {alone:?}");
    assert_eq!(up().await, Some(0.0));
    served.process.wait_for("the Redis-down log line", |l| {
        l.contains("Redis does not answer").then_some(())
    });

    let _redis = PrivateRedis::start_on(port);
    eventually(Duration::from_secs(15), "shared again", || async {
        // Cost 0 asks without consuming, and goes to Redis when it can.
        assert_eq!(code_of(&probe, Some(0)).await, VerifyCode::Valid);
        up().await == Some(1.0)
    })
    .await;
    served.process.wait_for("the recovery log line", |l| {
        l.contains("Redis answers again").then_some(())
    });
    drop(served);
    db.drop_db().await;
}
