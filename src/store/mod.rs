//! Persistence: one `Store` with two back ends, MySQL (production) and SQLite
//! (embedded default). The SQL and the logic around it are written once in
//! `sql.rs`; rows are decoded by column name in `rows.rs`; `mysql.rs` and
//! `sqlite.rs` hold what really differs (connecting, migrations, the few words
//! of `dialect.rs`).

mod counters;
mod dialect;
mod identities;
mod mysql;
mod notices;
mod outbox;
mod rows;
mod sql;
mod sqlite;

use std::time::Duration;

use sqlx::{MySqlPool, SqlitePool};

pub use counters::{QuotaTake, UsageDelta};
pub use notices::Noticed;
pub use outbox::Delivery;
pub use sql::{KEY_COLUMNS, KeyFilter, MAX_HASHES_PER_READ};

/// The rule a write checks against the row it has locked before it changes
/// anything (see `domain::lifecycle`): the store applies it atomically, the
/// caller decides it. `Err` carries the reason the caller is refused with.
pub type Guard<'a> =
    &'a (dyn Fn(&crate::domain::model::KeyRecord) -> Result<(), &'static str> + Sync);

/// An event as the invalidation poll reads it: which key's cache entry it
/// ends (by hash: the row may be gone), and which identity's, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: u64,
    pub hash: crate::domain::keys::SecretHash,
    pub time: crate::domain::model::Micros,
    pub identity_id: Option<crate::domain::identities::IdentityId>,
}

/// Failures of the store, as the service layer needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The store did not answer within the configured time (`--database-timeout`).
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// Other writers kept changing a row this write is conditional on; worth
    /// another try later.
    #[error("the row kept changing under this write")]
    Contended,
    /// keygate is shutting down and no longer reads the store.
    #[error("the store is closed")]
    Closed,
    /// The organization already has this many live keys, the cap.
    #[error("the organization has {0} live keys, the cap")]
    TooManyKeys(u64),
    /// The unique index on live user keys refused a second one.
    #[error("a live user key already exists for this user and organization")]
    LiveUserKeyExists,
    /// The organization has an identity with this external id already.
    #[error("an identity with this external id exists in the organization")]
    ExternalIdTaken,
    #[error("key not found")]
    NotFound,
    /// The key is not in a state the operation applies to; the text says why.
    #[error("{0}")]
    Precondition(&'static str),
    /// A row that keygate cannot have written; someone edited the database by hand.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The server's TLS certificate could not be verified; the text says what to do.
    #[error("{0}")]
    Tls(String),
    #[error("unsupported database url: expected mysql://… or sqlite://…")]
    UnsupportedUrl,
    /// The database named in the URL does not exist and keygate may not create it.
    #[error(
        "database `{name}` does not exist and could not be created ({reason}); \
         create it with `{statement}`, or point --database-url at an existing one"
    )]
    MissingDatabase {
        name: String,
        statement: String,
        reason: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(e)
            }
            E::Database(ref db) if is_transient(db.as_ref()) => Self::Unavailable(e),
            _ => Self::Database(e),
        }
    }
}

/// A database error that says "not now" rather than "never": another session
/// holds what this one needs. Classified by the servers' own error codes.
fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::error::DatabaseError as _;
    if let Some(e) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes,
        // whose low byte is the primary code.
        return e
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6));
    }
    if let Some(e) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Lock wait timeout (1205, also for `lock_wait_timeout` on a table
        // lock), deadlock (1213), statement interrupted by MariaDB's
        // max_statement_time (1969) or MySQL's max_execution_time (3024).
        return matches!(e.number(), 1205 | 1213 | 1969 | 3024);
    }
    false
}

/// How the pool talks to the database.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    /// How long a call waits for a connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// The key store. Cheap to clone: it is a handle on a connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Webhook endpoints (their ids) that every event written through this
    /// handle is queued for, in the event's own transaction.
    webhook_endpoints: std::sync::Arc<[String]>,
    /// At most this many live keys per organization, checked by `create_key`
    /// under the organization's lock.
    max_live_keys: Option<u64>,
}

impl Store {
    /// This store, queueing every event it writes for these webhook endpoints
    /// (in the event's transaction: a true outbox, which no commit order can
    /// make skip an event). Every instance must be given the same endpoints.
    pub fn with_webhook_endpoints(mut self, endpoints: Vec<String>) -> Self {
        self.webhook_endpoints = endpoints.into();
        self
    }

    /// This store, refusing a new key in an organization that has `cap` live
    /// keys: one tenant must not grow everyone's storage and memory.
    pub fn with_key_cap(mut self, cap: u64) -> Self {
        self.max_live_keys = Some(cap);
        self
    }

    /// Connects to `mysql://…` or `sqlite://…` (the SQLite file is created if missing).
    /// Does not run migrations: see [`Store::migrate`].
    pub async fn connect(url: &str, config: &PoolConfig) -> Result<Self, StoreError> {
        let pool = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Pool::MySql(mysql::connect(url, config).await?)
        } else if url.starts_with("sqlite:") {
            Pool::Sqlite(sqlite::connect(url, config).await?)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Self {
            pool,
            webhook_endpoints: std::sync::Arc::from(Vec::new()),
            max_live_keys: None,
        })
    }

    /// Applies the migrations embedded in the binary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::MySql(p) => mysql::MIGRATOR.run(p).await?,
            Pool::Sqlite(p) => sqlite::MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// Which back end this is, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match &self.pool {
            Pool::MySql(_) => "mysql",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// `(open connections, idle connections)` of the pool, for metrics.
    pub fn pool_stats(&self) -> (u32, usize) {
        match &self.pool {
            Pool::MySql(p) => (p.size(), p.num_idle()),
            Pool::Sqlite(p) => (p.size(), p.num_idle()),
        }
    }

    /// Closes the pool, waiting for connections in use to be returned, for at
    /// most 10 s. sqlx's close can miss a connection handed back while it
    /// drains the pool and then wait for it for ever (seen once in a CI run:
    /// every test's work done, the pool's close still pending minutes later).
    /// Callers close last, after every write, so what is left is sockets the
    /// process's exit closes.
    pub async fn close(&self) {
        let close = async {
            match &self.pool {
                Pool::MySql(p) => p.close().await,
                Pool::Sqlite(p) => p.close().await,
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), close)
            .await
            .is_err()
        {
            tracing::warn!("the store's connection pool did not close within 10 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that is never handed back (what sqlx's close can miss)
    /// holds `close` for 10 s, not for ever. The clock is paused once the
    /// connection is held: tokio then moves it on whenever every task waits,
    /// so the test takes no wall time.
    #[tokio::test]
    async fn close_gives_up_on_a_connection_never_returned() {
        let dir = std::env::temp_dir().join(format!("keygate-close-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}/close.db", dir.display());
        let store = Store::connect(&url, &PoolConfig::default())
            .await
            .expect("store");
        let Pool::Sqlite(pool) = &store.pool else {
            unreachable!("a sqlite URL opens a sqlite pool")
        };
        let held = pool.acquire().await.expect("a connection");
        tokio::time::pause();
        let closed = tokio::time::timeout(Duration::from_secs(60), store.close()).await;
        assert!(
            closed.is_ok(),
            "close waited for the held connection past 60 s"
        );
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
