//! A MariaDB server of a test's own, on its own port and data directory, that the
//! test may kill and restart: never the shared server on 3306. Two of them can be
//! wired as primary and replica, for tests of reads that lag behind writes; the
//! replica's SQL thread can be paused to hold that lag open for as long as a test
//! needs it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{Connection, MySqlConnection, Row, mysql::MySqlRow};

pub struct PrivateMariaDb {
    dir: PathBuf,
    port: u16,
    /// Extra `mariadbd` arguments, given again on every restart.
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A fresh data directory under a new temporary directory, which is returned.
/// Tried twice, each time in a new directory: on a loaded CI machine the
/// bootstrap once failed without a trace, which a second attempt survives;
/// a second failure fails the test with what the tool printed.
fn install() -> PathBuf {
    let mut last = String::new();
    for _ in 0..2 {
        let dir =
            std::env::temp_dir().join(format!("keygate-mariadb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create data dir");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db must be installed (mariadb-server)");
        if out.status.success() {
            return dir;
        }
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        last = text
            .chars()
            .rev()
            .take(2_000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
    }
    panic!("mariadb-install-db failed twice; the last attempt printed:\n{last}");
}

/// A column of a SHOW statement as text, whatever type the server gives it;
/// `None` when it is NULL, absent or unreadable.
fn text(row: &MySqlRow, column: &str) -> Option<String> {
    if let Ok(s) = row.try_get::<Option<String>, _>(column) {
        return s;
    }
    if let Ok(b) = row.try_get::<Option<Vec<u8>>, _>(column) {
        return b.map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    if let Ok(n) = row.try_get::<Option<u64>, _>(column) {
        return n.map(|n| n.to_string());
    }
    if let Ok(n) = row.try_get::<Option<i64>, _>(column) {
        return n.map(|n| n.to_string());
    }
    None
}

impl PrivateMariaDb {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with `extra` arguments to `mariadbd` (after the usual ones),
    /// which `restart` gives again. Binary logging is off unless one is `--log-bin…`.
    pub async fn start_with(extra: &[String]) -> Self {
        Self::launch(install(), extra.to_vec()).await
    }

    async fn launch(dir: PathBuf, extra: Vec<String>) -> Self {
        let mut db = Self {
            dir,
            port: free_port(),
            extra,
            child: None,
        };
        db.restart().await;
        db
    }

    /// A primary (binary log on, server id 1) and a replica of it (server id 2)
    /// that is replicating, from the primary's current position, everything
    /// written to the primary from now on, DDL included.
    pub async fn primary_and_replica() -> (PrivateMariaDb, PrivateMariaDb) {
        let primary_dir = install();
        let log_bin = format!("--log-bin={}", primary_dir.join("binlog").display());
        let primary = Self::launch(
            primary_dir,
            vec![
                log_bin,
                "--server-id=1".into(),
                "--binlog-format=ROW".into(),
            ],
        )
        .await;
        let replica =
            Self::start_with(&["--server-id=2", "--read-only=OFF"].map(String::from)).await;
        primary
            .execute("CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl'")
            .await;
        primary
            .execute("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1'")
            .await;
        let (file, pos) = primary.master_status().await;
        // A retry of 1 s, not the default 60 s, so that the replica is back within
        // a second of the primary's restart.
        replica
            .execute(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
                 MASTER_USER='repl', MASTER_PASSWORD='repl', \
                 MASTER_LOG_FILE='{file}', MASTER_LOG_POS={pos}, MASTER_CONNECT_RETRY=1",
                primary.port
            ))
            .await;
        replica.execute("START SLAVE").await;
        replica.wait_replica_running().await;
        (primary, replica)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to the mariadbd of {}: {e}", self.dir.display()))
    }

    /// Runs one statement on a fresh connection; panics, naming it, if it fails.
    pub async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await;
        if let Err(e) = sqlx::raw_sql(sql).execute(&mut conn).await {
            panic!("{sql} (on {}): {e}", self.dir.display());
        }
    }

    async fn show(&self, sql: &str) -> Option<MySqlRow> {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql} (on {}): {e}", self.dir.display()))
            .into_iter()
            .next()
    }

    /// The primary's current binary log file and position.
    async fn master_status(&self) -> (String, u64) {
        let row = self
            .show("SHOW MASTER STATUS")
            .await
            .unwrap_or_else(|| panic!("no binary log on the mariadbd of {}", self.dir.display()));
        let file = text(&row, "File").expect("SHOW MASTER STATUS: File");
        let pos = text(&row, "Position")
            .and_then(|p| p.parse().ok())
            .expect("SHOW MASTER STATUS: Position");
        (file, pos)
    }

    /// What SHOW SLAVE STATUS says about the replication threads, for messages.
    async fn replica_status(&self) -> String {
        let Some(row) = self.show("SHOW SLAVE STATUS").await else {
            return "not a replica".into();
        };
        let col = |c: &str| text(&row, c).unwrap_or_else(|| "NULL".into());
        format!(
            "Slave_IO_Running={} Slave_SQL_Running={} Last_IO_Error={:?} Last_SQL_Error={:?}",
            col("Slave_IO_Running"),
            col("Slave_SQL_Running"),
            col("Last_IO_Error"),
            col("Last_SQL_Error"),
        )
    }

    /// Waits (30 s at most) until both replication threads run.
    pub async fn wait_replica_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(row) = self.show("SHOW SLAVE STATUS").await {
                let yes = |c: &str| text(&row, c).as_deref() == Some("Yes");
                if yes("Slave_IO_Running") && yes("Slave_SQL_Running") {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "replica in {} did not start replicating: {}; see its server.log",
                    self.dir.display(),
                    self.replica_status().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pauses applying: the replica still receives the primary's writes but stops
    /// applying them, so its reads fall behind until `start_replica_sql_thread`.
    pub async fn stop_replica_sql_thread(&self) {
        self.execute("STOP SLAVE SQL_THREAD").await;
    }

    pub async fn start_replica_sql_thread(&self) {
        self.execute("START SLAVE SQL_THREAD").await;
    }

    /// Waits (30 s at most) until this replica has applied everything the primary
    /// had written when called. The SQL thread must be running.
    pub async fn wait_replica_caught_up(&self, primary: &PrivateMariaDb) {
        let (file, pos) = primary.master_status().await;
        let mut conn = self.connect().await;
        // The number of events waited for; -1 on timeout; NULL if the SQL thread
        // is not running or fails.
        let waited: Option<i64> = sqlx::query("SELECT CAST(MASTER_POS_WAIT(?, ?, 30) AS SIGNED)")
            .bind(file.as_str())
            .bind(pos)
            .fetch_one(&mut conn)
            .await
            .and_then(|row| row.try_get(0_usize))
            .unwrap_or_else(|e| panic!("MASTER_POS_WAIT on {}: {e}", self.dir.display()));
        match waited {
            Some(n) if n >= 0 => {}
            Some(_) => panic!(
                "replica in {} did not reach {file}:{pos} within 30 s: {}",
                self.dir.display(),
                self.replica_status().await
            ),
            None => panic!(
                "replica in {} is not applying (MASTER_POS_WAIT gave NULL): {}",
                self.dir.display(),
                self.replica_status().await
            ),
        }
    }

    /// Starts the server (again) on the same data directory, port and arguments.
    pub async fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        let mut command = Command::new("/usr/sbin/mariadbd");
        command.args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"]);
        if !self.extra.iter().any(|a| a.starts_with("--log-bin")) {
            command.arg("--skip-log-bin");
        }
        let child = command
            .args(["--innodb-buffer-pool-size=32M", "--skip-name-resolve"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while MySqlConnection::connect(&self.url()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "private mariadbd did not come up; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the store disappears mid-flight, as in a crash or a network cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
