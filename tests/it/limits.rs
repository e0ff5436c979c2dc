//! Transport limits: calls beyond a connection's concurrency limit are refused at
//! once with RESOURCE_EXHAUSTED (shed, never queued), and a call that holds its
//! slot past the request timeout is ended with CANCELLED.
//!
//! Two of these tests hold a slot deterministically instead of hoping for a race:
//! a client-streaming call to the unary VerifyKey method sends its headers but no
//! message, so the server's handler sits waiting for the request body, slot held,
//! until the test sends it. That is also exactly the slow client a request
//! timeout exists for.

use std::time::{Duration, Instant};

use clap::Parser;
use keygate::{
    config::Cli,
    domain::keys::{KeyPrefix, Secret},
    proto::{VerifyCode, VerifyKeyRequest, VerifyKeyResponse, key_verify_client::KeyVerifyClient},
};
use tokio::{
    sync::{Barrier, mpsc},
    task::{JoinHandle, JoinSet},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request, Response, Status, codegen::http::uri::PathAndQuery, transport::Channel,
};

use crate::support::*;

/// How long a test waits for something that should take milliseconds.
const STEP: Duration = Duration::from_secs(10);

fn unknown_key() -> String {
    Secret::generate(&KeyPrefix::default()).into_exposed()
}

/// A VerifyKey call whose request message is sent only when the test says so.
struct HeldCall {
    release: mpsc::Sender<VerifyKeyRequest>,
    call: JoinHandle<Result<Response<VerifyKeyResponse>, Status>>,
}

/// Starts a VerifyKey call on `channel` that sends its headers now and its
/// message never, until [`HeldCall::release`] is used.
fn hold_call(channel: Channel) -> HeldCall {
    let (release, rx) = mpsc::channel(1);
    let call = tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
        // A unary method called as client-streaming: same path, same messages,
        // but the body is a stream the test controls.
        grpc.client_streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/keygate.v1.KeyVerify/VerifyKey"),
            tonic_prost::ProstCodec::<VerifyKeyRequest, VerifyKeyResponse>::default(),
        )
        .await
    });
    HeldCall { release, call }
}

/// Calls VerifyKey for a made-up key, failing the test if no answer comes within
/// [`STEP`]: a call beyond the limit must be answered, not parked.
async fn probe(client: &KeyVerifyClient<Channel>) -> Result<VerifyCode, Status> {
    let mut client = client.clone();
    let call = client.verify_key(verify_req(&unknown_key(), &[]));
    tokio::time::timeout(STEP, call)
        .await
        .expect("a call is answered promptly, not queued")
        .map(|r| r.into_inner().code())
}

/// The main case: a burst over ONE connection (one Channel, so one HTTP/2
/// connection and one per-connection limit) against a limit of 1.
///
/// Why this reliably goes over the limit: the limit is 1 and both caches are off,
/// so every call does a real SQLite lookup (a hop to sqlx's worker thread, tens
/// to hundreds of microseconds) while holding the only slot. The 200 calls are
/// released together by a barrier and leave in a handful of TCP writes; hyper
/// spawns a task per stream as it reads them, so for none to be shed every call
/// would have to finish before the next was even read. The assertion is only
/// "some", not "how many". When shedding breaks (calls queue instead), all 200
/// answer OK and the test fails; see also the deterministic test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_connection_limit_is_shed_with_resource_exhausted() {
    const BURST: usize = 200;
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--max-concurrent-requests-per-connection",
            "1",
            "--cache-capacity",
            "0",
            "--negative-cache-capacity",
            "0",
        ],
    )
    .await;
    let client = app.verify.clone();

    let start = std::sync::Arc::new(Barrier::new(BURST));
    let mut calls = JoinSet::new();
    for _ in 0..BURST {
        let mut client = client.clone();
        let start = std::sync::Arc::clone(&start);
        let key = unknown_key();
        calls.spawn(async move {
            start.wait().await;
            client
                .verify_key(verify_req(&key, &[]))
                .await
                .map(|r| r.into_inner().code())
        });
    }
    let (mut ok, mut shed, mut other) = (0, 0, Vec::new());
    let all = async {
        while let Some(result) = calls.join_next().await {
            match result.expect("call task") {
                Ok(code) => {
                    assert_eq!(code, VerifyCode::NotFound);
                    ok += 1;
                }
                Err(s) if s.code() == Code::ResourceExhausted => shed += 1,
                Err(s) => other.push(s),
            }
        }
    };
    tokio::time::timeout(STEP * 3, all)
        .await
        .expect("the burst is answered");
    assert!(other.is_empty(), "only OK or RESOURCE_EXHAUSTED: {other:?}");
    assert!(shed > 0, "none of {BURST} calls was shed ({ok} OK)");
    assert!(ok > 0, "the call holding the slot is answered");
    assert_eq!(ok + shed, BURST);

    // Shedding leaves nothing behind: the connection serves the next call.
    assert_eq!(probe(&client).await.expect("served"), VerifyCode::NotFound);
    app.stop().await;
}

/// Deterministic: while a call holds the only slot of a connection, the next
/// call on it is refused at once with RESOURCE_EXHAUSTED; other connections are
/// not affected; releasing the slot makes the connection usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_limit_is_refused_at_once_while_the_slot_is_held() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--max-concurrent-requests-per-connection",
            "1",
            // Long enough never to end the held call during the test.
            "--request-timeout",
            "60s",
        ],
    )
    .await;
    let addr = app.app.as_ref().expect("app").addr();
    let channel = connect(addr).await;
    let client = KeyVerifyClient::new(channel.clone());
    let mut held = hold_call(channel.clone());

    // The held call takes the slot once the server has read its headers; until
    // then a probe may still be served, so probe until one is shed. A probe that
    // holds the slot when the held call arrives sheds the held call instead: then
    // the held call is made again.
    let deadline = Instant::now() + STEP;
    loop {
        match probe(&client).await {
            Ok(code) => assert_eq!(code, VerifyCode::NotFound),
            Err(s) if s.code() == Code::ResourceExhausted => break,
            Err(s) => panic!("only OK or RESOURCE_EXHAUSTED: {s:?}"),
        }
        if held.call.is_finished() {
            let shed = held.call.await.expect("call task");
            assert_eq!(
                shed.expect_err("the held call cannot be served before it is released")
                    .code(),
                Code::ResourceExhausted
            );
            held = hold_call(channel.clone());
        }
        assert!(
            Instant::now() < deadline,
            "calls were never shed while a slot was held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !held.call.is_finished(),
        "the held call is still in progress"
    );
    // Refused again, every time, for as long as the slot is held.
    for _ in 0..5 {
        let status = probe(&client).await.expect_err("the slot is still held");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    // The limit is per connection: another connection has its own slot.
    let other = KeyVerifyClient::new(connect(addr).await);
    assert_eq!(probe(&other).await.expect("served"), VerifyCode::NotFound);

    held.release
        .send(verify_req(&unknown_key(), &[]))
        .await
        .expect("the held call still waits for its message");
    drop(held.release);
    let answer = tokio::time::timeout(STEP, held.call)
        .await
        .expect("the released call completes")
        .expect("call task")
        .expect("the held call itself is served");
    assert_eq!(answer.into_inner().code(), VerifyCode::NotFound);
    assert_eq!(probe(&client).await.expect("served"), VerifyCode::NotFound);
    app.stop().await;
}

/// Deterministic: a call still in progress when the request timeout passes is
/// ended by the server with CANCELLED (tonic's answer to its own timeout), and
/// its slot is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_the_request_timeout_is_cancelled() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--request-timeout",
            "300ms",
            "--max-concurrent-requests-per-connection",
            "1",
        ],
    )
    .await;
    let channel = connect(app.app.as_ref().expect("app").addr()).await;
    let client = KeyVerifyClient::new(channel.clone());

    let started = Instant::now();
    let held = hold_call(channel);
    let status = tokio::time::timeout(STEP, held.call)
        .await
        .expect("the server ends the call; without a timeout it would wait forever")
        .expect("call task")
        .expect_err("a call that never sends its message cannot succeed");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        elapsed >= TIMEOUT,
        "ended after {elapsed:?}, before the timeout"
    );
    drop(held.release);

    // The slot came back: the connection's one slot serves the next call.
    assert_eq!(probe(&client).await.expect("served"), VerifyCode::NotFound);
    app.stop().await;
}

#[test]
fn limit_flags_refuse_zero() {
    for args in [
        ["--max-concurrent-requests-per-connection", "0"],
        ["--request-timeout", "0s"],
        ["--request-timeout", "soon"],
        ["--lookup-concurrency", "0"],
    ] {
        let mut argv = vec!["keygate", "serve"];
        argv.extend_from_slice(&args);
        let err = Cli::try_parse_from(argv).expect_err("refused");
        assert!(err.to_string().contains(args[0]), "{args:?}: {err}");
    }
}
