//! What every integration test shares: a real keygate on an ephemeral port, over a
//! database of its own (a fresh SQLite file, or a fresh MariaDB/MySQL database).
//! In process that is [`spawn_app`] (or [`start_app`] for an `App` alone); as a
//! child process, the real binary, it is [`process::Process`] and
//! [`spawn_process`]. No test starts keygate any other way.
//!
//! Size: the shared harness (databases, in-process and child-process keygate,
//! clients, raw SQL reads); every test file leans on it.

pub mod process;

pub use process::*;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use keygate::{
    app::{App, AppError},
    clock::{ManualClock, SharedClock},
    config::{Cli, Command, ServeArgs},
    domain::keys::SecretHash,
    domain::model::{KeyId, KeyRecord, OrganizationId},
    proto::{
        self, CreateKeyRequest, KeyType, VerifyCode, VerifyKeyRequest, VerifyKeyResponse,
        key_admin_client::KeyAdminClient, key_verify_client::KeyVerifyClient,
    },
    store::{PoolConfig, Store},
};
use sqlx::{Connection, MySqlConnection, Row, SqliteConnection};
use tonic::{Code, Request, Status, transport::Channel};

pub const TOKEN: &str = "test-admin-token";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

/// The MySQL server tests create their databases on; CI makes sure it runs.
pub fn mysql_server_url() -> String {
    std::env::var("KEYGATE_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A database that belongs to one test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    File(PathBuf),
    MySql { server: String, name: String },
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("keygate-test-{tag}.db"));
                Self {
                    url: format!("sqlite://{}", path.display()),
                    cleanup: Cleanup::File(path),
                }
            }
            Backend::MySql => Self::create_mysql_on(&mysql_server_url(), &tag[..16]).await,
        }
    }

    /// A fresh database on the MySQL server at `server`.
    pub async fn create_mysql_on(server: &str, tag: &str) -> Self {
        let name = format!("kgt_{tag}");
        let mut conn = MySqlConnection::connect(server).await.unwrap_or_else(|e| {
            panic!("MariaDB/MySQL must be reachable at {server} for the tests: {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            url: format!("{server}/{name}"),
            cleanup: Cleanup::MySql {
                server: server.to_owned(),
                name,
            },
        }
    }

    /// A database on the tests' MySQL server that something else created (or
    /// was asked to create), dropped like the tests' own.
    pub fn adopt_mysql(name: &str) -> Self {
        let server = mysql_server_url();
        Self {
            url: format!("{server}/{name}"),
            cleanup: Cleanup::MySql {
                server,
                name: name.to_owned(),
            },
        }
    }

    pub async fn drop_db(&self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::MySql { server, name } => {
                if let Ok(mut conn) = MySqlConnection::connect(server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                        .execute(&mut conn)
                        .await;
                }
            }
        }
    }
}

/// `serve` arguments as the command line would give them, for `db`.
pub fn serve_args(db: &TestDb, extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "keygate",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--admin-tokens",
        TOKEN,
        "--database-max-connections",
        "4",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("valid test arguments")
        .command
    {
        Command::Serve(args) => *args,
        _ => unreachable!("serve was asked for"),
    }
}

/// A running keygate with clients and direct access to its store.
#[derive(Debug)]
pub struct TestApp {
    pub app: Option<App>,
    pub db: TestDb,
    pub admin: KeyAdminClient<Channel>,
    pub verify: KeyVerifyClient<Channel>,
    /// A second connection to the same database, for assertions on what is stored.
    pub store: Store,
    /// The time keygate reads: a test moves it past an expiry instead of sleeping.
    pub clock: Arc<ManualClock>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// Flags are appended to the defaults, so a test can override any of them.
pub async fn spawn_app_with(backend: Backend, extra: &[&str]) -> TestApp {
    let db = TestDb::create(backend).await;
    start_on(db, extra).await
}

/// Starts keygate in process on `db` with [`serve_args`]`(db, extra)`, without
/// connecting to it: for a TLS listener, a second instance on one database, or a
/// start that must fail. Every in-process keygate of the tests starts here.
pub async fn start_app(db: &TestDb, extra: &[&str]) -> Result<App, AppError> {
    start_app_on_clock(db, extra, Arc::new(ManualClock::default())).await
}

/// As [`start_app`], on a clock the test holds.
pub async fn start_app_on_clock(
    db: &TestDb,
    extra: &[&str],
    clock: SharedClock,
) -> Result<App, AppError> {
    test_log();
    App::build(serve_args(db, extra), clock).await
}

/// With `TEST_LOG=1` (any value), the in-process keygates log to the test's
/// output at `RUST_LOG`'s level (default `debug`), shown for a failing test;
/// child processes pass their stderr through too (`support::process`).
/// Without it tests log nothing, so a passing run stays quiet.
pub fn test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("TEST_LOG").is_none() {
        return;
    }
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        // The test writer: libtest captures it per test and prints it on failure.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Starts keygate on an existing test database.
pub async fn start_on(db: TestDb, extra: &[&str]) -> TestApp {
    let clock = Arc::new(ManualClock::default());
    let app = start_app_on_clock(&db, extra, Arc::clone(&clock) as SharedClock)
        .await
        .expect("keygate starts");
    let channel = connect(app.addr()).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("test store connection");
    TestApp {
        app: Some(app),
        db,
        admin: KeyAdminClient::new(channel.clone()),
        verify: KeyVerifyClient::new(channel),
        store,
        clock,
    }
}

/// What `grpc.health.v1.Health/Check` answers at `addr`, on a connection of
/// its own.
pub async fn health_at(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect to keygate")
}

/// Metadata of a trusted caller acting for `actor` with `role`.
pub fn as_actor<T>(actor: &str, role: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    md.insert("x-actor-id", actor.parse().expect("ascii"));
    md.insert("x-actor-role", role.parse().expect("ascii"));
    req
}

pub fn admin<T>(msg: T) -> Request<T> {
    as_actor("admin-1", "admin", msg)
}

pub fn member<T>(actor: &str, msg: T) -> Request<T> {
    as_actor(actor, "member", msg)
}

pub fn user_key(org: &str, name: &str, scopes: &[&str]) -> CreateKeyRequest {
    CreateKeyRequest {
        organization_id: org.into(),
        r#type: KeyType::User.into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn bot_key(org: &str, name: &str, scopes: &[&str]) -> CreateKeyRequest {
    CreateKeyRequest {
        r#type: KeyType::Bot.into(),
        ..user_key(org, name, scopes)
    }
}

pub fn verify_req(key: &str, scopes: &[&str]) -> VerifyKeyRequest {
    VerifyKeyRequest {
        key: key.into(),
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// Field names of a `google.rpc.BadRequest` detail.
pub fn bad_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts an INVALID_ARGUMENT whose BadRequest names `field`.
#[track_caller]
pub fn assert_bad_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = bad_fields(&status);
    assert!(
        fields.iter().any(|f| f == field),
        "expected {field} in {fields:?} ({status:?})"
    );
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

impl TestApp {
    /// Creates a key and returns it with its secret.
    pub async fn create(&self, req: Request<CreateKeyRequest>) -> (proto::ApiKey, String) {
        let resp = self
            .admin
            .clone()
            .create_key(req)
            .await
            .expect("key created")
            .into_inner();
        (resp.key.expect("key in response"), resp.secret)
    }

    pub async fn verify(&self, req: VerifyKeyRequest) -> VerifyKeyResponse {
        self.verify
            .clone()
            .verify_key(req)
            .await
            .expect("verify answers")
            .into_inner()
    }

    pub async fn verify_code(&self, req: VerifyKeyRequest) -> VerifyCode {
        self.verify(req).await.code()
    }

    pub async fn get(&self, org: &str, id: &str) -> proto::ApiKey {
        self.admin
            .clone()
            .get_key(admin(proto::GetKeyRequest {
                organization_id: org.into(),
                id: id.into(),
            }))
            .await
            .expect("get key")
            .into_inner()
            .key
            .expect("key")
    }

    pub async fn revoke(&self, org: &str, id: &str) -> proto::ApiKey {
        self.admin
            .clone()
            .revoke_key(admin(proto::RevokeKeyRequest {
                organization_id: org.into(),
                id: id.into(),
            }))
            .await
            .expect("revoke key")
            .into_inner()
            .key
            .expect("key")
    }

    pub async fn events(&self, org: &str, key_id: &str) -> Vec<proto::KeyEvent> {
        self.admin
            .clone()
            .list_key_events(admin(proto::ListKeyEventsRequest {
                organization_id: org.into(),
                key_id: key_id.into(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .expect("list events")
            .into_inner()
            .events
    }

    /// Every key of an organization, revoked included, as an admin sees them.
    pub async fn all_keys(&self, org: &str) -> Vec<proto::ApiKey> {
        self.admin
            .clone()
            .list_keys(admin(proto::ListKeysRequest {
                organization_id: org.into(),
                page_size: 1000,
                include_revoked: true,
                ..Default::default()
            }))
            .await
            .expect("list keys")
            .into_inner()
            .keys
    }

    /// Stops keygate gracefully and drops the test database.
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("clean shutdown");
        }
        self.store.close().await;
        self.db.drop_db().await;
    }

    /// Stops keygate but keeps the database, for a restart on it.
    pub async fn stop_keep_db(mut self) -> TestDb {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("clean shutdown");
        }
        self.store.close().await;
        self.db
    }
}

// ---------------------------------------------------------------------------
// The database under the store: plain SQL for what the store's API does not
// offer (and must not: these reads exist for tests only).

/// A direct connection to a test database, either back end.
#[derive(Debug)]
pub enum RawDb {
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
}

impl RawDb {
    pub async fn connect(db: &TestDb) -> Self {
        if db.url.starts_with("mysql://") {
            Self::MySql(MySqlConnection::connect(&db.url).await.expect("connect"))
        } else {
            Self::Sqlite(SqliteConnection::connect(&db.url).await.expect("connect"))
        }
    }

    /// Every non-NULL column of every row of `table` that reads as bytes (its
    /// text and blob columns).
    async fn bytes_of(&mut self, table: &str) -> Vec<Vec<u8>> {
        let sql = format!("SELECT * FROM {table}");
        let mut out = Vec::new();
        macro_rules! collect {
            ($conn:expr) => {
                for row in sqlx::query(&sql)
                    .fetch_all(&mut *$conn)
                    .await
                    .expect("read table")
                {
                    for i in 0..row.len() {
                        if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                            out.push(b);
                        }
                    }
                }
            };
        }
        match self {
            Self::MySql(c) => collect!(c),
            Self::Sqlite(c) => collect!(c),
        }
        out
    }

    /// Runs one statement, as a keygate of another version (or a person) would.
    pub async fn execute(&mut self, sql: &str) {
        match self {
            Self::MySql(c) => sqlx::query(sql).execute(c).await.map(drop),
            Self::Sqlite(c) => sqlx::query(sql).execute(c).await.map(drop),
        }
        .expect("statement");
    }

    /// The single integer a `SELECT COUNT(*) …` answers.
    pub async fn count(&mut self, sql: &str) -> i64 {
        match self {
            Self::MySql(c) => sqlx::query_scalar(sql).fetch_one(c).await.expect("count"),
            Self::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await.expect("count"),
        }
    }

    /// `(organization, id)` of the key stored with `hash`, if any.
    pub async fn key_of_hash(&mut self, hash: &SecretHash) -> Option<(OrganizationId, KeyId)> {
        let sql = "SELECT organization_id, id FROM api_keys WHERE secret_hash = ?";
        let row: Option<(Vec<u8>, Vec<u8>)> = match self {
            Self::MySql(c) => sqlx::query_as(sql)
                .bind(&hash.as_bytes()[..])
                .fetch_optional(c)
                .await
                .expect("read by hash"),
            Self::Sqlite(c) => sqlx::query_as(sql)
                .bind(&hash.as_bytes()[..])
                .fetch_optional(c)
                .await
                .expect("read by hash"),
        };
        row.map(|(org, id)| {
            let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
            (
                OrganizationId::parse(&text(org)).expect("a stored organization id"),
                KeyId::parse(&text(id)).expect("a stored key id"),
            )
        })
    }

    pub async fn close(self) {
        let _ = match self {
            Self::MySql(c) => c.close().await,
            Self::Sqlite(c) => c.close().await,
        };
    }
}

/// Every text and blob column of both tables (keys and events), for tests that
/// prove a secret is stored nowhere or that a refused request changed nothing.
pub async fn dump_all_text(db: &TestDb) -> Vec<Vec<u8>> {
    let mut conn = RawDb::connect(db).await;
    let mut out = conn.bytes_of("api_keys").await;
    out.extend(conn.bytes_of("key_events").await);
    out.extend(conn.bytes_of("org_event_seq").await);
    conn.close().await;
    out
}

/// The key a secret hashes to, found by its hash with plain SQL on `raw` and
/// then read through the store's API.
pub async fn find_by_hash(store: &Store, raw: &mut RawDb, hash: &SecretHash) -> Option<KeyRecord> {
    let (org, id) = raw.key_of_hash(hash).await?;
    Some(
        store
            .get_key(&org, &id)
            .await
            .expect("read")
            .expect("the key found by its hash is there"),
    )
}

/// A connection holding `LOCK TABLES api_keys WRITE` on a MariaDB/MySQL test
/// database: every read of the table waits until [`unlock`].
pub async fn lock_keys_table(db: &TestDb) -> MySqlConnection {
    let mut conn = MySqlConnection::connect(&db.url).await.expect("connect");
    sqlx::query("LOCK TABLES api_keys WRITE")
        .execute(&mut conn)
        .await
        .expect("lock");
    conn
}

pub async fn unlock(conn: &mut MySqlConnection) {
    sqlx::query("UNLOCK TABLES")
        .execute(conn)
        .await
        .expect("unlock");
}

/// Polls `check` until it holds or `timeout` passes; for effects that happen in
/// the background (usage flushes), never for timing claims.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs each named `async fn(Backend)` of the enclosing module once on SQLite and
/// once on MariaDB/MySQL: the same test code for both stores. Attributes before
/// a name (`#[ignore = "…"]`) go on both of its tests.
#[macro_export]
macro_rules! store_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            )*
        }
        mod mariadb {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::MySql).await;
                }
            )*
        }
    };
}

/// A key record as `CreateKey` would store it: a bot key of `org` named `name`
/// with scope `links:read`, no hostnames and no expiry, created by `admin-1` at
/// `now`; for tests that write to the store directly.
pub fn bot_record(
    org: &str,
    name: &str,
    secret: &keygate::domain::keys::Secret,
    now: keygate::domain::model::Micros,
) -> keygate::domain::model::KeyRecord {
    use keygate::domain::model::{KeyName, KeyRecord, OrganizationId, Owner, UserId};
    KeyRecord::new(
        OrganizationId::parse(org).expect("org"),
        Owner::Bot,
        KeyName::parse(name).expect("name"),
        keygate::domain::scopes::ScopeSet::parse(["links:read"]).expect("scopes"),
        secret,
        UserId::parse("admin-1").expect("user"),
        now,
    )
}

/// An HTTP client whose connections leave from `local`, a loopback address
/// (any of 127.0.0.0/8): how a test plays clients at different addresses.
pub fn http_client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
}
