//! SQLite: the embedded default, one file next to the binary.

use std::str::FromStr;

use sqlx::{
    SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{PoolConfig, StoreError, dialect::Dialect};

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub(super) const DIALECT: Dialect = Dialect {
    usage_update,
    bump_event_seq: "INSERT INTO org_event_seq (organization_id, last_seq) VALUES (?, ?) \
        ON CONFLICT (organization_id) DO UPDATE SET last_seq = last_seq + excluded.last_seq",
    history_upsert: " ON CONFLICT (key_id, bucket_start, code) DO UPDATE SET count = count + excluded.count",
    // SQLite's DELETE takes no LIMIT unless compiled to; a rowid subquery does.
    prune_history: |t| {
        format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE bucket_start < ? LIMIT 1000)"
        )
    },
    select_key_locked: concat!(
        "SELECT ",
        super::rows::key_columns!(),
        " FROM api_keys WHERE organization_id = ? AND id = ?"
    ),
};

/// UPDATE … FROM a VALUES list (SQLite ≥ 3.33); VALUES is exempt from SQLite's
/// limit of 500 terms in a compound SELECT, which a UNION ALL would hit.
fn usage_update(n: usize) -> String {
    let rows = vec!["(?, ?, ?)"; n].join(", ");
    format!(
        "UPDATE api_keys SET request_count = request_count + u.column2, \
         last_used_time = MAX(COALESCE(last_used_time, 0), u.column3) \
         FROM (VALUES {rows}) AS u WHERE api_keys.id = u.column1"
    )
}

pub(super) async fn connect(url: &str, config: &PoolConfig) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // WAL lets verifications read while an admin write commits.
        .journal_mode(SqliteJournalMode::Wal)
        // A revocation acknowledged to the caller must survive a power cut too.
        .synchronous(SqliteSynchronous::Full)
        // Writers queue on the file lock instead of failing at once, for as long
        // as any call waits on the store.
        .busy_timeout(config.acquire_timeout);
    let pool = SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}
