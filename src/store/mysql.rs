//! MySQL 8 / MariaDB 10.11: the production back end.

use std::str::FromStr;

use sqlx::{
    MySqlPool,
    migrate::Migrator,
    mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode},
};

use super::{PoolConfig, StoreError, dialect::Dialect};

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/mysql");

pub(super) const DIALECT: Dialect = Dialect {
    usage_update,
    bump_event_seq: "INSERT INTO org_event_seq (organization_id, last_seq) VALUES (?, ?) \
        ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)",
    history_upsert: " ON DUPLICATE KEY UPDATE count = count + VALUES(count)",
    prune_history: |t| format!("DELETE FROM {t} WHERE bucket_start < ? LIMIT 1000"),
    select_key_locked: concat!(
        "SELECT ",
        super::rows::key_columns!(),
        " FROM api_keys WHERE organization_id = ? AND id = ? FOR UPDATE"
    ),
};

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
    let mut options = MySqlConnectOptions::from_str(&url)?;
    if let Some(mode) = default_ssl_mode(&url) {
        options = options.ssl_mode(mode);
    }
    connect_with(options, config)
        .await
        .map_err(|e| untrusted_server(e, &url))
}

/// The TLS mode when the URL names none: a server off this host is reached
/// over a network someone else may be on, so its certificate must be valid for
/// its name (`VERIFY_IDENTITY`, trusting the system's CAs or `ssl-ca`); on
/// loopback, or through a Unix socket, TLS is used when the server offers it
/// (`PREFERRED`). `None`: the URL says, or is not one keygate can read.
fn default_ssl_mode(url: &str) -> Option<MySqlSslMode> {
    let parsed = url::Url::parse(url).ok()?;
    let says = parsed
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("ssl-mode") || k.eq_ignore_ascii_case("sslmode"));
    if says {
        return None;
    }
    let by_socket = parsed.query_pairs().any(|(k, _)| k == "socket");
    let local = by_socket
        || match parsed.host() {
            None => true,
            // A `mysql://` URL's host is opaque to the URL parser: an IPv4
            // address arrives as a name.
            Some(url::Host::Domain(d)) => {
                d.eq_ignore_ascii_case("localhost")
                    || d.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        };
    Some(if local {
        MySqlSslMode::Preferred
    } else {
        MySqlSslMode::VerifyIdentity
    })
}

/// A failed TLS handshake at start, said as what it is and what to do; the
/// URL is shown without its password.
fn untrusted_server(e: StoreError, url: &str) -> StoreError {
    // rustls reports a certificate it cannot verify from inside the socket's
    // I/O; sqlx passes it on as an I/O error.
    let rejected = match &e {
        StoreError::Unavailable(sqlx::Error::Tls(_)) => true,
        StoreError::Unavailable(sqlx::Error::Io(io)) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_))),
        _ => false,
    };
    if !rejected {
        return e;
    }
    StoreError::Tls(format!(
        "cannot verify the TLS certificate of the MySQL server in {:?} ({e}); \
         give its CA with ssl-ca=/path/ca.pem in --database-url (the system's CAs are \
         trusted too), or choose ssl-mode yourself",
        crate::domain::keys::Sensitive::from(url)
    ))
}

async fn connect_with(
    options: MySqlConnectOptions,
    config: &PoolConfig,
) -> Result<MySqlPool, StoreError> {
    let options = options
        // Timestamps are integers, but a session time zone keeps any NOW() honest.
        .timezone(Some("+00:00".into()))
        .charset("utf8mb4");
    // A statement waiting on another session's lock (a row lock, or a table
    // lock such as LOCK TABLES or a long ALTER) gives up with the store timeout
    // instead of the servers' defaults (50 s for rows, a year for tables), so the
    // call ends UNAVAILABLE rather than running into the request timeout.
    let lock_wait = config.acquire_timeout.as_secs_f64().ceil().max(1.0) as u64;
    create_database_if_missing(&options).await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // A connection that died with the server is found before it is handed out.
        .test_before_acquire(true)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query(&format!(
                    "SET SESSION lock_wait_timeout = {lock_wait}, \
                     innodb_lock_wait_timeout = {lock_wait}"
                ))
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// MySQL's "Unknown database" (ER_BAD_DB_ERROR).
const UNKNOWN_DATABASE: u16 = 1049;

/// A first run against a fresh server should not fail on a database nobody
/// created yet: keygate creates it when the user may, and otherwise says which
/// statement an operator must run.
async fn create_database_if_missing(options: &MySqlConnectOptions) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let Some(name) = options.get_database() else {
        return Ok(());
    };
    let err = match options.connect().await {
        Ok(conn) => return conn.close().await.map_err(StoreError::from),
        Err(e) => e,
    };
    let unknown = matches!(&err, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| e.number() == UNKNOWN_DATABASE));
    if !unknown {
        return Err(err.into());
    }
    let statement = format!(
        "CREATE DATABASE `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        name.replace('`', "``")
    );
    // information_schema exists on every server and every user may open it.
    let mut conn = options
        .clone()
        .database("information_schema")
        .connect()
        .await?;
    let created = sqlx::query(&statement.replacen("DATABASE", "DATABASE IF NOT EXISTS", 1))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => {
            tracing::info!(database = name, "created the MySQL database");
            Ok(())
        }
        Err(e) => Err(StoreError::MissingDatabase {
            name: name.to_owned(),
            statement,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn a_server_off_this_host_is_verified_unless_the_url_says_otherwise() {
        use MySqlSslMode::{Preferred, VerifyIdentity};
        for (url, mode) in [
            ("mysql://u:p@db.internal:3306/k", Some(VerifyIdentity)),
            ("mysql://u@10.0.0.7/k", Some(VerifyIdentity)),
            ("mysql://u@[2001:db8::1]:3306/k", Some(VerifyIdentity)),
            ("mysql://root@127.0.0.1:3306/k", Some(Preferred)),
            ("mysql://root@127.9.9.9/k", Some(Preferred)),
            ("mysql://root@localhost/k", Some(Preferred)),
            ("mysql://root@[::1]:3306/k", Some(Preferred)),
            (
                "mysql://root@db.internal/k?socket=/run/mysqld/mysqld.sock",
                Some(Preferred),
            ),
            ("mysql://u@db.internal/k?ssl-mode=DISABLED", None),
            ("mysql://u@db.internal/k?sslmode=required", None),
        ] {
            assert_eq!(
                format!("{:?}", default_ssl_mode(url)),
                format!("{mode:?}"),
                "{url}"
            );
        }
    }
}
