//! The bench's own use of the database: re-creating the bench database before a
//! run, and the bare-SQL baselines (`select-id`, `select-hash`) that keygate's
//! uncached verify path is compared with. The baselines read the store's own
//! column list (`keygate::store::KEY_COLUMNS`); the store keeps its pool private,
//! so its pool settings are mirrored here.

use std::{str::FromStr, sync::LazyLock};

use sqlx::{
    ConnectOptions, Connection,
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions},
};

use crate::BoxError;

/// One key by primary key: the cheapest read of the row keygate reads (the
/// store's own column list, so the baseline reads exactly what keygate reads).
pub(crate) static SELECT_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM api_keys WHERE id = ?",
        keygate::store::KEY_COLUMNS
    )
});
/// One key by its secret's hash, unbatched: the verify path's read for one miss.
pub(crate) static SELECT_BY_HASH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM api_keys WHERE secret_hash = ?",
        keygate::store::KEY_COLUMNS
    )
});

/// The driver's options for `--database-url`. Like keygate, the bench accepts
/// `mariadb://` as a courtesy: the driver only knows `mysql://`.
fn connect_options(url: &str) -> Result<MySqlConnectOptions, BoxError> {
    if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
        return Err("--database-url must be mysql://… or mariadb://…".into());
    }
    Ok(MySqlConnectOptions::from_str(&url.replacen(
        "mariadb://",
        "mysql://",
        1,
    ))?)
}

/// Drops and re-creates the database `url` names, which must contain `bench`.
pub(crate) async fn recreate_database(url: &str) -> Result<(), BoxError> {
    let options = connect_options(url)?;
    let db = options
        .get_database()
        .ok_or("--database-url must name a database")?
        .to_owned();
    // The name goes into the statements below as an identifier: allow only a
    // plain one, so it needs no quoting rules.
    if db.is_empty() || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("database name {db:?} must be [A-Za-z0-9_]+").into());
    }
    if !db.contains("bench") {
        return Err(
            format!("refusing to drop database {db:?}: its name must contain `bench`").into(),
        );
    }
    // information_schema exists on every server and every user may open it (the
    // same detour keygate's store takes to create a missing database).
    let mut conn = options.database("information_schema").connect().await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{db}`"))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(&format!("CREATE DATABASE `{db}`"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// A pool for the SQL baselines.
pub(crate) async fn sql_pool(url: &str, size: u32, ping: bool) -> Result<MySqlPool, BoxError> {
    // Same options as keygate's store, so that the baseline differs only in what
    // keygate adds (gRPC, decoding, checks); `ping` is keygate's test_before_acquire.
    let options = connect_options(url)?
        .timezone(Some("+00:00".into()))
        .charset("utf8mb4");
    Ok(MySqlPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(ping)
        .connect_with(options)
        .await?)
}

/// MariaDB/MySQL's server-wide statement and row counters, read before and
/// after a scenario: what the store saw, to set beside the capacity model
/// (`docs/CAPACITY.md`). Server-wide, so the bench database should be the
/// server's only busy one.
pub(crate) const STATUS: [&str; 5] = [
    "Com_select",
    "Com_update",
    "Com_insert",
    "Handler_update",
    "Handler_write",
];

pub(crate) async fn status(pool: &MySqlPool) -> Result<[u64; 5], BoxError> {
    let list = STATUS.map(|n| format!("'{n}'")).join(", ");
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"
    ))
    .fetch_all(pool)
    .await?;
    let mut out = [0u64; 5];
    for (name, value) in rows {
        if let Some(i) = STATUS.iter().position(|n| n.eq_ignore_ascii_case(&name)) {
            out[i] = value.parse()?;
        }
    }
    Ok(out)
}
