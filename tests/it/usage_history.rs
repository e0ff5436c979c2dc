//! KeyAdmin.GetKeyUsage on both stores: outcomes counted per code,
//! hours and days that agree with each other and with `request_count`, a bucket
//! boundary crossed on an injected clock, two instances adding up, counts that
//! survive a restart, retention pruning, and the rules of the request.

use std::time::Duration;

use keygate::{
    clock::Clock,
    domain::model::{KeyId, Micros},
    proto::{self, GetKeyUsageRequest, UsageGranularity, VerifyCode},
    store::UsageDelta,
};
use tonic::Code;

use crate::{store_tests, support::*};

const ORG: &str = "history";
const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
/// Flush often, so tests wait milliseconds for counts to reach the store.
const FLAGS: &[&str] = &["--usage-flush-interval", "20ms"];

fn ts(m: i64) -> Option<prost_types::Timestamp> {
    Some(Micros(m).to_timestamp())
}

fn request(id: &str, from: i64, to: i64, g: UsageGranularity) -> GetKeyUsageRequest {
    GetKeyUsageRequest {
        organization_id: ORG.into(),
        id: id.into(),
        start_time: ts(from),
        end_time: ts(to),
        granularity: g.into(),
    }
}

/// `(bucket start, total, [(code, count)])` of every bucket.
async fn usage(app: &TestApp, req: GetKeyUsageRequest) -> Vec<(i64, u64, Vec<(i32, u64)>)> {
    app.admin
        .clone()
        .get_key_usage(admin(req))
        .await
        .expect("usage")
        .into_inner()
        .buckets
        .into_iter()
        .map(|b| {
            let start = b.start_time.expect("start");
            (
                start.seconds * 1_000_000,
                b.total,
                b.outcomes.iter().map(|o| (o.code, o.count)).collect(),
            )
        })
        .collect()
}

/// Moves the test clock to `at` (it only moves forward).
fn move_clock_to(app: &TestApp, at: i64) {
    let now = app.clock.now().0;
    assert!(at >= now, "the clock only moves forward");
    app.clock.advance(Duration::from_micros(
        u64::try_from(at - now).expect("forward"),
    ));
}

async fn flushed(app: &TestApp, id: &str, count: u64) {
    eventually(Duration::from_secs(10), "usage flushed", || async {
        app.get(ORG, id).await.request_count == count
    })
    .await;
}

store_tests!(
    outcomes_are_counted_per_code_and_hours_agree_with_days_and_request_count,
    calls_land_in_the_hour_the_clock_says,
    counts_survive_a_restart,
    old_history_is_pruned_and_the_rest_kept,
    bad_ranges_and_other_callers_keys_are_refused,
);

async fn outcomes_are_counted_per_code_and_hours_agree_with_days_and_request_count(b: Backend) {
    let app = spawn_app_with(b, FLAGS).await;
    // Half past the next hour, tomorrow at 10:30 UTC: every call in one hour and day.
    let day = (app.clock.now().0.div_euclid(DAY) + 1) * DAY;
    move_clock_to(&app, day + 10 * HOUR + 30 * 60_000_000);
    let mut req = bot_key(ORG, "k", &["links:read"]);
    req.allowed_hostnames = vec!["app.example.com".into()];
    let (key, secret) = app.create(admin(req)).await;
    let call = |scope: &str, origin: &str| {
        let mut r = verify_req(&secret, &[scope]);
        r.origin = origin.into();
        r
    };
    for _ in 0..3 {
        assert_eq!(
            app.verify_code(call("links:read", "https://app.example.com"))
                .await,
            VerifyCode::Valid
        );
    }
    for _ in 0..2 {
        assert_eq!(
            app.verify_code(call("stats:read", "")).await,
            VerifyCode::InsufficientScope
        );
    }
    assert_eq!(
        app.verify_code(call("links:read", "https://evil.example"))
            .await,
        VerifyCode::HostnameBlocked
    );
    app.revoke(ORG, &key.id).await;
    for _ in 0..2 {
        assert_eq!(
            app.verify_code(call("links:read", "")).await,
            VerifyCode::Revoked
        );
    }
    flushed(&app, &key.id, 8).await;

    let want = vec![(1, 3), (5, 2), (8, 1), (9, 2)];
    let hours = usage(
        &app,
        request(&key.id, day, day + DAY, UsageGranularity::Hour),
    )
    .await;
    assert_eq!(hours, [(day + 10 * HOUR, 8, want.clone())]);
    let days = usage(
        &app,
        request(&key.id, day - DAY, day + DAY, UsageGranularity::Day),
    )
    .await;
    assert_eq!(days, [(day, 8, want)]);
    assert_eq!(app.get(ORG, &key.id).await.request_count, 8);
    // A range that starts inside the hour still shows it; one after it, nothing.
    let inside = day + 10 * HOUR + 59 * 60_000_000;
    assert_eq!(
        usage(
            &app,
            request(&key.id, inside, inside + HOUR, UsageGranularity::Hour)
        )
        .await
        .len(),
        1
    );
    assert!(
        usage(
            &app,
            request(&key.id, day + 11 * HOUR, day + DAY, UsageGranularity::Hour)
        )
        .await
        .is_empty()
    );
    app.stop().await;
}

async fn calls_land_in_the_hour_the_clock_says(b: Backend) {
    let app = spawn_app_with(b, FLAGS).await;
    let day = (app.clock.now().0.div_euclid(DAY) + 1) * DAY;
    let (key, secret) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    // Two calls in the last second of 10:00–11:00, three after 11:00.
    move_clock_to(&app, day + 11 * HOUR - 500_000);
    for _ in 0..2 {
        app.verify_code(verify_req(&secret, &[])).await;
    }
    move_clock_to(&app, day + 11 * HOUR + 500_000);
    for _ in 0..3 {
        app.verify_code(verify_req(&secret, &[])).await;
    }
    flushed(&app, &key.id, 5).await;
    let hours = usage(
        &app,
        request(&key.id, day, day + DAY, UsageGranularity::Hour),
    )
    .await;
    assert_eq!(
        hours,
        [
            (day + 10 * HOUR, 2, vec![(1, 2)]),
            (day + 11 * HOUR, 3, vec![(1, 3)])
        ]
    );
    let days = usage(
        &app,
        request(&key.id, day, day + DAY, UsageGranularity::Day),
    )
    .await;
    assert_eq!(days, [(day, 5, vec![(1, 5)])]);
    app.stop().await;
}

async fn counts_survive_a_restart(b: Backend) {
    let app = spawn_app(b).await;
    let (key, secret) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    for _ in 0..4 {
        app.verify_code(verify_req(&secret, &[])).await;
    }
    let now = app.clock.now().0;
    // SIGTERM-style shutdown flushes what is counted.
    let db = app.stop_keep_db().await;
    let app = start_on(db, &[]).await;
    let days = usage(
        &app,
        request(&key.id, now - DAY, now + DAY, UsageGranularity::Day),
    )
    .await;
    assert_eq!(days.iter().map(|d| d.1).sum::<u64>(), 4);
    app.stop().await;
}

async fn old_history_is_pruned_and_the_rest_kept(b: Backend) {
    let app = spawn_app_with(b, &["--usage-history-prune-interval", "50ms"]).await;
    let (key, _) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    let id = KeyId::parse(&key.id).expect("id");
    let now = app.clock.now().0.div_euclid(HOUR) * HOUR;
    let at = |days_ago: i64| Micros(now - days_ago * DAY);
    app.store
        .add_usage(&[UsageDelta {
            key_id: id.clone(),
            count: 4,
            last_used: Micros(now),
            history: vec![
                (at(401), 1, 1),
                (at(40), 1, 1),
                (at(30), 1, 1),
                (at(0), 1, 1),
            ],
        }])
        .await
        .expect("history written");
    let starts = |daily: bool| {
        let (store, id) = (app.store.clone(), id.clone());
        async move {
            store
                .usage_history(&id, daily, Micros(now - 500 * DAY), Micros(now + DAY))
                .await
                .expect("read")
                .into_iter()
                .map(|(start, _, _)| start.0)
                .collect::<Vec<_>>()
        }
    };
    let day_of = |m: Micros| m.0.div_euclid(DAY) * DAY;
    // Hourly rows are kept 35 days (the default), daily ones 400 days.
    eventually(Duration::from_secs(10), "old history pruned", || async {
        starts(false).await == [at(30).0, at(0).0]
            && starts(true).await == [day_of(at(40)), day_of(at(30)), day_of(at(0))]
    })
    .await;
    app.stop().await;
}

async fn bad_ranges_and_other_callers_keys_are_refused(b: Backend) {
    let app = spawn_app(b).await;
    let (key, _) = app
        .create(member("ann", user_key(ORG, "ann", &["links:read"])))
        .await;
    let now = app.clock.now().0;
    let mut c = app.admin.clone();
    let bad: Vec<(GetKeyUsageRequest, &str)> = vec![
        (
            request(&key.id, now, now, UsageGranularity::Hour),
            "end_time",
        ),
        (
            request(&key.id, now, now - 1, UsageGranularity::Hour),
            "end_time",
        ),
        (
            request(&key.id, now - 31 * DAY - 1, now, UsageGranularity::Hour),
            "end_time",
        ),
        (
            request(&key.id, now - 400 * DAY - 1, now, UsageGranularity::Day),
            "end_time",
        ),
        (
            request(&key.id, now - DAY, now, UsageGranularity::Unspecified),
            "granularity",
        ),
        (
            GetKeyUsageRequest {
                start_time: None,
                ..request(&key.id, now - DAY, now, UsageGranularity::Day)
            },
            "start_time",
        ),
        (
            GetKeyUsageRequest {
                end_time: None,
                ..request(&key.id, now - DAY, now, UsageGranularity::Day)
            },
            "end_time",
        ),
        (
            request("not-an-id", now - DAY, now, UsageGranularity::Day),
            "id",
        ),
    ];
    for (req, field) in bad {
        assert_bad_field(c.get_key_usage(admin(req)).await, field);
    }
    // The widest ranges allowed.
    c.get_key_usage(admin(request(
        &key.id,
        now - 31 * DAY,
        now,
        UsageGranularity::Hour,
    )))
    .await
    .expect("31 days of hours");
    c.get_key_usage(admin(request(
        &key.id,
        now - 400 * DAY,
        now,
        UsageGranularity::Day,
    )))
    .await
    .expect("400 days of days");
    // Access as GetKey: the owner and admins; another member is refused;
    // another organization's key does not exist.
    c.get_key_usage(member(
        "ann",
        request(&key.id, now - DAY, now, UsageGranularity::Day),
    ))
    .await
    .expect("own key");
    assert_code(
        c.get_key_usage(member(
            "ben",
            request(&key.id, now - DAY, now, UsageGranularity::Day),
        ))
        .await,
        Code::PermissionDenied,
    );
    let mut elsewhere = request(&key.id, now - DAY, now, UsageGranularity::Day);
    elsewhere.organization_id = "elsewhere".into();
    assert_code(c.get_key_usage(admin(elsewhere)).await, Code::NotFound);

    // RemoveMember deletes the history of the keys it deletes.
    let id = KeyId::parse(&key.id).expect("id");
    app.store
        .add_usage(&[UsageDelta {
            key_id: id.clone(),
            count: 1,
            last_used: Micros(now),
            history: vec![(Micros(now.div_euclid(HOUR) * HOUR), 1, 1)],
        }])
        .await
        .expect("history");
    c.remove_member(admin(proto::RemoveMemberRequest {
        organization_id: ORG.into(),
        user_id: "ann".into(),
    }))
    .await
    .expect("remove");
    for daily in [false, true] {
        let left = app
            .store
            .usage_history(&id, daily, Micros(now - DAY), Micros(now + DAY))
            .await
            .expect("read");
        assert!(left.is_empty(), "history of a deleted key: {left:?}");
    }
    app.stop().await;
}

/// Two instances on one database count the same key: their histories add up
/// exactly, like `request_count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_add_up_exactly() {
    let a = spawn_app_with(Backend::MySql, FLAGS).await;
    let b = start_app(&a.db, FLAGS).await.expect("second instance");
    let b_verify = proto::key_verify_client::KeyVerifyClient::new(connect(b.addr()).await);
    let (key, secret) = a.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    for _ in 0..5 {
        assert_eq!(
            a.verify_code(verify_req(&secret, &[])).await,
            VerifyCode::Valid
        );
        let r = b_verify
            .clone()
            .verify_key(verify_req(&secret, &["stats:read"]))
            .await;
        assert_eq!(
            r.expect("answer").into_inner().code(),
            VerifyCode::InsufficientScope
        );
    }
    flushed(&a, &key.id, 10).await;
    let now = a.clock.now().0;
    let days = usage(
        &a,
        request(&key.id, now - DAY, now + DAY, UsageGranularity::Day),
    )
    .await;
    let total: u64 = days.iter().map(|d| d.1).sum();
    let mut codes: Vec<(i32, u64)> = Vec::new();
    for (_, _, outcomes) in days {
        for (code, n) in outcomes {
            match codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => codes.push((code, n)),
            }
        }
    }
    codes.sort_unstable();
    assert_eq!((total, codes), (10, vec![(1, 5), (9, 5)]));
    b.shutdown().await.expect("stop b");
    a.stop().await;
}
