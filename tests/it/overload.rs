//! Slow, idle and greedy clients cannot starve verification: a full HTTP
//! listener leaves room for gRPC (the real binary under a low open-file
//! limit), idle and dripping HTTP clients are disconnected, a declared body
//! over a route's limit is refused before it is read, and calls past
//! `--max-in-flight` are shed while health checks answer.

use std::time::{Duration, Instant};

use keygate::proto::{VerifyCode, VerifyKeyRequest, key_verify_client::KeyVerifyClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{metrics::scrape, support::*};

/// Reads until the peer closes the connection, bounded by `within`: the
/// bytes read, or `None` when it was still open at the deadline.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut read = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(read),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// keygate under an open-file limit of 400, its HTTP listener capped at 64
/// connections, and 600 idle connections opened on it (without the cap they
/// would use up every open file): a new gRPC connection is still accepted and
/// answers Health/Check and VerifyKey, and the connections over the cap were
/// closed at once and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_http_listener_leaves_room_for_grpc() {
    let db = TestDb::create(Backend::Sqlite).await;
    let args = serve_argv(
        &db.url,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--http-max-connections",
            "64",
            "--http-header-timeout",
            "60s",
            "--database-max-connections",
            "4",
        ],
    );
    let mut process = Process::spawn_with_open_files(&args, &[], 400);
    let (addr, metrics_addr) = process.wait_serving_with_metrics();
    let http = process.wait_serving_http();
    let admin_client = keygate::proto::key_admin_client::KeyAdminClient::new(connect(addr).await);
    let secret = admin_client
        .clone()
        .create_key(admin(bot_key("overload", "k", &["links:read"])))
        .await
        .expect("create")
        .into_inner()
        .secret;

    let mut idle = Vec::new();
    for _ in 0..600 {
        idle.push(TcpStream::connect(http).await.expect("the kernel accepts"));
    }
    // The flood is taken in: refused, or (were there no cap) held until the
    // process is out of open files.
    eventually(Duration::from_secs(20), "the flood taken in", || async {
        let scraped = tokio::time::timeout(Duration::from_secs(2), scrape(metrics_addr)).await;
        let refused = scraped.map_or(0.0, |(_, m)| {
            m.get("keygate_connections_refused_total{listener=\"http\"}")
                .copied()
                .unwrap_or(0.0)
        });
        refused >= 536.0 || process.resources().1 >= 390
    })
    .await;

    // A new gRPC client on a connection of its own.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let status = health_at(addr).await;
        let code = KeyVerifyClient::new(connect(addr).await)
            .verify_key(verify_req(&secret, &["links:read"]))
            .await
            .expect("verify answers")
            .into_inner()
            .code();
        (status, code)
    })
    .await
    .expect("gRPC answers while the HTTP listener is full");
    assert_eq!(answered, (ServingStatus::Serving, VerifyCode::Valid));
    let (_, m) = scrape(metrics_addr).await;
    assert_eq!(
        m.get("keygate_connections_open{listener=\"http\"}"),
        Some(&64.0)
    );
    // One over the cap was closed before it sent a byte.
    let closed = closed_within(&mut idle[599], Duration::from_secs(5)).await;
    assert_eq!(closed, Some(Vec::new()), "closed at once, nothing answered");
    process.wait_for("the listener-full warning", |l| {
        l.contains("the HTTP listener is full").then_some(())
    });
    drop(idle);
    drop(process);
    db.drop_db().await;
}

/// With an open-file limit below the HTTP cap plus what keygate keeps for the
/// rest, keygate refuses to start and says which flag to lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_open_files_for_the_http_cap_stops_the_start() {
    let db = TestDb::create(Backend::Sqlite).await;
    let args = serve_argv(&db.url, &["--http-listen", "127.0.0.1:0"]);
    let mut process = Process::spawn_with_open_files(&args, &[], 600);
    let status = process.wait_exit();
    assert!(!status.success());
    let out = process.output().join("\n");
    assert!(
        out.contains("open-file limit (600) leaves no room")
            && out.contains("--http-max-connections"),
        "{out}"
    );
    db.drop_db().await;
}

/// An HTTP listener with a one-second header timeout disconnects a client
/// that sends nothing, one that drips a header line every 200 ms, and a
/// keep-alive connection left idle after its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_dripping_http_clients_are_disconnected() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--http-header-timeout",
            "1s",
        ],
    )
    .await;
    let http = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");

    let mut silent = TcpStream::connect(http).await.expect("connect");
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent client is disconnected"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before its time"
    );

    let mut dripping = TcpStream::connect(http).await.expect("connect");
    dripping
        .write_all(b"GET /v1/authorize HTTP/1.1\r\nHost: keygate\r\n")
        .await
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut cut = false;
    while Instant::now() < deadline {
        if dripping.write_all(b"X-Drip: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut dripping, Duration::from_millis(200))
            .await
            .is_some()
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client dripping its headers is disconnected");

    let mut kept_alive = TcpStream::connect(http).await.expect("connect");
    kept_alive
        .write_all(b"GET /v1/authorize HTTP/1.1\r\nHost: keygate\r\n\r\n")
        .await
        .expect("write");
    let answer = closed_within(&mut kept_alive, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 401"),
        "the request itself was answered first"
    );
    app.stop().await;
}

/// A request declaring a 10 GiB body is answered 413 at once, on both routes,
/// though the request deadline is 30 s: nothing of the body is awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_at_once() {
    let reporter = crate::leaks::reporter(Backend::Sqlite).await;
    let http = reporter
        .app
        .app
        .as_ref()
        .and_then(|a| a.http_addr())
        .expect("http");
    for path in ["/v1/leaks/github", "/v1/authorize"] {
        let mut stream = TcpStream::connect(http).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: keygate\r\nContent-Type: application/json\r\n\
             Content-Length: 10737418240\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let answer = closed_within(&mut stream, Duration::from_secs(3))
            .await
            .expect("answered and closed at once");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    reporter.app.stop().await;
}

/// `--max-in-flight 2`, two verifications stuck on a locked table: a third
/// call is RESOURCE_EXHAUSTED at once, health still answers SERVING, and once
/// the table is free the two finish VALID and calls are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_calls_are_shed_and_health_answers() {
    let app = spawn_app_with(
        Backend::MySql,
        &[
            "--max-in-flight",
            "2",
            "--database-timeout",
            "30s",
            "--request-timeout",
            "30s",
        ],
    )
    .await;
    let mut secrets = Vec::new();
    for name in ["one", "two"] {
        let (_, s) = app
            .create(admin(bot_key("shed", name, &["links:read"])))
            .await;
        secrets.push(s);
    }
    let mut lock = lock_keys_table(&app.db).await;
    let hold = |secret: &str| {
        let mut client = app.verify.clone();
        let req = verify_req(secret, &["links:read"]);
        tokio::spawn(async move { client.verify_key(req).await.map(|r| r.into_inner().code()) })
    };
    let mut stuck: Vec<_> = secrets.iter().map(|s| hold(s)).collect();
    // A malformed key is answered without the store: RESOURCE_EXHAUSTED
    // once the two stuck calls hold both places, MALFORMED before.
    let probe = || {
        let mut client = app.verify.clone();
        async move {
            client
                .verify_key(VerifyKeyRequest {
                    key: "kg_live_not-a-key".into(),
                    ..Default::default()
                })
                .await
        }
    };
    // A call meant to be stuck is itself shed when it arrives while a probe
    // holds the other place; it is then asked again. A probe is shed only
    // once both stuck calls hold their places, as no other call is made.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (call, secret) in stuck.iter_mut().zip(&secrets) {
            if call.is_finished() {
                let early = std::mem::replace(call, hold(secret)).await;
                let early = early
                    .expect("task")
                    .expect_err("a stuck call cannot answer");
                assert_eq!(early.code(), tonic::Code::ResourceExhausted, "{early:?}");
            }
        }
        match probe().await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break,
            Ok(r) => assert_eq!(r.into_inner().code(), VerifyCode::Malformed),
            Err(s) => panic!("a probe failed: {s:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a call to be shed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = probe().await.expect_err("still full");
    assert!(shed.message().contains("--max-in-flight"), "{shed:?}");
    assert_eq!(
        health_at(app.app.as_ref().expect("app").addr()).await,
        ServingStatus::Serving
    );
    let (_, m) = scrape(app.app.as_ref().expect("app").metrics_addr()).await;
    assert!(
        m.get("keygate_requests_shed_total{listener=\"grpc\"}")
            .copied()
            .unwrap_or(0.0)
            >= 2.0
    );

    unlock(&mut lock).await;
    for call in stuck {
        assert_eq!(
            call.await.expect("task").expect("answer"),
            VerifyCode::Valid
        );
    }
    let code = probe().await.expect("served again").into_inner().code();
    assert_eq!(code, VerifyCode::Malformed);
    app.stop().await;
}

/// A call whose metadata is over the 16 KiB limit fails alone, with a status
/// that says why, while a call in progress on the same connection is
/// answered; up to 4 × HTTP/2's own limit the connection survives even a
/// block HTTP/2 refuses itself (100 KiB: HTTP 431 for that call only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metadata_fails_only_its_own_call() {
    let app = spawn_app_with(Backend::MySql, &["--database-timeout", "30s"]).await;
    let (_, secret) = app
        .create(admin(bot_key("meta", "k", &["links:read"])))
        .await;
    let (_, slow_secret) = app
        .create(admin(bot_key("meta", "slow", &["links:read"])))
        .await;
    let channel = connect(app.app.as_ref().expect("app").addr()).await;
    let client = KeyVerifyClient::new(channel);
    // A call held in progress on this connection (its key read waits on a
    // locked table) while the oversized ones are refused.
    let mut lock = lock_keys_table(&app.db).await;
    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .verify_key(verify_req(&slow_secret, &["links:read"]))
            .await
            .map(|r| r.into_inner().code())
    });
    let padded = |bytes: usize| {
        let mut req = tonic::Request::new(verify_req(&secret, &["links:read"]));
        req.metadata_mut()
            .insert("x-padding", "a".repeat(bytes).parse().expect("ascii"));
        req
    };
    let refused = client
        .clone()
        .verify_key(padded(20 * 1024))
        .await
        .expect_err("over the limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("at most 16384"), "{refused:?}");
    let refused = client
        .clone()
        .verify_key(padded(100 * 1024))
        .await
        .expect_err("over HTTP/2's limit");
    assert_eq!(
        refused.code(),
        tonic::Code::Unknown,
        "HTTP 431: {refused:?}"
    );
    unlock(&mut lock).await;
    assert_eq!(
        slow.await
            .expect("task")
            .expect("the other call is answered"),
        VerifyCode::Valid
    );
    app.stop().await;
}

/// Reads HTTP/2 frames from `stream` until the server closes it or `within`
/// passes, sending a PING every 200 ms: the frame types received, in order,
/// or `None` when the connection was still open at the deadline.
async fn h2_frames_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffered = Vec::new();
    let mut types = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let step = tokio::time::Instant::now() + Duration::from_millis(200);
        match tokio::time::timeout_at(step.min(deadline), stream.read(&mut buf)).await {
            Err(_) if tokio::time::Instant::now() >= deadline => return None,
            // A ping: activity on the wire, but not a call.
            Err(_) => {
                let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
                if stream.write_all(&ping).await.is_err() {
                    return Some(types);
                }
            }
            Ok(Ok(0) | Err(_)) => return Some(types),
            Ok(Ok(n)) => {
                buffered.extend_from_slice(&buf[..n]);
                while buffered.len() >= 9 {
                    let len = usize::from(buffered[0]) << 16
                        | usize::from(buffered[1]) << 8
                        | usize::from(buffered[2]);
                    if buffered.len() < 9 + len {
                        break;
                    }
                    types.push(buffered[3]);
                    buffered.drain(..9 + len);
                }
            }
        }
    }
}

/// A gRPC connection with no call in progress for `--grpc-idle-timeout` is
/// closed with GOAWAY, though its client keeps pinging: pings are not calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_is_closed_with_goaway_though_it_pings() {
    let db = TestDb::create(Backend::Sqlite).await;
    let served = spawn_process_on(&db, &["--grpc-idle-timeout", "1s"]);
    let (addr, metrics) = (served.addr, served.metrics_addr);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The client preface and an empty SETTINGS frame: an HTTP/2 connection
    // that never starts a call.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    let started = Instant::now();
    let frames = h2_frames_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("an idle gRPC connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before its time"
    );
    const GOAWAY: u8 = 7;
    const PING: u8 = 6;
    assert!(
        frames.contains(&PING),
        "the pings were answered: {frames:?}"
    );
    assert!(frames.contains(&GOAWAY), "closed with GOAWAY: {frames:?}");
    eventually(
        Duration::from_secs(5),
        "the connection no longer counted",
        || async {
            let (_, m) = scrape(metrics).await;
            m.get("keygate_connections_open{listener=\"grpc\"}") == Some(&0.0)
        },
    )
    .await;
    drop(served);
    db.drop_db().await;
}
