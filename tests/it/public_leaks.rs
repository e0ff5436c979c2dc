//! `POST /v1/leaks/report`: anyone's report of a leaked key. A live key named
//! in full is revoked by `public-report`; the answer is byte for byte the same
//! for a live key, a forged key and junk; the body is bounded; each client
//! address has its own allowance.

use keygate::{
    domain::keys::{KeyPrefix, Secret},
    proto::{KeyEventAction, VerifyCode},
};

use crate::support::*;

async fn report(http: std::net::SocketAddr, local: &str, body: String) -> (u16, String, String) {
    let client = http_client_from(local);
    let resp = client
        .post(format!("http://{http}/v1/leaks/report"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, resp.text().await.expect("body"))
}

fn tokens(list: &[&str]) -> String {
    serde_json::json!({ "tokens": list }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_revokes_a_live_key_and_answers_the_same_for_anything() {
    let app = spawn_app_with(Backend::Sqlite, &["--http-listen", "127.0.0.1:0"]).await;
    let http = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (key, secret) = app
        .create(admin(bot_key("acme", "leaky", &["links:read"])))
        .await;
    let (kept, kept_secret) = app
        .create(admin(bot_key("acme", "kept", &["links:read"])))
        .await;
    // Well-formed, checksum and all, but no key of this instance.
    let forged = Secret::generate(&KeyPrefix::default());
    let (live, forged, junk) = tokio::join!(
        report(http, "127.0.0.1", tokens(&[&secret])),
        report(http, "127.0.0.1", tokens(&[forged.expose()])),
        report(http, "127.0.0.1", tokens(&["not a key at all"])),
    );
    let answers = [live, forged, junk];
    for a in &answers {
        assert_eq!(a, &answers[0], "the answer tells nothing about the token");
    }
    assert_eq!(
        answers[0],
        (
            202,
            "application/json".to_owned(),
            r#"{"received":1}"#.to_owned()
        )
    );
    // The live key is revoked, with the events of a leak by public-report.
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Revoked
    );
    let events = app.events("acme", &key.id).await;
    let leaked: Vec<(i32, &str)> = events
        .iter()
        .skip(1)
        .map(|e| (e.action, e.actor_id.as_str()))
        .collect();
    assert_eq!(
        leaked,
        [
            (KeyEventAction::Leaked as i32, "public-report"),
            (KeyEventAction::Revoked as i32, "public-report")
        ]
    );
    // Nothing else changed.
    assert!(!app.get("acme", &kept.id).await.revoked);
    assert_eq!(
        app.verify_code(verify_req(&kept_secret, &["links:read"]))
            .await,
        VerifyCode::Valid
    );
    // Reporting it again, or with the others, answers the same and changes nothing more.
    let again = report(http, "127.0.0.1", tokens(&[&secret, "junk"])).await;
    assert_eq!(
        again,
        (
            202,
            "application/json".to_owned(),
            r#"{"received":2}"#.to_owned()
        )
    );
    assert_eq!(app.events("acme", &key.id).await.len(), events.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_refused_and_each_address_has_its_own_allowance() {
    let app = spawn_app_with(Backend::Sqlite, &["--http-listen", "127.0.0.1:0"]).await;
    let http = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (_, secret) = app
        .create(admin(bot_key("acme", "k", &["links:read"])))
        .await;
    let many: Vec<String> = (0..101).map(|i| format!("junk{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for body in [
        tokens(&many),
        format!(r#"["{secret}"]"#),
        r#"{"tokens": "one"}"#.to_owned(),
        r#"{"tokens": [], "extra": 1}"#.to_owned(),
    ] {
        let (status, _, text) = report(http, "127.0.0.2", body).await;
        assert_eq!(status, 400, "{text}");
        assert!(!text.contains(&secret), "an error repeats no token");
    }
    // The four refusals spent four of 127.0.0.2's ten; six more pass at once,
    // then it must wait, while another address still may report.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..7 {
        burst.spawn(report(http, "127.0.0.2", tokens(&[])));
    }
    let mut statuses: Vec<u16> = burst.join_all().await.iter().map(|(s, _, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 202, 202, 202, 202, 202, 429]);
    assert_eq!(report(http, "127.0.0.3", tokens(&[])).await.0, 202);
    assert_eq!(
        app.verify_code(verify_req(&secret, &["links:read"])).await,
        VerifyCode::Valid,
        "no refused report revoked anything"
    );
    app.stop().await;
}
