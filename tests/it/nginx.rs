//! A real nginx (Debian's, which has `auth_request`) in front of a small
//! upstream, configured with the file we ship (`deploy/edge/nginx.conf`, only
//! its ports changed), asking a real keygate on `/v1/authorize`: a valid key
//! reaches the upstream, which sees the caller's identity and never the secret;
//! a missing key gets 401, a wrong scope 403, an unknown route 403, a spent
//! rate limit 429; no refused request reaches the upstream.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::HeaderMap};

use crate::{
    edge::{hoko_policy, once_a_minute},
    support::*,
};

const ORG: &str = "hoko";

/// The headers of every request the upstream received.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let record = Arc::clone(&record);
        async move {
            record.lock().expect("lock").push(headers);
            "from the upstream"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers before it
    /// exits. Killed outright, it would leave them running, still holding
    /// the listening socket.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// Starts nginx on the shipped configuration, pointed at `keygate` and `upstream`.
async fn nginx(keygate: SocketAddr, upstream: SocketAddr) -> Nginx {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/edge/nginx.conf"),
    )
    .expect("deploy/edge/nginx.conf");
    let port = free_port();
    let conf = shipped
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:8080", &keygate.to_string())
        .replace("127.0.0.1:9000", &upstream.to_string());
    for (what, from) in [
        ("the listener", "listen 8000;"),
        ("keygate", "127.0.0.1:8080"),
        ("the upstream", "127.0.0.1:9000"),
    ] {
        assert!(
            shipped.contains(from),
            "nginx.conf no longer names {what} as {from}"
        );
    }
    let dir = std::env::temp_dir().join(format!("keygate-nginx-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&path)
        .arg("-g")
        .arg(format!("daemon off; pid {}/nginx.pid;", dir.display()))
        .stdout(Stdio::null())
        // Its log (an expected "unexpected status: 429" among it) stays with it.
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log file"))
        .spawn()
        .expect("nginx must be installed (Debian package nginx; .ci/run installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let nginx = Nginx { child, dir, addr };
    eventually(Duration::from_secs(20), "nginx to listen", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    nginx
}

/// The status line of `GET path`, sent byte for byte.
async fn raw_get(addr: SocketAddr, path: &str, authorization: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: api.hoko.example\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_lets_only_allowed_requests_through_without_the_secret() {
    let policy = hoko_policy();
    let app = spawn_app_with(
        Backend::Sqlite,
        &["--http-listen", "127.0.0.1:0", "--route-policy", &policy],
    )
    .await;
    let keygate = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (upstream, seen) = upstream().await;
    let nginx = nginx(keygate, upstream).await;
    let base = format!("http://{}", nginx.addr);
    let client = reqwest::Client::new();

    let (reader, reader_secret) = app
        .create(admin(user_key(ORG, "reader", &["links:read"])))
        .await;
    let (limited, limited_secret) = app.create(admin(once_a_minute(ORG))).await;

    // Allowed: the upstream answers and sees who called, not the key.
    let resp = client
        .get(format!("{base}/api/links?page=2"))
        .bearer_auth(&reader_secret)
        .header("x-keygate-key-id", "forged")
        .header("x-keygate-user-id", "admin")
        .send()
        .await
        .expect("nginx answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "from the upstream");
    let resp = client
        .get(format!("{base}/api/links/abc"))
        .header("x-api-key", &limited_secret)
        .header("x-keygate-user-id", "admin")
        // The spelling CGI, WSGI and Rack-style upstreams read as the same
        // variable; nginx drops header names with underscores by default.
        .header("x_keygate_user_id", "admin")
        .send()
        .await
        .expect("nginx answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-limit"], "1");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 2);
        let value = |h: &HeaderMap, name: &str| {
            h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        assert_eq!(value(&seen[0], "x-keygate-key-id"), Some(reader.id.clone()));
        assert_eq!(
            value(&seen[0], "x-keygate-organization-id").as_deref(),
            Some(ORG)
        );
        assert_eq!(
            value(&seen[0], "x-keygate-key-type").as_deref(),
            Some("user")
        );
        assert_eq!(
            value(&seen[0], "x-keygate-user-id"),
            Some(reader.user_id.clone())
        );
        assert_eq!(
            value(&seen[1], "x-keygate-key-id"),
            Some(limited.id.clone())
        );
        assert_eq!(
            value(&seen[1], "x-keygate-key-type").as_deref(),
            Some("bot")
        );
        assert_eq!(
            value(&seen[1], "x-keygate-user-id"),
            None,
            "a bot key has no user"
        );
        for h in seen.iter() {
            assert!(
                !h.contains_key("authorization") && !h.contains_key("x-api-key"),
                "{h:?}"
            );
            assert!(
                !h.keys()
                    .any(|k| keygate::api::edge::in_identity_namespace(k.as_str())
                        && k.as_str().contains('_')),
                "an underscore spelling reached the upstream: {h:?}"
            );
            let all = format!("{h:?}");
            assert!(!all.contains(&reader_secret) && !all.contains(&limited_secret));
        }
    }

    // Refused: each with its status; none reaches the upstream.
    let refusals: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.get(format!("{base}/api/links")),
            401,
            "VERIFY_CODE_MISSING",
        ),
        (
            client
                .post(format!("{base}/api/links"))
                .bearer_auth(&reader_secret),
            403,
            "VERIFY_CODE_INSUFFICIENT_SCOPE",
        ),
        (
            client
                .get(format!("{base}/api/admin"))
                .bearer_auth(&reader_secret),
            403,
            "ROUTE_NOT_ALLOWED",
        ),
        (
            client
                .get(format!("{base}/api/links/../admin"))
                .bearer_auth(&reader_secret),
            403,
            "ROUTE_NOT_ALLOWED",
        ),
        (
            client
                .get(format!("{base}/api/links/abc"))
                .header("x-api-key", &limited_secret),
            429,
            "VERIFY_CODE_RATE_LIMITED",
        ),
    ];
    for (req, status, code) in refusals {
        let resp = req.send().await.expect("nginx answers");
        assert_eq!(resp.status().as_u16(), status, "{code}");
        assert_eq!(resp.headers()["x-keygate-code"], code);
        match status {
            401 => assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"keygate\""
            ),
            429 => assert!(
                resp.headers()["retry-after"]
                    .to_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| (1..=60).contains(&s))
            ),
            _ => {}
        }
    }
    // Traversal sent as is (an HTTP client library would resolve it first).
    for path in [
        "/api/links/../admin",
        "/api/links/%2e%2e/admin",
        "/api/links%2Fx",
    ] {
        let auth = format!("Bearer {reader_secret}");
        assert_eq!(raw_get(nginx.addr, path, &auth).await, 403, "{path}");
    }
    assert_eq!(
        seen.lock().expect("lock").len(),
        2,
        "no refused request reached the upstream"
    );
    let listening = nginx.addr;
    drop(nginx);
    // Every process nginx started is gone: nothing listens on its port.
    assert!(
        std::net::TcpStream::connect(listening).is_err(),
        "an nginx worker outlived the test"
    );
    app.stop().await;
}

/// The shipped config tells keygate who presented the key: the address nginx
/// saw, replacing whatever `X-Forwarded-For` the client wrote, and never the
/// client's own `X-Client-Principal`. keygate trusts nginx's address
/// (`--trusted-proxies`), as the config's header says to run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_the_client_address_and_drops_a_forged_one() {
    let policy = hoko_policy();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--route-policy",
            &policy,
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    let keygate = app.app.as_ref().and_then(|a| a.http_addr()).expect("http");
    let (upstream, seen) = upstream().await;
    let nginx = nginx(keygate, upstream).await;
    let base = format!("http://{}", nginx.addr);
    let restricted = |name: &str, networks: &[&str], principals: &[&str]| {
        let mut req = bot_key(ORG, name, &["links:read"]);
        req.allowed_networks = networks.iter().map(|s| (*s).to_owned()).collect();
        req.bound_principals = principals.iter().map(|s| (*s).to_owned()).collect();
        admin(req)
    };
    let (_, here) = app.create(restricted("here", &["127.0.0.1"], &[])).await;
    let (_, elsewhere) = app
        .create(restricted("elsewhere", &["10.0.0.0/8"], &[]))
        .await;
    let (_, bound) = app
        .create(restricted(
            "bound",
            &[],
            &["spiffe://hoko.example/ns/billing/sa/api"],
        ))
        .await;
    let client = reqwest::Client::new();
    for (secret, status, code) in [
        (&here, 200, "VERIFY_CODE_VALID"),
        (&elsewhere, 403, "VERIFY_CODE_NETWORK_BLOCKED"),
        (&bound, 403, "VERIFY_CODE_PRINCIPAL_MISMATCH"),
    ] {
        let resp = client
            .get(format!("{base}/api/links"))
            .bearer_auth(secret)
            // What a client would write to step around the restrictions.
            .header("x-forwarded-for", "10.1.2.3")
            .header(
                "x-client-principal",
                "spiffe://hoko.example/ns/billing/sa/api",
            )
            .send()
            .await
            .expect("nginx answers");
        assert_eq!(resp.status().as_u16(), status, "{code}");
        if status != 200 {
            assert_eq!(resp.headers()["x-keygate-code"], code);
        }
    }
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "only the allowed request"
    );
    drop(nginx);
    app.stop().await;
}
