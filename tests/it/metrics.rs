//! `/metrics`: the counters move with traffic, and no label carries a key, a hash,
//! an organization or anything else unbounded.

use std::{collections::BTreeMap, time::Duration};

use keygate::{
    keys::{KeyPrefix, Secret},
    proto::{self, VerifyCode},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;

use crate::support::*;

/// Prometheus text as `name{sorted labels}` → value.
async fn scrape(addr: std::net::SocketAddr) -> (String, BTreeMap<String, f64>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_labels_stay_bounded() {
    let app = spawn_app_with(Backend::Sqlite, &["--usage-flush-interval", "20ms"]).await;
    let metrics = app.app.as_ref().expect("running").metrics_addr();
    let (_, before) = scrape(metrics).await;

    let org = "metricsorg7";
    let (key, secret) = app.create(admin(bot_key(org, "m", &["links:read"]))).await;
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid
    );
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid
    );
    assert_eq!(
        app.verify_code(verify_req(&secret, &["stats:read"])).await,
        VerifyCode::InsufficientScope
    );
    assert_eq!(
        app.verify_code(verify_req("junk", &[])).await,
        VerifyCode::Malformed
    );
    let unknown = Secret::generate(&KeyPrefix::default());
    assert_eq!(
        app.verify_code(verify_req(unknown.expose(), &[])).await,
        VerifyCode::NotFound
    );
    assert!(
        app.verify
            .clone()
            .verify_key(verify_req(&secret, &["BAD"]))
            .await
            .is_err()
    );
    let mut anonymous = Request::new(proto::GetKeyRequest {
        organization_id: org.into(),
        id: key.id.clone(),
    });
    anonymous
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().expect("ascii"));
    assert!(app.admin.clone().get_key(anonymous).await.is_err());
    eventually(Duration::from_secs(10), "usage flushed", || async {
        app.get(org, &key.id).await.request_count == 3
    })
    .await;

    let (text, after) = scrape(metrics).await;
    for (series, at_least) in [
        (r#"keygate_verify_total{code="valid"}"#, 2.0),
        (r#"keygate_verify_total{code="insufficient_scope"}"#, 1.0),
        (r#"keygate_verify_total{code="malformed"}"#, 1.0),
        (r#"keygate_verify_total{code="not_found"}"#, 1.0),
        (r#"keygate_verify_total{code="rpc_error"}"#, 1.0),
        ("keygate_verify_duration_seconds_count", 6.0),
        (r#"keygate_cache_hits_total{cache="keys"}"#, 2.0),
        ("keygate_cache_misses_total", 2.0),
        (
            r#"keygate_admin_requests_total{code="OK",method="CreateKey"}"#,
            1.0,
        ),
        (
            r#"keygate_admin_requests_total{code="UNAUTHENTICATED",method="GetKey"}"#,
            1.0,
        ),
        (r#"keygate_usage_flushes_total{result="ok"}"#, 1.0),
        ("keygate_usage_flushed_keys_total", 1.0),
    ] {
        assert!(
            delta(&before, &after, series) >= at_least,
            "{series} moved by {}",
            delta(&before, &after, series)
        );
    }
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
    for unbounded in [org, key.id.as_str(), secret.as_str(), unknown.expose()] {
        assert!(
            !text.contains(unbounded),
            "{unbounded} must not appear in metrics"
        );
    }
    app.stop().await;
}
