//! The bench's own use of the database: re-creating the bench database before a
//! run, and the bare-SQL baselines (`select-id`, `select-hash`) that keygate's
//! uncached verify path is compared with. keygate's store keeps its pool and its
//! SQL private, so what the baselines must share with it is mirrored here.

use std::str::FromStr;

use sqlx::{
    ConnectOptions, Connection,
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions},
};

use crate::BoxError;

/// The columns keygate's store reads for one key, in its order. A copy of
/// `key_columns!` in the service crate's `src/store/sql.rs`, which is private
/// there: keep the two in step, or the baseline reads another row than keygate.
macro_rules! key_columns {
    () => {
        "id, organization_id, key_type, user_id, name, scopes, \
         allowed_hostnames, secret_hash, key_prefix, last_four, request_count, create_time, \
         update_time, last_used_time, revoke_time, expire_time, created_by"
    };
}

/// One key by primary key: the cheapest read of the row keygate reads.
pub(crate) const SELECT_BY_ID: &str =
    concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = ?");
/// One key by its secret's hash: the store's `find_by_hash` statement.
pub(crate) const SELECT_BY_HASH: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE secret_hash = ?"
);

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
