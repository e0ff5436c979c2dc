//! Leak reports (`POST /v1/leaks/github`) on both stores, signed
//! with a P-256 key pair the test makes, as GitHub signs them: each live key a
//! valid report names is revoked at once (events LEAKED then REVOKED by
//! `secret-scanning`) and labelled; a report without a valid signature gets 401
//! and changes nothing; a body over 1 MiB is refused.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use keygate::{
    domain::keys::SecretHash,
    proto::{KeyEventAction, VerifyCode},
};
use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    pkcs8::{EncodePublicKey, LineEnding},
};
use serde_json::{Value, json};

use crate::{store_tests, support::*};

const ORG: &str = "leaky";

pub(crate) struct Reporter {
    pub(crate) app: TestApp,
    pub(crate) url: String,
    github: SigningKey,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub(crate) async fn reporter(b: Backend) -> Reporter {
    let github = SigningKey::from_slice(&[42; 32]).expect("a valid scalar");
    let dir = std::env::temp_dir().join(format!("kg-leaks-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keys = dir.join("github-keys.json");
    let pem = github
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let file = json!({"public_keys": [
        {"key_identifier": "old-key", "key": SigningKey::from_slice(&[7; 32]).expect("key")
            .verifying_key().to_public_key_pem(LineEnding::LF).expect("pem"), "is_current": false},
        {"key_identifier": "github-1", "key": pem, "is_current": true},
    ]});
    std::fs::write(&keys, file.to_string()).expect("write keys");
    let keys = keys.to_str().expect("utf-8 path").to_owned();
    let app = spawn_app_with(
        b,
        &["--http-listen", "127.0.0.1:0", "--leak-report-keys", &keys],
    )
    .await;
    let addr = app
        .app
        .as_ref()
        .and_then(|a| a.http_addr())
        .expect("http listener");
    Reporter {
        app,
        url: format!("http://{addr}/v1/leaks/github"),
        github,
        _dir: tempdir::Dir(dir),
    }
}

fn uuid_like() -> String {
    format!("{}-{}", std::process::id(), rand::random::<u64>())
}

fn report(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"token": t, "type": "keygate_api_key", "url": "https://github.com/o/r/blob/x", "source": "content"}))
        .collect();
    serde_json::to_vec(&items).expect("json")
}

impl Reporter {
    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.github.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    async fn post(
        &self,
        body: Vec<u8>,
        id: Option<&str>,
        signature: Option<String>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(id) = id {
            req = req.header("Github-Public-Key-Identifier", id);
        }
        if let Some(s) = signature {
            req = req.header("Github-Public-Key-Signature", s);
        }
        let resp = req.send().await.expect("an HTTP answer");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn signed(&self, body: Vec<u8>) -> (u16, Value) {
        let signature = self.sign(&body);
        self.post(body, Some("github-1"), Some(signature)).await
    }
}

fn sha256_hex(s: &str) -> String {
    SecretHash::of(s).to_hex()
}

store_tests!(
    a_signed_report_revokes_each_live_key_it_names,
    a_report_without_a_valid_signature_changes_nothing,
);

async fn a_signed_report_revokes_each_live_key_it_names(b: Backend) {
    let r = reporter(b).await;
    let app = &r.app;
    let (leaked, leaked_secret) = app
        .create(admin(bot_key(ORG, "leaked", &["links:read"])))
        .await;
    let (old, old_secret) = app
        .create(admin(bot_key(ORG, "old", &["links:read"])))
        .await;
    app.revoke(ORG, &old.id).await;
    let (safe, safe_secret) = app
        .create(admin(bot_key(ORG, "safe", &["links:read"])))
        .await;

    let tokens = [
        leaked_secret.as_str(),
        old_secret.as_str(),
        "ghp_notakeygatekeyatall",
        leaked_secret.as_str(),
    ];
    let (status, answer) = r.signed(report(&tokens)).await;
    assert_eq!(status, 200, "{answer}");
    let want: Vec<Value> = tokens
        .iter()
        .zip(["true_positive", "false_positive", "false_positive", "true_positive"])
        .map(|(t, label)| {
            json!({"token_hash": sha256_hex(t), "token_type": "keygate_api_key", "label": label})
        })
        .collect();
    assert_eq!(answer, Value::Array(want));
    assert!(
        !answer.to_string().contains(&leaked_secret),
        "never the secret"
    );

    assert_eq!(
        app.verify_code(verify_req(&leaked_secret, &["links:read"]))
            .await,
        VerifyCode::Revoked,
        "revoked at once"
    );
    assert_eq!(
        app.verify_code(verify_req(&safe_secret, &["links:read"]))
            .await,
        VerifyCode::Valid
    );
    let events: Vec<(KeyEventAction, String)> = app
        .events(ORG, &leaked.id)
        .await
        .into_iter()
        .map(|e| (e.action(), e.actor_id))
        .collect();
    assert_eq!(
        events,
        [
            (KeyEventAction::Created, "admin-1".into()),
            (KeyEventAction::Leaked, "secret-scanning".into()),
            (KeyEventAction::Revoked, "secret-scanning".into()),
        ]
    );
    assert_eq!(
        app.events(ORG, &old.id).await.len(),
        2,
        "CREATED, REVOKED: nothing new"
    );
    assert_eq!(app.events(ORG, &safe.id).await.len(), 1);

    // The same report again: nothing left to revoke.
    let (status, answer) = r.signed(report(&[&leaked_secret])).await;
    assert_eq!(status, 200);
    assert_eq!(answer[0]["label"], "false_positive");
    assert_eq!(app.events(ORG, &leaked.id).await.len(), 3);
    r.app.stop().await;
}

async fn a_report_without_a_valid_signature_changes_nothing(b: Backend) {
    let r = reporter(b).await;
    let app = &r.app;
    let (key, secret) = app.create(admin(bot_key(ORG, "k", &["links:read"]))).await;
    let body = report(&[&secret]);
    let other = report(&["ghp_something_else"]);
    let cases = [
        ("no headers", None, None),
        ("no signature", Some("github-1"), None),
        ("unknown key", Some("github-9"), Some(r.sign(&body))),
        ("tampered body", Some("github-1"), Some(r.sign(&other))),
        (
            "another key's signature",
            Some("old-key"),
            Some(r.sign(&body)),
        ),
        ("not base64", Some("github-1"), Some("%%%".to_owned())),
    ];
    for (what, id, signature) in cases {
        let (status, answer) = r.post(body.clone(), id, signature).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(answer["message"].is_string(), "{what}: {answer}");
    }
    let (status, _) = r
        .post(
            vec![b' '; (1 << 20) + 1],
            Some("github-1"),
            Some(r.sign(b"x")),
        )
        .await;
    assert_eq!(status, 413, "over 1 MiB");
    let bad = b"{\"not\": \"an array\"}".to_vec();
    let signature = r.sign(&bad);
    let (status, answer) = r.post(bad, Some("github-1"), Some(signature)).await;
    assert_eq!(status, 400, "{answer}");

    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid,
        "nothing changed"
    );
    assert_eq!(app.events(ORG, &key.id).await.len(), 1);
    r.app.stop().await;
}
