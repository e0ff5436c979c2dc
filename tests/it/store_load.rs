//! The store's load stays bounded whatever the traffic (DESIGN §12), measured
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

/// Verifies each key once, a few at a time; every answer must be `expect`.
async fn verify_all(app: &TestApp, secrets: &[String], expect: proto::VerifyCode) {
    let secrets: Arc<[String]> = secrets.into();
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let (client, secrets) = (app.verify.clone(), Arc::clone(&secrets));
        tasks.spawn(async move {
            let mut client = client;
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

/// 2 000 distinct keys used at once under a budget of 200 rows a second: no
/// stretch of the store's history holds more than 200 row writes in under a
/// second, the backlog shows in the metrics, and at shutdown every count is
/// written. Each key's count is three rows (its own, an hourly and a daily
/// history row).
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

    verify_all(&app, &secrets, proto::VerifyCode::Valid).await;
    // Samples every 100 ms for 6 s of the drain.
    let mut samples = vec![(Instant::now(), status(&mut counters, &rows).await)];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.tick().await;
    while samples.len() < 61 {
        tick.tick().await;
        samples.push((Instant::now(), status(&mut counters, &rows).await));
    }
    // Windows of 9 intervals: under a second however the sampling falls, and
    // long enough that two of keygate's flushes a second apart never share one.
    let worst = samples
        .windows(10)
        .map(|w| w[9].1 - w[0].1)
        .max()
        .expect("windows");
    let written = samples[60].1 - samples[0].1;
    assert!(worst <= BUDGET, "{worst} rows in under a second");
    assert!(
        written >= 4 * BUDGET,
        "the budget is used, not starved: {written} rows in 6 s"
    );
    let (_, metrics) = scrape(app.app.as_ref().expect("running").metrics_addr()).await;
    let pending = metrics["keygate_usage_pending_keys"];
    assert!(
        pending > 0.0 && pending < KEYS as f64,
        "keys waiting for the budget: {pending}"
    );
    assert!(metrics["keygate_usage_oldest_pending_seconds"] >= 1.0);

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
