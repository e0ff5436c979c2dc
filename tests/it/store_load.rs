//! The store's load stays bounded whatever the traffic, measured
//! with the server's own status counters on a MariaDB of the test's own (the
//! counters are server-wide, so the shared server would mix in other tests):
//! the usage write budget, the forged-key filter, and reads from a replica.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keygate::proto::{self, VerifyKeyRequest};
use sqlx::{Connection, MySqlConnection, Row};
use tokio::task::JoinSet;

use crate::{metrics::scrape, private_db::PrivateMariaDb, support::*};

const ORG: &str = "load";

/// One of MariaDB's global status counters.
async fn status(conn: &mut MySqlConnection, names: &[&str]) -> u64 {
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::raw_sql(&format!(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("SHOW GLOBAL STATUS");
    rows.iter()
        .map(|r| {
            let v: String = r.try_get(1).expect("a value");
            v.parse::<u64>().expect("a number")
        })
        .sum()
}

/// Creates `n` bot keys with scope `links:read`, a few at a time; their secrets.
async fn create_keys(app: &TestApp, n: usize) -> Vec<String> {
    let admin_client = app.admin.clone();
    let mut tasks = JoinSet::new();
    let per_task = n.div_ceil(8);
    for t in 0..8 {
        let mut client = admin_client.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in (t * per_task)..((t + 1) * per_task).min(n) {
                let resp = client
                    .create_key(admin(bot_key(ORG, &format!("k{i}"), &["links:read"])))
                    .await
                    .expect("created")
                    .into_inner();
                out.push(resp.secret);
            }
            out
        });
    }
    let mut secrets = Vec::new();
    while let Some(r) = tasks.join_next().await {
        secrets.extend(r.expect("task"));
    }
    secrets
}

/// Verifies each key once through `client`, a few at a time; every answer must
/// be `expect`.
async fn verify_all(client: &VerifyClient, secrets: &[String], expect: proto::VerifyCode) {
    let secrets: Arc<[String]> = secrets.into();
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let (mut client, secrets) = (client.clone(), Arc::clone(&secrets));
        tasks.spawn(async move {
            for s in secrets.iter().skip(t).step_by(8) {
                let resp = client
                    .verify_key(VerifyKeyRequest {
                        key: s.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("verify answers")
                    .into_inner();
                assert_eq!(resp.code(), expect);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
}

type VerifyClient = proto::key_verify_client::KeyVerifyClient<tonic::transport::Channel>;

/// 2 000 distinct keys used at once under a budget of 200 rows a second: no
/// stretch of the store's history holds more than 200 row writes in under a
/// second, a backlog forms, and at shutdown every count is written. Each
/// key's count is three rows (its own, an hourly and a daily history row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_writes_stay_within_the_budget_and_every_count_arrives() {
    const KEYS: usize = 2_000;
    const BUDGET: u64 = 200;
    let server = PrivateMariaDb::start().await;
    let db = TestDb::create_mysql_on(&server.url(), "budget").await;
    let app = start_on(
        db,
        &[
            "--usage-write-budget",
            "200",
            "--usage-flush-interval",
            "250ms",
            "--cache-ttl",
            "1h",
        ],
    )
    .await;
    let secrets = create_keys(&app, KEYS).await;
    let mut counters = MySqlConnection::connect(&server.url())
        .await
        .expect("connect");
    let rows = ["Handler_update", "Handler_write"];
    // Creating the keys wrote rows too: let that settle first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Samples every 100 ms for 6 s from before the keys are used, while they
    // are verified and their counts drain.
    let sampling = async {
        let mut samples = vec![(Instant::now(), status(&mut counters, &rows).await)];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.tick().await;
        while samples.len() < 61 {
            tick.tick().await;
            samples.push((Instant::now(), status(&mut counters, &rows).await));
        }
        samples
    };
    let (samples, ()) = tokio::join!(
        sampling,
        verify_all(&app.verify, &secrets, proto::VerifyCode::Valid)
    );
    // Windows of 9 intervals: under a second however the sampling falls, and
    // long enough that two of keygate's flushes a second apart never share one.
    let worst = samples
        .windows(10)
        .map(|w| w[9].1 - w[0].1)
        .max()
        .expect("windows");
    let written = samples[60].1 - samples[0].1;
    assert!(worst <= BUDGET, "{worst} rows in under a second");
    // The keys take a second or two to verify, then drain at up to 200 rows
    // a second: well over 400 rows in 6 s unless the budget starves.
    assert!(
        written >= 2 * BUDGET,
        "the budget is used, not starved: {written} rows in 6 s"
    );
    // Some counts are written, the others still wait. (The backlog's own
    // gauges are process-wide, shared with the tests running beside this one:
    // `usage::tests` checks what they report.)
    let mut raw = RawDb::connect(&app.db).await;
    let counted = raw
        .count("SELECT COUNT(*) FROM api_keys WHERE request_count = 1")
        .await;
    raw.close().await;
    assert!(
        counted > 0 && counted < KEYS as i64,
        "{counted} of {KEYS} keys counted so far"
    );

    // Shutdown writes the rest, whatever the budget.
    let db = app.stop_keep_db().await;
    let mut raw = RawDb::connect(&db).await;
    assert_eq!(
        raw.count("SELECT COUNT(*) FROM api_keys WHERE request_count = 1")
            .await,
        KEYS as i64
    );
    assert_eq!(
        raw.count("SELECT CAST(SUM(count) AS SIGNED) FROM usage_hourly")
            .await,
        KEYS as i64
    );
    db.drop_db().await;
}

fn forged_keys(n: usize) -> Vec<String> {
    let prefix = keygate::domain::keys::KeyPrefix::default();
    (0..n)
        .map(|_| keygate::domain::keys::Secret::generate(&prefix).into_exposed())
        .collect()
}

async fn metric(app: &keygate::app::App, name: &str) -> f64 {
    let (_, metrics) = scrape(app.metrics_addr()).await;
    metrics.get(name).copied().unwrap_or(0.0)
}

/// 20 000 forged, well-formed keys against one instance: the store sees at
/// most 20 reads a second for them (the filter's bypass and false positives),
/// counted by MariaDB's `Com_select` less the background reads (polls,
/// health) measured just before; meanwhile a key created on another instance
/// verifies there within a second. (keygate's own lookup counter is
/// process-wide, shared with the tests running beside this one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_keys_barely_reaches_the_store() {
    let server = PrivateMariaDb::start().await;
    let db = TestDb::create_mysql_on(&server.url(), "flood").await;
    let a = start_on(db, &[]).await;
    let b = start_app(&a.db, &[]).await.expect("second instance");
    let b_admin = proto::key_admin_client::KeyAdminClient::new(connect(b.addr()).await);
    // The filter loads in milliseconds on a store this small; the idle
    // measurement below gives it two seconds.
    let mut counters = MySqlConnection::connect(&server.url())
        .await
        .expect("connect");
    let selects = ["Com_select"];

    // The background reads (polls, health) alone, over 2 s.
    let idle_start = (Instant::now(), status(&mut counters, &selects).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status(&mut counters, &selects).await - idle_start.1;
    let idle_rate = idle as f64 / idle_start.0.elapsed().as_secs_f64();

    let selects_before = status(&mut counters, &selects).await;
    let started = Instant::now();
    let forged = forged_keys(20_000);
    let flood = {
        let a_verify = a.verify.clone();
        tokio::spawn(async move {
            verify_all(&a_verify, &forged, proto::VerifyCode::NotFound).await;
        })
    };
    // Meanwhile, a key is made on the other instance and used here.
    let fresh = b_admin
        .clone()
        .create_key(admin(bot_key(ORG, "fresh", &["links:read"])))
        .await
        .expect("created")
        .into_inner()
        .secret;
    let created = Instant::now();
    let mut verify = a.verify.clone();
    loop {
        let code = verify
            .verify_key(VerifyKeyRequest {
                key: fresh.clone(),
                ..Default::default()
            })
            .await
            .expect("answers")
            .into_inner()
            .code();
        if code == proto::VerifyCode::Valid {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "a key from another instance still {code:?} after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh_after = created.elapsed();
    flood.await.expect("flood");
    let secs = started.elapsed().as_secs_f64();
    let selects = status(&mut counters, &selects).await - selects_before;
    let extra = selects as f64 - idle_rate * secs;
    eprintln!(
        "flood of 20000 in {secs:.1} s: {selects} SELECTs ({idle_rate:.1}/s idle), fresh key valid after {fresh_after:?}"
    );
    assert!(
        extra <= 20.0 * secs,
        "{selects} SELECTs in {secs:.1} s, {idle_rate:.1}/s of them background"
    );
    b.shutdown().await.expect("clean");
    a.stop().await;
}

/// A MariaDB primary and a replica of it on loopback. Both instances read
/// through the replica; with its SQL thread stopped, a revocation on one
/// instance takes effect there at once (its reads go to the primary until the
/// replica has the write), the other keeps its cached answer until the replica
/// catches up and its poll brings the event, a key the replica lacks is read
/// from the primary rather than NOT_FOUND, and the lag shows as a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_never_delays_a_revocation_on_the_instance_that_made_it() {
    let (primary, replica) = PrivateMariaDb::primary_and_replica().await;
    let db = TestDb::create_mysql_on(&primary.url(), "replica").await;
    let name = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let read_url = format!("{}/{name}", replica.url());
    let flags = [
        "--database-read-url",
        read_url.as_str(),
        "--cache-ttl",
        "1h",
    ];
    let a = start_on(db, &flags).await;
    replica.wait_replica_caught_up(&primary).await;
    let b = start_app(&a.db, &flags).await.expect("second instance");
    let mut b_verify = proto::key_verify_client::KeyVerifyClient::new(connect(b.addr()).await);
    let code_on =
        |client: &mut proto::key_verify_client::KeyVerifyClient<tonic::transport::Channel>,
         key: &str| {
            let mut client = client.clone();
            let key = key.to_owned();
            async move {
                client
                    .verify_key(VerifyKeyRequest {
                        key,
                        ..Default::default()
                    })
                    .await
                    .expect("answers")
                    .into_inner()
                    .code()
            }
        };

    let (key, secret) = a.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    replica.wait_replica_caught_up(&primary).await;
    let mut a_verify = a.verify.clone();
    assert_eq!(
        code_on(&mut a_verify, &secret).await,
        proto::VerifyCode::Valid
    );
    assert_eq!(
        code_on(&mut b_verify, &secret).await,
        proto::VerifyCode::Valid
    );

    replica.stop_replica_sql_thread().await;
    a.revoke(ORG, &key.id).await;
    assert_eq!(
        code_on(&mut a_verify, &secret).await,
        proto::VerifyCode::Revoked,
        "at once on the instance that revoked"
    );
    // A key the replica does not have yet is read from the primary.
    let (_, newer) = a
        .create(admin(bot_key(ORG, "newer", &["links:read"])))
        .await;
    assert_eq!(
        code_on(&mut b_verify, &newer).await,
        proto::VerifyCode::Valid
    );
    eventually(Duration::from_secs(10), "the lag to show", || async {
        metric(&b, "keygate_replica_lag_seconds").await >= 1.0
    })
    .await;
    assert_eq!(
        code_on(&mut b_verify, &secret).await,
        proto::VerifyCode::Valid,
        "the other instance still holds its cached answer"
    );

    replica.start_replica_sql_thread().await;
    replica.wait_replica_caught_up(&primary).await;
    let caught_up = Instant::now();
    eventually(Duration::from_secs(5), "the revocation to reach B", || {
        let mut client = b_verify.clone();
        let secret = secret.clone();
        async move { code_on(&mut client, &secret).await == proto::VerifyCode::Revoked }
    })
    .await;
    eprintln!(
        "revocation on B {:?} after the replica caught up",
        caught_up.elapsed()
    );
    eventually(Duration::from_secs(5), "the lag to fall back", || async {
        metric(&b, "keygate_replica_lag_seconds").await < 1.0
    })
    .await;
    b.shutdown().await.expect("clean");
    a.stop().await;
}
