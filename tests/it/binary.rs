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

/// A first run with no configuration but a database: a generated admin token
/// (in a file of mode 0600, never in the log),
/// the whole key life cycle, Envoy's Check and forward auth, health and
/// reflection, then SIGTERM flushes usage, and the secret appears nowhere in a
/// trace-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_serves_with_a_generated_token_and_stops_cleanly() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut proc = Process::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
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
    let http = proc.wait_serving_http();
    // Not on a terminal, so the token is in a file only this user can read,
    // and the log names the file, never the token.
    let token_file = proc.wait_for("the generated token's file", |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let path = v.get("token_file")?.as_str()?.to_owned();
        assert_eq!(v["level"], "WARN", "{l}");
        assert!(v["usage"].as_str()?.contains("x-actor-role"), "{l}");
        Some(std::path::PathBuf::from(path))
    });
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("the token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reads it");
    let token = std::fs::read_to_string(&token_file)
        .expect("read the token")
        .trim()
        .to_owned();
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
    // The edge entry points, at trace level too: Envoy's Check and forward auth.
    let check = envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(envoy_types::pb::envoy::service::auth::v3::AttributeContext {
            request: Some(envoy_types::pb::envoy::service::auth::v3::attribute_context::Request {
                http: Some(
                    envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/api/links".into(),
                        headers: [("authorization".to_owned(), format!("Bearer {secret}"))]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let checked =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel.clone(),
        )
        .check(check)
        .await
        .expect("Envoy's Check answers")
        .into_inner();
    assert_eq!(checked.status.map(|s| s.code), Some(0), "allowed");
    let forwarded = reqwest::Client::new()
        .get(format!("http://{http}/v1/authorize"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("forward auth answers");
    assert_eq!(forwarded.status(), 200);
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
    assert!(!log_text.contains(&token), "the token appears in the log");
    assert!(
        !token_file.exists(),
        "the token file is removed at shutdown"
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
    // Three VerifyKey calls, Envoy's Check, forward auth, and the call after
    // the revoke.
    assert_eq!(verified.len(), 6, "one per verification that found the key");
    assert!(verified.iter().all(|v| v["level"] == "DEBUG"));

    // The six verifications that found the key were flushed at shutdown.
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("open store");
    let org = keygate::domain::model::OrganizationId::parse("acme").expect("org");
    let key_id = keygate::domain::model::KeyId::parse(&id).expect("id");
    let key = store
        .get_key(&org, &key_id)
        .await
        .expect("read")
        .expect("key exists");
    assert_eq!(key.request_count, 6);
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

/// `serve --help` groups its flags under headings, one per part of keygate,
/// and says what a flag needs with it.
#[test]
fn serve_help_is_grouped_by_part() {
    let out = keygate_command()
        .args(["serve", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let mut at = 0;
    for heading in [
        "Store:",
        "Listeners:",
        "Keys and admin:",
        "Cache:",
        "Usage and retention:",
        "Connections:",
        "Edge (Envoy and forward auth):",
        "Webhooks and leak reports:",
        "Limits:",
        "TLS:",
    ] {
        let found = help[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("{heading} in\n{help}"));
        at += found + 1;
    }
    let secret_help = help
        .split("--webhook-secret <WEBHOOK_SECRET>")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default();
    assert!(
        secret_help.contains("required with `--webhook-url`"),
        "--webhook-secret's help: {secret_help:?}"
    );
    assert!(
        !help.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );
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

/// Without --admin-tokens, keygate generates a token only when every listener
/// is on loopback; with any other address it refuses to start, naming the
/// flag and the address, before it touches the store.
#[test]
fn no_generated_admin_token_on_a_public_listener() {
    let dir = std::env::temp_dir().join(format!("kgt-public-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).expect("dir");
    let db = format!("sqlite://{}/keygate.db", dir.display());
    for flag in [
        "--listen",
        "--admin-listen",
        "--http-listen",
        "--metrics-listen",
    ] {
        let out = keygate_command()
            .args(["serve", "--database-url", &db, flag, "0.0.0.0:0"])
            .env_remove("KEYGATE_ADMIN_TOKENS")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--admin-tokens") && stderr.contains("0.0.0.0:0"),
            "{flag}: {stderr}"
        );
        // Logged (pretty format) to a pipe, not a terminal: no colour codes.
        assert!(
            !stderr.contains('\u{1b}'),
            "{flag}: colour codes in {stderr:?}"
        );
    }
    assert!(
        !dir.join("keygate.db").exists(),
        "the store was not touched"
    );

    // With tokens, the HTTP listener off loopback still needs TLS.
    let out = keygate_command()
        .args([
            "serve",
            "--database-url",
            &db,
            "--admin-tokens",
            "t0ken-for-the-test",
        ])
        .args(["--http-listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("0.0.0.0:0"),
        "{stderr}"
    );
    assert!(
        !dir.join("keygate.db").exists(),
        "the store was not touched"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
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
