//! Transport security and listeners: TLS, mTLS (client certificates required and
//! checked against the configured CA) and KeyAdmin on a listener of its own.
//!
//! Every certificate is generated here, per test, into a temporary directory that
//! is removed afterwards: no key is ever committed.
//!
//! Size: the throwaway PKI these tests need takes a third of the file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use keygate::{
    app::{App, AppError},
    config::{Cli, Command as KeygateCommand},
    domain::keys::{KeyPrefix, Secret},
    proto::{VerifyCode, key_admin_client::KeyAdminClient, key_verify_client::KeyVerifyClient},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::*;

/// How long any single network step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(10);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway PKI: the CA keygate trusts for clients and that signed its server
/// certificate, a client of that CA, and a client of an unrelated CA.
#[derive(Debug)]
struct Pki {
    dir: PathBuf,
    ca_cert: String,
    client: Pem,
    stranger: Pem,
}

impl Pki {
    fn generate() -> Self {
        let dir =
            std::env::temp_dir().join(format!("keygate-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("create the certificate directory");

        let (ca_cert, ca) = new_ca("keygate test CA");
        let (_, other_ca) = new_ca("some other CA");
        let server = new_leaf(
            &ca,
            "keygate",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = new_leaf(&ca, "client-1", &[], ExtendedKeyUsagePurpose::ClientAuth);
        // Same name as a legitimate client, but vouched for by the wrong CA.
        let stranger = new_leaf(
            &other_ca,
            "client-1",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let pki = Self {
            dir,
            ca_cert,
            client,
            stranger,
        };
        std::fs::write(pki.path("server.crt"), &server.cert).expect("write");
        std::fs::write(pki.path("server.key"), &server.key).expect("write");
        std::fs::write(pki.path("ca.crt"), &pki.ca_cert).expect("write");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 temp dir").to_owned()
    }

    /// `serve` flags for TLS, and for mTLS when `mtls`.
    fn flags(&self, mtls: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.arg("server.crt"),
            "--tls-key".to_owned(),
            self.arg("server.key"),
        ];
        if mtls {
            flags.extend(["--tls-client-ca".to_owned(), self.arg("ca.crt")]);
        }
        flags
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    alt_names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Pem {
    let alt_names: Vec<String> = alt_names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(alt_names).expect("valid names");
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

async fn start(db: &TestDb, flags: &[String]) -> App {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_app(db, &flags).await.expect("keygate starts")
}

/// A TLS channel to `addr` that trusts `ca_cert` (and expects the name
/// `localhost`), presenting `identity` when given.
async fn tls_channel(
    addr: SocketAddr,
    ca_cert: &str,
    identity: Option<&Pem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_cert))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("valid uri")
        .tls_config(tls)?
        .connect_timeout(STEP)
        .timeout(STEP)
        .connect()
        .await
}

async fn plaintext_channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(STEP)
        .timeout(STEP)
        .connect()
        .await
}

fn unknown_key() -> String {
    Secret::generate(&KeyPrefix::default()).into_exposed()
}

/// The server must not answer this client: either the connection cannot be set
/// up or each call fails in transport. An answered call (even NOT_FOUND for the
/// made-up key) would mean the client got through.
async fn assert_refused(channel: Result<Channel, tonic::transport::Error>, who: &str) {
    let Ok(channel) = channel else {
        return; // refused during the handshake
    };
    // With TLS 1.3 the client finishes its side of the handshake before the
    // server has judged its certificate, so the refusal shows up on the first
    // call, as whatever the dropped connection looks like to hyper (CANCELLED,
    // UNAVAILABLE, INTERNAL for a plaintext client's h2 frame error, ...). What
    // is certain is that the status comes from the client's transport, not from
    // an answer of keygate.
    let verify = KeyVerifyClient::new(channel.clone())
        .verify_key(verify_req(&unknown_key(), &[]))
        .await;
    let status = verify.expect_err(&format!("{who} must not be answered"));
    assert!(from_transport(&status), "{who}: {status:?}");
    let admin_call = KeyAdminClient::new(channel)
        .create_key(admin(user_key("acme", "nope", &["links:read"])))
        .await;
    let status = admin_call.expect_err(&format!("{who} must not reach KeyAdmin"));
    assert!(from_transport(&status), "{who}: {status:?}");
}

/// Whether `status` was made by the client from a failed connection rather than
/// received from the server.
fn from_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// Creates a key over `channel`, then verifies it over `channel`: both services answer.
async fn create_and_verify(channel: Channel, name: &str) {
    let created = KeyAdminClient::new(channel.clone())
        .create_key(admin(user_key("acme", name, &["links:read"])))
        .await
        .expect("KeyAdmin answers")
        .into_inner();
    let resp = KeyVerifyClient::new(channel)
        .verify_key(verify_req(&created.secret, &["links:read"]))
        .await
        .expect("KeyVerify answers")
        .into_inner();
    assert_eq!(resp.code(), VerifyCode::Valid);
}

async fn stop(app: App, db: TestDb) {
    app.shutdown().await.expect("clean shutdown");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let app = start(&db, &pki.flags(false)).await;

    let channel = tls_channel(app.addr(), &pki.ca_cert, None)
        .await
        .expect("TLS connection");
    let resp = KeyVerifyClient::new(channel.clone())
        .verify_key(verify_req(&unknown_key(), &[]))
        .await
        .expect("VerifyKey answers over TLS")
        .into_inner();
    assert_eq!(resp.code(), VerifyCode::NotFound);
    create_and_verify(channel, "over-tls").await;

    stop(app, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_not_answered_by_a_tls_server() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let app = start(&db, &pki.flags(false)).await;

    let refused = tokio::time::timeout(STEP, async {
        assert_refused(plaintext_channel(app.addr()).await, "a plaintext client").await;
    });
    refused.await.expect("the refusal is prompt");
    // The refusal cost the server nothing: TLS clients still get through.
    let channel = tls_channel(app.addr(), &pki.ca_cert, None)
        .await
        .expect("TLS connection");
    create_and_verify(channel, "after-plaintext").await;

    stop(app, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let app = start(&db, &pki.flags(true)).await;

    let refused = tokio::time::timeout(STEP, async {
        assert_refused(
            tls_channel(app.addr(), &pki.ca_cert, None).await,
            "a client without a certificate",
        )
        .await;
    });
    refused.await.expect("the refusal is prompt");

    stop(app, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_certificates_of_another_ca() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let app = start(&db, &pki.flags(true)).await;

    let refused = tokio::time::timeout(STEP, async {
        assert_refused(
            tls_channel(app.addr(), &pki.ca_cert, Some(&pki.stranger)).await,
            "a client certified by another CA",
        )
        .await;
    });
    refused.await.expect("the refusal is prompt");

    stop(app, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_certificates_of_the_client_ca() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let app = start(&db, &pki.flags(true)).await;

    let channel = tls_channel(app.addr(), &pki.ca_cert, Some(&pki.client))
        .await
        .expect("mTLS connection");
    create_and_verify(channel, "over-mtls").await;

    stop(app, db).await;
}

/// KeyAdmin on `--admin-listen` only; KeyVerify, health and reflection stay on
/// `--listen`, where KeyAdmin is UNIMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_key_admin_alone() {
    let db = TestDb::create(Backend::Sqlite).await;
    let flags = ["--admin-listen", "127.0.0.1:0"].map(str::to_owned);
    let app = start(&db, &flags).await;
    let admin_addr = app.admin_addr().expect("an admin listener");
    assert_ne!(admin_addr, app.addr());
    assert_ne!(admin_addr.port(), 0, "the bound port is reported");

    let main = plaintext_channel(app.addr()).await.expect("main port");
    let admin_port = plaintext_channel(admin_addr).await.expect("admin port");

    let created = KeyAdminClient::new(admin_port.clone())
        .create_key(admin(user_key("acme", "ops", &["links:read"])))
        .await
        .expect("CreateKey on the admin port")
        .into_inner();
    assert_code(
        KeyAdminClient::new(main.clone())
            .create_key(admin(user_key("acme", "nope", &["links:read"])))
            .await,
        Code::Unimplemented,
    );
    let resp = KeyVerifyClient::new(main.clone())
        .verify_key(verify_req(&created.secret, &["links:read"]))
        .await
        .expect("VerifyKey on the main port")
        .into_inner();
    assert_eq!(resp.code(), VerifyCode::Valid);
    assert_code(
        KeyVerifyClient::new(admin_port.clone())
            .verify_key(verify_req(&created.secret, &[]))
            .await,
        Code::Unimplemented,
    );
    for (port, channel) in [("main", main), ("admin", admin_port)] {
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("health on the {port} port: {e:?}"))
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "{port} port");
    }

    // Both listeners stop with the app.
    let main_addr = app.addr();
    stop(app, db).await;
    for addr in [main_addr, admin_addr] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts after shutdown"
        );
    }
}

/// The admin listener applies the same TLS configuration, client certificates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_requires_the_same_client_certificates() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    let mut flags = pki.flags(true);
    flags.extend(["--admin-listen", "127.0.0.1:0"].map(str::to_owned));
    let app = start(&db, &flags).await;
    let admin_addr = app.admin_addr().expect("an admin listener");

    let refused = tokio::time::timeout(STEP, async {
        assert_refused(
            tls_channel(admin_addr, &pki.ca_cert, None).await,
            "an admin client without a certificate",
        )
        .await;
        assert_refused(
            plaintext_channel(admin_addr).await,
            "a plaintext admin client",
        )
        .await;
    });
    refused.await.expect("the refusals are prompt");

    let admin_port = tls_channel(admin_addr, &pki.ca_cert, Some(&pki.client))
        .await
        .expect("mTLS to the admin port");
    let created = KeyAdminClient::new(admin_port)
        .create_key(admin(user_key("acme", "ops", &["links:read"])))
        .await
        .expect("CreateKey over mTLS on the admin port")
        .into_inner();
    let main = tls_channel(app.addr(), &pki.ca_cert, Some(&pki.client))
        .await
        .expect("mTLS to the main port");
    let resp = KeyVerifyClient::new(main)
        .verify_key(verify_req(&created.secret, &["links:read"]))
        .await
        .expect("VerifyKey over mTLS on the main port")
        .into_inner();
    assert_eq!(resp.code(), VerifyCode::Valid);

    stop(app, db).await;
}

fn parse_serve(args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["keygate", "serve"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv) {
        Ok(cli) => match cli.command {
            KeygateCommand::Serve(_) => Ok(()),
            _ => unreachable!("serve was asked for"),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn tls_flags_come_in_pairs() {
    for (args, names) in [
        (&["--tls-cert", "a.crt"][..], "--tls-key"),
        (&["--tls-key", "a.key"][..], "--tls-cert"),
        (&["--tls-client-ca", "ca.crt"][..], "--tls-cert"),
    ] {
        let err = parse_serve(args).expect_err("refused");
        assert!(err.contains(names), "{args:?}: {err}");
    }
    parse_serve(&["--tls-cert", "a.crt", "--tls-key", "a.key"]).expect("a pair is fine");
}

/// The environment variables are wired to the same checks: a certificate without
/// its key stops the binary at once with a message naming the missing flag.
#[test]
fn tls_variables_come_in_pairs_too() {
    let out = keygate_command()
        .arg("serve")
        .env("KEYGATE_TLS_CERT", "/nonexistent/server.crt")
        .env("KEYGATE_DATABASE_URL", "sqlite://keygate-never-created.db")
        .output()
        .expect("run keygate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// Unreadable or unusable PEM files fail the start with the file and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_the_start_clearly() {
    let pki = Pki::generate();
    std::fs::write(pki.path("garbage.key"), "not a key").expect("write");
    let db = TestDb::create(Backend::Sqlite).await;
    let cases: [(&[String], &str); 3] = [
        (
            &[
                "--tls-cert".into(),
                pki.arg("missing.crt"),
                "--tls-key".into(),
                pki.arg("server.key"),
            ],
            "missing.crt",
        ),
        (
            &[
                "--tls-cert".into(),
                pki.arg("server.crt"),
                "--tls-key".into(),
                pki.arg("garbage.key"),
            ],
            "garbage.key",
        ),
        (
            &[
                "--tls-cert".into(),
                pki.arg("server.crt"),
                "--tls-key".into(),
                pki.arg("server.key"),
                "--tls-client-ca".into(),
                pki.arg("garbage.key"),
            ],
            "garbage.key",
        ),
    ];
    for (flags, names) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let err = start_app(&db, &flags)
            .await
            .expect_err("a bad TLS file must stop the start");
        assert!(matches!(err, AppError::Tls(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(names), "{flags:?}: {msg}");
    }
    db.drop_db().await;
}

/// `keygate health`, as a container's health check runs it, against a TLS and an
/// mTLS listener: it passes with the CA (and, for mTLS, a client certificate),
/// and fails in plaintext with a message that points at `--tls-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_speaks_tls_and_mtls() {
    let pki = Pki::generate();
    std::fs::write(pki.path("client.crt"), &pki.client.cert).expect("write");
    std::fs::write(pki.path("client.key"), &pki.client.key).expect("write");
    let health = |addr: SocketAddr, flags: &[String]| {
        let out = keygate_command()
            .args(["health", "--addr", &addr.to_string()])
            .args(flags)
            .output()
            .expect("run keygate health");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = vec!["--tls-ca".to_owned(), pki.arg("ca.crt")];
    let mut named = ca.clone();
    named.extend(["--tls-domain".to_owned(), "localhost".to_owned()]);
    let mut with_cert = named.clone();
    with_cert.extend([
        "--tls-cert".to_owned(),
        pki.arg("client.crt"),
        "--tls-key".to_owned(),
        pki.arg("client.key"),
    ]);

    for mtls in [false, true] {
        let db = TestDb::create(Backend::Sqlite).await;
        let app = start(&db, &pki.flags(mtls)).await;
        let addr = app.addr();
        let (ok, said) = health(addr, &[]);
        assert!(
            !ok && said.contains("if it serves TLS, pass --tls-ca"),
            "plaintext: {said}"
        );
        if mtls {
            let (ok, said) = health(addr, &named);
            assert!(!ok, "mTLS without a client certificate passed: {said}");
            let (ok, said) = health(addr, &with_cert);
            assert!(ok, "mTLS with a client certificate: {said}");
        } else {
            // The server certificate names 127.0.0.1 too, the default domain.
            let (ok, said) = health(addr, &ca);
            assert!(ok, "TLS by address: {said}");
            let (ok, said) = health(addr, &named);
            assert!(ok, "TLS by name: {said}");
        }
        stop(app, db).await;
    }
}

/// The HTTP listener serves TLS with the gRPC listener's certificate: an
/// HTTPS client that trusts the CA is answered (with a client certificate
/// under mTLS), and a plaintext request gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_speaks_tls_with_the_same_certificate() {
    let pki = Pki::generate();
    let db = TestDb::create(Backend::Sqlite).await;
    for mtls in [false, true] {
        let mut flags = pki.flags(mtls);
        flags.extend(["--http-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        let app = start(&db, &flags).await;
        let http = app.http_addr().expect("HTTP listener");
        let mut client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(pki.ca_cert.as_bytes()).expect("CA"),
            )
            .timeout(STEP);
        if mtls {
            let pem = format!("{}{}", pki.client.cert, pki.client.key);
            client = client.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("id"));
        }
        let client = client.build().expect("client");
        let answer = client
            .get(format!("https://localhost:{}/v1/authorize", http.port()))
            .send()
            .await
            .expect("an HTTPS answer");
        assert_eq!(answer.status(), 401, "mtls={mtls}: no key, so 401");

        let plain = reqwest::Client::builder()
            .timeout(STEP)
            .build()
            .expect("client")
            .get(format!("http://127.0.0.1:{}/v1/authorize", http.port()))
            .send()
            .await;
        assert!(plain.is_err(), "mtls={mtls}: plaintext answered: {plain:?}");
        app.shutdown().await.expect("clean shutdown");
    }
    db.drop_db().await;
}

/// TLS to MySQL: a private MariaDB that requires TLS, with a certificate of
/// the test's CA. keygate connects with the certificate verified
/// (`ssl-mode=VERIFY_IDENTITY`, the CA in `ssl-ca`) and the session is
/// encrypted; with another CA it refuses to start and says why; on loopback
/// without `ssl-mode` it uses TLS when offered (the server refuses anything
/// else here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_is_reached_over_verified_tls_and_an_unknown_ca_stops_the_start() {
    use sqlx::{Connection, Row};
    let pki = Pki::generate();
    let (other_ca, _) = new_ca("some other CA");
    std::fs::write(pki.path("other-ca.crt"), other_ca).expect("write");
    let server = crate::private_db::PrivateMariaDb::start_with(&[
        format!("--ssl-ca={}", pki.arg("ca.crt")),
        format!("--ssl-cert={}", pki.arg("server.crt")),
        format!("--ssl-key={}", pki.arg("server.key")),
        "--require-secure-transport=ON".to_owned(),
    ])
    .await;
    let port = server.port();
    let config = keygate::store::PoolConfig::default();
    let verified = |ca: &str| {
        format!(
            "mysql://root@localhost:{port}/kgt_tls?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            pki.arg(ca)
        )
    };

    let store = keygate::store::Store::connect(&verified("ca.crt"), &config)
        .await
        .expect("the server's certificate verifies against its CA");
    store.migrate().await.expect("migrations over TLS");
    store.close().await;
    let mut conn = sqlx::MySqlConnection::connect(&verified("ca.crt"))
        .await
        .expect("connect");
    let cipher: String = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&mut conn)
        .await
        .expect("status")
        .try_get(1_usize)
        .expect("value");
    assert!(!cipher.is_empty(), "the session is encrypted");
    let _ = conn.close().await;

    let err = keygate::store::Store::connect(&verified("other-ca.crt"), &config)
        .await
        .expect_err("a certificate of another CA stops the start")
        .to_string();
    assert!(
        err.contains("cannot verify the TLS certificate") && err.contains("ssl-ca"),
        "{err}"
    );

    let loopback = format!("mysql://root@127.0.0.1:{port}/kgt_tls");
    keygate::store::Store::connect(&loopback, &config)
        .await
        .expect("loopback without ssl-mode takes the TLS offered")
        .close()
        .await;
}

/// TLS to Redis: a private `redis-server` that speaks only TLS, with a
/// certificate of the test's CA. With `rediss://` and that CA, the shared
/// rate limits live in that Redis; with another CA keygate does not trust the
/// server, writes nothing there, and counts alone (verification answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_reached_over_verified_tls() {
    use crate::usage_limits::{PrivateRedis, free_port};
    let pki = Pki::generate();
    let (other_ca, _) = new_ca("some other CA");
    std::fs::write(pki.path("other-ca.crt"), other_ca).expect("write");
    let port = free_port();
    let _redis = PrivateRedis::start_tls_on(
        port,
        &pki.arg("server.crt"),
        &pki.arg("server.key"),
        &pki.arg("ca.crt"),
    );
    let url = format!("rediss://localhost:{port}/0");
    let redis_keys = || async {
        let client = redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pki.ca_cert.clone().into_bytes()),
            },
        )
        .expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("the test reaches its Redis over TLS");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys
    };
    for (ca, shared) in [("other-ca.crt", false), ("ca.crt", true)] {
        let db = TestDb::create(Backend::Sqlite).await;
        let app = start(
            &db,
            &[
                "--rate-limit-redis-url".to_owned(),
                url.clone(),
                "--rate-limit-redis-ca".to_owned(),
                pki.arg(ca),
            ],
        )
        .await;
        let channel = connect(app.addr()).await;
        let mut req = bot_key("acme", "limited", &["links:read"]);
        req.rate_limits = vec![keygate::proto::RateLimit {
            name: "per_minute".into(),
            limit: 100,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        }];
        let secret = KeyAdminClient::new(channel.clone())
            .create_key(admin(req))
            .await
            .expect("create")
            .into_inner()
            .secret;
        let code = KeyVerifyClient::new(channel)
            .verify_key(verify_req(&secret, &["links:read"]))
            .await
            .expect("verify answers")
            .into_inner()
            .code();
        assert_eq!(code, VerifyCode::Valid, "{ca}");
        assert_eq!(!redis_keys().await.is_empty(), shared, "{ca}");
        stop(app, db).await;
    }
}
