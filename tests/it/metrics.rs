//! `/metrics`: the counters move with traffic, and no label carries a key, a hash,
//! an organization or anything else unbounded.

use std::{collections::BTreeMap, time::Duration};

use keygate::{
    domain::keys::{KeyPrefix, Secret},
    domain::model::{KeyId, Micros, OrganizationId},
    proto::{
        self, VerifyCode, key_admin_client::KeyAdminClient, key_verify_client::KeyVerifyClient,
    },
    store::{PoolConfig, Store},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;

use crate::support::*;

/// Prometheus text as `name{sorted labels}` → value.
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> (String, BTreeMap<String, f64>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value.parse().expect("a number"));
    }
    (body.to_owned(), samples)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// The `request_count` of a key, read from the store.
async fn request_count(store: &Store, org: &str, id: &str) -> u64 {
    store
        .get_key(
            &OrganizationId::parse(org).expect("org"),
            &KeyId::parse(id).expect("id"),
        )
        .await
        .expect("read")
        .expect("key")
        .request_count
}

/// Every counter moves by exactly what the traffic explains. The recorder is
/// process-wide, so keygate runs as a child process of its own: in process,
/// the other tests' keygates would count into the same series. Nothing runs in
/// the background meanwhile: the key the verifications use is created before
/// keygate starts, its CREATED event is polled once at start (waited for), and
/// then the invalidation poll waits an hour; each usage flush is waited for,
/// so each carries exactly one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic_and_labels_stay_bounded() {
    let org = "metricsorg7";
    let db = TestDb::create(Backend::Sqlite).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let secret = Secret::generate(&KeyPrefix::default());
    let now = Micros::now();
    let seeded = bot_record(org, "m", &secret, now);
    store.create_key(&seeded).await.expect("create");
    let key_id = seeded.id.as_str().to_owned();
    let secret = secret.into_exposed();

    let mut served = spawn_process_on(
        &db,
        &[
            "--usage-flush-interval",
            "20ms",
            "--invalidation-interval",
            "1h",
        ],
    );
    let metrics = served.metrics_addr;
    let channel = connect(served.addr).await;
    let mut admin_client = KeyAdminClient::new(channel.clone());
    let verify = KeyVerifyClient::new(channel);
    let verify_code = async |req: proto::VerifyKeyRequest| {
        verify
            .clone()
            .verify_key(req)
            .await
            .expect("verify answers")
            .into_inner()
            .code()
    };
    // The start-up poll has seen the seeded key's CREATED event.
    let lag_count = "keygate_invalidation_lag_seconds_count";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let (_, samples) = scrape(metrics).await;
        if samples.get(lag_count).copied() == Some(1.0) {
            break samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the start-up poll never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A key created through the API (and not used): one CreateKey OK.
    let (other, other_secret) = {
        let resp = admin_client
            .create_key(admin(bot_key(org, "unused", &["links:read"])))
            .await
            .expect("create")
            .into_inner();
        (resp.key.expect("key"), resp.secret)
    };
    // Three verifications that find the key (a miss, then two hits), each
    // followed by the flush of its use.
    for (n, scope, code) in [
        (1, "links:read", VerifyCode::Valid),
        (2, "links:read", VerifyCode::Valid),
        (3, "stats:read", VerifyCode::InsufficientScope),
    ] {
        assert_eq!(verify_code(verify_req(&secret, &[scope])).await, code);
        eventually(Duration::from_secs(30), "the use flushed", || async {
            request_count(&store, org, &key_id).await == n
        })
        .await;
    }
    assert_eq!(
        verify_code(verify_req("junk", &[])).await,
        VerifyCode::Malformed
    );
    let unknown = Secret::generate(&KeyPrefix::default());
    assert_eq!(
        verify_code(verify_req(unknown.expose(), &[])).await,
        VerifyCode::NotFound
    );
    assert!(
        verify
            .clone()
            .verify_key(verify_req(&secret, &["BAD"]))
            .await
            .is_err()
    );
    let mut anonymous = Request::new(proto::GetKeyRequest {
        organization_id: org.into(),
        id: key_id.clone(),
    });
    anonymous
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().expect("ascii"));
    assert!(admin_client.get_key(anonymous).await.is_err());

    let (text, after) = scrape(metrics).await;
    let mut wrong = Vec::new();
    for (series, exactly) in [
        (
            r#"keygate_verify_total{code="valid",entry_point="grpc"}"#,
            2.0,
        ),
        (
            r#"keygate_verify_total{code="insufficient_scope",entry_point="grpc"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="malformed",entry_point="grpc"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="not_found",entry_point="grpc"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="rpc_error",entry_point="grpc"}"#,
            1.0,
        ),
        (
            r#"keygate_verify_total{code="revoked",entry_point="grpc"}"#,
            0.0,
        ),
        (
            r#"keygate_verify_total{code="missing",entry_point="grpc"}"#,
            0.0,
        ),
        (r#"keygate_cache_hits_total{cache="keys"}"#, 2.0),
        (r#"keygate_cache_hits_total{cache="unknown_keys"}"#, 0.0),
        ("keygate_cache_misses_total", 2.0),
        ("keygate_cache_evictions_total", 0.0),
        ("keygate_cache_stale_fills_dropped_total", 0.0),
        ("keygate_store_lookups_total", 2.0),
        ("keygate_store_lookup_hashes_total", 2.0),
        (
            r#"keygate_admin_requests_total{code="OK",method="CreateKey"}"#,
            1.0,
        ),
        (
            r#"keygate_admin_requests_total{code="UNAUTHENTICATED",method="GetKey"}"#,
            1.0,
        ),
        (
            r#"keygate_admin_requests_total{code="OK",method="GetKey"}"#,
            0.0,
        ),
        (r#"keygate_usage_flushes_total{result="ok"}"#, 3.0),
        (r#"keygate_usage_flushes_total{result="error"}"#, 0.0),
        ("keygate_usage_flushed_keys_total", 3.0),
        (lag_count, 0.0),
    ] {
        let moved = delta(&before, &after, series);
        if moved != exactly {
            wrong.push(format!("{series} moved by {moved}, not {exactly}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Latency is timed for one call in 16 on each thread, the first included:
    // this runtime's threads are new, so at least one of the six was.
    let timed = delta(
        &before,
        &after,
        r#"keygate_verify_duration_seconds_count{entry_point="grpc"}"#,
    );
    assert!((1.0..=6.0).contains(&timed), "{timed} of 6 calls timed");
    for present in [
        r#"keygate_build_info{version="0.1.0"}"#,
        r#"keygate_store_connections{state="idle"}"#,
        "keygate_store_up",
    ] {
        assert!(
            after.contains_key(present),
            "{present} in {:?}",
            after.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        text.contains("keygate_verify_duration_seconds_bucket"),
        "a real histogram"
    );
    for unbounded in [
        org,
        key_id.as_str(),
        other.id.as_str(),
        secret.as_str(),
        other_secret.as_str(),
        unknown.expose(),
    ] {
        assert!(
            !text.contains(unbounded),
            "{unbounded} must not appear in metrics"
        );
    }
    let status = served.process.terminate();
    assert!(status.success(), "graceful exit: {status}");
    store.close().await;
    db.drop_db().await;
}
