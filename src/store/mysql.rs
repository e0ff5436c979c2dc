//! MySQL 8 / MariaDB 10.11: the production back end.

use std::str::FromStr;

use sqlx::{
    MySqlPool,
    migrate::Migrator,
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
};

use super::{PoolConfig, StoreError, sql::Dialect};

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/mysql");

pub(super) const DIALECT: Dialect = Dialect { usage_update };

/// MySQL 8 and MariaDB agree on a multi-table UPDATE over a UNION ALL derived
/// table (their row constructors for VALUES differ).
fn usage_update(n: usize) -> String {
    let rows = vec!["SELECT ?, ?, ?"; n.saturating_sub(1)].join(" UNION ALL ");
    let rest = if rows.is_empty() {
        String::new()
    } else {
        format!(" UNION ALL {rows}")
    };
    format!(
        "UPDATE api_keys k JOIN (SELECT ? AS id, ? AS n, ? AS t{rest}) u ON k.id = u.id \
         SET k.request_count = k.request_count + u.n, \
         k.last_used_time = GREATEST(COALESCE(k.last_used_time, 0), u.t)"
    )
}

pub(super) async fn connect(url: &str, config: &PoolConfig) -> Result<MySqlPool, StoreError> {
    // `mariadb://` is accepted as a courtesy; the driver only knows `mysql://`.
    let url = url.replacen("mariadb://", "mysql://", 1);
    let options = MySqlConnectOptions::from_str(&url)?
        // Timestamps are integers, but a session time zone keeps any NOW() honest.
        .timezone(Some("+00:00".into()))
        .charset("utf8mb4");
    let pool = MySqlPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // A connection that died with the server is found before it is handed out.
        .test_before_acquire(true)
        .connect_with(options)
        .await?;
    Ok(pool)
}
