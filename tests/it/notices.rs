//! Notices on both stores: each goes out once per occurrence, however many
//! instances look for it at once (two scanners on their own connections race
//! on one database, on a clock the test moves); a new occurrence (a key now a
//! day from its expiry) is a new notice; and the running service sends them
//! as webhooks.

use std::{sync::Arc, time::Duration};

use keygate::{
    clock::SharedClock,
    proto::{
        self, CreateIdentityRequest, KeyEventAction, ListKeyEventsRequest, Quota, QuotaPeriod,
        VerifyCode,
    },
    services::notices::Notices,
    store::{PoolConfig, Store},
};

use crate::{store_tests, support::*};

const ORG: &str = "noticed";
const HOUR: u64 = 3_600;

fn total(limit: u64) -> Option<Quota> {
    Some(Quota {
        limit,
        period: QuotaPeriod::Total.into(),
    })
}

fn in_hours(app: &TestApp, hours: i64) -> prost_types::Timestamp {
    use keygate::clock::Clock;
    keygate::domain::model::Micros(app.clock.now().0 + hours * 3_600_000_000).to_timestamp()
}

/// `(subject, action)` of every notice event of [`ORG`], the subject being
/// the key's id or the identity's.
async fn notices(app: &TestApp) -> Vec<(String, KeyEventAction)> {
    let events = app
        .admin
        .clone()
        .list_key_events(admin(ListKeyEventsRequest {
            organization_id: ORG.into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    let mut out: Vec<(String, KeyEventAction)> = events
        .into_iter()
        .filter(|e| e.action >= KeyEventAction::KeyExpiring as i32)
        .map(|e| {
            let subject = if e.key_id.is_empty() {
                e.identity_id.clone()
            } else {
                e.key_id.clone()
            };
            (subject, e.action())
        })
        .collect();
    out.sort_by(|a, b| (&a.0, a.1 as i32).cmp(&(&b.0, b.1 as i32)));
    out
}

store_tests!(
    each_notice_goes_out_once_with_two_instances_racing,
    an_expired_key_is_read_for_no_quota_notice,
);

/// The scan's read agrees with the rule: an expired key's quota is due no
/// notice, so its row is not read again and again (500 such rows, in a
/// quota that never resets, would fill every scan's page).
async fn an_expired_key_is_read_for_no_quota_notice(b: Backend) {
    use keygate::domain::{
        keys::{KeyPrefix, Secret},
        limits::{Quota as DomainQuota, QuotaPeriod as Period},
        model::{KeyRecord, Micros},
    };
    let db = TestDb::create(b).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let now = Micros::now();
    let used_up = |name: &str, expire: Option<Micros>| KeyRecord {
        quota: Some(DomainQuota {
            limit: 5,
            period: Period::Total,
        }),
        quota_used: 5,
        expire_time: expire,
        ..bot_record(ORG, name, &Secret::generate(&KeyPrefix::default()), now)
    };
    let expired = used_up("expired", Some(Micros(now.0 - 3_600_000_000)));
    let live = used_up("live", None);
    for k in [&expired, &live] {
        store.create_key(k).await.expect("create");
    }
    let (keys, identities) = store
        .notice_candidates(now, Micros(90 * 86_400_000_000), 10)
        .await
        .expect("candidates");
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [live.id.as_str()]);
    assert!(identities.is_empty());
    store.close().await;
    db.drop_db().await;
}

async fn each_notice_goes_out_once_with_two_instances_racing(b: Backend) {
    let app = spawn_app_with(b, &["--notice-interval", "0s"]).await;
    let create = |name: &str, hours: Option<i64>| proto::CreateKeyRequest {
        expire_time: hours.map(|h| in_hours(&app, h)),
        ..bot_key(ORG, name, &["links:read"])
    };
    let (week, _) = app.create(admin(create("week", Some(6 * 24)))).await;
    let (day, _) = app.create(admin(create("day", Some(20)))).await;
    let (idle, _) = app.create(admin(create("idle", None))).await;
    let (metered, metered_secret) = app
        .create(admin(proto::CreateKeyRequest {
            quota: total(5),
            ..create("metered", None)
        }))
        .await;
    let identity = app
        .admin
        .clone()
        .create_identity(admin(CreateIdentityRequest {
            organization_id: ORG.into(),
            external_id: "cus_1".into(),
            quota: total(2),
            ..Default::default()
        }))
        .await
        .expect("identity")
        .into_inner()
        .identity
        .expect("identity");
    let (owned, owned_secret) = app
        .create(admin(proto::CreateKeyRequest {
            identity_id: identity.id.clone(),
            ..create("owned", None)
        }))
        .await;
    // 4 of 5 credits: low. 2 of 2 of the identity's: exhausted.
    for (secret, n) in [(&metered_secret, 4), (&owned_secret, 2)] {
        for _ in 0..n {
            let code = app.verify_code(verify_req(secret, &["links:read"])).await;
            assert_eq!(code, VerifyCode::Valid);
        }
    }
    // The uses are written (the usage flush), so the dormancy below counts
    // from them and does not move while the scanners run.
    eventually(Duration::from_secs(10), "the usage flush", || async {
        app.get(ORG, &metered.id).await.last_used_time.is_some()
            && app.get(ORG, &owned.id).await.last_used_time.is_some()
    })
    .await;
    // Two hours on, every key is dormant by the scanners' hour (quotas of 5
    // and 2 are leased one credit at a time, so the rows say 4 and 2).
    app.clock.advance(Duration::from_secs(2 * HOUR));

    // Two instances: each its own connections, the same database and clock.
    let scanner = || async {
        let store = Store::connect(&app.db.url, &PoolConfig::default())
            .await
            .expect("store");
        Notices::new(
            store,
            Arc::clone(&app.clock) as SharedClock,
            Duration::from_secs(HOUR),
        )
    };
    let (one, two) = (scanner().await, scanner().await);
    let mut sent = Vec::new();
    for _ in 0..3 {
        let (a, b) = tokio::join!(one.scan_once(), two.scan_once());
        sent.push(a.expect("scan") + b.expect("scan"));
    }
    let mut expected = vec![
        (week.id.clone(), KeyEventAction::KeyExpiring),
        (week.id.clone(), KeyEventAction::KeyDormant),
        (day.id.clone(), KeyEventAction::KeyExpiring),
        (day.id.clone(), KeyEventAction::KeyDormant),
        (idle.id.clone(), KeyEventAction::KeyDormant),
        (metered.id.clone(), KeyEventAction::KeyDormant),
        (metered.id.clone(), KeyEventAction::QuotaLow),
        (owned.id.clone(), KeyEventAction::KeyDormant),
        (identity.id.clone(), KeyEventAction::QuotaExhausted),
    ];
    expected.sort_by(|a, b| (&a.0, a.1 as i32).cmp(&(&b.0, b.1 as i32)));
    assert_eq!(notices(&app).await, expected, "each notice once");
    assert_eq!(sent, [expected.len(), 0, 0], "later scans find nothing new");

    // Five days on, `week` is a day from its expiry: a new occurrence, sent
    // once; `day` has expired, and nothing else is new.
    app.clock.advance(Duration::from_secs(5 * 24 * HOUR));
    let (a, b) = tokio::join!(one.scan_once(), two.scan_once());
    assert_eq!(a.expect("scan") + b.expect("scan"), 1);
    let (a, b) = tokio::join!(one.scan_once(), two.scan_once());
    assert_eq!(a.expect("scan") + b.expect("scan"), 0);
    let week_notices = notices(&app)
        .await
        .into_iter()
        .filter(|(s, a)| *s == week.id && *a == KeyEventAction::KeyExpiring)
        .count();
    assert_eq!(week_notices, 2, "a week before, then a day before");
    app.stop().await;
}

/// The running service looks for notices on its own and sends them as
/// webhooks: `key.expiring` with the key's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sends_notices_as_webhooks() {
    use crate::webhooks::{hook_flags, start_receiver, strs};
    let (receiver, addr) = start_receiver(0);
    let hooks = hook_flags(addr);
    let mut flags = strs(&hooks);
    flags.extend(["--notice-interval", "100ms"]);
    let app = spawn_app_with(Backend::Sqlite, &flags).await;
    let (key, _) = app
        .create(admin(proto::CreateKeyRequest {
            expire_time: Some(in_hours(&app, 30)),
            ..bot_key(ORG, "soon", &["links:read"])
        }))
        .await;
    // Event 1 is the key's creation; 2 its notice.
    let id = format!("{ORG}-2");
    eventually(Duration::from_secs(30), "the notice's webhook", || async {
        receiver.delivered().contains_key(&id)
    })
    .await;
    let body = receiver.delivered()[&id][0].clone();
    assert_eq!(body["type"], "key.expiring");
    assert_eq!(
        body["data"]["event"]["action"],
        "KEY_EVENT_ACTION_KEY_EXPIRING"
    );
    assert_eq!(body["data"]["event"]["actorId"], "keygate");
    assert_eq!(body["data"]["key"]["id"], key.id.as_str());
    assert!(body["data"]["key"]["expireTime"].is_string());
    app.stop().await;
}
