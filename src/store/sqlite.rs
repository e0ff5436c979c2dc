//! SQLite: the embedded default, one file next to the binary.

use std::{str::FromStr, time::Duration};

use sqlx::{
    SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{PoolConfig, StoreError, sql::Dialect};

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub(super) const DIALECT: Dialect = Dialect { greatest: "MAX" };

pub(super) async fn connect(url: &str, config: &PoolConfig) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // WAL lets verifications read while an admin write commits.
        .journal_mode(SqliteJournalMode::Wal)
        // A revocation acknowledged to the caller must survive a power cut too.
        .synchronous(SqliteSynchronous::Full)
        // Writers queue on the file lock instead of failing at once.
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}
