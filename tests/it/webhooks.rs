//! Webhooks against a real HTTP receiver on loopback that checks
//! every signature with its own HMAC-SHA256 (not keygate's code): every event
//! arrives with its JSON, retried with the same `webhook-id` while the receiver
//! fails, across a SIGKILL of keygate, and exactly once with two instances
//! delivering side by side.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use keygate::proto::{self, RemoveMemberRequest, RotateKeyRequest, UpdateKeyRequest};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{store_tests, support::*};

const ORG: &str = "hooked";
/// `whsec_` + base64 of 24 bytes.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// HMAC-SHA256, written out here so the check does not share keygate's code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0_u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    id: String,
    signed: bool,
    answered: u16,
    body: Value,
}

#[derive(Default)]
pub(crate) struct Receiver {
    got: Mutex<Vec<Received>>,
    /// Requests still to refuse with 503.
    pub(crate) fail: AtomicUsize,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret");
    let mut message = format!("{id}.{ts}.").into_bytes();
    message.extend_from_slice(&body);
    let expected = format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &message)));
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (t - keygate::domain::model::Micros::now().0 / 1_000_000).abs() < 300);
    let signed = sig.split(' ').any(|s| s == expected) && fresh;
    let status = if !signed {
        StatusCode::UNAUTHORIZED
    } else if r
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    r.got.lock().expect("lock").push(Received {
        id,
        signed,
        answered: status.as_u16(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    status
}

/// Serves the receiver on `listener` until the test ends.
fn serve_receiver(listener: std::net::TcpListener, r: Arc<Receiver>) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(r);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

pub(crate) fn start_receiver(fail_first: usize) -> (Arc<Receiver>, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = Arc::new(Receiver {
        fail: AtomicUsize::new(fail_first),
        ..Receiver::default()
    });
    serve_receiver(listener, Arc::clone(&r));
    (r, addr)
}

impl Receiver {
    fn all(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Bodies of the accepted deliveries, by webhook id.
    pub(crate) fn delivered(&self) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in self.all().into_iter().filter(|r| r.answered == 204) {
            out.entry(r.id).or_default().push(r.body);
        }
        out
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut raw = RawDb::connect(db).await;
    let n = raw.count(sql).await;
    raw.close().await;
    n
}

pub(crate) fn hook_flags(addr: SocketAddr) -> Vec<String> {
    vec![
        "--webhook-url".into(),
        format!("http://{addr}/hook"),
        "--webhook-secret".into(),
        SECRET.into(),
    ]
}

pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

store_tests!(every_event_arrives_signed_and_retried_with_a_stable_id);

async fn every_event_arrives_signed_and_retried_with_a_stable_id(b: Backend) {
    let (receiver, addr) = start_receiver(3);
    let flags = hook_flags(addr);
    let app = spawn_app_with(b, &strs(&flags)).await;
    let mut c = app.admin.clone();
    let (bot, bot_secret) = app
        .create(admin(bot_key(ORG, "bot", &["links:read"])))
        .await;
    c.update_key(admin(UpdateKeyRequest {
        organization_id: ORG.into(),
        id: bot.id.clone(),
        name: "renamed bot".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
        ..Default::default()
    }))
    .await
    .expect("update");
    let rotated = c
        .rotate_key(admin(RotateKeyRequest {
            organization_id: ORG.into(),
            id: bot.id.clone(),
            grace_period: None,
        }))
        .await
        .expect("rotate")
        .into_inner();
    let (user, user_secret) = app
        .create(member("ann", user_key(ORG, "ann", &["links:read"])))
        .await;
    c.remove_member(admin(RemoveMemberRequest {
        organization_id: ORG.into(),
        user_id: "ann".into(),
    }))
    .await
    .expect("remove member");
    let events = app.events(ORG, "").await;
    assert_eq!(
        events.len(),
        7,
        "created, updated, rotated, revoked, created, created, deleted"
    );

    eventually(Duration::from_secs(30), "every event delivered", || async {
        receiver.delivered().len() == events.len()
    })
    .await;
    let all = receiver.all();
    assert!(
        all.iter().all(|r| r.signed),
        "every request carries a valid signature"
    );
    let failed: Vec<&Received> = all.iter().filter(|r| r.answered == 503).collect();
    assert_eq!(failed.len(), 3);
    let delivered = receiver.delivered();
    for f in failed {
        assert!(
            delivered.contains_key(&f.id),
            "{} retried under the same id",
            f.id
        );
        assert_eq!(delivered[&f.id][0], f.body, "the same body");
    }
    for e in &events {
        let id = format!("{ORG}-{}", e.id);
        let body = &delivered[&id][0];
        let action = e.action().as_str_name();
        let kind = action
            .trim_start_matches("KEY_EVENT_ACTION_")
            .to_lowercase();
        assert_eq!(body["type"], format!("key.{kind}"), "{body}");
        assert_eq!(body["data"]["event"]["id"], e.id.to_string());
        assert_eq!(body["data"]["event"]["action"], action);
        assert_eq!(body["data"]["event"]["keyId"], e.key_id);
        assert_eq!(body["data"]["event"]["actorId"], e.actor_id);
        assert_eq!(body["data"]["key"]["id"], e.key_id);
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let text =
        serde_json::to_string(&all.iter().map(|r| &r.body).collect::<Vec<_>>()).expect("json");
    for secret in [&bot_secret, &rotated.secret, &user_secret] {
        assert!(!text.contains(secret.as_str()), "a secret in a webhook");
    }
    // The key as its event left it: renamed in UPDATED, present in DELETED.
    let updated = &delivered[&format!("{ORG}-2")][0];
    assert_eq!(updated["data"]["key"]["name"], "renamed bot");
    assert_eq!(updated["data"]["key"]["type"], "KEY_TYPE_BOT");
    let deleted = &delivered[&format!("{ORG}-7")][0];
    assert_eq!(deleted["type"], "key.deleted");
    assert_eq!(deleted["data"]["key"]["id"], user.id);
    assert_eq!(deleted["data"]["key"]["userId"], "ann");
    let rotation = &delivered[&format!("{ORG}-3")][0];
    assert_eq!(rotation["type"], "key.rotated");
    assert_eq!(
        rotation["data"]["key"]["rotatedToId"],
        rotated.key.expect("key").id
    );
    app.stop().await;
}

/// keygate is SIGKILLed while its only endpoint is down; restarted, it delivers
/// every event once the endpoint is back, under the ids it first tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_sigkill_while_the_endpoint_is_down() {
    let db = TestDb::create(Backend::MySql).await;
    let parked = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = parked.local_addr().expect("addr");
    drop(parked); // nothing listens: every attempt fails to connect
    let flags = hook_flags(addr);
    let first = spawn_process_on(&db, &strs(&flags));
    let admin_client = proto::key_admin_client::KeyAdminClient::new(connect(first.addr).await);
    for i in 0..5 {
        admin_client
            .clone()
            .create_key(admin(bot_key(ORG, &format!("k{i}"), &["links:read"])))
            .await
            .expect("create");
    }
    let store = keygate::store::Store::connect(&db.url, &Default::default())
        .await
        .expect("store");
    eventually(
        Duration::from_secs(30),
        "every event attempted once",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE attempts >= 1",
            )
            .await
                == 5
        },
    )
    .await;
    drop(first); // SIGKILL

    let receiver = Arc::new(Receiver::default());
    serve_receiver(
        std::net::TcpListener::bind(addr).expect("rebind"),
        Arc::clone(&receiver),
    );
    let second = spawn_process_on(&db, &strs(&flags));
    eventually(
        Duration::from_secs(90),
        "every event delivered after the restart",
        || async { receiver.delivered().len() == 5 },
    )
    .await;
    let ids: BTreeSet<String> = receiver.delivered().into_keys().collect();
    let want: BTreeSet<String> = (1..=5).map(|i| format!("{ORG}-{i}")).collect();
    assert_eq!(ids, want);
    drop(second);
    store.close().await;
    db.drop_db().await;
}

/// Two instances on one database deliver side by side: each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once() {
    let (receiver, addr) = start_receiver(0);
    let flags = hook_flags(addr);
    let a = spawn_app_with(Backend::MySql, &strs(&flags)).await;
    let b = start_app(&a.db, &strs(&flags))
        .await
        .expect("second instance");
    let b_admin = proto::key_admin_client::KeyAdminClient::new(connect(b.addr()).await);
    for i in 0..20 {
        let req = admin(bot_key(ORG, &format!("k{i}"), &["links:read"]));
        if i % 2 == 0 {
            a.create(req).await;
        } else {
            b_admin.clone().create_key(req).await.expect("create");
        }
    }
    eventually(Duration::from_secs(30), "20 events delivered", || async {
        receiver.delivered().len() == 20
    })
    .await;
    // Every POST is recorded after it returns: once every row is delivered,
    // no attempt is in flight, and a duplicate would already be here.
    eventually(
        Duration::from_secs(30),
        "every delivery recorded",
        || async {
            count(
                &a.db,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 1",
            )
            .await
                == 20
        },
    )
    .await;
    for (id, bodies) in receiver.delivered() {
        assert_eq!(bodies.len(), 1, "{id} delivered {} times", bodies.len());
    }
    b.shutdown().await.expect("stop b");
    a.stop().await;
}

/// An endpoint that accepts connections and never answers holds its requests
/// open; meanwhile admin calls and verifications go on, since delivery runs on
/// its own task and holds nothing they wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_blocks_neither_admin_calls_nor_verification() {
    let held = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let app = axum::Router::new()
        .route(
            "/hook",
            post(|State(held): State<Arc<AtomicUsize>>| async move {
                held.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<StatusCode>().await
            }),
        )
        .with_state(Arc::clone(&held));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let flags = hook_flags(addr);
    let app = spawn_app_with(Backend::Sqlite, &strs(&flags)).await;
    let (_, first) = app
        .create(admin(bot_key(ORG, "first", &["links:read"])))
        .await;
    eventually(
        Duration::from_secs(30),
        "a delivery held by the endpoint",
        || async { held.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    for i in 0..10 {
        let (_, secret) = app
            .create(admin(bot_key(ORG, &format!("k{i}"), &["links:read"])))
            .await;
        assert_eq!(
            app.verify_code(verify_req(&secret, &["links:read"])).await,
            proto::VerifyCode::Valid
        );
    }
    assert_eq!(
        app.verify_code(verify_req(&first, &["links:read"])).await,
        proto::VerifyCode::Valid
    );
    assert!(held.load(Ordering::SeqCst) >= 1, "still held");
    app.stop().await;
}
