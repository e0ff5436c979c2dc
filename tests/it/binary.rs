//! The `keygate` binary as an operator runs it: flags, first run without
//! configuration, logs at trace level, health, reflection, and SIGTERM.

use std::process::Stdio;

use keygate::{
    proto::{
        RevokeKeyRequest, VerifyCode, key_admin_client::KeyAdminClient,
        key_verify_client::KeyVerifyClient,
    },
    store::{PoolConfig, Store},
};
use tonic::Request;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::*;

fn with_token<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req.metadata_mut()
        .insert("x-actor-id", "ops".parse().expect("ascii"));
    req.metadata_mut()
        .insert("x-actor-role", "admin".parse().expect("ascii"));
    req
}

async fn list_services(channel: tonic::transport::Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("reflection message")
        .expect("one response");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// A first run with no configuration but a database: a generated admin token,
/// the whole key life cycle, health and reflection, then SIGTERM flushes usage,
/// and the secret appears nowhere in a trace-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_serves_with_a_generated_token_and_stops_cleanly() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut proc = Process::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--usage-flush-interval",
            "1h",
        ],
        &[
            ("KEYGATE_DATABASE_URL", db.url.as_str()),
            ("KEYGATE_LOG_FORMAT", "json"),
            ("RUST_LOG", "trace"),
        ],
    );
    let addr = proc.wait_serving();
    // With JSON logs the token comes as one JSON log line, with how to use it.
    let token = proc.wait_for("the generated token", |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v.get("admin_token")?;
        assert_eq!(v["level"], "WARN", "{l}");
        assert!(v["usage"].as_str()?.contains("x-actor-role"), "{l}");
        v["admin_token"].as_str().map(str::to_owned)
    });
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));

    let channel = connect(addr).await;
    let mut admin_client = KeyAdminClient::new(channel.clone());
    let mut verify_client = KeyVerifyClient::new(channel.clone());
    let created = admin_client
        .create_key(with_token(
            &token,
            bot_key("acme", "first", &["links:read"]),
        ))
        .await
        .expect("the generated token works")
        .into_inner();
    let secret = created.secret;
    let id = created.key.expect("key").id;
    for _ in 0..3 {
        let resp = verify_client
            .verify_key(verify_req(&secret, &["links:read"]))
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(resp.code(), VerifyCode::Valid);
    }
    admin_client
        .revoke_key(with_token(
            &token,
            RevokeKeyRequest {
                organization_id: "acme".into(),
                id: id.clone(),
            },
        ))
        .await
        .expect("revoke");
    let refused = admin_client
        .revoke_key(with_token(
            "not-the-token",
            RevokeKeyRequest {
                organization_id: "acme".into(),
                id: id.clone(),
            },
        ))
        .await;
    assert!(refused.is_err());
    let resp = verify_client
        .verify_key(verify_req(&secret, &[]))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(resp.code(), VerifyCode::Revoked);

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let services = list_services(channel.clone()).await;
    for s in [
        "keygate.v1.KeyAdmin",
        "keygate.v1.KeyVerify",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} in {services:?}");
    }
    drop((admin_client, verify_client, channel));
    let probe = |addr: std::net::SocketAddr| {
        keygate_command()
            .args(["health", "--addr", &addr.to_string()])
            .output()
            .expect("run health")
    };
    assert!(
        probe(addr).status.success(),
        "the container health check passes"
    );

    let status = proc.terminate();
    assert!(status.success(), "graceful exit: {status}");
    let gone = probe(addr);
    assert!(!gone.status.success(), "and fails once keygate is gone");
    let said = String::from_utf8_lossy(&gone.stderr);
    assert!(
        said.contains("could not reach keygate at"),
        "says the server could not be reached, not that it failed: {said}"
    );
    let log = proc.output();
    let log_text = log.join("\n");
    assert!(log.len() > 20, "trace logging is on");
    assert!(!log_text.contains(&secret), "the secret appears in the log");
    assert!(
        !log_text.contains(&secret[secret.len() - 49..]),
        "the secret's body appears in the log"
    );
    assert_eq!(
        log_text.matches(&token).count(),
        1,
        "the token is printed once"
    );
    // JSON logs are pure JSON: every line a log consumer reads parses.
    let json: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // One structured line per admin change, naming actor, organization, key and action...
    let changes: Vec<_> = json
        .iter()
        .filter(|v| v["message"] == "key changed")
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for (line, action) in changes.iter().zip(["created", "revoked"]) {
        assert_eq!(line["actor"], "ops");
        assert_eq!(line["organization_id"], "acme");
        assert_eq!(line["key_id"], id.as_str());
        assert_eq!(line["action"], action);
    }
    // ...and one per refused admin call.
    let denied: Vec<_> = json
        .iter()
        .filter(|v| v["message"] == "admin call denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["method"], "RevokeKey");
    // Verification outcomes are debug lines, never info.
    let verified: Vec<_> = json.iter().filter(|v| v["message"] == "verified").collect();
    assert_eq!(verified.len(), 4, "one per verification that found the key");
    assert!(verified.iter().all(|v| v["level"] == "DEBUG"));

    // The four verifications that found the key were flushed at shutdown.
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("open store");
    let org = keygate::model::OrganizationId::parse("acme").expect("org");
    let key_id = keygate::model::KeyId::parse(&id).expect("id");
    let key = store
        .get_key(&org, &key_id)
        .await
        .expect("read")
        .expect("key exists");
    assert_eq!(key.request_count, 4);
    store.close().await;
    db.drop_db().await;
}

/// `keygate migrate` creates the schema, and running it again changes nothing.
async fn migrate_is_idempotent(backend: Backend) {
    let db = TestDb::create(backend).await;
    for _ in 0..2 {
        let status = keygate_command()
            .args(["migrate", "--database-url", &db.url])
            .stderr(Stdio::null())
            .status()
            .expect("run migrate");
        assert!(status.success());
    }
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("open");
    assert_eq!(store.last_event_id().await.expect("schema exists"), 0);
    store.close().await;
    db.drop_db().await;
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    for (args, says) in [
        (vec!["serve", "--key-prefix", "Bad_Prefix"], "key prefix"),
        (vec!["serve", "--listen", "nowhere"], "--listen"),
        (
            vec!["serve", "--invalidation-interval", "soon"],
            "--invalidation-interval",
        ),
        (
            vec!["serve", "--database-url", "postgres://x"],
            "unsupported database url",
        ),
    ] {
        let out = keygate_command().args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A first run against a fresh MySQL server: `migrate` creates the database the
/// URL names instead of failing on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_missing_mysql_database() {
    let name = format!(
        "kgt_new_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("{}/{name}", mysql_server_url());
    let out = keygate_command()
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run migrate");
    let db = TestDb::adopt_mysql(&name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::connect(&url, &PoolConfig::default())
        .await
        .expect("the database exists now");
    assert_eq!(store.last_event_id().await.expect("schema exists"), 0);
    store.close().await;
    db.drop_db().await;
}

crate::store_tests!(migrate_is_idempotent);
